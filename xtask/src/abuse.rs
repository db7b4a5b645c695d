//! `cargo xtask abuse`: hostile but legal clients against the release build of the
//! service (mock backend, default settings) on loopback, each beside a well-behaved load.
//!
//! For every attack the report gives the well-behaved clients' error count and TTS
//! first-audio p99 against a quiet run, the most pool connections in use and sessions
//! seen, and the service's peak RSS. Goals: no error for well-behaved clients, their p99
//! within 1.5x of the quiet run, RSS bounded (peak under attack at most the quiet peak
//! plus 128 MiB). The process exits non-zero when a goal is missed.
//!
//! Attacks (`--attackers N`, 32 by default: the default TTS pool size):
//! - `session-flood`: 8 loops of short TTS requests, each with a new `session_id`, never
//!   deleted;
//! - `slow-reader`: N clients POST ~10,000 characters, read the response head and then
//!   nothing;
//! - `idle-stt`: N STT websockets that never send audio (reopened when closed);
//! - `slowloris`: N connections sending request-head bytes one a second (reopened when
//!   closed); afterwards SIGTERM, and the time the service takes to exit.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `cargo xtask abuse`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Short runs (8 s of good load per attack instead of 30 s).
    #[arg(long)]
    quick: bool,
    /// Hostile clients per attack (session-flood always uses 8 request loops).
    #[arg(long, default_value_t = 32)]
    attackers: usize,
    /// Run only these attacks (comma-separated).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

const ATTACKS: [&str; 4] = ["session-flood", "slow-reader", "idle-stt", "slowloris"];

/// Well-behaved TTS callers and STT callers.
const GOOD_TTS: usize = 4;
const GOOD_STT: usize = 2;
/// A request of a well-behaved client that takes longer than this is an error.
const GOOD_HANG: Duration = Duration::from_secs(15);
const GOOD_TEXT: &str = "Hello, how can I help you today?";

pub fn run(args: &Args) -> anyhow::Result<()> {
    // reqwest is built without a default TLS provider; the process installs ring once.
    service::install_crypto_provider();
    let status = crate::cargo()
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "service",
            "--bin",
            "speech-pool",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the release service failed");
    }
    // Cargo puts the binary under CARGO_TARGET_DIR when that is set, else under target/.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"));
    let bin = target.join("release/speech-pool");
    let logs = target.join("abuse");
    std::fs::create_dir_all(&logs)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_all(args, &bin, &logs))
}

#[derive(Debug, Default, Clone)]
struct Outcome {
    good_ok: u64,
    good_errors: u64,
    error_kinds: std::collections::BTreeMap<String, u64>,
    first_audio_ms: Vec<f64>,
    max_tts_in_use: u64,
    max_stt_in_use: u64,
    max_sessions: u64,
    peak_rss_kib: u64,
    log_bytes: u64,
    attack_requests: u64,
    shutdown_s: Option<f64>,
    /// Slow readers: seconds after the good load ended until no TTS connection was in use
    /// any more, while the attackers still held their sockets unread.
    release_s: Option<f64>,
}

impl Outcome {
    fn p99(&self) -> f64 {
        percentile(&self.first_audio_ms, 0.99)
    }
}

fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((v.len() as f64) * q).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

async fn run_all(args: &Args, bin: &Path, logs: &Path) -> anyhow::Result<()> {
    let window = if args.quick {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(30)
    };
    let attacks: Vec<&str> = ATTACKS
        .into_iter()
        .filter(|a| args.only.is_empty() || args.only.iter().any(|o| o == a))
        .collect();
    eprintln!("abuse: quiet run ({window:?} of good load)");
    let quiet = run_one(None, args.attackers, window, bin, logs).await?;
    let mut rows = Vec::new();
    for attack in attacks {
        eprintln!("abuse: {attack} ({} attackers)", args.attackers);
        let outcome = run_one(Some(attack), args.attackers, window, bin, logs).await?;
        rows.push((attack, outcome));
    }
    print_report(&quiet, &rows);
    let mut failed = Vec::new();
    for (attack, o) in &rows {
        let ratio = o.p99() / quiet.p99();
        println!("abuse.{attack}.good_errors: {}", o.good_errors);
        println!("abuse.{attack}.good_p99_ratio: {ratio:.2}");
        println!(
            "abuse.{attack}.peak_rss_mib: {:.1}",
            o.peak_rss_kib as f64 / 1024.0
        );
        if let Some(s) = o.shutdown_s {
            println!("abuse.{attack}.shutdown_s: {s:.2}");
        }
        if let Some(s) = o.release_s {
            println!("abuse.{attack}.release_s: {s:.1}");
        }
        if o.good_errors > 0 {
            failed.push(format!("{attack}: {} good-client errors", o.good_errors));
        }
        if ratio.is_nan() || ratio > 1.5 {
            failed.push(format!(
                "{attack}: p99 first audio {ratio:.2}x the quiet run"
            ));
        }
        if o.peak_rss_kib > quiet.peak_rss_kib + 128 * 1024 {
            failed.push(format!("{attack}: RSS grew to {} KiB", o.peak_rss_kib));
        }
        if o.shutdown_s.is_some_and(|s| s > 5.0) {
            failed.push(format!(
                "{attack}: shutdown took {:.1} s",
                o.shutdown_s.unwrap_or(0.0)
            ));
        }
    }
    if failed.is_empty() {
        println!("abuse: all goals met");
        Ok(())
    } else {
        bail!("goals missed: {}", failed.join("; "))
    }
}

fn print_report(quiet: &Outcome, rows: &[(&str, Outcome)]) {
    println!();
    println!(
        "| attack | good ok | good errors | p99 first audio (ms) | vs quiet | max TTS in use | max STT in use | max sessions | peak RSS (MiB) | log (KiB) | attack requests |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let line = |name: &str, o: &Outcome| {
        let errors = if o.error_kinds.is_empty() {
            o.good_errors.to_string()
        } else {
            format!(
                "{} ({})",
                o.good_errors,
                o.error_kinds
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        println!(
            "| {name} | {} | {errors} | {:.0} | {:.2}x | {} | {} | {} | {:.1} | {} | {} |",
            o.good_ok,
            o.p99(),
            o.p99() / quiet.p99(),
            o.max_tts_in_use,
            o.max_stt_in_use,
            o.max_sessions,
            o.peak_rss_kib as f64 / 1024.0,
            o.log_bytes / 1024,
            o.attack_requests,
        );
    };
    line("(quiet)", quiet);
    for (attack, o) in rows {
        line(attack, o);
    }
    println!();
}

/// The service as a child process.
struct Service {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Service {
    async fn start(bin: &Path, log: PathBuf) -> anyhow::Result<Self> {
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?
        };
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .env("SPEECH_BACKEND", "mock")
            .env("LISTEN_ADDR", addr.to_string())
            .env_remove("SERVICE_API_KEY")
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let service = Self { child, addr, log };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = client
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(service);
            }
            if Instant::now() > deadline {
                bail!(
                    "the service did not become ready; see {}",
                    service.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
                line.split_whitespace().nth(1)?.parse().ok()
            })
            .unwrap_or(0)
    }

    /// SIGTERM, then the seconds until the process exited (killed after 30 s).
    async fn terminate(&mut self) -> f64 {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return started.elapsed().as_secs_f64();
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return started.elapsed().as_secs_f64();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Default)]
struct Good {
    ok: AtomicU64,
    errors: Mutex<std::collections::BTreeMap<String, u64>>,
    first_audio_ms: Mutex<Vec<f64>>,
}

impl Good {
    fn error(&self, kind: impl Into<String>) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        *e.entry(kind.into()).or_default() += 1;
    }
}

async fn run_one(
    attack: Option<&str>,
    attackers: usize,
    window: Duration,
    bin: &Path,
    logs: &Path,
) -> anyhow::Result<Outcome> {
    let name = attack.unwrap_or("quiet");
    let mut service = Service::start(bin, logs.join(format!("{name}.log"))).await?;
    let addr = service.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let attack_requests = Arc::new(AtomicU64::new(0));
    let mut attack_tasks = Vec::new();
    if let Some(attack) = attack {
        let count = if attack == "session-flood" {
            8
        } else {
            attackers
        };
        for i in 0..count {
            let stop = Arc::clone(&stop);
            let n = Arc::clone(&attack_requests);
            let attack = attack.to_owned();
            attack_tasks.push(tokio::spawn(async move {
                match attack.as_str() {
                    "session-flood" => session_flood(addr, i, &stop, &n).await,
                    "slow-reader" => slow_reader(addr, &stop, &n).await,
                    "idle-stt" => idle_stt(addr, &stop, &n).await,
                    _ => slowloris(addr, &stop, &n).await,
                }
            }));
        }
        // Let the attack take hold before the good clients arrive.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let good = Arc::new(Good::default());
    let good_stop = Arc::new(AtomicBool::new(false));
    let mut good_tasks = Vec::new();
    for i in 0..GOOD_TTS {
        let (good, stop) = (Arc::clone(&good), Arc::clone(&good_stop));
        good_tasks.push(tokio::spawn(async move {
            good_tts(addr, i, &good, &stop).await
        }));
    }
    for i in 0..GOOD_STT {
        let (good, stop) = (Arc::clone(&good), Arc::clone(&good_stop));
        good_tasks.push(tokio::spawn(async move {
            good_stt(addr, i, &good, &stop).await
        }));
    }

    let mut outcome = Outcome::default();
    let client = reqwest::Client::new();
    let ends = Instant::now() + window;
    while Instant::now() < ends {
        sample(&client, &service, &mut outcome).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    good_stop.store(true, Ordering::Relaxed);
    for t in good_tasks {
        let _ = t.await;
    }
    sample(&client, &service, &mut outcome).await;
    if attack == Some("slow-reader") {
        outcome.release_s = Some(time_to_release(&client, addr).await);
    }
    if attack == Some("slowloris") {
        // The silent connections are still open: shutdown must not wait for them.
        outcome.shutdown_s = Some(service.terminate().await);
    }
    stop.store(true, Ordering::Relaxed);
    for t in attack_tasks {
        t.abort();
    }
    drop(service);
    outcome.good_ok = good.ok.load(Ordering::Relaxed);
    outcome.error_kinds = good.errors.lock().map(|e| e.clone()).unwrap_or_default();
    outcome.good_errors = outcome.error_kinds.values().sum();
    outcome.first_audio_ms = good
        .first_audio_ms
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    outcome.attack_requests = attack_requests.load(Ordering::Relaxed);
    outcome.log_bytes = std::fs::metadata(logs.join(format!("{name}.log")))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(outcome)
}

/// Seconds until the TTS pool has no connection in use (at most 180).
async fn time_to_release(client: &reqwest::Client, addr: SocketAddr) -> f64 {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(180) {
        let in_use = async {
            let body = client
                .get(format!("http://{addr}/api/v1/pools"))
                .send()
                .await
                .ok()?
                .bytes()
                .await
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
            v["pools"]["speech-tts"]["in_use"].as_u64()
        };
        if in_use.await == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    started.elapsed().as_secs_f64()
}

async fn sample(client: &reqwest::Client, service: &Service, outcome: &mut Outcome) {
    outcome.peak_rss_kib = outcome.peak_rss_kib.max(service.rss_kib());
    let Ok(response) = client
        .get(format!("http://{}/api/v1/pools", service.addr))
        .timeout(Duration::from_secs(2))
        .send()
        .await
    else {
        return;
    };
    let Ok(body) = response.bytes().await else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return;
    };
    let field = |pool: &str, f: &str| v["pools"][pool][f].as_u64().unwrap_or(0);
    outcome.max_tts_in_use = outcome.max_tts_in_use.max(field("speech-tts", "in_use"));
    outcome.max_stt_in_use = outcome.max_stt_in_use.max(field("speech-stt", "in_use"));
    outcome.max_sessions = outcome
        .max_sessions
        .max(field("speech-tts", "active_sessions") + field("speech-stt", "active_sessions"));
}

/// A well-behaved TTS caller: calls of three turns in one session, then DELETE.
async fn good_tts(addr: SocketAddr, index: usize, good: &Good, stop: &AtomicBool) {
    let client = reqwest::Client::new();
    let mut call = 0u64;
    while !stop.load(Ordering::Relaxed) {
        call += 1;
        let session = format!("good-tts-{index}-{call}");
        for _ in 0..3 {
            let started = Instant::now();
            let body = serde_json::json!({ "text": GOOD_TEXT, "session_id": session }).to_string();
            let turn = async {
                let mut r = client
                    .post(format!("http://{addr}/api/v1/tts"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|_| "transport".to_owned())?;
                if !r.status().is_success() {
                    return Err(format!("http-{}", r.status().as_u16()));
                }
                let mut first = None;
                loop {
                    match r.chunk().await {
                        Ok(Some(c)) if !c.is_empty() => {
                            first.get_or_insert_with(|| started.elapsed());
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => return Err("stream-cut".to_owned()),
                    }
                }
                first.ok_or_else(|| "no-audio".to_owned())
            };
            match tokio::time::timeout(GOOD_HANG, turn).await {
                Ok(Ok(first)) => {
                    good.ok.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut v) = good.first_audio_ms.lock() {
                        v.push(first.as_secs_f64() * 1000.0);
                    }
                }
                Ok(Err(kind)) => good.error(format!("tts {kind}")),
                Err(_) => good.error("tts hang"),
            }
        }
        let deleted = client
            .delete(format!("http://{addr}/api/v1/sessions/{session}"))
            .send()
            .await;
        if !deleted.is_ok_and(|r| r.status().is_success()) {
            good.error("delete");
        }
    }
}

/// A well-behaved STT caller: one turn of 1 s of audio per stream, in a session.
async fn good_stt(addr: SocketAddr, index: usize, good: &Good, stop: &AtomicBool) {
    let pcm: Vec<u8> = (0..16_000)
        .flat_map(|i: i32| (((i % 64) as i16 - 32) * 100).to_le_bytes())
        .collect();
    let mut call = 0u64;
    while !stop.load(Ordering::Relaxed) {
        call += 1;
        let url = format!("ws://{addr}/api/v1/stt?session_id=good-stt-{index}-{call}");
        let turn = async {
            let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(|_| "connect".to_owned())?;
            for chunk in pcm.chunks(3200) {
                ws.send(Message::binary(chunk.to_vec()))
                    .await
                    .map_err(|_| "send".to_owned())?;
            }
            ws.send(Message::text(r#"{"type":"end"}"#))
                .await
                .map_err(|_| "send".to_owned())?;
            let result = loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                        match v["type"].as_str() {
                            Some("turn_end") => break Ok(()),
                            Some("error") => break Err(format!("error-{}", v["status"])),
                            _ => {}
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break Err("closed".to_owned()),
                }
            };
            let _ = ws.close(None).await;
            result
        };
        match tokio::time::timeout(GOOD_HANG, turn).await {
            Ok(Ok(())) => {
                good.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(kind)) => good.error(format!("stt {kind}")),
            Err(_) => good.error("stt hang"),
        }
        let _ = reqwest::Client::new()
            .delete(format!(
                "http://{addr}/api/v1/sessions/good-stt-{index}-{call}"
            ))
            .send()
            .await;
    }
}

async fn session_flood(addr: SocketAddr, index: usize, stop: &AtomicBool, n: &AtomicU64) {
    let client = reqwest::Client::new();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        k += 1;
        let body = serde_json::json!({ "text": "hi", "session_id": format!("flood-{index}-{k}") });
        n.fetch_add(1, Ordering::Relaxed);
        if let Ok(r) = client
            .post(format!("http://{addr}/api/v1/tts"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
        {
            let _ = r.bytes().await;
        }
    }
}

/// POSTs a long text, reads the response head, then reads nothing for the rest of the
/// run.
async fn slow_reader(addr: SocketAddr, stop: &AtomicBool, n: &AtomicU64) {
    let text = "this is a long sentence to keep the synthesizer busy. ".repeat(185);
    let body = serde_json::json!({ "text": text }).to_string();
    let request = format!(
        "POST /api/v1/tts HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        n.fetch_add(1, Ordering::Relaxed);
        if s.write_all(request.as_bytes()).await.is_err() {
            continue;
        }
        // Read up to the end of the head (a byte at a time: nothing of the body).
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        // Then nothing, for the rest of the run.
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(s);
    }
}

async fn idle_stt(addr: SocketAddr, stop: &AtomicBool, n: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let url = format!("ws://{addr}/api/v1/stt");
        n.fetch_add(1, Ordering::Relaxed);
        match tokio_tungstenite::connect_async(url.as_str()).await {
            // Read (so pings and the close are seen) but never send.
            Ok((mut ws, _)) => while let Some(Ok(_)) = ws.next().await {},
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Sends a request head one byte a second; reopens when the service closes it.
async fn slowloris(addr: SocketAddr, stop: &AtomicBool, n: &AtomicU64) {
    let head = format!("GET /api/v1/pools HTTP/1.1\r\nHost: {addr}\r\nX-Padding: ");
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        n.fetch_add(1, Ordering::Relaxed);
        for b in head.bytes().chain(std::iter::repeat(b'a')) {
            if stop.load(Ordering::Relaxed) || s.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert!(percentile(&[], 0.99).is_nan());
    }
}
