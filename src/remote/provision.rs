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
    /// Testing an image (`[[flavor]] tests`): its id, as `FLEETBAKE_IMAGE_ID`.
    pub image_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("provisioner {number} ({what}): cannot read `{path}`: {error}")]
    LocalFile { number: usize, what: String, path: String, error: std::io::Error },
    #[error("provisioner {number} ({what}): {error}")]
    Remote { number: usize, what: String, error: RemoteError },
    #[error("provisioner {number} ({what}) exited with status {code}")]
    ExitCode { number: usize, what: String, code: i32 },
    #[error("provisioner {number} ({what}) ended abnormally: {reason}")]
    Abnormal { number: usize, what: String, reason: String },
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

/// Runs one provisioner (1-based `number`) over `connection`, streaming its output to `output`.
pub async fn run(
    connection: &dyn Connection,
    number: usize,
    provisioner: &Provisioner,
    env: &ProvisionEnv,
    output: OutputSink<'_>,
) -> Result<(), ProvisionError> {
    let what = Described(provisioner).to_string();
    let remote_error = |error| ProvisionError::Remote { number, what: what.clone(), error };
    match provisioner {
        Provisioner::File { source, destination } => {
            let content = read_local(number, &what, source).await?;
            connection.upload(&content, destination).await.map_err(remote_error)
        }
        Provisioner::Shell { script, env: user_env } => {
            let content = match script {
                ShellScript::File(path) => read_local(number, &what, path).await?,
                ShellScript::Inline(lines) => format!("#!/bin/sh -e\n{}\n", lines.join("\n")).into_bytes(),
            };
            let remote_path = format!("/tmp/fleetbake-{}-{number}-{:08x}.sh", env.run_id, fastrand::u32(..));
            connection.upload(&content, &remote_path).await.map_err(remote_error)?;
            let command_line = script_command(&remote_path, env, user_env);
            match connection.exec(&command_line, output).await.map_err(remote_error)? {
                Exit::Success => Ok(()),
                Exit::Code(code) => Err(ProvisionError::ExitCode { number, what, code }),
                Exit::Abnormal(reason) => Err(ProvisionError::Abnormal { number, what, reason }),
            }
        }
    }
}

async fn read_local(number: usize, what: &str, path: &std::path::Path) -> Result<Vec<u8>, ProvisionError> {
    tokio::fs::read(path).await.map_err(|error| ProvisionError::LocalFile {
        number,
        what: what.to_string(),
        path: path.display().to_string(),
        error,
    })
}

/// Makes the uploaded script executable, runs it with the environment, removes it, keeps its exit status.
fn script_command(remote_path: &str, env: &ProvisionEnv, user_env: &BTreeMap<String, String>) -> String {
    let path = shell_quote(remote_path);
    let mut assignments = vec![
        format!("FLEETBAKE_FLAVOR={}", shell_quote(&env.flavor)),
        format!("FLEETBAKE_REGION={}", shell_quote(&env.region)),
        format!("FLEETBAKE_RUN_ID={}", shell_quote(&env.run_id)),
    ];
    if let Some(image) = &env.image_id {
        assignments.push(format!("FLEETBAKE_IMAGE_ID={}", shell_quote(image)));
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
        async fn provision(
            &self,
            number: usize,
            provisioner: &Provisioner,
            env: &ProvisionEnv,
            output: OutputSink<'_>,
        ) -> Result<(), ProvisionError> {
            run(self, number, provisioner, env, output).await
        }
        async fn close(self: Box<Self>) {}
    }

    fn env() -> ProvisionEnv {
        ProvisionEnv { flavor: "f".into(), region: "us-west-2".into(), run_id: "r".into(), image_id: None }
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
    async fn a_script_that_exits_non_zero_fails_its_provisioner() {
        let connection = Recording::answering(|| Exit::Code(3));
        let error = run(&connection, 1, &inline(&["false"]), &env(), &mut |_, _| {}).await.unwrap_err();
        assert_eq!(error.to_string(), "provisioner 1 (shell inline, 1 lines) exited with status 3");
    }

    #[test]
    fn script_command_quotes_everything() {
        let env = ProvisionEnv { flavor: "f".into(), region: "us-west-2".into(), run_id: "r".into(), image_id: None };
        let user_env = BTreeMap::from([("GREETING".to_string(), "it's here".to_string())]);
        assert_eq!(
            script_command("/tmp/x.sh", &env, &user_env),
            "chmod 0700 '/tmp/x.sh' && env FLEETBAKE_FLAVOR='f' FLEETBAKE_REGION='us-west-2' FLEETBAKE_RUN_ID='r' \
             GREETING='it'\\''s here' '/tmp/x.sh' < /dev/null; status=$?; rm -f '/tmp/x.sh'; exit $status"
        );
    }
}
