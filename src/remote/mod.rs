//! How a build reaches its instance to provision it: the [`Communicator`] port, and [`SshCommunicator`], the
//! real one over the system ssh client ([`ssh`], running [`provision`]ers); [`sim`] answers for the simulated
//! cloud; [`net`] detects this machine's address for the security group.
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
use crate::report::events::OutputStream;
use provision::{ProvisionEnv, ProvisionError};
use ssh::SshTarget;

/// The instance a build provisions, and how to reach it over SSH.
pub struct ConnectTarget {
    pub flavor: FlavorName,
    pub region: Region,
    pub instance: InstanceId,
    pub ssh: SshTarget,
}

/// Where provisioner output goes, line by line.
pub type OutputSink<'a> = &'a mut (dyn FnMut(OutputStream, String) + Send);

#[async_trait]
pub trait Communicator: Send + Sync {
    /// Connects, retrying until the instance answers or `timeout` passes.
    async fn connect(&self, target: &ConnectTarget, timeout: Duration) -> Result<Box<dyn Connection>, String>;
}

/// A connection to one instance.
#[async_trait]
pub trait Connection: Send + Sync {
    /// Runs provisioner `number` (1-based), streaming its output.
    async fn provision(
        &self,
        number: usize,
        provisioner: &Provisioner,
        env: &ProvisionEnv,
        output: OutputSink<'_>,
    ) -> Result<(), ProvisionError>;
    async fn close(self: Box<Self>);
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
        let files = ssh::KeyFiles::write(&target.ssh.private_key)
            .map_err(|error| format!("cannot write the private key to a private temporary directory: {error}"))?;
        let session = ssh::connect(&target.ssh, &files, timeout).await.map_err(|error| error.to_string())?;
        Ok(Box::new(SshConnection(session, files)))
    }
}

/// A session and its key files: the files go (the directory removed) after the session, when the connection
/// is closed or dropped.
struct SshConnection(openssh::Session, ssh::KeyFiles);

#[async_trait]
impl Connection for SshConnection {
    async fn provision(
        &self,
        number: usize,
        provisioner: &Provisioner,
        env: &ProvisionEnv,
        output: OutputSink<'_>,
    ) -> Result<(), ProvisionError> {
        provision::run(&self.0, number, provisioner, env, output).await
    }

    async fn close(self: Box<Self>) {
        let SshConnection(session, files) = *self;
        if let Err(error) = session.close().await {
            tracing::debug!("closing the SSH session: {error}");
        }
        drop(files);
    }
}
