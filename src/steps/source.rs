//! The source image of a build in its region: the id the flavor names (which must exist there, available),
//! the newest image matching its filter, or the image id an SSM parameter holds there (read with
//! GetParameter, then described as an id is). The build, `--changed-only` and the preflight all ask it.

use crate::cloud::{CloudError, ImageId, ImageQuery, ImageState, ImageSummary, RegionCloud};
use crate::config::{FlavorName, ImageFilter, Region, SourceAmi, Tags};
use crate::outcome::SourceParameter;
use crate::steps::context::{FLAVOR_TAG, FLEET_TAG};

/// A build's source image, and the parameter version it was read from when the flavor names one.
#[derive(Clone, Debug)]
pub struct ResolvedSource {
    pub image: ImageSummary,
    pub parameter: Option<SourceParameter>,
}

/// How much of a parameter's value an error shows: the value is whatever the parameter holds.
const SHOWN_VALUE: usize = 64;

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

/// The image a build in `region` starts from, and the parameter version it was read from.
pub async fn resolve(
    cloud: &dyn RegionCloud,
    source: &SourceAmi,
    region: &Region,
) -> Result<ResolvedSource, SourceError> {
    let SourceAmi::SsmParameter(name) = source else {
        return Ok(ResolvedSource { image: find(cloud, source, region).await?, parameter: None });
    };
    from_parameter(cloud, name, region).await
}

/// GetParameter, then the image its value names, described as an id is.
async fn from_parameter(cloud: &dyn RegionCloud, name: &str, region: &Region) -> Result<ResolvedSource, SourceError> {
    let read = cloud.parameter(name).await.map_err(SourceError::Cloud)?;
    let Some(read) = read else {
        return Err(SourceError::Missing(format!(
            "SSM parameter `{name}` does not exist in {region} (or is not readable there): name one that exists in every build region"
        )));
    };
    if !is_image_id(&read.value) {
        return Err(SourceError::Missing(format!(
            "SSM parameter `{name}` (version {}) in {region} holds {}, not an image id like `ami-0123456789abcdef0`",
            read.version,
            shown(&read.value)
        )));
    }
    let image = find_id(cloud, ImageId(read.value.clone()), region).await.map_err(|error| match error {
        SourceError::Missing(message) => {
            SourceError::Missing(format!("{message} (SSM parameter `{name}`, version {})", read.version))
        }
        cloud_error => cloud_error,
    })?;
    Ok(ResolvedSource { image, parameter: Some(SourceParameter { name: name.to_string(), version: read.version }) })
}

/// `ami-` and 8 or 17 hex digits, as EC2 makes image ids.
fn is_image_id(value: &str) -> bool {
    value
        .strip_prefix("ami-")
        .is_some_and(|hex| matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An untrusted value for a message: quoted with escapes (no control character reaches the terminal), and cut
/// to [`SHOWN_VALUE`] characters.
fn shown(value: &str) -> String {
    let cut: String = value.chars().take(SHOWN_VALUE).collect();
    let more = if value.chars().count() > SHOWN_VALUE { "…" } else { "" };
    format!("{cut:?}{more}")
}

/// The image a build in `region` starts from (for an id, its name and date are not looked up: empty).
pub async fn find(cloud: &dyn RegionCloud, source: &SourceAmi, region: &Region) -> Result<ImageSummary, SourceError> {
    match source {
        SourceAmi::SsmParameter(name) => from_parameter(cloud, name, region).await.map(|resolved| resolved.image),
        SourceAmi::Id(id) => find_id(cloud, ImageId(id.clone()), region).await,
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

/// Where a child's source came from when its parent is not built in this run (`--only child`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParentFrom {
    /// The image the fleet's manifest lists, still available (described: its root device is known).
    Manifest,
    /// The parent's newest available image of the fleet ([`parent_image`]; not described).
    Newest,
}

/// `--only child`: the parent's image `listed` by the fleet's manifest while it is available, else the
/// fleet's newest image of the parent in `region`. The build and the `--changed-only` decision both choose here.
pub async fn parent_not_built(
    cloud: &dyn RegionCloud,
    fleet: &str,
    parent: &FlavorName,
    region: &Region,
    listed: Option<&ImageId>,
) -> Result<(ImageSummary, ParentFrom), SourceError> {
    if let Some(listed) = listed {
        if let Ok(found) = find_id(cloud, listed.clone(), region).await {
            return Ok((found, ParentFrom::Manifest));
        }
    }
    Ok((parent_image(cloud, fleet, parent, region).await?, ParentFrom::Newest))
}

/// The image with this id in `region`, which must be available (its name and date are not looked up: empty).
async fn find_id(cloud: &dyn RegionCloud, id: ImageId, region: &Region) -> Result<ImageSummary, SourceError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_image_id_is_taken_and_any_other_value_is_shown_escaped_and_bounded() {
        assert!(is_image_id("ami-0d53cc9bd365ad65b"));
        assert!(is_image_id("ami-12345678"));
        for value in ["ami-", "ami-0d53cc9bd365ad65", "ami-0d53cc9bd365ad65g", "AMI-12345678", " ami-12345678", ""] {
            assert!(!is_image_id(value), "{value}");
        }
        assert_eq!(shown("made by the account"), "\"made by the account\"");
        let hostile = format!("\u{1b}]0;owned\u{7}{}", "x".repeat(200));
        let text = shown(&hostile);
        assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
        assert!(text.starts_with("\"\\u{1b}]0;owned\\u{7}x") && text.ends_with("\"…"), "{text}");
        assert!(text.chars().count() < 90, "{text}");
    }
}
