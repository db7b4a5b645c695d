//! The TTS websocket protocol, served by translation (see the [module docs](super)).
//!
//! Per socket: `speech.config` is read only for Edge-style output options
//! (`context.synthesis.audio`); per turn `synthesis.context` sets the output format and
//! the metadata wanted, and `ssml` (with the same `X-RequestId`) starts the turn. The turn
//! runs on the pooled synthesizer with `synthesize_stoppable` through the same relay as
//! `POST /api/v1/tts` (`routes::tts::relay_turn`), so `synthesis.control` `stop` and a
//! hang-up end it the same way: the backend stops where its protocol can, the rest is
//! drained (bounded) and the connection stays with the session. Word boundaries become
//! `audio.metadata` `WordBoundary` items (`PunctuationBoundary` for a boundary that is
//! only punctuation), sent only when the SDK enabled them, before the audio they describe.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use speech_core::wire::{self, TextMessage};
use speech_core::{
    AudioFormat, StopSignal, SynthesisEvent, SynthesisRequest, SynthesizerManager,
    TICKS_PER_SECOND, duration_to_ticks,
};
use tokio::sync::mpsc;

use super::{
    Sink, audio_frame, close, finish, new_id, same_id, service_text, turn_connection, turn_failed,
    valid_request_id,
};
use crate::azure_proxy::relay::Downstream;
use crate::routes::tts::{RelayBounds, relay_turn};

/// Events buffered between the backend, the relay and the socket.
const EVENT_BUFFER: usize = 16;

/// Messages of the next turn read while the current one runs (the SDKs send none; a
/// client that pipelines is read no further than its next `ssml`).
const MAX_PENDING: usize = 8;

/// A JSON flag that may arrive as a boolean or as the string `"true"` (the JavaScript SDK
/// sends some metadata options as strings).
fn truthy(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(s.eq_ignore_ascii_case("true")),
        _ => None,
    }
}

/// Output options of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Options {
    format: AudioFormat,
    word: bool,
    punctuation: bool,
    session_end: bool,
}

impl Options {
    /// Applies a `synthesis.audio` object (`outputFormat`, `metadataOptions`) over `self`.
    fn apply(mut self, audio: &Value) -> Result<Self, String> {
        if let Some(f) = audio.get("outputFormat").and_then(Value::as_str) {
            self.format = f
                .parse()
                .map_err(|_| format!("Unsupported output format {f}"))?;
        }
        // Edge-style clients write the option names in lower case.
        let md = audio
            .get("metadataOptions")
            .or_else(|| audio.get("metadataoptions"));
        if let Some(md) = md {
            let get = |k: &str| {
                truthy(md.get(k)).or_else(|| truthy(md.get(k.to_ascii_lowercase().as_str())))
            };
            self.word = get("wordBoundaryEnabled").unwrap_or(self.word);
            self.punctuation = get("punctuationBoundaryEnabled").unwrap_or(self.punctuation);
            self.session_end = get("sessionEndEnabled").unwrap_or(self.session_end);
        }
        Ok(self)
    }
}

/// What one socket remembers between turns.
struct SocketState {
    /// Options from `speech.config` (Edge-style clients), else the defaults.
    defaults: Options,
    /// The last `synthesis.context`: its request id (if any) and options.
    context: Option<(Option<String>, Options)>,
}

impl SocketState {
    fn options_for(&self, request_id: &str) -> Options {
        match &self.context {
            Some((Some(id), o)) if same_id(id, request_id) => *o,
            Some((None, o)) => *o,
            _ => self.defaults,
        }
    }
}

/// Serves a TTS socket by translation until the SDK hangs up, a turn fails or the service
/// drains, then releases the socket's session.
pub async fn serve(socket: WebSocket, mut down: Downstream<SynthesizerManager>) {
    let (mut sink, mut stream) = socket.split();
    let drain = down.state.drain_token().clone();
    let mut st = SocketState {
        // Azure's websocket never adds a RIFF header: the SDKs ask for raw formats.
        defaults: Options {
            format: down.state.options().default_format.raw_counterpart(),
            word: false,
            punctuation: false,
            session_end: false,
        },
        context: None,
    };
    let mut pending: VecDeque<Message> = VecDeque::new();
    loop {
        let msg = match pending.pop_front() {
            Some(m) => m,
            None => {
                let next = tokio::select! {
                    m = stream.next() => m,
                    () = drain.cancelled() => {
                        // What Azure sends at its idle and age limits: the SDK reconnects
                        // on its next request (to another replica, when draining).
                        close(&mut sink, 1000, "service draining").await;
                        break;
                    }
                };
                match next {
                    Some(Ok(m)) => m,
                    _ => break,
                }
            }
        };
        let Message::Text(text) = msg else {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            // Pings are answered by axum; binary messages mean nothing on a TTS socket.
            continue;
        };
        let m = wire::parse_text(text.as_str());
        let path = m.headers.path().unwrap_or_default().to_ascii_lowercase();
        let result = match path.as_str() {
            "speech.config" => match serde_json::from_str::<Value>(&m.body) {
                Ok(v) => match v.pointer("/context/synthesis/audio") {
                    Some(audio) => st.defaults.apply(audio).map(|o| st.defaults = o),
                    None => Ok(()),
                },
                // Azure ignores what it does not understand in the client's context.
                Err(_) => Ok(()),
            },
            "synthesis.context" => match serde_json::from_str::<Value>(&m.body) {
                Ok(v) => {
                    let options = match v.pointer("/synthesis/audio") {
                        Some(audio) => st.defaults.apply(audio),
                        None => Ok(st.defaults),
                    };
                    options.map(|o| {
                        let id = m.headers.request_id().map(str::to_owned);
                        st.context = Some((id, o));
                    })
                }
                Err(_) => Err("synthesis.context is not JSON".to_owned()),
            },
            "ssml" => {
                if turn(&mut down, &mut sink, &mut stream, &mut pending, &st, m).await {
                    continue;
                }
                break;
            }
            // telemetry, a stop between turns, anything new: accepted and ignored.
            _ => Ok(()),
        };
        if let Err(reason) = result {
            close(&mut sink, 1007, reason).await;
            break;
        }
    }
    finish(down).await;
}

/// `Some` receive of an optional channel; pending forever when there is none.
async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The `audio.metadata` message of a word boundary the SDK asked for, or `None`.
fn boundary_message(
    request_id: &str,
    options: Options,
    text: &str,
    offset: Duration,
    duration: Duration,
) -> Option<Message> {
    let punctuation = !text.chars().any(char::is_alphanumeric);
    let kind = match (punctuation, options.punctuation, options.word) {
        (true, true, _) => "PunctuationBoundary",
        (false, _, true) => "WordBoundary",
        _ => return None,
    };
    let body = json!({"Metadata": [{"Type": "WordBoundary", "Data": {
        "Offset": duration_to_ticks(offset),
        "Duration": duration_to_ticks(duration),
        "text": {"Text": text, "Length": text.chars().count(), "BoundaryType": kind},
    }}]});
    Some(service_text(
        request_id,
        "audio.metadata",
        &body.to_string(),
    ))
}

/// Runs one synthesis turn. Returns whether the socket serves another.
async fn turn(
    down: &mut Downstream<SynthesizerManager>,
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    pending: &mut VecDeque<Message>,
    st: &SocketState,
    ssml: TextMessage,
) -> bool {
    let started = Instant::now();
    let request_id = match ssml.headers.request_id() {
        Some(id) if valid_request_id(id) => id.to_owned(),
        Some(_) => {
            close(sink, 1002, "invalid X-RequestId").await;
            return false;
        }
        None => new_id(),
    };
    let options = st.options_for(&request_id);
    let mut request = SynthesisRequest::ssml(ssml.body, options.format)
        .with_word_boundaries(options.word || options.punctuation);
    request.request_id = request_id.parse().unwrap_or_default();
    if let Err(e) = request.validate() {
        // What Azure answers to SSML it cannot speak.
        close(sink, 1007, format!("Invalid SSML: {e}")).await;
        return false;
    }
    let Some((mut guard, waited)) = turn_connection(down, sink).await else {
        return false;
    };
    let tier = guard.tier();
    let span = tracing::info_span!(
        "sdk_turn",
        request_id = %request_id,
        session = %down.session,
        pool = down.pool.name(),
        tier = tier.as_str(),
        kind = "tts",
        translated = true,
    );
    let stream_id = new_id();
    let tag = new_id().to_ascii_lowercase();
    let start = json!({"context": {"serviceTag": tag}}).to_string();
    let response = json!({
        "context": {"serviceTag": tag},
        "audio": {"type": "inline", "streamId": stream_id},
    })
    .to_string();
    if sink
        .send(service_text(&request_id, "turn.start", &start))
        .await
        .is_err()
        || sink
            .send(service_text(&request_id, "response", &response))
            .await
            .is_err()
    {
        return false;
    }

    let state = down.state.clone();
    let stop = StopSignal::new();
    let bounds = RelayBounds::from_limits(&state.options().limits);
    let (upstream_tx, upstream_rx) = mpsc::channel(EVENT_BUFFER);
    let (client_tx, client_rx) = mpsc::channel(EVENT_BUFFER);
    let mut client_rx = Some(client_rx);
    let mime = options.format.mime_type();
    let mut reading = true;
    let mut gone = false;
    let mut audio_bytes: u64 = 0;
    let mut first_audio = false;
    let mut words_end = Duration::ZERO;
    let (result, _relayed) = {
        let work = async {
            tokio::join!(
                guard.synthesize_stoppable(request, upstream_tx, stop.clone()),
                relay_turn(upstream_rx, client_tx, bounds, &stop)
            )
        };
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                event = recv(&mut client_rx) => {
                    let Some(event) = event else {
                        client_rx = None;
                        continue;
                    };
                    let msg = match event {
                        SynthesisEvent::Audio(chunk) if chunk.is_empty() => continue,
                        SynthesisEvent::Audio(chunk) => {
                            if !first_audio {
                                first_audio = true;
                                state.metrics().record_first_audio(tier, started.elapsed());
                            }
                            audio_bytes += chunk.len() as u64;
                            audio_frame(&request_id, &stream_id, Some(mime), &chunk)
                        }
                        SynthesisEvent::WordBoundary { text, audio_offset, duration, .. } => {
                            words_end = words_end.max(audio_offset + duration);
                            match boundary_message(&request_id, options, &text, audio_offset, duration) {
                                Some(m) => m,
                                None => continue,
                            }
                        }
                    };
                    if sink.send(msg).await.is_err() {
                        // The SDK went away: the relay stops the turn and drains it.
                        gone = true;
                        reading = false;
                        client_rx = None;
                    }
                }
                out = &mut work => break out,
                m = stream.next(), if reading => {
                    let m = match m {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Close(_)) | Err(_)) | None => {
                            gone = true;
                            reading = false;
                            client_rx = None;
                            continue;
                        }
                        Some(Ok(_)) => continue,
                    };
                    let parsed = wire::parse_text(m.as_str());
                    let path = parsed.headers.path().unwrap_or_default().to_ascii_lowercase();
                    let id = parsed.headers.request_id();
                    let ours = id.is_none_or(|id| same_id(id, &request_id));
                    if path == "synthesis.control" {
                        let stop_asked = serde_json::from_str::<Value>(&parsed.body)
                            .ok()
                            .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_owned))
                            .is_some_and(|a| a.eq_ignore_ascii_case("stop"));
                        if stop_asked && ours {
                            stop.stop();
                        }
                    } else if !ours && path != "telemetry" {
                        pending.push_back(Message::Text(m));
                        if path == "ssml" || pending.len() >= MAX_PENDING {
                            reading = false;
                        }
                    }
                }
            }
        }
    };
    // Whatever the relay passed on before the turn's end.
    if let Some(rx) = client_rx.as_mut() {
        while let Ok(event) = rx.try_recv() {
            let msg = match event {
                SynthesisEvent::Audio(chunk) if chunk.is_empty() => continue,
                SynthesisEvent::Audio(chunk) => {
                    audio_bytes += chunk.len() as u64;
                    audio_frame(&request_id, &stream_id, Some(mime), &chunk)
                }
                SynthesisEvent::WordBoundary {
                    text,
                    audio_offset,
                    duration,
                    ..
                } => {
                    words_end = words_end.max(audio_offset + duration);
                    match boundary_message(&request_id, options, &text, audio_offset, duration) {
                        Some(m) => m,
                        None => continue,
                    }
                }
            };
            if sink.send(msg).await.is_err() {
                gone = true;
                break;
            }
        }
    }
    match result {
        Ok(_) if gone => {
            tracing::debug!(parent: &span, "SDK disconnected mid-turn; the turn was stopped");
            drop(guard);
            false
        }
        Ok(_) => {
            let mut tail = Vec::new();
            if options.session_end {
                let ticks = match options.format.bytes_per_second() {
                    Some(bps) if bps > 0 => {
                        let header = if options.format.is_riff() { 44 } else { 0 };
                        audio_bytes.saturating_sub(header) * TICKS_PER_SECOND / u64::from(bps)
                    }
                    _ => duration_to_ticks(words_end),
                };
                let body = json!({"Metadata": [{"Type": "SessionEnd", "Data": {"Offset": ticks}}]});
                tail.push(service_text(
                    &request_id,
                    "audio.metadata",
                    &body.to_string(),
                ));
            }
            tail.push(audio_frame(&request_id, &stream_id, None, &[]));
            tail.push(service_text(&request_id, "turn.end", "{}"));
            tracing::debug!(
                parent: &span,
                elapsed_ms = started.elapsed().as_millis() as u64,
                acquire_ms = waited.as_millis() as u64,
                audio_bytes,
                "turn translated"
            );
            // Back to the session (DEDICATED next turn).
            drop(guard);
            for m in tail {
                if sink.send(m).await.is_err() {
                    return false;
                }
            }
            true
        }
        Err(e) => {
            turn_failed(&state, down.pool.name(), guard, &e, gone, sink, &span).await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_every_sdk_spelling() {
        let base = Options {
            format: AudioFormat::Raw24Khz16BitMonoPcm,
            word: false,
            punctuation: false,
            session_end: false,
        };
        let js: Value = serde_json::from_str(
            r#"{"metadataOptions":{"wordBoundaryEnabled":"true","punctuationBoundaryEnabled":"false","sessionEndEnabled":true},"outputFormat":"audio-24khz-48kbitrate-mono-mp3"}"#,
        )
        .unwrap();
        let o = base.apply(&js).unwrap();
        assert!(o.word && !o.punctuation && o.session_end);
        assert_eq!(o.format, AudioFormat::Audio24Khz48KBitRateMonoMp3);
        let edge: Value =
            serde_json::from_str(r#"{"metadataoptions":{"wordboundaryenabled":true}}"#).unwrap();
        assert!(base.apply(&edge).unwrap().word);
        let bad: Value = serde_json::from_str(r#"{"outputFormat":"wav"}"#).unwrap();
        assert!(base.apply(&bad).unwrap_err().contains("wav"));
    }

    #[test]
    fn boundaries_only_as_asked() {
        let o = |word, punctuation| Options {
            format: AudioFormat::Raw24Khz16BitMonoPcm,
            word,
            punctuation,
            session_end: false,
        };
        let d = Duration::from_millis(100);
        assert!(boundary_message("A", o(false, false), "hi", d, d).is_none());
        assert!(boundary_message("A", o(false, true), "hi", d, d).is_none());
        assert!(boundary_message("A", o(true, false), ".", d, d).is_none());
        let Some(Message::Text(t)) = boundary_message("A", o(true, true), "!", d, d) else {
            panic!("a punctuation boundary");
        };
        assert!(
            t.as_str()
                .contains(r#""BoundaryType":"PunctuationBoundary""#)
        );
        let Some(Message::Text(t)) = boundary_message("A", o(true, false), "héllo", d, d) else {
            panic!("a word boundary");
        };
        let body: Value = serde_json::from_str(wire::parse_text(t.as_str()).body.as_str()).unwrap();
        let data = &body["Metadata"][0]["Data"];
        assert_eq!(data["Offset"], 1_000_000);
        assert_eq!(data["text"]["Length"], 5);
        assert_eq!(data["text"]["BoundaryType"], "WordBoundary");
    }
}
