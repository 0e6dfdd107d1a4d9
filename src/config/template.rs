//! The `ami_name` template: literal text and `{placeholder}`s, checked once and rendered per image.

use std::fmt;

/// A value that `ami_name` can interpolate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholder {
    Flavor,
    BuildRegion,
    Date,
    Timestamp,
    RunId,
}

impl Placeholder {
    pub const ALL: [Placeholder; 5] =
        [Placeholder::Flavor, Placeholder::BuildRegion, Placeholder::Date, Placeholder::Timestamp, Placeholder::RunId];

    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Flavor => "flavor",
            Placeholder::BuildRegion => "build_region",
            Placeholder::Date => "date",
            Placeholder::Timestamp => "timestamp",
            Placeholder::RunId => "run_id",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|placeholder| placeholder.name() == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Literal(String),
    Value(Placeholder),
}

/// A parsed `ami_name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameTemplate {
    source: String,
    pieces: Vec<Piece>,
}

/// What a template is rendered with.
pub struct NameContext<'a> {
    pub flavor: &'a str,
    pub build_region: &'a str,
    pub date: &'a str,
    pub timestamp: &'a str,
    pub run_id: &'a str,
}

/// Characters EC2 accepts in an AMI name.
pub fn is_ami_name_char(character: char) -> bool {
    character.is_ascii_alphanumeric() || "()[] ./-'@_".contains(character)
}

impl NameTemplate {
    pub fn parse(source: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = source;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                Some(position) if rest[position..].starts_with('}') => {
                    return Err(format!("unmatched `}}` in `{source}`"));
                }
                Some(open) => {
                    if open > 0 {
                        pieces.push(Piece::Literal(rest[..open].to_string()));
                    }
                    let after = &rest[open + 1..];
                    // Packer's `{{timestamp}}`, `{{ isotime }}`, `{{user `x`}}`: said whole, with fleetbake's way.
                    if let Some(function) = after.strip_prefix('{') {
                        let inside = function.find("}}").map_or(function, |close| &function[..close]);
                        return Err(super::packer::template_function(inside));
                    }
                    let close = after.find('}').ok_or_else(|| format!("unclosed `{{` in `{source}`"))?;
                    let name = &after[..close];
                    let placeholder = Placeholder::from_name(name).ok_or_else(|| {
                        let known: Vec<String> = Placeholder::ALL.iter().map(|p| format!("{{{}}}", p.name())).collect();
                        format!("unknown placeholder `{{{name}}}`; known: {}", known.join(" "))
                    })?;
                    pieces.push(Piece::Value(placeholder));
                    rest = &after[close + 1..];
                }
                None => {
                    pieces.push(Piece::Literal(rest.to_string()));
                    rest = "";
                }
            }
        }
        for piece in &pieces {
            if let Piece::Literal(text) = piece {
                if let Some(bad) = text.chars().find(|c| !is_ami_name_char(*c)) {
                    return Err(format!(
                        "`{bad}` is not allowed in an AMI name (letters, digits and ()[] ./-'@_ only)"
                    ));
                }
            }
        }
        Ok(NameTemplate { source: source.to_string(), pieces })
    }

    pub fn uses(&self, placeholder: Placeholder) -> bool {
        self.pieces.contains(&Piece::Value(placeholder))
    }

    pub fn render(&self, context: &NameContext<'_>) -> String {
        let mut name = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(text) => name.push_str(text),
                Piece::Value(placeholder) => name.push_str(match placeholder {
                    Placeholder::Flavor => context.flavor,
                    Placeholder::BuildRegion => context.build_region,
                    Placeholder::Date => context.date,
                    Placeholder::Timestamp => context.timestamp,
                    Placeholder::RunId => context.run_id,
                }),
            }
        }
        name
    }
}

impl fmt::Display for NameTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_placeholder() {
        let template = NameTemplate::parse("{flavor}-{build_region}-{date}-{timestamp}-{run_id}").unwrap();
        let context = NameContext {
            flavor: "f",
            build_region: "us-west-2",
            date: "2026-11-26",
            timestamp: "20261126T143000Z",
            run_id: "r1",
        };
        assert_eq!(template.render(&context), "f-us-west-2-2026-11-26-20261126T143000Z-r1");
        assert!(template.uses(Placeholder::BuildRegion));
    }

    #[test]
    fn rejects_unknown_and_unbalanced_placeholders() {
        assert!(NameTemplate::parse("{flavour}").unwrap_err().contains("unknown placeholder `{flavour}`"));
        assert!(NameTemplate::parse("{flavor").unwrap_err().contains("unclosed"));
        assert!(NameTemplate::parse("flavor}").unwrap_err().contains("unmatched"));
        assert!(NameTemplate::parse("a:b").unwrap_err().contains("`:` is not allowed"));
    }

    #[test]
    fn packers_double_braces_are_named_whole_with_fleetbakes_placeholder() {
        let error = NameTemplate::parse("base-{{timestamp}}").unwrap_err();
        assert!(error.starts_with("`{{timestamp}}` is Packer's template syntax"), "{error}");
        assert!(error.contains("use `{timestamp}`"), "{error}");
        let spaced = NameTemplate::parse("base-{{ timestamp }}-x").unwrap_err();
        assert!(spaced.starts_with("`{{ timestamp }}` is Packer's"), "{spaced}");
        let user = NameTemplate::parse("base-{{user `build`}}-{timestamp}").unwrap_err();
        assert!(user.contains("`{var.build}`"), "{user}");
    }
}
