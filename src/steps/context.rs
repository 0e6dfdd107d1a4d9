//! What every job of a run shares: the fleet, the run's id, clock and attempt, who may reach port 22, where
//! the steps record what they make, the grants distribution copies share, and the tags every resource of the
//! run carries.

use std::sync::Arc;

use crate::cloud::ImageId;
use crate::config::{Flavor, FlavorName, Fleet, SourceAmi, Tags};
use crate::outcome::Artifact;
use crate::plan::RunId;
use crate::steps::distribute::DistributionGrants;
use crate::steps::fingerprint::FINGERPRINT_TAG;
use crate::steps::ledger::Ledger;
use crate::steps::network::SshSources;
use crate::util::clock::RunClock;

/// The tags by which fleetbake knows its resources again (written here and by the build steps; read by adopt,
/// resume, `--changed-only`, gc and the preflight).
pub const FLEET_TAG: &str = "fleetbake:fleet";
pub const FLAVOR_TAG: &str = "fleetbake:flavor";
pub const RUN_ID_TAG: &str = "fleetbake:run-id";
/// On an image: the source image it was built from.
pub const SOURCE_IMAGE_TAG: &str = "fleetbake:source-image-id";
/// `source_ami = { flavor = … }`: the parent flavor's image a build started from.
pub const PARENT_IMAGE_TAG: &str = "fleetbake:parent-image-id";
/// On an image whose flavor reads its source from SSM: the parameter's name (cut to EC2's 256 characters).
pub const SOURCE_PARAMETER_TAG: &str = "fleetbake:source-parameter";
/// `true` on every temporary resource (key pair, security group, instance).
pub const TEMPORARY_TAG: &str = "fleetbake:temporary";
/// `failed` on an image whose tests failed (kept with `keep_failed_images`): never reused.
pub const TEST_TAG: &str = "fleetbake:test";
/// `--keep-failed`: on a failed build's kept instance, key pair and security group, until when (RFC 3339): the
/// end-of-run sweep, `--resume` and `gc` leave them until then, and `gc` removes them after.
pub const KEEP_UNTIL_TAG: &str = "fleetbake:keep-until";

/// What every job of a run shares.
pub struct RunContext {
    pub fleet: Arc<Fleet>,
    pub run_id: RunId,
    /// Who may reach the build instances' SSH port, as settled when the run started (each build settles its
    /// own from it: see [`crate::steps::network`]).
    pub ssh_sources: SshSources,
    /// The run's time: real, or virtual in the simulated cloud.
    pub clock: RunClock,
    /// Where what the steps make is recorded before anything depends on it: the run's journal.
    pub ledger: Arc<dyn Ledger>,
    /// 1 for a new run; each `--resume` adds one.
    pub attempt: u32,
    /// The grants distribution copies give other accounts on the run's images, shared by the copies of one
    /// source into one account ([`DistributionGrants::for_plan`]).
    pub distribution: DistributionGrants,
    /// `--keep-failed`: where a kept build's login key is written, `.fleetbake/<fleet>/<run id>/kept/` (a 0700
    /// folder per instance; `gc` removes it with the instance). `None` for the simulated cloud.
    pub kept_keys: Option<std::path::PathBuf>,
    /// Where the on-failure phase saves what it gathers: the run's logs folder, beside its journal.
    pub logs: RunLogs,
}

/// The run's logs folder, `.fleetbake/<fleet>/<run id>/logs/` (the engine names it from the journal's folder:
/// the steps do not know the state layer); each failed build saves in its own `<flavor>/<region>/` below it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunLogs {
    pub folder: std::path::PathBuf,
}

impl RunLogs {
    /// The folder of one build's saved logs (a build is always in the own account).
    pub fn of_build(&self, flavor: &FlavorName, region: &crate::config::Region) -> std::path::PathBuf {
        self.folder.join(safe_file_name(flavor.as_str())).join(safe_file_name(region.as_str()))
    }
}

/// The most characters of a name [`safe_file_name`] keeps.
pub const SAFE_NAME_CHARS: usize = 96;

/// `text` made a safe single file name on this machine: letters, digits, `.`, `_` and `-` kept, every other
/// character (`/` included) `_`, no `..` (each becomes `_.`), no leading `.` (hidden), at most
/// [`SAFE_NAME_CHARS`] characters, never empty.
pub fn safe_file_name(text: &str) -> String {
    let mut name: String = text
        .trim_start_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .take(SAFE_NAME_CHARS)
        .collect();
    while name.contains("..") {
        name = name.replace("..", "_.");
    }
    if name.starts_with('.') {
        name.replace_range(..1, "_");
    }
    if name.is_empty() {
        name.push('_');
    }
    name
}

impl RunContext {
    /// `fleetbake:fleet`, `fleetbake:flavor`, `fleetbake:run-id`: on every resource the run creates.
    pub fn identity_tags(&self, flavor: &FlavorName) -> Tags {
        Tags::from([
            (FLEET_TAG.to_string(), self.fleet.name.clone()),
            (FLAVOR_TAG.to_string(), flavor.to_string()),
            (RUN_ID_TAG.to_string(), self.run_id.to_string()),
        ])
    }

    /// An image's tags in every region: the fleet's, the defaults' and the flavor's, then fleetbake's own.
    pub fn image_tags(&self, flavor: &Flavor, source_image: &ImageId) -> Tags {
        let mut tags = self.fleet.tags.clone();
        tags.extend(flavor.tags.clone());
        tags.extend(self.identity_tags(&flavor.name));
        tags.insert(SOURCE_IMAGE_TAG.to_string(), source_image.to_string());
        if matches!(flavor.source_ami, crate::config::SourceAmi::Flavor(_)) {
            tags.insert(PARENT_IMAGE_TAG.to_string(), source_image.to_string());
        }
        if let SourceAmi::SsmParameter(name) = &flavor.source_ami {
            tags.insert(SOURCE_PARAMETER_TAG.to_string(), name.chars().take(256).collect());
        }
        tags
    }

    /// The tags of an image this run made, copied or kept, in any region, and of its snapshots: the image tags
    /// of its source, plus its fingerprint where it has one.
    pub fn artifact_tags(&self, flavor: &Flavor, artifact: &Artifact) -> Tags {
        let mut tags = self.image_tags(flavor, &artifact.source_image_id);
        if let Some(fingerprint) = &artifact.fingerprint {
            tags.insert(FINGERPRINT_TAG.to_string(), fingerprint.clone());
        }
        tags
    }
}
