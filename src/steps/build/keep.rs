//! `--keep-failed DURATION` (`[matrix] keep_failed`): a failed build keeps its instance for a person to look
//! at. The instance, with the key pair and security group it was launched with, is taken off the cleanup
//! stack ([`CleanupStack::keep`]), tagged `fleetbake:keep-until` (CreateTags; the key pair through
//! `tag_key_pair`), journaled as kept ([`Ledger::kept`]: `--resume` leaves it) and, with
//! `keep_failed_state = "stopped"`, stopped; everything else on the stack unwinds as usual. The build's
//! private key is written (0600, in a 0700 folder) under the run's `kept/` folder the engine hands in
//! ([`RunContext::kept_keys`](crate::steps::context::RunContext::kept_keys)), with the host keys the run
//! verified beside it, and the connection command is said. Not on an interrupt: then everything is cleaned up.
//!
//! Layer: `steps` (part of [`super`], the build).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::cloud::watch::WaitKind;
use crate::cloud::{InstanceId, PrivateKey};
use crate::config::{KeepFailed, KeptState, Market, Tags};
use crate::outcome::{Kept, KeptAs, Stage};
use crate::remote::ssh::{shell_quote, write_private_file, HostKeyCheck};
use crate::remote::{ConnectTarget, Via};
use crate::steps::cleanup::{CleanupStack, KeptSteps, UndoStep};
use crate::steps::context::KEEP_UNTIL_TAG;

use super::BuildContext;

/// How each instance this build brought up was logged in to, kept in memory (the private key too) only for
/// `--keep-failed`: what the connection command of a kept one is made from.
#[derive(Default)]
pub struct Logins(Mutex<BTreeMap<InstanceId, Login>>);

/// How to log in to one instance.
#[derive(Clone)]
struct Login {
    user: String,
    port: u16,
    via: LoginVia,
    private_key: PrivateKey,
    host_key: HostKeyCheck,
}

#[derive(Clone)]
enum LoginVia {
    /// SSH to this address (through the bastion, `user@host:port`, if any).
    Address { host: String, bastion: Option<String> },
    /// Session Manager, in this region.
    SessionManager { region: String },
}

impl Logins {
    /// Notes how `target` is logged in to (only with `--keep-failed`: the key is otherwise never kept).
    pub(super) fn note(&self, context: &BuildContext, target: &ConnectTarget) {
        if context.run.fleet.matrix.keep_failed.is_none() {
            return;
        }
        let (ssh, via) = match &target.via {
            Via::Ssh(ssh) => {
                let bastion = ssh.bastion.as_ref().map(|b| format!("{}@{}:{}", b.user, b.host, b.port));
                (ssh, LoginVia::Address { host: ssh.host.clone(), bastion })
            }
            Via::SessionManager(through) => {
                (&through.ssh, LoginVia::SessionManager { region: context.job.region.to_string() })
            }
        };
        let login = Login {
            user: ssh.user.clone(),
            port: ssh.port,
            via,
            private_key: ssh.private_key.clone(),
            host_key: ssh.host_key.clone(),
        };
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(target.instance.id.clone(), login);
    }

    fn of(&self, instance: &InstanceId) -> Option<Login> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(instance).cloned()
    }
}

/// The stages whose failure keeps the instance: it exists and was reached (or was being reached).
fn keeps(stage: Stage) -> bool {
    matches!(
        stage,
        Stage::Connect | Stage::Provision | Stage::Test | Stage::Stop | Stage::CreateImage | Stage::WaitImage
    )
}

/// After a failure at `stage`: keeps the instance as `--keep-failed` says, if the run asks for it, the failure
/// is not an interrupt, and an instance is on `stack`. A keep that cannot be tagged is given back to the stack
/// (an untagged instance would be swept as a leftover anyway).
pub(super) async fn keep_failed(context: &BuildContext, stack: &mut CleanupStack, stage: Stage) -> Option<Kept> {
    let keep = context.run.fleet.matrix.keep_failed?;
    if !keeps(stage) || context.cancel.is_cancelled() {
        return None;
    }
    let steps = stack.keep()?;
    let instance = steps.instance.clone()?;
    let now = context.run.clock.now();
    // Validation bounds the duration ([`crate::config::KeepFailed::MAX`]); past the calendar, keep the longest.
    let until = chrono::TimeDelta::from_std(keep.for_)
        .ok()
        .and_then(|delta| now.checked_add_signed(delta))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
    // Whole seconds, as the tag says it.
    let until = chrono::DateTime::from_timestamp(until.timestamp(), 0).unwrap_or(until);
    let tags = Tags::from([(KEEP_UNTIL_TAG.to_string(), until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]);
    let cloud = &*context.cloud;
    let mut ids = vec![instance.to_string()];
    ids.extend(steps.security_group.iter().map(ToString::to_string));
    let mut tagged = cloud.create_tags(&ids, &tags).await;
    if let (Ok(()), Some(key_pair)) = (&tagged, &steps.key_pair) {
        tagged = cloud.tag_key_pair(key_pair, &tags).await;
    }
    if let Err(error) = tagged {
        tracing::warn!("cannot tag {instance} to keep it ({error}): it is cleaned up");
        give_back(stack, steps);
        return None;
    }
    let job = context.job.key();
    for resource in steps.resources(&context.job.region) {
        context.run.ledger.kept(&job, resource, until);
    }
    let state = settle_state(context, &instance, keep, stage).await;
    let (connect, no_login) = match login(context, &instance, stage) {
        Ok(command) => (Some(command), None),
        Err(why) => (None, Some(why)),
    };
    let kept = Kept {
        job: Some(context.label()),
        instance,
        key_pair: steps.key_pair,
        security_group: steps.security_group,
        until,
        state,
        connect,
        no_login,
    };
    context.progress(stage, format!("keeping {} (`--keep-failed`)", kept.what()));
    Some(kept)
}

/// What could not be kept goes back on the stack, the instance on top (it unwinds first).
fn give_back(stack: &mut CleanupStack, steps: KeptSteps) {
    if let Some(name) = steps.key_pair {
        stack.push(UndoStep::DeleteKeyPair { name });
    }
    if let Some(id) = steps.security_group {
        stack.push(UndoStep::DeleteSecurityGroup { id, fresh: None });
    }
    if let Some(id) = steps.instance {
        stack.push(UndoStep::TerminateInstance { id, fresh: None });
    }
}

/// Stops the instance if `keep_failed_state = "stopped"`; says the state it is left in (one the build had
/// stopped for its image is stopped whatever the setting).
async fn settle_state(context: &BuildContext, instance: &InstanceId, keep: KeepFailed, stage: Stage) -> KeptAs {
    // A spot build makes its image with reboot, never stopped; an on-demand one stopped it before CreateImage.
    let on_spot = context.flavor.market == Market::Spot;
    let stopped_by_the_build = !on_spot && matches!(stage, Stage::CreateImage | Stage::WaitImage);
    if keep.state == KeptState::Running || stopped_by_the_build {
        return if stopped_by_the_build { KeptAs::Stopped } else { KeptAs::Running };
    }
    if on_spot {
        // A one-time spot instance cannot be stopped (StopInstances: `UnsupportedOperation`, EC2 User Guide,
        // "Stop a Spot Instance"): it is kept running, and the user is told.
        context.progress(
            stage,
            format!("kept spot instance {instance} left running: a one-time spot instance cannot be stopped"),
        );
        return KeptAs::Running;
    }
    let stopped = match context.cloud.stop_instance(instance).await {
        Ok(()) => {
            context.waits.instance(instance, WaitKind::InstanceStopped).await.map(|_| ()).map_err(|e| e.to_string())
        }
        Err(error) => Err(error.to_string()),
    };
    match stopped {
        Ok(()) => KeptAs::Stopped,
        Err(error) => {
            tracing::warn!("cannot stop kept instance {instance}: {error}");
            KeptAs::Running
        }
    }
}

/// The connection command of the kept `instance`, its key (and the host keys the run verified) written under
/// the run's `kept/` folder; `Err`: why there is none.
fn login(context: &BuildContext, instance: &InstanceId, stage: Stage) -> Result<String, String> {
    if matches!(stage, Stage::Stop | Stage::CreateImage | Stage::WaitImage) {
        return Err("the build key was removed from the instance's authorized_keys before its image was made".into());
    }
    let login = context.logins.of(instance).ok_or("the instance was never connected to")?;
    let Some(kept_keys) = &context.run.kept_keys else {
        return Err("no key is written for a simulated run".into());
    };
    let folder = kept_keys.join(crate::steps::context::safe_file_name(instance.as_str()));
    let written =
        write_login(&folder, &login).map_err(|error| format!("cannot write `{}`: {error}", folder.display()))?;
    Ok(command(&login, instance, &written))
}

/// The files a kept login reads: the key, and a known_hosts of the verified host keys (none: accepted).
struct Written {
    key: PathBuf,
    known_hosts: Option<PathBuf>,
}

/// Writes the key (0600) and known_hosts into `folder` (0700, made with its parents).
fn write_login(folder: &Path, login: &Login) -> std::io::Result<Written> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(folder)?;
    let key = folder.join("key");
    write_private_file(&key, login.private_key.expose())?;
    let known_hosts = match &login.host_key {
        HostKeyCheck::Verify(keys) => {
            let host = match &login.via {
                LoginVia::Address { host, .. } => host.clone(),
                // Through Session Manager, ssh checks the key under the instance id (its `HostKeyAlias`).
                LoginVia::SessionManager { .. } => {
                    folder.file_name().unwrap_or_default().to_string_lossy().into_owned()
                }
            };
            let path = folder.join("known_hosts");
            write_private_file(&path, &keys.known_hosts(&host, login.port))?;
            Some(path)
        }
        HostKeyCheck::Accept => None,
    };
    Ok(Written { key, known_hosts })
}

/// `ssh -i KEY -p PORT [-o UserKnownHostsFile=… -o StrictHostKeyChecking=yes] [-J BASTION] USER@ADDRESS`, or
/// for Session Manager `aws ssm start-session --target … --region …` (a shell through the agent; the same key
/// logs in over `AWS-StartSSHSession` as the build did).
fn command(login: &Login, instance: &InstanceId, written: &Written) -> String {
    let mut options = vec![format!("-i {}", shell_quote(&written.key.to_string_lossy())), format!("-p {}", login.port)];
    if let Some(known_hosts) = &written.known_hosts {
        options.push(format!("-o UserKnownHostsFile={}", shell_quote(&known_hosts.to_string_lossy())));
        options.push("-o StrictHostKeyChecking=yes".to_string());
    }
    match &login.via {
        LoginVia::Address { host, bastion } => {
            if let Some(bastion) = bastion {
                options.push(format!("-J {}", shell_quote(bastion)));
            }
            format!("ssh {} {}", options.join(" "), shell_quote(&format!("{}@{host}", login.user)))
        }
        LoginVia::SessionManager { region } => format!("aws ssm start-session --target {instance} --region {region}"),
    }
}
