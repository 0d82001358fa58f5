//! The one pooled client for talking to peers' cluster listeners: forwarded
//! writes and control messages. Signs each request with the shared secret; speaks TLS with a
//! client certificate when mutual TLS is configured.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;

use crate::proxy::body::{self, ProxyBody};
use crate::proxy::errors::ProxyError;
use crate::tls::{self, MutualTls};

use super::auth::{SharedSecret, AUTH_HEADER};

/// How long an unused pooled connection to a peer is kept.
const POOL_IDLE: Duration = Duration::from_secs(4);

/// How long a control message (poll, announcement) may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct PeerClient {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    scheme: &'static str,
    secret: Option<SharedSecret>,
    /// For forwarded requests: to the primary's response head.
    timeout: Duration,
}

impl PeerClient {
    pub fn new(
        mtls: Option<&MutualTls>,
        secret: Option<SharedSecret>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        let (tls_config, scheme) = match mtls {
            Some(m) => (m.client()?, "https"),
            None => (tls::no_tls_client()?, "http"),
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // Well below a peer's header_read_timeout (10 s by default), which closes
            // idle connections: a write sent on a connection the peer is
            // closing fails and may not be retried.
            .pool_idle_timeout(POOL_IDLE)
            // A forwarded response streams on to a client that may read it
            // slowly: read ahead of it no more than from the local app.
            .http1_max_buf_size(crate::proxy::client::APP_READ_BUFFER)
            .set_host(false)
            .build(connector);
        Ok(Self {
            client,
            scheme,
            secret,
            timeout,
        })
    }

    pub fn uri(&self, peer: &str, path_and_query: &str) -> Result<Uri, ProxyError> {
        format!("{}://{peer}{path_and_query}", self.scheme)
            .parse()
            .map_err(|_| ProxyError::BadRequest("the request path cannot be forwarded"))
    }

    /// Sends a forwarded write to a peer, with the shared secret. Unbounded
    /// in time: the caller knows when the peer admitted the write, and
    /// bounds the wait before and after that differently (`forward.rs`).
    pub async fn forward(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.sign(&mut req);
        self.client.request(req).await
    }

    /// Adds the request's signature under the shared secret (the secret
    /// itself never leaves this node).
    fn sign<B>(&self, req: &mut Request<B>) {
        if let Some(secret) = &self.secret {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let auth = secret.sign(req.method(), path);
            req.headers_mut().insert(AUTH_HEADER, auth);
        }
    }

    /// How long a forwarded write waits for the primary's response head
    /// once the primary admitted it.
    pub fn forward_timeout(&self) -> Duration {
        self.timeout
    }

    /// A small JSON request to a peer's `/_litegate/…` endpoint.
    pub async fn control<T: DeserializeOwned>(
        &self,
        peer: &str,
        method: Method,
        path: &str,
        json: Option<&impl serde::Serialize>,
    ) -> Result<T, String> {
        let body = match json {
            Some(v) => serde_json::to_vec(v).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        let (status, bytes) = self
            .call(peer, method, path, &[], body, CONTROL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes).trim()
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }

    /// One whole request and response to a peer's `/_litegate/…`
    /// endpoint, bounded by `timeout`.
    pub async fn call(
        &self,
        peer: &str,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let uri = self
            .uri(peer, path)
            .map_err(|e| CallError::Failed(e.to_string()))?;
        let host = HeaderValue::from_str(peer).map_err(|e| CallError::Failed(e.to_string()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(if body.is_empty() {
                body::empty()
            } else {
                body::full(body)
            })
            .map_err(|e| CallError::Failed(e.to_string()))?;
        for (name, value) in headers {
            req.headers_mut().insert(name, value.clone());
        }
        self.sign(&mut req);
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| {
                if e.is_connect() {
                    CallError::Unreachable(e.to_string())
                } else {
                    CallError::Failed(e.to_string())
                }
            })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| CallError::Failed(e.to_string()))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout(timeout))?
    }
}

/// Why a [`PeerClient::call`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Connecting failed: the peer received nothing.
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}
