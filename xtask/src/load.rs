//! `cargo xtask load`: simulated voice calls against the service.
//!
//! Calls arrive as a Poisson process (exponential inter-arrival times) at `--rate` calls
//! per second for `--duration` seconds. Each call runs `--turns` TTS turns with its own
//! session id (`POST /api/v1/tts`), waits `--think-ms` between turns, and ends with
//! `DELETE /api/v1/sessions/{id}`. For every turn we record the time to the first audio
//! byte and the `x-pool-tier` header.
//!
//! Without `--url` the service runs in this process on 127.0.0.1 with the mock backend
//! (realistic latencies: 400 ms cold connect), so the mock's connection counters can be
//! compared after shutdown: `load.leaked_connections` is `created - closed` summed over
//! TTS and STT. With `--url` (loopback only) the leak figure comes from the pools
//! endpoint: `created_total - closed_total - size` summed over the pools.
//!
//! Prints a progress line every second, then a report and machine-readable lines
//! (`load.calls: N`, `load.errors: N`, ...). Exits non-zero on any error or leak.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use service::backend::{BackendKind, Managers};
use service::{AppState, Config, state_from_managers};
use speech_mock::backend::{MockConfig, MockCounters, mock_stt_manager, mock_tts_manager};
use tokio::task::JoinSet;

/// Upper bound on calls in flight at once, whatever the rate.
const MAX_IN_FLIGHT: u64 = 2_000;
/// Per-request bound: a hung request becomes a `transport` error, never a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long calls still running at the end of the arrival window may take to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// Bound on the in-process service's shutdown.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);

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
    /// TTS turns per call (default 4; 3 with --quick).
    #[arg(long, value_name = "N")]
    turns: Option<u32>,
    /// Think time between turns, milliseconds (default 1000; 300 with --quick).
    #[arg(long, value_name = "N")]
    think_ms: Option<u64>,
    /// A running service (loopback only, e.g. http://127.0.0.1:8080). Without it the
    /// service is started in this process with the mock backend.
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
}

/// The resolved settings of one run.
#[derive(Debug, Clone, Copy)]
struct Plan {
    rate: f64,
    duration: Duration,
    turns: u32,
    think: Duration,
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
        // Bounded in count as well as in time: twice the expected number of calls.
        let expected = rate * duration;
        let max_calls = (expected * 2.0).ceil() as u64 + 10;
        Ok(Self {
            rate,
            duration: Duration::from_secs_f64(duration),
            turns,
            think: Duration::from_millis(think_ms),
            max_calls,
        })
    }
}

/// Entry point of `cargo xtask load`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let plan = Plan::from_args(args)?;
    let target = match &args.url {
        Some(url) => Some(loopback_base(url)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run_async(plan, target, args.api_key.clone()))
}

/// Checks that `url` points at this machine and returns it without a trailing slash.
fn loopback_base(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--url must start with http:// (got {url})"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host,
        _ => authority,
    };
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        bail!("--url must point at this machine (127.0.0.1, localhost or [::1]), got {url}");
    }
    Ok(format!("http://{authority}"))
}

/// The service running in this process with mock managers whose counters we keep.
struct InProcess {
    addr: SocketAddr,
    state: AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    tts_counters: Arc<MockCounters>,
    stt_counters: Arc<MockCounters>,
}

async fn start_in_process(plan: Plan) -> anyhow::Result<InProcess> {
    let mut config = Config::defaults();
    // Enough warm connections for the expected arrivals during one cold connect (400 ms),
    // and room for every call in flight to hold its own connection.
    config.warm_pool_tts_size = ((plan.rate * 0.5).ceil() as usize).clamp(3, 64);
    config.warm_pool_stt_size = 1;
    config.pool_tts_max_size = 1_024;
    config.pool_stt_max_size = 8;
    config.pool_acquire_timeout = Duration::from_secs(10);
    let (tts, tts_counters) = mock_tts_manager(MockConfig::realistic());
    let (stt, stt_counters) = mock_stt_manager(MockConfig::realistic());
    let state = state_from_managers(
        &config,
        Managers {
            kind: BackendKind::Mock,
            tts,
            stt,
        },
    )
    .map_err(|e| anyhow::anyhow!("building the service state: {e}"))?;
    state.warm_up().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(service::serve(
        listener,
        state.clone(),
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(10),
    ));
    Ok(InProcess {
        addr,
        state,
        stop,
        task,
        tts_counters,
        stt_counters,
    })
}

/// Everything measured during a run.
#[derive(Debug, Default)]
struct Stats {
    started: AtomicU64,
    finished: AtomicU64,
    turns: AtomicU64,
    errors: AtomicU64,
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    /// Time to first audio byte, milliseconds, by tier.
    first_audio_ms: BTreeMap<String, Vec<f64>>,
    /// Errors by class: `4xx`, `5xx`, `transport`, ...
    errors: BTreeMap<String, u64>,
}

impl Stats {
    fn error(&self, class: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.errors.entry(class.to_owned()).or_default() += 1;
    }

    fn turn(&self, tier: &str, first_audio: Duration) {
        self.turns.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .first_audio_ms
            .entry(tier.to_owned())
            .or_default()
            .push(first_audio.as_secs_f64() * 1000.0);
    }
}

fn status_class(status: u16) -> String {
    format!("{}xx", status / 100)
}

const PHRASES: [&str; 4] = [
    "Hello, how can I help you today?",
    "Let me check that for you.",
    "Your order has been shipped.",
    "Is there anything else?",
];

/// One call: `turns` TTS turns on session `id`, then `DELETE /api/v1/sessions/{id}`.
async fn call(
    client: reqwest::Client,
    base: Arc<str>,
    auth: Option<Arc<str>>,
    id: String,
    plan: Plan,
    stats: Arc<Stats>,
) {
    let with_auth = |request: reqwest::RequestBuilder| match &auth {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    for turn in 0..plan.turns {
        if turn > 0 {
            tokio::time::sleep(plan.think).await;
        }
        let text = PHRASES[turn as usize % PHRASES.len()];
        let body = serde_json::json!({ "text": text, "session_id": id }).to_string();
        let started = Instant::now();
        let request = with_auth(
            client
                .post(format!("{base}/api/v1/tts"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        );
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(_) => {
                stats.error("transport");
                continue;
            }
        };
        let status = response.status();
        if !status.is_success() {
            let _ = response.bytes().await;
            stats.error(&status_class(status.as_u16()));
            continue;
        }
        let tier = response
            .headers()
            .get("x-pool-tier")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("unknown")
            .to_owned();
        let mut first_audio = None;
        let mut failed = false;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if first_audio.is_none() && !chunk.is_empty() {
                        first_audio = Some(started.elapsed());
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        match first_audio {
            Some(first_audio) if !failed => stats.turn(&tier, first_audio),
            Some(_) => stats.error("stream"),
            None => stats.error("empty"),
        }
    }
    let request = with_auth(client.delete(format!("{base}/api/v1/sessions/{id}")));
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let _ = response.bytes().await;
            if !status.is_success() {
                stats.error(&format!("delete-{}", status_class(status.as_u16())));
            }
        }
        Err(_) => stats.error("delete-transport"),
    }
    stats.finished.fetch_add(1, Ordering::Relaxed);
}

async fn run_async(
    plan: Plan,
    target: Option<String>,
    api_key: Option<String>,
) -> anyhow::Result<()> {
    speech_azure::install_crypto_provider();
    let in_process = match target {
        Some(_) => None,
        None => Some(start_in_process(plan).await?),
    };
    let base: Arc<str> = match (&target, &in_process) {
        (Some(url), _) => url.as_str().into(),
        (None, Some(running)) => format!("http://{}", running.addr).into(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let auth: Option<Arc<str>> = api_key.filter(|_| target.is_some()).map(Into::into);
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;

    eprintln!(
        "load: {} at {:.1} calls/s for {:.0} s, {} turns per call, {} ms think time{}",
        base,
        plan.rate,
        plan.duration.as_secs_f64(),
        plan.turns,
        plan.think.as_millis(),
        if in_process.is_some() {
            " (in-process service, mock backend, realistic latencies)"
        } else {
            ""
        }
    );

    let stats = Arc::new(Stats::default());
    let began = Instant::now();
    let progress = tokio::spawn(progress(stats.clone(), began));

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
        while calls.try_join_next().is_some() {}
        if calls.len() as u64 >= MAX_IN_FLIGHT {
            stats.error("skipped-in-flight-cap");
            continue;
        }
        launched += 1;
        stats.started.fetch_add(1, Ordering::Relaxed);
        calls.spawn(call(
            client.clone(),
            base.clone(),
            auth.clone(),
            format!("load-{pid}-{launched}"),
            plan,
            stats.clone(),
        ));
    }
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        while calls.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        for _ in 0..calls.len() {
            stats.error("unfinished");
        }
        calls.abort_all();
        while calls.join_next().await.is_some() {}
    }
    let elapsed = began.elapsed();
    progress.abort();
    let _ = progress.await;

    let connections = match in_process {
        Some(running) => in_process_leaks(running).await?,
        None => remote_leaks(&client, &base, auth.as_deref()).await?,
    };
    report(plan, &stats, elapsed, &connections)
}

/// A line per second: calls started, finished and in flight; turns; errors.
async fn progress(stats: Arc<Stats>, began: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let started = stats.started.load(Ordering::Relaxed);
        let finished = stats.finished.load(Ordering::Relaxed);
        eprintln!(
            "load: {:>4.0} s  calls {started} started, {finished} done, {} in flight  turns {}  errors {}",
            began.elapsed().as_secs_f64(),
            started.saturating_sub(finished),
            stats.turns.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed),
        );
    }
}

/// Connection accounting after the run.
#[derive(Debug)]
struct Connections {
    /// Human-readable lines for the report.
    lines: Vec<String>,
    leaked: u64,
}

/// Stops the in-process service and compares the mock's counters with the pools'.
async fn in_process_leaks(running: InProcess) -> anyhow::Result<Connections> {
    let InProcess {
        state,
        stop,
        task,
        tts_counters,
        stt_counters,
        ..
    } = running;
    let _ = stop.send(());
    match tokio::time::timeout(SHUTDOWN_LIMIT, task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => bail!("the service failed: {e}"),
        Ok(Err(e)) => bail!("the service task failed: {e}"),
        Err(_) => bail!("the service did not shut down within {SHUTDOWN_LIMIT:?}"),
    }
    let mut lines = Vec::new();
    let mut leaked = 0;
    let pools = state.snapshots();
    for (name, counters) in [("speech-tts", &tts_counters), ("speech-stt", &stt_counters)] {
        let s = counters.snapshot();
        let pool = pools.iter().find(|p| p.name == name);
        let leak = s.created.saturating_sub(s.closed);
        leaked += leak;
        lines.push(format!(
            "  {name}: backend created {} closed {} (dropped without close {}); pool created {} closed {}; leaked {leak}",
            s.created,
            s.closed,
            s.dropped_without_close,
            pool.map_or(0, |p| p.created_total),
            pool.map_or(0, |p| p.closed_total),
        ));
    }
    Ok(Connections { lines, leaked })
}

/// Reads the pools endpoint of a service we did not start.
async fn remote_leaks(
    client: &reqwest::Client,
    base: &str,
    auth: Option<&str>,
) -> anyhow::Result<Connections> {
    let mut request = client.get(format!("{base}/api/v1/pools"));
    if let Some(key) = auth {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.context("GET /api/v1/pools")?;
    let status = response.status();
    let body = response.bytes().await.context("reading /api/v1/pools")?;
    if !status.is_success() {
        bail!("GET /api/v1/pools answered {status}");
    }
    let json: serde_json::Value = serde_json::from_slice(&body).context("parsing /api/v1/pools")?;
    let mut lines = Vec::new();
    let mut leaked = 0;
    if let Some(pools) = json["pools"].as_object() {
        for (name, pool) in pools {
            let created = pool["created_total"].as_u64().unwrap_or(0);
            let closed = pool["closed_total"].as_u64().unwrap_or(0);
            let size = pool["size"].as_u64().unwrap_or(0);
            let leak = created.saturating_sub(closed).saturating_sub(size);
            leaked += leak;
            lines.push(format!(
                "  {name}: pool created {created} closed {closed} live {size}; unaccounted {leak}"
            ));
        }
    }
    Ok(Connections { lines, leaked })
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn fmt_ms(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}"))
}

fn report(
    plan: Plan,
    stats: &Stats,
    elapsed: Duration,
    connections: &Connections,
) -> anyhow::Result<()> {
    let inner = stats.inner.lock().unwrap_or_else(|e| e.into_inner());
    let calls = stats.started.load(Ordering::Relaxed);
    let finished = stats.finished.load(Ordering::Relaxed);
    let turns = stats.turns.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (tier, values) in &inner.first_audio_ms {
        let mut values = values.clone();
        values.sort_by(f64::total_cmp);
        samples.insert(tier.as_str(), values);
    }
    let count = |tier: &str| samples.get(tier).map_or(0, Vec::len);
    let total_tiered: usize = samples.values().map(Vec::len).sum();
    let share = |n: usize| {
        if total_tiered == 0 {
            0.0
        } else {
            n as f64 * 100.0 / total_tiered as f64
        }
    };
    let cold_share = share(count("cold"));

    println!();
    println!("load report");
    println!(
        "  {calls} calls ({finished} completed), {turns} turns ok, in {:.1} s (arrivals {:.1}/s for {:.0} s, {} turns, {} ms think)",
        elapsed.as_secs_f64(),
        plan.rate,
        plan.duration.as_secs_f64(),
        plan.turns,
        plan.think.as_millis()
    );
    if inner.errors.is_empty() {
        println!("  errors: none");
    } else {
        let by_class: Vec<String> = inner
            .errors
            .iter()
            .map(|(class, n)| format!("{class} {n}"))
            .collect();
        println!("  errors: {errors} ({})", by_class.join(", "));
    }
    let tiers: Vec<String> = samples
        .iter()
        .map(|(tier, v)| format!("{tier} {} ({:.1}%)", v.len(), share(v.len())))
        .collect();
    println!("  tiers: {}", tiers.join(", "));
    println!("  cold share: {cold_share:.1}%");
    println!("  time to first audio (ms):");
    println!(
        "    {:<10} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "tier", "turns", "p50", "p95", "p99", "max"
    );
    for (tier, values) in &samples {
        println!(
            "    {:<10} {:>7} {:>9} {:>9} {:>9} {:>9}",
            tier,
            values.len(),
            fmt_ms(percentile(values, 50.0)),
            fmt_ms(percentile(values, 95.0)),
            fmt_ms(percentile(values, 99.0)),
            fmt_ms(values.last().copied()),
        );
    }
    println!("  connections:");
    for line in &connections.lines {
        println!("{line}");
    }
    println!();
    println!("load.calls: {calls}");
    println!("load.errors: {errors}");
    println!("load.cold_share_percent: {cold_share:.2}");
    for tier in ["warm", "cold"] {
        let p99 = samples.get(tier).and_then(|v| percentile(v, 99.0));
        println!("load.first_audio_p99_ms.{tier}: {}", fmt_ms(p99));
    }
    println!("load.leaked_connections: {}", connections.leaked);

    if errors > 0 || connections.leaked > 0 {
        bail!("{errors} errors, {} leaked connections", connections.leaked);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert_eq!(
            loopback_base("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(loopback_base("http://localhost").is_ok());
        assert!(loopback_base("http://example.com:8080").is_err());
        assert!(loopback_base("https://127.0.0.1").is_err());
    }
}
