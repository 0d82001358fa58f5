//! The request path: the life of one client request, in the order it
//! happens. [`Proxy::handle`] runs it for client requests,
//! [`Proxy::handle_forwarded`] for writes a peer sends us.
//!
//! 1. **Accept** (`server.rs`). The public listener accepts a connection,
//!    sets `TCP_NODELAY`, notes the peer and whether it is in
//!    `public.trusted_proxies`, and speaks HTTP/1.1 or HTTP/2 (h2c prior
//!    knowledge, or ALPN over TLS) on the same port. A head must arrive
//!    within `public.header_read_timeout`; hyper answers malformed ones 400.
//! 2. **Classify** (`classify.rs`, `path.rs`). From the method, path and
//!    headers alone: `read`, `write` (a mutating method, or any method on a
//!    `routing.primary_paths` path), `local` (`routing.local_paths`), or
//!    `websocket` (an HTTP/1.1 `GET` upgrading to one of
//!    `routing.upgrade_protocols`; never `h2c`). Globs match the decoded,
//!    normalised path; a path that cannot be decoded safely is refused
//!    (400), and so are `CONNECT` and `TRACE` (405). [`Proxy::prepare`]
//!    then refuses a head over
//!    `public.max_header_bytes` (431) and an HTTP/1.1 request without `Host`
//!    (400), and rewrites the headers (`headers.rs`): client `Litegate-*`
//!    and hop-by-hop headers go, `X-Forwarded-*` are set, `Host` is kept
//!    byte for byte.
//! 3. **Route** (`route.rs`). One pure function of the classification, the
//!    published primary state and any hint a peer gave: local, local write,
//!    forward, fly-replay, redirect, or hold (`lifecycle.rs` waits, up to
//!    `routing.primary_wait`).
//! 4. **Permit** (`primary::WritePermit`). A write this node's app takes
//!    needs a permit: this node is the primary at a term, inside its lease,
//!    and counted for a Raft handoff's drain. Taken after a small body was
//!    read in full, so a slow client sending one never holds a permit (a
//!    larger body streams under it, each piece bounded by
//!    `public.body_read_timeout`).
//! 5. **Send**. Reads: the pooled client (`client.rs`). Writes to this
//!    node's app: the write pool (`write_pool.rs`), whose connections are
//!    fenced by the permit before every socket write and record whether
//!    any byte of the request left (`fence.rs`). Writes to the primary:
//!    `forward.rs`, where the primary's litegate admits the write (`100
//!    Continue`) before any byte of the body goes. At most
//!    `upstream.max_concurrency` requests are at the app at once.
//! 6. **Respond** (`respond.rs`). The response streams back with
//!    hop-by-hop headers removed, an app's `Litegate-*` headers removed,
//!    every `Set-Cookie` intact, `Litegate-Served-By` added and, after a
//!    write with read-your-writes on, the `__txid` cookie. A `101` joins the
//!    two connections byte for byte (`upgrade.rs`).
//! 7. **Fail** (`errors.rs`). Any phase may end in a [`ProxyError`], which
//!    says where the fault lies and whether any byte may have reached an
//!    app; [`ProxyError::next`] is the one decision whether a write is sent
//!    again, and `into_response` the one place an error becomes an answer.
//! 8. **Record** (`../metrics.rs`): requests by class, route, origin, exact
//!    status and reason, and their duration to the response head; client
//!    body bytes as they pass, in (`client_body.rs`) and out (`server.rs`).
//!
//! Bodies are streamed frame by frame in both directions, except a write's
//! first 64 KiB, kept so a try that sent nothing can be made again. Each
//! next piece of a client's body must come within
//! `public.body_read_timeout` (`client_body.rs`); a body that stalls or is
//! malformed fails its exchange and is answered as the client's fault.
//!
//! [`ProxyError`]: errors::ProxyError
//! [`ProxyError::next`]: errors::ProxyError::next

pub mod affinity;
mod app_connector;
pub mod body;
pub mod classify;
pub mod client;
pub mod client_body;
pub mod errors;
mod fence;
mod forward;
pub mod headers;
pub mod health;
mod lifecycle;
mod path;
mod redirect;
mod replay_body;
mod respond;
pub mod route;
pub mod rules;
pub mod server;
mod upgrade;
mod write_pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use crate::cluster::client::PeerClient;
use crate::cluster::peers::PeerTable;
use crate::config::{Cidr, Config, OnReplica};
use crate::consistency::Position;
use crate::metrics;
use crate::primary::{PrimarySource, PrimaryWatch, Role, WritePermit};

use affinity::ReadAffinity;
use body::ProxyBody;
use classify::Class;
use client::UpstreamClient;
use errors::ProxyError;
use fence::Attempt;
use headers::{ForwardedFor, LITEGATE_PRIMARY, LITEGATE_TERM, LITEGATE_TXID};
use health::UpstreamHealth;
use respond::Origin;
use rules::RequestRules;
use upgrade::ClientUpgrade;

/// How long a forwarded write waits on a leader whose lease has not
/// started (or lapsed) before it is sent back with `421`: `election_timeout`
/// max. A new leader's lease starts when its takeover hold ends, that long
/// after its election; a lapsed one is renewed by the next quorum
/// acknowledgement, within a heartbeat, which is shorter.
fn lease_grace(config: &Config) -> Duration {
    config.cluster.election_timeout[1].get()
}

/// How often a held write looks again at a leader whose lease lapsed; a
/// renewal also wakes it at once.
const LEASE_RECHECK: Duration = Duration::from_millis(10);

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
    /// What a SIGHUP may change live (`rules.rs`).
    rules: ArcSwap<RequestRules>,
    upstream: UpstreamClient,
    health: Arc<UpstreamHealth>,
    primary: PrimaryWatch,
    source: Arc<PrimarySource>,
    cluster: Option<Cluster>,
    /// Read-your-writes, where `litefs.mount` is set.
    position: Option<Arc<Position>>,
    on_replica: OnReplica,
    lease_grace: Duration,
    trusted_proxies: Vec<Cidr>,
    max_header_bytes: usize,
}

/// A client request, checked and rewritten, ready to go to an app.
struct Prepared {
    class: Class,
    needs_primary: bool,
    parts: Parts,
    body: ProxyBody,
    /// How the client's body is doing, for the error of an exchange that
    /// carried it.
    progress: Arc<client_body::Progress>,
    client_version: Version,
    client_upgrade: Option<ClientUpgrade>,
    /// The client reached us over https (for the cookie's `Secure`).
    client_https: bool,
    /// The client connection's own connection to the app, for a read
    /// (`affinity.rs`): HTTP/1.x clients only, never for an upgrade.
    affinity: Option<Arc<ReadAffinity>>,
}

/// How a request ended, for the response and the metrics.
struct Outcome {
    class: Class,
    route: metrics::Route,
    result: Result<Response<ProxyBody>, ProxyError>,
}

impl Outcome {
    fn rejected(class: Class, error: ProxyError) -> Self {
        Self {
            class,
            route: metrics::Route::Rejected,
            result: Err(error),
        }
    }
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
            rules: ArcSwap::from_pointee(RequestRules::from_config(config)),
            upstream,
            health,
            primary: source.watch(),
            source,
            cluster,
            position,
            on_replica: config.routing.on_replica,
            lease_grace: lease_grace(config),
            trusted_proxies: config.public.trusted_proxies.clone(),
            max_header_bytes: config.public.max_header_bytes,
        })
    }

    /// Takes the live part of a reloaded config (`rules.rs`); requests
    /// already past classification keep the rules they started with.
    pub fn reload_rules(&self, config: &Config) {
        self.rules
            .store(Arc::new(RequestRules::from_config(config)));
    }

    /// `routing.primary_wait` as it is now.
    fn primary_wait(&self) -> Duration {
        self.rules.load().primary_wait
    }

    /// A client request, start to finish. Never fails: every error becomes
    /// the response docs/design.md §7 describes. `affinity` is the client
    /// connection's slot for a connection to the app of its own.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        affinity: Option<Arc<ReadAffinity>>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let _in_flight = metrics::InFlight::enter();
        let outcome = match self.prepare(req, conn) {
            Err((class, err)) => Outcome::rejected(class, err),
            Ok(mut prepared) => {
                // An upgrade takes its connection to the app away for the
                // rest of its life: it keeps to the pool.
                if prepared.client_upgrade.is_none() {
                    prepared.affinity = affinity;
                }
                self.deliver(prepared, started).await
            }
        };
        self.finish(outcome, metrics::RequestOrigin::Client, started)
    }

    /// A write another node's litegate forwarded here. It is admitted only
    /// if this node takes a write permit at a term the sender's view allows;
    /// otherwise `421 not-primary` tells the sender where to go, and the
    /// write's body is never read (`forward.rs`: no `100 Continue`, so the
    /// sender knows nothing reached an app).
    pub async fn handle_forwarded(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let _in_flight = metrics::InFlight::enter();
        let rules = self.rules.load_full();
        let classification = match rules.classifier.classify(
            req.method(),
            req.uri().path(),
            req.version(),
            req.headers(),
        ) {
            Ok(classification) => classification,
            Err(err) => {
                let outcome = Outcome::rejected(Class::of_method(req.method()), err);
                return self.finish(outcome, metrics::RequestOrigin::Peer, started);
            }
        };
        let class = classification.class;
        let sender_term = header_u64(req.headers(), &LITEGATE_TERM);
        if let (Some(term), Some(primary)) =
            (sender_term, header_str(req.headers(), &LITEGATE_PRIMARY))
        {
            self.source.observe(term, primary);
        }
        self.wait_for_lease(deadline_after(started, self.lease_grace))
            .await;
        let permit = self
            .source
            .write_permit(&self.primary)
            .filter(|permit| self.source.admits(permit, sender_term));
        let outcome = match permit {
            None => Outcome::rejected(class, self.not_primary()),
            Some(permit) => Outcome {
                class,
                route: metrics::Route::Local,
                result: self
                    .write_admitted(req, permit, class, classification.upgrade)
                    .await,
            },
        };
        self.finish(outcome, metrics::RequestOrigin::Peer, started)
    }

    /// A leader just elected has its first quorum acknowledgement a
    /// heartbeat away: a forwarded write waits for it (up to `until`)
    /// rather than be sent back.
    async fn wait_for_lease(&self, until: Instant) {
        let mut watch = self.primary.clone();
        loop {
            let state = watch.current();
            let now = Instant::now();
            if state.role != Role::Primary || state.may_write(now) || now >= until {
                return;
            }
            watch.changed_before(until.min(now + LEASE_RECHECK)).await;
        }
    }

    /// The admitted write, to this node's app under `permit`.
    async fn write_admitted(
        &self,
        mut req: Request<Incoming>,
        permit: WritePermit,
        class: Class,
        upgrade: Option<HeaderValue>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let client_upgrade = upgrade.clone().map(|protocol| ClientUpgrade {
            protocol,
            connection: hyper::upgrade::on(&mut req),
        });
        let client_version = req.version();
        let (mut parts, body) = req.into_parts();
        let body_read_timeout = self.rules.load().body_read_timeout;
        let (body, progress) = client_body::timed(
            body::stream(body),
            body_read_timeout,
            metrics::RequestOrigin::Peer,
        );
        // Reading the body is the admission the sender waits for.
        let body = forward::admitted_body(&mut parts.headers, body).await?;
        // The sender already stripped the client's Litegate-* and
        // hop-by-hop headers and appended the client to X-Forwarded-For;
        // this hop drops its own signals and adds nothing, so the app sees
        // the same headers whichever node the client reached.
        headers::strip_litegate(&mut parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::frame_body(&mut parts.headers, &body);
        respond::stamp_write(&mut parts.headers, &permit);
        parts.uri = self.upstream.uri_for(parts.uri.path_and_query());
        parts.version = Version::HTTP_11;
        parts.extensions.insert(Arc::clone(&progress));
        let attempt = Attempt::new(permit);
        match self
            .upstream
            .send_write(Request::from_parts(parts, body), &attempt)
            .await
        {
            Ok(resp) => {
                let mut resp = respond::relay(resp, client_upgrade, client_version, Origin::App)?;
                // The forwarding node turns this into the client's cookie.
                if let Some(txid) = self.position_after(class) {
                    let hex = HeaderValue::from_str(&format!("{txid:016x}")).expect("hex is ASCII");
                    resp.headers_mut().insert(LITEGATE_TXID, hex);
                }
                Ok(resp)
            }
            // Deposed before a byte left: the sender may re-route it.
            Err(ProxyError::Fenced) => Err(self.not_primary()),
            // The app refused the connection, so nothing reached it: the
            // sender holds the write and routes it again (here, or to the
            // node leadership moves to because this app is down) for up to
            // its `routing.primary_wait`, as a write arriving here does.
            Err(ProxyError::UpstreamUnreachable(error)) => {
                tracing::debug!(%error, "the app refused a forwarded write; sending it back");
                self.health.set(false);
                Err(self.not_primary())
            }
            Err(other) => Err(errors::blame_client_body(other, progress.fault()).for_write()),
        }
    }

    /// This node's view, for a sender it refuses.
    fn not_primary(&self) -> ProxyError {
        let now = self.primary.current();
        ProxyError::NotPrimary {
            term: now.term,
            primary: now.primary.as_deref().map(str::to_owned),
        }
    }

    /// Classify, check, and rewrite a client request (step 2).
    fn prepare(
        &self,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Prepared, (Class, ProxyError)> {
        let rules = self.rules.load_full();
        let classification = rules
            .classifier
            .classify(req.method(), req.uri().path(), req.version(), req.headers())
            .map_err(|err| (Class::of_method(req.method()), err))?;
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
            .clone()
            .map(|protocol| ClientUpgrade {
                protocol,
                connection: hyper::upgrade::on(&mut req),
            });
        let client_version = req.version();
        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        headers::strip_litegate(h);
        headers::strip_hop_by_hop(h, classification.upgrade);
        // litegate answers `Expect: 100-continue` itself, when it reads the
        // body; the app gets the whole request.
        h.remove(header::EXPECT);
        if client_version == Version::HTTP_2 {
            headers::join_cookies(h);
        }
        let (body, progress) = client_body::timed(
            body::stream(body),
            rules.body_read_timeout,
            metrics::RequestOrigin::Client,
        );
        headers::frame_body(h, &body);
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
            body,
            progress,
            client_version,
            client_upgrade,
            client_https,
            affinity: None,
        })
    }

    /// The replication position right after this node's app served a
    /// write, when read-your-writes is on.
    fn position_after(&self, class: Class) -> Option<u64> {
        if class != Class::Write {
            return None;
        }
        self.position.as_ref()?.read_now()
    }
}

impl server::Handler for Proxy {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Response<ProxyBody> {
        Proxy::handle(&self, req, conn, None).await
    }

    fn keeps_app_connections(&self) -> bool {
        true
    }

    async fn handle_with_affinity(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
        affinity: Arc<ReadAffinity>,
    ) -> Response<ProxyBody> {
        Proxy::handle(&self, req, conn, Some(affinity)).await
    }

    fn is_trusted(&self, peer: &SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.trusted_proxies.iter().any(|net| net.0.contains(&ip))
    }
}

/// When a wait that starts at `start` ends; never panics, however long the
/// wait (config validation bounds it too).
fn deadline_after(start: Instant, wait: Duration) -> Instant {
    start
        .checked_add(wait)
        .or_else(|| start.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(start)
}

fn header_str<'a>(h: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(h: &HeaderMap, name: &http::HeaderName) -> Option<u64> {
    header_str(h, name).and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_never_overflows() {
        let now = Instant::now();
        assert_eq!(
            deadline_after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(deadline_after(now, Duration::MAX) > now);
    }
}
