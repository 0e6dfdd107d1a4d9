//! One integration-test binary: the CLI and the library against moto_server and a real sshd.

mod accounts;
mod cli;
mod cloud_state;
mod corpus;
mod harness;
mod layout;
mod matrix;
mod nightly;
mod operator;
mod organization;
mod plan;
mod proxy;
mod resume;
mod sim;
mod validate;
