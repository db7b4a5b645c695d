//! `POST /api/v1/tts`: text or SSML in, audio streamed out; `DELETE /api/v1/tts/{request_id}`
//! stops a turn whose audio is still streaming (barge-in).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pool_core::Tier;
use serde::{Deserialize, Serialize};
use speech_core::{
    AudioFormat, RequestId, SpeechError, StopSignal, SynthesisEvent, SynthesisRequest,
    SynthesisSummary,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::session_header::{self, SessionHeader};
use super::{
    Peer, REQUEST_ID_HEADER, SERVER_TIMING_HEADER, TIER_HEADER, acquire, acquire_timing,
    check_session_cap, client_id, keep_after_error, moves_to_a_fresh_connection, require_json,
    validate_session_id,
};
use crate::error::{ApiError, ErrorBody};
use crate::limits::LogLimiter;
use crate::state::{AppState, TTS_POOL};

/// The JSON body of `POST /api/v1/tts`. Exactly one of `text` and `ssml`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtsBody {
    /// Plain text to speak with `voice`.
    pub text: Option<String>,
    /// A complete SSML document (names its own voice).
    pub ssml: Option<String>,
    /// Voice short name; defaults to `TTS_DEFAULT_VOICE` for text.
    pub voice: Option<String>,
    /// Azure output format name; defaults to `TTS_DEFAULT_FORMAT`.
    pub format: Option<String>,
    /// The call this turn belongs to: its turns share one dedicated connection. May be
    /// sent instead (or as well, then equal) as the `X-Session-Id` header, which a load
    /// balancer can hash on.
    pub session_id: Option<String>,
}

/// Audio events buffered between the backend and the HTTP body. Small: the point is to
/// pass chunks on as they arrive, and backpressure from a slow client should reach the
/// backend rather than pile up here.
const EVENT_BUFFER: usize = 16;

/// Turns the body into a validated synthesis request and optional session id.
fn build_request(
    state: &AppState,
    body: &[u8],
) -> Result<(SynthesisRequest, Option<String>), ApiError> {
    let body: TtsBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    let options = state.options();
    let format = match body.format.as_deref() {
        None => options.default_format,
        Some(f) => f
            .parse::<AudioFormat>()
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let request = match (body.text, body.ssml) {
        (Some(text), None) => {
            let voice = body.voice.unwrap_or_else(|| options.default_voice.clone());
            SynthesisRequest::text(text, voice, format)
        }
        (None, Some(ssml)) => {
            let mut r = SynthesisRequest::ssml(ssml, format);
            r.voice = body.voice.unwrap_or_default();
            r
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either \"text\" or \"ssml\", not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "the body needs \"text\" (with an optional \"voice\") or \"ssml\"",
            ));
        }
    };
    // The one validation every backend applies too: empty text, bad voice syntax, SSML
    // over 64 KB, characters XML forbids. Checked here so a bad request costs no connection.
    request.validate().map_err(|e| ApiError::from_speech(&e))?;
    if let Some(id) = &body.session_id {
        validate_session_id(id)?;
    }
    Ok((request, body.session_id))
}

/// `POST /api/v1/tts`.
///
/// Answers with the audio as a chunked stream in the requested format. Headers (status,
/// `Content-Type`, `x-pool-tier`, `Server-Timing: acquire;dur=<ms>`) are sent with the first
/// audio chunk, so a failure before any audio still gets a proper error status; a failure
/// after it ends the stream early.
///
/// A turn whose connection dies before any audio (closed, dropped, a transient server
/// error) is retried once on a fresh connection: synthesis has no side effects and the
/// caller has received nothing yet, so the retry is invisible but for the time it takes.
/// An idle or age close (1000/1001) is retried up to three times, since the connections
/// warmed together with the closed one idle out together.
/// Throttling is not retried (that would add load exactly when the service asks for less),
/// nor is anything after the first audio byte.
///
/// Barge-in: a client that hangs up mid-stream, or cancels the turn with
/// `DELETE /api/v1/tts/{request_id}` (the id is in `x-request-id`), ends the turn without
/// losing its connection: over the websocket transport the speech service is told to stop
/// (`synthesis.control`), otherwise the rest of the turn is read and dropped, bounded by
/// `TTS_DRAIN_TIMEOUT` and `TTS_DRAIN_MAX_BYTES`. The session's next turn is DEDICATED.
#[utoipa::path(
    post,
    path = "/api/v1/tts",
    tag = "speech",
    request_body = TtsBody,
    params(
        ("X-Session-Id" = Option<String>, Header,
         description = "The call's session id, for a load balancer to hash on; same rules as \
         the body's session_id, which it may replace (when both are sent they must be equal)"),
    ),
    responses(
        (status = 200, description = "The audio, streamed in the requested format",
         content_type = "application/octet-stream",
         headers(
             ("x-pool-tier" = String, description = "dedicated, warm or cold"),
             ("x-request-id" = String, description = "The turn's id (32 hex digits): \
              `DELETE /api/v1/tts/{request_id}` stops it"),
             ("x-session-id" = String, description = "The session served, when the request named one"),
         )),
        (status = 400, description = "Malformed request, or X-Session-Id and session_id differ", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 409, description = "The session is in use by another request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 429, description = "Pool exhausted or speech service throttling", body = ErrorBody),
        (status = 502, description = "The speech service failed", body = ErrorBody),
        (status = 503, description = "Draining or speech service unavailable", body = ErrorBody),
        (status = 504, description = "The speech service timed out", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn tts(
    State(state): State<AppState>,
    peer: Peer,
    session_header: SessionHeader,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let body = body.map_err(|r| ApiError::from_body_rejection(&r))?;
    let started = Instant::now();
    let (request, session) = build_request(&state, &body)?;
    let session = session_header.reconcile(session, "the body's session_id")?;
    serve_turn(&state, &peer, request, session, started).await
}

/// Runs a validated synthesis turn from the TTS pool and answers with its audio as a
/// chunked stream: the common part of `POST /api/v1/tts` and Azure's REST synthesis
/// (`POST /cognitiveservices/v1`, `azure_proxy::rest`), so both have the same tiers,
/// session affinity, retry before audio, barge-in, metrics and headers. `started` is when
/// the request arrived (time to first audio counts from it).
pub(crate) async fn serve_turn(
    state: &AppState,
    peer: &Peer,
    request: SynthesisRequest,
    session: Option<String>,
    started: Instant,
) -> Result<Response, ApiError> {
    let client = client_id(state, peer);
    check_session_cap(state, &client, session.as_deref())?;
    let format = request.format;

    let mut waited = Duration::ZERO;
    let mut retries: u32 = 0;
    let mut attempt = request;
    let turn = loop {
        // Kept for a retry; the text is at most 64 KB, cheap next to a network turn.
        let mut retry = attempt.clone();
        match start_turn(state, attempt, session.as_deref(), &mut waited).await {
            Ok(turn) => break turn,
            Err(TurnFailure::Upstream(e)) if moves_to_a_fresh_connection(&e, retries) => {
                record_failure(state, &e);
                tracing::info!(
                    request_id = %retry.request_id,
                    session = session.as_deref(),
                    error = %e,
                    "the connection failed before any audio; retrying on a fresh connection"
                );
                state.metrics().record_turn_move(TTS_POOL);
                // Azure refuses a reused request id.
                retry.request_id = RequestId::new();
                retries += 1;
                attempt = retry;
            }
            Err(failure) => return Err(failure.into_api_error(state)),
        }
    };
    state
        .metrics()
        .record_first_audio(turn.tier, started.elapsed());
    if let Some(id) = &session {
        state.session_cap().record(&client, id);
    }

    let StartedTurn {
        first,
        events,
        done,
        tier,
        request_id,
    } = turn;
    let stream = futures_util::stream::unfold(
        BodyState {
            first: Some(first),
            events,
            done: Some(done),
            state: state.clone(),
        },
        next_chunk,
    );
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.mime_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(TIER_HEADER, HeaderValue::from_static(tier.as_str()));
    headers.insert(SERVER_TIMING_HEADER, acquire_timing(waited));
    if let Ok(v) = HeaderValue::from_str(request_id.as_str()) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    session_header::echo(headers, session.as_deref());
    Ok(response)
}

/// A turn that has produced its first audio.
struct StartedTurn {
    first: Bytes,
    events: mpsc::Receiver<SynthesisEvent>,
    done: oneshot::Receiver<TurnOutcome>,
    tier: Tier,
    request_id: RequestId,
}

/// Why a turn produced no audio.
enum TurnFailure {
    /// No connection (pool exhausted, backend refusing connects...): already an HTTP error.
    Acquire(ApiError),
    /// The speech service failed the turn.
    Upstream(SpeechError),
    /// The turn succeeded without a single audio byte.
    NoAudio,
    /// The synthesis task ended without a result (it panicked).
    TaskLost,
}

impl TurnFailure {
    fn into_api_error(self, state: &AppState) -> ApiError {
        match self {
            Self::Acquire(e) => e,
            Self::Upstream(e) => {
                record_failure(state, &e);
                ApiError::from_speech(&e)
            }
            Self::NoAudio => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_no_audio",
                "the speech service ended the turn without audio",
            ),
            Self::TaskLost => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the synthesis task ended unexpectedly",
            ),
        }
    }
}

/// Takes a connection and runs the turn until its first audio chunk. `waited` accumulates
/// the time spent acquiring, across a retry.
async fn start_turn(
    state: &AppState,
    request: SynthesisRequest,
    session: Option<&str>,
    waited: &mut Duration,
) -> Result<StartedTurn, TurnFailure> {
    let request_id = request.request_id.clone();
    let (mut guard, acquire_time) = acquire(state, &state.pools().tts, session)
        .await
        .map_err(TurnFailure::Acquire)?;
    *waited += acquire_time;
    let tier = guard.tier();
    // Everything the turn logs, here and in the backend, carries the request id, session,
    // pool and tier, so one slow turn can be followed through the logs.
    let span = tracing::info_span!(
        "tts_turn",
        request_id = %request_id,
        session,
        pool = TTS_POOL,
        tier = %tier
    );
    tracing::debug!(parent: &span, format = %request.format, "synthesis starts");

    let (events_tx, mut events) = mpsc::channel(EVENT_BUFFER);
    let (done_tx, done) = oneshot::channel();
    let bounds = RelayBounds::from_limits(&state.options().limits);
    let stop = StopSignal::new();
    // Registered for the turn's whole life (the task owns the registration), so a cancel
    // finds it until its connection is back in the pool.
    let registration = TurnRegistry::register(state, &request_id, session, stop.clone());
    // The turn runs in its own task, tracked so shutdown waits for it, and owns the
    // connection. The response body only forwards what the relay passes on. When the
    // client hangs up (hyper drops the body, and with it the relay's receiver), stops
    // reading, or cancels, the relay fires `stop`: the backend stops the synthesis
    // through its protocol where it can, and the relay reads what is left of the turn
    // (bounded), so the connection goes back to the session ready for the next turn.
    state.tasks().spawn(
        async move {
            let (upstream_tx, upstream_rx) = mpsc::channel(EVENT_BUFFER);
            let (result, relayed) = tokio::join!(
                guard.synthesize_stoppable(request, upstream_tx, stop.clone()),
                relay_turn(upstream_rx, events_tx, bounds, &stop)
            );
            // The turn is over: from here a cancel answers 404, even before the session's
            // next turn can take the connection.
            drop(registration);
            match &result {
                Err(e) if !keep_after_error(e.class()) => guard.discard(),
                _ => drop(guard),
            }
            relayed.log(&result);
            let outcome = match relayed {
                Relayed::Delivered => TurnOutcome::Done(result),
                Relayed::Stopped { cause, .. } => TurnOutcome::CutOff(cause),
            };
            let _ = done_tx.send(outcome);
        }
        .instrument(span),
    );

    loop {
        match events.recv().await {
            Some(SynthesisEvent::Audio(first)) if !first.is_empty() => {
                return Ok(StartedTurn {
                    first,
                    events,
                    done,
                    tier,
                    request_id,
                });
            }
            Some(_) => continue,
            // The turn ended before any audio: its outcome says why.
            None => {
                return Err(match done.await {
                    Ok(TurnOutcome::Done(Err(e))) => TurnFailure::Upstream(e),
                    Ok(TurnOutcome::Done(Ok(_))) => TurnFailure::NoAudio,
                    // Nobody is waiting for a cut-off turn's answer any more.
                    Ok(TurnOutcome::CutOff(_)) | Err(_) => TurnFailure::TaskLost,
                });
            }
        }
    }
}

struct BodyState {
    first: Option<Bytes>,
    events: mpsc::Receiver<SynthesisEvent>,
    done: Option<oneshot::Receiver<TurnOutcome>>,
    state: AppState,
}

/// The next piece of the response body: audio until the turn ends; then nothing on
/// success, or an error that aborts the body, so a client never mistakes a cut-off stream
/// for a complete one.
async fn next_chunk(mut st: BodyState) -> Option<(Result<Bytes, std::io::Error>, BodyState)> {
    if let Some(first) = st.first.take() {
        return Some((Ok(first), st));
    }
    loop {
        match st.events.recv().await {
            Some(SynthesisEvent::Audio(chunk)) => return Some((Ok(chunk), st)),
            Some(_) => continue,
            None => break,
        }
    }
    let done = st.done.take()?;
    let error = match done.await {
        Ok(TurnOutcome::Done(Ok(_))) => return None,
        Ok(TurnOutcome::Done(Err(e))) => {
            record_failure(&st.state, &e);
            std::io::Error::other(format!("synthesis failed mid-stream: {e}"))
        }
        Ok(TurnOutcome::CutOff(cause)) => std::io::Error::other(cause.to_string()),
        Err(_) => std::io::Error::other("the synthesis task ended unexpectedly"),
    };
    Some((Err(error), st))
}

/// How a turn ended, as the response body sees it.
enum TurnOutcome {
    /// The client received everything the backend produced; the backend's result.
    Done(Result<SynthesisSummary, SpeechError>),
    /// The client stopped reading or hung up before the end: the body must not look
    /// complete.
    CutOff(StopCause),
}

/// Why a relay stopped passing events to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopCause {
    /// The client accepted nothing for the write timeout.
    Stalled(Duration),
    /// The client went away (hung up, or barged in and dropped the stream).
    Gone,
    /// The turn was cancelled with `DELETE /api/v1/tts/{request_id}`.
    Cancelled,
}

impl std::fmt::Display for StopCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stalled(d) => write!(
                f,
                "the client read no audio for {d:?} (HTTP_WRITE_TIMEOUT); cut off"
            ),
            Self::Gone => f.write_str("the client went away mid-stream"),
            Self::Cancelled => f.write_str("the turn was cancelled (DELETE /api/v1/tts/{id})"),
        }
    }
}

/// Bounds of a relay: how long the client may stall, and how much of an abandoned turn
/// is drained from upstream to keep its connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RelayBounds {
    pub(crate) write_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) drain_max_bytes: usize,
}

impl RelayBounds {
    pub(crate) fn from_limits(limits: &crate::limits::Limits) -> Self {
        Self {
            write_timeout: limits.http_write_timeout,
            drain_timeout: limits.tts_drain_timeout,
            drain_max_bytes: limits.tts_drain_max_bytes,
        }
    }
}

/// What a relay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relayed {
    /// Everything reached the client.
    Delivered,
    /// The client stopped taking events; the rest of the turn was read and dropped
    /// (`drained`), or the drain hit its bound and upstream was abandoned.
    Stopped {
        cause: StopCause,
        drained: bool,
        drained_bytes: usize,
    },
}

impl Relayed {
    fn log(&self, result: &Result<SynthesisSummary, SpeechError>) {
        static STOPPED: LogLimiter = LogLimiter::new(Duration::from_secs(1));
        let Self::Stopped {
            cause,
            drained,
            drained_bytes,
        } = *self
        else {
            return;
        };
        let Some(held_back) = STOPPED.admit() else {
            return;
        };
        let kept = drained && result.is_ok();
        tracing::info!(
            pool = TTS_POOL,
            %cause,
            drained_bytes,
            connection_kept = kept,
            held_back,
            "a synthesis stream stopped before its end; the turn was {}",
            if drained {
                "stopped and what was left of it drained"
            } else {
                "abandoned (drain bound reached)"
            }
        );
    }
}

/// Passes a turn's events from the backend (`upstream`) to the client (`downstream`).
///
/// When the client stops taking events (no room for `write_timeout`), goes away (the
/// receiver is dropped: a hang-up, a barge-in), or the turn is cancelled (`stop` fired
/// by `DELETE /api/v1/tts/{request_id}`), the relay stops forwarding and finishes the turn
/// instead. It fires `stop`, so a backend that can stop the synthesis through its
/// protocol does (Azure's websocket: `synthesis.control`), and reads and drops what is
/// left of the turn, at most `drain_timeout` and `drain_max_bytes` of audio, so the
/// backend sees a normal turn end and its connection stays reusable (Azure's websocket
/// is ready only if no turn was abandoned midway). Past either bound it drops
/// `upstream`, which makes the backend abandon the turn (and its connection be replaced).
pub(crate) async fn relay_turn(
    mut upstream: mpsc::Receiver<SynthesisEvent>,
    downstream: mpsc::Sender<SynthesisEvent>,
    bounds: RelayBounds,
    stop: &StopSignal,
) -> Relayed {
    let cause = loop {
        // Watching the receiver too notices a hang-up while the backend is between
        // chunks, so the stop goes out at once rather than with the next chunk.
        let event = tokio::select! {
            event = upstream.recv() => match event {
                Some(event) => event,
                None => return Relayed::Delivered,
            },
            () = downstream.closed() => break StopCause::Gone,
            () = stop.stopped() => break StopCause::Cancelled,
        };
        let sent = tokio::select! {
            sent = tokio::time::timeout(bounds.write_timeout, downstream.send(event)) => sent,
            () = stop.stopped() => break StopCause::Cancelled,
        };
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break StopCause::Gone,
            Err(_) => break StopCause::Stalled(bounds.write_timeout),
        }
    };
    stop.stop();
    // The client gets no more: ending its channel lets the body finish (as cut off).
    drop(downstream);
    let deadline = tokio::time::Instant::now() + bounds.drain_timeout;
    let mut drained_bytes = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, upstream.recv()).await {
            Ok(Some(SynthesisEvent::Audio(chunk))) => {
                drained_bytes = drained_bytes.saturating_add(chunk.len());
                if drained_bytes > bounds.drain_max_bytes {
                    break;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                return Relayed::Stopped {
                    cause,
                    drained: true,
                    drained_bytes,
                };
            }
            Err(_) => break,
        }
    }
    Relayed::Stopped {
        cause,
        drained: false,
        drained_bytes,
    }
}

/// The TTS turns in flight, by request id (lowercase), with their sessions, so that
/// `DELETE /api/v1/tts/{request_id}` can stop one and `DELETE /api/v1/sessions/{id}` can stop
/// a call's turn at once instead of waiting for it to finish.
#[derive(Debug, Default)]
pub(crate) struct TurnRegistry {
    turns: Mutex<HashMap<String, RegisteredTurn>>,
}

#[derive(Debug)]
struct RegisteredTurn {
    stop: StopSignal,
    session: Option<String>,
}

impl TurnRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RegisteredTurn>> {
        // Only plain map operations run under this lock; a poisoned map is still valid.
        self.turns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers the turn `id` of `state` (of `session`, if any), stopped by `stop`, until
    /// the registration drops.
    fn register(
        state: &AppState,
        id: &RequestId,
        session: Option<&str>,
        stop: StopSignal,
    ) -> TurnRegistration {
        let key = id.as_str().to_ascii_lowercase();
        let turn = RegisteredTurn {
            stop,
            session: session.map(str::to_owned),
        };
        state.tts_turns().lock().insert(key.clone(), turn);
        TurnRegistration {
            state: state.clone(),
            key,
        }
    }

    /// Stops the turn `id`: `None` when no such turn is in flight, else whether this call
    /// was the one to stop it.
    fn stop(&self, id: &RequestId) -> Option<bool> {
        let stop = self
            .lock()
            .get(&id.as_str().to_ascii_lowercase())
            .map(|turn| turn.stop.clone())?;
        Some(stop.stop())
    }

    /// Stops every turn of `session` in flight (the call ended: nobody listens any more);
    /// returns how many this call stopped. Each ends as a cancelled turn does, keeping its
    /// connection, so the session's release that follows does not wait for it.
    pub(crate) fn stop_session(&self, session: &str) -> usize {
        let stops: Vec<StopSignal> = self
            .lock()
            .values()
            .filter(|turn| turn.session.as_deref() == Some(session))
            .map(|turn| turn.stop.clone())
            .collect();
        stops.into_iter().filter(|stop| stop.stop()).count()
    }

    fn remove(&self, key: &str) {
        self.lock().remove(key);
    }
}

/// A turn's entry in the [`TurnRegistry`]; removes it when dropped (with the turn's task,
/// which it moves into, hence the owned state rather than a borrow).
struct TurnRegistration {
    state: AppState,
    key: String,
}

impl Drop for TurnRegistration {
    fn drop(&mut self) {
        self.state.tts_turns().remove(&self.key);
    }
}

/// What `DELETE /api/v1/tts/{request_id}` did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TtsCancelled {
    /// The turn.
    pub request_id: String,
    /// Whether the turn had already been told to stop (an earlier cancel, or its client
    /// hung up) and is finishing.
    pub already_stopping: bool,
}

/// `DELETE /api/v1/tts/{request_id}`: stops a TTS turn whose audio is still streaming,
/// for a caller that barged in. The stream ends early (cut off, not complete); the turn's
/// connection is kept: the speech service is told to stop where the transport allows it
/// (websocket), otherwise what is left of the turn is drained (bounded). Answers 202 at
/// once (the turn ends shortly after), 404 for a turn that is unknown or already over.
#[utoipa::path(
    delete,
    path = "/api/v1/tts/{request_id}",
    tag = "speech",
    params(("request_id" = String, Path,
        description = "The turn's id, from the `x-request-id` header of its response")),
    responses(
        (status = 202, description = "The turn is being stopped", body = TtsCancelled),
        (status = 400, description = "Malformed request id", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No such turn in flight", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn cancel_tts(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TtsCancelled>), ApiError> {
    let request_id: RequestId = id
        .parse()
        .map_err(|e: speech_core::InvalidRequestId| ApiError::bad_request(e.to_string()))?;
    let Some(first) = state.tts_turns().stop(&request_id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_turn",
            format!("no TTS turn {request_id} is in flight (unknown, or already over)"),
        ));
    };
    tracing::info!(request_id = %request_id, already_stopping = !first, "TTS turn cancelled");
    Ok((
        StatusCode::ACCEPTED,
        Json(TtsCancelled {
            request_id: request_id.to_string(),
            already_stopping: !first,
        }),
    ))
}

fn record_failure(state: &AppState, e: &SpeechError) {
    state.metrics().record_upstream_error(TTS_POOL, e.class());
    tracing::warn!(pool = TTS_POOL, class = %e.class(), error = %e, "synthesis failed");
}

#[cfg(test)]
mod tests {
    use speech_core::SynthesisInput;

    use super::*;

    #[test]
    fn input_kinds() {
        let state = crate::state::unit_test_state();
        let (r, s) = build_request(&state, br#"{"text":"hi","session_id":"c-1"}"#).unwrap();
        assert!(matches!(r.input, SynthesisInput::Text(_)));
        assert_eq!(r.voice, state.options().default_voice);
        assert_eq!(s.as_deref(), Some("c-1"));
        let (r, _) = build_request(
            &state,
            br#"{"ssml":"<speak version='1.0'>hi</speak>","format":"audio-24khz-48kbitrate-mono-mp3"}"#,
        )
        .unwrap();
        assert!(matches!(r.input, SynthesisInput::Ssml(_)));
        assert_eq!(r.format.mime_type(), "audio/mpeg");
        for bad in [
            &br#"{"text":"hi","ssml":"<speak/>"}"#[..],
            br#"{}"#,
            br#"{"text":"   "}"#,
            br#"{"text":"hi","format":"wav"}"#,
            br#"{"text":"hi","voice":"en US"}"#,
            br#"{"text":"hi","session_id":"a b"}"#,
            br#"{"text":"hi","colour":"red"}"#,
            br#"{"text":"#,
        ] {
            let e = build_request(&state, bad).unwrap_err();
            assert_eq!(
                e.status,
                StatusCode::BAD_REQUEST,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
