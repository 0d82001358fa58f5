//! The one body type that flows through the proxy in both directions, so a
//! streamed app body and a short error message share a response type.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes a streaming body without reading it.
pub fn stream<B>(body: B) -> ProxyBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// A short `text/plain` answer from litegate itself.
pub fn text_response(status: StatusCode, text: impl Into<String>) -> Response<ProxyBody> {
    with_type(status, full(text.into()), "text/plain; charset=utf-8")
}

/// A JSON answer from litegate itself (admin and cluster endpoints).
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<ProxyBody> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    with_type(status, full(text), "application/json")
}

fn with_type(
    status: StatusCode,
    body: ProxyBody,
    content_type: &'static str,
) -> Response<ProxyBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
