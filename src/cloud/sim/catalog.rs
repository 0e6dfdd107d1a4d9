//! Public images the simulated cloud knows: a small catalog of the common ones (Amazon Linux 2023, Ubuntu LTS,
//! Debian), and for any other filter an image synthesized deterministically from the filter, in every region.

use crate::cloud::{fnv1a, ImageId};
use crate::config::{ImageFilter, Region};
use crate::util::glob::glob_matches;

/// A public image as DescribeImages lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicImage {
    pub id: ImageId,
    pub name: String,
    pub creation_date: String,
}

struct CatalogImage {
    owner: &'static str,
    alias: &'static str,
    name: &'static str,
    architecture: &'static str,
    created: &'static str,
}

const CATALOG: &[CatalogImage] = &[
    CatalogImage {
        owner: "137112412989",
        alias: "amazon",
        name: "al2023-ami-2023.6.20241111.0-kernel-6.1-x86_64",
        architecture: "x86_64",
        created: "2024-11-11T21:13:44.000Z",
    },
    CatalogImage {
        owner: "137112412989",
        alias: "amazon",
        name: "al2023-ami-2023.6.20241121.0-kernel-6.1-x86_64",
        architecture: "x86_64",
        created: "2024-11-21T23:52:02.000Z",
    },
    CatalogImage {
        owner: "137112412989",
        alias: "amazon",
        name: "al2023-ami-2023.6.20241121.0-kernel-6.1-arm64",
        architecture: "arm64",
        created: "2024-11-21T23:52:10.000Z",
    },
    CatalogImage {
        owner: "099720109477",
        alias: "canonical",
        name: "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20241119",
        architecture: "x86_64",
        created: "2024-11-19T10:21:30.000Z",
    },
    CatalogImage {
        owner: "099720109477",
        alias: "canonical",
        name: "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-20241119",
        architecture: "x86_64",
        created: "2024-11-19T10:25:12.000Z",
    },
    CatalogImage {
        owner: "136693071363",
        alias: "debian",
        name: "debian-12-amd64-20241125-1942",
        architecture: "x86_64",
        created: "2024-11-25T20:12:40.000Z",
    },
];

/// What the filter matches in `region`: catalog images, or else one image synthesized from the filter.
pub fn matching(region: &Region, filter: &ImageFilter) -> Vec<PublicImage> {
    let owned = |image: &CatalogImage| filter.owners.iter().any(|owner| owner == image.owner || owner == image.alias);
    let architecture =
        |image: &CatalogImage| filter.architecture.as_deref().is_none_or(|arch| arch == image.architecture);
    let found: Vec<PublicImage> = CATALOG
        .iter()
        .filter(|image| owned(image) && architecture(image) && glob_matches(&filter.name_pattern, image.name))
        .map(|image| PublicImage {
            id: public_id(region, image.name),
            name: image.name.to_string(),
            creation_date: image.created.to_string(),
        })
        .collect();
    if !found.is_empty() {
        return found;
    }
    let name = filter.name_pattern.replace('*', "20261101").replace('?', "0");
    vec![PublicImage { id: public_id(region, &name), name, creation_date: "2026-11-01T00:00:00.000Z".into() }]
}

/// The image one of AWS's public parameters (`/aws/service/…`, e.g.
/// `/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64`) names in `region`: the newest
/// catalog image of the distribution and architecture the name says, else one synthesized from the name; each
/// region's own id, as AWS publishes one parameter per region ("Query for the latest Amazon Linux AMI IDs
/// using AWS Systems Manager Parameter Store"). `None`: not a public parameter.
pub fn public_parameter(region: &Region, name: &str) -> Option<PublicImage> {
    let path = name.strip_prefix("/aws/service/")?;
    let arm = path.contains("arm64");
    let newest = CATALOG
        .iter()
        .filter(|image| {
            let family = ["al2023", "ubuntu", "debian"].into_iter().find(|family| path.contains(family));
            family.is_some_and(|family| image.name.contains(family)) && (image.architecture == "arm64") == arm
        })
        .max_by_key(|image| image.created);
    Some(match newest {
        Some(image) => PublicImage {
            id: public_id(region, image.name),
            name: image.name.to_string(),
            creation_date: image.created.to_string(),
        },
        None => PublicImage {
            id: public_id(region, name),
            name: path.replace('/', "-"),
            creation_date: "2026-11-01T00:00:00.000Z".into(),
        },
    })
}

/// A public image's id in a region: the same for the same name, different in each region, as in EC2.
pub fn public_id(region: &Region, name: &str) -> ImageId {
    ImageId::new(format!("ami-0{:016x}", fnv1a(&format!("{region}/{name}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_ec2_name_filters_do() {
        assert!(glob_matches("al2023-ami-2023.*-kernel-6.1-x86_64", "al2023-ami-2023.6.20241121.0-kernel-6.1-x86_64"));
        assert!(!glob_matches("al2023-ami-2023.*-kernel-6.1-x86_64", "al2023-ami-2023.6.20241121.0-kernel-6.1-arm64"));
        assert!(glob_matches("debian-1?-amd64-*", "debian-12-amd64-20241125-1942"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("a*b", "acbd"));
        assert!(glob_matches("a*b*", "acbd"));
    }

    #[test]
    fn public_parameters_name_the_newest_catalog_image_of_each_region() {
        let (west, east) = (Region::new("us-west-2"), Region::new("eu-west-1"));
        let name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";
        let image = public_parameter(&west, name).unwrap();
        assert_eq!(image.name, "al2023-ami-2023.6.20241121.0-kernel-6.1-x86_64");
        assert_ne!(image.id, public_parameter(&east, name).unwrap().id, "ids differ per region");
        let arm = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64";
        assert_eq!(public_parameter(&west, arm).unwrap().name, "al2023-ami-2023.6.20241121.0-kernel-6.1-arm64");
        assert!(public_parameter(&west, "/images/golden").is_none());
    }

    #[test]
    fn catalog_images_resolve_and_others_are_synthesized() {
        let region = Region::new("us-west-2");
        let amazon = ImageFilter {
            owners: vec!["amazon".into()],
            name_pattern: "al2023-ami-2023.*-kernel-6.1-x86_64".into(),
            architecture: None,
        };
        let found = matching(&region, &amazon);
        assert_eq!(found.len(), 2);
        assert_ne!(found[0].id, matching(&Region::new("eu-west-1"), &amazon)[0].id, "ids differ per region");
        let custom = ImageFilter { owners: vec!["self".into()], name_pattern: "golden-*".into(), architecture: None };
        let synthesized = matching(&region, &custom);
        assert_eq!(synthesized.len(), 1);
        assert_eq!(synthesized[0].name, "golden-20261101");
        assert_eq!(synthesized, matching(&region, &custom), "deterministic");
    }
}
