//! `[variables]`: values a fleet file takes from outside it, and `{var.name}` in the fields that may use them.
//!
//! A value comes from, in this order of precedence: `--var name=value` (a later flag wins), `--var-file
//! FILE` (a later file wins), the environment variable `FLEETBAKE_VAR_<name>`, then the variable's `default`.
//! A variable declared `sensitive = true` has no default in the file, may be used only where its value is
//! neither shown nor stored by EC2 (provisioner and test `env`, `user_data`; see [`Exposure`]), is left out
//! of the fingerprint (its `{var.name}` is hashed instead of its value), and its value never reaches a
//! `Debug` output: [`Variable`]'s shows `<sensitive>`.
//!
//! Everything here is pure: [`VariableInputs`] is filled by the command line from its flags and the process
//! environment; reading a `--var-file` is the only I/O, and `validate` does it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// The prefix of the environment variables that set variables: `FLEETBAKE_VAR_build=42`.
pub const ENV_PREFIX: &str = "FLEETBAKE_VAR_";

/// What the command line and the environment give the fleet file's `[variables]`. Its `Debug` shows names
/// only: a flag's value can be a secret.
#[derive(Clone, Default)]
pub struct VariableInputs {
    /// `--var name=value`, as typed, in order.
    pub flags: Vec<String>,
    /// `--var-file FILE`, in order.
    pub files: Vec<PathBuf>,
    /// `FLEETBAKE_VAR_<name>`: (name without the prefix, value).
    pub environment: Vec<(String, String)>,
}

impl VariableInputs {
    /// `flags` and `files` as given, and every `FLEETBAKE_VAR_*` of this process's environment.
    pub fn new(flags: Vec<String>, files: Vec<PathBuf>) -> Self {
        let environment = std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                let stripped = name.strip_prefix(ENV_PREFIX)?.to_string();
                Some((stripped, value.to_string_lossy().into_owned()))
            })
            .collect();
        VariableInputs { flags, files, environment }
    }

    /// The name a `--var` flag sets (what is before its `=`), and its value.
    pub fn split_flag(flag: &str) -> Option<(&str, &str)> {
        flag.split_once('=')
    }
}

impl fmt::Debug for VariableInputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.flags.iter().map(|flag| flag.split('=').next().unwrap_or_default()).collect();
        let environment: Vec<&str> = self.environment.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("VariableInputs")
            .field("flags", &names)
            .field("files", &self.files)
            .field("environment", &environment)
            .finish()
    }
}

/// Where a variable's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Flag,
    File(PathBuf),
    Environment,
    Default,
}

/// One resolved variable.
#[derive(Clone, PartialEq, Eq)]
pub struct Variable {
    value: String,
    pub sensitive: bool,
    pub origin: Origin,
}

impl Variable {
    pub fn new(value: String, sensitive: bool, origin: Origin) -> Self {
        Variable { value, sensitive, origin }
    }

    /// The value itself: only for where it is used (an env file, user data), never for a log.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = if self.sensitive { "<sensitive>" } else { self.value.as_str() };
        write!(f, "{value:?} ({:?})", self.origin)
    }
}

/// Every variable of the fleet, resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Variables(BTreeMap<String, Variable>);

/// Per variable, a digest of its value salted with the run id: what the journal records, so `--resume` can
/// refuse other values without the journal holding them (a sensitive one included).
pub type VariableDigests = BTreeMap<String, String>;

impl Variables {
    pub fn new(variables: BTreeMap<String, Variable>) -> Self {
        Variables(variables)
    }

    pub fn get(&self, name: &str) -> Option<&Variable> {
        self.0.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values of the sensitive variables (non-empty ones), for a reporter to mask.
    pub fn sensitive_values(&self) -> Vec<&str> {
        self.0
            .values()
            .filter(|variable| variable.sensitive && !variable.value.is_empty())
            .map(Variable::value)
            .collect()
    }

    /// `bytes` with every sensitive value in it replaced by `<sensitive>` (a script that prints its token,
    /// as Packer masks sensitive variables in output); `None` when none is in it. Longer values first, so one
    /// that contains another is masked whole.
    pub fn mask(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        // A multi-line value (a PEM key, JSON) never stands whole on one output line: each of its lines of some
        // length is masked too.
        let values = self.sensitive_values();
        let mut secrets: Vec<&[u8]> = values.iter().map(|value| value.as_bytes()).collect();
        for value in &values {
            secrets.extend(value.lines().map(str::trim).filter(|line| line.len() >= 8).map(str::as_bytes));
        }
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        let contains = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|window| window == needle);
        if !secrets.iter().any(|secret| contains(bytes, secret)) {
            return None;
        }
        let mut masked = bytes.to_vec();
        for secret in secrets {
            let mut out = Vec::with_capacity(masked.len());
            let mut at = 0;
            while at < masked.len() {
                if masked[at..].starts_with(secret) {
                    out.extend_from_slice(b"<sensitive>");
                    at += secret.len();
                } else {
                    out.push(masked[at]);
                    at += 1;
                }
            }
            masked = out;
        }
        Some(masked)
    }

    /// SHA-256 of `fleetbake-variable`, the run id, the name and the value; salted by the run, so a digest
    /// of a short secret cannot be looked up in a table made once for every journal.
    pub fn digests(&self, run_id: &str) -> VariableDigests {
        self.0
            .iter()
            .map(|(name, variable)| {
                let mut hash = Sha256::new();
                for part in ["fleetbake-variable-1", run_id, name, &variable.value] {
                    hash.update((part.len() as u64).to_le_bytes());
                    hash.update(part.as_bytes());
                }
                let digest = hash.finalize().iter().map(|byte| format!("{byte:02x}")).collect::<String>();
                (name.clone(), digest)
            })
            .collect()
    }
}

/// Whether a field's value is shown or stored where others read it: then a sensitive variable is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposure {
    /// AMI names, tags, run tags, subnet and bastion fields, publish targets: in EC2's and SSM's answers, the
    /// manifest, the journal and the output; and user data (cloud-init keeps it on the instance's disk, so
    /// CreateImage puts it in the image, and DescribeInstanceAttribute shows it).
    Shown,
    /// Provisioner and test `env`: an owner-only env file on the instance, removed when the command ends.
    Private,
}

/// A field with its `{var.name}`s replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// The text with each sensitive variable left as `{var.name}`: what the fingerprint hashes. `None` when
    /// it used none (it is then `text`).
    pub without_secrets: Option<String>,
}

/// Whether `text` has a `{var.` in it at all.
pub fn mentions_variables(text: &str) -> bool {
    text.contains("{var.")
}

pub fn is_variable_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replaces every `{var.name}` in `text`; other braces stay as they are. An error names the first problem.
pub fn render(text: &str, variables: &Variables, exposure: Exposure) -> Result<Rendered, String> {
    let mut rendered = String::with_capacity(text.len());
    let mut without_secrets = String::with_capacity(text.len());
    let mut used_secret = false;
    let mut rest = text;
    while let Some(open) = rest.find("{var.") {
        rendered.push_str(&rest[..open]);
        without_secrets.push_str(&rest[..open]);
        let after = &rest[open + "{var.".len()..];
        let name = match after.find('}') {
            Some(close) if is_variable_name(&after[..close]) => &after[..close],
            _ => {
                return Err(format!(
                    "`{{var.` must be followed by a variable name and `}}`, as in `{{var.build}}`, in `{text}`"
                ))
            }
        };
        let variable = variables.get(name).ok_or_else(|| {
            let declared: Vec<&str> = variables.names().collect();
            let declared = if declared.is_empty() { "none".to_string() } else { declared.join(", ") };
            format!("`{{var.{name}}}` is not declared in `[variables]` (declared: {declared})")
        })?;
        if variable.sensitive && exposure == Exposure::Shown {
            return Err(format!(
                "`{{var.{name}}}` is sensitive: only provisioner and test `env` may use it (here its value would be shown or stored)"
            ));
        }
        rendered.push_str(variable.value());
        if variable.sensitive {
            used_secret = true;
            without_secrets.push_str(&format!("{{var.{name}}}"));
        } else {
            without_secrets.push_str(variable.value());
        }
        rest = &after[name.len() + 1..];
    }
    rendered.push_str(rest);
    without_secrets.push_str(rest);
    Ok(Rendered { text: rendered, without_secrets: used_secret.then_some(without_secrets) })
}

/// A variable as `[variables]` declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Declared {
    pub default: Option<String>,
    pub sensitive: bool,
}

/// One value given from outside the file.
#[derive(Clone, Debug)]
pub struct Given {
    pub name: String,
    pub value: String,
    pub origin: Origin,
}

/// The value of each declared variable, by precedence: flags over files over the environment over the
/// default. `given` holds everything from outside in any order; unknown names are the caller's to refuse.
/// Returns the variables and the names that have no value (they are in the variables as empty, so a field
/// that uses one is not also said to use an undeclared variable).
pub fn choose(declared: &BTreeMap<String, Declared>, given: &[Given]) -> (Variables, Vec<String>) {
    let rank = |origin: &Origin| match origin {
        Origin::Flag => 3,
        Origin::File(_) => 2,
        Origin::Environment => 1,
        Origin::Default => 0,
    };
    let mut chosen = BTreeMap::new();
    let mut missing = Vec::new();
    for (name, declaration) in declared {
        // Among equals the later wins (`max_by_key` keeps the last maximum).
        let best = given.iter().filter(|value| &value.name == name).max_by_key(|value| rank(&value.origin));
        let variable = match (best, &declaration.default) {
            (Some(value), _) => Variable::new(value.value.clone(), declaration.sensitive, value.origin.clone()),
            (None, Some(default)) => Variable::new(default.clone(), declaration.sensitive, Origin::Default),
            (None, None) => {
                missing.push(name.clone());
                Variable::new(String::new(), declaration.sensitive, Origin::Default)
            }
        };
        chosen.insert(name.clone(), variable);
    }
    (Variables(chosen), missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared() -> BTreeMap<String, Declared> {
        BTreeMap::from([
            ("build".to_string(), Declared { default: Some("dev".into()), sensitive: false }),
            ("token".to_string(), Declared { default: None, sensitive: true }),
        ])
    }

    fn given(name: &str, value: &str, origin: Origin) -> Given {
        Given { name: name.into(), value: value.into(), origin }
    }

    #[test]
    fn a_flag_wins_over_a_file_over_the_environment_over_the_default() {
        let file = Origin::File(PathBuf::from("vars.toml"));
        let (variables, missing) = choose(&declared(), &[]);
        assert_eq!(variables.get("build").unwrap().value(), "dev");
        assert_eq!(missing, vec!["token"]);
        let mut values = vec![given("build", "env", Origin::Environment), given("token", "t-env", Origin::Environment)];
        let (variables, missing) = choose(&declared(), &values);
        assert!(missing.is_empty());
        assert_eq!(variables.get("build").unwrap().value(), "env");
        values.push(given("build", "file", file.clone()));
        values.push(given("build", "later-file", Origin::File(PathBuf::from("later.toml"))));
        assert_eq!(choose(&declared(), &values).0.get("build").unwrap().value(), "later-file");
        // Order does not matter between kinds: a flag given first still wins.
        values.insert(0, given("build", "flag", Origin::Flag));
        let (variables, _) = choose(&declared(), &values);
        assert_eq!(variables.get("build").unwrap().value(), "flag");
        assert_eq!(variables.get("build").unwrap().origin, Origin::Flag);
        assert_eq!(variables.get("token").unwrap().value(), "t-env");
    }

    #[test]
    fn renders_variables_and_keeps_secrets_out_of_the_fingerprint_form() {
        let (variables, _) = choose(&declared(), &[given("token", "s3cr3t", Origin::Environment)]);
        let shown = render("app-{var.build}-{flavor}", &variables, Exposure::Shown).unwrap();
        assert_eq!(shown, Rendered { text: "app-dev-{flavor}".into(), without_secrets: None });
        let private = render("TOKEN={var.token} B={var.build} ${HOME}", &variables, Exposure::Private).unwrap();
        assert_eq!(private.text, "TOKEN=s3cr3t B=dev ${HOME}");
        assert_eq!(private.without_secrets.as_deref(), Some("TOKEN={var.token} B=dev ${HOME}"));
        assert!(render("{var.token}", &variables, Exposure::Shown).unwrap_err().contains("is sensitive"));
        let undefined = render("{var.nope}", &variables, Exposure::Private).unwrap_err();
        assert!(
            undefined.contains("`{var.nope}` is not declared in `[variables]` (declared: build, token)"),
            "{undefined}"
        );
        assert!(render("{var.}", &variables, Exposure::Private).unwrap_err().contains("must be followed"));
        assert!(render("{var.build", &variables, Exposure::Private).is_err());
    }

    #[test]
    fn debug_and_digests_never_show_a_sensitive_value() {
        let (variables, _) = choose(&declared(), &[given("token", "s3cr3t", Origin::Flag)]);
        assert!(!format!("{variables:?}").contains("s3cr3t"));
        let inputs = VariableInputs { flags: vec!["token=s3cr3t".into()], ..VariableInputs::default() };
        assert!(!format!("{inputs:?}").contains("s3cr3t"));
        let digests = variables.digests("run-1");
        assert!(!digests["token"].contains("s3cr3t"));
        assert_ne!(digests, variables.digests("run-2"), "salted per run");
        assert_eq!(variables.mask(b"login s3cr3t ok s3cr3t").unwrap(), b"login <sensitive> ok <sensitive>");
        assert_eq!(variables.mask(b"build dev"), None, "a plain value is not masked");
        let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n-----END KEY-----";
        let (pem, _) = choose(&declared(), &[given("token", key, Origin::Flag)]);
        let line = pem.mask(b"cat: MIIEvQIBADANBgkqhkiG9w0B").expect("a line of a multi-line value is masked");
        assert_eq!(line, b"cat: <sensitive>");
        let (rotated, _) = choose(&declared(), &[given("token", "other", Origin::Flag)]);
        assert_ne!(digests["token"], rotated.digests("run-1")["token"]);
        assert_eq!(digests["build"], rotated.digests("run-1")["build"]);
    }
}
