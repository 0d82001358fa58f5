//! One litegate node: builds the parts a configuration asks for, binds the
//! listeners, and runs until SIGTERM/SIGINT.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, AdminState, ClusterAdmin};
use crate::cluster::auth::SharedSecret;
use crate::cluster::client::PeerClient;
use crate::cluster::peers::PeerTable;
use crate::cluster::server::ClusterService;
use crate::config::{validate_upstream_url, Config, PrimaryMode};
use crate::consistency::Position;
use crate::litefs::{self, Watcher};
use crate::metrics;
use crate::primary::{DevPrimary, LitefsLease, PrimarySource, Role, StaticPrimary};
use crate::proxy::client::UpstreamClient;
use crate::proxy::health::UpstreamHealth;
use crate::proxy::server::Listener;
use crate::proxy::{Cluster, Proxy};
use crate::shutdown;
use crate::tls::{self, MutualTls};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "primary.mode = \"{0}\" is not available in this build yet; use \"static\", \"litefs\" or \"dev\""
    )]
    ModeNotAvailable(&'static str),
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

pub async fn run(config: Config) -> Result<(), NodeError> {
    let config = Arc::new(config);
    let prometheus = metrics::install()?;
    let (trigger, stop) = shutdown::channel();
    shutdown::on_signals(trigger).map_err(|e| format!("cannot install signal handlers: {e}"))?;

    let me = config.node.name.as_str();
    let names: HashSet<String> = config
        .cluster
        .peers
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let source = Arc::new(match config.primary.mode {
        PrimaryMode::Dev => PrimarySource::Dev(DevPrimary::new(me)),
        PrimaryMode::Static => PrimarySource::Static(StaticPrimary::open(
            &config.cluster.data_dir,
            me,
            names,
            &config.primary.static_primary,
        )?),
        PrimaryMode::Litefs => PrimarySource::Litefs(Arc::new(LitefsLease::new(me, names))),
        other => return Err(NodeError::ModeNotAvailable(other.as_str())),
    });
    metrics::set_is_primary(source.watch().current().role == Role::Primary);

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
    let upstream = UpstreamClient::new(&config.upstream, &target);
    let health = Arc::new(UpstreamHealth::default());
    health.spawn_prober(
        upstream.authority().to_string(),
        config.upstream.health_interval.get(),
        config.upstream.connect_timeout.get(),
        stop.clone(),
    );

    let mut cluster_parts = None;
    if config.primary.mode != PrimaryMode::Dev {
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
        let peers = Arc::new(PeerTable::new(me, &c.peers));
        peers.spawn_poller(client.clone(), Arc::clone(&source), stop.clone());
        let acceptor = mtls
            .as_ref()
            .map(|m| m.server().map(TlsAcceptor::from))
            .transpose()?;
        cluster_parts = Some((peers, client, secret, acceptor));
    }

    let proxy = Arc::new(Proxy::new(
        &config,
        upstream,
        Arc::clone(&health),
        Arc::clone(&source),
        cluster_parts.as_ref().map(|(peers, client, ..)| Cluster {
            peers: Arc::clone(peers),
            client: client.clone(),
        }),
        position,
    )?);

    let public_tls = (!config.public.tls_cert.is_empty())
        .then(|| {
            tls::public_server(&config.public.tls_cert, &config.public.tls_key)
                .map(TlsAcceptor::from)
        })
        .transpose()?;
    let public = bind("public.listen", config.public.listen.0).await?;
    let admin_listener = bind("admin.listen", config.admin.listen.0).await?;
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    tracing::info!(
        node = %me,
        mode = config.primary.mode.as_str(),
        public = %local(&public),
        tls = public_tls.is_some(),
        admin = %local(&admin_listener),
        upstream = %config.upstream.url,
        "litegate listening"
    );

    let mut cluster_admin = None;
    if let Some((peers, client, secret, acceptor)) = cluster_parts {
        let listener = bind("cluster.listen", config.cluster.listen.0).await?;
        tracing::info!(cluster = %local(&listener), mtls = acceptor.is_some(), secret = secret.is_some(), "cluster listener up");
        let service = Arc::new(ClusterService {
            proxy: Arc::clone(&proxy),
            source: Arc::clone(&source),
            secret,
        });
        let cluster_listener = Listener {
            name: "cluster",
            tls: acceptor,
            header_read_timeout: config.public.header_read_timeout.get(),
            max_header_bytes: config.public.max_header_bytes,
            shutdown_grace: config.public.shutdown_grace.get(),
            count_connections: false,
        };
        tokio::spawn(cluster_listener.serve(listener, service, stop.clone()));
        cluster_admin = Some(ClusterAdmin { peers, client });
    }

    let admin_state = Arc::new(AdminState {
        config: Arc::clone(&config),
        source,
        health,
        metrics: prometheus,
        started: Instant::now(),
        cluster: cluster_admin,
        token: admin::load_token(&config.admin)?,
    });
    tokio::spawn(admin::serve(admin_listener, admin_state, stop.clone()));

    let public_listener = Listener {
        name: "public",
        tls: public_tls,
        header_read_timeout: config.public.header_read_timeout.get(),
        max_header_bytes: config.public.max_header_bytes,
        shutdown_grace: config.public.shutdown_grace.get(),
        count_connections: true,
    };
    public_listener.serve(public, proxy, stop).await;
    Ok(())
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { key, addr, source })
}
