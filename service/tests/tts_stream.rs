//! `GET /api/v1/tts/stream` with the Azure backend against the emulator over TLS: audio
//! before the end of the text, pieces and word boundaries in order, session affinity,
//! cancel, and clear close reasons for bad messages.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Running, start, stop};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use service::config::{BackendChoice, Config};
use service::secret::Secret;
use speech_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const KEY: &str = "tts-stream-test-key";
/// Guards against a hang only; no test asserts on elapsed time.
const HANG: Duration = Duration::from_secs(20);

struct Setup {
    emulator: EmulatorHandle,
    ca: PathBuf,
    state: service::AppState,
    running: Running,
}

/// A TLS emulator (with `rtt` of simulated network delay) and the service pointed at it
/// through the real configuration path.
async fn setup(rtt: Duration) -> Setup {
    service::install_crypto_provider();
    let emulator = Emulator::start(EmulatorConfig::default().with_key(KEY).with_rtt(rtt))
        .await
        .expect("emulator");
    let ca = std::env::temp_dir().join(format!(
        "speech-pool-tts-stream-ca-{}-{}.pem",
        std::process::id(),
        emulator.addr().port()
    ));
    std::fs::write(&ca, emulator.ca_cert_pem().expect("TLS emulator has a CA")).unwrap();
    let mut config = Config::defaults();
    config.backend = BackendChoice::Azure;
    config.azure_speech_key = Some(Secret::new(KEY));
    config.azure_speech_endpoint = Some(emulator.base_url_http());
    config.azure_speech_ca_cert = Some(ca.clone());
    config.warm_pool_tts_size = 1;
    config.warm_pool_stt_size = 1;
    config.warm_pool_tts_stream_size = 2;
    let state = service::build_state(&config).expect("azure state");
    state.warm_up().await;
    assert!(state.is_ready(), "{:?}", state.snapshots());
    let running = start(&state).await;
    Setup {
        emulator,
        ca,
        state,
        running,
    }
}

impl Setup {
    async fn finish(self) {
        stop(self.running).await;
        let after = self
            .emulator
            .wait_for_counters(|c| c.connections_open == 0, HANG)
            .await;
        assert!(after.is_ok(), "connections left open: {after:?}");
        self.emulator.shutdown().await;
        let _ = std::fs::remove_file(self.ca);
    }

    /// Opens a stream; returns the socket, the tier header and the `connected` message.
    async fn open(&self, query: &str) -> (Ws, String, Value) {
        let url = self.running.ws_url(&format!("/api/v1/tts/stream{query}"));
        let (mut ws, response) = connect_async(url.into_client_request().unwrap())
            .await
            .expect("connect");
        let tier = response
            .headers()
            .get(service::TIER_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let hello = next(&mut ws).await;
        assert_eq!(hello["type"], "connected", "{hello}");
        assert_eq!(hello["tier"], tier.as_str(), "{hello}");
        (ws, tier, hello)
    }
}

/// What the service sent next.
#[derive(Debug)]
enum Got {
    Json(Value),
    Audio(usize),
    Close(Option<u16>, String),
}

async fn recv(ws: &mut Ws) -> Got {
    loop {
        let msg = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("no message in time");
        return match msg {
            Some(Ok(Message::Text(t))) => Got::Json(serde_json::from_str(&t).expect("JSON")),
            Some(Ok(Message::Binary(b))) => Got::Audio(b.len()),
            Some(Ok(Message::Close(f))) => Got::Close(
                f.as_ref().map(|f| u16::from(f.code)),
                f.map(|f| f.reason.to_string()).unwrap_or_default(),
            ),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => Got::Close(None, String::new()),
        };
    }
}

async fn next(ws: &mut Ws) -> Value {
    match recv(ws).await {
        Got::Json(v) => v,
        other => panic!("expected JSON, got {other:?}"),
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Everything up to the close: JSON messages, audio bytes, and the close.
async fn rest(ws: &mut Ws) -> (Vec<Value>, usize, (Option<u16>, String)) {
    let (mut msgs, mut audio) = (Vec::new(), 0);
    loop {
        match recv(ws).await {
            Got::Json(v) => msgs.push(v),
            Got::Audio(n) => audio += n,
            Got::Close(code, reason) => return (msgs, audio, (code, reason)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_before_the_end_words_in_order_and_a_dedicated_second_stream() {
    let s = setup(Duration::ZERO).await;
    let (mut ws, tier, hello) = s
        .open("?session_id=call-1&format=raw-24khz-16bit-mono-pcm")
        .await;
    assert_eq!(tier, "warm");
    assert_eq!(hello["pool"], service::TTS_STREAM_POOL);
    assert!(hello["timings"]["acquire_ms"].is_number(), "{hello}");

    let pieces = [
        "The", " weather", " is", " mild", " today,", " with", " light", " clouds", " after",
        " noon.",
    ];
    for p in &pieces[..6] {
        send(&mut ws, json!({"type": "text", "text": p})).await;
    }
    // The first clause is complete: audio comes although `end` has not been sent.
    let mut early = Vec::new();
    let mut early_audio = 0;
    loop {
        match recv(&mut ws).await {
            Got::Audio(n) => {
                early_audio += n;
                break;
            }
            Got::Json(v) => {
                assert_eq!(v["type"], "word", "only words come before audio: {v}");
                early.push(v);
            }
            Got::Close(code, reason) => panic!("closed before any audio: {code:?} {reason}"),
        }
    }
    for p in &pieces[6..] {
        send(&mut ws, json!({"type": "text", "text": p})).await;
    }
    send(&mut ws, json!({"type": "end"})).await;
    let (msgs, audio, close) = rest(&mut ws).await;
    assert_eq!(close, (Some(1000), "turn complete".to_owned()));
    let end = msgs.last().expect("turn_end");
    assert_eq!(end["type"], "turn_end", "{msgs:?}");
    assert_eq!(end["request_id"], hello["request_id"]);
    assert_eq!(end["audio_bytes"], (early_audio + audio) as u64, "{end}");
    for key in ["acquire_ms", "first_audio_ms", "total_ms"] {
        assert!(end["timings"][key].is_number(), "{key}: {end}");
    }

    // Word boundaries, in the order of the pieces, pointing into their concatenation.
    let text: String = pieces.concat();
    let words: Vec<&Value> = early
        .iter()
        .chain(msgs.iter())
        .filter(|m| m["type"] == "word")
        .collect();
    let spoken: Vec<&str> = words.iter().filter_map(|w| w["text"].as_str()).collect();
    assert_eq!(
        spoken,
        [
            "The", "weather", "is", "mild", "today", "with", "light", "clouds", "after", "noon"
        ]
    );
    let mut last_offset = -1.0;
    for w in &words {
        let at = w["text_offset"].as_u64().unwrap() as usize;
        let len = w["word_length"].as_u64().unwrap() as usize;
        assert_eq!(&text[at..at + len], w["text"].as_str().unwrap(), "{w}");
        let offset = w["audio_offset_ms"].as_f64().unwrap();
        assert!(offset > last_offset, "audio offsets increase: {words:?}");
        last_offset = offset;
    }

    // The call's next utterance is served by its own connection.
    let (mut ws, tier, _) = s
        .open("?session_id=call-1&format=raw-24khz-16bit-mono-pcm&word_boundaries=false")
        .await;
    assert_eq!(tier, "dedicated");
    send(&mut ws, json!({"type": "text", "text": "Second answer."})).await;
    send(&mut ws, json!({"type": "end"})).await;
    let (msgs, audio, close) = rest(&mut ws).await;
    assert_eq!(close.0, Some(1000));
    assert!(audio > 0);
    assert!(msgs.iter().all(|m| m["type"] != "word"), "{msgs:?}");

    let pools = common::client()
        .get(s.running.url("/api/v1/pools"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let p = &pools["pools"][service::TTS_STREAM_POOL];
    assert_eq!(p["allocations_warm"], 1, "{p}");
    assert_eq!(p["allocations_dedicated"], 1, "{p}");
    assert_eq!(p["allocations_cold"], 0, "{p}");
    // The classic TTS pool was not touched.
    assert_eq!(pools["pools"]["speech-tts"]["allocations_total"], 0);
    drop(s.state.clone());
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_utterance_and_keeps_the_connection() {
    let s = setup(Duration::ZERO).await;
    let (mut ws, _, _) = s.open("?session_id=call-2").await;
    send(
        &mut ws,
        json!({"type": "text", "text": "A long answer, that the caller interrupts"}),
    )
    .await;
    loop {
        match recv(&mut ws).await {
            Got::Audio(_) => break,
            Got::Json(v) => assert_eq!(v["type"], "word", "{v}"),
            Got::Close(code, reason) => panic!("closed: {code:?} {reason}"),
        }
    }
    send(&mut ws, json!({"type": "cancel"})).await;
    let (msgs, _, close) = rest(&mut ws).await;
    assert_eq!(close, (Some(1000), "cancelled".to_owned()));
    assert!(msgs.iter().any(|m| m["type"] == "cancelled"), "{msgs:?}");
    // The stop went through the protocol and the turn drained: the next utterance of the
    // call finds its connection.
    let (mut ws, tier, _) = s.open("?session_id=call-2").await;
    assert_eq!(tier, "dedicated");
    send(&mut ws, json!({"type": "text", "text": "Yes?"})).await;
    send(&mut ws, json!({"type": "end"})).await;
    let (msgs, audio, close) = rest(&mut ws).await;
    assert_eq!(close.0, Some(1000), "{msgs:?}");
    assert!(audio > 0);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_and_parameters_get_clear_reasons() {
    // Some simulated delay so the synthesis cannot finish between two client messages.
    let s = setup(Duration::from_millis(50)).await;

    let (mut ws, _, _) = s.open("").await;
    ws.send(Message::text("speak this")).await.unwrap();
    let (_, _, (code, reason)) = rest(&mut ws).await;
    assert_eq!(code, Some(1007));
    assert!(reason.contains("expected"), "{reason}");

    let (mut ws, _, _) = s.open("").await;
    send(&mut ws, json!({"type": "txet", "text": "typo"})).await;
    let (_, _, (code, _)) = rest(&mut ws).await;
    assert_eq!(code, Some(1007));

    let (mut ws, _, _) = s.open("").await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let (_, _, (code, reason)) = rest(&mut ws).await;
    assert_eq!(code, Some(1003));
    assert!(reason.contains("binary"), "{reason}");

    let (mut ws, _, _) = s.open("").await;
    send(&mut ws, json!({"type": "text", "text": "Hello."})).await;
    send(&mut ws, json!({"type": "end"})).await;
    send(&mut ws, json!({"type": "text", "text": "more"})).await;
    let (_, _, (code, reason)) = rest(&mut ws).await;
    assert_eq!((code, reason.as_str()), (Some(1008), "text after end"));

    // Parameters are checked before the upgrade: a plain HTTP 400 with a JSON reason.
    for query in [
        "?format=wav-please",
        "?voice=bad%20voice",
        "?word_boundaries=maybe",
        "?session_id=has%20space",
        "?unknown=1",
    ] {
        let url = s.running.ws_url(&format!("/api/v1/tts/stream{query}"));
        match connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status(), 400, "{query}");
            }
            other => panic!("{query}: expected HTTP 400, got {other:?}"),
        }
    }
    // Not a websocket request.
    let r = common::client()
        .get(s.running.url("/api/v1/tts/stream"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    s.finish().await;
}

/// Azure's idle and age closes (1000) can cross an utterance's first text, and the
/// connections warmed together idle out together. An utterance whose connection closes
/// before the client had any audio moves to a fresh connection with all the text it was
/// given, up to three times: the client gets the whole utterance, said once, under the
/// request id it was given. A fourth close reaches the client as an error. A drop moves
/// the utterance once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_utterance_whose_connection_closes_before_audio_moves_with_its_text() {
    use common::azure::idle_close_before_turn;
    use speech_emulator::{Fault, FaultRule, Target, TurnPoint};

    let s = setup(Duration::ZERO).await;
    let pieces = [
        "Nothing", " said", " here", " is", " lost,", " nor", " said", " twice.",
    ];
    // Sends the utterance; returns the messages, the audio bytes and the close.
    async fn say(ws: &mut Ws, pieces: &[&str]) -> (Vec<Value>, usize, (Option<u16>, String)) {
        for p in pieces {
            send(ws, json!({"type": "text", "text": p})).await;
        }
        send(ws, json!({"type": "end"})).await;
        rest(ws).await
    }
    let spoken = |msgs: &[Value]| -> Vec<String> {
        msgs.iter()
            .filter(|m| m["type"] == "word")
            .filter_map(|m| m["text"].as_str().map(str::to_owned))
            .collect()
    };
    let query = "?session_id=moves&format=raw-24khz-16bit-mono-pcm";

    // The reference: the utterance on a connection that stays up.
    let (mut ws, _, _) = s.open(query).await;
    let (msgs, reference_audio, close) = say(&mut ws, &pieces).await;
    assert_eq!(close, (Some(1000), "turn complete".to_owned()), "{msgs:?}");
    let reference_words = spoken(&msgs);
    assert_eq!(reference_words.len(), pieces.len(), "{msgs:?}");

    s.emulator
        .add_fault(idle_close_before_turn(Target::TtsWs, 3));
    let (mut ws, tier, hello) = s.open(query).await;
    assert_eq!(tier, "dedicated");
    let (msgs, audio, close) = say(&mut ws, &pieces).await;
    assert_eq!(
        close,
        (Some(1000), "turn complete".to_owned()),
        "three closes in a row are invisible: {msgs:?}"
    );
    assert_eq!(spoken(&msgs), reference_words, "{msgs:?}");
    assert_eq!(audio, reference_audio, "the whole utterance, said once");
    let end = msgs.last().expect("turn_end");
    assert_eq!(end["type"], "turn_end", "{msgs:?}");
    assert_eq!(end["request_id"], hello["request_id"], "{end}");
    assert_eq!(end["audio_bytes"], audio as u64, "{end}");

    // The close arrives after the connection was given the text (its first audio is
    // delayed, and the text went out long before the close): the text moves too.
    s.emulator.add_fault(
        FaultRule::new(Fault::FirstAudioDelay { ms: 3_000 })
            .target(Target::TtsWs)
            .once(),
    );
    let (mut ws, _, hello) = s.open(query).await;
    for p in &pieces {
        send(&mut ws, json!({"type": "text", "text": p})).await;
    }
    send(&mut ws, json!({"type": "end"})).await;
    // Time for the text to reach the emulator (milliseconds); the scenario, not a check.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.emulator.close_all(Target::TtsWs, 1000, "Idle timeout") > 0);
    let (msgs, audio, close) = rest(&mut ws).await;
    assert_eq!(
        close,
        (Some(1000), "turn complete".to_owned()),
        "a close after the text was given is invisible too: {msgs:?}"
    );
    assert_eq!(spoken(&msgs), reference_words, "{msgs:?}");
    assert_eq!(audio, reference_audio, "the whole utterance, said once");
    assert_eq!(msgs.last().unwrap()["request_id"], hello["request_id"]);

    // A drop (no close frame) before any audio moves the utterance once.
    let drop = |times| {
        FaultRule::new(Fault::Disconnect {
            at: TurnPoint::BeforeTurnStart,
            rst: false,
        })
        .target(Target::TtsWs)
        .times(times)
    };
    s.emulator.add_fault(drop(1));
    let (mut ws, _, _) = s.open(query).await;
    let (msgs, audio, close) = say(&mut ws, &pieces).await;
    assert_eq!(close.0, Some(1000), "a drop is moved once: {msgs:?}");
    assert_eq!(audio, reference_audio);
    // The failing cases send no text: the utterance's turn starts upstream at the upgrade,
    // so the service fails it (and closes the socket) while text could still be on its
    // way, and a client write racing that close breaks its pipe.
    s.emulator.add_fault(drop(2));
    let (mut ws, _, _) = s.open(query).await;
    let (msgs, _, close) = rest(&mut ws).await;
    assert_eq!(close.0, Some(1011), "a second drop is not: {msgs:?}");

    s.emulator
        .add_fault(idle_close_before_turn(Target::TtsWs, 4));
    let (mut ws, _, _) = s.open(query).await;
    let (msgs, audio, close) = rest(&mut ws).await;
    assert_eq!(audio, 0);
    let error = msgs.last().expect("error");
    assert_eq!(
        error["type"], "error",
        "the fourth close reaches the client: {msgs:?}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Idle timeout"),
        "{error}"
    );
    assert_eq!(close.0, Some(1011));
    s.finish().await;
}
