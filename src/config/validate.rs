//! Checks that need more than one key, or more than a value's syntax.

use std::collections::HashSet;
use std::time::Duration as StdDuration;

use super::{Config, ConfigError, Duration, Origin, PrimaryMode};
use crate::proxy::headers::is_token;

/// The most `upstream.max_concurrency` may be: far above what one app
/// serves, and far below what tokio's semaphore can count
/// (`Semaphore::MAX_PERMITS`, past which it panics).
pub const MAX_CONCURRENCY: usize = 1_000_000;
const _: () = assert!(MAX_CONCURRENCY <= tokio::sync::Semaphore::MAX_PERMITS);

/// The most any `max_connections` may be: past what one process holds
/// open, and within what a semaphore counts and shutdown waits for at once.
pub const MAX_CONNECTIONS: usize = 1_000_000;
const _: () = assert!(MAX_CONNECTIONS <= tokio::sync::Semaphore::MAX_PERMITS);
const _: () = assert!(MAX_CONNECTIONS <= u32::MAX as usize);

/// The most `public.max_header_bytes` may be (1 MiB): browsers send a few
/// KiB, and the listener's buffers are sized from it.
pub const MAX_HEADER_BYTES: usize = 1 << 20;

const NONZERO: StdDuration = StdDuration::from_nanos(1);
const MINUTE: StdDuration = StdDuration::from_secs(60);
const HOUR: StdDuration = StdDuration::from_secs(3600);
const DAY: StdDuration = StdDuration::from_secs(86_400);

/// A duration key and the range it must be in. The maxima are far past any
/// sensible setting (a `"5d"` meant as `"5s"` is caught), and they keep
/// every `Instant + duration` litegate computes from overflowing.
struct DurationBound {
    key: &'static str,
    value: Duration,
    min: StdDuration,
    max: StdDuration,
}

impl DurationBound {
    fn check(&self) -> Result<(), String> {
        let value = self.value.get();
        if value < self.min {
            return Err(if self.min == NONZERO {
                "must be longer than 0, e.g. \"5s\"".to_owned()
            } else {
                format!(
                    "{} is too short: use at least \"{}\"",
                    self.value,
                    Duration(self.min)
                )
            });
        }
        if value > self.max {
            return Err(format!(
                "{} is longer than litegate allows here: use at most \"{}\"",
                self.value,
                Duration(self.max)
            ));
        }
        Ok(())
    }
}

fn duration_bounds(c: &Config) -> [DurationBound; 16] {
    let bound = |key, value, min, max| DurationBound {
        key,
        value,
        min,
        max,
    };
    let [election_min, election_max] = c.cluster.election_timeout;
    let ms = StdDuration::from_millis(1);
    [
        bound(
            "public.header_read_timeout",
            c.public.header_read_timeout,
            NONZERO,
            HOUR,
        ),
        bound("public.idle_timeout", c.public.idle_timeout, NONZERO, DAY),
        bound(
            "public.http2_keepalive_interval",
            c.public.http2_keepalive_interval,
            NONZERO,
            HOUR,
        ),
        bound(
            "public.http2_keepalive_timeout",
            c.public.http2_keepalive_timeout,
            NONZERO,
            HOUR,
        ),
        bound(
            "public.body_read_timeout",
            c.public.body_read_timeout,
            NONZERO,
            HOUR,
        ),
        bound(
            "public.shutdown_grace",
            c.public.shutdown_grace,
            StdDuration::ZERO,
            DAY,
        ),
        bound(
            "upstream.connect_timeout",
            c.upstream.connect_timeout,
            NONZERO,
            HOUR,
        ),
        bound("upstream.timeout", c.upstream.timeout, NONZERO, DAY),
        bound(
            "upstream.pool_idle_timeout",
            c.upstream.pool_idle_timeout,
            StdDuration::ZERO,
            DAY,
        ),
        bound(
            "upstream.health_interval",
            c.upstream.health_interval,
            NONZERO,
            HOUR,
        ),
        bound(
            "primary.app_down_handoff",
            c.primary.app_down_handoff,
            StdDuration::ZERO,
            HOUR,
        ),
        bound(
            "routing.primary_wait",
            c.routing.primary_wait,
            StdDuration::ZERO,
            HOUR,
        ),
        bound(
            "consistency.wait_timeout",
            c.consistency.wait_timeout,
            NONZERO,
            HOUR,
        ),
        // Raft counts in whole milliseconds: less would round to 0.
        bound("cluster.heartbeat", c.cluster.heartbeat, ms, MINUTE),
        bound("cluster.election_timeout", election_min, ms, 10 * MINUTE),
        bound("cluster.election_timeout", election_max, ms, 10 * MINUTE),
    ]
}

/// Each entry is a protocol name as the `Upgrade` header carries it, and
/// never `h2c`: after an h2c upgrade the client speaks HTTP/2 straight to
/// the app, past every header litegate sets or strips.
fn upgrade_protocols(protocols: &[String]) -> Result<(), String> {
    for protocol in protocols {
        if protocol.eq_ignore_ascii_case("h2c") {
            return Err("\"h2c\" cannot be allowed: after an h2c upgrade the client would talk HTTP/2 straight to the app, past litegate; remove it (HTTP/2 clients can speak HTTP/2 to litegate itself)".to_owned());
        }
        if !is_token(protocol) {
            return Err(format!(
                "{protocol:?} is not a protocol name: write names as the Upgrade header carries them, letters, digits and -._~!#$%&'*+^`|, e.g. [\"websocket\"]"
            ));
        }
    }
    Ok(())
}

pub(super) fn validate(c: &Config, origin: &Origin) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| -> Result<(), ConfigError> {
        Err(ConfigError::key(key, origin, msg))
    };

    if let Err(m) = upstream_url(&c.upstream.url) {
        return err("upstream.url", m);
    }
    if let Err(m) = crate::log_level::parse(&c.log.level) {
        return err("log.level", m);
    }
    for bound in duration_bounds(c) {
        bound
            .check()
            .map_err(|m| ConfigError::key(bound.key, origin, m))?;
    }
    if c.upstream.max_concurrency == 0 {
        return err(
            "upstream.max_concurrency",
            "must be at least 1 (it bounds requests in flight to the app)".into(),
        );
    }
    if c.upstream.max_concurrency > MAX_CONCURRENCY {
        return err(
            "upstream.max_concurrency",
            format!(
                "{} is more than litegate can count: use at most {MAX_CONCURRENCY} (default 1024)",
                c.upstream.max_concurrency
            ),
        );
    }
    for (key, value, default) in [
        ("public.max_connections", c.public.max_connections, 10_000),
        ("cluster.max_connections", c.cluster.max_connections, 1024),
        ("admin.max_connections", c.admin.max_connections, 64),
    ] {
        if value == 0 || value > MAX_CONNECTIONS {
            return err(
                key,
                format!("{value} is out of range: use 1 to {MAX_CONNECTIONS} (default {default})"),
            );
        }
    }
    if c.public.max_header_bytes < 1024 {
        return err(
            "public.max_header_bytes",
            format!(
                "{} is too small for real browsers: use at least 1024 (default 65536)",
                c.public.max_header_bytes
            ),
        );
    }
    if c.public.max_header_bytes > MAX_HEADER_BYTES {
        return err(
            "public.max_header_bytes",
            format!(
                "{} is larger than any real request head: use at most {MAX_HEADER_BYTES} (default 65536)",
                c.public.max_header_bytes
            ),
        );
    }
    if let Err(m) = upgrade_protocols(&c.routing.upgrade_protocols) {
        return err("routing.upgrade_protocols", m);
    }
    if c.public.tls_cert.is_empty() != c.public.tls_key.is_empty() {
        return err(
            "public.tls_cert",
            "set both public.tls_cert and public.tls_key to terminate TLS, or neither".into(),
        );
    }
    if c.node.name.is_empty() {
        return err("node.name", "must not be empty".into());
    }

    if !c.litefs.mount.is_empty() {
        let api: Result<http::Uri, _> = c.litefs.api.parse();
        if !matches!(api.as_ref().map(|u| u.scheme_str()), Ok(Some("http"))) {
            return err(
                "litefs.api",
                format!("{:?} is not LiteFS's API URL: write http://HOST:PORT, e.g. \"http://127.0.0.1:20202\"", c.litefs.api),
            );
        }
        if c.litefs.db.is_empty() || c.litefs.db.contains('/') {
            return err(
                "litefs.db",
                "the database's file name in the LiteFS mount, e.g. \"db.sqlite3\"".into(),
            );
        }
    }
    if !c.lease.listen.is_empty() {
        lease(c).map_err(|(key, m)| ConfigError::key(key, origin, m))?;
    } else if !c.lease.relay_listen.is_empty() {
        return Err(ConfigError::key("lease.relay_listen", origin, "the relay follows the lease litegate holds for LiteFS: set lease.listen too, or leave lease.relay_listen empty"));
    }
    if c.primary.mode == PrimaryMode::Dev {
        return Ok(());
    }
    if c.primary.mode == PrimaryMode::Litefs && c.litefs.mount.is_empty() {
        return err(
            "litefs.mount",
            "required when primary.mode = \"litefs\": the LiteFS FUSE mount directory, e.g. \"/litefs\"".into(),
        );
    }
    if c.is_fly_replay_only() {
        return Ok(());
    }

    let Some(id) = c.node.id else {
        return err(
            "node.id",
            format!(
                "required when primary.mode = \"{}\": give every node a unique number that is never reused, e.g. `id = 1`",
                c.primary.mode.as_str()
            ),
        );
    };

    let [lo, hi] = c.cluster.election_timeout;
    if lo >= hi {
        return err(
            "cluster.election_timeout",
            format!("the range [\"{lo}\", \"{hi}\"] is empty: write [min, max] with min < max, e.g. [\"150ms\", \"300ms\"]"),
        );
    }
    if c.cluster.heartbeat >= lo {
        return err(
            "cluster.heartbeat",
            format!("{} is not shorter than the election timeout's minimum {lo}: followers would campaign between heartbeats; make it a third of it or less", c.cluster.heartbeat),
        );
    }
    // The lease (docs/design.md §4): the leader writes for `min` after a
    // quorum acknowledgement, followers elect nobody for `max` after it;
    // `max - min` is all that covers clock-rate drift between nodes and a
    // write on its way to the app after the lease check.
    if c.primary.mode == PrimaryMode::Raft && hi.get() < lo.get() * 2 {
        return err(
            "cluster.election_timeout",
            format!("[\"{lo}\", \"{hi}\"] leaves the leader's lease a margin of only {} (max − min): the lease needs max ≥ 2 × min; raise max to at least {}", humantime::format_duration(hi.get() - lo.get()), humantime::format_duration(lo.get() * 2)),
        );
    }
    if !(1..=1_000_000).contains(&c.cluster.snapshot_entries) {
        return err(
            "cluster.snapshot_entries",
            format!(
                "{} is out of range: use 1 to 1000000 (default 64)",
                c.cluster.snapshot_entries
            ),
        );
    }

    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for (i, p) in c.cluster.peers.iter().enumerate() {
        let key = format!("cluster.peers[{i}]");
        if !ids.insert(p.id) {
            return err(
                &key,
                format!("peer id {} appears twice: ids must be unique", p.id),
            );
        }
        if p.name.is_empty() || !names.insert(p.name.as_str()) {
            return err(
                &key,
                format!(
                    "peer name {:?} is empty or appears twice: names must be unique",
                    p.name
                ),
            );
        }
        host_port(&p.cluster).map_err(|m| ConfigError::key(format!("{key}.cluster"), origin, m))?;
        if p.witness {
            if c.primary.mode != PrimaryMode::Raft {
                return err(
                    &format!("{key}.witness"),
                    "witnesses only vote in Raft elections: set primary.mode = \"raft\" or drop the witness".into(),
                );
            }
        } else {
            public_url(&p.public_url)
                .map_err(|m| ConfigError::key(format!("{key}.public_url"), origin, m))?;
        }
    }
    match c.cluster.peers.iter().find(|p| p.id == id) {
        None => {
            return err(
                "cluster.peers",
                format!("this node (node.id = {id}) is not in the list: every node lists all nodes, itself included"),
            )
        }
        Some(me) if me.name != c.node.name => {
            return err(
                "node.name",
                format!("{:?} differs from the name {:?} that cluster.peers gives node {id}: make them equal", c.node.name, me.name),
            )
        }
        Some(me) if me.witness != c.node.witness => {
            return err(
                "node.witness",
                format!("is {} but cluster.peers gives node {id} witness = {}: make them agree", c.node.witness, me.witness),
            )
        }
        Some(_) => {}
    }
    if c.primary.mode == PrimaryMode::Raft {
        let witnesses = c.cluster.peers.iter().filter(|p| p.witness).count();
        let app_nodes = c.cluster.peers.len() - witnesses;
        if c.cluster.peers.len() == 2 && witnesses == 0 {
            return err(
                "cluster.peers",
                "two Raft voters cannot fail over: losing either one loses the majority. Use primary.mode = \"static\" for two nodes (its promote needs both nodes up), or add a third voter — a witness (`witness = true`, no app) is enough".into(),
            );
        }
        if app_nodes == 0 {
            return err(
                "cluster.peers",
                "every node is a witness: at least one node must run the app".into(),
            );
        }
    }

    if c.primary.mode == PrimaryMode::Static
        && !c
            .cluster
            .peers
            .iter()
            .any(|p| p.name == c.primary.static_primary)
    {
        return err(
            "primary.static",
            format!("{:?} is not the name of any node in cluster.peers: name the node that starts as primary", c.primary.static_primary),
        );
    }

    let authenticated = !c.cluster.secret_file.is_empty() || !c.cluster.tls_cert.is_empty();
    if !authenticated && !c.cluster.insecure && !c.cluster.listen.0.ip().is_loopback() {
        return err(
            "cluster.listen",
            format!("{} is reachable from other hosts but cluster traffic is not authenticated: set cluster.secret_file (or tls_ca, tls_cert and tls_key), or set cluster.insecure = true if the network is private on purpose", c.cluster.listen.0),
        );
    }
    if let Some(warning) = plaintext_warning(c) {
        if !c.cluster.allow_plaintext && !c.cluster.insecure {
            return err(
                "cluster.allow_plaintext",
                format!("{warning}: set cluster.tls_ca, tls_cert and tls_key, or set cluster.allow_plaintext = true if the network between the nodes is private"),
            );
        }
    }
    let tls = [&c.cluster.tls_ca, &c.cluster.tls_cert, &c.cluster.tls_key];
    if tls.iter().any(|s| !s.is_empty()) && tls.iter().any(|s| s.is_empty()) {
        return err(
            "cluster.tls_cert",
            "mutual TLS needs all three of cluster.tls_ca, cluster.tls_cert and cluster.tls_key"
                .into(),
        );
    }
    Ok(())
}

/// `[lease]`: LiteFS's lease from litegate's Raft, on loopback only.
fn lease(c: &Config) -> Result<(), (&'static str, String)> {
    let addr: std::net::SocketAddr = c.lease.listen.parse().map_err(|_| {
        ("lease.listen", format!("{:?} is not IP:PORT: write e.g. \"127.0.0.1:8500\", or leave it empty for no lease listener", c.lease.listen))
    })?;
    if !addr.ip().is_loopback() {
        return Err(("lease.listen", format!("{addr} is not a loopback address: only the LiteFS on this node may hold its lease through it; use 127.0.0.1:PORT")));
    }
    if c.primary.mode != PrimaryMode::Raft {
        return Err(("lease.listen", "the lease is kept in litegate's Raft log: set primary.mode = \"raft\", or leave lease.listen empty".into()));
    }
    if c.node.witness {
        return Err((
            "lease.listen",
            "a witness runs no LiteFS: leave lease.listen empty on it".into(),
        ));
    }
    if c.lease.token.is_empty() {
        return Err(("lease.token", "required with lease.listen: the token LiteFS sends as X-Consul-Token (the password in its lease.consul.url, http://litefs:TOKEN@127.0.0.1:PORT)".into()));
    }
    let takeover = c.lease.takeover_timeout.get();
    if !(StdDuration::from_secs(1)..=HOUR).contains(&takeover) {
        return Err(("lease.takeover_timeout", "must be from 1s to 1h, and longer than LiteFS's lease TTL + lock-delay + 1s (a dead holder's session must expire first), e.g. \"30s\"".into()));
    }
    if c.lease.key.is_empty() || c.lease.key.starts_with('/') {
        return Err(("lease.key", "LiteFS's lease key without a leading /: the consul URL's path joined with lease.consul.key, e.g. \"litefs/primary\"".into()));
    }
    if !c.lease.relay_listen.is_empty() {
        relay(c, addr)?;
    }
    Ok(())
}

/// `lease.relay_listen`: the LiteFS on this node connects to it as its
/// primary's advertise URL, so it is loopback only, like the lease.
fn relay(c: &Config, lease_addr: std::net::SocketAddr) -> Result<(), (&'static str, String)> {
    let addr: std::net::SocketAddr = c.lease.relay_listen.parse().map_err(|_| {
        ("lease.relay_listen", format!("{:?} is not IP:PORT: write e.g. \"127.0.0.1:20203\" (LiteFS's lease.advertise-url on every node is then http://127.0.0.1:20203), or leave it empty for no relay", c.lease.relay_listen))
    })?;
    if !addr.ip().is_loopback() {
        return Err(("lease.relay_listen", format!("{addr} is not a loopback address: only the LiteFS on this node connects to it; use 127.0.0.1:PORT")));
    }
    if addr == lease_addr {
        return Err((
            "lease.relay_listen",
            format!("{addr} is lease.listen's address too: give the relay a port of its own"),
        ));
    }
    if c.lease.litefs_port == 0 {
        return Err((
            "lease.litefs_port",
            "must be the port every node's LiteFS HTTP API listens on (its http.addr), e.g. 20202"
                .into(),
        ));
    }
    Ok(())
}

/// The app: plain HTTP on a host and port, no path (the request's own path is
/// sent as it came).
pub fn upstream_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|_| {
        format!(
            "{url:?} is not a URL: write it as http://HOST:PORT, e.g. \"http://127.0.0.1:8000\""
        )
    })?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url:?} must start with http:// (litegate talks plain HTTP to the app next to it), e.g. \"http://127.0.0.1:8000\""
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host: write it as http://HOST:PORT"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{url:?} has a path or query: give only http://HOST:PORT; requests keep their own path"
        ));
    }
    Ok(uri)
}

fn public_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL: write e.g. \"https://app-1.example.com\""))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err(format!(
            "{url:?} must be an absolute http:// or https:// URL, e.g. \"http://10.0.0.1:8080\""
        )),
    }
}

fn host_port(addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "{addr:?} is not host:port: write e.g. \"10.0.0.1:7070\""
        )),
    }
}

/// Set when cluster traffic leaves this host without TLS: forwarded writes
/// (request and response bodies) cross the network readable by anyone on
/// the path. Refused at start unless `cluster.allow_plaintext` (or
/// `cluster.insecure`), and warned about at every start when allowed.
pub fn plaintext_warning(c: &Config) -> Option<String> {
    let tls = !c.cluster.tls_cert.is_empty();
    let off_loopback = !c.cluster.listen.0.ip().is_loopback();
    (c.primary.mode != PrimaryMode::Dev && !tls && off_loopback).then(|| {
        format!(
            "cluster traffic on {} is not encrypted (no cluster.tls_cert)",
            c.cluster.listen.0
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Config {
        let mut c = Config::default();
        c.primary.mode = PrimaryMode::Dev;
        c
    }

    fn refusal(c: &Config) -> String {
        validate(c, &Origin::Flags)
            .expect_err("the config was accepted")
            .to_string()
    }

    fn duration(s: &str) -> Duration {
        s.parse().unwrap()
    }

    #[test]
    fn fly_replay_on_litefs_needs_no_id_peers_or_secret() {
        let mut c = Config::default();
        c.primary.mode = PrimaryMode::Litefs;
        c.routing.on_replica = crate::config::OnReplica::FlyReplay;
        c.litefs.mount = "/litefs".into();
        validate(&c, &Origin::Flags).unwrap();
        assert!(c.is_fly_replay_only());
        // The mount is still required.
        c.litefs.mount.clear();
        assert!(refusal(&c).contains("`litefs.mount`"));
        // Forward mode still needs the cluster: writes go node to node.
        c.litefs.mount = "/litefs".into();
        c.routing.on_replica = crate::config::OnReplica::Forward;
        assert!(refusal(&c).contains("`node.id`"));
        // Raft mode with fly-replay still elects among its peers.
        c.routing.on_replica = crate::config::OnReplica::FlyReplay;
        c.primary.mode = PrimaryMode::Raft;
        assert!(refusal(&c).contains("`node.id`"));
    }

    #[test]
    fn defaults_are_valid() {
        validate(&dev(), &Origin::Flags).unwrap();
    }

    #[test]
    fn every_duration_is_bounded() {
        type Set = fn(&mut Config, Duration);
        let keys: &[(&str, Set)] = &[
            ("public.header_read_timeout", |c, d| {
                c.public.header_read_timeout = d
            }),
            ("public.body_read_timeout", |c, d| {
                c.public.body_read_timeout = d
            }),
            ("public.shutdown_grace", |c, d| c.public.shutdown_grace = d),
            ("upstream.connect_timeout", |c, d| {
                c.upstream.connect_timeout = d
            }),
            ("upstream.timeout", |c, d| c.upstream.timeout = d),
            ("upstream.pool_idle_timeout", |c, d| {
                c.upstream.pool_idle_timeout = d
            }),
            ("upstream.health_interval", |c, d| {
                c.upstream.health_interval = d
            }),
            ("routing.primary_wait", |c, d| c.routing.primary_wait = d),
            ("primary.app_down_handoff", |c, d| {
                c.primary.app_down_handoff = d
            }),
            ("consistency.wait_timeout", |c, d| {
                c.consistency.wait_timeout = d
            }),
            ("cluster.heartbeat", |c, d| c.cluster.heartbeat = d),
            ("cluster.election_timeout", |c, d| {
                c.cluster.election_timeout[1] = d
            }),
        ];
        // Far past `Instant + Duration`'s range, and just past the bound.
        for huge in ["1000000000years", "25h"] {
            for (key, set) in keys {
                let mut c = dev();
                set(&mut c, duration(huge));
                let err = refusal(&c);
                assert!(err.contains(&format!("`{key}`")), "{err}");
                assert!(err.contains("at most"), "{err}");
            }
        }
    }

    #[test]
    fn zero_is_refused_where_it_cannot_work() {
        for key in [
            "upstream.timeout",
            "upstream.health_interval",
            "cluster.heartbeat",
        ] {
            let mut c = dev();
            match key {
                "upstream.timeout" => c.upstream.timeout = duration("0s"),
                "upstream.health_interval" => c.upstream.health_interval = duration("0s"),
                _ => c.cluster.heartbeat = duration("0s"),
            }
            assert!(refusal(&c).contains(&format!("`{key}`")), "{key}");
        }
        // A primary_wait of 0 is a choice: fail writes at once.
        let mut c = dev();
        c.routing.primary_wait = duration("0s");
        validate(&c, &Origin::Flags).unwrap();
    }

    #[test]
    fn bounds_are_accepted_at_the_limit() {
        let mut c = dev();
        c.routing.primary_wait = duration("1h");
        c.upstream.timeout = duration("1day");
        c.upstream.max_concurrency = MAX_CONCURRENCY;
        c.public.max_header_bytes = MAX_HEADER_BYTES;
        validate(&c, &Origin::Flags).unwrap();
    }

    #[test]
    fn max_concurrency_fits_the_semaphore() {
        // The largest accepted value makes a semaphore without panicking.
        let semaphore = tokio::sync::Semaphore::new(MAX_CONCURRENCY);
        assert_eq!(semaphore.available_permits(), MAX_CONCURRENCY);
        let mut c = dev();
        c.upstream.max_concurrency = tokio::sync::Semaphore::MAX_PERMITS + 1;
        let err = refusal(&c);
        assert!(
            err.contains("`upstream.max_concurrency`") && err.contains("at most"),
            "{err}"
        );
        c.upstream.max_concurrency = usize::MAX;
        refusal(&c);
    }

    #[test]
    fn max_header_bytes_is_bounded() {
        let mut c = dev();
        c.public.max_header_bytes = usize::MAX;
        let err = refusal(&c);
        assert!(err.contains("`public.max_header_bytes`"), "{err}");
    }

    #[test]
    fn connection_caps_are_bounded() {
        for zero_or_huge in [0, MAX_CONNECTIONS + 1] {
            let mut c = dev();
            c.public.max_connections = zero_or_huge;
            assert!(refusal(&c).contains("`public.max_connections`"));
            let mut c = dev();
            c.cluster.max_connections = zero_or_huge;
            assert!(refusal(&c).contains("`cluster.max_connections`"));
            let mut c = dev();
            c.admin.max_connections = zero_or_huge;
            assert!(refusal(&c).contains("`admin.max_connections`"));
        }
    }

    fn raft() -> Config {
        let mut c = Config::default();
        c.node.id = Some(1);
        c.node.name = "a".into();
        c.cluster.listen = "127.0.0.1:7070".parse().unwrap();
        c.cluster.peers = (1..=3)
            .map(|i| crate::config::Peer {
                id: i,
                name: if i == 1 { "a".into() } else { format!("n{i}") },
                cluster: format!("127.0.0.1:707{i}"),
                public_url: format!("http://127.0.0.1:808{i}"),
                witness: false,
            })
            .collect();
        c
    }

    #[test]
    fn a_lease_margin_under_the_election_minimum_is_refused() {
        validate(&raft(), &Origin::Flags).unwrap();
        let mut c = raft();
        c.cluster.election_timeout = [duration("150ms"), duration("151ms")];
        let err = refusal(&c);
        assert!(err.contains("`cluster.election_timeout`"), "{err}");
        assert!(
            err.contains("max ≥ 2 × min") && err.contains("300ms"),
            "{err}"
        );
        c.cluster.election_timeout = [duration("150ms"), duration("300ms")];
        validate(&c, &Origin::Flags).unwrap();
    }

    #[test]
    fn plaintext_cluster_traffic_off_loopback_needs_allow_plaintext() {
        let mut c = raft();
        c.cluster.listen = "0.0.0.0:7070".parse().unwrap();
        c.cluster.secret_file = "/etc/litegate/secret".into();
        let err = refusal(&c);
        assert!(err.contains("`cluster.allow_plaintext`"), "{err}");
        assert!(err.contains("not encrypted"), "{err}");
        c.cluster.allow_plaintext = true;
        validate(&c, &Origin::Flags).unwrap();
        assert!(plaintext_warning(&c).is_some());
    }

    #[test]
    fn upgrade_protocols_are_tokens_and_never_h2c() {
        for bad in ["h2c", "H2C", "web socket", "websocket/13", ""] {
            let mut c = dev();
            c.routing.upgrade_protocols = vec!["websocket".into(), bad.into()];
            let err = refusal(&c);
            assert!(
                err.contains("`routing.upgrade_protocols`"),
                "{bad:?}: {err}"
            );
        }
        let err = {
            let mut c = dev();
            c.routing.upgrade_protocols = vec!["h2c".into()];
            refusal(&c)
        };
        assert!(err.contains("remove it"), "{err}");
        let mut c = dev();
        c.routing.upgrade_protocols = Vec::new();
        validate(&c, &Origin::Flags).unwrap();
        c.routing.upgrade_protocols = vec!["websocket".into(), "x-custom".into()];
        validate(&c, &Origin::Flags).unwrap();
    }

    #[test]
    fn the_lease_needs_raft_loopback_and_a_token() {
        let mut c = Config::default();
        c.node.id = Some(1);
        c.node.name = "a".into();
        c.cluster.insecure = true;
        c.cluster.listen = crate::config::ListenAddr(([127, 0, 0, 1], 7070).into());
        c.cluster.peers = vec![crate::config::Peer {
            id: 1,
            name: "a".into(),
            cluster: "127.0.0.1:7070".into(),
            public_url: "http://127.0.0.1:8080".into(),
            witness: false,
        }];
        validate(&c, &Origin::Flags).unwrap();
        c.lease.listen = "127.0.0.1:8500".into();
        assert!(refusal(&c).contains("lease.token"), "{}", refusal(&c));
        c.lease.token = "t".into();
        validate(&c, &Origin::Flags).unwrap();
        c.lease.listen = "0.0.0.0:8500".into();
        assert!(
            refusal(&c).contains("not a loopback address"),
            "{}",
            refusal(&c)
        );
        c.lease.listen = "localhost".into();
        assert!(refusal(&c).contains("lease.listen"), "{}", refusal(&c));
        c.lease.listen = "127.0.0.1:8500".into();
        c.lease.takeover_timeout = duration("0s");
        assert!(
            refusal(&c).contains("lease.takeover_timeout"),
            "{}",
            refusal(&c)
        );
        c.lease.takeover_timeout = duration("30s");
        c.lease.key = "/litefs/primary".into();
        assert!(refusal(&c).contains("lease.key"), "{}", refusal(&c));
        c.lease.key = "litefs/primary".into();
        c.lease.relay_listen = "0.0.0.0:20203".into();
        assert!(
            refusal(&c).contains("lease.relay_listen"),
            "{}",
            refusal(&c)
        );
        c.lease.relay_listen = "127.0.0.1:8500".into();
        assert!(refusal(&c).contains("a port of its own"), "{}", refusal(&c));
        c.lease.relay_listen = "127.0.0.1:20203".into();
        c.lease.litefs_port = 0;
        assert!(refusal(&c).contains("lease.litefs_port"), "{}", refusal(&c));
        c.lease.litefs_port = 20202;
        validate(&c, &Origin::Flags).unwrap();
        c.lease.listen = String::new();
        assert!(
            refusal(&c).contains("set lease.listen too"),
            "{}",
            refusal(&c)
        );
        c.lease.listen = "127.0.0.1:8500".into();
        c.primary.mode = PrimaryMode::Static;
        c.primary.static_primary = "a".into();
        assert!(
            refusal(&c).contains("primary.mode = \"raft\""),
            "{}",
            refusal(&c)
        );
    }
}
