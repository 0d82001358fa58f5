//! Accepting connections, for the public listener and the cluster listener
//! alike: optional TLS, HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN
//! over TLS) on one port, keep-alive, a deadline for request heads, upgrades,
//! and a graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::metrics;
use crate::shutdown::Shutdown;

use super::body::ProxyBody;
use super::ConnInfo;

/// hyper's buffer per HTTP/1 connection is `public.max_header_bytes` plus
/// this: room above our limit, so the 431 it causes carries
/// `Litegate-Error`. The same bound caps what hyper queues for a client
/// that reads its response slowly (hyper's default, ~400 KiB, cost every
/// slow reader that much).
const HEAD_BUFFER_MARGIN: usize = 16 * 1024;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// What answers the requests of one listener.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<ProxyBody>> + Send;

    /// Whether the peer is a proxy whose `X-Forwarded-*` may be kept.
    fn is_trusted(&self, _peer: &SocketAddr) -> bool {
        false
    }
}

pub struct Listener {
    pub name: &'static str,
    pub tls: Option<TlsAcceptor>,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub shutdown_grace: Duration,
    /// Counted in `litegate_open_connections` (the public listener).
    pub count_connections: bool,
}

impl Listener {
    /// Accepts connections until `shutdown`, then lets open ones finish for
    /// up to `shutdown_grace`.
    pub async fn serve<H: Handler>(
        self,
        listener: TcpListener,
        handler: Arc<H>,
        mut shutdown: Shutdown,
    ) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true)
            .max_buf_size(self.max_header_bytes + HEAD_BUFFER_MARGIN);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(
                u32::try_from(self.max_header_bytes + 16 * 1024).unwrap_or(u32::MAX),
            );
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();

        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors, most likely: back off rather
                        // than spin, and keep serving the connections we have.
                        tracing::warn!(listener = self.name, %error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.begun() => break,
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            let info = ConnInfo {
                peer,
                tls: self.tls.is_some(),
                trusted: handler.is_trusted(&peer),
            };
            let (handler, builder, watcher) = (
                Arc::clone(&handler),
                Arc::clone(&builder),
                graceful.watcher(),
            );
            let (tls, handshake_timeout, name, counted) = (
                self.tls.clone(),
                self.header_read_timeout,
                self.name,
                self.count_connections,
            );
            if counted {
                metrics::set_open_connections_delta(1.0);
            }
            tokio::spawn(async move {
                match tls {
                    None => serve_connection(stream, info, handler, &builder, watcher).await,
                    Some(acceptor) => {
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                        {
                            Ok(Ok(tls_stream)) => {
                                serve_connection(tls_stream, info, handler, &builder, watcher).await
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(listener = name, %peer, %error, "TLS handshake failed")
                            }
                            Err(_) => {
                                tracing::debug!(listener = name, %peer, "TLS handshake timed out")
                            }
                        }
                    }
                }
                if counted {
                    metrics::set_open_connections_delta(-1.0);
                }
            });
        }
        drop(listener);

        tokio::select! {
            _ = graceful.shutdown() => tracing::info!(listener = self.name, "all connections closed"),
            _ = tokio::time::sleep(self.shutdown_grace) => {
                tracing::warn!(listener = self.name, grace = %humantime::format_duration(self.shutdown_grace), "requests still running after the shutdown grace; closing them");
            }
        }
    }
}

async fn serve_connection<I, H>(
    io: I,
    info: ConnInfo,
    handler: Arc<H>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let service = service_fn(move |req| {
        let handler = Arc::clone(&handler);
        // Boxed: hyper keeps room for one service future in every
        // connection, idle ones too; a request's future is several KB, a
        // box is a pointer.
        let response: BoxFuture = Box::pin(async move { Ok(handler.handle(req, info).await) });
        response
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(conn.into_owned()).await {
        tracing::debug!(peer = %info.peer, %error, "connection ended with an error");
    }
}
