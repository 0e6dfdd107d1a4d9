//! Sharing as EC2 allows it, where moto allows anything: block public access for AMIs per region (`[sim]
//! block_public_access`, on by default as in a new account), images with encrypted snapshots never public,
//! launch and create-volume permissions read back and removed, and a public image's deprecation time at most 2
//! years from its creation.
//!
//! AWS's answers, as AWS gives them:
//! - a public share while block public access is on: `OperationNotPermitted`, "You can't publicly share this
//!   image because block public access for AMIs is enabled for this account" (EC2 User Guide, "Block public
//!   access to your AMIs"; the message as quoted in hortonworks/cloudbreak-images#926);
//! - a public share of an image with encrypted snapshots: `UnsupportedOperation`, "Encrypted snapshots can't be
//!   shared publicly" (EC2 User Guide, "Make your AMI public": encrypted AMIs cannot be public; the code as
//!   quoted in opendevstack/ods-core#1062);
//! - EnableImageDeprecation on a public image past 2 years from its creation: refused (API reference,
//!   EnableImageDeprecation `DeprecateAt`: "for public AMIs, the upper limit is 2 years from the creation
//!   date"); the code is not documented, `InvalidParameterValue` is EC2's for an out-of-range value.

use chrono::{DateTime, Months, Utc};

use super::{ImageAttributes, Refusal};
use crate::cloud::LaunchPermissions;

/// The launch permission `group = all`, as the model keeps it among the others.
const PUBLIC: &str = "all";

impl ImageAttributes {
    /// Who may launch it, sorted into the port's kinds (organization and OU ARNs by their resource).
    pub fn launch(&self) -> LaunchPermissions {
        let mut found = LaunchPermissions::default();
        for grant in &self.launch_permissions {
            if grant == PUBLIC {
                found.public = true;
            } else if grant.contains(":organization/") {
                found.organizations.push(grant.clone());
            } else if grant.contains(":ou/") {
                found.organizational_units.push(grant.clone());
            } else {
                found.accounts.push(grant.clone());
            }
        }
        found
    }

    pub fn is_public(&self) -> bool {
        self.launch_permissions.iter().any(|grant| grant == PUBLIC)
    }
}

/// Every grant of `with`, as the model keeps them.
fn grants(with: &LaunchPermissions) -> Vec<String> {
    let mut all: Vec<String> = with.accounts.clone();
    all.extend(with.organizations.iter().cloned());
    all.extend(with.organizational_units.iter().cloned());
    if with.public {
        all.push(PUBLIC.into());
    }
    all
}

/// ModifyImageAttribute `Add`: refused as a whole when it asks for `all` and the region blocks public access or
/// the image's snapshot is encrypted (nothing of it is granted then, the accounts in it neither).
pub(super) fn grant(
    image: &mut ImageAttributes,
    with: &LaunchPermissions,
    blocked: bool,
    id: &str,
) -> Result<(), Refusal> {
    if with.public && image.kms_key.is_some() {
        return super::refuse(
            "UnsupportedOperation",
            format!("Encrypted snapshots can't be shared publicly. Specify another snapshot ({id})"),
        );
    }
    if with.public && blocked && !image.is_public() {
        return super::refuse(
            "OperationNotPermitted",
            "You can't publicly share this image because block public access for AMIs is enabled for this account. \
             To publicly share the image, you must call the DisableImageBlockPublicAccess API.",
        );
    }
    for grant in grants(with) {
        if !image.launch_permissions.contains(&grant) {
            image.launch_permissions.push(grant);
        }
    }
    Ok(())
}

/// ModifyImageAttribute `Remove`: what is not granted is ignored, as EC2 does.
pub(super) fn revoke(image: &mut ImageAttributes, from: &LaunchPermissions) {
    let removed = grants(from);
    image.launch_permissions.retain(|grant| !removed.contains(grant));
}

/// EnableImageDeprecation's limit for a public image: 2 years from its creation.
pub(super) fn check_deprecation(
    image: &ImageAttributes,
    creation_date: &str,
    at: DateTime<Utc>,
) -> Result<(), Refusal> {
    if !image.is_public() {
        return Ok(());
    }
    let created: DateTime<Utc> = creation_date.parse().expect("an RFC 3339 date");
    let limit = created.checked_add_months(Months::new(24)).expect("in range");
    if at > limit {
        return super::refuse(
            "InvalidParameterValue",
            format!(
                "The deprecation time of a public AMI can be at most 2 years after its creation ({})",
                limit.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        );
    }
    Ok(())
}
