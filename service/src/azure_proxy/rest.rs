//! Azure's TTS REST synthesis, `POST /cognitiveservices/v1` (and `/tts/cognitiveservices/v1`,
//! the custom-domain form), served from the TTS pool.
//!
//! Request as Azure takes it (docs/protocol.md#tts-over-rest): the SSML document as the
//! body with `Content-Type: application/ssml+xml`, the output format in
//! `X-Microsoft-OutputFormat`, the credential as [`auth`] reads it. The answer
//! is the audio, streamed as the pooled connection produces it, with the format's
//! `Content-Type`; errors have Azure's statuses: 401 for a wrong key, 415 for another
//! content type, 400 for a missing or unknown output format or SSML that cannot be spoken,
//! 413 for a body over `MAX_BODY_BYTES`, 429 with `Retry-After` when throttled or the pool
//! is exhausted.
//!
//! The turn itself is `POST /api/v1/tts`'s (`routes::tts::serve_turn`): whatever
//! transport the backend uses, the same tiers, retry before the first audio, barge-in on
//! hang-up, metrics and `x-pool-tier` / `x-request-id` / `Server-Timing` headers. An
//! optional `X-Session-Id` header gives the REST calls of one call the same DEDICATED
//! connection, as for `/api/v1/tts`.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use speech_core::{AudioFormat, SynthesisRequest};

use super::auth;
use crate::error::ApiError;
use crate::routes::Peer;
use crate::routes::session_header::SessionHeader;
use crate::routes::tts::serve_turn;
use crate::state::AppState;

/// The header naming the output format.
pub const OUTPUT_FORMAT_HEADER: &str = "X-Microsoft-OutputFormat";

/// `POST /cognitiveservices/v1`.
pub async fn synthesize(
    State(state): State<AppState>,
    peer: Peer,
    session_header: Result<SessionHeader, ApiError>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    if let Err(r) = auth::check(&state, &headers, &query) {
        return r;
    }
    let result = async {
        let request = request(&headers, body)?;
        let session = session_header?.0;
        serve_turn(&state, &peer, request, session, started).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The synthesis request the REST call describes, refused as Azure refuses it.
fn request(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<SynthesisRequest, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    match content_type {
        Some(ct) if ct.eq_ignore_ascii_case("application/ssml+xml") => {}
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "the body must be SSML sent with Content-Type: application/ssml+xml (got {})",
                    other.map_or_else(
                        || "none".to_owned(),
                        |o| format!("{:?}", o.chars().take(60).collect::<String>())
                    )
                ),
            ));
        }
    }
    let format = match headers.get(OUTPUT_FORMAT_HEADER).map(|v| v.to_str()) {
        None => {
            return Err(ApiError::bad_request(format!(
                "the {OUTPUT_FORMAT_HEADER} header is required (e.g. riff-24khz-16bit-mono-pcm)"
            )));
        }
        Some(Err(_)) => {
            return Err(ApiError::bad_request(format!(
                "{OUTPUT_FORMAT_HEADER} is not an output format name"
            )));
        }
        Some(Ok(f)) => f
            .trim()
            .parse::<AudioFormat>()
            .map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let body = body.map_err(|r| ApiError::from_body_rejection(&r))?;
    let ssml = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the SSML body is not UTF-8"))?;
    let request = SynthesisRequest::ssml(ssml, format);
    // The validation every backend applies: empty, no <speak> root, over 64 KB,
    // characters XML forbids. Checked here so a bad request costs no connection.
    request.validate().map_err(|e| ApiError::from_speech(&e))?;
    Ok(request)
}
