//! `[sim] state` kept to its own: a simulated account's commands touch only it and its file. Its directory is
//! made when missing; one process at a time changes it (`<state>.lock`); ids never repeat after its file is
//! lost; `gc --dry-run` leaves it byte for byte; an earlier night's leftovers are said, not this night's leak;
//! `gc --cloud sim` neither takes the real run lock nor removes a real kept instance's login keys.

use serde_json::Value;

use crate::harness::*;
use crate::sim_state::offline;

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

[retention]
keep = 1

[sim]
state = "state.json"
"#;

fn matrix(workspace: &Workspace, fleet: &str, more: &[&str]) -> Outcome {
    let summary = workspace.path("summary.json");
    let mut args = vec!["matrix", fleet, "--plain", "--cloud", "sim", "--summary-json", summary.to_str().unwrap()];
    args.extend_from_slice(more);
    offline(workspace, &args)
}

fn image_ids(manifest: &Value) -> Vec<String> {
    let regions = manifest["artifacts"]["base"].as_object().unwrap();
    regions.values().map(|image| image["image_id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_state_file_in_a_missing_directory_is_kept_its_directory_made_private() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &FLEET.replace("state.json", "account/state.json"));
    let outcome = matrix(&workspace, fleet.to_str().unwrap(), &[]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    use std::os::unix::fs::PermissionsExt;
    let dir = workspace.path("account");
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "made private");
    assert!(dir.join("state.json").is_file(), "the night is kept");
}

#[test]
fn a_second_process_on_the_state_file_is_refused_naming_it_and_reads_go_on() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", FLEET);
    let fleet = fleet.to_str().unwrap();
    assert_eq!(matrix(&workspace, fleet, &[]).code, 0);
    let state = workspace.path("state.json");
    let before = std::fs::read(&state).unwrap();

    // Another fleetbake holds the account (this test, as it would).
    let held = std::fs::File::create(workspace.path("state.json.lock")).unwrap();
    held.try_lock().unwrap();
    for args in [vec!["matrix", fleet, "--plain", "--cloud", "sim"], vec!["gc", fleet, "--cloud", "sim"]] {
        let outcome = offline(&workspace, &args);
        assert_eq!(outcome.code, 1, "{args:?}: {}", outcome.stderr);
        assert!(
            outcome.stderr.contains(&format!("`{}` (`[sim] state`) is in use by another fleetbake", state.display())),
            "{args:?}: {}",
            outcome.stderr
        );
    }
    assert_eq!(std::fs::read(&state).unwrap(), before, "the account is as the holder will leave it");
    // Reading it is no change: plan --changed-only and a dry-run gc go on.
    let plan = offline(&workspace, &["plan", fleet, "--changed-only", "--cloud", "sim"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let dry = offline(&workspace, &["gc", fleet, "--dry-run", "--cloud", "sim"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    drop(held);
    assert_eq!(offline(&workspace, &["gc", fleet, "--cloud", "sim"]).code, 0);
}

#[test]
fn a_gc_dry_run_leaves_the_state_file_byte_for_byte() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", FLEET);
    let fleet = fleet.to_str().unwrap();
    assert_eq!(matrix(&workspace, fleet, &[]).code, 0);
    let state = workspace.path("state.json");
    let before = std::fs::read(&state).unwrap();
    let dry = offline(&workspace, &["gc", fleet, "--dry-run", "--cloud", "sim"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert_eq!(std::fs::read(&state).unwrap(), before, "a dry run writes nothing");
}

#[test]
fn ids_made_after_the_state_file_is_lost_are_not_the_earlier_nights() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", FLEET);
    let fleet = fleet.to_str().unwrap();
    assert_eq!(matrix(&workspace, fleet, &[]).code, 0);
    let first = image_ids(&workspace.read_json("manifest.sim.json"));
    // The account lost (as after a save that never happened): the next night starts it again.
    std::fs::remove_file(workspace.path("state.json")).unwrap();
    let outcome = matrix(&workspace, fleet, &[]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let second = image_ids(&workspace.read_json("manifest.sim.json"));
    assert_eq!(first.len(), 2);
    assert!(second.iter().all(|id| !first.contains(id)), "new ids: {first:?} then {second:?}");
}

#[test]
fn what_an_earlier_night_left_is_said_and_not_this_nights_leak() {
    let workspace = Workspace::new();
    // Night one cannot delete its key pair: it is left in the account (the night fails, as it should).
    let failing = FLEET.replace(
        "state = \"state.json\"",
        "state = \"state.json\"\nfaults = [{ action = \"DeleteKeyPair\", error = \"UnauthorizedOperation\", probability = 1.0 }]",
    );
    let fleet_path = workspace.write("fleet.toml", &failing);
    let fleet = fleet_path.to_str().unwrap();
    let first = matrix(&workspace, fleet, &[]);
    assert_eq!(first.code, 1, "{}", first.stderr);
    assert!(first.stderr.contains("a fleetbake bug"), "{}", first.stderr);

    // Night two leaves nothing of its own: it succeeds, and names what night one left as not its own.
    std::fs::write(&fleet_path, FLEET).unwrap();
    let second = matrix(&workspace, fleet, &["--changed-only"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(!second.stderr.contains("a fleetbake bug"), "{}", second.stderr);
    assert!(second.stderr.contains("1 resource(s) an earlier run left"), "{}", second.stderr);
    let summary = workspace.read_json("summary.json");
    assert_eq!(summary["leaked_resources"], serde_json::json!([]), "{summary}");
    let earlier = summary["sim"]["left_by_earlier_runs"].as_array().unwrap();
    assert!(earlier.len() == 1 && earlier[0].as_str().unwrap().starts_with("key pair "), "{summary}");
}

#[test]
fn gc_of_the_simulated_account_leaves_the_real_runs_lock_and_kept_keys() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", FLEET);
    let fleet = fleet.to_str().unwrap();
    assert_eq!(matrix(&workspace, fleet, &[]).code, 0);
    // A real run holds the fleet's run lock, and a real kept instance's login keys are on this machine.
    let journals = workspace.path(".fleetbake/fleet");
    let kept = journals.join("2026-12-01T00:00:00Z-00000001/kept/i-0123456789abcdef0");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join("key"), "a real login key").unwrap();
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(journals.join("run.lock"));
    let lock = lock.unwrap();
    lock.try_lock().unwrap();

    let gc = offline(&workspace, &["gc", fleet, "--cloud", "sim"]);
    assert_eq!(gc.code, 0, "not refused by the real run's lock: {}{}", gc.stdout, gc.stderr);
    assert!(kept.join("key").is_file(), "the real kept instance's keys stay: {}", gc.stdout);
    assert!(!gc.stdout.contains("login key folder"), "{}", gc.stdout);
}

#[test]
fn plan_changed_only_on_the_simulated_account_reads_the_simulated_runs_manifest() {
    let workspace = Workspace::new();
    let layered = FLEET.replace(
        "[regions]",
        "[[flavor]]\nname = \"app\"\nsource_ami = { flavor = \"base\" }\nsim_provision = \"1m\"\n\n[regions]",
    );
    let fleet_path = workspace.write("fleet.toml", &layered);
    let fleet = fleet_path.to_str().unwrap();
    assert_eq!(matrix(&workspace, fleet, &[]).code, 0);
    // The real runs' manifest names night one's base image (still in the simulated account too).
    std::fs::copy(workspace.path("manifest.sim.json"), workspace.path("manifest.json")).unwrap();
    // Night two: a new base, and app built on it.
    std::fs::write(&fleet_path, layered.replace("echo release 1", "echo release 2")).unwrap();
    assert_eq!(matrix(&workspace, fleet, &[]).code, 0);
    let app = workspace.read_json("manifest.sim.json")["artifacts"]["app"]["us-west-2"]["image_id"].clone();
    // `--only app`: app's parent is the one the simulated manifest lists (night two's base), so the app reused is
    // night two's, not night one's (built on the base the real manifest lists).
    let plan = offline(&workspace, &["plan", fleet, "--changed-only", "--only", "app", "--cloud", "sim"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    assert!(plan.stdout.contains(": 0 to rebuild, 1 to reuse"), "{}", plan.stdout);
    assert!(plan.stdout.contains(&format!("nothing changed since {}", app.as_str().unwrap())), "{}", plan.stdout);
}
