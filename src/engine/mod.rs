//! Executes a plan.

pub mod limits;
pub mod run;
pub mod scheduler;
pub mod summary;
