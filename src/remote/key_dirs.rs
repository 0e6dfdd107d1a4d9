//! The private directories SSH connections keep on this machine (`$TMPDIR/fb-XXXXXX`: the key while it is
//! needed, the control master's socket, a bastion's config), who owns each, and ending what a run that was
//! killed outright (`kill -9`) left in them: its ssh control masters, still logged in to their instances until
//! their idle time runs out, and the directories themselves.
//!
//! Each directory holds an `owner` file, written before anything else: the run id, and the process id and start
//! time of the fleetbake that made it. A directory whose owner process is gone (or is another process now) was
//! left by a dead run; a live one, of any fleet, is never touched. (Why not the run id in the directory's name:
//! the control socket lives below it, and a Unix socket path holds 107 bytes; the run id would take 22 of them.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::report::events::LocalLeftovers;

/// The prefix of every connection's directory in `$TMPDIR`.
pub const PREFIX: &str = "fb-";

/// The owner file's name in a directory.
const OWNER_FILE: &str = "owner";

/// Who made a directory: a run, in a process (its id and start time, so a reused pid is not taken for it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub run_id: String,
    pub pid: u32,
    /// The process's start time, in clock ticks after boot (`/proc/PID/stat`, field 22); `None` where there is
    /// no /proc.
    pub started: Option<u64>,
}

impl Owner {
    /// This process, running `run_id`.
    pub fn this_process(run_id: &str) -> Owner {
        let pid = std::process::id();
        Owner { run_id: run_id.to_string(), pid, started: process_start(pid) }
    }

    fn to_text(&self) -> String {
        let started = self.started.map(|ticks| ticks.to_string()).unwrap_or_default();
        format!("run={}\npid={}\nstarted={started}\n", self.run_id, self.pid)
    }

    fn parse(text: &str) -> Option<Owner> {
        let field =
            |name: &str| text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix('=')).map(str::to_string);
        Some(Owner {
            run_id: field("run")?,
            pid: field("pid")?.parse().ok()?,
            started: field("started").and_then(|ticks| ticks.parse().ok()),
        })
    }

    /// Whether the process that made the directory is still running (the same process: same start time).
    /// Without /proc, every owner counts as alive: nothing is ended that cannot be told dead.
    fn is_alive(&self) -> bool {
        if !Path::new("/proc/self/stat").exists() {
            return true;
        }
        match (process_start(self.pid), self.started) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
        }
    }
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`, counted after the command's closing `)`).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_command = &stat[stat.rfind(')')? + 1..];
    // Fields 3 onwards; the start time is field 22.
    after_command.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Creates a connection's private (0700) directory in `$TMPDIR`, its owner file first.
pub fn create(owner: &Owner) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()?;
    crate::remote::ssh::write_private_file(&dir.path().join(OWNER_FILE), &owner.to_text())?;
    Ok(dir)
}

/// Finds the connection directories in `tmp` that dead runs left (this user's, with an owner file whose process
/// is gone), ends their ssh control masters and removes them; what it ended, per run. A failure to remove one
/// is logged and it is left for the next time.
pub async fn end_leftovers(tmp: &Path) -> Vec<LocalLeftovers> {
    let mut ended: Vec<LocalLeftovers> = Vec::new();
    for (dir, owner) in left_by_dead_runs(tmp) {
        let masters = end_masters(&dir).await;
        let removed = match std::fs::remove_dir_all(&dir) {
            Ok(()) => 1,
            // Another fleetbake starting at the same moment got there first.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                tracing::warn!("cannot remove `{}`, left by run {}: {error}", dir.display(), owner.run_id);
                0
            }
        };
        match ended.iter_mut().find(|run| run.run_id == owner.run_id) {
            Some(run) => {
                run.masters += masters;
                run.key_directories += removed;
            }
            None => ended.push(LocalLeftovers { run_id: owner.run_id, masters, key_directories: removed }),
        }
    }
    ended
}

/// What [`end_leftovers`] would end in `tmp`, per run, ending nothing (`gc --dry-run`).
pub fn find_leftovers(tmp: &Path) -> Vec<LocalLeftovers> {
    let mut found: Vec<LocalLeftovers> = Vec::new();
    for (dir, owner) in left_by_dead_runs(tmp) {
        let masters = processes_naming(&dir).iter().filter(|process| process.master).count();
        match found.iter_mut().find(|run| run.run_id == owner.run_id) {
            Some(run) => {
                run.masters += masters;
                run.key_directories += 1;
            }
            None => found.push(LocalLeftovers { run_id: owner.run_id, masters, key_directories: 1 }),
        }
    }
    found
}

/// The directories in `tmp` made by runs no longer running, with their owners.
fn left_by_dead_runs(tmp: &Path) -> Vec<(PathBuf, Owner)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(tmp) else { return Vec::new() };
    // This process's user: only its own directories are looked at.
    let me = std::fs::metadata("/proc/self").map(|metadata| metadata.uid()).ok();
    let mut found: Vec<(PathBuf, Owner)> = entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(PREFIX))
        .filter(|entry| {
            let metadata = entry.path().symlink_metadata();
            metadata.is_ok_and(|metadata| metadata.is_dir() && me.is_none_or(|uid| metadata.uid() == uid))
        })
        .filter_map(|entry| {
            let owner = Owner::parse(&std::fs::read_to_string(entry.path().join(OWNER_FILE)).ok()?)?;
            (!owner.is_alive()).then(|| (entry.path(), owner))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// How long `ssh -O exit` may take to answer.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ends the ssh control masters whose sockets are in `dir` (`ssh -O exit`), then any ssh process still naming
/// `dir` on its command line (a master that did not answer, a session's client): how many masters ended.
async fn end_masters(dir: &Path) -> usize {
    let masters = processes_naming(dir).iter().filter(|process| process.master).count();
    let mut exited = 0;
    for socket in control_sockets(dir) {
        let exit = tokio::process::Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-O", "exit", "-S"])
            .arg(&socket)
            .arg("fleetbake-leftover")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        if let Ok(Ok(status)) = tokio::time::timeout(EXIT_TIMEOUT, exit).await {
            exited += usize::from(status.success());
        }
    }
    // A master that was told to exit, and its sessions' clients, go within moments; what stays is ended.
    for _ in 0..20 {
        if processes_naming(dir).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for process in processes_naming(dir) {
        let killed = tokio::process::Command::new("kill").args(["-TERM", &process.pid.to_string()]).status().await;
        if let Err(error) = killed {
            tracing::warn!("cannot end ssh process {}: {error}", process.pid);
        }
    }
    masters.max(exited)
}

/// An ssh process naming a connection directory: its pid, and whether it is a control master (`-M`) rather
/// than a session's client.
struct SshProcess {
    pid: u32,
    master: bool,
}

/// The control sockets below `dir` (the openssh crate's `.ssh-connectionXXXXXX/master`).
fn control_sockets(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(".ssh-connection"))
        .map(|entry| entry.path().join("master"))
        .filter(|socket| socket.exists())
        .collect()
}

/// The ssh processes whose command line names a path in `dir`.
fn processes_naming(dir: &Path) -> Vec<SshProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let needle = format!("{}/", dir.display());
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<_> = raw.split(|byte| *byte == 0).map(String::from_utf8_lossy).collect();
            let is_ssh = args.first().is_some_and(|program| program == "ssh" || program.ends_with("/ssh"));
            let names_dir = args.iter().any(|arg| arg.contains(&needle));
            (is_ssh && names_dir).then(|| SshProcess { pid, master: args.iter().any(|arg| arg == "-M") })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_reads_back_and_this_process_is_alive() {
        let owner = Owner::this_process("20261207-122640-abcde");
        assert_eq!(Owner::parse(&owner.to_text()), Some(owner.clone()));
        assert!(owner.started.is_some(), "Linux has /proc");
        assert!(owner.is_alive());
        // The same pid with another start time: a reused pid, not the owner.
        let reused = Owner { started: owner.started.map(|ticks| ticks + 1), ..owner.clone() };
        assert!(!reused.is_alive());
    }

    #[test]
    fn a_process_that_ended_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = process_start(pid);
        child.wait().unwrap();
        let owner = Owner { run_id: "r".into(), pid, started };
        assert!(!owner.is_alive());
    }

    #[tokio::test]
    async fn only_directories_of_dead_runs_are_removed_and_said_per_run() {
        let tmp = tempfile::tempdir().unwrap();
        let make = |name: &str, owner: Option<&Owner>| {
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            if let Some(owner) = owner {
                std::fs::write(dir.join(OWNER_FILE), owner.to_text()).unwrap();
            }
            std::fs::write(dir.join("key"), "k").unwrap();
            dir
        };
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = Owner { run_id: "dead-run".into(), pid: child.id(), started: process_start(child.id()) };
        child.wait().unwrap();
        let live = Owner::this_process("live-run");
        let dead_one = make("fb-aaaaaa", Some(&dead));
        let dead_two = make("fb-bbbbbb", Some(&dead));
        let live_dir = make("fb-cccccc", Some(&live));
        let unowned = make("fb-dddddd", None);
        let other = make("other", Some(&dead));

        let found = find_leftovers(tmp.path());
        assert_eq!(found, [LocalLeftovers { run_id: "dead-run".into(), masters: 0, key_directories: 2 }]);
        assert!(dead_one.exists(), "only found");
        let ended = end_leftovers(tmp.path()).await;
        assert_eq!(ended, [LocalLeftovers { run_id: "dead-run".into(), masters: 0, key_directories: 2 }]);
        assert!(!dead_one.exists() && !dead_two.exists());
        assert!(live_dir.exists() && unowned.exists() && other.exists());
    }
}
