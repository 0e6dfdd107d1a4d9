//! Small helpers every layer may use: named string types (`string_newtype!`), time on Tokio's clock
//! ([`clock`]) and EC2-style globs ([`glob`]).
//!
//! Layer: a leaf below `config`. `util` knows nothing of fleetbake and imports nothing of the crate.

#[macro_use]
mod newtype;
pub mod clock;
pub mod glob;
