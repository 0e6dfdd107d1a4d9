//! No AWS credentials at all (no keys in the environment, `AWS_CONFIG_FILE` and `AWS_SHARED_CREDENTIALS_FILE`
//! naming nothing, no instance metadata), through the binary: every command that talks to AWS exits 1 with one
//! error and the credential source to fix, never a plan that calls every build a rebuild; the SDK's own log
//! lines only under `-v`. The realistic organization fleet (`examples/organization/fleet.toml`, a role to
//! assume), in a workspace of its own.

use crate::harness::*;

const NOTHING: &[(&str, &str)] =
    &[("AWS_CONFIG_FILE", "/nonexistent"), ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")];

/// What the hint says of the default chain when nothing in the environment names a source.
const SOURCE: &str = "the default profile (`[aws] profile` if set; for SSO, `aws sso login`), else the instance role";

fn organization(workspace: &Workspace) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/organization/fleet.toml")).unwrap();
    workspace.write("fleet.toml", &text).to_str().unwrap().to_string()
}

#[test]
fn plan_changed_only_and_gc_without_credentials_exit_1_with_one_error_and_the_hint() {
    let workspace = Workspace::new();
    let fleet = organization(&workspace);
    for args in [
        vec!["plan", fleet.as_str(), "--changed-only"],
        vec!["gc", fleet.as_str(), "--dry-run"],
        vec!["gc", fleet.as_str()],
    ] {
        let outcome = workspace.fleetbake_with_env(&args, NOTHING);
        assert_eq!(outcome.code, 1, "{args:?}: {}{}", outcome.stdout, outcome.stderr);
        assert!(!outcome.stdout.contains("to rebuild"), "{args:?}: no plan without credentials: {}", outcome.stdout);
        let errors: Vec<&str> = outcome.stderr.lines().filter(|line| line.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: one error: {}", outcome.stderr);
        assert!(errors[0].starts_with("error: AWS credentials could not be loaded: "), "{}", outcome.stderr);
        assert!(
            outcome.stderr.contains(&format!("hint: {SOURCE}; or try the fleet without AWS first")),
            "{args:?}: {}",
            outcome.stderr
        );
        assert!(!outcome.stderr.contains("WARN"), "{args:?}: no SDK log line without -v: {}", outcome.stderr);
        assert!(
            !outcome.stderr.contains("Attempted"),
            "{args:?}: the chain's account only under -v: {}",
            outcome.stderr
        );
    }
    // Under -v the SDK's own lines are there (a profile file named by the environment and not found).
    let verbose = workspace.fleetbake_with_env(&["gc", &fleet, "--dry-run", "-v"], NOTHING);
    assert_eq!(verbose.code, 1, "{}", verbose.stderr);
    assert!(verbose.stderr.contains("WARN") && verbose.stderr.contains("AWS_CONFIG_FILE"), "{}", verbose.stderr);
}

#[test]
fn matrix_and_preflight_without_credentials_exit_1_naming_the_source_with_no_sdk_lines() {
    let workspace = Workspace::new();
    let fleet = organization(&workspace);
    for args in [vec!["preflight", fleet.as_str()], vec!["matrix", fleet.as_str(), "--plain"]] {
        let outcome = workspace.fleetbake_with_env(&args, NOTHING);
        assert_eq!(outcome.code, 1, "{args:?}: {}{}", outcome.stdout, outcome.stderr);
        let all = format!("{}{}", outcome.stdout, outcome.stderr);
        assert!(all.contains("FAIL cannot tell who the credentials are"), "{args:?}: {all}");
        assert!(all.contains(SOURCE), "{args:?}: {all}");
        assert!(!outcome.stderr.contains("WARN"), "{args:?}: no SDK log line without -v: {}", outcome.stderr);
    }
    assert!(!workspace.path("manifest.json").exists(), "nothing ran");
}

/// One error naming the credentials, and the hint; no unit's check, no plan, no SDK line.
fn assert_one_credentials_error(args: &[&str], outcome: &Outcome) {
    assert_eq!(outcome.code, 1, "{args:?}: {}{}", outcome.stdout, outcome.stderr);
    let errors: Vec<&str> = outcome.stderr.lines().filter(|line| line.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: one error: {}", outcome.stderr);
    assert!(errors[0].starts_with("error: AWS credentials could not be loaded: "), "{args:?}: {}", outcome.stderr);
    assert!(outcome.stderr.contains(&format!("hint: {SOURCE}")), "{args:?}: {}", outcome.stderr);
    let all = format!("{}{}", outcome.stdout, outcome.stderr);
    assert!(!all.contains("FAIL") && !all.contains("organizational unit"), "{args:?}: no unit's check: {all}");
    assert!(!outcome.stderr.contains("WARN"), "{args:?}: no SDK log line without -v: {}", outcome.stderr);
}

#[test]
fn with_organizational_units_the_credentials_stop_comes_before_organizations_is_asked() {
    let workspace = Workspace::new();
    let organization = organization(&workspace);
    let text = std::fs::read_to_string(&organization).unwrap()
        + r#"
[[distribution]]
accounts = ["ou-ab12-cd34ef56"]
regions = ["eu-west-1"]
role_arn = "arn:aws:iam::{account}:role/image-distribution"
"#;
    let fleet = workspace.write("units.toml", &text);
    let fleet = fleet.to_str().unwrap();
    for args in [
        vec!["plan", fleet],
        vec!["plan", fleet, "--changed-only"],
        vec!["gc", fleet, "--dry-run"],
        vec!["gc", fleet],
        vec!["matrix", fleet, "--no-preflight", "--plain"],
    ] {
        assert_one_credentials_error(&args, &workspace.fleetbake_with_env(&args, NOTHING));
    }
    assert!(!workspace.path("manifest.json").exists(), "nothing ran");
}

#[test]
fn matrix_without_the_preflight_and_without_credentials_stops_with_one_error() {
    let workspace = Workspace::new();
    let fleet = organization(&workspace);
    let args = ["matrix", fleet.as_str(), "--no-preflight", "--plain"];
    assert_one_credentials_error(&args, &workspace.fleetbake_with_env(&args, NOTHING));
    assert!(!workspace.path("manifest.json").exists(), "nothing ran");
}

#[test]
fn on_the_simulated_cloud_units_are_resolved_without_asking_for_credentials() {
    let workspace = Workspace::new();
    let fleet =
        workspace.write("fleet.toml", &crate::units::sim_fleet(r#""ou-ab12-aaaaaaaa""#, crate::units::SIM_UNITS));
    let fleet = fleet.to_str().unwrap();
    for args in [vec!["plan", fleet, "--cloud", "sim"], vec!["plan", fleet, "--changed-only", "--cloud", "sim"]] {
        let outcome = workspace.fleetbake_with_env(&args, NOTHING);
        assert_eq!(outcome.code, 0, "{args:?}: {}{}", outcome.stdout, outcome.stderr);
        assert!(!outcome.stderr.contains("credentials"), "{args:?}: {}", outcome.stderr);
    }
}
