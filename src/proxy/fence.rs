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
//! whether any byte of *that* request was written to the socket, so a
//! failure says exactly whether the app can have seen it ([`Sent`]) —
//! nothing is inferred from what the connection read. The fence bounds
//! when bytes reach the app, not when the app commits them: a write whose
//! last byte left before the permit lapsed is the app's to finish.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
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
#[derive(Debug)]
pub struct Attempt {
    permit: WritePermit,
    written: AtomicBool,
    fenced: AtomicBool,
}

impl Attempt {
    pub fn new(permit: WritePermit) -> Arc<Self> {
        Arc::new(Self {
            permit,
            written: AtomicBool::new(false),
            fenced: AtomicBool::new(false),
        })
    }

    /// Whether any byte of this request reached the socket.
    pub fn sent(&self) -> Sent {
        if self.written.load(Ordering::Acquire) {
            Sent::Maybe
        } else {
            Sent::Nothing
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
        if attempt.permit.holds(Instant::now()) {
            Ok(attempt)
        } else {
            attempt.fenced.store(true, Ordering::Release);
            Err(io::Error::other(Fenced))
        }
    }
}

fn note_written(attempt: &Attempt, result: &Poll<io::Result<usize>>) {
    if matches!(result, Poll::Ready(Ok(n)) if *n > 0) {
        attempt.written.store(true, Ordering::Release);
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
        let attempt = self.admit_write()?;
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        note_written(&attempt, &result);
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let attempt = self.admit_write()?;
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        note_written(&attempt, &result);
        result
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
