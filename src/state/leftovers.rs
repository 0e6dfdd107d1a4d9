//! Temporary resources found by their tags rather than remembered: what a build's own cleanup stack could
//! not remove, what a killed process never got to record, what an older run left. Each run ends by sweeping
//! its own; `--resume` sweeps the interrupted attempt's; `fleetbake gc` sweeps every run not in progress.
//!
//! Removal goes through the same undo steps as a build's cleanup: instances first (and waited for), then
//! security groups, then key pairs. Grants a distribution copy gave another account carry no tags: the
//! journal names them ([`journaled_grants`]), and they are taken back through the same undo steps.

use crate::cloud::watch::RegionWaits;
use crate::cloud::{CloudResult, InstanceId, RegionCloud};
use crate::config::{FlavorName, Region, Tags};
use crate::plan::RunId;
use crate::steps::cleanup::{CleanupStack, UndoFailure, UndoStep};
use crate::steps::context::{FLAVOR_TAG, FLEET_TAG, RUN_ID_TAG, TEMPORARY_TAG};
use crate::steps::ledger::{Ledger, Resource, ResourceKind};

/// A temporary resource found in the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub resource: Resource,
    /// From its `fleetbake:run-id` tag.
    pub run_id: Option<RunId>,
    /// From its `fleetbake:flavor` tag.
    pub flavor: Option<FlavorName>,
}

/// The tags every temporary resource of the fleet carries, and of one run if given.
pub fn temporary_tags(fleet: &str, run_id: Option<&RunId>) -> Tags {
    let mut tags =
        Tags::from([(FLEET_TAG.to_string(), fleet.to_string()), (TEMPORARY_TAG.to_string(), "true".to_string())]);
    if let Some(run_id) = run_id {
        tags.insert(RUN_ID_TAG.to_string(), run_id.to_string());
    }
    tags
}

/// Every temporary resource in the region carrying all of `tags`: instances not terminated, security groups,
/// key pairs.
pub async fn find(cloud: &dyn RegionCloud, tags: &Tags) -> CloudResult<Vec<Leftover>> {
    let region = cloud.region().clone();
    let leftover = |kind, id: String, found: &Tags| Leftover {
        resource: Resource::new(region.clone(), kind, id),
        run_id: found.get(RUN_ID_TAG).and_then(|id| RunId::parse(id)),
        flavor: found.get(FLAVOR_TAG).map(FlavorName::new),
    };
    let mut found = Vec::new();
    for instance in cloud.find_instances(tags).await? {
        found.push(leftover(ResourceKind::Instance, instance.id.to_string(), &instance.tags));
    }
    for group in cloud.find_security_groups(tags).await? {
        found.push(leftover(ResourceKind::SecurityGroup, group.id.to_string(), &group.tags));
    }
    for pair in cloud.find_key_pairs(tags).await? {
        found.push(leftover(ResourceKind::KeyPair, pair.id.to_string(), &pair.tags));
    }
    Ok(found)
}

/// The grants to other accounts `outstanding` (a journal's resources created and not removed) holds in
/// `region`, as leftovers of `run_id`.
pub fn journaled_grants<'a>(
    outstanding: impl IntoIterator<Item = &'a Resource>,
    region: &Region,
    run_id: &RunId,
) -> Vec<Leftover> {
    outstanding
        .into_iter()
        .filter(|resource| resource.kind.is_grant() && resource.region() == region)
        .map(|resource| Leftover { resource: resource.clone(), run_id: Some(run_id.clone()), flavor: None })
        .collect()
}

/// What [`remove`] did.
#[derive(Debug, Default)]
pub struct Removal {
    pub removed: Vec<Resource>,
    pub failed: Vec<(Resource, String)>,
}

/// Removes them (all in this region): instances first, then security groups, then key pairs, past failures;
/// grants to other accounts (only a journal names them) last.
pub async fn remove(
    cloud: &dyn RegionCloud,
    waits: &RegionWaits,
    leftovers: &[Leftover],
    ledger: &dyn Ledger,
) -> Removal {
    let mut stack = CleanupStack::default();
    // The stack unwinds most recent first: sessions end before their instances go.
    let of_kind = |kind| leftovers.iter().filter(move |leftover: &&Leftover| leftover.resource.kind == kind);
    for leftover in leftovers.iter().filter(|leftover| leftover.resource.kind.is_grant()) {
        stack.push(UndoStep::removing(&leftover.resource));
    }
    for kind in [ResourceKind::KeyPair, ResourceKind::SecurityGroup, ResourceKind::Instance] {
        for leftover in of_kind(kind) {
            stack.push(UndoStep::removing(&leftover.resource));
        }
    }
    // A killed run that went through Session Manager (a session of its is left) may also have left a session
    // whose id it never learned (a StartSession whose answer was lost): every session still active to its
    // temporary instances is ended, before they are terminated.
    if of_kind(ResourceKind::Session).next().is_some() {
        for leftover in of_kind(ResourceKind::Instance) {
            stack.push(UndoStep::EndSessionsTo { instance: InstanceId::new(&leftover.resource.id) });
        }
    }
    for leftover in of_kind(ResourceKind::Session) {
        stack.push(UndoStep::removing(&leftover.resource));
    }
    let failures: Vec<UndoFailure> = stack.unwind(cloud, waits, ledger).await;
    let mut removal = Removal::default();
    for leftover in leftovers {
        match failures.iter().find(|failure| failure.journal_resource.as_ref() == Some(&leftover.resource)) {
            Some(failure) => removal.failed.push((leftover.resource.clone(), failure.error.clone())),
            None => removal.removed.push(leftover.resource.clone()),
        }
    }
    removal
}
