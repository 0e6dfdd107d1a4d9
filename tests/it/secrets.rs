//! "No private key or provisioner `env` value is ever logged" (docs/getting-started.md, "Exit codes"). A real run (aws-sdk-ec2 → moto,
//! openssh → sshd) with `-v`, `--events`, `--summary-json` and `--packer-manifest`, and then everything it wrote
//! scanned: stdout, stderr, and every file it left in the workspace (the manifest, the Packer manifest, the
//! events, the summary, the journal). The needles are the env values and every line of the private key EC2
//! returned (captured from CreateKeyPair's answer as it passes the proxy), and `PRIVATE KEY`.
//!
//! What docs/security.md promises about provisioner output: it is shown (streamed as `flavor/region: line`, and as
//! `provisioner_output` events). So a provisioner that prints its own env value has that line shown, and
//! fleetbake repeats it nowhere else: not in the failure, the manifest, the journal or the summary.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};

/// Every CreateKeyPair answer the proxies of this file have passed on (the tests run in parallel: each finds
/// its own by key name).
static KEY_PAIR_ANSWERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A proxy rewrite that changes nothing and keeps a copy of the answer.
fn keep_key_pair_answer(body: String) -> String {
    KEY_PAIR_ANSWERS.lock().unwrap().push(body.clone());
    body
}

/// A proxy in front of moto that keeps every CreateKeyPair answer.
fn key_capturing_proxy(moto: &Moto) -> FaultProxy {
    FaultProxy::start(&moto.endpoint, |request| {
        if request.action == "CreateKeyPair" {
            Answer::Rewrite(keep_key_pair_answer)
        } else {
            Answer::Forward
        }
    })
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

/// The private keys EC2 returned for key pairs whose name ends `-{flavor}`.
fn private_keys_of(flavor: &str) -> Vec<String> {
    let answers = KEY_PAIR_ANSWERS.lock().unwrap();
    answers
        .iter()
        .filter(|answer| {
            between(answer, "<keyName>", "</keyName>").is_some_and(|name| name.ends_with(&format!("-{flavor}")))
        })
        .map(|answer| between(answer, "<keyMaterial>", "</keyMaterial>").expect("key material").to_string())
        .collect()
}

/// The needles for `keys`: `PRIVATE KEY` and every line of each key's body.
fn key_needles(keys: &[String]) -> Vec<(String, String)> {
    let mut needles = vec![("a PEM armour line".to_string(), "PRIVATE KEY".to_string())];
    for key in keys {
        let body: Vec<&str> =
            key.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with("-----")).collect();
        assert!(body.len() >= 10, "an RSA key's body: {key}");
        for (number, line) in body.iter().enumerate() {
            assert!(line.len() >= 32, "long enough not to match by chance: {line}");
            needles.push((format!("line {} of the private key", number + 1), line.to_string()));
        }
    }
    needles
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// What fleetbake wrote into `workspace` (everything but the inputs the test wrote and the provisioners'
/// markers), by path relative to it, with its text.
pub(crate) fn written_files(workspace: &Workspace, inputs: &[&str]) -> Vec<(String, String)> {
    let root = workspace.dir.path();
    files_under(root)
        .into_iter()
        .filter(|path| !path.starts_with(&workspace.markers))
        .map(|path| path.strip_prefix(root).unwrap().display().to_string())
        .filter(|relative| !inputs.iter().any(|input| relative == input || relative.starts_with(&format!("{input}/"))))
        .map(|relative| {
            let text = String::from_utf8_lossy(&std::fs::read(workspace.path(&relative)).unwrap()).into_owned();
            (relative, text)
        })
        .collect()
}

/// Where each needle occurs in each haystack: `(haystack, what the needle is)`.
pub(crate) fn findings(haystacks: &[(String, String)], needles: &[(String, String)]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (place, text) in haystacks {
        for (what, needle) in needles {
            if text.contains(needle.as_str()) {
                found.push((place.clone(), what.clone()));
            }
        }
    }
    found
}

/// The outputs every scanned run writes, relative to the workspace.
const OUTPUTS: [&str; 4] = ["out/manifest.json", "out/packer-manifest.json", "out/events.jsonl", "out/summary.json"];

/// Runs `fleetbake -v matrix` on `fleet` with every output on, its TMPDIR inside the workspace (left empty).
fn run_with_every_output(workspace: &Workspace, fleet: &str) -> Outcome {
    let fleet_path = workspace.write("fleet.toml", fleet);
    let tmp = workspace.tmp();
    std::fs::create_dir(workspace.path("out")).unwrap();
    let [_, packer, events, summary] = OUTPUTS.map(|relative| workspace.path(relative).display().to_string());
    let outcome = workspace.fleetbake_with_env(
        &[
            "-v",
            "matrix",
            fleet_path.to_str().unwrap(),
            "--events",
            &events,
            "--summary-json",
            &summary,
            "--packer-manifest",
            &packer,
        ],
        &[("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")],
    );
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "the private key's directory is removed");
    outcome
}

/// The haystacks of a run: its stdout and stderr and every file it wrote, which include each of [`OUTPUTS`]
/// and a journal.
fn haystacks(workspace: &Workspace, outcome: &Outcome, inputs: &[&str]) -> Vec<(String, String)> {
    let written = written_files(workspace, inputs);
    let names: Vec<&str> = written.iter().map(|(name, _)| name.as_str()).collect();
    for output in OUTPUTS {
        assert!(names.contains(&output), "{output} was written: {names:?}");
    }
    assert!(names.iter().any(|name| name.starts_with(".fleetbake/fleet/") && name.ends_with(".jsonl")), "{names:?}");
    let mut haystacks =
        vec![("stdout".to_string(), outcome.stdout.clone()), ("stderr".to_string(), outcome.stderr.clone())];
    haystacks.extend(written);
    haystacks
}

/// A successful build and copy whose script and inline provisioners both get a secret `env` value (and prove
/// it by writing it into a marker): neither value nor any line of the private key is in anything it wrote.
#[test]
fn no_private_key_or_env_value_is_in_anything_a_run_writes() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = key_capturing_proxy(&moto);
    let workspace = Workspace::new();
    let token = format!("fb-secret-token-{:016x}", fastrand::u64(..));
    let password = format!("fb-secret-password-{:016x}", fastrand::u64(..));
    let markers = workspace.markers.display();
    workspace.write(
        "scripts/use-token.sh",
        &format!(
            "#!/bin/sh\nset -e\nprintf '%s' \"$API_TOKEN\" > {markers}/token.$FLEETBAKE_REGION\necho token received\n"
        ),
    );
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"sealed\"\nsource_ami = {AL2023}\nprovisioners = [\n\
         {{ type = \"shell\", script = \"scripts/use-token.sh\", env = {{ API_TOKEN = \"{token}\" }} }},\n\
         {{ type = \"shell\", inline = [\"printf '%s' \\\"$DB_PASSWORD\\\" > {markers}/password.$FLEETBAKE_REGION\"], env = {{ DB_PASSWORD = \"{password}\" }} }},\n\
         ]\n\n[regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let outcome = run_with_every_output(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("sealed/us-west-2: token received"), "{}", outcome.stderr);
    // The values were in play: the provisioners saw them.
    assert_eq!(std::fs::read_to_string(workspace.markers.join("token.us-west-2")).unwrap(), token);
    assert_eq!(std::fs::read_to_string(workspace.markers.join("password.us-west-2")).unwrap(), password);
    assert_eq!(read_manifest(&workspace)["status"], "complete");

    let keys = private_keys_of("sealed");
    assert_eq!(keys.len(), 1, "one build, one key pair");
    let mut needles = key_needles(&keys);
    needles.push(("the API_TOKEN env value".to_string(), token));
    needles.push(("the DB_PASSWORD env value".to_string(), password));
    let found = findings(&haystacks(&workspace, &outcome, &["fleet.toml", "scripts", "tmp"]), &needles);
    assert!(found.is_empty(), "secrets written: {found:?}");
}

/// A provisioner that prints one of its env values and fails: that line is shown, as provisioner output
/// (stderr and a `provisioner_output` event), and nowhere else; the value it does not print, nowhere at all.
#[test]
fn a_provisioner_that_prints_its_env_value_has_that_line_shown_and_repeated_nowhere() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = key_capturing_proxy(&moto);
    let workspace = Workspace::new();
    let shown = format!("fb-shown-{:016x}", fastrand::u64(..));
    let hidden = format!("fb-hidden-{:016x}", fastrand::u64(..));
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"leaky\"\nsource_ami = {AL2023}\nprovisioners = [\n\
         {{ type = \"shell\", inline = [\"echo \\\"token is $SHOWN\\\"\", \"exit 4\"], env = {{ SHOWN = \"{shown}\", HIDDEN = \"{hidden}\" }} }},\n\
         ]\n\n[regions]\nus-west-2 = []\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let outcome = run_with_every_output(&workspace, &fleet);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["stage"], "provision");
    assert!(failures[0]["error"].as_str().unwrap().contains("exited with status 4"), "{}", failures[0]);

    // Shown: as the provisioner's output line, and only as that.
    let output_line = format!("leaky/us-west-2: token is {shown}");
    let on_stderr: Vec<&str> = outcome.stderr.lines().filter(|line| line.contains(&shown)).collect();
    assert!(!on_stderr.is_empty(), "the output is shown: {}", outcome.stderr);
    assert!(on_stderr.iter().all(|line| line.ends_with(&output_line)), "only as its output line: {on_stderr:?}");
    let events = std::fs::read_to_string(workspace.path("out/events.jsonl")).unwrap();
    let in_events: Vec<serde_json::Value> =
        events.lines().filter(|line| line.contains(&shown)).map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(in_events.len(), 1, "one output event: {events}");
    assert_eq!(in_events[0]["type"], "provisioner_output");
    assert_eq!(in_events[0]["line"], format!("token is {shown}"));

    // Nowhere else: the manifest, the journal, the summary, the Packer manifest, stdout.
    let elsewhere: Vec<(String, String)> = haystacks(&workspace, &outcome, &["fleet.toml", "tmp"])
        .into_iter()
        .filter(|(place, _)| place != "stderr" && place != "out/events.jsonl")
        .collect();
    let found = findings(&elsewhere, &[("the printed env value".to_string(), shown)]);
    assert!(found.is_empty(), "repeated by fleetbake: {found:?}");

    // The value it did not print, and the private key: nowhere at all.
    let keys = private_keys_of("leaky");
    assert_eq!(keys.len(), 1, "one build, one key pair");
    let mut needles = key_needles(&keys);
    needles.push(("the HIDDEN env value".to_string(), hidden));
    let found = findings(&haystacks(&workspace, &outcome, &["fleet.toml", "tmp"]), &needles);
    assert!(found.is_empty(), "secrets written: {found:?}");
}

/// What a [`CommandLineWatch`] saw: how many times it read every process's command line, in how many of those
/// reads a provisioner of the run was running, and each command line that held the needle.
pub(crate) struct Watched {
    pub samples: usize,
    pub samples_with_provisioner: usize,
    pub with_needle: Vec<String>,
}

/// Reads every process's command line (`/proc/*/cmdline`: what `ps -eo args` shows) every few milliseconds until
/// stopped. The test sshd is this machine, so it sees both sides: the local `ssh … -- command` and, on the
/// "instance", the `sh -c` sshd starts and whatever the provisioner runs.
pub(crate) struct CommandLineWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Watched>,
}

impl CommandLineWatch {
    pub(crate) fn start(needle: String, provisioner_marker: &'static str) -> CommandLineWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut watched = Watched { samples: 0, samples_with_provisioner: 0, with_needle: Vec::new() };
            // A deadline of its own: a test that fails before stopping it does not leave it running.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let mut provisioner_seen = false;
                for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                    let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    provisioner_seen |= line.contains(provisioner_marker);
                    if line.contains(&needle) {
                        watched.with_needle.push(line);
                    }
                }
                watched.samples += 1;
                watched.samples_with_provisioner += usize::from(provisioner_seen);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            watched
        });
        CommandLineWatch { stop, thread }
    }

    pub(crate) fn stop(self) -> Watched {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Issue 21's reproduction: a provisioner `env` value was in `ps` 38 times during a 4-second provisioner. Now
/// every process's command line is read throughout a run whose provisioner sleeps 3 seconds (locally: the ssh
/// client's `-- command`; on the instance: sshd's `sh -c` and the script): none holds the value, while the
/// provisioner proves it had it (it writes the value's SHA-256), as does the image's test after it. A `file`
/// provisioner's new destination is created owner-only (`umask 077`).
#[test]
fn no_env_value_is_on_any_command_line_while_a_provisioner_runs() {
    use sha2::Digest;
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let token = format!("fb-argv-token-{:016x}", fastrand::u64(..));
    let markers = workspace.markers.display();
    let uploaded = workspace.write("payload.txt", "payload\n");
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"watched\"\nsource_ami = {AL2023}\nprovisioners = [\n\
         {{ type = \"file\", source = \"{}\", destination = \"{markers}/uploaded.txt\" }},\n\
         {{ type = \"shell\", inline = [\"printf '%s' \\\"$ARGV_TOKEN\\\" | sha256sum | cut -d' ' -f1 > {markers}/token.sha256\", \"sleep 3\"], env = {{ ARGV_TOKEN = \"{token}\" }} }},\n\
         ]\n\
         tests = [{{ type = \"shell\", inline = [\"printf '%s' \\\"$ARGV_TOKEN\\\" | sha256sum | cut -d' ' -f1 > {markers}/test-token.sha256\", \"sleep 1\"], env = {{ ARGV_TOKEN = \"{token}\" }} }}]\n\
         \n[regions]\nus-west-2 = []\n",
        fleet_header_at(&moto.endpoint, &sshd),
        uploaded.display(),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let watch = CommandLineWatch::start(token.clone(), "/tmp/fleetbake-");
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    let watched = watch.stop();
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);

    let expected = format!("{:x}", sha2::Sha256::digest(token.as_bytes()));
    let seen = std::fs::read_to_string(workspace.markers.join("token.sha256")).unwrap();
    assert_eq!(seen.trim(), expected, "the provisioner had the value in its environment");
    let tested = std::fs::read_to_string(workspace.markers.join("test-token.sha256")).unwrap();
    assert_eq!(tested.trim(), expected, "and so had the image's test");
    // The build's and the test instance's connections each removed their directory as they closed.
    assert_eq!(std::fs::read_dir(workspace.tmp()).unwrap().count(), 0, "no connection directory is left");
    // The watch was looking while the provisioner ran (3 s of sleep: hundreds of samples).
    assert!(
        watched.samples_with_provisioner >= 50,
        "{} of {} samples saw the provisioner",
        watched.samples_with_provisioner,
        watched.samples
    );
    let distinct: std::collections::BTreeSet<&String> = watched.with_needle.iter().collect();
    assert!(
        watched.with_needle.is_empty(),
        "the value was on {} command lines ({} distinct), e.g. {:?}",
        watched.with_needle.len(),
        distinct.len(),
        distinct.iter().take(2).collect::<Vec<_>>()
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(workspace.markers.join("uploaded.txt")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "an upload is created under umask 077");
}

/// Held by each test that uses [`KEYS_USER`]'s `authorized_keys`: one at a time.
static KEYS_USER_HOME: Mutex<()> = Mutex::new(());

/// [`KEYS_USER`]'s `~/.ssh/authorized_keys` (as root: the tests run as root), and its lines.
fn keys_user_authorized_keys() -> PathBuf {
    PathBuf::from(format!("/home/{KEYS_USER}/.ssh/authorized_keys"))
}

/// Writes `lines` as [`KEYS_USER`]'s `authorized_keys` (0600, theirs), as an image's other users would have them.
fn reset_authorized_keys(lines: &str) {
    use std::os::unix::fs::PermissionsExt;
    let keys = keys_user_authorized_keys();
    std::fs::create_dir_all(keys.parent().unwrap()).unwrap();
    std::fs::write(&keys, lines).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o600)).unwrap();
    let status = std::process::Command::new("chown").args(["-R", KEYS_USER]).arg(keys.parent().unwrap()).status();
    assert!(status.unwrap().success());
}

/// Issue 21's reproduction: nothing removed the build key from `authorized_keys`, so every image trusted it.
/// On an sshd whose `authorized_keys` is real (the first login appends the build's key, as cloud-init would),
/// the build removes exactly that line before the instance stops: the other lines stay, in order, with the
/// file's mode; with `[ssh] clear_authorized_keys = false` the line stays.
#[test]
fn the_build_key_is_removed_from_authorized_keys_before_the_image_and_other_lines_are_kept() {
    use std::os::unix::fs::PermissionsExt;
    let _home = KEYS_USER_HOME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let moto = Moto::start();
    let sshd = Sshd::start_writing_authorized_keys();
    let workspace = Workspace::new();
    let others = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFLEETBAKEOTHER1 alice@laptop\n\
                  ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQFLEETBAKEOTHER2 deploy\n";
    reset_authorized_keys(others);
    let header = fleet_header_at(&moto.endpoint, &sshd)
        .replace(&format!("ssh_username = \"{SSH_USER}\""), &format!("ssh_username = \"{KEYS_USER}\""));
    let fleet = format!(
        "{header}\n[[flavor]]\nname = \"keyless\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"grep -c '' ~/.ssh/authorized_keys\"] }}]\n\n\
         [regions]\nus-west-2 = []\n"
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    // The provisioner saw the build key's line added to the two.
    assert!(outcome.stderr.contains("keyless/us-west-2: 3"), "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("removed the build key from `~/.ssh/authorized_keys` (1 line; 2 other kept)"),
        "{}",
        outcome.stderr
    );
    let keys = keys_user_authorized_keys();
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), others, "exactly the build key's line is gone");
    assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(read_manifest(&workspace)["status"], "complete");

    // `false`: the line is left (and nothing says it was removed).
    reset_authorized_keys(others);
    let kept = fleet.replace("[ssh]\n", "[ssh]\nclear_authorized_keys = false\n");
    workspace.write("fleet.toml", &kept);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert!(!outcome.stderr.contains("removed the build key"), "{}", outcome.stderr);
    let left = std::fs::read_to_string(&keys).unwrap();
    assert_eq!(left.lines().count(), 3, "{left}");
    assert!(left.starts_with(others) && left.ends_with("fleetbake-test-ec2-key\n"), "{left}");
}

/// A build whose key cannot be removed (the user cannot write beside its `authorized_keys`: `~/.ssh` is
/// root's) fails at `stop`, and no image is made from the instance that still trusts the key.
#[test]
fn a_build_key_that_cannot_be_removed_fails_the_job_at_stop_and_no_image_is_made() {
    let _home = KEYS_USER_HOME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let moto = Moto::start();
    let sshd = Sshd::start_writing_authorized_keys();
    let workspace = Workspace::new();
    reset_authorized_keys("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFLEETBAKEOTHER1 alice@laptop\n");
    let ssh_dir = keys_user_authorized_keys().parent().unwrap().to_path_buf();
    /// Gives `~/.ssh` back to its user however the test ends.
    struct GiveBack(PathBuf);
    impl Drop for GiveBack {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chown").args(["-R", KEYS_USER]).arg(&self.0).status();
        }
    }
    let _give_back = GiveBack(ssh_dir.clone());
    let status = std::process::Command::new("chown").args(["root"]).arg(&ssh_dir).status();
    assert!(status.unwrap().success());

    let header = fleet_header_at(&moto.endpoint, &sshd)
        .replace(&format!("ssh_username = \"{SSH_USER}\""), &format!("ssh_username = \"{KEYS_USER}\""));
    let fleet = format!(
        "{header}\n[[flavor]]\nname = \"stuck\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"true\"] }}]\n\n[regions]\nus-west-2 = []\n"
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["stage"], "stop", "{}", failures[0]);
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("cannot remove the build key from `~/.ssh/authorized_keys`"), "{error}");
    let run_id = manifest["run_id"].as_str().unwrap().to_string();
    let images =
        runtime().block_on(async { crate::cloud_state::images_of_run(&moto.client("us-west-2"), &run_id).await });
    assert!(images.is_empty(), "no image made: {images:?}");
    let keys = std::fs::read_to_string(keys_user_authorized_keys()).unwrap();
    assert_eq!(keys.lines().count(), 2, "the key is still there, on an instance that was not imaged: {keys}");
}

/// The command lines of the ssh processes naming a path in `dir`: its control master (`-M`), and a client per
/// session in progress.
fn ssh_processes_naming(dir: &Path) -> Vec<String> {
    let needle = format!("{}/", dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|line| line.starts_with("ssh ") && line.contains(&needle))
        .collect()
}

/// Issue 21's reproduction: after `kill -9`, the ssh control master stayed logged in to the instance and the
/// key's directory stayed in `$TMPDIR`. While the build provisions, its key file is already gone (the master is
/// logged in, for a bounded idle time); after the kill the master and the directory outlive the process; the
/// next run ends the master, removes the directory, and says so with the killed run's id.
#[test]
fn the_next_run_ends_the_ssh_master_and_removes_the_key_directory_a_killed_run_left() {
    use crate::resume::{gated_fleet, start_until, AT_THE_GATE};
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet_path = workspace.write("fleet.toml", &gated_fleet(&moto.endpoint, &sshd, &gate, ""));
    let running = start_until(&workspace, &["matrix", fleet_path.to_str().unwrap()], AT_THE_GATE);

    let dirs: Vec<PathBuf> = std::fs::read_dir(workspace.tmp()).unwrap().map(|entry| entry.unwrap().path()).collect();
    let [dir] = &dirs[..] else { panic!("one connection directory: {dirs:?}") };
    assert!(!dir.join("key").exists(), "the key file is gone once the master is logged in");
    let owner = std::fs::read_to_string(dir.join("owner")).unwrap();
    let run_id = owner.lines().find_map(|line| line.strip_prefix("run=")).unwrap().to_string();
    let masters = |dir: &Path| ssh_processes_naming(dir).into_iter().filter(|line| line.contains(" -M ")).count();
    assert_eq!(masters(dir), 1, "its control master: {:?}", ssh_processes_naming(dir));
    // Logged in for a bounded idle time, not forever (`ControlPersist=yes`).
    let master = ssh_processes_naming(dir).into_iter().find(|line| line.contains(" -M ")).unwrap();
    assert!(master.contains(" ControlPersist=120s "), "{master}");

    let Running { mut child, .. } = running;
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    assert!(dir.exists(), "a killed run cleans nothing up");
    assert_eq!(masters(dir), 1, "the master outlives the killed run");
    gate.open();

    std::thread::sleep(std::time::Duration::from_millis(1100));
    let next = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(next.code, 0, "stderr:\n{}", next.stderr);
    let said = format!("ended 1 ssh master and removed 1 key directory left by run {run_id}");
    assert!(next.stderr.contains(&said), "{said}:\n{}", next.stderr);
    assert!(!dir.exists(), "{}", dir.display());
    assert!(ssh_processes_naming(dir).is_empty(), "{:?}", ssh_processes_naming(dir));
    assert_eq!(std::fs::read_dir(workspace.tmp()).unwrap().count(), 0, "nothing of either run is left");
}
