//! The loopback listener LiteFS's Consul client talks to (`lease.listen`),
//! on the same connection layer as litegate's other listeners. Every
//! request must carry `X-Consul-Token: <lease.token>`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use subtle::ConstantTimeEq;

use super::consul::Answer;
use super::service::LeaseService;
use crate::proxy::body::{self, ProxyBody};
use crate::proxy::server::Handler;
use crate::proxy::ConnInfo;

/// LiteFS's values are a small JSON object or a cluster id.
const MAX_BODY: usize = 64 * 1024;

pub struct LeaseHandler {
    pub service: Arc<LeaseService>,
    pub token: String,
    /// This node's id: the origin of every call on this listener.
    pub me: u64,
}

impl Handler for LeaseHandler {
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        _conn: ConnInfo,
    ) -> Response<ProxyBody> {
        let given = req
            .headers()
            .get("x-consul-token")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        if !bool::from(given.ct_eq(self.token.as_bytes())) {
            return render(Answer::error(
                403,
                "Permission denied: X-Consul-Token does not match lease.token (put it in lease.consul.url as the password: http://litefs:TOKEN@HOST:PORT)",
            ));
        }
        let method = req.method().as_str().to_owned();
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let bytes: Bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return render(Answer::error(400, "request body unreadable or over 64 KiB")),
        };
        let answer = self
            .service
            .answer(&method, &path, query.as_deref(), &bytes, self.me)
            .await;
        render(answer)
    }
}

pub fn render(answer: Answer) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut resp = Response::new(body::full(answer.body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Some(index) = answer.index {
        resp.headers_mut()
            .insert("x-consul-index", HeaderValue::from(index));
    }
    resp
}
