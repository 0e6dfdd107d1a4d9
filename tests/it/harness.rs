//! Test servers on 127.0.0.1: a moto_server (the real EC2 API, reached through aws-sdk-ec2) and a private
//! sshd that accepts whatever key a build created. Each test starts its own on free ports; both stop on drop.
//!
//! Host keys: every test sshd presents the test process's one host key ([`test_host_key`]) unless started
//! with its own ([`Sshd::start_with_own_host_key`]: someone else answering), and [`Moto`]'s endpoint is a
//! proxy that puts that key on every instance's console (moto's canned console has none), as cloud-init
//! prints it: builds verify host keys (the default) against moto + the test sshd as they would on EC2.
//! `scripts/install-test-deps.sh` installs them; a test never skips because one is missing.

use std::ffi::OsStr;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::Client;

pub use crate::proxy::*;

/// The login user the test sshd lets in (created by scripts/install-test-deps.sh).
pub const SSH_USER: &str = "fbtest";

/// The login user of [`Sshd::start_writing_authorized_keys`] (created by scripts/install-test-deps.sh): its own,
/// so that no other test's build touches its `~/.ssh/authorized_keys`.
pub const KEYS_USER: &str = "fbkeys";

/// Where the harness puts the `AuthorizedKeysCommand` that writes `authorized_keys` as cloud-init would: a
/// root-owned 0755 folder outside /tmp (sshd refuses a command under /tmp).
const AUTHORIZED_KEYS_COMMAND: &str = "/usr/local/lib/fleetbake-tests/append-offered-key";

/// The command: appends the offered key (`%t %k`) to the user's (`%u`, home `%h`) `~/.ssh/authorized_keys` if it
/// is not there yet, the way cloud-init installs an EC2 key pair at first boot, and prints it (so it is accepted
/// also after a build removed it). Runs as root.
const AUTHORIZED_KEYS_SCRIPT: &str = r#"#!/bin/sh
user="$1"; home="$2"; type="$3"; key="$4"
umask 077
[ -d "$home/.ssh" ] || { mkdir "$home/.ssh" && chown "$user" "$home/.ssh"; }
keys="$home/.ssh/authorized_keys"
grep -qF -e "$key" "$keys" 2>/dev/null || { echo "$type $key fleetbake-test-ec2-key" >> "$keys"; chown "$user" "$keys"; }
echo "$type $key"
"#;

/// Writes [`AUTHORIZED_KEYS_SCRIPT`] to [`AUTHORIZED_KEYS_COMMAND`] unless it is there already (idempotent;
/// tests in parallel each write a copy and rename it into place).
fn install_authorized_keys_command() {
    use std::os::unix::fs::PermissionsExt;
    let path = Path::new(AUTHORIZED_KEYS_COMMAND);
    if std::fs::read_to_string(path).is_ok_and(|text| text == AUTHORIZED_KEYS_SCRIPT) {
        return;
    }
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).expect("the AuthorizedKeysCommand's folder (the tests run as root)");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join(format!(".append-offered-key.{}", std::process::id()));
    std::fs::write(&copy, AUTHORIZED_KEYS_SCRIPT).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&copy, path).unwrap();
}

/// Which keys a test sshd lets in.
#[derive(Clone, Copy)]
enum AuthorizedKeys {
    /// Any key offered, for [`SSH_USER`]; no `authorized_keys` file is read or written.
    AnyOffered,
    /// [`KEYS_USER`]'s real `~/.ssh/authorized_keys`, where [`AUTHORIZED_KEYS_COMMAND`] appends any key offered.
    WrittenOnFirstLogin,
}

/// Where [`free_port`] is in its range: the random offset it started at and how many ports it has tried since;
/// `None` until the first call.
static PORTS: Mutex<Option<(u16, u16)>> = Mutex::new(None);

/// The ports [`free_port`] draws from: the 12,000 below Linux's ephemeral range (32768–60999 by default), which
/// neither outgoing connections nor port-0 binds ever take.
fn port_range() -> std::ops::Range<u16> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    ephemeral_low.saturating_sub(12_000).max(1024)..ephemeral_low
}

/// A port of 127.0.0.1 no one listens on now, and one this test process never hands out again: the ports
/// come in order (wrapping around the range) from a random start, so parallel test processes start far apart,
/// each checked free by binding it. Servers started on it still retry on a new one if another process takes it
/// meanwhile ([`start_listening`]).
pub fn free_port() -> u16 {
    let range = port_range();
    let size = range.end - range.start;
    let mut ports = PORTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (start, tried) = ports.get_or_insert_with(|| (fastrand::u16(..size), 0));
    loop {
        assert!(*tried < size, "free_port: every port of {range:?} handed out or busy");
        let port = nth_port(&range, *start, *tried);
        *tried += 1;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The port `tried` places after offset `start` in `range`, wrapping around its end.
fn nth_port(range: &std::ops::Range<u16>, start: u16, tried: u16) -> u16 {
    range.start + (start + tried) % (range.end - range.start)
}

/// A port of 127.0.0.1 that refuses connections for as long as this lives: bound (so no other process can
/// listen on it) but not listening. For tests of what happens when nothing answers.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn hold() -> ClosedPort {
        loop {
            let port = free_port();
            // No SO_REUSEADDR: another socket's bind to this port fails, listening or not.
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            if socket.bind(([127, 0, 0, 1], port).into()).is_ok() {
                return ClosedPort { _socket: socket, port };
            }
        }
    }
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (or on every address), from
/// /proc/net/tcp and the process's file descriptors: a server is ours only if it listens itself, not merely if
/// the port answers (another process may have taken it).
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return false };
    let ours = [format!("0100007F:{port:04X}"), format!("00000000:{port:04X}")];
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A: LISTEN), inode.
            (fields.len() > 9 && ours.iter().any(|address| address == fields[1]) && fields[3] == "0A")
                .then(|| format!("socket:[{}]", fields[9]))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| inodes.iter().any(|inode| target.as_os_str() == OsStr::new(inode)))
}

/// Waits until `child` listens on `port`: `Err` with its status if it exits first (the port was taken).
fn wait_until_listening(port: u16, what: &str, child: &mut Child) -> Result<(), ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if listens(child.id(), port) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not listen on 127.0.0.1:{port} within 30 s");
}

/// Starts a server with `spawn(port)` on the ports `next_port` gives, until one listens: a server that exits
/// before listening (another process took its port since [`free_port`] checked it) is started again on the
/// next port. The child and its port.
fn start_listening(
    what: &str,
    mut next_port: impl FnMut() -> u16,
    mut spawn: impl FnMut(u16) -> Child,
) -> (Child, u16) {
    const ATTEMPTS: usize = 5;
    let mut exits = Vec::new();
    for _ in 0..ATTEMPTS {
        let port = next_port();
        let mut child = spawn(port);
        match wait_until_listening(port, what, &mut child) {
            Ok(()) => return (child, port),
            Err(status) => exits.push(format!("port {port}: {status}")),
        }
    }
    panic!("{what} exited before listening, {ATTEMPTS} times: {}", exits.join("; "));
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

/// A moto_server of its own, behind a proxy that puts [`test_host_key`] on every instance's console.
pub struct Moto {
    child: Child,
    /// The proxy's: what fleets and clients use.
    pub endpoint: String,
    /// moto's own (its console has no host keys).
    pub moto_endpoint: String,
    _console: FaultProxy,
}

/// The host key every test sshd presents unless started with its own: made once per test process.
pub struct TestHostKey {
    /// The private key file's content (OpenSSH format).
    private: String,
    /// `ssh-ed25519 AAAA…`.
    pub public: String,
}

/// The test process's host key.
pub fn test_host_key() -> &'static TestHostKey {
    static KEY: std::sync::OnceLock<TestHostKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let (private, public) = new_host_key();
        TestHostKey { private, public }
    })
}

/// A new ed25519 host key: the private key file's content, and the public key (`ssh-ed25519 AAAA…`).
fn new_host_key() -> (String, String) {
    let dir = tempfile::Builder::new().prefix("fb-hostkey").tempdir().unwrap();
    let path = dir.path().join("key");
    let status = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&path).status();
    assert!(status.expect("ssh-keygen runs").success());
    let private = std::fs::read_to_string(&path).unwrap();
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    let public = public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    (private, public)
}

/// A console as cloud-init prints host keys: `keys` (`ssh-ed25519 AAAA…`) between the BEGIN and END lines,
/// each prefixed `ec2: `, after `before`.
pub fn console_text(before: &str, keys: &[&str]) -> String {
    let mut text = format!("{before}\nec2: -----BEGIN SSH HOST KEY KEYS-----\n");
    for key in keys {
        text.push_str(&format!("ec2: {key}\n"));
    }
    text.push_str("ec2: -----END SSH HOST KEY KEYS-----\n");
    text
}

/// A GetConsoleOutput answer with its `<output>` (base64) replaced by `console`.
pub fn with_console(response: &str, console: &str) -> String {
    use base64::Engine as _;
    let (Some(start), Some(end)) = (response.find("<output>"), response.find("</output>")) else {
        return response.to_string();
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(console);
    format!("{}<output>{encoded}{}", &response[..start], &response[end..])
}

/// moto's GetConsoleOutput answer, its console followed by the test host key's block.
fn console_with_test_host_key(response: String) -> String {
    use base64::Engine as _;
    let moto_console = response
        .find("<output>")
        .zip(response.find("</output>"))
        .and_then(|(start, end)| base64::engine::general_purpose::STANDARD.decode(&response[start + 8..end]).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    with_console(&response, &console_text(&moto_console, &[&test_host_key().public]))
}

impl Moto {
    pub fn start() -> Moto {
        Moto::start_on(free_port)
    }

    /// A moto_server on the first of `ports` it can listen on.
    fn start_on(ports: impl FnMut() -> u16) -> Moto {
        let (child, port) = start_listening("moto_server", ports, |port| {
            Command::new(moto_server_path())
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("moto_server starts")
        });
        let moto_endpoint = format!("http://127.0.0.1:{port}");
        let console = FaultProxy::start(&moto_endpoint, |request| match request.action {
            "GetConsoleOutput" => Answer::Rewrite(console_with_test_host_key),
            _ => Answer::Forward,
        });
        Moto { child, endpoint: console.endpoint.clone(), moto_endpoint, _console: console }
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

    /// An SSM client for `region`.
    pub fn ssm(&self, region: &str) -> aws_sdk_ssm::Client {
        let config = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .region(aws_sdk_ssm::config::Region::new(region.to_string()))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
            .build();
        aws_sdk_ssm::Client::from_conf(config)
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
    /// The host key it presents (`ssh-ed25519 AAAA…`).
    pub host_key: String,
    _dir: tempfile::TempDir,
}

impl Sshd {
    /// An sshd presenting [`test_host_key`] (what [`Moto`] puts on every console).
    pub fn start() -> Sshd {
        let key = test_host_key();
        Sshd::start_on(free_port, AuthorizedKeys::AnyOffered, &key.private, &key.public)
    }

    /// An sshd for [`KEYS_USER`] whose `AuthorizedKeysFile` is real: the first login with a key appends it to
    /// `~/.ssh/authorized_keys` (as cloud-init installs an EC2 key pair), which a build then finds there.
    pub fn start_writing_authorized_keys() -> Sshd {
        install_authorized_keys_command();
        let known = Command::new("id").arg(KEYS_USER).stdout(Stdio::null()).status().unwrap().success();
        assert!(known, "the test login user `{KEYS_USER}` is missing: run scripts/install-test-deps.sh");
        let key = test_host_key();
        Sshd::start_on(free_port, AuthorizedKeys::WrittenOnFirstLogin, &key.private, &key.public)
    }

    /// An sshd with a host key of its own, on no console: someone else answering on an instance's address.
    pub fn start_with_own_host_key() -> Sshd {
        let (private, public) = new_host_key();
        Sshd::start_on(free_port, AuthorizedKeys::AnyOffered, &private, &public)
    }

    /// An sshd on the first of `ports` it can listen on. Its sessions carry `FBTEST_SUITE_TMPDIR` (this test
    /// process's temp folder): how scripts/test.sh tells a provisioner loop the suite left from anyone else's.
    fn start_on(
        ports: impl FnMut() -> u16,
        keys: AuthorizedKeys,
        private_host_key: &str,
        public_host_key: &str,
    ) -> Sshd {
        assert!(Path::new("/usr/sbin/sshd").exists(), "/usr/sbin/sshd missing: run scripts/test.sh");
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd (privilege separation directory)");
        let dir = tempfile::Builder::new().prefix("fb-sshd").tempdir().unwrap();
        let host_key = dir.path().join("host_ed25519");
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file =
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&host_key).unwrap();
            file.write_all(private_host_key.as_bytes()).unwrap();
        }
        let config = dir.path().join("sshd_config");
        let authorized = match keys {
            AuthorizedKeys::AnyOffered => format!(
                "AuthorizedKeysFile none\nAuthorizedKeysCommand /bin/echo %t %k\nAuthorizedKeysCommandUser nobody\n\
                 AllowUsers {SSH_USER}\n"
            ),
            AuthorizedKeys::WrittenOnFirstLogin => format!(
                "AuthorizedKeysFile .ssh/authorized_keys\nAuthorizedKeysCommand {AUTHORIZED_KEYS_COMMAND} %u %h %t %k\n\
                 AuthorizedKeysCommandUser root\nAllowUsers {KEYS_USER}\n"
            ),
        };
        let (child, port) = start_listening("sshd", ports, |port| {
            std::fs::write(
                &config,
                format!(
                    "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nPidFile {}\nUsePAM no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     {authorized}MaxStartups 64:30:128\nMaxSessions 64\nLogLevel ERROR\n\
                     SetEnv FBTEST_SUITE_TMPDIR={}\n",
                    host_key.display(),
                    dir.path().join("sshd.pid").display(),
                    std::env::temp_dir().display()
                ),
            )
            .unwrap();
            Command::new("/usr/sbin/sshd")
                .arg("-f")
                .arg(&config)
                .args(["-D", "-e"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sshd starts")
        });
        Sshd { child, port, host_key: public_host_key.to_string(), _dir: dir }
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

/// A file a provisioner waits for ([`Gate::wait_line`]), for a test to hold a build mid-provisioning. Opened
/// (the file created) when the test says so or when it is dropped, so a test that fails or finishes without
/// opening it ends the remote loop at once: the test sshd is this machine, and a loop left running would
/// outlive the test. The loop also ends by itself when the workspace is gone, and after 2 minutes.
pub struct Gate {
    path: PathBuf,
    workspace: PathBuf,
}

impl Gate {
    /// A closed gate: `gate` in the workspace.
    pub fn new(workspace: &Workspace) -> Gate {
        Gate { path: workspace.path("gate"), workspace: workspace.dir.path().to_path_buf() }
    }

    /// The provisioner line that waits until the gate is open (exit 0), or gives up: exit 2 when the workspace
    /// is removed, exit 1 after 2 minutes.
    pub fn wait_line(&self) -> String {
        format!(
            "waited=0; while [ ! -e {} ]; do [ -d {} ] || exit 2; waited=$((waited + 1)); [ $waited -lt 600 ] || exit 1; \
             sleep 0.2; done",
            self.path.display(),
            self.workspace.display()
        )
    }

    /// Lets the waiting provisioner go on.
    pub fn open(&self) {
        std::fs::write(&self.path, "").unwrap();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, "");
    }
}

/// A scratch folder for a fleet file and what it names, plus a folder the provisioners write markers into.
/// Every fleetbake a test starts runs through its workspace ([`Workspace::fleetbake`], [`Running::start`]):
/// with `TMPDIR` inside it ([`Workspace::tmp`]), so a run killed outright leaves its key folder here, removed
/// with the workspace, never in the machine's /tmp.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub markers: PathBuf,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::Builder::new().prefix("fb-it").tempdir().unwrap();
        let markers = dir.path().join("markers");
        std::fs::create_dir(&markers).unwrap();
        // Short: fleetbake's ssh control socket is `TMP/fb-XXXXXX/.ssh-connectionXXXXXX/master` plus ssh's own
        // 17-byte suffix while it binds, 56 bytes past TMP, and a Unix socket path holds 107 at most.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        assert!(
            tmp.as_os_str().len() <= 107 - 56,
            "`{}` is too long for ssh's control sockets below it: run the tests with a shorter TMPDIR",
            tmp.display()
        );
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

    /// The JSON file at `relative` (a manifest, a summary), parsed.
    pub fn read_json(&self, relative: &str) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.path(relative)).unwrap()).unwrap()
    }

    /// The `TMPDIR` of every fleetbake this workspace runs: where its private key folders (`fb-*`) go.
    pub fn tmp(&self) -> PathBuf {
        self.path("tmp")
    }

    /// `program` with the environment every fleetbake a test starts gets: none of the caller's `AWS_*`
    /// variables (a developer's profile, region or endpoint must not reach the tests), no instance-metadata
    /// lookups, `TMPDIR` in this workspace, then `env`.
    pub fn command(&self, program: impl AsRef<OsStr>, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(program);
        command
            .env_clear()
            .envs(std::env::vars_os().filter(|(name, _)| !name.to_string_lossy().starts_with("AWS_")))
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("TMPDIR", self.tmp())
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        command
    }

    /// Runs `fleetbake ARGS` with test credentials.
    pub fn fleetbake(&self, args: &[&str]) -> Outcome {
        self.fleetbake_with_env(args, TEST_CREDENTIALS)
    }

    /// Runs `fleetbake ARGS` with only `env` for AWS settings (none of the caller's `AWS_*` variables).
    pub fn fleetbake_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Outcome {
        let output =
            self.command(env!("CARGO_BIN_EXE_fleetbake"), env).args(args).output().expect("the fleetbake binary runs");
        Outcome {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The static credentials moto accepts.
pub const TEST_CREDENTIALS: &[(&str, &str)] = &[("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")];

/// The result of running the fleetbake binary.
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
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

/// `fleetbake ARGS` running in the background from `workspace` (test credentials, `env` added), read line by line from its
/// stderr: for signals and kills mid-run.
pub struct Running {
    pub child: KillOnDrop,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    /// Everything it has printed so far.
    pub seen: String,
}

impl Running {
    pub fn start(workspace: &Workspace, args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut child = workspace
            .command(env!("CARGO_BIN_EXE_fleetbake"), TEST_CREDENTIALS)
            .envs(env.iter().copied())
            .args(args)
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

    /// Fails the test if the process has ended.
    pub fn assert_running(&mut self) {
        let status = self.child.0.try_wait().unwrap();
        assert!(status.is_none(), "fleetbake ended ({status:?}):\n{}", self.seen);
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

/// The environment [`Workspace::command`] gives every fleetbake a test starts, seen by `env(1)` started the
/// same way from a test process whose own environment has `AWS_*` variables (a developer's profile, region,
/// endpoint and keys): none of them arrive, only the ones the test gives and `AWS_EC2_METADATA_DISABLED`;
/// `TMPDIR` is the workspace's; the rest of the environment passes through.
#[test]
fn spawned_processes_get_none_of_the_callers_aws_variables_and_their_tmpdir_in_the_workspace() {
    let workspace = Workspace::new();
    let report = workspace.path("probe.txt");
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "harness::spawned_environment_probe", "--ignored", "--quiet", "--test-threads=1"])
        .env("FBTEST_PROBE_REPORT", &report)
        .env("FBTEST_PROBE_KEPT", "kept")
        .env("AWS_PROFILE", "nope")
        .env("AWS_REGION", "eu-north-9")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9/")
        .env("AWS_ACCESS_KEY_ID", "the-callers")
        .env("AWS_SECRET_ACCESS_KEY", "the-callers")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the probe ran: {status}");
    let text = std::fs::read_to_string(&report).expect("the probe wrote its report");
    let (probe_tmp, env) = text.split_once('\n').unwrap();
    let aws: std::collections::BTreeSet<&str> = env.lines().filter(|line| line.starts_with("AWS_")).collect();
    assert_eq!(
        aws,
        ["AWS_ACCESS_KEY_ID=testing", "AWS_EC2_METADATA_DISABLED=true", "AWS_SECRET_ACCESS_KEY=testing"].into(),
        "{env}"
    );
    assert!(env.lines().any(|line| line == format!("TMPDIR={probe_tmp}")), "TMPDIR={probe_tmp} in\n{env}");
    assert!(env.lines().any(|line| line == "FBTEST_PROBE_KEPT=kept"), "{env}");
}

/// Run by the test above, in a process with `AWS_*` variables set: writes the workspace's `TMPDIR`, then what
/// `env(1)` started through [`Workspace::command`] with the test credentials prints.
#[test]
#[ignore = "run by spawned_processes_get_none_of_the_callers_aws_variables_…, with its environment"]
fn spawned_environment_probe() {
    let Some(report) = std::env::var_os("FBTEST_PROBE_REPORT") else { return };
    let workspace = Workspace::new();
    let output = workspace.command("env", TEST_CREDENTIALS).output().unwrap();
    assert!(output.status.success());
    let env = String::from_utf8(output.stdout).unwrap();
    std::fs::write(report, format!("{}\n{env}", workspace.tmp().display())).unwrap();
}

/// [`free_port`] never hands out one port twice, whichever thread asks, and each was free when handed out.
#[test]
fn free_port_never_hands_out_a_port_twice() {
    let ports: Vec<u16> = std::thread::scope(|scope| {
        let threads: Vec<_> =
            (0..8).map(|_| scope.spawn(|| (0..50).map(|_| free_port()).collect::<Vec<_>>())).collect();
        threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect()
    });
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), ports.len(), "{} of {} distinct", distinct.len(), ports.len());
}

/// [`free_port`] started near the end of its range goes on from its start, not out of it.
#[test]
fn free_port_wraps_around_its_range() {
    let range = 100..110;
    let order: Vec<u16> = (0..10).map(|tried| nth_port(&range, 8, tried)).collect();
    assert_eq!(order, [108, 109, 100, 101, 102, 103, 104, 105, 106, 107]);
}

/// A [`ClosedPort`] refuses connections, and no one else can listen on it while it is held.
#[test]
fn a_closed_port_refuses_connections_and_cannot_be_taken() {
    let closed = ClosedPort::hold();
    let refused = TcpStream::connect(("127.0.0.1", closed.port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(TcpListener::bind(("127.0.0.1", closed.port)).is_err(), "port {} taken by another", closed.port);
}

/// The ports a server is offered: `taken` first, then free ones.
fn taken_then_free(taken: u16) -> impl FnMut() -> u16 {
    let mut first = Some(taken);
    move || first.take().unwrap_or_else(free_port)
}

/// An sshd and a moto_server whose port another process listens on (taken after [`free_port`] checked it)
/// start again on another port, and it is they that answer there, not the other listener.
#[test]
fn servers_whose_port_is_taken_start_on_another() {
    let other = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
    let taken = other.local_addr().unwrap().port();

    let key = test_host_key();
    let sshd = Sshd::start_on(taken_then_free(taken), AuthorizedKeys::AnyOffered, &key.private, &key.public);
    assert_ne!(sshd.port, taken);
    let mut banner = [0u8; 8];
    std::io::Read::read_exact(&mut TcpStream::connect(("127.0.0.1", sshd.port)).unwrap(), &mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-", "sshd answers on {}", sshd.port);

    let moto = Moto::start_on(taken_then_free(taken));
    assert!(!moto.endpoint.ends_with(&format!(":{taken}")), "{}", moto.endpoint);
    let regions = runtime().block_on(moto.client("us-east-1").describe_regions().send()).unwrap();
    assert!(!regions.regions().is_empty(), "moto answers at {}", moto.endpoint);
}

/// A gate dropped unopened (a test that failed or ended early) opens, so the loop waiting for it ends now
/// (exit 0), not at its 2-minute deadline (exit 1).
#[test]
fn a_gate_dropped_unopened_lets_its_waiting_loop_end() {
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let mut waiting = KillOnDrop(Command::new("sh").args(["-c", &gate.wait_line()]).spawn().unwrap());
    drop(gate);
    let status = waiting.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "opened, not given up: {status}");
}

/// A loop waiting for a gate whose workspace is removed gives up at once (exit 2), not at its deadline.
#[test]
fn a_gate_loop_ends_when_its_workspace_is_removed() {
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let line = gate.wait_line();
    // Never opened, not even on drop.
    std::mem::forget(gate);
    let mut waiting = KillOnDrop(Command::new("sh").args(["-c", &line]).spawn().unwrap());
    drop(workspace);
    let status = waiting.0.wait().unwrap();
    assert_eq!(status.code(), Some(2), "gave up because the workspace is gone: {status}");
}
