//! The preflight's admission check: for each flavor reached over SSH at an address, where its SSH will come
//! from (this machine's public address for a public interface; this machine's own address on its route to the
//! build VPC for a private one; the bastion's) and whether the temporary security group fleetbake makes will
//! admit it. On EC2 a runner or bastion in a peered VPC or behind a transit gateway arrives from its own
//! private address, which a rule naming only the build VPC's CIDR blocks does not admit: every build would
//! wait out `[ssh] timeout`. That is a FAIL naming the address and the keys that admit it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{listed, Outcome, Preflight};
use crate::cloud::{Cloud, IngressSources, RegionCloud, VpcLookup};
use crate::config::{Flavor, FlavorName, Fleet, Region, SimSettings};
use crate::steps::network::{self, AddressKind, Network, SshSources};

/// Who SSH comes from, as the preflight is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Runner {
    /// This machine: its own address on its route to each build VPC (the OS's routing answers; no packet is
    /// sent) and, when the run detected it, its public address.
    ThisMachine { public: Option<IpAddr> },
    /// The simulated cloud's runner, as `[sim]` models it.
    Simulated {
        address: Option<IpAddr>,
        bastion: Option<IpAddr>,
        security_groups: Vec<String>,
        prefix_lists: BTreeMap<String, Vec<IpNet>>,
    },
}

impl Runner {
    /// This machine, with the public address the run settled (if it detected one).
    pub fn this_machine(sources: Option<&SshSources>) -> Runner {
        let public = match sources {
            Some(SshSources::ThisMachine(net)) => Some(net.addr()),
            _ => None,
        };
        Runner::ThisMachine { public }
    }

    /// The simulated cloud's runner (`[sim] runner_address`, `bastion_address`, `runner_security_groups`).
    pub fn simulated(sim: &SimSettings) -> Runner {
        Runner::Simulated {
            address: sim.runner_address,
            bastion: sim.bastion_address,
            security_groups: sim.runner_security_groups.clone(),
            prefix_lists: sim.prefix_lists.clone(),
        }
    }
}

/// Where SSH to one build's instance comes from, as far as can be told before the run.
enum Origin {
    /// This address (and who it is, for the message).
    Known(IpAddr, String),
    /// The address this machine's routing picks toward the build VPC: a NAT, a container's bridge or a client
    /// VPN on the way may translate it, so a group that does not admit it is a warning, not a failure.
    Routed(IpAddr),
    /// Not known here; why the group is expected to admit it anyway, or what to check.
    Unknown(String),
}

/// The admission check of each flavor in `region` reached over SSH at an address.
pub(super) async fn check(
    preflight: &mut Preflight,
    fleet: &Fleet,
    cloud: &dyn Cloud,
    runner: &Runner,
    region: &Region,
    flavors: &[&Flavor],
) {
    let over_ssh: Vec<&&Flavor> = flavors.iter().filter(|flavor| !flavor.interface.is_session_manager()).collect();
    if over_ssh.is_empty() {
        return;
    }
    if let Some(host) = &fleet.ssh.host {
        preflight.push(
            Some(region),
            Outcome::Ok(format!(
                "SSH goes to `[ssh] host` {host}, not the instances' addresses: who their security groups admit is not checked"
            )),
        );
        return;
    }
    let region_cloud = cloud.region(region);
    let sources = match (&fleet.ssh.source_cidrs, runner) {
        (Some(cidrs), _) => SshSources::Configured(cidrs.clone()),
        (None, Runner::ThisMachine { public: Some(address) }) => SshSources::ThisMachine(IpNet::from(*address)),
        (None, Runner::Simulated { address: Some(address), .. }) => SshSources::ThisMachine(IpNet::from(*address)),
        // Unknown here: the run detects it, and the group admits what it detects.
        (None, _) => SshSources::ThisMachine(IpNet::from(IpAddr::from([0, 0, 0, 0]))),
    };
    // One line per way in: flavors with the same address kind and subnet choice share it.
    let mut seen: Vec<(AddressKind, Option<&crate::config::SubnetChoice>, Vec<&FlavorName>)> = Vec::new();
    let mut networks = Vec::new();
    for flavor in over_ssh {
        // A network that cannot be settled is the build-region check's FAIL already.
        let Ok(network) = network::resolve(&*region_cloud, &fleet.ssh, &sources, flavor, region).await else {
            continue;
        };
        match seen.iter_mut().find(|(kind, subnet, _)| *kind == network.address && *subnet == flavor.subnet.as_ref()) {
            Some((_, _, names)) => names.push(&flavor.name),
            None => {
                seen.push((network.address, flavor.subnet.as_ref(), vec![&flavor.name]));
                networks.push((flavor, network));
            }
        }
    }
    for ((_, _, names), (flavor, network)) in seen.iter().zip(networks) {
        let origin = origin(fleet, &*region_cloud, runner, flavor, region, &network).await;
        let outcome = verdict(fleet.ssh.port, runner, region, &listed(names), &network, origin);
        preflight.push(Some(region), outcome);
    }
}

/// Where SSH to a build in `network` comes from.
async fn origin(
    fleet: &Fleet,
    cloud: &dyn RegionCloud,
    runner: &Runner,
    flavor: &Flavor,
    region: &Region,
    network: &Network,
) -> Origin {
    let bastion = fleet.ssh.bastion.as_ref();
    match (runner, bastion) {
        (Runner::Simulated { bastion: Some(address), .. }, Some(_)) => {
            Origin::Known(*address, "`[sim] bastion_address`".into())
        }
        (Runner::Simulated { address: Some(address), .. }, None) => {
            Origin::Known(*address, "`[sim] runner_address`".into())
        }
        (Runner::Simulated { .. }, _) => {
            Origin::Unknown("an address the group's rules admit (`[sim] runner_address` is not set)".into())
        }
        // A bastion reached at a private address is seen inside AWS from that address; one reached at a public
        // address (or by name) arrives from its private address, which is not known here.
        (Runner::ThisMachine { .. }, Some(bastion)) => match bastion.host.parse::<IpAddr>() {
            Ok(address) if is_private(address) => Origin::Known(address, format!("the bastion {}", bastion.host)),
            _ => Origin::Unknown(format!(
                "the bastion {}, whose address inside AWS is not known here: if it is outside {}, admit it with `[ssh] source_cidrs`, `source_security_groups` or `source_prefix_lists`",
                bastion.host,
                network.vpc.as_ref().map_or("the default VPC".to_string(), ToString::to_string)
            )),
        },
        (Runner::ThisMachine { public }, None) if !network.address.is_private() => match public {
            Some(address) => Origin::Known(*address, "this machine's public address".into()),
            None => Origin::Unknown(
                "this machine's public address (detected when the run starts: `[ssh] ip_detect_url`)".into(),
            ),
        },
        (Runner::ThisMachine { .. }, None) => {
            let cidr = vpc_cidr(cloud, flavor, region).await;
            match cidr.and_then(route_address) {
                Some(address) => Origin::Routed(address),
                None => Origin::Unknown("this machine, whose address toward the build VPC could not be told".into()),
            }
        }
    }
}

/// The first CIDR block of the VPC a flavor's builds go to in `region`.
async fn vpc_cidr(cloud: &dyn RegionCloud, flavor: &Flavor, region: &Region) -> Option<IpNet> {
    let (_, vpc) = network::subnets(cloud, flavor, region).await.ok()?;
    let found = cloud.find_vpc(VpcLookup::Id(&vpc)).await.ok()??;
    found.cidrs.first().copied()
}

/// The address this machine's connections toward `cidr` leave from: a UDP socket "connected" there (which
/// sends nothing) tells the source the OS's routing picks.
fn route_address(cidr: IpNet) -> Option<IpAddr> {
    let unspecified: IpAddr = match cidr {
        IpNet::V4(_) => IpAddr::from([0, 0, 0, 0]),
        IpNet::V6(_) => IpAddr::from([0u16; 8]),
    };
    let socket = std::net::UdpSocket::bind((unspecified, 0)).ok()?;
    socket.connect((cidr.network(), 22)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// Whether the group made for `network` admits `origin`.
fn verdict(port: u16, runner: &Runner, region: &Region, of: &str, network: &Network, origin: Origin) -> Outcome {
    let rule = rule_text(&network.ssh_sources);
    let kind = network.address;
    let (address, who, routed) = match origin {
        Origin::Unknown(who) => {
            return Outcome::Ok(format!(
                "{of}: SSH to its {kind} from {who}; the temporary group admits {rule} on {port}"
            ))
        }
        Origin::Known(address, who) => (address, who, false),
        Origin::Routed(address) => (address, ROUTED.to_string(), true),
    };
    let sources = &network.ssh_sources;
    if let Some(cidr) = sources.cidrs.iter().find(|cidr| cidr.contains(&address)) {
        return Outcome::Ok(format!(
            "{of}: SSH to its {kind} comes from {address} ({who}), which the temporary group admits ({cidr} on {port})"
        ));
    }
    match runner {
        Runner::Simulated { security_groups, prefix_lists, .. } => {
            if let Some(group) = sources.security_groups.iter().find(|group| security_groups.contains(&group.0)) {
                return Outcome::Ok(format!(
                    "{of}: SSH to its {kind} comes from {address} ({who}), which the temporary group admits (members of {group} on {port})"
                ));
            }
            let listed = |list: &&crate::cloud::PrefixListId| {
                prefix_lists.get(list.as_str()).is_some_and(|cidrs| cidrs.iter().any(|cidr| cidr.contains(&address)))
            };
            if let Some(list) = sources.prefix_lists.iter().find(listed) {
                return Outcome::Ok(format!(
                    "{of}: SSH to its {kind} comes from {address} ({who}), which the temporary group admits (prefix list {list} on {port})"
                ));
            }
        }
        // What a source group or prefix list holds is not known here: say what it takes.
        Runner::ThisMachine { .. } if !sources.security_groups.is_empty() || !sources.prefix_lists.is_empty() => {
            let named: Vec<String> = sources
                .security_groups
                .iter()
                .map(|group| format!("runs in {group}"))
                .chain(sources.prefix_lists.iter().map(|list| format!("is in prefix list {list}")))
                .collect();
            return Outcome::Ok(format!(
                "{of}: SSH to its {kind} comes from {address} ({who}), outside {}: admitted only if it {}",
                rule_text(&IngressSources::cidrs(sources.cidrs.clone())),
                named.join(" or ")
            ));
        }
        Runner::ThisMachine { .. } => {}
    }
    let text = format!(
        "{of}: SSH to its {kind} comes from {address} ({who}), which the temporary security group will not admit (port {port} from {rule}): every build would wait out `[ssh] timeout`; for a runner or bastion outside the build VPC (peered, or through a transit gateway) set `[ssh] source_cidrs = [\"{}\"]`, `[ssh] source_prefix_lists = {{ \"{region}\" = [\"pl-…\"] }}` or `[ssh] source_security_groups = {{ \"{region}\" = [\"sg-…\"] }}` (a group it runs in: the same VPC, a peered one in the region, or through a transit gateway with security group referencing on)",
        IpNet::from(address)
    );
    if routed && matches!(runner, Runner::ThisMachine { .. }) {
        // Said, not failed: `--no-preflight`, the only way past a failure, would drop every other check.
        Outcome::Warn(format!(
            "{text} (unless a NAT, a container's network or a VPN on the way gives it an address the group admits)"
        ))
    } else {
        Outcome::Fail(text)
    }
}

/// Who [`Origin::Routed`] is, in words.
const ROUTED: &str = "this machine, on its route to the build VPC";

/// RFC 1918 / unique-local addresses (and the CGNAT range AWS VPCs may use): what an instance in a VPC sees as
/// the source of a connection from inside AWS.
fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_private() || (v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1])),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// What a rule admits, in words.
fn rule_text(sources: &IngressSources) -> String {
    let shown: Vec<String> = sources
        .cidrs
        .iter()
        // The unknown public address stands for "what the run detects".
        .map(|cidr| if cidr.addr().is_unspecified() { "this machine's address".to_string() } else { cidr.to_string() })
        .chain(sources.security_groups.iter().map(|group| format!("members of {group}")))
        .chain(sources.prefix_lists.iter().map(|list| format!("prefix list {list}")))
        .collect();
    shown.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{PrefixListId, SecurityGroupId};

    /// A build reached at its private IP, the group admitting the VPC's block and `groups`.
    fn network(groups: &[&str]) -> Network {
        Network {
            placements: vec![None],
            vpc: None,
            ssh_sources: IngressSources {
                cidrs: vec!["10.0.0.0/16".parse().unwrap()],
                security_groups: groups.iter().map(|group| SecurityGroupId::new(*group)).collect(),
                prefix_lists: Vec::new(),
            },
            address: AddressKind::PrivateIp,
            why: String::new(),
        }
    }

    fn runner_at(address: &str) -> Origin {
        Origin::Routed(address.parse().unwrap())
    }

    fn judged(runner: &Runner, network: &Network, origin: Origin) -> Outcome {
        verdict(22, runner, &Region::new("us-west-2"), "`base`", network, origin)
    }

    #[test]
    fn a_runner_inside_the_vpc_is_admitted_and_one_outside_is_named() {
        let this_machine = Runner::ThisMachine { public: None };
        let Outcome::Ok(inside) = judged(&this_machine, &network(&[]), runner_at("10.0.3.7")) else { panic!() };
        assert!(inside.contains("comes from 10.0.3.7") && inside.contains("admits (10.0.0.0/16 on 22)"), "{inside}");
        // Warned, not failed: a NAT or a container's network may translate the routed address.
        let Outcome::Warn(outside) = judged(&this_machine, &network(&[]), runner_at("10.9.0.5")) else { panic!() };
        assert!(outside.starts_with("`base`: SSH to its private IP comes from 10.9.0.5 (this machine"), "{outside}");
        assert!(outside.contains("`[ssh] source_cidrs = [\"10.9.0.5/32\"]`"), "{outside}");
        assert!(outside.contains("`[ssh] source_security_groups = { \"us-west-2\" = [\"sg-…\"] }`"), "{outside}");
        // Outside, with a source group: this machine's groups are not known here, so it says what it takes.
        let Outcome::Ok(maybe) = judged(&this_machine, &network(&["sg-0123456789abcdef0"]), runner_at("10.9.0.5"))
        else {
            panic!()
        };
        assert!(maybe.contains("admitted only if it runs in sg-0123456789abcdef0"), "{maybe}");
    }

    #[test]
    fn the_simulated_runner_is_admitted_by_its_group_or_prefix_list_only() {
        let simulated = |groups: &[&str], lists: &[(&str, &str)]| Runner::Simulated {
            address: Some("10.9.0.5".parse().unwrap()),
            bastion: None,
            security_groups: groups.iter().map(|group| group.to_string()).collect(),
            prefix_lists: lists.iter().map(|(id, cidr)| (id.to_string(), vec![cidr.parse().unwrap()])).collect(),
        };
        let group = "sg-0123456789abcdef0";
        let in_group = simulated(&[group], &[]);
        let Outcome::Ok(admitted) = judged(&in_group, &network(&[group]), runner_at("10.9.0.5")) else { panic!() };
        assert!(admitted.contains(&format!("(members of {group} on 22)")), "{admitted}");
        let elsewhere = simulated(&["sg-0fffffffffffffff0"], &[]);
        assert!(matches!(judged(&elsewhere, &network(&[group]), runner_at("10.9.0.5")), Outcome::Fail(_)));
        let listed = simulated(&[], &[("pl-0123456789abcdef0", "10.9.0.0/24")]);
        let mut with_list = network(&[]);
        with_list.ssh_sources.prefix_lists.push(PrefixListId::new("pl-0123456789abcdef0"));
        let Outcome::Ok(admitted) = judged(&listed, &with_list, runner_at("10.9.0.5")) else { panic!() };
        assert!(admitted.contains("(prefix list pl-0123456789abcdef0 on 22)"), "{admitted}");
    }

    #[test]
    fn a_bastion_at_a_public_address_is_not_where_ssh_comes_from() {
        assert!(is_private("10.9.0.5".parse().unwrap()) && is_private("172.31.4.1".parse().unwrap()));
        assert!(is_private("100.64.0.9".parse().unwrap()) && is_private("fd00::1".parse().unwrap()));
        assert!(!is_private("203.0.113.7".parse().unwrap()) && !is_private("2001:db8::1".parse().unwrap()));
    }

    /// The OS's routing answers for any address without sending a packet: toward loopback, from loopback.
    #[test]
    fn the_route_address_toward_loopback_is_loopback() {
        assert_eq!(route_address("127.0.0.0/8".parse().unwrap()), Some(IpAddr::from([127, 0, 0, 1])));
    }
}
