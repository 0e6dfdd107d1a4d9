//! The manifest a run finds where it is about to write its own. One that cannot be read (not JSON, not a
//! manifest, or from a newer fleetbake) is never silently replaced: a run of the whole fleet keeps it beside
//! as `<name>.unreadable-<run start>` and says so (an event the reporters show), and a selective run, which
//! must carry over what the old manifest lists outside its selection, refuses to start, since it would drop
//! those images from the manifest (and gc's protection of them with it).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::Manifest;

/// An unreadable manifest, moved out of the way of the run's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetAside {
    /// Where it was (where the run writes its manifest).
    pub path: PathBuf,
    /// Where it is now.
    pub kept_as: PathBuf,
    /// Why it could not be read.
    pub why: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExistingManifestError {
    /// A selective run (`--only`, `--except`, or the resume of one) over a manifest it cannot read.
    #[error("cannot read the manifest `{}`: {why}; a run narrowed by `--only`/`--except` keeps the images the manifest lists outside its selection, and cannot know them: fix or move the file, or run the whole fleet (which keeps the file beside as `{}.unreadable-<time>` and writes a new one)", path.display(), file_name(path))]
    Unreadable { path: PathBuf, why: String },
    /// The unreadable manifest could not be moved aside.
    #[error("cannot keep the unreadable manifest `{}` as `{}`: {error}", path.display(), kept_as.display())]
    CannotSetAside { path: PathBuf, kept_as: PathBuf, error: std::io::Error },
}

/// A manifest that is there and cannot be read, found before a run (of the whole fleet) starts.
#[derive(Debug, PartialEq, Eq)]
pub struct Unreadable {
    path: PathBuf,
    why: String,
}

/// Before a run that writes its manifest at `path` makes any call: nothing to say if there is none or it
/// reads; one that cannot be read refuses a selective run, and is returned to any other to
/// [set aside](Unreadable::set_aside) once it is about to start.
pub fn check(path: &Path, selective: bool) -> Result<Option<Unreadable>, ExistingManifestError> {
    let why = match Manifest::read(path) {
        Ok(_) => return Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => error.to_string(),
    };
    if selective {
        return Err(ExistingManifestError::Unreadable { path: path.to_path_buf(), why });
    }
    Ok(Some(Unreadable { path: path.to_path_buf(), why }))
}

impl Unreadable {
    /// Keeps it beside, as `<name>.unreadable-<started_at>`, out of the way of the run's manifest.
    pub fn set_aside(self, started_at: DateTime<Utc>) -> Result<SetAside, ExistingManifestError> {
        let Unreadable { path, why } = self;
        let kept_as = free_name(&path, started_at);
        // Never over anything: `free_name` found a name nothing has, and a hard link fails if that changed.
        match std::fs::hard_link(&path, &kept_as).and_then(|()| std::fs::remove_file(&path)) {
            Ok(()) => Ok(SetAside { path, kept_as, why }),
            Err(error) => Err(ExistingManifestError::CannotSetAside { path, kept_as, error }),
        }
    }
}

#[cfg(test)]
fn prepare(path: &Path, selective: bool, started_at: DateTime<Utc>) -> Result<Option<SetAside>, ExistingManifestError> {
    check(path, selective)?.map(|unreadable| unreadable.set_aside(started_at)).transpose()
}

/// `<name>.unreadable-<started_at>` beside `path`, with `-2`, `-3`, … if that is taken.
fn free_name(path: &Path, started_at: DateTime<Utc>) -> PathBuf {
    let stem = format!("{}.unreadable-{}", file_name(path), started_at.format("%Y%m%dT%H%M%SZ"));
    (1..)
        .map(|number| if number == 1 { stem.clone() } else { format!("{stem}-{number}") })
        .map(|name| path.with_file_name(name))
        .find(|candidate| std::fs::symlink_metadata(candidate).is_err())
        .expect("a free name")
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_else(|| "manifest.json".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        "2026-12-07T12:30:00Z".parse().unwrap()
    }

    #[test]
    fn a_missing_or_readable_manifest_is_left_alone() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        assert_eq!(prepare(&path, true, at()).unwrap(), None);
        let manifest = r#"{"version":1,"fleet":"f","run_id":"r","status":"complete","started_at":"t","finished_at":null,"artifacts":{},"failures":[]}"#;
        std::fs::write(&path, manifest).unwrap();
        assert_eq!(prepare(&path, true, at()).unwrap(), None);
        assert_eq!(prepare(&path, false, at()).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), manifest);
    }

    #[test]
    fn an_unreadable_manifest_refuses_a_selective_run_and_is_kept_beside_by_a_full_one() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        std::fs::write(&path, "{ not json").unwrap();
        match prepare(&path, true, at()) {
            Err(ExistingManifestError::Unreadable { why, .. }) => {
                assert!(why.contains("key must be a string"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{ not json", "a refused run touches nothing");

        let first = prepare(&path, false, at()).unwrap().unwrap();
        assert_eq!(first.kept_as, directory.path().join("manifest.json.unreadable-20261207T123000Z"));
        assert_eq!(std::fs::read_to_string(&first.kept_as).unwrap(), "{ not json");
        assert!(!path.exists());
        // The same second again: a name of its own, nothing overwritten.
        std::fs::write(&path, "[]").unwrap();
        let second = prepare(&path, false, at()).unwrap().unwrap();
        assert_eq!(second.kept_as, directory.path().join("manifest.json.unreadable-20261207T123000Z-2"));
        assert_eq!(std::fs::read_to_string(&first.kept_as).unwrap(), "{ not json");
    }

    #[test]
    fn a_manifest_from_a_newer_fleetbake_is_unreadable() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("manifest.json");
        let newer = format!(
            r#"{{"version":{},"fleet":"f","run_id":"r","status":"complete","started_at":"t","finished_at":null,"artifacts":{{}},"failures":[]}}"#,
            super::super::MANIFEST_VERSION + 1
        );
        std::fs::write(&path, newer).unwrap();
        match prepare(&path, true, at()) {
            Err(ExistingManifestError::Unreadable { why, .. }) => assert!(why.contains("newer fleetbake"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
