//! LiteFS's lease without Consul (`[lease]`, docs/litefs.md "LiteFS without
//! Consul"): every litegate serves the Consul calls LiteFS makes on a
//! loopback listener, backed by litegate's Raft log.
//!
//! - [`state`]: sessions and KV entries with Consul's semantics, applied
//!   deterministically from the log.
//! - [`machine`]: that state inside the Raft state machine: snapshot blob,
//!   change notifications.
//! - [`consul`]: the HTTP calls, parsed and rendered.
//! - [`service`]: the leader executes, followers forward; TTL timers.
//! - [`listener`]: the loopback listener and its token.
//! - [`handoff`]: LiteFS's own handoff inside `litegate handoff`.
//! - [`relay`]: LiteFS's advertise URL, relayed to the holder's LiteFS and
//!   cut when the holder changes.

pub mod consul;
pub mod handoff;
pub mod listener;
pub mod machine;
pub mod relay;
pub mod service;
pub mod state;

pub use machine::LeaseMachine;
pub use service::LeaseService;
