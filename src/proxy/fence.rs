//! The last fence before a write reaches the app. Checking leadership when
//! a write is admitted leaves a gap: the process can be paused (GC, SIGSTOP,
//! a VM migration) after the check and before the request's bytes leave,
//! and wake up deposed. So writes go to the app over connections whose
//! every `write` first asks whether this node may still write; if not, the
//! write fails with [`Fenced`] and the connection is dropped.
//!
//! A request's head is the first thing written after the connection opens
//! or after a response was read, so a fence tripped then means nothing of
//! this request reached the app, and it may be sent elsewhere
//! ([`ProxyError::Fenced`]). Tripped later, mid-body, the app has part of a
//! request it will not complete, and the write fails.
//!
//! [`ProxyError::Fenced`]: super::errors::ProxyError::Fenced

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use crate::primary::PrimaryWatch;

/// This node stopped being allowed to write before the request left.
#[derive(Debug, thiserror::Error)]
#[error("this node may no longer write: leadership moved before the request was sent")]
pub struct Fenced {
    /// Nothing of the current request had been written.
    pub before_head: bool,
}

/// Connects like [`HttpConnector`]; the connection checks `watch` before
/// every write.
#[derive(Clone)]
pub struct FencedConnector {
    inner: HttpConnector,
    watch: PrimaryWatch,
}

impl FencedConnector {
    pub fn new(inner: HttpConnector, watch: PrimaryWatch) -> Self {
        Self { inner, watch }
    }
}

impl Service<Uri> for FencedConnector {
    type Response = FencedIo;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<FencedIo, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let watch = self.watch.clone();
        Box::pin(async move {
            Ok(FencedIo {
                inner: connecting.await?,
                watch,
                at_request_start: true,
            })
        })
    }
}

pub struct FencedIo {
    inner: TokioIo<TcpStream>,
    watch: PrimaryWatch,
    /// True until the first write after the connection opened or after a
    /// read: the next write starts a request.
    at_request_start: bool,
}

impl FencedIo {
    fn check(&mut self) -> io::Result<()> {
        if self.watch.current().may_write(Instant::now()) {
            Ok(())
        } else {
            Err(io::Error::other(Fenced {
                before_head: self.at_request_start,
            }))
        }
    }
}

impl Connection for FencedIo {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

impl Read for FencedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if result.is_ready() {
            self.at_request_start = true;
        }
        result
    }
}

impl Write for FencedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(_)) = result {
            self.at_request_start = false;
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(_)) = result {
            self.at_request_start = false;
        }
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

/// Whether `error` (anywhere in its chain) is a fence that tripped before
/// any of the request was written.
pub fn tripped_before_head(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(fenced) = e.downcast_ref::<Fenced>() {
            return fenced.before_head;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(fenced) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<Fenced>())
            {
                return fenced.before_head;
            }
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("request failed")]
    struct Outer(#[source] io::Error);

    #[test]
    fn a_fence_is_found_anywhere_in_the_chain() {
        let before = Outer(io::Error::other(Fenced { before_head: true }));
        assert!(tripped_before_head(&before));
        let mid_body = Outer(io::Error::other(Fenced { before_head: false }));
        assert!(!tripped_before_head(&mid_body));
        let other = Outer(io::Error::other("connection reset"));
        assert!(!tripped_before_head(&other));
    }
}
