//! `[[distribution]] accounts` naming organizational units: resolved into their ACTIVE accounts (nested units
//! included, the own account left out, an account also named directly counted once) before the plan is made.
//! On moto (AWS Organizations set up with boto3 from moto's own environment), `fleetbake plan` and `preflight`
//! through the recording proxy; a unit that does not exist fails the preflight and stops `matrix` before any
//! EC2 call. On the simulated cloud (`[sim] organizational_units`), a run distributes into the unit's accounts.

use std::path::PathBuf;

use crate::harness::*;
use crate::matrix::AL2023;
use crate::sim::run_sim_with;

/// The own account of moto (its organization's management account) and of the simulated cloud.
const OWN: &str = "123456789012";

/// An organization on moto: a unit `outer` holding account `a`, the own account, a suspended account and a
/// child unit `inner` holding account `b`.
struct Organization {
    outer: String,
    a: String,
    b: String,
    suspended: String,
}

const SETUP: &str = r#"
import json, sys
import boto3
org = boto3.client("organizations", endpoint_url=sys.argv[1], region_name="us-east-1",
                   aws_access_key_id="testing", aws_secret_access_key="testing")
org.create_organization(FeatureSet="ALL")
root = org.list_roots()["Roots"][0]["Id"]
outer = org.create_organizational_unit(ParentId=root, Name="workloads")["OrganizationalUnit"]["Id"]
inner = org.create_organizational_unit(ParentId=outer, Name="prod")["OrganizationalUnit"]["Id"]
def account(name, parent):
    made = org.create_account(Email=name + "@example.com", AccountName=name)["CreateAccountStatus"]["AccountId"]
    org.move_account(AccountId=made, SourceParentId=root, DestinationParentId=parent)
    return made
a = account("a", outer)
b = account("b", inner)
suspended = account("gone", outer)
org.close_account(AccountId=suspended)
me = org.describe_organization()["Organization"]["MasterAccountId"]
org.move_account(AccountId=me, SourceParentId=root, DestinationParentId=outer)
print(json.dumps({"outer": outer, "a": a, "b": b, "suspended": suspended}))
"#;

/// moto's Python (beside its moto_server), which has boto3.
fn moto_python() -> PathBuf {
    let server = std::env::var("FLEETBAKE_MOTO_SERVER").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
            .join(".cache/fleetbake/tools/venv/bin/moto_server")
    });
    server.with_file_name("python")
}

fn organize(moto: &Moto) -> Organization {
    let output = std::process::Command::new(moto_python())
        .args(["-c", SETUP, &moto.moto_endpoint])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("moto's python runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let made: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let text = |key: &str| made[key].as_str().unwrap().to_string();
    Organization { outer: text("outer"), a: text("a"), b: text("b"), suspended: text("suspended") }
}

/// One flavor built in us-west-2, distributed into `accounts` in us-east-1, with AWS at `endpoint`.
fn fleet_at(endpoint: &str, accounts: &[&str]) -> String {
    let accounts: Vec<String> = accounts.iter().map(|id| format!("\"{id}\"")).collect();
    format!(
        r#"[fleet]
name = "units"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

[aws]
endpoint_url = "{endpoint}"

[ssh]
source_cidrs = ["127.0.0.1/32"]

[[flavor]]
name = "base"
source_ami = {AL2023}

[regions]
us-west-2 = []

[[distribution]]
accounts = [{}]
regions = ["us-east-1"]
role_arn = "arn:aws:iam::{{account}}:role/image-distribution"
"#,
        accounts.join(", ")
    )
}

/// The IAM actions `docs/iam-policy.json` allows.
fn allowed_actions() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/iam-policy.json")).unwrap()
}

#[test]
fn plan_and_preflight_resolve_a_unit_into_its_active_accounts_nested_units_included() {
    let moto = Moto::start();
    let org = organize(&moto);
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    // `a` is named directly and is in the unit: one account.
    let fleet = workspace.write("fleet.toml", &fleet_at(&proxy.endpoint, &[&org.a, &org.outer]));

    let plan = workspace.fleetbake(&["plan", fleet.to_str().unwrap()]);
    assert_eq!(plan.code, 0, "stdout:\n{}\nstderr:\n{}", plan.stdout, plan.stderr);
    let copies: Vec<&str> = plan.stdout.lines().filter(|line| line.trim_start().starts_with("copy to")).collect();
    assert_eq!(
        copies.iter().map(|line| line.trim()).collect::<Vec<_>>(),
        [format!("copy to {}/us-east-1", org.a), format!("copy to {}/us-east-1", org.b)],
        "the direct account once, the nested unit's account; not the own account nor the suspended one:\n{}",
        plan.stdout
    );
    // Organizations asked with the unit and its child unit as parents, every call one the policy allows.
    let parents: Vec<String> =
        proxy.bodies("ListAccountsForParent").iter().map(|body| body.to_string()).collect::<Vec<_>>();
    assert_eq!(parents.len(), 2, "the unit and its child: {parents:?}");
    assert!(parents[0].contains(&org.outer), "{parents:?}");
    let children = proxy.bodies("ListChildren");
    assert!(children.iter().all(|body| body.contains("ORGANIZATIONAL_UNIT")), "{children:?}");
    let policy = allowed_actions();
    for action in proxy.actions() {
        let named = fleetbake::cloud::Action::from_name(&action).map(|action| action.iam_name());
        let named = named.unwrap_or_else(|| panic!("{action}: a call fleetbake does not list"));
        assert!(policy.contains(&format!("\"{named}\"")), "{named} is not in docs/iam-policy.json");
    }

    let preflight = workspace.fleetbake(&["preflight", fleet.to_str().unwrap()]);
    let unit_line = preflight
        .stdout
        .lines()
        .find(|line| line.contains(&format!("organizational unit {}", org.outer)))
        .unwrap_or_else(|| panic!("no line about the unit:\n{}", preflight.stdout));
    assert!(unit_line.starts_with("ok"), "{unit_line}");
    assert!(unit_line.contains(&org.a) && unit_line.contains(&org.b), "{unit_line}");
    assert!(!unit_line.contains(&org.suspended) && !unit_line.contains(OWN), "{unit_line}");
    // The unit's account is checked like a named one: its role assumed.
    assert!(
        preflight.stdout.contains(&format!("arn:aws:iam::{}:role/image-distribution", org.b)),
        "{}",
        preflight.stdout
    );

    // gc surveys the unit's accounts too: it assumes the nested unit's account's role.
    let role_of_b = format!("arn%3Aaws%3Aiam%3A%3A{}%3Arole%2Fimage-distribution", org.b);
    let assumed =
        |proxy: &FaultProxy| proxy.bodies("AssumeRole").iter().filter(|body| body.contains(&role_of_b)).count();
    let before = assumed(&proxy);
    let gc = workspace.fleetbake(&["gc", fleet.to_str().unwrap(), "--dry-run"]);
    assert_eq!(gc.code, 0, "stdout:\n{}\nstderr:\n{}", gc.stdout, gc.stderr);
    assert!(assumed(&proxy) > before, "gc acted in {} (a unit's account)", org.b);
}

#[test]
fn a_unit_that_does_not_exist_fails_the_preflight_and_stops_the_run_before_any_ec2_call() {
    let moto = Moto::start();
    organize(&moto);
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let missing = "ou-zzzz-zzzzzzzz";
    let fleet = workspace.write("fleet.toml", &fleet_at(&proxy.endpoint, &["222233334444", missing]));

    let preflight = workspace.fleetbake(&["preflight", fleet.to_str().unwrap()]);
    assert_eq!(preflight.code, 1, "stdout:\n{}\nstderr:\n{}", preflight.stdout, preflight.stderr);
    let fail = preflight.stdout.lines().find(|line| line.starts_with("FAIL")).expect("a failed check");
    assert!(fail.contains(missing) && fail.contains("[[distribution]] 1"), "{fail}");
    assert!(fail.contains("ParentNotFoundException"), "{fail}");

    let run = workspace.fleetbake(&["matrix", fleet.to_str().unwrap()]);
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains(missing), "{}", run.stderr);
    let mut actions = proxy.actions();
    actions.sort();
    actions.dedup();
    assert_eq!(actions, ["GetCallerIdentity", "ListAccountsForParent"], "no EC2 call, nothing made");
}

/// The simulated fleet of `crate::distribution`'s shape, smaller: two flavors, one build region, distributed
/// into `accounts` in two regions.
pub(crate) fn sim_fleet(accounts: &str, units: &str) -> String {
    format!(
        r#"[fleet]
name = "units"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

[[flavor]]
name = "web"
source_ami = {AL2023}

[[flavor]]
name = "api"
source_ami = {AL2023}

[regions]
us-west-2 = []

[ssh]
source_cidrs = ["203.0.113.5/32"]

[[distribution]]
accounts = [{accounts}]
regions = ["us-east-1", "eu-west-1"]
role_arn = "arn:aws:iam::{{account}}:role/image-distribution"

[sim]
accounts = ["222233334444", "555566667777", "888899990000"]
organizational_units = {units}
"#
    )
}

pub(crate) const SIM_UNITS: &str = r#"{ "ou-ab12-aaaaaaaa" = ["222233334444", "ou-ab12-bbbbbbbb"], "ou-ab12-bbbbbbbb" = ["555566667777", "123456789012"] }"#;

#[test]
fn on_the_simulated_cloud_a_run_distributes_into_a_units_accounts() {
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &sim_fleet(r#""888899990000", "ou-ab12-aaaaaaaa""#, SIM_UNITS), &[]);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    let summary = &run.summary;
    assert_eq!(summary["jobs"]["failed"], 0, "{summary}");
    // 2 builds, and 2 flavors × 2 regions in each of the three accounts (the own account in the unit is not one).
    assert_eq!(summary["jobs"]["succeeded"], 2 + 2 * 2 * 3, "{summary}");
    let images = summary["sim"]["images"].as_array().unwrap();
    for account in ["222233334444", "555566667777", "888899990000"] {
        let owned = images.iter().filter(|image| image["account"] == account).count();
        assert_eq!(owned, 2 * 2, "{account} owns a copy of each flavor in each region");
    }
    assert_eq!(images.iter().filter(|image| image["account"] == OWN).count(), 2, "the builds only");
}

#[test]
fn on_the_simulated_cloud_a_missing_unit_fails_the_preflight_naming_it() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &sim_fleet(r#""ou-ab12-cccccccc""#, SIM_UNITS));
    let preflight = workspace.fleetbake(&["preflight", fleet.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "stdout:\n{}\nstderr:\n{}", preflight.stdout, preflight.stderr);
    assert!(
        preflight.stdout.lines().any(|line| line.starts_with("FAIL")
            && line.contains("`ou-ab12-cccccccc` of [[distribution]] 1")
            && line.contains("ParentNotFoundException")),
        "{}",
        preflight.stdout
    );
    let run = workspace.fleetbake(&["matrix", fleet.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(run.code, 1, "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("FAIL") && run.stderr.contains("ou-ab12-cccccccc"), "{}", run.stderr);
    assert!(!workspace.path("manifest.sim.json").exists(), "nothing was run");
}

/// `--resume` resolves the units again and must find the plan the run started with: a unit that gained an
/// account since is refused, the message saying a unit changed; the same units resume.
#[test]
fn a_resume_refuses_a_unit_whose_accounts_changed_since_the_run_started() {
    use fleetbake::engine::preflight::units::{resolve, UnitsFrom};
    use fleetbake::engine::run::Start;
    use fleetbake::state::journal::JournalDir;
    let workspace = Workspace::new();
    let load = |units: &str| {
        let path = workspace.write("fleet.toml", &sim_fleet(r#""ou-ab12-aaaaaaaa""#, units));
        fleetbake::config::load(&path).unwrap()
    };
    let runtime = crate::sharing::paused_runtime();
    let resolved = |fleet| runtime.block_on(resolve(fleet, UnitsFrom::Simulated)).unwrap().0;
    let fleet = resolved(load(SIM_UNITS));
    assert_eq!(fleet.distributions.accounts(), ["222233334444", "555566667777"]);
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    let start = Start::fresh(&fleet, Some(JournalDir::of(&fleet)));
    let killed = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(60), crate::sim::run_on(&sim, &fleet, start, None)).await
    });
    assert!(killed.is_err(), "killed before its end");
    runtime.block_on(async { tokio::time::sleep(std::time::Duration::from_secs(1)).await });

    let grown = SIM_UNITS.replace(r#"["555566667777", "#, r#"["555566667777", "888899990000", "#);
    let mut changed = resolved(load(&grown));
    let Err(error) = fleetbake::state::resume::prepare(&mut changed) else { panic!("a changed plan is refused") };
    let error = error.to_string();
    assert!(error.contains("888899990000") && error.contains("is new"), "{error}");
    assert!(error.contains("organizational units of `[[distribution]]` (ou-ab12-aaaaaaaa)"), "{error}");

    let mut same = resolved(load(SIM_UNITS));
    assert!(fleetbake::state::resume::prepare(&mut same).is_ok(), "the same units resume");
}

/// The run's account may not list units (`[sim] organizations_fault`): the preflight's FAIL names the unit and
/// who may list it.
#[test]
fn on_the_simulated_cloud_an_account_that_may_not_list_units_is_told_who_may() {
    let workspace = Workspace::new();
    let text = sim_fleet(r#""ou-ab12-aaaaaaaa""#, SIM_UNITS) + "organizations_fault = \"access-denied\"\n";
    let fleet = workspace.write("fleet.toml", &text);
    let preflight = workspace.fleetbake(&["preflight", fleet.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "stdout:\n{}\nstderr:\n{}", preflight.stdout, preflight.stderr);
    let fail = preflight.stdout.lines().find(|line| line.starts_with("FAIL")).expect("a failed check");
    assert!(fail.contains("`ou-ab12-aaaaaaaa` of [[distribution]] 1"), "{fail}");
    assert!(fail.contains("AccessDeniedException"), "{fail}");
    assert!(fail.contains("management account or a delegated administrator"), "{fail}");
}

/// `[sim] organizational_units` and `organizations_fault`: each problem with its key, all at once (exit 2).
#[test]
fn sim_units_are_checked_with_their_place() {
    let workspace = Workspace::new();
    let units = r#"{ "ou-ab12-aaaaaaaa" = ["222233334444", "999999999999", "ou-ab12-dddddddd"], "ou-x" = [] }"#;
    let text = sim_fleet(r#""ou-ab12-aaaaaaaa""#, units) + "organizations_fault = \"sometimes\"\n";
    let fleet = workspace.write("fleet.toml", &text);
    let outcome = workspace.fleetbake(&["validate", fleet.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    for (key, says) in [
        ("sim.organizational_units.ou-ab12-aaaaaaaa[1]", "`999999999999` is neither an account in `[sim] accounts`"),
        ("sim.organizational_units.ou-ab12-aaaaaaaa[2]", "`ou-ab12-dddddddd` is neither"),
        ("sim.organizational_units.ou-x", "`ou-x` is not an organizational unit id"),
        ("sim.organizations_fault", "`sometimes` is not an Organizations fault"),
    ] {
        assert!(outcome.stderr.contains(&format!("`{key}`: {says}")), "no `{key}`: {says} in:\n{}", outcome.stderr);
    }
}

/// `[publish] accounts` may list a unit's account (validate cannot know it: the preflight checks it once the
/// unit is resolved); one no `[[distribution]]` copies into, named or through a unit, fails the preflight.
#[test]
fn publish_accounts_may_list_a_units_accounts() {
    let workspace = Workspace::new();
    let with_publish = |accounts: &str| {
        sim_fleet(r#""ou-ab12-aaaaaaaa""#, SIM_UNITS).replace(
            "[sim]",
            &format!("[publish]\nssm_parameter = \"/images/{{flavor}}\"\naccounts = {accounts}\n\n[sim]"),
        )
    };
    for accounts in [r#"["555566667777"]"#, "true"] {
        let fleet = workspace.write("fleet.toml", &with_publish(accounts));
        let outcome = workspace.fleetbake(&["validate", fleet.to_str().unwrap()]);
        assert_eq!(outcome.code, 0, "{accounts}: {}", outcome.stderr);
        assert!(
            outcome.stdout.contains("2 builds, 0 copies, and the copies into the accounts of 1 organizational units"),
            "{}",
            outcome.stdout
        );
    }
    let fleet = workspace.write("fleet.toml", &with_publish(r#"["555566667777", "888899990000"]"#));
    let preflight = workspace.fleetbake(&["preflight", fleet.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "stdout:\n{}\nstderr:\n{}", preflight.stdout, preflight.stderr);
    let failed: Vec<&str> = preflight.stdout.lines().filter(|line| line.starts_with("FAIL")).collect();
    assert_eq!(failed.len(), 1, "{}", preflight.stdout);
    assert!(failed[0].contains("`[publish] accounts` lists `888899990000`"), "{}", failed[0]);
}
