//! Raft failover and handoff, with the default timings (heartbeat 50 ms,
//! election timeout 150–300 ms), three real litegate nodes on loopback in
//! front of one upstream.
//!
//! - Failover: SIGKILL the leader, then time until the first write through
//!   a survivor succeeds (litegate holds it while the election runs).
//!   BENCH_TRIALS trials (default 20), each on a fresh cluster.
//! - Handoff: a steady stream of writes through every node while the
//!   leader hands off; the longest gap between successful writes and the
//!   number that failed. BENCH_HANDOFFS trials (default 5).
//!
//!     cargo bench --bench failover
//!
//! Targets: failover median ≤ 600 ms, max ≤ 1.5 s; handoff with 0 failed
//! writes and a gap ≤ 100 ms.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_addr, start_litegate, start_upstream, Litegate, Scratch};

struct Node {
    name: String,
    public: SocketAddr,
    admin: SocketAddr,
    process: Option<Litegate>,
}

fn main() {
    if common::skip_unless_benchmarking() {
        return;
    }
    let trials = common::env_num("BENCH_TRIALS", 20) as usize;
    let handoffs = common::env_num("BENCH_HANDOFFS", 5) as usize;
    let upstream = start_upstream();

    let mut failovers = Vec::new();
    for trial in 0..trials {
        let scratch = Scratch::new(&format!("failover-{trial}"));
        let mut nodes = start_cluster(&scratch, upstream);
        let leader = wait_for_leader(&nodes);
        let survivor = nodes
            .iter()
            .position(|n| n.name != leader)
            .expect("a survivor");
        assert_eq!(
            post(nodes[survivor].public, "/warm-up", Duration::from_secs(5)),
            Some(200)
        );
        let leader_at = nodes
            .iter()
            .position(|n| n.name == leader)
            .expect("the leader");
        let killed = Instant::now();
        drop(nodes[leader_at].process.take()); // SIGKILL
        loop {
            if post(
                nodes[survivor].public,
                "/after-kill",
                Duration::from_secs(10),
            ) == Some(200)
            {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "no write succeeded after the leader died"
            );
        }
        failovers.push(killed.elapsed());
        eprint!(".");
    }
    eprintln!();

    let mut gaps = Vec::new();
    let mut failed_total = 0;
    for trial in 0..handoffs {
        let scratch = Scratch::new(&format!("handoff-{trial}"));
        let nodes = start_cluster(&scratch, upstream);
        let leader = wait_for_leader(&nodes);
        let leader_admin = nodes
            .iter()
            .find(|n| n.name == leader)
            .expect("leader")
            .admin;
        let (gap, failed, sent) = handoff_under_load(&nodes, leader_admin);
        assert_ne!(wait_for_leader(&nodes), leader, "leadership did not move");
        gaps.push(gap);
        failed_total += failed;
        eprintln!(
            "handoff {}: {sent} writes, {failed} failed, longest gap {:.1} ms",
            trial + 1,
            ms(gap)
        );
    }

    failovers.sort();
    gaps.sort();
    println!("\nfailover: SIGKILL of the leader → first successful write through a survivor ({trials} trials)");
    println!(
        "  min {:.0} ms · median {:.0} ms · p90 {:.0} ms · max {:.0} ms   (targets: median ≤ 600 ms, max ≤ 1500 ms)",
        ms(failovers[0]),
        ms(percentile(&failovers, 0.5)),
        ms(percentile(&failovers, 0.9)),
        ms(failovers[failovers.len() - 1]),
    );
    println!("handoff under a steady write stream ({handoffs} trials)");
    println!(
        "  failed writes {failed_total} · longest gap min {:.1} ms · median {:.1} ms · max {:.1} ms   (targets: 0 failed, gap ≤ 100 ms)",
        ms(gaps[0]),
        ms(percentile(&gaps, 0.5)),
        ms(gaps[gaps.len() - 1]),
    );
}

fn start_cluster(scratch: &Scratch, upstream: SocketAddr) -> Vec<Node> {
    let secret = scratch.0.join("secret");
    std::fs::write(&secret, "bench-secret-0123456789abcdef\n").expect("secret");
    let planned: Vec<_> = (1..=3)
        .map(|i| (i, free_addr(), free_addr(), free_addr()))
        .collect();
    let peers: Vec<String> = planned
        .iter()
        .map(|(i, public, _, cluster)| {
            format!("{{ id = {i}, name = \"n{i}\", cluster = \"{cluster}\", public_url = \"http://{public}\" }}")
        })
        .collect();
    planned
        .iter()
        .map(|(i, public, admin, cluster)| {
            let config = scratch.0.join(format!("n{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[node]\nid = {i}\nname = \"n{i}\"\n[public]\nlisten = \"{public}\"\n\
                     [upstream]\nurl = \"http://{upstream}\"\n[primary]\nmode = \"raft\"\n\
                     [cluster]\nlisten = \"{cluster}\"\ndata_dir = \"{data}\"\nsecret_file = \"{secret}\"\n\
                     peers = [{peers}]\n[admin]\nlisten = \"{admin}\"\n",
                    data = scratch.0.join(format!("n{i}-data")).display(),
                    secret = secret.display(),
                    peers = peers.join(", "),
                ),
            )
            .expect("config");
            let mut args = vec!["run".to_owned(), "--config".to_owned(), config.display().to_string()];
            if *i == 1 {
                args.push("--bootstrap".to_owned());
            }
            Node {
                name: format!("n{i}"),
                public: *public,
                admin: *admin,
                process: Some(start_litegate(&args, &[], *public)),
            }
        })
        .collect()
}

/// The primary every live node names.
fn wait_for_leader(nodes: &[Node]) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let views: Vec<Option<String>> = nodes
            .iter()
            .filter(|n| n.process.is_some())
            .map(|n| {
                get(n.admin, "/status")
                    .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|s| s["primary"].as_str().map(str::to_owned))
            })
            .collect();
        if let Some(Some(first)) = views.first() {
            if views.iter().all(|v| v.as_deref() == Some(first.as_str())) {
                return first.clone();
            }
        }
        assert!(Instant::now() < deadline, "no leader agreed on: {views:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes through every node in turn from two threads for ~1.5 s, hands
/// off after 0.5 s; returns the longest gap between successful writes, the
/// failed count and the total.
fn handoff_under_load(nodes: &[Node], leader_admin: SocketAddr) -> (Duration, usize, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let targets: Vec<SocketAddr> = nodes.iter().map(|n| n.public).collect();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (stop, done, targets) = (Arc::clone(&stop), Arc::clone(&done), targets.clone());
            std::thread::spawn(move || {
                let mut i = w;
                while !stop.load(Ordering::Relaxed) {
                    let ok = post(
                        targets[i % targets.len()],
                        "/handoff-load",
                        Duration::from_secs(10),
                    ) == Some(200);
                    done.lock().expect("results").push((Instant::now(), ok));
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let answer = admin_post(leader_admin, "/handoff", Duration::from_secs(10));
    assert_eq!(answer, Some(200), "the handoff was refused");
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer");
    }
    let mut results = done.lock().expect("results").clone();
    results.sort_by_key(|(at, _)| *at);
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    let successes: Vec<Instant> = results
        .iter()
        .filter(|(_, ok)| *ok)
        .map(|(at, _)| *at)
        .collect();
    let gap = successes
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    (gap, failed, results.len())
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"),
        Duration::from_secs(2),
    )
    .and_then(|(status, body)| (status == 200).then_some(body))
}

fn post(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let body = "bench write";
    exchange(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
        timeout,
    )
    .map(|(status, _)| status)
}

/// An admin action, with the header the litegate CLI sends.
fn admin_post(addr: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    exchange(
        addr,
        &format!("POST {path} HTTP/1.1\r\nHost: bench\r\nLitegate-Admin: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        timeout,
    )
    .map(|(status, _)| status)
}

/// One request on a fresh connection; the status and body of the answer.
fn exchange(addr: SocketAddr, request: &str, timeout: Duration) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_nodelay(true).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
