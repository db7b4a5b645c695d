//! `cargo xtask soak`: many concurrent voice sessions for a long time against the mock
//! backend, watching for what only time reveals: deadlocks, leaks, memory growth.
//!
//! `--sessions` callers (default 1000) each run calls back to back for `--duration`
//! seconds (default 60): open the STT stream with a fresh session id, three turns (a
//! 300 ms utterance, then a TTS reply) with 200 ms think time, `DELETE` the session. The
//! service runs in this process with the mock backend's instant profile, so the pool and
//! the service are the bottleneck rather than simulated network time.
//!
//! Once a second it samples the process's resident memory (`VmRSS`), the tokio tasks alive
//! and the turns completed. It fails when: any request fails or hangs, or a caller task
//! panics; any 5-second window completes no turn (a stall); the callers do not finish
//! after the window; the service does not shut down; a connection leaks (mock created != closed); tasks stay alive after
//! the run; or memory grows by more than 25 % between the end of the first quarter
//! (after ramp-up) and the end of the run.
//!
//! Linux only for the memory figure (`/proc/self/status`); elsewhere it is reported as
//! unavailable and not checked.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::task::JoinSet;

use crate::client::Client;
use crate::load::call::{self, CallPlan};
use crate::load::stats::{Kind, Stats, Summary};
use crate::load::target::{Backend, InProcess, Setup};

/// How long callers may take to finish their last call after the window.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// Allowed RSS growth from the end of the first quarter to the end of the run.
const MAX_GROWTH: f64 = 0.25;
/// A stall: this long without a completed turn while callers are running.
const STALL_WINDOW: u64 = 5;

/// `cargo xtask soak` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Concurrent sessions (callers running calls back to back).
    #[arg(long, value_name = "N", default_value_t = 1_000)]
    sessions: usize,
    /// How long callers keep starting calls, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    duration: u64,
}

/// One sample per second.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: u64,
    rss_kib: Option<u64>,
    tasks: usize,
    turns: u64,
}

/// Entry point of `cargo xtask soak`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if !(1..=20_000).contains(&args.sessions) {
        bail!("--sessions must be in 1..=20000, got {}", args.sessions);
    }
    if !(1..=86_400).contains(&args.duration) {
        bail!(
            "--duration must be in 1..=86400 seconds, got {}",
            args.duration
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(soak(args))
}

async fn soak(args: &Args) -> anyhow::Result<()> {
    speech_azure::install_crypto_provider();
    let baseline_tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    // Every session holds one connection of each kind for the length of its call.
    let setup = Setup {
        backend: Backend::Mock,
        realistic: false,
        rtt: Duration::ZERO,
        warm_tts: 32,
        warm_stt: 32,
        max_tts: args.sessions + 64,
        max_stt: args.sessions + 64,
        adaptive: false,
    };
    let service = InProcess::start(setup).await?;
    let client = Client::new(&service.base_url(), None, call::REQUEST_TIMEOUT)?;
    let plan = CallPlan {
        turns: 3,
        think: Duration::from_millis(200),
        stt: true,
        utterance: Duration::from_millis(300),
    };
    let window = Duration::from_secs(args.duration);
    eprintln!(
        "soak: {} sessions for {} s against the in-process service (mock backend, instant profile)",
        args.sessions, args.duration
    );

    let stats = Arc::new(Stats::default());
    let samples = Arc::new(Mutex::new(Vec::new()));
    let began = Instant::now();
    let stop_at = tokio::time::Instant::now() + window;
    let progress = tokio::spawn(crate::load::progress("soak", stats.clone(), began, window));
    let sampler = tokio::spawn(sample_every_second(stats.clone(), samples.clone(), began));

    let mut callers = JoinSet::new();
    for caller in 0..args.sessions {
        let (client, stats) = (client.clone(), stats.clone());
        callers.spawn(async move {
            let mut n = 0u64;
            while tokio::time::Instant::now() < stop_at {
                n += 1;
                stats.started.fetch_add(1, Ordering::Relaxed);
                call::call(&client, &format!("soak-{caller}-{n}"), plan, &stats).await;
                stats.finished.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let _ = tokio::time::timeout(window + DRAIN_LIMIT, async {
        while let Some(joined) = callers.join_next().await {
            stats.call_task_ended(joined);
        }
    })
    .await;
    // Callers still running are reported (and fail the run) as unfinished callers.
    let unfinished = callers.len();
    callers.abort_all();
    while callers.join_next().await.is_some() {}
    let elapsed = began.elapsed();
    progress.abort();
    let _ = progress.await;
    sampler.abort();
    let _ = sampler.await;
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();

    let pools = service.state().snapshots();
    let connections = service.stop().await?;
    // The HTTP client's idle keep-alive connections are tasks too.
    drop(client);
    // The service's close tasks and connection tasks end shortly after shutdown; wait
    // (bounded) for the task count to return to where it was before the service started.
    let tasks_after = settle_tasks(baseline_tasks).await;

    let recorded = stats.recorded();
    let calls = stats.finished.load(Ordering::Relaxed);
    let errors: u64 = recorded.errors.values().sum();
    let turns = stats.turns.load(Ordering::Relaxed);
    let stalls = stalls(&samples, window.as_secs());
    let memory = Memory::of(&samples, window.as_secs());

    println!();
    println!("soak report");
    println!(
        "  {} sessions for {} s (mock backend, instant profile): {calls} calls, {turns} turns in {:.1} s",
        args.sessions,
        args.duration,
        elapsed.as_secs_f64()
    );
    println!("  errors: {}", recorded.errors_line());
    for kind in [Kind::Tts, Kind::Stt] {
        let all: Vec<f64> = recorded
            .latency_ms
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .flat_map(|(_, v)| v.iter().copied())
            .collect();
        if let Some(s) = Summary::of(&all) {
            println!(
                "  {} {}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} turns)",
                kind.as_str(),
                kind.latency_name(),
                s.p50,
                s.p99,
                s.max,
                s.count
            );
        }
    }
    for pool in &pools {
        println!(
            "  pool {}: after the run size {} (idle {}, target {}); allocations: dedicated {} warm {} cold {}",
            pool.name,
            pool.size,
            pool.warm_pool_size,
            pool.warm_pool_target,
            pool.allocations_dedicated,
            pool.allocations_warm,
            pool.allocations_cold
        );
    }
    for line in &connections.lines {
        println!("  {line}");
    }
    let peak_tasks = samples.iter().map(|s| s.tasks).max().unwrap_or(0);
    println!(
        "  tokio tasks alive: {baseline_tasks} before the service, peak {peak_tasks} during the run, {tasks_after} after shutdown"
    );
    println!("  windows of {STALL_WINDOW} s without a completed turn: {stalls}");
    match &memory {
        Some(m) => println!(
            "  resident memory: {:.1} MiB after ramp-up ({} s), {:.1} MiB at the end, peak {:.1} MiB: growth {:+.1}%",
            m.after_ramp_kib as f64 / 1024.0,
            m.ramp_s,
            m.end_kib as f64 / 1024.0,
            m.peak_kib as f64 / 1024.0,
            m.growth() * 100.0
        ),
        None => println!("  resident memory: unavailable on this platform"),
    }
    println!();
    println!("soak.sessions: {}", args.sessions);
    println!("soak.calls: {calls}");
    println!("soak.turns: {turns}");
    println!("soak.errors: {errors}");
    println!("soak.stalled_windows: {stalls}");
    println!("soak.unfinished_callers: {unfinished}");
    println!("soak.leaked_connections: {}", connections.leaked);
    println!(
        "soak.tasks_left: {}",
        tasks_after.saturating_sub(baseline_tasks)
    );
    if let Some(m) = &memory {
        println!(
            "soak.rss_mib.after_ramp: {:.1}",
            m.after_ramp_kib as f64 / 1024.0
        );
        println!("soak.rss_mib.end: {:.1}", m.end_kib as f64 / 1024.0);
        println!("soak.rss_growth_percent: {:.1}", m.growth() * 100.0);
    }

    let mut failures = Vec::new();
    if errors > 0 {
        failures.push(format!(
            "{errors} errors (failed requests and panicked callers)"
        ));
    }
    if stalls > 0 {
        failures.push(format!("{stalls} stalled windows"));
    }
    if unfinished > 0 {
        failures.push(format!("{unfinished} callers did not finish"));
    }
    if connections.leaked > 0 {
        failures.push(format!("{} leaked connections", connections.leaked));
    }
    if tasks_after > baseline_tasks {
        failures.push(format!(
            "{} tasks still alive after shutdown",
            tasks_after - baseline_tasks
        ));
    }
    if let Some(m) = memory.filter(|m| m.growth() > MAX_GROWTH) {
        failures.push(format!(
            "memory grew {:.1}% after ramp-up (limit {:.0}%)",
            m.growth() * 100.0,
            MAX_GROWTH * 100.0
        ));
    }
    if !failures.is_empty() {
        bail!("soak failed: {}", failures.join("; "));
    }
    Ok(())
}

/// Records a [`Sample`] every second until aborted.
async fn sample_every_second(stats: Arc<Stats>, samples: Arc<Mutex<Vec<Sample>>>, began: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let sample = Sample {
            at_s: began.elapsed().as_secs(),
            rss_kib: rss_kib(),
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            turns: stats.turns.load(Ordering::Relaxed),
        };
        samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sample);
    }
}

/// Waits up to 5 s for the alive task count to fall to `baseline`; returns the last count.
async fn settle_tasks(baseline: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    for _ in 0..50 {
        if metrics.num_alive_tasks() <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    metrics.num_alive_tasks()
}

/// The process's resident set size from `/proc/self/status`, in KiB.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_rss_kib(&status)
}

fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Windows of [`STALL_WINDOW`] seconds inside the run's window in which no turn completed.
fn stalls(samples: &[Sample], window_s: u64) -> usize {
    let inside: Vec<&Sample> = samples.iter().filter(|s| s.at_s <= window_s).collect();
    inside
        .windows(STALL_WINDOW as usize + 1)
        .filter(|w| w[0].turns == w[w.len() - 1].turns)
        .count()
}

/// Resident memory after ramp-up versus at the end.
#[derive(Debug, Clone, Copy)]
struct Memory {
    /// When ramp-up is taken to be over: the end of the first quarter of the window.
    ramp_s: u64,
    after_ramp_kib: u64,
    end_kib: u64,
    peak_kib: u64,
}

impl Memory {
    fn of(samples: &[Sample], window_s: u64) -> Option<Self> {
        let ramp_s = (window_s / 4).max(1);
        let rss: Vec<(u64, u64)> = samples
            .iter()
            .filter(|s| s.at_s <= window_s)
            .filter_map(|s| Some((s.at_s, s.rss_kib?)))
            .collect();
        let after_ramp_kib = rss.iter().find(|(at, _)| *at >= ramp_s)?.1;
        let end_kib = rss.last()?.1;
        let peak_kib = rss.iter().map(|(_, kib)| *kib).max()?;
        Some(Self {
            ramp_s,
            after_ramp_kib,
            end_kib,
            peak_kib,
        })
    }

    fn growth(&self) -> f64 {
        self.end_kib as f64 / self.after_ramp_kib.max(1) as f64 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: u64, rss: u64, turns: u64) -> Sample {
        Sample {
            at_s,
            rss_kib: Some(rss),
            tasks: 0,
            turns,
        }
    }

    #[test]
    fn rss_is_read_from_proc_status() {
        let status = "Name:\txtask\nVmPeak:\t  9000 kB\nVmRSS:\t   51234 kB\nThreads: 3\n";
        assert_eq!(parse_rss_kib(status), Some(51_234));
        assert_eq!(parse_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn a_window_without_turns_is_a_stall() {
        let moving: Vec<Sample> = (0..=12).map(|t| sample(t, 100, t * 10)).collect();
        assert_eq!(stalls(&moving, 12), 0);
        let mut stuck = moving.clone();
        for s in stuck.iter_mut().skip(4) {
            s.turns = 40;
        }
        // Turns stop after second 4: every 5-second window from 4..9 on is a stall.
        assert_eq!(stalls(&stuck, 12), 4);
    }

    #[test]
    fn growth_is_measured_from_the_end_of_ramp_up() {
        let samples: Vec<Sample> = (0..=8).map(|t| sample(t, 100 + t * 10, t)).collect();
        let m = Memory::of(&samples, 8).unwrap();
        assert_eq!(
            (m.ramp_s, m.after_ramp_kib, m.end_kib, m.peak_kib),
            (2, 120, 180, 180)
        );
        assert!((m.growth() - 0.5).abs() < 1e-9);
        assert!(Memory::of(&[], 8).is_none());
    }
}
