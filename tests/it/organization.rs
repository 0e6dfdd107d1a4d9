//! Images an organization can use: IMDSv2 and a hop limit on the build instance and IMDSv2 required by the
//! images, a sized, encrypted root volume, an instance profile, user data, run tags; encryption with each
//! region's own key (copies too), launch and create-volume permissions for accounts, an organization and an OU,
//! a deprecation time; a missing key found by the preflight; and the IAM policy in `docs/` covering every call.
//! Through the binary, aws-sdk-ec2 (and -kms, -sts) → a recording proxy → moto, and openssh → sshd.
//!
//! moto keeps the launch's metadata options, volumes (while the instance lives), profile, user data, launch
//! and create-volume permissions; it ignores CopyImage's `Encrypted`/`KmsKeyId` and does not implement
//! EnableImageDeprecation (HTTP 500). For those the test asserts on the requests sent, and the proxy answers
//! EnableImageDeprecation as EC2 documents it.

use std::collections::BTreeSet;

use crate::cloud_state::launch_permissions;
use crate::harness::*;
use crate::matrix::{fleet_header_at, read_manifest, AL2023};

const ACCOUNT: &str = "111122223333";
const ORGANIZATION: &str = "arn:aws:organizations::123456789012:organization/o-abc123def4";
const OU: &str = "arn:aws:organizations::123456789012:ou/o-abc123def4/ou-ab12-cd34ef56";

/// EC2's answer to EnableImageDeprecation (moto answers HTTP 500).
const DEPRECATION_ANSWER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
    <EnableImageDeprecationResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
    <requestId>fleetbake-test</requestId><return>true</return></EnableImageDeprecationResponse>";

/// Permissions fleetbake needs without calling them itself: passing the profile's role to EC2, what EC2
/// does with the keys on its behalf (encrypted volumes, snapshots and copies), and assuming the
/// `[[distribution]]` accounts' roles (the SDK's credentials provider). `kms:CreateGrant` is both: EC2 makes
/// grants on the keys, and a distribution grants a destination account the use of one (an action).
const IMPLIED: [&str; 6] = [
    "iam:PassRole",
    "sts:AssumeRole",
    "kms:Decrypt",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
];

fn policy_statements() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/iam-policy.json")).unwrap();
    let policy: serde_json::Value = serde_json::from_str(&text).unwrap();
    policy["Statement"].as_array().unwrap().clone()
}

fn actions_of(statement: &serde_json::Value) -> Vec<String> {
    statement["Action"].as_array().unwrap().iter().map(|action| action.as_str().unwrap().to_string()).collect()
}

/// Every action the policy allows. Only `ec2:CreateTags` (each statement with a condition) and `ssm:StartSession`
/// (the document, and the instances under a condition: IAM checks both) are in more than one statement.
fn policy_actions() -> BTreeSet<String> {
    let mut actions = BTreeSet::new();
    for statement in policy_statements() {
        for action in actions_of(&statement) {
            let again = !actions.insert(action.clone());
            assert!(!again || action == "ec2:CreateTags" || action == "ssm:StartSession", "{action} listed twice");
        }
    }
    actions
}

/// The `ec2:CreateAction`s the policy lets tag a resource as it is created.
fn tag_on_create_actions() -> BTreeSet<String> {
    let statements = policy_statements();
    let on_create = statements
        .iter()
        .find_map(|statement| statement["Condition"]["StringEquals"]["ec2:CreateAction"].as_array())
        .expect("a statement allows tagging on creation");
    on_create.iter().map(|action| action.as_str().unwrap().to_string()).collect()
}

#[test]
fn the_iam_policy_allows_every_call_fleetbake_makes_and_nothing_else() {
    let mut expected: BTreeSet<String> = fleetbake::cloud::Action::ALL.iter().map(|action| action.iam_name()).collect();
    expected.extend(IMPLIED.iter().map(|action| action.to_string()));
    assert_eq!(policy_actions(), expected);
}

/// Session Manager (`[ssh] interface = "session_manager"`): StartSession needs both the document and the
/// instance allowed. The document is AWS's `AWS-StartSSHSession` alone (not a shell document); the instances
/// only those tagged `fleetbake:temporary = true` (`ssm:resourceTag/…`, as AWS's "restrict access based on
/// tags" example); TerminateSession only the caller's own sessions: SSM tags each session with who started it
/// (`aws:ssmmessages:session-id` = the starter's `aws:userid`), AWS's documented form for roles and federated
/// callers too, where a `session/${aws:username}-*` resource would match nothing (a role's user id is
/// `AROA…:session-name`, its sessions' ids start with the session name); DescribeInstanceInformation and
/// DescribeSessions (the sessions still active to a build's instance, ended before it is terminated) have no
/// resource to narrow to.
#[test]
fn the_iam_policy_opens_sessions_only_to_the_fleets_temporary_instances_and_ends_only_its_own() {
    use fleetbake::cloud::{Action, SSH_SESSION_DOCUMENT};
    use fleetbake::steps::context::TEMPORARY_TAG;
    let statements = policy_statements();
    let granting = |action: Action| -> Vec<serde_json::Value> {
        statements.iter().filter(|statement| actions_of(statement).contains(&action.iam_name())).cloned().collect()
    };
    let reading = [Action::DescribeInstanceInformation.iam_name(), Action::DescribeSessions.iam_name()];
    for action in
        [Action::DescribeInstanceInformation, Action::DescribeSessions, Action::StartSession, Action::TerminateSession]
    {
        for statement in granting(action) {
            if reading.contains(&action.iam_name()) {
                assert_eq!(actions_of(&statement), reading, "the reads together: {statement}");
            } else {
                assert_eq!(actions_of(&statement), [action.iam_name()], "a statement of its own: {statement}");
            }
            let sid = statement["Sid"].as_str().unwrap();
            assert!(sid.starts_with("FleetbakeSessionManager"), "{sid}: left out without session_manager");
        }
    }
    let reads = granting(Action::DescribeInstanceInformation);
    assert_eq!(reads, granting(Action::DescribeSessions), "DescribeSessions, like it, has no resource to narrow to");
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0]["Resource"], "*");
    assert!(reads[0]["Condition"].is_null());

    let starts = granting(Action::StartSession);
    assert_eq!(starts.len(), 2, "{starts:?}");
    let document = format!("arn:aws:ssm:*:*:document/{SSH_SESSION_DOCUMENT}");
    let on_document: Vec<_> = starts.iter().filter(|statement| statement["Resource"] == document.as_str()).collect();
    assert_eq!(on_document.len(), 1, "StartSession on `{document}` alone: {starts:?}");
    assert!(on_document[0]["Condition"].is_null(), "a document carries no instance tag");
    let on_instances: Vec<_> =
        starts.iter().filter(|statement| statement["Resource"] == "arn:aws:ec2:*:*:instance/*").collect();
    assert_eq!(on_instances.len(), 1, "{starts:?}");
    assert_eq!(
        on_instances[0]["Condition"],
        serde_json::json!({ "StringEquals": { format!("ssm:resourceTag/{TEMPORARY_TAG}"): "true" } })
    );

    let ends = granting(Action::TerminateSession);
    assert_eq!(ends.len(), 1);
    assert_eq!(ends[0]["Resource"], "arn:aws:ssm:*:*:session/*");
    assert_eq!(
        ends[0]["Condition"],
        serde_json::json!({ "StringLike": { "ssm:resourceTag/aws:ssmmessages:session-id": "${aws:userid}" } })
    );
}

/// `ec2:CreateTags` on anything would let the holder tag any instance, group or key pair
/// `fleetbake:temporary=true` and then terminate or delete it, undoing the conditions below: it is allowed only
/// within a creating call fleetbake makes (`ec2:CreateAction`: snapshots too, tagged by CreateImage and
/// CopyImage) or on resources already tagged with the fleet, and never to add `fleetbake:temporary` afterwards.
/// Terminating, deleting and opening ingress need `fleetbake:temporary`; changing, deprecating and
/// deregistering an image need the fleet's tag.
#[test]
fn the_iam_policy_tags_only_on_creation_or_what_the_fleet_already_tagged() {
    use fleetbake::cloud::Action;
    use fleetbake::steps::context::{FLEET_TAG, TEMPORARY_TAG};
    let statements = policy_statements();
    let granting = |action: &str| -> Vec<serde_json::Value> {
        statements.iter().filter(|statement| actions_of(statement).iter().any(|a| a == action)).cloned().collect()
    };
    let tagging = granting("ec2:CreateTags");
    assert_eq!(tagging.len(), 2, "{tagging:?}");
    for statement in &tagging {
        assert_eq!(actions_of(statement), ["ec2:CreateTags"], "CreateTags has statements of its own");
        assert!(statement["Condition"].is_object(), "CreateTags without a condition: {statement}");
    }
    let creating: BTreeSet<String> = [
        Action::RunInstances,
        Action::CreateSecurityGroup,
        Action::CreateKeyPair,
        Action::CreateImage,
        Action::CopyImage,
    ]
    .iter()
    .map(|action| action.to_string())
    .collect();
    assert_eq!(tag_on_create_actions(), creating);
    let own = format!("aws:ResourceTag/{FLEET_TAG}");
    let after_creation: Vec<_> = tagging
        .iter()
        .filter(|statement| statement["Condition"]["StringEquals"]["ec2:CreateAction"].is_null())
        .collect();
    for statement in &after_creation {
        let condition = &statement["Condition"];
        let tagged =
            condition["Null"][&own] == "false" || condition["Null"][format!("aws:RequestTag/{FLEET_TAG}")] == "false";
        assert!(tagged, "tags only what carries the fleet's tag: {statement}");
        assert_eq!(
            condition["ForAllValues:StringNotEquals"]["aws:TagKeys"],
            serde_json::json!([TEMPORARY_TAG]),
            "{statement}"
        );
    }
    assert!(after_creation
        .iter()
        .any(|statement| statement["Resource"] == "*" && statement["Condition"]["Null"][&own] == "false"));
    // Snapshots are tagged at creation (CreateImage's and CopyImage's snapshot TagSpecifications): no grant
    // tags a snapshot afterwards.
    assert!(after_creation.iter().all(|statement| statement["Resource"] == "*"));
    let temporary = format!("aws:ResourceTag/{TEMPORARY_TAG}");
    for action in [
        Action::AuthorizeSecurityGroupIngress,
        Action::StopInstances,
        Action::TerminateInstances,
        Action::DeleteSecurityGroup,
        Action::DeleteKeyPair,
    ] {
        let statements = granting(&action.iam_name());
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0]["Condition"]["StringEquals"][&temporary], "true", "{action}");
    }
    for action in [Action::ModifyImageAttribute, Action::EnableImageDeprecation, Action::DeregisterImage] {
        let statements = granting(&action.iam_name());
        assert_eq!(statements.len(), 1);
        assert_eq!(statements[0]["Condition"]["Null"][&own], "false", "{action}");
    }
}

fn organization_fleet(endpoint: &str, sshd: &Sshd, gate: &Gate) -> String {
    let header = fleet_header_at(endpoint, sshd)
        .replacen("tags = { Team = \"platform\" }\n", "tags = { Team = \"platform\" }\ndeprecate_after = \"90d\"\n", 1)
        .replacen(
            "tags = { ManagedBy = \"fleetbake\" }\n",
            "tags = { ManagedBy = \"fleetbake\" }\n\
             metadata = { http_tokens = \"required\", hop_limit = 2 }\n\
             root_volume = { size_gb = 20, type = \"gp3\", iops = 3000, throughput = 125 }\n\
             iam_instance_profile = \"fleetbake-builder\"\n\
             user_data = \"#!/bin/sh\\necho configured by user data\\n\"\n\
             run_tags = { CostCenter = \"builds\" }\n",
            1,
        );
    format!(
        "{header}\n[encryption]\nkms_keys = {{ us-west-2 = \"alias/images-west\", us-east-1 = \"alias/images-east\" }}\n\n\
         [sharing]\naccounts = [\"{ACCOUNT}\"]\norganizations = [\"{ORGANIZATION}\"]\norganizational_units = [\"{OU}\"]\n\
         snapshot_accounts = [\"{ACCOUNT}\"]\n\n\
         [[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo holding\", \"{}\"] }}]\n\n\
         [regions]\nus-west-2 = [\"us-east-1\"]\n",
        gate.wait_line(),
    )
}

#[test]
fn an_organization_fleet_gets_encrypted_shared_deprecated_imdsv2_images() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let proxy = FaultProxy::start(&moto.endpoint, |request| match request.action {
        "EnableImageDeprecation" => Answer::Reply(DEPRECATION_ANSWER),
        _ => Answer::Forward,
    });
    moto.create_instance_profile("fleetbake-builder");
    let west_key = runtime().block_on(moto.create_key("us-west-2", "alias/images-west"));
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let fleet_path = workspace.write("fleet.toml", &organization_fleet(&proxy.endpoint, &sshd, &gate));

    // us-east-1 has no key yet: the preflight says so, and the run does not start.
    let outcome = workspace.fleetbake(&["preflight", fleet_path.to_str().unwrap()]);
    assert_eq!(outcome.code, 1, "stdout:\n{}\nstderr:\n{}", outcome.stdout, outcome.stderr);
    assert!(
        outcome.stdout.contains(&format!("ok   us-west-2: KMS key `alias/images-west`: {west_key}")),
        "{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains("FAIL us-east-1: KMS key `alias/images-east` is not found in us-east-1"),
        "{}",
        outcome.stdout
    );
    runtime().block_on(moto.create_key("us-east-1", "alias/images-east"));

    let mut running = Running::start(&workspace, &["matrix", fleet_path.to_str().unwrap()], &[]);
    running.read_until("base/us-west-2: holding");
    // Mid-build: the instance as launched.
    runtime().block_on(async {
        let client = moto.client("us-west-2");
        let volumes = client.describe_volumes().send().await.unwrap();
        let volume = volumes.volumes().iter().find(|volume| volume.size() == Some(20)).expect("a 20 GiB root volume");
        assert_eq!(volume.volume_type().map(|t| t.as_str()), Some("gp3"));
        assert_eq!(volume.encrypted(), Some(true));
        assert_eq!(volume.kms_key_id(), Some("alias/images-west"), "the build region's key");
        assert_eq!(volume.iops(), Some(3000));
        // The instance profile is associated while the instance lives (moto checks that it exists).
        let reservations = client.describe_instances().send().await.unwrap();
        let instance = &reservations.reservations()[0].instances()[0];
        let profile = instance.iam_instance_profile().and_then(|p| p.arn()).unwrap_or_default();
        assert!(profile.ends_with("/fleetbake-builder"), "{profile}");
    });
    gate.open();
    let (code, rest) = running.finish();
    assert_eq!(code, Some(0), "{rest}");

    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete");
    let deprecations = proxy.bodies("EnableImageDeprecation");
    assert_eq!(deprecations.len(), 2, "the build and its copy");
    runtime().block_on(async {
        for (region, key) in [("us-west-2", "alias/images-west"), ("us-east-1", "alias/images-east")] {
            let artifact = &manifest["artifacts"]["base"][region];
            let image = artifact["image_id"].as_str().unwrap();
            assert_eq!(artifact["kms_key_id"], key, "{artifact}");
            assert_eq!(artifact["imds_support"], "v2.0", "{artifact}");
            assert_eq!(artifact["shared_with"]["accounts"], serde_json::json!([ACCOUNT]), "{artifact}");
            assert_eq!(artifact["shared_with"]["organizations"], serde_json::json!([ORGANIZATION]), "{artifact}");
            // Deprecated 90 days after it was made, to the minute, as the request said.
            let deprecation = artifact["deprecation_time"].as_str().unwrap();
            let at: chrono::DateTime<chrono::Utc> = deprecation.parse().unwrap();
            let created: chrono::DateTime<chrono::Utc> = artifact["created_at"].as_str().unwrap().parse().unwrap();
            assert!((at - created - chrono::TimeDelta::days(90)).num_seconds().abs() <= 60, "{artifact}");
            let request = deprecations.iter().find(|body| field(body, "ImageId") == [image]).expect("deprecated");
            assert_eq!(field(request, "DeprecateAt").iter().map(|v| decoded(v)).collect::<Vec<_>>(), [deprecation]);

            // Who may launch it, and create volumes from its snapshot, as moto keeps it.
            let client = moto.client(region);
            let mut granted: Vec<String> = launch_permissions(&client, image)
                .await
                .iter()
                .map(|p| {
                    let any = p.user_id().or(p.organization_arn()).or(p.organizational_unit_arn());
                    any.unwrap_or("?").to_string()
                })
                .collect();
            granted.sort();
            let mut expected = vec![ACCOUNT.to_string(), ORGANIZATION.to_string(), OU.to_string()];
            expected.sort();
            assert_eq!(granted, expected, "{region}");
            for snapshot in artifact["snapshot_ids"].as_array().unwrap() {
                let attribute = client
                    .describe_snapshot_attribute()
                    .snapshot_id(snapshot.as_str().unwrap())
                    .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                    .send()
                    .await
                    .unwrap();
                let accounts: Vec<_> =
                    attribute.create_volume_permissions().iter().filter_map(|p| p.user_id()).collect();
                assert_eq!(accounts, [ACCOUNT], "{region} {snapshot}");
            }
            let images = client.describe_images().image_ids(image).send().await.unwrap();
            let tags = images.images()[0].tags();
            assert!(tags.iter().any(|t| t.key() == Some("fleetbake:shared") && t.value() == Some("true")), "{tags:?}");
        }

        // The build instance (terminated, still listed): IMDSv2 only with a hop limit of 2, the run tags, the user
        // data.
        let client = moto.client("us-west-2");
        let reservations = client.describe_instances().send().await.unwrap();
        let instances: Vec<_> = reservations.reservations().iter().flat_map(|r| r.instances()).collect();
        assert_eq!(instances.len(), 1);
        let instance = instances[0];
        let options = instance.metadata_options().unwrap();
        assert_eq!(options.http_tokens().map(|t| t.as_str()), Some("required"));
        assert_eq!(options.http_put_response_hop_limit(), Some(2));
        assert!(instance.tags().iter().any(|t| t.key() == Some("CostCenter") && t.value() == Some("builds")));
        let user_data = client
            .describe_instance_attribute()
            .instance_id(instance.instance_id().unwrap())
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        use base64::Engine;
        let encoded = user_data.user_data().and_then(|value| value.value()).unwrap();
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "#!/bin/sh\necho configured by user data\n");
    });

    // What moto does not keep: the copy encrypted with the destination's key; both images made to require
    // IMDSv2.
    let copies = proxy.bodies("CopyImage");
    assert_eq!(copies.len(), 1);
    assert_eq!(field(&copies[0], "Encrypted"), ["true"]);
    assert_eq!(field(&copies[0], "KmsKeyId").iter().map(|v| decoded(v)).collect::<Vec<_>>(), ["alias/images-east"]);
    let imds: Vec<String> = proxy
        .bodies("ModifyImageAttribute")
        .iter()
        .filter(|body| !field(body, "ImdsSupport.Value").is_empty())
        .map(|body| field(body, "ImdsSupport.Value")[0].to_string())
        .collect();
    assert_eq!(imds, ["v2.0", "v2.0"]);

    // Every call the run made is one the IAM policy allows.
    let allowed = policy_actions();
    for action in proxy.actions() {
        let named = fleetbake::cloud::Action::from_name(&action).map(|action| action.iam_name());
        let named = named.unwrap_or_else(|| panic!("{action}: a call fleetbake does not list"));
        assert!(allowed.contains(&named), "{named} is not in docs/iam-policy.json");
    }
    // ... and under its conditions on tags: a call that tags what it creates is one the policy lets tag on
    // creation; CreateTags afterwards never adds `fleetbake:temporary`, and tags no snapshot (snapshots are
    // tagged at creation, which no CreateTags grant after creation covers).
    let on_create = tag_on_create_actions();
    let mut tagged_on_create = BTreeSet::new();
    for action in proxy.actions().into_iter().collect::<BTreeSet<_>>() {
        for body in proxy.bodies(&action) {
            if !field(&body, "TagSpecification.1.ResourceType").is_empty() {
                assert!(on_create.contains(&action), "{action} tags on creation, not under `ec2:CreateAction`");
                tagged_on_create.insert(action.clone());
            }
        }
    }
    assert_eq!(tagged_on_create, on_create, "every creating call the policy names tags on creation");
    let tag_requests = proxy.bodies("CreateTags");
    assert!(!tag_requests.is_empty());
    for body in &tag_requests {
        let keys: Vec<String> =
            (1..).map_while(|n| field(body, &format!("Tag.{n}.Key")).first().map(|k| decoded(k))).collect();
        assert!(!keys.iter().any(|key| key == "fleetbake:temporary"), "{body}");
        let resources: Vec<&str> =
            (1..).map_while(|n| field(body, &format!("ResourceId.{n}")).first().copied()).collect();
        assert!(resources.iter().all(|id| id.starts_with("ami-")), "{body}");
    }
    assert!(proxy.actions().iter().any(|action| action == "DescribeKey"), "the preflight described the keys");
}

/// Killed after an image became available but before it was finished (here: while EC2 is deprecating it), a
/// resumed run finishes that image rather than build it again, and goes on to its copy.
#[test]
fn an_image_available_but_unfinished_when_the_run_died_is_finished_on_resume() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let gate = Gate::new(&workspace);
    let held = gate.path().to_path_buf();
    // EnableImageDeprecation is held until the gate exists (a minute at most), then answered as EC2 does.
    let proxy = FaultProxy::start(&moto.endpoint, move |request| match request.action {
        "EnableImageDeprecation" => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !held.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Answer::Reply(DEPRECATION_ANSWER)
        }
        _ => Answer::Forward,
    });
    let fleet = format!(
        "{}\n[[flavor]]\nname = \"base\"\nsource_ami = {AL2023}\n\n[regions]\nus-west-2 = [\"us-east-1\"]\n",
        fleet_header_at(&proxy.endpoint, &sshd).replacen(
            "tags = { Team = \"platform\" }\n",
            "tags = { Team = \"platform\" }\ndeprecate_after = \"30d\"\n",
            1
        )
    );
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let mut running = Running::start(&workspace, &["matrix", fleet_path.to_str().unwrap()], &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proxy.bodies("EnableImageDeprecation").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no deprecation asked for");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    running.child.0.kill().unwrap();
    running.child.0.wait().unwrap();
    let killed = read_manifest(&workspace);
    assert!(killed["artifacts"].as_object().unwrap().is_empty(), "not finished, not announced: {killed}");

    gate.open();
    let resumed = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--resume"]);
    assert_eq!(resumed.code, 0, "stderr:\n{}", resumed.stderr);
    let manifest = read_manifest(&workspace);
    assert_eq!(manifest["status"], "complete", "{manifest}");
    assert_eq!(proxy.bodies("CreateImage").len(), 1, "the image was not built again");
    assert_eq!(proxy.bodies("CopyImage").len(), 1);
    let deprecated: Vec<String> =
        proxy.bodies("EnableImageDeprecation").iter().map(|body| field(body, "ImageId")[0].to_string()).collect();
    for region in ["us-west-2", "us-east-1"] {
        let artifact = &manifest["artifacts"]["base"][region];
        assert!(artifact["deprecation_time"].is_string(), "{region}: {artifact}");
        let image = artifact["image_id"].as_str().unwrap().to_string();
        assert!(deprecated.contains(&image), "{region}: {image} in {deprecated:?}");
    }
    // The build image was asked twice: once by the killed process, once by the resumed one.
    let build = manifest["artifacts"]["base"]["us-west-2"]["image_id"].as_str().unwrap();
    assert_eq!(deprecated.iter().filter(|image| *image == build).count(), 2, "{deprecated:?}");
    runtime().block_on(async {
        for region in ["us-west-2", "us-east-1"] {
            crate::cloud_state::assert_nothing_temporary_left(&moto.client(region), region).await;
        }
    });
}
