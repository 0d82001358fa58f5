//! The benchmarks' load tool, for what wrk does not do here.
//!
//! `rate`: open-loop load at a fixed request rate over keep-alive
//! connections, one thread each. Each request has a scheduled send time;
//! its latency is measured from that time, not from when it could actually
//! be sent, so a stall is charged to every request it delays (the
//! correction for coordinated omission that wrk2 makes). Prints one JSON
//! line. Besides the percentiles of every request, it reports the "stall
//! windows" (spans in which at least three quarters of the connections
//! were each more than 1 ms late at once, i.e. the whole machine or the
//! whole proxy stood still) and the percentiles of the requests outside
//! them: on a shared 2-vCPU machine a few such windows decide p99.9, and
//! their number varies from run to run (docs/performance.md).
//!
//!     bench-load rate --target 127.0.0.1:8080 --rate 5000 --conns 32 --seconds 10 [--method POST]
//!
//! `spin`: a busy loop that counts the gaps over 2 ms between two reads of
//! the clock, i.e. the times its CPU was taken from it. Run pinned, on one
//! core and then on every core at once, it shows whether the machine's
//! host pauses its vCPUs when they are all busy.
//!
//!     bench-load spin --seconds 5
//!
//! `hold`: opens N keep-alive connections, sends one GET on each, prints
//! `ready N` and keeps them open until stdin closes.
//!
//!     bench-load hold --target 127.0.0.1:8080 --conns 10000

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

struct Args {
    mode: String,
    target: SocketAddr,
    rate: f64,
    conns: usize,
    seconds: f64,
    post: bool,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let mode = a.next().expect("mode: rate, hold or spin");
    let mut out = Args {
        mode,
        target: "127.0.0.1:8080".parse().expect("addr"),
        rate: 1000.0,
        conns: 1,
        seconds: 10.0,
        post: false,
    };
    while let Some(flag) = a.next() {
        let mut value = || a.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => out.target = value().parse().expect("--target HOST:PORT"),
            "--rate" => out.rate = value().parse().expect("--rate N"),
            "--conns" => out.conns = value().parse().expect("--conns N"),
            "--seconds" => out.seconds = value().parse().expect("--seconds S"),
            "--method" => out.post = value().eq_ignore_ascii_case("POST"),
            other => panic!("unknown flag {other}"),
        }
    }
    out
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(target: SocketAddr) -> std::io::Result<Sender> {
    let stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

async fn request(send: &mut Sender, post: bool) -> Result<(), String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let (method, body) = if post {
        ("POST", Bytes::from_static(b"{\"text\":\"bench\"}"))
    } else {
        ("GET", Bytes::new())
    };
    let req = Request::builder()
        .method(method)
        .uri("/bench")
        .header("host", "bench.test")
        .header("content-type", "application/json")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let ok = resp.status().is_success();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    if ok {
        Ok(())
    } else {
        Err("non-2xx".into())
    }
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One blocking keep-alive HTTP/1.1 connection. The schedule needs
/// microsecond sleeps, which tokio's millisecond timer cannot give.
struct Blocking {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Blocking {
    fn connect(target: SocketAddr) -> std::io::Result<Self> {
        let stream = std::net::TcpStream::connect(target)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    fn request(&mut self, post: bool) -> std::io::Result<()> {
        use std::io::Write;
        let req: &[u8] = if post {
            b"POST /bench HTTP/1.1\r\nHost: bench.test\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"text\":\"bench\"}"
        } else {
            b"GET /bench HTTP/1.1\r\nHost: bench.test\r\n\r\n"
        };
        self.stream.write_all(req)?;
        // Read the head, then exactly Content-Length bytes of body.
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).map_err(std::io::Error::other)?;
                if !head.starts_with("HTTP/1.1 2") {
                    return Err(std::io::Error::other(
                        head.lines().next().unwrap_or("").to_owned(),
                    ));
                }
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse())
                    })
                    .ok_or_else(|| std::io::Error::other("no content-length"))?
                    .map_err(std::io::Error::other)?;
                let mut have = self.buf.len() - end - 4;
                while have < length {
                    let n = self.stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(std::io::Error::other("closed"));
                    }
                    have += n;
                }
                return Ok(());
            }
        }
    }
}

/// When a request was due and when its answer was complete, in
/// nanoseconds since the schedule's start, and its connection.
#[derive(Clone, Copy)]
struct Sample {
    conn: usize,
    due: u64,
    done: u64,
}

impl Sample {
    fn latency_us(&self) -> u64 {
        self.done.saturating_sub(self.due) / 1_000
    }
}

/// Late by more than this, a request counts towards a stall window.
const LATE_NS: u64 = 1_000_000;

/// Spans in which at least three quarters of the connections each had a
/// request in flight that ended more than `LATE_NS` after it was due.
fn stall_windows(samples: &[Sample], conns: usize) -> Vec<(u64, u64)> {
    let quorum = (conns * 3).div_ceil(4).max(1);
    let mut edges: Vec<(u64, i32, usize)> = samples
        .iter()
        .filter(|s| s.done.saturating_sub(s.due) > LATE_NS)
        .flat_map(|s| [(s.due, 1, s.conn), (s.done, -1, s.conn)])
        .collect();
    // Ends before starts at one instant, so touching intervals do not overlap.
    edges.sort_unstable_by_key(|&(t, delta, _)| (t, delta));
    let mut late_per_conn = vec![0i32; conns];
    let mut late_conns = 0;
    let mut windows = Vec::new();
    let mut opened = None;
    for (t, delta, conn) in edges {
        let before = late_per_conn[conn];
        late_per_conn[conn] += delta;
        match (before, late_per_conn[conn]) {
            (0, 1) => late_conns += 1,
            (1, 0) => late_conns -= 1,
            _ => {}
        }
        match opened {
            None if late_conns >= quorum => opened = Some(t),
            Some(start) if late_conns < quorum => {
                windows.push((start, t));
                opened = None;
            }
            _ => {}
        }
    }
    windows
}

fn rate(a: Args) {
    // Each connection owns every conns-th slot of the schedule.
    let interval = Duration::from_secs_f64(a.conns as f64 / a.rate);
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + Duration::from_secs_f64(a.seconds);
    let since_start = move |t: Instant| {
        u64::try_from(t.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
    };
    let threads: Vec<_> = (0..a.conns)
        .map(|c| {
            let (target, post, conns) = (a.target, a.post, a.conns);
            std::thread::spawn(move || {
                let mut conn = Blocking::connect(target).expect("connect");
                let mut samples = Vec::new();
                let mut errors = 0u64;
                let mut due = start + interval.mul_f64(c as f64 / conns as f64);
                while due < end {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    match conn.request(post) {
                        Ok(()) => samples.push(Sample {
                            conn: c,
                            due: since_start(due),
                            done: since_start(Instant::now()),
                        }),
                        Err(_) => {
                            errors += 1;
                            if let Ok(c) = Blocking::connect(target) {
                                conn = c;
                            }
                        }
                    }
                    due += interval;
                }
                (samples, errors)
            })
        })
        .collect();
    let (mut samples, mut errors) = (Vec::new(), 0);
    for t in threads {
        let (s, e) = t.join().expect("load thread");
        samples.extend(s);
        errors += e;
    }
    samples.sort_unstable_by_key(|s| s.due);
    let windows = stall_windows(&samples, a.conns);
    let mut all: Vec<u64> = samples.iter().map(Sample::latency_us).collect();
    let mut outside = Vec::with_capacity(samples.len());
    let mut next_window = 0;
    for s in &samples {
        // Samples are in due order, so a window that ended before this
        // one was due ends before every later one too.
        while next_window < windows.len() && windows[next_window].1 < s.due {
            next_window += 1;
        }
        let touched = windows[next_window..]
            .iter()
            .take_while(|w| w.0 <= s.done)
            .any(|w| w.1 >= s.due);
        if !touched {
            outside.push(s.latency_us());
        }
    }
    all.sort_unstable();
    outside.sort_unstable();
    let stall_us: u64 = windows.iter().map(|w| (w.1 - w.0) / 1_000).sum();
    let longest_us = windows
        .iter()
        .map(|w| (w.1 - w.0) / 1_000)
        .max()
        .unwrap_or(0);
    println!(
        "{{\"requests\":{},\"errors\":{errors},\"rate\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\
         \"stall_windows\":{},\"stall_us\":{stall_us},\"longest_stall_us\":{longest_us},\"stalled_requests\":{},\
         \"outside_p50_us\":{},\"outside_p99_us\":{},\"outside_p999_us\":{}}}",
        all.len(),
        a.rate,
        pct(&all, 0.5),
        pct(&all, 0.9),
        pct(&all, 0.99),
        pct(&all, 0.999),
        all.last().copied().unwrap_or(0),
        windows.len(),
        all.len() - outside.len(),
        pct(&outside, 0.5),
        pct(&outside, 0.99),
        pct(&outside, 0.999),
    );
}

/// Spins for `seconds`, counting the gaps over 2 ms between two reads of
/// the clock.
fn spin(a: Args) {
    const GAP: Duration = Duration::from_millis(2);
    let end = Instant::now() + Duration::from_secs_f64(a.seconds);
    let (mut gaps, mut longest, mut taken) = (0u64, Duration::ZERO, Duration::ZERO);
    let mut last = Instant::now();
    while last < end {
        let now = Instant::now();
        let gap = now - last;
        if gap > GAP {
            gaps += 1;
            taken += gap;
            longest = longest.max(gap);
        }
        last = now;
    }
    println!(
        "{{\"seconds\":{},\"gaps_over_2ms\":{gaps},\"longest_gap_us\":{},\"taken_us\":{}}}",
        a.seconds,
        longest.as_micros(),
        taken.as_micros()
    );
}

async fn hold(a: Args) {
    let mut held = Vec::with_capacity(a.conns);
    let mut opening = tokio::task::JoinSet::new();
    for i in 0..a.conns {
        let target = a.target;
        opening.spawn(async move {
            // Stagger a little so the listener's backlog is not the test.
            tokio::time::sleep(Duration::from_micros((i % 500) as u64 * 20)).await;
            let mut send = connect(target).await?;
            request(&mut send, false)
                .await
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(send)
        });
    }
    let mut failed = 0;
    while let Some(result) = opening.join_next().await {
        match result {
            Ok(Ok(send)) => held.push(send),
            _ => failed += 1,
        }
    }
    println!("ready {} failed {failed}", held.len());
    // Hold until the orchestrator closes stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = [0u8; 64];
        while std::io::stdin()
            .read(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await;
    drop(held);
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match a.mode.as_str() {
        "rate" => rate(a),
        "hold" => rt.block_on(hold(a)),
        "spin" => spin(a),
        other => panic!("unknown mode {other}: rate, hold or spin"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn sample(conn: usize, due_ms: u64, done_ms: u64) -> Sample {
        Sample {
            conn,
            due: due_ms * MS,
            done: done_ms * MS,
        }
    }

    #[test]
    fn a_window_needs_three_quarters_of_the_connections_late_at_once() {
        // Four connections: three late together from 12 ms to 14 ms make a
        // window; two late together later do not.
        let samples = [
            sample(0, 10, 14),
            sample(1, 11, 15),
            sample(2, 12, 18),
            sample(3, 12, 12),
            sample(0, 30, 35),
            sample(1, 31, 35),
        ];
        assert_eq!(stall_windows(&samples, 4), vec![(12 * MS, 14 * MS)]);
    }

    #[test]
    fn requests_late_by_at_most_the_threshold_make_no_window() {
        let samples: Vec<_> = (0..4).map(|c| sample(c, 5, 6)).collect();
        assert!(stall_windows(&samples, 4).is_empty());
    }

    #[test]
    fn two_late_requests_on_one_connection_count_it_once() {
        // Connection 0's two overlapping late requests must not stand in
        // for a second connection.
        let samples = [sample(0, 0, 10), sample(0, 2, 12), sample(1, 3, 9)];
        assert_eq!(stall_windows(&samples, 2), vec![(3 * MS, 9 * MS)]);
    }
}
