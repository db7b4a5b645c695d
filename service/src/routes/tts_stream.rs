//! `GET /api/v1/tts/stream`: a websocket taking text while it is being written (an LLM's
//! tokens) and streaming the audio back as soon as the speech service has spoken a part of
//! it, instead of waiting for the whole answer.
//!
//! Protocol (client ↔ service), one utterance per socket:
//! - query: `session_id` (optional: the call's utterances share one dedicated connection),
//!   `voice`, `format` (as in `POST /api/v1/tts`; defaults `TTS_DEFAULT_VOICE` /
//!   `TTS_DEFAULT_FORMAT`), `word_boundaries` (`true` by default);
//! - the connection is taken before the upgrade, so an exhausted pool or a draining
//!   service answers with its HTTP status, and the `101` carries `x-pool-tier`,
//!   `x-request-id` and `Server-Timing: acquire;dur=<ms>`; the first message repeats them:
//!   `{"type":"connected","pool":"speech-tts-stream","tier":…,"session_id":…,
//!   "request_id":…,"voice":…,"format":…,"timings":{"acquire_ms":…}}`;
//! - the client sends `{"type":"text","text":"…"}` for each piece, in order, then
//!   `{"type":"end"}`; `{"type":"cancel"}` stops the utterance at any time (barge-in);
//! - the service sends the audio as binary messages (the requested format, the WAV
//!   header first for `riff-*`), word boundaries as `{"type":"word","text":…,
//!   "audio_offset_ms":…,"duration_ms":…,"text_offset":…,"word_length":…}`
//!   (`text_offset` counts bytes into the concatenated pieces), and finally
//!   `{"type":"turn_end","request_id":…,"audio_bytes":…,"chunks":…,"timings":{…}}`, or
//!   `{"type":"cancelled",…}` after a cancel, or `{"type":"error","status":…,"code":…,
//!   "message":…}`; then it closes the socket (1000 after `turn_end` / `cancelled`).
//!   `timings` is the in-band `Server-Timing`: `acquire_ms`, `first_audio_ms` (first text
//!   piece received → first audio sent) and `total_ms` (upgrade → `turn_end`).
//!
//! An utterance whose connection is lost before the client had any audio or word moves to
//! a fresh connection with all the text it was given: once after a drop or a dead socket,
//! up to three times after a normal close (1000/1001: an idle or age close crossing its
//! first text). The client sees nothing of it (its messages keep the request id it was
//! given).
//!
//! Bad messages close the socket with a reason: 1003 for a binary message, 1007 for a
//! text message that is not one of the three JSON messages, 1008 for text after `end` or
//! more than `MAX_STREAMED_TEXT_BYTES` of text, 1009 for a message over 64 KiB. A socket
//! that sends nothing for `STT_IDLE_CLOSE_TIMEOUT` is closed with 1001 (the same bound as
//! an idle STT socket: a caller that went quiet must not hold a connection forever).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderValue;
use axum::response::Response;
use pool_core::{Pooled, Tier};
use serde::{Deserialize, Serialize};
use speech_core::{
    AudioFormat, ErrorClass, MAX_STREAMED_TEXT_BYTES, SpeechError, SynthesisEvent,
    SynthesisRequest, SynthesisSummary, SynthesizerManager, validate_text_stream_request,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::session_header::{self, SessionHeader};
use super::{
    Peer, REQUEST_ID_HEADER, SERVER_TIMING_HEADER, TIER_HEADER, acquire, acquire_timing,
    check_session_cap, client_id, keep_after_error, moves_to_a_fresh_connection,
    no_connection_reason, validate_session_id,
};
use crate::error::{ApiError, ErrorBody};
use crate::state::{AppState, TTS_STREAM_POOL};

/// Query parameters of `GET /api/v1/tts/stream`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TtsStreamParams {
    /// The call this utterance belongs to: its utterances share one dedicated connection.
    pub session_id: Option<String>,
    /// Voice short name; defaults to `TTS_DEFAULT_VOICE`.
    pub voice: Option<String>,
    /// Azure output format name; defaults to `TTS_DEFAULT_FORMAT`.
    pub format: Option<String>,
    /// Send `word` messages (default true).
    pub word_boundaries: Option<bool>,
}

/// Largest websocket message accepted from a client: a text piece is a few tokens, and
/// the bound keeps one message from holding much memory.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Text pieces and events buffered per utterance; small so backpressure reaches the
/// client and the speech service.
const BUFFER: usize = 32;

#[derive(Debug, Serialize)]
struct Timings {
    acquire_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_audio_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    Connected {
        pool: &'static str,
        tier: Tier,
        session_id: Option<&'a str>,
        request_id: &'a str,
        voice: &'a str,
        format: &'a str,
        timings: Timings,
    },
    Word {
        text: &'a str,
        audio_offset_ms: f64,
        duration_ms: f64,
        text_offset: u32,
        word_length: u32,
    },
    TurnEnd {
        request_id: &'a str,
        audio_bytes: u64,
        chunks: u32,
        timings: Timings,
    },
    Cancelled {
        request_id: &'a str,
        timings: Timings,
    },
    Error {
        status: u16,
        code: &'a str,
        message: &'a str,
    },
}

impl<'a> ServerMessage<'a> {
    /// The `error` message for a failure the client is told of.
    fn error(api: &'a ApiError) -> Self {
        Self::Error {
            status: api.status.as_u16(),
            code: api.code,
            message: &api.message,
        }
    }
}

/// What the client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientMessage {
    Text { text: String },
    End,
    Cancel,
}

/// Everything an utterance needs after the upgrade.
struct Utterance {
    guard: Pooled<SynthesizerManager>,
    request: SynthesisRequest,
    session: Option<String>,
    acquired: Duration,
    started: Instant,
}

fn build_request(state: &AppState, params: &TtsStreamParams) -> Result<SynthesisRequest, ApiError> {
    let options = state.options();
    let format = match params.format.as_deref() {
        None => options.default_format,
        Some(f) => f
            .parse::<AudioFormat>()
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let voice = params
        .voice
        .clone()
        .unwrap_or_else(|| options.default_voice.clone());
    let request = SynthesisRequest::text("", voice, format)
        .with_word_boundaries(params.word_boundaries.unwrap_or(true));
    validate_text_stream_request(&request).map_err(|e| ApiError::from_speech(&e))?;
    Ok(request)
}

/// `GET /api/v1/tts/stream`.
#[utoipa::path(
    get,
    path = "/api/v1/tts/stream",
    tag = "speech",
    params(
        TtsStreamParams,
        ("X-Session-Id" = Option<String>, Header,
         description = "The call's session id, for a load balancer to hash on; same rules as \
         the session_id query parameter, which it may replace (when both are sent they must \
         be equal)"),
    ),
    responses(
        (status = 101, description = "Websocket: JSON text pieces in ({\"type\":\"text\",\"text\":…}, \
         then {\"type\":\"end\"}; {\"type\":\"cancel\"} stops), binary audio and JSON word / turn_end \
         messages out. The connection is taken before the upgrade; its tier is in x-pool-tier and \
         in the first (connected) message",
         headers(
             ("x-pool-tier" = String, description = "dedicated, warm or cold"),
             ("x-session-id" = String, description = "The session served, when the request named one"),
         )),
        (status = 400, description = "Malformed parameters, not a websocket request, or \
         X-Session-Id and session_id differ", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 409, description = "The session is in use by another request", body = ErrorBody),
        (status = 429, description = "Pool exhausted or speech service throttling", body = ErrorBody),
        (status = 502, description = "The speech service failed", body = ErrorBody),
        (status = 503, description = "Draining or speech service unavailable", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn tts_stream(
    State(state): State<AppState>,
    peer: Peer,
    session_header: SessionHeader,
    params: Result<Query<TtsStreamParams>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Query(mut params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // The X-Session-Id header may carry (or must agree with) the query's session id.
    params.session_id =
        session_header.reconcile(params.session_id.take(), "the session_id query parameter")?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            e.status(),
            "websocket_required",
            "GET /api/v1/tts/stream is a websocket endpoint: connect with an Upgrade: websocket request",
        )
    })?;
    let request = build_request(&state, &params)?;
    if let Some(id) = &params.session_id {
        validate_session_id(id)?;
    }
    let client = client_id(&state, &peer);
    check_session_cap(&state, &client, params.session_id.as_deref())?;
    // Taken before the upgrade: the text will come at an LLM's pace, and the connection
    // must be ready when its first clause does; a refusal is an honest HTTP status.
    let (guard, acquired) = acquire(
        &state,
        &state.pools().tts_stream,
        params.session_id.as_deref(),
    )
    .await?;
    if let Some(id) = &params.session_id {
        state.session_cap().record(&client, id);
    }
    let tier = guard.tier();
    let request_id = request.request_id.clone();
    let session_echo = params.session_id.clone();
    let utterance = Utterance {
        guard,
        request,
        session: params.session_id,
        acquired,
        started,
    };
    // Tracked until the socket ends, so shutdown waits for it.
    let token = state.tasks().token();
    let mut response = ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            let _token = token;
            run(socket, state, utterance).await;
        });
    let headers = response.headers_mut();
    headers.insert(TIER_HEADER, HeaderValue::from_static(tier.as_str()));
    headers.insert(SERVER_TIMING_HEADER, acquire_timing(acquired));
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    session_header::echo(headers, session_echo.as_deref());
    Ok(response)
}

async fn send_json<T: Serialize>(socket: &mut WebSocket, value: &T) -> Result<(), ()> {
    let text = serde_json::to_string(value).map_err(|_| ())?;
    socket.send(Message::text(text)).await.map_err(|_| ())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How the client side of an utterance ended.
#[derive(Debug)]
enum ClientEnd {
    /// The synthesis finished (all text spoken).
    Finished,
    /// The client asked to cancel.
    Cancelled,
    /// The client went away: nobody to answer.
    Gone,
    /// Close with this code and reason (a violation, idle, drain).
    Close(u16, String),
}

/// What the relay observed, for the final message.
struct Relay {
    end: ClientEnd,
    first_text: Option<Instant>,
    first_audio: Option<Instant>,
    /// While the client has had no audio or word: everything needed to say the utterance
    /// on a fresh connection, should this one have closed on its own.
    carry: Option<Carry>,
}

/// The client's side of an utterance so far, handed from a connection that closed before
/// any output to the next one.
#[derive(Default)]
struct Carry {
    /// Text to forward before reading more from the client: on a move, every piece the
    /// closed connection was given, then those it had not taken yet.
    backlog: VecDeque<String>,
    /// The client has sent `end`.
    end_requested: bool,
    /// Bytes of text the client has sent (bounded by `MAX_STREAMED_TEXT_BYTES`).
    sent_bytes: usize,
    /// When the first piece arrived (`first_audio_ms` counts from it).
    first_text: Option<Instant>,
}

async fn run(mut socket: WebSocket, state: AppState, utterance: Utterance) {
    let Utterance {
        mut guard,
        request,
        session,
        acquired,
        started,
    } = utterance;
    let stop = state.drain_token().child_token();
    let _registration = session
        .as_deref()
        .map(|s| state.streams().register(s, stop.clone()));
    let request_id = request.request_id.clone();
    let connected = ServerMessage::Connected {
        pool: TTS_STREAM_POOL,
        tier: guard.tier(),
        session_id: session.as_deref(),
        request_id: request_id.as_str(),
        voice: &request.voice,
        format: request.format.as_header_str(),
        timings: Timings {
            acquire_ms: ms(acquired),
            first_audio_ms: None,
            total_ms: None,
        },
    };
    if send_json(&mut socket, &connected).await.is_err() {
        return;
    }
    let idle = state.options().limits.stt_idle_close_timeout;
    let mut carry = Carry::default();
    let mut moves: u32 = 0;
    let mut attempt_request = request;
    let (result, relay) = loop {
        let span = tracing::info_span!(
            "tts_stream_turn",
            request_id = %attempt_request.request_id,
            session = session.as_deref(),
            pool = TTS_STREAM_POOL,
            tier = %guard.tier()
        );
        let (text_tx, text_rx) = mpsc::channel(BUFFER);
        let (events_tx, events_rx) = mpsc::channel(BUFFER);
        let (result, mut relay) = tokio::join!(
            guard
                .synthesize_text_stream(attempt_request.clone(), text_rx, events_tx)
                .instrument(span.clone()),
            relay(&mut socket, text_tx, events_rx, &stop, idle, carry)
        );
        // The connection was lost (an idle or age close crossing the utterance's first
        // text, a drop, a dead socket) before the client was sent any audio: the
        // utterance moves to a fresh connection with all the text it was given, so the
        // client sees nothing (see `moves_to_a_fresh_connection` for how many times).
        let movable = match (&result, &relay.end, relay.carry.take()) {
            (Err(e), ClientEnd::Finished, Some(c))
                if moves_to_a_fresh_connection(e, moves) && !stop.is_cancelled() =>
            {
                Some((e.clone(), c))
            }
            _ => None,
        };
        let Some((e, next)) = movable else {
            break (result, relay);
        };
        state
            .metrics()
            .record_upstream_error(TTS_STREAM_POOL, e.class());
        state.metrics().record_turn_move(TTS_STREAM_POOL);
        tracing::info!(parent: &span, error = %e, "the connection was lost before any audio; moving the utterance to a fresh connection");
        guard.discard();
        moves += 1;
        guard = match acquire(&state, &state.pools().tts_stream, session.as_deref()).await {
            Ok((g, _)) => g,
            Err(api) => {
                let msg = ServerMessage::error(&api);
                let _ = send_json(&mut socket, &msg).await;
                let frame = CloseFrame {
                    code: 1013,
                    reason: no_connection_reason(&api).into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                return;
            }
        };
        // Azure refuses a request id it has seen; the client keeps the one it was given.
        attempt_request.request_id = speech_core::RequestId::new();
        carry = next;
    };
    match &result {
        Err(e) if !keep_after_error(e.class()) => guard.discard(),
        _ => drop(guard),
    }
    let timings = Timings {
        acquire_ms: ms(acquired),
        first_audio_ms: relay
            .first_text
            .zip(relay.first_audio)
            .map(|(t, a)| ms(a.saturating_duration_since(t))),
        total_ms: Some(ms(started.elapsed())),
    };
    let close = match (relay.end, result) {
        (ClientEnd::Gone, _) => return,
        (ClientEnd::Close(code, reason), _) => (code, reason),
        (ClientEnd::Cancelled, _) => {
            let msg = ServerMessage::Cancelled {
                request_id: request_id.as_str(),
                timings,
            };
            let _ = send_json(&mut socket, &msg).await;
            (1000, "cancelled".to_owned())
        }
        (
            ClientEnd::Finished,
            Ok(SynthesisSummary {
                audio_bytes,
                chunks,
                ..
            }),
        ) => {
            let msg = ServerMessage::TurnEnd {
                request_id: request_id.as_str(),
                audio_bytes,
                chunks,
                timings,
            };
            let _ = send_json(&mut socket, &msg).await;
            (1000, "turn complete".to_owned())
        }
        (ClientEnd::Finished, Err(e)) => {
            failed(&state, &e);
            let api = ApiError::from_speech(&e);
            let msg = ServerMessage::error(&api);
            let _ = send_json(&mut socket, &msg).await;
            let code = if e.class() == ErrorClass::BadRequest {
                1008
            } else {
                1011
            };
            (code, "synthesis failed".to_owned())
        }
    };
    let frame = CloseFrame {
        code: close.0,
        reason: close.1.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// The close a client's read error calls for: a protocol violation gets its own code so
/// the client learns what it did wrong; anything else (a reset, an abrupt end) means the
/// client is gone. (axum exposes only the websocket library's message.)
fn violation(e: &axum::Error) -> Option<(u16, String)> {
    let text = e.to_string();
    if text.contains("UTF-8") {
        Some((1007, "text messages must be valid UTF-8".to_owned()))
    } else if text.contains("Space limit exceeded") || text.contains("too long") {
        Some((
            1009,
            format!("messages are limited to {MAX_MESSAGE_BYTES} bytes"),
        ))
    } else if text.contains("protocol error") {
        Some((1002, "websocket protocol error".to_owned()))
    } else {
        None
    }
}

fn failed(state: &AppState, e: &SpeechError) {
    state
        .metrics()
        .record_upstream_error(TTS_STREAM_POOL, e.class());
    tracing::warn!(pool = TTS_STREAM_POOL, class = %e.class(), error = %e, "text-streaming synthesis failed");
}

/// Moves text from the client to the synthesis and audio from the synthesis to the
/// client until the synthesis ends or the client side ends the utterance. Ending it early
/// drops both channels, which cancels the synthesis (speech-core's contract).
async fn relay(
    socket: &mut WebSocket,
    text_tx: mpsc::Sender<String>,
    mut events: mpsc::Receiver<SynthesisEvent>,
    stop: &CancellationToken,
    idle_close: Duration,
    carry: Carry,
) -> Relay {
    // Pieces read from the client and not yet taken by the synthesis. Reading the socket
    // never waits for the synthesis, which may itself be waiting for us to forward its
    // audio; the total is bounded by MAX_STREAMED_TEXT_BYTES.
    let Carry {
        mut backlog,
        mut end_requested,
        mut sent_bytes,
        first_text,
    } = carry;
    let mut text = (!(end_requested && backlog.is_empty())).then_some(text_tx);
    // The pieces the synthesis was given, kept while the client has had no output, for a
    // move to a fresh connection.
    let mut forwarded: Option<Vec<String>> = Some(Vec::new());
    // The synthesis stopped reading (it failed or finished): nothing more is forwarded,
    // and its result tells the client why.
    let mut synthesis_gone = false;
    let mut out = Relay {
        end: ClientEnd::Finished,
        first_text,
        first_audio: None,
        carry: None,
    };
    let idle = tokio::time::sleep(idle_close);
    tokio::pin!(idle);
    out.end = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break ClientEnd::Close(1001, "the session ended or the server is shutting down".into()),
            () = &mut idle => {
                break ClientEnd::Close(
                    1001,
                    format!("closed after {idle_close:?} without a message (STT_IDLE_CLOSE_TIMEOUT)"),
                );
            }
            permit = {
                // An owned permit: the handler below may end the text while holding it.
                let tx = text.clone();
                async move {
                    match tx {
                        Some(tx) => tx.reserve_owned().await,
                        None => std::future::pending().await,
                    }
                }
            }, if !backlog.is_empty() && !synthesis_gone => {
                match permit {
                    Ok(permit) => {
                        if let Some(piece) = backlog.pop_front() {
                            if let Some(kept) = forwarded.as_mut() {
                                kept.push(piece.clone());
                            }
                            permit.send(piece);
                        }
                    }
                    Err(_) => synthesis_gone = true,
                }
                if backlog.is_empty() && end_requested {
                    text = None;
                }
            }
            event = events.recv() => match event {
                None => break ClientEnd::Finished,
                Some(SynthesisEvent::Audio(bytes)) => {
                    if bytes.is_empty() {
                        continue;
                    }
                    out.first_audio.get_or_insert_with(Instant::now);
                    forwarded = None;
                    if socket.send(Message::Binary(bytes)).await.is_err() {
                        break ClientEnd::Gone;
                    }
                }
                Some(SynthesisEvent::WordBoundary { text: word, audio_offset, duration, text_offset, word_length }) => {
                    forwarded = None;
                    let msg = ServerMessage::Word {
                        text: &word,
                        audio_offset_ms: ms(audio_offset),
                        duration_ms: ms(duration),
                        text_offset,
                        word_length,
                    };
                    if send_json(socket, &msg).await.is_err() {
                        break ClientEnd::Gone;
                    }
                }
            },
            msg = socket.recv() => {
                idle.as_mut().reset(tokio::time::Instant::now() + idle_close);
                let msg = match msg {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => match violation(&e) {
                        Some((code, reason)) => break ClientEnd::Close(code, reason),
                        None => break ClientEnd::Gone,
                    },
                    None => break ClientEnd::Gone,
                };
                let raw = match msg {
                    Message::Text(t) => t,
                    Message::Binary(_) => {
                        break ClientEnd::Close(
                            1003,
                            "binary messages are not understood; send {\"type\":\"text\",\"text\":…}".into(),
                        );
                    }
                    Message::Close(_) => break ClientEnd::Gone,
                    // Pings are answered by axum.
                    _ => continue,
                };
                match serde_json::from_str::<ClientMessage>(raw.as_str()) {
                    Ok(ClientMessage::Text { text: piece }) => {
                        if end_requested {
                            break ClientEnd::Close(1008, "text after end".into());
                        }
                        sent_bytes += piece.len();
                        if sent_bytes > MAX_STREAMED_TEXT_BYTES {
                            break ClientEnd::Close(
                                1008,
                                format!("more than {MAX_STREAMED_TEXT_BYTES} bytes of text"),
                            );
                        }
                        out.first_text.get_or_insert_with(Instant::now);
                        if !piece.is_empty() {
                            backlog.push_back(piece);
                        }
                    }
                    Ok(ClientMessage::End) => {
                        if end_requested {
                            break ClientEnd::Close(1008, "end sent twice".into());
                        }
                        end_requested = true;
                        if backlog.is_empty() {
                            text = None;
                        }
                    }
                    Ok(ClientMessage::Cancel) => break ClientEnd::Cancelled,
                    Err(e) => {
                        let mut reason = format!("expected {{\"type\":\"text\"|\"end\"|\"cancel\"}}: {e}");
                        // Close reasons are limited to 123 bytes.
                        if reason.len() > 120 {
                            let mut cut = 120;
                            while !reason.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            reason.truncate(cut);
                        }
                        break ClientEnd::Close(1007, reason);
                    }
                }
            }
        }
    };
    // Dropping the receiver (and the text sender) cancels a synthesis still running.
    drop(events);
    drop(text);
    out.carry = forwarded.map(|mut pieces| {
        pieces.extend(backlog);
        Carry {
            backlog: pieces.into(),
            end_requested,
            sent_bytes,
            first_text: out.first_text,
        }
    });
    out
}
