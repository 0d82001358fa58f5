//! One task per node follows LiteFS: it reads `/info`, then follows
//! `/events`, passing primary changes to the LiteFS primary source (in
//! `litefs` mode) and transactions to the read-your-writes position. While
//! the API is unreachable it falls back to the `.primary` file and retries
//! the API every second.
//!
//! LiteFS sends nothing on `/events` between events, so a quiet stream and
//! a dead one look alike. After [`EVENTS_SILENCE`] without a line the
//! watcher asks `/info` again (bounded by the API call timeout): an answer
//! refreshes the view and the stream is kept; no answer drops the stream
//! and falls back to `.primary` until the API answers again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;

use super::api::{self, Event};
use crate::consistency::Position;
use crate::log_limit::{self, LogLimit};
use crate::metrics;
use crate::shutdown::Shutdown;

const RECONNECT_EVERY: Duration = Duration::from_secs(1);
const FALLBACK_POLL: Duration = Duration::from_millis(200);
/// How long `/events` may stay silent before `/info` is asked whether
/// LiteFS is still there.
const EVENTS_SILENCE: Duration = Duration::from_secs(5);

/// What LiteFS says about the primary, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseView {
    /// LiteFS holds the lease here.
    Primary,
    /// Another node (by LiteFS hostname) holds it.
    Replica(String),
    /// No primary known, or the API is down and `.primary` is absent.
    Unknown,
}

/// Receives what the watcher learns.
pub trait Watcher: Send + Sync + 'static {
    fn lease(&self, view: LeaseView, from_api: bool);
}

pub fn spawn(
    api: Uri,
    mount: PathBuf,
    db: String,
    lease: Option<Arc<dyn Watcher>>,
    position: Option<Arc<Position>>,
    mut shutdown: Shutdown,
) {
    tokio::spawn(async move {
        let client = api::client();
        loop {
            let followed = follow(&client, &api, &db, lease.as_deref(), position.as_deref());
            tokio::select! {
                result = followed => {
                    metrics::set_litefs_api_up(false);
                    if let Err(error) = result {
                        // LiteFS down means this fails every second.
                        static LOST: LogLimit = LogLimit::new(log_limit::EVERY);
                        if let Some(suppressed) = LOST.allow("") {
                            tracing::warn!(%error, suppressed, "lost the LiteFS API; following the .primary file until it is back");
                        }
                    }
                }
                _ = shutdown.begun() => return,
            }
            // Fallback until the next reconnect attempt.
            let until = tokio::time::Instant::now() + RECONNECT_EVERY;
            while tokio::time::Instant::now() < until {
                if let Some(lease) = &lease {
                    lease.lease(from_primary_file(&mount), false);
                }
                tokio::select! {
                    _ = tokio::time::sleep(FALLBACK_POLL) => {}
                    _ = shutdown.begun() => return,
                }
            }
        }
    });
}

/// Reads `/info`, then follows `/events` until it ends or fails.
async fn follow(
    client: &api::ApiClient,
    api_uri: &Uri,
    db: &str,
    lease: Option<&dyn Watcher>,
    position: Option<&Position>,
) -> Result<(), String> {
    let info = api::info(client, api_uri).await?;
    if let Some(lease) = lease {
        lease.lease(view(info.is_primary, &info.primary.hostname), true);
    }
    let mut events = api::events(client, api_uri).await?;
    metrics::set_litefs_api_up(true);
    tracing::info!(api = %api_uri, "following LiteFS events");
    loop {
        let event = match tokio::time::timeout(EVENTS_SILENCE, events.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(_) => {
                let info = api::info(client, api_uri)
                    .await
                    .map_err(|e| format!("/events went silent and {e}"))?;
                if let Some(lease) = lease {
                    lease.lease(view(info.is_primary, &info.primary.hostname), true);
                }
                continue;
            }
        };
        match event? {
            Event::Primary {
                is_primary,
                hostname,
            } => {
                if let Some(lease) = lease {
                    lease.lease(view(is_primary, &hostname), true);
                }
            }
            Event::Tx { db: event_db, txid } if event_db == db => {
                if let Some(position) = position {
                    position.observe(txid);
                }
            }
            Event::Tx { .. } | Event::Other => {}
        }
    }
    Err("LiteFS closed the event stream".to_owned())
}

fn view(is_primary: bool, hostname: &str) -> LeaseView {
    match (is_primary, hostname) {
        (true, _) => LeaseView::Primary,
        (false, "") => LeaseView::Unknown,
        (false, host) => LeaseView::Replica(host.to_owned()),
    }
}

fn from_primary_file(mount: &std::path::Path) -> LeaseView {
    match super::read_primary_file(mount) {
        Ok(Some(host)) => LeaseView::Replica(host),
        Ok(None) => LeaseView::Unknown,
        Err(error) => {
            static UNREADABLE: LogLimit = LogLimit::new(log_limit::EVERY);
            if let Some(suppressed) = UNREADABLE.allow("") {
                tracing::warn!(%error, suppressed, "cannot read .primary");
            }
            LeaseView::Unknown
        }
    }
}

#[cfg(test)]
mod tests {
    //! LiteFS itself cannot be made to accept a connection and then never
    //! answer on demand, so these tests put a stand-in HTTP server on the
    //! API address: it answers what the scenario needs and then goes silent
    //! while keeping every connection open.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(LeaseView, bool)>>);

    impl Watcher for Recorder {
        fn lease(&self, view: LeaseView, from_api: bool) {
            self.0.lock().unwrap().push((view, from_api));
        }
    }

    impl Recorder {
        fn saw(&self, wanted: &(LeaseView, bool)) -> bool {
            self.0.lock().unwrap().iter().any(|seen| seen == wanted)
        }
    }

    /// Answers the first `answered` requests (`/info`: this node is the
    /// primary; `/events`: a response head and then nothing, as a quiet
    /// LiteFS does), then accepts connections and never answers on them.
    async fn stand_in_litefs(answered: usize) -> (Uri, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                if served.fetch_add(1, Ordering::SeqCst) < answered {
                    tokio::spawn(answer(conn));
                } else {
                    held.push(conn);
                }
            }
        });
        (format!("http://{addr}").parse().unwrap(), task)
    }

    async fn answer(mut conn: TcpStream) {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        if request.starts_with(b"GET /info") {
            let body = br#"{"isPrimary":true,"primary":{"hostname":""}}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body).await;
        } else {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = conn.write_all(head.as_bytes()).await;
            // Keep the stream open and silent until the test ends.
            let _ = conn.read(&mut buf).await;
        }
    }

    fn mount_naming(primary: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("litegate-litefs-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".primary"), format!("{primary}\n")).unwrap();
        dir
    }

    async fn eventually(recorder: &Recorder, wanted: (LeaseView, bool)) {
        // Longer than the silence allowance plus one call timeout.
        for _ in 0..200 {
            if recorder.saw(&wanted) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the watcher never reported {wanted:?}; saw {:?}",
            recorder.0.lock().unwrap()
        );
    }

    /// Regression (issue 13): `/info` had no timeout, so a LiteFS that
    /// accepted and never answered froze the view for good; now the call
    /// times out and the `.primary` file takes over.
    #[tokio::test]
    async fn a_litefs_that_never_answers_falls_back_to_the_primary_file() {
        let (api, server) = stand_in_litefs(0).await;
        let mount = mount_naming("app-2");
        let recorder = Arc::new(Recorder::default());
        let (trigger, stop) = crate::shutdown::channel();
        spawn(
            api,
            mount.clone(),
            "db".into(),
            Some(recorder.clone()),
            None,
            stop,
        );
        eventually(&recorder, (LeaseView::Replica("app-2".into()), false)).await;
        trigger.fire();
        server.abort();
        let _ = std::fs::remove_dir_all(&mount);
    }

    /// A primary whose LiteFS stops answering after `/events` opened must
    /// not stay "primary" on the strength of a silent stream.
    #[tokio::test]
    async fn a_silent_event_stream_is_checked_and_dropped_when_litefs_is_gone() {
        let (api, server) = stand_in_litefs(2).await;
        let mount = mount_naming("app-2");
        let recorder = Arc::new(Recorder::default());
        let (trigger, stop) = crate::shutdown::channel();
        spawn(
            api,
            mount.clone(),
            "db".into(),
            Some(recorder.clone()),
            None,
            stop,
        );
        eventually(&recorder, (LeaseView::Primary, true)).await;
        eventually(&recorder, (LeaseView::Replica("app-2".into()), false)).await;
        trigger.fire();
        server.abort();
        let _ = std::fs::remove_dir_all(&mount);
    }
}
