//! `fleetbake matrix` end to end: the built binary against moto_server (through aws-sdk-ec2) and a real
//! sshd, then the account's state checked through the SDK.

use serde_json::Value;

use crate::cloud_state::*;
use crate::harness::*;
use crate::witness::assert_only_reads;

const UBUNTU: &str =
    r#"{ owners = ["099720109477"], name = "ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-*" }"#;
pub const AL2023: &str = r#"{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }"#;

pub fn fleet_header(moto: &Moto, sshd: &Sshd) -> String {
    fleet_header_at(&moto.endpoint, sshd)
}

pub fn fleet_header_at(endpoint: &str, sshd: &Sshd) -> String {
    format!(
        r#"[fleet]
name = "it"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"
manifest = "out/manifest.json"
tags = {{ Team = "platform" }}

[defaults]
instance_type = "t3.small"
ssh_username = "{SSH_USER}"
tags = {{ ManagedBy = "fleetbake" }}

[aws]
endpoint_url = "{}"

[ssh]
host = "127.0.0.1"
port = {}
timeout = "60s"
source_cidrs = ["127.0.0.1/32"]
"#,
        endpoint, sshd.port
    )
}

/// One flavor, `base`, built in us-west-2 and copied nowhere, with EC2 at `endpoint`.
fn base_fleet(endpoint: &str, sshd: &Sshd) -> String {
    format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n",
        fleet_header_at(endpoint, sshd)
    )
}

/// EC2's answer to a call the credentials may not make.
const UNAUTHORIZED: Fault =
    Fault { status: 403, code: "UnauthorizedOperation", message: "You are not authorized to perform this operation." };

/// Writes `fleet` as the workspace's fleet.toml and runs `fleetbake matrix` on it.
pub fn run_matrix(workspace: &Workspace, fleet: &str) -> Outcome {
    let fleet_path = workspace.write("fleet.toml", fleet);
    workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()])
}

/// The manifest of a fleet written with [`fleet_header`] (`manifest = "out/manifest.json"`).
pub fn read_manifest(workspace: &Workspace) -> Value {
    read_manifest_at(workspace, "out/manifest.json")
}

pub fn read_manifest_at(workspace: &Workspace, relative: &str) -> Value {
    let text = std::fs::read_to_string(workspace.path(relative)).expect("the manifest was written");
    serde_json::from_str(&text).expect("the manifest is JSON")
}

fn write_provisioning_files(workspace: &Workspace) {
    let markers = workspace.markers.display();
    workspace.write("files/motd.txt", "baked by fleetbake\n");
    workspace.write(
        "scripts/mark.sh",
        &format!(
            "#!/bin/sh\nset -e\necho \"provisioning $FLEETBAKE_FLAVOR in $FLEETBAKE_REGION\"\n\
             cat {markers}/$FLEETBAKE_FLAVOR.motd > /dev/null\n\
             echo \"$FLEETBAKE_RUN_ID $GREETING\" > {markers}/$FLEETBAKE_FLAVOR.$FLEETBAKE_REGION\n\
             echo \"a line on stderr\" >&2\n"
        ),
    );
}

fn provisioners(workspace: &Workspace) -> String {
    let markers = workspace.markers.display();
    format!(
        r#"provisioners = [
  {{ type = "file", source = "files/motd.txt", destination = "{markers}/@FLAVOR@.motd" }},
  {{ type = "shell", script = "scripts/mark.sh", env = {{ GREETING = "hello 'world'" }} }},
  {{ type = "shell", inline = ["echo inline-ran >> {markers}/$FLEETBAKE_FLAVOR.$FLEETBAKE_REGION.inline"] }},
]"#
    )
}

#[test]
fn two_flavors_two_build_regions_baked_copied_and_cleaned_up() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    write_provisioning_files(&workspace);
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"ubuntu-docker\"\nsource_ami = {UBUNTU}\ntags = {{ OS_Flavor = \"Ubuntu\" }}\n{}\n\n\
         [[flavor]]\nname = \"al2023-base\"\nsource_ami = {AL2023}\n{}\n\n\
         [regions]\nus-west-2 = [\"us-east-1\", \"eu-west-1\"]\neu-central-1 = [\"ap-southeast-2\", \"sa-east-1\"]\n",
        fleet_header(&moto, &sshd),
        provisioners(&workspace).replace("@FLAVOR@", "ubuntu-docker"),
        provisioners(&workspace).replace("@FLAVOR@", "al2023-base"),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);

    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);

    // Provisioner output is streamed with the job's prefix.
    assert!(
        outcome.stderr.contains("ubuntu-docker/us-west-2: provisioning ubuntu-docker in us-west-2"),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("al2023-base/eu-central-1: a line on stderr"), "{}", outcome.stderr);

    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["version"], 2);
    assert_eq!(manifest["distributed"], serde_json::json!({}), "no `[[distribution]]`: no copies in other accounts");
    assert_eq!(manifest["fleet"], "it");
    assert_eq!(manifest["status"], "complete");
    assert!(manifest["finished_at"].is_string());
    assert_eq!(manifest["failures"].as_array().unwrap().len(), 0);
    let run_id = manifest["run_id"].as_str().unwrap().to_string();

    // The provisioners really ran over SSH, once per build, with their environment.
    for flavor in ["ubuntu-docker", "al2023-base"] {
        assert_eq!(
            std::fs::read_to_string(workspace.markers.join(format!("{flavor}.motd"))).unwrap(),
            "baked by fleetbake\n"
        );
        for region in ["us-west-2", "eu-central-1"] {
            let marker = std::fs::read_to_string(workspace.markers.join(format!("{flavor}.{region}"))).unwrap();
            assert_eq!(marker, format!("{run_id} hello 'world'\n"));
            let inline = std::fs::read_to_string(workspace.markers.join(format!("{flavor}.{region}.inline"))).unwrap();
            assert_eq!(inline, "inline-ran\n");
        }
    }

    let builds = [("us-west-2", ["us-east-1", "eu-west-1"]), ("eu-central-1", ["ap-southeast-2", "sa-east-1"])];
    runtime().block_on(async {
        for (build_region, targets) in builds {
            for region in std::iter::once(build_region).chain(targets) {
                let client = moto.client(region);
                let images = images_of_run(&client, &run_id).await;
                assert_eq!(images.len(), 2, "one image per flavor in {region}: {images:?}");
                for flavor in ["ubuntu-docker", "al2023-base"] {
                    let entry = &manifest["artifacts"][flavor][region];
                    let image_id =
                        entry["image_id"].as_str().unwrap_or_else(|| panic!("manifest lacks {flavor}/{region}"));
                    let image =
                        images.iter().find(|image| image.id == image_id).expect("the manifest's image exists there");
                    let name = format!("{flavor}-{build_region}-{run_id}");
                    assert_eq!(image.name, name);
                    assert_eq!(entry["name"], name.as_str());
                    assert_eq!(entry["build_region"], build_region);
                    assert_eq!(images_named(&client, &name).await.len(), 1, "exactly one {name} in {region}");
                    assert_eq!(image.tags["fleetbake:fleet"], "it");
                    assert_eq!(image.tags["fleetbake:flavor"], flavor);
                    assert_eq!(image.tags["fleetbake:run-id"], run_id);
                    assert_eq!(image.tags["fleetbake:source-image-id"], entry["source_image_id"].as_str().unwrap());
                    assert_eq!(image.tags["ManagedBy"], "fleetbake");
                    assert_eq!(image.tags["Team"], "platform");
                    assert_eq!(
                        image.tags.get("OS_Flavor").map(String::as_str),
                        (flavor == "ubuntu-docker").then_some("Ubuntu")
                    );
                    let snapshots: Vec<&str> =
                        entry["snapshot_ids"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
                    assert_eq!(snapshots, image.snapshot_ids.iter().map(String::as_str).collect::<Vec<_>>());
                    // In every region, the snapshots carry the image's identity and fingerprint.
                    assert!(!image.snapshot_ids.is_empty(), "{name} in {region} has a snapshot");
                    for snapshot in &image.snapshot_ids {
                        let tags = snapshot_tags(&client, snapshot).await;
                        assert_eq!(tags.get("fleetbake:run-id"), Some(&run_id), "{snapshot} in {region}");
                        assert!(
                            tags.contains_key("fleetbake:fingerprint"),
                            "{snapshot} of {name} in {region}: {tags:?}"
                        );
                        assert_eq!(tags.get("fleetbake:fingerprint"), image.tags.get("fleetbake:fingerprint"));
                    }
                }
            }
            assert_nothing_temporary_left(&moto.client(build_region), build_region).await;
            assert!(
                !instances(&moto.client(build_region)).await.is_empty(),
                "builds launched instances in {build_region}"
            );
        }
    });
}

#[test]
fn a_failing_provisioner_fails_only_its_flavor() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    write_provisioning_files(&workspace);
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"good\"\nsource_ami = {AL2023}\n{}\n\n\
         [[flavor]]\nname = \"bad\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo about to fail\", \"exit 3\", \"echo never\"] }}]\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header(&moto, &sshd),
        provisioners(&workspace).replace("@FLAVOR@", "good"),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);

    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("bad/us-west-2: about to fail"), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("never"), "{}", outcome.stderr);

    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "partial");
    assert!(manifest["artifacts"]["good"]["us-west-2"]["image_id"].is_string());
    assert!(manifest["artifacts"]["good"]["us-east-1"]["image_id"].is_string());
    assert!(manifest["artifacts"].get("bad").is_none());
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{failures:?}");
    let build_failure = failures.iter().find(|f| f["region"] == "us-west-2").unwrap();
    assert_eq!(build_failure["flavor"], "bad");
    assert_eq!(build_failure["stage"], "provision");
    assert!(build_failure["error"].as_str().unwrap().contains("exited with status 3"), "{build_failure}");
    let copy_failure = failures.iter().find(|f| f["region"] == "us-east-1").unwrap();
    assert_eq!(copy_failure["stage"], "skipped");

    let run_id = manifest["run_id"].as_str().unwrap().to_string();
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        let images = images_of_run(&west, &run_id).await;
        assert_eq!(images.len(), 1, "only the good flavor made an image: {images:?}");
        assert_eq!(images[0].tags["fleetbake:flavor"], "good");
        assert_eq!(images_of_run(&moto.client("us-east-1"), &run_id).await.len(), 1);
        assert_nothing_temporary_left(&west, "us-west-2").await;
        assert_eq!(instances(&west).await.len(), 2, "both flavors launched an instance");
    });
}

/// The preflight, and without it the build, look the source up before they make anything: the proxy saw only
/// read-only calls.
#[test]
fn a_source_filter_that_matches_nothing_fails_before_creating_anything() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"ghost\"\nsource_ami = {{ owners = [\"amazon\"], name = \"fleetbake-no-such-image-*\" }}\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let expected = "no image owned by amazon matches `fleetbake-no-such-image-*` in us-west-2";

    // The preflight finds it: the run stops before anything, manifest included.
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    assert!(
        outcome.stderr.contains(&format!("FAIL us-west-2: source image of `ghost`: {expected}")),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("nothing was created"), "{}", outcome.stderr);
    assert!(!workspace.path("out/manifest.json").exists());
    assert!(proxy.actions().contains(&"DescribeImages".to_string()), "the preflight looked: {:?}", proxy.actions());
    assert_only_reads(&proxy.actions());
    let preflight_calls = proxy.actions().len();

    // Without it, the build finds it, first thing: before its key pair, group or instance.
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--no-preflight"]);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    assert_only_reads(&proxy.actions()[preflight_calls..]);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "failed");
    assert_eq!(manifest["artifacts"], serde_json::json!({}));
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures[0]["stage"], "source_ami");
    assert_eq!(failures[0]["region"], "us-west-2");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains(expected), "{error}");
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert!(instances(&west).await.is_empty());
        assert_nothing_temporary_left(&west, "us-west-2").await;
    });
}

#[test]
fn sigint_during_provisioning_cleans_up_keeps_finished_images_and_resumes() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    // No `source_cidrs`: the address comes from the detection URL.
    let detect_url = serve_text("203.0.113.9\n");
    let header = fleet_header(&moto, &sshd)
        .replace("source_cidrs = [\"127.0.0.1/32\"]", &format!("ip_detect_url = \"{detect_url}\""));
    let tmp = workspace.tmp();
    let gate = Gate::new(&workspace);
    let fleet = format!(
        "{}\n[limits]\nmax_parallel_builds = 1\n\n\
         [[flavor]]\nname = \"quick\"\nsource_ami = {AL2023}\n\n\
         [[flavor]]\nname = \"slow\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo sleeping now\", \"{}\"] }}]\n\n\
         [regions]\nus-west-2 = []\n",
        header,
        gate.wait_line(),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let mut running = Running::start(&workspace, &["matrix", fleet_path.to_str().unwrap()], &[]);
    // One build at a time: `quick` is done before `slow` starts.
    running.read_until("slow/us-west-2: sleeping now");
    // Mid-build: the temporary security group lets in only the detected address, on `ssh.port` only,
    // and the connection's directory is private, its files readable by their owner only; the key in it was
    // deleted once the ssh master was logged in.
    runtime().block_on(async {
        let groups = moto.client("us-west-2").describe_security_groups().send().await.unwrap();
        let ours: Vec<_> =
            groups.security_groups().iter().filter(|g| g.group_name().unwrap().starts_with("fleetbake-")).collect();
        assert_eq!(ours.len(), 1);
        let permissions = ours[0].ip_permissions();
        assert_eq!(permissions.len(), 1, "{permissions:?}");
        // `ssh.port`: what SSH connects to (here the test sshd's port), not 22 whatever the port.
        let port = Some(i32::from(sshd.port));
        assert_eq!((permissions[0].from_port(), permissions[0].to_port()), (port, port));
        let cidrs: Vec<_> = permissions[0].ip_ranges().iter().map(|r| r.cidr_ip().unwrap()).collect();
        assert_eq!(cidrs, ["203.0.113.9/32"]);
        assert!(permissions[0].ipv6_ranges().is_empty());
    });
    let key_dirs: Vec<_> = std::fs::read_dir(&tmp).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(key_dirs.len(), 1, "{key_dirs:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_dirs[0]).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(key_dirs[0].join("owner")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!key_dirs[0].join("key").exists(), "{key_dirs:?}");

    running.signal("INT");
    let seen = running.seen.clone();
    let (code, rest) = running.finish();
    assert_eq!(code, Some(130), "stderr:\n{seen}{rest}");
    assert!(rest.contains("SIGINT: starting nothing new, cleaning up"), "{rest}");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "the private key's directory is removed");

    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "partial");
    assert!(manifest["artifacts"]["quick"]["us-west-2"]["image_id"].is_string());
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["flavor"], "slow");
    assert_eq!(failures[0]["stage"], "interrupted");
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert_nothing_temporary_left(&west, "us-west-2").await;
        let run_id = manifest["run_id"].as_str().unwrap();
        assert_eq!(images_of_run(&west, run_id).await.len(), 1, "only the finished image exists");
    });

    // The interrupted run is finished by `--resume`: `quick` as it was, `slow` built now.
    gate.open();
    let resumed = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--resume"]);
    assert_eq!(resumed.code, 0, "stderr:\n{}", resumed.stderr);
    let finished = read_manifest(&workspace);
    assert_eq!(finished["status"], "complete");
    assert_eq!(finished["run_id"], manifest["run_id"]);
    assert_eq!(finished["artifacts"]["quick"], manifest["artifacts"]["quick"]);
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert_nothing_temporary_left(&west, "us-west-2").await;
        assert_eq!(images_of_run(&west, manifest["run_id"].as_str().unwrap()).await.len(), 2);
    });
}

#[test]
fn throttled_requests_are_retried_and_never_reach_the_user() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(&moto.endpoint, |request| match request.number % 3 {
        0 => Answer::Fail(Fault::throttle()),
        _ => Answer::Forward,
    });
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"true\"] }}]\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["-v", "matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert!(proxy.altered() >= 5, "every third call was throttled: {}", proxy.altered());
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete");
    assert!(manifest["artifacts"]["base"]["us-east-1"]["image_id"].is_string());
    // Retries are logged at debug level; no error or failure mentions throttling.
    assert!(outcome.stderr.contains("retrying after"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("run complete: 2 jobs succeeded, 0 failed"), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("failed at"), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("PRIVATE KEY"), "no key material in the logs");
    // A throttled call did nothing: each create happened once in moto.
    let run_id = manifest["run_id"].as_str().unwrap().to_string();
    runtime().block_on(async {
        exactly_one_of_each(&moto, &run_id, &["us-east-1"]).await;
        for region in ["us-west-2", "us-east-1"] {
            let images = images_of_run(&moto.client(region), &run_id).await;
            let manifest_image = &manifest["artifacts"]["base"][region]["image_id"];
            assert_eq!(manifest_image, images[0].id.as_str(), "{region}: the manifest names moto's image");
        }
    });
}

#[test]
fn a_refused_copy_fails_only_that_copy() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::refusing(
        &moto.endpoint,
        "CopyImage",
        Fault { status: 400, code: "InvalidParameterValue", message: "copies are refused in this test" },
    );
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    assert_eq!(proxy.altered(), 1, "a permanent error is not retried");
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "partial");
    assert!(manifest["artifacts"]["base"]["us-west-2"]["image_id"].is_string(), "the built image stays");
    assert!(manifest["artifacts"]["base"].get("us-east-1").is_none());
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["region"], "us-east-1");
    assert_eq!(failures[0]["stage"], "copy");
    assert_eq!(failures[0]["code"], "InvalidParameterValue");
    assert!(failures[0]["error"].as_str().unwrap().contains("copies are refused in this test"));
    runtime().block_on(assert_nothing_temporary_left(&moto.client("us-west-2"), "us-west-2"));
}

#[test]
fn fail_fast_starts_nothing_after_the_first_failure() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[limits]\nmax_parallel_builds = 1\n\n\
         [[flavor]]\nname = \"broken\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"exit 1\"] }}]\n\n\
         [[flavor]]\nname = \"fine\"\nsource_ami = {AL2023}\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header(&moto, &sshd),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", "--fail-fast", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "failed");
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!((&failures[0]["flavor"], &failures[0]["stage"]), (&"broken".into(), &"provision".into()));
    assert_eq!((&failures[1]["flavor"], &failures[1]["stage"]), (&"fine".into(), &"skipped".into()));
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert_eq!(instances(&west).await.len(), 1, "the second build never launched");
        assert_nothing_temporary_left(&west, "us-west-2").await;
    });
}

#[test]
fn an_undetectable_address_stops_the_run_before_any_aws_call() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    // A port nothing listens on: detection fails at once.
    let closed_port = ClosedPort::hold();
    let closed = format!("http://127.0.0.1:{}/", closed_port.port);
    let header = fleet_header_at(&proxy.endpoint, &sshd)
        .replace("source_cidrs = [\"127.0.0.1/32\"]", &format!("ip_detect_url = \"{closed}\""));
    let fleet = format!("{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n");
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    assert!(
        outcome.stderr.contains(&format!("error: cannot detect this machine's public address from `{closed}`"))
            && outcome.stderr.contains("set `ssh.source_cidrs` in the fleet file"),
        "{}",
        outcome.stderr
    );
    assert!(!workspace.path("out/manifest.json").exists(), "no run started");
    assert_eq!(proxy.requests(), 0, "no AWS call: {:?}", proxy.actions());
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert!(key_pair_names(&west).await.is_empty());
        assert!(instances(&west).await.is_empty());
    });
}

/// A one-flavor, one-region fleet with no `[aws]` table: where EC2 is comes from the environment.
fn fleet_without_aws_section(sshd: &Sshd, aws: &str) -> String {
    format!(
        "[fleet]\nname = \"env\"\n\n{aws}\n\
         [[flavor]]\nname = \"base\"\ninstance_type = \"t3.micro\"\nssh_username = \"{SSH_USER}\"\nsource_ami = {AL2023}\n\n\
         [regions]\nus-west-2 = []\n\n\
         [ssh]\nhost = \"127.0.0.1\"\nport = {}\ntimeout = \"60s\"\nsource_cidrs = [\"127.0.0.1/32\"]\n",
        sshd.port
    )
}

#[test]
fn aws_endpoint_url_in_the_environment_is_honoured() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &fleet_without_aws_section(&sshd, ""));
    let outcome = workspace.fleetbake_with_env(
        &["matrix", fleet_path.to_str().unwrap()],
        &[("AWS_ENDPOINT_URL", &moto.endpoint), ("AWS_ACCESS_KEY_ID", "env"), ("AWS_SECRET_ACCESS_KEY", "env")],
    );
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let manifest: Value = read_manifest_at(&workspace, "manifest.json");
    let run_id = manifest["run_id"].as_str().unwrap();
    assert_eq!(runtime().block_on(images_of_run(&moto.client("us-west-2"), run_id)).len(), 1);
}

#[test]
fn the_aws_profile_supplies_credentials_and_endpoint() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let config = workspace.write(
        "aws/config",
        &format!(
            "[profile fleetbake-test]\naws_access_key_id = profile\naws_secret_access_key = profile\nendpoint_url = {}\n",
            moto.endpoint
        ),
    );
    let fleet_path =
        workspace.write("fleet.toml", &fleet_without_aws_section(&sshd, "[aws]\nprofile = \"fleetbake-test\"\n"));
    let outcome = workspace.fleetbake_with_env(
        &["matrix", fleet_path.to_str().unwrap()],
        &[("AWS_CONFIG_FILE", config.to_str().unwrap()), ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")],
    );
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let manifest: Value = read_manifest_at(&workspace, "manifest.json");
    assert_eq!(manifest["status"], "complete");
}

#[test]
fn missing_credentials_fail_at_once_with_the_reason() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let aws = format!("[aws]\nendpoint_url = \"{}\"\n", proxy.endpoint);
    let fleet_path = workspace.write("fleet.toml", &fleet_without_aws_section(&sshd, &aws));
    let outcome = workspace.fleetbake_with_env(
        &["-v", "matrix", fleet_path.to_str().unwrap()],
        &[("AWS_CONFIG_FILE", "/dev/null"), ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")],
    );
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    assert!(!outcome.stderr.contains("retrying after"), "not retried: {}", outcome.stderr);
    // The preflight says so, once, before anything is made.
    assert!(
        outcome.stderr.contains("FAIL cannot tell who the credentials are: GetCallerIdentity"),
        "{}",
        outcome.stderr
    );
    assert!(outcome.stderr.contains("no credentials found"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("FAIL the other checks need credentials: not made"), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("DispatchFailure {"), "no SDK debug dump: {}", outcome.stderr);
    assert!(!workspace.path("manifest.json").exists(), "no run started");
    // Nothing unsigned was sent (the SDK cannot sign without credentials), and the run itself never began:
    // its journal, written before the first build, does not exist.
    assert_eq!(proxy.requests(), 0, "no request reached EC2: {:?}", proxy.actions());
    let journals: Vec<_> = std::fs::read_dir(workspace.path(".fleetbake/fleet"))
        .map(|dir| {
            dir.flatten().map(|entry| entry.path()).filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        })
        .map(Iterator::collect)
        .unwrap_or_default();
    assert!(journals.is_empty(), "no journal: {journals:?}");
}

#[test]
fn a_failed_cleanup_step_is_reported_the_image_kept_and_the_sweep_removes_what_it_left() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    // Only the first DeleteKeyPair is refused: the build's own cleanup step fails, the end-of-run sweep
    // (which finds the key pair by the run's tags) succeeds.
    let proxy = FaultProxy::refusing_once(&moto.endpoint, "DeleteKeyPair", UNAUTHORIZED);
    let workspace = Workspace::new();
    let fleet = base_fleet(&proxy.endpoint, &sshd);
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    assert_eq!(proxy.altered(), 1);
    assert!(outcome.stderr.contains("could not clean up key pair fleetbake-"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("removed key pair fleetbake-"), "the sweep removed it: {}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "partial");
    assert!(manifest["artifacts"]["base"]["us-west-2"]["image_id"].is_string(), "the image is kept");
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["stage"], "cleanup");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("cleanup of key pair") && error.contains("UnauthorizedOperation"), "{error}");
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert!(key_pair_names(&west).await.is_empty(), "the sweep removed the key pair");
        // None is fleetbake's (the list is never empty: the default VPC's `default` group is in it).
        assert!(security_group_names(&west).await.iter().all(|name| !name.starts_with("fleetbake-")));
        // The build launched its instance (the `.all` below is over one), and it is gone.
        let launched = instances(&west).await;
        assert_eq!(launched.len(), 1, "{launched:?}");
        assert!(launched.iter().all(|(_, state)| state == "terminated"), "{launched:?}");
    });
}

#[test]
fn a_copy_does_not_wait_for_an_unrelated_build() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[limits]\nmax_parallel_builds = 1\n\n\
         [[flavor]]\nname = \"fast\"\nsource_ami = {AL2023}\n\n\
         [[flavor]]\nname = \"slow\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"sleep 3\"] }}]\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header(&moto, &sshd),
    );
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let position =
        |needle: &str| outcome.stderr.find(needle).unwrap_or_else(|| panic!("`{needle}` in:\n{}", outcome.stderr));
    // One build slot: `slow` builds after `fast`, but `fast`'s copy is done while `slow` is still provisioning.
    let fast_copied = position("==> fast/us-east-1: image");
    let slow_provisioning = position("==> slow/us-west-2: provisioner 1");
    let slow_built = position("==> slow/us-west-2: image");
    assert!(fast_copied < slow_built, "{}", outcome.stderr);
    assert!(slow_provisioning < slow_built);
}

#[test]
fn waits_keep_polling_through_pending_states() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    // moto makes instances running and images available at once; the proxy shows them pending first.
    let pending_instances = std::sync::atomic::AtomicUsize::new(0);
    let pending_images = std::sync::atomic::AtomicUsize::new(0);
    let proxy = FaultProxy::start(&moto.endpoint, move |request| {
        use std::sync::atomic::Ordering::SeqCst;
        // The waits' describes, which name their ids in an `image-id` / `instance-id` filter.
        let by_id =
            request.body.contains("Filter.1.Name=image-id") || request.body.contains("Filter.1.Name=instance-id");
        match request.action {
            "DescribeInstances" if by_id && pending_instances.fetch_add(1, SeqCst) < 2 => {
                Answer::Rewrite(|body| body.replace("<name>running</name>", "<name>pending</name>"))
            }
            "DescribeImages" if by_id && pending_images.fetch_add(1, SeqCst) < 3 => Answer::Rewrite(|body| {
                body.replace("<imageState>available</imageState>", "<imageState>pending</imageState>")
            }),
            _ => Answer::Forward,
        }
    });
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert_eq!(proxy.altered(), 5, "two pending instance answers and three pending image answers were seen");
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete");
    assert!(manifest["artifacts"]["base"]["us-east-1"]["image_id"].is_string());
}

/// EC2 does not know a new resource everywhere at once ("Eventual consistency in the Amazon EC2 API"): the
/// proxy keeps every new key pair, security group, instance and image unknown for a while after the create
/// that returned it, as EC2 does (describes by filter leave it out; the ingress rule, RunInstances, CreateTags
/// and the rest answer `InvalidGroup.NotFound`, `InvalidAMIID.NotFound`, …). The run waits each out: it
/// succeeds, and moto holds exactly what it should, tagged.
#[test]
fn a_resource_unknown_right_after_its_create_is_waited_for_not_failed() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let model = Ec2Model::strict(std::time::Duration::from_secs(2));
    let proxy = FaultProxy::start_modelling(&moto.endpoint, model, |_| Answer::Forward);
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let outcome = workspace.fleetbake(&["-v", "matrix", workspace.write("fleet.toml", &fleet).to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    // The lag was met where EC2's documentation says it is: the rule after CreateSecurityGroup, CreateTags
    // after CopyImage, and the waits' describes of the new instance and images.
    let modelled = proxy.modelled();
    let met = |action: &str, answer: &str| {
        modelled.iter().any(|seen| seen.action == action && seen.answer.starts_with(answer))
    };
    assert!(met("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound"), "{modelled:?}");
    assert!(met("CreateTags", "InvalidAMIID.NotFound"), "{modelled:?}");
    assert!(met("DescribeInstances", "omitted i-"), "{modelled:?}");
    assert!(met("DescribeImages", "omitted ami-"), "{modelled:?}");
    assert!(outcome.stderr.contains("not known everywhere yet"), "{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete");
    let run_id = manifest["run_id"].as_str().unwrap().to_string();
    runtime().block_on(async {
        for region in ["us-west-2", "us-east-1"] {
            let client = moto.client(region);
            let images = images_of_run(&client, &run_id).await;
            assert_eq!(images.len(), 1, "{region}: {images:?}");
            assert_eq!(images_named(&client, &images[0].name).await.len(), 1, "{region}: made once");
            assert_eq!(images[0].tags["fleetbake:flavor"], "base", "{region}: tagged");
            for snapshot in &images[0].snapshot_ids {
                assert_eq!(snapshot_tags(&client, snapshot).await.get("fleetbake:run-id"), Some(&run_id), "{region}");
            }
        }
        let west = moto.client("us-west-2");
        assert_eq!(instances(&west).await.len(), 1, "one launch");
        assert_nothing_temporary_left(&west, "us-west-2").await;
    });
}

/// Credentials that expire mid-run: the first TerminateInstances is answered `ExpiredToken`; cleanup tries
/// again (the provider refreshes) instead of leaving the instance.
#[test]
fn cleanup_outlasts_an_expired_token() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::refusing_once(
        &moto.endpoint,
        "TerminateInstances",
        Fault { status: 400, code: "ExpiredToken", message: "The security token included in the request is expired" },
    );
    let workspace = Workspace::new();
    let fleet = base_fleet(&proxy.endpoint, &sshd);
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert_eq!(proxy.altered(), 1);
    assert!(outcome.stderr.contains("cleanup tries again"), "{}", outcome.stderr);
    runtime().block_on(assert_nothing_temporary_left(&moto.client("us-west-2"), "us-west-2"));
}

/// A resource cleanup cannot remove (every delete of it refused) is named at the end with the gc command: it
/// is really still in the account, and once the refusal is gone that gc command removes it.
#[test]
fn what_cleanup_cannot_remove_is_named_with_the_gc_command() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::refusing(&moto.endpoint, "DeleteKeyPair", UNAUTHORIZED);
    let workspace = Workspace::new();
    let fleet = base_fleet(&proxy.endpoint, &sshd);
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let run_id = manifest["run_id"].as_str().unwrap();
    assert!(
        outcome.stderr.contains("cleanup could not remove these; they may be left in the account:"),
        "{}",
        outcome.stderr
    );
    let key_name = format!("fleetbake-{run_id}-base");
    assert!(outcome.stderr.contains(&format!("  key pair {key_name} in us-west-2")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains(&format!("fleetbake gc {}", fleet_path.display())), "{}", outcome.stderr);
    assert!(manifest["artifacts"]["base"]["us-west-2"]["image_id"].is_string(), "the image is kept");
    assert!(proxy.bodies("DeleteKeyPair").len() >= 2, "the build and the sweep both tried");
    let west = moto.client("us-west-2");
    let key_pairs = runtime().block_on(key_pair_names(&west));
    assert_eq!(key_pairs, std::slice::from_ref(&key_name), "the key pair named is the one left in the account");

    // The permission is fixed: the same fleet file, straight to EC2. The gc command printed removes it.
    std::fs::write(&fleet_path, base_fleet(&moto.endpoint, &sshd)).unwrap();
    let gc = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    assert!(gc.stdout.contains(&format!("removed key pair {key_name}")), "{}", gc.stdout);
    runtime().block_on(assert_nothing_temporary_left(&west, "us-west-2"));
}
