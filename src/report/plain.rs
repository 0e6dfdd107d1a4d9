//! Plain lines' one stamp, and the lines a command prints outside the reporters (a warning before a run, what
//! follows its summary, an error at its end, a log line): off a terminal a CI log parser meets every line of a
//! run starting with the same UTC time the [`super::TerminalReporter`]'s lines do (the simulated time in the
//! sim), so they go through a [`Console`] (and logs through [`LineStamp`]), never `eprintln!`.

use std::fmt::Display;
use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::report::text::escape_controls;
use crate::util::clock::line_time;

/// The stamp a plain line starts with: RFC 3339, whole seconds, `Z` (`2026-11-27T02:14:07Z`).
pub fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Where a command's own lines go, and whether each starts with the stamp: a run's plain view and `-q` stamp
/// them (as their reporter does); the live view and the other commands print them as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Console {
    stamped: bool,
}

impl Console {
    /// Every line starts with the run's time ([`line_time`]).
    pub const STAMPED: Console = Console { stamped: true };
    /// Lines as written.
    pub const AS_WRITTEN: Console = Console { stamped: false };

    /// `error: MESSAGE` on stderr.
    pub fn error(&self, message: impl Display) {
        self.eprint(format_args!("error: {message}"));
    }

    /// `warning: MESSAGE` on stderr.
    pub fn warning(&self, message: impl Display) {
        self.eprint(format_args!("warning: {message}"));
    }

    /// Each line of `text` on stderr.
    pub fn eprint(&self, text: impl Display) {
        // A closed stderr must not stop a command: what it did is in its files and its exit code.
        let _ = self.write(&mut std::io::stderr().lock(), &text.to_string(), line_time());
    }

    /// Each line of `text` on stdout.
    pub fn print(&self, text: impl Display) {
        let _ = self.write(&mut std::io::stdout().lock(), &text.to_string(), line_time());
    }

    /// Writes each line of `text` (a last one without a newline too), stamped with `at` if this console stamps;
    /// a stamped line has its control characters escaped, as the reporter's lines do.
    pub fn write(&self, out: &mut dyn Write, text: &str, at: DateTime<Utc>) -> std::io::Result<()> {
        if !self.stamped {
            return out.write_all(if text.ends_with('\n') { text.to_string() } else { format!("{text}\n") }.as_bytes());
        }
        let at = stamp(at);
        for line in text.lines() {
            writeln!(out, "{at} {}", escape_controls(line))?;
        }
        Ok(())
    }
}

/// The time of a log line (`tracing`) in a stamped console: the [`stamp`] of [`line_time`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LineStamp;

impl tracing_subscriber::fmt::time::FormatTime for LineStamp {
    fn format_time(&self, out: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(out, "{}", stamp(line_time()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(console: Console, text: &str) -> String {
        let at: DateTime<Utc> = "2026-11-27T02:14:07.600Z".parse().unwrap();
        let mut out = Vec::new();
        console.write(&mut out, text, at).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_stamped_console_stamps_every_line_and_escapes_control_characters() {
        assert_eq!(
            written(Console::STAMPED, "error: cleanup could not remove these:\n  key pair k\x1b[2J"),
            "2026-11-27T02:14:07Z error: cleanup could not remove these:\n2026-11-27T02:14:07Z   key pair k\\x1b[2J\n"
        );
    }

    #[test]
    fn as_written_lines_are_unchanged_and_end_with_a_newline() {
        assert_eq!(written(Console::AS_WRITTEN, "warning: a\n  b"), "warning: a\n  b\n");
        assert_eq!(written(Console::AS_WRITTEN, "check 1\ncheck 2\n"), "check 1\ncheck 2\n");
    }
}
