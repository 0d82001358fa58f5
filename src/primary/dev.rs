//! `primary.mode = "dev"`: one node, always the primary, no cluster.

use std::sync::Arc;

use tokio::sync::watch;

use super::{PrimaryState, PrimaryWatch, Role};

#[derive(Debug)]
pub struct DevPrimary {
    // Held so the channel stays open for the life of the node.
    _tx: watch::Sender<PrimaryState>,
    rx: watch::Receiver<PrimaryState>,
}

impl DevPrimary {
    pub fn new(node_name: &str) -> Self {
        let (tx, rx) = watch::channel(PrimaryState {
            role: Role::Primary,
            term: 0,
            primary: Some(Arc::from(node_name)),
        });
        Self { _tx: tx, rx }
    }

    pub fn watch(&self) -> PrimaryWatch {
        PrimaryWatch::new(self.rx.clone())
    }
}
