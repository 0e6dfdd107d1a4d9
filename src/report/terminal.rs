//! Plain lines on stderr, readable in a CI log without colour: `==> flavor/region: what happened`, and
//! provisioner output as `flavor/region: line`.

use std::io::Write;

use super::{ReportError, Reporter};
use crate::report::events::{RunEvent, RunStatus};

pub struct TerminalReporter<W: Write + Send> {
    out: W,
}

impl TerminalReporter<std::io::Stderr> {
    pub fn stderr() -> Self {
        TerminalReporter { out: std::io::stderr() }
    }
}

impl<W: Write + Send> TerminalReporter<W> {
    pub fn new(out: W) -> Self {
        TerminalReporter { out }
    }

    fn line(&mut self, event: &RunEvent) -> Option<String> {
        Some(match event {
            RunEvent::RunStarted { fleet, run_id, builds, copies, .. } => {
                format!("==> fleet `{fleet}` run {run_id}: {builds} builds, {copies} copies")
            }
            RunEvent::PreflightPassed { checks } => format!("==> preflight: all {checks} checks passed"),
            RunEvent::Progress { job, detail, .. } => format!("==> {job}: {detail}"),
            RunEvent::Output { job, line, .. } => format!("{job}: {line}"),
            RunEvent::ImageAvailable { job, artifact, .. } => {
                format!("==> {job}: image {} `{}` is available", artifact.image_id, artifact.name)
            }
            RunEvent::JobFailed(failure) => {
                format!("==> {}/{}: failed at {}: {}", failure.flavor, failure.region, failure.stage, failure.error)
            }
            RunEvent::CleanupFailed { job, resource, error } => {
                format!("==> {job}: could not clean up {resource}: {error}")
            }
            RunEvent::ImageInProgress(image) => format!(
                "==> {}/{}: image {} is still being made; left to finish in AWS (`--resume` waits for it)",
                image.flavor, image.region, image.image_id
            ),
            RunEvent::Swept { resource } => format!("==> removed {resource}, left behind by an earlier step"),
            RunEvent::Resuming { run_id, attempt, journal } => {
                format!("==> resuming run {run_id} (attempt {attempt}) from `{}`", journal.display())
            }
            RunEvent::Interrupted { signal } => {
                format!("==> {signal}: starting nothing new, cleaning up (send it again to exit at once)")
            }
            RunEvent::RunFinished { status, succeeded, failed, in_progress, .. } => {
                let status = match status {
                    RunStatus::Complete => "complete",
                    RunStatus::Partial => "partial",
                    RunStatus::Failed => "failed",
                };
                let left = match in_progress {
                    0 => String::new(),
                    images => format!(", {images} images still being made (`--resume` finishes the run)"),
                };
                format!("==> run {status}: {succeeded} jobs succeeded, {failed} failed{left}")
            }
        })
    }
}

impl<W: Write + Send> Reporter for TerminalReporter<W> {
    fn report(&mut self, event: &RunEvent) -> Result<(), ReportError> {
        if let Some(line) = self.line(event) {
            // A closed stderr must not stop the run: the manifest is what matters.
            let _ = writeln!(self.out, "{line}");
        }
        Ok(())
    }
}
