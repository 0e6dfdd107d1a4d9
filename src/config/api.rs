//! The EC2 API as the fleet file names it: the actions fleetbake calls (`[sim] faults`) and EC2's request-rate
//! classes (`[limits.api]`). A leaf: the cloud port re-exports both, and config validates against them without
//! importing the cloud.

use std::fmt;

use super::{ApiRates, Bucket};

/// Every EC2 action fleetbake calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    DescribeImages,
    DescribeInstances,
    DescribeSubnets,
    DescribeVpcs,
    DescribeInstanceTypeOfferings,
    DescribeSecurityGroups,
    DescribeKeyPairs,
    /// An instance's console: its SSH host keys, as cloud-init printed them.
    GetConsoleOutput,
    CreateKeyPair,
    DeleteKeyPair,
    CreateSecurityGroup,
    AuthorizeSecurityGroupIngress,
    DeleteSecurityGroup,
    RunInstances,
    StopInstances,
    TerminateInstances,
    CreateImage,
    CopyImage,
    CreateTags,
    DeregisterImage,
    DeleteSnapshot,
    ModifyImageAttribute,
    ModifySnapshotAttribute,
    EnableImageDeprecation,
    /// `[publish] launch_template`: a new version with the image, then made the default.
    CreateLaunchTemplateVersion,
    ModifyLaunchTemplate,
    /// SSM, not EC2: `[publish] ssm_parameter`. Counted with the mutating calls.
    PutParameter,
    LabelParameterVersion,
    /// SSM, not EC2: whether an instance's agent is online (`[ssh] interface = "session_manager"`). Counted
    /// with the non-mutating calls.
    DescribeInstanceInformation,
    /// SSM, not EC2: a Session Manager session to an instance's sshd, and its end. Counted with the mutating
    /// calls.
    StartSession,
    TerminateSession,
    /// SSM, not EC2: the sessions still active to an instance (DescribeSessions), so that one whose
    /// StartSession answer was lost is ended too. Counted with the non-mutating calls.
    DescribeSessions,
    /// STS, not EC2: who the run acts as. Counted with the non-mutating calls.
    GetCallerIdentity,
    /// KMS, not EC2: whether a region's key exists, is enabled, and whose it is. Counted with the
    /// non-mutating calls.
    DescribeKey,
    /// SSM, not EC2: a parameter's data type, versions, values and labels (`[publish] ssm_parameter`: the
    /// preflight, the labels to move, and the read-back that confirms a put). Counted with the non-mutating
    /// calls.
    GetParameterHistory,
    /// SSM, not EC2: removes fleetbake's labels from versions past the newest few, so no label pins the
    /// oldest of SSM's 100 versions. Counted with the mutating calls.
    UnlabelParameterVersion,
    /// `[publish] launch_template`: whether the template exists (the preflight).
    DescribeLaunchTemplates,
    /// `[publish] launch_template`: the version an earlier attempt made (by its description), reused.
    DescribeLaunchTemplateVersions,
    /// Whether a region refuses public sharing of images (block public access for AMIs): the preflight.
    GetImageBlockPublicAccessState,
    /// Who may launch an image now (`launchPermission`): a finish makes it exactly `[sharing]`.
    DescribeImageAttribute,
    /// Who may create volumes from a snapshot now (`createVolumePermission`).
    DescribeSnapshotAttribute,
    /// EC2: every region and whether the account has it enabled (`AllRegions`), for the preflight. Counted
    /// with the non-mutating calls.
    DescribeRegions,
    /// SSM, not EC2: a parameter's value now (`source_ami = { ssm_parameter = … }`). Counted with the
    /// non-mutating calls.
    GetParameter,
    /// KMS, not EC2: a grant on the own account's key letting a destination account use it for a cross-account
    /// CopyImage of an image encrypted with it (`[[distribution]]`). Counted with the mutating calls.
    CreateGrant,
    /// KMS, not EC2: that grant taken back once the copy no longer needs it. Counted with the mutating calls.
    RevokeGrant,
    /// AWS Organizations, not EC2: a unit's child units (`[[distribution]] accounts` naming an `ou-…`, resolved
    /// by the preflight). Counted with the non-mutating calls.
    ListChildren,
    /// AWS Organizations, not EC2: the accounts directly in a unit. Counted with the non-mutating calls.
    ListAccountsForParent,
    /// The KMS key that encrypts each of an image's snapshots (`KmsKeyId`): the key a distribution account
    /// needs a grant on.
    DescribeSnapshots,
}

/// The AWS services fleetbake calls. Each paces its calls in buckets of its own per place (the client's
/// limiter), so a burst of SSM, KMS or STS calls never spends EC2's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Ec2,
    Ssm,
    Kms,
    Sts,
    Organizations,
}

impl Service {
    pub const ALL: [Service; 5] = [Service::Ec2, Service::Ssm, Service::Kms, Service::Sts, Service::Organizations];

    /// The service's prefix in IAM policies (`ec2`, `ssm`, `kms`, `sts`).
    pub fn key(self) -> &'static str {
        match self {
            Service::Ec2 => "ec2",
            Service::Ssm => "ssm",
            Service::Kms => "kms",
            Service::Sts => "sts",
            Service::Organizations => "organizations",
        }
    }
}

/// EC2's request-rate classes; each has its own token bucket per region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionClass {
    NonMutating,
    Mutating,
    RunInstances,
    CopyImage,
    CreateTags,
}

impl ActionClass {
    pub const ALL: [ActionClass; 5] = [
        ActionClass::NonMutating,
        ActionClass::Mutating,
        ActionClass::RunInstances,
        ActionClass::CopyImage,
        ActionClass::CreateTags,
    ];

    /// The class's bucket among the configured rates.
    pub fn bucket(self, rates: &ApiRates) -> Bucket {
        match self {
            ActionClass::NonMutating => rates.non_mutating,
            ActionClass::Mutating => rates.mutating,
            ActionClass::RunInstances => rates.run_instances,
            ActionClass::CopyImage => rates.copy_image,
            ActionClass::CreateTags => rates.create_tags,
        }
    }

    /// The name used in summaries: `non_mutating`, `run_instances`, ….
    pub fn key(self) -> &'static str {
        match self {
            ActionClass::NonMutating => "non_mutating",
            ActionClass::Mutating => "mutating",
            ActionClass::RunInstances => "run_instances",
            ActionClass::CopyImage => "copy_image",
            ActionClass::CreateTags => "create_tags",
        }
    }
}

impl Action {
    pub const ALL: [Action; 48] = [
        Action::DescribeImages,
        Action::DescribeInstances,
        Action::DescribeSubnets,
        Action::DescribeVpcs,
        Action::DescribeInstanceTypeOfferings,
        Action::DescribeSecurityGroups,
        Action::DescribeKeyPairs,
        Action::GetConsoleOutput,
        Action::CreateKeyPair,
        Action::DeleteKeyPair,
        Action::CreateSecurityGroup,
        Action::AuthorizeSecurityGroupIngress,
        Action::DeleteSecurityGroup,
        Action::RunInstances,
        Action::StopInstances,
        Action::TerminateInstances,
        Action::CreateImage,
        Action::CopyImage,
        Action::CreateTags,
        Action::DeregisterImage,
        Action::DeleteSnapshot,
        Action::ModifyImageAttribute,
        Action::ModifySnapshotAttribute,
        Action::EnableImageDeprecation,
        Action::CreateLaunchTemplateVersion,
        Action::ModifyLaunchTemplate,
        Action::PutParameter,
        Action::LabelParameterVersion,
        Action::DescribeInstanceInformation,
        Action::StartSession,
        Action::TerminateSession,
        Action::DescribeSessions,
        Action::GetCallerIdentity,
        Action::DescribeKey,
        Action::GetParameterHistory,
        Action::UnlabelParameterVersion,
        Action::DescribeLaunchTemplates,
        Action::DescribeLaunchTemplateVersions,
        Action::GetImageBlockPublicAccessState,
        Action::DescribeImageAttribute,
        Action::DescribeSnapshotAttribute,
        Action::DescribeRegions,
        Action::GetParameter,
        Action::CreateGrant,
        Action::RevokeGrant,
        Action::ListChildren,
        Action::ListAccountsForParent,
        Action::DescribeSnapshots,
    ];

    /// The action named as in the EC2 API (`CreateImage`).
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.to_string() == name)
    }

    /// The action as an IAM policy names it (`ec2:CreateImage`, `sts:GetCallerIdentity`, `kms:DescribeKey`):
    /// `docs/iam-policy.json` allows each.
    pub fn iam_name(self) -> String {
        format!("{}:{self}", self.service().key())
    }

    /// The AWS service that answers the action; each has its own request buckets.
    pub fn service(self) -> Service {
        match self {
            Action::GetCallerIdentity => Service::Sts,
            Action::ListChildren | Action::ListAccountsForParent => Service::Organizations,
            Action::DescribeKey | Action::CreateGrant | Action::RevokeGrant => Service::Kms,
            Action::PutParameter
            | Action::LabelParameterVersion
            | Action::GetParameterHistory
            | Action::UnlabelParameterVersion
            | Action::DescribeInstanceInformation
            | Action::StartSession
            | Action::TerminateSession
            | Action::DescribeSessions
            | Action::GetParameter => Service::Ssm,
            _ => Service::Ec2,
        }
    }

    pub fn class(self) -> ActionClass {
        match self {
            Action::DescribeImages
            | Action::DescribeInstances
            | Action::DescribeSubnets
            | Action::DescribeVpcs
            | Action::DescribeInstanceTypeOfferings
            | Action::GetCallerIdentity
            | Action::DescribeKey
            | Action::DescribeSecurityGroups
            | Action::DescribeKeyPairs
            | Action::GetConsoleOutput
            | Action::DescribeInstanceInformation
            | Action::DescribeSessions
            | Action::GetParameterHistory
            | Action::DescribeLaunchTemplates
            | Action::DescribeLaunchTemplateVersions
            | Action::GetImageBlockPublicAccessState
            | Action::DescribeImageAttribute
            | Action::DescribeSnapshotAttribute
            | Action::DescribeSnapshots
            | Action::DescribeRegions
            | Action::GetParameter
            | Action::ListChildren
            | Action::ListAccountsForParent => ActionClass::NonMutating,
            Action::RunInstances => ActionClass::RunInstances,
            Action::CopyImage => ActionClass::CopyImage,
            Action::CreateTags => ActionClass::CreateTags,
            _ => ActionClass::Mutating,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_indexes_its_own_buckets() {
        for (index, service) in Service::ALL.into_iter().enumerate() {
            assert_eq!(service as usize, index, "{service:?}");
        }
    }

    #[test]
    fn ssm_kms_and_sts_are_not_ec2() {
        assert_eq!(Action::PutParameter.service(), Service::Ssm);
        assert_eq!(Action::LabelParameterVersion.service(), Service::Ssm);
        assert_eq!(Action::GetParameterHistory.service(), Service::Ssm);
        assert_eq!(Action::GetParameterHistory.class(), ActionClass::NonMutating);
        assert_eq!(
            (Action::GetParameter.service(), Action::GetParameter.class()),
            (Service::Ssm, ActionClass::NonMutating)
        );
        assert_eq!(Action::UnlabelParameterVersion.iam_name(), "ssm:UnlabelParameterVersion");
        assert_eq!(Action::DescribeLaunchTemplateVersions.iam_name(), "ec2:DescribeLaunchTemplateVersions");
        for session_call in [
            Action::DescribeInstanceInformation,
            Action::StartSession,
            Action::TerminateSession,
            Action::DescribeSessions,
        ] {
            assert_eq!(session_call.service(), Service::Ssm, "{session_call}");
        }
        assert_eq!(Action::DescribeInstanceInformation.class(), ActionClass::NonMutating);
        assert_eq!(Action::DescribeSessions.class(), ActionClass::NonMutating);
        assert_eq!(Action::DescribeSessions.iam_name(), "ssm:DescribeSessions");
        assert_eq!(Action::StartSession.class(), ActionClass::Mutating);
        assert_eq!(Action::TerminateSession.class(), ActionClass::Mutating);
        assert_eq!(Action::StartSession.iam_name(), "ssm:StartSession");
        assert_eq!(Action::DescribeKey.service(), Service::Kms);
        assert_eq!(Action::GetCallerIdentity.service(), Service::Sts);
        assert_eq!(Action::CopyImage.service(), Service::Ec2);
        assert_eq!(Action::DescribeKey.iam_name(), "kms:DescribeKey");
        for grant_call in [Action::CreateGrant, Action::RevokeGrant] {
            assert_eq!(
                (grant_call.service(), grant_call.class()),
                (Service::Kms, ActionClass::Mutating),
                "{grant_call}"
            );
        }
        assert_eq!(Action::RevokeGrant.iam_name(), "kms:RevokeGrant");
        assert_eq!(Action::CreateImage.iam_name(), "ec2:CreateImage");
    }
}
