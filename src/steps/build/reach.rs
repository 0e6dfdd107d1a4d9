//! How a build reaches its instance: [`Reach`], the closed set of ways in (today only SSH), each preparing
//! what it needs before the launch (SSH: a temporary key pair, and a security group whose one ingress rule lets
//! the builder in) and, once the instance runs, yielding the [`ConnectTarget`] the communicator connects to.
//! A way in that needs nothing (Session Manager) is one more variant, not a change to the sequence.
//!
//! Layer: `steps` (part of [`super`], the build).

use ipnet::IpNet;

use crate::cloud::consistency::{once_known, Created, NewKind};
use crate::cloud::{InstanceId, InstanceStatus, KeyPairName, PrivateKey, SecurityGroupId, VpcId};
use crate::config::Bastion;
use crate::outcome::Stage;
use crate::remote::ssh::SshTarget;
use crate::remote::{ConnectTarget, Connection, TargetInstance, Via};
use crate::steps::adopt;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::ledger::ResourceKind;
use crate::steps::network::{AddressKind, Network};

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

    /// Where to connect to `instance`, now running as `running`.
    pub(super) fn target(
        &self,
        context: &BuildContext,
        prepared: Prepared,
        instance: &InstanceId,
        running: &InstanceStatus,
    ) -> Result<ConnectTarget, StepError> {
        let via = match self {
            Reach::Ssh(ssh) => {
                let host = match &ssh.address {
                    SshAddress::Configured(host) => host.clone(),
                    SshAddress::OfInstance { kind, .. } => kind.of(running).ok_or_else(|| {
                        StepError::new(
                            Stage::Connect,
                            format!(
                                "instance {instance} has no {kind} to connect to; set `[ssh] interface` (or a subnet that gives public addresses)"
                            ),
                        )
                    })?,
                };
                let (port, user, bastion) = (ssh.port, ssh.user.clone(), ssh.bastion.clone());
                Via::Ssh(SshTarget { host, port, user, private_key: prepared.private_key, bastion })
            }
        };
        let instance = TargetInstance {
            id: instance.clone(),
            flavor: context.flavor.name.clone(),
            region: context.job.region.clone(),
        };
        Ok(ConnectTarget { instance, via })
    }

    /// Connects to `target`, waiting (up to `[ssh] timeout`) for the instance to answer.
    pub(super) async fn connect(
        &self,
        context: &BuildContext,
        target: &ConnectTarget,
    ) -> Result<Box<dyn Connection>, StepError> {
        let timeout = match (self, &target.via) {
            (Reach::Ssh(ssh), Via::Ssh(to)) => {
                let how = match &ssh.address {
                    SshAddress::Configured(_) => "`[ssh] host`",
                    SshAddress::OfInstance { why, .. } => why.as_str(),
                };
                context.progress(Stage::Connect, format!("waiting for SSH on {}:{} ({how})", to.host, to.port));
                context.run.fleet.ssh.timeout
            }
        };
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
