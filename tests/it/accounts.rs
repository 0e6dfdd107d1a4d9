//! Accounts shaped like an organization's: no default VPC, subnets found by tags in each region, a runner
//! reaching instances on their private address, a role in a build account; and the preflight that finds what
//! would go wrong before anything is made. Through the binary, aws-sdk-ec2 → moto and openssh → sshd.

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};
use crate::witness::assert_only_reads;

/// moto's default VPCs are 172.31.0.0/16.
const DEFAULT_VPC_CIDR: &str = "172.31.0.0/16";

#[test]
fn no_default_vpc_subnets_found_by_tags_in_each_build_region() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let layouts = runtime().block_on(async {
        [
            ("us-west-2", replace_default_vpc(&moto.client("us-west-2"), "10.20.0.0/16").await),
            ("eu-central-1", replace_default_vpc(&moto.client("eu-central-1"), "10.30.0.0/16").await),
        ]
    });
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\nsubnet = {{ tags = {{ Tier = \"build\" }} }}\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\neu-central-1 = []\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete");
    for region in ["us-west-2", "eu-central-1", "us-east-1"] {
        assert!(manifest["artifacts"]["base"][region]["image_id"].is_string(), "{region}: {manifest}");
    }
    runtime().block_on(async {
        for (region, layout) in &layouts {
            let client = moto.client(region);
            let subnets = instance_subnets(&client).await;
            assert!(!subnets.is_empty(), "a build ran in {region}");
            for subnet in subnets {
                assert!(layout.tagged.contains(&subnet), "{region}: instance in {subnet}, not a tagged subnet");
            }
            assert_nothing_temporary_left(&client, region).await;
        }
    });
    // Each security group in its region's own VPC; the rule on `ssh.port` only.
    let vpcs: Vec<String> =
        proxy.bodies("CreateSecurityGroup").iter().flat_map(|body| field(body, "VpcId")).map(decoded).collect();
    let mut expected: Vec<String> = layouts.iter().map(|(_, layout)| layout.vpc.clone()).collect();
    let mut seen = vpcs.clone();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "one group per build region, in its VPC");
    for body in proxy.bodies("AuthorizeSecurityGroupIngress") {
        assert_eq!(field(&body, "IpPermissions.1.FromPort"), [sshd.port.to_string().as_str()], "{body}");
        assert_eq!(field(&body, "IpPermissions.1.ToPort"), [sshd.port.to_string().as_str()], "{body}");
    }
    assert!(outcome.stderr.contains("(us-west-2a)") || outcome.stderr.contains("(us-west-2b)"), "{}", outcome.stderr);
}

#[test]
fn without_a_subnet_and_a_default_vpc_the_preflight_stops_the_run_before_anything_is_made() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    runtime().block_on(async {
        replace_default_vpc(&moto.client("us-west-2"), "10.20.0.0/16").await;
        replace_default_vpc(&moto.client("eu-central-1"), "10.30.0.0/16").await;
    });
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = [\"us-east-1\"]\neu-central-1 = []\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    for region in ["us-west-2", "eu-central-1"] {
        let line = format!("FAIL {region}: `base`: {region} has no default VPC; set `subnet`");
        assert!(outcome.stderr.contains(&line), "{line}:\n{}", outcome.stderr);
    }
    assert!(!workspace.path("out/manifest.json").exists(), "no run started");
    // Only read-only calls were made.
    let actions = proxy.actions();
    assert!(!actions.is_empty());
    for action in &actions {
        assert!(action.starts_with("Describe") || action == "GetCallerIdentity", "{action} in {actions:?}");
    }
}

/// The preflight names every problem in one report, and only reads: the proxy saw no call that makes or
/// changes anything.
#[test]
fn preflight_reports_every_problem_at_once() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    // `ghost`'s source matches nothing (it builds in us-west-2 only); `big` is an instance type moto does not
    // offer in eu-central-1 (where it builds).
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"ghost\"\nsource_ami = {{ owners = [\"amazon\"], name = \"fleetbake-no-such-image-*\" }}\n\n\
         [[flavor]]\nname = \"big\"\ninstance_type = \"x2iezn.12xlarge\"\nsource_ami = {AL2023}\n\n\
         [regions]\nus-west-2 = []\neu-central-1 = []\n\n\
         [matrix]\nexclude = [{{ flavor = \"ghost\", region = \"eu-central-1\" }}, {{ flavor = \"big\", region = \"us-west-2\" }}]\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stdout:\n{}\nstderr:\n{}", outcome.stdout, outcome.stderr);
    let report = &outcome.stdout;
    assert!(report.contains("ok   acting as arn:aws:sts::123456789012:user/moto (account 123456789012)"), "{report}");
    assert!(
        report.contains("FAIL us-west-2: source image of `ghost`: no image owned by amazon matches `fleetbake-no-such-image-*` in us-west-2"),
        "{report}"
    );
    assert!(report.contains("FAIL eu-central-1: x2iezn.12xlarge (`big`) is not offered in eu-central-1"), "{report}");
    assert!(report.contains("ok   eu-central-1: source image of `big`: ami-"), "{report}");
    assert!(report.contains("checks failed"), "{report}");
    assert_only_reads(&proxy.actions());
    runtime().block_on(async {
        for region in ["us-west-2", "eu-central-1"] {
            assert!(instances(&moto.client(region)).await.is_empty(), "nothing launched in {region}");
        }
    });
}

#[test]
fn a_role_in_a_build_account_makes_the_images_there() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let role = "arn:aws:iam::111111111111:role/image-builder";
    let endpoint = format!("endpoint_url = \"{}\"\n", moto.endpoint);
    let header = fleet_header_at(&moto.endpoint, &sshd)
        .replace(&endpoint, &format!("{endpoint}role_arn = \"{role}\"\nexternal_id = \"nightly\"\n"));
    let fleet = format!("{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n");
    let fleet_path = workspace.write("fleet.toml", &fleet);

    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap()]);
    assert_eq!(preflight.code, 0, "{}{}", preflight.stdout, preflight.stderr);
    assert!(
        preflight.stdout.contains("ok   acting as arn:aws:sts::111111111111:assumed-role/image-builder/fleetbake-"),
        "{}",
        preflight.stdout
    );
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let run_id = manifest["run_id"].as_str().unwrap().to_string();
    runtime().block_on(async {
        // The caller's own account holds nothing of the run; the role's account holds the image.
        assert!(images_of_run(&moto.client("us-west-2"), &run_id).await.is_empty(), "nothing in the caller's account");
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::Config::builder()
                .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
                .region(aws_sdk_sts::config::Region::new("us-west-2"))
                .endpoint_url(&moto.endpoint)
                .credentials_provider(aws_sdk_sts::config::Credentials::new("testing", "testing", None, None, "tests"))
                .build(),
        );
        let assumed = sts.assume_role().role_arn(role).role_session_name("test").send().await.unwrap();
        let credentials = assumed.credentials().unwrap();
        let as_role = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::Config::builder()
                .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
                .region(aws_sdk_ec2::config::Region::new("us-west-2"))
                .endpoint_url(&moto.endpoint)
                .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                    credentials.access_key_id(),
                    credentials.secret_access_key(),
                    Some(credentials.session_token().to_string()),
                    None,
                    "assumed",
                ))
                .build(),
        );
        let images = images_of_run(&as_role, &run_id).await;
        assert_eq!(images.len(), 1, "the image is in the role's account: {images:?}");
        assert_eq!(Some(images[0].id.as_str()), manifest["artifacts"]["base"]["us-west-2"]["image_id"].as_str());
        assert_nothing_temporary_left(&as_role, "us-west-2").await;
    });
}

#[test]
fn a_private_interface_admits_the_vpc_and_a_subnet_of_another_region_is_named() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    // A runner inside the VPC: no `source_cidrs`, no address to detect.
    let header = fleet_header_at(&proxy.endpoint, &sshd)
        .replace("source_cidrs = [\"127.0.0.1/32\"]", "interface = \"private_ip\"");
    let fleet = format!("{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n");
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let rules = proxy.bodies("AuthorizeSecurityGroupIngress");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let cidrs: Vec<String> = field(&rules[0], "IpPermissions.1.IpRanges.1.CidrIp").into_iter().map(decoded).collect();
    assert_eq!(cidrs, [DEFAULT_VPC_CIDR], "the VPC, not a detected address");
    let said = format!("(port {} from {DEFAULT_VPC_CIDR})", sshd.port);
    assert!(outcome.stderr.contains(&said), "{said}: {}", outcome.stderr);

    // A subnet id of eu-central-1 named for us-west-2: the preflight says it is not there.
    let foreign = runtime().block_on(async {
        let subnets = moto.client("eu-central-1").describe_subnets().send().await.unwrap();
        subnets.subnets()[0].subnet_id().unwrap().to_string()
    });
    let fleet = format!(
        "{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\nsubnet = {{ ids = {{ us-west-2 = \"{foreign}\" }} }}\n\n[regions]\nus-west-2 = []\n"
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let before = proxy.actions().len();
    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap()]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    let line = format!("FAIL us-west-2: `base`: subnet {foreign} is not in us-west-2");
    assert!(preflight.stdout.contains(&line), "{line}:\n{}", preflight.stdout);
    // It found that out by reading only.
    assert_only_reads(&proxy.actions()[before..]);
}

#[test]
fn a_bastion_is_jumped_through() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    // The test sshd is the bastion too: any key is let in. Its key's path has a space and a `%`, which the ssh
    // config file the jump reads must quote and escape.
    let key = workspace.path("bastion keys/100% key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let header = fleet_header_at(&moto.endpoint, &sshd).replace(
        "source_cidrs = [\"127.0.0.1/32\"]",
        &format!(
            "source_cidrs = [\"127.0.0.1/32\"]\nbastion = {{ host = \"127.0.0.1\", port = {}, user = \"{SSH_USER}\", private_key_file = \"bastion keys/100% key\", known_hosts = \"known_hosts\" }}",
            sshd.port
        ),
    );
    let fleet = format!(
        "{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\nprovisioners = [{{ type = \"shell\", inline = [\"echo reached through the bastion\"] }}]\n\n[regions]\nus-west-2 = []\n"
    );
    // The bastion's host key, as its operator hands it out (checked out of band).
    let known_line = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key);
    workspace.write("known_hosts", &known_line);
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("base/us-west-2: reached through the bastion"), "{}", outcome.stderr);
    // The bastion's host key was checked against its known-hosts file, which is read, never written.
    assert_eq!(std::fs::read_to_string(workspace.path("known_hosts")).unwrap(), known_line);

    // A bastion whose key is not the one named: refused at `connect`, at once, as the bastion's.
    let other = Sshd::start_with_own_host_key();
    let wrong = fleet.replace("known_hosts = \"known_hosts\"", &format!("host_key = \"{}\"", other.host_key));
    let fleet_path = workspace.write("fleet.toml", &wrong);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("the bastion fbtest@127.0.0.1"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("does not list"), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("reached through the bastion"), "{}", outcome.stderr);
}
