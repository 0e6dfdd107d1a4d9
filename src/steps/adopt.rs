//! Creating calls that may be repeats. A call whose answer was lost (a timeout, a dropped connection) is
//! retried, and EC2 may already have done it: where it offers a `ClientToken` (RunInstances, CopyImage) the
//! repeat returns the first result; elsewhere it answers `*.Duplicate`. These wrappers take that answer as
//! "it exists, and it is ours" — every name involved is unique to the run — and carry on with it, instead of
//! failing the job and leaving the first result behind. What the lost answer made is moments old, so the
//! describe that finds it may not list it yet (EC2's eventual consistency): it is looked for until it does,
//! for at most [`CONSISTENCY_WINDOW`](crate::cloud::consistency::CONSISTENCY_WINDOW).

use crate::cloud::consistency::until_listed;
use crate::cloud::retry::{retry, GaveUp, Outcome, Policy};
use crate::cloud::{
    CloudError, CloudResult, CopySpec, ImageId, ImageOf, ImageQuery, IngressSources, InstanceId, KeyPairName,
    OwnedImage, PrivateKey, RegionCloud, SecurityGroupId, VpcId,
};
use crate::config::Tags;
use crate::plan::RunId;
use crate::steps::context::RUN_ID_TAG;

fn is(error: &CloudError, code: &str) -> bool {
    error.code.as_deref() == Some(code)
}

/// A key pair of this name. Its private key cannot be read again, so a key pair that already exists (a
/// repeat, or left by an earlier attempt of the run) is deleted and made anew. One made moments ago may not
/// be deleted yet (EC2 answers DeleteKeyPair for a key it does not know with success): the delete and the
/// create are repeated, with pauses, for as long as the consistency window.
pub async fn key_pair(cloud: &dyn RegionCloud, name: &KeyPairName, tags: &Tags) -> CloudResult<PrivateKey> {
    let repeats = Policy::REPEATED_KEY_PAIR.start();
    let deadline = repeats.deadline();
    retry(
        repeats,
        |_| async move {
            match cloud.create_key_pair(name, tags).await {
                // Deleted only if it will be made again.
                Err(error) if is(&error, "InvalidKeyPair.Duplicate") && !deadline.is_spent() => {
                    match cloud.delete_key_pair(name).await {
                        Ok(()) => Outcome::Again(error),
                        Err(error) => Outcome::Done(Err(error)),
                    }
                }
                other => Outcome::Done(other),
            }
        },
        |_, _| {},
    )
    .await
    .map_err(GaveUp::into_error)
}

/// A security group of this name; one that already exists with this build's tags is the build's own.
pub async fn security_group(
    cloud: &dyn RegionCloud,
    name: &str,
    description: &str,
    vpc: Option<&VpcId>,
    tags: &Tags,
) -> CloudResult<SecurityGroupId> {
    match cloud.create_security_group(name, description, vpc, tags).await {
        Err(error) if is(&error, "InvalidGroup.Duplicate") => {
            let found = until_listed(|| async {
                let mut found = cloud.find_security_groups(tags).await?;
                Ok((found.len() == 1).then(|| found.remove(0).id))
            })
            .await?;
            found.ok_or(error)
        }
        other => other,
    }
}

/// The rule, whether this call added it or an earlier one did.
pub async fn ingress(
    cloud: &dyn RegionCloud,
    group: &SecurityGroupId,
    port: u16,
    from: &IngressSources,
) -> CloudResult<()> {
    match cloud.authorize_ingress(group, port, from).await {
        Err(error) if is(&error, "InvalidPermission.Duplicate") => Ok(()),
        other => other,
    }
}

/// CreateImage, the image and its snapshots tagged `tags` at creation; an image of that name already made by
/// this run (its tags say so) is the one.
pub async fn create_image(
    cloud: &dyn RegionCloud,
    instance: &InstanceId,
    of: ImageOf,
    name: &str,
    description: Option<&str>,
    tags: &Tags,
    run_id: &RunId,
) -> CloudResult<ImageId> {
    match cloud.create_image(instance, name, description, tags, tags, of).await {
        Err(error) if is(&error, "InvalidAMIName.Duplicate") => {
            let tagged_by_run =
                |image: &OwnedImage| image.tags.get(RUN_ID_TAG).is_some_and(|tagged| tagged == run_id.as_str());
            own_image(cloud, name, tagged_by_run).await?.ok_or(error)
        }
        other => other,
    }
}

/// CopyImage; an image of that name made by this run, or not tagged yet (CopyImage's answer was lost before
/// the copy was tagged), is the one.
pub async fn copy_image(cloud: &dyn RegionCloud, spec: &CopySpec, run_id: &RunId) -> CloudResult<ImageId> {
    match cloud.copy_image(spec).await {
        Err(error) if is(&error, "InvalidAMIName.Duplicate") => {
            own_image(cloud, &spec.name, |image| is_of_run(image, run_id)).await?.ok_or(error)
        }
        other => other,
    }
}

async fn own_image(
    cloud: &dyn RegionCloud,
    name: &str,
    ours: impl Fn(&OwnedImage) -> bool,
) -> CloudResult<Option<ImageId>> {
    // Not listed yet: look again. Listed, but not ours (another run's image holds the name): that is the answer.
    let listed = until_listed(|| async {
        let found = cloud.find_owned_images(&ImageQuery::Named(vec![name.to_string()])).await?;
        let named: Vec<OwnedImage> = found.into_iter().filter(|image| image.name == name).collect();
        Ok((!named.is_empty()).then(|| named.into_iter().find(|image| ours(image)).map(|image| image.id)))
    })
    .await?;
    Ok(listed.flatten())
}

/// Not another run's image of the same name (a template without `{run_id}` names images per day, say). An
/// image without the tag is a copy whose answer or run was lost before tagging it: its name says it is this
/// run's.
pub fn is_of_run(image: &OwnedImage, run_id: &RunId) -> bool {
    image.tags.get(RUN_ID_TAG).is_none_or(|tagged| tagged == run_id.as_str())
}
