//! The fleet.toml file as written: plain serde structs that reject unknown keys.
//!
//! Nothing here is validated beyond TOML types; [`super::validate`] turns these into the resolved [`super::Fleet`].

use std::collections::BTreeMap;

use serde::Deserialize;

pub type TagMap = BTreeMap<String, String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    pub fleet: FleetSection,
    #[serde(default)]
    pub defaults: DefaultsSection,
    #[serde(default, rename = "flavor")]
    pub flavors: Vec<FlavorSection>,
    #[serde(default)]
    pub regions: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub matrix: MatrixSection,
    #[serde(default)]
    pub aws: AwsSection,
    #[serde(default)]
    pub ssh: SshSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub sim: SimSection,
    #[serde(default)]
    pub retention: RetentionSection,
    pub encryption: Option<EncryptionSection>,
    pub sharing: Option<SharingSection>,
    pub publish: Option<PublishSection>,
    /// `[variables]`: name → a default (`build = "dev"`) or `{ default = "…", sensitive = true }` (the keys of
    /// [`VARIABLE_KEYS`]); checked in validation, so its messages can name the key.
    #[serde(default)]
    pub variables: BTreeMap<String, toml::Value>,
    /// `[[distribution]]`: copies owned by other accounts.
    #[serde(default, rename = "distribution")]
    pub distributions: Vec<DistributionSection>,
    /// `[prices]`: instance type → `{ on_demand = 0.0104, spot = 0.0031 }` (USD per hour), for the cost line.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceSection>,
}

/// The keys of a `[variables]` entry written as a table (`{ default = "…", sensitive = true, description = "…" }`):
/// the only ones validation takes, and what `config::keys::accepted_keys` lists under `variables`.
pub const VARIABLE_KEYS: &[&str] = &["default", "sensitive", "description"];

/// `[prices]` and `[sim] prices`: an instance type's hourly prices.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSection {
    pub on_demand: Option<f64>,
    pub spot: Option<f64>,
}

/// `[[distribution]]`: accounts (or `ou-…` units) that get their own copy in each of `regions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributionSection {
    pub accounts: Vec<String>,
    pub regions: Vec<String>,
    pub role_arn: String,
    #[serde(default)]
    pub kms_keys: BTreeMap<String, String>,
    #[serde(default)]
    pub flavors: Vec<String>,
}

/// `[encryption]`: every image encrypted, with a KMS key per region (`"*"`: any other region).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionSection {
    pub kms_keys: BTreeMap<String, String>,
}

/// `[publish]`: where deploy tools look for the new ids.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSection {
    pub ssm_parameter: Option<String>,
    pub launch_template: Option<String>,
    pub when: Option<String>,
    /// `true` (every `[[distribution]]` account) or a list of account ids: their copies are published in
    /// their account too.
    pub accounts: Option<PublishAccountsField>,
}

/// `[publish] accounts`: `true`/`false`, or account ids.
#[derive(Debug)]
pub enum PublishAccountsField {
    All(bool),
    Listed(Vec<String>),
}

/// By hand, for an error that says what the key takes (an untagged enum's names its variants).
impl<'de> Deserialize<'de> for PublishAccountsField {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Field;
        impl<'de> serde::de::Visitor<'de> for Field {
            type Value = PublishAccountsField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`true`, `false` or a list of account ids")
            }
            fn visit_bool<E: serde::de::Error>(self, all: bool) -> Result<Self::Value, E> {
                Ok(PublishAccountsField::All(all))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut ids = Vec::new();
                while let Some(id) = seq.next_element::<String>()? {
                    ids.push(id);
                }
                Ok(PublishAccountsField::Listed(ids))
            }
        }
        deserializer.deserialize_any(Field)
    }
}

/// `[sharing]`: who may launch the images (and create volumes from their snapshots).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharingSection {
    #[serde(default)]
    pub accounts: Vec<String>,
    #[serde(default)]
    pub organizations: Vec<String>,
    #[serde(default)]
    pub organizational_units: Vec<String>,
    #[serde(default)]
    pub snapshot_accounts: Vec<String>,
    pub public: Option<bool>,
}

/// `metadata = { http_tokens = "required", hop_limit = 2 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataSection {
    pub http_tokens: Option<String>,
    pub hop_limit: Option<u8>,
}

/// `root_volume = { size_gb = 30, type = "gp3", iops = 3000, throughput = 125 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootVolumeSection {
    pub size_gb: Option<u32>,
    #[serde(rename = "type")]
    pub volume_type: Option<String>,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
}

/// `[retention]`: what `fleetbake gc` keeps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    pub keep: Option<usize>,
    pub shared: Option<String>,
    /// Images newer than this many days are kept whatever `keep` says.
    pub keep_days: Option<u32>,
    /// How long saved failure logs are kept (a duration, default 14 days).
    pub logs: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    pub name: String,
    pub ami_name: Option<String>,
    pub ami_description: Option<String>,
    pub manifest: Option<String>,
    pub packer_manifest: Option<String>,
    pub keep_failed_images: Option<bool>,
    pub deprecate_after: Option<String>,
    #[serde(default)]
    pub tags: TagMap,
}

/// Keys every flavor inherits unless it sets them itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsSection {
    pub metadata: Option<MetadataSection>,
    pub root_volume: Option<RootVolumeSection>,
    pub iam_instance_profile: Option<String>,
    pub user_data: Option<String>,
    pub user_data_file: Option<String>,
    #[serde(default)]
    pub run_tags: TagMap,
    pub instance_type: Option<String>,
    pub ssh_username: Option<String>,
    pub subnet: Option<SubnetSection>,
    pub subnet_id: Option<String>,
    pub associate_public_ip: Option<bool>,
    #[serde(default)]
    pub tags: TagMap,
    /// How long each provisioner and each test may run unless it sets its own `timeout`.
    pub provisioner_timeout: Option<String>,
    /// Run on the instance when a provisioner or test fails, before teardown (a flavor's own replace these).
    pub on_failure: Option<Vec<ProvisionerSection>>,
    /// Files on the instance saved when a provisioner or test fails.
    pub collect: Option<Vec<String>>,
    /// `"on-demand"` (the default) or `"spot"`.
    pub market: Option<String>,
    /// Tried in order (instead of `instance_type`).
    pub instance_types: Option<Vec<String>>,
    /// `"on-demand"` (the default) or `"fail"`: when no spot capacity is found.
    pub spot_fallback: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlavorSection {
    pub name: String,
    pub source_ami: SourceAmiSection,
    pub metadata: Option<MetadataSection>,
    pub root_volume: Option<RootVolumeSection>,
    pub iam_instance_profile: Option<String>,
    pub user_data: Option<String>,
    pub user_data_file: Option<String>,
    #[serde(default)]
    pub run_tags: TagMap,
    pub instance_type: Option<String>,
    pub ssh_username: Option<String>,
    pub subnet: Option<SubnetSection>,
    pub subnet_id: Option<String>,
    pub associate_public_ip: Option<bool>,
    #[serde(default)]
    pub tags: TagMap,
    #[serde(default)]
    pub provisioners: Vec<ProvisionerSection>,
    /// Run on an instance launched from the new image, before it is copied, shared or published.
    #[serde(default)]
    pub tests: Vec<ProvisionerSection>,
    /// How long each of its provisioners and tests may run unless it sets its own `timeout`.
    pub provisioner_timeout: Option<String>,
    pub sim_provision: Option<String>,
    /// `"console"` or `"accept"`: how this flavor's instances' host keys are known (default `[ssh] host_key`).
    pub host_key: Option<String>,
    /// How this flavor's instances are reached (default `[ssh] interface`): `"session_manager"`, or an address.
    pub interface: Option<String>,
    /// Run on the instance when a provisioner or test fails, before teardown; output saved.
    pub on_failure: Option<Vec<ProvisionerSection>>,
    /// Files on the instance saved when a provisioner or test fails.
    pub collect: Option<Vec<String>>,
    /// `"on-demand"` (the default) or `"spot"`.
    pub market: Option<String>,
    /// Tried in order (instead of `instance_type`).
    pub instance_types: Option<Vec<String>>,
    /// `"on-demand"` (the default) or `"fail"`: when no spot capacity is found.
    pub spot_fallback: Option<String>,
}

/// `{ tags = { Tier = "build" } }` or `{ ids = { us-west-2 = "subnet-…" } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetSection {
    pub tags: Option<TagMap>,
    pub ids: Option<BTreeMap<String, String>>,
}

/// `{ id = "ami-…" }`, `{ owners = [...], name = "pattern" }`, `{ ssm_parameter = "/name" }` or `{ flavor = "base" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAmiSection {
    pub id: Option<String>,
    pub owners: Option<Vec<String>>,
    pub name: Option<String>,
    pub architecture: Option<String>,
    /// Another flavor of this fleet: built from the image it makes (or reuses) in this run.
    pub flavor: Option<String>,
    /// `{ ssm_parameter = "/aws/service/…" }`: the image id an SSM parameter holds, read in each build region.
    pub ssm_parameter: Option<String>,
}

/// One provisioner; which keys are allowed depends on `type`, checked in validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionerSection {
    #[serde(rename = "type")]
    pub kind: String,
    pub source: Option<String>,
    pub destination: Option<String>,
    pub script: Option<String>,
    pub inline: Option<Vec<String>>,
    pub env: Option<BTreeMap<String, String>>,
    /// How long it may run (a duration such as `30m`).
    pub timeout: Option<String>,
    /// A shell provisioner that reboots the instance: its connection dropping counts as success.
    pub expect_disconnect: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixSection {
    pub flavors: Option<Vec<String>>,
    /// `"always"` (the default) or `"changed"` (as `--changed-only`).
    pub rebuild: Option<String>,
    #[serde(default)]
    pub exclude: Vec<ExcludeSection>,
    /// Keep a failed build's instance this long (a duration; `--keep-failed` overrides).
    pub keep_failed: Option<String>,
    /// `"running"` (the default) or `"stopped"`.
    pub keep_failed_state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExcludeSection {
    pub flavor: Option<String>,
    pub region: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSection {
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub session_name: Option<String>,
    pub duration: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub timeout: Option<String>,
    pub source_cidrs: Option<Vec<String>>,
    pub ip_detect_url: Option<String>,
    pub interface: Option<String>,
    pub bastion: Option<BastionSection>,
    pub clear_authorized_keys: Option<bool>,
    /// `"console"` (the default) or `"accept"`; a flavor may set its own.
    pub host_key: Option<String>,
    pub host_key_wait: Option<String>,
    /// The `session-manager-plugin` binary (`interface = "session_manager"`); default: found on `PATH`.
    pub session_manager_plugin: Option<String>,
    /// Per region: security groups (`sg-…`) whose members the temporary group also admits on `port`.
    pub source_security_groups: Option<BTreeMap<String, Vec<String>>>,
    /// Per region: managed prefix lists (`pl-…`) whose entries the temporary group also admits on `port`.
    pub source_prefix_lists: Option<BTreeMap<String, Vec<String>>>,
}

/// `[ssh] bastion = { host = "…", port = 22, user = "…", private_key_file = "…", known_hosts = "…" }` (or
/// `host_key = "<known_hosts line>"` instead of `known_hosts`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BastionSection {
    pub host: String,
    pub port: Option<u16>,
    pub user: String,
    pub private_key_file: String,
    pub known_hosts: Option<String>,
    pub host_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_parallel_builds: Option<usize>,
    pub max_parallel_copies_per_region: Option<usize>,
    pub image_timeout: Option<String>,
    pub capacity_patience: Option<String>,
    #[serde(default)]
    pub api: ApiRatesSection,
}

/// Per-region request buckets, one per EC2 action class.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiRatesSection {
    pub non_mutating: Option<BucketSection>,
    pub mutating: Option<BucketSection>,
    pub run_instances: Option<BucketSection>,
    pub copy_image: Option<BucketSection>,
    pub create_tags: Option<BucketSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSection {
    pub burst: u32,
    pub per_second: f64,
}

/// `[sim]`: the simulated cloud's durations, jitter and faults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSection {
    pub seed: Option<u64>,
    pub jitter: Option<f64>,
    pub boot: Option<String>,
    pub ssh_ready: Option<String>,
    pub provision: Option<String>,
    pub stop: Option<String>,
    pub terminate: Option<String>,
    pub create_image: Option<String>,
    pub copy_image: Option<String>,
    pub copy_concurrency: Option<usize>,
    pub api_latency: Option<String>,
    pub consistency_lag: Option<String>,
    pub vcpu_limit: Option<u32>,
    pub instance_vcpus: Option<u32>,
    pub background_load: Option<f64>,
    pub foreign_copies: Option<usize>,
    pub default_vpc: Option<bool>,
    pub test: Option<String>,
    /// running → the host keys on the console.
    pub console_keys: Option<String>,
    /// running → the instance's SSM agent online (Session Manager).
    pub agent_online: Option<String>,
    #[serde(default)]
    pub faults: Vec<FaultSection>,
    /// The address the simulated instances see SSH come from (the runner's).
    pub runner_address: Option<String>,
    /// The address they see SSH come from through `[ssh] bastion` (the bastion's).
    pub bastion_address: Option<String>,
    /// The security groups the runner (and the bastion) run in.
    pub runner_security_groups: Option<Vec<String>>,
    /// Managed prefix lists the account has: id → CIDR blocks.
    pub prefix_lists: Option<BTreeMap<String, Vec<String>>>,
    /// CreateImage and CopyImage without tags for the image and its snapshots are refused (as an SCP would).
    pub require_tags_on_create: Option<bool>,
    /// How long a deregistered image's snapshot stays in use (`InvalidSnapshot.InUse`).
    pub snapshot_in_use: Option<String>,
    /// The launch templates every region has.
    #[serde(default)]
    pub launch_templates: Vec<String>,
    /// SSM parameters every region has before the run.
    #[serde(default)]
    pub parameters: Vec<ParameterSection>,
    /// `{ default = true, "us-east-1" = false }`: block public access for AMIs per region.
    pub block_public_access: Option<BTreeMap<String, bool>>,
    /// The credentials the run signs with: `{ expires_after = "3h", refreshable = false }`.
    pub credentials: Option<SimCredentialsSection>,
    /// Who the credentials are before `[aws] role_arn` is assumed: `"user"` (the default) or `"role"`.
    pub base_identity: Option<String>,
    /// Regions the simulated account has not enabled (opt-in regions): EC2 there answers `AuthFailure`.
    pub regions_not_enabled: Option<Vec<String>>,
    /// The accounts that exist besides the simulated own account (`[[distribution]]` destinations).
    pub accounts: Option<Vec<String>>,
    /// What goes wrong in an account: `{ "555566667777" = "role" }` (its role cannot be assumed) or `"key"`
    /// (its KMS keys cannot be used).
    pub account_faults: Option<BTreeMap<String, String>>,
    /// Organizational units: `{ "ou-ab12-cd34ef56" = ["222233334444", "ou-ab12-11112222"] }` (member accounts
    /// and child units), resolved by the preflight for `[[distribution]] accounts`.
    pub organizational_units: Option<BTreeMap<String, Vec<String>>>,
    /// AWS Organizations refuses the run: `"access-denied"` or `"not-in-use"`.
    pub organizations_fault: Option<String>,
    /// EBS encryption by default with this key (`alias/aws/ebs`, or a customer managed key): volumes launched
    /// without a key, and so their images, are encrypted with it.
    pub ebs_default_key: Option<String>,
    /// How long a new KMS grant takes to be usable by another account's CopyImage.
    pub grant_lag: Option<String>,
    /// Spot capacity: `{ available = ["t3.micro", "m5.large@us-east-1"], interrupt_after = "5m" }`.
    pub spot: Option<SimSpotSection>,
    /// The simulated prices (as `[prices]`), used when the fleet gives none.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceSection>,
    /// A file the simulated account is kept in between runs (relative to the fleet file).
    pub state: Option<String>,
}

/// `[sim] spot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimSpotSection {
    pub available: Option<Vec<String>>,
    pub interrupt_after: Option<String>,
}

/// `[sim] parameters = [{ name, data_type }]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterSection {
    pub name: String,
    pub data_type: String,
}

/// `[sim] credentials`: when the simulated credentials expire, and whether their provider renews them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimCredentialsSection {
    pub expires_after: String,
    pub refreshable: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSection {
    pub action: String,
    pub error: Option<String>,
    pub image_state: Option<String>,
    pub instance_state: Option<String>,
    pub reason: Option<String>,
    pub region: Option<String>,
    pub nth: Option<u64>,
    pub probability: Option<f64>,
    pub answer_lost: Option<bool>,
    /// With `RunInstances`: what the instance's console shows (`"no-keys"`, `"other-key"`).
    pub console: Option<String>,
    /// With `RunInstances`: the instance's SSM agent (`"never"`: never comes online).
    pub agent: Option<String>,
    /// With `console` or `agent`: only instances of this flavor.
    pub flavor: Option<String>,
    /// With `PutParameter`: SSM's asynchronous validation of the image id (`"fails"`: the version never
    /// appears).
    pub validation: Option<String>,
}
