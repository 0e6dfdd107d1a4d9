//! `[variables]` through the binary: `--var` over `--var-file` over `FLEETBAKE_VAR_<name>` over the default;
//! unknown names refused with where they were given; and on moto + sshd, a variable in image names and tags,
//! and a sensitive one that reaches a provisioner's environment and nothing else: no command line while the
//! script runs (`/proc/*/cmdline`, what `ps` shows), no file fleetbake writes, not the fingerprint (a rotated
//! token reuses the image under `--changed-only`), shown masked when the script prints it, and `--resume`
//! refuses a run started with another value.

use crate::cloud_state::images_of_run;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};
use crate::secrets::{findings, written_files, CommandLineWatch};

/// A fleet that names its images and tags them with `{var.build}`, with EC2 nowhere (plan and validate only).
fn offline_fleet() -> String {
    "[fleet]\nname = \"vars\"\nami_name = \"{flavor}-{var.build}-{run_id}\"\ntags = { Build = \"{var.build}\" }\n\n\
     [variables]\nbuild = \"from-default\"\nchannel = { default = \"stable\", description = \"the release channel\" }\n\n\
     [defaults]\ninstance_type = \"t3.small\"\nssh_username = \"ec2-user\"\n\n\
     [[flavor]]\nname = \"base\"\nsource_ami = { id = \"ami-12345678\" }\n\n[regions]\nus-west-2 = []\n"
        .to_string()
}

#[test]
fn a_flag_wins_over_a_var_file_over_the_environment_over_the_default() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &offline_fleet());
    let fleet = fleet.to_str().unwrap();
    let early = workspace.write("early.toml", "build = \"from-early-file\"\n");
    let late = workspace.write("late.toml", "build = \"from-late-file\"\n");
    let (early, late) = (early.to_str().unwrap(), late.to_str().unwrap());
    let plan = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = vec!["plan", fleet];
        command.extend_from_slice(args);
        let outcome = workspace.fleetbake_with_env(&command, env);
        assert_eq!(outcome.code, 0, "{args:?}: {}", outcome.stderr);
        outcome.stdout
    };
    let names = |stdout: &str, expected: &str| {
        assert!(stdout.contains(&format!("base-{expected}-")), "expected base-{expected}-…:\n{stdout}");
    };
    names(&plan(&[], &[]), "from-default");
    let env = [("FLEETBAKE_VAR_build", "from-env")];
    names(&plan(&[], &env), "from-env");
    names(&plan(&["--var-file", early], &env), "from-early-file");
    names(&plan(&["--var-file", early, "--var-file", late], &env), "from-late-file");
    names(&plan(&["--var", "build=from-flag", "--var-file", late], &env), "from-flag");
    names(&plan(&["--var", "build=first-flag", "--var", "build=from-last-flag"], &env), "from-last-flag");
    // validate, gc and preflight take the flags too (validate: no AWS call).
    let outcome = workspace.fleetbake(&["validate", fleet, "--var", "build=flag", "--var-file", late]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
}

#[test]
fn an_unknown_var_var_file_key_or_environment_variable_is_refused_saying_where() {
    let workspace = Workspace::new();
    let fleet = workspace.write("fleet.toml", &offline_fleet());
    let fleet = fleet.to_str().unwrap();
    let outcome = workspace.fleetbake(&["validate", fleet, "--var", "biuld=hidden-value-1"]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains(&format!(
            "{fleet}: `--var biuld=…`: `biuld` is not declared in `[variables]` (declared: build, channel)"
        )),
        "{}",
        outcome.stderr
    );
    assert!(!outcome.stderr.contains("hidden-value-1"), "a value is never echoed: {}", outcome.stderr);

    let vars = workspace.write("vars.toml", "build = \"ok\"\n\nchanel = \"beta\"\n");
    let outcome = workspace.fleetbake(&["plan", fleet, "--var-file", vars.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains(&format!("{}:3:10: `chanel`: `chanel` is not declared", vars.display())),
        "{}",
        outcome.stderr
    );

    let outcome = workspace.fleetbake_with_env(&["gc", fleet, "--dry-run"], &[("FLEETBAKE_VAR_chanel", "beta")]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("environment variable `FLEETBAKE_VAR_chanel`: `chanel` is not declared"),
        "{}",
        outcome.stderr
    );
}

/// A sensitive value given by `--var` works, with a warning that `ps` shows it; a sensitive variable with a
/// default in the file is refused at its `default`.
#[test]
fn a_sensitive_value_on_the_command_line_is_warned_about_and_a_default_for_one_refused() {
    let workspace = Workspace::new();
    let text = offline_fleet().replace("[defaults]\n", "token = { sensitive = true }\n\n[defaults]\n");
    let fleet = workspace.write("fleet.toml", &text);
    let fleet = fleet.to_str().unwrap();
    let outcome = workspace.fleetbake(&["validate", fleet, "--var", "token=visible-in-ps"]);
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    assert!(
        outcome.stderr.contains("warning: `--var token=…`: `token` is sensitive and a command line is visible"),
        "{}",
        outcome.stderr
    );
    assert!(!outcome.stderr.contains("visible-in-ps"), "{}", outcome.stderr);
    let with_default = text.replace("token = { sensitive = true }", "token = { sensitive = true, default = \"x\" }");
    let fleet = workspace.write("fleet.toml", &with_default);
    let outcome = workspace.fleetbake(&["validate", fleet.to_str().unwrap()]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    let line = with_default.lines().position(|line| line.starts_with("token")).unwrap() + 1;
    assert!(
        outcome.stderr.contains(&format!(":{line}:"))
            && outcome.stderr.contains("`variables.token.default`: a sensitive variable takes its value from outside"),
        "{}",
        outcome.stderr
    );
}

/// The fleet of the moto + sshd test: `{var.build}` in the image name, a fleet tag and a run tag; the
/// sensitive `registry_token` in a provisioner's env, which writes its SHA-256 and sleeps while it is watched.
fn token_fleet(endpoint: &str, sshd: &Sshd, markers: &str) -> String {
    let header = fleet_header_at(endpoint, sshd)
        .replace("ami_name = \"{flavor}-{build_region}-{run_id}\"", "ami_name = \"{flavor}-{var.build}-{run_id}\"")
        .replace("tags = { Team = \"platform\" }", "tags = { Team = \"platform\", Build = \"{var.build}\" }")
        .replace(
            "[defaults]\n",
            "[variables]\nbuild = \"dev\"\nregistry_token = { sensitive = true }\n\n[defaults]\nrun_tags = { Build = \"{var.build}\" }\n",
        );
    format!(
        "{header}\n[[flavor]]\nname = \"app\"\nsource_ami = {AL2023}\nprovisioners = [\n\
         {{ type = \"shell\", inline = [\"printf '%s' \\\"$REGISTRY_TOKEN\\\" | sha256sum | cut -d' ' -f1 > {markers}/token.sha256\", \"echo token is $REGISTRY_TOKEN\", \"sleep 3\"], env = {{ REGISTRY_TOKEN = \"{{var.registry_token}}\" }} }},\n\
         ]\n\n[regions]\nus-west-2 = []\n"
    )
}

#[test]
fn a_variable_names_and_tags_images_and_a_sensitive_one_reaches_only_the_script() {
    use sha2::Digest;
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let token = format!("fb-registry-token-{:016x}", fastrand::u64(..));
    let fleet_path =
        workspace.write("fleet.toml", &token_fleet(&moto.endpoint, &sshd, &workspace.markers.display().to_string()));
    let fleet = fleet_path.to_str().unwrap();
    std::fs::create_dir(workspace.path("out")).unwrap();
    let events = workspace.path("out/events.jsonl").display().to_string();
    let summary = workspace.path("out/summary.json").display().to_string();
    let env = |token: &str| -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            TEST_CREDENTIALS.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
        env.push(("FLEETBAKE_VAR_registry_token".to_string(), token.to_string()));
        env
    };
    let run = |args: &[&str], token: &str| {
        let env = env(token);
        let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        workspace.fleetbake_with_env(args, &env)
    };

    let watch = CommandLineWatch::start(token.clone(), "sleep 3");
    let first = run(
        &["-v", "matrix", fleet, "--var", "build=nightly-42", "--events", &events, "--summary-json", &summary],
        &token,
    );
    let watched = watch.stop();
    assert_eq!(first.code, 0, "stderr:\n{}", first.stderr);

    // The script had the value.
    let expected = format!("{:x}", sha2::Sha256::digest(token.as_bytes()));
    let seen = std::fs::read_to_string(workspace.markers.join("token.sha256")).unwrap();
    assert_eq!(seen.trim(), expected, "the provisioner had the token in its environment");
    // The script printed it: shown masked (Packer masks sensitive variables in output alike).
    assert!(first.stderr.contains("app/us-west-2: token is <sensitive>"), "{}", first.stderr);
    // No command line held it while the script ran.
    assert!(watched.samples_with_provisioner >= 50, "{} samples saw the script", watched.samples_with_provisioner);
    assert!(watched.with_needle.is_empty(), "the token was on command lines: {:?}", watched.with_needle.first());

    // `--var` named and tagged the image.
    let manifest = read_manifest(&workspace);
    let run_id = manifest["run_id"].as_str().unwrap().to_string();
    let entry = &manifest["artifacts"]["app"]["us-west-2"];
    assert_eq!(entry["name"], format!("app-nightly-42-{run_id}").as_str(), "{entry}");
    let images = runtime().block_on(images_of_run(&moto.client("us-west-2"), &run_id));
    assert_eq!(images.len(), 1, "{images:?}");
    assert_eq!(images[0].name, format!("app-nightly-42-{run_id}"));
    assert_eq!(images[0].tags["Build"], "nightly-42");
    assert_eq!(images[0].tags["Team"], "platform");
    // And the run tag reached the build instance.
    let instances = runtime().block_on(async { moto.client("us-west-2").describe_instances().send().await.unwrap() });
    let build_tags: Vec<(String, String)> = instances
        .reservations()
        .iter()
        .flat_map(|reservation| reservation.instances())
        .flat_map(|instance| instance.tags())
        .map(|tag| (tag.key().unwrap_or_default().to_string(), tag.value().unwrap_or_default().to_string()))
        .collect();
    assert!(build_tags.contains(&("Build".to_string(), "nightly-42".to_string())), "{build_tags:?}");

    // Nothing fleetbake wrote or printed holds the token: manifest, events, summary, journal, -v logs.
    let mut haystacks = written_files(&workspace, &["fleet.toml", "tmp"]);
    let names: Vec<String> = haystacks.iter().map(|(name, _)| name.clone()).collect();
    assert!(names.iter().any(|name| name.starts_with(".fleetbake/") && name.ends_with(".jsonl")), "{names:?}");
    assert!(names.iter().any(|name| name == "out/events.jsonl"), "{names:?}");
    assert!(names.iter().any(|name| name == "out/manifest.json"), "{names:?}");
    haystacks.push(("stdout".to_string(), first.stdout.clone()));
    haystacks.push(("stderr".to_string(), first.stderr.clone()));
    let found = findings(&haystacks, &[("the registry token".to_string(), token.clone())]);
    assert!(found.is_empty(), "the token was written: {found:?}");

    // A journal cut before its last record is a run that was killed: resuming it with another token is
    // refused (the journal holds a digest of each value), with the same one it finishes.
    let journal = names.iter().find(|name| name.starts_with(".fleetbake/") && name.ends_with(".jsonl")).unwrap();
    let journal = workspace.path(journal);
    let text = std::fs::read_to_string(&journal).unwrap();
    let cut: String =
        text.lines().filter(|line| !line.contains("\"record\":\"finished\"")).map(|line| format!("{line}\n")).collect();
    assert_ne!(cut, text, "the journal had a finished record");
    std::fs::write(&journal, &cut).unwrap();
    let rotated = format!("{token}-rotated");
    let refused = run(&["matrix", fleet, "--resume", "--var", "build=nightly-42"], &rotated);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&format!("run {run_id} started with other values of `registry_token`")),
        "{}",
        refused.stderr
    );
    let other_build = run(&["matrix", fleet, "--resume", "--var", "build=nightly-43"], &token);
    assert_eq!(other_build.code, 2, "{}", other_build.stderr);
    assert!(other_build.stderr.contains("other values of `build`"), "{}", other_build.stderr);
    let resumed = run(&["matrix", fleet, "--resume", "--var", "build=nightly-42"], &token);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);

    // The token rotated: its value is not in the fingerprint, so an unchanged night reuses the image.
    let quiet = run(&["matrix", fleet, "--changed-only", "--var", "build=nightly-42"], &rotated);
    assert_eq!(quiet.code, 0, "{}", quiet.stderr);
    let night_two = read_manifest(&workspace);
    let now = &night_two["artifacts"]["app"]["us-west-2"];
    assert_eq!(now["image_id"], entry["image_id"], "a rotated token rebuilds nothing: {now}");
    assert_eq!(now["reused_from"], run_id.as_str(), "{now}");
}

/// The simulated cloud, through the binary: `--var` names the images, and the sensitive token (given in the
/// environment, used in an env) is in nothing the run prints or writes (manifest, events, summary, `-v` logs);
/// the user data takes plain variables only (it lands in the image: cloud-init keeps it on the disk).
#[test]
fn on_the_simulated_cloud_a_var_names_the_images_and_a_token_is_written_nowhere() {
    let workspace = Workspace::new();
    let token = format!("fb-sim-token-{:016x}", fastrand::u64(..));
    let fleet = "[fleet]\nname = \"vars\"\nami_name = \"{flavor}-{var.build}-{run_id}\"\ntags = { Build = \"{var.build}\" }\n\n\
                 [variables]\nbuild = \"dev\"\nregistry_token = { sensitive = true }\n\n\
                 [defaults]\ninstance_type = \"t3.small\"\nssh_username = \"ec2-user\"\n\
                 user_data = \"#!/bin/sh\\necho {var.build} > /run/build\\n\"\n\n\
                 [[flavor]]\nname = \"base\"\nsource_ami = { owners = [\"amazon\"], name = \"al2023-ami-*\" }\n\
                 provisioners = [{ type = \"shell\", inline = [\"login\"], env = { TOKEN = \"{var.registry_token}\" } }]\n\n\
                 [regions]\nus-west-2 = [\"us-east-1\"]\n";
    let fleet_path = workspace.write("fleet.toml", fleet);
    let events = workspace.path("events.jsonl").display().to_string();
    let summary = workspace.path("summary.json").display().to_string();
    let outcome = workspace.fleetbake_with_env(
        &[
            "-v",
            "matrix",
            fleet_path.to_str().unwrap(),
            "--cloud",
            "sim",
            "--var",
            "build=nightly-7",
            "--events",
            &events,
            "--summary-json",
            &summary,
        ],
        &[("FLEETBAKE_VAR_registry_token", &token)],
    );
    assert_eq!(outcome.code, 0, "{}", outcome.stderr);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workspace.path("manifest.sim.json")).unwrap()).unwrap();
    let run_id = manifest["run_id"].as_str().unwrap();
    for region in ["us-west-2", "us-east-1"] {
        let entry = &manifest["artifacts"]["base"][region];
        assert_eq!(entry["name"], format!("base-nightly-7-{run_id}").as_str(), "{region}: {entry}");
    }
    let mut haystacks = written_files(&workspace, &["fleet.toml", "tmp"]);
    let events = haystacks.iter().find(|(name, _)| name == "events.jsonl").expect("the events were written");
    assert!(events.1.contains(&format!("base-nightly-7-{run_id}")), "the scan reads what the run wrote");
    assert!(haystacks.iter().any(|(name, _)| name == "summary.json"));
    haystacks.push(("stdout".to_string(), outcome.stdout.clone()));
    haystacks.push(("stderr".to_string(), outcome.stderr.clone()));
    let found = findings(&haystacks, &[("the registry token".to_string(), token.clone())]);
    assert!(found.is_empty(), "the token was written: {found:?}");
}
