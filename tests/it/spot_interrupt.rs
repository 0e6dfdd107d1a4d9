//! Spot builds in the simulated cloud (`--cloud sim`): an instance EC2 takes back mid-build
//! (`[sim] spot.interrupt_after`) makes the build again on demand, once; a spot instance's image is made
//! without StopInstances (a one-time spot instance cannot be stopped) and with reboot; the summary's cost line
//! tells a spot night from the same night on demand.

use serde_json::Value;

use crate::harness::Workspace;
use crate::sim::{run_sim_with, SimRun};

/// One flavor built in one region on `market`, no copies; `more` and `sim` appended as given.
fn fleet(market: &str, more: &str, sim: &str) -> String {
    format!(
        r#"[fleet]
name = "spottest"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.micro"
ssh_username = "ubuntu"

[[flavor]]
name = "web"
source_ami = {{ owners = ["099720109477"], name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*" }}
market = "{market}"
provisioners = [{{ type = "shell", inline = ["echo one"] }}, {{ type = "shell", inline = ["echo two"] }}]

[regions]
us-west-2 = []

[ssh]
source_cidrs = ["203.0.113.5/32"]

{more}

[sim]
seed = 11
{sim}
"#
    )
}

fn run(workspace: &Workspace, fleet_text: &str) -> (SimRun, Vec<Value>) {
    let events_path = workspace.path("events.jsonl");
    let run = run_sim_with(workspace, fleet_text, &["--events", events_path.to_str().unwrap()]);
    assert_eq!(run.outcome.code, 0, "stderr:\n{}", run.outcome.stderr);
    assert_eq!(run.summary["leaked_resources"], serde_json::json!([]), "stderr:\n{}", run.outcome.stderr);
    let events = std::fs::read_to_string(events_path).unwrap();
    let events = events.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    (run, events)
}

fn calls(summary: &Value, action: &str) -> u64 {
    summary["api_calls"]["us-west-2"][action].as_u64().unwrap_or(0)
}

fn built_on(manifest: &Value) -> &Value {
    &manifest["artifacts"]["web"]["us-west-2"]["built_on"]
}

#[test]
fn a_build_whose_spot_instance_is_taken_back_is_made_again_on_demand_and_succeeds() {
    let workspace = Workspace::new();
    // The instance runs at 1 min, SSH at 1.5 min, the two provisioners take 5 min: taken back 2 min after running.
    let (run, events) = run(&workspace, &fleet("spot", "", r#"spot = { interrupt_after = "2m" }"#));

    assert_eq!(run.manifest["status"], "complete");
    assert_eq!(run.manifest["failures"], serde_json::json!([]));
    assert_eq!(built_on(&run.manifest), &serde_json::json!({ "market": "on-demand", "instance_type": "t3.micro" }));
    assert_eq!(run.summary["jobs"]["succeeded"], 1);
    assert_eq!(run.summary["jobs"]["rebuilt_on_demand"], 1);
    // Two launches (spot, then on demand); only the on-demand instance is stopped; one image.
    assert_eq!(calls(&run.summary, "RunInstances"), 2);
    assert_eq!(calls(&run.summary, "StopInstances"), 1);
    assert_eq!(calls(&run.summary, "CreateImage"), 1);
    assert_eq!(calls(&run.summary, "TerminateInstances"), 2, "both instances are terminated by their cleanup");

    // An event says why, naming EC2's reason.
    let why: Vec<&str> = events
        .iter()
        .filter_map(|event| event["detail"].as_str())
        .filter(|detail| detail.contains("Server.SpotInstanceTermination"))
        .collect();
    assert_eq!(why.len(), 1, "one event says the build is made again: {events:#?}");
    assert!(why[0].contains("building it again on demand, once"), "{}", why[0]);
    assert!(run.outcome.stderr.contains("1 build(s) made again on demand"), "stderr:\n{}", run.outcome.stderr);
}

#[test]
fn a_spot_instance_s_image_is_made_with_reboot_and_never_stopped() {
    let workspace = Workspace::new();
    let (run, events) = run(&workspace, &fleet("spot", "", ""));

    assert_eq!(run.manifest["failures"], serde_json::json!([]));
    assert_eq!(built_on(&run.manifest), &serde_json::json!({ "market": "spot", "instance_type": "t3.micro" }));
    assert_eq!(calls(&run.summary, "StopInstances"), 0, "a one-time spot instance is never asked to stop");
    assert_eq!(calls(&run.summary, "CreateImage"), 1);
    assert_eq!(run.summary["jobs"]["rebuilt_on_demand"], 0);
    let rebooted = events.iter().filter_map(|event| event["detail"].as_str()).any(|detail| {
        detail.starts_with("creating the image of the running instance") && detail.contains("with reboot")
    });
    assert!(rebooted, "the image is made of the running instance with reboot: {events:#?}");
}

#[test]
fn the_cost_line_tells_a_spot_night_from_the_same_night_on_demand() {
    // The simulated prices, as the fleet gives none; the same seed, so the same timings up to the image.
    let sim = r#"prices = { "t3.micro" = { on_demand = 0.0104, spot = 0.0031 } }"#;
    let spot_workspace = Workspace::new();
    let (spot, _) = run(&spot_workspace, &fleet("spot", "", sim));
    let on_demand_workspace = Workspace::new();
    let (on_demand, _) = run(&on_demand_workspace, &fleet("on-demand", "", sim));

    let spot_cost = &spot.summary["estimated_cost"];
    let on_demand_cost = &on_demand.summary["estimated_cost"];
    let total = |cost: &Value| cost["total"].as_f64().unwrap();
    let all_on_demand = |cost: &Value| cost["all_on_demand"].as_f64().unwrap();
    assert!(spot_cost["by_market"]["spot"].as_f64().unwrap() > 0.0, "{spot_cost}");
    assert!(spot_cost["by_market"].get("on-demand").is_none(), "{spot_cost}");
    assert!(total(spot_cost) < all_on_demand(spot_cost), "{spot_cost}");
    assert!(on_demand_cost["by_market"].get("spot").is_none(), "{on_demand_cost}");
    assert_eq!(total(on_demand_cost), all_on_demand(on_demand_cost), "{on_demand_cost}");
    assert!(total(spot_cost) < total(on_demand_cost), "spot {spot_cost} against on demand {on_demand_cost}");
    assert!(spot.outcome.stderr.contains("estimated cost $"), "stderr:\n{}", spot.outcome.stderr);
    assert!(spot.outcome.stderr.contains("(spot), $"), "stderr:\n{}", spot.outcome.stderr);

    // `[prices]` is read before `[sim] prices`; a type priced nowhere is named, not guessed.
    let unpriced_workspace = Workspace::new();
    let (unpriced, _) = run(&unpriced_workspace, &fleet("spot", "[prices]\n\"m5.large\" = { on_demand = 0.096 }", ""));
    let unpriced_cost = &unpriced.summary["estimated_cost"];
    assert_eq!(unpriced_cost["unpriced_types"], serde_json::json!(["t3.micro"]), "{unpriced_cost}");
    assert_eq!(total(unpriced_cost), 0.0);
    assert!(unpriced.outcome.stderr.contains("no price for `t3.micro`"), "stderr:\n{}", unpriced.outcome.stderr);
}

/// The aws adapter on the path without `stop` (moto + sshd, through the recording proxy, as moto keeps no
/// `NoReboot`): a spot flavor's build sends no StopInstances and CreateImage with `NoReboot=false` said
/// explicitly; the manifest says spot; nothing temporary is left.
#[test]
fn the_aws_adapter_images_a_spot_instance_with_no_reboot_false_and_no_stop() {
    use crate::cloud_state::assert_nothing_temporary_left;
    use crate::harness::{runtime, Moto, Sshd};
    use crate::matrix::{fleet_header_at, read_manifest, run_matrix, AL2023};
    use crate::proxy::FaultProxy;

    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\nmarket = \"spot\"\n\n[regions]\nus-west-2 = []\n",
        fleet_header_at(&proxy.endpoint, &sshd)
    );
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert!(proxy.bodies("StopInstances").is_empty(), "a one-time spot instance is never asked to stop");
    let create_image = proxy.bodies("CreateImage");
    assert_eq!(create_image.len(), 1);
    assert!(create_image[0].contains("NoReboot=false"), "{}", create_image[0]);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["artifacts"]["base"]["us-west-2"]["built_on"]["market"], "spot");
    runtime().block_on(assert_nothing_temporary_left(&moto.client("us-west-2"), "us-west-2"));
}

/// The calls only spot builds make, each taking effect with its answer lost (the client repeats it with the same
/// client token): CreateImage of the running instance with reboot, and the on-demand rebuild's RunInstances
/// after an interruption. Nothing is made twice and nothing is left.
#[test]
fn a_lost_answer_to_a_spot_image_or_the_rebuild_s_launch_makes_nothing_twice_and_leaves_nothing() {
    let cases = [
        ("CreateImage with reboot", "", "CreateImage", 1, 1, "spot"),
        ("the rebuild's RunInstances", r#"spot = { interrupt_after = "2m" }"#, "RunInstances", 2, 2, "on-demand"),
    ];
    for (case, spot, action, nth, launches, market) in cases {
        let workspace = Workspace::new();
        let sim = format!(
            "{spot}\nfaults = [{{ action = \"{action}\", region = \"us-west-2\", error = \"InternalError\", nth = {nth}, answer_lost = true }}]"
        );
        let (run, _) = run(&workspace, &fleet("spot", "", &sim));
        assert_eq!(run.summary["sim"]["faults_injected"], 1, "{case}");
        assert_eq!(run.manifest["status"], "complete", "{case}");
        assert_eq!(built_on(&run.manifest)["market"], market, "{case}");
        assert_eq!(calls(&run.summary, "RunInstances"), launches + u64::from(action == "RunInstances"), "{case}");
        let images = run.summary["sim"]["images"].as_array().map_or(0, Vec::len);
        assert_eq!(images, 1, "{case}: one image, not two: {}", run.summary["sim"]);
        let all: u64 =
            run.summary["sim"]["instances_launched"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
        assert_eq!(all, launches, "{case}: one instance per launch: {}", run.summary["sim"]);
    }
}

/// A spot build taken back has nothing left to tell: its on-failure phase is skipped, not run over a dropped
/// connection, and nothing is saved; the rebuild on demand succeeds.
#[test]
fn an_interrupted_spot_build_skips_its_on_failure_phase() {
    let workspace = Workspace::new();
    let market = "spot\"\non_failure = [{ type = \"shell\", inline = [\"journalctl -b\"] }]\ncollect = [\"/var/log/cloud-init-output.log\"]\n#";
    let (run, events) = run(&workspace, &fleet(market, "", r#"spot = { interrupt_after = "2m" }"#));
    assert_eq!(run.manifest["status"], "complete");
    assert_eq!(run.summary["jobs"]["rebuilt_on_demand"], 1);
    let details: Vec<&str> = events.iter().filter_map(|event| event["detail"].as_str()).collect();
    assert!(
        details.iter().any(|detail| detail.contains("on failure: skipped, EC2 took the spot instance back")),
        "{details:#?}"
    );
    assert!(!details.iter().any(|detail| detail.contains("on failure: saved")), "{details:#?}");
}

/// `--keep-failed` with `keep_failed_state = "stopped"` on a spot build: a one-time spot instance cannot be
/// stopped, so it is kept running and the run says so; StopInstances is never asked.
#[test]
fn a_kept_spot_instance_is_left_running_and_said() {
    let workspace = Workspace::new();
    let matrix = "[matrix]\nkeep_failed = \"24h\"\nkeep_failed_state = \"stopped\"\n";
    let sim = "faults = [{ action = \"test\", error = \"failed\", nth = 1 }]";
    let market = "spot\"\ntests = [{ type = \"shell\", inline = [\"true\"] }]\n#";
    let events_path = workspace.path("events.jsonl");
    let run = run_sim_with(&workspace, &fleet(market, matrix, sim), &["--events", events_path.to_str().unwrap()]);
    assert_eq!(run.outcome.code, 1, "the test failed: {}", run.outcome.stderr);
    assert_eq!(run.summary["leaked_resources"], serde_json::json!([]), "{}", run.outcome.stderr);
    let failure = run.manifest["failures"].as_array().unwrap().iter().find(|f| f["stage"] == "test").unwrap();
    assert_eq!(failure["kept"]["state"], "running", "{failure}");
    assert_eq!(calls(&run.summary, "StopInstances"), 0);
    assert!(
        run.outcome.stderr.contains("a one-time spot instance cannot be stopped")
            || std::fs::read_to_string(&events_path).unwrap().contains("a one-time spot instance cannot be stopped"),
        "{}",
        run.outcome.stderr
    );
}
