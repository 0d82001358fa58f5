//! litegate: a write-forwarding reverse proxy for apps whose database has one
//! writer and many read replicas. `docs/design.md` is the contract;
//! `src/proxy/mod.rs` walks through the life of a request.
#![forbid(unsafe_code)]

pub mod admin;
pub mod cluster;
pub mod config;
pub mod consistency;
pub mod demo;
pub mod durable;
pub mod lease;
pub mod listen;
pub mod litefs;
pub mod log_level;
pub mod log_limit;
pub mod metrics;
pub mod node;
pub mod primary;
pub mod proxy;
pub mod reload;
pub mod shutdown;
pub mod systemd;
pub mod tls;
