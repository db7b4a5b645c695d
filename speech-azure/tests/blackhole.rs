//! Dead peers (blackholed: no FIN, no RST, no data) are found by the liveness prober:
//! idle pooled connections are replaced in the background and never handed out; a turn
//! in flight fails with a `Transient` error instead of waiting for the turn timeouts.
//!
//! The gap is short (400 ms) and the turn timeouts long (20 s), so only the prober can
//! explain a `Transient` failure; nothing here asserts wall time.

mod common;

use std::time::Duration;

use common::*;
use pool_core::{Pool, Tier};
use speech_azure::{
    AzureSpeech, ConnectionPolicy, Credentials, SttWsOptions, TokenPolicy, TtsWsOptions,
};
use speech_core::{Connection, ErrorClass, RecognitionRequest, SpeechError};
use speech_emulator::{EmulatorConfig, EmulatorHandle, Fault, FaultRule, Target, TurnPoint};

const GAP: Duration = Duration::from_millis(400);

fn liveness_client(emu: &EmulatorHandle) -> AzureSpeech {
    client_with(
        emu,
        Credentials::key(KEY),
        ConnectionPolicy {
            liveness_gap: GAP,
            // Long enough that a turn timeout cannot be what ends a blackholed turn.
            first_response_timeout: Duration::from_secs(20),
            frame_gap_timeout: Duration::from_secs(20),
            ..ConnectionPolicy::default()
        },
        TokenPolicy::default(),
    )
}

async fn until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn blackholed_idle_connections_are_replaced_and_never_handed_out() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = liveness_client(&emu);
    let pool = Pool::builder(azure.tts_ws_manager(TtsWsOptions::default()))
        .name("tts-blackhole-idle")
        .warm_target(2)
        .max_size(4)
        .background_warmup(true)
        // The scheduled pass is far away: only the prober's signal replaces them promptly.
        .refresh_interval(Duration::from_secs(600))
        .build()
        .expect("pool");
    pool.prepare().await.expect("prepare");

    // Live but silent peers answer pings: several gaps of idleness kill nothing.
    tokio::time::sleep(GAP * 3).await;
    assert_eq!(
        pool.snapshot().closed_total,
        0,
        "a live idle connection was declared dead"
    );
    assert_eq!(emu.counters().connections_opened, 2);

    assert_eq!(emu.blackhole_all(Target::TtsWs), 2);
    until(
        || {
            let s = pool.snapshot();
            s.closed_total == 2 && s.warm_pool_size == 2
        },
        "both blackholed connections closed and replaced",
    )
    .await;
    assert_eq!(emu.counters().connections_opened, 4);

    for _ in 0..4 {
        let mut tts = pool.acquire().await.expect("acquire");
        assert_eq!(
            tts.tier(),
            Tier::Warm,
            "the replacements were ready in time"
        );
        let (r, events) = synth(&mut **tts, text("hello after the blackhole")).await;
        r.expect("every turn succeeds");
        assert!(!audio(&events).is_empty());
    }
    let c = emu.counters();
    assert_eq!(
        (c.turns_started, c.turns_served),
        (4, 4),
        "no turn ever reached a blackholed socket"
    );
    let s = pool.snapshot();
    assert_eq!(s.created_total, s.closed_total + s.size as u64, "no leak");
    pool.shutdown().await;
    assert_eq!(emu.shutdown().await, 0);
}

#[tokio::test]
async fn a_tts_turn_blackholed_mid_stream_fails_transient() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = liveness_client(&emu);
    emu.add_fault(
        FaultRule::new(Fault::Blackhole {
            at: TurnPoint::AfterFrames(1),
        })
        .target(Target::TtsWs)
        .once(),
    );
    let mut tts = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("connect");
    tts.warm().await.expect("warm");
    let (r, events) = synth(
        &mut tts,
        text("a fairly long sentence to get several frames"),
    )
    .await;
    let e = r.expect_err("the turn cannot finish");
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(e.to_string().contains("no pong"), "{e}");
    assert!(!audio(&events).is_empty(), "the first frame did arrive");
    assert!(!tts.is_ready(), "a dead connection is never reused");
    assert_eq!(emu.counters().blackholed, 1);
    // Before any audio too (the case the service retries on a fresh connection).
    emu.add_fault(
        FaultRule::new(Fault::Blackhole {
            at: TurnPoint::BeforeTurnStart,
        })
        .target(Target::TtsWs)
        .once(),
    );
    let mut tts = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("connect");
    tts.warm().await.expect("warm");
    let (r, events) = synth(&mut tts, text("nothing comes back")).await;
    assert_eq!(class_of(&r), Some(ErrorClass::Transient), "{r:?}");
    assert!(audio(&events).is_empty());
    drop(tts);
    assert_eq!(emu.shutdown().await, 0);
}

#[tokio::test]
async fn an_stt_turn_blackholed_mid_stream_fails_transient_and_quiet_live_ones_do_not() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = liveness_client(&emu);
    let mut stt = azure
        .connect_stt_ws(SttWsOptions::new("en-US"))
        .await
        .expect("connect");
    stt.warm().await.expect("warm");
    // Quiet for several gaps, but alive: still ready, and a turn succeeds.
    tokio::time::sleep(GAP * 3).await;
    assert!(stt.is_ready());
    let (r, _) = recognize(&mut stt, RecognitionRequest::new("en-US"), pcm(600)).await;
    r.expect("a live quiet connection works");

    emu.add_fault(
        FaultRule::new(Fault::Blackhole {
            at: TurnPoint::AfterFrames(2),
        })
        .target(Target::SttWs)
        .once(),
    );
    let (r, _) = recognize(&mut stt, RecognitionRequest::new("en-US"), pcm(2000)).await;
    assert_eq!(class_of(&r), Some(ErrorClass::Transient), "{r:?}");
    assert!(!stt.is_ready());
    drop(stt);
    assert_eq!(emu.shutdown().await, 0);
}

fn class_of<T: std::fmt::Debug>(r: &Result<T, SpeechError>) -> Option<ErrorClass> {
    r.as_ref().err().map(SpeechError::class)
}
