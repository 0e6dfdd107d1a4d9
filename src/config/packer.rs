//! Packer's spelling, recognized: the amazon-ebs builder's (and its shell provisioner's) keys with what a fleet
//! file says instead, and Packer's `{{ … }}` template functions with fleetbake's placeholders, so that an
//! error about a key or a name template written the Packer way says the fleetbake way.
//!
//! Sources: the amazon-ebs builder's configuration reference (hashicorp/packer-plugin-amazon,
//! `docs/builders/ebs.mdx` and the `common` access, AMI and run configs it includes), Packer's shell
//! provisioner (`environment_vars`) and its template functions (`timestamp`, `isotime`, `uuid`, `user`, `env`).

use crate::config::spans::{KeyPath, Segment};

/// A Packer key and what a fleet file writes instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackerKey {
    /// amazon-ebs's (or the shell provisioner's) name.
    pub packer: &'static str,
    /// The fleetbake key (with its table) or way that does the same, or why there is none.
    pub fleetbake: &'static str,
}

/// Packer's names → fleetbake's. A name fleetbake shares (`ami_name`, `instance_type`, `ssh_username`, …) is
/// here for where it belongs, when it is written in a table that does not take it.
pub const PACKER_KEYS: &[PackerKey] = &[
    PackerKey {
        packer: "ami_name",
        fleetbake: "`[fleet] ami_name`, one template for every image (`{flavor}`, `{build_region}`, `{timestamp}`, `{date}`, `{run_id}`)",
    },
    PackerKey { packer: "ami_description", fleetbake: "`[fleet] ami_description`" },
    PackerKey {
        packer: "source_ami",
        fleetbake: "`source_ami = { id = \"ami-…\" }` in each `[[flavor]]`",
    },
    PackerKey {
        packer: "source_ami_filter",
        fleetbake: "`source_ami = { owners = [\"…\"], name = \"pattern-*\" }` in each `[[flavor]]` (the newest match is taken)",
    },
    PackerKey {
        packer: "most_recent",
        fleetbake: "nothing: a `[[flavor]]`'s `source_ami = { owners, name }` always takes the newest image it matches",
    },
    PackerKey { packer: "ami_users", fleetbake: "`[sharing] accounts`" },
    PackerKey { packer: "ami_org_arns", fleetbake: "`[sharing] organizations`" },
    PackerKey { packer: "ami_ou_arns", fleetbake: "`[sharing] organizational_units`" },
    PackerKey { packer: "ami_groups", fleetbake: "`[sharing] public = true` (for `[\"all\"]`)" },
    PackerKey { packer: "snapshot_users", fleetbake: "`[sharing] snapshot_accounts`" },
    PackerKey {
        packer: "ami_regions",
        fleetbake: "the `[regions]` table: `build-region = [\"copy-region\", …]` copies each image built there",
    },
    PackerKey {
        packer: "encrypt_boot",
        fleetbake: "`[encryption] kms_keys = { \"*\" = \"alias/…\" }` (a key per region encrypts every image)",
    },
    PackerKey { packer: "kms_key_id", fleetbake: "`[encryption] kms_keys = { region = \"key\" }`" },
    PackerKey { packer: "region_kms_key_ids", fleetbake: "`[encryption] kms_keys = { region = \"key\" }`" },
    PackerKey { packer: "deprecate_at", fleetbake: "`[fleet] deprecate_after` (a duration, as `90d`)" },
    PackerKey { packer: "region", fleetbake: "the `[regions]` table: each key is a build region" },
    PackerKey { packer: "profile", fleetbake: "`[aws] profile`" },
    PackerKey { packer: "assume_role", fleetbake: "`[aws] role_arn` (and `external_id`, `session_name`, `duration`)" },
    PackerKey { packer: "instance_type", fleetbake: "`instance_type` in `[defaults]` or a `[[flavor]]`" },
    PackerKey { packer: "spot_instance_types", fleetbake: "`instance_types` with `market = \"spot\"` in `[defaults]` or a `[[flavor]]`" },
    PackerKey { packer: "spot_price", fleetbake: "`market = \"spot\"` in `[defaults]` or a `[[flavor]]` (EC2's spot price, capped at on-demand)" },
    PackerKey { packer: "ssh_username", fleetbake: "`ssh_username` in `[defaults]` or a `[[flavor]]`" },
    PackerKey {
        packer: "ssh_interface",
        fleetbake: "`[ssh] interface` (or a `[[flavor]]`'s `interface`): `public_ip`, `private_ip`, `public_dns`, `private_dns`, `session_manager`",
    },
    PackerKey { packer: "ssh_timeout", fleetbake: "`[ssh] timeout`" },
    PackerKey { packer: "ssh_port", fleetbake: "`[ssh] port`" },
    PackerKey { packer: "ssh_host", fleetbake: "`[ssh] host`" },
    PackerKey { packer: "ssh_bastion_host", fleetbake: "`[ssh] bastion = { host = \"…\", user = \"…\", private_key_file = \"…\", … }`" },
    PackerKey { packer: "subnet_id", fleetbake: "`subnet_id` in `[defaults]` or a `[[flavor]]`" },
    PackerKey { packer: "subnet_filter", fleetbake: "`subnet = { tags = { … } }` in `[defaults]` or a `[[flavor]]`" },
    PackerKey { packer: "associate_public_ip_address", fleetbake: "`associate_public_ip` in `[defaults]` or a `[[flavor]]`" },
    PackerKey { packer: "iam_instance_profile", fleetbake: "`iam_instance_profile` in `[defaults]` or a `[[flavor]]`" },
    PackerKey { packer: "user_data", fleetbake: "`user_data` in `[defaults]` or a `[[flavor]]`" },
    PackerKey { packer: "user_data_file", fleetbake: "`user_data_file` in `[defaults]` or a `[[flavor]]`" },
    PackerKey { packer: "run_tags", fleetbake: "`run_tags` in `[defaults]` or a `[[flavor]]`" },
    PackerKey { packer: "metadata_options", fleetbake: "`metadata = { http_tokens = \"required\", hop_limit = 2 }` in `[defaults]` or a `[[flavor]]`" },
    PackerKey {
        packer: "launch_block_device_mappings",
        fleetbake: "`root_volume = { size_gb, type, iops, throughput }` in `[defaults]` or a `[[flavor]]`",
    },
    PackerKey {
        packer: "environment_vars",
        fleetbake: "a provisioner's `env = { NAME = \"value\" }` (values never on a command line)",
    },
    PackerKey {
        packer: "security_group_id",
        fleetbake: "nothing: every build makes its own temporary security group (`[ssh] source_cidrs` says who it lets in)",
    },
    PackerKey {
        packer: "security_group_ids",
        fleetbake: "nothing: every build makes its own temporary security group (`[ssh] source_cidrs` says who it lets in)",
    },
    PackerKey { packer: "force_deregister", fleetbake: "nothing: names are unique per run; `fleetbake gc` with `[retention]` retires old images" },
];

/// What a fleet file writes instead of Packer's `key`, if `key` is one of Packer's.
pub fn instead_of(key: &str) -> Option<&'static PackerKey> {
    PACKER_KEYS.iter().find(|entry| entry.packer == key)
}

/// Packer's keys that a table other than the one [`PACKER_KEYS`] names has its own key for: the table's key
/// path (indices left out), how the table is called, Packer's key, the table's own key. In `[ssh] bastion`,
/// Packer's `ssh_port` is the bastion's `port`, not `[ssh] port` (the instance's); a `[[distribution]]` has
/// its own `regions`, `kms_keys` and `role_arn`.
const OWN_KEYS: &[(&str, &str, &str, &str)] = &[
    ("ssh.bastion", "`[ssh] bastion`", "ssh_host", "host"),
    ("ssh.bastion", "`[ssh] bastion`", "ssh_bastion_host", "host"),
    ("ssh.bastion", "`[ssh] bastion`", "ssh_port", "port"),
    ("ssh.bastion", "`[ssh] bastion`", "ssh_bastion_port", "port"),
    ("ssh.bastion", "`[ssh] bastion`", "ssh_username", "user"),
    ("ssh.bastion", "`[ssh] bastion`", "ssh_bastion_username", "user"),
    ("ssh.bastion", "`[ssh] bastion`", "ssh_private_key_file", "private_key_file"),
    ("ssh.bastion", "`[ssh] bastion`", "ssh_bastion_private_key_file", "private_key_file"),
    ("distribution", "a `[[distribution]]`", "region", "regions"),
    ("distribution", "a `[[distribution]]`", "ami_regions", "regions"),
    ("distribution", "a `[[distribution]]`", "kms_key_id", "kms_keys"),
    ("distribution", "a `[[distribution]]`", "region_kms_key_ids", "kms_keys"),
    ("distribution", "a `[[distribution]]`", "encrypt_boot", "kms_keys"),
    ("distribution", "a `[[distribution]]`", "assume_role", "role_arn"),
];

/// A TOML error's message, told in fleetbake's words when it is serde's "unknown field" about one of Packer's
/// keys: the fleetbake key goes first, serde's list of the table's keys after. `path` is the error's key path
/// (`ssh.bastion.ssh_port`, `distribution[0].region`): where the table the key is written in has its own key
/// for it, that key is named. `None` for any other message.
pub fn unknown_field_message(path: &KeyPath, message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, after) = rest.split_once('`')?;
    let expected = after.trim_start_matches(',').trim();
    let expected = if expected.is_empty() { String::new() } else { format!("; {expected}") };
    let lead = format!("unknown field `{field}`: `{field}` is Packer's name;");
    let table = table_of(path, field);
    if let Some((_, called, _, own)) = OWN_KEYS.iter().find(|(keys, _, packer, _)| *keys == table && *packer == field) {
        return Some(format!("{lead} in {called} use `{own}`{expected}"));
    }
    let entry = instead_of(field)?;
    Some(format!("{lead} in fleetbake use {}{expected}", entry.fleetbake))
}

/// The table `field` is written in, by its keys without indices (`distribution[0].region` → `distribution`).
fn table_of(path: &KeyPath, field: &str) -> String {
    let mut keys: Vec<&str> = path
        .segments()
        .iter()
        .filter_map(|segment| match segment {
            Segment::Key(key) => Some(key.as_str()),
            Segment::Index(_) => None,
        })
        .collect();
    if keys.last() == Some(&field) {
        keys.pop();
    }
    keys.join(".")
}

/// Why a name template has `{{`: Packer's template syntax, and fleetbake's placeholder for the function in it,
/// if it has one. `inside` is what is between `{{` and `}}`.
pub fn template_function(inside: &str) -> String {
    let function = inside.trim();
    let name = function.split_whitespace().next().unwrap_or_default();
    let argument = function[name.len()..].trim().trim_matches(|c| c == '`' || c == '"');
    let fleetbake = match name {
        "timestamp" => "`{timestamp}` (the run's start, as `20261127T020000Z`)".to_string(),
        "isotime" => "`{timestamp}` (`20261127T020000Z`) or `{date}` (`2026-11-27`)".to_string(),
        "uuid" => "`{run_id}` (unique per run)".to_string(),
        "user" if !argument.is_empty() => format!("`{{var.{argument}}}`, declared in `[variables]`"),
        "env" if !argument.is_empty() => format!(
            "`{{var.{argument}}}`, declared in `[variables]` and set by the environment variable `FLEETBAKE_VAR_{argument}`"
        ),
        "build_name" => "`{flavor}`".to_string(),
        _ => "one of `{flavor}` `{build_region}` `{date}` `{timestamp}` `{run_id}`".to_string(),
    };
    format!("`{{{{{inside}}}}}` is Packer's template syntax; fleetbake's placeholders take one pair of braces: use {fleetbake}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packer_key_is_listed_once_and_says_what_to_write() {
        for (index, entry) in PACKER_KEYS.iter().enumerate() {
            assert_eq!(instead_of(entry.packer), Some(entry), "`{}` is listed twice", entry.packer);
            assert!(entry.fleetbake.contains('`'), "`{}` names a key or says why not", entry.packer);
            assert!(PACKER_KEYS[..index].iter().all(|earlier| earlier.packer != entry.packer));
        }
        assert_eq!(instead_of("flavour"), None);
    }

    #[test]
    fn the_issues_packer_keys_are_all_known() {
        for key in [
            "ami_name",
            "source_ami",
            "source_ami_filter",
            "most_recent",
            "ami_users",
            "ami_org_arns",
            "ami_ou_arns",
            "ami_regions",
            "encrypt_boot",
            "kms_key_id",
            "ssh_username",
            "ssh_interface",
            "environment_vars",
            "instance_type",
        ] {
            assert!(instead_of(key).is_some(), "`{key}`");
        }
    }

    fn path(text: &str) -> KeyPath {
        let mut path = KeyPath::root();
        for part in text.split('.') {
            match part.split_once('[') {
                Some((key, index)) => {
                    path = path.key(key).index(index.trim_end_matches(']').parse().unwrap());
                }
                None => path = path.key(part),
            }
        }
        path
    }

    #[test]
    fn an_unknown_packer_field_names_the_fleetbake_key_first_and_keeps_the_tables_keys() {
        let message = unknown_field_message(
            &path("flavor[0].ami_users"),
            "unknown field `ami_users`, expected one of `name`, `tags`",
        )
        .unwrap();
        assert_eq!(
            message,
            "unknown field `ami_users`: `ami_users` is Packer's name; in fleetbake use `[sharing] accounts`; expected one of `name`, `tags`"
        );
        let provisioner = unknown_field_message(
            &path("flavor[0].provisioners[1].environment_vars"),
            "unknown field `environment_vars`, expected one of `type`",
        )
        .unwrap();
        assert!(provisioner.contains("a provisioner's `env = { NAME = \"value\" }`"), "{provisioner}");
        assert_eq!(unknown_field_message(&path("flavour"), "unknown field `flavour`, expected one of `flavor`"), None);
        assert_eq!(unknown_field_message(&path("fleet.name"), "invalid type: string"), None);
    }

    #[test]
    fn in_ssh_bastion_packers_ssh_keys_are_the_bastions_own() {
        let expected = "expected one of `host`, `port`, `user`, `private_key_file`, `known_hosts`, `host_key`";
        for (field, own) in [("ssh_port", "port"), ("ssh_host", "host"), ("ssh_username", "user")] {
            let message = unknown_field_message(
                &path(&format!("ssh.bastion.{field}")),
                &format!("unknown field `{field}`, {expected}"),
            )
            .unwrap();
            assert_eq!(
                message,
                format!(
                    "unknown field `{field}`: `{field}` is Packer's name; in `[ssh] bastion` use `{own}`; {expected}"
                )
            );
            assert!(!message.contains("[defaults]") && !message.contains("[ssh] port"), "{message}");
        }
        // In `[ssh]` itself, the instance's keys.
        let ssh =
            unknown_field_message(&path("ssh.ssh_port"), "unknown field `ssh_port`, expected one of `port`").unwrap();
        assert!(ssh.contains("in fleetbake use `[ssh] port`"), "{ssh}");
    }

    #[test]
    fn in_a_distribution_packers_keys_are_the_tables_own() {
        let expected = "expected one of `accounts`, `regions`, `role_arn`, `kms_keys`, `flavors`";
        for (field, own) in [
            ("region", "regions"),
            ("ami_regions", "regions"),
            ("kms_key_id", "kms_keys"),
            ("region_kms_key_ids", "kms_keys"),
            ("assume_role", "role_arn"),
        ] {
            let message = unknown_field_message(
                &path(&format!("distribution[1].{field}")),
                &format!("unknown field `{field}`, {expected}"),
            )
            .unwrap();
            assert_eq!(
                message,
                format!("unknown field `{field}`: `{field}` is Packer's name; in a `[[distribution]]` use `{own}`; {expected}")
            );
            assert!(!message.contains("[regions]") && !message.contains("[encryption]") && !message.contains("[aws]"));
        }
        // Elsewhere, the fleet's own tables.
        let defaults =
            unknown_field_message(&path("defaults.region"), "unknown field `region`, expected one of `instance_type`")
                .unwrap();
        assert!(defaults.contains("the `[regions]` table"), "{defaults}");
    }

    #[test]
    fn packer_template_functions_are_named_with_their_placeholder() {
        assert_eq!(
            template_function("timestamp"),
            "`{{timestamp}}` is Packer's template syntax; fleetbake's placeholders take one pair of braces: use `{timestamp}` (the run's start, as `20261127T020000Z`)"
        );
        assert!(template_function(" timestamp ").starts_with("`{{ timestamp }}` is Packer's"));
        assert!(template_function("isotime \"2006-01-02\"").contains("`{date}`"));
        assert!(template_function("uuid").ends_with("use `{run_id}` (unique per run)"));
        assert!(template_function("user `build`").contains("`{var.build}`, declared in `[variables]`"));
        assert!(template_function("env `BUILD`").contains(
            "`{var.BUILD}`, declared in `[variables]` and set by the environment variable `FLEETBAKE_VAR_BUILD`"
        ));
        assert!(template_function("clean_resource_name").contains("one of `{flavor}`"));
    }
}
