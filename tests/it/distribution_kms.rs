//! `[[distribution]]` and KMS, on the simulated accounts: the key a distribution copy is granted is the one that
//! encrypts the source's snapshots (read from EC2, not assumed from `[encryption]`: EBS encryption by default
//! with `aws/ebs` fails the copy with the reason, with a customer managed default key it is granted); a new
//! grant not usable yet (`[sim] grant_lag`, KMS's eventual consistency) is waited out, not a failure; a
//! CreateGrant whose answer was lost leaves no grant, whether the copy takes it back, the sweep, or a resume
//! after the run was killed.

use serde_json::Value;

use crate::harness::Workspace;
use crate::sim::run_sim_with;

const ACCOUNT: &str = "222233334444";

/// `web` built in us-west-2 (and `slow`, whose provisioning takes `slow_provision`, if given), distributed into
/// `ACCOUNT`'s us-east-1; `more` (e.g. `[encryption]`) before `[sim]`, `sim` appended to it.
fn fleet(more: &str, sim: &str, slow_provision: Option<&str>) -> String {
    let flavor = |name: &str, provision: Option<&str>| {
        let provision = provision
            .map(|time| {
                format!("sim_provision = \"{time}\"\nprovisioners = [{{ type = \"shell\", inline = [\"true\"] }}]\n")
            })
            .unwrap_or_default();
        format!(
            "[[flavor]]\nname = \"{name}\"\nsource_ami = {{ owners = [\"amazon\"], name = \
             \"al2023-ami-2023.*-kernel-6.1-x86_64\" }}\n{provision}\n"
        )
    };
    let mut flavors = flavor("web", None);
    if let Some(provision) = slow_provision {
        flavors.push_str(&flavor("slow", Some(provision)));
    }
    format!(
        r#"[fleet]
name = "distributed-kms"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

{flavors}[regions]
us-west-2 = []

[ssh]
source_cidrs = ["203.0.113.5/32"]

{more}
[[distribution]]
accounts = ["{ACCOUNT}"]
regions = ["us-east-1"]
role_arn = "arn:aws:iam::{{account}}:role/image-distribution"
kms_keys = {{ "*" = "alias/account-images" }}

[sim]
accounts = ["{ACCOUNT}"]
{sim}
"#
    )
}

fn of_account<'a>(summary: &'a Value, account: &str) -> Vec<&'a Value> {
    summary["sim"]["images"].as_array().unwrap().iter().filter(|image| image["account"] == account).collect()
}

fn assert_no_grant_left(summary: &Value) {
    let sim = &summary["sim"];
    assert_eq!(sim["kms_grants_revoked"], sim["kms_grants_created"], "{sim}");
    assert_eq!(summary["leaked_resources"], serde_json::json!([]), "{summary}");
    for image in of_account(summary, "123456789012") {
        let attributes = &image["attributes"];
        assert_eq!(attributes["launch_permissions"], serde_json::json!([]), "{image}");
        assert_eq!(attributes["snapshot_permissions"], serde_json::json!([]), "{image}");
    }
}

/// No `[encryption]`, but EBS encryption by default with `aws/ebs`: the build's image is encrypted with an
/// AWS-managed key, which no other account can use. The copy fails with that reason (not a later KMS error),
/// and nothing is granted.
#[test]
fn an_image_encrypted_by_default_with_aws_ebs_fails_its_copy_with_the_reason() {
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &fleet("", "ebs_default_key = \"alias/aws/ebs\"", None), &[]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failures = run.manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    let error = failures[0]["error"].as_str().unwrap();
    assert_eq!(failures[0]["stage"], "share", "{failures:?}");
    assert!(error.contains("an AWS-managed key") && error.contains("cannot copy it"), "{error}");
    assert!(error.contains(":key/aws-managed-"), "the key as EC2 names it: {error}");
    let sim = &run.summary["sim"];
    assert_eq!(sim["kms_grants_created"], 0, "{sim}");
    assert!(of_account(&run.summary, ACCOUNT).is_empty());
    assert_no_grant_left(&run.summary);
}

/// No `[encryption]`, EBS encryption by default with the account's customer managed key: the copy is granted
/// that key (read from the snapshot), copies, and takes the grant back.
#[test]
fn an_image_encrypted_by_default_with_a_customer_key_is_granted_that_key() {
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &fleet("", "ebs_default_key = \"alias/ebs-default\"", None), &[]);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    let copies = of_account(&run.summary, ACCOUNT);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0]["attributes"]["kms_key"], "alias/account-images", "{copies:?}");
    assert_eq!(run.summary["sim"]["kms_grants_created"], 1, "{}", run.summary["sim"]);
    assert_no_grant_left(&run.summary);
}

/// A new KMS grant takes a while to be usable everywhere (`[sim] grant_lag`): the copy's CopyImage, refused
/// about the key meanwhile, is asked again until it is, and the copy is made. A lag past KMS's five minutes is
/// a failure, named.
#[test]
fn a_new_grant_not_usable_yet_is_waited_out() {
    let encryption = "[encryption]\nkms_keys = { \"*\" = \"alias/builder-images\" }\n";
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &fleet(encryption, "grant_lag = \"40s\"", None), &[]);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    assert!(run.outcome.stderr.contains("not usable yet"), "stderr:\n{}", run.outcome.stderr);
    assert_eq!(of_account(&run.summary, ACCOUNT).len(), 1);
    assert_no_grant_left(&run.summary);

    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &fleet(encryption, "grant_lag = \"6m\"", None), &[]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failures = run.manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["stage"], "copy", "{failures:?}");
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.starts_with(&format!("in account {ACCOUNT}: ")) && error.contains("KMS key"), "{error}");
    assert_no_grant_left(&run.summary);
}

/// CreateGrant takes effect but its answer is lost (and the SDK gives up): only the grant's name, journaled
/// before the call, names it. The copy fails, and the grant is taken back all the same (asked for again by
/// name, then revoked); when that revoke is refused too, the end-of-run sweep takes it back.
#[test]
fn a_grant_whose_answer_was_lost_is_taken_back() {
    let encryption = "[encryption]\nkms_keys = { \"*\" = \"alias/builder-images\" }\n";
    let lost = "{ action = \"CreateGrant\", error = \"AccessDeniedException\", nth = 1, answer_lost = true }";
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &fleet(encryption, &format!("faults = [{lost}]"), None), &[]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    assert_eq!(run.summary["sim"]["kms_grants_created"], 1, "the lost answer's grant was made");
    assert_no_grant_left(&run.summary);

    let refused = "{ action = \"RevokeGrant\", error = \"AccessDeniedException\", nth = 1 }";
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &fleet(encryption, &format!("faults = [{lost}, {refused}]"), None), &[]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let swept: Vec<&str> = run.outcome.stderr.lines().filter(|line| line.contains("left behind")).collect();
    assert_eq!(swept.len(), 1, "stderr:\n{}", run.outcome.stderr);
    assert!(swept[0].contains("removed KMS grant named fleetbake-"), "{}", swept[0]);
    assert_no_grant_left(&run.summary);
}

/// Killed while a grant whose answer was lost is still outstanding (its copy's revoke refused, another flavor
/// still building): the journal names it by its name, and `--resume` takes it back before going on.
#[test]
fn a_killed_runs_grant_whose_answer_was_lost_is_taken_back_by_the_resume() {
    use fleetbake::engine::run::Start;
    use fleetbake::state::journal::JournalDir;
    let encryption = "[encryption]\nkms_keys = { \"*\" = \"alias/builder-images\" }\n";
    let faults = "faults = [{ action = \"CreateGrant\", error = \"AccessDeniedException\", nth = 1, answer_lost = \
                  true }, { action = \"RevokeGrant\", error = \"AccessDeniedException\", nth = 1 }]";
    let workspace = Workspace::new();
    let text = fleet(encryption, faults, Some("90m"));
    let fleet = fleetbake::config::load(&workspace.write("fleet.toml", &text)).unwrap();
    let runtime = crate::sharing::paused_runtime();
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    let start = Start::fresh(&fleet, Some(JournalDir::of(&fleet)));
    let one_hour = std::time::Duration::from_secs(3600);
    let killed =
        runtime.block_on(async { tokio::time::timeout(one_hour, crate::sim::run_on(&sim, &fleet, start, None)).await });
    assert!(killed.is_err(), "killed while `slow` builds");
    runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_secs(1)).await });
    let mut resumable = fleet.clone();
    let (replay, plan) = fleetbake::state::resume::prepare(&mut resumable).unwrap();
    let requested: Vec<_> = replay
        .outstanding
        .keys()
        .filter(|resource| resource.kind == fleetbake::steps::ledger::ResourceKind::KmsGrantRequested)
        .collect();
    assert_eq!(requested.len(), 1, "{:?}", replay.outstanding.keys().collect::<Vec<_>>());
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    assert_eq!((report.kms_grants_created, report.kms_grants_revoked), (1, 0), "the grant is in the account");
    let resumed =
        runtime.block_on(crate::sim::run_on(&sim, &resumable, Start::Resume { replay: Box::new(replay), plan }, None));
    assert_eq!((resumed.failed, resumed.interrupted.is_some()), (0, false), "{resumed:?}");
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    assert!(report.leaked_resources.is_empty(), "{:?}", report.leaked_resources);
    assert_eq!(report.kms_grants_revoked, report.kms_grants_created, "every grant taken back");
    let copies: Vec<_> = report.images.iter().filter(|image| image.account == ACCOUNT).collect();
    assert_eq!(copies.len(), 2, "the failed copy made by the resume, once each: {copies:?}");
}

/// Interrupted while the copy into the account is in flight: its grants are taken back (nothing temporary is
/// left), and EC2 may then fail the copy (here a `failed` fault stands for that). `--resume`, once it has
/// failed, discards it in the account and makes it again (with the grants given anew, and taken back).
#[test]
fn a_copy_that_failed_after_an_interrupt_is_discarded_and_made_again_by_the_resume() {
    use fleetbake::engine::run::Start;
    use fleetbake::state::journal::JournalDir;
    let encryption = "[encryption]\nkms_keys = { \"*\" = \"alias/builder-images\" }\n";
    let faults = "faults = [{ action = \"CopyImage\", region = \"us-east-1\", image_state = \"failed\", nth = 1, \
                  reason = \"Client.InvalidRequest: access to the source image was revoked\" }]";
    let workspace = Workspace::new();
    let fleet = fleetbake::config::load(&workspace.write("fleet.toml", &fleet(encryption, faults, None))).unwrap();
    let runtime = crate::sharing::paused_runtime();
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    let start = Start::fresh(&fleet, Some(JournalDir::of(&fleet)));
    let twenty_minutes = std::time::Duration::from_secs(20 * 60);
    let first = runtime.block_on(crate::sim::run_on(&sim, &fleet, start, Some(twenty_minutes)));
    assert!(first.interrupted.is_some(), "{first:?}");
    assert_eq!(first.in_progress, 1, "the copy was in flight: {first:?}");
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    assert_eq!(report.kms_grants_revoked, report.kms_grants_created, "the interrupted copy's grant taken back");
    // The copy ends `failed` meanwhile.
    runtime.block_on(async { tokio::time::sleep(twenty_minutes).await });
    let mut resumable = fleet.clone();
    let (replay, plan) = fleetbake::state::resume::prepare(&mut resumable).unwrap();
    let resumed =
        runtime.block_on(crate::sim::run_on(&sim, &resumable, Start::Resume { replay: Box::new(replay), plan }, None));
    assert_eq!((resumed.failed, resumed.interrupted.is_some()), (0, false), "{resumed:?}");
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    let copies: Vec<_> = report.images.iter().filter(|image| image.account == ACCOUNT).collect();
    assert_eq!(copies.len(), 1, "the failed copy discarded, one made again: {copies:?}");
    assert!(copies[0].available, "{copies:?}");
    assert!(report.leaked_resources.is_empty(), "{:?}", report.leaked_resources);
    assert_eq!(report.kms_grants_revoked, report.kms_grants_created);
    assert_eq!(report.kms_grants_created, 2, "granted again for the new copy");
    let journal = JournalDir::of(&fleet).journals().unwrap().remove(0);
    let text = std::fs::read_to_string(journal).unwrap();
    assert!(text.lines().any(|line| line.contains("\"image_discarded\"")), "{text}");
}
