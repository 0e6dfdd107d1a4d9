//! The artifact manifest deploy tooling reads: its model, and the reporter that rewrites it atomically
//! (temp file + rename) each time an image becomes available or a job fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::SecondsFormat;

use crate::config::{FlavorName, Region};
use crate::events::{Artifact, Failure, RunEvent, RunStatus};
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

/// Keeps the manifest on disk true to what exists, as events arrive.
pub struct ManifestWriter {
    path: PathBuf,
    manifest: Option<Manifest>,
}

impl ManifestWriter {
    pub fn new(path: PathBuf) -> Self {
        ManifestWriter { path, manifest: None }
    }

    fn write(&self) -> Result<(), ReportError> {
        let Some(manifest) = &self.manifest else {
            return Ok(());
        };
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
                }
                self.write()
            }
            RunEvent::JobFailed(failure) => {
                if let Some(manifest) = &mut self.manifest {
                    manifest.failures.push(failure.clone());
                }
                self.write()
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
}
