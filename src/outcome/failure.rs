//! [`Failure`]: why a job did not produce its image (or did, but left something behind), at which [`Stage`],
//! with the AWS code and what to do about it.
//!
//! Layer: `outcome`; imports `config` and `cloud` (the error a failure is made from, and its hint).

use std::fmt;

use super::{JobLabel, Stage};
use crate::cloud::{CloudError, ErrorKind};
use crate::config::{FlavorName, Region};

/// Why a job did not produce its image (or did, but left something behind).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub flavor: FlavorName,
    pub region: Region,
    pub stage: Stage,
    /// The AWS error code, where the cause was an AWS error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub error: String,
    /// What to do about it, when the cause is one the user must act on (a missing permission, expired
    /// credentials, a region not enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(label: &JobLabel, stage: Stage, error: impl fmt::Display) -> Self {
        Failure {
            flavor: label.flavor.clone(),
            region: label.region().clone(),
            stage,
            code: None,
            error: error.to_string(),
            hint: None,
        }
    }

    /// Whether AWS refused the job's credentials as expired (`ExpiredToken`, `RequestExpired`, …): every call
    /// after it will be refused too, unless the provider renews them.
    pub fn credentials_expired(&self) -> bool {
        self.code.as_deref().is_some_and(|code| ErrorKind::of_code(code) == ErrorKind::Credentials)
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
}
