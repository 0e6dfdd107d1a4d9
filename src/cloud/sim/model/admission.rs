//! Security groups for SSH in the simulated EC2: who an ingress rule admits, and who SSH comes from.
//!
//! On EC2 a security group admits a connection only if one of its rules names the source: its address (a
//! CIDR block), a security group the source runs in (`UserIdGroupPairs`: traffic from that group's members,
//! by their private addresses, in the same VPC or a peered one), or a managed prefix list holding its address
//! ("Security group rules", Amazon VPC User Guide). Traffic from a peered VPC or through a transit gateway
//! arrives from the peer's private address, so a rule naming only the build VPC's CIDR blocks does not admit
//! a runner or bastion elsewhere: its SSH never connects, and the build waits out `[ssh] timeout`.
//!
//! Who connects is part of the model: `[sim] runner_address` (or, through `[ssh] bastion`, `[sim]
//! bastion_address`) and the groups they run in (`[sim] runner_security_groups`). Unset, the address is one
//! the group's address rules admit (the runner where fleetbake's default rules expect it), so a fleet that
//! does not model its network bakes as before.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cloud::{IngressSources, PrefixListId, SecurityGroupId};
use crate::config::SimSettings;

/// One source an ingress rule admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngressSource {
    Cidr(IpNet),
    Group(SecurityGroupId),
    PrefixList(PrefixListId),
}

impl std::fmt::Display for IngressSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IngressSource::Cidr(cidr) => write!(f, "{cidr}"),
            IngressSource::Group(group) => write!(f, "members of {group}"),
            IngressSource::PrefixList(list) => write!(f, "prefix list {list}"),
        }
    }
}

/// Each source one AuthorizeSecurityGroupIngress names.
pub fn sources_of(from: &IngressSources) -> Vec<IngressSource> {
    let cidrs = from.cidrs.iter().copied().map(IngressSource::Cidr);
    let groups = from.security_groups.iter().cloned().map(IngressSource::Group);
    let lists = from.prefix_lists.iter().cloned().map(IngressSource::PrefixList);
    cidrs.chain(groups).chain(lists).collect()
}

/// Why EC2 refuses a rule naming `source`, if it does: a source group or prefix list the account does not
/// have (the model knows its own groups, the runner's, and `[sim] prefix_lists`).
pub fn unknown_source(
    settings: &SimSettings,
    known_group: impl Fn(&SecurityGroupId) -> bool,
    source: &IngressSource,
) -> Option<(&'static str, String)> {
    match source {
        IngressSource::Cidr(_) => None,
        IngressSource::Group(group)
            if known_group(group) || settings.runner_security_groups.iter().any(|id| id == group.as_str()) =>
        {
            None
        }
        IngressSource::Group(group) => {
            Some(("InvalidGroup.NotFound", format!("The security group '{group}' does not exist")))
        }
        IngressSource::PrefixList(list) if settings.prefix_lists.contains_key(list.as_str()) => None,
        IngressSource::PrefixList(list) => {
            Some(("InvalidPrefixListID.NotFound", format!("The prefix list ID '{list}' does not exist")))
        }
    }
}

/// Who an instance sees SSH come from.
pub struct Origin<'a> {
    /// `None`: an address the address rules admit (not modelled).
    pub address: Option<IpAddr>,
    /// The groups it runs in.
    pub groups: &'a [String],
    /// `the runner` or `the bastion`, for messages.
    pub who: &'static str,
}

impl<'a> Origin<'a> {
    /// The runner, or (through a bastion) the bastion.
    pub fn of(settings: &'a SimSettings, through_bastion: bool) -> Origin<'a> {
        let (address, who) = match through_bastion {
            true => (settings.bastion_address, "the bastion"),
            false => (settings.runner_address, "the runner"),
        };
        Origin { address, groups: &settings.runner_security_groups, who }
    }

    /// Whether a rule naming `source` admits it.
    pub fn admitted_by(&self, source: &IngressSource, prefix_lists: &BTreeMap<String, Vec<IpNet>>) -> bool {
        match (source, self.address) {
            (IngressSource::Cidr(_), None) => true,
            (IngressSource::Cidr(cidr), Some(address)) => cidr.contains(&address),
            (IngressSource::Group(group), _) => self.groups.iter().any(|id| id == group.as_str()),
            (IngressSource::PrefixList(list), address) => prefix_lists
                .get(list.as_str())
                .is_some_and(|cidrs| cidrs.iter().any(|cidr| address.is_none_or(|address| cidr.contains(&address)))),
        }
    }

    /// `the runner (10.9.0.5, in sg-…)`.
    pub fn describe(&self) -> String {
        let address = self.address.map_or("an address its rules admit".to_string(), |address| address.to_string());
        match self.groups {
            [] => format!("{} ({address})", self.who),
            groups => format!("{} ({address}, in {})", self.who, groups.join(", ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SimSettings {
        SimSettings {
            runner_address: Some("10.9.0.5".parse().unwrap()),
            runner_security_groups: vec!["sg-0123456789abcdef0".into()],
            prefix_lists: BTreeMap::from([("pl-0123456789abcdef0".to_string(), vec!["10.9.0.0/24".parse().unwrap()])]),
            ..SimSettings::default()
        }
    }

    #[test]
    fn a_rule_admits_by_address_group_or_prefix_list() {
        let settings = settings();
        let runner = Origin::of(&settings, false);
        let lists = &settings.prefix_lists;
        assert!(!runner.admitted_by(&IngressSource::Cidr("10.0.0.0/16".parse().unwrap()), lists));
        assert!(runner.admitted_by(&IngressSource::Cidr("10.9.0.0/16".parse().unwrap()), lists));
        assert!(runner.admitted_by(&IngressSource::Group(SecurityGroupId::new("sg-0123456789abcdef0")), lists));
        assert!(!runner.admitted_by(&IngressSource::Group(SecurityGroupId::new("sg-0fffffffffffffff0")), lists));
        assert!(runner.admitted_by(&IngressSource::PrefixList(PrefixListId::new("pl-0123456789abcdef0")), lists));
        // Unset, the bastion's address is one the address rules admit.
        let bastion = Origin::of(&settings, true);
        assert!(bastion.admitted_by(&IngressSource::Cidr("10.0.0.0/16".parse().unwrap()), lists));
    }

    #[test]
    fn a_rule_naming_what_the_account_lacks_is_refused() {
        let settings = settings();
        let unknown = |source| unknown_source(&settings, |_| false, &source).map(|(code, _)| code);
        assert_eq!(unknown(IngressSource::Group(SecurityGroupId::new("sg-0123456789abcdef0"))), None);
        assert_eq!(
            unknown(IngressSource::Group(SecurityGroupId::new("sg-0fffffffffffffff0"))),
            Some("InvalidGroup.NotFound")
        );
        assert_eq!(
            unknown(IngressSource::PrefixList(PrefixListId::new("pl-0fffffffffffffff0"))),
            Some("InvalidPrefixListID.NotFound")
        );
    }
}
