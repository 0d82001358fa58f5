//! Prometheus metrics (docs/design.md §8): names, help texts, buckets, and the
//! recorder, rendered by the admin listener rather than a listener of its own.

mod process;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Unit,
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
pub use process::render as render_process;

pub const HTTP_REQUESTS_TOTAL: &str = "litegate_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "litegate_http_request_duration_seconds";
pub const ERRORS_TOTAL: &str = "litegate_errors_total";
pub const REQUESTS_IN_FLIGHT: &str = "litegate_requests_in_flight";
pub const REQUESTS_QUEUED: &str = "litegate_requests_queued";
pub const REQUEST_BYTES_TOTAL: &str = "litegate_request_bytes_total";
pub const RESPONSE_BYTES_TOTAL: &str = "litegate_response_bytes_total";
pub const WRITES_HELD: &str = "litegate_writes_held";
pub const OPEN_CONNECTIONS: &str = "litegate_open_connections";
pub const UPSTREAM_UP: &str = "litegate_upstream_up";
pub const IS_PRIMARY: &str = "litegate_is_primary";
pub const PRIMARY_KNOWN: &str = "litegate_primary_known";
pub const BUILD_INFO: &str = "litegate_build_info";
pub const FORWARD_DURATION_SECONDS: &str = "litegate_forward_duration_seconds";
pub const FORWARD_RETRIES_TOTAL: &str = "litegate_forward_retries_total";
pub const PRIMARY_CHANGES_TOTAL: &str = "litegate_primary_changes_total";
pub const PEER_UP: &str = "litegate_peer_up";
pub const PEER_LAST_SEEN_SECONDS: &str = "litegate_peer_last_seen_seconds";
pub const RAFT_TERM: &str = "litegate_raft_term";
pub const RAFT_IS_LEADER: &str = "litegate_raft_is_leader";
pub const RAFT_COMMITTED_INDEX: &str = "litegate_raft_committed_index";
pub const RAFT_LAST_QUORUM_ACK_SECONDS: &str = "litegate_raft_last_quorum_ack_seconds";
pub const LEASE_HELD: &str = "litegate_lease_held";
pub const LEASE_LOCK_INDEX: &str = "litegate_lease_lock_index";
pub const LEASE_SESSIONS: &str = "litegate_lease_sessions";
pub const LEASE_RELAY_STREAMS: &str = "litegate_lease_relay_streams";
pub const LEASE_RELAY_CLOSED_TOTAL: &str = "litegate_lease_relay_closed_total";
pub const RAFT_PEER_ACK_SECONDS: &str = "litegate_raft_peer_ack_seconds";
pub const LITEFS_API_UP: &str = "litegate_litefs_api_up";
pub const REPLICATION_LAG_SECONDS: &str = "litegate_replication_lag_seconds";
pub const CONSISTENCY_WAIT_SECONDS: &str = "litegate_consistency_wait_seconds";
pub const CONSISTENCY_WAIT_TIMEOUTS_TOTAL: &str = "litegate_consistency_wait_timeouts_total";

/// The values of the `reason` label: `none` for an answer an app gave,
/// else the `Litegate-Error` litegate answered with (docs/design.md §7).
pub const REASONS: [&str; 12] = [
    "none",
    "bad-request",
    "body-timeout",
    "method-not-allowed",
    "unauthorized",
    "not-primary",
    "headers-too-large",
    "upstream",
    "indeterminate",
    "no-primary",
    "timeout",
    "other",
];

/// From a loopback round trip (~50 µs) to a slow page (a minute).
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// How a request was answered, the `route` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// Who sent a request, the `origin` label: a client on the public
/// listener, or a peer's litegate forwarding a write on the cluster
/// listener. A forwarded write is counted on both nodes — `route="forwarded",
/// origin="client"` on the sender, `origin="peer"` on the primary — so
/// `sum(...{origin="client"})` counts each client request once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestOrigin {
    Client,
    Peer,
}

impl RequestOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOrigin::Client => "client",
            RequestOrigin::Peer => "peer",
        }
    }
}

/// Installs the process-wide recorder and makes every series that does not
/// depend on traffic, at zero, so `rate()` sees the first increase. Called
/// once, at start; `peers` are the other nodes' names. A witness has no
/// app, so no `upstream_up`.
pub fn install(peers: &[String], witness: bool) -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    describe();
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    register_at_zero(peers);
    if !witness {
        gauge!(UPSTREAM_UP).set(0.0);
    }
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

/// Series a dashboard or an alert reads, made before their first event.
/// Of `http_requests_total`, whose `code` is whatever an app answers, only
/// the commonest series (client reads and writes answered 200 here) is
/// made; `errors_total` has every `reason`.
fn register_at_zero(peers: &[String]) {
    for class in ["read", "write"] {
        counter!(
            HTTP_REQUESTS_TOTAL,
            "class" => class,
            "route" => Route::Local.as_str(),
            "origin" => RequestOrigin::Client.as_str(),
            "code" => "200",
            "reason" => REASONS[0],
        )
        .absolute(0);
    }
    for reason in &REASONS[1..] {
        counter!(ERRORS_TOTAL, "reason" => *reason).absolute(0);
    }
    for name in [
        FORWARD_RETRIES_TOTAL,
        PRIMARY_CHANGES_TOTAL,
        CONSISTENCY_WAIT_TIMEOUTS_TOTAL,
        REQUEST_BYTES_TOTAL,
        RESPONSE_BYTES_TOTAL,
    ] {
        counter!(name).absolute(0);
    }
    for name in [
        REQUESTS_IN_FLIGHT,
        REQUESTS_QUEUED,
        WRITES_HELD,
        OPEN_CONNECTIONS,
        IS_PRIMARY,
        PRIMARY_KNOWN,
        RAFT_TERM,
        RAFT_IS_LEADER,
        RAFT_COMMITTED_INDEX,
        RAFT_LAST_QUORUM_ACK_SECONDS,
        LITEFS_API_UP,
        REPLICATION_LAG_SECONDS,
    ] {
        gauge!(name).set(0.0);
    }
    for peer in peers {
        gauge!(PEER_UP, "peer" => peer.clone()).set(0.0);
        gauge!(PEER_LAST_SEEN_SECONDS, "peer" => peer.clone()).set(0.0);
        gauge!(RAFT_PEER_ACK_SECONDS, "peer" => peer.clone()).set(0.0);
    }
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
        "Times the primary this node knows of became a different node (a primary becoming unknown, or known again as the same node, is not a change)."
    );
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "Requests answered, by class, route, origin (client or peer), exact status code and reason (the Litegate-Error litegate answered with; none for an app's answer)."
    );
    describe_counter!(
        ERRORS_TOTAL,
        "Answers litegate gave itself, by their Litegate-Error reason."
    );
    describe_gauge!(
        REQUESTS_IN_FLIGHT,
        "Requests (client and forwarded) received and not yet answered with a response head."
    );
    describe_gauge!(
        REQUESTS_QUEUED,
        "Requests waiting for one of the upstream.max_concurrency turns at this node's app."
    );
    describe_counter!(
        REQUEST_BYTES_TOTAL,
        Unit::Bytes,
        "Body bytes received from clients on the public listener (not counted again on the primary a write is forwarded to)."
    );
    describe_counter!(
        RESPONSE_BYTES_TOTAL,
        Unit::Bytes,
        "Body bytes handed to clients on the public listener (after a 101 upgrade, the joined connection's bytes are not counted)."
    );
    describe_gauge!(
        WRITES_HELD,
        "Writes waiting for a primary to be known (or for this primary's lease), up to routing.primary_wait."
    );
    describe_gauge!(
        OPEN_CONNECTIONS,
        "Client connections open on the public listener."
    );
    describe_gauge!(UPSTREAM_UP, "1 when the local app accepts connections.");
    describe_gauge!(IS_PRIMARY, "1 when this node's app takes writes.");
    describe_gauge!(
        PRIMARY_KNOWN,
        "1 when this node knows a primary to send writes to."
    );
    describe_gauge!(
        PEER_UP,
        "1 when the peer answered this node's last 1 s poll on the cluster listener."
    );
    describe_gauge!(
        PEER_LAST_SEEN_SECONDS,
        Unit::Seconds,
        "Seconds since the peer last answered a poll; 0 until it first has."
    );
    describe_gauge!(RAFT_TERM, "The Raft term this node is at (raft mode).");
    describe_gauge!(
        RAFT_IS_LEADER,
        "1 on the Raft leader (raft mode); raft_last_quorum_ack_seconds and raft_peer_ack_seconds apply only there."
    );
    describe_gauge!(
        RAFT_COMMITTED_INDEX,
        "The highest Raft log index this node knows to be committed (raft mode)."
    );
    describe_gauge!(
        RAFT_LAST_QUORUM_ACK_SECONDS,
        Unit::Seconds,
        "On the Raft leader: seconds since a quorum last acknowledged it; 0 where raft_is_leader is 0."
    );
    describe_gauge!(
        RAFT_PEER_ACK_SECONDS,
        Unit::Seconds,
        "On the Raft leader: seconds since the peer last acknowledged it; 0 where raft_is_leader is 0."
    );
    describe_gauge!(
        LITEFS_API_UP,
        "1 while the LiteFS HTTP API is followed; 0 while litegate falls back to the .primary file (or does not use LiteFS)."
    );
    describe_gauge!(
        REPLICATION_LAG_SECONDS,
        Unit::Seconds,
        "With litefs.mount set: seconds since this node learned of a primary position it has not reached yet; 0 when caught up."
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
        LEASE_RELAY_STREAMS,
        "Connections the stream relay (lease.relay_listen) is carrying to the lease holder's LiteFS now."
    );
    describe_counter!(
        LEASE_RELAY_CLOSED_TOTAL,
        "Connections the stream relay closed, by reason: no-holder, holder-unknown, holder-unreachable, holder-changed, closed (by LiteFS), shutdown."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
}

/// The request counters by label set, made on first use (the `code` label
/// is open-ended) and then found by a read-locked lookup: building a
/// labelled metric's key on every request cost measurable throughput.
type CounterKey = (usize, Route, RequestOrigin, u16, usize);

struct RequestMetrics {
    counters: RwLock<HashMap<CounterKey, Counter>>,
    /// By class.
    durations: Vec<FixedHistogram>,
    forward: FixedHistogram,
    /// By reason; none for `none`, which is not an error.
    errors: Vec<Option<Counter>>,
    in_flight: Gauge,
    queued: Gauge,
    writes_held: Gauge,
    request_bytes: Counter,
    response_bytes: Counter,
}

const CLASSES: [&str; 4] = ["read", "write", "local", "websocket"];

/// Filled on first use, which is after `install` (handles made before the
/// recorder exists would record nowhere).
static REQUEST_METRICS: OnceLock<RequestMetrics> = OnceLock::new();

fn request_metrics() -> &'static RequestMetrics {
    REQUEST_METRICS.get_or_init(|| {
        let durations = CLASSES
            .iter()
            .map(|class| FixedHistogram::new(class))
            .collect();
        RequestMetrics {
            counters: RwLock::new(HashMap::new()),
            durations,
            forward: FixedHistogram::new(""),
            errors: REASONS
                .iter()
                .map(|reason| {
                    (*reason != "none").then(|| counter!(ERRORS_TOTAL, "reason" => *reason))
                })
                .collect(),
            in_flight: gauge!(REQUESTS_IN_FLIGHT),
            queued: gauge!(REQUESTS_QUEUED),
            writes_held: gauge!(WRITES_HELD),
            request_bytes: counter!(REQUEST_BYTES_TOTAL),
            response_bytes: counter!(RESPONSE_BYTES_TOTAL),
        }
    })
}

/// The index in [`REASONS`] of a `Litegate-Error` value (`None`: an app's
/// answer). A value this build does not know counts as `other`.
pub fn reason_index(litegate_error: Option<&[u8]>) -> usize {
    match litegate_error {
        None => 0,
        Some(value) => REASONS[1..]
            .iter()
            .position(|r| r.as_bytes() == value)
            .map_or(REASONS.len() - 1, |i| i + 1),
    }
}

pub fn record_request(
    class: &'static str,
    route: Route,
    origin: RequestOrigin,
    status: u16,
    reason: usize,
    elapsed: Duration,
) {
    let class = CLASSES.iter().position(|c| *c == class).unwrap_or(0);
    let reason = reason.min(REASONS.len() - 1);
    let m = request_metrics();
    let key = (class, route, origin, status, reason);
    let found = m
        .counters
        .read()
        .ok()
        .and_then(|counters| counters.get(&key).cloned());
    let counter = found.unwrap_or_else(|| {
        let counter = counter!(
            HTTP_REQUESTS_TOTAL,
            "class" => CLASSES[class],
            "route" => route.as_str(),
            "origin" => origin.as_str(),
            "code" => status.to_string(),
            "reason" => REASONS[reason],
        );
        if let Ok(mut counters) = m.counters.write() {
            counters.insert(key, counter.clone());
        }
        counter
    });
    counter.increment(1);
    if let Some(errors) = &m.errors[reason] {
        errors.increment(1);
    }
    m.durations[class].record(elapsed);
}

/// Counts a request in `requests_in_flight` until dropped.
#[must_use]
pub struct InFlight(());

impl InFlight {
    pub fn enter() -> Self {
        request_metrics().in_flight.increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        request_metrics().in_flight.decrement(1.0);
    }
}

/// Counts a request in `requests_queued` while it waits for a turn at the
/// app (`upstream.max_concurrency`).
#[must_use]
pub struct Queued(());

impl Queued {
    pub fn enter() -> Self {
        request_metrics().queued.increment(1.0);
        Self(())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        request_metrics().queued.decrement(1.0);
    }
}

/// A piece of a client's request body, received on the public listener.
pub fn count_request_bytes(bytes: usize) {
    request_metrics().request_bytes.increment(bytes as u64);
}

/// A piece of a response body, handed to a client on the public listener.
pub fn count_response_bytes(bytes: usize) {
    request_metrics().response_bytes.increment(bytes as u64);
}

/// Counts a write in `writes_held` while it waits for a primary.
#[must_use]
pub struct WriteHeld(());

impl WriteHeld {
    pub fn enter() -> Self {
        request_metrics().writes_held.increment(1.0);
        Self(())
    }
}

impl Drop for WriteHeld {
    fn drop(&mut self) {
        request_metrics().writes_held.decrement(1.0);
    }
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

/// Raft progress for a scrape: `quorum_ack` is `Some` only on the leader,
/// where the per-peer ack ages (by peer name) apply too.
pub fn set_raft_progress(
    committed_index: Option<u64>,
    quorum_ack: Option<Duration>,
    peer_acks: &[(String, Option<Duration>)],
) {
    gauge!(RAFT_COMMITTED_INDEX).set(committed_index.unwrap_or(0) as f64);
    gauge!(RAFT_IS_LEADER).set(if quorum_ack.is_some() { 1.0 } else { 0.0 });
    gauge!(RAFT_LAST_QUORUM_ACK_SECONDS).set(quorum_ack.map_or(0.0, |a| a.as_secs_f64()));
    for (peer, ack) in peer_acks {
        let age = if quorum_ack.is_some() {
            ack.map_or(0.0, |a| a.as_secs_f64())
        } else {
            0.0
        };
        gauge!(RAFT_PEER_ACK_SECONDS, "peer" => peer.clone()).set(age);
    }
}

/// A peer's answer to the 1 s poll, for a scrape.
pub fn set_peer(peer: &str, up: bool, last_seen: Option<Duration>) {
    gauge!(PEER_UP, "peer" => peer.to_owned()).set(if up { 1.0 } else { 0.0 });
    gauge!(PEER_LAST_SEEN_SECONDS, "peer" => peer.to_owned())
        .set(last_seen.map_or(0.0, |a| a.as_secs_f64()));
}

pub fn set_litefs_api_up(up: bool) {
    gauge!(LITEFS_API_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn set_replication_lag(lag: Duration) {
    gauge!(REPLICATION_LAG_SECONDS).set(lag.as_secs_f64());
}

pub fn set_lease_gauges(held_here: bool, lock_index: u64, sessions: usize) {
    gauge!(LEASE_HELD).set(if held_here { 1.0 } else { 0.0 });
    gauge!(LEASE_LOCK_INDEX).set(lock_index as f64);
    gauge!(LEASE_SESSIONS).set(sessions as f64);
}

/// The stream relay's series, made at zero when it starts.
pub fn relay_configured(reasons: &[&'static str]) {
    gauge!(LEASE_RELAY_STREAMS).set(0.0);
    for reason in reasons {
        counter!(LEASE_RELAY_CLOSED_TOTAL, "reason" => *reason).absolute(0);
    }
}

pub fn relay_closed(reason: &'static str) {
    counter!(LEASE_RELAY_CLOSED_TOTAL, "reason" => reason).increment(1);
}

/// Counts one relayed stream in `lease_relay_streams` while it lives.
#[derive(Debug)]
pub struct RelayStream(());

impl RelayStream {
    pub fn open() -> Self {
        gauge!(LEASE_RELAY_STREAMS).increment(1.0);
        Self(())
    }
}

impl Drop for RelayStream {
    fn drop(&mut self) {
        gauge!(LEASE_RELAY_STREAMS).decrement(1.0);
    }
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

/// The primary this node knows of, after every published change: counts
/// `primary_changes_total` only when a known primary is a different node
/// from the last one known. A primary becoming unknown and then known
/// again as the same node (LiteFS re-announcing it during an outage, a
/// Raft leader re-elected) is not a change.
pub fn observe_primary(primary: Option<&str>) {
    static LAST_KNOWN: Mutex<Option<String>> = Mutex::new(None);
    gauge!(PRIMARY_KNOWN).set(if primary.is_some() { 1.0 } else { 0.0 });
    let Some(primary) = primary else { return };
    let mut last = LAST_KNOWN.lock().unwrap_or_else(PoisonError::into_inner);
    if primary_changed(last.as_deref(), primary) {
        counter!(PRIMARY_CHANGES_TOTAL).increment(1);
    }
    if last.as_deref() != Some(primary) {
        *last = Some(primary.to_owned());
    }
}

/// The first primary a node learns of after it starts is not a change: it
/// says nothing about the cluster, and a restart would count as one.
fn primary_changed(last_known: Option<&str>, now: &str) -> bool {
    last_known.is_some_and(|last| last != now)
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
    fn only_a_different_known_primary_is_a_change() {
        assert!(!primary_changed(None, "a"));
        assert!(!primary_changed(Some("a"), "a"));
        assert!(primary_changed(Some("a"), "b"));
    }

    #[test]
    fn reasons_are_bounded() {
        assert_eq!(REASONS[reason_index(None)], "none");
        assert_eq!(REASONS[reason_index(Some(b"no-primary"))], "no-primary");
        assert_eq!(REASONS[reason_index(Some(b"timeout"))], "timeout");
        assert_eq!(REASONS[reason_index(Some(b"made-up"))], "other");
    }

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
