//! Bad input: every error names the file, line, column and key, exits 2, and touches no AWS endpoint.

use crate::harness::*;
use crate::witness::Witness;

const GOOD: &str = r#"[fleet]
name = "nightly"
ami_name = "{flavor}-{build_region}-{timestamp}"

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "base"
source_ami = { owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }
provisioners = [{ type = "shell", script = "setup.sh" }]

[regions]
us-west-2 = ["us-east-1"]
eu-central-1 = []

[aws]
endpoint_url = "http://127.0.0.1:9"
"#;

/// Runs `fleetbake validate` on `fleet` (with `setup.sh` beside it) and returns its stderr, paths masked. Its
/// endpoint is a witness: validating connects to nothing.
fn validate(fleet: &str) -> (i32, String) {
    let witness = Witness::start();
    let workspace = Workspace::new();
    workspace.write("setup.sh", "#!/bin/sh\n");
    let path = workspace.write("fleet.toml", &fleet.replace("http://127.0.0.1:9", &witness.endpoint));
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(witness.connections(), 0, "validate connected to EC2: {}", outcome.stderr);
    let dir = workspace.dir.path().display().to_string();
    (outcome.code, outcome.stderr.replace(&dir, "[DIR]") + &outcome.stdout.replace(&dir, "[DIR]"))
}

#[test]
fn a_good_fleet_validates() {
    let (code, output) = validate(GOOD);
    assert_eq!(code, 0, "{output}");
    assert_eq!(output, "[DIR]/fleet.toml: ok: 1 flavors, 2 build regions, 2 builds, 1 copies\n");
}

#[test]
fn errors_name_file_line_and_key() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("unknown key", &[("instance_type = \"t3.small\"", "instnce_type = \"t3.small\"")]),
        ("unknown flavor in matrix", &[("[aws]", "[matrix]\nflavors = [\"base\", \"bsae\"]\n\n[aws]")]),
        ("unknown region in exclude", &[("[aws]", "[matrix]\nexclude = [{ region = \"ap-south-1\" }]\n\n[aws]")]),
        ("empty matrix", &[("[aws]", "[matrix]\nexclude = [{ flavor = \"base\" }]\n\n[aws]")]),
        ("missing script", &[("script = \"setup.sh\"", "script = \"scripts/missing.sh\"")]),
        ("bad placeholder", &[("{flavor}-{build_region}-{timestamp}", "{flavour}-{timestamp}")]),
        ("fixed name", &[("{flavor}-{build_region}-{timestamp}", "{flavor}-{build_region}")]),
        (
            "names collide",
            &[
                ("{flavor}-{build_region}-{timestamp}", "{flavor}-{timestamp}"),
                ("eu-central-1 = []", "eu-central-1 = [\"us-east-1\"]"),
            ],
        ),
        ("bare address", &[("[aws]", "[ssh]\nsource_cidrs = [\"198.51.100.7\"]\n\n[aws]")]),
        ("bad duration", &[("[aws]", "[ssh]\ntimeout = \"ten minutes\"\n\n[aws]")]),
        ("filter without owners", &[("owners = [\"amazon\"], name", "name")]),
        ("unknown provisioner type", &[("type = \"shell\"", "type = \"ansible\"")]),
        ("bad region name", &[("eu-central-1 = []", "eu-central = []")]),
        ("copy to itself", &[("us-west-2 = [\"us-east-1\"]", "us-west-2 = [\"us-west-2\"]")]),
        ("TOML syntax", &[("[regions]", "[regions")]),
        ("wrong type", &[("us-west-2 = [\"us-east-1\"]", "us-west-2 = \"us-east-1\"")]),
    ];
    let mut report = String::new();
    for (name, edits) in cases {
        let mut fleet = GOOD.to_string();
        for (from, to) in *edits {
            assert!(fleet.contains(from), "case `{name}` edits text the good fleet has");
            fleet = fleet.replacen(from, to, 1);
        }
        let (code, output) = validate(&fleet);
        assert_eq!(code, 2, "case `{name}` exits 2:\n{output}");
        report.push_str(&format!("# {name}\n{output}\n"));
    }
    insta::assert_snapshot!(report);
}

/// A fleet file `matrix` refuses is refused before any connection to EC2 (or to the address detection): both
/// point at a [`Witness`] that counts every connection, and it saw none.
#[test]
fn matrix_refuses_bad_input_before_any_aws_call() {
    let witness = Witness::start();
    let workspace = Workspace::new();
    let fleet = GOOD.replacen("instance_type", "instance_typo", 1).replace("http://127.0.0.1:9", &witness.endpoint)
        + &format!("\n[ssh]\nip_detect_url = \"{}/ip\"\n", witness.endpoint);
    let path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", path.to_str().unwrap()]);
    assert_eq!(witness.connections(), 0, "no connection to the endpoint: {}", outcome.stderr);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("fleet.toml:6:1: `defaults.instance_typo`: unknown field `instance_typo`"),
        "{}",
        outcome.stderr
    );
    assert!(!workspace.path("manifest.json").exists());
    assert!(!workspace.path(".fleetbake").exists(), "no journal either");
}

#[test]
fn a_missing_fleet_file_is_bad_input() {
    let workspace = Workspace::new();
    let outcome = workspace.fleetbake(&["validate", "/nonexistent/fleet.toml"]);
    assert_eq!(outcome.code, 2);
    assert!(outcome.stderr.contains("/nonexistent/fleet.toml: cannot read the fleet file"), "{}", outcome.stderr);
}

#[test]
fn cli_usage_errors_exit_2() {
    let workspace = Workspace::new();
    assert_eq!(workspace.fleetbake(&["matrix"]).code, 2);
    assert_eq!(workspace.fleetbake(&["bake", "fleet.toml"]).code, 2);
}

/// What reaches an ssh argument or the bastion's ssh config file is refused at validate, each at its
/// `file:line:column`: a newline that would add a `ProxyCommand` directive, an option smuggled in as a host or
/// user, whitespace. `matrix` refuses it with exit 2 before any connection, and the smuggled command never runs.
#[test]
fn ssh_fields_that_would_break_an_ssh_config_line_are_refused_with_their_line() {
    let witness = Witness::start();
    let workspace = Workspace::new();
    workspace.write("setup.sh", "#!/bin/sh\n");
    workspace.write("bastion_key", "not a key\n");
    let pwned = workspace.path("pwned");
    let bastion = format!(
        "bastion = {{ host = \"b\\nProxyCommand touch {}\", user = \"-oProxyCommand=x\", private_key_file = \"bastion_key\", known_hosts = \"hosts\\nHost *\" }}",
        pwned.display()
    );
    let fleet = GOOD
        .replace("http://127.0.0.1:9", &witness.endpoint)
        .replacen("ssh_username = \"ubuntu\"", "ssh_username = \"ubuntu -v\"", 1)
        .replacen("[aws]", &format!("[ssh]\nhost = \"-oProxyCommand=touch\"\n{bastion}\n\n[aws]"), 1);
    let path = workspace.write("fleet.toml", &fleet);
    for command in ["validate", "matrix"] {
        let outcome = workspace.fleetbake(&[command, path.to_str().unwrap()]);
        assert_eq!(witness.connections(), 0, "{command} connected to EC2: {}", outcome.stderr);
        assert_eq!(outcome.code, 2, "{command}: {}", outcome.stderr);
        let file = path.display();
        for expected in [
            format!("{file}:7:16: `defaults.ssh_username`: holds whitespace"),
            format!("{file}:19:8: `ssh.host`: starts with `-`: ssh would take it for an option"),
            format!("{file}:20:20: `ssh.bastion.host`: holds a control character (\\n): in ssh's config file it would end the line"),
        ] {
            assert!(outcome.stderr.contains(&expected), "{command}: no `{expected}` in:\n{}", outcome.stderr);
        }
        // Further along line 20 (where depends on the length of the workspace's path in the host above).
        for key in ["`ssh.bastion.user`: starts with `-`", "`ssh.bastion.known_hosts`: holds a control character"] {
            let line = outcome.stderr.lines().find(|line| line.contains(key));
            let line = line.unwrap_or_else(|| panic!("{command}: no `{key}` in:\n{}", outcome.stderr));
            // A plain `matrix` stamps every line, its errors too (tests/it/stamps.rs); `validate` prints them as written.
            let text = if command == "matrix" { line.get(21..).unwrap_or(line) } else { line };
            assert!(text.starts_with(&format!("error: {file}:20:")), "{line}");
        }
        assert!(!pwned.exists(), "the smuggled ProxyCommand ran");
    }
    assert!(!workspace.path("manifest.json").exists());
    assert!(!workspace.path(".fleetbake").exists(), "no journal either");
}

/// `user_data_file` is read as bytes: a gzip file validates; one over EC2's 16 KB (raw, before base64), or one
/// that is not a file, is exit 2 naming the file, line and key.
#[test]
fn user_data_files_are_bytes_of_at_most_16_kb() {
    let workspace = Workspace::new();
    workspace.write("setup.sh", "#!/bin/sh\n");
    let with_file = |file: &str| {
        GOOD.replacen(
            "ssh_username = \"ubuntu\"",
            &format!("ssh_username = \"ubuntu\"\nuser_data_file = \"{file}\""),
            1,
        )
    };
    let binary: Vec<u8> = (0..=255u8).cycle().take(16 * 1024).collect();
    std::fs::write(workspace.path("at-the-limit.gz"), &binary).unwrap();
    std::fs::write(workspace.path("too-big.gz"), [&binary[..], b"!"].concat()).unwrap();
    std::fs::create_dir_all(workspace.path("a-folder")).unwrap();

    let path = workspace.write("fleet.toml", &with_file("at-the-limit.gz"));
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 0, "16384 bytes, not UTF-8, validate: {}", outcome.stderr);
    for (file, expected) in [
        (
            "too-big.gz",
            "`defaults.user_data_file`: is 16385 bytes; EC2 takes at most 16384 bytes of user data (before base64)"
                .to_string(),
        ),
        (
            "a-folder",
            format!("`defaults.user_data_file`: `{}` is not a regular file", workspace.path("a-folder").display()),
        ),
        (
            "missing.gz",
            format!("`defaults.user_data_file`: `{}` does not exist", workspace.path("missing.gz").display()),
        ),
    ] {
        let path = workspace.write("fleet.toml", &with_file(file));
        let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
        assert_eq!(outcome.code, 2, "{file}: {}", outcome.stderr);
        let expected = format!("{}:8:18: {expected}", path.display());
        assert!(outcome.stderr.contains(&expected), "{file}: no `{expected}` in:\n{}", outcome.stderr);
    }
}

/// `[sim] accounts` and `[sim] account_faults`: each problem at its own line, column and key, all at once.
#[test]
fn sim_accounts_and_their_faults_are_checked_with_their_place() {
    let fleet = GOOD.replace(
        "[aws]",
        "[sim]\naccounts = [\"222233334444\", \"1234\", \"222233334444\", \"123456789012\"]\n\
         account_faults = { \"222233334444\" = \"role\", \"555566667777\" = \"key\", \"333344445555\" = \"gone\" }\n\n[aws]",
    );
    let (code, output) = validate(&fleet);
    assert_eq!(code, 2, "{output}");
    let line = GOOD.lines().position(|line| line == "[aws]").unwrap() + 2;
    for (at, key, says) in [
        (format!("{line}:29"), "sim.accounts[1]", "`1234` is not an AWS account id (12 digits)"),
        (format!("{line}:37"), "sim.accounts[2]", "account `222233334444` is listed twice"),
        (format!("{line}:53"), "sim.accounts[3]", "`123456789012` is the simulated own account: list only the others"),
        (
            format!("{}:62", line + 1),
            "sim.account_faults.555566667777",
            "account `555566667777` is not in `[sim] accounts`",
        ),
        (format!("{}:86", line + 1), "sim.account_faults.333344445555", "`gone` is not an account fault"),
    ] {
        let expected = format!("fleet.toml:{at}: `{key}`: {says}");
        assert!(output.contains(&expected), "expected `{expected}` in:\n{output}");
    }
    assert!(!output.contains("sim.account_faults.222233334444"), "a listed account's `role` fault is fine:\n{output}");
}

/// A `[[distribution]]` role must be of the account it is assumed in (CopyImage as a role lands the copy in the
/// role's account), and a key for a region the table does not copy into is refused, each at its place.
#[test]
fn a_distribution_role_of_another_account_and_a_key_of_no_region_are_refused() {
    let fleet = GOOD.replace(
        "[aws]",
        "[[distribution]]\naccounts = [\"222233334444\"]\nregions = [\"us-east-1\"]\n\
         role_arn = \"arn:aws:iam::999988887777:role/image-distribution\"\n\
         kms_keys = { \"us-east-1\" = \"alias/images\", \"eu-wset-1\" = \"alias/images\" }\n\n[aws]",
    );
    let (code, output) = validate(&fleet);
    assert_eq!(code, 2, "{output}");
    let line = GOOD.lines().position(|line| line == "[aws]").unwrap() + 4;
    for (at, key, says) in [
        (
            format!("{line}:12"),
            "distribution[0].role_arn",
            "is a role of account 999988887777, not of the account it is assumed in",
        ),
        (
            format!("{}:58", line + 1),
            "distribution[0].kms_keys.eu-wset-1",
            "`eu-wset-1` is not one of this table's `regions`",
        ),
    ] {
        let expected = format!("fleet.toml:{at}: `{key}`: ");
        let found = output.lines().any(|text| text.contains(&expected) && text.contains(says));
        assert!(found, "expected `{expected}…{says}` in:\n{output}");
    }
}
