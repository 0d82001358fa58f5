//! Read-your-writes (docs/design.md §3). After a write, the client gets the
//! primary's replication position in the `__txid` cookie; a later read on a
//! replica waits until the local position reaches it.
//!
//! The local position lives in one watch channel, advanced by LiteFS's `tx`
//! events and — only while some read is waiting — by one shared poller that
//! reads `<db>-pos`. A waiting read never polls on its own.

mod cookie;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
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
    /// Primary positions this node has not reached yet, oldest first, with
    /// when it learned of each: the replication lag is the oldest one's age.
    behind: Mutex<BehindPrimary>,
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
            behind: Mutex::new(BehindPrimary::default()),
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
        let advanced = self.local.send_if_modified(|p| {
            let newer = txid > *p;
            if newer {
                *p = txid;
            }
            newer
        });
        if advanced {
            self.behind().reached(self.current());
        }
    }

    /// The primary's litegate reported its position after a write this
    /// node forwarded. (Only that source is trusted: a client's `__txid`
    /// cookie could name any position and make a replica look stale.)
    pub fn primary_reached(&self, txid: u64) {
        let local = self.current();
        let mut behind = self.behind();
        behind.learned(txid, Instant::now());
        behind.reached(local);
    }

    /// How long this node has been behind a primary position it knows of;
    /// zero when it has reached every one (or knows of none: a replica that
    /// forwards no writes learns no primary position and reports zero).
    pub fn lag(&self) -> Duration {
        self.behind().lag(Instant::now())
    }

    fn behind(&self) -> std::sync::MutexGuard<'_, BehindPrimary> {
        // Replaced or trimmed whole under the lock; a poisoned one is intact.
        self.behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

/// The primary positions a node knows it has not reached, in increasing
/// order, each with when it was learned.
#[derive(Debug, Default)]
struct BehindPrimary {
    unreached: VecDeque<(u64, Instant)>,
}

/// Enough to measure lag under any write rate: past it, the newest entry's
/// position moves up and keeps its time (the lag reads a little high until
/// the replica catches up).
const MAX_UNREACHED: usize = 256;

impl BehindPrimary {
    fn learned(&mut self, txid: u64, at: Instant) {
        let full = self.unreached.len() >= MAX_UNREACHED;
        match self.unreached.back_mut() {
            Some((last, _)) if *last >= txid => {}
            Some((last, _)) if full => *last = txid,
            _ => self.unreached.push_back((txid, at)),
        }
    }

    fn reached(&mut self, local: u64) {
        while self
            .unreached
            .front()
            .is_some_and(|(txid, _)| *txid <= local)
        {
            self.unreached.pop_front();
        }
    }

    fn lag(&self, now: Instant) -> Duration {
        self.unreached
            .front()
            .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_age_of_the_oldest_primary_position_not_reached() {
        let t0 = Instant::now();
        let mut behind = BehindPrimary::default();
        assert_eq!(behind.lag(t0), Duration::ZERO);
        behind.learned(10, t0);
        behind.learned(20, t0 + Duration::from_secs(2));
        behind.learned(15, t0 + Duration::from_secs(3)); // older news: ignored
        assert_eq!(
            behind.lag(t0 + Duration::from_secs(5)),
            Duration::from_secs(5)
        );
        behind.reached(12);
        assert_eq!(
            behind.lag(t0 + Duration::from_secs(5)),
            Duration::from_secs(3)
        );
        behind.reached(20);
        assert_eq!(behind.lag(t0 + Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn unreached_positions_are_bounded() {
        let t0 = Instant::now();
        let mut behind = BehindPrimary::default();
        for txid in 1..=(MAX_UNREACHED as u64 * 3) {
            behind.learned(txid, t0 + Duration::from_millis(txid));
        }
        assert_eq!(behind.unreached.len(), MAX_UNREACHED);
        behind.reached(MAX_UNREACHED as u64 * 3);
        assert_eq!(behind.lag(t0), Duration::ZERO);
    }
}
