//! The benchmarks' load tool, for what wrk does not do here.
//!
//! `rate`: open-loop load at a fixed request rate over keep-alive
//! connections, one thread each. Each request has a scheduled send time;
//! its latency is measured from that time, not from when it could actually
//! be sent, so a stall is charged to every request it delays (the
//! correction for coordinated omission that wrk2 makes). Prints one JSON
//! line.
//!
//!     bench-load rate --target 127.0.0.1:8080 --rate 5000 --conns 32 --seconds 10 [--method POST]
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
    let mode = a.next().expect("mode: rate or hold");
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

fn rate(a: Args) {
    // Each connection owns every conns-th slot of the schedule.
    let interval = Duration::from_secs_f64(a.conns as f64 / a.rate);
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + Duration::from_secs_f64(a.seconds);
    let threads: Vec<_> = (0..a.conns)
        .map(|c| {
            let (target, post, conns) = (a.target, a.post, a.conns);
            std::thread::spawn(move || {
                let mut conn = Blocking::connect(target).expect("connect");
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut due = start + interval.mul_f64(c as f64 / conns as f64);
                while due < end {
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    match conn.request(post) {
                        Ok(()) => latencies
                            .push(u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX)),
                        Err(_) => {
                            errors += 1;
                            if let Ok(c) = Blocking::connect(target) {
                                conn = c;
                            }
                        }
                    }
                    due += interval;
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in threads {
        let (l, e) = t.join().expect("load thread");
        all.extend(l);
        errors += e;
    }
    all.sort_unstable();
    println!(
        "{{\"requests\":{},\"errors\":{errors},\"rate\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
        all.len(),
        a.rate,
        pct(&all, 0.5),
        pct(&all, 0.9),
        pct(&all, 0.99),
        pct(&all, 0.999),
        all.last().copied().unwrap_or(0)
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
        other => panic!("unknown mode {other}: rate or hold"),
    }
}
