//! `[[distribution]]` resolved: account ids (or `ou-…` units), regions, the role template, keys and flavor
//! globs, each checked for its shape with the key's place in the file.

use std::collections::BTreeMap;

use super::{is_account_id, is_kms_key, is_role_arn, schema, Checker, KeyPath};
use crate::config::{Distribution, Distributions, FlavorName, ACCOUNT_PLACEHOLDER};
use crate::util::glob::glob_matches;

/// An organizational unit id: `ou-` then the root's 4 to 32 characters, `-`, and 8 to 32 more (Organizations
/// API Reference, `OrganizationalUnit.Id`).
pub(super) fn is_ou_id(id: &str) -> bool {
    let Some(rest) = id.strip_prefix("ou-") else { return false };
    let Some((root, unit)) = rest.split_once('-') else { return false };
    let lower = |part: &str| part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (4..=32).contains(&root.len()) && (8..=32).contains(&unit.len()) && lower(root) && lower(unit)
}

/// The account a role template names in its ARN's account field, when that is not each destination account:
/// a literal id other than the table's one account (with `{account}` elsewhere in the ARN, or with units or
/// several accounts, any literal id is another account's).
fn role_of_another_account(template: &str, accounts: &[String]) -> Option<String> {
    let field = template.split(':').nth(4)?;
    if field == ACCOUNT_PLACEHOLDER {
        return None;
    }
    match accounts {
        [only] if only == field && !template.contains(ACCOUNT_PLACEHOLDER) => None,
        _ => Some(field.to_string()),
    }
}

pub(super) fn resolve_distributions(
    checker: &mut Checker<'_>,
    sections: Vec<schema::DistributionSection>,
    flavors: &[FlavorName],
) -> Distributions {
    let mut resolved = Vec::new();
    // Which table first named each account: one account, one role and one set of keys.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (index, section) in sections.into_iter().enumerate() {
        let path = KeyPath::root().key("distribution").index(index);
        let mut distribution = Distribution {
            accounts: Vec::new(),
            organizational_units: Vec::new(),
            regions: Vec::new(),
            role_arn: section.role_arn.clone(),
            kms_keys: BTreeMap::new(),
            kms_fallback: None,
            flavors: section.flavors.clone(),
        };
        if section.accounts.is_empty() {
            checker.problem(path.key("accounts"), "names no account: list 12-digit account ids or `ou-…` units");
        }
        for (at, id) in section.accounts.iter().enumerate() {
            let key = path.key("accounts").index(at);
            if is_account_id(id) {
                if let Some(first) = seen.insert(id.clone(), index) {
                    checker.problem(
                        key,
                        format!(
                            "account `{id}` is already in [[distribution]] {}: an account is named once",
                            first + 1
                        ),
                    );
                } else {
                    distribution.accounts.push(id.clone());
                }
            } else if is_ou_id(id) {
                // Resolved into its accounts by the preflight (AWS Organizations), before the plan is made.
                if distribution.organizational_units.contains(id) {
                    checker.problem(key, format!("`{id}` is listed twice"));
                } else {
                    distribution.organizational_units.push(id.clone());
                }
            } else {
                checker.problem(
                    key,
                    format!("`{id}` is neither an AWS account id (12 digits) nor an organizational unit id (`ou-ab12-cd34ef56`)"),
                );
            }
        }
        if section.regions.is_empty() {
            checker.problem(path.key("regions"), "names no region: each account needs at least one");
        }
        for (at, region) in section.regions.iter().enumerate() {
            let region = checker.region(path.key("regions").index(at), region);
            if distribution.regions.contains(&region) {
                checker.problem(path.key("regions").index(at), format!("`{region}` is listed twice"));
            } else {
                distribution.regions.push(region);
            }
        }
        let template = &section.role_arn;
        if !template.contains(ACCOUNT_PLACEHOLDER)
            && distribution.accounts.len() + distribution.organizational_units.len() > 1
        {
            checker.problem(
                path.key("role_arn"),
                format!("`{template}` names no `{ACCOUNT_PLACEHOLDER}`: with several accounts each needs its own role, like `arn:aws:iam::{{account}}:role/image-distribution`"),
            );
        } else if !is_role_arn(&section.role_arn.replace(ACCOUNT_PLACEHOLDER, "123456789012")) {
            checker.problem(
                path.key("role_arn"),
                format!("`{template}` is not a role ARN like `arn:aws:iam::{{account}}:role/image-distribution`"),
            );
        } else if let Some(other) = role_of_another_account(template, &distribution.accounts) {
            // CopyImage called as a role lands the copy in the role's account: the run would name one account
            // (its manifest entries, gc, publishing) while another owns the copies.
            checker.problem(
                path.key("role_arn"),
                format!("`{template}` is a role of account {other}, not of the account it is assumed in: put `{ACCOUNT_PLACEHOLDER}` in the ARN's account field (`arn:aws:iam::{{account}}:role/…`), the copy lands in the role's account"),
            );
        }
        for (region, key) in section.kms_keys {
            let at = path.key("kms_keys").key(&region);
            if !is_kms_key(&key) {
                checker.problem(
                    at.clone(),
                    format!("`{key}` is not a KMS key: an alias (`alias/images`), a key id or a key ARN"),
                );
            }
            if key.starts_with("alias/aws/") {
                checker.problem(
                    at.clone(),
                    format!("`{key}` is an AWS managed key: its copies could never be shared or re-encrypted by the account's own policy; name a customer managed key"),
                );
            }
            if region == "*" {
                distribution.kms_fallback = Some(key);
            } else {
                let region = checker.region(at.clone(), &region);
                if !distribution.regions.contains(&region) {
                    checker.problem(
                        at,
                        format!(
                            "`{region}` is not one of this table's `regions`: its key would never be used (a typo?)"
                        ),
                    );
                }
                distribution.kms_keys.insert(region, key);
            }
        }
        for (at, pattern) in section.flavors.iter().enumerate() {
            if !flavors.iter().any(|flavor| glob_matches(pattern, flavor.as_str())) {
                checker.problem(path.key("flavors").index(at), format!("`{pattern}` matches no flavor of the fleet"));
            }
        }
        resolved.push(distribution);
    }
    Distributions(resolved)
}

#[cfg(test)]
mod tests {
    use super::{is_ou_id, role_of_another_account};

    #[test]
    fn a_role_is_of_the_account_it_is_assumed_in() {
        let one = ["222233334444".to_string()];
        assert_eq!(role_of_another_account("arn:aws:iam::{account}:role/d", &one), None);
        assert_eq!(role_of_another_account("arn:aws:iam::222233334444:role/d", &one), None);
        let other = Some("999988887777".to_string());
        assert_eq!(role_of_another_account("arn:aws:iam::999988887777:role/d", &one), other);
        assert_eq!(role_of_another_account("arn:aws:iam::999988887777:role/{account}", &one), other);
        assert_eq!(role_of_another_account("arn:aws:iam::222233334444:role/{account}", &one), Some(one[0].clone()));
    }

    #[test]
    fn organizational_unit_ids_have_their_shape() {
        assert!(is_ou_id("ou-ab12-cd34ef56"));
        assert!(!is_ou_id("ou-ab1-cd34ef56"), "a root part of 4 or more");
        assert!(!is_ou_id("ou-ab12-cd34"), "a unit part of 8 or more");
        assert!(!is_ou_id("222233334444"));
        assert!(!is_ou_id("ou-AB12-cd34ef56"));
    }
}
