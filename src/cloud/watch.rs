//! Waiting for EC2, batched and adaptive.
//!
//! Jobs wait for instances (running, stopped, terminated) and images (available) through [`RegionWaits`].
//! Checks in one region are coalesced: every check asked for while a describe is due joins it, and a region's
//! describes of one kind are at least [`BATCH_INTERVAL`] apart — one DescribeImages and one DescribeInstances
//! per region per interval, however many jobs wait there (but see "checked soon" below). The waits of a region keep one cadence: each check
//! falls on a multiple of its interval ([`CADENCE`], doubling to a ceiling of 5 s for instances and 10 s for
//! images, and past it, for a wait that has lasted minutes, up to 1/30 of the time waited) counted from the
//! run's origin, so waits at the same interval check at the same instants and a region whose waits all have
//! minutes to go describes at most every 10 s. Each wait's first check comes from what the run has learned:
//! the shortest time the same kind of wait has taken so far — also for a wait that began before any ended,
//! which skips ahead once one does.
//!
//! A state that may already be reached is checked soon: until the run has seen a wait of that kind take a
//! cadence step or longer (nothing learned yet, or a cloud that answers in under a second: moto, LocalStack),
//! a wait first checks right after the call that started it (on a 125 ms step) and then at a short interval
//! ([`WaitKind::soon_interval`]) that doubles onto the cadence; its first describe may go 125 ms after the
//! region's last one of that kind, its later ones that interval after. Once such waits are seen to take longer, they keep the cadence above.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cloud::consistency::Created;
use crate::cloud::wait::{poll_until_not_before, Poll, PollPolicy, WaitError};
use crate::cloud::{
    Action, Cloud, CloudError, CloudResult, ErrorKind, ImageId, ImageState, ImageStatus, InstanceId, InstanceState,
    InstanceStatus, RegionCloud, SnapshotId,
};
use crate::config::{Place, Region};

/// The shortest time between two describes of one kind in one region, for waits on the cadence (a wait
/// checked soon may have one sent its [`WaitKind::soon_interval`] after the last).
pub const BATCH_INTERVAL: Duration = Duration::from_secs(2);
/// The step of a region's cadence: every check of a batched wait falls on a multiple of it, and its first
/// interval after a check.
pub const CADENCE: Duration = Duration::from_millis(2500);
/// The step a soon wait's first check is aligned to: waits begun within it share one describe.
const SOON_STEP: Duration = Duration::from_millis(125);
/// Instance state changes take seconds to minutes.
const INSTANCE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// What a job waits for; the run learns how long each kind takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WaitKind {
    InstanceRunning,
    InstanceStopped,
    InstanceTerminated,
    ImageCreated,
    ImageCopied,
}

impl WaitKind {
    /// The first pause of a wait that may end within seconds, before it doubles onto the cadence ([`CADENCE`]
    /// is 4 and 2 of them). The first check itself comes at once, as the waiters of the AWS SDK for Go that the
    /// Packer amazon plugin waits with make their first attempt at once (`builder/common/state.go`:
    /// `WaitUntilInstanceRunning`, `WaitUntilAMIAvailable`, `WaitUntilInstanceTerminated`;
    /// `builder/common/step_stop_ebs_instance.go`: `WaitUntilInstanceStoppedWithContext`) and only then sleep
    /// their delay (15 s unless `AWS_POLL_DELAY_SECONDS` says otherwise). EC2's instance states change within
    /// seconds ("Instance lifecycle": pending to running, stopping to stopped), so an instance is looked at
    /// again after 0.625 s; an image is made from its snapshots in minutes ("Create an Amazon EBS-backed AMI",
    /// "Copy an AMI"), so after 1.25 s.
    fn soon_interval(self) -> Duration {
        match self {
            WaitKind::InstanceRunning | WaitKind::InstanceStopped | WaitKind::InstanceTerminated => CADENCE / 4,
            WaitKind::ImageCreated | WaitKind::ImageCopied => CADENCE / 2,
        }
    }

    /// The longest pause between two checks of one wait. Checks are batched per region, so a short ceiling
    /// costs at most one describe per region per interval however many jobs wait.
    fn max_interval(self) -> Duration {
        match self {
            WaitKind::InstanceRunning | WaitKind::InstanceStopped | WaitKind::InstanceTerminated => {
                Duration::from_secs(5)
            }
            WaitKind::ImageCreated | WaitKind::ImageCopied => Duration::from_secs(10),
        }
    }

    /// What one look at the instance says. `listed_or_gone`: an instance EC2 does not list has terminated
    /// (not so for one launched moments ago: EC2 may not list it yet).
    fn verdict(self, instance: &InstanceId, status: Option<&InstanceStatus>, unlisted_is_gone: bool) -> Poll<()> {
        let state = status.map(|status| &status.state);
        // EC2's StateReason, when it gives one: why a launch ended terminated (`Server.InsufficientInstanceCapacity`).
        let reason = status.and_then(|status| status.state_reason.as_deref()).map(|reason| format!(": {reason}"));
        let reason = reason.unwrap_or_default();
        match (self, state) {
            (WaitKind::InstanceRunning, Some(InstanceState::Running)) => Poll::Ready(()),
            (WaitKind::InstanceRunning, None | Some(InstanceState::Pending)) => Poll::NotYet,
            (WaitKind::InstanceRunning, Some(state)) => {
                Poll::Failed(format!("instance {instance} is {state:?} instead of running{reason}"))
            }
            (WaitKind::InstanceStopped, Some(InstanceState::Stopped)) => Poll::Ready(()),
            (WaitKind::InstanceStopped, Some(InstanceState::Terminated | InstanceState::ShuttingDown)) => {
                Poll::Failed(format!("instance {instance} terminated while stopping{reason}"))
            }
            (WaitKind::InstanceTerminated, Some(InstanceState::Terminated)) => Poll::Ready(()),
            (WaitKind::InstanceTerminated, None) if unlisted_is_gone => Poll::Ready(()),
            _ => Poll::NotYet,
        }
    }
}

/// How jobs wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStyle {
    /// Coalesced describes per region, checks scheduled from learned durations: fleetbake's way.
    Batched,
    /// Every wait polls alone at a fixed interval: how most tools wait. The benches compare the two.
    Alone { interval: Duration },
}

/// The waits of a run, in every place (the batched describes and their cadence are per place: a region of
/// one account).
pub struct Waits {
    cloud: Arc<dyn Cloud>,
    style: WaitStyle,
    batchers: DashMap<Place, Arc<RegionBatcher>>,
    /// The shortest time each kind of wait has taken in this run.
    learned: Mutex<HashMap<WaitKind, Duration>>,
    /// The origin of every region's cadence.
    cadence: Instant,
}

impl Waits {
    pub fn new(cloud: Arc<dyn Cloud>, style: WaitStyle) -> Arc<Self> {
        Arc::new(Waits {
            cloud,
            style,
            batchers: DashMap::new(),
            learned: Mutex::new(HashMap::new()),
            cadence: Instant::now(),
        })
    }

    /// Waiting in a region of the run's own account.
    pub fn region(self: &Arc<Self>, region: &Region) -> RegionWaits {
        self.place(&Place::own(region.clone()))
    }

    /// Waiting in a region of any account: each place its own batches, through its own account's cloud.
    pub fn place(self: &Arc<Self>, place: &Place) -> RegionWaits {
        let cloud = self.cloud.place(place);
        let region = &place.region;
        let batcher = self
            .batchers
            .entry(place.clone())
            .or_insert_with(|| Arc::new(RegionBatcher { images: Batch::new(region), instances: Batch::new(region) }))
            .clone();
        RegionWaits { waits: Arc::clone(self), cloud, batcher }
    }

    fn policy(&self, kind: WaitKind, timeout: Duration) -> PollPolicy {
        match self.style {
            WaitStyle::Alone { interval } => PollPolicy::fixed(interval, timeout),
            WaitStyle::Batched => {
                let shortest = self.first_check(kind);
                let policy = if Self::soon(shortest) {
                    // At once: the shortest so far (under a cadence step) is mostly the describe's own round trip.
                    PollPolicy::new(kind.soon_interval(), kind.max_interval(), timeout).with_first_step(SOON_STEP)
                } else {
                    PollPolicy::new(CADENCE, kind.max_interval(), timeout)
                        .with_first_check(shortest.unwrap_or_default())
                };
                policy.with_cadence(self.cadence)
            }
        }
    }

    /// Whether a wait of a kind whose shortest so far is `shortest` (`None`: none ended yet) may end within
    /// seconds, and is checked soon ([`WaitKind::soon_interval`]): nothing learned yet, or every one so far
    /// ended within a cadence step.
    fn soon(shortest: Option<Duration>) -> bool {
        shortest.is_none_or(|shortest| shortest < CADENCE)
    }

    /// How long after it starts a wait of this kind first checks: the shortest such wait of the run so far
    /// (`None` until one ended). Anything done by then is seen at once; anything quicker is seen late by less
    /// than it beat the shortest by; checking earlier would mostly find "not yet".
    fn first_check(&self, kind: WaitKind) -> Option<Duration> {
        self.learned.lock().expect("not poisoned").get(&kind).copied()
    }

    fn learn(&self, kind: WaitKind, took: Duration) {
        let mut learned = self.learned.lock().expect("not poisoned");
        let shortest = learned.entry(kind).or_insert(took);
        *shortest = (*shortest).min(took);
    }
}

/// Waiting in one region.
#[derive(Clone)]
pub struct RegionWaits {
    waits: Arc<Waits>,
    cloud: Arc<dyn RegionCloud>,
    batcher: Arc<RegionBatcher>,
}

impl RegionWaits {
    /// Waits until the instance reaches the state `kind` names (an instance kind).
    pub async fn instance(&self, id: &InstanceId, kind: WaitKind) -> Result<Option<InstanceStatus>, WaitError> {
        self.instance_state(id, kind, None).await
    }

    /// Waits until the instance is terminated. One EC2 does not list has terminated, unless this process
    /// launched it moments ago (`fresh`): a NotFound then is lag, not proof.
    pub async fn instance_terminated(&self, id: &InstanceId, fresh: Option<Created>) -> Result<(), WaitError> {
        self.instance_state(id, WaitKind::InstanceTerminated, fresh).await.map(|_| ())
    }

    async fn instance_state(
        &self,
        id: &InstanceId,
        kind: WaitKind,
        fresh: Option<Created>,
    ) -> Result<Option<InstanceStatus>, WaitError> {
        let what = match kind {
            WaitKind::InstanceRunning => "to run",
            WaitKind::InstanceStopped => "to stop",
            _ => "to terminate",
        };
        let spacing = self.spacing(kind);
        self.timed(kind, INSTANCE_TIMEOUT, &format!("instance {id} {what}"), || async {
            let status = self.status(&self.batcher.instances, id, spacing.next()).await?;
            let unlisted_is_gone = !fresh.is_some_and(|created| created.is_recent());
            Ok(match kind.verdict(id, status.as_ref(), unlisted_is_gone) {
                Poll::Ready(()) => Poll::Ready(status),
                Poll::NotYet => Poll::NotYet,
                Poll::Failed(reason) => Poll::Failed(reason),
            })
        })
        .await
    }

    /// Waits until the image is available (`kind` is [`WaitKind::ImageCreated`] or [`WaitKind::ImageCopied`]);
    /// returns its snapshots.
    pub async fn image(&self, id: &ImageId, kind: WaitKind, timeout: Duration) -> Result<Vec<SnapshotId>, WaitError> {
        let spacing = self.spacing(kind);
        self.timed(kind, timeout, &format!("image {id} to become available"), || async {
            Ok(match self.status(&self.batcher.images, id, spacing.next()).await? {
                Some(status) => match status.state {
                    ImageState::Available => Poll::Ready(status.snapshot_ids),
                    ImageState::Pending => Poll::NotYet,
                    ImageState::Failed(reason) => Poll::Failed(format!("image {id} failed: {reason}")),
                },
                // Just created: describe may not see it yet.
                None => Poll::NotYet,
            })
        })
        .await
    }

    async fn timed<T, Check, Checked>(
        &self,
        kind: WaitKind,
        timeout: Duration,
        what: &str,
        check: Check,
    ) -> Result<T, WaitError>
    where
        Check: FnMut() -> Checked,
        Checked: Future<Output = Result<Poll<T>, CloudError>>,
    {
        let started = Instant::now();
        // A wait that began before any of its kind ended learns when one does, and skips to just before then.
        let not_before = || match self.waits.style {
            WaitStyle::Batched => self.waits.first_check(kind).map(|first| started + first),
            WaitStyle::Alone { .. } => None,
        };
        let result = poll_until_not_before(self.waits.policy(kind, timeout), what, not_before, check).await;
        if result.is_ok() {
            self.waits.learn(kind, started.elapsed());
        }
        result
    }

    /// The status of `id` in this region: from the next batched describe, or from one of its own. `spacing`:
    /// how soon after the region's last describe of this kind the next may go.
    async fn status<S: Described>(&self, batch: &Batch<S>, id: &S::Id, spacing: Duration) -> CloudResult<Option<S>> {
        match self.waits.style {
            WaitStyle::Alone { .. } => {
                Ok(S::describe(&*self.cloud, std::slice::from_ref(id)).await?.into_iter().find(|s| s.id() == id))
            }
            WaitStyle::Batched => batch.check(id.clone(), &self.cloud, spacing).await,
        }
    }

    /// How soon after the region's last describe of this kind a wait of `kind` begun now may have the next
    /// sent: [`BATCH_INTERVAL`]; for a wait checked soon ([`Waits::soon`]), its first check a [`SOON_STEP`]
    /// after (a state already reached is seen within a round trip, as the AWS SDK for Go's waiters see it) and
    /// its later ones its soon interval after.
    fn spacing(&self, kind: WaitKind) -> Spacing {
        if Waits::soon(self.waits.first_check(kind)) {
            Spacing {
                first: SOON_STEP,
                then: kind.soon_interval().min(BATCH_INTERVAL),
                checked: AtomicBool::new(false),
            }
        } else {
            Spacing { first: BATCH_INTERVAL, then: BATCH_INTERVAL, checked: AtomicBool::new(false) }
        }
    }
}

/// How soon after the region's last describe of its kind each check of one wait may have its describe sent.
struct Spacing {
    first: Duration,
    then: Duration,
    /// Whether the wait has checked once.
    checked: AtomicBool,
}

impl Spacing {
    /// The spacing of the wait's next check.
    fn next(&self) -> Duration {
        if self.checked.swap(true, Ordering::Relaxed) {
            self.then
        } else {
            self.first
        }
    }
}

/// The coalesced describes of one region.
struct RegionBatcher {
    images: Batch<ImageStatus>,
    instances: Batch<InstanceStatus>,
}

/// What one kind of describe lists: statuses keyed by id.
trait Described: Clone + Send + Sync + 'static {
    type Id: Clone + Eq + Hash + Send + Sync + 'static;
    const ACTION: Action;
    fn id(&self) -> &Self::Id;
    fn describe<'a>(cloud: &'a dyn RegionCloud, ids: &'a [Self::Id]) -> BoxFuture<'a, CloudResult<Vec<Self>>>;
}

impl Described for ImageStatus {
    type Id = ImageId;
    const ACTION: Action = Action::DescribeImages;
    fn id(&self) -> &ImageId {
        &self.id
    }
    fn describe<'a>(cloud: &'a dyn RegionCloud, ids: &'a [ImageId]) -> BoxFuture<'a, CloudResult<Vec<Self>>> {
        cloud.describe_images(ids)
    }
}

impl Described for InstanceStatus {
    type Id = InstanceId;
    const ACTION: Action = Action::DescribeInstances;
    fn id(&self) -> &InstanceId {
        &self.id
    }
    fn describe<'a>(cloud: &'a dyn RegionCloud, ids: &'a [InstanceId]) -> BoxFuture<'a, CloudResult<Vec<Self>>> {
        cloud.describe_instances(ids)
    }
}

type Answer<S> = Option<Result<Arc<HashMap<<S as Described>::Id, S>>, CloudError>>;

/// One kind of describe in one region: checks asked for while a describe is due join it.
struct Batch<S: Described> {
    region: Region,
    state: Arc<Mutex<BatchState<S>>>,
}

/// A describe that is due: the ids it will ask about, and where its answer goes.
struct DueDescribe<S: Described> {
    ids: HashSet<S::Id>,
    answer: watch::Sender<Answer<S>>,
}

struct BatchState<S: Described> {
    due: Option<DueDescribe<S>>,
    last_sent: Option<Instant>,
}

impl<S: Described> Batch<S> {
    fn new(region: &Region) -> Self {
        Batch { region: region.clone(), state: Arc::new(Mutex::new(BatchState { due: None, last_sent: None })) }
    }

    /// The status of `id` from the next describe of this region (None: the describe did not list it). A
    /// describe is sent `spacing` after the last one at the earliest (a check that joins one already due waits
    /// for it).
    async fn check(&self, id: S::Id, cloud: &Arc<dyn RegionCloud>, spacing: Duration) -> CloudResult<Option<S>> {
        let mut answer = {
            let mut state = self.state.lock().expect("not poisoned");
            match &mut state.due {
                Some(due) => {
                    due.ids.insert(id.clone());
                    due.answer.subscribe()
                }
                None => {
                    let (sender, receiver) = watch::channel(None);
                    let send_at = match state.last_sent {
                        Some(last) => (last + spacing).max(Instant::now()),
                        None => Instant::now(),
                    };
                    state.due = Some(DueDescribe { ids: HashSet::from([id.clone()]), answer: sender });
                    tokio::spawn(Self::send_when_due(Arc::clone(&self.state), send_at, Arc::clone(cloud)));
                    receiver
                }
            }
        };
        let answered = answer.wait_for(Option::is_some).await.map_err(|_| CloudError {
            action: S::ACTION,
            region: self.region.clone(),
            kind: ErrorKind::Transient,
            code: None,
            message: "the batched describe was dropped (the run is ending)".into(),
        })?;
        match answered.as_ref().expect("waited for an answer") {
            Ok(found) => Ok(found.get(&id).cloned()),
            Err(error) => Err(error.clone()),
        }
    }

    async fn send_when_due(state: Arc<Mutex<BatchState<S>>>, send_at: Instant, cloud: Arc<dyn RegionCloud>) {
        tokio::time::sleep_until(send_at).await;
        let due = {
            let mut state = state.lock().expect("not poisoned");
            state.last_sent = Some(Instant::now());
            state.due.take().expect("only this task takes what it scheduled")
        };
        let ids: Vec<S::Id> = due.ids.into_iter().collect();
        let answer = S::describe(&*cloud, &ids)
            .await
            .map(|found| Arc::new(found.into_iter().map(|status| (status.id().clone(), status)).collect()));
        // Nobody listening any more (every waiter gave up) is fine.
        let _ = due.answer.send(Some(answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::sim::SimCloud;

    fn waits() -> Arc<Waits> {
        let text = "[fleet]\nname = \"waits\"\n\n[defaults]\ninstance_type = \"t3.micro\"\nssh_username = \"u\"\n\n\
                    [[flavor]]\nname = \"a\"\nsource_ami = { id = \"ami-1\" }\n\n[regions]\nus-west-2 = []\n";
        let fleet = crate::config::parse(std::path::Path::new("fleet.toml"), text).expect("the test fleet parses");
        Waits::new(Arc::new(SimCloud::new(&fleet)), WaitStyle::Batched)
    }

    /// (first check, first interval, first check's step, (spacing of its first describe, of the later ones)) of
    /// a wait of `kind`.
    fn schedule(waits: &Arc<Waits>, kind: WaitKind) -> (Duration, Duration, Duration, (Duration, Duration)) {
        let policy = waits.policy(kind, Duration::from_secs(600));
        let spacing = waits.region(&Region::new("us-west-2")).spacing(kind);
        let first = spacing.next();
        (policy.first_check, policy.first_interval, policy.first_step, (first, spacing.next()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_checked_soon_until_its_kind_is_seen_to_take_a_cadence_step() {
        let waits = waits();
        let ms = Duration::from_millis;
        // Nothing learned yet: at once (on the 125 ms step), then 0.625 s for an instance, 1.25 s for an image.
        assert_eq!(schedule(&waits, WaitKind::InstanceRunning), (ms(0), ms(625), ms(125), (ms(125), ms(625))));
        assert_eq!(schedule(&waits, WaitKind::ImageCopied), (ms(0), ms(1250), ms(125), (ms(125), ms(1250))));
        // A cloud that answers at once (moto): still soon.
        waits.learn(WaitKind::InstanceRunning, ms(300));
        assert_eq!(schedule(&waits, WaitKind::InstanceRunning), (ms(0), ms(625), ms(125), (ms(125), ms(625))));
        // EC2: a copy took 14 minutes. From then on its kind first checks at the shortest, on the cadence, and
        // its describes keep the region's batch interval; other kinds are still checked soon.
        waits.learn(WaitKind::ImageCopied, Duration::from_secs(14 * 60));
        assert_eq!(
            schedule(&waits, WaitKind::ImageCopied),
            (Duration::from_secs(14 * 60), CADENCE, ms(500), (BATCH_INTERVAL, BATCH_INTERVAL))
        );
        assert_eq!(schedule(&waits, WaitKind::ImageCreated), (ms(0), ms(1250), ms(125), (ms(125), ms(1250))));
        // One that took exactly a cadence step is no longer soon.
        waits.learn(WaitKind::InstanceStopped, CADENCE);
        assert_eq!(
            schedule(&waits, WaitKind::InstanceStopped),
            (CADENCE, CADENCE, ms(500), (BATCH_INTERVAL, BATCH_INTERVAL))
        );
    }
}
