//! The simulated cloud behind `--cloud sim`: an in-process EC2 (`model`) behind the same cloud port the aws
//! adapter implements, and the public images it knows ([`catalog`]). It runs in Tokio's paused clock: a night
//! of builds passes in seconds. Its communicator, which provisions nothing, is `remote::sim`: it asks
//! [`SimCloud::ssh_ready_at`] when an instance's sshd answers.
//!
//! At the end of a run, [`SimCloud::report`] says what is left in the model: a leak is a bug.

pub mod catalog;
mod model;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub use model::persist::{SimStateError, STATE_VERSION};
pub use model::ImageAttributes;
use model::{kept, Model, SimRegion};

use crate::cloud::aws::STS;
use crate::cloud::{
    Action, BaseCredentials, Cloud, CloudError, CloudResult, CredentialsStatus, ErrorKind, Identity, ImageState,
    InstanceId, InstanceState, RegionCloud,
};
use crate::config::{ConsoleFault, Fleet, Place, Region, SimSettings};
use crate::util::host_keys::{ed25519_from_seed, HostKey};

/// The simulated account's id.
pub const SIMULATED_ACCOUNT: &str = crate::config::SIMULATED_OWN_ACCOUNT;

/// The simulated account.
pub struct SimCloud {
    model: Arc<Model>,
    /// With `[sim] state`, opened to be kept ([`SimCloud::open_to_keep`]): the account's lock, held while this lives.
    _lock: Option<model::persist::StateLock>,
}

/// What the model saw and what is left in it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SimReport {
    /// Temporary resources still in the account: instances not terminated, key pairs, security groups,
    /// Session Manager sessions not ended, KMS grants not revoked.
    /// (In the run statistics at the top level, as `leaked_resources`.)
    #[serde(skip)]
    pub leaked_resources: Vec<String>,
    /// `--keep-failed`: a failed build's resources kept on purpose, their `fleetbake:keep-until` still to come
    /// (past it, they are leaks).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_resources: Vec<String>,
    /// What an earlier run on this `[sim] state` account left (neither kept nor this run's): said, not this run's
    /// leak (`fleetbake gc --cloud sim` removes it).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub left_by_earlier_runs: Vec<String>,
    /// The most copies in flight into each region at once.
    pub peak_copies_in_flight: BTreeMap<Region, usize>,
    /// RequestLimitExceeded answered because a bucket was empty (not counting configured faults).
    pub throttled_by_buckets: u64,
    pub faults_injected: u64,
    /// Answers that said "not found" about, or left out, a resource younger than `consistency_lag`.
    pub lagged_answers: u64,
    /// The most DescribeImages (or DescribeInstances) by id, all regions together, in any one window of the
    /// batch interval.
    pub peak_describes_per_interval: usize,
    /// Every SSH ingress rule the run opened: `sg-… in region: cidr`.
    pub ingress: Vec<String>,
    /// Session Manager sessions StartSession opened (each must be ended: one still open is a leaked resource).
    pub sessions_started: u64,
    /// Every image the account owns at the end, by region: what a manifest can be checked against.
    pub images: Vec<SimImageReport>,
    /// What is published at the end: `region ssm NAME vN = ami-… [labels]`, `region launch-template NAME
    /// vN (default) = ami-…`.
    pub published: Vec<String>,
    /// AssumeRole calls made for `[aws] role_arn` (the first session, then each renewal).
    pub assume_role_calls: u64,
    /// AssumeRole calls made for each other account's role (`[sim] accounts`; refused ones included).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub assume_role_calls_by_account: BTreeMap<String, u64>,
    /// The most copies in flight at once into each region of another account (`account/region`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub peak_copies_in_flight_elsewhere: BTreeMap<String, usize>,
    /// KMS grants made (CreateGrant, a repeat by name not counted) and revoked, all accounts together.
    pub kms_grants_created: u64,
    pub kms_grants_revoked: u64,
    /// Instances RunInstances launched, by market and type (`"spot t3.micro"`), all places together.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub instances_launched: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SimImageReport {
    /// The account that owns it (12 digits; the own account is `SIMULATED_ACCOUNT`).
    pub account: String,
    pub region: Region,
    pub id: String,
    pub name: String,
    pub available: bool,
    /// The image's `fleetbake:run-id` tag, and its snapshot's: how a test sees that both were tagged.
    pub run_id_tag: Option<String>,
    pub snapshot_run_id_tag: Option<String>,
    /// The ARN of the key its snapshot is encrypted with, as its account resolves `attributes.kms_key` (an
    /// alias names that account's key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
    /// Its encryption, IMDSv2 support, deprecation and permissions.
    #[serde(skip_serializing_if = "ImageAttributes::is_default")]
    pub attributes: ImageAttributes,
}

impl SimCloud {
    /// A new account of this process, whatever `[sim] state` says (see [`SimCloud::open`]).
    pub fn new(fleet: &Fleet) -> Self {
        SimCloud::with_model(fleet, Model::new(fleet.sim.clone()))
    }

    /// The account `[sim]` describes: with `[sim] state`, continued from that file ([`model::persist`]); an
    /// unreadable or incompatible file is an error naming it.
    pub fn open(fleet: &Fleet) -> Result<Self, SimStateError> {
        Ok(SimCloud::with_model(fleet, model::persist::open(fleet.sim.clone())?))
    }

    /// [`SimCloud::open`] for a command that will [`SimCloud::save`] the account (matrix, gc): with `[sim] state`,
    /// its lock is taken first (its directory made if missing) and held while this lives; a second such
    /// command on the same file is refused, naming it.
    pub fn open_to_keep(fleet: &Fleet) -> Result<Self, SimStateError> {
        let lock = fleet.sim.state.as_deref().map(model::persist::lock).transpose()?;
        let mut cloud = SimCloud::open(fleet)?;
        cloud._lock = lock;
        Ok(cloud)
    }

    /// Keeps the account in its `[sim] state` file, if it has one (atomically, 0600); else nothing.
    pub fn save(&self) -> Result<(), SimStateError> {
        model::persist::save(&self.model)
    }

    /// A run's clock on this account: it reads the account's wall time (after a saved account's last time).
    pub fn run_clock(&self) -> crate::util::clock::RunClock {
        crate::util::clock::RunClock::starting_at(self.model.wall.now())
    }

    fn with_model(fleet: &Fleet, model: Arc<Model>) -> Self {
        // `[aws] role_arn`: the simulated account assumes it as the aws adapter would.
        if let Some(role) = &fleet.aws.role {
            model.account.act_as(role.clone());
        }
        model.accounts.set_roles(fleet.aws.distribution_roles.clone());
        SimCloud { model, _lock: None }
    }

    pub fn settings(&self) -> &SimSettings {
        &self.model.settings
    }

    /// Whether a `[sim] faults` `test` entry fails this run of a build's image tests.
    pub fn test_fails(&self, region: &Region) -> bool {
        self.model.test_fails(region)
    }

    /// Whether a `[sim] faults` `provision` fault fails this run of a build's provisioners in `region`.
    pub fn provision_fails(&self, region: &Region) -> bool {
        self.model.provision_fails(region)
    }

    /// `duration` ± the configured jitter.
    pub fn jittered(&self, duration: Duration) -> Duration {
        self.model.jittered(duration)
    }

    /// When the instance's sshd answers (`[sim] ssh_ready` after it runs), or why it never will: it is not
    /// running, or does not exist.
    pub fn ssh_ready_at(&self, region: &Region, instance: &InstanceId) -> Result<Instant, String> {
        let region = self.model.region(region);
        let state = region.state.lock().expect("not poisoned");
        match state.instances.get(instance) {
            Some(found) if found.state(Instant::now()) == InstanceState::Running => Ok(found.ssh_at),
            Some(found) => Err(format!("instance {instance} is {:?}", found.state(Instant::now()))),
            None => Err(format!("instance {instance} does not exist")),
        }
    }

    /// When EC2 takes the spot instance back, if it will (`[sim] spot.interrupt_after`): its SSH connection
    /// drops then ([`model::spot`]).
    pub fn interrupted_at(&self, region: &Region, instance: &InstanceId) -> Option<Instant> {
        let region = self.model.region(region);
        let state = region.state.lock().expect("not poisoned");
        let found = state.instances.get(instance)?;
        found.market.interrupted_at(found.user_terminated_at())
    }

    /// Whether the instance's security group admits SSH from the runner (or, `through_bastion`, the bastion),
    /// as EC2 would let the connection in: an ingress rule names its address, a group it runs in, or a prefix
    /// list holding its address ([`model::admission`]). `Err`: why not, said once the connection times out.
    pub fn ssh_admission(&self, region: &Region, instance: &InstanceId, through_bastion: bool) -> Result<(), String> {
        let settings = &self.model.settings;
        let origin = model::admission::Origin::of(settings, through_bastion);
        let region = self.model.region(region);
        let state = region.state.lock().expect("not poisoned");
        let Some(group) = state.instances.get(instance).map(|found| found.security_group.clone()) else {
            return Err(format!("instance {instance} does not exist"));
        };
        let rules: Vec<_> = state.ingress_log.iter().filter(|(id, _)| id == &group).map(|(_, rule)| rule).collect();
        if rules.iter().any(|rule| origin.admitted_by(rule, &settings.prefix_lists)) {
            return Ok(());
        }
        let rules: Vec<String> = rules.iter().map(ToString::to_string).collect();
        Err(format!(
            "its security group {group} admits {} on SSH, not {}",
            if rules.is_empty() { "nobody".to_string() } else { rules.join(", ") },
            origin.describe()
        ))
    }

    /// The host key whoever answers on the instance's address offers: the instance's own, or (a `[sim] faults`
    /// `console = "other-key"`) another machine's.
    pub fn offered_host_key(&self, region: &Region, instance: &InstanceId) -> Result<HostKey, String> {
        let region = self.model.region(region);
        let state = region.state.lock().expect("not poisoned");
        match state.instances.get(instance) {
            Some(found) if found.console_fault == Some(ConsoleFault::OtherKey) => {
                Ok(ed25519_from_seed(&format!("someone else at {instance}")))
            }
            Some(found) => Ok(found.host_key.clone()),
            None => Err(format!("instance {instance} does not exist")),
        }
    }

    /// A refusal of an STS call, as the port's error.
    fn sts_error(action: Action, code: String, message: String) -> CloudError {
        CloudError { action, region: Region::new(STS), kind: ErrorKind::of_code(&code), code: Some(code), message }
    }

    /// With `[aws] role_arn`: the role's session ARN (AssumeRole made when due, counted); else the base ARN.
    fn acting_arn(&self) -> CloudResult<String> {
        let now = Instant::now();
        match self.model.account.role() {
            Some(role) => self
                .model
                .account
                .assume(role, now)
                // Refused to the call that needed the session: the provider's AssumeRole is not one of the
                // run's own actions (the base identity's `sts:AssumeRole`, not in docs/iam-policy.json).
                .map_err(|refusal| Self::sts_error(Action::GetCallerIdentity, refusal.code, refusal.message)),
            None if self.model.account.expired(now) => Err(Self::sts_error(
                Action::GetCallerIdentity,
                "ExpiredToken".into(),
                "The security token included in the request is expired".into(),
            )),
            None => Ok(self.model.account.base_arn(SIMULATED_ACCOUNT)),
        }
    }

    /// What is left, and the peaks, as of now.
    pub fn report(&self, batch_interval: Duration) -> SimReport {
        let now = Instant::now();
        let mut report = SimReport {
            throttled_by_buckets: self.model.throttled.load(Ordering::Relaxed),
            faults_injected: self.model.faults_injected.load(Ordering::Relaxed),
            assume_role_calls: self.model.account.assume_role_calls.load(Ordering::Relaxed),
            assume_role_calls_by_account: self.model.accounts.assume_role_calls(),
            ..SimReport::default()
        };
        let mut describes: BTreeMap<Action, Vec<Instant>> = BTreeMap::new();
        for (place, model) in self.model.places() {
            let region = place.region.clone();
            let state = model.state.lock().expect("not poisoned");
            report.kms_grants_created += state.kms_grants.created;
            report.kms_grants_revoked += state.kms_grants.revoked;
            // Kept (`--keep-failed`: gc removes it once its time is past) or leaked.
            // An earlier run's (`[sim] state`) is said apart: not this run's leak.
            let mut left = |what: String, tags: Option<&crate::config::Tags>, earlier: bool| match kept::kept_until(
                tags,
                &self.model.wall,
            ) {
                Some((until, false)) => report.kept_resources.push(format!("{what} until {}", until.to_rfc3339())),
                Some((until, true)) => {
                    report.kept_resources.push(format!("{what} until {} (past: gc removes it)", until.to_rfc3339()))
                }
                None if earlier => report.left_by_earlier_runs.push(what),
                None => report.leaked_resources.push(what),
            };
            for (id, instance) in &state.instances {
                // An instance an earlier run launched (`[sim] state`) is not this run's launch, only what is left.
                if !instance.restored(&self.model) {
                    *report
                        .instances_launched
                        .entry(format!("{} {}", instance.market.bought(), instance.instance_type))
                        .or_default() += 1;
                }
                let instance_state = instance.state(now);
                if instance_state != InstanceState::Terminated {
                    let what = format!("instance {id} in {place} ({instance_state:?})");
                    left(what, state.tags_of(id.as_str()), instance.restored(&self.model));
                }
            }
            for (name, pair) in &state.key_pairs {
                left(format!("key pair {name} in {place}"), Some(&pair.tags), pair.restored(&self.model));
            }
            for (id, group) in &state.security_groups {
                let what = format!("security group {id} in {place}");
                left(what, state.tags_of(id.as_str()), group.restored(&self.model));
            }
            for (id, image) in &state.images {
                if let ImageState::Failed(why) = image.state(now) {
                    let what = format!("image {id} in {place} ({why}, never deregistered)");
                    if image.restored() {
                        report.left_by_earlier_runs.push(what);
                    } else {
                        report.leaked_resources.push(what);
                    }
                }
            }
            for (id, grant) in state.kms_grants.all() {
                report.leaked_resources.push(format!(
                    "KMS grant {id} ({}) on {} for {}, never revoked",
                    grant.name, grant.key_arn, grant.grantee
                ));
            }
            for (id, instance) in &state.sessions {
                report.leaked_resources.push(format!("session {id} in {place} (to {instance}, never terminated)"));
            }
            report.sessions_started += state.sessions_started;
            for (id, released_at) in &state.orphan_snapshots {
                let what = format!("snapshot {id} in {place} (of a deregistered image)");
                // Released before this process started: an earlier run's (restored as released long ago).
                if *released_at < self.model.started() {
                    report.left_by_earlier_runs.push(what);
                } else {
                    report.leaked_resources.push(what);
                }
            }
            report.lagged_answers += state.lagged;
            let mut images: Vec<SimImageReport> = state
                .images
                .iter()
                .map(|(id, image)| SimImageReport {
                    account: model::accounts::account_id(&place.account).to_string(),
                    region: region.clone(),
                    id: id.to_string(),
                    name: image.name.clone(),
                    available: image.state(now) == ImageState::Available,
                    run_id_tag: state.tag_of(id.as_str(), "fleetbake:run-id"),
                    snapshot_run_id_tag: state.tag_of(image.snapshot().as_str(), "fleetbake:run-id"),
                    kms_key_arn: image
                        .attributes
                        .kms_key
                        .as_deref()
                        .map(|key| model::accounts::key_arn(&place.account, &region, key)),
                    attributes: image.attributes.clone(),
                })
                .collect();
            images.sort_by(|a, b| a.id.cmp(&b.id));
            report.images.extend(images);
            report.ingress.extend(state.ingress_log.iter().map(|(id, cidr)| format!("{id} in {region}: {cidr}")));
            for (name, parameter) in &state.publishing.parameters {
                for version in &parameter.versions {
                    let labels = version.labels.join(",");
                    report
                        .published
                        .push(format!("{region} ssm {name} v{} = {} [{labels}]", version.version, version.value));
                }
            }
            for (name, template) in &state.publishing.launch_templates {
                for (index, (image, _)) in template.versions.iter().enumerate().skip(1) {
                    let number = index as u64 + 1;
                    let mark = if number == template.default { " (default)" } else { "" };
                    let image = image.as_ref().map_or("-".to_string(), ToString::to_string);
                    report.published.push(format!("{region} launch-template {name} v{number}{mark} = {image}"));
                }
            }
            if state.peak_copies_in_flight > 0 && place.account.is_own() {
                report.peak_copies_in_flight.insert(region.clone(), state.peak_copies_in_flight);
            } else if state.peak_copies_in_flight > 0 {
                report.peak_copies_in_flight_elsewhere.insert(place.to_string(), state.peak_copies_in_flight);
            }
            for (action, at) in &state.describes {
                describes.entry(*action).or_default().push(*at);
            }
        }
        report.peak_describes_per_interval =
            describes.into_values().map(|times| peak_in_window(times, batch_interval)).max().unwrap_or(0);
        report
    }
}

/// The most instants in any half-open window `[t, t + window)`.
fn peak_in_window(mut times: Vec<Instant>, window: Duration) -> usize {
    times.sort();
    let mut start = 0;
    let mut peak = 0;
    for end in 0..times.len() {
        while times[end] >= times[start] + window {
            start += 1;
        }
        peak = peak.max(end - start + 1);
    }
    peak
}

#[async_trait::async_trait]
impl Cloud for SimCloud {
    async fn caller_identity(&self) -> CloudResult<Identity> {
        let arn = self.acting_arn()?;
        let account = arn.split(':').nth(4).unwrap_or(SIMULATED_ACCOUNT).to_string();
        Ok(Identity { account, arn })
    }

    fn region(&self, region: &Region) -> Arc<dyn RegionCloud> {
        Arc::new(SimRegion::new(&self.model, &Place::own(region.clone())))
    }

    fn place(&self, place: &Place) -> Arc<dyn RegionCloud> {
        Arc::new(SimRegion::new(&self.model, place))
    }

    /// `[sim] credentials` as the provider chain would give them: with `[aws] role_arn`, the role's sessions
    /// (renewed, `AssumeRoleProvider`) on top of the simulated base credentials.
    async fn credentials(&self) -> CloudResult<CredentialsStatus> {
        let (expires_in, refreshable) = self.model.account.lifetime(Instant::now());
        let source = if refreshable { "simulated (renewed)" } else { "simulated (static)" }.to_string();
        match self.model.account.role() {
            None => {
                Ok(CredentialsStatus { source, refreshable, expires_in, temporary: expires_in.is_some(), base: None })
            }
            Some(role) => {
                let base = BaseCredentials {
                    arn: self.model.account.base_arn(SIMULATED_ACCOUNT),
                    source,
                    refreshable,
                    expires_in,
                    temporary: expires_in.is_some(),
                };
                Ok(CredentialsStatus {
                    source: "AssumeRoleProvider".into(),
                    refreshable: true,
                    expires_in: Some(role.duration),
                    temporary: true,
                    base: Some(Box::new(base)),
                })
            }
        }
    }

    /// `[sim] organizational_units`, answered as Organizations would; refused as `ListChildren` with the code.
    async fn organization_unit_accounts(&self, unit: &str) -> CloudResult<Vec<String>> {
        self.model.unit_accounts(unit).map_err(|refusal| CloudError {
            action: Action::ListChildren,
            region: Region::new(crate::cloud::ORGANIZATIONS),
            kind: ErrorKind::of_code(&refusal.code),
            code: Some(refusal.code),
            message: refusal.message,
        })
    }
}
