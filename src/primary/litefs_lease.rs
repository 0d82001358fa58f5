//! `primary.mode = "litefs"`: LiteFS owns the lease; litegate follows it.
//! LiteFS hostnames are matched to `cluster.peers` by `name`; with no
//! peers (fly-replay mode, where Fly's edge finds the primary by its
//! machine ID) any hostname LiteFS names is the primary.
//!
//! The fencing token is 0: LiteFS itself refuses writes on a node that does
//! not hold the lease, and a forwarded write is let through only while this
//! node's LiteFS says it is the primary.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::{PrimaryCell, PrimaryState, PrimaryWatch, Role};
use crate::litefs::{LeaseView, Watcher};
use crate::log_limit::{self, LogLimit};
use crate::metrics;

#[derive(Debug)]
pub struct LitefsLease {
    me: Arc<str>,
    /// `None`: no peer list, every hostname is taken as LiteFS gives it.
    names: Option<HashSet<String>>,
    cell: Arc<PrimaryCell>,
    /// Whether the last view came from LiteFS's API (else from the
    /// `.primary` file, while the API is down or not answering).
    from_api: AtomicBool,
}

impl LitefsLease {
    pub fn new(me: &str, names: Option<HashSet<String>>) -> Self {
        let cell = PrimaryCell::new(PrimaryState::unknown());
        metrics::set_is_primary(false);
        Self {
            me: Arc::from(me),
            names,
            cell,
            from_api: AtomicBool::new(false),
        }
    }

    pub fn watch(&self) -> PrimaryWatch {
        self.cell.watch()
    }

    /// For `/status`: where the current view comes from.
    pub fn status(&self) -> serde_json::Value {
        let source = if self.from_api.load(Ordering::Relaxed) {
            "api"
        } else {
            "primary_file"
        };
        serde_json::json!({ "view_from": source })
    }
}

impl Watcher for LitefsLease {
    fn lease(&self, view: LeaseView, from_api: bool) {
        if self.from_api.swap(from_api, Ordering::Relaxed) != from_api {
            if from_api {
                tracing::info!("following LiteFS's API again");
            } else {
                tracing::warn!(
                    "LiteFS's API is not answering: the view comes from the .primary file"
                );
            }
        }
        let next = match view {
            LeaseView::Primary => PrimaryState {
                role: Role::Primary,
                term: 0,
                primary: Some(Arc::clone(&self.me)),
                lease_deadline: None,
            },
            LeaseView::Replica(host)
                if *host != *self.me
                    && self
                        .names
                        .as_ref()
                        .is_none_or(|names| names.contains(&host)) =>
            {
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
