//! The service with the mock backend, end to end over real sockets.

use std::time::Duration;

use serde_json::json;
use service::backend::{BackendKind, Managers};
use service::{Config, state_from_managers};
use speech_mock::backend::{MockConfig, mock_stt_manager, mock_tts_manager};
use tests::{HANG, final_phrase, get_json, pcm, spawn_service, stt_connect, stt_turn, tts};

fn config() -> Config {
    let mut c = Config::defaults();
    c.warm_pool_tts_size = 2;
    c.warm_pool_stt_size = 1;
    c.pool_tts_max_size = 4;
    c.pool_stt_max_size = 4;
    c.pool_acquire_timeout = Duration::from_secs(5);
    c
}

#[tokio::test]
async fn a_call_gets_dedicated_connections_and_everything_is_closed_at_the_end() {
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
    state.warm_up().await;
    let running = spawn_service(&state).await;
    let ready = tests::client()
        .get(running.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    // Turn 1 and 2 of call-1: the second reuses the call's connection.
    let (status, tier, len) =
        tts(&running, json!({"text": "Hello!", "session_id": "call-1"})).await;
    assert_eq!((status, tier.as_deref()), (200, Some("warm")));
    assert!(len > 44);
    let (status, tier, _) = tts(
        &running,
        json!({"text": "Anything else?", "session_id": "call-1"}),
    )
    .await;
    assert_eq!((status, tier.as_deref()), (200, Some("dedicated")));

    // The caller speaks.
    let (mut ws, hello) = stt_connect(&running, "?session_id=call-1").await;
    // The socket takes its connection with the first audio, not at the upgrade.
    assert_eq!(hello["tier"], serde_json::Value::Null);
    let events = stt_turn(&mut ws, &pcm(1.0)).await;
    assert_eq!(events[0]["tier"], "warm", "{events:?}");
    assert_eq!(
        final_phrase(&events).as_deref(),
        Some("hello world"),
        "{events:?}"
    );
    let events = stt_turn(&mut ws, &pcm(0.5)).await;
    assert_eq!(events[0]["tier"], "dedicated");
    drop(ws);

    let pools = get_json(&running.url("/api/v1/pools")).await;
    assert_eq!(pools["status"], "healthy");
    let t = &pools["pools"]["speech-tts"];
    let s = &pools["pools"]["speech-stt"];
    assert_eq!(
        (
            t["allocations_warm"].as_u64(),
            t["allocations_dedicated"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(s["allocations_warm"], 1);
    assert!(s["allocations_dedicated"].as_u64().unwrap() >= 1);
    assert_eq!(pools["summary"]["total_active_sessions"], 2);
    assert_eq!(pools["summary"]["hit_rate_percent"], 100.0);

    let metrics = tests::client()
        .get(running.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("speech_pool_allocations_total{pool=\"speech-tts\",tier=\"dedicated\"} 1"),
        "{metrics}"
    );

    // The call ends.
    let r = tests::client()
        .delete(running.url("/api/v1/sessions/call-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let pools = get_json(&running.url("/api/v1/pools")).await;
    assert_eq!(pools["summary"]["total_active_sessions"], 0);

    running.stop(HANG).await.expect("clean shutdown");
    for (name, c) in [("tts", &tts_counters), ("stt", &stt_counters)] {
        let s = c.snapshot();
        assert_eq!(s.open_now, 0, "{name}: {s:?}");
        assert_eq!(s.created, s.closed, "{name}: {s:?}");
        assert_eq!(s.dropped_without_close, 0, "{name}: {s:?}");
    }
}

#[tokio::test]
/// Three calls (each holding its own connection across turns) and their 12 turns at once:
/// more than the warm set, within max_size, so all succeed and the pool stays bounded.
async fn concurrent_calls_beyond_the_warm_set_all_succeed_without_leaks() {
    let (tts_m, tts_counters) = mock_tts_manager(MockConfig {
        create_latency: Duration::from_millis(5),
        chunk_interval: Duration::from_millis(2),
        ..MockConfig::default()
    });
    let (stt_m, _) = mock_stt_manager(MockConfig::default());
    let state = state_from_managers(
        &config(),
        Managers {
            kind: BackendKind::Mock,
            tts: tts_m,
            stt: stt_m,
        },
    )
    .expect("state");
    state.warm_up().await;
    let running = spawn_service(&state).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let url = running.url("/api/v1/tts");
        tasks.push(tokio::spawn(async move {
            let r = tests::client()
                .post(url)
                .json(&json!({"text": format!("call number {i}"), "session_id": format!("c{}", i % 3)}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let _ = r.bytes().await;
            status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let pools = get_json(&running.url("/api/v1/pools")).await;
    let t = &pools["pools"]["speech-tts"];
    assert_eq!(t["allocations_total"], 12);
    assert!(t["size"].as_u64().unwrap() <= 4, "{t}");
    running.stop(HANG).await.expect("clean shutdown");
    assert_eq!(tts_counters.snapshot().open_now, 0);
}
