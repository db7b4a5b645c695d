//! `GET /api/v1/stt`: a websocket carrying PCM audio in and recognition events out.
//!
//! Protocol (client ↔ service):
//! - query: `session_id` (optional: the call's turns share one dedicated connection),
//!   `language` (optional; must match the pool's `STT_LANGUAGE`), `format`
//!   and `mode` (optional; must match `STT_FORMAT` / `STT_MODE`, because Azure fixes
//!   language, mode and format when a connection opens, so a pool serves one combination);
//! - the service first sends `{"type":"connected","pool":"speech-stt","tier":…,
//!   "session_id":…,"language":…}`; the upgrade response also carries `x-pool-tier`;
//! - a turn starts with the client's first binary frame (16 kHz, 16-bit, mono,
//!   little-endian PCM, no WAV header); the service answers `{"type":"turn_start",
//!   "turn":N,"tier":…,"acquire_ms":…}`, then streams speech-core's `RecognitionEvent`s as JSON
//!   (`speech_start_detected`, `hypothesis`, `phrase`, `speech_end_detected`, `turn_end`);
//! - the client ends a turn's audio with the text message `{"type":"end"}` (or by
//!   closing the socket); after `turn_end` it may start the next turn;
//! - failures arrive as `{"type":"error","status":…,"code":…,"message":…}`.
//!
//! The first turn's connection is taken before the upgrade, so an exhausted pool or a
//! failing backend is an HTTP status (429, 502, 503) rather than a socket that opens and
//! closes. Later turns take a connection when their audio starts and give it back at
//! `turn_end`: between turns it is parked in the session (DEDICATED next time) or returned
//! to the warm set.

use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderValue;
use axum::response::Response;
use bytes::Bytes;
use pool_core::{Pooled, Tier};
use serde::{Deserialize, Serialize};
use speech_core::{
    RecognitionEvent, RecognitionFormat, RecognitionMode, RecognitionRequest, Recognizer,
    RecognizerManager, SpeechError,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    SERVER_TIMING_HEADER, TIER_HEADER, acquire, acquire_timing, keep_after_error,
    validate_session_id,
};
use crate::error::{ApiError, ErrorBody};
use crate::state::{AppState, STT_POOL};

/// Query parameters of `GET /api/v1/stt`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SttParams {
    /// The call this stream belongs to.
    pub session_id: Option<String>,
    /// BCP 47 tag; must match the STT pool's language.
    pub language: Option<String>,
    /// Phrase detail: simple or detailed.
    #[param(value_type = Option<String>)]
    pub format: Option<RecognitionFormat>,
    /// Recognition mode: conversation, interactive or dictation.
    #[param(value_type = Option<String>)]
    pub mode: Option<RecognitionMode>,
}

/// Largest websocket message accepted from a client: 1 MiB is 32 s of audio, far more
/// than anyone sends in one frame, and bounds memory per socket.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Audio chunks and events buffered per turn; small so backpressure reaches the client.
const TURN_BUFFER: usize = 16;

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    Connected {
        pool: &'static str,
        tier: Tier,
        session_id: Option<&'a str>,
        language: &'a str,
    },
    TurnStart {
        turn: u32,
        tier: Tier,
        /// How long this turn waited for its connection, milliseconds.
        acquire_ms: f64,
        request_id: &'a str,
    },
    Error {
        status: u16,
        code: &'a str,
        message: &'a str,
    },
}

#[derive(Debug, Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
}

/// Everything a stream needs after the upgrade.
#[derive(Debug)]
struct StreamContext {
    session: Option<String>,
    language: String,
    format: RecognitionFormat,
    mode: RecognitionMode,
}

/// `GET /api/v1/stt`.
#[utoipa::path(
    get,
    path = "/api/v1/stt",
    tag = "speech",
    params(SttParams),
    responses(
        (status = 101, description = "Websocket: PCM audio in, recognition events out",
         headers(("x-pool-tier" = String, description = "dedicated, warm or cold"))),
        (status = 400, description = "Malformed parameters or not a websocket request", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 429, description = "Pool exhausted or speech service throttling", body = ErrorBody),
        (status = 502, description = "The speech service failed", body = ErrorBody),
        (status = 503, description = "Draining or speech service unavailable", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn stt(
    State(state): State<AppState>,
    params: Result<Query<SttParams>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            e.status(),
            "websocket_required",
            "GET /api/v1/stt is a websocket endpoint: connect with an Upgrade: websocket request",
        )
    })?;
    let pool_language = &state.options().stt_language;
    let language = match params.language {
        None => pool_language.clone(),
        Some(l) if l.eq_ignore_ascii_case(pool_language) => pool_language.clone(),
        Some(l) => {
            // Azure fixes the language when a connection opens, so a pool serves one.
            return Err(ApiError::bad_request(format!(
                "this service recognises {pool_language} (STT_LANGUAGE); language {:?} is not served",
                l.chars().take(40).collect::<String>()
            )));
        }
    };
    // Mode and format are fixed per connection too: a stream may name them, but only as
    // a check that the pool serves what it expects.
    let options = state.options();
    if let Some(mode) = params.mode.filter(|m| *m != options.stt_mode) {
        return Err(ApiError::bad_request(format!(
            "this service recognises in {} mode (STT_MODE); mode {} is not served",
            options.stt_mode.as_str(),
            mode.as_str()
        )));
    }
    if let Some(format) = params.format.filter(|f| *f != options.stt_format) {
        return Err(ApiError::bad_request(format!(
            "this service returns {} phrases (STT_FORMAT); format {} is not served",
            options.stt_format.as_str(),
            format.as_str()
        )));
    }
    if let Some(id) = &params.session_id {
        validate_session_id(id)?;
    }
    let context = StreamContext {
        session: params.session_id,
        language,
        format: options.stt_format,
        mode: options.stt_mode,
    };
    let (guard, waited) = acquire(&state, &state.pools().stt, context.session.as_deref()).await?;
    let tier = guard.tier();
    // Counts as tracked work until the socket ends, so shutdown waits for it (axum's
    // graceful shutdown does not wait for upgraded connections).
    let token = state.tasks().token();
    let mut response =
        ws.max_message_size(MAX_MESSAGE_BYTES)
            .on_upgrade(move |socket| async move {
                let _token = token;
                run_stream(socket, state, (guard, waited), context).await;
            });
    let headers = response.headers_mut();
    headers.insert(TIER_HEADER, HeaderValue::from_static(tier.as_str()));
    headers.insert(SERVER_TIMING_HEADER, acquire_timing(waited));
    Ok(response)
}

async fn send_json<T: Serialize>(socket: &mut WebSocket, value: &T) -> Result<(), ()> {
    let text = serde_json::to_string(value).map_err(|_| ())?;
    socket.send(Message::text(text)).await.map_err(|_| ())
}

async fn send_error(socket: &mut WebSocket, e: &ApiError) {
    let _ = send_json(
        socket,
        &ServerMessage::Error {
            status: e.status.as_u16(),
            code: e.code,
            message: &e.message,
        },
    )
    .await;
}

fn is_end_message(text: &str) -> bool {
    let text = text.trim();
    text.eq_ignore_ascii_case("end")
        || serde_json::from_str::<ClientMessage>(text)
            .is_ok_and(|m| matches!(m.kind.as_str(), "end" | "end_of_audio" | "end_turn"))
}

/// What ended a wait for the next turn.
enum NextTurn {
    Audio(Bytes),
    Done,
}

async fn run_stream(
    mut socket: WebSocket,
    state: AppState,
    first: (Pooled<RecognizerManager>, Duration),
    context: StreamContext,
) {
    let (first, first_waited) = first;
    let stop = state.drain_token().child_token();
    let _registration = context
        .session
        .as_deref()
        .map(|s| state.streams().register(s, stop.clone()));
    let connected = ServerMessage::Connected {
        pool: STT_POOL,
        tier: first.tier(),
        session_id: context.session.as_deref(),
        language: &context.language,
    };
    if send_json(&mut socket, &connected).await.is_err() {
        return;
    }
    let mut held = Some((first, first_waited));
    let mut turn: u32 = 0;
    let mut close = (1000, "done");
    loop {
        let audio = match wait_for_audio(&mut socket, &stop).await {
            NextTurn::Audio(chunk) => chunk,
            NextTurn::Done => break,
        };
        // A held connection that went stale while the client was silent (the server closes
        // idle sockets) is dropped here, before a new one is asked for: a session's guard
        // holds the session, and asking the pool for the same session while holding it
        // would wait on ourselves.
        let reusable = held.take().filter(|(g, _)| g.is_ready());
        let (mut guard, waited) = match reusable {
            Some(held) => held,
            None => match acquire(&state, &state.pools().stt, context.session.as_deref()).await {
                Ok(acquired) => acquired,
                Err(e) => {
                    send_error(&mut socket, &e).await;
                    close = (1013, "no speech connection available");
                    break;
                }
            },
        };
        turn += 1;
        let mut request = RecognitionRequest::new(context.language.clone());
        request.format = context.format;
        request.mode = context.mode;
        let request_id = request.request_id.clone();
        let start = ServerMessage::TurnStart {
            turn,
            tier: guard.tier(),
            acquire_ms: waited.as_secs_f64() * 1000.0,
            request_id: request_id.as_str(),
        };
        if send_json(&mut socket, &start).await.is_err() {
            return;
        }
        let started = Instant::now();
        // Everything the turn logs, here and in the backend, carries the request id,
        // session, pool and tier, so one slow turn can be followed through the logs.
        let span = tracing::info_span!(
            "stt_turn",
            request_id = %request_id,
            session = context.session.as_deref(),
            pool = STT_POOL,
            tier = %guard.tier(),
            turn
        );
        let (result, client_gone) = run_turn(&mut socket, &mut **guard, request, audio, &stop)
            .instrument(span)
            .await;
        match result {
            Ok(()) => {
                tracing::debug!(%request_id, turn, elapsed = ?started.elapsed(), "recognition turn done");
                drop(guard);
            }
            Err(e) => {
                if !keep_after_error(e.class()) {
                    guard.discard();
                } else {
                    drop(guard);
                }
                if e.class() != speech_core::ErrorClass::Cancelled {
                    state.metrics().record_upstream_error(STT_POOL, e.class());
                    tracing::warn!(pool = STT_POOL, %request_id, class = %e.class(), error = %e, "recognition failed");
                    if !client_gone {
                        send_error(&mut socket, &ApiError::from_speech(&e)).await;
                    }
                }
            }
        }
        if client_gone {
            return;
        }
    }
    if stop.is_cancelled() {
        close = if state.is_draining() {
            (1001, "server shutting down")
        } else {
            (1000, "session ended")
        };
    }
    let frame = CloseFrame {
        code: close.0,
        reason: close.1.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Waits for the first audio of the next turn; `Done` when the client closes or the stream
/// is stopped (drain or session deleted).
async fn wait_for_audio(socket: &mut WebSocket, stop: &CancellationToken) -> NextTurn {
    loop {
        let msg = tokio::select! {
            // Biased so a stopped stream does not start another turn because audio was
            // also ready.
            biased;
            () = stop.cancelled() => return NextTurn::Done,
            msg = socket.recv() => msg,
        };
        match msg {
            Some(Ok(Message::Binary(b))) if !b.is_empty() => return NextTurn::Audio(b),
            Some(Ok(Message::Text(t))) if !is_end_message(&t) => {
                let e = ApiError::bad_request(
                    "text messages other than {\"type\":\"end\"} are not understood; send audio as binary frames",
                );
                send_error(socket, &e).await;
            }
            Some(Ok(Message::Close(_)) | Err(_)) | None => return NextTurn::Done,
            // Pings are answered by axum; an `end` with no audio ends nothing.
            Some(Ok(_)) => {}
        }
    }
}

/// One event of a turn's loop.
enum Step {
    Finished(Result<(), SpeechError>),
    Event(Option<RecognitionEvent>),
    Forwarded,
    Client(Option<Result<Message, axum::Error>>),
    Stop,
}

/// Pends forever on `None`, so a `select!` branch over an ended channel stays quiet.
async fn reserve(
    tx: &Option<mpsc::Sender<Bytes>>,
) -> Result<mpsc::Permit<'_, Bytes>, mpsc::error::SendError<()>> {
    match tx {
        Some(tx) => tx.reserve().await,
        None => std::future::pending().await,
    }
}

/// Runs one recognition turn: forwards client audio to the connection and events back,
/// until the backend ends the turn. Returns the turn's result and whether the client is
/// gone. Never abandons the backend's future mid-turn (that would leave the connection in
/// an unknown state); once the client is gone it ends the audio and lets the turn finish.
async fn run_turn(
    socket: &mut WebSocket,
    conn: &mut dyn Recognizer,
    request: RecognitionRequest,
    first: Bytes,
    stop: &CancellationToken,
) -> (Result<(), SpeechError>, bool) {
    let (audio_tx, audio_rx) = mpsc::channel(TURN_BUFFER);
    let (events_tx, mut events_rx) = mpsc::channel::<RecognitionEvent>(TURN_BUFFER);
    let mut audio_tx = Some(audio_tx);
    let mut pending = Some(first);
    let mut client_gone = false;
    let mut result = None;
    let mut events_open = true;
    let recognize = conn.recognize(request, audio_rx, events_tx);
    tokio::pin!(recognize);
    while result.is_none() || events_open {
        // The branches only produce a step; acting on it happens after the select, once
        // no branch future borrows the channels or the socket any more.
        let step = tokio::select! {
            r = &mut recognize, if result.is_none() => Step::Finished(r),
            ev = events_rx.recv(), if events_open => Step::Event(ev),
            permit = reserve(&audio_tx), if pending.is_some() => {
                if let (Ok(permit), Some(chunk)) = (permit, pending.take()) {
                    permit.send(chunk);
                }
                Step::Forwarded
            }
            msg = socket.recv(), if pending.is_none() && audio_tx.is_some() && !client_gone => {
                Step::Client(msg)
            }
            () = stop.cancelled(), if audio_tx.is_some() => Step::Stop,
        };
        match step {
            Step::Finished(r) => result = Some(r),
            Step::Event(Some(ev)) => {
                if !client_gone && send_json(socket, &ev).await.is_err() {
                    // Keep draining events so the backend is never blocked on us.
                    client_gone = true;
                    audio_tx = None;
                    pending = None;
                }
            }
            Step::Event(None) => events_open = false,
            Step::Forwarded => {}
            Step::Client(Some(Ok(Message::Binary(b)))) => {
                if !b.is_empty() {
                    pending = Some(b);
                }
            }
            Step::Client(Some(Ok(Message::Text(t)))) => {
                if is_end_message(&t) {
                    audio_tx = None;
                }
            }
            Step::Client(Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                client_gone = true;
                audio_tx = None;
            }
            Step::Client(Some(Ok(_))) => {}
            Step::Stop => {
                // Draining or session deleted: end the audio so the turn finishes with
                // what was said so far.
                audio_tx = None;
                pending = None;
            }
        }
    }
    let result = result.unwrap_or(Err(SpeechError::Cancelled));
    (result, client_gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_messages() {
        assert!(is_end_message(r#"{"type":"end"}"#));
        assert!(is_end_message("end"));
        assert!(is_end_message(r#" {"type":"end_of_audio"} "#));
        assert!(!is_end_message(r#"{"type":"start"}"#));
        assert!(!is_end_message("hello"));
    }

    #[test]
    fn server_messages_are_tagged() {
        let m = ServerMessage::TurnStart {
            turn: 2,
            tier: Tier::Dedicated,
            acquire_ms: 0.25,
            request_id: "AB",
        };
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"turn_start","turn":2,"tier":"dedicated","acquire_ms":0.25,"request_id":"AB"}"#
        );
    }
}
