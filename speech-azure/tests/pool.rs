//! A pool of TTS websockets against an emulator whose idle-close and maximum-age timers are
//! a few seconds: the maintainer replaces connections before the emulator would close them,
//! so steady traffic never pays a COLD connect, and shutdown leaves nothing open.

mod common;

use std::time::Duration;

use common::*;
use pool_core::{Pool, Tier};
use speech_azure::{ConnectionPolicy, Credentials, SttWsOptions, TokenPolicy, TtsWsOptions};
use speech_core::RecognitionRequest;
use speech_emulator::EmulatorConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_keeps_zero_cold_across_idle_and_age_limits() {
    // Emulator: idle close after 3 s, maximum age 6 s (Azure: 180 s and 600 s).
    let emu = emulator(
        EmulatorConfig::default()
            .with_idle_timeout(Duration::from_secs(3))
            .with_max_connection_age(Duration::from_secs(6)),
    )
    .await;
    // Connections call themselves unready a little before the emulator's limits...
    let azure = client_with(
        &emu,
        Credentials::key(KEY),
        ConnectionPolicy {
            max_idle: Duration::from_millis(2_700),
            max_age: Duration::from_millis(5_600),
            ..policy()
        },
        TokenPolicy::default(),
    );
    // ...and the pool replaces them a little before that.
    let tts = Pool::builder(azure.tts_ws_manager(TtsWsOptions::default()))
        .name("tts")
        .warm_target(2)
        .max_size(6)
        .background_warmup(true)
        .session_awareness(true)
        .max_idle(Some(Duration::from_millis(2_200)))
        .max_age(Some(Duration::from_millis(5_000)))
        .refresh_lead(Duration::from_millis(800))
        .refresh_jitter(Duration::from_millis(200))
        .refresh_interval(Duration::from_millis(500))
        .build()
        .expect("tts pool");
    let stt = Pool::builder(
        azure
            .stt_ws_manager(SttWsOptions::new("en-US"))
            .expect("stt"),
    )
    .name("stt")
    .warm_target(1)
    .max_size(4)
    .background_warmup(true)
    .max_idle(Some(Duration::from_millis(2_200)))
    .max_age(Some(Duration::from_millis(5_000)))
    .refresh_lead(Duration::from_millis(800))
    .refresh_jitter(Duration::from_millis(200))
    .refresh_interval(Duration::from_millis(500))
    .build()
    .expect("stt pool");
    tts.prepare().await.expect("prepare tts");
    stt.prepare().await.expect("prepare stt");

    // 13 s of traffic: a new call every 500 ms, each with one TTS turn on a fresh session,
    // plus an STT turn every other call. That spans two maximum ages and several idle
    // timeouts of every connection.
    let end = tokio::time::Instant::now() + Duration::from_secs(13);
    let mut calls = 0u32;
    while tokio::time::Instant::now() < end {
        let session = format!("call-{calls}");
        {
            let mut g = tts.acquire_for_session(&session).await.expect("acquire");
            assert_ne!(g.tier(), Tier::Cold, "call {calls} paid a cold connect");
            let (r, _) = synth(&mut **g, text("Hello, caller.")).await;
            r.unwrap_or_else(|e| panic!("call {calls}: {e}"));
        }
        {
            // The same session gets its dedicated connection back.
            let mut g = tts.acquire_for_session(&session).await.expect("acquire");
            assert_eq!(g.tier(), Tier::Dedicated);
            let (r, _) = synth(&mut **g, text("Anything else?")).await;
            r.unwrap_or_else(|e| panic!("call {calls} second turn: {e}"));
        }
        assert!(tts.release_for_session(&session).await);
        if calls.is_multiple_of(2) {
            let mut g = stt.acquire().await.expect("acquire stt");
            assert_ne!(g.tier(), Tier::Cold, "STT call {calls} paid a cold connect");
            let (r, _) = recognize(&mut **g, RecognitionRequest::new("en-US"), pcm(400)).await;
            r.unwrap_or_else(|e| panic!("STT call {calls}: {e}"));
        }
        calls += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let t = tts.snapshot();
    let s = stt.snapshot();
    assert_eq!(t.allocations_cold, 0, "{t:?}");
    assert_eq!(s.allocations_cold, 0, "{s:?}");
    assert_eq!(t.allocations_total, 2 * u64::from(calls));
    // Connections really were replaced along the way (more created than the targets).
    assert!(t.created_total > 2, "{t:?}");
    assert!(s.created_total > 1, "{s:?}");

    tts.shutdown().await;
    stt.shutdown().await;
    let t = tts.snapshot();
    let s = stt.snapshot();
    assert_eq!(t.created_total, t.closed_total, "{t:?}");
    assert_eq!(s.created_total, s.closed_total, "{s:?}");
    wait_all_closed(&emu).await;
    assert_eq!(emu.counters().connections_open, 0);
    assert_eq!(emu.shutdown().await, 0);
}
