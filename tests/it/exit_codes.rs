//! The "Exit codes" of docs/getting-started.md from the binary, where two commands meet the same journal problem: `matrix` and `gc`
//! (removing images, so taking the fleet file's run lock) must exit alike. Both are refused before any AWS
//! call: EC2 is a [`Witness`] that counts every connection made to it. The table of every ending is the unit
//! test in `src/engine/exit.rs`.

use std::path::Path;

use crate::harness::{Outcome, Workspace};
use crate::witness::Witness;

/// A fleet whose journals live in `.fleetbake/fleet/`, with `[retention]` so that gc takes the run lock.
fn fleet(endpoint: &str) -> String {
    format!(
        r#"[fleet]
name = "exits"
ami_name = "{{flavor}}-{{build_region}}-{{run_id}}"

[defaults]
instance_type = "t3.small"
ssh_username = "ec2-user"

[[flavor]]
name = "base"
source_ami = {{ owners = ["amazon"], name = "al2023-ami-*" }}

[regions]
us-west-2 = ["us-east-1"]

[aws]
endpoint_url = "{endpoint}"

[ssh]
source_cidrs = ["127.0.0.1/32"]

[retention]
keep = 1
"#
    )
}

/// `matrix` and `gc` of the fleet file, each checked to have made no AWS call.
fn both_commands(workspace: &Workspace, fleet_path: &Path, witness: &Witness) -> [(&'static str, Outcome); 2] {
    let path = fleet_path.to_str().unwrap();
    let matrix = workspace.fleetbake(&["matrix", path]);
    assert_eq!(witness.connections(), 0, "matrix connected to EC2: {}", matrix.stderr);
    let gc = workspace.fleetbake(&["gc", path]);
    assert_eq!(witness.connections(), 0, "gc connected to EC2: {}", gc.stderr);
    [("matrix", matrix), ("gc", gc)]
}

/// A journal directory that cannot be made is not bad input (exit 2 is a journal `--resume` cannot use): both
/// commands exit 1, naming the path. (The tests run as root, so a file stands where the directory must go.)
#[test]
fn a_journal_that_cannot_be_written_exits_1_from_matrix_and_gc() {
    let witness = Witness::start();
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &fleet(&witness.endpoint));
    workspace.write(".fleetbake", "a file where the journal directory goes\n");
    for (command, outcome) in both_commands(&workspace, &fleet_path, &witness) {
        assert_eq!(outcome.code, 1, "{command}: {}", outcome.stderr);
        let journals = workspace.path(".fleetbake/fleet");
        assert!(outcome.stderr.contains(journals.to_str().unwrap()), "{command}: names the path: {}", outcome.stderr);
    }
}

/// Another process holding the fleet file's run lock: both commands exit 1, naming it.
#[test]
fn a_run_lock_another_process_holds_exits_1_from_matrix_and_gc() {
    let witness = Witness::start();
    let workspace = Workspace::new();
    let fleet_path = workspace.write("fleet.toml", &fleet(&witness.endpoint));
    let lock_path = workspace.write(".fleetbake/fleet/run.lock", "the test (pid 1)");
    let lock = std::fs::File::open(&lock_path).unwrap();
    lock.try_lock().unwrap();
    for (command, outcome) in both_commands(&workspace, &fleet_path, &witness) {
        assert_eq!(outcome.code, 1, "{command}: {}", outcome.stderr);
        assert!(
            outcome.stderr.contains("another fleetbake is running this fleet file: the test (pid 1) holds"),
            "{command}: {}",
            outcome.stderr
        );
    }
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), "the test (pid 1)", "the holder's file is untouched");
}
