//! `primary.mode = "raft"`: the nodes elect the primary with openraft.
//!
//! - [`store`]: vote, log and snapshot in `cluster.data_dir`, durable before
//!   any reply depends on them; the data dir's identity.
//! - [`network`]: RPCs to peers over the cluster listener.
//! - [`rpc`]: the receiving end of those RPCs.
//! - [`quiet`]: no votes and no campaign right after a start.
//! - [`member`]: what the membership in the log records about a node.
//!
//! The Raft leader is the primary and its term is the fencing token: the
//! standard leader id allows one leader per term. How leadership becomes
//! routing lives in [`crate::primary::raft`].

pub mod member;
pub mod network;
pub mod quiet;
pub mod rpc;
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
    pub quiet: quiet::StartupQuiet,
    /// LiteFS's lease as the state machine applies it.
    pub lease: Arc<crate::lease::LeaseMachine>,
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
    let identity = Arc::new(store::IdentityFile::open(data_dir, me)?);
    let log = store::LogStore::open(data_dir)?;
    let state_machine = store::StateMachine::open(data_dir)?;
    let lease = state_machine.lease();
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
        // Snapshots only carry membership; they keep the log short.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(64),
        max_in_snapshot_log_to_keep: 16,
        ..Default::default()
    }
    .validate()
    .map_err(|e| format!("the Raft timings in [cluster] are inconsistent: {e}"))?;
    let network = network::Network {
        me,
        client,
        identity: Arc::clone(&identity),
    };
    let raft = LitegateRaft::new(me, Arc::new(raft_config), network, log, state_machine)
        .await
        .map_err(|e| format!("Raft did not start: {e}"))?;
    // No campaign during the start-up quiet period; after it, the
    // leadership task decides (a witness campaigns only when the app nodes
    // cannot elect one of themselves, see primary::raft).
    raft.runtime_config().elect(false);
    let quiet = quiet::StartupQuiet::new(started, hi.get());

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| format!("Raft did not start: {e}"))?;
    match (initialized, bootstrap) {
        (true, true) => tracing::info!("--bootstrap ignored: this node already belongs to a cluster"),
        (true, false) => {}
        (false, true) => {
            let cluster = identity.create_cluster_id()?;
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
        (false, false) => tracing::info!(
            "this node has not joined a cluster yet: it waits for the others. To create a new cluster, start one node with --bootstrap"
        ),
    }
    Ok(RaftNode {
        raft,
        identity,
        quiet,
        lease,
    })
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
