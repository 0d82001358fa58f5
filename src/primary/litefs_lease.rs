//! `primary.mode = "litefs"`: LiteFS owns the lease; litegate follows it.
//! LiteFS hostnames are matched to `cluster.peers` by `name`.
//!
//! The fencing token is 0: LiteFS itself refuses writes on a node that does
//! not hold the lease, and a forwarded write is let through only while this
//! node's LiteFS says it is the primary.

use std::collections::HashSet;
use std::sync::Arc;

use super::{PrimaryCell, PrimaryState, PrimaryWatch, Role};
use crate::litefs::{LeaseView, Watcher};
use crate::log_limit::{self, LogLimit};
use crate::metrics;

#[derive(Debug)]
pub struct LitefsLease {
    me: Arc<str>,
    names: HashSet<String>,
    cell: Arc<PrimaryCell>,
}

impl LitefsLease {
    pub fn new(me: &str, names: HashSet<String>) -> Self {
        let cell = PrimaryCell::new(PrimaryState::unknown());
        metrics::set_is_primary(false);
        Self {
            me: Arc::from(me),
            names,
            cell,
        }
    }

    pub fn watch(&self) -> PrimaryWatch {
        self.cell.watch()
    }
}

impl Watcher for LitefsLease {
    fn lease(&self, view: LeaseView, from_api: bool) {
        let next = match view {
            LeaseView::Primary => PrimaryState {
                role: Role::Primary,
                term: 0,
                primary: Some(Arc::clone(&self.me)),
                lease_deadline: None,
            },
            LeaseView::Replica(host) if self.names.contains(&host) && *host != *self.me => {
                PrimaryState {
                    role: Role::Replica,
                    term: 0,
                    primary: Some(Arc::from(host.as_str())),
                    lease_deadline: None,
                }
            }
            LeaseView::Replica(host) => {
                static UNKNOWN: LogLimit = LogLimit::new(log_limit::EVERY);
                if let Some(suppressed) = UNKNOWN.allow(&host) {
                    tracing::warn!(%host, suppressed, "LiteFS names a primary that is not in cluster.peers (peers are matched by name); holding writes");
                }
                PrimaryState::unknown()
            }
            LeaseView::Unknown => PrimaryState::unknown(),
        };
        let changed = self.cell.publish(next.clone());
        if changed {
            tracing::info!(
                role = next.role.as_str(),
                primary = next.primary.as_deref().unwrap_or("-"),
                from_api,
                "LiteFS lease changed"
            );
            metrics::set_is_primary(next.role == Role::Primary);
            metrics::observe_primary(next.primary.as_deref());
        }
    }
}
