//! What litegate adds to a GET: the same load against the same upstream,
//! directly and through `litegate dev`, in alternating rounds (A B A B) so
//! drift on a noisy machine shows. Prints requests/s and p50/p99 latency at 1
//! and 32 connections, and the ratios.
//!
//!     cargo bench --bench proxy_overhead
//!
//! BENCH_SECONDS (default 5) sets each round's length; BENCH_ROUNDS (default
//! 2) how many rounds each side gets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A minimal upstream: 200 with a short body, keep-alive, one worker thread
/// so it leaves the other core to the proxy and the load.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind upstream");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                            b"hello from upstream\n",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().expect("upstream address")
}

/// A one-byte TCP echo in its own thread: the floor under any HTTP round trip
/// between two threads on this machine.
fn start_tcp_echo() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let mut b = [0u8; 1];
                    while stream.read_exact(&mut b).await.is_ok() {
                        if stream.write_all(&b).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    });
    rx.recv().expect("echo address")
}

async fn tcp_floor(target: SocketAddr, length: Duration) -> Totals {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(target).await.expect("connect echo");
    stream.set_nodelay(true).expect("nodelay");
    let started = Instant::now();
    let mut latencies_us = Vec::new();
    let mut b = [7u8; 1];
    while started.elapsed() < length {
        let t = Instant::now();
        stream.write_all(&b).await.expect("write");
        stream.read_exact(&mut b).await.expect("read");
        latencies_us.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    let mut totals = Totals::default();
    totals.add(RoundResult {
        requests: latencies_us.len(),
        elapsed: started.elapsed(),
        latencies_us,
    });
    totals
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

struct Litegate(Child);

impl Drop for Litegate {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_litegate(upstream: SocketAddr) -> (Litegate, SocketAddr) {
    let (public, admin) = (free_addr(), free_addr());
    let child = Command::new(env!("CARGO_BIN_EXE_litegate"))
        .args(["dev", "--upstream", &format!("http://{upstream}")])
        .args([
            "--listen",
            &public.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .env("LITEGATE_LOG", "warn")
        .envs(
            std::env::var("BENCH_LITEGATE_THREADS")
                .ok()
                .map(|n| ("TOKIO_WORKER_THREADS", n)),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start litegate");
    let guard = Litegate(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(public).is_err() {
        assert!(
            Instant::now() < deadline,
            "litegate did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (guard, public)
}

struct RoundResult {
    requests: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

/// `conns` keep-alive connections, each sending GETs back to back.
async fn round(target: SocketAddr, conns: usize, length: Duration) -> RoundResult {
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(target).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(200_000);
            while Instant::now() < deadline {
                let req = Request::get("/bench")
                    .header("host", "bench.test")
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let t = Instant::now();
                let resp = send.send_request(req).await.expect("response");
                assert!(resp.status().is_success(), "status {}", resp.status());
                resp.into_body().collect().await.expect("body");
                latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
            }
            latencies
        }));
    }
    let mut latencies_us = Vec::new();
    for t in tasks {
        latencies_us.extend(t.await.expect("load task"));
    }
    RoundResult {
        requests: latencies_us.len(),
        elapsed: started.elapsed(),
        latencies_us,
    }
}

#[derive(Default)]
struct Totals {
    requests: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    per_round_rps: Vec<f64>,
}

impl Totals {
    fn add(&mut self, r: RoundResult) {
        self.per_round_rps
            .push(r.requests as f64 / r.elapsed.as_secs_f64());
        self.requests += r.requests;
        self.elapsed += r.elapsed;
        self.latencies_us.extend(r.latencies_us);
    }
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[idx])
    }
}

fn main() {
    // `cargo test --benches` runs benches with --test-ish flags; only measure
    // under `cargo bench`.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let seconds = env_num("BENCH_SECONDS", 5);
    let rounds = env_num("BENCH_ROUNDS", 2);
    let upstream = start_upstream();
    let (_litegate, proxy) = start_litegate(upstream);
    // One thread for the load, like wrk with -t1: no cross-thread wake-ups
    // inflate the client's own share of the latency.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    println!("proxy_overhead: GET, keep-alive, {rounds} rounds x {seconds}s per side, alternating");
    println!(
        "{:<10} {:>5} {:>12} {:>9} {:>9}   rounds (req/s)",
        "target", "conns", "req/s", "p50 µs", "p99 µs"
    );
    let mut floor = rt.block_on(tcp_floor(start_tcp_echo(), Duration::from_secs(2)));
    println!(
        "{:<10} {:>5} {:>12.0} {:>9.0} {:>9.0}   (1-byte TCP ping-pong between threads: this machine's floor)",
        "tcp-floor",
        1,
        floor.rps(),
        floor.percentile(0.50),
        floor.percentile(0.99)
    );
    for conns in [1usize, 32] {
        // A short warm-up fills the pools and the page cache.
        rt.block_on(round(upstream, conns, Duration::from_millis(500)));
        rt.block_on(round(proxy, conns, Duration::from_millis(500)));
        let (mut direct, mut via) = (Totals::default(), Totals::default());
        for _ in 0..rounds {
            direct.add(rt.block_on(round(upstream, conns, Duration::from_secs(seconds))));
            via.add(rt.block_on(round(proxy, conns, Duration::from_secs(seconds))));
        }
        let rows = [("direct", &mut direct), ("litegate", &mut via)];
        let mut summary = Vec::new();
        for (name, t) in rows {
            let (p50, p99, rps) = (t.percentile(0.50), t.percentile(0.99), t.rps());
            let per_round: Vec<String> =
                t.per_round_rps.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "{name:<10} {conns:>5} {rps:>12.0} {p50:>9.0} {p99:>9.0}   {}",
                per_round.join(" ")
            );
            summary.push((rps, p50, p99));
        }
        let (d, l) = (summary[0], summary[1]);
        println!(
            "  -> conns={conns}: litegate/direct throughput {:.2}; added p50 {:+.0} µs, added p99 {:+.0} µs",
            l.0 / d.0,
            l.1 - d.1,
            l.2 - d.2
        );
    }
}
