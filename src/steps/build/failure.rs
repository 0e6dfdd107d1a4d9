//! The on-failure phase: what runs after a phase failed on a connected instance, while the instance and the
//! connection are still there, before the connection is closed and the cleanup stack unwinds. Today it does
//! nothing; it is where collecting the instance's logs will go.
//!
//! Layer: `steps` (part of [`super`], the build).

use crate::cloud::InstanceId;
use crate::remote::Connection;

use super::{BuildContext, StepError};

/// Ends a phase run over `connection` to `instance` with its `result`: a failure (interruption included) goes
/// through the on-failure phase first; then the connection is closed, whatever the result.
pub(super) async fn close_after<T>(
    context: &BuildContext,
    instance: &InstanceId,
    connection: Box<dyn Connection>,
    result: Result<T, StepError>,
) -> Result<T, StepError> {
    if let Err(error) = &result {
        on_failure(context, instance, &*connection, error).await;
    }
    connection.close().await;
    result
}

/// What runs on the instance after `error`; its own failures are logged, never the build's. Empty today.
async fn on_failure(_context: &BuildContext, _instance: &InstanceId, _connection: &dyn Connection, _error: &StepError) {
}
