//! Images other accounts own (`[[distribution]]`) in everything a run writes: the manifest's `distributed`
//! entries (version 2), `manifest get --account`, `manifest diff`, the Packer manifest, the `--events` lines,
//! the plain lines and the summary, and `[publish] accounts`; and a version-1 manifest still read. Through the
//! binary on the simulated cloud (`--cloud sim`), which has run a distribution naively since the spine landed:
//! nothing here depends on its cross-account rules.

use serde_json::Value;

use crate::harness::Workspace;
use crate::sim::run_sim_with;

const OTHER: &str = "222233334444";
const THIRD: &str = "555566667777";

/// Two flavors built in us-east-1 and copied to eu-west-1; both distributed into two accounts' us-east-1 and
/// eu-west-1; published as SSM parameters (`publish` appended to `[publish]`).
fn fleet(publish: &str) -> String {
    format!(
        r#"[fleet]
name = "distributed"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "base"
source_ami = {{ owners = ["099720109477"], name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*" }}
provisioners = [{{ type = "shell", inline = ["echo base"] }}]

[[flavor]]
name = "web"
source_ami = {{ owners = ["099720109477"], name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*" }}
provisioners = [{{ type = "shell", inline = ["echo web"] }}]

[regions]
us-east-1 = ["eu-west-1"]

[ssh]
source_cidrs = ["203.0.113.5/32"]

[[distribution]]
accounts = ["{OTHER}", "{THIRD}"]
regions = ["us-east-1", "eu-west-1"]
role_arn = "arn:aws:iam::{{account}}:role/image-distribution"

[publish]
ssm_parameter = "/images/{{flavor}}"
{publish}

[sim]
accounts = ["{OTHER}", "{THIRD}"]
"#
    )
}

fn text(workspace: &Workspace, relative: &str) -> String {
    std::fs::read_to_string(workspace.path(relative)).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

fn get(workspace: &Workspace, args: &[&str]) -> crate::harness::Outcome {
    let manifest = workspace.path("manifest.sim.json");
    let mut all = vec!["manifest", "get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--manifest", manifest.to_str().unwrap()]);
    workspace.fleetbake(&all)
}

#[test]
fn another_account_s_copies_are_named_by_account_in_every_output_and_published_there() {
    let workspace = Workspace::new();
    let events = workspace.path("events.jsonl");
    let packer = workspace.path("packer.json");
    let run = run_sim_with(
        &workspace,
        &fleet("accounts = true"),
        &["--events", events.to_str().unwrap(), "--packer-manifest", packer.to_str().unwrap()],
    );
    assert_eq!(run.outcome.code, 0, "{}", run.outcome.stderr);
    let manifest = &run.manifest;
    assert_eq!(manifest["version"], 2);
    assert_eq!(manifest["status"], "complete");

    // The own account's images where deploy tools always read them; the accounts' copies apart, each its own.
    let mut ids: Vec<String> = Vec::new();
    for flavor in ["base", "web"] {
        let own = manifest["artifacts"][flavor].as_object().unwrap();
        assert_eq!(own.keys().collect::<Vec<_>>(), ["eu-west-1", "us-east-1"], "{manifest}");
        assert!(own.values().all(|entry| entry.get("account").is_none()), "{manifest}");
        ids.extend(own.values().map(|entry| entry["image_id"].as_str().unwrap().to_string()));
        let accounts = manifest["distributed"][flavor].as_object().unwrap();
        assert_eq!(accounts.keys().collect::<Vec<_>>(), [OTHER, THIRD], "{manifest}");
        for (account, regions) in accounts {
            let regions = regions.as_object().unwrap();
            assert_eq!(regions.keys().collect::<Vec<_>>(), ["eu-west-1", "us-east-1"], "{manifest}");
            for entry in regions.values() {
                assert_eq!(entry["account"], account.as_str(), "{entry}");
                assert_eq!(entry["build_region"], "us-east-1", "{entry}");
                ids.push(entry["image_id"].as_str().unwrap().to_string());
                // Published in that account (`accounts = true`): its own parameter's first version.
                let published = entry["published"].as_array().unwrap();
                assert_eq!(published.len(), 1, "{entry}");
                assert_eq!(published[0]["name"], format!("/images/{flavor}"), "{entry}");
                assert_eq!(published[0]["version"], 1, "{entry}");
            }
        }
    }
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((ids.len(), distinct.len()), (12, 12), "every place its own image: {manifest}");

    // `manifest get`: the own account's by default, an account's copy with `--account`.
    let own = get(&workspace, &["base", "us-east-1"]);
    assert_eq!(own.code, 0, "{}", own.stderr);
    assert_eq!(own.stdout.trim(), manifest["artifacts"]["base"]["us-east-1"]["image_id"]);
    let theirs = get(&workspace, &["base", "us-east-1", "--account", OTHER]);
    assert_eq!(theirs.code, 0, "{}", theirs.stderr);
    assert_eq!(theirs.stdout.trim(), manifest["distributed"]["base"][OTHER]["us-east-1"]["image_id"]);
    let nobody = get(&workspace, &["base", "us-east-1", "--account", "999988887777"]);
    assert_eq!(nobody.code, 1, "{}", nobody.stderr);
    assert!(nobody.stderr.contains("owned by account 999988887777 in us-east-1"), "{}", nobody.stderr);

    // The lines and the summary name the account; the own account's read as before.
    let stderr = &run.outcome.stderr;
    let other_copy = manifest["distributed"]["base"][OTHER]["eu-west-1"]["image_id"].as_str().unwrap();
    assert!(stderr.contains(&format!("==> base/{OTHER}/eu-west-1: image {other_copy} `")), "{stderr}");
    assert!(
        stderr.contains(&format!("==> base/{OTHER}/eu-west-1: published to SSM parameter /images/base (version 1)")),
        "{stderr}"
    );
    let own_copy = manifest["artifacts"]["base"]["eu-west-1"]["image_id"].as_str().unwrap();
    assert!(stderr.contains(&format!("==> base/eu-west-1: image {own_copy} `")), "{stderr}");
    let summary_line = stderr.lines().find(|line| line.contains("    base: ")).expect("a summary line for base");
    assert!(summary_line.contains("base: 6/6 regions"), "{summary_line}");
    assert!(summary_line.contains(&format!("{OTHER}/eu-west-1 {other_copy}")), "{summary_line}");
    assert!(summary_line.contains(&format!("eu-west-1 {own_copy}")), "{summary_line}");
    for account in [OTHER, THIRD] {
        assert!(stderr.contains(&format!("    account {account}: 4/4 copies\n")), "{stderr}");
    }

    // `--summary-json`: how each other account's copies ended, and the copies it owns.
    let accounts = run.summary["accounts"].as_object().expect("a section per account");
    assert_eq!(accounts.keys().collect::<Vec<_>>(), [OTHER, THIRD], "{}", run.summary);
    for (account, jobs) in accounts {
        assert_eq!(
            (&jobs["planned"], &jobs["succeeded"], &jobs["failed"]),
            (&4.into(), &4.into(), &0.into()),
            "{jobs}"
        );
        for flavor in ["base", "web"] {
            for region in ["us-east-1", "eu-west-1"] {
                let listed = &manifest["distributed"][flavor][account.as_str()][region]["image_id"];
                assert_eq!(&jobs["images"][flavor][region], listed, "{jobs}");
            }
        }
    }

    // `--events`: another account's image lines carry `account`; the own account's do not.
    let available: Vec<Value> = text(&workspace, "events.jsonl")
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["type"] == "image_available")
        .collect();
    assert_eq!(available.len(), 12);
    let other_line = available
        .iter()
        .find(|event| event["artifact"]["image_id"] == other_copy)
        .expect("an event for the copy in the other account");
    assert_eq!((&other_line["account"], &other_line["region"]), (&OTHER.into(), &"eu-west-1".into()), "{other_line}");
    let own_line = available.iter().find(|event| event["artifact"]["image_id"] == own_copy).unwrap();
    assert!(own_line.get("account").is_none(), "{own_line}");

    // The Packer manifest: per flavor the own account's build first, then one per account, named in
    // `custom_data.account`, each with Packer's `region:ami` list.
    let packer: Value = serde_json::from_str(&text(&workspace, "packer.json")).unwrap();
    let builds: Vec<(String, Option<String>, String)> = packer["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|build| {
            let account = build["custom_data"].get("account").map(|id| id.as_str().unwrap().to_string());
            (build["name"].as_str().unwrap().to_string(), account, build["artifact_id"].as_str().unwrap().to_string())
        })
        .collect();
    let expected = |flavor: &str, account: Option<&str>| {
        let regions = match account {
            None => &manifest["artifacts"][flavor],
            Some(id) => &manifest["distributed"][flavor][id],
        };
        let ids = ["eu-west-1", "us-east-1"]
            .map(|region| format!("{region}:{}", regions[region]["image_id"].as_str().unwrap()));
        (flavor.to_string(), account.map(str::to_string), ids.join(","))
    };
    assert_eq!(
        builds,
        [
            expected("base", None),
            expected("base", Some(OTHER)),
            expected("base", Some(THIRD)),
            expected("web", None),
            expected("web", Some(OTHER)),
            expected("web", Some(THIRD)),
        ]
    );
}

/// `[publish] accounts = [one]`: that account's copies are published in it, the other's are not; a run of one
/// flavor (`--only`) keeps the other flavor's images in every account; a version-1 manifest (what fleetbake
/// wrote before accounts) still reads for `manifest get`, `manifest diff` and a selective run, which writes
/// version 2.
#[test]
fn publish_in_the_accounts_listed_and_a_selective_run_keeps_every_account_s_images_over_either_version() {
    let workspace = Workspace::new();
    let first = run_sim_with(&workspace, &fleet(&format!("accounts = [\"{OTHER}\"]")), &[]);
    assert_eq!(first.outcome.code, 0, "{}", first.outcome.stderr);
    let manifest = &first.manifest;
    for region in ["us-east-1", "eu-west-1"] {
        let published = |account: &str| manifest["distributed"]["web"][account][region].get("published").cloned();
        assert_eq!(published(OTHER).unwrap()[0]["name"], "/images/web", "{manifest}");
        assert_eq!(published(THIRD), None, "{THIRD} is not listed: {manifest}");
        assert!(manifest["artifacts"]["web"][region]["published"].is_array(), "the own account's as before");
    }
    let name = |manifest: &Value, flavor: &str, account: &str| {
        manifest["distributed"][flavor][account]["us-east-1"]["name"].as_str().unwrap().to_string()
    };

    // `--only web`: base's images, its copies in both accounts, are this run's to keep, untouched.
    let again = run_sim_with(&workspace, &fleet(&format!("accounts = [\"{OTHER}\"]")), &["--only", "web"]);
    assert_eq!(again.outcome.code, 0, "{}", again.outcome.stderr);
    let after = &again.manifest;
    assert_ne!(after["run_id"], manifest["run_id"]);
    for account in [OTHER, THIRD] {
        assert_eq!(after["distributed"]["base"][account], manifest["distributed"]["base"][account], "{after}");
        assert_ne!(name(after, "web", account), name(manifest, "web", account), "web is made again: {after}");
        assert!(name(after, "web", account).contains(after["run_id"].as_str().unwrap()), "{after}");
    }
    assert_eq!(after["artifacts"]["base"], manifest["artifacts"]["base"]);

    // The same file as fleetbake wrote it before accounts: version 1, no `distributed`.
    let mut old = after.clone();
    old["version"] = 1.into();
    old.as_object_mut().unwrap().remove("distributed");
    let old_path = workspace.write("old.json", &serde_json::to_string_pretty(&old).unwrap());
    let old_get =
        workspace.fleetbake(&["manifest", "get", "base", "eu-west-1", "--manifest", old_path.to_str().unwrap()]);
    assert_eq!(old_get.code, 0, "{}", old_get.stderr);
    assert_eq!(old_get.stdout.trim(), after["artifacts"]["base"]["eu-west-1"]["image_id"]);
    let new_path = workspace.path("manifest.sim.json");
    let diff = workspace.fleetbake(&["manifest", "diff", old_path.to_str().unwrap(), new_path.to_str().unwrap()]);
    assert_eq!(diff.code, 0, "{}", diff.stderr);
    let base_copy = after["distributed"]["base"][OTHER]["eu-west-1"]["image_id"].as_str().unwrap();
    assert!(diff.stdout.contains(&format!("+ base/{OTHER}/eu-west-1 {base_copy}")), "{}", diff.stdout);
    assert_eq!(diff.stdout.lines().count(), 8, "each account's copies gained, nothing else: {}", diff.stdout);

    // A selective run over the version-1 file keeps what it lists outside its selection, and writes version 2.
    std::fs::copy(&old_path, &new_path).unwrap();
    let over_old = run_sim_with(&workspace, &fleet(""), &["--only", "web"]);
    assert_eq!(over_old.outcome.code, 0, "{}", over_old.outcome.stderr);
    assert_eq!(over_old.manifest["version"], 2);
    assert_eq!(over_old.manifest["artifacts"]["base"], old["artifacts"]["base"], "{}", over_old.manifest);
    assert!(over_old.manifest["distributed"]["web"][THIRD]["us-east-1"]["image_id"].is_string());
    assert!(over_old.manifest["distributed"].get("base").is_none(), "the old file listed no copies of base");
}

#[test]
fn publish_accounts_must_be_accounts_a_distribution_copies_into() {
    let workspace = Workspace::new();
    let path = workspace.write("fleet.toml", &fleet("accounts = [\"222233334444\", \"999988887777\"]"));
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    let line = outcome.stderr.lines().find(|line| line.contains("publish.accounts")).expect("names the key");
    assert!(line.contains("fleet.toml:"), "{line}");
    assert!(line.contains("`999988887777` is not an account a `[[distribution]]` copies into"), "{line}");
    assert!(!outcome.stderr.contains("`222233334444` is not"), "{}", outcome.stderr);

    let before_distribution = fleet("");
    let without = before_distribution.split("[[distribution]]").next().unwrap().to_string()
        + "[publish]\nssm_parameter = \"/images/{flavor}\"\naccounts = true\n";
    let path = workspace.write("fleet.toml", &without);
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(outcome.stderr.contains("no `[[distribution]]` copies into another account"), "{}", outcome.stderr);
}

/// `when = "each"`: a listed account's copy is published in that account as soon as it is made, the other
/// account's not at all; the preflight checks the parameters of the listed account only, naming it.
#[test]
fn each_image_is_published_in_a_listed_account_and_the_preflight_checks_that_account_s_targets() {
    let workspace = Workspace::new();
    let publish = format!("when = \"each\"\naccounts = [\"{OTHER}\"]");
    let run = run_sim_with(&workspace, &fleet(&publish), &[]);
    assert_eq!(run.outcome.code, 0, "{}", run.outcome.stderr);
    for flavor in ["base", "web"] {
        for region in ["us-east-1", "eu-west-1"] {
            let entry = |account: &str| run.manifest["distributed"][flavor][account][region].clone();
            assert_eq!(entry(OTHER)["published"][0]["name"], format!("/images/{flavor}"), "{}", run.manifest);
            assert_eq!(entry(OTHER)["published"][0]["version"], 1, "its own parameter: {}", run.manifest);
            assert!(
                entry(THIRD)["image_id"].is_string() && entry(THIRD).get("published").is_none(),
                "{}",
                run.manifest
            );
        }
    }

    let path = workspace.path("fleet.toml");
    let preflight = workspace.fleetbake(&["preflight", path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 0, "{}", preflight.stderr);
    let checks = format!("{}{}", preflight.stdout, preflight.stderr);
    for region in ["us-east-1", "eu-west-1"] {
        let line = format!("{region}: account {OTHER}: SSM parameter `/images/base` does not exist yet");
        assert!(checks.contains(&line), "{checks}");
        assert!(checks.contains(&format!("{region}: SSM parameter `/images/base`")), "the own account's: {checks}");
    }
    // The third account's role and regions are checked (every distribution account is), its parameters not.
    assert!(!checks.contains(&format!("account {THIRD}: SSM parameter")), "not listed, not checked: {checks}");
}

/// Copies refused in one region fail in every account that region was to hold them: each failure names its
/// account in the manifest, the events, the lines, the summary (a line per account) and `--summary-json`,
/// and the own account's failures keep their shape.
#[test]
fn another_account_s_failed_copies_are_named_by_account() {
    let workspace = Workspace::new();
    let events = workspace.path("events.jsonl");
    let refused = "faults = [{ action = \"CopyImage\", region = \"eu-west-1\", error = \"UnauthorizedOperation\", probability = 1.0 }]\n";
    let run = run_sim_with(&workspace, &(fleet("") + refused), &["--events", events.to_str().unwrap()]);
    assert_eq!(run.outcome.code, 1, "{}", run.outcome.stderr);
    let failures = run.manifest["failures"].as_array().unwrap();
    let mut named: Vec<(String, String, String)> = failures
        .iter()
        .filter(|failure| failure["stage"] == "copy")
        .map(|failure| {
            let account = failure.get("account").map_or("own".to_string(), |id| id.as_str().unwrap().to_string());
            (failure["flavor"].as_str().unwrap().to_string(), account, failure["region"].as_str().unwrap().to_string())
        })
        .collect();
    named.sort();
    let expected: Vec<(String, String, String)> = ["base", "web"]
        .iter()
        .flat_map(|flavor| {
            [OTHER, THIRD, "own"].map(|account| (flavor.to_string(), account.to_string(), "eu-west-1".to_string()))
        })
        .collect();
    assert_eq!(named, expected, "{}", run.manifest);
    for account in [OTHER, THIRD] {
        assert!(run.manifest["distributed"]["base"][account].get("eu-west-1").is_none(), "{}", run.manifest);
        assert!(run.manifest["distributed"]["base"][account]["us-east-1"]["image_id"].is_string());
        let jobs = &run.summary["accounts"][account];
        assert_eq!(
            (&jobs["planned"], &jobs["succeeded"], &jobs["failed"]),
            (&4.into(), &2.into(), &2.into()),
            "{jobs}"
        );
        let line = format!("    account {account}: 2/4 copies; failed: base/eu-west-1 (copy), web/eu-west-1 (copy)");
        assert!(run.outcome.stderr.contains(&line), "{}", run.outcome.stderr);
        let failed_line = format!("==> base/{account}/eu-west-1: failed at copy: ");
        assert!(run.outcome.stderr.contains(&failed_line), "{}", run.outcome.stderr);
    }
    assert!(run.outcome.stderr.contains("==> base/eu-west-1: failed at copy: "), "{}", run.outcome.stderr);
    let failed_events: Vec<Value> = text(&workspace, "events.jsonl")
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| event["type"] == "job_failed" && event["stage"] == "copy")
        .collect();
    assert_eq!(failed_events.len(), 6);
    assert_eq!(failed_events.iter().filter(|event| event.get("account").is_some()).count(), 4, "{failed_events:?}");
}

/// `when = "flavor_complete"` with an account whose role is refused: that account's copies fail, its
/// publication (and its preflight checks of the parameters) hold back nothing else: the own account's images and
/// the other account's copies are published.
#[test]
fn an_account_whose_copies_fail_holds_back_only_its_own_publication() {
    let workspace = Workspace::new();
    let text = fleet("accounts = true") + &format!("account_faults = {{ \"{THIRD}\" = \"role\" }}\n");
    let run = run_sim_with(&workspace, &text, &[]);
    assert_eq!(run.outcome.code, 1, "its copies failed: {}", run.outcome.stderr);
    let manifest = &run.manifest;
    for flavor in ["base", "web"] {
        for region in ["us-east-1", "eu-west-1"] {
            let own = &manifest["artifacts"][flavor][region];
            assert_eq!(own["published"][0]["name"], format!("/images/{flavor}"), "{manifest}");
            let other = &manifest["distributed"][flavor][OTHER][region];
            assert_eq!(other["published"][0]["version"], 1, "{manifest}");
            assert!(manifest["distributed"][flavor].get(THIRD).is_none(), "{manifest}");
        }
    }
    let failures = manifest["failures"].as_array().unwrap();
    assert!(!failures.is_empty() && failures.iter().all(|failure| failure["account"] == THIRD), "{manifest}");
}
