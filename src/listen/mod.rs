//! What every listener (public, cluster, admin) shares below HTTP: a cap on
//! open connections, back-off when the process runs out of file
//! descriptors, the file-descriptor budget, and the per-connection deadline
//! that closes connections which send no request.

pub mod accept;
pub mod activity;
pub mod fd_limit;
