//! Launching a build's instance: the source image resolved, the root volume it launches with, RunInstances
//! on the flavor's market with EC2's capacity answers moved past (the next instance type, placement, market:
//! [`LaunchOrder`]) and then waited out, and the wait until it runs.
//!
//! Layer: `steps` (part of [`super`], the build).

use std::sync::Mutex;

use crate::cloud::consistency::{once_known, Created};
use crate::cloud::retry;
use crate::cloud::{client_token, ImageId, ImageSummary, InstanceId, LaunchSpec, RegionCloud, RootDevice};
use crate::config::{Flavor, Market, Region, SourceAmi};
use crate::outcome::{BuiltOn, Stage};
use crate::steps::network::{Network, Placement};
use crate::steps::patience::{no_room, LaunchOrder, LaunchTry, NextTry};
use crate::steps::source::{self, ParentFrom, ResolvedSource, SourceError};

use crate::cloud::consistency::NewKind;
use crate::cloud::watch::WaitKind;
use crate::cloud::InstanceStatus;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::ledger::ResourceKind;

use super::reach::Prepared;
use super::{BuildContext, Purpose, StepError};

/// An instance launched and running, and what it was bought as.
pub(super) struct Launched {
    pub instance: InstanceId,
    pub created: Created,
    pub running: InstanceStatus,
    /// The market and type RunInstances was answered with.
    pub built_on: BuiltOn,
}

/// Launches an instance from `image` into `network` with what the way in `prepared`, puts it on `stack`, and
/// waits until it runs.
pub(super) async fn instance(
    context: &BuildContext,
    stack: &mut CleanupStack,
    image: &ImageSummary,
    network: &Network,
    prepared: &Prepared,
    purpose: Purpose,
) -> Result<Launched, StepError> {
    let flavor = &context.flavor;
    let mut tags = flavor.run_tags.clone();
    tags.extend(context.temporary_tags());
    let launch_spec = LaunchSpec {
        image_id: image.id.clone(),
        instance_type: flavor.instance_type.clone(),
        key_name: prepared.key_name.clone(),
        security_group: prepared.security_group.clone(),
        subnet_id: None,
        associate_public_ip: flavor.associate_public_ip,
        client_token: String::new(),
        tags,
        metadata: flavor.metadata,
        root_volume: root_device(context, image)?,
        iam_instance_profile: flavor.iam_instance_profile.clone(),
        user_data: flavor.user_data.clone(),
        market: flavor.market,
    };
    let (instance, placement, built_on) = launch(context, launch_spec, network, &prepared.fresh, purpose).await?;
    let launched = Created::now(NewKind::Instance);
    stack.push(UndoStep::TerminateInstance { id: instance.clone(), fresh: Some(launched) });
    context.created(ResourceKind::Instance, &instance);
    let placed = placement.map(|placement| format!(" in {placement}")).unwrap_or_default();
    context.progress(
        Stage::Launch,
        format!("launched {} {} {instance}{placed} from {}", built_on.market, built_on.instance_type, image.id),
    );

    let running = context
        .interruptible(Stage::WaitRunning, async {
            let running = context
                .waits
                .instance(&instance, WaitKind::InstanceRunning)
                .await
                .map_err(|error| StepError::wait(Stage::WaitRunning, error))?;
            Ok(running.expect("a running instance was described"))
        })
        .await?;
    Ok(Launched { instance, created: launched, running, built_on })
}

/// RunInstances, moving past EC2's capacity and quota answers (`InsufficientInstanceCapacity`,
/// `VcpuLimitExceeded`, spot's `InsufficientCapacity`, …) in the flavor's [`LaunchOrder`] (its other instance
/// types, its other placements, from spot to on demand), then waiting them out with a pause of minutes, up to
/// `[limits] capacity_patience`. Each try is a new request with its own client token (a repeat within one try,
/// after a lost answer, keeps it); `Invalid*.NotFound` about the key pair or group made moments ago is EC2's
/// lag. Answers the instance, where it went, and what it was launched as.
async fn launch(
    context: &BuildContext,
    spec: LaunchSpec,
    network: &Network,
    fresh: &[Created],
    purpose: Purpose,
) -> Result<(InstanceId, Option<Placement>, BuiltOn), StepError> {
    let run = &context.run;
    let flavor = &context.flavor;
    let instance_types = instance_types(flavor);
    let ways = LaunchWays { instance_types: &instance_types, placements: &network.placements, flavor };
    // Read as a try starts and moved on as it ends; never held across an await.
    let order = Mutex::new(LaunchOrder::new(
        flavor.market,
        flavor.spot_fallback,
        instance_types.len(),
        network.placements.len(),
    ));
    let launched = retry::retry_cancellable(
        retry::Policy::capacity(run.fleet.limits.capacity_patience).start(),
        &context.cancel,
        |tries| {
            // Per attempt of the run: a resumed run's new instance is a new request, not a repeat of the killed
            // one's.
            let attempt = run.attempt.to_string();
            let try_number = format!("try{tries}");
            let mut parts =
                vec![run.run_id.as_str(), context.flavor.name.as_str(), context.job.region.as_str(), attempt.as_str()];
            if purpose == Purpose::Test {
                // Not a repeat of the build's launch: EC2 would answer it with the build's instance.
                parts.push("test");
            }
            if tries > 0 {
                parts.push(&try_number);
            }
            let tried = order.lock().expect("not poisoned").current();
            if context.rebuilt_on_demand {
                // Not a repeat of any try of the interrupted attempt's launch (its on-demand fallback included).
                parts.push("rebuild");
            }
            if tried.market == Market::Spot {
                // A one-time spot request is not the on-demand launch that replaces it once EC2 takes the instance
                // back: the same token would be answered with the interrupted instance.
                parts.push("spot");
            }
            let placement = ways.placements[tried.placement].clone();
            let built_on =
                BuiltOn { market: tried.market, instance_type: ways.instance_types[tried.instance_type].clone() };
            let spec = LaunchSpec {
                subnet_id: placement.as_ref().map(|placement| placement.subnet.clone()),
                client_token: client_token(&parts),
                instance_type: built_on.instance_type.clone(),
                market: built_on.market,
                ..spec.clone()
            };
            let (order, ways) = (&order, &ways);
            async move {
                let error = match once_known(fresh, || context.cloud.run_instance(&spec)).await {
                    Ok(instance) => return retry::Outcome::Done(Ok((instance, placement, built_on))),
                    Err(error) if no_room(&error) => error,
                    Err(error) => return retry::Outcome::Done(Err(error)),
                };
                let next = order.lock().expect("not poisoned").no_room();
                if matches!(next, NextTry::Pause(_)) {
                    return retry::Outcome::Again(error);
                }
                let code = error.code.clone().unwrap_or_default();
                context.progress(Stage::Launch, ways.moved(tried, next, &code));
                retry::Outcome::AgainAtOnce(error)
            }
        },
        |error, pause| {
            let code = error.code.clone().unwrap_or_default();
            let detail = format!("no room now ({code}); trying again in {}", humantime::format_duration(pause));
            context.progress(Stage::Launch, detail);
        },
    )
    .await;
    match launched {
        Ok(launched) => Ok(launched),
        Err(retry::Stopped::Cancelled) => Err(StepError::interrupted(Stage::Launch)),
        Err(retry::Stopped::GaveUp(retry::GaveUp::Refused(error))) => Err(StepError::cloud(Stage::Launch, error)),
        Err(retry::Stopped::GaveUp(retry::GaveUp::Spent { error, tries })) => {
            let waited = humantime::format_duration(run.fleet.limits.capacity_patience);
            Err(StepError::cloud(Stage::Launch, error).waited(&format!("tried {tries} times over {waited}")))
        }
    }
}

/// The flavor's instance types in the order they are tried (never empty: its `instance_type` at least).
fn instance_types(flavor: &Flavor) -> Vec<String> {
    if flavor.instance_types.is_empty() {
        vec![flavor.instance_type.clone()]
    } else {
        flavor.instance_types.clone()
    }
}

/// What a launch's tries choose from, to name them in its event lines.
struct LaunchWays<'a> {
    instance_types: &'a [String],
    placements: &'a [Option<Placement>],
    flavor: &'a Flavor,
}

impl LaunchWays<'_> {
    fn placement(&self, index: usize) -> String {
        self.placements[index].as_ref().map_or("the default VPC".to_string(), ToString::to_string)
    }

    /// The event line of a move to `next` after a capacity answer (`code`) to `tried`: "no spot capacity for
    /// t3.micro in subnet-… (us-west-2a) (InsufficientInstanceCapacity); trying t3a.micro". A flavor with one
    /// type on demand only ever changes placement: "no room now (code); trying subnet-… (zone)".
    fn moved(&self, tried: LaunchTry, next: NextTry, code: &str) -> String {
        let one_way = self.flavor.market == Market::OnDemand && self.instance_types.len() == 1;
        let refused = if one_way {
            format!("no room now ({code})")
        } else {
            format!(
                "no {} capacity for {} in {} ({code})",
                tried.market,
                self.instance_types[tried.instance_type],
                self.placement(tried.placement)
            )
        };
        let trying = match next {
            NextTry::NextType(to) => self.instance_types[to.instance_type].clone(),
            NextTry::NextPlacement(to) if one_way => self.placement(to.placement),
            NextTry::NextPlacement(to) => {
                format!("{} in {}", self.instance_types[to.instance_type], self.placement(to.placement))
            }
            NextTry::OnDemand(to) => {
                format!("on-demand {} in {}", self.instance_types[to.instance_type], self.placement(to.placement))
            }
            NextTry::Pause(_) => "again after a pause".to_string(),
        };
        format!("{refused}; trying {trying}")
    }
}

/// The source image in this region: the given id, the newest match of the filter, or the SSM parameter's; built
/// from another flavor, that flavor's image this run made or reused here (the plan's input), else (`--only
/// child`) its newest one.
pub(super) async fn resolve_source(context: &BuildContext) -> Result<ResolvedSource, StepError> {
    let (cloud, region) = (&*context.cloud, &context.job.region);
    let (found, whose) = match (&context.flavor.source_ami, &context.parent_image) {
        (SourceAmi::Flavor(parent), Some(image)) => (
            parent_source(cloud, region, &image.image_id, &image.name).await,
            Some(format!("`{parent}`'s image of this run")),
        ),
        (SourceAmi::Flavor(parent), None) => {
            let fleet = &context.run.fleet.name;
            let chosen = source::parent_not_built(cloud, fleet, parent, region, context.manifest_parent.as_ref()).await;
            let (found, whose) = match chosen {
                Ok((image, ParentFrom::Manifest)) => {
                    (Ok(ResolvedSource { image, parameter: None }), "image in the manifest")
                }
                Ok((image, ParentFrom::Newest)) => {
                    (parent_source(cloud, region, &image.id, &image.name).await, "newest image here")
                }
                Err(error) => (Err(error), "newest image here"),
            };
            (found, Some(format!("`{parent}`'s {whose}: `{parent}` is not built in this run")))
        }
        (configured, _) => (source::resolve(cloud, configured, region).await, None),
    };
    match found {
        Ok(resolved) => {
            let image = &resolved.image;
            if let Some(whose) = whose {
                context.progress(Stage::SourceAmi, format!("source image {} `{}`, {whose}", image.id, image.name));
            } else if let Some(read) = &resolved.parameter {
                let detail =
                    format!("source image {} from SSM parameter `{}` version {}", image.id, read.name, read.version);
                context.progress(Stage::SourceAmi, detail);
            } else if !image.name.is_empty() {
                context.progress(Stage::SourceAmi, format!("source image {} `{}`", image.id, image.name));
            }
            Ok(resolved)
        }
        Err(SourceError::Missing(message)) => Err(StepError::new(Stage::SourceAmi, message)),
        Err(SourceError::Cloud(error)) => Err(StepError::cloud(Stage::SourceAmi, error)),
    }
}

/// A parent flavor's image as a build's source: described (it must be available, and its root device is what a
/// `root_volume` overrides), with its name.
async fn parent_source(
    cloud: &dyn RegionCloud,
    region: &Region,
    image: &ImageId,
    name: &str,
) -> Result<ResolvedSource, SourceError> {
    let described = source::find(cloud, &SourceAmi::Id(image.to_string()), region).await?;
    Ok(ResolvedSource { image: ImageSummary { name: name.to_string(), ..described }, parameter: None })
}

/// The root volume the instance launches with: the source image's root device, resized or retyped as the flavor
/// says, and encrypted with the build region's key of `[encryption]`; `None` when neither asks for a change.
/// The image made from it keeps that encryption (CreateImage snapshots the volume as it is).
fn root_device(context: &BuildContext, source: &ImageSummary) -> Result<Option<RootDevice>, StepError> {
    let kms_key = context.run.fleet.kms_key(&context.job.region).map(String::from);
    if context.flavor.root_volume.is_none() && kms_key.is_none() {
        return Ok(None);
    }
    let device_name = source.root_device.clone().ok_or_else(|| {
        StepError::new(
            Stage::SourceAmi,
            format!(
                "source image {} names no root device, so its root volume cannot be set (root_volume, [encryption])",
                source.id
            ),
        )
    })?;
    Ok(Some(RootDevice { device_name, volume: context.flavor.root_volume.clone().unwrap_or_default(), kms_key }))
}
