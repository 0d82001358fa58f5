//! One task per node follows LiteFS: it reads `/info`, then follows
//! `/events`, passing primary changes to the LiteFS primary source (in
//! `litefs` mode) and transactions to the read-your-writes position. While
//! the API is unreachable it falls back to the `.primary` file and retries
//! the API every second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::api::{self, Event};
use crate::consistency::Position;
use crate::log_limit::{self, LogLimit};
use crate::metrics;
use crate::shutdown::Shutdown;

const RECONNECT_EVERY: Duration = Duration::from_secs(1);
const FALLBACK_POLL: Duration = Duration::from_millis(200);

/// What LiteFS says about the primary, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseView {
    /// LiteFS holds the lease here.
    Primary,
    /// Another node (by LiteFS hostname) holds it.
    Replica(String),
    /// No primary known, or the API is down and `.primary` is absent.
    Unknown,
}

/// Receives what the watcher learns.
pub trait Watcher: Send + Sync + 'static {
    fn lease(&self, view: LeaseView, from_api: bool);
}

pub fn spawn(
    api: Uri,
    mount: PathBuf,
    db: String,
    lease: Option<Arc<dyn Watcher>>,
    position: Option<Arc<Position>>,
    mut shutdown: Shutdown,
) {
    tokio::spawn(async move {
        let client: api::ApiClient = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .build_http();
        loop {
            let followed = follow(&client, &api, &db, lease.as_deref(), position.as_deref());
            tokio::select! {
                result = followed => {
                    metrics::set_litefs_api_up(false);
                    if let Err(error) = result {
                        // LiteFS down means this fails every second.
                        static LOST: LogLimit = LogLimit::new(log_limit::EVERY);
                        if let Some(suppressed) = LOST.allow("") {
                            tracing::warn!(%error, suppressed, "lost the LiteFS API; following the .primary file until it is back");
                        }
                    }
                }
                _ = shutdown.begun() => return,
            }
            // Fallback until the next reconnect attempt.
            let until = tokio::time::Instant::now() + RECONNECT_EVERY;
            while tokio::time::Instant::now() < until {
                if let Some(lease) = &lease {
                    lease.lease(from_primary_file(&mount), false);
                }
                tokio::select! {
                    _ = tokio::time::sleep(FALLBACK_POLL) => {}
                    _ = shutdown.begun() => return,
                }
            }
        }
    });
}

/// Reads `/info`, then follows `/events` until it ends or fails.
async fn follow(
    client: &api::ApiClient,
    api_uri: &Uri,
    db: &str,
    lease: Option<&dyn Watcher>,
    position: Option<&Position>,
) -> Result<(), String> {
    let info = api::info(client, api_uri).await?;
    if let Some(lease) = lease {
        lease.lease(view(info.is_primary, &info.primary.hostname), true);
    }
    let mut events = api::events(client, api_uri).await?;
    metrics::set_litefs_api_up(true);
    tracing::info!(api = %api_uri, "following LiteFS events");
    while let Some(event) = events.next().await {
        match event? {
            Event::Primary {
                is_primary,
                hostname,
            } => {
                if let Some(lease) = lease {
                    lease.lease(view(is_primary, &hostname), true);
                }
            }
            Event::Tx { db: event_db, txid } if event_db == db => {
                if let Some(position) = position {
                    position.observe(txid);
                }
            }
            Event::Tx { .. } | Event::Other => {}
        }
    }
    Err("LiteFS closed the event stream".to_owned())
}

fn view(is_primary: bool, hostname: &str) -> LeaseView {
    match (is_primary, hostname) {
        (true, _) => LeaseView::Primary,
        (false, "") => LeaseView::Unknown,
        (false, host) => LeaseView::Replica(host.to_owned()),
    }
}

fn from_primary_file(mount: &std::path::Path) -> LeaseView {
    match super::read_primary_file(mount) {
        Ok(Some(host)) => LeaseView::Replica(host),
        Ok(None) => LeaseView::Unknown,
        Err(error) => {
            static UNREADABLE: LogLimit = LogLimit::new(log_limit::EVERY);
            if let Some(suppressed) = UNREADABLE.allow("") {
                tracing::warn!(%error, suppressed, "cannot read .primary");
            }
            LeaseView::Unknown
        }
    }
}
