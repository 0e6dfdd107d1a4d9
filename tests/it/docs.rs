//! The docs against the code: every key the fleet file accepts is documented in docs/reference.md, every fleet
//! example passes `fleetbake validate`, and every relative link in README.md and docs/ resolves.
//!
//! Keys come from the schema itself (`config::keys::accepted_keys`, a walk of the serde derives, `[variables]`'
//! entry keys included), never from a list kept here. A key is documented when the reference's section for its
//! top-level table (the `##` heading naming `[table]` or `[[table]]`) has its path relative to that table in the
//! first cell of a table row (`` `key` ``; `` `bastion.key` `` for a nested table's; `` `"NAME".key` `` or
//! `` `NAME = { key = … }` `` for the values of a map keyed by names); a key of a nested table (`ssh.bastion`,
//! `flavor.provisioners`) may instead be named in the row of that nested table (`` `bastion` ``), or of the one
//! it has the same form as (see `undocumented`).
//!
//! Examples: the top-level fleet.toml and every `examples/**/*.toml` that has a `[fleet]` table are validated
//! where they are (their files beside them). Every ```toml block of README.md and docs/ is one of two kinds:
//! - a **whole fleet**, when it has `[regions]` and a `[[flavor]]`: validated as it is (a forgotten
//!   `[fleet] name` fails);
//! - a **fragment** otherwise: merged into `BASE` below (tables key by key, the fragment's keys winning; the
//!   fragment's n-th `[[flavor]]` onto the base's flavor, so it keeps a `source_ami`; other arrays of tables
//!   appended) and the result validated.
//!
//! Either way the files a provisioner names (`script`, `source`) and `user_data_file` are created empty beside
//! the fleet, as a checkout would have them, and every sensitive variable without a default is given through
//! `FLEETBAKE_VAR_<name>`, the way the docs say to give one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fleetbake::config::keys::{accepted_keys, AcceptedKey};

use crate::harness::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The fleet a fragment is merged into: one flavor (named so `[[distribution]] flavors = ["ubuntu-*"]` matches
/// it), built in us-west-2 and copied to us-east-1.
const BASE: &str = r#"
[fleet]
name = "docs"

[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "ubuntu-22.04-docker"
source_ami = { owners = ["099720109477"], name = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*" }

[regions]
us-west-2 = ["us-east-1"]
"#;

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(relative)).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

/// The Markdown files of the book and the front door, relative to the repository.
fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

// ---------------------------------------------------------------------------------------------------------------
// (a) every accepted key documented

/// The reference's `##` sections: heading → body.
fn reference_sections() -> Vec<(String, String)> {
    let reference = read("docs/reference.md");
    let mut sections: Vec<(String, String)> = Vec::new();
    for line in outside_code(&reference) {
        if let Some(heading) = line.strip_prefix("## ") {
            sections.push((heading.to_owned(), String::new()));
        } else if let Some((_, body)) = sections.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    sections
}

/// The lines of a Markdown text outside ``` fences (for headings), fences' contents kept out.
fn outside_code(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

fn section_of<'a>(sections: &'a [(String, String)], table: &str) -> Option<&'a str> {
    let single = format!("`[{table}]`");
    let array = format!("`[[{table}]]`");
    sections
        .iter()
        .find(|(heading, _)| heading.contains(&single) || heading.contains(&array))
        .map(|(_, body)| body.as_str())
}

/// The backticked names in a row's first cell.
fn cell_names(row: &str) -> Vec<String> {
    row.split('|').nth(1).map_or_else(Vec::new, |cell| cell.split('`').skip(1).step_by(2).map(str::to_owned).collect())
}

/// The table rows of a section, header and rule left out.
fn rows(section: &str) -> Vec<&str> {
    section.lines().filter(|line| line.starts_with("| ") && !line.starts_with("| ---")).collect()
}

/// Whether `cell` documents `path` for the values of a map keyed by names: `` `"TYPE".spot` ``, or
/// `` `NAME = { default = "value", … }` `` (the name a placeholder in capitals).
fn names_a_maps_values_key(cell: &str, path: &str) -> bool {
    if let Some(name) = cell.strip_suffix(&format!(".{path}")) {
        return name.len() > 2
            && name.starts_with('"')
            && name.ends_with('"')
            && !name[1..name.len() - 1].contains('"');
    }
    match cell.split_once(" = {") {
        Some((name, inline)) => {
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
                && (inline.starts_with(&format!(" {path} = ")) || inline.contains(&format!(", {path} = ")))
        }
        None => false,
    }
}

/// Whether a row's text names `key` as one of an inline table's keys: `` `key` ``, `` `key = … ` ``,
/// `{ key = `, `, key = `.
fn mentions(row: &str, key: &str) -> bool {
    [format!("`{key}`"), format!("`{key} = "), format!("{{ {key} = "), format!(", {key} = ")]
        .iter()
        .any(|form| row.contains(form.as_str()))
}

/// Why `key` is not documented in `sections`, or `None` when it is.
///
/// In the section of its top-level table, a key is documented by a row whose first cell is its path relative
/// to that table (`` `timeout` `` in `[ssh]`, `` `bastion.timeout` `` for `[ssh] bastion`'s, `` `api.copy_image` ``
/// in `[limits]`), or that path after a map's name placeholder (`` `"TYPE".spot` ``, `` `NAME = { default = … }` ``).
/// A nested table's key may instead be named (`` `key` ``, `key = ` in an inline table) in the row whose first
/// cell is the nested table itself (`` `bastion` ``), or in the row of the table it says it has the same form as
/// (`` same form as `provisioners` ``). A top-level key whose table is documented row by row (`api.copy_image`)
/// is documented by those rows.
fn undocumented(sections: &[(String, String)], key: &AcceptedKey) -> Option<String> {
    if key.table.is_empty() {
        return match section_of(sections, &key.key) {
            Some(_) => None,
            None => Some(format!("no `## ` section whose heading names `[{0}]` or `[[{0}]]`", key.key)),
        };
    }
    let (top, nested) = match key.table.split_once('.') {
        Some((top, nested)) => (top, Some(nested)),
        None => (key.table.as_str(), None),
    };
    let Some(section) = section_of(sections, top) else {
        return Some(format!("no section for `[{top}]`"));
    };
    let rows = rows(section);
    let path = match nested {
        Some(nested) => format!("{nested}.{}", key.key),
        None => key.key.clone(),
    };
    let cells: Vec<String> = rows.iter().flat_map(|row| cell_names(row)).collect();
    if cells.iter().any(|cell| *cell == path || names_a_maps_values_key(cell, &path)) {
        return None;
    }
    match nested {
        None if cells.iter().any(|cell| cell.starts_with(&format!("{}.", key.key))) => return None,
        None => {}
        Some(nested) => {
            let rows_of = |table: &str| -> Vec<&str> {
                rows.iter().copied().filter(|row| cell_names(row).iter().any(|cell| cell == table)).collect()
            };
            let mut documenting = rows_of(nested);
            let same_form: Vec<String> = documenting
                .iter()
                .filter_map(|row| row.split_once("same form as `").and_then(|(_, rest)| rest.split_once('`')))
                .map(|(other, _)| other.to_owned())
                .collect();
            for other in &same_form {
                documenting.extend(rows_of(other));
            }
            if documenting.iter().any(|row| mentions(row, &key.key)) {
                return None;
            }
        }
    }
    Some(match nested {
        None => format!("no row of the `[{top}]` section has `{path}` in its first cell"),
        Some(nested) => format!(
            "no row of the `[{top}]` section has `{path}` in its first cell, nor names `{}` in the row of `{nested}`",
            key.key
        ),
    })
}

#[test]
fn every_key_the_fleet_file_accepts_is_documented_in_the_reference() {
    let sections = reference_sections();
    let keys = accepted_keys();
    assert!(keys.len() > 150, "the schema walk found only {} keys", keys.len());
    let missing: Vec<String> = keys
        .iter()
        .filter_map(|key| {
            undocumented(&sections, key).map(|why| {
                let table = if key.table.is_empty() { "the top level".to_owned() } else { format!("[{}]", key.table) };
                format!("`{}` (table {table}): {why}", key.key)
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys the fleet file accepts that docs/reference.md does not document:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_documentation_rule_rejects_a_key_the_reference_does_not_name() {
    let sections = reference_sections();
    for key in [
        AcceptedKey { table: String::new(), key: "no_such_table".into() },
        AcceptedKey { table: "defaults".into(), key: "no_such_key".into() },
        AcceptedKey { table: "ssh.bastion".into(), key: "no_such_key".into() },
        // A nested key sharing a top-level key's name (`[ssh] timeout`).
        AcceptedKey { table: "ssh.bastion".into(), key: "timeout".into() },
        // A top-level key sharing a nested key's name (`spot.interrupt_after`, `api.copy_image`).
        AcceptedKey { table: "sim".into(), key: "interrupt_after".into() },
        AcceptedKey { table: "limits".into(), key: "copy_image".into() },
        // A provisioner's key sharing a flavor's (`name`), and a variable's unknown key.
        AcceptedKey { table: "flavor.provisioners".into(), key: "name".into() },
        AcceptedKey { table: "variables".into(), key: "no_such_key".into() },
    ] {
        assert!(undocumented(&sections, &key).is_some(), "{key} counted as documented");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// (b) every fleet example validates

/// The ```toml blocks of a Markdown file.
fn toml_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn merge(base: &mut toml::Table, fragment: toml::Table) {
    for (key, value) in fragment {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(into)), toml::Value::Table(table)) => merge(into, table),
            (Some(toml::Value::Array(into)), toml::Value::Array(items)) if key == "flavor" => {
                for (index, item) in items.into_iter().enumerate() {
                    match (into.get_mut(index), item) {
                        (Some(toml::Value::Table(flavor)), toml::Value::Table(table)) => merge(flavor, table),
                        (_, item) => into.push(item),
                    }
                }
            }
            (Some(toml::Value::Array(into)), toml::Value::Array(items)) => into.extend(items),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The relative paths a fleet's provisioners, tests and `user_data_file` name.
fn named_files(fleet: &toml::Table) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut tables: Vec<&toml::Table> = vec![];
    if let Some(toml::Value::Table(defaults)) = fleet.get("defaults") {
        tables.push(defaults);
    }
    if let Some(toml::Value::Array(flavors)) = fleet.get("flavor") {
        tables.extend(flavors.iter().filter_map(toml::Value::as_table));
    }
    for table in tables {
        if let Some(path) = table.get("user_data_file").and_then(toml::Value::as_str) {
            files.insert(path.to_owned());
        }
        for list in ["provisioners", "tests", "on_failure"] {
            for provisioner in table.get(list).and_then(toml::Value::as_array).into_iter().flatten() {
                for path_key in ["script", "source"] {
                    if let Some(path) = provisioner.get(path_key).and_then(toml::Value::as_str) {
                        files.insert(path.to_owned());
                    }
                }
            }
        }
    }
    files.retain(|path| !path.starts_with('/') && !path.starts_with('~'));
    files
}

/// `FLEETBAKE_VAR_<name>` for every sensitive variable without a default.
fn sensitive_values(fleet: &toml::Table) -> Vec<(String, String)> {
    let Some(toml::Value::Table(variables)) = fleet.get("variables") else { return vec![] };
    variables
        .iter()
        .filter(|(_, value)| {
            value.get("sensitive").and_then(toml::Value::as_bool) == Some(true) && value.get("default").is_none()
        })
        .map(|(name, _)| (format!("FLEETBAKE_VAR_{name}"), "docs-test-value".to_owned()))
        .collect()
}

/// Validates `fleet` in a workspace of its own; `Err` holds what `validate` said.
fn validate_text(fleet: &toml::Table) -> Result<(), String> {
    let workspace = Workspace::new();
    for file in named_files(fleet) {
        workspace.write(&file, "#!/bin/sh\n");
    }
    let path = workspace.write("fleet.toml", &toml::to_string(fleet).expect("a TOML table prints"));
    let env = sensitive_values(fleet);
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let outcome = workspace.fleetbake_with_env(&["validate", path.to_str().unwrap()], &env);
    match outcome.code {
        0 => Ok(()),
        code => Err(format!("exit {code}: {}{}", outcome.stderr, outcome.stdout)),
    }
}

fn example_fleets(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            example_fleets(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let table: toml::Table =
                toml::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            if table.contains_key("fleet") {
                found.push(path);
            }
        }
    }
}

#[test]
fn every_fleet_example_passes_validate() {
    let workspace = Workspace::new();
    let mut fleets = vec![Path::new(ROOT).join("fleet.toml")];
    example_fleets(&Path::new(ROOT).join("examples"), &mut fleets);
    assert!(fleets.len() >= 4, "examples found: {fleets:?}");
    let mut failures = Vec::new();
    for fleet in &fleets {
        let outcome = workspace.fleetbake(&["validate", fleet.to_str().unwrap()]);
        if outcome.code != 0 {
            failures.push(format!("{}: exit {}: {}", fleet.display(), outcome.code, outcome.stderr));
        }
    }
    let mut blocks = 0;
    for file in markdown_files() {
        for (index, block) in toml_blocks(&read(&file)).into_iter().enumerate() {
            blocks += 1;
            let place = format!("{file}, ```toml block {}", index + 1);
            let table: toml::Table = match toml::from_str(&block) {
                Ok(table) => table,
                Err(error) => {
                    failures.push(format!("{place}: not TOML: {error}"));
                    continue;
                }
            };
            let whole = is_whole_fleet(&table);
            let fleet = if whole {
                table
            } else {
                let mut base: toml::Table = toml::from_str(BASE).unwrap();
                merge(&mut base, table);
                base
            };
            if let Err(error) = validate_text(&fleet) {
                let kind = if whole { "a whole fleet" } else { "a fragment merged into the docs test's BASE" };
                failures.push(format!("{place} ({kind}): {error}"));
            }
        }
    }
    assert!(blocks >= 10, "only {blocks} ```toml blocks found in README.md and docs/");
    assert!(failures.is_empty(), "fleet examples that do not validate:\n{}", failures.join("\n"));
}

/// A block is a whole fleet when it has `[regions]` and a `[[flavor]]` (what every fleet needs and no
/// fragment shows): it is validated as it is, so one that forgets `[fleet] name` fails rather than borrowing
/// the base's.
fn is_whole_fleet(block: &toml::Table) -> bool {
    block.contains_key("regions") && block.contains_key("flavor")
}

#[test]
fn a_whole_fleet_example_that_forgets_its_name_is_not_taken_for_a_fragment() {
    let block: toml::Table = toml::from_str(
        r#"
[defaults]
instance_type = "t3.small"
ssh_username = "ubuntu"

[[flavor]]
name = "web"
source_ami = { owners = ["099720109477"], name = "ubuntu/images/*" }

[regions]
us-west-2 = []
"#,
    )
    .unwrap();
    assert!(is_whole_fleet(&block));
    let error = validate_text(&block).expect_err("a fleet without `[fleet] name` is refused");
    assert!(error.contains("fleet"), "{error}");
    let fragment: toml::Table = toml::from_str("[ssh]\ntimeout = \"5m\"\n").unwrap();
    assert!(!is_whole_fleet(&fragment));
}

#[test]
fn a_fragment_that_breaks_the_fleet_fails_validation() {
    let mut base: toml::Table = toml::from_str(BASE).unwrap();
    merge(&mut base, toml::from_str("[defaults]\ninstnce_type = \"t3.small\"\n").unwrap());
    let error = validate_text(&base).expect_err("an unknown key is refused");
    assert!(error.contains("instnce_type"), "{error}");
}

// ---------------------------------------------------------------------------------------------------------------
// every relative link resolves

/// A heading's anchor as mdBook and GitHub make it: lower case, backticks and punctuation dropped, spaces `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    outside_code(markdown)
        .into_iter()
        .filter(|line| line.starts_with('#'))
        .map(|line| anchor(line.trim_start_matches('#')))
        .collect()
}

/// The `](target)` links of a Markdown text outside code, absolute URLs left out.
fn relative_links(markdown: &str) -> Vec<String> {
    let mut links = Vec::new();
    for line in outside_code(markdown) {
        // Inline code spans are not links.
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join(" ");
        let mut rest = prose.as_str();
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find(')') else { break };
            let target = &rest[..end];
            if !target.contains("://") && !target.starts_with("mailto:") {
                links.push(target.to_owned());
            }
            rest = &rest[end..];
        }
    }
    links
}

#[test]
fn every_relative_link_in_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = read(&file);
        let folder = Path::new(&file).parent().unwrap().to_path_buf();
        for link in relative_links(&text) {
            checked += 1;
            let (target, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target_path = if target.is_empty() { PathBuf::from(&file) } else { folder.join(target) };
            let on_disk = Path::new(ROOT).join(&target_path);
            if !on_disk.exists() {
                broken.push(format!("{file}: ({link}): {} does not exist", target_path.display()));
                continue;
            }
            if !fragment.is_empty() {
                let target_text = std::fs::read_to_string(&on_disk).unwrap_or_default();
                if !anchors(&target_text).contains(fragment) {
                    broken.push(format!("{file}: ({link}): no heading with anchor `#{fragment}`"));
                }
            }
        }
    }
    assert!(checked > 50, "only {checked} links found");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_summary_lists_every_page_of_the_book() {
    let summary = read("docs/SUMMARY.md");
    assert!(summary.starts_with("# Summary\n"), "mdBook's SUMMARY.md starts with `# Summary`");
    let listed: BTreeSet<String> = relative_links(&summary).into_iter().collect();
    let pages: BTreeSet<String> = markdown_files()
        .into_iter()
        .filter_map(|file| file.strip_prefix("docs/").map(str::to_owned))
        .filter(|page| page != "SUMMARY.md")
        .collect();
    assert_eq!(listed, pages, "docs/SUMMARY.md against the pages in docs/");
}
