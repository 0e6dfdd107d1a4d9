//! Every line of a plain run starts with its time (README, "What you see, and what scripts read"): a CI log
//! parser that expects `2026-11-27T02:14:07Z ` at the start of each line meets no other line, on stdout or
//! stderr — the reporter's lines, a warning before the run, log lines (`-v`), the simulated run's last lines,
//! the closing lines, the errors a run ends with. On the simulated cloud and on moto + the real sshd.

use crate::harness::*;
use crate::matrix::{fleet_header, AL2023};
use crate::operator::two_by_two_sim_fleet;

/// Whether `line` starts with the plain lines' stamp: `YYYY-MM-DDTHH:MM:SSZ ` (RFC 3339, whole seconds, UTC).
fn is_stamped(line: &str) -> bool {
    let bytes = line.as_bytes();
    let shape = "dddd-dd-ddTdd:dd:ddZ ";
    bytes.len() > shape.len()
        && shape.bytes().zip(bytes).all(|(expected, byte)| match expected {
            b'd' => byte.is_ascii_digit(),
            literal => literal == *byte,
        })
}

/// Fails the test, the line shown, if any non-empty line of `stream` has no stamp.
fn assert_every_line_stamped(what: &str, stream: &str) {
    for (number, line) in stream.lines().enumerate() {
        assert!(line.is_empty() || is_stamped(line), "{what} line {} has no stamp: {line:?}\n{stream}", number + 1);
    }
}

/// Whether some line of `stream` is the stamp followed by `text`.
fn has_line_starting(stream: &str, text: &str) -> bool {
    stream.lines().any(|line| is_stamped(line) && line[21..].starts_with(text))
}

#[test]
fn the_stamp_check_fails_a_line_without_one() {
    assert!(is_stamped("2026-11-27T02:14:07Z ==> run complete"));
    assert!(!is_stamped("simulated run: manifest written to `m.json`"));
    assert!(!is_stamped("2026-11-27T02:14:07.123Z ==> fractions"));
    assert!(!is_stamped("2026-11-27 02:14:07Z ==> a space"));
    let unstamped = std::panic::catch_unwind(|| {
        assert_every_line_stamped("stderr", "2026-11-27T02:14:07Z ==> a\nwarning: b\n");
    });
    let message = *unstamped.expect_err("a line without a stamp fails").downcast::<String>().unwrap();
    assert!(message.contains("stderr line 2 has no stamp: \"warning: b\""), "{message}");
}

/// A sensitive variable for `--var` (a warning before the run) and a copy refused (a failure and its hint):
/// every line of the plain run is stamped, the simulated run's last lines and the closing lines among them, and
/// so are the debug log lines `-v` adds.
#[test]
fn every_line_of_a_plain_simulated_run_is_stamped_warnings_failures_and_last_lines_too() {
    let workspace = Workspace::new();
    let text = two_by_two_sim_fleet(
        "stamps",
        "",
        "faults = [{ action = \"CopyImage\", error = \"UnauthorizedOperation\", nth = 1 }]",
    )
    .replace("[defaults]\n", "[variables]\ntoken = { sensitive = true }\n\n[defaults]\n");
    let fleet = workspace.write("fleet.toml", &text);
    let fleet = fleet.to_str().unwrap();
    let outcome = workspace.fleetbake(&["matrix", fleet, "--cloud", "sim", "--var", "token=visible-in-ps"]);
    assert_eq!(outcome.code, 1, "a copy failed: {}", outcome.stderr);
    assert_every_line_stamped("stdout", &outcome.stdout);
    assert_every_line_stamped("stderr", &outcome.stderr);
    let stderr = &outcome.stderr;
    assert!(has_line_starting(stderr, "warning: `--var token=…`: `token` is sensitive"), "{stderr}");
    assert!(has_line_starting(stderr, "==> preflight: all "), "{stderr}");
    assert!(has_line_starting(stderr, "    hint: the identity the run acts as needs `ec2:CopyImage`"), "{stderr}");
    assert!(stderr.lines().any(|line| line.contains("/us-east-1: failed at copy: ")), "{stderr}");
    assert!(has_line_starting(stderr, "==> summary: 5 of 6 images, 1 failures"), "{stderr}");
    let manifest = workspace.path("manifest.sim.json");
    assert!(
        has_line_starting(stderr, &format!("simulated run: manifest written to `{}`", manifest.display())),
        "{stderr}"
    );
    assert!(has_line_starting(stderr, "==> estimated cost unknown; no price for `t3.small`"), "{stderr}");
    // The last lines read the run's own (simulated) time: not before the summary's.
    let summary_time = stderr.lines().find(|line| line.contains("==> summary: ")).unwrap()[..20].to_string();
    let last_time = stderr.lines().last().unwrap()[..20].to_string();
    assert!(last_time >= summary_time, "{summary_time} then {last_time}");

    // `-v`: fleetbake's debug log lines (tracing) carry the same stamp (and no colour off a terminal).
    let verbose = workspace.fleetbake(&["-v", "matrix", fleet, "--cloud", "sim", "--var", "token=visible-in-ps"]);
    assert_eq!(verbose.code, 1, "{}", verbose.stderr);
    assert_every_line_stamped("stdout", &verbose.stdout);
    assert_every_line_stamped("stderr (-v)", &verbose.stderr);
    assert!(has_line_starting(&verbose.stderr, "DEBUG "), "debug lines were logged:\n{}", verbose.stderr);
    assert!(!verbose.stderr.contains('\u{1b}'), "no colour in plain lines");

    // `-q` and a run stopped before it starts (the preflight's checks, then the error), stamped as well.
    // (A build region the simulated account has not enabled fails the preflight.)
    let refused = workspace.write("refused.toml", &format!("{text}regions_not_enabled = [\"eu-central-1\"]\n"));
    let stopped =
        workspace.fleetbake(&["-q", "matrix", refused.to_str().unwrap(), "--cloud", "sim", "--var", "token=t"]);
    assert_eq!(stopped.code, 1, "{}", stopped.stderr);
    assert_every_line_stamped("stdout", &stopped.stdout);
    assert_every_line_stamped("stderr (preflight failed)", &stopped.stderr);
    assert!(has_line_starting(&stopped.stderr, "error: preflight: "), "{}", stopped.stderr);
    assert!(has_line_starting(&stopped.stderr, "FAIL eu-central-1: "), "the checks are shown too: {}", stopped.stderr);

    // Bad input for a plain run: its errors are stamped too; `validate` keeps its `file:line:col` lines as written.
    let bad = workspace.write("bad.toml", &text.replace("instance_type = \"t3.small\"", "instance_typ = \"t3.small\""));
    let refused = workspace.fleetbake(&["matrix", bad.to_str().unwrap(), "--cloud", "sim"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert_every_line_stamped("stderr (bad input)", &refused.stderr);
    assert!(has_line_starting(&refused.stderr, "error: "), "{}", refused.stderr);
    let validate = workspace.fleetbake(&["validate", bad.to_str().unwrap()]);
    assert!(validate.stderr.starts_with(&format!("error: {}:", bad.display())), "{}", validate.stderr);
}

/// The same on moto and the real sshd: a flavor whose provisioner fails, one that makes its image, a warning
/// before the run; every line of stdout and stderr stamped, the failure, the summary and the closing lines
/// among them; then a `--resume` of it, refused, stamped too.
#[test]
fn every_line_of_a_plain_run_on_moto_is_stamped() {
    let moto = Moto::start();
    let sshd = Sshd::start();
    let workspace = Workspace::new();
    let fleet = format!(
        "{}\n[variables]\ntoken = {{ sensitive = true }}\n\n\
         [[flavor]]\nname = \"good\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo baked\"] }}]\n\n\
         [[flavor]]\nname = \"broken\"\nsource_ami = {AL2023}\n\
         provisioners = [{{ type = \"shell\", inline = [\"echo about to fail\", \"exit 3\"] }}]\n\n\
         [regions]\nus-west-2 = []\n",
        fleet_header(&moto, &sshd)
    );
    let fleet = workspace.write("fleet.toml", &fleet);
    let outcome = workspace.fleetbake(&["matrix", fleet.to_str().unwrap(), "--var", "token=visible-in-ps"]);
    assert_eq!(outcome.code, 1, "a build failed: {}", outcome.stderr);
    assert_every_line_stamped("stdout", &outcome.stdout);
    assert_every_line_stamped("stderr", &outcome.stderr);
    let stderr = &outcome.stderr;
    assert!(has_line_starting(stderr, "warning: `--var token=…`: `token` is sensitive"), "{stderr}");
    assert!(has_line_starting(stderr, "good/us-west-2: baked"), "{stderr}");
    assert!(has_line_starting(stderr, "==> broken/us-west-2: failed at provision: "), "{stderr}");
    assert!(has_line_starting(stderr, "==> run partial: 1 jobs succeeded, 1 failed"), "{stderr}");
    assert!(has_line_starting(stderr, "==> summary: 1 of 2 images, 1 failures"), "{stderr}");
    assert!(has_line_starting(stderr, "==> estimated cost unknown; no price for `t3.small`"), "{stderr}");
    runtime().block_on(crate::cloud_state::assert_nothing_temporary_left(&moto.client("us-west-2"), "us-west-2"));

    // `--resume` of a run that finished: refused (nothing to resume), its lines stamped as well.
    let resumed = workspace.fleetbake(&["matrix", fleet.to_str().unwrap(), "--resume", "--var", "token=t"]);
    assert_ne!(resumed.code, 0, "{}", resumed.stderr);
    assert_every_line_stamped("stdout (--resume)", &resumed.stdout);
    assert_every_line_stamped("stderr (--resume)", &resumed.stderr);
    assert!(has_line_starting(&resumed.stderr, "error: "), "{}", resumed.stderr);
}
