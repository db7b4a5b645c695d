//! `cargo xtask bench azure`: the warm benefit measured the way Microsoft measures its
//! Speech SDK's server scenario, through this service, against a real Azure region (or,
//! with `--emulator`, the local emulator).
//!
//! Microsoft's method (the "server scenario" latency samples of the Speech SDK): 64
//! synthesizers run concurrently, each speaks 3 turns one after the other, turn 0 is left
//! out (it pays process-wide set-up: DNS, the first TLS session, token fetches), and the
//! first-byte and finish latencies of the rest are reported as average, p90 and p95.
//!
//! Here each of the 64 workers is a client of the service and each turn is one
//! `POST /api/v1/tts` without a session id, so each turn takes a connection from the pool:
//! - **cold**: the service with `WARM_POOL_ENABLED=false` and a 1 ms `POOL_MAX_AGE`, so no
//!   connection is kept or handed on and every turn connects (TCP, TLS, websocket upgrade,
//!   `speech.config`) before it can speak, as a service without a pool does;
//! - **warm**: the service with a warm target of 64 per pool, prepared before timing, so
//!   every turn gets a connected socket.
//!
//! STT the same way: 64 workers × 3 turns, each turn a new stream on its own session id
//! (so it takes a connection from the warm set, not a session's), one second of audio sent
//! at once, timed from opening the stream to the first recognition result; turn 0 left
//! out. Every timed turn's tier is checked: a sample served by the other tier is counted,
//! printed and left out; a case left with no sample fails the run. That every cold turn
//! really connected is checked twice: the service's pool must have created a connection
//! and counted a COLD hand-out for each turn, and against the emulator the emulator must
//! have accepted a websocket for each.
//!
//! With `AZURE_SPEECH_KEY` and `AZURE_SPEECH_REGION` (or `AZURE_SPEECH_ENDPOINT`) set it
//! runs against Azure; without them it says so and exits 0. `--emulator` runs the same
//! against the local emulator over TLS at a simulated round trip; the test suite runs it
//! that way, smaller (`a_small_emulator_run_meets_every_check`), so the command cannot rot.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use service::config::{AzureAuth, BackendChoice};
use service::secret::Secret;
use service::test_support::LoopbackServer;
use service::{Config, build_state};
use speech_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use tokio::task::JoinSet;

use crate::client::{Client, Pace};
use crate::load::target::CaFile;

/// The key the in-process emulator accepts (it never leaves this process).
const EMULATOR_KEY: &str = "xtask-bench-azure-emulator-key";
/// Bound on each request: far above any healthy turn, so only a hang trips it.
const REQUEST_BOUND: Duration = Duration::from_secs(60);

/// `cargo xtask bench azure` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run against the local emulator (TLS, simulated round trip) instead of Azure.
    #[arg(long)]
    emulator: bool,
    /// Simulated round trip of the emulator, milliseconds.
    #[arg(long, value_name = "N", default_value_t = 20)]
    rtt_ms: u64,
    /// Concurrent synthesizers / recognizers (Microsoft's method: 64).
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: usize,
    /// Turns per worker, the first left out (Microsoft's method: 3).
    #[arg(long, value_name = "N", default_value_t = 3)]
    turns: usize,
}

/// Where the speech service is.
enum Target {
    Azure {
        key: String,
        region: Option<String>,
        endpoint: Option<String>,
    },
    Emulator(EmulatorHandle, CaFile),
}

/// Entry point.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if !(1..=512).contains(&args.concurrency) {
        bail!("--concurrency must be in 1..=512, got {}", args.concurrency);
    }
    if !(2..=100).contains(&args.turns) {
        bail!(
            "--turns must be in 2..=100 (turn 0 is left out), got {}",
            args.turns
        );
    }
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let key = env("AZURE_SPEECH_KEY");
    let region = env("AZURE_SPEECH_REGION");
    let endpoint = env("AZURE_SPEECH_ENDPOINT");
    if !args.emulator && (key.is_none() || (region.is_none() && endpoint.is_none())) {
        println!(
            "bench azure: AZURE_SPEECH_KEY and AZURE_SPEECH_REGION (or AZURE_SPEECH_ENDPOINT) \
             are not set, so nothing was measured against Azure. Set them to measure your \
             region, or pass --emulator to run the same method against the local emulator."
        );
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        speech_azure::install_crypto_provider();
        let target = if args.emulator {
            let emulator = Emulator::start(
                EmulatorConfig::default()
                    .with_key(EMULATOR_KEY)
                    .with_rtt(Duration::from_millis(args.rtt_ms)),
            )
            .await
            .context("starting the emulator")?;
            let ca = CaFile::write(&emulator)?;
            Target::Emulator(emulator, ca)
        } else {
            Target::Azure {
                key: key.unwrap_or_default(),
                region,
                endpoint,
            }
        };
        let result = run_async(args, &target).await;
        if let Target::Emulator(emulator, ca) = target {
            emulator.shutdown().await;
            drop(ca);
        }
        result
    })
}

fn config(target: &Target, warm: bool, concurrency: usize) -> Config {
    let mut c = Config::defaults();
    c.backend = BackendChoice::Azure;
    c.azure_speech_auth = AzureAuth::Key;
    match target {
        Target::Azure {
            key,
            region,
            endpoint,
        } => {
            c.azure_speech_key = Some(Secret::new(key.clone()));
            c.azure_speech_region = region.clone();
            c.azure_speech_endpoint = endpoint.clone();
        }
        Target::Emulator(emulator, ca) => {
            c.azure_speech_key = Some(Secret::new(EMULATOR_KEY));
            c.azure_speech_endpoint = Some(emulator.base_url_http());
            c.azure_speech_ca_cert = Some(ca.0.clone());
        }
    }
    c.warm_pool_enabled = warm;
    if !warm {
        // Without a warm target a returned connection would still be reused by the next
        // turn; a connection this young is past its age limit at once, so every cold turn
        // connects, as a service without a pool does.
        c.pool_max_age = Duration::from_millis(1);
    }
    c.warm_pool_tts_size = concurrency;
    c.warm_pool_stt_size = concurrency;
    c.pool_tts_max_size = concurrency * 2 + 8;
    c.pool_stt_max_size = concurrency * 2 + 8;
    c.pool_acquire_timeout = Duration::from_secs(30);
    c
}

/// Latencies of one case, milliseconds, and what the turns cost in connections.
#[derive(Debug, Default)]
struct Samples {
    first: Vec<f64>,
    finish: Vec<f64>,
    /// Timed turns served by the other tier than the case's.
    wrong_tier: u64,
    errors: u64,
    /// Turns run, turn 0 included.
    turns: u64,
    /// Connections the service's pool created while the turns ran (its `created_total`).
    connects: u64,
    /// Hand-outs the pool counted COLD while the turns ran.
    cold_hand_outs: u64,
    /// Websockets the emulator accepted while the turns ran (TTS and STT alike; with the
    /// warm pools on, their background refills too). `None` against Azure.
    emulator_opened: Option<u64>,
}

/// Websockets the emulator has accepted so far; `None` against Azure.
fn emulator_opened(target: &Target) -> Option<u64> {
    match target {
        Target::Emulator(emulator, _) => Some(emulator.counters().connections_opened),
        Target::Azure { .. } => None,
    }
}

async fn run_async(args: &Args, target: &Target) -> anyhow::Result<()> {
    let name = match target {
        Target::Azure {
            region, endpoint, ..
        } => format!(
            "Azure ({})",
            region
                .clone()
                .or_else(|| endpoint.clone())
                .unwrap_or_default()
        ),
        Target::Emulator(..) => format!("the local emulator over TLS at {} ms RTT", args.rtt_ms),
    };
    println!(
        "bench azure: {} concurrent workers x {} turns (turn 0 left out) through the service, against {name}",
        args.concurrency, args.turns
    );
    let mut rows = Vec::new();
    for warm in [false, true] {
        let state = build_state(&config(target, warm, args.concurrency))
            .map_err(|e| anyhow::anyhow!("building the service state: {e}"))?;
        if warm {
            state.warm_up().await;
        }
        let served = LoopbackServer::start(&state, Duration::from_secs(10))
            .await
            .context("serving on 127.0.0.1")?;
        let client = Client::new(&format!("http://{}", served.addr()), None, REQUEST_BOUND)?;
        let tier = if warm { "warm" } else { "cold" };
        let mut tts = Samples::default();
        let mut stt = Samples::default();
        for (kind, samples) in [(Kind::Tts, &mut tts), (Kind::Stt, &mut stt)] {
            let pool = || match kind {
                Kind::Tts => state.pools().tts.snapshot(),
                Kind::Stt => state.pools().stt.snapshot(),
            };
            let (pool_before, emulator_before) = (pool(), emulator_opened(target));
            *samples = workers(args, &client, tier, kind).await;
            let (pool_after, emulator_after) = (pool(), emulator_opened(target));
            samples.turns = (args.concurrency * args.turns) as u64;
            samples.connects = pool_after.created_total - pool_before.created_total;
            samples.cold_hand_outs = pool_after.allocations_cold - pool_before.allocations_cold;
            samples.emulator_opened = emulator_before.zip(emulator_after).map(|(b, a)| a - b);
        }
        served
            .stop(Duration::from_secs(30))
            .await
            .context("stopping the service")?;
        rows.push((tier, tts, stt));
    }
    println!();
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8}",
        "case (ms)", "avg", "p90", "p95", "samples"
    );
    let mut failures = Vec::new();
    for (tier, tts, stt) in &rows {
        for (what, v) in [
            ("tts first byte", &tts.first),
            ("tts finish", &tts.finish),
            ("stt first result", &stt.first),
        ] {
            println!(
                "{:<28} {:>8.1} {:>8.1} {:>8.1} {:>8}",
                format!("{tier} {what}"),
                avg(v),
                pct(v, 90),
                pct(v, 95),
                v.len()
            );
        }
        for (kind, s) in [("tts", tts), ("stt", stt)] {
            if s.errors > 0 {
                failures.push(format!("{tier} {kind}: {} failed turns", s.errors));
            }
            if s.wrong_tier > 0 {
                println!(
                    "note: {tier} {kind}: {} timed turns were served by another tier and left out",
                    s.wrong_tier
                );
            }
            if s.first.is_empty() {
                failures.push(format!("{tier} {kind}: no turn was served {tier}"));
            }
            let emulator = s.emulator_opened.map_or_else(String::new, |n| {
                format!("; the emulator accepted {n} websockets")
            });
            println!(
                "{tier} {kind}: {} turns; the pool created {} connections and handed out {} COLD{emulator}",
                s.turns, s.connects, s.cold_hand_outs
            );
            // The cold case means every turn connects: checked on the service's own count
            // and, against the emulator, on the server's.
            if *tier == "cold" && s.errors == 0 {
                if s.connects < s.turns || s.cold_hand_outs < s.turns {
                    failures.push(format!(
                        "cold {kind}: {} turns but {} connections created and {} COLD hand-outs",
                        s.turns, s.connects, s.cold_hand_outs
                    ));
                }
                if s.emulator_opened.is_some_and(|n| n < s.turns) {
                    failures.push(format!(
                        "cold {kind}: {} turns but the emulator accepted {:?} websockets",
                        s.turns, s.emulator_opened
                    ));
                }
            }
        }
    }
    println!();
    for (tier, tts, stt) in &rows {
        for (what, v) in [
            ("tts_first_byte", &tts.first),
            ("tts_finish", &tts.finish),
            ("stt_first_result", &stt.first),
        ] {
            println!("bench.azure.{tier}.{what}_avg_ms: {:.1}", avg(v));
            println!("bench.azure.{tier}.{what}_p90_ms: {:.1}", pct(v, 90));
            println!("bench.azure.{tier}.{what}_p95_ms: {:.1}", pct(v, 95));
        }
        for (kind, s) in [("tts", tts), ("stt", stt)] {
            println!(
                "bench.azure.{tier}.{kind}_connects_per_turn: {:.2}",
                s.connects as f64 / s.turns.max(1) as f64
            );
        }
    }
    if let [(_, cold_tts, cold_stt), (_, warm_tts, warm_stt)] = rows.as_slice() {
        println!(
            "bench.azure.tts_first_byte_saved_avg_ms: {:.1}",
            avg(&cold_tts.first) - avg(&warm_tts.first)
        );
        println!(
            "bench.azure.stt_first_result_saved_avg_ms: {:.1}",
            avg(&cold_stt.first) - avg(&warm_stt.first)
        );
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tts,
    Stt,
}

/// `concurrency` workers, each `turns` turns in a row; turn 0 is not recorded.
async fn workers(args: &Args, client: &Client, tier: &'static str, kind: Kind) -> Samples {
    let mut set = JoinSet::new();
    let run = fastrand::u32(..);
    for w in 0..args.concurrency {
        let client = client.clone();
        let turns = args.turns;
        set.spawn(async move {
            let mut s = Samples::default();
            for turn in 0..turns {
                let started = Instant::now();
                let outcome = match kind {
                    Kind::Tts => client
                        .tts(None, "The quick brown fox jumps over the lazy dog.")
                        .await
                        .map(|t| (t.tier, t.first_audio))
                        .map_err(|_| ()),
                    Kind::Stt => stt_turn(&client, &format!("bench-{run}-{w}-{turn}")).await,
                };
                let finish = started.elapsed();
                match outcome {
                    Ok(_) if turn == 0 => {}
                    // A turn served by the other tier measures the other case: counted,
                    // printed, left out.
                    Ok((served, _)) if served != tier => s.wrong_tier += 1,
                    Ok((_, first)) => {
                        s.first.push(first.as_secs_f64() * 1000.0);
                        if kind == Kind::Tts {
                            s.finish.push(finish.as_secs_f64() * 1000.0);
                        }
                    }
                    Err(()) => s.errors += 1,
                }
            }
            s
        });
    }
    let mut all = Samples::default();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(s) => {
                all.first.extend(s.first);
                all.finish.extend(s.finish);
                all.wrong_tier += s.wrong_tier;
                all.errors += s.errors;
            }
            Err(_) => all.errors += 1,
        }
    }
    all
}

/// One STT turn on a stream of its own: opened, one second of audio, closed, session
/// ended. Timed from asking for the stream to the first recognition result.
async fn stt_turn(client: &Client, session: &str) -> Result<(String, Duration), ()> {
    let started = Instant::now();
    let mut stream = client.open_stt(session).await.map_err(|_| ())?;
    let turn = stream
        .turn(Duration::from_secs(1), Pace::AllAtOnce, Some(started))
        .await;
    stream.close().await;
    client.end_session(session).await.map_err(|_| ())?;
    turn.map(|t| (t.tier, t.first_result)).map_err(|_| ())
}

fn avg(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Nearest-rank percentile.
fn pct(v: &[f64], p: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = (s.len() * p).div_ceil(100).max(1);
    s[rank.min(s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command as `cargo xtask bench azure --emulator` runs it, with 8 workers instead
    /// of 64: every turn served, every timed turn in its case's tier, every cold turn a new
    /// connection by the pool's count and the emulator's (`run` fails otherwise).
    #[test]
    fn a_small_emulator_run_meets_every_check() {
        let args = Args {
            emulator: true,
            rtt_ms: 20,
            concurrency: 8,
            turns: 3,
        };
        run(&args).expect("bench azure --emulator met every check");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(pct(&v, 90), 18.0);
        assert_eq!(pct(&v, 95), 19.0);
        assert_eq!(avg(&v), 10.5);
        assert!(pct(&[], 90).is_nan());
    }
}
