//! The artifact manifest deploy tooling reads: its model, and the reporter that rewrites it atomically
//! (temp file + rename) each time an image becomes available or a job fails.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::SecondsFormat;
use tokio::time::Instant;

use crate::config::{FlavorName, Region};
use crate::report::events::{Artifact, Failure, InProgress, RunEvent, RunStatus};
use crate::report::{ReportError, Reporter};

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub fleet: String,
    pub run_id: String,
    pub status: RunStatus,
    pub started_at: String,
    /// `null` until the run ends.
    pub finished_at: Option<String>,
    /// flavor → region → image; the build region too.
    pub artifacts: BTreeMap<FlavorName, BTreeMap<Region, Artifact>>,
    pub failures: Vec<Failure>,
    /// Images still being made when the run was interrupted: `--resume` waits for them.
    #[serde(default)]
    pub in_progress: Vec<InProgress>,
}

impl Manifest {
    pub fn read(path: &Path) -> std::io::Result<Manifest> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    /// Replaces the file at `path` in one rename, so readers see the old or the new manifest, never a torn one.
    pub fn write_atomically(&self, path: &Path) -> std::io::Result<()> {
        let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(directory)?;
        let mut file = tempfile::Builder::new().prefix(".manifest").suffix(".tmp").tempfile_in(directory)?;
        serde_json::to_writer_pretty(&mut file, self).map_err(std::io::Error::other)?;
        file.write_all(b"\n")?;
        file.as_file().sync_all()?;
        file.persist(path).map_err(|error| error.error)?;
        Ok(())
    }
}

/// Keeps the manifest on disk true to what exists, as events arrive: rewritten after each batch of events, or
/// at most once per `min_interval` (the simulated cloud's virtual nights make thousands of events), and always
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
}

impl ManifestWriter {
    pub fn new(path: PathBuf, min_interval: Duration) -> Self {
        ManifestWriter { path, manifest: None, min_interval, last_write: None, dirty: false, carried: BTreeSet::new() }
    }

    fn changed(&mut self) -> Result<(), ReportError> {
        self.dirty = true;
        Ok(())
    }

    fn write(&mut self) -> Result<(), ReportError> {
        let Some(manifest) = &self.manifest else {
            return Ok(());
        };
        self.dirty = false;
        self.last_write = Some(Instant::now());
        manifest
            .write_atomically(&self.path)
            .map_err(|error| ReportError(format!("cannot write the manifest `{}`: {error}", self.path.display())))
    }
}

impl Reporter for ManifestWriter {
    fn report(&mut self, event: &RunEvent) -> Result<(), ReportError> {
        match event {
            RunEvent::RunStarted { fleet, run_id, started_at, .. } => {
                // A resumed run starts from the images its manifest already lists, so they never drop out of
                // the file while the run re-announces them.
                let artifacts = Manifest::read(&self.path)
                    .ok()
                    .filter(|earlier| earlier.run_id == run_id.as_str())
                    .map(|earlier| earlier.artifacts)
                    .unwrap_or_default();
                self.carried = artifacts
                    .iter()
                    .flat_map(|(flavor, regions)| regions.keys().map(move |region| (flavor.clone(), region.clone())))
                    .collect();
                self.manifest = Some(Manifest {
                    version: MANIFEST_VERSION,
                    fleet: fleet.clone(),
                    run_id: run_id.to_string(),
                    status: RunStatus::Partial,
                    started_at: started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    finished_at: None,
                    artifacts,
                    failures: Vec::new(),
                    in_progress: Vec::new(),
                });
                self.write()
            }
            RunEvent::ImageAvailable { job, artifact } => {
                self.carried.remove(&(job.flavor.clone(), job.region.clone()));
                if let Some(manifest) = &mut self.manifest {
                    manifest
                        .artifacts
                        .entry(job.flavor.clone())
                        .or_default()
                        .insert(job.region.clone(), artifact.clone());
                    manifest.in_progress.retain(|image| image.flavor != job.flavor || image.region != job.region);
                }
                self.changed()
            }
            RunEvent::ImageInProgress(image) => {
                if let Some(manifest) = &mut self.manifest {
                    manifest.in_progress.push(image.clone());
                }
                self.changed()
            }
            RunEvent::JobFailed(failure) => {
                if let Some(manifest) = &mut self.manifest {
                    manifest.failures.push(failure.clone());
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
                    manifest.status = *status;
                    manifest.finished_at = Some(finished_at.to_rfc3339_opts(SecondsFormat::Secs, true));
                }
                self.write()
            }
            _ => Ok(()),
        }
    }

    fn flush(&mut self, at_end: bool) -> Result<(), ReportError> {
        let due = self.last_write.is_none_or(|last| Instant::now() >= last + self.min_interval);
        if self.dirty && (at_end || due) {
            self.write()?;
        }
        Ok(())
    }

    fn flush_due(&self) -> Option<Instant> {
        self.dirty.then(|| self.last_write.map_or_else(Instant::now, |last| last + self.min_interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::ImageId;
    use crate::plan::RunId;

    fn started(run_id: &RunId) -> RunEvent {
        RunEvent::RunStarted {
            fleet: "unit".into(),
            run_id: run_id.clone(),
            started_at: "2026-11-26T12:00:00Z".parse().unwrap(),
            builds: 1,
            copies: 0,
        }
    }

    #[test]
    fn a_resumed_run_keeps_the_images_its_manifest_lists_and_a_new_run_does_not() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        let run = RunId::new("2026-11-26T12:00:00Z".parse().unwrap(), 1);
        let artifact = Artifact {
            image_id: ImageId::new("ami-1"),
            name: "base".into(),
            build_region: Region::new("us-west-2"),
            source_image_id: ImageId::new("ami-0"),
            snapshot_ids: Vec::new(),
            created_at: "2026-11-26T12:10:00Z".into(),
            settings: Default::default(),
        };
        let mut first = ManifestWriter::new(path.clone(), Duration::ZERO);
        first.report(&started(&run)).unwrap();
        let job = crate::report::events::JobLabel { flavor: FlavorName::new("base"), region: Region::new("us-west-2") };
        first.report(&RunEvent::ImageAvailable { job, artifact: artifact.clone() }).unwrap();
        first.flush(true).unwrap();

        ManifestWriter::new(path.clone(), Duration::ZERO).report(&started(&run)).unwrap();
        let resumed = Manifest::read(&path).unwrap();
        assert_eq!(resumed.artifacts[&FlavorName::new("base")][&Region::new("us-west-2")], artifact);
        assert_eq!(resumed.status, RunStatus::Partial);

        // Never announced again by the resumed attempt: gone from the final manifest.
        let mut again = ManifestWriter::new(path.clone(), Duration::ZERO);
        again.report(&started(&run)).unwrap();
        let finished_at = "2026-11-26T12:30:00Z".parse().unwrap();
        let finished =
            RunEvent::RunFinished { status: RunStatus::Failed, finished_at, succeeded: 0, failed: 1, in_progress: 0 };
        again.report(&finished).unwrap();
        assert!(Manifest::read(&path).unwrap().artifacts.is_empty());

        let other = RunId::new("2026-11-26T13:00:00Z".parse().unwrap(), 2);
        ManifestWriter::new(path.clone(), Duration::ZERO).report(&started(&other)).unwrap();
        assert!(Manifest::read(&path).unwrap().artifacts.is_empty());
    }
}
