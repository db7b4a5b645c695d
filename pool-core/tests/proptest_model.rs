//! Random operation sequences against a simple model of the pool. After every step:
//! `created == closed + live` (pool counters and the fake's own), and gauges, tiers and
//! which resources were closed all match the model's prediction exactly.

mod common;

use std::collections::{BTreeMap, HashSet, VecDeque};

use common::{FakeManager, millis, settle};
use pool_core::{Pool, Pooled, Tier};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Plain acquire; the guard is held.
    Acquire,
    /// Drop a held guard (index modulo the number held).
    Release(usize),
    /// Discard a held guard.
    Discard(usize),
    /// `acquire_for_session` and drop the guard at once (it parks in the session).
    Session(u8),
    /// `release_for_session`.
    ReleaseSession(u8),
    /// Mark one live resource (index modulo the number live) not ready.
    MarkNotReady(usize),
    /// Let paused time pass.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Acquire),
        3 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Discard),
        4 => (0u8..4).prop_map(Op::Session),
        2 => (0u8..5).prop_map(Op::ReleaseSession),
        2 => any::<usize>().prop_map(Op::MarkNotReady),
        1 => (0u64..5_000).prop_map(Op::Advance),
    ]
}

/// What the pool should do, written as plainly as possible.
#[derive(Debug, Default)]
struct Model {
    warm_target: usize,
    idle: VecDeque<u64>,
    held: Vec<u64>,
    sessions: BTreeMap<u8, u64>,
    not_ready: HashSet<u64>,
    next_id: u64,
    closed: Vec<u64>,
    allocations: [u64; 3],
    resets: usize,
}

impl Model {
    fn ready(&self, id: u64) -> bool {
        !self.not_ready.contains(&id)
    }

    fn close(&mut self, id: u64) {
        self.closed.push(id);
    }

    /// Idle set front first, skipping (closing) dead ones; else a new resource.
    fn take(&mut self) -> (u64, Tier) {
        while let Some(id) = self.idle.pop_front() {
            if self.ready(id) {
                return (id, Tier::Warm);
            }
            self.close(id);
        }
        let id = self.next_id;
        self.next_id += 1;
        (id, Tier::Cold)
    }

    /// A ready resource nobody holds: idle if below target, else closed.
    fn place(&mut self, id: u64) {
        if self.idle.len() < self.warm_target {
            self.idle.push_back(id);
        } else {
            self.close(id);
        }
    }

    fn give_back(&mut self, id: u64) {
        if self.ready(id) {
            self.place(id);
        } else {
            self.close(id);
        }
    }

    fn count(&mut self, tier: Tier) {
        let index = match tier {
            Tier::Dedicated => 0,
            Tier::Warm => 1,
            Tier::Cold => 2,
        };
        self.allocations[index] += 1;
    }

    fn live(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .idle
            .iter()
            .chain(&self.held)
            .chain(self.sessions.values())
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }
}

fn session_id(sid: u8) -> String {
    format!("session-{sid}")
}

async fn run(warm_target: usize, latency_ms: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fake = FakeManager::new().with_create_latency(millis(latency_ms));
    let pool = Pool::builder(fake.clone())
        .warm_target(warm_target)
        .max_size(64)
        .session_awareness(true)
        .background_warmup(false)
        .acquire_timeout(None)
        .build()
        .unwrap();
    let mut model = Model {
        warm_target,
        ..Model::default()
    };
    let mut held: Vec<Pooled<FakeManager>> = Vec::new();

    pool.prepare().await.unwrap();
    for _ in 0..warm_target {
        let id = model.next_id;
        model.next_id += 1;
        model.idle.push_back(id);
    }

    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Acquire => {
                let expected = model.take();
                let g = pool.acquire().await.unwrap();
                prop_assert_eq!((g.id, g.tier()), expected, "step {}: {:?}", step, op);
                model.count(expected.1);
                model.held.push(g.id);
                held.push(g);
            }
            Op::Release(i) | Op::Discard(i) if !held.is_empty() => {
                let index = i % held.len();
                let g = held.remove(index);
                let id = model.held.remove(index);
                prop_assert_eq!(g.id, id);
                if matches!(op, Op::Discard(_)) {
                    g.discard();
                    model.close(id);
                } else {
                    drop(g);
                    model.give_back(id);
                }
            }
            Op::Release(_) | Op::Discard(_) => {}
            Op::Session(sid) => {
                let expected = match model.sessions.remove(&sid) {
                    Some(id) if model.ready(id) => (id, Tier::Dedicated),
                    Some(id) => {
                        model.close(id);
                        model.take()
                    }
                    None => model.take(),
                };
                let g = pool.acquire_for_session(&session_id(sid)).await.unwrap();
                prop_assert_eq!((g.id, g.tier()), expected, "step {}: {:?}", step, op);
                prop_assert!(g.is_dedicated());
                model.count(expected.1);
                model.sessions.insert(sid, expected.0);
                drop(g);
            }
            Op::ReleaseSession(sid) => {
                let existed = model.sessions.remove(&sid);
                if let Some(id) = existed {
                    model.resets += 1;
                    model.give_back(id);
                }
                let released = pool.release_for_session(&session_id(sid)).await;
                prop_assert_eq!(released, existed.is_some(), "step {}: {:?}", step, op);
            }
            Op::MarkNotReady(k) => {
                let live = model.live();
                if !live.is_empty() {
                    let id = live[k % live.len()];
                    fake.set_ready(id, false);
                    model.not_ready.insert(id);
                }
            }
            Op::Advance(ms) => tokio::time::sleep(millis(ms)).await,
        }

        // Let spawned close tasks run, then compare everything.
        settle().await;
        let s = pool.snapshot();
        let live = model.live();
        prop_assert_eq!(
            s.created_total,
            s.closed_total + s.size as u64,
            "step {}: pool created != closed + live",
            step
        );
        prop_assert_eq!(
            fake.created(),
            fake.closed() + s.size,
            "step {}: fake created != closed + live",
            step
        );
        prop_assert_eq!(s.size, live.len(), "step {}: live", step);
        prop_assert_eq!(
            fake.created() as u64,
            model.next_id,
            "step {}: created",
            step
        );
        // The snapshot counts only idle resources that could be handed out now.
        let idle_ready = model.idle.iter().filter(|id| model.ready(**id)).count();
        prop_assert_eq!(s.warm_pool_size, idle_ready, "step {}: idle", step);
        prop_assert_eq!(
            s.in_use,
            model.held.len() + model.sessions.len(),
            "step {}: in use",
            step
        );
        prop_assert_eq!(s.dedicated, model.sessions.len(), "step {}", step);
        prop_assert_eq!(s.active_sessions, model.sessions.len(), "step {}", step);
        prop_assert_eq!((s.creating, s.waiting), (0, 0), "step {}", step);
        prop_assert_eq!(
            [
                s.allocations_dedicated,
                s.allocations_warm,
                s.allocations_cold
            ],
            model.allocations,
            "step {}: tier counts",
            step
        );
        prop_assert_eq!(
            s.allocations_total,
            model.allocations.iter().sum::<u64>(),
            "step {}",
            step
        );
        prop_assert_eq!(fake.reset_calls(), model.resets, "step {}: resets", step);
        let mut closed = fake.closed_ids();
        closed.sort_unstable();
        let mut expected_closed = model.closed.clone();
        expected_closed.sort_unstable();
        prop_assert_eq!(closed, expected_closed, "step {}: closed ids", step);
    }

    // Everything ends closed.
    drop(held);
    pool.shutdown().await;
    settle().await;
    prop_assert_eq!(fake.created(), fake.closed(), "after shutdown");
    prop_assert_eq!(pool.snapshot().size, 0);
    prop_assert_eq!(pool.background_tasks(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pool_matches_the_model(
        warm_target in 0usize..=3,
        latency_ms in prop_oneof![Just(0u64), Just(10u64)],
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run(warm_target, latency_ms, ops))?;
    }
}
