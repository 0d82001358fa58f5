//! `litegate handoff` with `[lease]`: LiteFS's own handoff, so the
//! database's primary moves in well under a second instead of waiting for
//! the old primary's next renew (up to TTL/2) and the new one's next
//! acquire try (up to 1 s).
//!
//! After the writes drained and before Raft leadership moves, the leader
//! (whose LiteFS holds the lease) asks the target's litegate to ask its
//! LiteFS to `POST /promote`. That LiteFS asks the primary's LiteFS for the
//! lease; the primary renews once more and passes its session down the
//! replication stream; the target's LiteFS renews that session and
//! re-acquires the key with it. The leader lets exactly that node do so
//! while the handoff runs ([`LeaseService::open_handoff`]), and the state
//! machine allows it only with the holder's own session. Then Raft
//! leadership follows. Writes stay held throughout: the old leader's gate
//! is closed, and the target takes none before it leads.
//!
//! If any of it fails (no LiteFS API, the target's LiteFS not connected to
//! the primary, a timeout), the handoff goes on as without this step: the
//! old holder's next renew is answered `404` and it steps down.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use super::LeaseService;
use crate::primary::HandoffStep;

/// The cluster-listener path the leader asks the target's litegate on.
pub const PROMOTE_PATH: &str = "/_litegate/lease/promote";

/// LiteFS's call bound (`litefs::api::CALL_TIMEOUT`) plus the hop to the
/// target's litegate.
const PROMOTE_WITHIN: Duration = Duration::from_millis(2500);

/// From LiteFS accepting `/promote` to the re-acquire applied here: a
/// stream frame and two lease calls.
const TAKEN_WITHIN: Duration = Duration::from_secs(2);

/// How long the target may take the lease over without leading; the Raft
/// transfer that follows closes it sooner ([`HandoffStep::after_transfer`]).
const WINDOW: Duration = Duration::from_secs(10);

impl HandoffStep for LeaseService {
    fn before_transfer(&self, target: u64) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.holder().map(|h| h.node) != Some(self.me()) {
                // This node's LiteFS does not hold the lease: nothing of
                // LiteFS's to hand over.
                return;
            }
            self.open_handoff(target, Instant::now() + WINDOW);
            let mut changes = self.machine().subscribe();
            if let Err(error) = self.call_peer(target, PROMOTE_PATH, PROMOTE_WITHIN).await {
                tracing::warn!(target, %error, "the target's LiteFS did not take the lease over; its holder here steps down at its next renew instead");
                return;
            }
            let taken = tokio::time::timeout(TAKEN_WITHIN, async {
                loop {
                    if self.holder().map(|h| h.node) == Some(target) {
                        return true;
                    }
                    if changes.changed().await.is_err() {
                        return false;
                    }
                }
            })
            .await;
            if !matches!(taken, Ok(true)) {
                tracing::warn!(
                    target,
                    "the target's LiteFS accepted the handoff but has not re-acquired the lease; moving leadership anyway"
                );
            }
        })
    }

    fn after_transfer(&self) {
        self.close_handoff();
    }
}
