//! Connections to the local app for the pooled read client: hyper-util's
//! `HttpConnector`, without the `HttpInfo` it attaches to every response.
//! Attaching it costs three allocations per request (a boxed map, its
//! table, the boxed value), and litegate never reads it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::Service;

use super::body::BoxError;

#[derive(Clone)]
pub struct AppConnector(pub HttpConnector);

type Connecting = Pin<Box<dyn Future<Output = Result<AppStream, BoxError>> + Send>>;

impl Service<Uri> for AppConnector {
    type Response = AppStream;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, target: Uri) -> Connecting {
        let connecting = self.0.call(target);
        Box::pin(async move { Ok(AppStream(connecting.await?)) })
    }
}

/// A TCP connection to the app; only what it says about itself differs.
pub struct AppStream(TokioIo<TcpStream>);

impl Connection for AppStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl Read for AppStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl Write for AppStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}
