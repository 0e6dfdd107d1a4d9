//! What steps record as they go, before anything depends on it: the [`Ledger`] port, which the run's journal
//! (`state::journal`) implements, and the temporary [`Resource`]s it names. Steps know the journal only
//! through this, as they know EC2 only through the cloud port.

use std::fmt;

use crate::cloud::ImageId;
use crate::config::{Place, Region};
use crate::outcome::Publication;
use crate::plan::JobKey;

/// A temporary resource a job made: a build's instance, security group, key pair or session, or a grant a
/// distribution copy gave another account on the own account's image (see [`crate::steps::distribute`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// Where it is. Written as `region` (the own account's place is its region name), so the journal's
    /// format is as before.
    #[serde(rename = "region")]
    pub place: Place,
    pub kind: ResourceKind,
    /// Its id; of a launch permission the image's, of a create-volume permission the snapshot's, of a KMS
    /// grant the grant's (of one requested, whose id is not known, its name).
    pub id: String,
    /// A grant's grantee (and a KMS grant's key); absent for every other kind, so their records are as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Grantee>,
}

/// Whom a grant lets in, and on which KMS key (a KMS grant's: RevokeGrant names the key and the grant).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grantee {
    /// The 12-digit account the grant lets in.
    pub account: String,
    /// A KMS grant's key, by ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    Instance,
    SecurityGroup,
    KeyPair,
    /// A Session Manager session (journaled as `session`): `--resume` and `gc` end a killed run's sessions.
    Session,
    /// A launch permission on the own account's image (`id`) for a distribution account (`grant`).
    LaunchPermission,
    /// A create-volume permission on the own account's snapshot (`id`) for a distribution account.
    CreateVolumePermission,
    /// A KMS grant (`id`) on the own account's key letting a distribution account use it.
    KmsGrant,
    /// A KMS grant asked for (journaled before CreateGrant) whose id is not known yet: `id` is the grant's
    /// name. Killed before the answer, or the answer lost, only this names it: CreateGrant with the same name,
    /// key and grantee answers the same grant, whose id is then revoked.
    KmsGrantRequested,
}

impl ResourceKind {
    /// Whether it is a grant to another account: carries no tag, so only the journal names it (the sweep,
    /// `--resume` and `gc` take it back from the journal).
    pub fn is_grant(self) -> bool {
        matches!(
            self,
            ResourceKind::LaunchPermission
                | ResourceKind::CreateVolumePermission
                | ResourceKind::KmsGrant
                | ResourceKind::KmsGrantRequested
        )
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ResourceKind::Instance => "instance",
            ResourceKind::SecurityGroup => "security group",
            ResourceKind::KeyPair => "key pair",
            ResourceKind::Session => "session",
            ResourceKind::LaunchPermission => "launch permission on",
            ResourceKind::CreateVolumePermission => "create-volume permission on",
            ResourceKind::KmsGrant => "KMS grant",
            ResourceKind::KmsGrantRequested => "KMS grant named",
        };
        write!(f, "{kind} {}", self.id)?;
        if let Some(grantee) = &self.grant {
            if let Some(key) = &grantee.key {
                write!(f, " on {key}")?;
            }
            write!(f, " for account {}", grantee.account)?;
        }
        write!(f, " in {}", self.place)
    }
}

impl Resource {
    /// A resource in a region of the run's own account.
    pub fn new(region: Region, kind: ResourceKind, id: impl Into<String>) -> Self {
        Resource { place: Place::own(region), kind, id: id.into(), grant: None }
    }

    /// A grant in a region of the run's own account to `grantee`.
    pub fn grant(region: Region, kind: ResourceKind, id: impl Into<String>, grantee: Grantee) -> Self {
        Resource { grant: Some(grantee), ..Resource::new(region, kind, id) }
    }

    pub fn region(&self) -> &Region {
        &self.place.region
    }

    /// A grant's grantee account (empty for any other resource).
    pub fn grantee_account(&self) -> &str {
        self.grant.as_ref().map_or("", |grantee| grantee.account.as_str())
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
    /// `--keep-failed`: a failed build's temporary resource is kept until `until` (tagged
    /// `fleetbake:keep-until`): no longer outstanding, so `--resume` and the end-of-run sweep leave it; `gc`
    /// removes it once the time is past.
    fn kept(&self, job: &JobKey, resource: Resource, until: chrono::DateTime<chrono::Utc>);
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

    #[test]
    fn a_grant_names_its_account_and_key() {
        let grantee = Grantee { account: "222233334444".into(), key: Some("arn:aws:kms:us-west-2:1:key/k".into()) };
        let resource = Resource::grant(Region::new("us-west-2"), ResourceKind::KmsGrant, "g-1", grantee);
        let json = serde_json::to_string(&resource).unwrap();
        assert_eq!(
            json,
            r#"{"region":"us-west-2","kind":"kms_grant","id":"g-1","grant":{"account":"222233334444","key":"arn:aws:kms:us-west-2:1:key/k"}}"#
        );
        assert_eq!(serde_json::from_str::<Resource>(&json).unwrap(), resource);
        assert_eq!(
            resource.to_string(),
            "KMS grant g-1 on arn:aws:kms:us-west-2:1:key/k for account 222233334444 in us-west-2"
        );
        assert!(resource.kind.is_grant() && !ResourceKind::Session.is_grant());
        let grantee = Grantee { account: "222233334444".into(), key: Some("arn:aws:kms:us-west-2:1:key/k".into()) };
        let requested = Resource::grant(Region::new("us-west-2"), ResourceKind::KmsGrantRequested, "fb-1", grantee);
        let json = serde_json::to_string(&requested).unwrap();
        assert!(json.contains(r#""kind":"kms_grant_requested","id":"fb-1""#), "{json}");
        assert_eq!(serde_json::from_str::<Resource>(&json).unwrap(), requested);
        assert!(requested.kind.is_grant(), "the sweep, resume and gc take it back");
        assert_eq!(
            requested.to_string(),
            "KMS grant named fb-1 on arn:aws:kms:us-west-2:1:key/k for account 222233334444 in us-west-2"
        );
    }
}
