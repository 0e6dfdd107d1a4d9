//! The SSH communicator: connects through the system ssh client (the openssh crate) with the build's
//! temporary key, retrying until the instance answers, and runs commands with their output streamed by line.
//! With a bastion, it jumps through it (`ssh -J`): the jump connection reads a private ssh config file that
//! names the bastion's key and known-hosts file (command-line options apply to the instance only).
//!
//! Host keys: the instance's are checked strictly (`StrictHostKeyChecking yes`) against a known_hosts file of
//! that connection only, written from the keys its console printed ([`HostKeyCheck::Verify`]), unless the
//! flavor says `host_key = "accept"`; the bastion's against its configured file or line, strictly too. No
//! global known_hosts file is read, and nothing is written to the user's own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cloud::retry::{retry, GaveUp, Outcome, Policy};
use crate::cloud::PrivateKey;
use crate::config::{Bastion, BastionHostKey};
use crate::remote::Exit;
use crate::report::events::{OutputLine, OutputStream};
use crate::util::host_keys::{known_hosts_pattern, Fingerprint, HostKey, HostKeys};

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The temporary key pair's private key: written to a 0600 file in a 0700 directory only for the life of
    /// a connection ([`KeyFiles`]).
    pub private_key: PrivateKey,
    /// The jump host to go through, if any.
    pub bastion: Option<Bastion>,
    /// How the instance's host key is checked.
    pub host_key: HostKeyCheck,
}

/// How an instance's host key is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// Strictly, against the keys its console printed: another key is someone else answering.
    Verify(HostKeys),
    /// Any key is accepted (`host_key = "accept"`).
    Accept,
}

impl SshTarget {
    /// `user@host:port`, and the bastion it is reached through.
    fn describe(&self) -> String {
        match &self.bastion {
            Some(bastion) => format!(
                "{}@{}:{} through {}@{}:{}",
                self.user, self.host, self.port, bastion.user, bastion.host, bastion.port
            ),
            None => format!("{}@{}:{}", self.user, self.host, self.port),
        }
    }
}

/// The files a connection needs on this machine: a private (0700) directory holding the key (0600), the
/// control socket (a short path: Unix socket paths are limited to ~100 bytes) and, with a bastion, the ssh
/// config. Removed with the directory when the connection ends (closed, or dropped by an interrupt).
pub struct KeyFiles {
    dir: tempfile::TempDir,
    key_file: PathBuf,
}

impl KeyFiles {
    pub fn write(key: &PrivateKey) -> std::io::Result<KeyFiles> {
        let dir = tempfile::Builder::new()
            .prefix("fb-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()?;
        let key_file = dir.path().join("key");
        write_private_file(&key_file, key.expose())?;
        Ok(KeyFiles { dir, key_file })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The alias of the bastion in the private ssh config file.
const BASTION_ALIAS: &str = "fleetbake-bastion";

/// Options for every host a connection reaches (the instance, and the bastion): no global known_hosts file
/// (only the connection's own), no key learned or updated, no address check beside the name's.
const EVERY_HOST: &str = "GlobalKnownHostsFile /dev/null\nUpdateHostKeys no\nCheckHostIP no\nHashKnownHosts no\n";

/// A connection through a bastion: the bastion, and the files its jump uses.
struct Jump<'a> {
    bastion: &'a Bastion,
    /// What the bastion's host key is checked against.
    known_hosts: &'a Path,
    /// The connection's ssh config file (the jump's ssh reads it too).
    config: &'a Path,
    /// Where the jump's ssh writes its errors (a host key refused is told from it).
    log: &'a Path,
}

/// The private ssh config file of a connection: [`EVERY_HOST`], and with a jump the bastion's block (its host
/// key checked strictly against its known_hosts, never learned) and every other host reached through it. The
/// jump is a `ProxyCommand` (what `ssh -J` runs) so that its errors go to a log of its own.
fn ssh_config(jump: Option<&Jump<'_>>) -> String {
    let mut config = EVERY_HOST.to_string();
    if let Some(jump) = jump {
        let bastion = jump.bastion;
        // ProxyCommand runs through the shell, and expands `%`.
        let quoted = |path: &Path| shell_quote(&path.display().to_string()).replace('%', "%%");
        config.push_str(&format!(
            "Host {BASTION_ALIAS}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile \"{}\"\n  IdentitiesOnly yes\n  \
             BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile \"{}\"\n  ConnectTimeout {}\n\
             Host * !{BASTION_ALIAS}\n  ProxyCommand ssh -F {} -E {} -W '[%h]:%p' {BASTION_ALIAS}\n",
            bastion.host,
            bastion.port,
            bastion.user,
            bastion.private_key_file.display(),
            jump.known_hosts.display(),
            CONNECT_ATTEMPT_TIMEOUT.as_secs(),
            quoted(jump.config),
            quoted(jump.log),
        ));
    }
    config
}

/// The known_hosts line a bastion's `host_key` stands for: as written, or a key alone for its host and port.
fn bastion_known_hosts_line(bastion: &Bastion, line: &str) -> String {
    let first = line.split_ascii_whitespace().next().unwrap_or_default();
    if crate::util::host_keys::KEY_TYPES.contains(&first) {
        format!("{} {line}", known_hosts_pattern(&bastion.host, bastion.port))
    } else {
        line.to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("no SSH connection to {target} within {}: {last_error}", humantime::format_duration(*waited))]
    ConnectTimeout { target: String, waited: Duration, last_error: String },
    /// Strict checking refused the key the server offered.
    #[error("{0}")]
    HostKey(String),
    #[error("{0}")]
    Command(String),
}

const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, retrying every failure until `timeout` (sshd may not be up yet, nor the key installed):
/// [`Policy::ssh_connect`]; but a host key refused is final ([`SshError::HostKey`]).
pub async fn connect(target: &SshTarget, files: &KeyFiles, timeout: Duration) -> Result<Session, SshError> {
    let cannot_write =
        |path: &Path, error: std::io::Error| SshError::Command(format!("cannot write `{}`: {error}", path.display()));
    let mut builder = SessionBuilder::default();
    builder
        .user(target.user.clone())
        .port(target.port)
        .keyfile(&files.key_file)
        .connect_timeout(CONNECT_ATTEMPT_TIMEOUT)
        .server_alive_interval(Duration::from_secs(15))
        .control_directory(files.dir());
    let known_hosts = files.dir().join("known_hosts");
    match &target.host_key {
        HostKeyCheck::Verify(keys) => {
            write_private_file(&known_hosts, &keys.known_hosts(&target.host, target.port))
                .map_err(|error| cannot_write(&known_hosts, error))?;
            builder.known_hosts_check(KnownHosts::Strict).user_known_hosts_file(&known_hosts);
        }
        HostKeyCheck::Accept => {
            builder.known_hosts_check(KnownHosts::Accept).user_known_hosts_file("/dev/null");
        }
    }
    let bastion_known_hosts = match target.bastion.as_ref().map(|bastion| (bastion, &bastion.host_key)) {
        Some((_, BastionHostKey::KnownHostsFile(path))) => Some(path.clone()),
        Some((bastion, BastionHostKey::Line(line))) => {
            let path = files.dir().join("bastion_known_hosts");
            write_private_file(&path, &bastion_known_hosts_line(bastion, line))
                .map_err(|error| cannot_write(&path, error))?;
            Some(path)
        }
        None => None,
    };
    let config = files.dir().join("ssh_config");
    let jump_log = files.dir().join("jump.log");
    let jump = target.bastion.as_ref().zip(bastion_known_hosts.as_deref()).map(|(bastion, known_hosts)| Jump {
        bastion,
        known_hosts,
        config: &config,
        log: &jump_log,
    });
    write_private_file(&config, &ssh_config(jump.as_ref())).map_err(|error| cannot_write(&config, error))?;
    builder.config_file(&config);
    let connected = retry(
        Policy::ssh_connect(timeout).start(),
        |_| async {
            match builder.connect(&target.host).await {
                Ok(session) => Outcome::Done(Ok(session)),
                Err(error) => {
                    let said = ssh_said(&error);
                    // The jump's own errors, taken so that the next attempt's are its own.
                    let jump_said = std::fs::read(&jump_log).map(|bytes| printable(&String::from_utf8_lossy(&bytes)));
                    let _ = std::fs::remove_file(&jump_log);
                    match jump_said {
                        Ok(jump_said) if is_host_key_refusal(&jump_said) => {
                            Outcome::Done(Err(Refusal::Bastion(jump_said)))
                        }
                        _ if is_host_key_refusal(&said) => Outcome::Done(Err(Refusal::Instance(said))),
                        Ok(jump_said) if !jump_said.trim().is_empty() => {
                            tracing::debug!(host = %target.host, port = target.port, "SSH not ready: {said}; the jump: {jump_said}");
                            Outcome::Again(Refusal::NotYet(format!("{said} (the bastion: {})", jump_said.trim())))
                        }
                        _ => {
                            tracing::debug!(host = %target.host, port = target.port, "SSH not ready: {said}");
                            Outcome::Again(Refusal::NotYet(said))
                        }
                    }
                }
            }
        },
        |_, _| {},
    )
    .await;
    match connected {
        Ok(session) => Ok(session),
        Err(GaveUp::Refused(Refusal::Bastion(said))) => Err(SshError::HostKey(bastion_refused(target, &said))),
        Err(GaveUp::Refused(Refusal::Instance(said))) => Err(SshError::HostKey(host_key_refused(target, &said).await)),
        Err(GaveUp::Refused(Refusal::NotYet(error)) | GaveUp::Spent { error: Refusal::NotYet(error), .. }) => {
            Err(SshError::ConnectTimeout { target: target.describe(), waited: timeout, last_error: error })
        }
        Err(GaveUp::Spent { error: Refusal::Instance(error) | Refusal::Bastion(error), .. }) => {
            Err(SshError::ConnectTimeout { target: target.describe(), waited: timeout, last_error: error })
        }
    }
}

/// Why one connect attempt failed.
enum Refusal {
    /// Not up yet, or not letting the key in yet: tried again.
    NotYet(String),
    /// The instance's host key refused (what ssh said).
    Instance(String),
    /// The bastion's host key refused (what the jump's ssh said).
    Bastion(String),
}

/// What ssh said about a failed connect (the openssh crate keeps its error output as the source).
fn ssh_said(error: &openssh::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    printable(&text)
}

/// `text` with control characters other than newline and tab shown escaped (`\x1b`): what ssh relays from
/// the far side must not drive the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_ascii_control() => format!("\\x{:02x}", c as u32),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Whether ssh refused the server's host key (strict checking), or the server has none of the listed keys'
/// types: retrying cannot change that.
fn is_host_key_refusal(said: &str) -> bool {
    said.contains("Host key verification failed")
        || said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || said.contains("no matching host key type found")
}

/// The job's error for the bastion's host key refused.
fn bastion_refused(target: &SshTarget, said: &str) -> String {
    let Some(bastion) = &target.bastion else {
        return format!("host key verification failed: {said}");
    };
    let expected = match &bastion.host_key {
        BastionHostKey::KnownHostsFile(path) => format!("`known_hosts` (`{}`)", path.display()),
        BastionHostKey::Line(_) => "`host_key`".to_string(),
    };
    let offered = offered_in(said).map(|fingerprint| format!(" ({fingerprint})")).unwrap_or_default();
    format!(
        "the bastion {}@{}:{} offered a host key{offered} that `[ssh] bastion` {expected} does not list: someone else may be answering there; nothing was sent to it",
        bastion.user, bastion.host, bastion.port,
    )
}

/// The job's error for the instance's host key refused: what was expected, what was offered (from ssh's
/// warning, else `ssh-keyscan`), and what that means.
async fn host_key_refused(target: &SshTarget, said: &str) -> String {
    let HostKeyCheck::Verify(expected) = &target.host_key else {
        return format!("host key verification failed for {}: {said}", target.describe());
    };
    let offered = match offered_in(said) {
        Some(fingerprint) => fingerprint.to_string(),
        None if target.bastion.is_none() => match scan(&target.host, target.port).await {
            Some(keys) => keys.fingerprints(),
            None => "a key that `ssh-keyscan` could not read again".to_string(),
        },
        None => "a key not on the instance's console".to_string(),
    };
    mismatch_message(&target.describe(), expected, &offered)
}

/// The job's error when whoever answered on the instance's address offered `offered` (fingerprints) and the
/// instance's console listed `expected`: the same words from the ssh and the simulated communicators.
pub fn mismatch_message(target: &str, expected: &HostKeys, offered: &str) -> String {
    format!(
        "host key mismatch at {target}: the server offered {offered}, but the instance's console lists {}: someone else answered at the instance's address; nothing was sent to it",
        expected.fingerprints()
    )
}

/// The fingerprint in ssh's warning about a changed key ("The fingerprint for the ED25519 key sent by the
/// remote host is\nSHA256:….").
fn offered_in(said: &str) -> Option<Fingerprint> {
    let after = &said[said.find("sent by the remote host is")?..];
    let start = after.find("SHA256:")?;
    Fingerprint::parse(after[start..].get(..50)?)
}

/// The host keys `host:port` offers, as `ssh-keyscan` reads them (within 10 seconds), if it can.
async fn scan(host: &str, port: u16) -> Option<HostKeys> {
    let mut command = tokio::process::Command::new("ssh-keyscan");
    command
        .args(["-T", "5", "-p", &port.to_string(), "--", host])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(10), command.output()).await.ok()?.ok()?;
    let text = String::from_utf8_lossy(&output.stdout[..output.stdout.len().min(64 * 1024)]).into_owned();
    let keys = text.lines().filter_map(|line| line.split_once(' ').and_then(|(_, key)| HostKey::parse(key).ok()));
    HostKeys::new(keys.collect())
}

/// Quotes `text` for a POSIX shell.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Writes `content` to `remote_path` on the instance.
pub async fn upload(session: &Session, content: &[u8], remote_path: &str) -> Result<(), SshError> {
    let command_line = format!("cat > {}", shell_quote(remote_path));
    let mut child = session
        .raw_command(&command_line)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(|error| SshError::Command(format!("cannot start the upload to `{remote_path}`: {error}")))?;
    let mut stdin = child.stdin().take().expect("stdin is piped");
    let written = async {
        stdin.write_all(content).await?;
        stdin.shutdown().await
    }
    .await;
    drop(stdin);
    let mut stderr_text = String::new();
    if let Some(stderr) = child.stderr().take() {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            stderr_text.push_str(&line);
        }
    }
    let status = child.wait().await;
    match (written, status) {
        (Ok(()), Ok(status)) if status.success() => Ok(()),
        (Err(error), _) => Err(SshError::Command(format!("upload to `{remote_path}` failed: {error}"))),
        (_, Ok(status)) => {
            Err(SshError::Command(format!("upload to `{remote_path}` failed ({status}): {stderr_text}")))
        }
        (_, Err(error)) => Err(SshError::Command(format!("upload to `{remote_path}` failed: {error}"))),
    }
}

/// Runs `command_line` with stdin from /dev/null, handing each output line to `on_line` as it arrives, as the
/// bytes printed (a line that is not UTF-8 is passed on, not an end of the output).
pub async fn run_streaming(
    session: &Session,
    command_line: &str,
    mut on_line: impl FnMut(OutputStream, OutputLine),
) -> Result<Exit, SshError> {
    let mut child = session
        .raw_command(command_line)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .await
        .map_err(|error| SshError::Command(format!("cannot start the command: {error}")))?;
    let mut stdout = BufReader::new(child.stdout().take().expect("stdout is piped"));
    let mut stderr = BufReader::new(child.stderr().take().expect("stderr is piped"));
    // Kept across the select's turns: `read_until` keeps what it read of a line when the other stream wins.
    let (mut stdout_line, mut stderr_line) = (Vec::new(), Vec::new());
    let (mut stdout_open, mut stderr_open) = (true, true);
    while stdout_open || stderr_open {
        tokio::select! {
            read = stdout.read_until(b'\n', &mut stdout_line), if stdout_open => match read {
                Ok(n) if n > 0 => on_line(OutputStream::Stdout, take_line(&mut stdout_line)),
                _ => stdout_open = false,
            },
            read = stderr.read_until(b'\n', &mut stderr_line), if stderr_open => match read {
                Ok(n) if n > 0 => on_line(OutputStream::Stderr, take_line(&mut stderr_line)),
                _ => stderr_open = false,
            },
        }
    }
    Ok(match child.wait().await {
        Ok(status) if status.success() => Exit::Success,
        Ok(status) => match status.code() {
            Some(code) => Exit::Code(code),
            None => Exit::Abnormal(format!("{status}")),
        },
        // With the process multiplexer, exit 127 arrives as "not found" and 255 as "terminated".
        Err(openssh::Error::Remote(error)) if error.kind() == std::io::ErrorKind::NotFound => Exit::Code(127),
        Err(openssh::Error::RemoteProcessTerminated) => Exit::Code(255),
        Err(error) => Exit::Abnormal(error.to_string()),
    })
}

/// The line read into `buffer`, without its line ending (`\n` or `\r\n`, as `lines()` would strip); `buffer`
/// is left empty for the next.
fn take_line(buffer: &mut Vec<u8>) -> OutputLine {
    let mut line = std::mem::take(buffer);
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    OutputLine::new(line)
}

/// Creates `path` with mode 0600 (the ssh client ignores a key others can read) and writes `content`.
pub fn write_private_file(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(content.as_bytes())?;
    if !content.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    // Not synced: ssh reads it from the page cache, and it is removed when the connection ends.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_loses_its_ending_and_keeps_every_other_byte() {
        let mut buffer = b"caf\xc3\xa9 \xff\r\n".to_vec();
        assert_eq!(take_line(&mut buffer).as_bytes(), b"caf\xc3\xa9 \xff");
        assert!(buffer.is_empty());
        assert_eq!(take_line(&mut b"last, unterminated".to_vec()).as_bytes(), b"last, unterminated");
        assert_eq!(take_line(&mut b"a\rb\n".to_vec()).as_bytes(), b"a\rb");
        assert_eq!(take_line(&mut b"\n".to_vec()).as_bytes(), b"");
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH6rKfOY3oyLa53Kw+cWZiHRIdFUJ9F5boORGMkHruzt";

    fn bastion(host_key: BastionHostKey) -> Bastion {
        Bastion {
            host: "bastion.example.com".into(),
            port: 2200,
            user: "ec2-user".into(),
            private_key_file: "/keys/bastion".into(),
            host_key,
        }
    }

    #[test]
    fn the_private_config_reads_no_global_known_hosts_and_checks_the_bastion_strictly() {
        let alone = ssh_config(None);
        assert!(alone.starts_with("GlobalKnownHostsFile /dev/null\nUpdateHostKeys no\n"), "{alone}");
        assert!(!alone.contains("Host "), "{alone}");
        let bastion = bastion(BastionHostKey::KnownHostsFile("/etc/fleet/bastion_hosts".into()));
        let jump = Jump {
            bastion: &bastion,
            known_hosts: Path::new("/etc/fleet/bastion_hosts"),
            config: Path::new("/tmp/fb-1/ssh_config"),
            log: Path::new("/tmp/fb-1/jump.log"),
        };
        let config = ssh_config(Some(&jump));
        assert!(
            config.contains("  StrictHostKeyChecking yes\n  UserKnownHostsFile \"/etc/fleet/bastion_hosts\"\n"),
            "{config}"
        );
        assert!(!config.contains("accept-new") && !config.contains("~/.ssh"), "{config}");
        assert!(
            config.contains(
                "Host * !fleetbake-bastion\n  ProxyCommand ssh -F '/tmp/fb-1/ssh_config' -E '/tmp/fb-1/jump.log' -W '[%h]:%p' fleetbake-bastion\n"
            ),
            "{config}"
        );
    }

    #[test]
    fn a_bastion_key_alone_is_written_for_its_host_and_port() {
        let bastion = bastion(BastionHostKey::Line(KEY.into()));
        assert_eq!(bastion_known_hosts_line(&bastion, KEY), format!("[bastion.example.com]:2200 {KEY}"));
        let line = format!("bastion.example.com,10.0.0.4 {KEY}");
        assert_eq!(bastion_known_hosts_line(&bastion, &line), line);
    }

    #[test]
    fn a_refused_host_key_is_told_from_a_server_not_up_yet_and_its_fingerprint_read() {
        let changed = "@@@@@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
            The fingerprint for the ED25519 key sent by the remote host is\n\
            SHA256:4to74o0UCZ7nVKa8aWf8n9x+u+aCHgKYDGVhOK11pmQ.\n\
            Host key for [127.0.0.1]:2222 has changed and you have requested strict checking.\n\
            Host key verification failed.";
        assert!(is_host_key_refusal(changed));
        assert_eq!(offered_in(changed).unwrap().as_str(), "SHA256:4to74o0UCZ7nVKa8aWf8n9x+u+aCHgKYDGVhOK11pmQ");
        assert!(is_host_key_refusal("No ED25519 host key is known for [10.0.0.5]:22 and you have requested strict checking.\nHost key verification failed."));
        assert!(!is_host_key_refusal("ssh: connect to host 10.0.0.5 port 22: Connection refused"));
        assert!(!is_host_key_refusal("fbtest@127.0.0.1: Permission denied (publickey)."));
        assert_eq!(offered_in("Host key verification failed."), None);
    }

    #[test]
    fn what_ssh_relays_is_shown_escaped() {
        assert_eq!(printable("a\u{1b}]0;PWNED\u{7}b\n\tc\u{85}"), "a\\x1b]0;PWNED\\x07b\n\tc\\u{85}");
    }
}
