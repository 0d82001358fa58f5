//! The last fence before a write reaches the app. Checking leadership when
//! a write is admitted leaves a gap: the process can be paused (GC, SIGSTOP,
//! a VM migration) after the check and before the request's bytes leave,
//! and wake up deposed. So writes go to the app over connections
//! ([`FencedIo`]) that ask the request's [`WritePermit`] before every
//! socket write; if it no longer holds, the write fails and the connection
//! is dropped.
//!
//! Each connection carries one request at a time, bound to it as an
//! [`Attempt`] by the write pool (`write_pool.rs`). The attempt records
//! whether any byte of *that* request was handed to the socket, so a
//! failure says whether the app can have seen it ([`Sent`]) —
//! nothing is inferred from what the connection read. The fence bounds
//! when bytes reach the app, not when the app commits them: a write whose
//! last byte left before the permit lapsed is the app's to finish.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::errors::Sent;
use crate::primary::WritePermit;

/// One request's try at the app, under its permit.
///
/// Its state moves by compare-and-swap from `FRESH`: to `WRITING` just
/// before the first byte is handed to the socket (so "nothing written" is
/// never claimed for a byte in flight), or to `ABANDONED` when the caller
/// gives the try up, after which the connection writes nothing more of it.
#[derive(Debug)]
pub struct Attempt {
    permit: WritePermit,
    state: AtomicU8,
    fenced: AtomicBool,
}

const FRESH: u8 = 0;
const WRITING: u8 = 1;
const ABANDONED: u8 = 2;

impl Attempt {
    pub fn new(permit: WritePermit) -> Arc<Self> {
        Arc::new(Self {
            permit,
            state: AtomicU8::new(FRESH),
            fenced: AtomicBool::new(false),
        })
    }

    /// Whether any byte of this request may have reached the socket.
    pub fn sent(&self) -> Sent {
        if self.state.load(Ordering::Acquire) == WRITING {
            Sent::Maybe
        } else {
            Sent::Nothing
        }
    }

    /// Gives the try up: from now on the connection writes nothing of it.
    /// Returns what had been sent by then, exactly.
    pub fn abandon(&self) -> Sent {
        match self
            .state
            .compare_exchange(FRESH, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Sent::Nothing,
            Err(_) => self.sent(),
        }
    }

    /// Claims the right to put bytes on the socket; false once abandoned.
    fn start_writing(&self) -> bool {
        match self
            .state
            .compare_exchange(FRESH, WRITING, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(current) => current == WRITING,
        }
    }

    /// Whether the fence stopped this request.
    pub fn was_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    pub fn permit(&self) -> &WritePermit {
        &self.permit
    }
}

/// Which attempt a connection is carrying; empty while it is idle.
#[derive(Debug, Default)]
pub struct Slot(ArcSwapOption<Attempt>);

impl Slot {
    pub fn bind(&self, attempt: Arc<Attempt>) {
        self.0.store(Some(attempt));
    }

    pub fn unbind(&self) {
        self.0.store(None);
    }
}

/// The write was stopped by the fence.
#[derive(Debug, thiserror::Error)]
#[error("this node may no longer write: leadership moved before the request was sent")]
pub struct Fenced;

/// A connection to the app whose every write is fenced by the permit of the
/// request it carries.
pub struct FencedIo {
    inner: TokioIo<TcpStream>,
    slot: Arc<Slot>,
}

impl FencedIo {
    pub fn new(stream: TcpStream, slot: Arc<Slot>) -> Self {
        Self {
            inner: TokioIo::new(stream),
            slot,
        }
    }

    /// The attempt to charge this write to, if its permit still holds.
    fn admit_write(&self) -> io::Result<Arc<Attempt>> {
        // hyper writes only for a request, so an unbound connection
        // writing would be a bug; refusing keeps it from reaching the app.
        let attempt = self
            .slot
            .0
            .load_full()
            .ok_or_else(|| io::Error::other(Fenced))?;
        if !attempt.permit.holds(Instant::now()) {
            attempt.fenced.store(true, Ordering::Release);
            return Err(io::Error::other(Fenced));
        }
        if !attempt.start_writing() {
            return Err(io::Error::other(Fenced));
        }
        Ok(attempt)
    }
}

impl Read for FencedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Write for FencedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.admit_write()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.admit_write()?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::{PrimaryCell, PrimaryState, Role};

    fn attempt() -> Arc<Attempt> {
        let cell = PrimaryCell::new(PrimaryState {
            role: Role::Primary,
            term: 1,
            primary: Some(Arc::from("a")),
            lease_deadline: None,
        });
        Attempt::new(cell.watch().permit(None).expect("primary"))
    }

    /// A try given up before its first byte stays unsent: the connection
    /// may not start on it afterwards (a timeout racing the first write).
    #[test]
    fn an_abandoned_attempt_never_starts_writing() {
        let given_up = attempt();
        assert_eq!(given_up.abandon(), Sent::Nothing);
        assert!(!given_up.start_writing());
        assert_eq!(given_up.sent(), Sent::Nothing);

        let started = attempt();
        assert!(started.start_writing());
        assert_eq!(started.abandon(), Sent::Maybe, "too late to give it up");
        assert!(started.start_writing(), "the rest of it may follow");
    }
}
