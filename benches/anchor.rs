//! The anchor comparison: the work Packer's amazon-ebs builder also does, baked by fleetbake and by Packer on
//! an instant cloud. Two flavors (Ubuntu 16.04 and Amazon Linux 2023 from moto's catalog) built in us-west-2
//! and eu-central-1, each image copied to two more regions: 4 builds and 8 copies, 12 images. Each tool gets a
//! moto_server of its own (its six regions' catalogs loaded before the clock starts), the same private sshd
//! playing every instance, one shell provisioner (`echo`), and a request-counting proxy in front of moto
//! (`tests/it/proxy.rs`): its wall (the whole process, as a user waits for it) and its calls by action are
//! printed side by side. Packer is Debian's `packer` 1.6.6 (its amazon-ebs builder built in), installed by
//! `scripts/install-test-deps.sh`; a JSON template with one builder per flavor and build region (`ami_regions`
//! the copies), `custom_endpoint_ec2` at the proxy, `ssh_host` / `ssh_port` at the sshd.
//!
//! Then the checks (exit status 1 if one fails): both tools made their 12 images and nothing else failed;
//! fleetbake's calls are at most Packer's, and its wall at most 1.5 × Packer's.
//!
//! `cargo bench --bench anchor`: three rounds of each, the median wall printed. `cargo test --locked --bench
//! anchor` (CI, debug build, a machine that may be busy): one round of each, both tools' 12 images checked,
//! fleetbake's calls at most a tenth over Packer's, the wall printed but not checked (a speed claim is the
//! release bench's; fleetbake is unoptimized there, Packer not). Never skips: a missing `packer` fails.
//! `FLEETBAKE_ANCHOR_TRACE=1` also prints every request each tool sent, with its time since the tool started.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[allow(dead_code, reason = "each bench compiles its own copy of this module and uses some of it")]
mod common;
use common::{full_run, Checks};

#[path = "../tests/it/harness.rs"]
#[allow(dead_code, reason = "the integration tests' harness: the bench uses its servers and workspace only")]
mod harness;
#[path = "../tests/it/proxy.rs"]
#[allow(dead_code, reason = "the integration tests' proxy: the bench only counts requests")]
mod proxy;

use harness::{Answer, FaultProxy, Moto, Sshd, Workspace, SSH_USER};

/// The flavors: a name and moto's catalog entry (owners, name filter).
const FLAVORS: [(&str, &str, &str); 2] = [
    ("ubuntu-docker", "099720109477", "ubuntu/images/hvm-ssd/ubuntu-xenial-16.04-amd64-server-*"),
    ("al2023-base", "amazon", "al2023-ami-2023.*-kernel-6.1-x86_64"),
];

/// Build regions and the regions each copies to.
const REGIONS: [(&str, [&str; 2]); 2] =
    [("us-west-2", ["us-east-1", "eu-west-1"]), ("eu-central-1", ["ap-southeast-2", "sa-east-1"])];

/// Images the work makes: a build and its copies per flavor and build region.
const IMAGES: usize = FLAVORS.len() * REGIONS.len() * 3;

/// The target: fleetbake's wall at most this times Packer's (issue 27), with calls at most Packer's.
const WALL_RATIO_CEILING: f64 = 1.5;

/// One request the counting proxy saw.
struct Sent {
    at: Instant,
    action: String,
    region: String,
}

/// What one tool's run of the work came to.
struct Measured {
    wall: Duration,
    /// Requests the proxy saw, by action.
    calls: BTreeMap<String, usize>,
    /// The account's own images at the end, in every region.
    images: usize,
    /// Whether the process exited 0.
    succeeded: bool,
    /// The end of its output, for a failure's message.
    output_tail: String,
}

impl Measured {
    fn total_calls(&self) -> usize {
        self.calls.values().sum()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Fleetbake,
    Packer,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Fleetbake => "fleetbake",
            Tool::Packer => "packer",
        }
    }
}

fn main() {
    let (rounds, ceiling) = if full_run() { (3, Some(WALL_RATIO_CEILING)) } else { (1, None) };
    let mut checks = Checks::default();
    let packer_version = Command::new("packer").arg("version").output().ok();
    let Some(packer_version) = packer_version.filter(|output| output.status.success()) else {
        eprintln!("`packer` not found: run scripts/install-test-deps.sh (Debian's packer 1.6.6)");
        std::process::exit(1);
    };
    let packer_version = String::from_utf8_lossy(&packer_version.stdout).lines().next().unwrap_or("").to_string();
    let sshd = Sshd::start();
    let mut runs: Vec<(Measured, Measured)> = Vec::new();
    for _ in 0..rounds {
        let fleetbake = measure(Tool::Fleetbake, &sshd);
        let packer = measure(Tool::Packer, &sshd);
        runs.push((fleetbake, packer));
    }
    // The median round by fleetbake's wall (one round: that one).
    runs.sort_by_key(|(fleetbake, _)| fleetbake.wall);
    let (fleetbake, packer) = &runs[runs.len() / 2];
    let mut packer_walls: Vec<Duration> = runs.iter().map(|(_, packer)| packer.wall).collect();
    packer_walls.sort();
    let packer_wall = packer_walls[packer_walls.len() / 2];

    println!(
        "The anchor work on moto_server + a local sshd: {} flavors × {} build regions, each copied to 2 regions \
         ({IMAGES} images); {packer_version}; {rounds} round(s), the median",
        FLAVORS.len(),
        REGIONS.len()
    );
    println!("{:<34} {:>10} {:>10}", "", "fleetbake", "packer");
    println!("{:<34} {:>9.2}s {:>9.2}s", "wall", fleetbake.wall.as_secs_f64(), packer_wall.as_secs_f64());
    println!("{:<34} {:>10} {:>10}", "calls", fleetbake.total_calls(), packer.total_calls());
    let actions: std::collections::BTreeSet<&String> = fleetbake.calls.keys().chain(packer.calls.keys()).collect();
    for action in actions {
        let count = |measured: &Measured| measured.calls.get(action).copied().unwrap_or(0);
        println!("  {action:<32} {:>10} {:>10}", count(fleetbake), count(packer));
    }
    println!("{:<34} {:>10} {:>10}", "images", fleetbake.images, packer.images);
    let ratio = fleetbake.wall.as_secs_f64() / packer_wall.as_secs_f64();
    match ceiling {
        Some(ceiling) => println!("wall ratio fleetbake / packer: {ratio:.2} (at most {ceiling})"),
        None => println!("wall ratio fleetbake / packer: {ratio:.2} (a debug build: checked by `cargo bench` only)"),
    }

    for (fleetbake, packer) in &runs {
        for (tool, measured) in [(Tool::Fleetbake, fleetbake), (Tool::Packer, packer)] {
            checks.check(measured.succeeded, || format!("{} failed:\n{}", tool.name(), measured.output_tail));
            checks.equal(format_args!("{}: images made", tool.name()), measured.images, IMAGES);
        }
        // The claim (calls at most Packer's) is the release bench's; the debug row in CI, on a machine that may
        // be loaded, allows a tenth more polls before it fails.
        let calls_ceiling = if full_run() { packer.total_calls() } else { packer.total_calls() * 11 / 10 };
        checks.at_most("fleetbake's calls (Packer's the ceiling)", fleetbake.total_calls(), calls_ceiling);
    }
    // The wall is a speed claim: checked by `cargo bench` only; the debug row prints it.
    if let Some(ceiling) = ceiling {
        checks.at_most("fleetbake's wall over Packer's", ratio, ceiling);
    }
    checks.finish();
}

/// Runs the work with `tool` against a fresh moto_server behind a counting proxy, with `sshd` as every
/// instance.
fn measure(tool: Tool, sshd: &Sshd) -> Measured {
    let moto = Moto::start();
    let requests: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let recording = Arc::clone(&requests);
    let counting = FaultProxy::start(&moto.endpoint, move |request| {
        let sent = Sent { at: Instant::now(), action: request.action.to_string(), region: request.region.to_string() };
        recording.lock().unwrap().push(sent);
        Answer::Forward
    });
    warm_up(&moto);
    let workspace = Workspace::new();
    let command = match tool {
        Tool::Fleetbake => {
            let fleet = workspace.write("fleet.toml", &fleet_file(&counting.endpoint, sshd.port));
            let mut command = workspace.command(env!("CARGO_BIN_EXE_fleetbake"), harness::TEST_CREDENTIALS);
            command.arg("matrix").arg(fleet);
            command
        }
        Tool::Packer => {
            let template = workspace.write("packer.json", &packer_template(&counting.endpoint, sshd.port));
            // No version check against checkpoint-api.hashicorp.com.
            let mut command = workspace.command("packer", &[("CHECKPOINT_DISABLE", "1")]);
            command.current_dir(workspace.dir.path()).args(["build", "-color=false"]).arg(template);
            command
        }
    };
    let started = Instant::now();
    let (text, status) = run_stamped(command);
    let wall = started.elapsed();
    let requests = std::mem::take(&mut *requests.lock().unwrap());
    if std::env::var_os("FLEETBAKE_ANCHOR_TRACE").is_some() {
        let mut timeline: Vec<(Instant, String)> = text.iter().map(|(at, line)| (*at, format!("| {line}"))).collect();
        timeline.extend(requests.iter().map(|sent| (sent.at, format!("{:<32} {}", sent.action, sent.region))));
        timeline.sort_by_key(|(at, _)| *at);
        for (at, what) in timeline {
            eprintln!("{} {:>8.3}s {what}", tool.name(), at.saturating_duration_since(started).as_secs_f64());
        }
    }
    let mut calls = BTreeMap::new();
    for sent in requests {
        *calls.entry(sent.action).or_insert(0) += 1;
    }
    let lines: Vec<&str> = text.iter().map(|(_, line)| line.as_str()).collect();
    let output_tail = lines[lines.len().saturating_sub(30)..].join("\n");
    Measured { wall, calls, images: own_images(&moto), succeeded: status.success(), output_tail }
}

/// Runs `command` to its end: its output lines (stdout and stderr, each line when it was read) and its status.
fn run_stamped(mut command: Command) -> (Vec<(Instant, String)>, std::process::ExitStatus) {
    use std::io::BufRead;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the tool starts");
    let read = |pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let lines = std::io::BufReader::new(pipe).lines().map_while(Result::ok);
            lines.map(|line| (Instant::now(), line)).collect::<Vec<_>>()
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped")));
    let stderr = read(Box::new(child.stderr.take().expect("piped")));
    let status = child.wait().expect("the tool ends");
    let mut lines = stdout.join().expect("the reader ends");
    lines.extend(stderr.join().expect("the reader ends"));
    lines.sort_by_key(|(at, _)| *at);
    (lines, status)
}

/// Every region of the work, build and copy.
fn regions() -> Vec<&'static str> {
    REGIONS.iter().flat_map(|(build, copies)| std::iter::once(*build).chain(copies.iter().copied())).collect()
}

/// One DescribeImages per region straight to moto (not counted): moto loads a region's catalog on its first
/// call there (~0.6 s), which is moto's time, not the tool's.
fn warm_up(moto: &Moto) {
    harness::runtime().block_on(async {
        for region in regions() {
            let client = moto.client(region);
            client.describe_images().owners("self").send().await.expect("moto answers DescribeImages");
        }
    });
}

/// The images the account owns in every region of the work.
fn own_images(moto: &Moto) -> usize {
    harness::runtime().block_on(async {
        let mut images = 0;
        for region in regions() {
            let answer = moto.client(region).describe_images().owners("self").send().await.expect("DescribeImages");
            images += answer.images().len();
        }
        images
    })
}

/// The fleet file: the work, EC2 at `endpoint`, SSH to 127.0.0.1:`ssh_port` (host keys verified against the
/// consoles `Moto` writes them to, as on EC2).
fn fleet_file(endpoint: &str, ssh_port: u16) -> String {
    let mut text = format!(
        "[fleet]\nname = \"anchor\"\nami_name = \"{{flavor}}-{{build_region}}-{{run_id}}\"\n\
         manifest = \"out/manifest.json\"\n\n\
         [defaults]\ninstance_type = \"t3.small\"\nssh_username = \"{SSH_USER}\"\ntags = {{ ManagedBy = \"fleetbake\" }}\n\n\
         [aws]\nendpoint_url = \"{endpoint}\"\n\n\
         [ssh]\nhost = \"127.0.0.1\"\nport = {ssh_port}\ntimeout = \"60s\"\nsource_cidrs = [\"127.0.0.1/32\"]\n\n"
    );
    for (flavor, owner, name) in FLAVORS {
        text.push_str(&format!(
            "[[flavor]]\nname = \"{flavor}\"\nsource_ami = {{ owners = [\"{owner}\"], name = \"{name}\" }}\n\
             provisioners = [{{ type = \"shell\", inline = [\"echo provisioning\"] }}]\n\n"
        ));
    }
    text.push_str("[regions]\n");
    for (build, copies) in REGIONS {
        text.push_str(&format!("{build} = [\"{}\", \"{}\"]\n", copies[0], copies[1]));
    }
    text
}

/// Packer 1.6.6's JSON template for the same work: one amazon-ebs builder per flavor and build region, its
/// copies as `ami_regions`; EC2 at `endpoint` (`custom_endpoint_ec2`, no credential or region validation, no
/// instance metadata), SSH to 127.0.0.1:`ssh_port`.
fn packer_template(endpoint: &str, ssh_port: u16) -> String {
    let mut builders = Vec::new();
    for (flavor, owner, name) in FLAVORS {
        for (region, copies) in REGIONS {
            builders.push(serde_json::json!({
                "type": "amazon-ebs",
                "name": format!("{flavor}-{region}"),
                "region": region,
                "custom_endpoint_ec2": endpoint,
                "access_key": "testing",
                "secret_key": "testing",
                "skip_credential_validation": true,
                "skip_metadata_api_check": true,
                "skip_region_validation": true,
                "source_ami_filter": { "filters": { "name": name }, "owners": [owner], "most_recent": true },
                "instance_type": "t3.small",
                "ssh_username": SSH_USER,
                "ssh_host": "127.0.0.1",
                "ssh_port": ssh_port,
                "temporary_security_group_source_cidrs": ["127.0.0.1/32"],
                "ami_name": format!("{flavor}-{region}-{{{{timestamp}}}}"),
                "ami_regions": copies,
                "tags": { "ManagedBy": "packer" },
            }));
        }
    }
    let template = serde_json::json!({
        "builders": builders,
        "provisioners": [{ "type": "shell", "inline": ["echo provisioning"] }],
    });
    serde_json::to_string_pretty(&template).expect("JSON")
}
