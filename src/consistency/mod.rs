//! Read-your-writes (docs/design.md §3). After a write, the client gets the
//! primary's replication position in the `__txid` cookie; a later read on a
//! replica waits until the local position reaches it.
//!
//! The local position lives in one watch channel, advanced by LiteFS's `tx`
//! events and — only while some read is waiting — by one shared poller that
//! reads `<db>-pos`. A waiting read never polls on its own.

mod cookie;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use cookie::{requested_txid, set_cookie};

use crate::config::{Config, OnTimeout};
use crate::metrics;

/// How often the shared poller reads `<db>-pos` while reads wait: well
/// under the 2 ms wake-up target, and only while someone waits. (An OS
/// thread, because tokio's timer cannot sleep less than a millisecond.)
const POLL_WHILE_WAITING: Duration = Duration::from_micros(500);

pub struct Position {
    mount: PathBuf,
    db: String,
    local: watch::Sender<u64>,
    waiting: AtomicUsize,
    /// The poller thread, unparked when the first read starts waiting.
    poller: OnceLock<Thread>,
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
            poller: OnceLock::new(),
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

    /// Starts the one poller of `<db>-pos`; it parks while no read waits
    /// and ends with the last reference to the position.
    pub fn spawn_poller(self: &Arc<Self>) -> std::io::Result<()> {
        let position: Weak<Self> = Arc::downgrade(self);
        let thread = std::thread::Builder::new()
            .name("litegate-pos-poller".to_owned())
            .spawn(move || loop {
                let Some(p) = position.upgrade() else { return };
                if p.waiting.load(Ordering::Acquire) == 0 {
                    drop(p);
                    // Unparked by the first waiting read; a spurious wake
                    // just loops.
                    std::thread::park_timeout(Duration::from_secs(1));
                    continue;
                }
                if let Some(txid) = p.read_now() {
                    p.observe(txid);
                }
                drop(p);
                std::thread::sleep(POLL_WHILE_WAITING);
            })?;
        let _ = self.poller.set(thread.thread().clone());
        Ok(())
    }
}

struct WaitingGuard<'a>(&'a Position);

impl<'a> WaitingGuard<'a> {
    fn enter(position: &'a Position) -> Self {
        if position.waiting.fetch_add(1, Ordering::AcqRel) == 0 {
            if let Some(poller) = position.poller.get() {
                poller.unpark();
            }
        }
        Self(position)
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
