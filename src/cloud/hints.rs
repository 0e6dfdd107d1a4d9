//! What to do about an AWS error the user must act on: the IAM permission and the line of
//! `docs/iam-policy.json` that grants it, the credential source in use and how to refresh it, a region not
//! enabled for the account. Shown under the failure and kept in the manifest's `hint`.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::{Action, CloudError, ErrorKind};
use crate::config::Region;

/// The policy fleetbake documents, to point at the line that grants an action.
const POLICY: &str = include_str!("../../docs/iam-policy.json");

/// How the hint of a credentials error without an AWS code begins (the provider chain could not load or renew
/// them: a dispatch failure, not an answer), so a failure made from one is known for what it is.
pub const CREDENTIALS_GONE: &str = "the credentials expired and could not be refreshed";

/// The hint for `error`, if it is one a person must act on.
pub fn hint(error: &CloudError) -> Option<String> {
    let code = error.code.as_deref().unwrap_or_default();
    match code {
        "AccessDenied" if error.message.contains("sts:AssumeRole") => Some(role_refused(&error.message)),
        "UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException" => Some(permission(error.action)),
        "AuthFailure" if known_not_enabled(&error.region) => {
            Some(region_not_enabled(&error.region, "`not-opted-in`, so EC2 there answers `AuthFailure`"))
        }
        // A region not enabled answers `AuthFailure` too, with the same words as refused credentials.
        "AuthFailure" => Some(format!(
            "AWS did not accept the credentials in {}: if other regions answer, the region is not enabled for the account (`fleetbake preflight` reads DescribeRegions; `aws account enable-region --region-name {}`); else {}",
            error.region,
            error.region,
            credential_source()
        )),
        "InvalidClientTokenId" | "SignatureDoesNotMatch" | "UnrecognizedClientException" => {
            Some(format!("AWS did not accept the credentials: {}", credential_source()))
        }
        "OptInRequired" => Some(region_not_enabled(&error.region, "not enabled")),
        "TargetNotConnected" => Some(agent_not_online(None)),
        "OperationNotPermitted" if error.action == Action::ModifyImageAttribute => Some(public_blocked(error)),
        _ if error.kind == ErrorKind::Credentials => {
            Some(format!("{CREDENTIALS_GONE}: {}", credential_source()))
        }
        _ => None,
    }
}

/// STS refused to let the run assume another account's role (`[[distribution]]`): STS's message names the
/// role after `on resource: `. Only that account's work fails; nothing the run's own policy grants helps.
pub fn role_refused(message: &str) -> String {
    let role = message
        .split_once("on resource: ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("the account's role");
    format!(
        "the role `{role}` could not be assumed: its trust policy must let the identity the run acts as assume it (`sts:AssumeRole`), and that identity needs `sts:AssumeRole` on it; only that account's copies fail"
    )
}

/// A public share refused: block public access for AMIs is on in the region.
pub fn public_blocked(error: &CloudError) -> String {
    format!(
        "block public access for AMIs is on in {region}, so no image there can be made public; the accounts, organizations and OUs of `[sharing]` keep their access. Disable it (`aws ec2 disable-image-block-public-access --region {region}`, which takes up to 10 minutes) or drop `[sharing] public`",
        region = error.region
    )
}

/// Regions DescribeRegions said are not enabled for the account, as the last preflight read them: an
/// `AuthFailure` there is the region, not the credentials. Process-wide, since a hint is made from an error
/// alone; each preflight replaces it, so a run never keeps an earlier one's answer.
static NOT_ENABLED: Mutex<BTreeSet<Region>> = Mutex::new(BTreeSet::new());

/// Notes the regions the account has not enabled (the preflight's DescribeRegions), instead of any noted before.
pub fn note_regions_not_enabled(regions: impl IntoIterator<Item = Region>) {
    *NOT_ENABLED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = regions.into_iter().collect();
}

fn known_not_enabled(region: &Region) -> bool {
    NOT_ENABLED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(region)
}

/// What to do about a region the account has not enabled (`status`: what AWS said of it).
pub fn region_not_enabled(region: &Region, status: &str) -> String {
    format!(
        "{region} is not enabled for this account (OptInStatus {status}): enable it (Account settings → AWS Regions, or `aws account enable-region --region-name {region}`) or leave it out of `[regions]`"
    )
}

/// Why an instance's SSM agent does not come online (Session Manager), and what to check.
pub fn agent_not_online(profile: Option<&str>) -> String {
    let profile = profile.map(|name| format!(" (`{name}`)")).unwrap_or_default();
    format!(
        "the agent registers only if the instance profile{profile} allows it (`AmazonSSMManagedInstanceCore`, or `ssm:UpdateInstanceInformation` and `ssmmessages:*`), the image runs the SSM agent, and the instance reaches SSM: a private subnet needs VPC endpoints for `ssm`, `ssmmessages` and `ec2messages` (or a NAT)"
    )
}

/// The permission an action needs, and where the policy grants it.
fn permission(action: Action) -> String {
    let name = action.iam_name();
    let line = POLICY.lines().position(|line| line.contains(&format!("\"{name}\""))).map(|index| index + 1);
    match line {
        Some(line) => format!(
            "the identity the run acts as needs `{name}`: docs/iam-policy.json line {line} grants it (attach the policy to the role, or to `[aws] role_arn`)"
        ),
        None => format!("the identity the run acts as needs `{name}`"),
    }
}

/// What to do when no credentials could be loaded at all, before a command's first call: the source the chain
/// would have used and how to give it credentials, and the simulated account, which needs none.
pub fn no_credentials() -> String {
    format!("{}; or try the fleet without AWS first: the same command with `--cloud sim`", credential_source())
}

/// Which credential source the standard chain would have used, as the environment says, and how to refresh it.
pub fn credential_source() -> String {
    let set = |name: &str| std::env::var_os(name).is_some_and(|value| !value.is_empty());
    if set("AWS_ACCESS_KEY_ID") && set("AWS_SESSION_TOKEN") {
        "session keys from the environment (AWS_ACCESS_KEY_ID, AWS_SESSION_TOKEN) never refresh: export new ones, or use a profile or a role (`[aws] role_arn`) that refreshes itself".into()
    } else if set("AWS_ACCESS_KEY_ID") {
        "access keys from the environment (AWS_ACCESS_KEY_ID): check they are current and of the right account".into()
    } else if set("AWS_WEB_IDENTITY_TOKEN_FILE") {
        "a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE, e.g. GitHub OIDC): check the role's trust policy and that the token file is current".into()
    } else if let Some(profile) = std::env::var_os("AWS_PROFILE") {
        let profile = profile.to_string_lossy();
        format!("the profile `{profile}` (AWS_PROFILE): for SSO, `aws sso login --profile {profile}`")
    } else if set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") || set("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
        "the container's task role: check the task definition's role".into()
    } else {
        "the default profile (`[aws] profile` if set; for SSO, `aws sso login`), else the instance role".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Region;

    fn error(code: &str, action: Action) -> CloudError {
        CloudError {
            action,
            region: Region::new("ap-east-1"),
            kind: ErrorKind::of_code(code),
            code: Some(code.into()),
            message: "no".into(),
        }
    }

    #[test]
    fn a_refused_action_points_at_its_line_of_the_policy() {
        let hint = hint(&error("UnauthorizedOperation", Action::RunInstances)).unwrap();
        let line = POLICY.lines().position(|line| line.contains("\"ec2:RunInstances\"")).unwrap() + 1;
        assert!(hint.contains(&format!("`ec2:RunInstances`: docs/iam-policy.json line {line}")), "{hint}");
        let opt_in = super::hint(&error("OptInRequired", Action::DescribeImages)).unwrap();
        assert!(opt_in.starts_with("ap-east-1 is not enabled for this account"), "{opt_in}");
        let refused = super::hint(&error("AuthFailure", Action::DescribeImages)).unwrap();
        assert!(refused.contains("if other regions answer, the region is not enabled"), "{refused}");
        note_regions_not_enabled([Region::new("ap-east-1")]);
        let not_enabled = super::hint(&error("AuthFailure", Action::DescribeImages)).unwrap();
        assert!(not_enabled.starts_with("ap-east-1 is not enabled for this account"), "{not_enabled}");
        assert!(!not_enabled.contains("credentials"), "{not_enabled}");
        note_regions_not_enabled([]);
        let forgotten = super::hint(&error("AuthFailure", Action::DescribeImages)).unwrap();
        assert!(forgotten.contains("if other regions answer"), "a later preflight's answer replaces it: {forgotten}");
        assert!(super::hint(&error("InvalidAMIID.Malformed", Action::DescribeImages)).is_none());
        assert!(super::hint(&error("ExpiredToken", Action::CreateTags)).unwrap().contains("expired"));
        let session = super::hint(&error("AccessDeniedException", Action::StartSession)).unwrap();
        let line = POLICY.lines().position(|line| line.contains("\"ssm:StartSession\"")).unwrap() + 1;
        assert!(session.contains(&format!("`ssm:StartSession`: docs/iam-policy.json line {line}")), "{session}");
        let role = "arn:aws:iam::222233334444:role/image-distribution";
        let assume = CloudError {
            message: format!("User: arn:aws:iam::123456789012:user/ci is not authorized to perform: sts:AssumeRole on resource: {role}"),
            ..error("AccessDenied", Action::CopyImage)
        };
        let refused_role = super::hint(&assume).unwrap();
        assert!(refused_role.starts_with(&format!("the role `{role}` could not be assumed")), "{refused_role}");
        assert!(!refused_role.contains("docs/iam-policy.json"), "not the run's own policy: {refused_role}");
        let offline = super::hint(&error("TargetNotConnected", Action::StartSession)).unwrap();
        assert!(offline.contains("instance profile") && offline.contains("ssmmessages"), "{offline}");
    }
}
