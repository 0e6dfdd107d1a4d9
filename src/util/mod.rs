//! Small helpers every layer may use.

#[macro_use]
mod newtype;
pub mod clock;
