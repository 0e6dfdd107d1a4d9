//! The run's outcomes: what each job came to (an [`Artifact`], a [`Failure`] at a typed [`Stage`], an image left
//! [`InProgress`], a [`Publication`]) and how the run ended ([`RunStatus`]). Events carry them, reporters read
//! them, the journal records them and the manifest's file format is built from them; none of those owns them,
//! so a new event or a new reporter changes no outcome, and an outcome gains a field (a failure's log paths,
//! the account an image is in) without a file format changing unless that format's own types say so.
//!
//! Layer: `outcome` sits above `cloud` (the ids and errors outcomes hold) and below `report` and `state`. It
//! imports `config` and `cloud` only.

mod artifact;
mod failure;
mod kept;
mod stage;

pub use artifact::{Artifact, BuiltOn, ImageSettings, Parent, Publication, SourceParameter};
pub use failure::Failure;
pub use kept::{Kept, KeptAs};
pub use stage::Stage;

use std::fmt;

use crate::cloud::ImageId;
use crate::config::{Account, FlavorName, Place, Region};

/// Which image a job is making: a flavor in a place (the build region, or a copy's target, which may be a
/// region of another account: two copies into one region of different accounts are two labels).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobLabel {
    pub flavor: FlavorName,
    pub place: Place,
}

impl JobLabel {
    /// A flavor in a region of the run's own account.
    pub fn new(flavor: FlavorName, region: Region) -> Self {
        JobLabel { flavor, place: Place::own(region) }
    }

    pub fn region(&self) -> &Region {
        &self.place.region
    }
}

/// `flavor/region` for the own account's places, `flavor/account/region` for another account's.
impl fmt::Display for JobLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.flavor, self.place)
    }
}

/// How a job ended: what went wrong (nothing, for a clean success), and the image it leaves being made if the
/// run was interrupted after CreateImage or CopyImage answered (a resume waits for it).
#[derive(Debug, Default)]
pub struct JobEnd {
    pub failures: Vec<Failure>,
    pub in_progress: Option<ImageId>,
    /// `--keep-failed`: the failed build's instance, kept.
    pub kept: Option<Kept>,
    /// A build's attempts cut short by EC2 taking their spot instance back (the build was made again on demand).
    pub spot_interruptions: Vec<SpotInterruption>,
}

/// A build attempt whose spot instance EC2 took back (`Server.SpotInstanceTermination`): what it ran on, and
/// for how long (from the launch to the interruption being seen), for the run's cost estimate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpotInterruption {
    pub instance_type: String,
    pub ran_for: std::time::Duration,
}

/// An image still being made when the run stopped: in the manifest, for `--resume` and for people.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InProgress {
    pub flavor: FlavorName,
    pub region: Region,
    /// Another account's copy: that account; absent for the own account's images.
    #[serde(default, skip_serializing_if = "Account::is_own")]
    pub account: Account,
    pub image_id: ImageId,
}

impl InProgress {
    /// `job`'s image `image_id`, still being made.
    pub fn new(job: &JobLabel, image_id: ImageId) -> Self {
        InProgress {
            flavor: job.flavor.clone(),
            region: job.place.region.clone(),
            account: job.place.account.clone(),
            image_id,
        }
    }

    /// The job making it.
    pub fn label(&self) -> JobLabel {
        JobLabel {
            flavor: self.flavor.clone(),
            place: Place { account: self.account.clone(), region: self.region.clone() },
        }
    }
}

/// How the run ended, as far as images go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every build and copy succeeded.
    Complete,
    /// Some images exist, something failed or is still to come.
    Partial,
    /// No image was made.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Account;

    #[test]
    fn a_label_is_a_flavor_in_a_place_shown_as_today() {
        let label = JobLabel::new(FlavorName::new("base"), Region::new("us-west-2"));
        assert_eq!(label.to_string(), "base/us-west-2");
        assert_eq!(label.region(), &Region::new("us-west-2"));
        let elsewhere =
            JobLabel { place: Place { account: Account::Id("123456789012".into()), ..label.place.clone() }, ..label };
        assert_eq!(elsewhere.to_string(), "base/123456789012/us-west-2");
    }
}
