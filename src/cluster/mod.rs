//! Node-to-node traffic on the cluster listener: authentication, the peer
//! client, what we know of each peer, and the listener's routes.

pub mod auth;
pub mod client;
pub mod peers;
pub mod server;
