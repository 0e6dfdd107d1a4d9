//! Launching on spot (`market = "spot"`, `instance_types`, `spot_fallback`): on the simulated cloud, a type
//! without spot capacity moves the launch to the next type, no spot capacity at all to on demand (or, with
//! `spot_fallback = "fail"`, to a failure after `capacity_patience`), the manifest says what each build ran on,
//! and lost answers to the spot launches leave nothing; on the real path (aws-sdk-ec2 → the recording proxy →
//! moto), the request's `InstanceMarketOptions` and a capacity answer moving to the next type; the preflight
//! naming each instance type not offered by its key.

use serde_json::Value;

use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, run_matrix, AL2023};
use crate::sim::{failures, fleet, run_sim_with, SimRun};

/// The simulated night of `sim::fleet` (two flavors built in us-west-2 and eu-central-1), every build on spot
/// with `t3.small` then `t3a.small`, and `spot` / `sim` / `limits` as given.
fn spot_fleet(spot: &str, sim: &str, limits: &str) -> String {
    fleet(sim, limits).replace(
        "[defaults]\ninstance_type = \"t3.small\"",
        &format!("[defaults]\nmarket = \"spot\"\ninstance_types = [\"t3.small\", \"t3a.small\"]\n{spot}"),
    )
}

/// Every build's `built_on` in the manifest, as `market type`.
fn built_on(manifest: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for (flavor, regions) in manifest["artifacts"].as_object().unwrap() {
        for (region, artifact) in regions.as_object().unwrap() {
            if artifact["build_region"] != region.as_str() {
                assert!(artifact.get("built_on").is_none(), "a copy has no built_on: {flavor}/{region}");
                continue;
            }
            let on = &artifact["built_on"];
            found.push(format!("{} {}", on["market"].as_str().unwrap(), on["instance_type"].as_str().unwrap()));
        }
    }
    found
}

/// The sim's count of instances launched as `market type`.
fn launched(run: &SimRun, what: &str) -> u64 {
    run.summary["sim"]["instances_launched"][what].as_u64().unwrap_or(0)
}

fn assert_nothing_left(run: &SimRun, case: &str) {
    assert_eq!(run.summary["leaked_resources"], serde_json::json!([]), "{case}: stderr:\n{}", run.outcome.stderr);
}

#[test]
fn no_spot_capacity_for_the_first_type_launches_the_second_on_spot() {
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &spot_fleet("", "spot = { available = [\"t3a.small\"] }", ""), &[]);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    assert_eq!(built_on(&run.manifest), vec!["spot t3a.small"; 4], "every build on spot, the second type");
    assert_eq!(launched(&run, "spot t3a.small"), 4, "{}", run.summary["sim"]);
    assert_eq!(launched(&run, "on-demand t3.small") + launched(&run, "on-demand t3a.small"), 0);
    let stderr = &run.outcome.stderr;
    assert!(
        stderr.contains(
            "no spot capacity for t3.small in the default VPC (InsufficientInstanceCapacity); trying t3a.small"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("launched spot t3a.small i-"), "{stderr}");
    assert!(stderr.contains("    builds: 4 on spot, 0 on demand"), "{stderr}");
    assert!(stderr.contains(" (spot t3a.small)"), "{stderr}");
    assert!(!stderr.contains("trying again in"), "no pause: {stderr}");
    assert_nothing_left(&run, "second type");
}

#[test]
fn no_spot_capacity_for_any_type_falls_back_to_on_demand_unless_told_to_fail() {
    let workspace = Workspace::new();
    let run = run_sim_with(&workspace, &spot_fleet("", "spot = { available = [] }", ""), &[]);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    assert_eq!(built_on(&run.manifest), vec!["on-demand t3.small"; 4], "on demand, the first type again");
    assert_eq!(launched(&run, "on-demand t3.small"), 4, "{}", run.summary["sim"]);
    let stderr = &run.outcome.stderr;
    assert!(
        stderr.contains(
            "no spot capacity for t3a.small in the default VPC (InsufficientInstanceCapacity); trying on-demand t3.small in the default VPC"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("launched on-demand t3.small i-"), "{stderr}");
    assert_nothing_left(&run, "fallback");

    // `spot_fallback = "fail"`: every type tried on spot, paused between rounds, until the patience is spent.
    let workspace = Workspace::new();
    let text = spot_fleet("spot_fallback = \"fail\"", "spot = { available = [] }", "capacity_patience = \"20m\"");
    let run = run_sim_with(&workspace, &text, &[]);
    assert_eq!(run.outcome.code, 1, "stderr:\n{}", run.outcome.stderr);
    let failed = failures(&run.manifest);
    let launches: Vec<_> = failed.iter().filter(|(_, _, stage, _)| stage != "skipped").collect();
    assert_eq!(launches.len(), 4, "every build, its copies skipped: {failed:?}");
    for (_, _, stage, code) in launches {
        assert_eq!((stage.as_str(), code.as_deref()), ("launch", Some("InsufficientInstanceCapacity")));
    }
    assert!(run.outcome.stderr.contains("no room now (InsufficientInstanceCapacity); trying again in"));
    assert!(!run.outcome.stderr.contains("trying on-demand"), "{}", run.outcome.stderr);
    assert_eq!(run.summary["sim"]["instances_launched"], Value::Null, "no instance at all");
    assert_nothing_left(&run, "fail");
}

/// RunInstances takes effect and its answer is lost (the client sees a retryable `InternalError` and repeats
/// it with the same client token) on each of the spot launch's tries: the first type's (refused for capacity
/// the second time as the first), the second type's on spot, and the on-demand fallback's. Nothing is launched
/// twice and nothing is left.
#[test]
fn a_lost_answer_to_any_spot_launch_try_makes_nothing_twice_and_leaves_nothing() {
    // In eu-central-1, one build at a time: each build's first RunInstances is its spot try of t3.small.
    let cases = [
        ("first type's spot try", "[\"t3a.small\"]", 1, "spot t3a.small"),
        ("second type's spot launch", "[\"t3a.small\"]", 2, "spot t3a.small"),
        ("on-demand fallback's launch", "[]", 3, "on-demand t3.small"),
    ];
    for (case, available, nth, expected) in cases {
        let workspace = Workspace::new();
        let sim = format!(
            "spot = {{ available = {available} }}\nfaults = [{{ action = \"RunInstances\", region = \"eu-central-1\", error = \"InternalError\", nth = {nth}, answer_lost = true }}]"
        );
        let run = run_sim_with(&workspace, &spot_fleet("", &sim, "max_parallel_builds = 1"), &["--no-preflight"]);
        assert_eq!(run.outcome.code, 0, "{case}: stderr:\n{}", run.outcome.stderr);
        assert_eq!(run.summary["sim"]["faults_injected"], 1, "{case}");
        assert_eq!(run.summary["retries"], 1, "{case}");
        assert_eq!(run.manifest["status"], "complete", "{case}");
        assert_eq!(built_on(&run.manifest), vec![expected; 4], "{case}");
        let all: u64 =
            run.summary["sim"]["instances_launched"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!((launched(&run, expected), all), (4, 4), "{case}: one instance per build: {}", run.summary["sim"]);
        assert_nothing_left(&run, case);
    }
}

/// The real path: a spot RunInstances carries one-time spot market options that end the instance when
/// interrupted, and no maximum price; EC2's spot capacity answer (the proxy's) moves the launch to the next
/// type with a new client token; moto launches a spot instance; the manifest says so.
#[test]
fn a_spot_launch_sends_one_time_market_options_and_moves_to_the_next_type() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let refused = std::sync::atomic::AtomicBool::new(false);
    let proxy = FaultProxy::start(&moto.endpoint, move |request| {
        if request.action == "RunInstances" && !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Answer::Fail(Fault {
                status: 500,
                code: "InsufficientInstanceCapacity",
                message: "There is no Spot capacity available that matches your request.",
            });
        }
        Answer::Forward
    });
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nmarket = \"spot\"\ninstance_types = [\"t3.small\", \"t3a.small\"]\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n",
        fleet_header_at(&proxy.endpoint, &sshd)
    );
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let bodies = proxy.bodies("RunInstances");
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let types: Vec<String> = bodies.iter().map(|body| field(body, "InstanceType").concat()).collect();
    assert_eq!(types, ["t3.small", "t3a.small"]);
    for body in &bodies {
        assert_eq!(field(body, "InstanceMarketOptions.MarketType"), ["spot"], "{body}");
        assert_eq!(field(body, "InstanceMarketOptions.SpotOptions.SpotInstanceType"), ["one-time"], "{body}");
        assert_eq!(
            field(body, "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"),
            ["terminate"],
            "{body}"
        );
        assert!(field(body, "InstanceMarketOptions.SpotOptions.MaxPrice").is_empty(), "no maximum price: {body}");
    }
    let tokens: Vec<String> = bodies.iter().map(|body| field(body, "ClientToken").concat()).collect();
    assert_ne!(tokens[0], tokens[1], "each try its own client token");
    let manifest = read_manifest(&workspace);
    assert_eq!(
        manifest["artifacts"]["base"]["us-west-2"]["built_on"],
        serde_json::json!({ "market": "spot", "instance_type": "t3a.small" })
    );
    runtime().block_on(async {
        let output = moto.client("us-west-2").describe_instances().send().await.unwrap();
        let launched: Vec<(String, String)> = output
            .reservations()
            .iter()
            .flat_map(|reservation| reservation.instances())
            .map(|instance| {
                let lifecycle = instance.instance_lifecycle().map(|l| l.as_str().to_string()).unwrap_or_default();
                let state = instance.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default();
                (lifecycle, state)
            })
            .collect();
        assert_eq!(launched, [("spot".to_string(), "terminated".to_string())], "one spot instance, cleaned up");
    });
}

/// An on-demand flavor sends no market options.
#[test]
fn an_on_demand_launch_sends_no_market_options() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = []\n",
        fleet_header_at(&proxy.endpoint, &sshd)
    );
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let bodies = proxy.bodies("RunInstances");
    assert_eq!(bodies.len(), 1);
    assert!(!bodies[0].contains("InstanceMarketOptions"), "{}", bodies[0]);
    assert_eq!(
        read_manifest(&workspace)["artifacts"]["base"]["us-west-2"]["built_on"],
        serde_json::json!({ "market": "on-demand", "instance_type": "t3.small" })
    );
}

/// Every listed instance type is checked: one not offered in a build region fails the preflight, named by the
/// fleet file's key.
#[test]
fn the_preflight_names_an_instance_type_not_offered_by_its_key() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nmarket = \"spot\"\ninstance_types = [\"t3.small\", \"x2iezn.12xlarge\"]\nsource_ami = {AL2023}\n\n[regions]\neu-central-1 = []\n",
        fleet_header_at(&moto.endpoint, &sshd)
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stdout:\n{}\nstderr:\n{}", outcome.stdout, outcome.stderr);
    let report = &outcome.stdout;
    assert!(report.contains("ok   eu-central-1: t3.small (`base`) is offered"), "{report}");
    assert!(
        report.contains(
            "FAIL eu-central-1: x2iezn.12xlarge (`base`) is not offered in eu-central-1; change `flavor[0].instance_types[1]`"
        ),
        "{report}"
    );
}
