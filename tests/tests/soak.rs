//! A shortened soak: 200 concurrent callers against the service with the mock backend
//! (instant profile) for a few seconds of real time. Each caller runs calls back to back:
//! it opens the STT websocket of its session, runs 2-3 turns (the caller's utterance
//! recognised over the websocket, then a TTS reply on the same session), closes the
//! stream and sends `DELETE /api/v1/sessions/{id}`.
//!
//! Asserts: no request fails, every STT turn yields a recognition result, later turns of
//! a call reuse its connections (DEDICATED, for TTS and STT), the pools settle back to
//! their warm target with nothing in use and no session left (the pools' memory is back
//! where it started), the service shuts down cleanly, no task outlives it, and every
//! connection either backend created was closed (no leak). The
//! 1000-session, 60-second version with resident-memory tracking is `cargo xtask soak`. No assertion
//! on timing; the wall-clock window only sizes the workload.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use service::backend::{BackendKind, Managers};
use service::{Config, state_from_managers};
use speech_mock::backend::{MockConfig, mock_stt_manager, mock_tts_manager};
use tests::{HANG, next_message, pcm, spawn_service, stt_turn};

const CALLERS: usize = 200;
/// How long callers keep starting new calls.
const WINDOW: Duration = Duration::from_secs(3);

fn config() -> Config {
    let mut c = Config::defaults();
    c.warm_pool_tts_size = 8;
    c.warm_pool_stt_size = 4;
    // Every caller holds its own connection of each kind across turns.
    c.pool_tts_max_size = 256;
    c.pool_stt_max_size = 256;
    c.pool_acquire_timeout = Duration::from_secs(10);
    // Connections returned after the calls are kept as surplus rather than closed at once
    // (no churn); housekeeping trims what nobody used, so run it often enough for the
    // pools to settle back to their targets within the test.
    c.warm_pool_refresh_interval = Duration::from_millis(200);
    c
}

#[derive(Debug, Default)]
struct Tally {
    calls: AtomicU64,
    /// TTS turns.
    turns: AtomicU64,
    stt_turns: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_callers_leave_no_leak_and_the_pools_settle() {
    let (tts_m, tts_counters) = mock_tts_manager(MockConfig::default());
    let (stt_m, stt_counters) = mock_stt_manager(MockConfig::default());
    let state = state_from_managers(
        &config(),
        Managers {
            kind: BackendKind::Mock,
            tts: tts_m,
            stt: stt_m,
        },
    )
    .expect("state");
    // Tasks alive before the service exists: after shutdown the count must come back here
    // (a task left behind per call is how a slow leak starts).
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    state.warm_up().await;
    let running = spawn_service(&state).await;
    let client = tests::client();
    let tally = Arc::new(Tally::default());
    let stop_at = tokio::time::Instant::now() + WINDOW;

    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let client = client.clone();
        let tts_url = running.url("/api/v1/tts");
        let sessions_url = running.url("/api/v1/sessions");
        let stt_target = running.addr();
        let tally = tally.clone();
        let utterance = pcm(0.2);
        callers.spawn(async move {
            let mut call = 0usize;
            // At least one call per caller, then more until the window closes.
            loop {
                let id = format!("soak-{caller}-{call}");
                let turns = 2 + (caller + call) % 2;
                let (mut stt, hello) =
                    stt_connect_to(stt_target, &format!("?session_id={id}")).await;
                // The socket takes its connection with the first audio: no tier yet.
                assert!(hello["tier"].is_null(), "{id}: {hello}");
                for turn in 0..turns {
                    let events = stt_turn(&mut stt, &utterance).await;
                    let last = events.last().cloned().unwrap_or_default();
                    assert_eq!(last["type"], "turn_end", "{id} stt turn {turn}: {events:?}");
                    assert!(
                        events
                            .iter()
                            .any(|e| matches!(e["type"].as_str(), Some("hypothesis" | "phrase"))),
                        "{id} stt turn {turn} ended without a recognition result: {events:?}"
                    );
                    let start = events.iter().find(|e| e["type"] == "turn_start");
                    let tier = start.and_then(|e| e["tier"].as_str());
                    if turn > 0 {
                        assert_eq!(tier, Some("dedicated"), "{id} stt turn {turn}: {events:?}");
                    } else {
                        assert!(
                            matches!(tier, Some("warm" | "cold")),
                            "{id} stt turn {turn}: {events:?}"
                        );
                    }
                    tally.stt_turns.fetch_add(1, Ordering::Relaxed);
                    let response = client
                        .post(&tts_url)
                        .header("content-type", "application/json")
                        .body(json!({"text": "Hello there.", "session_id": id}).to_string())
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("{id} turn {turn}: {e}"));
                    let status = response.status().as_u16();
                    let tier = response
                        .headers()
                        .get(service::TIER_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = response
                        .bytes()
                        .await
                        .unwrap_or_else(|e| panic!("{id} turn {turn} body: {e}"));
                    assert_eq!(status, 200, "{id} turn {turn}: {body:?}");
                    assert!(body.len() > 44, "{id} turn {turn}: {} bytes", body.len());
                    if turn > 0 {
                        assert_eq!(tier.as_deref(), Some("dedicated"), "{id} turn {turn}");
                    } else {
                        assert!(
                            matches!(tier.as_deref(), Some("warm" | "cold")),
                            "{id} turn {turn}: {tier:?}"
                        );
                    }
                    tally.turns.fetch_add(1, Ordering::Relaxed);
                    // Think time: yields to other callers.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                stt.close(None)
                    .await
                    .unwrap_or_else(|e| panic!("{id} stt close: {e}"));
                while let Some(Ok(_)) = stt.next().await {}
                let response = client
                    .delete(format!("{sessions_url}/{id}"))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{id} delete: {e}"));
                assert_eq!(response.status(), 200, "{id} delete");
                let _ = response.bytes().await;
                tally.calls.fetch_add(1, Ordering::Relaxed);
                call += 1;
                if tokio::time::Instant::now() >= stop_at {
                    break;
                }
            }
        });
    }
    tokio::time::timeout(HANG, async {
        while let Some(result) = callers.join_next().await {
            result.expect("caller");
        }
    })
    .await
    .expect("the callers finish (no deadlock)");
    let calls = tally.calls.load(Ordering::Relaxed);
    let turns = tally.turns.load(Ordering::Relaxed);
    let stt_turns = tally.stt_turns.load(Ordering::Relaxed);
    eprintln!("soak: {CALLERS} callers, {calls} calls, {turns} TTS turns, {stt_turns} STT turns");
    assert_eq!(stt_turns, turns, "every turn recognises, then replies");
    assert!(calls >= CALLERS as u64, "{calls} calls");

    // Every session was released: the pools return to their warm target, nothing in use.
    tokio::time::timeout(HANG, async {
        loop {
            let settled = state.snapshots().iter().all(|p| {
                p.active_sessions == 0
                    && p.in_use == 0
                    && p.dedicated == 0
                    && p.creating == 0
                    && p.waiting == 0
                    && p.warm_pool_size == p.warm_pool_target
            });
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("pools did not settle: {:#?}", state.snapshots()));
    for pool in state.snapshots() {
        assert_eq!(pool.size, pool.warm_pool_target, "{}: {pool:?}", pool.name);
    }
    let tts_pool = state
        .snapshots()
        .into_iter()
        .find(|p| p.name == "speech-tts")
        .expect("tts pool");
    assert_eq!(tts_pool.allocations_total, turns, "{tts_pool:?}");

    running.stop(HANG).await.expect("clean shutdown");
    // The HTTP client's idle keep-alive connections are tasks too.
    drop(client);
    let tasks_after = tokio::time::timeout(HANG, async {
        while metrics.num_alive_tasks() > tasks_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        tasks_after.is_ok(),
        "{} tasks alive after shutdown, {tasks_before} before the service started",
        metrics.num_alive_tasks()
    );

    let tts = tts_counters.snapshot();
    assert_eq!(tts.turns_served, turns, "{tts:?}");
    assert_eq!((tts.turns_failed, tts.turns_cancelled), (0, 0), "{tts:?}");
    let stt = stt_counters.snapshot();
    assert_eq!(stt.turns_served, stt_turns, "{stt:?}");
    assert_eq!((stt.turns_failed, stt.turns_cancelled), (0, 0), "{stt:?}");
    for (name, counters) in [("tts", &tts_counters), ("stt", &stt_counters)] {
        let s = counters.snapshot();
        assert_eq!(s.created, s.closed, "{name} leaked: {s:?}");
        assert_eq!(s.open_now, 0, "{name}: {s:?}");
        assert_eq!(s.dropped_without_close, 0, "{name}: {s:?}");
    }
    for pool in state.snapshots() {
        assert_eq!(pool.size, 0, "{}: {pool:?}", pool.name);
        assert_eq!(pool.created_total, pool.closed_total, "{pool:?}");
    }
}

/// Opens the session's STT websocket at `addr` and reads the `connected` message (the
/// callers know the service by its address: they do not share the `Running` handle).
async fn stt_connect_to(addr: std::net::SocketAddr, query: &str) -> (tests::Ws, serde_json::Value) {
    let url = format!("ws://{addr}/api/v1/stt{query}");
    let (mut ws, _) = tokio::time::timeout(HANG, tokio_tungstenite::connect_async(url.as_str()))
        .await
        .expect("connect in time")
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let hello = next_message(&mut ws).await;
    assert_eq!(hello["type"], "connected", "{hello}");
    (ws, hello)
}
