//! Configuration: the TOML schema of docs/design.md §9, environment overrides and
//! validation. Every error names the key it is about and how to fix it.

mod load;
mod types;
mod validate;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, Origin};
pub use types::{Cidr, Duration, ListenAddr, PathGlob};

use types::string_or_list;

pub use validate::plaintext_warning;
pub use validate::upstream_url as validate_upstream_url;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub public: PublicConfig,
    pub upstream: UpstreamConfig,
    pub routing: RoutingConfig,
    pub primary: PrimaryConfig,
    pub cluster: ClusterConfig,
    pub litefs: LitefsConfig,
    pub lease: LeaseConfig,
    pub consistency: ConsistencyConfig,
    pub admin: AdminConfig,
    pub hooks: HooksConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub name: String,
    pub witness: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: None,
            name: default_node_name(),
            witness: false,
        }
    }
}

/// `$FLY_MACHINE_ID`, else the kernel's hostname, as docs/design.md §9 says.
fn default_node_name() -> String {
    if let Ok(id) = std::env::var("FLY_MACHINE_ID") {
        if !id.is_empty() {
            return id;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "litegate".to_owned())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicConfig {
    pub listen: ListenAddr,
    #[serde(deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<Cidr>,
    pub tls_cert: String,
    pub tls_key: String,
    /// A client must send its whole request head within this (slowloris).
    pub header_read_timeout: Duration,
    /// Requests whose head is larger are answered 431.
    pub max_header_bytes: usize,
    /// The longest litegate waits for the next piece of a client's request
    /// body (a slowloris body), not a bound on the whole upload.
    pub body_read_timeout: Duration,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// HTTP/2: how often an otherwise quiet connection is PINGed.
    pub http2_keepalive_interval: Duration,
    /// HTTP/2: a PING unanswered this long closes the connection.
    pub http2_keepalive_timeout: Duration,
    /// Open connections at once; more are closed as soon as accepted.
    pub max_connections: usize,
}

impl Default for PublicConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr(([0, 0, 0, 0], 8080).into()),
            trusted_proxies: Vec::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            body_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(20),
            http2_keepalive_timeout: Duration::from_secs(20),
            max_connections: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub url: String,
    pub connect_timeout: Duration,
    /// From sending the request to the app's response head.
    pub timeout: Duration,
    /// Requests in flight to the app at once; more wait their turn.
    pub max_concurrency: usize,
    pub pool_idle_timeout: Duration,
    /// How often the app's port is probed for `/readyz` and `upstream_up`.
    pub health_interval: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8000".to_owned(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            max_concurrency: 1024,
            pool_idle_timeout: Duration::from_secs(4),
            health_interval: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnReplica {
    #[default]
    Forward,
    FlyReplay,
    Redirect,
}

/// Which methods are reads when no path rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodRule {
    /// `GET`, `HEAD` and `OPTIONS` are reads: the methods Django treats as
    /// safe.
    #[default]
    Django,
    /// Only `GET` and `HEAD` are reads, as LiteFS's proxy has it: `OPTIONS`
    /// is a write.
    Litefs,
}

/// Which list wins when a path matches both `primary_paths` and
/// `local_paths`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathPrecedence {
    /// `primary_paths` wins: a read sent to the primary costs a hop, a
    /// write served by a replica fails.
    #[default]
    PrimaryFirst,
    /// `local_paths` wins, as LiteFS's proxy checks `passthrough` before
    /// `always-forward`.
    LocalFirst,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub on_replica: OnReplica,
    pub method_rule: MethodRule,
    pub path_precedence: PathPrecedence,
    #[serde(deserialize_with = "string_or_list")]
    pub primary_paths: Vec<PathGlob>,
    #[serde(deserialize_with = "string_or_list")]
    pub local_paths: Vec<PathGlob>,
    pub primary_wait: Duration,
    /// The `Upgrade` protocols an HTTP/1.1 `GET` may switch to (matched
    /// case-insensitively); any other upgrade is passed as a plain request.
    #[serde(deserialize_with = "string_or_list")]
    pub upgrade_protocols: Vec<String>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            on_replica: OnReplica::Forward,
            method_rule: MethodRule::Django,
            path_precedence: PathPrecedence::PrimaryFirst,
            primary_paths: Vec::new(),
            local_paths: Vec::new(),
            primary_wait: Duration::from_secs(5),
            upgrade_protocols: vec!["websocket".to_owned()],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrimaryMode {
    Dev,
    Static,
    #[default]
    Raft,
    Litefs,
}

impl PrimaryMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PrimaryMode::Dev => "dev",
            PrimaryMode::Static => "static",
            PrimaryMode::Raft => "raft",
            PrimaryMode::Litefs => "litefs",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrimaryConfig {
    pub mode: PrimaryMode,
    #[serde(rename = "static")]
    pub static_primary: String,
    /// Raft mode: how long the leader's own app may be unreachable before
    /// leadership moves to a node whose app is healthy; 0 turns it off.
    pub app_down_handoff: Duration,
}

impl Default for PrimaryConfig {
    fn default() -> Self {
        Self {
            mode: PrimaryMode::Raft,
            static_primary: String::new(),
            app_down_handoff: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub id: u64,
    pub name: String,
    pub cluster: String,
    /// Empty for a witness, which has no app to send clients to.
    #[serde(default)]
    pub public_url: String,
    /// A voter with no app (docs/design.md §4): never routed to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub witness: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    pub listen: ListenAddr,
    pub data_dir: PathBuf,
    pub secret_file: String,
    pub tls_ca: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub insecure: bool,
    pub heartbeat: Duration,
    pub election_timeout: [Duration; 2],
    pub peers: Vec<Peer>,
    /// Open connections at once on the cluster listener.
    pub max_connections: usize,
    /// Mixed into the id of a new cluster with the initial peer list
    /// (cluster::raft::bootstrap): use a fresh value for each new cluster.
    pub initial_token: String,
    /// Raft snapshots every this many applied log entries; the log before
    /// a snapshot is purged.
    pub snapshot_entries: u64,
    /// Cluster traffic without TLS on a non-loopback address: refused at
    /// start unless this is set.
    pub allow_plaintext: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr(([0, 0, 0, 0], 7070).into()),
            data_dir: PathBuf::from("/var/lib/litegate"),
            secret_file: String::new(),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            insecure: false,
            heartbeat: Duration::from_millis(50),
            election_timeout: [Duration::from_millis(150), Duration::from_millis(300)],
            peers: Vec::new(),
            max_connections: 1024,
            initial_token: String::new(),
            snapshot_entries: 64,
            allow_plaintext: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LitefsConfig {
    pub mount: String,
    pub api: String,
    pub db: String,
}

impl Default for LitefsConfig {
    fn default() -> Self {
        Self {
            mount: String::new(),
            api: "http://127.0.0.1:20202".to_owned(),
            db: "db.sqlite3".to_owned(),
        }
    }
}

/// LiteFS's lease served from litegate's Raft (raft mode): the Consul
/// calls LiteFS makes, on a loopback listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// Empty: no lease listener. Loopback `IP:PORT` otherwise.
    pub listen: String,
    /// What LiteFS must send as `X-Consul-Token` (the password of its
    /// `lease.consul.url`). Required with `listen`. Never printed by
    /// `litegate check`.
    #[serde(serialize_with = "redacted")]
    pub token: String,
    /// LiteFS's lease key: `path.Join(<URL path>, lease.consul.key)`.
    pub key: String,
    /// A Raft leader whose LiteFS has not taken the lease this long after
    /// the election hands leadership to another node.
    pub takeover_timeout: Duration,
    /// Empty: no relay. Loopback `IP:PORT` otherwise: LiteFS's
    /// `lease.advertise-url` on every node, relayed to the lease holder's
    /// LiteFS (`lease::relay`).
    pub relay_listen: String,
    /// The port every node's LiteFS HTTP API listens on from the network;
    /// the relay connects to it on the holder's cluster host.
    pub litefs_port: u16,
}

/// A secret in the effective config `litegate check` prints: whether it is
/// set, not what it is.
fn redacted<S: serde::Serializer>(secret: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_empty() { "" } else { "<redacted>" })
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            token: String::new(),
            key: "litefs/primary".to_owned(),
            takeover_timeout: Duration::from_secs(30),
            relay_listen: String::new(),
            litefs_port: 20202,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnTimeout {
    #[default]
    Primary,
    Error,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyConfig {
    pub wait_timeout: Duration,
    pub on_timeout: OnTimeout,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            wait_timeout: Duration::from_secs(5),
            on_timeout: OnTimeout::Primary,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: ListenAddr,
    pub token_file: String,
    /// Open connections at once on the admin listener.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: ListenAddr(([127, 0, 0, 1], 9191).into()),
            token_file: String::new(),
            max_connections: 64,
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// The log filter (`crate::log_level`); `LITEGATE_LOG` wins over it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    pub role_file: String,
    pub on_promote: String,
    pub on_demote: String,
}

impl Config {
    /// The configuration `litegate dev` runs with: one node, no file.
    pub fn dev(upstream: &str, listen: ListenAddr, admin: ListenAddr) -> Result<Self, ConfigError> {
        let mut config = Config::default();
        config.primary.mode = PrimaryMode::Dev;
        config.upstream.url = upstream.to_owned();
        config.public.listen = listen;
        config.admin.listen = admin;
        validate::validate(&config, &Origin::Flags)?;
        Ok(config)
    }

    /// Reads `path`, applies `LITEGATE_<SECTION>_<KEY>` overrides from `env`
    /// and validates the result.
    pub fn load(
        path: &std::path::Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        load::load(path, env)
    }

    /// LiteFS mode answering writes on replicas with `fly-replay` and no
    /// peer list: Fly's edge replays writes to the primary LiteFS names,
    /// so no node talks to another and none needs an id, peers, a secret
    /// or the cluster listener.
    pub fn is_fly_replay_only(&self) -> bool {
        self.primary.mode == PrimaryMode::Litefs
            && self.routing.on_replica == OnReplica::FlyReplay
            && self.cluster.peers.is_empty()
    }

    /// The effective configuration as TOML, for `litegate check`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the config types always serialize to TOML")
    }
}
