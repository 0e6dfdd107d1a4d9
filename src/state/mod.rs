//! What outlives a process: the run's [`journal`] (written as the run goes, read by [`resume`] and [`gc`]), the
//! [`manifest`] deploy tooling reads (and its writer, a reporter), and the temporary resources found by their
//! tags ([`leftovers`]) that the end-of-run sweep, `--resume` and gc remove.
//!
//! Layer: `state` imports `config`, `plan`, `cloud`, `outcome` (what the journal records and the manifest is
//! built from), `report` and `steps` (the cleanup stack leftovers are removed through, the
//! [`Ledger`](crate::steps::ledger::Ledger) the journal implements); never the engine.

pub mod atomic;
pub mod gc;
pub mod journal;
pub mod leftovers;
pub mod logs;
pub mod manifest;
pub mod packer;
pub mod resume;
