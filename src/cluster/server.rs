//! The cluster listener's routes. Every request is authenticated first (the
//! shared secret here; mutual TLS already during the handshake) and an
//! unauthenticated one never reaches an app.
//!
//! - `GET /_litegate/epoch`: this node's view of the primary (static mode).
//! - `POST /_litegate/epoch`: a peer announces a new epoch.
//! - `POST /_litegate/raft/…`: Raft RPCs (raft mode), see [`raft::rpc`].
//! - anything else: a write forwarded by a peer, fenced in
//!   [`Proxy::handle_forwarded`].

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::primary::{Epoch, PrimarySource};
use crate::proxy::body::{self, ProxyBody};
use crate::proxy::errors::ProxyError;
use crate::proxy::server::Handler;
use crate::proxy::{ConnInfo, Proxy};

use super::auth::SharedSecret;
use super::raft::{self, RaftNode};

pub struct ClusterService {
    pub proxy: Arc<Proxy>,
    pub source: Arc<PrimarySource>,
    pub secret: Option<SharedSecret>,
    pub raft: Option<Arc<RaftNode>>,
}

impl Handler for ClusterService {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        if let Some(secret) = &self.secret {
            if !secret.verify(req.headers()) {
                tracing::warn!(peer = %conn.peer, path = req.uri().path(), "refused an unauthenticated cluster request");
                return ProxyError::Unauthorized.into_response();
            }
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/_litegate/epoch") => self.epoch(),
            (&Method::POST, "/_litegate/epoch") => self.announced(req).await,
            (&Method::POST, path) if path.starts_with("/_litegate/raft/") => {
                let endpoint = &path["/_litegate/raft/".len()..];
                match &self.raft {
                    Some(node) => {
                        let endpoint = endpoint.to_owned();
                        raft::rpc::handle(node, &endpoint, req).await
                    }
                    None => body::text_response(
                        StatusCode::NOT_FOUND,
                        "this node is not in raft mode: check primary.mode on every node\n",
                    ),
                }
            }
            (_, path) if path.starts_with("/_litegate/") => {
                body::text_response(StatusCode::NOT_FOUND, "no such cluster endpoint\n")
            }
            _ => self.proxy.handle_forwarded(req).await,
        }
    }
}

impl ClusterService {
    /// This node's view of the primary: the static epoch, or in other
    /// modes the current term and primary (peers use it to see who answers).
    fn epoch(&self) -> Response<ProxyBody> {
        let view = match &*self.source {
            PrimarySource::Static(s) => s.current(),
            other => {
                let state = other.watch().current();
                Epoch {
                    epoch: state.term,
                    primary: state.primary.as_deref().unwrap_or_default().to_owned(),
                }
            }
        };
        body::json_response(StatusCode::OK, &view)
    }

    async fn announced(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let bytes = match Limited::new(req.into_body(), 4096).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return body::text_response(
                    StatusCode::BAD_REQUEST,
                    "announcement too large or cut short\n",
                )
            }
        };
        match serde_json::from_slice::<Epoch>(&bytes) {
            Ok(seen) => {
                self.source.observe(seen.epoch, &seen.primary);
                self.epoch()
            }
            Err(e) => body::text_response(
                StatusCode::BAD_REQUEST,
                format!("not an epoch announcement: {e}\n"),
            ),
        }
    }
}
