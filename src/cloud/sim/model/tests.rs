//! The model's Session Manager rules and its account (credentials that end, a role renewed, regions not
//! enabled), called through its port under Tokio's paused clock: the agent online
//! `[sim] agent_online` after the instance runs (or never), StartSession's `TargetNotConnected` until then,
//! sessions counted and one not ended reported as a leak, and no session to an instance whose group has an
//! ingress rule. Also: CreateImage and CopyImage refused untagged under `[sim] require_tags_on_create`.

use std::time::Duration;

use super::*;
use crate::cloud::sim::SimCloud;
use crate::cloud::ImageOf;
use crate::config::{FaultTrigger, FlavorName, Market, Metadata};

const SOURCE: &str = "ami-0123456789abcdef0";

/// A region of a model with these settings (no consistency lag, so a launch is known at once).
fn region_of(settings: SimSettings) -> (SimCloud, SimRegion) {
    let model = Model::new(SimSettings { consistency_lag: Duration::ZERO, ..settings });
    let region = Region::new("us-west-2");
    let sim_region = SimRegion::new(&model, &Place::own(region.clone()));
    (SimCloud { model, _lock: None }, sim_region)
}

/// A key pair, a group and an instance of `flavor` launched into it; the instance and its group.
async fn launch(region: &SimRegion, flavor: &str) -> (InstanceId, SecurityGroupId) {
    let key = KeyPairName::new(format!("key-{flavor}"));
    region.create_key_pair(&key, &Tags::new()).await.unwrap();
    let group = region.create_security_group(&format!("sg-{flavor}"), "build", None, &Tags::new()).await.unwrap();
    let spec = LaunchSpec {
        image_id: ImageId::new(SOURCE),
        instance_type: "t3.small".into(),
        key_name: key,
        security_group: group.clone(),
        subnet_id: None,
        associate_public_ip: None,
        client_token: format!("token-{flavor}"),
        tags: Tags::from([("fleetbake:flavor".to_string(), flavor.to_string())]),
        metadata: Metadata::default(),
        root_volume: None,
        iam_instance_profile: Some("ssm-agent".into()),
        user_data: None,
        market: Market::OnDemand,
    };
    (region.run_instance(&spec).await.unwrap(), group)
}

fn session_leaks(cloud: &SimCloud) -> Vec<String> {
    let report = cloud.report(Duration::from_secs(2));
    report.leaked_resources.into_iter().filter(|leak| leak.starts_with("session ")).collect()
}

#[tokio::test(start_paused = true)]
async fn the_agent_answers_agent_online_after_the_instance_runs_and_not_before() {
    let settings =
        SimSettings { boot: Duration::from_secs(60), agent_online: Duration::from_secs(90), ..SimSettings::default() };
    let (cloud, region) = region_of(settings);
    let started = Instant::now();
    let (instance, _) = launch(&region, "ubuntu").await;

    // Running at 60 s; the agent registers 90 s later.
    tokio::time::sleep_until(started + Duration::from_secs(60 + 85)).await;
    assert!(!region.agent_online(&instance).await.unwrap());
    let refused = region.start_session(&instance, 22).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("TargetNotConnected"));
    assert_eq!(refused.kind, ErrorKind::NotReady);
    assert_eq!(refused.action, Action::StartSession);

    tokio::time::sleep_until(started + Duration::from_secs(60 + 91)).await;
    assert!(region.agent_online(&instance).await.unwrap());
    let session = region.start_session(&instance, 22).await.unwrap();
    assert!(session.stream_url.contains(session.id.as_str()), "{session:?}");
    assert!(!session.token.expose().is_empty());
    assert_eq!(cloud.report(Duration::from_secs(2)).sessions_started, 1);

    // A stopped instance's agent is not online (ConnectionLost), and no session can be started to it.
    region.stop_instance(&instance).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!region.agent_online(&instance).await.unwrap());
    let refused = region.start_session(&instance, 22).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("TargetNotConnected"));
    region.terminate_session(&session.id).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_agent_never_fault_hits_only_its_flavor_and_unknown_instances_are_not_online() {
    let never = SimFault {
        action: Some(Action::RunInstances),
        region: None,
        effect: FaultEffect::Agent { fault: AgentFault::Never, flavor: Some(FlavorName::new("al2023")) },
        when: FaultTrigger::Nth(1),
        answer_lost: false,
    };
    let (cloud, region) = region_of(SimSettings { faults: vec![never], ..SimSettings::default() });
    let (ubuntu, _) = launch(&region, "ubuntu").await;
    let (al2023, _) = launch(&region, "al2023").await;
    tokio::time::sleep(Duration::from_secs(24 * 3600)).await;

    assert!(region.agent_online(&ubuntu).await.unwrap());
    assert!(!region.agent_online(&al2023).await.unwrap(), "a day later, still not online");
    let refused = region.start_session(&al2023, 22).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("TargetNotConnected"));
    assert!(!region.agent_online(&InstanceId::new("i-0000000000000000f")).await.unwrap());
    assert_eq!(cloud.report(Duration::from_secs(2)).faults_injected, 1);
}

#[tokio::test(start_paused = true)]
async fn a_session_not_terminated_is_a_leak_and_terminating_twice_is_no_error() {
    let (cloud, region) = region_of(SimSettings::default());
    let (instance, _) = launch(&region, "ubuntu").await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let first = region.start_session(&instance, 22).await.unwrap();
    let second = region.start_session(&instance, 2222).await.unwrap();
    assert_ne!(first.id, second.id);

    let (other, _) = launch(&region, "al2023").await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let elsewhere = region.start_session(&other, 22).await.unwrap();
    assert_eq!(region.active_sessions(&instance).await.unwrap(), {
        let mut both = vec![first.id.clone(), second.id.clone()];
        both.sort();
        both
    });
    assert_eq!(region.active_sessions(&other).await.unwrap(), std::slice::from_ref(&elsewhere.id));
    region.terminate_session(&elsewhere.id).await.unwrap();
    assert_eq!(region.active_sessions(&other).await.unwrap(), []);

    region.terminate_session(&first.id).await.unwrap();
    assert_eq!(region.active_sessions(&instance).await.unwrap(), std::slice::from_ref(&second.id));
    let leaks = session_leaks(&cloud);
    assert_eq!(leaks.len(), 1, "{leaks:?}");
    assert!(leaks[0].contains(second.id.as_str()) && leaks[0].contains(instance.as_str()), "{leaks:?}");

    // Its instance terminated does not end it: only TerminateSession does.
    region.terminate_instance(&instance).await.unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(session_leaks(&cloud).len(), 1);

    region.terminate_session(&second.id).await.unwrap();
    region.terminate_session(&second.id).await.unwrap();
    assert_eq!(session_leaks(&cloud), Vec::<String>::new());
    assert_eq!(cloud.report(Duration::from_secs(2)).sessions_started, 3);
}

#[tokio::test(start_paused = true)]
async fn no_session_to_an_instance_whose_group_has_an_ingress_rule() {
    let (cloud, region) = region_of(SimSettings::default());
    let (closed, _) = launch(&region, "ubuntu").await;
    let (opened, group) = launch(&region, "al2023").await;
    region
        .authorize_ingress(&group, 22, &IngressSources::cidrs(vec!["203.0.113.5/32".parse().unwrap()]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(600)).await;

    let refused = region.start_session(&opened, 22).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("SimModelAssertion"));
    assert_eq!(refused.kind, ErrorKind::Permanent);
    assert!(refused.message.contains(group.as_str()) && refused.message.contains("203.0.113.5/32"), "{refused}");
    assert!(refused.message.contains("must open no inbound port"), "{refused}");

    let session = region.start_session(&closed, 22).await.unwrap();
    region.terminate_session(&session.id).await.unwrap();
    assert_eq!(cloud.report(Duration::from_secs(2)).sessions_started, 1);
}

/// `[sim] credentials` static, ending at 90 minutes, under `[aws] role_arn` sessions of an hour: the role is
/// assumed at once and renewed 5 minutes before each session ends while the base lasts; a session running
/// when the base ends goes on to its own end, then every call is refused `ExpiredToken`.
#[tokio::test(start_paused = true)]
async fn a_role_is_renewed_while_its_base_credentials_last_and_ends_with_its_last_session() {
    let credentials = crate::config::SimCredentials { expires_after: Duration::from_secs(90 * 60), refreshable: false };
    let (cloud, region) = region_of(SimSettings { credentials: Some(credentials), ..SimSettings::default() });
    cloud.model.account.act_as(crate::config::AssumeRole {
        arn: "arn:aws:iam::210987654321:role/image-builder".into(),
        external_id: None,
        session_name: None,
        duration: Duration::from_secs(3600),
    });
    let minute = Duration::from_secs(60);
    let calls = || cloud.model.account.assume_role_calls.load(Ordering::Relaxed);
    assert!(region.find_vpc(VpcLookup::Default).await.is_ok());
    assert_eq!(calls(), 1, "assumed at the first call");
    tokio::time::sleep(54 * minute).await;
    assert!(region.find_vpc(VpcLookup::Default).await.is_ok());
    assert_eq!(calls(), 1, "the first session still runs");
    tokio::time::sleep(2 * minute).await;
    assert!(region.find_vpc(VpcLookup::Default).await.is_ok());
    assert_eq!(calls(), 2, "renewed 5 minutes before the session's end, the base still valid");
    // At 112 minutes the base (90) has ended: the renewal fails, the session (until 116) goes on.
    tokio::time::sleep(56 * minute).await;
    assert!(region.find_vpc(VpcLookup::Default).await.is_ok(), "the last session runs to its end");
    tokio::time::sleep(5 * minute).await;
    let refused = region.find_vpc(VpcLookup::Default).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("ExpiredToken"));
    assert_eq!(refused.kind, ErrorKind::Credentials);
}

/// Without a role, static credentials end for every service in its own words; a region not enabled answers
/// EC2 with `AuthFailure` and is listed `not-opted-in`.
#[tokio::test(start_paused = true)]
async fn static_credentials_end_and_a_region_not_enabled_answers_auth_failure() {
    let credentials = crate::config::SimCredentials { expires_after: Duration::from_secs(600), refreshable: false };
    let settings = SimSettings {
        credentials: Some(credentials),
        regions_not_enabled: [Region::new("af-south-1")].into(),
        ..SimSettings::default()
    };
    let (cloud, region) = region_of(settings);
    let cape = Region::new("af-south-1");
    let not_enabled = SimRegion::new(&cloud.model, &Place::own(cape.clone()));
    let refused = not_enabled.find_vpc(VpcLookup::Default).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("AuthFailure"));
    let listed = region.describe_regions().await.unwrap();
    let found = |name: &str| listed.iter().find(|found| found.region.as_str() == name).unwrap().clone();
    assert_eq!(found("af-south-1").opt_in_status, "not-opted-in");
    assert!(!found("af-south-1").enabled());
    assert!(found("us-west-2").enabled() && found("us-east-1").enabled());
    tokio::time::sleep(Duration::from_secs(601)).await;
    let expired = region.describe_regions().await.unwrap_err();
    assert_eq!(expired.code.as_deref(), Some("RequestExpired"), "EC2's word for it");
    assert_eq!(expired.kind, ErrorKind::Credentials);
}

/// `[sim] require_tags_on_create`: CreateImage and CopyImage whose image or snapshots carry no tags in the
/// request are refused (`UnauthorizedOperation`, as an SCP requiring tags on create answers); tagged ones pass,
/// and the snapshot carries its tags from the start.
#[tokio::test(start_paused = true)]
async fn untagged_creates_are_refused_when_tags_are_required() {
    let (_cloud, region) = region_of(SimSettings { require_tags_on_create: true, ..SimSettings::default() });
    let (instance, _) = launch(&region, "ubuntu").await;
    let tags = Tags::from([("fleetbake:run-id".to_string(), "run-1".to_string())]);
    let refused = region
        .create_image(&instance, "untagged-snapshot", None, &tags, &Tags::new(), ImageOf::Stopped)
        .await
        .unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("UnauthorizedOperation"), "{refused}");
    assert!(refused.message.contains("untagged snapshot"), "{refused}");
    let image = region.create_image(&instance, "tagged", None, &tags, &tags, ImageOf::Stopped).await.unwrap();
    let snapshot = region.state.state.lock().unwrap().images[&image].snapshot().clone();
    let tagged = region.state.state.lock().unwrap().tag_of(snapshot.as_str(), "fleetbake:run-id");
    assert_eq!(tagged.as_deref(), Some("run-1"));

    tokio::time::sleep(Duration::from_secs(10 * 60)).await;
    let copy = |name: &str, snapshot_tags: &Tags| CopySpec {
        source_region: region.region.clone(),
        source_image: image.clone(),
        name: name.to_string(),
        description: None,
        client_token: format!("token-{name}"),
        tags: tags.clone(),
        snapshot_tags: snapshot_tags.clone(),
        kms_key: None,
    };
    let refused = region.copy_image(&copy("copy-untagged", &Tags::new())).await.unwrap_err();
    assert_eq!(refused.code.as_deref(), Some("UnauthorizedOperation"), "{refused}");
    let copied = region.copy_image(&copy("copy-tagged", &tags)).await.unwrap();
    let snapshot = region.state.state.lock().unwrap().images[&copied].snapshot().clone();
    let tagged = region.state.state.lock().unwrap().tag_of(snapshot.as_str(), "fleetbake:run-id");
    assert_eq!(tagged.as_deref(), Some("run-1"));
}

/// An AMI name is one image's at a time (EC2's CreateImage and CopyImage: `InvalidAMIName.Duplicate`), free
/// again once that image is deregistered; copies in flight into a region count against `copy_concurrency` until
/// each is available or deregistered (the model keeps both by index, not by reading every image per call).
#[tokio::test(start_paused = true)]
async fn a_name_is_one_image_s_and_copies_in_flight_count_until_available_or_deregistered() {
    let settings = SimSettings { copy_concurrency: 2, copy_image: Duration::from_secs(600), ..SimSettings::default() };
    let (_cloud, region) = region_of(settings);
    let (instance, _) = launch(&region, "ubuntu").await;
    let tags = Tags::new();
    let image = region.create_image(&instance, "web-1", None, &tags, &tags, ImageOf::Stopped).await.unwrap();
    let again = region.create_image(&instance, "web-1", None, &tags, &tags, ImageOf::Stopped).await.unwrap_err();
    assert_eq!(again.code.as_deref(), Some("InvalidAMIName.Duplicate"), "{again}");

    tokio::time::sleep(Duration::from_secs(60 * 60)).await;
    let copy = |name: &str| CopySpec {
        source_region: region.region.clone(),
        source_image: image.clone(),
        name: name.to_string(),
        description: None,
        client_token: format!("token-{name}"),
        tags: tags.clone(),
        snapshot_tags: tags.clone(),
        kms_key: None,
    };
    let duplicate = region.copy_image(&copy("web-1")).await.unwrap_err();
    assert_eq!(duplicate.code.as_deref(), Some("InvalidAMIName.Duplicate"), "{duplicate}");
    let first = region.copy_image(&copy("copy-1")).await.unwrap();
    region.copy_image(&copy("copy-2")).await.unwrap();
    let capped = region.copy_image(&copy("copy-3")).await.unwrap_err();
    assert_eq!(capped.code.as_deref(), Some("ResourceLimitExceeded"), "{capped}");

    // A deregistered copy frees its place and its name.
    tokio::time::sleep(Duration::from_secs(10)).await;
    region.deregister_image(&first).await.unwrap();
    region.copy_image(&CopySpec { client_token: "token-copy-1-again".into(), ..copy("copy-1") }).await.unwrap();
    let capped = region.copy_image(&copy("copy-4")).await.unwrap_err();
    assert_eq!(capped.code.as_deref(), Some("ResourceLimitExceeded"), "{capped}");

    // Available copies no longer count.
    tokio::time::sleep(Duration::from_secs(600)).await;
    region.copy_image(&copy("copy-4")).await.unwrap();
    region.copy_image(&copy("copy-5")).await.unwrap();
}
