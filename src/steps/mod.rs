//! What one job does.

pub mod adopt;
pub mod build;
pub mod cleanup;
pub mod context;
pub mod copy;
pub mod ledger;
