//! `fleetbake matrix`: from a loaded fleet to a finished run. Makes the plan, settles the SSH source
//! addresses, connects the cloud, starts the reporters and hands everything to the scheduler.

use std::sync::Arc;

use chrono::Utc;
use ipnet::IpNet;
use tokio::sync::mpsc;

use crate::cloud::aws::AwsCloud;
use crate::cloud::{Cloud, ImageId};
use crate::config::{Flavor, FlavorName, Fleet, Tags};
use crate::events::EventSender;
use crate::limiter::{RetryPolicy, RunLimits};
use crate::manifest::ManifestWriter;
use crate::net::{self, DetectError};
use crate::plan::{Plan, RunId};
use crate::report::{self, ReportError, Reporter, TerminalReporter};
use crate::scheduler::{Interrupt, RunSummary, Scheduler};

/// What every job of a run shares.
pub struct RunContext {
    pub fleet: Arc<Fleet>,
    pub run_id: RunId,
    /// Who the temporary security groups let in on port 22.
    pub ssh_cidrs: Vec<IpNet>,
}

impl RunContext {
    /// `fleetbake:fleet`, `fleetbake:flavor`, `fleetbake:run-id`: on every resource the run creates.
    pub fn identity_tags(&self, flavor: &FlavorName) -> Tags {
        Tags::from([
            ("fleetbake:fleet".to_string(), self.fleet.name.clone()),
            ("fleetbake:flavor".to_string(), flavor.to_string()),
            ("fleetbake:run-id".to_string(), self.run_id.to_string()),
        ])
    }

    /// An image's tags in every region: the fleet's, the defaults' and the flavor's, then fleetbake's own.
    pub fn image_tags(&self, flavor: &Flavor, source_image: &ImageId) -> Tags {
        let mut tags = self.fleet.tags.clone();
        tags.extend(flavor.tags.clone());
        tags.extend(self.identity_tags(&flavor.name));
        tags.insert("fleetbake:source-image-id".to_string(), source_image.to_string());
        tags
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    DetectAddress(#[from] DetectError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

pub struct MatrixOptions {
    pub fail_fast: bool,
}

/// Runs the whole matrix against AWS (or whatever `[aws] endpoint_url` points at).
pub async fn matrix(
    fleet: Fleet,
    options: MatrixOptions,
    interrupts: mpsc::UnboundedReceiver<Interrupt>,
) -> Result<RunSummary, RunError> {
    let fleet = Arc::new(fleet);
    let ssh_cidrs = match &fleet.ssh.source_cidrs {
        Some(cidrs) => cidrs.clone(),
        None => vec![net::detect_public_cidr(&fleet.ssh.ip_detect_url).await?],
    };
    let limits = Arc::new(RunLimits::new(&fleet.limits, RetryPolicy::default()));
    let cloud: Arc<dyn Cloud> = Arc::new(AwsCloud::connect(&fleet.aws, Arc::clone(&limits)).await);
    execute(fleet, ssh_cidrs, cloud, limits, options, interrupts).await
}

/// Plans and executes against any cloud, with the terminal and manifest reporters.
pub async fn execute(
    fleet: Arc<Fleet>,
    ssh_cidrs: Vec<IpNet>,
    cloud: Arc<dyn Cloud>,
    limits: Arc<RunLimits>,
    options: MatrixOptions,
    interrupts: mpsc::UnboundedReceiver<Interrupt>,
) -> Result<RunSummary, RunError> {
    let started_at = Utc::now();
    let run_id = RunId::generate(started_at);
    let plan = Arc::new(Plan::new(&fleet, run_id.clone(), started_at));
    let run = Arc::new(RunContext { fleet: Arc::clone(&fleet), run_id, ssh_cidrs });

    let (events, receiver) = EventSender::channel();
    let reporters: Vec<Box<dyn Reporter>> =
        vec![Box::new(TerminalReporter::stderr()), Box::new(ManifestWriter::new(fleet.manifest_path.clone()))];
    let reporting = tokio::spawn(report::pump(receiver, reporters));
    let scheduler = Scheduler { run, plan, cloud, limits, events, fail_fast: options.fail_fast };
    let summary = scheduler.run(interrupts).await;
    if summary.abandoned {
        // Jobs were aborted mid-flight; their event senders go away as the runtime drops them.
        return Ok(summary);
    }
    reporting.await.expect("the reporter task does not panic")?;
    Ok(summary)
}
