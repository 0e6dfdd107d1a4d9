//! `--events PATH` (or `-`): every event as one JSON object per line, flushed per line so `tail -f` and a CI
//! step can follow a run. Each has `v` (the schema version), `time` (RFC 3339, the run's clock) and `type`;
//! job events also `flavor` and `region`, and `account` for another account's copy (`[[distribution]]`). docs/manifest.md ("Events for machines") lists one example line per type.

use std::io::Write;

use chrono::SecondsFormat;
use serde_json::{json, Value};

use super::{ReportError, Reporter};
use crate::config::{Account, Place};
use crate::outcome::JobLabel;
use crate::report::events::{OutputStream, RunEvent, Stamped};

/// The schema version of an event line; bumped when a field changes meaning or goes away.
pub const EVENTS_VERSION: u32 = 1;

pub struct JsonLinesReporter {
    out: Box<dyn Write + Send>,
    /// Where it writes, for errors.
    target: String,
}

impl JsonLinesReporter {
    pub fn new(out: Box<dyn Write + Send>, target: impl Into<String>) -> Self {
        JsonLinesReporter { out, target: target.into() }
    }
}

/// An event as its JSON line (without the newline).
pub fn to_json_line(stamped: &Stamped) -> String {
    let job = |job: &JobLabel| with_account(json!({ "flavor": job.flavor, "region": job.region() }), &job.place);
    let (kind, fields) = match &stamped.event {
        RunEvent::RunStarted { fleet, run_id, builds, copies, selective, .. } => (
            "run_started",
            json!({ "fleet": fleet, "run_id": run_id.as_str(), "builds": builds, "copies": copies, "selective": selective }),
        ),
        RunEvent::PreflightPassed { checks } => ("preflight_passed", json!({ "checks": checks })),
        RunEvent::JobStarted { job: label, kind } => ("job_started", merge(job(label), json!({ "kind": kind }))),
        RunEvent::Progress { job: label, stage, detail } => {
            ("stage", merge(job(label), json!({ "stage": stage, "detail": detail })))
        }
        RunEvent::Output { job: label, stream, line } => {
            let stream = match stream {
                OutputStream::Stdout => "stdout",
                OutputStream::Stderr => "stderr",
            };
            ("provisioner_output", merge(job(label), json!({ "stream": stream, "line": line.text() })))
        }
        RunEvent::ImageAvailable { job: label, artifact } => {
            ("image_available", merge(job(label), json!({ "artifact": artifact })))
        }
        RunEvent::JobSucceeded { job: label } => ("job_succeeded", job(label)),
        RunEvent::JobFailed(failure) => ("job_failed", serde_json::to_value(failure).unwrap_or(Value::Null)),
        RunEvent::ImageInProgress(image) => ("image_in_progress", serde_json::to_value(image).unwrap_or(Value::Null)),
        RunEvent::Published { job: label, publication } => {
            ("published", merge(job(label), serde_json::to_value(publication).unwrap_or(Value::Null)))
        }
        RunEvent::Throttled { place, action } => {
            ("throttled", with_account(json!({ "region": place.region, "action": action }), place))
        }
        RunEvent::Swept { resource } => ("swept", json!({ "resource": resource })),
        RunEvent::Kept(kept) => {
            let value = serde_json::to_value(kept).unwrap_or(Value::Null);
            (
                "kept",
                match &kept.job {
                    Some(label) => merge(job(label), value),
                    None => value,
                },
            )
        }
        RunEvent::CleanupFailed { job: label, resource, error } => {
            ("cleanup_failed", merge(job(label), json!({ "resource": resource, "error": error })))
        }
        RunEvent::LocalLeftoversEnded(leftovers) => (
            "local_leftovers_ended",
            json!({
                "run_id": leftovers.run_id,
                "masters": leftovers.masters,
                "key_directories": leftovers.key_directories,
            }),
        ),
        RunEvent::Resuming { run_id, attempt, journal } => (
            "resuming",
            json!({ "run_id": run_id.as_str(), "attempt": attempt, "journal": journal.display().to_string() }),
        ),
        RunEvent::ManifestSetAside { path, kept_as, why } => (
            "manifest_set_aside",
            json!({ "path": path.display().to_string(), "kept_as": kept_as.display().to_string(), "why": why }),
        ),
        RunEvent::Interrupted { signal } => ("interrupted", json!({ "signal": signal })),
        RunEvent::RunFinished { status, succeeded, failed, in_progress, .. } => (
            "run_finished",
            json!({ "status": status, "succeeded": succeeded, "failed": failed, "in_progress": in_progress }),
        ),
    };
    // `v`, `time` and `type` first, for people reading the file; the rest as serde_json orders it.
    let mut line = format!(
        "{{\"v\":{EVENTS_VERSION},\"time\":{},\"type\":{}",
        json!(stamped.at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        json!(kind)
    );
    if let Value::Object(fields) = fields {
        for (key, value) in fields {
            line.push_str(&format!(",{}:{value}", json!(key)));
        }
    }
    line.push('}');
    line
}

/// `fields` with `account` added for a place of another account (the own account's events keep their shape).
fn with_account(fields: Value, place: &Place) -> Value {
    match &place.account {
        Account::Own => fields,
        Account::Id(id) => merge(fields, json!({ "account": id })),
    }
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Value::Object(a), Value::Object(b)) = (&mut a, b) {
        a.extend(b);
    }
    a
}

impl Reporter for JsonLinesReporter {
    fn report(&mut self, stamped: &Stamped) -> Result<(), ReportError> {
        let line = to_json_line(stamped);
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .map_err(|error| ReportError(format!("cannot write events to `{}`: {error}", self.target)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FlavorName, Region};
    use crate::report::events::OutputLine;

    #[test]
    fn an_output_line_is_json_text_its_control_characters_escaped_by_json_and_bad_bytes_made_u_fffd() {
        let event = RunEvent::Output {
            job: JobLabel::new(FlavorName::new("web"), Region::new("us-west-2")),
            stream: OutputStream::Stdout,
            line: OutputLine::new(b"\x1b]0;pwned\x07\x1b[2J \xff\tend".to_vec()),
        };
        let line = to_json_line(&Stamped { at: chrono::DateTime::UNIX_EPOCH, event });
        let expected = "\"line\":\"\\u001b]0;pwned\\u0007\\u001b[2J \u{fffd}\\tend\"";
        assert!(line.contains(expected), "{line}");
        assert!(!line.bytes().any(|byte| byte.is_ascii_control()), "{line}");
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["line"], "\u{1b}]0;pwned\u{7}\u{1b}[2J \u{fffd}\tend");
    }

    #[test]
    fn another_account_s_job_events_carry_the_account_and_the_own_account_s_do_not() {
        let own = JobLabel::new(FlavorName::new("web"), Region::new("us-west-2"));
        let other = JobLabel {
            place: Place { account: Account::Id("222233334444".into()), region: Region::new("us-east-1") },
            ..own.clone()
        };
        let line = |event| {
            serde_json::from_str::<Value>(&to_json_line(&Stamped { at: chrono::DateTime::UNIX_EPOCH, event })).unwrap()
        };
        let succeeded = line(RunEvent::JobSucceeded { job: other.clone() });
        assert_eq!((&succeeded["region"], &succeeded["account"]), (&json!("us-east-1"), &json!("222233334444")));
        assert!(line(RunEvent::JobSucceeded { job: own }).get("account").is_none());
        let failed = line(RunEvent::JobFailed(crate::outcome::Failure::new(&other, crate::outcome::Stage::Copy, "no")));
        assert_eq!((&failed["region"], &failed["account"]), (&json!("us-east-1"), &json!("222233334444")));
        let pending = line(RunEvent::ImageInProgress(crate::outcome::InProgress::new(
            &other,
            crate::cloud::ImageId::new("ami-1"),
        )));
        assert_eq!(pending["account"], "222233334444");
    }
}
