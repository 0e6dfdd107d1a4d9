//! Credentials that end mid-night, `[aws] role_arn` and role chaining, and regions not enabled: the preflight
//! that names them and the run that meets them. On the simulated cloud (`[sim] credentials`, `base_identity`,
//! `regions_not_enabled`), in virtual time; and DescribeRegions and the credential chain through the real SDK
//! against moto.

use serde_json::Value;

use crate::harness::*;
use crate::matrix::{fleet_header_at, AL2023};
use crate::witness::assert_only_reads;

/// Two flavors built one at a time in us-west-2 (each ≈ 14.5 simulated minutes to its image), copied to
/// ap-southeast-2: a night of about an hour. `aws` and `sim` are appended to their tables.
fn fleet(aws: &str, sim: &str) -> String {
    format!(
        r#"[fleet]
name = "credtest"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "ubuntu"
source_ami = {{ owners = ["099720109477"], name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*" }}
provisioners = [{{ type = "shell", inline = ["echo one"] }}]

[[flavor]]
name = "al2023"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}
provisioners = [{{ type = "shell", inline = ["echo two"] }}]

[regions]
us-west-2 = ["ap-southeast-2"]

[ssh]
source_cidrs = ["203.0.113.5/32"]

[limits]
max_parallel_builds = 1

[aws]
{aws}

[sim]
{sim}
"#
    )
}

fn preflight(workspace: &Workspace, text: &str) -> Outcome {
    let fleet_path = workspace.write("fleet.toml", text);
    workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap(), "--cloud", "sim"])
}

/// The report's line that starts with `prefix`.
fn line<'a>(report: &'a str, prefix: &str) -> &'a str {
    report.lines().find(|line| line.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` line:\n{report}"))
}

#[test]
fn static_credentials_ending_before_the_estimate_fail_the_preflight_and_renewed_ones_pass() {
    let workspace = Workspace::new();
    let ending = preflight(&workspace, &fleet("", "credentials = { expires_after = \"20m\", refreshable = false }"));
    assert_eq!(ending.code, 1, "{}{}", ending.stdout, ending.stderr);
    let fail = line(&ending.stdout, "FAIL the credentials (`simulated (static)`) are not renewed and expire at ");
    // Both times, and what to change.
    assert!(fail.contains("(in 20m), before the run's estimated end at "), "{fail}");
    assert!(fail.contains("renew themselves") && fail.contains("role-duration-seconds"), "{fail}");
    let times: Vec<&str> = fail.matches(" UTC").collect();
    assert_eq!(times.len(), 2, "{fail}");

    let lasting = preflight(&workspace, &fleet("", "credentials = { expires_after = \"12h\", refreshable = false }"));
    assert_eq!(lasting.code, 0, "{}{}", lasting.stdout, lasting.stderr);
    let ok = line(&lasting.stdout, "ok   credentials (`simulated (static)`): not renewed, expire at ");
    assert!(ok.contains("(in 12h 00m), after the run's estimated end at "), "{ok}");

    let renewed = preflight(&workspace, &fleet("", "credentials = { expires_after = \"20m\", refreshable = true }"));
    assert_eq!(renewed.code, 0, "{}{}", renewed.stdout, renewed.stderr);
    let ok = line(&renewed.stdout, "ok   credentials (`simulated (renewed)`): renewed by their provider");
    assert!(ok.contains("the current ones for 20m; they last past the run's estimated end at "), "{ok}");
}

#[test]
fn a_run_meeting_expired_credentials_stops_starting_work_and_names_what_is_left_and_the_gc_command() {
    let workspace = Workspace::new();
    // Expired between the first build (its image at ≈ 14.5 minutes) and the second's end.
    let text = fleet("", "credentials = { expires_after = \"20m\", refreshable = false }");
    let fleet_path = workspace.write("fleet.toml", &text);
    let summary_path = workspace.path("summary.json");
    let outcome = workspace.fleetbake(&[
        "matrix",
        fleet_path.to_str().unwrap(),
        "--cloud",
        "sim",
        "--no-preflight",
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]);
    assert_eq!(
        outcome.code, 3,
        "the documented code for credentials that expired mid-run\nstderr:\n{}",
        outcome.stderr
    );
    let stderr = &outcome.stderr;
    assert!(stderr.contains("error: the credentials expired mid-run (AWS answered `ExpiredToken`)"), "{stderr}");
    let gc = format!("remove them with: fleetbake gc {} (with fresh credentials)", fleet_path.display());
    assert!(stderr.contains(&gc), "{stderr}");
    assert!(!stderr.contains("a fleetbake bug"), "{stderr}");
    // What is left is named: the second build's temporary resources, which cleanup could not remove.
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    let leaked: Vec<String> = summary["leaked_resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|resource| resource.as_str().unwrap().to_string())
        .collect();
    assert!(!leaked.is_empty(), "the model keeps what could not be removed");
    for resource in &leaked {
        // `instance i-… in us-west-2 (Running)`, `key pair NAME in …`, `security group sg-… in …`.
        let id = resource.split(" in ").next().unwrap().rsplit(' ').next().unwrap();
        assert!(stderr.contains(id), "{resource} is not named:\n{stderr}");
    }
    // Nothing claims success: the manifest is partial, the expired calls are failures, later work not started.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace.path("manifest.sim.json")).unwrap()).unwrap();
    assert_ne!(manifest["status"], "complete", "{manifest:#}");
    let failures = manifest["failures"].as_array().unwrap();
    assert!(
        failures.iter().any(|failure| failure["code"] == "RequestExpired"),
        "a call refused as expired: {failures:#?}"
    );
    let not_started = failures
        .iter()
        .filter(|failure| failure["error"].as_str().unwrap().contains("not started: the credentials expired"))
        .count();
    assert!(not_started >= 1, "{failures:#?}");
    assert!(summary["jobs"]["succeeded"].as_u64().unwrap() < 4, "{summary:#}");
}

#[test]
fn role_arn_is_assumed_and_role_chaining_past_an_hour_fails_the_preflight() {
    let workspace = Workspace::new();
    let role = "role_arn = \"arn:aws:iam::210987654321:role/image-builder\"";
    let assumed = preflight(&workspace, &fleet(role, ""));
    assert_eq!(assumed.code, 0, "{}{}", assumed.stdout, assumed.stderr);
    assert!(
        assumed.stdout.contains(
            "ok   acting as arn:aws:sts::210987654321:assumed-role/image-builder/fleetbake-simulated (account 210987654321)"
        ),
        "{}",
        assumed.stdout
    );
    assert!(!assumed.stdout.contains(":user/simulated ("), "{}", assumed.stdout);

    // The base credentials are a role's session: a 2-hour session would be role chaining past its cap.
    let chained = preflight(&workspace, &fleet(&format!("{role}\nduration = \"2h\""), "base_identity = \"role\""));
    assert_eq!(chained.code, 1, "{}{}", chained.stdout, chained.stderr);
    let fail =
        line(&chained.stdout, "FAIL `[aws] duration` asks 2h 00m of `arn:aws:iam::210987654321:role/image-builder`");
    assert!(fail.contains("role chaining") && fail.contains("1 hour"), "{fail}");
    assert!(fail.contains("assumed-role/simulated-runner/simulated"), "{fail}");
    // STS itself refuses it, as the acting-as line says.
    assert!(chained.stdout.contains("ValidationError"), "{}", chained.stdout);

    // Within the cap, chaining is fine; and a run counts its AssumeRole.
    let within = fleet(&format!("{role}\nduration = \"1h\""), "base_identity = \"role\"");
    assert_eq!(preflight(&workspace, &within).code, 0);
    let fleet_path = workspace.write("fleet.toml", &within);
    let summary_path = workspace.path("summary.json");
    let run = workspace.fleetbake(&[
        "matrix",
        fleet_path.to_str().unwrap(),
        "--cloud",
        "sim",
        "--summary-json",
        summary_path.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(summary["sim"]["assume_role_calls"], 1, "{summary:#}");
}

#[test]
fn a_region_not_enabled_is_named_by_the_preflight_and_its_auth_failure_hinted_as_such() {
    let workspace = Workspace::new();
    let text = fleet("", "regions_not_enabled = [\"ap-southeast-2\"]");
    let report = preflight(&workspace, &text);
    assert_eq!(report.code, 1, "{}{}", report.stdout, report.stderr);
    let fail = line(&report.stdout, "FAIL ap-southeast-2: ap-southeast-2 is not enabled for this account");
    assert!(fail.contains("OptInStatus `not-opted-in`") && fail.contains("enable-region"), "{fail}");
    // Its AuthFailure, hinted as the region, not as the credentials.
    let reach = line(
        &report.stdout,
        "FAIL ap-southeast-2: cannot reach ap-southeast-2: DescribeImages in ap-southeast-2: AuthFailure",
    );
    assert!(reach.contains("is not enabled for this account"), "{reach}");
    assert!(!reach.contains("did not accept the credentials"), "{reach}");
    assert!(report.stdout.contains("ok   us-west-2: reachable"), "{}", report.stdout);

    // Without the preflight the copies into it fail with AuthFailure, and their hint names the region.
    let fleet_path = workspace.write("fleet.toml", &text);
    let run = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--cloud", "sim", "--no-preflight"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(workspace.path("manifest.sim.json")).unwrap()).unwrap();
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{failures:#?}");
    for failure in failures {
        assert_eq!(failure["region"], "ap-southeast-2", "{failure:#}");
        assert_eq!(failure["code"], "AuthFailure", "{failure:#}");
        let hint = failure["hint"].as_str().unwrap();
        assert!(hint.contains("the region is not enabled for the account"), "{hint}");
    }
}

/// Through the real SDK: the preflight asks moto DescribeRegions with `AllRegions`, reads the environment's
/// session keys as not renewed, and only reads.
#[test]
fn the_preflight_reads_the_regions_and_the_credential_chain_through_the_sdk() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::recording(&moto.endpoint);
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = [\"eu-central-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd),
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let env =
        [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_SESSION_TOKEN", "testing")];
    let outcome = workspace.fleetbake_with_env(&["preflight", fleet_path.to_str().unwrap()], &env);
    assert_eq!(outcome.code, 0, "stdout:\n{}\nstderr:\n{}", outcome.stdout, outcome.stderr);
    let report = &outcome.stdout;
    assert!(report.contains("ok   all 2 regions of the run are enabled for the account"), "{report}");
    let credentials = line(report, "ok   credentials (`EnvironmentVariable`): session keys, not renewed");
    assert!(credentials.contains("role-duration-seconds"), "{credentials}");
    let asked = proxy.bodies("DescribeRegions");
    assert_eq!(asked.len(), 1, "{:?}", proxy.actions());
    assert_eq!(field(&asked[0], "AllRegions"), ["true"], "{}", asked[0]);
    assert_only_reads(&proxy.actions());

    // Session keys whose end the environment gives (AWS_CREDENTIAL_EXPIRATION) and that end before the run's
    // estimate: a FAIL naming both times.
    let soon = (chrono::Utc::now() + chrono::TimeDelta::minutes(10)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let ending = [env[0], env[1], env[2], ("AWS_CREDENTIAL_EXPIRATION", soon.as_str())];
    let outcome = workspace.fleetbake_with_env(&["preflight", fleet_path.to_str().unwrap()], &ending);
    assert_eq!(outcome.code, 1, "stdout:\n{}\nstderr:\n{}", outcome.stdout, outcome.stderr);
    let fail = line(&outcome.stdout, "FAIL the credentials (`EnvironmentVariable`) are not renewed and expire at ");
    assert!(fail.contains("(in 10m), before the run's estimated end at "), "{fail}");

    // moto's answer, as the adapter reads it: its regions, each with an OptInStatus.
    let regions = runtime().block_on(async {
        moto.client("us-west-2").describe_regions().all_regions(true).send().await.unwrap().regions().to_vec()
    });
    assert!(regions.iter().any(|region| region.region_name() == Some("eu-central-1")), "{regions:?}");
    assert!(regions.iter().all(|region| region.opt_in_status().is_some()), "{regions:?}");
}

/// The GitHub Actions example: its role session outlasts the job's timeout, and no workflow input is pasted
/// into a script's text (inputs reach `run:` blocks through `env:`).
#[test]
fn the_github_actions_example_outlasts_its_job_and_keeps_inputs_out_of_scripts() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/github-actions/nightly.yml")).unwrap();
    let value = |key: &str| -> u64 {
        let line = text.lines().find(|line| line.trim_start().starts_with(key)).unwrap_or_else(|| panic!("no {key}"));
        line.split(':').nth(1).unwrap().split('#').next().unwrap().trim().parse().unwrap()
    };
    let session = value("role-duration-seconds:");
    let timeout = value("timeout-minutes:") * 60;
    assert!(session > timeout, "a {session} s session ends before the job's {timeout} s timeout");
    assert!(session <= 12 * 3600, "a role session lasts at most 12 hours");
    // Every `run:` block's lines: from `run:` to the next step key at the same or a lesser indent.
    let mut in_run: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(run_indent) = in_run {
            if !line.trim().is_empty() && indent <= run_indent {
                in_run = None;
            } else {
                assert!(!line.contains("${{"), "an expression in a script's text: {line}");
                continue;
            }
        }
        let trimmed = line.trim_start().trim_start_matches("- ");
        if trimmed.starts_with("run:") {
            assert!(!line.contains("${{"), "an expression in a script's text: {line}");
            in_run = Some(indent);
        }
    }
    assert!(text.contains("ONLY: ${{ github.event.inputs.only }}"), "the input reaches the script through env");
}
