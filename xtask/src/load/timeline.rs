//! The pools over time during a load run: idle and in-use connections and connects, sampled
//! every [`SAMPLE_EVERY`] from the in-process service's snapshots or from a running service's
//! pools endpoint. It gives connects per call over the steady phase, the step profile's
//! "idle over in-use" figure and its plot.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use service::AppState;

use super::stats::percentile;
use crate::client::Client;

/// How often the pools are sampled.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// One pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PoolPoint {
    /// Seconds since the run's traffic began.
    pub t_s: f64,
    /// Idle, ready connections.
    pub idle: usize,
    /// Connections handed out, including those parked in a session.
    pub in_use: usize,
    /// The pool's warm target at that moment.
    pub target: usize,
    /// Connections the pool ever created.
    pub created_total: u64,
}

/// Where the samples come from.
#[derive(Clone)]
pub(crate) enum Source {
    /// The service in this process.
    State(AppState),
    /// A running service's `GET /api/v1/pools`.
    Remote(Client),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::State(_) => f.write_str("Source::State"),
            Source::Remote(client) => write!(f, "Source::Remote({})", client.base()),
        }
    }
}

impl Source {
    /// Every pool's figures now, by pool name.
    pub(crate) async fn read(&self) -> anyhow::Result<BTreeMap<String, PoolPoint>> {
        match self {
            Source::State(state) => Ok(state
                .snapshots()
                .into_iter()
                .map(|s| {
                    let point = PoolPoint {
                        t_s: 0.0,
                        idle: s.warm_pool_size,
                        in_use: s.in_use,
                        target: s.warm_pool_target,
                        created_total: s.created_total,
                    };
                    (s.name, point)
                })
                .collect()),
            Source::Remote(client) => {
                let url = format!("{}/api/v1/pools", client.base());
                let response = client
                    .authorize(client.http().get(url))
                    .send()
                    .await
                    .context("GET /api/v1/pools")?;
                let body = response
                    .error_for_status()
                    .context("GET /api/v1/pools")?
                    .bytes()
                    .await
                    .context("reading /api/v1/pools")?;
                let json: serde_json::Value =
                    serde_json::from_slice(&body).context("parsing /api/v1/pools")?;
                let pools = json["pools"]
                    .as_object()
                    .context("/api/v1/pools has no `pools` object")?;
                let field = |pool: &serde_json::Value, name: &str| pool[name].as_u64().unwrap_or(0);
                Ok(pools
                    .iter()
                    .map(|(name, pool)| {
                        let point = PoolPoint {
                            t_s: 0.0,
                            idle: field(pool, "warm_pool_size") as usize,
                            in_use: field(pool, "in_use") as usize,
                            target: field(pool, "warm_pool_target") as usize,
                            created_total: field(pool, "created_total"),
                        };
                        (name.clone(), point)
                    })
                    .collect())
            }
        }
    }
}

/// Every pool's samples, in time order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Timeline {
    pub pools: BTreeMap<String, Vec<PoolPoint>>,
}

/// Samples `source` every [`SAMPLE_EVERY`] until aborted; the samples stay readable through
/// the returned handle. A failed read is skipped (the next one will do).
pub(crate) fn spawn_sampler(
    source: Source,
    began: Instant,
) -> (Arc<Mutex<Timeline>>, tokio::task::JoinHandle<()>) {
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let shared = timeline.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(points) = source.read().await else {
                continue;
            };
            let t_s = began.elapsed().as_secs_f64();
            let mut timeline = shared.lock().unwrap_or_else(|e| e.into_inner());
            for (name, mut point) in points {
                point.t_s = t_s;
                timeline.pools.entry(name).or_default().push(point);
            }
        }
    });
    (timeline, task)
}

impl Timeline {
    /// A copy of the samples so far.
    pub(crate) fn copy_of(shared: &Mutex<Timeline>) -> Timeline {
        shared.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connections each pool created between `from_s` and `to_s` (seconds since the traffic
    /// began), from the samples nearest inside that window. `None` for a pool with fewer
    /// than two samples in it.
    pub(crate) fn connects_between(&self, from_s: f64, to_s: f64) -> BTreeMap<String, u64> {
        self.pools
            .iter()
            .filter_map(|(name, points)| {
                let inside: Vec<&PoolPoint> = points
                    .iter()
                    .filter(|p| p.t_s >= from_s && p.t_s <= to_s)
                    .collect();
                let (first, last) = (inside.first()?, inside.last()?);
                (inside.len() >= 2).then(|| {
                    (
                        name.clone(),
                        last.created_total.saturating_sub(first.created_total),
                    )
                })
            })
            .collect()
    }

    /// For every sample at or after `window_s` and at or before `until_s`: idle
    /// connections divided by the 95th percentile of in-use connections over the preceding
    /// `window_s` (at least 1, so an idle pool with nothing in use reads as its idle
    /// count). Returns the largest such ratio over all pools, with the time and pool where
    /// it occurred; `None` without a full window of samples.
    pub(crate) fn max_idle_over_in_use_p95(
        &self,
        window_s: f64,
        until_s: f64,
    ) -> Option<IdleRatio> {
        let mut worst: Option<IdleRatio> = None;
        for (name, points) in &self.pools {
            for (i, point) in points.iter().enumerate() {
                if point.t_s < window_s || point.t_s > until_s {
                    continue;
                }
                let mut in_use: Vec<f64> = points[..=i]
                    .iter()
                    .rev()
                    .take_while(|p| p.t_s > point.t_s - window_s)
                    .map(|p| p.in_use as f64)
                    .collect();
                in_use.sort_by(f64::total_cmp);
                let p95 = percentile(&in_use, 95.0).unwrap_or(0.0).max(1.0);
                let ratio = point.idle as f64 / p95;
                if worst.as_ref().is_none_or(|w| ratio > w.ratio) {
                    worst = Some(IdleRatio {
                        ratio,
                        at_s: point.t_s,
                        pool: name.clone(),
                        idle: point.idle,
                        in_use_p95: p95,
                    });
                }
            }
        }
        worst
    }
}

/// Prints the connections the pools created per call during the steady phase (`from_s`
/// to `to_s` after the traffic began, which leaves out warm-up and the ramp-up while the
/// pools grow to the load), per pool and as `load.connects_per_call`: new connections per
/// call and per pool a call uses (2 with STT, 1 without).
pub(crate) fn print_steady_connects(
    timeline: &Timeline,
    from_s: f64,
    to_s: f64,
    calls: u64,
    pools_per_call: u64,
) {
    let connects = timeline.connects_between(from_s, to_s);
    let per_pool: Vec<String> = connects
        .iter()
        .map(|(pool, n)| {
            format!(
                "{pool} {n} ({:.2} per call)",
                *n as f64 / calls.max(1) as f64
            )
        })
        .collect();
    println!(
        "load: steady phase {from_s:.0}-{to_s:.0} s: {calls} calls started, connections created: {}",
        if per_pool.is_empty() {
            "no samples".to_owned()
        } else {
            per_pool.join(", ")
        }
    );
    if calls == 0 || connects.is_empty() {
        println!("load.connects_per_call: n/a");
    } else {
        let total: u64 = connects.values().sum();
        println!(
            "load.connects_per_call: {:.3}",
            total as f64 / (calls * pools_per_call) as f64
        );
    }
}

/// The worst moment of idle connections against recent use.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IdleRatio {
    pub ratio: f64,
    pub at_s: f64,
    pub pool: String,
    pub idle: usize,
    pub in_use_p95: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t_s: f64, idle: usize, in_use: usize, created_total: u64) -> PoolPoint {
        PoolPoint {
            t_s,
            idle,
            in_use,
            target: 2,
            created_total,
        }
    }

    #[test]
    fn connects_are_counted_inside_the_window_only() {
        let mut timeline = Timeline::default();
        timeline.pools.insert(
            "tts".into(),
            vec![
                point(0.0, 2, 0, 2),
                point(1.0, 2, 0, 10),
                point(2.0, 2, 0, 15),
                point(3.0, 2, 0, 40),
            ],
        );
        timeline
            .pools
            .insert("stt".into(), vec![point(0.0, 2, 0, 2)]);
        let connects = timeline.connects_between(1.0, 2.0);
        assert_eq!(connects.get("tts"), Some(&5));
        // One sample is no interval: left out rather than read as zero connects.
        assert_eq!(connects.get("stt"), None);
    }

    #[test]
    fn idle_is_compared_with_the_p95_of_in_use_over_the_window() {
        let mut timeline = Timeline::default();
        // In use 10 for 10 s, then the load stops and 30 idle connections remain.
        let mut points: Vec<PoolPoint> = (0..=10).map(|t| point(t as f64, 5, 10, 0)).collect();
        points.push(point(11.0, 30, 0, 0));
        timeline.pools.insert("tts".into(), points);
        let worst = timeline.max_idle_over_in_use_p95(5.0, 100.0).unwrap();
        assert_eq!(worst.at_s, 11.0);
        assert_eq!(worst.idle, 30);
        // Window (6, 11]: in use 10,10,10,10,0 -> p95 = 10.
        assert_eq!(worst.in_use_p95, 10.0);
        assert_eq!(worst.ratio, 3.0);
        // Samples after `until_s` are ignored.
        let before_stop = timeline.max_idle_over_in_use_p95(5.0, 10.0).unwrap();
        assert_eq!(before_stop.ratio, 0.5);
        // No full window yet: no figure.
        assert_eq!(timeline.max_idle_over_in_use_p95(50.0, 100.0), None);
    }
}
