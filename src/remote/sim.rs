//! The simulated communicator: "SSH" answers when the model says the instance's sshd is up, with the host key
//! the model says answers there (checked like ssh does against the keys the build read from the console);
//! provisioners run nothing, take their simulated time, and say what would have run. Its `upload` and `exec`
//! (which the simulated provisioners do not go through: the connection is their [`StandIn`]) keep nothing and
//! run nothing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::cloud::sim::SimCloud;
use crate::cloud::{ErrorKind, InstanceId, SessionId};
use crate::config::{FlavorName, Fleet, Provisioner, Region};
use crate::remote::collect::{CollectError, Collected};
use crate::remote::provision::{Described, Phase, ProvisionCause, ProvisionEnv, ProvisionError};
use crate::remote::session_manager::{self, SessionManagerTarget};
use crate::remote::ssh::{mismatch_message, HostKeyCheck};
use crate::remote::{Communicator, ConnectTarget, Connection, Exit, OutputSink, RemoteError, StandIn, Via};
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
        let instance = &target.instance;
        let ssh_at = self.sim.ssh_ready_at(&instance.region, &instance.id)?;
        let deadline = Instant::now() + timeout;
        let ssh = match &target.via {
            Via::Ssh(ssh) => ssh,
            Via::SessionManager(through) => &through.ssh,
        };
        // Over an address, the instance's security group must admit whoever connects (Session Manager opens
        // no inbound port): a connection it does not admit is never answered, as on EC2.
        let admission = match &target.via {
            Via::Ssh(ssh) => self.sim.ssh_admission(&instance.region, &instance.id, ssh.bastion.is_some()),
            Via::SessionManager(_) => Ok(()),
        };
        if ssh_at > deadline || admission.is_err() {
            tokio::time::sleep_until(deadline).await;
            let waited = humantime::format_duration(timeout);
            let why = admission.err().map(|why| format!(": {why}")).unwrap_or_default();
            return Err(format!(
                "no SSH connection to {}@{}:{} within {waited} (simulated{why})",
                ssh.user, ssh.host, ssh.port
            ));
        }
        tokio::time::sleep_until(ssh_at).await;
        // Through Session Manager: a session opened (and journaled) like the real connection's, ended on close.
        let session = match &target.via {
            Via::Ssh(_) => None,
            Via::SessionManager(through) => Some(open_session(through, deadline, timeout).await?),
        };
        if let HostKeyCheck::Verify(expected) = &ssh.host_key {
            let offered = self.sim.offered_host_key(&instance.region, &instance.id)?;
            if !expected.has(&offered.fingerprint()) {
                let at = format!("{}@{}:{}", ssh.user, ssh.host, ssh.port);
                let offered = format!("{} ({})", offered.fingerprint(), offered.kind());
                return Err(format!("{} (simulated)", mismatch_message(&at, expected, &offered)));
            }
        }
        Ok(Box::new(SimConnection {
            sim: Arc::clone(&self.sim),
            fleet: Arc::clone(&self.fleet),
            flavor: instance.flavor.clone(),
            region: instance.region.clone(),
            instance: instance.id.clone(),
            session,
        }))
    }
}

/// StartSession until the model's agent answers (`TargetNotConnected` before), by `deadline`; the session
/// said to the build's book.
async fn open_session(
    through: &SessionManagerTarget,
    deadline: Instant,
    timeout: Duration,
) -> Result<(SessionManagerTarget, SessionId), String> {
    loop {
        match session_manager::open_session(through).await {
            Ok(session) => return Ok((through.clone(), session.id)),
            Err(error) if error.kind == ErrorKind::NotReady => {
                if Instant::now() + SESSION_RETRY > deadline {
                    tokio::time::sleep_until(deadline).await;
                    return Err(format!(
                        "no SSH connection to {} through Session Manager within {} (simulated): {error}",
                        through.instance,
                        humantime::format_duration(timeout)
                    ));
                }
                tokio::time::sleep(SESSION_RETRY).await;
            }
            Err(error) => return Err(format!("cannot start a Session Manager session (simulated): {error}")),
        }
    }
}

/// How often the simulated connection asks for a session while the agent is not connected.
const SESSION_RETRY: Duration = Duration::from_secs(3);

struct SimConnection {
    sim: Arc<SimCloud>,
    fleet: Arc<Fleet>,
    flavor: FlavorName,
    region: Region,
    instance: InstanceId,
    /// Through Session Manager: the session, ended on close.
    session: Option<(SessionManagerTarget, SessionId)>,
}

impl SimConnection {
    /// How long each provisioner (or, testing, each test) takes: the flavor's provisioning time (or `[sim]
    /// test`), shared out.
    fn each(&self, testing: bool) -> Duration {
        let settings = self.sim.settings();
        let flavor = self.fleet.flavor(&self.flavor);
        let (total, count) = match (flavor, testing) {
            (Some(flavor), false) => (flavor.sim_provision.unwrap_or(settings.provision), flavor.provisioners.len()),
            (Some(flavor), true) => (settings.test, flavor.tests.len()),
            (None, testing) => (if testing { settings.test } else { settings.provision }, 1),
        };
        total / u32::try_from(count.max(1)).unwrap_or(u32::MAX)
    }
}

#[async_trait]
impl StandIn for SimConnection {
    async fn provision(
        &self,
        number: usize,
        provisioner: &Provisioner,
        env: &ProvisionEnv,
        output: OutputSink<'_>,
    ) -> Result<(), ProvisionError> {
        let testing = matches!(env.phase, Phase::Test { .. });
        let kind = env.phase.noun();
        output(OutputStream::Stdout, format!("(sim) would run {kind} {number}: {}", Described(provisioner)).into());
        if env.phase == Phase::OnFailure {
            // What it would have printed is saved like a real one's; it takes a moment, never fails.
            tokio::time::sleep(ON_FAILURE_TAKES).await;
            return Ok(());
        }
        let takes = self.sim.jittered(self.each(testing));
        // A spot instance EC2 takes back while this runs: the connection drops then (`[sim] spot`).
        match self.sim.interrupted_at(&self.region, &self.instance) {
            Some(at) if at <= Instant::now() + takes => {
                tokio::time::sleep_until(at).await;
                let dropped =
                    format!("the connection to {} dropped (simulated: the instance is shutting down)", self.instance);
                output(OutputStream::Stderr, format!("(sim) {dropped}").into());
                return Err(ProvisionError::new(
                    env,
                    number,
                    provisioner,
                    ProvisionCause::Remote(RemoteError(dropped)),
                ));
            }
            _ => tokio::time::sleep(takes).await,
        }
        if testing && number == 1 && self.sim.test_fails(&self.region) {
            output(OutputStream::Stderr, "(sim) the test failed ([sim] faults)".into());
            return Err(ProvisionError::new(env, number, provisioner, ProvisionCause::ExitCode(1)));
        }
        if !testing && number == 1 && self.sim.provision_fails(&self.region) {
            output(OutputStream::Stderr, "(sim) the provisioner failed ([sim] faults)".into());
            return Err(ProvisionError::new(env, number, provisioner, ProvisionCause::ExitCode(1)));
        }
        Ok(())
    }
}

#[async_trait]
impl Connection for SimConnection {
    fn stand_in(&self) -> Option<&dyn StandIn> {
        Some(self)
    }

    async fn upload(&self, _content: &[u8], _remote_path: &str) -> Result<(), RemoteError> {
        Ok(())
    }

    async fn exec(&self, command_line: &str, output: OutputSink<'_>) -> Result<Exit, RemoteError> {
        output(OutputStream::Stdout, format!("(sim) would run `{command_line}`").into());
        Ok(Exit::Success)
    }

    async fn close(self: Box<Self>) {
        if let Some((through, id)) = self.session {
            session_manager::end_session(&through, &id).await;
            session_manager::end_every_session(&through).await;
        }
    }
    /// A simulated file: one line saying what would have been read (the instance holds no files).
    async fn read_file(&self, path: &str, cap: usize) -> Result<Collected, CollectError> {
        tokio::time::sleep(READ_FILE_TAKES).await;
        let mut bytes = format!("(sim) the contents of {path} on the simulated instance\n").into_bytes();
        let truncated = bytes.len() > cap;
        bytes.truncate(cap);
        Ok(Collected { bytes, truncated })
    }
}

/// How long a simulated `on_failure` provisioner and a simulated `collect` read take.
const ON_FAILURE_TAKES: Duration = Duration::from_secs(2);
const READ_FILE_TAKES: Duration = Duration::from_millis(200);
