//! The run in Packer's manifest format (`[fleet] packer_manifest`, `--packer-manifest`), as Packer's `manifest`
//! post-processor writes it, so scripts written against `packer-manifest.json` keep working: one build per
//! flavor (`builder_type` `amazon-ebs`, `artifact_id` `region:ami-…,region:ami-…` sorted by region), appended
//! to the builds already in the file, and `last_run_uuid`. Written when the run ends. The copies a flavor has
//! in another account (`[[distribution]]`) are one more build of that flavor each account, after the own
//! account's, with the account in `custom_data.account`: `artifact_id` keeps Packer's `region:ami` shape, and
//! a script that reads the first build of a flavor still reads the own account's images.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cloud::{fnv1a, ImageId};
use crate::config::{Account, FlavorName, Region};
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
    /// (flavor, account: the own first) → region → image.
    images: BTreeMap<(FlavorName, Account), BTreeMap<Region, ImageId>>,
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
        for ((flavor, account), regions) in &self.images {
            let artifact_id: Vec<String> = regions.iter().map(|(region, image)| format!("{region}:{image}")).collect();
            let mut custom_data = BTreeMap::from([
                ("fleet".to_string(), self.fleet.clone()),
                ("fleetbake_run_id".to_string(), self.run_id.clone()),
            ]);
            if let Account::Id(id) = account {
                custom_data.insert("account".to_string(), id.clone());
            }
            manifest.builds.push(PackerBuild {
                name: flavor.to_string(),
                builder_type: "amazon-ebs".into(),
                build_time,
                files: None,
                artifact_id: artifact_id.join(","),
                packer_run_uuid: uuid.clone(),
                custom_data,
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
                let regions = self.images.entry((job.flavor.clone(), job.place.account.clone())).or_default();
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

    #[test]
    fn another_account_s_images_are_a_build_of_their_own_after_the_own_account_s() {
        use crate::config::Place;
        use crate::outcome::JobLabel;
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("packer-manifest.json");
        let mut writer = PackerManifestWriter::new(path.clone());
        let at: chrono::DateTime<chrono::Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let stamped = |event| Stamped { at, event };
        let run_id = crate::plan::RunId::new(at, 1);
        writer
            .report(&stamped(RunEvent::RunStarted {
                fleet: "f".into(),
                run_id,
                started_at: at,
                builds: 1,
                copies: 2,
                planned: Vec::new(),
                selective: false,
            }))
            .unwrap();
        let artifact = |image: &str| crate::outcome::Artifact::sample(image, "us-east-1", "2026-12-07T12:10:00Z");
        let other = Place { account: Account::Id("222233334444".into()), region: Region::new("eu-west-1") };
        for (place, image) in [(other, "ami-2"), (Place::own(Region::new("us-east-1")), "ami-1")] {
            let job = JobLabel { flavor: FlavorName::new("base"), place };
            writer.report(&stamped(RunEvent::ImageAvailable { job, artifact: artifact(image) })).unwrap();
        }
        let finished = RunEvent::RunFinished {
            status: crate::outcome::RunStatus::Complete,
            finished_at: at,
            succeeded: 2,
            failed: 0,
            in_progress: 0,
        };
        writer.report(&stamped(finished)).unwrap();
        let manifest = read(&path).unwrap();
        let builds: Vec<(&str, &str, Option<&String>)> = manifest
            .builds
            .iter()
            .map(|build| (build.name.as_str(), build.artifact_id.as_str(), build.custom_data.get("account")))
            .collect();
        let account = "222233334444".to_string();
        assert_eq!(builds, [("base", "us-east-1:ami-1", None), ("base", "eu-west-1:ami-2", Some(&account))]);
    }
}
