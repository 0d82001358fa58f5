//! The phases after classification, in order, for one client request:
//! route it (`route.rs`), take a write permit where this node's app takes
//! a write, send it (to the app, or to the primary's litegate), and answer.
//! A write goes round this loop until it is answered: it is sent again only
//! when its error says nothing of it can have reached an app
//! ([`ProxyError::next`]), and held while no node may take it, up to
//! `routing.primary_wait` from its arrival.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{header, HeaderValue, Request, Response, Version};

use super::body::{self, ProxyBody};
use super::classify::Class;
use super::errors::{self, Next, ProxyError};
use super::fence::Attempt;
use super::forward::{self, LITEGATE_CONTENT_LENGTH};
use super::headers::{LITEGATE_PRIMARY, LITEGATE_TERM, LITEGATE_TXID};
use super::replay_body::{ReplayBody, REPLAY_LIMIT};
use super::respond::{self, Origin};
use super::route::{self, Hint, Route};
use super::{header_str, header_u64, redirect, Cluster, Outcome, Prepared, Proxy};
use crate::config::OnTimeout;
use crate::consistency;
use crate::log_limit::{self, LogLimit};
use crate::metrics;
use crate::primary::{PrimaryState, Role};

/// How long a write waits between tries while the primary is unreachable
/// or moving (bounded overall by `routing.primary_wait`).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Marks a request forwarded by this node, for the primary's logs.
const LITEGATE_FORWARDED_BY: http::HeaderName =
    http::HeaderName::from_static("litegate-forwarded-by");

impl Proxy {
    /// Routes a prepared request and sees it through to its answer.
    pub(super) async fn deliver(&self, prepared: Prepared, started: Instant) -> Outcome {
        if prepared.needs_primary {
            self.to_primary(prepared, started).await
        } else {
            self.serve_here(prepared).await
        }
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
                        OnTimeout::Error => Outcome::rejected(
                            class,
                            ProxyError::ConsistencyTimeout(position.wait_timeout),
                        ),
                    };
                }
            }
        }
        let Prepared {
            mut parts,
            body,
            progress,
            client_version,
            client_upgrade,
            affinity,
            ..
        } = prepared;
        respond::stamp_role(&mut parts.headers, &self.primary.current());
        parts.uri = self.upstream.uri_for(parts.uri.path_and_query());
        parts.version = Version::HTTP_11;
        let result = self
            .upstream
            .send(
                Request::from_parts(parts, body),
                &progress,
                affinity.as_deref(),
            )
            .await
            .map_err(|err| errors::blame_client_body(err, progress.fault()))
            .and_then(|resp| respond::relay(resp, client_upgrade, client_version, Origin::App));
        Outcome {
            class,
            route: metrics::Route::Local,
            result,
        }
    }

    /// A request only the primary's app may serve: here under a write
    /// permit if this node is the primary, else forwarded, replayed or
    /// redirected. Never sent twice to an app.
    async fn to_primary(&self, mut prepared: Prepared, started: Instant) -> Outcome {
        let class = prepared.class;
        let deadline = super::deadline_after(started, self.primary_wait());
        let mut watch = self.primary.clone();
        // Waits below are for changes after this point.
        watch.mark_seen();
        // The body, from the first try on: kept so that a try that sent
        // nothing can be made again.
        let replay = ReplayBody::new(std::mem::replace(&mut prepared.body, body::empty()));
        let mut hint: Option<Hint> = None;
        let mut tries = 0u32;
        let mut last_error: Option<ProxyError> = None;
        // Every route tried so far: going back to one waits first.
        let mut routes_tried: Vec<Route> = Vec::new();
        loop {
            let now = Instant::now();
            if now >= deadline {
                return self.held_too_long(class, last_error);
            }
            let state = watch.current();
            let route = route::route(true, &state, now, &self.me, self.on_replica, hint.as_ref());
            routes_tried.push(route.clone());
            let (recorded, result) = match route {
                Route::Hold => {
                    let _held = metrics::WriteHeld::enter();
                    watch
                        .changed_before(deadline.min(now + LEASE_RECHECK))
                        .await;
                    continue;
                }
                Route::FlyReplay(primary) => {
                    return Outcome {
                        class,
                        route: metrics::Route::Replayed,
                        result: Ok(redirect::fly_replay(&primary)),
                    }
                }
                Route::Redirect(primary) => {
                    let Some(peer) = self.cluster.as_ref().and_then(|c| c.peers.get(&primary))
                    else {
                        return self.unknown_primary(class, &primary);
                    };
                    let path = prepared
                        .parts
                        .uri
                        .path_and_query()
                        .map_or("/", |pq| pq.as_str());
                    return Outcome {
                        class,
                        route: metrics::Route::Redirected,
                        result: Ok(redirect::to_primary(&peer.public_url, path)),
                    };
                }
                // `Local` is never the route of a request that needs the
                // primary; taking the permit below keeps it safe regardless.
                Route::LocalWrite | Route::Local => {
                    if tries > 0 && !replay.can_replay() {
                        return Outcome::rejected(class, ProxyError::PrimaryMovedMidSend);
                    }
                    // A small body is read before the permit is taken, so a
                    // slow client sending one never holds a permit (nor a
                    // Raft handoff's drain); a larger one streams under it,
                    // each piece bounded by `public.body_read_timeout`.
                    let body = match small_body(&prepared.parts.headers, &replay).await {
                        Ok(body) => body,
                        Err(err) => return Outcome::rejected(class, err),
                    };
                    let Some(permit) = self.source.write_permit(&watch) else {
                        // The state moved, or a handoff closed the gate and
                        // is about to publish that it did.
                        watch
                            .changed_before(deadline.min(Instant::now() + LEASE_RECHECK))
                            .await;
                        continue;
                    };
                    tries += 1;
                    let attempt = Attempt::new(permit);
                    (
                        metrics::Route::Local,
                        self.write_here(&mut prepared, body, &attempt).await,
                    )
                }
                Route::Forward(target) => {
                    let Some(cluster) = self.cluster.as_ref() else {
                        return self.unknown_primary(class, &target);
                    };
                    if cluster.peers.get(&target).is_none() {
                        return self.unknown_primary(class, &target);
                    }
                    if tries > 0 && !replay.can_replay() {
                        return Outcome::rejected(class, ProxyError::PrimaryMovedMidSend);
                    }
                    // Read first here too: the primary admits the write (and
                    // holds a permit) only once it is sent.
                    let body = match small_body(&prepared.parts.headers, &replay).await {
                        Ok(body) => body,
                        Err(err) => return Outcome::rejected(class, err),
                    };
                    tries += 1;
                    let result = self
                        .forward_once(
                            &mut prepared,
                            cluster,
                            &state,
                            &target,
                            body,
                            deadline,
                            &mut hint,
                        )
                        .await;
                    (metrics::Route::Forwarded, result)
                }
            };
            let error = match result {
                Ok(resp) => {
                    return Outcome {
                        class,
                        route: recorded,
                        result: Ok(resp),
                    }
                }
                Err(error) => errors::blame_client_body(error, prepared.progress.fault()),
            };
            match error.next() {
                Next::Answer => {
                    return Outcome {
                        class,
                        route: recorded,
                        result: Err(error.for_write()),
                    }
                }
                Next::Resend => {
                    tracing::debug!(%error, "nothing of the write was sent; routing it again");
                    metrics::count_forward_retry();
                    last_error = Some(error);
                    // At once to a route not tried yet (a new primary, a
                    // hint); back to one already tried only after a pause
                    // or a change, so nodes that point at each other
                    // cannot spin.
                    let now = Instant::now();
                    let next = route::route(
                        true,
                        &watch.current(),
                        now,
                        &self.me,
                        self.on_replica,
                        hint.as_ref(),
                    );
                    if routes_tried.contains(&next) {
                        watch.changed_before(deadline.min(now + RETRY_PAUSE)).await;
                    }
                }
            }
        }
    }

    /// The answer to a write no node took within `routing.primary_wait`:
    /// the app's own unreachability where that was the last failure here,
    /// else `503 no-primary`. Either way nothing of it reached an app.
    fn held_too_long(&self, class: Class, last_error: Option<ProxyError>) -> Outcome {
        let error = match last_error {
            Some(error @ ProxyError::UpstreamUnreachable(_)) => error,
            _ => ProxyError::NoPrimary {
                waited: self.primary_wait(),
                why: self.source.why_no_primary(),
            },
        };
        Outcome::rejected(class, error)
    }

    fn unknown_primary(&self, class: Class, primary: &str) -> Outcome {
        static UNKNOWN: LogLimit = LogLimit::new(log_limit::EVERY);
        if let Some(suppressed) = UNKNOWN.allow(primary) {
            tracing::warn!(%primary, suppressed, "the primary is not among the known peers (cluster.peers, or the Raft membership in raft mode)");
        }
        Outcome::rejected(
            class,
            ProxyError::NoPrimary {
                waited: self.primary_wait(),
                why: self.source.why_no_primary(),
            },
        )
    }

    /// One try of a write at this node's app, under `attempt`'s permit.
    async fn write_here(
        &self,
        prepared: &mut Prepared,
        body: ProxyBody,
        attempt: &std::sync::Arc<Attempt>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let parts = &prepared.parts;
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = self.upstream.uri_for(parts.uri.path_and_query());
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = parts.headers.clone();
        req.extensions_mut().insert(Arc::clone(&prepared.progress));
        respond::stamp_write(req.headers_mut(), attempt.permit());
        let resp = self.upstream.send_write(req, attempt).await?;
        let mut resp = respond::relay(
            resp,
            prepared.client_upgrade.take(),
            prepared.client_version,
            Origin::App,
        )?;
        self.set_txid_cookie(
            &mut resp,
            self.position_after(prepared.class),
            prepared.client_https,
        );
        Ok(resp)
    }

    /// One try of a write at the primary's litegate (`forward.rs`). A
    /// `421 not-primary` answer becomes [`ProxyError::NotPrimary`], and its
    /// view of the primary the next try's [`Hint`].
    #[allow(clippy::too_many_arguments)]
    async fn forward_once(
        &self,
        prepared: &mut Prepared,
        cluster: &Cluster,
        state: &PrimaryState,
        target: &str,
        body: ProxyBody,
        deadline: Instant,
        hint: &mut Option<Hint>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let peer_addr = cluster
            .peers
            .get(target)
            .map(|p| p.cluster.clone())
            .unwrap_or_default();
        let mut req =
            self.forwarded_request(&prepared.parts, cluster, &peer_addr, state, target, body)?;
        req.extensions_mut().insert(Arc::clone(&prepared.progress));
        let sent = Instant::now();
        let mut watch = self.primary.clone();
        let resp = if prepared.client_upgrade.is_some() {
            // An upgrade carries no body to hold back: once sent it is
            // treated as maybe applied.
            let timeout = cluster.client.forward_timeout();
            match tokio::time::timeout(timeout, cluster.client.forward(req)).await {
                Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
                Ok(Err(e)) if e.is_connect() => Err(ProxyError::PeerUnreachable(e.into())),
                Ok(Err(e)) => Err(ProxyError::UpstreamBroken(e.into())),
                Ok(Ok(resp)) => Ok(resp),
            }
        } else {
            // Abandoned before admission as soon as this node would route
            // the write elsewhere (or hold it).
            let still_routed_here = |s: &PrimaryState| {
                let now = Instant::now();
                route::route(true, s, now, &self.me, self.on_replica, hint.as_ref())
                    == Route::Forward(target.to_owned())
            };
            watch.mark_seen();
            forward::send(
                &cluster.client,
                req,
                &mut watch,
                deadline,
                still_routed_here,
            )
            .await
        }?;
        if respond::is_not_primary(&resp) {
            let term = header_u64(resp.headers(), &LITEGATE_TERM).unwrap_or(0);
            let primary = header_str(resp.headers(), &LITEGATE_PRIMARY).map(str::to_owned);
            // A refusal that names nobody leaves no hint: this node's own
            // view decides the next try.
            *hint = primary.as_ref().map(|primary| {
                self.source.observe(term, primary);
                Hint {
                    term,
                    primary: primary.clone(),
                }
            });
            tracing::debug!(peer = %target, "the peer is not the primary at our term; re-routing");
            return Err(ProxyError::NotPrimary { term, primary });
        }
        metrics::record_forward(sent.elapsed());
        let mut resp = respond::relay(
            resp,
            prepared.client_upgrade.take(),
            prepared.client_version,
            Origin::Peer,
        )?;
        let txid = resp.headers_mut().remove(LITEGATE_TXID).and_then(|v| {
            v.to_str()
                .ok()
                .and_then(|v| u64::from_str_radix(v, 16).ok())
        });
        if let (Some(txid), Some(position)) = (txid, &self.position) {
            position.primary_reached(txid);
        }
        self.set_txid_cookie(&mut resp, txid, prepared.client_https);
        Ok(resp)
    }

    /// The request as the primary's litegate receives it: the client's
    /// rewritten head, plus the term and primary this node believes in.
    fn forwarded_request(
        &self,
        parts: &http::request::Parts,
        cluster: &Cluster,
        peer_addr: &str,
        state: &PrimaryState,
        target: &str,
        body: ProxyBody,
    ) -> Result<Request<ProxyBody>, ProxyError> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut req = Request::new(body);
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = cluster.client.uri(peer_addr, path_and_query)?;
        *req.version_mut() = Version::HTTP_11;
        let mut headers = parts.headers.clone();
        headers.insert(LITEGATE_TERM, HeaderValue::from(state.term));
        if let Ok(target) = HeaderValue::from_str(target) {
            headers.insert(LITEGATE_PRIMARY, target);
        }
        headers.insert(LITEGATE_FORWARDED_BY, self.node_name.clone());
        headers.remove(LITEGATE_CONTENT_LENGTH);
        *req.headers_mut() = headers;
        Ok(req)
    }
}

use super::LEASE_RECHECK;

/// A write's body for one try at this node's app: read in full when its
/// declared length is small, so head and body leave together right after
/// the fence's check; larger and chunked bodies stream as they come.
async fn small_body(
    headers: &http::HeaderMap,
    replay: &ReplayBody,
) -> Result<ProxyBody, ProxyError> {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|len| *len <= REPLAY_LIMIT);
    match length {
        Some(length) => forward::whole(replay.attempt(), Some(length)).await,
        None => Ok(replay.attempt()),
    }
}
