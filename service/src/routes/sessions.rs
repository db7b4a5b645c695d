//! `DELETE /api/v1/sessions/{id}`: a call ended.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::session_header::{self, SessionHeader};
use super::validate_session_id;
use crate::error::{ApiError, ErrorBody};
use crate::state::{AppState, STT_POOL, TTS_POOL, TTS_STREAM_POOL};

/// What a release did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Released {
    /// The session.
    pub session_id: String,
    /// Per pool: whether the session held a connection there.
    #[schema(value_type = std::collections::BTreeMap<String, bool>)]
    pub released: std::collections::BTreeMap<&'static str, bool>,
    /// Open STT streams (and text-streaming TTS sockets) of the session that were ended.
    pub streams_closed: usize,
    /// `POST /api/v1/tts` turns of the session that were still speaking and were stopped.
    pub tts_turns_stopped: usize,
}

/// `DELETE /api/v1/sessions/{id}`: ends the session's open STT streams (after their
/// current turn) and stops its TTS turns still speaking (the call is over: as a barge-in,
/// keeping their connections), then gives its TTS and STT connections back to the warm
/// sets. 404 when no pool knows the session.
///
/// Behind a load balancer that hashes on `X-Session-Id`, send the id in that header too:
/// the path is not what the balancer hashes, and without the header this request may
/// reach a replica that does not hold the session (a 404 there, the connections left to
/// their session expiry on the right one). A header naming another session is a 400.
#[utoipa::path(
    delete,
    path = "/api/v1/sessions/{id}",
    tag = "sessions",
    params(
        ("id" = String, Path, description = "The session id"),
        ("X-Session-Id" = Option<String>, Header,
         description = "The same session id, for a load balancer to hash on; must equal the path's"),
    ),
    responses(
        (status = 200, description = "The session's connections were released", body = Released,
         headers(("x-session-id" = String, description = "The session released"))),
        (status = 400, description = "Malformed session id, or X-Session-Id differs from the path", body = ErrorBody),
        (status = 401, description = "Missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No pool holds the session", body = ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn delete_session(
    State(state): State<AppState>,
    session_header: SessionHeader,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    validate_session_id(&id)?;
    let id = session_header
        .reconcile(Some(id), "the path's session id")?
        .unwrap_or_default();
    let streams_closed = state.streams().cancel(&id);
    let tts_turns_stopped = state.tts_turns().stop_session(&id);
    state.session_cap().forget(&id);
    // Run the releases in their own task: a release waits for the session's current user
    // and must not be abandoned half-way if this client hangs up.
    let task = {
        let state = state.clone();
        let id = id.clone();
        state.clone().tasks().spawn(async move {
            tokio::join!(
                state.pools().tts.release_for_session(&id),
                state.pools().stt.release_for_session(&id),
                state.pools().tts_stream.release_for_session(&id)
            )
        })
    };
    let (tts, stt, tts_stream) = task.await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "releasing the session failed unexpectedly",
        )
    })?;
    if !tts && !stt && !tts_stream && streams_closed == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_session",
            format!("no pool holds session {id}"),
        ));
    }
    tracing::info!(session = %id, tts, stt, tts_stream, streams_closed, tts_turns_stopped, "session released");
    let mut response = Json(Released {
        session_id: id.clone(),
        released: [
            (TTS_POOL, tts),
            (STT_POOL, stt),
            (TTS_STREAM_POOL, tts_stream),
        ]
        .into_iter()
        .collect(),
        streams_closed,
        tts_turns_stopped,
    })
    .into_response();
    session_header::echo(response.headers_mut(), Some(&id));
    Ok(response)
}
