//! Executes a plan.

pub mod run;
pub mod scheduler;
pub mod summary;
