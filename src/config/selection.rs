//! `--only` and `--except`: which builds of the fleet a run makes. A pattern is `flavor` or
//! `flavor/build-region`, each part an EC2-style glob (`ubuntu-*`, `al2023-base/eu-*`). A selected build
//! keeps all of its copies.

use std::fmt;

use crate::config::{FlavorName, Region};
use crate::util::glob::glob_matches;

/// One `--only` or `--except` pattern.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobPattern {
    flavor: String,
    region: Option<String>,
}

impl JobPattern {
    pub fn parse(text: &str) -> Result<JobPattern, String> {
        let (flavor, region) = match text.split_once('/') {
            Some((flavor, region)) => (flavor, Some(region)),
            None => (text, None),
        };
        let part_ok = |part: &str| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*' | '?'))
        };
        if !part_ok(flavor) || region.is_some_and(|region| !part_ok(region)) {
            return Err(format!(
                "`{text}` is not a pattern: `flavor` or `flavor/build-region`, with `*` and `?` globs"
            ));
        }
        Ok(JobPattern { flavor: flavor.to_string(), region: region.map(str::to_string) })
    }

    pub fn matches(&self, flavor: &FlavorName, region: &Region) -> bool {
        glob_matches(&self.flavor, flavor.as_str())
            && self.region.as_ref().is_none_or(|pattern| glob_matches(pattern, region.as_str()))
    }
}

impl fmt::Display for JobPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.region {
            Some(region) => write!(f, "{}/{region}", self.flavor),
            None => f.write_str(&self.flavor),
        }
    }
}

impl TryFrom<String> for JobPattern {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        JobPattern::parse(&text)
    }
}

impl From<JobPattern> for String {
    fn from(pattern: JobPattern) -> String {
        pattern.to_string()
    }
}

/// The builds a run makes out of those the fleet file's `[matrix]` selects.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<JobPattern>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<JobPattern>,
}

impl Selection {
    /// No `--only`, no `--except`: every build.
    pub fn is_everything(&self) -> bool {
        self.only.is_empty() && self.except.is_empty()
    }

    pub fn admits(&self, flavor: &FlavorName, region: &Region) -> bool {
        (self.only.is_empty() || self.only.iter().any(|pattern| pattern.matches(flavor, region)))
            && !self.except.iter().any(|pattern| pattern.matches(flavor, region))
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        parts.extend(self.only.iter().map(|pattern| format!("--only {pattern}")));
        parts.extend(self.except.iter().map(|pattern| format!("--except {pattern}")));
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_select_flavors_and_build_regions_by_glob() {
        let pattern = |text: &str| JobPattern::parse(text).unwrap();
        let (ubuntu, al2023) = (FlavorName::new("ubuntu-22.04"), FlavorName::new("al2023-base"));
        let (west, central) = (Region::new("us-west-2"), Region::new("eu-central-1"));
        let selection = Selection {
            only: vec![pattern("ubuntu-*"), pattern("al2023-base")],
            except: vec![pattern("al2023-base/eu-*")],
        };
        assert!(selection.admits(&ubuntu, &central));
        assert!(selection.admits(&al2023, &west));
        assert!(!selection.admits(&al2023, &central));
        assert!(!Selection { only: vec![pattern("debian")], except: vec![] }.admits(&ubuntu, &west));
        assert!(JobPattern::parse("a/b/c").is_err());
        assert!(JobPattern::parse("").is_err());
        assert!(JobPattern::parse("ubuntu/").is_err());
        assert_eq!(selection.to_string(), "--only ubuntu-* --only al2023-base --except al2023-base/eu-*");
    }
}
