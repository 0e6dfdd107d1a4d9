//! `[sharing]` as EC2 allows it (issue 23): `public` never with `[encryption]`, the preflight reading each
//! landing region's block public access, a refused public share that keeps the accounts' access, permissions
//! made exactly `[sharing]` on a reused image, and a copy's key in its fingerprint. On the simulated cloud,
//! which models what moto forgives; the requests the SDK sends are checked through the proxy in
//! `fleet_keys.rs`.

use std::sync::Arc;

use serde_json::Value;

use crate::harness::Workspace;
use fleetbake::cloud::sim::SimCloud;
use fleetbake::cloud::{Cloud, ImageId, ImageQuery, LaunchPermissions, SnapshotId};
use fleetbake::config::Region;

const ACCOUNT: &str = "111122223333";
const OTHER: &str = "444455556666";

/// One flavor built in us-west-2 and copied to us-east-1 and eu-west-1; `more` appended as given.
fn fleet(more: &str) -> String {
    format!(
        r#"[fleet]
name = "sharetest"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "base"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
provisioners = [{{ type = "shell", inline = ["echo base"] }}]

[regions]
us-west-2 = ["us-east-1", "eu-west-1"]

[ssh]
source_cidrs = ["203.0.113.5/32"]

{more}
"#
    )
}

/// `public = true` with `[encryption]`: EC2 never makes an image with encrypted snapshots public, so `validate`
/// refuses the pair, at `public`'s line and column, naming both.
#[test]
fn public_sharing_of_encrypted_images_is_bad_input() {
    let workspace = Workspace::new();
    let text = fleet("[encryption]\nkms_keys = { \"*\" = \"alias/images\" }\n\n[sharing]\npublic = true\n");
    let path = workspace.write("fleet.toml", &text);
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}{}", outcome.stdout, outcome.stderr);
    let line = text.lines().position(|line| line == "public = true").unwrap() + 1;
    let at = format!("fleet.toml:{line}:10");
    assert!(outcome.stderr.contains(&at), "{at} in:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("sharing.public"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("`[encryption] kms_keys`"), "{}", outcome.stderr);

    // Without `[encryption]` it is valid.
    let path = workspace.write("fleet.toml", &fleet("[sharing]\npublic = true\n"));
    assert_eq!(workspace.fleetbake(&["validate", path.to_str().unwrap()]).code, 0);
}

/// `[sim] block_public_access` is checked like every key: its regions are region names.
#[test]
fn a_bad_block_public_access_table_is_bad_input() {
    let workspace = Workspace::new();
    let text = fleet("[sim]\nblock_public_access = { default = false, \"moon-base\" = true }\n");
    let path = workspace.write("fleet.toml", &text);
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}{}", outcome.stdout, outcome.stderr);
    assert!(outcome.stderr.contains("sim.block_public_access.moon-base"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("is not an AWS region name"), "{}", outcome.stderr);
}

/// Block public access on in us-east-1 only: the preflight names that region (and only it) as one that will
/// refuse; a run past it shares every image with the account, makes every image public but us-east-1's, and
/// fails only us-east-1's public share, with EC2's code and the hint to disable the block or drop `public`.
#[test]
fn public_sharing_in_a_blocked_region_keeps_the_accounts_access_and_fails_only_the_public_share() {
    let workspace = Workspace::new();
    let text = fleet(&format!(
        "[sharing]\naccounts = [\"{ACCOUNT}\"]\npublic = true\n\n\
         [sim]\nblock_public_access = {{ default = false, \"us-east-1\" = true }}\n"
    ));
    let path = workspace.write("fleet.toml", &text);
    let path = path.to_str().unwrap();

    let preflight = workspace.fleetbake(&["preflight", path, "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    let blocked: Vec<&str> =
        preflight.stdout.lines().filter(|line| line.contains("block public access for AMIs is on")).collect();
    assert_eq!(blocked.len(), 1, "{}", preflight.stdout);
    assert!(blocked[0].starts_with("FAIL us-east-1: "), "{}", blocked[0]);
    assert!(blocked[0].contains("disable-image-block-public-access --region us-east-1"), "{}", blocked[0]);
    for region in ["us-west-2", "eu-west-1"] {
        let open = format!("ok   {region}: block public access for AMIs is off");
        assert!(preflight.stdout.contains(&open), "{open} in:\n{}", preflight.stdout);
    }

    let summary_path = workspace.path("summary.json");
    let outcome = workspace.fleetbake(&[
        "matrix",
        path,
        "--cloud",
        "sim",
        "--no-preflight",
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let manifest = workspace.read_json("manifest.sim.json");
    let summary = workspace.read_json("summary.json");
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure = &failures[0];
    assert_eq!((&failure["region"], &failure["stage"]), (&"us-east-1".into(), &"share".into()), "{failure}");
    assert_eq!(failure["code"], "OperationNotPermitted", "{failure}");
    let hint = failure["hint"].as_str().unwrap();
    assert!(hint.contains("block public access for AMIs is on in us-east-1"), "{hint}");
    assert!(hint.contains("drop `[sharing] public`"), "{hint}");
    assert_eq!(summary["jobs"]["failed"], 1, "{summary}");
    assert!(outcome.stderr.contains("OperationNotPermitted"), "{}", outcome.stderr);

    let images = summary["sim"]["images"].as_array().unwrap();
    let artifacts = manifest["artifacts"]["base"].as_object().unwrap();
    assert_eq!(artifacts.len(), 3, "every image is in the manifest: {manifest}");
    for (region, artifact) in artifacts {
        let image = images.iter().find(|image| image["id"] == artifact["image_id"]).expect("in the account");
        let permissions = &image["attributes"]["launch_permissions"];
        if region == "us-east-1" {
            assert_eq!(permissions, &serde_json::json!([ACCOUNT]), "{region}: the account keeps its access");
            assert_eq!(artifact["shared_with"], serde_json::json!({ "accounts": [ACCOUNT] }), "{region}");
        } else {
            assert_eq!(permissions, &serde_json::json!([ACCOUNT, "all"]), "{region}");
            assert_eq!(artifact["shared_with"], serde_json::json!({ "accounts": [ACCOUNT], "public": true }));
        }
    }
    assert_eq!(summary["leaked_resources"], serde_json::json!([]), "{}", outcome.stderr);
}

/// Runs `fleet` on `sim` (one account across nights, in the caller's paused runtime, as `matrix` without the
/// preflight), journaled beside the fleet file; its summary. Other modules' simulated nights use it too.
pub(crate) async fn night(
    sim: &Arc<SimCloud>,
    fleet: &fleetbake::config::Fleet,
) -> fleetbake::engine::scheduler::RunSummary {
    let start = fleetbake::engine::run::Start::fresh(fleet, Some(fleetbake::state::journal::JournalDir::of(fleet)));
    crate::sim::run_on(sim, fleet, start, None).await
}

/// The fleet file at `text`, loaded, with `--changed-only` as asked.
pub(crate) fn load(workspace: &Workspace, text: &str, changed_only: bool) -> fleetbake::config::Fleet {
    let path = workspace.write("fleet.toml", text);
    let mut fleet = fleetbake::config::load(&path).unwrap();
    fleet.matrix.changed_only = changed_only;
    fleet
}

pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap()
}

/// Each image of the manifest: its region, id and snapshots.
fn images_of(manifest: &Value) -> Vec<(Region, ImageId, Vec<SnapshotId>)> {
    let artifacts = manifest["artifacts"]["base"].as_object().unwrap();
    artifacts
        .iter()
        .map(|(region, artifact)| {
            let snapshots = artifact["snapshot_ids"].as_array().unwrap();
            (
                Region::new(region),
                ImageId::new(artifact["image_id"].as_str().unwrap()),
                snapshots.iter().map(|id| SnapshotId::new(id.as_str().unwrap())).collect(),
            )
        })
        .collect()
}

/// An account taken out of `[sharing]` loses its access on the next quiet `--changed-only` night: every reused
/// image's launch permissions and its snapshots' create-volume permissions are exactly what `[sharing]` says
/// now, as EC2 answers DescribeImageAttribute and DescribeSnapshotAttribute (through the cloud port).
#[test]
fn removing_an_account_from_sharing_removes_its_access_on_a_quiet_changed_only_night() {
    let workspace = Workspace::new();
    let shared_with =
        |accounts: &str| fleet(&format!("[sharing]\naccounts = [{accounts}]\nsnapshot_accounts = [{accounts}]\n"));
    let runtime = paused_runtime();
    let first = load(&workspace, &shared_with(&format!("\"{ACCOUNT}\", \"{OTHER}\"")), false);
    let sim = runtime.block_on(async { Arc::new(SimCloud::new(&first)) });
    let night_one = runtime.block_on(night(&sim, &first));
    assert_eq!(night_one.failed, 0, "{night_one:?}");
    let images = images_of(&workspace.read_json("manifest.json"));
    assert_eq!(images.len(), 3);
    let both = LaunchPermissions { accounts: vec![ACCOUNT.into(), OTHER.into()], ..LaunchPermissions::default() };
    runtime.block_on(async {
        for (region, image, snapshots) in &images {
            assert_eq!(sim.region(region).launch_permissions(image).await.unwrap(), both, "{image} in {region}");
            let granted = sim.region(region).snapshot_permissions(&snapshots[0]).await.unwrap();
            assert_eq!(granted, [ACCOUNT, OTHER], "{region}");
        }
    });

    let second = load(&workspace, &shared_with(&format!("\"{ACCOUNT}\"")), true);
    let night_two = runtime.block_on(night(&sim, &second));
    assert_eq!((night_two.failed, night_two.reused), (0, 3), "a quiet night reuses every image: {night_two:?}");
    let manifest = workspace.read_json("manifest.json");
    assert_eq!(images_of(&manifest), images, "the same images");
    let one = LaunchPermissions { accounts: vec![ACCOUNT.into()], ..LaunchPermissions::default() };
    runtime.block_on(async {
        for (region, image, snapshots) in &images {
            assert_eq!(sim.region(region).launch_permissions(image).await.unwrap(), one, "{image} in {region}");
            let granted = sim.region(region).snapshot_permissions(&snapshots[0]).await.unwrap();
            assert_eq!(granted, [ACCOUNT], "{region}: {OTHER} may no longer create volumes");
        }
    });
    for (region, artifact) in manifest["artifacts"]["base"].as_object().unwrap() {
        let said = serde_json::json!({ "accounts": [ACCOUNT], "snapshot_accounts": [ACCOUNT] });
        assert_eq!(artifact["shared_with"], said, "{region}: the manifest says what the account holds");
    }

    // `[sharing]` removed altogether: the last account loses its access too, and the images are marked shared
    // no more (gc may retire them; later nights do not read their permissions).
    let third = load(&workspace, &fleet(""), true);
    let night_three = runtime.block_on(night(&sim, &third));
    assert_eq!((night_three.failed, night_three.reused), (0, 3), "{night_three:?}");
    runtime.block_on(async {
        for (region, image, snapshots) in &images {
            let cloud = sim.region(region);
            assert_eq!(cloud.launch_permissions(image).await.unwrap(), LaunchPermissions::default(), "{region}");
            assert!(cloud.snapshot_permissions(&snapshots[0]).await.unwrap().is_empty(), "{region}");
            let owned = cloud.find_owned_images(&ImageQuery::Named(vec![image_name(&manifest, region)])).await;
            let shared = owned.unwrap()[0].tags.get("fleetbake:shared").cloned();
            assert_eq!(shared.as_deref(), Some("false"), "{image} in {region}");
        }
    });
}

/// The name the manifest gives the image in `region`.
fn image_name(manifest: &Value, region: &Region) -> String {
    manifest["artifacts"]["base"][region.as_str()]["name"].as_str().unwrap().to_string()
}

/// A copy region's `[encryption]` key is part of the copy's fingerprint: changing it makes the next
/// `--changed-only` night copy into that region again (encrypted with the new key), and reuse the build and
/// the other copy.
#[test]
fn changing_a_copy_regions_key_makes_the_next_changed_only_night_copy_again() {
    let workspace = Workspace::new();
    let keyed = |east: &str| {
        fleet(&format!("[encryption]\nkms_keys = {{ \"*\" = \"alias/images\", us-east-1 = \"{east}\" }}\n"))
    };
    let runtime = paused_runtime();
    let first = load(&workspace, &keyed("alias/images"), false);
    let sim = runtime.block_on(async { Arc::new(SimCloud::new(&first)) });
    let night_one = runtime.block_on(night(&sim, &first));
    assert_eq!(night_one.failed, 0, "{night_one:?}");
    let before = workspace.read_json("manifest.json")["artifacts"]["base"].clone();

    // Nothing changed: every image reused.
    let same = load(&workspace, &keyed("alias/images"), true);
    let quiet = runtime.block_on(night(&sim, &same));
    assert_eq!((quiet.failed, quiet.reused), (0, 3), "{quiet:?}");

    let rekeyed = load(&workspace, &keyed("alias/images-east"), true);
    let night_three = runtime.block_on(night(&sim, &rekeyed));
    assert_eq!((night_three.failed, night_three.reused), (0, 2), "{night_three:?}");
    let after = workspace.read_json("manifest.json")["artifacts"]["base"].clone();
    for region in ["us-west-2", "eu-west-1"] {
        assert_eq!(after[region]["image_id"], before[region]["image_id"], "{region}: reused");
    }
    assert_ne!(after["us-east-1"]["image_id"], before["us-east-1"]["image_id"], "copied again");
    assert_eq!(after["us-east-1"]["kms_key_id"], "alias/images-east");
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    let copy = report.images.iter().find(|image| after["us-east-1"]["image_id"] == image.id.as_str()).unwrap();
    assert_eq!(copy.attributes.kms_key.as_deref(), Some("alias/images-east"));
}

/// A public image reused by `--changed-only` is deprecated again from each night; EC2 refuses a public image's
/// deprecation time more than 2 years after its creation, so fleetbake keeps it at that limit (730 days after
/// the image's creation date) instead of failing, and the manifest says what was set.
#[test]
fn a_reused_public_images_deprecation_is_kept_within_two_years_of_its_creation() {
    let workspace = Workspace::new();
    let public = |after: &str| {
        fleet("[sharing]\npublic = true\n\n[sim]\nblock_public_access = { default = false }\n").replacen(
            "ami_name = ",
            &format!("deprecate_after = \"{after}\"\nami_name = "),
            1,
        )
    };
    let runtime = paused_runtime();
    let first = load(&workspace, &public("30d"), false);
    let sim = runtime.block_on(async { Arc::new(SimCloud::new(&first)) });
    let night_one = runtime.block_on(night(&sim, &first));
    assert_eq!(night_one.failed, 0, "{night_one:?}");

    let second = load(&workspace, &public("729d"), true);
    let night_two = runtime.block_on(night(&sim, &second));
    assert_eq!((night_two.failed, night_two.reused), (0, 3), "{night_two:?}");
    let manifest = workspace.read_json("manifest.json");
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    for (region, artifact) in manifest["artifacts"]["base"].as_object().unwrap() {
        let created: chrono::DateTime<chrono::Utc> = artifact["created_at"].as_str().unwrap().parse().unwrap();
        let limit = created + chrono::TimeDelta::days(730);
        let at: chrono::DateTime<chrono::Utc> = artifact["deprecation_time"].as_str().unwrap().parse().unwrap();
        assert!(at <= limit && limit - at < chrono::TimeDelta::minutes(1), "{region}: {at} against {limit}");
        let image = report.images.iter().find(|image| artifact["image_id"] == image.id.as_str()).unwrap();
        assert_eq!(image.attributes.deprecation_time.as_deref(), artifact["deprecation_time"].as_str(), "{region}");
    }
}

/// Under `--changed-only`, a reused image whose public share is refused (block public access, on by default in
/// the simulated account as in a new one) is still reused, not rebuilt: its job fails at `share`, the
/// accounts get their access, and the night makes no image.
#[test]
fn a_refused_public_share_of_a_reused_image_fails_its_job_without_a_rebuild() {
    let workspace = Workspace::new();
    let runtime = paused_runtime();
    let first = load(&workspace, &fleet(""), false);
    let sim = runtime.block_on(async { Arc::new(SimCloud::new(&first)) });
    let night_one = runtime.block_on(night(&sim, &first));
    assert_eq!(night_one.failed, 0, "{night_one:?}");
    let images = images_of(&workspace.read_json("manifest.json"));

    let public = fleet(&format!("[sharing]\naccounts = [\"{ACCOUNT}\"]\npublic = true\n"));
    let second = load(&workspace, &public, true);
    let night_two = runtime.block_on(night(&sim, &second));
    assert_eq!((night_two.failed, night_two.reused), (3, 3), "{night_two:?}");
    let manifest = workspace.read_json("manifest.json");
    assert_eq!(images_of(&manifest), images, "the same images, none made");
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(failures.iter().all(|f| f["stage"] == "share" && f["code"] == "OperationNotPermitted"), "{failures:?}");
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    assert_eq!(report.images.len(), 3, "no image made: {:?}", report.images);
    let one = LaunchPermissions { accounts: vec![ACCOUNT.into()], ..LaunchPermissions::default() };
    runtime.block_on(async {
        for (region, image, _) in &images {
            assert_eq!(sim.region(region).launch_permissions(image).await.unwrap(), one, "{image} in {region}");
        }
    });
}
