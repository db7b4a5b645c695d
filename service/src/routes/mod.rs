//! The HTTP handlers.

pub mod dashboard;
pub mod health;
pub mod pools;
pub mod session_header;
pub mod sessions;
pub mod stt;
mod stt_continuous;
pub mod tts;
pub mod tts_stream;

use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::Extension;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use pool_core::{Manager, Pool, Pooled};
use speech_core::{ErrorClass, SpeechError};

use crate::error::ApiError;
use crate::limits::{ClientId, LogLimiter};
use crate::state::AppState;

/// Header naming the tier a request's connection came from (`dedicated`, `warm`, `cold`).
pub const TIER_HEADER: &str = "x-pool-tier";
/// Header echoing the request id sent to the speech service, for log correlation.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The standard `Server-Timing` header: `acquire;dur=<ms>` is how long this request
/// waited for its connection, so a client can tell pool wait from speech-service time.
pub const SERVER_TIMING_HEADER: &str = "server-timing";

/// The `Server-Timing` value for a connection acquire that took `waited`.
pub fn acquire_timing(waited: Duration) -> HeaderValue {
    let value = format!("acquire;dur={:.3}", waited.as_secs_f64() * 1000.0);
    // Digits, a dot and ASCII letters only: always a valid header value.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("acquire"))
}

/// Longest accepted session id.
pub const MAX_SESSION_ID_LEN: usize = 128;

/// Checks a client-supplied session id: 1 to 128 ASCII letters, digits, `-`, `_`, `.`,
/// `:`. Restrictive because ids end up in logs and pool keys.
pub fn validate_session_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_SESSION_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "session_id must be 1 to {MAX_SESSION_ID_LEN} characters: ASCII letters, digits, \
             '-', '_', '.' or ':'"
        )))
    }
}

/// Takes a connection from `pool`: the session's own when `session` is given, else any
/// warm one. Records the acquire latency by tier and maps failures to HTTP errors.
/// Returns the connection and how long the acquire took.
pub(crate) async fn acquire<M>(
    state: &AppState,
    pool: &Pool<M>,
    session: Option<&str>,
) -> Result<(Pooled<M>, Duration), ApiError>
where
    M: Manager<Error = SpeechError>,
{
    if state.is_draining() {
        return Err(ApiError::draining());
    }
    let started = Instant::now();
    let result = match session {
        Some(id) => {
            // A session's connection serves one request at a time; a second request of the
            // same session waits for it. Bounded so a stuck stream cannot hang callers.
            // Dropping the acquire future is safe: pool-core's acquires are cancellation-safe.
            match tokio::time::timeout(state.options().session_wait, pool.acquire_for_session(id))
                .await
            {
                Ok(result) => result,
                Err(_) => {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "session_busy",
                        format!(
                            "session {id} is in use by another request on {}; retry when it finishes",
                            pool.name()
                        ),
                    )
                    .with_retry_after(std::time::Duration::from_secs(1)));
                }
            }
        }
        None => pool.acquire().await,
    };
    match result {
        Ok(guard) => {
            let waited = started.elapsed();
            state
                .metrics()
                .record_acquire(pool.name(), guard.tier(), waited);
            Ok((guard, waited))
        }
        Err(e) => {
            let api = ApiError::from_pool(&e);
            if let pool_core::PoolError::Create(se) | pool_core::PoolError::Warm(se) = &e {
                state
                    .metrics()
                    .record_upstream_error(pool.name(), se.class());
            }
            // A flood of refused requests must not flood the log: one line a second, with
            // the count of those held back.
            static REFUSED: LogLimiter = LogLimiter::new(Duration::from_secs(1));
            if let Some(held_back) = REFUSED.admit() {
                tracing::warn!(pool = pool.name(), error = %e, status = api.status.as_u16(), held_back, "acquire failed");
            }
            Err(api)
        }
    }
}

/// The peer address axum was given for this connection, when served over a socket.
pub(crate) type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// Who a request comes from, for per-client limits: every holder of the API key is one
/// client when a key is configured, else each peer address is.
pub(crate) fn client_id(state: &AppState, peer: &Peer) -> ClientId {
    if state.options().api_key.is_some() {
        return ClientId::ApiKey;
    }
    match peer {
        Some(Extension(ConnectInfo(addr))) => ClientId::Peer(addr.ip()),
        None => ClientId::Unknown,
    }
}

/// Refuses a request that would open one session more than `MAX_SESSIONS_PER_CLIENT`
/// allows its client. Nothing is recorded; [`AppState::session_cap`]'s `record` is
/// called once the request was served, so refused requests leave no trace.
pub(crate) fn check_session_cap(
    state: &AppState,
    client: &ClientId,
    session: Option<&str>,
) -> Result<(), ApiError> {
    let Some(session) = session else {
        return Ok(());
    };
    state.session_cap().check(client, session).map_err(|e| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "session_limit",
            e.to_string(),
        )
        .with_retry_after(Duration::from_secs(1))
    })
}

/// Refuses a body that is not declared as JSON: 415, so that a browser's "simple"
/// cross-origin request (form or text/plain, sent without a preflight) cannot reach the
/// speech backend.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    match declared {
        Some(essence) if essence.eq_ignore_ascii_case("application/json") => Ok(()),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "the body must be JSON sent with Content-Type: application/json (got {})",
                other.map_or_else(
                    || "none".to_owned(),
                    |o| format!("{:?}", o.chars().take(60).collect::<String>())
                )
            ),
        )),
    }
}

/// How many times a turn that has produced nothing yet moves to a fresh connection after
/// its connection closed on its own (see [`closed_on_its_own`]). More than once because
/// connections warmed together idle out together: when Azure's idle close reaches one of
/// them, the replacement taken from the warm set may have its own close already on the
/// wire and not yet read (the SDK conformance run saw exactly that). Bounded so a server
/// that closes every connection at once costs the caller one error, not a loop.
pub(crate) const MAX_MOVES_AFTER_A_NORMAL_CLOSE: u32 = 3;

/// Whether a turn failed because its connection closed normally (1000 or 1001): Azure's
/// idle and age closes, which can cross a turn's first message on the wire. The request
/// was not the problem, and the connection was going away anyway.
pub(crate) fn closed_on_its_own(e: &SpeechError) -> bool {
    matches!(
        e,
        SpeechError::ConnectionClosed {
            code: Some(1000 | 1001),
            ..
        }
    )
}

/// Whether a turn that failed before its client got any output, after `moves` moves,
/// moves to a fresh connection: the connection, not the request, was the problem, and the
/// client has lost nothing yet. An idle or age close moves up to
/// [`MAX_MOVES_AFTER_A_NORMAL_CLOSE`] times; any other lost connection or transient error
/// (a drop, a dead socket) once. Throttling never: that would add load exactly when the
/// speech service asks for less.
pub(crate) fn moves_to_a_fresh_connection(e: &SpeechError, moves: u32) -> bool {
    if closed_on_its_own(e) {
        moves < MAX_MOVES_AFTER_A_NORMAL_CLOSE
    } else {
        moves == 0
            && matches!(
                e.class(),
                ErrorClass::ConnectionClosed | ErrorClass::Transient
            )
    }
}

/// The close reason (1013) of a websocket whose next turn could get no connection: names
/// why (`session_busy`, `pool_exhausted`, ...) for clients that only log the close.
pub(crate) fn no_connection_reason(e: &ApiError) -> String {
    format!("no speech connection available: {}", e.code)
}

/// Whether a connection that failed a turn with this error may serve another one. After
/// anything but a rejected request or a caller hanging up, its state is unknown: a fresh
/// connection costs one connect, a broken one would fail the next turn.
pub(crate) fn keep_after_error(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::BadRequest | ErrorClass::Cancelled)
}
