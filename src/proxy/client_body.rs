//! A client's request body as litegate reads it: each next piece must
//! arrive within `public.body_read_timeout` of being asked for (a slowloris
//! body is cut off, however it is read: whole, streamed to this node's app,
//! or forwarded), and its [`Progress`] says, after a failed exchange,
//! whether the client's body was the cause and when it last moved.
//!
//! The clock runs only while litegate waits on the client: a body nobody
//! polls (a write waiting for its permit, or for the primary to admit it,
//! or an app that reads slowly) is not the client's delay.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Sleep;

use super::body::{BoxError, ProxyBody};
use crate::metrics::{self, RequestOrigin};

/// Why a client's body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// No next piece within `public.body_read_timeout`.
    Stalled(Duration),
    /// Malformed framing (a bad chunk), or the client went away mid-body.
    Broken,
}

/// The error a client body yields when it fails; the exchange that was
/// carrying it fails too, and [`Progress::fault`] says it was the client.
#[derive(Debug, thiserror::Error)]
#[error("{}", match .0 {
    BodyFault::Stalled(after) => format!("the client sent no more of its body for {}", humantime::format_duration(*after)),
    BodyFault::Broken => "the client's body was malformed or cut short".to_owned(),
})]
pub struct ClientBodyError(pub BodyFault);

/// What happened to one client body, shared with whoever sends it on.
#[derive(Debug)]
pub struct Progress {
    fault: OnceLock<BodyFault>,
    /// When the last piece (or the end) of the body came, or when it was
    /// created if nothing has come yet.
    last: Mutex<Instant>,
    /// litegate is waiting on the client for the next piece: any delay now
    /// is the client's, and `public.body_read_timeout` bounds it.
    waiting_on_client: AtomicBool,
}

impl Progress {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            fault: OnceLock::new(),
            last: Mutex::new(Instant::now()),
            waiting_on_client: AtomicBool::new(false),
        })
    }

    /// The client's fault, if its body failed.
    pub fn fault(&self) -> Option<BodyFault> {
        self.fault.get().copied()
    }

    pub fn last_moved(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn moved(&self) {
        self.waiting_on_client.store(false, Ordering::Release);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn is_waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Acquire)
    }
}

/// Wraps a client's body: each next frame within `timeout` of being asked
/// for. The [`Progress`] goes with the request (as an extension) to the
/// code that sends it on. A body from a client (not a peer forwarding a
/// write) is counted in `litegate_request_bytes_total` as it arrives.
pub fn timed(
    inner: ProxyBody,
    timeout: Duration,
    origin: RequestOrigin,
) -> (ProxyBody, Arc<Progress>) {
    let progress = Progress::new();
    // A body that has already ended (most GETs) can never stall: it needs
    // no timer, nor a second box per request.
    if inner.is_end_stream() {
        return (inner, progress);
    }
    let body = TimedBody {
        inner,
        timeout,
        waiting: None,
        progress: Arc::clone(&progress),
        count_bytes: origin == RequestOrigin::Client,
    };
    (body.boxed_unsync(), progress)
}

struct TimedBody {
    inner: ProxyBody,
    timeout: Duration,
    /// Armed while litegate waits on the client for the next frame.
    waiting: Option<Pin<Box<Sleep>>>,
    progress: Arc<Progress>,
    /// Counted in `litegate_request_bytes_total`: a client's body, where a
    /// forwarded write's was counted on the node the client reached.
    count_bytes: bool,
}

impl TimedBody {
    fn fail(&mut self, fault: BodyFault) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.waiting = None;
        self.progress
            .waiting_on_client
            .store(false, Ordering::Release);
        let _ = self.progress.fault.set(fault);
        Poll::Ready(Some(Err(Box::new(ClientBodyError(fault)))))
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(fault) = self.progress.fault() {
            return self.fail(fault);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.waiting = None;
                self.progress.moved();
                if let (true, Some(data)) = (self.count_bytes, frame.data_ref()) {
                    metrics::count_request_bytes(data.len());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.waiting = None;
                self.progress.moved();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(_))) => self.fail(BodyFault::Broken),
            Poll::Pending => {
                let timeout = self.timeout;
                self.progress
                    .waiting_on_client
                    .store(true, Ordering::Release);
                let sleep = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => self.fail(BodyFault::Stalled(timeout)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The fault behind a body error, for code that reads a client's body
/// itself.
pub fn fault_of(error: &BoxError) -> BodyFault {
    match error.downcast_ref::<ClientBodyError>() {
        Some(ClientBodyError(fault)) => *fault,
        None => BodyFault::Broken,
    }
}

/// Waits for `exchange` (a request sent on, up to its response head) for
/// at most `timeout` from whichever came last: the start of this wait, or
/// the last piece of the client's body that went out. So a long upload
/// that keeps moving is not cut, and the app still has only `timeout` to
/// answer once it has the whole request. While litegate waits on the
/// client's body, the wait is the client's and ends with its body's own
/// timeout, not this one.
pub async fn head_within<T>(
    timeout: Duration,
    progress: Option<&Progress>,
    exchange: impl Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    tokio::pin!(exchange);
    let mut since = Instant::now();
    loop {
        if let Some(progress) = progress {
            since = since.max(progress.last_moved());
        }
        let deadline = since.checked_add(timeout).unwrap_or(since);
        let elapsed = match tokio::time::timeout_at(deadline.into(), &mut exchange).await {
            Ok(result) => return Ok(result),
            Err(elapsed) => elapsed,
        };
        let Some(progress) = progress else {
            return Err(elapsed);
        };
        if progress.is_waiting_on_client() {
            since = Instant::now();
        } else if progress.last_moved() <= since {
            return Err(elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body;

    // Real time (tokio's test clock is not built in): every wait below is
    // a few times shorter or longer than the timeout it tests.
    const TIMEOUT: Duration = Duration::from_millis(400);
    const STEP: Duration = Duration::from_millis(100);

    fn channel() -> (http_body_util::channel::Sender<Bytes, BoxError>, ProxyBody) {
        let (tx, rx) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        (tx, body::stream(rx))
    }

    #[tokio::test]
    async fn a_body_that_stops_sending_fails_as_stalled() {
        let (mut tx, inner) = channel();
        let (mut body, progress) = timed(inner, TIMEOUT, RequestOrigin::Client);
        tx.send_data(Bytes::from_static(b"abc")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
        // The client keeps the connection but sends nothing more.
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(fault_of(&err), BodyFault::Stalled(TIMEOUT));
        assert_eq!(progress.fault(), Some(BodyFault::Stalled(TIMEOUT)));
        drop(tx);
    }

    #[tokio::test]
    async fn a_slow_but_steady_body_is_read_whole() {
        let (mut tx, inner) = channel();
        let (body, progress) = timed(inner, TIMEOUT, RequestOrigin::Client);
        tokio::spawn(async move {
            for _ in 0..8 {
                tokio::time::sleep(STEP).await;
                tx.send_data(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        // 800 ms in all, twice the timeout.
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len(), 8);
        assert_eq!(progress.fault(), None);
    }

    #[tokio::test]
    async fn an_unpolled_body_does_not_time_out() {
        let (mut tx, inner) = channel();
        let (mut body, progress) = timed(inner, TIMEOUT, RequestOrigin::Client);
        // Nobody asks for the body for longer than the timeout (a write
        // waiting for its permit).
        tokio::time::sleep(TIMEOUT * 2).await;
        tx.send_data(Bytes::from_static(b"late")).await.unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "late"
        );
        assert_eq!(progress.fault(), None);
    }

    #[tokio::test]
    async fn a_broken_body_is_the_clients_fault() {
        let (tx, inner) = channel();
        let (mut body, progress) = timed(inner, TIMEOUT, RequestOrigin::Client);
        tx.abort("malformed chunk".into());
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(fault_of(&err), BodyFault::Broken);
        assert_eq!(progress.fault(), Some(BodyFault::Broken));
    }

    #[tokio::test]
    async fn the_head_deadline_counts_from_the_bodys_last_piece() {
        let (mut tx, inner) = channel();
        let (body, progress) = timed(inner, TIMEOUT * 10, RequestOrigin::Client);
        // An "app" that reads the body as it comes, then answers.
        let exchange = async move {
            let all = body.collect().await.unwrap().to_bytes();
            tokio::time::sleep(STEP).await;
            all.len()
        };
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(STEP).await;
                tx.send_data(Bytes::from_static(b"x")).await.unwrap();
            }
        });
        // 1.1 s in all, over a head timeout of 400 ms: never that long
        // without the body moving.
        let got = head_within(TIMEOUT, Some(&progress), exchange).await;
        assert_eq!(got.unwrap(), 10);

        // Without progress the same deadline trips.
        let silent = tokio::time::sleep(TIMEOUT * 3);
        assert!(head_within(TIMEOUT, None, silent).await.is_err());
    }
}
