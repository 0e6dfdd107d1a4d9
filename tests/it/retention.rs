//! `[retention]` that knows what is in use (issue 26), on moto through the binary: images of a flavor made
//! directly in moto with the fleet's tags (RunInstances + CreateImage, tagged as a run three days ago made
//! them: quicker than nights of `matrix`, and gc reads only the tags), one in a launch template's default
//! version, one the current version of the SSM parameter `[publish]` writes, one the image of a running
//! instance. `gc --dry-run` says for each why it is kept or removed; `gc` deregisters exactly the rest beyond
//! `keep`. A refused DescribeLaunchTemplates (a test proxy) deregisters nothing and fails gc. `validate`
//! warns when every image is shared and `shared = "leave"`.

use aws_sdk_ec2::types::{Filter, InstanceType, RequestLaunchTemplateData, ResourceType, Tag, TagSpecification};
use aws_sdk_ssm::types::ParameterType;

use crate::harness::{Moto, Workspace};
use crate::proxy::{Fault, FaultProxy};

const REGION: &str = "us-west-2";

fn fleet(endpoint: &str) -> String {
    format!(
        r#"[fleet]
name = "ret"
manifest = "out/manifest.json"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

[aws]
endpoint_url = "{endpoint}"

[[flavor]]
name = "web"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-2023.*-kernel-6.1-x86_64" }}

[regions]
us-west-2 = []

[publish]
ssm_parameter = "/fleet/{{flavor}}"

[retention]
keep = 1
"#
    )
}

/// Six images of flavor `web` made in moto with the fleet's tags, newest first as gc orders them (creation
/// date, then id: moto's dates are the same second).
async fn six_images(client: &aws_sdk_ec2::Client) -> Vec<String> {
    let source = client
        .describe_images()
        .owners("amazon")
        .filters(Filter::builder().name("name").values("al2023-ami-2023.*-kernel-6.1-x86_64").build())
        .send()
        .await
        .unwrap();
    let source = source.images()[0].image_id().unwrap().to_string();
    let builder = client
        .run_instances()
        .image_id(&source)
        .instance_type(InstanceType::T3Small)
        .min_count(1)
        .max_count(1)
        .send()
        .await
        .unwrap();
    let builder = builder.instances()[0].instance_id().unwrap().to_string();
    let run_id = fleetbake::plan::RunId::new(chrono::Utc::now() - chrono::TimeDelta::days(3), 1).to_string();
    let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
    for night in 0..6 {
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Image)
            .tags(tag("fleetbake:fleet", "ret"))
            .tags(tag("fleetbake:flavor", "web"))
            .tags(tag("fleetbake:run-id", &run_id))
            .build();
        client
            .create_image()
            .instance_id(&builder)
            .name(format!("web-{night}"))
            .tag_specifications(tags)
            .send()
            .await
            .unwrap();
    }
    client.terminate_instances().instance_ids(&builder).send().await.unwrap();
    let images = client
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("tag:fleetbake:fleet").values("ret").build())
        .send()
        .await
        .unwrap();
    let mut images: Vec<(String, String)> = images
        .images()
        .iter()
        .map(|image| (image.creation_date().unwrap_or_default().to_string(), image.image_id().unwrap().to_string()))
        .collect();
    images.sort_by(|a, b| b.cmp(a));
    images.into_iter().map(|(_, id)| id).collect()
}

/// The fleet's images still registered.
async fn registered(client: &aws_sdk_ec2::Client) -> Vec<String> {
    let images = client
        .describe_images()
        .owners("self")
        .filters(Filter::builder().name("tag:fleetbake:fleet").values("ret").build())
        .send()
        .await
        .unwrap();
    let mut ids: Vec<String> = images.images().iter().map(|image| image.image_id().unwrap().to_string()).collect();
    ids.sort();
    ids
}

/// The line of gc's output that names `image`.
fn line_of<'a>(stdout: &'a str, image: &str) -> &'a str {
    stdout.lines().find(|line| line.contains(image)).unwrap_or_else(|| panic!("no line names {image}:\n{stdout}"))
}

#[test]
fn gc_spares_images_in_a_launch_template_a_parameter_and_an_instance_and_removes_the_rest_beyond_keep() {
    let moto = Moto::start();
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &fleet(&moto.endpoint));
    let client = moto.client(REGION);
    let runtime = crate::harness::runtime();
    let (images, instance) = runtime.block_on(async {
        let images = six_images(&client).await;
        // Someone's launch template (not one fleetbake publishes): its default version launches images[1].
        let data = RequestLaunchTemplateData::builder().image_id(&images[1]).build();
        client
            .create_launch_template()
            .launch_template_name("web-asg")
            .launch_template_data(data)
            .send()
            .await
            .unwrap();
        // The parameter `[publish]` writes: an older version named images[5], the current one images[2].
        let ssm = moto.ssm(REGION);
        for image in [&images[5], &images[2]] {
            ssm.put_parameter()
                .name("/fleet/web")
                .value(image.as_str())
                .data_type("aws:ec2:image")
                .r#type(ParameterType::String)
                .overwrite(true)
                .send()
                .await
                .unwrap();
        }
        // An instance running from images[3].
        let running = client
            .run_instances()
            .image_id(&images[3])
            .instance_type(InstanceType::T3Small)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .unwrap();
        (images, running.instances()[0].instance_id().unwrap().to_string())
    });

    let dry = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap(), "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert!(line_of(&dry.stdout, &images[0]).ends_with("kept: newest 1"), "{}", dry.stdout);
    let template = line_of(&dry.stdout, &images[1]);
    assert!(
        template.contains("kept: in launch template lt-") && template.ends_with("(web-asg) default version 1"),
        "{template}"
    );
    assert!(
        line_of(&dry.stdout, &images[2]).ends_with("kept: SSM parameter /fleet/web current version (2)"),
        "{}",
        dry.stdout
    );
    assert!(
        line_of(&dry.stdout, &images[3]).ends_with(&format!("kept: instance {instance} (running) uses it")),
        "{}",
        dry.stdout
    );
    for removed in &images[4..] {
        let line = line_of(&dry.stdout, removed);
        assert!(line.starts_with("would deregister") && line.ends_with("removed: beyond the newest 1"), "{line}");
    }
    assert!(dry.stdout.contains("would remove 0 temporary resources and deregister 2 images"), "{}", dry.stdout);
    assert_eq!(runtime.block_on(registered(&client)).len(), 6, "a dry run deregisters nothing");

    let gc = workspace.fleetbake(&["gc", fleet_path.to_str().unwrap()]);
    assert_eq!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
    for removed in &images[4..] {
        let line = line_of(&gc.stdout, removed);
        assert!(line.starts_with("deregistered") && line.ends_with("removed: beyond the newest 1"), "{line}");
    }
    assert!(line_of(&gc.stdout, &images[3]).contains("kept: instance"), "{}", gc.stdout);
    let mut expected: Vec<String> = images[..4].to_vec();
    expected.sort();
    assert_eq!(runtime.block_on(registered(&client)), expected);
}

#[test]
fn a_refused_launch_template_read_deregisters_nothing_says_why_and_fails_gc() {
    let moto = Moto::start();
    let proxy = FaultProxy::refusing(
        &moto.endpoint,
        "DescribeLaunchTemplates",
        Fault {
            status: 403,
            code: "UnauthorizedOperation",
            message: "You are not authorized to perform this operation.",
        },
    );
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &fleet(&proxy.endpoint));
    let client = moto.client(REGION);
    let runtime = crate::harness::runtime();
    runtime.block_on(six_images(&client));

    for args in [vec!["gc", fleet_path.to_str().unwrap(), "--dry-run"], vec!["gc", fleet_path.to_str().unwrap()]] {
        let gc = workspace.fleetbake(&args);
        assert_ne!(gc.code, 0, "{}{}", gc.stdout, gc.stderr);
        assert!(gc.stdout.contains("could not tell which images are in use in us-west-2"), "{}", gc.stdout);
        assert!(
            gc.stdout.contains("UnauthorizedOperation") && gc.stdout.contains("no image there is deregistered"),
            "{}",
            gc.stdout
        );
        assert_eq!(gc.stdout.matches("kept: could not tell whether it is in use").count(), 6, "{}", gc.stdout);
    }
    assert_eq!(runtime.block_on(registered(&client)).len(), 6);
}

#[test]
fn validate_warns_that_keep_removes_nothing_when_every_image_is_shared_and_left() {
    let workspace = Workspace::new();
    let shared = format!("{}\n[sharing]\naccounts = [\"111122223333\"]\n", fleet("http://127.0.0.1:9"));
    let fleet_path = workspace.write("fleet.toml", &shared);
    let validate = workspace.fleetbake(&["validate", fleet_path.to_str().unwrap()]);
    assert_eq!(validate.code, 0, "a warning does not fail validation: {}", validate.stderr);
    let warning = format!("warning: {}:23:8: `retention.keep`:", fleet_path.display());
    assert!(validate.stderr.contains(&warning), "{warning}\n{}", validate.stderr);
    assert!(validate.stderr.contains("shared = \"deregister\""), "{}", validate.stderr);

    let deregister = shared.replace("keep = 1\n", "keep = 1\nshared = \"deregister\"\n");
    workspace.write("fleet.toml", &deregister);
    let validate = workspace.fleetbake(&["validate", fleet_path.to_str().unwrap()]);
    assert_eq!(validate.code, 0, "{}", validate.stderr);
    assert!(!validate.stderr.contains("warning"), "{}", validate.stderr);
}
