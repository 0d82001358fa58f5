//! Accepting connections, for the public, cluster and admin listeners
//! alike: optional TLS, HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN
//! over TLS) on one port, keep-alive, a connection cap, a deadline from
//! accept to the first request head, an idle timeout between requests,
//! HTTP/2 keep-alive pings, upgrades, and a graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::listen::accept::CappedAcceptor;
use crate::listen::activity::{Activity, InFlight};
use crate::metrics;
use crate::shutdown::Shutdown;

use super::body::{BoxError, ProxyBody};
use super::ConnInfo;

/// hyper's buffer per HTTP/1 connection is `public.max_header_bytes` plus
/// this: room above our limit, so the 431 it causes carries
/// `Litegate-Error`. The same bound caps what hyper queues for a client
/// that reads its response slowly (hyper's default, ~400 KiB, cost every
/// slow reader that much).
const HEAD_BUFFER_MARGIN: usize = 16 * 1024;

/// After a silent connection is asked to close (HTTP/2: GOAWAY with
/// NO_ERROR), how long it may take before it is dropped outright.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

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

/// How long a connection may stay silent, and how HTTP/2 checks on it.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// From accept to the first complete request head.
    pub head: Duration,
    /// With no request in flight, until the next request head begins.
    pub idle: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
}

/// The listeners' timeouts as they are now: a SIGHUP swaps them, and each
/// connection accepted after that takes the new ones (open connections
/// keep the ones they were accepted with).
pub type LiveTimeouts = Arc<ArcSwap<Timeouts>>;

impl Timeouts {
    pub fn live(config: &Config) -> LiveTimeouts {
        Arc::new(ArcSwap::from_pointee(Self::from_config(config)))
    }

    pub fn from_config(config: &Config) -> Self {
        Self {
            head: config.public.header_read_timeout.get(),
            idle: config.public.idle_timeout.get(),
            http2_keepalive_interval: config.public.http2_keepalive_interval.get(),
            http2_keepalive_timeout: config.public.http2_keepalive_timeout.get(),
        }
    }
}

pub struct Listener {
    pub name: &'static str,
    pub tls: Option<TlsAcceptor>,
    pub timeouts: LiveTimeouts,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// The admin listener speaks HTTP/1.1 only.
    pub http1_only: bool,
    pub shutdown_grace: Duration,
    /// The public listener: its connections are counted in
    /// `litegate_open_connections`, its response bodies in
    /// `litegate_response_bytes_total`.
    pub count_traffic: bool,
}

impl Listener {
    fn builder(&self, timeouts: &Timeouts) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // hyper's own head timer: it starts when an HTTP/1.1 connection
        // waits for a request head (after the version is sniffed, and again
        // after each response), so it also bounds keep-alive idleness.
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.head)
            .keep_alive(true)
            .max_buf_size(self.max_header_bytes + HEAD_BUFFER_MARGIN);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(timeouts.http2_keepalive_interval)
            .keep_alive_timeout(timeouts.http2_keepalive_timeout)
            .max_header_list_size(
                u32::try_from(self.max_header_bytes + HEAD_BUFFER_MARGIN).unwrap_or(u32::MAX),
            );
        if self.http1_only {
            builder.http1_only()
        } else {
            builder
        }
    }

    /// Accepts connections until `shutdown`, then lets open ones finish for
    /// up to `shutdown_grace`.
    pub async fn serve<H: Handler>(
        self,
        listener: TcpListener,
        handler: Arc<H>,
        shutdown: Shutdown,
    ) {
        let mut timeouts = self.timeouts.load_full();
        let mut builder = Arc::new(self.builder(&timeouts));
        let mut acceptor = CappedAcceptor::new(listener, self.name, self.max_connections);
        let mut stopping = shutdown.clone();
        loop {
            let (stream, peer, slot) = tokio::select! {
                accepted = acceptor.accept() => accepted,
                _ = stopping.begun() => break,
            };
            let accepted = Instant::now();
            let now = self.timeouts.load_full();
            if !Arc::ptr_eq(&now, &timeouts) {
                timeouts = now;
                builder = Arc::new(self.builder(&timeouts));
            }
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot set TCP_NODELAY");
            }
            let info = ConnInfo {
                peer,
                tls: self.tls.is_some(),
                trusted: handler.is_trusted(&peer),
            };
            let activity = Activity::new(accepted, timeouts.head, timeouts.idle);
            let (handler, builder, shutdown) =
                (Arc::clone(&handler), Arc::clone(&builder), shutdown.clone());
            let (tls, name, counted) = (self.tls.clone(), self.name, self.count_traffic);
            if counted {
                metrics::set_open_connections_delta(1.0);
            }
            tokio::spawn(async move {
                let conn = Conn {
                    info,
                    handler,
                    activity,
                    shutdown,
                    count_bytes: counted,
                };
                match tls {
                    None => conn.serve(stream, &builder).await,
                    Some(acceptor) => {
                        // The handshake counts against the head deadline.
                        // Both TLS futures are boxed: a task is as large as
                        // its largest branch, and the TLS state would
                        // otherwise be reserved in every plain connection.
                        let deadline = conn.activity.head_deadline();
                        let handshake = Box::pin(acceptor.accept(stream));
                        match tokio::time::timeout_at(deadline, handshake).await {
                            Ok(Ok(tls_stream)) => Box::pin(conn.serve(tls_stream, &builder)).await,
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
                drop(slot);
            });
        }

        tokio::select! {
            _ = acceptor.all_closed() => tracing::info!(listener = self.name, "all connections closed"),
            _ = tokio::time::sleep(self.shutdown_grace) => {
                tracing::warn!(listener = self.name, grace = %humantime::format_duration(self.shutdown_grace), "requests still running after the shutdown grace; closing them");
            }
        }
    }
}

/// One accepted connection and what it needs to be served.
struct Conn<H> {
    info: ConnInfo,
    handler: Arc<H>,
    activity: Arc<Activity>,
    shutdown: Shutdown,
    /// Response body bytes go into `litegate_response_bytes_total`.
    count_bytes: bool,
}

impl<H: Handler> Conn<H> {
    async fn serve<I>(self, io: I, builder: &auto::Builder<TokioExecutor>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            info,
            handler,
            activity,
            mut shutdown,
            count_bytes,
        } = self;
        let tracked = Arc::clone(&activity);
        let service = service_fn(move |req| {
            let handler = Arc::clone(&handler);
            let in_flight = tracked.request_started();
            // Boxed: hyper keeps room for one service future in every
            // connection, idle ones too; a request's future is several KB, a
            // box is a pointer.
            let response: BoxFuture = Box::pin(async move {
                let response = handler.handle(req, info).await;
                Ok(response.map(|body| {
                    TrackedBody {
                        body,
                        _in_flight: in_flight,
                        count_bytes,
                    }
                    .boxed_unsync()
                }))
            });
            response
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        let ended = tokio::select! {
            ended = conn.as_mut() => ended,
            _ = activity.expired() => {
                tracing::debug!(peer = %info.peer, "closing a silent connection");
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await {
                    Ok(ended) => ended,
                    Err(_) => Ok(()),
                }
            }
            _ = shutdown.begun() => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(peer = %info.peer, %error, "connection ended with an error");
        }
    }
}

/// A response body that keeps its request counted as in flight until it
/// has been sent or abandoned, so a long download is never cut as idle; on
/// the public listener it counts the bytes it hands to the client.
struct TrackedBody {
    body: ProxyBody,
    _in_flight: InFlight,
    count_bytes: bool,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let (true, Poll::Ready(Some(Ok(frame)))) = (self.count_bytes, &polled) {
            if let Some(data) = frame.data_ref() {
                metrics::count_response_bytes(data.len());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
