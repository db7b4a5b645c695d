//! One classified error type for every speech backend.

use std::fmt;
use std::time::Duration;

/// Why a speech operation failed, classified so that the service can choose an HTTP status,
/// a retry policy and a metrics label without knowing which backend produced it.
///
/// **Messages never contain secrets.** Every constructor takes text that the caller has
/// already sanitised: no subscription keys, bearer tokens, `Authorization` headers or URLs
/// with credentials in their query. Backends build messages from status codes, close codes
/// and server reasons, never from request headers. This matters because these messages end
/// up in logs, in `/api/v1/pools` (`last_error`) and in HTTP error bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpeechError {
    /// The service rejected the credentials: HTTP 401/403, or an expired token that could
    /// not be refreshed. Not retryable: the same credentials will fail again.
    #[error("authentication failed: {message}")]
    Auth {
        /// Sanitised description.
        message: String,
    },
    /// Rate or concurrency limit hit: HTTP 429, websocket close 4429.
    #[error("throttled by the speech service: {message}{}", fmt_retry_after(*.retry_after))]
    Throttled {
        /// The server's `Retry-After`, when it sent one (Azure usually does not).
        retry_after: Option<Duration>,
        /// Sanitised description.
        message: String,
    },
    /// The request itself is wrong (empty text, SSML over 64 KB, bad voice, unsupported
    /// format; HTTP 400/415, close 1007). Retrying the same request cannot help.
    #[error("bad request: {message}")]
    BadRequest {
        /// Sanitised description.
        message: String,
    },
    /// A server-side or network failure expected to go away: HTTP 5xx, close 1011/1013,
    /// connection refused or reset during connect.
    #[error("transient speech service failure: {message}")]
    Transient {
        /// Sanitised description.
        message: String,
    },
    /// An established connection ended while a turn was in flight (or was found closed
    /// when a turn started). The connection is gone; another one may well work.
    #[error("connection closed ({}): {reason}", fmt_close_code(*.code))]
    ConnectionClosed {
        /// The websocket close code, if a close frame was received.
        code: Option<u16>,
        /// The close reason or a description of how the connection was lost.
        reason: String,
    },
    /// Nothing arrived in time (connect, handshake, first audio, next frame).
    #[error("timed out: {message}")]
    Timeout {
        /// Sanitised description, naming what was awaited.
        message: String,
    },
    /// The peer broke the protocol (unexpected message, missing header, bad framing).
    /// Indicates a bug or an incompatible service change, so it is not retried.
    #[error("protocol violation: {message}")]
    Protocol {
        /// Sanitised description.
        message: String,
    },
    /// The caller went away: the events receiver was dropped mid-turn. Not a failure of
    /// the backend; counted separately so it does not pollute error rates.
    #[error("cancelled by the caller")]
    Cancelled,
}

fn fmt_retry_after(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!(" (retry after {} ms)", d.as_millis()),
        None => String::new(),
    }
}

fn fmt_close_code(code: Option<u16>) -> String {
    match code {
        Some(c) => format!("code {c}"),
        None => "no close frame".to_owned(),
    }
}

impl SpeechError {
    /// An [`Auth`](Self::Auth) error. `message` must already be free of secrets.
    pub fn auth(message: impl Into<String>) -> Self {
        Self::Auth {
            message: message.into(),
        }
    }

    /// A [`Throttled`](Self::Throttled) error. `message` must already be free of secrets.
    pub fn throttled(retry_after: Option<Duration>, message: impl Into<String>) -> Self {
        Self::Throttled {
            retry_after,
            message: message.into(),
        }
    }

    /// A [`BadRequest`](Self::BadRequest) error. `message` must already be free of secrets.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
        }
    }

    /// A [`Transient`](Self::Transient) error. `message` must already be free of secrets.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient {
            message: message.into(),
        }
    }

    /// A [`ConnectionClosed`](Self::ConnectionClosed) error. `reason` must already be free
    /// of secrets.
    pub fn connection_closed(code: Option<u16>, reason: impl Into<String>) -> Self {
        Self::ConnectionClosed {
            code,
            reason: reason.into(),
        }
    }

    /// A [`Timeout`](Self::Timeout) error. `message` must already be free of secrets.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::Timeout {
            message: message.into(),
        }
    }

    /// A [`Protocol`](Self::Protocol) error. `message` must already be free of secrets.
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::Protocol {
            message: message.into(),
        }
    }

    /// Classifies a non-success HTTP status (REST call or websocket handshake), so every
    /// backend maps statuses the same way:
    /// 401/403 → `Auth`; 429 → `Throttled`; 400/404/413/414/415/422 → `BadRequest`;
    /// 408/504 → `Timeout`; other 5xx → `Transient`; anything else → `Protocol`.
    /// `message` must already be free of secrets.
    pub fn from_http_status(
        status: u16,
        retry_after: Option<Duration>,
        message: impl Into<String>,
    ) -> Self {
        let message = format!("HTTP {status}: {}", message.into());
        match status {
            401 | 403 => Self::Auth { message },
            429 => Self::Throttled {
                retry_after,
                message,
            },
            400 | 404 | 413 | 414 | 415 | 422 => Self::BadRequest { message },
            408 | 504 => Self::Timeout { message },
            500..=599 => Self::Transient { message },
            _ => Self::Protocol { message },
        }
    }

    /// Classifies a websocket close received during (or instead of) a turn, following the
    /// Speech SDK's reading of Azure's close codes:
    /// 1002/1003 → `Protocol`; 1007 → `BadRequest` (invalid SSML or audio; Azure also uses
    /// it for some quota errors, which the SDK treats the same way); 4429 → `Throttled`;
    /// 1011/1012/1013 → `Transient`; anything else (1000 idle/age close, 1001, 1006 ...)
    /// → `ConnectionClosed`. `reason` must already be free of secrets.
    pub fn from_close_code(code: u16, reason: impl Into<String>) -> Self {
        let reason = reason.into();
        let described = || format!("websocket closed with code {code}: {reason}");
        match code {
            1002 | 1003 => Self::Protocol {
                message: described(),
            },
            1007 => Self::BadRequest {
                message: described(),
            },
            4429 => Self::Throttled {
                retry_after: None,
                message: described(),
            },
            1011..=1013 => Self::Transient {
                message: described(),
            },
            _ => Self::ConnectionClosed {
                code: Some(code),
                reason,
            },
        }
    }

    /// The class of this error, for metrics labels and retry decisions.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Auth { .. } => ErrorClass::Auth,
            Self::Throttled { .. } => ErrorClass::Throttled,
            Self::BadRequest { .. } => ErrorClass::BadRequest,
            Self::Transient { .. } => ErrorClass::Transient,
            Self::ConnectionClosed { .. } => ErrorClass::ConnectionClosed,
            Self::Timeout { .. } => ErrorClass::Timeout,
            Self::Protocol { .. } => ErrorClass::Protocol,
            Self::Cancelled => ErrorClass::Cancelled,
        }
    }

    /// Shorthand for `self.class().is_retryable()`.
    pub fn is_retryable(&self) -> bool {
        self.class().is_retryable()
    }

    /// The server's `Retry-After`, when the error is `Throttled` and one was sent.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A dropped events receiver means the caller is gone, so a failed `send` on an events
/// channel is [`SpeechError::Cancelled`]. This lets implementations write
/// `events.send(ev).await?`.
impl<T> From<tokio::sync::mpsc::error::SendError<T>> for SpeechError {
    fn from(_: tokio::sync::mpsc::error::SendError<T>) -> Self {
        Self::Cancelled
    }
}

impl From<crate::format::UnknownAudioFormat> for SpeechError {
    fn from(e: crate::format::UnknownAudioFormat) -> Self {
        Self::bad_request(e.to_string())
    }
}

/// The class of a [`SpeechError`]: a `Copy` value for metrics labels, dashboards and
/// retry decisions, without the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// See [`SpeechError::Auth`].
    Auth,
    /// See [`SpeechError::Throttled`].
    Throttled,
    /// See [`SpeechError::BadRequest`].
    BadRequest,
    /// See [`SpeechError::Transient`].
    Transient,
    /// See [`SpeechError::ConnectionClosed`].
    ConnectionClosed,
    /// See [`SpeechError::Timeout`].
    Timeout,
    /// See [`SpeechError::Protocol`].
    Protocol,
    /// See [`SpeechError::Cancelled`].
    Cancelled,
}

impl ErrorClass {
    /// Every class, for pre-registering metrics label values.
    pub const ALL: [ErrorClass; 8] = [
        ErrorClass::Auth,
        ErrorClass::Throttled,
        ErrorClass::BadRequest,
        ErrorClass::Transient,
        ErrorClass::ConnectionClosed,
        ErrorClass::Timeout,
        ErrorClass::Protocol,
        ErrorClass::Cancelled,
    ];

    /// A stable snake_case label (`"auth"`, `"throttled"`, `"bad_request"`, `"transient"`,
    /// `"connection_closed"`, `"timeout"`, `"protocol"`, `"cancelled"`). Stable because
    /// dashboards and alerts are keyed on it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Throttled => "throttled",
            Self::BadRequest => "bad_request",
            Self::Transient => "transient",
            Self::ConnectionClosed => "connection_closed",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
            Self::Cancelled => "cancelled",
        }
    }

    /// May the same request succeed if retried (on a fresh connection, after a back-off)?
    /// True for `Throttled`, `Transient`, `ConnectionClosed` and `Timeout`; false for
    /// `Auth`, `BadRequest` and `Protocol` (they would fail again) and for `Cancelled`
    /// (nobody is waiting for the answer).
    ///
    /// Note that audio already delivered to the caller cannot be taken back: a caller that
    /// has streamed part of a turn must decide for itself whether a retry makes sense.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled | Self::Transient | Self::ConnectionClosed | Self::Timeout
        )
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_labels() {
        let cases = [
            (SpeechError::auth("bad key"), "auth", false),
            (SpeechError::throttled(None, "slow down"), "throttled", true),
            (SpeechError::bad_request("empty text"), "bad_request", false),
            (SpeechError::transient("503"), "transient", true),
            (
                SpeechError::connection_closed(Some(1000), "idle"),
                "connection_closed",
                true,
            ),
            (SpeechError::timeout("first audio"), "timeout", true),
            (SpeechError::protocol("no Path header"), "protocol", false),
            (SpeechError::Cancelled, "cancelled", false),
        ];
        let mut labels = std::collections::HashSet::new();
        for (err, label, retryable) in cases {
            assert_eq!(err.class().as_str(), label);
            assert_eq!(err.class().to_string(), label);
            assert_eq!(err.is_retryable(), retryable, "{label}");
            assert!(ErrorClass::ALL.contains(&err.class()));
            labels.insert(label);
        }
        assert_eq!(labels.len(), ErrorClass::ALL.len());
    }

    #[test]
    fn display_includes_context() {
        let e = SpeechError::throttled(Some(Duration::from_secs(2)), "429");
        assert_eq!(
            e.to_string(),
            "throttled by the speech service: 429 (retry after 2000 ms)"
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(SpeechError::transient("x").retry_after(), None);
        let e = SpeechError::connection_closed(None, "reset by peer");
        assert_eq!(
            e.to_string(),
            "connection closed (no close frame): reset by peer"
        );
        let e = SpeechError::connection_closed(Some(1000), "idle");
        assert_eq!(e.to_string(), "connection closed (code 1000): idle");
    }

    #[test]
    fn http_status_mapping() {
        let c = |s| SpeechError::from_http_status(s, None, "x").class();
        assert_eq!(c(401), ErrorClass::Auth);
        assert_eq!(c(403), ErrorClass::Auth);
        assert_eq!(c(429), ErrorClass::Throttled);
        assert_eq!(c(400), ErrorClass::BadRequest);
        assert_eq!(c(415), ErrorClass::BadRequest);
        assert_eq!(c(408), ErrorClass::Timeout);
        assert_eq!(c(504), ErrorClass::Timeout);
        assert_eq!(c(500), ErrorClass::Transient);
        assert_eq!(c(502), ErrorClass::Transient);
        assert_eq!(c(503), ErrorClass::Transient);
        assert_eq!(c(302), ErrorClass::Protocol);
        let e = SpeechError::from_http_status(429, Some(Duration::from_secs(1)), "quota");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert!(e.to_string().contains("HTTP 429: quota"));
    }

    #[test]
    fn close_code_mapping() {
        let c = |code| SpeechError::from_close_code(code, "r").class();
        assert_eq!(c(1000), ErrorClass::ConnectionClosed);
        assert_eq!(c(1006), ErrorClass::ConnectionClosed);
        assert_eq!(c(1002), ErrorClass::Protocol);
        assert_eq!(c(1007), ErrorClass::BadRequest);
        assert_eq!(c(1011), ErrorClass::Transient);
        assert_eq!(c(1013), ErrorClass::Transient);
        assert_eq!(c(4429), ErrorClass::Throttled);
        assert_eq!(
            SpeechError::from_close_code(1000, "idle"),
            SpeechError::connection_closed(Some(1000), "idle")
        );
        assert!(
            SpeechError::from_close_code(1011, "internal")
                .to_string()
                .contains("1011")
        );
    }

    #[test]
    fn conversions() {
        let send_err = tokio::sync::mpsc::error::SendError(1u8);
        assert_eq!(SpeechError::from(send_err), SpeechError::Cancelled);
        let unknown = "nope"
            .parse::<crate::AudioFormat>()
            .expect_err("unknown format");
        assert_eq!(SpeechError::from(unknown).class(), ErrorClass::BadRequest);
    }

    #[test]
    fn class_serializes_as_label() {
        for class in ErrorClass::ALL {
            let json = serde_json::to_string(&class).expect("serialize");
            assert_eq!(json, format!("\"{}\"", class.as_str()));
        }
    }
}
