//! One litegate node: builds the parts a configuration asks for, binds the
//! listeners, and runs until SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;

use crate::admin::{self, AdminState};
use crate::config::{validate_upstream_url, Config, PrimaryMode};
use crate::metrics;
use crate::primary::DevPrimary;
use crate::proxy::client::UpstreamClient;
use crate::proxy::health::UpstreamHealth;
use crate::proxy::{server, Proxy};
use crate::shutdown;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("primary.mode = \"{0}\" is not available in this build yet; run with primary.mode = \"dev\" (or `litegate dev`)")]
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

pub async fn run(config: Config) -> Result<(), NodeError> {
    let config = Arc::new(config);
    let primary = match config.primary.mode {
        PrimaryMode::Dev => DevPrimary::new(&config.node.name),
        other => return Err(NodeError::ModeNotAvailable(other.as_str())),
    };
    let primary_watch = primary.watch();

    let prometheus = metrics::install().map_err(NodeError::Setup)?;
    metrics::set_is_primary(primary_watch.current().role == crate::primary::Role::Primary);
    let (trigger, stop) = shutdown::channel();
    shutdown::on_signals(trigger)
        .map_err(|e| NodeError::Setup(format!("cannot install signal handlers: {e}")))?;

    let target = validate_upstream_url(&config.upstream.url).map_err(NodeError::Setup)?;
    let upstream = UpstreamClient::new(&config.upstream, &target);
    let health = Arc::new(UpstreamHealth::default());
    health.spawn_prober(
        upstream.authority().to_string(),
        config.upstream.health_interval.get(),
        config.upstream.connect_timeout.get(),
        stop.clone(),
    );
    let proxy = Arc::new(
        Proxy::new(
            &config,
            upstream,
            Arc::clone(&health),
            primary_watch.clone(),
        )
        .map_err(NodeError::Setup)?,
    );

    let public = bind("public.listen", config.public.listen.0).await?;
    let admin_listener = bind("admin.listen", config.admin.listen.0).await?;
    tracing::info!(
        node = %config.node.name,
        mode = config.primary.mode.as_str(),
        public = %public.local_addr().map_err(|e| NodeError::Setup(e.to_string()))?,
        admin = %admin_listener.local_addr().map_err(|e| NodeError::Setup(e.to_string()))?,
        upstream = %config.upstream.url,
        "litegate listening"
    );

    let admin_state = Arc::new(AdminState {
        config: Arc::clone(&config),
        primary: primary_watch,
        health,
        metrics: prometheus,
        started: Instant::now(),
    });
    tokio::spawn(admin::serve(admin_listener, admin_state, stop.clone()));

    server::serve(public, proxy, &config.public, stop).await;
    drop(primary);
    Ok(())
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind { key, addr, source })
}
