//! What a failed build leaves to explain itself (issue 26): the flavor's `on_failure` provisioners and the files
//! it `collect`s, saved under `.fleetbake/<fleet>/<run>/logs/<flavor>/<region>/`; and `keep_failed`, a failed
//! build's instance kept for a while to be looked at.

use std::time::Duration;

use super::ProvisionerEntry;

/// A flavor's on-failure phase: run on the instance of a failed provisioner or test, before teardown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forensics {
    /// `on_failure`: provisioners whose output is saved (they never fail the build further).
    pub on_failure: Vec<ProvisionerEntry>,
    /// `collect`: absolute paths on the instance whose contents are saved.
    pub collect: Vec<String>,
}

impl Forensics {
    /// Whether the flavor asks for anything on failure.
    pub fn any(&self) -> bool {
        !self.on_failure.is_empty() || !self.collect.is_empty()
    }
}

/// `--keep-failed DURATION` / `[matrix] keep_failed`: a failed build's instance (with its key pair and group)
/// is kept, tagged `fleetbake:keep-until`, until `gc` finds the time past.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeepFailed {
    pub for_: Duration,
    pub state: KeptState,
}

impl KeepFailed {
    /// The longest a failed build is kept: a year (a forgotten instance costs by the hour).
    pub const MAX: Duration = Duration::from_secs(366 * 24 * 3600);

    /// Why `for_` is not a keep (`keep_failed`, `--keep-failed`), if it is not.
    pub fn problem(for_: Duration) -> Option<String> {
        if for_.is_zero() {
            Some("must be longer than 0s (to keep nothing, leave it out)".into())
        } else if for_ > Self::MAX {
            Some("must be at most a year (`366d`)".into())
        } else {
            None
        }
    }
}

/// `[matrix] keep_failed_state`: the kept instance left running (the default) or stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeptState {
    #[default]
    Running,
    Stopped,
}

/// How long `gc` keeps a run's saved logs (`[retention] logs`) unless the fleet says.
pub const DEFAULT_LOGS_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);
