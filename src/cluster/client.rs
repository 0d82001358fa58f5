//! The one pooled client for talking to peers' cluster listeners: forwarded
//! writes and control messages. Adds the shared secret; speaks TLS with a
//! client certificate when mutual TLS is configured.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;

use crate::proxy::body::{self, ProxyBody};
use crate::proxy::errors::ProxyError;
use crate::tls::{self, MutualTls};

use super::auth::{SharedSecret, SECRET_HEADER};

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
            .pool_idle_timeout(Duration::from_secs(90))
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

    /// Sends a request to a peer; the response head must come within the
    /// forwarding timeout. A connect failure means nothing was sent.
    pub async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        if let Some(secret) = &self.secret {
            req.headers_mut().insert(SECRET_HEADER, secret.header());
        }
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(self.timeout)),
            Ok(Err(e)) if e.is_connect() => Err(ProxyError::PeerUnreachable(e.into())),
            Ok(Err(e)) => Err(ProxyError::UpstreamBroken(e.into())),
            Ok(Ok(resp)) => Ok(resp),
        }
    }

    /// A small JSON request to a peer's `/_litegate/…` endpoint.
    pub async fn control<T: DeserializeOwned>(
        &self,
        peer: &str,
        method: Method,
        path: &str,
        json: Option<&impl serde::Serialize>,
    ) -> Result<T, String> {
        let uri = self.uri(peer, path).map_err(|e| e.to_string())?;
        let body = match json {
            Some(v) => body::full(serde_json::to_vec(v).map_err(|e| e.to_string())?),
            None => body::empty(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(
                http::header::HOST,
                HeaderValue::from_str(peer).map_err(|e| e.to_string())?,
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| e.to_string())?;
        if let Some(secret) = &self.secret {
            req.headers_mut().insert(SECRET_HEADER, secret.header());
        }
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes: Bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() {
                return Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&bytes).trim()
                ));
            }
            serde_json::from_slice(&bytes).map_err(|e| e.to_string())
        };
        tokio::time::timeout(CONTROL_TIMEOUT, call)
            .await
            .map_err(|_| {
                format!(
                    "no answer within {}",
                    humantime::format_duration(CONTROL_TIMEOUT)
                )
            })?
    }
}
