//! What one job does: a [`build`] (the amazon-ebs sequence) and a [`copy`] (CopyImage and its wait), each with
//! its temporary resources on a [`cleanup`] stack (a copy into another account with the grants [`distribute`]
//! gives around it), what an available image is given ([`finish`]: IMDSv2,
//! deprecation, sharing), creating calls that may be repeats taken as their own
//! ([`adopt`]), the [`context`] every job of a run shares, and the [`ledger`] they record what they make in.
//!
//! Layer: `steps` imports `config`, `plan`, `cloud` (the port and the waits, never an adapter), `remote`,
//! `report` (events only) and `util`. Steps never import the state: they record through [`ledger::Ledger`].

pub mod adopt;
pub mod build;
pub mod cleanup;
pub mod context;
pub mod copy;
pub mod distribute;
pub mod fingerprint;
pub mod finish;
pub mod ledger;
pub mod network;
pub mod patience;
pub mod publish;
pub mod source;
