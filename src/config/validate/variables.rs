//! `[variables]` resolved against `--var`, `--var-file` and `FLEETBAKE_VAR_*`, then `{var.name}` replaced in
//! the raw fields that may use it, before anything else is checked (so a value is checked as if written).

use std::collections::BTreeMap;

use super::super::variables::{self as vars, Declared, Exposure, Given, Origin, VariableInputs, Variables};
use super::schema::{self, FleetFile, TagMap};
use super::spans::{self, KeyPath, Node};
use super::{Checker, ConfigError, WithoutSecrets};

/// The declared variables and their values; problems in the fleet file go to `checker`, the others (a var
/// file's own lines, a `--var`, the environment) to `outside`.
pub(super) fn resolve_variables(
    checker: &mut Checker<'_>,
    raw: &BTreeMap<String, toml::Value>,
    inputs: &VariableInputs,
    outside: &mut Vec<ConfigError>,
) -> Variables {
    let section = KeyPath::root().key("variables");
    let mut declared = BTreeMap::new();
    for (name, value) in raw {
        let at = section.key(name);
        if !vars::is_variable_name(name) {
            checker.problem(
                at.clone(),
                format!("`{name}` is not a variable name: a letter or `_`, then letters, digits, `_`"),
            );
        }
        let declaration = match value {
            toml::Value::Table(table) => {
                let mut declaration = Declared { default: None, sensitive: false };
                for (key, item) in table {
                    match (key.as_str(), item) {
                        ("sensitive", toml::Value::Boolean(sensitive)) => declaration.sensitive = *sensitive,
                        ("default", item) => match scalar(item) {
                            Some(text) => declaration.default = Some(text),
                            None => checker.problem(at.key("default"), "must be a string, a number or a boolean"),
                        },
                        ("description", toml::Value::String(_)) => {}
                        ("sensitive" | "description", _) => checker.problem(
                            at.key(key),
                            "has the wrong type (`sensitive` is a boolean, `description` a string)",
                        ),
                        (other, _) => checker.problem(
                            at.key(other),
                            format!(
                                "unknown key `{other}` of a variable; expected one of {}",
                                schema::VARIABLE_KEYS
                                    .iter()
                                    .map(|key| format!("`{key}`"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ),
                    }
                }
                if declaration.sensitive && declaration.default.is_some() {
                    checker.problem(
                        at.key("default"),
                        format!("a sensitive variable takes its value from outside the fleet file: leave out `default` and set `{}{name}` or `--var-file`", vars::ENV_PREFIX),
                    );
                }
                declaration
            }
            item => match scalar(item) {
                Some(text) => Declared { default: Some(text), sensitive: false },
                None => {
                    checker.problem(
                        at.clone(),
                        "must be a default value (`build = \"dev\"`) or a table (`{ sensitive = true }`)",
                    );
                    Declared { default: None, sensitive: false }
                }
            },
        };
        declared.insert(name.clone(), declaration);
    }

    let mut given = Vec::new();
    let known = |name: &str| declared.contains_key(name);
    let declared_list = || {
        let names: Vec<&str> = declared.keys().map(String::as_str).collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    let fleet_error = |message: String| ConfigError {
        file: checker.file.to_path_buf(),
        line: 0,
        column: 0,
        key: String::new(),
        message,
    };
    for (name, value) in &inputs.environment {
        if known(name) {
            given.push(Given { name: name.clone(), value: value.clone(), origin: Origin::Environment });
        } else {
            outside.push(fleet_error(format!(
                "environment variable `{}{name}`: `{name}` is not declared in `[variables]` (declared: {})",
                vars::ENV_PREFIX,
                declared_list()
            )));
        }
    }
    for file in &inputs.files {
        given.extend(read_var_file(file, &known, &declared_list(), outside));
    }
    for flag in &inputs.flags {
        match VariableInputs::split_flag(flag) {
            Some((name, value)) if known(name) => {
                given.push(Given { name: name.to_string(), value: value.to_string(), origin: Origin::Flag })
            }
            // Never the value: it may be a secret.
            Some((name, _)) => outside.push(fleet_error(format!(
                "`--var {name}=…`: `{name}` is not declared in `[variables]` (declared: {})",
                declared_list()
            ))),
            None => outside.push(fleet_error(format!(
                "`--var {}`: expected `name=value`",
                if known(flag) { flag.as_str() } else { "…" }
            ))),
        }
    }
    let (variables, missing) = vars::choose(&declared, &given);
    for name in missing {
        checker.problem(
            section.key(&name),
            format!(
                "has no value: set `--var {name}=…`, a `--var-file`, or the environment variable `{}{name}`",
                vars::ENV_PREFIX
            ),
        );
    }
    variables
}

/// A string, a number or a boolean, as text.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(text) => Some(text.clone()),
        toml::Value::Integer(number) => Some(number.to_string()),
        toml::Value::Float(number) => Some(number.to_string()),
        toml::Value::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A `--var-file`: a TOML table of `name = value`; each problem at its own `file:line:column`.
fn read_var_file(
    file: &std::path::Path,
    known: &dyn Fn(&str) -> bool,
    declared: &str,
    outside: &mut Vec<ConfigError>,
) -> Vec<Given> {
    let error = |line: usize, column: usize, key: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key: key.to_string(),
        message,
    };
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(why) => {
            outside.push(error(0, 0, "", format!("cannot read the variables file: {why}")));
            return Vec::new();
        }
    };
    let table: BTreeMap<String, toml::Value> = match toml::from_str(&text) {
        Ok(table) => table,
        Err(why) => {
            let (line, column) = spans::line_column(&text, why.span().unwrap_or(0..0).start);
            outside.push(error(line, column, "", why.message().trim().to_string()));
            return Vec::new();
        }
    };
    let tree = Node::parse(&text).expect("text that deserialized is TOML");
    let mut given = Vec::new();
    for (name, value) in table {
        let located = spans::locate(&tree, &KeyPath::root().key(&name));
        let (line, column) = spans::line_column(&text, located.span.start);
        if !known(&name) {
            outside.push(error(
                line,
                column,
                &name,
                format!("`{name}` is not declared in `[variables]` of the fleet file (declared: {declared})"),
            ));
            continue;
        }
        match scalar(&value) {
            Some(value) => given.push(Given { name, value, origin: Origin::File(file.to_path_buf()) }),
            None => outside.push(error(line, column, &name, "must be a string, a number or a boolean".to_string())),
        }
    }
    given
}

/// `text` with every `{var.…}` (up to its `}`, or the end) left out.
fn without_variables(text: &str) -> String {
    let mut kept = String::new();
    let mut rest = text;
    while let Some(open) = rest.find("{var.") {
        kept.push_str(&rest[..open]);
        rest = rest[open..].find('}').map_or("", |close| &rest[open + close + 1..]);
    }
    kept.push_str(rest);
    kept
}

/// The fields that used a sensitive variable, without it, by where they are in the raw file.
#[derive(Default)]
pub(super) struct SecretForms {
    defaults_user_data: Option<String>,
    flavor_user_data: BTreeMap<usize, String>,
    /// (flavor, provisioner, env name) → value.
    provisioner_env: BTreeMap<(usize, usize, String), String>,
}

impl SecretForms {
    /// A flavor's part: its own user data's, else the defaults' if it inherits them.
    pub(super) fn of_flavor(&self, index: usize, raw: &schema::FlavorSection) -> WithoutSecrets {
        let own = raw.user_data.is_some() || raw.user_data_file.is_some();
        WithoutSecrets {
            provisioner_env: self
                .provisioner_env
                .iter()
                .filter(|((flavor, _, _), _)| *flavor == index)
                .map(|((_, provisioner, name), value)| ((*provisioner, name.clone()), value.clone()))
                .collect(),
            user_data: if own { self.flavor_user_data.get(&index).cloned() } else { self.defaults_user_data.clone() },
        }
    }
}

/// Replaces `{var.name}` in every field that may use it; a field that uses one wrongly is a problem at its key.
pub(super) fn substitute_variables(
    checker: &mut Checker<'_>,
    variables: &Variables,
    raw: &mut FleetFile,
) -> SecretForms {
    let mut forms = SecretForms::default();
    let field = |checker: &mut Checker<'_>, path: KeyPath, text: &mut String, exposure: Exposure| -> Option<String> {
        if !vars::mentions_variables(text) {
            return None;
        }
        match vars::render(text, variables, exposure) {
            Ok(rendered) => {
                *text = rendered.text;
                rendered.without_secrets
            }
            Err(message) => {
                checker.problem(path, message);
                // Said once: the field is checked on as if its variables were empty.
                *text = without_variables(text);
                None
            }
        }
    };
    let root = KeyPath::root();
    let fleet = root.key("fleet");
    if let Some(name) = &mut raw.fleet.ami_name {
        field(checker, fleet.key("ami_name"), name, Exposure::Shown);
    }
    if let Some(description) = &mut raw.fleet.ami_description {
        field(checker, fleet.key("ami_description"), description, Exposure::Shown);
    }
    let tags = |checker: &mut Checker<'_>, path: KeyPath, tags: &mut TagMap| {
        for (key, value) in tags.iter_mut() {
            field(checker, path.key(key), value, Exposure::Shown);
        }
    };
    tags(checker, fleet.key("tags"), &mut raw.fleet.tags);
    let defaults = root.key("defaults");
    tags(checker, defaults.key("tags"), &mut raw.defaults.tags);
    tags(checker, defaults.key("run_tags"), &mut raw.defaults.run_tags);
    let subnet = |checker: &mut Checker<'_>,
                  path: KeyPath,
                  id: &mut Option<String>,
                  section: &mut Option<schema::SubnetSection>| {
        if let Some(id) = id {
            field(checker, path.key("subnet_id"), id, Exposure::Shown);
        }
        if let Some(section) = section {
            for (key, map) in [("tags", &mut section.tags), ("ids", &mut section.ids)] {
                for (name, value) in map.iter_mut().flatten() {
                    field(checker, path.key("subnet").key(key).key(name), value, Exposure::Shown);
                }
            }
        }
    };
    subnet(checker, defaults.clone(), &mut raw.defaults.subnet_id, &mut raw.defaults.subnet);
    for (index, flavor) in raw.flavors.iter_mut().enumerate() {
        let path = root.key("flavor").index(index);
        tags(checker, path.key("tags"), &mut flavor.tags);
        tags(checker, path.key("run_tags"), &mut flavor.run_tags);
        subnet(checker, path.clone(), &mut flavor.subnet_id, &mut flavor.subnet);
        for (list, entries) in [("provisioners", &mut flavor.provisioners), ("tests", &mut flavor.tests)] {
            for (number, provisioner) in entries.iter_mut().enumerate() {
                for (name, value) in provisioner.env.iter_mut().flatten() {
                    let at = path.key(list).index(number).key("env").key(name);
                    if let Some(form) = field(checker, at, value, Exposure::Private) {
                        // Tests do not make the image: only provisioners are in the fingerprint.
                        if list == "provisioners" {
                            forms.provisioner_env.insert((index, number, name.clone()), form);
                        }
                    }
                }
            }
        }
        // `on_failure` provisioners run like the others and make nothing: private, not fingerprinted.
        for (number, provisioner) in flavor.on_failure.iter_mut().flatten().enumerate() {
            for (name, value) in provisioner.env.iter_mut().flatten() {
                field(checker, path.key("on_failure").index(number).key("env").key(name), value, Exposure::Private);
            }
        }
        // User data is not private: cloud-init keeps it on the instance's disk (`/var/lib/cloud/instances/…`),
        // so CreateImage puts it in the image, and DescribeInstanceAttribute shows it: no sensitive value.
        if let Some(user_data) = &mut flavor.user_data {
            if let Some(form) = field(checker, path.key("user_data"), user_data, Exposure::Shown) {
                forms.flavor_user_data.insert(index, form);
            }
        }
    }
    for (number, provisioner) in raw.defaults.on_failure.iter_mut().flatten().enumerate() {
        for (name, value) in provisioner.env.iter_mut().flatten() {
            field(checker, defaults.key("on_failure").index(number).key("env").key(name), value, Exposure::Private);
        }
    }
    if let Some(user_data) = &mut raw.defaults.user_data {
        forms.defaults_user_data = field(checker, defaults.key("user_data"), user_data, Exposure::Shown);
    }
    if let Some(bastion) = &mut raw.ssh.bastion {
        let at = root.key("ssh").key("bastion");
        field(checker, at.key("host"), &mut bastion.host, Exposure::Shown);
        field(checker, at.key("user"), &mut bastion.user, Exposure::Shown);
        field(checker, at.key("private_key_file"), &mut bastion.private_key_file, Exposure::Shown);
        for (key, value) in [("known_hosts", &mut bastion.known_hosts), ("host_key", &mut bastion.host_key)] {
            if let Some(value) = value {
                field(checker, at.key(key), value, Exposure::Shown);
            }
        }
    }
    if let Some(publish) = &mut raw.publish {
        let at = root.key("publish");
        for (key, value) in
            [("ssm_parameter", &mut publish.ssm_parameter), ("launch_template", &mut publish.launch_template)]
        {
            if let Some(value) = value {
                field(checker, at.key(key), value, Exposure::Shown);
            }
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{parse_with, SubnetChoice, VariableInputs};

    const FLEET: &str = r#"
[fleet]
name = "f"

[variables]
env = "prod"
subnet = "subnet-0abc"
bastion = "bastion.prod.example.com"
key = "/nonexistent/key"
token = { sensitive = true }

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"
subnet_id = "{var.subnet}"
run_tags = { Env = "{var.env}" }

[[flavor]]
name = "base"
source_ami = { id = "ami-12345678" }
tests = [{ type = "shell", inline = ["true"], env = { T = "{var.token}" } }]

[regions]
us-west-2 = []

[ssh]
bastion = { host = "{var.bastion}", user = "jump", private_key_file = "{var.key}", host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl" }

[publish]
ssm_parameter = "/images/{var.env}/{flavor}"
launch_template = "{flavor}-{var.env}"
"#;

    fn inputs(flags: &[&str]) -> VariableInputs {
        VariableInputs { flags: flags.iter().map(|flag| flag.to_string()).collect(), ..Default::default() }
    }

    /// Every key `accepted_keys` (and so the docs test) lists for a variable is one validation takes.
    #[test]
    fn every_listed_variable_key_is_taken() {
        for key in crate::config::schema::VARIABLE_KEYS {
            let value = match *key {
                "default" | "description" => "\"x\"",
                "sensitive" => "false",
                other => panic!("teach this test a value for the variable key `{other}`"),
            };
            let text = FLEET.replace("env = \"prod\"", &format!("env = {{ {key} = {value} }}"));
            let outcome = parse_with(Path::new("/f/fleet.toml"), &text, &inputs(&["token=t0k", "env=stage"]));
            if let Err(errors) = outcome {
                assert!(!errors.to_string().contains("unknown key"), "`{key}`: {errors}");
            }
        }
        let text = FLEET.replace("env = \"prod\"", "env = { defualt = \"prod\" }");
        let errors = parse_with(Path::new("/f/fleet.toml"), &text, &inputs(&["token=t0k"])).unwrap_err().to_string();
        assert!(
            errors
                .contains("unknown key `defualt` of a variable; expected one of `default`, `sensitive`, `description`"),
            "{errors}"
        );
    }

    #[test]
    fn subnet_bastion_publish_run_tags_and_test_env_take_variables() {
        let key = tempfile::NamedTempFile::new().unwrap();
        let key_flag = format!("key={}", key.path().display());
        let fleet = parse_with(Path::new("/f/fleet.toml"), FLEET, &inputs(&["token=t0k", "env=stage", &key_flag]))
            .unwrap_or_else(|errors| panic!("{errors}"));
        let flavor = &fleet.flavors[0];
        assert_eq!(flavor.subnet, Some(SubnetChoice::Id("subnet-0abc".into())));
        assert_eq!(flavor.run_tags["Env"], "stage");
        let crate::config::Provisioner::Shell { env, .. } = &flavor.tests[0].provisioner else { panic!() };
        assert_eq!(env["T"], "t0k");
        let bastion = fleet.ssh.bastion.as_ref().unwrap();
        assert_eq!(bastion.host, "bastion.prod.example.com");
        assert_eq!(bastion.private_key_file, key.path());
        let publish = fleet.publish.as_ref().unwrap();
        assert_eq!(publish.ssm_parameter.as_deref(), Some("/images/stage/{flavor}"));
        assert_eq!(publish.launch_template.as_deref(), Some("{flavor}-stage"));
        assert!(!format!("{:?}", fleet.variables).contains("t0k"), "{:?}", fleet.variables);
    }

    #[test]
    fn a_sensitive_variable_in_a_subnet_bastion_or_publish_field_is_refused_at_its_key() {
        for (from, key) in [
            ("subnet_id = \"{var.subnet}\"", "defaults.subnet_id"),
            ("host = \"{var.bastion}\"", "ssh.bastion.host"),
            ("ssm_parameter = \"/images/{var.env}/{flavor}\"", "publish.ssm_parameter"),
            ("run_tags = { Env = \"{var.env}\" }", "defaults.run_tags.Env"),
        ] {
            let to = from
                .replace("{var.subnet}", "{var.token}")
                .replace("{var.bastion}", "{var.token}")
                .replace("{var.env}", "{var.token}");
            let text = FLEET.replace(from, &to);
            let errors = parse_with(Path::new("/f/fleet.toml"), &text, &inputs(&["token=t0k"])).unwrap_err();
            let error = errors.0.iter().find(|error| error.key == key).unwrap_or_else(|| panic!("{key}: {errors}"));
            assert!(error.message.contains("`{var.token}` is sensitive"), "{key}: {error}");
            assert!(error.line > 0, "{error}");
            assert!(!errors.to_string().contains("t0k"), "{errors}");
        }
    }
}
