//! How a build reaches its instance to provision it: the [`Communicator`] port and the [`Connection`] it opens
//! (`upload` and `exec`, which the [`provision`]ers run over), and [`SshCommunicator`], the real one over the
//! system ssh client ([`ssh`]); [`sim`] answers for the simulated cloud; [`net`] detects this machine's address
//! for the security group.
//!
//! Layer: `remote` imports `config`, `cloud` (instance ids, the simulated cloud's instances) and `report`
//! (output streams); never the steps, the state or the engine.

pub mod net;
pub mod provision;
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

/// The way in to an instance: a closed set, today SSH only (next: Session Manager).
pub enum Via {
    Ssh(SshTarget),
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

    /// Closes the connection; a command whose `exec` was not waited to its end (its future dropped: a time limit,
    /// an interrupt) is ended on the instance first, best effort.
    async fn close(self: Box<Self>);
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

/// The real communicator: openssh over the system ssh client.
pub struct SshCommunicator;

impl SshCommunicator {
    pub fn shared() -> Arc<dyn Communicator> {
        Arc::new(SshCommunicator)
    }
}

#[async_trait]
impl Communicator for SshCommunicator {
    async fn connect(&self, target: &ConnectTarget, timeout: Duration) -> Result<Box<dyn Connection>, String> {
        match &target.via {
            Via::Ssh(ssh) => {
                let files = ssh::KeyFiles::write(&ssh.private_key).map_err(|error| {
                    format!("cannot write the private key to a private temporary directory: {error}")
                })?;
                let session = ssh::connect(ssh, &files, timeout).await.map_err(|error| error.to_string())?;
                Ok(Box::new(SshConnection(session, files, ssh::Unfinished::default())))
            }
        }
    }
}

/// A session and its key files: the files go (the directory removed) after the session, when the connection
/// is closed or dropped. Commands whose end was not waited for (a time limit, an interrupt) are ended on the
/// instance when it is closed.
struct SshConnection(openssh::Session, ssh::KeyFiles, ssh::Unfinished);

#[async_trait]
impl Connection for SshConnection {
    async fn upload(&self, content: &[u8], remote_path: &str) -> Result<(), RemoteError> {
        ssh::upload(&self.0, content, remote_path).await.map_err(|error| RemoteError(error.to_string()))
    }

    async fn exec(&self, command_line: &str, output: OutputSink<'_>) -> Result<Exit, RemoteError> {
        ssh::run_ended_on_close(&self.0, &self.2, command_line, output)
            .await
            .map_err(|error| RemoteError(error.to_string()))
    }

    async fn close(self: Box<Self>) {
        let SshConnection(session, files, unfinished) = *self;
        ssh::end_unfinished(&session, &unfinished).await;
        if let Err(error) = session.close().await {
            tracing::debug!("closing the SSH session: {error}");
        }
        drop(files);
    }
}
