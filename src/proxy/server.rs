//! Accepting connections, for the public, cluster and admin listeners
//! alike: optional TLS, HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN
//! over TLS) on one port, keep-alive, a connection cap, a deadline from
//! accept to the first request head, an idle timeout between requests,
//! HTTP/2 keep-alive pings, upgrades, and a graceful stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, Version};
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

use super::affinity::ReadAffinity;
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

    /// Whether each connection keeps a connection to the app of its own
    /// for its reads (`affinity.rs`), driven by the connection's task; its
    /// HTTP/1.x requests then go to
    /// [`handle_with_affinity`](Self::handle_with_affinity), its HTTP/2
    /// ones to [`handle`](Self::handle).
    fn keeps_app_connections(&self) -> bool {
        false
    }

    fn handle_with_affinity(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
        _affinity: Arc<ReadAffinity>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send {
        self.handle(req, conn)
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
        let affinity = handler.keeps_app_connections().then(ReadAffinity::new);
        let for_requests = affinity.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let handler = Arc::clone(&handler);
            let in_flight = tracked.request_started();
            // An HTTP/2 client's requests run concurrently, each in a task
            // of its own: they keep to the pool.
            let affinity = for_requests
                .as_ref()
                .filter(|_| req.version() < Version::HTTP_2)
                .map(Arc::clone);
            // Boxed: hyper keeps room for one service future in every
            // connection, idle ones too; a request's future is several KB, a
            // box is a pointer.
            let response: BoxFuture = Box::pin(async move {
                let response = match affinity {
                    Some(affinity) => handler.handle_with_affinity(req, info, affinity).await,
                    None => handler.handle(req, info).await,
                };
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
        let halves = affinity.as_ref().map(|_| TwoHalves::new());
        let affinity = affinity.as_deref().zip(halves.as_ref());
        let ended = tokio::select! {
            ended = with_app_connection(conn.as_mut(), affinity) => ended,
            _ = activity.expired() => {
                tracing::debug!(peer = %info.peer, "closing a silent connection");
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(CLOSE_GRACE, with_app_connection(conn.as_mut(), affinity)).await {
                    Ok(ended) => ended,
                    Err(_) => Ok(()),
                }
            }
            _ = shutdown.begun() => {
                conn.as_mut().graceful_shutdown();
                with_app_connection(conn.as_mut(), affinity).await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(peer = %info.peer, %error, "connection ended with an error");
        }
        // The connection to the app this one held (if any) closes as the
        // last reference to `affinity` goes, here.
    }
}

/// Serves `conn` and, in the same task, drives the connection to the app
/// it holds for its reads. Each of the two is polled only when it asked to
/// be (its own waker), and again in the same pass when the other woke it:
/// a request the client connection hands over goes out, and an answer
/// that came in reaches the request waiting for it, without the task being
/// scheduled again or the client connection polled for nothing. A struct
/// rather than an `async` or `poll_fn` wrapper: a generic function's opaque
/// future type here makes rustc unable to prove the task `Send`.
struct WithAppConnection<'a, F> {
    conn: Pin<&'a mut F>,
    app: Option<(&'a ReadAffinity, &'a TwoHalves)>,
}

fn with_app_connection<'a, F>(
    conn: Pin<&'a mut F>,
    app: Option<(&'a ReadAffinity, &'a TwoHalves)>,
) -> WithAppConnection<'a, F> {
    if let Some((_, halves)) = app {
        // A new wrapper has not polled either half yet.
        halves.conn.woken.store(true, Ordering::SeqCst);
        halves.app.woken.store(true, Ordering::SeqCst);
    }
    WithAppConnection { conn, app }
}

impl<F: Future> Future for WithAppConnection<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some((affinity, halves)) = self.app else {
            return self.conn.as_mut().poll(cx);
        };
        halves.task.enter(cx.waker());
        // Bounded, so a pair that keeps waking each other still lets the
        // runtime schedule other tasks.
        for _ in 0..32 {
            if halves.app.woken.swap(false, Ordering::SeqCst) {
                affinity.drive(&mut Context::from_waker(&halves.app_waker));
            }
            if halves.conn.woken.swap(false, Ordering::SeqCst) {
                let polled = self
                    .conn
                    .as_mut()
                    .poll(&mut Context::from_waker(&halves.conn_waker));
                if polled.is_ready() {
                    halves.task.leave();
                    return polled;
                }
            }
            if !halves.any_woken() && halves.task.leave_unless(|| halves.any_woken()) {
                return Poll::Pending;
            }
        }
        halves.task.leave();
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The wakers of a connection's two halves: the client connection and the
/// connection to the app.
pub(crate) struct TwoHalves {
    task: Arc<TaskWaker>,
    conn: Arc<Half>,
    app: Arc<Half>,
    conn_waker: std::task::Waker,
    app_waker: std::task::Waker,
}

impl TwoHalves {
    fn new() -> Self {
        let task = Arc::new(TaskWaker::default());
        let half = || {
            Arc::new(Half {
                woken: AtomicBool::new(true),
                task: Arc::clone(&task),
            })
        };
        let (conn, app) = (half(), half());
        Self {
            conn_waker: std::task::Waker::from(Arc::clone(&conn)),
            app_waker: std::task::Waker::from(Arc::clone(&app)),
            task,
            conn,
            app,
        }
    }

    fn any_woken(&self) -> bool {
        self.conn.woken.load(Ordering::SeqCst) || self.app.woken.load(Ordering::SeqCst)
    }
}

/// The task's own waker, and whether the task is inside its poll (a half
/// woken then is polled in the same pass, so the task is not woken too).
#[derive(Default)]
struct TaskWaker {
    waker: std::sync::Mutex<Option<std::task::Waker>>,
    polling: AtomicBool,
}

impl TaskWaker {
    fn enter(&self, waker: &std::task::Waker) {
        let mut held = self.waker.lock().unwrap_or_else(|p| p.into_inner());
        if !held.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *held = Some(waker.clone());
        }
        drop(held);
        self.polling.store(true, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.polling.store(false, Ordering::SeqCst);
    }

    /// Leaves the poll, unless a half was woken meanwhile: then stays in
    /// and says so (`false`), so that wake is not lost.
    fn leave_unless(&self, woken: impl Fn() -> bool) -> bool {
        self.polling.store(false, Ordering::SeqCst);
        if woken() {
            self.polling.store(true, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn wake(&self) {
        if !self.polling.load(Ordering::SeqCst) {
            if let Some(waker) = self
                .waker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                waker.wake_by_ref();
            }
        }
    }
}

struct Half {
    woken: AtomicBool,
    task: Arc<TaskWaker>,
}

impl std::task::Wake for Half {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.task.wake();
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
