//! How a build reaches its instance: [`Reach`], the closed set of ways in (today only SSH), each preparing
//! what it needs before the launch (SSH: a temporary key pair, and a security group whose one ingress rule lets
//! the builder in) and, once the instance runs, yielding the [`ConnectTarget`] the communicator connects to.
//! A way in that needs nothing (Session Manager) is one more variant, not a change to the sequence.
//!
//! Layer: `steps` (part of [`super`], the build).

use std::time::Duration;

use ipnet::IpNet;

use crate::cloud::consistency::{once_known, Created, NewKind};
use crate::cloud::retry::{retry_cancellable, Outcome, Policy, Stopped};
use crate::cloud::{
    CloudError, ErrorKind, InstanceId, InstanceStatus, KeyPairName, PrivateKey, SecurityGroupId, VpcId,
};
use crate::config::{Bastion, HostKeyPolicy};
use crate::outcome::Stage;
use crate::remote::ssh::{HostKeyCheck, SshTarget};
use crate::remote::{ConnectTarget, Connection, TargetInstance, Via};
use crate::steps::adopt;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::ledger::ResourceKind;
use crate::steps::network::{AddressKind, Network};
use crate::util::host_keys::HostKeys;

use super::{BuildContext, StepError};

/// A build's way in to its instance.
pub(super) enum Reach {
    Ssh(SshReach),
}

/// SSH as `[ssh]` and the flavor say, in the network the build settled.
pub(super) struct SshReach {
    address: SshAddress,
    port: u16,
    user: String,
    bastion: Option<Bastion>,
    /// Who the security group lets in on `port`.
    sources: Vec<IpNet>,
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
    /// The way in `[ssh]` describes, in `network`.
    pub(super) fn ssh(context: &BuildContext, network: &Network) -> Reach {
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
        match self {
            Reach::Ssh(ssh) => {
                let key_name = KeyPairName(name.to_string());
                let private_key = adopt::key_pair(&*context.cloud, &key_name, &context.temporary_tags())
                    .await
                    .map_err(|error| StepError::cloud(Stage::KeyPair, error))?;
                let key_pair = Created::now(NewKind::KeyPair);
                stack.push(UndoStep::DeleteKeyPair { name: key_name.clone() });
                context.created(ResourceKind::KeyPair, &key_name);
                context.progress(Stage::KeyPair, format!("created temporary key pair {key_name}"));
                let (security_group, group) = create_security_group(context, stack, ssh, name).await?;
                Ok(Prepared { key_name, security_group, fresh: vec![key_pair, group], private_key })
            }
        }
    }

    /// How `instance` (running) will be recognised: with `host_key = "console"`, the host keys cloud-init
    /// prints on its console, read as soon as they are there (polled: [`Policy::console_keys`]), within
    /// `[ssh] host_key_wait`; none in time fails the job at `connect`, with a hint.
    pub(super) async fn host_key(
        &self,
        context: &BuildContext,
        instance: &InstanceId,
    ) -> Result<HostKeyCheck, StepError> {
        let Reach::Ssh(ssh) = self;
        if ssh.host_key == HostKeyPolicy::Accept {
            context
                .progress(Stage::Connect, format!("accepting any host key from {instance} (`host_key = \"accept\"`)"));
            return Ok(HostKeyCheck::Accept);
        }
        context.progress(Stage::Connect, format!("reading the host keys of {instance} from its console"));
        let cloud = &*context.cloud;
        let read = retry_cancellable(
            Policy::console_keys(ssh.host_key_wait).start(),
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
        let Reach::Ssh(ssh) = self;
        let waited = humantime::format_duration(ssh.host_key_wait);
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
        };
        Ok(ConnectTarget { instance, via })
    }

    /// Connects to `target`, waiting (up to `[ssh] timeout`) for the instance to answer.
    pub(super) async fn connect(
        &self,
        context: &BuildContext,
        target: &ConnectTarget,
    ) -> Result<Box<dyn Connection>, StepError> {
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
        }
    }
}

/// The temporary security group (in the build's VPC) and its one ingress rule (`ssh.port` from the build's
/// sources); the rule right after the group is made may meet EC2's lag (`InvalidGroup.NotFound`), which is
/// waited out.
async fn create_security_group(
    context: &BuildContext,
    stack: &mut CleanupStack,
    ssh: &SshReach,
    name: &str,
) -> Result<(SecurityGroupId, Created), StepError> {
    let cloud = &*context.cloud;
    let description = "fleetbake temporary build group: SSH from the builder only";
    let group = adopt::security_group(cloud, name, description, ssh.vpc.as_ref(), &context.temporary_tags())
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    let created = Created::now(NewKind::SecurityGroup);
    stack.push(UndoStep::DeleteSecurityGroup { id: group.clone(), fresh: Some(created) });
    context.created(ResourceKind::SecurityGroup, &group);
    let port = ssh.port;
    once_known(&[created], || adopt::ingress(cloud, &group, port, &ssh.sources))
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    let cidrs: Vec<String> = ssh.sources.iter().map(ToString::to_string).collect();
    let vpc = ssh.vpc.as_ref().map(|vpc| format!(" in {vpc}")).unwrap_or_default();
    context.progress(
        Stage::SecurityGroup,
        format!("created temporary security group {group}{vpc} (port {port} from {})", cidrs.join(", ")),
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
            sources: Vec::new(),
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

    #[test]
    fn ssh_connects_to_the_instance_address_the_network_settled_and_says_why() {
        let why = "its public IP (this machine)".to_string();
        let reach = ssh(SshAddress::OfInstance { kind: AddressKind::PublicIp, why });
        let Ok(target) = reach.target(prepared(), instance(), &running(Some("203.0.113.7")), HostKeyCheck::Accept)
        else {
            panic!("a target")
        };
        let Via::Ssh(to) = &target.via;
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
