//! The simulated communicator: "SSH" answers when the model says the instance's sshd is up; provisioners run
//! nothing, take their simulated time, and say what would have run.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::cloud::sim::SimCloud;
use crate::config::{Fleet, Provisioner};
use crate::remote::provision::{Described, ProvisionEnv, ProvisionError};
use crate::remote::{Communicator, ConnectTarget, Connection, OutputSink};
use crate::report::events::OutputStream;

pub struct SimCommunicator {
    sim: Arc<SimCloud>,
    fleet: Arc<Fleet>,
}

impl SimCommunicator {
    pub fn new(sim: Arc<SimCloud>, fleet: Arc<Fleet>) -> Self {
        SimCommunicator { sim, fleet }
    }
}

#[async_trait]
impl Communicator for SimCommunicator {
    async fn connect(&self, target: &ConnectTarget, timeout: Duration) -> Result<Box<dyn Connection>, String> {
        let ssh_at = self.sim.ssh_ready_at(&target.region, &target.instance)?;
        let deadline = Instant::now() + timeout;
        if ssh_at > deadline {
            tokio::time::sleep_until(deadline).await;
            return Err(format!(
                "no SSH connection to {}@{}:{} within {} (simulated)",
                target.ssh.user,
                target.ssh.host,
                target.ssh.port,
                humantime::format_duration(timeout)
            ));
        }
        tokio::time::sleep_until(ssh_at).await;
        let flavor = self.fleet.flavor(&target.flavor);
        let (total, count) = match flavor {
            Some(flavor) => (flavor.sim_provision.unwrap_or(self.sim.settings().provision), flavor.provisioners.len()),
            None => (self.sim.settings().provision, 1),
        };
        let each = total / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
        Ok(Box::new(SimConnection { sim: Arc::clone(&self.sim), each }))
    }
}

struct SimConnection {
    sim: Arc<SimCloud>,
    /// How long each provisioner takes: the flavor's provisioning time, shared out.
    each: Duration,
}

#[async_trait]
impl Connection for SimConnection {
    async fn provision(
        &self,
        number: usize,
        provisioner: &Provisioner,
        _env: &ProvisionEnv,
        output: OutputSink<'_>,
    ) -> Result<(), ProvisionError> {
        output(OutputStream::Stdout, format!("(sim) would run provisioner {number}: {}", Described(provisioner)));
        tokio::time::sleep(self.sim.jittered(self.each)).await;
        Ok(())
    }

    async fn close(self: Box<Self>) {}
}
