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
