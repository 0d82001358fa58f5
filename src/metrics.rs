//! Prometheus metrics (DESIGN §8): names, help texts, buckets, and the
//! recorder, rendered by the admin listener rather than a listener of its own.

use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
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
    describe_histogram!(
        FORWARD_DURATION_SECONDS,
        Unit::Seconds,
        "Time from forwarding a write to the primary's response head."
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
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from a request's arrival to its response head, by class."
    );
    describe_gauge!(
        OPEN_CONNECTIONS,
        "Client connections open on the public listener."
    );
    describe_gauge!(UPSTREAM_UP, "1 when the local app accepts connections.");
    describe_gauge!(IS_PRIMARY, "1 when this node's app takes writes.");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which build runs."
    );
}

pub fn record_request(class: &'static str, route: Route, status: u16, elapsed: Duration) {
    let code = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    counter!(HTTP_REQUESTS_TOTAL, "class" => class, "route" => route.as_str(), "code" => code)
        .increment(1);
    histogram!(HTTP_REQUEST_DURATION_SECONDS, "class" => class).record(elapsed.as_secs_f64());
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

pub fn record_forward(elapsed: Duration) {
    histogram!(FORWARD_DURATION_SECONDS).record(elapsed.as_secs_f64());
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
