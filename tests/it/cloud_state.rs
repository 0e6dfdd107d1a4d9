//! What the account holds after a run, read through aws-sdk-ec2 the way a user's tooling would.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;

#[derive(Debug)]
pub struct Image {
    pub id: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub snapshot_ids: Vec<String>,
}

fn tag_filter(run_id: &str) -> Filter {
    Filter::builder().name("tag:fleetbake:run-id").values(run_id).build()
}

/// Images of one run in a region (the account's own: owner `self`).
pub async fn images_of_run(client: &Client, run_id: &str) -> Vec<Image> {
    let output = client.describe_images().owners("self").filters(tag_filter(run_id)).send().await.unwrap();
    output
        .images()
        .iter()
        .map(|image| Image {
            id: image.image_id().unwrap().to_string(),
            name: image.name().unwrap_or_default().to_string(),
            tags: image.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string())).collect(),
            snapshot_ids: image
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.ebs()?.snapshot_id().map(str::to_string))
                .collect(),
        })
        .collect()
}

/// Every image named `name` in the region, whoever tagged it.
pub async fn images_named(client: &Client, name: &str) -> Vec<String> {
    let output = client
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("name").values(name).build())
        .send()
        .await
        .unwrap();
    output.images().iter().map(|image| image.image_id().unwrap().to_string()).collect()
}

/// Instances of every state, with their state names.
pub async fn instances(client: &Client) -> Vec<(String, String)> {
    let output = client.describe_instances().send().await.unwrap();
    output
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap().to_string(),
                i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
            )
        })
        .collect()
}

pub async fn key_pair_names(client: &Client) -> Vec<String> {
    let output = client.describe_key_pairs().send().await.unwrap();
    output.key_pairs().iter().filter_map(|k| k.key_name().map(str::to_string)).collect()
}

pub async fn security_group_names(client: &Client) -> Vec<String> {
    let output = client.describe_security_groups().send().await.unwrap();
    output.security_groups().iter().filter_map(|g| g.group_name().map(str::to_string)).collect()
}

pub async fn snapshot_tags(client: &Client, snapshot_id: &str) -> BTreeMap<String, String> {
    let output = client.describe_snapshots().snapshot_ids(snapshot_id).send().await.unwrap();
    output.snapshots()[0]
        .tags()
        .iter()
        .map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string()))
        .collect()
}

/// Asserts nothing temporary is left in `region`: every instance terminated, no fleetbake key pair or group.
pub async fn assert_nothing_temporary_left(client: &Client, region: &str) {
    for (id, state) in instances(client).await {
        assert_eq!(state, "terminated", "instance {id} in {region} is {state}");
    }
    let keys: Vec<String> = key_pair_names(client).await.into_iter().filter(|k| k.starts_with("fleetbake-")).collect();
    assert!(keys.is_empty(), "key pairs left in {region}: {keys:?}");
    let groups: Vec<String> =
        security_group_names(client).await.into_iter().filter(|g| g.starts_with("fleetbake-")).collect();
    assert!(groups.is_empty(), "security groups left in {region}: {groups:?}");
}
