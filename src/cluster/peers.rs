//! What this node knows of its peers: their cluster address, public URL,
//! and — from polling them every second — whether they answer and which
//! epoch they are at. A newer epoch heard this way is adopted, so a node
//! that missed an announcement catches up; in static mode the same answers
//! confirm (or not) a restarted primary's epoch.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Method;
use serde::{Deserialize, Serialize};

use crate::cluster::raft::incarnation::{self, Incarnations, Sighting};
use crate::cluster::raft::member::MemberNode;
use crate::config::Peer;
use crate::log_limit::{self, LogLimit};
use crate::primary::static_promote::EpochPeers;
use crate::primary::{Epoch, EpochState, PrimarySource, Vote};
use crate::shutdown::Shutdown;

use super::client::PeerClient;

const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerStatus {
    pub reachable: bool,
    pub epoch: Option<u64>,
    pub primary: Option<String>,
    pub last_error: Option<String>,
    /// Whether that node's app accepted connections at the last answer;
    /// `None` for a witness or a node that does not say.
    pub app_up: Option<bool>,
    #[serde(skip)]
    pub last_seen: Option<Instant>,
}

/// `GET /_litegate/epoch`'s answer: the node's epoch state and whether its
/// app accepts connections (absent on a witness and on older nodes, whose
/// answers still read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    #[serde(flatten)]
    pub epoch: EpochState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_up: Option<bool>,
    /// Raft mode: the answering node's id and data dir incarnation, so
    /// every node learns every peer's within a second
    /// ([`crate::cluster::raft::incarnation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
}

/// The one list of peers that routing, forwarding, polling and leadership
/// read. It starts as `cluster.peers`; in raft mode, once this node knows
/// a membership from the Raft log, that membership replaces it (see
/// [`PeerTable::follow_membership`]), so a node added at runtime can be
/// routed to and can lead.
#[derive(Debug)]
pub struct PeerTable {
    pub me: String,
    /// `cluster.peers`: fills in what an older log entry does not record.
    seed: Vec<Peer>,
    peers: ArcSwap<Vec<Peer>>,
    status: RwLock<HashMap<String, PeerStatus>>,
    /// Raft mode: where the polls record each peer's incarnation.
    incarnations: OnceLock<Arc<Incarnations>>,
}

impl PeerTable {
    pub fn new(me: &str, peers: &[Peer]) -> Self {
        Self {
            me: me.to_owned(),
            seed: peers.to_vec(),
            peers: ArcSwap::from_pointee(peers.to_vec()),
            status: RwLock::new(HashMap::new()),
            incarnations: OnceLock::new(),
        }
    }

    /// Raft mode: the polls learn each peer's data dir incarnation.
    pub fn learn_incarnations(&self, incarnations: Arc<Incarnations>) {
        let _ = self.incarnations.set(incarnations);
    }

    /// Every peer, this node included when it is a member.
    pub fn all(&self) -> Arc<Vec<Peer>> {
        self.peers.load_full()
    }

    pub fn get(&self, name: &str) -> Option<Peer> {
        self.peers.load().iter().find(|p| p.name == name).cloned()
    }

    pub fn by_id(&self, id: u64) -> Option<Peer> {
        self.peers.load().iter().find(|p| p.id == id).cloned()
    }

    pub fn others(&self) -> Vec<Peer> {
        self.peers
            .load()
            .iter()
            .filter(|p| p.name != self.me)
            .cloned()
            .collect()
    }

    /// Replaces the peers with the members the Raft log records, voters
    /// first (so a name briefly held by a voter and a learner being added
    /// in its place resolves to the voter). A field the log left empty
    /// (a membership written before it carried names) comes from
    /// `cluster.peers`. Returns whether anything changed.
    pub fn follow_membership<'a>(
        &self,
        members: impl IntoIterator<Item = (u64, &'a MemberNode, bool)>,
    ) -> bool {
        let mut next: Vec<(bool, Peer)> = members
            .into_iter()
            .map(|(id, node, voter)| {
                let seed = self.seed.iter().find(|p| p.id == id);
                let or_seed = |value: &str, from_seed: fn(&Peer) -> &str| {
                    if value.is_empty() {
                        seed.map(from_seed).unwrap_or_default().to_owned()
                    } else {
                        value.to_owned()
                    }
                };
                let peer = Peer {
                    id,
                    name: or_seed(&node.name, |p| &p.name),
                    cluster: or_seed(&node.addr, |p| &p.cluster),
                    public_url: or_seed(&node.public_url, |p| &p.public_url),
                    witness: node.witness || seed.is_some_and(|p| p.witness),
                };
                (voter, peer)
            })
            .collect();
        if next.is_empty() {
            // Not a member of any cluster yet: keep what the config says.
            return false;
        }
        next.sort_by_key(|(voter, peer)| (!*voter, peer.id));
        let next: Vec<Peer> = next.into_iter().map(|(_, peer)| peer).collect();
        if **self.peers.load() == next {
            return false;
        }
        tracing::info!(
            members = %next.iter().map(|p| format!("{}={}", p.id, p.name)).collect::<Vec<_>>().join(","),
            "peers follow the Raft membership"
        );
        self.peers.store(Arc::new(next));
        true
    }

    pub fn status(&self, name: &str) -> PeerStatus {
        self.status
            .read()
            .map(|s| s.get(name).cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Whether `name`'s app accepted connections when it last answered,
    /// if that answer is recent enough to act on.
    pub fn app_up(&self, name: &str) -> Option<bool> {
        let status = self.status(name);
        let fresh = status
            .last_seen
            .is_some_and(|seen| seen.elapsed() < POLL_INTERVAL * 3);
        (status.reachable && fresh)
            .then_some(status.app_up)
            .flatten()
    }

    fn record(&self, name: &str, result: Result<EpochState, String>) {
        let Ok(mut table) = self.status.write() else {
            return;
        };
        let entry = table.entry(name.to_owned()).or_default();
        match result {
            Ok(epoch) => {
                *entry = PeerStatus {
                    reachable: true,
                    epoch: Some(epoch.epoch),
                    primary: Some(epoch.primary),
                    last_error: None,
                    app_up: entry.app_up,
                    last_seen: Some(Instant::now()),
                };
            }
            Err(error) => {
                entry.reachable = false;
                entry.last_error = Some(error);
            }
        }
    }

    fn record_app(&self, name: &str, app_up: Option<bool>) {
        if let Ok(mut table) = self.status.write() {
            table.entry(name.to_owned()).or_default().app_up = app_up;
        }
    }

    /// Asks every peer for its epoch now: adopts any newer one, and in
    /// static mode lets a restarted primary confirm its own.
    pub async fn poll_all(
        &self,
        client: &PeerClient,
        source: &PrimarySource,
    ) -> Vec<(String, Result<EpochState, String>)> {
        let mut polls = tokio::task::JoinSet::new();
        for peer in self.others() {
            let (client, name, addr) = (client.clone(), peer.name.clone(), peer.cluster.clone());
            let incarnations = self.incarnations.get().cloned();
            polls.spawn(async move {
                let result = client
                    .control::<PeerView>(&addr, Method::GET, "/_litegate/epoch", None::<&()>)
                    .await;
                if let (Ok(view), Some(incarnations)) = (&result, incarnations) {
                    learn_incarnation(&incarnations, peer.id, view).await;
                }
                (name, result)
            });
        }
        let mut answers = Vec::new();
        while let Some(Ok((name, view))) = polls.join_next().await {
            let result = view.map(|view| {
                self.record_app(&name, view.app_up);
                view.epoch
            });
            if let Ok(state) = &result {
                source.observe(state.epoch, &state.primary);
            }
            self.record(&name, result.clone());
            answers.push((name, result));
        }
        if let PrimarySource::Static(node) = source {
            let states: Vec<EpochState> = answers
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok().cloned())
                .collect();
            node.confirm(&states);
        }
        answers.sort_by(|a, b| a.0.cmp(&b.0));
        answers
    }

    /// Sends a static-mode proposal to every peer; see
    /// [`crate::primary::static_promote`].
    pub async fn propose_all(
        &self,
        client: &PeerClient,
        proposal: &Epoch,
    ) -> Vec<(String, Result<Vote, String>)> {
        let mut sends = tokio::task::JoinSet::new();
        for peer in self.others() {
            let (client, name, addr, proposal) = (
                client.clone(),
                peer.name.clone(),
                peer.cluster.clone(),
                proposal.clone(),
            );
            sends.spawn(async move {
                let result = client
                    .control::<Vote>(
                        &addr,
                        Method::POST,
                        "/_litegate/epoch/propose",
                        Some(&proposal),
                    )
                    .await;
                (name, result)
            });
        }
        let mut answers = Vec::new();
        while let Some(Ok(answer)) = sends.join_next().await {
            answers.push(answer);
        }
        answers.sort_by(|a, b| a.0.cmp(&b.0));
        answers
    }

    pub fn spawn_poller(
        self: &Arc<Self>,
        client: PeerClient,
        source: Arc<PrimarySource>,
        mut shutdown: Shutdown,
    ) {
        let table = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.begun() => return,
                }
                table.poll_all(&client, &source).await;
            }
        });
    }

    /// Tells every peer about a new epoch; returns the names that did not
    /// take the message (they catch up by polling).
    pub async fn announce(&self, client: &PeerClient, epoch: &Epoch) -> Vec<String> {
        let mut sends = tokio::task::JoinSet::new();
        for peer in self.others() {
            let (client, name, addr, epoch) = (
                client.clone(),
                peer.name.clone(),
                peer.cluster.clone(),
                epoch.clone(),
            );
            sends.spawn(async move {
                let result = client
                    .control::<EpochState>(&addr, Method::POST, "/_litegate/epoch", Some(&epoch))
                    .await;
                (name, result)
            });
        }
        let mut missed = Vec::new();
        while let Some(Ok((name, result))) = sends.join_next().await {
            if let Err(error) = &result {
                tracing::warn!(peer = %name, %error, "could not announce the new epoch");
                missed.push(name.clone());
            }
            self.record(&name, result);
        }
        missed.sort();
        missed
    }
}

/// Keeps the first incarnation a peer reports; says so, once a minute
/// per peer, when one comes back with another (it lost its data dir: the
/// Raft endpoints refuse it, see [`crate::cluster::raft::rpc`]).
async fn learn_incarnation(incarnations: &Arc<Incarnations>, peer: u64, view: &PeerView) {
    // An answer from another id at that address is not this peer's.
    if view.node_id != Some(peer) {
        return;
    }
    let Some(theirs) = view
        .incarnation
        .as_deref()
        .filter(|i| incarnation::plausible(i))
    else {
        return;
    };
    match incarnations.sighted(peer, theirs).await {
        Ok(Sighting::Known) => {}
        Ok(Sighting::Changed { known }) => {
            static CHANGED: LogLimit = LogLimit::new(log_limit::EVERY);
            if let Some(suppressed) = CHANGED.allow(&peer.to_string()) {
                let why = incarnation::changed_reason(peer, theirs, &known);
                tracing::warn!(suppressed, "{why}");
            }
        }
        Err(e) => tracing::warn!(peer, error = %e, "cannot record a peer's incarnation"),
    }
}

/// A promote's view of the other nodes over the cluster link.
pub struct ClusterEpochPeers<'a> {
    pub table: &'a PeerTable,
    pub client: &'a PeerClient,
    pub source: &'a PrimarySource,
}

impl EpochPeers for ClusterEpochPeers<'_> {
    fn poll(&self) -> impl Future<Output = Vec<(String, Result<EpochState, String>)>> + Send {
        self.table.poll_all(self.client, self.source)
    }

    fn propose(
        &self,
        proposal: &Epoch,
    ) -> impl Future<Output = Vec<(String, Result<Vote, String>)>> + Send {
        self.table.propose_all(self.client, proposal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, name: &str) -> Peer {
        Peer {
            id,
            name: name.into(),
            cluster: format!("127.0.0.1:{}", 7000 + id),
            public_url: format!("http://127.0.0.1:{}", 8000 + id),
            witness: false,
        }
    }

    fn node(id: u64, name: &str) -> MemberNode {
        MemberNode::from(&peer(id, name))
    }

    #[test]
    fn the_membership_replaces_the_config_peers_once_known() {
        let table = PeerTable::new("a", &[peer(1, "a"), peer(2, "b"), peer(3, "c")]);
        // Not in a cluster yet: the config's peers stay.
        assert!(!table.follow_membership(Vec::new()));
        assert_eq!(table.all().len(), 3);

        let (a, b, d) = (node(1, "a"), node(2, "b"), node(4, "d"));
        assert!(table.follow_membership([(1, &a, true), (2, &b, true), (4, &d, true)]));
        assert_eq!(
            table.get("d").map(|p| p.cluster),
            Some("127.0.0.1:7004".into())
        );
        assert!(
            table.get("c").is_none(),
            "a removed member is no longer routed to"
        );
        assert_eq!(
            table.others().iter().map(|p| p.id).collect::<Vec<_>>(),
            [2, 4]
        );
        // The same membership again changes nothing.
        assert!(!table.follow_membership([(1, &a, true), (2, &b, true), (4, &d, true)]));
    }

    #[test]
    fn an_old_membership_without_names_reads_them_from_the_config() {
        let table = PeerTable::new("a", &[peer(1, "a"), peer(2, "b")]);
        let bare = MemberNode {
            addr: "127.0.0.1:7002".into(),
            ..MemberNode::default()
        };
        let a = node(1, "a");
        table.follow_membership([(1, &a, true), (2, &bare, true)]);
        assert_eq!(table.by_id(2), Some(peer(2, "b")));
    }

    #[test]
    fn a_voter_wins_a_name_a_learner_also_has() {
        let table = PeerTable::new("a", &[peer(1, "a")]);
        let (a, old, new) = (node(1, "a"), node(2, "b"), node(3, "b"));
        table.follow_membership([(3, &new, false), (1, &a, true), (2, &old, true)]);
        assert_eq!(table.get("b").map(|p| p.id), Some(2));
    }
}
