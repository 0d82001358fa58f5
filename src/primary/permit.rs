//! The permit phase of the write path: the right to pass one write to
//! this node's app. `PrimarySource::write_permit` grants it; the fence
//! (`proxy/fence.rs`) asks it again before every socket write of that
//! request.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::write_gate::GatePass;
use super::PrimaryCell;

/// The right to pass one write to this node's app: taken when the write is
/// admitted, and asked again by the fence (`proxy/fence.rs`) before every
/// socket write of that request. It holds while this node is still the
/// primary at the term it was taken in, inside its lease.
#[derive(Debug)]
pub struct WritePermit {
    term: u64,
    cell: Arc<PrimaryCell>,
    /// With `[lease]`: the LiteFS lease this node held when the write was
    /// admitted, told to the app next to the term.
    lease: Option<LeaseHold>,
    /// This write's place in the count a Raft handoff drains, until the
    /// app has answered it.
    in_flight: Mutex<Option<GatePass>>,
}

impl WritePermit {
    pub(super) fn new(term: u64, cell: Arc<PrimaryCell>, in_flight: Option<GatePass>) -> Self {
        Self {
            term,
            cell,
            lease: None,
            in_flight: Mutex::new(in_flight),
        }
    }

    pub(super) fn with_lease(mut self, lease: LeaseHold) -> Self {
        self.lease = Some(lease);
        self
    }

    pub fn lease(&self) -> Option<&LeaseHold> {
        self.lease.as_ref()
    }

    /// The app has answered: a handoff need not wait for the rest of the
    /// exchange (a response body read at the client's pace). The permit
    /// still fences whatever of the request is left to write.
    pub fn answered(&self) {
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn holds(&self, now: Instant) -> bool {
        let state = self.cell.current();
        state.term == self.term && state.may_write(now)
    }
}

/// Which hold of LiteFS's lease a write was admitted under: Consul's
/// (session, lock index) pair. It names the lock; the order between
/// holders is the term's, because LiteFS's handoff re-acquires with the
/// old session and `Behavior = delete` starts the lock index again at 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHold {
    pub session: String,
    pub lock_index: u64,
}

#[cfg(test)]
mod tests {
    use super::super::write_gate::WriteGate;
    use super::super::{PrimaryState, Role};
    use super::*;

    #[test]
    fn an_answered_write_leaves_the_drain_count_but_stays_fenced() {
        let gate = Arc::new(WriteGate::default());
        let cell = PrimaryCell::new(PrimaryState {
            role: Role::Primary,
            term: 4,
            primary: Some(Arc::from("a")),
            lease_deadline: None,
        });
        let permit = cell.watch().permit(gate.enter()).expect("primary");
        assert_eq!(gate.in_flight(), 1);
        permit.answered();
        assert_eq!(gate.in_flight(), 0, "a handoff need not wait for it");
        assert!(permit.holds(Instant::now()));
        cell.publish(PrimaryState {
            role: Role::Replica,
            ..(*cell.current()).clone()
        });
        assert!(!permit.holds(Instant::now()), "still fenced");
    }
}
