//! The connections writes take to the app. A pool of our own rather than
//! hyper-util's, because the fence needs to know which request a
//! connection carries: a connection is bound to one [`Attempt`] from the
//! moment the request is handed to it until the exchange is over (the
//! request body written *and* the response read), and only then goes back
//! to the idle list.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::net::TcpStream;

use super::body::ProxyBody;
use super::errors::{ProxyError, Sent};
use super::fence::{Attempt, FencedIo, Slot};

struct Conn {
    sender: http1::SendRequest<ProxyBody>,
    slot: Arc<Slot>,
    idle_since: Instant,
}

pub struct WritePool {
    /// `host:port` of the app.
    address: String,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    idle: Mutex<Vec<Conn>>,
}

impl WritePool {
    pub fn new(
        address: String,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Arc<Self> {
        Arc::new(Self {
            address,
            connect_timeout,
            idle_timeout,
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `req` under `attempt` and waits for the response head. An
    /// error says, through its [`Sent`], whether the app can have seen any
    /// of the request.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
        attempt: &Arc<Attempt>,
    ) -> Result<Response<Incoming>, ProxyError> {
        // The request line carries the path only (origin form); hyper's
        // connection-level client sends the URI as it is given.
        let origin_form = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(origin_form);
        let mut conn = match self.take_idle() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        conn.slot.bind(Arc::clone(attempt));
        match conn.sender.send_request(req).await {
            Ok(resp) => {
                attempt.permit().answered();
                self.recycle_when_done(conn);
                Ok(resp)
            }
            Err(error) => Err(match attempt.abandon() {
                Sent::Nothing if attempt.was_fenced() => ProxyError::Fenced,
                // A pooled connection the app had closed, found out before
                // a byte of this request left.
                Sent::Nothing => ProxyError::UpstreamUnreachable(error.into()),
                Sent::Maybe => ProxyError::UpstreamBroken(error.into()),
            }),
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if conn.idle_since.elapsed() < self.idle_timeout
                && !conn.sender.is_closed()
                && conn.sender.is_ready()
            {
                return Some(conn);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Conn, ProxyError> {
        let unreachable =
            |e: Box<dyn std::error::Error + Send + Sync>| ProxyError::UpstreamUnreachable(e);
        let stream = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.address.as_str()),
        )
        .await
        .map_err(|_| {
            unreachable(format!("no connection within {:?}", self.connect_timeout).into())
        })?
        .map_err(|e| unreachable(e.into()))?;
        // Small writes go out at once; latency matters more than packets.
        stream
            .set_nodelay(true)
            .map_err(|e| unreachable(e.into()))?;
        let slot = Arc::new(Slot::default());
        let (sender, connection) = http1::Builder::new()
            .max_buf_size(super::client::APP_READ_BUFFER)
            .handshake(FencedIo::new(stream, Arc::clone(&slot)))
            .await
            .map_err(|e| unreachable(e.into()))?;
        tokio::spawn(async move {
            // Errors reach the request that was on the connection.
            let _ = connection.with_upgrades().await;
        });
        Ok(Conn {
            sender,
            slot,
            idle_since: Instant::now(),
        })
    }

    /// Back to the idle list once the app has read the whole request and
    /// sent its whole response; until then the attempt stays bound, so a
    /// body still being written is still fenced by its own permit.
    fn recycle_when_done(self: &Arc<Self>, mut conn: Conn) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if conn.sender.ready().await.is_err() {
                return;
            }
            conn.slot.unbind();
            conn.idle_since = Instant::now();
            let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < pool.max_idle {
                idle.push(conn);
            }
        });
    }
}
