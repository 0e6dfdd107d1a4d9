//! The simulated EC2's state and rules: per region, images (pending → available, or failed), snapshots,
//! instances (pending → running → stopping → stopped, shutting-down → terminated, or pending → terminated),
//! key pairs, security groups and tags, behind EC2's request buckets (shared with the account's other tools:
//! `background_load`), the cap on concurrent copies into a region (filled partly by other tools:
//! `foreign_copies`), the running-vCPU quota, eventual consistency (`consistency_lag`), and the configured
//! faults.
//!
//! Where moto is lenient, this follows EC2's documentation (see the notes at each rule): a new id is unknown to
//! other calls for a while ("Eventual consistency in the Amazon EC2 API"); CreateTags on an unknown id answers
//! the NotFound code of its kind; RunInstances over the vCPU quota answers `VcpuLimitExceeded` (terminated
//! instances count until they are gone); CopyImage beyond the per-destination cap `ResourceLimitExceeded`.
//!
//! State changes are timestamps on Tokio's clock, read lazily: an instance launched at `t` is running from
//! `t + boot`. Nothing ticks; in paused time a night passes as fast as the run can ask about it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::time::Instant;

use self::admission::{sources_of, unknown_source, IngressSource};
use super::catalog::{self, PublicImage};
use crate::cloud::limiter::ClassBuckets;
use crate::cloud::{
    fnv1a, Action, CloudError, CloudResult, ConsoleOutput, CopySpec, ErrorKind, ImageBlockPublicAccess, ImageId,
    ImageOf, ImageQuery, ImageState, ImageStatus, ImageSummary, IngressSources, InstanceId, InstanceState,
    InstanceStatus, KeyPairName, KmsGrantId, KmsKey, LaunchPermissions, LaunchSpec, OwnedImage, ParameterHistory,
    PrivateKey, RegionCloud, RegionOptIn, SecurityGroupId, SessionId, SessionToken, SnapshotId, SnapshotKey,
    SsmSession, Subnet, SubnetId, Tagged, Vpc, VpcId, VpcLookup,
};
use crate::config::{
    Account, AgentFault, ApiRates, Bucket, ConsoleFault, FaultEffect, FaultTrigger, FlavorName, ImageFilter, Place,
    Region, SimFault, SimSettings, SubnetLookup, Tags,
};
use crate::util::host_keys::{console_block, ed25519_from_seed, HostKey};

pub mod account;
pub mod accounts;
pub mod kept;
pub mod persist;

/// Of a configured effect of one kind (a console or an agent fault): the fault, and the flavor it is limited to.
type PickLaunchFault<T> = fn(&FaultEffect) -> Option<(T, Option<&FlavorName>)>;

/// The whole simulated account.
pub struct Model {
    pub settings: SimSettings,
    /// EC2's own buckets (not the client's `[limits] api`, which may differ).
    rates: ApiRates,
    random: Mutex<fastrand::Rng>,
    /// Per configured fault, how many calls it has matched.
    fault_matches: Mutex<Vec<u64>>,
    /// Keyed by place: the simulated account is the run's own, so every place is one of its regions.
    regions: DashMap<Place, Arc<RegionModel>>,
    next_id: AtomicU64,
    /// Mixed into every id [`Model::id`] makes: 0 for an account of this process alone (its ids are the seed's),
    /// random for each opening of a `[sim] state` account, so an id made after a lost save (a process killed, the
    /// file deleted) or by another process is never one an earlier opening made.
    id_salt: AtomicU64,
    /// When the account was made: image creation dates count from here (see [`creation_date`]).
    started: Instant,
    /// What `started` is in wall time, for creation dates: 2026-01-01T00:00:00Z for an account made by this
    /// process, the account's own clock for one continued from `[sim] state` ([`persist`]).
    epoch: chrono::DateTime<chrono::Utc>,
    pub throttled: AtomicU64,
    pub faults_injected: AtomicU64,
    /// Its credentials, identity and enabled regions.
    pub account: account::SimAccount,
    /// The other accounts (`[sim] accounts`), who may reach them, and the AssumeRole calls made for them.
    pub accounts: accounts::SimAccounts,
    /// The account's wall time (its start advanced by Tokio's clock): what `fleetbake:keep-until` is read
    /// against ([`kept`]).
    pub wall: crate::util::clock::RunClock,
}

/// CreateImage's `NoReboot`, as the model reads it: `Yes` is `NoReboot = false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reboot {
    Yes,
    No,
}

/// Why the model refused a call: an AWS error code and message.
pub(in crate::cloud::sim) struct Refusal {
    pub(in crate::cloud::sim) code: String,
    pub(in crate::cloud::sim) message: String,
}

fn refuse<T>(code: &str, message: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal { code: code.to_string(), message: message.into() })
}

impl Model {
    pub fn new(settings: SimSettings) -> Arc<Self> {
        Model::starting(settings, None)
    }

    /// A new account, or (`continued_at`) one continued from `[sim] state` whose clock reads that time now.
    fn starting(settings: SimSettings, continued_at: Option<chrono::DateTime<chrono::Utc>>) -> Arc<Self> {
        let random = Mutex::new(fastrand::Rng::with_seed(settings.seed));
        let fault_matches = Mutex::new(vec![0; settings.faults.len()]);
        // The account's other tools take `background_load` of every bucket's refill; a bucket left alone still
        // fills up to its burst.
        let share = 1.0 - settings.background_load;
        let ours = |bucket: Bucket| Bucket { burst: bucket.burst, per_second: bucket.per_second * share };
        let ec2 = ApiRates::default();
        let rates = ApiRates {
            non_mutating: ours(ec2.non_mutating),
            mutating: ours(ec2.mutating),
            run_instances: ours(ec2.run_instances),
            copy_image: ours(ec2.copy_image),
            create_tags: ours(ec2.create_tags),
        };
        let account = account::SimAccount::new(&settings, Instant::now());
        let accounts = accounts::SimAccounts::new(&settings);
        Arc::new(Model {
            settings,
            rates,
            random,
            fault_matches,
            regions: DashMap::new(),
            next_id: AtomicU64::new(1),
            id_salt: AtomicU64::new(0),
            started: Instant::now(),
            epoch: continued_at
                .unwrap_or_else(|| chrono::DateTime::parse_from_rfc3339(FRESH_EPOCH).expect("a valid date").to_utc()),
            throttled: AtomicU64::new(0),
            faults_injected: AtomicU64::new(0),
            account,
            accounts,
            wall: match continued_at {
                Some(at) => crate::util::clock::RunClock::starting_at(at),
                None => crate::util::clock::RunClock::start(),
            },
        })
    }

    pub fn region(&self, region: &Region) -> Arc<RegionModel> {
        self.place(&Place::own(region.clone()))
    }

    /// A region of any simulated account (each its own state and buckets).
    pub fn place(&self, place: &Place) -> Arc<RegionModel> {
        let region = &place.region;
        self.regions
            .entry(place.clone())
            .or_insert_with(|| {
                Arc::new(RegionModel {
                    buckets: ClassBuckets::new(&self.rates),
                    state: Mutex::new(RegionState {
                        lag: self.settings.consistency_lag,
                        publishing: ssm::Publishing::declared(
                            &self.settings.launch_templates,
                            &self.settings.parameters,
                            |name| format!("lt-0{:016x}", fnv1a(&format!("{region}/{name}")) >> 4),
                        ),
                        ..RegionState::default()
                    }),
                })
            })
            .clone()
    }

    /// Every place the model has state for, of every account, sorted.
    pub fn places(&self) -> Vec<(Place, Arc<RegionModel>)> {
        let mut places: Vec<_> = self.regions.iter().map(|entry| (entry.key().clone(), entry.clone())).collect();
        places.sort_by(|a, b| a.0.cmp(&b.0));
        places
    }

    /// The image `id` of an account other than `except` in `region`, as `copier` (an account id) sees it, and
    /// whether a KMS grant on its key lets `copier` use it ([`accounts`]).
    fn image_elsewhere(
        &self,
        region: &Region,
        id: &ImageId,
        except: &Account,
        copier: &str,
    ) -> Option<(accounts::ForeignImage, bool)> {
        let now = Instant::now();
        let places: Vec<(Place, Arc<RegionModel>)> = self
            .regions
            .iter()
            .filter(|entry| &entry.key().region == region && &entry.key().account != except)
            .map(|entry| (entry.key().clone(), entry.clone()))
            .collect();
        for (place, model) in places {
            let state = model.state.lock().expect("not poisoned");
            let Some(image) = state.images.get(id) else { continue };
            let granted = image.attributes.kms_key.as_deref().is_some_and(|key| {
                let key_arn = accounts::key_arn(&place.account, region, key);
                state.kms_grants.allow(&key_arn, copier, now, self.settings.grant_lag)
            });
            let found = accounts::ForeignImage {
                state: image.state(now),
                snapshot: image.snapshot.clone(),
                attributes: image.attributes.clone(),
            };
            return Some((found, granted));
        }
        None
    }

    pub fn regions(&self) -> Vec<(Region, Arc<RegionModel>)> {
        let mut regions: Vec<_> =
            self.regions.iter().map(|entry| (entry.key().region.clone(), entry.clone())).collect();
        regions.sort_by(|a, b| a.0.cmp(&b.0));
        regions
    }

    /// `duration` ± the configured jitter.
    pub fn jittered(&self, duration: Duration) -> Duration {
        let jitter = self.settings.jitter;
        if jitter == 0.0 {
            return duration;
        }
        let factor = 1.0 + jitter * (2.0 * self.random.lock().expect("not poisoned").f64() - 1.0);
        duration.mul_f64(factor)
    }

    /// When this process made the account (a `[sim] state` account's earlier resources come before it).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// A fresh id like EC2's: `prefix-` and 17 hex digits.
    fn id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-0{:016x}", (fnv1a(&n.to_string()) ^ self.id_salt.load(Ordering::Relaxed)) >> 4)
    }

    /// The configured error fault that answers this call, if one does.
    fn fault(&self, action: Action, region: &Region) -> Option<&SimFault> {
        self.firing(action, region, |effect| matches!(effect, FaultEffect::Error(_)))
    }

    /// The configured fault that makes what this call creates end badly (a failed image, a launch that
    /// terminates), if one does. Asked only by calls that took effect.
    fn state_fault(&self, action: Action, region: &Region) -> Option<&FaultEffect> {
        let wanted = |effect: &FaultEffect| {
            matches!(effect, FaultEffect::ImageFails { .. } | FaultEffect::InstanceTerminates { .. })
        };
        self.firing(action, region, wanted).map(|fault| &fault.effect)
    }

    /// The configured console fault of the instance this RunInstances launches (of `flavor`), if one fires.
    fn console_fault(&self, region: &Region, flavor: Option<&str>) -> Option<ConsoleFault> {
        self.launch_fault(region, flavor, |effect| match effect {
            FaultEffect::Console { fault, flavor } => Some((*fault, flavor.as_ref())),
            _ => None,
        })
    }

    /// The configured agent fault of the instance this RunInstances launches (of `flavor`), if one fires.
    fn agent_fault(&self, region: &Region, flavor: Option<&str>) -> Option<AgentFault> {
        self.launch_fault(region, flavor, |effect| match effect {
            FaultEffect::Agent { fault, flavor } => Some((*fault, flavor.as_ref())),
            _ => None,
        })
    }

    /// The fault of one kind ([`PickLaunchFault`]: the fault and the flavor it is limited to, of an effect of that kind) of
    /// the instance this RunInstances launches (of `flavor`), if one fires: only faults of that kind that apply
    /// to `flavor` count.
    fn launch_fault<T: Copy>(&self, region: &Region, flavor: Option<&str>, pick: PickLaunchFault<T>) -> Option<T> {
        let applies = |effect: &FaultEffect| {
            pick(effect).is_some_and(|(_, only)| only.is_none_or(|only| Some(only.as_str()) == flavor))
        };
        self.firing(Action::RunInstances, region, applies).and_then(|fault| pick(&fault.effect)).map(|(fault, _)| fault)
    }

    /// Whether a configured `test` fault fails this run of a build's image tests in `region`.
    pub fn test_fails(&self, region: &Region) -> bool {
        // Test faults have no action: any action matches them, and only this asks for their effect.
        self.firing(Action::DescribeImages, region, |effect| matches!(effect, FaultEffect::TestFails)).is_some()
    }

    /// Whether a configured `provision` fault fails this run of a build's provisioners in `region`.
    pub fn provision_fails(&self, region: &Region) -> bool {
        // Like test faults: no action of their own; only this asks for their effect.
        self.firing(Action::DescribeImages, region, |effect| matches!(effect, FaultEffect::ProvisionFails)).is_some()
    }

    /// The first fault of the wanted effects that matches this call and fires; each counts its own matches.
    fn firing(&self, action: Action, region: &Region, wanted: impl Fn(&FaultEffect) -> bool) -> Option<&SimFault> {
        let mut matches = self.fault_matches.lock().expect("not poisoned");
        for (index, fault) in self.settings.faults.iter().enumerate() {
            let elsewhere =
                fault.action.is_some_and(|hit| hit != action) || fault.region.as_ref().is_some_and(|r| r != region);
            if elsewhere || !wanted(&fault.effect) {
                continue;
            }
            matches[index] += 1;
            let fires = match fault.when {
                FaultTrigger::Nth(nth) => matches[index] == nth,
                FaultTrigger::Probability(probability) => self.random.lock().expect("not poisoned").f64() < probability,
            };
            if fires {
                self.faults_injected.fetch_add(1, Ordering::Relaxed);
                return Some(fault);
            }
        }
        None
    }
}

/// One region of the account.
pub struct RegionModel {
    buckets: ClassBuckets,
    pub state: Mutex<RegionState>,
}

#[derive(Default)]
pub struct RegionState {
    /// How long a new id stays unknown to other calls (`[sim] consistency_lag`).
    lag: Duration,
    /// Answers that said "not found", or left a resource out, because of the lag.
    pub lagged: u64,
    public_images: HashMap<ImageId, PublicImage>,
    /// Made through [`RegionState::insert_image`], so that [`RegionState::image_names`] knows each name.
    pub images: HashMap<ImageId, SimImage>,
    /// The image each name was last given to: CreateImage and CopyImage ask whether a name is in use without
    /// reading every image of the region (500 per region in a 10,000-job night, each call).
    image_names: HashMap<String, ImageId>,
    /// Copies into the region (CopyImage) and when each becomes available: see [`RegionState::copies_in_flight`].
    copies_pending: Vec<(Instant, ImageId)>,
    /// Snapshots of deregistered images, until deleted, and when EC2 stops counting each in use by its image
    /// (`[sim] snapshot_in_use` after the deregistration).
    pub orphan_snapshots: HashMap<SnapshotId, Instant>,
    pub instances: BTreeMap<InstanceId, SimInstance>,
    pub key_pairs: BTreeMap<KeyPairName, SimKeyPair>,
    pub security_groups: BTreeMap<SecurityGroupId, SimGroup>,
    /// Each resource's tags, shared: the images of a flavor and their snapshots carry the same set, and a
    /// 10,000-image night would otherwise hold it 20,000 times.
    tags: HashMap<String, Arc<Tags>>,
    /// Every distinct tag set, once.
    tag_sets: HashSet<Arc<Tags>>,
    client_tokens: HashMap<String, String>,
    pub peak_copies_in_flight: usize,
    /// When each DescribeImages / DescribeInstances by id arrived.
    pub describes: Vec<(Action, Instant)>,
    /// Every ingress rule ever opened: the group and the source.
    pub ingress_log: Vec<(SecurityGroupId, IngressSource)>,
    /// SSM parameters and launch templates ([`ssm`]).
    pub publishing: ssm::Publishing,
    /// Session Manager sessions open now (StartSession opened them, no TerminateSession yet), and the
    /// instance each goes to. Only TerminateSession ends one here: SSM ends a session whose instance is gone
    /// only after its idle timeout (20 minutes by default), and fleetbake promises to end each one itself, so
    /// one still open at the end of a run is a leak.
    pub sessions: BTreeMap<SessionId, InstanceId>,
    /// Sessions StartSession opened in the run.
    pub sessions_started: u64,
    /// KMS grants on this place's keys ([`accounts`]).
    pub kms_grants: accounts::KmsGrants,
    /// The image each instance was launched from ([`in_use`]).
    pub launched_from: in_use::LaunchedFrom,
}

pub struct SimImage {
    pub name: String,
    created_at: Instant,
    /// The creation date of an image restored from `[sim] state` (made by an earlier process); `None`: made
    /// by this one, at `created_at`.
    restored_creation: Option<chrono::DateTime<chrono::Utc>>,
    pub available_at: Instant,
    snapshot: SnapshotId,
    /// A copy in progress counts against the destination's copy cap.
    copied: bool,
    /// It ends `failed` (at `available_at`), with this reason (`[sim] faults` `image_state`).
    pub fails: Option<String>,
    /// What EC2 keeps of it that moto does not (encryption of a copy, deprecation, launch permissions).
    pub attributes: ImageAttributes,
}

/// An image's attributes as the model keeps them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageAttributes {
    /// The KMS key its snapshot is encrypted with.
    pub kms_key: Option<String>,
    pub imds_v2: bool,
    /// RFC 3339.
    pub deprecation_time: Option<String>,
    /// Accounts, organization and OU ARNs, `all`.
    pub launch_permissions: Vec<String>,
    /// Accounts that may create volumes from its snapshot.
    pub snapshot_permissions: Vec<String>,
}

impl SimImage {
    /// Made by an earlier process (`[sim] state`), not this one's run.
    pub fn restored(&self) -> bool {
        self.restored_creation.is_some()
    }

    pub fn snapshot(&self) -> &SnapshotId {
        &self.snapshot
    }

    pub fn state(&self, now: Instant) -> ImageState {
        match &self.fails {
            _ if now < self.available_at => ImageState::Pending,
            Some(reason) => ImageState::Failed(format!("failed: {reason}")),
            None => ImageState::Available,
        }
    }
}

pub struct SimInstance {
    launched_at: Instant,
    running_at: Instant,
    /// When SSH answers.
    pub ssh_at: Instant,
    stopped_at: Option<Instant>,
    terminated_at: Option<Instant>,
    /// The launch ends terminated instead of running (`[sim] faults` `instance_state`), with this reason.
    launch_failure: Option<String>,
    /// When cloud-init's host key block appears on its console (`[sim] console_keys` after it runs).
    pub console_keys_at: Instant,
    /// Its own host key (made up from the seed and its id).
    pub host_key: HostKey,
    /// What its console and its address do wrong (`[sim] faults` `console`).
    pub console_fault: Option<ConsoleFault>,
    /// When its SSM agent is registered and online (`[sim] agent_online` after it runs); `None`: never
    /// (`[sim] faults` `agent = "never"`).
    agent_at: Option<Instant>,
    pub security_group: SecurityGroupId,
    public_ip: String,
    /// The KMS key its root volume is encrypted with: CreateImage's snapshot gets it.
    volume_key: Option<String>,
    /// On demand, or one-time spot (and when EC2 takes it back: [`spot`]).
    pub market: spot::SimMarket,
    /// The instance type it was launched as.
    pub instance_type: String,
}

impl SimInstance {
    pub fn state(&self, now: Instant) -> InstanceState {
        if let Some(interrupted) = self.market.interrupted_state(now, self.terminated_at) {
            return interrupted;
        }
        match (self.terminated_at, self.stopped_at) {
            (Some(at), _) if now >= at => InstanceState::Terminated,
            // A launch that fails stays pending until it ends.
            (Some(_), _) if self.launch_failure.is_some() => InstanceState::Pending,
            (Some(_), _) => InstanceState::ShuttingDown,
            (None, Some(at)) if now >= at => InstanceState::Stopped,
            (None, Some(_)) => InstanceState::Stopping,
            (None, None) if now >= self.running_at => InstanceState::Running,
            (None, None) => InstanceState::Pending,
        }
    }

    /// Whether an earlier process launched it (an instance `[sim] state` kept: [`persist`]).
    pub fn restored(&self, model: &Model) -> bool {
        self.launched_at < model.started
    }

    /// When a termination its user asked for completes, if one was asked for.
    pub fn user_terminated_at(&self) -> Option<Instant> {
        self.terminated_at
    }

    /// Whether its SSM agent answers now: online from `agent_at` while the instance runs (a stopped or
    /// terminated instance's agent is `ConnectionLost`).
    fn agent_online(&self, now: Instant) -> bool {
        self.state(now) == InstanceState::Running && self.agent_at.is_some_and(|at| now >= at)
    }

    /// EC2's `StateReason` for a terminated instance (or one EC2 is taking back).
    fn state_reason(&self, now: Instant) -> Option<String> {
        // EC2 gives the reason from the start of the transition: shutting-down already says it.
        if self.market.interrupted_state(now, self.terminated_at).is_some() {
            return Some(spot::SPOT_TERMINATION_REASON.into());
        }
        match self.state(now) {
            InstanceState::Terminated => Some(
                self.launch_failure
                    .clone()
                    .unwrap_or_else(|| "Client.UserInitiatedShutdown: User initiated shutdown".into()),
            ),
            _ => None,
        }
    }
}

pub struct SimKeyPair {
    pub tags: Tags,
    created_at: Instant,
}

impl SimKeyPair {
    /// Made by an earlier process (`[sim] state`), not this one's run.
    pub fn restored(&self, model: &Model) -> bool {
        self.created_at < model.started
    }
}

pub struct SimGroup {
    name: String,
    created_at: Instant,
}

impl SimGroup {
    /// Made by an earlier process (`[sim] state`), not this one's run.
    pub fn restored(&self, model: &Model) -> bool {
        self.created_at < model.started
    }
}

impl RegionState {
    /// Lists `image` (its name too).
    pub fn insert_image(&mut self, id: ImageId, image: SimImage) {
        self.image_names.insert(image.name.clone(), id.clone());
        if image.copied {
            self.copies_pending.push((image.available_at, id.clone()));
        }
        self.images.insert(id, image);
    }

    /// Whether an image of the region has this name (EC2: `InvalidAMIName.Duplicate` for a second one; a
    /// deregistered image's name is free again). The index is checked against the image it names.
    fn image_name_in_use(&self, name: &str) -> bool {
        let indexed =
            self.image_names.get(name).and_then(|id| self.images.get(id)).is_some_and(|image| image.name == name);
        indexed || (self.images.len() != self.image_names.len() && self.images.values().any(|image| image.name == name))
    }

    /// Whether other calls know a resource created at `created_at` yet (EC2's eventual consistency); counts
    /// the answers the lag changes.
    fn settled(&mut self, created_at: Instant, now: Instant) -> bool {
        let settled = now >= created_at + self.lag;
        if !settled {
            self.lagged += 1;
        }
        settled
    }

    /// A resource's tags, if it has any.
    pub fn tags_of(&self, resource: &str) -> Option<&Tags> {
        self.tags.get(resource).map(Arc::as_ref)
    }

    /// The value of one tag of a resource, if it has it.
    pub fn tag_of(&self, resource: &str, key: &str) -> Option<String> {
        self.tags.get(resource).and_then(|tags| tags.get(key)).cloned()
    }

    /// Copies into the region not yet available (a deregistered one no longer counts). Read from
    /// [`RegionState::copies_pending`], pruned as they become available, not from every image of the region.
    fn copies_in_flight(&mut self, now: Instant) -> usize {
        let images = &self.images;
        self.copies_pending.retain(|(available_at, id)| {
            *available_at > now && images.get(id).is_some_and(|image| image.copied && image.available_at > now)
        });
        self.copies_pending.len()
    }

    /// An image by id as DescribeImages shows it: the account's own once settled, or a public one.
    fn image_status(&mut self, id: &ImageId, now: Instant) -> Option<ImageStatus> {
        if let Some(image) = self.images.get(id) {
            let (state, snapshot, created_at) = (image.state(now), image.snapshot.clone(), image.created_at);
            return self.settled(created_at, now).then(|| ImageStatus {
                id: id.clone(),
                state,
                snapshot_ids: vec![snapshot],
                root_device: Some(ROOT_DEVICE.into()),
            });
        }
        let public = self.public_images.contains_key(id) || is_image_id(id.as_str());
        public.then(|| ImageStatus {
            id: id.clone(),
            state: ImageState::Available,
            snapshot_ids: Vec::new(),
            root_device: Some(ROOT_DEVICE.into()),
        })
    }

    /// The instance, if it exists and other calls know it yet.
    fn known_instance(&mut self, id: &InstanceId, now: Instant) -> Result<&mut SimInstance, Refusal> {
        let launched_at = self.instances.get(id).map(|instance| instance.launched_at);
        match launched_at {
            Some(at) if self.settled(at, now) => Ok(self.instances.get_mut(id).expect("just looked up")),
            _ => refuse("InvalidInstanceID.NotFound", format!("The instance ID '{id}' does not exist")),
        }
    }

    /// The account's own image, if it exists and other calls know it yet.
    fn known_image(&mut self, id: &ImageId, now: Instant) -> Result<&mut SimImage, Refusal> {
        let created_at = self.images.get(id).map(|image| image.created_at);
        match created_at {
            Some(at) if self.settled(at, now) => Ok(self.images.get_mut(id).expect("just looked up")),
            _ => refuse("InvalidAMIID.NotFound", format!("The image id '[{id}]' does not exist")),
        }
    }

    /// Whether the group exists and other calls know it yet.
    /// The image whose snapshot this is (the model keeps a snapshot with its image).
    fn image_of_snapshot(&self, snapshot: &SnapshotId) -> Result<ImageId, Refusal> {
        match self.images.iter().find(|(_, image)| &image.snapshot == snapshot) {
            Some((id, _)) => Ok(id.clone()),
            None => refuse("InvalidSnapshot.NotFound", format!("The snapshot '{snapshot}' does not exist.")),
        }
    }

    fn knows_group(&mut self, id: &SecurityGroupId, now: Instant) -> bool {
        match self.security_groups.get(id).map(|group| group.created_at) {
            Some(at) => self.settled(at, now),
            None => false,
        }
    }

    /// The NotFound code EC2 gives CreateTags for an id it does not know (yet), or none if it knows it.
    fn unknown_to_tags(&mut self, resource: &str, now: Instant) -> Option<&'static str> {
        let image = ImageId::new(resource);
        let created_at = if let Some(found) = self.images.get(&image) {
            Some(found.created_at)
        } else if self.public_images.contains_key(&image) {
            return None;
        } else if resource.starts_with("snap-") {
            // Only a snapshot's id is looked for among the images' snapshots (every image read).
            self.images.values().find(|found| found.snapshot.as_str() == resource).map(|found| found.created_at)
        } else if let Some(found) = self.instances.get(&InstanceId::new(resource)) {
            (found.state(now) != InstanceState::Terminated).then_some(found.launched_at)
        } else {
            self.security_groups.get(&SecurityGroupId::new(resource)).map(|group| group.created_at)
        };
        if created_at.is_some_and(|at| self.settled(at, now)) {
            return None;
        }
        Some(match resource.split('-').next() {
            Some("ami") => "InvalidAMIID.NotFound",
            Some("snap") => "InvalidSnapshot.NotFound",
            Some("i") => "InvalidInstanceID.NotFound",
            Some("sg") => "InvalidGroup.NotFound",
            _ => "InvalidID",
        })
    }
}

/// Whether `stored` carries every one of `wanted`.
fn carries(stored: Option<&Tags>, wanted: &Tags) -> bool {
    wanted.iter().all(|(key, value)| stored.and_then(|tags| tags.get(key)) == Some(value))
}

impl ImageAttributes {
    pub fn is_default(&self) -> bool {
        self == &ImageAttributes::default()
    }
}

/// `alias/aws/ebs` and the like (by alias or alias ARN): keys AWS manages for a service; by key ARN, the
/// model's synthesized ARN of such a key (`key/aws-managed-…`, [`accounts::key_arn`]: DescribeKey's
/// `KeyManager = AWS` for it).
fn is_aws_managed_key(key: &str) -> bool {
    let alias = key.rsplit_once(':').map_or(key, |(_, alias)| alias);
    alias.starts_with(crate::config::AWS_MANAGED_KEY_ALIASES) || alias.starts_with(accounts::AWS_MANAGED_KEY_ID)
}

/// The root device of every image in the model.
const ROOT_DEVICE: &str = "/dev/xvda";

/// A deterministic id of the model's own (`vpc-…`, `subnet-…`) for what it synthesizes from `seed`.
fn synthesized(prefix: &str, seed: &str) -> String {
    format!("{prefix}-0{:016x}", fnv1a(seed) >> 4)
}

/// Where an account made by this process starts in wall time, for creation dates.
const FRESH_EPOCH: &str = "2026-01-01T00:00:00Z";

/// A simulated image's creation date: a restored image's own, else the model's epoch (when it started)
/// advanced by Tokio's clock to the image's creation.
fn creation_date(epoch: chrono::DateTime<chrono::Utc>, started: Instant, image: &SimImage) -> String {
    let created = image.restored_creation.unwrap_or_else(|| {
        epoch + chrono::Duration::from_std(image.created_at.duration_since(started)).unwrap_or_default()
    });
    created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// With `[sim] require_tags_on_create`, as an SCP denying `ec2:CreateImage` / `ec2:CopyImage` on an image or
/// snapshot without tags in the request (`aws:RequestTag`, "Grant permission to tag resources during
/// creation", EC2 User Guide) answers: `UnauthorizedOperation` unless the image and its snapshots are tagged at
/// creation.
fn untagged_create(required: bool, action: Action, image: &Tags, snapshots: &Tags) -> Result<(), Refusal> {
    let untagged = match (image.is_empty(), snapshots.is_empty()) {
        _ if !required => return Ok(()),
        (false, false) => return Ok(()),
        (true, true) => "image and snapshot",
        (true, false) => "image",
        (false, true) => "snapshot",
    };
    refuse(
        "UnauthorizedOperation",
        format!(
            "You are not authorized to perform this operation: {action} with an untagged {untagged} (explicit deny in a service control policy requiring tags on create)"
        ),
    )
}

/// `ami-` and 8 or 17 hex digits: an id a user may name as a source image.
fn is_image_id(text: &str) -> bool {
    text.strip_prefix("ami-")
        .is_some_and(|hex| matches!(hex.len(), 8 | 17) && hex.chars().all(|c| c.is_ascii_hexdigit()))
}

/// One region of a simulated account, as the cloud port.
pub struct SimRegion {
    pub region: Region,
    /// Whose region: the own account's, or one of `[sim] accounts`.
    pub account: Account,
    pub model: Arc<Model>,
    pub state: Arc<RegionModel>,
}

impl SimRegion {
    /// The port at `place`.
    pub fn new(model: &Arc<Model>, place: &Place) -> Self {
        SimRegion {
            region: place.region.clone(),
            account: place.account.clone(),
            model: Arc::clone(model),
            state: model.place(place),
        }
    }

    /// Every call: a configured fault, else EC2's bucket for the class, else the change (and, for a fault whose
    /// answer is lost, the fault's error after it); then the latency.
    async fn call<T>(
        &self,
        action: Action,
        apply: impl FnOnce(&mut RegionState, Instant) -> Result<T, Refusal>,
    ) -> CloudResult<T> {
        let fault = self.model.fault(action, &self.region);
        let injected = |fault: &SimFault, what: &str| {
            let code = match &fault.effect {
                FaultEffect::Error(code) => code.as_str(),
                _ => unreachable!("Model::fault answers error faults only"),
            };
            refuse(code, format!("{code} ({what} by the `[sim] faults` of the fleet file)"))
        };
        let refused = self.model.account.refusal(action, &self.region, Instant::now()).or_else(|| {
            // Another account's place: its role assumed (or refused) first; the own account's is never.
            (!self.account.is_own())
                .then(|| self.model.account.base_arn(super::SIMULATED_ACCOUNT))
                .and_then(|caller| self.model.accounts.refusal(&self.account, &caller, Instant::now()))
        });
        let answer = match (refused, fault) {
            (Some(refusal), _) => Err(refusal),
            (None, Some(fault)) if !fault.answer_lost => injected(fault, "injected"),
            _ if self.state.buckets.of(action.class()).try_take().is_err() => {
                self.model.throttled.fetch_add(1, Ordering::Relaxed);
                refuse("RequestLimitExceeded", "Request limit exceeded.")
            }
            _ => {
                let mut state = self.state.state.lock().expect("not poisoned");
                let answer = apply(&mut state, Instant::now());
                match fault {
                    Some(fault) => injected(fault, "the call took effect; its answer was lost"),
                    None => answer,
                }
            }
        };
        tokio::time::sleep(self.model.jittered(self.model.settings.api_latency)).await;
        answer.map_err(|refusal| CloudError {
            action,
            region: self.region.clone(),
            kind: ErrorKind::of_code(&refusal.code),
            code: Some(refusal.code),
            message: refusal.message,
        })
    }

    /// The resources among `matching` other calls know yet, with their tags (what a describe by tag lists).
    fn settled_with_tags<Id: Clone + AsRef<str>>(
        state: &mut RegionState,
        matching: Vec<(Id, Instant)>,
        now: Instant,
    ) -> Vec<Tagged<Id>> {
        let mut found = Vec::new();
        for (id, created_at) in matching {
            if state.settled(created_at, now) {
                found.push(Tagged {
                    tags: state.tags.get(id.as_ref()).map(|tags| Tags::clone(tags)).unwrap_or_default(),
                    id,
                });
            }
        }
        found
    }

    /// Of `ids`, those that are other accounts' images in this region (not this place's own), as this account
    /// sees them. Nothing to look up in a model of one account.
    fn images_elsewhere(&self, ids: &[ImageId]) -> HashMap<ImageId, accounts::ForeignImage> {
        let unknown: Vec<ImageId> = {
            let state = self.state.state.lock().expect("not poisoned");
            ids.iter().filter(|id| !state.images.contains_key(*id)).cloned().collect()
        };
        let me = accounts::account_id(&self.account);
        unknown
            .into_iter()
            .filter_map(|id| {
                let (found, _) = self.model.image_elsewhere(&self.region, &id, &self.account, me)?;
                Some((id, found))
            })
            .collect()
    }

    /// The reason the image this call makes will fail with, if a `[sim] faults` entry says so.
    fn image_fault(&self, action: Action) -> Option<String> {
        match self.model.state_fault(action, &self.region) {
            Some(FaultEffect::ImageFails { reason }) => Some(reason.clone()),
            _ => None,
        }
    }

    /// CreateImage of `instance`: of a stopped one, or (`Reboot::Yes`, `NoReboot` false) of a running one, whose
    /// image then also waits for EC2 to stop and start it again ([`spot::reboot_delay`]).
    async fn image_of(
        &self,
        instance: &InstanceId,
        name: &str,
        tags: &Tags,
        snapshot_tags: &Tags,
        reboot: Reboot,
    ) -> CloudResult<ImageId> {
        let id = ImageId::new(self.model.id("ami"));
        let snapshot = SnapshotId::new(self.model.id("snap"));
        let settings = &self.model.settings;
        let create_image = self.model.jittered(settings.create_image);
        // Only a reboot draws from the seeded jitter: every other run's timings stay as they were.
        let rebooting = match reboot {
            Reboot::Yes => self.model.jittered(spot::reboot_delay(settings.stop, settings.boot)),
            Reboot::No => Duration::ZERO,
        };
        let required = settings.require_tags_on_create;
        self.call(Action::CreateImage, |state, now| {
            untagged_create(required, Action::CreateImage, tags, snapshot_tags)?;
            Self::merge_tags(state, snapshot.as_str(), snapshot_tags);
            let found = state.known_instance(instance, now)?;
            let volume_key = found.volume_key.clone();
            let available_at = match (found.state(now), reboot) {
                (InstanceState::ShuttingDown | InstanceState::Terminated, _) => {
                    return refuse("IncorrectInstanceState", format!("The instance '{instance}' is terminated"))
                }
                (InstanceState::Running, Reboot::Yes) => now + rebooting + create_image,
                _ => now + create_image,
            };
            if state.image_name_in_use(name) {
                return refuse("InvalidAMIName.Duplicate", format!("AMI name {name} is already in use by AMI"));
            }
            let fails = self.image_fault(Action::CreateImage);
            state.insert_image(
                id.clone(),
                SimImage {
                    name: name.to_string(),
                    created_at: now,
                    restored_creation: None,
                    available_at,
                    snapshot,
                    copied: false,
                    fails,
                    attributes: ImageAttributes { kms_key: volume_key, ..ImageAttributes::default() },
                },
            );
            Self::merge_tags(state, id.as_str(), tags);
            Ok(id)
        })
        .await
    }

    fn merge_tags(state: &mut RegionState, resource: &str, tags: &Tags) {
        let merged = match state.tags.get(resource) {
            Some(existing) if tags.iter().all(|(key, value)| existing.get(key) == Some(value)) => return,
            Some(existing) => {
                let mut merged = Tags::clone(existing);
                merged.extend(tags.clone());
                merged
            }
            None => tags.clone(),
        };
        let shared = match state.tag_sets.get(&merged) {
            Some(shared) => Arc::clone(shared),
            None => {
                let shared = Arc::new(merged);
                state.tag_sets.insert(Arc::clone(&shared));
                shared
            }
        };
        state.tags.insert(resource.to_string(), shared);
    }
}

#[async_trait]
impl RegionCloud for SimRegion {
    fn region(&self) -> &Region {
        &self.region
    }

    async fn find_images(&self, filter: &ImageFilter) -> CloudResult<Vec<ImageSummary>> {
        let region = self.region.clone();
        self.call(Action::DescribeImages, |state, _| {
            let found = catalog::matching(&region, filter);
            for image in &found {
                state.public_images.insert(image.id.clone(), image.clone());
            }
            Ok(found
                .into_iter()
                .map(|image| ImageSummary {
                    id: image.id,
                    name: image.name,
                    creation_date: image.creation_date,
                    root_device: Some(ROOT_DEVICE.into()),
                    owner: None,
                })
                .collect())
        })
        .await
    }

    /// Another account's image is found only if it grants this account launch permission (or is public).
    async fn describe_images(&self, ids: &[ImageId]) -> CloudResult<Vec<ImageStatus>> {
        let foreign = self.images_elsewhere(ids);
        let me = accounts::account_id(&self.account);
        self.call(Action::DescribeImages, |state, now| {
            state.describes.push((Action::DescribeImages, now));
            Ok(ids
                .iter()
                .filter_map(|id| match foreign.get(id) {
                    Some(image) => image.launchable_by(me).then(|| ImageStatus {
                        id: id.clone(),
                        state: image.state.clone(),
                        snapshot_ids: vec![image.snapshot.clone()],
                        root_device: Some(ROOT_DEVICE.into()),
                    }),
                    None => state.image_status(id, now),
                })
                .collect())
        })
        .await
    }

    /// Subnets by id are taken to exist in the region asked (the model cannot know another region's); a tag
    /// filter finds two subnets of one VPC in different zones, the first with more free addresses, so that a
    /// build has somewhere to go when a zone has no capacity.
    async fn find_subnets(&self, lookup: &SubnetLookup) -> CloudResult<Vec<Subnet>> {
        let region = self.region.clone();
        self.call(Action::DescribeSubnets, |_, _| {
            let subnet = |id: String, zone: &str, free: u32| Subnet {
                vpc: VpcId::new(synthesized("vpc", &format!("{region}/{}", id.split('/').next().unwrap_or_default()))),
                // Each region's subnets are its own: the seed names the region.
                id: SubnetId::new(synthesized("subnet", &format!("{region}/{id}"))),
                availability_zone: format!("{region}{zone}"),
                available_addresses: free,
                maps_public_ip: false,
            };
            Ok(match lookup {
                SubnetLookup::Ids(ids) => ids
                    .iter()
                    .map(|id| Subnet { id: SubnetId::new(id), ..subnet(format!("ids/{id}"), "a", 4000) })
                    .collect(),
                SubnetLookup::Tagged(tags) => {
                    let key = format!("tags/{tags:?}");
                    vec![subnet(format!("{key}/a"), "a", 4000), subnet(format!("{key}/b"), "b", 3000)]
                }
            })
        })
        .await
    }

    async fn find_vpc(&self, vpc: VpcLookup<'_>) -> CloudResult<Option<Vpc>> {
        let has_default = self.model.settings.default_vpc;
        let region = self.region.clone();
        self.call(Action::DescribeVpcs, |_, _| {
            Ok(match vpc {
                VpcLookup::Default => has_default.then(|| Vpc {
                    id: VpcId::new(synthesized("vpc", &format!("{region}/default"))),
                    cidrs: vec!["172.31.0.0/16".parse().expect("a CIDR")],
                }),
                // The default VPC's id answers with its own block; any other VPC is 10.0.0.0/16.
                VpcLookup::Id(id) if id.as_str() == synthesized("vpc", &format!("{region}/default")) => {
                    Some(Vpc { id: id.clone(), cidrs: vec!["172.31.0.0/16".parse().expect("a CIDR")] })
                }
                VpcLookup::Id(id) => Some(Vpc { id: id.clone(), cidrs: vec!["10.0.0.0/16".parse().expect("a CIDR")] }),
            })
        })
        .await
    }

    /// Every instance type is offered everywhere in the model.
    async fn instance_type_offered(&self, _instance_type: &str, _zone: Option<&str>) -> CloudResult<bool> {
        self.call(Action::DescribeInstanceTypeOfferings, |_, _| Ok(true)).await
    }

    async fn create_key_pair(&self, name: &KeyPairName, tags: &Tags) -> CloudResult<PrivateKey> {
        self.call(Action::CreateKeyPair, |state, now| {
            if state.key_pairs.contains_key(name) {
                return refuse("InvalidKeyPair.Duplicate", format!("The keypair '{name}' already exists."));
            }
            state.key_pairs.insert(name.clone(), SimKeyPair { tags: tags.clone(), created_at: now });
            Ok(PrivateKey::new(
                "-----BEGIN RSA PRIVATE KEY-----\nsimulated\n-----END RSA PRIVATE KEY-----\n".to_string(),
            ))
        })
        .await
    }

    async fn delete_key_pair(&self, name: &KeyPairName) -> CloudResult<()> {
        // EC2 answers DeleteKeyPair for a key it does not know (yet) with success and deletes nothing: a key
        // pair deleted moments after it was made can outlive its build (the end-of-run sweep removes it).
        self.call(Action::DeleteKeyPair, |state, now| {
            if let Some(created_at) = state.key_pairs.get(name).map(|pair| pair.created_at) {
                if state.settled(created_at, now) {
                    state.key_pairs.remove(name);
                }
            }
            Ok(())
        })
        .await
    }

    async fn create_security_group(
        &self,
        name: &str,
        _description: &str,
        _vpc: Option<&VpcId>,
        tags: &Tags,
    ) -> CloudResult<SecurityGroupId> {
        let id = SecurityGroupId::new(self.model.id("sg"));
        self.call(Action::CreateSecurityGroup, |state, now| {
            if state.security_groups.values().any(|group| group.name == name) {
                return refuse("InvalidGroup.Duplicate", format!("The security group '{name}' already exists"));
            }
            state.security_groups.insert(id.clone(), SimGroup { name: name.to_string(), created_at: now });
            Self::merge_tags(state, id.as_str(), tags);
            Ok(id)
        })
        .await
    }

    /// A rule may name addresses, source groups (the account's, or the runner's: `[sim]
    /// runner_security_groups`) and prefix lists (`[sim] prefix_lists`); one it does not know is refused.
    async fn authorize_ingress(&self, group: &SecurityGroupId, _port: u16, from: &IngressSources) -> CloudResult<()> {
        let sources = sources_of(from);
        let settings = &self.model.settings;
        self.call(Action::AuthorizeSecurityGroupIngress, |state, now| {
            if !state.knows_group(group, now) {
                return refuse("InvalidGroup.NotFound", format!("The security group '{group}' does not exist"));
            }
            for source in &sources {
                if let Some((code, message)) =
                    unknown_source(settings, |id| state.security_groups.contains_key(id), source)
                {
                    return refuse(code, message);
                }
            }
            if let Some((_, source)) =
                state.ingress_log.iter().find(|(id, source)| id == group && sources.contains(source))
            {
                return refuse(
                    "InvalidPermission.Duplicate",
                    format!("the specified rule \"peer: {source}, TCP, ALLOW\" already exists"),
                );
            }
            state.ingress_log.extend(sources.iter().map(|source| (group.clone(), source.clone())));
            Ok(())
        })
        .await
    }

    async fn delete_security_group(&self, group: &SecurityGroupId) -> CloudResult<()> {
        self.call(Action::DeleteSecurityGroup, |state, now| {
            if !state.knows_group(group, now) {
                return refuse("InvalidGroup.NotFound", format!("The security group '{group}' does not exist"));
            }
            let in_use = state
                .instances
                .values()
                .any(|instance| &instance.security_group == group && instance.state(now) != InstanceState::Terminated);
            if in_use {
                return refuse("DependencyViolation", format!("resource {group} has a dependent object"));
            }
            state.security_groups.remove(group);
            Ok(())
        })
        .await
    }

    async fn run_instance(&self, spec: &LaunchSpec) -> CloudResult<InstanceId> {
        let id = InstanceId::new(self.model.id("i"));
        let running_at = Instant::now() + self.model.jittered(self.model.settings.boot);
        let ssh_at = running_at + self.model.jittered(self.model.settings.ssh_ready);
        let console_keys_at = running_at + self.model.jittered(self.model.settings.console_keys);
        let agent_at = running_at + self.model.jittered(self.model.settings.agent_online);
        let host_key = ed25519_from_seed(&format!("{} {id}", self.model.settings.seed));
        let public_ip = format!("198.51.100.{}", 1 + fnv1a(id.as_str()) % 254);
        let settings = &self.model.settings;
        // Only a spot launch draws from the seeded jitter (its interruption's end): on-demand timings stay as they were.
        let terminate = match spec.market {
            crate::config::Market::Spot => self.model.jittered(settings.terminate),
            crate::config::Market::OnDemand => Duration::ZERO,
        };
        self.call(Action::RunInstances, |state, now| {
            if let Some(existing) = state.client_tokens.get(&spec.client_token) {
                return Ok(InstanceId::new(existing.clone()));
            }
            if state.image_status(&spec.image_id, now).is_none_or(|image| image.state != ImageState::Available) {
                return refuse("InvalidAMIID.NotFound", format!("The image id '[{}]' does not exist", spec.image_id));
            }
            let key_created = state.key_pairs.get(&spec.key_name).map(|pair| pair.created_at);
            if !key_created.is_some_and(|at| state.settled(at, now)) {
                return refuse("InvalidKeyPair.NotFound", format!("The key pair '{}' does not exist", spec.key_name));
            }
            if !state.knows_group(&spec.security_group, now) {
                return refuse(
                    "InvalidGroup.NotFound",
                    format!("The security group '{}' does not exist", spec.security_group),
                );
            }
            spot_capacity::spot_capacity(&settings.spot, spec.market, &spec.instance_type, &self.region)?;
            // The account's running-vCPU quota: every instance not yet terminated counts.
            if let Some(limit) = settings.vcpu_limit {
                let alive = state.instances.values().filter(|i| i.state(now) != InstanceState::Terminated).count();
                let wanted = (alive as u32 + 1) * settings.instance_vcpus;
                if wanted > limit {
                    return refuse(
                        "VcpuLimitExceeded",
                        format!(
                            "You have requested more vCPU capacity than your current vCPU limit of {limit} allows for the instance bucket that the specified instance type belongs to"
                        ),
                    );
                }
            }
            let launch_failure = match self.model.state_fault(Action::RunInstances, &self.region) {
                Some(FaultEffect::InstanceTerminates { reason }) => Some(reason.clone()),
                _ => None,
            };
            // The flavor, as the run tags every instance (`fleetbake:flavor`).
            let flavor = spec.tags.get("fleetbake:flavor").map(String::as_str);
            let console_fault = self.model.console_fault(&self.region, flavor);
            let agent_at = match self.model.agent_fault(&self.region, flavor) {
                Some(AgentFault::Never) => None,
                None => Some(agent_at),
            };
            state.client_tokens.insert(spec.client_token.clone(), id.to_string());
            state.instances.insert(
                id.clone(),
                SimInstance {
                    launched_at: now,
                    running_at,
                    ssh_at,
                    stopped_at: None,
                    terminated_at: launch_failure.is_some().then_some(running_at),
                    launch_failure,
                    console_keys_at,
                    host_key,
                    console_fault,
                    agent_at,
                    security_group: spec.security_group.clone(),
                    public_ip,
                    // EBS encryption by default: a volume launched without a key is encrypted with the account's
                    // default key (EC2 User Guide, "Amazon EBS encryption by default").
                    volume_key: spec
                        .root_volume
                        .as_ref()
                        .and_then(|root| root.kms_key.clone())
                        .or_else(|| self.model.settings.ebs_default_key.clone()),
                    market: spot::SimMarket::launched(spec.market, running_at, &settings.spot, terminate),
                    instance_type: spec.instance_type.clone(),
                },
            );
            state.launched_from.record(id.clone(), spec.image_id.clone());
            Self::merge_tags(state, id.as_str(), &spec.tags);
            Ok(id)
        })
        .await
    }

    async fn describe_instances(&self, ids: &[InstanceId]) -> CloudResult<Vec<InstanceStatus>> {
        self.call(Action::DescribeInstances, |state, now| {
            state.describes.push((Action::DescribeInstances, now));
            Ok(ids
                .iter()
                .filter_map(|id| {
                    let instance = state.known_instance(id, now).ok()?;
                    let instance_state = instance.state(now);
                    let public_ip = (instance_state == InstanceState::Running).then(|| instance.public_ip.clone());
                    let public_dns =
                        public_ip.as_ref().map(|ip| format!("ec2-{}.compute.amazonaws.com", ip.replace('.', "-")));
                    Some(InstanceStatus {
                        id: id.clone(),
                        state_reason: instance.state_reason(now),
                        state: instance_state,
                        public_ip,
                        private_ip: Some("10.0.0.10".into()),
                        public_dns,
                        private_dns: Some("ip-10-0-0-10.ec2.internal".into()),
                    })
                })
                .collect())
        })
        .await
    }

    /// A boot log; from `console_keys_at` on, cloud-init's host key block (unless a `no-keys` fault).
    async fn console_output(&self, id: &InstanceId) -> CloudResult<ConsoleOutput> {
        self.call(Action::GetConsoleOutput, |state, now| {
            let instance = state.known_instance(id, now)?;
            let mut text =
                String::from("[    0.000000] Linux version 6.1.0 (simulated)\nCloud-init v. 23.4 running 'init'\n");
            if now >= instance.console_keys_at && instance.console_fault != Some(ConsoleFault::NoKeys) {
                text.push_str(&console_block(std::slice::from_ref(&instance.host_key)));
            }
            Ok(ConsoleOutput(text))
        })
        .await
    }

    async fn stop_instance(&self, id: &InstanceId) -> CloudResult<()> {
        let stop = self.model.jittered(self.model.settings.stop);
        self.call(Action::StopInstances, |state, now| {
            let instance = state.known_instance(id, now)?;
            instance.market.stop(id)?;
            match instance.state(now) {
                InstanceState::Running => {
                    instance.stopped_at = Some(now + stop);
                    Ok(())
                }
                InstanceState::Stopping | InstanceState::Stopped => Ok(()),
                other => refuse(
                    "IncorrectInstanceState",
                    format!("The instance '{id}' is not in a state from which it can be stopped: {other:?}"),
                ),
            }
        })
        .await
    }

    async fn terminate_instance(&self, id: &InstanceId) -> CloudResult<()> {
        let terminate = self.model.jittered(self.model.settings.terminate);
        self.call(Action::TerminateInstances, |state, now| {
            let instance = state.known_instance(id, now)?;
            instance.terminated_at.get_or_insert(now + terminate);
            Ok(())
        })
        .await
    }

    async fn create_image(
        &self,
        instance: &InstanceId,
        name: &str,
        _description: Option<&str>,
        tags: &Tags,
        snapshot_tags: &Tags,
        of: ImageOf,
    ) -> CloudResult<ImageId> {
        let reboot = match of {
            ImageOf::Stopped => Reboot::No,
            ImageOf::RunningRebooted => Reboot::Yes,
        };
        self.image_of(instance, name, tags, snapshot_tags, reboot).await
    }

    /// The source is this account's image in the source region, else another account's there
    /// ([`accounts::ForeignImage::copy_by`]: launch and create-volume permission, and a grant on its key).
    async fn copy_image(&self, spec: &CopySpec) -> CloudResult<ImageId> {
        let me = accounts::account_id(&self.account);
        let (own, source_ready, source_key) = {
            let source = self.model.place(&Place { account: self.account.clone(), region: spec.source_region.clone() });
            let mut source = source.state.lock().expect("not poisoned");
            let key = source.images.get(&spec.source_image).and_then(|image| image.attributes.kms_key.clone());
            let own = source.images.contains_key(&spec.source_image);
            (own, source.image_status(&spec.source_image, Instant::now()).map(|status| status.state), key)
        };
        let elsewhere = match own {
            true => None,
            false => self.model.image_elsewhere(&spec.source_region, &spec.source_image, &self.account, me),
        };
        let keys_usable = self.model.accounts.keys_usable(&self.account);
        let id = ImageId::new(self.model.id("ami"));
        let snapshot = SnapshotId::new(self.model.id("snap"));
        let available_at = Instant::now() + self.model.jittered(self.model.settings.copy_image);
        let cap = self.model.settings.copy_concurrency;
        let foreign = self.model.settings.foreign_copies;
        let required = self.model.settings.require_tags_on_create;
        self.call(Action::CopyImage, |state, now| {
            untagged_create(required, Action::CopyImage, &spec.tags, &spec.snapshot_tags)?;
            if let Some(existing) = state.client_tokens.get(&spec.client_token) {
                return Ok(ImageId::new(existing.clone()));
            }
            let (source_ready, source_key) = match &elsewhere {
                Some((found, granted)) => (Some(found.state.clone()), found.copy_by(&spec.source_image, me, *granted)?),
                None => (source_ready.clone(), source_key.clone()),
            };
            if let Some(key) = spec.kms_key.as_deref().filter(|_| !keys_usable) {
                return refuse(
                    "InvalidKMSKey.InvalidState",
                    format!("The KMS key provided is in an incorrect state: {key} of account {me} cannot be used"),
                );
            }
            match source_ready {
                Some(ImageState::Available) => {}
                Some(_) => return refuse("IncorrectState", format!("Image {} is not available", spec.source_image)),
                None => {
                    return refuse(
                        "InvalidAMIID.NotFound",
                        format!("The image id '[{}]' does not exist in {}", spec.source_image, spec.source_region),
                    )
                }
            }
            // The per-destination cap counts every copy in flight into the region, the account's other tools'
            // included.
            let in_flight = state.copies_in_flight(now);
            if in_flight + foreign >= cap {
                return refuse(
                    "ResourceLimitExceeded",
                    format!("You have reached the limit of {cap} concurrent AMI copies into this region"),
                );
            }
            if state.image_name_in_use(&spec.name) {
                return refuse("InvalidAMIName.Duplicate", format!("AMI name {} is already in use by AMI", spec.name));
            }
            let fails = self.image_fault(Action::CopyImage);
            state.client_tokens.insert(spec.client_token.clone(), id.to_string());
            state.insert_image(
                id.clone(),
                SimImage {
                    name: spec.name.clone(),
                    created_at: now,
                    restored_creation: None,
                    available_at,
                    snapshot: snapshot.clone(),
                    copied: true,
                    fails,
                    attributes: ImageAttributes {
                        kms_key: spec.kms_key.clone().or(source_key),
                        ..ImageAttributes::default()
                    },
                },
            );
            // CopyImage's TagSpecifications: the copy and its snapshot are tagged from the start.
            Self::merge_tags(state, id.as_str(), &spec.tags);
            Self::merge_tags(state, snapshot.as_str(), &spec.snapshot_tags);
            state.peak_copies_in_flight = state.peak_copies_in_flight.max(in_flight + 1);
            Ok(id)
        })
        .await
    }

    async fn create_tags(&self, resources: &[String], tags: &Tags) -> CloudResult<()> {
        self.call(Action::CreateTags, |state, now| {
            for resource in resources {
                if let Some(code) = state.unknown_to_tags(resource, now) {
                    return refuse(code, format!("The ID '{resource}' does not exist"));
                }
            }
            for resource in resources {
                Self::merge_tags(state, resource, tags);
            }
            Ok(())
        })
        .await
    }

    async fn find_owned_images(&self, query: &ImageQuery) -> CloudResult<Vec<OwnedImage>> {
        let (epoch, started) = (self.model.epoch, self.model.started);
        self.call(Action::DescribeImages, |state, now| {
            let matching: Vec<(ImageId, Instant)> = state
                .images
                .iter()
                .filter(|(id, image)| match query {
                    ImageQuery::Named(names) => names.contains(&image.name),
                    ImageQuery::Tagged(tags) => carries(state.tags.get(id.as_str()).map(Arc::as_ref), tags),
                })
                .map(|(id, image)| (id.clone(), image.created_at))
                .collect();
            let mut found = Vec::new();
            for (id, created_at) in matching {
                if !state.settled(created_at, now) {
                    continue;
                }
                let image = &state.images[&id];
                found.push(OwnedImage {
                    name: image.name.clone(),
                    state: image.state(now),
                    creation_date: creation_date(epoch, started, image),
                    snapshot_ids: vec![image.snapshot.clone()],
                    tags: state.tags.get(id.as_str()).map(|tags| Tags::clone(tags)).unwrap_or_default(),
                    id,
                });
            }
            found.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(found)
        })
        .await
    }

    async fn find_instances(&self, tags: &Tags) -> CloudResult<Vec<Tagged<InstanceId>>> {
        self.call(Action::DescribeInstances, |state, now| {
            let matching: Vec<(InstanceId, Instant)> = state
                .instances
                .iter()
                .filter(|(id, instance)| {
                    !matches!(instance.state(now), InstanceState::ShuttingDown | InstanceState::Terminated)
                        && carries(state.tags.get(id.as_str()).map(Arc::as_ref), tags)
                })
                .map(|(id, instance)| (id.clone(), instance.launched_at))
                .collect();
            Ok(Self::settled_with_tags(state, matching, now))
        })
        .await
    }

    async fn find_security_groups(&self, tags: &Tags) -> CloudResult<Vec<Tagged<SecurityGroupId>>> {
        self.call(Action::DescribeSecurityGroups, |state, now| {
            let matching: Vec<(SecurityGroupId, Instant)> = state
                .security_groups
                .iter()
                .filter(|(id, _)| carries(state.tags.get(id.as_str()).map(Arc::as_ref), tags))
                .map(|(id, group)| (id.clone(), group.created_at))
                .collect();
            Ok(Self::settled_with_tags(state, matching, now))
        })
        .await
    }

    async fn find_key_pairs(&self, tags: &Tags) -> CloudResult<Vec<Tagged<KeyPairName>>> {
        self.call(Action::DescribeKeyPairs, |state, now| {
            let matching: Vec<(KeyPairName, Instant)> = state
                .key_pairs
                .iter()
                .filter(|(_, stored)| carries(Some(&stored.tags), tags))
                .map(|(name, stored)| (name.clone(), stored.created_at))
                .collect();
            let mut found = Vec::new();
            for (name, created_at) in matching {
                if state.settled(created_at, now) {
                    found.push(Tagged { tags: state.key_pairs[&name].tags.clone(), id: name });
                }
            }
            Ok(found)
        })
        .await
    }

    async fn deregister_image(&self, id: &ImageId) -> CloudResult<()> {
        let in_use = self.model.settings.snapshot_in_use;
        self.call(Action::DeregisterImage, |state, now| {
            let created_at = state.images.get(id).map(|image| image.created_at);
            if !created_at.is_some_and(|at| state.settled(at, now)) {
                return refuse("InvalidAMIID.NotFound", format!("The image id '[{id}]' does not exist"));
            }
            let image = state.images.remove(id).expect("just looked up");
            if state.image_names.get(&image.name) == Some(id) {
                state.image_names.remove(&image.name);
            }
            state.tags.remove(id.as_str());
            state.orphan_snapshots.insert(image.snapshot, now + in_use);
            Ok(())
        })
        .await
    }

    async fn require_imdsv2(&self, image: &ImageId) -> CloudResult<()> {
        self.call(Action::ModifyImageAttribute, |state, now| {
            state.known_image(image, now)?.attributes.imds_v2 = true;
            Ok(())
        })
        .await
    }

    async fn deprecate_image(&self, image: &ImageId, at: chrono::DateTime<chrono::Utc>) -> CloudResult<()> {
        let (epoch, started) = (self.model.epoch, self.model.started);
        self.call(Action::EnableImageDeprecation, |state, now| {
            let time = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let found = state.known_image(image, now)?;
            sharing::check_deprecation(&found.attributes, &creation_date(epoch, started, found), at)?;
            found.attributes.deprecation_time = Some(time);
            Ok(())
        })
        .await
    }

    /// EC2 refuses to share an image whose snapshots are encrypted with the AWS-managed key (only a
    /// customer-managed key's policy can let other accounts use it), and to make one public where block public
    /// access is on or whose snapshots are encrypted ([`sharing`]).
    async fn share_image(&self, image: &ImageId, with: &LaunchPermissions) -> CloudResult<()> {
        let blocked = self.model.settings.block_public_access.blocks(&self.region);
        self.call(Action::ModifyImageAttribute, |state, now| {
            let found = state.known_image(image, now)?;
            if found.attributes.kms_key.as_deref().is_some_and(is_aws_managed_key) {
                return refuse(
                    "InvalidParameter",
                    format!("Snapshots encrypted with the AWS Managed CMK can't be shared ({image})"),
                );
            }
            sharing::grant(&mut found.attributes, with, blocked, image.as_str())
        })
        .await
    }

    async fn share_snapshot(&self, snapshot: &SnapshotId, accounts: &[String]) -> CloudResult<()> {
        self.call(Action::ModifySnapshotAttribute, |state, now| {
            let image = state.images.iter().find(|(_, image)| &image.snapshot == snapshot).map(|(id, _)| id.clone());
            let Some(image) = image else {
                return refuse("InvalidSnapshot.NotFound", format!("The snapshot '{snapshot}' does not exist."));
            };
            let found = state.known_image(&image, now)?;
            if found.attributes.kms_key.as_deref().is_some_and(is_aws_managed_key) {
                return refuse(
                    "InvalidParameter",
                    format!("Snapshots encrypted with the AWS Managed CMK can't be shared ({snapshot})"),
                );
            }
            for account in accounts {
                if !found.attributes.snapshot_permissions.contains(account) {
                    found.attributes.snapshot_permissions.push(account.clone());
                }
            }
            Ok(())
        })
        .await
    }

    /// As SSM ([`ssm`]): a version number at once, the version itself once the image id is validated.
    async fn put_image_parameter(&self, name: &str, image: &ImageId) -> CloudResult<u64> {
        self.call(Action::PutParameter, |state, now| {
            // SSM's validation accepts an image the account may launch: its own, available, or a public one.
            let exists = state.images.get(image).is_some_and(|found| found.state(now) == ImageState::Available)
                || state.public_images.contains_key(image);
            let fails = self
                .model
                .firing(Action::PutParameter, &self.region, |effect| matches!(effect, FaultEffect::ValidationFails))
                .is_some();
            state.publishing.put(name, image, exists && !fails, now)
        })
        .await
    }

    /// A launch template `[sim] launch_templates` declares gets a new version, made its default.
    async fn launch_template_version(
        &self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> CloudResult<(String, u64)> {
        self.call(Action::CreateLaunchTemplateVersion, |state, _| {
            state.publishing.template_version(name, image, description)
        })
        .await
    }

    /// Every key exists and is enabled (an account's `key` fault: disabled); `alias/aws/…` are AWS-managed.
    /// Each account's keys are its own.
    async fn describe_key(&self, key: &str) -> CloudResult<Option<KmsKey>> {
        let arn = accounts::key_arn(&self.account, &self.region, key);
        let enabled = self.model.accounts.keys_usable(&self.account);
        self.call(Action::DescribeKey, |_, _| Ok(Some(KmsKey { arn, enabled, aws_managed: is_aws_managed_key(key) })))
            .await
    }

    /// A deregistered image's snapshot stays in use for a while (`[sim] snapshot_in_use`): EC2 answers
    /// `InvalidSnapshot.InUse` to a DeleteSnapshot right after DeregisterImage until the image is fully gone.
    async fn delete_snapshot(&self, id: &SnapshotId) -> CloudResult<()> {
        self.call(Action::DeleteSnapshot, |state, now| {
            let in_use = || refuse("InvalidSnapshot.InUse", format!("The snapshot {id} is currently in use by an AMI"));
            if state.images.values().any(|image| &image.snapshot == id) {
                return in_use();
            }
            match state.orphan_snapshots.get(id) {
                None => return refuse("InvalidSnapshot.NotFound", format!("The snapshot '{id}' does not exist.")),
                Some(released_at) if now < *released_at => return in_use(),
                Some(_) => state.orphan_snapshots.remove(id),
            };
            Ok(())
        })
        .await
    }

    /// As DescribeInstanceInformation filtered by the instance's id: listed `Online` once its agent has
    /// registered (`[sim] agent_online` after it runs) and while it runs; an instance whose agent never
    /// registered is not listed (`false`), nor is one EC2 itself does not know.
    async fn agent_online(&self, instance: &InstanceId) -> CloudResult<bool> {
        self.call(Action::DescribeInstanceInformation, |state, now| {
            Ok(state.instances.get(instance).is_some_and(|found| found.agent_online(now)))
        })
        .await
    }

    /// As StartSession with `AWS-StartSSHSession`: `TargetNotConnected` until the instance's agent is online.
    ///
    /// A model assertion beside SSM's rules: the instance must be in a security group with no ingress rule.
    /// Session Manager needs no inbound port (AWS: "Session Manager … no need to open inbound ports"; the agent
    /// connects out to the ssm, ssmmessages and ec2messages endpoints over HTTPS), and a build reached through
    /// it promises to open none; a session to an instance whose group has one is refused with
    /// `SimModelAssertion`, a code no AWS service answers, so the run fails loudly rather than pass.
    async fn start_session(&self, instance: &InstanceId, _port: u16) -> CloudResult<SsmSession> {
        let id = SessionId::new(self.model.id("simulated"));
        self.call(Action::StartSession, |state, now| {
            let Some(found) = state.instances.get(instance) else {
                return refuse("TargetNotConnected", format!("{instance} is not connected."));
            };
            if !found.agent_online(now) {
                return refuse("TargetNotConnected", format!("{instance} is not connected."));
            }
            let group = &found.security_group;
            if let Some((_, cidr)) = state.ingress_log.iter().find(|(with_rule, _)| with_rule == group) {
                return refuse(
                    "SimModelAssertion",
                    format!(
                        "model assertion: a Session Manager session to {instance}, whose security group {group} has an ingress rule from {cidr}: a build reached through Session Manager must open no inbound port"
                    ),
                );
            }
            state.sessions.insert(id.clone(), instance.clone());
            state.sessions_started += 1;
            Ok(SsmSession {
                stream_url: format!("wss://ssmmessages.{}.amazonaws.com/v1/data-channel/{id}", self.region),
                token: SessionToken::new(format!("simulated token of {id}")),
                id,
            })
        })
        .await
    }

    /// As TerminateSession: idempotent (a session that ended, or that SSM does not know, is no error).
    async fn terminate_session(&self, session: &SessionId) -> CloudResult<()> {
        self.call(Action::TerminateSession, |state, _| {
            state.sessions.remove(session);
            Ok(())
        })
        .await
    }

    /// As DescribeSessions, `State = Active`, filter `Target`: the sessions open to `instance` now.
    async fn active_sessions(&self, instance: &InstanceId) -> CloudResult<Vec<SessionId>> {
        self.call(Action::DescribeSessions, |state, _| {
            Ok(state.sessions.iter().filter(|(_, target)| *target == instance).map(|(id, _)| id.clone()).collect())
        })
        .await
    }

    async fn parameter_history(&self, name: &str) -> CloudResult<Option<ParameterHistory>> {
        self.call(Action::GetParameterHistory, |state, now| Ok(state.publishing.history(name, now))).await
    }

    async fn label_parameter_version(&self, name: &str, version: u64, label: &str) -> CloudResult<()> {
        self.call(Action::LabelParameterVersion, |state, now| state.publishing.label(name, version, label, now)).await
    }

    async fn unlabel_parameter_version(&self, name: &str, version: u64, labels: &[String]) -> CloudResult<()> {
        self.call(Action::UnlabelParameterVersion, |state, now| state.publishing.unlabel(name, version, labels, now))
            .await
    }

    async fn launch_template_id(&self, name: &str) -> CloudResult<Option<String>> {
        self.call(Action::DescribeLaunchTemplates, |state, _| {
            Ok(state.publishing.launch_templates.get(name).map(|template| template.id.clone()))
        })
        .await
    }

    async fn launch_template_version_made(
        &self,
        name: &str,
        image: &ImageId,
        description: &str,
    ) -> CloudResult<Option<(String, u64)>> {
        self.call(Action::DescribeLaunchTemplateVersions, |state, _| {
            state.publishing.template_version_made(name, image, description)
        })
        .await
    }

    async fn image_block_public_access(&self) -> CloudResult<ImageBlockPublicAccess> {
        let blocked = self.model.settings.block_public_access.blocks(&self.region);
        self.call(Action::GetImageBlockPublicAccessState, |_, _| {
            Ok(if blocked { ImageBlockPublicAccess::BlockNewSharing } else { ImageBlockPublicAccess::Unblocked })
        })
        .await
    }

    async fn launch_permissions(&self, image: &ImageId) -> CloudResult<LaunchPermissions> {
        self.call(Action::DescribeImageAttribute, |state, now| Ok(state.known_image(image, now)?.attributes.launch()))
            .await
    }

    async fn unshare_image(&self, image: &ImageId, from: &LaunchPermissions) -> CloudResult<()> {
        self.call(Action::ModifyImageAttribute, |state, now| {
            sharing::revoke(&mut state.known_image(image, now)?.attributes, from);
            Ok(())
        })
        .await
    }

    async fn snapshot_permissions(&self, snapshot: &SnapshotId) -> CloudResult<Vec<String>> {
        self.call(Action::DescribeSnapshotAttribute, |state, now| {
            let image = state.image_of_snapshot(snapshot)?;
            Ok(state.known_image(&image, now)?.attributes.snapshot_permissions.clone())
        })
        .await
    }

    async fn unshare_snapshot(&self, snapshot: &SnapshotId, accounts: &[String]) -> CloudResult<()> {
        self.call(Action::ModifySnapshotAttribute, |state, now| {
            let image = state.image_of_snapshot(snapshot)?;
            let found = state.known_image(&image, now)?;
            found.attributes.snapshot_permissions.retain(|account| !accounts.contains(account));
            Ok(())
        })
        .await
    }

    async fn describe_regions(&self) -> CloudResult<Vec<RegionOptIn>> {
        let known: Vec<Region> = self.model.regions().into_iter().map(|(region, _)| region).collect();
        self.call(Action::DescribeRegions, |_, _| Ok(self.model.account.regions(known.iter()))).await
    }

    /// The account's own parameters as SSM keeps them ([`ssm`]); AWS's public `/aws/service/…` ones name an
    /// image of the catalog, each region's own ([`catalog::public_parameter`]), at version 1; any other
    /// name is `ParameterNotFound`'s `None`.
    async fn parameter(&self, name: &str) -> CloudResult<Option<crate::cloud::ParameterVersion>> {
        let region = self.region.clone();
        self.call(Action::GetParameter, |state, now| {
            if let Some(current) = state.publishing.current(name, now) {
                return Ok(Some(current));
            }
            Ok(catalog::public_parameter(&region, name).map(|image| {
                let value = image.id.to_string();
                state.public_images.insert(image.id.clone(), image);
                crate::cloud::ParameterVersion { version: 1, value, labels: Vec::new() }
            }))
        })
        .await
    }

    /// As KMS CreateGrant: kept on the key, in its place ([`accounts::KmsGrants`]); the same name, key and
    /// grantee answer the grant made before. An AWS-managed key takes no grant for another account (its
    /// policy cannot be changed: images encrypted with it cannot be shared).
    async fn grant_key_use(&self, key: &str, grantee: &str, name: &str) -> CloudResult<KmsGrantId> {
        let key_arn = accounts::key_arn(&self.account, &self.region, key);
        let minted = format!("{:016x}{}", fnv1a(&key_arn), self.model.id("grant").trim_start_matches("grant-0"));
        self.call(Action::CreateGrant, |state, now| {
            if is_aws_managed_key(key) {
                return refuse(
                    "AccessDeniedException",
                    format!("You cannot create a grant on the AWS managed key {key}"),
                );
            }
            if !accounts::is_grant_name(name) {
                return refuse(
                    "ValidationException",
                    format!("1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9:/_-]+$"),
                );
            }
            if accounts::account_of_principal(grantee).is_none() {
                return refuse("InvalidArnException", format!("Invalid grantee principal {grantee}"));
            }
            Ok(state.kms_grants.grant(key_arn, grantee, name, now, || format!("{minted:0>64}")))
        })
        .await
    }

    /// As KMS RevokeGrant: a grant the key no longer has is `Ok` (the port's promise; KMS answers
    /// `NotFoundException`).
    async fn revoke_key_grant(&self, key: &str, grant: &KmsGrantId) -> CloudResult<()> {
        let key_arn = accounts::key_arn(&self.account, &self.region, key);
        self.call(Action::RevokeGrant, |state, _| {
            state.kms_grants.revoke(&key_arn, grant);
            Ok(())
        })
        .await
    }

    /// Each snapshot's key as its image's (by its ARN in this place, as DescribeSnapshots names it); a
    /// snapshot the place does not have is left out.
    async fn snapshot_keys(&self, snapshots: &[SnapshotId]) -> CloudResult<Vec<SnapshotKey>> {
        self.call(Action::DescribeSnapshots, |state, _| {
            Ok(snapshots
                .iter()
                .filter_map(|snapshot| {
                    let image = state.images.values().find(|image| &image.snapshot == snapshot)?;
                    let key = image.attributes.kms_key.as_deref();
                    Some(SnapshotKey {
                        snapshot: snapshot.clone(),
                        encrypted: key.is_some(),
                        kms_key: key.map(|key| accounts::key_arn(&self.account, &self.region, key)),
                    })
                })
                .collect())
        })
        .await
    }

    /// The templates `[sim] launch_templates` declares, as `[publish]` versioned them ([`in_use`]).
    async fn launch_template_images(&self) -> CloudResult<Vec<crate::cloud::TemplateImage>> {
        self.call(Action::DescribeLaunchTemplateVersions, |state, _| Ok(in_use::template_images(&state.publishing)))
            .await
    }

    /// The instances not terminated launched from any of `images` ([`in_use`]).
    async fn instances_of_images(&self, images: &[ImageId]) -> CloudResult<Vec<crate::cloud::ImageUser>> {
        self.call(Action::DescribeInstances, |state, now| {
            Ok(state
                .launched_from
                .of(images)
                .filter_map(|(id, image)| {
                    let instance = state.instances.get(id)?;
                    let instance_state = instance.state(now);
                    (instance_state != InstanceState::Terminated).then(|| crate::cloud::ImageUser {
                        instance: id.clone(),
                        state: in_use::state_name(&instance_state).to_string(),
                        image: image.clone(),
                    })
                })
                .collect())
        })
        .await
    }
    /// As DescribeKeyPairs by name then CreateTags on its id: one the account does not have (or does not know
    /// yet: EC2's lag) is `InvalidKeyPair.NotFound`.
    async fn tag_key_pair(&self, name: &KeyPairName, tags: &Tags) -> CloudResult<()> {
        self.call(Action::CreateTags, |state, now| {
            let created_at = state.key_pairs.get(name).map(|pair| pair.created_at);
            if !created_at.is_some_and(|at| state.settled(at, now)) {
                return refuse("InvalidKeyPair.NotFound", format!("The key pair '{name}' does not exist"));
            }
            let pair = state.key_pairs.get_mut(name).expect("just looked up");
            pair.tags.extend(tags.clone());
            Ok(())
        })
        .await
    }
}

mod ssm;

mod in_use;

mod sharing;

mod organizations;

pub mod spot;
#[cfg(test)]
mod tests;

mod spot_capacity;

pub mod admission;
