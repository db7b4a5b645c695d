//! HTTP errors: one JSON shape, and the mapping from pool and speech errors to statuses.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pool_core::PoolError;
use speech_core::{ErrorClass, SpeechError};

/// An error answered to a client: `{"error": {"code": "...", "message": "..."}}` with a
/// status, plus `Retry-After` for the statuses where retrying later helps.
///
/// Messages are built from sanitised sources only (request validation, pool state and
/// `SpeechError` messages, which speech-core requires to be free of secrets), so a
/// response never carries a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code, e.g. `bad_request`, `pool_exhausted`.
    pub code: &'static str,
    /// A human-readable reason.
    pub message: String,
    /// Sent as `Retry-After` (whole seconds, at least 1) when set.
    pub retry_after: Option<Duration>,
}

/// The body of every error response (described as `ErrorBody` in the OpenAPI document).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The details of an error response.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `bad_request`, `pool_exhausted`.
    pub code: String,
    /// A human-readable reason.
    pub message: String,
}

/// How long a client should wait before retrying when the server gave no hint: long
/// enough for a refill or a returned connection, short enough not to stall a call.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 with a reason.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A request body that could not be read: 413 when it is over the size limit, else
    /// 400, with axum's reason.
    pub fn from_body_rejection(rejection: &axum::extract::rejection::BytesRejection) -> Self {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        Self::new(status, code, rejection.body_text())
    }

    /// 503 because the service is shutting down.
    pub fn draining() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the service is shutting down",
        )
        .with_retry_after(DEFAULT_RETRY_AFTER)
    }

    /// Adds a `Retry-After`.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Maps a speech backend error by its class: the client learns whether to fix its
    /// request (400), retry later (429 / 503 / 504) or call an operator (502).
    pub fn from_speech(err: &SpeechError) -> Self {
        let message = err.to_string();
        match err.class() {
            ErrorClass::BadRequest => Self::new(StatusCode::BAD_REQUEST, "bad_request", message),
            ErrorClass::Auth => Self::new(
                StatusCode::BAD_GATEWAY,
                "upstream_auth",
                format!(
                    "the speech service rejected this service's credentials \
                     (check AZURE_SPEECH_KEY and its region or endpoint): {message}"
                ),
            ),
            ErrorClass::Throttled => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "upstream_throttled", message)
                    .with_retry_after(err.retry_after().unwrap_or(DEFAULT_RETRY_AFTER))
            }
            ErrorClass::Transient | ErrorClass::ConnectionClosed | ErrorClass::Cancelled => {
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream_unavailable",
                    message,
                )
                .with_retry_after(DEFAULT_RETRY_AFTER)
            }
            ErrorClass::Timeout => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
            }
            ErrorClass::Protocol => {
                Self::new(StatusCode::BAD_GATEWAY, "upstream_protocol", message)
            }
        }
    }

    /// Maps a pool error: an exhausted pool is 429 with `Retry-After` (the client sent too
    /// much at once); a failed connect is mapped by the backend error's class.
    pub fn from_pool(err: &PoolError<SpeechError>) -> Self {
        match err {
            PoolError::Timeout(details) => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "pool_exhausted",
                details.to_string(),
            )
            .with_retry_after(DEFAULT_RETRY_AFTER),
            PoolError::Closed => Self::draining(),
            PoolError::Create(e) | PoolError::Warm(e) => Self::from_speech(e),
            PoolError::CreateTimeout(d) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!("connecting to the speech service took longer than {d:?}"),
            ),
            PoolError::SessionBusy(details) => {
                Self::new(StatusCode::CONFLICT, "session_busy", details.to_string())
            }
            other => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "pool_error",
                other.to_string(),
            ),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(after) = self.retry_after {
            // Retry-After is whole seconds; round up so a client never retries too early.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_statuses() {
        let cases = [
            (SpeechError::auth("HTTP 401"), 502, None),
            (
                SpeechError::throttled(Some(Duration::from_millis(2500)), "slow down"),
                429,
                Some(3),
            ),
            (SpeechError::throttled(None, "slow down"), 429, Some(1)),
            (SpeechError::transient("HTTP 503"), 503, Some(1)),
            (SpeechError::bad_request("bad SSML"), 400, None),
            (SpeechError::timeout("first audio"), 504, None),
            (SpeechError::protocol("odd frame"), 502, None),
            (
                SpeechError::connection_closed(Some(1006), "gone"),
                503,
                Some(1),
            ),
        ];
        for (err, status, retry) in cases {
            let r = ApiError::from_speech(&err).into_response();
            assert_eq!(r.status().as_u16(), status, "{err}");
            let got = r
                .headers()
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            assert_eq!(got, retry, "{err}");
        }
        let auth = ApiError::from_speech(&SpeechError::auth("HTTP 401: denied"));
        assert!(auth.message.contains("credentials"), "{}", auth.message);
    }

    #[test]
    fn pool_errors_map_to_statuses() {
        let closed: PoolError<SpeechError> = PoolError::Closed;
        assert_eq!(ApiError::from_pool(&closed).status, 503);
        let create = PoolError::Create(SpeechError::auth("HTTP 403"));
        assert_eq!(ApiError::from_pool(&create).status, 502);
        let slow: PoolError<SpeechError> = PoolError::CreateTimeout(Duration::from_secs(10));
        assert_eq!(ApiError::from_pool(&slow).status, 504);
    }
}
