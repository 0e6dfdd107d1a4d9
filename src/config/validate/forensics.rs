//! `on_failure`, `collect` (per flavor, else `[defaults]`), `[matrix] keep_failed` / `keep_failed_state`, and
//! `[retention] logs` / `keep_days`.

use super::*;

/// A flavor's on-failure phase: its own `on_failure` / `collect`, else `[defaults]`'.
pub(super) fn resolve_forensics(
    checker: &mut Checker<'_>,
    path: &KeyPath,
    flavor: &schema::FlavorSection,
    defaults: &schema::DefaultsSection,
    timeout: Duration,
) -> Forensics {
    let (on_failure, at) = match (&flavor.on_failure, &defaults.on_failure) {
        (Some(list), _) => (list.as_slice(), path.clone()),
        (None, Some(list)) => (list.as_slice(), KeyPath::root().key("defaults")),
        (None, None) => (&[][..], path.clone()),
    };
    let on_failure = resolve_provisioner_list(checker, &at, "on_failure", on_failure, timeout);
    let (collect, at) = match (&flavor.collect, &defaults.collect) {
        (Some(list), _) => (list.clone(), path.key("collect")),
        (None, Some(list)) => (list.clone(), KeyPath::root().key("defaults").key("collect")),
        (None, None) => (Vec::new(), path.key("collect")),
    };
    for (index, file) in collect.iter().enumerate() {
        if let Some(problem) = collect_path_problem(file) {
            checker.problem(at.index(index), format!("`{}`: {problem}", file.escape_debug()));
        }
    }
    Forensics { on_failure, collect }
}

/// A `collect` entry: an absolute path on the instance, with nothing a shell or a terminal would read as more.
fn collect_path_problem(file: &str) -> Option<&'static str> {
    if !file.starts_with('/') {
        Some("must be an absolute path on the instance")
    } else if file.chars().any(|c| c.is_control()) {
        Some("must not contain control characters")
    } else if file.split('/').any(|part| part == "..") {
        Some("must not contain `..`")
    } else {
        None
    }
}

/// `[matrix] keep_failed_state` (it also applies to `--keep-failed`).
pub(super) fn resolve_kept_state(checker: &mut Checker<'_>, raw: &schema::MatrixSection) -> KeptState {
    let path = KeyPath::root().key("matrix");
    match raw.keep_failed_state.as_deref() {
        None | Some("running") => KeptState::Running,
        Some("stopped") => KeptState::Stopped,
        Some(other) => {
            checker.problem(path.key("keep_failed_state"), format!("`{other}`: `running` (the default) or `stopped`"));
            KeptState::Running
        }
    }
}

/// `[matrix] keep_failed`, kept as `keep_failed_state` says.
pub(super) fn resolve_keep_failed(
    checker: &mut Checker<'_>,
    raw: &schema::MatrixSection,
    state: KeptState,
) -> Option<KeepFailed> {
    let path = KeyPath::root().key("matrix");
    let for_ = checker.duration(path.key("keep_failed"), raw.keep_failed.as_deref()?)?;
    if let Some(problem) = KeepFailed::problem(for_) {
        checker.problem(path.key("keep_failed"), problem);
    }
    Some(KeepFailed { for_, state })
}

/// `[retention]`.
pub(super) fn resolve_retention(checker: &mut Checker<'_>, raw: &schema::RetentionSection) -> Retention {
    let path = KeyPath::root().key("retention");
    let deregister_shared = match raw.shared.as_deref() {
        None | Some("leave") => false,
        Some("deregister") => true,
        Some(other) => {
            checker.problem(
                path.key("shared"),
                format!("`{other}`: use `leave` (the default: gc never deregisters a shared image) or `deregister`"),
            );
            false
        }
    };
    Retention {
        keep: raw.keep.map(|keep| checker.positive(path.key("keep"), Some(keep), 1)),
        deregister_shared,
        keep_days: raw.keep_days.map(|days| checker.positive(path.key("keep_days"), Some(days as usize), 1) as u32),
        logs: raw
            .logs
            .as_deref()
            .and_then(|text| checker.duration(path.key("logs"), text))
            .unwrap_or(DEFAULT_LOGS_RETENTION),
    }
}
