//! [`Failure`]: why a job did not produce its image (or did, but left something behind), at which [`Stage`],
//! with the AWS code and what to do about it.
//!
//! Layer: `outcome`; imports `config` and `cloud` (the error a failure is made from, and its hint).

use std::fmt;
use std::path::PathBuf;

use super::{JobLabel, Stage};
use crate::cloud::{CloudError, ErrorKind};
use crate::config::{Account, FlavorName, Place, Region};

/// Why a job did not produce its image (or did, but left something behind).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub flavor: FlavorName,
    pub region: Region,
    /// Another account's copy (`[[distribution]]`): that account; absent for the own account's jobs.
    #[serde(default, skip_serializing_if = "Account::is_own")]
    pub account: Account,
    pub stage: Stage,
    /// The AWS error code, where the cause was an AWS error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub error: String,
    /// What to do about it, when the cause is one the user must act on (a missing permission, expired
    /// credentials, a region not enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The files the on-failure phase saved on this machine (`on_failure` output, `collect`ed files), each a
    /// path under the run's logs folder; empty when it saved none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<PathBuf>,
}

impl Failure {
    pub fn new(label: &JobLabel, stage: Stage, error: impl fmt::Display) -> Self {
        Failure {
            flavor: label.flavor.clone(),
            region: label.region().clone(),
            account: label.place.account.clone(),
            stage,
            code: None,
            error: error.to_string(),
            hint: None,
            logs: Vec::new(),
        }
    }

    /// The job that failed: its flavor and place.
    pub fn label(&self) -> JobLabel {
        JobLabel {
            flavor: self.flavor.clone(),
            place: Place { account: self.account.clone(), region: self.region.clone() },
        }
    }

    /// Whether AWS refused the job's credentials as expired (`ExpiredToken`, `RequestExpired`, …), or the
    /// provider chain could not renew them (no code; its hint says so): every call after it will be refused too.
    pub fn credentials_expired(&self) -> bool {
        let refused = self.code.as_deref().is_some_and(|code| ErrorKind::of_code(code) == ErrorKind::Credentials);
        let not_renewed = self.code.is_none()
            && self.hint.as_deref().is_some_and(|hint| hint.starts_with(crate::cloud::hints::CREDENTIALS_GONE));
        refused || not_renewed
    }

    /// The folder its saved logs are in (they are all in one: the job's), if it saved any.
    pub fn logs_folder(&self) -> Option<&std::path::Path> {
        self.logs.first().and_then(|file| file.parent())
    }

    pub fn from_cloud(label: &JobLabel, stage: Stage, error: &CloudError) -> Self {
        Failure {
            code: error.code.clone(),
            hint: crate::cloud::hints::hint(error),
            ..Failure::new(label, stage, error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label() -> JobLabel {
        JobLabel::new(FlavorName::new("web"), Region::new("eu-west-1"))
    }

    /// What the journal and `--events` hold: the stage by its name, no code or hint when there is none.
    #[test]
    fn a_failure_is_written_with_its_stage_by_name() {
        let failure = Failure::new(&label(), Stage::WaitImage, "the image ended `failed`");
        let line = serde_json::to_string(&failure).unwrap();
        assert_eq!(
            line,
            r#"{"flavor":"web","region":"eu-west-1","stage":"wait_image","error":"the image ended `failed`"}"#
        );
        assert_eq!(serde_json::from_str::<Failure>(&line).unwrap(), failure);
    }

    /// Expired credentials, refused with a code or not renewed by the provider (a dispatch failure, no code).
    #[test]
    fn expired_credentials_are_known_with_a_code_or_without() {
        let cloud = |code: Option<&str>, kind| CloudError {
            action: crate::cloud::Action::CreateImage,
            region: Region::new("eu-west-1"),
            kind,
            code: code.map(str::to_string),
            message: "no".into(),
        };
        let of = |error: &CloudError| Failure::from_cloud(&label(), Stage::CreateImage, error);
        assert!(of(&cloud(Some("ExpiredToken"), ErrorKind::Credentials)).credentials_expired());
        assert!(of(&cloud(Some("RequestExpired"), ErrorKind::Credentials)).credentials_expired());
        assert!(of(&cloud(None, ErrorKind::Credentials)).credentials_expired(), "the provider could not renew them");
        assert!(!of(&cloud(Some("AuthFailure"), ErrorKind::Permanent)).credentials_expired());
        assert!(!of(&cloud(None, ErrorKind::Transient)).credentials_expired());
    }

    #[test]
    fn a_failure_from_an_aws_error_keeps_its_code() {
        let failure =
            Failure { code: Some("InvalidAMIID.NotFound".into()), ..Failure::new(&label(), Stage::Copy, "no") };
        let line = serde_json::to_string(&failure).unwrap();
        assert_eq!(
            line,
            r#"{"flavor":"web","region":"eu-west-1","stage":"copy","code":"InvalidAMIID.NotFound","error":"no"}"#
        );
        assert_eq!(serde_json::from_str::<Failure>(&line).unwrap(), failure);
    }

    #[test]
    fn another_account_s_failure_names_the_account() {
        let label =
            JobLabel { place: Place { account: Account::Id("222233334444".into()), ..label().place }, ..label() };
        let failure = Failure::new(&label, Stage::Copy, "no");
        let line = serde_json::to_string(&failure).unwrap();
        assert_eq!(
            line,
            r#"{"flavor":"web","region":"eu-west-1","account":"222233334444","stage":"copy","error":"no"}"#
        );
        assert_eq!(serde_json::from_str::<Failure>(&line).unwrap(), failure);
        assert_eq!(failure.label(), label);
    }
}
