//! Every way a proxied request can fail, classified by where the fault lies
//! and whether the request may be sent again, and turned into the response a
//! client sees — in this one place (docs/design.md §7).

use std::time::Duration;

use http::{header, HeaderValue, Method, Response, StatusCode};

use super::body::{self, BoxError, ProxyBody};
use super::client_body::BodyFault;
use super::headers::{LITEGATE_ERROR, LITEGATE_PRIMARY, LITEGATE_TERM};
use crate::log_limit::LogLimit;

/// Which side of the proxy a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client sent something we will not pass on.
    Downstream,
    /// The app (or the peer that fronts it) failed.
    Upstream,
    /// litegate itself cannot route the request right now.
    Internal,
}

/// Whether any byte of the request may have reached an app. Every error
/// says which; only [`Sent::Nothing`] lets a write be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Provably nothing: no connection, a fence that tripped before this
    /// request's first byte, or a peer that had not admitted it.
    Nothing,
    /// Some of it may be at an app, which may apply it.
    Maybe,
}

/// What the write path does after a failed try: the one retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Route the write again (to the same or a new primary).
    Resend,
    /// Answer the client with this error.
    Answer,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the app could not be reached: {0}")]
    UpstreamUnreachable(#[source] BoxError),
    #[error("the app did not answer within {}", humantime::format_duration(*.0))]
    UpstreamTimeout(Duration),
    #[error("the app's response failed: {0}")]
    UpstreamBroken(#[source] BoxError),
    /// A `101` the client did not ask for, or to another protocol: passing
    /// it on would let the client talk to the app past litegate.
    #[error("the app switched protocols without being asked to")]
    UnaskedUpgrade,
    #[error("the primary's litegate could not be reached: {0}")]
    PeerUnreachable(#[source] BoxError),
    /// The link to the primary's litegate failed, or the primary changed,
    /// before that litegate admitted the write (`forward.rs`).
    #[error("the primary's litegate did not admit the write: {0}")]
    PeerLost(#[source] BoxError),
    #[error("no primary is known; writes were held for {}{}", humantime::format_duration(*.waited), .why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default())]
    NoPrimary {
        waited: Duration,
        /// This node's own reason, where it has one (raft: not joined).
        why: Option<String>,
    },
    #[error("the primary changed while this write was being sent; no app received it")]
    PrimaryMovedMidSend,
    /// This node lost the right to write just before the request left for
    /// its app; nothing of it was sent (`fence.rs`).
    #[error("this node stopped being the primary before the write was sent; no app received it")]
    Fenced,
    /// Answered to a peer that sent a write here under a stale view.
    #[error("this node is not the primary at term {term}")]
    NotPrimary { term: u64, primary: Option<String> },
    /// A write failed after some of it may have reached an app: it may or
    /// may not have been applied, and it is never sent again.
    #[error("the write may or may not have been applied: {0}")]
    Indeterminate(#[source] Box<ProxyError>),
    #[error("cluster request not authenticated")]
    Unauthorized,
    #[error("this replica did not catch up with your last write within {}", humantime::format_duration(*.0))]
    ConsistencyTimeout(Duration),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// `CONNECT` (a tunnel) and `TRACE` (which echoes the user's cookies)
    /// are answered by litegate and never reach an app.
    #[error("litegate does not pass {0} requests on")]
    MethodNotAllowed(Method),
    #[error("request head of {size} bytes is over the limit of {limit}")]
    HeadersTooLarge { size: usize, limit: usize },
    /// The client's body stalled or was malformed or cut short. Any app
    /// that got part of it saw an incomplete request and had its
    /// connection cut; the request is never sent again.
    #[error("{}", match .fault {
        BodyFault::Stalled(after) => format!("the request body stalled: no more of it came for {}", humantime::format_duration(*after)),
        BodyFault::Broken => "the request body was malformed or cut short".to_owned(),
    })]
    ClientBody { fault: BodyFault, sent: Sent },
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamBroken(_)
            | ProxyError::UnaskedUpgrade
            | ProxyError::PeerUnreachable(_)
            | ProxyError::PeerLost(_)
            | ProxyError::Indeterminate(_) => Side::Upstream,
            ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::ClientBody { .. } => Side::Downstream,
            ProxyError::NoPrimary { .. }
            | ProxyError::PrimaryMovedMidSend
            | ProxyError::Fenced
            | ProxyError::NotPrimary { .. }
            | ProxyError::Unauthorized
            | ProxyError::ConsistencyTimeout(_) => Side::Internal,
        }
    }

    /// Whether any byte of the request may have reached an app.
    pub fn sent(&self) -> Sent {
        match self {
            ProxyError::ClientBody { sent, .. } => *sent,
            ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamBroken(_)
            | ProxyError::UnaskedUpgrade
            | ProxyError::Indeterminate(_) => Sent::Maybe,
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::PeerUnreachable(_)
            | ProxyError::PeerLost(_)
            | ProxyError::NoPrimary { .. }
            | ProxyError::PrimaryMovedMidSend
            | ProxyError::Fenced
            | ProxyError::NotPrimary { .. }
            | ProxyError::Unauthorized
            | ProxyError::ConsistencyTimeout(_)
            | ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::HeadersTooLarge { .. } => Sent::Nothing,
        }
    }

    /// The one retry decision for writes (docs/design.md §2): a write is
    /// sent again if and only if nothing of it can have reached an app and
    /// the failure was about where it went, not about the request itself.
    pub fn next(&self) -> Next {
        let about_the_route = matches!(
            self,
            ProxyError::UpstreamUnreachable(_)
                | ProxyError::PeerUnreachable(_)
                | ProxyError::PeerLost(_)
                | ProxyError::Fenced
                | ProxyError::NotPrimary { .. }
        );
        if about_the_route && self.sent() == Sent::Nothing {
            Next::Resend
        } else {
            Next::Answer
        }
    }

    /// The error a write's client sees: one that may have reached an app is
    /// `indeterminate`, whatever broke, so the client knows it may have
    /// been applied.
    pub fn for_write(self) -> ProxyError {
        match self {
            // The app saw at most an incomplete request (its connection was
            // cut mid-body), so the client hears about its own body.
            ProxyError::Indeterminate(_) | ProxyError::ClientBody { .. } => self,
            other if other.sent() == Sent::Maybe => ProxyError::Indeterminate(Box::new(other)),
            other => other,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamBroken(_)
            | ProxyError::UnaskedUpgrade
            | ProxyError::Indeterminate(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) | ProxyError::ConsistencyTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::PeerUnreachable(_)
            | ProxyError::PeerLost(_)
            | ProxyError::NoPrimary { .. }
            | ProxyError::PrimaryMovedMidSend
            | ProxyError::Fenced => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NotPrimary { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::ClientBody {
                fault: BodyFault::Stalled(_),
                ..
            } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientBody {
                fault: BodyFault::Broken,
                ..
            } => StatusCode::BAD_REQUEST,
        }
    }

    /// The machine-readable `Litegate-Error` value.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamBroken(_)
            | ProxyError::UnaskedUpgrade => "upstream",
            ProxyError::UpstreamTimeout(_) | ProxyError::ConsistencyTimeout(_) => "timeout",
            ProxyError::Indeterminate(_) => "indeterminate",
            ProxyError::PeerUnreachable(_)
            | ProxyError::PeerLost(_)
            | ProxyError::NoPrimary { .. }
            | ProxyError::PrimaryMovedMidSend
            | ProxyError::Fenced => "no-primary",
            ProxyError::NotPrimary { .. } => "not-primary",
            ProxyError::Unauthorized => "unauthorized",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::MethodNotAllowed(_) => "method-not-allowed",
            ProxyError::HeadersTooLarge { .. } => "headers-too-large",
            ProxyError::ClientBody {
                fault: BodyFault::Stalled(_),
                ..
            } => "body-timeout",
            ProxyError::ClientBody {
                fault: BodyFault::Broken,
                ..
            } => "bad-request",
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        match self.side() {
            Side::Downstream => tracing::debug!(error = %self, "refused a client request"),
            Side::Internal if matches!(self, ProxyError::NotPrimary { .. }) => {
                tracing::debug!(error = %self, "refused a forwarded write")
            }
            Side::Upstream | Side::Internal => {
                // An app that is down fails every request: one line per
                // kind of failure every few seconds says so.
                static FAILED: LogLimit = LogLimit::new(Duration::from_secs(10));
                if let Some(suppressed) = FAILED.allow(self.code()) {
                    tracing::warn!(error = %self, cause = %causes(&self), suppressed, "request failed")
                }
            }
        }
        // The body names the problem, never the internals behind it.
        let text = match &self {
            ProxyError::UpstreamUnreachable(_) => {
                "502 bad gateway: the app is unreachable\n".to_owned()
            }
            ProxyError::UpstreamBroken(_) => {
                "502 bad gateway: the app's response failed\n".to_owned()
            }
            ProxyError::Indeterminate(_) => {
                "502 bad gateway: the write failed after it was sent; it may or may not have been applied\n".to_owned()
            }
            other => format!("{} {}\n", other.status().as_u16(), other),
        };
        let mut resp = body::text_response(self.status(), text);
        let h = resp.headers_mut();
        h.insert(LITEGATE_ERROR, HeaderValue::from_static(self.code()));
        if matches!(self, ProxyError::ClientBody { .. }) {
            // The rest of the body is unread: the connection cannot carry
            // another request.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            // An election or a promote settles within a second or two.
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // A 405 carries no `Allow`: which methods the path takes is the
        // app's to say, and litegate has not asked it.
        if let ProxyError::NotPrimary { term, primary } = &self {
            // The sender re-resolves from this view and sends again.
            h.insert(LITEGATE_TERM, HeaderValue::from(*term));
            // The write's body was left unread, so this connection cannot
            // carry another request; saying so keeps the sender's pool from
            // reusing it as it closes (which would fail a write that may
            // not be retried).
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            if let Some(p) = primary
                .as_deref()
                .and_then(|p| HeaderValue::from_str(p).ok())
            {
                h.insert(LITEGATE_PRIMARY, p);
            }
        }
        resp
    }
}

/// The chain of sources under an error, for the log: hyper's own messages
/// ("client error (SendRequest)") name the step, their sources the reason.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = Vec::new();
    let mut next = error.source();
    while let Some(e) = next {
        out.push(e.to_string());
        next = e.source();
    }
    out.join(": ")
}

/// The error an exchange that carried a client's body ends with: the
/// client's own, when its body is what failed (whatever the sending side
/// reported), keeping what the sending side knows of what was sent.
pub fn blame_client_body(error: ProxyError, fault: Option<BodyFault>) -> ProxyError {
    match (fault, &error) {
        (_, ProxyError::ClientBody { .. }) | (None, _) => error,
        (Some(fault), _) => ProxyError::ClientBody {
            fault,
            sent: error.sent(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_body_before_any_byte_left_is_answered_not_resent() {
        let err = blame_client_body(
            ProxyError::UpstreamUnreachable("the body never came".into()),
            Some(BodyFault::Stalled(Duration::from_secs(30))),
        );
        assert_eq!(err.sent(), Sent::Nothing);
        assert_eq!(err.next(), Next::Answer);
        assert_eq!(err.side(), Side::Downstream);
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(err.code(), "body-timeout");
        let err = err.for_write();
        assert_eq!(err.code(), "body-timeout");
    }

    #[test]
    fn a_broken_body_after_bytes_left_keeps_its_sent_and_blames_the_client() {
        let err = blame_client_body(
            ProxyError::UpstreamBroken("user body failed".into()),
            Some(BodyFault::Broken),
        );
        assert_eq!(err.sent(), Sent::Maybe);
        assert_eq!(err.next(), Next::Answer);
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert_eq!(err.code(), "bad-request");
        assert_eq!(err.for_write().code(), "bad-request");
        // A route failure is still resent when the client's body is fine.
        let err = blame_client_body(ProxyError::PeerLost("gone".into()), None);
        assert_eq!(err.next(), Next::Resend);
    }
}
