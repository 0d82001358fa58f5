//! `primary.mode = "raft"`: the Raft leader is the primary.
//!
//! One task follows openraft's metrics and publishes `{role, term, primary,
//! lease_deadline}` into the [`PrimaryCell`](super::PrimaryCell) the request path reads without
//! a lock, through the [`LeadershipPublisher`], the only writer of that
//! cell. The leader may pass writes to its app only until
//! `last quorum acknowledgement + election_timeout_min`: followers promise
//! not to elect anyone for `election_timeout_max` after a heartbeat they
//! acknowledged, so the difference covers clock drift and the moment
//! between the check and the write reaching the app.
//!
//! Followers do not always keep that promise, and two exceptions are
//! openraft's, not ours:
//!
//! - A leadership transfer. The leader broadcasts `TransferLeader`; every
//!   follower whose vote is still that leader's drops its lease on
//!   receipt, and the target campaigns with a vote request marked
//!   `leadership_transfer`, which every voter grants however fresh its
//!   lease (openraft `handle_vote_req`). Our handoff sends it only after it
//!   stopped admitting writes and drained them, but the message can be
//!   acted on late: a target paused (SIGSTOP, VM migration) with it unread
//!   in a socket, woken after the handoff gave up and this leader went back
//!   to writing, still holds the same vote and campaigns at once.
//! - A restart: openraft loads the stored vote with no lease. Start-up
//!   quiet ([`StartupQuiet`]) closes that one.
//!
//! So a newly elected leader takes no write for `election_timeout` max
//! after it first sees itself elected (the takeover hold). Whoever led
//! before acknowledged its last quorum before a member of that quorum voted
//! for us, that is, before our election; its lease, `election_timeout` min
//! from then, has run out by the end of the hold.
//!
//! Handoff ([`RaftLeadership::handoff`]) stops taking writes here, lets the
//! writes already at the app finish, and transfers leadership to the most
//! up-to-date app node; the held writes then go to the new leader. A
//! witness never routes writes: if it is elected it hands off at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{RaftMetrics, ServerState};
use serde_json::json;

use super::app_aware::{self, AppWatch, DownClock};
use super::raft_publisher::{age, LeadershipPublisher};
use super::write_gate::GatePass;
use super::PrimaryWatch;
use crate::cluster::peers::PeerTable;
use crate::cluster::raft::quiet::StartupQuiet;
use crate::cluster::raft::standing::Standing;
use crate::cluster::raft::{LitegateRaft, TypeConfig, NOT_JOINED};
use crate::config::Config;
use crate::metrics;
use crate::shutdown::Shutdown;

/// How long a handoff lets writes already at the app finish before it
/// moves leadership anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Work a handoff does after the writes drained and before Raft
/// leadership moves: with `[lease]`, LiteFS's own handoff
/// (`lease::handoff`). It cannot fail the handoff, only speed it up.
pub trait HandoffStep: Send + Sync {
    fn before_transfer(&self, target: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// After the transfer ended, moved or not.
    fn after_transfer(&self);
}

pub struct RaftLeadership {
    raft: LitegateRaft,
    publisher: LeadershipPublisher,
    peers: Arc<PeerTable>,
    me: u64,
    witness: bool,
    election_timeout_max: Duration,
    quiet: StartupQuiet,
    /// The term a witness last handed off in, so it asks once per term.
    witness_handoff_term: AtomicU64,
    /// App health here and at the peers; set once the peer table exists.
    apps: OnceLock<AppWatch>,
    app_down: Mutex<DownClock>,
    /// The term this leader last handed off in because its app was down.
    app_handoff_term: AtomicU64,
    standing: Arc<Standing>,
    handoff_step: OnceLock<Arc<dyn HandoffStep>>,
}

impl std::fmt::Debug for RaftLeadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLeadership")
            .field("me", &self.me)
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("this node is not the leader; {}", .0.as_deref().map_or("no leader is known".to_owned(), |l| format!("the leader is {l}")))]
    NotLeader(Option<String>),
    #[error("{0:?} is not an app node of this cluster (witnesses cannot lead)")]
    NoSuchTarget(String),
    #[error("no app node has acknowledged this leader recently; nobody to hand off to")]
    NoTarget,
    #[error("a handoff is already under way")]
    InProgress,
    #[error("{target} did not take over within {}; this node stays the leader", humantime::format_duration(*.waited))]
    TimedOut { target: String, waited: Duration },
    #[error("Raft stopped: {0}")]
    Stopped(String),
}

impl RaftLeadership {
    /// `peers` is the node's one peer table; the leadership task keeps it
    /// in step with the membership in the Raft log.
    pub fn new(
        raft: LitegateRaft,
        config: &Config,
        quiet: StartupQuiet,
        standing: Arc<Standing>,
        peers: Arc<PeerTable>,
    ) -> Arc<Self> {
        let [lo, hi] = config.cluster.election_timeout;
        let me = config.node.id.unwrap_or_default();
        metrics::set_is_primary(false);
        Arc::new(Self {
            raft,
            publisher: LeadershipPublisher::new(
                me,
                config.node.witness,
                Arc::clone(&peers),
                lo.get(),
                hi.get(),
                config.lease.listen.is_empty(),
            ),
            me,
            peers,
            witness: config.node.witness,
            election_timeout_max: hi.get(),
            quiet,
            witness_handoff_term: AtomicU64::new(0),
            apps: OnceLock::new(),
            app_down: Mutex::new(DownClock::default()),
            app_handoff_term: AtomicU64::new(0),
            standing,
            handoff_step: OnceLock::new(),
        })
    }

    /// Why this node knows no primary when that is its own state, not the
    /// cluster's: it never joined one, or it refuses the one it found.
    pub fn why_no_primary(&self) -> Option<String> {
        if let Some(refusal) = self.standing.refusal() {
            return Some(refusal);
        }
        let m = self.metrics();
        let joined = m.membership_config.voter_ids().next().is_some();
        (!joined).then(|| NOT_JOINED.to_owned())
    }

    pub fn watch(&self) -> PrimaryWatch {
        self.publisher.cell().watch()
    }

    /// Adds a step to every handoff from here on (set once).
    pub fn add_handoff_step(&self, step: Arc<dyn HandoffStep>) {
        let _ = self.handoff_step.set(step);
    }

    /// Makes leadership app-aware (app nodes only; see [`app_aware`]).
    pub fn watch_apps(&self, apps: AppWatch) {
        let _ = self.apps.set(apps);
    }

    pub fn raft(&self) -> &LitegateRaft {
        &self.raft
    }

    /// This node's peer table, which follows the Raft membership.
    pub fn peers(&self) -> &Arc<PeerTable> {
        &self.peers
    }

    /// This node's Raft id.
    pub fn me(&self) -> u64 {
        self.me
    }

    fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// See [`super::PrimarySource::write_permit`].
    pub fn write_permit(&self) -> Option<GatePass> {
        self.publisher.write_permit()
    }

    /// Follows openraft's metrics until shutdown: publishes leadership,
    /// decides when this node may campaign, and on a witness hands off any
    /// leadership it wins.
    pub fn spawn(self: &Arc<Self>, mut stop: Shutdown) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut metrics = this.raft.metrics();
            let mut witness_tick = tokio::time::interval(this.election_timeout_max / 2);
            let mut app_tick = tokio::time::interval(app_aware::RECHECK);
            app_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                this.follow_membership(&metrics.borrow_watched().clone());
                let refresh_at = this.publisher.refresh(|| metrics.borrow_watched().clone());
                let m = metrics.borrow_watched().clone();
                let witness_may_campaign = if this.witness {
                    this.witness_duties(&m).await
                } else {
                    true
                };
                let app_may_campaign = this.app_duties(&m);
                let quiet = this.quiet.holds(Instant::now());
                this.raft
                    .runtime_config()
                    .elect(!quiet && witness_may_campaign && app_may_campaign);
                let quiet_ends = tokio::time::sleep_until(this.quiet.ends().into());
                let hold_ends =
                    tokio::time::sleep_until(refresh_at.unwrap_or_else(Instant::now).into());
                tokio::select! {
                    changed = metrics.changed() => if changed.is_err() { break },
                    _ = witness_tick.tick(), if this.witness => {}
                    _ = app_tick.tick(), if this.apps.get().is_some() => {}
                    () = quiet_ends, if quiet => {}
                    () = hold_ends, if refresh_at.is_some() => {}
                    () = stop.begun() => break,
                }
            }
        });
    }

    /// Brings the peer table in step with the membership this node knows
    /// from the Raft log, before the leadership it implies is published.
    fn follow_membership(&self, m: &RaftMetrics<TypeConfig>) {
        let stored = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = stored.voter_ids().collect();
        self.peers.follow_membership(
            stored
                .nodes()
                .map(|(id, node)| (*id, node, voters.contains(id))),
        );
    }

    /// App-aware leadership: on a leader whose app has been down too long,
    /// hands off to a node whose app is up; says whether this node may
    /// campaign (not with its app down while another app is up).
    fn app_duties(self: &Arc<Self>, m: &RaftMetrics<TypeConfig>) -> bool {
        let Some(apps) = self.apps.get() else {
            return true;
        };
        let own_up = apps.own.is_up();
        let down_for = match self.app_down.lock() {
            Ok(mut clock) => clock.observe(own_up, Instant::now()),
            Err(_) => return true,
        };
        let healthy_peer = self.healthy_app_peers(m, apps).next().is_some();
        if m.state == ServerState::Leader
            && app_aware::should_hand_off(down_for, apps.down_handoff, healthy_peer)
            && self.app_handoff_term.swap(m.current_term, Ordering::AcqRel) != m.current_term
        {
            tracing::warn!(
                term = m.current_term,
                down_for = %humantime::format_duration(down_for.unwrap_or_default()),
                "this leader's app is unreachable; handing leadership to a node whose app is up"
            );
            let this = Arc::clone(self);
            tokio::spawn(async move {
                match this.handoff_inner(None, true).await {
                    Ok(to) => tracing::info!(to, "leadership moved away from a dead app"),
                    Err(error) => {
                        tracing::warn!(%error, "could not move leadership away from a dead app yet");
                        // Try again at the next check.
                        this.app_handoff_term.store(0, Ordering::Release);
                    }
                }
            });
        }
        app_aware::may_campaign(own_up, healthy_peer)
    }

    /// The other app voters whose app a recent poll reported up.
    fn healthy_app_peers<'a>(
        &'a self,
        m: &'a RaftMetrics<TypeConfig>,
        apps: &'a AppWatch,
    ) -> impl Iterator<Item = u64> + 'a {
        m.membership_config
            .membership()
            .voter_ids()
            .filter(move |id| *id != self.me)
            .filter(move |id| {
                self.publisher
                    .member(*id)
                    .is_some_and(|p| !p.witness && apps.peer_app_up(&p.name))
            })
    }

    /// Hands off a leadership this witness won; otherwise says whether it
    /// may campaign.
    async fn witness_duties(self: &Arc<Self>, m: &RaftMetrics<TypeConfig>) -> bool {
        if m.state == ServerState::Leader
            && self
                .witness_handoff_term
                .swap(m.current_term, Ordering::AcqRel)
                != m.current_term
        {
            tracing::info!(
                term = m.current_term,
                "this witness was elected; handing leadership to an app node"
            );
            let this = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(error) = this.handoff(None).await {
                    tracing::warn!(%error, "the witness could not hand off leadership yet");
                    // Ask again at the next tick.
                    this.witness_handoff_term.store(0, Ordering::Release);
                }
            });
            return false;
        }
        // Campaign only after the app nodes had two full election timeouts
        // to elect one of themselves.
        let silent_for = self
            .raft
            .with_raft_state(|st| st.vote_last_modified().map(age))
            .await
            .ok()
            .flatten();
        m.state != ServerState::Leader
            && silent_for.is_none_or(|d| d > self.election_timeout_max * 2)
    }

    /// Moves leadership to `to` (a node name) or the most up-to-date app
    /// node, after the writes already at this node's app have finished.
    /// New writes are held meanwhile, not failed; they go to the new leader.
    pub async fn handoff(self: &Arc<Self>, to: Option<&str>) -> Result<String, HandoffError> {
        self.handoff_inner(to, false).await
    }

    /// [`Self::handoff`]; with `healthy_app_only` and no `to`, only a node
    /// whose app a recent poll reported up is a target.
    async fn handoff_inner(
        self: &Arc<Self>,
        to: Option<&str>,
        healthy_app_only: bool,
    ) -> Result<String, HandoffError> {
        let m = self.metrics();
        if m.state != ServerState::Leader {
            return Err(HandoffError::NotLeader(
                m.current_leader
                    .and_then(|id| self.publisher.member(id))
                    .map(|p| p.name.to_string()),
            ));
        }
        let (target, name) = self.handoff_target(&m, to, healthy_app_only)?;
        if !self.publisher.begin_handoff(|| self.metrics()) {
            return Err(HandoffError::InProgress);
        }
        let result = self.transfer(target, &name, m.current_term).await;
        // Back to what the metrics say: a follower now or, if the transfer
        // failed, still the leader, whose lease counts from its last quorum
        // acknowledgement; no quorum that voted for a newer term renews it.
        self.publisher.end_handoff(|| self.metrics());
        result.map(|()| name)
    }

    async fn transfer(&self, target: u64, name: &str, term: u64) -> Result<(), HandoffError> {
        let drain_until = Instant::now() + DRAIN_LIMIT;
        while self.publisher.writes_in_flight() > 0 {
            if Instant::now() >= drain_until {
                // Not a clean handoff: a write still at the app overlaps the
                // new leader's writes if it outlasts its takeover hold.
                tracing::warn!(
                    in_flight = self.publisher.writes_in_flight(),
                    "writes still at the app after {}; handing off anyway",
                    humantime::format_duration(DRAIN_LIMIT)
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let step = self.handoff_step.get().cloned();
        if let Some(step) = &step {
            step.before_transfer(target).await;
        }
        let moved = self.move_leadership(target, name, term).await;
        if let Some(step) = &step {
            step.after_transfer();
        }
        moved
    }

    async fn move_leadership(
        &self,
        target: u64,
        name: &str,
        term: u64,
    ) -> Result<(), HandoffError> {
        tracing::info!(to = name, term, "handing leadership off");
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| HandoffError::Stopped(e.to_string()))?;
        let waited = self.election_timeout_max * 4 + Duration::from_secs(1);
        let mut metrics = self.raft.metrics();
        let moved = tokio::time::timeout(waited, async {
            loop {
                {
                    let m = metrics.borrow_watched();
                    if m.current_term > term && m.state != ServerState::Leader {
                        return true;
                    }
                }
                if metrics.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match moved {
            Ok(true) => Ok(()),
            Ok(false) => Err(HandoffError::Stopped("metrics closed".into())),
            Err(_) => Err(HandoffError::TimedOut {
                target: name.to_owned(),
                waited,
            }),
        }
    }

    fn handoff_target(
        &self,
        m: &RaftMetrics<TypeConfig>,
        to: Option<&str>,
        healthy_app_only: bool,
    ) -> Result<(u64, String), HandoffError> {
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let app_nodes = voters
            .iter()
            .copied()
            .filter(|id| *id != self.me && self.publisher.member(*id).is_some_and(|p| !p.witness));
        if let Some(name) = to {
            return app_nodes
                .into_iter()
                .find(|id| self.publisher.member(*id).is_some_and(|p| &*p.name == name))
                .map(|id| (id, name.to_owned()))
                .ok_or_else(|| HandoffError::NoSuchTarget(name.to_owned()));
        }
        let recent = self.election_timeout_max * 2;
        let heard_recently = |id: &u64| ack_age(m, *id).is_some_and(|a| a < recent);
        let app_up = |id: u64| {
            self.apps.get().is_some_and(|apps| {
                self.publisher
                    .member(id)
                    .is_some_and(|p| apps.peer_app_up(&p.name))
            })
        };
        app_nodes
            .filter(heard_recently)
            .filter(|id| !healthy_app_only || app_up(*id))
            // A node whose app is up first, then the most up-to-date; among
            // equals the lowest id, so the choice is predictable.
            .max_by_key(|id| (app_up(*id), matched_index(m, *id), std::cmp::Reverse(*id)))
            .and_then(|id| self.publisher.member(id).map(|p| (id, p.name.to_string())))
            .ok_or(HandoffError::NoTarget)
    }

    /// The membership as the Raft log holds it (`GET /members`, and
    /// `raft.membership` in `/status`): every voter and learner with what
    /// the log records about it.
    pub fn membership(&self) -> serde_json::Value {
        let m = self.metrics();
        let stored = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = stored.voter_ids().collect();
        let members: Vec<_> = stored
            .nodes()
            .map(|(id, node)| {
                // A membership written before the log carried names reads
                // them from `cluster.peers`.
                let name = Some(node.name.as_str())
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .or_else(|| self.publisher.member(*id).map(|p| p.name.to_string()));
                json!({
                    "id": id,
                    "name": name,
                    "role": if voters.contains(id) { "voter" } else { "learner" },
                    "cluster": node.addr,
                    "public_url": Some(node.public_url.as_str()).filter(|u| !u.is_empty()),
                    "witness": node.witness,
                    "leader": m.current_leader == Some(*id),
                    "matched_index": matched_index(&m, *id),
                })
            })
            .collect();
        json!({
            "log_index": m.membership_config.log_id().as_ref().map(|l| l.index),
            "joint": stored.get_joint_config().len() > 1,
            "members": members,
        })
    }

    /// The Raft part of `/status`.
    pub fn status(&self) -> serde_json::Value {
        let m = self.metrics();
        let now = Instant::now();
        let name = |id: &u64| self.publisher.member(*id).map(|p| p.name.to_string());
        let peers: Vec<_> = self
            .publisher
            .members()
            .into_iter()
            .map(|(id, p)| {
                let matched = matched_index(&m, id);
                let acked_ms_ago = ack_age(&m, id).map(|a| a.as_millis() as u64);
                json!({
                    "id": id,
                    "name": p.name.as_ref(),
                    "witness": p.witness,
                    "leader": m.current_leader == Some(id),
                    "matched_index": matched,
                    "last_ack_ms_ago": acked_ms_ago,
                    "app_up": if id == self.me {
                        self.apps.get().map(|apps| apps.own.is_up())
                    } else {
                        self.apps.get().and_then(|apps| apps.peers.app_up(&p.name))
                    },
                })
            })
            .collect();
        json!({
            "node_id": self.me,
            "witness": self.witness,
            "state": format!("{:?}", m.state),
            "term": m.current_term,
            "leader": m.current_leader.as_ref().and_then(name),
            "last_log_index": m.last_log_index,
            "committed_index": m.cluster_committed.map(|l| l.index),
            "applied_index": m.last_applied.map(|l| l.index),
            "snapshot_index": m.snapshot.map(|l| l.index),
            "purged_index": m.purged.map(|l| l.index),
            "quorum_ack_ms_ago": self.quorum_ack_age(&m).map(|d| d.as_millis() as u64),
            "handing_off": self.publisher.handing_off(),
            "takeover_hold_ms_left": ms_left(self.publisher.hold_ends(now), now),
            "startup_quiet_ms_left": ms_left(Some(self.quiet.ends()).filter(|end| *end > now), now),
            "peers": peers,
            "membership": self.membership(),
            "not_serving": self.why_no_primary(),
        })
    }

    fn quorum_ack_age(&self, m: &RaftMetrics<TypeConfig>) -> Option<Duration> {
        match (&m.state, &m.last_quorum_acked) {
            (ServerState::Leader, Some(at)) => Some(age(**at)),
            _ => None,
        }
    }

    /// Gauges that age between Raft events, brought up to date for a scrape.
    pub fn refresh_gauges(&self) {
        let m = self.metrics();
        metrics::set_raft_term(m.current_term);
        let peer_acks: Vec<(String, Option<Duration>)> = self
            .publisher
            .members()
            .into_iter()
            .filter(|(id, _)| *id != self.me)
            .map(|(id, p)| (p.name.to_string(), ack_age(&m, id)))
            .collect();
        metrics::set_raft_progress(
            m.cluster_committed.map(|l| l.index),
            self.quorum_ack_age(&m),
            &peer_acks,
        );
    }
}

fn ms_left(until: Option<Instant>, now: Instant) -> Option<u64> {
    until.map(|end| {
        u64::try_from(end.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
    })
}

/// Leader only: how far `id`'s log is known to match ours.
fn matched_index(m: &RaftMetrics<TypeConfig>, id: u64) -> Option<u64> {
    m.replication
        .as_ref()
        .and_then(|r| r.get(&id).cloned().flatten())
        .map(|log_id| log_id.index)
}

/// Leader only: how long ago `id` last acknowledged us.
fn ack_age(m: &RaftMetrics<TypeConfig>, id: u64) -> Option<Duration> {
    m.heartbeat
        .as_ref()
        .and_then(|h| h.get(&id).cloned().flatten())
        .map(|at| age(*at))
}
