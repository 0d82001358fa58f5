//! The pooled HTTP/1.1 client to the local app: keep-alive connections,
//! `TCP_NODELAY`, a connect timeout, a bound on requests in flight, and a
//! deadline for the response head.

use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::limit::ConcurrencyLimit;
use tower::{Service, ServiceExt};

use crate::config::UpstreamConfig;

use super::body::ProxyBody;
use super::errors::ProxyError;

#[derive(Clone)]
pub struct UpstreamClient {
    service: ConcurrencyLimit<Client<HttpConnector, ProxyBody>>,
    scheme: Scheme,
    authority: Authority,
    timeout: Duration,
}

impl UpstreamClient {
    pub fn new(config: &UpstreamConfig, target: &Uri) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout.get()));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout.get())
            .pool_max_idle_per_host(config.max_concurrency)
            // The client's Host is the app's address; the user's Host is set
            // on every request before it gets here.
            .set_host(false)
            .build(connector);
        Self {
            service: ConcurrencyLimit::new(client, config.max_concurrency),
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
        let mut service = self.service.clone();
        let call = async move {
            let ready = service
                .ready()
                .await
                .map_err(|e| ProxyError::UpstreamBroken(e.into()))?;
            ready.call(req).await.map_err(|e| {
                if e.is_connect() {
                    ProxyError::UpstreamUnreachable(e.into())
                } else {
                    ProxyError::UpstreamBroken(e.into())
                }
            })
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout(self.timeout)),
        }
    }
}
