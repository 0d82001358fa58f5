//! `primary.mode = "dev"`: one node, always the primary, no cluster.

use std::sync::Arc;

use super::{PrimaryCell, PrimaryState, PrimaryWatch, Role};

#[derive(Debug)]
pub struct DevPrimary {
    cell: Arc<PrimaryCell>,
}

impl DevPrimary {
    pub fn new(node_name: &str) -> Self {
        Self {
            cell: PrimaryCell::new(PrimaryState {
                role: Role::Primary,
                term: 0,
                primary: Some(Arc::from(node_name)),
                lease_deadline: None,
            }),
        }
    }

    pub fn watch(&self) -> PrimaryWatch {
        self.cell.watch()
    }
}
