//! `cargo xtask load --profile step`: how each way of sizing the warm set copes with a load
//! that jumps. Calls arrive at 2 calls/s, then 20 calls/s, then 2 calls/s again, one phase
//! each (`--phase-secs`, 60 s by default, 20 s with `--quick`). Every variant gets its own
//! in-process service, all started before the traffic and driven at the same time with
//! the same arrival times, so they see identical load on the same machine:
//!
//! - `floor`: a fixed warm target of [`FLOOR`] per pool (what the configured sizes alone
//!   give);
//! - `hand_sized`: a fixed warm target sized by hand for the peak, as the constant profile
//!   does: peak rate x 1 s + 2;
//! - `adaptive`: the demand-driven target with [`FLOOR`] as its floor.
//!
//! For each variant it reports the cold share of all turns, the connections created per
//! call (warm-up excluded), and the worst ratio of idle connections to the 95th percentile
//! of connections in use over the preceding window (one phase, at most a minute), plus the
//! idle and in-use connections over time as a plot (`--out DIR`: `load-step.svg`,
//! `load-step-report.json`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use plotters::prelude::*;
use serde_json::json;
use tokio::task::JoinSet;

use super::call::{self, CallPlan};
use super::stats::{Recorded, Stats, round};
use super::target::{InProcess, Setup};
use super::timeline::{self, IdleRatio, Timeline};
use super::{Args, Plan};
use crate::client::Client;

/// The arrival rate of the first and last phase, calls per second.
const LOW_RATE: f64 = 2.0;
/// The arrival rate of the middle phase, calls per second.
const HIGH_RATE: f64 = 20.0;
/// The configured warm target per pool: the fixed target of `floor`, the floor of
/// `adaptive`.
pub(crate) const FLOOR: usize = 2;
/// The longest window of the idle-over-in-use figure.
const MAX_WINDOW: Duration = Duration::from_secs(60);

/// The shape of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Profile {
    /// Poisson arrivals at `--rate` for `--duration`.
    Constant,
    /// 2 calls/s, then 20 calls/s, then 2 calls/s, one phase each, for every warm-target
    /// variant side by side.
    Step,
}

/// How the warm target of a step run's service is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Variant {
    /// The demand-driven target, with the floor as its minimum.
    Adaptive,
    /// The configured floor alone, fixed.
    Floor,
    /// Fixed at peak rate x 1 s + 2.
    #[value(name = "hand_sized")]
    HandSized,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Adaptive, Variant::Floor, Variant::HandSized];

    fn name(self) -> &'static str {
        match self {
            Variant::Adaptive => "adaptive",
            Variant::Floor => "floor",
            Variant::HandSized => "hand_sized",
        }
    }

    /// The fixed warm target per pool of this variant.
    fn fixed_target(self) -> usize {
        match self {
            Variant::Adaptive | Variant::Floor => FLOOR,
            Variant::HandSized => HIGH_RATE.ceil() as usize + 2,
        }
    }

    fn colour(self) -> RGBColor {
        match self {
            Variant::Adaptive => RGBColor(0x2c, 0xa0, 0x2c),
            Variant::Floor => RGBColor(0xd6, 0x27, 0x28),
            Variant::HandSized => RGBColor(0x1f, 0x77, 0xb4),
        }
    }
}

/// The phases: (calls per second, length).
fn phases(phase: Duration) -> [(f64, Duration); 3] {
    [(LOW_RATE, phase), (HIGH_RATE, phase), (LOW_RATE, phase)]
}

/// Poisson arrival times (offsets from the start of traffic) over the phases, one
/// exponential gap at a time at the current phase's rate.
fn arrivals(phases: &[(f64, Duration)], rng: &mut fastrand::Rng) -> Vec<Duration> {
    let mut times = Vec::new();
    let mut phase_start = 0.0;
    for &(rate, length) in phases {
        let end = phase_start + length.as_secs_f64();
        let mut t = phase_start;
        loop {
            t += -(1.0 - rng.f64()).ln() / rate;
            if t >= end {
                break;
            }
            times.push(Duration::from_secs_f64(t));
        }
        phase_start = end;
    }
    times
}

/// Entry point of `cargo xtask load --profile step`.
pub(super) fn run(args: &Args) -> anyhow::Result<()> {
    if args.url.is_some() {
        bail!("--profile step starts one service per variant in this process; it cannot use --url");
    }
    if args.rate.is_some() || args.duration.is_some() {
        bail!("--profile step sets its own rates and length (use --phase-secs to shorten it)");
    }
    let plan = Plan::from_args(args)?;
    let phase = args
        .phase_secs
        .unwrap_or(if args.quick { 20.0 } else { 60.0 });
    if !(phase.is_finite() && (1.0..=3_600.0).contains(&phase)) {
        bail!("--phase-secs must be in [1, 3600], got {phase}");
    }
    let mut variants = if args.variants.is_empty() {
        Variant::ALL.to_vec()
    } else {
        args.variants.clone()
    };
    variants.sort();
    variants.dedup();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run_async(
        args,
        plan,
        Duration::from_secs_f64(phase),
        &variants,
    ))
}

/// One variant's service and what it measured.
struct Run {
    variant: Variant,
    service: InProcess,
    client: Client,
    stats: Arc<Stats>,
    /// Connections each pool created while warming up, before any traffic.
    warm_up_created: BTreeMap<String, u64>,
}

/// What one variant measured, after its service stopped.
struct Outcome {
    variant: Variant,
    calls: u64,
    recorded: Recorded,
    errors: u64,
    leaked: u64,
    connection_lines: Vec<String>,
    /// Connections created after warm-up, by pool.
    connects: BTreeMap<String, u64>,
    timeline: Timeline,
    idle_ratio: Option<IdleRatio>,
}

impl Outcome {
    fn turns(&self) -> (usize, usize) {
        let mut all = 0;
        let mut cold = 0;
        for ((_, tier), samples) in &self.recorded.latency_ms {
            all += samples.len();
            if tier == "cold" {
                cold += samples.len();
            }
        }
        (all, cold)
    }

    fn cold_share_percent(&self) -> f64 {
        let (all, cold) = self.turns();
        if all == 0 {
            0.0
        } else {
            cold as f64 * 100.0 / all as f64
        }
    }

    /// New connections per call and per pool the calls use.
    fn connects_per_call(&self, pools_per_call: u64) -> f64 {
        let total: u64 = self.connects.values().sum();
        total as f64 / (self.calls.max(1) * pools_per_call) as f64
    }
}

async fn run_async(
    args: &Args,
    plan: Plan,
    phase: Duration,
    variants: &[Variant],
) -> anyhow::Result<()> {
    speech_azure::install_crypto_provider();
    let phases = phases(phase);
    let schedule: Arc<[Duration]> = arrivals(&phases, &mut fastrand::Rng::new()).into();
    let total = phase * 3;
    eprintln!(
        "load: step profile, {LOW_RATE}/s -> {HIGH_RATE}/s -> {LOW_RATE}/s, {:.0} s each ({} calls), \
         variants {}",
        phase.as_secs_f64(),
        schedule.len(),
        variants
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut runs = Vec::new();
    for &variant in variants {
        let target = variant.fixed_target();
        let setup = Setup {
            backend: args.backend,
            realistic: true,
            rtt: Duration::from_millis(args.rtt_ms),
            warm_tts: target,
            warm_stt: if plan.call.stt { target } else { 1 },
            max_tts: 1_024,
            max_stt: if plan.call.stt { 1_024 } else { 8 },
            adaptive: variant == Variant::Adaptive,
        };
        let service = InProcess::start(setup).await?;
        let client = Client::new(&service.base_url(), None, call::REQUEST_TIMEOUT)?;
        let warm_up_created = service
            .state()
            .snapshots()
            .into_iter()
            .map(|s| (s.name, s.created_total))
            .collect();
        runs.push(Run {
            variant,
            service,
            client,
            stats: Arc::new(Stats::default()),
            warm_up_created,
        });
    }

    // Every variant's traffic starts now, from the same schedule.
    let began = Instant::now();
    let start = tokio::time::Instant::now();
    let mut stats_for_progress = Vec::new();
    let mut drivers = JoinSet::new();
    let mut samplers = Vec::new();
    for (index, run) in runs.iter_mut().enumerate() {
        // Arrival times are relative to the shared start, so a fresh `Stats` clock is too.
        run.stats = Arc::new(Stats::default());
        stats_for_progress.push(run.stats.clone());
        let (timeline, sampler) =
            timeline::spawn_sampler(timeline::Source::State(run.service.state().clone()), began);
        samplers.push((timeline, sampler));
        let (client, stats, schedule) = (run.client.clone(), run.stats.clone(), schedule.clone());
        let prefix = format!("step-{}-{}", run.variant.name(), std::process::id());
        drivers.spawn(async move {
            drive(&client, &stats, &schedule, start, plan.call, &prefix).await;
            index
        });
    }
    let progress = tokio::spawn(super::progress(
        "step",
        stats_for_progress[0].clone(),
        began,
        total,
    ));
    while let Some(joined) = drivers.join_next().await {
        joined.context("a step variant's driver failed")?;
    }
    let traffic_s = began.elapsed().as_secs_f64();
    progress.abort();
    let _ = progress.await;

    let window = phase.min(MAX_WINDOW).as_secs_f64();
    let mut outcomes = Vec::new();
    for (run, (timeline, sampler)) in runs.into_iter().zip(samplers) {
        sampler.abort();
        let _ = sampler.await;
        let timeline = Timeline::copy_of(&timeline);
        let connections = run.service.stop().await?;
        let connects = connections
            .created
            .iter()
            .map(|(pool, created)| {
                let before = run.warm_up_created.get(pool).copied().unwrap_or(0);
                (pool.clone(), created.saturating_sub(before))
            })
            .collect();
        outcomes.push(Outcome {
            variant: run.variant,
            calls: run.stats.started.load(Ordering::Relaxed),
            recorded: run.stats.recorded(),
            errors: run.stats.errors.load(Ordering::Relaxed),
            leaked: connections.leaked,
            connection_lines: connections.lines,
            connects,
            idle_ratio: timeline.max_idle_over_in_use_p95(window, total.as_secs_f64()),
            timeline,
        });
    }

    let pools_per_call = if plan.call.stt { 2 } else { 1 };
    print_report(&outcomes, phase, window, traffic_s, pools_per_call);
    if let Some(dir) = &args.out {
        write(dir, &outcomes, phase, pools_per_call)?;
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.errors > 0 || o.leaked > 0)
        .map(|o| {
            format!(
                "{}: {} errors, {} leaked",
                o.variant.name(),
                o.errors,
                o.leaked
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

/// Starts one call at each scheduled time, then waits for all of them (bounded by the drain
/// limit). A call task that panicked counts as an error.
async fn drive(
    client: &Client,
    stats: &Arc<Stats>,
    schedule: &[Duration],
    start: tokio::time::Instant,
    plan: CallPlan,
    prefix: &str,
) {
    let mut calls = JoinSet::new();
    for (n, at) in schedule.iter().enumerate() {
        tokio::time::sleep_until(start + *at).await;
        while let Some(joined) = calls.try_join_next() {
            stats.call_task_ended(joined);
        }
        stats.started.fetch_add(1, Ordering::Relaxed);
        let (client, stats) = (client.clone(), stats.clone());
        let id = format!("{prefix}-{n}");
        calls.spawn(async move {
            call::call(&client, &id, plan, &stats).await;
            stats.finished.fetch_add(1, Ordering::Relaxed);
        });
    }
    super::drain_calls(&mut calls, stats).await;
}

fn phase_of(t_s: f64, phase: Duration) -> usize {
    ((t_s / phase.as_secs_f64()) as usize).min(2)
}

fn print_report(
    outcomes: &[Outcome],
    phase: Duration,
    window_s: f64,
    traffic_s: f64,
    pools_per_call: u64,
) {
    println!();
    println!(
        "step load report: {LOW_RATE}/s -> {HIGH_RATE}/s -> {LOW_RATE}/s, {:.0} s per phase, \
         traffic and drain {traffic_s:.1} s",
        phase.as_secs_f64()
    );
    println!(
        "  {:<11} {:>6} {:>7} {:>9} {:>20} {:>10} {:>20}",
        "variant",
        "target",
        "calls",
        "cold %",
        "cold turns by phase",
        "conn/call",
        "idle / in-use p95"
    );
    for o in outcomes {
        let mut by_phase = [0usize; 3];
        for t in &o.recorded.cold_at_s {
            by_phase[phase_of(*t, phase)] += 1;
        }
        let ratio = o.idle_ratio.as_ref().map_or_else(
            || "n/a".to_owned(),
            |r| format!("{:.2} ({} @{:.0}s)", r.ratio, short_pool(&r.pool), r.at_s),
        );
        println!(
            "  {:<11} {:>6} {:>7} {:>8.2}% {:>20} {:>10.2} {:>20}",
            o.variant.name(),
            if o.variant == Variant::Adaptive {
                format!("{FLOOR}+")
            } else {
                o.variant.fixed_target().to_string()
            },
            o.calls,
            o.cold_share_percent(),
            format!("{} / {} / {}", by_phase[0], by_phase[1], by_phase[2]),
            o.connects_per_call(pools_per_call),
            ratio,
        );
    }
    println!(
        "  (cold %: COLD turns of all turns; conn/call: connections created after warm-up per \
         call and pool; idle / in-use p95: the largest ratio, over every 0.5 s sample after the \
         first {window_s:.0} s, of a pool's idle connections to the p95 of its in-use \
         connections over the preceding {window_s:.0} s)"
    );
    for o in outcomes {
        println!(
            "  {}: errors {}; connections: {}",
            o.variant.name(),
            o.recorded.errors_line(),
            o.connection_lines.join("; ")
        );
    }
    println!();
    for o in outcomes {
        let name = o.variant.name();
        println!(
            "load.step.{name}.cold_share_percent: {:.2}",
            o.cold_share_percent()
        );
        println!(
            "load.step.{name}.connects_per_call: {:.2}",
            o.connects_per_call(pools_per_call)
        );
        match &o.idle_ratio {
            Some(r) => println!("load.step.{name}.idle_over_in_use_p95: {:.2}", r.ratio),
            None => println!("load.step.{name}.idle_over_in_use_p95: n/a"),
        }
        println!("load.step.{name}.errors: {}", o.errors);
        println!("load.step.{name}.leaked_connections: {}", o.leaked);
    }
}

fn short_pool(name: &str) -> &str {
    name.strip_prefix("speech-").unwrap_or(name)
}

/// Writes `load-step-report.json` and `load-step.svg` into `dir`.
fn write(
    dir: &Path,
    outcomes: &[Outcome],
    phase: Duration,
    pools_per_call: u64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let variants: serde_json::Map<String, serde_json::Value> = outcomes
        .iter()
        .map(|o| {
            let timeline: BTreeMap<&String, Vec<serde_json::Value>> = o
                .timeline
                .pools
                .iter()
                .map(|(pool, points)| {
                    let points = points
                        .iter()
                        .map(|p| json!([round(p.t_s), p.idle, p.in_use, p.target, p.created_total]))
                        .collect();
                    (pool, points)
                })
                .collect();
            let value = json!({
                "calls": o.calls,
                "errors": o.errors,
                "leaked": o.leaked,
                "cold_share_percent": round(o.cold_share_percent()),
                "cold_turns_at_s": o.recorded.cold_at_s.iter().map(|t| round(*t)).collect::<Vec<_>>(),
                "connects_after_warm_up": o.connects,
                "connects_per_call": round(o.connects_per_call(pools_per_call)),
                "idle_over_in_use_p95": o.idle_ratio.as_ref().map(|r| json!({
                    "ratio": round(r.ratio),
                    "at_s": round(r.at_s),
                    "pool": r.pool,
                    "idle": r.idle,
                    "in_use_p95": r.in_use_p95,
                })),
                "timeline_columns": ["t_s", "idle", "in_use", "target", "created_total"],
                "timeline": timeline,
            });
            (o.variant.name().to_owned(), value)
        })
        .collect();
    let report = json!({
        "phases": phases(phase).iter().map(|(rate, length)| json!({
            "calls_per_s": rate,
            "seconds": length.as_secs_f64(),
        })).collect::<Vec<_>>(),
        "variants": variants,
    });
    let json_path = dir.join("load-step-report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = dir.join("load-step.svg");
    plot(&svg_path, outcomes, phase)?;
    eprintln!(
        "load: wrote {} and {}",
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

/// One panel per pool: idle connections (thick) and connections in use (thin) over time,
/// one colour per variant.
fn plot(path: &Path, outcomes: &[Outcome], phase: Duration) -> anyhow::Result<()> {
    let pools: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.timeline.pools.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let panels = pools.len().max(1);
    let root = SVGBackend::new(path, (900, 420 * panels as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let areas = root.split_evenly((panels, 1));
    let end_s = outcomes
        .iter()
        .flat_map(|o| o.timeline.pools.values())
        .filter_map(|points| points.last().map(|p| p.t_s))
        .fold(phase.as_secs_f64() * 3.0, f64::max);
    for (area, pool) in areas.iter().zip(&pools) {
        let top = outcomes
            .iter()
            .filter_map(|o| o.timeline.pools.get(pool))
            .flatten()
            .map(|p| p.idle.max(p.in_use))
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(
                format!(
                    "{pool}: idle (thick) and in-use (thin) connections; {LOW_RATE}/s, \
                     {HIGH_RATE}/s, {LOW_RATE}/s for {:.0} s each",
                    phase.as_secs_f64()
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..end_s, 0.0..top * 1.1)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("seconds since traffic began")
            .y_desc("connections")
            .draw()
            .map_err(plot_error)?;
        for o in outcomes {
            let Some(points) = o.timeline.pools.get(pool) else {
                continue;
            };
            let colour = o.variant.colour();
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.t_s, p.idle as f64)),
                    colour.stroke_width(3),
                ))
                .map_err(plot_error)?
                .label(format!("{} idle", o.variant.name()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3))
                });
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.t_s, p.in_use as f64)),
                    colour.stroke_width(1),
                ))
                .map_err(plot_error)?
                .label(format!("{} in use", o.variant.name()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(1))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
    }
    root.present().map_err(plot_error)?;
    Ok(())
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the step plot: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_follow_each_phase_rate() {
        let phases = [
            (2.0, Duration::from_secs(500)),
            (20.0, Duration::from_secs(500)),
            (2.0, Duration::from_secs(500)),
        ];
        let times = arrivals(&phases, &mut fastrand::Rng::with_seed(7));
        let count = |from: u64, to: u64| {
            times
                .iter()
                .filter(|t| **t >= Duration::from_secs(from) && **t < Duration::from_secs(to))
                .count() as f64
        };
        // 1,000 and 10,000 expected: within 10 % (far beyond 5 standard deviations).
        assert!(
            (900.0..1100.0).contains(&count(0, 500)),
            "{}",
            count(0, 500)
        );
        assert!((9000.0..11000.0).contains(&count(500, 1000)));
        assert!((900.0..1100.0).contains(&count(1000, 1500)));
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(times.last().is_some_and(|t| *t < Duration::from_secs(1500)));
    }

    #[test]
    fn variants_are_chosen_by_their_machine_line_names() {
        use clap::ValueEnum;
        for variant in Variant::ALL {
            assert_eq!(
                Variant::from_str(variant.name(), false),
                Ok(variant),
                "{}",
                variant.name()
            );
        }
    }

    #[test]
    fn the_fixed_variants_are_the_floor_and_the_peak_sizing() {
        assert_eq!(Variant::Floor.fixed_target(), 2);
        assert_eq!(Variant::HandSized.fixed_target(), 22);
    }

    #[test]
    fn cold_turns_are_assigned_to_their_phase() {
        let phase = Duration::from_secs(60);
        assert_eq!(phase_of(0.5, phase), 0);
        assert_eq!(phase_of(61.0, phase), 1);
        assert_eq!(phase_of(179.0, phase), 2);
        // Calls of the last phase that finish during the drain stay in the last phase.
        assert_eq!(phase_of(200.0, phase), 2);
    }
}
