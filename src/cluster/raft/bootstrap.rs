//! The cluster id of a new cluster, derived from what every founding node
//! is configured with: `cluster.initial_token` and the initial peer list.
//! Nodes started with the same two derive the same id, so any number of
//! them may be started with `--bootstrap` and they still form one cluster
//! (openraft accepts the same initial membership on several nodes; the
//! election picks one leader). A node configured with another peer list or
//! token derives another id, and its Raft messages are refused.
//!
//! The token keeps apart two clusters built on the same addresses, one
//! after the other (etcd's `--initial-cluster-token`): an old node whose
//! data dir survived does not join the new cluster.

use ring::digest;

use crate::config::Peer;

pub fn initial_cluster_id(token: &str, peers: &[Peer]) -> String {
    let mut members: Vec<_> = peers
        .iter()
        .map(|p| format!("{}={}@{}", p.id, p.name, p.cluster))
        .collect();
    members.sort();
    // Length-prefixed fields: no two inputs hash the same text.
    let mut text = format!("litegate-cluster-v1\n{}:{token}\n", token.len());
    for member in &members {
        text.push_str(&format!("{}:{member}\n", member.len()));
    }
    let hash = digest::digest(&digest::SHA256, text.as_bytes());
    hash.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, addr: &str) -> Peer {
        Peer {
            id,
            name: format!("n{id}"),
            cluster: addr.to_owned(),
            public_url: String::new(),
            witness: false,
        }
    }

    #[test]
    fn same_peers_in_any_order_give_one_id_and_the_token_separates_clusters() {
        let a = [peer(1, "10.0.0.1:7070"), peer(2, "10.0.0.2:7070")];
        let b = [peer(2, "10.0.0.2:7070"), peer(1, "10.0.0.1:7070")];
        assert_eq!(initial_cluster_id("t", &a), initial_cluster_id("t", &b));
        assert_ne!(initial_cluster_id("t", &a), initial_cluster_id("u", &a));
        let other = [peer(1, "10.0.0.1:7070"), peer(2, "10.0.0.3:7070")];
        assert_ne!(initial_cluster_id("t", &a), initial_cluster_id("t", &other));
        assert_eq!(initial_cluster_id("t", &a).len(), 32);
    }
}
