//! Every error class the AWS adapter maps (src/cloud/mod.rs `ErrorKind`, src/steps/patience.rs) driven through
//! the real path: `fleetbake matrix` → aws-sdk-ec2 → the fault proxy answering as EC2 documents → moto. Each
//! test checks the outcome in moto's state and in the requests the proxy recorded, as docs/reliability.md "What fleetbake
//! retries, and for how long" promises.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::cloud_state::*;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, run_matrix, AL2023};

/// One flavor, `base`, built in us-west-2 and copied to `copies`, with EC2 at `endpoint` and `limits` as the
/// fleet's `[limits]` lines.
fn small_fleet(endpoint: &str, sshd: &Sshd, copies: &[&str], limits: &str) -> String {
    let copies: Vec<String> = copies.iter().map(|region| format!("\"{region}\"")).collect();
    format!(
        "{}\n[limits]\n{limits}\n\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = [{}]\n",
        fleet_header_at(endpoint, sshd),
        copies.join(", ")
    )
}

/// An action, how many of its first requests get the answer, and the answer.
type FirstN = (&'static str, usize, fn() -> Answer);

/// Each action's answer to its first `n` requests, then forwarding: a rule with a per-action counter.
fn first_n(faults: Vec<FirstN>) -> impl Fn(&Request) -> Answer + Send + Sync {
    let seen: Mutex<HashMap<String, usize>> = Mutex::new(HashMap::new());
    move |request| {
        let Some((_, n, answer)) = faults.iter().find(|(action, _, _)| *action == request.action) else {
            return Answer::Forward;
        };
        let mut seen = seen.lock().unwrap();
        let count = seen.entry(request.action.to_string()).or_insert(0);
        *count += 1;
        if *count <= *n {
            answer()
        } else {
            Answer::Forward
        }
    }
}

fn error(status: u16, code: &'static str, message: &'static str) -> Fault {
    Fault { status, code, message }
}

/// HTTP 500 `InternalError`, as EC2 answers when it failed on its side.
fn internal_error() -> Fault {
    error(500, "InternalError", "An internal error has occurred.")
}

/// `fleetbake matrix` on [`small_fleet`] through `proxy`, in a new workspace.
fn run_small(proxy: &FaultProxy, sshd: &Sshd, copies: &[&str], limits: &str) -> (Workspace, Outcome) {
    let workspace = Workspace::new();
    let outcome = run_matrix(&workspace, &small_fleet(&proxy.endpoint, sshd, copies, limits));
    (workspace, outcome)
}

/// The `ClientToken` of each recorded `action` request.
fn client_tokens(proxy: &FaultProxy, action: &str) -> Vec<String> {
    proxy.bodies(action).iter().map(|body| field(body, "ClientToken").concat()).collect()
}

/// The run's id in `manifest`.
fn run_id_of(manifest: &serde_json::Value) -> String {
    manifest["run_id"].as_str().unwrap().to_string()
}

/// The manifest's status is `complete`, and moto holds [`exactly_one_of_each`].
fn assert_complete_with_one_of_each(moto: &Moto, workspace: &Workspace, copies: &[&str]) {
    let manifest = read_manifest(workspace);
    assert_eq!(manifest["status"], "complete");
    runtime().block_on(exactly_one_of_each(moto, &run_id_of(&manifest), copies));
}

/// In moto: no snapshot `snapshot` in `client`'s region.
async fn assert_snapshot_deleted(client: &aws_sdk_ec2::Client, snapshot: &str) {
    let left = client
        .describe_snapshots()
        .filters(aws_sdk_ec2::types::Filter::builder().name("snapshot-id").values(snapshot).build())
        .send()
        .await
        .unwrap();
    assert!(left.snapshots().is_empty(), "its snapshot {snapshot} is deleted: {:?}", left.snapshots());
}

/// HTTP 500 `InternalError`, 503 `Unavailable` and a connection dropped before the call got through are
/// transient: retried, and each create is done exactly once.
#[test]
fn transient_errors_are_retried_and_each_create_is_done_once() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let internal = || Answer::Fail(internal_error());
    let unavailable =
        || Answer::Fail(error(503, "Unavailable", "The server is overloaded and can't handle the request."));
    let proxy = FaultProxy::start(
        &moto.endpoint,
        first_n(vec![
            ("CreateKeyPair", 1, internal),
            ("CreateSecurityGroup", 1, unavailable),
            ("RunInstances", 1, || Answer::Drop),
            ("CreateImage", 2, internal),
            ("CopyImage", 1, unavailable),
        ]),
    );
    let (workspace, outcome) = run_small(&proxy, &sshd, &["us-east-1"], "");
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert_eq!(proxy.altered(), 6, "every fault was given");
    for (action, sent) in [("CreateKeyPair", 2), ("CreateSecurityGroup", 2), ("RunInstances", 2), ("CreateImage", 3)] {
        assert_eq!(proxy.bodies(action).len(), sent, "{action}: retried until it went through, then not again");
    }
    assert_eq!(proxy.bodies("CopyImage").len(), 2);
    assert_complete_with_one_of_each(&moto, &workspace, &["us-east-1"]);
}

/// A create whose answer is lost after it took effect (RunInstances: the connection drops; CopyImage: a 500
/// instead of the result) is sent again with the same `ClientToken`, and the proxy answers the repeat as EC2
/// does (the first call's result): moto holds exactly one instance and one copy.
#[test]
fn a_lost_answer_is_repeated_with_its_client_token_and_makes_nothing_twice() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let model = Ec2Model { client_tokens: true, ..Ec2Model::default() };
    let proxy = FaultProxy::start_modelling(
        &moto.endpoint,
        model,
        first_n(vec![
            ("RunInstances", 1, || Answer::ForwardThenDrop),
            ("CopyImage", 1, || Answer::ForwardThenFail(internal_error())),
        ]),
    );
    let (workspace, outcome) = run_small(&proxy, &sshd, &["us-east-1"], "");
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    for action in ["RunInstances", "CopyImage"] {
        let tokens = client_tokens(&proxy, action);
        assert_eq!(tokens.len(), 2, "{action}: sent again after its answer was lost");
        assert!(!tokens[0].is_empty() && tokens[0] == tokens[1], "{action}: the same token: {tokens:?}");
    }
    let replayed = proxy.modelled().iter().filter(|answer| answer.answer == "replayed").count();
    assert_eq!(replayed, 2, "{:?}", proxy.modelled());
    assert_complete_with_one_of_each(&moto, &workspace, &["us-east-1"]);
}

/// A CopyImage that took effect but is never answered times out (the adapter's attempt timeout) and is
/// sent again with its token; the repeat gets the first copy: one copy in moto, and the run does not hang.
#[test]
fn an_unanswered_copy_times_out_and_is_repeated_with_its_token() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let model = Ec2Model { client_tokens: true, ..Ec2Model::default() };
    let proxy = FaultProxy::start_modelling(
        &moto.endpoint,
        model,
        first_n(vec![("CopyImage", 1, || Answer::ForwardThenStall)]),
    );
    let started = std::time::Instant::now();
    let (workspace, outcome) = run_small(&proxy, &sshd, &["us-east-1"], "");
    let took = started.elapsed();
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    // The client gave up on its own (30 s), not when the proxy finally closed the connection.
    assert!(took < STALL - std::time::Duration::from_secs(10), "the run waited {took:?} for the answer");
    let tokens = client_tokens(&proxy, "CopyImage");
    assert_eq!(tokens.len(), 2, "sent again after the timeout: {tokens:?}");
    assert_eq!(tokens[0], tokens[1]);
    assert_complete_with_one_of_each(&moto, &workspace, &["us-east-1"]);
}

/// A create that takes no client token, whose answer is lost after it took effect, is repeated and meets EC2's
/// `*.Duplicate` (moto's own for key pairs and security groups; the proxy's `InvalidAMIName.Duplicate` for
/// CreateImage, as EC2 keeps AMI names unique): the run takes the existing thing as its own, and moto holds
/// one image, and no key pair or group once the run is done.
#[test]
fn a_lost_answer_without_a_client_token_is_taken_from_its_duplicate() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let model = Ec2Model { image_names: true, ..Ec2Model::default() };
    let proxy = FaultProxy::start_modelling(
        &moto.endpoint,
        model,
        first_n(vec![
            ("CreateKeyPair", 1, || Answer::ForwardThenDrop),
            ("CreateSecurityGroup", 1, || Answer::ForwardThenFail(internal_error())),
            ("CreateImage", 1, || Answer::ForwardThenDrop),
        ]),
    );
    let (workspace, outcome) = run_small(&proxy, &sshd, &[], "");
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let duplicates = proxy.modelled();
    assert!(duplicates.iter().any(|answer| answer.answer.starts_with("InvalidAMIName.Duplicate")), "{duplicates:?}");
    assert_eq!(proxy.bodies("CreateImage").len(), 2, "the repeat met the first image's name");
    assert_eq!(proxy.bodies("CreateSecurityGroup").len(), 2, "the repeat met the first group's name");
    // The key pair's private key went with the lost answer: it is deleted and made again.
    assert_eq!(proxy.bodies("CreateKeyPair").len(), 3);
    assert_eq!(proxy.bodies("DeleteKeyPair").len(), 2, "once to make it anew, once in cleanup");
    assert_complete_with_one_of_each(&moto, &workspace, &[]);
}

/// `InsufficientInstanceCapacity` (EC2's server error: no capacity of that type in that zone) on the first
/// launch moves it to the build's other subnet, in another zone, at once.
#[test]
fn no_capacity_in_one_zone_moves_the_launch_to_the_other_subnet() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let layout = runtime().block_on(replace_default_vpc(&moto.client("us-west-2"), "10.20.0.0/16"));
    let proxy = FaultProxy::start(
        &moto.endpoint,
        first_n(vec![("RunInstances", 1, || {
            Answer::Fail(error(
                500,
                "InsufficientInstanceCapacity",
                "We currently do not have sufficient t3.small capacity in the Availability Zone you requested.",
            ))
        })]),
    );
    let workspace = Workspace::new();
    // A patience shorter than any pause: a launch that waited instead of moving would fail.
    let fleet = small_fleet(&proxy.endpoint, &sshd, &[], "capacity_patience = \"1s\"")
        .replace("source_ami = ", "subnet = { tags = { Tier = \"build\" } }\nsource_ami = ");
    let outcome = run_matrix(&workspace, &fleet);
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    let subnets: Vec<String> = proxy
        .bodies("RunInstances")
        .iter()
        .map(|body| [field(body, "SubnetId"), field(body, "NetworkInterface.1.SubnetId")].concat().concat())
        .collect();
    assert_eq!(subnets.len(), 2, "{subnets:?}");
    assert_ne!(subnets[0], subnets[1], "the second launch went to the other subnet");
    for subnet in &subnets {
        assert!(layout.tagged.contains(subnet), "{subnet} is one of the build's subnets {:?}", layout.tagged);
    }
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert_eq!(instance_subnets(&west).await, [subnets[1].clone()], "moto's one instance is in the second subnet");
        exactly_one_of_each(&moto, &run_id_of(&read_manifest(&workspace)), &[]).await;
    });
}

/// The account's quotas are waits, not failures: `VcpuLimitExceeded` on RunInstances (one placement: a
/// pause, then again) and CopyImage's `ResourceLimitExceeded` (copies in flight into the destination) are
/// waited out within `capacity_patience`; exactly one instance and one copy result.
#[test]
fn quota_answers_are_waited_out_and_make_one_instance_and_one_copy() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(
        &moto.endpoint,
        first_n(vec![
            ("RunInstances", 1, || {
                Answer::Fail(error(
                    400,
                    "VcpuLimitExceeded",
                    "You have requested more vCPU capacity than your current vCPU limit of 32 allows.",
                ))
            }),
            ("CopyImage", 1, || {
                Answer::Fail(error(
                    400,
                    "ResourceLimitExceeded",
                    "You have reached the maximum number of concurrent copies.",
                ))
            }),
        ]),
    );
    let (workspace, outcome) = run_small(&proxy, &sshd, &["us-east-1"], "capacity_patience = \"3s\"");
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("no room now (VcpuLimitExceeded)"), "{}", outcome.stderr);
    assert_eq!(proxy.bodies("RunInstances").len(), 2);
    assert_eq!(proxy.bodies("CopyImage").len(), 2);
    assert_complete_with_one_of_each(&moto, &workspace, &["us-east-1"]);
}

/// CreateImage refused right after the instance reported `stopped` (`IncorrectInstanceState`, as EC2 answers
/// while the instance settles) is not ready, not failed: CreateImage again after a pause; one image in moto.
#[test]
fn create_image_refused_right_after_stop_is_tried_again() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(
        &moto.endpoint,
        first_n(vec![("CreateImage", 1, || {
            Answer::Fail(error(
                400,
                "IncorrectInstanceState",
                "The instance is not in a state from which it can be imaged.",
            ))
        })]),
    );
    let (workspace, outcome) = run_small(&proxy, &sshd, &[], "");
    assert_eq!(outcome.code, 0, "stderr:\n{}", outcome.stderr);
    assert_eq!(proxy.bodies("CreateImage").len(), 2, "refused once, then made");
    assert_complete_with_one_of_each(&moto, &workspace, &[]);
}

/// Credentials that expire mid-run (`ExpiredToken` on CreateImage) fail that build's step, not retried; the
/// failure's hint names the credential source; cleanup still removes every temporary resource; nothing new
/// starts after it (the copy is not started) and the run exits 3, naming the gc command.
#[test]
fn expired_credentials_mid_run_fail_the_build_and_leave_nothing() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::refusing(
        &moto.endpoint,
        "CreateImage",
        error(400, "ExpiredToken", "The security token included in the request is expired"),
    );
    let (workspace, outcome) = run_small(&proxy, &sshd, &["us-east-1"], "");
    assert_eq!(outcome.code, 3, "the documented code for expired credentials\nstderr:\n{}", outcome.stderr);
    assert!(outcome.stderr.contains("remove them with: fleetbake gc "), "{}", outcome.stderr);
    assert_eq!(proxy.bodies("CreateImage").len(), 1, "an expired token is not retried outside cleanup");
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "failed");
    let failure = manifest["failures"].as_array().unwrap().iter().find(|f| f["region"] == "us-west-2").cloned();
    let failure = failure.expect("the build failed");
    assert_eq!(failure["stage"], "create_image");
    assert_eq!(failure["code"], "ExpiredToken");
    let hint = failure["hint"].as_str().unwrap_or_default();
    assert!(hint.contains("expired") && hint.contains("AWS_ACCESS_KEY_ID"), "{failure}");
    let run_id = run_id_of(&manifest);
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert!(images_of_run(&west, &run_id).await.is_empty());
        assert!(images_of_run(&moto.client("us-east-1"), &run_id).await.is_empty());
        assert_eq!(instances(&west).await.len(), 1);
        assert_nothing_temporary_left(&west, "us-west-2").await;
    });
}

/// `AuthFailure` (EC2 did not accept the credentials) is final: the launch fails at once with a hint naming
/// where the credentials came from (here the environment's keys); nothing is launched or left.
#[test]
fn auth_failure_fails_the_launch_naming_the_credential_source() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::refusing(
        &moto.endpoint,
        "RunInstances",
        error(401, "AuthFailure", "AWS was not able to validate the provided access credentials"),
    );
    let (workspace, outcome) = run_small(&proxy, &sshd, &[], "");
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    assert_eq!(proxy.bodies("RunInstances").len(), 1, "not retried");
    let manifest = read_manifest(&workspace);
    let failure = &manifest["failures"][0];
    assert_eq!(failure["stage"], "launch");
    assert_eq!(failure["code"], "AuthFailure");
    let hint = failure["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains(
            "AWS did not accept the credentials in us-west-2: if other regions answer, the region is not enabled"
        ) && hint.contains("else access keys from the environment (AWS_ACCESS_KEY_ID)"),
        "{failure}"
    );
    assert!(outcome.stderr.contains("access keys from the environment"), "{}", outcome.stderr);
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert!(instances(&west).await.is_empty(), "nothing launched");
        assert_nothing_temporary_left(&west, "us-west-2").await;
    });
}

/// The new image's describes in `region`, shown `failed` with EC2's StateReason (as DescribeImages answers for
/// an image whose creation or copy failed); the first snapshot id seen is kept in `snapshot`.
fn failed_image(
    region: &'static str,
    snapshot: Arc<Mutex<Option<String>>>,
) -> impl Fn(&Request) -> Answer + Send + Sync {
    move |request| {
        let by_id = request.action == "DescribeImages" && request.body.contains("Filter.1.Name=image-id");
        if !by_id || request.region != region {
            return Answer::Forward;
        }
        let snapshot = Arc::clone(&snapshot);
        Answer::RewriteWith(Box::new(move |body: String| {
            // Only the build's image (named `base-…`), never a source image.
            if !body.contains("<name>base-") {
                return body;
            }
            if let Some(id) = body.split("<snapshotId>").nth(1).and_then(|rest| rest.split('<').next()) {
                snapshot.lock().unwrap().get_or_insert_with(|| id.to_string());
            }
            body.replace(
                "<imageState>available</imageState>",
                "<imageState>failed</imageState><stateReason><code>Client.InternalError</code>\
                 <message>Client.InternalError: the volume could not be snapshotted</message></stateReason>",
            )
        }))
    }
}

/// An image that ends `failed` fails its job at `wait_image` with EC2's StateReason in the manifest, and is
/// discarded: deregistered and its snapshot deleted in moto; the copy is skipped; nothing temporary is left.
#[test]
fn a_failed_image_fails_its_job_with_the_reason_and_is_discarded() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let snapshot = Arc::new(Mutex::new(None));
    let proxy = FaultProxy::start(&moto.endpoint, failed_image("us-west-2", Arc::clone(&snapshot)));
    let (workspace, outcome) = run_small(&proxy, &sshd, &["us-east-1"], "");
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let failures = manifest["failures"].as_array().unwrap();
    let build = failures.iter().find(|f| f["region"] == "us-west-2").expect("the build failed");
    assert_eq!(build["stage"], "wait_image");
    let error = build["error"].as_str().unwrap();
    assert!(error.contains("Client.InternalError: the volume could not be snapshotted"), "{build}");
    let copy = failures.iter().find(|f| f["region"] == "us-east-1").expect("the copy is accounted for");
    assert_eq!(copy["stage"], "skipped");
    assert!(proxy.bodies("CopyImage").is_empty());
    let snapshot = snapshot.lock().unwrap().clone().expect("the failed image's snapshot was seen");
    let run_id = run_id_of(&manifest);
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert!(images_of_run(&west, &run_id).await.is_empty(), "the failed image is deregistered");
        assert_snapshot_deleted(&west, &snapshot).await;
        assert_nothing_temporary_left(&west, "us-west-2").await;
    });
}

/// A copy that ends `failed` fails that copy at `wait_copy` with EC2's StateReason and is discarded
/// (deregistered, its snapshot deleted, in the target region); the build's image stays.
#[test]
fn a_failed_copy_fails_that_copy_with_the_reason_and_is_discarded() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let snapshot = Arc::new(Mutex::new(None));
    let proxy = FaultProxy::start(&moto.endpoint, failed_image("us-east-1", Arc::clone(&snapshot)));
    let (workspace, outcome) = run_small(&proxy, &sshd, &["us-east-1"], "");
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "partial");
    let failures = manifest["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!((&failures[0]["region"], &failures[0]["stage"]), (&"us-east-1".into(), &"wait_copy".into()));
    let error = failures[0]["error"].as_str().unwrap();
    assert!(error.contains("Client.InternalError: the volume could not be snapshotted"), "{error}");
    let snapshot = snapshot.lock().unwrap().clone().expect("the failed copy's snapshot was seen");
    let run_id = run_id_of(&manifest);
    runtime().block_on(async {
        let east = moto.client("us-east-1");
        assert!(images_of_run(&east, &run_id).await.is_empty(), "the failed copy is deregistered");
        assert_snapshot_deleted(&east, &snapshot).await;
        let west = moto.client("us-west-2");
        assert_eq!(images_of_run(&west, &run_id).await.len(), 1, "the build's image stays");
        assert_nothing_temporary_left(&west, "us-west-2").await;
    });
}

/// A launch that EC2 ends `terminated` while pending (StateReason `Server.InsufficientInstanceCapacity`) is
/// final: the job fails at `wait_running` with the reason; no image is made and nothing temporary is left.
#[test]
fn a_launch_that_ends_terminated_fails_its_job_with_the_reason() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::answering(&moto.endpoint, "DescribeInstances", "Filter.1.Name=instance-id", || {
        Answer::Rewrite(|body| {
            body.replace(
                "<instanceState><code>16</code><name>running</name></instanceState>",
                "<instanceState><code>48</code><name>terminated</name></instanceState>",
            )
            .replace(
                "<stateReason><code/><message/></stateReason>",
                "<stateReason><code>Server.InsufficientInstanceCapacity</code>\
                 <message>Server.InsufficientInstanceCapacity: Insufficient capacity.</message></stateReason>",
            )
        })
    });
    let (workspace, outcome) = run_small(&proxy, &sshd, &[], "");
    assert_eq!(outcome.code, 1, "stderr:\n{}", outcome.stderr);
    let manifest = read_manifest(&workspace);
    let failure = &manifest["failures"][0];
    assert_eq!(failure["stage"], "wait_running");
    let error = failure["error"].as_str().unwrap();
    assert!(error.contains("Server.InsufficientInstanceCapacity: Insufficient capacity."), "{failure}");
    assert!(proxy.bodies("CreateImage").is_empty());
    let run_id = run_id_of(&manifest);
    runtime().block_on(async {
        let west = moto.client("us-west-2");
        assert!(images_of_run(&west, &run_id).await.is_empty());
        assert_eq!(instances(&west).await.len(), 1, "launched once, not again");
        assert_nothing_temporary_left(&west, "us-west-2").await;
    });
}
