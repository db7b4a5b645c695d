//! `cargo xtask faults --scenario barge-in`: a call whose caller interrupts every agent turn.
//!
//! The service (Azure backend, websocket TTS, default settings but for small warm sets)
//! against the TLS emulator. One session runs `TURNS` turns of a long answer (about 90 s
//! of speech, more than the drain bound of 4 MiB) and hangs up on each after its first
//! audio chunk, then starts the next: what a voice agent does when the caller barges in.
//! Goals: 0 failed turns, 0 new connections after the call's first turn (emulator
//! upgrades and pool creates), every turn after an interrupted one DEDICATED.
//!
//! Machine lines: `faults.barge-in.failed`, `faults.barge-in.new_connections`,
//! `faults.barge-in.not_dedicated`, `faults.barge-in.stopped_upstream` (turns the emulator
//! ended on a `synthesis.control` stop), `faults.barge-in.next_turn_acquire_ms_p50|max`
//! (the `Server-Timing` acquire of the turn after an interruption: the wait for the
//! interrupted turn to give its connection back).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use service::config::BackendChoice;
use service::secret::Secret;
use service::test_support::LoopbackServer;
use speech_emulator::{Emulator, EmulatorConfig};

const KEY: &str = "xtask-barge-in-key";
const TURNS: usize = 100;
/// Bounds a single request (a hang is a failure, not a wait).
const HANG: Duration = Duration::from_secs(30);

pub fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(scenario())
}

fn long_text() -> String {
    "The agent reads a long answer that the caller interrupts. ".repeat(26)
}

async fn scenario() -> anyhow::Result<()> {
    speech_azure::install_crypto_provider();
    let emulator = Emulator::start(EmulatorConfig::default().with_key(KEY)).await?;
    let ca = std::env::temp_dir().join(format!("xtask-barge-in-ca-{}.pem", emulator.addr().port()));
    std::fs::write(&ca, emulator.ca_cert_pem().context("TLS emulator")?)?;
    let mut config = service::Config::defaults();
    config.backend = BackendChoice::Azure;
    config.azure_speech_key = Some(Secret::new(KEY));
    config.azure_speech_endpoint = Some(emulator.base_url_http());
    config.azure_speech_ca_cert = Some(ca.clone());
    config.warm_pool_tts_size = 2;
    config.warm_pool_stt_size = 1;
    // The adaptive target resizes the warm set with demand: connections opened for that
    // reason would be counted here without having anything to do with barge-in.
    config.warm_pool_adaptive = false;
    let state = service::build_state(&config)?;
    state.warm_up().await;
    let server = LoopbackServer::start(&state, Duration::from_secs(5)).await?;
    // No HTTP connection reuse: dropping a response mid-body is a real hang-up.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;

    let pool = state.pools().tts.clone();
    let settle = || async {
        let deadline = Instant::now() + HANG;
        while Instant::now() < deadline {
            let s = pool.snapshot();
            if s.creating == 0 && s.warm_pool_size >= s.warm_pool_target {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };

    let mut failed = 0u64;
    let mut not_dedicated = 0u64;
    let mut waits = Vec::new();
    let (mut opened, mut created) = (0, 0);
    // Turn 0 takes a warm connection; turns 1..=TURNS each follow an interrupted turn.
    for i in 0..=TURNS {
        let turn = async {
            let mut resp = client
                .post(server.url("/api/v1/tts"))
                .header("content-type", "application/json")
                .body(json!({"text": long_text(), "session_id": "barge-in-call"}).to_string())
                .send()
                .await?;
            if resp.status() != 200 {
                bail!("status {}", resp.status());
            }
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            let tier = header(service::TIER_HEADER);
            let acquire_ms: f64 = header(service::SERVER_TIMING_HEADER)
                .strip_prefix("acquire;dur=")
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            match resp.chunk().await? {
                Some(c) if !c.is_empty() => {}
                _ => bail!("no audio"),
            }
            // The barge-in: hang up after the first chunk.
            drop(resp);
            Ok((tier, acquire_ms))
        };
        match tokio::time::timeout(HANG, turn).await {
            Ok(Ok((tier, acquire_ms))) => {
                if i > 0 {
                    not_dedicated += u64::from(tier != "dedicated");
                    waits.push(acquire_ms);
                }
            }
            Ok(Err(e)) => {
                failed += 1;
                eprintln!("barge-in: turn {i} failed: {e:#}");
            }
            Err(_) => {
                failed += 1;
                eprintln!("barge-in: turn {i} hung");
            }
        }
        if i == 0 {
            settle().await;
            opened = emulator.counters().connections_opened;
            created = pool.snapshot().created_total;
        }
    }
    settle().await;
    let counters = emulator.counters();
    let snapshot = pool.snapshot();
    let new_connections =
        (counters.connections_opened - opened).max(snapshot.created_total - created);
    waits.sort_by(f64::total_cmp);
    let p50 = waits.get(waits.len() / 2).copied().unwrap_or(f64::NAN);
    let max = waits.last().copied().unwrap_or(f64::NAN);

    println!("faults.barge-in.turns: {TURNS}");
    println!("faults.barge-in.failed: {failed}");
    println!("faults.barge-in.new_connections: {new_connections}");
    println!("faults.barge-in.not_dedicated: {not_dedicated}");
    println!(
        "faults.barge-in.stopped_upstream: {}",
        counters.turns_stopped
    );
    println!("faults.barge-in.next_turn_acquire_ms_p50: {p50:.2}");
    println!("faults.barge-in.next_turn_acquire_ms_max: {max:.2}");

    server
        .stop(HANG)
        .await
        .context("the service did not shut down")?;
    let _ = emulator
        .wait_for_counters(|c| c.connections_open == 0, HANG)
        .await;
    emulator.shutdown().await;
    let _ = std::fs::remove_file(ca);
    if failed > 0 || new_connections > 0 || not_dedicated > 0 {
        bail!(
            "barge-in goals missed: {failed} failed, {new_connections} new connections, \
             {not_dedicated} turns after an interruption not DEDICATED"
        );
    }
    Ok(())
}
