//! Raft's durable state in `cluster.data_dir`:
//!
//! - `identity.json` — which node (and which cluster) this directory
//!   belongs to, checked against the config at every start;
//! - `raft.redb` ([`super::db`]) — vote, log entries, committed and purged
//!   log ids, and the state machine's last snapshot.
//!
//! Every change is committed durably before the call that made it returns,
//! so no vote is granted and no append acknowledged that a crash could
//! undo. Any storage error goes back to openraft, which stops the Raft core;
//! [`super::exit_on_fatal`] then ends the process.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::type_config::alias::{
    EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf,
};
use openraft::{LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder};
use redb::ReadableTable;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::db::{self, Legacy, RaftDb};
use super::incarnation::Incarnations;
use super::TypeConfig;
use crate::durable;

const IDENTITY_FILE: &str = "identity.json";
/// Format 1's files, migrated into [`db::DB_FILE`] at the first start.
const LEGACY_LOG_FILE: &str = "raft-log.json";
const LEGACY_SNAPSHOT_FILE: &str = "raft-snapshot.json";

/// What to do about a damaged file in the data dir.
const RESTORE: &str = "restore cluster.data_dir from a backup";

/// Which node and cluster a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: u64,
    /// Set when the cluster is bootstrapped, learned by the other nodes
    /// from the first Raft message they receive; `None` until then.
    pub cluster_id: Option<String>,
    /// Drawn when the directory is created ([`super::incarnation`]): a
    /// node that lost its data dir comes back with another one. Absent in
    /// dirs written before it existed; drawn at their next start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
}

/// The identity of this node's data directory, shared by the storage and
/// the RPC endpoints that check and learn the cluster id.
#[derive(Debug)]
pub struct IdentityFile {
    path: PathBuf,
    current: Mutex<Identity>,
}

impl IdentityFile {
    /// Opens (or creates) the identity of `data_dir` for `node_id`. A
    /// directory written by another node stops the start.
    pub fn open(data_dir: &Path, node_id: u64, db: &RaftDb) -> Result<Self, String> {
        durable::ensure_data_dir(data_dir)?;
        let path = data_dir.join(IDENTITY_FILE);
        let identity = match durable::read_json::<Identity>(&path, RESTORE)? {
            Some(identity) => identity,
            None => {
                if has_raft_state(db)? {
                    return Err(format!(
                        "{} holds a Raft log but no {IDENTITY_FILE}: it was not written by this litegate; point cluster.data_dir at this node's own directory",
                        data_dir.display()
                    ));
                }
                let fresh = Identity {
                    node_id,
                    cluster_id: None,
                    incarnation: Some(super::incarnation::draw()?),
                };
                write_json(&path, &fresh)?;
                fresh
            }
        };
        if identity.node_id != node_id {
            return Err(format!(
                "cluster.data_dir {} belongs to node {} (cluster {}), but node.id = {node_id}: point cluster.data_dir at this node's own directory, or empty it to join as a new node",
                data_dir.display(),
                identity.node_id,
                identity.cluster_id.as_deref().unwrap_or("not yet joined"),
            ));
        }
        let identity = match identity.incarnation {
            Some(_) => identity,
            None => {
                // A dir from before incarnations: its peers know none for
                // it yet, so the one drawn now is the first they see.
                let upgraded = Identity {
                    incarnation: Some(super::incarnation::draw()?),
                    ..identity
                };
                write_json(&path, &upgraded)?;
                upgraded
            }
        };
        Ok(Self {
            path,
            current: Mutex::new(identity),
        })
    }

    pub fn cluster_id(&self) -> Option<String> {
        lock(&self.current).cluster_id.clone()
    }

    /// This data dir's incarnation (always set once opened).
    pub fn incarnation(&self) -> String {
        lock(&self.current).incarnation.clone().unwrap_or_default()
    }

    /// Bootstrap: this node founds (or co-founds) the cluster whose id
    /// every founding node derives alike ([`super::bootstrap`]).
    pub fn join_initial_cluster(&self, derived: &str) -> Result<String, String> {
        let mut identity = lock(&self.current);
        match &identity.cluster_id {
            Some(id) if id == derived => return Ok(id.clone()),
            Some(id) => {
                return Err(format!(
                    "--bootstrap: this data dir already belongs to cluster {id}, but cluster.peers and cluster.initial_token give {derived}: drop --bootstrap to rejoin cluster {id}, or empty cluster.data_dir to found the new one"
                ))
            }
            None => {}
        }
        let next = Identity {
            cluster_id: Some(derived.to_owned()),
            ..identity.clone()
        };
        write_json(&self.path, &next)?;
        *identity = next;
        Ok(derived.to_owned())
    }

    /// A Raft message from `sender_cluster` arrived. A node that has not
    /// joined a cluster yet joins this one; a node of another cluster
    /// refuses it.
    pub fn admit(&self, sender_cluster: Option<&str>) -> Result<(), String> {
        let mut identity = lock(&self.current);
        match (&identity.cluster_id, sender_cluster) {
            (Some(mine), Some(theirs)) if mine == theirs => Ok(()),
            (Some(mine), theirs) => Err(format!(
                "this node belongs to cluster {mine}, the sender to {}",
                theirs.unwrap_or("none")
            )),
            (None, None) => Ok(()),
            (None, Some(theirs)) => {
                let next = Identity {
                    cluster_id: Some(theirs.to_owned()),
                    ..identity.clone()
                };
                write_json(&self.path, &next)?;
                tracing::info!(cluster = theirs, "joined the cluster");
                *identity = next;
                Ok(())
            }
        }
    }
}

/// The format-1 log file, read once to migrate it.
#[derive(Debug, Default, Deserialize)]
struct LegacyLogFile {
    vote: Option<VoteOf<TypeConfig>>,
    committed: Option<LogIdOf<TypeConfig>>,
    last_purged: Option<LogIdOf<TypeConfig>>,
    entries: BTreeMap<u64, EntryOf<TypeConfig>>,
}

/// Opens `raft.redb`, migrating a format-1 data dir (JSON files) into it
/// the first time.
pub fn open_db(data_dir: &Path) -> Result<Arc<RaftDb>, String> {
    durable::ensure_data_dir(data_dir)?;
    RaftDb::open(data_dir, || read_legacy(data_dir)).map(Arc::new)
}

fn read_legacy(data_dir: &Path) -> Result<Legacy, String> {
    let damaged = "restore cluster.data_dir from a backup";
    let log_path = data_dir.join(LEGACY_LOG_FILE);
    let snapshot_path = data_dir.join(LEGACY_SNAPSHOT_FILE);
    let mut legacy = Legacy::default();
    if let Some(log) = durable::read_json::<LegacyLogFile>(&log_path, damaged)? {
        if let Some(vote) = log.vote {
            legacy.meta.push((db::VOTE_KEY, encode(&vote)?));
        }
        if let Some(committed) = log.committed {
            legacy.meta.push((db::COMMITTED_KEY, encode(&committed)?));
        }
        if let Some(purged) = log.last_purged {
            legacy.meta.push((db::PURGED_KEY, encode(&purged)?));
        }
        for (index, entry) in log.entries {
            legacy.entries.push((index, encode(&entry)?));
        }
        legacy.files.push(log_path);
    }
    if let Some(meta) = durable::read_json::<SnapshotMetaOf<TypeConfig>>(&snapshot_path, damaged)? {
        legacy.meta.push((db::SNAPSHOT_META_KEY, encode(&meta)?));
        // Format 1 kept no state machine data (membership is in the meta);
        // empty data is an empty lease state.
        legacy.meta.push((db::SNAPSHOT_DATA_KEY, Vec::new()));
        legacy.files.push(snapshot_path);
    }
    Ok(legacy)
}

fn encode(value: &impl Serialize) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| format!("cannot migrate the Raft state: {e}"))
}

/// Why an append was refused: openraft hands the log store only entries
/// that follow the last one, so anything else is a bug or a malformed
/// message, and storing it would leave a log the node cannot start from.
fn check_follows(prev: Option<LogIdOf<TypeConfig>>, next: &LogIdOf<TypeConfig>) -> io::Result<()> {
    let expected = prev.map_or(0, |p| p.index + 1);
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refused to append log entry {next}: {why}"),
        ))
    };
    if next.index != expected {
        return refuse(format!(
            "the log ends at {}, so the next entry must have index {expected}",
            prev.map_or("nothing".to_owned(), |p| p.to_string())
        ));
    }
    if let Some(prev) = prev {
        if next.leader_id < prev.leader_id {
            return refuse(format!("its term is older than that of {prev}"));
        }
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> io::Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("stored {what}: {e}")))
}

/// Runs a blocking store call off the async runtime.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(io::Error::other)?
}

/// The Raft log and vote. Clones share one store; the reader handed to
/// openraft is such a clone.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<RaftDb>,
}

impl LogStore {
    pub fn new(db: Arc<RaftDb>) -> Self {
        Self { db }
    }

    async fn put_meta(&self, key: &'static str, value: Vec<u8>) -> io::Result<()> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            db.write(|txn| {
                let mut meta = txn.open_table(db::META).map_err(db::io)?;
                meta.insert(key, value.as_slice()).map_err(db::io)?;
                Ok(())
            })
        })
        .await
    }

    async fn get_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> io::Result<Option<T>> {
        let db = Arc::clone(&self.db);
        blocking(move || db.get(key)).await
    }

    /// The last stored entry's id, or the purged id if none is left.
    fn last_log_id(
        log: &impl ReadableTable<u64, &'static [u8]>,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
    ) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        if let Some((_, bytes)) = log.last().map_err(db::io)? {
            let entry: EntryOf<TypeConfig> = decode("log entry", bytes.value())?;
            return Ok(Some(entry.log_id()));
        }
        match meta.get(db::PURGED_KEY).map_err(db::io)? {
            Some(bytes) => decode("purged log id", bytes.value()).map(Some),
            None => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        let db = Arc::clone(&self.db);
        let stored = blocking(move || db.entries(bounds)).await?;
        stored
            .iter()
            .map(|(_, bytes)| decode("log entry", bytes))
            .collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.get_meta(db::VOTE_KEY).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let purged: Option<LogIdOf<TypeConfig>> = db.get(db::PURGED_KEY)?;
            let last = match db.last_entry()? {
                Some(bytes) => Some(decode::<EntryOf<TypeConfig>>("log entry", &bytes)?.log_id()),
                None => purged,
            };
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.put_meta(db::VOTE_KEY, db::encode(vote)?).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        self.put_meta(db::COMMITTED_KEY, db::encode(&committed)?)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self
            .get_meta::<Option<LogIdOf<TypeConfig>>>(db::COMMITTED_KEY)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let db = Arc::clone(&self.db);
        let result = blocking(move || {
            // The check and the insert in one transaction: what is checked
            // is what is appended to.
            db.write(|txn| {
                let mut log = txn.open_table(db::LOG).map_err(db::io)?;
                let meta = txn.open_table(db::META).map_err(db::io)?;
                let mut prev = Self::last_log_id(&log, &meta)?;
                for entry in &entries {
                    let id = entry.log_id();
                    check_follows(prev, &id)?;
                    log.insert(id.index, db::encode(entry)?.as_slice())
                        .map_err(db::io)?;
                    prev = Some(id);
                }
                Ok(())
            })
        })
        .await;
        let reply = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.io_completed(reply);
        result
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |id| id.index + 1);
        let db = Arc::clone(&self.db);
        blocking(move || {
            db.write(|txn| {
                let mut log = txn.open_table(db::LOG).map_err(db::io)?;
                log.retain_in(first_removed.., |_, _| false)
                    .map_err(db::io)?;
                Ok(())
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            db.write(|txn| {
                let mut log = txn.open_table(db::LOG).map_err(db::io)?;
                let mut meta = txn.open_table(db::META).map_err(db::io)?;
                log.retain_in(..=log_id.index, |_, _| false)
                    .map_err(db::io)?;
                meta.insert(db::PURGED_KEY, db::encode(&log_id)?.as_slice())
                    .map_err(db::io)?;
                Ok(())
            })
        })
        .await
    }
}

/// What the log has applied, plus the last snapshot of it.
#[derive(Debug, Clone, Default)]
struct Applied {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
}

#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Arc<RaftDb>,
    applied: Arc<Mutex<Applied>>,
    lease: Arc<crate::lease::LeaseMachine>,
    /// Forgets the incarnation of every id a membership change removes.
    incarnations: Arc<Incarnations>,
}

impl StateMachine {
    /// Starts from the last snapshot; openraft re-applies the committed
    /// log after it. The state machine's own data is the lease's (sessions and KV); the
    /// store keeps it as the snapshot's opaque blob.
    pub fn open(db: Arc<RaftDb>, incarnations: Arc<Incarnations>) -> Result<Self, String> {
        let snapshot = read_snapshot(&db).map_err(|e| {
            format!("cannot read the Raft snapshot: {e}; restore cluster.data_dir from a backup")
        })?;
        let lease = crate::lease::LeaseMachine::new();
        let applied = snapshot
            .map(|(meta, data)| -> Result<Applied, String> {
                lease.restore(&data).map_err(|e| {
                    format!("the Raft snapshot's lease state is damaged ({e}); restore cluster.data_dir from a backup")
                })?;
                Ok(Applied {
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership,
                })
            })
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            db,
            applied: Arc::new(Mutex::new(applied)),
            lease,
            incarnations,
        })
    }

    /// The lease state this state machine applies to.
    pub fn lease(&self) -> Arc<crate::lease::LeaseMachine> {
        Arc::clone(&self.lease)
    }

    /// Stores a snapshot (meta and data in one transaction).
    async fn save_snapshot(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        data: Vec<u8>,
    ) -> io::Result<()> {
        let meta = db::encode(meta)?;
        let db = Arc::clone(&self.db);
        blocking(move || {
            db.write(|txn| {
                let mut table = txn.open_table(db::META).map_err(db::io)?;
                table
                    .insert(db::SNAPSHOT_META_KEY, meta.as_slice())
                    .map_err(db::io)?;
                table
                    .insert(db::SNAPSHOT_DATA_KEY, data.as_slice())
                    .map_err(db::io)?;
                Ok(())
            })
        })
        .await
    }
}

impl StateMachine {
    async fn forget(&self, removed: Vec<u64>) -> io::Result<()> {
        if removed.is_empty() {
            return Ok(());
        }
        let incarnations = Arc::clone(&self.incarnations);
        blocking(move || incarnations.forget(&removed)).await
    }
}

/// The ids (voters and learners) in `before` but not in `after`.
fn removed_ids(
    before: &StoredMembershipOf<TypeConfig>,
    after: &StoredMembershipOf<TypeConfig>,
) -> Vec<u64> {
    let kept: std::collections::BTreeSet<u64> = after.nodes().map(|(id, _)| *id).collect();
    before
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| !kept.contains(id))
        .collect()
}

/// The stored snapshot, meta and data.
fn read_snapshot(db: &RaftDb) -> io::Result<Option<(SnapshotMetaOf<TypeConfig>, Vec<u8>)>> {
    let Some(meta) = db.get::<SnapshotMetaOf<TypeConfig>>(db::SNAPSHOT_META_KEY)? else {
        return Ok(None);
    };
    let data = db.get_bytes(db::SNAPSHOT_DATA_KEY)?.unwrap_or_default();
    Ok(Some((meta, data)))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        // The lease state is taken under the same lock as the applied log
        // id, so the blob is exactly the state at that id.
        let (applied, data) = {
            let applied = lock(&self.applied);
            (applied.clone(), self.lease.snapshot()?)
        };
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
        };
        self.save_snapshot(&meta, data.clone()).await?;
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let applied = lock(&self.applied);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let mut removed = Vec::new();
            let result = {
                let mut applied = lock(&self.applied);
                applied.last_applied = Some(entry.log_id());
                if let Some(membership) = entry.get_membership() {
                    let next =
                        StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id()), membership);
                    removed = removed_ids(&applied.membership, &next);
                    applied.membership = next;
                }
                match &entry.payload {
                    openraft::EntryPayload::Normal(super::Command::Lease(command)) => {
                        self.lease.apply(command.clone(), entry.index())
                    }
                    _ => true,
                }
            };
            self.forget(removed).await?;
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        // Read before it is stored: a snapshot this node cannot read must
        // not replace the one it has.
        self.lease.restore(&snapshot)?;
        self.save_snapshot(meta, snapshot).await?;
        let removed = {
            let mut applied = lock(&self.applied);
            let removed = removed_ids(&applied.membership, &meta.last_membership);
            *applied = Applied {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            removed
        };
        self.forget(removed).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let db = Arc::clone(&self.db);
        Ok(blocking(move || read_snapshot(&db))
            .await?
            .map(|(meta, data)| SnapshotOf::<TypeConfig, Vec<u8>> {
                meta,
                snapshot: data,
            }))
    }
}

/// Whether the store holds any Raft state (created a moment ago by
/// [`open_db`] for a brand-new dir, it holds none).
fn has_raft_state(db: &RaftDb) -> Result<bool, String> {
    let read = || -> io::Result<bool> {
        Ok(db.get_bytes(db::VOTE_KEY)?.is_some()
            || db.last_entry()?.is_some()
            || db.get_bytes(db::SNAPSHOT_META_KEY)?.is_some())
    };
    read().map_err(|e| format!("cannot read {}: {e}", db::DB_FILE))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    durable::replace_file(path, &bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A poisoned lock only means another task panicked mid-update of plain
/// data; the data is still the last whole value.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use openraft::vote::RaftLeaderIdExt;

    use super::*;

    type LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>;

    fn entry(term: u64, index: u64) -> EntryOf<TypeConfig> {
        EntryOf::<TypeConfig>::new_blank(LogIdOf::<TypeConfig>::new(
            LeaderId::new_committed(term, 1),
            index,
        ))
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("litegate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn machine_of(db: &Arc<RaftDb>) -> StateMachine {
        let incarnations = Incarnations::open("mine".into(), Arc::clone(db)).unwrap();
        StateMachine::open(Arc::clone(db), Arc::new(incarnations)).unwrap()
    }

    fn membership_of(ids: &[u64]) -> StoredMembershipOf<TypeConfig> {
        let voters: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
        StoredMembershipOf::<TypeConfig>::new(
            Some(entry(1, 1).log_id()),
            openraft::Membership::new_with_defaults(vec![voters], Vec::new()),
        )
    }

    #[tokio::test]
    async fn a_membership_that_removes_a_node_forgets_its_incarnation() {
        let dir = temp_dir("raft-forget");
        let db = open_db(&dir).unwrap();
        let incarnations = Arc::new(Incarnations::open("mine".into(), Arc::clone(&db)).unwrap());
        let mut machine = StateMachine::open(Arc::clone(&db), Arc::clone(&incarnations)).unwrap();
        let install = |ids: &[u64], index: u64| SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(entry(1, index).log_id()),
            last_membership: membership_of(ids),
        };
        machine
            .install_snapshot(&install(&[1, 2, 3], 1), Vec::new())
            .await
            .unwrap();
        incarnations.observe(2, "two").unwrap();
        incarnations.observe(3, "three").unwrap();
        machine
            .install_snapshot(&install(&[1, 2], 2), Vec::new())
            .await
            .unwrap();
        assert_eq!(incarnations.expected(3), None);
        assert_eq!(incarnations.expected(2).as_deref(), Some("two"));
        assert_eq!(
            removed_ids(&membership_of(&[1, 2, 3]), &membership_of(&[1, 2, 4])),
            vec![3]
        );
        assert!(removed_ids(&membership_of(&[1, 2]), &membership_of(&[1, 2, 4])).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    async fn indexes(store: &mut LogStore) -> Vec<u64> {
        store
            .try_get_log_entries(0..u64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|e| e.index())
            .collect()
    }

    #[tokio::test]
    async fn log_and_vote_survive_a_reopen() {
        let dir = temp_dir("raft-log");
        let mut store = LogStore::new(open_db(&dir).unwrap());
        let vote = VoteOf::<TypeConfig>::new_committed(3, 2);
        store.save_vote(&vote).await.unwrap();
        store
            .append((0..5).map(|i| entry(3, i)), IOFlushed::noop())
            .await
            .unwrap();
        store
            .truncate_after(Some(entry(3, 3).log_id()))
            .await
            .unwrap();
        store.purge(entry(3, 1).log_id()).await.unwrap();
        drop(store);

        let mut again = LogStore::new(open_db(&dir).unwrap());
        assert_eq!(again.read_vote().await.unwrap(), Some(vote));
        assert_eq!(indexes(&mut again).await, vec![2, 3]);
        let state = again.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
        let read = again.try_get_log_entries(2..4).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.index()).collect::<Vec<_>>(),
            vec![2, 3]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_append_that_does_not_follow_the_log_is_refused_and_not_stored() {
        let dir = temp_dir("raft-gap");
        let mut store = LogStore::new(open_db(&dir).unwrap());
        // An empty log starts at index 0.
        let err = store
            .append([entry(1, 3)], IOFlushed::noop())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("must have index 0"), "{err}");
        store
            .append((0..3).map(|i| entry(2, i)), IOFlushed::noop())
            .await
            .unwrap();
        // A gap.
        let err = store
            .append([entry(2, 5)], IOFlushed::noop())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("must have index 3"), "{err}");
        // An older term after a newer one.
        assert!(store
            .append([entry(1, 3)], IOFlushed::noop())
            .await
            .is_err());
        // A batch whose second entry jumps: none of it is stored.
        assert!(store
            .append([entry(2, 3), entry(2, 5)], IOFlushed::noop())
            .await
            .is_err());
        assert_eq!(indexes(&mut store).await, vec![0, 1, 2]);
        // After a purge the next entry follows the purged id.
        store.purge(entry(2, 2).log_id()).await.unwrap();
        store
            .append([entry(3, 3)], IOFlushed::noop())
            .await
            .unwrap();
        assert_eq!(indexes(&mut store).await, vec![3]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_restart_reads_the_snapshot_and_the_log_left_after_the_purge() {
        let dir = temp_dir("raft-snapshot");
        let db = open_db(&dir).unwrap();
        let mut log = LogStore::new(Arc::clone(&db));
        let mut machine = machine_of(&db);
        log.append((0..8).map(|i| entry(2, i)), IOFlushed::noop())
            .await
            .unwrap();
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(entry(2, 5).log_id()),
            last_membership: StoredMembershipOf::<TypeConfig>::default(),
        };
        machine.install_snapshot(&meta, Vec::new()).await.unwrap();
        let built = machine.build_snapshot().await.unwrap();
        assert_eq!(built.meta.last_log_id, meta.last_log_id);
        log.purge(entry(2, 5).log_id()).await.unwrap();
        drop((log, machine, db));

        let db = open_db(&dir).unwrap();
        let mut log = LogStore::new(Arc::clone(&db));
        let mut machine = machine_of(&db);
        let (applied, _) = machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(5));
        let current = machine.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(5));
        assert_eq!(indexes(&mut log).await, vec![6, 7]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(5));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(7));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_format_1_data_dir_is_migrated_once() {
        let dir = temp_dir("raft-v1");
        // Format 1, as litegate before format 2 wrote it.
        let vote = VoteOf::<TypeConfig>::new_committed(4, 1);
        let log = serde_json::json!({
            "vote": vote,
            "committed": entry(4, 2).log_id(),
            "last_purged": entry(4, 0).log_id(),
            "entries": {"1": entry(4, 1), "2": entry(4, 2)},
        });
        std::fs::write(dir.join(LEGACY_LOG_FILE), log.to_string()).unwrap();
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(entry(4, 0).log_id()),
            last_membership: StoredMembershipOf::<TypeConfig>::default(),
        };
        std::fs::write(
            dir.join(LEGACY_SNAPSHOT_FILE),
            serde_json::to_vec(&meta).unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.join(IDENTITY_FILE),
            r#"{"node_id":1,"cluster_id":"c0ffee"}"#,
        )
        .unwrap();

        let db = open_db(&dir).unwrap();
        let identity = IdentityFile::open(&dir, 1, &db).unwrap();
        assert_eq!(identity.cluster_id().as_deref(), Some("c0ffee"));
        // A dir from before incarnations draws one, once.
        let drawn = identity.incarnation();
        assert_eq!(drawn.len(), 32);
        drop(identity);
        let identity = IdentityFile::open(&dir, 1, &db).unwrap();
        assert_eq!(identity.incarnation(), drawn);
        let mut store = LogStore::new(Arc::clone(&db));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        assert_eq!(indexes(&mut store).await, vec![1, 2]);
        assert_eq!(
            store.read_committed().await.unwrap(),
            Some(entry(4, 2).log_id())
        );
        let mut machine = machine_of(&db);
        assert_eq!(
            machine.applied_state().await.unwrap().0,
            Some(entry(4, 0).log_id())
        );
        assert!(!dir.join(LEGACY_LOG_FILE).exists());
        assert!(dir.join("raft-log.json.v1").exists());
        assert_eq!(
            db.get::<u64>(db::FORMAT_KEY).unwrap(),
            Some(db::FORMAT_VERSION)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_process_on_the_data_dir_and_a_newer_format_are_refused() {
        let dir = temp_dir("raft-lock");
        let db = open_db(&dir).unwrap();
        let err = open_db(&dir).unwrap_err();
        assert!(err.contains("in use by another litegate"), "{err}");
        db.write(|txn| {
            let mut meta = txn.open_table(db::META).map_err(db::io)?;
            meta.insert(db::FORMAT_KEY, b"99".as_slice())
                .map_err(db::io)?;
            Ok(())
        })
        .unwrap();
        drop(db);
        let err = open_db(&dir).unwrap_err();
        assert!(err.contains("format 99, newer"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identity_of_another_node_is_refused() {
        let dir = temp_dir("identity");
        let db = open_db(&dir).unwrap();
        let first = IdentityFile::open(&dir, 1, &db).unwrap();
        let incarnation = first.incarnation();
        let cluster = first.join_initial_cluster("c1").unwrap();
        assert!(first.admit(Some(&cluster)).is_ok());
        assert!(first.admit(Some("another")).is_err());
        assert!(first.join_initial_cluster("c2").is_err());
        drop(first);
        let err = IdentityFile::open(&dir, 2, &db).unwrap_err();
        assert!(err.contains("belongs to node 1"), "{err}");
        let again = IdentityFile::open(&dir, 1, &db).unwrap();
        assert_eq!(again.cluster_id(), Some(cluster));
        assert_eq!(again.incarnation(), incarnation);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
