//! The manifest's file format: its own types, built from the run's outcomes the way nextest's JUnit reporter
//! builds its document from events. An outcome can gain a field (a failure's log paths, an image's account)
//! without the file changing; the file changes only here, where `MANIFEST_VERSION` says whether a reader
//! could notice. The snapshot test in [`super`] pins the bytes.
//!
//! Layer: `state`; imports `config`, `cloud` (ids) and `outcome`.

use crate::cloud::{ImageId, SnapshotId};
use crate::cloud::{InstanceId, KeyPairName, SecurityGroupId};
use crate::config::Market;
use crate::config::{Account, FlavorName, Region, Sharing};
use crate::outcome::{
    Artifact, BuiltOn, Failure, ImageSettings, InProgress, Kept, KeptAs, Parent, Publication, RunStatus,
};

/// The version this fleetbake writes, in the file's `version`. Version 2 added `distributed` (the copies other
/// accounts own, `[[distribution]]`) and `account` on failures and images in progress of another account;
/// `artifacts` (the own account's images) kept its shape, and a version-1 file reads as one with no
/// distributed copies.
pub const MANIFEST_VERSION: u32 = 2;

/// How the run ended, as the file says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManifestStatus {
    /// Every build and copy succeeded.
    Complete,
    /// Some images exist, something failed or is still to come (and while the run goes on).
    Partial,
    /// No image was made.
    Failed,
}

impl From<RunStatus> for ManifestStatus {
    fn from(status: RunStatus) -> Self {
        match status {
            RunStatus::Complete => ManifestStatus::Complete,
            RunStatus::Partial => ManifestStatus::Partial,
            RunStatus::Failed => ManifestStatus::Failed,
        }
    }
}

/// An available image, under its flavor and region (and in `distributed`, its account).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageEntry {
    /// The account that owns it: another account's copy (`distributed`) names it; absent in `artifacts`.
    #[serde(default, skip_serializing_if = "Account::is_own")]
    pub account: Account,
    pub image_id: ImageId,
    pub name: String,
    pub build_region: Region,
    pub source_image_id: ImageId,
    pub snapshot_ids: Vec<SnapshotId>,
    /// When the image became available, RFC 3339.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The run `--changed-only` reused it from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<PublicationEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_support: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprecation_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_with: Option<Sharing>,
    /// How the build reached its instance: `ssh` or `session_manager` (added in version 1 as an optional
    /// field: a reader that does not know it is not misled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `source_ami = { flavor = … }`: the parent flavor and its image this one was built from (an optional
    /// field, like `interface`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// The SSM parameter the source image was read from, and its version (optional, added in version 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_parameter: Option<SourceParameterEntry>,
    /// The market and instance type the build's instance was launched as (optional, added in version 2; absent
    /// from a copy and a reused image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_on: Option<BuiltOnEntry>,
}

/// The market and instance type a build's instance was launched as.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuiltOnEntry {
    pub market: Market,
    pub instance_type: String,
}

impl From<&BuiltOn> for BuiltOnEntry {
    fn from(built_on: &BuiltOn) -> Self {
        BuiltOnEntry { market: built_on.market, instance_type: built_on.instance_type.clone() }
    }
}

/// `--keep-failed`: what a failed build kept, until when, and how to log in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptEntry {
    pub instance: InstanceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pair: Option<KeyPairName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group: Option<SecurityGroupId>,
    /// RFC 3339: `gc` removes all of it after this.
    pub until: chrono::DateTime<chrono::Utc>,
    pub state: KeptAs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_login: Option<String>,
}

impl From<&Kept> for KeptEntry {
    fn from(kept: &Kept) -> Self {
        KeptEntry {
            instance: kept.instance.clone(),
            key_pair: kept.key_pair.clone(),
            security_group: kept.security_group.clone(),
            until: kept.until,
            state: kept.state,
            connect: kept.connect.clone(),
            no_login: kept.no_login.clone(),
        }
    }
}

/// `source_ami = { ssm_parameter = … }`: which parameter, at which version.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceParameterEntry {
    pub name: String,
    pub version: u64,
}

impl ImageEntry {
    /// `artifact` as owned by `account`.
    pub fn owned_by(account: &Account, artifact: &Artifact) -> Self {
        ImageEntry { account: account.clone(), ..ImageEntry::from(artifact) }
    }
}

impl From<&Artifact> for ImageEntry {
    fn from(artifact: &Artifact) -> Self {
        let ImageSettings {
            kms_key_id,
            imds_support,
            deprecation_time,
            shared_with,
            interface,
            source_parameter,
            built_on,
        } = artifact.settings.as_ref();
        ImageEntry {
            account: Account::Own,
            image_id: artifact.image_id.clone(),
            name: artifact.name.clone(),
            build_region: artifact.build_region.clone(),
            source_image_id: artifact.source_image_id.clone(),
            snapshot_ids: artifact.snapshot_ids.clone(),
            created_at: artifact.created_at.clone(),
            fingerprint: artifact.fingerprint.clone(),
            reused_from: artifact.reused_from.clone(),
            published: artifact.published.iter().map(PublicationEntry::from).collect(),
            kms_key_id: kms_key_id.clone(),
            imds_support: imds_support.clone(),
            deprecation_time: deprecation_time.clone(),
            shared_with: shared_with.clone(),
            interface: interface.clone(),
            parent: artifact.parent.as_deref().cloned(),
            source_parameter: source_parameter
                .as_ref()
                .map(|read| SourceParameterEntry { name: read.name.clone(), version: read.version }),
            built_on: built_on.as_ref().map(BuiltOnEntry::from),
        }
    }
}

/// Where an image's id was published.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PublicationEntry {
    SsmParameter { name: String, version: u64, label: String },
    LaunchTemplate { name: String, id: String, version: u64 },
}

impl From<&Publication> for PublicationEntry {
    fn from(publication: &Publication) -> Self {
        match publication.clone() {
            Publication::SsmParameter { name, version, label } => {
                PublicationEntry::SsmParameter { name, version, label }
            }
            Publication::LaunchTemplate { name, id, version } => PublicationEntry::LaunchTemplate { name, id, version },
        }
    }
}

/// A job that failed. `stage` is text: a manifest from another version still reads whatever stage it names.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FailureEntry {
    pub flavor: FlavorName,
    pub region: Region,
    /// Another account's copy: that account (version 2).
    #[serde(default, skip_serializing_if = "Account::is_own")]
    pub account: Account,
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// What the on-failure phase saved (`on_failure` output, `collect`ed files): paths on the machine that ran
    /// fleetbake, under the run's logs folder; absent when it saved none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<std::path::PathBuf>,
    /// `--keep-failed`: the failed build's instance, key pair and group kept, until when, and how to log in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<KeptEntry>,
}

impl From<&Failure> for FailureEntry {
    fn from(failure: &Failure) -> Self {
        FailureEntry {
            flavor: failure.flavor.clone(),
            region: failure.region.clone(),
            account: failure.account.clone(),
            stage: failure.stage.to_string(),
            code: failure.code.clone(),
            error: failure.error.clone(),
            hint: failure.hint.clone(),
            logs: failure.logs.clone(),
            kept: None,
        }
    }
}

/// An image still being made when the run stopped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InProgressEntry {
    pub flavor: FlavorName,
    pub region: Region,
    /// Another account's copy: that account (version 2).
    #[serde(default, skip_serializing_if = "Account::is_own")]
    pub account: Account,
    pub image_id: ImageId,
}

impl From<&InProgress> for InProgressEntry {
    fn from(image: &InProgress) -> Self {
        InProgressEntry {
            flavor: image.flavor.clone(),
            region: image.region.clone(),
            account: image.account.clone(),
            image_id: image.image_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::{JobLabel, Stage};

    #[test]
    fn each_run_status_is_written_as_the_run_s_status_is_named() {
        for status in [RunStatus::Complete, RunStatus::Partial, RunStatus::Failed] {
            let written = serde_json::to_value(ManifestStatus::from(status)).unwrap();
            assert_eq!(written, serde_json::to_value(status).unwrap());
        }
    }

    #[test]
    fn a_failure_s_stage_is_written_by_name_and_any_name_reads_back() {
        let label = JobLabel::new(FlavorName::new("web"), Region::new("eu-west-1"));
        let entry = FailureEntry::from(&Failure::new(&label, Stage::WaitCopy, "the copy ended `failed`"));
        assert_eq!(entry.stage, "wait_copy");
        // A manifest another version wrote names stages this one may not have; reading it must not fail.
        let other = r#"{"flavor":"web","region":"eu-west-1","stage":"collect_logs","error":"no"}"#;
        assert_eq!(serde_json::from_str::<FailureEntry>(other).unwrap().stage, "collect_logs");
    }

    #[test]
    fn an_image_entry_reads_back_as_written() {
        let artifact = Artifact {
            image_id: ImageId::new("ami-1"),
            name: "base".into(),
            build_region: Region::new("us-west-2"),
            source_image_id: ImageId::new("ami-0"),
            snapshot_ids: vec![SnapshotId::new("snap-1")],
            created_at: "2026-11-26T12:10:00Z".into(),
            fingerprint: None,
            reused_from: None,
            published: vec![Publication::LaunchTemplate { name: "base".into(), id: "lt-1".into(), version: 2 }],
            parent: None,
            settings: Box::new(ImageSettings { imds_support: Some("v2.0".into()), ..ImageSettings::default() }),
        };
        let entry = ImageEntry::from(&artifact);
        let text = serde_json::to_string(&entry).unwrap();
        assert_eq!(serde_json::from_str::<ImageEntry>(&text).unwrap(), entry);
    }
}
