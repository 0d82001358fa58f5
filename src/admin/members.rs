//! `POST /members`, `DELETE /members/{name}` and
//! `POST /members/{old}/replace` (raft mode, docs/design.md §6): the
//! operator's membership changes. Any node takes them and the leader makes
//! them (see [`crate::cluster::membership`]).

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::cluster::membership;
use crate::primary::raft_membership::{MemberChange, NewMember};
use crate::proxy::body::{self, ProxyBody};

use super::AdminState;

/// Whether `req` is one of the membership changes this module answers.
pub fn is_change(req: &Request<Incoming>) -> bool {
    let path = req.uri().path();
    match *req.method() {
        Method::POST => {
            path == "/members" || (path.starts_with("/members/") && path.ends_with("/replace"))
        }
        Method::DELETE => path.starts_with("/members/"),
        _ => false,
    }
}

/// Answers an authorized membership change.
pub async fn change(state: &AdminState, req: Request<Incoming>) -> Response<ProxyBody> {
    // `source.raft()`: raft mode with or without `[lease]`.
    let (Some(leadership), Some(cluster)) = (state.source.raft(), &state.cluster) else {
        return body::text_response(
            StatusCode::CONFLICT,
            "membership changes need primary.mode = \"raft\"; in other modes the members are cluster.peers\n",
        );
    };
    let change = match parse(req).await {
        Ok(change) => change,
        Err(refusal) => return refusal,
    };
    membership::on_leader_or_forward(leadership, &cluster.client, &change).await
}

async fn parse(req: Request<Incoming>) -> Result<MemberChange, Response<ProxyBody>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Node names are plain (no '/'), taken as they appear in the path.
    let named = |rest: &str| (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned());
    let unnamed = || body::text_response(StatusCode::NOT_FOUND, "name the member: /members/NAME\n");
    if method == Method::DELETE {
        let name = named(&path["/members/".len()..]).ok_or_else(unnamed)?;
        return Ok(MemberChange::Remove { name });
    }
    let node = read_node(req).await?;
    if path == "/members" {
        return Ok(MemberChange::Add { node });
    }
    let old = path
        .get("/members/".len()..path.len() - "/replace".len())
        .and_then(named)
        .ok_or_else(unnamed)?;
    Ok(MemberChange::Replace { old, node })
}

async fn read_node(req: Request<Incoming>) -> Result<NewMember, Response<ProxyBody>> {
    let bytes = match Limited::new(req.into_body(), 16 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(body::text_response(
                StatusCode::BAD_REQUEST,
                "request body too large or cut short\n",
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        body::text_response(
            StatusCode::BAD_REQUEST,
            format!("the body must be the new node as JSON {{\"id\", \"name\", \"cluster\", \"public_url\", \"witness\"}}: {e}\n"),
        )
    })
}
