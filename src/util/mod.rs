//! Small helpers every layer may use: named string types (`string_newtype!`), time on Tokio's clock
//! ([`clock`]), EC2-style globs ([`glob`]) and SSH host keys as text ([`host_keys`]).
//!
//! Layer: a leaf below `config`. `util` knows nothing of fleetbake and imports nothing of the crate.

#[macro_use]
mod newtype;
pub mod clock;
pub mod glob;
pub mod host_keys;
