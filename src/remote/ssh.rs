//! The SSH communicator: connects through the system ssh client (the openssh crate) with the build's
//! temporary key, retrying until the instance answers, and runs commands with their output streamed by line.
//! With a bastion, it jumps through it (`ssh -J`): the jump connection reads a private ssh config file that
//! names the bastion's key and known-hosts file (command-line options apply to the instance only).
//!
//! Host keys: the instance's are checked strictly (`StrictHostKeyChecking yes`) against a known_hosts file of
//! that connection only, written from the keys its console printed ([`HostKeyCheck::Verify`]), unless the
//! flavor says `host_key = "accept"`; the bastion's against its configured file or line, strictly too. No
//! global known_hosts file is read, and nothing is written to the user's own.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cloud::retry::{retry, GaveUp, Outcome, Policy};
use crate::cloud::PrivateKey;
use crate::config::{ssh_fields, Bastion, BastionHostKey};
use crate::remote::{key_dirs, Exit};
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

/// The files a connection needs on this machine: a private (0700) directory ([`key_dirs`]: its owner file
/// says which run and process made it) holding the key (0600) until the connection is up
/// ([`KeyFiles::forget_key`]), the control socket (a short path: Unix socket paths are limited to ~100 bytes)
/// and, with a bastion, the ssh config. Removed with the directory when the connection ends (closed, or dropped
/// by an interrupt); what a run killed outright leaves, the next run ends ([`key_dirs::end_leftovers`]).
pub struct KeyFiles {
    dir: tempfile::TempDir,
    key_file: PathBuf,
}

impl KeyFiles {
    pub fn write(key: &PrivateKey, owner: &key_dirs::Owner) -> std::io::Result<KeyFiles> {
        let dir = key_dirs::create(owner)?;
        let key_file = dir.path().join("key");
        write_private_file(&key_file, key.expose())?;
        Ok(KeyFiles { dir, key_file })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the key is written (to reconnect, it is written there again).
    pub fn key_path(&self) -> PathBuf {
        self.key_file.clone()
    }

    /// The public half of the key, as an `authorized_keys` line (`ssh-keygen -y`: only the key file's path on
    /// its command line).
    pub async fn public_key(&self) -> Result<String, String> {
        let output = tokio::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&self.key_file)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), output)
            .await
            .map_err(|_| "`ssh-keygen -y` did not answer within 30s".to_string())?
            .map_err(|error| format!("cannot run `ssh-keygen -y`: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "`ssh-keygen -y` cannot read the build key ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Removes the private key: once the control master is logged in, nothing reads it again (every command
    /// goes through the master; a bastion's jump was made when the master connected).
    pub fn forget_key(&self) {
        if let Err(error) = std::fs::remove_file(&self.key_file) {
            tracing::debug!("removing `{}`: {error}", self.key_file.display());
        }
    }
}

/// How long an ssh control master with no session stays logged in before it exits by itself: a bound on
/// what a fleetbake killed outright leaves connected (a connection's sessions follow one another at once).
pub const CONTROL_PERSIST: Duration = Duration::from_secs(120);

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
            "Host {BASTION_ALIAS}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             BatchMode yes\n  StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n  ConnectTimeout {}\n\
             Host * !{BASTION_ALIAS}\n  ProxyCommand ssh -F {} -E {} -W '[%h]:%p' {BASTION_ALIAS}\n",
            bastion.host,
            bastion.port,
            bastion.user,
            ssh_fields::config_quoted(&bastion.private_key_file.to_string_lossy()),
            ssh_fields::config_quoted(&jump.known_hosts.to_string_lossy()),
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
    let attempts = Attempts::prepare(target, files, None)?;
    let connected =
        retry(Policy::ssh_connect(timeout).start(), |_| async { attempts.attempt(target).await }, |_, _| {}).await;
    match connected {
        Ok(session) => Ok(session),
        Err(gave_up) => Err(attempts.gave_up(target, timeout, gave_up).await),
    }
}

/// What every connect attempt of a connection uses: the ssh options, and the files they name (the private
/// config, the connection's known_hosts, the jump's log), written once in the connection's directory.
pub struct Attempts {
    builder: SessionBuilder,
    jump_log: PathBuf,
}

/// A connect attempt's failure: tried again, or final.
pub type AttemptOutcome = Outcome<Session, Refusal>;

impl Attempts {
    /// Writes the connection's files and sets the options. `proxy`: a script `ProxyCommand` runs (with `sh`)
    /// instead of a TCP connection (Session Manager's plugin; never with a bastion).
    pub fn prepare(target: &SshTarget, files: &KeyFiles, proxy: Option<&Path>) -> Result<Attempts, SshError> {
        if let Some(problem) = ssh_fields::connection_problem(&target.host, &target.user, target.bastion.as_ref()) {
            return Err(SshError::Command(problem));
        }
        let cannot_write = |path: &Path, error: std::io::Error| {
            SshError::Command(format!("cannot write `{}`: {error}", path.display()))
        };
        let mut builder = SessionBuilder::default();
        builder
            .user(target.user.clone())
            .port(target.port)
            .keyfile(&files.key_file)
            .connect_timeout(CONNECT_ATTEMPT_TIMEOUT)
            .server_alive_interval(Duration::from_secs(15))
            .control_persist(ControlPersist::IdleFor(
                NonZeroUsize::new(CONTROL_PERSIST.as_secs() as usize).expect("a bounded, non-zero idle time"),
            ))
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
        let mut text = ssh_config(jump.as_ref());
        if let Some(script) = proxy.filter(|_| jump.is_none()) {
            text.push_str(&proxy_block(script));
        }
        write_private_file(&config, &text).map_err(|error| cannot_write(&config, error))?;
        builder.config_file(&config);
        Ok(Attempts { builder, jump_log })
    }

    /// One connect attempt: a host key refused is final, anything else is tried again.
    pub async fn attempt(&self, target: &SshTarget) -> AttemptOutcome {
        match self.builder.connect(&target.host).await {
            Ok(session) => Outcome::Done(Ok(session)),
            Err(error) => {
                let said = ssh_said(&error);
                // The jump's own errors, taken so that the next attempt's are its own.
                let jump_said = std::fs::read(&self.jump_log).map(|bytes| printable(&String::from_utf8_lossy(&bytes)));
                let _ = std::fs::remove_file(&self.jump_log);
                match jump_said {
                    Ok(jump_said) if is_host_key_refusal(&jump_said) => Outcome::Done(Err(Refusal::Bastion(jump_said))),
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
    }

    /// The error for attempts given up after `timeout`.
    pub async fn gave_up(&self, target: &SshTarget, timeout: Duration, gave_up: GaveUp<Refusal>) -> SshError {
        match gave_up {
            GaveUp::Refused(refusal) => refusal.into_error(target, timeout).await,
            GaveUp::Spent { error, .. } => match error {
                Refusal::NotYet(error) | Refusal::Instance(error) | Refusal::Bastion(error) => {
                    SshError::ConnectTimeout { target: target.describe(), waited: timeout, last_error: error }
                }
            },
        }
    }
}

impl Refusal {
    /// The error this refusal is, as the last word of attempts that waited `timeout`.
    pub async fn into_error(self, target: &SshTarget, timeout: Duration) -> SshError {
        match self {
            Refusal::Bastion(said) => SshError::HostKey(bastion_refused(target, &said)),
            Refusal::Instance(said) => SshError::HostKey(host_key_refused(target, &said).await),
            Refusal::NotYet(error) => {
                SshError::ConnectTimeout { target: target.describe(), waited: timeout, last_error: error }
            }
        }
    }

    /// Whether trying again may help (not a host key refused).
    pub fn is_not_yet(&self) -> bool {
        matches!(self, Refusal::NotYet(_))
    }
}

/// The config block that sends every connection through `script` (run with `sh`; `%` escaped, as ssh expands
/// it in a `ProxyCommand`).
fn proxy_block(script: &Path) -> String {
    let quoted = shell_quote(&script.display().to_string()).replace('%', "%%");
    format!("Host *\n  ProxyCommand /bin/sh {quoted}\n")
}

/// Why one connect attempt failed.
pub enum Refusal {
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

/// How much of an upload's stderr its error message keeps.
const UPLOAD_ERROR_CHARS: usize = 2000;

/// Writes `content` to `remote_path` on the instance, over the channel's stdin (never on a command line), under
/// `umask 077`: a file it creates is the SSH user's alone (an existing file keeps its mode).
pub async fn upload(session: &Session, content: &[u8], remote_path: &str) -> Result<(), SshError> {
    let command_line = upload_command(remote_path);
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
    // Read to its end whatever it holds (bytes, any length: a login script's noise must not stall the upload);
    // the first lines are kept for the message.
    let mut stderr_text = String::new();
    if let Some(stderr) = child.stderr().take() {
        let mut lines = LineReader::new(stderr);
        while let Ok(Some(line)) = lines.next_line().await {
            if stderr_text.len() < UPLOAD_ERROR_CHARS {
                stderr_text.push_str(&line.text());
            }
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

/// The command an upload runs on the instance: only the path is on it.
fn upload_command(remote_path: &str) -> String {
    format!("umask 077 && cat > {}", shell_quote(remote_path))
}

/// Runs `command_line` with stdin from /dev/null, handing each output line to `on_line` as it arrives, as the
/// bytes printed: both pipes are read concurrently to their end (neither can fill and stall the remote side
/// while the other is waited on), a byte that is not UTF-8 is passed on, and a line longer than
/// [`MAX_LINE_BYTES`] comes in pieces of at most that ([`LineReader`]).
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
    let mut stdout = LineReader::new(child.stdout().take().expect("stdout is piped"));
    let mut stderr = LineReader::new(child.stderr().take().expect("stderr is piped"));
    let (mut stdout_open, mut stderr_open) = (true, true);
    while stdout_open || stderr_open {
        // Each reader keeps what it read of a line when the other stream wins the select.
        tokio::select! {
            read = stdout.next_line(), if stdout_open => match read {
                Ok(Some(line)) => on_line(OutputStream::Stdout, line),
                Ok(None) => stdout_open = false,
                Err(error) => return Err(SshError::Command(format!("cannot read the command's output: {error}"))),
            },
            read = stderr.next_line(), if stderr_open => match read {
                Ok(Some(line)) => on_line(OutputStream::Stderr, line),
                Ok(None) => stderr_open = false,
                Err(error) => return Err(SshError::Command(format!("cannot read the command's output: {error}"))),
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

/// Commands started over a connection whose end was not seen: their future was dropped (a provisioner's
/// `timeout`, an interrupt) while they ran on the instance. Each records its process group in a pid file on the
/// instance ([`run_ended_on_close`]); [`end_unfinished`] ends those groups when the connection closes. Best
/// effort: a command that starts a new session of its own escapes it (the instance is terminated anyway).
#[derive(Default)]
pub struct Unfinished(std::sync::Mutex<Vec<String>>);

impl Unfinished {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How long ending the unfinished commands may take (a command of its own, over the same connection).
const END_UNFINISHED_TIMEOUT: Duration = Duration::from_secs(15);

/// [`run_streaming`], with `command_line` run in a shell that first writes its process id, which is its
/// process group's (sshd starts each command in a session of its own), to a pid file named in `unfinished`
/// until the command ends here; a command whose future is dropped stays named there, for [`end_unfinished`].
pub async fn run_ended_on_close(
    session: &Session,
    unfinished: &Unfinished,
    command_line: &str,
    on_line: impl FnMut(OutputStream, OutputLine),
) -> Result<Exit, SshError> {
    let pid_file = format!("/tmp/fleetbake-command-{:016x}.pid", fastrand::u64(..));
    let wrapped = format!(
        "echo $$ > {pid}; sh -c {command}; status=$?; rm -f {pid}; exit $status",
        pid = shell_quote(&pid_file),
        command = shell_quote(command_line)
    );
    unfinished.lock().push(pid_file.clone());
    let result = run_streaming(session, &wrapped, on_line).await;
    unfinished.lock().retain(|path| *path != pid_file);
    result
}

/// Ends the process group of every command in `unfinished` (SIGTERM, a second later SIGKILL) and removes its
/// pid file; within [`END_UNFINISHED_TIMEOUT`], its failures logged.
pub async fn end_unfinished(session: &Session, unfinished: &Unfinished) {
    let pid_files = std::mem::take(&mut *unfinished.lock());
    if pid_files.is_empty() {
        return;
    }
    let command_line = end_command(&pid_files);
    let ended = tokio::time::timeout(END_UNFINISHED_TIMEOUT, run_streaming(session, &command_line, |_, _| {})).await;
    match ended {
        Ok(Ok(Exit::Success)) => tracing::debug!("ended {} unfinished command(s) on the instance", pid_files.len()),
        Ok(Ok(exit)) => tracing::warn!("ending the unfinished commands on the instance: {exit:?}"),
        Ok(Err(error)) => tracing::warn!("ending the unfinished commands on the instance: {error}"),
        Err(_) => {
            tracing::warn!("ending the unfinished commands on the instance took more than {END_UNFINISHED_TIMEOUT:?}")
        }
    }
}

/// The shell command that ends the process groups named in `pid_files` (a group id that is not a number
/// greater than 1 is skipped: `kill -1` would be every process of the user): TERM, then KILL to whatever of them
/// still runs after up to [`TERM_GRACE_SECONDS`] (checked each second). The grace lets a provisioner's shell run
/// its TERM trap (which removes its uploaded script) even on a loaded instance.
fn end_command(pid_files: &[String]) -> String {
    let files: Vec<String> = pid_files.iter().map(|path| shell_quote(path)).collect();
    format!(
        "groups=; for f in {}; do p=$(cat \"$f\" 2>/dev/null); rm -f \"$f\"; case \"$p\" in ''|*[!0-9]*|0|1) ;; \
         *) groups=\"$groups $p\"; kill -TERM \"-$p\" 2>/dev/null ;; esac; done; \
         if [ -n \"$groups\" ]; then n=0; while [ $n -lt {TERM_GRACE_SECONDS} ]; do alive=; \
         for p in $groups; do kill -0 \"-$p\" 2>/dev/null && alive=1; done; [ -n \"$alive\" ] || break; \
         sleep 1; n=$((n + 1)); done; for p in $groups; do kill -KILL \"-$p\" 2>/dev/null; done; fi; exit 0",
        files.join(" ")
    )
}

/// How long ended commands get between TERM and KILL ([`end_command`]), at most.
const TERM_GRACE_SECONDS: u32 = 5;

/// The longest piece of a line handed on at once: a longer line (a progress bar redrawn with `\r` for an hour,
/// a binary printed without a newline) comes in pieces of at most this many bytes, so reading it needs no more
/// memory than that, whatever the instance prints.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Reads a command's output stream as lines of bytes, each at most [`MAX_LINE_BYTES`] (longer ones split, on a
/// UTF-8 character boundary where the bytes are UTF-8). [`LineReader::next_line`] is cancellation-safe: what it
/// read before being dropped in a `select!` is kept for the next call.
pub struct LineReader<R> {
    reader: BufReader<R>,
    /// The line read so far (never more than [`MAX_LINE_BYTES`]).
    pending: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> LineReader<R> {
    pub fn new(stream: R) -> Self {
        LineReader { reader: BufReader::new(stream), pending: Vec::new() }
    }

    /// The next line (without its `\n` or `\r\n`) or piece of a long line; `None` at the end of the stream.
    pub async fn next_line(&mut self) -> std::io::Result<Option<OutputLine>> {
        loop {
            if self.pending.last() == Some(&b'\n') {
                return Ok(Some(without_ending(std::mem::take(&mut self.pending))));
            }
            let available = self.reader.fill_buf().await?;
            if self.pending.len() >= MAX_LINE_BYTES {
                // A line of exactly the limit ends here if its newline follows; else it is cut.
                if available.first() == Some(&b'\n') {
                    self.pending.push(b'\n');
                    self.reader.consume(1);
                    continue;
                }
                let rest = self.pending.split_off(utf8_boundary(&self.pending));
                return Ok(Some(OutputLine::new(std::mem::replace(&mut self.pending, rest))));
            }
            if available.is_empty() {
                return Ok((!self.pending.is_empty()).then(|| OutputLine::new(std::mem::take(&mut self.pending))));
            }
            let room = MAX_LINE_BYTES - self.pending.len();
            let window = &available[..available.len().min(room)];
            let used = window.iter().position(|&byte| byte == b'\n').map_or(window.len(), |newline| newline + 1);
            self.pending.extend_from_slice(&window[..used]);
            self.reader.consume(used);
        }
    }
}

/// `line` without its `\n` and a `\r` before it.
fn without_ending(mut line: Vec<u8>) -> OutputLine {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    OutputLine::new(line)
}

/// Where to cut `bytes` so that a UTF-8 character at their end is not split: before its first byte if it is
/// incomplete, else at the end. Bytes that are not UTF-8 are cut anywhere.
fn utf8_boundary(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes: look at the last 3 for the start of an incomplete one.
    for back in 1..=3.min(bytes.len()) {
        let at = bytes.len() - back;
        let byte = bytes[at];
        if byte & 0b1100_0000 != 0b1000_0000 {
            let length = match byte {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            return if length > back && at > 0 { at } else { bytes.len() };
        }
    }
    bytes.len()
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

    use tokio::io::AsyncWriteExt;

    /// Every line `LineReader` makes of `input`, written in `chunk`-byte writes.
    async fn lines_of(input: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let (mut writer, reader) = tokio::io::duplex(4096);
        let input = input.to_vec();
        let writing = tokio::spawn(async move {
            for piece in input.chunks(chunk.max(1)) {
                writer.write_all(piece).await.unwrap();
            }
        });
        let mut reader = LineReader::new(reader);
        let mut lines = Vec::new();
        while let Some(line) = reader.next_line().await.unwrap() {
            assert!(line.as_bytes().len() <= MAX_LINE_BYTES);
            lines.push(line.as_bytes().to_vec());
        }
        writing.await.unwrap();
        lines
    }

    #[tokio::test]
    async fn a_line_loses_its_ending_and_keeps_every_other_byte() {
        let lines = lines_of(b"caf\xc3\xa9 \xff\r\nlast, unterminated", 3).await;
        assert_eq!(lines, [b"caf\xc3\xa9 \xff".to_vec(), b"last, unterminated".to_vec()]);
        assert_eq!(lines_of(b"a\rb\n\n\nc\n", 1).await, [b"a\rb".to_vec(), vec![], vec![], b"c".to_vec()]);
        assert!(lines_of(b"", 1).await.is_empty());
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_comes_in_pieces_of_the_limit() {
        let long = vec![b'x'; 200_000];
        let mut input = long.clone();
        input.extend_from_slice(b"\nnext\n");
        let lines = lines_of(&input, 10_000).await;
        let lengths: Vec<usize> = lines.iter().map(Vec::len).collect();
        assert_eq!(lengths, [MAX_LINE_BYTES, MAX_LINE_BYTES, MAX_LINE_BYTES, 200_000 - 3 * MAX_LINE_BYTES, 4]);
        assert_eq!(lines[..4].concat(), long);
        assert_eq!(lines[4], b"next");
        // Exactly the limit, then its newline: one line, and no empty piece after it.
        let mut exact = vec![b'y'; MAX_LINE_BYTES];
        exact.push(b'\n');
        assert_eq!(lines_of(&exact, 7_000).await, [vec![b'y'; MAX_LINE_BYTES]]);
    }

    #[tokio::test]
    async fn a_long_line_is_not_cut_inside_a_character() {
        // 'é' is two bytes: the limit falls between them.
        let mut input = vec![b'a'; MAX_LINE_BYTES - 1];
        input.extend_from_slice("é and more".as_bytes());
        let lines = lines_of(&input, 5_000).await;
        assert_eq!(lines[0].len(), MAX_LINE_BYTES - 1);
        assert_eq!(lines[1], "é and more".as_bytes());
        assert!(lines.iter().all(|line| std::str::from_utf8(line).is_ok()));
    }

    #[test]
    fn the_cut_falls_before_an_incomplete_character_only() {
        assert_eq!(utf8_boundary(b"ab\xc3"), 2);
        assert_eq!(utf8_boundary(b"ab\xc3\xa9"), 4);
        assert_eq!(utf8_boundary(b"ab\xe2\x82"), 2);
        assert_eq!(utf8_boundary(b"a\xf0\x9f\x98"), 1);
        assert_eq!(utf8_boundary(b"a\xf0\x9f\x98\x80"), 5);
        assert_eq!(utf8_boundary(b"\xff\xff\xff\xff"), 4);
        assert_eq!(utf8_boundary(b"\x80\x80\x80\x80"), 4);
        assert_eq!(utf8_boundary(b"\xc3"), 1, "never an empty piece");
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
