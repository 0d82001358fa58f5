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
//! moves to another node with the leadership, and so with a higher term
//! (the lock index alone starts again at 1 after `Behavior=delete`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use openraft::async_runtime::watch::WatchReceiver;

use super::raft::RaftLeadership;
use super::{PrimaryCell, PrimaryState, PrimaryWatch, Role, WritePermit};
use crate::lease::LeaseMachine;
use crate::shutdown::Shutdown;

pub struct RaftLease {
    leadership: Arc<RaftLeadership>,
    machine: Arc<LeaseMachine>,
    key: String,
    me: u64,
    names: BTreeMap<u64, Arc<str>>,
    cell: Arc<PrimaryCell>,
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
            names: config
                .cluster
                .peers
                .iter()
                .map(|p| (p.id, Arc::from(p.name.as_str())))
                .collect(),
            cell: PrimaryCell::new(PrimaryState::unknown()),
        })
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
        let raft = self.leadership.watch();
        raft.permit(Some(self.leadership.write_permit()?))
    }

    /// What the request path sees, from Raft's published state and the
    /// lease holder in this node's state machine.
    fn compute(&self, raft: &PrimaryState) -> PrimaryState {
        let holder = self
            .machine
            .read(|t| t.holder(&self.key).map(|(session, _)| session.owner));
        match holder {
            Some(node) if node == self.me && raft.role == Role::Primary => PrimaryState {
                role: Role::Primary,
                term: raft.term,
                primary: self.names.get(&self.me).cloned(),
                lease_deadline: raft.lease_deadline,
            },
            Some(node) if node != self.me => PrimaryState {
                role: Role::Replica,
                term: raft.term,
                primary: self.names.get(&node).cloned(),
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
            let mut metrics = this.leadership.raft().metrics();
            let mut raft_watch = this.leadership.watch();
            loop {
                raft_watch.mark_seen();
                let next = this.compute(&raft_watch.current());
                let me_primary = next.role == Role::Primary;
                if this.cell.publish(next) {
                    crate::metrics::set_is_primary(me_primary);
                }
                let far = Instant::now() + std::time::Duration::from_secs(3600);
                tokio::select! {
                    changed = lease_changes.changed() => if changed.is_err() { break },
                    changed = metrics.changed() => if changed.is_err() { break },
                    _ = raft_watch.changed_before(far) => {}
                    () = stop.begun() => break,
                }
            }
        });
    }
}
