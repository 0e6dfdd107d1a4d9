//! fleetbake: bake EBS-backed AMIs for a whole fleet in one run.
//!
//! The pipeline, one folder per layer: [`config`] → [`plan`] → [`engine`] → [`steps`] → [`cloud`] (the port;
//! [`cloud::aws`] is the aws-sdk-ec2 adapter), with [`remote`] (reaching an instance), [`state`] (what outlives
//! a process), [`report`] (events and their consumers) and [`outcome`] (what each job came to, which events,
//! the journal and the manifest all read) beside them. ARCHITECTURE.md has the map and the invariants.

#[macro_use]
pub mod util;

pub mod cloud;
pub mod config;
pub mod engine;
pub mod outcome;
pub mod plan;
pub mod remote;
pub mod report;
pub mod state;
pub mod steps;
