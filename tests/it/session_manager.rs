//! `interface = "session_manager"` end to end: the binary against moto (behind a proxy that answers SSM's
//! Session Manager calls, which moto lacks) and the real ssh client, ProxyCommand and control master through a
//! stub `session-manager-plugin` that connects its stdin/stdout to the test sshd.

use std::sync::Arc;

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};
use crate::proxy::{Answer, FaultProxy, SessionManagerModel, SESSION_TOKEN};

/// The stub plugin: answers `--version`; else checks it was started as the AWS CLI starts the real one (the
/// response's name in argv[1], the response itself in that environment variable, its token nowhere in argv),
/// logs one JSON line per start to `log`, and pipes stdin/stdout to 127.0.0.1:<portNumber of the request>.
fn stub_plugin(log: &std::path::Path) -> String {
    format!(
        r#"#!/usr/bin/python3
import json, os, socket, sys, threading
if sys.argv[1:] == ["--version"]:
    print("1.2.707.0-fleetbake-stub")
    sys.exit(0)
response = json.loads(os.environ.get("AWS_SSM_START_SESSION_RESPONSE", "{{}}"))
request = json.loads(sys.argv[5])
ok = (sys.argv[1] == "AWS_SSM_START_SESSION_RESPONSE" and sys.argv[3] == "StartSession"
      and response.get("TokenValue") == "{SESSION_TOKEN}" and not any("{SESSION_TOKEN}" in a for a in sys.argv)
      and request["DocumentName"] == "AWS-StartSSHSession")
with open("{log}", "a") as log:
    log.write(json.dumps({{"argv": sys.argv, "session": response.get("SessionId"), "ok": ok}}) + "\n")
if not ok:
    sys.exit(3)
port = int(request["Parameters"]["portNumber"][0])
remote = socket.create_connection(("127.0.0.1", port))
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            remote.shutdown(socket.SHUT_WR)
            return
        remote.sendall(data)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = remote.recv(65536)
    if not data:
        break
    os.write(1, data)
"#,
        log = log.display()
    )
}

/// moto behind a proxy that answers Session Manager's calls ([`SessionManagerModel`]) and records every request.
struct SsmGround {
    moto: Moto,
    proxy: FaultProxy,
    model: Arc<SessionManagerModel>,
}

impl SsmGround {
    fn start() -> SsmGround {
        SsmGround::starting(false)
    }

    /// With `lose_first_session`, the first session StartSession opens has its answer lost: the proxy's model
    /// opens it, then the connection is closed without an answer (the client retries, and never learns its id).
    fn starting(lose_first_session: bool) -> SsmGround {
        let moto = Moto::start();
        moto.create_instance_profile("fleetbake-ssm");
        let model = Arc::new(SessionManagerModel::default());
        let answering = Arc::clone(&model);
        let lost = std::sync::atomic::AtomicBool::new(!lose_first_session);
        let proxy = FaultProxy::start(&moto.endpoint, move |request| match answering.answer(request) {
            Some(Answer::Json(200, _))
                if request.action == "StartSession" && !lost.swap(true, std::sync::atomic::Ordering::SeqCst) =>
            {
                Answer::Drop
            }
            Some(answer) => answer,
            None => Answer::Forward,
        });
        SsmGround { moto, proxy, model }
    }

    fn started(&self) -> Vec<String> {
        self.model.started.lock().unwrap().iter().map(|(id, _)| id.clone()).collect()
    }

    fn ended(&self) -> Vec<String> {
        self.model.ended.lock().unwrap().clone()
    }
}

/// A fleet reached through Session Manager, with the stub plugin (written into `workspace`), `flavors` and
/// `regions` appended.
fn ssm_fleet(workspace: &Workspace, ground: &SsmGround, sshd: &Sshd, rest: &str) -> String {
    let plugin = workspace.write("bin/session-manager-plugin", &stub_plugin(&workspace.path("plugin.log")));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let header = fleet_header_at(&ground.proxy.endpoint, sshd)
        .replacen("host = \"127.0.0.1\"\n", "", 1)
        .replacen("source_cidrs = [\"127.0.0.1/32\"]\n", "", 1)
        .replacen(
            "[ssh]\n",
            &format!("[ssh]\ninterface = \"session_manager\"\nsession_manager_plugin = \"{}\"\n", plugin.display()),
            1,
        )
        .replacen("[defaults]\n", "[defaults]\niam_instance_profile = \"fleetbake-ssm\"\n", 1);
    format!("{header}\n{rest}")
}

/// The stub plugin's log: one line per start.
fn plugin_starts(workspace: &Workspace) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(workspace.path("plugin.log")).unwrap_or_default();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// The shell line that drops the SSH connection it runs over, as a reboot does: it kills the sshd process
/// serving the connection (its first `sshd` ancestor, the test user's own).
const DROP_CONNECTION: &str = "p=$$; while [ \"$p\" -gt 1 ] && [ \"$(cat /proc/$p/comm)\" != sshd ]; do p=$(cut -d' ' -f4 /proc/$p/stat); done; [ \"$p\" -gt 1 ] && kill -TERM $p; sleep 5";

/// Two flavors through Session Manager bake and copy: no security group gets an ingress rule, every session
/// started is ended exactly once, the plugin gets its token only through the environment, and a provisioner
/// that drops the connection (a reboot, `expect_disconnect`) is followed by one that reconnects through a new
/// session.
#[test]
fn a_fleet_through_session_manager_bakes_with_no_inbound_rule_and_ends_every_session() {
    let ground = SsmGround::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let markers = workspace.markers.display();
    let flavors = format!(
        r#"[[flavor]]
name = "base"
source_ami = {AL2023}
provisioners = [
  {{ type = "shell", inline = ["echo before > {markers}/base.before"] }},
  {{ type = "shell", inline = ["{drop}"], expect_disconnect = true }},
  {{ type = "shell", inline = ["echo after > {markers}/base.after"] }},
]

[[flavor]]
name = "app"
source_ami = {AL2023}
provisioners = [{{ type = "shell", inline = ["echo app > {markers}/app"] }}]

[regions]
us-west-2 = ["us-east-1"]
"#,
        drop = DROP_CONNECTION.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let fleet = ssm_fleet(&workspace, &ground, &sshd, &flavors);
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let plan = workspace.fleetbake(&["plan", fleet_path.to_str().unwrap()]);
    assert!(plan.stdout.contains("build base in us-west-2 as `base-us-west-2-"), "{}", plan.stdout);
    assert_eq!(plan.stdout.matches(", through Session Manager\n").count(), 2, "{}", plan.stdout);
    let events = workspace.path("events.jsonl");
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--events", events.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("no inbound rule"), "{}", outcome.stderr);
    // The events say which way in each build used: its image's `interface`.
    let events = std::fs::read_to_string(&events).unwrap();
    let built: Vec<&str> = events.lines().filter(|line| line.contains("\"interface\":\"session_manager\"")).collect();
    assert_eq!(built.len(), 2, "{events}");
    assert!(outcome.stderr.contains("the connection dropped, as expected"), "{}", outcome.stderr);
    for marker in ["base.before", "base.after", "app"] {
        assert!(workspace.markers.join(marker).exists(), "{marker} was written");
    }

    // No inbound rule anywhere: groups made, none opened.
    assert_eq!(ground.proxy.bodies("CreateSecurityGroup").len(), 2);
    assert!(ground.proxy.bodies("AuthorizeSecurityGroupIngress").is_empty());
    // The agent was asked about, the first StartSession per instance refused (`TargetNotConnected`) and waited
    // out; base reconnected after its reboot: two sessions for it, one for app.
    assert!(!ground.proxy.bodies("DescribeInstanceInformation").is_empty());
    assert_eq!(ground.proxy.bodies("StartSession").len(), 5, "2 refused + 3 started");
    let (mut started, mut ended) = (ground.started(), ground.ended());
    assert_eq!(started.len(), 3, "{started:?}");
    started.sort();
    ended.sort();
    assert_eq!(started, ended, "each session started is ended exactly once");
    // By its connection as it closed, not left to the cleanup stack.
    let stacked: Vec<&str> =
        outcome.stderr.lines().filter(|line| line.contains("cleaning up") && line.contains("session ")).collect();
    assert!(stacked.is_empty(), "{stacked:?}");
    // The plugin was started once per session, as the AWS CLI starts it, its token only in the environment.
    let starts = plugin_starts(&workspace);
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(starts.iter().all(|start| start["ok"] == true), "{starts:?}");
    // Nothing it needed is left on this machine: the connection's directory (the response file in it) is gone.
    assert_eq!(std::fs::read_dir(workspace.tmp()).unwrap().count(), 0);

    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete");
    for flavor in ["base", "app"] {
        assert_eq!(manifest["artifacts"][flavor]["us-west-2"]["interface"], "session_manager", "{manifest}");
        assert!(manifest["artifacts"][flavor]["us-east-1"]["image_id"].is_string(), "{manifest}");
    }
    runtime().block_on(async {
        for region in ["us-west-2", "us-east-1"] {
            assert_nothing_temporary_left(&ground.moto.client(region), region).await;
        }
    });
}

/// One flavor, `slow`, in us-west-2, whose provisioner says `waiting now` and waits at `gate`.
fn slow_flavor(gate: &Gate) -> String {
    format!(
        "[[flavor]]\nname = \"slow\"\nsource_ami = {AL2023}\nprovisioners = [{{ type = \"shell\", inline = [\"echo waiting now\", \"{}\"] }}]\n\n[regions]\nus-west-2 = []\n",
        gate.wait_line().replace('"', "\\\"")
    )
}

/// A run of [`slow_flavor`] through `ground`, its provisioner waiting at the gate (it has said `waiting now`).
struct Held {
    sshd: Sshd,
    workspace: Workspace,
    fleet_path: std::path::PathBuf,
    gate: Gate,
    running: Running,
}

fn held_at_the_gate(ground: &SsmGround) -> Held {
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet_path = workspace.write("fleet.toml", &ssm_fleet(&workspace, ground, &sshd, &slow_flavor(&gate)));
    let mut running = Running::start(&workspace, &["matrix", fleet_path.to_str().unwrap()], &[]);
    running.read_until("waiting now");
    Held { sshd, workspace, fleet_path, gate, running }
}

/// Ctrl-C while a provisioner runs through Session Manager: the session is ended, everything cleaned up, and
/// the run exits 130. Mid-run, the build's security group has no ingress rule.
#[test]
fn ctrl_c_mid_provisioning_ends_the_session_and_cleans_up() {
    let ground = SsmGround::start();
    let Held { sshd: _sshd, workspace, gate: _gate, running, .. } = held_at_the_gate(&ground);
    runtime().block_on(async {
        let groups = ground.moto.client("us-west-2").describe_security_groups().send().await.unwrap();
        let ours: Vec<_> =
            groups.security_groups().iter().filter(|g| g.group_name().unwrap().starts_with("fleetbake-")).collect();
        assert_eq!(ours.len(), 1);
        assert!(ours[0].ip_permissions().is_empty(), "{:?}", ours[0].ip_permissions());
    });
    assert_eq!(ground.started().len(), 1);
    assert!(ground.ended().is_empty());

    running.signal("INT");
    let seen = running.seen.clone();
    let (code, rest) = running.finish();
    assert_eq!(code, Some(130), "stderr:\n{seen}{rest}");
    assert_eq!(ground.started(), ground.ended(), "the session is ended");
    assert_eq!(std::fs::read_dir(workspace.tmp()).unwrap().count(), 0);
    runtime().block_on(assert_nothing_temporary_left(&ground.moto.client("us-west-2"), "us-west-2"));
}

/// No `session-manager-plugin` on `PATH`: the preflight names it and the run stops before any mutating call.
#[test]
fn a_missing_plugin_stops_the_run_at_preflight_with_no_mutating_call() {
    let ground = SsmGround::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let flavors = format!("[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n");
    let fleet = ssm_fleet(&workspace, &ground, &sshd, &flavors);
    let fleet = fleet.lines().filter(|line| !line.starts_with("session_manager_plugin")).collect::<Vec<_>>().join("\n");
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake_with_env(
        &["matrix", fleet_path.to_str().unwrap()],
        &[TEST_CREDENTIALS[0], TEST_CREDENTIALS[1], ("PATH", "/usr/bin:/bin")],
    );
    assert_ne!(outcome.code, 0, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("`session-manager-plugin` is not found on `PATH`, and Session Manager builds need it"),
        "{}",
        outcome.stderr
    );
    let mutating: Vec<String> = ground
        .proxy
        .actions()
        .into_iter()
        .filter(|action| !action.starts_with("Describe") && !action.starts_with("Get") && !action.starts_with("List"))
        .collect();
    assert!(mutating.is_empty(), "{mutating:?}");

    // With the plugin named, the same preflight shows its version.
    let fleet_path = workspace.write("fleet.toml", &ssm_fleet(&workspace, &ground, &sshd, &flavors));
    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap()]);
    assert!(preflight.stdout.contains("version 1.2.707.0-fleetbake-stub"), "{}{}", preflight.stdout, preflight.stderr);
}

/// Session Manager without an instance profile is refused at validate, at the key that chose it.
#[test]
fn session_manager_without_an_instance_profile_is_refused_with_its_line() {
    let workspace = Workspace::new();
    let fleet = "[fleet]\nname = \"n\"\nami_name = \"{flavor}-{timestamp}\"\n\n[defaults]\ninstance_type = \"t3.small\"\nssh_username = \"u\"\n\n\
                 [ssh]\ninterface = \"session_manager\"\n\n\
                 [[flavor]]\nname = \"base\"\nsource_ami = { id = \"ami-1\" }\n\n\
                 [[flavor]]\nname = \"app\"\nsource_ami = { id = \"ami-1\" }\ninterface = \"public_ip\"\n\n\
                 [regions]\nus-west-2 = []\n";
    let path = workspace.write("fleet.toml", fleet);
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("fleet.toml:10:13: `ssh.interface`: flavor `base` is reached through Session Manager"),
        "{}",
        outcome.stderr
    );
    assert!(!outcome.stderr.contains("flavor `app`"), "app is reached at its address: {}", outcome.stderr);
    let plan = workspace.fleetbake(&["plan", path.to_str().unwrap()]);
    assert_eq!(plan.code, 2);
}

/// A run killed outright mid-provisioning leaves its session open (journaled): `gc` names it and ends it, with
/// the rest the run left.
#[test]
fn gc_ends_the_session_a_killed_run_left_open() {
    gc_after_a_killed_run(false);
}

/// The same, the run's first StartSession answer lost: its session was never journaled, yet `gc` ends it too
/// (the sessions still active to the killed run's instance, listed before it is terminated).
#[test]
fn gc_ends_even_the_session_a_killed_run_never_learned() {
    gc_after_a_killed_run(true);
}

fn gc_after_a_killed_run(lose_first_session: bool) {
    let ground = SsmGround::starting(lose_first_session);
    let Held { sshd: _sshd, workspace, fleet_path, gate, mut running } = held_at_the_gate(&ground);
    running.child.0.kill().unwrap();
    running.child.0.wait().unwrap();
    gate.open();
    let started = ground.started();
    assert_eq!(started.len(), if lose_first_session { 2 } else { 1 }, "{started:?}");
    let journaled = started.last().unwrap();
    assert!(ground.ended().is_empty());

    let dry = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert!(dry.stdout.contains(&format!("would remove session {journaled} in us-west-2")), "{}", dry.stdout);
    assert!(ground.ended().is_empty(), "a dry run ends nothing");
    let gc = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    let mut ended = ground.ended();
    ended.sort();
    assert_eq!(ended, started, "{}", gc.stdout);
    runtime().block_on(assert_nothing_temporary_left(&ground.moto.client("us-west-2"), "us-west-2"));
}

/// An agent SSM reports online but never connects a session (`TargetNotConnected` to the end): the build fails
/// at `connect` once the time is up, with the hint about the profile and the endpoints, nothing left.
#[test]
fn a_target_never_connected_fails_the_build_at_connect_with_the_hint() {
    let ground = SsmGround::start();
    ground.model.never_connected.store(true, std::sync::atomic::Ordering::SeqCst);
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let flavors = format!("[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n");
    let fleet = ssm_fleet(&workspace, &ground, &sshd, &flavors).replacen("timeout = \"60s\"", "timeout = \"5s\"", 1);
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let started = std::time::Instant::now();
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(90), "{:?}", started.elapsed());
    let manifest = read_manifest(&workspace);
    let failure = &manifest["failures"][0];
    assert_eq!(failure["stage"], "connect", "{manifest}");
    assert!(failure["error"].as_str().unwrap().contains("TargetNotConnected"), "{manifest}");
    let hint = failure["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("fleetbake-ssm") && hint.contains("ec2messages"), "{manifest}");
    assert!(ground.started().is_empty());
    runtime().block_on(assert_nothing_temporary_left(&ground.moto.client("us-west-2"), "us-west-2"));
}

/// StartSession takes no client token: when its answer is lost (the session opened, the connection closed
/// before the answer), the retry opens a second session and the first one's id is never learned. The build
/// still ends it: before its instance is terminated it lists the sessions still active to that instance
/// (DescribeSessions) and ends each, so every session started is ended and the run exits 0.
#[test]
fn a_session_whose_start_answer_was_lost_is_ended_too() {
    let ground = SsmGround::starting(true);
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let markers = workspace.markers.display();
    let flavors = format!(
        "[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\nprovisioners = [{{ type = \"shell\", inline = [\"echo ok > {markers}/base\"] }}]\n\n[regions]\nus-west-2 = []\n"
    );
    let fleet_path = workspace.write("fleet.toml", &ssm_fleet(&workspace, &ground, &sshd, &flavors));
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert!(workspace.markers.join("base").exists());
    let (mut started, mut ended) = (ground.started(), ground.ended());
    assert_eq!(started.len(), 2, "the lost one and the retry's: {started:?}");
    started.sort();
    ended.sort();
    assert_eq!(started, ended, "every session started is ended, the lost one too");
    assert!(!ground.proxy.bodies("DescribeSessions").is_empty());
    for body in ground.proxy.bodies("DescribeSessions") {
        let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(sent["State"], "Active", "{body}");
    }
    assert_eq!(plugin_starts(&workspace).len(), 1, "ssh went through the session it learned");
    assert_eq!(read_manifest(&workspace)["status"], "complete");
    runtime().block_on(assert_nothing_temporary_left(&ground.moto.client("us-west-2"), "us-west-2"));
}
