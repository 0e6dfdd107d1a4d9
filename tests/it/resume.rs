//! Runs that die and are finished later, and what `gc` removes: through the binary, aws-sdk-ec2 → moto and
//! openssh → sshd.

use serde_json::Value;

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};

/// The regions of [`gated_fleet`]: its build region, then its copy's.
pub(crate) const REGIONS: [&str; 2] = ["us-west-2", "us-east-1"];

/// `quick` then `gated` (one build at a time), built in us-west-2 and copied to us-east-1, against `endpoint`;
/// `retention` appended as given. `gated`'s provisioner waits until `gate` exists.
pub(crate) fn gated_fleet(endpoint: &str, sshd: &Sshd, gate: &Gate, retention: &str) -> String {
    format!(
        "{}\n[limits]\nmax_parallel_builds = 1\n\n\
         [[flavor]]\nname = \"quick\"\nsource_ami = {AL2023}\n\n\
         [[flavor]]\nname = \"gated\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo waiting for the gate\", \"{}\"] }}]\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n{retention}",
        fleet_header_at(endpoint, sshd),
        gate.wait_line()
    )
}

/// What [`gated_fleet`]'s `gated` prints while its provisioner waits for the gate.
pub(crate) const AT_THE_GATE: &str = "gated/us-west-2: waiting for the gate";

/// Starts `fleetbake ARGS` from `workspace` (its temporary files, the SSH key directories, in the workspace's
/// `tmp`, so a run the test kills leaves none outside the workspace) and reads its stderr until a line contains
/// `until`.
pub(crate) fn start_until(workspace: &Workspace, args: &[&str], until: &str) -> Running {
    let mut running = Running::start(workspace, args, &[]);
    running.read_until(until);
    running
}

/// The ids of `flavor`'s images in the manifest, in [`REGIONS`] order.
pub(crate) fn image_ids(manifest: &Value, flavor: &str) -> Vec<String> {
    REGIONS
        .iter()
        .map(|region| {
            let id = manifest["artifacts"][flavor][region]["image_id"].as_str();
            id.unwrap_or_else(|| panic!("{flavor} in {region}: {manifest}")).to_string()
        })
        .collect()
}

/// In moto: nothing temporary left in any of [`REGIONS`].
pub(crate) fn assert_nothing_temporary_left_anywhere(moto: &Moto) {
    runtime().block_on(async {
        for region in REGIONS {
            assert_nothing_temporary_left(&moto.client(region), region).await;
        }
    });
}

#[test]
fn killed_mid_run_then_resumed_makes_each_image_once_and_gc_leaves_nothing() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet_path = workspace.write("fleet.toml", &gated_fleet(&moto.endpoint, &sshd, &gate, ""));

    // `quick` is built and copied; `gated` is provisioning when the process is killed outright.
    let Running { mut child, seen, .. } =
        start_until(&workspace, &["matrix", fleet_path.to_str().unwrap()], AT_THE_GATE);
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    // Killed outright, it left its connection's folder behind (the key in it already deleted: the ssh master
    // was logged in): in the workspace's TMPDIR (removed with it), not in the machine's /tmp.
    let left: Vec<_> = std::fs::read_dir(workspace.tmp()).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].file_name().unwrap().to_string_lossy().starts_with("fb-"), "{left:?}");
    assert!(left[0].join("owner").exists() && !left[0].join("key").exists(), "{left:?}");
    let killed = read_manifest(&workspace);
    let run_id = killed["run_id"].as_str().unwrap().to_string();
    assert_eq!(killed["status"], "partial", "{seen}");
    let quick_images = image_ids(&killed, "quick");

    // The journal recorded it all, flushed; a torn last line (as if the kill came mid-write) is recovered.
    let journal = workspace.path(&format!(".fleetbake/fleet/{run_id}.jsonl"));
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(text.starts_with("{\"format\":\"fleetbake-journal\",\"version\":2,"), "{text}");
    assert!(text.contains("\"record\":\"created\"") && text.contains("\"record\":\"image_available\""), "{text}");
    std::fs::write(&journal, format!("{text}{{\"record\":\"image_avail")).unwrap();

    // The killed build's instance, group and key pair are still there; a dry run of gc names them and
    // removes nothing.
    let west = runtime().block_on(async { moto.client("us-west-2") });
    let running = |state: &str| state == "running" || state == "pending" || state == "stopped";
    let left = runtime().block_on(async { instances(&west).await });
    assert_eq!(left.iter().filter(|(_, state)| running(state)).count(), 1, "{left:?}");
    let dry = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    for kind in ["would remove instance i-", "would remove security group sg-", "would remove key pair fleetbake-"] {
        assert!(dry.stdout.contains(kind), "{kind}: {}", dry.stdout);
    }
    assert!(dry.stdout.contains(&format!("(run {run_id})")), "{}", dry.stdout);
    let still = runtime().block_on(async { instances(&west).await });
    assert_eq!(still.iter().filter(|(_, state)| running(state)).count(), 1, "a dry run removes nothing");

    // Resume: the same run, `quick` reused as it was, `gated` built and copied once. EC2's describes lag a new
    // image for a while: the proxy hides the images from the first lookup by name (us-east-1's, regions go in
    // name order), so that one is found by the id the journal recorded, the other by its name.
    let blinded = std::sync::atomic::AtomicBool::new(false);
    let proxy = FaultProxy::start(&moto.endpoint, move |request| {
        let by_name = request.action == "DescribeImages" && request.body.contains("Filter.1.Name=name");
        if by_name && !blinded.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Answer::Rewrite(|body| match (body.find("<imagesSet>"), body.find("</imagesSet>")) {
                (Some(start), Some(end)) => format!("{}<imagesSet>{}", &body[..start], &body[end..]),
                _ => body,
            })
        } else {
            Answer::Forward
        }
    });
    let fleet_text = std::fs::read_to_string(&fleet_path).unwrap().replace(&moto.endpoint, &proxy.endpoint);
    std::fs::write(&fleet_path, fleet_text).unwrap();
    gate.open();
    // Without the preflight, whose source lookup would be the first by name the proxy blinds.
    let resumed = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--resume", "--no-preflight"]);
    assert_eq!(resumed.code, 0, "stderr:\n{}", resumed.stderr);
    assert_eq!(proxy.altered(), 1);
    assert!(resumed.stderr.contains(&format!("resuming run {run_id} (attempt 2)")), "{}", resumed.stderr);
    assert!(resumed.stderr.contains("dropped a torn last record"), "{}", resumed.stderr);
    assert!(resumed.stderr.contains("removed instance i-"), "the killed attempt's instance: {}", resumed.stderr);
    // And on this machine: the killed attempt's ssh master and folder.
    let ended = format!("ended 1 ssh master and removed 1 key directory left by run {run_id}");
    assert!(resumed.stderr.contains(&ended), "{ended}: {}", resumed.stderr);
    assert_eq!(std::fs::read_dir(workspace.tmp()).unwrap().count(), 0, "nothing left in TMPDIR");
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["run_id"], run_id.as_str());
    assert_eq!(manifest["started_at"], killed["started_at"]);
    assert_eq!(image_ids(&manifest, "quick"), quick_images, "reused, not rebuilt");
    let gated_images = image_ids(&manifest, "gated");
    runtime().block_on(async {
        for (index, region) in REGIONS.iter().enumerate() {
            let images = images_of_run(&moto.client(region), &run_id).await;
            let mut flavors: Vec<&str> = images.iter().map(|image| image.tags["fleetbake:flavor"].as_str()).collect();
            flavors.sort();
            assert_eq!(flavors, ["gated", "quick"], "one image per flavor in {region}: {images:?}");
            assert!(images.iter().any(|image| image.id == gated_images[index]));
        }
    });

    // Nothing of the run is in progress now: gc finds nothing temporary left anywhere.
    let gc = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    assert!(gc.stdout.contains("removed 0 temporary resources"), "{}", gc.stdout);
    assert_nothing_temporary_left_anywhere(&moto);
    // A finished run is not resumed again.
    let again = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--resume"]);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(again.stderr.contains("nothing to resume"), "{}", again.stderr);
}

#[test]
fn gc_removes_a_killed_runs_leftovers_and_keeps_the_newest_images_and_the_manifests() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet_path =
        workspace.write("fleet.toml", &gated_fleet(&moto.endpoint, &sshd, &gate, "\n[retention]\nkeep = 1\n"));

    // A run killed mid-build leaves its instance, security group and key pair; gc removes them.
    let Running { mut child, .. } = start_until(&workspace, &["matrix", fleet_path.to_str().unwrap()], AT_THE_GATE);
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let dry = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap(), "--dry-run"]);
    let would = "gc: would end 1 ssh master and remove 1 key directory left by run ";
    assert!(dry.stdout.contains(would), "{would}: {}", dry.stdout);
    assert_eq!(std::fs::read_dir(workspace.tmp()).unwrap().count(), 1, "a dry run ends nothing");
    let swept = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(swept.code, 0, "{}{}", swept.stdout, swept.stderr);
    for kind in ["removed instance i-", "removed security group sg-", "removed key pair fleetbake-"] {
        assert!(swept.stdout.contains(kind), "{kind}: {}", swept.stdout);
    }
    assert!(swept.stdout.contains("removed 3 temporary resources"), "{}", swept.stdout);
    assert_nothing_temporary_left_anywhere(&moto);
    // And on this machine: the killed run's ssh master and its connection's folder.
    let said = "gc: ended 1 ssh master and removed 1 key directory left by run ";
    assert!(swept.stdout.contains(said), "{said}: {}", swept.stdout);
    assert_eq!(std::fs::read_dir(workspace.tmp()).unwrap().count(), 0, "nothing left in TMPDIR");

    gate.open();
    let run = || {
        // Run ids are per second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap()]);
        assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
        std::fs::read_to_string(workspace.path("out/manifest.json")).unwrap()
    };
    let older = run();
    let newer = run();
    let older_manifest: Value = serde_json::from_str(&older).unwrap();
    let older_run = older_manifest["run_id"].as_str().unwrap().to_string();

    // The manifest names the older run's images: gc keeps them, and the newest per flavor and region too.
    workspace.write("out/manifest.json", &older);
    // Only the killed run's two `quick` images are beyond them.
    let kept = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(kept.code, 0, "{}{}", kept.stdout, kept.stderr);
    assert!(kept.stdout.contains("deregistered 2 images"), "{}", kept.stdout);

    // With the newer manifest back, the older run's four images go, with their snapshots.
    workspace.write("out/manifest.json", &newer);
    let dry = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap(), "--dry-run"]);
    assert!(dry.stdout.contains("and deregister 4 images"), "{}", dry.stdout);
    let older_snapshots: Vec<String> = runtime().block_on(async {
        let mut snapshots = Vec::new();
        for region in REGIONS {
            let images = images_of_run(&moto.client(region), &older_run).await;
            assert_eq!(images.len(), 2, "a dry run deregisters nothing");
            snapshots.extend(images.into_iter().flat_map(|image| image.snapshot_ids));
        }
        snapshots
    });
    let gc = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    assert!(gc.stdout.contains("deregistered 4 images"), "{}", gc.stdout);
    assert!(gc.stdout.contains("removed: beyond the newest 1"), "{}", gc.stdout);
    runtime().block_on(async {
        for region in REGIONS {
            let client = moto.client(region);
            assert!(images_of_run(&client, &older_run).await.is_empty(), "{region}");
            let newer_manifest: Value = serde_json::from_str(&newer).unwrap();
            let newer_run = newer_manifest["run_id"].as_str().unwrap();
            assert_eq!(images_of_run(&client, newer_run).await.len(), 2, "{region}");
        }
        let west = moto.client("us-west-2");
        let east = moto.client("us-east-1");
        for snapshot in &older_snapshots {
            let west_has = west.describe_snapshots().snapshot_ids(snapshot).send().await.is_ok();
            let east_has = east.describe_snapshots().snapshot_ids(snapshot).send().await.is_ok();
            assert!(!west_has && !east_has, "snapshot {snapshot} deleted");
        }
    });
}

#[test]
fn a_second_sigint_exits_at_once_naming_what_may_be_left_and_gc_removes_it() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    // moto terminates instances at once; the proxy shows them shutting down for ever, so the first SIGINT's
    // cleanup is still waiting when the second comes.
    let proxy = FaultProxy::start(&moto.endpoint, |request| {
        let by_id = request.body.contains("Filter.1.Name=instance-id");
        match request.action {
            "DescribeInstances" if by_id => {
                Answer::Rewrite(|body| body.replace("<name>terminated</name>", "<name>shutting-down</name>"))
            }
            _ => Answer::Forward,
        }
    });
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"gated\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo waiting for the gate\", \"{}\"] }}]\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header_at(&proxy.endpoint, &sshd),
        gate.wait_line()
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let mut running = start_until(&workspace, &["matrix", fleet_path.to_str().unwrap()], AT_THE_GATE);
    running.signal("INT");
    running.read_until("cleaning up instance");
    // Cleanup is waiting for the instance to terminate.
    std::thread::sleep(std::time::Duration::from_millis(300));
    running.signal("INT");
    let seen = running.seen.clone();
    let (code, rest) = running.finish();
    assert_eq!(code, Some(130), "stderr:\n{seen}{rest}");
    assert!(rest.contains("exited without waiting for cleanup; these may be left in the account:"), "{rest}");
    for kind in ["instance i-", "security group sg-", "key pair fleetbake-"] {
        assert!(rest.contains(&format!("  {kind}")), "{kind}: {rest}");
    }
    assert!(rest.contains(&format!("fleetbake gc {}", fleet_path.display())), "{rest}");
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "partial");
    assert!(manifest["finished_at"].is_string(), "the manifest's last state is written: {manifest}");
    // What is named is what the account holds: the build's instance (its terminate was sent; EC2, as the proxy
    // shows it, never said it ended), and its group and key pair, which cleanup never reached.
    let west = moto.client("us-west-2");
    let (instance, group, key_pair) = runtime().block_on(build_resources(&west));
    for named in
        [format!("  instance {instance}"), format!("  security group {group}"), format!("  key pair {key_pair}")]
    {
        assert!(rest.contains(&named), "`{named}` in: {rest}");
    }

    let gc = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    for removed in [format!("removed security group {group}"), format!("removed key pair {key_pair}")] {
        assert!(gc.stdout.contains(&removed), "`{removed}` in: {}", gc.stdout);
    }
    runtime().block_on(async { assert_nothing_temporary_left(&west, "us-west-2").await });
}

/// The one build's instance id, security group id and key pair name, as the account holds them; fails unless
/// there is exactly one of each (the group and key pair fleetbake's, by name).
async fn build_resources(client: &aws_sdk_ec2::Client) -> (String, String, String) {
    let instances = instances(client).await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    let groups = client.describe_security_groups().send().await.unwrap();
    let groups: Vec<String> = groups
        .security_groups()
        .iter()
        .filter(|group| group.group_name().unwrap_or_default().starts_with("fleetbake-"))
        .map(|group| group.group_id().unwrap().to_string())
        .collect();
    assert_eq!(groups.len(), 1, "the group is still there: {groups:?}");
    let keys: Vec<String> = key_pair_names(client).await.into_iter().filter(|k| k.starts_with("fleetbake-")).collect();
    assert_eq!(keys.len(), 1, "the key pair is still there: {keys:?}");
    (instances[0].0.clone(), groups[0].clone(), keys[0].clone())
}

#[test]
fn gc_beside_a_run_in_progress_refuses_to_remove_images_and_leaves_its_resources_alone() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let retention = "\n[retention]\nkeep = 1\n";
    let fleet_path = workspace.write("fleet.toml", &gated_fleet(&moto.endpoint, &sshd, &gate, retention));
    let running = start_until(&workspace, &["matrix", fleet_path.to_str().unwrap()], AT_THE_GATE);
    let run_id = read_manifest(&workspace)["run_id"].as_str().unwrap().to_string();

    // With `[retention]`, gc would deregister images: the run holds the fleet file's lock, so gc refuses at
    // once, naming it, and touches nothing: it goes through a recording proxy, which sees no request.
    let proxy = FaultProxy::recording(&moto.endpoint);
    let through_proxy = gated_fleet(&moto.endpoint, &sshd, &gate, retention).replace(&moto.endpoint, &proxy.endpoint);
    std::fs::write(&fleet_path, through_proxy).unwrap();
    let refused = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(proxy.requests(), 0, "no AWS call: {:?}", proxy.actions());
    assert_eq!(refused.code, 1, "{}{}", refused.stdout, refused.stderr);
    assert!(
        refused.stderr.contains(&format!("another fleetbake is running this fleet file: run {run_id}")),
        "{}",
        refused.stderr
    );
    // Without it, gc removes only what runs not in progress left: nothing of this one.
    std::fs::write(&fleet_path, gated_fleet(&moto.endpoint, &sshd, &gate, "")).unwrap();
    let gc = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    assert!(gc.stdout.contains("removed 0 temporary resources, deregistered 0 images"), "{}", gc.stdout);
    assert!(gc.stdout.contains("it may be in progress"), "{}", gc.stdout);

    gate.open();
    let (code, rest) = running.finish();
    assert_eq!(code, Some(0), "the run was not disturbed: {rest}");
    assert_eq!(read_manifest(&workspace)["status"], "complete");
    assert_nothing_temporary_left_anywhere(&moto);
}

#[test]
fn a_second_run_of_a_fleet_file_in_progress_is_refused_before_any_aws_call_even_through_a_symlink() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet_path = workspace.write("fleet.toml", &gated_fleet(&moto.endpoint, &sshd, &gate, ""));
    let mut running = start_until(&workspace, &["matrix", fleet_path.to_str().unwrap()], AT_THE_GATE);
    let run_id = read_manifest(&workspace)["run_id"].as_str().unwrap().to_string();

    // The second one goes through a proxy that counts what it sends: nothing.
    let proxy = FaultProxy::start(&moto.endpoint, |_| Answer::Forward);
    let fleet_text = std::fs::read_to_string(&fleet_path).unwrap().replace(&moto.endpoint, &proxy.endpoint);
    std::fs::write(&fleet_path, fleet_text).unwrap();
    // The same file through a symlink in another folder, under another name, is the same fleet: one lock.
    let linked = workspace.path("elsewhere/prod.toml");
    std::fs::create_dir_all(linked.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&fleet_path, &linked).unwrap();
    let (path, linked) = (fleet_path.to_str().unwrap(), linked.to_str().unwrap());
    for args in [vec!["matrix", path], vec!["matrix", path, "--resume"], vec!["matrix", linked]] {
        let second = workspace.fleetbake(&args);
        assert_eq!(second.code, 1, "{args:?}: {}", second.stderr);
        assert!(
            second.stderr.contains(&format!("another fleetbake is running this fleet file: run {run_id}")),
            "{args:?}: {}",
            second.stderr
        );
        // Refused at once, not after waiting for the lock: the first run still holds it, unfinished (held at
        // the gate, which opens only below).
        running.assert_running();
        let first = read_manifest(&workspace);
        assert!(first["finished_at"].is_null(), "the first run ended before the refusal: {first}");
    }
    assert_eq!(proxy.requests(), 0, "no AWS call");
    assert!(!workspace.path("elsewhere/manifest.json").exists(), "the symlinked run wrote no manifest");
    assert!(!workspace.path("elsewhere/.fleetbake").exists(), "nor a journal of its own");

    gate.open();
    let (code, rest) = running.finish();
    assert_eq!(code, Some(0), "the first run finished: {rest}");
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["run_id"], run_id.as_str());
    // One image per flavor and region: nothing of a second run.
    runtime().block_on(async {
        for region in REGIONS {
            let client = moto.client(region);
            for flavor in ["quick", "gated"] {
                let name = format!("{flavor}-us-west-2-{run_id}");
                assert_eq!(images_named(&client, &name).await.len(), 1, "{name} in {region}");
            }
            let all = client.describe_images().owners("self").send().await.unwrap();
            assert_eq!(all.images().len(), 2, "only the first run's images in {region}");
        }
    });
}
