//! The request path. `README.md` beside this file walks through a request's
//! life in order; [`Proxy::handle`] (client requests) and
//! [`Proxy::handle_forwarded`] (writes a peer sends us) are where it happens.

pub mod body;
pub mod classify;
pub mod client;
pub mod errors;
mod fence;
pub mod headers;
pub mod health;
mod redirect;
mod replay_body;
pub mod server;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::cluster::client::PeerClient;
use crate::cluster::peers::PeerTable;
use crate::config::{Cidr, Config, OnReplica, OnTimeout};
use crate::consistency::{self, Position};
use crate::metrics::{self, Route};
use crate::primary::{PrimarySource, PrimaryState, PrimaryWatch, Role};

use body::ProxyBody;
use classify::{Class, Classifier};
use client::UpstreamClient;
use errors::ProxyError;
use headers::{
    ForwardedFor, LITEGATE_PRIMARY, LITEGATE_ROLE, LITEGATE_SERVED_BY, LITEGATE_TERM, LITEGATE_TXID,
};
use health::UpstreamHealth;
use replay_body::ReplayBody;

/// How long a write waits between tries while the primary is unreachable
/// or moving (bounded overall by `routing.primary_wait`).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How often a held write looks again at a leader whose lease lapsed; a
/// renewal also wakes it at once.
const LEASE_RECHECK: Duration = Duration::from_millis(10);

/// How long a forwarded write waits on a leader whose lease has not
/// started (or lapsed) before it is sent back with `421`.
const LEASE_GRACE: Duration = Duration::from_millis(300);

const LITEGATE_FORWARDED_BY: http::HeaderName =
    http::HeaderName::from_static("litegate-forwarded-by");

/// What the server knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    /// The peer is in `public.trusted_proxies`.
    pub trusted: bool,
}

/// How this node reaches the others (absent in dev mode).
pub struct Cluster {
    pub peers: Arc<PeerTable>,
    pub client: PeerClient,
}

pub struct Proxy {
    me: Arc<str>,
    node_name: HeaderValue,
    classifier: Classifier,
    upstream: UpstreamClient,
    health: Arc<UpstreamHealth>,
    primary: PrimaryWatch,
    source: Arc<PrimarySource>,
    cluster: Option<Cluster>,
    /// Read-your-writes, where `litefs.mount` is set.
    position: Option<Arc<Position>>,
    on_replica: OnReplica,
    primary_wait: Duration,
    trusted_proxies: Vec<Cidr>,
    max_header_bytes: usize,
}

/// A client request, checked and rewritten, ready to go to an app.
struct Prepared {
    class: Class,
    needs_primary: bool,
    parts: Parts,
    body: ProxyBody,
    client_version: Version,
    client_upgrade: Option<OnUpgrade>,
    /// The client reached us over https (for the cookie's `Secure`).
    client_https: bool,
}

struct Outcome {
    class: Class,
    route: Route,
    result: Result<Response<ProxyBody>, ProxyError>,
}

impl Proxy {
    pub fn new(
        config: &Config,
        upstream: UpstreamClient,
        health: Arc<UpstreamHealth>,
        source: Arc<PrimarySource>,
        cluster: Option<Cluster>,
        position: Option<Arc<Position>>,
    ) -> Result<Self, String> {
        let node_name = HeaderValue::from_str(&config.node.name).map_err(|_| {
            format!("config key `node.name`: {:?} cannot be sent in a header; use letters, digits and dashes", config.node.name)
        })?;
        Ok(Self {
            me: Arc::from(config.node.name.as_str()),
            node_name,
            classifier: Classifier::new(&config.routing),
            upstream,
            health,
            primary: source.watch(),
            source,
            cluster,
            position,
            on_replica: config.routing.on_replica,
            primary_wait: config.routing.primary_wait.get(),
            trusted_proxies: config.public.trusted_proxies.clone(),
            max_header_bytes: config.public.max_header_bytes,
        })
    }

    /// A client request, start to finish. Never fails: every error becomes
    /// the response DESIGN §7 describes.
    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let started = Instant::now();
        let outcome = match self.prepare(req, conn) {
            Err((class, err)) => Outcome {
                class,
                route: Route::Rejected,
                result: Err(err),
            },
            Ok(prepared) if !prepared.needs_primary => self.serve_here(prepared).await,
            Ok(prepared) => self.to_primary(prepared, started).await,
        };
        self.finish(outcome, started)
    }

    /// A write another node's litegate forwarded here. It reaches the app
    /// only if this node is the primary at the term the sender believes in;
    /// otherwise `421 not-primary` tells the sender where to go.
    pub async fn handle_forwarded(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let class = self
            .classifier
            .classify(req.method(), req.uri().path(), req.headers())
            .class;
        let sender_term = header_u64(req.headers(), &LITEGATE_TERM);
        if let (Some(term), Some(primary)) =
            (sender_term, header_str(req.headers(), &LITEGATE_PRIMARY))
        {
            self.source.observe(term, primary);
        }
        let mut state = self.primary.current();
        if state.role == Role::Primary && !state.may_write(Instant::now()) {
            // A leader just elected has its first quorum acknowledgement a
            // heartbeat away: wait for it rather than send the write back.
            let until = Instant::now() + LEASE_GRACE;
            let mut watch = self.primary.clone();
            while state.role == Role::Primary && !state.may_write(Instant::now()) {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                watch.changed_before(until.min(now + LEASE_RECHECK)).await;
                state = self.primary.current();
            }
        }
        // The permit before the last look at the state; see `to_primary`.
        let permit = self.source.write_permit();
        let state = self.primary.current();
        let outcome = if permit.is_err() || !self.source.admits(&state, sender_term) {
            Outcome {
                class,
                route: Route::Rejected,
                result: Err(ProxyError::NotPrimary {
                    term: state.term,
                    primary: state.primary.as_deref().map(str::to_owned),
                }),
            }
        } else {
            // The sender already stripped the client's Litegate-* and
            // hop-by-hop headers and appended the client to
            // X-Forwarded-For; this hop adds nothing, so the app sees the
            // same headers whichever node the client reached.
            let mut req = req;
            let upgrade = headers::upgrade_protocol(req.headers());
            let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
            let client_version = req.version();
            let (mut parts, body) = req.into_parts();
            headers::strip_litegate(&mut parts.headers);
            headers::strip_hop_by_hop(&mut parts.headers, upgrade);
            let prepared = Prepared {
                class,
                needs_primary: true,
                parts,
                body: body::stream(body),
                client_version,
                client_upgrade,
                client_https: false,
            };
            let result = self.to_app(prepared).await.map(|mut resp| {
                // The forwarding node turns this into the client's cookie.
                if let Some(txid) = self.position_after(class) {
                    let hex = HeaderValue::from_str(&format!("{txid:016x}")).expect("hex is ASCII");
                    resp.headers_mut().insert(LITEGATE_TXID, hex);
                }
                resp
            });
            drop(permit);
            // Deposed just before the write left: the sender may re-route it.
            let result = result.map_err(|e| match e {
                ProxyError::Fenced => {
                    let now = self.primary.current();
                    ProxyError::NotPrimary {
                        term: now.term,
                        primary: now.primary.as_deref().map(str::to_owned),
                    }
                }
                other => other,
            });
            Outcome {
                class,
                route: Route::Local,
                result,
            }
        };
        self.finish(outcome, started)
    }

    fn finish(&self, outcome: Outcome, started: Instant) -> Response<ProxyBody> {
        let mut resp = match outcome.result {
            Ok(resp) => resp,
            Err(err) => {
                if matches!(err, ProxyError::UpstreamUnreachable(_)) {
                    self.health.set(false);
                }
                err.into_response()
            }
        };
        // A forwarded response already names the primary that served it.
        if outcome.route != Route::Forwarded || !resp.headers().contains_key(LITEGATE_SERVED_BY) {
            resp.headers_mut()
                .insert(LITEGATE_SERVED_BY, self.node_name.clone());
        }
        metrics::record_request(
            outcome.class.as_str(),
            outcome.route,
            resp.status().as_u16(),
            started.elapsed(),
        );
        resp
    }

    /// Classify, check, and rewrite a client request (lifecycle steps 2–4).
    fn prepare(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Prepared, (Class, ProxyError)> {
        let classification =
            self.classifier
                .classify(req.method(), req.uri().path(), req.headers());
        let class = classification.class;

        let uri_len = req.uri().path_and_query().map_or(1, |pq| pq.as_str().len());
        let size = headers::head_size(req.headers(), uri_len);
        if size > self.max_header_bytes {
            return Err((
                class,
                ProxyError::HeadersTooLarge {
                    size,
                    limit: self.max_header_bytes,
                },
            ));
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
            return Err((
                class,
                ProxyError::BadRequest("HTTP/1.1 requests need a Host header"),
            ));
        }

        let client_upgrade = classification
            .upgrade
            .is_some()
            .then(|| hyper::upgrade::on(&mut req));
        let client_version = req.version();
        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        headers::strip_litegate(h);
        headers::strip_hop_by_hop(h, classification.upgrade);
        ForwardedFor {
            client: conn.peer.ip().to_canonical(),
            trusted: conn.trusted,
            proto: if conn.tls { "https" } else { "http" },
            host: host.as_ref(),
        }
        .apply(h);
        let client_https = h
            .get(&headers::X_FORWARDED_PROTO)
            .is_some_and(|p| p == "https");
        if let Some(host) = host {
            h.insert(header::HOST, host);
        }
        Ok(Prepared {
            class,
            needs_primary: classification.needs_primary,
            parts,
            body: body::stream(body),
            client_version,
            client_upgrade,
            client_https,
        })
    }

    /// A request this node's app may serve. A read that carries a `__txid`
    /// cookie waits, on a replica, until the local replica has caught up
    /// with that write; if it does not in time it goes to the primary (or
    /// fails with 504, by `consistency.on_timeout`).
    async fn serve_here(&self, prepared: Prepared) -> Outcome {
        let class = prepared.class;
        if let (Class::Read, Some(position)) = (class, &self.position) {
            if let Some(target) = consistency::requested_txid(&prepared.parts.headers) {
                let here_is_primary = self.primary.current().role == Role::Primary;
                if !here_is_primary && !position.wait_for(target).await {
                    return match position.on_timeout {
                        OnTimeout::Primary => self.to_primary(prepared, Instant::now()).await,
                        OnTimeout::Error => Outcome {
                            class,
                            route: Route::Rejected,
                            result: Err(ProxyError::ConsistencyTimeout(position.wait_timeout)),
                        },
                    };
                }
            }
        }
        Outcome {
            class,
            route: Route::Local,
            result: self.to_app(prepared).await,
        }
    }

    /// The replication position right after this node's app served a
    /// write, when read-your-writes is on.
    fn position_after(&self, class: Class) -> Option<u64> {
        if class != Class::Write {
            return None;
        }
        self.position.as_ref()?.read_now()
    }

    /// Gives the client the position its write reached, so its next read on
    /// any replica waits for it (DESIGN §3).
    fn set_txid_cookie(&self, resp: &mut Response<ProxyBody>, txid: Option<u64>, https: bool) {
        if let (Some(txid), Some(_)) = (txid, &self.position) {
            resp.headers_mut()
                .append(header::SET_COOKIE, consistency::set_cookie(txid, https));
        }
    }

    /// Sends a prepared request to this node's app (lifecycle steps 5–6).
    /// A request that needs the primary goes through the fenced pool
    /// (`fence.rs`), so it cannot leave after this node was deposed.
    async fn to_app(&self, prepared: Prepared) -> Result<Response<ProxyBody>, ProxyError> {
        let Prepared {
            mut parts,
            body,
            client_version,
            client_upgrade,
            needs_primary,
            ..
        } = prepared;
        stamp_role(&mut parts.headers, &self.primary.current());
        parts.uri = self.upstream.uri_for(parts.uri.path_and_query());
        parts.version = Version::HTTP_11;
        let resp = if needs_primary {
            let body = whole_if_small(&parts.headers, body).await?;
            self.upstream
                .send_write(Request::from_parts(parts, body))
                .await?
        } else {
            let req = Request::from_parts(parts, body);
            self.upstream.send(req).await?
        };
        Ok(relay(resp, client_upgrade, client_version))
    }

    /// One try of a write at this node's app as the primary, its body from
    /// `replay` so a fenced try (nothing sent) can go elsewhere.
    async fn write_here(
        &self,
        prepared: &mut Prepared,
        replay: &ReplayBody,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let parts = &prepared.parts;
        let mut req = Request::new(whole_if_small(&parts.headers, replay.attempt()).await?);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = self.upstream.uri_for(parts.uri.path_and_query());
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = parts.headers.clone();
        stamp_role(req.headers_mut(), &self.primary.current());
        let resp = self.upstream.send_write(req).await?;
        Ok(relay(
            resp,
            prepared.client_upgrade.take(),
            prepared.client_version,
        ))
    }

    /// A request only the primary's app may serve: here if this node is the
    /// primary, else forwarded, replayed or redirected. While no primary is
    /// known, or the primary is unreachable or moving, it is held — up to
    /// `routing.primary_wait` from its arrival — and never sent twice to an
    /// app: a retry happens only when nothing of it can have reached one.
    async fn to_primary(&self, mut prepared: Prepared, started: Instant) -> Outcome {
        let class = prepared.class;
        let deadline = started + self.primary_wait;
        let no_primary = |route| Outcome {
            class,
            route,
            result: Err(ProxyError::NoPrimary {
                waited: self.primary_wait,
            }),
        };
        let mut watch = self.primary.clone();
        // Created at the first forward; from then on every try sends its
        // body through it.
        let mut replay: Option<ReplayBody> = None;
        let mut tries = 0u32;
        loop {
            let state = watch.current();
            let now = Instant::now();
            let target = match (state.role, state.primary.as_deref()) {
                (Role::Primary, _) if !state.may_write(now) => {
                    // A leader whose lease lapsed may already be deposed:
                    // hold the write until the lease is renewed or another
                    // node takes over.
                    if now >= deadline {
                        return no_primary(Route::Rejected);
                    }
                    watch
                        .changed_before(deadline.min(now + LEASE_RECHECK))
                        .await;
                    continue;
                }
                (Role::Primary, _) => {
                    // A handoff that begins from here on either counts
                    // this write in its drain or refuses the permit.
                    let Ok(in_flight) = self.source.write_permit() else {
                        if now >= deadline {
                            return no_primary(Route::Rejected);
                        }
                        watch
                            .changed_before(deadline.min(now + LEASE_RECHECK))
                            .await;
                        continue;
                    };
                    if !watch.current().may_write(Instant::now()) {
                        continue;
                    }
                    let replay = replay.get_or_insert_with(|| {
                        ReplayBody::new(std::mem::replace(&mut prepared.body, body::empty()))
                    });
                    if tries > 0 && !replay.can_replay() {
                        return Outcome {
                            class,
                            route: Route::Rejected,
                            result: Err(ProxyError::PrimaryMovedMidSend),
                        };
                    }
                    tries += 1;
                    let mut result = self.write_here(&mut prepared, replay).await;
                    drop(in_flight);
                    if let Err(ProxyError::Fenced) = result {
                        // Deposed between the check above and the send;
                        // nothing left: route it again.
                        tracing::debug!("a write was fenced before it left; re-routing");
                        metrics::count_forward_retry();
                        continue;
                    }
                    if let Ok(resp) = &mut result {
                        self.set_txid_cookie(
                            resp,
                            self.position_after(class),
                            prepared.client_https,
                        );
                    }
                    return Outcome {
                        class,
                        route: Route::Local,
                        result,
                    };
                }
                (_, Some(name)) if *name != *self.me => name.to_owned(),
                _ => {
                    if !watch.changed_before(deadline).await {
                        return no_primary(Route::Rejected);
                    }
                    continue;
                }
            };
            let (Some(cluster), Some(peer)) = (
                &self.cluster,
                self.cluster.as_ref().and_then(|c| c.peers.get(&target)),
            ) else {
                tracing::warn!(primary = %target, "the primary is not in cluster.peers");
                return no_primary(Route::Rejected);
            };
            let path_and_query = prepared
                .parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str());
            match self.on_replica {
                OnReplica::FlyReplay => {
                    return Outcome {
                        class,
                        route: Route::Replayed,
                        result: Ok(redirect::fly_replay(&target)),
                    }
                }
                OnReplica::Redirect => {
                    return Outcome {
                        class,
                        route: Route::Redirected,
                        result: Ok(redirect::to_primary(&peer.public_url, path_and_query)),
                    }
                }
                OnReplica::Forward => {}
            }

            let replay = replay.get_or_insert_with(|| {
                ReplayBody::new(std::mem::replace(&mut prepared.body, body::empty()))
            });
            if tries > 0 {
                if !replay.can_replay() {
                    return Outcome {
                        class,
                        route: Route::Rejected,
                        result: Err(ProxyError::PrimaryMovedMidSend),
                    };
                }
                metrics::count_forward_retry();
            }
            tries += 1;
            let req = match self.forwarded_request(
                &prepared.parts,
                cluster,
                &peer.cluster,
                &state,
                &target,
                replay,
            ) {
                Ok(req) => req,
                Err(err) => {
                    return Outcome {
                        class,
                        route: Route::Rejected,
                        result: Err(err),
                    }
                }
            };
            let sent = Instant::now();
            match cluster.client.send(req).await {
                Ok(resp) if is_not_primary(&resp) => {
                    // Refused by the peer's litegate before its app saw it:
                    // learn its view of the primary, then try again.
                    if let (Some(term), Some(primary)) = (
                        header_u64(resp.headers(), &LITEGATE_TERM),
                        header_str(resp.headers(), &LITEGATE_PRIMARY),
                    ) {
                        self.source.observe(term, primary);
                    }
                    tracing::debug!(peer = %target, "the peer is not the primary at our term; re-resolving");
                }
                Ok(resp) => {
                    metrics::record_forward(sent.elapsed());
                    let client_upgrade = prepared.client_upgrade.take();
                    let mut resp = relay(resp, client_upgrade, prepared.client_version);
                    let txid = resp.headers_mut().remove(LITEGATE_TXID).and_then(|v| {
                        v.to_str()
                            .ok()
                            .and_then(|v| u64::from_str_radix(v, 16).ok())
                    });
                    self.set_txid_cookie(&mut resp, txid, prepared.client_https);
                    return Outcome {
                        class,
                        route: Route::Forwarded,
                        result: Ok(resp),
                    };
                }
                Err(ProxyError::PeerUnreachable(error)) => {
                    // Connecting failed: not a byte was sent.
                    tracing::debug!(peer = %target, %error, "the primary is unreachable; holding the write");
                }
                Err(err) => {
                    return Outcome {
                        class,
                        route: Route::Forwarded,
                        result: Err(err),
                    }
                }
            }
            if Instant::now() >= deadline {
                return no_primary(Route::Rejected);
            }
            let pause = deadline.min(Instant::now() + RETRY_PAUSE);
            watch.changed_before(pause).await;
        }
    }

    /// The request as the primary's litegate receives it: the client's
    /// rewritten head, plus the term and primary this node believes in.
    fn forwarded_request(
        &self,
        parts: &Parts,
        cluster: &Cluster,
        peer_addr: &str,
        state: &PrimaryState,
        target: &str,
        replay: &ReplayBody,
    ) -> Result<Request<ProxyBody>, ProxyError> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut req = Request::new(replay.attempt());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = cluster.client.uri(peer_addr, path_and_query)?;
        *req.version_mut() = Version::HTTP_11;
        let mut headers = parts.headers.clone();
        headers.insert(LITEGATE_TERM, HeaderValue::from(state.term));
        if let Ok(target) = HeaderValue::from_str(target) {
            headers.insert(LITEGATE_PRIMARY, target);
        }
        headers.insert(LITEGATE_FORWARDED_BY, self.node_name.clone());
        *req.headers_mut() = headers;
        Ok(req)
    }
}

impl server::Handler for Proxy {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        Proxy::handle(&self, req, conn).await
    }

    fn is_trusted(&self, peer: &SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.trusted_proxies.iter().any(|net| net.0.contains(&ip))
    }
}

/// A write's body read in full before it is sent, when its declared length
/// is small: then the app gets head and body in one go, right after the
/// fence's check, and a pause can no longer fall between them (`fence.rs`).
/// Larger and chunked bodies stream as they come.
async fn whole_if_small(headers: &HeaderMap, body: ProxyBody) -> Result<ProxyBody, ProxyError> {
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len <= replay_body::REPLAY_LIMIT);
    if !small {
        return Ok(body);
    }
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut whole = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ProxyError::BadRequest("the request body was cut short"));
        };
        if let Ok(data) = frame.into_data() {
            if whole.len() + data.len() > replay_body::REPLAY_LIMIT {
                return Err(ProxyError::BadRequest(
                    "the request body is longer than its Content-Length",
                ));
            }
            whole.extend_from_slice(&data);
        }
    }
    let bytes = whole.freeze();
    Ok(body::full(bytes))
}

/// An app's (or the primary's) response on its way to the client: joined
/// byte for byte on `101`, hop-by-hop headers removed, in the client's
/// HTTP version (an HTTP/1.0 app must not close a keep-alive client).
fn relay(
    mut resp: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    client_version: Version,
) -> Response<ProxyBody> {
    let carried_upgrade = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            upgrade::bridge(client_upgrade, hyper::upgrade::on(&mut resp));
        }
        resp.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    headers::strip_hop_by_hop(resp.headers_mut(), carried_upgrade);
    *resp.version_mut() = client_version;
    resp.map(body::stream)
}

/// Tells the app what this node is, so primary-only work can check.
fn stamp_role(h: &mut HeaderMap, state: &PrimaryState) {
    match state.role {
        Role::Primary => {
            h.insert(LITEGATE_ROLE, HeaderValue::from_static("primary"));
            h.insert(LITEGATE_TERM, HeaderValue::from(state.term));
        }
        Role::Replica | Role::Unknown => {
            h.insert(LITEGATE_ROLE, HeaderValue::from_static("replica"));
            if let Some(primary) = state
                .primary
                .as_deref()
                .and_then(|p| HeaderValue::from_str(p).ok())
            {
                h.insert(LITEGATE_PRIMARY, primary);
            }
        }
    }
}

fn is_not_primary<B>(resp: &Response<B>) -> bool {
    resp.status() == StatusCode::MISDIRECTED_REQUEST
        && resp
            .headers()
            .get(headers::LITEGATE_ERROR)
            .is_some_and(|v| v == "not-primary")
}

fn header_str<'a>(h: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(h: &HeaderMap, name: &http::HeaderName) -> Option<u64> {
    header_str(h, name).and_then(|v| v.parse().ok())
}
