//! Whether the run's credentials last the night, and whether `[aws] role_arn` can be had for as long as it
//! asks. The credentials' provider and end (the provider chain's answer, [`Cloud::credentials`]) against the
//! run's estimated length: the live view's estimate at the start (the plan's critical-path bound with the
//! previous run's durations, else the `[sim]` table's).
//!
//! Credentials are **renewed** when their provider asks for new ones before they end: STS AssumeRole
//! (`[aws] role_arn`, a profile's `role_arn` with `source_profile` or `credential_source`), SSO, web identity
//! (GitHub's OIDC token file), the instance or container role, a `credential_process`. They are **static**
//! when they are what was written down: keys in the environment or in a profile. Static keys with no end
//! (an IAM user's) last; static session keys end at their expiry and every call after it is refused
//! (`ExpiredToken`), cleanup included. A role assumed with credentials that are themselves a role's session
//! is role chaining, which AWS caps at 1 hour a session whatever `DurationSeconds` asks ("Role chaining",
//! IAM User Guide: <https://docs.aws.amazon.com/IAM/latest/UserGuide/id_roles_terms-and-concepts.html#iam-term-role-chaining>).

use std::time::Duration;

use super::{Outcome, Preflight};
use crate::cloud::{hints, Cloud, CredentialsStatus};
use crate::config::Fleet;
use crate::plan::bound::{critical_path, Caps, JobDurations};
use crate::plan::Plan;
use crate::state::journal::JournalDir;

/// The longest session AWS gives a role assumed by role chaining.
pub const ROLE_CHAINING_CAP: Duration = Duration::from_secs(3600);

/// The caps the run's estimate respects.
pub fn estimate_caps(fleet: &Fleet) -> Caps {
    Caps {
        builds: fleet.limits.max_parallel_builds,
        copies_per_region: fleet.limits.max_parallel_copies_per_region,
        copy_bucket: fleet.limits.api.copy_image,
    }
}

/// Each job's expected duration before the run measures any: the previous run's (from its journal), else the
/// `[sim]` table's.
pub fn expected_durations(fleet: &Fleet, plan: &Plan) -> JobDurations {
    JournalDir::of(fleet).previous_durations(plan).unwrap_or_else(|| JobDurations::simulated(plan, fleet))
}

/// How long the run is expected to take: what the live view shows when it starts.
pub fn estimated_length(fleet: &Fleet, plan: &Plan) -> Duration {
    critical_path(plan, estimate_caps(fleet), &expected_durations(fleet, plan))
}

/// The credentials check, and with `[aws] role_arn` the role-chaining check.
pub async fn check(preflight: &mut Preflight, fleet: &Fleet, plan: &Plan, cloud: &dyn Cloud) {
    let status = match cloud.credentials().await {
        Ok(status) => status,
        Err(error) => {
            let outcome = Outcome::Fail(format!(
                "cannot read the credentials' lifetime: {error}; the credentials in use: {}",
                hints::credential_source()
            ));
            preflight.push(None, outcome);
            return;
        }
    };
    let estimate = estimated_length(fleet, plan);
    preflight.push(None, lifetime(plan, &status, estimate));
    if let (Some(role), Some(base)) = (&fleet.aws.role, &status.base) {
        if base.arn.contains(":assumed-role/") && role.duration > ROLE_CHAINING_CAP {
            preflight.push(
                None,
                Outcome::Fail(format!(
                    "`[aws] duration` asks {} of `{}`, but the credentials it is assumed with are themselves a role's session ({}): that is role chaining, and AWS caps a chained role's session at 1 hour (IAM User Guide, \"Role chaining\"); set `duration` to `1h` or less (the session is renewed for as long as the run lasts), or assume it with a user's, SSO's or a web identity's credentials",
                    span(role.duration),
                    role.arn,
                    base.arn
                )),
            );
        }
    }
}

/// How long the credentials last against the run's estimate.
fn lifetime(plan: &Plan, status: &CredentialsStatus, estimate: Duration) -> Outcome {
    lifetime_at(plan.started_at, status, estimate)
}

/// [`lifetime`] for a run started at `started_at`.
fn lifetime_at(started_at: chrono::DateTime<chrono::Utc>, status: &CredentialsStatus, estimate: Duration) -> Outcome {
    let at = |after: Duration| {
        let after = chrono::TimeDelta::from_std(after).unwrap_or(chrono::TimeDelta::MAX);
        (started_at + after).format("%Y-%m-%d %H:%M UTC").to_string()
    };
    let finish = format!("the run's estimated end at {} (in {})", at(estimate), span(estimate));
    let source = match &status.base {
        Some(base) => format!("`{}` on `{}` credentials", status.source, base.source),
        None => format!("`{}`", status.source),
    };
    match status.usable_for() {
        Some(left) if left < estimate => Outcome::Fail(format!(
            "the credentials ({source}) are not renewed and expire at {} (in {}), before {finish}: every call after it is refused (`ExpiredToken`), cleanup included; use credentials that renew themselves (`[aws] role_arn` or a profile with `role_arn` and `credential_source`, SSO, a web identity) or session keys that last longer than the run (CI: `role-duration-seconds` covering the job's timeout)",
            at(left),
            span(left)
        )),
        Some(left) => Outcome::Ok(format!(
            "credentials ({source}): not renewed, expire at {} (in {}), after {finish}",
            at(left),
            span(left)
        )),
        None if status.base_ends_unknown() => Outcome::Ok(format!(
            "credentials ({source}): the role is renewed only while the session keys it is assumed with last, and their provider does not say when they end: they must outlast {finish} (CI: `role-duration-seconds` covering the job's timeout), or assume the role with credentials that renew themselves"
        )),
        None if status.refreshable => Outcome::Ok(format!(
            "credentials ({source}): renewed by their provider{}; they last past {finish}",
            status.expires_in.map(|left| format!(", the current ones for {}", span(left))).unwrap_or_default()
        )),
        None if status.temporary => Outcome::Ok(format!(
            "credentials ({source}): session keys, not renewed, and the provider does not say when they end: they must outlast {finish} (CI: `role-duration-seconds` covering the job's timeout), or use credentials that renew themselves"
        )),
        None => Outcome::Ok(format!("credentials ({source}): long-term keys, no expiry")),
    }
}

/// `2h 05m`, `45m` (to the nearest minute), `30s`.
fn span(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let minutes = (seconds + 30) / 60;
    match (minutes / 60, minutes % 60) {
        (0, 0) => format!("{seconds}s"),
        (0, minutes) => format!("{minutes}m"),
        (hours, minutes) => format!("{hours}h {minutes:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::BaseCredentials;

    #[test]
    fn static_base_credentials_bound_a_renewed_role() {
        let hour = Duration::from_secs(3600);
        let base = |refreshable| {
            Some(Box::new(BaseCredentials {
                arn: "arn:aws:iam::1:user/u".into(),
                source: "EnvironmentVariable".into(),
                refreshable,
                expires_in: Some(2 * hour),
                temporary: true,
            }))
        };
        let role = |base| CredentialsStatus {
            source: "AssumeRoleProvider".into(),
            refreshable: true,
            expires_in: Some(hour),
            temporary: true,
            base,
        };
        assert_eq!(role(base(false)).usable_for(), Some(2 * hour), "renewed only while the base lasts");
        assert_eq!(role(base(true)).usable_for(), None);
        assert_eq!(role(None).usable_for(), None);
        assert!(!CredentialsStatus::is_refreshable("EnvironmentVariable"));
        assert!(CredentialsStatus::is_refreshable("WebIdentityToken"));
        assert!(!CredentialsStatus::is_refreshable("unknown"), "a provider not named is not assumed to renew");
        let mut unknown_end = role(base(false));
        unknown_end.base.as_mut().unwrap().expires_in = None;
        assert!(unknown_end.base_ends_unknown());
        let said = lifetime_of(&unknown_end);
        assert!(said.contains("renewed only while the session keys"), "{said}");
        assert!(!role(base(true)).base_ends_unknown());
        assert_eq!(span(Duration::from_secs(7500)), "2h 05m");
        assert_eq!(span(Duration::from_secs(1199)), "20m", "to the nearest minute");
    }

    /// What the preflight says of `status` for an hour-long estimate.
    fn lifetime_of(status: &CredentialsStatus) -> String {
        let plan_started = chrono::Utc::now();
        match lifetime_at(plan_started, status, Duration::from_secs(3600)) {
            Outcome::Ok(text) | Outcome::Fail(text) | Outcome::Warn(text) => text,
        }
    }
}
