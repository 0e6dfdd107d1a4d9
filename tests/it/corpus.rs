//! The corpus of broken inputs under tests/corpus/: every fleet file and every journal is refused with a clear
//! error that names the file and line, exit 2, before any AWS call: EC2 is a [`Witness`] that counts every
//! connection made to it, and it sees none.

use std::path::{Path, PathBuf};

use crate::harness::Workspace;
use crate::witness::Witness;

fn corpus(directory: &str, extension: &str) -> Vec<PathBuf> {
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(directory);
    let mut files: Vec<PathBuf> = std::fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|found| found == extension))
        .collect();
    files.sort();
    files
}

/// Each fleet file ends with `# expect: LINE: MESSAGE`; `validate`, `matrix` and `gc` all refuse it so, with
/// EC2 (`AWS_ENDPOINT_URL`) a witness no command connects to.
#[test]
fn every_broken_fleet_file_is_refused_with_its_line_and_key() {
    let witness = Witness::start();
    let env = [
        ("AWS_ENDPOINT_URL", witness.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ];
    let files = corpus("fleets", "toml");
    assert!(files.len() >= 10, "{files:?}");
    let workspace = Workspace::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expect = text.lines().last().and_then(|line| line.strip_prefix("# expect: ")).expect("an expectation");
        let (line, message) = expect.split_once(": ").unwrap();
        let path = file.to_str().unwrap();
        for command in [vec!["validate", path], vec!["matrix", path], vec!["gc", path, "--dry-run"]] {
            let outcome = workspace.fleetbake_with_env(&command, &env);
            assert_eq!(witness.connections(), 0, "{command:?} connected to EC2: {}", outcome.stderr);
            assert_eq!(outcome.code, 2, "{command:?}: {}", outcome.stderr);
            assert!(outcome.stderr.contains(&format!("{path}:{line}:")), "{command:?}: {}", outcome.stderr);
            assert!(outcome.stderr.contains(message), "{command:?}: expected `{message}` in {}", outcome.stderr);
        }
    }
}

/// Every journal, put where `--resume` looks, and the error it must give.
const JOURNALS: &[(&str, &str)] = &[
    ("another-fleets-journal.jsonl", "the journal is of fleet `payments`, not `corpus`"),
    ("corrupt-record-before-the-tail.jsonl", ":3: corrupt journal record: expected value"),
    ("empty.jsonl", ":1: not a fleetbake journal: the file is empty"),
    ("header-without-jobs.jsonl", ":1: corrupt journal record: missing field `jobs`"),
    ("newer-format.jsonl", ":1: journal format version 3 was written by a newer fleetbake"),
    ("not-a-journal.jsonl", ":1: not a fleetbake journal: the header is not JSON"),
    ("plan-changed.jsonl", "the fleet file no longer plans what run 20261126-120000-0000a planned"),
    ("torn-header.jsonl", ":1: not a fleetbake journal: the header line is incomplete"),
    ("unknown-record.jsonl", ":2: corrupt journal record: unknown variant `teleported`"),
    ("unknown-resource-kind.jsonl", ":2: corrupt journal record: unknown variant `volcano`"),
];

/// Each journal is refused before any AWS call: the fleet's endpoint is a witness no resume connects to.
#[test]
fn every_broken_journal_stops_a_resume_with_a_clear_error() {
    let witness = Witness::start();
    let files = corpus("journals", "jsonl");
    let names: Vec<String> =
        files.iter().map(|file| file.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let listed: Vec<&str> = JOURNALS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, listed, "every journal in the corpus has its expected error here");
    let fleet = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/journals/fleet.toml"))
        .unwrap();
    assert!(fleet.contains("http://127.0.0.1:9"), "the corpus fleet names an endpoint");
    let fleet = fleet.replace("http://127.0.0.1:9", &witness.endpoint);
    for (name, message) in JOURNALS {
        let workspace = Workspace::new();
        let fleet_path = workspace.write("fleet.toml", &fleet);
        let journal = std::fs::read(files.iter().find(|file| file.ends_with(name)).unwrap()).unwrap();
        let placed = workspace.path(".fleetbake/fleet/20261126-120000-0000a.jsonl");
        std::fs::create_dir_all(placed.parent().unwrap()).unwrap();
        std::fs::write(&placed, journal).unwrap();
        let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--resume"]);
        assert_eq!(witness.connections(), 0, "{name}: connected to EC2: {}", outcome.stderr);
        assert_eq!(outcome.code, 2, "{name}: {}", outcome.stderr);
        assert!(outcome.stderr.contains(placed.to_str().unwrap()), "{name}: names the journal: {}", outcome.stderr);
        assert!(outcome.stderr.contains(message), "{name}: expected `{message}` in {}", outcome.stderr);
        // The journal is left as it was: never rewritten, never silently dropped.
        assert_eq!(
            std::fs::read(&placed).unwrap(),
            std::fs::read(files.iter().find(|f| f.ends_with(name)).unwrap()).unwrap()
        );
    }
}

#[test]
fn resume_with_no_journal_is_bad_input() {
    let workspace = Workspace::new();
    let fleet = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/journals/fleet.toml"))
        .unwrap();
    let fleet_path = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet_path.to_str().unwrap(), "--resume"]);
    assert_eq!(outcome.code, 2, "{}", outcome.stderr);
    assert!(outcome.stderr.contains("nothing to resume"), "{}", outcome.stderr);
}
