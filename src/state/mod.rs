//! What outlives a process.

pub mod gc;
pub mod journal;
pub mod leftovers;
pub mod manifest;
pub mod resume;
