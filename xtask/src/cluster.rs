//! `cargo xtask cluster`: several replicas of the service behind HAProxy, on this machine,
//! with per-call affinity on `X-Session-Id`, under load; then a rolling restart and a
//! scale-out under the same load.
//!
//! The replicas are the real `speech-pool` binary (separate processes, so that a SIGTERM is
//! a real SIGTERM), each with the mock backend and its realistic latencies (400 ms cold
//! connect), the backend `cargo xtask load` uses by default. HAProxy runs the very
//! `deploy/haproxy.cfg` the README offers, its addresses set through the environment
//! variables the file reads; a fourth replica joins through the admin socket, as the file's
//! comments tell an operator to do.
//!
//! Calls are those of `cargo xtask load` (Poisson arrivals; per turn an STT utterance on the
//! call's stream, then a TTS reply; `DELETE` at the end), made through the same
//! [`Client`], which sends `X-Session-Id` on every request. HAProxy names the replica that
//! served each response (`X-Speech-Pool-Replica`), so every turn is attributed to a
//! replica and a call that changes replica is seen to.
//!
//! Four runs, each with the same load:
//! 1. **single**: one replica, no load balancer: the DEDICATED share to match;
//! 2. **cluster**: N replicas behind HAProxy: per replica and overall calls, turns, tier
//!    shares, errors, cold share;
//! 3. **rolling restart**: one replica at a time is put in DRAIN then MAINT through the
//!    admin socket, sent SIGTERM, started again, put back once its `/readyz` answers 200,
//!    and counted back in once HAProxy's own check agrees; then the next;
//! 4. **scale-out**: a replica N+1 joins with weight 0 while it warms and gets its weight
//!    once ready.
//!
//! A call "remapped" by a step is one whose consecutive TTS turns straddle the step's
//! window and were served by different replicas, or by the restarted replica's old and new
//! process (the same name, but its connection there is gone); a call that moves away and
//! back counts once, and is reported apart. Such a call continues where HAProxy sends
//! it; its first turn there must not fail (it is WARM, or COLD if that replica's warm set
//! happens to be empty). With `deploy/haproxy.cfg`'s stick table a call moves only when its
//! replica stops serving it (in MAINT, or answering 503 while it drains, HAProxy sends the
//! request elsewhere and the call then stays there), never back when the replica returns,
//! and not at all at scale-out: the new replica takes new calls only. A restarted replica,
//! like the joining one, must serve no turn before its `/readyz` answered 200. An STT stream is a websocket pinned to its replica: when that
//! replica drains it closes the stream between turns, and the caller opens a new one
//! (through HAProxy, so on another replica) and says the turn again; those reconnects are
//! counted and reported, not hidden.
//!
//! Goals (the issue's): 0 errors; DEDICATED share within 1 point of the single replica;
//! 0 failed calls during the rolling restart and the scale-out; remapped per restart step
//! at most 1/N + 5 %, at scale-out at most 1/(N+1) + 5 %; no turn served by the joining
//! replica before it was ready. Machine lines `cluster.*`; exits non-zero when a goal is
//! missed.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ErrorClass, Failure, Pace, Request, Stage};
use crate::load::call::{CallPlan, REQUEST_TIMEOUT};
use crate::load::stats::{Kind, Stats};

/// How long a replica may take to answer `/readyz` 200 after it starts.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long a replica may take to exit after SIGTERM: its drain window plus margin.
const EXIT_LIMIT: Duration = Duration::from_secs(20);
/// The replicas' drain window (`SHUTDOWN_GRACE`), as in the Kubernetes manifests.
const SHUTDOWN_GRACE_S: &str = "10";
/// The backend in `deploy/haproxy.cfg`.
const BACKEND: &str = "speech_pool";
/// Weight of every server in `deploy/haproxy.cfg` (`default-server ... weight 100`).
const WEIGHT: u32 = 100;

/// `cargo xtask cluster` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Short run (rate 8/s, 10 s phases, 3 turns, 300 ms think time): under two minutes.
    #[arg(long)]
    quick: bool,
    /// Replicas behind HAProxy (2 to 9; the scale-out adds one more).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Call arrival rate, calls per second (default 10; 8 with --quick).
    #[arg(long, value_name = "CALLS_PER_SEC")]
    rate: Option<f64>,
    /// Length of the single-replica and the cluster run, seconds (default 40; 10 with
    /// --quick). The restart and scale-out runs last as long as their steps.
    #[arg(long, value_name = "SECS")]
    phase_secs: Option<f64>,
    /// Turns per call (default 4; 3 with --quick).
    #[arg(long, value_name = "N")]
    turns: Option<u32>,
    /// Think time between turns, milliseconds (default 1000; 300 with --quick).
    #[arg(long, value_name = "N")]
    think_ms: Option<u64>,
    /// Length of each caller utterance, milliseconds.
    #[arg(long, value_name = "N", default_value_t = 600)]
    utterance_ms: u64,
    /// The HAProxy executable.
    #[arg(long, value_name = "PATH", default_value = "haproxy")]
    haproxy: PathBuf,
}

/// The resolved settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub replicas: usize,
    pub rate: f64,
    pub phase: Duration,
    pub call: CallPlan,
}

impl Plan {
    fn from_args(args: &Args) -> anyhow::Result<Self> {
        let (rate, phase, turns, think) = if args.quick {
            (8.0, 10.0, 3, 300)
        } else {
            (10.0, 40.0, 4, 1000)
        };
        let plan = Self {
            replicas: args.replicas,
            rate: args.rate.unwrap_or(rate),
            phase: Duration::from_secs_f64(args.phase_secs.unwrap_or(phase)),
            call: CallPlan {
                turns: args.turns.unwrap_or(turns),
                think: Duration::from_millis(args.think_ms.unwrap_or(think)),
                stt: true,
                utterance: Duration::from_millis(args.utterance_ms),
            },
        };
        if !(2..=9).contains(&plan.replicas) {
            bail!("--replicas must be in 2..=9, got {}", plan.replicas);
        }
        if !(plan.rate.is_finite() && plan.rate > 0.0 && plan.rate <= 200.0) {
            bail!("--rate must be in (0, 200], got {}", plan.rate);
        }
        if !(1.0..=3600.0).contains(&plan.phase.as_secs_f64()) {
            bail!("--phase-secs must be in 1..=3600");
        }
        if !(2..=100).contains(&plan.call.turns) {
            bail!(
                "--turns must be in 2..=100 (a call needs two turns to show affinity), got {}",
                plan.call.turns
            );
        }
        if !(100..=10_000).contains(&args.utterance_ms) {
            bail!("--utterance-ms must be in 100..=10000");
        }
        Ok(plan)
    }

    /// Each replica's warm target: as `cargo xtask load` sizes it for the whole rate, so
    /// the single replica and every cluster replica run with the same settings.
    fn warm(&self) -> usize {
        ((self.rate.ceil() as usize) + 2).clamp(3, 256)
    }
}

/// Entry point.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let plan = Plan::from_args(args)?;
    let haproxy = ensure_haproxy(&args.haproxy)?;
    let binary = service_binary()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let outcome = runtime.block_on(run_async(plan, &haproxy, &binary))?;
    outcome.print();
    let missed = outcome.missed_goals(plan.replicas);
    if !missed.is_empty() {
        bail!("goals missed: {}", missed.join("; "));
    }
    println!("cluster: every goal met");
    Ok(())
}

/// HAProxy, installed from Debian when it is missing and we may (root): the proof needs
/// the real load balancer, so without one this fails rather than skips.
fn ensure_haproxy(requested: &Path) -> anyhow::Result<PathBuf> {
    let works = |p: &Path| {
        Command::new(p)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(requested) {
        return Ok(requested.to_path_buf());
    }
    if requested == Path::new("haproxy") {
        eprintln!("cluster: haproxy not found; installing the Debian package");
        let installed = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy",
            ])
            .status()
            .is_ok_and(|s| s.success());
        if installed && works(requested) {
            return Ok(requested.to_path_buf());
        }
    }
    bail!(
        "HAProxy is required (`{}` does not run): install the Debian package `haproxy` \
         (apt-get install -y haproxy) or pass --haproxy PATH",
        requested.display()
    )
}

/// The `speech-pool` binary of this build profile, built when it is missing.
fn service_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating xtask")?;
    // xtask itself lives in target/<profile>/; a test binary in target/<profile>/deps/.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("speech-pool"))
        .collect();
    let release = !cfg!(debug_assertions);
    let mut build = crate::cargo();
    // With xtask selected too, so that cargo resolves features exactly as for
    // `cargo build --release -p xtask -p service` (xtask turns on the service's
    // `test-support` and more tokio features): after that build this one is a no-op. With
    // `-p service` alone cargo would build a second variant of the service and of every
    // crate it shares with xtask, minutes on a small machine, on the first run after each
    // change.
    build.args([
        "build",
        "--quiet",
        "-p",
        "xtask",
        "-p",
        "service",
        "--bin",
        "speech-pool",
    ]);
    if release {
        build.arg("--release");
    }
    // Always ask cargo: it rebuilds a stale binary and is a no-op otherwise.
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p service --bin speech-pool failed");
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| format!("no speech-pool binary next to {}", exe.display()))
}

/// A free port on 127.0.0.1 (bound then released: the replica binds it right after).
fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

/// One `speech-pool` process.
struct Replica {
    name: String,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Replica {
    fn spawn(
        binary: &Path,
        name: &str,
        addr: SocketAddr,
        warm: usize,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut replica = Self {
            name: name.to_owned(),
            addr,
            child: None,
        };
        replica.start(binary, warm, dir)?;
        Ok(replica)
    }

    fn start(&mut self, binary: &Path, warm: usize, dir: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", self.name)))?;
        let child = Command::new(binary)
            // Nothing from our environment: an AZURE_SPEECH_KEY there must not turn the
            // replicas into Azure clients.
            .env_clear()
            .env("LISTEN_ADDR", self.addr.to_string())
            .env("SPEECH_BACKEND", "mock")
            .env("MOCK_PROFILE", "realistic")
            .env("WARM_POOL_TTS_SIZE", warm.to_string())
            .env("WARM_POOL_STT_SIZE", warm.to_string())
            .env("POOL_TTS_MAX_SIZE", "1024")
            .env("POOL_STT_MAX_SIZE", "1024")
            .env("POOL_ACQUIRE_TIMEOUT", "10")
            .env("SHUTDOWN_GRACE", SHUTDOWN_GRACE_S)
            .env("LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM (through kill(1): the process is ours, addressed by its id), then waits for
    /// it to exit; its exit status must be success.
    async fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed", child.id());
        }
        let deadline = Instant::now() + EXIT_LIMIT;
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!("{} exited with {status} after SIGTERM", self.name);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {EXIT_LIMIT:?} of SIGTERM",
                    self.name
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/readyz` answers 200; returns when it first did.
    async fn wait_ready(&self, http: &reqwest::Client) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + READY_LIMIT;
        let url = format!("http://{}/readyz", self.addr);
        loop {
            let ok = http
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("{} was not ready within {READY_LIMIT:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// HAProxy running `deploy/haproxy.cfg`.
struct Haproxy {
    child: Child,
    socket: PathBuf,
    bind: SocketAddr,
}

impl Haproxy {
    fn start(binary: &Path, replicas: &[Replica], dir: &Path) -> anyhow::Result<Self> {
        let bind = free_addr()?;
        let socket = dir.join("admin.sock");
        let cfg = crate::workspace_root().join("deploy/haproxy.cfg");
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        let mut command = Command::new(binary);
        command
            .arg("-f")
            .arg(&cfg)
            // Foreground, no daemon: the process is ours to stop.
            .arg("-db")
            .env("SPEECH_POOL_LB_BIND", bind.to_string())
            .env("SPEECH_POOL_HAPROXY_SOCKET", &socket);
        for (i, r) in replicas.iter().enumerate() {
            command.env(format!("SPEECH_POOL_REPLICA_{}", i + 1), r.addr.to_string());
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            socket,
            bind,
        })
    }

    /// One command on the admin socket; its answer.
    async fn admin(&self, command: &str) -> anyhow::Result<String> {
        let mut stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .context("the admin socket did not answer")??;
        Ok(answer)
    }

    /// An admin command that must succeed (HAProxy answers nothing, or a confirmation).
    async fn command(&self, command: &str) -> anyhow::Result<()> {
        let answer = self.admin(command).await?;
        let lower = answer.to_ascii_lowercase();
        if lower.contains("error") || lower.contains("unknown") || lower.contains("not ") {
            bail!("haproxy refused `{command}`: {}", answer.trim());
        }
        Ok(())
    }

    /// Per server: (operational state, admin state) from `show servers state`; operational
    /// 2 is running (its checks pass).
    async fn states(&self) -> anyhow::Result<HashMap<String, (u32, u32)>> {
        let answer = self.admin(&format!("show servers state {BACKEND}")).await?;
        Ok(answer
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.get(3)?.to_string(),
                    (f.get(5)?.parse().ok()?, f.get(6)?.parse().ok()?),
                ))
            })
            .collect())
    }

    /// Waits until HAProxy's own health check says `server` is up (or down).
    async fn wait_server(&self, server: &str, up: bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            let running = self.states().await?.get(server).map(|s| s.0 == 2);
            if running == Some(up) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "haproxy never saw {server} {}",
                    if up { "up" } else { "down" }
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One turn as the caller saw it.
#[derive(Debug, Clone)]
struct TurnRecord {
    at: Instant,
    replica: String,
    tier: String,
    /// A TTS turn: a routing decision of its own (an STT turn rides its stream).
    tts: bool,
}

/// What one call did.
#[derive(Debug, Clone, Default)]
struct CallRecord {
    turns: Vec<TurnRecord>,
    errors: u64,
    /// STT streams reopened because their replica went away between turns.
    reconnects: u64,
}

/// Everything one run measured.
#[derive(Debug, Default)]
struct RunRecord {
    calls: Mutex<Vec<CallRecord>>,
}

/// Runs calls at `rate` until `stop` is cancelled, then waits for them to end.
async fn drive(
    client: Client,
    plan: Plan,
    stop: CancellationToken,
) -> (Arc<RunRecord>, Arc<Stats>) {
    let record = Arc::new(RunRecord::default());
    let stats = Arc::new(Stats::default());
    let mut calls = JoinSet::new();
    let mut rng = fastrand::Rng::new();
    let mut next = tokio::time::Instant::now();
    let pid = std::process::id();
    let run_id = fastrand::u32(..);
    let mut launched = 0u64;
    loop {
        next += Duration::from_secs_f64(-(1.0 - rng.f64()).ln() / plan.rate);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(next) => {}
        }
        while let Some(joined) = calls.try_join_next() {
            stats.call_task_ended(joined);
        }
        launched += 1;
        stats.started.fetch_add(1, Ordering::Relaxed);
        let (client, stats, record) = (client.clone(), stats.clone(), record.clone());
        let id = format!("cluster-{pid}-{run_id}-{launched}");
        calls.spawn(async move {
            let call = call(&client, &id, plan.call, &stats).await;
            if let Ok(mut all) = record.calls.lock() {
                all.push(call);
            }
            stats.finished.fetch_add(1, Ordering::Relaxed);
        });
    }
    crate::load::drain_calls(&mut calls, &stats).await;
    (record, stats)
}

/// Whether an STT failure is one a caller answers by opening a new stream and saying the
/// turn again: the stream was ended (its replica is draining) before any result.
fn stream_went_away(failure: Failure) -> bool {
    failure.stage == Stage::BeforeOutput
        && matches!(
            failure.class,
            ErrorClass::StreamCut
                | ErrorClass::Transport
                | ErrorClass::NoResult
                | ErrorClass::Draining
        )
}

/// One call, as `load`'s, recording the replica of every turn.
async fn call(client: &Client, id: &str, plan: CallPlan, stats: &Stats) -> CallRecord {
    let mut record = CallRecord::default();
    let mut stream = None;
    for turn in 0..plan.turns {
        if turn > 0 {
            tokio::time::sleep(plan.think).await;
        }
        // STT: the stream is opened on the first turn and reopened once per turn when its
        // replica ended it.
        let mut attempts = 0;
        loop {
            if stream.is_none() {
                match client.open_stt(id).await {
                    Ok(s) => stream = Some(s),
                    Err(f) => {
                        stats.error(Request::Stt, f.class);
                        record.errors += 1;
                        break;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { break };
            let at = Instant::now();
            match s.turn(plan.utterance, Pace::RealTime, None).await {
                Ok(t) => {
                    stats.turn(Kind::Stt, &t.tier, t.first_result, t.acquire_ms);
                    record.turns.push(TurnRecord {
                        at,
                        replica: s.replica.clone().unwrap_or_default(),
                        tier: t.tier,
                        tts: false,
                    });
                    break;
                }
                Err(f) if attempts == 0 && stream_went_away(f) => {
                    attempts += 1;
                    record.reconnects += 1;
                    if let Some(old) = stream.take() {
                        old.close().await;
                    }
                }
                Err(f) => {
                    stats.error(Request::Stt, f.class);
                    record.errors += 1;
                    stream = None;
                    break;
                }
            }
        }
        let at = Instant::now();
        match client.tts(Some(id), "Let me check that for you.").await {
            Ok(t) => {
                stats.turn(Kind::Tts, &t.tier, t.first_audio, t.acquire_ms);
                record.turns.push(TurnRecord {
                    at,
                    replica: t.replica.unwrap_or_default(),
                    tier: t.tier,
                    tts: true,
                });
            }
            Err(f) => {
                stats.error(Request::Tts, f.class);
                record.errors += 1;
            }
        }
    }
    if let Some(s) = stream {
        s.close().await;
    }
    if let Err(f) = client.end_session(id).await {
        stats.error(Request::Delete, f.class);
        record.errors += 1;
    }
    record
}

/// Tier counts of a set of turns.
#[derive(Debug, Default, Clone)]
struct Tiers {
    calls: u64,
    turns: u64,
    by_tier: BTreeMap<String, u64>,
    errors: u64,
}

impl Tiers {
    fn share(&self, tier: &str) -> f64 {
        if self.turns == 0 {
            return 0.0;
        }
        self.by_tier.get(tier).copied().unwrap_or(0) as f64 / self.turns as f64
    }

    fn line(&self, name: &str) -> String {
        format!(
            "{name:<10} {:>6} {:>7} {:>10.1} {:>7.1} {:>7.2} {:>7}",
            self.calls,
            self.turns,
            self.share("dedicated") * 100.0,
            self.share("warm") * 100.0,
            self.share("cold") * 100.0,
            self.errors
        )
    }
}

/// Per replica (by the replica of a call's first turn; its turns by their own replica)
/// and overall.
fn tally(calls: &[CallRecord]) -> (BTreeMap<String, Tiers>, Tiers) {
    let mut per: BTreeMap<String, Tiers> = BTreeMap::new();
    let mut all = Tiers::default();
    for c in calls {
        all.calls += 1;
        all.errors += c.errors;
        let home = c
            .turns
            .first()
            .map_or_else(|| "(none)".to_owned(), |t| label(&t.replica));
        let entry = per.entry(home).or_default();
        entry.calls += 1;
        entry.errors += c.errors;
        for t in &c.turns {
            all.turns += 1;
            *all.by_tier.entry(t.tier.clone()).or_default() += 1;
            let r = per.entry(label(&t.replica)).or_default();
            r.turns += 1;
            *r.by_tier.entry(t.tier.clone()).or_default() += 1;
        }
    }
    (per, all)
}

fn label(replica: &str) -> String {
    if replica.is_empty() {
        "direct".to_owned()
    } else {
        replica.to_owned()
    }
}

/// Calls moved by a step in `[from, to]`. A call is live across the step when two of its
/// consecutive TTS turns (each a routing decision) enclose part of the window; it moved when
/// such a pair was served by different replicas, or by the restarted replica before its
/// process exited and after the new one started (same name, but the connection the call
/// held there is gone). Also: calls that moved more than once (away and back), the calls
/// in progress when the step began (a TTS turn before `from` and one after) and how many of
/// those moved, and the tier of the first turn after each move.
#[derive(Debug, Default, Clone)]
struct Remap {
    live: u64,
    moved: u64,
    moved_twice: u64,
    in_progress: u64,
    in_progress_moved: u64,
    moved_turn_tiers: BTreeMap<String, u64>,
}

impl Remap {
    fn fraction(&self) -> f64 {
        if self.live == 0 {
            0.0
        } else {
            self.moved as f64 / self.live as f64
        }
    }

    fn in_progress_fraction(&self) -> f64 {
        if self.in_progress == 0 {
            0.0
        } else {
            self.in_progress_moved as f64 / self.in_progress as f64
        }
    }
}

/// A replica's process restart: its name, when the old process had exited, when the new
/// one was started.
#[derive(Debug, Clone)]
struct Restart {
    name: String,
    exited: Instant,
    started: Instant,
    /// When the new process's `/readyz` first answered 200.
    ready: Instant,
}

fn remap(calls: &[CallRecord], from: Instant, to: Instant, restart: Option<&Restart>) -> Remap {
    let mut out = Remap::default();
    for c in calls {
        let tts: Vec<&TurnRecord> = c.turns.iter().filter(|t| t.tts).collect();
        let mut live = false;
        let mut in_progress = false;
        let mut moves = 0u64;
        for pair in tts.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.at <= to && b.at >= from {
                live = true;
                in_progress |= a.at < from;
                let restarted_under = restart.is_some_and(|r| {
                    a.replica == r.name
                        && b.replica == r.name
                        && a.at < r.exited
                        && b.at > r.started
                });
                if a.replica != b.replica || restarted_under {
                    moves += 1;
                    *out.moved_turn_tiers.entry(b.tier.clone()).or_default() += 1;
                }
            }
        }
        out.live += u64::from(live);
        out.moved += u64::from(moves > 0);
        out.moved_twice += u64::from(moves > 1);
        out.in_progress += u64::from(in_progress);
        out.in_progress_moved += u64::from(in_progress && moves > 0);
    }
    out
}

/// What the four runs measured.
#[derive(Debug, Default)]
struct Outcome {
    single: Tiers,
    cluster: Tiers,
    cluster_per: BTreeMap<String, Tiers>,
    cluster_errors: u64,
    restart_failed_calls: u64,
    restart_steps: Vec<(String, Remap, Duration)>,
    restart_reconnects: u64,
    /// Turns a restarted replica's new process served before its `/readyz` answered 200.
    restart_turns_before_ready: u64,
    restart: Tiers,
    scale_failed_calls: u64,
    scale: Remap,
    scale_reconnects: u64,
    scale_turns_before_ready: u64,
    scale_joined_turns: u64,
}

impl Outcome {
    fn dedicated_delta_points(&self) -> f64 {
        (self.cluster.share("dedicated") - self.single.share("dedicated")).abs() * 100.0
    }

    fn restart_max(&self) -> f64 {
        self.restart_steps
            .iter()
            .map(|(_, r, _)| r.fraction())
            .fold(0.0, f64::max)
    }

    fn print(&self) {
        println!();
        println!(
            "{:<10} {:>6} {:>7} {:>10} {:>7} {:>7} {:>7}",
            "replica", "calls", "turns", "dedicated%", "warm%", "cold%", "errors"
        );
        println!("{}", self.single.line("single"));
        println!("-- cluster, per replica (calls by their first turn's replica):");
        for (name, t) in &self.cluster_per {
            println!("{}", t.line(name));
        }
        println!("{}", self.cluster.line("overall"));
        println!(
            "DEDICATED share: single {:.2} %, cluster {:.2} %",
            self.single.share("dedicated") * 100.0,
            self.cluster.share("dedicated") * 100.0
        );
        println!(
            "-- rolling restart ({} calls, {} turns):",
            self.restart.calls, self.restart.turns
        );
        for (name, r, took) in &self.restart_steps {
            println!(
                "  {name}: drained, SIGTERM, back and ready in {:.1} s; {} of {} live calls moved ({:.1} %; {} of them twice); \
                 of the {} in progress when the step began, {} moved ({:.1} %); first turns after a move: {:?}",
                took.as_secs_f64(),
                r.moved,
                r.live,
                r.fraction() * 100.0,
                r.moved_twice,
                r.in_progress,
                r.in_progress_moved,
                r.in_progress_fraction() * 100.0,
                r.moved_turn_tiers
            );
        }
        println!(
            "  STT streams reopened after their replica ended them: {}; turns served by a \
             restarted replica before it was ready: {}",
            self.restart_reconnects, self.restart_turns_before_ready
        );
        println!(
            "-- scale-out: {} of {} live calls moved ({:.1} %); first turns after a move: {:?}; \
             the new replica served {} turns, {} of them before it was ready; STT reopened {}",
            self.scale.moved,
            self.scale.live,
            self.scale.fraction() * 100.0,
            self.scale.moved_turn_tiers,
            self.scale_joined_turns,
            self.scale_turns_before_ready,
            self.scale_reconnects
        );
        println!();
        println!("cluster.errors: {}", self.cluster_errors);
        println!(
            "cluster.dedicated_share_delta_points: {:.2}",
            self.dedicated_delta_points()
        );
        println!(
            "cluster.rolling_restart.failed_calls: {}",
            self.restart_failed_calls
        );
        println!(
            "cluster.rolling_restart.remapped_fraction_max: {:.3}",
            self.restart_max()
        );
        println!(
            "cluster.rolling_restart.turns_before_ready: {}",
            self.restart_turns_before_ready
        );
        println!(
            "cluster.scale_out.failed_calls: {}",
            self.scale_failed_calls
        );
        println!(
            "cluster.scale_out.remapped_fraction: {:.3}",
            self.scale.fraction()
        );
        println!(
            "cluster.scale_out.turns_before_ready: {}",
            self.scale_turns_before_ready
        );
    }

    fn missed_goals(&self, replicas: usize) -> Vec<String> {
        let mut missed = Vec::new();
        if self.cluster_errors > 0 {
            missed.push(format!("{} errors in the cluster run", self.cluster_errors));
        }
        if self.single.errors > 0 {
            missed.push(format!(
                "{} errors in the single-replica run",
                self.single.errors
            ));
        }
        if self.dedicated_delta_points() > 1.0 {
            missed.push(format!(
                "DEDICATED share {:.2} points from the single replica (goal <= 1)",
                self.dedicated_delta_points()
            ));
        }
        if self.restart_failed_calls > 0 {
            missed.push(format!(
                "{} failed calls during the rolling restart",
                self.restart_failed_calls
            ));
        }
        let restart_goal = 1.0 / replicas as f64 + 0.05;
        if self.restart_max() > restart_goal {
            missed.push(format!(
                "a restart step moved {:.1} % of live calls (goal <= {:.1} %)",
                self.restart_max() * 100.0,
                restart_goal * 100.0
            ));
        }
        if self.restart_turns_before_ready > 0 {
            missed.push(format!(
                "restarted replicas served {} turns before they were ready",
                self.restart_turns_before_ready
            ));
        }
        if self.scale_failed_calls > 0 {
            missed.push(format!(
                "{} failed calls during the scale-out",
                self.scale_failed_calls
            ));
        }
        let scale_goal = 1.0 / (replicas + 1) as f64 + 0.05;
        if self.scale.fraction() > scale_goal {
            missed.push(format!(
                "the scale-out moved {:.1} % of live calls (goal <= {:.1} %)",
                self.scale.fraction() * 100.0,
                scale_goal * 100.0
            ));
        }
        if self.scale_turns_before_ready > 0 {
            missed.push(format!(
                "the new replica served {} turns before it was ready",
                self.scale_turns_before_ready
            ));
        }
        if self.scale_joined_turns == 0 {
            missed.push("the new replica never took traffic".to_owned());
        }
        for (what, r) in [
            (
                "restart",
                self.restart_steps.iter().map(|s| &s.1).collect::<Vec<_>>(),
            ),
            ("scale-out", vec![&self.scale]),
        ] {
            if r.iter().all(|r| r.live == 0) {
                missed.push(format!(
                    "no call was live across the {what}: the load is too small to tell"
                ));
            }
        }
        missed
    }
}

fn snapshot(record: &RunRecord) -> Vec<CallRecord> {
    record.calls.lock().map(|c| c.clone()).unwrap_or_default()
}

async fn run_async(plan: Plan, haproxy_bin: &Path, binary: &Path) -> anyhow::Result<Outcome> {
    let dir = std::env::temp_dir().join(format!("xtask-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!(
        "cluster: {} replicas (mock backend, realistic latencies, warm target {} per pool), \
         arrivals {:.1}/s, {} turns per call (STT {} ms then TTS), {} ms think time; logs in {}",
        plan.replicas,
        plan.warm(),
        plan.rate,
        plan.call.turns,
        plan.call.utterance.as_millis(),
        plan.call.think.as_millis(),
        dir.display()
    );
    let result = phases(plan, haproxy_bin, binary, &dir).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn phases(
    plan: Plan,
    haproxy_bin: &Path,
    binary: &Path,
    dir: &Path,
) -> anyhow::Result<Outcome> {
    // reqwest is built without a crypto provider of its own; the process installs ring once.
    speech_azure::install_crypto_provider();
    let http = reqwest::Client::new();
    let warm = plan.warm();
    let mut out = Outcome::default();

    // 1. One replica, no load balancer.
    {
        let mut single = Replica::spawn(binary, "single", free_addr()?, warm, dir)?;
        single.wait_ready(&http).await?;
        eprintln!(
            "cluster: single replica ready; {:.0} s of load",
            plan.phase.as_secs_f64()
        );
        let client = Client::new(&format!("http://{}", single.addr), None, REQUEST_TIMEOUT)?;
        let (record, _) = timed(client, plan, plan.phase).await;
        out.single = tally(&snapshot(&record)).1;
        single.terminate().await?;
    }

    // 2. N replicas behind HAProxy.
    let mut replicas = Vec::new();
    for i in 1..=plan.replicas {
        replicas.push(Replica::spawn(
            binary,
            &format!("replica{i}"),
            free_addr()?,
            warm,
            dir,
        )?);
    }
    for r in &replicas {
        r.wait_ready(&http).await?;
    }
    // Started once every replica is ready: HAProxy counts a server up until a check fails.
    let lb = Haproxy::start(haproxy_bin, &replicas, dir)?;
    wait_for_socket(&lb).await?;
    for r in &replicas {
        lb.wait_server(&r.name, true).await?;
    }
    let base = format!("http://{}", lb.bind);
    eprintln!(
        "cluster: HAProxy at {base}; {:.0} s of load",
        plan.phase.as_secs_f64()
    );
    let client = Client::new(&base, None, REQUEST_TIMEOUT)?;
    let (record, stats) = timed(client.clone(), plan, plan.phase).await;
    let calls = snapshot(&record);
    (out.cluster_per, out.cluster) = tally(&calls);
    out.cluster_errors = stats.errors.load(Ordering::Relaxed);

    // 3. Rolling restart under load.
    let stop = CancellationToken::new();
    let load = tokio::spawn(drive(client.clone(), plan, stop.clone()));
    // Let calls get going on every replica before the first step.
    tokio::time::sleep(settle(plan)).await;
    let mut windows = Vec::new();
    for r in &mut replicas {
        let from = Instant::now();
        // As deploy/haproxy.cfg tells an operator: DRAIN (no new calls; an operator may
        // wait here for calls to end, this measures the worst case and does not), MAINT
        // (its calls' next requests go elsewhere, what is open on it finishes), SIGTERM.
        // In MAINT the restarted process takes nothing, not even its old calls' requests,
        // until it is ready and put back.
        lb.command(&format!("set server {BACKEND}/{} state drain", r.name))
            .await?;
        lb.command(&format!("set server {BACKEND}/{} state maint", r.name))
            .await?;
        r.terminate().await?;
        let exited = Instant::now();
        r.start(binary, warm, dir)?;
        let restart = Restart {
            name: r.name.clone(),
            exited,
            started: Instant::now(),
            ready: r.wait_ready(&http).await?,
        };
        lb.command(&format!("set server {BACKEND}/{} state ready", r.name))
            .await?;
        lb.wait_server(&r.name, true).await?;
        let to = Instant::now();
        eprintln!(
            "cluster: {} restarted in {:.1} s",
            r.name,
            (to - from).as_secs_f64()
        );
        windows.push((restart, from, to));
        tokio::time::sleep(settle(plan)).await;
    }
    stop.cancel();
    let (record, stats) = load.await.context("the restart load task")?;
    let calls = snapshot(&record);
    out.restart = tally(&calls).1;
    out.restart_failed_calls = calls.iter().filter(|c| c.errors > 0).count() as u64
        + stats
            .errors
            .load(Ordering::Relaxed)
            .saturating_sub(calls.iter().map(|c| c.errors).sum());
    out.restart_reconnects = calls.iter().map(|c| c.reconnects).sum();
    out.restart_turns_before_ready = windows
        .iter()
        .map(|(r, _, _)| {
            calls
                .iter()
                .flat_map(|c| &c.turns)
                .filter(|t| t.replica == r.name && t.at > r.started && t.at < r.ready)
                .count() as u64
        })
        .sum();
    out.restart_steps = windows
        .into_iter()
        .map(|(restart, from, to)| {
            let moved = remap(&calls, from, to, Some(&restart));
            (restart.name, moved, to - from)
        })
        .collect();

    // 4. Scale-out N -> N+1 under load.
    let name = format!("replica{}", plan.replicas + 1);
    let stop = CancellationToken::new();
    let load = tokio::spawn(drive(client.clone(), plan, stop.clone()));
    tokio::time::sleep(settle(plan)).await;
    let joining = Replica::spawn(binary, &name, free_addr()?, warm, dir)?;
    // Known to HAProxy at once, while it warms, with weight 0: HAProxy 2.6 counts a new
    // server up until its first check fails, so only the weight keeps requests off it
    // until it is ready.
    lb.command(&format!(
        "add server {BACKEND}/{name} {} check inter 1s fall 2 rise 2 weight 0",
        joining.addr
    ))
    .await?;
    lb.command(&format!("enable health {BACKEND}/{name}"))
        .await?;
    lb.command(&format!("enable server {BACKEND}/{name}"))
        .await?;
    let ready_at = joining.wait_ready(&http).await?;
    lb.wait_server(&name, true).await?;
    let joined_at = Instant::now();
    lb.command(&format!("set weight {BACKEND}/{name} {WEIGHT}"))
        .await?;
    eprintln!(
        "cluster: {name} ready after {:.1} s and given its weight",
        (joined_at - ready_at).as_secs_f64()
    );
    tokio::time::sleep(settle(plan) * 2).await;
    stop.cancel();
    let (record, stats) = load.await.context("the scale-out load task")?;
    let calls = snapshot(&record);
    out.scale_failed_calls = calls.iter().filter(|c| c.errors > 0).count() as u64
        + stats
            .errors
            .load(Ordering::Relaxed)
            .saturating_sub(calls.iter().map(|c| c.errors).sum());
    out.scale = remap(&calls, joined_at, joined_at, None);
    out.scale_reconnects = calls.iter().map(|c| c.reconnects).sum();
    let joined: Vec<&TurnRecord> = calls
        .iter()
        .flat_map(|c| &c.turns)
        .filter(|t| t.replica == name)
        .collect();
    out.scale_joined_turns = joined.len() as u64;
    out.scale_turns_before_ready = joined.iter().filter(|t| t.at < ready_at).count() as u64;

    drop(lb);
    let mut joining = joining;
    for r in replicas.iter_mut().chain(std::iter::once(&mut joining)) {
        r.terminate().await?;
    }
    Ok(out)
}

/// Calls at `plan.rate` for `window`, then drained.
async fn timed(client: Client, plan: Plan, window: Duration) -> (Arc<RunRecord>, Arc<Stats>) {
    let stop = CancellationToken::new();
    let load = tokio::spawn(drive(client, plan, stop.clone()));
    tokio::time::sleep(window).await;
    stop.cancel();
    // The driver does not panic (each call is its own task); if it did, the empty record
    // fails the goals rather than passing them.
    load.await.unwrap_or_default()
}

/// Time for calls to cross a step: one whole call.
fn settle(plan: Plan) -> Duration {
    (plan.call.think + plan.call.utterance + Duration::from_millis(300)) * plan.call.turns
}

async fn wait_for_socket(lb: &Haproxy) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lb.admin("show info").await.is_err() {
        if Instant::now() > deadline {
            bail!(
                "HAProxy's admin socket {} never answered",
                lb.socket.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(at: Instant, replica: &str, tier: &str) -> TurnRecord {
        TurnRecord {
            at,
            replica: replica.to_owned(),
            tier: tier.to_owned(),
            tts: true,
        }
    }

    #[test]
    fn remap_counts_only_calls_that_straddle_the_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let calls = vec![
            // Moved across the window.
            CallRecord {
                turns: vec![turn(t0, "r1", "warm"), turn(t0 + 3 * s, "r2", "warm")],
                ..Default::default()
            },
            // Live across it, not moved.
            CallRecord {
                turns: vec![turn(t0, "r2", "warm"), turn(t0 + 3 * s, "r2", "dedicated")],
                ..Default::default()
            },
            // Over before the window.
            CallRecord {
                turns: vec![turn(t0, "r1", "warm"), turn(t0 + s / 2, "r3", "warm")],
                ..Default::default()
            },
        ];
        let r = remap(&calls, t0 + s, t0 + 2 * s, None);
        assert_eq!((r.live, r.moved), (2, 1));
        assert_eq!(r.moved_turn_tiers.get("warm"), Some(&1));
        assert!((r.fraction() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn remap_counts_a_move_back_once_and_a_restart_under_the_call_as_a_move() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let restart = Restart {
            name: "r1".to_owned(),
            exited: t0 + 2 * s,
            started: t0 + 3 * s,
            ready: t0 + 3 * s,
        };
        let calls = vec![
            // Away while r1 restarts, then back: one call, moved twice.
            CallRecord {
                turns: vec![
                    turn(t0, "r1", "dedicated"),
                    turn(t0 + 2 * s, "r2", "warm"),
                    turn(t0 + 5 * s, "r1", "warm"),
                ],
                ..Default::default()
            },
            // Stayed on r1 by name, but its process restarted between the turns.
            CallRecord {
                turns: vec![turn(t0, "r1", "dedicated"), turn(t0 + 4 * s, "r1", "warm")],
                ..Default::default()
            },
            // Started during the step on r3 and stayed there.
            CallRecord {
                turns: vec![
                    turn(t0 + 2 * s, "r3", "warm"),
                    turn(t0 + 3 * s, "r3", "dedicated"),
                ],
                ..Default::default()
            },
        ];
        let r = remap(&calls, t0 + s, t0 + 4 * s, Some(&restart));
        assert_eq!((r.live, r.moved, r.moved_twice), (3, 2, 1));
        assert_eq!((r.in_progress, r.in_progress_moved), (2, 2));
        assert_eq!(r.moved_turn_tiers.get("warm"), Some(&3));
    }

    /// The whole command, small: 3 replicas and HAProxy, a rolling restart and a
    /// scale-out. Fails (does not skip) without HAProxy. Asserts the goals that do not
    /// depend on sample size (no error, no failed call, no turn on a replica before it was
    /// ready, the new replica used, every moved call's next turn served); the remapped
    /// fractions are ratios over a few dozen calls here, too noisy for a pass/fail line,
    /// and are checked by the full command only.
    #[test]
    fn a_short_cluster_run_keeps_every_call() {
        let args = Args {
            quick: true,
            replicas: 3,
            rate: Some(6.0),
            phase_secs: Some(4.0),
            turns: Some(3),
            think_ms: Some(200),
            utterance_ms: 300,
            haproxy: PathBuf::from("haproxy"),
        };
        let plan = Plan::from_args(&args).unwrap();
        let haproxy = ensure_haproxy(&args.haproxy).expect("HAProxy is required");
        let binary = service_binary().expect("the speech-pool binary");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let out = runtime
            .block_on(run_async(plan, &haproxy, &binary))
            .expect("the cluster ran");
        out.print();
        assert!(out.single.calls > 0 && out.cluster.calls > 0);
        assert_eq!(out.single.errors, 0);
        assert_eq!(out.cluster_errors, 0);
        assert_eq!(out.restart_failed_calls, 0);
        assert_eq!(out.scale_failed_calls, 0);
        assert_eq!(out.scale_turns_before_ready, 0);
        assert_eq!(out.restart_turns_before_ready, 0);
        assert!(
            out.scale_joined_turns > 0,
            "the new replica took no traffic"
        );
        assert_eq!(out.restart_steps.len(), 3);
        assert!(out.cluster_per.len() >= 2, "{:?}", out.cluster_per.keys());
    }
}
