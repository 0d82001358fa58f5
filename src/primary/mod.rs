//! Who the primary is. Each `primary.mode` is a source that publishes the
//! current [`PrimaryState`] on a watch channel; the request path only reads
//! the latest value.

pub mod app_aware;
mod dev;
mod litefs_lease;
mod permit;
pub mod raft;
mod raft_lease;
pub mod raft_membership;
mod raft_publisher;
mod static_primary;
pub mod static_promote;
mod write_gate;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::sync::watch;

pub use dev::DevPrimary;
pub use litefs_lease::LitefsLease;
pub use permit::WritePermit;
pub use raft::{HandoffStep, RaftLeadership};
pub use raft_lease::RaftLease;
pub use static_primary::{Epoch, EpochState, PromoteError, StaticPrimary, Vote};
use write_gate::GatePass;

/// The node's source of truth for who the primary is, one per `primary.mode`.
#[derive(Debug)]
pub enum PrimarySource {
    Dev(DevPrimary),
    Static(Arc<StaticPrimary>),
    Litefs(Arc<LitefsLease>),
    Raft(Arc<RaftLeadership>),
    /// Raft mode with `[lease]`: the primary is where LiteFS's lease is.
    RaftLease(Arc<RaftLease>),
}

impl PrimarySource {
    /// Why this node itself cannot know a primary (raft: not joined, or a
    /// refused data dir), for the text of a `503 no-primary`.
    pub fn why_no_primary(&self) -> Option<String> {
        self.raft().and_then(|r| r.why_no_primary())
    }

    pub fn watch(&self) -> PrimaryWatch {
        match self {
            PrimarySource::Dev(d) => d.watch(),
            PrimarySource::Static(s) => s.watch(),
            PrimarySource::Litefs(l) => l.watch(),
            PrimarySource::Raft(r) => r.watch(),
            PrimarySource::RaftLease(l) => l.watch(),
        }
    }

    /// Raft's leadership, in the modes that elect with Raft (handoff,
    /// status, gauges).
    pub fn raft(&self) -> Option<&Arc<RaftLeadership>> {
        match self {
            PrimarySource::Raft(r) => Some(r),
            PrimarySource::RaftLease(l) => Some(l.leadership()),
            _ => None,
        }
    }

    /// The right to pass one write to this node's app, if this node may
    /// write now. In raft mode the handoff's gate is entered first and the
    /// published state looked at after: a handoff closes the gate and
    /// publishes "not primary" under one lock, so a write either is counted
    /// in the handoff's drain or sees the handoff.
    pub fn write_permit(&self, watch: &PrimaryWatch) -> Option<WritePermit> {
        let in_flight = match self {
            PrimarySource::Raft(r) => Some(r.write_permit()?),
            PrimarySource::RaftLease(l) => return l.write_permit(),
            _ => None,
        };
        watch.permit(in_flight)
    }

    /// Whether a write forwarded under `sender_term` may reach this node's
    /// app under `permit`: at that term, where terms are comparable across
    /// nodes.
    pub fn admits(&self, permit: &WritePermit, sender_term: Option<u64>) -> bool {
        let term = permit.term();
        match self {
            PrimarySource::Dev(_) | PrimarySource::Static(_) => sender_term == Some(term),
            // The permit's lease is the fence. A sender that is behind
            // still reached the leader; one that knows a newer term knows
            // this node is deposed.
            PrimarySource::Raft(_) | PrimarySource::RaftLease(_) => {
                sender_term.is_none_or(|t| t <= term)
            }
            // LiteFS fences its own writes and has no cluster-wide term.
            PrimarySource::Litefs(_) => true,
        }
    }

    /// A peer told us the primary is `primary` at `term` (a `421` answer,
    /// an announcement, a poll). Sources that can check it take it.
    pub fn observe(&self, term: u64, primary: &str) {
        if let PrimarySource::Static(s) = self {
            s.adopt(&Epoch {
                epoch: term,
                primary: primary.to_owned(),
            });
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This node's app may take writes.
    Primary,
    /// Another node is the primary.
    Replica,
    /// No primary is known (election under way, lease lost).
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryState {
    pub role: Role,
    /// The fencing token: raft term or static epoch; 0 in dev mode.
    pub term: u64,
    /// The primary's node name, when one is known.
    pub primary: Option<Arc<str>>,
    /// Raft only: until when this node may pass writes to its app, from the
    /// last quorum acknowledgement. `None` where leadership has no lease.
    pub lease_deadline: Option<Instant>,
}

impl PrimaryState {
    pub fn unknown() -> Self {
        Self {
            role: Role::Unknown,
            term: 0,
            primary: None,
            lease_deadline: None,
        }
    }

    /// Whether this node's app may take a write at `now`: it is the primary
    /// and, where leadership is leased, the lease still holds.
    pub fn may_write(&self, now: Instant) -> bool {
        self.role == Role::Primary && self.lease_deadline.is_none_or(|until| now < until)
    }

    /// Same role, term and primary: a lease renewal alone is not a change
    /// anyone waits for.
    fn same_leadership(&self, other: &PrimaryState) -> bool {
        self.role == other.role && self.term == other.term && self.primary == other.primary
    }
}

/// Where a source publishes the current [`PrimaryState`]. Requests read it
/// without a lock (one atomic load); waiters are woken only when the
/// leadership changes or a lapsed lease is renewed.
#[derive(Debug)]
pub struct PrimaryCell {
    state: ArcSwap<PrimaryState>,
    changes: watch::Sender<u64>,
}

impl PrimaryCell {
    pub fn new(initial: PrimaryState) -> Arc<Self> {
        Arc::new(Self {
            state: ArcSwap::from_pointee(initial),
            changes: watch::channel(0).0,
        })
    }

    pub fn current(&self) -> Arc<PrimaryState> {
        self.state.load_full()
    }

    /// Stores `next`; returns whether the leadership (role, term, primary)
    /// changed.
    pub fn publish(&self, next: PrimaryState) -> bool {
        let now = Instant::now();
        let previous = self.state.swap(Arc::new(next));
        let next = self.state.load();
        let changed = !previous.same_leadership(&next);
        let renewed = !previous.may_write(now) && next.may_write(now);
        if changed || renewed {
            self.changes.send_modify(|n| *n += 1);
        }
        changed
    }

    pub fn watch(self: &Arc<Self>) -> PrimaryWatch {
        PrimaryWatch {
            cell: Arc::clone(self),
            changes: self.changes.subscribe(),
        }
    }
}

/// A read-only view of the current primary, cheap to clone per request.
#[derive(Debug, Clone)]
pub struct PrimaryWatch {
    cell: Arc<PrimaryCell>,
    changes: watch::Receiver<u64>,
}

impl PrimaryWatch {
    pub fn current(&self) -> Arc<PrimaryState> {
        self.cell.current()
    }

    /// A write permit if this node may write now; `in_flight` (counted by
    /// the caller before this look) lives as long as the permit.
    pub fn permit(&self, in_flight: Option<GatePass>) -> Option<WritePermit> {
        let state = self.current();
        state
            .may_write(Instant::now())
            .then(|| WritePermit::new(state.term, Arc::clone(&self.cell), in_flight))
    }

    /// Forgets changes published so far: the next wait is for a new one.
    pub fn mark_seen(&mut self) {
        self.changes.borrow_and_update();
    }

    /// Waits until the leadership changes (or a lapsed lease is renewed)
    /// or `deadline` passes; false if it passed (or the source is gone).
    pub async fn changed_before(&mut self, deadline: Instant) -> bool {
        matches!(
            tokio::time::timeout_at(deadline.into(), self.changes.changed()).await,
            Ok(Ok(()))
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn leader(term: u64, lease_deadline: Option<Instant>) -> PrimaryState {
        PrimaryState {
            role: Role::Primary,
            term,
            primary: Some(Arc::from("a")),
            lease_deadline,
        }
    }

    #[tokio::test]
    async fn waiters_wake_on_leadership_changes_and_lapsed_leases_only() {
        let now = Instant::now();
        let cell = PrimaryCell::new(leader(1, Some(now + Duration::from_secs(60))));
        let mut watch = cell.watch();
        assert!(watch.current().may_write(now));

        // A renewal of a lease that still holds wakes nobody.
        assert!(!cell.publish(leader(1, Some(now + Duration::from_secs(61)))));
        assert!(!watch.changed_before(Instant::now()).await);

        // A lapsed lease stops writes; its renewal wakes the held ones.
        cell.publish(leader(1, Some(now)));
        assert!(!watch.current().may_write(Instant::now()));
        assert!(!watch.changed_before(Instant::now()).await);
        cell.publish(leader(1, Some(Instant::now() + Duration::from_secs(60))));
        assert!(
            watch
                .changed_before(Instant::now() + Duration::from_secs(1))
                .await
        );

        // A new term is a change.
        assert!(cell.publish(leader(2, None)));
        assert!(
            watch
                .changed_before(Instant::now() + Duration::from_secs(1))
                .await
        );
        assert!(
            watch.current().may_write(Instant::now()),
            "no lease: no expiry"
        );
    }
}
