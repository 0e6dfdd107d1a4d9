//! The cloud port: what the build and copy steps may ask of EC2 in one region, and nothing more.
//!
//! Steps know the cloud only through [`RegionCloud`]. [`aws`] is the adapter over aws-sdk-ec2 and [`sim`] the
//! simulated EC2; [`Limited`] puts any cloud behind the client's request limiter ([`limiter`]), which every
//! adapter call goes through. [`watch`] and [`wait`] are how anything waits for EC2 state over the port, and
//! [`retry`] how anything (here, in `remote` and in the steps) tries again after an answer.
//!
//! Layer: `cloud` owns the port, its adapters, the limiter and the waits. It imports `config` and `util`, and
//! never the engine, the steps, the state or the reporters.

pub mod adaptive;
pub mod aws;
pub mod consistency;
pub mod hints;
mod limited;
pub mod limiter;
pub mod retry;
pub mod sim;
pub mod wait;
pub mod watch;

pub use limited::Limited;

use std::sync::Arc;

use async_trait::async_trait;
use ipnet::IpNet;

pub use crate::config::api::{Action, ActionClass, Service};
use crate::config::{ImageFilter, Market, Metadata, Region, RootVolume, SubnetLookup, Tags};

string_newtype!(
    /// `ami-…`
    ImageId,
    /// `i-…`
    InstanceId,
    /// `sg-…`
    SecurityGroupId,
    /// `snap-…`
    SnapshotId,
    /// `vpc-…`
    VpcId,
    /// `subnet-…`
    SubnetId,
    /// A key pair's name (EC2 addresses key pairs by name).
    KeyPairName,
    /// An SSM Session Manager session's id.
    SessionId,
    /// `pl-…`: a managed prefix list (a named set of CIDR blocks) a security group rule may admit.
    PrefixListId,
    /// A KMS grant's id (CreateGrant's `GrantId`), what RevokeGrant takes back.
    KmsGrantId,
);

secret_newtype!(
    /// A private key as EC2 returned it. Never printed: `Debug` redacts it. Shared (`Arc`) so a build and its
    /// connection attempts hold one copy.
    PrivateKey => "PrivateKey(<redacted>)",
    /// StartSession's TokenValue: a secret (whoever holds it can open the session's stream). `Debug` redacts it;
    /// `expose` gives the text.
    SessionToken => "SessionToken(…)",
);

/// What StartSession answered: the session's id, and what the session-manager-plugin needs to open its stream.
/// `Debug` redacts the token (like [`PrivateKey`]); the token is never logged, journaled or put in an argv.
#[derive(Clone, Debug)]
pub struct SsmSession {
    pub id: SessionId,
    /// The websocket the plugin opens (`wss://ssmmessages.<region>.amazonaws.com/v1/data-channel/<id>?…`).
    pub stream_url: String,
    pub token: SessionToken,
}

/// How a failed call should be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// RequestLimitExceeded and kin: wait and retry.
    Throttled,
    /// A 5xx, a dropped connection, a timeout: retry.
    Transient,
    /// The resource does not exist (any `*.NotFound` code). About something this process created moments ago it
    /// may only be EC2's lag ([`consistency`]); otherwise it is the answer.
    NotFound,
    /// EC2 has no room for it now: no capacity of that type in the zone, a quota of running vCPUs or of copies
    /// in flight reached. A wait (and, for a launch, another zone), not a failure, up to `[limits]
    /// capacity_patience`.
    Capacity,
    /// The credentials were refused as expired, or could not be loaded or refreshed. Not retried by the
    /// limiter (a missing profile stays missing); cleanup retries them, since a refresh may come.
    Credentials,
    /// What the call needs on the other side is not ready yet: an instance's SSM agent has not connected
    /// (`TargetNotConnected`). The caller waits it out within its own deadline (`[ssh] timeout`); not retried
    /// by the limiter, which cannot know how long to wait.
    NotReady,
    /// Anything else: the answer is final.
    Permanent,
}

/// A failed EC2 call, with the AWS error code where there is one.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{action} in {region}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct CloudError {
    pub action: Action,
    pub region: Region,
    pub kind: ErrorKind,
    pub code: Option<String>,
    pub message: String,
}

const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "SlowDown",
    "PriorRequestNotComplete",
];

const TRANSIENT_CODES: &[&str] =
    &["InternalError", "InternalFailure", "InternalServerError", "ServiceUnavailable", "Unavailable", "RequestTimeout"];

/// EC2's "not now" answers: capacity in a zone (`InsufficientInstanceCapacity`, `Unsupported`: the type is not
/// offered in that zone), the account's running-vCPU quota (terminated instances keep counting for a while),
/// and the cap on copies in flight into a region, shared with every tool of the account.
const CAPACITY_CODES: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientHostCapacity",
    "Unsupported",
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
    "ResourceLimitExceeded",
    // Spot's own (EC2 API reference, "Error codes for the Amazon EC2 API"): no spare spot capacity for the request
    // now (`InsufficientCapacity`, `UnfulfillableCapacity`), the account's spot quota (`MaxSpotInstanceCountExceeded`),
    // the spot price above the request's maximum (`SpotMaxPriceTooLow`; fleetbake names none, so the on-demand price).
    "InsufficientCapacity",
    "UnfulfillableCapacity",
    "MaxSpotInstanceCountExceeded",
    "SpotMaxPriceTooLow",
];

/// SSM's "the instance's agent is not connected (yet)": StartSession before the agent registered, or while it
/// reconnects (an instance rebooting).
const NOT_READY_CODES: &[&str] = &["TargetNotConnected"];

/// Credentials EC2 refused because they expired (a role session ran out mid-run; the provider refreshes them).
const CREDENTIALS_CODES: &[&str] = &["ExpiredToken", "ExpiredTokenException", "RequestExpired"];

impl ErrorKind {
    /// Classifies an AWS error code.
    pub fn of_code(code: &str) -> ErrorKind {
        if THROTTLING_CODES.contains(&code) {
            ErrorKind::Throttled
        } else if TRANSIENT_CODES.contains(&code) {
            ErrorKind::Transient
        } else if CAPACITY_CODES.contains(&code) {
            ErrorKind::Capacity
        } else if CREDENTIALS_CODES.contains(&code) {
            ErrorKind::Credentials
        } else if NOT_READY_CODES.contains(&code) {
            ErrorKind::NotReady
        } else if code.ends_with(".NotFound") {
            ErrorKind::NotFound
        } else {
            ErrorKind::Permanent
        }
    }

    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Throttled | ErrorKind::Transient)
    }
}

/// An image that matched a source filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSummary {
    pub id: ImageId,
    pub name: String,
    /// RFC 3339 as EC2 gives it; compared as text, which orders RFC 3339 UTC times correctly.
    pub creation_date: String,
    /// The device its root volume is attached as (`/dev/xvda`): a launch overriding the root volume names it.
    pub root_device: Option<String>,
    /// The account that owns it, where EC2 says.
    pub owner: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageState {
    Pending,
    Available,
    /// Failed, error, invalid, deregistered: it will never become available.
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageStatus {
    pub id: ImageId,
    pub state: ImageState,
    pub snapshot_ids: Vec<SnapshotId>,
    pub root_device: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceState {
    Pending,
    Running,
    Stopping,
    Stopped,
    ShuttingDown,
    Terminated,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceStatus {
    pub id: InstanceId,
    pub state: InstanceState,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub public_dns: Option<String>,
    pub private_dns: Option<String>,
    /// Why it is in its state, as EC2 says (`Server.InsufficientInstanceCapacity: …` for an instance that went
    /// from pending to terminated).
    pub state_reason: Option<String>,
}

/// What RunInstances is asked for.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub image_id: ImageId,
    pub instance_type: String,
    pub key_name: KeyPairName,
    pub security_group: SecurityGroupId,
    /// `None`: EC2 picks a default subnet of the default VPC.
    pub subnet_id: Option<SubnetId>,
    pub associate_public_ip: Option<bool>,
    /// Idempotency token: a retried RunInstances with the same token launches nothing new.
    pub client_token: String,
    /// On the instance and its volumes.
    pub tags: Tags,
    /// IMDSv2 only, and the hop limit.
    pub metadata: Metadata,
    /// The root volume, overridden (its size, type, encryption); `None`: as the source image has it.
    pub root_volume: Option<RootDevice>,
    /// An instance profile, by name.
    pub iam_instance_profile: Option<String>,
    /// Sent byte for byte (base64-encoded, as RunInstances takes it).
    pub user_data: Option<crate::config::UserData>,
    /// On demand, or a one-time spot request (`InstanceMarketOptions`, terminated when interrupted).
    pub market: Market,
}

/// The root volume of a launch: the source image's root device, with what the flavor and `[encryption]` say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootDevice {
    pub device_name: String,
    pub volume: RootVolume,
    /// Encrypted with this KMS key; `None`: as the source image's snapshot is.
    pub kms_key: Option<String>,
}

/// What CopyImage is asked for; sent to the destination region.
#[derive(Clone, Debug)]
pub struct CopySpec {
    pub source_region: Region,
    pub source_image: ImageId,
    pub name: String,
    pub description: Option<String>,
    pub client_token: String,
    /// The copy's tags, given at creation (`TagSpecifications`): an image that exists is never untagged.
    pub tags: Tags,
    /// Its snapshots' tags, given at creation too (`TagSpecifications`, ResourceType `snapshot`): a tag policy or
    /// an SCP that requires tags on create sees them.
    pub snapshot_tags: Tags,
    /// Encrypted with this KMS key of the destination region; `None`: as the source is.
    pub kms_key: Option<String>,
}

/// Who may launch an image (ModifyImageAttribute `LaunchPermission`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LaunchPermissions {
    pub accounts: Vec<String>,
    pub organizations: Vec<String>,
    pub organizational_units: Vec<String>,
    pub public: bool,
}

impl LaunchPermissions {
    pub fn is_empty(&self) -> bool {
        !self.public
            && self.accounts.is_empty()
            && self.organizations.is_empty()
            && self.organizational_units.is_empty()
    }
}

impl LaunchPermissions {
    /// Those of `self` that `wanted` does not list: what a finish removes so the image has exactly `wanted`.
    pub fn beyond(&self, wanted: &LaunchPermissions) -> LaunchPermissions {
        let unlisted = |mine: &[String], theirs: &[String]| -> Vec<String> {
            mine.iter().filter(|item| !theirs.contains(item)).cloned().collect()
        };
        LaunchPermissions {
            accounts: unlisted(&self.accounts, &wanted.accounts),
            organizations: unlisted(&self.organizations, &wanted.organizations),
            organizational_units: unlisted(&self.organizational_units, &wanted.organizational_units),
            public: self.public && !wanted.public,
        }
    }
}

/// A region's block public access for AMIs (GetImageBlockPublicAccessState). New accounts have it on; while it
/// is, ModifyImageAttribute refuses to make an image public (`OperationNotPermitted`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageBlockPublicAccess {
    /// `block-new-sharing`: no image may be made public (those already public stay so).
    BlockNewSharing,
    /// `unblocked`.
    Unblocked,
}

impl ImageBlockPublicAccess {
    /// EC2's value; anything but `unblocked` is taken as blocking (a state EC2 adds later is not a promise).
    pub fn from_state(state: &str) -> ImageBlockPublicAccess {
        if state == "unblocked" {
            ImageBlockPublicAccess::Unblocked
        } else {
            ImageBlockPublicAccess::BlockNewSharing
        }
    }
}

/// Who a security group's SSH rule admits (one AuthorizeSecurityGroupIngress): addresses (`IpRanges`,
/// `Ipv6Ranges`), the members of other security groups (`UserIdGroupPairs`: whatever runs in those groups,
/// from its private address, in the same VPC or a peered one) and the entries of managed prefix lists
/// (`PrefixListIds`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngressSources {
    pub cidrs: Vec<IpNet>,
    pub security_groups: Vec<SecurityGroupId>,
    pub prefix_lists: Vec<PrefixListId>,
}

impl IngressSources {
    /// Addresses only.
    pub fn cidrs(cidrs: Vec<IpNet>) -> Self {
        IngressSources { cidrs, ..IngressSources::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.cidrs.is_empty() && self.security_groups.is_empty() && self.prefix_lists.is_empty()
    }
}

impl std::fmt::Display for IngressSources {
    /// `10.0.0.0/16, sg-…, pl-…`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cidrs = self.cidrs.iter().map(ToString::to_string);
        let groups = self.security_groups.iter().map(ToString::to_string);
        let lists = self.prefix_lists.iter().map(ToString::to_string);
        f.write_str(&cidrs.chain(groups).chain(lists).collect::<Vec<_>>().join(", "))
    }
}

/// A KMS key as DescribeKey answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsKey {
    pub arn: String,
    pub enabled: bool,
    /// An AWS-managed key (`alias/aws/ebs`): images encrypted with it cannot be shared.
    pub aws_managed: bool,
}

/// A subnet a build may launch into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    pub id: SubnetId,
    pub vpc: VpcId,
    pub availability_zone: String,
    pub available_addresses: u32,
    /// Instances launched here get a public IP unless the launch says otherwise.
    pub maps_public_ip: bool,
}

/// A VPC and its IPv4 CIDR blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vpc {
    pub id: VpcId,
    pub cidrs: Vec<IpNet>,
}

/// Who the credentials act as (STS GetCallerIdentity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub account: String,
    pub arn: String,
}

/// A resource found by its tags, with all of its tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged<T> {
    pub id: T,
    pub tags: Tags,
}

/// Which of the account's own images to find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageQuery {
    /// By name (AMI names are unique per region and account).
    Named(Vec<String>),
    /// Carrying every one of these tags.
    Tagged(Tags),
}

/// An image the account owns, as resume and gc see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedImage {
    pub id: ImageId,
    pub name: String,
    pub state: ImageState,
    /// RFC 3339, as EC2 gives it.
    pub creation_date: String,
    pub snapshot_ids: Vec<SnapshotId>,
    pub tags: Tags,
}

pub type CloudResult<T> = Result<T, CloudError>;

/// An idempotency token from parts: at most 64 ASCII characters, as EC2 requires. Long ones keep a prefix and
/// a fixed hash (FNV-1a) of the whole, the same in every build of fleetbake, so a later run can repeat it.
pub fn client_token(parts: &[&str]) -> String {
    let joined = parts.join("/");
    if joined.len() <= 64 {
        return joined;
    }
    format!("{}-{:016x}", &joined[..47], fnv1a(&joined))
}

/// FNV-1a, 64 bits: a hash that never changes between Rust versions.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// An instance's console output as text (bytes that are not UTF-8 replaced): untrusted, anything on the
/// instance can print to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleOutput(pub String);

/// EC2 in one region, as the steps see it.
#[async_trait]
pub trait RegionCloud: Send + Sync {
    fn region(&self) -> &Region;

    /// Every image matching the filter (any state but deregistered), unordered.
    async fn find_images(&self, filter: &ImageFilter) -> CloudResult<Vec<ImageSummary>>;
    /// The images among `ids` that exist; unknown ids are left out.
    async fn describe_images(&self, ids: &[ImageId]) -> CloudResult<Vec<ImageStatus>>;
    /// The subnets the lookup names (by id: `InvalidSubnetID.NotFound` for one this region does not have).
    async fn find_subnets(&self, lookup: &SubnetLookup) -> CloudResult<Vec<Subnet>>;
    /// The VPC, with its CIDR blocks; `default` looks for the region's default VPC instead of `id`.
    async fn find_vpc(&self, vpc: VpcLookup<'_>) -> CloudResult<Option<Vpc>>;
    /// Whether the instance type is offered in the region, or in one of its zones.
    async fn instance_type_offered(&self, instance_type: &str, zone: Option<&str>) -> CloudResult<bool>;

    async fn create_key_pair(&self, name: &KeyPairName, tags: &Tags) -> CloudResult<PrivateKey>;
    async fn delete_key_pair(&self, name: &KeyPairName) -> CloudResult<()>;

    async fn create_security_group(
        &self,
        name: &str,
        description: &str,
        vpc: Option<&VpcId>,
        tags: &Tags,
    ) -> CloudResult<SecurityGroupId>;
    /// One rule on `port` admitting every source in `from`.
    async fn authorize_ingress(&self, group: &SecurityGroupId, port: u16, from: &IngressSources) -> CloudResult<()>;
    async fn delete_security_group(&self, group: &SecurityGroupId) -> CloudResult<()>;

    async fn run_instance(&self, spec: &LaunchSpec) -> CloudResult<InstanceId>;
    /// The instances among `ids` that exist.
    async fn describe_instances(&self, ids: &[InstanceId]) -> CloudResult<Vec<InstanceStatus>>;
    /// The instance's console output (serial console), the newest EC2 has; empty until it has any.
    async fn console_output(&self, instance: &InstanceId) -> CloudResult<ConsoleOutput>;
    async fn stop_instance(&self, id: &InstanceId) -> CloudResult<()>;
    async fn terminate_instance(&self, id: &InstanceId) -> CloudResult<()>;

    /// CreateImage, the image tagged `tags` and its snapshots `snapshot_tags`, both at creation
    /// (`TagSpecifications`), of a stopped instance or, with `NoReboot = false` sent explicitly, of a running one
    /// EC2 stops and starts again for a consistent snapshot ([`ImageOf`]).
    async fn create_image(
        &self,
        instance: &InstanceId,
        name: &str,
        description: Option<&str>,
        tags: &Tags,
        snapshot_tags: &Tags,
        of: ImageOf,
    ) -> CloudResult<ImageId>;
    async fn copy_image(&self, spec: &CopySpec) -> CloudResult<ImageId>;
    async fn create_tags(&self, resources: &[String], tags: &Tags) -> CloudResult<()>;

    /// The account's own images the query names (any state but deregistered).
    async fn find_owned_images(&self, query: &ImageQuery) -> CloudResult<Vec<OwnedImage>>;
    /// Instances carrying all of `tags` that are not terminated or shutting down.
    async fn find_instances(&self, tags: &Tags) -> CloudResult<Vec<Tagged<InstanceId>>>;
    async fn find_security_groups(&self, tags: &Tags) -> CloudResult<Vec<Tagged<SecurityGroupId>>>;
    async fn find_key_pairs(&self, tags: &Tags) -> CloudResult<Vec<Tagged<KeyPairName>>>;
    async fn deregister_image(&self, id: &ImageId) -> CloudResult<()>;
    async fn delete_snapshot(&self, id: &SnapshotId) -> CloudResult<()>;

    /// The image requires IMDSv2 of the instances launched from it (ImdsSupport `v2.0`).
    async fn require_imdsv2(&self, image: &ImageId) -> CloudResult<()>;
    /// EC2 deprecates the image at `at` (EnableImageDeprecation).
    async fn deprecate_image(&self, image: &ImageId, at: chrono::DateTime<chrono::Utc>) -> CloudResult<()>;
    /// Adds launch permissions to the image.
    async fn share_image(&self, image: &ImageId, with: &LaunchPermissions) -> CloudResult<()>;
    /// Adds create-volume permissions to the snapshot for these accounts.
    async fn share_snapshot(&self, snapshot: &SnapshotId, accounts: &[String]) -> CloudResult<()>;
    /// The KMS key of this region (`None`: not found).
    async fn describe_key(&self, key: &str) -> CloudResult<Option<KmsKey>>;

    /// Writes `image` as a new version of the SSM parameter `name` (DataType `aws:ec2:image`, overwriting); the
    /// version SSM answered. SSM validates the id afterwards, asynchronously: the version may never appear
    /// ([`RegionCloud::parameter_history`] tells).
    async fn put_image_parameter(&self, name: &str, image: &ImageId) -> CloudResult<u64>;
    /// A new version of the launch template `name` with `image` (the rest as its default version has it), made
    /// its default; the template's id and the version.
    async fn launch_template_version(
        &self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> CloudResult<(String, u64)>;

    /// Whether the instance's SSM agent is registered and online (DescribeInstanceInformation filtered by the
    /// instance id: `PingStatus = Online`); not yet registered is `Ok(false)`.
    async fn agent_online(&self, instance: &InstanceId) -> CloudResult<bool>;
    /// StartSession, document `AWS-StartSSHSession`, parameter `portNumber = port` (SSM's answer while the agent
    /// is not connected: a CloudError with code `TargetNotConnected`, kind [`ErrorKind::NotReady`]).
    async fn start_session(&self, instance: &InstanceId, port: u16) -> CloudResult<SsmSession>;
    /// TerminateSession; a session that already ended is Ok (it is idempotent in SSM).
    async fn terminate_session(&self, session: &SessionId) -> CloudResult<()>;
    /// The sessions still active to `instance` (DescribeSessions, `State = Active`, filter `Target`, every
    /// page): whoever started them. A StartSession whose answer was lost opened one whose id only this tells.
    async fn active_sessions(&self, instance: &InstanceId) -> CloudResult<Vec<SessionId>>;

    /// GetParameterHistory, every page: the parameter's data type and its versions, oldest first (`None`: no
    /// such parameter).
    async fn parameter_history(&self, name: &str) -> CloudResult<Option<ParameterHistory>>;
    /// LabelParameterVersion: `label` on that version (SSM moves it there from any other version).
    async fn label_parameter_version(&self, name: &str, version: u64, label: &str) -> CloudResult<()>;
    /// UnlabelParameterVersion: removes `labels` (at most 10) from that version.
    async fn unlabel_parameter_version(&self, name: &str, version: u64, labels: &[String]) -> CloudResult<()>;
    /// DescribeLaunchTemplates by name: the template's id, `None` if the region has no template of that name.
    async fn launch_template_id(&self, name: &str) -> CloudResult<Option<String>>;
    /// DescribeLaunchTemplateVersions: the version of template `name` whose description is `description` and
    /// whose image is `image` (one an earlier attempt made), as the template's id and the version.
    async fn launch_template_version_made(
        &self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> CloudResult<Option<(String, u64)>>;
    /// The region's block public access for AMIs (GetImageBlockPublicAccessState).
    async fn image_block_public_access(&self) -> CloudResult<ImageBlockPublicAccess>;
    /// Who may launch the image now (DescribeImageAttribute `launchPermission`).
    async fn launch_permissions(&self, image: &ImageId) -> CloudResult<LaunchPermissions>;
    /// Takes these launch permissions away (ModifyImageAttribute `LaunchPermission.Remove`).
    async fn unshare_image(&self, image: &ImageId, from: &LaunchPermissions) -> CloudResult<()>;
    /// The accounts that may create volumes from the snapshot now (DescribeSnapshotAttribute
    /// `createVolumePermission`).
    async fn snapshot_permissions(&self, snapshot: &SnapshotId) -> CloudResult<Vec<String>>;
    /// Takes these accounts' create-volume permissions away.
    async fn unshare_snapshot(&self, snapshot: &SnapshotId, accounts: &[String]) -> CloudResult<()>;
    /// DescribeRegions with `AllRegions = true`: every region of the partition and whether the account has
    /// it enabled (`OptInStatus`). A region not enabled answers EC2 calls with `AuthFailure`.
    async fn describe_regions(&self) -> CloudResult<Vec<RegionOptIn>>;
    /// GetParameter: the parameter's newest version and its value (`None`: SSM has no such parameter,
    /// `ParameterNotFound`). AWS's public `/aws/service/…` parameters are readable in every region.
    async fn parameter(&self, name: &str) -> CloudResult<Option<ParameterVersion>>;
    /// KMS CreateGrant on `key` (a key of this region and account, by id, ARN or alias resolved to its ARN)
    /// letting `grantee` (a principal ARN, e.g. the destination account's `arn:aws:iam::ACCOUNT:root`) use it
    /// for what a cross-account CopyImage of an image encrypted with it needs (Decrypt, DescribeKey,
    /// CreateGrant, ReEncryptFrom, ReEncryptTo, GenerateDataKeyWithoutPlaintext). `name` makes a retry
    /// idempotent (KMS answers the same grant for the same name and parameters).
    async fn grant_key_use(&self, key: &str, grantee: &str, name: &str) -> CloudResult<KmsGrantId>;
    /// KMS RevokeGrant, by the key's owner; a grant already gone is `Ok`.
    async fn revoke_key_grant(&self, key: &str, grant: &KmsGrantId) -> CloudResult<()>;
    /// DescribeSnapshots by id: whether each snapshot is encrypted, and with which KMS key (`KmsKeyId`, the
    /// key's ARN). What encrypts an image is read here, not assumed from the fleet file: EBS encryption by
    /// default (`aws/ebs` or the account's default key) or an alias re-pointed since the image was made.
    async fn snapshot_keys(&self, snapshots: &[SnapshotId]) -> CloudResult<Vec<SnapshotKey>>;
    /// Every launch template of the region (DescribeLaunchTemplates, every page) with the image of its default
    /// and of its latest version (DescribeLaunchTemplateVersions `$Default`, `$Latest`, every page): what
    /// an Auto Scaling group or a `RunInstances` naming the template launches. A version without an image is
    /// left out.
    async fn launch_template_images(&self) -> CloudResult<Vec<TemplateImage>>;
    /// The instances not terminated (pending, running, shutting-down, stopping, stopped) launched from any of
    /// `images` (DescribeInstances filtered by `image-id`, every page): a stopped instance needs its image to
    /// start again.
    async fn instances_of_images(&self, images: &[ImageId]) -> CloudResult<Vec<ImageUser>>;

    /// Adds `tags` to a key pair named `name` (`--keep-failed`'s `fleetbake:keep-until`): CreateTags takes a
    /// key pair by its id (`key-…`), which DescribeKeyPairs gives for the name ("Tag your Amazon EC2
    /// resources", EC2 User Guide: key pairs are taggable by id). An unknown name is `NotFound`.
    async fn tag_key_pair(&self, name: &KeyPairName, tags: &Tags) -> CloudResult<()>;
}

/// Which instance CreateImage is asked of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageOf {
    /// A stopped instance (the amazon-ebs sequence): `NoReboot` left out.
    Stopped,
    /// A running instance that cannot be stopped (a one-time spot instance: StopInstances answers
    /// `UnsupportedOperation`): `NoReboot` false, EC2 reboots it.
    RunningRebooted,
}

/// Which version of a launch template refers to an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TemplateVersionKind {
    /// `$Default`: what a launch naming the template without a version uses.
    Default,
    /// `$Latest`: what a launch (or an Auto Scaling group) asking for `$Latest` uses.
    Latest,
}

impl std::fmt::Display for TemplateVersionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TemplateVersionKind::Default => "default",
            TemplateVersionKind::Latest => "latest",
        })
    }
}

/// A launch template's default or latest version and the image it launches.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TemplateImage {
    pub template_id: String,
    pub template_name: String,
    pub kind: TemplateVersionKind,
    pub version: u64,
    pub image: ImageId,
}

/// An instance not terminated, and the image it was launched from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageUser {
    pub instance: InstanceId,
    /// EC2's state name: `running`, `stopped`, …
    pub state: String,
    pub image: ImageId,
}

/// A snapshot's encryption (DescribeSnapshots `Encrypted`, `KmsKeyId`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotKey {
    pub snapshot: SnapshotId,
    pub encrypted: bool,
    /// The key's ARN (EC2 names it for every encrypted snapshot).
    pub kms_key: Option<String>,
}

/// The SSM data type of a parameter holding an AMI id: SSM checks the id (asynchronously).
pub const IMAGE_DATA_TYPE: &str = "aws:ec2:image";

/// An SSM parameter's history (GetParameterHistory).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParameterHistory {
    /// `text`, `aws:ec2:image`, …: fixed when the parameter is made.
    pub data_type: String,
    /// Oldest first (SSM keeps the newest 100).
    pub versions: Vec<ParameterVersion>,
}

/// One version of an SSM parameter.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParameterVersion {
    pub version: u64,
    pub value: String,
    pub labels: Vec<String>,
}

impl ParameterHistory {
    /// The version numbered `version`, if SSM has it.
    pub fn version(&self, version: u64) -> Option<&ParameterVersion> {
        self.versions.iter().find(|found| found.version == version)
    }
}

/// A region as DescribeRegions (`AllRegions = true`) lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionOptIn {
    pub region: Region,
    /// `opt-in-not-required`, `opted-in` or `not-opted-in`.
    pub opt_in_status: String,
}

impl RegionOptIn {
    /// Whether the account may use the region: every status but `not-opted-in`.
    pub fn enabled(&self) -> bool {
        self.opt_in_status != "not-opted-in"
    }
}

/// The credentials the run signs its calls with, as the provider chain hands them out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialsStatus {
    /// The provider that gave them, as the SDK names it (`EnvironmentVariable`, `ProfileFile`,
    /// `AssumeRoleProvider`, `SSO`, `WebIdentityToken`, `IMDSv2`, `CredentialProcess`, …).
    pub source: String,
    /// Whether the provider gets new ones before these end (see [`CredentialsStatus::is_refreshable`]).
    pub refreshable: bool,
    /// How long until they end; `None`: long-term keys, which do not, or session keys given without their end.
    pub expires_in: Option<std::time::Duration>,
    /// Session credentials (with a session token): they end, whether or not the provider says when.
    pub temporary: bool,
    /// With `[aws] role_arn`: who the chain's own credentials are (an `:assumed-role/` ARN makes assuming the
    /// role role chaining, whose sessions last at most 1 hour), and theirs.
    pub base: Option<Box<BaseCredentials>>,
}

/// The credentials `[aws] role_arn` is assumed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseCredentials {
    pub arn: String,
    pub source: String,
    pub refreshable: bool,
    pub expires_in: Option<std::time::Duration>,
    /// Session keys (with a token): they end, whether or not the provider says when.
    pub temporary: bool,
}

/// Providers whose credentials are what was written down (environment variables, a profile's keys, a static
/// pair): they end at their expiry and nothing renews them. Every other provider (STS AssumeRole, a profile's
/// `role_arn` or `credential_source`, SSO, web identity, the instance or container role, a
/// `credential_process`) asks for new ones before the old end.
const STATIC_PROVIDERS: &[&str] = &["EnvironmentVariable", "ProfileFile", "Static"];

/// The provider's name when the SDK's credentials do not show it.
pub const UNKNOWN_PROVIDER: &str = "unknown";

impl CredentialsStatus {
    /// Whether credentials from `source` are renewed by their provider. A provider whose name could not be
    /// read (`unknown`) is not assumed to renew them: the preflight errs toward saying so.
    pub fn is_refreshable(source: &str) -> bool {
        source != UNKNOWN_PROVIDER && !STATIC_PROVIDERS.contains(&source)
    }

    /// With `[aws] role_arn` on session keys that are not renewed and whose end the provider does not give:
    /// the role is renewed only while they last, and when that is, is not known here.
    pub fn base_ends_unknown(&self) -> bool {
        self.base.as_ref().is_some_and(|base| !base.refreshable && base.temporary && base.expires_in.is_none())
    }

    /// How long the run can sign calls: these credentials' own time, or, when they are renewed with base
    /// credentials that are not, the base's. `None`: no end.
    pub fn usable_for(&self) -> Option<std::time::Duration> {
        match &self.base {
            Some(base) if !base.refreshable && base.expires_in.is_some() => base.expires_in,
            _ if self.refreshable => None,
            _ => self.expires_in,
        }
    }
}

/// The SSM document that forwards a session to the instance's sshd (`portNumber`): AWS's own.
pub const SSH_SESSION_DOCUMENT: &str = "AWS-StartSSHSession";

/// Which VPC to describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VpcLookup<'a> {
    Id(&'a VpcId),
    /// The region's default VPC, if it has one.
    Default,
}

/// The cloud in every region a run touches.
#[async_trait]
pub trait Cloud: Send + Sync {
    fn region(&self, region: &Region) -> Arc<dyn RegionCloud>;

    /// Who the run acts as: the account and the ARN (after any role was assumed).
    async fn caller_identity(&self) -> CloudResult<Identity>;

    /// The credentials the run signs with: their provider, whether it renews them, when they end, and with
    /// `[aws] role_arn`, the credentials the role is assumed with. Read-only (the provider may call STS).
    async fn credentials(&self) -> CloudResult<CredentialsStatus>;

    /// A region of any account: the own account's is [`Cloud::region`]; another account's
    /// (`[[distribution]]`) acts as the role the fleet names for it, assumed with the run's credentials.
    fn place(&self, place: &crate::config::Place) -> Arc<dyn RegionCloud>;

    /// The ACTIVE accounts of an organizational unit (`ou-…`), through its child units, each once: AWS
    /// Organizations `ListAccountsForParent` and `ListChildren` (`ChildType=ORGANIZATIONAL_UNIT`), every page.
    /// Only the organization's management account or a delegated administrator may call them; a unit that
    /// does not exist answers `ParentNotFoundException`.
    async fn organization_unit_accounts(&self, unit: &str) -> CloudResult<Vec<String>>;
}

/// The pseudo-region AWS Organizations' calls are counted (and their errors placed) under: a global service,
/// whose endpoint is in us-east-1.
pub const ORGANIZATIONS: &str = "organizations";

#[cfg(test)]
mod tests {
    use super::*;

    /// SSM's "the agent is not connected" is a wait, not a failure and not the limiter's to retry.
    #[test]
    fn target_not_connected_is_not_ready() {
        assert_eq!(ErrorKind::of_code("TargetNotConnected"), ErrorKind::NotReady);
        assert!(!ErrorKind::NotReady.is_retryable());
        assert_eq!(ErrorKind::of_code("InternalServerError"), ErrorKind::Transient);
        assert_eq!(ErrorKind::of_code("InvalidDocument"), ErrorKind::Permanent);
    }

    /// What a finish removes: what the image has and `[sharing]` no longer lists, `all` included.
    #[test]
    fn beyond_is_what_is_granted_and_not_wanted() {
        let strings = |items: &[&str]| items.iter().map(|item| item.to_string()).collect::<Vec<_>>();
        let granted = LaunchPermissions {
            accounts: strings(&["111122223333", "444455556666"]),
            organizations: strings(&["arn:aws:organizations::111122223333:organization/o-abc123def4"]),
            organizational_units: Vec::new(),
            public: true,
        };
        let wanted = LaunchPermissions { accounts: strings(&["111122223333"]), ..LaunchPermissions::default() };
        let expected = LaunchPermissions {
            accounts: strings(&["444455556666"]),
            organizations: granted.organizations.clone(),
            organizational_units: Vec::new(),
            public: true,
        };
        assert_eq!(granted.beyond(&wanted), expected);
        assert!(granted.beyond(&granted).is_empty());
        assert!(wanted.beyond(&granted).is_empty());
    }

    /// A session's token opens its stream: no `{:?}` of the session or the token shows it.
    #[test]
    fn a_sessions_token_is_redacted() {
        let secret = "AAEAAb3Vk0secret-token-value";
        let session = SsmSession {
            id: SessionId::new("fleetbake-0123456789abcdef0"),
            stream_url: "wss://ssmmessages.us-west-2.amazonaws.com/v1/data-channel/fleetbake-0123456789abcdef0".into(),
            token: SessionToken::new(secret.into()),
        };
        let shown = format!("{session:?} {:?} {:#?}", session.token, session);
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("fleetbake-0123456789abcdef0"), "{shown}");
        assert_eq!(session.token.expose(), secret);
    }
}
