//! A failed build saves what explains it (docs/debugging.md "What a failed build saves"), on moto and the real sshd: the
//! `on_failure` provisioners' output and the `collect`ed files in the run's logs folder (0700 folders, 0600
//! files, bytes as received, a sensitive value masked), listed in the manifest's failure, the events and the
//! plain line; capped, nothing shown with a terminal escape; then `gc` removes them past `[retention] logs`.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header, read_manifest, AL2023};

/// What the failing provisioner writes and `collect` names, and the sensitive value given from outside.
const SECRET: &str = "s3cr3t-f0r3ns1cs-value";
/// A file past the 4 MiB cap of one saved file.
const HUGE_BYTES: usize = 5_000_000;
const FILE_CAP: usize = 4 * 1024 * 1024;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn files_in(folder: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(folder)
        .unwrap_or_else(|error| panic!("{}: {error}", folder.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn a_failed_provisioner_or_test_saves_its_on_failure_output_and_collected_files() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let markers = workspace.markers.display().to_string();
    let fleet = format!(
        "{header}\n\
         [variables]\ntoken = {{ sensitive = true }}\n\n\
         [[flavor]]\nname = \"broken\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\
           \"echo 'the service refused to start' > {markers}/broken.log\", \
           \"head -c {HUGE_BYTES} /dev/zero | tr '\\\\000' z > {markers}/huge.log\", \
           \"exit 3\"] }}]\n\
         on_failure = [{{ type = \"shell\", inline = [\
           \"echo forensics-of-$FLEETBAKE_FLAVOR\", \
           \"printf '\\\\033]0;pwned\\\\007\\\\033[2Jcleared\\\\n'\", \
           \"echo token=$TOKEN\"], env = {{ TOKEN = \"{{var.token}}\" }} }}]\n\
         collect = [\"{markers}/broken.log\", \"{markers}/huge.log\", \"{markers}/never-written.log\"]\n\n\
         [[flavor]]\nname = \"untested\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo fine\"] }}]\n\
         tests = [{{ type = \"shell\", inline = [\"echo 'the test saw nothing listening' > {markers}/test.log\", \"exit 4\"] }}]\n\
         on_failure = [{{ type = \"shell\", inline = [\"echo test-forensics $FLEETBAKE_FLAVOR\"] }}]\n\
         collect = [\"{markers}/test.log\"]\n\n\
         [regions]\nus-west-2 = []\n",
        header = fleet_header(&moto, &sshd),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let events_path = workspace.path("events.jsonl");
    let env = [TEST_CREDENTIALS, &[("FLEETBAKE_VAR_token", SECRET)]].concat();
    let fleetbake = |args: &[&str]| workspace.fleetbake_with_env(args, &env);
    let outcome = fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--events", events_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    assert!(workspace.path("out/manifest.json").exists(), "{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let run_id = manifest["run_id"].as_str().unwrap().to_string();
    let logs = workspace.path(&format!(".fleetbake/fleet/{run_id}/logs"));

    // Saved: one file per on_failure provisioner and per collected file, in 0700 folders, 0600 files.
    let broken = logs.join("broken/us-west-2");
    let files = files_in(&broken);
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "two collected (one never written), one output: {names:?}");
    assert!(names[0].starts_with("collect-1-") && names[0].ends_with("_markers_broken.log"), "{names:?}");
    assert!(names[1].starts_with("collect-2-") && names[2] == "on_failure-1.log", "{names:?}");
    assert!(names.iter().all(|name| !name.contains("..") && !name.contains('/')));
    for folder in [&broken, &logs.join("broken"), &logs, &logs.parent().unwrap().to_path_buf()] {
        assert_eq!(mode(folder), 0o700, "{}", folder.display());
    }
    for file in &files {
        assert_eq!(mode(file), 0o600, "{}", file.display());
    }
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), "the service refused to start\n");
    let huge = std::fs::read(&files[1]).unwrap();
    assert_eq!(huge.len(), FILE_CAP, "a file past the cap is cut to it");
    assert!(huge.iter().all(|&byte| byte == b'z'));
    // The output as printed (the escapes kept: it is a file), the sensitive value masked.
    let output = std::fs::read(&files[2]).unwrap();
    let expected: &[u8] = b"forensics-of-broken\n\x1b]0;pwned\x07\x1b[2Jcleared\ntoken=<sensitive>\n";
    assert_eq!(String::from_utf8_lossy(&output), String::from_utf8_lossy(expected));

    // A failed test saves too.
    let untested = files_in(&logs.join("untested/us-west-2"));
    assert_eq!(untested.len(), 2, "{untested:?}");
    assert_eq!(std::fs::read_to_string(&untested[0]).unwrap(), "the test saw nothing listening\n");
    assert_eq!(std::fs::read_to_string(&untested[1]).unwrap(), "test-forensics untested\n");

    // Listed: the manifest's failure, the job_failed event, the plain line.
    let failures = manifest["failures"].as_array().unwrap();
    let failure_of = |flavor: &str| failures.iter().find(|f| f["flavor"] == flavor).cloned().unwrap();
    let listed = |failure: &Value| -> Vec<PathBuf> {
        failure["logs"].as_array().unwrap().iter().map(|path| PathBuf::from(path.as_str().unwrap())).collect()
    };
    let broken_failure = failure_of("broken");
    assert_eq!(broken_failure["stage"], "provision");
    assert_eq!(listed(&broken_failure), [files[2].clone(), files[0].clone(), files[1].clone()]);
    let untested_failure = failure_of("untested");
    assert_eq!(untested_failure["stage"], "test");
    assert_eq!(listed(&untested_failure).len(), 2);
    let events: Vec<Value> = std::fs::read_to_string(&events_path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let failed_event = events.iter().find(|e| e["type"] == "job_failed" && e["flavor"] == "broken").unwrap();
    assert_eq!(failed_event["logs"], broken_failure["logs"]);
    let details: Vec<&str> = events.iter().filter_map(|e| e["detail"].as_str()).collect();
    let saved = details.iter().find(|d| d.starts_with("on failure: saved 3 files in")).expect("an event names them");
    assert!(saved.contains("on_failure-1.log") && saved.contains(&names[0]), "{saved}");
    assert!(details.iter().any(|d| d.contains("cut at 4194304 bytes")), "{details:?}");
    assert!(details.iter().any(|d| d.contains("never-written.log") && d.contains("no such file")), "{details:?}");
    assert!(
        outcome.stderr.contains(&format!("    logs: 3 files saved in `{}`", broken.display())),
        "{}",
        outcome.stderr
    );

    // Nothing leaks: no escape on the terminal or in an event, no secret anywhere the run wrote.
    assert!(!outcome.stderr.contains('\u{1b}') && !outcome.stdout.contains('\u{1b}'));
    let events_text = std::fs::read_to_string(&events_path).unwrap();
    assert!(!events_text.contains("\\u001b") && !events_text.contains("pwned"), "no instance output in an event");
    for text in [&outcome.stderr, &outcome.stdout, &events_text] {
        assert!(!text.contains(SECRET));
    }
    for file in files.iter().chain(&untested) {
        assert!(!String::from_utf8_lossy(&std::fs::read(file).unwrap()).contains(SECRET), "{}", file.display());
    }
    runtime().block_on(async {
        assert_nothing_temporary_left(&moto.client("us-west-2"), "us-west-2").await;
    });

    // gc: logs kept within `[retention] logs`, removed past it (a dry run only says so).
    let kept = fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(kept.code, 0, "{}", kept.stderr);
    assert!(logs.exists() && !kept.stdout.contains("the logs of run"), "{}", kept.stdout);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    workspace.write("fleet.toml", &format!("{fleet}\n[retention]\nlogs = \"1s\"\n"));
    let dry = fleetbake(&["gc", "--dry-run", fleet_path.to_str().unwrap()]);
    assert!(dry.stdout.contains(&format!("would remove the logs of run {run_id} started")), "{}", dry.stdout);
    assert!(logs.exists());
    let removed = fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert!(removed.stdout.contains(&format!("removed the logs of run {run_id}")), "{}", removed.stdout);
    assert!(!logs.exists());
}

/// On the simulated cloud: a `provision` fault fails a build's first provisioner, and the on-failure phase
/// saves a simulated line per `on_failure` provisioner and per collected file, listed like a real one's; the
/// run leaves nothing in the model.
#[test]
fn a_failing_simulated_provisioner_saves_simulated_logs() {
    let workspace = Workspace::new();
    let fleet = "[fleet]\nname = \"simfx\"\nami_name = \"{flavor}-{run_id}\"\n\n\
         [[flavor]]\nname = \"web\"\nsource_ami = { owners = [\"amazon\"], name = \"al2023-ami-2023.*-kernel-6.1-x86_64\" }\ninstance_type = \"t3.small\"\nssh_username = \"ec2-user\"\n\
         provisioners = [{ type = \"shell\", inline = [\"make\"] }]\n\
         on_failure = [{ type = \"shell\", inline = [\"journalctl -b --no-pager\"] }]\n\
         collect = [\"/var/log/cloud-init-output.log\"]\n\n\
         [regions]\nus-west-2 = []\n\n\
         [ssh]\nsource_cidrs = [\"203.0.113.5/32\"]\n\n\
         [sim]\nfaults = [{ action = \"provision\", error = \"failed\", nth = 1 }]\n";
    let run = crate::sim::run_sim_with(&workspace, fleet, &[]);
    assert_eq!(run.outcome.code, 1, "{}", run.outcome.stderr);
    assert_eq!(run.summary["leaked_resources"], serde_json::json!([]), "{}", run.outcome.stderr);
    let failure = &run.manifest["failures"][0];
    assert_eq!(failure["stage"], "provision", "{failure}");
    let listed: Vec<PathBuf> =
        failure["logs"].as_array().unwrap().iter().map(|path| PathBuf::from(path.as_str().unwrap())).collect();
    assert_eq!(listed.len(), 2, "{failure}");
    let run_id = run.manifest["run_id"].as_str().unwrap();
    let folder = workspace.path(&format!(".fleetbake/fleet/{run_id}/logs/web/us-west-2"));
    assert_eq!(listed[0], folder.join("on_failure-1.log"));
    assert_eq!(listed[1], folder.join("collect-1-var_log_cloud-init-output.log"));
    let output = std::fs::read_to_string(&listed[0]).unwrap();
    assert_eq!(output, "(sim) would run on_failure provisioner 1: shell inline, 1 lines\n");
    let collected = std::fs::read_to_string(&listed[1]).unwrap();
    assert_eq!(collected, "(sim) the contents of /var/log/cloud-init-output.log on the simulated instance\n");
    assert!(run.outcome.stderr.contains("    logs: 2 files saved in"), "{}", run.outcome.stderr);
}
