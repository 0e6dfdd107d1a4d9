//! The artifact manifest deploy tooling reads: the document (its entries' own types are in `format.rs`, built
//! from the run's outcomes), and the reporter that rewrites it atomically (temp file + rename) as images become
//! available and jobs fail, within a lag that grows with its size. Images are keyed by place: the own
//! account's under `artifacts[flavor][region]` (the shape deploy tools read since version 1), the copies other
//! accounts own under `distributed[flavor][account][region]` (version 2).

mod existing;
mod format;

pub use existing::{check as check_existing, ExistingManifestError, SetAside, Unreadable};

pub use format::{FailureEntry, ImageEntry, InProgressEntry, ManifestStatus, PublicationEntry, MANIFEST_VERSION};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::SecondsFormat;
use tokio::time::Instant;

use crate::config::{Account, FlavorName, Place, Region};
use crate::report::events::{RunEvent, Stamped};
use crate::report::{ReportError, Reporter};

/// The file: which run of which fleet, and what it made, failed at and left being made.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`] when written by this fleetbake.
    pub version: u32,
    pub fleet: String,
    pub run_id: String,
    pub status: ManifestStatus,
    pub started_at: String,
    /// `null` until the run ends.
    pub finished_at: Option<String>,
    /// flavor → region → image, of the own account; the build region too.
    pub artifacts: BTreeMap<FlavorName, BTreeMap<Region, ImageEntry>>,
    /// flavor → account → region → image: the copies other accounts own (`[[distribution]]`). Version 2; empty
    /// when a version-1 file is read.
    #[serde(default)]
    pub distributed: BTreeMap<FlavorName, BTreeMap<String, BTreeMap<Region, ImageEntry>>>,
    pub failures: Vec<FailureEntry>,
    /// Images still being made when the run was interrupted: `--resume` waits for them.
    #[serde(default)]
    pub in_progress: Vec<InProgressEntry>,
}

/// One difference between two manifests. A place is a region of the own account, or another account's
/// region (`account/region`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    FlavorAdded { flavor: FlavorName },
    FlavorRemoved { flavor: FlavorName },
    RegionGained { flavor: FlavorName, place: Place, image: crate::cloud::ImageId },
    RegionLost { flavor: FlavorName, place: Place, image: crate::cloud::ImageId },
    NewImage { flavor: FlavorName, place: Place, old: crate::cloud::ImageId, new: crate::cloud::ImageId },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::FlavorAdded { flavor } => write!(f, "+ {flavor} (flavor added)"),
            Change::FlavorRemoved { flavor } => write!(f, "- {flavor} (flavor removed)"),
            Change::RegionGained { flavor, place, image } => write!(f, "+ {flavor}/{place} {image}"),
            Change::RegionLost { flavor, place, image } => write!(f, "- {flavor}/{place} {image}"),
            Change::NewImage { flavor, place, old, new } => write!(f, "~ {flavor}/{place} {old} -> {new}"),
        }
    }
}

/// What changed from `old` to `new`, flavor by flavor, place by place (the own account's regions first, then
/// each other account's).
pub fn diff(old: &Manifest, new: &Manifest) -> Vec<Change> {
    let mut changes = Vec::new();
    let flavors: BTreeSet<&FlavorName> = old.flavors().chain(new.flavors()).collect();
    for flavor in flavors {
        let (before, after) = (old.places_of(flavor), new.places_of(flavor));
        match (before.is_empty(), after.is_empty()) {
            (true, false) => changes.push(Change::FlavorAdded { flavor: flavor.clone() }),
            (false, true) => changes.push(Change::FlavorRemoved { flavor: flavor.clone() }),
            _ => {}
        }
        let places: BTreeSet<&Place> = before.keys().chain(after.keys()).collect();
        for place in places {
            let (flavor, place_name) = (flavor.clone(), place.clone());
            match (before.get(place), after.get(place)) {
                (None, Some(now)) => {
                    changes.push(Change::RegionGained { flavor, place: place_name, image: now.image_id.clone() })
                }
                (Some(then), None) => {
                    changes.push(Change::RegionLost { flavor, place: place_name, image: then.image_id.clone() })
                }
                (Some(then), Some(now)) if then.image_id != now.image_id => changes.push(Change::NewImage {
                    flavor,
                    place: place_name,
                    old: then.image_id.clone(),
                    new: now.image_id.clone(),
                }),
                _ => {}
            }
        }
    }
    changes
}

impl Manifest {
    /// The image of `flavor` in `region` of the own account, if the manifest lists one.
    pub fn image(&self, flavor: &str, region: &str) -> Option<&crate::cloud::ImageId> {
        self.image_in(&FlavorName::new(flavor), &Place::own(Region::new(region))).map(|entry| &entry.image_id)
    }

    /// The image of `flavor` in `place` (a region of the own account, or of another account's copies).
    pub fn image_in(&self, flavor: &FlavorName, place: &Place) -> Option<&ImageEntry> {
        match &place.account {
            Account::Own => self.artifacts.get(flavor)?.get(&place.region),
            Account::Id(id) => self.distributed.get(flavor)?.get(id)?.get(&place.region),
        }
    }

    fn image_in_mut(&mut self, flavor: &FlavorName, place: &Place) -> Option<&mut ImageEntry> {
        match &place.account {
            Account::Own => self.artifacts.get_mut(flavor)?.get_mut(&place.region),
            Account::Id(id) => self.distributed.get_mut(flavor)?.get_mut(id)?.get_mut(&place.region),
        }
    }

    /// Lists `entry` as `flavor`'s image in `place` (under `distributed` for another account's).
    pub fn insert(&mut self, flavor: &FlavorName, place: &Place, entry: ImageEntry) {
        let regions = match &place.account {
            Account::Own => self.artifacts.entry(flavor.clone()).or_default(),
            Account::Id(id) => self.distributed.entry(flavor.clone()).or_default().entry(id.clone()).or_default(),
        };
        regions.insert(place.region.clone(), entry);
    }

    /// No longer lists `flavor`'s image in `place`; a flavor (or account) left with none is dropped.
    pub fn remove(&mut self, flavor: &FlavorName, place: &Place) {
        match &place.account {
            Account::Own => {
                if let Some(regions) = self.artifacts.get_mut(flavor) {
                    regions.remove(&place.region);
                }
            }
            Account::Id(id) => {
                if let Some(regions) = self.distributed.get_mut(flavor).and_then(|accounts| accounts.get_mut(id)) {
                    regions.remove(&place.region);
                }
            }
        }
        self.artifacts.retain(|_, regions| !regions.is_empty());
        for accounts in self.distributed.values_mut() {
            accounts.retain(|_, regions| !regions.is_empty());
        }
        self.distributed.retain(|_, accounts| !accounts.is_empty());
    }

    /// Every image the manifest lists, with its flavor and place: the own account's, then other accounts'.
    pub fn entries(&self) -> impl Iterator<Item = (&FlavorName, Place, &ImageEntry)> {
        let own = self.artifacts.iter().flat_map(|(flavor, regions)| {
            regions.iter().map(move |(region, entry)| (flavor, Place::own(region.clone()), entry))
        });
        let distributed = self.distributed.iter().flat_map(|(flavor, accounts)| {
            accounts.iter().flat_map(move |(account, regions)| {
                regions.iter().map(move |(region, entry)| {
                    (flavor, Place { account: Account::Id(account.clone()), region: region.clone() }, entry)
                })
            })
        });
        own.chain(distributed)
    }

    /// The flavors with an image in any account (a flavor may be listed more than once).
    fn flavors(&self) -> impl Iterator<Item = &FlavorName> {
        self.artifacts.keys().chain(self.distributed.keys())
    }

    /// `flavor`'s images, by place.
    fn places_of(&self, flavor: &FlavorName) -> BTreeMap<Place, &ImageEntry> {
        self.entries().filter(|(listed, ..)| *listed == flavor).map(|(_, place, entry)| (place, entry)).collect()
    }

    /// The manifest at `path`; an error if it is not one this fleetbake can read (not JSON, not a manifest, or
    /// of a newer `version`).
    pub fn read(path: &Path) -> std::io::Result<Manifest> {
        let text = std::fs::read_to_string(path)?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        if manifest.version > MANIFEST_VERSION {
            return Err(std::io::Error::other(format!(
                "manifest version {} was written by a newer fleetbake (this one reads up to {MANIFEST_VERSION})",
                manifest.version
            )));
        }
        Ok(manifest)
    }

    /// The file's bytes, into `buffer` (cleared first; a writer reuses one buffer for every rewrite).
    pub fn serialize_into(&self, buffer: &mut Vec<u8>) -> std::io::Result<()> {
        buffer.clear();
        serde_json::to_writer_pretty(&mut *buffer, self).map_err(std::io::Error::other)?;
        buffer.push(b'\n');
        Ok(())
    }

    /// As [`Manifest::serialize_into`], byte for byte, into `out`, with each image's JSON taken from `fragments`
    /// (made and kept there the first time): a rewrite serializes only what changed since the last, and copies
    /// the rest. Streamed: the whole file is never in memory at once (5 MB for 10,000 images).
    pub fn serialize_cached<W: std::io::Write>(
        &mut self,
        out: &mut W,
        fragments: &mut HashMap<(FlavorName, Place), Vec<u8>>,
    ) -> std::io::Result<()> {
        let artifacts = std::mem::take(&mut self.artifacts);
        let distributed = std::mem::take(&mut self.distributed);
        let mut around = Vec::new();
        let serialized = self.serialize_into(&mut around);
        self.artifacts = artifacts;
        self.distributed = distributed;
        serialized?;
        // The document around the two maps, as serde_json wrote it with both empty; the maps go in their place.
        const EMPTY: &[u8] = b"\n  \"artifacts\": {},\n  \"distributed\": {},\n";
        const DISTRIBUTED: &[u8] = b",\n  \"distributed\": ";
        let at = around.windows(EMPTY.len()).position(|window| window == EMPTY).expect("the manifest has its maps");
        out.write_all(&around[..at + EMPTY.len() - 4 - (DISTRIBUTED.len() + 2)])?;
        write_object(out, 2, &self.artifacts, |out, flavor, regions| {
            write_object(out, 4, regions, |out, region, entry| {
                let place = Place::own(region.clone());
                write_fragment(out, 6, fragments, (flavor.clone(), place), entry)
            })
        })?;
        out.write_all(DISTRIBUTED)?;
        write_object(out, 2, &self.distributed, |out, flavor, accounts| {
            write_object(out, 4, accounts, |out, account, regions| {
                write_object(out, 6, regions, |out, region, entry| {
                    let place = Place { account: Account::Id(account.clone()), region: region.clone() };
                    write_fragment(out, 8, fragments, (flavor.clone(), place), entry)
                })
            })
        })?;
        out.write_all(&around[at + EMPTY.len() - 2..])
    }
}

/// Indentation, written a slice at a time.
const SPACES: &[u8] = &[b' '; 16];

fn indent(out: &mut impl std::io::Write, width: usize) -> std::io::Result<()> {
    out.write_all(&SPACES[..width.min(SPACES.len())])
}

/// A map as serde_json's pretty printer writes it with its closing brace at `indent`: `{}` when empty, else each
/// `"key": value` on a line of its own two spaces further in.
fn write_object<W: std::io::Write, K: serde::Serialize, V>(
    out: &mut W,
    width: usize,
    map: &BTreeMap<K, V>,
    mut value: impl FnMut(&mut W, &K, &V) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if map.is_empty() {
        return out.write_all(b"{}");
    }
    out.write_all(b"{\n")?;
    for (index, (key, item)) in map.iter().enumerate() {
        if index > 0 {
            out.write_all(b",\n")?;
        }
        indent(out, width + 2)?;
        serde_json::to_writer(&mut *out, key).map_err(std::io::Error::other)?;
        out.write_all(b": ")?;
        value(out, key, item)?;
    }
    out.write_all(b"\n")?;
    indent(out, width)?;
    out.write_all(b"}")
}

/// An image's pretty JSON, its lines `width` further in, from `fragments` (made there the first time).
fn write_fragment(
    out: &mut impl std::io::Write,
    width: usize,
    fragments: &mut HashMap<(FlavorName, Place), Vec<u8>>,
    key: (FlavorName, Place),
    entry: &ImageEntry,
) -> std::io::Result<()> {
    let fragment = match fragments.entry(key) {
        std::collections::hash_map::Entry::Occupied(cached) => cached.into_mut(),
        std::collections::hash_map::Entry::Vacant(empty) => {
            let pretty = serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?;
            let lines = pretty.iter().filter(|&&byte| byte == b'\n').count();
            let mut indented = Vec::with_capacity(pretty.len() + lines * width);
            for &byte in &pretty {
                indented.push(byte);
                if byte == b'\n' {
                    indented.extend(std::iter::repeat_n(b' ', width));
                }
            }
            empty.insert(indented)
        }
    };
    out.write_all(fragment)
}

/// Keeps the manifest on disk true to what exists, as events arrive: after a batch of events that changed it,
/// rewritten once its [lag](ManifestWriter::lag) has passed since the last write; at once on an interrupt, and
/// when the run finishes.
pub struct ManifestWriter {
    path: PathBuf,
    manifest: Option<Manifest>,
    min_interval: Duration,
    last_write: Option<Instant>,
    /// Changed since the last write.
    dirty: bool,
    /// Images a resumed run's manifest already listed that this attempt has not announced again: dropped at
    /// the end if it never does (the image is gone, or its job failed this time).
    carried: BTreeSet<(FlavorName, Place)>,
    /// The size of the last write: a big manifest is rewritten less often (see [`ManifestWriter::lag`]).
    last_size: u64,
    counters: ManifestCounters,
    /// Each image's JSON as last written; dropped when the image changes.
    fragments: HashMap<(FlavorName, Place), Vec<u8>>,
}

/// The average bandwidth a growing manifest may take: see [`ManifestWriter::lag`].
pub const MANIFEST_WRITE_RATE: u64 = 32 * 1024;
/// The longest the manifest on disk lags behind the run (an interrupt and the end write it at once).
pub const MAX_MANIFEST_LAG: Duration = Duration::from_secs(120);

/// How much a writer wrote: for the benches.
#[derive(Clone, Debug, Default)]
pub struct ManifestCounters {
    pub bytes: Arc<AtomicU64>,
    pub writes: Arc<AtomicU64>,
}

impl ManifestWriter {
    pub fn new(path: PathBuf, min_interval: Duration) -> Self {
        ManifestWriter {
            path,
            manifest: None,
            min_interval,
            last_write: None,
            dirty: false,
            carried: BTreeSet::new(),
            last_size: 0,
            counters: ManifestCounters::default(),
            fragments: HashMap::new(),
        }
    }

    /// How long after a write the next one may come: `min_interval`, or for a big manifest as long as writing
    /// it at [`MANIFEST_WRITE_RATE`] takes (at most [`MAX_MANIFEST_LAG`]). A run of thousands of images then
    /// spends a bounded share of the disk on its manifest (a 5 MB manifest of 10,000 images: every 2 minutes)
    /// instead of rewriting it whole after every event; a small one stays current within a second.
    fn lag(&self) -> Duration {
        let by_size = Duration::from_secs_f64(self.last_size as f64 / MANIFEST_WRITE_RATE as f64);
        by_size.min(MAX_MANIFEST_LAG).max(self.min_interval)
    }

    /// Its byte and write counts, shared (they go on counting after the writer is handed to the pump).
    pub fn counters(&self) -> ManifestCounters {
        self.counters.clone()
    }

    fn changed(&mut self) -> Result<(), ReportError> {
        self.dirty = true;
        Ok(())
    }

    fn write(&mut self) -> Result<(), ReportError> {
        let Some(manifest) = &mut self.manifest else {
            return Ok(());
        };
        self.dirty = false;
        self.last_write = Some(Instant::now());
        let failed = |error| ReportError(format!("cannot write the manifest `{}`: {error}", self.path.display()));
        let fragments = &mut self.fragments;
        let written =
            crate::state::atomic::replace_streamed(&self.path, |out| manifest.serialize_cached(out, fragments))
                .map_err(failed)?;
        self.counters.bytes.fetch_add(written, Ordering::Relaxed);
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.last_size = written;
        Ok(())
    }
}

impl Reporter for ManifestWriter {
    fn report(&mut self, stamped: &Stamped) -> Result<(), ReportError> {
        match &stamped.event {
            RunEvent::RunStarted { fleet, run_id, started_at, planned, selective, .. } => {
                // A resumed run starts from the images its manifest already lists, so they never drop out of
                // the file while the run re-announces them. A selective run (`--only`, `--except`) keeps what
                // the earlier manifest lists outside its selection: those images are untouched, still true.
                self.fragments.clear();
                let earlier = Manifest::read(&self.path).ok();
                let resumed = earlier.as_ref().is_some_and(|earlier| earlier.run_id == run_id.as_str());
                // Either way, in every account: an earlier manifest of version 1 reads as one without copies in
                // other accounts.
                let mut manifest = Manifest {
                    version: MANIFEST_VERSION,
                    fleet: fleet.clone(),
                    run_id: run_id.to_string(),
                    status: ManifestStatus::Partial,
                    started_at: started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    finished_at: None,
                    artifacts: BTreeMap::new(),
                    distributed: BTreeMap::new(),
                    failures: Vec::new(),
                    in_progress: Vec::new(),
                };
                if let Some(earlier) = earlier.filter(|_| resumed || *selective) {
                    let touched: BTreeSet<(&FlavorName, &Place)> =
                        planned.iter().map(|landing| (&landing.job.flavor, &landing.job.place)).collect();
                    for (flavor, place, entry) in earlier.entries() {
                        let ours = touched.contains(&(flavor, &place));
                        if ours && resumed {
                            self.carried.insert((flavor.clone(), place.clone()));
                        }
                        if resumed || !ours {
                            manifest.insert(flavor, &place, entry.clone());
                        }
                    }
                }
                self.manifest = Some(manifest);
                self.write()
            }
            RunEvent::ImageAvailable { job, artifact } => {
                let key = (job.flavor.clone(), job.place.clone());
                self.carried.remove(&key);
                self.fragments.remove(&key);
                if let Some(manifest) = &mut self.manifest {
                    manifest.insert(&job.flavor, &job.place, ImageEntry::owned_by(&job.place.account, artifact));
                    manifest.in_progress.retain(|image| {
                        image.flavor != job.flavor
                            || image.region != job.place.region
                            || image.account != job.place.account
                    });
                }
                self.changed()
            }
            RunEvent::Published { job, publication } => {
                self.fragments.remove(&(job.flavor.clone(), job.place.clone()));
                let artifact =
                    self.manifest.as_mut().and_then(|manifest| manifest.image_in_mut(&job.flavor, &job.place));
                if let Some(artifact) = artifact {
                    let publication = PublicationEntry::from(publication);
                    if !artifact.published.contains(&publication) {
                        artifact.published.push(publication);
                    }
                }
                self.changed()
            }
            RunEvent::ImageInProgress(image) => {
                if let Some(manifest) = &mut self.manifest {
                    manifest.in_progress.push(InProgressEntry::from(image));
                }
                self.changed()
            }
            // At once: the process may not get much longer (a second signal exits without waiting).
            RunEvent::Interrupted { .. } => self.write(),
            RunEvent::JobFailed(failure) => {
                if let Some(manifest) = &mut self.manifest {
                    manifest.failures.push(FailureEntry::from(failure));
                }
                self.changed()
            }
            RunEvent::Kept(kept) => {
                // Announced after its build's failures: the last of them (not a cleanup's) lists it.
                if let (Some(manifest), Some(job)) = (&mut self.manifest, &kept.job) {
                    let failure = manifest.failures.iter_mut().rev().find(|entry| {
                        entry.flavor == job.flavor && entry.region == job.place.region && entry.stage != "cleanup"
                    });
                    if let Some(entry) = failure {
                        entry.kept = Some(kept.into());
                    }
                }
                self.changed()
            }
            RunEvent::RunFinished { status, finished_at, .. } => {
                if let Some(manifest) = &mut self.manifest {
                    for (flavor, place) in std::mem::take(&mut self.carried) {
                        manifest.remove(&flavor, &place);
                    }
                    manifest.status = ManifestStatus::from(*status);
                    manifest.finished_at = Some(finished_at.to_rfc3339_opts(SecondsFormat::Secs, true));
                }
                self.write()
            }
            _ => Ok(()),
        }
    }

    fn flush(&mut self, at_end: bool) -> Result<(), ReportError> {
        let due = self.last_write.is_none_or(|last| Instant::now() >= last + self.lag());
        if self.dirty && (at_end || due) {
            self.write()?;
        }
        Ok(())
    }

    fn flush_due(&self) -> Option<Instant> {
        self.dirty.then(|| self.last_write.map_or_else(Instant::now, |last| last + self.lag()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::ImageId;
    use crate::outcome::{Artifact, Failure, RunStatus};
    use crate::plan::RunId;

    fn stamped(event: RunEvent) -> Stamped {
        Stamped { at: "2026-11-26T12:00:00Z".parse().unwrap(), event }
    }

    fn started(run_id: &RunId) -> Stamped {
        let job = crate::outcome::JobLabel::new(FlavorName::new("base"), Region::new("us-west-2"));
        stamped(RunEvent::RunStarted {
            fleet: "unit".into(),
            run_id: run_id.clone(),
            started_at: "2026-11-26T12:00:00Z".parse().unwrap(),
            builds: 1,
            copies: 0,
            planned: vec![crate::report::events::PlannedLanding {
                job,
                kind: crate::report::events::JobKind::Build,
                build_region: Region::new("us-west-2"),
            }],
            selective: false,
        })
    }

    #[test]
    fn the_cached_serialization_is_serde_json_s_byte_for_byte() {
        let artifact = |image: &str| Artifact {
            image_id: ImageId::new(image),
            name: "a \"quoted\" name\nwith a line".into(),
            build_region: Region::new("us-west-2"),
            source_image_id: ImageId::new("ami-0"),
            snapshot_ids: vec![crate::cloud::SnapshotId::new("snap-1"), crate::cloud::SnapshotId::new("snap-2")],
            created_at: "2026-11-26T12:10:00Z".into(),
            fingerprint: Some("ab".repeat(32)),
            reused_from: None,
            published: Vec::new(),
            parent: None,
            settings: Default::default(),
        };
        let mut manifest = Manifest {
            version: MANIFEST_VERSION,
            fleet: "unit \"fleet\"".into(),
            run_id: "r".into(),
            status: ManifestStatus::Partial,
            started_at: "2026-11-26T12:00:00Z".into(),
            finished_at: None,
            artifacts: BTreeMap::new(),
            distributed: BTreeMap::new(),
            failures: Vec::new(),
            in_progress: Vec::new(),
        };
        let (mut cached, mut plain, mut fragments) = (Vec::new(), Vec::new(), HashMap::new());
        manifest.serialize_cached(&mut cached, &mut fragments).unwrap();
        manifest.serialize_into(&mut plain).unwrap();
        assert_eq!(String::from_utf8_lossy(&cached), String::from_utf8_lossy(&plain), "no artifacts");
        for (flavor, regions) in [("base", ["us-west-2", "us-east-1"]), ("web", ["eu-west-1", "us-west-2"])] {
            for region in regions {
                let image = format!("ami-{flavor}-{region}");
                manifest
                    .artifacts
                    .entry(FlavorName::new(flavor))
                    .or_default()
                    .insert(Region::new(region), ImageEntry::from(&artifact(&image)));
            }
        }
        for (account, region) in
            [("222233334444", "us-east-1"), ("222233334444", "eu-west-1"), ("555566667777", "us-east-1")]
        {
            let place = Place { account: Account::Id(account.into()), region: Region::new(region) };
            let image = format!("ami-{account}-{region}");
            manifest.insert(&FlavorName::new("web"), &place, ImageEntry::owned_by(&place.account, &artifact(&image)));
        }
        manifest.failures.push(FailureEntry::from(&Failure::new(
            &crate::outcome::JobLabel::new(FlavorName::new("web"), Region::new("ap-south-1")),
            crate::outcome::Stage::Launch,
            "no",
        )));
        for _ in 0..2 {
            cached.clear();
            manifest.serialize_cached(&mut cached, &mut fragments).unwrap();
            manifest.serialize_into(&mut plain).unwrap();
            assert_eq!(String::from_utf8_lossy(&cached), String::from_utf8_lossy(&plain));
        }
        assert_eq!(fragments.len(), 7, "each image serialized once");
    }

    #[test]
    fn a_resumed_run_keeps_the_images_its_manifest_lists_and_a_new_run_does_not() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        let run = RunId::new("2026-11-26T12:00:00Z".parse().unwrap(), 1);
        let artifact = artifact("ami-1");
        let mut first = ManifestWriter::new(path.clone(), Duration::ZERO);
        first.report(&started(&run)).unwrap();
        let job = crate::outcome::JobLabel::new(FlavorName::new("base"), Region::new("us-west-2"));
        first.report(&stamped(RunEvent::ImageAvailable { job, artifact: artifact.clone() })).unwrap();
        first.flush(true).unwrap();

        ManifestWriter::new(path.clone(), Duration::ZERO).report(&started(&run)).unwrap();
        let resumed = Manifest::read(&path).unwrap();
        assert_eq!(resumed.artifacts[&FlavorName::new("base")][&Region::new("us-west-2")], ImageEntry::from(&artifact));
        assert_eq!(resumed.status, ManifestStatus::Partial);

        // Never announced again by the resumed attempt: gone from the final manifest.
        let mut again = ManifestWriter::new(path.clone(), Duration::ZERO);
        again.report(&started(&run)).unwrap();
        let finished_at = "2026-11-26T12:30:00Z".parse().unwrap();
        let finished =
            RunEvent::RunFinished { status: RunStatus::Failed, finished_at, succeeded: 0, failed: 1, in_progress: 0 };
        again.report(&stamped(finished)).unwrap();
        assert!(Manifest::read(&path).unwrap().artifacts.is_empty());

        let other = RunId::new("2026-11-26T13:00:00Z".parse().unwrap(), 2);
        ManifestWriter::new(path.clone(), Duration::ZERO).report(&started(&other)).unwrap();
        assert!(Manifest::read(&path).unwrap().artifacts.is_empty());
    }

    fn artifact(image: &str) -> Artifact {
        Artifact::sample(image, "us-west-2", "2026-11-26T12:10:00Z")
    }

    fn in_account(account: &str, region: &str) -> Place {
        Place { account: Account::Id(account.into()), region: Region::new(region) }
    }

    /// What fleetbake 1 wrote (version 1, no `distributed`, no `account`) reads: `manifest get`, `diff`, gc and
    /// `--only` over an old file keep working.
    #[test]
    fn a_version_1_manifest_reads_as_one_without_other_accounts() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        let version_1 = r#"{"version":1,"fleet":"f","run_id":"r","status":"partial","started_at":"t","finished_at":null,
            "artifacts":{"base":{"us-west-2":{"image_id":"ami-1","name":"base","build_region":"us-west-2",
            "source_image_id":"ami-0","snapshot_ids":[],"created_at":"t"}}},
            "failures":[{"flavor":"base","region":"eu-west-1","stage":"copy","error":"no"}],
            "in_progress":[{"flavor":"base","region":"ap-south-1","image_id":"ami-2"}]}"#;
        std::fs::write(&path, version_1).unwrap();
        let manifest = Manifest::read(&path).unwrap();
        assert_eq!(manifest.version, 1);
        assert_eq!(manifest.image("base", "us-west-2"), Some(&ImageId::new("ami-1")));
        assert_eq!(
            manifest.image_in(&FlavorName::new("base"), &Place::own(Region::new("us-west-2"))).unwrap().account,
            Account::Own
        );
        assert!(manifest.distributed.is_empty());
        assert_eq!(manifest.failures[0].account, Account::Own);
        assert_eq!(manifest.in_progress[0].account, Account::Own);
        assert_eq!(manifest.entries().count(), 1);
        assert!(diff(&manifest, &manifest).is_empty());
    }

    /// A copy into another account is listed under `distributed[flavor][account][region]`, never under the
    /// own account's region of the same name; a version-2 file reads back as written.
    #[test]
    fn another_account_s_copy_is_listed_under_its_account_and_region() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        let run = RunId::new("2026-11-26T12:00:00Z".parse().unwrap(), 1);
        let mut writer = ManifestWriter::new(path.clone(), Duration::ZERO);
        writer.report(&started(&run)).unwrap();
        let base = FlavorName::new("base");
        let own = crate::outcome::JobLabel::new(base.clone(), Region::new("us-east-1"));
        let other = crate::outcome::JobLabel { place: in_account("222233334444", "us-east-1"), ..own.clone() };
        writer.report(&stamped(RunEvent::ImageAvailable { job: own.clone(), artifact: artifact("ami-own") })).unwrap();
        writer
            .report(&stamped(RunEvent::ImageAvailable { job: other.clone(), artifact: artifact("ami-other") }))
            .unwrap();
        writer.flush(true).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let manifest = Manifest::read(&path).unwrap();
        assert_eq!(manifest.version, MANIFEST_VERSION);
        assert_eq!(manifest.image("base", "us-east-1"), Some(&ImageId::new("ami-own")), "{text}");
        let listed = &manifest.distributed[&base]["222233334444"][&Region::new("us-east-1")];
        assert_eq!((&listed.image_id, &listed.account), (&ImageId::new("ami-other"), &other.place.account));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["distributed"]["base"]["222233334444"]["us-east-1"]["account"], "222233334444");
        assert!(json["artifacts"]["base"]["us-east-1"].get("account").is_none(), "{text}");
        let places: Vec<String> = manifest.entries().map(|(_, place, _)| place.to_string()).collect();
        assert_eq!(places, ["us-east-1", "222233334444/us-east-1"]);
    }

    /// `--only` keeps what it did not touch in every account; a resume drops a copy in another account it
    /// never announced again, and keeps the one it did.
    #[test]
    fn a_selective_run_keeps_other_accounts_images_and_a_resume_drops_those_not_made_again() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        let run = RunId::new("2026-11-26T12:00:00Z".parse().unwrap(), 1);
        let base = FlavorName::new("base");
        let mut first = ManifestWriter::new(path.clone(), Duration::ZERO);
        first.report(&started(&run)).unwrap();
        for (account, image) in [("222233334444", "ami-a"), ("555566667777", "ami-b")] {
            let job = crate::outcome::JobLabel { flavor: base.clone(), place: in_account(account, "us-west-2") };
            first.report(&stamped(RunEvent::ImageAvailable { job, artifact: artifact(image) })).unwrap();
        }
        first.flush(true).unwrap();

        // Another run, of `base/us-west-2` and its copy into 222233334444 only (`--only`).
        let other = RunId::new("2026-11-26T13:00:00Z".parse().unwrap(), 2);
        let landing = |place: Place| crate::report::events::PlannedLanding {
            job: crate::outcome::JobLabel { flavor: base.clone(), place },
            kind: crate::report::events::JobKind::Copy,
            build_region: Region::new("us-west-2"),
        };
        let selective = stamped(RunEvent::RunStarted {
            fleet: "unit".into(),
            run_id: other.clone(),
            started_at: "2026-11-26T13:00:00Z".parse().unwrap(),
            builds: 1,
            copies: 1,
            planned: vec![
                landing(Place::own(Region::new("us-west-2"))),
                landing(in_account("222233334444", "us-west-2")),
            ],
            selective: true,
        });
        ManifestWriter::new(path.clone(), Duration::ZERO).report(&selective).unwrap();
        let kept = Manifest::read(&path).unwrap();
        assert!(
            kept.image_in(&base, &in_account("222233334444", "us-west-2")).is_none(),
            "touched: this run's to make"
        );
        assert_eq!(
            kept.image_in(&base, &in_account("555566667777", "us-west-2")).unwrap().image_id,
            ImageId::new("ami-b")
        );

        // Resuming the first run: the copy into 555566667777 is announced again, 222233334444's is not.
        let mut resumed = ManifestWriter::new(path.clone(), Duration::ZERO);
        std::fs::remove_file(&path).unwrap();
        first.report(&started(&run)).unwrap();
        for (account, image) in [("222233334444", "ami-a"), ("555566667777", "ami-b")] {
            let job = crate::outcome::JobLabel { flavor: base.clone(), place: in_account(account, "us-west-2") };
            first.report(&stamped(RunEvent::ImageAvailable { job, artifact: artifact(image) })).unwrap();
        }
        first.flush(true).unwrap();
        let planned = |account: &str| landing(in_account(account, "us-west-2"));
        resumed
            .report(&stamped(RunEvent::RunStarted {
                fleet: "unit".into(),
                run_id: run.clone(),
                started_at: "2026-11-26T12:00:00Z".parse().unwrap(),
                builds: 0,
                copies: 2,
                planned: vec![planned("222233334444"), planned("555566667777")],
                selective: false,
            }))
            .unwrap();
        assert_eq!(Manifest::read(&path).unwrap().entries().count(), 2, "both carried while the run goes on");
        let job = crate::outcome::JobLabel { flavor: base.clone(), place: in_account("555566667777", "us-west-2") };
        resumed.report(&stamped(RunEvent::ImageAvailable { job, artifact: artifact("ami-b") })).unwrap();
        let finished_at = "2026-11-26T12:30:00Z".parse().unwrap();
        let finished =
            RunEvent::RunFinished { status: RunStatus::Partial, finished_at, succeeded: 1, failed: 1, in_progress: 0 };
        resumed.report(&stamped(finished)).unwrap();
        let end = Manifest::read(&path).unwrap();
        let places: Vec<String> = end.entries().map(|(_, place, _)| place.to_string()).collect();
        assert_eq!(places, ["555566667777/us-west-2"]);
        assert!(end.artifacts.is_empty() && !end.distributed[&base].contains_key("222233334444"));
    }

    #[test]
    fn a_diff_names_each_account_s_images() {
        let base = FlavorName::new("base");
        let empty = Manifest {
            version: MANIFEST_VERSION,
            fleet: "f".into(),
            run_id: "r".into(),
            status: ManifestStatus::Complete,
            started_at: "t".into(),
            finished_at: None,
            artifacts: BTreeMap::new(),
            distributed: BTreeMap::new(),
            failures: Vec::new(),
            in_progress: Vec::new(),
        };
        let mut old = empty.clone();
        old.insert(&base, &Place::own(Region::new("us-east-1")), ImageEntry::from(&artifact("ami-1")));
        old.insert(&base, &in_account("222233334444", "us-east-1"), ImageEntry::from(&artifact("ami-2")));
        let mut new = old.clone();
        new.insert(&base, &in_account("222233334444", "us-east-1"), ImageEntry::from(&artifact("ami-3")));
        new.insert(&base, &in_account("555566667777", "eu-west-1"), ImageEntry::from(&artifact("ami-4")));
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["~ base/222233334444/us-east-1 ami-2 -> ami-3", "+ base/555566667777/eu-west-1 ami-4"]);
        let mut only_elsewhere = empty.clone();
        only_elsewhere.insert(&base, &in_account("222233334444", "us-east-1"), ImageEntry::from(&artifact("ami-2")));
        let lines: Vec<String> = diff(&empty, &only_elsewhere).iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["+ base (flavor added)", "+ base/222233334444/us-east-1 ami-2"]);
        only_elsewhere.remove(&base, &in_account("222233334444", "us-east-1"));
        assert_eq!(only_elsewhere, empty, "an account and a flavor left with nothing are dropped");
    }

    /// The file deploy tooling reads, whole: every field an image, a publication, a failure and an image in
    /// progress can have. A change to an outcome or to the writer that changes the file fails here; accept it
    /// only with a new `MANIFEST_VERSION` if a reader could notice.
    #[test]
    fn a_run_s_manifest_file_is_pinned() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        let run = RunId::new("2026-11-26T12:00:00Z".parse().unwrap(), 7);
        let label =
            |flavor: &str, region: &str| crate::outcome::JobLabel::new(FlavorName::new(flavor), Region::new(region));
        let built = Artifact {
            image_id: ImageId::new("ami-0base"),
            name: "base-20261126T120000Z".into(),
            build_region: Region::new("us-west-2"),
            source_image_id: ImageId::new("ami-0source"),
            snapshot_ids: vec![crate::cloud::SnapshotId::new("snap-0base")],
            created_at: "2026-11-26T12:10:00Z".into(),
            fingerprint: Some("ab".repeat(32)),
            reused_from: None,
            published: Vec::new(),
            parent: None,
            settings: Box::new(crate::outcome::ImageSettings {
                kms_key_id: Some("arn:aws:kms:us-west-2:111122223333:key/base".into()),
                imds_support: Some("v2.0".into()),
                deprecation_time: Some("2027-11-26T12:10:00Z".into()),
                shared_with: Some(crate::config::Sharing {
                    accounts: vec!["444455556666".into()],
                    organizations: vec!["arn:aws:organizations::111122223333:organization/o-abc".into()],
                    organizational_units: Vec::new(),
                    snapshot_accounts: vec!["444455556666".into()],
                    public: false,
                }),
                interface: Some("session_manager".into()),
                source_parameter: Some(crate::outcome::SourceParameter {
                    name: "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64".into(),
                    version: 61,
                }),
                built_on: Some(crate::outcome::BuiltOn {
                    market: crate::config::Market::Spot,
                    instance_type: "t3.micro".into(),
                }),
            }),
        };
        let copied = Artifact {
            image_id: ImageId::new("ami-0copy"),
            snapshot_ids: vec![crate::cloud::SnapshotId::new("snap-0copy")],
            created_at: "2026-11-26T12:20:00Z".into(),
            reused_from: Some("20261125T120000Z-3".into()),
            parent: None,
            settings: Box::default(),
            ..built.clone()
        };
        // A copy another account owns (`[[distribution]]`): under `distributed`, encrypted with its key.
        let elsewhere = |flavor: &str, region: &str| crate::outcome::JobLabel {
            place: Place { account: Account::Id("222233334444".into()), region: Region::new(region) },
            ..label(flavor, region)
        };
        let distributed = Artifact {
            image_id: ImageId::new("ami-0dist"),
            snapshot_ids: vec![crate::cloud::SnapshotId::new("snap-0dist")],
            created_at: "2026-11-26T12:25:00Z".into(),
            reused_from: None,
            settings: Box::new(crate::outcome::ImageSettings {
                kms_key_id: Some("arn:aws:kms:us-east-1:222233334444:key/images".into()),
                ..crate::outcome::ImageSettings::default()
            }),
            ..copied.clone()
        };
        let failure = crate::outcome::Failure {
            code: Some("UnauthorizedOperation".into()),
            hint: Some("grant `ec2:RunInstances`".into()),
            logs: vec![std::path::PathBuf::from("/srv/.fleetbake/it/logs/web/us-west-2/on_failure-1.log")],
            ..crate::outcome::Failure::new(&label("web", "us-west-2"), crate::outcome::Stage::Launch, "not allowed")
        };
        let events = [
            RunEvent::ImageAvailable { job: label("base", "us-west-2"), artifact: built },
            RunEvent::Published {
                job: label("base", "us-west-2"),
                publication: crate::outcome::Publication::SsmParameter {
                    name: "/images/base".into(),
                    version: 3,
                    label: format!("fleetbake-{run}"),
                },
            },
            RunEvent::Published {
                job: label("base", "us-west-2"),
                publication: crate::outcome::Publication::LaunchTemplate {
                    name: "base".into(),
                    id: "lt-0base".into(),
                    version: 12,
                },
            },
            RunEvent::ImageAvailable { job: label("base", "eu-west-1"), artifact: copied.clone() },
            RunEvent::ImageAvailable { job: elsewhere("base", "us-east-1"), artifact: distributed },
            RunEvent::Published {
                job: elsewhere("base", "us-east-1"),
                publication: crate::outcome::Publication::SsmParameter {
                    name: "/images/base".into(),
                    version: 1,
                    label: format!("fleetbake-{run}"),
                },
            },
            RunEvent::JobFailed(failure),
            RunEvent::JobFailed(crate::outcome::Failure::new(
                &elsewhere("base", "eu-west-1"),
                crate::outcome::Stage::Copy,
                "not authorized to assume the role",
            )),
            RunEvent::ImageInProgress(crate::outcome::InProgress {
                flavor: FlavorName::new("base"),
                region: Region::new("ap-south-1"),
                account: Account::Own,
                image_id: ImageId::new("ami-0pending"),
            }),
            RunEvent::ImageInProgress(crate::outcome::InProgress::new(
                &elsewhere("base", "ap-south-1"),
                ImageId::new("ami-0pending2"),
            )),
            RunEvent::RunFinished {
                status: RunStatus::Partial,
                finished_at: "2026-11-26T12:30:00Z".parse().unwrap(),
                succeeded: 3,
                failed: 2,
                in_progress: 2,
            },
        ];
        let mut writer = ManifestWriter::new(path.clone(), Duration::ZERO);
        writer.report(&started(&run)).unwrap();
        for event in events {
            writer.report(&stamped(event)).unwrap();
        }
        writer.flush(true).unwrap();
        insta::assert_snapshot!(std::fs::read_to_string(&path).unwrap());
    }
}
