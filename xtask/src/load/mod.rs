//! `cargo xtask load`: simulated voice calls against the service.
//!
//! Calls arrive as a Poisson process (exponential inter-arrival times) at `--rate` calls
//! per second for `--duration` seconds. Each call opens the STT websocket with its own
//! session id, then runs `--turns` turns: the caller speaks (an utterance streamed at
//! real-time pace; we time the first recognition result) and the agent answers
//! (`POST /api/v1/tts`; we time the first audio byte), with `--think-ms` between turns.
//! It ends with `DELETE /api/v1/sessions/{id}`. Every turn records its tier and, from the
//! service's `Server-Timing` header, how long it waited for its connection.
//!
//! Without `--url` the service runs in this process: with the mock backend (realistic
//! latencies, 400 ms cold connect) or, with `--backend emulator`, with the real Azure
//! client against the local emulator over TLS at a simulated round trip. Connection
//! accounting after shutdown compares what the backend opened with what it closed
//! (`load.leaked_connections`). With `--url` (loopback only) it comes from the pools
//! endpoint: `created_total - closed_total - size` summed over the pools.
//!
//! Shows a progress bar (a line every 5 s when stderr is not a terminal), then a report and
//! machine-readable lines (`load.calls: N`, `load.errors: N`, ...; `load.connects_per_call`
//! counts the connections the pools created per call in the steady phase, see
//! [`timeline`]); `--out DIR` also writes `load-report.json` and `load-latency.svg`. Exits
//! non-zero on any error or leak. `--profile step` runs a load that jumps, for several
//! warm-target variants side by side (see [`profile`]).

pub(crate) mod call;
mod profile;
mod report;
pub(crate) mod stats;
pub(crate) mod target;
pub(crate) mod timeline;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tokio::task::JoinSet;

use crate::client::{Client, ErrorClass, Request};
use call::CallPlan;
use stats::Stats;
use target::{Backend, InProcess, Setup};

/// Upper bound on calls in flight at once, whatever the rate.
const MAX_IN_FLIGHT: u64 = 2_000;
/// How long calls still running at the end of the arrival window may take to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// `cargo xtask load` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Short run (rate 10/s for 15 s, 3 turns, 300 ms think time): under a minute.
    #[arg(long)]
    quick: bool,
    /// Call arrival rate, calls per second (default 10).
    #[arg(long, value_name = "CALLS_PER_SEC")]
    rate: Option<f64>,
    /// How long new calls keep arriving, seconds (default 60; 15 with --quick).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Turns per call (default 4; 3 with --quick).
    #[arg(long, value_name = "N")]
    turns: Option<u32>,
    /// Think time between turns, milliseconds (default 1000; 300 with --quick).
    #[arg(long, value_name = "N")]
    think_ms: Option<u64>,
    /// TTS only: no STT stream and no caller utterances.
    #[arg(long)]
    no_stt: bool,
    /// Length of each caller utterance, milliseconds (streamed in 100 ms frames).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    utterance_ms: u64,
    /// Backend of the in-process service.
    #[arg(long, value_enum, default_value_t = Backend::Mock)]
    backend: Backend,
    /// Simulated network round trip of the emulator (`--backend emulator`), milliseconds.
    #[arg(long, value_name = "N", default_value_t = 50)]
    rtt_ms: u64,
    /// Also write the report as JSON and the latency plot as SVG into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// A running service (loopback only, e.g. http://127.0.0.1:8080). Without it the
    /// service is started in this process.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Bearer key for a service started with SERVICE_API_KEY (only with --url).
    #[arg(
        long,
        env = "SERVICE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    api_key: Option<String>,
    /// Load shape: `constant` (Poisson arrivals at --rate) or `step` (2, then 20, then 2
    /// calls/s, one phase each, for several warm-target variants side by side).
    #[arg(long, value_enum, default_value_t = profile::Profile::Constant)]
    profile: profile::Profile,
    /// Step profile: a warm-target variant to run (repeatable) [default: all].
    #[arg(long = "variant", value_enum, value_name = "VARIANT")]
    variants: Vec<profile::Variant>,
    /// Step profile: length of each phase, seconds (default 60; 20 with --quick).
    #[arg(long, value_name = "SECS")]
    phase_secs: Option<f64>,
}

/// The resolved settings of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rate: f64,
    duration: Duration,
    call: CallPlan,
    max_calls: u64,
}

impl Plan {
    fn from_args(args: &Args) -> anyhow::Result<Self> {
        let (rate, duration, turns, think_ms) = if args.quick {
            (10.0, 15.0, 3, 300)
        } else {
            (10.0, 60.0, 4, 1000)
        };
        let rate = args.rate.unwrap_or(rate);
        let duration = args.duration.unwrap_or(duration);
        let turns = args.turns.unwrap_or(turns);
        let think_ms = args.think_ms.unwrap_or(think_ms);
        if !(rate.is_finite() && rate > 0.0 && rate <= 10_000.0) {
            bail!("--rate must be in (0, 10000], got {rate}");
        }
        if !(duration.is_finite() && duration > 0.0 && duration <= 86_400.0) {
            bail!("--duration must be in (0, 86400] seconds, got {duration}");
        }
        if turns == 0 || turns > 1_000 {
            bail!("--turns must be in 1..=1000, got {turns}");
        }
        if !(100..=30_000).contains(&args.utterance_ms) {
            bail!(
                "--utterance-ms must be in 100..=30000, got {}",
                args.utterance_ms
            );
        }
        // Bounded in count as well as in time: twice the expected number of calls.
        let max_calls = (rate * duration * 2.0).ceil() as u64 + 10;
        Ok(Self {
            rate,
            duration: Duration::from_secs_f64(duration),
            call: CallPlan {
                turns,
                think: Duration::from_millis(think_ms),
                stt: !args.no_stt,
                utterance: Duration::from_millis(args.utterance_ms),
            },
            max_calls,
        })
    }

    /// The in-process service's pools, sized for this load. The warm target is the rate
    /// times one second plus two: a refill takes one cold connect (450 ms with the mock),
    /// and that covers the 99.9th percentile of Poisson arrivals in that time (11 at
    /// 10 calls/s). Room for every call in flight to hold its own connections.
    fn setup(&self, args: &Args) -> Setup {
        let warm = ((self.rate.ceil() as usize) + 2).clamp(3, 256);
        Setup {
            backend: args.backend,
            realistic: true,
            rtt: Duration::from_millis(args.rtt_ms),
            warm_tts: warm,
            warm_stt: if self.call.stt { warm } else { 1 },
            max_tts: 1_024,
            max_stt: if self.call.stt { 1_024 } else { 8 },
            // The hand-sized target above is what these figures have always measured;
            // `--profile step` compares it with the adaptive one.
            adaptive: false,
        }
    }

    fn describe(&self, target: &str) -> String {
        format!(
            "{target}: arrivals {:.1}/s for {:.0} s, {} turns per call ({}), {} ms think time",
            self.rate,
            self.duration.as_secs_f64(),
            self.call.turns,
            if self.call.stt {
                format!(
                    "STT {} ms utterance then TTS",
                    self.call.utterance.as_millis()
                )
            } else {
                "TTS only".to_owned()
            },
            self.call.think.as_millis(),
        )
    }
}

/// Entry point of `cargo xtask load`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.profile == profile::Profile::Step {
        return profile::run(args);
    }
    let plan = Plan::from_args(args)?;
    let remote = args.url.as_deref().map(target::loopback_base).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run_async(args, plan, remote))
}

async fn run_async(args: &Args, plan: Plan, remote: Option<String>) -> anyhow::Result<()> {
    speech_azure::install_crypto_provider();
    let (in_process, base, auth, target_name) = match remote {
        Some(url) => {
            let name = url.clone();
            (None, url, args.api_key.clone(), name)
        }
        None => {
            let running = InProcess::start(plan.setup(args)).await?;
            let base = running.base_url();
            let name = match args.backend {
                Backend::Mock => {
                    "in-process service, mock backend (realistic latencies)".to_owned()
                }
                Backend::Emulator => format!(
                    "in-process service, Azure backend, emulator over TLS at {} ms RTT",
                    args.rtt_ms
                ),
            };
            (Some(running), base, None, name)
        }
    };
    let client = Client::new(&base, auth, call::REQUEST_TIMEOUT)?;
    let settings = plan.describe(&target_name);
    eprintln!("load: {settings}");

    let stats = Arc::new(Stats::default());
    let began = Instant::now();
    let progress = tokio::spawn(progress("load", stats.clone(), began, plan.duration));
    let sampled = match &in_process {
        Some(running) => timeline::Source::State(running.state().clone()),
        None => timeline::Source::Remote(client.clone()),
    };
    let (timeline, sampler) = timeline::spawn_sampler(sampled, began);
    // Connects per call are counted after the first third of the arrival window, when the
    // pools have grown to the load.
    let steady_from = plan.duration / 3;
    let mut steady_calls = 0u64;

    // Poisson arrivals: exponential gaps with mean 1/rate.
    let mut calls = JoinSet::new();
    let mut rng = fastrand::Rng::new();
    let deadline = tokio::time::Instant::now() + plan.duration;
    let mut next = tokio::time::Instant::now();
    let pid = std::process::id();
    let mut launched = 0u64;
    loop {
        let gap = -(1.0 - rng.f64()).ln() / plan.rate;
        next += Duration::from_secs_f64(gap);
        if next >= deadline || launched >= plan.max_calls {
            break;
        }
        tokio::time::sleep_until(next).await;
        // Reap finished calls so the set stays small.
        while let Some(joined) = calls.try_join_next() {
            stats.call_task_ended(joined);
        }
        if calls.len() as u64 >= MAX_IN_FLIGHT {
            stats.error(Request::Call, ErrorClass::InFlightCap);
            continue;
        }
        launched += 1;
        if next - (deadline - plan.duration) >= steady_from {
            steady_calls += 1;
        }
        stats.started.fetch_add(1, Ordering::Relaxed);
        let (client, stats) = (client.clone(), stats.clone());
        let id = format!("load-{pid}-{launched}");
        calls.spawn(async move {
            call::call(&client, &id, plan.call, &stats).await;
            stats.finished.fetch_add(1, Ordering::Relaxed);
        });
    }
    drain_calls(&mut calls, &stats).await;
    let elapsed = began.elapsed();
    progress.abort();
    let _ = progress.await;
    sampler.abort();
    let _ = sampler.await;
    let timeline = timeline::Timeline::copy_of(&timeline);

    let connections = match in_process {
        Some(running) => running.stop().await?,
        None => target::remote_connections(&client).await?,
    };
    let recorded = stats.recorded();
    let info = report::RunInfo {
        settings,
        settings_json: json!({
            "target": target_name,
            "rate_per_s": plan.rate,
            "duration_s": plan.duration.as_secs_f64(),
            "turns_per_call": plan.call.turns,
            "think_ms": plan.call.think.as_millis() as u64,
            "stt": plan.call.stt,
            "utterance_ms": plan.call.utterance.as_millis() as u64,
        }),
        calls: stats.started.load(Ordering::Relaxed),
        completed: stats.finished.load(Ordering::Relaxed),
        elapsed,
        connections: &connections,
    };
    report::print(&info, &recorded);
    timeline::print_steady_connects(
        &timeline,
        steady_from.as_secs_f64(),
        plan.duration.as_secs_f64(),
        steady_calls,
        if plan.call.stt { 2 } else { 1 },
    );
    if let Some(dir) = &args.out {
        report::write(dir, &info, &recorded)?;
    }
    let errors = stats.errors.load(Ordering::Relaxed);
    if errors > 0 || connections.leaked > 0 {
        bail!("{errors} errors, {} leaked connections", connections.leaked);
    }
    Ok(())
}

/// A progress bar over the arrival window, then "draining" until the last call ends. When
/// stderr is not a terminal (CI logs) the bar hides itself and a line every 5 s replaces it.
pub(crate) async fn progress(
    label: &'static str,
    stats: Arc<Stats>,
    began: Instant,
    window: Duration,
) {
    let bar = indicatif::ProgressBar::new(window.as_secs().max(1));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let plain = bar.is_hidden();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let started = stats.started.load(Ordering::Relaxed);
        let finished = stats.finished.load(Ordering::Relaxed);
        let line = format!(
            "calls {started} started, {finished} done, {} in flight | turns {} | errors {}",
            started.saturating_sub(finished),
            stats.turns.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed),
        );
        let elapsed = began.elapsed();
        if plain {
            if elapsed.as_secs().is_multiple_of(5) {
                eprintln!("{label}: {:>4.0} s  {line}", elapsed.as_secs_f64());
            }
        } else {
            bar.set_position(elapsed.as_secs().min(window.as_secs()));
            bar.set_message(if elapsed >= window {
                format!("draining: {line}")
            } else {
                line
            });
        }
    }
}

/// Waits, at most [`DRAIN_LIMIT`], for every call task to end. A panicked call counts as an
/// error and a call still running at the limit as unfinished (then it is aborted), so no
/// call leaves the report silently.
pub(crate) async fn drain_calls(calls: &mut tokio::task::JoinSet<()>, stats: &Stats) {
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        while let Some(joined) = calls.join_next().await {
            stats.call_task_ended(joined);
        }
    })
    .await
    .is_ok();
    if !drained {
        for _ in 0..calls.len() {
            stats.error(Request::Call, ErrorClass::Unfinished);
        }
        calls.abort_all();
        while calls.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        for (flags, flag) in [
            (&["--rate", "0"][..], "--rate"),
            (&["--duration", "0"][..], "--duration"),
            (&["--turns", "0"][..], "--turns"),
            (&["--utterance-ms", "5"][..], "--utterance-ms"),
        ] {
            let args = parse(flags).unwrap();
            let error = Plan::from_args(&args).unwrap_err().to_string();
            assert!(error.contains(flag), "{flags:?}: {error}");
        }
    }

    /// The step profile end to end on tiny phases: the floor variant's service is driven,
    /// its report and plot are written, and its pools were sampled over time.
    #[test]
    fn a_short_step_run_reports_the_variant_and_its_timeline() {
        let dir = std::env::temp_dir().join(format!("xtask-step-test-{}", std::process::id()));
        let out = dir.to_string_lossy().into_owned();
        let args = parse(&[
            "--profile",
            "step",
            "--variant",
            "floor",
            "--variant",
            "adaptive",
            "--phase-secs",
            "1",
            "--turns",
            "1",
            "--think-ms",
            "10",
            "--utterance-ms",
            "300",
            "--out",
            &out,
        ])
        .unwrap();
        run(&args).expect("a clean step run");
        let report: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join("load-step-report.json")).unwrap(),
        )
        .unwrap();
        let floor = &report["variants"]["floor"];
        assert!(floor["calls"].as_u64().unwrap() >= 1, "{report}");
        assert_eq!(floor["errors"], 0);
        assert_eq!(floor["leaked"], 0);
        for pool in ["speech-tts", "speech-stt"] {
            let samples = floor["timeline"][pool].as_array().unwrap();
            assert!(samples.len() >= 4, "{pool}: {} samples", samples.len());
        }
        let adaptive = &report["variants"]["adaptive"];
        assert_eq!(adaptive["errors"], 0, "{report}");
        assert_eq!(adaptive["leaked"], 0, "{report}");
        assert_eq!(report["variants"].as_object().unwrap().len(), 2);
        let svg = std::fs::read_to_string(dir.join("load-step.svg")).unwrap();
        assert!(svg.contains("floor idle"));
        assert!(svg.contains("adaptive idle"));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The whole generator on a tiny load against the in-process mock service: calls run,
    /// the report files are written and agree with what happened, nothing leaks.
    #[test]
    fn a_short_run_writes_a_consistent_report() {
        let dir = std::env::temp_dir().join(format!("xtask-load-test-{}", std::process::id()));
        let out = dir.to_string_lossy().into_owned();
        let args = parse(&[
            "--rate",
            "5",
            "--duration",
            "1",
            "--turns",
            "2",
            "--think-ms",
            "10",
            "--utterance-ms",
            "300",
            "--out",
            &out,
        ])
        .unwrap();
        run(&args).expect("a clean run");
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("load-report.json")).unwrap())
                .unwrap();
        let calls = report["calls"].as_u64().unwrap();
        assert!(calls >= 1, "{report}");
        assert_eq!(report["completed"], calls);
        assert_eq!(report["errors"]["total"], 0);
        assert_eq!(report["connections"]["leaked"], 0);
        for kind in ["tts", "stt"] {
            assert_eq!(
                report["kinds"][kind]["turns"],
                calls * 2,
                "{kind}: {report}"
            );
        }
        let svg = std::fs::read_to_string(dir.join("load-latency.svg")).unwrap();
        assert!(svg.contains("TTS: time to first audio"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
