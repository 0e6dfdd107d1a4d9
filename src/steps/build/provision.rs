//! Provisioning: the flavor's provisioners (or the image's tests) run in order over a connection, their output
//! streamed as events.
//!
//! Layer: `steps` (part of [`super`], the build).

use crate::config::Provisioner;
use crate::outcome::Stage;
use crate::remote::provision::{self, Described, Phase, ProvisionEnv};
use crate::remote::Connection;
use crate::report::events::{OutputLine, RunEvent};

use super::{BuildContext, StepError};

pub(super) async fn provision_all(context: &BuildContext, connection: &dyn Connection) -> Result<(), StepError> {
    run_all(context, connection, &context.flavor.provisioners, Phase::Provision).await
}

/// How many of a failed test's last output lines its failure quotes.
const TEST_OUTPUT_LINES: usize = 10;

/// The stage a phase's progress and failures are reported at, and how many of a failed one's last output lines
/// its failure quotes (a provisioner's are only streamed).
fn stage_of(phase: &Phase) -> (Stage, usize) {
    match phase {
        Phase::Provision => (Stage::Provision, 0),
        Phase::Test { .. } => (Stage::Test, TEST_OUTPUT_LINES),
    }
}

/// Runs a phase's provisioners (or tests) in order over the connection, output streamed.
pub(super) async fn run_all(
    context: &BuildContext,
    connection: &dyn Connection,
    list: &[Provisioner],
    phase: Phase,
) -> Result<(), StepError> {
    let (stage, quoted) = stage_of(&phase);
    let kind = phase.noun();
    let env = ProvisionEnv {
        flavor: context.flavor.name.to_string(),
        region: context.job.region.to_string(),
        run_id: context.run.run_id.to_string(),
        phase,
    };
    let label = context.label();
    for (index, provisioner) in list.iter().enumerate() {
        let number = index + 1;
        context.progress(stage, format!("{kind} {number}/{}: {}", list.len(), Described(provisioner)));
        let mut last = std::collections::VecDeque::with_capacity(quoted);
        let mut output = |stream, line: OutputLine| {
            if quoted > 0 {
                if last.len() == quoted {
                    last.pop_front();
                }
                last.push_back(line.clone());
            }
            context.events.send(RunEvent::Output { job: label.clone(), stream, line });
        };
        if let Err(error) = provision::run(connection, number, provisioner, &env, &mut output).await {
            let mut message = error.to_string();
            if !last.is_empty() {
                let lines: Vec<String> = last.iter().map(|line| line.text().into_owned()).collect();
                message.push_str(&format!("; its last output: {}", lines.join(" | ")));
            }
            return Err(StepError::new(stage, message));
        }
    }
    Ok(())
}
