//! Reading a file from an instance (`collect`, after a failure) over any [`Connection`]'s `exec`: one fixed
//! command with the path single-quoted, which checks the file and prints at most `cap + 1` of its bytes as
//! base64 (so bytes travel as they are, whatever they hold, and a longer file is known to be cut). What the
//! instance says about a file it cannot read is untrusted: cut and escaped before it reaches a message.

use base64::Engine as _;

use crate::remote::ssh::shell_quote;
use crate::remote::{Connection, Exit, RemoteError};
use crate::report::events::{OutputLine, OutputStream};
use crate::report::text::escape_controls;

/// A file read from the instance: its first bytes, as they are, and whether it had more than the cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collected {
    pub bytes: Vec<u8>,
    /// The file was longer than the cap: `bytes` is its beginning.
    pub truncated: bool,
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The instance answered that it cannot be read (missing, a directory, not readable by the SSH user):
    /// its words, escaped and cut.
    #[error("{0}")]
    NotReadable(String),
    /// The command could not be carried out: the connection is gone.
    #[error("{0}")]
    Remote(#[from] RemoteError),
    /// The command ended otherwise (killed, a status of its own), or printed what is not base64.
    #[error("{0}")]
    Garbled(String),
}

/// The status the command exits with when the file cannot be read (it says why on stderr).
const NOT_READABLE: i32 = 3;

/// The most of the instance's own words about an unreadable file a message keeps.
const REASON_CHARS: usize = 200;

/// The command that prints at most `limit` bytes of `path` as base64 lines, or says why it cannot.
fn read_command(path: &str, limit: usize) -> String {
    format!(
        "f={path}; if [ ! -e \"$f\" ]; then echo 'no such file' >&2; exit {NOT_READABLE}; fi; \
         if [ -d \"$f\" ]; then echo 'a directory, not a file' >&2; exit {NOT_READABLE}; fi; \
         if [ ! -r \"$f\" ]; then echo 'not readable by the SSH user' >&2; exit {NOT_READABLE}; fi; \
         head -c {limit} -- \"$f\" | base64",
        path = shell_quote(path)
    )
}

/// Reads at most `cap` bytes of `path` over `connection`'s `exec` (what [`Connection::read_file`] does unless a
/// connection answers for itself): never more than `cap` bytes (and one base64 line) held.
pub async fn read_over_exec<C: Connection + ?Sized>(
    connection: &C,
    path: &str,
    cap: usize,
) -> Result<Collected, CollectError> {
    let mut bytes = Vec::new();
    let mut truncated = false;
    let mut garbled = false;
    let mut reason: Option<String> = None;
    let mut output = |stream: OutputStream, line: OutputLine| match stream {
        OutputStream::Stdout if !truncated && !garbled => {
            match base64::engine::general_purpose::STANDARD.decode(line.as_bytes().trim_ascii()) {
                Ok(decoded) => {
                    bytes.extend_from_slice(&decoded);
                    if bytes.len() > cap {
                        bytes.truncate(cap);
                        truncated = true;
                    }
                }
                Err(_) => garbled = true,
            }
        }
        OutputStream::Stderr if reason.is_none() => reason = Some(said(&line)),
        _ => {}
    };
    let exit = connection.exec(&read_command(path, cap.saturating_add(1)), &mut output).await?;
    match exit {
        _ if garbled => Err(CollectError::Garbled("the instance's answer is not base64 (no `base64` there?)".into())),
        Exit::Success => Ok(Collected { bytes, truncated }),
        Exit::Code(NOT_READABLE) => Err(CollectError::NotReadable(reason.unwrap_or_else(|| "cannot read it".into()))),
        Exit::Code(code) => Err(CollectError::Garbled(match reason {
            Some(reason) => format!("reading it exited with status {code}: {reason}"),
            None => format!("reading it exited with status {code}"),
        })),
        Exit::Abnormal(why) => Err(CollectError::Garbled(format!("reading it ended abnormally: {why}"))),
    }
}

/// Text that may hold what an instance said (an error quoting its stderr), made fit for a progress line or
/// a message: control characters escaped, as a terminal reporter shows them.
pub fn escaped(text: &str) -> String {
    escape_controls(text).into_owned()
}

/// A line the instance printed, made fit for a message: lossy text, cut, control characters escaped.
fn said(line: &OutputLine) -> String {
    let text = line.text();
    let cut: String = text.chars().take(REASON_CHARS).collect();
    escape_controls(&cut).into_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::remote::OutputSink;

    /// Answers `exec` with the lines it was given (stdout then stderr) and an exit.
    struct Answering {
        stdout: Vec<Vec<u8>>,
        stderr: Vec<Vec<u8>>,
        exit: fn() -> Exit,
        commands: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Connection for Answering {
        async fn upload(&self, _content: &[u8], _remote_path: &str) -> Result<(), RemoteError> {
            Ok(())
        }
        async fn exec(&self, command_line: &str, output: OutputSink<'_>) -> Result<Exit, RemoteError> {
            self.commands.lock().unwrap().push(command_line.to_string());
            for line in &self.stdout {
                output(OutputStream::Stdout, OutputLine::new(line.clone()));
            }
            for line in &self.stderr {
                output(OutputStream::Stderr, OutputLine::new(line.clone()));
            }
            Ok((self.exit)())
        }
        async fn close(self: Box<Self>) {}
    }

    fn answering(content: &[u8], exit: fn() -> Exit) -> Answering {
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        // As base64(1) prints it: lines of 76 characters.
        let stdout = encoded.as_bytes().chunks(76).map(<[u8]>::to_vec).collect();
        Answering { stdout, stderr: Vec::new(), exit, commands: Mutex::default() }
    }

    #[tokio::test]
    async fn a_file_s_bytes_come_back_as_they_are() {
        let content: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let connection = answering(&content, || Exit::Success);
        let collected = connection.read_file("/var/log/x.log", 4096).await.unwrap();
        assert_eq!(collected, Collected { bytes: content, truncated: false });
        let commands = connection.commands.into_inner().unwrap();
        assert!(
            commands[0].starts_with("f='/var/log/x.log'; ") && commands[0].ends_with("head -c 4097 -- \"$f\" | base64")
        );
    }

    /// The command asks for one byte past the cap: a file longer than the cap is cut and said to be.
    #[tokio::test]
    async fn a_file_past_the_cap_is_cut_to_it() {
        let connection = answering(&[b'x'; 101], || Exit::Success);
        let collected = connection.read_file("/big", 100).await.unwrap();
        assert_eq!(collected, Collected { bytes: vec![b'x'; 100], truncated: true });
        let exactly = answering(&[b'x'; 100], || Exit::Success).read_file("/big", 100).await.unwrap();
        assert!(!exactly.truncated);
    }

    /// A path is one single-quoted argument, whatever it holds.
    #[test]
    fn the_path_is_quoted() {
        assert!(read_command("/tmp/it's $(here)", 9).starts_with("f='/tmp/it'\\''s $(here)'; "));
    }

    #[tokio::test]
    async fn an_unreadable_file_says_why_escaped_and_cut() {
        let mut connection = answering(b"", || Exit::Code(NOT_READABLE));
        let mut hostile = b"no such file \x1b]0;pwned\x07".to_vec();
        hostile.extend(vec![b'y'; 1000]);
        connection.stderr = vec![hostile];
        let error = connection.read_file("/nope", 10).await.unwrap_err();
        let CollectError::NotReadable(reason) = &error else { panic!("{error:?}") };
        assert!(reason.starts_with("no such file \\x1b]0;pwned\\x07"), "{reason}");
        assert!(!reason.chars().any(char::is_control) && reason.len() < 2 * REASON_CHARS, "{reason}");
    }

    #[tokio::test]
    async fn an_answer_that_is_not_base64_is_an_error() {
        let mut connection = answering(b"", || Exit::Success);
        connection.stdout = vec![b"(sim) would run".to_vec()];
        assert!(matches!(connection.read_file("/x", 10).await, Err(CollectError::Garbled(_))));
    }
}
