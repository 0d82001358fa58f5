//! The public listener: HTTP/1.1 and HTTP/2 (h2c prior knowledge) on one
//! port, keep-alive, a deadline for request heads, and a graceful stop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::PublicConfig;
use crate::metrics;
use crate::shutdown::Shutdown;

use super::{ConnInfo, Proxy};

/// hyper's own limit on a request head; ours (`public.max_header_bytes`)
/// sits below it so the 431 it causes carries `Litegate-Error`.
const HYPER_DEFAULT_MAX_BUF: usize = 400 * 1024;

/// Accepts connections until `shutdown`, then lets open ones finish for up
/// to `public.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    config: &PublicConfig,
    mut shutdown: Shutdown,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout.get())
        .keep_alive(true)
        .max_buf_size(HYPER_DEFAULT_MAX_BUF.max(config.max_header_bytes + 16 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(
            u32::try_from(config.max_header_bytes + 16 * 1024).unwrap_or(u32::MAX),
        );

    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors, most likely: back off rather
                    // than spin, and keep serving the connections we have.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.begun() => break,
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let info = ConnInfo {
            peer,
            tls: false,
            trusted: proxy.is_trusted(&peer),
        };
        let proxy = Arc::clone(&proxy);
        let service = service_fn(move |req| {
            let proxy = Arc::clone(&proxy);
            async move { Ok::<_, Infallible>(proxy.handle(req, info).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        metrics::set_open_connections_delta(1.0);
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
            metrics::set_open_connections_delta(-1.0);
        });
    }
    drop(listener);

    let grace = config.shutdown_grace.get();
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all client connections closed"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(grace = %humantime::format_duration(grace), "in-flight requests still running after the shutdown grace; closing them");
        }
    }
}
