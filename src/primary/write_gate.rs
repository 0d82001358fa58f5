//! The permit a write needs to reach this node's app as the primary, and
//! the count a Raft handoff drains before it moves leadership.
//!
//! One atomic word holds both the number of permits out and whether the
//! gate is closed, so admitting a write and closing the gate are two
//! read-modify-writes of the same word: one of them is first. A write
//! admitted before the close is in the count the closer then waits for; a
//! write that comes after the close is refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The top bit of the word; the rest counts the permits out.
const CLOSED: usize = 1 << (usize::BITS - 1);

#[derive(Debug, Default)]
pub struct WriteGate {
    word: AtomicUsize,
}

/// Held while a write is on its way to (and at) this node's app.
#[derive(Debug)]
pub struct GatePass(Arc<WriteGate>);

impl Drop for GatePass {
    fn drop(&mut self) {
        self.0.word.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WriteGate {
    /// A permit, or `None` while the gate is closed.
    pub fn enter(self: &Arc<Self>) -> Option<GatePass> {
        let before = self.word.fetch_add(1, Ordering::AcqRel);
        if before & CLOSED != 0 {
            self.word.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(GatePass(Arc::clone(self)))
    }

    /// From now on no permit is granted; the ones out stay counted.
    pub fn close(&self) {
        self.word.fetch_or(CLOSED, Ordering::AcqRel);
    }

    pub fn open(&self) {
        self.word.fetch_and(!CLOSED, Ordering::AcqRel);
    }

    /// Permits out (a refused request may be counted for an instant).
    pub fn in_flight(&self) -> usize {
        self.word.load(Ordering::Acquire) & !CLOSED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_refuses_and_still_counts_the_permits_out() {
        let gate = Arc::new(WriteGate::default());
        let before = gate.enter().expect("an open gate grants");
        assert_eq!(gate.in_flight(), 1);
        gate.close();
        assert!(gate.enter().is_none(), "no permit once closed");
        assert_eq!(
            gate.in_flight(),
            1,
            "the permit granted before the close is counted"
        );
        drop(before);
        assert_eq!(gate.in_flight(), 0);
        gate.open();
        assert!(gate.enter().is_some());
    }

    #[test]
    fn no_permit_is_granted_that_the_close_did_not_count() {
        for _ in 0..200 {
            let gate = Arc::new(WriteGate::default());
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    let gate = Arc::clone(&gate);
                    std::thread::spawn(move || gate.enter())
                })
                .collect();
            gate.close();
            // May include requests being refused right now, never less
            // than the permits that will have been granted.
            let counted_at_close = gate.in_flight();
            let permits: Vec<GatePass> = racers
                .into_iter()
                .filter_map(|r| r.join().expect("racer"))
                .collect();
            assert!(
                permits.len() <= counted_at_close,
                "{} granted, {counted_at_close} counted at the close",
                permits.len()
            );
            assert_eq!(gate.in_flight(), permits.len());
        }
    }
}
