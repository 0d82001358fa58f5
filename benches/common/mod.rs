//! What the benchmarks share: a minimal upstream, litegate processes, a
//! closed-loop load generator, and latency percentiles.

#![allow(dead_code)] // each bench uses its own part of this

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `cargo test --benches` runs benches with --test/--list; measure only
/// under `cargo bench`.
pub fn skip_unless_benchmarking() -> bool {
    std::env::args().any(|a| a == "--test" || a == "--list")
}

/// Runs `serve` on its own thread with a one-thread runtime, for every
/// connection accepted on a fresh loopback port; returns that port.
pub fn serve_on_thread<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(stream));
            }
        });
    });
    addr
}

/// A minimal upstream: 200 with a short body, keep-alive, one thread so it
/// leaves the other core to the proxy and the load.
pub fn start_upstream() -> SocketAddr {
    serve_on_thread(|stream| async move {
        let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
            // Drain a write's body, as an app would.
            let _ = req.into_body().collect().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                b"hello from upstream\n",
            ))))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    })
}

pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A litegate process, killed when dropped.
pub struct Litegate(Child);

impl Drop for Litegate {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn start_litegate(args: &[String], env: &[(&str, String)], wait_for: SocketAddr) -> Litegate {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_litegate"));
    cmd.args(args)
        .env("LITEGATE_LOG", "warn")
        .stdout(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Ok(n) = std::env::var("BENCH_LITEGATE_THREADS") {
        cmd.env("TOKIO_WORKER_THREADS", n);
    }
    let guard = Litegate(cmd.spawn().expect("start litegate"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(wait_for).is_err() {
        assert!(
            Instant::now() < deadline,
            "litegate did not start listening on {wait_for}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    guard
}

/// A scratch directory for configs and data, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("litegate-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Default)]
pub struct Totals {
    pub requests: usize,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
    pub per_round_rps: Vec<f64>,
}

impl Totals {
    pub fn add(&mut self, requests: usize, elapsed: Duration, latencies_us: Vec<u32>) {
        self.per_round_rps
            .push(requests as f64 / elapsed.as_secs_f64());
        self.requests += requests;
        self.elapsed += elapsed;
        self.latencies_us.extend(latencies_us);
    }

    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile(&mut self, p: f64) -> f64 {
        self.latencies_us.sort_unstable();
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[idx])
    }

    pub fn rounds(&self) -> String {
        self.per_round_rps
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `conns` keep-alive connections, each sending `method` requests (with a
/// small body for writes) back to back for `length`.
pub async fn round(
    target: SocketAddr,
    conns: usize,
    length: Duration,
    method: Method,
    totals: &mut Totals,
) {
    let started = Instant::now();
    let deadline = started + length;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let method = method.clone();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(target).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let body = if method == Method::GET {
                Bytes::new()
            } else {
                Bytes::from_static(b"{\"text\":\"bench\"}")
            };
            let mut latencies = Vec::with_capacity(200_000);
            while Instant::now() < deadline {
                let req = Request::builder()
                    .method(method.clone())
                    .uri("/bench")
                    .header("host", "bench.test")
                    .header("content-type", "application/json")
                    .body(Full::new(body.clone()))
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
    totals.add(latencies_us.len(), started.elapsed(), latencies_us);
}

/// One thread for the load, like wrk with -t1: no cross-thread wake-ups
/// inflate the client's own share of the latency.
pub fn load_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A short warm-up of each target, then `rounds` rounds of `seconds` each,
/// alternating between the targets (A B A B) so drift falls on all alike.
pub fn alternate(
    rt: &tokio::runtime::Runtime,
    targets: &[SocketAddr],
    conns: usize,
    seconds: u64,
    rounds: u64,
    method: &Method,
) -> Vec<Totals> {
    let mut warm = Totals::default();
    for target in targets {
        rt.block_on(round(
            *target,
            conns,
            Duration::from_millis(500),
            method.clone(),
            &mut warm,
        ));
    }
    let mut totals: Vec<Totals> = targets.iter().map(|_| Totals::default()).collect();
    for _ in 0..rounds {
        for (target, total) in targets.iter().zip(totals.iter_mut()) {
            rt.block_on(round(
                *target,
                conns,
                Duration::from_secs(seconds),
                method.clone(),
                total,
            ));
        }
    }
    totals
}
