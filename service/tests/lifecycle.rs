//! Graceful shutdown over a real socket: in-flight work drains, pools close, nothing
//! stays open.

mod common;

use std::time::Duration;

use common::{build, client, config, start, start_with_grace};
use serde_json::json;
use speech_mock::backend::MockConfig;

/// Guards against a hang only; no test asserts on elapsed time.
const HANG: Duration = Duration::from_secs(20);

#[tokio::test]
async fn in_flight_synthesis_finishes_during_shutdown() {
    let mock = MockConfig {
        chunk_interval: Duration::from_millis(20),
        chunk_bytes: 2400,
        ..MockConfig::default()
    };
    let t = build(&config(), mock);
    t.state.warm_up().await;
    let mut server = start(&t.state).await;
    let http = client();
    let body = json!({"text": "finish what you started"}).to_string();
    let reference = http
        .post(server.url("/api/v1/tts"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();

    let mut response = http
        .post(server.url("/api/v1/tts"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = response.chunk().await.unwrap().expect("first chunk").len();
    server.signal();
    tokio::time::timeout(HANG, async {
        while !t.state.is_draining() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("draining starts");
    assert!(!t.state.is_ready());
    while let Some(chunk) = tokio::time::timeout(HANG, response.chunk())
        .await
        .expect("stream continues")
        .unwrap()
    {
        received += chunk.len();
    }
    assert_eq!(received, reference.len());
    server.stop(HANG).await.expect("serve returns");
    let s = t.tts.snapshot();
    assert_eq!(s.turns_served, 2, "{s:?}");
    assert_eq!(s.open_now, 0, "{s:?}");
    assert_eq!(s.created, s.closed, "{s:?}");
    assert_eq!(t.state.pools().tts.background_tasks(), 0);
    assert_eq!(t.state.pools().stt.background_tasks(), 0);
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    // A synthesis that would take hours: shutdown must not wait for it.
    let mock = MockConfig {
        chunk_interval: Duration::from_secs(3600),
        chunk_bytes: 100,
        ..MockConfig::default()
    };
    let t = build(&config(), mock);
    t.state.warm_up().await;
    let mut server = start_with_grace(&t.state, Duration::from_millis(200)).await;
    let mut response = client()
        .post(server.url("/api/v1/tts"))
        .body(json!({"text": "never ending"}).to_string())
        .send()
        .await
        .unwrap();
    response.chunk().await.unwrap().expect("first chunk");
    server.signal();
    server
        .stop(HANG)
        .await
        .expect("serve returns despite the stuck stream");
    // Idle connections were closed; only the stuck one is still out.
    assert!(t.tts.snapshot().open_now <= 1, "{:?}", t.tts.snapshot());
    assert_eq!(t.stt.snapshot().open_now, 0);
}
