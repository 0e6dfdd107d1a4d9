//! Plain lines on stderr, readable in a CI log without colour: each starts with the UTC time the event
//! happened (the simulated time in the sim), then `==> flavor/region: what happened`, or provisioner output as
//! `flavor/region: line`. The run ends with a per-flavor summary. `-q`: failures and the summary only. Every line
//! is written with its control characters escaped ([`escape_controls`]): an instance's output cannot drive the
//! terminal.

use std::io::Write;

use super::tally::Tally;
use super::{ReportError, Reporter};
use crate::outcome::{Publication, RunStatus};
use crate::report::events::{RunEvent, Stamped};
use crate::report::text::escape_controls;

pub struct TerminalReporter<W: Write + Send> {
    out: W,
    quiet: bool,
    tally: Tally,
}

impl TerminalReporter<std::io::BufWriter<std::io::Stderr>> {
    /// Onto stderr, buffered: a batch of events is written at once when [`crate::report::pump`] flushes after
    /// it (stderr itself is unbuffered: a write per piece of every line, 130,000 for a 10,000-job night).
    pub fn stderr(quiet: bool) -> Self {
        TerminalReporter::new(std::io::BufWriter::with_capacity(STDERR_BUFFER, std::io::stderr()), quiet)
    }
}

/// What the buffered stderr holds before it writes without waiting for the batch's end.
const STDERR_BUFFER: usize = 64 * 1024;

/// The line of an event, without its time; `None` for events only counted.
pub fn line(event: &RunEvent) -> Option<String> {
    Some(match event {
        RunEvent::RunStarted { fleet, run_id, builds, copies, .. } => {
            format!("==> fleet `{fleet}` run {run_id}: {builds} builds, {copies} copies")
        }
        RunEvent::PreflightPassed { checks } => format!("==> preflight: all {checks} checks passed"),
        RunEvent::Progress { job, detail, .. } => format!("==> {job}: {detail}"),
        RunEvent::Output { job, line, .. } => format!("{job}: {}", line.text()),
        RunEvent::ImageAvailable { job, artifact, .. } => {
            format!("==> {job}: image {} `{}` is available", artifact.image_id, artifact.name)
        }
        RunEvent::JobFailed(failure) => {
            let mut text = format!("==> {}: failed at {}: {}", failure.label(), failure.stage, failure.error);
            if let Some(hint) = &failure.hint {
                text.push_str(&format!("\n    hint: {hint}"));
            }
            if let Some(folder) = failure.logs_folder() {
                text.push_str(&format!("\n    logs: {} files saved in `{}`", failure.logs.len(), folder.display()));
            }
            text
        }
        RunEvent::CleanupFailed { job, resource, error } => {
            format!("==> {job}: could not clean up {resource}: {error}")
        }
        RunEvent::ImageInProgress(image) => format!(
            "==> {}: image {} is still being made; left to finish in AWS (`--resume` waits for it)",
            image.label(),
            image.image_id
        ),
        RunEvent::Published { job, publication } => match publication {
            Publication::SsmParameter { name, version, .. } => {
                format!("==> {job}: published to SSM parameter {name} (version {version})")
            }
            Publication::LaunchTemplate { name, id, version } => {
                format!("==> {job}: launch template {name} ({id}) version {version} is now the default")
            }
        },
        RunEvent::Swept { resource } => format!("==> removed {resource}, left behind by an earlier step"),
        RunEvent::LocalLeftoversEnded(leftovers) => format!("==> {leftovers}"),
        RunEvent::ManifestSetAside { path, kept_as, why } => format!(
            "==> warning: cannot read the manifest `{}` ({why}); kept it as `{}` and writing a new one",
            path.display(),
            kept_as.display()
        ),
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
        RunEvent::Kept(kept) => {
            let job = kept.job.as_ref().map_or(String::new(), |job| format!("{job}: "));
            let login = match (&kept.connect, &kept.no_login) {
                (Some(command), _) => format!("\n    log in: {command}"),
                (None, Some(why)) => format!("\n    no login: {why}"),
                (None, None) => String::new(),
            };
            format!("==> {job}{} (`--keep-failed`; `fleetbake gc` removes it after){login}", kept.what())
        }
        RunEvent::JobStarted { .. } | RunEvent::JobSucceeded { .. } | RunEvent::Throttled { .. } => return None,
    })
}

/// What `-q` still prints.
pub fn shown_when_quiet(event: &RunEvent) -> bool {
    matches!(
        event,
        RunEvent::JobFailed(_)
            | RunEvent::Kept(_)
            | RunEvent::CleanupFailed { .. }
            | RunEvent::ManifestSetAside { .. }
            | RunEvent::Interrupted { .. }
            | RunEvent::RunFinished { .. }
    )
}

impl<W: Write + Send> TerminalReporter<W> {
    pub fn new(out: W, quiet: bool) -> Self {
        TerminalReporter { out, quiet, tally: Tally::default() }
    }

    /// Writes each line of `text` after the time, its control characters escaped ([`escape_controls`]).
    fn write(&mut self, at: &str, text: &str) {
        for line in text.lines() {
            // A closed stderr must not stop the run: the manifest is what matters.
            let _ = writeln!(self.out, "{at} {}", escape_controls(line));
        }
    }
}

impl<W: Write + Send> Reporter for TerminalReporter<W> {
    fn report(&mut self, stamped: &Stamped) -> Result<(), ReportError> {
        self.tally.observe(stamped);
        let at = super::plain::stamp(stamped.at);
        let shown = !self.quiet || shown_when_quiet(&stamped.event);
        if let Some(text) = line(&stamped.event).filter(|_| shown) {
            self.write(&at, &text);
        }
        if matches!(stamped.event, RunEvent::RunFinished { .. }) {
            let summary = self.tally.summary().join("\n");
            self.write(&at, &summary);
        }
        Ok(())
    }

    /// Every line of the batch out (the pump calls this after each batch).
    fn flush(&mut self, _at_end: bool) -> Result<(), ReportError> {
        // A closed stderr must not stop the run: the manifest is what matters.
        let _ = self.out.flush();
        Ok(())
    }
}
