//! The receiving side of Raft's RPCs: `POST /_litegate/raft/{append, vote,
//! pre-vote, snapshot, transfer-leader}` on the cluster listener, already
//! authenticated by [`ClusterService`](crate::cluster::server::ClusterService).
//! A message from another cluster is refused before openraft sees it, and
//! so is one to or from a node whose data dir is not the one the cluster
//! knows ([`super::incarnation`]), and any part in an election during the
//! start-up quiet period ([`super::quiet`]).

use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::incarnation::{self, Sighting};
use super::{RaftNode, TypeConfig};
use crate::log_limit::{self, LogLimit};
use crate::proxy::body::{self, ProxyBody};

/// The sender's cluster id on every Raft message.
pub const CLUSTER_ID_HEADER: HeaderName = HeaderName::from_static("litegate-cluster-id");

/// Which node sent a Raft message, and which node it is meant for: a
/// process that receives messages meant for another id, or from its own
/// id, has found a second process claiming an identity.
pub const FROM_HEADER: HeaderName = HeaderName::from_static("litegate-raft-from");
pub const TO_HEADER: HeaderName = HeaderName::from_static("litegate-raft-to");

/// The sender's data dir incarnation, and the one it knows for the
/// receiver ([`super::incarnation`]): a node that lost its data dir is
/// refused under its old id, both as sender and as receiver.
pub const FROM_INCARNATION_HEADER: HeaderName =
    HeaderName::from_static("litegate-raft-from-incarnation");
pub const TO_INCARNATION_HEADER: HeaderName =
    HeaderName::from_static("litegate-raft-to-incarnation");

/// Raft messages here are small (leadership only), but a snapshot carries
/// the membership; this bounds what a peer can make us buffer.
const MAX_RPC_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
pub struct FullSnapshot {
    pub vote: VoteOf<TypeConfig>,
    pub meta: SnapshotMetaOf<TypeConfig>,
    pub data: Vec<u8>,
}

pub async fn handle(
    node: &RaftNode,
    endpoint: &str,
    req: Request<Incoming>,
    sender: std::net::SocketAddr,
) -> Response<ProxyBody> {
    let (raft, identity) = (&node.raft, &node.identity);
    if let Some(refusal) = check_identity(node, req.headers(), sender) {
        return refusal;
    }
    // Before the cluster id is learned: a node that lost its data dir must
    // not even join the cluster under its old id.
    if let Some(refusal) = check_addressed_incarnation(node, req.headers()) {
        return refusal;
    }
    let sender_cluster = req
        .headers()
        .get(&CLUSTER_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Err(reason) = identity.admit(sender_cluster.as_deref()) {
        static REFUSED: LogLimit = LogLimit::new(log_limit::EVERY);
        if let Some(suppressed) = REFUSED.allow("") {
            tracing::warn!(%reason, suppressed, "refused a Raft message from another cluster");
        }
        return body::text_response(StatusCode::CONFLICT, format!("{reason}\n"));
    }
    // After the cluster id check: only a member of this cluster is
    // remembered.
    if let Some(refusal) = check_sender_incarnation(node, req.headers()).await {
        return refusal;
    }
    if let Some(reason) = node.quiet.refusal(endpoint, std::time::Instant::now()) {
        // The sender counts this as a failed RPC: no vote, no transfer.
        return body::text_response(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"));
    }
    let bytes = match Limited::new(req.into_body(), MAX_RPC_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return body::text_response(
                StatusCode::BAD_REQUEST,
                format!("Raft message too large or cut short: {e}\n"),
            )
        }
    };
    match endpoint {
        "append" => answer(&bytes, |rpc| raft.append_entries(rpc)).await,
        "vote" => answer(&bytes, |rpc| raft.vote(rpc)).await,
        "pre-vote" => answer(&bytes, |rpc| raft.pre_vote(rpc)).await,
        "transfer-leader" => answer(&bytes, |rpc| raft.handle_transfer_leader(rpc)).await,
        "snapshot" => {
            answer(&bytes, |rpc: FullSnapshot| {
                let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> {
                    meta: rpc.meta,
                    snapshot: rpc.data,
                };
                raft.install_full_snapshot(rpc.vote, snapshot)
            })
            .await
        }
        _ => body::text_response(StatusCode::NOT_FOUND, "no such Raft endpoint\n"),
    }
}

/// Two processes with one `node.id`. A message meant for another id
/// reached this process at that node's address: this process runs with a
/// copy of another node's identity, and ends (the real node keeps its id).
/// A message from this node's own id came from another process claiming
/// it: refused, and logged with both addresses.
fn check_identity(
    node: &RaftNode,
    headers: &http::HeaderMap,
    sender: std::net::SocketAddr,
) -> Option<Response<ProxyBody>> {
    let (from, to) = (
        header_id(headers, &FROM_HEADER),
        header_id(headers, &TO_HEADER),
    );
    let me = node.me;
    if let Some(to) = to.filter(|to| *to != me) {
        let why = format!(
            "two processes claim node {me}: this one (cluster.listen {}) and the one cluster.peers puts at {}; node {} sent this process a Raft message meant for node {to}, so this process's config is a copy of another node's: give it its own node.id, node.name and cluster.data_dir",
            node.listening_on,
            node.configured_at,
            from.map_or("?".to_owned(), |f| f.to_string()),
        );
        tracing::error!(%sender, "{why}");
        node.standing.refuse(why);
        std::process::exit(super::EXIT_COPIED_IDENTITY);
    }
    if from == Some(me) {
        let why = format!(
            "two processes claim node {me}: this one (cluster.listen {}, in cluster.peers at {}) and another at {sender}, which sent a Raft message as node {me}; stop the copy and give it its own node.id, node.name and cluster.data_dir",
            node.listening_on, node.configured_at,
        );
        tracing::error!("{why}");
        return Some(body::text_response(
            StatusCode::CONFLICT,
            format!("{why}\n"),
        ));
    }
    None
}

/// A message meant for another incarnation of this node id: this node's
/// data dir is not the one its peers know (it was lost and this node
/// started on an empty one). Refused, so it neither votes nor takes the
/// log under its old id, and recorded in [`super::standing`] so `status`
/// and the `503` text say to replace it.
fn check_addressed_incarnation(
    node: &RaftNode,
    headers: &http::HeaderMap,
) -> Option<Response<ProxyBody>> {
    let expected = header_incarnation(headers, &TO_INCARNATION_HEADER)?;
    let mine = node.incarnations.mine();
    if expected == mine {
        return None;
    }
    let why = incarnation::wiped_reason(node.me, mine, expected, header_id(headers, &FROM_HEADER));
    static WIPED: LogLimit = LogLimit::new(log_limit::EVERY);
    if let Some(suppressed) = WIPED.allow("") {
        tracing::error!(suppressed, "{why}");
    }
    node.standing.refuse(why.clone());
    Some(body::text_response(
        StatusCode::CONFLICT,
        format!("{why}\n"),
    ))
}

/// A sender whose incarnation differs from the one this node knows for its
/// id has lost its data dir: refused (its vote request counts for
/// nothing). The first incarnation seen for an id is kept.
async fn check_sender_incarnation(
    node: &RaftNode,
    headers: &http::HeaderMap,
) -> Option<Response<ProxyBody>> {
    let from = header_id(headers, &FROM_HEADER)?;
    let theirs = header_incarnation(headers, &FROM_INCARNATION_HEADER)?;
    match node.incarnations.sighted(from, theirs).await {
        Ok(Sighting::Known) => None,
        Ok(Sighting::Changed { known }) => {
            let why = incarnation::changed_reason(from, theirs, &known);
            static CHANGED: LogLimit = LogLimit::new(log_limit::EVERY);
            if let Some(suppressed) = CHANGED.allow(&from.to_string()) {
                tracing::warn!(suppressed, "{why}");
            }
            Some(body::text_response(
                StatusCode::CONFLICT,
                format!("{why}\n"),
            ))
        }
        // Not remembered, so not admitted: the sender retries.
        Err(e) => Some(body::text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot record node {from}'s incarnation: {e}\n"),
        )),
    }
}

fn header_id(headers: &http::HeaderMap, name: &HeaderName) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn header_incarnation<'h>(headers: &'h http::HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| incarnation::plausible(v))
}

/// Decodes the request, hands it to openraft, encodes its answer. An error
/// from openraft means this node's Raft is stopping: 503, and the sender
/// treats it as a failed RPC.
async fn answer<Req, Resp, E, F>(bytes: &[u8], call: impl FnOnce(Req) -> F) -> Response<ProxyBody>
where
    Req: DeserializeOwned,
    Resp: Serialize,
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<Resp, E>>,
{
    let rpc = match serde_json::from_slice::<Req>(bytes) {
        Ok(rpc) => rpc,
        Err(e) => {
            return body::text_response(
                StatusCode::BAD_REQUEST,
                format!("not a Raft message: {e}\n"),
            )
        }
    };
    match call(rpc).await {
        Ok(resp) => body::json_response(StatusCode::OK, &resp),
        Err(e) => body::text_response(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}
