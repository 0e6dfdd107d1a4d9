//! One integration-test binary: the CLI and the library against moto_server and a real sshd.

mod accounts;
mod admission;
mod cli;
mod cloud_state;
mod corpus;
mod ec2_errors;
mod exit_codes;
mod fleet_keys;
mod harness;
mod host_keys;
mod image_snapshots;
mod layout;
mod matrix;
mod nightly;
mod operator;
mod organization;
mod output;
mod plan;
mod proxy;
mod publishing;
mod resume;
mod secrets;
mod session_manager;
mod sim;
mod validate;
mod witness;
