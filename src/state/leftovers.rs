//! Temporary resources found by their tags rather than remembered: what a build's own cleanup stack could
//! not remove, what a killed process never got to record, what an older run left. Each run ends by sweeping
//! its own; `--resume` sweeps the interrupted attempt's; `fleetbake gc` sweeps every run not in progress.
//!
//! Removal goes through the same undo steps as a build's cleanup: instances first (and waited for), then
//! security groups, then key pairs. Grants a distribution copy gave another account carry no tags: the
//! journal names them ([`journaled_grants`]), and they are taken back through the same undo steps.
//!
//! A failed build's resources kept with `--keep-failed` carry `fleetbake:keep-until`: until that time they
//! are not leftovers ([`Leftover::kept_at`], [`set_aside_kept`]); after it they are, like any other.

use chrono::{DateTime, Utc};

use crate::cloud::watch::RegionWaits;
use crate::cloud::{CloudResult, InstanceId, RegionCloud};
use crate::config::{FlavorName, Region, Tags};
use crate::plan::RunId;
use crate::steps::cleanup::{CleanupStack, UndoFailure, UndoStep};
use crate::steps::context::{FLAVOR_TAG, FLEET_TAG, KEEP_UNTIL_TAG, RUN_ID_TAG, TEMPORARY_TAG};
use crate::steps::ledger::{Ledger, Resource, ResourceKind};

/// A temporary resource found in the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leftover {
    pub resource: Resource,
    /// From its `fleetbake:run-id` tag.
    pub run_id: Option<RunId>,
    /// From its `fleetbake:flavor` tag.
    pub flavor: Option<FlavorName>,
    /// From its `fleetbake:keep-until` tag (`--keep-failed`): left alone until then.
    pub keep_until: Option<DateTime<Utc>>,
}

impl Leftover {
    /// Whether it is kept (`--keep-failed`) at `now`: its `fleetbake:keep-until` is still to come.
    pub fn kept_at(&self, now: DateTime<Utc>) -> bool {
        self.keep_until.is_some_and(|until| until > now)
    }
}

/// Splits `found` into what may be removed at `now` and what is kept until later (`--keep-failed`).
pub fn set_aside_kept(found: Vec<Leftover>, now: DateTime<Utc>) -> (Vec<Leftover>, Vec<Leftover>) {
    found.into_iter().partition(|leftover| !leftover.kept_at(now))
}

/// A `fleetbake:keep-until` value: RFC 3339 (what the build writes); anything else is no keep at all.
fn keep_until(tags: &Tags) -> Option<DateTime<Utc>> {
    let value = tags.get(KEEP_UNTIL_TAG)?;
    DateTime::parse_from_rfc3339(value).ok().map(|until| until.to_utc())
}

/// `--keep-failed`: the folder a run writes its kept builds' login keys to, one 0700 folder per instance
/// (`<instance id>/key`, `known_hosts`): `.fleetbake/<fleet>/<run id>/kept/` (`journals` is the fleet's
/// journal directory).
pub fn kept_keys_dir(journals: &std::path::Path, run_id: &RunId) -> std::path::PathBuf {
    journals.join(run_id.as_str()).join("kept")
}

/// A kept build's login folder (`<run id>/kept/<instance id>/`), found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptKeys {
    pub instance: InstanceId,
    pub folder: std::path::PathBuf,
}

/// Every kept build's login folder under the fleet's journal directory `journals`, of every run.
pub fn kept_keys(journals: &std::path::Path) -> Vec<KeptKeys> {
    let Ok(runs) = std::fs::read_dir(journals) else { return Vec::new() };
    let mut found = Vec::new();
    for run in runs.flatten() {
        let Ok(instances) = std::fs::read_dir(run.path().join("kept")) else { continue };
        for instance in instances.flatten() {
            if instance.file_type().is_ok_and(|kind| kind.is_dir()) {
                let name = instance.file_name().to_string_lossy().into_owned();
                found.push(KeptKeys { instance: InstanceId::new(name), folder: instance.path() });
            }
        }
    }
    found.sort_by(|a, b| a.folder.cmp(&b.folder));
    found
}

/// The login folders to remove: those whose instance is not kept any more (`still_kept`: the instances whose
/// keep-until is still to come) and was not left by a removal that failed (`not_removed`).
pub fn stale_kept_keys(found: Vec<KeptKeys>, still_kept: &[Leftover], not_removed: &[Resource]) -> Vec<KeptKeys> {
    let named =
        |id: &InstanceId, resource: &Resource| resource.kind == ResourceKind::Instance && resource.id == id.as_str();
    found
        .into_iter()
        .filter(|keys| !still_kept.iter().any(|leftover| named(&keys.instance, &leftover.resource)))
        .filter(|keys| !not_removed.iter().any(|resource| named(&keys.instance, resource)))
        .collect()
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
        keep_until: keep_until(found),
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
        .map(|resource| Leftover {
            resource: resource.clone(),
            run_id: Some(run_id.clone()),
            flavor: None,
            keep_until: None,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn found(id: &str, keep_until: Option<&str>) -> Leftover {
        let mut tags = Tags::new();
        if let Some(until) = keep_until {
            tags.insert(KEEP_UNTIL_TAG.to_string(), until.to_string());
        }
        Leftover {
            resource: Resource::new(Region::new("us-west-2"), ResourceKind::Instance, id),
            run_id: None,
            flavor: None,
            keep_until: super::keep_until(&tags),
        }
    }

    #[test]
    fn a_resource_kept_until_later_is_set_aside_and_one_past_its_time_is_a_leftover() {
        let now: DateTime<Utc> = "2026-12-07T22:00:00Z".parse().unwrap();
        let leftovers = vec![
            found("i-plain", None),
            found("i-later", Some("2026-12-07T23:00:00Z")),
            found("i-past", Some("2026-12-07T21:59:59Z")),
            found("i-garbled", Some("tomorrow")),
        ];
        let (due, kept) = set_aside_kept(leftovers, now);
        let ids = |list: &[Leftover]| list.iter().map(|leftover| leftover.resource.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&due), ["i-plain", "i-past", "i-garbled"]);
        assert_eq!(ids(&kept), ["i-later"]);
        assert!(!kept[0].kept_at("2026-12-07T23:00:00Z".parse().unwrap()), "kept until, not through, its time");
    }
}
