//! The simulated account's credentials and regions: `[sim] credentials` (an expiry, renewed or not),
//! `[sim] base_identity` (a user's keys or a role's session, which makes assuming `[aws] role_arn` role
//! chaining), `[aws] role_arn` assumed (each AssumeRole counted), and `[sim] regions_not_enabled`.
//!
//! As AWS answers (read 2026-12-07):
//! - Expired temporary credentials: EC2 answers `RequestExpired`, SSM and KMS `ExpiredTokenException`, STS
//!   `ExpiredToken` ("The security token included in the request is expired"). Only a provider that renews
//!   them (a role, SSO, web identity) goes on; keys exported into the environment end.
//! - Role chaining (AssumeRole with role credentials) "limits your AWS CLI or AWS API role session to a
//!   maximum of one hour"; a longer `DurationSeconds` is refused with `ValidationError` ("The requested
//!   DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining."). IAM User Guide,
//!   "Methods to assume a role" / "Role chaining"; STS API Reference, AssumeRole.
//! - A region the account has not enabled answers EC2 calls with `AuthFailure` ("AWS was not able to validate
//!   the provided access credentials"); DescribeRegions (`AllRegions`) lists it `not-opted-in`. Account
//!   Management Reference Guide, "Enable or disable AWS Regions in your account".

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use super::{refuse, Refusal};
use crate::cloud::{Action, RegionOptIn, Service};
use crate::config::{AssumeRole, BaseIdentity, Region, SimSettings};

/// The session length role chaining is capped at.
pub const ROLE_CHAINING_CAP: Duration = Duration::from_secs(3600);

/// An AssumeRoleProvider asks for a new session this long before the current one ends.
const RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// Regions AWS opens to every account; every other region it lists needs an opt-in (the simulated partition
/// is these plus the opt-in regions below and any a fleet builds in).
const OPEN_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-south-1",
    "ca-central-1",
    "sa-east-1",
];

/// The simulated account's credentials, identity and enabled regions.
pub struct SimAccount {
    /// When the credentials end (`None`: long-term keys).
    expires_at: Option<Instant>,
    /// Whether their provider renews them.
    refreshable: bool,
    base_identity: BaseIdentity,
    regions_not_enabled: BTreeSet<Region>,
    /// `[aws] role_arn`, which every call is signed as once set.
    role: OnceLock<AssumeRole>,
    /// When the assumed role's current session ends (`None`: none assumed yet).
    session_until: Mutex<Option<Instant>>,
    /// AssumeRole calls made for `[aws] role_arn`.
    pub assume_role_calls: AtomicU64,
}

impl SimAccount {
    pub fn new(settings: &SimSettings, now: Instant) -> Self {
        SimAccount {
            expires_at: settings.credentials.map(|credentials| now + credentials.expires_after),
            refreshable: settings.credentials.is_none_or(|credentials| credentials.refreshable),
            base_identity: settings.base_identity,
            regions_not_enabled: settings.regions_not_enabled.clone(),
            role: OnceLock::new(),
            session_until: Mutex::new(None),
            assume_role_calls: AtomicU64::new(0),
        }
    }

    /// Every call from now on acts as `role` (`[aws] role_arn`), assumed as the aws adapter's provider would.
    pub fn act_as(&self, role: AssumeRole) {
        let _ = self.role.set(role);
    }

    pub fn role(&self) -> Option<&AssumeRole> {
        self.role.get()
    }

    /// Whether the base credentials are past their end and not renewed.
    pub fn expired(&self, now: Instant) -> bool {
        !self.refreshable && self.expires_at.is_some_and(|at| now >= at)
    }

    /// The refusal of a call before it reaches the region's model: credentials that ended (with a role: its
    /// session could not be renewed and has ended), a region not enabled.
    pub(super) fn refusal(&self, action: Action, region: &Region, now: Instant) -> Option<Refusal> {
        match self.role.get() {
            Some(role) => {
                if let Err(refusal) = self.assume(role, now) {
                    return Some(refusal);
                }
            }
            None if self.expired(now) => return Some(expired(action.service())),
            None => {}
        }
        if action.service() == Service::Ec2 && self.regions_not_enabled.contains(region) {
            return refuse::<()>("AuthFailure", "AWS was not able to validate the provided access credentials").err();
        }
        None
    }

    /// How long the credentials have left (`None`: no end), and whether they are renewed.
    pub fn lifetime(&self, now: Instant) -> (Option<Duration>, bool) {
        (self.expires_at.map(|at| at.saturating_duration_since(now)), self.refreshable)
    }

    /// The base credentials' ARN.
    pub fn base_arn(&self, account: &str) -> String {
        match self.base_identity {
            BaseIdentity::User => format!("arn:aws:iam::{account}:user/simulated"),
            BaseIdentity::Role => format!("arn:aws:sts::{account}:assumed-role/simulated-runner/simulated"),
        }
    }

    /// `role` assumed as an AssumeRoleProvider would: a session when there is none or the current one is about
    /// to end (each counted); refused as AWS refuses role chaining past 1 hour, and once the base credentials
    /// ended (a session still running goes on to its own end). The session's ARN.
    pub(in crate::cloud::sim) fn assume(&self, role: &AssumeRole, now: Instant) -> Result<String, Refusal> {
        let mut session = self.session_until.lock().expect("not poisoned");
        if session.is_none_or(|until| now + RENEW_BEFORE >= until) {
            self.assume_role_calls.fetch_add(1, Ordering::Relaxed);
            match *session {
                Some(until) if self.expired(now) && now < until => {}
                _ if self.expired(now) => return Err(expired(Service::Sts)),
                _ => {}
            }
            if self.base_identity == BaseIdentity::Role && role.duration > ROLE_CHAINING_CAP {
                return refuse(
                    "ValidationError",
                    "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.",
                );
            }
            if !self.expired(now) {
                *session = Some(now + role.duration);
            }
        }
        // `arn:aws:iam::ACCOUNT:role/PATH/NAME` → `arn:aws:sts::ACCOUNT:assumed-role/NAME/SESSION`.
        let account = role.arn.split(':').nth(4).unwrap_or_default();
        let name = role.arn.rsplit('/').next().unwrap_or_default();
        let session_name = role.session_name.as_deref().unwrap_or("fleetbake-simulated");
        Ok(format!("arn:aws:sts::{account}:assumed-role/{name}/{session_name}"))
    }

    /// DescribeRegions (`AllRegions`): the open regions, the regions not enabled, and `also` (the fleet's).
    pub fn regions<'a>(&self, also: impl Iterator<Item = &'a Region>) -> Vec<RegionOptIn> {
        let mut all: BTreeSet<Region> = OPEN_REGIONS.iter().map(|name| Region::new(*name)).collect();
        all.extend(self.regions_not_enabled.iter().cloned());
        all.extend(also.cloned());
        all.into_iter()
            .map(|region| {
                let opt_in_status = if self.regions_not_enabled.contains(&region) {
                    "not-opted-in"
                } else if OPEN_REGIONS.contains(&region.as_str()) {
                    "opt-in-not-required"
                } else {
                    "opted-in"
                };
                RegionOptIn { region, opt_in_status: opt_in_status.to_string() }
            })
            .collect()
    }
}

/// Expired credentials, as each service words it.
fn expired(service: Service) -> Refusal {
    let (code, message) = match service {
        Service::Ec2 => ("RequestExpired", "Request has expired."),
        Service::Ssm | Service::Kms | Service::Organizations => {
            ("ExpiredTokenException", "The security token included in the request is expired")
        }
        Service::Sts => ("ExpiredToken", "The security token included in the request is expired"),
    };
    Refusal { code: code.to_string(), message: message.to_string() }
}
