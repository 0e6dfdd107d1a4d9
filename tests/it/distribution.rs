//! `[[distribution]]`: copies owned by other accounts. On the simulated cloud (which refuses another account's
//! CopyImage without the launch permission, the create-volume permission and the KMS grant): every account owns
//! its copies, encrypted with its own key, and no grant is left once the run ends (nor after an interrupt); a
//! role that cannot be assumed fails that account's copies only. On moto, through the recording proxy, the
//! grant requests and their removal.

use serde_json::Value;

use crate::harness::Workspace;
use crate::sim::run_sim_with;

const ACCOUNTS: [&str; 3] = ["222233334444", "555566667777", "888899990000"];
/// Also in `[sharing] accounts` and `snapshot_accounts`: its permissions are the fleet's, never taken back.
const SHARED: &str = "555566667777";
const OWN: &str = "123456789012";

/// Four flavors built in two regions, distributed into three accounts × two regions; `sim` appended to `[sim]`
/// (after `accounts`).
fn fleet(sim: &str) -> String {
    let flavors: String = ["web", "api", "worker", "batch"]
        .iter()
        .map(|name| {
            format!(
                "[[flavor]]\nname = \"{name}\"\nsource_ami = {{ owners = [\"amazon\"], name = \
                 \"al2023-ami-2023.*-kernel-6.1-x86_64\" }}\n\n"
            )
        })
        .collect();
    format!(
        r#"[fleet]
name = "distributed"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"
deprecate_after = "90d"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"
metadata = {{ http_tokens = "required" }}

{flavors}[regions]
us-west-2 = []
eu-central-1 = []

[ssh]
source_cidrs = ["203.0.113.5/32"]

[encryption]
kms_keys = {{ "*" = "alias/builder-images" }}

[sharing]
accounts = ["{SHARED}"]
snapshot_accounts = ["{SHARED}"]

[[distribution]]
accounts = ["{a}", "{b}", "{c}"]
regions = ["us-east-1", "eu-west-1"]
role_arn = "arn:aws:iam::{{account}}:role/image-distribution"
kms_keys = {{ "*" = "alias/account-images" }}

[sim]
accounts = ["{a}", "{b}", "{c}"]
{sim}
"#,
        a = ACCOUNTS[0],
        b = ACCOUNTS[1],
        c = ACCOUNTS[2],
    )
}

fn images(summary: &Value) -> &Vec<Value> {
    summary["sim"]["images"].as_array().unwrap()
}

fn of_account<'a>(summary: &'a Value, account: &str) -> Vec<&'a Value> {
    images(summary).iter().filter(|image| image["account"] == account).collect()
}

fn strings(value: &Value) -> Vec<&str> {
    value.as_array().map(|items| items.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// The builder's images carry exactly `[sharing]`'s permissions: every temporary grant was taken back, the
/// shared account's was not.
fn assert_builder_images_shared_as_configured(summary: &Value) {
    let own = of_account(summary, OWN);
    assert_eq!(own.len(), 8, "4 flavors × 2 build regions: {own:?}");
    for image in own {
        let attributes = &image["attributes"];
        assert_eq!(strings(&attributes["launch_permissions"]), [SHARED], "{image}");
        assert_eq!(strings(&attributes["snapshot_permissions"]), [SHARED], "{image}");
        assert_eq!(attributes["kms_key"], "alias/builder-images", "{image}");
    }
}

#[test]
fn every_account_owns_its_copies_with_its_own_key_and_no_grant_is_left() {
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &fleet(""), &[]);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    let summary = &run.summary;
    assert_eq!(summary["jobs"]["failed"], 0, "{summary}");
    assert_eq!(summary["jobs"]["succeeded"], 8 + 4 * 3 * 2, "{summary}");
    for account in ACCOUNTS {
        let copies = of_account(summary, account);
        assert_eq!(copies.len(), 4 * 2, "{account}: a copy of each flavor in each of its regions");
        for copy in copies {
            assert_eq!(copy["available"], true, "{copy}");
            let attributes = &copy["attributes"];
            assert_eq!(attributes["kms_key"], "alias/account-images", "{account}'s own key: {copy}");
            assert_eq!(attributes["imds_v2"], true, "IMDSv2 applies in the account: {copy}");
            assert!(attributes["deprecation_time"].is_string(), "deprecation applies in the account: {copy}");
            assert_eq!(strings(&attributes["launch_permissions"]), Vec::<&str>::new(), "[sharing] does not: {copy}");
            assert!(copy["run_id_tag"].is_string() && copy["snapshot_run_id_tag"].is_string(), "tagged: {copy}");
        }
    }
    assert_builder_images_shared_as_configured(summary);
    // One KMS grant per (flavor, source image, account), all revoked; none leaked.
    // Within 1.03 × the critical-path bound, which counts no call's time: the grants, the finish in each
    // account and the waits' cadence are the rest (1463 s against 1440 s when measured).
    let makespan = summary["makespan_seconds"].as_f64().unwrap();
    let bound = summary["critical_path_seconds"].as_f64().unwrap();
    assert!(makespan >= bound && makespan <= bound * 1.03, "makespan {makespan} s against a bound of {bound} s");
    let sim = &summary["sim"];
    assert_eq!(sim["kms_grants_created"], 4 * 3, "{sim}");
    assert_eq!(sim["kms_grants_revoked"], sim["kms_grants_created"], "{sim}");
    assert_eq!(summary["leaked_resources"], serde_json::json!([]), "{summary}");
    // Taken back by the copies themselves (the last of each source into each account), not by the sweep.
    assert!(!run.outcome.stderr.contains("left behind"), "stderr:\n{}", run.outcome.stderr);
    for account in ACCOUNTS {
        assert!(sim["assume_role_calls_by_account"][account].as_u64().unwrap() >= 1, "{sim}");
    }
}

/// A role that cannot be assumed: that account's copies fail, named with the account; every other job succeeds,
/// and no grant is left (the failed account's included).
#[test]
fn a_role_that_cannot_be_assumed_fails_only_that_accounts_copies() {
    let workspace = Workspace::new();
    let broken = ACCOUNTS[2];
    let run = run_sim_with(&workspace, &fleet(&format!("account_faults = {{ \"{broken}\" = \"role\" }}")), &[]);
    assert_ne!(run.outcome.code, 0);
    let summary = &run.summary;
    assert_eq!(summary["jobs"]["failed"], 4 * 2, "{summary}");
    assert_eq!(summary["jobs"]["succeeded"], 8 + 4 * 2 * 2, "{summary}");
    let failures = run.manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 4 * 2, "{failures:?}");
    for failure in failures {
        let error = failure["error"].as_str().unwrap();
        assert!(error.starts_with(&format!("in account {broken}: ")), "{failure}");
        let hint = failure["hint"].as_str().unwrap_or_default();
        assert!(hint.contains(&format!("arn:aws:iam::{broken}:role/image-distribution")), "{failure}");
    }
    assert!(of_account(summary, broken).is_empty());
    for account in &ACCOUNTS[..2] {
        assert_eq!(of_account(summary, account).len(), 8, "{account}");
    }
    assert!(!run.outcome.stderr.contains("credentials expired"), "the run's own credentials are fine");
    assert_builder_images_shared_as_configured(summary);
    assert_eq!(summary["sim"]["kms_grants_revoked"], summary["sim"]["kms_grants_created"], "{summary}");
    assert_eq!(summary["leaked_resources"], serde_json::json!([]), "{summary}");
}

/// The fleet at `sim`, loaded from the workspace (journaled beside it).
fn load(workspace: &Workspace, sim: &str) -> fleetbake::config::Fleet {
    fleetbake::config::load(&workspace.write("fleet.toml", &fleet(sim))).unwrap()
}

/// The builder's images in the model now: each one's launch and create-volume permissions.
fn builder_permissions(
    runtime: &tokio::runtime::Runtime,
    sim: &std::sync::Arc<fleetbake::cloud::sim::SimCloud>,
) -> Vec<(String, Vec<String>, Vec<String>)> {
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    report
        .images
        .iter()
        .filter(|image| image.account == OWN)
        .map(|image| {
            let attributes = &image.attributes;
            (image.id.clone(), attributes.launch_permissions.clone(), attributes.snapshot_permissions.clone())
        })
        .collect()
}

/// Twenty minutes in, every copy is in flight and every grant given (28: a KMS grant per flavor and account,
/// a launch and a create-volume permission per flavor for the two accounts `[sharing]` does not name).
const MID_COPIES: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// Every grant the journal holds (created, not removed).
fn journaled_grants(fleet: &fleetbake::config::Fleet) -> usize {
    let mut resumable = fleet.clone();
    let (replay, _plan) = fleetbake::state::resume::prepare(&mut resumable).unwrap();
    replay.outstanding.keys().filter(|resource| resource.kind.is_grant()).count()
}

/// Resumes the run the journal names; then nothing is granted and every account has each of its copies once.
fn resume_and_check(
    runtime: &tokio::runtime::Runtime,
    sim: &std::sync::Arc<fleetbake::cloud::sim::SimCloud>,
    fleet: &fleetbake::config::Fleet,
) {
    use fleetbake::engine::run::Start;
    let mut fleet = fleet.clone();
    let (replay, plan) = fleetbake::state::resume::prepare(&mut fleet).unwrap();
    let resumed =
        runtime.block_on(crate::sim::run_on(sim, &fleet, Start::Resume { replay: Box::new(replay), plan }, None));
    assert_eq!((resumed.failed, resumed.interrupted.is_some()), (0, false), "{resumed:?}");
    assert_no_grant_left(runtime, sim);
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    for account in ACCOUNTS {
        let copies: Vec<_> = report.images.iter().filter(|image| image.account == account).collect();
        assert_eq!(copies.len(), 8, "{account}: each copy once: {copies:?}");
        assert!(copies.iter().all(|copy| copy.available), "{copies:?}");
    }
}

fn assert_no_grant_left(runtime: &tokio::runtime::Runtime, sim: &std::sync::Arc<fleetbake::cloud::sim::SimCloud>) {
    for (image, launch, snapshot) in builder_permissions(runtime, sim) {
        assert_eq!((launch, snapshot), (vec![SHARED.to_string()], vec![SHARED.to_string()]), "{image}");
    }
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    assert!(report.leaked_resources.is_empty(), "KMS grants are leaks until revoked: {:?}", report.leaked_resources);
    assert_eq!(report.kms_grants_revoked, report.kms_grants_created);
}

/// Ctrl-C while every copy is in flight: the copies end (left in progress) and take their grants back; a
/// resume finishes them without making any again.
#[test]
fn an_interrupted_run_takes_every_grant_back() {
    use fleetbake::engine::run::Start;
    use fleetbake::state::journal::JournalDir;
    let workspace = Workspace::new();
    let fleet = load(&workspace, "");
    let runtime = crate::sharing::paused_runtime();
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    let start = Start::fresh(&fleet, Some(JournalDir::of(&fleet)));
    let first = runtime.block_on(crate::sim::run_on(&sim, &fleet, start, Some(MID_COPIES)));
    assert!(first.interrupted.is_some(), "{first:?}");
    assert_eq!(first.in_progress, 4 * 3 * 2, "every copy was in flight: {first:?}");
    assert_no_grant_left(&runtime, &sim);
    assert_eq!(journaled_grants(&fleet), 0, "each removal journaled");
    resume_and_check(&runtime, &sim, &fleet);
}

/// A killed run (no cleanup, no sweep) leaves its grants in the account and in the journal: `--resume` takes
/// them back first, then finishes the copies without duplicates (and grants and takes back anew as it copies).
#[test]
fn a_killed_runs_grants_are_taken_back_by_the_resume() {
    use fleetbake::engine::run::Start;
    use fleetbake::state::journal::JournalDir;
    let workspace = Workspace::new();
    let fleet = load(&workspace, "");
    let runtime = crate::sharing::paused_runtime();
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    let start = Start::fresh(&fleet, Some(JournalDir::of(&fleet)));
    let killed = runtime
        .block_on(async { tokio::time::timeout(MID_COPIES, crate::sim::run_on(&sim, &fleet, start, None)).await });
    assert!(killed.is_err(), "killed before its end");
    // The killed run's tasks (aborted when it was dropped) let go of the journal.
    runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_secs(1)).await });
    assert_eq!(journaled_grants(&fleet), 28, "every grant journaled before it was given");
    let granted = builder_permissions(&runtime, &sim);
    assert!(granted.iter().any(|(_, launch, _)| launch.len() == 3), "the grants are in the account: {granted:?}");
    let journal = fleetbake::state::journal::JournalDir::of(&fleet).journals().unwrap().remove(0);
    resume_and_check(&runtime, &sim, &fleet);
    // The resume took the killed attempt's grants back before its copies granted anew.
    let records: Vec<Value> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let resumed_at = records.iter().position(|record| record["record"] == "attempt" && record["attempt"] == 2).unwrap();
    let grant_records: Vec<&str> = records[resumed_at..]
        .iter()
        .filter(|record| record["resource"]["grant"].is_object())
        .map(|record| record["record"].as_str().unwrap())
        .collect();
    assert_eq!(grant_records[..28], ["removed"; 28], "{grant_records:?}");
}

/// A killed run's grants are taken back by `gc` too (from its journal: grants carry no tags).
#[test]
fn a_killed_runs_grants_are_taken_back_by_gc() {
    use fleetbake::engine::run::Start;
    use fleetbake::state::journal::JournalDir;
    let workspace = Workspace::new();
    let fleet = load(&workspace, "");
    let runtime = crate::sharing::paused_runtime();
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    let start = Start::fresh(&fleet, Some(JournalDir::of(&fleet)));
    let killed = runtime
        .block_on(async { tokio::time::timeout(MID_COPIES, crate::sim::run_on(&sim, &fleet, start, None)).await });
    assert!(killed.is_err(), "killed before its end");
    runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_secs(1)).await });
    let cloud = std::sync::Arc::clone(&sim) as std::sync::Arc<dyn fleetbake::cloud::Cloud>;
    let (_plan, outcome) = runtime.block_on(fleetbake::state::gc::gc(&fleet, cloud, false)).unwrap();
    assert_eq!(outcome.failures, 0, "{:?}", outcome.lines);
    let taken_back = outcome.lines.iter().filter(|line| line.contains(" for account ")).count();
    assert_eq!(taken_back, 28, "{:?}", outcome.lines);
    assert_no_grant_left(&runtime, &sim);
}

/// On moto, through the binary and the recording proxy: moto's CopyImage cannot stand for another account
/// reading the builder's image (it keeps no per-account view of images, permissions or KMS grants), so what is
/// checked is what the SDK sent: AssumeRole for the account's role; ModifyImageAttribute and
/// ModifySnapshotAttribute adding the account on the build's image and snapshot, and KMS CreateGrant on the key
/// DescribeSnapshots names for the snapshot (its answer made EC2's: moto's snapshot is unencrypted) for the
/// account's root, all before the CopyImage in the account; then the same three taken back (`Remove`,
/// `remove`, RevokeGrant) after it.
#[test]
fn on_moto_the_grants_are_requested_and_taken_back_around_the_copy() {
    use crate::harness::{decoded, field, Moto, Sshd};
    let moto = Moto::start();
    let sshd = Sshd::start();
    let key = crate::harness::runtime().block_on(moto.create_key("us-west-2", "alias/images"));
    // moto's CreateImage makes an unencrypted snapshot whatever the instance's volume was: DescribeSnapshots
    // answers as EC2 does for a build launched with `[encryption]`'s key (encrypted, `KmsKeyId` its ARN).
    let snapshot_key = key.clone();
    let proxy = crate::proxy::FaultProxy::start(&moto.endpoint, move |request| {
        if request.action != "DescribeSnapshots" {
            return crate::proxy::Answer::Forward;
        }
        let key = snapshot_key.clone();
        crate::proxy::Answer::RewriteWith(Box::new(move |body: String| {
            body.replace(
                "<encrypted>false</encrypted>",
                &format!("<encrypted>true</encrypted><kmsKeyId>{key}</kmsKeyId>"),
            )
        }))
    });
    let account = ACCOUNTS[0];
    let role = format!("arn:aws:iam::{account}:role/image-distribution");
    let fleet = format!(
        "{}\n[encryption]\nkms_keys = {{ us-west-2 = \"alias/images\" }}\n\n\
         [[flavor]]\nname = \"base\"\nsource_ami = {}\nroot_volume = {{ size_gb = 20, type = \"gp3\" }}\n\n[regions]\nus-west-2 = []\n\n\
         [[distribution]]\naccounts = [\"{account}\"]\nregions = [\"us-east-1\"]\n\
         role_arn = \"arn:aws:iam::{{account}}:role/image-distribution\"\n",
        crate::matrix::fleet_header_at(&proxy.endpoint, &sshd),
        crate::matrix::AL2023,
    );
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--no-preflight"]);
    let manifest = crate::matrix::read_manifest(&workspace);
    let image = manifest["artifacts"]["base"]["us-west-2"]["image_id"].as_str().unwrap_or_else(|| {
        panic!("the build made its image: {manifest}\nstderr:\n{}", outcome.stderr);
    });
    let snapshot = manifest["artifacts"]["base"]["us-west-2"]["snapshot_ids"][0].as_str().unwrap();
    // moto's CopyImage acting as the account finds no image of another account (`InvalidAMIID.NotFound`): the
    // copy fails, named with its account; the grants around it are what this test is about.
    assert!(
        outcome.stderr.contains(&format!("in account {account}: CopyImage in us-east-1: InvalidAMIID.NotFound")),
        "stderr:\n{}",
        outcome.stderr
    );
    let actions = proxy.actions();
    let position = |action: &str, matching: &dyn Fn(&str) -> bool| -> usize {
        let bodies = proxy.positions(action);
        let found: Vec<usize> = bodies.iter().filter(|(_, body)| matching(body)).map(|(at, _)| *at).collect();
        assert_eq!(found.len(), 1, "one {action} as expected: {bodies:?}");
        found[0]
    };

    let assumed = position("AssumeRole", &|body| field(body, "RoleArn").iter().any(|arn| decoded(arn) == role));
    let launch_added = position("ModifyImageAttribute", &|body| {
        field(body, "ImageId") == [image] && field(body, "LaunchPermission.Add.1.UserId") == [account]
    });
    let snapshot_added = position("ModifySnapshotAttribute", &|body| {
        field(body, "SnapshotId") == [snapshot]
            && field(body, "OperationType") == ["add"]
            && field(body, "UserId.1") == [account]
    });
    let root = format!("arn:aws:iam::{account}:root");
    let granted = position("CreateGrant", &|body| body.contains(&root) && body.contains(&key));
    let copied = position("CopyImage", &|body| field(body, "SourceImageId") == [image]);
    let launch_removed = position("ModifyImageAttribute", &|body| {
        field(body, "ImageId") == [image] && field(body, "LaunchPermission.Remove.1.UserId") == [account]
    });
    let snapshot_removed = position("ModifySnapshotAttribute", &|body| {
        field(body, "SnapshotId") == [snapshot]
            && field(body, "OperationType") == ["remove"]
            && field(body, "UserId.1") == [account]
    });
    let revoked = position("RevokeGrant", &|body| body.contains(&key));
    for grant in [launch_added, snapshot_added, granted] {
        assert!(grant < copied, "granted before the copy: {actions:?}");
    }
    assert!(assumed < copied, "the copy is made acting as the account's role: {actions:?}");
    for removal in [launch_removed, snapshot_removed, revoked] {
        assert!(removal > copied, "taken back after it: {actions:?}");
    }
}

/// A grant the last copy could not take back (RevokeGrant refused once) is its job's cleanup failure, and the
/// end-of-run sweep takes it back from the journal: nothing is left granted.
#[test]
fn a_grant_not_taken_back_by_its_copy_is_taken_back_by_the_sweep() {
    let workspace = Workspace::new();
    let faults = "faults = [{ action = \"RevokeGrant\", error = \"AccessDeniedException\", nth = 1 }]";
    let run = run_sim_with(&workspace, &fleet(faults), &[]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failures = run.manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["stage"], "cleanup", "{failures:?}");
    assert!(failures[0]["error"].as_str().unwrap().contains("cleanup of KMS grant"), "{failures:?}");
    let stderr = &run.outcome.stderr;
    let swept: Vec<&str> = stderr.lines().filter(|line| line.contains("left behind by an earlier step")).collect();
    assert_eq!(swept.len(), 1, "stderr:\n{stderr}");
    assert!(swept[0].contains("==> removed KMS grant ") && swept[0].contains(" for account "), "{}", swept[0]);
    let sim = &run.summary["sim"];
    assert_eq!(sim["kms_grants_revoked"], sim["kms_grants_created"], "{sim}");
    assert_eq!(run.summary["leaked_resources"], serde_json::json!([]));
    assert_builder_images_shared_as_configured(&run.summary);
}
