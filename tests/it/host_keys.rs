//! Verified host keys on moto + a real sshd: the instance's keys come from its console (the harness's proxy
//! puts the test sshd's key there, as cloud-init would print it), ssh checks them strictly, someone else
//! answering fails the job at `connect` with both fingerprints, and a console without keys fails it with the
//! hint to `host_key = "accept"`, which still works.

use std::time::{Duration, Instant};

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};

/// `SHA256:…` of a public key (`ssh-ed25519 AAAA…`), as `ssh-keygen -l` prints it.
fn fingerprint(public_key: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pub");
    std::fs::write(&path, format!("{public_key}\n")).unwrap();
    let output = std::process::Command::new("ssh-keygen").arg("-lf").arg(&path).output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().split_whitespace().nth(1).unwrap().to_string()
}

/// One flavor, `base`, in us-west-2, with EC2 at `endpoint`, SSH to `sshd`; `flavor_extra` and `ssh_extra`
/// added to its `[[flavor]]` and `[ssh]`.
fn fleet(endpoint: &str, sshd: &Sshd, ssh_extra: &str, flavor_extra: &str) -> String {
    let header = fleet_header_at(endpoint, sshd)
        .replace("source_cidrs = [\"127.0.0.1/32\"]\n", &format!("source_cidrs = [\"127.0.0.1/32\"]\n{ssh_extra}"));
    format!(
        "{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n{flavor_extra}\
         provisioners = [{{ type = \"shell\", inline = [\"echo provisioned over a verified channel\"] }}]\n\n\
         [regions]\nus-west-2 = []\n"
    )
}

/// Runs `fleetbake matrix` on `fleet` with `HOME` in the workspace; returns the outcome and how long it took.
fn run(workspace: &Workspace, fleet: &str) -> (Outcome, Duration) {
    let path = workspace.write("fleet.toml", fleet);
    let home = workspace.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let started = Instant::now();
    let mut env = TEST_CREDENTIALS.to_vec();
    let home = home.to_str().unwrap().to_string();
    env.push(("HOME", &home));
    let outcome = workspace.fleetbake_with_env(&["matrix", path.to_str().unwrap()], &env);
    (outcome, started.elapsed())
}

/// What the run left: every instance terminated, no key pair or group; and no known_hosts learned anywhere.
fn assert_nothing_left(moto: &Moto, workspace: &Workspace) {
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert_eq!(instances(&west).await.len(), 1, "one instance launched");
        assert_nothing_temporary_left(&west, "us-west-2").await;
    });
    assert!(!workspace.path("home/.ssh").exists(), "nothing written to the user's ~/.ssh");
    let left: Vec<_> = std::fs::read_dir(workspace.tmp()).unwrap().collect();
    assert!(left.is_empty(), "the connection's private directory (and its known_hosts) is gone: {left:?}");
}

#[test]
fn a_build_checks_the_host_key_its_instance_printed_on_the_console() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let (outcome, _) = run(&workspace, &fleet(&moto.endpoint, &sshd, "", ""));
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let expected = format!("from its console: {} (ED25519)", fingerprint(&sshd.host_key));
    assert!(outcome.stderr.contains(&expected), "{expected}:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("base/us-west-2: provisioned over a verified channel"), "{}", outcome.stderr);
    assert!(!workspace.path("home/.ssh").exists(), "nothing written to the user's ~/.ssh");
}

#[test]
fn someone_else_answering_fails_the_job_at_connect_with_both_fingerprints_and_nothing_left() {
    let moto = Moto::start();
    // The console (through the harness's proxy) lists the test host key; this sshd has another.
    let impostor = Sshd::start_with_own_host_key();
    let workspace = Workspace::new();
    let (outcome, took) = run(&workspace, &fleet(&moto.endpoint, &impostor, "", ""));
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let failure = &manifest["failures"][0];
    assert_eq!(failure["stage"], "connect", "{failure}");
    let error = failure["error"].as_str().unwrap();
    let (offered, expected) = (fingerprint(&impostor.host_key), fingerprint(&test_host_key().public));
    assert!(error.contains(&format!("the server offered {offered}")), "{error}");
    assert!(error.contains(&format!("the instance's console lists {expected} (ED25519)")), "{error}");
    assert!(error.contains("someone else answered"), "{error}");
    assert!(!outcome.stderr.contains("provisioned over a verified channel"), "{}", outcome.stderr);
    // Refused at once, not retried until `[ssh] timeout` (60 s).
    assert!(took < Duration::from_secs(40), "took {took:?}");
    assert_nothing_left(&moto, &workspace);
}

/// A proxy in front of moto itself: consoles as moto has them, without host keys.
fn keyless(moto: &Moto) -> FaultProxy {
    FaultProxy::recording(&moto.moto_endpoint)
}

#[test]
fn no_host_keys_on_the_console_in_time_fails_the_job_with_the_accept_hint() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = keyless(&moto);
    let workspace = Workspace::new();
    let (outcome, took) = run(&workspace, &fleet(&proxy.endpoint, &sshd, "host_key_wait = \"5s\"\n", ""));
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let failure = &manifest["failures"][0];
    assert_eq!(failure["stage"], "connect", "{failure}");
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("no SSH host keys on the console of i-"), "{error}");
    assert!(error.contains("within 5s"), "{error}");
    let hint = failure["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("host_key = \"accept\"") && hint.contains("flavor `base`"), "{failure}");
    assert!(outcome.stderr.contains("hint: if the image prints no host keys"), "{}", outcome.stderr);
    // It read the console more than once (the keys may come late), with `Latest`, within the wait.
    let reads = proxy.bodies("GetConsoleOutput");
    assert!(reads.len() >= 2, "{reads:?}");
    assert!(reads.iter().all(|body| body.contains("Latest=true")), "{reads:?}");
    assert!(took < Duration::from_secs(40), "took {took:?}");
    // Never connected: nothing was sent to whoever answers there.
    assert!(!outcome.stderr.contains("provisioned over a verified channel"), "{}", outcome.stderr);
    assert_nothing_left(&moto, &workspace);
}

#[test]
fn host_key_accept_connects_without_keys_on_the_console() {
    let moto = Moto::start();
    let sshd = Sshd::start_with_own_host_key();
    let proxy = keyless(&moto);
    let workspace = Workspace::new();
    let fleet = fleet(&proxy.endpoint, &sshd, "host_key_wait = \"5s\"\n", "host_key = \"accept\"\n");
    let (outcome, _) = run(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("provisioned over a verified channel"), "{}", outcome.stderr);
    assert!(outcome.stderr.contains("accepting any host key"), "{}", outcome.stderr);
    assert!(proxy.bodies("GetConsoleOutput").is_empty(), "the console is not read");
    assert!(!workspace.path("home/.ssh").exists(), "nothing written to the user's ~/.ssh");
}

/// EC2 refuses `Latest` for instances not built on Nitro: the console is read again without it.
#[test]
fn a_console_that_refuses_latest_is_read_without_it() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let unsupported = Fault {
        status: 400,
        code: "UnsupportedOperation",
        message: "The latest console output is not supported for this instance type.",
    };
    let proxy = FaultProxy::start(&moto.endpoint, move |request| {
        if request.action == "GetConsoleOutput" && request.body.contains("Latest=true") {
            Answer::Fail(unsupported)
        } else {
            Answer::Forward
        }
    });
    let workspace = Workspace::new();
    let (outcome, _) = run(&workspace, &fleet(&proxy.endpoint, &sshd, "", ""));
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let reads = proxy.bodies("GetConsoleOutput");
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(reads[0].contains("Latest=true") && !reads[1].contains("Latest"), "{reads:?}");
    assert!(outcome.stderr.contains("provisioned over a verified channel"), "{}", outcome.stderr);
}
