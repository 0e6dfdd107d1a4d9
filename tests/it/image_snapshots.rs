//! An image's snapshots: tagged at creation (CreateImage's and CopyImage's snapshot `TagSpecifications`, through
//! the recording proxy in front of moto, and refused untagged by the simulated cloud's `[sim]
//! require_tags_on_create`), and deleted with a failed image once EC2 lets go of them (`InvalidSnapshot.InUse`
//! waited out, on the simulated cloud).

use crate::cloud_state::snapshot_tags;
use crate::harness::{decoded, field, runtime, Moto, Sshd, Workspace};
use crate::matrix::{fleet_header_at, read_manifest, AL2023};
use crate::proxy::FaultProxy;

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
    let manifest = workspace.read_json("manifest.sim.json");
    let stages: Vec<&str> =
        manifest["failures"].as_array().unwrap().iter().filter_map(|failure| failure["stage"].as_str()).collect();
    assert_eq!(stages, ["wait_image", "skipped"], "no cleanup failure: {manifest:#}");
    let summary = workspace.read_json("summary.json");
    assert_eq!(summary["leaked_resources"], serde_json::json!([]), "{}", run.stderr);
    let deletes = summary["api_calls"]["us-west-2"]["DeleteSnapshot"].as_u64().unwrap_or(0);
    assert!(deletes > 1, "InvalidSnapshot.InUse was answered and waited out: {deletes} DeleteSnapshot calls");
}

/// The tags a request's `TagSpecification` of `resource_type` carries (decoded), if it has one.
fn tag_specification(body: &str, resource_type: &str) -> Option<Vec<(String, String)>> {
    let index = (1..10).find(|n| field(body, &format!("TagSpecification.{n}.ResourceType")) == [resource_type])?;
    let prefix = format!("TagSpecification.{index}.Tag");
    Some(
        (1..)
            .map_while(|n| {
                let key = field(body, &format!("{prefix}.{n}.Key")).first().map(|key| decoded(key))?;
                let value = field(body, &format!("{prefix}.{n}.Value")).first().map(|value| decoded(value));
                Some((key, value.unwrap_or_default()))
            })
            .collect(),
    )
}

/// CreateImage and CopyImage name the snapshots' tags in the request (ResourceType `snapshot`, the image's
/// tags), so a tag policy or an SCP requiring tags on create sees them; no CreateTags afterwards names a
/// snapshot; and the snapshots in every region carry the run's tags.
#[test]
fn snapshots_are_tagged_at_creation() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let run_id = manifest["run_id"].as_str().unwrap().to_string();

    for action in ["CreateImage", "CopyImage"] {
        let bodies = proxy.bodies(action);
        assert_eq!(bodies.len(), 1, "{action}: {bodies:?}");
        let image = tag_specification(&bodies[0], "image").unwrap_or_else(|| panic!("{action}: {}", bodies[0]));
        let snapshot = tag_specification(&bodies[0], "snapshot").unwrap_or_else(|| panic!("{action}: {}", bodies[0]));
        assert!(snapshot.contains(&("fleetbake:run-id".to_string(), run_id.clone())), "{action}: {snapshot:?}");
        assert_eq!(snapshot, image, "{action}: the snapshots carry their image's tags");
    }
    for body in proxy.bodies("CreateTags") {
        assert!(field(&body, "ResourceId.1").iter().all(|id| !id.starts_with("snap-")), "tagged late: {body}");
    }
    runtime().block_on(async {
        for region in ["us-west-2", "us-east-1"] {
            let snapshots = manifest["artifacts"]["base"][region]["snapshot_ids"].as_array().unwrap().clone();
            assert!(!snapshots.is_empty(), "{region}: {manifest}");
            for snapshot in snapshots {
                let tags = snapshot_tags(&moto.client(region), snapshot.as_str().unwrap()).await;
                assert_eq!(tags.get("fleetbake:run-id"), Some(&run_id), "{snapshot} in {region}: {tags:?}");
            }
        }
    });
}

/// `[sim] require_tags_on_create = true` (an SCP refusing untagged creates): the simulated night bakes, every
/// image and its snapshot tagged from creation.
#[test]
fn a_night_passes_when_tags_are_required_on_create() {
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &small_fleet("require_tags_on_create = true"));
    let summary_path = workspace.path("summary.json");
    let run = workspace.fleetbake(&[
        "matrix",
        fleet_path.to_str().unwrap(),
        "--cloud",
        "sim",
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = workspace.read_json("summary.json");
    let images = summary["sim"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{summary}");
    for image in images {
        assert!(image["snapshot_run_id_tag"].is_string(), "{image}");
    }
    // Snapshots are no longer tagged after the fact.
    let tags_calls = summary["api_calls"]["us-west-2"]["CreateTags"].as_u64().unwrap_or(0);
    assert_eq!(tags_calls, 0, "{summary}");
}
