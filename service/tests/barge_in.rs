//! Barge-in through the real service, the Azure backend and the emulator over TLS: a
//! caller that interrupts the agent mid-sentence hangs up on the TTS stream (or cancels
//! it with `DELETE /api/v1/tts/{request_id}`), and the call's next turn must still be
//! served by the call's own connection (DEDICATED), with no new connection anywhere.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use service::config::BackendChoice;
use service::secret::Secret;
use service::test_support::LoopbackServer;
use service::{AppState, Config, build_state};
use speech_emulator::{Emulator, EmulatorConfig, EmulatorHandle};

const KEY: &str = "barge-in-test-key";

/// Guards against a hang only; no test asserts on elapsed time.
const HANG: Duration = Duration::from_secs(30);

/// About 90 s of speech (the emulator speaks 60 ms per character): more audio than the
/// service's drain bound (`TTS_DRAIN_MAX_BYTES`, 4 MiB, is 87 s of the default 24 kHz
/// 16-bit format), so the connection survives only if the turn is really stopped.
fn long_text() -> String {
    "The agent reads a long answer that the caller interrupts. ".repeat(26)
}

struct Setup {
    emulator: EmulatorHandle,
    ca: PathBuf,
    state: AppState,
    server: LoopbackServer,
}

/// The service pointed at a TLS emulator as a user would configure it.
async fn setup() -> Setup {
    service::test_support::install_crypto_provider();
    let emulator = Emulator::start(EmulatorConfig::default().with_key(KEY))
        .await
        .expect("emulator");
    let ca = std::env::temp_dir().join(format!(
        "speech-pool-barge-in-ca-{}-{}.pem",
        std::process::id(),
        emulator.addr().port()
    ));
    std::fs::write(&ca, emulator.ca_cert_pem().expect("TLS emulator has a CA")).expect("CA");
    let mut config = Config::defaults();
    config.backend = BackendChoice::Azure;
    config.azure_speech_key = Some(Secret::new(KEY));
    config.azure_speech_endpoint = Some(emulator.base_url_http());
    config.azure_speech_ca_cert = Some(ca.clone());
    config.warm_pool_tts_size = 2;
    config.warm_pool_stt_size = 1;
    // The adaptive target resizes the warm set with demand, which would open connections
    // for reasons that have nothing to do with barge-in; the claim here is about the
    // call's own connection.
    config.warm_pool_adaptive = false;
    let state = build_state(&config).expect("azure state");
    state.warm_up().await;
    assert!(state.is_ready(), "{:?}", state.snapshots());
    let server = LoopbackServer::start(&state, Duration::from_secs(5))
        .await
        .expect("bind");
    Setup {
        emulator,
        ca,
        state,
        server,
    }
}

impl Setup {
    /// Waits until the TTS pool has nothing being created and its warm set is full, so
    /// that counters read afterwards are not moved by a refill still under way.
    async fn settle(&self) {
        let pool = &self.state.pools().tts;
        tokio::time::timeout(HANG, async {
            loop {
                let s = pool.snapshot();
                if s.creating == 0 && s.warm_pool_size >= s.warm_pool_target {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the TTS pool settles");
    }

    async fn finish(self) {
        self.server.stop(HANG).await.expect("clean shutdown");
        let left = self
            .emulator
            .wait_for_counters(|c| c.connections_open == 0, HANG)
            .await;
        assert!(left.is_ok(), "connections left open: {left:?}");
        self.emulator.shutdown().await;
        let _ = std::fs::remove_file(self.ca);
    }
}

/// A client that never reuses an HTTP connection, so dropping a response mid-body is a
/// real hang-up (the TCP connection closes), as when a voice agent abandons a stream.
fn hanging_up_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

/// Starts a turn of `session` and returns the response after its first audio chunk.
async fn first_chunk(
    client: &reqwest::Client,
    server: &LoopbackServer,
    session: &str,
) -> (reqwest::Response, String) {
    let mut resp = tokio::time::timeout(
        HANG,
        client
            .post(server.url("/api/v1/tts"))
            .json(&json!({"text": long_text(), "session_id": session}))
            .send(),
    )
    .await
    .expect("response in time")
    .expect("request sent");
    assert_eq!(resp.status(), 200);
    let tier = resp
        .headers()
        .get(service::TIER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let chunk = tokio::time::timeout(HANG, resp.chunk())
        .await
        .expect("first chunk in time")
        .expect("body readable")
        .expect("a first chunk");
    assert!(!chunk.is_empty());
    (resp, tier)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_interrupted_turns_keep_the_calls_connection() {
    const TURNS: usize = 100;
    let t = setup().await;
    let client = hanging_up_client();

    // The call's first turn takes a warm connection (and the pool refills its warm set).
    let (resp, tier) = first_chunk(&client, &t.server, "barge-1").await;
    assert_eq!(tier, "warm");
    drop(resp);
    t.settle().await;
    let opened = t.emulator.counters().connections_opened;
    let created = t.state.pools().tts.snapshot().created_total;

    for i in 1..TURNS {
        let (resp, tier) = first_chunk(&client, &t.server, "barge-1").await;
        assert_eq!(tier, "dedicated", "turn {i} after an interrupted turn");
        // The barge-in: the client hangs up after the first chunk.
        drop(resp);
    }
    // The last interrupted turn ends before the session's connection is free again.
    let (resp, tier) = first_chunk(&client, &t.server, "barge-1").await;
    assert_eq!(tier, "dedicated");
    drop(resp);
    t.settle().await;

    let counters = t.emulator.counters();
    assert_eq!(
        counters.connections_opened - opened,
        0,
        "no new websocket: {counters:?}"
    );
    let s = t.state.pools().tts.snapshot();
    assert_eq!(s.created_total - created, 0, "no connection created: {s:?}");
    assert_eq!(s.allocations_dedicated, TURNS as u64, "{s:?}");
    // The turns were stopped through the protocol, not read to their end.
    assert!(counters.turns_stopped > 0, "{counters:?}");
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cancels_a_streaming_turn_and_keeps_its_connection() {
    let t = setup().await;
    let client = service::test_support::client();
    let cancel = |id: &str| {
        client
            .delete(t.server.url(&format!("/api/v1/tts/{id}")))
            .send()
    };

    let (mut resp, tier) = first_chunk(&client, &t.server, "cancel-1").await;
    assert_eq!(tier, "warm");
    let id = resp
        .headers()
        .get(service::REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .expect("the response names its turn")
        .to_owned();
    t.settle().await;
    let opened = t.emulator.counters().connections_opened;

    let r = cancel(&id).await.expect("DELETE sent");
    assert_eq!(r.status(), 202);
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(body["request_id"], id.as_str());
    assert_eq!(body["already_stopping"], false);

    // The stream ends early, and as cut off, not as a complete body.
    let full = long_text().len() as u64 * 60 * 48; // 60 ms a character, 48 bytes a ms
    let mut got = 0u64;
    let end = tokio::time::timeout(HANG, async {
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => got += c.len() as u64,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the cancelled stream ends");
    assert!(end.is_err(), "a cancelled stream must not look complete");
    assert!(got < full, "{got} of {full} bytes");

    // The call's next turn gets the same connection, whole.
    let r = client
        .post(t.server.url("/api/v1/tts"))
        .json(&json!({"text": "Yes?", "session_id": "cancel-1"}))
        .send()
        .await
        .expect("next turn");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers().get(service::TIER_HEADER).map(|v| v.as_bytes()),
        Some(&b"dedicated"[..])
    );
    assert!(r.bytes().await.expect("whole body").len() > 44);
    let counters = t.emulator.counters();
    assert_eq!(counters.connections_opened, opened, "{counters:?}");
    assert_eq!(counters.turns_stopped, 1, "{counters:?}");

    // The turn is over: cancelling it again finds nothing. Ids are checked.
    let r = cancel(&id).await.expect("DELETE sent");
    assert_eq!(r.status(), 404);
    let r = cancel(&"0".repeat(32)).await.expect("DELETE sent");
    assert_eq!(r.status(), 404);
    let r = cancel("not-a-request-id").await.expect("DELETE sent");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    t.finish().await;
}

/// The caller hangs up while the agent is still speaking: `DELETE /api/v1/sessions/{id}`
/// stops the call's turn in flight (nobody listens any more) and releases the session,
/// instead of waiting for the rest of the answer; the stopped turn's connection goes back
/// to the warm set, not to the bin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_session_stops_its_turn_in_flight_and_keeps_the_connection() {
    let t = setup().await;
    let client = service::test_support::client();
    let (mut resp, tier) = first_chunk(&client, &t.server, "hang-up-1").await;
    assert_eq!(tier, "warm");
    t.settle().await;
    let opened = t.emulator.counters().connections_opened;

    let r = tokio::time::timeout(
        HANG,
        client
            .delete(t.server.url("/api/v1/sessions/hang-up-1"))
            .send(),
    )
    .await
    .expect("the release does not wait for the rest of the answer")
    .expect("DELETE sent");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.expect("JSON");
    assert_eq!(body["tts_turns_stopped"], 1, "{body}");
    assert_eq!(body["released"]["speech-tts"], true, "{body}");

    // The answer's stream ends early.
    let full = long_text().len() as u64 * 60 * 48;
    let mut got = 0u64;
    tokio::time::timeout(HANG, async {
        while let Ok(Some(c)) = resp.chunk().await {
            got += c.len() as u64;
        }
    })
    .await
    .expect("the stopped stream ends");
    assert!(got < full, "{got} of {full} bytes");

    // The session is gone and its connection is warm again: the next call's first turn
    // takes it, and nothing new was opened.
    t.settle().await;
    let tts = t.state.pools().tts.snapshot();
    assert_eq!((tts.active_sessions, tts.dedicated), (0, 0), "{tts:?}");
    let r = client
        .post(t.server.url("/api/v1/tts"))
        .json(&json!({"text": "Hello?", "session_id": "hang-up-2"}))
        .send()
        .await
        .expect("next call");
    assert_eq!(
        r.headers().get(service::TIER_HEADER).map(|v| v.as_bytes()),
        Some(&b"warm"[..])
    );
    assert!(r.bytes().await.expect("whole body").len() > 44);
    let counters = t.emulator.counters();
    assert_eq!(counters.connections_opened, opened, "{counters:?}");
    assert_eq!(counters.turns_stopped, 1, "{counters:?}");
    t.finish().await;
}
