//! The pooled HTTP/1.1 client to the local app: keep-alive connections,
//! `TCP_NODELAY`, a connect timeout, a bound on requests in flight (shared
//! by reads and writes), and a deadline for the response head. Writes use
//! their own pool, whose connections are fenced (`fence.rs`).

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;
use tower::limit::ConcurrencyLimit;
use tower::{Service, ServiceExt};

use crate::config::UpstreamConfig;
use crate::primary::PrimaryWatch;

use super::body::ProxyBody;
use super::errors::ProxyError;
use super::fence::{self, FencedConnector};

#[derive(Clone)]
pub struct UpstreamClient {
    service: ConcurrencyLimit<Client<HttpConnector, ProxyBody>>,
    writes: ConcurrencyLimit<Client<FencedConnector, ProxyBody>>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

impl UpstreamClient {
    /// `primary` fences the writes: see [`UpstreamClient::send_write`].
    pub fn new(config: &UpstreamConfig, target: &Uri, primary: PrimaryWatch) -> Self {
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
            // The client's Host is the app's address; the user's Host is set
            // on every request before it gets here.
            .set_host(false);
        let reads = builder.build(connector.clone());
        let writes = builder.build(FencedConnector::new(connector, primary));
        let in_flight = Arc::new(Semaphore::new(config.max_concurrency));
        Self {
            service: ConcurrencyLimit::with_semaphore(reads, Arc::clone(&in_flight)),
            writes: ConcurrencyLimit::with_semaphore(writes, in_flight),
            scheme: target.scheme().cloned().unwrap_or(Scheme::HTTP),
            authority: target
                .authority()
                .cloned()
                .expect("upstream.url was validated to have a host"),
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

    /// Sends a request and waits for the response head (not the body, which
    /// streams for as long as the app sends it).
    pub async fn send(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, ProxyError> {
        self.deadline(call(self.service.clone(), req)).await
    }

    /// As [`send`](Self::send), for a write that only the primary's app may
    /// take: if this node stops being allowed to write before the request
    /// leaves, it fails with [`ProxyError::Fenced`] and no byte of it
    /// reached the app.
    pub async fn send_write(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        self.deadline(call(self.writes.clone(), req)).await
    }

    async fn deadline(
        &self,
        call: impl std::future::Future<Output = Result<Response<Incoming>, ProxyError>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout(self.timeout)),
        }
    }
}

async fn call<C>(
    mut service: ConcurrencyLimit<Client<C, ProxyBody>>,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, ProxyError>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let ready = service
        .ready()
        .await
        .map_err(|e| ProxyError::UpstreamBroken(e.into()))?;
    ready.call(req).await.map_err(|e| {
        if e.is_connect() {
            ProxyError::UpstreamUnreachable(e.into())
        } else if fence::tripped_before_head(&e) {
            ProxyError::Fenced
        } else {
            ProxyError::UpstreamBroken(e.into())
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::primary::{PrimaryCell, PrimaryState, Role};
    use crate::proxy::body;

    /// A loopback "app" that answers every request head with 200 and counts
    /// the bytes it received.
    async fn counting_app() -> (Uri, Arc<AtomicUsize>) {
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
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        counter.fetch_add(n, Ordering::SeqCst);
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

    #[tokio::test]
    async fn a_deposed_node_sends_no_byte_of_a_write() {
        let (uri, received) = counting_app().await;
        let cell = PrimaryCell::new(state(Role::Primary));
        let client = UpstreamClient::new(&UpstreamConfig::default(), &uri, cell.watch());

        // Primary: the write goes out, and the connection is kept.
        let resp = client.send_write(post(&client)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let sent = received.load(Ordering::SeqCst);
        assert!(sent > 0);

        // Deposed: fenced before the head, on the pooled connection.
        cell.publish(state(Role::Replica));
        let err = client.send_write(post(&client)).await.unwrap_err();
        assert!(matches!(err, ProxyError::Fenced), "{err:?}");
        assert!(err.is_retryable());
        // And on a fresh one.
        let err = client.send_write(post(&client)).await.unwrap_err();
        assert!(matches!(err, ProxyError::Fenced), "{err:?}");
        assert_eq!(
            received.load(Ordering::SeqCst),
            sent,
            "the app got nothing more"
        );

        // Reads are not fenced.
        let read = Request::builder()
            .uri(client.uri_for(None))
            .header(http::header::HOST, "app")
            .body(body::empty())
            .unwrap();
        assert_eq!(client.send(read).await.unwrap().status(), 200);
    }
}
