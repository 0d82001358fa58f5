//! Accepting connections under a cap. A connection over the cap is
//! accepted and closed at once, so its client sees the connection end
//! instead of waiting in the kernel's backlog. When the process is out of
//! file descriptors (`EMFILE`, `ENFILE`) accepting pauses briefly instead of
//! spinning. Both are logged once per burst, with a count, not once per
//! connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// `EMFILE` (process) and `ENFILE` (system): the same numbers on Linux and
/// the BSDs.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

/// How long accepting pauses when descriptors ran out: long enough for
/// connections to close, short enough that clients barely notice.
const OUT_OF_FDS_PAUSE: Duration = Duration::from_millis(100);
/// Other accept errors (a connection reset before it was accepted, a
/// kernel out of buffers) are usually transient.
const OTHER_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// At most one warning per kind of trouble in this long.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// A warning that is logged at the start of a burst and then at most every
/// [`WARN_EVERY`], counting what happened in between.
#[derive(Debug, Default)]
struct BurstWarning {
    last: Option<Instant>,
    unreported: u64,
}

impl BurstWarning {
    /// The number of events to report now, if a line is due.
    fn record(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        if self.last.is_some_and(|last| now < last + WARN_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

pub struct CappedAcceptor {
    listener: TcpListener,
    name: &'static str,
    slots: Arc<Semaphore>,
    max_connections: usize,
    over_cap: BurstWarning,
    out_of_fds: BurstWarning,
    other_errors: BurstWarning,
}

impl CappedAcceptor {
    pub fn new(listener: TcpListener, name: &'static str, max_connections: usize) -> Self {
        Self {
            listener,
            name,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            over_cap: BurstWarning::default(),
            out_of_fds: BurstWarning::default(),
            other_errors: BurstWarning::default(),
        }
    }

    /// The next connection under the cap, with the slot it holds until it
    /// is dropped.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(pair) => pair,
                Err(error) => {
                    let out_of_fds = matches!(error.raw_os_error(), Some(EMFILE | ENFILE));
                    let (warning, pause) = if out_of_fds {
                        (&mut self.out_of_fds, OUT_OF_FDS_PAUSE)
                    } else {
                        (&mut self.other_errors, OTHER_ERROR_PAUSE)
                    };
                    if let Some(count) = warning.record(Instant::now()) {
                        tracing::warn!(listener = self.name, %error, failed_accepts = count, "accept failed; pausing accepts briefly (logged once per burst)");
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => return (stream, peer, slot),
                Err(_) => {
                    // Dropped here: the client sees its connection closed.
                    drop(stream);
                    if let Some(count) = self.over_cap.record(Instant::now()) {
                        tracing::warn!(
                            listener = self.name,
                            max_connections = self.max_connections,
                            refused = count,
                            "connection cap reached; closing new connections at once (logged once per burst)"
                        );
                    }
                }
            }
        }
    }

    /// Resolves once every accepted connection has ended.
    pub async fn all_closed(&self) {
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        // An error means the semaphore was closed, which it never is.
        let _ = self.slots.acquire_many(all).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_burst_is_reported_once_with_its_count() {
        let mut warning = BurstWarning::default();
        let start = Instant::now();
        assert_eq!(warning.record(start), Some(1));
        for _ in 0..99 {
            assert_eq!(warning.record(start), None);
        }
        assert_eq!(warning.record(start + WARN_EVERY), Some(100));
    }

    #[tokio::test]
    async fn a_connection_over_the_cap_is_closed_and_a_later_one_is_served() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let mut acceptor = CappedAcceptor::new(listener, "test", 1);
        let _first = TcpStream::connect(addr).await.expect("connect");
        let (_, _, slot) = acceptor.accept().await;

        // The acceptor refuses the second while the first holds the only
        // slot, then waits, and serves the third once the slot is free.
        let accept_next = tokio::spawn(async move {
            let next = acceptor.accept().await;
            (acceptor, next)
        });
        let bound = Duration::from_secs(5);
        let mut second = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(bound, second.read(&mut buf))
            .await
            .expect("the refused client must not hang");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "refused connection got data"
        );
        drop(slot);
        let _third = TcpStream::connect(addr).await.expect("connect");
        let (_acceptor, (_stream, _peer, _slot)) = tokio::time::timeout(bound, accept_next)
            .await
            .expect("the later connection must be accepted")
            .expect("join");
    }
}
