//! Fleet-file keys that each promise something in EC2 (docs/reference.md), checked where EC2 keeps
//! it: moto's state read through aws-sdk-ec2, or, where moto keeps nothing, the request the recording proxy saw.
//! Through the binary, aws-sdk-ec2 → a (recording) proxy → moto, and openssh → sshd.

use aws_sdk_ec2::types::{Filter, Instance};
use aws_sdk_ec2::Client;

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};

/// Amazon Linux 2023 on kernel 6.1 for any architecture: moto's catalog holds an x86_64 and an arm64 image that
/// both match, so only `architecture` tells them apart.
fn al2023_for(architecture: &str) -> String {
    format!(r#"{{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-*", architecture = "{architecture}" }}"#)
}

fn count(proxy: &FaultProxy, action: &str) -> usize {
    proxy.actions().iter().filter(|seen| *seen == action).count()
}

/// Every instance (terminated ones included) of `flavor` in the client's region.
async fn instances_of(client: &Client, flavor: &str) -> Vec<Instance> {
    let filter = Filter::builder().name("tag:fleetbake:flavor").values(flavor).build();
    let output = client.describe_instances().filters(filter).send().await.unwrap();
    output.reservations().iter().flat_map(|r| r.instances()).cloned().collect()
}

/// The one build instance of `flavor` (no tests: the only instance it launches).
async fn build_instance_of(client: &Client, flavor: &str) -> Instance {
    let mut found = instances_of(client, flavor).await;
    assert_eq!(found.len(), 1, "one build instance of {flavor}: {found:?}");
    found.remove(0)
}

/// An image as DescribeImages shows it.
async fn image(client: &Client, id: &str) -> aws_sdk_ec2::types::Image {
    let output = client.describe_images().image_ids(id).send().await.unwrap();
    assert_eq!(output.images().len(), 1, "{id}");
    output.images()[0].clone()
}

/// The instance's user data as moto keeps it (DescribeInstanceAttribute userData), decoded.
async fn user_data(client: &Client, instance: &str) -> Option<Vec<u8>> {
    let attribute = client
        .describe_instance_attribute()
        .instance_id(instance)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .unwrap();
    let encoded = attribute.user_data().and_then(|value| value.value())?;
    use base64::Engine;
    Some(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap())
}

/// `text` gzipped (by the system's gzip, without a name or time in the header), as cloud-init takes it.
fn gzipped(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut gzip = std::process::Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip runs");
    gzip.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = gzip.wait_with_output().unwrap();
    assert!(output.status.success());
    output.stdout
}

/// The RunInstances request that launched `image`.
fn launch_of(proxy: &FaultProxy, image: &str) -> String {
    let launches: Vec<String> =
        proxy.bodies("RunInstances").into_iter().filter(|body| field(body, "ImageId") == [image]).collect();
    assert_eq!(launches.len(), 1, "one launch from {image}");
    launches.into_iter().next().unwrap()
}

const DESCRIPTION: &str = "nightly base image";

/// `arm` (arm64, no public address, user data from a file) and `x86` (x86_64, a public address asked for),
/// both from one name pattern, built in us-west-2 and copied to us-east-1, with an image description.
fn launch_keys_fleet(endpoint: &str, sshd: &Sshd) -> String {
    let header = fleet_header_at(endpoint, sshd).replacen(
        "tags = { Team = \"platform\" }\n",
        &format!("tags = {{ Team = \"platform\" }}\nami_description = \"{DESCRIPTION}\"\n"),
        1,
    );
    format!(
        "{header}\n[[flavor]]\nname = \"arm\"\nsource_ami = {}\ninstance_type = \"t4g.small\"\n\
         associate_public_ip = false\nuser_data_file = \"boot/arm.sh.gz\"\n\n\
         [[flavor]]\nname = \"x86\"\nsource_ami = {}\nassociate_public_ip = true\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n",
        al2023_for("arm64"),
        al2023_for("x86_64"),
    )
}

/// `source_ami.architecture` picks the source image of that architecture, `associate_public_ip` is sent as the
/// launch's network interface `AssociatePublicIpAddress`, `user_data_file` is the instance's user data byte for
/// byte (a gzipped script, not UTF-8, as cloud-init accepts it), and `ami_description` is the description of the image and of its copy.
#[test]
fn launch_and_image_keys_reach_ec2_as_written() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let boot = "#!/bin/sh\n# from the user data file\necho 'fleetbake user data' > /tmp/boot\n";
    let boot = gzipped(boot);
    assert!(std::str::from_utf8(&boot).is_err(), "gzip is binary");
    std::fs::create_dir_all(workspace.path("boot")).unwrap();
    std::fs::write(workspace.path("boot/arm.sh.gz"), &boot).unwrap();
    let fleet_path = workspace.write("fleet.toml", &launch_keys_fleet(&proxy.endpoint, &sshd));
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let manifest = read_manifest(&workspace);

    runtime().block_on(async {
        let west = moto.client("us-west-2");
        for (flavor, architecture, public) in [("arm", "arm64", false), ("x86", "x86_64", true)] {
            let instance = build_instance_of(&west, flavor).await;
            let source = instance.image_id().unwrap().to_string();
            // The source image: of the architecture asked for, and the one the manifest and tags name.
            let launched_from = image(&west, &source).await;
            assert_eq!(launched_from.architecture().map(|a| a.as_str()), Some(architecture), "{flavor}");
            assert_eq!(manifest["artifacts"][flavor]["us-west-2"]["source_image_id"], source.as_str());
            // `associate_public_ip`: as sent (the build instance is terminated by now, and moto lists a terminated
            // instance without a public address either way).
            let launch = launch_of(&proxy, &source);
            let expected = if public { "true" } else { "false" };
            assert_eq!(field(&launch, "NetworkInterface.1.AssociatePublicIpAddress"), [expected], "{launch}");
            assert_eq!(field(&launch, "NetworkInterface.1.DeviceIndex"), ["0"], "{launch}");
            // `ami_description`: the image's and its copy's.
            for region in ["us-west-2", "us-east-1"] {
                let id = manifest["artifacts"][flavor][region]["image_id"].as_str().unwrap();
                let made = image(&moto.client(region), id).await;
                assert_eq!(made.description(), Some(DESCRIPTION), "{flavor} in {region}");
            }
        }
        // `user_data_file`: the file's bytes, sent base64-encoded; the flavor without one has none.
        let arm = build_instance_of(&west, "arm").await;
        assert_eq!(user_data(&west, arm.instance_id().unwrap()).await, Some(boot));
        let x86 = build_instance_of(&west, "x86").await;
        assert_eq!(user_data(&west, x86.instance_id().unwrap()).await, None);
    });
    // moto gives a copy sent without a description its source's: only the request shows fleetbake sent it.
    let copies = proxy.bodies("CopyImage");
    assert_eq!(copies.len(), 2);
    for copy in &copies {
        let description: Vec<String> = field(copy, "Description").iter().map(|v| v.replace("%20", " ")).collect();
        assert_eq!(description, [DESCRIPTION], "{copy}");
    }
}

/// Sets the text of every `<tag>…</tag>` element of an EC2 XML answer to `value`.
fn set_element(body: String, tag: &str, value: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = String::with_capacity(body.len());
    let mut rest = body.as_str();
    while let Some(start) = rest.find(&open) {
        let after = start + open.len();
        let Some(end) = rest[after..].find(&close) else { break };
        out.push_str(&rest[..after]);
        out.push_str(value);
        rest = &rest[after + end..];
    }
    out.push_str(rest);
    out
}

/// DescribeInstances as EC2 would answer for an instance whose private DNS name resolves to this machine (the
/// test sshd) and whose public DNS name resolves nowhere (`.invalid`, RFC 2606). moto's names
/// (`ip-172-31-….compute.internal`, `ec2-54-….amazonaws.com`) resolve nowhere here.
fn private_dns_here(body: String) -> String {
    set_element(set_element(body, "privateDnsName", "localhost"), "dnsName", "public-dns.invalid")
}

/// What [`Answer::Rewrite`] applies to an answer's body.
type Rewriter = fn(String) -> String;

/// As [`private_dns_here`], the other way round: the public DNS name is this machine.
fn public_dns_here(body: String) -> String {
    set_element(set_element(body, "privateDnsName", "private-dns.invalid"), "dnsName", "localhost")
}

/// `[ssh] interface` without `[ssh] host`: SSH goes to that address of the instance (moto's IP addresses are made
/// up and do not answer; only the DNS name the rewrite points here does).
fn interface_fleet(endpoint: &str, sshd: &Sshd, interface: &str) -> String {
    let header = fleet_header_at(endpoint, sshd)
        .replacen("host = \"127.0.0.1\"\n", &format!("interface = \"{interface}\"\n"), 1)
        .replacen("timeout = \"60s\"", "timeout = \"20s\"", 1);
    assert!(!header.contains("host = "), "{header}");
    format!(
        "{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo reached $(hostname)\"] }}]\n\n\
         [regions]\nus-west-2 = []\n"
    )
}

/// The `detail` of every `stage` event of `stage` in an events file.
fn stage_details(events: &std::path::Path, stage: &str) -> Vec<String> {
    let text = std::fs::read_to_string(events).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|event| event["type"] == "stage" && event["stage"] == stage)
        .map(|event| event["detail"].as_str().unwrap().to_string())
        .collect()
}

/// `[ssh] interface = "private_dns"` / `"public_dns"`: the run connects to that DNS name of the instance (as
/// DescribeInstances gives it), not to another of its addresses, and says so.
#[test]
fn ssh_interface_dns_names_are_the_addresses_connected_to() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let cases: [(&str, Rewriter, &str); 2] =
        [("private_dns", private_dns_here, "private DNS name"), ("public_dns", public_dns_here, "public DNS name")];
    for (interface, rewrite, said) in cases {
        let proxy = FaultProxy::start(&moto.endpoint, move |request| {
            if request.action == "DescribeInstances" {
                Answer::Rewrite(rewrite)
            } else {
                Answer::Forward
            }
        });
        let workspace = Workspace::new();
        let fleet_path = workspace.write("fleet.toml", &interface_fleet(&proxy.endpoint, &sshd, interface));
        let events = workspace.path("events.jsonl");
        let outcome = workspace.fleetbake(&[
            "matrix",
            fleet_path.to_str().unwrap(),
            "--events",
            events.to_str().unwrap(),
            "--no-preflight",
        ]);
        assert_eq!(outcome.code, 0, "{interface}: {}", outcome.stderr);
        assert!(outcome.stderr.contains("base/us-west-2: reached "), "{interface}: {}", outcome.stderr);
        assert!(proxy.altered() > 0, "the instance's DNS names came through the proxy");
        let connects: Vec<String> = stage_details(&events, "connect")
            .into_iter()
            .filter(|detail| detail.starts_with("waiting for SSH"))
            .collect();
        assert_eq!(connects.len(), 1, "{connects:?}");
        let expected = format!("waiting for SSH on localhost:{} (SSH to its {said} (`[ssh] interface`)", sshd.port);
        assert!(connects[0].starts_with(&expected), "{interface}: {connects:?}");
    }
}

/// A flavor `bad` whose image test fails, built in us-west-2 and copied to us-east-1.
fn failing_test_fleet(endpoint: &str, sshd: &Sshd, keep_failed_images: bool) -> String {
    let header = fleet_header_at(endpoint, sshd).replacen(
        "tags = { Team = \"platform\" }\n",
        &format!("tags = {{ Team = \"platform\" }}\nkeep_failed_images = {keep_failed_images}\n"),
        1,
    );
    format!(
        "{header}\n[[flavor]]\nname = \"bad\"\nsource_ami = {AL2023}\n\
         tests = [{{ type = \"shell\", inline = [\"echo the service is down\", \"exit 3\"] }}]\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n"
    )
}

/// Snapshots in the client's region tagged with `run_id`.
async fn snapshots_of_run(client: &Client, run_id: &str) -> Vec<String> {
    let filter = Filter::builder().name("tag:fleetbake:run-id").values(run_id).build();
    let output = client.describe_snapshots().owner_ids("self").filters(filter).send().await.unwrap();
    output.snapshots().iter().map(|s| s.snapshot_id().unwrap().to_string()).collect()
}

/// The image ids of CreateTags requests that tagged `fleetbake:test=failed`.
fn tagged_failed(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .bodies("CreateTags")
        .iter()
        .filter(|body| {
            field(body, "Tag.1.Key").iter().any(|key| decoded(key) == "fleetbake:test")
                && field(body, "Tag.1.Value") == ["failed"]
        })
        .flat_map(|body| field(body, "ResourceId.1").into_iter().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// An image whose tests failed is tagged `fleetbake:test=failed` and deregistered with its snapshots; with
/// `[fleet] keep_failed_images = true` it stays, so tagged. Either way it is never copied.
#[test]
fn a_failed_image_is_deregistered_unless_keep_failed_images_keeps_it_tagged() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", "");
    let path = fleet_path.to_str().unwrap();

    // Default (`false`): tagged failed, then deregistered, its snapshot deleted.
    let proxy = FaultProxy::recording(&moto.endpoint);
    std::fs::write(&fleet_path, failing_test_fleet(&proxy.endpoint, &sshd, false)).unwrap();
    let outcome = workspace.fleetbake(&["matrix", path]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let discarded_run = read_manifest(&workspace)["run_id"].as_str().unwrap().to_string();
    let deregistered: Vec<String> =
        proxy.bodies("DeregisterImage").iter().flat_map(|body| field(body, "ImageId")).map(str::to_string).collect();
    assert_eq!(deregistered.len(), 1, "{:?}", proxy.actions());
    assert_eq!(tagged_failed(&proxy), deregistered, "the image deregistered is the one tagged failed");
    assert_eq!(count(&proxy, "CopyImage"), 0);
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert!(images_of_run(&west, &discarded_run).await.is_empty(), "the failed image is deregistered");
        // Its snapshot deleted.
        let deleted = proxy.bodies("DeleteSnapshot");
        assert_eq!(deleted.len(), 1, "{:?}", proxy.actions());
        let filter = Filter::builder().name("snapshot-id").values(field(&deleted[0], "SnapshotId")[0]).build();
        let left = west.describe_snapshots().owner_ids("self").filters(filter).send().await.unwrap();
        assert!(left.snapshots().is_empty(), "{:?}", left.snapshots());
        assert!(images_of_run(&moto.client("us-east-1"), &discarded_run).await.is_empty());
    });

    // `keep_failed_images = true`: the image stays, tagged failed; still not copied.
    let proxy = FaultProxy::recording(&moto.endpoint);
    std::fs::write(&fleet_path, failing_test_fleet(&proxy.endpoint, &sshd, true)).unwrap();
    let outcome = workspace.fleetbake(&["matrix", path]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let kept_run = read_manifest(&workspace)["run_id"].as_str().unwrap().to_string();
    assert_ne!(kept_run, discarded_run);
    assert_eq!(count(&proxy, "DeregisterImage"), 0, "{:?}", proxy.actions());
    assert_eq!(count(&proxy, "CopyImage"), 0);
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        let kept = images_of_run(&west, &kept_run).await;
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert_eq!(kept[0].tags.get("fleetbake:test").map(String::as_str), Some("failed"), "{:?}", kept[0].tags);
        assert_eq!(kept[0].tags.get("fleetbake:flavor").map(String::as_str), Some("bad"));
        // Its snapshot kept, and tagged like the image (docs/reference.md: every image and its snapshots carry the tags).
        assert_eq!(kept[0].snapshot_ids.len(), 1, "{:?}", kept[0]);
        assert_eq!(snapshots_of_run(&west, &kept_run).await, kept[0].snapshot_ids);
        assert!(images_of_run(&moto.client("us-east-1"), &kept_run).await.is_empty(), "never copied");
        for region in ["us-west-2", "us-east-1"] {
            assert_nothing_temporary_left(&moto.client(region), region).await;
        }
    });
}

/// GetImageBlockPublicAccessState as EC2 answers it (moto lacks the call).
const UNBLOCKED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <GetImageBlockPublicAccessStateResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
    <requestId>fleetbake-test</requestId><imageBlockPublicAccessState>unblocked</imageBlockPublicAccessState>\
    </GetImageBlockPublicAccessStateResponse>";
const BLOCKED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <GetImageBlockPublicAccessStateResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
    <requestId>fleetbake-test</requestId><imageBlockPublicAccessState>block-new-sharing</imageBlockPublicAccessState>\
    </GetImageBlockPublicAccessStateResponse>";

/// `[sharing] public = true` beside an account: the preflight reads each landing region's block public access
/// (answered by the proxy: unblocked in us-west-2, `block-new-sharing` in us-east-1 at first, so the preflight
/// names us-east-1 and stops the run before anything is made); once both are unblocked, every image, copies
/// too, is shared with the account in one ModifyImageAttribute and made public (`Group = all`) in another, after
/// it (as sent, and as EC2 keeps it: DescribeImageAttribute launchPermission), and gets the `fleetbake:shared`
/// tag.
#[test]
fn sharing_public_lets_everyone_launch_every_image() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let east_blocked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let blocked = std::sync::Arc::clone(&east_blocked);
    let proxy = FaultProxy::start(&moto.endpoint, move |request| match request.action {
        "GetImageBlockPublicAccessState"
            if request.region == "us-east-1" && blocked.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            Answer::Reply(BLOCKED)
        }
        "GetImageBlockPublicAccessState" => Answer::Reply(UNBLOCKED),
        _ => Answer::Forward,
    });
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[sharing]\naccounts = [\"111122223333\"]\npublic = true\n\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let refused = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("us-east-1: block public access for AMIs is on (`block-new-sharing`)"), "{said}");
    assert!(!said.contains("us-west-2: block public access for AMIs is on"), "{said}");
    let asked: Vec<String> = proxy.actions().into_iter().filter(|a| a == "GetImageBlockPublicAccessState").collect();
    assert_eq!(asked.len(), 2, "once per landing region: {:?}", proxy.actions());
    assert!(!proxy.actions().iter().any(|action| action == "RunInstances"), "nothing made past a failed preflight");

    east_blocked.store(false, std::sync::atomic::Ordering::SeqCst);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let images: Vec<(&str, String)> = ["us-west-2", "us-east-1"]
        .into_iter()
        .map(|region| (region, manifest["artifacts"]["base"][region]["image_id"].as_str().unwrap().to_string()))
        .collect();

    // Per image, in order: the account alone, then `all` alone.
    let modifications = proxy.bodies("ModifyImageAttribute");
    for (region, id) in &images {
        let grants: Vec<Vec<&str>> = modifications
            .iter()
            .filter(|body| field(body, "ImageId") == [id.as_str()])
            .map(|body| body.split('&').filter(|pair| pair.starts_with("LaunchPermission.")).collect::<Vec<_>>())
            .filter(|grants| !grants.is_empty())
            .collect();
        assert_eq!(
            grants,
            [vec!["LaunchPermission.Add.1.UserId=111122223333"], vec!["LaunchPermission.Add.1.Group=all"]],
            "{id} in {region}: {modifications:?}"
        );
    }

    runtime().block_on(async {
        for (region, id) in &images {
            let client = moto.client(region);
            let permissions = launch_permissions(&client, id).await;
            let groups: Vec<_> = permissions.iter().filter_map(|p| p.group()).collect();
            assert_eq!(groups, [&aws_sdk_ec2::types::PermissionGroup::All], "{id} in {region}");
            let accounts: Vec<_> = permissions.iter().filter_map(|p| p.user_id()).collect();
            assert_eq!(accounts, ["111122223333"], "{id} in {region}");
            let made = image(&client, id).await;
            assert_eq!(made.public(), Some(true), "{id} in {region}");
            assert!(
                made.tags().iter().any(|t| t.key() == Some("fleetbake:shared") && t.value() == Some("true")),
                "{id} in {region}: {:?}",
                made.tags()
            );
        }
    });
}

/// `base`, running a script, built in us-west-2 and copied to us-east-1, with `[matrix] rebuild = "changed"`.
fn rebuild_changed_fleet(endpoint: &str, sshd: &Sshd) -> String {
    format!(
        "{}\n[matrix]\nrebuild = \"changed\"\n\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", script = \"base.sh\" }}]\n\n[regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(endpoint, sshd)
    )
}

/// `[matrix] rebuild = "changed"` does what `--changed-only` does without the flag: a second night with nothing
/// changed launches nothing, creates and copies no image, and names the first night's images `reused_from` it.
#[test]
fn rebuild_changed_reuses_unchanged_images_without_the_flag() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    workspace.write("base.sh", "#!/bin/sh\necho base v1\n");
    let fleet_path = workspace.write("fleet.toml", &rebuild_changed_fleet(&moto.endpoint, &sshd));
    let path = fleet_path.to_str().unwrap();
    let first = workspace.fleetbake(&["matrix", path]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let night_one = read_manifest(&workspace);

    let proxy = FaultProxy::recording(&moto.endpoint);
    std::fs::write(&fleet_path, rebuild_changed_fleet(&proxy.endpoint, &sshd)).unwrap();
    let second = workspace.fleetbake(&["matrix", path]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(proxy.requests() > 0);
    for action in ["RunInstances", "CreateImage", "CopyImage"] {
        assert_eq!(count(&proxy, action), 0, "{action}: {:?}", proxy.actions());
    }
    let night_two = read_manifest(&workspace);
    assert_ne!(night_two["run_id"], night_one["run_id"]);
    for region in ["us-west-2", "us-east-1"] {
        let (then, now) = (&night_one["artifacts"]["base"][region], &night_two["artifacts"]["base"][region]);
        assert!(then["image_id"].is_string(), "{night_one}");
        assert_eq!(now["image_id"], then["image_id"], "{region}");
        assert_eq!(now["reused_from"], night_one["run_id"], "{region}: {now}");
    }
    runtime().block_on(async {
        // One build instance ever: the first night's.
        assert_eq!(instances(&moto.client("us-west-2")).await.len(), 1);
    });
}

/// `base` built in us-west-2 and copied to us-east-1, shared with `accounts` (images and snapshots), with
/// `[matrix] rebuild = "changed"`.
fn shared_changed_fleet(endpoint: &str, sshd: &Sshd, accounts: &str) -> String {
    format!(
        "{}\n[matrix]\nrebuild = \"changed\"\n\n[sharing]\naccounts = [{accounts}]\nsnapshot_accounts = [{accounts}]\n\n\
         [[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(endpoint, sshd)
    )
}

/// An account taken out of `[sharing]` loses its access on the next night that reuses the images, through the
/// SDK's real requests: DescribeImageAttribute and DescribeSnapshotAttribute read what each image holds, and
/// ModifyImageAttribute `LaunchPermission.Remove` and ModifySnapshotAttribute `OperationType = remove` take
/// the account away (as sent, and as moto then keeps it).
#[test]
fn an_account_taken_out_of_sharing_is_removed_from_reused_images() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let both = "\"111122223333\", \"444455556666\"";
    let fleet_path = workspace.write("fleet.toml", &shared_changed_fleet(&moto.endpoint, &sshd, both));
    let path = fleet_path.to_str().unwrap();
    let first = workspace.fleetbake(&["matrix", path]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let night_one = read_manifest(&workspace);

    let proxy = FaultProxy::recording(&moto.endpoint);
    std::fs::write(&fleet_path, shared_changed_fleet(&proxy.endpoint, &sshd, "\"111122223333\"")).unwrap();
    let second = workspace.fleetbake(&["matrix", path]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert_eq!(count(&proxy, "CreateImage") + count(&proxy, "CopyImage"), 0, "reused: {:?}", proxy.actions());
    let night_two = read_manifest(&workspace);
    for region in ["us-west-2", "us-east-1"] {
        let artifact = &night_two["artifacts"]["base"][region];
        assert_eq!(artifact["image_id"], night_one["artifacts"]["base"][region]["image_id"], "{region}");
        let id = artifact["image_id"].as_str().unwrap();
        let removals: Vec<String> = proxy
            .bodies("ModifyImageAttribute")
            .into_iter()
            .filter(|body| field(body, "ImageId") == [id] && body.contains("LaunchPermission.Remove."))
            .collect();
        assert_eq!(removals.len(), 1, "{region}: {:?}", proxy.bodies("ModifyImageAttribute"));
        assert_eq!(field(&removals[0], "LaunchPermission.Remove.1.UserId"), ["444455556666"], "{region}");
        let snapshot = artifact["snapshot_ids"][0].as_str().unwrap();
        let snapshot_removals: Vec<String> = proxy
            .bodies("ModifySnapshotAttribute")
            .into_iter()
            .filter(|body| field(body, "SnapshotId") == [snapshot] && field(body, "OperationType") == ["remove"])
            .collect();
        assert_eq!(snapshot_removals.len(), 1, "{region}: {:?}", proxy.bodies("ModifySnapshotAttribute"));
        assert_eq!(field(&snapshot_removals[0], "UserId.1"), ["444455556666"], "{region}");
        runtime().block_on(async {
            let permissions = launch_permissions(&moto.client(region), id).await;
            let accounts: Vec<_> = permissions.iter().filter_map(|p| p.user_id()).collect();
            assert_eq!(accounts, ["111122223333"], "{id} in {region}");
        });
    }
    assert_eq!(count(&proxy, "DescribeImageAttribute"), 2, "{:?}", proxy.actions());
    assert_eq!(count(&proxy, "DescribeSnapshotAttribute"), 2, "{:?}", proxy.actions());
}
