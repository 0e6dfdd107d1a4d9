//! How a build reaches its instance: the temporary security group and its ingress rule.
//!
//! Layer: `steps` (part of [`super`], the build).

use crate::cloud::consistency::{once_known, Created, NewKind};
use crate::cloud::SecurityGroupId;
use crate::outcome::Stage;
use crate::steps::adopt;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::ledger::ResourceKind;
use crate::steps::network::Network;

use super::{BuildContext, StepError};

/// The temporary security group (in the build's VPC) and its one ingress rule (`ssh.port` from the build's
/// sources); the rule right after the group is made may meet EC2's lag (`InvalidGroup.NotFound`), which is
/// waited out.
pub(super) async fn create_security_group(
    context: &BuildContext,
    stack: &mut CleanupStack,
    network: &Network,
    name: &str,
) -> Result<(SecurityGroupId, Created), StepError> {
    let cloud = &*context.cloud;
    let description = "fleetbake temporary build group: SSH from the builder only";
    let group = adopt::security_group(cloud, name, description, network.vpc.as_ref(), &context.temporary_tags())
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    let created = Created::now(NewKind::SecurityGroup);
    stack.push(UndoStep::DeleteSecurityGroup { id: group.clone(), fresh: Some(created) });
    context.created(ResourceKind::SecurityGroup, &group);
    let port = context.run.fleet.ssh.port;
    once_known(&[created], || adopt::ingress(cloud, &group, port, &network.ssh_sources))
        .await
        .map_err(|error| StepError::cloud(Stage::SecurityGroup, error))?;
    let cidrs: Vec<String> = network.ssh_sources.iter().map(ToString::to_string).collect();
    let vpc = network.vpc.as_ref().map(|vpc| format!(" in {vpc}")).unwrap_or_default();
    context.progress(
        Stage::SecurityGroup,
        format!("created temporary security group {group}{vpc} (port {port} from {})", cidrs.join(", ")),
    );
    Ok((group, created))
}
