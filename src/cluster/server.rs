//! The cluster listener's routes. Every request is authenticated first (its
//! signature under the shared secret here, once per nonce; mutual TLS already during the handshake) and an
//! unauthenticated one never reaches an app.
//!
//! - `GET /_litegate/epoch`: this node's view of the primary (static mode:
//!   also the proposal it promised, if any).
//! - `POST /_litegate/epoch`: a peer announces an epoch it won.
//! - `POST /_litegate/epoch/propose`: a peer's promote asks this node's vote
//!   (static mode).
//! - `POST /_litegate/members`: a membership change forwarded by a peer's
//!   admin listener (raft mode; made only if this node leads).
//! - `POST /_litegate/raft/…`: Raft RPCs (raft mode), see [`raft::rpc`].
//! - anything else: a write forwarded by a peer, fenced in
//!   [`Proxy::handle_forwarded`].

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::log_limit::{self, LogLimit};
use crate::primary::{Epoch, EpochState, PrimarySource};
use crate::proxy::body::{self, ProxyBody};
use crate::proxy::errors::ProxyError;
use crate::proxy::health::UpstreamHealth;
use crate::proxy::server::Handler;
use crate::proxy::{ConnInfo, Proxy};

use super::auth::SharedSecret;
use super::membership;
use super::peers::PeerView;
use super::raft::{self, RaftNode};

pub struct ClusterService {
    pub proxy: Arc<Proxy>,
    pub source: Arc<PrimarySource>,
    pub secret: Option<SharedSecret>,
    pub raft: Option<Arc<RaftNode>>,
    /// This node's app health, told to peers (`None` on a witness).
    pub app_health: Option<Arc<UpstreamHealth>>,
    /// LiteFS's lease: calls forwarded by followers to this leader.
    pub lease: Option<Arc<crate::lease::LeaseService>>,
}

impl Handler for ClusterService {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        if let Some(secret) = &self.secret {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Err(why) = secret.verify(req.method(), path, req.headers()) {
                static REFUSED: LogLimit = LogLimit::new(log_limit::EVERY);
                if let Some(suppressed) = REFUSED.allow(&conn.peer.ip().to_string()) {
                    tracing::warn!(peer = %conn.peer, path = req.uri().path(), %why, suppressed, "refused an unauthenticated cluster request (then at most once a minute per address, with the count held back)");
                }
                return ProxyError::Unauthorized.into_response();
            }
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/_litegate/epoch") => self.epoch(),
            (&Method::POST, "/_litegate/epoch") => self.announced(req).await,
            (&Method::POST, "/_litegate/epoch/propose") => self.proposed(req).await,
            (&Method::POST, membership::CLUSTER_PATH) => self.member_change(req).await,
            (&Method::POST, path) if path.starts_with("/_litegate/raft/") => {
                let endpoint = &path["/_litegate/raft/".len()..];
                match &self.raft {
                    Some(node) => {
                        let endpoint = endpoint.to_owned();
                        raft::rpc::handle(node, &endpoint, req, conn.peer).await
                    }
                    None => body::text_response(
                        StatusCode::NOT_FOUND,
                        "this node is not in raft mode: check primary.mode on every node\n",
                    ),
                }
            }
            (&Method::POST, crate::lease::service::FORWARD_PATH) => self.lease_call(req).await,
            (&Method::POST, crate::lease::handoff::PROMOTE_PATH) => self.lease_promote().await,
            (_, path) if path.starts_with("/_litegate/") => {
                body::text_response(StatusCode::NOT_FOUND, "no such cluster endpoint\n")
            }
            _ => self.proxy.handle_forwarded(req).await,
        }
    }
}

impl ClusterService {
    /// A Consul call a follower's LiteFS made, for this leader to execute.
    async fn lease_call(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let Some(lease) = &self.lease else {
            return body::text_response(
                StatusCode::NOT_FOUND,
                "this node serves no LiteFS lease: set lease.listen on every node\n",
            );
        };
        let bytes = match Limited::new(req.into_body(), 256 * 1024).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                return body::text_response(StatusCode::BAD_REQUEST, "lease call unreadable\n")
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(call) => body::json_response(StatusCode::OK, &lease.answer_forwarded(call).await),
            Err(e) => body::text_response(StatusCode::BAD_REQUEST, format!("lease call: {e}\n")),
        }
    }

    /// The leader hands the lease to this node: its LiteFS is asked to
    /// take it over (`lease::handoff`).
    async fn lease_promote(&self) -> Response<ProxyBody> {
        let Some(lease) = &self.lease else {
            return body::text_response(
                StatusCode::NOT_FOUND,
                "this node serves no LiteFS lease: set lease.listen on every node\n",
            );
        };
        match lease.promote_local_litefs().await {
            Ok(()) => body::text_response(StatusCode::OK, "LiteFS is taking the lease over\n"),
            Err(error) => body::text_response(StatusCode::BAD_GATEWAY, format!("{error}\n")),
        }
    }

    /// This node's view of the primary: the static epoch state, or in
    /// other modes the current term and primary (peers use it to see who
    /// answers); with whether this node's app accepts connections, which
    /// app-aware leadership reads (`primary::app_aware`).
    fn epoch(&self) -> Response<ProxyBody> {
        let view = match &*self.source {
            PrimarySource::Static(s) => s.state(),
            other => {
                let state = other.watch().current();
                EpochState {
                    epoch: state.term,
                    primary: state.primary.as_deref().unwrap_or_default().to_owned(),
                    promised: None,
                }
            }
        };
        let view = PeerView {
            epoch: view,
            app_up: self.app_health.as_ref().map(|health| health.is_up()),
            node_id: self.raft.as_ref().map(|node| node.me),
            incarnation: self
                .raft
                .as_ref()
                .map(|node| node.incarnations.mine().to_owned()),
        };
        body::json_response(StatusCode::OK, &view)
    }

    async fn member_change(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        // `source.raft()`: raft mode with or without `[lease]`.
        let Some(leadership) = self.source.raft() else {
            return body::text_response(
                StatusCode::NOT_FOUND,
                "this node is not in raft mode: check primary.mode on every node\n",
            );
        };
        match membership::read_change(req).await {
            Ok(change) => membership::on_leader(leadership, &change).await,
            Err(refusal) => refusal,
        }
    }

    async fn announced(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        match read_claim(req).await {
            Ok(seen) => {
                self.source.observe(seen.epoch, &seen.primary);
                self.epoch()
            }
            Err(refusal) => refusal,
        }
    }

    /// A vote in a static-mode promote: the promise is on disk before the
    /// answer leaves.
    async fn proposed(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let PrimarySource::Static(node) = &*self.source else {
            return body::text_response(
                StatusCode::CONFLICT,
                "this node is not in static mode: check primary.mode on every node\n",
            );
        };
        let proposal = match read_claim(req).await {
            Ok(proposal) => proposal,
            Err(refusal) => return refusal,
        };
        match node.accept(&proposal) {
            Ok(vote) => body::json_response(StatusCode::OK, &vote),
            Err(error) => {
                body::text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n"))
            }
        }
    }
}

/// An `{epoch, primary}` body, as announcements and proposals send it.
async fn read_claim(req: Request<Incoming>) -> Result<Epoch, Response<ProxyBody>> {
    let bytes = match Limited::new(req.into_body(), 4096).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(body::text_response(
                StatusCode::BAD_REQUEST,
                "epoch message too large or cut short\n",
            ))
        }
    };
    serde_json::from_slice::<Epoch>(&bytes).map_err(|e| {
        body::text_response(
            StatusCode::BAD_REQUEST,
            format!("not an epoch message: {e}\n"),
        )
    })
}
