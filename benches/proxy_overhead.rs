//! What litegate adds to a GET: the same load against the same upstream,
//! directly and through `litegate dev`, in alternating rounds (A B A B) so
//! drift on a noisy machine shows. Prints requests/s and p50/p99 latency at 1
//! and 32 connections, and the ratios; first, the machine's floor: a 1-byte
//! TCP ping-pong between two threads.
//!
//!     cargo bench --bench proxy_overhead
//!
//! BENCH_SECONDS (default 5) sets each round's length, BENCH_ROUNDS (default
//! 2) how many rounds each side gets, BENCH_LITEGATE_THREADS litegate's
//! worker threads (default: one per core).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{alternate, free_addr, load_runtime, start_litegate, start_upstream, Totals};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A one-byte TCP echo in its own thread.
fn start_tcp_echo() -> SocketAddr {
    common::serve_on_thread(|mut stream| async move {
        let mut b = [0u8; 1];
        while stream.read_exact(&mut b).await.is_ok() {
            if stream.write_all(&b).await.is_err() {
                return;
            }
        }
    })
}

async fn tcp_floor(target: SocketAddr, length: Duration) -> Totals {
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
    totals.add(latencies_us.len(), started.elapsed(), latencies_us);
    totals
}

fn main() {
    if common::skip_unless_benchmarking() {
        return;
    }
    let seconds = common::env_num("BENCH_SECONDS", 5);
    let rounds = common::env_num("BENCH_ROUNDS", 2);
    let upstream = start_upstream();
    let (public, admin) = (free_addr(), free_addr());
    let args = [
        "dev",
        "--upstream",
        &format!("http://{upstream}"),
        "--listen",
        &public.to_string(),
        "--admin",
        &admin.to_string(),
    ]
    .map(String::from);
    let _litegate = start_litegate(&args, &[], public);
    let rt = load_runtime();

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
        let mut totals = alternate(
            &rt,
            &[upstream, public],
            conns,
            seconds,
            rounds,
            &Method::GET,
        )
        .into_iter();
        let (mut direct, mut via) = (
            totals.next().expect("direct"),
            totals.next().expect("litegate"),
        );
        let mut summary = Vec::new();
        for (name, t) in [("direct", &mut direct), ("litegate", &mut via)] {
            let (p50, p99, rps) = (t.percentile(0.50), t.percentile(0.99), t.rps());
            println!(
                "{name:<10} {conns:>5} {rps:>12.0} {p50:>9.0} {p99:>9.0}   {}",
                t.rounds()
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
