//! The simulated cloud's other accounts (`[sim] accounts`, `account_faults`), through the binary: a
//! `[[distribution]]` account whose role cannot be assumed fails only its own copies, at once, naming the role;
//! the own account's images are made as ever, and the report says who owns what.

use crate::harness::Workspace;
use crate::sim::run_sim_with;

const FLEET: &str = r#"[fleet]
name = "accounts"
ami_name = "{flavor}-{build_region}-{run_id}"

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "al2023"
source_ami = { owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }
provisioners = [{ type = "shell", inline = ["sudo dnf -y upgrade"] }]

[regions]
us-west-2 = ["eu-west-1"]

[ssh]
source_cidrs = ["203.0.113.5/32"]

[[distribution]]
accounts = ["222233334444", "555566667777"]
regions = ["us-east-1"]
role_arn = "arn:aws:iam::{account}:role/image-distribution"
kms_keys = { "*" = "alias/images" }

[sim]
accounts = ["222233334444", "555566667777"]
account_faults = { "555566667777" = "role" }
"#;

#[test]
fn an_account_whose_role_cannot_be_assumed_fails_only_its_copies_naming_the_role() {
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, FLEET, &[]);
    let stderr = &run.outcome.stderr;
    let role = "arn:aws:iam::555566667777:role/image-distribution";
    let refused = format!("AccessDenied: User: arn:aws:iam::123456789012:user/simulated is not authorized to perform: sts:AssumeRole on resource: {role}");
    assert_eq!(stderr.matches(&refused).count(), 1, "one copy into that account, refused once:\n{stderr}");
    assert!(stderr.contains(&format!("hint: the role `{role}` could not be assumed")), "{stderr}");
    assert!(!stderr.contains("credentials expired"), "one account's role is not the night's credentials:\n{stderr}");

    let sim = &run.summary["sim"];
    let owned: Vec<(&str, &str, bool)> = sim["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            (image["account"].as_str().unwrap(), image["region"].as_str().unwrap(), image["available"] == true)
        })
        .filter(|(account, _, _)| *account != "222233334444")
        .collect();
    assert_eq!(
        owned,
        [("123456789012", "eu-west-1", true), ("123456789012", "us-west-2", true)],
        "the own account's build and copy; nothing in the refused account:\n{stderr}"
    );
    assert!(sim["assume_role_calls_by_account"]["555566667777"].as_u64().unwrap() >= 1, "STS was asked: {sim}");
    assert_eq!(run.summary["leaked_resources"], serde_json::json!([]), "{stderr}");
}
