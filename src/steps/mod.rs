//! What one job does.

pub mod adopt;
pub mod build;
pub mod cleanup;
pub mod copy;
