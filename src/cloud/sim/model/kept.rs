//! `--keep-failed` in the simulated account: a failed build's instance, key pair and security group carrying
//! a `fleetbake:keep-until` are kept on purpose, not leaked: the run (its end-of-run sweep included) leaves them,
//! and `gc`, a later command, removes them once that time has passed; the report says until when, and whether
//! that time has passed in the model's wall time (the account's start advanced by Tokio's clock, as the run's
//! own clock is, so the tag the run wrote compares with it).

use chrono::{DateTime, Utc};

use crate::config::Tags;
use crate::util::clock::RunClock;

/// The tag `--keep-failed` writes (as `steps::context::KEEP_UNTIL_TAG`, which the cloud layer cannot import).
const KEEP_UNTIL_TAG: &str = "fleetbake:keep-until";

/// Until when a resource with `tags` is kept (`None`: not kept), and whether that is past at `clock`'s now.
pub fn kept_until(tags: Option<&Tags>, clock: &RunClock) -> Option<(DateTime<Utc>, bool)> {
    let until = DateTime::parse_from_rfc3339(tags?.get(KEEP_UNTIL_TAG)?).ok()?.to_utc();
    Some((until, until <= clock.now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_keep_until_is_kept_and_says_when_it_is_past() {
        let clock = RunClock::start();
        let at = |seconds: i64| {
            let until = clock.now() + chrono::TimeDelta::seconds(seconds);
            Tags::from([(KEEP_UNTIL_TAG.to_string(), until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))])
        };
        let later = at(3600);
        assert!(kept_until(Some(&later), &clock).is_some_and(|(_, past)| !past));
        tokio::time::sleep(std::time::Duration::from_secs(3601)).await;
        assert!(kept_until(Some(&later), &clock).is_some_and(|(_, past)| past), "past its time: gc's to remove");
        assert_eq!(kept_until(Some(&Tags::new()), &clock), None);
        assert_eq!(kept_until(None, &clock), None);
    }
}
