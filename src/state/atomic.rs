//! Replacing a file so readers see the old or the new one, never a torn one: the bytes written to a temporary
//! file beside it in one call, synced, then renamed over it.

use std::io::Write;
use std::path::Path;

/// Replaces `path` with `bytes`, atomically (temp file in the same folder, one write call, `sync_all`, rename).
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let prefix = format!(".{}", path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default());
    let mut file = tempfile::Builder::new().prefix(&prefix).suffix(".tmp").tempfile_in(directory)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(())
}
