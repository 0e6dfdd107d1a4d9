//! Small helpers every layer may use: named string types (`string_newtype!`) and time on Tokio's clock
//! ([`clock`]).
//!
//! Layer: a leaf below `config`. `util` knows nothing of fleetbake and imports nothing of the crate.

#[macro_use]
mod newtype;
pub mod clock;
