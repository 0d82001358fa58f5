//! Files that must survive a crash whole: written to a temporary file,
//! fsynced, renamed over the old one, and the directory fsynced — so after
//! a crash the file is either the old or the new content, never a mix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// [`replace_file`] on the blocking pool, for callers on the async runtime.
pub async fn replace_file_off_thread(path: Arc<PathBuf>, bytes: Vec<u8>) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || replace_file(&path, &bytes))
        .await
        .map_err(std::io::Error::other)?
}

/// A JSON file written by [`replace_file`]: `None` if it does not exist
/// yet. A file that does not parse is an error that ends with `damaged_fix`,
/// what the operator should do about it.
pub fn read_json<T: DeserializeOwned>(path: &Path, damaged_fix: &str) -> Result<Option<T>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{} is damaged ({e}); {damaged_fix}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Creates `cluster.data_dir` if it is missing.
pub fn ensure_data_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "config key `cluster.data_dir`: cannot create {}: {e}",
            dir.display()
        )
    })
}
