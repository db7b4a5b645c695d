//! What a load or soak run measured, shared by every call task.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::client::{ErrorClass, Request};

/// Which speech direction a turn used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    /// Time to first audio byte of `POST /api/v1/tts`.
    Tts,
    /// Time from the first audio frame sent to the first recognition result.
    Stt,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Tts => "tts",
            Self::Stt => "stt",
        }
    }

    /// What the latency of this kind measures, for reports and plot titles.
    pub(crate) fn latency_name(self) -> &'static str {
        match self {
            Self::Tts => "time to first audio",
            Self::Stt => "time to first recognition result",
        }
    }
}

/// Counters read by the progress display, plus the samples and errors for the report.
#[derive(Debug)]
pub(crate) struct Stats {
    /// When the run began: cold turns are reported by their time since then, to tell a
    /// ramp-up from cold connects in steady state.
    began: Instant,
    pub started: AtomicU64,
    pub finished: AtomicU64,
    pub turns: AtomicU64,
    pub errors: AtomicU64,
    recorded: Mutex<Recorded>,
}

/// Per-turn samples and error counts, appended under one short lock.
#[derive(Debug, Default, Clone)]
pub(crate) struct Recorded {
    /// Turn latency in milliseconds by kind and tier.
    pub latency_ms: BTreeMap<(Kind, String), Vec<f64>>,
    /// Connection acquire wait in milliseconds (from the service's `Server-Timing`) by kind
    /// and tier.
    pub acquire_ms: BTreeMap<(Kind, String), Vec<f64>>,
    /// Errors by request and class, e.g. `tts-503-unavailable`, `stt-transport`,
    /// `call-unexpected-panic`.
    pub errors: BTreeMap<String, u64>,
    /// Seconds since the run began at which each COLD turn finished.
    pub cold_at_s: Vec<f64>,
}

impl Recorded {
    /// `none`, or the total and the count per class: `3 (tts-503 2, stt-transport 1)`.
    pub(crate) fn errors_line(&self) -> String {
        if self.errors.is_empty() {
            return "none".to_owned();
        }
        let total: u64 = self.errors.values().sum();
        let by_class: Vec<String> = self
            .errors
            .iter()
            .map(|(class, n)| format!("{class} {n}"))
            .collect();
        format!("{total} ({})", by_class.join(", "))
    }
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            began: Instant::now(),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            turns: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            recorded: Mutex::default(),
        }
    }
}

impl Stats {
    pub(crate) fn error(&self, request: Request, class: ErrorClass) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self
            .lock()
            .errors
            .entry(format!("{request}-{class}"))
            .or_default() += 1;
    }

    /// Counts a call task that did not end normally: a panic loses whatever the call was
    /// doing, so it is an error like any failed request, never silently dropped.
    pub(crate) fn call_task_ended(&self, joined: Result<(), tokio::task::JoinError>) {
        match joined {
            Ok(()) => {}
            Err(e) if e.is_panic() => self.error(Request::Call, ErrorClass::Panicked),
            // Cancelled: only the run's own abort does that, after counting the call as
            // unfinished.
            Err(_) => {}
        }
    }

    pub(crate) fn turn(&self, kind: Kind, tier: &str, latency: Duration, acquire_ms: Option<f64>) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        let key = (kind, tier.to_owned());
        let since_start = self.began.elapsed().as_secs_f64();
        let mut recorded = self.lock();
        if tier == "cold" {
            recorded.cold_at_s.push(since_start);
        }
        recorded
            .latency_ms
            .entry(key.clone())
            .or_default()
            .push(latency.as_secs_f64() * 1000.0);
        if let Some(ms) = acquire_ms {
            recorded.acquire_ms.entry(key).or_default().push(ms);
        }
    }

    /// A copy of everything recorded so far.
    pub(crate) fn recorded(&self) -> Recorded {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        // A panicking call task must not hide the others' results.
        self.recorded.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Nearest-rank percentile of sorted samples.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Count, p50, p95, p99 and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    pub(crate) fn of(samples: &[f64]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Self {
            count: sorted.len(),
            p50: percentile(&sorted, 50.0)?,
            p95: percentile(&sorted, 95.0)?,
            p99: percentile(&sorted, 99.0)?,
            max: *sorted.last()?,
        })
    }

    pub(crate) fn to_json(self) -> Value {
        json!({
            "count": self.count,
            "p50": round(self.p50),
            "p95": round(self.p95),
            "p99": round(self.p99),
            "max": round(self.max),
        })
    }
}

/// Three decimals are a microsecond: enough for any figure here.
pub(crate) fn round(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summaries_sort_their_samples() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.count, s.p50, s.max), (3, 2.0, 3.0));
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn turns_and_errors_are_kept_by_kind_tier_and_class() {
        let stats = Stats::default();
        stats.turn(Kind::Tts, "warm", Duration::from_millis(5), Some(0.01));
        stats.turn(Kind::Stt, "cold", Duration::from_millis(9), None);
        stats.error(Request::Tts, ErrorClass::Unavailable);
        stats.error(Request::Tts, ErrorClass::Unavailable);
        let r = stats.recorded();
        assert_eq!(r.latency_ms[&(Kind::Tts, "warm".to_owned())], vec![5.0]);
        assert_eq!(r.acquire_ms.get(&(Kind::Stt, "cold".to_owned())), None);
        assert_eq!(r.errors["tts-503-unavailable"], 2);
        assert_eq!(stats.errors.load(Ordering::Relaxed), 2);
        assert_eq!(stats.turns.load(Ordering::Relaxed), 2);
        assert_eq!(r.cold_at_s.len(), 1);
        assert_eq!(r.errors_line(), "2 (tts-503-unavailable 2)");
        assert_eq!(Recorded::default().errors_line(), "none");
    }

    #[tokio::test]
    async fn a_panicked_call_task_is_an_error() {
        let stats = Stats::default();
        let panicked = tokio::spawn(async { panic!("a call task panicked on purpose") }).await;
        stats.call_task_ended(panicked);
        stats.call_task_ended(Ok(()));
        assert_eq!(stats.errors.load(Ordering::Relaxed), 1);
        assert_eq!(stats.recorded().errors["call-unexpected-panic"], 1);
    }
}
