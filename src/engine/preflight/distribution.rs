//! `[[distribution]]`: every destination account will take its copies. Per account, acting as its role (the
//! aws adapter assumes it on the run's credentials, [`Cloud::place`]): the role answers (DescribeRegions in
//! the run's home region, which also says whether each of the account's regions is enabled: "Enable or
//! disable AWS Regions in your account", AWS Account Management Reference Guide), and in each of its regions
//! the account's KMS key exists, is enabled and is customer managed (DescribeKey: an AWS managed key's
//! policy cannot be changed, so the account could never grant or re-encrypt its copies), and no image of the
//! account already holds a name the run would give a copy there. In the own account, each region a
//! distribution copy is made from must encrypt with a customer managed key: EC2 refuses to copy an image
//! encrypted with the AWS managed `aws/ebs` key into another account ("Share an AMI with specific AWS
//! accounts", Amazon EC2 User Guide: "You can't share an AMI that has volumes encrypted with an AWS managed
//! key").
//!
//! Each failure names the account, the region, the role and what to change. An account whose role does not
//! answer gets that one failure: its other checks would fail the same way. A failure of an account's own
//! check is the account's (`Check::account`): `fleetbake preflight` fails, `matrix` goes on and only that
//! account's copies fail. The own account's source keys are the run's: a failure there stops it.

use std::collections::{BTreeMap, BTreeSet};

use super::{Outcome, Preflight};
use crate::cloud::{Cloud, ImageQuery};
use crate::config::{Account, Distribution, Fleet, Place, Region};
use crate::plan::Plan;
use crate::steps::context::RUN_ID_TAG;

/// The checks of every destination account, then of the own account's source keys.
pub async fn check(preflight: &mut Preflight, fleet: &Fleet, plan: &Plan, cloud: &dyn Cloud) {
    if fleet.distributions.is_empty() {
        return;
    }
    let home = crate::engine::run::home_region(fleet);
    for account in fleet.distributions.accounts() {
        let distribution = fleet.distributions.for_account(&account).expect("listed by a table");
        check_account(preflight, plan, cloud, home, distribution, &account).await;
    }
    check_source_keys(preflight, fleet, plan, cloud).await;
}

/// One destination account: its role answers, its regions are enabled, its keys are usable, its names free.
async fn check_account(
    preflight: &mut Preflight,
    plan: &Plan,
    cloud: &dyn Cloud,
    home: &Region,
    distribution: &Distribution,
    account: &str,
) {
    let role = distribution.role_for(account);
    let who = format!("account {account} (role `{role}`)");
    let at_home = Place { account: Account::Id(account.to_string()), region: home.clone() };
    let listed = match cloud.place(&at_home).describe_regions().await {
        Ok(listed) => listed,
        Err(error) => {
            preflight.push_for_account(
                account,
                None,
                Outcome::Fail(format!(
                    "{who}: cannot act in it: {error}; create the role there with `docs/iam-distribution-policy.json`, trusting this account (`sts:AssumeRole`), and let the run's identity assume it; its copies would all fail"
                )),
            );
            return;
        }
    };
    let enabled: BTreeSet<&Region> =
        listed.iter().filter(|region| region.enabled()).map(|region| &region.region).collect();
    let mut usable = Vec::new();
    for region in &distribution.regions {
        if enabled.contains(region) {
            usable.push(region);
        } else {
            preflight.push_for_account(
                account,
                Some(region),
                Outcome::Fail(format!(
                    "{who}: {region} is not enabled in the account; enable it there (AWS console, Account, AWS Regions) or leave it out of the `[[distribution]]` regions"
                )),
            );
        }
    }
    preflight.push_for_account(
        account,
        None,
        Outcome::Ok(format!(
            "{who}: the role answers; {} of its {} regions enabled",
            usable.len(),
            distribution.regions.len()
        )),
    );
    let names = names_in(plan, account);
    for region in usable {
        let place = Place { account: Account::Id(account.to_string()), region: region.clone() };
        let region_cloud = cloud.place(&place);
        if let Some(key) = distribution.key_for(region) {
            let outcome = match region_cloud.describe_key(key).await {
                Ok(None) => Outcome::Fail(format!(
                    "{who}: KMS key `{key}` is not found in {region}; create it in the account or name another in the `[[distribution]]` `kms_keys`"
                )),
                Ok(Some(found)) if !found.enabled => Outcome::Fail(format!(
                    "{who}: KMS key `{key}` ({}) is disabled; enable it or name another",
                    found.arn
                )),
                Ok(Some(found)) if found.aws_managed => Outcome::Fail(format!(
                    "{who}: KMS key `{key}` ({}) is AWS managed: name a customer managed key of the account",
                    found.arn
                )),
                Ok(Some(found)) => Outcome::Ok(format!("{who}: KMS key `{key}`: {}", found.arn)),
                Err(error) => Outcome::Fail(format!(
                    "{who}: cannot describe KMS key `{key}` in {region}: {error}; the role needs `kms:DescribeKey` on it"
                )),
            };
            preflight.push_for_account(account, Some(region), outcome);
        }
        let Some(wanted) = names.get(region) else { continue };
        let query = ImageQuery::Named(wanted.iter().cloned().collect());
        let outcome = match region_cloud.find_owned_images(&query).await {
            Err(error) => Outcome::Fail(format!(
                "{who}: cannot list its images in {region}: {error}; the role needs `ec2:DescribeImages`"
            )),
            Ok(found) => {
                let taken: Vec<String> = found
                    .iter()
                    .filter(|image| wanted.contains(&image.name))
                    .filter(|image| image.tags.get(RUN_ID_TAG).is_none_or(|run| run != plan.run_id.as_str()))
                    .map(|image| format!("`{}` ({})", image.name, image.id))
                    .collect();
                if taken.is_empty() {
                    Outcome::Ok(format!("{who}: none of the run's {} image names is taken", wanted.len()))
                } else {
                    Outcome::Fail(format!(
                        "{who}: already taken in the account: {}; put `{{timestamp}}` or `{{run_id}}` in `ami_name`, or deregister them there",
                        taken.join(", ")
                    ))
                }
            }
        };
        preflight.push_for_account(account, Some(region), outcome);
    }
}

/// The image names the run gives its copies in `account`, per region.
fn names_in(plan: &Plan, account: &str) -> BTreeMap<Region, BTreeSet<String>> {
    let mut names: BTreeMap<Region, BTreeSet<String>> = BTreeMap::new();
    for copy in plan.copies.iter().filter(|copy| copy.target.account == Account::Id(account.to_string())) {
        names.entry(copy.target.region.clone()).or_default().insert(copy.image_name.clone());
    }
    names
}

/// Each own region a distribution copy is made from: its `[encryption]` key is not AWS managed.
async fn check_source_keys(preflight: &mut Preflight, fleet: &Fleet, plan: &Plan, cloud: &dyn Cloud) {
    let sources: BTreeSet<&Region> =
        plan.copies.iter().filter(|copy| copy.is_distribution()).map(|copy| &copy.source_region).collect();
    for region in sources {
        let Some(key) = fleet.kms_key(region) else { continue };
        let outcome = match cloud.region(region).describe_key(key).await {
            Ok(Some(found)) if found.aws_managed => Outcome::Fail(format!(
                "KMS key `{key}` ({}) is AWS managed: images encrypted with it cannot be copied into the `[[distribution]]` accounts; name a customer managed key in `[encryption] kms_keys` for {region}",
                found.arn
            )),
            Ok(Some(found)) => {
                Outcome::Ok(format!("KMS key `{key}` is customer managed: its images can be distributed ({})", found.arn))
            }
            // Said by the `[encryption]` check of the region.
            Ok(None) | Err(_) => continue,
        };
        preflight.push(Some(region), outcome);
    }
}
