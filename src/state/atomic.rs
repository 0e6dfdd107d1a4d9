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

/// Replaces `path` with what `write` writes, atomically as [`replace`] does, through a buffer (the bytes need
/// not be in memory at once); how many bytes it wrote.
pub fn replace_streamed(
    path: &Path,
    write: impl FnOnce(&mut Counted<std::io::BufWriter<&mut std::fs::File>>) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let directory = path.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory)?;
    let prefix = format!(".{}", path.file_name().map(|name| name.to_string_lossy()).unwrap_or_default());
    let mut file = tempfile::Builder::new().prefix(&prefix).suffix(".tmp").tempfile_in(directory)?;
    let mut out = Counted { inner: std::io::BufWriter::with_capacity(STREAM_BUFFER, file.as_file_mut()), bytes: 0 };
    write(&mut out)?;
    out.inner.flush()?;
    let bytes = out.bytes;
    drop(out);
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    Ok(bytes)
}

/// The buffer [`replace_streamed`] writes through.
const STREAM_BUFFER: usize = 256 * 1024;

/// A writer that counts what goes through it.
pub struct Counted<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
