//! The mock backend as a pool manager: lifecycle, injected faults and leak counters.

use std::time::Duration;

use pool_core::Manager;
use speech_core::{
    AudioFormat, ErrorClass, SpeechError, SynthesisEvent, SynthesisRequest, SynthesizerManager,
};
use speech_mock::backend::{
    MockConfig, MockCounters, MockCountersSnapshot, MockSynthesizerFactory, mock_stt_manager,
    mock_tts_manager,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

fn request(text: &str) -> SynthesisRequest {
    SynthesisRequest::text(text, "en-US-AvaNeural", AudioFormat::Raw16Khz16BitMonoPcm)
}

/// Runs one turn on a pooled resource, draining events.
async fn turn(
    conn: &mut <SynthesizerManager as Manager>::Resource,
    text: &str,
) -> Result<u32, SpeechError> {
    let (tx, mut rx) = mpsc::channel(8);
    let drain = async { while rx.recv().await.is_some() {} };
    let (result, ()) = tokio::join!(conn.synthesize(request(text), tx), drain);
    result.map(|s| s.chunks)
}

#[tokio::test(start_paused = true)]
async fn manager_lifecycle_and_no_leaks() {
    let (manager, counters) = mock_tts_manager(MockConfig::default());
    let mut conns = Vec::new();
    for _ in 0..3 {
        let mut c = manager.create().await.expect("create");
        manager.warm(&mut c).await.expect("warm");
        assert!(manager.is_ready(&c));
        conns.push(c);
    }
    assert_eq!(counters.open_now(), 3);
    for c in &mut conns {
        assert!(turn(c, "hello").await.is_ok());
        manager.reset(c).await.expect("reset");
    }
    for c in conns {
        manager.close(c).await;
    }
    let snap = counters.snapshot();
    assert_eq!(
        snap,
        MockCountersSnapshot {
            create_attempts: 3,
            created: 3,
            closed: 3,
            open_now: 0,
            warm_calls: 3,
            resets: 3,
            turns_started: 3,
            turns_served: 3,
            ..MockCountersSnapshot::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_without_close_is_counted_as_a_leak() {
    let (manager, counters) = mock_stt_manager(MockConfig::default());
    let a = manager.create().await.expect("create");
    let b = manager.create().await.expect("create");
    manager.close(a).await;
    drop(b);
    let snap = counters.snapshot();
    assert_eq!(snap.created, 2);
    assert_eq!(snap.closed, 1);
    assert_eq!(snap.dropped_without_close, 1);
    assert_eq!(snap.open_now, 0);
}

#[tokio::test(start_paused = true)]
async fn fail_every_nth_create() {
    let config = MockConfig {
        fail_create_every: Some(3),
        ..MockConfig::default()
    };
    let (manager, counters) = mock_tts_manager(config);
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        match manager.create().await {
            Ok(c) => {
                outcomes.push(true);
                manager.close(c).await;
            }
            Err(e) => {
                assert_eq!(e.class(), ErrorClass::Transient);
                assert!(e.is_retryable());
                outcomes.push(false);
            }
        }
    }
    assert_eq!(outcomes, [true, true, false, true, true, false]);
    let snap = counters.snapshot();
    assert_eq!(
        (snap.create_attempts, snap.created, snap.create_failures),
        (6, 4, 2)
    );
    assert_eq!(snap.created, snap.closed);
}

#[tokio::test(start_paused = true)]
async fn fail_every_create_and_never() {
    for (every, expect_ok) in [(Some(1), false), (Some(0), true), (None, true)] {
        let config = MockConfig {
            fail_create_every: every,
            ..MockConfig::default()
        };
        let (manager, _) = mock_tts_manager(config);
        let result = manager.create().await;
        assert_eq!(result.is_ok(), expect_ok, "{every:?}");
        if let Ok(c) = result {
            manager.close(c).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fail_warm_breaks_the_connection() {
    let config = MockConfig {
        fail_warm_every: Some(2),
        ..MockConfig::default()
    };
    let (manager, counters) = mock_tts_manager(config);
    let mut first = manager.create().await.expect("create");
    let mut second = manager.create().await.expect("create");
    assert!(manager.warm(&mut first).await.is_ok());
    let err = manager
        .warm(&mut second)
        .await
        .expect_err("second warm fails");
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(manager.is_ready(&first));
    assert!(!manager.is_ready(&second));
    assert!(turn(&mut second, "x").await.is_err());
    manager.close(first).await;
    manager.close(second).await;
    let snap = counters.snapshot();
    assert_eq!((snap.warm_calls, snap.warm_failures), (2, 1));
    assert_eq!(snap.created, snap.closed);
}

#[tokio::test(start_paused = true)]
async fn not_ready_after_uses() {
    let config = MockConfig {
        not_ready_after_uses: Some(2),
        ..MockConfig::default()
    };
    let (manager, _) = mock_tts_manager(config);
    let mut c = manager.create().await.expect("create");
    assert!(manager.is_ready(&c));
    turn(&mut c, "one").await.expect("turn 1");
    assert!(manager.is_ready(&c));
    turn(&mut c, "two").await.expect("turn 2");
    assert!(!manager.is_ready(&c));
    manager.close(c).await;
}

#[tokio::test(start_paused = true)]
async fn not_ready_after_age() {
    let config = MockConfig {
        not_ready_after_age: Some(Duration::from_secs(180)),
        ..MockConfig::default()
    };
    let (manager, _) = mock_stt_manager(config);
    let c = manager.create().await.expect("create");
    tokio::time::advance(Duration::from_secs(179)).await;
    assert!(manager.is_ready(&c));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!manager.is_ready(&c));
    manager.close(c).await;
}

#[tokio::test(start_paused = true)]
async fn create_and_warm_latency_in_virtual_time() {
    let config = MockConfig {
        create_latency: Duration::from_millis(400),
        warm_latency: Duration::from_millis(50),
        ..MockConfig::default()
    };
    let (manager, counters) = mock_tts_manager(config);
    let start = Instant::now();
    let mut c = manager.create().await.expect("create");
    assert_eq!(start.elapsed(), Duration::from_millis(400));
    manager.warm(&mut c).await.expect("warm");
    assert_eq!(start.elapsed(), Duration::from_millis(450));
    manager.close(c).await;
    // A create abandoned during its latency creates nothing.
    let abandoned = tokio::time::timeout(Duration::from_millis(100), manager.create()).await;
    assert!(abandoned.is_err());
    let snap = counters.snapshot();
    assert_eq!((snap.create_attempts, snap.created, snap.closed), (2, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn drop_mid_stream_on_every_nth_turn() {
    let config = MockConfig {
        drop_after_chunks: Some(2),
        drop_every_nth_turn: Some(2),
        chunk_bytes: 320,
        ..MockConfig::default()
    };
    let factory = MockSynthesizerFactory::new(config);
    let counters = factory.counters();
    let manager = factory.into_manager();
    let mut c = manager.create().await.expect("create");
    // Turn 1 completes (10 chars = 600 ms = 19 200 bytes = 60 chunks).
    assert_eq!(turn(&mut c, "abcdefghij").await, Ok(60));
    // Turn 2 is cut after two chunks.
    let (tx, mut rx) = mpsc::channel(8);
    let result = c.synthesize(request("abcdefghij"), tx).await;
    let mut audio_events = 0;
    while let Ok(e) = rx.try_recv() {
        assert!(matches!(e, SynthesisEvent::Audio(_)));
        audio_events += 1;
    }
    assert_eq!(audio_events, 2);
    match result {
        Err(SpeechError::ConnectionClosed { code, reason }) => {
            assert_eq!(code, Some(1006));
            assert!(reason.contains("mid-stream"), "{reason}");
        }
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
    assert!(!manager.is_ready(&c));
    assert!(manager.reset(&mut c).await.is_err());
    manager.close(c).await;
    // Turn 3, on a fresh connection, completes.
    let mut d = manager.create().await.expect("create");
    assert_eq!(turn(&mut d, "abcdefghij").await, Ok(60));
    manager.close(d).await;
    let snap = counters.snapshot();
    assert_eq!(snap.dropped_mid_stream, 1);
    assert_eq!(snap.turns_served, 2);
    assert_eq!(snap.turns_failed, 1);
    assert_eq!(snap.created, snap.closed);
}

#[tokio::test(start_paused = true)]
async fn counters_can_be_shared_between_factories() {
    let counters = std::sync::Arc::new(MockCounters::new());
    let a = MockSynthesizerFactory::with_counters(MockConfig::default(), counters.clone());
    let b = MockSynthesizerFactory::with_counters(MockConfig::default(), counters.clone());
    let ca = a.into_manager();
    let cb = b.into_manager();
    let x = ca.create().await.expect("create");
    let y = cb.create().await.expect("create");
    ca.close(x).await;
    cb.close(y).await;
    assert_eq!((counters.created(), counters.closed()), (2, 2));
}

#[test]
fn realistic_preset_has_a_cold_path_slower_than_warm() {
    let c = MockConfig::realistic();
    assert!(c.create_latency > c.warm_latency);
    assert!(c.turn_latency > Duration::ZERO);
    assert_eq!(c.fail_create_every, None);
}
