//! Helpers for the workspace's end-to-end tests: run the service on a real socket, talk
//! to it over HTTP and websockets.

#![warn(missing_docs)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use service::AppState;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Guards against a hang only; no test asserts on elapsed time.
pub const HANG: Duration = Duration::from_secs(30);

/// A websocket client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub use service::test_support::{LoopbackServer as Running, client, install_crypto_provider, pcm};

/// Serves `state` on 127.0.0.1 (free port) exactly as `main` does, grace 5 s. Stop it with
/// [`Running::stop`] and [`HANG`] as the limit.
pub async fn spawn_service(state: &AppState) -> Running {
    install_crypto_provider();
    Running::start(state, Duration::from_secs(5))
        .await
        .expect("bind 127.0.0.1")
}

/// `GET` a JSON document.
pub async fn get_json(url: &str) -> Value {
    client()
        .get(url)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

/// Opens the STT websocket and reads the `connected` message.
pub async fn stt_connect(running: &Running, query: &str) -> (Ws, Value) {
    let url = running.ws_url(&format!("/api/v1/stt{query}"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");
    let hello = next_message(&mut ws).await;
    assert_eq!(hello["type"], "connected", "{hello}");
    (ws, hello)
}

/// The next message: JSON for text, `{"type":"close","code":N}` for the end.
pub async fn next_message(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("a message in time");
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

/// Streams `audio` as one turn and returns its messages up to `turn_end` (or an error).
pub async fn stt_turn(ws: &mut Ws, audio: &[u8]) -> Vec<Value> {
    for chunk in audio.chunks(6400) {
        ws.send(Message::binary(chunk.to_vec()))
            .await
            .expect("send audio");
    }
    ws.send(Message::text(r#"{"type":"end"}"#))
        .await
        .expect("send end");
    let mut out = Vec::new();
    loop {
        let v = next_message(ws).await;
        let end = matches!(v["type"].as_str(), Some("turn_end" | "error" | "close"));
        out.push(v);
        if end {
            return out;
        }
    }
}

/// The final phrase of a turn's messages.
pub fn final_phrase(events: &[Value]) -> Option<String> {
    events
        .iter()
        .rev()
        .find(|e| e["type"] == "phrase")
        .and_then(|e| e["text"].as_str())
        .map(str::to_owned)
}

/// `POST /api/v1/tts`; returns status, tier header and body length.
pub async fn tts(running: &Running, body: Value) -> (u16, Option<String>, usize) {
    let r = client()
        .post(running.url("/api/v1/tts"))
        .json(&body)
        .send()
        .await
        .expect("POST /api/v1/tts");
    let status = r.status().as_u16();
    let tier = r
        .headers()
        .get(service::TIER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.bytes().await.expect("body");
    (status, tier, body.len())
}
