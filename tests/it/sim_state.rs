//! `[sim] state`: a simulated account kept between runs, through the binary. Two simulated nights of one fleet:
//! the second `--changed-only` night reuses every image (no RunInstances), `plan --changed-only --cloud sim`
//! says so first; a changed provisioner makes a third night build new images, and `gc --cloud sim` retires the
//! first night's by `[retention] keep`, the state file then without them; the SSM parameter's history survives
//! every night. And the file's own rules: 0600, a version, an unreadable or newer one named.

use serde_json::Value;

use crate::harness::*;

const FLEET: &str = r#"[fleet]
name = "offline"
ami_name = "{flavor}-{build_region}-{timestamp}"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

[[flavor]]
name = "base"
source_ami = { id = "ami-12345678" }
sim_provision = "1m"
provisioners = [{ type = "shell", inline = ["echo release 1"] }]

[regions]
us-west-2 = ["us-east-1"]

[ssh]
source_cidrs = ["203.0.113.5/32"]

[publish]
ssm_parameter = "/images/{fleet}/{flavor}"

[retention]
keep = 1

[sim]
state = "account/state.json"
"#;

/// `fleetbake ARGS` with no AWS credentials at all: the simulated account needs none.
pub(crate) fn offline(workspace: &Workspace, args: &[&str]) -> Outcome {
    let outcome = workspace.fleetbake_with_env(
        args,
        &[("AWS_CONFIG_FILE", "/nonexistent"), ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")],
    );
    assert!(!outcome.stderr.contains(" WARN "), "no SDK log line: {}", outcome.stderr);
    outcome
}

/// A `matrix --cloud sim` night with its statistics; `more` after the fleet file.
fn night(workspace: &Workspace, fleet: &str, more: &[&str]) -> (Value, Value) {
    let summary = workspace.path("summary.json");
    let mut args = vec!["matrix", fleet, "--plain", "--cloud", "sim", "--summary-json", summary.to_str().unwrap()];
    args.extend_from_slice(more);
    let outcome = offline(workspace, &args);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    (workspace.read_json("manifest.sim.json"), workspace.read_json("summary.json"))
}

fn launched(summary: &Value) -> u64 {
    summary["sim"]["instances_launched"].as_object().map_or(0, |types| types.values().filter_map(Value::as_u64).sum())
}

/// The account's images in the state file: (region, id).
fn saved_images(state: &Value) -> Vec<(String, String)> {
    let mut images = Vec::new();
    for place in state["places"].as_array().unwrap() {
        for image in place["images"].as_array().unwrap() {
            images.push((place["region"].as_str().unwrap().to_string(), image["id"].as_str().unwrap().to_string()));
        }
    }
    images.sort();
    images
}

/// The SSM parameter's versions in the state file: (version, value).
fn parameter_versions(state: &Value, name: &str) -> Vec<(u64, String)> {
    let place = state["places"].as_array().unwrap().iter().find(|place| place["region"] == "us-west-2").unwrap();
    place["publishing"]["parameters"][name]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|version| (version["version"].as_u64().unwrap(), version["value"].as_str().unwrap().to_string()))
        .collect()
}

fn image_of(manifest: &Value, region: &str) -> String {
    manifest["artifacts"]["base"][region]["image_id"].as_str().unwrap().to_string()
}

#[test]
fn two_simulated_nights_reuse_then_gc_retires_the_first_nights_images() {
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", FLEET);
    let fleet = fleet_path.to_str().unwrap();
    let state_path = workspace.path("account/state.json");
    std::fs::create_dir_all(state_path.parent().unwrap()).unwrap();

    // Night one: an empty account, one build and its copy, published; the account is kept, 0600.
    let (first, summary) = night(&workspace, fleet, &[]);
    assert_eq!(launched(&summary), 1, "{summary}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&state_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the state file is private");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    assert_eq!(state["version"], fleetbake::cloud::sim::STATE_VERSION);
    let night_one = vec![
        ("us-east-1".to_string(), image_of(&first, "us-east-1")),
        ("us-west-2".to_string(), image_of(&first, "us-west-2")),
    ];
    assert_eq!(saved_images(&state), night_one);
    let parameter = "/images/offline/base";
    assert_eq!(parameter_versions(&state, parameter), vec![(1, image_of(&first, "us-west-2"))]);

    // Before night two, read-only: the plan says every image is reused, and the account is not written.
    let before = std::fs::read(&state_path).unwrap();
    let plan = offline(&workspace, &["plan", fleet, "--changed-only", "--cloud", "sim"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stdout.starts_with("fleet `offline`: 0 to rebuild, 1 to reuse\n"), "{}", plan.stdout);
    assert!(plan.stdout.contains(&format!("us-east-1: has {}", image_of(&first, "us-east-1"))), "{}", plan.stdout);
    assert_eq!(std::fs::read(&state_path).unwrap(), before, "plan leaves the account as it was");

    // Night two, --changed-only: no instance, every image the first night's, said reused.
    let (second, summary) = night(&workspace, fleet, &["--changed-only"]);
    assert_eq!(launched(&summary), 0, "no RunInstances: {summary}");
    for region in ["us-west-2", "us-east-1"] {
        let image = &second["artifacts"]["base"][region];
        assert_eq!(image["image_id"].as_str().unwrap(), image_of(&first, region));
        assert_eq!(image["reused_from"], first["run_id"], "{region}: {image}");
    }

    // A new release (the provisioner changed): night three builds new images, later than the first night's in
    // the account's clock.
    std::fs::write(&fleet_path, FLEET.replace("echo release 1", "echo release 2")).unwrap();
    let (third, summary) = night(&workspace, fleet, &["--changed-only"]);
    assert_eq!(launched(&summary), 1, "{summary}");
    assert!(third["run_id"].as_str().unwrap() > first["run_id"].as_str().unwrap(), "{third}");
    let night_three = vec![
        ("us-east-1".to_string(), image_of(&third, "us-east-1")),
        ("us-west-2".to_string(), image_of(&third, "us-west-2")),
    ];
    assert!(night_three.iter().all(|image| !night_one.contains(image)));

    // gc --dry-run names what `keep = 1` retires and removes nothing; gc then removes exactly that.
    let dry = offline(&workspace, &["gc", fleet, "--dry-run", "--cloud", "sim"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    for (_, image) in &night_one {
        assert!(dry.stdout.contains(&format!("{image} ")), "{}", dry.stdout);
    }
    assert!(dry.stdout.contains("would remove 0 temporary resources and deregister 2 images"), "{}", dry.stdout);
    let gc = offline(&workspace, &["gc", fleet, "--cloud", "sim"]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    assert!(gc.stdout.contains("deregistered 2 images and deleted 2 snapshots; 0 failed"), "{}", gc.stdout);
    for (_, image) in &night_three {
        assert!(gc.stdout.contains(&format!("{image} ")) && gc.stdout.contains("kept"), "{}", gc.stdout);
    }
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    assert_eq!(saved_images(&state), night_three, "the first night's images are gone from the account");

    // The parameter's history: night one's version, then night three's (night two reused: nothing new).
    assert_eq!(
        parameter_versions(&state, parameter),
        vec![(1, image_of(&first, "us-west-2")), (2, image_of(&third, "us-west-2"))]
    );
}

#[test]
fn an_unreadable_or_newer_state_file_is_named_and_nothing_runs() {
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &FLEET.replace("account/state.json", "state.json"));
    let fleet = fleet_path.to_str().unwrap();
    let state_path = workspace.write("state.json", "{ not json");
    for args in [
        vec!["matrix", fleet, "--plain", "--cloud", "sim"],
        vec!["plan", fleet, "--changed-only", "--cloud", "sim"],
        vec!["gc", fleet, "--cloud", "sim"],
        vec!["preflight", fleet, "--cloud", "sim"],
    ] {
        let outcome = offline(&workspace, &args);
        assert_eq!(outcome.code, 1, "{args:?}: {}", outcome.stderr);
        assert!(
            outcome.stderr.contains(&format!("`{}` (`[sim] state`) is not a simulated account", state_path.display())),
            "{args:?}: {}",
            outcome.stderr
        );
    }
    assert_eq!(std::fs::read_to_string(&state_path).unwrap(), "{ not json", "left as it was");
    assert!(!workspace.path("manifest.sim.json").exists(), "nothing ran");

    std::fs::write(&state_path, r#"{ "version": 99, "whatever": [] }"#).unwrap();
    let outcome = offline(&workspace, &["matrix", fleet, "--plain", "--cloud", "sim"]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    assert!(outcome.stderr.contains("holds a simulated account of format version 99"), "{}", outcome.stderr);
}

#[test]
fn an_empty_state_path_is_refused_at_its_line() {
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &FLEET.replace("state = \"account/state.json\"", "state = \"\""));
    let outcome = workspace.fleetbake(&["validate", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    let line = FLEET.lines().position(|line| line.starts_with("state = ")).unwrap() + 1;
    assert!(
        outcome.stderr.contains(&format!("fleet.toml:{line}:")) && outcome.stderr.contains("sim.state"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn a_night_that_fails_keeps_what_it_built_in_the_account_and_the_next_night_reuses_it() {
    let workspace = Workspace::new();
    // Every CopyImage refused: the build's image is made, its copy fails, the run exits 1.
    let failing = FLEET.replace(
        "state = \"account/state.json\"",
        "state = \"state.json\"\nfaults = [{ action = \"CopyImage\", error = \"UnauthorizedOperation\", probability = 1.0 }]",
    );
    let fleet_path = workspace.write("fleet.toml", &failing);
    let fleet = fleet_path.to_str().unwrap();
    let outcome = offline(&workspace, &["matrix", fleet, "--plain", "--cloud", "sim"]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let first = workspace.read_json("manifest.sim.json");
    let built = image_of(&first, "us-west-2");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(workspace.path("state.json")).unwrap()).unwrap();
    assert_eq!(saved_images(&state), vec![("us-west-2".to_string(), built.clone())], "the build is kept, no copy");

    // The fault gone, the next night reuses the build and makes only its copy.
    std::fs::write(&fleet_path, FLEET.replace("account/state.json", "state.json")).unwrap();
    let (second, summary) = night(&workspace, fleet, &["--changed-only"]);
    assert_eq!(launched(&summary), 0, "{summary}");
    assert_eq!(image_of(&second, "us-west-2"), built);
    let state: Value = serde_json::from_str(&std::fs::read_to_string(workspace.path("state.json")).unwrap()).unwrap();
    assert_eq!(saved_images(&state).len(), 2, "{state}");
}

/// The instance ids the state file holds.
fn saved_instances(state: &Value) -> Vec<String> {
    let places = state["places"].as_array().unwrap();
    let instances = places.iter().flat_map(|place| place["instances"].as_array().cloned().unwrap_or_default());
    instances.map(|instance| instance["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_kept_failed_build_outlives_its_night_and_gc_removes_it_once_its_time_has_passed() {
    let workspace = Workspace::new();
    let failing = FLEET.replace(
        "state = \"account/state.json\"",
        "state = \"state.json\"\nfaults = [{ action = \"provision\", error = \"failed\", nth = 1 }]",
    );
    let fleet_path = workspace.write("fleet.toml", &failing);
    let fleet = fleet_path.to_str().unwrap();
    let outcome = offline(&workspace, &["matrix", fleet, "--plain", "--cloud", "sim", "--keep-failed", "1m"]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let read_state =
        || -> Value { serde_json::from_str(&std::fs::read_to_string(workspace.path("state.json")).unwrap()).unwrap() };
    let kept = saved_instances(&read_state());
    assert_eq!(kept.len(), 1, "the kept instance is in the account: {}", read_state());

    // Right after the night, its minute has not passed in the account's clock: gc leaves it, named.
    std::fs::write(&fleet_path, FLEET.replace("account/state.json", "state.json")).unwrap();
    let early = offline(&workspace, &["gc", fleet, "--dry-run", "--cloud", "sim"]);
    assert_eq!(early.code, 0, "{}{}", early.stdout, early.stderr);
    assert!(early.stdout.contains(&format!("left instance {}", kept[0])), "{}", early.stdout);
    assert!(early.stdout.contains("kept until"), "{}", early.stdout);

    // A night later (its builds take simulated minutes), gc removes it with its key pair and group.
    let (_, summary) = night(&workspace, fleet, &["--changed-only"]);
    assert_eq!(launched(&summary), 1, "the failed build is built again, the kept instance not counted: {summary}");
    let gc = offline(&workspace, &["gc", fleet, "--cloud", "sim"]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    assert!(gc.stdout.contains("removed 3 temporary resources"), "{}", gc.stdout);
    let state = read_state();
    assert_eq!(saved_instances(&state), Vec::<String>::new(), "{state}");
    assert!(state["places"].as_array().unwrap().iter().all(|place| place["key_pairs"] == serde_json::json!([])));
}
