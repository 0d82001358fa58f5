//! Where a membership change runs: on the leader. An admin request made
//! on any other node is forwarded to the leader over the cluster link
//! (`POST /_litegate/members`, authenticated like every cluster request),
//! which makes the change itself and never forwards again. See
//! [`crate::primary::raft_membership`] for the change.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::primary::raft::{HandoffError, RaftLeadership};
use crate::primary::raft_membership::{ChangeError, MemberChange, CATCH_UP_LIMIT};
use crate::proxy::body::{self, ProxyBody};

use super::client::PeerClient;

pub const CLUSTER_PATH: &str = "/_litegate/members";

/// How often a forwarded change looks for the leader again (one was just
/// elected, or a handoff is under way), and for how long in all.
const LEADER_RETRY: Duration = Duration::from_millis(250);
const LEADER_TRIES: u32 = 40;

/// Answers on the leader; `421` (with the reason) elsewhere.
pub async fn on_leader(
    leadership: &Arc<RaftLeadership>,
    change: &MemberChange,
) -> Response<ProxyBody> {
    match leadership.change_members(change).await {
        Ok(done) => body::json_response(StatusCode::OK, &done),
        Err(error) => error_response(&error),
    }
}

/// Makes `change` here if this node leads, else at the leader.
pub async fn on_leader_or_forward(
    leadership: &Arc<RaftLeadership>,
    client: &PeerClient,
    change: &MemberChange,
) -> Response<ProxyBody> {
    let payload = match serde_json::to_vec(change) {
        Ok(payload) => payload,
        Err(e) => return body::text_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    let mut last_refusal = String::from("no leader is known");
    for _ in 0..LEADER_TRIES {
        let leader_addr = match leadership.change_members(change).await {
            Ok(done) => return body::json_response(StatusCode::OK, &done),
            Err(ChangeError::NotLeader {
                leader: Some((_, addr)),
            }) => addr,
            Err(ChangeError::NotLeader { leader: None } | ChangeError::HandedOff { .. }) => {
                tokio::time::sleep(LEADER_RETRY).await;
                continue;
            }
            Err(error) => return error_response(&error),
        };
        // The leader waits up to CATCH_UP_LIMIT for a new node.
        let limit = CATCH_UP_LIMIT + Duration::from_secs(30);
        match client
            .call(&leader_addr, Method::POST, CLUSTER_PATH, &[], payload.clone(), limit)
            .await
        {
            Ok((StatusCode::MISDIRECTED_REQUEST, text)) => {
                last_refusal = String::from_utf8_lossy(&text).trim().to_owned();
                tokio::time::sleep(LEADER_RETRY).await;
            }
            Ok((status, text)) => {
                let mut resp = Response::new(body::full(text));
                *resp.status_mut() = status;
                let kind = if status.is_success() {
                    "application/json"
                } else {
                    "text/plain; charset=utf-8"
                };
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(kind),
                );
                return resp;
            }
            Err(error) => {
                return body::text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("could not get an answer from the leader at {leader_addr}: {error}; the change may or may not have been made: see `litegate member list`\n"),
                )
            }
        }
    }
    body::text_response(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("no leader took the change ({last_refusal}); nothing changed, try again\n"),
    )
}

/// Reads a membership change sent over the cluster link.
pub async fn read_change(req: Request<Incoming>) -> Result<MemberChange, Response<ProxyBody>> {
    let bytes = match Limited::new(req.into_body(), 16 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(body::text_response(
                StatusCode::BAD_REQUEST,
                "membership change too large or cut short\n",
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        body::text_response(
            StatusCode::BAD_REQUEST,
            format!("not a membership change: {e}\n"),
        )
    })
}

pub fn error_response(error: &ChangeError) -> Response<ProxyBody> {
    let status = match error {
        ChangeError::NotLeader { .. } | ChangeError::HandedOff { .. } => {
            StatusCode::MISDIRECTED_REQUEST
        }
        ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
        ChangeError::Conflict(_) | ChangeError::Handoff(HandoffError::InProgress) => {
            StatusCode::CONFLICT
        }
        ChangeError::CatchUp { .. } | ChangeError::Handoff(HandoffError::TimedOut { .. }) => {
            StatusCode::GATEWAY_TIMEOUT
        }
        ChangeError::Handoff(_) | ChangeError::Raft(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    body::text_response(status, format!("{error}\n"))
}
