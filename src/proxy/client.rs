//! The pooled HTTP/1.1 client to the local app: keep-alive connections,
//! `TCP_NODELAY`, a connect timeout, a bound on requests in flight (shared
//! by reads and writes; a request waiting for a turn is counted in
//! `litegate_requests_queued`), and a deadline for the response head.
//! Reads from an HTTP/1.x client go on the client connection's own
//! connection to the app where it has one (`affinity.rs`); the others, and
//! reads that find none free, take the pool. Writes use their own pool,
//! whose connections are fenced (`fence.rs`).

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::config::UpstreamConfig;
use crate::metrics;

use super::affinity::{self, Checkout, ReadAffinity};
use super::app_connector::AppConnector;
use super::body::ProxyBody;
use super::client_body;
use super::errors::{ProxyError, Sent};
use super::fence::Attempt;
use super::write_pool::WritePool;

/// The most of an app's response read ahead of the client, per request.
/// hyper's default (~400 KiB, grown into by any fast app) is held for as
/// long as the client is slow to read; this still fits any sane response
/// head and keeps streaming at full speed.
pub const APP_READ_BUFFER: usize = 64 * 1024;

/// How long a client connection that sends nothing keeps its own
/// connection to the app (at most `upstream.pool_idle_timeout`). Short: a
/// client that sends its requests back to back keeps it, and an idle one
/// holds no second socket and no buffers for it (each about 8 KiB).
pub const AFFINITY_IDLE: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct UpstreamClient {
    reads: Client<AppConnector, ProxyBody>,
    writes: Arc<WritePool>,
    /// `upstream.max_concurrency` turns at the app, for reads and writes.
    in_flight: Arc<Semaphore>,
    /// How many client connections may hold a connection to the app of
    /// their own (`affinity.rs`) at once.
    affinity_budget: Arc<Semaphore>,
    /// `host:port` of the app.
    address: Arc<str>,
    connect_timeout: Duration,
    /// How long a client connection keeps its own connection to the app
    /// while it sends nothing.
    idle_timeout: Duration,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

impl UpstreamClient {
    /// `affinity_cap`: how many client connections may each hold a
    /// connection to the app at once; 0 sends every read through the pool.
    pub fn new(config: &UpstreamConfig, target: &Uri, affinity_cap: usize) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout.get()));
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout.get())
            .pool_max_idle_per_host(config.max_concurrency)
            .http1_max_buf_size(APP_READ_BUFFER)
            // The client's Host is the app's address; the user's Host is set
            // on every request before it gets here.
            .set_host(false);
        let reads = builder.build(AppConnector(connector));
        let in_flight = Arc::new(Semaphore::new(config.max_concurrency));
        let authority = target
            .authority()
            .cloned()
            .expect("upstream.url was validated to have a host");
        let port = authority.port_u16().unwrap_or(80);
        let address = format!("{}:{port}", authority.host());
        // An idle timeout of zero keeps no connection: nothing to hold.
        let affinity_cap = if config.pool_idle_timeout.get().is_zero() {
            0
        } else {
            affinity_cap.min(Semaphore::MAX_PERMITS)
        };
        let writes = WritePool::new(
            address.clone(),
            config.connect_timeout.get(),
            config.pool_idle_timeout.get(),
            config.max_concurrency,
        );
        Self {
            reads,
            writes,
            in_flight,
            affinity_budget: Arc::new(Semaphore::new(affinity_cap)),
            address: Arc::from(address),
            connect_timeout: config.connect_timeout.get(),
            idle_timeout: config.pool_idle_timeout.get().min(AFFINITY_IDLE),
            scheme: target.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority,
            timeout: config.timeout.get(),
        }
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The absolute URI the pool needs to pick a connection; only the path
    /// and query go on the wire.
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).expect("scheme, authority and path make a valid URI")
    }

    /// Sends a read and waits for the response head (not the body, which
    /// streams for as long as the app sends it). `progress` is how the
    /// client's body is doing, passed here rather than in the request's
    /// extensions, which cost three allocations per request. `affinity` is
    /// the client connection's slot for a connection to the app of its own
    /// (only an HTTP/1.x client's, and not for an upgrade).
    pub async fn send(
        &self,
        req: Request<ProxyBody>,
        progress: &client_body::Progress,
        affinity: Option<&ReadAffinity>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let exchange = async {
            let _turn = turn(&self.in_flight).await?;
            match affinity {
                Some(affinity) => self.send_affine(req, affinity).await,
                None => self.send_pooled(req).await,
            }
        };
        match client_body::head_within(self.timeout, Some(progress), exchange).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout(self.timeout)),
        }
    }

    async fn send_pooled(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, ProxyError> {
        self.reads.request(req).await.map_err(|e| {
            if e.is_connect() {
                ProxyError::UpstreamUnreachable(e.into())
            } else {
                ProxyError::UpstreamBroken(e.into())
            }
        })
    }

    /// On the client connection's own connection to the app, opened here
    /// if it has none and the budget allows; else through the pool.
    async fn send_affine(
        &self,
        req: Request<ProxyBody>,
        affinity: &ReadAffinity,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut lease = match affinity.checkout() {
            Checkout::Ready(lease) => lease,
            Checkout::Pool => return self.send_pooled(req).await,
            Checkout::Open => {
                let Ok(budget) = Arc::clone(&self.affinity_budget).try_acquire_owned() else {
                    return self.send_pooled(req).await;
                };
                let opened = affinity::open(
                    &self.address,
                    self.connect_timeout,
                    self.idle_timeout,
                    budget,
                )
                .await?;
                affinity.install(opened)
            }
        };
        // The request line carries the path only (origin form); hyper's
        // connection-level client sends the URI as it is given.
        let (mut parts, body) = req.into_parts();
        let absolute = std::mem::take(&mut parts.uri);
        parts.uri = absolute
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        match lease
            .sender()
            .try_send_request(Request::from_parts(parts, body))
            .await
        {
            Ok(resp) => {
                lease.give_back();
                Ok(resp)
            }
            Err(mut failed) => {
                // The lease closes the connection as it goes.
                drop(lease);
                match failed.take_message() {
                    // The app had closed the connection and not a byte of
                    // this request left: the pool sends it, as it would
                    // have on a pooled connection found closed.
                    Some(mut unsent) => {
                        *unsent.uri_mut() = absolute;
                        self.send_pooled(unsent).await
                    }
                    None => Err(ProxyError::UpstreamBroken(failed.into_error().into())),
                }
            }
        }
    }

    /// As [`send`](Self::send), for a write that only the primary's app may
    /// take, under `attempt`'s permit: if the permit lapses before the
    /// request's first byte leaves, it fails with [`ProxyError::Fenced`]
    /// and the app saw nothing of it. Every error's [`Sent`] is what the
    /// connection recorded for this request.
    pub async fn send_write(
        &self,
        req: Request<ProxyBody>,
        attempt: &Arc<Attempt>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let progress = body_progress(&req);
        let exchange = async {
            let _turn = turn(&self.in_flight).await?;
            self.writes.send(req, attempt).await
        };
        match client_body::head_within(self.timeout, progress.as_deref(), exchange).await {
            Ok(result) => result,
            // Given up first, so the connection cannot start on it later.
            Err(_) if attempt.abandon() == Sent::Nothing => Err(ProxyError::UpstreamUnreachable(
                format!("the app took no write within {:?}", self.timeout).into(),
            )),
            Err(_) => Err(ProxyError::UpstreamTimeout(self.timeout)),
        }
    }
}

/// How the client's body is doing, where the request carries one: the
/// deadline for the app's answer counts from its last piece.
fn body_progress<B>(req: &Request<B>) -> Option<Arc<client_body::Progress>> {
    req.extensions()
        .get::<Arc<client_body::Progress>>()
        .cloned()
}

/// One of the app's `upstream.max_concurrency` turns, held until the
/// response head (as long as the exchange runs). A request that finds none
/// free is counted in `litegate_requests_queued` until it gets one; turns
/// go to waiters in order, so a newcomer cannot take one ahead of them.
async fn turn(limit: &Semaphore) -> Result<SemaphorePermit<'_>, ProxyError> {
    if let Ok(permit) = limit.try_acquire() {
        return Ok(permit);
    }
    let _queued = metrics::Queued::enter();
    // The semaphore is never closed; an error here would mean nothing was
    // sent.
    limit
        .acquire()
        .await
        .map_err(|e| ProxyError::UpstreamUnreachable(e.into()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::primary::{PrimaryCell, PrimaryState, Role};
    use crate::proxy::body;
    use crate::proxy::errors::Next;

    /// When a loopback "app" answers what it reads.
    #[derive(Clone, Copy)]
    enum Answer {
        /// 200 after every read: each request, head and body, is small.
        EveryRead,
        /// 200 once, after the first read (the head), before the body.
        Early,
    }

    /// A loopback "app" that answers as `answer` says and counts the bytes
    /// it received.
    async fn counting_app(answer: Answer) -> (Uri, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut answered = false;
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counter.fetch_add(n, Ordering::SeqCst);
                        if matches!(answer, Answer::Early) && answered {
                            continue;
                        }
                        answered = true;
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(ok).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (uri, received)
    }

    fn state(role: Role) -> PrimaryState {
        PrimaryState {
            role,
            term: 1,
            primary: Some(Arc::from("a")),
            lease_deadline: None,
        }
    }

    fn post(client: &UpstreamClient) -> Request<ProxyBody> {
        let mut req = Request::new(body::empty());
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = client.uri_for(None);
        req.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("app"));
        req
    }

    fn attempt(cell: &Arc<PrimaryCell>) -> Arc<Attempt> {
        Attempt::new(cell.watch().permit(None).expect("primary"))
    }

    #[tokio::test]
    async fn a_deposed_node_sends_no_byte_of_a_write() {
        let (uri, received) = counting_app(Answer::EveryRead).await;
        let cell = PrimaryCell::new(state(Role::Primary));
        let client = UpstreamClient::new(&UpstreamConfig::default(), &uri, 0);

        // Primary: the write goes out, and the connection is kept.
        let resp = client
            .send_write(post(&client), &attempt(&cell))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let sent = received.load(Ordering::SeqCst);
        assert!(sent > 0);

        // Deposed after the permit was taken: fenced before the head, on
        // the pooled connection and on a fresh one.
        let pooled = attempt(&cell);
        let fresh = attempt(&cell);
        cell.publish(state(Role::Replica));
        let err = client.send_write(post(&client), &pooled).await.unwrap_err();
        assert!(matches!(err, ProxyError::Fenced), "{err:?}");
        assert_eq!(err.sent(), Sent::Nothing);
        assert_eq!(err.next(), Next::Resend);
        let err = client.send_write(post(&client), &fresh).await.unwrap_err();
        assert!(matches!(err, ProxyError::Fenced), "{err:?}");
        assert_eq!(
            received.load(Ordering::SeqCst),
            sent,
            "the app got nothing more"
        );

        // A permit of an older term does not hold under a newer one.
        let old = attempt(&cell_at(1));
        assert!(old.permit().holds(std::time::Instant::now()));
        let cell2 = cell_at(1);
        let old = attempt(&cell2);
        cell2.publish(PrimaryState {
            term: 2,
            ..state(Role::Primary)
        });
        let err = client.send_write(post(&client), &old).await.unwrap_err();
        assert!(matches!(err, ProxyError::Fenced), "{err:?}");

        // Reads are not fenced.
        let (read_body, progress) = client_body::timed(
            body::empty(),
            Duration::from_secs(5),
            crate::metrics::RequestOrigin::Client,
        );
        let read = Request::builder()
            .uri(client.uri_for(None))
            .header(http::header::HOST, "app")
            .body(read_body)
            .unwrap();
        let resp = client.send(read, &progress, None).await.unwrap();
        assert_eq!(resp.status(), 200);
        // No connection info on each response: it cost three allocations
        // per request (app_connector.rs).
        assert!(resp
            .extensions()
            .get::<hyper_util::client::legacy::connect::HttpInfo>()
            .is_none());
    }

    fn cell_at(term: u64) -> Arc<PrimaryCell> {
        PrimaryCell::new(PrimaryState {
            term,
            ..state(Role::Primary)
        })
    }

    /// Issue 10 item 4: an app that answers before it has read the body
    /// used to make the fence think the next body chunk started a new
    /// request, so a write fenced mid-body was reported as "nothing sent"
    /// and re-routed: applied twice. The attempt now records what it wrote.
    #[tokio::test]
    async fn a_write_fenced_mid_body_after_an_early_answer_counts_as_sent() {
        let (uri, received) = counting_app(Answer::Early).await;
        let cell = PrimaryCell::new(state(Role::Primary));
        let client = UpstreamClient::new(&UpstreamConfig::default(), &uri, 0);
        let (mut tx, streamed) =
            http_body_util::channel::Channel::<bytes::Bytes, body::BoxError>::new(1);
        let mut req = post(&client);
        *req.body_mut() = body::stream(streamed);
        req.headers_mut()
            .insert(http::header::CONTENT_LENGTH, "200000".parse().unwrap());
        let attempt = attempt(&cell);
        tx.send_data(bytes::Bytes::from(vec![b'a'; 1000]))
            .await
            .unwrap();
        // The app answers 200 after the head and the first chunk.
        let resp = client.send_write(req, &attempt).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(attempt.sent(), Sent::Maybe);
        // Deposed mid-body: the next chunk is fenced, and the attempt
        // still says the app saw part of this request.
        cell.publish(state(Role::Replica));
        let _ = tx.send_data(bytes::Bytes::from(vec![b'b'; 1000])).await;
        let _ = tx.send_data(bytes::Bytes::from(vec![b'c'; 1000])).await;
        drop(tx);
        for _ in 0..200 {
            if attempt.was_fenced() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            attempt.was_fenced(),
            "the fence stopped the rest of the body"
        );
        assert_eq!(attempt.sent(), Sent::Maybe);
        assert!(received.load(Ordering::SeqCst) > 0);
    }
}
