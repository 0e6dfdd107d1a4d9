//! `[publish]` against what SSM and EC2 refuse, on the simulated cloud (which models SSM's 100-version limit and
//! label rule, its asynchronous validation, fixed data types, and launch templates that exist only where
//! declared): publishing that lasts past 100 nights, a validation that fails, and a preflight that names the
//! targets a run would fail on.

use serde_json::Value;

use crate::harness::Workspace;
use crate::sim::{failures, run_on, run_sim_with};

/// One flavor built in one region, no copies, published to SSM (and, with `template`, a launch template).
fn one_image_fleet(sim: &str, template: bool) -> String {
    let launch_template = if template { "launch_template = \"{flavor}-nightly\"\n" } else { "" };
    format!(
        r#"[fleet]
name = "nightly"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "base"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
sim_provision = "1m"
provisioners = [{{ type = "shell", inline = ["true"] }}]

[regions]
us-west-2 = []

[ssh]
source_cidrs = ["203.0.113.5/32"]

[sim]
{sim}

[publish]
ssm_parameter = "/images/{{fleet}}/{{flavor}}"
{launch_template}"#
    )
}

/// The versions of SSM parameter `name` in the model's report: (version, labels), oldest first.
fn versions(published: &[String], name: &str) -> Vec<(u64, Vec<String>)> {
    let prefix = format!("us-west-2 ssm {name} v");
    published
        .iter()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let (number, rest) = rest.split_once(' ').unwrap();
            let labels = rest.rsplit_once('[').unwrap().1.trim_end_matches(']');
            let labels = labels.split(',').filter(|label| !label.is_empty()).map(str::to_string).collect();
            (number.parse().unwrap(), labels)
        })
        .collect()
}

/// SSM keeps 100 versions and refuses a new one while the oldest is labelled: with a label on every version a
/// nightly publisher stops at night 101. 101 nights on one simulated account (paused clock) all publish, the
/// parameter holds SSM's 100 newest versions, and fleetbake's labels stay on the newest 10.
#[test]
fn a_parameter_published_for_101_nights_keeps_taking_versions_and_its_labels_stay_bounded() {
    use fleetbake::engine::run::Start;
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &one_image_fleet("api_latency = \"10ms\"", false));
    let fleet = fleetbake::config::load(&fleet_path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    let mut last_run = String::new();
    for night in 1..=101 {
        let summary = runtime.block_on(run_on(&sim, &fleet, Start::fresh(&fleet, None), None));
        assert_eq!(
            (summary.succeeded, summary.failed),
            (1, 0),
            "night {night}: {summary:?} {}",
            std::fs::read_to_string(&fleet.manifest_path).unwrap_or_default()
        );
        let manifest: Value = serde_json::from_str(&std::fs::read_to_string(&fleet.manifest_path).unwrap()).unwrap();
        let published = &manifest["artifacts"]["base"]["us-west-2"]["published"];
        assert_eq!(published[0]["version"], night, "night {night}: {manifest}");
        last_run = manifest["run_id"].as_str().unwrap().to_string();
    }
    let report = runtime.block_on(async { sim.report(std::time::Duration::from_secs(2)) });
    let versions = versions(&report.published, "/images/nightly/base");
    assert_eq!(versions.len(), 100, "SSM keeps the newest 100: {versions:?}");
    assert_eq!((versions[0].0, versions[99].0), (2, 101), "{versions:?}");
    let labelled: Vec<&(u64, Vec<String>)> = versions.iter().filter(|(_, labels)| !labels.is_empty()).collect();
    assert_eq!(labelled.len(), fleetbake::steps::publish::KEEP_LABELS, "{labelled:?}");
    assert!(labelled.iter().all(|(number, labels)| *number > 91 && labels.len() == 1), "{labelled:?}");
    assert_eq!(versions[99].1, [format!("fleetbake-{last_run}")], "the newest carries the last run's label");
    assert!(report.leaked_resources.is_empty(), "{:?}", report.leaked_resources);
}

/// SSM validates an `aws:ec2:image` value after PutParameter answers: when the validation fails the version
/// never appears. That is a publish failure (exit 1, stage `publish`, the manifest saying why), not a success.
#[test]
fn a_failed_asynchronous_validation_is_a_publish_failure() {
    let workspace = Workspace::new();
    let text = one_image_fleet("faults = [{ action = \"PutParameter\", validation = \"fails\", nth = 1 }]", false);
    let run = run_sim_with(&workspace, &text, &["--no-preflight"]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    assert_eq!(failures(&run.manifest), [("base".into(), "us-west-2".into(), "publish".into(), None)]);
    let error = run.manifest["failures"][0]["error"].as_str().unwrap();
    assert!(error.contains("`/images/nightly/base` version 1 never appeared"), "{error}");
    assert!(error.contains("asynchronous validation"), "{error}");
    let published = &run.manifest["artifacts"]["base"]["us-west-2"]["published"];
    assert!(published.as_array().is_none_or(|published| published.is_empty()), "{published}");
    assert_eq!(run.summary["sim"]["published"], serde_json::json!([]), "nothing in SSM");
}

/// The preflight reads each publish target: a parameter of data type `text` (SSM never turns it into
/// `aws:ec2:image`) and a launch template the region does not have are named before anything is made; a
/// declared template and an absent parameter pass.
#[test]
fn the_preflight_names_a_text_parameter_and_a_missing_launch_template() {
    let workspace = Workspace::new();
    let sim = "parameters = [{ name = \"/images/nightly/base\", data_type = \"text\" }]";
    let fleet_path = workspace.write("fleet.toml", &one_image_fleet(sim, true));
    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 1, "{}{}", preflight.stdout, preflight.stderr);
    assert!(
        preflight.stdout.contains(
            "FAIL us-west-2: SSM parameter `/images/nightly/base` has data type `text`, and SSM never changes"
        ),
        "{}",
        preflight.stdout
    );
    assert!(
        preflight.stdout.contains("FAIL us-west-2: launch template `base-nightly` does not exist"),
        "{}",
        preflight.stdout
    );

    let declared = one_image_fleet("launch_templates = [\"base-nightly\"]", true);
    let fleet_path = workspace.write("fleet.toml", &declared);
    let preflight = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(preflight.code, 0, "{}{}", preflight.stdout, preflight.stderr);
    assert!(preflight.stdout.contains("ok   us-west-2: launch template `base-nightly` (lt-"), "{}", preflight.stdout);
    assert!(
        preflight.stdout.contains("ok   us-west-2: SSM parameter `/images/nightly/base` does not exist yet"),
        "{}",
        preflight.stdout
    );
}

/// Past the preflight, the same targets fail the run at `publish`, with SSM's and EC2's own answers, and the
/// image is kept.
#[test]
fn a_text_parameter_and_a_missing_launch_template_fail_at_publish() {
    let workspace = Workspace::new();
    let sim = "parameters = [{ name = \"/images/nightly/base\", data_type = \"text\" }]";
    let run = run_sim_with(&workspace, &one_image_fleet(sim, true), &["--no-preflight"]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failed = failures(&run.manifest);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed.iter().all(|failure| failure.2 == "publish"), "{failed:?}");
    assert!(
        failed.iter().any(|failure| failure.3.as_deref() == Some("InvalidLaunchTemplateName.NotFoundException")),
        "{failed:?}"
    );
    let errors = run.manifest["failures"].to_string();
    assert!(errors.contains("has data type `text`"), "{errors}");
    assert!(run.manifest["artifacts"]["base"]["us-west-2"]["image_id"].is_string(), "the image is kept");
}

/// CreateLaunchTemplateVersion takes no client token: EC2 makes a version for each call. Its first answer
/// lost after it took effect (the proxy forwards it to moto, then answers `InternalError`), the retry finds
/// the version the first call made (DescribeLaunchTemplateVersions: this run's description and image) and
/// makes none: the template has its own version and one more, the default, holding the image.
#[test]
fn a_retried_create_launch_template_version_makes_one_version() {
    use crate::harness::{runtime, Moto, Sshd};
    use crate::matrix::{fleet_header_at, read_manifest, AL2023};
    use crate::proxy::{Answer, Fault, FaultProxy};
    use std::sync::atomic::{AtomicBool, Ordering};
    let moto = Moto::start();
    let sshd = Sshd::start();
    let lost = AtomicBool::new(false);
    let proxy = FaultProxy::start(&moto.endpoint, move |request| {
        if request.action == "CreateLaunchTemplateVersion" && !lost.swap(true, Ordering::SeqCst) {
            return Answer::ForwardThenFail(Fault { status: 500, code: "InternalError", message: "answer lost" });
        }
        Answer::Forward
    });
    runtime().block_on(async {
        let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Small)
            .build();
        let create = moto.client("us-west-2").create_launch_template().launch_template_name("base-nightly");
        create.launch_template_data(data).send().await.unwrap();
    });
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n\n\
         [publish]\nlaunch_template = \"{{flavor}}-nightly\"\n",
        fleet_header_at(&proxy.endpoint, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let run = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(proxy.bodies("CreateLaunchTemplateVersion").len(), 1, "the retry did not create again");
    // Looked for before the create, and again before the retry.
    assert_eq!(proxy.bodies("DescribeLaunchTemplateVersions").len(), 2);
    let manifest = read_manifest(&workspace);
    let image = manifest["artifacts"]["base"]["us-west-2"]["image_id"].as_str().unwrap().to_string();
    let versions = runtime().block_on(async {
        let found =
            moto.client("us-west-2").describe_launch_template_versions().launch_template_name("base-nightly").send();
        found.await.unwrap().launch_template_versions().to_vec()
    });
    assert_eq!(versions.len(), 2, "the template's own version and one more: {versions:?}");
    let made = versions.iter().find(|version| version.version_number() == Some(2)).unwrap();
    assert_eq!(made.launch_template_data().and_then(|data| data.image_id()), Some(image.as_str()));
    assert_eq!(made.default_version(), Some(true), "{versions:?}");
    let published = &manifest["artifacts"]["base"]["us-west-2"]["published"];
    assert_eq!(published[0]["kind"], "launch_template", "{published}");
    assert_eq!(published[0]["version"], 2, "{published}");
}

/// `[sim] launch_templates`, `[sim] parameters` and the `validation` fault are checked like every other key:
/// each problem with its file, line, column and key, exit 2.
#[test]
fn bad_publish_targets_and_validation_faults_in_sim_are_bad_input() {
    let workspace = Workspace::new();
    let sim = "launch_templates = [\"ok-template\", \"no spaces\"]\n\
               parameters = [{ name = \"/images/a\", data_type = \"string\" }, { name = \"bad name\", data_type = \"text\" }]\n\
               faults = [{ action = \"CreateImage\", validation = \"fails\", nth = 1 }, \
               { action = \"PutParameter\", validation = \"sometimes\", nth = 1 }, \
               { action = \"PutParameter\", validation = \"fails\", error = \"InternalError\", nth = 1 }]";
    let path = workspace.write("fleet.toml", &one_image_fleet(sim, false));
    let outcome = workspace.fleetbake(&["validate", path.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    for expected in [
        "fleet.toml:22:36: `sim.launch_templates[1]`: `no spaces` is not a launch template name",
        "fleet.toml:23:49: `sim.parameters[0].data_type`: `string` is not one of SSM's data types",
        "`sim.parameters[1].name`: `bad name` is not an SSM parameter name",
        "`sim.faults[0].action`: `validation` goes with `PutParameter`",
        "`sim.faults[1].validation`: `sometimes` is not `fails`",
        "`sim.faults[2]`: set exactly one of `error`, `image_state`, `instance_state`, `console`, `agent` and `validation`",
    ] {
        assert!(outcome.stderr.contains(expected), "{expected}:\n{}", outcome.stderr);
    }
}

/// fleetbake never removes a label it did not make: one on the oldest of a parameter's 100 versions makes SSM
/// refuse the next put. The preflight names it (read-only: GetParameterHistory); the night that goes ahead
/// fails at `publish` with SSM's `ParameterMaxVersionLimitExceeded`, and the label is still there.
#[test]
fn a_foreign_label_on_the_oldest_of_100_versions_is_named_by_the_preflight_and_never_removed() {
    use fleetbake::cloud::Cloud;
    use fleetbake::engine::run::Start;
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &one_image_fleet("api_latency = \"10ms\"", false));
    let fleet = fleetbake::config::load(&fleet_path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    for night in 1..=100 {
        let summary = runtime.block_on(run_on(&sim, &fleet, Start::fresh(&fleet, None), None));
        assert_eq!(summary.failed, 0, "night {night}: {summary:?}");
    }
    let region = fleetbake::config::Region::new("us-west-2");
    let name = "/images/nightly/base";
    let start = Start::fresh(&fleet, None);
    let preflight = runtime.block_on(async {
        sim.region(&region).label_parameter_version(name, 1, "prod-pinned").await.unwrap();
        let runner = fleetbake::engine::preflight::Runner::simulated(&fleet.sim);
        fleetbake::engine::preflight::check(&fleet, start.plan(), &*sim, &runner).await
    });
    let text = preflight.to_string();
    assert!(!preflight.passed(), "{text}");
    assert!(
        text.contains("FAIL us-west-2: SSM parameter `/images/nightly/base` has 100 versions and its oldest (version 1) carries `prod-pinned` that fleetbake does not remove"),
        "{text}"
    );
    let night = runtime.block_on(run_on(&sim, &fleet, start, None));
    assert_eq!(night.failed, 1, "{night:?}");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(&fleet.manifest_path).unwrap()).unwrap();
    assert_eq!(
        failures(&manifest),
        [("base".into(), "us-west-2".into(), "publish".into(), Some("ParameterMaxVersionLimitExceeded".into()))]
    );
    let history = runtime.block_on(async { sim.region(&region).parameter_history(name).await.unwrap().unwrap() });
    assert_eq!(history.versions[0].labels, ["prod-pinned"], "never removed");
}

/// Each call the publication makes is one the simulated cloud answers and counts: the history read before the
/// put and after it (until the version is there), the put, the label.
#[test]
fn a_publication_counts_each_call_it_makes() {
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &one_image_fleet("launch_templates = [\"base-nightly\"]", true), &[]);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    let calls = &run.summary["api_calls"]["us-west-2"];
    assert_eq!(calls["PutParameter"], 1, "{calls}");
    assert_eq!(calls["LabelParameterVersion"], 1, "{calls}");
    // The preflight's, the one before the put, and at least one after it (validation takes 5 s).
    assert!(calls["GetParameterHistory"].as_u64().unwrap() >= 3, "{calls}");
    assert_eq!(calls["DescribeLaunchTemplates"], 1, "the preflight's: {calls}");
    assert_eq!(calls["DescribeLaunchTemplateVersions"], 1, "{calls}");
    assert_eq!(calls["CreateLaunchTemplateVersion"], 1, "{calls}");
    let published = run.summary["sim"]["published"].as_array().unwrap();
    assert_eq!(published.len(), 2, "{published:?}");
    assert!(
        published[1].as_str().unwrap().contains("launch-template base-nightly v2 (default) = ami-"),
        "{published:?}"
    );
    assert!(published[0].as_str().unwrap().contains("ssm /images/nightly/base v1 = ami-"), "{published:?}");
}

/// Two nights on one simulated account starting in the same second, the random part of their run ids drawn
/// alike (the same seed): the second run's id is drawn again. With the first night's id, its RunInstances token
/// was the first's, the sim answered with the first night's terminated instance and the build failed at
/// `wait_running` 3.3 s in (the 101 nights' test, 1 in about a thousand).
#[test]
fn two_nights_started_in_the_same_second_with_the_same_draw_get_their_own_run_ids() {
    use fleetbake::engine::run::Start;
    use fleetbake::plan::{Plan, RunId};
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &one_image_fleet("api_latency = \"10ms\"", false));
    let fleet = fleetbake::config::load(&fleet_path).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
    let sim = runtime.block_on(async { std::sync::Arc::new(fleetbake::cloud::sim::SimCloud::new(&fleet)) });
    let at = chrono::Utc::now();
    let mut ids = Vec::new();
    for night in 1..=2 {
        fastrand::seed(27);
        let start = runtime.block_on(async {
            let clock = fleetbake::util::clock::RunClock::starting_at(at);
            Start::Fresh { journal: None, plan: Plan::new(&fleet, RunId::generate(at), at), clock }
        });
        ids.push(start.plan().run_id.clone());
        let summary = runtime.block_on(run_on(&sim, &fleet, start, None));
        let manifest = std::fs::read_to_string(&fleet.manifest_path).unwrap_or_default();
        assert_eq!((summary.succeeded, summary.failed), (1, 0), "night {night}: {summary:?} {manifest}");
    }
    assert_ne!(ids[0], ids[1]);
}
