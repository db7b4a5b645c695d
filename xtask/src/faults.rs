//! `cargo xtask faults`: the service under injected faults, one scenario at a time.
//!
//! Each scenario starts a fresh Azure Speech emulator (TLS, one key) and the service in this
//! process with the **azure** backend pointed at it (the real configuration path: key,
//! endpoint, CA file), small warm targets (TTS 4, STT 2), a short acquire timeout and a 1 s
//! housekeeping pass. Eight simulated callers then run a closed loop of calls: a call is a
//! session id, a TTS turn (`POST /api/v1/tts`), an STT turn (`GET /api/v1/stt`, a
//! websocket), another TTS turn, and `DELETE /api/v1/sessions/{id}`, with think times
//! between turns. Every request has a
//! client-side bound ([`HANG`]); a request that exceeds it is counted as a `hang`.
//!
//! A run has three phases: a short **baseline**, the **fault**, and a **recovery** window
//! in which the callers keep going. Per scenario we report one row:
//! - `requests` and `failed` (TTS and STT turns and DELETEs), failures `by class`: the
//!   HTTP status and the service's error code (`429-throttled`, `429-pool-exhausted`,
//!   `502-auth`, `503-unavailable`, `504-timeout`, ...), `transport` (no HTTP answer),
//!   `stream-cut` (a response or websocket that ended without its end marker) and `hang`;
//! - `recover_ms`: from the end of the fault to the first moment both pools hold at least
//!   their warm target of idle connections *that are really open* (the pool's idle count,
//!   cross-checked against the websockets the emulator has open, so dead sockets still
//!   sitting in an idle set do not count), polled every 50 ms for at most
//!   [`RECOVER_LIMIT`]; `never` otherwise;
//! - `leaked`: after the service has shut down, websockets the emulator still has open
//!   (waited for, bounded) plus `created_total - closed_total` over both pools.
//!
//! The scenarios, and what each one promises:
//! - `token-expiry`: STS token auth against an emulator whose tokens live 66 s. The client
//!   never uses a token with less than 60 s left and retires connections opened with one,
//!   so tokens roll over every few seconds and connections are replaced for it, all run
//!   long. During the fault the emulator also refuses single upgrades with 401 (a token the
//!   server considers expired while the client does not); the client must fetch a fresh
//!   token and retry. **Transparent: any failure fails the command.**
//! - `429-storm`: every websocket upgrade is refused with 429 + `Retry-After: 1` for the
//!   fault window. Open connections keep working; new ones cannot be made, so callers that
//!   need one get a clear 429 (never a hang), and the pools refill once the storm ends.
//! - `4429-closes`: during the fault, turns are closed by the emulator with 4429 (Azure's
//!   "too many requests" close), alternately right after `turn.start` (the client gets a
//!   429) and right after `turn.end` (the connection dies between turns; the next turn of
//!   that session must get a fresh connection without an error).
//! - `idle-closes-racing-acquires`: the emulator closes websockets after 2 s without a
//!   client message, for the whole run, and callers (three TTS turns, then two STT turns
//!   per call) think 1.7–2.3 s between turns, so a session's parked connection is closed by
//!   the server right around its next turn. The pool refreshes idle connections early
//!   (`POOL_MAX_IDLE` 7 s: replaced 0–2 s after they go idle) and replaces a closed one at
//!   hand-out. Failures are reported (a close still in flight when a turn starts is a
//!   genuine race) and expected to be rare; the tiers are printed alongside.
//! - `mid-stream-drops`: during the fault the emulator drops TCP connections without a
//!   close frame in the middle of turns (TTS after 3 audio frames, STT after 2 audio
//!   frames, some with RST). The affected client sees a cut stream or an error message;
//!   the next turns of its session get a fresh connection.
//! - `emulator-restart`: the emulator is restarted (same port, same certificate) under
//!   load. In-flight turns fail and every pooled connection dies; then the pools must
//!   refill.
//!
//! Whatever the scenario, the command fails (non-zero exit) when a request hangs, a
//! connection leaks, a pool never recovers to its warm target, a failure has an
//! unexpected class (say a 500 or a 400), or a failure happens in the baseline phase of a
//! scenario whose fault starts later. Expected failures are reported, not fatal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::load::target::{CaFile, Served};
use futures_util::{SinkExt, StreamExt};
use service::config::{AzureAuth, BackendChoice};
use service::secret::Secret;
use service::{AppState, Config};
use speech_emulator::{
    Emulator, EmulatorConfig, EmulatorHandle, Fault, FaultRule, Target, TurnPoint,
};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{self, Message};

/// The key the emulator accepts.
const KEY: &str = "faults-key";
/// Simulated callers, each running one call at a time.
const CALLERS: usize = 8;
/// Warm targets: small, so a fault empties them quickly.
const TTS_WARM: usize = 4;
const STT_WARM: usize = 2;
/// A request taking longer than this is a hang. Longer than anything the service itself
/// waits for (acquire 2 s, create 3 s, first response 10 s), so only a real hang hits it.
const HANG: Duration = Duration::from_secs(15);
/// Bound on the wait for both pools to be back at their warm targets.
const RECOVER_LIMIT: Duration = Duration::from_secs(30);
/// How often recovery is polled.
const RECOVER_POLL: Duration = Duration::from_millis(50);
/// Bound on the emulator's open websockets reaching zero after the service shut down.
const LEAK_WAIT: Duration = Duration::from_secs(10);
/// Bound on the initial warm-up.
const WARM_UP_LIMIT: Duration = Duration::from_secs(20);
/// How often a scenario's fault loop runs while the fault is on.
const FAULT_TICK: Duration = Duration::from_millis(100);
/// About 0.4 s of 16 kHz 16-bit mono PCM per STT turn.
const STT_AUDIO_SECS: f32 = 0.4;

/// `cargo xtask faults` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Shorter phases (about half the run time).
    #[arg(long)]
    quick: bool,
    /// Run only this scenario.
    #[arg(long, value_enum, value_name = "NAME")]
    scenario: Option<Scenario>,
}

/// The fault scenarios, in the order they run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    #[value(name = "token-expiry")]
    TokenExpiry,
    #[value(name = "429-storm")]
    Storm429,
    #[value(name = "4429-closes")]
    Closes4429,
    #[value(name = "idle-closes-racing-acquires")]
    IdleCloses,
    #[value(name = "mid-stream-drops")]
    MidStreamDrops,
    #[value(name = "emulator-restart")]
    EmulatorRestart,
}

impl Scenario {
    const ALL: [Self; 6] = [
        Self::TokenExpiry,
        Self::Storm429,
        Self::Closes4429,
        Self::IdleCloses,
        Self::MidStreamDrops,
        Self::EmulatorRestart,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::TokenExpiry => "token-expiry",
            Self::Storm429 => "429-storm",
            Self::Closes4429 => "4429-closes",
            Self::IdleCloses => "idle-closes-racing-acquires",
            Self::MidStreamDrops => "mid-stream-drops",
            Self::EmulatorRestart => "emulator-restart",
        }
    }

    /// Whether the scenario promises that callers never see its fault.
    fn transparent(self) -> bool {
        self == Self::TokenExpiry
    }

    /// Whether the fault is part of the emulator's configuration and so on from the start
    /// (the baseline phase is then not fault-free).
    fn fault_from_start(self) -> bool {
        matches!(self, Self::TokenExpiry | Self::IdleCloses)
    }

    fn emulator_config(self) -> EmulatorConfig {
        let config = EmulatorConfig::default().with_key(KEY);
        match self {
            // 66 s against the client's 60 s minimum validity: each token is usable for
            // about 5 s, so several roll over during the run.
            Self::TokenExpiry => config.with_token_lifetime(Duration::from_secs(66)),
            Self::IdleCloses => config.with_idle_timeout(Duration::from_secs(2)),
            _ => config,
        }
    }

    /// The service configuration against `emulator` (CA in `ca`).
    fn service_config(self, endpoint: String, ca: PathBuf) -> Config {
        let mut config = Config::defaults();
        config.backend = BackendChoice::Azure;
        config.azure_speech_key = Some(Secret::new(KEY));
        config.azure_speech_endpoint = Some(endpoint);
        config.azure_speech_ca_cert = Some(ca);
        config.warm_pool_tts_size = TTS_WARM;
        config.warm_pool_stt_size = STT_WARM;
        // Room for every caller's session plus the warm set, so pool exhaustion is not
        // what a scenario measures.
        config.pool_tts_max_size = 16;
        config.pool_stt_max_size = 12;
        config.pool_acquire_timeout = Duration::from_secs(2);
        config.pool_create_timeout = Duration::from_secs(3);
        // The housekeeping pass (session eviction, retries) at a pace that fits a
        // seconds-long scenario.
        config.warm_pool_refresh_interval = Duration::from_secs(1);
        config.shutdown_grace = Duration::from_secs(5);
        match self {
            Self::TokenExpiry => config.azure_speech_auth = AzureAuth::Token,
            // Refresh idle connections around the emulator's 2 s idle close: the pool
            // starts a replacement `refresh_lead` (5 s) + jitter (up to 2 s) before
            // `max_idle`, i.e. 0 to 2 s after a connection went idle.
            Self::IdleCloses => config.pool_max_idle = Duration::from_secs(7),
            _ => {}
        }
        config
    }

    /// Think time between turns, milliseconds (uniform in the range).
    fn think_ms(self) -> (u64, u64) {
        match self {
            // Straddles the emulator's 2 s idle timeout.
            Self::IdleCloses => (1_700, 2_300),
            _ => (100, 300),
        }
    }

    /// The turns of one call, in order. Usually TTS, STT, TTS; for the idle race, runs of
    /// the same kind, so the think time alone decides whether the session's connection is
    /// still open at its next turn.
    fn turns(self) -> &'static [Turn] {
        match self {
            Self::IdleCloses => &[Turn::Tts, Turn::Tts, Turn::Tts, Turn::Stt, Turn::Stt],
            _ => &[Turn::Tts, Turn::Stt, Turn::Tts],
        }
    }

    fn phases(self, quick: bool) -> Phases {
        let s = Duration::from_secs;
        let mut p = if quick {
            Phases {
                baseline: s(1),
                fault: s(3),
                recovery: s(2),
            }
        } else {
            Phases {
                baseline: s(2),
                fault: s(5),
                recovery: s(4),
            }
        };
        match self {
            // Long enough for at least one token roll-over (about 5 s) inside the run.
            Self::TokenExpiry => p.fault = p.fault.max(s(8)),
            // Long enough for each caller to hit the idle timeout several times.
            Self::IdleCloses => p.fault = if quick { s(6) } else { s(10) },
            _ => {}
        }
        p
    }
}

/// One turn of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Tts,
    Stt,
}

/// How long each phase lasts.
#[derive(Debug, Clone, Copy)]
struct Phases {
    baseline: Duration,
    fault: Duration,
    recovery: Duration,
}

/// The phase a failure happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Baseline = 0,
    Fault = 1,
    Recovery = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Baseline,
            1 => Self::Fault,
            _ => Self::Recovery,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Fault => "fault",
            Self::Recovery => "recovery",
        }
    }
}

/// Entry point of `cargo xtask faults`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let scenarios: Vec<Scenario> = match args.scenario {
        Some(s) => vec![s],
        None => Scenario::ALL.to_vec(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run_all(scenarios, args.quick))
}

async fn run_all(scenarios: Vec<Scenario>, quick: bool) -> anyhow::Result<()> {
    speech_azure::install_crypto_provider();
    let began = Instant::now();
    let mut rows = Vec::new();
    for scenario in scenarios {
        eprintln!("faults: {} ...", scenario.name());
        let row = run_scenario(scenario, quick)
            .await
            .with_context(|| format!("scenario {}", scenario.name()))?;
        eprintln!("faults: {} done: {}", scenario.name(), row.verdict());
        for line in &row.notes {
            eprintln!("faults:   {line}");
        }
        rows.push(row);
    }
    println!();
    print!("{}", render_table(&rows));
    println!();
    for row in &rows {
        for line in row.machine_lines() {
            println!("{line}");
        }
    }
    println!("faults.total_secs: {:.1}", began.elapsed().as_secs_f64());
    let bad: Vec<String> = rows
        .iter()
        .filter(|r| !r.problems().is_empty())
        .map(|r| format!("{} ({})", r.scenario, r.problems().join(", ")))
        .collect();
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

/// One row of the report.
#[derive(Debug, Clone)]
struct Row {
    scenario: &'static str,
    requests: u64,
    failed: u64,
    by_class: BTreeMap<String, u64>,
    baseline_failures: u64,
    /// `None`: never recovered within [`RECOVER_LIMIT`].
    recover: Option<Duration>,
    leaked: u64,
    transparent: bool,
    fault_from_start: bool,
    /// Extra facts for the log: tiers, pools, emulator counters.
    notes: Vec<String>,
}

impl Row {
    fn hangs(&self) -> u64 {
        self.by_class.get("hang").copied().unwrap_or(0)
    }

    fn unexpected(&self) -> u64 {
        self.by_class
            .iter()
            .filter(|(class, _)| class.starts_with("unexpected"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Why this row fails the command; empty when it does not.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.hangs() > 0 {
            p.push(format!("{} hung requests", self.hangs()));
        }
        if self.leaked > 0 {
            p.push(format!("{} leaked connections", self.leaked));
        }
        if self.recover.is_none() {
            p.push("pools never recovered to their warm targets".to_owned());
        }
        if self.unexpected() > 0 {
            p.push(format!(
                "{} failures of an unexpected class",
                self.unexpected()
            ));
        }
        if self.transparent && self.failed > 0 {
            p.push(format!(
                "{} failures where the fault must be transparent",
                self.failed
            ));
        } else if !self.fault_from_start && self.baseline_failures > 0 {
            p.push(format!(
                "{} failures before the fault",
                self.baseline_failures
            ));
        }
        p
    }

    fn verdict(&self) -> String {
        let p = self.problems();
        if p.is_empty() {
            "ok".to_owned()
        } else {
            format!("FAIL: {}", p.join(", "))
        }
    }

    fn machine_lines(&self) -> Vec<String> {
        let s = self.scenario;
        vec![
            format!("faults.{s}.requests: {}", self.requests),
            format!("faults.{s}.failed: {}", self.failed),
            format!("faults.{s}.recover_ms: {}", fmt_recover(self.recover)),
            format!("faults.{s}.leaked: {}", self.leaked),
            format!("faults.{s}.hangs: {}", self.hangs()),
        ]
    }
}

fn fmt_recover(recover: Option<Duration>) -> String {
    recover.map_or_else(|| "never".to_owned(), |d| d.as_millis().to_string())
}

fn fmt_classes(by_class: &BTreeMap<String, u64>) -> String {
    if by_class.is_empty() {
        return "-".to_owned();
    }
    by_class
        .iter()
        .map(|(class, n)| format!("{class} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The report table, one line per row, columns sized to their contents.
fn render_table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "requests",
        "failed",
        "failures by class",
        "recover_ms",
        "leaked",
        "verdict",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.to_owned(),
                r.requests.to_string(),
                r.failed.to_string(),
                fmt_classes(&r.by_class),
                fmt_recover(r.recover),
                r.leaked.to_string(),
                if r.problems().is_empty() {
                    "ok".to_owned()
                } else {
                    "FAIL".to_owned()
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Text columns left-aligned, numbers right-aligned.
    let numeric = [false, true, true, false, true, true, false];
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if numeric[i] {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                if i + 1 < cells.len() {
                    out.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push('\n');
        out
    };
    let mut out = line(&header.map(str::to_owned));
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    out.push_str(&"-".repeat(total));
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// The class of a failed request from its HTTP status and the service's error code.
fn class_for(status: u16, code: Option<&str>) -> String {
    match (status, code) {
        (429, Some("pool_exhausted")) => "429-pool-exhausted".to_owned(),
        (429, _) => "429-throttled".to_owned(),
        (409, _) => "409-session-busy".to_owned(),
        (502, Some("upstream_auth")) => "502-auth".to_owned(),
        (502, Some("upstream_protocol")) => "502-protocol".to_owned(),
        (502, _) => "502-upstream".to_owned(),
        (503, Some("shutting_down")) => "503-draining".to_owned(),
        (503, _) => "503-unavailable".to_owned(),
        (504, _) => "504-timeout".to_owned(),
        (status, _) => format!("unexpected-{status}"),
    }
}

/// The `error.code` of the service's JSON error body, if it has one.
fn error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["error"]["code"].as_str().map(str::to_owned)
}

/// What callers observed.
#[derive(Debug, Default)]
struct Stats {
    phase: AtomicU8,
    requests: AtomicU64,
    inner: Mutex<Observed>,
}

#[derive(Debug, Default)]
struct Observed {
    failures: BTreeMap<String, u64>,
    by_phase: BTreeMap<Phase, u64>,
    /// Failures by request kind and class (`tts stream-cut`).
    by_kind: BTreeMap<String, u64>,
    tiers: BTreeMap<String, u64>,
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Records one request's outcome: `Ok(tier)` or `Err(class)`.
    fn record(&self, kind: &str, outcome: Result<Option<String>, String>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let phase = Phase::from_u8(self.phase.load(Ordering::SeqCst));
        let mut inner = self.lock();
        match outcome {
            Ok(Some(tier)) => *inner.tiers.entry(format!("{kind}-{tier}")).or_default() += 1,
            Ok(None) => {}
            Err(class) => {
                *inner.by_kind.entry(format!("{kind} {class}")).or_default() += 1;
                *inner.failures.entry(class).or_default() += 1;
                *inner.by_phase.entry(phase).or_default() += 1;
            }
        }
    }
}

/// What every caller shares.
struct Ctx {
    client: reqwest::Client,
    addr: SocketAddr,
    stats: Stats,
    stop: AtomicBool,
    think_ms: (u64, u64),
    turns: &'static [Turn],
    pcm: Vec<u8>,
}

const PHRASES: [&str; 3] = [
    "Thanks for calling, how can I help you today?",
    "Let me look that up for you, one moment please.",
    "Your order has shipped and arrives on Tuesday.",
];

/// One caller: calls back to back until told to stop. Each call finishes (its DELETE is
/// sent) even when the stop arrives mid-call, so no session is left behind.
async fn caller(ctx: Arc<Ctx>, index: usize) {
    let mut rng = fastrand::Rng::with_seed(index as u64 + 1);
    let mut call = 0u64;
    while !ctx.stop.load(Ordering::SeqCst) {
        call += 1;
        let session = format!("faults-{index}-{call}");
        for (turn, kind) in ctx.turns.iter().enumerate() {
            if turn > 0 {
                let (lo, hi) = ctx.think_ms;
                tokio::time::sleep(Duration::from_millis(rng.u64(lo..=hi))).await;
                if ctx.stop.load(Ordering::SeqCst) {
                    break;
                }
            }
            if *kind == Turn::Stt {
                let outcome = stt_turn(&ctx, &session).await;
                ctx.stats.record("stt", outcome.map(Some));
            } else {
                let text = PHRASES[(call as usize + turn) % PHRASES.len()];
                let outcome = tts_turn(&ctx, &session, text).await;
                ctx.stats.record("tts", outcome.map(Some));
            }
        }
        let outcome = delete_session(&ctx, &session).await;
        ctx.stats.record("delete", outcome.map(|()| None));
    }
}

/// `POST /api/v1/tts` and the whole audio stream. `Ok(tier)` or `Err(class)`.
async fn tts_turn(ctx: &Ctx, session: &str, text: &str) -> Result<String, String> {
    let body = serde_json::json!({ "text": text, "session_id": session }).to_string();
    let request = async {
        let response = ctx
            .client
            .post(format!("http://{}/api/v1/tts", ctx.addr))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let mut response = response.map_err(|_| "transport".to_owned())?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(class_for(status.as_u16(), error_code(&body).as_deref()));
        }
        let tier = response
            .headers()
            .get("x-pool-tier")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned();
        let mut bytes = 0usize;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes += chunk.len(),
                Ok(None) => break,
                // The service aborts the body when the turn fails after audio started.
                Err(_) => return Err("stream-cut".to_owned()),
            }
        }
        if bytes == 0 {
            return Err("unexpected-empty-audio".to_owned());
        }
        Ok(tier)
    };
    tokio::time::timeout(HANG, request)
        .await
        .unwrap_or_else(|_| Err("hang".to_owned()))
}

/// One STT turn on a fresh websocket of the session: connect, `connected`, audio, `end`,
/// events up to `turn_end`, close. `Ok(tier)` or `Err(class)`.
async fn stt_turn(ctx: &Ctx, session: &str) -> Result<String, String> {
    let url = format!("ws://{}/api/v1/stt?session_id={session}", ctx.addr);
    let turn = async {
        let mut ws = match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((ws, _)) => ws,
            // The first connection is taken before the upgrade, so pool and upstream
            // failures arrive as an HTTP status.
            Err(tungstenite::Error::Http(response)) => {
                let code = response.body().as_deref().and_then(error_code);
                return Err(class_for(response.status().as_u16(), code.as_deref()));
            }
            Err(_) => return Err("transport".to_owned()),
        };
        let result = stt_exchange(&mut ws, &ctx.pcm).await;
        // Close politely (bounded), so the service parks the connection in the session.
        let close = async {
            if ws.close(None).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        result
    };
    tokio::time::timeout(HANG, turn)
        .await
        .unwrap_or_else(|_| Err("hang".to_owned()))
}

type ClientWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn stt_exchange(ws: &mut ClientWs, pcm: &[u8]) -> Result<String, String> {
    let mut tier = None;
    // `connected` first.
    match next_json(ws).await {
        Some(v) if v["type"] == "connected" => {}
        Some(v) if v["type"] == "error" => return Err(in_band_class(&v)),
        _ => return Err("stream-cut".to_owned()),
    }
    for chunk in pcm.chunks(6_400) {
        if ws.send(Message::binary(chunk.to_vec())).await.is_err() {
            return Err("stream-cut".to_owned());
        }
    }
    if ws.send(Message::text(r#"{"type":"end"}"#)).await.is_err() {
        return Err("stream-cut".to_owned());
    }
    loop {
        let Some(v) = next_json(ws).await else {
            return Err("stream-cut".to_owned());
        };
        match v["type"].as_str() {
            Some("turn_start") => tier = v["tier"].as_str().map(str::to_owned),
            Some("turn_end") => return Ok(tier.unwrap_or_else(|| "unknown".to_owned())),
            Some("error") => return Err(in_band_class(&v)),
            _ => {}
        }
    }
}

/// The class of an STT `{"type":"error","status":…,"code":…}` message.
fn in_band_class(v: &serde_json::Value) -> String {
    let status = v["status"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .unwrap_or(0);
    class_for(status, v["code"].as_str())
}

/// The next JSON text message; `None` when the socket ends (close, error or EOF).
async fn next_json(ws: &mut ClientWs) -> Option<serde_json::Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// `DELETE /api/v1/sessions/{id}`. A 404 is fine: a call whose every turn failed before
/// getting a connection left no session behind.
async fn delete_session(ctx: &Ctx, session: &str) -> Result<(), String> {
    let request = async {
        let response = ctx
            .client
            .delete(format!("http://{}/api/v1/sessions/{session}", ctx.addr))
            .send()
            .await
            .map_err(|_| "transport".to_owned())?;
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(class_for(status.as_u16(), error_code(&body).as_deref()))
        }
    };
    tokio::time::timeout(HANG, request)
        .await
        .unwrap_or_else(|_| Err("hang".to_owned()))
}

/// `seconds` of 16 kHz 16-bit mono PCM (a quiet sawtooth).
fn pcm(seconds: f32) -> Vec<u8> {
    let samples = (16_000.0 * seconds) as usize;
    (0..samples)
        .flat_map(|i| (((i % 64) as i16 - 32) * 100).to_le_bytes())
        .collect()
}

/// The emulator, shared between the fault loop (which may restart it) and the recovery
/// poller. `None` only while a restart is under way.
type SharedEmulator = Arc<Mutex<Option<EmulatorHandle>>>;

fn with_emulator<T>(emulator: &SharedEmulator, f: impl FnOnce(&EmulatorHandle) -> T) -> Option<T> {
    let guard = emulator.lock().unwrap_or_else(|e| e.into_inner());
    guard.as_ref().map(f)
}

/// Turns the scenario's fault on, keeps it going for `duration`, and turns it off.
async fn apply_fault(
    scenario: Scenario,
    emulator: &SharedEmulator,
    duration: Duration,
) -> anyhow::Result<()> {
    let until = tokio::time::Instant::now() + duration;
    match scenario {
        Scenario::Storm429 => {
            with_emulator(emulator, |e| {
                e.set_faults(vec![
                    FaultRule::new(Fault::Handshake {
                        status: 429,
                        retry_after: Some(1),
                    })
                    .target(Target::Ws),
                ]);
            });
        }
        Scenario::EmulatorRestart => {
            let handle = emulator
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .context("the emulator is there")?;
            let restarted = handle.restart().await;
            let restarted = restarted.context("restarting the emulator")?;
            *emulator.lock().unwrap_or_else(|e| e.into_inner()) = Some(restarted);
            // A one-off event: the fault ends when the emulator is back, and recovery is
            // measured from there.
            return Ok(());
        }
        _ => {}
    }
    // One-shot rules, re-armed as they fire: a steady trickle of faulty turns rather than
    // every turn failing at once.
    let mut flip = false;
    while tokio::time::Instant::now() < until {
        with_emulator(emulator, |e| {
            if !e.faults().is_empty() {
                return;
            }
            flip = !flip;
            let rule = match scenario {
                Scenario::TokenExpiry => FaultRule::new(Fault::Handshake {
                    status: 401,
                    retry_after: None,
                })
                .target(Target::Ws),
                Scenario::Closes4429 => FaultRule::new(Fault::Close {
                    code: 4429,
                    reason: None,
                    at: if flip {
                        TurnPoint::AfterTurnStart
                    } else {
                        TurnPoint::AfterTurnEnd
                    },
                })
                .target(Target::Ws),
                Scenario::MidStreamDrops if flip => FaultRule::new(Fault::Disconnect {
                    at: TurnPoint::AfterFrames(3),
                    rst: false,
                })
                .target(Target::TtsWs),
                Scenario::MidStreamDrops => FaultRule::new(Fault::Disconnect {
                    at: TurnPoint::AfterFrames(2),
                    rst: true,
                })
                .target(Target::SttWs),
                Scenario::Storm429 | Scenario::IdleCloses | Scenario::EmulatorRestart => return,
            };
            e.add_fault(rule.once());
        });
        tokio::time::sleep_until((tokio::time::Instant::now() + FAULT_TICK).min(until)).await;
    }
    with_emulator(emulator, EmulatorHandle::clear_faults);
    Ok(())
}

/// Whether both pools hold at least their warm target of idle connections, and every
/// connection the pools count is really open at the emulator (a socket the server closed
/// stays in an idle set until someone looks at it; counting it would flatter recovery).
fn recovered(state: &AppState, emulator: &SharedEmulator) -> bool {
    let pools = state.snapshots();
    let Some(counters) = with_emulator(emulator, EmulatorHandle::counters) else {
        return false;
    };
    pools.iter().all(|p| {
        let open_at_emulator = if p.name == service::TTS_POOL {
            counters.tts_connections_open
        } else {
            counters.stt_connections_open
        };
        let counted_open = p.size.saturating_sub(p.creating) as u64;
        p.warm_pool_size >= p.warm_pool_target && open_at_emulator >= counted_open
    })
}

/// Polls until [`recovered`], from `from`; `None` after [`RECOVER_LIMIT`].
async fn time_to_recover(
    state: AppState,
    emulator: SharedEmulator,
    from: Instant,
) -> Option<Duration> {
    loop {
        if recovered(&state, &emulator) {
            return Some(from.elapsed());
        }
        if from.elapsed() >= RECOVER_LIMIT {
            return None;
        }
        tokio::time::sleep(RECOVER_POLL).await;
    }
}

async fn run_scenario(scenario: Scenario, quick: bool) -> anyhow::Result<Row> {
    let phases = scenario.phases(quick);
    let handle = Emulator::start(scenario.emulator_config())
        .await
        .context("starting the emulator")?;
    let ca = CaFile::write(&handle)?;
    let config = scenario.service_config(handle.base_url_http(), ca.0.clone());
    let emulator: SharedEmulator = Arc::new(Mutex::new(Some(handle)));

    let state = service::build_state(&config)
        .map_err(|e| anyhow::anyhow!("building the service state: {e}"))?;
    if tokio::time::timeout(WARM_UP_LIMIT, state.warm_up())
        .await
        .is_err()
        || !state.is_ready()
    {
        bail!(
            "the pools did not reach their warm targets within {WARM_UP_LIMIT:?}: {:?}",
            state.snapshots()
        );
    }
    let served = Served::start(&state, config.shutdown_grace).await?;
    let addr = served.addr;

    let ctx = Arc::new(Ctx {
        // No client timeout: the bound is ours ([`HANG`]), so a hang is told apart from a
        // transport error.
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(CALLERS)
            .build()
            .context("building the HTTP client")?,
        addr,
        stats: Stats::default(),
        stop: AtomicBool::new(false),
        think_ms: scenario.think_ms(),
        turns: scenario.turns(),
        pcm: pcm(STT_AUDIO_SECS),
    });
    let mut callers = JoinSet::new();
    for index in 0..CALLERS {
        callers.spawn(caller(ctx.clone(), index));
    }

    ctx.stats.set_phase(Phase::Baseline);
    tokio::time::sleep(phases.baseline).await;
    ctx.stats.set_phase(Phase::Fault);
    let fault_start = Instant::now();
    apply_fault(scenario, &emulator, phases.fault).await?;
    ctx.stats.set_phase(Phase::Recovery);
    let fault_end = Instant::now();
    let recovery = tokio::spawn(time_to_recover(state.clone(), emulator.clone(), fault_end));
    // The load runs for the same total time whether the fault was a window or an event.
    let planned_end = fault_start + phases.fault + phases.recovery;
    tokio::time::sleep(
        planned_end
            .saturating_duration_since(Instant::now())
            .max(phases.recovery / 2),
    )
    .await;

    // Stop the callers; each finishes its call (bounded by HANG per request).
    ctx.stop.store(true, Ordering::SeqCst);
    let joined = tokio::time::timeout(HANG * 4, async {
        while callers.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !joined {
        for _ in 0..callers.len() {
            ctx.stats.record("caller", Err("hang".to_owned()));
        }
        callers.abort_all();
        while callers.join_next().await.is_some() {}
    }
    let recover = recovery.await.context("the recovery poller")?;

    let before_shutdown = state.snapshots();
    served.stop().await?;
    let pools = state.snapshots();
    let pool_leak: u64 = pools
        .iter()
        .map(|p| p.created_total.saturating_sub(p.closed_total))
        .sum();
    let handle = emulator
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .context("the emulator is there")?;
    let counters = match handle
        .wait_for_counters(|c| c.connections_open == 0, LEAK_WAIT)
        .await
    {
        Ok(c) | Err(c) => c,
    };
    let tasks_left = handle.shutdown().await;

    let observed = ctx.stats.lock();
    let failed: u64 = observed.failures.values().sum();
    let mut notes = Vec::new();
    let tiers: Vec<String> = observed
        .tiers
        .iter()
        .map(|(t, n)| format!("{t} {n}"))
        .collect();
    notes.push(format!("ok turns by tier: {}", tiers.join(", ")));
    let phases_line: Vec<String> = observed
        .by_phase
        .iter()
        .map(|(p, n)| format!("{} {n}", p.name()))
        .collect();
    if !phases_line.is_empty() {
        notes.push(format!("failures by phase: {}", phases_line.join(", ")));
        notes.push(format!(
            "failures by request: {}",
            fmt_classes(&observed.by_kind)
        ));
    }
    for p in &before_shutdown {
        notes.push(format!(
            "{}: idle {}/{} size {} created {} closed {} create failures {} cold {} last error {}",
            p.name,
            p.warm_pool_size,
            p.warm_pool_target,
            p.size,
            p.created_total,
            p.closed_total,
            p.create_failures,
            p.allocations_cold,
            p.last_error.as_deref().unwrap_or("-"),
        ));
    }
    notes.push(format!(
        "emulator: websockets opened {} open after shutdown {} handshakes rejected {} turns served {} tokens issued {} faults fired {} tasks left {tasks_left}",
        counters.connections_opened,
        counters.connections_open,
        counters.handshakes_rejected,
        counters.turns_served,
        counters.tokens_issued,
        counters.faults_injected,
    ));
    Ok(Row {
        scenario: scenario.name(),
        requests: ctx.stats.requests.load(Ordering::Relaxed),
        failed,
        by_class: observed.failures.clone(),
        baseline_failures: observed
            .by_phase
            .get(&Phase::Baseline)
            .copied()
            .unwrap_or(0),
        recover,
        leaked: pool_leak + counters.connections_open,
        transparent: scenario.transparent(),
        fault_from_start: scenario.fault_from_start(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_codes_map_to_classes() {
        assert_eq!(class_for(429, Some("pool_exhausted")), "429-pool-exhausted");
        assert_eq!(class_for(429, Some("upstream_throttled")), "429-throttled");
        assert_eq!(class_for(502, Some("upstream_auth")), "502-auth");
        assert_eq!(class_for(502, None), "502-upstream");
        assert_eq!(
            class_for(503, Some("upstream_unavailable")),
            "503-unavailable"
        );
        assert_eq!(class_for(504, None), "504-timeout");
        assert_eq!(class_for(500, Some("internal")), "unexpected-500");
        assert_eq!(class_for(400, None), "unexpected-400");
        assert_eq!(
            error_code(br#"{"error":{"code":"upstream_auth","message":"x"}}"#).as_deref(),
            Some("upstream_auth")
        );
        assert_eq!(error_code(b"not json"), None);
        let in_band =
            serde_json::json!({"type":"error","status":503,"code":"upstream_unavailable"});
        assert_eq!(in_band_class(&in_band), "503-unavailable");
    }

    fn row(by_class: &[(&str, u64)], recover: Option<u64>, leaked: u64) -> Row {
        let by_class: BTreeMap<String, u64> = by_class
            .iter()
            .map(|(c, n)| ((*c).to_owned(), *n))
            .collect();
        Row {
            scenario: "429-storm",
            requests: 120,
            failed: by_class.values().sum(),
            by_class,
            baseline_failures: 0,
            recover: recover.map(Duration::from_millis),
            leaked,
            transparent: false,
            fault_from_start: false,
            notes: Vec::new(),
        }
    }

    #[test]
    fn problems_fail_the_row_but_expected_failures_do_not() {
        assert!(
            row(&[("429-throttled", 7)], Some(10), 0)
                .problems()
                .is_empty()
        );
        assert_eq!(row(&[("hang", 1)], Some(10), 0).problems().len(), 1);
        assert_eq!(row(&[], None, 2).problems().len(), 2);
        assert_eq!(
            row(&[("unexpected-500", 1)], Some(1), 0).problems().len(),
            1
        );
        let mut transparent = row(&[("503-unavailable", 1)], Some(1), 0);
        transparent.transparent = true;
        assert_eq!(transparent.problems().len(), 1);
        let mut early = row(&[("503-unavailable", 1)], Some(1), 0);
        early.baseline_failures = 1;
        assert_eq!(early.problems().len(), 1);
    }

    #[test]
    fn table_and_machine_lines() {
        let rows = [
            row(
                &[("429-throttled", 7), ("503-unavailable", 2)],
                Some(1234),
                0,
            ),
            row(&[], None, 0),
        ];
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("scenario"), "{table}");
        assert!(
            lines[2].contains("429-throttled 7, 503-unavailable 2"),
            "{table}"
        );
        assert!(
            lines[2].contains("1234") && lines[2].ends_with("ok"),
            "{table}"
        );
        assert!(
            lines[3].contains("never") && lines[3].ends_with("FAIL"),
            "{table}"
        );
        // Numbers are right-aligned under their header.
        let header_end = lines[0].find("requests").map(|i| i + "requests".len());
        assert_eq!(header_end, lines[2].find(" 120 ").map(|i| i + 4), "{table}");
        let machine = rows[1].machine_lines();
        assert!(machine.contains(&"faults.429-storm.recover_ms: never".to_owned()));
        assert!(machine.contains(&"faults.429-storm.hangs: 0".to_owned()));
        assert_eq!(fmt_classes(&BTreeMap::new()), "-");
    }
}
