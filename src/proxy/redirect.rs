//! The two answers a replica can give instead of forwarding a write
//! (`routing.on_replica`): let Fly.io's edge replay it, or redirect the
//! client to the primary.

use http::{header, HeaderName, HeaderValue, Response, StatusCode};

use super::body::{self, ProxyBody};

const FLY_REPLAY: HeaderName = HeaderName::from_static("fly-replay");

/// `409` with `fly-replay: instance=<primary>` and no body: Fly.io's proxy
/// sends the request again, to that machine.
pub fn fly_replay(primary: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::CONFLICT;
    if let Ok(value) = HeaderValue::from_str(&format!("instance={primary}")) {
        resp.headers_mut().insert(FLY_REPLAY, value);
    }
    resp
}

/// `307` (method and body kept) to the same path and query on the primary.
pub fn to_primary(public_url: &str, path_and_query: &str) -> Response<ProxyBody> {
    let location = format!("{}{}", public_url.trim_end_matches('/'), path_and_query);
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::TEMPORARY_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, value);
    }
    resp
}
