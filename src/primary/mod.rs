//! Who the primary is. Each `primary.mode` is a source that publishes the
//! current [`PrimaryState`] on a watch channel; the request path only reads
//! the latest value.

mod dev;

use std::sync::Arc;

use tokio::sync::watch;

pub use dev::DevPrimary;

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
}
