//! A fleet file written the way a Packer user would (`{{timestamp}}`, `deprecate_after = "90"`, amazon-ebs's
//! `ami_users`, a provisioner's `environment_vars`): `fleetbake validate` refuses it (exit 2) at the
//! `file:line:col` and key, and each error says fleetbake's spelling.

use crate::harness::*;

/// One flavor in one region; `fleet` lines go into `[fleet]`, `flavor` lines into the `[[flavor]]`.
fn fleet(fleet: &str, flavor: &str) -> String {
    format!(
        "[fleet]\nname = \"packer\"\n{fleet}\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"ec2-user\"\n\n\
         [[flavor]]\nname = \"base\"\nsource_ami = {{ id = \"ami-0123456789abcdef0\" }}\n{flavor}\n\n\
         [regions]\nus-west-2 = []\n"
    )
}

#[test]
fn packers_template_syntax_and_a_duration_without_a_unit_are_told_in_fleetbakes_words() {
    let workspace = Workspace::new();
    let path = workspace.write("fleet.toml", &fleet("ami_name = \"base-{{timestamp}}\"\ndeprecate_after = \"90\"", ""));
    let file = path.display();
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    let lines: Vec<&str> = outcome.stderr.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "error: {file}:3:12: `fleet.ami_name`: `{{{{timestamp}}}}` is Packer's template syntax; fleetbake's placeholders take one pair of braces: use `{{timestamp}}` (the run's start, as `20261127T020000Z`)"
        ),
        "{}",
        outcome.stderr
    );
    assert_eq!(
        lines[1],
        format!(
            "error: {file}:4:19: `fleet.deprecate_after`: `90` has no unit: a duration needs one (`s`, `m`, `h`, `d`), as in `90d` (days)"
        ),
        "{}",
        outcome.stderr
    );
    assert_eq!(lines.len(), 2, "{}", outcome.stderr);
}

#[test]
fn an_amazon_ebs_key_names_the_fleetbake_key_to_use_instead() {
    let workspace = Workspace::new();
    let path = workspace.write("fleet.toml", &fleet("", "ami_users = [\"111122223333\"]"));
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    let expected = format!(
        "error: {}:12:1: `flavor[0].ami_users`: unknown field `ami_users`: `ami_users` is Packer's name; in fleetbake use `[sharing] accounts`; expected one of `name`, ",
        path.display()
    );
    assert!(outcome.stderr.starts_with(&expected), "{}", outcome.stderr);

    let provisioner = workspace.write(
        "provisioner.toml",
        &fleet("", "provisioners = [{ type = \"shell\", inline = [\"env\"], environment_vars = [\"A=1\"] }]"),
    );
    let outcome = workspace.fleetbake(&["validate", provisioner.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains(
            "`flavor[0].provisioners[0].environment_vars`: unknown field `environment_vars`: `environment_vars` is Packer's name; in fleetbake use a provisioner's `env = { NAME = \"value\" }`"
        ),
        "{}",
        outcome.stderr
    );
}
