//! A REST TTS connection created inline for a waiting caller (COLD) goes straight to the
//! caller's synthesis: the voices-list warm-up would cost the caller a round trip and prove
//! nothing its own request does not. Pre-warming in the background still runs it, so a
//! WARM hand-out has its HTTP connection open already.

mod common;

use common::*;
use pool_core::{Pool, Tier};
use speech_azure::Credentials;
use speech_emulator::EmulatorConfig;

#[tokio::test]
async fn a_cold_rest_acquire_makes_no_warm_up_request() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = client(&emu, Credentials::key(KEY));
    let pool = Pool::builder(azure.tts_rest_manager())
        .name("tts-rest")
        .warm_target(0)
        .build()
        .expect("pool");

    let mut conn = pool.acquire().await.expect("cold acquire");
    assert_eq!(conn.tier(), Tier::Cold);
    assert_eq!(
        emu.counters().rest_requests,
        0,
        "the COLD hand-out must not send a voices-list request before the caller's own"
    );

    let (result, events) = synth(conn.as_mut(), text("hello")).await;
    result.expect("synthesis on the cold connection");
    assert!(!audio(&events).is_empty(), "the synthesis produced audio");
    assert_eq!(
        emu.counters().rest_requests,
        1,
        "one request in all: the synthesis itself"
    );
    drop(conn);
    pool.shutdown().await;
}

#[tokio::test]
async fn background_prewarming_still_opens_the_connection_with_a_warm_up() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = client(&emu, Credentials::key(KEY));
    let pool = Pool::builder(azure.tts_rest_manager())
        .name("tts-rest")
        .warm_target(1)
        .build()
        .expect("pool");
    pool.prepare().await.expect("prewarm");
    assert_eq!(
        emu.counters().rest_requests,
        1,
        "prewarming sends the voices-list request so the connection is open before a caller"
    );

    let mut conn = pool.acquire().await.expect("warm acquire");
    assert_eq!(conn.tier(), Tier::Warm);
    let (result, _) = synth(conn.as_mut(), text("hello")).await;
    result.expect("synthesis on the warm connection");
    let counters = emu.counters();
    assert_eq!(counters.rest_requests, 2, "warm-up plus the synthesis");
    assert_eq!(
        counters.tcp_accepted, 1,
        "the synthesis reused the connection the warm-up opened"
    );
    drop(conn);
    pool.shutdown().await;
}
