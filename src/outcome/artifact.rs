//! [`Artifact`]: an image a job made (or reused) that exists and is available, with what the fleet's settings
//! made of it ([`ImageSettings`]) and where its id was published ([`Publication`]).
//!
//! Layer: `outcome`; imports `config` and `cloud` (ids).

use crate::cloud::{ImageId, SnapshotId};
use crate::config::{Flavor, FlavorName, Market, Region, Sharing, SourceAmi};

/// An image that exists and is available: what the manifest records per flavor and region.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    pub image_id: ImageId,
    pub name: String,
    pub build_region: Region,
    pub source_image_id: ImageId,
    pub snapshot_ids: Vec<SnapshotId>,
    /// When this image became available, RFC 3339.
    pub created_at: String,
    /// `fleetbake:fingerprint`: what determines its contents (see `steps::fingerprint`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `--changed-only`: nothing changed since the run that made it, which this run reused it from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    /// Where it was published (`[publish]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<Publication>,
    /// `source_ami = { flavor = … }`: the parent flavor's image it was built from (a copy: its build's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// Boxed, like `settings`: most images have none.
    pub parent: Option<Box<Parent>>,
    /// What `[encryption]`, `[sharing]`, IMDSv2 and `deprecate_after` made of it.
    /// Boxed: most runs set none of them, and every event carrying an artifact stays small.
    #[serde(flatten)]
    pub settings: Box<ImageSettings>,
}

#[cfg(test)]
impl Artifact {
    /// An image of flavor `base` built in `build_region`, made at `created_at`, with nothing else set: what the
    /// reporters' and the manifest's unit tests announce.
    pub(crate) fn sample(image: &str, build_region: &str, created_at: &str) -> Artifact {
        Artifact {
            image_id: ImageId::new(image),
            name: "base".into(),
            build_region: Region::new(build_region),
            source_image_id: ImageId::new("ami-0"),
            snapshot_ids: Vec::new(),
            created_at: created_at.into(),
            fingerprint: None,
            reused_from: None,
            published: Vec::new(),
            parent: None,
            settings: Box::default(),
        }
    }
}

/// The image of another flavor an image was built from (`source_ami = { flavor = … }`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Parent {
    pub flavor: FlavorName,
    pub image_id: ImageId,
}

impl Parent {
    /// The parent of `flavor`'s image built from `source`, if the flavor is built from another's image.
    pub fn of(flavor: &Flavor, source: &ImageId) -> Option<Box<Parent>> {
        match &flavor.source_ami {
            SourceAmi::Flavor(parent) => Some(Box::new(Parent { flavor: parent.clone(), image_id: source.clone() })),
            _ => None,
        }
    }
}

/// Where an image's id was published for deploys.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Publication {
    /// An SSM parameter's new version, labelled with the run (`fleetbake-<run id>`).
    SsmParameter { name: String, version: u64, label: String },
    /// A launch template's new default version.
    LaunchTemplate { name: String, id: String, version: u64 },
}

/// What the fleet's settings made of an image, as far as they were applied: a field is absent when its setting
/// is off, or when applying it failed (the failure is in the summary).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageSettings {
    /// The KMS key its snapshots are encrypted with (`[encryption]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// `v2.0`: instances launched from it require IMDSv2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_support: Option<String>,
    /// When EC2 deprecates it, RFC 3339 (`[fleet] deprecate_after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_time: Option<String>,
    /// Who may launch it, and create volumes from its snapshots (`[sharing]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<Sharing>,
    /// How the build reached its instance: `ssh` (a port its security group opened) or `session_manager`
    /// (no inbound port). Absent from a copy, and from an image an older fleetbake made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The SSM parameter its source image was read from (`source_ami = { ssm_parameter = … }`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_parameter: Option<SourceParameter>,
    /// The instance it was built on: its market and type (absent from a copy, a reused image, and an image an
    /// older fleetbake made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_on: Option<BuiltOn>,
}

/// The market and instance type a build's instance was launched with (`market`, `instance_types`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuiltOn {
    pub market: Market,
    pub instance_type: String,
}

/// An SSM parameter as a build read it: its name and the version whose value was the source image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceParameter {
    pub name: String,
    pub version: u64,
}
