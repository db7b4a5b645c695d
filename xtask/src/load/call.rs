//! One simulated voice call against the service's HTTP API.
//!
//! A call is what a voice agent does for one phone call: it opens the STT websocket with
//! the call's session id, then for each turn streams the caller's utterance (STT), waits
//! for the recognition to end, and speaks a reply (TTS) on the same session; between
//! turns it "thinks". It ends the stream and sends `DELETE /api/v1/sessions/{id}`.
//!
//! Every step is bounded by [`REQUEST_TIMEOUT`], so a stuck service shows up as a `hang`
//! error instead of a stuck load generator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::stats::{Kind, Stats};

/// Per-step bound: a request, a websocket handshake or the wait for a message.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One STT audio frame: 100 ms of 16 kHz, 16-bit mono PCM, sent at real-time pace as a
/// telephony client would.
const FRAME: Duration = Duration::from_millis(100);
const FRAME_BYTES: usize = 3_200;

const REPLIES: [&str; 4] = [
    "Hello, how can I help you today?",
    "Let me check that for you.",
    "Your order has been shipped.",
    "Is there anything else?",
];

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How to reach the service: shared by every call.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// One HTTP client (and connection pool) for all calls, as a real agent fleet's
    /// gateway would have.
    http: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    base: Arc<str>,
    /// Bearer key for a service started with `SERVICE_API_KEY`.
    auth: Option<Arc<str>>,
}

impl Client {
    pub(crate) fn new(base: &str, auth: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').into(),
            auth: auth.map(Into::into),
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Adds the bearer key when there is one.
    pub(crate) fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }
}

/// The shape of every call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallPlan {
    /// Turns per call.
    pub turns: u32,
    /// Pause between turns (the agent's "thinking" and the caller listening).
    pub think: Duration,
    /// Whether each turn starts with the caller speaking (an STT turn).
    pub stt: bool,
    /// Length of each caller utterance.
    pub utterance: Duration,
}

/// Runs one call with session `id`, recording every turn and error in `stats`.
pub(crate) async fn call(client: &Client, id: &str, plan: CallPlan, stats: &Stats) {
    let mut stt = None;
    // The caller starts speaking when the call connects; if opening the stream is slow
    // (a cold connect), the first result is late by that much, so the first turn is timed
    // from the moment the stream was requested.
    let mut first_turn_from = Some(Instant::now());
    if plan.stt {
        stt = open_stt(client, id, stats).await;
    }
    for turn in 0..plan.turns {
        if turn > 0 {
            tokio::time::sleep(plan.think).await;
        }
        if let Some(ws) = &mut stt
            && !stt_turn(ws, plan.utterance, first_turn_from.take(), stats).await
        {
            // The stream is unusable after an error; later turns run TTS only.
            stt = None;
        }
        tts_turn(client, id, REPLIES[turn as usize % REPLIES.len()], stats).await;
    }
    if let Some(mut ws) = stt {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, ws.close(None)).await;
    }
    end_session(client, id, stats).await;
}

/// An error class for an HTTP failure: the kind of request and the exact status, since
/// the service's statuses already classify (429 throttled, 502 upstream or auth, 503
/// unavailable, 504 timeout).
fn status_class(kind: &str, status: u16) -> String {
    format!("{kind}-{status}")
}

/// `POST /api/v1/tts` for one reply: time to first audio byte, tier, acquire wait.
pub(crate) async fn tts_turn(client: &Client, id: &str, text: &str, stats: &Stats) {
    let body = serde_json::json!({ "text": text, "session_id": id }).to_string();
    let started = Instant::now();
    let request = client.authorize(
        client
            .http
            .post(format!("{}/api/v1/tts", client.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body),
    );
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return stats.error("tts-hang"),
        Err(_) => return stats.error("tts-transport"),
    };
    let status = response.status();
    if !status.is_success() {
        let _ = response.bytes().await;
        return stats.error(&status_class("tts", status.as_u16()));
    }
    let headers = response.headers();
    let tier = headers
        .get("x-pool-tier")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_owned();
    let acquire_ms = headers
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_acquire_timing);
    let mut first_audio = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if first_audio.is_none() && !chunk.is_empty() {
                    first_audio = Some(started.elapsed());
                }
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return stats.error("tts-hang"),
            // The service aborts the body when the turn fails after audio started.
            Err(_) => return stats.error("tts-stream-cut"),
        }
    }
    match first_audio {
        Some(first_audio) => stats.turn(Kind::Tts, &tier, first_audio, acquire_ms),
        None => stats.error("tts-empty"),
    }
}

/// The `acquire;dur=<ms>` entry of a `Server-Timing` header.
pub(crate) fn parse_acquire_timing(header: &str) -> Option<f64> {
    header.split(',').find_map(|metric| {
        let mut parts = metric.trim().split(';');
        (parts.next()? == "acquire").then_some(())?;
        parts.find_map(|p| p.trim().strip_prefix("dur=")?.parse().ok())
    })
}

/// Opens the call's STT stream and reads the `connected` message.
async fn open_stt(client: &Client, id: &str, stats: &Stats) -> Option<Ws> {
    let ws_base = client.base.replacen("http", "ws", 1);
    let mut request =
        match tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            format!("{ws_base}/api/v1/stt?session_id={id}"),
        ) {
            Ok(request) => request,
            Err(_) => {
                stats.error("stt-bad-url");
                return None;
            }
        };
    if let Some(key) = &client.auth
        && let Ok(value) = format!("Bearer {key}").parse()
    {
        request.headers_mut().insert("authorization", value);
    }
    let connect = tokio_tungstenite::connect_async(request);
    let mut ws = match tokio::time::timeout(REQUEST_TIMEOUT, connect).await {
        Err(_) => {
            stats.error("stt-hang");
            return None;
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            stats.error(&status_class("stt", response.status().as_u16()));
            return None;
        }
        Ok(Err(_)) => {
            stats.error("stt-transport");
            return None;
        }
        Ok(Ok((ws, _))) => ws,
    };
    match next_json(&mut ws).await {
        Ok(hello) if hello["type"] == "connected" => Some(ws),
        Ok(_) => {
            stats.error("stt-protocol");
            None
        }
        Err(class) => {
            stats.error(class);
            None
        }
    }
}

/// The next JSON message, or the error class of what came instead.
async fn next_json(ws: &mut Ws) -> Result<Value, &'static str> {
    loop {
        match tokio::time::timeout(REQUEST_TIMEOUT, ws.next()).await {
            Err(_) => return Err("stt-hang"),
            Ok(Some(Ok(Message::Text(text)))) => {
                return serde_json::from_str(&text).map_err(|_| "stt-protocol");
            }
            Ok(Some(Ok(Message::Close(_))) | None) => return Err("stt-closed"),
            Ok(Some(Err(_))) => return Err("stt-transport"),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Streams one utterance at real-time pace and reads the turn's events up to `turn_end`.
/// Records the time from the first audio frame (or `from`, for a call's first turn) to
/// the first recognition result (hypothesis or phrase). Returns whether the stream can
/// carry another turn.
async fn stt_turn(ws: &mut Ws, utterance: Duration, from: Option<Instant>, stats: &Stats) -> bool {
    let frames = (utterance.as_millis() / FRAME.as_millis()).max(1) as usize;
    let audio = pcm_frame();
    let started = from.unwrap_or_else(Instant::now);
    let mut first_result = None;
    let mut start: Option<(String, Option<f64>)> = None;
    let mut sent = 0;
    let mut pace = tokio::time::interval(FRAME);
    // Audio goes out on the pacing clock while events are read as they come, as a
    // telephony client does: the first hypothesis arrives while the caller still speaks.
    // The select only says which happened; sending happens after it, once the pending
    // read (cancel-safe) no longer borrows the socket.
    loop {
        let event = tokio::select! {
            _ = pace.tick(), if sent <= frames => None,
            event = next_json(ws) => Some(event),
        };
        let Some(event) = event else {
            let message = if sent < frames {
                Message::binary(audio.clone())
            } else {
                Message::text(r#"{"type":"end"}"#)
            };
            sent += 1;
            if ws.send(message).await.is_err() {
                stats.error("stt-transport");
                return false;
            }
            continue;
        };
        let event = match event {
            Ok(event) => event,
            Err(class) => {
                stats.error(class);
                return false;
            }
        };
        match event["type"].as_str() {
            Some("turn_start") => {
                let tier = event["tier"].as_str().unwrap_or("unknown").to_owned();
                start = Some((tier, event["acquire_ms"].as_f64()));
            }
            Some("hypothesis" | "phrase") if first_result.is_none() => {
                first_result = Some(started.elapsed());
            }
            Some("turn_end") => break,
            Some("error") => {
                let status = event["status"].as_u64().unwrap_or(0) as u16;
                stats.error(&status_class("stt", status));
                return false;
            }
            _ => {}
        }
    }
    match (start, first_result) {
        (Some((tier, acquire_ms)), Some(first)) => stats.turn(Kind::Stt, &tier, first, acquire_ms),
        _ => stats.error("stt-no-result"),
    }
    true
}

/// 100 ms of a quiet saw wave (the mock and the emulator recognise any audio).
fn pcm_frame() -> bytes::Bytes {
    (0..FRAME_BYTES / 2)
        .flat_map(|i| (((i % 64) as i16 - 32) * 100).to_le_bytes())
        .collect::<Vec<u8>>()
        .into()
}

/// `DELETE /api/v1/sessions/{id}`: the call is over, its connections go back.
async fn end_session(client: &Client, id: &str, stats: &Stats) {
    let request = client.authorize(
        client
            .http
            .delete(format!("{}/api/v1/sessions/{id}", client.base)),
    );
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            let _ = response.bytes().await;
            if !status.is_success() {
                stats.error(&status_class("delete", status.as_u16()));
            }
        }
        Err(e) if e.is_timeout() => stats.error("delete-hang"),
        Err(_) => stats.error("delete-transport"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acquire_entry_is_read_from_server_timing() {
        assert_eq!(parse_acquire_timing("acquire;dur=0.012"), Some(0.012));
        assert_eq!(
            parse_acquire_timing("db;dur=3, acquire;desc=\"pool\";dur=12.5"),
            Some(12.5)
        );
        assert_eq!(parse_acquire_timing("db;dur=3"), None);
        assert_eq!(parse_acquire_timing("acquire"), None);
        assert_eq!(parse_acquire_timing("acquire;dur=abc"), None);
    }

    #[test]
    fn failures_are_classed_by_kind_and_status() {
        assert_eq!(status_class("tts", 503), "tts-503");
        assert_eq!(status_class("stt", 429), "stt-429");
    }
}
