//! Reporters: the only consumers of [`RunEvent`]s, and the only code that writes run output.
//!
//! [`pump`] feeds every event, in order, to each reporter until the engine drops its sender. Each event comes
//! [`events::Stamped`] with the run clock's time it was sent at.
//!
//! Layer: `report` owns the closed set of [`events`] and the reporters that print them. It imports `config`,
//! `plan`, `cloud` and `outcome` (the ids, errors and outcomes events carry). The manifest writer, a reporter
//! too, lives beside the manifest in `state`.

pub mod estimate;
pub mod events;
pub mod json;
pub mod live;
pub mod plain;
pub mod tally;
mod terminal;
pub mod text;

pub use json::JsonLinesReporter;
pub use live::LiveReporter;
pub use plain::Console;
pub use terminal::TerminalReporter;

use tokio::sync::mpsc;

use crate::report::events::Stamped;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReportError(pub String);

pub trait Reporter: Send {
    fn report(&mut self, event: &Stamped) -> Result<(), ReportError>;

    /// Called after each batch of events: write out what was deferred, if it is due (or `at_end`).
    fn flush(&mut self, _at_end: bool) -> Result<(), ReportError> {
        Ok(())
    }

    /// When deferred output is due, if there is any.
    fn flush_due(&self) -> Option<tokio::time::Instant> {
        None
    }
}

/// Delivers events until the channel closes; returns the first error a reporter gave (later events are still
/// delivered, so one failing reporter does not silence the others).
pub async fn pump(
    mut events: mpsc::UnboundedReceiver<Stamped>,
    mut reporters: Vec<Box<dyn Reporter>>,
) -> Result<(), ReportError> {
    let mut first_error = None;
    let mut keep_first = |result: Result<(), ReportError>| {
        if let Err(error) = result {
            tracing::error!("{error}");
            first_error.get_or_insert(error);
        }
    };
    loop {
        let due = reporters.iter().filter_map(|reporter| reporter.flush_due()).min();
        let next = match due {
            Some(due) => tokio::select! {
                event = events.recv() => event.map_or(Next::Closed, |event| Next::Event(Box::new(event))),
                () = tokio::time::sleep_until(due) => Next::FlushDue,
            },
            None => events.recv().await.map_or(Next::Closed, |event| Next::Event(Box::new(event))),
        };
        let mut batch = Vec::new();
        match next {
            Next::Closed => break,
            Next::FlushDue => {}
            Next::Event(event) => batch.push(*event),
        }
        while let Ok(event) = events.try_recv() {
            batch.push(event);
        }
        for event in &batch {
            for reporter in &mut reporters {
                keep_first(reporter.report(event));
            }
        }
        for reporter in &mut reporters {
            keep_first(reporter.flush(false));
        }
    }
    for reporter in &mut reporters {
        keep_first(reporter.flush(true));
    }
    first_error.map_or(Ok(()), Err)
}

enum Next {
    Event(Box<Stamped>),
    FlushDue,
    Closed,
}
