//! The service with the Azure backend against the local emulator over TLS, end to end:
//! the real configuration path (`AZURE_SPEECH_KEY`, `AZURE_SPEECH_ENDPOINT`,
//! `AZURE_SPEECH_CA_CERT`), real websockets, real certificates.

use std::path::{Path, PathBuf};

use serde_json::json;
use service::config::{AzureAuth, BackendChoice, TtsTransport};
use service::secret::Secret;
use service::{Config, build_state};
use speech_emulator::{Emulator, EmulatorConfig, EmulatorHandle, Fault, FaultRule, Target};
use tests::{HANG, final_phrase, get_json, pcm, spawn_service, stt_connect, stt_turn, tts};

const KEY: &str = "emulator-test-key";

/// A TLS emulator accepting [`KEY`], and its CA written to a file for
/// `AZURE_SPEECH_CA_CERT`.
async fn emulator(transcript: &str) -> (EmulatorHandle, PathBuf) {
    tests::install_crypto_provider();
    let emulator = Emulator::start(
        EmulatorConfig::default()
            .with_key(KEY)
            .with_transcript(transcript),
    )
    .await
    .expect("emulator");
    let ca = std::env::temp_dir().join(format!(
        "speech-pool-e2e-ca-{}-{}.pem",
        std::process::id(),
        emulator.addr().port()
    ));
    std::fs::write(&ca, emulator.ca_cert_pem().expect("TLS emulator has a CA")).unwrap();
    (emulator, ca)
}

/// The configuration a user would give to point the service at the emulator.
fn azure_config(emulator: &EmulatorHandle, ca: &Path, key: &str) -> Config {
    let mut config = Config::defaults();
    config.backend = BackendChoice::Azure;
    config.azure_speech_key = Some(Secret::new(key));
    config.azure_speech_endpoint = Some(emulator.base_url_http());
    config.azure_speech_ca_cert = Some(ca.to_path_buf());
    config.warm_pool_tts_size = 2;
    config.warm_pool_stt_size = 1;
    config
}

async fn no_connection_left(emulator: EmulatorHandle, ca: PathBuf) {
    let after = emulator
        .wait_for_counters(|c| c.connections_open == 0, HANG)
        .await;
    assert!(
        after.is_ok(),
        "connections left open after shutdown: {after:?}"
    );
    emulator.shutdown().await;
    let _ = std::fs::remove_file(ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_tls_gets_dedicated_connections_and_nothing_stays_open() {
    let (emulator, ca) = emulator("what is the weather").await;
    let state = build_state(&azure_config(&emulator, &ca, KEY)).expect("azure state");
    state.warm_up().await;
    assert!(state.is_ready(), "{:?}", state.snapshots());
    let running = spawn_service(&state).await;

    // Two turns of one call: the second is served by the call's own connection.
    let (status, tier, len) = tts(
        &running,
        json!({"text": "Hello from the emulator", "session_id": "az-1"}),
    )
    .await;
    assert_eq!((status, tier.as_deref()), (200, Some("warm")));
    assert!(len > 44);
    let (status, tier, _) = tts(
        &running,
        json!({"text": "Second turn", "session_id": "az-1"}),
    )
    .await;
    assert_eq!((status, tier.as_deref()), (200, Some("dedicated")));

    // The caller speaks; the transcript comes back.
    let (mut ws, hello) = stt_connect(&running, "?session_id=az-1").await;
    // The socket takes its connection with the first audio, so the tier is the turn's.
    assert_eq!(hello["tier"], serde_json::Value::Null);
    let events = stt_turn(&mut ws, &pcm(1.5)).await;
    assert_eq!(events[0]["type"], "turn_start", "{events:?}");
    assert_eq!(events[0]["tier"], "warm", "{events:?}");
    assert_eq!(
        final_phrase(&events).as_deref(),
        Some("what is the weather"),
        "{events:?}"
    );
    let events = stt_turn(&mut ws, &pcm(0.5)).await;
    assert_eq!(events[0]["tier"], "dedicated", "{events:?}");
    drop(ws);

    let pools = get_json(&running.url("/api/v1/pools")).await;
    assert_eq!(pools["backend"], "azure");
    assert_eq!(pools["status"], "healthy");
    let t = &pools["pools"]["speech-tts"];
    assert_eq!(t["allocations_dedicated"], 1, "{t}");
    assert_eq!(t["allocations_warm"], 1, "{t}");
    assert_eq!(t["allocations_cold"], 0, "{t}");
    let s = &pools["pools"]["speech-stt"];
    assert_eq!(s["allocations_warm"], 1, "{s}");
    assert!(s["allocations_dedicated"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(pools["summary"]["total_active_sessions"], 2);
    assert_eq!(pools["summary"]["hit_rate_percent"], 100.0);
    // The key never appears in what the service reports.
    assert!(!pools.to_string().contains(KEY));
    let metrics = tests::client()
        .get(running.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains(KEY));
    assert!(emulator.counters().turns_served >= 4);

    running.stop(HANG).await.expect("clean shutdown");
    no_connection_left(emulator, ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_synthesis_with_sts_tokens() {
    let (emulator, ca) = emulator("hello world").await;
    let mut config = azure_config(&emulator, &ca, KEY);
    config.azure_tts_transport = TtsTransport::Rest;
    config.azure_speech_auth = AzureAuth::Token;
    let state = build_state(&config).expect("azure state");
    state.warm_up().await;
    let running = spawn_service(&state).await;
    let (status, tier, len) = tts(
        &running,
        json!({"text": "Over REST", "session_id": "rest-1", "format": "audio-24khz-48kbitrate-mono-mp3"}),
    )
    .await;
    assert_eq!((status, tier.as_deref()), (200, Some("warm")));
    assert!(len > 0);
    let (status, tier, _) = tts(&running, json!({"text": "Again", "session_id": "rest-1"})).await;
    assert_eq!((status, tier.as_deref()), (200, Some("dedicated")));
    let counters = emulator.counters();
    assert!(counters.tokens_issued >= 1, "{counters:?}");
    assert!(counters.rest_requests >= 2, "{counters:?}");
    running.stop(HANG).await.expect("clean shutdown");
    no_connection_left(emulator, ca).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_rejections_map_to_clear_statuses() {
    let (emulator, ca) = emulator("hello world").await;

    // A wrong key: the service stays up, not ready, and says why on a request.
    let mut config = azure_config(&emulator, &ca, "not-the-key");
    config.warm_pool_background_refresh = false;
    let state = build_state(&config).expect("azure state");
    state.warm_up().await;
    assert!(!state.is_ready());
    let running = spawn_service(&state).await;
    let r = tests::client()
        .post(running.url("/api/v1/tts"))
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_auth");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("credentials"), "{message}");
    assert!(!message.contains("not-the-key"), "{message}");
    let pools = get_json(&running.url("/api/v1/pools")).await;
    assert_eq!(pools["status"], "degraded");
    assert!(!pools.to_string().contains("not-the-key"));
    running.stop(HANG).await.expect("clean shutdown");

    // Throttling: the upgrade answered 429 with Retry-After reaches the client as 429 with
    // the same Retry-After.
    let mut config = azure_config(&emulator, &ca, KEY);
    config.warm_pool_enabled = false;
    let state = build_state(&config).expect("azure state");
    let running = spawn_service(&state).await;
    emulator.add_fault(
        FaultRule::new(Fault::Handshake {
            status: 429,
            retry_after: Some(2),
        })
        .target(Target::TtsWs)
        .once(),
    );
    let r = tests::client()
        .post(running.url("/api/v1/tts"))
        .json(&json!({"text": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("2")
    );
    // The fault fired once; the next request connects.
    let (status, tier, _) = tts(&running, json!({"text": "hi"})).await;
    assert_eq!((status, tier.as_deref()), (200, Some("cold")));
    running.stop(HANG).await.expect("clean shutdown");
    no_connection_left(emulator, ca).await;
}

/// SSML that does not parse would make Azure close the websocket with 1007, throwing the
/// call's connection away. It is refused before it reaches the connection: a 400 naming
/// the fault, and the call's next turn is still served by its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ssml_is_refused_without_costing_the_calls_connection() {
    let (emulator, ca) = emulator("hello world").await;
    let state = build_state(&azure_config(&emulator, &ca, KEY)).expect("azure state");
    state.warm_up().await;
    let running = spawn_service(&state).await;
    let (status, tier, _) = tts(&running, json!({"text": "First", "session_id": "ssml-1"})).await;
    assert_eq!((status, tier.as_deref()), (200, Some("warm")));
    let opened = emulator.counters().connections_opened;

    for ssml in [
        "<speak version='1.0' xml:lang='en-US'><voice name='en-US-AvaNeural'>unclosed</speak>",
        "<speak version='1.0'><voice name='en-US-AvaNeural>Hi</voice></speak>",
    ] {
        let r = tests::client()
            .post(running.url("/api/v1/tts"))
            .json(&json!({"ssml": ssml, "session_id": "ssml-1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{ssml}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("not well-formed"), "{message}");
    }

    let (status, tier, _) = tts(
        &running,
        json!({"text": "Still mine", "session_id": "ssml-1"}),
    )
    .await;
    assert_eq!((status, tier.as_deref()), (200, Some("dedicated")));
    let counters = emulator.counters();
    assert_eq!(counters.connections_opened, opened, "{counters:?}");
    running.stop(HANG).await.expect("clean shutdown");
    no_connection_left(emulator, ca).await;
}

/// The emulator restarts while no call is running: every pooled websocket is closed by the
/// server. The pools must notice on their own (not only when a caller trips over a dead
/// connection), stop counting the dead ones as warm, and refill with live connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_replace_idle_connections_the_server_closed_without_traffic() {
    let (emulator, ca) = emulator("hello world").await;
    let mut config = azure_config(&emulator, &ca, KEY);
    // The housekeeping pass bounds how long a dead idle connection can go unnoticed.
    config.warm_pool_refresh_interval = std::time::Duration::from_millis(200);
    let state = build_state(&config).expect("azure state");
    state.warm_up().await;
    assert!(state.is_ready(), "{:?}", state.snapshots());
    let first = emulator.counters().connections_opened;

    let emulator = emulator.restart().await.expect("restart");
    // Every idle connection was closed by the restart; none was used since.
    let refilled = emulator
        .wait_for_counters(
            // Two TTS, one text-streaming TTS (the emulator counts it as TTS), one STT.
            |c| c.tts_connections_open >= 3 && c.stt_connections_open >= 1,
            HANG,
        )
        .await;
    assert!(
        refilled.is_ok(),
        "the pools did not replace the closed idle connections: {refilled:?} {:?}",
        state.snapshots()
    );
    assert!(emulator.counters().connections_opened >= first + 4);
    // What the pools report as warm is what is really open.
    let deadline = tokio::time::Instant::now() + HANG;
    loop {
        let snapshots = state.snapshots();
        let counters = emulator.counters();
        let idle: Vec<usize> = snapshots.iter().map(|s| s.warm_pool_size).collect();
        if idle == [2, 1, 1]
            && counters.tts_connections_open == 3
            && counters.stt_connections_open == 1
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{snapshots:?} {counters:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, tier, _) = {
        let running = spawn_service(&state).await;
        let r = tts(&running, json!({"text": "after the restart"})).await;
        running.stop(HANG).await.expect("clean shutdown");
        r
    };
    assert_eq!((status, tier.as_deref()), (200, Some("warm")));
    no_connection_left(emulator, ca).await;
}
