//! Test servers on 127.0.0.1: a moto_server (the real EC2 API, reached through aws-sdk-ec2) and a private
//! sshd that accepts whatever key a build created. Each test starts its own on free ports; both stop on drop.
//! `scripts/install-test-deps.sh` installs them; a test never skips because one is missing.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::Client;

pub use crate::proxy::*;

/// The login user the test sshd lets in (created by scripts/install-test-deps.sh).
pub const SSH_USER: &str = "fbtest";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening on {port}: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 30 s");
}

fn moto_server_path() -> PathBuf {
    if let Ok(path) = std::env::var("FLEETBAKE_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let installed = dirs_home().join(".cache/fleetbake/tools/venv/bin/moto_server");
    if installed.exists() {
        return installed;
    }
    panic!("moto_server not found: run `scripts/test.sh` (or scripts/install-test-deps.sh) first, or set FLEETBAKE_MOTO_SERVER");
}

fn dirs_home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
}

/// A moto_server of its own.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let mut child = Command::new(moto_server_path())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        wait_for_port(port, "moto_server", &mut child);
        Moto { child, endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// An SDK client for `region`, as a user's deploy tooling would see the account.
    pub fn client(&self, region: &str) -> Client {
        let config = aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .build();
        Client::from_conf(config)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// A KMS client for `region`.
    pub fn kms(&self, region: &str) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new(region.to_string()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// A customer-managed key in `region` with `alias` (`alias/…`); its ARN.
    pub async fn create_key(&self, region: &str, alias: &str) -> String {
        let kms = self.kms(region);
        let key = kms.create_key().description("fleetbake test key").send().await.unwrap();
        let metadata = key.key_metadata().unwrap();
        kms.create_alias().alias_name(alias).target_key_id(metadata.key_id()).send().await.unwrap();
        metadata.arn().unwrap().to_string()
    }

    /// An IAM instance profile (IAM is global). Through moto's query API with a made-up signature: there is no
    /// IAM SDK crate in the build, and moto does not check signatures.
    pub fn create_instance_profile(&self, name: &str) {
        use std::io::{Read, Write};
        let body = format!("Action=CreateInstanceProfile&InstanceProfileName={name}&Version=2010-05-08");
        let host = self.endpoint.trim_start_matches("http://");
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20261127/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(host).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "CreateInstanceProfile: {response}");
    }
}

/// The values of `key` in a form-encoded request body (`FromPort=123`).
pub fn field<'a>(body: &'a str, key: &str) -> Vec<&'a str> {
    body.split('&').filter_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')).collect()
}

/// A form-encoded value as text.
pub fn decoded(value: &str) -> String {
    value.replace("%2F", "/").replace("%3A", ":").replace("%2B", "+").replace("%3D", "=")
}

/// A private sshd on 127.0.0.1 that accepts any public key for `fbtest`.
pub struct Sshd {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Sshd {
    pub fn start() -> Sshd {
        assert!(Path::new("/usr/sbin/sshd").exists(), "/usr/sbin/sshd missing: run scripts/test.sh");
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd (privilege separation directory)");
        let dir = tempfile::Builder::new().prefix("fb-sshd").tempdir().unwrap();
        let host_key = dir.path().join("host_ed25519");
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key)
            .status()
            .expect("ssh-keygen runs");
        assert!(status.success());
        let port = free_port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nPidFile {}\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 AuthorizedKeysFile none\nAuthorizedKeysCommand /bin/echo %t %k\nAuthorizedKeysCommandUser nobody\n\
                 AllowUsers {SSH_USER}\nMaxStartups 64:30:128\nMaxSessions 64\nLogLevel ERROR\n",
                host_key.display(),
                dir.path().join("sshd.pid").display()
            ),
        )
        .unwrap();
        let mut child = Command::new("/usr/sbin/sshd")
            .arg("-f")
            .arg(&config)
            .args(["-D", "-e"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts");
        wait_for_port(port, "sshd", &mut child);
        Sshd { child, port, _dir: dir }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Its connections first (one sshd process each, children of the listener): a client's ssh master
        // (`ControlPersist`) would otherwise stay connected to them after the test.
        let _ = Command::new("pkill").args(["-TERM", "-P", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A provisioner line that waits until `gate` exists, for a test to hold a build mid-provisioning. It gives up
/// after 2 minutes by itself (exit 1): the test sshd is this machine, so a loop left behind when a test kills
/// the build must not run forever.
pub fn wait_for_gate(gate: &Path) -> String {
    format!(
        "waited=0; while [ ! -e {} ]; do waited=$((waited + 1)); [ $waited -lt 600 ] || exit 1; sleep 0.2; done",
        gate.display()
    )
}

/// A scratch folder for a fleet file and what it names, plus a folder the provisioners write markers into.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub markers: PathBuf,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::Builder::new().prefix("fb-it").tempdir().unwrap();
        let markers = dir.path().join("markers");
        std::fs::create_dir(&markers).unwrap();
        // The provisioners run as the unprivileged test user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&markers, std::fs::Permissions::from_mode(0o777)).unwrap();
        Workspace { dir, markers }
    }

    pub fn write(&self, relative: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }
}

/// The result of running the fleetbake binary.
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `fleetbake ARGS` with test credentials and no instance-metadata lookups.
pub fn fleetbake(args: &[&str]) -> Outcome {
    fleetbake_with_env(args, &[("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")])
}

/// Runs `fleetbake ARGS` with only `env` for AWS settings (none of the caller's `AWS_*` variables).
pub fn fleetbake_with_env(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetbake"));
    command.args(args).stdin(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command.env("AWS_EC2_METADATA_DISABLED", "true").envs(env.iter().copied());
    let output = command.output().expect("the fleetbake binary runs");
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Answers every HTTP request with `body` (a stand-in for checkip.amazonaws.com).
pub fn serve_text(body: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = write!(stream, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    url
}

/// `fleetbake ARGS` running in the background (test credentials, `env` added), read line by line from its
/// stderr: for signals and kills mid-run.
pub struct Running {
    pub child: KillOnDrop,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    /// Everything it has printed so far.
    pub seen: String,
}

impl Running {
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fleetbake"))
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        Running { child: KillOnDrop(child), stderr, seen: String::new() }
    }

    /// Reads stderr until a line contains `needle`; fails the test if the process ends first.
    pub fn read_until(&mut self, needle: &str) {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            let read = self.stderr.read_line(&mut line).unwrap();
            assert!(read > 0, "fleetbake ended before printing `{needle}`:\n{}", self.seen);
            self.seen.push_str(&line);
            if line.contains(needle) {
                return;
            }
        }
    }

    /// Sends a signal (`INT`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").args([&format!("-{name}"), &self.child.0.id().to_string()]).status();
        assert!(status.unwrap().success());
    }

    /// Waits for the process to end: its exit code and what it printed since the last read.
    pub fn finish(mut self) -> (Option<i32>, String) {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest).unwrap();
        let code = self.child.0.wait().unwrap().code();
        (code, rest)
    }
}

/// A child process that is killed if the test fails before it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
