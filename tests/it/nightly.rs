//! Nights that do only what changed (`--changed-only`), images tested before they spread (`[[flavor]] tests`),
//! and ids published where deploys look (`[publish]`): through the binary, aws-sdk-ec2 / -ssm → a recording
//! proxy → moto, and openssh → sshd.

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};

/// `base` and `web`, each running its own script, built in us-west-2 and copied to `copies`.
fn two_flavors(endpoint: &str, sshd: &Sshd, copies: &str) -> String {
    format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\nprovisioners = [{{ type = \"shell\", script = \"base.sh\" }}]\n\n\
         [[flavor]]\nname = \"web\"\nsource_ami = {AL2023}\nprovisioners = [{{ type = \"shell\", script = \"web.sh\" }}]\n\n\
         [regions]\nus-west-2 = [{copies}]\n",
        fleet_header_at(endpoint, sshd)
    )
}

fn count(proxy: &FaultProxy, action: &str) -> usize {
    proxy.actions().iter().filter(|seen| *seen == action).count()
}

#[test]
fn changed_only_reuses_what_did_not_change_and_copies_only_where_missing() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    workspace.write("base.sh", "#!/bin/sh\necho base v1\n");
    workspace.write("web.sh", "#!/bin/sh\necho web v1\n");
    let fleet_path = workspace.write("fleet.toml", &two_flavors(&moto.endpoint, &sshd, "\"us-east-1\""));
    let path = fleet_path.to_str().unwrap();
    let first = workspace.fleetbake(&["matrix", path]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let night_one = read_manifest(&workspace);

    // Nothing changed: no instance, no copy; the manifest names the first night's images.
    let proxy = FaultProxy::recording(&moto.endpoint);
    std::fs::write(&fleet_path, two_flavors(&proxy.endpoint, &sshd, "\"us-east-1\"")).unwrap();
    let plan = workspace.fleetbake(&["plan", path, "--changed-only"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stdout.starts_with("fleet `it`: 0 to rebuild, 2 to reuse\n"), "{}", plan.stdout);
    assert!(
        !proxy.actions().iter().any(|action| !action.starts_with("Describe")),
        "plan is read-only: {:?}",
        proxy.actions()
    );
    let quiet = workspace.fleetbake(&["matrix", path, "--changed-only"]);
    assert_eq!(quiet.code, 0, "{}", quiet.stderr);
    assert_eq!(count(&proxy, "RunInstances"), 0, "{:?}", proxy.actions());
    assert_eq!(count(&proxy, "CopyImage"), 0, "{:?}", proxy.actions());
    assert_eq!(count(&proxy, "CreateImage"), 0);
    let night_two = read_manifest(&workspace);
    for flavor in ["base", "web"] {
        for region in ["us-west-2", "us-east-1"] {
            let (then, now) = (&night_one["artifacts"][flavor][region], &night_two["artifacts"][flavor][region]);
            assert_eq!(now["image_id"], then["image_id"], "{flavor} {region}");
            assert_eq!(now["reused_from"], night_one["run_id"], "{flavor} {region}: {now}");
            assert_eq!(now["fingerprint"], then["fingerprint"]);
            assert_eq!(now["fingerprint"].as_str().unwrap().len(), 64);
        }
    }

    // web.sh changed: only `web` is rebuilt (and copied); `base` reused; the plan says why.
    workspace.write("web.sh", "#!/bin/sh\necho web v2\n");
    let plan = workspace.fleetbake(&["plan", path, "--changed-only"]);
    assert!(plan.stdout.contains("rebuild web in us-west-2: provisioner 1 (script web.sh) changed"), "{}", plan.stdout);
    assert!(plan.stdout.contains("reuse   base in us-west-2: nothing changed since"), "{}", plan.stdout);
    let before = (count(&proxy, "RunInstances"), count(&proxy, "CopyImage"));
    let third = workspace.fleetbake(&["matrix", path, "--changed-only"]);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(count(&proxy, "RunInstances") - before.0, 1, "web only");
    assert_eq!(count(&proxy, "CopyImage") - before.1, 1, "web's copy only");
    let night_three = read_manifest(&workspace);
    assert_eq!(
        night_three["artifacts"]["base"]["us-west-2"]["image_id"],
        night_one["artifacts"]["base"]["us-west-2"]["image_id"]
    );
    assert_ne!(
        night_three["artifacts"]["web"]["us-west-2"]["image_id"],
        night_one["artifacts"]["web"]["us-west-2"]["image_id"]
    );
    assert!(night_three["artifacts"]["web"]["us-west-2"].get("reused_from").is_none());

    // A new copy region: each reused image is copied there, and nothing else is made.
    std::fs::write(&fleet_path, two_flavors(&proxy.endpoint, &sshd, "\"us-east-1\", \"eu-west-1\"")).unwrap();
    let before = (count(&proxy, "RunInstances"), count(&proxy, "CopyImage"));
    let fourth = workspace.fleetbake(&["matrix", path, "--changed-only"]);
    assert_eq!(fourth.code, 0, "{}", fourth.stderr);
    assert_eq!(count(&proxy, "RunInstances"), before.0);
    assert_eq!(count(&proxy, "CopyImage") - before.1, 2, "one copy per flavor, into eu-west-1");
    let night_four = read_manifest(&workspace);
    for flavor in ["base", "web"] {
        assert!(night_four["artifacts"][flavor]["eu-west-1"]["image_id"].is_string());
        assert!(night_four["artifacts"][flavor]["eu-west-1"].get("reused_from").is_none(), "a new copy");
        assert!(night_four["artifacts"][flavor]["us-east-1"]["reused_from"].is_string());
    }
    // gc keeps every image the manifest names, reused or not, even under a retention that keeps only the newest
    // image per flavor and region; it removes the rest: `web`'s night-one image and its copy, which night three
    // replaced, with their snapshots.
    std::fs::write(
        &fleet_path,
        format!("{}\n[retention]\nkeep = 1\n", two_flavors(&proxy.endpoint, &sshd, "\"us-east-1\", \"eu-west-1\"")),
    )
    .unwrap();
    let replaced: Vec<(&str, &serde_json::Value)> =
        ["us-west-2", "us-east-1"].into_iter().map(|region| (region, &night_one["artifacts"]["web"][region])).collect();
    let gc = workspace.fleetbake(&["gc", path]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    runtime().block_on(async {
        for region in ["us-west-2", "us-east-1", "eu-west-1"] {
            let client = moto.client(region);
            let mut named: Vec<String> = ["base", "web"]
                .iter()
                .map(|flavor| night_four["artifacts"][flavor][region]["image_id"].as_str().unwrap().to_string())
                .collect();
            named.sort();
            let mut left = fleet_image_ids(&client).await;
            left.sort();
            assert_eq!(left, named, "{region}: exactly the images the manifest names are left");
            assert_nothing_temporary_left(&client, region).await;
        }
        for (region, artifact) in &replaced {
            let client = moto.client(region);
            let id = artifact["image_id"].as_str().unwrap();
            assert!(!night_four.to_string().contains(id), "{id} is not in the manifest");
            let found = client.describe_images().image_ids(id).send().await.unwrap();
            assert!(found.images().is_empty(), "{id} in {region} deregistered");
            let snapshots = artifact["snapshot_ids"].as_array().unwrap();
            assert_eq!(snapshots.len(), 1, "{artifact}");
            let filter =
                aws_sdk_ec2::types::Filter::builder().name("snapshot-id").values(snapshots[0].as_str().unwrap());
            let found = client.describe_snapshots().owner_ids("self").filters(filter.build()).send().await.unwrap();
            assert!(found.snapshots().is_empty(), "{snapshots:?} in {region} deleted");
        }
    });
}

/// The ids of the fleet `it`'s images in the client's region.
async fn fleet_image_ids(client: &aws_sdk_ec2::Client) -> Vec<String> {
    let filter = aws_sdk_ec2::types::Filter::builder().name("tag:fleetbake:fleet").values("it").build();
    let output = client.describe_images().owners("self").filters(filter).send().await.unwrap();
    output.images().iter().map(|image| image.image_id().unwrap().to_string()).collect()
}

/// The SSM parameter `name` in `region`, as moto keeps it: its value, data type and version.
async fn parameter(moto: &Moto, region: &str, name: &str) -> Option<(String, String, i64)> {
    let ssm = moto.ssm(region);
    let found = ssm.get_parameter().name(name).send().await.ok()?;
    let parameter = found.parameter()?;
    Some((parameter.value()?.to_string(), parameter.data_type()?.to_string(), parameter.version()))
}

#[test]
fn a_failing_test_keeps_its_image_from_spreading_and_a_passing_one_runs_on_the_new_image() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"good\"\nsource_ami = {AL2023}\n\
         tests = [{{ type = \"shell\", inline = [\"test -n \\\"$FLEETBAKE_IMAGE_ID\\\"\", \"echo tested $FLEETBAKE_IMAGE_ID\"] }}]\n\n\
         [[flavor]]\nname = \"bad\"\nsource_ami = {AL2023}\n\
         tests = [{{ type = \"shell\", inline = [\"echo docker is not running\", \"exit 3\"] }}]\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n\n\
         [publish]\nssm_parameter = \"/images/{{fleet}}/{{flavor}}\"\n",
        fleet_header_at(&proxy.endpoint, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let failures = manifest["failures"].as_array().unwrap();
    let failed = failures.iter().find(|f| f["flavor"] == "bad" && f["stage"] == "test").expect("bad failed its test");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("exited with status 3") && error.contains("docker is not running"), "{error}");
    assert!(failures.iter().any(|f| f["flavor"] == "bad" && f["region"] == "us-east-1" && f["stage"] == "skipped"));
    assert!(manifest["artifacts"].get("bad").is_none(), "{manifest}");

    // One copy: the good image's; the bad image deregistered.
    let copies = proxy.bodies("CopyImage");
    assert_eq!(copies.len(), 1);
    let good = manifest["artifacts"]["good"]["us-west-2"]["image_id"].as_str().unwrap().to_string();
    assert_eq!(field(&copies[0], "SourceImageId"), [good.as_str()]);
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        let bad_tags = [("fleetbake:flavor", "bad")];
        let mut request = west.describe_images().owners("self");
        for (key, value) in bad_tags {
            request =
                request.filters(aws_sdk_ec2::types::Filter::builder().name(format!("tag:{key}")).values(value).build());
        }
        assert!(request.send().await.unwrap().images().is_empty(), "the failed image is deregistered");
        // The good image's test ran on an instance launched from it.
        let tested = west
            .describe_instances()
            .filters(aws_sdk_ec2::types::Filter::builder().name("image-id").values(&good).build())
            .send()
            .await
            .unwrap();
        assert_eq!(
            tested.reservations().iter().flat_map(|r| r.instances()).count(),
            1,
            "one test instance from {good}"
        );
        for region in ["us-west-2", "us-east-1"] {
            assert_nothing_temporary_left(&moto.client(region), region).await;
            // Published: the good flavor in both regions; nothing for the bad one.
            let (value, data_type, _) = parameter(&moto, region, "/images/it/good").await.expect("published");
            assert_eq!(value, manifest["artifacts"]["good"][region]["image_id"].as_str().unwrap());
            assert_eq!(data_type, "aws:ec2:image");
            assert!(parameter(&moto, region, "/images/it/bad").await.is_none(), "{region}");
        }
    });
    assert!(outcome.stderr.contains(&format!("good/us-west-2: tested {good}")), "{}", outcome.stderr);
}

#[test]
fn published_to_ssm_with_a_label_per_run_and_a_launch_template_and_only_for_complete_flavors() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    // `web`'s copy into us-east-1 is refused: `web` is not complete, so it is published nowhere.
    let proxy = FaultProxy::answering(&moto.endpoint, "CopyImage", "Name=web-", || {
        Answer::Fail(Fault { status: 400, code: "UnauthorizedOperation", message: "not for web" })
    });
    runtime().block_on(async {
        for region in ["us-west-2", "us-east-1"] {
            let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Small)
                .build();
            for name in ["base-nightly", "web-nightly"] {
                moto.client(region)
                    .create_launch_template()
                    .launch_template_name(name)
                    .launch_template_data(data.clone())
                    .send()
                    .await
                    .unwrap();
            }
        }
    });
    let workspace = Workspace::new();
    workspace.write("base.sh", "#!/bin/sh\necho base\n");
    workspace.write("web.sh", "#!/bin/sh\necho web\n");
    let fleet = format!(
        "{}\n[publish]\nssm_parameter = \"/images/{{fleet}}/{{flavor}}\"\nlaunch_template = \"{{flavor}}-nightly\"\n",
        two_flavors(&proxy.endpoint, &sshd, "\"us-east-1\"")
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let first = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(first.code, 1, "{}", first.stderr);
    let manifest = read_manifest(&workspace);
    let run_label = format!("fleetbake-{}", manifest["run_id"].as_str().unwrap());
    let puts = proxy.bodies("PutParameter");
    assert_eq!(puts.len(), 2, "base, in its two regions: {puts:?}");
    assert!(puts.iter().all(|body| body.contains("/images/it/base")), "web published nowhere");
    runtime().block_on(async {
        for region in ["us-west-2", "us-east-1"] {
            let image = manifest["artifacts"]["base"][region]["image_id"].as_str().unwrap();
            let (value, data_type, version) = parameter(&moto, region, "/images/it/base").await.unwrap();
            assert_eq!((value.as_str(), data_type.as_str(), version), (image, "aws:ec2:image", 1));
            assert!(parameter(&moto, region, "/images/it/web").await.is_none());
            // The launch template's default version is a new one, with the image.
            let client = moto.client(region);
            let versions = client
                .describe_launch_template_versions()
                .launch_template_name("base-nightly")
                .versions("$Default")
                .send()
                .await
                .unwrap();
            let default = &versions.launch_template_versions()[0];
            assert_eq!(default.version_number(), Some(2), "{region}");
            assert_eq!(default.launch_template_data().and_then(|data| data.image_id()), Some(image));
            let web = client
                .describe_launch_template_versions()
                .launch_template_name("web-nightly")
                .versions("$Default")
                .send()
                .await
                .unwrap();
            assert_eq!(web.launch_template_versions()[0].version_number(), Some(1), "web untouched in {region}");
            // The manifest says what was published where.
            let published = manifest["artifacts"]["base"][region]["published"].as_array().unwrap();
            assert!(
                published.iter().any(|p| p["kind"] == "ssm_parameter"
                    && p["name"] == "/images/it/base"
                    && p["label"] == run_label.as_str()),
                "{published:?}"
            );
            assert!(published.iter().any(|p| p["kind"] == "launch_template" && p["version"] == 2), "{published:?}");
        }
    });
    // Each PutParameter was followed by a label naming the run; the earlier value stays in the history.
    let labels = proxy.bodies("LabelParameterVersion");
    assert_eq!(labels.len(), 2);
    assert!(labels.iter().all(|body| body.contains(&run_label)), "{labels:?}");
}
