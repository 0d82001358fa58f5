//! What forwarding a write costs: the same small JSON POST sent to the
//! primary's litegate directly, and to a replica's litegate that forwards it
//! to the primary (replica → primary → app), in alternating rounds. One
//! connection, so the figures are latency, not throughput.
//!
//!     cargo bench --bench forward_hop
//!
//! BENCH_SECONDS (default 5), BENCH_ROUNDS (default 2).

mod common;

use common::{alternate, free_addr, load_runtime, start_litegate, start_upstream, Scratch};
use http::Method;

fn main() {
    if common::skip_unless_benchmarking() {
        return;
    }
    let seconds = common::env_num("BENCH_SECONDS", 5);
    let rounds = common::env_num("BENCH_ROUNDS", 2);
    let upstream = start_upstream();
    let scratch = Scratch::new("forward-hop");
    let secret = scratch.0.join("secret");
    std::fs::write(&secret, "bench-secret-0123456789abcdef\n").expect("secret");

    let nodes: Vec<_> = (1..=2)
        .map(|i| (i, free_addr(), free_addr(), free_addr()))
        .collect();
    let peers: Vec<String> = nodes
        .iter()
        .map(|(i, public, _, cluster)| {
            format!("{{ id = {i}, name = \"n{i}\", cluster = \"{cluster}\", public_url = \"http://{public}\" }}")
        })
        .collect();
    let mut running = Vec::new();
    for (i, public, admin, cluster) in &nodes {
        let config = scratch.0.join(format!("n{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[node]\nid = {i}\nname = \"n{i}\"\n[public]\nlisten = \"{public}\"\n[upstream]\nurl = \"http://{upstream}\"\n\
                 [primary]\nmode = \"static\"\nstatic = \"n1\"\n[admin]\nlisten = \"{admin}\"\n\
                 [cluster]\nlisten = \"{cluster}\"\ndata_dir = \"{data}\"\nsecret_file = \"{secret}\"\npeers = [{peers}]\n",
                data = scratch.0.join(format!("n{i}-data")).display(),
                secret = secret.display(),
                peers = peers.join(", "),
            ),
        )
        .expect("config");
        let args = [
            "run".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
        ];
        running.push(start_litegate(&args, &[], *public));
    }
    let (primary, replica) = (nodes[0].1, nodes[1].1);
    let rt = load_runtime();

    let mut totals =
        alternate(&rt, &[primary, replica], 1, seconds, rounds, &Method::POST).into_iter();
    let (mut direct, mut forwarded) = (
        totals.next().expect("primary"),
        totals.next().expect("replica"),
    );
    println!("forward_hop: POST (16-byte JSON), 1 connection, {rounds} rounds x {seconds}s per side, alternating");
    println!(
        "{:<26} {:>10} {:>9} {:>9}   rounds (req/s)",
        "path", "req/s", "p50 µs", "p99 µs"
    );
    let mut rows = Vec::new();
    for (name, t) in [
        ("primary -> app", &mut direct),
        ("replica -> primary -> app", &mut forwarded),
    ] {
        let (p50, p99) = (t.percentile(0.5), t.percentile(0.99));
        println!(
            "{name:<22} {:>10.0} {p50:>9.0} {p99:>9.0}   {}",
            t.rps(),
            t.rounds()
        );
        rows.push((p50, p99));
    }
    println!(
        "  -> the forward hop adds p50 {:+.0} µs, p99 {:+.0} µs; latency ratio p50 {:.2}",
        rows[1].0 - rows[0].0,
        rows[1].1 - rows[0].1,
        rows[1].0 / rows[0].0
    );
    drop(running);
}
