//! Raft's durable state in `cluster.data_dir`:
//!
//! - `identity.json` — which node (and which cluster) this directory
//!   belongs to, checked against the config at every start;
//! - `raft-log.json` — vote, log entries, committed and purged log ids;
//! - `raft-snapshot.json` — the state machine's last snapshot.
//!
//! Each is rewritten whole with fsync + atomic rename + directory fsync
//! ([`durable::replace_file`]) before the call that changed it returns, so
//! no vote is granted and no append acknowledged that a crash could undo.
//! litegate's log carries leadership only (blank entries and membership),
//! a few entries per election, and snapshots purge it, so whole-file
//! rewrites stay small.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::BuildHasher;
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
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use crate::durable;

const IDENTITY_FILE: &str = "identity.json";
const LOG_FILE: &str = "raft-log.json";
const SNAPSHOT_FILE: &str = "raft-snapshot.json";

/// What to do about a damaged file in the data dir.
const RESTORE: &str = "restore cluster.data_dir from a backup";

/// Which node and cluster a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: u64,
    /// Set when the cluster is bootstrapped, learned by the other nodes
    /// from the first Raft message they receive; `None` until then.
    pub cluster_id: Option<String>,
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
    pub fn open(data_dir: &Path, node_id: u64) -> Result<Self, String> {
        durable::ensure_data_dir(data_dir)?;
        let path = data_dir.join(IDENTITY_FILE);
        let identity = match durable::read_json::<Identity>(&path, RESTORE)? {
            Some(identity) => identity,
            None => {
                if data_dir.join(LOG_FILE).exists() {
                    return Err(format!(
                        "{} holds a Raft log but no {IDENTITY_FILE}: it was not written by this litegate; point cluster.data_dir at this node's own directory",
                        data_dir.display()
                    ));
                }
                let fresh = Identity {
                    node_id,
                    cluster_id: None,
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
        Ok(Self {
            path,
            current: Mutex::new(identity),
        })
    }

    pub fn cluster_id(&self) -> Option<String> {
        lock(&self.current).cluster_id.clone()
    }

    /// Bootstrap: a brand-new cluster gets a fresh id.
    pub fn create_cluster_id(&self) -> Result<String, String> {
        let mut identity = lock(&self.current);
        if let Some(id) = &identity.cluster_id {
            return Ok(id.clone());
        }
        let state = RandomState::new();
        let id = format!(
            "{:016x}{:016x}",
            state.hash_one((std::process::id(), std::time::SystemTime::now())),
            RandomState::new().hash_one(identity.node_id)
        );
        let next = Identity {
            cluster_id: Some(id.clone()),
            ..identity.clone()
        };
        write_json(&self.path, &next)?;
        *identity = next;
        Ok(id)
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

#[derive(Debug, Default, Serialize, Deserialize)]
struct LogFile {
    vote: Option<VoteOf<TypeConfig>>,
    committed: Option<LogIdOf<TypeConfig>>,
    last_purged: Option<LogIdOf<TypeConfig>>,
    entries: BTreeMap<u64, EntryOf<TypeConfig>>,
}

/// The Raft log and vote. Clones share one state; the reader handed to
/// openraft is such a clone.
#[derive(Debug, Clone)]
pub struct LogStore {
    path: Arc<PathBuf>,
    state: Arc<Mutex<LogFile>>,
}

impl LogStore {
    pub fn open(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join(LOG_FILE);
        let damaged = "restore cluster.data_dir from a backup, or empty it to rejoin as a new node";
        let state = durable::read_json::<LogFile>(&path, damaged)?.unwrap_or_default();
        Ok(Self {
            path: Arc::new(path),
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// Applies `change` and makes it durable before returning.
    async fn update(&self, change: impl FnOnce(&mut LogFile)) -> io::Result<()> {
        let bytes = {
            let mut state = lock(&self.state);
            change(&mut state);
            serde_json::to_vec(&*state).map_err(io::Error::other)?
        };
        durable::replace_file_off_thread(Arc::clone(&self.path), bytes).await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let state = lock(&self.state);
        Ok(state.entries.range(range).map(|(_, e)| e.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(lock(&self.state).vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let state = lock(&self.state);
        let last = state
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id())
            .or(state.last_purged);
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let vote = *vote;
        self.update(|s| s.vote = Some(vote)).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        self.update(|s| s.committed = committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(lock(&self.state).committed)
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
        let result = self
            .update(|s| {
                for entry in entries {
                    s.entries.insert(entry.index(), entry);
                }
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
        let keep_through = last_log_id.map(|id| id.index);
        self.update(|s| match keep_through {
            Some(index) => {
                s.entries.split_off(&(index + 1));
            }
            None => s.entries.clear(),
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.update(|s| {
            s.entries = s.entries.split_off(&(log_id.index + 1));
            s.last_purged = Some(log_id);
        })
        .await
    }
}

/// What the log has applied: nothing but membership so far (the log
/// carries leadership only), plus the last snapshot of it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
}

/// The snapshot file: the metadata, and the application state as one
/// opaque blob (the lease's sessions and KV). A file written before the
/// blob existed reads as an empty one.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotFile {
    #[serde(flatten)]
    meta: SnapshotMetaOf<TypeConfig>,
    #[serde(default)]
    data: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct StateMachine {
    path: Arc<PathBuf>,
    applied: Arc<Mutex<Applied>>,
    snapshot: Arc<Mutex<Option<SnapshotFile>>>,
    lease: Arc<crate::lease::LeaseMachine>,
}

impl StateMachine {
    /// Starts from the last snapshot; openraft re-applies the committed
    /// log after it.
    pub fn open(data_dir: &Path) -> Result<Self, String> {
        let path = data_dir.join(SNAPSHOT_FILE);
        let snapshot = durable::read_json::<SnapshotFile>(&path, RESTORE)?;
        let applied = snapshot
            .as_ref()
            .map(|file| Applied {
                last_applied: file.meta.last_log_id,
                membership: file.meta.last_membership.clone(),
            })
            .unwrap_or_default();
        let lease = crate::lease::LeaseMachine::new();
        if let Some(file) = &snapshot {
            lease.restore(&file.data).map_err(|e| {
                format!(
                    "{}: the lease state is damaged ({e}); {RESTORE}",
                    path.display()
                )
            })?;
        }
        Ok(Self {
            path: Arc::new(path),
            applied: Arc::new(Mutex::new(applied)),
            snapshot: Arc::new(Mutex::new(snapshot)),
            lease,
        })
    }

    /// The lease state this state machine applies to.
    pub fn lease(&self) -> Arc<crate::lease::LeaseMachine> {
        Arc::clone(&self.lease)
    }

    async fn save_snapshot(&self, file: SnapshotFile) -> io::Result<()> {
        let bytes = serde_json::to_vec(&file).map_err(io::Error::other)?;
        durable::replace_file_off_thread(Arc::clone(&self.path), bytes).await?;
        *lock(&self.snapshot) = Some(file);
        Ok(())
    }
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
        self.save_snapshot(SnapshotFile {
            meta: meta.clone(),
            data: data.clone(),
        })
        .await?;
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
            let result = {
                let mut applied = lock(&self.applied);
                applied.last_applied = Some(entry.log_id());
                if let Some(membership) = entry.get_membership() {
                    applied.membership =
                        StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id()), membership);
                }
                match &entry.payload {
                    openraft::EntryPayload::Normal(super::Command::Lease(command)) => {
                        self.lease.apply(command.clone(), entry.index())
                    }
                    _ => true,
                }
            };
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
        self.save_snapshot(SnapshotFile {
            meta: meta.clone(),
            data: snapshot.clone(),
        })
        .await?;
        let mut applied = lock(&self.applied);
        self.lease.restore(&snapshot)?;
        *applied = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        Ok(lock(&self.snapshot)
            .clone()
            .map(|file| SnapshotOf::<TypeConfig, Vec<u8>> {
                meta: file.meta,
                snapshot: file.data,
            }))
    }
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

    fn indexes(store: &LogStore) -> Vec<u64> {
        lock(&store.state).entries.keys().copied().collect()
    }

    #[tokio::test]
    async fn log_and_vote_survive_a_reopen() {
        let dir = std::env::temp_dir().join(format!("litegate-raft-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = LogStore::open(&dir).unwrap();
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

        let mut again = LogStore::open(&dir).unwrap();
        assert_eq!(again.read_vote().await.unwrap(), Some(vote));
        assert_eq!(indexes(&again), vec![2, 3]);
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

    #[test]
    fn identity_of_another_node_is_refused() {
        let dir = std::env::temp_dir().join(format!("litegate-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = IdentityFile::open(&dir, 1).unwrap();
        let cluster = first.create_cluster_id().unwrap();
        assert!(first.admit(Some(&cluster)).is_ok());
        assert!(first.admit(Some("another")).is_err());
        drop(first);
        let err = IdentityFile::open(&dir, 2).unwrap_err();
        assert!(err.contains("belongs to node 1"), "{err}");
        assert_eq!(
            IdentityFile::open(&dir, 1).unwrap().cluster_id(),
            Some(cluster)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
