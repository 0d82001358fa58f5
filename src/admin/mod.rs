//! The admin listener (docs/design.md §6): health, readiness, role, status and
//! metrics for operators and orchestrators, and the operator's actions.
//! Loopback by default.

pub mod client;
mod members;
mod ready;

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

use crate::cluster::client::PeerClient;
use crate::cluster::peers::{ClusterEpochPeers, PeerTable};
use crate::config::{AdminConfig, Config};
use crate::consistency::Position;
use crate::primary::{static_promote, PrimarySource, PromoteError, Role};
use crate::proxy::body::{self, ProxyBody};
use crate::proxy::health::UpstreamHealth;
use crate::proxy::server::{Handler, Listener};
use crate::proxy::ConnInfo;
use crate::shutdown::Shutdown;

pub struct ClusterAdmin {
    pub peers: Arc<PeerTable>,
    pub client: PeerClient,
}

pub struct AdminState {
    pub config: Arc<Config>,
    pub source: Arc<PrimarySource>,
    pub health: Arc<UpstreamHealth>,
    pub metrics: PrometheusHandle,
    /// The LiteFS replication position, where `litefs.mount` is set.
    pub position: Option<Arc<Position>>,
    pub started: Instant,
    pub cluster: Option<ClusterAdmin>,
    /// Required as `Authorization: Bearer …` on POST endpoints when set.
    pub token: Option<String>,
    /// LiteFS's lease from litegate's Raft, when `lease.listen` is set.
    pub lease: Option<Arc<crate::lease::LeaseService>>,
}

/// Reads `admin.token_file`; refuses an admin listener reachable from other
/// hosts that would let anyone promote a node.
pub fn load_token(config: &AdminConfig) -> Result<Option<String>, String> {
    if config.token_file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config.token_file).map_err(|e| {
        format!(
            "config key `admin.token_file`: cannot read {}: {e}",
            config.token_file
        )
    })?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(format!(
            "config key `admin.token_file`: {} is empty",
            config.token_file
        ));
    }
    Ok(Some(token))
}

/// The admin service on the shared listener (HTTP/1.1 only): the same
/// connection cap, head deadline and idle timeout as the other listeners,
/// from its own `admin.max_connections`.
struct AdminHandler {
    state: Arc<AdminState>,
    loopback: bool,
}

impl Handler for AdminHandler {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _conn: ConnInfo,
    ) -> Response<ProxyBody> {
        if members::is_change(&req) {
            return match authorize(&self.state, &req, self.loopback) {
                Err((status, why)) => body::text_response(status, why),
                Ok(()) => members::change(&self.state, req).await,
            };
        }
        answer(&self.state, &req, self.loopback).await
    }
}

pub async fn serve(
    listener_options: Listener,
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: Shutdown,
) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    let handler = Arc::new(AdminHandler { state, loopback });
    listener_options.serve(listener, handler, shutdown).await;
}

async fn answer(
    state: &AdminState,
    req: &Request<Incoming>,
    loopback: bool,
) -> Response<ProxyBody> {
    let primary = state.source.watch().current();
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/promote") => match authorize(state, req, loopback) {
            Err((status, why)) => body::text_response(status, why),
            Ok(()) => promote(state).await,
        },
        (&Method::POST, "/handoff") => match authorize(state, req, loopback) {
            Err((status, why)) => body::text_response(status, why),
            Ok(()) => handoff(state, req.uri().query()).await,
        },
        (&Method::GET | &Method::HEAD, path) => match path {
            "/healthz" => body::text_response(StatusCode::OK, "ok\n"),
            "/readyz" => match ready::max_lag(req.uri().query()) {
                Err(why) => body::text_response(StatusCode::BAD_REQUEST, format!("{why}\n")),
                Ok(max_lag) => readiness_answer(ready::reads(state, max_lag), "ready to serve reads"),
            },
            "/readyz/writes" => readiness_answer(ready::writes(state), "ready to place writes"),
            "/primary" => if primary.may_write(Instant::now()) {
                body::text_response(StatusCode::OK, "primary\n")
            } else {
                body::text_response(StatusCode::SERVICE_UNAVAILABLE, "not the primary\n")
            },
            "/replica" => match (primary.role, &primary.primary) {
                (Role::Replica, Some(p)) => body::text_response(StatusCode::OK, format!("replica of {p}\n")),
                _ => body::text_response(StatusCode::SERVICE_UNAVAILABLE, "not a replica with a known primary\n"),
            },
            "/status" => body::json_response(StatusCode::OK, &status(state)),
            "/members" => match state.source.raft() {
                Some(leadership) => body::json_response(StatusCode::OK, &leadership.membership()),
                None => body::text_response(
                    StatusCode::CONFLICT,
                    "membership is kept in the Raft log; this node is not in raft mode (its members are cluster.peers)\n",
                ),
            },
            "/metrics" => {
                refresh_gauges(state);
                let mut text = state.metrics.render();
                text.push_str(&crate::metrics::render_fixed_histograms());
                text.push_str(&crate::metrics::render_process());
                let mut resp = Response::new(body::full(text));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            _ => body::text_response(
                StatusCode::NOT_FOUND,
                "not found; try /healthz /readyz /readyz/writes /primary /replica /status /members /metrics, or POST /promote /handoff /members\n",
            ),
        },
        _ => body::text_response(StatusCode::METHOD_NOT_ALLOWED, "GET for status; POST for /promote, /handoff, /members and /members/NAME/replace; DELETE for /members/NAME\n"),
    }
}

fn readiness_answer(result: Result<(), Vec<String>>, ok: &str) -> Response<ProxyBody> {
    match result {
        Ok(()) => body::text_response(StatusCode::OK, format!("{ok}\n")),
        Err(problems) => body::text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        ),
    }
}

/// Gauges that age between events, brought up to date for a scrape.
fn refresh_gauges(state: &AdminState) {
    if let Some(leadership) = state.source.raft() {
        leadership.refresh_gauges();
    }
    if let Some(lease) = &state.lease {
        lease.refresh_gauges();
    }
    if let Some(position) = &state.position {
        crate::metrics::set_replication_lag(position.lag());
    }
    if let Some(cluster) = &state.cluster {
        for peer in cluster.peers.others() {
            let seen = cluster.peers.status(&peer.name);
            crate::metrics::set_peer(
                &peer.name,
                seen.reachable,
                seen.last_seen.map(|at| at.elapsed()),
            );
        }
    }
}

fn status(state: &AdminState) -> serde_json::Value {
    let c = &state.config;
    let primary = state.source.watch().current();
    // The peer table, which in raft mode follows the Raft membership.
    let known = state
        .cluster
        .as_ref()
        .map(|cl| cl.peers.all())
        .unwrap_or_else(|| std::sync::Arc::new(c.cluster.peers.clone()));
    let peers: Vec<_> = known
        .iter()
        .map(|p| {
            let seen = state.cluster.as_ref().map(|cl| cl.peers.status(&p.name));
            json!({
                "id": p.id,
                "name": p.name,
                "cluster": p.cluster,
                "public_url": p.public_url,
                "self": p.name == c.node.name,
                "reachable": if p.name == c.node.name { Some(true) } else { seen.as_ref().map(|s| s.reachable) },
                "term": seen.as_ref().and_then(|s| s.epoch),
                "primary": seen.as_ref().and_then(|s| s.primary.clone()),
                "last_error": seen.as_ref().and_then(|s| s.last_error.clone()),
            })
        })
        .collect();
    json!({
        "node": c.node.name,
        "id": c.node.id,
        "mode": c.primary.mode.as_str(),
        "role": primary.role.as_str(),
        "term": primary.term,
        "primary": primary.primary.as_deref(),
        "peers": peers,
        "upstream": if c.node.witness { json!(null) } else { json!({ "url": c.upstream.url, "up": state.health.is_up() }) },
        "static": match &*state.source {
            PrimarySource::Static(node) => {
                let (confirmed, conflict) = node.confirmation();
                json!({
                    "confirmed": confirmed,
                    "conflict": conflict,
                    "promised": node.state().promised,
                    "majority": node.majority(),
                })
            }
            _ => json!(null),
        },
        "raft": state.source.raft().map_or(json!(null), |l| l.status()),
        "lease": state.lease.as_ref().map(|l| l.status()),
        "litefs": match &*state.source {
            PrimarySource::Litefs(lease) => lease.status(),
            _ => json!(null),
        },
        "position": null,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
    })
}

/// The header `litegate` CLI commands send with every admin action. A web
/// page cannot send it to another origin without a CORS preflight, which
/// this listener never grants.
pub const ADMIN_HEADER: http::HeaderName = http::HeaderName::from_static("litegate-admin");

/// POSTs change who takes writes: with a token configured it is always
/// required; without one, only a loopback admin listener accepts them, and
/// only from a client that is not a browser page of another site (a page
/// can reach a loopback port too): the request must carry
/// `Litegate-Admin: 1` and nothing that marks it cross-site.
fn authorize(
    state: &AdminState,
    req: &Request<Incoming>,
    loopback: bool,
) -> Result<(), (StatusCode, &'static str)> {
    let headers = req.headers();
    let cross_site = headers.contains_key(header::ORIGIN)
        || headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() != b"none" && v.as_bytes() != b"same-origin");
    if cross_site {
        return Err((
            StatusCode::FORBIDDEN,
            "admin actions are not taken from a web page: use the litegate CLI or send the request without Origin\n",
        ));
    }
    match &state.token {
        Some(token) => {
            let sent = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if bool::from(sent.as_bytes().ct_eq(token.as_bytes())) {
                Ok(())
            } else {
                Err((
                    StatusCode::UNAUTHORIZED,
                    "send the admin token as `Authorization: Bearer <token>`\n",
                ))
            }
        }
        None if loopback => match headers.get(ADMIN_HEADER) {
            Some(v) if v.as_bytes() == b"1" => Ok(()),
            _ => Err((
                StatusCode::FORBIDDEN,
                "without admin.token_file, admin actions need the header `Litegate-Admin: 1` (the litegate CLI sends it)\n",
            )),
        },
        None => Err((
            StatusCode::FORBIDDEN,
            "this admin listener is not on loopback: set admin.token_file to allow POST actions\n",
        )),
    }
}

/// Raft mode: the leader hands leadership to `?to=NAME` or the most
/// up-to-date app node (docs/design.md §5).
async fn handoff(state: &AdminState, query: Option<&str>) -> Response<ProxyBody> {
    let Some(leadership) = state.source.raft() else {
        return body::text_response(
            StatusCode::CONFLICT,
            "handoff transfers Raft leadership; in static mode run `litegate promote` on the node that should become primary\n",
        );
    };
    let to = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "to")
            .map(|(_, v)| v.into_owned())
    });
    let from = state.config.node.name.clone();
    match leadership.handoff(to.as_deref()).await {
        Ok(target) => body::json_response(StatusCode::OK, &json!({ "from": from, "to": target })),
        Err(e) => {
            use crate::primary::raft::HandoffError as E;
            let status = match e {
                E::NotLeader(_) | E::InProgress => StatusCode::CONFLICT,
                E::NoSuchTarget(_) => StatusCode::BAD_REQUEST,
                E::NoTarget | E::Stopped(_) => StatusCode::SERVICE_UNAVAILABLE,
                E::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            };
            body::text_response(status, format!("{e}\n"))
        }
    }
}

/// Static mode: this node asks the others to vote it primary at a new
/// epoch (see [`crate::primary::static_promote`]); `409` with the refusals
/// when it did not win.
async fn promote(state: &AdminState) -> Response<ProxyBody> {
    let (PrimarySource::Static(source), Some(cluster)) = (&*state.source, &state.cluster) else {
        return body::text_response(
            StatusCode::CONFLICT,
            "promote moves a static primary; in raft mode run `litegate handoff --to NAME` against the leader's admin listener\n",
        );
    };
    let peers = ClusterEpochPeers {
        table: &cluster.peers,
        client: &cluster.client,
        source: &state.source,
    };
    match static_promote::promote(source, &peers).await {
        Ok(epoch) => {
            let unreachable = cluster.peers.announce(&cluster.client, &epoch).await;
            body::json_response(
                StatusCode::OK,
                &json!({ "primary": epoch.primary, "term": epoch.epoch, "not_told": unreachable }),
            )
        }
        Err(e) => {
            let status = match e {
                PromoteError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
                PromoteError::InProgress
                | PromoteError::Exhausted(_)
                | PromoteError::NoMajority { .. } => StatusCode::CONFLICT,
            };
            body::text_response(status, format!("not promoted: {e}\n"))
        }
    }
}
