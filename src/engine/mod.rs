//! Executes a plan: [`run`] wires a run together (the journal, the cloud, the communicator, the reporters),
//! the [`scheduler`]'s one loop starts jobs as [`slots`] of [`limits`] allow, runs them through [`runner`] and routes
//! their events, then [`publish`]es complete flavors and [`sweep`]s what the run left, and
//! [`summary`] makes the run statistics; [`changed`] decides what `--changed-only` reuses; [`exit`] decides
//! every command's exit code.
//!
//! Layer: the top. `engine` may import every other layer; none imports it.

pub mod changed;
pub mod cost;
pub mod exit;
pub mod limits;
pub mod preflight;
pub mod publish;
pub mod run;
pub mod runner;
pub mod scheduler;
pub mod slots;
pub mod summary;
pub mod sweep;
