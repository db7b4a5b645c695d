//! `cargo xtask bench pool`: pool-core against deadpool (managed), bb8 and fastpool, in one
//! run, on the same no-op resource.
//!
//! The resource is a `u64` from a counter: `create` returns at once, and every check the
//! pools make on it (pool-core `is_ready`, deadpool `recycle`, bb8 `is_valid` /
//! `has_broken`, fastpool `is_recyclable`) is a no-op, so the figures are pure pool
//! overhead. Every pool runs with its default settings except its size; every pool is
//! filled to its size before timing (pool-core with `warm_target = max_size` and
//! `prepare()`, the peers by checking out `size` resources at once and returning them).
//!
//! Cases:
//! 1. `uncontended`: one task on a current-thread runtime, acquire + release, ns/op. Ours
//!    twice: the WARM path (`acquire()`) and the DEDICATED path (`acquire_for_session("s")`,
//!    the same session every time).
//! 2. `contended_p<P>_t<T>`: a 2-worker multi-thread runtime, `T` tasks each looping
//!    acquire + release on a pool of `P`; ns/op = wall time / total ops.
//! 3. `fairness_p8_t64`: 64 tasks on a pool of 8, each holding its resource across one
//!    `yield_now()`. Every acquire's wait is timed; p50 / p99 / p99.9 / max are reported in
//!    ns, with the wall time per acquire (`ns/op`) beside them. In a FIFO queue the median
//!    wait is about (tasks - pool) x ns/op, so a higher median with a FIFO pool means lower
//!    hand-over throughput, not unfairness. A pool that lets a releasing task take its
//!    resource straight back starves the others instead: tiny p50, huge p99.9 and max.
//!
//! Noise control (2 shared cores): each measurement (one contender, one case) runs in a
//! fresh runtime after a warm-up; contenders are interleaved within each round, with the
//! order rotated and reversed between rounds, and the reported figure is the median over
//! rounds.
//!
//! Hang control: each measurement runs on its own thread under a time bound, enforced both
//! inside the runtime (`tokio::time::timeout`) and outside it (a watchdog on the thread's
//! result, which also catches a blocked thread). A measurement over its bound is reported as
//! `bench.<name>: HANG`, is not retried in later rounds, and makes the command fail.
//!
//! For pool-core, each measurement also checks the pool's own accounting afterwards (no COLD
//! acquire on a prepared pool, exact tier counts, `created == closed + live`, nothing left
//! running after `shutdown()`); a mismatch fails that measurement: its lines read `FAILED`,
//! a `failure:` line below the table says what did not add up, and the command fails.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::bail;

/// Options of `cargo xtask bench pool`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fewer operations and rounds, for a check that finishes in well under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Rounds per case; the median over rounds is reported [default: 5 with --quick, else 9].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: Option<u32>,
    /// Time bound of one measurement (one pool, one case, one round), in seconds. A
    /// measurement that exceeds it is reported as HANG.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_secs: u64,
    /// Run only these cases (repeatable): uncontended, contended_p4_t16, contended_p8_t64,
    /// fairness_p8_t64 [default: all].
    #[arg(long = "case", value_name = "CASE", value_parser = CASE_NAMES)]
    pub cases: Vec<String>,
    /// Run only these pools (repeatable; `ours` is both our WARM and DEDICATED paths), e.g.
    /// to profile one of them [default: all].
    #[arg(long = "pool", value_name = "POOL", value_parser = ["ours", "deadpool", "bb8", "fastpool"])]
    pub pools: Vec<String>,
}

const CASE_NAMES: [&str; 4] = [
    "uncontended",
    "contended_p4_t16",
    "contended_p8_t64",
    "fairness_p8_t64",
];

/// How much work each measurement does.
#[derive(Debug, Clone, Copy)]
struct Params {
    rounds: u32,
    /// Timed acquire+release operations of the uncontended case (plus 10 % warm-up).
    uncontended_ops: u64,
    /// Total timed operations of a contended case, split over its tasks.
    contended_total_ops: u64,
    /// Total timed acquires of the fairness case, split over its tasks.
    fairness_total_ops: u64,
    bound: Duration,
}

impl Params {
    fn from_args(args: &Args) -> Self {
        let (rounds, uncontended_ops, contended_total_ops, fairness_total_ops) = if args.quick {
            (5, 500_000, 256_000, 64_000)
        } else {
            (9, 2_000_000, 512_000, 256_000)
        };
        Self {
            rounds: args.rounds.unwrap_or(rounds),
            uncontended_ops,
            contended_total_ops,
            fairness_total_ops,
            bound: Duration::from_secs(args.timeout_secs),
        }
    }
}

/// One benchmark case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Uncontended,
    Contended { pool: usize, tasks: usize },
    Fairness { pool: usize, tasks: usize },
}

/// Pool size of the uncontended case.
const UNCONTENDED_POOL: usize = 4;

const CASES: [Case; 4] = [
    Case::Uncontended,
    Case::Contended { pool: 4, tasks: 16 },
    Case::Contended { pool: 8, tasks: 64 },
    Case::Fairness { pool: 8, tasks: 64 },
];

impl Case {
    fn name(self) -> String {
        match self {
            Case::Uncontended => "uncontended".to_owned(),
            Case::Contended { pool, tasks } => format!("contended_p{pool}_t{tasks}"),
            Case::Fairness { pool, tasks } => format!("fairness_p{pool}_t{tasks}"),
        }
    }

    fn pool_size(self) -> usize {
        match self {
            Case::Uncontended => UNCONTENDED_POOL,
            Case::Contended { pool, .. } | Case::Fairness { pool, .. } => pool,
        }
    }

    fn contenders(self) -> &'static [Contender] {
        match self {
            Case::Uncontended => &Contender::ALL,
            _ => &Contender::MULTI_TASK,
        }
    }

    /// The metrics this case reports per contender: (key suffix, table label).
    fn metrics(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Case::Uncontended | Case::Contended { .. } => &[("ns", "ns/op")],
            Case::Fairness { .. } => &[
                ("p50_ns", "wait p50 ns"),
                ("p99_ns", "wait p99 ns"),
                ("p999_ns", "wait p99.9 ns"),
                ("max_ns", "wait max ns"),
                ("ns", "ns/op"),
            ],
        }
    }

    fn label(self) -> String {
        match self {
            Case::Uncontended => format!("uncontended p{UNCONTENDED_POOL} t1"),
            Case::Contended { pool, tasks } => format!("contended p{pool} t{tasks}"),
            Case::Fairness { pool, tasks } => format!("fairness p{pool} t{tasks}"),
        }
    }
}

/// A pool under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    /// pool-core, plain `acquire()` (WARM).
    OursWarm,
    /// pool-core, `acquire_for_session("s")` (DEDICATED).
    OursDedicated,
    Deadpool,
    Bb8,
    Fastpool,
}

impl Contender {
    /// Table order; the contenders of the uncontended case.
    const ALL: [Contender; 5] = [
        Contender::OursWarm,
        Contender::OursDedicated,
        Contender::Deadpool,
        Contender::Bb8,
        Contender::Fastpool,
    ];
    /// The contenders of the multi-task cases.
    const MULTI_TASK: [Contender; 4] = [
        Contender::OursWarm,
        Contender::Deadpool,
        Contender::Bb8,
        Contender::Fastpool,
    ];
    const PEERS: [Contender; 3] = [Contender::Deadpool, Contender::Bb8, Contender::Fastpool];

    /// The name in `bench.<case>.<key>_…` lines. Our WARM path is just `ours` in the cases
    /// where it is our only contender.
    fn key(self, case: Case) -> &'static str {
        match self {
            Contender::OursWarm if case == Case::Uncontended => "ours_warm",
            Contender::OursWarm => "ours",
            Contender::OursDedicated => "ours_dedicated",
            Contender::Deadpool => "deadpool",
            Contender::Bb8 => "bb8",
            Contender::Fastpool => "fastpool",
        }
    }

    /// The `--pool` name that selects this contender.
    fn pool(self) -> &'static str {
        match self {
            Contender::OursWarm | Contender::OursDedicated => "ours",
            Contender::Deadpool => "deadpool",
            Contender::Bb8 => "bb8",
            Contender::Fastpool => "fastpool",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Contender::OursWarm => "ours WARM",
            Contender::OursDedicated => "ours DEDIC.",
            Contender::Deadpool => "deadpool",
            Contender::Bb8 => "bb8",
            Contender::Fastpool => "fastpool",
        }
    }

    fn is_ours(self) -> bool {
        matches!(self, Contender::OursWarm | Contender::OursDedicated)
    }
}

/// One measurement's figures, in the order of [`Case::metrics`].
type Sample = Vec<f64>;

/// Why a measurement produced no figure.
#[derive(Debug)]
enum Failure {
    /// It exceeded its time bound.
    Hang,
    /// An acquire or a build failed, or a pool-core accounting check failed.
    Failed(String),
}

/// Everything measured for one (case, contender).
#[derive(Debug)]
struct Cell {
    case: Case,
    contender: Contender,
    samples: Vec<Sample>,
    failure: Option<Failure>,
}

impl Cell {
    /// The median over rounds of metric `index`, if every round succeeded.
    fn median(&self, index: usize) -> Option<f64> {
        if self.failure.is_some() || self.samples.is_empty() {
            return None;
        }
        let mut values: Vec<f64> = self.samples.iter().map(|s| s[index]).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        Some(if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        })
    }

    fn status(&self) -> Option<&'static str> {
        match self.failure {
            Some(Failure::Hang) => Some("HANG"),
            Some(Failure::Failed(_)) => Some("FAILED"),
            None => None,
        }
    }
}

/// Runs the benchmark and prints the table and the machine-readable lines.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let params = Params::from_args(args);
    print_header(args, &params);

    let cases: Vec<Case> = CASES
        .into_iter()
        .filter(|case| args.cases.is_empty() || args.cases.contains(&case.name()))
        .collect();
    let mut cells: Vec<Cell> = cases
        .iter()
        .flat_map(|&case| {
            case.contenders()
                .iter()
                .filter(|c| args.pools.is_empty() || args.pools.iter().any(|p| p == c.pool()))
                .map(move |&contender| Cell {
                    case,
                    contender,
                    samples: Vec::new(),
                    failure: None,
                })
        })
        .collect();

    let started = Instant::now();
    for round in 0..params.rounds {
        eprintln!(
            "round {}/{} ({:.1} s elapsed)",
            round + 1,
            params.rounds,
            started.elapsed().as_secs_f64()
        );
        for &case in &cases {
            for contender in round_order(case.contenders(), round) {
                let Some(cell) = cells
                    .iter_mut()
                    .find(|c| c.case == case && c.contender == contender)
                else {
                    continue;
                };
                if cell.failure.is_some() {
                    continue; // A hang or failure is not retried: report it once.
                }
                match measure_bounded(case, contender, params) {
                    Ok(sample) => cell.samples.push(sample),
                    Err(failure) => {
                        let name = format!("{}.{}", case.name(), contender.key(case));
                        match &failure {
                            Failure::Hang => {
                                eprintln!("  {name}: exceeded its {:?} bound (HANG)", params.bound)
                            }
                            Failure::Failed(why) => eprintln!("  {name}: FAILED: {why}"),
                        }
                        cell.failure = Some(failure);
                    }
                }
            }
        }
    }
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());

    print_table(&cases, &cells);
    print_machine_lines(&cases, &cells);

    let failed: Vec<String> = cells
        .iter()
        .filter_map(|c| {
            c.status()
                .map(|s| format!("{}.{}: {s}", c.case.name(), c.contender.key(c.case)))
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} configuration(s) hung or failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The contenders in this round's order: rotated by the round, reversed on odd rounds, so
/// that no pool always runs first (cold caches) or right after the same neighbour.
fn round_order(contenders: &[Contender], round: u32) -> Vec<Contender> {
    let mut order = contenders.to_vec();
    let len = order.len();
    order.rotate_left(round as usize % len);
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

fn print_header(args: &Args, params: &Params) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    println!("pool benchmark: pool-core vs deadpool 0.13 (managed), bb8 0.9, fastpool 1");
    println!(
        "machine: {cpus} logical CPU(s), {model}; {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!(
        "mode: {}; {} rounds (median reported); ops per measurement: uncontended {}, \
         contended {}, fairness {}; bound {:?} per measurement",
        if args.quick { "--quick" } else { "full" },
        params.rounds,
        params.uncontended_ops,
        params.contended_total_ops,
        params.fairness_total_ops,
        params.bound
    );
}

fn format_value(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn print_table(cases: &[Case], cells: &[Cell]) {
    const FIRST: usize = 34;
    const WIDTH: usize = 13;
    println!();
    print!("{:<FIRST$}", "case / metric");
    for contender in Contender::ALL {
        print!("{:>WIDTH$}", contender.column());
    }
    println!();
    println!("{}", "-".repeat(FIRST + WIDTH * Contender::ALL.len()));
    for &case in cases {
        for (index, (_, label)) in case.metrics().iter().enumerate() {
            print!("{:<FIRST$}", format!("{} {label}", case.label()));
            for contender in Contender::ALL {
                let text = match cells
                    .iter()
                    .find(|c| c.case == case && c.contender == contender)
                {
                    None => "-".to_owned(),
                    Some(cell) => match (cell.status(), cell.median(index)) {
                        (Some(status), _) => status.to_owned(),
                        (None, Some(value)) => format_value(value),
                        (None, None) => "-".to_owned(),
                    },
                };
                print!("{text:>WIDTH$}");
            }
            println!();
        }
    }
    println!();
    println!("lower is better; ratios below are peer / ours, so above 1 means ours is faster");
    let failures: Vec<&Cell> = cells
        .iter()
        .filter(|c| matches!(c.failure, Some(Failure::Failed(_))))
        .collect();
    for cell in failures {
        if let Some(Failure::Failed(why)) = &cell.failure {
            println!(
                "failure: {}.{}: {why}",
                cell.case.name(),
                cell.contender.key(cell.case)
            );
        }
    }
    println!();
}

fn print_machine_lines(cases: &[Case], cells: &[Cell]) {
    for cell in cells {
        let case = cell.case;
        for (index, (suffix, _)) in case.metrics().iter().enumerate() {
            let name = format!(
                "bench.{}.{}_{suffix}",
                case.name(),
                cell.contender.key(case)
            );
            match (cell.status(), cell.median(index)) {
                (Some(status), _) => println!("{name}: {status}"),
                (None, Some(value)) => println!("{name}: {value:.1}"),
                (None, None) => println!("{name}: FAILED"),
            }
        }
    }
    for &case in cases {
        for ours in case.contenders().iter().filter(|c| c.is_ours()) {
            let Some(our_cell) = cells
                .iter()
                .find(|c| c.case == case && c.contender == *ours)
            else {
                continue;
            };
            for peer in Contender::PEERS {
                let Some(peer_cell) = cells.iter().find(|c| c.case == case && c.contender == peer)
                else {
                    continue;
                };
                for (index, (suffix, _)) in case.metrics().iter().enumerate() {
                    // `ns` (ns/op) ratios are named after the case; the fairness
                    // percentiles get a `_p50` / `_p99` / `_p999` suffix.
                    let case_name = match suffix.strip_suffix("_ns") {
                        Some(percentile) => format!("{}_{percentile}", case.name()),
                        None => case.name(),
                    };
                    let name =
                        format!("ratio.{}_vs_{}.{case_name}", ours.key(case), peer.key(case));
                    match (peer_cell.median(index), our_cell.median(index)) {
                        (Some(theirs), Some(mine)) if mine > 0.0 => {
                            let ratio = theirs / mine;
                            if ratio < 0.1 {
                                println!("{name}: {ratio:.4}");
                            } else {
                                println!("{name}: {ratio:.2}");
                            }
                        }
                        _ => println!("{name}: n/a"),
                    }
                }
            }
        }
    }
}

/// Runs one measurement on its own thread and runtime, bounded twice: by a timeout inside
/// the runtime and by a watchdog outside it (a thread stuck in a blocking call cannot be
/// stopped; it is abandoned, and the process exits without waiting for it).
fn measure_bounded(case: Case, contender: Contender, params: Params) -> Result<Sample, Failure> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("bench-{}-{}", case.name(), contender.key(case)))
        .spawn(move || {
            let _ = tx.send(measure_in_runtime(case, contender, params));
        });
    let handle = match spawned {
        Ok(handle) => handle,
        Err(error) => {
            return Err(Failure::Failed(format!(
                "could not spawn a thread: {error}"
            )));
        }
    };
    // Grace beyond the inner bound: runtime build and shutdown.
    match rx.recv_timeout(params.bound + Duration::from_secs(5)) {
        Ok(result) => {
            let _ = handle.join();
            result
        }
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Failure::Hang),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let why = match handle.join() {
                Err(panic) => panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".to_owned()),
                Ok(()) => "no result".to_owned(),
            };
            Err(Failure::Failed(format!("panicked: {why}")))
        }
    }
}

fn measure_in_runtime(case: Case, contender: Contender, params: Params) -> Result<Sample, Failure> {
    let runtime = match case {
        Case::Uncontended => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Case::Contended { .. } | Case::Fairness { .. } => {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        }
    };
    let runtime = runtime.map_err(|e| Failure::Failed(format!("runtime: {e}")))?;
    let outcome = runtime.block_on(async {
        tokio::time::timeout(params.bound, run_contender(case, contender, params)).await
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(Ok(sample)) => Ok(sample),
        Ok(Err(why)) => Err(Failure::Failed(why)),
        Err(_elapsed) => Err(Failure::Hang),
    }
}

/// Builds the contender's pool, fills it, measures the case, and for pool-core checks the
/// pool's accounting and shuts it down.
async fn run_contender(case: Case, contender: Contender, params: Params) -> Result<Sample, String> {
    let size = case.pool_size();
    match contender {
        Contender::OursWarm | Contender::OursDedicated => {
            let dedicated = contender == Contender::OursDedicated;
            let pool = pool_core::Pool::builder(OursManager::default())
                .name("bench")
                .warm_target(size)
                .max_size(size)
                .session_awareness(dedicated)
                .build()
                .map_err(|e| e.to_string())?;
            pool.prepare().await.map_err(|e| format!("prepare: {e}"))?;
            let (sample, acquires) = if dedicated {
                measure(case, Arc::new(OursSession(pool.clone())), params).await?
            } else {
                measure(case, Arc::new(OursPlain(pool.clone())), params).await?
            };
            check_ours(&pool, dedicated, acquires).await?;
            Ok(sample)
        }
        Contender::Deadpool => {
            let pool = deadpool::managed::Pool::builder(DeadpoolManager::default())
                .max_size(size)
                .build()
                .map_err(|e| e.to_string())?;
            let subject = Arc::new(DeadpoolSubject(pool));
            fill(&*subject, size).await?;
            Ok(measure(case, subject, params).await?.0)
        }
        Contender::Bb8 => {
            let size_u32 = u32::try_from(size).map_err(|e| e.to_string())?;
            let pool = bb8::Pool::builder()
                .max_size(size_u32)
                .build(Bb8Manager::default())
                .await
                .map_err(|e| format!("{e:?}"))?;
            let subject = Arc::new(Bb8Subject(pool));
            fill(&*subject, size).await?;
            Ok(measure(case, subject, params).await?.0)
        }
        Contender::Fastpool => {
            let pool = fastpool_peer::new_pool(size);
            let subject = Arc::new(fastpool_peer::Subject(pool));
            fill(&*subject, size).await?;
            Ok(measure(case, subject, params).await?.0)
        }
    }
}

/// Checks pool-core's own books after a measurement, then shuts it down and checks that
/// nothing is left behind.
async fn check_ours(
    pool: &pool_core::Pool<OursManager>,
    dedicated: bool,
    acquires: u64,
) -> Result<(), String> {
    let size = pool.config().max_size as u64;
    let s = pool.snapshot();
    let mut problems = Vec::new();
    if s.allocations_total != acquires {
        problems.push(format!(
            "allocations_total {} != {acquires} acquires made",
            s.allocations_total
        ));
    }
    if s.allocations_cold != 0 {
        problems.push(format!(
            "{} COLD acquires on a prepared pool with warm_target = max_size",
            s.allocations_cold
        ));
    }
    let (want_dedicated, want_warm) = if dedicated {
        (acquires.saturating_sub(1), acquires.min(1))
    } else {
        (0, acquires)
    };
    if s.allocations_dedicated != want_dedicated || s.allocations_warm != want_warm {
        problems.push(format!(
            "tiers dedicated/warm {}/{} != expected {want_dedicated}/{want_warm}",
            s.allocations_dedicated, s.allocations_warm
        ));
    }
    if s.created_total != size {
        problems.push(format!(
            "created_total {} != pool size {size} (nothing should be recreated)",
            s.created_total
        ));
    }
    if s.created_total != s.closed_total + s.size as u64 {
        problems.push(format!(
            "created {} != closed {} + live {}",
            s.created_total, s.closed_total, s.size
        ));
    }
    // A session's parked resource still counts as in use (and as dedicated).
    let parked = usize::from(dedicated);
    if s.in_use != parked || s.dedicated != parked || s.waiting != 0 || s.creating != 0 {
        problems.push(format!(
            "after the run: in_use {} (dedicated {}), waiting {}, creating {}; expected {parked} ({parked}), 0, 0",
            s.in_use, s.dedicated, s.waiting, s.creating
        ));
    }
    pool.shutdown().await;
    let after = pool.snapshot();
    if after.closed_total != after.created_total {
        problems.push(format!(
            "after shutdown: closed {} != created {}",
            after.closed_total, after.created_total
        ));
    }
    if pool.background_tasks() != 0 {
        problems.push(format!(
            "after shutdown: {} background task(s) still running",
            pool.background_tasks()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("pool-core accounting: {}", problems.join("; ")))
    }
}

// ---------------------------------------------------------------------------------------
// The measurements, generic over the pool.

/// What the measurements need from a pool: acquire a guard that derefs to the resource and
/// gives it back on drop.
trait Subject: Send + Sync + 'static {
    type Guard<'a>: Deref<Target = u64> + Send
    where
        Self: 'a;

    fn acquire(&self) -> impl Future<Output = Result<Self::Guard<'_>, String>> + Send;
}

/// Checks out `size` resources at once and returns them, so a lazily filled pool holds
/// `size` idle resources before timing starts.
async fn fill<S: Subject>(subject: &S, size: usize) -> Result<(), String> {
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(subject.acquire().await?);
    }
    drop(held);
    Ok(())
}

/// Runs `case` against `subject`; returns the figures and the number of acquires made
/// (warm-up included).
async fn measure<S: Subject>(
    case: Case,
    subject: Arc<S>,
    params: Params,
) -> Result<(Sample, u64), String> {
    match case {
        Case::Uncontended => {
            let ops = params.uncontended_ops;
            let warmup = ops / 10;
            acquire_release_loop(&*subject, warmup).await?;
            let started = Instant::now();
            acquire_release_loop(&*subject, ops).await?;
            let ns = started.elapsed().as_nanos() as f64 / ops as f64;
            Ok((vec![ns], warmup + ops))
        }
        Case::Contended { tasks, .. } => {
            let per_task = (params.contended_total_ops / tasks as u64).max(1);
            let warmup = (per_task / 10).max(1);
            contended(&subject, tasks, warmup).await?;
            let started = Instant::now();
            contended(&subject, tasks, per_task).await?;
            let total = per_task * tasks as u64;
            let ns = started.elapsed().as_nanos() as f64 / total as f64;
            Ok((vec![ns], (warmup + per_task) * tasks as u64))
        }
        Case::Fairness { tasks, .. } => {
            let per_task = (params.fairness_total_ops / tasks as u64).max(1);
            let warmup = (per_task / 10).max(1);
            fairness(&subject, tasks, warmup).await?;
            let started = Instant::now();
            let mut waits = fairness(&subject, tasks, per_task).await?;
            let ns = started.elapsed().as_nanos() as f64 / waits.len().max(1) as f64;
            waits.sort_unstable();
            let sample = vec![
                percentile(&waits, 0.50),
                percentile(&waits, 0.99),
                percentile(&waits, 0.999),
                waits.last().map_or(0.0, |&max| max as f64),
                ns,
            ];
            Ok((sample, (warmup + per_task) * tasks as u64))
        }
    }
}

async fn acquire_release_loop<S: Subject>(subject: &S, ops: u64) -> Result<(), String> {
    for _ in 0..ops {
        let guard = subject.acquire().await?;
        black_box(*guard);
        drop(guard);
    }
    Ok(())
}

/// `tasks` tasks, each looping acquire + release `per_task` times.
async fn contended<S: Subject>(
    subject: &Arc<S>,
    tasks: usize,
    per_task: u64,
) -> Result<(), String> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let subject = subject.clone();
        set.spawn(async move { acquire_release_loop(&*subject, per_task).await });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| format!("task: {e}"))??;
    }
    Ok(())
}

/// `tasks` tasks, each acquiring `per_task` times and holding the resource across one
/// `yield_now()`; returns every acquire's wait in ns.
async fn fairness<S: Subject>(
    subject: &Arc<S>,
    tasks: usize,
    per_task: u64,
) -> Result<Vec<u64>, String> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let subject = subject.clone();
        set.spawn(async move {
            let mut waits = Vec::with_capacity(per_task as usize);
            for _ in 0..per_task {
                let asked = Instant::now();
                let guard = subject.acquire().await?;
                waits.push(u64::try_from(asked.elapsed().as_nanos()).unwrap_or(u64::MAX));
                tokio::task::yield_now().await;
                black_box(*guard);
                drop(guard);
            }
            Ok::<_, String>(waits)
        });
    }
    let mut all = Vec::with_capacity(tasks * per_task as usize);
    while let Some(joined) = set.join_next().await {
        all.extend(joined.map_err(|e| format!("task: {e}"))??);
    }
    Ok(all)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

// ---------------------------------------------------------------------------------------
// The no-op resource, and each pool's manager and subject for it.

/// Hands out `0, 1, 2, …`: creation is immediate.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// pool-core: `create` only; `warm`, `is_ready`, `reset` and `close` keep their no-op
/// defaults.
#[derive(Debug, Default)]
struct OursManager(Counter);

impl pool_core::Manager for OursManager {
    type Resource = u64;
    type Error = Infallible;

    async fn create(&self) -> Result<u64, Infallible> {
        Ok(self.0.next())
    }
}

/// Our WARM path.
#[derive(Debug)]
struct OursPlain(pool_core::Pool<OursManager>);

impl Subject for OursPlain {
    type Guard<'a> = pool_core::Pooled<OursManager>;

    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.acquire().await.map_err(|e| e.to_string())
    }
}

/// Our DEDICATED path: the same session every time.
#[derive(Debug)]
struct OursSession(pool_core::Pool<OursManager>);

impl Subject for OursSession {
    type Guard<'a> = pool_core::Pooled<OursManager>;

    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0
            .acquire_for_session("s")
            .await
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Default)]
struct DeadpoolManager(Counter);

impl deadpool::managed::Manager for DeadpoolManager {
    type Type = u64;
    type Error = Infallible;

    async fn create(&self) -> Result<u64, Infallible> {
        Ok(self.0.next())
    }

    async fn recycle(
        &self,
        _: &mut u64,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

struct DeadpoolSubject(deadpool::managed::Pool<DeadpoolManager>);

impl Subject for DeadpoolSubject {
    type Guard<'a> = deadpool::managed::Object<DeadpoolManager>;

    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.get().await.map_err(|e| e.to_string())
    }
}

#[derive(Debug, Default)]
struct Bb8Manager(Counter);

impl bb8::ManageConnection for Bb8Manager {
    type Connection = u64;
    type Error = Infallible;

    async fn connect(&self) -> Result<u64, Infallible> {
        Ok(self.0.next())
    }

    async fn is_valid(&self, _: &mut u64) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _: &mut u64) -> bool {
        false
    }
}

struct Bb8Subject(bb8::Pool<Bb8Manager>);

impl Subject for Bb8Subject {
    type Guard<'a> = bb8::PooledConnection<'a, Bb8Manager>;

    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.get().await.map_err(|e| e.to_string())
    }
}

/// fastpool 1.1 marks itself deprecated (its successor is asyncband); it is still the
/// released crate the issue asks us to compare with.
#[allow(deprecated)]
mod fastpool_peer {
    use std::convert::Infallible;
    use std::sync::Arc;

    use fastpool::bounded::{Object, Pool, PoolConfig};
    use fastpool::{ManageObject, ObjectStatus};

    use super::Counter;

    #[derive(Debug, Default)]
    pub(super) struct Manager(Counter);

    impl ManageObject for Manager {
        type Object = u64;
        type Error = Infallible;

        async fn create(&self) -> Result<u64, Infallible> {
            Ok(self.0.next())
        }

        async fn is_recyclable(&self, _: &mut u64, _: &ObjectStatus) -> Result<(), Infallible> {
            Ok(())
        }
    }

    pub(super) fn new_pool(size: usize) -> Arc<Pool<Manager>> {
        Pool::new(PoolConfig::new(size), Manager::default())
    }

    pub(super) struct Subject(pub(super) Arc<Pool<Manager>>);

    impl super::Subject for Subject {
        type Guard<'a> = Object<Manager>;

        async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
            self.0.get().await.map_err(|e| match e {})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_names_match_the_cli_choices() {
        let names: Vec<String> = CASES.iter().map(|c| c.name()).collect();
        assert_eq!(names, CASE_NAMES);
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let values: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&values, 0.5), 500.0);
        assert_eq!(percentile(&values, 0.99), 990.0);
        assert_eq!(percentile(&values, 0.999), 999.0);
        assert_eq!(percentile(&[7], 0.999), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn round_order_rotates_and_reverses() {
        let all = Contender::MULTI_TASK;
        assert_eq!(round_order(&all, 0), all.to_vec());
        let second = round_order(&all, 1);
        assert_eq!(second.first(), Some(&Contender::OursWarm));
        assert_eq!(second.last(), Some(&Contender::Deadpool));
    }
}
