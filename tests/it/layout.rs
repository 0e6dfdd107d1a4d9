//! The source tree's layers (ARCHITECTURE.md, "Layers and what they may import"), checked from the code: every
//! `crate::…` and `super::…` path in `src/` is read, and an import against the layer order, a cycle between
//! top-level modules, or a step reaching past the cloud port fails the test with the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, bottom layer first: each may import only the ones before it.
const LAYERS: &[&str] = &["util", "config", "plan", "cloud", "outcome", "report", "remote", "steps", "state", "engine"];

/// What a layer may not import even though it sits above it: (importing layer, path prefix, why).
const FORBIDDEN: &[(&str, &str, &str)] = &[
    ("steps", "cloud::aws", "steps reach EC2 only through the port (`cloud::RegionCloud`)"),
    ("steps", "cloud::sim", "steps reach EC2 only through the port (`cloud::RegionCloud`)"),
    ("steps", "cloud::limited", "steps reach EC2 only through the port (`cloud::RegionCloud`)"),
    ("steps", "cloud::limiter", "steps reach EC2 only through the port (`cloud::RegionCloud`)"),
    ("steps", "report::terminal", "steps report only through events (`report::events`)"),
    ("steps", "report::Reporter", "steps report only through events (`report::events`)"),
    ("steps", "report::pump", "steps report only through events (`report::events`)"),
];

/// One module path a source file names, resolved to start at the crate root.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Reference {
    file: PathBuf,
    line: usize,
    /// The top-level module of the file that names it.
    from: String,
    /// `cloud::aws::AwsCloud`, `config::Region`, ….
    path: String,
}

impl Reference {
    fn to(&self) -> &str {
        self.path.split("::").next().unwrap_or_default()
    }
}

/// The module path of a file under `src/`: `cloud/sim/model.rs` → `[cloud, sim, model]`, `cloud/mod.rs` →
/// `[cloud]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Every `crate::…` and `super::…` path in one file's code (comments left out), with `use x::{a, b::c}` groups
/// expanded.
fn references_in(relative: &Path, text: &str) -> Vec<Reference> {
    let module = module_path(relative);
    let Some(from) = module.first().cloned() else { return Vec::new() };
    // The code with comments blanked, and where each line starts.
    let mut code = String::new();
    let mut line_starts = Vec::new();
    for line in text.lines() {
        line_starts.push(code.len());
        let without_comment = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        code.push_str(without_comment);
        code.push('\n');
    }
    let line_of = |offset: usize| line_starts.partition_point(|&start| start <= offset);
    let mut found = Vec::new();
    for (offset, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
        let preceded_by_path = code[..offset].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        let continues_a_path = code[..offset].ends_with("::");
        if preceded_by_path || continues_a_path {
            continue;
        }
        let mut position = offset;
        let base: Vec<String> = if code[offset..].starts_with("crate::") {
            position += "crate::".len();
            Vec::new()
        } else {
            let mut base = module.clone();
            while code[position..].starts_with("super::") {
                position += "super::".len();
                base.pop();
            }
            base
        };
        if base.is_empty() && code[position..].starts_with('{') {
            // `use crate::{a, b}`: the group's items are the top-level modules.
        } else if base.is_empty() && !code[position..].starts_with(|c: char| c.is_alphabetic()) {
            continue;
        }
        for path in expand(&code, &mut position) {
            let mut full = base.clone();
            full.extend(path);
            if full.is_empty() {
                continue;
            }
            found.push(Reference {
                file: relative.to_path_buf(),
                line: line_of(offset),
                from: from.clone(),
                path: full.join("::"),
            });
        }
    }
    found
}

/// Reads a path tree at `position`: `a::b::c`, `a::{b, c::d}`, `{a, b}`, `*`; returns each full path.
fn expand(code: &str, position: &mut usize) -> Vec<Vec<String>> {
    let skip_space = |position: &mut usize| {
        while code[*position..].starts_with(char::is_whitespace) {
            *position += code[*position..].chars().next().map_or(1, char::len_utf8);
        }
    };
    skip_space(position);
    if code[*position..].starts_with('{') {
        *position += 1;
        let mut paths = Vec::new();
        loop {
            skip_space(position);
            if code[*position..].starts_with('}') || *position >= code.len() {
                *position += 1;
                return paths;
            }
            paths.extend(expand(code, position));
            skip_space(position);
            if code[*position..].starts_with(',') {
                *position += 1;
            }
        }
    }
    let identifier: String =
        code[*position..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '*').collect();
    if identifier.is_empty() {
        // Something else (`{` never closed, a stray character): stop reading here.
        *position += code[*position..].chars().next().map_or(1, char::len_utf8);
        return vec![Vec::new()];
    }
    *position += identifier.len();
    let mut paths = Vec::new();
    if code[*position..].starts_with("::") {
        *position += 2;
        for mut rest in expand(code, position) {
            rest.insert(0, identifier.clone());
            paths.push(rest);
        }
    } else {
        // `self` in a group names the group's own prefix.
        paths.push(if identifier == "self" { Vec::new() } else { vec![identifier] });
    }
    paths
}

/// What is wrong with the tree: layer violations and forbidden imports (file:line each), then any cycle
/// between top-level modules.
fn problems(references: &[Reference], present: &BTreeSet<String>) -> Vec<String> {
    let rank = |module: &str| LAYERS.iter().position(|layer| *layer == module);
    let mut problems = Vec::new();
    for module in present {
        if rank(module).is_none() {
            problems.push(format!(
                "src/{module}: a top-level module no layer names; add it to LAYERS (and to ARCHITECTURE.md)"
            ));
        }
    }
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for reference in references {
        let (from, to) = (reference.from.as_str(), reference.to());
        if from == to || !present.contains(to) {
            continue;
        }
        edges.entry(from).or_default().insert(to);
        let at = format!("src/{}:{}", reference.file.display(), reference.line);
        if let (Some(from_rank), Some(to_rank)) = (rank(from), rank(to)) {
            if to_rank > from_rank {
                problems.push(format!("{at}: `{from}` imports `{}`, a layer above it", reference.path));
            }
        }
        for (layer, prefix, why) in FORBIDDEN {
            let names = reference.path == *prefix || reference.path.starts_with(&format!("{prefix}::"));
            if from == *layer && names {
                problems.push(format!("{at}: `{from}` imports `{}`: {why}", reference.path));
            }
        }
    }
    problems.extend(cycles(&edges));
    problems
}

/// Every cycle between top-level modules, each as `a → b → a`.
fn cycles(edges: &BTreeMap<&str, BTreeSet<&str>>) -> Vec<String> {
    let mut found = BTreeSet::new();
    for &start in edges.keys() {
        // Depth-first from `start`, looking for a way back to it.
        let mut stack = vec![(start, vec![start])];
        let mut seen = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for &next in edges.get(node).into_iter().flatten() {
                if next == start {
                    // Report each cycle once, from its smallest module.
                    let smallest = path.iter().enumerate().min_by_key(|(_, module)| **module).map_or(0, |(at, _)| at);
                    let mut rotated: Vec<&str> = path[smallest..].iter().chain(&path[..smallest]).copied().collect();
                    rotated.push(rotated[0]);
                    found.insert(format!("import cycle between top-level modules: {}", rotated.join(" → ")));
                } else if seen.insert(next) {
                    let mut longer = path.clone();
                    longer.push(next);
                    stack.push((next, longer));
                }
            }
        }
    }
    found.into_iter().collect()
}

fn read_tree(root: &Path) -> (Vec<Reference>, BTreeSet<String>) {
    let mut references = Vec::new();
    let mut present = BTreeSet::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            if path.extension().is_none_or(|extension| extension != "rs") || relative == Path::new("main.rs") {
                continue;
            }
            if let Some(top) = module_path(&relative).first() {
                present.insert(top.clone());
            }
            references.extend(references_in(&relative, &std::fs::read_to_string(&path).unwrap()));
        }
    }
    (references, present)
}

#[test]
fn the_source_tree_keeps_its_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (references, present) = read_tree(&root);
    assert!(references.len() > 100, "the checker reads the imports: {} found", references.len());
    let expected: BTreeSet<String> = LAYERS.iter().map(ToString::to_string).collect();
    assert_eq!(present, expected, "the top-level modules of src/");
    let problems = problems(&references, &present);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checker itself: an import added against the layers, or a cycle, is caught and located.
#[test]
fn the_layer_check_catches_a_cycle_and_an_upward_import() {
    let files = [
        (
            "config/mod.rs",
            "//! `crate::engine` in a doc comment is not an import.\nuse crate::util::clock::RunClock;\n",
        ),
        ("cloud/mod.rs", "use crate::config::{Region, api::Action};\n"),
        ("cloud/sim/model.rs", "use super::super::super::config::Tags;\nuse super::catalog;\n"),
        (
            "steps/build.rs",
            "use crate::{\n    cloud::{RegionCloud, aws::AwsCloud},\n    report::events::RunEvent,\n};\n",
        ),
        ("plan/mod.rs", "fn f() { let _ = crate::state::journal::Journal::in_memory(); }\n"),
        ("state/journal.rs", "use crate::plan::Plan;\n"),
        ("outcome/mod.rs", "use crate::report::events::RunEvent;\n"),
    ];
    let references: Vec<Reference> =
        files.iter().flat_map(|(path, text)| references_in(Path::new(path), text)).collect();
    let paths: Vec<(&str, &str, usize)> =
        references.iter().map(|r| (r.from.as_str(), r.path.as_str(), r.line)).collect();
    assert_eq!(
        paths,
        [
            ("config", "util::clock::RunClock", 2),
            ("cloud", "config::Region", 1),
            ("cloud", "config::api::Action", 1),
            ("cloud", "config::Tags", 1),
            ("cloud", "cloud::sim::catalog", 2),
            ("steps", "cloud::RegionCloud", 1),
            ("steps", "cloud::aws::AwsCloud", 1),
            ("steps", "report::events::RunEvent", 1),
            ("plan", "state::journal::Journal::in_memory", 1),
            ("state", "plan::Plan", 1),
            ("outcome", "report::events::RunEvent", 1),
        ]
    );
    let present: BTreeSet<String> =
        ["util", "config", "cloud", "outcome", "steps", "plan", "state", "report"].map(String::from).into();
    let problems = problems(&references, &present);
    assert_eq!(
        problems,
        [
            "src/steps/build.rs:1: `steps` imports `cloud::aws::AwsCloud`: steps reach EC2 only through the port (`cloud::RegionCloud`)",
            "src/plan/mod.rs:1: `plan` imports `state::journal::Journal::in_memory`, a layer above it",
            "src/outcome/mod.rs:1: `outcome` imports `report::events::RunEvent`, a layer above it",
            "import cycle between top-level modules: plan → state → plan",
        ],
        "{problems:#?}"
    );
}
