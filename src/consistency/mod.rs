//! Read-your-writes (DESIGN §3). After a write, the client gets the
//! primary's replication position in the `__txid` cookie; a later read on a
//! replica waits until the local position reaches it.
//!
//! The local position lives in one watch channel, advanced by LiteFS's `tx`
//! events and — only while some read is waiting — by one shared poller that
//! reads `<db>-pos`. A waiting read never polls on its own.

mod cookie;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

pub use cookie::{requested_txid, set_cookie};

use crate::config::{Config, OnTimeout};
use crate::metrics;
use crate::shutdown::Shutdown;

/// How often the shared poller reads `<db>-pos` while reads wait: well
/// under the 2 ms wake-up target, and only while someone waits.
const POLL_WHILE_WAITING: Duration = Duration::from_micros(500);

pub struct Position {
    mount: PathBuf,
    db: String,
    local: watch::Sender<u64>,
    waiting: AtomicUsize,
    someone_waits: Notify,
    pub wait_timeout: Duration,
    pub on_timeout: OnTimeout,
}

impl Position {
    /// Read-your-writes is on wherever `litefs.mount` is set.
    pub fn from_config(config: &Config) -> Option<Arc<Self>> {
        if config.litefs.mount.is_empty() {
            return None;
        }
        let mount = PathBuf::from(&config.litefs.mount);
        let start = crate::litefs::read_position(&mount, &config.litefs.db)
            .ok()
            .flatten()
            .unwrap_or(0);
        let (local, _) = watch::channel(start);
        Some(Arc::new(Self {
            mount,
            db: config.litefs.db.clone(),
            local,
            waiting: AtomicUsize::new(0),
            someone_waits: Notify::new(),
            wait_timeout: config.consistency.wait_timeout.get(),
            on_timeout: config.consistency.on_timeout,
        }))
    }

    pub fn current(&self) -> u64 {
        *self.local.borrow()
    }

    /// A newer local position (a `tx` event, or the poller). Positions only
    /// move forward here.
    pub fn observe(&self, txid: u64) {
        self.local.send_if_modified(|p| {
            let newer = txid > *p;
            if newer {
                *p = txid;
            }
            newer
        });
    }

    /// The position on disk now: on the primary, right after a write, this
    /// is what the write's `__txid` cookie carries.
    pub fn read_now(&self) -> Option<u64> {
        match crate::litefs::read_position(&self.mount, &self.db) {
            Ok(pos) => pos,
            Err(error) => {
                tracing::warn!(%error, "cannot read the LiteFS position");
                None
            }
        }
    }

    /// Waits until the local position reaches `target`, for at most
    /// `consistency.wait_timeout`. True if it did.
    pub async fn wait_for(&self, target: u64) -> bool {
        if self.current() >= target {
            return true;
        }
        let started = Instant::now();
        let _waiting = WaitingGuard::enter(self);
        let mut rx = self.local.subscribe();
        let reached = matches!(
            tokio::time::timeout(self.wait_timeout, rx.wait_for(|p| *p >= target)).await,
            Ok(Ok(_))
        );
        metrics::record_consistency_wait(started.elapsed(), reached);
        reached
    }

    /// The one poller of `<db>-pos`; it sleeps while no read waits.
    pub fn spawn_poller(self: &Arc<Self>, mut shutdown: Shutdown) {
        let position = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                while position.waiting.load(Ordering::Acquire) == 0 {
                    tokio::select! {
                        _ = position.someone_waits.notified() => {}
                        _ = shutdown.begun() => return,
                    }
                }
                if let Some(txid) = position.read_now() {
                    position.observe(txid);
                }
                tokio::time::sleep(POLL_WHILE_WAITING).await;
            }
        });
    }
}

struct WaitingGuard<'a>(&'a Position);

impl<'a> WaitingGuard<'a> {
    fn enter(position: &'a Position) -> Self {
        if position.waiting.fetch_add(1, Ordering::AcqRel) == 0 {
            position.someone_waits.notify_one();
        }
        Self(position)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
