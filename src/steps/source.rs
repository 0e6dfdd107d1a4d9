//! The source image of a build in its region: the id the flavor names (which must exist there, available),
//! or the newest image matching its filter. The build and the preflight both ask it.

use crate::cloud::{CloudError, ImageId, ImageQuery, ImageState, ImageSummary, RegionCloud};
use crate::config::{FlavorName, ImageFilter, Region, SourceAmi, Tags};
use crate::steps::context::{FLAVOR_TAG, FLEET_TAG};

fn newest(images: Vec<ImageSummary>) -> Option<ImageSummary> {
    images.into_iter().max_by(|a, b| (&a.creation_date, &a.id).cmp(&(&b.creation_date, &b.id)))
}

/// Why there is no source image to build from.
#[derive(Debug)]
pub enum SourceError {
    /// Nothing to build from: what to change.
    Missing(String),
    Cloud(CloudError),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Missing(message) => f.write_str(message),
            SourceError::Cloud(error) => write!(f, "{error}"),
        }
    }
}

/// The image a build in `region` starts from (for an id, its name and date are not looked up: empty).
pub async fn find(cloud: &dyn RegionCloud, source: &SourceAmi, region: &Region) -> Result<ImageSummary, SourceError> {
    match source {
        SourceAmi::Id(id) => {
            let id = ImageId(id.clone());
            let found = cloud.describe_images(std::slice::from_ref(&id)).await.map_err(SourceError::Cloud)?;
            match found.first().map(|image| (&image.state, &image.root_device)) {
                Some((ImageState::Available, root_device)) => Ok(ImageSummary {
                    id,
                    name: String::new(),
                    creation_date: String::new(),
                    root_device: root_device.clone(),
                    owner: None,
                }),
                Some((state, _)) => {
                    Err(SourceError::Missing(format!("source image {id} in {region} is not available: {state:?}")))
                }
                None => Err(SourceError::Missing(format!("source image {id} does not exist in {region}"))),
            }
        }
        SourceAmi::Filter(filter) => {
            if let Some(newest) = newest(cloud.find_images(filter).await.map_err(SourceError::Cloud)?) {
                return Ok(newest);
            }
            // What the pattern matches under any owner: a wrong `owners` is the likeliest mistake.
            let anyone = ImageFilter { owners: Vec::new(), ..filter.clone() };
            let elsewhere = match cloud.find_images(&anyone).await {
                Ok(images) => newest(images).map(|image| {
                    let owner = image.owner.as_deref().unwrap_or("another account");
                    format!(
                        "; under other owners the newest match is `{}` ({}, owner {owner}): add that owner to `owners` if you trust it",
                        image.name, image.id
                    )
                }),
                Err(_) => None,
            };
            Err(SourceError::Missing(format!(
                "no image owned by {} matches `{}` in {region}{}",
                filter.owners.join(", "),
                filter.name_pattern,
                elsewhere.unwrap_or_else(|| "; nor under any other owner".to_string())
            )))
        }
        // The plan hands such a build its parent's image; built alone, see [`parent_image`].
        SourceAmi::Flavor(parent) => {
            Err(SourceError::Missing(format!("built from the image of `{parent}` in {region}, made in the same run")))
        }
    }
}

/// `source_ami = { flavor = … }` when the parent is not built in this run (`--only child`): the newest available
/// image of that flavor of the fleet in `region` (tagged `fleetbake:fleet` and `fleetbake:flavor`).
pub async fn parent_image(
    cloud: &dyn RegionCloud,
    fleet: &str,
    parent: &FlavorName,
    region: &Region,
) -> Result<ImageSummary, SourceError> {
    let tags = Tags::from([(FLEET_TAG.to_string(), fleet.to_string()), (FLAVOR_TAG.to_string(), parent.to_string())]);
    let images = cloud.find_owned_images(&ImageQuery::Tagged(tags)).await.map_err(SourceError::Cloud)?;
    let newest = images
        .into_iter()
        .filter(|image| image.state == ImageState::Available)
        .max_by(|a, b| (&a.creation_date, &a.id).cmp(&(&b.creation_date, &b.id)));
    match newest {
        Some(image) => Ok(ImageSummary {
            id: image.id,
            name: image.name,
            creation_date: image.creation_date,
            root_device: None,
            owner: None,
        }),
        None => Err(SourceError::Missing(format!(
            "no image of `{parent}` of fleet `{fleet}` in {region}: build `{parent}` first (or with this flavor)"
        ))),
    }
}
