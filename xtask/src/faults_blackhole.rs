//! `cargo xtask faults --scenario blackhole-idle | blackhole-mid-turn`: dead sockets (the
//! peer vanished without FIN, RST or data) found within the liveness gap.
//!
//! - `blackhole-idle`: the service against the emulator; in each round every open websocket
//!   (all idle in the pools) is blackholed, then a burst of TTS and STT turns follows one
//!   liveness gap later. Goal: 0 failed turns (a dead connection is never handed out).
//! - `blackhole-mid-turn`: (a) a TTS pool of `speech-azure` with the emulator blackholing
//!   each turn after its first audio frame: every turn must fail `Transient` within the
//!   gap, measured from the last audio chunk received to the error; (b) the service with
//!   every other turn blackholed before `turn.start`: the turn has no audio yet, so the
//!   service retries it on a fresh connection; goal 0 failed.
//!
//! Both report hangs (a turn without an answer within [`HANG`]) and leaks (pool creates not
//! matched by closes after shutdown, and emulator websockets still open that are not held
//! by a blackhole), and exit non-zero unless every goal is met.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use pool_core::Pool;
use service::Config;
use service::config::BackendChoice;
use service::secret::Secret;
use service::test_support::LoopbackServer;
use speech_azure::{
    AzureSpeech, ConnectionPolicy, Credentials, Endpoint, TlsOptions, TtsWsOptions,
};
use speech_core::{AudioFormat, ErrorClass, SynthesisEvent, SynthesisRequest};
use speech_emulator::{
    Emulator, EmulatorConfig, EmulatorHandle, Fault, FaultRule, Target, TurnPoint,
};
use tokio::sync::mpsc;

use crate::client::{Client, Pace};
use crate::load::target::{CaFile, SHUTDOWN_LIMIT};

const KEY: &str = "blackhole-key";
/// The service's default liveness gap (`AZURE_SPEECH_LIVENESS_GAP`).
const GAP: Duration = Duration::from_millis(1200);
const HANG: Duration = Duration::from_secs(15);
const LEAK_WAIT: Duration = Duration::from_secs(10);
const TEXT: &str = "The quick brown fox jumps over the lazy dog, and then it naps for a while.";

/// Which blackhole scenario.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Which {
    Idle,
    MidTurn,
}

/// Runs one scenario, prints its machine lines, fails when a goal is missed.
pub(crate) async fn run(which: Which, quick: bool) -> anyhow::Result<()> {
    speech_azure::install_crypto_provider();
    let rounds = if quick { 3 } else { 6 };
    let (name, report) = match which {
        Which::Idle => ("blackhole-idle", idle(rounds).await?),
        Which::MidTurn => ("blackhole-mid-turn", mid_turn(rounds * 4).await?),
    };
    for line in &report.notes {
        eprintln!("faults: {name}: {line}");
    }
    println!("faults.{name}.turns: {}", report.turns);
    println!("faults.{name}.failed: {}", report.failed);
    if let Some(ms) = report.detect_ms_max {
        println!("faults.{name}.detection_ms_max: {ms}");
        println!("faults.{name}.gap_ms: {}", GAP.as_millis());
    }
    println!("faults.{name}.hangs: {}", report.hangs);
    println!("faults.{name}.leaks: {}", report.leaks);
    if report.failed > 0 || report.hangs > 0 || report.leaks > 0 || report.turns == 0 {
        bail!(
            "{name}: goals not met (failed {}, hangs {}, leaks {})",
            report.failed,
            report.hangs,
            report.leaks
        );
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Report {
    turns: u64,
    failed: u64,
    hangs: u64,
    leaks: u64,
    detect_ms_max: Option<u64>,
    notes: Vec<String>,
}

fn service_config(endpoint: String, ca: PathBuf) -> Config {
    let mut config = Config::defaults();
    config.backend = BackendChoice::Azure;
    config.azure_speech_key = Some(Secret::new(KEY));
    config.azure_speech_endpoint = Some(endpoint);
    config.azure_speech_ca_cert = Some(ca);
    config.warm_pool_tts_size = 4;
    config.warm_pool_stt_size = 2;
    config.pool_tts_max_size = 16;
    config.pool_stt_max_size = 8;
    config.pool_acquire_timeout = Duration::from_secs(2);
    config.pool_create_timeout = Duration::from_secs(3);
    config.shutdown_grace = Duration::from_secs(5);
    config.azure_speech_liveness_gap = GAP;
    config
}

/// The service and the emulator, up and warm.
struct Stack {
    emulator: EmulatorHandle,
    state: service::AppState,
    served: LoopbackServer,
    client: Client,
    _ca: CaFile,
}

async fn stack() -> anyhow::Result<Stack> {
    let emulator = Emulator::start(EmulatorConfig::default().with_key(KEY))
        .await
        .context("starting the emulator")?;
    let ca = CaFile::write(&emulator)?;
    let config = service_config(emulator.base_url_http(), ca.0.clone());
    let state = service::build_state(&config)
        .map_err(|e| anyhow::anyhow!("building the service state: {e}"))?;
    if tokio::time::timeout(Duration::from_secs(20), state.warm_up())
        .await
        .is_err()
        || !state.is_ready()
    {
        bail!("the pools did not warm up");
    }
    let served = LoopbackServer::start(&state, config.shutdown_grace)
        .await
        .context("serving")?;
    let client = Client::new(&format!("http://{}", served.addr()), None, HANG)?;
    Ok(Stack {
        emulator,
        state,
        served,
        client,
        _ca: ca,
    })
}

/// Stops the service, then counts what was not given back: pool creates without a close,
/// and emulator websockets still open that no blackhole holds.
async fn stop(stack: Stack, report: &mut Report) -> anyhow::Result<()> {
    stack
        .served
        .stop(SHUTDOWN_LIMIT)
        .await
        .context("stopping the service")?;
    for p in stack.state.snapshots() {
        report.leaks += p.created_total.saturating_sub(p.closed_total);
    }
    let counters = match stack
        .emulator
        .wait_for_counters(|c| c.connections_open == c.blackholed_open, LEAK_WAIT)
        .await
    {
        Ok(c) | Err(c) => c,
    };
    report.leaks += counters
        .connections_open
        .saturating_sub(counters.blackholed_open);
    report.notes.push(format!(
        "emulator: opened {} blackholed {} turns served {}",
        counters.connections_opened, counters.blackholed, counters.turns_served
    ));
    report.leaks += stack.emulator.shutdown().await as u64;
    Ok(())
}

async fn idle(rounds: usize) -> anyhow::Result<Report> {
    let stack = stack().await?;
    let mut report = Report::default();
    for round in 0..rounds {
        // Every open websocket is idle in a pool now (no turn is in flight).
        let hit = stack.emulator.blackhole_all(Target::Ws);
        tokio::time::sleep(GAP).await;
        let mut turns = Vec::new();
        for i in 0..6 {
            let client = stack.client.clone();
            let session = format!("bh-idle-{round}-{i}");
            turns.push(tokio::spawn(async move {
                if i % 3 == 2 {
                    let r = async {
                        let mut s = client.open_stt(&session).await?;
                        let r = s
                            .turn(Duration::from_millis(400), Pace::AllAtOnce, None)
                            .await;
                        s.close().await;
                        r.map(|_| ())
                    };
                    tokio::time::timeout(HANG, r).await.map(|r| r.is_ok())
                } else {
                    tokio::time::timeout(HANG, client.tts(Some(&session), TEXT))
                        .await
                        .map(|r| r.is_ok())
                }
            }));
        }
        let mut failed = 0;
        for t in turns {
            report.turns += 1;
            match t.await.context("a turn task")? {
                Ok(true) => {}
                Ok(false) => failed += 1,
                Err(_) => report.hangs += 1,
            }
        }
        report.failed += failed;
        report.notes.push(format!(
            "round {round}: {hit} idle websockets blackholed, {failed} failed turns"
        ));
        for (i, _) in (0..6).enumerate() {
            let _ = stack
                .client
                .end_session(&format!("bh-idle-{round}-{i}"))
                .await;
        }
    }
    stop(stack, &mut report).await?;
    Ok(report)
}

async fn mid_turn(turns: usize) -> anyhow::Result<Report> {
    let mut report = Report::default();
    // (a) The classified error within the gap, measured at the client of the pool.
    let emulator = Emulator::start(EmulatorConfig::default().with_key(KEY))
        .await
        .context("starting the emulator")?;
    let pem = emulator.ca_cert_pem().context("TLS emulator")?.to_owned();
    let azure = AzureSpeech::builder(
        Endpoint::host(&emulator.base_url_http())?,
        Credentials::key(KEY),
    )
    .tls(TlsOptions::new().with_root_pem(pem.as_bytes())?)
    .policy(ConnectionPolicy {
        liveness_gap: GAP,
        ..ConnectionPolicy::default()
    })
    .build()?;
    let pool = Pool::builder(azure.tts_ws_manager(TtsWsOptions::default()))
        .name("tts-blackhole")
        .warm_target(2)
        .max_size(4)
        .background_warmup(true)
        .build()?;
    pool.prepare().await?;
    emulator.add_fault(
        FaultRule::new(Fault::Blackhole {
            at: TurnPoint::AfterFrames(1),
        })
        .target(Target::TtsWs),
    );
    let mut detect_max = Duration::ZERO;
    let mut late = 0;
    for _ in 0..turns {
        report.turns += 1;
        let mut conn = pool.acquire().await?;
        let (tx, mut rx) = mpsc::channel(256);
        let request =
            SynthesisRequest::text(TEXT, "en-US-JennyNeural", AudioFormat::Raw24Khz16BitMonoPcm);
        let turn = async {
            let synth = conn.synthesize(request, tx);
            tokio::pin!(synth);
            let mut last_audio = None;
            loop {
                tokio::select! {
                    r = &mut synth => {
                        while let Ok(e) = rx.try_recv() {
                            if matches!(e, SynthesisEvent::Audio(_)) { last_audio = Some(Instant::now()); }
                        }
                        return (r, last_audio.map(|t: Instant| t.elapsed()));
                    }
                    Some(e) = rx.recv() => {
                        if matches!(e, SynthesisEvent::Audio(_)) { last_audio = Some(Instant::now()); }
                    }
                }
            }
        };
        match tokio::time::timeout(HANG, turn).await {
            Err(_) => report.hangs += 1,
            Ok((Err(e), Some(after_audio))) if e.class() == ErrorClass::Transient => {
                detect_max = detect_max.max(after_audio);
                if after_audio > GAP {
                    late += 1;
                }
            }
            Ok((r, _)) => {
                report.failed += 1;
                report
                    .notes
                    .push(format!("turn not detected as a dead peer: {r:?}"));
            }
        }
        conn.discard();
    }
    report.failed += late;
    report.detect_ms_max = Some(detect_max.as_millis() as u64);
    report.notes.push(format!("(a) {turns} turns blackholed after the first audio frame, {late} detected later than the gap"));
    emulator.clear_faults();
    pool.shutdown().await;
    let s = pool.snapshot();
    report.leaks += s.created_total.saturating_sub(s.closed_total);
    report.leaks += emulator.shutdown().await as u64;

    // (b) Before the first audio, the service retries on a fresh connection.
    let stack = stack().await?;
    let mut failed_b = 0;
    for i in 0..turns {
        report.turns += 1;
        if i % 2 == 0 {
            // One fault per turn: the first attempt meets a blackhole, the retry a live
            // connection.
            stack.emulator.add_fault(
                FaultRule::new(Fault::Blackhole {
                    at: TurnPoint::BeforeTurnStart,
                })
                .target(Target::TtsWs)
                .once(),
            );
        }
        match tokio::time::timeout(HANG, stack.client.tts(None, TEXT)).await {
            Err(_) => report.hangs += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                failed_b += 1;
                report.notes.push(format!("service turn {i} failed: {e:?}"));
            }
        }
    }
    report.failed += failed_b;
    report.notes.push(format!(
        "(b) {turns} service turns, {} blackholed before turn.start, {failed_b} failed",
        stack.emulator.counters().blackholed
    ));
    stop(stack, &mut report).await?;
    Ok(report)
}
