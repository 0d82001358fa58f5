//! Raft's side of the wire: each RPC is one authenticated JSON POST to the
//! peer's cluster listener (`/_litegate/raft/…`) through the shared pooled
//! [`PeerClient`], bounded by openraft's per-RPC deadline. A peer that
//! cannot be connected to is reported as unreachable, so openraft backs off
//! instead of hammering it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, StatusCode};
use openraft::errors::{
    NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{RPCTypes, RaftNetworkFactory, RaftNetworkV2};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::incarnation::Incarnations;
use super::rpc::{
    FullSnapshot, CLUSTER_ID_HEADER, FROM_HEADER, FROM_INCARNATION_HEADER, TO_HEADER,
    TO_INCARNATION_HEADER,
};
use super::store::IdentityFile;
use super::TypeConfig;
use crate::cluster::client::{CallError, PeerClient};

#[derive(Clone)]
pub struct Network {
    pub me: u64,
    pub client: PeerClient,
    pub identity: Arc<IdentityFile>,
    pub incarnations: Arc<Incarnations>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &super::member::MemberNode) -> PeerLink {
        PeerLink {
            net: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The link to one peer, as openraft uses it.
pub struct PeerLink {
    net: Network,
    target: u64,
    addr: String,
}

/// Why an RPC failed, before it is typed for openraft.
enum Failure {
    Unreachable(String),
    Timeout(Duration),
    Other(String),
}

impl PeerLink {
    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, Failure> {
        let body = serde_json::to_vec(req).map_err(|e| Failure::Other(e.to_string()))?;
        let mut headers: Vec<_> = self
            .net
            .identity
            .cluster_id()
            .and_then(|id| HeaderValue::from_str(&id).ok())
            .map(|v| (CLUSTER_ID_HEADER, v))
            .into_iter()
            .collect();
        headers.push((FROM_HEADER, HeaderValue::from(self.net.me)));
        headers.push((TO_HEADER, HeaderValue::from(self.target)));
        // The receiver refuses a message meant for another data dir than
        // its own: a peer that lost its data dir answers every vote
        // request and append under its old id with a refusal.
        let incarnations = &self.net.incarnations;
        headers.extend(
            HeaderValue::from_str(incarnations.mine())
                .ok()
                .map(|v| (FROM_INCARNATION_HEADER, v)),
        );
        headers.extend(
            incarnations
                .expected(self.target)
                .and_then(|known| HeaderValue::from_str(&known).ok())
                .map(|v| (TO_INCARNATION_HEADER, v)),
        );
        let path = format!("/_litegate/raft/{endpoint}");
        let (status, bytes) = self
            .net
            .client
            .call(&self.addr, Method::POST, &path, &headers, body, timeout)
            .await
            .map_err(|e| match e {
                CallError::Unreachable(m) => Failure::Unreachable(m),
                CallError::Timeout(t) => Failure::Timeout(t),
                CallError::Failed(m) => Failure::Other(m),
            })?;
        if status != StatusCode::OK {
            return Err(Failure::Other(format!(
                "{} answered {status}: {}",
                self.addr,
                String::from_utf8_lossy(&bytes).trim()
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Other(format!("{} sent a bad {endpoint} answer: {e}", self.addr)))
    }

    fn rpc_error(&self, action: RPCTypes, failure: Failure) -> RPCError<TypeConfig> {
        match failure {
            Failure::Unreachable(m) => RPCError::Unreachable(Unreachable::from_string(m)),
            Failure::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: self.net.me,
                target: self.target,
                timeout,
            }),
            Failure::Other(m) => RPCError::Network(NetworkError::from_string(m)),
        }
    }
}

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.post("append", &rpc, option.hard_ttl())
            .await
            .map_err(|f| self.rpc_error(RPCTypes::AppendEntries, f))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.post("vote", &rpc, option.hard_ttl())
            .await
            .map_err(|f| self.rpc_error(RPCTypes::Vote, f))
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.post("pre-vote", &rpc, option.hard_ttl())
            .await
            .map_err(|f| self.rpc_error(RPCTypes::Vote, f))
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = FullSnapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let send = self.post("snapshot", &req, option.hard_ttl());
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result.map_err(|f| match self.rpc_error(RPCTypes::InstallSnapshot, f) {
                RPCError::Unreachable(e) => StreamingError::Unreachable(e),
                RPCError::Timeout(e) => StreamingError::Timeout(e),
                RPCError::Network(e) => StreamingError::Network(e),
                RPCError::RemoteError(e) => StreamingError::Network(NetworkError::from_string(e.to_string())),
            }),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.post("transfer-leader", &req, option.hard_ttl())
            .await
            .map_err(|f| self.rpc_error(RPCTypes::TransferLeader, f))
    }
}
