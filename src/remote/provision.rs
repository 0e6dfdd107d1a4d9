//! Provisioners, run in order over a [`Connection`] (any way in: only its `upload` and `exec`): `file` uploads,
//! `shell` scripts (a local file or inline lines) uploaded to a temporary path, run with FLEETBAKE_* in their
//! environment, then removed.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::{Provisioner, ShellScript};
use crate::remote::ssh::shell_quote;
use crate::remote::{Connection, Exit, OutputSink, RemoteError};

/// What a provisioner sees in its environment besides the fleet file's `env`.
pub struct ProvisionEnv {
    pub flavor: String,
    pub region: String,
    pub run_id: String,
    pub phase: Phase,
}

/// What a list of provisioners is run for: it decides what one of them is called, and what they are told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Provisioning the build's instance (`[[flavor]] provisioners`).
    Provision,
    /// Testing the image made (`[[flavor]] tests`), on an instance launched from it: its id, as
    /// `FLEETBAKE_IMAGE_ID`.
    Test { image_id: String },
}

impl Phase {
    /// What one of the list is called in messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Phase::Provision => "provisioner",
            Phase::Test { .. } => "test",
        }
    }
}

/// Provisioner (or test) `number` (1-based) failed.
#[derive(Debug, thiserror::Error)]
#[error("{} {number} ({what}){cause}", phase.noun())]
pub struct ProvisionError {
    pub phase: Phase,
    pub number: usize,
    /// The provisioner, [`Described`].
    pub what: String,
    pub cause: ProvisionCause,
}

/// Why a provisioner failed; said after its name.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionCause {
    #[error(": cannot read `{path}`: {error}")]
    LocalFile { path: String, error: std::io::Error },
    #[error(": {0}")]
    Remote(RemoteError),
    #[error(" exited with status {0}")]
    ExitCode(i32),
    #[error(" ended abnormally: {0}")]
    Abnormal(String),
    /// Still running at its limit (its `timeout`, or the `provisioner_timeout` it inherits).
    #[error(" did not finish within {} (its `timeout`)", humantime::format_duration(*.0))]
    TimedOut(std::time::Duration),
}

impl ProvisionError {
    pub fn new(env: &ProvisionEnv, number: usize, provisioner: &Provisioner, cause: ProvisionCause) -> Self {
        ProvisionError { phase: env.phase.clone(), number, what: Described(provisioner).to_string(), cause }
    }
}

/// A short description of a provisioner for messages (never its inline text, which may hold secrets).
pub struct Described<'a>(pub &'a Provisioner);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Provisioner::File { source, destination } => write!(f, "file {} → {destination}", file_name(source)),
            Provisioner::Shell { script: ShellScript::File(path), .. } => write!(f, "shell {}", file_name(path)),
            Provisioner::Shell { script: ShellScript::Inline(lines), .. } => {
                write!(f, "shell inline, {} lines", lines.len())
            }
        }
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Runs one provisioner (1-based `number`) over `connection`'s `upload` and `exec`, streaming its output to
/// `output` (or lets a connection that stands in for provisioners, the simulated one, answer for it).
pub async fn run(
    connection: &dyn Connection,
    number: usize,
    provisioner: &Provisioner,
    env: &ProvisionEnv,
    output: OutputSink<'_>,
) -> Result<(), ProvisionError> {
    if let Some(stand_in) = connection.stand_in() {
        return stand_in.provision(number, provisioner, env, output).await;
    }
    let failed = |cause| ProvisionError::new(env, number, provisioner, cause);
    let remote_error = |error| failed(ProvisionCause::Remote(error));
    match provisioner {
        Provisioner::File { source, destination } => {
            let content = read_local(source).await.map_err(failed)?;
            connection.upload(&content, destination).await.map_err(remote_error)
        }
        Provisioner::Shell { script, env: user_env } => {
            let content = match script {
                ShellScript::File(path) => read_local(path).await.map_err(failed)?,
                ShellScript::Inline(lines) => format!("#!/bin/sh -e\n{}\n", lines.join("\n")).into_bytes(),
            };
            let remote_path = format!("/tmp/fleetbake-{}-{number}-{:08x}.sh", env.run_id, fastrand::u32(..));
            connection.upload(&content, &remote_path).await.map_err(remote_error)?;
            let command_line = script_command(&remote_path, env, user_env);
            match connection.exec(&command_line, output).await.map_err(remote_error)? {
                Exit::Success => Ok(()),
                Exit::Code(code) => Err(failed(ProvisionCause::ExitCode(code))),
                Exit::Abnormal(reason) => Err(failed(ProvisionCause::Abnormal(reason))),
            }
        }
    }
}

async fn read_local(path: &std::path::Path) -> Result<Vec<u8>, ProvisionCause> {
    tokio::fs::read(path).await.map_err(|error| ProvisionCause::LocalFile { path: path.display().to_string(), error })
}

/// Makes the uploaded script executable, runs it with the environment, removes it, keeps its exit status.
fn script_command(remote_path: &str, env: &ProvisionEnv, user_env: &BTreeMap<String, String>) -> String {
    let path = shell_quote(remote_path);
    let mut assignments = vec![
        format!("FLEETBAKE_FLAVOR={}", shell_quote(&env.flavor)),
        format!("FLEETBAKE_REGION={}", shell_quote(&env.region)),
        format!("FLEETBAKE_RUN_ID={}", shell_quote(&env.run_id)),
    ];
    if let Phase::Test { image_id } = &env.phase {
        assignments.push(format!("FLEETBAKE_IMAGE_ID={}", shell_quote(image_id)));
    }
    assignments.extend(user_env.iter().map(|(name, value)| format!("{name}={}", shell_quote(value))));
    format!(
        "chmod 0700 {path} && env {} {path} < /dev/null; status=$?; rm -f {path}; exit $status",
        assignments.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::report::events::{OutputLine, OutputStream};

    /// A connection that records what it is asked and answers every command with `exit`.
    struct Recording {
        uploads: Mutex<Vec<(String, Vec<u8>)>>,
        commands: Mutex<Vec<String>>,
        exit: fn() -> Exit,
    }

    impl Recording {
        fn answering(exit: fn() -> Exit) -> Self {
            Recording { uploads: Mutex::default(), commands: Mutex::default(), exit }
        }
    }

    #[async_trait]
    impl Connection for Recording {
        async fn upload(&self, content: &[u8], remote_path: &str) -> Result<(), RemoteError> {
            self.uploads.lock().unwrap().push((remote_path.to_string(), content.to_vec()));
            Ok(())
        }
        async fn exec(&self, command_line: &str, output: OutputSink<'_>) -> Result<Exit, RemoteError> {
            self.commands.lock().unwrap().push(command_line.to_string());
            output(OutputStream::Stdout, "hello".into());
            Ok((self.exit)())
        }
        async fn close(self: Box<Self>) {}
    }

    fn env() -> ProvisionEnv {
        ProvisionEnv { flavor: "f".into(), region: "us-west-2".into(), run_id: "r".into(), phase: Phase::Provision }
    }

    fn inline(lines: &[&str]) -> Provisioner {
        Provisioner::Shell {
            script: ShellScript::Inline(lines.iter().map(ToString::to_string).collect()),
            env: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn a_shell_script_is_uploaded_then_run_over_the_connection_with_its_output_streamed() {
        let connection = Recording::answering(|| Exit::Success);
        let mut lines = Vec::new();
        let mut output = |stream, line| lines.push((stream, line));
        run(&connection, 2, &inline(&["echo hello"]), &env(), &mut output).await.unwrap();
        let uploads = connection.uploads.into_inner().unwrap();
        let [(path, content)] = &uploads[..] else { panic!("one upload: {uploads:?}") };
        assert!(path.starts_with("/tmp/fleetbake-r-2-") && path.ends_with(".sh"), "{path}");
        assert_eq!(content, b"#!/bin/sh -e\necho hello\n");
        let commands = connection.commands.into_inner().unwrap();
        assert_eq!(commands, [script_command(path, &env(), &BTreeMap::new())]);
        assert_eq!(lines, [(OutputStream::Stdout, OutputLine::from("hello"))]);
    }

    #[tokio::test]
    async fn a_file_is_uploaded_and_nothing_is_run() {
        let source = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(source.path(), b"contents").unwrap();
        let file = Provisioner::File { source: source.path().to_path_buf(), destination: "/etc/motd".into() };
        let connection = Recording::answering(|| Exit::Success);
        run(&connection, 1, &file, &env(), &mut |_, _| {}).await.unwrap();
        assert_eq!(connection.uploads.into_inner().unwrap(), [("/etc/motd".to_string(), b"contents".to_vec())]);
        assert!(connection.commands.into_inner().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_test_is_told_its_image_and_its_failure_is_worded_as_a_test() {
        let connection = Recording::answering(|| Exit::Code(3));
        let env = ProvisionEnv { phase: Phase::Test { image_id: "ami-1".into() }, ..env() };
        let error = run(&connection, 1, &inline(&["false"]), &env, &mut |_, _| {}).await.unwrap_err();
        assert_eq!(error.to_string(), "test 1 (shell inline, 1 lines) exited with status 3");
        let commands = connection.commands.into_inner().unwrap();
        assert!(commands[0].contains(" FLEETBAKE_IMAGE_ID='ami-1' "), "{commands:?}");
    }

    #[tokio::test]
    async fn a_script_that_exits_non_zero_fails_its_provisioner() {
        let connection = Recording::answering(|| Exit::Code(3));
        let error = run(&connection, 1, &inline(&["false"]), &env(), &mut |_, _| {}).await.unwrap_err();
        assert_eq!(error.to_string(), "provisioner 1 (shell inline, 1 lines) exited with status 3");
    }

    #[test]
    fn script_command_quotes_everything() {
        let env = ProvisionEnv {
            flavor: "f".into(),
            region: "us-west-2".into(),
            run_id: "r".into(),
            phase: Phase::Provision,
        };
        let user_env = BTreeMap::from([("GREETING".to_string(), "it's here".to_string())]);
        assert_eq!(
            script_command("/tmp/x.sh", &env, &user_env),
            "chmod 0700 '/tmp/x.sh' && env FLEETBAKE_FLAVOR='f' FLEETBAKE_REGION='us-west-2' FLEETBAKE_RUN_ID='r' \
             GREETING='it'\\''s here' '/tmp/x.sh' < /dev/null; status=$?; rm -f '/tmp/x.sh'; exit $status"
        );
    }
}
