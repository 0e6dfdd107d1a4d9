//! How a build reaches its instance to provision it: the [`Communicator`] port and the [`Connection`] it opens
//! (`upload` and `exec`, which the [`provision`]ers run over), and [`SshCommunicator`], the real one over the
//! system ssh client ([`ssh`]), whose private directories on this machine [`key_dirs`] names and ends when a
//! killed run left them; [`authorized`] removes the build key from the image's `authorized_keys`; [`sim`]
//! answers for the simulated cloud; [`net`] detects this machine's address for the security group.
//!
//! Layer: `remote` imports `config`, `cloud` (instance ids, the simulated cloud's instances) and `report`
//! (output streams); never the steps, the state or the engine.

pub mod authorized;
pub mod collect;
pub mod key_dirs;
pub mod net;
pub mod provision;
pub mod session_manager;
pub mod sim;
pub mod ssh;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::cloud::InstanceId;
use crate::config::{FlavorName, Provisioner, Region};
use crate::report::events::{OutputLine, OutputStream};
use provision::{ProvisionEnv, ProvisionError};
use ssh::SshTarget;

/// The instance a build connects to, and its way in.
pub struct ConnectTarget {
    pub instance: TargetInstance,
    pub via: Via,
}

/// Which instance: its id, and the build it is for (which the simulated communicator models it by).
pub struct TargetInstance {
    pub id: InstanceId,
    pub flavor: FlavorName,
    pub region: Region,
}

/// The way in to an instance: a closed set.
pub enum Via {
    /// SSH to an address of the instance (perhaps through a bastion).
    Ssh(SshTarget),
    /// SSH through an SSM Session Manager session: no inbound port.
    SessionManager(session_manager::SessionManagerTarget),
}

/// Where provisioner output goes, line by line, as the bytes printed.
pub type OutputSink<'a> = &'a mut (dyn FnMut(OutputStream, OutputLine) + Send);

#[async_trait]
pub trait Communicator: Send + Sync {
    /// Connects, retrying until the instance answers or `timeout` passes.
    async fn connect(&self, target: &ConnectTarget, timeout: Duration) -> Result<Box<dyn Connection>, String>;
}

/// A command's failure to be carried out on the instance (not its exit status, which is an [`Exit`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(pub String);

/// How a remote command ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    Success,
    Code(i32),
    /// Killed by a signal, or the connection dropped.
    Abnormal(String),
}

/// A connection to one instance: what any way in offers, and all the provisioners need.
#[async_trait]
pub trait Connection: Send + Sync {
    /// Writes `content` to `remote_path` on the instance.
    async fn upload(&self, content: &[u8], remote_path: &str) -> Result<(), RemoteError>;

    /// Runs `command_line` (POSIX shell) with stdin from /dev/null, handing each output line to `output` as it
    /// arrives (as bytes, a longer line than 64 KiB in pieces).
    async fn exec(&self, command_line: &str, output: OutputSink<'_>) -> Result<Exit, RemoteError>;

    /// A connection that stands in for whole provisioners instead of running them over `upload` and `exec`:
    /// only the simulated one ([`sim`]). [`provision::run`] asks.
    fn stand_in(&self) -> Option<&dyn StandIn> {
        None
    }

    /// The public half of the temporary key this connection logged in with, which [`authorized::clear`]
    /// removes from the image: `Ok(None)` for a way in without one (the simulated connection).
    fn login_key(&self) -> Result<Option<authorized::LoginKey>, RemoteError> {
        Ok(None)
    }

    /// Closes the connection; a command whose `exec` was not waited to its end (its future dropped: a time limit,
    /// an interrupt) is ended on the instance first, best effort.
    async fn close(self: Box<Self>);

    /// Reads at most `cap` bytes of the file at `path` on the instance (`collect`, after a failure): by
    /// default one `exec` of a fixed command with the path single-quoted ([`collect::read_over_exec`]);
    /// the simulated connection answers with a simulated line.
    async fn read_file(&self, path: &str, cap: usize) -> Result<collect::Collected, collect::CollectError> {
        collect::read_over_exec(self, path, cap).await
    }
}

/// Stands in for a whole provisioner (the simulated connection: its simulated time, and a line saying what
/// would have run).
#[async_trait]
pub trait StandIn: Send + Sync {
    async fn provision(
        &self,
        number: usize,
        provisioner: &Provisioner,
        env: &ProvisionEnv,
        output: OutputSink<'_>,
    ) -> Result<(), ProvisionError>;
}

/// The real communicator: openssh over the system ssh client, for the run `run_id` (which its private
/// directories on this machine name as their owner, with this process).
pub struct SshCommunicator {
    run_id: String,
}

impl SshCommunicator {
    pub fn shared(run_id: &str) -> Arc<dyn Communicator> {
        Arc::new(SshCommunicator { run_id: run_id.to_string() })
    }
}

#[async_trait]
impl Communicator for SshCommunicator {
    async fn connect(&self, target: &ConnectTarget, timeout: Duration) -> Result<Box<dyn Connection>, String> {
        match &target.via {
            Via::Ssh(ssh) => {
                let owner = key_dirs::Owner::this_process(&self.run_id);
                let files = ssh::KeyFiles::write(&ssh.private_key, &owner).map_err(|error| {
                    format!("cannot write the private key to a private temporary directory: {error}")
                })?;
                let login_key = files.public_key().await;
                let connected = ssh::connect(ssh, &files, timeout).await;
                // Logged in or given up: the key file is not read again.
                files.forget_key();
                let session = connected.map_err(|error| error.to_string())?;
                Ok(Box::new(SshConnection { session, files, login_key, unfinished: ssh::Unfinished::default() }))
            }
            Via::SessionManager(target) => {
                session_manager::connect(target, &key_dirs::Owner::this_process(&self.run_id), timeout).await
            }
        }
    }
}

/// A session and its key files: the files go (the directory removed) after the session, when the connection
/// is closed or dropped. Commands whose end was not waited for (a time limit, an interrupt) are ended on the
/// instance when it is closed. `login_key`: the public half of the key it logged in with, or why it is not
/// known.
struct SshConnection {
    session: openssh::Session,
    files: ssh::KeyFiles,
    login_key: Result<String, String>,
    unfinished: ssh::Unfinished,
}

#[async_trait]
impl Connection for SshConnection {
    async fn upload(&self, content: &[u8], remote_path: &str) -> Result<(), RemoteError> {
        ssh::upload(&self.session, content, remote_path).await.map_err(|error| RemoteError(error.to_string()))
    }

    async fn exec(&self, command_line: &str, output: OutputSink<'_>) -> Result<Exit, RemoteError> {
        ssh::run_ended_on_close(&self.session, &self.unfinished, command_line, output)
            .await
            .map_err(|error| RemoteError(error.to_string()))
    }

    fn login_key(&self) -> Result<Option<authorized::LoginKey>, RemoteError> {
        authorized::LoginKey::of_connection(&self.login_key)
    }

    async fn close(self: Box<Self>) {
        let SshConnection { session, files, unfinished, .. } = *self;
        ssh::end_unfinished(&session, &unfinished).await;
        if let Err(error) = session.close().await {
            tracing::debug!("closing the SSH session: {error}");
        }
        drop(files);
    }
}
