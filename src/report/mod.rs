//! Reporters: the only consumers of [`RunEvent`]s, and the only code that writes run output.
//!
//! [`pump`] feeds every event, in order, to each reporter until the engine drops its sender.

mod terminal;

pub use terminal::TerminalReporter;

use tokio::sync::mpsc;

use crate::events::RunEvent;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReportError(pub String);

pub trait Reporter: Send {
    fn report(&mut self, event: &RunEvent) -> Result<(), ReportError>;
}

/// Delivers events until the channel closes; returns the first error a reporter gave (later events are still
/// delivered, so one failing reporter does not silence the others).
pub async fn pump(
    mut events: mpsc::UnboundedReceiver<RunEvent>,
    mut reporters: Vec<Box<dyn Reporter>>,
) -> Result<(), ReportError> {
    let mut first_error = None;
    while let Some(event) = events.recv().await {
        for reporter in &mut reporters {
            if let Err(error) = reporter.report(&event) {
                tracing::error!("{error}");
                first_error.get_or_insert(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
