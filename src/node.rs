//! One litegate node: builds the parts a configuration asks for, binds the
//! listeners, and runs until SIGTERM/SIGINT.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, AdminState, ClusterAdmin};
use crate::cluster::auth::SharedSecret;
use crate::cluster::client::PeerClient;
use crate::cluster::peers::PeerTable;
use crate::cluster::raft;
use crate::cluster::role_hooks;
use crate::cluster::server::ClusterService;
use crate::config::{validate_upstream_url, Config, PrimaryMode};
use crate::consistency::Position;
use crate::lease::listener::LeaseHandler;
use crate::lease::relay::Relay;
use crate::lease::LeaseService;
use crate::listen::fd_limit::FdLimits;
use crate::litefs::{self, Watcher};
use crate::metrics;
use crate::primary::app_aware::AppWatch;
use crate::primary::{
    DevPrimary, HandoffStep, LitefsLease, PrimarySource, RaftLeadership, RaftLease, Role,
    StaticPrimary,
};
use crate::proxy::client::UpstreamClient;
use crate::proxy::health::UpstreamHealth;
use crate::proxy::server::{Listener, Timeouts};
use crate::proxy::{Cluster, Proxy};
use crate::reload::Reloader;
use crate::shutdown::{self, Hangups, Signals};
use crate::systemd;
use crate::tls::{self, MutualTls};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot listen on {addr} (config key `{key}`): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Setup(String),
}

impl From<String> for NodeError {
    fn from(message: String) -> Self {
        NodeError::Setup(message)
    }
}

/// How `litegate run` was asked to start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Create a new Raft cluster from `cluster.peers` if this node has
    /// never joined one (`--bootstrap`).
    pub bootstrap: bool,
    /// The file the config came from, read again on SIGHUP (`None` for
    /// `litegate dev`, which has none).
    pub config_path: Option<PathBuf>,
}

/// What every clustered mode shares: the peer client and the cluster
/// listener's authentication.
struct ClusterParts {
    client: PeerClient,
    secret: Option<SharedSecret>,
    acceptor: Option<TlsAcceptor>,
}

impl ClusterParts {
    fn new(config: &Config) -> Result<Self, NodeError> {
        let c = &config.cluster;
        let secret = (!c.secret_file.is_empty())
            .then(|| SharedSecret::load(&c.secret_file))
            .transpose()?;
        let mtls = (!c.tls_cert.is_empty()).then(|| MutualTls {
            ca: c.tls_ca.clone(),
            cert: c.tls_cert.clone(),
            key: c.tls_key.clone(),
        });
        // The primary's app gets the same deadline as ours, so the primary
        // answers 504 first; the margin covers the hop.
        let forward_timeout = config.upstream.timeout.get() + Duration::from_secs(5);
        let client = PeerClient::new(
            mtls.as_ref(),
            secret.clone(),
            config.upstream.connect_timeout.get(),
            forward_timeout,
        )?;
        let acceptor = mtls
            .as_ref()
            .map(|m| m.server().map(TlsAcceptor::from))
            .transpose()?;
        Ok(Self {
            client,
            secret,
            acceptor,
        })
    }
}

pub async fn run(config: Config, options: RunOptions) -> Result<(), NodeError> {
    let config = Arc::new(config);
    let other_nodes: Vec<String> = config
        .cluster
        .peers
        .iter()
        .filter(|p| p.name != config.node.name)
        .map(|p| p.name.clone())
        .collect();
    let prometheus = metrics::install(&other_nodes, config.node.witness)?;
    let (trigger, stop) = shutdown::channel();
    let mut signals =
        Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    // Installed first thing, so a SIGHUP from here on never ends the process.
    let mut hangups =
        Hangups::install().map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;

    let caps = ConnectionCaps::new(&config);
    let me = config.node.name.as_str();
    let names: HashSet<String> = config
        .cluster
        .peers
        .iter()
        .map(|p| p.name.clone())
        .collect();
    if let Some(warning) = crate::config::plaintext_warning(&config) {
        // Validation refused this unless cluster.allow_plaintext (or
        // insecure) is set: said at every start, not only once.
        tracing::warn!("{warning}; allowed by cluster.allow_plaintext: anyone on the network path can read forwarded writes and their answers");
    }
    let cluster_parts = (config.primary.mode != PrimaryMode::Dev && !config.is_fly_replay_only())
        .then(|| ClusterParts::new(&config))
        .transpose()?;
    // The one peer table: routing, forwarding, polling and leadership read
    // it; in raft mode it follows the membership in the Raft log.
    let peers = cluster_parts
        .as_ref()
        .map(|_| Arc::new(PeerTable::new(me, &config.cluster.peers)));
    let mut raft_node = None;
    let source = Arc::new(match config.primary.mode {
        PrimaryMode::Dev => PrimarySource::Dev(DevPrimary::new(me)),
        PrimaryMode::Static => PrimarySource::Static(Arc::new(StaticPrimary::open(
            &config.cluster.data_dir,
            me,
            names,
            &config.primary.static_primary,
        )?)),
        PrimaryMode::Litefs => PrimarySource::Litefs(Arc::new(LitefsLease::new(
            me,
            (!config.is_fly_replay_only()).then_some(names),
        ))),
        PrimaryMode::Raft => {
            let client = cluster_parts
                .as_ref()
                .map(|p| p.client.clone())
                .ok_or_else(|| "raft mode needs the cluster listener".to_owned())?;
            let node = Arc::new(raft::start(&config, client, options.bootstrap).await?);
            let table = peers
                .clone()
                .ok_or_else(|| "raft mode needs the cluster listener".to_owned())?;
            table.learn_incarnations(Arc::clone(&node.incarnations));
            let leadership = RaftLeadership::new(
                node.raft.clone(),
                &config,
                node.quiet,
                Arc::clone(&node.standing),
                table,
            );
            leadership.spawn(stop.clone());
            let source = if config.lease.listen.is_empty() {
                PrimarySource::Raft(leadership)
            } else {
                let routing = RaftLease::new(leadership, Arc::clone(&node.lease), &config);
                routing.spawn(stop.clone());
                PrimarySource::RaftLease(routing)
            };
            raft_node = Some(node);
            source
        }
    });
    let initial = source.watch().current();
    metrics::set_is_primary(initial.role == Role::Primary);
    metrics::observe_primary(initial.primary.as_deref());
    if config.primary.mode != PrimaryMode::Dev {
        role_hooks::spawn(&config.hooks, source.watch(), stop.clone());
    }

    // Read-your-writes wherever LiteFS runs, and the LiteFS lease in litefs
    // mode: one watcher follows LiteFS for both.
    let position = Position::from_config(&config);
    if let Some(position) = &position {
        position
            .spawn_poller()
            .map_err(|e| format!("cannot start the LiteFS position poller: {e}"))?;
    }
    if !config.litefs.mount.is_empty() {
        let api = config.litefs.api.parse().map_err(|_| {
            format!(
                "config key `litefs.api`: {:?} is not a URL",
                config.litefs.api
            )
        })?;
        let lease = match &*source {
            PrimarySource::Litefs(lease) => Some(Arc::clone(lease) as Arc<dyn Watcher>),
            PrimarySource::RaftLease(routing) => Some(Arc::clone(routing) as Arc<dyn Watcher>),
            _ => None,
        };
        litefs::spawn_watcher(
            api,
            config.litefs.mount.clone().into(),
            config.litefs.db.clone(),
            lease,
            position.clone(),
            stop.clone(),
        );
    }

    let target = validate_upstream_url(&config.upstream.url)?;
    let upstream = UpstreamClient::new(&config.upstream, &target, caps.app_affinity);
    let health = Arc::new(UpstreamHealth::default());
    if !config.node.witness {
        health.spawn_prober(
            upstream.authority().to_string(),
            config.upstream.health_interval.get(),
            config.upstream.connect_timeout.get(),
            stop.clone(),
        );
    }

    if let (Some(parts), Some(peers)) = (&cluster_parts, &peers) {
        peers.spawn_poller(parts.client.clone(), Arc::clone(&source), stop.clone());
    }
    if let (Some(leadership), Some(peers), false) = (source.raft(), &peers, config.node.witness) {
        leadership.watch_apps(AppWatch::new(
            Arc::clone(&health),
            Arc::clone(peers),
            config.primary.app_down_handoff.get(),
            upstream.authority().to_string(),
            config.upstream.connect_timeout.get(),
            stop.clone(),
        ));
    }

    let proxy = Arc::new(Proxy::new(
        &config,
        upstream,
        Arc::clone(&health),
        Arc::clone(&source),
        cluster_parts
            .as_ref()
            .zip(peers.as_ref())
            .map(|(parts, peers)| Cluster {
                peers: Arc::clone(peers),
                client: parts.client.clone(),
            }),
        position.clone(),
    )?);

    let public_cert = (!config.public.tls_cert.is_empty())
        .then(|| tls::PublicCert::load(&config.public.tls_cert, &config.public.tls_key))
        .transpose()?
        .map(Arc::new);
    let public_tls = public_cert
        .clone()
        .map(|cert| tls::public_server(cert).map(TlsAcceptor::from))
        .transpose()?;
    // One set for all three listeners, swapped by a reload.
    let timeouts = Timeouts::live(&config);
    let reloader = options.config_path.clone().map(|path| {
        Reloader::new(
            path,
            Config::clone(&config),
            Arc::clone(&proxy),
            public_cert.clone(),
            Arc::clone(&timeouts),
        )
    });
    tokio::spawn(async move {
        while hangups.next().await.is_some() {
            match &reloader {
                Some(reloader) => {
                    systemd::reloading();
                    reloader.reload_and_log();
                    systemd::ready();
                }
                None => tracing::info!("SIGHUP: litegate dev has no config file to reload"),
            }
        }
    });
    // A witness has no app and so no clients.
    let public = if config.node.witness {
        None
    } else {
        Some(bind("public.listen", config.public.listen.0).await?)
    };
    let admin_listener = bind("admin.listen", config.admin.listen.0).await?;
    let lease = lease_listener(
        &config,
        raft_node.as_ref(),
        cluster_parts.as_ref(),
        peers.as_ref(),
        &caps,
        &stop,
    )
    .await?;
    if let (Some(service), PrimarySource::RaftLease(routing)) = (&lease, &*source) {
        routing
            .leadership()
            .add_handoff_step(Arc::clone(service) as Arc<dyn HandoffStep>);
    }
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        node = %me,
        mode = config.primary.mode.as_str(),
        witness = config.node.witness,
        public = %public.as_ref().map(local).unwrap_or_else(|| "-".into()),
        tls = public_tls.is_some(),
        admin = %local(&admin_listener),
        upstream = %config.upstream.url,
        "litegate listening"
    );

    let mut cluster_admin = None;
    if let (Some(parts), Some(peers)) = (cluster_parts, peers) {
        let listener = bind("cluster.listen", config.cluster.listen.0).await?;
        tracing::info!(cluster = %local(&listener), mtls = parts.acceptor.is_some(), secret = parts.secret.is_some(), "cluster listener up");
        let service = Arc::new(ClusterService {
            proxy: Arc::clone(&proxy),
            source: Arc::clone(&source),
            secret: parts.secret,
            raft: raft_node.clone(),
            app_health: (!config.node.witness).then(|| Arc::clone(&health)),
            lease: lease.clone(),
        });
        let cluster_listener = Listener {
            name: "cluster",
            tls: parts.acceptor,
            timeouts: Arc::clone(&timeouts),
            max_header_bytes: config.public.max_header_bytes,
            max_connections: caps.cluster,
            http1_only: false,
            shutdown_grace: config.public.shutdown_grace.get(),
            count_traffic: false,
        };
        tokio::spawn(cluster_listener.serve(listener, service, stop.clone()));
        cluster_admin = Some(ClusterAdmin {
            peers,
            client: parts.client,
        });
    }

    let admin_state = Arc::new(AdminState {
        config: Arc::clone(&config),
        source: Arc::clone(&source),
        health,
        metrics: prometheus,
        position: position.clone(),
        started: Instant::now(),
        cluster: cluster_admin,
        token: admin::load_token(&config.admin)?,
        lease,
    });
    let admin_side = Listener {
        name: "admin",
        tls: None,
        timeouts: Arc::clone(&timeouts),
        max_header_bytes: config.public.max_header_bytes,
        max_connections: caps.admin,
        http1_only: true,
        shutdown_grace: config.public.shutdown_grace.get(),
        count_traffic: false,
    };
    tokio::spawn(admin::serve(
        admin_side,
        admin_listener,
        admin_state,
        stop.clone(),
    ));

    // SIGTERM on the Raft leader hands leadership off first, so the
    // cluster does not wait out an election timeout; a second signal
    // stops at once.
    let leaving_source = Arc::clone(&source);
    tokio::spawn(async move {
        let name = signals.next().await;
        systemd::stopping();
        if let Some(leadership) = leaving_source.raft() {
            if leadership.raft().is_leader() {
                tracing::info!(signal = name, "handing leadership off before exiting");
                tokio::select! {
                    outcome = leadership.handoff(None) => match outcome {
                        Ok(to) => tracing::info!(%to, "leadership handed off"),
                        Err(error) => tracing::warn!(%error, "could not hand leadership off; exiting anyway"),
                    },
                    again = signals.next() => tracing::info!(signal = again, "second signal: not waiting for the handoff"),
                }
            }
        }
        tracing::info!(
            signal = name,
            "shutting down: no new connections; in-flight requests may finish"
        );
        trigger.fire();
    });

    // Every listener is bound (the public one is served just below).
    systemd::ready();
    match public {
        Some(public) => {
            let public_listener = Listener {
                name: "public",
                tls: public_tls,
                timeouts: Arc::clone(&timeouts),
                max_header_bytes: config.public.max_header_bytes,
                max_connections: caps.public,
                http1_only: false,
                shutdown_grace: config.public.shutdown_grace.get(),
                count_traffic: true,
            };
            public_listener.serve(public, proxy, stop).await;
        }
        None => stop.clone().begun().await,
    }
    if let Some(node) = raft_node {
        if let Err(error) = node.raft.shutdown().await {
            tracing::warn!(%error, "Raft did not stop cleanly");
        }
    }
    Ok(())
}

/// `[lease]`: serves LiteFS's Consul calls from this node's Raft on a
/// loopback listener, and expires sessions while this node leads.
async fn lease_listener(
    config: &Config,
    raft_node: Option<&Arc<raft::RaftNode>>,
    cluster_parts: Option<&ClusterParts>,
    peers: Option<&Arc<PeerTable>>,
    caps: &ConnectionCaps,
    stop: &shutdown::Shutdown,
) -> Result<Option<Arc<LeaseService>>, NodeError> {
    if config.lease.listen.is_empty() {
        return Ok(None);
    }
    let (Some(node), Some(parts), Some(peers)) = (raft_node, cluster_parts, peers) else {
        return Err(NodeError::Setup(
            "config key `lease.listen`: the lease needs primary.mode = \"raft\"".into(),
        ));
    };
    let addr: SocketAddr = config.lease.listen.parse().map_err(|_| {
        format!(
            "config key `lease.listen`: {:?} is not IP:PORT",
            config.lease.listen
        )
    })?;
    let service = LeaseService::new(
        config,
        node.raft.clone(),
        Arc::clone(&node.lease),
        parts.client.clone(),
        Arc::clone(peers),
    );
    service.spawn_expiry(stop.clone());
    let listener = bind("lease.listen", addr).await?;
    tracing::info!(lease = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), key = %config.lease.key, "LiteFS lease listener up");
    let handler = Arc::new(LeaseHandler {
        service: Arc::clone(&service),
        token: config.lease.token.clone(),
        me: config.node.id.unwrap_or_default(),
    });
    let side = Listener {
        name: "lease",
        tls: None,
        timeouts: Timeouts::live(config),
        max_header_bytes: config.public.max_header_bytes,
        max_connections: caps.admin,
        http1_only: true,
        shutdown_grace: config.public.shutdown_grace.get(),
        count_traffic: false,
    };
    tokio::spawn(side.serve(listener, handler, stop.clone()));
    if !config.lease.relay_listen.is_empty() {
        let addr: SocketAddr = config.lease.relay_listen.parse().map_err(|_| {
            format!(
                "config key `lease.relay_listen`: {:?} is not IP:PORT",
                config.lease.relay_listen
            )
        })?;
        let listener = bind("lease.relay_listen", addr).await?;
        tracing::info!(relay = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), litefs_port = config.lease.litefs_port, "LiteFS stream relay up");
        let relay = Arc::new(Relay::new(
            config,
            Arc::clone(&node.lease),
            Arc::clone(peers),
            caps.admin,
        ));
        tokio::spawn(relay.serve(listener, stop.clone()));
    }
    Ok(Some(service))
}

/// Each listener's connection cap: the configured one, lowered where the
/// file-descriptor limit would not leave room for sockets to the app and
/// the peers (see [`FdLimits`]).
struct ConnectionCaps {
    public: usize,
    cluster: usize,
    admin: usize,
    /// How many client connections may each hold a connection to the app
    /// for their reads (`proxy/affinity.rs`).
    app_affinity: usize,
}

impl ConnectionCaps {
    fn new(config: &Config) -> Self {
        let configured = Self {
            public: config.public.max_connections,
            cluster: config.cluster.max_connections,
            admin: config.admin.max_connections,
            app_affinity: config.upstream.max_concurrency,
        };
        let Some(limits) = FdLimits::raise() else {
            return configured;
        };
        let caps = Self {
            public: limits.public_cap(configured.public),
            cluster: limits.cluster_cap(configured.cluster),
            admin: limits.admin_cap(configured.admin),
            app_affinity: limits.app_affinity_cap(configured.app_affinity),
        };
        tracing::info!(
            nofile_soft = limits.soft,
            nofile_hard = limits.hard,
            public_max_connections = caps.public,
            cluster_max_connections = caps.cluster,
            admin_max_connections = caps.admin,
            app_affinity_connections = caps.app_affinity,
            "file descriptor limit and connection caps"
        );
        // Only a cap the operator chose is worth a warning; the default
        // is meant to follow the descriptor limit.
        let chosen = configured.public != crate::config::PublicConfig::default().max_connections;
        if chosen && caps.public < configured.public {
            tracing::warn!(
                configured = configured.public,
                effective = caps.public,
                nofile = limits.soft,
                "public.max_connections lowered to half of the file descriptor limit (less a reserve of {}); raise `ulimit -n` to allow more",
                crate::listen::fd_limit::FIXED_RESERVE
            );
        }
        caps
    }
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { key, addr, source })
}
