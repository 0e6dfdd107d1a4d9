//! The simulated SSM Parameter Store and EC2 launch templates: what `[publish]` writes to, with AWS's rules.
//!
//! - A parameter keeps its newest 100 versions: a put drops the oldest, unless the oldest carries a label, and
//!   then it is refused with `ParameterMaxVersionLimitExceeded` (SSM API reference, that error: "Parameter
//!   Store retains the 100 most recently created versions … if the oldest version has a label attached to it,
//!   Parameter Store won't delete the version"; the message below is the one it documents).
//! - A version carries at most 10 labels (`ParameterVersionLabelLimitExceeded`); a label is on one version of
//!   a parameter at a time, and labelling another version moves it (SSM user guide, "Working with parameter
//!   labels").
//! - A parameter's data type is fixed when it is made: `aws:ec2:image` cannot be put over `text` (SSM user
//!   guide, "Parameter data types in Parameter Store": no change to or from `aws:ec2:image`), answered
//!   `ValidationException`.
//! - PutParameter with `aws:ec2:image` answers a version at once and validates the image id afterwards
//!   ([`VALIDATION`]; SSM API reference, PutParameter `DataType`: a 200 "does not guarantee that your
//!   parameter was successfully created or updated"); the version appears only if the image exists in the
//!   region and no `[sim] faults` `validation = "fails"` fires. A failed validation leaves the parameter
//!   unchanged; whether SSM reuses its number is not documented: the model does not.
//! - Launch templates exist only where `[sim] launch_templates` declares them (an account's deploy tooling
//!   makes them); CreateLaunchTemplateVersion on another name is `InvalidLaunchTemplateName.NotFoundException`.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Refusal;
use crate::cloud::{ImageId, ParameterHistory, ParameterVersion, IMAGE_DATA_TYPE};
use crate::config::ExistingParameter;

/// SSM keeps this many versions of a parameter.
pub const MAX_VERSIONS: usize = 100;
/// SSM allows this many labels on one version.
pub const MAX_LABELS_PER_VERSION: usize = 10;
/// How long after PutParameter SSM's validation of an `aws:ec2:image` value takes.
pub const VALIDATION: Duration = Duration::from_secs(5);

/// One SSM parameter (kept by `[sim] state` but for puts not yet validated: [`super::persist`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SimParameter {
    pub data_type: String,
    /// Oldest first.
    pub versions: Vec<ParameterVersion>,
    /// Puts answered and not yet validated.
    #[serde(skip)]
    pending: Vec<PendingPut>,
    /// The number the last put was given (validated or not).
    last_number: u64,
}

#[derive(Clone, Debug)]
struct PendingPut {
    version: u64,
    value: String,
    settles_at: Instant,
    /// The validation fails: the version never appears.
    fails: bool,
}

/// One launch template: every version's image (version 1, as the account made it, has none) and
/// description, and the default version.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SimLaunchTemplate {
    pub id: String,
    pub versions: Vec<(Option<ImageId>, String)>,
    pub default: u64,
}

/// Parameters and launch templates of one region.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Publishing {
    pub parameters: BTreeMap<String, SimParameter>,
    pub launch_templates: BTreeMap<String, SimLaunchTemplate>,
}

fn refuse<T>(code: &str, message: impl Into<String>) -> Result<T, Refusal> {
    super::refuse(code, message)
}

impl Publishing {
    /// The region as the account has it before the run: `[sim] launch_templates` (one version each) and
    /// `[sim] parameters` (one version each, of their data type).
    pub(super) fn declared(
        templates: &[String],
        parameters: &[ExistingParameter],
        template_id: impl Fn(&str) -> String,
    ) -> Self {
        let launch_templates = templates
            .iter()
            .map(|name| {
                let template = SimLaunchTemplate {
                    id: template_id(name),
                    versions: vec![(None, "made by the account".to_string())],
                    default: 1,
                };
                (name.clone(), template)
            })
            .collect();
        let parameters = parameters
            .iter()
            .map(|declared| {
                let version = ParameterVersion { version: 1, value: "made by the account".into(), labels: Vec::new() };
                let parameter = SimParameter {
                    data_type: declared.data_type.clone(),
                    versions: vec![version],
                    pending: Vec::new(),
                    last_number: 1,
                };
                (declared.name.clone(), parameter)
            })
            .collect();
        Publishing { parameters, launch_templates }
    }

    /// PutParameter (`aws:ec2:image`, overwrite): the number of the version it will be, once validated
    /// (`valid`: the image exists and no fault fails the validation).
    pub(super) fn put(&mut self, name: &str, image: &ImageId, valid: bool, now: Instant) -> Result<u64, Refusal> {
        let parameter = self.parameters.entry(name.to_string()).or_insert_with(|| SimParameter {
            data_type: IMAGE_DATA_TYPE.to_string(),
            versions: Vec::new(),
            pending: Vec::new(),
            last_number: 0,
        });
        parameter.settle(now);
        if parameter.data_type != IMAGE_DATA_TYPE {
            return refuse(
                "ValidationException",
                format!(
                    "The parameter {name} has data type {}; a parameter's data type cannot be changed to {IMAGE_DATA_TYPE}",
                    parameter.data_type
                ),
            );
        }
        let held = parameter.versions.len() + parameter.pending.len();
        if held >= MAX_VERSIONS {
            if let Some(oldest) = parameter.versions.first().filter(|oldest| !oldest.labels.is_empty()) {
                return refuse(
                    "ParameterMaxVersionLimitExceeded",
                    format!(
                        "You attempted to create a new version of {name} by calling the PutParameter API with the overwrite flag. Version {}, the oldest version, can't be deleted because it has a label associated with it. Move the label to another version of the parameter, and try again.",
                        oldest.version
                    ),
                );
            }
        }
        parameter.last_number += 1;
        let version = parameter.last_number;
        parameter.pending.push(PendingPut {
            version,
            value: image.to_string(),
            settles_at: now + VALIDATION,
            fails: !valid,
        });
        Ok(version)
    }

    /// GetParameterHistory.
    pub(super) fn history(&mut self, name: &str, now: Instant) -> Option<ParameterHistory> {
        let parameter = self.parameters.get_mut(name)?;
        parameter.settle(now);
        if parameter.versions.is_empty() {
            // Made by a put whose validation has not ended (or failed): SSM does not know the parameter.
            return None;
        }
        Some(ParameterHistory { data_type: parameter.data_type.clone(), versions: parameter.versions.clone() })
    }

    /// GetParameter: the newest validated version (`None`: SSM does not know the parameter).
    pub(super) fn current(&mut self, name: &str, now: Instant) -> Option<ParameterVersion> {
        let parameter = self.parameters.get_mut(name)?;
        parameter.settle(now);
        parameter.versions.last().cloned()
    }

    /// LabelParameterVersion: the label moves to `version`.
    pub(super) fn label(&mut self, name: &str, version: u64, label: &str, now: Instant) -> Result<(), Refusal> {
        let parameter = self.known(name, now)?;
        let Some(index) = parameter.versions.iter().position(|found| found.version == version) else {
            return refuse(
                "ParameterVersionNotFound",
                format!("Systems Manager could not find version {version} of {name}."),
            );
        };
        if parameter.versions[index].labels.len() >= MAX_LABELS_PER_VERSION
            && !parameter.versions[index].labels.iter().any(|found| found == label)
        {
            return refuse(
                "ParameterVersionLabelLimitExceeded",
                format!("A parameter version can have maximum {MAX_LABELS_PER_VERSION} labels."),
            );
        }
        for found in &mut parameter.versions {
            found.labels.retain(|existing| existing != label);
        }
        parameter.versions[index].labels.push(label.to_string());
        Ok(())
    }

    /// UnlabelParameterVersion.
    pub(super) fn unlabel(&mut self, name: &str, version: u64, labels: &[String], now: Instant) -> Result<(), Refusal> {
        let parameter = self.known(name, now)?;
        let Some(found) = parameter.versions.iter_mut().find(|found| found.version == version) else {
            return refuse(
                "ParameterVersionNotFound",
                format!("Systems Manager could not find version {version} of {name}."),
            );
        };
        found.labels.retain(|existing| !labels.contains(existing));
        Ok(())
    }

    fn known(&mut self, name: &str, now: Instant) -> Result<&mut SimParameter, Refusal> {
        match self.parameters.get_mut(name) {
            Some(parameter) => {
                parameter.settle(now);
                Ok(parameter)
            }
            None => refuse("ParameterNotFound", format!("Parameter {name} not found.")),
        }
    }

    /// CreateLaunchTemplateVersion with `image`, made the default (ModifyLaunchTemplate in the same step).
    pub(super) fn template_version(
        &mut self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> Result<(String, u64), Refusal> {
        let Some(template) = self.launch_templates.get_mut(name) else {
            return refuse(
                "InvalidLaunchTemplateName.NotFoundException",
                format!("The specified launch template, with template name {name}, does not exist."),
            );
        };
        template.versions.push((Some(image.clone()), description.to_string()));
        template.default = template.versions.len() as u64;
        Ok((template.id.clone(), template.default))
    }

    /// DescribeLaunchTemplateVersions filtered by image: the version with this description.
    pub(super) fn template_version_made(
        &self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> Result<Option<(String, u64)>, Refusal> {
        let Some(template) = self.launch_templates.get(name) else {
            return refuse(
                "InvalidLaunchTemplateName.NotFoundException",
                format!("The specified launch template, with template name {name}, does not exist."),
            );
        };
        let made =
            template.versions.iter().position(|(found, text)| found.as_ref() == Some(image) && text == description);
        Ok(made.map(|index| (template.id.clone(), index as u64 + 1)))
    }
}

impl SimParameter {
    /// Ends the validations whose time has come: a valid put becomes the newest version (the oldest dropped
    /// past [`MAX_VERSIONS`]: the put checked it carries no label), a failed one leaves the parameter as it was.
    fn settle(&mut self, now: Instant) {
        let (settled, pending): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|put| put.settles_at <= now);
        self.pending = pending;
        for put in settled.into_iter().filter(|put| !put.fails) {
            self.versions.push(ParameterVersion { version: put.version, value: put.value, labels: Vec::new() });
            while self.versions.len() > MAX_VERSIONS {
                self.versions.remove(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "/images/fleet/base";

    fn image(n: u64) -> ImageId {
        ImageId::new(format!("ami-{n:017x}"))
    }

    /// Puts `count` valid versions, each settled before the next.
    fn put_settled(publishing: &mut Publishing, count: u64, now: &mut Instant) -> Vec<u64> {
        (0..count)
            .map(|n| {
                let version = publishing.put(NAME, &image(n), true, *now).map_err(|refusal| refusal.code).unwrap();
                *now += VALIDATION;
                version
            })
            .collect()
    }

    fn code<T: std::fmt::Debug>(answer: Result<T, Refusal>) -> String {
        answer.err().map(|refusal| refusal.code).unwrap_or_else(|| "answered".into())
    }

    #[test]
    fn a_version_appears_only_once_validated_and_a_failed_validation_leaves_the_parameter_unchanged() {
        let mut publishing = Publishing::default();
        let mut now = Instant::now();
        assert_eq!(publishing.put(NAME, &image(1), true, now).map_err(|r| r.code).unwrap(), 1);
        assert_eq!(publishing.history(NAME, now), None, "not yet validated");
        now += VALIDATION;
        assert_eq!(publishing.history(NAME, now).unwrap().versions.len(), 1);
        assert_eq!(publishing.put(NAME, &image(2), false, now).map_err(|r| r.code).unwrap(), 2);
        now += VALIDATION;
        let history = publishing.history(NAME, now).unwrap();
        assert_eq!(history.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1]);
        assert_eq!(history.data_type, IMAGE_DATA_TYPE);
        assert_eq!(code(publishing.label(NAME, 2, "fleetbake-x", now)), "ParameterVersionNotFound");
    }

    #[test]
    fn the_oldest_of_100_versions_labelled_refuses_a_put_and_unlabelled_it_is_dropped() {
        let mut publishing = Publishing::default();
        let mut now = Instant::now();
        put_settled(&mut publishing, 100, &mut now);
        publishing.label(NAME, 1, "prod", now).map_err(|r| r.code).unwrap();
        assert_eq!(code(publishing.put(NAME, &image(100), true, now)), "ParameterMaxVersionLimitExceeded");
        publishing.unlabel(NAME, 1, &["prod".to_string()], now).map_err(|r| r.code).unwrap();
        assert_eq!(publishing.put(NAME, &image(100), true, now).map_err(|r| r.code).unwrap(), 101);
        now += VALIDATION;
        let history = publishing.history(NAME, now).unwrap();
        assert_eq!(history.versions.len(), MAX_VERSIONS);
        assert_eq!((history.versions[0].version, history.versions[99].version), (2, 101));
    }

    #[test]
    fn a_label_moves_and_a_version_holds_at_most_10() {
        let mut publishing = Publishing::default();
        let mut now = Instant::now();
        put_settled(&mut publishing, 2, &mut now);
        publishing.label(NAME, 1, "moving", now).map_err(|r| r.code).unwrap();
        publishing.label(NAME, 2, "moving", now).map_err(|r| r.code).unwrap();
        let history = publishing.history(NAME, now).unwrap();
        assert!(history.versions[0].labels.is_empty());
        assert_eq!(history.versions[1].labels, ["moving"]);
        for n in 0..9 {
            publishing.label(NAME, 2, &format!("label-{n}"), now).map_err(|r| r.code).unwrap();
        }
        assert_eq!(code(publishing.label(NAME, 2, "eleventh", now)), "ParameterVersionLabelLimitExceeded");
    }

    #[test]
    fn a_declared_text_parameter_never_takes_an_image_and_templates_exist_only_where_declared() {
        let declared = [ExistingParameter { name: NAME.into(), data_type: "text".into() }];
        let mut publishing = Publishing::declared(&["web".to_string()], &declared, |name| format!("lt-{name}"));
        let now = Instant::now();
        assert_eq!(code(publishing.put(NAME, &image(1), true, now)), "ValidationException");
        assert_eq!(publishing.history(NAME, now).unwrap().data_type, "text");
        assert_eq!(
            code(publishing.template_version("api", &image(1), "d")),
            "InvalidLaunchTemplateName.NotFoundException"
        );
        let made = publishing.template_version("web", &image(1), "run 1").map_err(|r| r.code).unwrap();
        assert_eq!(made, ("lt-web".to_string(), 2));
        assert_eq!(
            publishing.template_version_made("web", &image(1), "run 1").map_err(|r| r.code).unwrap(),
            Some(made)
        );
        assert_eq!(publishing.template_version_made("web", &image(1), "run 2").map_err(|r| r.code).unwrap(), None);
    }
}
