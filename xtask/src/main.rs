//! Workspace automation, run as `cargo xtask <command>` (the alias lives in
//! `.cargo/config.toml`).
//!
//! - `cargo xtask ci`: the same steps as `.ci/run`, in the same order.
//! - `cargo xtask bench pool [--quick]`: pool-core against deadpool, bb8 and fastpool.
//! - `cargo xtask bench speech [--quick]`: time to first audio, cold versus warm.
//! - `cargo xtask bench azure [--emulator]`: Microsoft's server-scenario method through the
//!   service, cold versus warm, against Azure (or the emulator).
//! - `cargo xtask cluster [--quick]`: replicas behind HAProxy; rolling restart, scale-out.
//! - `cargo xtask load [--quick] [--out DIR]`: simulated voice calls against the service.
//! - `cargo xtask soak [--sessions N] [--duration SECS]`: long run, leaks and memory.
//! - `cargo xtask faults [--quick] [--scenario NAME]`: the service (azure backend) against the
//!   emulator under injected faults, one scenario per row.
//!
//! Adding a command is one variant in [`Command`] (or [`BenchTarget`]) and one match arm in
//! [`main`]; the implementation goes in its own module.

mod abuse;
mod bench_azure;
mod bench_pool;
mod bench_sdk;
mod bench_speech;
mod bench_stream;
mod ci;
mod client;
mod cluster;
mod faults;
mod faults_barge_in;
mod faults_blackhole;
mod faults_stt;
mod load;
mod soak;

use std::path::PathBuf;
use std::process::{Command as Process, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Automation for this workspace (CI steps, benchmarks).",
    long_about = None,
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run what `.ci/run` runs (fmt, clippy, tests), stopping at the first failure.
    ///
    /// The steps, in order: install Debian's chromium if it is missing (failing if it
    /// cannot), `cargo fmt --all --check`,
    /// `cargo clippy --workspace --all-targets -- -D warnings`, `cargo test --workspace`,
    /// then `conformance/run.sh` if it exists. Stops at the first failing step.
    Ci,
    /// Run a benchmark (always from an optimised build).
    ///
    /// A debug build of xtask re-runs itself with `cargo run --release`.
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
    /// Simulated voice calls (Poisson arrivals; each call N turns of STT then TTS on its
    /// session, then DELETE) against the service: started in-process (mock backend, or
    /// `--backend emulator`) unless `--url` is given.
    ///
    /// Shows a progress bar, then a report (calls, errors by class, tiers, latency and
    /// connection acquire per tier, connection accounting) and `load.<name>: <value>`
    /// lines; `--out DIR` adds JSON and an SVG plot. Exits non-zero on any error or
    /// leaked connection. Runs from an optimised build, like the benchmarks.
    Load(load::Args),
    /// Many concurrent sessions for a long time against the mock backend (default 1000
    /// for 60 s): fails on any error, stall, leak, leftover task or memory growth.
    ///
    /// Runs from an optimised build, like the benchmarks.
    Soak(soak::Args),
    /// Fault scenarios against the service with the azure backend and the emulator (TLS),
    /// one at a time: token expiry, a 429 storm, 4429 closes, idle closes racing acquires,
    /// connections dropped mid-stream, an emulator restart under load; then call-long STT
    /// streams across the connection age limit and across drops (`stt-max-age-rollover`,
    /// `stt-drop-replay`: phrases lost and duplicated, goal 0).
    ///
    /// Prints one row per scenario (requests, failed, failures by class, time to recover
    /// to the warm targets, leaked connections) and `faults.<scenario>.<name>: <value>`
    /// lines. Exits non-zero if a request hangs, a connection leaks, a pool never recovers,
    /// or the caller-visible failures exceed the scenario's budget (zero where the fault
    /// must be transparent). Runs from an optimised build,
    /// so recovery times are those of the real service.
    Faults(faults::Args),
    /// Runs hostile but legal clients (session flood, slow readers, idle STT sockets,
    /// slowloris) against the release service beside a well-behaved load; prints a table
    /// and `abuse.<attack>.*` lines. Exits non-zero when a well-behaved client fails, its
    /// first-audio p99 exceeds 1.5x the quiet run, or memory grows unbounded.
    Abuse(abuse::Args),
    /// N replicas of the service (default 3, mock backend) behind HAProxy running
    /// `deploy/haproxy.cfg`, with per-call affinity on `X-Session-Id`, under load; then a
    /// rolling restart and a scale-out (N -> N+1) under the same load.
    ///
    /// Prints per replica and overall calls, turns, tier shares and errors, each step's
    /// remapped calls, and `cluster.<name>: <value>` lines. Exits non-zero when a goal is
    /// missed (0 errors; DEDICATED share within 1 point of one replica alone; 0 failed
    /// calls while restarting and scaling out; at most 1/N + 5 % of live calls moved per
    /// restart step, 1/(N+1) + 5 % at scale-out; no traffic to a replica before it is
    /// ready). Needs HAProxy (installs the Debian package when missing and run as root).
    /// Runs from an optimised build.
    Cluster(cluster::Args),
}

#[derive(Debug, Subcommand)]
enum BenchTarget {
    /// Compare pool-core with deadpool, bb8 and fastpool on a no-op resource.
    ///
    /// All in one run: uncontended acquire+release (our WARM and DEDICATED paths), contended throughput
    /// (pool 4 / 16 tasks, pool 8 / 64 tasks) and FIFO fairness (pool 8 / 64 tasks).
    /// Prints a table and machine-readable `bench.<name>: <value>` and
    /// `ratio.<ours>_vs_<peer>.<case>: <peer / ours>` lines. Exits non-zero if any
    /// configuration hangs (exceeds its time bound) or fails.
    Pool(bench_pool::Args),
    /// Time to first audio, COLD vs WARM (TTS websocket, TTS REST, STT) against the
    /// emulator at 20 ms simulated round trip, over TLS.
    Speech {
        /// 8 samples per case instead of 30.
        #[arg(long)]
        quick: bool,
    },
    /// The JavaScript Speech SDK straight to the emulator vs through the service (warm
    /// pool), at 50 ms simulated RTT: time to first audio and to the first recognition
    /// result of a brand-new synthesizer / recognizer. Needs Node and conformance/'s npm ci.
    Sdk {
        /// 8 samples per case instead of 30.
        #[arg(long)]
        quick: bool,
    },
    /// Microsoft's server-scenario method through the service (64 concurrent workers x 3
    /// turns, turn 0 left out; first byte and finish avg / p90 / p95), cold (no warm pool)
    /// versus warm, for TTS and STT first result.
    ///
    /// Runs against Azure when AZURE_SPEECH_KEY and AZURE_SPEECH_REGION (or
    /// AZURE_SPEECH_ENDPOINT) are set; without them says so and exits 0. `--emulator` runs
    /// the same against the local emulator. Timed turns served by the other tier are left
    /// out and counted. Exits non-zero on a failed turn, a case with no turn in its tier, or
    /// a cold turn that opened no connection (by the pool's count and, against the
    /// emulator, the emulator's). Prints `bench.azure.<tier>.<what>_<stat>_ms` and
    /// `bench.azure.<tier>.<kind>_connects_per_turn` lines.
    Azure(bench_azure::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ci => ci::run(),
        Command::Load(args) => {
            if let Some(code) = reexec_in_release_if_debug() {
                return code;
            }
            load::run(&args)
        }
        Command::Soak(args) => {
            if let Some(code) = reexec_in_release_if_debug() {
                return code;
            }
            soak::run(&args)
        }
        Command::Abuse(args) => {
            if let Some(code) = reexec_in_release_if_debug() {
                return code;
            }
            abuse::run(&args)
        }
        Command::Cluster(args) => {
            if let Some(code) = reexec_in_release_if_debug() {
                return code;
            }
            cluster::run(&args)
        }
        Command::Faults(args) => {
            if let Some(code) = reexec_in_release_if_debug() {
                return code;
            }
            faults::run(&args)
        }
        Command::Bench { target } => {
            if let Some(code) = reexec_in_release_if_debug() {
                return code;
            }
            match target {
                BenchTarget::Pool(args) => bench_pool::run(&args),
                BenchTarget::Speech { quick } => bench_speech::run(quick),
                BenchTarget::Sdk { quick } => bench_sdk::run(quick),
                BenchTarget::Azure(args) => bench_azure::run(&args),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (this crate lives in `<root>/xtask`).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// The cargo that invoked us (`CARGO` is set by `cargo run`), else `cargo` from `PATH`.
pub(crate) fn cargo() -> Process {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Process::new(cargo);
    command.current_dir(workspace_root());
    command
}

/// Set on the re-executed release process so a misconfigured release profile (with
/// debug assertions) cannot make us re-exec forever.
const REEXEC_MARKER: &str = "XTASK_RELEASE_REEXEC";

/// Timings from a debug build are meaningless: if this is one, run the same command line
/// through `cargo run --release` and return its exit status.
fn reexec_in_release_if_debug() -> Option<ExitCode> {
    if !cfg!(debug_assertions) {
        return None;
    }
    if std::env::var_os(REEXEC_MARKER).is_some() {
        eprintln!("xtask: warning: the release build has debug assertions; timings are unreliable");
        return None;
    }
    eprintln!("xtask: benchmarks need an optimised build; re-running with `cargo run --release`");
    let status = cargo()
        .args(["run", "--release", "--quiet", "--package", "xtask", "--"])
        .args(std::env::args_os().skip(1))
        .env(REEXEC_MARKER, "1")
        .status();
    Some(match status {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            let code = status.code().unwrap_or(1);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(error) => {
            eprintln!("xtask: error: could not run cargo: {error}");
            ExitCode::FAILURE
        }
    })
}
