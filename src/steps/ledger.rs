//! What steps record as they go, before anything depends on it: the [`Ledger`] port, which the run's journal
//! (`state::journal`) implements, and the temporary [`Resource`]s it names. Steps know the journal only
//! through this, as they know EC2 only through the cloud port.

use std::fmt;

use crate::cloud::ImageId;
use crate::config::{Place, Region};
use crate::outcome::Publication;
use crate::plan::JobKey;

/// A temporary resource a build made.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// Where it is. Written as `region` (the own account's place is its region name), so the journal's
    /// format is as before.
    #[serde(rename = "region")]
    pub place: Place,
    pub kind: ResourceKind,
    pub id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Instance,
    SecurityGroup,
    KeyPair,
    /// A Session Manager session (journaled as `session`): `--resume` and `gc` end a killed run's sessions.
    Session,
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ResourceKind::Instance => "instance",
            ResourceKind::SecurityGroup => "security group",
            ResourceKind::KeyPair => "key pair",
            ResourceKind::Session => "session",
        };
        write!(f, "{kind} {} in {}", self.id, self.place)
    }
}

impl Resource {
    /// A resource in a region of the run's own account.
    pub fn new(region: Region, kind: ResourceKind, id: impl Into<String>) -> Self {
        Resource { place: Place::own(region), kind, id: id.into() }
    }

    pub fn region(&self) -> &Region {
        &self.place.region
    }
}

/// Where steps record what they make. Each call returns once the record is durable: whatever the step does
/// next may depend on it (a resume must find every resource and image a killed process made).
pub trait Ledger: Send + Sync {
    /// A temporary resource exists: called right after the call that created it, before the next call.
    fn created(&self, job: &JobKey, resource: Resource);
    /// A temporary resource is gone.
    fn removed(&self, resource: Resource);
    /// CreateImage or CopyImage answered: the image exists (pending).
    fn image_requested(&self, job: &JobKey, image: &ImageId);
    /// The job's image ended `failed` and is deregistered: the job's next image is a new request (a copy takes
    /// a new client token, or EC2 would answer with the discarded image).
    fn image_discarded(&self, job: &JobKey, image: &ImageId);
    /// An image's id was published (`[publish]`): a resumed run does not publish it again.
    fn published(&self, job: &JobKey, publication: &Publication);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resource_of_the_own_account_is_journaled_as_before() {
        let resource = Resource::new(Region::new("us-west-2"), ResourceKind::KeyPair, "k");
        let json = serde_json::to_string(&resource).unwrap();
        assert_eq!(json, r#"{"region":"us-west-2","kind":"key_pair","id":"k"}"#);
        assert_eq!(serde_json::from_str::<Resource>(&json).unwrap(), resource);
        assert_eq!(resource.region(), &Region::new("us-west-2"));
        assert_eq!(resource.to_string(), "key pair k in us-west-2");
    }
}
