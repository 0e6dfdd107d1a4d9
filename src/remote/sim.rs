//! The simulated communicator: "SSH" answers when the model says the instance's sshd is up; provisioners run
//! nothing, take their simulated time, and say what would have run.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::cloud::sim::model::Model;
use crate::cloud::InstanceState;
use crate::config::{Fleet, Provisioner};
use crate::remote::provision::{Described, ProvisionEnv, ProvisionError};
use crate::remote::{Communicator, ConnectTarget, Connection, OutputSink};
use crate::report::events::OutputStream;

pub struct SimCommunicator {
    pub model: Arc<Model>,
    pub fleet: Arc<Fleet>,
}

#[async_trait]
impl Communicator for SimCommunicator {
    async fn connect(&self, target: &ConnectTarget, timeout: Duration) -> Result<Box<dyn Connection>, String> {
        let region = self.model.region(&target.region);
        let ssh_at = {
            let state = region.state.lock().expect("not poisoned");
            match state.instances.get(&target.instance) {
                Some(instance) if instance.state(Instant::now()) == InstanceState::Running => instance.ssh_at,
                Some(instance) => {
                    return Err(format!("instance {} is {:?}", target.instance, instance.state(Instant::now())))
                }
                None => return Err(format!("instance {} does not exist", target.instance)),
            }
        };
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
        let flavor = self.fleet.flavors.iter().find(|flavor| flavor.name == target.flavor);
        let (total, count) = match flavor {
            Some(flavor) => (flavor.sim_provision.unwrap_or(self.model.settings.provision), flavor.provisioners.len()),
            None => (self.model.settings.provision, 1),
        };
        let each = total / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
        Ok(Box::new(SimConnection { model: Arc::clone(&self.model), each }))
    }
}

struct SimConnection {
    model: Arc<Model>,
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
        tokio::time::sleep(self.model.jittered(self.each)).await;
        Ok(())
    }

    async fn close(self: Box<Self>) {}
}
