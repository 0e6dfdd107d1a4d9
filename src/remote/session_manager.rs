//! Session Manager: ssh to the instance's own sshd through an SSM session (`AWS-StartSSHSession`), with no
//! inbound port. Each connect attempt opens one session (StartSession; `TargetNotConnected`, the agent not
//! connected yet, is waited out), says so to the build's [`SessionBook`] at once (which journals it), and runs
//! ssh with a `ProxyCommand` that hands the session to the `session-manager-plugin` binary, as the AWS CLI does:
//! `session-manager-plugin AWS_SSM_START_SESSION_RESPONSE <region> StartSession "" <request JSON> <endpoint>`,
//! the response (its token a secret) read from the environment variable named there, which the proxy script sets
//! from a 0600 file in the connection's private directory: the token is in no argv, and the file is removed as
//! soon as the attempt ends. A failed attempt ends its session before the next one.
//!
//! One session per SSH connection: the control master carries every command. When the master is gone (the
//! instance rebooted, the agent restarted), the next command reconnects first: the old session ended, a new
//! session, a new master ([`SessionManagerConnection`]). Closing the connection ends its session.
//!
//! Host keys are checked as over any other way in (strictly, against the console's keys), under the instance
//! id as the host name.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::cloud::retry::{retry, GaveUp, Outcome, Policy};
use crate::cloud::{CloudError, ErrorKind, InstanceId, RegionCloud, SessionId, SsmSession, SSH_SESSION_DOCUMENT};
use crate::remote::ssh::{self, Attempts, KeyFiles, Refusal, SshError, SshTarget};
use crate::remote::{authorized, key_dirs, Connection, Exit, OutputSink, RemoteError};

/// Where a Session Manager connection says which sessions it opens and ends: the build journals each the moment
/// it exists, and hands what is still open when the connection is done to its cleanup stack.
pub trait SessionBook: Send + Sync {
    /// StartSession answered with `session`.
    fn opened(&self, session: &SessionId);
    /// TerminateSession answered for `session`.
    fn ended(&self, session: &SessionId);
}

/// An instance reached through Session Manager.
#[derive(Clone)]
pub struct SessionManagerTarget {
    /// ssh's side: the instance id as the host name, the instance's own sshd port, the key, the host keys.
    pub ssh: SshTarget,
    pub instance: InstanceId,
    /// The instance's region, where the sessions are started.
    pub cloud: Arc<dyn RegionCloud>,
    /// The `session-manager-plugin` binary, resolved ([`find_plugin`]).
    pub plugin: PathBuf,
    /// The SSM endpoint the plugin is told (it only names it in its own logs).
    pub endpoint: String,
    pub sessions: Arc<dyn SessionBook>,
}

/// How long one attempt (StartSession, then ssh through the plugin) may take before it is given up and its
/// session ended: a plugin that never answers cannot hold a build past `[ssh] timeout`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to do about a missing plugin.
pub const PLUGIN_HINT: &str = "install AWS's `session-manager-plugin` (https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html) or name it with `[ssh] session_manager_plugin`";

/// The plugin named `plugin`: a path as it is, a name looked up on `PATH`; `None` if there is no such file.
pub fn find_plugin(plugin: &Path) -> Option<PathBuf> {
    if plugin.components().count() > 1 || plugin.is_absolute() {
        return plugin.is_file().then(|| plugin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(plugin)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// What `<plugin> --version` prints (its first line, control characters shown as `?`, at most 100 characters),
/// within 10 seconds of real time (a blocking thread's own clock: under `--cloud sim` Tokio's clock is virtual,
/// and a real process must not be timed by it); or why it cannot be run.
pub async fn plugin_version(plugin: &Path) -> Result<String, String> {
    let plugin = plugin.to_path_buf();
    let ran = tokio::task::spawn_blocking(move || run_version(&plugin, Duration::from_secs(10)))
        .await
        .map_err(|error| format!("cannot run it: {error}"))??;
    let first = ran.lines().next().unwrap_or_default().trim();
    let shown: String = first.chars().take(100).map(|c| if c.is_control() { '?' } else { c }).collect();
    Ok(if shown.is_empty() { "(no version printed)".to_string() } else { shown })
}

/// Runs `plugin --version` (stdin and stderr closed), waiting at most `limit`: its stdout (the first KiB).
fn run_version(plugin: &Path, limit: Duration) -> Result<String, String> {
    use std::io::Read;
    let mut child = std::process::Command::new(plugin)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot run it: {error}"))?;
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`--version` did not answer within {}", humantime::format_duration(limit)));
            }
            Err(error) => return Err(format!("cannot run it: {error}")),
        }
    };
    let mut output = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout.take(1024).read_to_end(&mut output);
    }
    if !status.success() {
        return Err(format!("`--version` failed ({status})"));
    }
    Ok(String::from_utf8_lossy(&output).into_owned())
}

/// The files and options of a connection through Session Manager: the key files, the proxy script, the
/// session file it reads, and the prepared ssh attempts.
struct Tunnel {
    target: SessionManagerTarget,
    files: KeyFiles,
    attempts: Attempts,
    /// Where an attempt's StartSession answer is, for the life of that attempt (0600).
    session_file: PathBuf,
}

/// A session and the master that carries it.
struct Live {
    session: openssh::Session,
    id: SessionId,
}

/// Why one attempt failed.
enum Failed {
    /// Not yet (the agent not connected, sshd not up): tried again.
    NotYet(String),
    /// A host key refused.
    Refused(Refusal),
    /// SSM refused (permissions, a bad document): no pause changes it.
    Cloud(CloudError),
}

impl Tunnel {
    fn new(target: &SessionManagerTarget, owner: &key_dirs::Owner) -> Result<Tunnel, String> {
        let files = ssh::KeyFiles::write(&target.ssh.private_key, owner)
            .map_err(|error| format!("cannot write the private key to a private temporary directory: {error}"))?;
        let session_file = files.dir().join("session.json");
        let script = files.dir().join("proxy");
        ssh::write_private_file(&script, &proxy_script(target, &session_file))
            .map_err(|error| format!("cannot write `{}`: {error}", script.display()))?;
        let attempts = Attempts::prepare(&target.ssh, &files, Some(&script)).map_err(|error| error.to_string())?;
        Ok(Tunnel { target: target.clone(), files, attempts, session_file })
    }

    /// Opens a session and a master through it, trying again (a new session each time) until `timeout`.
    async fn connect(&self, timeout: Duration) -> Result<Live, SshError> {
        let connected = retry(
            Policy::ssh_connect(timeout).start(),
            |_| async {
                match tokio::time::timeout(ATTEMPT_TIMEOUT, self.attempt()).await {
                    Ok(outcome) => outcome,
                    Err(_) => Outcome::Again(Failed::NotYet(format!(
                        "no SSH through the session within {}",
                        humantime::format_duration(ATTEMPT_TIMEOUT)
                    ))),
                }
            },
            |_, _| {},
        )
        .await;
        // An attempt cut short by its time limit may have left its file.
        let _ = std::fs::remove_file(&self.session_file);
        let ssh = &self.target.ssh;
        let described = format!("{} through Session Manager ({}:{})", self.target.instance, ssh.user, ssh.port);
        match connected {
            Ok(live) => Ok(live),
            Err(GaveUp::Refused(Failed::Refused(refusal))) => Err(refusal.into_error(ssh, timeout).await),
            Err(GaveUp::Refused(Failed::Cloud(error)) | GaveUp::Spent { error: Failed::Cloud(error), .. }) => {
                Err(SshError::Command(format!("cannot start a Session Manager session to {described}: {error}")))
            }
            Err(GaveUp::Spent { error: Failed::Refused(refusal), .. }) => Err(refusal.into_error(ssh, timeout).await),
            Err(GaveUp::Refused(Failed::NotYet(error)) | GaveUp::Spent { error: Failed::NotYet(error), .. }) => {
                Err(SshError::ConnectTimeout { target: described, waited: timeout, last_error: error })
            }
        }
    }

    /// One session, and ssh through it; a failure ends the session before it returns.
    async fn attempt(&self) -> Outcome<Live, Failed> {
        let session = match open_session(&self.target).await {
            Ok(session) => session,
            Err(error) if error.kind == ErrorKind::NotReady => {
                return Outcome::Again(Failed::NotYet(format!("the instance's SSM agent is not connected: {error}")))
            }
            Err(error) => return Outcome::Done(Err(Failed::Cloud(error))),
        };
        let connected = self.ssh_through(&session).await;
        let _ = std::fs::remove_file(&self.session_file);
        match connected {
            Ok(master) => Outcome::Done(Ok(Live { session: master, id: session.id })),
            Err(failed) => {
                self.end(&session.id).await;
                match failed {
                    Failed::Refused(refusal) if refusal.is_not_yet() => Outcome::Again(Failed::Refused(refusal)),
                    Failed::NotYet(said) => Outcome::Again(Failed::NotYet(said)),
                    other => Outcome::Done(Err(other)),
                }
            }
        }
    }

    /// ssh through `session`: its answer in the session file for the proxy script to read.
    async fn ssh_through(&self, session: &SsmSession) -> Result<openssh::Session, Failed> {
        let _ = std::fs::remove_file(&self.session_file);
        ssh::write_private_file(&self.session_file, &session_response(session))
            .map_err(|error| Failed::NotYet(format!("cannot write `{}`: {error}", self.session_file.display())))?;
        match self.attempts.attempt(&self.target.ssh).await {
            Outcome::Done(Ok(master)) => Ok(master),
            Outcome::Done(Err(refusal)) => Err(Failed::Refused(refusal)),
            Outcome::Again(refusal) | Outcome::AgainAtOnce(refusal) => Err(Failed::Refused(refusal)),
        }
    }

    /// Ends `session` (TerminateSession, idempotent); one that cannot be ended stays in the book, for the
    /// build's cleanup stack.
    async fn end(&self, session: &SessionId) {
        end_session(&self.target, session).await;
    }
}

/// StartSession to `target` (`AWS-StartSSHSession` to its sshd's port), the session said to its book the moment
/// it exists. The real and the simulated connections both open their sessions here.
pub async fn open_session(target: &SessionManagerTarget) -> Result<SsmSession, CloudError> {
    let session = target.cloud.start_session(&target.instance, target.ssh.port).await?;
    target.sessions.opened(&session.id);
    Ok(session)
}

/// TerminateSession (idempotent), said to the book; a session that cannot be ended stays in the book, for the
/// build's cleanup stack. The real and the simulated connections both end their sessions here.
pub async fn end_session(target: &SessionManagerTarget, session: &SessionId) {
    match target.cloud.terminate_session(session).await {
        Ok(()) => target.sessions.ended(session),
        Err(error) => tracing::warn!("ending Session Manager session {session}: {error}"),
    }
}

/// Ends every session still active to `target`'s instance (DescribeSessions, then TerminateSession each): a
/// StartSession whose answer was lost (the call retried) opened one whose id only this finds. The instance is
/// this run's temporary one, so every session to it is this run's. A failure is logged; the build's cleanup
/// stack looks again before the instance is terminated.
pub async fn end_every_session(target: &SessionManagerTarget) {
    match target.cloud.active_sessions(&target.instance).await {
        Ok(sessions) => {
            for session in &sessions {
                end_session(target, session).await;
            }
        }
        Err(error) => tracing::warn!("listing the Session Manager sessions to {}: {error}", target.instance),
    }
}

/// The session response the plugin reads from `AWS_SSM_START_SESSION_RESPONSE`.
fn session_response(session: &SsmSession) -> String {
    serde_json::json!({
        "SessionId": session.id.as_str(),
        "StreamUrl": session.stream_url,
        "TokenValue": session.token.expose(),
    })
    .to_string()
}

/// The script ssh's `ProxyCommand` runs: the response read into the environment (an assignment's expansion is
/// in no argv), then the plugin, as the AWS CLI starts it.
fn proxy_script(target: &SessionManagerTarget, session_file: &Path) -> String {
    let request = serde_json::json!({
        "Target": target.instance.as_str(),
        "DocumentName": SSH_SESSION_DOCUMENT,
        "Parameters": { "portNumber": [target.ssh.port.to_string()] },
    });
    let quote = |text: &str| ssh::shell_quote(text);
    format!(
        "AWS_SSM_START_SESSION_RESPONSE=$(cat {file}) || exit 1\nexport AWS_SSM_START_SESSION_RESPONSE\n\
         exec {plugin} AWS_SSM_START_SESSION_RESPONSE {region} StartSession '' {request} {endpoint}\n",
        file = quote(&session_file.display().to_string()),
        plugin = quote(&target.plugin.display().to_string()),
        region = quote(target.cloud.region().as_str()),
        request = quote(&request.to_string()),
        endpoint = quote(&target.endpoint),
    )
}

/// Connects to `target` within `timeout`.
pub async fn connect(
    target: &SessionManagerTarget,
    owner: &key_dirs::Owner,
    timeout: Duration,
) -> Result<Box<dyn Connection>, String> {
    let tunnel = Tunnel::new(target, owner)?;
    let login_key = tunnel.files.public_key().await;
    let connected = tunnel.connect(timeout).await;
    // Logged in or given up: the key file is written again only to reconnect.
    tunnel.files.forget_key();
    let live = connected.map_err(|error| error.to_string())?;
    Ok(Box::new(SessionManagerConnection {
        tunnel,
        live: tokio::sync::Mutex::new(Some(live)),
        login_key,
        unfinished: ssh::Unfinished::default(),
        reconnect_timeout: timeout,
    }))
}

/// How many times (100 ms apart) a command that ended without a status looks whether its master exited.
const MASTER_EXIT_CHECKS: u32 = 30;

/// A connection through Session Manager. Each command first checks its master is alive; a master gone (a
/// reboot) is replaced: its session ended, a new one opened, within `[ssh] timeout`.
pub struct SessionManagerConnection {
    tunnel: Tunnel,
    /// The session and master in use (`None` once closed, or after a reconnect that failed).
    live: tokio::sync::Mutex<Option<Live>>,
    login_key: Result<String, String>,
    unfinished: ssh::Unfinished,
    reconnect_timeout: Duration,
}

impl SessionManagerConnection {
    /// The master in use, reconnected first if it is gone.
    async fn live(&self) -> Result<tokio::sync::MappedMutexGuard<'_, openssh::Session>, RemoteError> {
        let mut live = self.live.lock().await;
        let alive = match live.as_ref() {
            Some(current) => current.session.check().await.is_ok(),
            None => false,
        };
        if !alive {
            if let Some(gone) = live.take() {
                tracing::info!("the SSH connection through session {} is gone; reconnecting", gone.id);
                // Its master is gone already: what is left of it goes, then its session.
                let _ = gone.session.close().await;
                self.tunnel.end(&gone.id).await;
            }
            ssh::write_private_file(&self.tunnel.files.key_path(), self.tunnel.target.ssh.private_key.expose())
                .map_err(|error| RemoteError(format!("cannot write the key to reconnect: {error}")))?;
            let connected = self.tunnel.connect(self.reconnect_timeout).await;
            self.tunnel.files.forget_key();
            *live = Some(connected.map_err(|error| RemoteError(format!("reconnecting: {error}")))?);
        }
        Ok(tokio::sync::MutexGuard::map(live, |live| &mut live.as_mut().expect("connected just now").session))
    }
}

#[async_trait]
impl Connection for SessionManagerConnection {
    async fn upload(&self, content: &[u8], remote_path: &str) -> Result<(), RemoteError> {
        let session = self.live().await?;
        ssh::upload(&session, content, remote_path).await.map_err(|error| RemoteError(error.to_string()))
    }

    async fn exec(&self, command_line: &str, output: OutputSink<'_>) -> Result<Exit, RemoteError> {
        let session = self.live().await?;
        let ran = ssh::run_ended_on_close(&session, &self.unfinished, command_line, output)
            .await
            .map_err(|error| RemoteError(error.to_string()));
        if !matches!(ran, Ok(Exit::Success | Exit::Code(0..=254))) {
            // ssh's 255, or no status: perhaps the connection dropped (a reboot). The master may take a moment to
            // notice; the next command must find it gone, not start over a dying one.
            for _ in 0..MASTER_EXIT_CHECKS {
                if session.check().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        ran
    }

    fn login_key(&self) -> Result<Option<authorized::LoginKey>, RemoteError> {
        authorized::LoginKey::of_connection(&self.login_key)
    }

    async fn close(self: Box<Self>) {
        let SessionManagerConnection { tunnel, live, unfinished, .. } = *self;
        if let Some(Live { session, id }) = live.into_inner() {
            ssh::end_unfinished(&session, &unfinished).await;
            if let Err(error) = session.close().await {
                tracing::debug!("closing the SSH session: {error}");
            }
            tunnel.end(&id).await;
        }
        end_every_session(&tunnel.target).await;
        drop(tunnel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_file_holds_the_token_and_the_script_only_its_path() {
        let session = SsmSession {
            id: SessionId::new("fleetbake-1"),
            stream_url: "wss://ssmmessages.us-west-2.amazonaws.com/v1/data-channel/fleetbake-1".into(),
            token: crate::cloud::SessionToken::new("secret-token".into()),
        };
        let response: serde_json::Value = serde_json::from_str(&session_response(&session)).unwrap();
        assert_eq!(response["TokenValue"], "secret-token");
        assert_eq!(response["SessionId"], "fleetbake-1");
    }
}
