//! Prometheus metrics (docs/design.md §8): names, help texts, buckets, and the
//! recorder, rendered by the admin listener rather than a listener of its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "litegate_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "litegate_http_request_duration_seconds";
pub const OPEN_CONNECTIONS: &str = "litegate_open_connections";
pub const UPSTREAM_UP: &str = "litegate_upstream_up";
pub const IS_PRIMARY: &str = "litegate_is_primary";
pub const BUILD_INFO: &str = "litegate_build_info";
pub const FORWARD_DURATION_SECONDS: &str = "litegate_forward_duration_seconds";
pub const FORWARD_RETRIES_TOTAL: &str = "litegate_forward_retries_total";
pub const PRIMARY_CHANGES_TOTAL: &str = "litegate_primary_changes_total";
pub const RAFT_TERM: &str = "litegate_raft_term";
pub const RAFT_LAST_QUORUM_ACK_SECONDS: &str = "litegate_raft_last_quorum_ack_seconds";
pub const LEASE_HELD: &str = "litegate_lease_held";
pub const LEASE_LOCK_INDEX: &str = "litegate_lease_lock_index";
pub const LEASE_SESSIONS: &str = "litegate_lease_sessions";
pub const CONSISTENCY_WAIT_SECONDS: &str = "litegate_consistency_wait_seconds";
pub const CONSISTENCY_WAIT_TIMEOUTS_TOTAL: &str = "litegate_consistency_wait_timeouts_total";

/// From a loopback round trip (~50 µs) to a slow page (a minute).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// How a request was answered, the `route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Served by this node's app.
    Local,
    /// Streamed to the primary's litegate and served by its app.
    Forwarded,
    /// Answered `409 fly-replay` for Fly.io's edge to replay.
    Replayed,
    /// Answered `307` to the primary's public URL.
    Redirected,
    /// Refused by litegate before any app saw it.
    Rejected,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Forwarded => "forwarded",
            Route::Replayed => "replayed",
            Route::Redirected => "redirected",
            Route::Rejected => "rejected",
        }
    }
}

/// Installs the process-wide recorder. Called once, at start.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let upkeep = handle.clone();
    // Histograms are drained into their buckets on upkeep; without it they
    // grow between scrapes.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn describe() {
    describe_histogram!(
        CONSISTENCY_WAIT_SECONDS,
        Unit::Seconds,
        "How long reads with a __txid cookie waited for this replica to catch up."
    );
    describe_counter!(
        CONSISTENCY_WAIT_TIMEOUTS_TOTAL,
        "Reads whose __txid this replica did not reach within consistency.wait_timeout."
    );
    describe_counter!(
        FORWARD_RETRIES_TOTAL,
        "Forwarded writes sent again because nothing of them reached an app (unreachable or 421 not-primary)."
    );
    describe_counter!(
        PRIMARY_CHANGES_TOTAL,
        "Times this node's view of the primary changed."
    );
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "Requests answered, by class, route and status class."
    );
    describe_gauge!(
        OPEN_CONNECTIONS,
        "Client connections open on the public listener."
    );
    describe_gauge!(UPSTREAM_UP, "1 when the local app accepts connections.");
    describe_gauge!(IS_PRIMARY, "1 when this node's app takes writes.");
    describe_gauge!(RAFT_TERM, "The Raft term this node is at (raft mode).");
    describe_gauge!(
        RAFT_LAST_QUORUM_ACK_SECONDS,
        Unit::Seconds,
        "On the Raft leader: seconds since a quorum last acknowledged it; -1 elsewhere."
    );
    describe_gauge!(
        LEASE_HELD,
        "1 when this node's LiteFS holds the lease served from litegate's Raft ([lease])."
    );
    describe_gauge!(
        LEASE_LOCK_INDEX,
        "The lock index of LiteFS's lease key (it grows with every new holder); 0 while nobody holds it."
    );
    describe_gauge!(
        LEASE_SESSIONS,
        "Live lease sessions in litegate's Raft state."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
}

/// The request counters and histograms, resolved once: looking a labelled
/// metric up by name hashes its key and builds its labels on every request
/// otherwise.
struct RequestMetrics {
    /// By class, route and status class; each made on its first use, so
    /// `/metrics` lists only combinations that happened.
    counters: Vec<OnceLock<Counter>>,
    /// By class.
    durations: Vec<FixedHistogram>,
    forward: FixedHistogram,
}

const CLASSES: [&str; 4] = ["read", "write", "local", "websocket"];
const ROUTES: [Route; 5] = [
    Route::Local,
    Route::Forwarded,
    Route::Replayed,
    Route::Redirected,
    Route::Rejected,
];
const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Filled on first use, which is after `install` (handles made before the
/// recorder exists would record nowhere).
static REQUEST_METRICS: OnceLock<RequestMetrics> = OnceLock::new();

fn request_metrics() -> &'static RequestMetrics {
    REQUEST_METRICS.get_or_init(|| {
        let counters = (0..CLASSES.len() * ROUTES.len() * CODES.len())
            .map(|_| OnceLock::new())
            .collect();
        let durations = CLASSES
            .iter()
            .map(|class| FixedHistogram::new(class))
            .collect();
        RequestMetrics {
            counters,
            durations,
            forward: FixedHistogram::new(""),
        }
    })
}

pub fn record_request(class: &'static str, route: Route, status: u16, elapsed: Duration) {
    let code = match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    };
    let class = CLASSES.iter().position(|c| *c == class).unwrap_or(0);
    let route = ROUTES.iter().position(|r| *r == route).unwrap_or(0);
    let m = request_metrics();
    m.counters[(class * ROUTES.len() + route) * CODES.len() + code]
        .get_or_init(|| {
            counter!(HTTP_REQUESTS_TOTAL, "class" => CLASSES[class], "route" => ROUTES[route].as_str(), "code" => CODES[code])
        })
        .increment(1);
    m.durations[class].record(elapsed);
}

pub fn set_open_connections_delta(delta: f64) {
    gauge!(OPEN_CONNECTIONS).increment(delta);
}

pub fn set_upstream_up(up: bool) {
    gauge!(UPSTREAM_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn set_is_primary(primary: bool) {
    gauge!(IS_PRIMARY).set(if primary { 1.0 } else { 0.0 });
}

pub fn set_raft_term(term: u64) {
    gauge!(RAFT_TERM).set(term as f64);
}

pub fn set_raft_last_quorum_ack(age: Option<Duration>) {
    gauge!(RAFT_LAST_QUORUM_ACK_SECONDS).set(age.map_or(-1.0, |a| a.as_secs_f64()));
}

pub fn set_lease_gauges(held_here: bool, lock_index: u64, sessions: usize) {
    gauge!(LEASE_HELD).set(if held_here { 1.0 } else { 0.0 });
    gauge!(LEASE_LOCK_INDEX).set(lock_index as f64);
    gauge!(LEASE_SESSIONS).set(sessions as f64);
}

pub fn record_forward(elapsed: Duration) {
    request_metrics().forward.record(elapsed);
}

/// The hot-path latency histograms: counted straight into fixed buckets
/// with atomic adds. (The exporter's histograms keep every sample until an
/// upkeep pass sorts them into buckets; at tens of thousands of requests a
/// second that cost a tenth of the throughput and stalled the worker.)
struct FixedHistogram {
    /// The series' labels, e.g. `class="read"`; empty for none.
    labels: &'static str,
    /// Per bucket of `LATENCY_BUCKETS`, plus one for `+Inf`; not cumulative.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl FixedHistogram {
    fn new(class: &str) -> Self {
        let labels: &'static str = match class {
            "" => "",
            "read" => "class=\"read\"",
            "write" => "class=\"write\"",
            "local" => "class=\"local\"",
            _ => "class=\"websocket\"",
        };
        Self {
            labels,
            counts: (0..=LATENCY_BUCKETS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        // `le` is inclusive: the first bucket whose bound is >= the value.
        let bucket = LATENCY_BUCKETS.partition_point(|bound| *bound < secs);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        use std::fmt::Write as _;
        let sep = if self.labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = LATENCY_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(
                out,
                "{name}_bucket{{{}{sep}le=\"{le}\"}} {cumulative}",
                self.labels
            );
        }
        let braces = if self.labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", self.labels)
        };
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// The fixed histograms in Prometheus text format, for the admin listener
/// to append to the exporter's output. Series that saw nothing are left out.
pub fn render_fixed_histograms() -> String {
    let m = request_metrics();
    let mut out = String::new();
    let families: [(&str, &str, Vec<&FixedHistogram>); 2] = [
        (
            HTTP_REQUEST_DURATION_SECONDS,
            "Time from a request's arrival to its response head, by class.",
            m.durations.iter().collect(),
        ),
        (
            FORWARD_DURATION_SECONDS,
            "Time from forwarding a write to the primary's response head.",
            vec![&m.forward],
        ),
    ];
    for (name, help, series) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for h in series
            .iter()
            .filter(|h| h.counts.iter().any(|c| c.load(Ordering::Relaxed) > 0))
        {
            h.render(name, &mut out);
        }
        out.push('\n');
    }
    out
}

pub fn count_forward_retry() {
    counter!(FORWARD_RETRIES_TOTAL).increment(1);
}

pub fn count_primary_change() {
    counter!(PRIMARY_CHANGES_TOTAL).increment(1);
}

pub fn record_consistency_wait(elapsed: Duration, reached: bool) {
    histogram!(CONSISTENCY_WAIT_SECONDS).record(elapsed.as_secs_f64());
    if !reached {
        counter!(CONSISTENCY_WAIT_TIMEOUTS_TOTAL).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_histogram_is_cumulative_and_inclusive() {
        let h = FixedHistogram::new("read");
        h.record(Duration::from_micros(100)); // exactly on the first bound
        h.record(Duration::from_micros(300));
        h.record(Duration::from_secs(100)); // past every bound
        let mut out = String::new();
        h.render("x", &mut out);
        assert!(
            out.contains("x_bucket{class=\"read\",le=\"0.0001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{class=\"read\",le=\"0.0005\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{class=\"read\",le=\"60\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{class=\"read\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{class=\"read\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{class=\"read\"} 100.0004\n"), "{out}");
    }
}
