//! An image's snapshots: deleted with a failed image once EC2 lets go of them (`InvalidSnapshot.InUse` waited
//! out), on the simulated cloud.

use serde_json::Value;

use crate::harness::Workspace;

/// One flavor built in us-west-2 and copied to us-east-1; `sim` is appended to `[sim]`.
fn small_fleet(sim: &str) -> String {
    format!(
        r#"[fleet]
name = "snapshots"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

[[flavor]]
name = "base"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
provisioners = [{{ type = "shell", inline = ["echo hi"] }}]

[regions]
us-west-2 = ["us-east-1"]

[ssh]
source_cidrs = ["203.0.113.5/32"]

[sim]
{sim}
"#
    )
}

fn read_json(workspace: &Workspace, relative: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(workspace.path(relative)).unwrap()).unwrap()
}

/// A failed image is deregistered and its snapshot, which EC2 keeps in use for three minutes after that,
/// deleted once it is released: DeleteSnapshot is tried again, no cleanup failure, nothing left.
#[test]
fn a_discarded_images_snapshot_is_deleted_once_released() {
    let workspace = Workspace::new();
    let sim = "snapshot_in_use = \"3m\"\nfaults = [{ action = \"CreateImage\", image_state = \"failed\", nth = 1 }]";
    let fleet_path = workspace.write("fleet.toml", &small_fleet(sim));
    let summary_path = workspace.path("summary.json");
    let run = workspace.fleetbake(&[
        "matrix",
        fleet_path.to_str().unwrap(),
        "--cloud",
        "sim",
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let manifest = read_json(&workspace, "manifest.sim.json");
    let stages: Vec<&str> =
        manifest["failures"].as_array().unwrap().iter().filter_map(|failure| failure["stage"].as_str()).collect();
    assert_eq!(stages, ["wait_image", "skipped"], "no cleanup failure: {manifest:#}");
    let summary = read_json(&workspace, "summary.json");
    assert_eq!(summary["leaked_resources"], serde_json::json!([]), "{}", run.stderr);
    let deletes = summary["api_calls"]["us-west-2"]["DeleteSnapshot"].as_u64().unwrap_or(0);
    assert!(deletes > 1, "InvalidSnapshot.InUse was answered and waited out: {deletes} DeleteSnapshot calls");
}
