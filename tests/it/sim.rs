//! The main job on the simulated cloud (`--cloud sim`), in virtual time: the binary runs the whole pipeline
//! against the in-process EC2 model on Tokio's paused clock, so a night of builds takes well under a second.

use serde_json::Value;

use crate::harness::{Outcome, Workspace};

/// Two flavors (one with three provisioners, one with its own provisioning time) in two build regions, copied
/// on to three more; `sim` and `limits` are appended as given.
pub(crate) fn fleet(sim: &str, limits: &str) -> String {
    format!(
        r#"[fleet]
name = "simtest"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "ubuntu"
source_ami = {{ owners = ["099720109477"], name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*" }}
provisioners = [
  {{ type = "shell", inline = ["echo one"] }},
  {{ type = "shell", inline = ["echo two"] }},
  {{ type = "shell", inline = ["echo three"] }},
]

[[flavor]]
name = "al2023"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
sim_provision = "2m"
provisioners = [{{ type = "shell", inline = ["sudo dnf -y upgrade"] }}]

[regions]
us-west-2 = ["us-east-1", "eu-west-1"]
eu-central-1 = ["ap-southeast-2"]

[ssh]
source_cidrs = ["203.0.113.5/32"]

[limits]
{limits}

[sim]
{sim}
"#
    )
}

pub(crate) struct SimRun {
    pub(crate) outcome: Outcome,
    pub(crate) manifest: Value,
    pub(crate) summary: Value,
}

fn run_sim(workspace: &Workspace, fleet_text: &str) -> SimRun {
    run_sim_with(workspace, fleet_text, &[])
}

/// `run_sim` with more command-line arguments.
pub(crate) fn run_sim_with(workspace: &Workspace, fleet_text: &str, more: &[&str]) -> SimRun {
    let fleet_path = workspace.write("fleet.toml", fleet_text);
    let summary_path = workspace.path("summary.json");
    let mut args = vec![
        "matrix",
        fleet_path.to_str().unwrap(),
        "--cloud",
        "sim",
        "--summary-json",
        summary_path.to_str().unwrap(),
    ];
    args.extend_from_slice(more);
    let outcome = workspace.fleetbake(&args);
    let read = |relative: &str| -> Value {
        let text = std::fs::read_to_string(workspace.path(relative))
            .unwrap_or_else(|error| panic!("{relative}: {error}\nstderr:\n{}", outcome.stderr));
        serde_json::from_str(&text).unwrap()
    };
    SimRun { manifest: read("manifest.sim.json"), summary: read("summary.json"), outcome }
}

pub(crate) fn failures(manifest: &Value) -> Vec<(String, String, String, Option<String>)> {
    manifest["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|failure| {
            (
                failure["flavor"].as_str().unwrap().to_string(),
                failure["region"].as_str().unwrap().to_string(),
                failure["stage"].as_str().unwrap().to_string(),
                failure["code"].as_str().map(str::to_string),
            )
        })
        .collect()
}

fn assert_nothing_left(run: &SimRun) {
    assert_eq!(run.summary["leaked_resources"], serde_json::json!([]), "stderr:\n{}", run.outcome.stderr);
}

#[test]
fn a_simulated_night_runs_at_the_critical_path_bound_and_leaves_nothing() {
    let workspace = Workspace::new();
    let run = run_sim(&workspace, &fleet("seed = 7", ""));
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    assert_nothing_left(&run);

    // Every image in every region, and no real manifest written beside the fleet file.
    assert_eq!(run.manifest["status"], "complete");
    for (flavor, regions) in [("ubuntu", 5), ("al2023", 5)] {
        assert_eq!(run.manifest["artifacts"][flavor].as_object().unwrap().len(), regions);
    }
    assert!(!workspace.path("manifest.json").exists());
    assert!(run.outcome.stderr.contains("ubuntu/us-west-2: (sim) would run provisioner 3: shell inline, 1 lines"));

    let summary = &run.summary;
    assert_eq!(summary["cloud"], "sim");
    assert_eq!(
        summary["jobs"],
        serde_json::json!({ "succeeded": 10, "failed": 0, "in_progress": 0, "reused": 0, "rebuilt_on_demand": 0 })
    );
    assert_eq!(summary["throttled_responses"], 0);
    // The al2023 build: 60 s boot + 30 s SSH + 2 min provisioning + 30 s stop + 7 min image, then 15 min copies.
    let bound = summary["critical_path_seconds"].as_f64().unwrap();
    assert_eq!(bound, (60 + 30 + 5 * 60 + 30 + 7 * 60 + 15 * 60) as f64, "the ubuntu builds take 5 min to provision");
    let makespan = summary["makespan_seconds"].as_f64().unwrap();
    assert!(makespan >= bound && makespan <= bound * 1.05, "makespan {makespan} s against a bound of {bound} s");
    // Waits are batched: on the cadence, a describe of a kind per region per 2 s at most; the first wave's
    // waits, checked soon (nothing of their kind ended yet), may describe 0.625 s apart: here at most twice.
    let peak = summary["sim"]["peak_describes_per_interval"].as_u64().unwrap();
    assert!((1..=2 * 5).contains(&peak), "{peak} describes in one interval across 5 regions");
    let ingress: Vec<&str> =
        summary["sim"]["ingress"].as_array().unwrap().iter().map(|rule| rule.as_str().unwrap()).collect();
    assert_eq!(ingress.len(), 4, "one rule per build: {ingress:?}");
    assert!(ingress.iter().all(|rule| rule.ends_with(": 203.0.113.5/32")), "{ingress:?}");
    // Times in the manifest are virtual: the copies became available about 27 minutes into the run.
    let started = chrono::DateTime::parse_from_rfc3339(run.manifest["started_at"].as_str().unwrap()).unwrap();
    let finished = chrono::DateTime::parse_from_rfc3339(run.manifest["finished_at"].as_str().unwrap()).unwrap();
    assert!((finished - started).num_seconds() >= bound as i64 - 1);
}

/// Also the throttling storm: 30% of all calls answered RequestLimitExceeded, and every job finishes.
#[test]
fn throttling_is_answered_and_absorbed() {
    for probability in ["0.05", "0.3"] {
        let workspace = Workspace::new();
        let sim = format!(
            "seed = 3\nfaults = [{{ action = \"*\", error = \"RequestLimitExceeded\", probability = {probability} }}]"
        );
        let run = run_sim(&workspace, &fleet(&sim, ""));
        assert_eq!(run.outcome.code, 0, "{probability}: stderr:\n{}", run.outcome.stderr);
        assert_eq!(run.summary["jobs"]["failed"], 0);
        assert_eq!(run.manifest["status"], "complete");
        let throttled = run.summary["throttled_responses"].as_u64().unwrap();
        let injected = run.summary["sim"]["faults_injected"].as_u64().unwrap();
        assert!(throttled > 0 && throttled == injected, "{probability}: {throttled} throttled, {injected} injected");
        assert!(!run.outcome.stderr.contains("RequestLimitExceeded"), "no throttle reaches the user");
        assert_nothing_left(&run);
    }
}

#[test]
fn copies_into_a_region_stay_within_its_cap() {
    let workspace = Workspace::new();
    let mut text = String::from(
        "[fleet]\nname = \"cap\"\nami_name = \"{flavor}-{build_region}-{run_id}\"\n\n\
         [defaults]\ninstance_type = \"t3.small\"\nssh_username = \"ec2-user\"\n\n",
    );
    for flavor in 0..8 {
        text.push_str(&format!(
            "[[flavor]]\nname = \"f{flavor}\"\nsource_ami = {{ owners = [\"amazon\"], name = \"al2023-ami-2023.*-x86_64\" }}\n\n"
        ));
    }
    text.push_str(
        "[regions]\nus-west-2 = [\"us-east-1\"]\n\n[limits]\nmax_parallel_builds = 8\nmax_parallel_copies_per_region = 3\n\n\
         [sim]\ncopy_concurrency = 3\n",
    );
    let run = run_sim(&workspace, &text);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    assert_eq!(run.summary["jobs"]["succeeded"], 16);
    // Eight images available at once, three copies at a time: the cap is reached and never passed.
    assert_eq!(run.summary["sim"]["peak_copies_in_flight"]["us-east-1"], 3);
    assert_nothing_left(&run);
}

/// Where a fault lands in the sweep, and what the run must make of it.
struct StepFault {
    action: &'static str,
    /// The call of that action in the region that fails (1: the first).
    nth: u32,
    region: &'static str,
    /// The stage the job's first failure names.
    stage: &'static str,
    /// The failed job still made its image (a tag or cleanup step failed after it was available).
    image_made: bool,
}

/// Every EC2 action of the build and copy sequence, failed once with a permanent error. One build at a time, in
/// plan order: the first calls in eu-central-1 (regions go in name order) are ubuntu's build there, the first in
/// ap-southeast-2 its copy.
const STEP_FAULTS: &[StepFault] = &[
    StepFault { action: "DescribeImages", nth: 1, region: "eu-central-1", stage: "source_ami", image_made: false },
    StepFault { action: "CreateKeyPair", nth: 1, region: "eu-central-1", stage: "key_pair", image_made: false },
    StepFault {
        action: "CreateSecurityGroup",
        nth: 1,
        region: "eu-central-1",
        stage: "security_group",
        image_made: false,
    },
    StepFault {
        action: "AuthorizeSecurityGroupIngress",
        nth: 1,
        region: "eu-central-1",
        stage: "security_group",
        image_made: false,
    },
    StepFault { action: "RunInstances", nth: 1, region: "eu-central-1", stage: "launch", image_made: false },
    StepFault { action: "DescribeInstances", nth: 1, region: "eu-central-1", stage: "wait_running", image_made: false },
    StepFault { action: "GetConsoleOutput", nth: 1, region: "eu-central-1", stage: "connect", image_made: false },
    StepFault { action: "StopInstances", nth: 1, region: "eu-central-1", stage: "stop", image_made: false },
    StepFault { action: "CreateImage", nth: 1, region: "eu-central-1", stage: "create_image", image_made: false },
    StepFault { action: "DescribeImages", nth: 2, region: "eu-central-1", stage: "wait_image", image_made: false },
    StepFault { action: "TerminateInstances", nth: 1, region: "eu-central-1", stage: "cleanup", image_made: true },
    StepFault { action: "DeleteSecurityGroup", nth: 1, region: "eu-central-1", stage: "cleanup", image_made: true },
    StepFault { action: "DeleteKeyPair", nth: 1, region: "eu-central-1", stage: "cleanup", image_made: true },
    StepFault { action: "CopyImage", nth: 1, region: "ap-southeast-2", stage: "copy", image_made: false },
    StepFault { action: "CreateTags", nth: 1, region: "ap-southeast-2", stage: "tag", image_made: true },
    StepFault { action: "DescribeImages", nth: 1, region: "ap-southeast-2", stage: "wait_copy", image_made: false },
];

#[test]
fn a_fault_at_any_step_fails_only_its_own_job_leaves_nothing_and_the_manifest_is_true() {
    for fault in STEP_FAULTS {
        let StepFault { action, nth, region, stage, image_made } = *fault;
        let case = format!("{action} #{nth} in {region}");
        let workspace = Workspace::new();
        let sim = format!(
            "faults = [{{ action = \"{action}\", region = \"{region}\", error = \"UnauthorizedOperation\", nth = {nth} }}]"
        );
        // The sweep is of the build and copy sequence: the preflight's lookups would shift the nth calls.
        let run = run_sim_with(&workspace, &fleet(&sim, "max_parallel_builds = 1"), &["--no-preflight"]);
        assert_eq!(run.outcome.code, 1, "{case}: stderr:\n{}", run.outcome.stderr);
        assert_eq!(run.summary["sim"]["faults_injected"], 1, "{case}");
        assert_eq!(run.manifest["status"], "partial", "{case}");

        // Only ubuntu's job in that region failed (a failed terminate also fails its group's delete); a
        // failed build's copy was skipped.
        let failures = failures(&run.manifest);
        let (failed, skipped): (Vec<_>, Vec<_>) = failures.iter().partition(|failure| failure.2 != "skipped");
        assert!(!failed.is_empty(), "{case}: {failures:?}");
        assert!(failed.iter().all(|failure| failure.0 == "ubuntu" && failure.1 == region), "{case}: {failures:?}");
        assert_eq!(failed[0].2, stage, "{case}: {failures:?}");
        assert_eq!(failed[0].3.as_deref(), Some("UnauthorizedOperation"), "{case}: {failures:?}");
        let build_failed_before_its_image = region == "eu-central-1" && !image_made;
        assert_eq!(skipped.len(), usize::from(build_failed_before_its_image), "{case}: {failures:?}");

        // Everything else was made: al2023 everywhere, ubuntu everywhere but where its job failed first.
        let artifacts = &run.manifest["artifacts"];
        assert_eq!(artifacts["al2023"].as_object().unwrap().len(), 5, "{case}");
        let ubuntu_regions: Vec<&String> = artifacts["ubuntu"].as_object().unwrap().keys().collect();
        let ubuntu_expected = if image_made {
            5
        } else if build_failed_before_its_image {
            3
        } else {
            4
        };
        assert_eq!(ubuntu_regions.len(), ubuntu_expected, "{case}: {ubuntu_regions:?}");
        assert_manifest_is_true(&run, &case);
        assert_nothing_left(&run);
    }
}

/// Every action of the build and copy sequence once more, but now the call takes effect and its answer is lost
/// (the client sees a retryable `InternalError` and repeats it): client tokens and `*.Duplicate` answers mean
/// nothing is made twice, nothing is left, and every job succeeds.
#[test]
fn a_lost_answer_at_any_step_makes_nothing_twice_and_leaves_nothing() {
    let mut seen = std::collections::BTreeSet::new();
    for fault in STEP_FAULTS.iter().filter(|fault| seen.insert((fault.action, fault.nth, fault.region))) {
        let StepFault { action, nth, region, .. } = *fault;
        let case = format!("{action} #{nth} in {region}, answer lost");
        let workspace = Workspace::new();
        let sim = format!(
            "faults = [{{ action = \"{action}\", region = \"{region}\", error = \"InternalError\", nth = {nth}, answer_lost = true }}]"
        );
        let run = run_sim_with(&workspace, &fleet(&sim, "max_parallel_builds = 1"), &["--no-preflight"]);
        assert_eq!(run.outcome.code, 0, "{case}: stderr:\n{}", run.outcome.stderr);
        assert_eq!(run.summary["sim"]["faults_injected"], 1, "{case}");
        assert_eq!(run.summary["retries"], 1, "{case}");
        assert_eq!(run.manifest["status"], "complete", "{case}");
        assert_manifest_is_true(&run, &case);
        let images = run.summary["sim"]["images"].as_array().unwrap();
        assert_eq!(images.len(), 10, "{case}: one image per flavor and region, no more: {images:?}");
        assert_nothing_left(&run);
    }
}

/// Every image the manifest names exists, available, under that name in that region; no name is held twice.
fn assert_manifest_is_true(run: &SimRun, case: &str) {
    let images = run.summary["sim"]["images"].as_array().unwrap();
    for (flavor, regions) in run.manifest["artifacts"].as_object().unwrap() {
        for (region, artifact) in regions.as_object().unwrap() {
            let found: Vec<&Value> = images
                .iter()
                .filter(|image| image["region"] == region.as_str() && image["name"] == artifact["name"])
                .collect();
            assert_eq!(found.len(), 1, "{case}: {flavor}/{region}: {found:?}");
            assert_eq!(found[0]["id"], artifact["image_id"], "{case}: {flavor}/{region}");
            assert_eq!(found[0]["available"], true, "{case}: {flavor}/{region}");
        }
    }
}

#[test]
fn a_transient_fault_is_retried() {
    let workspace = Workspace::new();
    let run =
        run_sim(&workspace, &fleet("faults = [{ action = \"CreateImage\", error = \"InternalError\", nth = 2 }]", ""));
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    assert_eq!(run.summary["jobs"]["failed"], 0);
    assert_eq!(run.summary["retries"], 1);
    assert_nothing_left(&run);
}

#[test]
fn a_bad_sim_table_is_bad_input() {
    let workspace = Workspace::new();
    let text = fleet("jitter = 1.5\nfaults = [{ action = \"LaunchRocket\", error = \"InternalError\", nth = 1 }]", "");
    let fleet_path = workspace.write("fleet.toml", &text);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(outcome.code, 2, "stderr:\n{}", outcome.stderr);
    let jitter_line = text.lines().position(|line| line.starts_with("jitter")).unwrap() + 1;
    assert!(outcome.stderr.contains(&format!("fleet.toml:{jitter_line}:")), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("`sim.jitter`"), "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("`sim.faults[0].action`: `LaunchRocket` is not an EC2 action"),
        "{}",
        outcome.stderr
    );
}

/// Ctrl-C while copies are in flight (the library's interrupt channel, in virtual time): the copies are left
/// running in the account and recorded as in progress, every build cleans up, nothing temporary is left.
#[test]
fn an_interrupt_leaves_copies_in_flight_running_and_records_them() {
    use fleetbake::engine::run::{matrix_simulated, MatrixOptions, Strategy};
    use fleetbake::engine::scheduler::Interrupt;

    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &fleet("", ""));
    let fleet = fleetbake::config::load(&fleet_path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let outcome = runtime.block_on(async {
        let (interrupt, interrupts) = tokio::sync::mpsc::unbounded_channel();
        // The builds are done after about 14 minutes; their 15-minute copies are then in flight.
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(20 * 60)).await;
            interrupt.send(Interrupt { signal: "SIGINT", exit_code: 130 }).unwrap();
            // Kept open: a closed channel is not an interrupt.
            std::future::pending::<()>().await;
        });
        let options = MatrixOptions {
            fail_fast: false,
            summary_json: None,
            resume: false,
            preflight: true,
            output: Default::default(),
        };
        let reporters = Some(vec![Box::new(fleetbake::state::manifest::ManifestWriter::new(
            workspace.path("manifest.sim.json"),
            std::time::Duration::ZERO,
        )) as Box<dyn fleetbake::report::Reporter>]);
        matrix_simulated(fleet, options, Strategy::FLEETBAKE, reporters, interrupts).await.unwrap()
    });
    let summary = &outcome.summary;
    assert_eq!(summary.interrupted.map(|interrupt| interrupt.exit_code), Some(130));
    assert!(summary.in_progress > 0, "{summary:?}");
    let statistics = serde_json::to_value(&outcome.statistics).unwrap();
    assert_eq!(statistics["leaked_resources"], serde_json::json!([]));

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace.path("manifest.sim.json")).unwrap()).unwrap();
    assert_eq!(manifest["status"], "partial");
    let in_progress = manifest["in_progress"].as_array().unwrap();
    assert_eq!(in_progress.len(), summary.in_progress, "{manifest}");
    let images = statistics["sim"]["images"].as_array().unwrap();
    for image in in_progress {
        // Still there, still being made: a resume would wait for it.
        let found = images.iter().find(|found| found["id"] == image["image_id"]).expect("the copy exists");
        assert_eq!(found["available"], false, "{image}");
        // No failure names its job (`failures` may well be empty: the loop runs, `in_progress` is not).
        let failures = manifest["failures"].as_array().unwrap();
        assert!(
            !failures
                .iter()
                .any(|failure| failure["region"] == image["region"] && failure["flavor"] == image["flavor"]),
            "{image} is in progress, not failed: {failures:?}"
        );
    }
}

/// Every image the account holds carries the run's tags, and so does its snapshot.
fn assert_every_image_tagged(run: &SimRun, case: &str) {
    let run_id = run.manifest["run_id"].as_str().unwrap();
    let images = run.summary["sim"]["images"].as_array().unwrap();
    assert!(!images.is_empty(), "{case}");
    for image in images {
        assert_eq!(image["run_id_tag"], run_id, "{case}: image {image}");
        assert_eq!(image["snapshot_run_id_tag"], run_id, "{case}: snapshot of {image}");
    }
}

/// EC2's eventual consistency: every resource unknown to other calls for 20 s after its create, and, one at a
/// time, each call that names something just created answered with its NotFound code once more on top (as if
/// the lag were longer there). Every job succeeds, every image and snapshot is tagged, nothing is left.
#[test]
fn a_resource_unknown_after_its_create_is_waited_out_at_every_step() {
    let cases = [
        None,
        Some(("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound")),
        Some(("RunInstances", "InvalidKeyPair.NotFound")),
        Some(("RunInstances", "InvalidGroup.NotFound")),
        Some(("StopInstances", "InvalidInstanceID.NotFound")),
        Some(("CreateImage", "InvalidInstanceID.NotFound")),
        // The first CreateTags in a copy region tags the copy (snapshots are tagged at creation).
        Some(("CreateTags", "InvalidAMIID.NotFound\", region = \"us-east-1")),
        Some(("TerminateInstances", "InvalidInstanceID.NotFound")),
        Some(("DeleteSecurityGroup", "InvalidGroup.NotFound")),
    ];
    for case in cases {
        let (label, faults) = match case {
            None => ("lag only".to_string(), String::new()),
            Some((action, code)) => (
                format!("{action} answered {code}"),
                format!("faults = [{{ action = \"{action}\", error = \"{code}\", nth = 1 }}]"),
            ),
        };
        let workspace = Workspace::new();
        let run = run_sim(&workspace, &fleet(&format!("consistency_lag = \"20s\"\n{faults}"), ""));
        assert_eq!(run.outcome.code, 0, "{label}: stderr:\n{}", run.outcome.stderr);
        assert_eq!(run.manifest["status"], "complete", "{label}");
        assert!(run.summary["sim"]["lagged_answers"].as_u64().unwrap() > 0, "{label}: the lag was met");
        if case.is_some() {
            assert_eq!(run.summary["sim"]["faults_injected"], 1, "{label}");
        }
        assert_manifest_is_true(&run, &label);
        assert_every_image_tagged(&run, &label);
        assert_nothing_left(&run);
    }
}

/// EC2 out of room: the first launch finds no capacity, the account's vCPU quota fits one instance per
/// region at a time (a build region has two builds), other tools keep 49 of a region's 50 copy slots busy. Every job finishes; the night is
/// longer, not failed.
#[test]
fn capacity_and_quotas_are_waited_out() {
    let workspace = Workspace::new();
    let baseline = run_sim(&workspace, &fleet("", ""));
    let baseline_makespan = baseline.summary["makespan_seconds"].as_f64().unwrap();
    let cases = [
        ("capacity", "faults = [{ action = \"RunInstances\", error = \"InsufficientInstanceCapacity\", nth = 1 }]"),
        ("vcpu quota", "vcpu_limit = 2"),
        ("foreign copies", "foreign_copies = 49"),
    ];
    for (case, sim) in cases {
        let workspace = Workspace::new();
        let run = run_sim(&workspace, &fleet(sim, ""));
        assert_eq!(run.outcome.code, 0, "{case}: stderr:\n{}", run.outcome.stderr);
        assert_eq!(run.summary["jobs"]["failed"], 0, "{case}");
        assert!(run.outcome.stderr.contains("no room"), "{case}: {}", run.outcome.stderr);
        let makespan = run.summary["makespan_seconds"].as_f64().unwrap();
        assert!(makespan > baseline_makespan, "{case}: {makespan} s against {baseline_makespan} s");
        assert_manifest_is_true(&run, case);
        assert_nothing_left(&run);
    }
}

/// Past `[limits] capacity_patience`, a launch that never finds room fails with EC2's code, and leaves
/// nothing; the other region's builds are not held up.
#[test]
fn capacity_past_patience_fails_the_launch_with_its_code() {
    let workspace = Workspace::new();
    let sim = "faults = [{ action = \"RunInstances\", region = \"eu-central-1\", error = \"InsufficientInstanceCapacity\", probability = 1.0 }]";
    let run = run_sim(&workspace, &fleet(sim, "capacity_patience = \"10m\""));
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failures = failures(&run.manifest);
    let launches: Vec<_> = failures.iter().filter(|failure| failure.2 == "launch").collect();
    assert_eq!(launches.len(), 2, "both flavors' builds in eu-central-1: {failures:?}");
    for failure in &launches {
        assert_eq!((failure.1.as_str(), failure.3.as_deref()), ("eu-central-1", Some("InsufficientInstanceCapacity")));
    }
    let error = run.manifest["failures"].as_array().unwrap()[0]["error"].as_str().unwrap().to_string();
    assert!(error.contains("over 10m"), "{error}");
    assert_eq!(run.manifest["artifacts"]["ubuntu"].as_object().unwrap().len(), 3, "us-west-2 and its copies");
    assert_nothing_left(&run);
}

/// An image that ends `failed` and a launch that ends `terminated`: the job fails with EC2's StateReason,
/// the failed image is deregistered with its snapshot, the other jobs finish, nothing is left.
#[test]
fn a_failed_image_or_launch_fails_its_job_with_the_reason() {
    let cases = [
        ("CreateImage", "image_state = \"failed\"", "wait_image", "Client.InternalError"),
        (
            "CopyImage",
            "image_state = \"failed\", reason = \"Client.InvalidKMSKey.InvalidState: the key is disabled\"",
            "wait_copy",
            "Client.InvalidKMSKey.InvalidState",
        ),
        ("RunInstances", "instance_state = \"terminated\"", "wait_running", "Server.InsufficientInstanceCapacity"),
    ];
    for (action, effect, stage, reason) in cases {
        let workspace = Workspace::new();
        let sim = format!("faults = [{{ action = \"{action}\", {effect}, nth = 1 }}]");
        let run = run_sim(&workspace, &fleet(&sim, "max_parallel_builds = 1"));
        assert_eq!(run.outcome.code, 1, "{action}: stderr:\n{}", run.outcome.stderr);
        let failed: Vec<&Value> =
            run.manifest["failures"].as_array().unwrap().iter().filter(|f| f["stage"] != "skipped").collect();
        assert_eq!(failed.len(), 1, "{action}: {failed:?}");
        assert_eq!(failed[0]["stage"], stage, "{action}");
        assert!(failed[0]["error"].as_str().unwrap().contains(reason), "{action}: {}", failed[0]["error"]);
        let made: usize =
            run.manifest["artifacts"].as_object().unwrap().values().map(|r| r.as_object().unwrap().len()).sum();
        // A failed build loses its image and its copies (ubuntu in eu-central-1 has one); a failed copy, itself.
        let expected = if action == "CopyImage" { 9 } else { 8 };
        assert_eq!(made, expected, "{action}: every other job made its image");
        assert_manifest_is_true(&run, action);
        assert_nothing_left(&run);
    }
}

/// A shared account: other tools use half of every request bucket. The run is throttled (by the model's
/// buckets, not by injected faults), retries every throttled call, and still makes every image.
#[test]
fn half_the_request_buckets_taken_by_other_tools_still_completes() {
    let workspace = Workspace::new();
    // Twelve flavors launched at once in each build region: more RunInstances than the bucket's burst (5), sent
    // faster than the half of its refill (2/s) left to the run. (Ten jobs at a time never drain a bucket.)
    let extra: String = (1..=10)
        .map(|n| format!("[[flavor]]\nname = \"extra-{n}\"\nsource_ami = {{ owners = [\"amazon\"], name = \"al2023-ami-2023.*-kernel-6.1-x86_64\" }}\n\n"))
        .collect();
    let text = fleet("background_load = 0.5", "max_parallel_builds = 100").replacen(
        "[regions]",
        &format!("{extra}[regions]"),
        1,
    );
    let run = run_sim(&workspace, &text);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    let summary = &run.summary;
    assert_eq!(
        summary["jobs"],
        serde_json::json!({ "succeeded": 60, "failed": 0, "in_progress": 0, "reused": 0, "rebuilt_on_demand": 0 })
    );
    let throttled = summary["throttled_responses"].as_u64().unwrap();
    assert!(throttled > 0, "half the buckets taken throttles the run: {summary}");
    assert_eq!(summary["sim"]["throttled_by_buckets"], throttled, "every throttle came from the buckets: {summary}");
    assert_eq!(summary["sim"]["faults_injected"], 0);
    // None reached a job: each throttled call was retried.
    assert!(summary["retries"].as_u64().unwrap() >= throttled, "{summary}");
    assert_eq!(run.manifest["status"], "complete");
    let artifacts = run.manifest["artifacts"].as_object().unwrap();
    assert_eq!(artifacts.len(), 12, "every flavor");
    for (flavor, regions) in artifacts {
        assert_eq!(regions.as_object().unwrap().len(), 5, "{flavor} in every region");
    }
    assert_eq!(run.manifest["failures"], serde_json::json!([]));
    assert_nothing_left(&run);
}

/// Runs `fleet` on `sim` (the same account across calls, in the same paused runtime: the model's times are
/// on its clock), journaled beside the fleet file, until the run ends or `interrupt_after` of virtual time
/// passes (then as Ctrl-C).
pub(crate) async fn run_on(
    sim: &std::sync::Arc<fleetbake::cloud::sim::SimCloud>,
    fleet: &fleetbake::config::Fleet,
    start: fleetbake::engine::run::Start,
    interrupt_after: Option<std::time::Duration>,
) -> fleetbake::engine::scheduler::RunSummary {
    let writer =
        fleetbake::state::manifest::ManifestWriter::new(fleet.manifest_path.clone(), std::time::Duration::ZERO);
    run_reporting_to(sim, fleet, start, interrupt_after, vec![Box::new(writer)]).await
}

/// [`run_on`], with the events going to `reporters`.
async fn run_reporting_to(
    sim: &std::sync::Arc<fleetbake::cloud::sim::SimCloud>,
    fleet: &fleetbake::config::Fleet,
    start: fleetbake::engine::run::Start,
    interrupt_after: Option<std::time::Duration>,
    reporters: Vec<Box<dyn fleetbake::report::Reporter>>,
) -> fleetbake::engine::scheduler::RunSummary {
    use fleetbake::cloud::{retry::Policy, Cloud, Limited};
    use fleetbake::engine::{limits::RunLimits, run::Execution, run::Strategy, scheduler::Interrupt};
    use std::sync::Arc;
    {
        let (interrupt, interrupts) = tokio::sync::mpsc::unbounded_channel();
        let interrupting = tokio::spawn(async move {
            if let Some(after) = interrupt_after {
                tokio::time::sleep(after).await;
                let _ = interrupt.send(Interrupt { signal: "SIGINT", exit_code: 130 });
            }
            std::future::pending::<()>().await;
        });
        let fleet = Arc::new(fleet.clone());
        let limits = Arc::new(RunLimits::new(&fleet.limits, Policy::THROTTLED, Strategy::FLEETBAKE.pacing));
        let execution = Execution {
            fleet: Arc::clone(&fleet),
            ssh_sources: fleetbake::steps::network::SshSources::Configured(vec!["203.0.113.5/32".parse().unwrap()]),
            cloud: Arc::new(Limited::new(Arc::clone(sim) as Arc<dyn Cloud>, Arc::clone(limits.api()))),
            communicator: Arc::new(fleetbake::remote::sim::SimCommunicator::new(Arc::clone(sim), Arc::clone(&fleet))),
            limits,
            strategy: Strategy::FLEETBAKE,
            fail_fast: false,
            reporters,
            run_lock: None,
            preflight: None,
            local_leftovers: Vec::new(),
            manifest_set_aside: None,
        };
        let summary = execution.run(start, interrupts).await.unwrap().1;
        interrupting.abort();
        summary
    }
}

/// A copy that ended `failed` is discarded; the resumed run makes it again with a new client token. With the
/// old one, EC2 (and the model) would answer with the discarded copy's id, and the job would wait for an
/// image that no longer exists until `image_timeout`.
#[test]
fn a_resumed_run_makes_a_failed_copy_anew_with_a_new_token() {
    use fleetbake::engine::run::Start;
    use fleetbake::state::journal::JournalDir;
    let workspace = Workspace::new();
    // One build at a time: ubuntu's in eu-central-1 goes first, its copy to ap-southeast-2 fails at about
    // 29 minutes; at 35 the third build is provisioning when the run is interrupted.
    let fleet_path = workspace.write(
        "fleet.toml",
        &fleet("faults = [{ action = \"CopyImage\", image_state = \"failed\", nth = 1 }]", "max_parallel_builds = 1"),
    );
    let mut fleet = fleetbake::config::load(&fleet_path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    let first = runtime.block_on(run_on(
        &sim,
        &fleet,
        Start::fresh(&fleet, Some(JournalDir::of(&fleet))),
        Some(std::time::Duration::from_secs(35 * 60)),
    ));
    assert!(first.interrupted.is_some(), "{first:?}");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(&fleet.manifest_path).unwrap()).unwrap();
    let copy_failure = manifest["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|failure| failure["stage"] == "wait_copy")
        .unwrap_or_else(|| panic!("the copy failed: {manifest}"));
    assert_eq!(copy_failure["region"], "ap-southeast-2");

    let (replay, plan) = fleetbake::state::resume::prepare(&mut fleet).unwrap();
    assert_eq!(replay.discarded.values().sum::<u32>(), 1, "the failed copy was discarded and journaled");
    let resumed = runtime.block_on(run_on(&sim, &fleet, Start::Resume { replay: Box::new(replay), plan }, None));
    assert_eq!((resumed.failed, resumed.interrupted), (0, None), "{resumed:?}");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(&fleet.manifest_path).unwrap()).unwrap();
    assert_eq!(manifest["status"], "complete", "{manifest}");
    let copy = manifest["artifacts"]["ubuntu"]["ap-southeast-2"]["image_id"].as_str().unwrap().to_string();
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    let there: Vec<_> = report.images.iter().filter(|image| image.region.as_str() == "ap-southeast-2").collect();
    assert_eq!(there.len(), 2, "the new copy and al2023's: {there:?}");
    assert!(there.iter().any(|image| image.id == copy && image.available), "{there:?}");
    assert!(report.leaked_resources.is_empty(), "{:?}", report.leaked_resources);
}

/// Records each image the run announced as available, and when, on the (paused) runtime's clock; and, when the
/// interrupt is announced, the manifest on disk then (the writer, before it in the list, has seen the event).
struct Announcements {
    since: tokio::time::Instant,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Announced>>>,
    manifest: std::path::PathBuf,
    at_interrupt: std::sync::Arc<std::sync::Mutex<Option<(usize, String)>>>,
}

#[derive(Clone, Debug)]
struct Announced {
    after: std::time::Duration,
    flavor: String,
    region: String,
    image_id: String,
}

impl fleetbake::report::Reporter for Announcements {
    fn report(&mut self, event: &fleetbake::report::events::Stamped) -> Result<(), fleetbake::report::ReportError> {
        if let fleetbake::report::events::RunEvent::ImageAvailable { job, artifact } = &event.event {
            self.seen.lock().unwrap().push(Announced {
                after: self.since.elapsed(),
                flavor: job.flavor.to_string(),
                region: job.region().to_string(),
                image_id: artifact.image_id.to_string(),
            });
        }
        if let fleetbake::report::events::RunEvent::Interrupted { .. } = &event.event {
            let text = std::fs::read_to_string(&self.manifest).unwrap();
            *self.at_interrupt.lock().unwrap() = Some((self.seen.lock().unwrap().len(), text));
        }
        Ok(())
    }
}

/// What a run of the test fleet announced, the manifest it left, and the manifest on disk when the interrupt
/// was announced (with how many images had been announced by then).
struct LeftBehind {
    announced: Vec<Announced>,
    manifest: Value,
    at_interrupt: Option<(usize, String)>,
}

/// Runs the test fleet on a fresh simulated account, writing the manifest the way `fleetbake sim` does (at
/// most once a simulated minute), interrupted after `interrupt_after` of virtual time if given.
fn run_leaving_manifest(interrupt_after: Option<std::time::Duration>) -> LeftBehind {
    use fleetbake::engine::run::Start;
    use fleetbake::state::journal::JournalDir;
    use std::sync::{Arc, Mutex};
    let workspace = Workspace::new();
    // Durations ±5%: images land apart, some within a minute of the one before (so a write is deferred).
    let fleet_path = workspace.write("fleet.toml", &fleet("jitter = 0.05", ""));
    let fleet = fleetbake::config::load(&fleet_path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let (seen, at_interrupt) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(None)));
    runtime.block_on(async {
        let sim = Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet));
        let writer = fleetbake::state::manifest::ManifestWriter::new(
            fleet.manifest_path.clone(),
            std::time::Duration::from_secs(60),
        );
        let announcements = Announcements {
            since: tokio::time::Instant::now(),
            seen: Arc::clone(&seen),
            manifest: fleet.manifest_path.clone(),
            at_interrupt: Arc::clone(&at_interrupt),
        };
        let start = Start::fresh(&fleet, Some(JournalDir::of(&fleet)));
        let summary =
            run_reporting_to(&sim, &fleet, start, interrupt_after, vec![Box::new(writer), Box::new(announcements)])
                .await;
        assert_eq!(summary.interrupted.is_some(), interrupt_after.is_some(), "{summary:?}");
    });
    let manifest = parse_manifest(&std::fs::read_to_string(&fleet.manifest_path).unwrap());
    let announced = seen.lock().unwrap().clone();
    let at_interrupt = at_interrupt.lock().unwrap().take();
    LeftBehind { announced, manifest, at_interrupt }
}

fn parse_manifest(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("the manifest parses: {error}: {text}"))
}

/// Asserts `manifest` lists exactly the `announced` images, with their ids.
fn assert_lists_exactly(manifest: &Value, announced: &[Announced], when: &str) {
    let artifacts = manifest["artifacts"].as_object().unwrap();
    let listed: usize = artifacts.values().map(|regions| regions.as_object().unwrap().len()).sum();
    assert_eq!(listed, announced.len(), "{when}: every image announced, and only those: {manifest}");
    for image in announced {
        let entry = &artifacts[&image.flavor][&image.region];
        assert_eq!(entry["image_id"], image.image_id.as_str(), "{when}: {image:?} in {manifest}");
    }
}

/// The manifest is rewritten at most once a simulated minute while a run goes on, but an interrupt writes it
/// at once: interrupted a second after each image was announced (and before any), the manifest on disk as
/// the interrupt is announced, and the one the run leaves, parse and list exactly the images it announced.
#[test]
fn an_interrupted_run_leaves_a_manifest_with_every_image_it_announced() {
    let whole = run_leaving_manifest(None);
    assert_eq!(whole.manifest["status"], "complete", "{}", whole.manifest);
    assert_eq!(whole.announced.len(), 10, "4 builds and 6 copies: {:?}", whole.announced);
    // Not after the last one, nor within a minute of it: the run has ended by then, or may have (a run's last
    // copy waits can end a poll apart, ~40 s, from one run to the next: the paused clock jumps while real file
    // writes run, and the jitter's draws follow).
    let end = whole.announced.iter().map(|announced| announced.after).max().unwrap();
    let mut points: Vec<_> = whole
        .announced
        .iter()
        .map(|announced| announced.after + std::time::Duration::from_secs(1))
        .filter(|after| *after + std::time::Duration::from_secs(60) < end)
        .collect();
    points.insert(0, std::time::Duration::from_secs(5 * 60));
    points.dedup();
    let mut most = 0;
    for after in points {
        let left = run_leaving_manifest(Some(after));
        let (before_interrupt, text) = left.at_interrupt.unwrap_or_else(|| panic!("interrupted at {after:?}"));
        let when = format!("interrupted at {after:?}, as the interrupt was announced");
        assert_lists_exactly(&parse_manifest(&text), &left.announced[..before_interrupt], &when);
        assert_ne!(left.manifest["status"], "complete", "interrupted at {after:?}: {}", left.manifest);
        assert_lists_exactly(&left.manifest, &left.announced, &format!("interrupted at {after:?}, at the end"));
        most = most.max(before_interrupt);
    }
    assert!(
        most > whole.announced.len() / 2,
        "the last points came after most images: {most} of {}",
        whole.announced.len()
    );
}

/// EC2 can refuse CreateImage right after the instance reports `stopped`; the build waits it out (the Packer
/// plugin's 15 minutes) instead of failing after its provisioning is done.
#[test]
fn create_image_refused_right_after_stop_is_retried() {
    for code in ["IncorrectInstanceState", "InvalidParameterValue"] {
        let workspace = Workspace::new();
        let sim = format!("faults = [{{ action = \"CreateImage\", error = \"{code}\", nth = 1 }}, {{ action = \"CreateImage\", error = \"{code}\", nth = 2 }}]");
        let run = run_sim(&workspace, &fleet(&sim, ""));
        // `InvalidParameterValue` is retried only when it says the instance is not in state; the injected
        // message does not, so that one fails its build.
        if code == "IncorrectInstanceState" {
            assert_eq!(run.outcome.code, 0, "{code}: stderr:\n{}", run.outcome.stderr);
            assert_eq!(run.summary["sim"]["faults_injected"], 2, "{code}");
            assert_eq!(run.summary["jobs"]["failed"], 0, "{code}");
        } else {
            assert_eq!(run.outcome.code, 1, "{code}: stderr:\n{}", run.outcome.stderr);
            assert!(failures(&run.manifest).iter().any(|failure| failure.2 == "create_image"), "{code}");
        }
        assert_nothing_left(&run);
    }
}

/// Subnets found by tags: the model finds two in different zones. A launch refused for capacity in the
/// first goes to the other at once, without waiting out `capacity_patience`.
#[test]
fn a_launch_without_capacity_in_one_zone_moves_to_another_subnet() {
    let with_subnets = |sim: &str| {
        fleet(sim, "").replace(
            "[defaults]\ninstance_type = \"t3.small\"",
            "[defaults]\nsubnet = { tags = { Tier = \"build\" } }\ninstance_type = \"t3.small\"",
        )
    };
    let baseline = run_sim(&Workspace::new(), &with_subnets(""));
    assert_eq!(baseline.outcome.code, 0, "stderr:\n{}", baseline.outcome.stderr);
    let workspace = Workspace::new();
    let sim = "faults = [{ action = \"RunInstances\", error = \"InsufficientInstanceCapacity\", nth = 1 }]";
    let run = run_sim(&workspace, &with_subnets(sim));
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    assert_eq!(run.summary["sim"]["faults_injected"], 1);
    let stderr = &run.outcome.stderr;
    let moved = stderr.lines().find(|line| line.contains("no room now (InsufficientInstanceCapacity); trying subnet-"));
    let moved = moved.unwrap_or_else(|| panic!("the build moved on: {stderr}"));
    assert!(moved.ends_with("b)"), "to the other zone: {moved}");
    assert!(!stderr.contains("trying again in"), "no pause: {stderr}");
    let (makespan, before) =
        (run.summary["makespan_seconds"].as_f64().unwrap(), baseline.summary["makespan_seconds"].as_f64().unwrap());
    assert!(makespan < before + 30.0, "{makespan} s against {before} s: no capacity wait");
    assert_nothing_left(&run);
}

/// An organization's images: every image (copies too) encrypted with its region's key, IMDSv2 required,
/// deprecated on time, shared; the manifest says so per image. Where sharing a snapshot is refused, the image
/// stays (in the manifest, without `shared_with`), the job fails at `share`, and the rest is unaffected.
#[test]
fn images_are_encrypted_shared_and_deprecated_and_a_refused_share_keeps_the_image() {
    let workspace = Workspace::new();
    let organization =
        "[fleet]\nname = \"simtest\"\nami_name = \"{flavor}-{build_region}-{run_id}\"\ndeprecate_after = \"30d\"\n\n\
        [encryption]\nkms_keys = { us-west-2 = \"alias/images-west\", \"*\" = \"alias/images\" }\n\n\
        [sharing]\naccounts = [\"111122223333\"]\nsnapshot_accounts = [\"111122223333\"]\n";
    let sim = "faults = [{ action = \"ModifySnapshotAttribute\", region = \"ap-southeast-2\", error = \"UnauthorizedOperation\", probability = 1.0 }]";
    let text = fleet(sim, "").replacen(
        "[fleet]\nname = \"simtest\"\nami_name = \"{flavor}-{build_region}-{run_id}\"\n",
        organization,
        1,
    );
    let run = run_sim(&workspace, &text);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let mut refused = failures(&run.manifest);
    refused.sort();
    let expected = |flavor: &str| {
        (
            "ap-southeast-2".to_string(),
            "share".to_string(),
            Some("UnauthorizedOperation".to_string()),
            flavor.to_string(),
        )
    };
    let refused: Vec<_> =
        refused.into_iter().map(|(flavor, region, stage, code)| (region, stage, code, flavor)).collect();
    assert_eq!(refused, [expected("al2023"), expected("ubuntu")]);

    let images = run.summary["sim"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 10, "{images:?}");
    for (flavor, regions) in run.manifest["artifacts"].as_object().unwrap() {
        assert_eq!(regions.as_object().unwrap().len(), 5, "{flavor}: every image is in the manifest");
        for (region, artifact) in regions.as_object().unwrap() {
            let case = format!("{flavor} in {region}");
            let key = if region == "us-west-2" { "alias/images-west" } else { "alias/images" };
            let image = images.iter().find(|image| image["id"] == artifact["image_id"]).expect("in the account");
            let attributes = &image["attributes"];
            // What the account holds is what the manifest says.
            assert_eq!(attributes["kms_key"], key, "{case}: the copy is encrypted with its own region's key");
            assert_eq!(artifact["kms_key_id"], key, "{case}");
            assert_eq!(attributes["imds_v2"], true, "{case}");
            assert_eq!(artifact["imds_support"], "v2.0", "{case}");
            assert_eq!(attributes["deprecation_time"], artifact["deprecation_time"], "{case}");
            let deprecation: chrono::DateTime<chrono::Utc> =
                artifact["deprecation_time"].as_str().unwrap().parse().unwrap();
            let created: chrono::DateTime<chrono::Utc> = artifact["created_at"].as_str().unwrap().parse().unwrap();
            assert!((deprecation - created - chrono::TimeDelta::days(30)).num_seconds().abs() <= 60, "{case}");
            assert_eq!(attributes["launch_permissions"], serde_json::json!(["111122223333"]), "{case}");
            if region == "ap-southeast-2" {
                assert!(artifact.get("shared_with").is_none(), "{case}: not (all) shared: {artifact}");
                assert_eq!(attributes["snapshot_permissions"], serde_json::json!([]), "{case}");
            } else {
                let shared = serde_json::json!({ "accounts": ["111122223333"], "snapshot_accounts": ["111122223333"] });
                assert_eq!(artifact["shared_with"], shared, "{case}");
                assert_eq!(attributes["snapshot_permissions"], serde_json::json!(["111122223333"]), "{case}");
            }
        }
    }
    assert_nothing_left(&run);
}

/// An AWS-managed key named by its ARN (which `validate` cannot tell from a customer's): the preflight refuses
/// to share images encrypted with it; past the preflight, EC2 (the model) refuses the share and the image stays.
#[test]
fn sharing_an_image_encrypted_with_the_aws_managed_key_is_refused() {
    let workspace = Workspace::new();
    let keys: Vec<String> = ["us-west-2", "us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-2"]
        .iter()
        .map(|region| format!("{region} = \"arn:aws:kms:{region}:123456789012:alias/aws/ebs\""))
        .collect();
    let text = format!(
        "{}\n[encryption]\nkms_keys = {{ {} }}\n\n[sharing]\naccounts = [\"111122223333\"]\n",
        fleet("", ""),
        keys.join(", ")
    );
    let fleet_path = workspace.write("fleet.toml", &text);
    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    let refusal = "FAIL us-west-2: KMS key `arn:aws:kms:us-west-2:123456789012:alias/aws/ebs` (";
    assert!(preflight.stdout.contains(refusal), "{}", preflight.stdout);
    assert!(
        preflight.stdout.contains("is AWS-managed: images encrypted with it cannot be shared"),
        "{}",
        preflight.stdout
    );

    let run = run_sim_with(&workspace, &text, &["--no-preflight"]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failures = failures(&run.manifest);
    assert_eq!(failures.len(), 10, "every image: {failures:?}");
    assert!(failures.iter().all(|f| f.2 == "share" && f.3.as_deref() == Some("InvalidParameter")), "{failures:?}");
    let artifacts = run.manifest["artifacts"].as_object().unwrap();
    assert_eq!(artifacts.values().map(|regions| regions.as_object().unwrap().len()).sum::<usize>(), 10);
    assert_nothing_left(&run);
}

/// `fleet` with tests on every flavor and each image published as it is made.
pub(crate) fn tested_and_published(sim: &str) -> String {
    let sim = format!("{sim}\nlaunch_templates = [\"ubuntu\", \"al2023\"]");
    let text = fleet(&sim, "max_parallel_builds = 1").replace(
        "sim_provision = \"2m\"\n",
        "sim_provision = \"2m\"\ntests = [{ type = \"shell\", inline = [\"systemctl is-active sshd\"] }]\n",
    );
    let text = text.replacen(
        "provisioners = [\n",
        "tests = [{ type = \"shell\", inline = [\"docker run --rm hello-world\"] }]\nprovisioners = [\n",
        1,
    );
    format!("{text}\n[publish]\nssm_parameter = \"/images/{{fleet}}/{{flavor}}\"\nlaunch_template = \"{{flavor}}\"\nwhen = \"each\"\n")
}

/// The test and publish steps under faults: a failed test fails only its build (its image discarded, its
/// copy skipped), a refused publish fails its job at `publish` with the image kept, a lost answer is retried;
/// nothing leaks and the manifest is true.
#[test]
fn a_fault_in_the_test_or_publish_step_fails_only_its_job_and_leaves_nothing() {
    let cases = [
        ("{ action = \"test\", error = \"failed\", nth = 1, region = \"eu-central-1\" }", Some("test"), 8),
        ("{ action = \"PutParameter\", error = \"UnauthorizedOperation\", nth = 1 }", Some("publish"), 10),
        (
            "{ action = \"CreateLaunchTemplateVersion\", error = \"UnauthorizedOperation\", nth = 2 }",
            Some("publish"),
            10,
        ),
        ("{ action = \"PutParameter\", error = \"InternalError\", nth = 3, answer_lost = true }", None, 10),
    ];
    for (fault, stage, images) in cases {
        let workspace = Workspace::new();
        let run = run_sim_with(&workspace, &tested_and_published(&format!("faults = [{fault}]")), &["--no-preflight"]);
        assert_eq!(run.summary["sim"]["faults_injected"], 1, "{fault}");
        let failures = failures(&run.manifest);
        match stage {
            Some(stage) => {
                assert_eq!(run.outcome.code, 1, "{fault}: {}", run.outcome.stderr);
                let failed: Vec<_> = failures.iter().filter(|f| f.2 != "skipped").collect();
                assert_eq!(failed.len(), 1, "{fault}: {failures:?}");
                assert_eq!(failed[0].2, stage, "{fault}: {failures:?}");
            }
            None => assert_eq!(run.outcome.code, 0, "{fault}: {}", run.outcome.stderr),
        }
        let made = run.summary["sim"]["images"].as_array().unwrap();
        assert_eq!(made.len(), images, "{fault}: {made:?}");
        let artifacts: usize =
            run.manifest["artifacts"].as_object().unwrap().values().map(|r| r.as_object().unwrap().len()).sum();
        assert_eq!(artifacts, images, "{fault}: every image made is in the manifest");
        // Every image in the manifest was published, or its job says why not.
        let published = run.summary["sim"]["published"].as_array().unwrap();
        for (flavor, regions) in run.manifest["artifacts"].as_object().unwrap() {
            for (region, artifact) in regions.as_object().unwrap() {
                let image = artifact["image_id"].as_str().unwrap();
                let in_ssm = published.iter().any(|line| {
                    let line = line.as_str().unwrap();
                    line.starts_with(&format!("{region} ssm /images/simtest/{flavor} ")) && line.contains(image)
                });
                let refused = failures.iter().any(|f| &f.0 == flavor && &f.1 == region && f.2 == "publish");
                assert!(in_ssm || refused, "{fault}: {flavor}/{region} neither published nor failed: {published:?}");
            }
        }
        assert_manifest_is_true(&run, fault);
        assert_nothing_left(&run);
    }
}

/// The failures of `run` at `connect`: (flavor, region, error, hint).
fn connect_failures(run: &SimRun) -> Vec<(String, String, String, String)> {
    let failures = run.manifest["failures"].as_array().unwrap();
    failures
        .iter()
        .filter(|failure| failure["stage"] == "connect")
        .map(|failure| {
            let text = |key: &str| failure[key].as_str().unwrap_or_default().to_string();
            (text("flavor"), text("region"), text("error"), text("hint"))
        })
        .collect()
}

/// Someone else answering on an instance's address (`console = "other-key"`): its job fails at `connect` with
/// both fingerprints, before anything is sent; every other job is made; nothing is left.
#[test]
fn someone_else_answering_fails_only_that_job_at_connect_and_leaves_nothing() {
    let workspace = Workspace::new();
    let sim = "faults = [{ action = \"RunInstances\", region = \"eu-central-1\", console = \"other-key\", nth = 1 }]";
    let run = run_sim_with(&workspace, &fleet(sim, "max_parallel_builds = 1"), &["--no-preflight"]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failed = connect_failures(&run);
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (flavor, region, error, _) = &failed[0];
    assert_eq!((flavor.as_str(), region.as_str()), ("ubuntu", "eu-central-1"));
    assert!(error.contains("host key mismatch at ubuntu@198.51.100."), "{error}");
    let fingerprints = error.matches("SHA256:").count();
    assert_eq!(fingerprints, 2, "the offered and the expected: {error}");
    assert!(error.contains("someone else answered"), "{error}");
    assert!(!run.outcome.stderr.contains("ubuntu/eu-central-1: (sim) would run"), "nothing was run there");
    assert_eq!(run.manifest["artifacts"]["al2023"].as_object().unwrap().len(), 5);
    assert_nothing_left(&run);

    // Per flavor: every al2023 instance is answered by someone else; ubuntu's are not.
    let workspace = Workspace::new();
    let sim =
        "faults = [{ action = \"RunInstances\", console = \"other-key\", flavor = \"al2023\", probability = 1.0 }]";
    let run = run_sim(&workspace, &fleet(sim, ""));
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failed: Vec<String> = connect_failures(&run).into_iter().map(|failure| failure.0).collect();
    assert_eq!(failed, ["al2023", "al2023"]);
    assert_eq!(run.manifest["artifacts"]["ubuntu"].as_object().unwrap().len(), 5);
    assert_nothing_left(&run);
}

/// An image that prints no host keys (`console = "no-keys"`): its job fails at `connect` after
/// `[ssh] host_key_wait`, with the hint naming `host_key = "accept"`; with that set for the flavor, it builds.
#[test]
fn no_host_keys_fail_the_job_with_the_hint_unless_the_flavor_accepts_any() {
    let faults = "faults = [{ action = \"RunInstances\", console = \"no-keys\", probability = 1.0 }]";
    let workspace = Workspace::new();
    let fleet_text = fleet(faults, "").replace("[ssh]\n", "[ssh]\nhost_key_wait = \"3m\"\n");
    let run = run_sim(&workspace, &fleet_text);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failed = connect_failures(&run);
    assert_eq!(failed.len(), 4, "every build: {failed:?}");
    for (flavor, _, error, hint) in &failed {
        assert!(error.contains("no SSH host keys on the console of i-") && error.contains("within 3m"), "{error}");
        assert!(hint.contains(&format!("set `host_key = \"accept\"` for flavor `{flavor}`")), "{hint}");
    }
    assert_nothing_left(&run);

    // al2023's image prints none: that flavor accepts any host key; ubuntu's still fail.
    let workspace = Workspace::new();
    let accepting = fleet_text.replace("sim_provision = \"2m\"\n", "sim_provision = \"2m\"\nhost_key = \"accept\"\n");
    let run = run_sim(&workspace, &accepting);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failed: Vec<String> = connect_failures(&run).into_iter().map(|failure| failure.0).collect();
    assert_eq!(failed, ["ubuntu", "ubuntu"]);
    assert_eq!(run.manifest["artifacts"]["al2023"].as_object().unwrap().len(), 5);
    assert!(run.outcome.stderr.contains("al2023/us-west-2: accepting any host key"), "{}", run.outcome.stderr);
    assert_nothing_left(&run);
}

/// Host keys that reach the console after sshd answers (`[sim] console_keys`) hold the connect until they do:
/// the build is that much later, and still verified.
#[test]
fn host_keys_late_on_the_console_are_waited_for() {
    let on_time = run_sim(&Workspace::new(), &fleet("seed = 3", ""));
    let late = run_sim(&Workspace::new(), &fleet("seed = 3\nconsole_keys = \"2m\"", ""));
    for run in [&on_time, &late] {
        assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
        assert_nothing_left(run);
    }
    let makespan = |run: &SimRun| run.summary["makespan_seconds"].as_f64().unwrap();
    // 2 minutes after running, not 30 s: at least 90 s later, and at most a poll (15 s) more.
    let later = makespan(&late) - makespan(&on_time);
    assert!((90.0..=90.0 + 20.0).contains(&later), "{later} s later");
    assert!(late.outcome.stderr.contains("from its console: SHA256:"), "{}", late.outcome.stderr);
}

#[test]
fn a_bad_console_fault_or_host_key_setting_is_bad_input() {
    let workspace = Workspace::new();
    let faults = "faults = [{ action = \"CreateImage\", console = \"sometimes\", nth = 1 }, \
                  { action = \"RunInstances\", error = \"InternalError\", flavor = \"al2023\", nth = 1 }]";
    let text = fleet(faults, "").replace("[ssh]\n", "[ssh]\nhost_key = \"trust-me\"\n");
    let path = workspace.write("fleet.toml", &text);
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    for expected in [
        "`ssh.host_key`: `trust-me` is not one of `console`",
        "`sim.faults[0].action`: `console` goes with `RunInstances`",
        "`sim.faults[0].console`: `sometimes` is not one of `no-keys`",
        "`sim.faults[1].flavor`: goes with `console` or `agent` only",
    ] {
        assert!(outcome.stderr.contains(expected), "{expected}:\n{}", outcome.stderr);
    }
}

#[test]
fn a_bad_agent_fault_or_agent_online_is_bad_input() {
    let workspace = Workspace::new();
    let sim = "agent_online = \"soon\"\n\
               faults = [{ action = \"StartSession\", agent = \"never\", nth = 1 }, \
               { action = \"RunInstances\", agent = \"sometimes\", nth = 1 }, \
               { action = \"RunInstances\", agent = \"never\", console = \"no-keys\", nth = 1 }, \
               { action = \"RunInstances\", agent = \"never\", flavor = \"al 2023\", nth = 1 }]";
    let path = workspace.write("fleet.toml", &fleet(sim, ""));
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    for expected in [
        "fleet.toml:35:16: `sim.agent_online`: `soon` is not a duration",
        "fleet.toml:36:22: `sim.faults[0].action`: `agent` goes with `RunInstances`",
        "`sim.faults[1].agent`: `sometimes` is not `never`",
        "`sim.faults[2]`: set exactly one of `error`, `image_state`, `instance_state`, `console` and `agent`",
        "`sim.faults[3].flavor`: `al 2023` is not a valid flavor name",
    ] {
        assert!(outcome.stderr.contains(expected), "{expected}:\n{}", outcome.stderr);
    }
}

/// The simulated provisioners take simulated time, and a `provisioner_timeout` counts it: al2023 provisions for
/// 2 minutes, past its 1-minute limit, so both its builds fail at `provision` (their copies skipped) with the
/// limit named, and nothing is left; ubuntu, under the default 2 h, builds and lands in all 5 regions.
#[test]
fn a_provisioner_past_its_timeout_fails_its_build_in_simulated_time() {
    let workspace = Workspace::new();
    let text = fleet("", "").replace("sim_provision = \"2m\"", "sim_provision = \"2m\"\nprovisioner_timeout = \"1m\"");
    let run = run_sim(&workspace, &text);
    assert_eq!(run.outcome.code, 1, "{}", run.outcome.stderr);
    let failed_builds: Vec<_> = failures(&run.manifest).into_iter().filter(|f| f.2 != "skipped").collect();
    assert_eq!(
        failed_builds,
        [
            ("al2023".to_string(), "eu-central-1".to_string(), "provision".to_string(), None),
            ("al2023".to_string(), "us-west-2".to_string(), "provision".to_string(), None),
        ]
    );
    let errors: Vec<&str> = run.manifest["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|failure| failure["stage"] == "provision")
        .map(|failure| failure["error"].as_str().unwrap())
        .collect();
    assert!(errors.iter().all(|error| error.ends_with("did not finish within 1m (its `timeout`)")), "{errors:?}");
    assert_eq!(run.manifest["artifacts"]["ubuntu"].as_object().map(|regions| regions.len()), Some(5));
    assert_nothing_left(&run);
}

/// `fleet(sim, limits)` reached through Session Manager: `[ssh] interface = "session_manager"`, an instance
/// profile, and a stand-in `session-manager-plugin` (the simulated connection opens its sessions through the
/// model; the preflight asks the plugin its version).
fn session_manager_fleet(workspace: &Workspace, sim: &str, limits: &str) -> String {
    let plugin = workspace.write("session-manager-plugin", "#!/bin/sh\necho 1.2.707.0\n");
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fleet(sim, limits)
        .replace("ssh_username = \"ubuntu\"\n", "ssh_username = \"ubuntu\"\niam_instance_profile = \"ssm-agent\"\n")
        .replace(
            "[ssh]\nsource_cidrs = [\"203.0.113.5/32\"]\n",
            &format!("[ssh]\ninterface = \"session_manager\"\nsession_manager_plugin = \"{}\"\n", plugin.display()),
        )
}

/// The preflight runs too: it asks the stand-in plugin its version (a real process, timed on real time even
/// under the simulated run's paused clock).
const WITH_PREFLIGHT: &[&str] = &[];

fn sessions_started(run: &SimRun) -> u64 {
    run.summary["sim"]["sessions_started"].as_u64().unwrap()
}

/// Session Manager builds open no port (the model refuses a session to an instance whose group has an ingress
/// rule), wait for the agent (`agent_online` after running, not `ssh_ready`), end every session they open, and
/// leave nothing.
#[test]
fn session_manager_builds_open_no_port_wait_for_the_agent_and_end_every_session() {
    let mut makespans = Vec::new();
    for agent_online in ["90s", "5m"] {
        let workspace = Workspace::new();
        let text = session_manager_fleet(&workspace, &format!("agent_online = \"{agent_online}\""), "");
        let run = run_sim_with(&workspace, &text, WITH_PREFLIGHT);
        assert_eq!(run.outcome.code, 0, "{agent_online}: stderr:\n{}", run.outcome.stderr);
        assert_eq!(run.manifest["status"], "complete");
        assert_eq!(run.summary["jobs"]["succeeded"], 10);
        assert_eq!(run.summary["sim"]["ingress"], serde_json::json!([]), "no ingress rule at all");
        assert_eq!(sessions_started(&run), 4, "{agent_online}: one session per build");
        assert_nothing_left(&run);
        makespans.push(run.summary["makespan_seconds"].as_f64().unwrap());
    }
    // The agent 3.5 minutes later, the run about as much longer: each run sees its agent at most a poll (15 s)
    // after it is online.
    let later = makespans[1] - makespans[0];
    assert!((210.0 - 15.0..=210.0 + 15.0).contains(&later), "{later} s later: {makespans:?}");
}

/// An agent that never comes online (no profile, no endpoints): that build fails at `connect` once `[ssh]
/// timeout` has passed, with a hint naming the instance profile and the endpoints; its copies are skipped, the
/// other jobs finish, and nothing is left.
#[test]
fn an_agent_that_never_comes_online_fails_its_build_at_connect_within_the_ssh_timeout() {
    let workspace = Workspace::new();
    let sim = "faults = [{ action = \"RunInstances\", agent = \"never\", flavor = \"al2023\", nth = 1 }]";
    let text = session_manager_fleet(&workspace, sim, "").replace("[ssh]\n", "[ssh]\ntimeout = \"4m\"\n");
    let run = run_sim_with(&workspace, &text, WITH_PREFLIGHT);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failures = failures(&run.manifest);
    let (failed, skipped): (Vec<_>, Vec<_>) = failures.iter().partition(|failure| failure.2 != "skipped");
    assert_eq!(failed.len(), 1, "{failures:?}");
    assert_eq!((failed[0].0.as_str(), failed[0].2.as_str()), ("al2023", "connect"), "{failures:?}");
    let copies_of_that_build = if failed[0].1 == "us-west-2" { 2 } else { 1 };
    assert_eq!(skipped.len(), copies_of_that_build, "{failures:?}");
    let failure = &run.manifest["failures"].as_array().unwrap().iter().find(|f| f["stage"] == "connect").unwrap();
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("did not come online within 4m"), "{error}");
    let hint = failure["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("ssm-agent") && hint.contains("ssmmessages"), "{hint}");
    assert_eq!(run.summary["jobs"]["succeeded"].as_u64().unwrap(), 10 - 1 - copies_of_that_build as u64);
    assert_eq!(run.summary["sim"]["ingress"], serde_json::json!([]));
    assert_nothing_left(&run);
}

/// The Session Manager calls of a build, each failed once (one build at a time; ubuntu's build in eu-central-1
/// makes the first of each there): a refused DescribeInstanceInformation or StartSession fails only that build,
/// at `connect`, naming the code, and its copy is skipped; a refused TerminateSession is tried again by the
/// cleanup stack, and a refused DescribeSessions (as the connection closes) is asked again before the instance
/// is terminated, so the build succeeds. Nothing is left open, sessions included, and no rule was opened.
#[test]
fn a_fault_at_any_session_manager_call_fails_only_its_own_build_and_leaves_no_session() {
    // (action, the stage the build fails at, or none: it succeeds)
    let cases = [
        ("DescribeInstanceInformation", Some("connect")),
        ("StartSession", Some("connect")),
        ("TerminateSession", None),
        ("DescribeSessions", None),
    ];
    for (action, stage) in cases {
        let case = format!("{action} refused");
        let workspace = Workspace::new();
        let sim = format!(
            "faults = [{{ action = \"{action}\", region = \"eu-central-1\", error = \"UnauthorizedOperation\", nth = 1 }}]"
        );
        let text = session_manager_fleet(&workspace, &sim, "max_parallel_builds = 1");
        let run = run_sim_with(&workspace, &text, &["--no-preflight"]);
        assert_eq!(run.summary["sim"]["faults_injected"], 1, "{case}");
        assert_eq!(run.summary["sim"]["ingress"], serde_json::json!([]), "{case}");
        assert_nothing_left(&run);
        let failures = failures(&run.manifest);
        match stage {
            Some(stage) => {
                assert_eq!(run.outcome.code, 1, "{case}: stderr:\n{}", run.outcome.stderr);
                let (failed, skipped): (Vec<_>, Vec<_>) = failures.iter().partition(|failure| failure.2 != "skipped");
                assert_eq!(failed.len(), 1, "{case}: {failures:?}");
                assert_eq!((failed[0].0.as_str(), failed[0].1.as_str()), ("ubuntu", "eu-central-1"), "{case}");
                assert_eq!(failed[0].2, stage, "{case}: {failures:?}");
                assert_eq!(skipped.len(), 1, "{case}: its copy: {failures:?}");
                let error = run.manifest["failures"][0]["error"].as_str().unwrap().to_string();
                assert!(error.contains(&format!("{action} in eu-central-1: UnauthorizedOperation")), "{case}: {error}");
                assert_eq!(sessions_started(&run), 3, "{case}: the other three builds'");
            }
            None => {
                assert_eq!(run.outcome.code, 0, "{case}: stderr:\n{}", run.outcome.stderr);
                assert_eq!(failures, [], "{case}");
                assert_eq!(sessions_started(&run), 4, "{case}");
            }
        }
        assert_manifest_is_true(&run, &case);
    }
}

/// The same calls with their answer lost (they took effect; the client sees a retryable `InternalError` and
/// repeats them): DescribeInstanceInformation, DescribeSessions and TerminateSession change nothing twice
/// (TerminateSession is idempotent), and every job succeeds with nothing left. StartSession has no client token:
/// the session the lost answer opened has an id only that answer carried; fleetbake finds it by listing the
/// sessions still active to the build's instance (DescribeSessions) and ends it, so nothing is left open either.
#[test]
fn a_lost_answer_at_a_session_manager_call_is_retried() {
    for action in ["DescribeInstanceInformation", "StartSession", "TerminateSession", "DescribeSessions"] {
        let case = format!("{action}, answer lost");
        let workspace = Workspace::new();
        let sim = format!(
            "faults = [{{ action = \"{action}\", region = \"eu-central-1\", error = \"InternalError\", nth = 1, answer_lost = true }}]"
        );
        let text = session_manager_fleet(&workspace, &sim, "max_parallel_builds = 1");
        let run = run_sim_with(&workspace, &text, &["--no-preflight"]);
        assert_eq!(run.summary["sim"]["faults_injected"], 1, "{case}");
        assert_eq!(run.summary["retries"], 1, "{case}");
        assert_eq!(run.manifest["status"], "complete", "{case}");
        assert_eq!(run.summary["jobs"]["succeeded"], 10, "{case}");
        assert_manifest_is_true(&run, &case);
        assert_eq!(run.outcome.code, 0, "{case}: stderr:\n{}", run.outcome.stderr);
        let leaked: Vec<&str> =
            run.summary["leaked_resources"].as_array().unwrap().iter().map(|leak| leak.as_str().unwrap()).collect();
        assert_eq!(leaked, Vec::<&str>::new(), "{case}: the session the lost answer opened is ended too");
        let started = if action == "StartSession" { 5 } else { 4 };
        assert_eq!(sessions_started(&run), started, "{case}");
    }
}
