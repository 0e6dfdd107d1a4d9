//! Where a build's instance goes and how it is reached, settled per build in its region: the subnets it may
//! launch into (by id, or by tags: the one with the most free addresses first, then one in each other zone,
//! so a zone out of capacity is left for another before the build waits), or the region's default VPC; the
//! VPC its security group is made in; who that group lets in on `ssh.port`; and which address of the
//! instance SSH connects to.
//!
//! Who may connect: `[ssh] source_cidrs` if set; else, for an instance reached from inside its VPC (a private
//! interface, a bastion, or an instance without a public address), the VPC's CIDR blocks — a detected public
//! address would be the NAT's; else this machine's public address, detected when the run starts. Besides
//! those addresses, the rule admits the members of `[ssh] source_security_groups` and the entries of `[ssh]
//! source_prefix_lists` of the build's region: a runner or bastion in a peered VPC or behind a transit gateway
//! arrives from its own private address, which the build VPC's CIDR blocks do not cover.

use std::collections::BTreeSet;

use ipnet::IpNet;

use crate::cloud::{
    CloudError, IngressSources, InstanceStatus, PrefixListId, RegionCloud, SecurityGroupId, Subnet, SubnetId, VpcId,
    VpcLookup,
};
use crate::config::{Flavor, Region, SshInterface, SshSettings, SubnetChoice};

/// Who may reach the build instances' SSH port, as settled when the run starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SshSources {
    /// `[ssh] source_cidrs`.
    Configured(Vec<IpNet>),
    /// This machine's public address (detected once): for instances reached at a public address.
    ThisMachine(IpNet),
    /// Nothing settled up front: every build is reached from inside its VPC (a private interface, a bastion).
    InsideTheVpc,
}

/// Where one build goes and how it is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// Where to launch, best first (`None`: the default VPC, where EC2 picks a subnet).
    pub placements: Vec<Option<Placement>>,
    /// The VPC the security group is made in (`None`: the default VPC, which EC2 uses when none is named).
    pub vpc: Option<VpcId>,
    /// Who the security group lets in on `ssh.port`.
    pub ssh_sources: IngressSources,
    /// Which address of the instance SSH connects to (unless `[ssh] host` overrides it).
    pub address: AddressKind,
    /// Said in the output: why that address, and why those sources.
    pub why: String,
}

/// A subnet a build may launch into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub subnet: SubnetId,
    pub zone: String,
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.subnet, self.zone)
    }
}

/// An address of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressKind {
    PublicIp,
    PrivateIp,
    PublicDns,
    PrivateDns,
}

impl AddressKind {
    pub fn of(self, instance: &InstanceStatus) -> Option<String> {
        match self {
            AddressKind::PublicIp => instance.public_ip.clone(),
            AddressKind::PrivateIp => instance.private_ip.clone(),
            AddressKind::PublicDns => instance.public_dns.clone(),
            AddressKind::PrivateDns => instance.private_dns.clone(),
        }
    }

    pub fn is_private(self) -> bool {
        matches!(self, AddressKind::PrivateIp | AddressKind::PrivateDns)
    }
}

impl std::fmt::Display for AddressKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AddressKind::PublicIp => "public IP",
            AddressKind::PrivateIp => "private IP",
            AddressKind::PublicDns => "public DNS name",
            AddressKind::PrivateDns => "private DNS name",
        })
    }
}

/// Why a build has nowhere to go: what to change, and the AWS error behind it, if any.
#[derive(Debug)]
pub struct NetworkError {
    pub message: String,
    pub cloud: Option<CloudError>,
}

impl NetworkError {
    fn new(message: impl Into<String>) -> Self {
        NetworkError { message: message.into(), cloud: None }
    }
}

impl From<CloudError> for NetworkError {
    fn from(error: CloudError) -> Self {
        NetworkError { message: error.to_string(), cloud: Some(error) }
    }
}

/// The subnets (best first) and VPC a flavor's builds use in `region`; the default VPC's when it names none.
pub async fn subnets(
    cloud: &dyn RegionCloud,
    flavor: &Flavor,
    region: &Region,
) -> Result<(Vec<Subnet>, VpcId), NetworkError> {
    let Some(choice) = &flavor.subnet else {
        let vpc = cloud.find_vpc(VpcLookup::Default).await?;
        return match vpc {
            Some(vpc) => Ok((Vec::new(), vpc.id)),
            None => Err(NetworkError::new(format!("{region} has no default VPC; set `subnet`"))),
        };
    };
    let found = match cloud.find_subnets(&choice.in_region(region)).await {
        Ok(found) => found,
        Err(error) if error.code.as_deref() == Some("InvalidSubnetID.NotFound") => {
            let ids = match choice {
                SubnetChoice::Id(id) => id.clone(),
                SubnetChoice::PerRegion(ids) => ids.get(region).cloned().unwrap_or_default(),
                SubnetChoice::Tagged(_) => String::new(),
            };
            return Err(NetworkError {
                message: format!(
                    "subnet {ids} is not in {region} (a subnet belongs to one region): name one of {region}'s"
                ),
                cloud: Some(error),
            });
        }
        Err(error) => return Err(error.into()),
    };
    let Some(best) = found.iter().max_by_key(|subnet| (subnet.available_addresses, std::cmp::Reverse(&subnet.id)))
    else {
        let what = match choice {
            SubnetChoice::Tagged(tags) => {
                let tags: Vec<String> = tags.iter().map(|(key, value)| format!("{key} = \"{value}\"")).collect();
                format!("no subnet in {region} carries the tags {{ {} }}", tags.join(", "))
            }
            _ => format!("no such subnet in {region}"),
        };
        return Err(NetworkError::new(what));
    };
    let vpc = best.vpc.clone();
    Ok((ranked(found.iter().filter(|subnet| subnet.vpc == vpc).cloned().collect()), vpc))
}

/// Subnets in the order a launch tries them: the most free addresses first; then, each time, the best one in
/// a zone not tried yet; then the rest.
fn ranked(mut subnets: Vec<Subnet>) -> Vec<Subnet> {
    subnets.sort_by(|a, b| b.available_addresses.cmp(&a.available_addresses).then_with(|| a.id.cmp(&b.id)));
    let mut zones = BTreeSet::new();
    let (first_in_zone, rest): (Vec<Subnet>, Vec<Subnet>) =
        subnets.into_iter().partition(|subnet| zones.insert(subnet.availability_zone.clone()));
    first_in_zone.into_iter().chain(rest).collect()
}

/// Settles one build's network in its region.
pub async fn resolve(
    cloud: &dyn RegionCloud,
    ssh: &SshSettings,
    sources: &SshSources,
    flavor: &Flavor,
    region: &Region,
) -> Result<Network, NetworkError> {
    let (subnets, vpc) = subnets(cloud, flavor, region).await?;
    let placements: Vec<Option<Placement>> = if subnets.is_empty() {
        vec![None]
    } else {
        subnets
            .iter()
            .map(|subnet| Some(Placement { subnet: subnet.id.clone(), zone: subnet.availability_zone.clone() }))
            .collect()
    };
    // A default VPC's subnets give instances public addresses; another's say so themselves.
    let public_expected =
        flavor.associate_public_ip.unwrap_or_else(|| subnets.first().is_none_or(|subnet| subnet.maps_public_ip));
    let through = ssh.bastion.as_ref().map(|bastion| format!(", through the bastion {}", bastion.host));
    let through = through.unwrap_or_default();
    if flavor.interface.is_session_manager() {
        // No inbound rule, no address: ssh goes through the instance's SSM agent.
        let why = "SSH through Session Manager (no inbound port)".to_string();
        let vpc = (!subnets.is_empty()).then_some(vpc);
        let ssh_sources = IngressSources::default();
        return Ok(Network { placements, vpc, ssh_sources, address: AddressKind::PrivateIp, why });
    }
    let (address, reason) = match flavor.interface {
        // A bastion reaches the instance inside its VPC.
        SshInterface::Default if ssh.bastion.is_some() => {
            (AddressKind::PrivateIp, through.trim_start_matches(", ").to_string())
        }
        SshInterface::Default if public_expected => (AddressKind::PublicIp, "it gets one".to_string()),
        SshInterface::Default => (AddressKind::PrivateIp, "it gets no public address in its subnet".to_string()),
        configured => (kind_of(configured), format!("`[ssh] interface`{through}")),
    };
    let from_inside = address.is_private() || ssh.bastion.is_some();
    let (ssh_sources, sources_why) = match sources {
        SshSources::Configured(cidrs) => (cidrs.clone(), "`[ssh] source_cidrs`".to_string()),
        SshSources::ThisMachine(address) if !from_inside => (vec![*address], "this machine's address".to_string()),
        _ => {
            let found = cloud.find_vpc(VpcLookup::Id(&vpc)).await?;
            let cidrs = found.map(|vpc| vpc.cidrs).unwrap_or_default();
            if cidrs.is_empty() {
                return Err(NetworkError::new(format!(
                    "{vpc} in {region} has no IPv4 CIDR block to let SSH in from; set `[ssh] source_cidrs`"
                )));
            }
            (cidrs, format!("the VPC {vpc}"))
        }
    };
    let (ssh_sources, sources_why) = with_named_sources(ssh, region, ssh_sources, sources_why);
    let why = format!("SSH to its {address} ({reason}), from {sources_why}");
    Ok(Network { placements, vpc: (!subnets.is_empty()).then_some(vpc), ssh_sources, address, why })
}

/// The addresses, and the region's `[ssh] source_security_groups` and `source_prefix_lists`; and the words
/// that say so.
fn with_named_sources(ssh: &SshSettings, region: &Region, cidrs: Vec<IpNet>, why: String) -> (IngressSources, String) {
    let security_groups: Vec<SecurityGroupId> =
        ssh.source_security_groups.get(region).into_iter().flatten().map(SecurityGroupId::new).collect();
    let prefix_lists: Vec<PrefixListId> =
        ssh.source_prefix_lists.get(region).into_iter().flatten().map(PrefixListId::new).collect();
    let mut why = why;
    if !security_groups.is_empty() {
        why.push_str(" and the members of `[ssh] source_security_groups`");
    }
    if !prefix_lists.is_empty() {
        why.push_str(" and `[ssh] source_prefix_lists`");
    }
    (IngressSources { cidrs, security_groups, prefix_lists }, why)
}

/// The address a configured interface names.
fn kind_of(interface: SshInterface) -> AddressKind {
    match interface {
        SshInterface::PublicIp | SshInterface::Default => AddressKind::PublicIp,
        SshInterface::PrivateIp => AddressKind::PrivateIp,
        SshInterface::PublicDns => AddressKind::PublicDns,
        SshInterface::PrivateDns => AddressKind::PrivateDns,
        SshInterface::SessionManager => AddressKind::PrivateIp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(id: &str, zone: &str, free: u32) -> Subnet {
        Subnet {
            id: SubnetId::new(id),
            vpc: VpcId::new("vpc-1"),
            availability_zone: zone.into(),
            available_addresses: free,
            maps_public_ip: false,
        }
    }

    #[test]
    fn the_most_free_addresses_first_then_one_per_other_zone() {
        let ranked = ranked(vec![
            subnet("subnet-a1", "a", 100),
            subnet("subnet-a2", "a", 900),
            subnet("subnet-b1", "b", 50),
            subnet("subnet-c1", "c", 300),
        ]);
        let ids: Vec<&str> = ranked.iter().map(|subnet| subnet.id.as_str()).collect();
        assert_eq!(ids, ["subnet-a2", "subnet-c1", "subnet-b1", "subnet-a1"]);
    }
}
