//! Prometheus metrics.
//!
//! Each [`Metrics`] owns its own `PrometheusRecorder` instead of installing a global one,
//! so that tests can build many apps in one process and each `/metrics` shows only its
//! own app. Events (acquires, HTTP requests, upstream errors) are recorded through the
//! `metrics` facade with [`metrics::with_local_recorder`]; pool levels and counters are
//! copied from [`PoolSnapshot`]s at scrape time, so they are exactly what the pool reports
//! and cost nothing between scrapes.

use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;
use pool_core::{PoolSnapshot, Tier};
use speech_core::ErrorClass;

/// Acquire latency buckets (seconds): from a warm hand-out (microseconds) to a slow cold
/// connect (seconds), so both ends of the tier split are resolved.
const ACQUIRE_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Request and first-audio latency buckets (seconds).
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Names of the metrics, shared with the tests.
pub mod names {
    /// Histogram: service-observed acquire latency, labels `pool`, `tier`.
    pub const ACQUIRE_DURATION: &str = "speech_pool_acquire_duration_seconds";
    /// Histogram: time from request to first audio byte of a synthesis, label `tier`.
    pub const TTS_FIRST_AUDIO: &str = "speech_tts_first_audio_seconds";
    /// Counter: failed speech turns and connects, labels `pool`, `class`.
    pub const UPSTREAM_ERRORS: &str = "speech_upstream_errors_total";
    /// Counter: turns moved to a fresh connection because theirs was lost before the
    /// client had any output (the client saw nothing of it), label `pool`.
    pub const TURN_MOVES: &str = "speech_turn_moves_total";
    /// Counter: HTTP requests, labels `method`, `route`, `status`.
    pub const HTTP_REQUESTS: &str = "http_requests_total";
    /// Histogram: HTTP time to response headers, labels `method`, `route`, `status`.
    pub const HTTP_DURATION: &str = "http_request_duration_seconds";
    /// Gauge: HTTP requests being handled.
    pub const HTTP_IN_FLIGHT: &str = "http_requests_in_flight";
}

/// How long a series may go without an update before the exporter forgets it. A pool's
/// figures are recorded at every scrape, so a live pool's series never go idle; the series
/// of an on-demand STT pool that was closed to make room for another combination (its
/// language is in the pool's name) go away an hour later, so languages clients ask for one
/// after another cannot grow the registry without bound.
const SERIES_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The service's metrics registry. Cheap to share behind the app state's `Arc`.
#[derive(Debug)]
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with histogram buckets and descriptions set.
    pub fn new() -> Self {
        Self::forgetting_idle_series_after(SERIES_IDLE_TIMEOUT)
    }

    /// A registry that forgets a series nobody has updated for `idle`.
    fn forgetting_idle_series_after(idle: Duration) -> Self {
        let builder = PrometheusBuilder::new().idle_timeout(MetricKindMask::ALL, Some(idle));
        // set_buckets_for_metric fails only for an empty bucket list; ours are constants.
        let builder = match builder
            .set_buckets_for_metric(
                Matcher::Full(names::ACQUIRE_DURATION.into()),
                ACQUIRE_BUCKETS,
            )
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), REQUEST_BUCKETS)
            }) {
            Ok(b) => b,
            Err(e) => unreachable!("constant bucket lists are valid: {e}"),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Self { recorder, handle };
        metrics.with(describe_all);
        metrics
    }

    fn with<R>(&self, f: impl FnOnce() -> R) -> R {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// Records one acquire as the service saw it (includes waiting for a slot).
    pub fn record_acquire(&self, pool: &str, tier: Tier, elapsed: Duration) {
        let pool = pool.to_owned();
        self.with(|| {
            histogram!(names::ACQUIRE_DURATION, "pool" => pool, "tier" => tier.as_str())
                .record(elapsed.as_secs_f64());
        });
    }

    /// Records the time to the first audio byte of a synthesis.
    pub fn record_first_audio(&self, tier: Tier, elapsed: Duration) {
        self.with(|| {
            histogram!(names::TTS_FIRST_AUDIO, "tier" => tier.as_str())
                .record(elapsed.as_secs_f64());
        });
    }

    /// Counts a failed turn or connect by error class.
    pub fn record_upstream_error(&self, pool: &str, class: ErrorClass) {
        let pool = pool.to_owned();
        self.with(|| {
            counter!(names::UPSTREAM_ERRORS, "pool" => pool, "class" => class.as_str())
                .increment(1);
        });
    }

    /// Counts a turn moved to a fresh connection before its client had any output. The
    /// lost connection is counted in [`names::UPSTREAM_ERRORS`] as well; this counter says
    /// how many of those the clients never saw.
    pub fn record_turn_move(&self, pool: &str) {
        let pool = pool.to_owned();
        self.with(|| counter!(names::TURN_MOVES, "pool" => pool).increment(1));
    }

    /// Counts one HTTP request and its time to response headers. `route` is the matched
    /// route pattern (never the raw path, which would let clients create label values).
    pub fn record_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let (method, route, status) = (method.to_owned(), route.to_owned(), status.to_string());
        self.with(|| {
            counter!(names::HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status.clone())
                .increment(1);
            histogram!(names::HTTP_DURATION, "method" => method, "route" => route, "status" => status)
                .record(elapsed.as_secs_f64());
        });
    }

    /// Adjusts the in-flight request gauge.
    pub fn http_in_flight(&self, delta: f64) {
        self.with(|| gauge!(names::HTTP_IN_FLIGHT).increment(delta));
    }

    /// Renders the Prometheus text exposition, pool figures taken from `pools` now.
    pub fn render(&self, pools: &[PoolSnapshot]) -> String {
        self.with(|| {
            for s in pools {
                record_snapshot(s);
            }
        });
        self.handle.render()
    }
}

fn describe_all() {
    describe_gauge!(
        "speech_pool_ready",
        "1 once the pool first reached its warm target, until shutdown"
    );
    describe_gauge!("speech_pool_warm", "Idle, pre-warmed connections now");
    describe_gauge!(
        "speech_pool_warm_target",
        "Idle connections the pool keeps now (the floor, or more under demand)"
    );
    describe_gauge!(
        "speech_pool_size",
        "Live connections: idle + in use + connecting + closing"
    );
    describe_gauge!("speech_pool_max_size", "Bound on live connections");
    describe_gauge!(
        "speech_pool_in_use",
        "Connections handed out, including session-bound ones"
    );
    describe_gauge!("speech_pool_dedicated", "Connections bound to sessions");
    describe_gauge!("speech_pool_waiting", "Requests waiting for a connection");
    describe_gauge!("speech_pool_creating", "Connections being opened");
    describe_gauge!("speech_pool_active_sessions", "Sessions known to the pool");
    describe_gauge!(
        "speech_pool_warm_target_floor",
        "The configured idle target, the floor of the adaptive target"
    );
    describe_gauge!(
        "speech_pool_closing",
        "Connections being closed (the backend still counts them)"
    );
    describe_gauge!(
        "speech_pool_wait_seconds",
        "How long acquires that queued for a returned connection waited (p50, p99)"
    );
    describe_counter!(
        "speech_pool_waited_total",
        "Acquires that queued for a returned connection (also counted as warm)"
    );
    describe_counter!(
        "speech_pool_reclaims_total",
        "Parked session connections handed to a request waiting on a full pool"
    );
    describe_counter!(
        "speech_pool_allocations_total",
        "Acquires by tier (dedicated, warm, cold)"
    );
    describe_counter!("speech_pool_created_total", "Connections opened");
    describe_counter!("speech_pool_closed_total", "Connections closed");
    describe_counter!(
        "speech_pool_create_failures_total",
        "Connects that failed or timed out"
    );
    describe_counter!("speech_pool_warmup_failures_total", "Warm-ups that failed");
    describe_counter!(
        "speech_pool_warmup_cycles_total",
        "Passes of the background maintainer"
    );
    describe_histogram!(
        names::ACQUIRE_DURATION,
        Unit::Seconds,
        "Acquire latency by pool and tier, as the service saw it"
    );
    describe_histogram!(
        names::TTS_FIRST_AUDIO,
        Unit::Seconds,
        "Time from request to first audio byte, by tier"
    );
    describe_counter!(
        names::UPSTREAM_ERRORS,
        "Failed speech connects and turns by error class"
    );
    describe_counter!(
        names::TURN_MOVES,
        "Turns moved to a fresh connection because theirs was lost before any output"
    );
    describe_counter!(
        names::HTTP_REQUESTS,
        "HTTP requests by method, route and status"
    );
    describe_histogram!(
        names::HTTP_DURATION,
        Unit::Seconds,
        "HTTP time to response headers"
    );
    describe_gauge!(names::HTTP_IN_FLIGHT, "HTTP requests being handled");
}

fn record_snapshot(s: &PoolSnapshot) {
    // Gauges hold f64; pool sizes are far below 2^53, so the conversion is exact.
    let gauges: [(&'static str, f64); 12] = [
        ("speech_pool_ready", f64::from(u8::from(s.ready))),
        ("speech_pool_warm", s.warm_pool_size as f64),
        ("speech_pool_warm_target", s.warm_pool_target as f64),
        ("speech_pool_size", s.size as f64),
        ("speech_pool_max_size", s.max_size as f64),
        ("speech_pool_in_use", s.in_use as f64),
        ("speech_pool_dedicated", s.dedicated as f64),
        ("speech_pool_waiting", s.waiting as f64),
        ("speech_pool_creating", s.creating as f64),
        ("speech_pool_active_sessions", s.active_sessions as f64),
        ("speech_pool_warm_target_floor", s.warm_target_floor as f64),
        ("speech_pool_closing", s.closing as f64),
    ];
    for (name, value) in gauges {
        gauge!(name, "pool" => s.name.clone()).set(value);
    }
    for (quantile, micros) in [
        ("0.5", s.wait_latency.p50_us),
        ("0.99", s.wait_latency.p99_us),
    ] {
        if let Some(micros) = micros {
            gauge!("speech_pool_wait_seconds", "pool" => s.name.clone(), "quantile" => quantile)
                .set(micros / 1e6);
        }
    }
    for (tier, value) in [
        (Tier::Dedicated, s.allocations_dedicated),
        (Tier::Warm, s.allocations_warm),
        (Tier::Cold, s.allocations_cold),
    ] {
        counter!("speech_pool_allocations_total", "pool" => s.name.clone(), "tier" => tier.as_str())
            .absolute(value);
    }
    let counters: [(&'static str, u64); 7] = [
        ("speech_pool_created_total", s.created_total),
        ("speech_pool_closed_total", s.closed_total),
        ("speech_pool_create_failures_total", s.create_failures),
        ("speech_pool_warmup_failures_total", s.warmup_failures),
        ("speech_pool_warmup_cycles_total", s.warmup_cycles),
        ("speech_pool_waited_total", s.waited_total),
        ("speech_pool_reclaims_total", s.reclaims_total),
    ];
    for (name, value) in counters {
        counter!(name, "pool" => s.name.clone()).absolute(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_nobody_updates_are_forgotten() {
        let m = Metrics::forgetting_idle_series_after(Duration::from_millis(200));
        let closed_pool = "speech-stt:interactive:xx-xx:simple";
        m.record_acquire(closed_pool, Tier::Cold, Duration::from_millis(80));
        m.record_acquire("speech-tts", Tier::Warm, Duration::from_micros(3));
        assert!(m.render(&[]).contains(closed_pool));
        // Only the live pool is used from now on.
        std::thread::sleep(Duration::from_millis(400));
        m.record_acquire("speech-tts", Tier::Warm, Duration::from_micros(3));
        let text = m.render(&[]);
        assert!(!text.contains(closed_pool), "{text}");
        assert!(text.contains("pool=\"speech-tts\""), "{text}");
    }

    #[test]
    fn registries_are_independent() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.record_acquire("speech-tts", Tier::Warm, Duration::from_micros(3));
        a.record_http("GET", "/livez", 200, Duration::from_millis(1));
        let ra = a.render(&[]);
        let rb = b.render(&[]);
        assert!(
            ra.contains("speech_pool_acquire_duration_seconds_bucket"),
            "{ra}"
        );
        assert!(ra.contains(r#"tier="warm""#), "{ra}");
        assert!(
            ra.contains(r#"http_requests_total{method="GET",route="/livez",status="200"} 1"#),
            "{ra}"
        );
        assert!(
            !rb.contains("speech_pool_acquire_duration_seconds_bucket"),
            "{rb}"
        );
    }
}
