//! What the simulated cloud launches from an image, for `gc`'s "in use" reads: each instance's image (as
//! RunInstances was given it; DescribeInstances' `image-id` filter reads it, EC2 API reference,
//! DescribeInstances `Filter.N`), and the images of each launch template's default and latest versions
//! (DescribeLaunchTemplateVersions `$Default` / `$Latest`, EC2 API reference).

use std::collections::BTreeMap;

use super::ssm::Publishing;
use crate::cloud::{ImageId, InstanceId, TemplateImage, TemplateVersionKind};

/// The image each instance of the region was launched from.
#[derive(Clone, Debug, Default)]
pub struct LaunchedFrom(BTreeMap<InstanceId, ImageId>);

impl LaunchedFrom {
    pub fn record(&mut self, instance: InstanceId, image: ImageId) {
        self.0.insert(instance, image);
    }

    /// The image `instance` was launched from, if the model launched it.
    pub fn image_of(&self, instance: &InstanceId) -> Option<&ImageId> {
        self.0.get(instance)
    }

    /// The instances launched from any of `images`, each with its image.
    pub fn of<'a>(&'a self, images: &'a [ImageId]) -> impl Iterator<Item = (&'a InstanceId, &'a ImageId)> + 'a {
        self.0.iter().filter(move |(_, image)| images.contains(image))
    }
}

/// Every launch template's default and latest version that names an image (version 1, as the account made
/// it, names none); a version both default and latest is listed as both.
pub fn template_images(publishing: &Publishing) -> Vec<TemplateImage> {
    let mut images = Vec::new();
    for (name, template) in &publishing.launch_templates {
        let latest = template.versions.len() as u64;
        for (kind, version) in [(TemplateVersionKind::Default, template.default), (TemplateVersionKind::Latest, latest)]
        {
            let Some((Some(image), _)) = template.versions.get(version.saturating_sub(1) as usize) else { continue };
            images.push(TemplateImage {
                template_id: template.id.clone(),
                template_name: name.clone(),
                kind,
                version,
                image: image.clone(),
            });
        }
    }
    images
}

/// EC2's name of an instance state, as DescribeInstances answers it.
pub fn state_name(state: &crate::cloud::InstanceState) -> &'static str {
    use crate::cloud::InstanceState;
    match state {
        InstanceState::Pending => "pending",
        InstanceState::Running => "running",
        InstanceState::Stopping => "stopping",
        InstanceState::Stopped => "stopped",
        InstanceState::ShuttingDown => "shutting-down",
        InstanceState::Terminated => "terminated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_templates_default_and_latest_versions_name_their_images_and_the_accounts_first_version_none() {
        let mut publishing = Publishing::declared(&["web".to_string()], &[], |name| format!("lt-{name}"));
        assert!(template_images(&publishing).is_empty(), "version 1, as the account made it, names no image");
        publishing.template_version("web", &ImageId::new("ami-old"), "night 1").ok().expect("the template exists");
        publishing.template_version("web", &ImageId::new("ami-new"), "night 2").ok().expect("the template exists");
        // Someone sets the default back to night 1's version: $Default and $Latest now differ.
        publishing.launch_templates.get_mut("web").unwrap().default = 2;
        let named: Vec<(TemplateVersionKind, u64, String)> = template_images(&publishing)
            .into_iter()
            .map(|found| (found.kind, found.version, found.image.to_string()))
            .collect();
        assert_eq!(
            named,
            [
                (TemplateVersionKind::Default, 2, "ami-old".to_string()),
                (TemplateVersionKind::Latest, 3, "ami-new".to_string())
            ]
        );
    }
}
