//! `[[distribution]]` as operations see it (issue 25): `gc` and `[retention]` per account (each account's
//! copies kept per flavor, account and region, and left when the builder's images go), `--resume` looking up
//! each copy in its own account, the preflight naming the account that would fail, and the destination role's
//! IAM document covering every call made in another account. On the simulated cloud, several nights in one
//! paused runtime; every call the run makes in another account is read from the client's per-place record
//! (`ApiStats::calls_by_place`). On moto (STS AssumeRole works there, and moto then serves the role's
//! account): the preflight acting as each account's role.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::harness::Workspace;
use crate::sharing::{load, paused_runtime};
use fleetbake::cloud::sim::SimCloud;
use fleetbake::cloud::{Cloud, CopySpec, ImageQuery, ImageState, OwnedImage};
use fleetbake::config::{Account, Place, Region};

const FIRST: &str = "222233334444";
const SECOND: &str = "555566667777";

/// Two flavors built in us-west-2 and copied to us-east-1; distributed into `accounts` in us-east-1 and
/// eu-west-1; `more` appended. The simulated cloud has both accounts either way.
fn fleet(accounts: &[&str], more: &str) -> String {
    fleet_with_sim(accounts, "", more)
}

/// [`fleet`], with `sim` added to its `[sim]` table.
fn fleet_with_sim(accounts: &[&str], sim: &str, more: &str) -> String {
    let accounts: Vec<String> = accounts.iter().map(|account| format!("\"{account}\"")).collect();
    format!(
        r#"[fleet]
name = "distops"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"
deprecate_after = "90d"

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "base"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
provisioners = [{{ type = "shell", inline = ["echo base"] }}]

[[flavor]]
name = "web"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
provisioners = [{{ type = "shell", inline = ["echo web"] }}]

[regions]
us-west-2 = ["us-east-1"]

[[distribution]]
accounts = [{}]
regions = ["us-east-1", "eu-west-1"]
role_arn = "arn:aws:iam::{{account}}:role/image-distribution"
kms_keys = {{ "*" = "alias/images" }}

[ssh]
source_cidrs = ["203.0.113.5/32"]

[sim]
accounts = ["{FIRST}", "{SECOND}"]
{sim}

{more}
"#,
        accounts.join(", ")
    )
}

fn place(account: &str, region: &str) -> Place {
    Place { account: Account::Id(account.to_string()), region: Region::new(region) }
}

fn own(region: &str) -> Place {
    Place::own(Region::new(region))
}

/// The fleet's images in `place`, as its account lists them (through the port, acting in that place).
async fn images_in(sim: &Arc<SimCloud>, place: &Place) -> Vec<OwnedImage> {
    let tags = BTreeMap::from([("fleetbake:fleet".to_string(), "distops".to_string())]);
    sim.place(place).find_owned_images(&ImageQuery::Tagged(tags)).await.unwrap()
}

/// Per flavor, the names of the fleet's images in `place` (any state but gone).
async fn names_by_flavor(sim: &Arc<SimCloud>, place: &Place) -> BTreeMap<String, Vec<String>> {
    let mut by_flavor: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for image in images_in(sim, place).await {
        let flavor = image.tags.get("fleetbake:flavor").cloned().unwrap_or_default();
        by_flavor.entry(flavor).or_default().push(image.name);
    }
    for names in by_flavor.values_mut() {
        names.sort();
    }
    by_flavor
}

/// Three nights, then `gc` with `keep = 1`: nights one and two distribute into both accounts, night three only
/// into the first. gc deregisters the builder's old images in each own region, and the first account's old
/// copies in each of its regions (keep counts per flavor, account and region), acting as its role; the
/// second account (no longer configured) is not looked into, and its copies of nights one and two stay
/// available though the builder's images they were copied from are gone: each account owns its copies.
#[test]
fn gc_keeps_the_newest_per_account_and_region_and_the_accounts_copies_outlive_the_builders() {
    let workspace = Workspace::new();
    let runtime = paused_runtime();
    let both = load(&workspace, &fleet(&[FIRST, SECOND], ""), false);
    let sim = runtime.block_on(async { Arc::new(SimCloud::new(&both)) });
    let mut names_of_night = Vec::new();
    let own_build = "base-us-east-1-own-build".to_string();
    for night in 1..=3 {
        let accounts: &[&str] = if night < 3 { &[FIRST, SECOND] } else { &[FIRST] };
        let fleet = load(&workspace, &fleet(accounts, "[retention]\nkeep = 1\n"), false);
        let summary = runtime.block_on(crate::sharing::night(&sim, &fleet));
        assert_eq!((summary.failed, summary.succeeded), (0, 2 + 2 + 2 * accounts.len() * 2), "{summary:?}");
        let run_id = workspace.read_json("manifest.json")["run_id"].as_str().unwrap().to_string();
        names_of_night.push(run_id);
        if night == 2 {
            // After night two, the first account's own image of a fleet of the same name (the account bakes too; no
            // `fleetbake:distributed-from`), older than the night-three copy: the builder's gc must not count it among
            // its copies (past `keep`, it would be deregistered) nor remove it.
            runtime.block_on(async {
                let first = sim.place(&place(FIRST, "us-east-1"));
                let copies = images_in(&sim, &place(FIRST, "us-east-1")).await;
                let source =
                    copies.iter().find(|image| image.name == format!("base-us-west-2-{}", names_of_night[1])).unwrap();
                let tags = BTreeMap::from([
                    ("fleetbake:fleet".to_string(), "distops".to_string()),
                    ("fleetbake:flavor".to_string(), "base".to_string()),
                    ("fleetbake:run-id".to_string(), "20200101-000000-00000".to_string()),
                ]);
                let spec = CopySpec {
                    source_region: Region::new("us-east-1"),
                    source_image: source.id.clone(),
                    name: own_build.clone(),
                    description: None,
                    client_token: "the-accounts-own-build".into(),
                    tags: tags.clone(),
                    snapshot_tags: tags,
                    kms_key: None,
                };
                first.copy_image(&spec).await.unwrap();
                // Until it is available (a copy takes `[sim] copy_image`).
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            });
        }
    }
    let [first_run, second_run, third_run] = [&names_of_night[0], &names_of_night[1], &names_of_night[2]];
    let named = |flavor: &str, region: &str, run: &str| format!("{flavor}-{region}-{run}");
    let before = runtime.block_on(async { names_by_flavor(&sim, &place(SECOND, "eu-west-1")).await });
    let mut expected = [named("base", "us-west-2", first_run), named("base", "us-west-2", second_run)];
    expected.sort();
    assert_eq!(before["base"], expected, "nights one and two in the second account");

    let fleet = load(&workspace, &fleet(&[FIRST], "[retention]\nkeep = 1\n"), false);
    let (plan, outcome) = runtime
        .block_on(fleetbake::state::gc::gc(&fleet, Arc::clone(&sim) as Arc<dyn Cloud>, false))
        .unwrap_or_else(|error| panic!("gc: {error}"));
    assert_eq!(outcome.failures, 0, "{:?}", outcome.lines);
    // Own: 2 flavors × 2 regions × 2 old nights; the first account: 2 flavors × 2 regions × 2 old nights.
    assert_eq!(plan.deregister.len(), 16, "{:#?}", outcome.lines);
    let in_first = plan.deregister.iter().filter(|gone| gone.place.account == Account::Id(FIRST.into())).count();
    assert_eq!(in_first, 8, "{:#?}", outcome.lines);
    assert!(outcome.lines.iter().any(|line| line.contains(&format!("in {FIRST}/eu-west-1"))), "{:#?}", outcome.lines);

    runtime.block_on(async {
        for region in ["us-west-2", "us-east-1"] {
            let left = names_by_flavor(&sim, &own(region)).await;
            for flavor in ["base", "web"] {
                assert_eq!(left[flavor], [named(flavor, "us-west-2", third_run)], "own {region}: the newest only");
            }
        }
        for region in ["us-east-1", "eu-west-1"] {
            let left = names_by_flavor(&sim, &place(FIRST, region)).await;
            for flavor in ["base", "web"] {
                let mut expected = vec![named(flavor, "us-west-2", third_run)];
                if (flavor, region) == ("base", "us-east-1") {
                    expected.push(own_build.clone());
                }
                expected.sort();
                assert_eq!(left[flavor], expected, "{FIRST}/{region}: the newest copy, and the account's own image");
            }
            // The second account's copies of nights one and two: theirs, left by gc, usable though the builder's
            // images they came from are deregistered.
            let second = images_in(&sim, &place(SECOND, region)).await;
            assert_eq!(second.len(), 4, "{SECOND}/{region}: {second:?}");
            assert!(second.iter().all(|image| image.state == ImageState::Available), "{second:?}");
            let ids: Vec<_> = second.iter().map(|image| image.id.clone()).collect();
            let described = sim.place(&place(SECOND, region)).describe_images(&ids).await.unwrap();
            assert_eq!(described.len(), 4, "{SECOND}/{region}: still described");
        }
    });
}

/// An account whose role does not answer is named by gc, and gc exits non-zero (a failure), not skipping it
/// silently; the other accounts and the own account are collected all the same.
#[test]
fn gc_names_an_account_it_cannot_survey() {
    let survey = fleetbake::state::gc::Survey {
        leftovers: Vec::new(),
        images: Vec::new(),
        unreachable: vec![fleetbake::state::gc::Unreachable {
            place: place(SECOND, "us-east-1"),
            role_arn: format!("arn:aws:iam::{SECOND}:role/image-distribution"),
            error: "AccessDenied: not authorized to perform sts:AssumeRole".into(),
        }],
        ..Default::default()
    };
    let plan = fleetbake::state::gc::GcPlan::new(
        &survey,
        &fleetbake::state::gc::RunsInProgress::default(),
        &BTreeSet::new(),
        &fleetbake::config::Retention { keep: Some(1), ..Default::default() },
        chrono::Utc::now(),
    );
    let workspace = Workspace::new();
    let fleet = load(&workspace, &fleet(&[FIRST, SECOND], ""), false);
    let runtime = paused_runtime();
    let outcome = runtime.block_on(async {
        let sim: Arc<dyn Cloud> = Arc::new(SimCloud::new(&fleet));
        fleetbake::state::gc::execute(&plan, sim, false).await
    });
    assert_eq!(outcome.failures, 1);
    let line = &outcome.lines[0];
    assert!(line.contains(SECOND) && line.contains("role/image-distribution") && line.contains("us-east-1"), "{line}");
    let ending = fleetbake::engine::exit::Ending::Collected { failures: outcome.failures };
    assert_ne!(ending.exit().code(), 0);
}

/// A distribution run interrupted with copies into the accounts in flight, then resumed in the same
/// simulated cloud: every account holds exactly one copy of each flavor in each of its regions (found by
/// name in that account, not in the own account, where an image of the same name is the own copy), and the
/// own account one image per flavor and region.
#[test]
fn a_distribution_run_interrupted_and_resumed_makes_no_copy_twice_in_any_account() {
    use fleetbake::engine::run::Start;
    use fleetbake::state::journal::JournalDir;
    let workspace = Workspace::new();
    let mut fleet = load(&workspace, &fleet(&[FIRST, SECOND], "[limits]\nmax_parallel_builds = 1\n"), false);
    let runtime = paused_runtime();
    let sim = runtime.block_on(async { Arc::new(SimCloud::new(&fleet)) });
    let first = runtime.block_on(crate::sim::run_on(
        &sim,
        &fleet,
        Start::fresh(&fleet, Some(JournalDir::of(&fleet))),
        Some(std::time::Duration::from_secs(INTERRUPT_AFTER_MINUTES * 60)),
    ));
    assert!(first.interrupted.is_some(), "{first:?}");
    let made_before: usize = runtime.block_on(async {
        let mut made = 0;
        for account in [FIRST, SECOND] {
            for region in ["us-east-1", "eu-west-1"] {
                made += images_in(&sim, &place(account, region)).await.len();
            }
        }
        made
    });
    assert!(made_before > 0 && made_before < 8, "interrupted with some copies made in the accounts: {made_before}");

    let (replay, plan) = fleetbake::state::resume::prepare(&mut fleet).unwrap();
    let resumed =
        runtime.block_on(crate::sim::run_on(&sim, &fleet, Start::Resume { replay: Box::new(replay), plan }, None));
    assert_eq!((resumed.failed, resumed.interrupted), (0, None), "{resumed:?}");
    runtime.block_on(async {
        for account in [FIRST, SECOND] {
            for region in ["us-east-1", "eu-west-1"] {
                let images = images_in(&sim, &place(account, region)).await;
                let names: BTreeSet<&str> = images.iter().map(|image| image.name.as_str()).collect();
                assert_eq!((images.len(), names.len()), (2, 2), "{account}/{region}: one copy per flavor: {images:?}");
                assert!(images.iter().all(|image| image.state == ImageState::Available), "{images:?}");
            }
        }
        for region in ["us-west-2", "us-east-1"] {
            let images = images_in(&sim, &own(region)).await;
            assert_eq!(images.len(), 2, "own {region}: {images:?}");
        }
    });
}

/// When the run above is interrupted: the builds are done and the accounts' copies under way.
const INTERRUPT_AFTER_MINUTES: u64 = 20;

/// The preflight assumes each account's role and names the account, the region and the role that would fail:
/// a distribution region not enabled (`[sim] regions_not_enabled`); and in the own account, a source region
/// encrypting with the AWS managed key, whose images cannot be copied into another account.
#[test]
fn the_preflight_names_each_account_and_region_that_would_fail() {
    let workspace = Workspace::new();
    let path =
        workspace.write("fleet.toml", &fleet_with_sim(&[FIRST, SECOND], "regions_not_enabled = [\"eu-west-1\"]", ""));
    let preflight = workspace.fleetbake(&["preflight", path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    for account in [FIRST, SECOND] {
        let role = format!("arn:aws:iam::{account}:role/image-distribution");
        let failed: Vec<&str> =
            preflight.stdout.lines().filter(|line| line.starts_with("FAIL") && line.contains(account)).collect();
        assert_eq!(failed.len(), 1, "{}", preflight.stdout);
        assert!(failed[0].starts_with("FAIL eu-west-1: "), "{}", failed[0]);
        assert!(failed[0].contains(&role) && failed[0].contains("not enabled"), "{}", failed[0]);
        let key = format!("ok   us-east-1: account {account} (role `{role}`): KMS key `alias/images`");
        assert!(preflight.stdout.contains(&key), "{key} in:\n{}", preflight.stdout);
    }
    assert_eq!(preflight.stdout.lines().filter(|line| line.starts_with("FAIL")).count(), 2, "{}", preflight.stdout);
    // `matrix` names the accounts and goes on: only their copies into eu-west-1 fail.
    let run = crate::sim::run_sim_with(&workspace, &std::fs::read_to_string(&path).unwrap(), &[]);
    for account in [FIRST, SECOND] {
        let warned = format!("preflight: account {account} failed its checks");
        assert!(run.outcome.stderr.contains(&warned), "{warned} in:\n{}", run.outcome.stderr);
    }
    assert_eq!(run.summary["jobs"]["failed"], 2 * 2, "each account's 2 copies into eu-west-1: {}", run.summary);
    assert_eq!(run.summary["jobs"]["succeeded"], 2 + 2 + 2 * 2, "{}", run.summary);

    let managed = fleet(&[FIRST], "[encryption]\nkms_keys = { \"*\" = \"alias/aws/ebs\" }\n");
    let path = workspace.write("fleet.toml", &managed);
    let preflight = workspace.fleetbake(&["preflight", path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    let failed: Vec<&str> = preflight.stdout.lines().filter(|line| line.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 1, "{}", preflight.stdout);
    assert!(failed[0].starts_with("FAIL us-west-2: KMS key `alias/aws/ebs`"), "{}", failed[0]);
    assert!(failed[0].contains("[[distribution]]"), "{}", failed[0]);
}

/// Every call a distribution night makes in another account (its copies, their finish, `[publish] accounts`),
/// then the preflight and `gc` of the same fleet, is one `docs/iam-distribution-policy.json` allows (its
/// actions as IAM names them), and the build role's `docs/iam-policy.json` lets the run assume the accounts'
/// roles.
#[test]
fn the_destination_roles_policy_allows_every_call_made_in_an_account() {
    use fleetbake::cloud::{retry::Policy, Limited};
    use fleetbake::engine::{limits::RunLimits, run::Execution, run::Strategy};
    let workspace = Workspace::new();
    let publish = "[publish]\nssm_parameter = \"/images/{flavor}\"\naccounts = true\n\n[retention]\nkeep = 1\n";
    let fleet = load(&workspace, &fleet(&[FIRST, SECOND], publish), false);
    let runtime = paused_runtime();
    let (calls, summary) = runtime.block_on(async {
        let sim = Arc::new(SimCloud::new(&fleet));
        let fleet = Arc::new(fleet.clone());
        let limits = Arc::new(RunLimits::new(&fleet.limits, Policy::THROTTLED, Strategy::FLEETBAKE.pacing));
        let execution = Execution {
            fleet: Arc::clone(&fleet),
            ssh_sources: fleetbake::steps::network::SshSources::Configured(vec!["203.0.113.5/32".parse().unwrap()]),
            cloud: Arc::new(Limited::new(Arc::clone(&sim) as Arc<dyn Cloud>, Arc::clone(limits.api()))),
            communicator: Arc::new(fleetbake::remote::sim::SimCommunicator::new(Arc::clone(&sim), Arc::clone(&fleet))),
            limits: Arc::clone(&limits),
            strategy: Strategy::FLEETBAKE,
            fail_fast: false,
            reporters: Vec::new(),
            run_lock: None,
            preflight: None,
            local_leftovers: Vec::new(),
            manifest_set_aside: None,
        };
        let start = fleetbake::engine::run::Start::fresh(&fleet, None);
        let plan = start.plan().clone();
        let cloud = Arc::clone(&execution.cloud);
        let (_, interrupts) = tokio::sync::mpsc::unbounded_channel();
        let summary = execution.run(start, interrupts).await.unwrap().1;
        let runner = fleetbake::engine::preflight::Runner::simulated(&fleet.sim);
        fleetbake::engine::preflight::check(&fleet, &plan, &*cloud, &runner).await;
        fleetbake::state::gc::gc(&fleet, cloud, false).await.unwrap_or_else(|error| panic!("gc: {error}"));
        (limits.api().stats().calls_by_place(), summary)
    });
    assert_eq!(summary.failed, 0, "{summary:?}");
    let in_accounts: BTreeSet<String> = calls
        .iter()
        .filter(|((place, _), _)| !place.account.is_own())
        .map(|((_, action), _)| action.iam_name())
        .collect();
    for expected in
        ["ec2:CopyImage", "ec2:DescribeImages", "ec2:EnableImageDeprecation", "ssm:PutParameter", "ec2:DescribeRegions"]
    {
        assert!(in_accounts.contains(expected), "{expected} made in an account: {in_accounts:?}");
    }
    let allowed = policy_actions("iam-distribution-policy.json");
    for action in &in_accounts {
        assert!(
            allowed.contains(action),
            "{action}, called in an account, is not in docs/iam-distribution-policy.json"
        );
    }
    // What the preflight and gc ask of an account, beside the copy: the role answers, the keys, the names.
    for action in ["ec2:DescribeRegions", "kms:DescribeKey", "ec2:DeregisterImage", "ec2:DeleteSnapshot"] {
        assert!(allowed.contains(action), "{action}");
    }
    // Nothing of a build: the role cannot launch, open ports or pass roles in the account.
    for action in ["ec2:RunInstances", "ec2:AuthorizeSecurityGroupIngress", "iam:PassRole", "ec2:CreateImage"] {
        assert!(!allowed.contains(action), "{action} is not the destination role's");
    }
    assert!(policy_actions("iam-policy.json").contains("sts:AssumeRole"), "the build role assumes the accounts' roles");
}

/// Every action a document in `docs/` allows.
fn policy_actions(document: &str) -> BTreeSet<String> {
    let path = format!("{}/docs/{document}", env!("CARGO_MANIFEST_DIR"));
    let policy: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        for action in statement["Action"].as_array().unwrap() {
            actions.insert(action.as_str().unwrap().to_string());
        }
    }
    actions
}

/// `--changed-only` per account: a quiet night reuses each account's copies, looked up in that account; an
/// account added gets its copies made; a key changed for one region of an account makes that account's copies
/// there again (the copy's key is part of its fingerprint), and nothing else.
#[test]
fn changed_only_reuses_a_copy_an_account_holds_and_makes_the_ones_it_lacks() {
    let workspace = Workspace::new();
    let runtime = paused_runtime();
    let first = load(&workspace, &fleet(&[FIRST], ""), false);
    let sim = runtime.block_on(async { Arc::new(SimCloud::new(&first)) });
    let night_one = runtime.block_on(crate::sharing::night(&sim, &first));
    assert_eq!((night_one.failed, night_one.succeeded), (0, 8), "{night_one:?}");

    let quiet = load(&workspace, &fleet(&[FIRST], ""), true);
    let night_two = runtime.block_on(crate::sharing::night(&sim, &quiet));
    assert_eq!((night_two.failed, night_two.reused), (0, 8), "every job reuses its image: {night_two:?}");

    let keyed = "[[distribution]]";
    let more = fleet(&[FIRST, SECOND], "").replace(
        "kms_keys = { \"*\" = \"alias/images\" }",
        "kms_keys = { \"*\" = \"alias/images\", eu-west-1 = \"alias/images-eu\" }",
    );
    assert!(more.contains(keyed) && more.contains("alias/images-eu"));
    let changed = load(&workspace, &more, true);
    let night_three = runtime.block_on(crate::sharing::night(&sim, &changed));
    // Reused: 2 builds, their 2 own copies, and the first account's 2 copies in us-east-1; made: the first
    // account's 2 in eu-west-1 (its key changed) and the second account's 4.
    assert_eq!((night_three.failed, night_three.reused, night_three.succeeded), (0, 6, 12), "{night_three:?}");
    runtime.block_on(async {
        assert_eq!(images_in(&sim, &place(FIRST, "us-east-1")).await.len(), 2, "night one's copies, reused");
        let eu = images_in(&sim, &place(FIRST, "eu-west-1")).await;
        assert_eq!(eu.len(), 4, "night one's and the new key's: {eu:?}");
        let new_key = eu
            .iter()
            .filter(|image| image.tags.get("fleetbake:kms-key").map(String::as_str) == Some("alias/images-eu"));
        assert_eq!(new_key.count(), 2, "{eu:?}");
        for region in ["us-east-1", "eu-west-1"] {
            assert_eq!(images_in(&sim, &place(SECOND, region)).await.len(), 2, "{SECOND}/{region}: made");
        }
        for region in ["us-west-2", "us-east-1"] {
            assert_eq!(images_in(&sim, &own(region)).await.len(), 2, "own {region}: reused, none made");
        }
    });
}

/// Credentials of `role`, assumed through moto's STS: moto then serves the role's account to them.
async fn assumed(moto: &crate::harness::Moto, role: &str) -> aws_sdk_kms::config::Credentials {
    let sts = aws_sdk_sts::Client::from_conf(
        aws_sdk_sts::Config::builder()
            .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
            .region(aws_sdk_sts::config::Region::new("us-west-2"))
            .endpoint_url(&moto.endpoint)
            .credentials_provider(aws_sdk_sts::config::Credentials::new("testing", "testing", None, None, "tests"))
            .build(),
    );
    let answer = sts.assume_role().role_arn(role).role_session_name("test").send().await.unwrap();
    let credentials = answer.credentials().unwrap();
    aws_sdk_kms::config::Credentials::new(
        credentials.access_key_id(),
        credentials.secret_access_key(),
        Some(credentials.session_token().to_string()),
        None,
        "assumed",
    )
}

/// On the real path (the binary, aws-sdk → moto): the preflight assumes each account's role with STS
/// AssumeRole and reads that account's key there. The first account has its key; the second has none: only
/// the second is named, with its region and role, and the run would not start.
#[test]
fn the_preflight_on_moto_assumes_each_role_and_names_the_account_without_its_key() {
    use crate::harness::{runtime, Moto, Sshd};
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let role = |account: &str| format!("arn:aws:iam::{account}:role/image-distribution");
    runtime().block_on(async {
        let kms = aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::Config::builder()
                .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
                .region(aws_sdk_kms::config::Region::new("us-east-1"))
                .endpoint_url(&moto.endpoint)
                .credentials_provider(assumed(&moto, &role(FIRST)).await)
                .build(),
        );
        let key = kms.create_key().description("the first account's image key").send().await.unwrap();
        let id = key.key_metadata().unwrap().key_id().to_string();
        kms.create_alias().alias_name("alias/images").target_key_id(id).send().await.unwrap();
    });
    let header = crate::matrix::fleet_header_at(&moto.endpoint, &sshd);
    let fleet = format!(
        "{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {}\n\n[regions]\nus-west-2 = []\n\n\
         [[distribution]]\naccounts = [\"{FIRST}\", \"{SECOND}\"]\nregions = [\"us-east-1\"]\n\
         role_arn = \"arn:aws:iam::{{account}}:role/image-distribution\"\nkms_keys = {{ \"*\" = \"alias/images\" }}\n",
        crate::matrix::AL2023
    );
    let path = workspace.write("fleet.toml", &fleet);
    let preflight = workspace.fleetbake(&["preflight", path.to_str().unwrap()]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    let failed: Vec<&str> = preflight.stdout.lines().filter(|line| line.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 1, "{}", preflight.stdout);
    assert!(
        failed[0].starts_with(&format!("FAIL us-east-1: account {SECOND} (role `{}`)", role(SECOND))),
        "{}",
        failed[0]
    );
    assert!(failed[0].contains("KMS key `alias/images` is not found"), "{}", failed[0]);
    let first = format!(
        "ok   us-east-1: account {FIRST} (role `{}`): KMS key `alias/images`: arn:aws:kms:us-east-1:{FIRST}:key/",
        role(FIRST)
    );
    assert!(preflight.stdout.contains(&first), "{first} in:\n{}", preflight.stdout);
    for account in [FIRST, SECOND] {
        let answers =
            format!("ok   account {account} (role `{}`): the role answers; 1 of its 1 regions enabled", role(account));
        assert!(preflight.stdout.contains(&answers), "{answers} in:\n{}", preflight.stdout);
    }
}

/// An account whose role cannot be assumed (STS refuses AssumeRole for it, through the proxy in front of moto):
/// the preflight names it with its role and says its copies would all fail; `gc` names it and exits 1, having
/// surveyed everywhere else; the other account is looked into as usual.
#[test]
fn a_role_that_cannot_be_assumed_is_named_by_the_preflight_and_by_gc() {
    use crate::harness::{Moto, Sshd};
    use crate::proxy::{Answer, Fault, FaultProxy};
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(&moto.endpoint, |request| {
        if request.action == "AssumeRole" && request.body.contains(SECOND) {
            Answer::Fail(Fault {
                status: 403,
                code: "AccessDenied",
                message: "not authorized to perform: sts:AssumeRole",
            })
        } else {
            Answer::Forward
        }
    });
    let workspace = Workspace::new();
    let header = crate::matrix::fleet_header_at(&proxy.endpoint, &sshd);
    let fleet = format!(
        "{header}\n[[flavor]]\nname = \"base\"\nsource_ami = {}\n\n[regions]\nus-west-2 = []\n\n\
         [retention]\nkeep = 1\n\n\
         [[distribution]]\naccounts = [\"{FIRST}\", \"{SECOND}\"]\nregions = [\"us-east-1\", \"eu-west-1\"]\n\
         role_arn = \"arn:aws:iam::{{account}}:role/image-distribution\"\n",
        crate::matrix::AL2023
    );
    let path = workspace.write("fleet.toml", &fleet);
    let role = format!("arn:aws:iam::{SECOND}:role/image-distribution");

    let preflight = workspace.fleetbake(&["preflight", path.to_str().unwrap()]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    let failed: Vec<&str> = preflight.stdout.lines().filter(|line| line.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 1, "one line for the account, not one per check: {}", preflight.stdout);
    assert!(
        failed[0].starts_with(&format!("FAIL account {SECOND} (role `{role}`): cannot act in it")),
        "{}",
        failed[0]
    );
    assert!(failed[0].contains("its copies would all fail"), "{}", failed[0]);
    assert!(preflight.stdout.contains(&format!("ok   account {FIRST} ")), "{}", preflight.stdout);

    let gc = workspace.fleetbake(&["gc", path.to_str().unwrap()]);
    assert_eq!(gc.code, 1, "{}{}", gc.stdout, gc.stderr);
    let named: Vec<&str> = gc.stdout.lines().filter(|line| line.contains(SECOND)).collect();
    assert_eq!(named.len(), 1, "{}", gc.stdout);
    assert!(
        named[0].starts_with(&format!("could not survey account {SECOND} in us-east-1 acting as `{role}`")),
        "{}",
        named[0]
    );
    assert!(gc.stdout.contains("; 1 failed"), "{}", gc.stdout);
    // The first account was looked into, in both its regions, acting as its role.
    let describes = proxy.bodies("DescribeImages").len();
    assert!(describes >= 3, "the own region and the first account's two: {describes}");
}

/// The account the run acts as named as a destination is the preflight's failure (the own account's, so
/// `matrix` stops before anything is made): its "copies" would be the builder's own images, counted twice.
#[test]
fn the_own_account_as_a_destination_fails_the_preflight_and_stops_the_run() {
    let workspace = Workspace::new();
    let own = fleetbake::cloud::sim::SIMULATED_ACCOUNT;
    let path = workspace.write("fleet.toml", &fleet(&[FIRST, own], ""));
    let preflight = workspace.fleetbake(&["preflight", path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    let refused = format!("FAIL `[[distribution]] accounts` names {own}, the account the run acts as");
    assert!(preflight.stdout.contains(&refused), "{refused} in:\n{}", preflight.stdout);
    let run = workspace.fleetbake(&["matrix", path.to_str().unwrap(), "--cloud", "sim"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(!workspace.path("manifest.sim.json").exists(), "stopped before anything was made: {}", run.stderr);
}
