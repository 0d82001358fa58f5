//! Node-to-node traffic on the cluster listener: authentication, the peer
//! client, what we know of each peer, the listener's routes, Raft, and the
//! hooks that tell the app its role.

pub mod auth;
pub mod client;
pub mod membership;
pub mod peers;
pub mod raft;
pub mod role_hooks;
pub mod server;
