//! The plan and the resolved config, through the library: pure, no network.

use std::path::Path;

use chrono::{TimeZone, Utc};
use fleetbake::config::{self, Provisioner, ShellScript, SourceAmi};
use fleetbake::plan::{Awaited, JobId, Plan, RunId};

const FLEET: &str = r#"[fleet]
name = "nightly"
ami_name = "{flavor}-{build_region}-{date}-{run_id}"
tags = { Team = "platform" }

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"
tags = { ManagedBy = "fleetbake", Tier = "default" }

[[flavor]]
name = "ubuntu-docker"
source_ami = { owners = ["099720109477"], name = "ubuntu/images/*" }
tags = { Tier = "docker" }
provisioners = [{ type = "shell", inline = ["true"], env = { A = "b" } }]

[[flavor]]
name = "al2023"
instance_type = "t3.large"
ssh_username = "ec2-user"
source_ami = { id = "ami-0123456789abcdef0" }

[regions]
us-west-2 = ["us-east-1", "eu-west-1"]
eu-central-1 = []

[matrix]
exclude = [{ flavor = "al2023", region = "eu-central-1" }]
"#;

fn load() -> config::Fleet {
    config::parse(Path::new("/fleets/fleet.toml"), FLEET).unwrap_or_else(|errors| panic!("{errors}"))
}

#[test]
fn defaults_are_inherited_and_overridden() {
    let fleet = load();
    let ubuntu = &fleet.flavors[0];
    assert_eq!(ubuntu.instance_type, "t3.small");
    assert_eq!(ubuntu.ssh_username, "ubuntu");
    assert_eq!(ubuntu.tags["ManagedBy"], "fleetbake");
    assert_eq!(ubuntu.tags["Tier"], "docker", "the flavor's tag wins over the default");
    assert!(
        matches!(&ubuntu.provisioners[0].provisioner, Provisioner::Shell { script: ShellScript::Inline(lines), env } if lines == &["true"] && env["A"] == "b")
    );
    let al2023 = &fleet.flavors[1];
    assert_eq!(al2023.instance_type, "t3.large");
    assert_eq!(al2023.ssh_username, "ec2-user");
    assert_eq!(al2023.source_ami, SourceAmi::Id("ami-0123456789abcdef0".into()));
    assert_eq!(fleet.manifest_path, Path::new("/fleets/manifest.json"));
    assert_eq!(fleet.ssh.port, 22);
    assert_eq!(fleet.limits.max_parallel_builds, 8);
    assert_eq!(fleet.limits.max_parallel_copies_per_region, 50);
}

#[test]
fn plan_expands_the_matrix() {
    let started = Utc.with_ymd_and_hms(2026, 11, 26, 14, 30, 0).unwrap();
    let plan = Plan::new(&load(), RunId::new(started, 0xabcde), started);
    insta::assert_snapshot!(plan.to_string());
    assert_eq!(plan.job_count(), 7);
    let mut queue = plan.dependency_queue();
    let mut ready = Vec::new();
    while let Some(job) = queue.pop_ready() {
        ready.push(job);
    }
    assert_eq!(ready, vec![JobId::Build(0), JobId::Build(1), JobId::Build(2)], "only builds start first");
    queue.satisfied(&JobId::Build(2), &Awaited::Image);
    assert_eq!(queue.pop_ready(), Some(JobId::Copy(2)));
    assert_eq!(queue.pop_ready(), Some(JobId::Copy(3)));
}

#[test]
fn the_example_fleets_validate() {
    for (example, flavors) in [
        ("fleet.toml", 2),
        ("examples/local/fleet.toml", 2),
        ("examples/organization/fleet.toml", 1),
        ("examples/layered/fleet.toml", 4),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(example);
        let fleet = config::load(&path).unwrap_or_else(|errors| panic!("{errors}"));
        assert_eq!(fleet.flavors.len(), flavors, "{example}");
        assert_eq!(fleet.regions.len(), 2, "{example}");
    }
}
