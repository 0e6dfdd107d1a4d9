//! What the benches share: a synthetic fleet file, the process's peak memory, and how a bench tells a full
//! measurement (`cargo bench`) from the small checked rows CI runs (`cargo test --bench NAME`), and fails.

use std::fmt::Debug;

/// Whether this is a full measurement: `cargo bench` runs a `harness = false` bench with `--bench`;
/// `cargo test --bench NAME` runs the same `main` without it, and then a bench runs only its small rows.
pub fn full_run() -> bool {
    std::env::args().skip(1).any(|argument| argument == "--bench")
}

/// What a bench found wrong (a failed job, a leaked resource, a schedule other than the pinned one). Each
/// bench prints its figures first; [`Checks::finish`] then exits non-zero if anything was found.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// Records `failure()` unless `holds`.
    pub fn check(&mut self, holds: bool, failure: impl FnOnce() -> String) {
        if !holds {
            self.failures.push(failure());
        }
    }

    /// Records a failure unless `actual == expected`; `what` names the row and the column.
    pub fn equal<T: PartialEq + Debug>(&mut self, what: impl std::fmt::Display, actual: T, expected: T) {
        self.check(actual == expected, || format!("{what}: {actual:?}, expected {expected:?}"));
    }

    /// Records a failure if `actual > ceiling`.
    #[allow(dead_code, reason = "each bench compiles its own copy of this module and uses some of the checks")]
    pub fn at_most<T: PartialOrd + Debug>(&mut self, what: impl std::fmt::Display, actual: T, ceiling: T) {
        self.check(actual <= ceiling, || format!("{what}: {actual:?}, expected at most {ceiling:?}"));
    }

    /// Records a failure unless `leaked` is empty (what a run left in the simulated account).
    #[allow(dead_code, reason = "each bench compiles its own copy of this module and uses some of the checks")]
    pub fn nothing_leaked(&mut self, what: impl std::fmt::Display, leaked: &[String]) {
        self.check(leaked.is_empty(), || {
            format!("{what}: {} resources leaked, the first: {:?}", leaked.len(), &leaked[..leaked.len().min(3)])
        });
    }

    /// Exits with status 1 after listing every failure, if there was one.
    pub fn finish(self) {
        if self.failures.is_empty() {
            return;
        }
        eprintln!("{} check(s) failed:", self.failures.len());
        for failure in &self.failures {
            eprintln!("  !! {failure}");
        }
        std::process::exit(1);
    }
}

/// A fleet of `flavors` flavors built in `build_regions` regions, each copied to `targets` of the others.
pub fn synthetic_fleet(flavors: usize, build_regions: usize, targets: usize) -> String {
    let mut text = String::from(
        "[fleet]\nname = \"bench\"\nami_name = \"{flavor}-{build_region}-{timestamp}\"\n\n\
         [defaults]\ninstance_type = \"t3.small\"\nssh_username = \"ubuntu\"\ntags = { ManagedBy = \"fleetbake\" }\n\n",
    );
    for flavor in 0..flavors {
        text.push_str(&format!(
            "[[flavor]]\nname = \"flavor-{flavor}\"\n\
             source_ami = {{ owners = [\"amazon\"], name = \"al2023-ami-2023.*-kernel-6.1-x86_64\" }}\n\
             provisioners = [{{ type = \"shell\", inline = [\"echo {flavor}\"] }}]\n\n"
        ));
    }
    text.push_str("[regions]\n");
    let region = |index: usize| format!("zz-bench-{index}");
    for build in 0..build_regions {
        let copies: Vec<String> =
            (1..=targets).map(|offset| format!("\"{}\"", region(build_regions + build * targets + offset))).collect();
        text.push_str(&format!("{} = [{}]\n", region(build), copies.join(", ")));
    }
    text
}

/// The process's peak resident memory, in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Starts the peak-memory count afresh (Linux: write 5 to /proc/self/clear_refs).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
