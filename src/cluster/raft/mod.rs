//! `primary.mode = "raft"`: the nodes elect the primary with openraft.
//!
//! - [`db`]: the one file (`raft.redb`) that holds them, its format version
//!   and the migration from the JSON files of format 1.
//! - [`store`]: vote, log and snapshot in `cluster.data_dir`, durable before
//!   any reply depends on them; the data dir's identity.
//! - [`bootstrap`]: the cluster id every node derives from the initial
//!   peer list.
//! - [`network`]: RPCs to peers over the cluster listener.
//! - [`rpc`]: the receiving end of those RPCs.
//! - [`quiet`]: no votes and no campaign right after a start.
//! - [`member`]: what the membership in the log records about a node.
//! - [`incarnation`]: which data dir each node id runs on; a node that
//!   lost its data dir is refused under its old id.
//!
//! The Raft leader is the primary and its term is the fencing token: the
//! standard leader id allows one leader per term. How leadership becomes
//! routing lives in [`crate::primary::raft`].

pub mod bootstrap;
pub mod db;
pub mod incarnation;
pub mod member;
pub mod network;
pub mod quiet;
pub mod rpc;
pub mod standing;
pub mod store;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use openraft::SnapshotPolicy;
use serde::{Deserialize, Serialize};

use crate::cluster::client::PeerClient;
use crate::config::Config;

/// What litegate's Raft log carries besides blank entries and membership.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Noop,
    /// A change to LiteFS's lease (sessions and KV, [`crate::lease`]).
    Lease(crate::lease::state::LeaseCommand),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Noop => f.write_str("noop"),
            Command::Lease(c) => write!(f, "lease {c:?}"),
        }
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        // Whether the command took effect: Consul's true/false for a
        // lease acquire or release, true otherwise.
        R = bool,
        Node = member::MemberNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub type LitegateRaft = openraft::Raft<TypeConfig, store::StateMachine>;

/// A running Raft member and the identity of its data directory.
pub struct RaftNode {
    pub raft: LitegateRaft,
    pub identity: Arc<store::IdentityFile>,
    pub incarnations: Arc<incarnation::Incarnations>,
    pub quiet: quiet::StartupQuiet,
    /// LiteFS's lease as the state machine applies it.
    pub lease: Arc<crate::lease::LeaseMachine>,
    pub standing: Arc<standing::Standing>,
    /// This node's id and where `cluster.peers` says it is, and where it
    /// listens: named when two processes claim one id.
    pub me: u64,
    pub configured_at: String,
    pub listening_on: String,
}

/// Opens the data dir, starts openraft, and — with `bootstrap` on a node
/// that was never initialized — creates a new cluster of `cluster.peers`.
pub async fn start(
    config: &Config,
    client: PeerClient,
    bootstrap: bool,
) -> Result<RaftNode, String> {
    // Before anything of this run could acknowledge a leader.
    let started = std::time::Instant::now();
    let me = config
        .node
        .id
        .ok_or("config key `node.id` is required in raft mode")?;
    let data_dir = &config.cluster.data_dir;
    // The store first: its file lock keeps a second process off this dir.
    let db = store::open_db(data_dir)?;
    let identity = Arc::new(store::IdentityFile::open(data_dir, me, &db)?);
    let incarnations = Arc::new(incarnation::Incarnations::open(
        identity.incarnation(),
        Arc::clone(&db),
    )?);
    let log = store::LogStore::new(Arc::clone(&db));
    let state_machine = store::StateMachine::open(db, Arc::clone(&incarnations))?;
    let lease = state_machine.lease();
    let snapshot_every = config.cluster.snapshot_entries;
    let [lo, hi] = config.cluster.election_timeout;
    let raft_config = openraft::Config {
        cluster_name: "litegate".to_owned(),
        heartbeat_interval: millis(config.cluster.heartbeat.get()),
        election_timeout_min: millis(lo.get()),
        election_timeout_max: millis(hi.get()),
        // A node that cannot win (stale log, just back from a partition)
        // must not disturb a healthy leader by raising the term.
        enable_pre_vote: Some(true),
        // A restarted leader campaigns like anyone else: its app's view of
        // the term must come from an election.
        enable_leader_restore: Some(false),
        // A snapshot every `snapshot_entries` applied entries; the log
        // before it is purged but for a quarter of that, so a follower a
        // little behind catches up from the log, not a snapshot.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every / 4,
        ..Default::default()
    }
    .validate()
    .map_err(|e| format!("the Raft timings in [cluster] are inconsistent: {e}"))?;
    let network = network::Network {
        me,
        client,
        identity: Arc::clone(&identity),
        incarnations: Arc::clone(&incarnations),
    };
    let raft = LitegateRaft::new(me, Arc::new(raft_config), network, log, state_machine)
        .await
        .map_err(|e| format!("Raft did not start: {e}"))?;
    // No campaign during the start-up quiet period; after it, the
    // leadership task decides (a witness campaigns only when the app nodes
    // cannot elect one of themselves, see primary::raft).
    raft.runtime_config().elect(false);
    exit_on_fatal(raft.clone());
    let quiet = quiet::StartupQuiet::new(started, hi.get());

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| format!("Raft did not start: {e}"))?;
    match (initialized, bootstrap) {
        (true, true) => {
            tracing::info!("--bootstrap ignored: this node already belongs to a cluster")
        }
        (true, false) => {}
        (false, true) => {
            let cluster = identity.join_initial_cluster(&bootstrap::initial_cluster_id(
                &config.cluster.initial_token,
                &config.cluster.peers,
            ))?;
            let members: BTreeMap<u64, member::MemberNode> = config
                .cluster
                .peers
                .iter()
                .map(|p| (p.id, member::MemberNode::from(p)))
                .collect();
            raft.initialize(members)
                .await
                .map_err(|e| format!("cannot bootstrap the cluster: {e}"))?;
            tracing::info!(%cluster, voters = config.cluster.peers.len(), "bootstrapped a new cluster");
        }
        (false, false) => tracing::info!("{NOT_JOINED}"),
    }
    Ok(RaftNode {
        raft,
        identity,
        incarnations,
        quiet,
        lease,
        standing: Arc::default(),
        me,
        configured_at: config
            .cluster
            .peers
            .iter()
            .find(|p| p.id == me)
            .map(|p| p.cluster.clone())
            .unwrap_or_default(),
        listening_on: config.cluster.listen.0.to_string(),
    })
}

/// What an uninitialized node says in its log, `status` and `503` text.
pub const NOT_JOINED: &str = "this node has not joined a Raft cluster yet: it waits for the others. To create a new cluster, start the founding nodes with the same cluster.peers and cluster.initial_token, and at least one of them (or all) with --bootstrap";

/// openraft stops its core on a storage error (and on a panic inside it),
/// and a stopped core never comes back: the node would stay up, answer
/// `/healthz`, and refuse every write. End the process instead, with one
/// line saying what failed, so a supervisor restarts it from the data dir.
fn exit_on_fatal(raft: LitegateRaft) {
    use openraft::async_runtime::watch::WatchReceiver;
    use openraft::errors::Fatal;
    tokio::spawn(async move {
        let mut metrics = raft.metrics();
        loop {
            let running = metrics.borrow_watched().running_state.clone();
            match running {
                Ok(()) => {}
                // Our own shutdown at the end of a graceful stop.
                Err(Fatal::Stopped) => return,
                Err(fatal) => {
                    tracing::error!(error = %fatal, "Raft stopped on a fatal error (storage or internal); exiting so the node restarts from its data dir");
                    std::process::exit(EXIT_RAFT_FATAL);
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The exit code of a process that found its identity claimed by another
/// (EX_CONFIG in sysexits.h: its config is a copy of another node's).
pub const EXIT_COPIED_IDENTITY: i32 = 78;

/// The exit code after a fatal Raft error (EX_IOERR in sysexits.h: most
/// such errors are the data dir's).
pub const EXIT_RAFT_FATAL: i32 = 74;

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
