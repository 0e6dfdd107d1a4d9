//! fleetbake: bake EBS-backed AMIs for a whole fleet in one run.
//!
//! The pipeline, one module per stage: [`config`] → [`plan`] → [`scheduler`] → [`build`] / [`copy`] →
//! [`cloud`] (the port; [`cloud::aws`] is the aws-sdk-ec2 adapter) → [`events`] → [`report`] and [`manifest`].
//! ARCHITECTURE.md has the map and the invariants.

#[macro_use]
mod newtype;

pub mod adopt;
pub mod bound;
pub mod build;
pub mod cleanup;
pub mod clock;
pub mod cloud;
pub mod communicator;
pub mod config;
pub mod copy;
pub mod deps;
pub mod events;
pub mod gc;
pub mod journal;
pub mod leftovers;
pub mod limiter;
pub mod manifest;
pub mod net;
pub mod plan;
pub mod provision;
pub mod report;
pub mod resume;
pub mod run;
pub mod scheduler;
pub mod sim;
pub mod ssh;
pub mod summary;
pub mod wait;
pub mod watch;
