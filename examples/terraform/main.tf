# Deploy tooling reading fleetbake's manifest: one launch template per region, each with the image the
# nightly run made there. `manifest.json` is the file `[fleet] manifest` names.

locals {
  manifest = jsondecode(file("${path.module}/manifest.json"))
  flavor   = "al2023-base"
  # region => image id, for every region that holds the flavor's image.
  images = { for region, artifact in local.manifest.artifacts[local.flavor] : region => artifact.image_id }
}

provider "aws" {
  alias  = "us_west_2"
  region = "us-west-2"
}

provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"
}

resource "aws_launch_template" "web_us_west_2" {
  provider      = aws.us_west_2
  name_prefix   = "web-"
  image_id      = local.images["us-west-2"]
  instance_type = "t3.small"
  metadata_options {
    http_tokens = "required" # the images require IMDSv2 (`imds_support` in the manifest)
  }
}

resource "aws_launch_template" "web_us_east_1" {
  provider      = aws.us_east_1
  name_prefix   = "web-"
  image_id      = local.images["us-east-1"]
  instance_type = "t3.small"
  metadata_options {
    http_tokens = "required"
  }
}

output "images" {
  value = local.images
}
