//! `--keep-failed` in the simulated account: a failed build's instance, key pair and security group carrying
//! a `fleetbake:keep-until` still to come are kept on purpose, not leaked; once that time has passed they are
//! leaks like any other (gc was to remove them). The model's wall time is the account's start advanced by
//! Tokio's clock, as the run's own clock is, so the tag the run wrote compares with it.

use chrono::{DateTime, Utc};

use crate::config::Tags;
use crate::util::clock::RunClock;

/// The tag `--keep-failed` writes (as `steps::context::KEEP_UNTIL_TAG`, which the cloud layer cannot import).
const KEEP_UNTIL_TAG: &str = "fleetbake:keep-until";

/// Until when a resource with `tags` is kept, if it is still kept at `clock`'s now.
pub fn kept_until(tags: Option<&Tags>, clock: &RunClock) -> Option<DateTime<Utc>> {
    let until = DateTime::parse_from_rfc3339(tags?.get(KEEP_UNTIL_TAG)?).ok()?.to_utc();
    (until > clock.now()).then_some(until)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_keep_until_still_to_come_is_kept_and_one_past_is_not() {
        let clock = RunClock::start();
        let at = |seconds: i64| {
            let until = clock.now() + chrono::TimeDelta::seconds(seconds);
            Tags::from([(KEEP_UNTIL_TAG.to_string(), until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))])
        };
        let later = at(3600);
        assert!(kept_until(Some(&later), &clock).is_some());
        tokio::time::sleep(std::time::Duration::from_secs(3601)).await;
        assert_eq!(kept_until(Some(&later), &clock), None, "past its time (in the model's time): a leak");
        assert_eq!(kept_until(Some(&Tags::new()), &clock), None);
        assert_eq!(kept_until(None, &clock), None);
    }
}
