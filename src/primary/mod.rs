//! Who the primary is. Each `primary.mode` is a source that publishes the
//! current [`PrimaryState`] on a watch channel; the request path only reads
//! the latest value.

mod dev;
mod litefs_lease;
mod static_primary;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

pub use dev::DevPrimary;
pub use litefs_lease::LitefsLease;
pub use static_primary::{Epoch, StaticPrimary};

/// The node's source of truth for who the primary is, one per `primary.mode`.
#[derive(Debug)]
pub enum PrimarySource {
    Dev(DevPrimary),
    Static(StaticPrimary),
    Litefs(Arc<LitefsLease>),
}

impl PrimarySource {
    pub fn watch(&self) -> PrimaryWatch {
        match self {
            PrimarySource::Dev(d) => d.watch(),
            PrimarySource::Static(s) => s.watch(),
            PrimarySource::Litefs(l) => l.watch(),
        }
    }

    /// Whether a write forwarded under `sender_term` may reach this node's
    /// app now: this node must be the primary, at that term where terms are
    /// comparable across nodes.
    pub fn admits(&self, state: &PrimaryState, sender_term: Option<u64>) -> bool {
        state.role == Role::Primary
            && match self {
                PrimarySource::Dev(_) | PrimarySource::Static(_) => sender_term == Some(state.term),
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
}

/// A read-only view of the current primary, cheap to clone per request.
#[derive(Debug, Clone)]
pub struct PrimaryWatch(watch::Receiver<PrimaryState>);

impl PrimaryWatch {
    pub fn new(rx: watch::Receiver<PrimaryState>) -> Self {
        Self(rx)
    }

    pub fn current(&self) -> PrimaryState {
        self.0.borrow().clone()
    }

    /// Waits until the state changes or `deadline` passes; false if it
    /// passed (or the source is gone).
    pub async fn changed_before(&mut self, deadline: Instant) -> bool {
        matches!(
            tokio::time::timeout_at(deadline.into(), self.0.changed()).await,
            Ok(Ok(()))
        )
    }
}
