//! Azure's websocket protocol served by translation (`service::azure_proxy::translate`):
//! the backend's connections cannot relay the protocol (the mock; TTS over REST), so the
//! service speaks it to the SDK itself. A raw websocket client sends what the JavaScript
//! SDK sends; the answers must be what its receive loop needs (request ids, stream ids,
//! message order), with the same tiers as relayed sockets.

mod common;

use std::time::Duration;

use common::sdk::{
    Got, HANG, Ws, binary, check_tts_frames, check_tts_turn, connect, metadata, recognize, speak,
    text, until_turn_end, words,
};
use futures_util::{SinkExt, StreamExt};
use service::AppState;
use service::test_support::{LoopbackServer, client};
use speech_mock::backend::{MockConfig, MockCounters};
use tokio_tungstenite::tungstenite::Message;

const TTS_PATH: &str = "/tts/cognitiveservices/websocket/v1";

struct Setup {
    state: AppState,
    server: LoopbackServer,
    tts: std::sync::Arc<MockCounters>,
}

async fn setup(mock: MockConfig) -> Setup {
    let t = common::build(&common::config(), mock);
    t.state.warm_up().await;
    let server = common::start(&t.state).await;
    Setup {
        state: t.state,
        server,
        tts: t.tts,
    }
}

impl Setup {
    async fn connect(&self, path: &str) -> Ws {
        connect(&self.server, path, &[]).await.expect("upgrade")
    }

    async fn pool(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = client()
            .get(self.server.url("/api/v1/pools"))
            .send()
            .await
            .expect("pools")
            .json()
            .await
            .expect("json");
        v["pools"][name].clone()
    }

    /// Waits until the pool has no active session (the socket's session was released).
    async fn released(&self, name: &str) -> serde_json::Value {
        for _ in 0..200 {
            let p = self.pool(name).await;
            if p["active_sessions"] == 0 {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the session was not released: {}", self.pool(name).await);
    }

    async fn finish(self) {
        let _ = &self.state;
        common::stop(self.server).await;
    }
}

/// The mock speaks 60 ms per character of the SSML's text; 16 kHz 16-bit is 32 bytes a ms.
fn mock_bytes(words: &str) -> usize {
    32 * 60 * words.chars().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_turns_are_translated_on_one_warm_then_dedicated_connection() {
    let s = setup(MockConfig::default()).await;
    let mut ws = s
        .connect(&format!(
            "{TTS_PATH}?Ocp-Apim-Subscription-Key=any&X-ConnectionId=F0EFE1EA82F640209985055ED9F47D65"
        ))
        .await;
    let rid1 = "9670D8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid1, "Hello translated world", true).await;
    let got = until_turn_end(&mut ws).await.expect("turn 1");
    let bytes = check_tts_turn(&got, rid1);
    assert_eq!(bytes, mock_bytes("Hello translated world"));
    assert_eq!(words(&got), ["Hello", "translated", "world"]);
    // Boundaries come before the audio they describe, with offsets in 100-ns ticks.
    let first_word = got.iter().position(|g| g.path() == "audio.metadata");
    let first_audio = got.iter().position(|g| g.binary);
    assert!(first_word < first_audio, "{got:?}");
    let second = &metadata(&got, "WordBoundary")[1]["Data"];
    assert_eq!(second["Offset"], 6 * 600_000, "{second}");
    assert_eq!(second["text"]["Length"], 10);
    // sessionEndEnabled: the audio's length, just before the empty end frame.
    let end = &metadata(&got, "SessionEnd")[0]["Data"]["Offset"];
    assert_eq!(end, &serde_json::json!(22 * 600_000_u64));
    let audio: Vec<&Got> = got.iter().filter(|g| g.binary).collect();
    assert_eq!(
        audio[0].header("content-type"),
        Some("audio/pcm;rate=16000")
    );
    assert_eq!(audio.last().and_then(|a| a.header("content-type")), None);

    let rid2 = "1111D8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid2, "Second turn", false).await;
    let got = until_turn_end(&mut ws).await.expect("turn 2");
    assert_eq!(check_tts_turn(&got, rid2), mock_bytes("Second turn"));
    let tts = s.pool("speech-tts").await;
    assert_eq!(tts["allocations_warm"], 1, "{tts}");
    assert_eq!(tts["allocations_dedicated"], 1, "{tts}");
    assert_eq!(tts["allocations_cold"], 0, "{tts}");
    assert_eq!(tts["active_sessions"], 1, "{tts}");

    // The SDK disconnects: the connection goes back to the warm set, not closed.
    ws.close(None).await.expect("close");
    drop(ws);
    s.released("speech-tts").await;
    assert_eq!(s.tts.closed(), 0);
    assert_eq!(s.tts.turns_served(), 2);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_the_turn_properly_and_a_hang_up_keeps_the_connection() {
    // 20 ms between 100 ms chunks: a long sentence takes a couple of seconds.
    let s = setup(MockConfig {
        chunk_interval: Duration::from_millis(20),
        chunk_bytes: 3200,
        ..MockConfig::default()
    })
    .await;
    let long = "a sentence long enough to be interrupted after its first words are spoken";
    let mut ws = s.connect(TTS_PATH).await;
    let rid = "AAAAD8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid, long, true).await;
    // Wait for the first audio, then barge in as the SDK does (synthesis.control stop).
    loop {
        match tokio::time::timeout(HANG, ws.next())
            .await
            .expect("in time")
        {
            Some(Ok(Message::Binary(_))) => break,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    ws.send(text(
        &[("Path", "synthesis.control"), ("X-RequestId", rid)],
        r#"{"action":"stop"}"#,
    ))
    .await
    .expect("send");
    let got = until_turn_end(&mut ws)
        .await
        .expect("the stopped turn ends");
    assert_eq!(got.last().map(Got::path), Some("turn.end"));
    let rest: usize = got.iter().filter(|g| g.binary).map(|g| g.payload_len).sum();
    assert!(
        rest < mock_bytes(long) / 2,
        "stopped early: {rest} bytes after the stop"
    );
    // The next turn is served on the same, DEDICATED, connection.
    let rid2 = "BBBBD8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid2, "after the stop", false).await;
    let got = until_turn_end(&mut ws).await.expect("next turn");
    check_tts_turn(&got, rid2);
    let tts = s.pool("speech-tts").await;
    assert_eq!(tts["allocations_dedicated"], 1, "{tts}");

    // A hang-up mid-turn: the rest of the turn is drained and the connection kept.
    speak(&mut ws, "CCCCD8904BB94E2A8C6E7C1F3A5B2D10", long, false).await;
    loop {
        if let Some(Ok(Message::Binary(_))) = ws.next().await {
            break;
        }
    }
    drop(ws);
    s.released("speech-tts").await;
    assert_eq!(s.tts.closed(), 0, "the connection was kept");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_service_cannot_speak_close_with_1007() {
    let s = setup(MockConfig::default()).await;
    let rid = "DDDDD8904BB94E2A8C6E7C1F3A5B2D10";
    // SSML without a <speak> root.
    let mut ws = s.connect(TTS_PATH).await;
    ws.send(text(&[("Path", "ssml"), ("X-RequestId", rid)], "hello"))
        .await
        .expect("send");
    let (code, got) = until_turn_end(&mut ws).await.expect_err("closed");
    assert_eq!(code, 1007);
    assert!(got.is_empty(), "{got:?}");
    // An output format Azure does not have.
    let mut ws = s.connect(TTS_PATH).await;
    ws.send(text(
        &[("Path", "synthesis.context"), ("X-RequestId", rid)],
        r#"{"synthesis":{"audio":{"outputFormat":"wav-please"}}}"#,
    ))
    .await
    .expect("send");
    let (code, _) = until_turn_end(&mut ws).await.expect_err("closed");
    assert_eq!(code, 1007);
    // A request id that cannot be echoed in a header.
    let mut ws = s.connect(TTS_PATH).await;
    ws.send(text(
        &[("Path", "ssml"), ("X-RequestId", "not an id")],
        "<speak>x</speak>",
    ))
    .await
    .expect("send");
    let (code, _) = until_turn_end(&mut ws).await.expect_err("closed");
    assert_eq!(code, 1002);
    // None of these took a connection from the pool for good.
    s.released("speech-tts").await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stt_turns_are_translated_with_the_sockets_combination() {
    let s = setup(MockConfig::default()).await;
    let mut ws = s
        .connect("/speech/recognition/interactive/cognitiveservices/v1?language=en-US")
        .await;
    let rid1 = "EEEED8904BB94E2A8C6E7C1F3A5B2D10";
    recognize(&mut ws, rid1, 1.0, true).await;
    let got = until_turn_end(&mut ws).await.expect("turn 1");
    let paths: Vec<&str> = got.iter().map(Got::path).collect();
    assert_eq!(paths.first(), Some(&"turn.start"), "{paths:?}");
    assert_eq!(paths.get(1), Some(&"speech.startDetected"), "{paths:?}");
    assert!(paths.contains(&"speech.hypothesis"), "{paths:?}");
    assert_eq!(
        &paths[paths.len() - 3..],
        ["speech.endDetected", "speech.phrase", "turn.end"]
    );
    for g in &got {
        assert_eq!(g.header("x-requestid"), Some(rid1), "{g:?}");
        assert!(!g.binary);
    }
    let phrase = got.iter().find(|g| g.path() == "speech.phrase").unwrap();
    let v = phrase.json();
    assert_eq!(v["RecognitionStatus"], "Success");
    assert_eq!(v["DisplayText"], "hello world");
    assert_eq!(v["Duration"], 10_000_000);
    assert!(v.get("NBest").is_none(), "simple format: {v}");
    // Late audio of the finished turn (the JS SDK sends its end frame twice) is ignored.
    ws.send(binary(&[("Path", "audio"), ("X-RequestId", rid1)], &[]))
        .await
        .expect("send");
    let rid2 = "FFFFD8904BB94E2A8C6E7C1F3A5B2D10";
    recognize(&mut ws, rid2, 0.5, false).await;
    let got = until_turn_end(&mut ws).await.expect("turn 2");
    assert_eq!(got[0].header("x-requestid"), Some(rid2));
    let p = s.pool("speech-stt:interactive:en-us:simple").await;
    assert_eq!(p["allocations_cold"], 1, "{p}");
    assert_eq!(p["allocations_dedicated"], 1, "{p}");
    ws.close(None).await.expect("close");

    // The service's own combination (conversation), detailed output: WARM.
    let mut ws = s
        .connect("/stt/speech/recognition/conversation/cognitiveservices/v1?language=en-us&format=detailed")
        .await;
    recognize(&mut ws, "0000D8904BB94E2A8C6E7C1F3A5B2D10", 1.0, true).await;
    let got = until_turn_end(&mut ws).await.expect("turn");
    let phrase = got.iter().find(|g| g.path() == "speech.phrase").unwrap();
    assert_eq!(phrase.json()["NBest"][0]["Display"], "hello world");
    ws.close(None).await.expect("close");
    let p = s.pool("speech-stt:conversation:en-us:detailed").await;
    assert_eq!(p["allocations_cold"], 1, "{p}");

    // Audio the recognizer cannot take (8 kHz): 1007, as Azure closes for bad audio.
    let mut ws = s
        .connect("/speech/recognition/conversation/cognitiveservices/v1?language=en-US")
        .await;
    let mut header = common::sdk::riff_header();
    header[24..28].copy_from_slice(&8_000u32.to_le_bytes());
    ws.send(binary(
        &[
            ("Path", "audio"),
            ("X-RequestId", "1234D8904BB94E2A8C6E7C1F3A5B2D10"),
        ],
        &header,
    ))
    .await
    .expect("send");
    let (code, _) = until_turn_end(&mut ws).await.expect_err("closed");
    assert_eq!(code, 1007);
    let stt = s.released("speech-stt").await;
    assert_eq!(stt["allocations_warm"], 1, "{stt}");
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_turn_is_the_close_the_sdk_retries() {
    // Every connection drops after its first audio chunk (Azure: a 1006 mid-stream).
    let s = setup(MockConfig {
        drop_after_chunks: Some(1),
        chunk_bytes: 3200,
        ..MockConfig::default()
    })
    .await;
    let mut ws = s.connect(TTS_PATH).await;
    speak(
        &mut ws,
        "5555D8904BB94E2A8C6E7C1F3A5B2D10",
        "a few words to say",
        true,
    )
    .await;
    let (code, got) = until_turn_end(&mut ws).await.expect_err("closed");
    assert_eq!(code, 1011, "{got:?}");
    assert_eq!(got[0].path(), "turn.start");
    s.released("speech-tts").await;
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_over_rest_is_served_by_translation_too() {
    let up = common::azure::Upstream::start(|c| {
        c.azure_tts_transport = service::config::TtsTransport::Rest;
    })
    .await;
    let mut ws = connect(&up.server, TTS_PATH, &[]).await.expect("upgrade");
    let rid = "6666D8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid, "Hello over REST", true).await;
    let got = until_turn_end(&mut ws).await.expect("turn");
    // The emulator's speech: 50 ms lead, 60 ms per character, 50 ms tail.
    assert_eq!(
        check_tts_frames(&got, rid),
        32 * (50 + 60 * "Hello over REST".len() + 50)
    );
    ws.close(None).await.expect("close");
    up.finish().await;
}
