//! The artifact manifest deploy tooling reads: its model, and the reporter that rewrites it atomically
//! (temp file + rename) each time an image becomes available or a job fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::SecondsFormat;
use tokio::time::Instant;

use crate::config::{FlavorName, Region};
use crate::events::{Artifact, Failure, InProgress, RunEvent, RunStatus};
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
}

impl ManifestWriter {
    pub fn new(path: PathBuf, min_interval: Duration) -> Self {
        ManifestWriter { path, manifest: None, min_interval, last_write: None, dirty: false }
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
                self.manifest = Some(Manifest {
                    version: MANIFEST_VERSION,
                    fleet: fleet.clone(),
                    run_id: run_id.to_string(),
                    status: RunStatus::Partial,
                    started_at: started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                    finished_at: None,
                    artifacts: BTreeMap::new(),
                    failures: Vec::new(),
                    in_progress: Vec::new(),
                });
                self.write()
            }
            RunEvent::ImageAvailable { job, artifact } => {
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
