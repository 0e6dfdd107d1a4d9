//! One copy: CopyImage a build's image into one more region (the copy and its snapshots tagged at creation),
//! tag the copy again as a fallback, wait until available. A copy into another account (`[[distribution]]`)
//! goes through [`crate::steps::distribute`] (the grants around it), and is made here the same way, in the
//! account's place: encrypted with the account's key, tagged with where it came from, finished without
//! `[sharing]`.
//!
//! What real EC2 does here that moto does not: the new copy can be unknown to CreateTags for a while (its
//! NotFound is retried as lag), the destination's cap on copies in flight is shared with every tool of the
//! account (`ResourceLimitExceeded` is waited out, up to `[limits] capacity_patience`), and a copy can end
//! `failed` (the job fails with EC2's reason; the copy is deregistered with its snapshots).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cloud::consistency::{once_known, Created, NewKind};
use crate::cloud::retry::{retry_cancellable, GaveUp, Outcome, Policy, Stopped};
use crate::cloud::wait::WaitError;
use crate::cloud::watch::{RegionWaits, WaitKind};
use crate::cloud::{client_token, CloudError, CopySpec, ImageId, RegionCloud};
use crate::config::{Account, Flavor, Tags};
use crate::outcome::{Artifact, Failure, ImageSettings, JobEnd, JobLabel, Publication, Stage};
use crate::plan::CopyJob;
use crate::report::events::EventSender;
use crate::steps::cleanup::{CleanupStack, UndoStep};
use crate::steps::context::RunContext;
use crate::steps::distribute::{self, DISTRIBUTED_FROM_REGION_TAG, DISTRIBUTED_FROM_TAG};
use crate::steps::fingerprint;
use crate::steps::finish::{self, Finished, Finishing, Made};
use crate::steps::patience::{key_grant_not_usable_yet, no_room};
use crate::steps::publish;

pub struct CopyContext {
    pub run: Arc<RunContext>,
    /// The destination place's cloud (acting as the account's role for a distribution copy): CopyImage is
    /// called there.
    pub cloud: Arc<dyn RegionCloud>,
    pub waits: RegionWaits,
    /// The source region's cloud and waits, of the own account: a distribution copy's grants are given there.
    pub source_cloud: Arc<dyn RegionCloud>,
    pub source_waits: RegionWaits,
    pub flavor: Flavor,
    pub job: CopyJob,
    /// The build's image, in the source region.
    pub source: Artifact,
    pub events: EventSender,
    pub cancel: CancellationToken,
    /// Resuming: the copy an earlier attempt started, still pending; the copy only waits for it.
    pub pending_image: Option<ImageId>,
    /// Resuming: what earlier attempts already published of this job's image.
    pub published_before: Vec<Publication>,
    /// How many of this job's copies earlier attempts discarded (failed, deregistered): part of the client
    /// token, so the next request is a new one.
    pub generation: u32,
}

/// How a copy ended: its image if it became available, and the rest as for any job.
#[derive(Debug, Default)]
pub struct CopyEnd {
    pub artifact: Option<Artifact>,
    pub end: JobEnd,
}

/// Copies, tags and waits (into another account: with the grants around it). Interrupted once CopyImage has
/// answered, leaves the copy running in AWS and says so.
pub async fn run(context: CopyContext) -> CopyEnd {
    match context.job.target.account.clone() {
        Account::Own => copy(&context).await,
        Account::Id(account) => distribute::run(context, &account).await,
    }
}

/// The copy's job: its flavor in its target place.
pub fn label(context: &CopyContext) -> JobLabel {
    JobLabel { flavor: context.flavor.name.clone(), place: context.job.target.clone() }
}

/// The key the copy is encrypted with: of `[encryption]` in the own account, the account's own key
/// (`[[distribution]] kms_keys`) in another; `None`: as the source is (or the account's default).
fn kms_key(context: &CopyContext) -> Option<String> {
    let fleet = &context.run.fleet;
    let region = context.job.target_region();
    match &context.job.target.account {
        Account::Own => fleet.kms_key(region).map(String::from),
        Account::Id(account) => fleet
            .distributions
            .for_account(account)
            .and_then(|distribution| distribution.key_for(region))
            .map(String::from),
    }
}

/// CopyImage, tag, wait, finish, publish: the copy itself, in its target place.
pub async fn copy(context: &CopyContext) -> CopyEnd {
    copy_after(context, None).await
}

/// [`copy`] right after a KMS grant on the source's key was made (at `granted`) for the account that copies:
/// a refusal of CopyImage about the key ([`key_grant_not_usable_yet`]) within [`KMS_GRANT_WINDOW`] of it is
/// waited out ([`Policy::NEW_KMS_GRANT`]), not a failure.
///
/// [`KMS_GRANT_WINDOW`]: crate::cloud::retry::KMS_GRANT_WINDOW
pub async fn copy_after_grant(context: &CopyContext, granted: Instant) -> CopyEnd {
    copy_after(context, Some(granted)).await
}

async fn copy_after(context: &CopyContext, granted: Option<Instant>) -> CopyEnd {
    let label = label(context);
    let mut end = CopyEnd::default();
    let run = &context.run;
    let mut tags = run.artifact_tags(&context.flavor, &context.source);
    tags.extend(fingerprint::copy_tags_in(&run.fleet, &context.job.target));
    if context.job.is_distribution() {
        tags.insert(DISTRIBUTED_FROM_TAG.to_string(), context.source.image_id.to_string());
        tags.insert(DISTRIBUTED_FROM_REGION_TAG.to_string(), context.job.source_region.to_string());
    }
    let (image, requested) = match context.pending_image.clone() {
        Some(image) => {
            context.events.progress(&label, Stage::WaitCopy, format!("waiting for {image} from an earlier attempt"));
            (image, None)
        }
        None => match start(context, &label, &tags, granted).await {
            Ok(image) => (image, Some(Created::now(NewKind::Image))),
            Err(failure) => {
                end.end.failures.push(failure);
                return end;
            }
        },
    };
    let fresh: Vec<Created> = requested.into_iter().collect();
    // CopyImage tagged it at creation; tagging again covers EC2 endpoints (and moto) that ignore that, so an
    // interrupted run still leaves a tagged image. The copy is new: a NotFound about it is EC2's lag. A refused
    // tag does not stop the copy: the image is still made, and the failure is recorded.
    let tagged = once_known(&fresh, || context.cloud.create_tags(std::slice::from_ref(&image.0), &tags)).await;
    if let Err(error) = tagged {
        end.end.failures.push(Failure::from_cloud(&label, Stage::Tag, &error));
    }
    let waited = tokio::select! {
        biased;
        () = context.cancel.cancelled() => {
            end.end.in_progress = Some(image);
            return end;
        }
        result = context.waits.image(&image, WaitKind::ImageCopied, run.fleet.limits.image_timeout) => result,
    };
    let snapshot_ids = match waited {
        Ok(snapshot_ids) => snapshot_ids,
        Err(WaitError::Failed(reason)) => {
            end.end.failures.push(Failure::new(&label, Stage::WaitCopy, reason));
            end.end.failures.extend(discard_failed_copy(context, &label, &image, requested).await);
            return end;
        }
        Err(WaitError::Cloud(error)) => {
            end.end.failures.push(Failure::from_cloud(&label, Stage::WaitCopy, &error));
            return end;
        }
        Err(other) => {
            end.end.failures.push(Failure::new(&label, Stage::WaitCopy, other));
            return end;
        }
    };
    let finishing = Finishing {
        cloud: &*context.cloud,
        fleet: &run.fleet,
        flavor: &context.flavor,
        region: context.job.target_region(),
        image: &image,
        snapshots: &snapshot_ids,
        now: run.clock.now(),
        made: Made::ThisRun { started: run.clock.started_at() },
    };
    let Finished { settings, failures, notes } = if context.job.is_distribution() {
        let mut finished = finish::finish_in_account(finishing).await;
        finished.settings.kms_key_id = kms_key(context);
        finished
    } else {
        finish::finish(finishing).await
    };
    for note in notes {
        context.events.progress(&label, Stage::Deprecate, note);
    }
    end.end.failures.extend(failures.into_iter().map(|f| Failure::from_cloud(&label, f.stage, &f.error)));
    let key = context.job.key();
    let already = &context.published_before;
    let (published, failures) =
        publish::each(run, &*context.cloud, &context.flavor.name, &key, &label, &image, already).await;
    end.end.failures.extend(failures);
    end.artifact = Some(Artifact {
        image_id: image,
        name: context.job.image_name.clone(),
        build_region: context.job.source_region.clone(),
        source_image_id: context.source.source_image_id.clone(),
        snapshot_ids,
        created_at: run.clock.now_rfc3339(),
        fingerprint: context.source.fingerprint.clone(),
        reused_from: None,
        published,
        parent: context.source.parent.clone(),
        // Built from the same SSM parameter version as its build, if any.
        settings: Box::new(ImageSettings {
            source_parameter: context.source.settings.source_parameter.clone(),
            ..settings
        }),
    });
    end
}

/// The idempotency token of this copy's CopyImage: the same in every attempt of the run (EC2 answers a repeat
/// with the copy it already started), different for every flavor, source and target place (another account's
/// names the account), and new once an earlier copy of the job was discarded. A retry after a refusal (no room,
/// a KMS grant not usable yet) is a new request: `try` counts the requests before it.
fn copy_token(context: &CopyContext, tries: u32) -> String {
    let run = &context.run;
    let generation = format!("g{}", context.generation);
    let try_number = format!("try{tries}");
    let mut parts = vec![
        run.run_id.as_str(),
        context.flavor.name.as_str(),
        context.job.source_region.as_str(),
        context.job.target_region().as_str(),
        "copy",
    ];
    if let Account::Id(account) = &context.job.target.account {
        parts.push(account);
    }
    if context.generation > 0 {
        parts.push(&generation);
    }
    if tries > 0 {
        parts.push(&try_number);
    }
    client_token(&parts)
}

/// CopyImage, recorded before anything depends on it. The destination's cap on copies in flight is shared with
/// the account's other tools: `ResourceLimitExceeded` (and any capacity answer) is waited out, up to `[limits]
/// capacity_patience`.
async fn start(
    context: &CopyContext,
    label: &JobLabel,
    tags: &Tags,
    granted: Option<Instant>,
) -> Result<ImageId, Failure> {
    let run = &context.run;
    let interrupted = || Failure::new(label, Stage::Interrupted, "not started: the run was interrupted");
    if context.cancel.is_cancelled() {
        return Err(interrupted());
    }
    // Every CopyImage request is a new one (its own token): one refused made nothing.
    let requests = AtomicU32::new(0);
    let request = || CopySpec {
        source_region: context.job.source_region.clone(),
        source_image: context.source.image_id.clone(),
        name: context.job.image_name.clone(),
        description: run.fleet.ami_description.clone(),
        client_token: copy_token(context, requests.fetch_add(1, Ordering::Relaxed)),
        tags: tags.clone(),
        // The copy's snapshots carry its tags from the start (an SCP requiring tags on create sees them).
        snapshot_tags: tags.clone(),
        kms_key: kms_key(context),
    };
    let started = retry_cancellable(
        Policy::capacity(run.fleet.limits.capacity_patience).start(),
        &context.cancel,
        |_| async {
            match copy_image_once(context, label, &request, granted).await {
                Ok(made) => Outcome::Done(Ok(made)),
                Err(error) if no_room(&error) => Outcome::Again(error),
                Err(error) => Outcome::Done(Err(error)),
            }
        },
        |error, pause| {
            let code = error.code.clone().unwrap_or_default();
            let detail = format!(
                "no room in {} now ({code}); trying again in {}",
                label.region(),
                humantime::format_duration(pause)
            );
            context.events.progress(label, Stage::Copy, detail);
        },
    )
    .await;
    if matches!(started, Err(Stopped::GaveUp(GaveUp::Refused(_)))) && context.cancel.is_cancelled() {
        // Interrupted while a new grant settled: nothing was made.
        return Err(interrupted());
    }
    match started {
        Ok((image, spec)) => {
            run.ledger.image_requested(&context.job.key(), &image);
            context.events.progress(
                label,
                Stage::Copy,
                format!("copying {} from {} as {image}", spec.source_image, spec.source_region),
            );
            Ok(image)
        }
        Err(Stopped::Cancelled) => Err(interrupted()),
        Err(Stopped::GaveUp(GaveUp::Refused(error))) => Err(Failure::from_cloud(label, Stage::Copy, &error)),
        Err(Stopped::GaveUp(GaveUp::Spent { error, tries })) => {
            let waited = humantime::format_duration(run.fleet.limits.capacity_patience);
            let mut failure = Failure::from_cloud(label, Stage::Copy, &error);
            failure.error = format!("{} (tried {tries} times over {waited})", failure.error);
            Err(failure)
        }
    }
}

/// One CopyImage request (a new one: `request` gives it its own token); right after a KMS grant (`granted`), a
/// refusal about the source's key is asked again until [`Policy::NEW_KMS_GRANT`] is spent, each time as a new
/// request. Its answer, with the request that made the copy.
async fn copy_image_once(
    context: &CopyContext,
    label: &JobLabel,
    request: &(dyn Fn() -> CopySpec + Sync),
    granted: Option<Instant>,
) -> Result<(ImageId, CopySpec), CloudError> {
    let run_id = &context.run.run_id;
    let once = || async {
        let spec = request();
        crate::steps::adopt::copy_image(&*context.cloud, &spec, run_id).await.map(|image| (image, spec))
    };
    let Some(granted) = granted else { return once().await };
    let settled = retry_cancellable(
        Policy::NEW_KMS_GRANT.start_from(granted),
        &context.cancel,
        |_| async {
            match once().await {
                Err(error) if key_grant_not_usable_yet(&error) => Outcome::Again(error),
                answer => Outcome::Done(answer),
            }
        },
        |error, pause| {
            let detail = format!(
                "the KMS grant on the source's key is new and not usable yet ({}); trying again in {}",
                error.code.as_deref().unwrap_or("refused"),
                humantime::format_duration(pause)
            );
            context.events.progress(label, Stage::Copy, detail);
        },
    )
    .await;
    match settled {
        Ok(made) => Ok(made),
        Err(Stopped::GaveUp(gave_up)) => Err(gave_up.into_error()),
        Err(Stopped::Cancelled) => Err(CloudError {
            action: crate::cloud::Action::CopyImage,
            region: context.job.target_region().clone(),
            kind: crate::cloud::ErrorKind::Permanent,
            code: None,
            message: "interrupted while the KMS grant settled".into(),
        }),
    }
}

/// A copy that ended `failed`: recorded as discarded (the job's next CopyImage takes a new token), then
/// deregistered with its snapshots. What could not be removed is returned as cleanup failures.
async fn discard_failed_copy(
    context: &CopyContext,
    label: &JobLabel,
    image: &ImageId,
    requested: Option<Created>,
) -> Vec<Failure> {
    let ledger = &*context.run.ledger;
    let mut stack = CleanupStack::default();
    stack.push(UndoStep::discard_failed(&*context.cloud, ledger, &context.job.key(), image, requested).await);
    stack.unwind_for_job(label, &*context.cloud, &context.waits, &*context.run.ledger, &context.events).await
}
