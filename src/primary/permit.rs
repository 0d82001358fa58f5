//! The permit phase of the write path: the right to pass one write to
//! this node's app. `PrimarySource::write_permit` grants it; the fence
//! (`proxy/fence.rs`) asks it again before every socket write of that
//! request.

use std::sync::Arc;
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
    _in_flight: Option<GatePass>,
}

impl WritePermit {
    pub(super) fn new(term: u64, cell: Arc<PrimaryCell>, in_flight: Option<GatePass>) -> Self {
        Self {
            term,
            cell,
            _in_flight: in_flight,
        }
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn holds(&self, now: Instant) -> bool {
        let state = self.cell.current();
        state.term == self.term && state.may_write(now)
    }
}
