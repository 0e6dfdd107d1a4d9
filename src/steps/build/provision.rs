//! Provisioning: the flavor's provisioners (or the image's tests) run in order over a connection, their output
//! streamed as events.
//!
//! Layer: `steps` (part of [`super`], the build).

use crate::config::ProvisionerEntry;
use crate::outcome::Stage;
use crate::remote::provision::{self, Described, Phase, ProvisionCause, ProvisionEnv, ProvisionError};
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
        // Run by the on-failure phase (`failure`), which saves their output instead.
        Phase::OnFailure => (Stage::Provision, 0),
    }
}

/// The most of each quoted output line a failure message carries (a line may be 64 KiB long).
const QUOTED_LINE_CHARS: usize = 200;

/// Runs a phase's provisioners (or tests) in order over the connection, output streamed, each within its
/// `timeout`: past it, its job fails at the phase's stage (what it runs on the instance is ended when the
/// connection closes, and the instance goes with the cleanup stack).
pub(super) async fn run_all(
    context: &BuildContext,
    connection: &dyn Connection,
    list: &[ProvisionerEntry],
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
    for (index, entry) in list.iter().enumerate() {
        let number = index + 1;
        let provisioner = &entry.provisioner;
        context.progress(stage, format!("{kind} {number}/{}: {}", list.len(), Described(provisioner)));
        let mut last = std::collections::VecDeque::with_capacity(quoted);
        let mut output = |stream, line: OutputLine| {
            // A sensitive variable's value printed by the script is shown (and quoted) as `<sensitive>`.
            let line = context.run.fleet.variables.mask(line.as_bytes()).map_or(line, OutputLine::new);
            if quoted > 0 {
                if last.len() == quoted {
                    last.pop_front();
                }
                last.push_back(line.clone());
            }
            context.events.send(RunEvent::Output { job: label.clone(), stream, line });
        };
        let ran =
            tokio::time::timeout(entry.timeout, provision::run(connection, number, provisioner, &env, &mut output))
                .await
                .unwrap_or_else(|_| {
                    Err(ProvisionError::new(&env, number, provisioner, ProvisionCause::TimedOut(entry.timeout)))
                });
        let ran = match ran {
            // A reboot: the connection dropped under it (ssh's 255, or no exit status at all), as it said it would.
            Err(ProvisionError { cause: ProvisionCause::ExitCode(255) | ProvisionCause::Abnormal(_), .. })
                if entry.expect_disconnect =>
            {
                context.progress(
                    stage,
                    format!("{kind} {number}: the connection dropped, as expected (`expect_disconnect`); the next connects again"),
                );
                Ok(())
            }
            ran => ran,
        };
        if let Err(error) = ran {
            let mut message = error.to_string();
            if !last.is_empty() {
                let lines: Vec<String> = last.iter().map(quoted_line).collect();
                message.push_str(&format!("; its last output: {}", lines.join(" | ")));
            }
            return Err(StepError::new(stage, message));
        }
    }
    Ok(())
}

/// An output line as a failure message quotes it: its text (lossy UTF-8), at most [`QUOTED_LINE_CHARS`]
/// characters. Control characters stay as printed: the message is data (JSON in the manifest and the
/// events); whoever shows it on a terminal escapes them ([`crate::report::text`]).
fn quoted_line(line: &OutputLine) -> String {
    let text = line.text();
    match text.char_indices().nth(QUOTED_LINE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::ssh::MAX_LINE_BYTES;

    #[test]
    fn a_quoted_line_is_cut_to_its_length() {
        assert_eq!(quoted_line(&OutputLine::from("short")), "short");
        let long = quoted_line(&OutputLine::new(vec![b'x'; MAX_LINE_BYTES]));
        assert_eq!(long.chars().count(), QUOTED_LINE_CHARS + 1);
        assert!(long.ends_with('…'));
        assert_eq!(quoted_line(&OutputLine::new(b"\xff\x1b]0;t\x07".to_vec())), "\u{fffd}\u{1b}]0;t\u{7}");
    }
}
