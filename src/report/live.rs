//! The live view on a terminal (stderr a TTY, no `--plain`), drawn with indicatif: a header (builds and
//! copies done of planned, jobs waiting for a slot, failures, throttles absorbed, the estimated finish time)
//! and one line per job in flight (its stage, what it does, how long it has run). Provisioner output and
//! failures print above the view as they come, control characters escaped ([`escape_controls`]); the view
//! ends with the same per-flavor summary as the plain lines. indicatif redraws at most 10 times a second.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::estimate::Estimator;
use super::tally::Tally;
use super::terminal::line;
use super::{ReportError, Reporter};
use crate::outcome::JobLabel;
use crate::report::events::{JobKind, RunEvent, Stamped};
use crate::report::text::escape_controls;

/// Redraws per second, at most.
const REFRESH_HZ: u8 = 10;

pub struct LiveReporter {
    multi: MultiProgress,
    header: ProgressBar,
    jobs: BTreeMap<JobLabel, ProgressBar>,
    tally: Tally,
    estimator: Option<Estimator>,
    /// Events since the last redraw of the messages.
    changed: bool,
}

impl LiveReporter {
    pub fn new(estimator: Option<Estimator>) -> Self {
        LiveReporter::with_target(ProgressDrawTarget::stderr_with_hz(REFRESH_HZ), estimator)
    }

    pub fn with_target(target: ProgressDrawTarget, estimator: Option<Estimator>) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("a valid template"));
        header.enable_steady_tick(Duration::from_millis(1000 / u64::from(REFRESH_HZ)));
        LiveReporter { multi, header, jobs: BTreeMap::new(), tally: Tally::default(), estimator, changed: false }
    }

    /// Prints above the view (provisioner output, failures): lines stay in the scrollback, their control
    /// characters escaped ([`escape_controls`]).
    fn print(&self, text: &str) {
        for line in text.lines() {
            let _ = self.multi.println(escape_controls(line));
        }
    }

    fn header_text(&self) -> String {
        let (builds_done, builds) = self.tally.counts(JobKind::Build);
        let (copies_done, copies) = self.tally.counts(JobKind::Copy);
        let running = self.tally.in_flight.len();
        let waiting = (builds + copies).saturating_sub(builds_done + copies_done + running);
        let mut text = format!(
            "builds {builds_done}/{builds} · copies {copies_done}/{copies} · {running} running, {waiting} waiting · {} failed · {} throttles",
            self.tally.failures.len(),
            self.tally.throttles
        );
        if let (Some(estimator), Some(now)) = (&self.estimator, self.tally.now) {
            let left = estimator.remaining(&self.tally);
            let at = now + chrono::TimeDelta::from_std(left).unwrap_or_default();
            text.push_str(&format!(" · finish ≈ {} (in {})", at.format("%H:%M UTC"), short(left)));
        }
        text
    }

    fn redraw(&mut self) {
        let now = self.tally.now.unwrap_or_else(Utc::now);
        self.header.set_message(self.header_text());
        let style = ProgressStyle::with_template("  {msg}").expect("a valid template");
        self.jobs.retain(|label, bar| {
            let keep = self.tally.in_flight.contains_key(label);
            if !keep {
                bar.finish_and_clear();
            }
            keep
        });
        for (label, flight) in &self.tally.in_flight {
            let bar = self.jobs.entry(label.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar
            });
            let stage = flight.stage.map_or("starting".to_string(), |stage| stage.to_string());
            let detail = escape_controls(&flight.detail);
            bar.set_message(format!("{label:<32} {stage:<14} {} · {detail}", elapsed(flight.since, now)));
        }
    }
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    short((now - since).to_std().unwrap_or_default())
}

/// `1h02m`, `4m05s`, `12s`.
fn short(duration: Duration) -> String {
    let seconds = duration.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
    }
}

impl Reporter for LiveReporter {
    fn report(&mut self, stamped: &Stamped) -> Result<(), ReportError> {
        self.tally.observe(stamped);
        self.changed = true;
        match &stamped.event {
            // Above the view: what a person would scroll back for.
            RunEvent::Output { .. }
            | RunEvent::JobFailed(_)
            | RunEvent::Kept(_)
            | RunEvent::CleanupFailed { .. }
            | RunEvent::ImageAvailable { .. }
            | RunEvent::ImageInProgress(_)
            | RunEvent::Interrupted { .. }
            | RunEvent::Resuming { .. }
            | RunEvent::LocalLeftoversEnded(_)
            | RunEvent::ManifestSetAside { .. }
            | RunEvent::RunStarted { .. } => {
                if let Some(text) = line(&stamped.event) {
                    self.print(&text);
                }
            }
            RunEvent::RunFinished { .. } => {
                for bar in std::mem::take(&mut self.jobs).into_values() {
                    bar.finish_and_clear();
                }
                self.header.finish_and_clear();
                if let Some(text) = line(&stamped.event) {
                    self.print(&text);
                }
                self.print(&self.tally.summary().join("\n"));
                self.changed = false;
            }
            _ => {}
        }
        Ok(())
    }

    fn flush(&mut self, at_end: bool) -> Result<(), ReportError> {
        if self.changed && !at_end {
            self.redraw();
            self.changed = false;
        }
        if at_end {
            self.header.finish_and_clear();
            for bar in std::mem::take(&mut self.jobs).into_values() {
                bar.finish_and_clear();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        assert_eq!(short(Duration::from_secs(12)), "12s");
        assert_eq!(short(Duration::from_secs(245)), "4m05s");
        assert_eq!(short(Duration::from_secs(3720)), "1h02m");
    }
}
