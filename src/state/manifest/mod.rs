//! The artifact manifest deploy tooling reads: the document (its entries' own types are in `format.rs`, built
//! from the run's outcomes), and the reporter that rewrites it atomically (temp file + rename) as images become
//! available and jobs fail, within a lag that grows with its size.

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

use crate::config::{FlavorName, Region};
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
    /// flavor → region → image; the build region too.
    pub artifacts: BTreeMap<FlavorName, BTreeMap<Region, ImageEntry>>,
    pub failures: Vec<FailureEntry>,
    /// Images still being made when the run was interrupted: `--resume` waits for them.
    #[serde(default)]
    pub in_progress: Vec<InProgressEntry>,
}

/// One difference between two manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    FlavorAdded { flavor: FlavorName },
    FlavorRemoved { flavor: FlavorName },
    RegionGained { flavor: FlavorName, region: Region, image: crate::cloud::ImageId },
    RegionLost { flavor: FlavorName, region: Region, image: crate::cloud::ImageId },
    NewImage { flavor: FlavorName, region: Region, old: crate::cloud::ImageId, new: crate::cloud::ImageId },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::FlavorAdded { flavor } => write!(f, "+ {flavor} (flavor added)"),
            Change::FlavorRemoved { flavor } => write!(f, "- {flavor} (flavor removed)"),
            Change::RegionGained { flavor, region, image } => write!(f, "+ {flavor}/{region} {image}"),
            Change::RegionLost { flavor, region, image } => write!(f, "- {flavor}/{region} {image}"),
            Change::NewImage { flavor, region, old, new } => write!(f, "~ {flavor}/{region} {old} -> {new}"),
        }
    }
}

/// What changed from `old` to `new`, flavor by flavor, region by region.
pub fn diff(old: &Manifest, new: &Manifest) -> Vec<Change> {
    let mut changes = Vec::new();
    let flavors: BTreeSet<&FlavorName> = old.artifacts.keys().chain(new.artifacts.keys()).collect();
    let empty = BTreeMap::new();
    for flavor in flavors {
        let (before, after) = (old.artifacts.get(flavor), new.artifacts.get(flavor));
        match (before, after) {
            (None, Some(_)) => changes.push(Change::FlavorAdded { flavor: flavor.clone() }),
            (Some(_), None) => changes.push(Change::FlavorRemoved { flavor: flavor.clone() }),
            _ => {}
        }
        let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
        let regions: BTreeSet<&Region> = before.keys().chain(after.keys()).collect();
        for region in regions {
            let (flavor, region_name) = (flavor.clone(), region.clone());
            match (before.get(region), after.get(region)) {
                (None, Some(now)) => {
                    changes.push(Change::RegionGained { flavor, region: region_name, image: now.image_id.clone() })
                }
                (Some(then), None) => {
                    changes.push(Change::RegionLost { flavor, region: region_name, image: then.image_id.clone() })
                }
                (Some(then), Some(now)) if then.image_id != now.image_id => changes.push(Change::NewImage {
                    flavor,
                    region: region_name,
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
    /// The image of `flavor` in `region`, if the manifest lists one.
    pub fn image(&self, flavor: &str, region: &str) -> Option<&crate::cloud::ImageId> {
        let regions = self.artifacts.get(&FlavorName::new(flavor))?;
        regions.get(&Region::new(region)).map(|artifact| &artifact.image_id)
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

    /// As [`Manifest::serialize_into`], byte for byte, with each artifact's JSON taken from `fragments` (made
    /// and kept there the first time): a rewrite serializes only what changed since the last, and copies the
    /// rest.
    pub fn serialize_cached(
        &mut self,
        buffer: &mut Vec<u8>,
        fragments: &mut HashMap<(FlavorName, Region), Vec<u8>>,
    ) -> std::io::Result<()> {
        let artifacts = std::mem::take(&mut self.artifacts);
        let serialized = self.serialize_into(buffer);
        self.artifacts = artifacts;
        serialized?;
        if self.artifacts.is_empty() {
            return Ok(());
        }
        const EMPTY: &[u8] = b"\n  \"artifacts\": {},\n";
        let at = buffer.windows(EMPTY.len()).position(|window| window == EMPTY).expect("the manifest has artifacts");
        let tail = buffer.split_off(at + EMPTY.len() - 2);
        buffer.truncate(at + EMPTY.len() - 4);
        buffer.extend_from_slice(b"{\n");
        for (index, (flavor, regions)) in self.artifacts.iter().enumerate() {
            if index > 0 {
                buffer.extend_from_slice(b",\n");
            }
            buffer.extend_from_slice(b"    ");
            serde_json::to_writer(&mut *buffer, flavor).map_err(std::io::Error::other)?;
            buffer.extend_from_slice(b": {\n");
            for (index, (region, artifact)) in regions.iter().enumerate() {
                if index > 0 {
                    buffer.extend_from_slice(b",\n");
                }
                buffer.extend_from_slice(b"      ");
                serde_json::to_writer(&mut *buffer, region).map_err(std::io::Error::other)?;
                buffer.extend_from_slice(b": ");
                let fragment = match fragments.entry((flavor.clone(), region.clone())) {
                    std::collections::hash_map::Entry::Occupied(cached) => cached.into_mut(),
                    std::collections::hash_map::Entry::Vacant(empty) => {
                        let pretty = serde_json::to_vec_pretty(artifact).map_err(std::io::Error::other)?;
                        let mut indented = Vec::with_capacity(pretty.len() + pretty.len() / 8);
                        for &byte in &pretty {
                            indented.push(byte);
                            if byte == b'\n' {
                                indented.extend_from_slice(b"      ");
                            }
                        }
                        empty.insert(indented)
                    }
                };
                buffer.extend_from_slice(fragment);
            }
            buffer.extend_from_slice(b"\n    }");
        }
        buffer.extend_from_slice(b"\n  }");
        buffer.extend_from_slice(&tail);
        Ok(())
    }
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
    carried: BTreeSet<(FlavorName, Region)>,
    /// The size of the last write: a big manifest is rewritten less often (see [`ManifestWriter::lag`]).
    last_size: u64,
    counters: ManifestCounters,
    /// The serialized manifest, reused from one write to the next.
    buffer: Vec<u8>,
    /// Each artifact's JSON as last written; dropped when the artifact changes.
    fragments: HashMap<(FlavorName, Region), Vec<u8>>,
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
            buffer: Vec::new(),
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
        manifest.serialize_cached(&mut self.buffer, &mut self.fragments).map_err(failed)?;
        crate::state::atomic::replace(&self.path, &self.buffer).map_err(failed)?;
        let written = self.buffer.len() as u64;
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
                let mut artifacts = BTreeMap::new();
                if let Some(earlier) = earlier.filter(|_| resumed || *selective) {
                    let touched: BTreeSet<(&FlavorName, &Region)> =
                        planned.iter().map(|landing| (&landing.job.flavor, landing.job.region())).collect();
                    for (flavor, regions) in earlier.artifacts {
                        for (region, artifact) in regions {
                            let ours = touched.contains(&(&flavor, &region));
                            if ours && resumed {
                                self.carried.insert((flavor.clone(), region.clone()));
                            }
                            if resumed || !ours {
                                artifacts.entry(flavor.clone()).or_insert_with(BTreeMap::new).insert(region, artifact);
                            }
                        }
                    }
                }
                self.manifest = Some(Manifest {
                    version: MANIFEST_VERSION,
                    fleet: fleet.clone(),
                    run_id: run_id.to_string(),
                    status: ManifestStatus::Partial,
                    started_at: started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    finished_at: None,
                    artifacts,
                    failures: Vec::new(),
                    in_progress: Vec::new(),
                });
                self.write()
            }
            RunEvent::ImageAvailable { job, artifact } => {
                self.carried.remove(&(job.flavor.clone(), job.region().clone()));
                self.fragments.remove(&(job.flavor.clone(), job.region().clone()));
                if let Some(manifest) = &mut self.manifest {
                    manifest
                        .artifacts
                        .entry(job.flavor.clone())
                        .or_default()
                        .insert(job.region().clone(), ImageEntry::from(artifact));
                    manifest.in_progress.retain(|image| image.flavor != job.flavor || &image.region != job.region());
                }
                self.changed()
            }
            RunEvent::Published { job, publication } => {
                self.fragments.remove(&(job.flavor.clone(), job.region().clone()));
                let artifact = self.manifest.as_mut().and_then(|manifest| {
                    manifest.artifacts.get_mut(&job.flavor).and_then(|regions| regions.get_mut(job.region()))
                });
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
            RunEvent::RunFinished { status, finished_at, .. } => {
                if let Some(manifest) = &mut self.manifest {
                    for (flavor, region) in std::mem::take(&mut self.carried) {
                        if let Some(regions) = manifest.artifacts.get_mut(&flavor) {
                            regions.remove(&region);
                        }
                    }
                    manifest.artifacts.retain(|_, regions| !regions.is_empty());
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
            account: None,
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
        manifest.failures.push(FailureEntry::from(&Failure::new(
            &crate::outcome::JobLabel::new(FlavorName::new("web"), Region::new("ap-south-1")),
            crate::outcome::Stage::Launch,
            "no",
        )));
        for _ in 0..2 {
            manifest.serialize_cached(&mut cached, &mut fragments).unwrap();
            manifest.serialize_into(&mut plain).unwrap();
            assert_eq!(String::from_utf8_lossy(&cached), String::from_utf8_lossy(&plain));
        }
        assert_eq!(fragments.len(), 4, "each artifact serialized once");
    }

    #[test]
    fn a_resumed_run_keeps_the_images_its_manifest_lists_and_a_new_run_does_not() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        let run = RunId::new("2026-11-26T12:00:00Z".parse().unwrap(), 1);
        let artifact = Artifact {
            image_id: ImageId::new("ami-1"),
            name: "base".into(),
            account: None,
            build_region: Region::new("us-west-2"),
            source_image_id: ImageId::new("ami-0"),
            snapshot_ids: Vec::new(),
            created_at: "2026-11-26T12:10:00Z".into(),
            fingerprint: None,
            reused_from: None,
            published: Vec::new(),
            parent: None,
            settings: Default::default(),
        };
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
            account: None,
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
        let failure = crate::outcome::Failure {
            code: Some("UnauthorizedOperation".into()),
            hint: Some("grant `ec2:RunInstances`".into()),
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
            RunEvent::ImageAvailable { job: label("base", "eu-west-1"), artifact: copied },
            RunEvent::JobFailed(failure),
            RunEvent::ImageInProgress(crate::outcome::InProgress {
                flavor: FlavorName::new("base"),
                region: Region::new("ap-south-1"),
                image_id: ImageId::new("ami-0pending"),
            }),
            RunEvent::RunFinished {
                status: RunStatus::Partial,
                finished_at: "2026-11-26T12:30:00Z".parse().unwrap(),
                succeeded: 2,
                failed: 1,
                in_progress: 1,
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
