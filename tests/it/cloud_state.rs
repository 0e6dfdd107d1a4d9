//! What the account holds after a run, read through aws-sdk-ec2 the way a user's tooling would.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::Filter;
use aws_sdk_ec2::Client;

use crate::harness::Moto;

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

/// Who may launch `image_id`, as the account keeps it (DescribeImageAttribute launchPermission).
pub async fn launch_permissions(client: &Client, image_id: &str) -> Vec<aws_sdk_ec2::types::LaunchPermission> {
    let attribute = client
        .describe_image_attribute()
        .image_id(image_id)
        .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
        .send()
        .await
        .unwrap();
    attribute.launch_permissions().to_vec()
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

/// A region laid out like a landing zone's: no default VPC, and a VPC of the test's own with two subnets in
/// two zones tagged `Tier = build` (and one untagged, which no build may use).
pub struct OwnVpc {
    pub vpc: String,
    pub tagged: Vec<String>,
}

/// Deletes the region's default VPC (its subnets first) and makes an [`OwnVpc`] with CIDR `cidr`.
pub async fn replace_default_vpc(client: &Client, cidr: &str) -> OwnVpc {
    let default = client.describe_vpcs().filters(Filter::builder().name("isDefault").values("true").build());
    let default = default.send().await.unwrap();
    for vpc in default.vpcs() {
        let vpc_id = vpc.vpc_id().unwrap();
        let subnets = client.describe_subnets().filters(Filter::builder().name("vpc-id").values(vpc_id).build());
        for subnet in subnets.send().await.unwrap().subnets() {
            client.delete_subnet().subnet_id(subnet.subnet_id().unwrap()).send().await.unwrap();
        }
        client.delete_vpc().vpc_id(vpc_id).send().await.unwrap();
    }
    let vpc = client.create_vpc().cidr_block(cidr).send().await.unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_string();
    let zones = client.describe_availability_zones().send().await.unwrap();
    let zones: Vec<String> =
        zones.availability_zones().iter().map(|zone| zone.zone_name().unwrap().to_string()).collect();
    let base = cidr.split('.').take(2).collect::<Vec<_>>().join(".");
    let subnet = |third: u8, zone: &str, tagged: bool| {
        let request =
            client.create_subnet().vpc_id(&vpc).cidr_block(format!("{base}.{third}.0/24")).availability_zone(zone);
        if tagged {
            request.tag_specifications(
                aws_sdk_ec2::types::TagSpecification::builder()
                    .resource_type(aws_sdk_ec2::types::ResourceType::Subnet)
                    .tags(aws_sdk_ec2::types::Tag::builder().key("Tier").value("build").build())
                    .build(),
            )
        } else {
            request
        }
    };
    let mut made = Vec::new();
    for (third, zone, tagged) in [(1, &zones[0], true), (2, &zones[1], true), (3, &zones[0], false)] {
        let created = subnet(third, zone, tagged).send().await.unwrap();
        made.push(created.subnet().unwrap().subnet_id().unwrap().to_string());
    }
    made.pop();
    OwnVpc { vpc, tagged: made }
}

/// Every instance's subnet, terminated ones included.
pub async fn instance_subnets(client: &Client) -> Vec<String> {
    let output = client.describe_instances().send().await.unwrap();
    output.reservations().iter().flat_map(|r| r.instances()).filter_map(|i| i.subnet_id().map(str::to_string)).collect()
}

/// In moto, for one flavor built in us-west-2: exactly one instance there (terminated), exactly one image of the
/// run there and in each of `copies` (one by its name too), and nothing temporary left.
pub async fn exactly_one_of_each(moto: &Moto, run_id: &str, copies: &[&str]) {
    let west = moto.client("us-west-2");
    let instances = instances(&west).await;
    assert_eq!(instances.len(), 1, "one launch, nothing leaked: {instances:?}");
    for region in std::iter::once("us-west-2").chain(copies.iter().copied()) {
        let client = moto.client(region);
        let images = images_of_run(&client, run_id).await;
        assert_eq!(images.len(), 1, "{region}: {images:?}");
        assert_eq!(images_named(&client, &images[0].name).await.len(), 1, "{region}: one image of that name");
    }
    assert_nothing_temporary_left(&west, "us-west-2").await;
}
