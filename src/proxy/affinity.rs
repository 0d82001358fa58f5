//! Connection affinity for reads. Each HTTP/1.x client connection keeps
//! its own keep-alive connection to the app, opened on its second read
//! (many connections send only one: their first read takes the pool) and
//! driven by the client connection's own task (`server.rs` polls it next to
//! the client connection), so a read reaches the app and its answer comes
//! back without a pool checkout or a hop to another task.
//!
//! The held connection is dropped, and so closed, when the client
//! connection ends, when the app closes it or it fails, when a request on
//! it was abandoned part way (a timeout), and when it has been idle for
//! [`AFFINITY_IDLE`](super::client::AFFINITY_IDLE). How many client
//! connections may hold one at once is bounded (`UpstreamClient`'s
//! affinity budget); a read that finds none free, or its connection's one
//! still busy, uses the shared pool as before.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::body::{BoxError, ProxyBody};
use super::errors::ProxyError;

/// The held connection's I/O (hyper's connection future), boxed once when
/// it is opened.
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// One client connection's slot for its connection to the app.
#[derive(Default)]
pub struct ReadAffinity {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Boxed: most client connections hold nothing, and an idle one should
    /// cost as little as it can.
    held: Option<Box<Held>>,
    /// This client connection has sent a read before.
    read_before: bool,
    /// How many connections this slot has held: each one's number, so a
    /// lease acts only on the connection it was lent.
    opened: u64,
    /// The task that drives the held connection, woken when one is put in.
    driver_task: Option<Waker>,
}

/// A connection to the app held by one client connection.
struct Held {
    number: u64,
    /// The idle timer has not been polled yet, so cannot wake anyone.
    timer_unarmed: bool,
    /// Absent while a request is on its way (a [`Lease`] has it).
    sender: Option<http1::SendRequest<ProxyBody>>,
    driver: Driver,
    /// Its place in the affinity budget, given back when it closes.
    _budget: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_used: Instant,
    /// Wakes the driving task to look whether the connection has been
    /// idle too long; re-armed from `last_used`, not per request.
    idle_check: Pin<Box<Sleep>>,
}

/// What a read finds in its client connection's slot.
pub enum Checkout<'a> {
    /// The held connection, free and ready for a request.
    Ready(Lease<'a>),
    /// Nothing held, and this is not the client connection's first read:
    /// the read may open one.
    Open,
    /// The read goes through the pool: it is the client connection's first
    /// (many send only one, and a connection opened for it would be
    /// closed again unused), or a request is still on the held connection
    /// (its response body is streaming).
    Pool,
}

/// A newly opened connection to the app, not yet driven.
pub struct Opened {
    sender: http1::SendRequest<ProxyBody>,
    driver: http1::Connection<TokioIo<TcpStream>, ProxyBody>,
    budget: OwnedSemaphorePermit,
    idle_timeout: Duration,
}

impl ReadAffinity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Polls the held connection, from the task that serves the client
    /// connection: this is what writes requests and reads answers on it.
    /// Drops it once it has ended or has been idle too long.
    pub fn drive(&self, cx: &mut Context<'_>) {
        let mut inner = self.lock();
        if !inner
            .driver_task
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.driver_task = Some(cx.waker().clone());
        }
        let Some(held) = inner.held.as_mut() else {
            return;
        };
        // Ended: the app closed it, or it failed. A request on it gets
        // the error from hyper.
        if held.driver.as_mut().poll(cx).is_ready() {
            inner.held = None;
            return;
        }
        if held.timer_unarmed {
            held.timer_unarmed = false;
            let _ = held.idle_check.as_mut().poll(cx);
        }
        // `is_elapsed` is an atomic load; polling the timer on every
        // drive would cost more than the rest of this function.
        if held.idle_check.is_elapsed() {
            let idle = held
                .sender
                .as_ref()
                .is_some_and(http1::SendRequest::is_ready);
            let due = held.last_used + held.idle_timeout;
            if idle && Instant::now() >= due {
                inner.held = None;
                return;
            }
            let next = if idle {
                due
            } else {
                Instant::now() + held.idle_timeout
            };
            held.idle_check.as_mut().reset(next);
            // Registers the timer for its new deadline; it wakes this task.
            let _ = held.idle_check.as_mut().poll(cx);
        }
    }

    /// The held connection, if it is free and ready. One the app has
    /// closed is dropped here, so the read opens a fresh one.
    pub fn checkout(&self) -> Checkout<'_> {
        let mut inner = self.lock();
        if !std::mem::replace(&mut inner.read_before, true) {
            return Checkout::Pool;
        }
        let Some(held) = inner.held.as_mut() else {
            return Checkout::Open;
        };
        let Some(sender) = held.sender.as_ref() else {
            return Checkout::Pool;
        };
        if sender.is_closed() {
            inner.held = None;
            return Checkout::Open;
        }
        if !sender.is_ready() {
            return Checkout::Pool;
        }
        held.last_used = Instant::now();
        let (sender, number) = (held.sender.take(), held.number);
        drop(inner);
        Checkout::Ready(Lease {
            affinity: self,
            sender,
            number,
        })
    }

    /// Holds `opened` for this client connection and lends it to the read
    /// that opened it.
    pub fn install(&self, opened: Opened) -> Lease<'_> {
        let Opened {
            sender,
            driver,
            budget,
            idle_timeout,
        } = opened;
        let now = Instant::now();
        let mut inner = self.lock();
        inner.opened += 1;
        let number = inner.opened;
        inner.held = Some(Box::new(Held {
            number,
            timer_unarmed: true,
            sender: None,
            driver: Box::pin(driver),
            _budget: budget,
            idle_timeout,
            last_used: now,
            idle_check: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }));
        if let Some(task) = &inner.driver_task {
            task.wake_by_ref();
        }
        drop(inner);
        Lease {
            affinity: self,
            sender: Some(sender),
            number,
        }
    }

    fn give_back(&self, sender: http1::SendRequest<ProxyBody>, number: u64) {
        if let Some(held) = self.lock().held.as_mut().filter(|h| h.number == number) {
            held.sender = Some(sender);
        }
    }

    fn discard(&self, number: u64) {
        let mut inner = self.lock();
        let held = match inner.held.as_ref() {
            Some(held) if held.number == number => inner.held.take(),
            _ => None,
        };
        drop(inner);
        // Closed outside the lock.
        drop(held);
    }

    /// Whether a connection to the app is held (tests).
    #[cfg(test)]
    pub fn holds_connection(&self) -> bool {
        self.lock().held.is_some()
    }
}

/// The held connection lent to one read. Given back once the response head
/// is in; dropped without being given back (an error, a timeout), it takes
/// the connection down with it, so no connection is ever reused in a state
/// nobody knows.
pub struct Lease<'a> {
    affinity: &'a ReadAffinity,
    sender: Option<http1::SendRequest<ProxyBody>>,
    /// Which of the slot's connections this is.
    number: u64,
}

impl Lease<'_> {
    pub fn sender(&mut self) -> &mut http1::SendRequest<ProxyBody> {
        self.sender
            .as_mut()
            .expect("a lease has its sender until it is given back")
    }

    pub fn give_back(mut self) {
        if let Some(sender) = self.sender.take() {
            self.affinity.give_back(sender, self.number);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.sender.is_some() {
            self.affinity.discard(self.number);
        }
    }
}

/// Opens a connection to the app at `address` within `connect_timeout`.
pub async fn open(
    address: &str,
    connect_timeout: Duration,
    idle_timeout: Duration,
    budget: OwnedSemaphorePermit,
) -> Result<Opened, ProxyError> {
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(unreachable(error)),
        Err(_) => {
            return Err(unreachable(format!(
                "no connection within {connect_timeout:?}"
            )))
        }
    };
    // Small writes go out at once; latency matters more than packets.
    stream.set_nodelay(true).map_err(unreachable)?;
    let (sender, driver) = http1::Builder::new()
        .max_buf_size(super::client::APP_READ_BUFFER)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(unreachable)?;
    Ok(Opened {
        sender,
        driver,
        budget,
        idle_timeout,
    })
}

fn unreachable(error: impl Into<BoxError>) -> ProxyError {
    ProxyError::UpstreamUnreachable(error.into())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http::{Request, Response, StatusCode, Uri, Version};
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::UpstreamConfig;
    use crate::metrics::RequestOrigin;
    use crate::proxy::client::UpstreamClient;
    use crate::proxy::server::{Handler, Listener, Timeouts};
    use crate::proxy::{body, client_body, ConnInfo};

    /// What the loopback app does after each answer.
    #[derive(Clone, Copy, PartialEq)]
    enum AfterAnswer {
        KeepAlive,
        /// Closes the connection without saying so (`Connection: close`),
        /// as an app whose keep-alive timeout ran out does.
        Close,
    }

    /// A loopback app that answers every request `200 ok` and counts the
    /// connections it accepted and saw closed.
    struct App {
        uri: Uri,
        accepted: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
    }

    async fn app(after: AfterAnswer) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (counted, ended) = (Arc::clone(&accepted), Arc::clone(&closed));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let ended = Arc::clone(&ended);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        head.extend_from_slice(&buf[..n]);
                        // GETs without bodies: one answer per head.
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if stream.write_all(ok).await.is_err() {
                                break;
                            }
                        }
                        if after == AfterAnswer::Close {
                            break;
                        }
                    }
                    drop(stream);
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        App {
            uri,
            accepted,
            closed,
        }
    }

    /// Sends every read to the app as the proxy does: on the client
    /// connection's own connection when the server offers one.
    struct Reads(UpstreamClient);

    impl Reads {
        async fn read(
            &self,
            req: Request<Incoming>,
            affinity: Option<&ReadAffinity>,
        ) -> Response<ProxyBody> {
            let (body, progress) =
                client_body::timed(body::empty(), Duration::from_secs(5), RequestOrigin::Client);
            let upstream = Request::builder()
                .uri(self.0.uri_for(req.uri().path_and_query()))
                .header(http::header::HOST, "app")
                .body(body)
                .unwrap();
            match self.0.send(upstream, &progress, affinity).await {
                Ok(resp) => resp.map(body::stream),
                Err(error) => body::text_response(StatusCode::BAD_GATEWAY, error.to_string()),
            }
        }
    }

    impl Handler for Reads {
        async fn handle(
            self: Arc<Self>,
            req: Request<Incoming>,
            _: ConnInfo,
        ) -> Response<ProxyBody> {
            self.read(req, None).await
        }

        fn keeps_app_connections(&self) -> bool {
            true
        }

        async fn handle_with_affinity(
            self: Arc<Self>,
            req: Request<Incoming>,
            _: ConnInfo,
            affinity: Arc<ReadAffinity>,
        ) -> Response<ProxyBody> {
            self.read(req, Some(&affinity)).await
        }
    }

    /// litegate's public listener in front of `app`, with at most
    /// `affinity_cap` client connections holding an app connection.
    async fn proxy(app: &App, affinity_cap: usize) -> (SocketAddr, crate::shutdown::Trigger) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let timeouts = Timeouts {
            head: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(10),
            http2_keepalive_timeout: Duration::from_secs(10),
        };
        let server = Listener {
            name: "public",
            tls: None,
            timeouts: Arc::new(arc_swap::ArcSwap::from_pointee(timeouts)),
            max_header_bytes: 16 * 1024,
            max_connections: 64,
            http1_only: false,
            shutdown_grace: Duration::from_secs(1),
            count_traffic: false,
        };
        let client = UpstreamClient::new(&UpstreamConfig::default(), &app.uri, affinity_cap);
        let (trigger, shutdown) = crate::shutdown::channel();
        tokio::spawn(server.serve(listener, Arc::new(Reads(client)), shutdown));
        (addr, trigger)
    }

    async fn http1_client(
        addr: SocketAddr,
    ) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    async fn get(
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    ) -> (StatusCode, Bytes) {
        sender.ready().await.unwrap();
        let req = Request::builder()
            .uri("/read")
            .header(http::header::HOST, "litegate")
            .body(Empty::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    /// Two reads, both answered 200: the first goes over the pool's
    /// connection, the second over the client connection's own.
    async fn read_twice(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) {
        assert_eq!(get(sender).await.0, StatusCode::OK);
        assert_eq!(get(sender).await.0, StatusCode::OK);
    }

    /// Waits (bounded) until `count` reaches `want`; its value at the end.
    async fn settle(count: &AtomicUsize, want: usize) -> usize {
        for _ in 0..500 {
            if count.load(Ordering::SeqCst) == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        count.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn each_client_connection_reads_over_its_own_app_connection() {
        let app = app(AfterAnswer::KeepAlive).await;
        let (addr, _stop) = proxy(&app, 16).await;
        let mut first = http1_client(addr).await;
        for _ in 0..5 {
            assert_eq!(get(&mut first).await, (StatusCode::OK, Bytes::from("ok")));
        }
        // The first read took the pool's connection, the other four the
        // client connection's own.
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
        let mut second = http1_client(addr).await;
        for _ in 0..3 {
            assert_eq!(get(&mut second).await.0, StatusCode::OK);
            assert_eq!(get(&mut first).await.0, StatusCode::OK);
        }
        // Interleaved, each client connection keeps to its own (the pool
        // alone would have used one connection for all of them).
        assert_eq!(app.accepted.load(Ordering::SeqCst), 3);
        assert_eq!(app.closed.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_app_connection_closed_between_reads_is_opened_again() {
        let app = app(AfterAnswer::Close).await;
        let (addr, _stop) = proxy(&app, 16).await;
        let mut client = http1_client(addr).await;
        for round in 1..=4 {
            assert_eq!(get(&mut client).await, (StatusCode::OK, Bytes::from("ok")));
            // The app has closed the connection before the next read.
            assert_eq!(settle(&app.closed, round).await, round);
        }
        assert_eq!(app.accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_client_connection_that_closes_closes_its_app_connection() {
        let app = app(AfterAnswer::KeepAlive).await;
        let (addr, _stop) = proxy(&app, 16).await;
        let mut client = http1_client(addr).await;
        read_twice(&mut client).await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(app.closed.load(Ordering::SeqCst), 0);
        drop(client);
        // Its own closes with it; the pool keeps the other.
        assert_eq!(settle(&app.closed, 1).await, 1);
    }

    #[tokio::test]
    async fn an_idle_client_connection_lets_its_app_connection_go() {
        let app = app(AfterAnswer::KeepAlive).await;
        let (addr, _stop) = proxy(&app, 16).await;
        let mut client = http1_client(addr).await;
        read_twice(&mut client).await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
        // The client stays connected and sends nothing: its own app
        // connection closes after `AFFINITY_IDLE` (the pool's stays, for
        // `upstream.pool_idle_timeout`).
        assert_eq!(settle(&app.closed, 1).await, 1);
        // The next reads open a new one.
        read_twice(&mut client).await;
        assert_eq!(app.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn past_the_budget_reads_use_the_pool() {
        let app = app(AfterAnswer::KeepAlive).await;
        let (addr, _stop) = proxy(&app, 1).await;
        let mut holder = http1_client(addr).await;
        read_twice(&mut holder).await;
        let mut others = Vec::new();
        for _ in 0..3 {
            let mut client = http1_client(addr).await;
            read_twice(&mut client).await;
            others.push(client);
        }
        // The holder's own connection and the pool's one, reused in turn.
        assert_eq!(app.accepted.load(Ordering::SeqCst), 2);
        drop(holder);
        assert_eq!(settle(&app.closed, 1).await, 1);
    }

    #[tokio::test]
    async fn concurrent_requests_on_one_http2_connection_are_all_answered() {
        let app = app(AfterAnswer::KeepAlive).await;
        let (addr, _stop) = proxy(&app, 16).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let reads = (0..16).map(|i| {
            let mut sender = sender.clone();
            async move {
                let req = Request::builder()
                    .version(Version::HTTP_2)
                    .uri(format!("http://litegate/read/{i}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status();
                (status, resp.into_body().collect().await.unwrap().to_bytes())
            }
        });
        let answers = futures::future::join_all(reads).await;
        assert_eq!(answers.len(), 16);
        for answer in answers {
            assert_eq!(answer, (StatusCode::OK, Bytes::from("ok")));
        }
    }
}
