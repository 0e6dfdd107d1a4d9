//! Layered fleets (`source_ami = { flavor = … }`) on the simulated cloud, in virtual time: a child build starts
//! from its parent's image of the same run in its region, as soon as that image is there (built there, or
//! copied in), and a parent that fails skips exactly its children in that region.

use serde_json::Value;

use crate::harness::Workspace;
use crate::sim::{failures, run_sim_with, SimRun};

/// base builds in us-west-2 (copied to us-east-1) and in eu-central-1; mid is built from base where base
/// lands (eu-central-1 from base's build there, us-east-1 from its copy), leaf from mid.
fn layered(sim: &str) -> String {
    format!(
        r#"[fleet]
name = "layers"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

[[flavor]]
name = "leaf"
source_ami = {{ flavor = "mid" }}

[[flavor]]
name = "base"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
provisioners = [{{ type = "shell", inline = ["echo harden"] }}]

[[flavor]]
name = "mid"
source_ami = {{ flavor = "base" }}
provisioners = [{{ type = "shell", inline = ["echo docker"] }}]

[regions]
us-west-2 = ["us-east-1"]
eu-central-1 = []
us-east-1 = []

[matrix]
exclude = [
  {{ flavor = "base", region = "us-east-1" }},
  {{ flavor = "mid", region = "us-west-2" }},
  {{ flavor = "leaf", region = "us-west-2" }},
]

[ssh]
source_cidrs = ["203.0.113.5/32"]

[sim]
{sim}
"#
    )
}

fn events(workspace: &Workspace) -> Vec<Value> {
    let text = std::fs::read_to_string(workspace.path("events.jsonl")).unwrap();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// When the event of `kind` about `flavor`/`region` happened (RFC 3339, to the second).
fn time_of(events: &[Value], kind: &str, flavor: &str, region: &str) -> String {
    let event = events
        .iter()
        .find(|event| event["type"] == kind && event["flavor"] == flavor && event["region"] == region)
        .unwrap_or_else(|| panic!("no {kind} of {flavor}/{region}"));
    event["time"].as_str().unwrap().to_string()
}

fn run(workspace: &Workspace, sim: &str) -> SimRun {
    let events = workspace.path("events.jsonl");
    run_sim_with(workspace, &layered(sim), &["--events", events.to_str().unwrap()])
}

#[test]
fn a_child_starts_from_its_parent_s_copy_when_that_copy_is_available_and_chains_to_any_depth() {
    let workspace = Workspace::new();
    let night = run(&workspace, "seed = 3");
    assert_eq!(night.outcome.code, 0, "stderr:\n{}", night.outcome.stderr);
    let artifacts = &night.manifest["artifacts"];
    let image = |flavor: &str, region: &str| artifacts[flavor][region]["image_id"].as_str().unwrap().to_string();

    // Each child's image was built from its parent's image of this run in the same region, and says so.
    for (child, parent, region) in [
        ("mid", "base", "us-east-1"),
        ("mid", "base", "eu-central-1"),
        ("leaf", "mid", "us-east-1"),
        ("leaf", "mid", "eu-central-1"),
    ] {
        let entry = &artifacts[child][region];
        assert_eq!(entry["source_image_id"].as_str().unwrap(), image(parent, region), "{child}/{region}");
        assert_eq!(
            entry["parent"],
            serde_json::json!({ "flavor": parent, "image_id": image(parent, region) }),
            "{child}/{region}"
        );
    }
    assert!(artifacts["base"]["us-west-2"].get("parent").is_none());

    // mid in us-east-1 starts when base's copy there is available: not when base's build ended (the copy
    // takes minutes), and not later.
    let events = events(&workspace);
    let base_built = time_of(&events, "image_available", "base", "us-west-2");
    let base_copied = time_of(&events, "image_available", "base", "us-east-1");
    let mid_started = time_of(&events, "job_started", "mid", "us-east-1");
    assert!(base_built < base_copied, "{base_built} {base_copied}");
    assert_eq!(mid_started, base_copied, "mid waits for the copy, and no longer");
    assert_eq!(
        time_of(&events, "job_started", "leaf", "us-east-1"),
        time_of(&events, "image_available", "mid", "us-east-1")
    );

    // The summary's bound counts the chain base → copy → mid → leaf: the night cannot beat it.
    let bound = night.summary["critical_path_seconds"].as_f64().unwrap();
    let makespan = night.summary["makespan_seconds"].as_f64().unwrap();
    assert!(bound <= makespan && makespan <= bound * 1.03, "bound {bound}, makespan {makespan}");
}

#[test]
fn a_parent_failing_in_one_region_skips_exactly_its_children_there() {
    let workspace = Workspace::new();
    // The first CreateImage in eu-central-1 is base's (mid and leaf wait for it there): its image fails.
    let sim = "faults = [{ action = \"CreateImage\", region = \"eu-central-1\", image_state = \"failed\", nth = 1 }]";
    let night = run(&workspace, sim);
    assert_eq!(night.outcome.code, 1, "stderr:\n{}", night.outcome.stderr);
    let mut failed = failures(&night.manifest);
    failed.sort();
    let places: Vec<(&str, &str, &str)> =
        failed.iter().map(|(flavor, region, stage, _)| (flavor.as_str(), region.as_str(), stage.as_str())).collect();
    assert_eq!(
        places,
        [
            ("base", "eu-central-1", "wait_image"),
            ("leaf", "eu-central-1", "skipped"),
            ("mid", "eu-central-1", "skipped")
        ]
    );
    let error_of = |flavor: &str| {
        let failures = night.manifest["failures"].as_array().unwrap();
        let failure = failures.iter().find(|f| f["flavor"] == flavor && f["stage"] == "skipped").unwrap();
        failure["error"].as_str().unwrap().to_string()
    };
    assert_eq!(error_of("mid"), "parent base/eu-central-1 failed");
    assert_eq!(error_of("leaf"), "parent mid/eu-central-1 not made: base/eu-central-1 failed");
    assert!(night.outcome.stderr.contains("parent base/eu-central-1 failed"), "{}", night.outcome.stderr);
    // Everywhere else the layers were made.
    let artifacts = &night.manifest["artifacts"];
    for (flavor, region) in [("base", "us-west-2"), ("base", "us-east-1"), ("mid", "us-east-1"), ("leaf", "us-east-1")]
    {
        assert!(artifacts[flavor][region]["image_id"].is_string(), "{flavor}/{region}: {artifacts}");
    }
    assert!(artifacts["mid"].get("eu-central-1").is_none());
    assert_eq!(night.summary["leaked_resources"], serde_json::json!([]));
}

/// moto + sshd: `base` built in us-west-2 from its filter and copied to us-east-1, `app` built in us-east-1
/// from base's copy there (`base.sh` is base's script).
fn moto_layered(endpoint: &str, sshd: &crate::harness::Sshd) -> String {
    format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {}\nprovisioners = [{{ type = \"shell\", script = \"base.sh\" }}]\n\n\
         [[flavor]]\nname = \"app\"\nsource_ami = {{ flavor = \"base\" }}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo app\"] }}]\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\nus-east-1 = []\n\n\
         [matrix]\nexclude = [{{ flavor = \"base\", region = \"us-east-1\" }}, {{ flavor = \"app\", region = \"us-west-2\" }}]\n",
        crate::matrix::fleet_header_at(endpoint, sshd),
        crate::matrix::AL2023
    )
}

fn count(proxy: &crate::proxy::FaultProxy, action: &str) -> usize {
    proxy.actions().iter().filter(|seen| *seen == action).count()
}

/// One night through a recording proxy: its outcome, the manifest, and the proxy.
fn moto_night(
    workspace: &Workspace,
    sshd: &crate::harness::Sshd,
    proxy: crate::proxy::FaultProxy,
    more: &[&str],
) -> (crate::harness::Outcome, Value, crate::proxy::FaultProxy) {
    let fleet_path = workspace.write("fleet.toml", &moto_layered(&proxy.endpoint, sshd));
    let mut args = vec!["matrix", fleet_path.to_str().unwrap(), "--no-preflight"];
    args.extend_from_slice(more);
    let outcome = workspace.fleetbake(&args);
    let manifest = crate::matrix::read_manifest(workspace);
    (outcome, manifest, proxy)
}

#[test]
fn base_and_child_across_two_regions_on_moto_built_reused_rebuilt_and_skipped() {
    use crate::proxy::{Fault, FaultProxy};
    let moto = crate::harness::Moto::start();
    let sshd = crate::harness::Sshd::start();
    let workspace = Workspace::new();
    workspace.write("base.sh", "#!/bin/sh\necho base v1\n");

    // Night one: the child is built in us-east-1 from base's fresh copy there.
    let (night, manifest, proxy) = moto_night(&workspace, &sshd, FaultProxy::recording(&moto.endpoint), &[]);
    assert_eq!(night.code, 0, "{}", night.stderr);
    let artifacts = &manifest["artifacts"];
    let base_copy = artifacts["base"]["us-east-1"]["image_id"].as_str().unwrap().to_string();
    assert_ne!(base_copy, artifacts["base"]["us-west-2"]["image_id"].as_str().unwrap());
    let app = &artifacts["app"]["us-east-1"];
    assert_eq!(app["parent"], serde_json::json!({ "flavor": "base", "image_id": base_copy }), "{manifest}");
    assert_eq!(app["source_image_id"].as_str().unwrap(), base_copy);
    // The instance was launched from it (RunInstances as the SDK sent it), and the image is tagged with it.
    let launches = proxy.bodies("RunInstances");
    assert_eq!(launches.len(), 2, "{launches:?}");
    assert!(launches.iter().any(|body| body.contains(&format!("ImageId={base_copy}"))), "{launches:?}");
    let tagged = proxy.bodies("CreateImage");
    assert!(
        tagged.iter().any(|body| body.contains("fleetbake%3Aparent-image-id") && body.contains(&base_copy)),
        "{tagged:?}"
    );
    assert!(night.stderr.contains(&format!("source image {base_copy}")), "{}", night.stderr);

    // Night two, nothing changed: both reused, nothing launched.
    let (night, manifest, proxy) =
        moto_night(&workspace, &sshd, FaultProxy::recording(&moto.endpoint), &["--changed-only"]);
    assert_eq!(night.code, 0, "{}", night.stderr);
    for action in ["RunInstances", "CreateImage", "CopyImage"] {
        assert_eq!(count(&proxy, action), 0, "{action}: {}", night.stderr);
    }
    assert_eq!(manifest["artifacts"]["app"]["us-east-1"]["image_id"], app["image_id"]);
    assert_eq!(manifest["artifacts"]["app"]["us-east-1"]["parent"]["image_id"], base_copy.as_str());

    // Night three, base's script changed: base is rebuilt (and copied), so app is too, from the new copy.
    workspace.write("base.sh", "#!/bin/sh\necho base v2\n");
    let (night, manifest, proxy) =
        moto_night(&workspace, &sshd, FaultProxy::recording(&moto.endpoint), &["--changed-only"]);
    assert_eq!(night.code, 0, "{}", night.stderr);
    assert_eq!((count(&proxy, "RunInstances"), count(&proxy, "CopyImage")), (2, 1), "{}", night.stderr);
    let new_copy = manifest["artifacts"]["base"]["us-east-1"]["image_id"].as_str().unwrap().to_string();
    assert_ne!(new_copy, base_copy);
    assert_eq!(manifest["artifacts"]["app"]["us-east-1"]["parent"]["image_id"], new_copy.as_str(), "{manifest}");
    assert_ne!(manifest["artifacts"]["app"]["us-east-1"]["image_id"], app["image_id"]);

    // Night four, base's CreateImage refused: app is skipped, saying why, and never launched.
    workspace.write("base.sh", "#!/bin/sh\necho base v3\n");
    let refused = Fault { status: 403, code: "UnauthorizedOperation", message: "You are not authorized." };
    let (night, manifest, proxy) =
        moto_night(&workspace, &sshd, FaultProxy::refusing(&moto.endpoint, "CreateImage", refused), &[]);
    assert_eq!(night.code, 1, "{}", night.stderr);
    assert!(count(&proxy, "CreateImage") > 0, "base's CreateImage went through the proxy");
    let failures = manifest["failures"].as_array().unwrap();
    let skipped = failures.iter().find(|failure| failure["flavor"] == "app").expect("app's failure");
    assert_eq!(skipped["stage"], "skipped");
    assert_eq!(skipped["error"], "parent base/us-west-2 failed");
    assert!(night.stderr.contains("parent base/us-west-2 failed"), "{}", night.stderr);

    // `--only app`: base is not built, so app starts from base's newest image in us-east-1 (night three's copy;
    // night four made none), and says so.
    let (night, _, proxy) = moto_night(&workspace, &sshd, FaultProxy::recording(&moto.endpoint), &["--only", "app"]);
    assert_eq!(night.code, 0, "{}", night.stderr);
    let launches = proxy.bodies("RunInstances");
    assert_eq!(launches.len(), 1, "{launches:?}");
    assert!(launches[0].contains(&format!("ImageId={new_copy}")), "{launches:?}");
    assert!(night.stderr.contains("`base`'s newest image here: `base` is not built in this run"), "{}", night.stderr);

    // `--only app` with a manifest that lists base's older copy (night two's, still available): the manifest's
    // image is taken before the newest, and said so.
    let mut listed = crate::matrix::read_manifest(&workspace);
    let mut entry = listed["artifacts"]["app"]["us-east-1"].clone();
    entry["image_id"] = serde_json::json!(base_copy);
    listed["artifacts"]["base"] = serde_json::json!({ "us-east-1": entry });
    workspace.write("out/manifest.json", &serde_json::to_string_pretty(&listed).unwrap());
    let (night, _, proxy) = moto_night(&workspace, &sshd, FaultProxy::recording(&moto.endpoint), &["--only", "app"]);
    assert_eq!(night.code, 0, "{}", night.stderr);
    let launches = proxy.bodies("RunInstances");
    assert!(launches[0].contains(&format!("ImageId={base_copy}")), "{launches:?}");
    assert!(night.stderr.contains("`base`'s image in the manifest"), "{}", night.stderr);
}
