//! How a build reaches its instance: [`Reach`], the closed set of ways in, each preparing what it needs before
//! the launch and, once the instance runs, yielding the [`ConnectTarget`] the communicator connects to. SSH to
//! an address: a temporary key pair, and a security group whose one ingress rule lets the builder in. Session
//! Manager: the key pair, and a security group with no ingress rule at all; before connecting, the instance's
//! SSM agent is waited for (online), and every session the connection opens is journaled at once
//! ([`BuildSessions`]) and, if its connection did not end it, left to the cleanup stack, which also ends every
//! session still active to the instance before terminating it (`UndoStep::EndSessionsTo`: one a lost StartSession
//! answer opened has an id the build never learned).
//!
//! Layer: `steps` (part of [`super`], the build).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cloud::consistency::{once_known, Created, NewKind};
use crate::cloud::hints;
use crate::cloud::retry::{retry_cancellable, Backoff, GaveUp, Outcome, Policy, Stopped};
use crate::cloud::{
    CloudError, ErrorKind, IngressSources, InstanceId, InstanceStatus, KeyPairName, PrivateKey, SecurityGroupId,
    SessionId, VpcId,
};
use crate::config::{Bastion, HostKeyPolicy, Region};
use crate::outcome::Stage;
use crate::plan::JobKey;
use crate::remote::session_manager::{find_plugin, SessionBook, SessionManagerTarget, PLUGIN_HINT};
use crate::remote::ssh::{HostKeyCheck, SshTarget};
use crate::remote::{ConnectTarget, Connection, TargetInstance, Via};
use crate::steps::adopt;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::ledger::{Ledger, Resource, ResourceKind};
use crate::steps::network::{AddressKind, Network};
use crate::util::host_keys::HostKeys;

use super::{BuildContext, StepError};

/// A build's way in to its instance.
pub(super) enum Reach {
    Ssh(SshReach),
    SessionManager(SessionManagerReach),
}

/// SSH through Session Manager, as `[ssh]` and the flavor say: no inbound port.
pub(super) struct SessionManagerReach {
    port: u16,
    user: String,
    vpc: Option<VpcId>,
    /// How long to wait for the agent and then SSH (`[ssh] timeout`, both together).
    timeout: Duration,
    host_key: HostKeyPolicy,
    host_key_wait: Duration,
    /// `[ssh] session_manager_plugin`, as configured (found when the target is made).
    plugin: PathBuf,
    /// The instance profile the agent registers with (for the hint when it does not).
    profile: Option<String>,
    /// The sessions this build's connections open, journaled.
    sessions: Arc<BuildSessions>,
}

/// The sessions a build's connections open: each journaled the moment StartSession answers, its removal when
/// TerminateSession does; what is still open when a connection is done goes to the cleanup stack
/// ([`BuildSessions::left_open`]).
pub(super) struct BuildSessions {
    ledger: Arc<dyn Ledger>,
    job: JobKey,
    region: Region,
    open: std::sync::Mutex<Vec<SessionId>>,
}

impl BuildSessions {
    fn resource(&self, session: &SessionId) -> Resource {
        Resource::new(self.region.clone(), ResourceKind::Session, session.to_string())
    }

    fn open(&self) -> std::sync::MutexGuard<'_, Vec<SessionId>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands every session still open to `stack` (TerminateSession, idempotent), and forgets them here.
    pub(super) fn left_open(&self, stack: &mut CleanupStack) {
        for id in std::mem::take(&mut *self.open()) {
            stack.push(UndoStep::TerminateSession { id });
        }
    }
}

impl SessionBook for BuildSessions {
    fn opened(&self, session: &SessionId) {
        self.ledger.created(&self.job, self.resource(session));
        self.open().push(session.clone());
    }

    fn ended(&self, session: &SessionId) {
        self.ledger.removed(self.resource(session));
        self.open().retain(|open| open != session);
    }
}

/// SSH as `[ssh]` and the flavor say, in the network the build settled.
pub(super) struct SshReach {
    address: SshAddress,
    port: u16,
    user: String,
    bastion: Option<Bastion>,
    /// Who the security group lets in on `port`.
    sources: IngressSources,
    /// Where the security group is made (`None`: the default VPC).
    vpc: Option<VpcId>,
    /// How long to wait for the instance to answer (`[ssh] timeout`).
    timeout: Duration,
    /// How the instance's host key is known (the flavor's `host_key`, else `[ssh] host_key`).
    host_key: HostKeyPolicy,
    /// How long to wait for its host keys on its console (`[ssh] host_key_wait`).
    host_key_wait: Duration,
}

/// Why a read of an instance's console gave no host keys.
enum NoHostKeys {
    /// The console has no complete block of valid keys (yet).
    NotYet,
    /// EC2's answer.
    Cloud(CloudError),
}

/// Which address SSH connects to.
enum SshAddress {
    /// `[ssh] host`.
    Configured(String),
    /// The instance's own, of this kind; `why` is said in the output.
    OfInstance { kind: AddressKind, why: String },
}

/// What a way in made before the launch: what the launch names, and what the target will need.
pub(super) struct Prepared {
    pub key_name: KeyPairName,
    pub security_group: SecurityGroupId,
    /// The calls that made them: the launch right after them may meet EC2's lag.
    pub fresh: Vec<Created>,
    /// The key pair's private key, kept in memory: the communicator writes it to a private file only while it
    /// is connected.
    private_key: PrivateKey,
}

impl Reach {
    /// The way in `[ssh]` and the flavor's `interface` describe, in `network`.
    pub(super) fn new(context: &BuildContext, network: &Network) -> Reach {
        if !context.flavor.interface.is_session_manager() {
            return Reach::ssh(context, network);
        }
        let settings = &context.run.fleet.ssh;
        Reach::SessionManager(SessionManagerReach {
            port: settings.port,
            user: context.flavor.ssh_username.clone(),
            vpc: network.vpc.clone(),
            timeout: settings.timeout,
            host_key: context.flavor.host_key,
            host_key_wait: settings.host_key_wait,
            plugin: settings.session_manager_plugin.clone(),
            profile: context.flavor.iam_instance_profile.clone(),
            sessions: Arc::new(BuildSessions {
                ledger: Arc::clone(&context.run.ledger),
                job: context.job.key(),
                region: context.job.region.clone(),
                open: std::sync::Mutex::default(),
            }),
        })
    }

    /// The sessions the way in opens (Session Manager's), if any.
    pub(super) fn sessions(&self) -> Option<Arc<BuildSessions>> {
        match self {
            Reach::Ssh(_) => None,
            Reach::SessionManager(through) => Some(Arc::clone(&through.sessions)),
        }
    }

    /// How the instance's host key is known, and how long its console is read for it.
    fn host_key_policy(&self) -> (HostKeyPolicy, Duration) {
        match self {
            Reach::Ssh(ssh) => (ssh.host_key, ssh.host_key_wait),
            Reach::SessionManager(through) => (through.host_key, through.host_key_wait),
        }
    }

    /// The way in `[ssh]` describes, in `network`.
    fn ssh(context: &BuildContext, network: &Network) -> Reach {
        let settings = &context.run.fleet.ssh;
        let address = match &settings.host {
            Some(host) => SshAddress::Configured(host.clone()),
            None => SshAddress::OfInstance { kind: network.address, why: network.why.clone() },
        };
        Reach::Ssh(SshReach {
            address,
            port: settings.port,
            user: context.flavor.ssh_username.clone(),
            bastion: settings.bastion.clone(),
            sources: network.ssh_sources.clone(),
            vpc: network.vpc.clone(),
            timeout: settings.timeout,
            host_key: context.flavor.host_key,
            host_key_wait: settings.host_key_wait,
        })
    }

    /// Makes what the way in needs before the launch, each on `stack` and journaled as it is made; `name`
    /// names them.
    pub(super) async fn prepare(
        &self,
        context: &BuildContext,
        stack: &mut CleanupStack,
        name: &str,
    ) -> Result<Prepared, StepError> {
        let key_name = KeyPairName(name.to_string());
        let private_key = adopt::key_pair(&*context.cloud, &key_name, &context.temporary_tags())
            .await
            .map_err(|error| StepError::cloud(Stage::KeyPair, error))?;
        let key_pair = Created::now(NewKind::KeyPair);
        stack.push(UndoStep::DeleteKeyPair { name: key_name.clone() });
        context.created(ResourceKind::KeyPair, &key_name);
        context.progress(Stage::KeyPair, format!("created temporary key pair {key_name}"));
        let (vpc, ingress) = match self {
            Reach::Ssh(ssh) => (ssh.vpc.as_ref(), Some((ssh.port, &ssh.sources))),
            Reach::SessionManager(through) => (through.vpc.as_ref(), None),
        };
        let (security_group, group) = create_security_group(context, stack, vpc, ingress, name).await?;
        Ok(Prepared { key_name, security_group, fresh: vec![key_pair, group], private_key })
    }

    /// How `instance` (running) will be recognised: with `host_key = "console"`, the host keys cloud-init
    /// prints on its console, read as soon as they are there (polled: [`Policy::console_keys`]), within
    /// `[ssh] host_key_wait`; none in time fails the job at `connect`, with a hint.
    pub(super) async fn host_key(
        &self,
        context: &BuildContext,
        instance: &InstanceId,
    ) -> Result<HostKeyCheck, StepError> {
        let (host_key, host_key_wait) = self.host_key_policy();
        if host_key == HostKeyPolicy::Accept {
            context
                .progress(Stage::Connect, format!("accepting any host key from {instance} (`host_key = \"accept\"`)"));
            return Ok(HostKeyCheck::Accept);
        }
        context.progress(Stage::Connect, format!("reading the host keys of {instance} from its console"));
        let cloud = &*context.cloud;
        let read = retry_cancellable(
            Policy::console_keys(host_key_wait).start(),
            &context.cancel,
            |_| async {
                match cloud.console_output(instance).await {
                    Ok(console) => match HostKeys::from_console(&console.0) {
                        Some(keys) => Outcome::Done(Ok(keys)),
                        None => Outcome::Again(NoHostKeys::NotYet),
                    },
                    // Just launched: EC2 may not know it everywhere yet.
                    Err(error) if error.kind == ErrorKind::NotFound => Outcome::Again(NoHostKeys::Cloud(error)),
                    Err(error) => Outcome::Done(Err(NoHostKeys::Cloud(error))),
                }
            },
            |_, _| {},
        )
        .await;
        match read {
            Ok(keys) => {
                context.progress(
                    Stage::Connect,
                    format!("host keys of {instance} from its console: {}", keys.fingerprints()),
                );
                Ok(HostKeyCheck::Verify(keys))
            }
            Err(Stopped::Cancelled) => Err(StepError::interrupted(Stage::Connect)),
            Err(Stopped::GaveUp(gave_up)) => match gave_up.into_error() {
                NoHostKeys::Cloud(error) => Err(StepError::cloud(Stage::Connect, error)),
                NoHostKeys::NotYet => Err(self.no_host_keys(context, instance)),
            },
        }
    }

    /// No host keys on `instance`'s console within `[ssh] host_key_wait`.
    fn no_host_keys(&self, context: &BuildContext, instance: &InstanceId) -> StepError {
        let waited = humantime::format_duration(self.host_key_policy().1);
        let mut error = StepError::new(
            Stage::Connect,
            format!("no SSH host keys on the console of {instance} within {waited} (`[ssh] host_key_wait`)"),
        );
        error.hint = Some(format!(
            "if the image prints no host keys (cloud-init's `-----BEGIN SSH HOST KEY KEYS-----` block), set `host_key = \"accept\"` for flavor `{}` (or `[ssh] host_key`): its instances' host keys are then not checked",
            context.flavor.name
        ));
        error
    }

    /// Where to connect to `instance`, now running as `running`, recognised by `host_key`.
    pub(super) fn target(
        &self,
        prepared: Prepared,
        instance: TargetInstance,
        running: &InstanceStatus,
        host_key: HostKeyCheck,
    ) -> Result<ConnectTarget, StepError> {
        let via = match self {
            Reach::Ssh(ssh) => {
                let host = match &ssh.address {
                    SshAddress::Configured(host) => host.clone(),
                    SshAddress::OfInstance { kind, .. } => kind.of(running).ok_or_else(|| {
                        StepError::new(
                            Stage::Connect,
                            format!(
                                "instance {} has no {kind} to connect to; set `[ssh] interface` (or a subnet that gives public addresses)",
                                instance.id
                            ),
                        )
                    })?,
                };
                let (port, user, bastion) = (ssh.port, ssh.user.clone(), ssh.bastion.clone());
                Via::Ssh(SshTarget { host, port, user, private_key: prepared.private_key, bastion, host_key })
            }
            Reach::SessionManager(_) => {
                return Err(StepError::new(Stage::Connect, "a Session Manager target is made by `session_target`"))
            }
        };
        Ok(ConnectTarget { instance, via })
    }

    /// Where to connect to `instance` through Session Manager, recognised by `host_key`: its id as the host name
    /// ssh checks the key under, the plugin found.
    pub(super) fn session_target(
        &self,
        context: &BuildContext,
        prepared: Prepared,
        instance: TargetInstance,
        host_key: HostKeyCheck,
    ) -> Result<ConnectTarget, StepError> {
        let Reach::SessionManager(through) = self else {
            return Err(StepError::new(Stage::Connect, "not a Session Manager build"));
        };
        let plugin = find_plugin(&through.plugin).ok_or_else(|| {
            let mut error = StepError::new(
                Stage::Connect,
                format!("`{}` is not found (`[ssh] session_manager_plugin`)", through.plugin.display()),
            );
            error.hint = Some(PLUGIN_HINT.to_string());
            error
        })?;
        let ssh = SshTarget {
            host: instance.id.to_string(),
            port: through.port,
            user: through.user.clone(),
            private_key: prepared.private_key,
            bastion: None,
            host_key,
        };
        let region = context.job.region.as_str();
        let endpoint = match &context.run.fleet.aws.endpoint_url {
            Some(url) => url.clone(),
            None => format!("https://ssm.{region}.amazonaws.com"),
        };
        let via = Via::SessionManager(SessionManagerTarget {
            ssh,
            instance: instance.id.clone(),
            cloud: Arc::clone(&context.cloud),
            plugin,
            endpoint,
            sessions: Arc::clone(&through.sessions) as Arc<dyn SessionBook>,
        });
        Ok(ConnectTarget { instance, via })
    }

    /// Through Session Manager: waits until `instance`'s SSM agent is online (DescribeInstanceInformation),
    /// within `[ssh] timeout`, interrupted by Ctrl-C; returns what is left of the timeout for the connect.
    async fn agent_online(
        &self,
        context: &BuildContext,
        through: &SessionManagerReach,
        instance: &InstanceId,
    ) -> Result<Duration, StepError> {
        let started = tokio::time::Instant::now();
        context.progress(Stage::Connect, format!("waiting for the SSM agent of {instance} to come online"));
        let cloud = &*context.cloud;
        let online = retry_cancellable(
            agent_policy(through.timeout).start(),
            &context.cancel,
            |_| async {
                match cloud.agent_online(instance).await {
                    Ok(true) => Outcome::Done(Ok(())),
                    Ok(false) => Outcome::Again(None),
                    // Just launched: SSM may not know it yet.
                    Err(error) if error.kind == ErrorKind::NotFound => Outcome::Again(Some(error)),
                    Err(error) => Outcome::Done(Err(Some(error))),
                }
            },
            |_, _| {},
        )
        .await;
        match online {
            Ok(()) => Ok(through.timeout.saturating_sub(started.elapsed()).max(MIN_CONNECT_TIME)),
            Err(Stopped::Cancelled) => Err(StepError::interrupted(Stage::Connect)),
            Err(Stopped::GaveUp(GaveUp::Refused(Some(error)))) => Err(StepError::cloud(Stage::Connect, error)),
            Err(Stopped::GaveUp(_)) => {
                let waited = humantime::format_duration(through.timeout);
                let mut error = StepError::new(
                    Stage::Connect,
                    format!("the SSM agent of {instance} did not come online within {waited} (`[ssh] timeout`)"),
                );
                error.hint = Some(hints::agent_not_online(through.profile.as_deref()));
                Err(error)
            }
        }
    }

    /// Connects to `target`, waiting (up to `[ssh] timeout`) for the instance to answer (through Session
    /// Manager: for its agent first).
    pub(super) async fn connect(
        &self,
        context: &BuildContext,
        target: &ConnectTarget,
    ) -> Result<Box<dyn Connection>, StepError> {
        if let Reach::SessionManager(through) = self {
            let timeout = self.agent_online(context, through, &target.instance.id).await?;
            context.progress(
                Stage::Connect,
                format!("waiting for SSH to {} through Session Manager (port {})", target.instance.id, through.port),
            );
            return context
                .interruptible(Stage::Connect, async {
                    context.communicator.connect(target, timeout).await.map_err(|error| {
                        // The agent went away again (TargetNotConnected to the end): the same causes.
                        let agent_gone = error.contains("TargetNotConnected");
                        let mut error = StepError::new(Stage::Connect, error);
                        error.hint = agent_gone.then(|| hints::agent_not_online(through.profile.as_deref()));
                        error
                    })
                })
                .await;
        }
        let (waiting, timeout) = self.waiting(target);
        context.progress(Stage::Connect, waiting);
        context
            .interruptible(Stage::Connect, async {
                context
                    .communicator
                    .connect(target, timeout)
                    .await
                    .map_err(|error| StepError::new(Stage::Connect, error))
            })
            .await
    }

    /// What the build says while it waits for `target` to answer, and how long it waits.
    fn waiting(&self, target: &ConnectTarget) -> (String, Duration) {
        match (self, &target.via) {
            (Reach::Ssh(ssh), Via::Ssh(to)) => {
                let how = match &ssh.address {
                    SshAddress::Configured(_) => "`[ssh] host`",
                    SshAddress::OfInstance { why, .. } => why.as_str(),
                };
                (format!("waiting for SSH on {}:{} ({how})", to.host, to.port), ssh.timeout)
            }
            (Reach::SessionManager(through), _) => (String::new(), through.timeout),
            (Reach::Ssh(ssh), Via::SessionManager(_)) => (String::new(), ssh.timeout),
        }
    }
}

/// The least time left for SSH once the agent is online (an agent that took the whole timeout still gets a try).
const MIN_CONNECT_TIME: Duration = Duration::from_secs(30);

/// How an SSM agent is waited for: pauses of 2 s doubling to 15 s, for `[ssh] timeout`.
fn agent_policy(timeout: Duration) -> Policy {
    Policy {
        backoff: Backoff::doubling(Duration::from_secs(2), Duration::from_secs(15)),
        budget: timeout,
        retries: None,
    }
}

/// The temporary security group (in the build's VPC) and its one ingress rule, if any (`port` from the build's
/// sources; Session Manager's has none); the rule right after the group is made may meet EC2's lag
/// (`InvalidGroup.NotFound`), which is waited out.
async fn create_security_group(
    context: &BuildContext,
    stack: &mut CleanupStack,
    vpc: Option<&VpcId>,
    ingress: Option<(u16, &IngressSources)>,
    name: &str,
) -> Result<(SecurityGroupId, Created), StepError> {
    let cloud = &*context.cloud;
    let description = match ingress {
        Some(_) => "fleetbake temporary build group: SSH from the builder only",
        None => "fleetbake temporary build group: no inbound rule (Session Manager)",
    };
    let group = adopt::security_group(cloud, name, description, vpc, &context.temporary_tags())
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    let created = Created::now(NewKind::SecurityGroup);
    stack.push(UndoStep::DeleteSecurityGroup { id: group.clone(), fresh: Some(created) });
    context.created(ResourceKind::SecurityGroup, &group);
    let in_vpc = vpc.map(|vpc| format!(" in {vpc}")).unwrap_or_default();
    let Some((port, sources)) = ingress else {
        context.progress(
            Stage::SecurityGroup,
            format!("created temporary security group {group}{in_vpc} (no inbound rule: Session Manager)"),
        );
        return Ok((group, created));
    };
    once_known(&[created], || adopt::ingress(cloud, &group, port, sources))
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    context.progress(
        Stage::SecurityGroup,
        format!("created temporary security group {group}{in_vpc} (port {port} from {sources})"),
    );
    Ok((group, created))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{InstanceId, InstanceState};
    use crate::config::{FlavorName, Region};

    fn ssh(address: SshAddress) -> Reach {
        Reach::Ssh(SshReach {
            address,
            port: 2222,
            user: "ec2-user".into(),
            bastion: None,
            sources: IngressSources::default(),
            vpc: None,
            timeout: Duration::from_secs(300),
            host_key: HostKeyPolicy::Console,
            host_key_wait: Duration::from_secs(300),
        })
    }

    fn prepared() -> Prepared {
        Prepared {
            key_name: KeyPairName("k".into()),
            security_group: SecurityGroupId("sg-1".into()),
            fresh: Vec::new(),
            private_key: PrivateKey::new("pem".into()),
        }
    }

    fn instance() -> TargetInstance {
        TargetInstance {
            id: InstanceId("i-1".into()),
            flavor: FlavorName::new("base"),
            region: Region::new("us-west-2"),
        }
    }

    fn running(public_ip: Option<&str>) -> InstanceStatus {
        InstanceStatus {
            id: InstanceId("i-1".into()),
            state: InstanceState::Running,
            public_ip: public_ip.map(String::from),
            private_ip: Some("10.0.0.5".into()),
            public_dns: None,
            private_dns: None,
            state_reason: None,
        }
    }

    /// Records what the sessions say to the ledger.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<String>>);

    impl Ledger for Recording {
        fn created(&self, _job: &JobKey, resource: Resource) {
            self.0.lock().unwrap().push(format!("created {resource}"));
        }
        fn removed(&self, resource: Resource) {
            self.0.lock().unwrap().push(format!("removed {resource}"));
        }
        fn image_requested(&self, _job: &JobKey, _image: &crate::cloud::ImageId) {}
        fn image_discarded(&self, _job: &JobKey, _image: &crate::cloud::ImageId) {}
        fn published(&self, _job: &JobKey, _publication: &crate::outcome::Publication) {}
        fn kept(&self, _job: &JobKey, resource: Resource, _until: chrono::DateTime<chrono::Utc>) {
            self.0.lock().unwrap().push(format!("kept {resource}"));
        }
    }

    #[test]
    fn each_session_is_journaled_as_it_opens_and_ends_and_what_is_open_goes_to_the_stack() {
        let ledger = Arc::new(Recording::default());
        let sessions = BuildSessions {
            ledger: Arc::clone(&ledger) as Arc<dyn Ledger>,
            job: JobKey("build:base@us-west-2".into()),
            region: Region::new("us-west-2"),
            open: std::sync::Mutex::default(),
        };
        let (first, second) = (SessionId::new("s-1"), SessionId::new("s-2"));
        sessions.opened(&first);
        sessions.ended(&first);
        sessions.opened(&second);
        assert_eq!(
            *ledger.0.lock().unwrap(),
            [
                "created session s-1 in us-west-2",
                "removed session s-1 in us-west-2",
                "created session s-2 in us-west-2"
            ]
        );
        let mut stack = CleanupStack::default();
        sessions.left_open(&mut stack);
        assert_eq!(stack.pending(), ["session s-2"]);
        let mut again = CleanupStack::default();
        sessions.left_open(&mut again);
        assert!(again.is_empty(), "handed over once");
    }

    #[test]
    fn ssh_connects_to_the_instance_address_the_network_settled_and_says_why() {
        let why = "its public IP (this machine)".to_string();
        let reach = ssh(SshAddress::OfInstance { kind: AddressKind::PublicIp, why });
        let Ok(target) = reach.target(prepared(), instance(), &running(Some("203.0.113.7")), HostKeyCheck::Accept)
        else {
            panic!("a target")
        };
        let Via::Ssh(to) = &target.via else { panic!("an SSH target") };
        assert_eq!((to.host.as_str(), to.port, to.user.as_str()), ("203.0.113.7", 2222, "ec2-user"));
        assert_eq!(to.private_key.expose(), "pem");
        assert_eq!(target.instance.id, InstanceId("i-1".into()));
        let (said, timeout) = reach.waiting(&target);
        assert_eq!(said, "waiting for SSH on 203.0.113.7:2222 (its public IP (this machine))");
        assert_eq!(timeout, Duration::from_secs(300));
    }

    #[test]
    fn a_configured_host_is_connected_to_whatever_the_instance_has() {
        let reach = ssh(SshAddress::Configured("localhost".into()));
        let Ok(target) = reach.target(prepared(), instance(), &running(None), HostKeyCheck::Accept) else {
            panic!("a target")
        };
        assert_eq!(reach.waiting(&target).0, "waiting for SSH on localhost:2222 (`[ssh] host`)");
    }

    #[test]
    fn an_instance_without_the_address_to_connect_to_fails_the_connect_stage() {
        let reach = ssh(SshAddress::OfInstance { kind: AddressKind::PublicIp, why: String::new() });
        let Err(error) = reach.target(prepared(), instance(), &running(None), HostKeyCheck::Accept) else {
            panic!("no public IP")
        };
        assert_eq!(error.stage, Stage::Connect);
        assert_eq!(
            error.message,
            "instance i-1 has no public IP to connect to; set `[ssh] interface` (or a subnet that gives public addresses)"
        );
    }
}
