//! `--keep-failed`: what a failed build kept for a person to look at (its instance, with the key pair and
//! security group it was launched with), until when, and how to log in. The build makes it; the event, the
//! reporters, the summary and the manifest's failure entry read it.

use std::fmt;

use chrono::{DateTime, Utc};

use super::JobLabel;
use crate::cloud::{InstanceId, KeyPairName, SecurityGroupId};

/// A failed build's instance, kept.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    /// The build (flavor and region) it belongs to.
    #[serde(skip)]
    pub job: Option<JobLabel>,
    pub instance: InstanceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pair: Option<KeyPairName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group: Option<SecurityGroupId>,
    /// Its `fleetbake:keep-until`: `gc` removes all of it after this.
    pub until: DateTime<Utc>,
    pub state: KeptAs,
    /// How to log in (`ssh -i …`, or `aws ssm start-session …`); `None` with `no_login` saying why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Why there is no connection command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_login: Option<String>,
}

/// The state the kept instance was left in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeptAs {
    Running,
    Stopped,
}

impl fmt::Display for KeptAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeptAs::Running => "running",
            KeptAs::Stopped => "stopped",
        })
    }
}

impl Kept {
    /// `instance i-… (key pair …, security group …) kept stopped until …`.
    pub fn what(&self) -> String {
        let mut with = Vec::new();
        if let Some(key_pair) = &self.key_pair {
            with.push(format!("key pair {key_pair}"));
        }
        if let Some(group) = &self.security_group {
            with.push(format!("security group {group}"));
        }
        let with = if with.is_empty() { String::new() } else { format!(" ({})", with.join(", ")) };
        let until = self.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        format!("instance {}{with} kept {} until {until}", self.instance, self.state)
    }
}
