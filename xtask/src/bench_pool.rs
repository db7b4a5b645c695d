//! `cargo xtask bench pool`: pool-core against deadpool (managed), bb8 and fastpool, and a
//! bare baseline, in one run, on the same no-op resource.
//!
//! The resource is a `u64` from a counter: `create` returns at once, and every check the
//! pools make on it (pool-core `is_ready`, deadpool `recycle`, bb8 `is_valid` /
//! `has_broken`, fastpool `is_recyclable`) is a no-op, so the figures are pure pool
//! overhead. Every pool runs with its default settings except its size; every pool is
//! filled to its size before timing (pool-core with `warm_target = max_size` and
//! `prepare()`, the peers by checking out `size` resources at once and returning them).
//!
//! The bare baseline (`bare`) is the least an async pool can do: a tokio `Semaphore` whose
//! permits count the free resources, and a lock-free bounded queue (crossbeam's
//! `ArrayQueue`) that holds them. An acquire takes a permit and pops; a release pushes and
//! returns the permit. No timeouts, no tiers, no statistics, no sessions, no health checks:
//! it shows how far each pool is from the physical limit of the same work.
//!
//! Cases:
//! 1. `uncontended`: one task on a current-thread runtime, acquire + release, ns/op. Ours
//!    three times: the WARM path (`acquire()`), the DEDICATED path by session id
//!    (`acquire_for_session("s")`, the same session every time) and the DEDICATED path
//!    through a session handle the caller keeps (`pool.session("s")`, then
//!    `handle.acquire()`).
//! 2. `lock_throughput_p<P>_t<T>`: a 2-worker multi-thread runtime, `T` tasks each looping
//!    acquire + release on a pool of `P`, never holding a resource across an await; ns/op =
//!    wall time / total ops. With 2 workers at most 2 resources are ever out, so no task
//!    waits for a resource: this measures the cost of the pool's lock (or atomics) under
//!    two threads, not waiting.
//! 3. `contended_hold_p8_t64`: real contention. 64 tasks on a pool of 8, each holding its
//!    resource across [`HOLD_YIELDS`] `yield_now()`s, so most tasks wait for a returned
//!    resource at any moment. Reports throughput (wall time per acquire, `ns/op`) and every
//!    acquire's wait: p50 / p99 / p99.9 / max, in ns. In a FIFO queue the median wait is
//!    about (tasks - pool) x ns/op, so a higher median with a FIFO pool means lower
//!    hand-over throughput, not unfairness. A pool that lets a releasing task take its
//!    resource straight back starves the others instead: tiny p50, huge p99.9 and max.
//! 4. `sessions_10` and `sessions_100k`: our DEDICATED hit with 10 and with 100,000 live
//!    sessions, each holding its own resource, by session id and through session handles
//!    (one per session, each used once before timing so it knows its slot). The hits cycle through every live session in
//!    a shuffled order (a voice service interleaves its calls; hitting one hot session
//!    among 100,000 would measure only a hash probe on warm caches), on a current-thread
//!    runtime. `sessions_100k` also measures the memory one live session costs, in a fresh
//!    child process per round (this process's allocator would reuse memory freed by
//!    earlier rounds and hide the growth): the growth of the child's resident set
//!    (`VmRSS` in `/proc/self/status`) while 100,000 sessions are bound, divided by
//!    100,000. The session ids are built before that window, so only the pool's own memory
//!    counts (its map entry, id copy, slot and parked resource).
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
    /// Run only these cases (repeatable): uncontended, lock_throughput_p4_t16,
    /// lock_throughput_p8_t64, contended_hold_p8_t64, sessions_10, sessions_100k
    /// [default: all].
    #[arg(long = "case", value_name = "CASE", value_parser = CASE_NAMES)]
    pub cases: Vec<String>,
    /// Run only these pools (repeatable; `ours` is both our WARM and DEDICATED paths), e.g.
    /// to profile one of them [default: all].
    #[arg(long = "pool", value_name = "POOL", value_parser = ["ours", "deadpool", "bb8", "fastpool", "bare"])]
    pub pools: Vec<String>,
    /// Internal: bind 100,000 sessions in this fresh process and print the resident
    /// memory they added per session (the sessions_100k case runs this as a child).
    #[arg(long, hide = true)]
    pub session_memory_probe: bool,
}

/// The line the memory probe prints, followed by the bytes per session.
const PROBE_PREFIX: &str = "session_memory_probe.bytes_per_live_session: ";

const CASE_NAMES: [&str; 6] = [
    "uncontended",
    "lock_throughput_p4_t16",
    "lock_throughput_p8_t64",
    "contended_hold_p8_t64",
    "sessions_10",
    "sessions_100k",
];

/// How many `yield_now()`s a task of the contended-hold case holds its resource across.
/// Fixed before any pool was measured with it: long enough that the pool is empty most of
/// the time (so tasks really wait), short enough that the pool's hand-over cost, not the
/// hold, still dominates.
const HOLD_YIELDS: u32 = 4;

/// How much work each measurement does.
#[derive(Debug, Clone, Copy)]
struct Params {
    rounds: u32,
    /// Timed acquire+release operations of the uncontended case (plus 10 % warm-up).
    uncontended_ops: u64,
    /// Total timed operations of a lock-throughput case, split over its tasks.
    lock_total_ops: u64,
    /// Total timed acquires of the contended-hold case, split over its tasks.
    hold_total_ops: u64,
    /// Timed DEDICATED hits of a sessions case.
    session_ops: u64,
    bound: Duration,
}

impl Params {
    fn from_args(args: &Args) -> Self {
        let (rounds, uncontended_ops, lock_total_ops, hold_total_ops, session_ops) = if args.quick {
            (5, 500_000, 256_000, 64_000, 500_000)
        } else {
            (9, 2_000_000, 512_000, 256_000, 2_000_000)
        };
        Self {
            rounds: args.rounds.unwrap_or(rounds),
            uncontended_ops,
            lock_total_ops,
            hold_total_ops,
            session_ops,
            bound: Duration::from_secs(args.timeout_secs),
        }
    }
}

/// One benchmark case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Uncontended,
    LockThroughput { pool: usize, tasks: usize },
    ContendedHold { pool: usize, tasks: usize },
    Sessions { live: usize },
}

/// Pool size of the uncontended case.
const UNCONTENDED_POOL: usize = 4;

/// The live-session count of the case that also measures memory per session.
const SESSIONS_LARGE: usize = 100_000;

const CASES: [Case; 6] = [
    Case::Uncontended,
    Case::LockThroughput { pool: 4, tasks: 16 },
    Case::LockThroughput { pool: 8, tasks: 64 },
    Case::ContendedHold { pool: 8, tasks: 64 },
    Case::Sessions { live: 10 },
    Case::Sessions {
        live: SESSIONS_LARGE,
    },
];

/// The metric key of memory per live session; printed as
/// `bench.sessions.bytes_per_live_session`.
const BYTES_PER_SESSION: &str = "bytes_per_live_session";

impl Case {
    fn name(self) -> String {
        match self {
            Case::Uncontended => "uncontended".to_owned(),
            Case::LockThroughput { pool, tasks } => format!("lock_throughput_p{pool}_t{tasks}"),
            Case::ContendedHold { pool, tasks } => format!("contended_hold_p{pool}_t{tasks}"),
            Case::Sessions { live } if live % 1000 == 0 => format!("sessions_{}k", live / 1000),
            Case::Sessions { live } => format!("sessions_{live}"),
        }
    }

    fn pool_size(self) -> usize {
        match self {
            Case::Uncontended => UNCONTENDED_POOL,
            Case::LockThroughput { pool, .. } | Case::ContendedHold { pool, .. } => pool,
            Case::Sessions { live } => live,
        }
    }

    fn contenders(self) -> &'static [Contender] {
        match self {
            Case::Uncontended => &Contender::ALL,
            Case::Sessions { .. } => &Contender::SESSIONS,
            _ => &Contender::MULTI_TASK,
        }
    }

    /// The metrics this case reports per contender: (key suffix, table label).
    fn metrics(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Case::Uncontended | Case::LockThroughput { .. } => &[("ns", "ns/op")],
            Case::ContendedHold { .. } => &[
                ("ns", "ns/op"),
                ("p50_wait_ns", "wait p50 ns"),
                ("p99_wait_ns", "wait p99 ns"),
                ("p999_wait_ns", "wait p99.9 ns"),
                ("max_wait_ns", "wait max ns"),
            ],
            Case::Sessions { live } if live == SESSIONS_LARGE => &[
                ("ns", "ns/op"),
                (BYTES_PER_SESSION, "bytes per live session"),
            ],
            Case::Sessions { .. } => &[("ns", "ns/op")],
        }
    }

    fn label(self) -> String {
        match self {
            Case::Uncontended => format!("uncontended p{UNCONTENDED_POOL} t1"),
            Case::LockThroughput { pool, tasks } => format!("lock throughput p{pool} t{tasks}"),
            Case::ContendedHold { pool, tasks } => format!("contended hold p{pool} t{tasks}"),
            Case::Sessions { live } => format!("{live} live sessions"),
        }
    }

    fn is_multi_thread(self) -> bool {
        matches!(
            self,
            Case::LockThroughput { .. } | Case::ContendedHold { .. }
        )
    }
}

/// A pool under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contender {
    /// pool-core, plain `acquire()` (WARM).
    OursWarm,
    /// pool-core, `acquire_for_session("s")` (DEDICATED).
    OursDedicated,
    /// pool-core, `pool.session("s")` kept, then `acquire()` on it (DEDICATED).
    OursSessionHandle,
    Deadpool,
    Bb8,
    Fastpool,
    /// A semaphore and a lock-free queue: the physical limit (see the module docs).
    Bare,
}

impl Contender {
    /// Table order; the contenders of the uncontended case.
    const ALL: [Contender; 7] = [
        Contender::OursWarm,
        Contender::OursDedicated,
        Contender::OursSessionHandle,
        Contender::Deadpool,
        Contender::Bb8,
        Contender::Fastpool,
        Contender::Bare,
    ];
    /// The contenders of the multi-task cases.
    const MULTI_TASK: [Contender; 5] = [
        Contender::OursWarm,
        Contender::Deadpool,
        Contender::Bb8,
        Contender::Fastpool,
        Contender::Bare,
    ];
    /// The contenders of the sessions cases: only pool-core has sessions.
    const SESSIONS: [Contender; 2] = [Contender::OursDedicated, Contender::OursSessionHandle];
    /// What our figures are compared with, one `ratio.` line each.
    const PEERS: [Contender; 4] = [
        Contender::Deadpool,
        Contender::Bb8,
        Contender::Fastpool,
        Contender::Bare,
    ];

    /// The name in `bench.<case>.<key>_…` lines. Our WARM path is just `ours` in the cases
    /// where it is our only contender.
    fn key(self, case: Case) -> &'static str {
        match self {
            Contender::OursWarm if case == Case::Uncontended => "ours_warm",
            Contender::OursWarm => "ours",
            Contender::OursDedicated => "ours_dedicated",
            Contender::OursSessionHandle => "ours_session_handle",
            Contender::Deadpool => "deadpool",
            Contender::Bb8 => "bb8",
            Contender::Fastpool => "fastpool",
            Contender::Bare => "bare",
        }
    }

    /// The `--pool` name that selects this contender.
    fn pool(self) -> &'static str {
        match self {
            Contender::OursWarm | Contender::OursDedicated | Contender::OursSessionHandle => "ours",
            Contender::Deadpool => "deadpool",
            Contender::Bb8 => "bb8",
            Contender::Fastpool => "fastpool",
            Contender::Bare => "bare",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Contender::OursWarm => "ours WARM",
            Contender::OursDedicated => "ours DEDIC.",
            Contender::OursSessionHandle => "ours HANDLE",
            Contender::Deadpool => "deadpool",
            Contender::Bb8 => "bb8",
            Contender::Fastpool => "fastpool",
            Contender::Bare => "bare",
        }
    }

    fn is_ours(self) -> bool {
        matches!(
            self,
            Contender::OursWarm | Contender::OursDedicated | Contender::OursSessionHandle
        )
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
        // A contender may report fewer metrics than its case lists (only the DEDICATED
        // path reports memory per session).
        let mut values: Vec<f64> = self
            .samples
            .iter()
            .filter_map(|s| s.get(index).copied())
            .collect();
        if values.is_empty() {
            return None;
        }
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
    if args.session_memory_probe {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let bytes = runtime
            .block_on(session_memory(SESSIONS_LARGE))
            .map_err(anyhow::Error::msg)?;
        println!("{PROBE_PREFIX}{bytes:.1}");
        return Ok(());
    }
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
    print_floor(params.uncontended_ops * 4, params.rounds);

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

/// What the machine's synchronisation primitives cost one thread, uncontended (median of
/// `rounds` runs of `ops` each), and the least a DEDICATED hit can cost when its guard is
/// `'static`: the guard keeps the pool and the session slot alive (two `Arc` clone + drop),
/// the resource is taken from the slot and parked back under a lock (two lock + unlock), and
/// the tier counter is exact (one atomic add). The sum is a floor, not a measurement of
/// any pool: it says how far a target such as "a DEDICATED hit under 50 ns" is from what
/// this machine allows.
fn print_floor(ops: u64, rounds: u32) {
    fn per_op(ops: u64, rounds: u32, mut body: impl FnMut()) -> f64 {
        let mut runs: Vec<f64> = (0..rounds.max(1))
            .map(|_| {
                let started = Instant::now();
                for _ in 0..ops {
                    body();
                }
                started.elapsed().as_nanos() as f64 / ops as f64
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    }
    let counter = AtomicU64::new(0);
    let atomic_add = per_op(ops, rounds, || {
        black_box(&counter).fetch_add(1, Ordering::Relaxed);
    });
    let lock = std::sync::Mutex::new(0u64);
    let lock_unlock = per_op(ops, rounds, || {
        *black_box(&lock).lock().unwrap_or_else(|e| e.into_inner()) += 1;
    });
    let shared = Arc::new(0u64);
    let arc_clone_drop = per_op(ops, rounds, || {
        drop(black_box(Arc::clone(black_box(&shared))));
    });
    let static_guard_hit = 2.0 * arc_clone_drop + 2.0 * lock_unlock + atomic_add;
    println!();
    println!(
        "floor (one thread, uncontended): atomic add {atomic_add:.1} ns, mutex lock + unlock \
         {lock_unlock:.1} ns, Arc clone + drop {arc_clone_drop:.1} ns; a DEDICATED hit with a \
         'static guard needs at least 2 Arc + 2 lock + 1 add = {static_guard_hit:.1} ns"
    );
    println!("bench.floor.atomic_add_ns: {atomic_add:.1}");
    println!("bench.floor.mutex_lock_unlock_ns: {lock_unlock:.1}");
    println!("bench.floor.arc_clone_drop_ns: {arc_clone_drop:.1}");
    println!("bench.floor.static_guard_dedicated_hit_ns: {static_guard_hit:.1}");
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
    println!(
        "pool benchmark: pool-core vs deadpool 0.13 (managed), bb8 0.9, fastpool 1, and a bare \
         semaphore + lock-free queue"
    );
    println!(
        "machine: {cpus} logical CPU(s), {model}; {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!(
        "mode: {}; {} rounds (median reported); ops per measurement: uncontended {}, \
         lock throughput {}, contended hold {} (held across {HOLD_YIELDS} yields), sessions {}; \
         bound {:?} per measurement",
        if args.quick { "--quick" } else { "full" },
        params.rounds,
        params.uncontended_ops,
        params.lock_total_ops,
        params.hold_total_ops,
        params.session_ops,
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
    const FIRST: usize = 46;
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
            if *suffix == BYTES_PER_SESSION && cell.contender != Contender::OursDedicated {
                continue;
            }
            let name = if *suffix == BYTES_PER_SESSION {
                format!("bench.sessions.{BYTES_PER_SESSION}")
            } else {
                format!(
                    "bench.{}.{}_{suffix}",
                    case.name(),
                    cell.contender.key(case)
                )
            };
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
            for peer in Contender::PEERS.iter().copied() {
                let Some(peer_cell) = cells.iter().find(|c| c.case == case && c.contender == peer)
                else {
                    continue;
                };
                for (index, (suffix, _)) in case.metrics().iter().enumerate() {
                    // `ns` (ns/op) ratios are named after the case; the wait percentiles
                    // get a `_p50_wait` / `_p99_wait` / ... suffix.
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
    // How a DEDICATED hit scales with the number of live sessions (above 1: slower with
    // many sessions). Printed only when both session cases ran.
    for contender in Contender::SESSIONS {
        let session_ns = |live: usize| {
            cells
                .iter()
                .find(|c| c.case == Case::Sessions { live } && c.contender == contender)
                .and_then(|c| c.median(0))
        };
        if let (Some(large), Some(small)) = (session_ns(SESSIONS_LARGE), session_ns(10))
            && small > 0.0
        {
            println!(
                "ratio.sessions_100k_vs_10.{}: {:.2}",
                contender.key(Case::Sessions { live: 10 }),
                large / small
            );
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
    let runtime = if case.is_multi_thread() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
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
    if let Case::Sessions { live } = case {
        return sessions(live, contender, params).await;
    }
    let size = case.pool_size();
    match contender {
        Contender::OursWarm | Contender::OursDedicated | Contender::OursSessionHandle => {
            let dedicated = contender != Contender::OursWarm;
            let pool = pool_core::Pool::builder(OursManager::default())
                .name("bench")
                .warm_target(size)
                .max_size(size)
                .session_awareness(dedicated)
                .build()
                .map_err(|e| e.to_string())?;
            pool.prepare().await.map_err(|e| format!("prepare: {e}"))?;
            let (sample, acquires) = match contender {
                Contender::OursDedicated => {
                    measure(case, Arc::new(OursSession(pool.clone())), params).await?
                }
                Contender::OursSessionHandle => {
                    measure(case, Arc::new(OursHandle(pool.session("s"))), params).await?
                }
                _ => measure(case, Arc::new(OursPlain(pool.clone())), params).await?,
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
        Contender::Bare => {
            let subject = Arc::new(BareSubject::full(size)?);
            Ok(measure(case, subject, params).await?.0)
        }
    }
}

/// The sessions case: binds `live` sessions (each to its own resource), then measures
/// DEDICATED hits cycling through all of them in a shuffled order. With
/// [`SESSIONS_LARGE`] sessions it also measures the resident memory the binds added.
async fn sessions(live: usize, contender: Contender, params: Params) -> Result<Sample, String> {
    let pool = pool_core::Pool::builder(OursManager::default())
        .name("bench-sessions")
        .max_size(live)
        .session_awareness(true)
        .build()
        .map_err(|e| e.to_string())?;
    let bind_order: Vec<String> = (0..live).map(|i| format!("call-{i:06}")).collect();
    // The hit order is a shuffle of the bind order, and its strings are allocated in hit
    // order, so walking it reads the ids sequentially while the pool's entries are visited
    // out of their creation order, as a service interleaving its calls would.
    let mut hit_order = bind_order.clone();
    fastrand::Rng::with_seed(0x5e55_1045).shuffle(&mut hit_order);
    let hit_order: Vec<String> = hit_order.iter().map(|id| id.as_str().to_owned()).collect();

    bind_sessions(&pool, &bind_order).await?;
    drop(bind_order);

    let ops = params.session_ops;
    let warmup = ops / 10;
    let (ns, hits) = if contender == Contender::OursSessionHandle {
        let handles: Vec<pool_core::SessionHandle<OursManager>> =
            hit_order.iter().map(|id| pool.session(id)).collect();
        // One acquire per handle before timing: a handle learns its slot on first use.
        handle_hits(&handles, handles.len() as u64).await?;
        handle_hits(&handles, warmup).await?;
        let started = Instant::now();
        handle_hits(&handles, ops).await?;
        let ns = started.elapsed().as_nanos() as f64 / ops as f64;
        (ns, live as u64 + warmup + ops)
    } else {
        session_hits(&pool, &hit_order, warmup).await?;
        let started = Instant::now();
        session_hits(&pool, &hit_order, ops).await?;
        let ns = started.elapsed().as_nanos() as f64 / ops as f64;
        (ns, warmup + ops)
    };
    check_sessions(&pool, live, hits).await?;

    let mut sample = vec![ns];
    if live == SESSIONS_LARGE && contender == Contender::OursDedicated {
        sample.push(session_memory_in_child()?);
    }
    Ok(sample)
}

async fn bind_sessions(pool: &pool_core::Pool<OursManager>, ids: &[String]) -> Result<(), String> {
    for id in ids {
        drop(
            pool.acquire_for_session(id)
                .await
                .map_err(|e| format!("binding {id}: {e}"))?,
        );
    }
    Ok(())
}

/// Resident memory per live session: binds `live` sessions and divides the growth of the
/// resident set by `live`. Meaningful only in a fresh process (see the module docs).
async fn session_memory(live: usize) -> Result<f64, String> {
    let pool = pool_core::Pool::builder(OursManager::default())
        .name("bench-session-memory")
        .max_size(live)
        .session_awareness(true)
        .build()
        .map_err(|e| e.to_string())?;
    let ids: Vec<String> = (0..live).map(|i| format!("call-{i:06}")).collect();
    let before = resident_bytes()?;
    bind_sessions(&pool, &ids).await?;
    let after = resident_bytes()?;
    let active = pool.snapshot().active_sessions;
    if active != live {
        return Err(format!("{active} active sessions after binding {live}"));
    }
    Ok(after.saturating_sub(before) as f64 / live as f64)
}

/// Runs the memory probe in a fresh copy of this program and reads its answer.
fn session_memory_in_child() -> Result<f64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let output = std::process::Command::new(exe)
        .args(["bench", "pool", "--session-memory-probe"])
        .output()
        .map_err(|e| format!("starting the memory probe: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "the memory probe failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(PROBE_PREFIX))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("the memory probe printed no figure: {stdout}"))
}

/// `ops` DEDICATED hits, cycling through `ids`.
async fn session_hits(
    pool: &pool_core::Pool<OursManager>,
    ids: &[String],
    ops: u64,
) -> Result<(), String> {
    let mut next = 0;
    for _ in 0..ops {
        let guard = pool
            .acquire_for_session(&ids[next])
            .await
            .map_err(|e| e.to_string())?;
        black_box(*guard);
        drop(guard);
        next += 1;
        if next == ids.len() {
            next = 0;
        }
    }
    Ok(())
}

/// `ops` DEDICATED hits through session handles, cycling through `handles`.
async fn handle_hits(
    handles: &[pool_core::SessionHandle<OursManager>],
    ops: u64,
) -> Result<(), String> {
    let mut next = 0;
    for _ in 0..ops {
        let guard = handles[next].acquire().await.map_err(|e| e.to_string())?;
        black_box(*guard);
        drop(guard);
        next += 1;
        if next == handles.len() {
            next = 0;
        }
    }
    Ok(())
}

/// Every session bound once (COLD, the pool starts empty), every hit DEDICATED, nothing
/// recreated, everything closed after shutdown.
async fn check_sessions(
    pool: &pool_core::Pool<OursManager>,
    live: usize,
    hits: u64,
) -> Result<(), String> {
    let s = pool.snapshot();
    let mut problems = Vec::new();
    if s.active_sessions != live || s.dedicated != live || s.created_total != live as u64 {
        problems.push(format!(
            "active_sessions {} / dedicated {} / created {}; expected {live} each",
            s.active_sessions, s.dedicated, s.created_total
        ));
    }
    if s.allocations_dedicated != hits || s.allocations_cold != live as u64 {
        problems.push(format!(
            "dedicated hits {} / cold binds {}; expected {hits} / {live}",
            s.allocations_dedicated, s.allocations_cold
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
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("pool-core accounting: {}", problems.join("; ")))
    }
}

/// The process's resident set size, from `/proc/self/status` (Linux).
fn resident_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS line in /proc/self/status".to_owned())
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
        Case::LockThroughput { tasks, .. } => {
            let per_task = (params.lock_total_ops / tasks as u64).max(1);
            let warmup = (per_task / 10).max(1);
            lock_throughput(&subject, tasks, warmup).await?;
            let started = Instant::now();
            lock_throughput(&subject, tasks, per_task).await?;
            let total = per_task * tasks as u64;
            let ns = started.elapsed().as_nanos() as f64 / total as f64;
            Ok((vec![ns], (warmup + per_task) * tasks as u64))
        }
        Case::ContendedHold { tasks, .. } => {
            let per_task = (params.hold_total_ops / tasks as u64).max(1);
            let warmup = (per_task / 10).max(1);
            contended_hold(&subject, tasks, warmup).await?;
            let started = Instant::now();
            let mut waits = contended_hold(&subject, tasks, per_task).await?;
            let ns = started.elapsed().as_nanos() as f64 / waits.len().max(1) as f64;
            waits.sort_unstable();
            let sample = vec![
                ns,
                percentile(&waits, 0.50),
                percentile(&waits, 0.99),
                percentile(&waits, 0.999),
                waits.last().map_or(0.0, |&max| max as f64),
            ];
            Ok((sample, (warmup + per_task) * tasks as u64))
        }
        Case::Sessions { .. } => Err("the sessions case has its own measurement".to_owned()),
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
async fn lock_throughput<S: Subject>(
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

/// `tasks` tasks, each acquiring `per_task` times and holding the resource across
/// [`HOLD_YIELDS`] `yield_now()`s; returns every acquire's wait in ns.
async fn contended_hold<S: Subject>(
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
                for _ in 0..HOLD_YIELDS {
                    tokio::task::yield_now().await;
                }
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

/// The bare baseline: permits count the free resources, the queue holds them.
#[derive(Debug)]
struct BareSubject {
    permits: tokio::sync::Semaphore,
    free: crossbeam_queue::ArrayQueue<u64>,
}

impl BareSubject {
    /// A baseline holding `size` resources, all free.
    fn full(size: usize) -> Result<Self, String> {
        let free = crossbeam_queue::ArrayQueue::new(size);
        let counter = Counter::default();
        for _ in 0..size {
            free.push(counter.next())
                .map_err(|_| "bare queue full while filling".to_owned())?;
        }
        Ok(Self {
            permits: tokio::sync::Semaphore::new(size),
            free,
        })
    }
}

/// Pushes the resource back before the permit is returned (the permit field drops after
/// `drop` runs), so a task that gets the permit always finds a resource.
struct BareGuard<'a> {
    free: &'a crossbeam_queue::ArrayQueue<u64>,
    resource: u64,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl Deref for BareGuard<'_> {
    type Target = u64;

    fn deref(&self) -> &u64 {
        &self.resource
    }
}

impl Drop for BareGuard<'_> {
    fn drop(&mut self) {
        // Cannot fail: the queue has room for every resource and this one was taken from it.
        let _ = self.free.push(self.resource);
    }
}

impl Subject for BareSubject {
    type Guard<'a> = BareGuard<'a>;

    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        let permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| format!("bare semaphore: {e}"))?;
        let resource = self
            .free
            .pop()
            .ok_or_else(|| "bare queue empty under a permit".to_owned())?;
        Ok(BareGuard {
            free: &self.free,
            resource,
            _permit: permit,
        })
    }
}

/// Our DEDICATED path through a session handle the caller keeps.
#[derive(Debug)]
struct OursHandle(pool_core::SessionHandle<OursManager>);

impl Subject for OursHandle {
    type Guard<'a> = pool_core::Pooled<OursManager>;

    async fn acquire(&self) -> Result<Self::Guard<'_>, String> {
        self.0.acquire().await.map_err(|e| e.to_string())
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
/// released crate that users compare pools with.
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

    #[test]
    fn session_case_names_use_thousands() {
        assert_eq!(Case::Sessions { live: 10 }.name(), "sessions_10");
        assert_eq!(
            Case::Sessions {
                live: SESSIONS_LARGE
            }
            .name(),
            "sessions_100k"
        );
    }

    /// The baseline hands out each resource once at a time and gets every one back.
    #[tokio::test]
    async fn the_bare_baseline_hands_out_distinct_resources_and_takes_them_back() {
        let bare = BareSubject::full(2).unwrap();
        let a = bare.acquire().await.unwrap();
        let b = bare.acquire().await.unwrap();
        assert_ne!(*a, *b);
        assert!(bare.permits.try_acquire().is_err(), "a third permit exists");
        drop(a);
        drop(b);
        assert_eq!(bare.free.len(), 2);
        assert_eq!(bare.permits.available_permits(), 2);
    }
}
