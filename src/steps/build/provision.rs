//! Provisioning: the flavor's provisioners (or the image's tests) run in order over a connection, their output
//! streamed as events.
//!
//! Layer: `steps` (part of [`super`], the build).

use crate::cloud::ImageId;
use crate::config::Provisioner;
use crate::outcome::Stage;
use crate::remote::provision::{Described, ProvisionEnv};
use crate::remote::Connection;
use crate::report::events::{OutputLine, RunEvent};

use super::{BuildContext, StepError};

pub(super) async fn provision_all(context: &BuildContext, connection: &dyn Connection) -> Result<(), StepError> {
    run_all(context, connection, &context.flavor.provisioners, None).await
}

/// How many of a failed test's last output lines its failure quotes.
const TEST_OUTPUT_LINES: usize = 10;

/// Runs provisioners (or, with `image`, the image's tests) in order over the connection, output streamed.
pub(super) async fn run_all(
    context: &BuildContext,
    connection: &dyn Connection,
    list: &[Provisioner],
    image: Option<&ImageId>,
) -> Result<(), StepError> {
    let env = ProvisionEnv {
        flavor: context.flavor.name.to_string(),
        region: context.job.region.to_string(),
        run_id: context.run.run_id.to_string(),
        image_id: image.map(ToString::to_string),
    };
    let (stage, kind) = match image {
        Some(_) => (Stage::Test, "test"),
        None => (Stage::Provision, "provisioner"),
    };
    let label = context.label();
    for (index, provisioner) in list.iter().enumerate() {
        let number = index + 1;
        context.progress(stage, format!("{kind} {number}/{}: {}", list.len(), Described(provisioner)));
        // A test's last lines, for its failure; a provisioner's are only streamed.
        let mut last = std::collections::VecDeque::with_capacity(if image.is_some() { TEST_OUTPUT_LINES } else { 0 });
        let mut output = |stream, line: OutputLine| {
            if image.is_some() {
                if last.len() == TEST_OUTPUT_LINES {
                    last.pop_front();
                }
                last.push_back(line.clone());
            }
            context.events.send(RunEvent::Output { job: label.clone(), stream, line });
        };
        if let Err(error) = connection.provision(number, provisioner, &env, &mut output).await {
            let mut message = error.to_string();
            if image.is_some() {
                message = message.replacen("provisioner ", "test ", 1);
            }
            if image.is_some() && !last.is_empty() {
                let lines: Vec<String> = last.iter().map(|line| line.text().into_owned()).collect();
                message.push_str(&format!("; its last output: {}", lines.join(" | ")));
            }
            return Err(StepError::new(stage, message));
        }
    }
    Ok(())
}
