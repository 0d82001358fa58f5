//! Sending a write to the primary's litegate, and knowing afterwards
//! whether it may have reached an app.
//!
//! Admission is explicit. The forwarding node sends the head with
//! `Expect: 100-continue` and holds back every byte of the body (the hop
//! always uses chunked framing, the real length travels in
//! `Litegate-Content-Length`). The receiving node reads the body only once
//! it has admitted the write under a write permit, which is when its HTTP
//! server answers `100 Continue`; and it passes nothing to its app before
//! the body's first bytes arrive. So until the forwarding node has seen the
//! `100` and let the body go, no app can have the write: a connection that
//! breaks, a peer that dies, or a primary that changes before then means
//! [`Sent::Nothing`](super::errors::Sent::Nothing) and the write is routed
//! again at once. After it, any failure is `indeterminate`.
//!
//! A `Litegate-Error: not-primary` answer can only come from the receiving
//! litegate (it strips every `Litegate-*` header its app sends), and only
//! when nothing reached its app.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures::task::AtomicWaker;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::Notify;

use super::body::{self, BoxError, ProxyBody};
use super::client_body;
use super::errors::{ProxyError, Sent};
use super::replay_body::REPLAY_LIMIT;
use crate::cluster::client::PeerClient;
use crate::primary::{PrimaryState, PrimaryWatch};

/// The write's real `Content-Length`, carried across the chunked hop.
pub const LITEGATE_CONTENT_LENGTH: HeaderName = HeaderName::from_static("litegate-content-length");

/// How long an admitted write waits for the forwarding node to start its
/// body. The forwarding node sends it as soon as it sees `100 Continue`.
const BODY_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the receiving litegate admitted the write.
///
/// One state, changed only by compare-and-swap from `PENDING`: either the
/// `100` arrives first and the body may go, or this node gives the write up
/// first and the body never goes, even if a `100` is read afterwards (hyper
/// may still poll the body after the exchange was dropped).
#[derive(Default)]
struct Gate {
    state: AtomicU8,
    body_waker: AtomicWaker,
    admission: Notify,
}

const PENDING: u8 = 0;
const ADMITTED: u8 = 1;
const ABANDONED: u8 = 2;

impl Gate {
    fn admit(&self) {
        if self.settle(ADMITTED) {
            self.body_waker.wake();
            self.admission.notify_one();
        }
    }

    /// Gives the write up unless it was admitted first; true if given up,
    /// i.e. no byte of the body can ever leave.
    fn abandon(&self) -> bool {
        let given_up = self.settle(ABANDONED) || self.state.load(Ordering::Acquire) == ABANDONED;
        self.body_waker.wake();
        given_up
    }

    fn settle(&self, to: u8) -> bool {
        self.state
            .compare_exchange(PENDING, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn is_admitted(&self) -> bool {
        self.state.load(Ordering::Acquire) == ADMITTED
    }
}

/// The write's body on the hop, released only after admission.
struct GatedBody {
    inner: ProxyBody,
    gate: Arc<Gate>,
}

impl Body for GatedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.gate.body_waker.register(cx.waker());
        match self.gate.state.load(Ordering::Acquire) {
            ADMITTED => Pin::new(&mut self.inner).poll_frame(cx),
            ABANDONED => Poll::Ready(Some(Err("the primary did not admit the write".into()))),
            _ => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown, so that hyper frames the hop as chunked: a body with a
        // terminating chunk, even when empty, is what the receiving server
        // sends `100 Continue` for.
        SizeHint::default()
    }
}

/// Sends `req` (already addressed to the primary's cluster listener) and
/// waits for the primary's response head. Until the primary admits the
/// write, the wait ends at `deadline`, or as soon as a change published on
/// `watch` makes `still_routed_here` false; both end it with nothing sent.
/// After admission it waits up to the forwarding timeout.
pub async fn send(
    client: &PeerClient,
    req: Request<ProxyBody>,
    watch: &mut PrimaryWatch,
    deadline: Instant,
    still_routed_here: impl Fn(&PrimaryState) -> bool,
) -> Result<Response<Incoming>, ProxyError> {
    let gate = Arc::new(Gate::default());
    let (mut parts, body) = req.into_parts();
    if let Some(length) = parts.headers.remove(header::CONTENT_LENGTH) {
        parts.headers.insert(LITEGATE_CONTENT_LENGTH, length);
    }
    // Said outright: hyper would send a `GET` of unknown length with no body.
    parts.headers.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    parts
        .headers
        .insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    let progress = parts
        .extensions
        .get::<Arc<client_body::Progress>>()
        .cloned();
    let mut req = Request::from_parts(
        parts,
        GatedBody {
            inner: body,
            gate: Arc::clone(&gate),
        }
        .boxed_unsync(),
    );
    let on_continue = Arc::clone(&gate);
    hyper::ext::on_informational(&mut req, move |resp| {
        if resp.status() == StatusCode::CONTINUE {
            on_continue.admit();
        }
    });

    let exchange = client.forward(req);
    tokio::pin!(exchange);
    while !gate.is_admitted() {
        tokio::select! {
            result = &mut exchange => return answered(result, &gate),
            () = gate.admission.notified() => {}
            changed = watch.changed_before(deadline) => {
                let reason = if !changed {
                    "the primary did not admit the write in time"
                } else if !still_routed_here(&watch.current()) {
                    "the primary changed before it admitted the write"
                } else {
                    continue;
                };
                // Admitted meanwhile: the write is the primary's now.
                if gate.abandon() {
                    return Err(ProxyError::PeerLost(reason.into()));
                }
            }
        }
    }
    let timeout = client.forward_timeout();
    match client_body::head_within(timeout, progress.as_deref(), exchange).await {
        Ok(result) => answered(result, &gate),
        Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
    }
}

fn answered(
    result: Result<Response<Incoming>, hyper_util::client::legacy::Error>,
    gate: &Gate,
) -> Result<Response<Incoming>, ProxyError> {
    match result {
        Ok(resp) => {
            // Answered without admission (a refusal): the body never goes.
            gate.abandon();
            Ok(resp)
        }
        Err(e) if e.is_connect() => Err(ProxyError::PeerUnreachable(e.into())),
        Err(e) if gate.abandon() => Err(ProxyError::PeerLost(e.into())),
        Err(e) => Err(ProxyError::UpstreamBroken(e.into())),
    }
}

/// The receiving side: the body of an admitted write, ready for the app.
/// Reading it is what sends the forwarding node `100 Continue`; nothing
/// goes to the app before the first bytes (or the end) of the body are
/// here, so a forwarding node that never saw the `100` never sent any.
/// Restores the write's `Content-Length` from the hop's header.
pub async fn admitted_body(
    headers: &mut HeaderMap,
    mut body: ProxyBody,
) -> Result<ProxyBody, ProxyError> {
    headers.remove(header::EXPECT);
    let declared = headers.remove(LITEGATE_CONTENT_LENGTH);
    let length = match &declared {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or(ProxyError::BadRequest(
                    "Litegate-Content-Length is not a number",
                ))?,
        ),
        None => None,
    };
    if let Some(v) = declared {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    if length.is_some_and(|n| n <= REPLAY_LIMIT) {
        return whole(body, length).await;
    }
    let first = tokio::time::timeout(BODY_START_TIMEOUT, body.frame())
        .await
        .map_err(|_| ProxyError::BadRequest("the forwarded write's body did not start"))?;
    let first = match first {
        None => return Ok(body::empty()),
        Some(Err(err)) => {
            return Err(ProxyError::ClientBody {
                fault: client_body::fault_of(&err),
                sent: Sent::Nothing,
            })
        }
        Some(Ok(frame)) => frame,
    };
    let head = futures::stream::once(async move { Ok::<_, BoxError>(first) });
    let rest = http_body_util::BodyStream::new(body);
    use futures::StreamExt as _;
    Ok(body::stream(http_body_util::StreamBody::new(
        head.chain(rest),
    )))
}

/// A body read in full, of at most [`REPLAY_LIMIT`] bytes and, where
/// `length` is known, exactly that long.
pub async fn whole(mut body: ProxyBody, length: Option<usize>) -> Result<ProxyBody, ProxyError> {
    let mut whole = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| ProxyError::ClientBody {
            fault: client_body::fault_of(&err),
            sent: Sent::Nothing,
        })?;
        if let Ok(data) = frame.into_data() {
            if whole.len() + data.len() > length.unwrap_or(REPLAY_LIMIT) {
                return Err(ProxyError::BadRequest(
                    "the request body is longer than its Content-Length",
                ));
            }
            whole.extend_from_slice(&data);
        }
    }
    if length.is_some_and(|n| n != whole.len()) {
        return Err(ProxyError::BadRequest(
            "the request body is shorter than its Content-Length",
        ));
    }
    Ok(body::full(whole.freeze()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::primary::{PrimaryCell, Role};
    use crate::proxy::errors::{Next, Sent};

    /// How a fake primary's litegate treats one forwarded write.
    #[derive(Clone, Copy)]
    enum Receiver {
        /// Dies (closes) after the head, before admitting.
        DiesBeforeAdmission,
        /// Admits (`100 Continue`), reads the body, then dies.
        DiesAfterAdmission,
        /// Refuses with `421 not-primary`, never admitting.
        Refuses,
        /// Admits, reads the body, answers 201.
        Answers,
    }

    /// What the fake receiver saw: body bytes before it admitted, and in all.
    #[derive(Debug, Default)]
    struct Seen {
        body_before_admission: usize,
        body_after_admission: usize,
    }

    async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                break;
            }
            head.push(byte[0]);
        }
        head
    }

    /// Reads what arrives within `quiet` of silence.
    async fn drain(stream: &mut TcpStream, quiet: Duration) -> usize {
        let mut buf = [0u8; 4096];
        let mut total = 0;
        while let Ok(Ok(n)) = tokio::time::timeout(quiet, stream.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    }

    async fn fake_receiver(behaviour: Receiver) -> (String, tokio::task::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let head = String::from_utf8_lossy(&read_head(&mut stream).await).to_lowercase();
            assert!(head.contains("expect: 100-continue"), "{head}");
            assert!(head.contains("litegate-content-length: 5"), "{head}");
            let mut seen = Seen {
                // The forwarding node must hold the body back until admitted.
                body_before_admission: drain(&mut stream, Duration::from_millis(100)).await,
                ..Seen::default()
            };
            match behaviour {
                Receiver::DiesBeforeAdmission => {}
                Receiver::Refuses => {
                    let refusal = "HTTP/1.1 421 Misdirected Request\r\nlitegate-error: not-primary\r\nlitegate-term: 7\r\nlitegate-primary: c\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
                    stream.write_all(refusal.as_bytes()).await.unwrap();
                }
                Receiver::DiesAfterAdmission | Receiver::Answers => {
                    stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await
                        .unwrap();
                    seen.body_after_admission =
                        drain(&mut stream, Duration::from_millis(200)).await;
                    if let Receiver::Answers = behaviour {
                        let ok = "HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
                        stream.write_all(ok.as_bytes()).await.unwrap();
                        drain(&mut stream, Duration::from_millis(50)).await;
                    }
                }
            }
            seen
        });
        (addr, task)
    }

    fn replica_following(primary: &str, term: u64) -> Arc<PrimaryCell> {
        PrimaryCell::new(PrimaryState {
            role: Role::Replica,
            term,
            primary: Some(primary.into()),
            lease_deadline: None,
        })
    }

    fn client() -> PeerClient {
        PeerClient::new(None, None, Duration::from_secs(1), Duration::from_secs(5)).unwrap()
    }

    fn write(client: &PeerClient, addr: &str) -> Request<ProxyBody> {
        let mut req = Request::new(body::full("hello"));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = client.uri(addr, "/notes").unwrap();
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("example.com"));
        req
    }

    async fn forward(behaviour: Receiver) -> (Result<Response<Incoming>, ProxyError>, Seen) {
        let (addr, receiver) = fake_receiver(behaviour).await;
        let client = client();
        let cell = replica_following("b", 1);
        let mut watch = cell.watch();
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = send(&client, write(&client, &addr), &mut watch, deadline, |_| {
            true
        })
        .await;
        (result, receiver.await.unwrap())
    }

    /// Giving a write up and the `100` arriving race: exactly one wins, and
    /// the body goes only if admission won.
    #[test]
    fn admission_and_abandoning_exclude_each_other() {
        let gate = Gate::default();
        assert!(gate.abandon());
        gate.admit();
        assert!(
            !gate.is_admitted(),
            "a 100 read after giving up opens nothing"
        );

        let gate = Gate::default();
        gate.admit();
        assert!(
            !gate.abandon(),
            "admitted first: the write is the primary's"
        );
        assert!(gate.is_admitted());
    }

    #[tokio::test]
    async fn a_receiver_that_dies_before_admitting_got_nothing_and_the_write_is_rerouted() {
        let (result, seen) = forward(Receiver::DiesBeforeAdmission).await;
        let err = result.unwrap_err();
        assert_eq!(seen.body_before_admission, 0);
        assert_eq!(err.sent(), Sent::Nothing, "{err:?}");
        assert_eq!(err.next(), Next::Resend);
    }

    #[tokio::test]
    async fn a_receiver_that_dies_after_admitting_makes_the_write_indeterminate() {
        let (result, seen) = forward(Receiver::DiesAfterAdmission).await;
        let err = result.unwrap_err();
        assert_eq!(seen.body_before_admission, 0);
        assert!(seen.body_after_admission > 0, "the body goes once admitted");
        assert_eq!(err.sent(), Sent::Maybe, "{err:?}");
        assert_eq!(err.next(), Next::Answer);
        assert_eq!(err.for_write().code(), "indeterminate");
    }

    #[tokio::test]
    async fn a_refusal_comes_back_with_the_body_never_sent() {
        let (result, seen) = forward(Receiver::Refuses).await;
        let resp = result.unwrap();
        assert!(crate::proxy::respond::is_not_primary(&resp));
        assert_eq!(seen.body_before_admission, 0);
        assert_eq!(seen.body_after_admission, 0);
    }

    #[tokio::test]
    async fn an_admitted_write_is_answered() {
        let (result, seen) = forward(Receiver::Answers).await;
        assert_eq!(result.unwrap().status(), StatusCode::CREATED);
        assert_eq!(seen.body_before_admission, 0);
        // "hello" in one chunk plus the chunked framing.
        assert!(seen.body_after_admission >= 5);
    }

    #[tokio::test]
    async fn a_change_of_primary_before_admission_abandons_the_write() {
        // A receiver that never answers, as a paused old primary.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            read_head(&mut stream).await;
            drain(&mut stream, Duration::from_secs(3)).await
        });
        let client = client();
        let cell = replica_following("b", 1);
        let mut watch = cell.watch();
        let deadline = Instant::now() + Duration::from_secs(30);
        let publisher = Arc::clone(&cell);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            publisher.publish(replica_following("c", 2).current().as_ref().clone());
        });
        let still_b = |s: &PrimaryState| s.primary.as_deref() == Some("b");
        let err = send(
            &client,
            write(&client, &addr),
            &mut watch,
            deadline,
            still_b,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ProxyError::PeerLost(_)), "{err:?}");
        assert_eq!(err.next(), Next::Resend);
        hold.abort();
    }
}
