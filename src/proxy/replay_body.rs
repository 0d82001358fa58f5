//! A forwarded write's body: streamed to the primary frame by frame, with a
//! copy of the first `REPLAY_LIMIT` bytes kept, so that if the primary's
//! litegate refuses it (`421 not-primary`, nothing reached an app) it can be
//! sent again to the right node. A larger body is not kept — and such a
//! write is answered 503 instead of retried.
//!
//! The client's body lives in a slot shared by every attempt, not in the
//! attempt itself: when hyper drops an attempt half-sent, the unread rest of
//! the body is still there for the next one.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::body::{BoxError, ProxyBody};

/// Writes are mostly forms and JSON; this keeps those retryable while a
/// large upload costs no more memory than this.
pub const REPLAY_LIMIT: usize = 64 * 1024;

pub struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    size_hint: SizeHint,
}

struct Shared {
    inner: ProxyBody,
    /// Data frames taken from `inner` so far, kept while within the limit.
    kept: Vec<Bytes>,
    kept_bytes: usize,
    /// How many data frames have been taken from `inner`.
    taken: usize,
    overflowed: bool,
    ended: bool,
}

impl ReplayBody {
    pub fn new(inner: ProxyBody) -> Self {
        let size_hint = inner.size_hint();
        Self {
            shared: Arc::new(Mutex::new(Shared {
                inner,
                kept: Vec::new(),
                kept_bytes: 0,
                taken: 0,
                overflowed: false,
                ended: false,
            })),
            size_hint,
        }
    }

    /// Whether a new attempt can send the whole body from its start.
    pub fn can_replay(&self) -> bool {
        self.shared.lock().map(|s| !s.overflowed).unwrap_or(false)
    }

    /// A body for one attempt: the kept frames first, then the rest of the
    /// client's body.
    pub fn attempt(&self) -> ProxyBody {
        Attempt {
            shared: Arc::clone(&self.shared),
            next: 0,
            size_hint: self.size_hint,
        }
        .boxed_unsync()
    }
}

struct Attempt {
    shared: Arc<Mutex<Shared>>,
    /// The index of the next data frame this attempt sends.
    next: usize,
    size_hint: SizeHint,
}

impl Body for Attempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let shared = Arc::clone(&self.shared);
        let Ok(mut s) = shared.lock() else {
            return Poll::Ready(Some(Err("request body lock poisoned".into())));
        };
        if self.next < s.taken {
            if s.overflowed {
                return Poll::Ready(Some(Err(
                    "the request body was too large to send again".into()
                )));
            }
            let frame = s.kept[self.next].clone();
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if s.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut s.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    s.taken += 1;
                    self.next += 1;
                    if !s.overflowed {
                        if s.kept_bytes + data.len() <= REPLAY_LIMIT {
                            s.kept_bytes += data.len();
                            let copy = data.clone();
                            s.kept.push(copy);
                        } else {
                            s.overflowed = true;
                            s.kept = Vec::new();
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                s.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body;

    async fn collect(b: ProxyBody) -> Result<Bytes, BoxError> {
        Ok(b.collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn a_refused_attempt_can_be_sent_again_whole() {
        let replay = ReplayBody::new(body::full("hello world"));
        // The first attempt reads the body, then is dropped (refused).
        assert_eq!(collect(replay.attempt()).await.unwrap(), "hello world");
        assert!(replay.can_replay());
        assert_eq!(collect(replay.attempt()).await.unwrap(), "hello world");
    }

    #[tokio::test]
    async fn an_unread_attempt_loses_nothing() {
        let replay = ReplayBody::new(body::full("abc"));
        drop(replay.attempt());
        assert_eq!(collect(replay.attempt()).await.unwrap(), "abc");
    }

    #[tokio::test]
    async fn a_large_body_is_not_kept() {
        let big = vec![b'x'; REPLAY_LIMIT + 1];
        let replay = ReplayBody::new(body::full(big.clone()));
        assert_eq!(collect(replay.attempt()).await.unwrap().len(), big.len());
        assert!(!replay.can_replay());
        assert!(collect(replay.attempt()).await.is_err());
    }
}
