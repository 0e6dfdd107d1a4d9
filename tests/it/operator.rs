//! What an operator sees and scripts against: the live view under a pseudo-terminal, timestamped plain lines,
//! `-q`, `--only` / `--except`, `--events`, the Packer-format manifest, `manifest get` / `diff`, completions,
//! and errors that say what to do. On the simulated cloud where the cloud does not matter, else through
//! aws-sdk-ec2 → moto and openssh → sshd.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};
use crate::witness::Witness;

/// [`two_by_two_sim_fleet`] named `ops`, writing a Packer-format manifest beside the fleet file.
fn sim_fleet(sim: &str) -> String {
    two_by_two_sim_fleet("ops", "packer_manifest = \"packer-manifest.json\"", sim)
}

/// Two flavors built in two regions, us-west-2's copied to us-east-1: four builds, two copies, in a fleet named
/// `name`; `fleet` and `sim` lines appended to their tables. For `--cloud sim`.
pub(crate) fn two_by_two_sim_fleet(name: &str, fleet: &str, sim: &str) -> String {
    format!(
        r#"[fleet]
name = "{name}"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"
{fleet}

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "ubuntu"
source_ami = {{ owners = ["099720109477"], name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*" }}
provisioners = [{{ type = "shell", inline = ["echo one"] }}]

[[flavor]]
name = "al2023"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
provisioners = [{{ type = "shell", inline = ["echo two"] }}]

[regions]
us-west-2 = ["us-east-1"]
eu-central-1 = []

[ssh]
source_cidrs = ["203.0.113.5/32"]

[sim]
{sim}
"#
    )
}

/// `fleetbake ARGS` under a pseudo-terminal (util-linux `script`), so stderr is a TTY.
pub(crate) struct Pty {
    child: KillOnDrop,
    out: std::process::ChildStdout,
    seen: String,
}

impl Pty {
    /// From `workspace`, with the environment every fleetbake a test starts gets ([`Workspace::command`]).
    fn start(workspace: &Workspace, args: &[&str]) -> Pty {
        Pty::start_with_env(workspace, args, &[])
    }

    /// [`Pty::start`] with `env` set and `NO_COLOR` only if `env` names it.
    pub(crate) fn start_with_env(workspace: &Workspace, args: &[&str], env: &[(&str, &str)]) -> Pty {
        let command = std::iter::once(env!("CARGO_BIN_EXE_fleetbake")).chain(args.iter().copied()).collect::<Vec<_>>();
        let mut child = workspace
            .command("script", TEST_CREDENTIALS)
            .args(["-qfec", &command.join(" "), "/dev/null"])
            .env("TERM", "xterm")
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("util-linux `script` runs (scripts/install-test-deps.sh installs it)");
        let out = child.stdout.take().unwrap();
        Pty { child: KillOnDrop(child), out, seen: String::new() }
    }

    /// Reads what the terminal shows until it contains `needle`.
    fn read_until(&mut self, needle: &str) {
        let mut buffer = [0u8; 4096];
        while !self.seen.contains(needle) {
            let read = self.out.read(&mut buffer).unwrap();
            assert!(read > 0, "ended before `{needle}`:\n{}", self.seen);
            self.seen.push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    }

    /// Everything to the end, and the exit code (`script -e` passes fleetbake's on).
    pub(crate) fn finish(mut self) -> (i32, String) {
        let mut rest = Vec::new();
        self.out.read_to_end(&mut rest).unwrap();
        self.seen.push_str(&String::from_utf8_lossy(&rest));
        let code = self.child.0.wait().unwrap().code().unwrap_or(-1);
        (code, self.seen)
    }
}

#[test]
fn the_live_view_draws_redraws_and_ends_with_the_summary_on_success_and_on_failure() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &sim_fleet(""));
    let (code, screen) = Pty::start(&workspace, &["matrix", fleet.to_str().unwrap(), "--cloud", "sim"]).finish();
    assert_eq!(code, 0, "{screen}");
    // The header, drawn more than once, with an estimated finish; jobs in flight by stage.
    let headers = screen.matches("· copies ").count();
    assert!(headers >= 2, "drawn and redrawn: {headers} headers\n{screen}");
    assert!(screen.contains("finish ≈ "), "{screen}");
    assert!(screen.contains("\u{1b}["), "terminal control sequences: a live view, not plain lines");
    // Ended with the summary, and no timestamps (those are for logs).
    assert!(screen.contains("==> summary: 6 of 6 images, 0 failures"), "{screen}");
    assert!(screen.contains("    ubuntu: 3/3 regions: "), "{screen}");
    assert!(!screen.contains("Z ==> "), "{screen}");

    let failing = workspace.write(
        "failing.toml",
        &sim_fleet("faults = [{ action = \"RunInstances\", region = \"eu-central-1\", error = \"UnauthorizedOperation\", nth = 1 }]"),
    );
    let (code, screen) =
        Pty::start(&workspace, &["matrix", failing.to_str().unwrap(), "--cloud", "sim", "--no-preflight"]).finish();
    assert_eq!(code, 1, "{screen}");
    assert!(screen.contains("failed at launch"), "the failure printed in full as it happened:\n{screen}");
    assert!(screen.contains("hint: the identity the run acts as needs `ec2:RunInstances`"), "{screen}");
    assert!(screen.contains("==> summary: 5 of 6 images, 1 failures"), "{screen}");
    assert!(screen.contains("; failed: eu-central-1 (launch)"), "{screen}");
}

#[test]
fn the_live_view_ends_with_the_summary_on_sigint() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"held\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo holding\", \"{}\"] }}]\n\n[regions]\nus-west-2 = []\n",
        fleet_header_at(&moto.endpoint, &sshd),
        gate.wait_line()
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let mut pty = Pty::start(&workspace, &["matrix", fleet_path.to_str().unwrap()]);
    pty.read_until("held/us-west-2: holding");
    pty.read_until("provision");
    let pattern = format!("^{} matrix {}", env!("CARGO_BIN_EXE_fleetbake"), fleet_path.display());
    let signalled = Command::new("pkill").args(["-INT", "-f", &pattern]).status().unwrap();
    assert!(signalled.success(), "fleetbake found by `pkill -f {pattern}`");
    let (code, screen) = pty.finish();
    // The provisioner loop on the (shared) test sshd ends now, not at its deadline.
    gate.open();
    assert_eq!(code, 130, "{screen}");
    assert!(screen.contains("SIGINT: starting nothing new, cleaning up"), "{screen}");
    assert!(screen.contains("==> summary: 0 of 1 images, 1 failures"), "{screen}");
    assert!(screen.contains("    held: 0/1 regions; failed: us-west-2 (interrupted)"), "{screen}");
    runtime().block_on(crate::cloud_state::assert_nothing_temporary_left(&moto.client("us-west-2"), "us-west-2"));
}

/// `2026-11-27T02:14:07Z `.
fn starts_with_a_time(line: &str) -> bool {
    line.len() > 21 && line.as_bytes()[20] == b' ' && line[..20].parse::<chrono::DateTime<chrono::Utc>>().is_ok()
}

#[test]
fn off_a_terminal_every_line_has_its_time_and_quiet_prints_failures_and_the_summary() {
    let workspace = Workspace::new();
    let fleet = workspace.write(
        "fleet.toml",
        &sim_fleet("faults = [{ action = \"CopyImage\", error = \"UnauthorizedOperation\", nth = 1 }]"),
    );
    let outcome = workspace.fleetbake(&["matrix", fleet.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let run_lines: Vec<&str> = outcome.stderr.lines().filter(|line| !line.starts_with("simulated run:")).collect();
    assert!(run_lines.len() > 20, "{}", outcome.stderr);
    for line in &run_lines {
        assert!(starts_with_a_time(line), "no time: {line:?}");
    }
    // The sim's time: virtual, so the run spans many simulated minutes in well under a second.
    let first: chrono::DateTime<chrono::Utc> = run_lines[0][..20].parse().unwrap();
    let last: chrono::DateTime<chrono::Utc> = run_lines.last().unwrap()[..20].parse().unwrap();
    assert!((last - first).num_minutes() >= 10, "{first} .. {last}");
    assert!(outcome.stderr.contains("Z ==> summary: 5 of 6 images, 1 failures"), "{}", outcome.stderr);

    let quiet = workspace.fleetbake(&["-q", "matrix", fleet.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(quiet.code, 1);
    // The simulated run's last line (stamped, as every line off a terminal) is not the reporter's.
    let lines: Vec<&str> = quiet
        .stderr
        .lines()
        .filter(|line| !line.get(21..).is_some_and(|text| text.starts_with("simulated run:")))
        .collect();
    let texts: Vec<&str> = lines.iter().map(|line| &line[21..]).collect();
    assert!(texts[0].starts_with("==> ") && texts[0].contains("/us-east-1: failed at copy: "), "{texts:?}");
    assert!(texts[1].starts_with("    hint: the identity the run acts as needs `ec2:CopyImage`"), "{texts:?}");
    assert!(texts[2].starts_with("==> run partial"), "{texts:?}");
    assert!(texts[3].starts_with("==> summary: 5 of 6 images"), "{texts:?}");
    assert_eq!(texts.len(), 6, "the failure, its hint, the run's end, the summary and its two flavors: {texts:?}");
}

#[test]
fn events_are_json_lines_every_job_starts_and_ends_and_the_counts_match() {
    let workspace = Workspace::new();
    let fleet = workspace.write(
        "fleet.toml",
        &sim_fleet(
            "faults = [\n\
             { action = \"CreateImage\", region = \"us-west-2\", error = \"UnauthorizedOperation\", nth = 1 },\n\
             { action = \"*\", error = \"RequestLimitExceeded\", probability = 0.1 },\n]",
        ),
    );
    let summary = workspace.path("summary.json");
    let outcome = workspace.fleetbake(&[
        "matrix",
        fleet.to_str().unwrap(),
        "--cloud",
        "sim",
        "--no-preflight",
        "--events",
        "-",
        "--summary-json",
        summary.to_str().unwrap(),
    ]);
    assert_eq!(outcome.code, 1, "{}", outcome.stderr);
    let events: Vec<Value> = outcome
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")))
        .collect();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    let mut open: BTreeMap<(String, String), usize> = BTreeMap::new();
    for event in &events {
        assert_eq!(event["v"], 1, "{event}");
        assert!(event["time"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().is_ok(), "{event}");
        let kind = event["type"].as_str().unwrap().to_string();
        *count.entry(kind.clone()).or_default() += 1;
        let job =
            (event["flavor"].as_str().unwrap_or_default().into(), event["region"].as_str().unwrap_or_default().into());
        match kind.as_str() {
            "job_started" => *open.entry(job).or_default() += 1,
            "job_succeeded" | "job_failed" if open.get(&job).is_some_and(|n| *n > 0) => {
                *open.get_mut(&job).unwrap() -= 1;
            }
            _ => {}
        }
    }
    assert_eq!(open.len(), 5, "4 builds and 1 copy started: {open:?}");
    assert!(open.values().all(|n| *n == 0), "every started job ended: {open:?}");
    assert_eq!(events.first().unwrap()["type"], "run_started");
    assert_eq!(events.last().unwrap()["type"], "run_finished");
    let statistics: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    // The failed build's copy never started: skipped, a failure without a start.
    assert_eq!(count["job_succeeded"], 4, "{count:?}");
    assert_eq!(count["job_failed"], 2, "{count:?}");
    assert_eq!(count["job_started"], 5, "{count:?}");
    assert_eq!(count["image_available"], 4, "{count:?}");
    assert_eq!(count["provisioner_output"], 4, "{count:?}");
    let finished = events.last().unwrap();
    assert_eq!(finished["succeeded"], 4);
    assert_eq!(finished["failed"], 2);
    // Throttling happened (the `*` fault), was absorbed, and the events, the statistics and the summary line
    // count it alike.
    let throttled = count.get("throttled").copied().unwrap_or(0);
    assert!(throttled > 0, "throttled events: {count:?}");
    assert_eq!(statistics["throttled_responses"].as_u64(), Some(throttled as u64), "{statistics}");
    assert!(
        outcome.stderr.contains(&format!(", 2 failures, {throttled} throttles absorbed")),
        "{throttled} throttles: {}",
        outcome.stderr
    );
    assert!(!outcome.stderr.contains("RequestLimitExceeded"), "no throttle reaches the user");
}

/// Packer's manifest as its documentation describes it (post-processor `manifest`): read with nothing of
/// fleetbake's.
#[derive(serde::Deserialize)]
struct PackerManifest {
    builds: Vec<PackerBuild>,
    last_run_uuid: String,
}

#[derive(serde::Deserialize)]
struct PackerBuild {
    name: String,
    builder_type: String,
    build_time: i64,
    files: Option<Vec<Value>>,
    artifact_id: String,
    packer_run_uuid: String,
    custom_data: BTreeMap<String, String>,
}

#[test]
fn the_packer_manifest_reads_as_packer_writes_it_and_manifest_get_and_diff_answer_scripts() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &sim_fleet(""));
    let first = workspace.fleetbake(&["matrix", fleet.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    std::fs::copy(workspace.path("manifest.sim.json"), workspace.path("first.json")).unwrap();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace.path("first.json")).unwrap()).unwrap();

    let packer: PackerManifest =
        serde_json::from_str(&std::fs::read_to_string(workspace.path("packer-manifest.sim.json")).unwrap()).unwrap();
    assert_eq!(packer.builds.len(), 2, "one build per flavor");
    for build in &packer.builds {
        assert_eq!(build.builder_type, "amazon-ebs");
        assert!(build.files.is_none());
        assert!(build.build_time > 1_700_000_000);
        assert_eq!(build.packer_run_uuid, packer.last_run_uuid);
        assert_eq!(build.custom_data["fleetbake_run_id"], manifest["run_id"]);
        let pairs: Vec<(&str, &str)> =
            build.artifact_id.split(',').map(|pair| pair.split_once(':').expect("region:ami")).collect();
        let regions: Vec<&str> = pairs.iter().map(|(region, _)| *region).collect();
        let mut sorted = regions.clone();
        sorted.sort();
        assert_eq!(regions, sorted, "sorted by region");
        for (region, image) in pairs {
            assert_eq!(manifest["artifacts"][&build.name][region]["image_id"], image, "{}", build.artifact_id);
        }
    }

    // `manifest get`: the id, for a shell script; exit 1 when absent.
    let path = workspace.path("first.json");
    let get = workspace.fleetbake(&["manifest", "get", "ubuntu", "us-east-1", "--manifest", path.to_str().unwrap()]);
    assert_eq!(get.code, 0, "{}", get.stderr);
    assert_eq!(get.stdout.trim(), manifest["artifacts"]["ubuntu"]["us-east-1"]["image_id"]);
    let absent =
        workspace.fleetbake(&["manifest", "get", "ubuntu", "ap-south-1", "--manifest", path.to_str().unwrap()]);
    assert_eq!(absent.code, 1);
    assert!(absent.stderr.contains("no image of `ubuntu` in ap-south-1"), "{}", absent.stderr);

    // A second night, without eu-central-1: Packer's file keeps the first run's builds; `diff` tells it.
    let second_fleet = sim_fleet("").replace("eu-central-1 = []\n", "");
    std::fs::write(&fleet, second_fleet).unwrap();
    let second = workspace.fleetbake(&["matrix", fleet.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    let packer: PackerManifest =
        serde_json::from_str(&std::fs::read_to_string(workspace.path("packer-manifest.sim.json")).unwrap()).unwrap();
    assert_eq!(packer.builds.len(), 4, "appended, as Packer's post-processor does");
    assert_eq!(packer.builds[3].packer_run_uuid, packer.last_run_uuid);
    assert_ne!(packer.builds[0].packer_run_uuid, packer.last_run_uuid);
    let diff = workspace.fleetbake(&[
        "manifest",
        "diff",
        path.to_str().unwrap(),
        workspace.path("manifest.sim.json").to_str().unwrap(),
    ]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    let lines: Vec<&str> = diff.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", diff.stdout);
    let old_central = manifest["artifacts"]["ubuntu"]["eu-central-1"]["image_id"].as_str().unwrap();
    assert!(lines.contains(&format!("- ubuntu/eu-central-1 {old_central}").as_str()), "{}", diff.stdout);
    assert_eq!(lines.iter().filter(|line| line.starts_with("~ ")).count(), 4, "{}", diff.stdout);
    let same = workspace.fleetbake(&["manifest", "diff", path.to_str().unwrap(), path.to_str().unwrap()]);
    assert_eq!(same.stdout.trim(), "no change: the same images in the same regions");
}

#[test]
fn completions_generate_for_every_shell() {
    let shells = [
        ("bash", "complete -F", "--only"),
        ("zsh", "#compdef fleetbake", "--only"),
        ("fish", "complete -c fleetbake", "-l only"),
    ];
    let workspace = Workspace::new();
    for (shell, marker, option) in shells {
        let outcome = workspace.fleetbake(&["completions", shell]);
        assert_eq!(outcome.code, 0, "{shell}: {}", outcome.stderr);
        assert!(outcome.stdout.contains(marker), "{shell}: {}", &outcome.stdout[..outcome.stdout.len().min(300)]);
        assert!(outcome.stdout.contains(option), "{shell}: the subcommands' options too");
    }
}

#[test]
fn only_and_except_select_builds_and_a_pattern_that_matches_nothing_is_bad_input() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &sim_fleet(""));
    let path = fleet.to_str().unwrap();
    let plan = workspace.fleetbake(&["plan", path, "--only", "ubu*", "--only", "al2023/eu-*"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let lines: Vec<&str> = plan.stdout.lines().collect();
    let expected = [
        "fleet `ops`: 3 builds, 1 copies",
        "selected: --only ubu* --only al2023/eu-*",
        "build ubuntu in eu-central-1 as `ubuntu-eu-central-1-",
        "build ubuntu in us-west-2 as `ubuntu-us-west-2-",
        "  copy to us-east-1",
        "build al2023 in eu-central-1 as `al2023-eu-central-1-",
    ];
    assert_eq!(lines.len(), expected.len(), "{}", plan.stdout);
    for (line, start) in lines.iter().zip(expected) {
        assert!(line.starts_with(start), "{line:?} should start {start:?}");
    }
    let except = workspace.fleetbake(&["plan", path, "--except", "*/eu-central-1"]);
    assert!(
        except.stdout.starts_with("fleet `ops`: 2 builds, 2 copies\nselected: --except */eu-central-1\n"),
        "{}",
        except.stdout
    );

    for (args, expected) in [
        (vec!["--only", "debian"], "error: --only `debian` matches no build of"),
        (vec!["--except", "ubuntu/ap-*"], "error: --except `ubuntu/ap-*` matches no build of"),
        (vec!["--only", "ubuntu", "--except", "ubuntu"], "error: `--only ubuntu --except ubuntu` leaves no build"),
        (vec!["--only", "a/b/c"], "error: `a/b/c` is not a pattern"),
    ] {
        for command in ["plan", "matrix", "preflight"] {
            let mut all = vec![command, path];
            all.extend(&args);
            all.extend(["--cloud", "sim"].iter().filter(|_| command != "plan"));
            let outcome = workspace.fleetbake(&all);
            assert_eq!(outcome.code, 2, "{all:?}: {}", outcome.stderr);
            assert!(outcome.stderr.contains(expected), "{all:?}: {}", outcome.stderr);
        }
    }
}

#[test]
fn a_selective_run_keeps_the_images_it_did_not_touch_in_the_manifest() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[[flavor]]\nname = \"web\"\nsource_ami = {AL2023}\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&moto.endpoint, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let full = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(full.code, 0, "{}", full.stderr);
    let before = read_manifest(&workspace);

    let only = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--only", "web"]);
    assert_eq!(only.code, 0, "{}", only.stderr);
    assert!(only.stderr.contains("run") && only.stderr.contains(": 1 builds, 1 copies"), "{}", only.stderr);
    let after = read_manifest(&workspace);
    assert_eq!(after["status"], "complete");
    assert_ne!(after["run_id"], before["run_id"]);
    for region in ["us-west-2", "us-east-1"] {
        assert_eq!(after["artifacts"]["base"][region], before["artifacts"]["base"][region], "untouched: kept");
        assert_ne!(after["artifacts"]["web"][region]["image_id"], before["artifacts"]["web"][region]["image_id"]);
    }
    // The untouched images are still in the account, as the manifest says.
    runtime().block_on(async {
        for region in ["us-west-2", "us-east-1"] {
            let image = after["artifacts"]["base"][region]["image_id"].as_str().unwrap();
            let found = moto.client(region).describe_images().image_ids(image).send().await.unwrap();
            assert_eq!(found.images().len(), 1, "{region}: {image}");
        }
    });
}

#[test]
fn a_source_filter_that_matches_nothing_names_what_matches_under_other_owners() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    // Amazon's image, asked of Canonical.
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {{ owners = [\"099720109477\"], name = \"al2023-ami-2023.*-kernel-6.1-x86_64\" }}\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header_at(&moto.endpoint, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "{}{}", outcome.stdout, outcome.stderr);
    let line = outcome.stdout.lines().find(|line| line.contains("source image of `base`")).unwrap();
    assert!(
        line.contains("no image owned by 099720109477 matches `al2023-ami-2023.*-kernel-6.1-x86_64` in us-west-2"),
        "{line}"
    );
    assert!(line.contains("; under other owners the newest match is `al2023-ami-2023."), "{line}");
    assert!(line.contains("add that owner to `owners` if you trust it"), "{line}");
}

/// A manifest that cannot be read is never silently replaced: a selective run refuses (exit 2, before any AWS
/// call) rather than write one that drops the images outside its selection, gc refuses since it cannot know
/// what to keep, and a run of the whole fleet keeps the file beside as `manifest.json.unreadable-<time>`,
/// says so, and writes a new one.
#[test]
fn an_unreadable_manifest_is_kept_beside_and_a_selective_run_refuses_rather_than_drop_images() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[[flavor]]\nname = \"web\"\nsource_ami = {AL2023}\n\n\
         [regions]\nus-west-2 = []\n\n[retention]\nkeep = 1\n",
        fleet_header_at(&moto.endpoint, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let path = fleet_path.to_str().unwrap();
    let full = workspace.fleetbake(&["matrix", path]);
    assert_eq!(full.code, 0, "{}", full.stderr);
    let before = read_manifest(&workspace);
    let manifest_path = workspace.path("out/manifest.json");
    let torn = "{\n  \"version\": 1,\n  \"fleet\": \"it\",\n  \"artifacts\": {\n    \"base\": {";
    std::fs::write(&manifest_path, torn).unwrap();
    let unreadable_beside = || -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(workspace.path("out")).unwrap();
        let mut found: Vec<_> = entries
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.file_name().unwrap().to_str().unwrap().starts_with("manifest.json.unreadable-"))
            .collect();
        found.sort();
        found
    };

    // `--only`: refused before any AWS call (EC2 is a witness here), the file untouched.
    let witness = Witness::start();
    std::fs::write(&fleet_path, fleet.replace(&moto.endpoint, &witness.endpoint)).unwrap();
    let only = workspace.fleetbake(&["matrix", path, "--only", "web"]);
    assert_eq!(only.code, 2, "{}", only.stderr);
    assert_eq!(witness.connections(), 0, "no AWS call: {}", only.stderr);
    let refusal = format!("cannot read the manifest `{}`: EOF while parsing", manifest_path.display());
    assert!(only.stderr.contains(&refusal), "{}", only.stderr);
    assert!(only.stderr.contains("run the whole fleet"), "{}", only.stderr);
    assert_eq!(std::fs::read_to_string(&manifest_path).unwrap(), torn);
    assert!(unreadable_beside().is_empty());
    std::fs::write(&fleet_path, &fleet).unwrap();

    // gc, which would deregister images beyond `keep`, stops: it cannot know which the manifest protects.
    let gc = workspace.fleetbake(&["gc", path]);
    assert_eq!(gc.code, 1, "{}{}", gc.stdout, gc.stderr);
    assert!(gc.stderr.contains("cannot read the manifest"), "{}", gc.stderr);
    assert_eq!(std::fs::read_to_string(&manifest_path).unwrap(), torn);

    // The whole fleet: the old file kept beside, byte for byte, with a warning; a new manifest of every image.
    let events = workspace.path("events.jsonl");
    let again = workspace.fleetbake(&["matrix", path, "--events", events.to_str().unwrap()]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let kept = unreadable_beside();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), torn);
    let warning = format!(
        "==> warning: cannot read the manifest `{}` (EOF while parsing an object at line 5 column 13); kept it as `{}` and writing a new one",
        manifest_path.display(),
        kept[0].display()
    );
    assert!(again.stderr.contains(&warning), "no `{warning}` in:\n{}", again.stderr);
    let events = std::fs::read_to_string(&events).unwrap();
    let set_aside: Vec<Value> = events
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["type"] == "manifest_set_aside")
        .collect();
    assert_eq!(set_aside.len(), 1, "{events}");
    assert_eq!(set_aside[0]["path"], manifest_path.to_str().unwrap());
    assert_eq!(set_aside[0]["kept_as"], kept[0].to_str().unwrap());
    let after = read_manifest(&workspace);
    assert_eq!(after["status"], "complete");
    assert_ne!(after["run_id"], before["run_id"]);
    for flavor in ["base", "web"] {
        assert!(after["artifacts"][flavor]["us-west-2"]["image_id"].is_string(), "{flavor}: {after}");
    }
}
