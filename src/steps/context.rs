//! What every job of a run shares: the fleet, the run's id, clock and attempt, who may reach port 22, where
//! the steps record what they make, and the tags every resource of the run carries.

use std::sync::Arc;

use crate::cloud::ImageId;
use crate::config::{Flavor, FlavorName, Fleet, Tags};
use crate::plan::RunId;
use crate::steps::ledger::Ledger;
use crate::steps::network::SshSources;
use crate::util::clock::RunClock;

/// What every job of a run shares.
pub struct RunContext {
    pub fleet: Arc<Fleet>,
    pub run_id: RunId,
    /// Who may reach the build instances' SSH port, as settled when the run started (each build settles its
    /// own from it: see [`crate::steps::network`]).
    pub ssh_sources: SshSources,
    /// The run's time: real, or virtual in the simulated cloud.
    pub clock: RunClock,
    /// Where what the steps make is recorded before anything depends on it: the run's journal.
    pub ledger: Arc<dyn Ledger>,
    /// 1 for a new run; each `--resume` adds one.
    pub attempt: u32,
}

impl RunContext {
    /// `fleetbake:fleet`, `fleetbake:flavor`, `fleetbake:run-id`: on every resource the run creates.
    pub fn identity_tags(&self, flavor: &FlavorName) -> Tags {
        Tags::from([
            ("fleetbake:fleet".to_string(), self.fleet.name.clone()),
            ("fleetbake:flavor".to_string(), flavor.to_string()),
            ("fleetbake:run-id".to_string(), self.run_id.to_string()),
        ])
    }

    /// An image's tags in every region: the fleet's, the defaults' and the flavor's, then fleetbake's own.
    pub fn image_tags(&self, flavor: &Flavor, source_image: &ImageId) -> Tags {
        let mut tags = self.fleet.tags.clone();
        tags.extend(flavor.tags.clone());
        tags.extend(self.identity_tags(&flavor.name));
        tags.insert("fleetbake:source-image-id".to_string(), source_image.to_string());
        tags
    }
}
