//! `--keep-failed` on moto and the real sshd (docs/debugging.md "Keeping a failed build's instance"): a failed build's
//! instance stays (running, or stopped), tagged `fleetbake:keep-until` with its key pair and security group,
//! journaled as kept so the end-of-run sweep leaves it; its key is written 0600 in a 0700 folder and the
//! connection command it prints logs in to the same verified host; a successful build beside it keeps
//! nothing; `gc` leaves it before its time and removes all of it (and the key folder) after. In the simulated
//! cloud a kept instance is reported kept, not leaked.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header, read_manifest, AL2023};

/// A flavor whose provisioner fails (`broken`), and with `fine` one that builds, in one region.
fn fleet(moto: &Moto, sshd: &Sshd, matrix: &str, fine: bool) -> String {
    let fine = if fine {
        "[[flavor]]\nname = \"fine\"\nsource_ami = FINE_SOURCE\n\
         provisioners = [{ type = \"shell\", inline = [\"echo fine\"] }]\n\n"
            .replace("FINE_SOURCE", AL2023)
    } else {
        String::new()
    };
    format!(
        "{}\n{matrix}\n\
         [[flavor]]\nname = \"broken\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo about to fail\", \"exit 3\"] }}]\n\n\
         {fine}[regions]\nus-west-2 = []\n",
        fleet_header(moto, sshd)
    )
}

/// The tags of a resource, by id (DescribeTags).
async fn tags_of(client: &Client, id: &str) -> BTreeMap<String, String> {
    let output =
        client.describe_tags().filters(Filter::builder().name("resource-id").values(id).build()).send().await.unwrap();
    output.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string())).collect()
}

/// The instances not terminated, with their states.
async fn alive(client: &Client) -> Vec<(String, String)> {
    instances(client).await.into_iter().filter(|(_, state)| state != "terminated").collect()
}

/// Id → tags of the fleetbake key pairs, and of the fleetbake security groups.
async fn key_pairs_and_groups(client: &Client) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let pairs = client.describe_key_pairs().send().await.unwrap();
    let pairs = pairs
        .key_pairs()
        .iter()
        .filter(|pair| pair.key_name().unwrap_or_default().starts_with("fleetbake-"))
        .map(|pair| (pair.key_name().unwrap().to_string(), pair.key_pair_id().unwrap().to_string()))
        .collect();
    let groups = client.describe_security_groups().send().await.unwrap();
    let groups = groups
        .security_groups()
        .iter()
        .filter(|group| group.group_name().unwrap_or_default().starts_with("fleetbake-"))
        .map(|group| (group.group_name().unwrap().to_string(), group.group_id().unwrap().to_string()))
        .collect();
    (pairs, groups)
}

/// The login folder of `instance` the run wrote.
fn kept_folder(workspace: &Workspace, run_id: &str, instance: &str) -> PathBuf {
    workspace.path(&format!(".fleetbake/fleet/{run_id}/kept/{instance}"))
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|error| panic!("{}: {error}", path.display())).permissions().mode() & 0o777
}

/// A failing provisioner with `--keep-failed 1h`: its instance runs on, tagged, with its key pair and group;
/// the fine build beside it leaves nothing; the run says what is kept and how to log in, and that command
/// reaches the instance's sshd with the verified host key; the manifest's failure lists it; `gc` (and its dry
/// run) leaves it, saying until when.
#[test]
fn a_failed_build_keeps_its_instance_running_and_gc_leaves_it_before_its_time() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &fleet(&moto, &sshd, "", true));
    let fleet_file = fleet_path.to_str().unwrap();
    let run = workspace.fleetbake(&["matrix", fleet_file, "--keep-failed", "1h"]);
    assert_ne!(run.code, 0, "a build failed: {}", run.stderr);

    let client = moto.client("us-west-2");
    let manifest = read_manifest(&workspace);
    let run_id = manifest["run_id"].as_str().unwrap().to_string();
    let runtime = runtime();
    let left = runtime.block_on(alive(&client));
    assert_eq!(left.len(), 1, "the kept instance and nothing else: {left:?}\n{}", run.stderr);
    let (instance, state) = &left[0];
    assert_eq!(state, "running");
    let instance_tags = runtime.block_on(tags_of(&client, instance));
    assert_eq!(instance_tags["fleetbake:flavor"], "broken");
    let until = instance_tags.get("fleetbake:keep-until").expect("the instance is tagged keep-until").clone();
    let parsed = chrono::DateTime::parse_from_rfc3339(&until).expect("RFC 3339");
    let ahead = parsed.signed_duration_since(chrono::Utc::now()).num_minutes();
    assert!((55..=60).contains(&ahead), "kept an hour: {until}");

    // Its key pair and group stay, tagged; the fine build's went (the sweep left the kept ones).
    let (pairs, groups) = runtime.block_on(key_pairs_and_groups(&client));
    assert_eq!(pairs.keys().collect::<Vec<_>>(), [&format!("fleetbake-{run_id}-broken")], "{pairs:?}");
    assert_eq!(groups.keys().collect::<Vec<_>>(), [&format!("fleetbake-{run_id}-broken")], "{groups:?}");
    for id in pairs.values().chain(groups.values()) {
        assert_eq!(runtime.block_on(tags_of(&client, id)).get("fleetbake:keep-until"), Some(&until), "{id}");
    }

    // The run says it, with the command; the summary counts it; the manifest's failure lists it.
    assert!(run.stderr.contains(&format!("broken/us-west-2: instance {instance}")), "{}", run.stderr);
    assert!(run.stderr.contains("kept: 1 failed build instances until"), "{}", run.stderr);
    let failure = &manifest["failures"][0];
    assert_eq!(failure["flavor"], "broken");
    assert_eq!(failure["stage"], "provision");
    assert_eq!(failure["kept"]["instance"], instance.as_str());
    assert_eq!(failure["kept"]["until"], until.as_str());
    assert_eq!(failure["kept"]["state"], "running");
    assert!(manifest["artifacts"]["fine"]["us-west-2"]["image_id"].is_string(), "{manifest}");

    // The key, 0600 in a 0700 folder, with the verified host key beside it.
    let folder = kept_folder(&workspace, &run_id, instance);
    assert_eq!(mode(&folder), 0o700);
    assert_eq!(mode(&folder.join("key")), 0o600);
    let known_hosts = std::fs::read_to_string(folder.join("known_hosts")).unwrap();
    assert!(known_hosts.contains(test_host_key().public.as_str()), "{known_hosts}");
    let command = failure["kept"]["connect"].as_str().expect("a connection command").to_string();
    assert!(command.starts_with("ssh -i "), "{command}");
    assert!(command.contains("-o StrictHostKeyChecking=yes") && command.contains(&format!("-p {}", sshd.port)));
    assert!(run.stderr.contains(&format!("log in: {command}")), "{}", run.stderr);
    // The command as printed reaches the instance (the local sshd) and checks its key strictly.
    let login = Command::new("timeout")
        .args(["30", "sh", "-c", &format!("{command} echo logged-in-to-the-kept-instance")])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&login.stdout).contains("logged-in-to-the-kept-instance"),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );

    // gc before the time: left, and said so; the dry run says the same.
    for dry_run in [true, false] {
        let args: Vec<&str> = if dry_run { vec!["gc", fleet_file, "--dry-run"] } else { vec!["gc", fleet_file] };
        let gc = workspace.fleetbake(&args);
        assert_eq!(gc.code, 0, "{}", gc.stderr);
        assert!(
            gc.stdout.contains(&format!("left instance {instance} in us-west-2 (run {run_id}): kept until {until}")),
            "{}",
            gc.stdout
        );
        assert!(!gc.stdout.contains("key folder"), "{}", gc.stdout);
    }
    assert_eq!(runtime.block_on(alive(&client)).len(), 1, "gc left the kept instance");
    let (pairs, groups) = runtime.block_on(key_pairs_and_groups(&client));
    assert_eq!((pairs.len(), groups.len()), (1, 1));
    assert!(folder.join("key").exists());
}

/// `keep_failed = "15s"` with `keep_failed_state = "stopped"`: the instance is stopped; once the time is past,
/// `gc` terminates it, deletes its group and key pair, and removes the key folder. (The run's own sweep leaves it
/// even when its time passes before the run ends.)
#[test]
fn a_stopped_kept_instance_is_removed_by_gc_once_its_time_is_past() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let matrix = "[matrix]\nkeep_failed = \"15s\"\nkeep_failed_state = \"stopped\"\n";
    let fleet_path = workspace.write("fleet.toml", &fleet(&moto, &sshd, matrix, false));
    let fleet_file = fleet_path.to_str().unwrap();
    let run = workspace.fleetbake(&["matrix", fleet_file]);
    assert_ne!(run.code, 0, "a build failed: {}", run.stderr);

    let client = moto.client("us-west-2");
    let run_id = read_manifest(&workspace)["run_id"].as_str().unwrap().to_string();
    let runtime = runtime();
    let left = runtime.block_on(alive(&client));
    assert_eq!(left.len(), 1, "{left:?}\n{}", run.stderr);
    let (instance, state) = left[0].clone();
    assert_eq!(state, "stopped", "keep_failed_state = \"stopped\"");
    let folder = kept_folder(&workspace, &run_id, &instance);
    assert!(folder.join("key").exists());

    // Past the time its tag names (a wait, not a measurement).
    let until = runtime.block_on(tags_of(&client, &instance))["fleetbake:keep-until"].clone();
    let until = chrono::DateTime::parse_from_rfc3339(&until).unwrap().to_utc();
    while chrono::Utc::now() <= until {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let dry = workspace.fleetbake(&["gc", fleet_file, "--dry-run"]);
    assert!(dry.stdout.contains(&format!("would remove instance {instance}")), "{}", dry.stdout);
    assert!(dry.stdout.contains("would remove the login key folder"), "{}", dry.stdout);
    assert!(folder.exists(), "a dry run removes nothing");
    let gc = workspace.fleetbake(&["gc", fleet_file]);
    assert_eq!(gc.code, 0, "{}\n{}", gc.stdout, gc.stderr);
    assert!(gc.stdout.contains(&format!("removed instance {instance}")), "{}", gc.stdout);
    runtime.block_on(assert_nothing_temporary_left(&client, "us-west-2"));
    assert!(!folder.exists(), "the key folder went with the instance");
}

/// The simulated cloud keeps the same way: a failed test keeps its test instance (with its key pair and
/// group), which the leak report lists as kept until its time, not leaked; no key is written for a simulated
/// run, and the manifest's failure says so. (Kept 24h: the simulated night, one build at a time, outlasts an hour,
/// and the report would then say `(past: gc removes it)`.)
#[test]
fn a_simulated_failed_test_keeps_its_instance_and_it_is_no_leak() {
    let workspace = Workspace::new();
    let fault = "faults = [{ action = \"test\", error = \"failed\", nth = 1, region = \"eu-central-1\" }]";
    let fleet = format!("{}\n[matrix]\nkeep_failed = \"24h\"\n", crate::sim::tested_and_published(fault));
    let run = crate::sim::run_sim_with(&workspace, &fleet, &["--no-preflight"]);
    assert_eq!(run.outcome.code, 1, "{}", run.outcome.stderr);
    assert_eq!(run.summary["leaked_resources"], serde_json::json!([]), "{}", run.outcome.stderr);
    let kept: Vec<&str> = run.summary["sim"]["kept_resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", run.outcome.stderr))
        .iter()
        .map(|line| line.as_str().unwrap())
        .collect();
    assert_eq!(kept.len(), 3, "the test instance, its key pair and group: {kept:?}");
    assert!(kept.iter().any(|line| line.starts_with("instance i-") && line.contains("(Running)")), "{kept:?}");
    assert!(kept.iter().any(|line| line.starts_with("key pair fleetbake-") && line.contains("-test ")), "{kept:?}");
    let failure = run.manifest["failures"]
        .as_array()
        .unwrap()
        .iter()
        .find(|failure| failure["stage"] == "test")
        .expect("the test failed");
    assert!(failure["kept"]["instance"].as_str().unwrap().starts_with("i-"), "{failure}");
    assert_eq!(failure["kept"]["no_login"], "no key is written for a simulated run");
    assert!(run.outcome.stderr.contains("kept: 1 failed build instances until"), "{}", run.outcome.stderr);
}
