//! The file that holds Raft's durable state, `raft.redb` in
//! `cluster.data_dir`: an ACID single-file store ([redb]) whose commits are
//! fsynced before they return, so no vote is granted and no append
//! acknowledged that a crash could undo.
//!
//! Two tables: `log` (entry index → entry) and `meta` (vote, committed and
//! purged log ids, the last snapshot's meta and data, and the data dir's
//! `format_version`). Values are JSON; the snapshot data is an opaque blob
//! to this module.
//!
//! redb locks the file while it is open, so a second litegate pointed at
//! the same data dir is refused at start.
//!
//! Format versions: 1 was three JSON files (`raft-log.json`,
//! `raft-snapshot.json`, `identity.json`); 2 is this file plus
//! `identity.json`. A version-1 dir is migrated once, in one transaction,
//! at the first start of a version-2 litegate; the old files are then
//! renamed to `*.v1` (kept for a manual rollback, never read again).

use std::io;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const DB_FILE: &str = "raft.redb";

/// The data dir format this litegate writes; it reads this and every older
/// one.
pub const FORMAT_VERSION: u64 = 2;

pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

pub const FORMAT_KEY: &str = "format_version";
pub const VOTE_KEY: &str = "vote";
pub const COMMITTED_KEY: &str = "committed";
pub const PURGED_KEY: &str = "last_purged";
pub const SNAPSHOT_META_KEY: &str = "snapshot_meta";
pub const SNAPSHOT_DATA_KEY: &str = "snapshot_data";

/// The page cache redb may use. The log is small (snapshots purge it), so
/// redb's 1 GiB default would only be memory held for nothing.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// The open store. Calls block on disk I/O: async callers run them on the
/// blocking pool.
#[derive(Debug)]
pub struct RaftDb {
    db: Database,
    path: PathBuf,
}

/// A version-1 data dir's contents, handed to [`RaftDb::open`] by whoever
/// read the old files.
#[derive(Debug, Default)]
pub struct Legacy {
    pub meta: Vec<(&'static str, Vec<u8>)>,
    pub entries: Vec<(u64, Vec<u8>)>,
    /// The files to rename once the migration is committed.
    pub files: Vec<PathBuf>,
}

impl RaftDb {
    /// Opens (or creates) `raft.redb` in `data_dir`. `legacy` is called only
    /// when the file does not exist yet, to migrate a version-1 dir.
    pub fn open(
        data_dir: &Path,
        legacy: impl FnOnce() -> Result<Legacy, String>,
    ) -> Result<Self, String> {
        let path = data_dir.join(DB_FILE);
        let existed = path.exists();
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            // Readable by redb 3 too, so a later upgrade of the crate needs
            // no migration of ours.
            .create_with_file_format_v3(true)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => format!(
                    "cluster.data_dir {} is in use by another litegate process ({DB_FILE} is locked): each node needs its own data dir, and one process per dir",
                    data_dir.display()
                ),
                other => format!(
                    "cannot open {}: {other}; restore cluster.data_dir from a backup, or empty it and replace this node (`litegate member replace`)",
                    path.display()
                ),
            })?;
        let store = Self { db, path };
        if existed {
            store.check_format()?;
            return Ok(store);
        }
        let old = legacy()?;
        store
            .write(|txn| {
                let mut meta = txn.open_table(META).map_err(io)?;
                let mut log = txn.open_table(LOG).map_err(io)?;
                for (key, value) in &old.meta {
                    meta.insert(*key, value.as_slice()).map_err(io)?;
                }
                for (index, entry) in &old.entries {
                    log.insert(*index, entry.as_slice()).map_err(io)?;
                }
                let version = encode(&FORMAT_VERSION)?;
                meta.insert(FORMAT_KEY, version.as_slice()).map_err(io)?;
                Ok(())
            })
            .map_err(|e| format!("cannot initialize {}: {e}", store.path.display()))?;
        for file in &old.files {
            let mut kept = file.clone().into_os_string();
            kept.push(".v1");
            std::fs::rename(file, &kept).map_err(|e| {
                format!(
                    "migrated {} into {DB_FILE} but cannot rename it out of the way: {e}",
                    file.display()
                )
            })?;
        }
        if !old.files.is_empty() {
            tracing::info!(
                dir = %data_dir.display(),
                "migrated the Raft state from format 1 (JSON files, kept as *.v1) to format {FORMAT_VERSION} ({DB_FILE})"
            );
        }
        Ok(store)
    }

    fn check_format(&self) -> Result<(), String> {
        let version: Option<u64> = self
            .get(FORMAT_KEY)
            .map_err(|e| format!("cannot read {}: {e}", self.path.display()))?;
        match version {
            Some(v) if v <= FORMAT_VERSION => Ok(()),
            Some(v) => Err(format!(
                "{} has data dir format {v}, newer than this litegate reads ({FORMAT_VERSION}): run the newer litegate, or restore the data dir from before the upgrade",
                self.path.display()
            )),
            None => Err(format!(
                "{} has no format_version: it was not written whole by litegate; restore cluster.data_dir from a backup",
                self.path.display()
            )),
        }
    }

    /// One value of the `meta` table.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(io::Error::other)?;
        let table = txn.open_table(META).map_err(io::Error::other)?;
        let Some(bytes) = table.get(key).map_err(io::Error::other)? else {
            return Ok(None);
        };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{key}: {e}")))
    }

    /// Raw bytes of one value of the `meta` table.
    pub fn get_bytes(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(io::Error::other)?;
        let table = txn.open_table(META).map_err(io::Error::other)?;
        let value = table.get(key).map_err(io::Error::other)?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Log entries in `range`, as stored.
    pub fn entries(
        &self,
        range: impl std::ops::RangeBounds<u64>,
    ) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let txn = self.db.begin_read().map_err(io::Error::other)?;
        let table = txn.open_table(LOG).map_err(io::Error::other)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(io::Error::other)? {
            let (k, v) = item.map_err(io::Error::other)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The last log entry, as stored.
    pub fn last_entry(&self) -> io::Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read().map_err(io::Error::other)?;
        let table = txn.open_table(LOG).map_err(io::Error::other)?;
        let last = table.last().map_err(io::Error::other)?;
        Ok(last.map(|(_, v)| v.value().to_vec()))
    }

    /// Runs `change` in one write transaction and commits it durably: all
    /// of it is on disk when this returns `Ok`, none of it on `Err`.
    pub fn write(
        &self,
        change: impl FnOnce(&WriteTransaction) -> io::Result<()>,
    ) -> io::Result<()> {
        let txn = self.db.begin_write().map_err(io::Error::other)?;
        change(&txn)?;
        txn.commit().map_err(io::Error::other)
    }
}

/// Serializes `value` for the `meta` table.
pub fn encode(value: &impl Serialize) -> io::Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(io::Error::other)
}

/// Maps redb's table errors into `io::Error` inside [`RaftDb::write`].
pub fn io(e: impl Into<redb::Error>) -> io::Error {
    io::Error::other(e.into())
}
