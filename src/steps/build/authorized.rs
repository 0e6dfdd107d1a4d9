//! Before the instance stops: the build key's line goes from the SSH user's `authorized_keys`
//! (`[ssh] clear_authorized_keys`, on by default), so the image does not trust it. Run over the build's
//! connection after provisioning succeeded, within 2 minutes; a failure fails the job at `stop`, and no image is
//! made.
//!
//! Layer: `steps` (part of [`super`], the build).

use std::time::Duration;

use crate::outcome::Stage;
use crate::remote::{authorized, Connection};

use super::{BuildContext, StepError};

/// How long removing the key may take (an upload and a few greps): past it the job fails at `stop`.
const CLEAR_TIMEOUT: Duration = Duration::from_secs(120);

/// Removes the key `connection` logged in with from the image-to-be's `authorized_keys`, and says what it did;
/// nothing if `[ssh] clear_authorized_keys = false` or the connection has no such key (the simulated one).
pub(super) async fn clear_build_key(context: &BuildContext, connection: &dyn Connection) -> Result<(), StepError> {
    if !context.run.fleet.ssh.clear_authorized_keys {
        return Ok(());
    }
    let failed = |error: crate::remote::RemoteError| {
        StepError::new(Stage::Stop, format!("cannot remove the build key from `~/.ssh/authorized_keys`: {error}"))
    };
    let Some(key) = connection.login_key().map_err(failed)? else { return Ok(()) };
    let cleared = context.interruptible(Stage::Stop, async {
        match tokio::time::timeout(CLEAR_TIMEOUT, authorized::clear(connection, &key)).await {
            Ok(cleared) => cleared.map_err(failed),
            Err(_) => Err(failed(crate::remote::RemoteError(format!(
                "it did not finish within {}",
                humantime::format_duration(CLEAR_TIMEOUT)
            )))),
        }
    });
    let cleared = cleared.await?;
    context.progress(Stage::Stop, cleared.to_string());
    Ok(())
}
