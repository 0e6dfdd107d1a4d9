//! What the docs promise of the command line that no other test checks: SIGTERM (once and twice),
//! `NO_COLOR` and colour, `--plain` on a terminal, `--packer-manifest PATH`, `--resume` with a new selection,
//! no publication made twice across a resume, and resuming a version-1 journal. On the simulated cloud where
//! EC2 does not matter, else through aws-sdk-ec2 / -ssm → moto (behind a recording proxy where requests are
//! counted) and openssh → sshd.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::Value;

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};
use crate::operator::{two_by_two_sim_fleet, Pty};
use crate::resume::{
    assert_nothing_temporary_left_anywhere, gated_fleet, image_ids, start_until, AT_THE_GATE, REGIONS,
};

/// [`two_by_two_sim_fleet`] named `cli`; `fleet` and `sim` lines appended to their tables. For `--cloud sim`.
fn sim_fleet(fleet: &str, sim: &str) -> String {
    two_by_two_sim_fleet("cli", fleet, sim)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The journal of `run_id` beside a fleet file named `fleet.toml`.
fn journal_path(workspace: &Workspace, run_id: &str) -> std::path::PathBuf {
    workspace.path(&format!(".fleetbake/fleet/{run_id}.jsonl"))
}

/// The flavors of the run's images in `region`, sorted (moto's state, by the run's tags).
fn flavors_of_run(moto: &Moto, region: &str, run_id: &str) -> Vec<String> {
    runtime().block_on(async {
        let images = images_of_run(&moto.client(region), run_id).await;
        let mut flavors: Vec<String> = images.iter().map(|image| image.tags["fleetbake:flavor"].clone()).collect();
        flavors.sort();
        flavors
    })
}

/// Removes the provisioner scripts run `run_id` uploaded to the test sshd (this machine) and that a run killed
/// mid-provisioning never got to remove (on EC2 they go with the instance).
fn remove_uploaded_scripts(run_id: &str) {
    let prefix = format!("fleetbake-{run_id}-");
    for entry in std::fs::read_dir("/tmp").unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// docs/reliability.md, "When a run dies": SIGTERM is handled as Ctrl-C is (nothing new starts, every build cleans up,
/// images already available stay in the manifest, written with status `partial`), and the exit code is 143.
#[test]
fn sigterm_cleans_up_as_sigint_does_writes_the_manifest_and_exits_143() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet_path = workspace.write("fleet.toml", &gated_fleet(&moto.endpoint, &sshd, &gate, ""));
    let events_path = workspace.path("events.jsonl");
    let args = ["matrix", fleet_path.to_str().unwrap(), "--events", events_path.to_str().unwrap()];
    let running = start_until(&workspace, &args, AT_THE_GATE);
    // `gated`'s instance, key pair, group and key file exist now: the cleanup has something to do.
    let west = moto.client("us-west-2");
    let live = runtime().block_on(instances(&west));
    assert_eq!(live.iter().filter(|(_, state)| state == "running").count(), 1, "{live:?}");
    let key_dirs = || std::fs::read_dir(workspace.path("tmp")).unwrap().count();
    assert_eq!(key_dirs(), 1, "gated's SSH key directory");
    running.signal("TERM");
    let seen = running.seen.clone();
    let (code, rest) = running.finish();
    // The provisioner loop on the (shared) test sshd ends now, not at its deadline.
    gate.open();
    assert_eq!(code, Some(143), "stderr:\n{seen}{rest}");

    // The account and this machine: `gated`'s build cleaned up, its key file removed, `quick`'s image kept.
    assert_nothing_temporary_left_anywhere(&moto);
    assert_eq!(key_dirs(), 0, "the key directory removed");
    let manifest = read_manifest(&workspace);
    let run_id = manifest["run_id"].as_str().unwrap();
    assert_eq!(flavors_of_run(&moto, "us-west-2", run_id), ["quick"]);
    // The manifest: its final state, written.
    assert_eq!(manifest["status"], "partial", "{manifest}");
    assert!(manifest["finished_at"].is_string(), "{manifest}");
    let quick = manifest["artifacts"]["quick"]["us-west-2"]["image_id"].as_str().unwrap();
    assert!(quick.starts_with("ami-"), "{manifest}");
    let failures = manifest["failures"].as_array().unwrap();
    let gated: Vec<&Value> = failures.iter().filter(|failure| failure["flavor"] == "gated").collect();
    assert_eq!(gated.len(), 2, "the build and its copy: {failures:?}");
    assert!(gated.iter().all(|failure| failure["stage"] == "interrupted"), "{failures:?}");
    // The events name the signal.
    let events: Vec<Value> = std::fs::read_to_string(&events_path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let interrupted: Vec<&Value> = events.iter().filter(|event| event["type"] == "interrupted").collect();
    assert_eq!(interrupted.len(), 1, "{events:?}");
    assert_eq!(interrupted[0]["signal"], "SIGTERM");
    assert_eq!(events.last().unwrap()["type"], "run_finished");
    assert!(rest.contains("==> SIGTERM: starting nothing new, cleaning up"), "{rest}");
}

/// Kills a process (SIGKILL) unless dropped within a time limit: a test of "exits at once" fails instead of
/// hanging when it does not.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn kill_after(pid: u32, limit: std::time::Duration) -> Watchdog {
        let done = Arc::new(AtomicBool::new(false));
        let finished = Arc::clone(&done);
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + limit;
            while std::time::Instant::now() < deadline {
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if !finished.load(Ordering::SeqCst) {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        });
        Watchdog(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// docs/getting-started.md, "Exit codes": 143 for SIGTERM "after cleaning up; a second signal exits at once". The proxy shows the
/// build's instance shutting down for ever (moto terminates at once), so the first SIGTERM's cleanup is still
/// waiting when the second comes: the process exits with 143, names what may be left and how to remove it,
/// and the manifest holds the run's last state.
#[test]
fn a_second_sigterm_exits_at_once_with_143_naming_what_may_be_left() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::answering(&moto.endpoint, "DescribeInstances", "Filter.1.Name=instance-id", || {
        Answer::Rewrite(|body| body.replace("<name>terminated</name>", "<name>shutting-down</name>"))
    });
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    // `gated` alone: every instance of the run stays shutting down.
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"gated\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo waiting for the gate\", \"{}\"] }}]\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header_at(&proxy.endpoint, &sshd),
        gate.wait_line()
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let mut running = start_until(&workspace, &["matrix", fleet_path.to_str().unwrap()], AT_THE_GATE);
    running.signal("TERM");
    running.read_until("cleaning up instance");
    // Cleanup is waiting for the instance to terminate.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let started = std::time::Instant::now();
    running.signal("TERM");
    let seen = running.seen.clone();
    let watchdog = Watchdog::kill_after(running.child.0.id(), std::time::Duration::from_secs(20));
    let (code, rest) = running.finish();
    drop(watchdog);
    gate.open();
    remove_uploaded_scripts(read_manifest(&workspace)["run_id"].as_str().unwrap());
    assert_eq!(code, Some(143), "stderr:\n{seen}{rest}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "at once: {:?}", started.elapsed());
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "partial", "{manifest}");
    assert!(manifest["finished_at"].is_string(), "the manifest's last state is written: {manifest}");
    // The security group was left (its instance never ended), and is named with the command that removes it.
    let groups = runtime().block_on(security_group_names(&moto.client("us-west-2")));
    let left: Vec<&String> = groups.iter().filter(|name| name.starts_with("fleetbake-")).collect();
    assert_eq!(left.len(), 1, "{groups:?}");
    assert!(rest.contains("exited without waiting for cleanup; these may be left in the account:"), "{rest}");
    for kind in ["instance i-", "security group sg-"] {
        assert!(rest.contains(&format!("  {kind}")), "{kind}: {rest}");
    }
    assert!(rest.contains(&format!("fleetbake gc {}", fleet_path.display())), "{rest}");
}

/// Bytes of an ANSI control sequence (CSI: colour, cursor movement, line clearing).
const CSI: &str = "\u{1b}[";

/// A sim fleet whose calls are throttled now and then: `-v` then logs the retries (debug lines).
fn throttled_sim_fleet() -> String {
    sim_fleet("", "faults = [{ action = \"*\", error = \"RequestLimitExceeded\", probability = 0.2 }]")
}

/// docs/getting-started.md, "Exit codes" / Output: "Logs carry no colour off a terminal, with `--plain` or `-q`, or
/// with `NO_COLOR`." The debug logs (`-v`) are the logs that could carry colour; on a terminal in the live view
/// without `NO_COLOR` they do (the control that shows this test can see colour at all).
#[test]
fn logs_carry_no_colour_off_a_terminal_or_with_no_color() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &throttled_sim_fleet());
    let args = ["-v", "matrix", fleet.to_str().unwrap(), "--cloud", "sim", "--plain"];
    let live = ["-v", "matrix", fleet.to_str().unwrap(), "--cloud", "sim"];
    let retry_lines = |text: &str| -> Vec<String> {
        text.lines().filter(|line| line.contains("retrying after")).map(str::to_string).collect()
    };

    // Off a terminal.
    let piped = workspace.fleetbake(&args);
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert!(!retry_lines(&piped.stderr).is_empty(), "debug logs of the retries: {}", piped.stderr);
    assert!(!piped.stderr.contains(CSI), "no colour off a terminal:\n{}", piped.stderr);

    // On a terminal, with NO_COLOR (any value).
    let (code, screen) = Pty::start_with_env(&workspace, &args, &[("NO_COLOR", "1")]).finish();
    assert_eq!(code, 0, "{screen}");
    assert!(!retry_lines(&screen).is_empty(), "debug logs of the retries: {screen}");
    assert!(!screen.contains(CSI), "no colour with NO_COLOR:\n{screen}");

    // On a terminal with `--plain`: each log line starts with its stamp, no colour code before it or in it.
    let (code, screen) = Pty::start_with_env(&workspace, &args, &[]).finish();
    assert_eq!(code, 0, "{screen}");
    let stamped = retry_lines(&screen);
    assert!(!stamped.is_empty(), "debug logs of the retries: {screen}");
    assert!(!screen.contains('\u{1b}'), "no escape at all with --plain:\n{screen}");
    for line in &stamped {
        let line = line.trim_start_matches('\r');
        let time = line.get(..20).and_then(|time| time.parse::<chrono::DateTime<chrono::Utc>>().ok());
        assert!(time.is_some(), "the stamp first: {line:?}");
    }

    // On a terminal in the live view without NO_COLOR: the same logs in colour.
    let (code, screen) = Pty::start_with_env(&workspace, &live, &[]).finish();
    assert_eq!(code, 0, "{screen}");
    let coloured = retry_lines(&screen);
    assert!(!coloured.is_empty(), "{screen}");
    assert!(coloured.iter().all(|line| line.contains(CSI)), "coloured on a terminal: {coloured:?}");
}

/// docs/getting-started.md: `--plain` gives "timestamped lines even on a terminal": under a pseudo-terminal, every line starts
/// with its UTC time and nothing is drawn or redrawn (no control sequence at all).
#[test]
fn plain_on_a_terminal_prints_timestamped_lines_and_no_live_view() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &sim_fleet("", ""));
    let (code, screen) =
        Pty::start_with_env(&workspace, &["matrix", fleet.to_str().unwrap(), "--cloud", "sim", "--plain"], &[])
            .finish();
    assert_eq!(code, 0, "{screen}");
    assert!(!screen.contains(CSI), "no cursor movement, line clearing or colour:\n{screen}");
    assert!(!screen.contains('\u{1b}'), "no escape at all:\n{screen}");
    let lines: Vec<&str> = screen
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.starts_with("simulated run:"))
        .collect();
    assert!(lines.len() > 20, "{screen}");
    for line in &lines {
        let time = line.get(..20).and_then(|time| time.parse::<chrono::DateTime<chrono::Utc>>().ok());
        assert!(time.is_some() && line.as_bytes()[20] == b' ', "no time: {line:?}");
    }
    assert!(screen.contains("Z ==> summary: 6 of 6 images, 0 failures"), "{screen}");
    assert!(!screen.contains("· copies "), "no live view header:\n{screen}");
}

/// Packer's `artifact_id` (`region:ami,region:ami`) as (region, image) pairs.
fn packer_artifacts(build: &Value) -> Vec<(String, String)> {
    let artifact_id = build["artifact_id"].as_str().unwrap();
    artifact_id
        .split(',')
        .map(|pair| {
            let (region, image) = pair.split_once(':').expect("region:ami");
            (region.to_string(), image.to_string())
        })
        .collect()
}

/// Asserts the Packer manifest at `path` holds exactly this run's images: one build per flavor of `manifest`,
/// each with every region's image of that flavor.
fn assert_packer_manifest_of(path: &Path, manifest: &Value) {
    let packer = read_json(path);
    let builds = packer["builds"].as_array().unwrap();
    let flavors = manifest["artifacts"].as_object().unwrap();
    assert_eq!(builds.len(), flavors.len(), "one build per flavor: {packer}");
    for build in builds {
        assert_eq!(build["builder_type"], "amazon-ebs");
        assert_eq!(build["custom_data"]["fleetbake_run_id"], manifest["run_id"]);
        let name = build["name"].as_str().unwrap();
        let regions = flavors[name].as_object().unwrap();
        let artifacts = packer_artifacts(build);
        assert_eq!(artifacts.len(), regions.len(), "{name}: {artifacts:?}");
        for (region, image) in artifacts {
            assert_eq!(regions[&region]["image_id"], image.as_str(), "{name} in {region}");
        }
    }
}

/// docs/manifest.md: `--packer-manifest PATH` "also writes the run as Packer's `manifest` post-processor does", at PATH,
/// with or without `[fleet] packer_manifest` (the flag wins over the key).
#[test]
fn packer_manifest_flag_writes_the_runs_images_at_its_path() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &sim_fleet("", ""));
    let flagged = workspace.path("from-flag.json");
    let outcome = workspace.fleetbake(&[
        "matrix",
        fleet.to_str().unwrap(),
        "--cloud",
        "sim",
        "--packer-manifest",
        flagged.to_str().unwrap(),
    ]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let manifest = read_json(&workspace.path("manifest.sim.json"));
    assert_eq!(manifest["artifacts"].as_object().unwrap().len(), 2, "{manifest}");
    assert_packer_manifest_of(&flagged, &manifest);

    // With the key set as well, the flag's path gets the run, the key's none.
    let keyed = workspace.write("keyed.toml", &sim_fleet("packer_manifest = \"from-key.json\"", ""));
    let second = workspace.path("second.json");
    let outcome = workspace.fleetbake(&[
        "matrix",
        keyed.to_str().unwrap(),
        "--cloud",
        "sim",
        "--packer-manifest",
        second.to_str().unwrap(),
    ]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let manifest = read_json(&workspace.path("manifest.sim.json"));
    assert_packer_manifest_of(&second, &manifest);
    for unwritten in ["from-key.json", "from-key.sim.json"] {
        assert!(!workspace.path(unwritten).exists(), "{unwritten} written though the flag names another path");
    }
}

/// docs/getting-started.md, "Selecting builds": "`--resume` takes the interrupted run's own selection (and refuses a new one)". A
/// resume given `--only` is bad input (exit 2) before any AWS call and leaves the journal as it was; without
/// it, the resume builds what the interrupted run selected and nothing else.
#[test]
fn resume_refuses_a_new_selection_before_any_aws_call_and_keeps_the_runs_own() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet_path = workspace.write("fleet.toml", &gated_fleet(&moto.endpoint, &sshd, &gate, ""));
    let fleet = fleet_path.to_str().unwrap();

    // Interrupted while `gated` provisions, in a run that left `quick` out.
    let running = start_until(&workspace, &["matrix", fleet, "--except", "quick"], AT_THE_GATE);
    running.signal("TERM");
    let (code, rest) = running.finish();
    gate.open();
    assert_eq!(code, Some(143), "{rest}");
    let run_id = read_manifest(&workspace)["run_id"].as_str().unwrap().to_string();
    let journal = journal_path(&workspace, &run_id);
    let journal_before = std::fs::read(&journal).unwrap();

    // A new selection, through a proxy that counts what is sent.
    let text = std::fs::read_to_string(&fleet_path).unwrap().replace(&moto.endpoint, &proxy.endpoint);
    std::fs::write(&fleet_path, text).unwrap();
    for selection in [["--only", "quick"], ["--except", "gated"], ["--only", "gated"]] {
        let refused = workspace.fleetbake(&["matrix", fleet, "--resume", selection[0], selection[1]]);
        assert_eq!(refused.code, 2, "{selection:?}: {}", refused.stderr);
        assert!(
            refused
                .stderr
                .contains("--resume makes the interrupted run's own selection; leave out --only and --except"),
            "{selection:?}: {}",
            refused.stderr
        );
    }
    assert_eq!(proxy.requests(), 0, "no AWS call: {:?}", proxy.actions());
    assert_eq!(std::fs::read(&journal).unwrap(), journal_before, "the journal untouched");

    // The run's own selection: `gated` finished, `quick` still not built.
    let resumed = workspace.fleetbake(&["matrix", fleet, "--resume"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(resumed.stderr.contains(&format!("resuming run {run_id} (attempt 2)")), "{}", resumed.stderr);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete", "{manifest}");
    assert!(manifest["artifacts"].get("quick").is_none(), "{manifest}");
    for region in REGIONS {
        assert_eq!(flavors_of_run(&moto, region, &run_id), ["gated"], "{region}");
    }
    assert!(proxy.bodies("RunInstances").iter().all(|body| !body.contains("quick")), "quick never launched");
    assert_nothing_temporary_left_anywhere(&moto);
}

/// The values of every version of SSM parameter `name` in `region`, oldest first.
fn parameter_history(moto: &Moto, region: &str, name: &str) -> Vec<String> {
    runtime().block_on(async {
        let history = moto.ssm(region).get_parameter_history().name(name).send().await;
        let history = history.unwrap_or_else(|error| panic!("{name} in {region}: {error:?}"));
        history.parameters().iter().map(|version| version.value().unwrap_or_default().to_string()).collect()
    })
}

/// How many versions launch template `name` has in `region`.
fn template_versions(moto: &Moto, region: &str, name: &str) -> usize {
    runtime().block_on(async {
        let found = moto.client(region).describe_launch_template_versions().launch_template_name(name).send().await;
        found.unwrap().launch_template_versions().len()
    })
}

/// Lets go of a request the proxy holds when dropped.
struct Release(Arc<AtomicBool>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// docs/nightly.md, "Publishing": "Each publication is journaled (a resumed run does not publish again what an earlier
/// attempt did)". The run is killed while it publishes its complete flavors at the end (the proxy holds `b`'s
/// first PutParameter): `a` is published, `b` not. The resume publishes `b` and never `a` again: counted in
/// the requests sent and in SSM's and EC2's versions.
#[test]
fn a_resumed_run_does_not_publish_again_what_an_earlier_attempt_published() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let hold = Arc::new(AtomicBool::new(true));
    let held = Arc::new(AtomicBool::new(false));
    let (holding, seen_held) = (Arc::clone(&hold), Arc::clone(&held));
    // However the test ends, the held request is let go.
    let release = Release(Arc::clone(&hold));
    let proxy = FaultProxy::start(&moto.endpoint, move |request| {
        if request.action == "PutParameter" && request.body.contains("/images/it/b") && holding.load(Ordering::SeqCst) {
            seen_held.store(true, Ordering::SeqCst);
            while holding.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            return Answer::Fail(Fault { status: 500, code: "InternalError", message: "the test killed the run" });
        }
        Answer::Forward
    });
    runtime().block_on(async {
        let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Small);
        for region in REGIONS {
            for name in ["a-nightly", "b-nightly"] {
                let create = moto.client(region).create_launch_template().launch_template_name(name);
                create.launch_template_data(data.clone().build()).send().await.unwrap();
            }
        }
    });
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"a\"\nsource_ami = {AL2023}\n\n[[flavor]]\nname = \"b\"\nsource_ami = {AL2023}\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n\n\
         [publish]\nssm_parameter = \"/images/{{fleet}}/{{flavor}}\"\nlaunch_template = \"{{flavor}}-nightly\"\n",
        fleet_header_at(&proxy.endpoint, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let fleet = fleet_path.to_str().unwrap();

    let mut running = Running::start(&workspace, &["matrix", fleet], &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !held.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "b was never published");
        assert!(running.child.0.try_wait().unwrap().is_none(), "the run ended before publishing b");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    running.child.0.kill().unwrap();
    running.child.0.wait().unwrap();
    drop(release);
    let for_a = |action: &str, name: &str| proxy.bodies(action).iter().filter(|body| body.contains(name)).count();
    assert_eq!(for_a("PutParameter", "/images/it/a"), 2, "a published in both regions before the kill");
    assert_eq!(for_a("CreateLaunchTemplateVersion", "a-nightly"), 2);
    let killed = read_manifest(&workspace);
    let run_id = killed["run_id"].as_str().unwrap().to_string();

    let resumed = workspace.fleetbake(&["matrix", fleet, "--resume"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(resumed.stderr.contains(&format!("resuming run {run_id} (attempt 2)")), "{}", resumed.stderr);
    assert_eq!(for_a("PutParameter", "/images/it/a"), 2, "a not published again");
    assert_eq!(for_a("CreateLaunchTemplateVersion", "a-nightly"), 2, "a's template not versioned again");
    assert_eq!(for_a("CreateLaunchTemplateVersion", "b-nightly"), 2, "b's templates, once each");
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete", "{manifest}");
    assert_eq!(manifest["run_id"], run_id.as_str());
    // The account: one version of each parameter per region, holding the run's image; one new template
    // version each.
    for (flavor, images) in [("a", image_ids(&manifest, "a")), ("b", image_ids(&manifest, "b"))] {
        for (region, image) in REGIONS.iter().zip(&images) {
            let versions = parameter_history(&moto, region, &format!("/images/it/{flavor}"));
            assert_eq!(versions, std::slice::from_ref(image), "{flavor} in {region}");
            assert_eq!(template_versions(&moto, region, &format!("{flavor}-nightly")), 2, "{flavor} in {region}");
            // The manifest keeps what each attempt published, once.
            let published = manifest["artifacts"][flavor][region]["published"].as_array();
            let published = published.unwrap_or_else(|| panic!("{flavor} in {region}: nothing published: {manifest}"));
            let kinds: Vec<(&str, i64)> =
                published.iter().map(|p| (p["kind"].as_str().unwrap(), p["version"].as_i64().unwrap())).collect();
            assert_eq!(kinds, [("ssm_parameter", 1), ("launch_template", 2)], "{flavor} in {region}: {published:?}");
        }
    }
    assert_nothing_temporary_left_anywhere(&moto);
}

/// docs/reliability.md, "The journal": "format version 2; version 1 journals still read". A killed run's journal, made a
/// version-1 one (the same records but for `image_discarded`, which it has none of), is resumed: the same run
/// id, `quick`'s images reused, `gated` built once, the killed attempt's leftovers removed.
#[test]
fn a_version_1_journal_is_resumed() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet_path = workspace.write("fleet.toml", &gated_fleet(&moto.endpoint, &sshd, &gate, ""));
    let fleet = fleet_path.to_str().unwrap();
    let mut running = start_until(&workspace, &["matrix", fleet], AT_THE_GATE);
    running.child.0.kill().unwrap();
    running.child.0.wait().unwrap();
    gate.open();
    let killed = read_manifest(&workspace);
    let run_id = killed["run_id"].as_str().unwrap().to_string();
    remove_uploaded_scripts(&run_id);
    let quick_images = image_ids(&killed, "quick");

    let journal = journal_path(&workspace, &run_id);
    let text = std::fs::read_to_string(&journal).unwrap();
    let (header, records) = text.split_once('\n').unwrap();
    let mut header: Value = serde_json::from_str(header).unwrap();
    assert_eq!(header["version"], 2);
    header["version"] = 1.into();
    assert!(!records.contains("\"record\":\"image_discarded\""), "{records}");
    assert!(records.contains("\"record\":\"created\""), "the killed build's resources: {records}");
    std::fs::write(&journal, format!("{header}\n{records}")).unwrap();

    let resumed = workspace.fleetbake(&["matrix", fleet, "--resume"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert!(resumed.stderr.contains(&format!("resuming run {run_id} (attempt 2)")), "{}", resumed.stderr);
    assert!(resumed.stderr.contains("removed instance i-"), "the killed attempt's instance: {}", resumed.stderr);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete", "{manifest}");
    assert_eq!(manifest["run_id"], run_id.as_str());
    assert_eq!(manifest["started_at"], killed["started_at"]);
    assert_eq!(image_ids(&manifest, "quick"), quick_images, "reused, not rebuilt");
    for region in REGIONS {
        assert_eq!(flavors_of_run(&moto, region, &run_id), ["gated", "quick"], "one image per flavor in {region}");
    }
    assert_nothing_temporary_left_anywhere(&moto);
    // It ended: the journal now says so.
    let again = workspace.fleetbake(&["matrix", fleet, "--resume"]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("nothing to resume"), "{}", again.stderr);
}
