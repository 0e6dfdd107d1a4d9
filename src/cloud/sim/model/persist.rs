//! `[sim] state`: the simulated account kept in a file between runs, so two simulated nights see what a real
//! account keeps between nights: the images with their tags, snapshots and attributes (encryption, IMDSv2,
//! deprecation, launch and create-volume permissions), the snapshots of deregistered images, SSM parameters
//! with their version history and labels, launch templates with their versions, the instances not terminated
//! with the key pairs and security groups left (a `--keep-failed` build's: running or stopped, with their tags
//! and the image they were launched from; on demand, whatever market they were bought on), and the id counter
//! (with a random salt mixed into each opening's ids, so a later run never makes an id an earlier one made, even
//! after a save was lost). A process that saves the account holds `<state>.lock` (flock) from opening it on
//! ([`lock`]): a second one is refused, naming the file. Not kept: KMS grants (a run revokes every one it
//! makes), ingress rules, sessions, client tokens, the buckets, faults and the seeded randomness (each run's own), and SSM puts not yet
//! validated when the account was saved (in the account's time: those validated by then are versions).
//!
//! Time: the account's clock continues. A run on a saved account starts at the later of the real wall time
//! and one second after the saved account's clock (which a simulated night advances by its virtual hours), so
//! the second night is always later than the first: creation dates, `[retention] keep_days`, deprecation
//! times and `fleetbake:keep-until` compare as they would between two real nights.
//!
//! The file: JSON, `"version": STATE_VERSION` first, written 0600 to a temporary file beside it and renamed
//! over it (a crash leaves the old account or the new one, never half of one). An unreadable file, or one of
//! another version, is an error naming it: the account is never silently started over.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::{spot, ssm, ImageAttributes, Model, SimGroup, SimImage, SimInstance, SimKeyPair};
use crate::cloud::{ImageId, InstanceId, InstanceState, KeyPairName, SecurityGroupId, SnapshotId};
use crate::config::{Account, Place, Region, SimSettings, Tags};
use crate::util::host_keys::ed25519_from_seed;

/// The version of the file's format this fleetbake reads and writes.
pub const STATE_VERSION: u32 = 1;

/// Why the simulated account could not be read or kept.
#[derive(Debug, thiserror::Error)]
pub enum SimStateError {
    #[error("cannot read the simulated account `{}` (`[sim] state`): {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{}` (`[sim] state`) is not a simulated account fleetbake can read: {reason}; move it away to start from an empty account", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("`{}` (`[sim] state`) holds a simulated account of format version {found}; this fleetbake reads version {STATE_VERSION}: use the fleetbake that wrote it, or move the file away to start from an empty account", path.display())]
    Incompatible { path: PathBuf, found: u64 },
    #[error("cannot write the simulated account `{}` (`[sim] state`): {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the simulated account `{}` (`[sim] state`) is in use by another fleetbake (a `matrix --cloud sim` or `gc --cloud sim` holds `{}`): wait for it to end", path.display(), lock.display())]
    Busy { path: PathBuf, lock: PathBuf },
}

/// The exclusive lock (flock) on `<state>.lock` a process that will save the account holds from opening it to
/// its end: two processes changing one account would each save theirs, the last one winning.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// Takes the lock of the account at `path`, its directory made first (0700) if missing; refused at once if
/// another process holds it.
pub fn lock(path: &Path) -> Result<StateLock, SimStateError> {
    let write = |source| SimStateError::Write { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(write)?;
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| SimStateError::Write { path: lock.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(StateLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(SimStateError::Busy { path: path.to_path_buf(), lock }),
        Err(std::fs::TryLockError::Error(source)) => Err(SimStateError::Write { path: lock, source }),
    }
}

/// The file's document.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedAccount {
    version: u32,
    /// The account's clock when it was saved.
    clock: DateTime<Utc>,
    /// The next id the model makes (ids are made from a counter: see `Model::id`).
    next_id: u64,
    places: Vec<SavedPlace>,
}

/// One region of one account.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedPlace {
    /// The owning account's id (the own account's is `SIMULATED_ACCOUNT`).
    account: String,
    region: Region,
    #[serde(default)]
    images: Vec<SavedImage>,
    /// Snapshots of deregistered images not yet deleted.
    #[serde(default)]
    orphan_snapshots: Vec<SnapshotId>,
    #[serde(default)]
    key_pairs: Vec<SavedKeyPair>,
    #[serde(default)]
    security_groups: Vec<SavedGroup>,
    #[serde(default)]
    instances: Vec<SavedInstance>,
    #[serde(default)]
    publishing: ssm::Publishing,
}

/// An instance not terminated when the account was kept.
#[derive(serde::Serialize, serde::Deserialize)]
struct SavedInstance {
    id: InstanceId,
    /// Stopped (or stopping) then; else running.
    stopped: bool,
    security_group: SecurityGroupId,
    public_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    volume_key: Option<String>,
    instance_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    launched_from: Option<ImageId>,
    #[serde(default)]
    tags: Tags,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedImage {
    id: ImageId,
    name: String,
    created: DateTime<Utc>,
    /// When it is (or was) available, or failed.
    settles: DateTime<Utc>,
    snapshot: SnapshotId,
    /// It ends `failed`, with this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fails: Option<String>,
    #[serde(default)]
    attributes: ImageAttributes,
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    tags: Tags,
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    snapshot_tags: Tags,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedKeyPair {
    name: KeyPairName,
    #[serde(default)]
    tags: Tags,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedGroup {
    id: SecurityGroupId,
    name: String,
    #[serde(default)]
    tags: Tags,
}

/// The account `settings` describe: with `[sim] state`, continued from its file (a missing file is an empty
/// account, whose clock starts at the real wall time); else a new one of this process.
pub fn open(settings: SimSettings) -> Result<Arc<Model>, SimStateError> {
    let Some(path) = settings.state.clone() else {
        return Ok(Model::new(settings));
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let model = Model::starting(settings, Some(Utc::now()));
            model.id_salt.store(fastrand::u64(..), Ordering::Relaxed);
            return Ok(model);
        }
        Err(source) => return Err(SimStateError::Read { path, source }),
    };
    let saved = read(&path, &text)?;
    // The later of the real time and the saved clock: a night never starts before the last one ended.
    let clock = Utc::now().max(saved.clock + chrono::TimeDelta::seconds(1));
    let model = Model::starting(settings, Some(clock));
    model.next_id.store(saved.next_id, Ordering::Relaxed);
    model.id_salt.store(fastrand::u64(..), Ordering::Relaxed);
    for place in saved.places {
        restore(&model, place, clock);
    }
    Ok(model)
}

/// The document, its version checked before anything else is read.
fn read(path: &Path, text: &str) -> Result<SavedAccount, SimStateError> {
    let unreadable = |reason: String| SimStateError::Unreadable { path: path.to_path_buf(), reason };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|error| unreadable(error.to_string()))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(found) if found == u64::from(STATE_VERSION) => {}
        Some(found) => return Err(SimStateError::Incompatible { path: path.to_path_buf(), found }),
        None => return Err(unreadable("it has no `version`".into())),
    }
    serde_json::from_value(value).map_err(|error| unreadable(error.to_string()))
}

/// Puts a saved place back into the model, every resource settled (made by an earlier process, it is known to
/// every call) and an image still pending then pending for what was left of it.
fn restore(model: &Arc<Model>, saved: SavedPlace, clock: DateTime<Utc>) {
    let account = match saved.account.as_str() {
        super::super::SIMULATED_ACCOUNT => Account::Own,
        other => Account::Id(other.to_string()),
    };
    let region = model.place(&Place { account, region: saved.region });
    let mut state = region.state.lock().expect("not poisoned");
    let now = Instant::now();
    // Made before this process (before the model started): past the consistency lag already.
    let long_ago = now.checked_sub(state.lag + std::time::Duration::from_secs(1)).unwrap_or(now);
    for image in saved.images {
        let left = (image.settles - clock).to_std().unwrap_or_default();
        super::SimRegion::merge_tags(&mut state, image.id.as_str(), &image.tags);
        super::SimRegion::merge_tags(&mut state, image.snapshot.as_str(), &image.snapshot_tags);
        let restored = SimImage {
            name: image.name,
            created_at: long_ago,
            restored_creation: Some(image.created),
            available_at: now + left,
            snapshot: image.snapshot,
            copied: false,
            fails: image.fails,
            attributes: image.attributes,
        };
        state.insert_image(image.id, restored);
    }
    for snapshot in saved.orphan_snapshots {
        state.orphan_snapshots.insert(snapshot, long_ago);
    }
    for key_pair in saved.key_pairs {
        state.key_pairs.insert(key_pair.name, SimKeyPair { tags: key_pair.tags, created_at: long_ago });
    }
    for group in saved.security_groups {
        super::SimRegion::merge_tags(&mut state, group.id.as_str(), &group.tags);
        state.security_groups.insert(group.id, SimGroup { name: group.name, created_at: long_ago });
    }
    for instance in saved.instances {
        super::SimRegion::merge_tags(&mut state, instance.id.as_str(), &instance.tags);
        if let Some(image) = instance.launched_from {
            state.launched_from.record(instance.id.clone(), image);
        }
        let restored = SimInstance {
            launched_at: long_ago,
            running_at: long_ago,
            ssh_at: long_ago,
            stopped_at: instance.stopped.then_some(long_ago),
            terminated_at: None,
            launch_failure: None,
            console_keys_at: long_ago,
            // As RunInstances made it: the same key answers there as before.
            host_key: ed25519_from_seed(&format!("{} {}", model.settings.seed, instance.id)),
            console_fault: None,
            agent_at: Some(long_ago),
            security_group: instance.security_group,
            public_ip: instance.public_ip,
            volume_key: instance.volume_key,
            market: spot::SimMarket::OnDemand,
            instance_type: instance.instance_type,
        };
        state.instances.insert(instance.id, restored);
    }
    state.publishing = saved.publishing;
}

/// Writes the account to its `[sim] state` file (nothing without one): atomically, 0600.
pub fn save(model: &Model) -> Result<(), SimStateError> {
    let Some(path) = &model.settings.state else {
        return Ok(());
    };
    let clock = model.wall.now();
    let wall = |at: Instant| {
        model.epoch + chrono::Duration::from_std(at.saturating_duration_since(model.started)).unwrap_or_default()
    };
    let mut places = Vec::new();
    for (place, region) in model.places() {
        let mut state = region.state.lock().expect("not poisoned");
        // A put whose validation has come by now is a version (reading the history settles it).
        let names: Vec<String> = state.publishing.parameters.keys().cloned().collect();
        for name in names {
            state.publishing.history(&name, Instant::now());
        }
        let tags = |resource: &str| state.tags_of(resource).cloned().unwrap_or_default();
        let mut images: Vec<SavedImage> = state
            .images
            .iter()
            .map(|(id, image)| SavedImage {
                id: id.clone(),
                name: image.name.clone(),
                created: image.restored_creation.unwrap_or_else(|| wall(image.created_at)),
                settles: wall(image.available_at),
                snapshot: image.snapshot.clone(),
                fails: image.fails.clone(),
                attributes: image.attributes.clone(),
                tags: tags(id.as_str()),
                snapshot_tags: tags(image.snapshot.as_str()),
            })
            .collect();
        images.sort_by(|a, b| a.id.cmp(&b.id));
        let mut orphan_snapshots: Vec<SnapshotId> = state.orphan_snapshots.keys().cloned().collect();
        orphan_snapshots.sort();
        let key_pairs = state
            .key_pairs
            .iter()
            .map(|(name, pair)| SavedKeyPair { name: name.clone(), tags: pair.tags.clone() })
            .collect();
        let security_groups = state
            .security_groups
            .iter()
            .map(|(id, group)| SavedGroup { id: id.clone(), name: group.name.clone(), tags: tags(id.as_str()) })
            .collect();
        let now = Instant::now();
        let instances = state
            .instances
            .iter()
            .filter_map(|(id, instance)| {
                let stopped = match instance.state(now) {
                    InstanceState::Terminated | InstanceState::ShuttingDown => return None,
                    InstanceState::Stopped | InstanceState::Stopping => true,
                    _ => false,
                };
                Some(SavedInstance {
                    id: id.clone(),
                    stopped,
                    security_group: instance.security_group.clone(),
                    public_ip: instance.public_ip.clone(),
                    volume_key: instance.volume_key.clone(),
                    instance_type: instance.instance_type.clone(),
                    launched_from: state.launched_from.image_of(id).cloned(),
                    tags: tags(id.as_str()),
                })
            })
            .collect();
        let account = match &place.account {
            Account::Own => super::super::SIMULATED_ACCOUNT.to_string(),
            Account::Id(id) => id.clone(),
        };
        places.push(SavedPlace {
            account,
            region: place.region.clone(),
            images,
            orphan_snapshots,
            key_pairs,
            security_groups,
            instances,
            publishing: state.publishing.clone(),
        });
    }
    let saved = SavedAccount { version: STATE_VERSION, clock, next_id: model.next_id.load(Ordering::Relaxed), places };
    write(path, &saved).map_err(|source| SimStateError::Write { path: path.clone(), source })
}

/// One write to a 0600 temporary file beside `path`, synced, renamed over it.
fn write(path: &Path, saved: &SavedAccount) -> std::io::Result<()> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // tempfile makes the file 0600.
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    let mut writer = std::io::BufWriter::new(file.as_file_mut());
    serde_json::to_writer_pretty(&mut writer, saved)?;
    std::io::Write::flush(&mut writer)?;
    drop(writer);
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cloud::ImageState;
    use crate::config::FlavorName;

    fn image(model: &Model, region: &Region, id: &ImageId) -> (ImageState, String, Option<Tags>) {
        let region = model.region(region);
        let state = region.state.lock().expect("not poisoned");
        let found = &state.images[id];
        (
            found.state(Instant::now()),
            super::super::creation_date(model.epoch, model.started, found),
            state.tags_of(id.as_str()).cloned(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_account_opens_with_its_images_tags_history_and_ids_on_a_later_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let settings = SimSettings { state: Some(path.clone()), ..SimSettings::default() };
        let region = Region::new("us-west-2");
        let model = open(settings.clone()).unwrap();
        let id = ImageId::new(model.id("ami"));
        let tags = Tags::from([("fleetbake:flavor".to_string(), FlavorName::new("web").to_string())]);
        {
            let place = model.region(&region);
            let mut state = place.state.lock().unwrap();
            super::super::SimRegion::merge_tags(&mut state, id.as_str(), &tags);
            let now = Instant::now();
            let snapshot = SnapshotId::new(model.id("snap"));
            let made = SimImage {
                name: "web".into(),
                created_at: now,
                restored_creation: None,
                available_at: now + Duration::from_secs(420),
                snapshot,
                copied: false,
                fails: None,
                attributes: ImageAttributes { imds_v2: true, ..ImageAttributes::default() },
            };
            state.images.insert(id.clone(), made);
            assert!(state.publishing.put("/images/web", &id, true, now).is_ok());
        }
        // A night of virtual hours: the account's clock runs ahead of the real one.
        tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
        let (_, created, _) = image(&model, &region, &id);
        let ended = model.wall.now();
        save(&model).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        let again = open(settings).unwrap();
        assert!(again.wall.now() > ended, "the next run starts after the last one's end");
        assert_eq!(image(&again, &region, &id), (ImageState::Available, created, Some(tags)));
        let place = again.region(&region);
        let history = place.state.lock().unwrap().publishing.history("/images/web", Instant::now()).unwrap();
        assert_eq!(history.versions.iter().map(|version| version.value.as_str()).collect::<Vec<_>>(), [id.as_str()]);
        assert!(again.region(&region).state.lock().unwrap().images[&id].attributes.imds_v2);
        let next = again.id("ami");
        assert!(next != id.as_str() && !next.is_empty(), "ids continue: {next}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_of_another_version_or_not_an_account_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let settings = SimSettings { state: Some(path.clone()), ..SimSettings::default() };
        std::fs::write(&path, r#"{"version": 2}"#).unwrap();
        let newer = open(settings.clone()).err().unwrap();
        assert!(matches!(newer, SimStateError::Incompatible { found: 2, .. }), "{newer}");
        assert!(newer.to_string().contains(&path.display().to_string()), "{newer}");
        std::fs::write(&path, "[]").unwrap();
        assert!(matches!(open(settings).err().unwrap(), SimStateError::Unreadable { .. }));
    }
}
