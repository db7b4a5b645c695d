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
//!   `stream-cut` (a response or websocket that ended without its end marker), `no-result`
//!   (an STT turn that ended without any recognition result) and `hang`;
//! - `before` and `cut`: the failures before the caller's first audio byte or recognition
//!   result, and the cuts after it; `budget`: how many of each (and in all) the scenario
//!   may cause (see [`Scenario::budget`]: zero where the service promises transparency,
//!   one per injected fault where a fault may fail the request it hits);
//! - `recover_ms`: from the end of the fault to the first moment both pools hold at least
//!   their warm target of idle connections *that are really open* (the pool's idle count,
//!   cross-checked against the websockets the emulator has open, so dead sockets still
//!   sitting in an idle set do not count), polled every 50 ms for at most
//!   [`RECOVER_LIMIT`]; `never` otherwise. It is not the length of a dip: when the pools
//!   are already at target as the fault ends (the fault never emptied them, or they
//!   refilled while it lasted) it is 0;
//! - `leaked`: after the service has shut down, websockets the emulator still has open
//!   (waited for, bounded) plus `created_total - closed_total` over both pools.
//!
//! The scenarios, and what each one promises:
//! - `token-expiry`: STS token auth against an emulator whose tokens live 66 s. The client
//!   never uses a token with less than 60 s left and retires connections opened with one,
//!   so tokens roll over every few seconds and connections are replaced for it, all run
//!   long. During the fault the emulator also refuses single upgrades with 401 (a token the
//!   server considers expired while the client does not); the client must fetch a fresh
//!   token and retry. **Transparent: budget 0.**
//! - `429-storm`: every websocket upgrade is refused with 429 + `Retry-After: 1` for the
//!   fault window. Open connections keep working; new ones cannot be made, so callers that
//!   need one get a clear 429 (never a hang), and the pools refill once the storm ends.
//!   Budget: one failure per refused upgrade, all before the first output, no cut.
//! - `4429-closes`: during the fault, turns are closed by the emulator with 4429 (Azure's
//!   "too many requests" close), alternately right after `turn.start` (the client gets a
//!   429) and right after `turn.end` (the connection dies between turns; the next turn of
//!   that session must get a fresh connection without an error). Budget: one failure
//!   per fired close, before the first output; no cut.
//! - `idle-closes-racing-acquires`: the emulator closes websockets after 2 s without a
//!   client message, for the whole run, and callers (three TTS turns, then two STT turns
//!   per call) think 1.7–2.3 s between turns, so a session's parked connection is closed by
//!   the server right around its next turn. The pool refreshes idle connections early
//!   (`POOL_MAX_IDLE` 7 s: replaced 0–2 s after they go idle) and replaces a closed one at
//!   hand-out. Failures are reported (a close still in flight when a turn starts is a
//!   genuine race) and must be rare: budget 1 % of requests, no cut. The tiers are
//!   printed alongside.
//! - `mid-stream-drops`: during the fault the emulator drops TCP connections without a
//!   close frame in the middle of turns (TTS after 3 audio frames, STT after 2 audio
//!   frames, some with RST). The affected client sees a cut stream or an error message;
//!   the next turns of its session get a fresh connection. Budget: one failed turn per
//!   drop (TTS cut after its first audio, STT before its first result).
//! - `emulator-restart`: the emulator is restarted (same port, same certificate) under
//!   load. In-flight turns fail and every pooled connection dies; then the pools must
//!   refill. Budget: one failure per caller (the request it had in flight).
//!
//! Whatever the scenario, the command fails (non-zero exit) when a request hangs, a
//! connection leaks, a pool never recovers to its warm target, a failure has an
//! unexpected class (say a 500 or a 400, or a caller task that panicked), the failures
//! exceed the scenario's budget, or a failure happens in the baseline phase of a
//! scenario whose fault starts later.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::client::{Client, ErrorClass, Failure, Pace, Request, Stage};
use crate::load::target::{CaFile, SHUTDOWN_LIMIT};
use service::config::{AzureAuth, BackendChoice};
use service::secret::Secret;
use service::test_support::LoopbackServer;
use service::{AppState, Config};
use speech_emulator::{
    Emulator, EmulatorConfig, EmulatorHandle, Fault, FaultRule, Target, TurnPoint,
};
use tokio::task::JoinSet;

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
/// The caller's utterance in each STT turn (16 kHz 16-bit mono PCM, sent at once).
const STT_AUDIO: Duration = Duration::from_millis(400);
/// The share of requests the idle race may fail, in percent (see [`Scenario::budget`]).
const IDLE_RACE_BUDGET_PERCENT: u64 = 1;

/// `cargo xtask faults` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Shorter phases (about half the run time).
    #[arg(long)]
    quick: bool,
    /// Run only this scenario.
    #[arg(long, value_name = "NAME", value_parser = parse_choice)]
    scenario: Option<Choice>,
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

/// A `--scenario` value: one of the fault loops above, or a scenario with its own run
/// (`barge-in` in `faults_barge_in.rs`, the blackhole ones in `faults_blackhole.rs`, the
/// call-long STT ones in `faults_stt.rs`).
#[derive(Debug, Clone, Copy)]
enum Choice {
    Loop(Scenario),
    BargeIn,
    Blackhole(crate::faults_blackhole::Which),
    Stt(crate::faults_stt::SttScenario),
}

/// The scenarios with their own run, by `--scenario` name. The call-long STT ones also
/// run at the end of a plain `cargo xtask faults`; the others only when named.
const NAMED_ONLY: [(&str, Choice); 5] = [
    (
        "stt-max-age-rollover",
        Choice::Stt(crate::faults_stt::SttScenario::MaxAgeRollover),
    ),
    (
        "stt-drop-replay",
        Choice::Stt(crate::faults_stt::SttScenario::DropReplay),
    ),
    ("barge-in", Choice::BargeIn),
    (
        "blackhole-idle",
        Choice::Blackhole(crate::faults_blackhole::Which::Idle),
    ),
    (
        "blackhole-mid-turn",
        Choice::Blackhole(crate::faults_blackhole::Which::MidTurn),
    ),
];

fn parse_choice(s: &str) -> Result<Choice, String> {
    if let Some((_, choice)) = NAMED_ONLY.iter().find(|(name, _)| *name == s) {
        return Ok(*choice);
    }
    <Scenario as clap::ValueEnum>::from_str(s, false)
        .map(Choice::Loop)
        .map_err(|_| {
            let mut names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
            names.extend(NAMED_ONLY.iter().map(|(name, _)| *name));
            format!("unknown scenario; one of {}", names.join(", "))
        })
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

    /// How many caller-visible failures the scenario may cause, before the first audio
    /// byte or recognition result and after it (a cut), and in all.
    fn budget(self) -> Budget {
        use Limit::{PerCaller, PerFault, Share, Zero};
        match self {
            // The client refreshes tokens and retries a refused upgrade: transparent.
            Self::TokenExpiry => Budget::new(Zero, Zero, Zero),
            // A refused upgrade fails only a request that needed a new connection, before
            // it got anything; open connections keep serving, so nothing is cut.
            Self::Storm429 => Budget::new(PerFault, Zero, PerFault),
            // A close right after `turn.start` fails that turn before its first output; a
            // close after `turn.end` must be invisible.
            Self::Closes4429 => Budget::new(PerFault, Zero, PerFault),
            // The pool replaces idle connections before the server's idle close and checks
            // a connection at hand-out; only a close still in flight at hand-out can reach
            // a caller, so rarely. The server closes only idle sockets: never a cut.
            Self::IdleCloses => Budget::new(
                Share(IDLE_RACE_BUDGET_PERCENT),
                Zero,
                Share(IDLE_RACE_BUDGET_PERCENT),
            ),
            // Each drop kills the one turn it hits: a TTS stream after its first audio,
            // an STT turn before its first result.
            Self::MidStreamDrops => Budget::new(PerFault, PerFault, PerFault),
            // One event: at most the request each caller had in flight (a TTS turn before
            // its first audio is retried on a fresh connection).
            Self::EmulatorRestart => Budget::new(PerCaller, PerCaller, PerCaller),
        }
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

/// A ceiling on caller-visible failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// None at all: the service promises the fault is invisible.
    Zero,
    /// At most one per fault the emulator fired: a fault may fail the request it hit,
    /// never another.
    PerFault,
    /// At most one per caller: a one-off event fails at most the request in flight.
    PerCaller,
    /// At most this percentage of all requests (rounded down).
    Share(u64),
}

impl Limit {
    fn allowed(self, requests: u64, faults_fired: u64) -> u64 {
        match self {
            Self::Zero => 0,
            Self::PerFault => faults_fired,
            Self::PerCaller => CALLERS as u64,
            Self::Share(percent) => requests * percent / 100,
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Zero => "0".to_owned(),
            Self::PerFault => "1/fault".to_owned(),
            Self::PerCaller => "1/caller".to_owned(),
            Self::Share(percent) => format!("{percent}%"),
        }
    }
}

/// A scenario's budget of caller-visible failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Budget {
    /// Failures before the caller got its first audio byte or recognition result.
    before_output: Limit,
    /// Cuts after the first audio byte or recognition result.
    after_output: Limit,
    /// Both together.
    total: Limit,
}

impl Budget {
    fn new(before_output: Limit, after_output: Limit, total: Limit) -> Self {
        Self {
            before_output,
            after_output,
            total,
        }
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
    use crate::faults_stt::SttScenario;
    let scenarios: Vec<Scenario> = match args.scenario {
        Some(Choice::BargeIn) => return crate::faults_barge_in::run(),
        Some(Choice::Blackhole(which)) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("building the tokio runtime")?;
            return runtime.block_on(crate::faults_blackhole::run(which, args.quick));
        }
        Some(Choice::Stt(s)) => return crate::faults_stt::run(&[s], args.quick),
        Some(Choice::Loop(s)) => vec![s],
        None => Scenario::ALL.to_vec(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let classic = runtime.block_on(run_all(scenarios, args.quick));
    drop(runtime);
    if args.scenario.is_none() {
        let stt = crate::faults_stt::run(&SttScenario::ALL, args.quick);
        return classic.and(stt);
    }
    classic
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
    by_class: BTreeMap<ErrorClass, u64>,
    /// Failures before the first audio byte or recognition result.
    before_output: u64,
    /// Cuts after the first audio byte or recognition result.
    after_output: u64,
    budget: Budget,
    /// Fault rules the emulator fired (each refused upgrade, close or drop).
    faults_fired: u64,
    baseline_failures: u64,
    /// `None`: never recovered within [`RECOVER_LIMIT`].
    recover: Option<Duration>,
    leaked: u64,
    fault_from_start: bool,
    /// Extra facts for the log: tiers, pools, emulator counters.
    notes: Vec<String>,
}

impl Row {
    fn hangs(&self) -> u64 {
        self.by_class.get(&ErrorClass::Hang).copied().unwrap_or(0)
    }

    fn unexpected(&self) -> u64 {
        self.by_class
            .iter()
            .filter(|(class, _)| !class.is_expected())
            .map(|(_, n)| n)
            .sum()
    }

    fn allowed(&self, limit: Limit) -> u64 {
        limit.allowed(self.requests, self.faults_fired)
    }

    /// `before/after/total` allowed, e.g. `17/0/17`.
    fn budget_cell(&self) -> String {
        format!(
            "{}/{}/{}",
            self.allowed(self.budget.before_output),
            self.allowed(self.budget.after_output),
            self.allowed(self.budget.total)
        )
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
        for (what, count, limit) in [
            (
                "before the first output",
                self.before_output,
                self.budget.before_output,
            ),
            (
                "cut after the first output",
                self.after_output,
                self.budget.after_output,
            ),
            ("in all", self.failed, self.budget.total),
        ] {
            let allowed = self.allowed(limit);
            if count > allowed {
                p.push(format!(
                    "{count} failures {what}, budget {allowed} ({})",
                    limit.describe()
                ));
            }
        }
        if !self.fault_from_start && self.baseline_failures > 0 {
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
            format!("faults.{s}.failed_before_output: {}", self.before_output),
            format!("faults.{s}.cut_after_output: {}", self.after_output),
            format!(
                "faults.{s}.budget_total: {}",
                self.allowed(self.budget.total)
            ),
            format!("faults.{s}.recover_ms: {}", fmt_recover(self.recover)),
            format!("faults.{s}.leaked: {}", self.leaked),
            format!("faults.{s}.hangs: {}", self.hangs()),
        ]
    }
}

fn fmt_recover(recover: Option<Duration>) -> String {
    recover.map_or_else(|| "never".to_owned(), |d| d.as_millis().to_string())
}

fn fmt_classes<K: std::fmt::Display>(by_class: &BTreeMap<K, u64>) -> String {
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
        "before",
        "cut",
        "budget",
        "failures by class",
        "recover_ms",
        "leaked",
        "verdict",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.to_owned(),
                r.requests.to_string(),
                r.failed.to_string(),
                r.before_output.to_string(),
                r.after_output.to_string(),
                r.budget_cell(),
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
    let numeric = [
        false, true, true, true, true, true, false, true, true, false,
    ];
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

/// What callers observed.
#[derive(Debug, Default)]
struct Stats {
    phase: AtomicU8,
    requests: AtomicU64,
    inner: Mutex<Observed>,
}

#[derive(Debug, Default)]
struct Observed {
    failures: BTreeMap<ErrorClass, u64>,
    by_phase: BTreeMap<Phase, u64>,
    by_stage: BTreeMap<Stage, u64>,
    /// Failures by request and class (`tts stream-cut`).
    by_request: BTreeMap<(Request, ErrorClass), u64>,
    tiers: BTreeMap<String, u64>,
}

impl Stats {
    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Records one request's outcome: `Ok(tier)` (none for a DELETE) or the failure.
    fn record(&self, request: Request, outcome: Result<Option<String>, Failure>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let phase = Phase::from_u8(self.phase.load(Ordering::SeqCst));
        let mut inner = self.lock();
        match outcome {
            Ok(Some(tier)) => *inner.tiers.entry(format!("{request}-{tier}")).or_default() += 1,
            Ok(None) => {}
            Err(failure) => {
                *inner
                    .by_request
                    .entry((request, failure.class))
                    .or_default() += 1;
                *inner.failures.entry(failure.class).or_default() += 1;
                *inner.by_phase.entry(phase).or_default() += 1;
                *inner.by_stage.entry(failure.stage).or_default() += 1;
            }
        }
    }
}

/// What every caller shares.
struct Ctx {
    client: Client,
    stats: Stats,
    stop: AtomicBool,
    think_ms: (u64, u64),
    turns: &'static [Turn],
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
                let outcome = stt_turn(&ctx.client, &session).await;
                ctx.stats.record(Request::Stt, outcome.map(Some));
            } else {
                let text = PHRASES[(call as usize + turn) % PHRASES.len()];
                let outcome = ctx.client.tts(Some(&session), text).await;
                ctx.stats
                    .record(Request::Tts, outcome.map(|t| Some(t.tier)));
            }
        }
        let outcome = ctx.client.end_session(&session).await;
        ctx.stats.record(Request::Delete, outcome.map(|()| None));
    }
}

/// One STT turn on a fresh websocket of the session: connect, `connected`, the whole
/// utterance at once, `end`, events up to `turn_end`, close. `Ok(tier)` or the failure; a
/// turn that ends without a recognition result is a failure.
async fn stt_turn(client: &Client, session: &str) -> Result<String, Failure> {
    let mut stream = client.open_stt(session).await?;
    let result = stream.turn(STT_AUDIO, Pace::AllAtOnce, None).await;
    // Close politely, so the service parks the connection in the session.
    stream.close().await;
    result.map(|t| t.tier)
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
    let served = LoopbackServer::start(&state, config.shutdown_grace)
        .await
        .context("serving on 127.0.0.1")?;

    let ctx = Arc::new(Ctx {
        client: Client::new(&format!("http://{}", served.addr()), None, HANG)?,
        stats: Stats::default(),
        stop: AtomicBool::new(false),
        think_ms: scenario.think_ms(),
        turns: scenario.turns(),
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
        while let Some(joined) = callers.join_next().await {
            // A panicked caller lost whatever request it was making: an unexpected failure.
            if joined.is_err_and(|e| e.is_panic()) {
                ctx.stats
                    .record(Request::Call, Err(Failure::before(ErrorClass::Panicked)));
            }
        }
    })
    .await
    .is_ok();
    if !joined {
        for _ in 0..callers.len() {
            ctx.stats
                .record(Request::Call, Err(Failure::before(ErrorClass::Hang)));
        }
        callers.abort_all();
        while callers.join_next().await.is_some() {}
    }
    let recover = recovery.await.context("the recovery poller")?;

    let before_shutdown = state.snapshots();
    served
        .stop(SHUTDOWN_LIMIT)
        .await
        .context("stopping the service")?;
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
        let by_request: BTreeMap<String, u64> = observed
            .by_request
            .iter()
            .map(|((request, class), n)| (format!("{request} {class}"), *n))
            .collect();
        notes.push(format!("failures by request: {}", fmt_classes(&by_request)));
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
        before_output: observed
            .by_stage
            .get(&Stage::BeforeOutput)
            .copied()
            .unwrap_or(0),
        after_output: observed
            .by_stage
            .get(&Stage::AfterOutput)
            .copied()
            .unwrap_or(0),
        budget: scenario.budget(),
        faults_fired: counters.faults_injected,
        baseline_failures: observed
            .by_phase
            .get(&Phase::Baseline)
            .copied()
            .unwrap_or(0),
        recover,
        leaked: pool_leak + counters.connections_open,
        fault_from_start: scenario.fault_from_start(),
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 429-storm row: 120 requests, 10 faults fired, every failure before output unless
    /// `cuts` says otherwise.
    fn row(by_class: &[(ErrorClass, u64)], cuts: u64, recover: Option<u64>, leaked: u64) -> Row {
        let by_class: BTreeMap<ErrorClass, u64> = by_class.iter().copied().collect();
        let failed = by_class.values().sum();
        Row {
            scenario: "429-storm",
            requests: 120,
            failed,
            by_class,
            before_output: failed - cuts,
            after_output: cuts,
            budget: Scenario::Storm429.budget(),
            faults_fired: 10,
            baseline_failures: 0,
            recover: recover.map(Duration::from_millis),
            leaked,
            fault_from_start: false,
            notes: Vec::new(),
        }
    }

    #[test]
    fn problems_fail_the_row_but_failures_within_budget_do_not() {
        assert!(
            row(&[(ErrorClass::Throttled, 7)], 0, Some(10), 0)
                .problems()
                .is_empty()
        );
        assert_eq!(
            row(&[(ErrorClass::Hang, 1)], 0, Some(10), 0)
                .problems()
                .len(),
            1
        );
        assert_eq!(row(&[], 0, None, 2).problems().len(), 2);
        assert_eq!(
            row(&[(ErrorClass::UnexpectedStatus(500), 1)], 0, Some(1), 0)
                .problems()
                .len(),
            1
        );
        assert_eq!(
            row(&[(ErrorClass::Panicked, 1)], 0, Some(1), 0)
                .problems()
                .len(),
            1
        );
        let mut early = row(&[(ErrorClass::Unavailable, 1)], 0, Some(1), 0);
        early.baseline_failures = 1;
        assert_eq!(early.problems().len(), 1);
    }

    #[test]
    fn failures_over_budget_fail_the_row() {
        // One failure per fault fired is the storm's budget: 11 of 10 is over it.
        let over = row(&[(ErrorClass::Throttled, 11)], 0, Some(1), 0);
        let problems = over.problems();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("before the first output")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("in all")),
            "{problems:?}"
        );
        // A storm never cuts a stream in progress: its budget for cuts is zero.
        let cut = row(&[(ErrorClass::StreamCut, 1)], 1, Some(1), 0);
        assert_eq!(cut.problems().len(), 1, "{:?}", cut.problems());
        // Where the service promises transparency, a single failure fails the row.
        let mut transparent = row(&[(ErrorClass::NoResult, 1)], 0, Some(1), 0);
        transparent.budget = Scenario::TokenExpiry.budget();
        assert_eq!(
            transparent.problems().len(),
            2,
            "{:?}",
            transparent.problems()
        );
    }

    #[test]
    fn every_scenario_has_an_explicit_budget() {
        assert_eq!(
            Scenario::TokenExpiry.budget(),
            Budget::new(Limit::Zero, Limit::Zero, Limit::Zero)
        );
        assert_eq!(Limit::PerFault.allowed(500, 12), 12);
        assert_eq!(Limit::PerCaller.allowed(500, 12), CALLERS as u64);
        assert_eq!(Limit::Share(1).allowed(250, 12), 2);
        for scenario in Scenario::ALL {
            // A zero total with a non-zero part would be a contradiction.
            let b = scenario.budget();
            if b.total == Limit::Zero {
                assert_eq!(
                    (b.before_output, b.after_output),
                    (Limit::Zero, Limit::Zero)
                );
            }
        }
    }

    #[test]
    fn table_and_machine_lines() {
        let rows = [
            row(
                &[(ErrorClass::Throttled, 7), (ErrorClass::Unavailable, 2)],
                0,
                Some(1234),
                0,
            ),
            row(&[], 0, None, 0),
        ];
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("scenario"), "{table}");
        assert!(
            lines[2].contains("429-throttled 7, 503-unavailable 2"),
            "{table}"
        );
        assert!(lines[2].contains(" 10/0/10 "), "{table}");
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
        assert!(machine.contains(&"faults.429-storm.cut_after_output: 0".to_owned()));
        assert_eq!(fmt_classes::<String>(&BTreeMap::new()), "-");
    }
}
