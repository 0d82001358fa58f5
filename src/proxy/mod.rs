//! The request path. `README.md` beside this file walks through a request's
//! life in order; [`Proxy::handle`] is where it happens.

pub mod body;
pub mod classify;
pub mod client;
pub mod errors;
pub mod headers;
pub mod health;
pub mod server;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::config::{Cidr, Config};
use crate::metrics::{self, Route};
use crate::primary::{PrimaryWatch, Role};

use body::ProxyBody;
use classify::{Class, Classifier};
use client::UpstreamClient;
use errors::ProxyError;
use headers::{ForwardedFor, LITEGATE_PRIMARY, LITEGATE_ROLE, LITEGATE_SERVED_BY, LITEGATE_TERM};
use health::UpstreamHealth;

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer is in `public.trusted_proxies`.
    pub trusted: bool,
}

pub struct Proxy {
    node_name: HeaderValue,
    classifier: Classifier,
    upstream: UpstreamClient,
    health: Arc<UpstreamHealth>,
    primary: PrimaryWatch,
    trusted_proxies: Vec<Cidr>,
    max_header_bytes: usize,
}

impl Proxy {
    pub fn new(
        config: &Config,
        upstream: UpstreamClient,
        health: Arc<UpstreamHealth>,
        primary: PrimaryWatch,
    ) -> Result<Self, String> {
        let node_name = HeaderValue::from_str(&config.node.name).map_err(|_| {
            format!("config key `node.name`: {:?} cannot be sent in a header; use letters, digits and dashes", config.node.name)
        })?;
        Ok(Self {
            node_name,
            classifier: Classifier::new(&config.routing),
            upstream,
            health,
            primary,
            trusted_proxies: config.public.trusted_proxies.clone(),
            max_header_bytes: config.public.max_header_bytes,
        })
    }

    pub fn is_trusted(&self, peer: &SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.trusted_proxies.iter().any(|net| net.0.contains(&ip))
    }

    /// One request, start to finish. Never fails: every error becomes the
    /// response DESIGN §7 describes.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let (class, result) = self.route(req, conn).await;
        let (route, mut resp) = match result {
            Ok(resp) => (Route::Local, resp),
            Err(err) => {
                let route = match err.side() {
                    errors::Side::Downstream => Route::Rejected,
                    _ => Route::Local,
                };
                if matches!(err, ProxyError::UpstreamUnreachable(_)) {
                    self.health.set(false);
                }
                (route, err.into_response())
            }
        };
        resp.headers_mut()
            .insert(LITEGATE_SERVED_BY, self.node_name.clone());
        metrics::record_request(
            class.as_str(),
            route,
            resp.status().as_u16(),
            started.elapsed(),
        );
        resp
    }

    /// Steps 2–6 of the lifecycle: check, classify, rewrite, send, answer.
    async fn route(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> (Class, Result<Response<ProxyBody>, ProxyError>) {
        let classification =
            self.classifier
                .classify(req.method(), req.uri().path(), req.headers());
        let class = classification.class;

        let size = headers::head_size(
            req.headers(),
            req.uri().path_and_query().map_or(1, |pq| pq.as_str().len()),
        );
        if size > self.max_header_bytes {
            return (
                class,
                Err(ProxyError::HeadersTooLarge {
                    size,
                    limit: self.max_header_bytes,
                }),
            );
        }

        // The app must see the Host the client asked for, byte for byte;
        // HTTP/2 carries it as the :authority instead.
        let host = match req.headers().get(header::HOST) {
            Some(host) => Some(host.clone()),
            None => req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
        };
        if host.is_none() && req.version() == Version::HTTP_11 {
            return (
                class,
                Err(ProxyError::BadRequest(
                    "HTTP/1.1 requests need a Host header",
                )),
            );
        }

        let client_upgrade = classification
            .upgrade
            .is_some()
            .then(|| hyper::upgrade::on(&mut req));

        let client_version = req.version();
        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        headers::strip_litegate(h);
        headers::strip_hop_by_hop(h, classification.upgrade.clone());
        ForwardedFor {
            client: conn.peer.ip().to_canonical(),
            trusted: conn.trusted,
            proto: if conn.tls { "https" } else { "http" },
            host: host.as_ref(),
        }
        .apply(h);
        if let Some(host) = host {
            h.insert(header::HOST, host);
        }
        self.stamp_role(h);

        parts.uri = self.upstream.uri_for(parts.uri.path_and_query());
        parts.version = Version::HTTP_11;
        let upstream_req = Request::from_parts(parts, body::stream(body));

        let mut resp = match self.upstream.send(upstream_req).await {
            Ok(resp) => resp,
            Err(err) => return (class, Err(err)),
        };

        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        let carried_upgrade = if upgraded {
            resp.headers().get(header::UPGRADE).cloned()
        } else {
            None
        };
        if let (true, Some(client_upgrade)) = (upgraded, client_upgrade) {
            upgrade::bridge(client_upgrade, hyper::upgrade::on(&mut resp));
        }
        headers::strip_hop_by_hop(resp.headers_mut(), carried_upgrade);
        // Answer in the client's protocol, not the app's (an HTTP/1.0 app
        // must not turn a keep-alive client connection into a closing one).
        *resp.version_mut() = client_version;
        (class, Ok(resp.map(body::stream)))
    }

    /// Tells the app what this node is, so primary-only work can check.
    fn stamp_role(&self, h: &mut http::HeaderMap) {
        let state = self.primary.current();
        match state.role {
            Role::Primary => {
                h.insert(LITEGATE_ROLE, HeaderValue::from_static("primary"));
                h.insert(LITEGATE_TERM, HeaderValue::from(state.term));
            }
            Role::Replica | Role::Unknown => {
                h.insert(LITEGATE_ROLE, HeaderValue::from_static("replica"));
                if let Some(primary) = state.primary.and_then(|p| HeaderValue::from_str(&p).ok()) {
                    h.insert(LITEGATE_PRIMARY, primary);
                }
            }
        }
    }
}
