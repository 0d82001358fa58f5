//! The last phase: an app's (or the primary's) response on its way to the
//! client, and litegate's own headers on every answer. Failures become
//! responses in `errors.rs`.

use std::time::Instant;

use http::{header, HeaderMap, HeaderValue, Response, StatusCode, Version};
use hyper::body::Incoming;

use super::body::{self, ProxyBody};
use super::errors::ProxyError;
use super::headers::{
    self, LITEGATE_LEASE_INDEX, LITEGATE_LEASE_SESSION, LITEGATE_PRIMARY, LITEGATE_ROLE,
    LITEGATE_SERVED_BY, LITEGATE_TERM,
};
use super::upgrade::{self, ClientUpgrade};
use super::{Outcome, Proxy};
use crate::consistency;
use crate::metrics;
use crate::primary::{PrimaryState, Role, WritePermit};

/// Who produced a response litegate relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// An app: it may not speak for litegate, so its `Litegate-*` headers go.
    App,
    /// The primary's litegate, which already stripped its app's.
    Peer,
}

/// A response on its way to the client: joined byte for byte on a `101`
/// to the upgrade the client asked for (any other `101` is refused: it
/// would let the client talk to the app past litegate), hop-by-hop headers
/// removed, an app's `Litegate-*` headers removed, in the client's HTTP
/// version (an HTTP/1.0 app must not close a keep-alive client).
pub fn relay(
    mut resp: Response<Incoming>,
    client_upgrade: Option<ClientUpgrade>,
    client_version: Version,
    origin: Origin,
) -> Result<Response<ProxyBody>, ProxyError> {
    let carried_upgrade = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = client_upgrade
            .filter(|client| headers::upgrade_agreed(&client.protocol, resp.headers()))
        else {
            return Err(ProxyError::UnaskedUpgrade);
        };
        upgrade::bridge(client.connection, hyper::upgrade::on(&mut resp));
        resp.headers().get(header::UPGRADE).cloned()
    } else {
        None
    };
    if origin == Origin::App {
        headers::strip_litegate(resp.headers_mut());
    }
    headers::strip_hop_by_hop(resp.headers_mut(), carried_upgrade);
    // hyper writes an HTTP/1.0 status line to an HTTP/1.0 client itself,
    // and keeps that client's connection open (answering `Connection:
    // keep-alive`) only if the client asked and the response is marked 1.1;
    // one marked 1.0 would always close it.
    *resp.version_mut() = if client_version == Version::HTTP_10 {
        Version::HTTP_11
    } else {
        client_version
    };
    Ok(resp.map(body::stream))
}

/// Tells the app that this write is passed under `permit`: the term it
/// was admitted at and, with `[lease]`, the LiteFS lease hold.
pub fn stamp_write(h: &mut HeaderMap, permit: &WritePermit) {
    h.insert(LITEGATE_ROLE, HeaderValue::from_static("primary"));
    h.insert(LITEGATE_TERM, headers::number(permit.term()));
    if let Some(lease) = permit.lease() {
        // Session ids are litegate's own hex UUIDs; one that were not a
        // header value is left out rather than sent mangled.
        if let Ok(session) = HeaderValue::from_str(&lease.session) {
            h.insert(LITEGATE_LEASE_SESSION, session);
            h.insert(LITEGATE_LEASE_INDEX, headers::number(lease.lock_index));
        }
    }
}

/// Tells the app what this node is, so primary-only work can check.
pub fn stamp_role(h: &mut HeaderMap, state: &PrimaryState) {
    match state.role {
        Role::Primary => {
            h.insert(LITEGATE_ROLE, HeaderValue::from_static("primary"));
            h.insert(LITEGATE_TERM, headers::number(state.term));
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

impl Proxy {
    /// The response the client gets, errors turned into answers, with
    /// `Litegate-Served-By`, counted in the metrics.
    pub(super) fn finish(
        &self,
        outcome: Outcome,
        origin: metrics::RequestOrigin,
        started: Instant,
    ) -> Response<ProxyBody> {
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
        if outcome.route != metrics::Route::Forwarded
            || !resp.headers().contains_key(LITEGATE_SERVED_BY)
        {
            resp.headers_mut()
                .insert(LITEGATE_SERVED_BY, self.node_name.clone());
        }
        // Only litegate's own answers carry it here: an app's was stripped,
        // and a primary's litegate answers for itself.
        let reason = metrics::reason_index(
            resp.headers()
                .get(headers::LITEGATE_ERROR)
                .map(HeaderValue::as_bytes),
        );
        metrics::record_request(
            outcome.class.as_str(),
            outcome.route,
            origin,
            resp.status().as_u16(),
            reason,
            started.elapsed(),
        );
        resp
    }

    /// Gives the client the position its write reached, so its next read on
    /// any replica waits for it (docs/design.md §3).
    pub(super) fn set_txid_cookie(
        &self,
        resp: &mut Response<ProxyBody>,
        txid: Option<u64>,
        https: bool,
    ) {
        if let (Some(txid), Some(_)) = (txid, &self.position) {
            resp.headers_mut()
                .append(header::SET_COOKIE, consistency::set_cookie(txid, https));
        }
    }
}

/// Whether a primary's litegate refused a forwarded write before anything
/// reached its app. Only litegate can say so: apps' `Litegate-*` headers
/// never leave the node they came from.
pub fn is_not_primary<B>(resp: &Response<B>) -> bool {
    resp.status() == StatusCode::MISDIRECTED_REQUEST
        && resp
            .headers()
            .get(headers::LITEGATE_ERROR)
            .is_some_and(|v| v == "not-primary")
}
