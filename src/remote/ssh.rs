//! The SSH communicator: connects through the system ssh client (the openssh crate) with the build's
//! temporary key, retrying until the instance answers, and runs commands with their output streamed by line.
//! With a bastion, it jumps through it (`ssh -J`): the jump connection reads a private ssh config file that
//! names the bastion's key and known-hosts file (command-line options apply to the instance only).

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::cloud::retry::{retry, Outcome, Policy};
use crate::cloud::PrivateKey;
use crate::config::{ssh_fields, Bastion};
use crate::remote::Exit;
use crate::report::events::{OutputLine, OutputStream};

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

/// The private ssh config file a connection through `bastion` reads: only the bastion's block. The instances'
/// host keys are new every build (accepted); the bastion's is checked against its known-hosts file (and
/// recorded there the first time).
fn bastion_config(bastion: &Bastion) -> String {
    let known_hosts = match &bastion.known_hosts {
        Some(path) => ssh_fields::config_quoted(&path.to_string_lossy()),
        None => "~/.ssh/known_hosts".to_string(),
    };
    format!(
        "Host {BASTION_ALIAS}\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
         BatchMode yes\n  StrictHostKeyChecking accept-new\n  UserKnownHostsFile {known_hosts}\n  ConnectTimeout {}\n",
        bastion.host,
        bastion.port,
        bastion.user,
        ssh_fields::config_quoted(&bastion.private_key_file.to_string_lossy()),
        CONNECT_ATTEMPT_TIMEOUT.as_secs()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("no SSH connection to {target} within {}: {last_error}", humantime::format_duration(*waited))]
    ConnectTimeout { target: String, waited: Duration, last_error: String },
    #[error("{0}")]
    Command(String),
}

const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects, retrying every failure until `timeout` (sshd may not be up yet, nor the key installed):
/// [`Policy::ssh_connect`].
pub async fn connect(target: &SshTarget, files: &KeyFiles, timeout: Duration) -> Result<Session, SshError> {
    if let Some(problem) = ssh_fields::connection_problem(&target.host, &target.user, target.bastion.as_ref()) {
        return Err(SshError::Command(problem));
    }
    let mut builder = SessionBuilder::default();
    builder
        .user(target.user.clone())
        .port(target.port)
        .keyfile(&files.key_file)
        .known_hosts_check(KnownHosts::Accept)
        .user_known_hosts_file("/dev/null")
        .config_file("/dev/null")
        .connect_timeout(CONNECT_ATTEMPT_TIMEOUT)
        .server_alive_interval(Duration::from_secs(15))
        .control_directory(files.dir());
    if let Some(bastion) = &target.bastion {
        let config = files.dir().join("ssh_config");
        write_private_file(&config, &bastion_config(bastion))
            .map_err(|error| SshError::Command(format!("cannot write `{}`: {error}", config.display())))?;
        builder.config_file(&config).jump_hosts([BASTION_ALIAS]);
    }
    let connected = retry(
        Policy::ssh_connect(timeout).start(),
        |_| async {
            match builder.connect(&target.host).await {
                Ok(session) => Outcome::Done(Ok(session)),
                Err(error) => {
                    tracing::debug!(host = %target.host, port = target.port, "SSH not ready: {error}");
                    Outcome::Again(error)
                }
            }
        },
        |_, _| {},
    )
    .await;
    connected.map_err(|gave_up| SshError::ConnectTimeout {
        target: match &target.bastion {
            Some(bastion) => format!(
                "{}@{}:{} through {}@{}:{}",
                target.user, target.host, target.port, bastion.user, bastion.host, bastion.port
            ),
            None => format!("{}@{}:{}", target.user, target.host, target.port),
        },
        waited: timeout,
        last_error: gave_up.into_error().to_string(),
    })
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
}
