//! The run in Packer's manifest format (`[fleet] packer_manifest`, `--packer-manifest`), as Packer's `manifest`
//! post-processor writes it, so scripts written against `packer-manifest.json` keep working: one build per
//! flavor (`builder_type` `amazon-ebs`, `artifact_id` `region:ami-…,region:ami-…` sorted by region), appended
//! to the builds already in the file, and `last_run_uuid`. Written when the run ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cloud::{fnv1a, ImageId};
use crate::config::{FlavorName, Region};
use crate::report::events::{RunEvent, Stamped};
use crate::report::{ReportError, Reporter};

/// Packer's manifest file.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PackerManifest {
    pub builds: Vec<PackerBuild>,
    pub last_run_uuid: String,
}

/// One build of it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PackerBuild {
    pub name: String,
    pub builder_type: String,
    /// Unix seconds.
    pub build_time: i64,
    /// Always `null` for amazon-ebs.
    pub files: Option<Vec<serde_json::Value>>,
    pub artifact_id: String,
    pub packer_run_uuid: String,
    pub custom_data: BTreeMap<String, String>,
}

/// A UUID-shaped id of a run, the same for every attempt of it (Packer's `packer_run_uuid`).
pub fn run_uuid(run_id: &str) -> String {
    let high = fnv1a(&format!("fleetbake/{run_id}"));
    let low = fnv1a(&format!("{run_id}/fleetbake"));
    let hex = format!("{high:016x}{low:016x}");
    // Version 4 and variant bits, as a UUID reader expects.
    let (a, b, c, d, e) = (&hex[0..8], &hex[8..12], &hex[13..16], &hex[17..20], &hex[20..32]);
    let variant = ["8", "9", "a", "b"][(low >> 44) as usize % 4];
    format!("{a}-{b}-4{c}-{variant}{d}-{e}")
}

/// Writes the Packer manifest when the run finishes.
pub struct PackerManifestWriter {
    path: PathBuf,
    fleet: String,
    run_id: String,
    images: BTreeMap<FlavorName, BTreeMap<Region, ImageId>>,
}

impl PackerManifestWriter {
    pub fn new(path: PathBuf) -> Self {
        PackerManifestWriter { path, fleet: String::new(), run_id: String::new(), images: BTreeMap::new() }
    }

    fn write(&self, build_time: i64) -> Result<(), ReportError> {
        let uuid = run_uuid(&self.run_id);
        let mut manifest = read(&self.path).unwrap_or_default();
        // A resumed run replaces its own earlier builds.
        manifest.builds.retain(|build| build.packer_run_uuid != uuid);
        for (flavor, regions) in &self.images {
            let artifact_id: Vec<String> = regions.iter().map(|(region, image)| format!("{region}:{image}")).collect();
            manifest.builds.push(PackerBuild {
                name: flavor.to_string(),
                builder_type: "amazon-ebs".into(),
                build_time,
                files: None,
                artifact_id: artifact_id.join(","),
                packer_run_uuid: uuid.clone(),
                custom_data: BTreeMap::from([
                    ("fleet".to_string(), self.fleet.clone()),
                    ("fleetbake_run_id".to_string(), self.run_id.clone()),
                ]),
            });
        }
        manifest.last_run_uuid = uuid;
        let text = serde_json::to_string_pretty(&manifest).expect("serializable") + "\n";
        crate::state::atomic::replace(&self.path, text.as_bytes()).map_err(|error| {
            ReportError(format!("cannot write the Packer manifest `{}`: {error}", self.path.display()))
        })
    }
}

fn read(path: &Path) -> Option<PackerManifest> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

impl Reporter for PackerManifestWriter {
    fn report(&mut self, stamped: &Stamped) -> Result<(), ReportError> {
        match &stamped.event {
            RunEvent::RunStarted { fleet, run_id, .. } => {
                self.fleet = fleet.clone();
                self.run_id = run_id.to_string();
                Ok(())
            }
            RunEvent::ImageAvailable { job, artifact } => {
                let regions = self.images.entry(job.flavor.clone()).or_default();
                regions.insert(job.region().clone(), artifact.image_id.clone());
                Ok(())
            }
            RunEvent::RunFinished { finished_at, .. } => self.write(finished_at.timestamp()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_uuid_is_uuid_shaped_and_the_same_for_every_attempt() {
        let uuid = run_uuid("20261127-021400-3fa9c");
        assert_eq!(uuid, run_uuid("20261127-021400-3fa9c"));
        assert_ne!(uuid, run_uuid("20261127-021400-3fa9d"));
        let groups: Vec<usize> = uuid.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{uuid}");
        assert_eq!(&uuid[14..15], "4");
        assert!(uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'));
    }
}
