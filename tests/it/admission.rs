//! Who the temporary security group admits, on the simulated cloud (`--cloud sim`), which enforces it for SSH:
//! a runner outside the build VPC (`[sim] runner_address`) is named by the preflight and never connects unless
//! a rule admits it; `[ssh] source_security_groups` (a group it runs in: `[sim] runner_security_groups`) does.
//! Also: each region hands out its own subnet ids.

use serde_json::Value;

use crate::harness::Workspace;

const RUNNER_GROUP: &str = "sg-0123456789abcdef0";

/// One flavor built in us-west-2, reached at its private address by a runner in a peered VPC (10.9.0.5, in
/// [`RUNNER_GROUP`]); `ssh` is appended to `[ssh]`.
fn peered_fleet(ssh: &str) -> String {
    format!(
        r#"[fleet]
name = "peered"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

[[flavor]]
name = "base"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
provisioners = [{{ type = "shell", inline = ["echo hi"] }}]

[regions]
us-west-2 = []

[ssh]
interface = "private_ip"
timeout = "5m"
{ssh}

[sim]
runner_address = "10.9.0.5"
runner_security_groups = ["{RUNNER_GROUP}"]
"#
    )
}

#[test]
fn a_runner_outside_the_vpc_is_named_by_the_preflight_and_admitted_by_its_group() {
    let workspace = Workspace::new();

    // The preflight names the runner's address, what the group would admit, and the keys to set.
    let fleet_path = workspace.write("fleet.toml", &peered_fleet(""));
    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    let line = preflight
        .stdout
        .lines()
        .find(|line| line.starts_with("FAIL us-west-2: `base`: SSH to its private IP comes from 10.9.0.5"))
        .unwrap_or_else(|| panic!("no admission FAIL:\n{}", preflight.stdout));
    assert!(line.contains("will not admit (port 22 from 172.31.0.0/16)"), "{line}");
    for key in ["`[ssh] source_cidrs = [\"10.9.0.5/32\"]`", "`[ssh] source_security_groups", "source_prefix_lists"] {
        assert!(line.contains(key), "{key}: {line}");
    }
    // `matrix` stops at the same preflight, before anything is made.
    let summary = workspace.path("summary.json");
    let stopped = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(stopped.code, 1, "{}", stopped.stderr);
    assert!(stopped.stderr.contains("SSH to its private IP comes from 10.9.0.5"), "{}", stopped.stderr);

    // Without the preflight the build is never admitted: it waits out `[ssh] timeout` (virtual time) and fails
    // at `connect`, leaving nothing.
    let run = workspace.fleetbake(&[
        "matrix",
        fleet_path.to_str().unwrap(),
        "--cloud",
        "sim",
        "--no-preflight",
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let manifest = workspace.read_json("manifest.sim.json");
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{manifest:#}");
    assert_eq!(failures[0]["stage"], "connect", "{manifest:#}");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("within 5m"), "{error}");
    assert!(error.contains("admits 172.31.0.0/16 on SSH, not the runner (10.9.0.5"), "{error}");
    assert_eq!(workspace.read_json("summary.json")["leaked_resources"], serde_json::json!([]));

    // With the runner's group as a source, the preflight passes and the fleet bakes; the rule names the group.
    let admitted = peered_fleet(&format!("source_security_groups = {{ \"us-west-2\" = [\"{RUNNER_GROUP}\"] }}"));
    let fleet_path = workspace.write("fleet.toml", &admitted);
    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 0, "{}{}", preflight.stdout, preflight.stderr);
    let ok = format!("ok   us-west-2: `base`: SSH to its private IP comes from 10.9.0.5 (`[sim] runner_address`), which the temporary group admits (members of {RUNNER_GROUP} on 22)");
    assert!(preflight.stdout.contains(&ok), "{ok}\n{}", preflight.stdout);
    let run = workspace.fleetbake(&[
        "matrix",
        fleet_path.to_str().unwrap(),
        "--cloud",
        "sim",
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = workspace.read_json("summary.json");
    assert_eq!(summary["leaked_resources"], serde_json::json!([]));
    let ingress: Vec<&str> = summary["sim"]["ingress"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(ingress.iter().any(|rule| rule.ends_with(&format!(": members of {RUNNER_GROUP}"))), "{ingress:?}");
}

/// A source group the account does not have is refused by AuthorizeSecurityGroupIngress, as EC2 does.
#[test]
fn a_source_group_the_account_lacks_is_refused() {
    let workspace = Workspace::new();
    let fleet = peered_fleet("source_security_groups = { \"us-west-2\" = [\"sg-0fffffffffffffff0\"] }");
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let run = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--cloud", "sim", "--no-preflight"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let manifest = workspace.read_json("manifest.sim.json");
    assert_eq!(manifest["failures"][0]["stage"], "security_group", "{manifest:#}");
    assert_eq!(manifest["failures"][0]["code"], "InvalidGroup.NotFound", "{manifest:#}");
}

/// Subnets found by tags in two regions are each region's own: their ids differ.
#[test]
fn regions_hand_out_distinct_subnet_ids() {
    let workspace = Workspace::new();
    let fleet = peered_fleet("")
        .replace("source_ami = ", "subnet = { tags = { Tier = \"build\" } }\nsource_ami = ")
        .replace("us-west-2 = []", "us-west-2 = []\neu-central-1 = []");
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    let subnets_of = |region: &str| -> Vec<String> {
        let prefix = format!("ok   {region}: `base` build in ");
        let line = preflight
            .stdout
            .lines()
            .find(|line| line.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{prefix}\n{}", preflight.stdout));
        line.split_whitespace().filter(|word| word.starts_with("subnet-")).map(|word| word.to_string()).collect()
    };
    let west = subnets_of("us-west-2");
    let central = subnets_of("eu-central-1");
    assert_eq!((west.len(), central.len()), (2, 2), "{}", preflight.stdout);
    assert!(west.iter().all(|id| !central.contains(id)), "{west:?} {central:?}");
}

/// Through moto (the recording proxy): `[ssh] source_security_groups` and `source_prefix_lists` reach
/// AuthorizeSecurityGroupIngress as the rule's `UserIdGroupPairs` and `PrefixListIds`, beside its CIDR block, in
/// one permission on `port`; moto takes the rule and the fleet bakes.
#[test]
fn source_groups_and_prefix_lists_reach_the_ingress_rule() {
    use crate::harness::{decoded, field, runtime, Moto, Sshd};
    use crate::matrix::{fleet_header_at, AL2023};
    use crate::proxy::FaultProxy;
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let (group, prefix_list) = runtime().block_on(async {
        let client = moto.client("us-west-2");
        let group =
            client.create_security_group().group_name("runners").description("CI runners").send().await.unwrap();
        let list = client
            .create_managed_prefix_list()
            .prefix_list_name("runners")
            .address_family("IPv4")
            .max_entries(5)
            .entries(aws_sdk_ec2::types::AddPrefixListEntry::builder().cidr("10.9.0.0/24").build())
            .send()
            .await
            .unwrap();
        let list = list.prefix_list().and_then(|list| list.prefix_list_id()).unwrap().to_string();
        (group.group_id().unwrap().to_string(), list)
    });
    let header = fleet_header_at(&proxy.endpoint, &sshd).replace(
        "source_cidrs = [\"127.0.0.1/32\"]",
        &format!(
            "source_cidrs = [\"127.0.0.1/32\"]\nsource_security_groups = {{ \"us-west-2\" = [\"{group}\"] }}\nsource_prefix_lists = {{ \"us-west-2\" = [\"{prefix_list}\"] }}"
        ),
    );
    let workspace = Workspace::new();
    let fleet = format!("{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n");
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let rules = proxy.bodies("AuthorizeSecurityGroupIngress");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let rule = &rules[0];
    let values = |key: &str| -> Vec<String> { field(rule, key).into_iter().map(decoded).collect() };
    assert_eq!(values("IpPermissions.1.IpRanges.1.CidrIp"), ["127.0.0.1/32"], "{rule}");
    assert_eq!(values("IpPermissions.1.Groups.1.GroupId"), [group.as_str()], "{rule}");
    assert_eq!(values("IpPermissions.1.PrefixListIds.1.PrefixListId"), [prefix_list.as_str()], "{rule}");
    assert!(field(rule, "IpPermissions.2.IpProtocol").is_empty(), "one permission: {rule}");
    let said = format!("from 127.0.0.1/32, {group}, {prefix_list})");
    assert!(outcome.stderr.contains(&said), "{said}: {}", outcome.stderr);
}

/// Through a bastion, SSH comes from the bastion (`[sim] bastion_address`): one in a peered VPC is named by the
/// preflight; admitted by `source_cidrs`, the fleet bakes.
#[test]
fn a_bastion_outside_the_vpc_is_named_and_admitted_by_its_address() {
    let workspace = Workspace::new();
    workspace.write("bastion_key", "not read by the simulated cloud\n");
    workspace.write("known_hosts", "");
    let bastion = "bastion = { host = \"bastion.example.com\", user = \"ec2-user\", private_key_file = \"bastion_key\", known_hosts = \"known_hosts\" }";
    let fleet = |ssh: &str| {
        peered_fleet(&format!("{bastion}\n{ssh}"))
            .replace("interface = \"private_ip\"\n", "")
            .replace("runner_address = \"10.9.0.5\"", "runner_address = \"10.9.0.5\"\nbastion_address = \"10.8.0.7\"")
    };
    let fleet_path = workspace.write("fleet.toml", &fleet(""));
    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    let named = "FAIL us-west-2: `base`: SSH to its private IP comes from 10.8.0.7 (`[sim] bastion_address`)";
    assert!(preflight.stdout.contains(named), "{named}\n{}", preflight.stdout);

    let fleet_path = workspace.write("fleet.toml", &fleet("source_cidrs = [\"10.8.0.7/32\"]"));
    let run = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}
