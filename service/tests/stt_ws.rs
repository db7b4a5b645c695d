//! The STT websocket over a real socket: turns, sessions, errors, drain.

mod common;

use std::time::Duration;

use common::{build, config, pcm, start, stop, warm_app};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use speech_mock::backend::MockConfig;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Guards against a hang only; no test asserts on elapsed time.
const HANG: Duration = Duration::from_secs(20);

/// The next message: JSON for text, `{"type":"close","code":N}` for a close frame.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("no message in time");
        match msg {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
            Some(Ok(Message::Close(frame))) => {
                return json!({"type": "close", "code": frame.map(|f| u16::from(f.code))});
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return json!({"type": "close", "code": null}),
        }
    }
}

/// Sends `audio` in 8 KB frames and `{"type":"end"}`; returns every message up to and
/// including `turn_end` (or an error / close).
async fn turn(ws: &mut Ws, audio: &[u8]) -> Vec<Value> {
    for chunk in audio.chunks(8000) {
        ws.send(Message::binary(chunk.to_vec()))
            .await
            .expect("send audio");
    }
    ws.send(Message::text(r#"{"type":"end"}"#))
        .await
        .expect("send end");
    let mut out = Vec::new();
    loop {
        let v = next(ws).await;
        let kind = v["type"].as_str().unwrap_or_default().to_owned();
        out.push(v);
        if matches!(kind.as_str(), "turn_end" | "error" | "close") {
            return out;
        }
    }
}

fn phrase(events: &[Value]) -> Option<&str> {
    events
        .iter()
        .find(|e| e["type"] == "phrase")
        .and_then(|e| e["text"].as_str())
}

#[tokio::test]
async fn stream_turns_sessions_and_pool_figures() {
    let t = warm_app().await;
    let server = start(&t.state).await;
    let url = server.ws_url("/api/v1/stt?session_id=call-1&language=en-US");
    let (mut ws, response) = connect_async(url.as_str()).await.expect("connect");
    // No connection is taken before the first audio.
    assert!(response.headers().get(service::TIER_HEADER).is_none());
    let hello = next(&mut ws).await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["tier"], Value::Null);
    assert_eq!(hello["session_id"], "call-1");

    let events = turn(&mut ws, &pcm(1.0)).await;
    assert_eq!(events[0]["type"], "turn_start", "{events:?}");
    assert_eq!(events[0]["tier"], "warm");
    assert!(events[0]["acquire_ms"].as_f64().is_some_and(|ms| ms >= 0.0));
    assert_eq!(phrase(&events), Some("hello world"), "{events:?}");
    assert!(events.iter().any(|e| e["type"] == "speech_start_detected"));
    assert_eq!(events.last().unwrap()["type"], "turn_end");

    // The next turn of the call uses the call's own connection.
    let events = turn(&mut ws, &pcm(0.5)).await;
    assert_eq!(events[0]["tier"], "dedicated", "{events:?}");
    assert_eq!(phrase(&events), Some("hello world"));
    ws.close(None).await.expect("close");
    drop(ws);

    // So does a new stream of the same call.
    let (mut ws, _) = connect_async(url.as_str()).await.expect("reconnect");
    next(&mut ws).await;
    let events = turn(&mut ws, &pcm(0.2)).await;
    assert_eq!(events[0]["tier"], "dedicated", "{events:?}");
    ws.close(None).await.expect("close");
    drop(ws);

    let pools: Value = common::client()
        .get(server.url("/api/v1/pools"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stt = &pools["pools"]["speech-stt"];
    assert_eq!(stt["allocations_warm"], 1, "{stt}");
    assert!(stt["allocations_dedicated"].as_u64().unwrap() >= 2, "{stt}");
    assert_eq!(stt["active_sessions"], 1);
    stop(server).await;
    assert_eq!(t.stt.snapshot().open_now, 0, "{:?}", t.stt.snapshot());
    assert_eq!(t.state.pools().stt.background_tasks(), 0);
}

#[tokio::test]
async fn plain_stream_without_session_and_empty_end() {
    let t = warm_app().await;
    let server = start(&t.state).await;
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("connect");
    assert_eq!(next(&mut ws).await["session_id"], Value::Null);
    // An `end` before any audio ends nothing; an unknown text message is answered with an
    // error event and the stream stays usable.
    ws.send(Message::text(r#"{"type":"end"}"#)).await.unwrap();
    ws.send(Message::text("what?")).await.unwrap();
    let e = next(&mut ws).await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["status"], 400);
    let events = turn(&mut ws, &pcm(0.5)).await;
    assert_eq!(phrase(&events), Some("hello world"), "{events:?}");
    drop(ws);
    stop(server).await;
    assert_eq!(t.stt.snapshot().open_now, 0);
}

#[tokio::test]
async fn handshake_errors_are_http_statuses() {
    let t = warm_app().await;
    let server = start(&t.state).await;
    for (query, status) in [
        ("?language=fr-FR", 400),
        ("?session_id=bad%20id", 400),
        ("?mode=shouting", 400),
        ("?mode=dictation", 400),
        ("?format=detailed", 400),
    ] {
        let err = connect_async(server.ws_url(&format!("/api/v1/stt{query}")).as_str())
            .await
            .expect_err(query);
        match err {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                assert_eq!(r.status().as_u16(), status, "{query}");
            }
            other => panic!("{query}: {other}"),
        }
    }
    stop(server).await;
}

#[tokio::test]
async fn deleting_the_session_ends_its_stream() {
    let t = warm_app().await;
    let server = start(&t.state).await;
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt?session_id=call-5").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    let events = turn(&mut ws, &pcm(0.3)).await;
    assert_eq!(phrase(&events), Some("hello world"));
    let r = common::client()
        .delete(server.url("/api/v1/sessions/call-5"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["streams_closed"], 1);
    assert_eq!(v["released"]["speech-stt"], true);
    let closed = next(&mut ws).await;
    assert_eq!(closed, json!({"type": "close", "code": 1000}));
    stop(server).await;
    assert_eq!(t.stt.snapshot().open_now, 0);
}

#[tokio::test]
async fn draining_closes_idle_streams_with_going_away() {
    let t = warm_app().await;
    let mut server = start(&t.state).await;
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    server.signal();
    let closed = next(&mut ws).await;
    assert_eq!(closed, json!({"type": "close", "code": 1001}));
    drop(ws);
    stop(server).await;
    assert_eq!(t.stt.snapshot().open_now, 0);
    assert_eq!(t.tts.snapshot().open_now, 0);
}

/// Starts a turn on `ws` and leaves it open (audio sent, no end), so the stream holds
/// its connection.
async fn hold_a_turn(ws: &mut Ws) {
    next(ws).await;
    ws.send(Message::binary(pcm(0.1))).await.expect("audio");
    assert_eq!(next(ws).await["type"], "turn_start");
}

#[tokio::test]
async fn exhausted_stt_pool_answers_the_first_audio_with_429() {
    let mut c = config();
    c.warm_pool_stt_size = 1;
    c.pool_stt_max_size = 1;
    let t = build(&c, MockConfig::default());
    t.state.warm_up().await;
    let server = start(&t.state).await;
    let (mut first, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("connect");
    hold_a_turn(&mut first).await;
    // The second socket opens (it holds nothing yet); its audio finds the pool exhausted.
    let (mut second, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("second stream");
    next(&mut second).await;
    let events = turn(&mut second, &pcm(0.1)).await;
    let error = events.last().unwrap();
    assert_eq!(error["type"], "error", "{events:?}");
    assert_eq!(error["status"], 429, "{events:?}");
    assert_eq!(next(&mut second).await["code"], 1013);
    drop(first);
    stop(server).await;
}

#[tokio::test]
async fn a_connection_gone_stale_before_the_first_audio_is_replaced() {
    // Connections stop being ready 50 ms after they open (as Azure closes idle sockets).
    let mock = MockConfig {
        not_ready_after_age: Some(Duration::from_millis(50)),
        ..MockConfig::default()
    };
    let mut c = config();
    c.warm_pool_enabled = false;
    let t = build(&c, mock);
    let server = start(&t.state).await;
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt?session_id=slow").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    // Let the held connection go stale (this sleep is the scenario, not an assertion).
    tokio::time::sleep(Duration::from_millis(120)).await;
    let events = turn(&mut ws, &pcm(0.02)).await;
    assert_eq!(events[0]["type"], "turn_start", "{events:?}");
    assert_eq!(events[0]["tier"], "cold");
    assert_eq!(events.last().unwrap()["type"], "turn_end", "{events:?}");
    drop(ws);
    stop(server).await;
    assert_eq!(t.stt.snapshot().open_now, 0);
}

#[tokio::test]
async fn a_second_stream_of_a_busy_session_is_refused_not_hung() {
    let t = warm_app().await;
    let server = start(&t.state).await;
    let url = server.ws_url("/api/v1/stt?session_id=busy");
    let (mut first, _) = connect_async(url.as_str()).await.expect("connect");
    hold_a_turn(&mut first).await;
    let (mut second, _) = connect_async(url.as_str()).await.expect("second stream");
    next(&mut second).await;
    let events = turn(&mut second, &pcm(0.1)).await;
    let error = events.last().unwrap();
    assert_eq!(error["status"], 409, "{events:?}");
    assert_eq!(error["code"], "session_busy", "{events:?}");
    // The close says why too, for clients that only log the close.
    let close = loop {
        match tokio::time::timeout(HANG, second.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    }
    .expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 1013);
    assert_eq!(close.reason, "no speech connection available: session_busy");
    drop(first);
    stop(server).await;
}

/// Azure's idle and age closes (1000) can cross a turn's first audio, and the connections
/// warmed together idle out together. A turn whose connection closes before the client was
/// sent anything moves to a fresh connection with the audio it was given, up to three
/// times, so the caller's words are recognised, not lost. A fourth close reaches the
/// client as an error, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_whose_connection_closes_before_answering_moves_with_its_audio() {
    use common::azure::{UPSTREAM_KEY, Upstream, idle_close_before_turn};
    use speech_emulator::{EmulatorConfig, Target};

    let words = "the words survive the move";
    let up = Upstream::start_with(
        EmulatorConfig::default()
            .with_key(UPSTREAM_KEY)
            .with_transcript(words),
        |c| {
            c.warm_pool_stt_size = 2;
            // Longer than `HANG`: a move that lost the client's end of audio would hang
            // the turn instead of being rescued by the audio idle timeout.
            c.limits.stt_audio_idle_timeout = Duration::from_secs(120);
        },
    )
    .await;
    let (mut ws, _) = connect_async(up.server.ws_url("/api/v1/stt?session_id=moves").as_str())
        .await
        .expect("connect");
    assert_eq!(next(&mut ws).await["type"], "connected");
    let audio = pcm(1.0);
    // The emulator's phrase covers all the audio its connection received: one second,
    // exactly, when nothing was lost or sent twice across the moves.
    let whole_second = |events: &[Value]| {
        events
            .iter()
            .find(|e| e["type"] == "phrase")
            .and_then(|e| e["duration"].as_u64())
            == Some(10_000_000)
    };

    let events = turn(&mut ws, &audio).await;
    assert_eq!(phrase(&events), Some(words), "{events:?}");
    assert!(whole_second(&events), "{events:?}");

    up.emulator
        .add_fault(idle_close_before_turn(Target::SttWs, 3));
    let events = turn(&mut ws, &audio).await;
    assert_eq!(events[0]["type"], "turn_start", "{events:?}");
    assert_eq!(events[0]["tier"], "dedicated", "{events:?}");
    assert!(
        events.iter().all(|e| e["type"] != "error"),
        "three closes in a row are invisible: {events:?}"
    );
    assert_eq!(phrase(&events), Some(words), "{events:?}");
    assert!(whole_second(&events), "the moved audio, whole: {events:?}");
    assert_eq!(events.last().unwrap()["type"], "turn_end", "{events:?}");

    up.emulator
        .add_fault(idle_close_before_turn(Target::SttWs, 4));
    let events = turn(&mut ws, &audio).await;
    let error = events.last().unwrap();
    assert_eq!(
        error["type"], "error",
        "the fourth close reaches the client: {events:?}"
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Idle timeout"),
        "{error}"
    );
    // The stream goes on: the next turn is served.
    let events = turn(&mut ws, &audio).await;
    assert_eq!(phrase(&events), Some(words), "{events:?}");
    ws.close(None).await.expect("close");
    up.finish().await;
}

/// A connection dropped (or found dead) before the client was sent any result costs the
/// caller nothing but time: the turn moves once to a fresh connection with its audio. When
/// the fresh one drops too, the client gets the error and the stream goes on.
#[tokio::test]
async fn a_connection_lost_before_any_result_moves_the_turn_once() {
    // Every second recognition turn of the factory drops before its first chunk.
    let mock = MockConfig {
        drop_after_chunks: Some(0),
        drop_every_nth_turn: Some(2),
        transcript: vec!["one".into(), "two".into(), "three".into()],
        ..MockConfig::default()
    };
    let t = build(&config(), mock);
    t.state.warm_up().await;
    let server = start(&t.state).await;
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt?session_id=lost").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    let events = turn(&mut ws, &pcm(0.5)).await;
    assert_eq!(phrase(&events), Some("one"), "{events:?}");
    // Factory turn 2 drops on the session's connection; the turn moves and is factory
    // turn 3, on a fresh connection.
    let events = turn(&mut ws, &pcm(0.5)).await;
    assert_eq!(events[0]["tier"], "dedicated", "{events:?}");
    assert!(events.iter().all(|e| e["type"] != "error"), "{events:?}");
    assert_eq!(phrase(&events), Some("three"), "{events:?}");
    assert_eq!(t.stt.snapshot().dropped_mid_stream, 1);
    let metrics = t.state.metrics().render(&t.state.snapshots());
    assert!(
        metrics
            .lines()
            .any(|l| l == "speech_turn_moves_total{pool=\"speech-stt\"} 1"),
        "the move is counted: {metrics}"
    );
    drop(ws);
    stop(server).await;

    // When every turn drops, the one move drops too and the client gets a clear error.
    let mock = MockConfig {
        drop_after_chunks: Some(0),
        ..MockConfig::default()
    };
    let t = build(&config(), mock);
    t.state.warm_up().await;
    let server = start(&t.state).await;
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    let events = turn(&mut ws, &pcm(0.5)).await;
    let error = events.last().unwrap();
    assert_eq!(error["type"], "error", "{events:?}");
    assert_eq!(error["status"], 503, "{error}");
    assert_eq!(
        t.stt.snapshot().dropped_mid_stream,
        2,
        "one attempt and one move"
    );
    drop(ws);
    stop(server).await;
}
