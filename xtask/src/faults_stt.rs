//! `cargo xtask faults --scenario stt-max-age-rollover | stt-drop-replay`: call-long STT
//! streams (`GET /api/v1/stt?stream=continuous`) that outlive the speech service's
//! connections, against the emulator (TLS, the Azure backend, scripted audio).
//!
//! Each scenario runs `CALLS` concurrent calls. A call streams a scripted transcript
//! (phrase `k` is audio the emulator hears as line `k`, see `speech_emulator::scripted`)
//! for many times the emulator's maximum connection age, then ends its audio, and checks
//! what came back: every phrase exactly once, in order, each at its offset in the call's
//! stream, no error, `turn_end` and a normal close.
//!
//! - `stt-max-age-rollover`: the emulator closes every websocket `EMULATOR_MAX_AGE` after
//!   it opened, as Azure does after 10 minutes; the service plans for `PLANNED_AGE` and must
//!   move each stream to a fresh connection in time (the emulator counts turns it cut at
//!   its age limit: `faults.<NAME>.turns_cut_by_max_age`).
//! - `stt-drop-replay`: the same, and every STT websocket is dropped without a close frame
//!   (TCP FIN, the client sees 1006) while the first call is in the middle of phrases
//!   `DROP_AT`; the service must resume each stream on a fresh connection and replay the
//!   audio no final phrase covered.
//!
//! Machine lines: `faults.<NAME>.failed` (calls that saw an error, closed abnormally, hung,
//! or got a phrase at the wrong offset), `faults.<NAME>.phrases_lost`,
//! `faults.<NAME>.phrases_duplicated` (goal 0, 0, 0: the command exits non-zero otherwise),
//! plus the emulator's view: `legs` (recognition turns, one per connection a stream used),
//! `turns_cut_by_max_age` and `drops`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use service::Config;
use service::config::BackendChoice;
use service::secret::Secret;
use service::test_support::LoopbackServer;
use speech_emulator::{Emulator, EmulatorConfig, EmulatorHandle, Target, scripted};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::load::target::{CaFile, SHUTDOWN_LIMIT};

const KEY: &str = "faults-stt-key";
/// Concurrent calls.
const CALLS: usize = 4;
/// The emulator closes every websocket this long after it opened (Azure: 600 s).
const EMULATOR_MAX_AGE: Duration = Duration::from_secs(3);
/// `STT_CONTINUOUS_MAX_CONNECTION_AGE` for the run.
const PLANNED_AGE: Duration = Duration::from_secs(2);
/// Each phrase: this much speech, then this much silence.
const SPEECH_MS: u32 = 400;
const GAP_MS: u32 = 300;
/// Phrases per call (full run, `--quick`).
const PHRASES: (u16, u16) = (48, 24);
/// Audio goes out in 20 ms chunks, this many times faster than real time: a 48-phrase call
/// is 33.6 s of audio sent in 16.8 s, 5.6 times the emulator's connection age.
const CHUNK_MS: u32 = 20;
const SPEEDUP: u32 = 2;
/// Calls start this far apart, so their phrases (and switches) do not line up.
const STAGGER: Duration = Duration::from_millis(170);
/// `stt-drop-replay`: the phrases of the first call in whose middle every STT websocket
/// is dropped (the first time it is heard).
const DROP_AT: [u16; 6] = [5, 13, 21, 29, 37, 45];
/// Bound on any wait for the service's next message.
const HANG: Duration = Duration::from_secs(20);
const TICKS_PER_MS: u64 = 10_000;

/// The STT fault scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SttScenario {
    MaxAgeRollover,
    DropReplay,
}

impl SttScenario {
    pub(crate) const ALL: [Self; 2] = [Self::MaxAgeRollover, Self::DropReplay];

    fn name(self) -> &'static str {
        match self {
            Self::MaxAgeRollover => "stt-max-age-rollover",
            Self::DropReplay => "stt-drop-replay",
        }
    }
}

/// Runs `scenarios`, prints their machine lines, fails unless every goal is met.
pub(crate) fn run(scenarios: &[SttScenario], quick: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(async {
        speech_azure::install_crypto_provider();
        let mut bad = Vec::new();
        for &scenario in scenarios {
            eprintln!("faults: {} ...", scenario.name());
            let row = run_scenario(scenario, quick)
                .await
                .with_context(|| format!("scenario {}", scenario.name()))?;
            for line in &row.notes {
                eprintln!("faults:   {line}");
            }
            for line in row.machine_lines(scenario.name()) {
                println!("{line}");
            }
            if row.failed + row.lost + row.duplicated > 0 {
                bad.push(format!(
                    "{} (failed {}, phrases lost {}, duplicated {})",
                    scenario.name(),
                    row.failed,
                    row.lost,
                    row.duplicated
                ));
            }
        }
        if !bad.is_empty() {
            bail!("{}", bad.join("; "));
        }
        Ok(())
    })
}

#[derive(Debug, Default)]
struct Row {
    calls: u64,
    phrases_expected: u64,
    failed: u64,
    lost: u64,
    duplicated: u64,
    legs: u64,
    turns_cut_by_max_age: u64,
    drops: u64,
    notes: Vec<String>,
}

impl Row {
    fn machine_lines(&self, name: &str) -> Vec<String> {
        vec![
            format!("faults.{name}.calls: {}", self.calls),
            format!("faults.{name}.phrases_expected: {}", self.phrases_expected),
            format!("faults.{name}.failed: {}", self.failed),
            format!("faults.{name}.phrases_lost: {}", self.lost),
            format!("faults.{name}.phrases_duplicated: {}", self.duplicated),
            format!("faults.{name}.legs: {}", self.legs),
            format!(
                "faults.{name}.turns_cut_by_max_age: {}",
                self.turns_cut_by_max_age
            ),
            format!("faults.{name}.drops: {}", self.drops),
        ]
    }
}

fn transcript(phrases: u16) -> String {
    (1..=phrases)
        .map(|k| format!("Caller phrase {k}."))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What one call saw.
#[derive(Debug, Default)]
struct CallResult {
    /// Phrase texts in arrival order, with offset and duration.
    phrases: Vec<(String, u64, u64)>,
    error: Option<String>,
}

async fn run_scenario(scenario: SttScenario, quick: bool) -> anyhow::Result<Row> {
    let phrases = if quick { PHRASES.1 } else { PHRASES.0 };
    let mut config = EmulatorConfig::default()
        .with_key(KEY)
        .with_transcript(transcript(phrases))
        .with_max_connection_age(EMULATOR_MAX_AGE)
        .with_scripted_audio(true);
    config.phrase_silence = Duration::from_millis(150);
    config.hypothesis_interval = Duration::from_millis(100);
    let emulator = Emulator::start(config)
        .await
        .context("starting the emulator")?;
    let ca = CaFile::write(&emulator)?;
    let mut c = Config::defaults();
    c.backend = BackendChoice::Azure;
    c.azure_speech_key = Some(Secret::new(KEY));
    c.azure_speech_endpoint = Some(emulator.base_url_http());
    c.azure_speech_ca_cert = Some(ca.0.clone());
    c.warm_pool_tts_size = 0;
    c.warm_pool_stt_size = CALLS;
    c.pool_stt_max_size = CALLS * 4;
    c.warm_pool_refresh_interval = Duration::from_millis(200);
    // The pool's own age refresh starts 5 s ahead of its limit, which cannot work with a
    // 3 s emulator; idle connections closed by the emulator are replaced as dead ones.
    c.pool_max_age = Duration::ZERO;
    c.stt_continuous.stt_continuous_max_connection_age = PLANNED_AGE;
    let state = service::build_state(&c).map_err(|e| anyhow::anyhow!("service state: {e}"))?;
    state.warm_up().await;
    let served = LoopbackServer::start(&state, Duration::from_secs(5))
        .await
        .context("serving on 127.0.0.1")?;
    let url = served.ws_url("/api/v1/stt?stream=continuous");
    let before = emulator.counters();
    let emulator = Arc::new(emulator);
    let drops = Arc::new(Mutex::new(Vec::<u16>::new()));

    let began = Instant::now();
    let mut calls = JoinSet::new();
    for i in 0..CALLS {
        let url = format!("{url}&session_id=fault-call-{i}");
        let dropper = (scenario == SttScenario::DropReplay && i == 0)
            .then(|| (emulator.clone(), drops.clone()));
        calls.spawn(async move {
            tokio::time::sleep(STAGGER * i as u32).await;
            call(&url, phrases, dropper).await
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = calls.join_next().await {
        results.push(joined.unwrap_or_else(|e| CallResult {
            error: Some(format!("call task failed: {e}")),
            ..CallResult::default()
        }));
    }
    let wall = began.elapsed();

    let mut row = Row {
        calls: CALLS as u64,
        phrases_expected: u64::from(phrases) * CALLS as u64,
        ..Row::default()
    };
    let expected: Vec<String> = (1..=phrases)
        .map(|k| format!("Caller phrase {k}."))
        .collect();
    for r in &results {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for (text, _, _) in &r.phrases {
            *counts.entry(text.as_str()).or_default() += 1;
        }
        for e in &expected {
            match counts.get(e.as_str()).copied().unwrap_or(0) {
                0 => row.lost += 1,
                n => row.duplicated += n - 1,
            }
        }
        // Phrases nobody scripted would be duplicates of nothing: count them as such.
        row.duplicated += counts
            .iter()
            .filter(|(t, _)| !expected.iter().any(|e| e == *t))
            .map(|(_, n)| n)
            .sum::<u64>();
        let misplaced = r.phrases.iter().any(|(text, offset, duration)| {
            let k = expected
                .iter()
                .position(|e| e == text)
                .unwrap_or(usize::MAX) as u64;
            let cycle = u64::from(SPEECH_MS + GAP_MS) * TICKS_PER_MS;
            *offset != k.saturating_mul(cycle) || *duration != u64::from(SPEECH_MS) * TICKS_PER_MS
        });
        let ordered = r.phrases.windows(2).all(|w| w[0].1 < w[1].1);
        if let Some(e) = &r.error {
            row.notes.push(format!("call failed: {e}"));
        }
        if misplaced || !ordered {
            row.notes
                .push("a phrase arrived out of order or at the wrong offset".to_owned());
        }
        if r.error.is_some() || misplaced || !ordered {
            row.failed += 1;
        }
    }

    served
        .stop(SHUTDOWN_LIMIT)
        .await
        .context("stopping the service")?;
    let after = emulator.counters();
    row.legs = after.turns_started - before.turns_started;
    row.turns_cut_by_max_age = after.turns_cut_by_max_age - before.turns_cut_by_max_age;
    row.drops = drops.lock().map(|d| d.len() as u64).unwrap_or(0);
    row.notes.push(format!(
        "{} calls x {phrases} phrases ({:.1} s of audio each) in {:.1} s; emulator max age {:?}, planned {:?}; {} legs, {} turns cut at the age limit, {} drops",
        CALLS,
        f64::from(phrases) * f64::from(SPEECH_MS + GAP_MS) / 1000.0,
        wall.as_secs_f64(),
        EMULATOR_MAX_AGE,
        PLANNED_AGE,
        row.legs,
        row.turns_cut_by_max_age,
        row.drops,
    ));
    if let Ok(emulator) = Arc::try_unwrap(emulator) {
        emulator.shutdown().await;
    }
    drop(ca);
    Ok(row)
}

/// The emulator to drop websockets on, and the phrases at which it was done.
type Dropper = (Arc<EmulatorHandle>, Arc<Mutex<Vec<u16>>>);

/// One call: streams the script and collects the phrases. With a dropper, drops every
/// STT websocket in the middle of the phrases `DROP_AT`.
async fn call(url: &str, phrases: u16, dropper: Option<Dropper>) -> CallResult {
    let mut result = CallResult::default();
    let ws = match tokio::time::timeout(HANG, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            result.error = Some(format!("connect: {e}"));
            return result;
        }
        Err(_) => {
            result.error = Some("connect: hang".to_owned());
            return result;
        }
    };
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        let mut audio = Vec::new();
        for k in 1..=phrases {
            audio.extend(scripted::phrase_pcm(k, SPEECH_MS));
            audio.extend(scripted::silence_pcm(GAP_MS));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(u64::from(CHUNK_MS / SPEEDUP)));
        for piece in audio.chunks((32 * CHUNK_MS) as usize) {
            tick.tick().await;
            tx.send(Message::binary(piece.to_vec())).await?;
        }
        tx.send(Message::text(r#"{"type":"end"}"#)).await?;
        Ok::<_, tokio_tungstenite::tungstenite::Error>(tx)
    });
    let drop_texts: Vec<(u16, String)> = DROP_AT
        .iter()
        .filter(|&&k| k <= phrases)
        .map(|&k| (k, format!("caller phrase {k}")))
        .collect();
    let mut saw_turn_end = false;
    loop {
        let msg = match tokio::time::timeout(HANG, rx.next()).await {
            Ok(m) => m,
            Err(_) => {
                result.error = Some("no message within the hang limit".to_owned());
                break;
            }
        };
        let v: Value = match msg {
            Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap_or(Value::Null),
            Some(Ok(Message::Close(f))) => {
                let code = f.map(|f| u16::from(f.code));
                if code != Some(1000) || !saw_turn_end {
                    result.error = Some(format!(
                        "closed with {code:?} (turn_end seen: {saw_turn_end})"
                    ));
                }
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                result.error = Some(format!("websocket: {e}"));
                break;
            }
            None => {
                result.error = Some("socket ended without a close frame".to_owned());
                break;
            }
        };
        match v["type"].as_str().unwrap_or_default() {
            "phrase" => result.phrases.push((
                v["text"].as_str().unwrap_or_default().to_owned(),
                v["offset"].as_u64().unwrap_or(u64::MAX),
                v["duration"].as_u64().unwrap_or(u64::MAX),
            )),
            "error" => {
                result
                    .error
                    .get_or_insert_with(|| format!("error message: {v}"));
            }
            "turn_end" => saw_turn_end = true,
            "hypothesis" => {
                if let Some((emulator, dropped)) = &dropper {
                    let text = v["text"].as_str().unwrap_or_default();
                    if let Some((k, _)) = drop_texts.iter().find(|(_, t)| t == text)
                        && let Ok(mut d) = dropped.lock()
                        && !d.contains(k)
                    {
                        d.push(*k);
                        emulator.disconnect_all(Target::SttWs, false);
                    }
                }
            }
            _ => {}
        }
    }
    match sender.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            result
                .error
                .get_or_insert_with(|| format!("sending audio: {e}"));
        }
        Err(e) => {
            result
                .error
                .get_or_insert_with(|| format!("sender task: {e}"));
        }
    }
    result
}
