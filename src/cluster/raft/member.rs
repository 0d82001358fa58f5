//! What the Raft membership records about each node. Membership lives in
//! the Raft log once a cluster exists, so everything a node needs to reach
//! and route to a member belongs here, not only in `cluster.peers`.

use serde::{Deserialize, Serialize};

use crate::config::Peer;

/// One member as the Raft log records it. The JSON is a superset of
/// openraft's `BasicNode` (`{"addr"}`), which data dirs written before
/// these fields existed hold; there they read as empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// host:port of its cluster listener.
    pub addr: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_url: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub witness: bool,
}

impl From<&Peer> for MemberNode {
    fn from(peer: &Peer) -> Self {
        Self {
            addr: peer.cluster.clone(),
            name: peer.name.clone(),
            public_url: peer.public_url.clone(),
            witness: peer.witness,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_written_as_basic_nodes_still_reads() {
        let old: MemberNode = serde_json::from_str(r#"{"addr":"10.0.0.1:7070"}"#).unwrap();
        assert_eq!(old.addr, "10.0.0.1:7070");
        assert!(old.name.is_empty() && old.public_url.is_empty() && !old.witness);
        let node = MemberNode {
            addr: "10.0.0.2:7070".into(),
            name: "app-2".into(),
            public_url: "http://10.0.0.2:8080".into(),
            witness: false,
        };
        let text = serde_json::to_string(&node).unwrap();
        assert_eq!(serde_json::from_str::<MemberNode>(&text).unwrap(), node);
    }
}
