//! Serving the Consul subset from Raft. Every node answers on its lease
//! listener; the leader executes, the others forward to it over the cluster
//! listener with the time that is left, or answer `500` at once when no
//! leader is known. Changes are log entries ([`LeaseCommand`]); renewals and
//! reads are answered by the leader after a read-index round, so a deposed
//! leader never renews a session.
//!
//! TTL timers live on the leader only, in memory. A new leader starts every
//! session's timer afresh, so it waits a whole TTL before it expires a
//! session whose renewals went to its predecessor.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use http::Method;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::{ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::consul::{self, Answer, Op};
use super::machine::LeaseMachine;
use super::state::{LeaseCommand, Session};
use crate::cluster::client::PeerClient;
use crate::cluster::peers::PeerTable;
use crate::cluster::raft::{Command, LitegateRaft};
use crate::config::Config;
use crate::litefs::api as litefs_api;
use crate::shutdown::Shutdown;

/// Every request is answered within this, forwarded or not, so LiteFS
/// (whose HTTP client has no timeout) always gets an answer it can act on.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(900);

/// A renew is confirmed (a read-index round on the leader) within this, or
/// answered `404`. LiteFS steps down at once on a `404` but keeps a lease
/// through other errors for up to TTL + 1 s more (its renew loop sleeps a
/// second before it gives up); a primary cut off from the quorum must stop
/// before a new leader can expire its session, a full TTL after the new
/// term began. With this bound it stops within TTL/2 + this of its last
/// good renew, sooner than that for any TTL from 1 s.
pub const RENEW_CONFIRMED_WITHIN: Duration = Duration::from_millis(500);

/// The longest the leader holds its own LiteFS's acquire until a lock delay
/// ends, instead of answering `false` (which costs LiteFS a release, a
/// destroy and a one-second sleep before it tries again). Leaves 150 ms of
/// [`ANSWER_WITHIN`] for the acquire's log entry; should that run out, LiteFS
/// gets an error, releases and destroys its new session, and tries again a
/// second later, as after a `false`.
const ACQUIRE_HOLD_MAX: Duration = Duration::from_millis(750);

/// How often the leader looks for expired sessions.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// The cluster-listener path a follower forwards a call to.
pub const FORWARD_PATH: &str = "/_litegate/lease";

/// A Consul call carried from a follower to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Base64: a KV value may be any bytes.
    pub body: String,
    /// The node whose LiteFS made the call.
    pub origin: u64,
}

#[derive(Debug, Default)]
struct Timers {
    /// The term these timers belong to; a new term starts them afresh.
    term: u64,
    renewed: HashMap<String, Instant>,
}

pub struct LeaseService {
    raft: LitegateRaft,
    me: u64,
    machine: Arc<LeaseMachine>,
    client: PeerClient,
    /// The one peer table: in raft mode it follows the membership in the
    /// Raft log, so a node added with `litegate member add` is found.
    peers: Arc<PeerTable>,
    /// LiteFS's key (`lease.key`): whose lock is the database's primary.
    key: String,
    timers: Mutex<Timers>,
    session_seq: AtomicU64,
    /// On the leader during `litegate handoff`: the node whose LiteFS may
    /// renew and re-acquire the holder's session (LiteFS's own handoff)
    /// although it does not lead yet, and until when.
    handing_to: Mutex<Option<(u64, Instant)>>,
    litefs: litefs_api::ApiClient,
    litefs_api: Option<http::Uri>,
}

impl std::fmt::Debug for LeaseService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseService")
            .field("me", &self.me)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl LeaseService {
    pub fn new(
        config: &Config,
        raft: LitegateRaft,
        machine: Arc<LeaseMachine>,
        client: PeerClient,
        peers: Arc<PeerTable>,
    ) -> Arc<Self> {
        Arc::new(Self {
            raft,
            me: config.node.id.unwrap_or_default(),
            machine,
            client,
            peers,
            key: config.lease.key.clone(),
            timers: Mutex::new(Timers::default()),
            session_seq: AtomicU64::new(0),
            handing_to: Mutex::new(None),
            litefs: litefs_api::client(),
            litefs_api: config.litefs.api.parse().ok(),
        })
    }

    pub fn machine(&self) -> &Arc<LeaseMachine> {
        &self.machine
    }

    /// Answers one call from the LiteFS on node `origin`, within
    /// [`ANSWER_WITHIN`].
    pub async fn answer(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        origin: u64,
    ) -> Answer {
        let op = match consul::parse(method, path, query, body) {
            Ok(op) => op,
            Err(refusal) => return refusal,
        };
        if op == Op::Register {
            // One shared pseudo-node for every LiteFS; nothing to record.
            return Answer::bool(true);
        }
        let renew = matches!(op, Op::RenewSession(_));
        let deadline = Instant::now()
            + if renew {
                RENEW_CONFIRMED_WITHIN
            } else {
                ANSWER_WITHIN
            };
        let work = async {
            // Asked again only while the leadership is moving, and only
            // within the bound; every call is safe to repeat (a session
            // created twice leaves one to expire unused).
            let mut moved_from = None;
            loop {
                let leader = self.leader_by(deadline, moved_from).await;
                let answer = match leader {
                    Some(id) if id == self.me => self.execute(op.clone(), origin).await,
                    Some(id) => {
                        self.forward(id, method, path, query, body, origin, deadline)
                            .await
                    }
                    None => Answer::error(
                        500,
                        "No cluster leader: litegate's Raft has no leader right now",
                    ),
                };
                if !answer.leader_moved || Instant::now() >= deadline {
                    return answer;
                }
                moved_from = leader;
            }
        };
        let answer = match tokio::time::timeout_at(deadline.into(), work).await {
            Ok(answer) => answer,
            Err(_) => Answer::error(500, "no answer from litegate's Raft leader in time"),
        };
        if renew && answer.status != 200 && answer.status != 404 {
            // Nobody can vouch for the lease now: the holder must stop
            // being primary at once, not a TTL + 1 s later (see
            // RENEW_CONFIRMED_WITHIN).
            return Answer::error(
                404,
                format!(
                    "Session not renewed: litegate's Raft cannot confirm it now ({})",
                    answer.body.trim()
                ),
            );
        }
        answer
    }

    /// The Raft leader other than `not` (one that just said it no longer
    /// leads), waiting for an election under way to end (a handoff's, say)
    /// until `deadline`: LiteFS gives its new lease up if the call right
    /// after it took it fails.
    async fn leader_by(&self, deadline: Instant, not: Option<u64>) -> Option<u64> {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_watched();
                let leader = if m.state == ServerState::Leader {
                    Some(self.me)
                } else {
                    m.current_leader.filter(|id| *id != self.me)
                };
                if leader.is_some() && leader != not {
                    return leader;
                }
            }
            match tokio::time::timeout_at(deadline.into(), metrics.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        leader: u64,
        method: &str,
        path: &str,
        query: Option<&str>,
        body: &[u8],
        origin: u64,
        deadline: Instant,
    ) -> Answer {
        let Some(leader_peer) = self.peers.by_id(leader) else {
            return Answer::error(
                500,
                format!("the Raft leader (node {leader}) is neither in cluster.peers nor in the Raft membership"),
            );
        };
        let addr = &leader_peer.cluster;
        let call = Forwarded {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.map(str::to_owned),
            body: base64::engine::general_purpose::STANDARD.encode(body),
            origin,
        };
        let Ok(bytes) = serde_json::to_vec(&call) else {
            return Answer::error(500, "cannot encode the call for the leader");
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match self
            .client
            .call(addr, Method::POST, FORWARD_PATH, &[], bytes, left)
            .await
        {
            Ok((status, reply)) if status.is_success() => serde_json::from_slice(&reply)
                .unwrap_or_else(|_| {
                    Answer::error(500, "the Raft leader's answer was not understood")
                }),
            Ok((status, reply)) => Answer::error(
                500,
                format!(
                    "the Raft leader refused the call: {status} {}",
                    String::from_utf8_lossy(&reply).trim()
                ),
            ),
            Err(error) => Answer::error(500, format!("cannot reach the Raft leader: {error}")),
        }
    }

    /// A call forwarded by a follower (the cluster listener's route).
    pub async fn answer_forwarded(&self, call: Forwarded) -> Answer {
        let Ok(body) = base64::engine::general_purpose::STANDARD.decode(&call.body) else {
            return Answer::error(400, "forwarded lease call: body is not base64");
        };
        let leader = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.state == ServerState::Leader
        };
        if !leader {
            // One hop only: a follower's view of the leader was stale.
            return Answer::leader_moved(
                "No cluster leader: this node is no longer litegate's Raft leader",
            );
        }
        match consul::parse(&call.method, &call.path, call.query.as_deref(), &body) {
            Ok(op) => {
                match tokio::time::timeout(ANSWER_WITHIN, self.execute(op, call.origin)).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        Answer::error(500, "the Raft leader could not commit the change in time")
                    }
                }
            }
            Err(refusal) => refusal,
        }
    }

    /// Leader only.
    async fn execute(&self, op: Op, origin: u64) -> Answer {
        match op {
            Op::Register => Answer::bool(true),
            Op::CreateSession {
                name,
                node,
                ttl_ms,
                lock_delay_ms,
                behavior,
            } => {
                let id = self.new_session_id();
                let session = Session {
                    id: id.clone(),
                    name,
                    node,
                    ttl_ms,
                    lock_delay_ms,
                    behavior,
                    create_index: 0,
                    owner: origin,
                };
                match self.propose(LeaseCommand::CreateSession(session)).await {
                    Ok(_) => {
                        self.timers().renewed.insert(id.clone(), Instant::now());
                        Answer::json(&json!({ "ID": id }), None)
                    }
                    Err(e) => e,
                }
            }
            Op::RenewSession(id) => {
                if let Err(e) = self.linearize().await {
                    return e;
                }
                let found = self.machine.read(|t| {
                    t.state.sessions.get(&id).map(|s| {
                        let holds = t
                            .state
                            .kv
                            .values()
                            .any(|e| e.session.as_deref() == Some(&id));
                        (consul::session_json(s), holds)
                    })
                });
                match found {
                    // LiteFS on a node that no longer leads must give up the
                    // lease: a 404 makes it step down at once.
                    Some((_, true)) if origin != self.me && !self.is_handoff_target(origin) => Answer::error(
                        404,
                        format!("Session id '{id}' not found: its lock is only renewed from litegate's Raft leader's node"),
                    ),
                    Some((session, _)) => {
                        self.timers().renewed.insert(id, Instant::now());
                        Answer::json(&json!([session]), None)
                    }
                    None => Answer::error(404, format!("Session id '{id}' not found")),
                }
            }
            Op::DestroySession(id) => {
                let result = self
                    .propose(LeaseCommand::DestroySession { id: id.clone() })
                    .await;
                self.timers().renewed.remove(&id);
                result.map_or_else(|e| e, |_| Answer::bool(true))
            }
            Op::Get(key) => {
                let index = match self.linearize().await {
                    Ok(()) => self.machine.read(|t| t.state.index),
                    Err(e) => return e,
                };
                match self
                    .machine
                    .read(|t| t.state.kv.get(&key).map(|e| consul::entry_json(&key, e)))
                {
                    Some(entry) => Answer::json(&json!([entry]), Some(index)),
                    None => Answer {
                        status: 404,
                        body: String::new(),
                        index: Some(index),
                        leader_moved: false,
                    },
                }
            }
            Op::Put { key, value } => self
                .propose(LeaseCommand::Put { key, value })
                .await
                .map_or_else(|e| e, Answer::bool),
            Op::Acquire {
                key,
                value,
                session,
            } => {
                if origin == self.me {
                    let left = self
                        .machine
                        .read(|t| t.lock_delay_left(&key, Instant::now()));
                    if let Some(left) = left.filter(|left| *left <= ACQUIRE_HOLD_MAX) {
                        tokio::time::sleep(left).await;
                    }
                }
                // Refusals that need no log entry, as Consul answers them;
                // the lock delay is checked afresh after any hold above.
                let now = Instant::now();
                let (known, delayed) = self.machine.read(|t| {
                    (
                        t.state.sessions.contains_key(&session),
                        t.lock_delayed(&key, now),
                    )
                });
                if !known {
                    return Answer::error(500, format!("invalid session \"{session}\""));
                }
                let handoff = origin != self.me && self.is_handoff_target(origin);
                if delayed || (origin != self.me && !handoff) {
                    return Answer::bool(false);
                }
                let granted = self
                    .propose(LeaseCommand::Acquire {
                        key,
                        value,
                        session: session.clone(),
                        origin,
                        leader: self.me,
                        handoff,
                    })
                    .await;
                if matches!(granted, Ok(true)) {
                    self.timers().renewed.insert(session, Instant::now());
                }
                granted.map_or_else(|e| e, Answer::bool)
            }
            Op::Release {
                key,
                value,
                session,
            } => self
                .propose(LeaseCommand::Release {
                    key,
                    value,
                    session,
                })
                .await
                .map_or_else(|e| e, Answer::bool),
        }
    }

    async fn propose(&self, command: LeaseCommand) -> Result<bool, Answer> {
        self.raft
            .client_write(Command::Lease(command))
            .await
            .map(|r| r.data)
            .map_err(|e| match e.forward_to_leader() {
                Some(_) => Answer::leader_moved(format!("No cluster leader: {e}")),
                None => Answer::error(500, format!("No cluster leader: {e}")),
            })
    }

    /// Confirms with a quorum that this node still leads, and waits until
    /// everything committed before is applied.
    async fn linearize(&self) -> Result<(), Answer> {
        self.raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
            .map(|_| ())
            .map_err(|e| match e.forward_to_leader() {
                Some(_) => Answer::leader_moved(format!("No cluster leader: {e}")),
                None => Answer::error(500, format!("No cluster leader: {e}")),
            })
    }

    /// Whether `node` is the target of this leader's handoff under way.
    fn is_handoff_target(&self, node: u64) -> bool {
        let window = self
            .handing_to
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        matches!(*window, Some((target, until)) if target == node && Instant::now() < until)
    }

    /// Lets `target`'s LiteFS take the lease over with the holder's
    /// session until `until` or [`Self::close_handoff`].
    pub(super) fn open_handoff(&self, target: u64, until: Instant) {
        *self
            .handing_to
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((target, until));
    }

    pub(super) fn close_handoff(&self) {
        *self
            .handing_to
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub(super) fn me(&self) -> u64 {
        self.me
    }

    /// A cluster call to `node` (the handoff's request to its target).
    pub(super) async fn call_peer(
        &self,
        node: u64,
        path: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let peer = self.peers.by_id(node).ok_or_else(|| {
            format!("node {node} is neither in cluster.peers nor in the Raft membership")
        })?;
        let addr = &peer.cluster;
        match self
            .client
            .call(addr, Method::POST, path, &[], Vec::new(), timeout)
            .await
        {
            Ok((status, _)) if status.is_success() => Ok(()),
            Ok((status, reply)) => Err(format!(
                "{status} {}",
                String::from_utf8_lossy(&reply).trim()
            )),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Asks this node's LiteFS to take the lease over from the primary
    /// (`POST /promote`): the target's side of a handoff.
    pub async fn promote_local_litefs(&self) -> Result<(), String> {
        let Some(api) = &self.litefs_api else {
            return Err("litefs.api is not a URL".into());
        };
        litefs_api::promote(&self.litefs, api).await
    }

    fn new_session_id(&self) -> String {
        let seq = self.session_seq.fetch_add(1, Ordering::Relaxed);
        let state = std::collections::hash_map::RandomState::new();
        let a = state.hash_one((self.me, seq, std::time::SystemTime::now()));
        let b = std::collections::hash_map::RandomState::new().hash_one((seq, self.me));
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xffff,
            b >> 48,
            b & 0xffff_ffff_ffff
        )
    }

    fn timers(&self) -> MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// On the leader, expires sessions not renewed for a whole TTL (an
    /// expiry is a log entry); elsewhere keeps no timers.
    pub fn spawn_expiry(self: &Arc<Self>, mut stop: Shutdown) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_TICK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.begun() => break,
                }
                for id in this.expired(Instant::now()) {
                    tracing::info!(session = %id, "LiteFS lease session expired (no renew for its TTL)");
                    let command = LeaseCommand::DestroySession { id: id.clone() };
                    match tokio::time::timeout(ANSWER_WITHIN, this.propose(command)).await {
                        Ok(Ok(_)) => {
                            this.timers().renewed.remove(&id);
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(session = %id, error = %e.body.trim(), "could not expire the session")
                        }
                        Err(_) => {
                            tracing::warn!(session = %id, "could not expire the session in time")
                        }
                    }
                }
            }
        });
    }

    /// Sessions whose TTL ran out at `now`, by this leader's timers.
    fn expired(&self, now: Instant) -> Vec<String> {
        let (leading, term) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (m.state == ServerState::Leader, m.current_term)
        };
        let mut timers = self.timers();
        if !leading || timers.term != term {
            timers.term = if leading { term } else { 0 };
            timers.renewed.clear();
        }
        if !leading {
            return Vec::new();
        }
        let sessions: Vec<(String, u64)> = self.machine.read(|t| {
            t.state
                .sessions
                .values()
                .map(|s| (s.id.clone(), s.ttl_ms))
                .collect()
        });
        let live: std::collections::HashSet<&str> =
            sessions.iter().map(|(id, _)| id.as_str()).collect();
        timers.renewed.retain(|id, _| live.contains(id.as_str()));
        sessions
            .into_iter()
            .filter(|(id, ttl_ms)| {
                // First seen by this leader: its TTL starts now.
                let renewed = *timers.renewed.entry(id.clone()).or_insert(now);
                now >= renewed + Duration::from_millis(*ttl_ms)
            })
            .map(|(id, _)| id)
            .collect()
    }

    /// Who holds LiteFS's key: the holder's node, session and lock index.
    pub fn holder(&self) -> Option<Holder> {
        self.machine.read(|t| {
            t.holder(&self.key).map(|(s, lock_index)| Holder {
                node: s.owner,
                session: s.id.clone(),
                lock_index,
                ttl: Duration::from_millis(s.ttl_ms),
            })
        })
    }

    /// The `lease` part of `/status`.
    pub fn status(&self) -> serde_json::Value {
        let holder = self.holder();
        let ttl_left_ms = holder.as_ref().and_then(|h| {
            let timers = self.timers();
            timers.renewed.get(&h.session).map(|at| {
                u64::try_from(
                    (*at + h.ttl)
                        .saturating_duration_since(Instant::now())
                        .as_millis(),
                )
                .unwrap_or(u64::MAX)
            })
        });
        let sessions = self.machine.read(|t| t.state.sessions.len());
        json!({
            "key": self.key,
            "holder": holder.as_ref().map(|h| json!({
                "node": self.peers.by_id(h.node).map(|p| p.name),
                "session": h.session,
                "lock_index": h.lock_index,
                "ttl_ms": u64::try_from(h.ttl.as_millis()).unwrap_or(u64::MAX),
            })),
            // Known on the leader only: it alone keeps the timers.
            "ttl_left_ms": ttl_left_ms,
            "sessions": sessions,
        })
    }

    /// Gauges brought up to date for a scrape.
    pub fn refresh_gauges(&self) {
        let holder = self.holder();
        crate::metrics::set_lease_gauges(
            holder.as_ref().is_some_and(|h| h.node == self.me),
            holder.map_or(0, |h| h.lock_index),
            self.machine.read(|t| t.state.sessions.len()),
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: u64,
    pub session: String,
    pub lock_index: u64,
    pub ttl: Duration,
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::{Peer, PrimaryMode};
    use crate::proxy::server::{Listener, Timeouts};

    struct OneNode {
        service: Arc<LeaseService>,
        raft: LitegateRaft,
        dir: PathBuf,
        config: Config,
        _trigger: crate::shutdown::Trigger,
        stop: Shutdown,
    }

    /// A one-node Raft cluster with the lease on top, in process.
    async fn one_node(tag: &str) -> OneNode {
        let dir = std::env::temp_dir().join(format!("litegate-lease-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config::default();
        config.node.id = Some(1);
        config.node.name = "n1".into();
        config.primary.mode = PrimaryMode::Raft;
        config.cluster.data_dir = dir.clone();
        config.cluster.peers = vec![Peer {
            id: 1,
            name: "n1".into(),
            cluster: "127.0.0.1:9".into(),
            public_url: "http://127.0.0.1:8080".into(),
            witness: false,
        }];
        config.lease.token = "t0ken".into();
        let client =
            PeerClient::new(None, None, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let node = crate::cluster::raft::start(&config, client.clone(), true)
            .await
            .unwrap();
        // The start-up quiet period keeps a fresh node from campaigning.
        node.raft.runtime_config().elect(true);
        node.raft
            .wait(Some(Duration::from_secs(10)))
            .state(ServerState::Leader, "one node elects itself")
            .await
            .unwrap();
        let peers = Arc::new(PeerTable::new("n1", &config.cluster.peers));
        let service = LeaseService::new(
            &config,
            node.raft.clone(),
            Arc::clone(&node.lease),
            client,
            peers,
        );
        let (trigger, stop) = crate::shutdown::channel();
        service.spawn_expiry(stop.clone());
        OneNode {
            service,
            raft: node.raft.clone(),
            dir,
            config,
            _trigger: trigger,
            stop,
        }
    }

    impl OneNode {
        async fn call(
            &self,
            method: &str,
            path: &str,
            query: Option<&str>,
            body: &str,
            origin: u64,
        ) -> Answer {
            self.service
                .answer(method, path, query, body.as_bytes(), origin)
                .await
        }

        async fn session(&self, ttl: &str, lock_delay: &str) -> String {
            let body = format!(
                r#"{{"Behavior":"delete","LockDelay":"{lock_delay}","Name":"litefs","NodeChecks":[],"TTL":"{ttl}"}}"#
            );
            let a = self.call("PUT", "/v1/session/create", None, &body, 1).await;
            assert_eq!(a.status, 200, "{}", a.body);
            let v: Value = serde_json::from_str(&a.body).unwrap();
            v["ID"].as_str().unwrap().to_owned()
        }

        async fn get(&self, key: &str) -> Option<Value> {
            let a = self
                .call("GET", &format!("/v1/kv/{key}"), None, "", 1)
                .await;
            assert!(a.index.is_some(), "X-Consul-Index on every KV read");
            match a.status {
                200 => Some(serde_json::from_str::<Value>(&a.body).unwrap()[0].clone()),
                404 => None,
                other => panic!("GET {key}: {other} {}", a.body),
            }
        }

        /// A session with a 1 s TTL and `lock_delay` takes key `k`, is
        /// not renewed, and expires: `k` is gone (Behavior=delete) and its
        /// lock delay runs. Returns the expired session.
        async fn held_until_it_expires(&self, lock_delay: &str) -> String {
            let s1 = self.session("1s", lock_delay).await;
            let a = self
                .call("PUT", "/v1/kv/k", Some(&format!("acquire={s1}")), "n1", 1)
                .await;
            assert_eq!(a.body, "true");
            assert!(
                eventually(Duration::from_secs(10), || async {
                    self.get("k").await.is_none()
                })
                .await,
                "the unrenewed session expires and its key goes"
            );
            s1
        }

        async fn finish(self) {
            self.raft.shutdown().await.unwrap();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Polls `check` every 50 ms for at most `limit`.
    async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if check().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acquire_renew_release_destroy_with_consuls_answers() {
        let n = one_node("calls").await;
        let s1 = n.session("10s", "1s").await;
        let s2 = n.session("10s", "1s").await;
        assert_eq!(n.get("litefs/primary").await, None);
        // Expiry after one TTL without a renew (Consul waits up to two).
        let now = Instant::now();
        assert!(n
            .service
            .expired(now + Duration::from_secs(10))
            .contains(&s1));
        assert!(!n
            .service
            .expired(now + Duration::from_secs(9))
            .contains(&s1));

        let a = n
            .call(
                "PUT",
                "/v1/kv/litefs/primary",
                Some(&format!("acquire={s1}")),
                r#"{"hostname":"n1"}"#,
                1,
            )
            .await;
        assert_eq!((a.status, a.body.as_str()), (200, "true"));
        let e = n.get("litefs/primary").await.unwrap();
        assert_eq!(e["Session"], json!(s1));
        assert_eq!(e["LockIndex"], json!(1));
        let value = base64::engine::general_purpose::STANDARD
            .decode(e["Value"].as_str().unwrap())
            .unwrap();
        assert_eq!(value, br#"{"hostname":"n1"}"#);

        // Another session, or the same from a node that does not lead: refused.
        let a = n
            .call(
                "PUT",
                "/v1/kv/litefs/primary",
                Some(&format!("acquire={s2}")),
                "x",
                1,
            )
            .await;
        assert_eq!(a.body, "false");
        let a = n
            .call(
                "PUT",
                "/v1/kv/litefs/primary",
                Some(&format!("acquire={s1}")),
                "x",
                2,
            )
            .await;
        assert_eq!(a.body, "false");
        let a = n
            .call("PUT", "/v1/kv/litefs/primary", Some("acquire=nope"), "x", 1)
            .await;
        assert_eq!(
            a.status, 500,
            "an unknown session is an error, as in Consul"
        );

        // Renewals: the holder from the leader's node; 404 for an unknown
        // session, and for the holder renewing from another node (step down).
        let a = n
            .call("PUT", &format!("/v1/session/renew/{s1}"), None, "", 1)
            .await;
        assert_eq!(a.status, 200);
        let renewed: Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(renewed[0]["ID"], json!(s1));
        assert_eq!(
            n.call("PUT", "/v1/session/renew/nope", None, "", 1)
                .await
                .status,
            404
        );
        assert_eq!(
            n.call("PUT", &format!("/v1/session/renew/{s1}"), None, "", 2)
                .await
                .status,
            404
        );
        assert_eq!(
            n.call("PUT", &format!("/v1/session/renew/{s2}"), None, "", 2)
                .await
                .status,
            200
        );

        // A plain put keeps the lock; release empties the value (LiteFS sends no body).
        let a = n
            .call("PUT", "/v1/kv/litefs/primary/clusterid", None, "LFSC1", 1)
            .await;
        assert_eq!(a.body, "true");
        assert_eq!(
            n.call(
                "PUT",
                "/v1/kv/litefs/primary",
                Some(&format!("release={s2}")),
                "",
                1
            )
            .await
            .body,
            "false"
        );
        assert_eq!(
            n.call(
                "PUT",
                "/v1/kv/litefs/primary",
                Some(&format!("release={s1}")),
                "",
                1
            )
            .await
            .body,
            "true"
        );
        let e = n.get("litefs/primary").await.unwrap();
        assert_eq!(e["Value"], Value::Null);
        assert!(e.get("Session").is_none());
        assert_eq!(e["LockIndex"], json!(1));

        // Graceful: release, then destroy; no lock delay, the next one gets it at once.
        assert_eq!(
            n.call("PUT", &format!("/v1/session/destroy/{s1}"), None, "", 1)
                .await
                .body,
            "true"
        );
        assert_eq!(
            n.call("PUT", &format!("/v1/session/renew/{s1}"), None, "", 1)
                .await
                .status,
            404
        );
        let a = n
            .call(
                "PUT",
                "/v1/kv/litefs/primary",
                Some(&format!("acquire={s2}")),
                "n1b",
                1,
            )
            .await;
        assert_eq!(a.body, "true");
        assert_eq!(
            n.get("litefs/primary").await.unwrap()["LockIndex"],
            json!(2)
        );
        assert_eq!(
            n.get("litefs/primary/clusterid").await.unwrap()["Value"],
            json!(base64::engine::general_purpose::STANDARD.encode("LFSC1"))
        );
        n.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unrenewed_session_expires_after_its_ttl_then_the_lock_delay_holds_the_key() {
        let n = one_node("expiry").await;
        let s1 = n.held_until_it_expires("3s").await;
        assert_eq!(
            n.call("PUT", &format!("/v1/session/renew/{s1}"), None, "", 1)
                .await
                .status,
            404
        );
        let expired_at = Instant::now();
        let s2 = n.session("10s", "0s").await;
        let first = n
            .call("PUT", "/v1/kv/k", Some(&format!("acquire={s2}")), "n1", 1)
            .await;
        // More of the lock delay left than the leader holds an acquire for:
        // refused at once, as Consul does.
        if expired_at.elapsed() < Duration::from_millis(2000) {
            assert_eq!(first.body, "false", "inside the lock delay");
        }
        let granted = eventually(Duration::from_secs(10), || async {
            n.call("PUT", "/v1/kv/k", Some(&format!("acquire={s2}")), "n1", 1)
                .await
                .body
                == "true"
        })
        .await;
        assert!(granted, "the lock delay ends");
        n.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_leaders_acquire_inside_a_short_lock_delay_waits_it_out_and_is_granted() {
        let n = one_node("hold").await;
        n.held_until_it_expires("550ms").await;
        let s2 = n.session("10s", "0s").await;
        // From another node: refused at once (only the leader's LiteFS
        // gets the lock), lock delay or not.
        let elsewhere = n
            .call("PUT", "/v1/kv/k", Some(&format!("acquire={s2}")), "n2", 2)
            .await;
        assert_eq!(elsewhere.body, "false");
        // The leader's own LiteFS, at most 550 ms of the delay left: held until
        // the delay is over, then granted, where Consul would say `false`.
        let first = n
            .call("PUT", "/v1/kv/k", Some(&format!("acquire={s2}")), "n1", 1)
            .await;
        assert_eq!(first.body, "true", "{first:?}");
        assert_eq!(n.get("k").await.unwrap()["Session"], json!(s2));
        n.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_term_restarts_every_ttl_timer() {
        let n = one_node("term").await;
        // The expiry task adopts the leader's term on its first tick; a
        // session created before that would have its timer restarted then.
        assert!(
            eventually(Duration::from_secs(5), || async {
                n.service.timers().term != 0
            })
            .await
        );
        let s1 = n.session("10s", "0s").await;
        let t0 = Instant::now();
        assert!(n
            .service
            .expired(t0 + Duration::from_secs(10))
            .contains(&s1));
        // As if leadership had moved: the timers belong to another term.
        n.service.timers().term = 0;
        let t1 = t0 + Duration::from_secs(10);
        assert!(
            n.service.expired(t1).is_empty(),
            "first seen by this term: a whole TTL from now"
        );
        assert!(!n.service.expired(t1 + Duration::from_secs(9)).contains(&s1));
        assert!(n
            .service
            .expired(t1 + Duration::from_secs(10))
            .contains(&s1));
        n.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_renewed_session_outlives_its_ttl() {
        let n = one_node("renew").await;
        let s1 = n.session("1s", "0s").await;
        assert_eq!(
            n.call("PUT", "/v1/kv/k", Some(&format!("acquire={s1}")), "v", 1)
                .await
                .body,
            "true"
        );
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                n.call("PUT", &format!("/v1/session/renew/{s1}"), None, "", 1)
                    .await
                    .status,
                200
            );
        }
        assert_eq!(n.get("k").await.unwrap()["Session"], json!(s1));
        n.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_handoff_target_takes_the_holders_session_over_while_the_handoff_runs() {
        let n = one_node("handoff").await;
        let s1 = n.session("10s", "0s").await;
        let s2 = n.session("10s", "0s").await;
        let acquire = |session: &str| format!("acquire={session}");
        let renew = |session: &str| format!("/v1/session/renew/{session}");
        assert_eq!(
            n.call("PUT", "/v1/kv/k", Some(&acquire(&s1)), "n1", 1)
                .await
                .body,
            "true"
        );
        // Node 2 does not lead: without a handoff it can neither renew the
        // holder's session nor take the key.
        assert_eq!(n.call("PUT", &renew(&s1), None, "", 2).await.status, 404);
        assert_eq!(
            n.call("PUT", "/v1/kv/k", Some(&acquire(&s1)), "n2", 2)
                .await
                .body,
            "false"
        );

        n.service
            .open_handoff(2, Instant::now() + Duration::from_secs(10));
        assert_eq!(n.call("PUT", &renew(&s1), None, "", 3).await.status, 404);
        assert_eq!(
            n.call("PUT", "/v1/kv/k", Some(&acquire(&s2)), "n2", 2)
                .await
                .body,
            "false",
            "only with the holder's own session"
        );
        assert_eq!(n.call("PUT", &renew(&s1), None, "", 2).await.status, 200);
        assert_eq!(
            n.call("PUT", "/v1/kv/k", Some(&acquire(&s1)), "n2", 2)
                .await
                .body,
            "true"
        );
        let holder = n
            .service
            .machine()
            .read(|t| t.holder("k").map(|(s, _)| (s.owner, s.id.clone())));
        assert_eq!(holder, Some((2, s1.clone())));

        n.service.close_handoff();
        assert_eq!(
            n.call("PUT", &renew(&s1), None, "", 2).await.status,
            404,
            "the target renews from its own node once it leads, not before"
        );
        n.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handoff_window_closes_by_itself() {
        let n = one_node("window").await;
        let s1 = n.session("10s", "0s").await;
        n.call("PUT", "/v1/kv/k", Some(&format!("acquire={s1}")), "n1", 1)
            .await;
        n.service.open_handoff(2, Instant::now());
        assert_eq!(
            n.call("PUT", &format!("/v1/session/renew/{s1}"), None, "", 2)
                .await
                .status,
            404
        );
        n.finish().await;
    }

    async fn http(addr: std::net::SocketAddr, head: &str, body: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{head}\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        (status, out)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_listener_checks_the_token_and_names_what_it_does_not_serve() {
        let n = one_node("listener").await;
        let handler = Arc::new(super::super::listener::LeaseHandler {
            service: Arc::clone(&n.service),
            token: n.config.lease.token.clone(),
            me: 1,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let side = Listener {
            name: "lease",
            tls: None,
            timeouts: Timeouts::live(&n.config),
            max_header_bytes: 65536,
            max_connections: 16,
            http1_only: true,
            shutdown_grace: Duration::from_secs(1),
            count_traffic: false,
        };
        tokio::spawn(side.serve(listener, handler, n.stop.clone()));

        let (status, _) = http(
            addr,
            "PUT /v1/catalog/register HTTP/1.1\r\nX-Consul-Token: wrong",
            "{}",
        )
        .await;
        assert_eq!(status, 403);
        let (status, _) = http(addr, "PUT /v1/catalog/register HTTP/1.1", "{}").await;
        assert_eq!(status, 403, "no token");
        let (status, out) = http(
            addr,
            "PUT /v1/catalog/register HTTP/1.1\r\nX-Consul-Token: t0ken",
            "{}",
        )
        .await;
        assert_eq!(status, 200, "{out}");
        let (status, out) = http(
            addr,
            "GET /v1/health/state/any HTTP/1.1\r\nX-Consul-Token: t0ken",
            "",
        )
        .await;
        assert_eq!(status, 404);
        assert!(
            out.contains("GET /v1/health/state/any is not supported"),
            "{out}"
        );
        let (status, out) = http(
            addr,
            "GET /v1/kv/k?index=3 HTTP/1.1\r\nX-Consul-Token: t0ken",
            "",
        )
        .await;
        assert_eq!(status, 400);
        assert!(out.contains("`index`"), "{out}");
        let (status, out) = http(
            addr,
            "GET /v1/kv/missing HTTP/1.1\r\nX-Consul-Token: t0ken",
            "",
        )
        .await;
        assert_eq!(status, 404);
        assert!(
            out.to_ascii_lowercase().contains("x-consul-index:"),
            "{out}"
        );
        n.finish().await;
    }
}
