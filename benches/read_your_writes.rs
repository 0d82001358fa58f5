//! Read-your-writes: how soon a waiting read is served once the replica's
//! position reaches its `__txid`, and what a cookie that is already
//! satisfied costs a read.
//!
//!     cargo bench --bench read_your_writes
//!
//! A replica litegate (static mode; its primary is never asked) runs with a
//! LiteFS mount in a scratch directory. The position advances the two ways
//! LiteFS makes it visible: a `tx` event on `/events` (served here, in
//! LiteFS's format) and the `<db>-pos` file (read by the shared poller).
//! BENCH_TRIALS (default 300) wake-ups per path; BENCH_SECONDS (default 3)
//! per round of the cookie-cost comparison.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{free_addr, start_litegate, start_upstream, Scratch, Totals};
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The `/events` body: lines pushed by the bench.
struct Events(mpsc::UnboundedReceiver<Bytes>);

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

type Subscribers = Arc<Mutex<Vec<mpsc::UnboundedSender<Bytes>>>>;

/// A minimal LiteFS API: `/info` says n1 is primary; `/events` streams
/// `init`, then whatever the bench sends.
async fn serve_litefs_api(listener: TcpListener, subscribers: Subscribers) {
    while let Ok((stream, _)) = listener.accept().await {
        let subscribers = Arc::clone(&subscribers);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let subscribers = Arc::clone(&subscribers);
                async move {
                    let body = match req.uri().path() {
                        "/events" => {
                            let (tx, rx) = mpsc::unbounded_channel();
                            let _ = tx.send(Bytes::from_static(
                                b"{\"type\":\"init\",\"data\":{\"isPrimary\":false,\"hostname\":\"n1\"}}\n",
                            ));
                            subscribers.lock().expect("lock").push(tx);
                            Events(rx).boxed_unsync()
                        }
                        _ => Full::new(Bytes::from_static(
                            b"{\"isPrimary\":false,\"candidate\":true,\"path\":\"/x\",\"primary\":{\"hostname\":\"n1\"}}",
                        ))
                        .map_err(|never| match never {})
                        .boxed_unsync(),
                    };
                    Ok::<_, Infallible>(Response::new(body))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn write_pos(mount: &std::path::Path, txid: u64) {
    let tmp = mount.join(".pos.tmp");
    std::fs::write(
        &tmp,
        format!(
            "{txid:016x}/{:016x}\n",
            txid.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ),
    )
    .expect("pos");
    std::fs::rename(&tmp, mount.join("db.sqlite3-pos")).expect("rename pos");
}

async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    cookie: Option<u64>,
) -> Duration {
    let mut req = Request::get("/").header("host", "bench.test");
    if let Some(txid) = cookie {
        req = req.header("cookie", format!("__txid={txid:016x}"));
    }
    send.ready().await.expect("connection ready");
    let t = Instant::now();
    let resp = send
        .send_request(req.body(Empty::new()).expect("request"))
        .await
        .expect("response");
    assert!(resp.status().is_success(), "status {}", resp.status());
    resp.into_body().collect().await.expect("body");
    t.elapsed()
}

async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    send
}

fn pct(v: &mut [u32], p: f64) -> u32 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    if common::skip_unless_benchmarking() {
        return;
    }
    let trials = common::env_num("BENCH_TRIALS", 300);
    let seconds = common::env_num("BENCH_SECONDS", 3);
    let upstream = start_upstream();
    let scratch = Scratch::new("ryw");
    let mount = scratch.0.join("mount");
    std::fs::create_dir_all(&mount).expect("mount");
    write_pos(&mount, 1);
    std::fs::write(scratch.0.join("secret"), "bench-secret-0123456789abcdef\n").expect("secret");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let api_listener = rt
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .expect("bind api");
    let api = api_listener.local_addr().expect("api addr");
    let subscribers: Subscribers = Arc::default();
    rt.spawn(serve_litefs_api(api_listener, Arc::clone(&subscribers)));

    let (public, admin, cluster) = (free_addr(), free_addr(), free_addr());
    let config = scratch.0.join("n2.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nid = 2\nname = \"n2\"\n[public]\nlisten = \"{public}\"\n[upstream]\nurl = \"http://{upstream}\"\n\
             [primary]\nmode = \"static\"\nstatic = \"n1\"\n[admin]\nlisten = \"{admin}\"\n\
             [litefs]\nmount = \"{mount}\"\napi = \"http://{api}\"\ndb = \"db.sqlite3\"\n\
             [consistency]\nwait_timeout = \"5s\"\non_timeout = \"error\"\n\
             [cluster]\nlisten = \"{cluster}\"\ndata_dir = \"{data}\"\nsecret_file = \"{secret}\"\npeers = [\n\
             {{ id = 1, name = \"n1\", cluster = \"127.0.0.1:9\", public_url = \"http://127.0.0.1:9\" }},\n\
             {{ id = 2, name = \"n2\", cluster = \"{cluster}\", public_url = \"http://{public}\" }}]\n",
            mount = mount.display(),
            data = scratch.0.join("data").display(),
            secret = scratch.0.join("secret").display(),
        ),
    )
    .expect("config");
    let _litegate = start_litegate(
        &[
            "run".into(),
            "--config".into(),
            config.display().to_string(),
        ],
        &[],
        public,
    );

    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while subscribers.lock().expect("lock").is_empty() {
            assert!(Instant::now() < deadline, "litegate never subscribed to /events");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut txid = 1u64;
        println!("read_your_writes: {trials} wake-ups per path; times include the HTTP round trip");
        println!("{:<34} {:>9} {:>9} {:>9}", "position change -> read served", "p50 µs", "p99 µs", "max µs");
        for (path, by_event) in [("via a LiteFS tx event", true), ("via <db>-pos (shared poller)", false)] {
            let mut send = connect(public).await;
            let mut wake_us = Vec::new();
            for _ in 0..trials {
                txid += 1;
                let target = txid;
                let read = tokio::spawn(async move {
                    get(&mut send, Some(target)).await;
                    (Instant::now(), send)
                });
                // Let the read arrive and start waiting.
                tokio::time::sleep(Duration::from_millis(3)).await;
                let changed = Instant::now();
                if by_event {
                    let line = format!("{{\"type\":\"tx\",\"db\":\"db.sqlite3\",\"data\":{{\"txID\":\"{target:016x}\"}}}}\n");
                    for s in subscribers.lock().expect("lock").iter() {
                        let _ = s.send(Bytes::from(line.clone()));
                    }
                    write_pos(&mount, target);
                } else {
                    write_pos(&mount, target);
                }
                let (served, back) = read.await.expect("read task");
                send = back;
                wake_us.push(u32::try_from(served.duration_since(changed).as_micros()).unwrap_or(u32::MAX));
            }
            println!(
                "{path:<34} {:>9} {:>9} {:>9}",
                pct(&mut wake_us, 0.5),
                pct(&mut wake_us, 0.99),
                pct(&mut wake_us, 1.0)
            );
        }

        // What a satisfied cookie costs: requests alternate one by one on
        // one connection, so the machine's drift falls on both alike.
        let mut send = connect(public).await;
        let (mut none, mut satisfied) = (Totals::default(), Totals::default());
        let (mut lat_none, mut lat_sat) = (Vec::new(), Vec::new());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds * 2) {
            lat_none.push(u32::try_from(get(&mut send, None).await.as_micros()).unwrap_or(u32::MAX));
            lat_sat.push(u32::try_from(get(&mut send, Some(txid)).await.as_micros()).unwrap_or(u32::MAX));
        }
        let elapsed = started.elapsed() / 2;
        none.add(lat_none.len(), elapsed, lat_none);
        satisfied.add(lat_sat.len(), elapsed, lat_sat);
        let mean = |t: &Totals| t.latencies_us.iter().map(|&v| f64::from(v)).sum::<f64>() / t.latencies_us.len() as f64;
        let (mean_none, mean_sat) = (mean(&none), mean(&satisfied));
        println!("\nread on the replica, 1 connection, {} requests each, interleaved one by one", none.requests);
        println!("{:<34} {:>9} {:>9} {:>10}", "cookie", "p50 µs", "p99 µs", "mean µs");
        println!("{:<34} {:>9.0} {:>9.0} {:>10.1}", "none", none.percentile(0.5), none.percentile(0.99), mean_none);
        println!(
            "{:<34} {:>9.0} {:>9.0} {:>10.1}",
            "__txid already reached",
            satisfied.percentile(0.5),
            satisfied.percentile(0.99),
            mean_sat
        );
        println!(
            "  -> a satisfied cookie adds {:+.1} µs at p50, {:+.1} µs on the mean",
            satisfied.percentile(0.5) - none.percentile(0.5),
            mean_sat - mean_none
        );
    });

    // The cookie's own cost, without the network: parse it and compare with
    // the current position, as the request path does.
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "cookie",
        http::HeaderValue::from_static("sessionid=abc123; csrftoken=xyz; __txid=00000000000000ff"),
    );
    let iterations = 2_000_000u32;
    let started = Instant::now();
    let mut hits = 0u64;
    for _ in 0..iterations {
        let wanted = litegate::consistency::requested_txid(std::hint::black_box(&headers));
        if wanted.is_some_and(|t| t <= std::hint::black_box(0x1ff)) {
            hits += 1;
        }
    }
    let per = started.elapsed().as_nanos() as f64 / f64::from(iterations);
    assert_eq!(hits, u64::from(iterations));
    println!("parsing a 3-cookie header and checking the position: {per:.0} ns per read");
}
