//! [`Stage`]: the step of a build or a copy that a job is at, or failed in. Its snake_case name is what the
//! journal, the manifest, `--events` and the terminal say.
//!
//! Layer: `outcome`; imports nothing.

use std::fmt;

/// A step of a build or a copy; a failure names the one it happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    SourceAmi,
    /// Settling where the instance goes and how it is reached (subnets, VPC, SSH sources).
    Network,
    KeyPair,
    SecurityGroup,
    Launch,
    WaitRunning,
    Connect,
    Provision,
    Stop,
    CreateImage,
    WaitImage,
    /// Running the flavor's tests on an instance launched from the new image.
    Test,
    /// Requiring IMDSv2 of the image's instances.
    Imds,
    /// Setting the image's deprecation time.
    Deprecate,
    /// Granting launch and create-volume permissions (`[sharing]`).
    Share,
    /// Writing the image's id where deploys look (`[publish]`).
    Publish,
    Tag,
    Copy,
    WaitCopy,
    Cleanup,
    /// Never started: what it depended on failed.
    Skipped,
    /// Never started or cut short: the run was interrupted.
    Interrupted,
    /// Done by an earlier attempt of the run (`--resume`).
    Reused,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self).ok().and_then(|value| value.as_str().map(str::to_string));
        f.write_str(text.as_deref().unwrap_or("?"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stage and the name journals, manifests and event lines already hold: renaming one would make
    /// every earlier journal with it unreadable.
    const NAMES: &[(Stage, &str)] = &[
        (Stage::SourceAmi, "source_ami"),
        (Stage::Network, "network"),
        (Stage::KeyPair, "key_pair"),
        (Stage::SecurityGroup, "security_group"),
        (Stage::Launch, "launch"),
        (Stage::WaitRunning, "wait_running"),
        (Stage::Connect, "connect"),
        (Stage::Provision, "provision"),
        (Stage::Stop, "stop"),
        (Stage::CreateImage, "create_image"),
        (Stage::WaitImage, "wait_image"),
        (Stage::Test, "test"),
        (Stage::Imds, "imds"),
        (Stage::Deprecate, "deprecate"),
        (Stage::Share, "share"),
        (Stage::Publish, "publish"),
        (Stage::Tag, "tag"),
        (Stage::Copy, "copy"),
        (Stage::WaitCopy, "wait_copy"),
        (Stage::Cleanup, "cleanup"),
        (Stage::Skipped, "skipped"),
        (Stage::Interrupted, "interrupted"),
        (Stage::Reused, "reused"),
    ];

    #[test]
    fn every_stage_is_written_and_read_by_its_name() {
        for &(stage, name) in NAMES {
            assert_eq!(stage.to_string(), name);
            assert_eq!(serde_json::to_string(&stage).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<Stage>(&format!("\"{name}\"")).unwrap(), stage);
        }
    }

    #[test]
    fn a_name_no_stage_has_is_refused() {
        assert!(serde_json::from_str::<Stage>("\"provisioning\"").is_err());
    }
}
