//! Provisioners, run in order over the SSH communicator: `file` uploads, `shell` scripts (a local file or
//! inline lines) uploaded to a temporary path, run with FLEETBAKE_* in their environment, then removed.

use std::collections::BTreeMap;
use std::fmt;

use openssh::Session;

use crate::config::{Provisioner, ShellScript};
use crate::remote::ssh::{self, shell_quote, Exit, SshError};
use crate::report::events::OutputStream;

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
    Ssh { number: usize, what: String, error: SshError },
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

/// Runs one provisioner (1-based `number`), streaming its output to `on_line`.
pub async fn run(
    session: &Session,
    number: usize,
    provisioner: &Provisioner,
    env: &ProvisionEnv,
    on_line: impl FnMut(OutputStream, String),
) -> Result<(), ProvisionError> {
    let what = Described(provisioner).to_string();
    let ssh_error = |error| ProvisionError::Ssh { number, what: what.clone(), error };
    match provisioner {
        Provisioner::File { source, destination } => {
            let content = read_local(number, &what, source).await?;
            ssh::upload(session, &content, destination).await.map_err(ssh_error)
        }
        Provisioner::Shell { script, env: user_env } => {
            let content = match script {
                ShellScript::File(path) => read_local(number, &what, path).await?,
                ShellScript::Inline(lines) => format!("#!/bin/sh -e\n{}\n", lines.join("\n")).into_bytes(),
            };
            let remote_path = format!("/tmp/fleetbake-{}-{number}-{:08x}.sh", env.run_id, fastrand::u32(..));
            ssh::upload(session, &content, &remote_path).await.map_err(ssh_error)?;
            let command_line = script_command(&remote_path, env, user_env);
            match ssh::run_streaming(session, &command_line, on_line).await.map_err(ssh_error)? {
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
    use super::*;

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
