//! `source_ami = { ssm_parameter = … }` (issue 24): the image id an SSM parameter holds, read in each build
//! region. On the simulated cloud (AWS's public `/aws/service/…` parameters name each region's own image; the
//! account's own parameters keep versions as SSM does): each region builds from its own image and the manifest
//! and the tags say which parameter; a new version of the parameter rebuilds under `--changed-only`, an
//! unchanged one is reused; the preflight names a parameter that does not exist. On moto + sshd: the instance
//! launches from the parameter's value.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::Workspace;
use crate::sharing::{load, night, paused_runtime};
use fleetbake::cloud::sim::SimCloud;
use fleetbake::cloud::{Cloud, ImageId, ImageQuery};
use fleetbake::config::{ImageFilter, Region, Tags};

const AL2023: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
const OWN: &str = "/images/golden/base";
const REGIONS: [&str; 2] = ["us-west-2", "eu-west-1"];

/// One flavor built in us-west-2 and eu-west-1 from the SSM parameter `parameter`.
fn fleet(parameter: &str) -> String {
    fleet_copied(parameter, "")
}

/// As [`fleet`], us-west-2's image copied to `copies`.
fn fleet_copied(parameter: &str, copies: &str) -> String {
    format!(
        r#"[fleet]
name = "ssmsource"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

[[flavor]]
name = "base"
source_ami = {{ ssm_parameter = "{parameter}" }}
provisioners = [{{ type = "shell", inline = ["echo base"] }}]

[regions]
us-west-2 = [{copies}]
eu-west-1 = []

[ssh]
source_cidrs = ["203.0.113.5/32"]
"#
    )
}

fn read_json(workspace: &Workspace, relative: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(workspace.path(relative)).unwrap()).unwrap()
}

/// The Amazon Linux 2023 x86_64 images DescribeImages lists in `region`, oldest first.
async fn al2023_images(sim: &SimCloud, region: &str) -> Vec<ImageId> {
    let filter = ImageFilter {
        owners: vec!["amazon".into()],
        name_pattern: "al2023-ami-2023.*-kernel-6.1-x86_64".into(),
        architecture: None,
    };
    let mut images = sim.region(&Region::new(region)).find_images(&filter).await.unwrap();
    images.sort_by(|a, b| a.creation_date.cmp(&b.creation_date));
    images.into_iter().map(|image| image.id).collect()
}

/// The fleet's images of `base` in `region`, with their tags.
async fn fleet_images(sim: &SimCloud, region: &str) -> Vec<fleetbake::cloud::OwnedImage> {
    let tags = Tags::from([("fleetbake:flavor".to_string(), "base".to_string())]);
    sim.region(&Region::new(region)).find_owned_images(&ImageQuery::Tagged(tags)).await.unwrap()
}

/// AWS's public parameter names each region's own newest Amazon Linux 2023 image: each region's build starts
/// from it, and its manifest entry and its image's tags name the parameter and the image; a copy's entry
/// names its build's.
#[test]
fn each_region_builds_from_the_image_its_public_parameter_names() {
    let workspace = Workspace::new();
    let runtime = paused_runtime();
    let fleet = load(&workspace, &fleet_copied(AL2023, "\"us-east-1\""), false);
    let sim = runtime.block_on(async { Arc::new(SimCloud::new(&fleet)) });
    let summary = runtime.block_on(night(&sim, &fleet));
    assert_eq!((summary.failed, summary.succeeded), (0, 3), "{summary:?}");
    let manifest = read_json(&workspace, "manifest.json");
    let mut sources = Vec::new();
    for region in REGIONS {
        let newest = runtime.block_on(al2023_images(&sim, region)).pop().unwrap();
        let entry = &manifest["artifacts"]["base"][region];
        assert_eq!(entry["source_image_id"], newest.as_str(), "{region}: {entry}");
        assert_eq!(entry["source_parameter"], serde_json::json!({ "name": AL2023, "version": 1 }), "{region}");
        let images = runtime.block_on(fleet_images(&sim, region));
        assert_eq!(images.len(), 1, "{region}");
        assert_eq!(images[0].tags["fleetbake:source-parameter"], AL2023, "{region}");
        assert_eq!(images[0].tags["fleetbake:source-image-id"], newest.as_str(), "{region}");
        sources.push(newest);
    }
    assert_ne!(sources[0], sources[1], "each region's own image");
    let copy = &manifest["artifacts"]["base"]["us-east-1"];
    assert_eq!(copy["source_image_id"], sources[0].as_str(), "{copy}");
    assert_eq!(copy["source_parameter"], serde_json::json!({ "name": AL2023, "version": 1 }), "{copy}");
}

/// The account's own parameter: an unchanged version is reused under `--changed-only`; a new version (a new
/// image) rebuilds, and so does a new version holding the same image (the version is in the fingerprint).
#[test]
fn a_new_version_of_the_parameter_rebuilds_under_changed_only_and_an_unchanged_one_is_reused() {
    let workspace = Workspace::new();
    let runtime = paused_runtime();
    let first = load(&workspace, &fleet(OWN), false);
    let sim = runtime.block_on(async { Arc::new(SimCloud::new(&first)) });
    // Puts `choose(images)` in each region, and waits out SSM's validation of the image id.
    let put = |choose: fn(&[ImageId]) -> ImageId| {
        runtime.block_on(async {
            for region in REGIONS {
                let image = choose(&al2023_images(&sim, region).await);
                sim.region(&Region::new(region)).put_image_parameter(OWN, &image).await.unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        })
    };
    put(|images| images[0].clone());
    let night_one = runtime.block_on(night(&sim, &first));
    assert_eq!((night_one.failed, night_one.succeeded), (0, 2), "{night_one:?}");
    let before = read_json(&workspace, "manifest.json")["artifacts"]["base"].clone();
    assert_eq!(before["us-west-2"]["source_parameter"]["version"], 1);

    let changed_only = load(&workspace, &fleet(OWN), true);
    let quiet = runtime.block_on(night(&sim, &changed_only));
    assert_eq!((quiet.failed, quiet.reused), (0, 2), "the same version: reused: {quiet:?}");
    let reused = read_json(&workspace, "manifest.json")["artifacts"]["base"].clone();
    for region in REGIONS {
        assert_eq!(reused[region]["image_id"], before[region]["image_id"], "{region}");
        assert_eq!(reused[region]["source_parameter"]["version"], 1, "{region}");
    }

    put(|images| images[1].clone());
    let moved = runtime.block_on(night(&sim, &changed_only));
    assert_eq!((moved.failed, moved.reused, moved.succeeded), (0, 0, 2), "version 2: rebuilt: {moved:?}");
    let after = read_json(&workspace, "manifest.json")["artifacts"]["base"].clone();
    for region in REGIONS {
        let newest = runtime.block_on(al2023_images(&sim, region))[1].clone();
        assert_ne!(after[region]["image_id"], before[region]["image_id"], "{region}");
        assert_eq!(after[region]["source_image_id"], newest.as_str(), "{region}");
        assert_eq!(after[region]["source_parameter"]["version"], 2, "{region}");
    }

    put(|images| images[1].clone());
    let same_image = runtime.block_on(night(&sim, &changed_only));
    assert_eq!((same_image.failed, same_image.reused), (0, 0), "version 3 of the same image: {same_image:?}");
}

/// The preflight says which parameter version each region's source image was read from, and names a parameter
/// that does not exist, per build region, and what to change (`matrix` stops there, before anything is made),
/// and one that holds no image id.
#[test]
fn the_preflight_names_a_missing_parameter_in_each_region() {
    let workspace = Workspace::new();
    let path = workspace.write("fleet.toml", &fleet(AL2023));
    let preflight = workspace.fleetbake(&["preflight", path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 0, "{}{}", preflight.stdout, preflight.stderr);
    for region in REGIONS {
        let line = preflight.stdout.lines().find(|line| line.starts_with(&format!("ok   {region}: source image of")));
        let line = line.unwrap_or_else(|| panic!("{region}:\n{}", preflight.stdout));
        assert!(line.ends_with(&format!("from SSM parameter `{AL2023}` version 1")), "{line}");
    }

    let path = workspace.write("fleet.toml", &fleet("/images/never-made"));
    let preflight = workspace.fleetbake(&["preflight", path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    for region in REGIONS {
        let expected = format!(
            "FAIL {region}: source image of `base`: SSM parameter `/images/never-made` does not exist in {region}"
        );
        let line = preflight.stdout.lines().find(|line| line.starts_with(&expected));
        let line = line.unwrap_or_else(|| panic!("no `{expected}`:\n{}", preflight.stdout));
        assert!(line.contains("check its `source_ami`"), "{line}");
    }
    let matrix = workspace.fleetbake(&["matrix", path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(matrix.code, 1, "{}", matrix.stderr);
    assert!(matrix.stderr.contains("SSM parameter `/images/never-made` does not exist"), "{}", matrix.stderr);

    // A parameter that holds text, not an image id: named with its version and its value, quoted.
    let declared = "\n[sim]\nparameters = [{ name = \"/images/notes\", data_type = \"text\" }]\n";
    let path = workspace.write("fleet.toml", &(fleet("/images/notes") + declared));
    let preflight = workspace.fleetbake(&["preflight", path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    for region in REGIONS {
        let expected = format!(
            "FAIL {region}: source image of `base`: SSM parameter `/images/notes` (version 1) in {region} holds \"made by the account\", not an image id"
        );
        assert!(
            preflight.stdout.lines().any(|line| line.starts_with(&expected)),
            "no `{expected}`:\n{}",
            preflight.stdout
        );
    }
}

/// `ssm:GetParameter` (`source_ami = { ssm_parameter = … }`) has a statement of its own, on AWS's public
/// parameters and the build account's own: nothing else is read from SSM with it.
#[test]
fn the_iam_policy_reads_public_and_own_parameters_only() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/iam-policy.json")).unwrap();
    let policy: Value = serde_json::from_str(&text).unwrap();
    let granting: Vec<&Value> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|statement| statement["Action"].as_array().unwrap().iter().any(|a| a == "ssm:GetParameter"))
        .collect();
    assert_eq!(granting.len(), 1, "{granting:?}");
    assert_eq!(granting[0]["Sid"], "FleetbakeSourceParameters");
    assert_eq!(granting[0]["Action"], serde_json::json!(["ssm:GetParameter"]));
    let resources =
        serde_json::json!(["arn:aws:ssm:*::parameter/aws/service/*", "arn:aws:ssm:*:BUILD_ACCOUNT_ID:parameter/*"]);
    assert_eq!(granting[0]["Resource"], resources);
}

/// moto + sshd: moto's SSM serves AWS's public Amazon Linux parameters per region, naming one of its EC2
/// images; the build launches from that image (its instance's `ImageId`, as EC2 keeps it), GetParameter is sent
/// with the parameter's name, and the manifest and the image's tags name the parameter and its version.
#[test]
fn on_moto_the_build_launches_from_the_image_the_parameter_holds() {
    use crate::harness::{runtime, FaultProxy, Moto, Sshd};
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let text = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {{ ssm_parameter = \"{AL2023}\" }}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo base\"] }}]\n\n[regions]\nus-west-2 = []\n",
        crate::matrix::fleet_header_at(&proxy.endpoint, &sshd)
    );
    let path = workspace.write("fleet.toml", &text);
    let (value, version) = runtime().block_on(async {
        let answer = moto.ssm("us-west-2").get_parameter().name(AL2023).send().await.unwrap();
        let parameter = answer.parameter().unwrap();
        (parameter.value().unwrap().to_string(), parameter.version())
    });
    assert!(value.starts_with("ami-"), "{value}");

    let run = workspace.fleetbake(&["matrix", path.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let asked = proxy.bodies("GetParameter");
    assert!(!asked.is_empty() && asked.iter().all(|body| body.contains(AL2023)), "{asked:?}");

    let (launched_from, tags) = runtime().block_on(async {
        let ec2 = moto.client("us-west-2");
        let instances = ec2.describe_instances().send().await.unwrap();
        let launched: Vec<String> = instances
            .reservations()
            .iter()
            .flat_map(|reservation| reservation.instances())
            .filter_map(|instance| instance.image_id().map(str::to_string))
            .collect();
        let filter = aws_sdk_ec2::types::Filter::builder().name("tag:fleetbake:fleet").values("it").build();
        let images = ec2.describe_images().owners("self").filters(filter).send().await.unwrap();
        let tags: Vec<(String, String)> = images.images()[0]
            .tags()
            .iter()
            .map(|tag| (tag.key().unwrap().to_string(), tag.value().unwrap().to_string()))
            .collect();
        (launched, tags)
    });
    assert_eq!(launched_from, std::slice::from_ref(&value), "the build instance's ImageId");
    assert!(tags.contains(&("fleetbake:source-parameter".into(), AL2023.into())), "{tags:?}");
    assert!(tags.contains(&("fleetbake:source-image-id".into(), value.clone())), "{tags:?}");
    let manifest = crate::matrix::read_manifest(&workspace);
    let entry = &manifest["artifacts"]["base"]["us-west-2"];
    assert_eq!(entry["source_image_id"], value.as_str());
    assert_eq!(entry["source_parameter"], serde_json::json!({ "name": AL2023, "version": version }));
}
