//! The runs' saved logs on this machine (what the on-failure phase wrote): where a run's go,
//! `.fleetbake/<fleet>/<run id>/logs/` beside its journal ([`JournalDir::logs_path`]), and how `gc` removes
//! them once the run started longer ago than `[retention] logs` ([`decide`], pure; [`gc_logs`]), never those
//! of a run in progress (its journal locked).

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::plan::RunId;
use crate::state::journal::JournalDir;

impl JournalDir {
    /// The folder a run's saved logs go in.
    pub fn logs_path(&self, run_id: &RunId) -> PathBuf {
        self.path.join(run_id.as_str()).join("logs")
    }
}

/// What gc does with one run's logs folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogsDecision {
    /// Kept: the run is in progress, or started within the retention.
    Keep,
    /// Removed: the run started this long ago, past the retention.
    Remove { age: Duration },
}

/// Pure: a run's logs go once it started longer ago than `retention`, unless it is in progress.
pub fn decide(run: &RunId, in_progress: bool, now: DateTime<Utc>, retention: Duration) -> LogsDecision {
    let Some(started) = run.started_at() else {
        return LogsDecision::Keep;
    };
    let age = (now - started).to_std().unwrap_or_default();
    if in_progress || age <= retention {
        LogsDecision::Keep
    } else {
        LogsDecision::Remove { age }
    }
}

/// What gc did with the logs (or, in a dry run, would do), line by line.
#[derive(Debug, Default)]
pub struct LogsGc {
    pub lines: Vec<String>,
    pub removed: usize,
    pub failures: usize,
}

/// The logs folders of the fleet's runs: `<journal dir>/<run id>/logs`, each with its run.
fn find(dir: &JournalDir) -> Vec<(RunId, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(&dir.path) else {
        return Vec::new();
    };
    let mut found: Vec<(RunId, PathBuf)> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| RunId::parse(&entry.file_name().to_string_lossy()))
        .map(|run| (dir.logs_path(&run), run))
        .filter(|(path, _)| path.is_dir())
        .map(|(path, run)| (run, path))
        .collect();
    found.sort();
    found
}

/// Removes (or, `dry_run`, names) the logs folder of every run of the fleet that started longer ago than
/// `retention` and is not in progress; the run's folder too once it is empty.
pub fn gc_logs(dir: &JournalDir, retention: Duration, now: DateTime<Utc>, dry_run: bool) -> LogsGc {
    let mut outcome = LogsGc::default();
    let kept_for = humantime::format_duration(retention);
    for (run, path) in find(dir) {
        // A journal that cannot be looked at may be a run in progress: left.
        let in_progress = dir.in_progress(&run).map_or(true, |locked| locked.unwrap_or(false));
        let LogsDecision::Remove { age } = decide(&run, in_progress, now, retention) else {
            continue;
        };
        let age = humantime::format_duration(Duration::from_secs(age.as_secs() / 3600 * 3600));
        let why = format!("run {run} started {age} ago, past `[retention] logs` ({kept_for})");
        if dry_run {
            outcome.lines.push(format!("would remove the logs of {why}: `{}`", path.display()));
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {
                outcome.removed += 1;
                outcome.lines.push(format!("removed the logs of {why}: `{}`", path.display()));
                if let Some(run_folder) = path.parent() {
                    // Only if nothing else is in it.
                    let _ = std::fs::remove_dir(run_folder);
                }
            }
            Err(error) => {
                outcome.failures += 1;
                outcome.lines.push(format!("could not remove the logs `{}`: {error}", path.display()));
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    #[test]
    fn logs_go_once_the_run_is_older_than_the_retention_and_not_in_progress() {
        let now = at("2026-12-20T12:00:00Z");
        let old = RunId::new(at("2026-12-01T03:00:00Z"), 1);
        let recent = RunId::new(at("2026-12-10T03:00:00Z"), 2);
        assert_eq!(decide(&recent, false, now, 14 * DAY), LogsDecision::Keep);
        let LogsDecision::Remove { age } = decide(&old, false, now, 14 * DAY) else { panic!("old logs go") };
        assert_eq!(age, 19 * DAY + Duration::from_secs(9 * 3600));
        assert_eq!(decide(&old, true, now, 14 * DAY), LogsDecision::Keep, "never a run in progress");
        assert_eq!(decide(&old, false, now, 30 * DAY), LogsDecision::Keep);
    }

    #[test]
    fn gc_removes_old_logs_keeps_newer_ones_and_a_dry_run_only_says_so() {
        let root = tempfile::tempdir().unwrap();
        let dir = JournalDir { path: root.path().to_path_buf() };
        let now = at("2026-12-20T12:00:00Z");
        let old = RunId::new(at("2026-12-01T03:00:00Z"), 1);
        let recent = RunId::new(at("2026-12-19T03:00:00Z"), 2);
        for run in [&old, &recent] {
            std::fs::create_dir_all(dir.logs_path(run).join("web/us-west-2")).unwrap();
            std::fs::write(dir.logs_path(run).join("web/us-west-2/on_failure-1.log"), "x").unwrap();
        }
        std::fs::create_dir_all(root.path().join("not-a-run/logs")).unwrap();

        let dry = gc_logs(&dir, 14 * DAY, now, true);
        assert_eq!(dry.lines.len(), 1, "{:?}", dry.lines);
        assert!(
            dry.lines[0].starts_with(&format!("would remove the logs of run {old} started 19days 9h ago")),
            "{:?}",
            dry.lines
        );
        assert!(dir.logs_path(&old).exists(), "a dry run removes nothing");

        let done = gc_logs(&dir, 14 * DAY, now, false);
        assert_eq!((done.removed, done.failures), (1, 0), "{:?}", done.lines);
        assert!(!root.path().join(old.as_str()).exists(), "the run's folder goes with its logs");
        assert!(dir.logs_path(&recent).join("web/us-west-2/on_failure-1.log").exists());
        assert!(root.path().join("not-a-run/logs").exists(), "only run folders are looked at");
    }
}
