//! `primary.mode = "raft"` with `[lease]`: the primary is the node whose
//! LiteFS holds the lease kept in litegate's Raft ([`crate::lease`]), read
//! from this node's own state machine as it applies the log.
//!
//! The lease is granted only to the LiteFS on the Raft leader's node, so
//! the holder and the leader coincide once LiteFS has taken it. Until then
//! (an election, a handoff, a LiteFS that has not acquired yet) nobody is
//! published as primary, and writes are held. This node takes writes only
//! when its LiteFS holds the lease **and** it is the Raft leader inside its
//! leader lease: the permit is Raft's (its gate, its term, its fence), so a
//! handoff drains it and a deposed leader's writes are refused exactly as
//! in plain raft mode; the lease adds the condition that the database's
//! primary is here. The fencing token is the Raft term: the lease only
//! moves to another node with the leadership, and so with a higher term.
//! The app also gets the hold itself (session, lock index: `LeaseHold`)
//! to match against LiteFS's lock, but that pair does not order holders:
//! a handoff re-acquires with the old session, and the lock index starts
//! again at 1 after `Behavior=delete`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::async_runtime::watch::WatchReceiver;

use super::permit::LeaseHold;
use super::raft::RaftLeadership;
use super::{PrimaryCell, PrimaryState, PrimaryWatch, Role, WritePermit};
use crate::lease::LeaseMachine;
use crate::litefs::{LeaseView, Watcher};
use crate::shutdown::Shutdown;

pub struct RaftLease {
    leadership: Arc<RaftLeadership>,
    machine: Arc<LeaseMachine>,
    key: String,
    me: u64,
    cell: Arc<PrimaryCell>,
    takeover_timeout: Duration,
    /// Whether this node's LiteFS says it is primary (`/events`), where
    /// litegate follows it (`litefs.mount` set): `None` until it has said.
    litefs_primary: tokio::sync::watch::Sender<Option<bool>>,
    follows_litefs: bool,
}

impl std::fmt::Debug for RaftLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLease")
            .field("me", &self.me)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RaftLease {
    pub fn new(
        leadership: Arc<RaftLeadership>,
        machine: Arc<LeaseMachine>,
        config: &crate::config::Config,
    ) -> Arc<Self> {
        Arc::new(Self {
            leadership,
            machine,
            key: config.lease.key.clone(),
            me: config.node.id.unwrap_or_default(),
            cell: PrimaryCell::new(PrimaryState::unknown()),
            takeover_timeout: config.lease.takeover_timeout.get(),
            litefs_primary: tokio::sync::watch::Sender::new(None),
            follows_litefs: !config.litefs.mount.is_empty(),
        })
    }

    /// A node's name in the peer table, which follows the Raft
    /// membership: a holder added with `litegate member add` has one too.
    fn name_of(&self, node: u64) -> Option<Arc<str>> {
        self.leadership
            .peers()
            .by_id(node)
            .map(|peer| Arc::from(peer.name.as_str()))
    }

    pub fn leadership(&self) -> &Arc<RaftLeadership> {
        &self.leadership
    }

    pub fn watch(&self) -> PrimaryWatch {
        self.cell.watch()
    }

    /// Raft's permit (gate, term, leader lease), given only while this
    /// node's LiteFS holds the lease.
    pub fn write_permit(&self) -> Option<WritePermit> {
        if self.cell.current().role != Role::Primary {
            return None;
        }
        let hold = self.machine.read(|t| {
            t.holder(&self.key)
                .filter(|(session, _)| session.owner == self.me)
                .map(|(session, lock_index)| LeaseHold {
                    session: session.id.clone(),
                    lock_index,
                })
        })?;
        let raft = self.leadership.watch();
        Some(
            raft.permit(Some(self.leadership.write_permit()?))?
                .with_lease(hold),
        )
    }

    /// What the request path sees, from Raft's published state and the
    /// lease holder in this node's state machine.
    fn compute(&self, raft: &PrimaryState) -> PrimaryState {
        let holder = self
            .machine
            .read(|t| t.holder(&self.key).map(|(session, _)| session.owner));
        // The state machine says who holds the lease; LiteFS says whether
        // it acts on it. They differ for a moment after an acquire, and
        // for up to a TTL when LiteFS gave the lease up but could not
        // release it: writes wait rather than reach a read-only database.
        let litefs_agrees = !self.follows_litefs || *self.litefs_primary.borrow() == Some(true);
        match holder {
            Some(node) if node == self.me && raft.role == Role::Primary && litefs_agrees => {
                PrimaryState {
                    role: Role::Primary,
                    term: raft.term,
                    primary: self.name_of(self.me),
                    lease_deadline: raft.lease_deadline,
                }
            }
            Some(node) if node != self.me => PrimaryState {
                role: Role::Replica,
                term: raft.term,
                primary: self.name_of(node),
                lease_deadline: None,
            },
            // Held here while this node does not lead (it just lost the
            // leadership; its LiteFS is about to step down), or by nobody.
            _ => PrimaryState {
                role: Role::Unknown,
                term: raft.term,
                primary: None,
                lease_deadline: None,
            },
        }
    }

    /// Republishes on every applied lease change and every Raft metrics
    /// change (which is also when Raft's leader lease is extended).
    pub fn spawn(self: &Arc<Self>, mut stop: Shutdown) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut lease_changes = this.machine.subscribe();
            let mut litefs_changes = this.litefs_primary.subscribe();
            let mut metrics = this.leadership.raft().metrics();
            let mut raft_watch = this.leadership.watch();
            let mut waiting = Takeover::default();
            loop {
                raft_watch.mark_seen();
                let raft = raft_watch.current();
                let next = this.compute(&raft);
                let me_primary = next.role == Role::Primary;
                let primary = next.primary.clone();
                if this.cell.publish(next) {
                    crate::metrics::set_is_primary(me_primary);
                    crate::metrics::observe_primary(primary.as_deref());
                }
                let now = Instant::now();
                let leading = raft.role == Role::Primary;
                let deadline = waiting.update(
                    leading && !me_primary,
                    raft.term,
                    now,
                    this.takeover_timeout,
                );
                if deadline.is_some_and(|d| now >= d) {
                    waiting.gave_up(raft.term);
                    this.hand_on();
                }
                let wake = deadline.unwrap_or(now + Duration::from_secs(3600));
                tokio::select! {
                    changed = lease_changes.changed() => if changed.is_err() { break },
                    _ = litefs_changes.changed() => {}
                    changed = metrics.changed() => if changed.is_err() { break },
                    _ = raft_watch.changed_before(wake) => {}
                    () = stop.begun() => break,
                }
            }
        });
    }

    /// This node leads but its LiteFS did not take the lease in time (it
    /// is down, or not a candidate): leadership goes to another node.
    fn hand_on(&self) {
        let leadership = Arc::clone(&self.leadership);
        tracing::warn!(
            waited = %humantime::format_duration(self.takeover_timeout),
            "this node's LiteFS has not taken the lease since it became the Raft leader; handing leadership on"
        );
        tokio::spawn(async move {
            match leadership.handoff(None).await {
                Ok(to) => tracing::info!(%to, "handed leadership on"),
                Err(error) => tracing::warn!(%error, "could not hand leadership on"),
            }
        });
    }
}

impl Watcher for RaftLease {
    fn lease(&self, view: LeaseView, _from_api: bool) {
        let primary = view == LeaseView::Primary;
        self.litefs_primary
            .send_if_modified(|seen| seen.replace(primary) != Some(primary));
    }
}

/// How long this leader has waited for its LiteFS to take the lease.
#[derive(Debug, Default)]
struct Takeover {
    /// The term and the moment this node started waiting in it.
    since: Option<(u64, Instant)>,
    /// The term it last gave up in: one handoff attempt per term.
    gave_up_in: Option<u64>,
}

impl Takeover {
    /// When to give up, if this node is waiting (`waiting`) in `term`.
    fn update(
        &mut self,
        waiting: bool,
        term: u64,
        now: Instant,
        limit: Duration,
    ) -> Option<Instant> {
        if !waiting || self.gave_up_in == Some(term) {
            self.since = None;
            return None;
        }
        let since = match self.since {
            Some((t, at)) if t == term => at,
            _ => {
                self.since = Some((term, now));
                now
            }
        };
        Some(since + limit)
    }

    fn gave_up(&mut self, term: u64) {
        self.gave_up_in = Some(term);
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_without_the_lease_gives_up_once_per_term() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(30);
        let mut w = Takeover::default();
        assert_eq!(w.update(true, 3, t0, limit), Some(t0 + limit));
        // Later looks in the same term keep the first deadline.
        assert_eq!(
            w.update(true, 3, t0 + Duration::from_secs(5), limit),
            Some(t0 + limit)
        );
        // The lease arrived: no deadline; waiting again starts afresh.
        assert_eq!(w.update(false, 3, t0 + Duration::from_secs(6), limit), None);
        let t1 = t0 + Duration::from_secs(7);
        assert_eq!(w.update(true, 3, t1, limit), Some(t1 + limit));
        w.gave_up(3);
        assert_eq!(w.update(true, 3, t1 + limit, limit), None, "once per term");
        let t2 = t1 + limit + Duration::from_secs(1);
        assert_eq!(
            w.update(true, 4, t2, limit),
            Some(t2 + limit),
            "a new term waits again"
        );
    }
}
