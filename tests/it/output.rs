//! What an instance prints cannot hang or hijack a run (docs/security.md, "Output from an instance"), on
//! moto and the real sshd: binary output is read to its end, a line without end comes in 64 KiB pieces,
//! terminal escapes are shown escaped in the plain lines (the `--events` JSON has the text), and a provisioner
//! or a test past its `timeout` fails its job with what it ran ended and its instance cleaned up.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header, read_manifest, AL2023};
use crate::operator::Pty;

/// Runs `fleetbake matrix` on `fleet` with `--events` to a file: the outcome and the events.
fn run_with_events(workspace: &Workspace, fleet: &str) -> (Outcome, Vec<Value>) {
    let fleet_path = workspace.write("fleet.toml", fleet);
    let events_path = workspace.path("events.jsonl");
    let outcome =
        workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--events", events_path.to_str().unwrap()]);
    let events = std::fs::read_to_string(&events_path)
        .expect("the events were written")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{line}: {error}")))
        .collect();
    (outcome, events)
}

/// The `line` of every `provisioner_output` event, in order.
fn output_lines(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|event| event["type"] == "provisioner_output")
        .map(|event| event["line"].as_str().expect("a line is text").to_string())
        .collect()
}

/// The issue's reproduction: 8 MB of random bytes, then `done`. The run used to wait forever (the reader took
/// the first invalid byte for the end, and the remote side blocked on a full pipe); now it completes, shows
/// `done`, and takes seconds.
#[test]
fn eight_megabytes_of_binary_output_are_read_to_the_end() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"binary\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"head -c 8000000 /dev/urandom\", \"echo\", \"echo done\"] }}]\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header(&moto, &sshd)
    );
    let started = Instant::now();
    let (outcome, events) = run_with_events(&workspace, &fleet);
    let took = started.elapsed();
    assert_eq!(outcome.code, 0, "{}", &outcome.stderr[outcome.stderr.len().saturating_sub(3000)..]);
    assert!(took < Duration::from_secs(90), "the run took {took:?}");
    assert!(outcome.stderr.contains("binary/us-west-2: done\n"), "`done` is shown");
    assert!(!outcome.stderr.contains('\u{1b}'), "no raw escape reached the plain lines");
    let lines = output_lines(&events);
    assert_eq!(lines.last().map(String::as_str), Some("done"));
    assert!(lines.iter().all(|line| line.len() <= 4 * 64 * 1024), "no line beyond the limit");
    // Every random byte is in the events, as text (invalid UTF-8 as U+FFFD).
    let characters: usize = lines.iter().map(|line| line.chars().count()).sum();
    assert!(characters > 7_000_000, "{characters} characters of output");
    eprintln!("8 MB of binary output: the run took {took:?}, {} output lines", lines.len());
}

/// A line of 200,000 bytes without a newline comes in pieces of 64 KiB (the last one shorter), the line after
/// it whole; a title escape, a screen clear and a bell are shown escaped in the plain lines, while the events
/// JSON carries the text itself.
#[test]
fn a_long_line_is_split_and_terminal_escapes_are_shown_escaped() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"noisy\"\nsource_ami = {AL2023}\n\
         provisioners = [\n\
           {{ type = \"shell\", inline = [\"head -c 200000 /dev/zero | tr '\\\\000' x\", \"echo\", \"echo after\"] }},\n\
           {{ type = \"shell\", inline = [\"printf '\\\\033]0;pwned\\\\007\\\\033[2J\\\\rcovered\\\\n'\"] }},\n\
         ]\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header(&moto, &sshd)
    );
    let (outcome, events) = run_with_events(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "{:?}", outcome.stderr);
    let lines = output_lines(&events);
    let lengths: Vec<usize> = lines.iter().map(String::len).collect();
    assert_eq!(lengths[..5], [65_536, 65_536, 65_536, 200_000 - 3 * 65_536, 5], "{lengths:?}");
    assert!(lines[..4].iter().all(|piece| piece.bytes().all(|byte| byte == b'x')));
    assert_eq!(lines[4], "after");

    // The events: the text as printed, escaped by JSON alone.
    assert_eq!(lines[5], "\u{1b}]0;pwned\u{7}\u{1b}[2J\rcovered");
    let raw_events = std::fs::read_to_string(workspace.path("events.jsonl")).unwrap();
    assert!(raw_events.contains(r#""line":"\u001b]0;pwned\u0007\u001b[2J\rcovered""#), "JSON escapes");
    // The plain lines: shown escaped, nothing a terminal would obey.
    assert!(outcome.stderr.contains(r"noisy/us-west-2: \x1b]0;pwned\x07\x1b[2J\rcovered"), "{:?}", outcome.stderr);
    let obeyed: Vec<char> = outcome.stderr.chars().filter(|c| c.is_control() && *c != '\n').collect();
    assert!(obeyed.is_empty(), "control characters in the plain lines: {obeyed:?}");
}

/// The pid a provisioner wrote to `name` in the markers folder, and whether it still runs.
fn still_running(workspace: &Workspace, name: &str) -> (u32, bool) {
    let path = workspace.markers.join(name);
    let pid: u32 = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        .trim()
        .parse()
        .unwrap();
    // A pid reused since would not be a `sleep`.
    let command = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    (pid, command.starts_with("sleep"))
}

/// A provisioner and a test that outlive their 3-second `timeout` fail their jobs at `provision` and `test`
/// with the limit in the message; what they ran on the instance is ended (their `sleep`s, bounded to 40 s
/// themselves so a failing test leaves nothing for long, are gone), and the instances, groups and key pairs
/// are removed.
#[test]
fn a_provisioner_or_a_test_past_its_timeout_fails_its_job_and_is_ended() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let markers = workspace.markers.display();
    let sleeper = |name: &str| format!("sleep 40 & echo $! > {markers}/{name}; wait");
    let fleet = format!(
        "{}\n\
         [[flavor]]\nname = \"slow\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo started\", \"{}\"], timeout = \"3s\" }}]\n\n\
         [[flavor]]\nname = \"slowtest\"\nsource_ami = {AL2023}\nprovisioner_timeout = \"3s\"\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo quick\"] }}]\n\
         tests = [{{ type = \"shell\", inline = [\"{}\"] }}]\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header(&moto, &sshd),
        sleeper("provisioner-sleep"),
        sleeper("test-sleep"),
    );
    let started = Instant::now();
    let (outcome, _events) = run_with_events(&workspace, &fleet);
    let took = started.elapsed();
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    assert!(took < Duration::from_secs(35), "the run took {took:?}: the sleeps were waited for");

    let manifest = read_manifest(&workspace);
    let failures = manifest["failures"].as_array().unwrap();
    let failure_of = |flavor: &str| failures.iter().find(|f| f["flavor"] == flavor).cloned().unwrap();
    let slow = failure_of("slow");
    assert_eq!(slow["stage"], "provision", "{slow}");
    assert_eq!(slow["error"], "provisioner 1 (shell inline, 2 lines) did not finish within 3s (its `timeout`)");
    let slowtest = failure_of("slowtest");
    assert_eq!(slowtest["stage"], "test", "{slowtest}");
    assert!(
        slowtest["error"].as_str().unwrap().starts_with("test 1 (shell inline, 1 lines) did not finish within 3s"),
        "{slowtest}"
    );
    assert!(outcome.stderr.contains("slow/us-west-2: failed at provision: provisioner 1"), "{}", outcome.stderr);

    for name in ["provisioner-sleep", "test-sleep"] {
        let (pid, running) = still_running(&workspace, name);
        assert!(!running, "the {name} ({pid}) still runs on the instance");
    }
    // The scripts the ended commands ran are removed too (the instance is this machine: its /tmp). Their shell
    // reports the end on a channel already closed: it once died of that SIGPIPE before removing them.
    let prefix = format!("fleetbake-{}-", manifest["run_id"].as_str().unwrap());
    let uploads: Vec<String> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    assert!(uploads.is_empty(), "uploaded files of the ended commands are left on the instance: {uploads:?}");
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert_nothing_temporary_left(&west, "us-west-2").await;
        let run_id = manifest["run_id"].as_str().unwrap();
        assert!(images_of_run(&west, run_id).await.is_empty(), "the image that failed its test is discarded");
    });
}

/// The live view (under a pseudo-terminal) shows the title escape and the screen clear escaped too: the
/// terminal receives no OSC, no clear and no bell from the instance.
#[test]
fn the_live_view_shows_terminal_escapes_escaped() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"noisy\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"printf '\\\\033]0;pwned\\\\007\\\\033[2J\\\\n'\"] }}]\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header(&moto, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let (code, screen) = Pty::start_with_env(&workspace, &["matrix", fleet_path.to_str().unwrap()], &[]).finish();
    assert_eq!(code, 0, "{screen:?}");
    assert!(screen.contains(r"noisy/us-west-2: \x1b]0;pwned\x07\x1b[2J"), "{screen:?}");
    assert!(!screen.contains("\u{1b}]"), "an OSC reached the terminal: {screen:?}");
    assert!(!screen.contains("\u{1b}[2J"), "a screen clear reached the terminal: {screen:?}");
    assert!(!screen.contains('\u{7}'), "a bell reached the terminal: {screen:?}");
}

/// fleetbake's peak resident memory (`VmHWM`) while `child` runs, read until it exits.
fn peak_memory_kib(child: &mut std::process::Child) -> u64 {
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Ok(text) = std::fs::read_to_string(&status) {
            let line = text.lines().find(|line| line.starts_with("VmHWM:")).unwrap_or_default();
            let kib = line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).unwrap_or(0);
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    peak
}

/// A line of 100 MB without a newline is read in pieces: fleetbake's peak memory stays far below the line's
/// size (measured: 38 MiB, as for a run printing nothing; 233 MiB when the line was collected whole).
#[test]
fn a_line_of_a_hundred_megabytes_is_read_in_bounded_memory() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"huge\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"head -c 100000000 /dev/zero | tr '\\\\000' x\", \"echo\"] }}]\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header(&moto, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let mut child = KillOnDrop(
        workspace
            .command(env!("CARGO_BIN_EXE_fleetbake"), TEST_CREDENTIALS)
            .args(["matrix", fleet_path.to_str().unwrap(), "-q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let peak = peak_memory_kib(&mut child.0);
    assert_eq!(child.0.wait().unwrap().code(), Some(0));
    assert_eq!(read_manifest(&workspace)["status"], "complete");
    assert!(peak > 0 && peak < 100 * 1024, "peak memory {peak} KiB for a 100 MB line");
    eprintln!("a 100 MB line: peak memory {peak} KiB");
}
