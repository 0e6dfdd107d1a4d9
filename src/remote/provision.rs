//! Provisioners, run in order over a [`Connection`] (any way in: only its `upload` and `exec`): `file` uploads,
//! `shell` scripts (a local file or inline lines) uploaded to a temporary path, run with FLEETBAKE_* and their
//! `env` in their environment, then removed.
//!
//! No value of the environment is ever on a command line, here or on the instance: they travel in the body of
//! an env file (`export NAME='value'` lines) uploaded over the channel's stdin (owner-only, `umask 077`), which
//! the command sources and removes before it `exec`s the script; the command line names only the two paths.

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
    /// A flavor's `on_failure` provisioners, run after a provisioner or a test failed on the instance: their
    /// output is saved, and their own failure fails nothing further.
    OnFailure,
}

impl Phase {
    /// What one of the list is called in messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Phase::Provision => "provisioner",
            Phase::Test { .. } => "test",
            Phase::OnFailure => "on_failure provisioner",
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
            let paths = ScriptPaths::new(env, number);
            connection.upload(&content, &paths.script).await.map_err(remote_error)?;
            connection.upload(env_file(env, user_env).as_bytes(), &paths.env_file).await.map_err(remote_error)?;
            let command_line = script_command(&paths);
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

/// Where a shell provisioner's script and its env file go on the instance (both removed by the command).
struct ScriptPaths {
    script: String,
    env_file: String,
}

impl ScriptPaths {
    fn new(env: &ProvisionEnv, number: usize) -> ScriptPaths {
        let stem = format!("/tmp/fleetbake-{}-{number}-{:08x}", env.run_id, fastrand::u32(..));
        ScriptPaths { script: format!("{stem}.sh"), env_file: format!("{stem}.env") }
    }
}

/// The body of the env file a script runs with: FLEETBAKE_* then the fleet file's `env`, one
/// `export NAME='value'` line each (values quoted for a POSIX shell; names are checked identifiers).
fn env_file(env: &ProvisionEnv, user_env: &BTreeMap<String, String>) -> String {
    let mut variables = vec![
        ("FLEETBAKE_FLAVOR", env.flavor.as_str()),
        ("FLEETBAKE_REGION", env.region.as_str()),
        ("FLEETBAKE_RUN_ID", env.run_id.as_str()),
    ];
    if let Phase::Test { image_id } = &env.phase {
        variables.push(("FLEETBAKE_IMAGE_ID", image_id.as_str()));
    }
    variables.extend(user_env.iter().map(|(name, value)| (name.as_str(), value.as_str())));
    variables.iter().map(|(name, value)| format!("export {name}={}\n", shell_quote(value))).collect()
}

/// Makes the uploaded script executable and runs it in a subshell that first sources the env file (the
/// `export`s are the shell's builtins: no process is started with a value in its argv) and removes it, then
/// `exec`s the script; keeps the script's exit status. Only the two paths are on the command line. Both files
/// are removed whatever happened, by a trap on the shell's exit that a TERM or HUP (a command ended past its
/// `timeout` or at an interrupt: `ssh::end_unfinished`) also runs, and a PIPE too: once the channel is gone,
/// the shell's own report of its child's end ("Terminated", on stderr) would otherwise kill it before the trap.
/// So no script outlives its command. (The subshell resets them all: the script keeps the default dispositions.)
fn script_command(paths: &ScriptPaths) -> String {
    let (script, env_file) = (shell_quote(&paths.script), shell_quote(&paths.env_file));
    // The trap's text is double-quoted around the single-quoted paths: the paths are ours
    // (`/tmp/fleetbake-<run id>-<n>-<hex>`), never holding `"`, `$`, `` ` `` or `\`.
    debug_assert!(!(script.clone() + &env_file).contains(['"', '$', '`', '\\']));
    format!(
        "trap \"rm -f {script} {env_file}\" EXIT; trap 'exit 143' TERM HUP INT; trap 'exit 141' PIPE; \
         chmod 0700 {script} && ( . {env_file} && rm -f {env_file} && exec {script} < /dev/null ); exit $?"
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
        let [(script, content), (env_path, env_body)] = &uploads[..] else { panic!("two uploads: {uploads:?}") };
        assert!(script.starts_with("/tmp/fleetbake-r-2-") && script.ends_with(".sh"), "{script}");
        assert_eq!(content, b"#!/bin/sh -e\necho hello\n");
        assert_eq!(env_path, &format!("{}.env", script.strip_suffix(".sh").unwrap()));
        let expected_env =
            "export FLEETBAKE_FLAVOR='f'\nexport FLEETBAKE_REGION='us-west-2'\nexport FLEETBAKE_RUN_ID='r'\n";
        assert_eq!(String::from_utf8_lossy(env_body), expected_env);
        let commands = connection.commands.into_inner().unwrap();
        let paths = ScriptPaths { script: script.clone(), env_file: env_path.clone() };
        assert_eq!(commands, [script_command(&paths)]);
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
        let uploads = connection.uploads.into_inner().unwrap();
        let env_body = String::from_utf8_lossy(&uploads[1].1).into_owned();
        assert!(env_body.ends_with("export FLEETBAKE_IMAGE_ID='ami-1'\n"), "{env_body}");
    }

    #[tokio::test]
    async fn a_script_that_exits_non_zero_fails_its_provisioner() {
        let connection = Recording::answering(|| Exit::Code(3));
        let error = run(&connection, 1, &inline(&["false"]), &env(), &mut |_, _| {}).await.unwrap_err();
        assert_eq!(error.to_string(), "provisioner 1 (shell inline, 1 lines) exited with status 3");
    }

    #[test]
    fn the_env_file_quotes_every_value_and_the_command_names_only_paths() {
        let user_env = BTreeMap::from([("GREETING".to_string(), "it's here".to_string())]);
        assert_eq!(
            env_file(&env(), &user_env),
            "export FLEETBAKE_FLAVOR='f'\nexport FLEETBAKE_REGION='us-west-2'\nexport FLEETBAKE_RUN_ID='r'\n\
             export GREETING='it'\\''s here'\n"
        );
        let paths = ScriptPaths { script: "/tmp/x.sh".into(), env_file: "/tmp/x.env".into() };
        assert_eq!(
            script_command(&paths),
            "trap \"rm -f '/tmp/x.sh' '/tmp/x.env'\" EXIT; trap 'exit 143' TERM HUP INT; trap 'exit 141' PIPE; \
             chmod 0700 '/tmp/x.sh' && ( . '/tmp/x.env' && rm -f '/tmp/x.env' && exec '/tmp/x.sh' < /dev/null ); \
             exit $?"
        );
    }

    #[tokio::test]
    async fn no_env_value_is_in_a_command_line() {
        let connection = Recording::answering(|| Exit::Success);
        let secret = "s3cr3t-value";
        let provisioner = Provisioner::Shell {
            script: ShellScript::Inline(vec!["true".into()]),
            env: BTreeMap::from([("TOKEN".to_string(), secret.to_string())]),
        };
        run(&connection, 1, &provisioner, &env(), &mut |_, _| {}).await.unwrap();
        let commands = connection.commands.into_inner().unwrap();
        assert!(
            commands.iter().all(|command| !command.contains(secret) && !command.contains("us-west-2")),
            "{commands:?}"
        );
        let uploads = connection.uploads.into_inner().unwrap();
        assert!(uploads.iter().any(|(_, body)| String::from_utf8_lossy(body).contains("export TOKEN='s3cr3t-value'")));
        assert!(uploads.iter().all(|(path, _)| !path.contains(secret)));
    }
}
