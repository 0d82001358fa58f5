//! The admin listener (DESIGN §6): health, readiness, role, status and
//! metrics for operators and orchestrators. Loopback by default.

pub mod client;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{Config, PrimaryMode};
use crate::primary::{PrimaryWatch, Role};
use crate::proxy::body::{self, ProxyBody};
use crate::proxy::health::UpstreamHealth;
use crate::shutdown::Shutdown;

pub struct AdminState {
    pub config: Arc<Config>,
    pub primary: PrimaryWatch,
    pub health: Arc<UpstreamHealth>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut shutdown: Shutdown) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.begun() => return,
        };
        let state = Arc::clone(&state);
        let service = service_fn(move |req| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(answer(&state, &req)) }
        });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn answer(state: &AdminState, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n");
    }
    let primary = state.primary.current();
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let mut problems = Vec::new();
            if !state.health.is_up() {
                problems.push("the app does not accept connections");
            }
            if state.config.primary.mode != PrimaryMode::Dev && primary.primary.is_none() {
                problems.push("no primary is known");
            }
            if problems.is_empty() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("not ready: {}\n", problems.join("; ")),
                )
            }
        }
        "/primary" => match primary.role {
            Role::Primary => text(StatusCode::OK, "primary\n"),
            _ => text(StatusCode::SERVICE_UNAVAILABLE, "not the primary\n"),
        },
        "/replica" => match (primary.role, &primary.primary) {
            (Role::Replica, Some(p)) => text(StatusCode::OK, &format!("replica of {p}\n")),
            _ => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not a replica with a known primary\n",
            ),
        },
        "/status" => {
            let c = &state.config;
            let status = json!({
                "node": c.node.name,
                "id": c.node.id,
                "mode": c.primary.mode.as_str(),
                "role": primary.role.as_str(),
                "term": primary.term,
                "primary": primary.primary.as_deref(),
                "peers": c.cluster.peers.iter().map(|p| json!({
                    "id": p.id, "name": p.name, "cluster": p.cluster, "public_url": p.public_url,
                })).collect::<Vec<_>>(),
                "upstream": { "url": c.upstream.url, "up": state.health.is_up() },
                "position": null,
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_seconds": state.started.elapsed().as_secs(),
            });
            let mut resp = Response::new(body::full(format!("{status:#}\n")));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        "/metrics" => {
            let mut resp = Response::new(body::full(state.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /healthz /readyz /primary /replica /status /metrics\n",
        ),
    }
}

fn text(status: StatusCode, body_text: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(body_text.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
