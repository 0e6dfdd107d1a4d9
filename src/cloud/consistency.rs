//! EC2's eventual consistency ("Eventual consistency in the Amazon EC2 API"): a resource just created can be
//! unknown to the next calls for a while — `InvalidGroup.NotFound` on the ingress rule or RunInstances right
//! after CreateSecurityGroup, `InvalidKeyPair.NotFound` after CreateKeyPair, `InvalidInstanceID.NotFound` after
//! RunInstances, `InvalidAMIID.NotFound` / `InvalidSnapshot.NotFound` on CreateTags after CreateImage or
//! CopyImage. The Packer amazon plugin waits for each (its security-group step up to 40 × 5 s; its CreateTags
//! retries the NotFound codes).
//!
//! Here a `*.NotFound` about something this process created less than [`CONSISTENCY_WINDOW`] ago is lag:
//! [`once_known`] retries it with backoff. About anything older, or anything not created here (a lookup, a
//! resource named in an old journal), a `*.NotFound` is the answer.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::retry::{retry, GaveUp, Outcome, Policy};
use super::{CloudError, CloudResult};

/// How long a new resource may stay unknown to other calls before a NotFound about it is believed.
pub const CONSISTENCY_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The kinds of resource fleetbake creates, each with the code EC2 gives while it does not know one yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewKind {
    KeyPair,
    SecurityGroup,
    Instance,
    Image,
    Snapshot,
}

impl NewKind {
    pub fn not_found_code(self) -> &'static str {
        match self {
            NewKind::KeyPair => "InvalidKeyPair.NotFound",
            NewKind::SecurityGroup => "InvalidGroup.NotFound",
            NewKind::Instance => "InvalidInstanceID.NotFound",
            NewKind::Image => "InvalidAMIID.NotFound",
            NewKind::Snapshot => "InvalidSnapshot.NotFound",
        }
    }
}

/// A resource this process saw created, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Created {
    pub kind: NewKind,
    pub at: Instant,
}

impl Created {
    /// Created just now (its create call answered).
    pub fn now(kind: NewKind) -> Self {
        Created { kind, at: Instant::now() }
    }

    /// Whether EC2 may still not know it everywhere: a NotFound about it is lag, not an answer.
    pub fn is_recent(&self) -> bool {
        self.at.elapsed() < CONSISTENCY_WINDOW
    }

    /// Whether `error` says this (kind of) resource does not exist while it is recent.
    pub fn lags(&self, error: &CloudError) -> bool {
        self.is_recent() && error.code.as_deref() == Some(self.kind.not_found_code())
    }
}

/// Calls `call` until it stops answering that one of `fresh` does not exist, for as long as that one is recent;
/// any other answer (or a NotFound past the window) is returned as it is. The pauses are
/// [`Policy::NEW_RESOURCE_LAG`]'s, its budget counted from the newest creation.
pub async fn once_known<T, Call, Answer>(fresh: &[Created], mut call: Call) -> CloudResult<T>
where
    Call: FnMut() -> Answer,
    Answer: Future<Output = CloudResult<T>>,
{
    let newest = fresh.iter().map(|created| created.at).max().unwrap_or_else(Instant::now);
    retry(
        Policy::NEW_RESOURCE_LAG.start_from(newest),
        |_| {
            let answer = call();
            async move {
                match answer.await {
                    Err(error) if fresh.iter().any(|created| created.lags(&error)) => Outcome::Again(error),
                    answer => Outcome::Done(answer),
                }
            }
        },
        |error, pause| tracing::debug!("{error}: created moments ago, not known everywhere yet; again in {pause:?}"),
    )
    .await
    .map_err(GaveUp::into_error)
}

/// Looks for something a create made moments ago (its answer was lost, so only a describe can name it) until
/// the describe lists it: `find` answers `None` while it does not. After [`CONSISTENCY_WINDOW`]
/// ([`Policy::NEW_RESOURCE_LAG`]), `None` is the answer.
pub async fn until_listed<T, Find, Found>(mut find: Find) -> CloudResult<Option<T>>
where
    Find: FnMut() -> Found,
    Found: Future<Output = CloudResult<Option<T>>>,
{
    let listed = retry(
        Policy::NEW_RESOURCE_LAG.start(),
        |_| {
            let found = find();
            async move {
                match found.await {
                    Ok(Some(found)) => Outcome::Done(Ok(found)),
                    // Not listed yet: the error is `None`.
                    Ok(None) => Outcome::Again(None),
                    Err(error) => Outcome::Done(Err(Some(error))),
                }
            }
        },
        |_, pause| tracing::debug!("not listed yet (made moments ago); again in {pause:?}"),
    )
    .await;
    match listed {
        Ok(found) => Ok(Some(found)),
        Err(GaveUp::Refused(Some(error))) => Err(error),
        // Not listed within the window.
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Action, ErrorKind};
    use crate::config::Region;
    use std::cell::Cell;

    fn not_found(code: &str) -> CloudError {
        CloudError {
            action: Action::AuthorizeSecurityGroupIngress,
            region: Region::new("us-west-2"),
            kind: ErrorKind::NotFound,
            code: Some(code.into()),
            message: "does not exist".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_not_found_about_something_new_is_retried_until_the_window_closes() {
        let group = Created::now(NewKind::SecurityGroup);
        let calls = Cell::new(0);
        let answer = once_known(&[group], || async {
            calls.set(calls.get() + 1);
            if calls.get() < 4 {
                Err(not_found("InvalidGroup.NotFound"))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(answer.is_ok());
        // 1 + 2 + 4 s of lag absorbed.
        assert_eq!(group.at.elapsed(), Duration::from_secs(7));

        // Forever unknown: believed once the window has passed, not before.
        let started = Instant::now();
        let answer: CloudResult<()> =
            once_known(&[Created::now(NewKind::SecurityGroup)], || async { Err(not_found("InvalidGroup.NotFound")) })
                .await;
        assert_eq!(answer.unwrap_err().code.as_deref(), Some("InvalidGroup.NotFound"));
        let waited = started.elapsed();
        assert!(waited >= CONSISTENCY_WINDOW && waited < CONSISTENCY_WINDOW + Duration::from_secs(15), "{waited:?}");
        // The last pause ends as the window closes, and the NotFound then is believed.
        assert_eq!(waited, CONSISTENCY_WINDOW);
    }

    #[tokio::test(start_paused = true)]
    async fn until_listed_looks_a_last_time_as_the_window_closes() {
        let started = Instant::now();
        let looks = Cell::new(0);
        let found: CloudResult<Option<()>> = until_listed(|| async {
            looks.set(looks.get() + 1);
            Ok(None)
        })
        .await;
        assert_eq!(found.unwrap(), None);
        assert_eq!(started.elapsed(), CONSISTENCY_WINDOW);
        // Pauses of 1 + 2 + 4 + 8 s, then 19 of 15 s end exactly at the window: a look after each, and the first.
        assert_eq!(looks.get(), 24);

        let looks = Cell::new(0);
        let found = until_listed(|| async {
            looks.set(looks.get() + 1);
            Ok((looks.get() == 3).then_some("sg-1"))
        })
        .await;
        assert_eq!(found.unwrap(), Some("sg-1"));
    }

    #[tokio::test(start_paused = true)]
    async fn other_answers_and_other_kinds_are_final_at_once() {
        let key = Created::now(NewKind::KeyPair);
        let calls = Cell::new(0);
        let answer: CloudResult<()> = once_known(&[key], || async {
            calls.set(calls.get() + 1);
            Err(not_found("InvalidAMIID.NotFound"))
        })
        .await;
        assert!(answer.is_err());
        assert_eq!(calls.get(), 1, "a NotFound about something not created here is the answer");
    }
}
