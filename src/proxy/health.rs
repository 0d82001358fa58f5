//! Whether the local app accepts connections: probed on an interval, and
//! marked down at once when a proxied request cannot connect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::metrics;
use crate::shutdown::Shutdown;

#[derive(Debug, Default)]
pub struct UpstreamHealth {
    up: AtomicBool,
}

impl UpstreamHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!("the app accepts connections");
            } else {
                tracing::warn!("the app does not accept connections");
            }
        }
        metrics::set_upstream_up(up);
    }

    /// Probes `host:port` every `interval` until shutdown.
    pub fn spawn_prober(
        self: &Arc<Self>,
        address: String,
        interval: Duration,
        connect_timeout: Duration,
        mut shutdown: Shutdown,
    ) {
        let health = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.begun() => return,
                }
                health.set(probe(&address, connect_timeout).await);
            }
        });
    }
}

/// Whether `address` accepts a TCP connection within `connect_timeout`.
pub async fn probe(address: &str, connect_timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}
