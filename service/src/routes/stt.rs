//! `GET /api/v1/stt`: a websocket carrying PCM audio in and recognition events out.
//!
//! Protocol (client ↔ service):
//! - query: `session_id` (optional: the call's turns share one dedicated connection),
//!   `language` (optional; must match the pool's `STT_LANGUAGE`), `format`
//!   and `mode` (optional; must match `STT_FORMAT` / `STT_MODE`, because Azure fixes
//!   language, mode and format when a connection opens, so a pool serves one combination);
//! - `stream` (optional): `turn` (the default, described here) or `continuous`, one
//!   recognition stream for the whole call that survives Azure's connection limits
//!   without loss (described in `stt_continuous`);
//! - the service first sends `{"type":"connected","pool":"speech-stt","tier":…,
//!   "session_id":…,"language":…}` (`tier` is null: connections are taken per turn);
//! - a turn starts with the client's first binary frame (16 kHz, 16-bit, mono,
//!   little-endian PCM, no WAV header); the service answers `{"type":"turn_start",
//!   "turn":N,"tier":…,"acquire_ms":…}`, then streams speech-core's `RecognitionEvent`s as JSON
//!   (`speech_start_detected`, `hypothesis`, `phrase`, `speech_end_detected`, `turn_end`);
//! - the client ends a turn's audio with the text message `{"type":"end"}` (or by
//!   closing the socket); after `turn_end` it may start the next turn;
//! - failures arrive as `{"type":"error","status":…,"code":…,"message":…}`.
//!
//! A socket holds no speech connection until its audio starts: each turn takes one when
//! its first audio arrives and gives it back at `turn_end`; between turns it is parked in
//! the session (DEDICATED next time) or returned to the warm set. So an open but silent
//! socket costs the pools nothing. When no connection can be had the client gets an
//! `error` message and the socket closes with 1013 (try again later). A turn whose
//! connection is lost before the client was sent any event moves to a fresh connection
//! with the audio it had been given: once after a drop or a dead socket, up to three times
//! after a normal close (1000/1001: an idle or age close crossing the turn's first audio).
//! The client sees only its `turn_start` (whose tier and request id are those of the first
//! connection) and then the results.
//!
//! Limits: a turn whose audio stops for `STT_AUDIO_IDLE_TIMEOUT` is ended with what was
//! said so far, giving its connection back while the socket stays open; a socket that
//! sends nothing for `STT_IDLE_CLOSE_TIMEOUT` between turns is closed with 1001 and a
//! reason naming the setting. Protocol violations close with their code: 1007 for a text
//! message that is not UTF-8, 1009 for a message over 1 MiB, 1002 for other framing
//! errors.
//! Two streams of one session share its connection: a turn of the second waits (up to
//! the pool's acquire timeout) for the first's turn to end, else gets `session_busy`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use pool_core::Tier;
use serde::{Deserialize, Serialize};
use speech_core::{
    RecognitionEvent, RecognitionFormat, RecognitionMode, RecognitionRequest, Recognizer,
    SpeechError,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::session_header::{self, SessionHeader};
use super::{
    Peer, acquire, check_session_cap, client_id, keep_after_error, moves_to_a_fresh_connection,
    no_connection_reason, validate_session_id,
};
use crate::error::{ApiError, ErrorBody};
use crate::limits::ClientId;
use crate::state::{AppState, STT_POOL};

/// Query parameters of `GET /api/v1/stt`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SttParams {
    /// The call this stream belongs to. May be sent instead (or as well, then equal) as
    /// the `X-Session-Id` header, which a load balancer can hash on.
    pub session_id: Option<String>,
    /// BCP 47 tag; must match the STT pool's language.
    pub language: Option<String>,
    /// Phrase detail: simple or detailed.
    #[param(value_type = Option<String>)]
    pub format: Option<RecognitionFormat>,
    /// Recognition mode: conversation, interactive or dictation.
    #[param(value_type = Option<String>)]
    pub mode: Option<RecognitionMode>,
    /// `turn` (the default): each turn takes a connection and ends with
    /// `{"type":"end"}`. `continuous`: one stream for the whole call; phrases arrive as
    /// the speech service segments them, across the service's connection changes.
    #[param(value_type = Option<String>)]
    pub stream: Option<StreamKind>,
}

/// How a client uses the STT websocket (the `stream` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    /// Turns, each taking a connection when its audio starts.
    #[default]
    Turn,
    /// One call-long stream, moved between connections without loss (see
    /// `routes::stt_continuous`).
    Continuous,
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
        /// Always null: a stream takes a connection per turn, reported in `turn_start`.
        tier: Option<Tier>,
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
pub(super) struct StreamContext {
    pub(super) session: Option<String>,
    pub(super) language: String,
    pub(super) format: RecognitionFormat,
    pub(super) mode: RecognitionMode,
    /// `stream=continuous`: one call-long stream (see `stt_continuous`).
    pub(super) continuous: bool,
}

impl StreamContext {
    /// A recognition request for this stream, with a request id of its own.
    pub(super) fn request(&self) -> RecognitionRequest {
        let mut request = RecognitionRequest::new(self.language.clone());
        request.format = self.format;
        request.mode = self.mode;
        request
    }
}

/// `GET /api/v1/stt`.
#[utoipa::path(
    get,
    path = "/api/v1/stt",
    tag = "speech",
    params(
        SttParams,
        ("X-Session-Id" = Option<String>, Header,
         description = "The call's session id, for a load balancer to hash on; same rules as \
         the session_id query parameter, which it may replace (when both are sent they must \
         be equal)"),
    ),
    responses(
        (status = 101, description = "Websocket: PCM audio in, recognition events out. \
         Turn mode (default): each turn takes its connection when its first audio arrives, \
         reports the tier in its turn_start event and ends with {\"type\":\"end\"}. \
         stream=continuous: one stream for the whole call; stream_start reports the first \
         connection, phrases arrive as the service segments them with offsets continuous \
         from the start of the stream, connection changes (Azure's 10-minute limit, cuts) \
         are invisible; {\"type\":\"end\"} ends the call's audio, answered by the last \
         phrases and turn_end",
         headers(("x-session-id" = String, description = "The session served, when the request named one"))),
        (status = 400, description = "Malformed parameters, not a websocket request, or \
         X-Session-Id and session_id differ", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 429, description = "Pool exhausted or speech service throttling", body = ErrorBody),
        (status = 502, description = "The speech service failed", body = ErrorBody),
        (status = 503, description = "Draining or speech service unavailable", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn stt(
    State(state): State<AppState>,
    peer: Peer,
    session_header: SessionHeader,
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
    let session = session_header.reconcile(params.session_id, "the session_id query parameter")?;
    let continuous = params.stream.unwrap_or_default() == StreamKind::Continuous;
    if continuous && options.stt_mode == RecognitionMode::Interactive {
        // Interactive recognition ends at the first phrase: it cannot carry a call.
        return Err(ApiError::bad_request(
            "stream=continuous needs the conversation or dictation mode (STT_MODE); this \
             service recognises in interactive mode",
        ));
    }
    let context = StreamContext {
        session,
        language,
        format: options.stt_format,
        mode: options.stt_mode,
        continuous,
    };
    if state.is_draining() {
        return Err(ApiError::draining());
    }
    let client = client_id(&state, &peer);
    check_session_cap(&state, &client, context.session.as_deref())?;
    // Counts as tracked work until the socket ends, so shutdown waits for it (the server's
    // graceful shutdown does not wait for upgraded connections).
    let token = state.tasks().token();
    let session = context.session.clone();
    let mut response = ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            let _token = token;
            run_stream(socket, state, client, context).await;
        });
    session_header::echo(response.headers_mut(), session.as_deref());
    Ok(response)
}

pub(super) async fn send_json<T: Serialize>(socket: &mut WebSocket, value: &T) -> Result<(), ()> {
    let text = serde_json::to_string(value).map_err(|_| ())?;
    socket.send(Message::text(text)).await.map_err(|_| ())
}

pub(super) async fn send_error(socket: &mut WebSocket, e: &ApiError) {
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

pub(super) fn is_end_message(text: &str) -> bool {
    let text = text.trim();
    text.eq_ignore_ascii_case("end")
        || serde_json::from_str::<ClientMessage>(text)
            .is_ok_and(|m| matches!(m.kind.as_str(), "end" | "end_of_audio" | "end_turn"))
}

/// What ended a wait for the next turn.
enum NextTurn {
    Audio(Bytes),
    Done,
    /// The stream must close with this code and reason.
    Close(u16, String),
}

/// The close a client's read error calls for: a protocol violation gets its own code so
/// the client learns what it did wrong; anything else (a reset, an abrupt end) means the
/// client is gone.
pub(super) fn violation(e: &axum::Error) -> Option<(u16, String)> {
    // axum does not expose the websocket library's error type, only its message.
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

async fn run_stream(
    mut socket: WebSocket,
    state: AppState,
    client: ClientId,
    context: StreamContext,
) {
    let limits = &state.options().limits;
    let (audio_idle, idle_close) = (limits.stt_audio_idle_timeout, limits.stt_idle_close_timeout);
    let stop = state.drain_token().child_token();
    let _registration = context
        .session
        .as_deref()
        .map(|s| state.streams().register(s, stop.clone()));
    let connected = ServerMessage::Connected {
        pool: STT_POOL,
        tier: None,
        session_id: context.session.as_deref(),
        language: &context.language,
    };
    if send_json(&mut socket, &connected).await.is_err() {
        return;
    }
    if context.continuous {
        let (code, reason) =
            super::stt_continuous::run(&mut socket, &state, &context, &stop, &client).await;
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = socket.send(Message::Close(Some(frame))).await;
        return;
    }
    let mut turn: u32 = 0;
    let mut close = (1000, "done".to_owned());
    'turns: loop {
        let audio = match wait_for_audio(&mut socket, &stop, idle_close).await {
            NextTurn::Audio(chunk) => chunk,
            NextTurn::Done => break,
            NextTurn::Close(code, reason) => {
                close = (code, reason);
                break;
            }
        };
        // The connection is taken only now that there is audio to recognise, and given
        // back at the end of the turn.
        let (mut guard, waited) =
            match acquire(&state, &state.pools().stt, context.session.as_deref()).await {
                Ok(acquired) => acquired,
                Err(e) => {
                    send_error(&mut socket, &e).await;
                    close = (1013, no_connection_reason(&e));
                    break;
                }
            };
        if let Some(id) = &context.session {
            state.session_cap().record(&client, id);
        }
        turn += 1;
        let mut request = context.request();
        let first_request_id = request.request_id.clone();
        let start = ServerMessage::TurnStart {
            turn,
            tier: guard.tier(),
            acquire_ms: waited.as_secs_f64() * 1000.0,
            request_id: first_request_id.as_str(),
        };
        if send_json(&mut socket, &start).await.is_err() {
            return;
        }
        let started = Instant::now();
        let mut queued = VecDeque::from([audio]);
        let mut audio_ended = false;
        let mut moves: u32 = 0;
        let (result, client_end) = loop {
            let request_id = request.request_id.clone();
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
            let attempt = TurnAudio {
                queued,
                ended: audio_ended,
            };
            let (result, client_end, unanswered) = run_turn(
                &mut socket,
                &mut **guard,
                request,
                attempt,
                &stop,
                audio_idle,
            )
            .instrument(span.clone())
            .await;
            // The connection was lost (an idle or age close crossing the turn's first
            // audio, a drop, a dead socket) before the client was sent anything: the turn
            // moves to a fresh connection with the audio it was sent, so the caller's
            // words are not lost (see `moves_to_a_fresh_connection` for how many times).
            let movable = match (&result, &client_end, unanswered) {
                (Err(e), None, Some(audio))
                    if moves_to_a_fresh_connection(e, moves) && !stop.is_cancelled() =>
                {
                    Some((e.clone(), audio))
                }
                _ => None,
            };
            let Some((e, audio)) = movable else {
                break (result, client_end);
            };
            state.metrics().record_upstream_error(STT_POOL, e.class());
            state.metrics().record_turn_move(STT_POOL);
            tracing::info!(parent: &span, error = %e, "the connection was lost before answering; moving the turn to a fresh connection");
            guard.discard();
            moves += 1;
            guard = match acquire(&state, &state.pools().stt, context.session.as_deref()).await {
                Ok((g, _)) => g,
                Err(e) => {
                    send_error(&mut socket, &e).await;
                    close = (1013, no_connection_reason(&e));
                    break 'turns;
                }
            };
            request = context.request();
            queued = audio.queued;
            audio_ended = audio.ended;
        };
        let client_gone = client_end.is_some();
        match result {
            Ok(()) => {
                tracing::debug!(request_id = %first_request_id, turn, moves, elapsed = ?started.elapsed(), "recognition turn done");
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
                    tracing::warn!(pool = STT_POOL, request_id = %first_request_id, class = %e.class(), error = %e, "recognition failed");
                    if !client_gone {
                        send_error(&mut socket, &ApiError::from_speech(&e)).await;
                    }
                }
            }
        }
        match client_end {
            None => {}
            Some(None) => return,
            Some(Some(violation)) => {
                close = violation;
                break;
            }
        }
    }
    if stop.is_cancelled() {
        close = if state.is_draining() {
            (1001, "server shutting down".to_owned())
        } else {
            (1000, "session ended".to_owned())
        };
    }
    let frame = CloseFrame {
        code: close.0,
        reason: close.1.into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

/// Waits for the first audio of the next turn; `Done` when the client closes or the stream
/// is stopped (drain or session deleted), `Close` after `idle_close` without any message
/// or on a protocol violation.
async fn wait_for_audio(
    socket: &mut WebSocket,
    stop: &CancellationToken,
    idle_close: Duration,
) -> NextTurn {
    let idle = tokio::time::sleep(idle_close);
    tokio::pin!(idle);
    loop {
        let msg = tokio::select! {
            // Biased so a stopped stream does not start another turn because audio was
            // also ready.
            biased;
            () = stop.cancelled() => return NextTurn::Done,
            () = &mut idle => {
                return NextTurn::Close(
                    1001,
                    format!("closed after {idle_close:?} without audio (STT_IDLE_CLOSE_TIMEOUT)"),
                );
            }
            msg = socket.recv() => msg,
        };
        idle.as_mut()
            .reset(tokio::time::Instant::now() + idle_close);
        match msg {
            Some(Ok(Message::Binary(b))) if !b.is_empty() => return NextTurn::Audio(b),
            Some(Ok(Message::Text(t))) if !is_end_message(&t) => {
                let e = ApiError::bad_request(
                    "text messages other than {\"type\":\"end\"} are not understood; send audio as binary frames",
                );
                send_error(socket, &e).await;
            }
            Some(Err(e)) => {
                return match violation(&e) {
                    Some((code, reason)) => NextTurn::Close(code, reason),
                    None => NextTurn::Done,
                };
            }
            Some(Ok(Message::Close(_))) | None => return NextTurn::Done,
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
    AudioIdle,
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

/// How a client left a turn: `None` still there; `Some(None)` gone; `Some(Some(close))`
/// broke the protocol, the stream must close with that code and reason.
type ClientEnd = Option<Option<(u16, String)>>;

/// The audio a turn attempt starts with: chunks to forward before reading more from the
/// client, and whether the client had already ended the turn's audio.
struct TurnAudio {
    queued: VecDeque<Bytes>,
    ended: bool,
}

/// Audio kept for a move to a fresh connection is bounded: 5 s of 16 kHz 16-bit mono
/// (160 KB per turn). An idle or age close crosses a turn's start within a round trip or
/// so; a connection that has taken 5 s of audio without a close is not that case (a
/// silent caller gets no event from it for a while), and keeping more would let silent
/// sockets hold memory for nothing.
const UNANSWERED_AUDIO_LIMIT: usize = 5 * 32_000;

/// Runs one recognition turn: forwards client audio to the connection and events back,
/// until the backend ends the turn. Returns the turn's result, how the client left, if
/// it did, and, while the client has been sent no event, the audio the connection was
/// given (so a turn whose connection closed before answering can move to another one).
/// Never abandons the backend's future mid-turn (that would leave the connection in an
/// unknown state); once the client is gone, silent for `audio_idle`, or the stream is
/// stopped, it ends the audio and lets the turn finish with what was said.
async fn run_turn(
    socket: &mut WebSocket,
    conn: &mut dyn Recognizer,
    request: RecognitionRequest,
    audio: TurnAudio,
    stop: &CancellationToken,
    audio_idle: Duration,
) -> (Result<(), SpeechError>, ClientEnd, Option<TurnAudio>) {
    let (audio_tx, audio_rx) = mpsc::channel(TURN_BUFFER);
    let (events_tx, mut events_rx) = mpsc::channel::<RecognitionEvent>(TURN_BUFFER);
    let TurnAudio {
        mut queued,
        ended: ended_before,
    } = audio;
    let mut audio_tx = Some(audio_tx);
    // What the connection was given, while the client has been sent nothing.
    let mut unanswered = Some(TurnAudio {
        queued: VecDeque::new(),
        ended: false,
    });
    let mut unanswered_bytes = 0usize;
    let mut client_end: ClientEnd = None;
    let mut result = None;
    let mut events_open = true;
    let idle = tokio::time::sleep(audio_idle);
    tokio::pin!(idle);
    let recognize = conn.recognize(request, audio_rx, events_tx);
    tokio::pin!(recognize);
    while result.is_none() || events_open {
        if ended_before && queued.is_empty() && audio_tx.is_some() {
            // A moved turn whose client had already ended its audio: end it here too,
            // once everything it sent has been forwarded.
            audio_tx = None;
            if let Some(u) = unanswered.as_mut() {
                u.ended = true;
            }
        }
        // The branches only produce a step; acting on it happens after the select, once
        // no branch future borrows the channels or the socket any more.
        let step = tokio::select! {
            r = &mut recognize, if result.is_none() => Step::Finished(r),
            ev = events_rx.recv(), if events_open => Step::Event(ev),
            permit = reserve(&audio_tx), if !queued.is_empty() => {
                if let (Ok(permit), Some(chunk)) = (permit, queued.pop_front()) {
                    if let Some(u) = unanswered.as_mut() {
                        unanswered_bytes += chunk.len();
                        if unanswered_bytes > UNANSWERED_AUDIO_LIMIT {
                            unanswered = None;
                        } else {
                            u.queued.push_back(chunk.clone());
                        }
                    }
                    permit.send(chunk);
                }
                Step::Forwarded
            }
            msg = socket.recv(), if queued.is_empty() && audio_tx.is_some() && client_end.is_none() => {
                Step::Client(msg)
            }
            () = stop.cancelled(), if audio_tx.is_some() => Step::Stop,
            () = &mut idle, if audio_tx.is_some() => Step::AudioIdle,
        };
        match step {
            Step::Finished(r) => result = Some(r),
            Step::Event(Some(ev)) => {
                unanswered = None;
                if client_end.is_none() && send_json(socket, &ev).await.is_err() {
                    // Keep draining events so the backend is never blocked on us.
                    client_end = Some(None);
                    audio_tx = None;
                    queued.clear();
                }
            }
            Step::Event(None) => events_open = false,
            Step::Forwarded => {}
            Step::Client(Some(Ok(Message::Binary(b)))) => {
                idle.as_mut()
                    .reset(tokio::time::Instant::now() + audio_idle);
                if !b.is_empty() {
                    queued.push_back(b);
                }
            }
            Step::Client(Some(Ok(Message::Text(t)))) => {
                if is_end_message(&t) {
                    audio_tx = None;
                    if let Some(u) = unanswered.as_mut() {
                        u.ended = true;
                    }
                }
            }
            Step::Client(Some(Err(e))) => {
                client_end = Some(violation(&e));
                audio_tx = None;
            }
            Step::Client(Some(Ok(Message::Close(_))) | None) => {
                client_end = Some(None);
                audio_tx = None;
            }
            Step::Client(Some(Ok(_))) => {}
            Step::Stop | Step::AudioIdle => {
                // Draining, session deleted, or the client stopped sending audio: end the
                // audio so the turn finishes with what was said so far and its
                // connection goes back to the pool.
                audio_tx = None;
                queued.clear();
                if let Some(u) = unanswered.as_mut() {
                    u.ended = true;
                }
            }
        }
    }
    let result = result.unwrap_or(Err(SpeechError::Cancelled));
    if let Some(u) = unanswered.as_mut() {
        // Audio the client sent that the connection never got: a move forwards it too.
        u.queued.extend(queued);
        u.ended |= ended_before;
    }
    (result, client_end, unanswered)
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
