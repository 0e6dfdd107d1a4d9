//! `[sharing] public = true`: every region an image lands in must let images be made public. Block public
//! access for AMIs (GetImageBlockPublicAccessState) is on in new accounts; where it is, ModifyImageAttribute
//! refuses `all` (`OperationNotPermitted`). The run would still share with the accounts and organizations
//! there (the public grant is a call of its own), but every image in those regions would fail its finish.

use super::{names_by_region, Outcome, Preflight};
use crate::cloud::{Cloud, ImageBlockPublicAccess};
use crate::config::Fleet;
use crate::plan::Plan;

/// With `public = true`, one check per region an image lands in: its block public access state; and, when
/// more than one blocks, one line naming them all.
pub async fn check(preflight: &mut Preflight, fleet: &Fleet, plan: &Plan, cloud: &dyn Cloud) {
    if !fleet.sharing.public {
        return;
    }
    let mut blocked = Vec::new();
    for region in names_by_region(plan).keys() {
        let outcome = match cloud.region(region).image_block_public_access().await {
            Ok(ImageBlockPublicAccess::Unblocked) => {
                Outcome::Ok("block public access for AMIs is off: images can be made public".to_string())
            }
            Ok(ImageBlockPublicAccess::BlockNewSharing) => {
                blocked.push(region.to_string());
                Outcome::Fail(format!(
                    "block public access for AMIs is on (`block-new-sharing`): EC2 will refuse to make the images public here; disable it (`aws ec2 disable-image-block-public-access --region {region}`, up to 10 minutes to take effect) or drop `[sharing] public`"
                ))
            }
            Err(error) => Outcome::Fail(format!("cannot read block public access for AMIs: {error}")),
        };
        preflight.push(Some(region), outcome);
    }
    if blocked.len() > 1 {
        preflight.push(None, Outcome::Fail(format!("public sharing would be refused in {}", blocked.join(", "))));
    }
}
