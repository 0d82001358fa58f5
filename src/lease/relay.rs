//! The replica-side stream relay (`lease.relay_listen`): LiteFS's
//! `lease.advertise-url` on every node points here, so a replica LiteFS
//! reaches its primary through its own litegate, which forwards the TCP
//! connection to the LiteFS of the node that holds the lease in this node's
//! lease state — and drops it the moment that holder changes.
//!
//! Why: a LiteFS replica consults the lease only when its replication
//! stream ends, and it sets no read deadline on that stream. Behind a
//! silent partition the stream to a cut-off primary would hang until TCP
//! keepalive gives up; here it ends when the majority expires the cut-off
//! primary's session, so the replica goes back to the lease at once.
//!
//! The relay is plain TCP: LiteFS's other calls to the advertise URL
//! (`/handoff`, `/tx`, `/info`, ...) pass through it unchanged.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::machine::LeaseMachine;
use crate::cluster::peers::PeerTable;
use crate::config::Config;
use crate::log_limit::{self, LogLimit};
use crate::metrics;
use crate::shutdown::Shutdown;

/// A LiteFS that does not accept within this is treated as down: the
/// replica retries after its own reconnect delay (1 s) and finds the
/// holder afresh.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the relay closed a connection: the `reason` of
/// `lease_relay_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Nobody holds the key: closing sends LiteFS back to the lease.
    NoHolder,
    /// The holder is in neither `cluster.peers` nor the membership.
    HolderUnknown,
    /// The holder's LiteFS refused or did not accept within the timeout.
    HolderUnreachable,
    /// Another node took the key while the stream ran.
    HolderChanged,
    /// LiteFS on either side closed the connection.
    Closed,
    Shutdown,
}

impl Ended {
    const ALL: [Ended; 6] = [
        Ended::NoHolder,
        Ended::HolderUnknown,
        Ended::HolderUnreachable,
        Ended::HolderChanged,
        Ended::Closed,
        Ended::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Ended::NoHolder => "no-holder",
            Ended::HolderUnknown => "holder-unknown",
            Ended::HolderUnreachable => "holder-unreachable",
            Ended::HolderChanged => "holder-changed",
            Ended::Closed => "closed",
            Ended::Shutdown => "shutdown",
        }
    }
}

/// Who holds LiteFS's key, as far as this relay cares: the node whose
/// LiteFS acquired it and the session it holds it with. A handoff keeps
/// the session and changes the node; an expiry clears both.
type HeldBy = (u64, String);

pub struct Relay {
    machine: Arc<LeaseMachine>,
    key: String,
    litefs_addrs: LitefsAddrs,
    connect_timeout: Duration,
    slots: Arc<Semaphore>,
}

/// Where each node's LiteFS API listens.
enum LitefsAddrs {
    /// Peers' LiteFS at their cluster host and `lease.litefs_port`, looked
    /// up when a connection comes (the table follows the Raft membership,
    /// so a node added with `litegate member add` is found); this node's
    /// at `litefs.api`, which may be loopback-only.
    Peers {
        table: Arc<PeerTable>,
        me: u64,
        own: Option<String>,
        litefs_port: u16,
    },
    /// Fixed addresses, for tests that stand LiteFS in with echo servers.
    #[cfg(test)]
    Fixed(std::collections::BTreeMap<u64, String>),
}

impl LitefsAddrs {
    fn of(&self, node: u64) -> Option<String> {
        match self {
            Self::Peers { me, own, .. } if node == *me => own.clone(),
            Self::Peers {
                table, litefs_port, ..
            } => table
                .by_id(node)
                .map(|peer| join_host_port(cluster_host(&peer.cluster), *litefs_port)),
            #[cfg(test)]
            Self::Fixed(addrs) => addrs.get(&node).cloned(),
        }
    }
}

impl Relay {
    pub fn new(
        config: &Config,
        machine: Arc<LeaseMachine>,
        peers: Arc<PeerTable>,
        max_connections: usize,
    ) -> Self {
        metrics::relay_configured(&Ended::ALL.map(Ended::as_str));
        let addrs = LitefsAddrs::Peers {
            table: peers,
            me: config.node.id.unwrap_or_default(),
            own: api_authority(&config.litefs.api),
            litefs_port: config.lease.litefs_port,
        };
        Self::with(machine, config.lease.key.clone(), addrs, max_connections)
    }

    #[cfg(test)]
    fn with_addrs(
        machine: Arc<LeaseMachine>,
        key: String,
        litefs_addrs: std::collections::BTreeMap<u64, String>,
        max_connections: usize,
    ) -> Self {
        Self::with(
            machine,
            key,
            LitefsAddrs::Fixed(litefs_addrs),
            max_connections,
        )
    }

    fn with(
        machine: Arc<LeaseMachine>,
        key: String,
        litefs_addrs: LitefsAddrs,
        max_connections: usize,
    ) -> Self {
        Self {
            machine,
            key,
            litefs_addrs,
            connect_timeout: CONNECT_TIMEOUT,
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
        }
    }

    /// Accepts until shutdown; each connection is relayed on a task of its
    /// own, and ends with the shutdown too.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stop: Shutdown) {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = stop.begun() => return,
            };
            let client = match accepted {
                Ok((client, _)) => client,
                Err(error) => {
                    static ACCEPT: LogLimit = LogLimit::new(log_limit::EVERY);
                    if let Some(suppressed) = ACCEPT.allow("accept") {
                        tracing::warn!(%error, suppressed, "lease relay: accept failed");
                    }
                    // Out of descriptors, typically: let some close first.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
                static FULL: LogLimit = LogLimit::new(log_limit::EVERY);
                if let Some(suppressed) = FULL.allow("full") {
                    tracing::warn!(
                        suppressed,
                        "lease relay: connection cap reached; closing a new connection"
                    );
                }
                continue;
            };
            let relay = Arc::clone(&self);
            let stop = stop.clone();
            tokio::spawn(async move {
                let ended = relay.relay(client, stop).await;
                metrics::relay_closed(ended.as_str());
                drop(slot);
            });
        }
    }

    /// One client connection: to the holder's LiteFS, both ways, until
    /// either side closes, the holder changes, or shutdown. Returning drops
    /// both sockets, which is the whole signal LiteFS needs.
    async fn relay(&self, mut client: TcpStream, mut stop: Shutdown) -> Ended {
        // Subscribed before the holder is read, so no change slips between.
        let mut changes = self.machine.subscribe();
        let Some(held) = self.held_by() else {
            // Nobody holds the lease: closing makes LiteFS consult it.
            return Ended::NoHolder;
        };
        let Some(addr) = self.litefs_addrs.of(held.0) else {
            static UNKNOWN: LogLimit = LogLimit::new(log_limit::EVERY);
            if let Some(suppressed) = UNKNOWN.allow("unknown") {
                tracing::warn!(
                    node = held.0,
                    suppressed,
                    "lease relay: the lease holder is neither in cluster.peers nor in the Raft membership; closing"
                );
            }
            return Ended::HolderUnknown;
        };
        let connected =
            tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr.as_str())).await;
        let mut upstream = match connected {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(error)) => {
                static REFUSED: LogLimit = LogLimit::new(log_limit::EVERY);
                if let Some(suppressed) = REFUSED.allow(&addr) {
                    tracing::warn!(%addr, %error, suppressed, "lease relay: cannot reach the lease holder's LiteFS; closing");
                }
                return Ended::HolderUnreachable;
            }
            Err(_) => {
                static SILENT: LogLimit = LogLimit::new(log_limit::EVERY);
                if let Some(suppressed) = SILENT.allow(&addr) {
                    tracing::warn!(%addr, timeout = ?self.connect_timeout, suppressed, "lease relay: the lease holder's LiteFS did not accept in time; closing");
                }
                return Ended::HolderUnreachable;
            }
        };
        // LiteFS's stream carries small frames that should not wait.
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let _streaming = metrics::RelayStream::open();
        tokio::select! {
            _ = copy_bidirectional(&mut client, &mut upstream) => Ended::Closed,
            () = self.holder_moves_from(&held, &mut changes) => {
                tracing::debug!(node = held.0, "lease relay: the lease holder changed; dropping a relayed connection");
                Ended::HolderChanged
            }
            () = stop.begun() => Ended::Shutdown,
        }
    }

    /// Resolves once the holder differs from `held` (checked at once too,
    /// for a change while connecting); never if the machine goes away.
    async fn holder_moves_from(&self, held: &HeldBy, changes: &mut watch::Receiver<u64>) {
        loop {
            if self.held_by().as_ref() != Some(held) {
                return;
            }
            if changes.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn held_by(&self) -> Option<HeldBy> {
        self.machine
            .read(|t| t.holder(&self.key).map(|(s, _)| (s.owner, s.id.clone())))
    }
}

/// The host of a `cluster.peers` address (`HOST:PORT` or `[V6]:PORT`).
fn cluster_host(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

/// `HOST:PORT`, bracketing a bare IPv6 host.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `host:port` of `litefs.api` (port 80 when it names none).
fn api_authority(api: &str) -> Option<String> {
    let uri: http::Uri = api.parse().ok()?;
    let host = uri.host()?;
    Some(join_host_port(
        host.trim_start_matches('[').trim_end_matches(']'),
        uri.port_u16().unwrap_or(80),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::lease::state::{Behavior, LeaseCommand, Session};

    const KEY: &str = "litefs/primary";

    /// A stand-in for one node's LiteFS: echoes, each line prefixed with
    /// the node's name so a test sees which node it reached.
    async fn fake_litefs(name: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let mut reply = name.as_bytes().to_vec();
                        reply.extend_from_slice(&buf[..n]);
                        if conn.write_all(&reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn session(id: &str, owner: u64) -> LeaseCommand {
        LeaseCommand::CreateSession(Session {
            id: id.into(),
            name: "litefs".into(),
            node: format!("n{owner}"),
            ttl_ms: 3000,
            lock_delay_ms: 0,
            behavior: Behavior::Delete,
            create_index: 0,
            owner,
        })
    }

    fn acquire(id: &str, node: u64) -> LeaseCommand {
        LeaseCommand::Acquire {
            key: KEY.into(),
            value: b"{}".to_vec(),
            session: id.into(),
            origin: node,
            leader: node,
            handoff: false,
        }
    }

    struct Setup {
        machine: Arc<LeaseMachine>,
        relay_addr: std::net::SocketAddr,
        _trigger: crate::shutdown::Trigger,
        index: u64,
    }

    impl Setup {
        fn apply(&mut self, command: LeaseCommand) {
            self.index += 1;
            assert!(self.machine.apply(command, self.index));
        }

        /// Node `node`'s LiteFS makes session `id` and takes the key with it.
        fn hold(&mut self, id: &str, node: u64) {
            self.apply(session(id, node));
            self.apply(acquire(id, node));
        }
    }

    /// Nodes 1 and 2, each with its fake LiteFS, and a relay over a lease
    /// machine the test drives by hand.
    async fn setup(max_connections: usize) -> Setup {
        let machine = LeaseMachine::new();
        let addrs = BTreeMap::from([(1, fake_litefs("n1:").await), (2, fake_litefs("n2:").await)]);
        let relay = Arc::new(Relay::with_addrs(
            Arc::clone(&machine),
            KEY.into(),
            addrs,
            max_connections,
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = listener.local_addr().unwrap();
        let (trigger, stop) = crate::shutdown::channel();
        tokio::spawn(relay.serve(listener, stop));
        Setup {
            machine,
            relay_addr,
            _trigger: trigger,
            index: 0,
        }
    }

    async fn read_some(conn: &mut TcpStream) -> Vec<u8> {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("the relay neither answered nor closed within 5 s")
            .unwrap_or(0);
        buf[..n].to_vec()
    }

    async fn round_trip(conn: &mut TcpStream, line: &str) -> Vec<u8> {
        conn.write_all(line.as_bytes()).await.unwrap();
        read_some(conn).await
    }

    #[tokio::test]
    async fn a_connection_reaches_the_holders_litefs() {
        let mut s = setup(8).await;
        s.hold("s2", 2);
        let mut conn = TcpStream::connect(s.relay_addr).await.unwrap();
        assert_eq!(round_trip(&mut conn, "ping").await, b"n2:ping");
        assert_eq!(round_trip(&mut conn, "again").await, b"n2:again");
    }

    #[tokio::test]
    async fn with_no_holder_the_connection_is_closed_at_once() {
        let s = setup(8).await;
        let mut conn = TcpStream::connect(s.relay_addr).await.unwrap();
        assert_eq!(read_some(&mut conn).await, b"", "expected end of stream");
    }

    #[tokio::test]
    async fn a_holder_change_drops_the_relayed_connection() {
        let mut s = setup(8).await;
        s.hold("s1", 1);
        let mut conn = TcpStream::connect(s.relay_addr).await.unwrap();
        assert_eq!(round_trip(&mut conn, "a").await, b"n1:a");
        // An expiry: the session ends and the key is free.
        s.apply(LeaseCommand::DestroySession { id: "s1".into() });
        assert_eq!(read_some(&mut conn).await, b"", "expected end of stream");
        // The next connection follows the new holder.
        s.hold("s2", 2);
        let mut conn = TcpStream::connect(s.relay_addr).await.unwrap();
        assert_eq!(round_trip(&mut conn, "b").await, b"n2:b");
    }

    #[tokio::test]
    async fn a_handoff_keeping_the_session_drops_the_relayed_connection() {
        let mut s = setup(8).await;
        s.hold("s1", 1);
        let mut conn = TcpStream::connect(s.relay_addr).await.unwrap();
        assert_eq!(round_trip(&mut conn, "a").await, b"n1:a");
        // LiteFS's handoff: node 2's LiteFS re-acquires with the holder's
        // session while node 1 still leads.
        s.apply(LeaseCommand::Acquire {
            key: KEY.into(),
            value: b"{}".to_vec(),
            session: "s1".into(),
            origin: 2,
            leader: 1,
            handoff: true,
        });
        assert_eq!(read_some(&mut conn).await, b"", "expected end of stream");
        let mut conn = TcpStream::connect(s.relay_addr).await.unwrap();
        assert_eq!(round_trip(&mut conn, "b").await, b"n2:b");
    }

    #[tokio::test]
    async fn a_change_that_keeps_the_holder_keeps_the_connection() {
        let mut s = setup(8).await;
        s.hold("s1", 1);
        let mut conn = TcpStream::connect(s.relay_addr).await.unwrap();
        assert_eq!(round_trip(&mut conn, "a").await, b"n1:a");
        // Another session appearing changes the machine, not the holder.
        s.apply(session("s2", 2));
        assert_eq!(round_trip(&mut conn, "b").await, b"n1:b");
    }

    #[tokio::test]
    async fn past_the_cap_a_connection_is_closed() {
        let mut s = setup(1).await;
        s.hold("s1", 1);
        let mut first = TcpStream::connect(s.relay_addr).await.unwrap();
        assert_eq!(round_trip(&mut first, "a").await, b"n1:a");
        let mut second = TcpStream::connect(s.relay_addr).await.unwrap();
        assert_eq!(read_some(&mut second).await, b"", "expected end of stream");
        drop(first);
        // The slot comes back once the first connection's task ends.
        let mut third = None;
        for _ in 0..100 {
            let mut conn = TcpStream::connect(s.relay_addr).await.unwrap();
            if round_trip(&mut conn, "c").await == b"n1:c" {
                third = Some(conn);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(third.is_some(), "the slot never came back");
    }

    #[test]
    fn litefs_addresses_come_from_the_cluster_host_and_the_api() {
        assert_eq!(cluster_host("10.0.0.1:7070"), "10.0.0.1");
        assert_eq!(cluster_host("[fd00::1]:7070"), "[fd00::1]");
        assert_eq!(cluster_host("app-1.internal:7070"), "app-1.internal");
        assert_eq!(join_host_port("[fd00::1]", 20202), "[fd00::1]:20202");
        assert_eq!(join_host_port("fd00::1", 20202), "[fd00::1]:20202");
        assert_eq!(
            api_authority("http://127.0.0.1:20202").as_deref(),
            Some("127.0.0.1:20202")
        );
        assert_eq!(
            api_authority("http://localhost").as_deref(),
            Some("localhost:80")
        );
        assert_eq!(api_authority("not a url"), None);
    }
}

#[cfg(test)]
mod addr_tests {
    use super::*;
    use crate::cluster::raft::member::MemberNode;
    use crate::config::Peer;

    fn peer(id: u64, name: &str, cluster: &str) -> Peer {
        Peer {
            id,
            name: name.into(),
            cluster: cluster.into(),
            public_url: format!("http://127.0.0.1:{}", 8000 + id),
            witness: false,
        }
    }

    #[test]
    fn a_node_added_at_runtime_is_found_at_its_cluster_host_and_this_node_at_its_api() {
        let table = Arc::new(PeerTable::new(
            "n1",
            &[
                peer(1, "n1", "10.0.0.1:7001"),
                peer(2, "n2", "10.0.0.2:7001"),
            ],
        ));
        let addrs = LitefsAddrs::Peers {
            table: Arc::clone(&table),
            me: 1,
            own: Some("127.0.0.1:20202".into()),
            litefs_port: 20202,
        };
        assert_eq!(addrs.of(4), None);
        // `litegate member add` puts node 4 in the Raft membership, which
        // the table follows; no config on this node names it.
        let members = [
            MemberNode::from(&peer(1, "n1", "10.0.0.1:7001")),
            MemberNode::from(&peer(2, "n2", "10.0.0.2:7001")),
            MemberNode::from(&peer(4, "n4", "[fd00::4]:7001")),
        ];
        table.follow_membership([
            (1, &members[0], true),
            (2, &members[1], true),
            (4, &members[2], true),
        ]);
        assert_eq!(addrs.of(4).as_deref(), Some("[fd00::4]:20202"));
        assert_eq!(addrs.of(2).as_deref(), Some("10.0.0.2:20202"));
        assert_eq!(addrs.of(1).as_deref(), Some("127.0.0.1:20202"));
    }
}
