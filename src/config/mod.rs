//! fleet.toml: its schema, the defaults inheritance and every check, each error naming `file:line:column` and key.
//!
//! [`load`] is the only entry point. It reads the file and the files it names, never the network.
//!
//! Layer: the bottom. `config` owns the fleet file and the vocabulary every layer speaks (regions, places (a
//! region of an account, [`Place`]), flavor names, tags; EC2's actions and request classes in [`api`]). It
//! imports nothing of the crate but `util`.

pub mod api;
mod distribution;
pub mod forensics;
pub mod keys;
pub mod packer;
mod place;
mod schema;
mod selection;
mod spans;
pub mod spot;
pub mod ssh_fields;
pub mod template;
mod validate;
pub mod variables;

pub use distribution::{Distribution, Distributions, UnitAccounts, ACCOUNT_PLACEHOLDER};
pub use forensics::{Forensics, KeepFailed, KeptState, DEFAULT_LOGS_RETENTION};
pub use place::{Account, Place};
pub use selection::{JobPattern, Selection};
pub use spot::{Market, Price, Prices, SimSpot, SpotFallback};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

pub use template::{NameContext, NameTemplate, Placeholder};
/// Warnings about a valid fleet file (`[retention]` that cannot remove anything), located as errors are.
pub use validate::warnings;
pub use validate::RUN_ID_LENGTH;
pub use variables::{VariableInputs, Variables};

string_newtype!(
    /// An AWS region name such as `us-west-2`.
    Region,
    /// The name of one `[[flavor]]`.
    FlavorName,
);

pub type Tags = BTreeMap<String, String>;

/// A build instance's user data: the bytes EC2 hands the instance, as the fleet file or `user_data_file` holds
/// them (a script, a cloud-config, or gzip of either, which cloud-init unpacks), at most
/// [`UserData::MAX_BYTES`]. Its `Debug` shows only its size: user data can hold what a log should not.
#[derive(Clone, PartialEq, Eq)]
pub struct UserData(Vec<u8>);

impl UserData {
    /// EC2 takes at most 16 KB of user data before base64 encoding ("User data is limited to 16 KB, in raw
    /// form, before it is base64-encoded": the EC2 User Guide, "Run commands when you launch an EC2 instance
    /// with user data input"; the RunInstances API reference says the same of `UserData`).
    pub const MAX_BYTES: usize = 16 * 1024;

    pub fn new(bytes: Vec<u8>) -> Self {
        UserData(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for UserData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserData({} bytes)", self.0.len())
    }
}

/// A fleet file, resolved: defaults applied, paths absolute, every value checked.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub file: PathBuf,
    pub name: String,
    pub ami_name: NameTemplate,
    pub ami_description: Option<String>,
    pub manifest_path: PathBuf,
    /// Where the run is also written in Packer's manifest format, if anywhere (`packer_manifest`).
    pub packer_manifest_path: Option<PathBuf>,
    /// An image whose tests failed stays (tagged `fleetbake:test=failed`) instead of being deregistered.
    pub keep_failed_images: bool,
    /// The fleet's own tags (`[fleet] tags`).
    pub tags: Tags,
    pub flavors: Vec<Flavor>,
    /// Build region → the regions its images are copied to, in name order.
    pub regions: BTreeMap<Region, Vec<Region>>,
    pub matrix: Matrix,
    pub aws: AwsSettings,
    pub ssh: SshSettings,
    pub limits: Limits,
    /// The simulated cloud's model (`[sim]`); used only by `--cloud sim`.
    pub sim: SimSettings,
    /// What `fleetbake gc` keeps (`[retention]`).
    pub retention: Retention,
    /// `None`: images are encrypted only if their source was.
    pub encryption: Option<Encryption>,
    pub sharing: Sharing,
    /// `[publish]`: where the new ids are written for deploys.
    pub publish: Option<Publish>,
    /// Images are deprecated this long after they are made (`[fleet] deprecate_after`).
    pub deprecate_after: Option<Duration>,
    /// `--only` / `--except` of this run (not in the file): which of the matrix's builds it makes.
    pub selection: Selection,
    /// `[variables]` with the values this run gave them (already in every field that uses them).
    pub variables: Variables,
    /// `[[distribution]]`: copies into other accounts, each owned by its account.
    pub distributions: Distributions,
    /// `[prices]`: hourly prices per instance type, for the run's cost estimate.
    pub prices: Prices,
}

#[derive(Clone, Debug)]
pub struct Retention {
    /// Images kept per flavor and region; `None`: gc deregisters no image.
    pub keep: Option<usize>,
    /// Whether gc may deregister an image shared with other accounts (`[retention] shared = "deregister"`).
    pub deregister_shared: bool,
    /// `keep_days`: images younger than this many days are kept whatever `keep` says.
    pub keep_days: Option<u32>,
    /// `logs`: how long a run's saved failure logs are kept.
    pub logs: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keep: None, deregister_shared: false, keep_days: None, logs: DEFAULT_LOGS_RETENTION }
    }
}

#[derive(Clone, Debug)]
pub struct Flavor {
    pub name: FlavorName,
    pub source_ami: SourceAmi,
    pub instance_type: String,
    pub ssh_username: String,
    /// Where the build instance is launched; `None`: the region's default VPC.
    pub subnet: Option<SubnetChoice>,
    pub associate_public_ip: Option<bool>,
    /// The defaults' tags overlaid with the flavor's own.
    pub tags: Tags,
    pub provisioners: Vec<ProvisionerEntry>,
    /// Run over SSH on an instance launched from the new image; only an image that passes spreads.
    pub tests: Vec<ProvisionerEntry>,
    /// How long this flavor's provisioning takes in the simulated cloud (`sim_provision`).
    pub sim_provision: Option<Duration>,
    /// How its instances' SSH host keys are known (`host_key`, else `[ssh] host_key`).
    pub host_key: HostKeyPolicy,
    /// How its instances are reached (`interface`, else `[ssh] interface`).
    pub interface: SshInterface,
    /// The build instance's metadata service options.
    pub metadata: Metadata,
    /// The build instance's root volume; `None`: as the source image has it.
    pub root_volume: Option<RootVolume>,
    /// The instance profile, by name.
    pub iam_instance_profile: Option<String>,
    /// The user data (`user_data`, or the contents of `user_data_file`, byte for byte).
    pub user_data: Option<UserData>,
    /// Tags on the build instance and its volumes, besides fleetbake's.
    pub run_tags: Tags,
    /// Its fields that use a sensitive variable, with `{var.name}` in place of the value: what the fingerprint
    /// hashes instead, so a rotated secret does not rebuild the image.
    pub without_secrets: WithoutSecrets,
    /// `on_failure` and `collect`: what a failed build saves before teardown.
    pub forensics: Forensics,
    /// `market`: on-demand or spot.
    pub market: Market,
    /// `instance_types` (else `[instance_type]`), tried in order; the first is `instance_type`.
    pub instance_types: Vec<String>,
    /// `spot_fallback`: what a spot build does when no spot capacity is found.
    pub spot_fallback: SpotFallback,
}

/// A flavor's provisioner `env` values and user data that use a sensitive variable, as written (each
/// `{var.name}` of a sensitive variable left in); empty when it uses none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WithoutSecrets {
    /// (provisioner index, env name) → the value without its secrets.
    pub provisioner_env: BTreeMap<(usize, String), String>,
    pub user_data: Option<String>,
}

/// The instance metadata service of the build instance, and what the images require.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// IMDSv2 only (`http_tokens = "required"`, the default); the images then require it too.
    pub tokens_required: bool,
    /// The PUT response hop limit; `None`: EC2's default.
    pub hop_limit: Option<u8>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata { tokens_required: true, hop_limit: None }
    }
}

/// The build instance's root volume (what is unset stays as the source image has it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RootVolume {
    pub size_gb: Option<u32>,
    pub volume_type: Option<String>,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
}

/// `[encryption]`: every image encrypted with a KMS key of its region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encryption {
    pub kms_keys: BTreeMap<Region, String>,
    /// `"*"`: the key of any region not listed.
    pub fallback: Option<String>,
}

impl Encryption {
    /// The key images in `region` are encrypted with.
    pub fn key_for(&self, region: &Region) -> Option<&str> {
        self.kms_keys.get(region).or(self.fallback.as_ref()).map(String::as_str)
    }
}

/// `[sharing]`: who may launch the images, and create volumes from their snapshots. Also what the manifest
/// says an image was shared with (empty lists left out).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Sharing {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub organizations: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub organizational_units: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub snapshot_accounts: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

impl Sharing {
    /// Whether the images are shared at all.
    pub fn any(&self) -> bool {
        self.public
            || !self.accounts.is_empty()
            || !self.organizations.is_empty()
            || !self.organizational_units.is_empty()
            || !self.snapshot_accounts.is_empty()
    }
}

/// `[publish]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    /// An SSM parameter name template (`{fleet}`, `{flavor}`), written in every region the image lands in.
    pub ssm_parameter: Option<String>,
    /// A launch template name template: a new version with the image id, made the default.
    pub launch_template: Option<String>,
    pub when: PublishWhen,
    /// Which `[[distribution]]` accounts' copies are published too, in their own account.
    pub accounts: PublishAccounts,
}

/// `[publish] accounts`: whose copies are published besides the own account's images (always published).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PublishAccounts {
    /// Only the own account's images (the default).
    #[default]
    None,
    /// Every `[[distribution]]` account's copies, each in its account (`accounts = true`).
    All,
    /// These accounts' copies (each named by a `[[distribution]]`).
    Listed(Vec<String>),
}

impl PublishAccounts {
    /// Whether an image in `account` is published: the own account's always.
    pub fn covers(&self, account: &Account) -> bool {
        match (account, self) {
            (Account::Own, _) => true,
            (Account::Id(_), PublishAccounts::None) => false,
            (Account::Id(_), PublishAccounts::All) => true,
            (Account::Id(id), PublishAccounts::Listed(ids)) => ids.contains(id),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishWhen {
    /// A flavor is published only once all its jobs succeeded (at the end of the run).
    FlavorComplete,
    /// Each image as soon as it is tested and shared.
    Each,
}

#[cfg(test)]
mod publish_accounts_tests {
    use super::*;

    #[test]
    fn the_own_account_is_always_published_and_another_as_the_key_says() {
        let other = Account::Id("222233334444".into());
        assert!(PublishAccounts::None.covers(&Account::Own));
        assert!(!PublishAccounts::None.covers(&other));
        assert!(PublishAccounts::All.covers(&other));
        assert!(PublishAccounts::Listed(vec!["222233334444".into()]).covers(&other));
        assert!(!PublishAccounts::Listed(vec!["555566667777".into()]).covers(&other));
    }
}

impl Publish {
    /// A template with the fleet and flavor filled in.
    pub fn render(template: &str, fleet: &str, flavor: &FlavorName) -> String {
        template.replace("{fleet}", fleet).replace("{flavor}", flavor.as_str())
    }
}

/// The aliases of AWS-managed keys (`alias/aws/ebs`): images encrypted with one cannot be shared.
pub const AWS_MANAGED_KEY_ALIASES: &str = "alias/aws/";

/// Which subnet a build launches into, in its build region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubnetChoice {
    /// `subnet_id`: one subnet (a subnet belongs to one region: only for a fleet with one build region).
    Id(String),
    /// `subnet = { ids = { region = "subnet-…" } }`: one subnet per build region.
    PerRegion(BTreeMap<Region, String>),
    /// `subnet = { tags = { … } }`: in each build region, the subnets carrying all these tags (the one with the
    /// most free addresses first; the others, in other zones first, when a zone has no capacity).
    Tagged(Tags),
}

impl SubnetChoice {
    /// The subnet ids this choice names in `region`, or the tags to look them up by.
    pub fn in_region(&self, region: &Region) -> SubnetLookup {
        match self {
            SubnetChoice::Id(id) => SubnetLookup::Ids(vec![id.clone()]),
            SubnetChoice::PerRegion(ids) => SubnetLookup::Ids(ids.get(region).cloned().into_iter().collect()),
            SubnetChoice::Tagged(tags) => SubnetLookup::Tagged(tags.clone()),
        }
    }
}

/// How a region's subnets for a build are found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubnetLookup {
    Ids(Vec<String>),
    Tagged(Tags),
}

/// Where a build's source image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceAmi {
    Id(String),
    /// The newest image matching this, looked up in each build region.
    Filter(ImageFilter),
    /// `{ flavor = "base" }`: the image this run makes (or reuses) of another flavor of the fleet, in the region
    /// the build runs in (the plan waits for it, `plan::BuildSource::ImageOf`); built alone (`--only`), that
    /// flavor's image in the manifest, else its newest tagged image there.
    Flavor(FlavorName),
    /// The image id this SSM parameter holds, read in each build region (GetParameter): AWS's public
    /// `/aws/service/…` parameters name each region's own image.
    SsmParameter(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFilter {
    pub owners: Vec<String>,
    pub name_pattern: String,
    pub architecture: Option<String>,
}

/// One entry of a flavor's `provisioners` or `tests`: what runs, and how long it may run before its job fails
/// (its `timeout`, else the flavor's or `[defaults]` `provisioner_timeout`, else [`DEFAULT_PROVISIONER_TIMEOUT`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionerEntry {
    pub provisioner: Provisioner,
    pub timeout: Duration,
    /// `expect_disconnect = true` (shell only): the connection dropping while it runs (a reboot) is its
    /// success, and the next provisioner connects again.
    pub expect_disconnect: bool,
}

/// How long a provisioner or a test may run when the fleet file does not say.
pub const DEFAULT_PROVISIONER_TIMEOUT: Duration = Duration::from_secs(2 * 60 * 60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provisioner {
    /// Upload a local file.
    File { source: PathBuf, destination: String },
    /// Run a shell script (a local file, or inline lines run with `/bin/sh -e`).
    Shell { script: ShellScript, env: BTreeMap<String, String> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShellScript {
    File(PathBuf),
    Inline(Vec<String>),
}

/// Which flavor × build region pairs are built.
#[derive(Clone, Debug, Default)]
pub struct Matrix {
    /// `None`: every flavor.
    pub flavors: Option<Vec<FlavorName>>,
    pub exclude: Vec<Exclusion>,
    /// `rebuild = "changed"` (or `--changed-only`): reuse an image whose fingerprint matches.
    pub changed_only: bool,
    /// `keep_failed` (or `--keep-failed`): a failed build's instance is kept this long.
    pub keep_failed: Option<KeepFailed>,
    /// `keep_failed_state`: how a kept instance is left (also with `--keep-failed` and no `keep_failed`).
    pub keep_failed_state: KeptState,
}

#[derive(Clone, Debug)]
pub struct Exclusion {
    pub flavor: Option<FlavorName>,
    pub region: Option<Region>,
}

impl Exclusion {
    pub fn matches(&self, flavor: &FlavorName, region: &Region) -> bool {
        self.flavor.as_ref().is_none_or(|f| f == flavor) && self.region.as_ref().is_none_or(|r| r == region)
    }
}

#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
    /// Act as this role (STS AssumeRole on top of the standard chain), if set.
    pub role: Option<AssumeRole>,
    /// `[[distribution]]`: the role assumed in each destination account (account id → role ARN), with the
    /// run's own credentials (after `role`, if set).
    pub distribution_roles: BTreeMap<String, String>,
}

/// `[aws] role_arn` and its companions: the build account's role the run acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssumeRole {
    pub arn: String,
    pub external_id: Option<String>,
    /// `None`: `fleetbake-<run id>`.
    pub session_name: Option<String>,
    /// How long each session lasts; it is renewed before it ends, for as long as the run lasts.
    pub duration: Duration,
}

/// How SSH reaches the instance: which of its addresses it connects to, or no address at all (Session
/// Manager: ssh through an SSM session, the security group with no inbound rule).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SshInterface {
    /// The public IP if it has one, else the private IP.
    #[default]
    Default,
    PublicIp,
    PrivateIp,
    PublicDns,
    PrivateDns,
    /// `session_manager`: through the instance's SSM agent (`AWS-StartSSHSession`), no inbound port.
    SessionManager,
}

impl SshInterface {
    /// Reached from inside the VPC (a runner in it, or a bastion): the security group admits the VPC.
    pub fn is_private(self) -> bool {
        matches!(self, SshInterface::PrivateIp | SshInterface::PrivateDns)
    }

    /// Reached through Session Manager: no inbound rule, no address of the instance.
    pub fn is_session_manager(self) -> bool {
        self == SshInterface::SessionManager
    }

    /// The way in, as `fleetbake plan`, the events and the manifest name it: `ssh` or `session_manager`.
    pub fn way_in(self) -> &'static str {
        if self.is_session_manager() {
            "session_manager"
        } else {
            "ssh"
        }
    }
}

/// What `[ssh] session_manager_plugin` says, else the name looked up on `PATH`.
pub const SESSION_MANAGER_PLUGIN: &str = "session-manager-plugin";

/// A jump host SSH goes through (`[ssh] bastion`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bastion {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub private_key_file: PathBuf,
    /// What the bastion's host key is checked against (strictly: never learned, never written).
    pub host_key: BastionHostKey,
}

/// Where the bastion's host key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BastionHostKey {
    /// `known_hosts = "…"`: a known_hosts file, read only.
    KnownHostsFile(PathBuf),
    /// `host_key = "…"`: one known_hosts line (`bastion.example.com ssh-ed25519 AAAA…`), or a key alone
    /// (`ssh-ed25519 AAAA…`) for the bastion's `host` and `port`; as written, checked.
    Line(String),
}

/// How an instance's SSH host key is known (`[ssh] host_key`, a flavor's `host_key`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Read from the instance's console (cloud-init prints its keys there), then checked strictly.
    #[default]
    Console,
    /// Any key is accepted: for images that print no keys. Whoever answers on the address is trusted.
    Accept,
}

#[derive(Clone, Debug)]
pub struct SshSettings {
    /// Connect here instead of the instance's public (or private) address.
    pub host: Option<String>,
    pub port: u16,
    pub timeout: Duration,
    /// Who the security group lets in on `port`; `None`: the VPC's CIDR blocks for a private interface or a
    /// bastion, else this machine's public address (detected).
    pub source_cidrs: Option<Vec<IpNet>>,
    pub ip_detect_url: String,
    pub interface: SshInterface,
    pub bastion: Option<Bastion>,
    /// Remove the build key's line from the SSH user's `~/.ssh/authorized_keys` before the instance stops
    /// (default `true`); `false` leaves it in the image.
    pub clear_authorized_keys: bool,
    /// The flavors' default (`[ssh] host_key`).
    pub host_key: HostKeyPolicy,
    /// How long a build waits for the host keys on its instance's console (`[ssh] host_key_wait`).
    pub host_key_wait: Duration,
    /// The `session-manager-plugin` binary: a path, or a name looked up on `PATH` (the default
    /// [`SESSION_MANAGER_PLUGIN`]).
    pub session_manager_plugin: PathBuf,
    /// `[ssh] source_security_groups`: per build region, the groups (`sg-…`) whose members the temporary
    /// group also admits (a runner or bastion in a peered VPC, by the group it runs in).
    pub source_security_groups: BTreeMap<Region, Vec<String>>,
    /// `[ssh] source_prefix_lists`: per build region, managed prefix lists (`pl-…`) the group also admits.
    pub source_prefix_lists: BTreeMap<Region, Vec<String>>,
}

impl SshSettings {
    /// Whether the builds are reached from inside their VPC (a private interface, or through a bastion).
    pub fn from_inside_the_vpc(&self) -> bool {
        self.interface.is_private() || self.bastion.is_some()
    }
}

impl Fleet {
    /// Whether some selected build is reached at an address from outside its VPC: only then is this machine's
    /// address detected (Session Manager builds need none: their security group has no inbound rule).
    pub fn needs_this_machines_address(&self) -> bool {
        !self.ssh.from_inside_the_vpc()
            && self.selected_pairs().iter().any(|(flavor, _)| !flavor.interface.is_session_manager())
    }

    /// Whether some selected build is reached through Session Manager (the preflight then checks the plugin).
    pub fn uses_session_manager(&self) -> bool {
        self.selected_pairs().iter().any(|(flavor, _)| flavor.interface.is_session_manager())
    }
}

pub const DEFAULT_IP_DETECT_URL: &str = "http://checkip.amazonaws.com/";

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub burst: u32,
    pub per_second: f64,
}

/// Per-region request buckets for EC2's action classes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ApiRates {
    pub non_mutating: Bucket,
    pub mutating: Bucket,
    pub run_instances: Bucket,
    pub copy_image: Bucket,
    pub create_tags: Bucket,
}

impl Default for ApiRates {
    /// EC2's documented default request-rate buckets.
    fn default() -> Self {
        ApiRates {
            non_mutating: Bucket { burst: 100, per_second: 20.0 },
            mutating: Bucket { burst: 50, per_second: 5.0 },
            run_instances: Bucket { burst: 5, per_second: 2.0 },
            copy_image: Bucket { burst: 100, per_second: 1.0 },
            create_tags: Bucket { burst: 100, per_second: 10.0 },
        }
    }
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_parallel_builds: usize,
    pub max_parallel_copies_per_region: usize,
    /// How long CreateImage or CopyImage may take to become available.
    pub image_timeout: Duration,
    /// How long a launch or a copy waits out EC2's capacity and quota answers (`InsufficientInstanceCapacity`,
    /// `VcpuLimitExceeded`, CopyImage's `ResourceLimitExceeded`, …) before its job fails.
    pub capacity_patience: Duration,
    pub api: ApiRates,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_parallel_builds: 8,
            max_parallel_copies_per_region: 50,
            image_timeout: Duration::from_secs(2 * 60 * 60),
            capacity_patience: Duration::from_secs(30 * 60),
            api: ApiRates::default(),
        }
    }
}

/// The simulated EC2 (`[sim]`): how long things take, how much they vary, what fails.
#[derive(Clone, Debug, PartialEq)]
pub struct SimSettings {
    pub seed: u64,
    /// ± fraction applied to every duration.
    pub jitter: f64,
    /// pending → running
    pub boot: Duration,
    /// running → SSH answers
    pub ssh_ready: Duration,
    /// A flavor's whole provisioning run, unless it sets `sim_provision`.
    pub provision: Duration,
    /// stopping → stopped
    pub stop: Duration,
    /// shutting-down → terminated
    pub terminate: Duration,
    /// CreateImage → available
    pub create_image: Duration,
    /// CopyImage → available in the destination
    pub copy_image: Duration,
    /// Concurrent CopyImage per destination region before EC2 answers ResourceLimitExceeded.
    pub copy_concurrency: usize,
    /// How long every API call takes to answer.
    pub api_latency: Duration,
    /// How long a new resource's id stays unknown to other calls (EC2's eventual consistency): key pairs,
    /// security groups, instances, images and snapshots.
    pub consistency_lag: Duration,
    /// Running vCPUs the account may have per region (instances count until terminated); `None`: unlimited.
    pub vcpu_limit: Option<u32>,
    /// vCPUs of every instance type.
    pub instance_vcpus: u32,
    /// Fraction of every EC2 request bucket's refill other tools of the account use (0 ≤ load < 1).
    pub background_load: f64,
    /// Copies other tools keep in flight into each region, counting against `copy_concurrency`.
    pub foreign_copies: usize,
    /// Whether every region has a default VPC.
    pub default_vpc: bool,
    /// How long a build's image tests take (`[[flavor]] tests`).
    pub test: Duration,
    /// running → the host keys printed on the console (cloud-init's block). Default 0: there as soon as EC2
    /// says running, so a build's first read finds them (a later appearance makes a run's timing depend on
    /// when its reads fall, which the paused clock does not keep exact).
    pub console_keys: Duration,
    /// running → the instance's SSM agent registered and online (DescribeInstanceInformation `Online`;
    /// StartSession answers `TargetNotConnected` until then). The agent starts at boot and registers within
    /// a minute or two of the instance running.
    pub agent_online: Duration,
    pub faults: Vec<SimFault>,
    /// `[sim] runner_address`: the address instances see SSH come from (the runner's: its public address for
    /// a public interface, its private one in a peered VPC). `None`: an address the group's rules admit.
    pub runner_address: Option<std::net::IpAddr>,
    /// `[sim] bastion_address`: the address they see SSH come from through `[ssh] bastion`. `None`: an address
    /// the rules admit.
    pub bastion_address: Option<std::net::IpAddr>,
    /// `[sim] runner_security_groups`: the groups the runner (and the bastion) run in; a rule naming one of
    /// them admits it.
    pub runner_security_groups: Vec<String>,
    /// `[sim] prefix_lists`: the account's managed prefix lists, id → CIDR blocks.
    pub prefix_lists: BTreeMap<String, Vec<IpNet>>,
    /// `[sim] require_tags_on_create`: CreateImage and CopyImage that do not tag the image and its snapshots
    /// at creation are refused with `UnauthorizedOperation`, as an SCP requiring tags on create does.
    pub require_tags_on_create: bool,
    /// `[sim] snapshot_in_use`: how long a deregistered image's snapshot stays in use (DeleteSnapshot answers
    /// `InvalidSnapshot.InUse`).
    pub snapshot_in_use: Duration,
    /// The launch templates every region has (the account's deploy tooling made them): a `[publish]
    /// launch_template` not among them is `InvalidLaunchTemplateName.NotFoundException`.
    pub launch_templates: Vec<String>,
    /// SSM parameters every region has before the run, with their data type (one version each).
    pub parameters: Vec<ExistingParameter>,
    /// Block public access for AMIs per region (on by default, as in a new account): public sharing refused.
    pub block_public_access: BlockPublicAccess,
    /// `[sim] credentials`: `None`, they never expire (long-term keys).
    pub credentials: Option<SimCredentials>,
    /// Who the credentials are before `[aws] role_arn` is assumed.
    pub base_identity: BaseIdentity,
    /// Opt-in regions the simulated account has not enabled: EC2 there answers `AuthFailure`, and
    /// DescribeRegions says `not-opted-in`.
    pub regions_not_enabled: BTreeSet<Region>,
    /// `[sim] accounts`: the accounts that exist besides the simulated own account; a place of any other
    /// account cannot be reached (its role cannot be assumed).
    pub accounts: BTreeSet<String>,
    /// `[sim] account_faults`: what goes wrong in each of those accounts.
    pub account_faults: BTreeMap<String, AccountFault>,
    /// `[sim] organizational_units`: each unit's members (account ids, or child `ou-…` units), what AWS
    /// Organizations answers for it; a unit not listed answers `ParentNotFoundException`.
    pub organizational_units: BTreeMap<String, Vec<String>>,
    /// `[sim] organizations_fault`: AWS Organizations refuses every call of the run.
    pub organizations_fault: Option<OrganizationsFault>,
    /// `[sim] ebs_default_key`: EBS encryption by default, with this key (`alias/aws/ebs`, or the account's
    /// customer managed default): a volume launched without a key is encrypted with it, and so its image.
    /// `None`: off (volumes without a key are unencrypted).
    pub ebs_default_key: Option<String>,
    /// `[sim] grant_lag`: how long a new KMS grant takes to be usable everywhere (KMS's eventual consistency):
    /// another account's CopyImage needing it is refused until then.
    pub grant_lag: Duration,
    /// `[sim] spot`: spot capacity and interruptions.
    pub spot: SimSpot,
    /// `[sim] prices`: the prices a simulated run's cost estimate reads when the fleet has no `[prices]`.
    pub prices: Prices,
    /// `[sim] state`: the file the simulated account is kept in between runs (absolute; `None`: every run
    /// starts from an empty account and the account ends with its process).
    pub state: Option<std::path::PathBuf>,
}

/// The simulated own account's id (`cloud::sim::SIMULATED_ACCOUNT`): `[sim] accounts` lists only the others.
pub const SIMULATED_OWN_ACCOUNT: &str = "123456789012";

/// `[sim] account_faults`: what goes wrong in another simulated account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountFault {
    /// `"role"`: its role cannot be assumed (STS answers `AccessDenied`), so nothing in it can be reached.
    Role,
    /// `"key"`: its KMS keys cannot be used: DescribeKey says disabled, CopyImage encrypting with one is
    /// refused.
    Key,
}

/// `[sim] organizations_fault`: why AWS Organizations refuses the run's calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrganizationsFault {
    /// `"access-denied"`: the account is neither the management account nor a delegated administrator
    /// (`AccessDeniedException`).
    AccessDenied,
    /// `"not-in-use"`: the account is in no organization (`AWSOrganizationsNotInUseException`).
    NotInUse,
}

/// `[sim] parameters`: an SSM parameter that exists before the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExistingParameter {
    pub name: String,
    /// `text`, `aws:ec2:image` or `aws:ssm:integration`: fixed at creation.
    pub data_type: String,
}

/// `[sim] block_public_access = { default = true, "us-east-1" = false }`: whether each region refuses to make
/// images public (GetImageBlockPublicAccessState `block-new-sharing`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockPublicAccess {
    /// Regions not listed.
    pub default: bool,
    pub regions: BTreeMap<Region, bool>,
}

impl Default for BlockPublicAccess {
    /// On everywhere: new AWS accounts have it on.
    fn default() -> Self {
        BlockPublicAccess { default: true, regions: BTreeMap::new() }
    }
}

impl BlockPublicAccess {
    pub fn blocks(&self, region: &Region) -> bool {
        self.regions.get(region).copied().unwrap_or(self.default)
    }
}

/// `[sim] credentials`: the simulated credentials end `expires_after` the account is made; `refreshable`
/// ones are renewed by their provider (a role, SSO, web identity), static ones answer `ExpiredToken` after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimCredentials {
    pub expires_after: Duration,
    pub refreshable: bool,
}

/// `[sim] base_identity`: an IAM user's keys, or a role's session (then assuming `[aws] role_arn` is role
/// chaining, capped at 1 hour).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BaseIdentity {
    #[default]
    User,
    Role,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            seed: 1,
            jitter: 0.0,
            boot: Duration::from_secs(60),
            ssh_ready: Duration::from_secs(30),
            provision: Duration::from_secs(5 * 60),
            stop: Duration::from_secs(30),
            terminate: Duration::from_secs(30),
            create_image: Duration::from_secs(7 * 60),
            copy_image: Duration::from_secs(15 * 60),
            copy_concurrency: 50,
            api_latency: Duration::from_millis(80),
            consistency_lag: Duration::from_secs(3),
            vcpu_limit: None,
            instance_vcpus: 2,
            background_load: 0.0,
            foreign_copies: 0,
            default_vpc: true,
            test: Duration::from_secs(180),
            console_keys: Duration::ZERO,
            agent_online: Duration::from_secs(90),
            faults: Vec::new(),
            runner_address: None,
            bastion_address: None,
            runner_security_groups: Vec::new(),
            prefix_lists: BTreeMap::new(),
            require_tags_on_create: false,
            snapshot_in_use: Duration::ZERO,
            launch_templates: Vec::new(),
            parameters: Vec::new(),
            block_public_access: BlockPublicAccess::default(),
            credentials: None,
            base_identity: BaseIdentity::User,
            regions_not_enabled: BTreeSet::new(),
            accounts: BTreeSet::new(),
            account_faults: BTreeMap::new(),
            organizational_units: BTreeMap::new(),
            organizations_fault: None,
            ebs_default_key: None,
            grant_lag: Duration::ZERO,
            spot: SimSpot::default(),
            prices: Prices::default(),
            state: None,
        }
    }
}

/// Something the simulated EC2 does wrong on purpose: an error instead of what was asked, or a resource that
/// ends badly.
#[derive(Clone, Debug, PartialEq)]
pub struct SimFault {
    /// The action it hits; `None` for `"*"`, every action.
    pub action: Option<api::Action>,
    /// Only in this region, if set.
    pub region: Option<Region>,
    pub effect: FaultEffect,
    pub when: FaultTrigger,
    /// The call takes effect and then its answer is lost: the client sees `error` (a retry must not make the
    /// thing twice).
    pub answer_lost: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FaultEffect {
    /// The call is answered with this AWS error code, e.g. `InternalError`, `RequestLimitExceeded`,
    /// `InsufficientInstanceCapacity`.
    Error(String),
    /// The call succeeds, and the image it makes (CreateImage, CopyImage) ends `failed` with this reason.
    ImageFails { reason: String },
    /// The call succeeds, and the instance it launches goes from pending to terminated with this reason.
    InstanceTerminates { reason: String },
    /// Not a call: a build's image tests fail (`action = "test"`).
    TestFails,
    /// Not a call: a build's first provisioner fails (`action = "provision"`).
    ProvisionFails,
    /// The call succeeds (RunInstances), and the instance's console and sshd misbehave (`console = "…"`); only
    /// for instances of `flavor`, if set.
    Console { fault: ConsoleFault, flavor: Option<FlavorName> },
    /// The call succeeds (RunInstances), and the instance's SSM agent misbehaves (`agent = "…"`); only for
    /// instances of `flavor`, if set.
    Agent { fault: AgentFault, flavor: Option<FlavorName> },
    /// The call succeeds (PutParameter answers a version), and SSM's asynchronous validation of the image id
    /// then fails: the version never appears (`validation = "fails"`).
    ValidationFails,
}

/// What a simulated instance's SSM agent does wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentFault {
    /// `"never"`: it never comes online (no instance profile, no route to the SSM endpoints).
    Never,
}

/// What a simulated instance's console shows instead of its host keys, or who answers on its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleFault {
    /// `"no-keys"`: the image prints no host keys (some hardened images).
    NoKeys,
    /// `"other-key"`: the console has the instance's keys, but another machine answers on its address.
    OtherKey,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultTrigger {
    /// The nth matching call of the run (1-based).
    Nth(u64),
    /// Each matching call, with this probability (drawn from the seeded generator).
    Probability(f64),
}

/// One problem in a fleet file (or a file it names), located in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else if self.key.is_empty() {
            write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
        } else {
            write!(f, "{}:{}:{}: `{}`: {}", self.file.display(), self.line, self.column, self.key, self.message)
        }
    }
}

/// Every problem found in a fleet file; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, error) in self.0.iter().enumerate() {
            if position > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and checks a fleet file. Reads only local files.
pub fn load(path: &Path) -> Result<Fleet, ConfigErrors> {
    load_with(path, &VariableInputs::default())
}

/// [`load`] with values for `[variables]` (`--var`, `--var-file`, `FLEETBAKE_VAR_*`).
pub fn load_with(path: &Path, inputs: &VariableInputs) -> Result<Fleet, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the fleet file: {error}"),
        }])
    })?;
    parse_with(path, &text, inputs)
}

/// Parses and checks fleet-file text; `path` locates the files it names and labels errors.
pub fn parse(path: &Path, text: &str) -> Result<Fleet, ConfigErrors> {
    validate::parse(path, text, &VariableInputs::default())
}

/// [`parse`] with values for `[variables]`.
pub fn parse_with(path: &Path, text: &str, inputs: &VariableInputs) -> Result<Fleet, ConfigErrors> {
    validate::parse(path, text, inputs)
}
