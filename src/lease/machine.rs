//! The lease state as the Raft state machine holds it: applied from the
//! log, snapshotted as one blob, and watched by whoever needs to know who
//! holds the lease (status, routing) without polling.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

use super::state::{LeaseCommand, LeaseState, LeaseTable};

#[derive(Debug)]
pub struct LeaseMachine {
    table: Mutex<LeaseTable>,
    /// Bumped after every applied change or restore.
    changes: watch::Sender<u64>,
}

impl LeaseMachine {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(LeaseTable::default()),
            changes: watch::channel(0).0,
        })
    }

    pub fn apply(&self, command: LeaseCommand, index: u64) -> bool {
        let result = self.lock().apply(command, index, Instant::now());
        self.changes.send_modify(|n| *n += 1);
        result
    }

    /// The replicated state as the snapshot's data.
    pub fn snapshot(&self) -> io::Result<Vec<u8>> {
        serde_json::to_vec(&self.lock().state).map_err(io::Error::other)
    }

    /// Replaces the state with a snapshot's data; empty data (a snapshot
    /// from before the lease existed) is an empty state.
    pub fn restore(&self, data: &[u8]) -> io::Result<()> {
        let state: LeaseState = if data.is_empty() {
            LeaseState::default()
        } else {
            serde_json::from_slice(data).map_err(io::Error::other)?
        };
        self.lock().restore(state);
        self.changes.send_modify(|n| *n += 1);
        Ok(())
    }

    pub fn read<R>(&self, f: impl FnOnce(&LeaseTable) -> R) -> R {
        f(&self.lock())
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A poisoned lock only means a panic mid-update of plain data.
    fn lock(&self) -> MutexGuard<'_, LeaseTable> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
