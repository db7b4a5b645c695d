//! Azure's websocket protocol spoken by the service itself, for connections that cannot
//! relay it (the mock backend, TTS over REST): the SDK's turns are read, run through the
//! pooled connection's ordinary API ([`speech_core::Synthesizer::synthesize_stoppable`],
//! [`speech_core::Recognizer::recognize`])
//! and answered with the messages Azure would send, framed with speech-core's codec
//! ([`speech_core::wire`]).
//!
//! What the SDKs' receive loops rely on, and this module keeps (docs/protocol.md):
//! - every message of a turn carries the turn's `X-RequestId` exactly as the SDK sent it;
//! - TTS: `turn.start`, `response` naming a fresh stream id, binary `audio` frames carrying
//!   that `X-StreamId` (the JavaScript SDK drops audio of any other stream), the enabled
//!   `audio.metadata`, a `SessionEnd` item when asked for, the empty `audio` frame (no
//!   `Content-Type`), and `turn.end` last;
//! - STT: `turn.start` when the first audio of a new request id arrives, then the
//!   recognizer's events as `speech.startDetected`, `speech.hypothesis`, `speech.phrase`
//!   (simple or detailed, as the socket's `format` says), `speech.endDetected`, and
//!   `turn.end`; late audio of a finished turn is ignored (the JavaScript SDK sends its end
//!   frame twice);
//! - failures are Azure's closes ([`close_for`]): 1007 for a request the service
//!   refuses (bad SSML, unsupported audio), 4429 throttled, 1011 for anything the SDK may
//!   retry on a new socket, 1002 for a message without the headers a turn needs.
//!
//! Sessions, tiers, metrics and the connection's return to the warm set are the relay's:
//! one downstream socket is one pool session (`relay::Downstream`).

pub mod stt;
pub mod tts;

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use pool_core::{Manager, Pooled};
use speech_core::wire::{self, Headers};
use speech_core::{ErrorClass, SpeechError};

use super::relay::{Downstream, close_for};
use crate::routes::{acquire, keep_after_error};
use crate::state::AppState;

/// Longest `X-RequestId` accepted (Azure's are 32 hex digits; some clients send dashed
/// UUIDs, 36 characters).
const MAX_REQUEST_ID_LEN: usize = 64;

/// The socket's writing half.
pub(super) type Sink = SplitSink<WebSocket, Message>;

/// A request id the service can echo: non-empty, at most 64 ASCII letters, digits or
/// dashes (so it can never break a header line).
pub(super) fn valid_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether two request ids name the same turn (Azure compares them case-insensitively).
pub(super) fn same_id(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// A fresh 32-hex id (stream ids; service tags are their lower-case form).
pub(super) fn new_id() -> String {
    speech_core::RequestId::new().as_str().to_owned()
}

/// A text message as Azure's service writes it: `X-RequestId`, `Content-Type` (JSON) and
/// `Path`, a blank line, the body.
pub(super) fn service_text(request_id: &str, path: &str, body: &str) -> Message {
    let headers = Headers::new()
        .with("X-RequestId", request_id)
        .with("Content-Type", "application/json; charset=utf-8")
        .with("Path", path);
    // Request ids are checked by `valid_request_id` and the rest are constants, so the
    // headers always write.
    Message::Text(wire::write_text(&headers, body).unwrap_or_default().into())
}

/// A binary `audio` message of a synthesis turn: `X-RequestId`, `Content-Type` (not on the
/// empty end frame), `X-StreamId`, `Path`.
pub(super) fn audio_frame(
    request_id: &str,
    stream_id: &str,
    content_type: Option<&str>,
    payload: &[u8],
) -> Message {
    let mut headers = Headers::new().with("X-RequestId", request_id);
    if let Some(ct) = content_type {
        headers.push("Content-Type", ct);
    }
    headers.push("X-StreamId", stream_id);
    headers.push("Path", "audio");
    Message::Binary(
        wire::write_binary(&headers, payload)
            .unwrap_or_default()
            .into(),
    )
}

/// Sends a close frame (errors ignored: the peer may be gone).
pub(super) async fn close(sink: &mut Sink, code: u16, reason: impl Into<String>) {
    let reason: String = reason.into();
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.chars().take(120).collect::<String>().into(),
        })))
        .await;
}

/// The connection for the socket's next turn: the one taken at the upgrade for the first
/// turn, the session's own (DEDICATED) afterwards. When none can be had the SDK gets the
/// close it expects: 4429 when throttled or exhausted, 1011 otherwise (it reconnects).
pub(super) async fn turn_connection<M>(
    down: &mut Downstream<M>,
    sink: &mut Sink,
) -> Option<(Pooled<M>, Duration)>
where
    M: Manager<Error = SpeechError>,
{
    if let Some(first) = down.first.take() {
        return Some(first);
    }
    match acquire(&down.state, &down.pool, Some(&down.session)).await {
        Ok(g) => Some(g),
        Err(e) => {
            let code = if e.status.as_u16() == 429 { 4429 } else { 1011 };
            close(sink, code, e.message).await;
            None
        }
    }
}

/// A turn that failed: the fault is counted (a cancellation is not a fault), the
/// connection is kept when the failure leaves it usable and closed otherwise, and the SDK,
/// if still there, gets the close Azure would send for it.
pub(super) async fn turn_failed<M>(
    state: &AppState,
    pool: &str,
    guard: Pooled<M>,
    e: &SpeechError,
    gone: bool,
    sink: &mut Sink,
    span: &tracing::Span,
) where
    M: Manager<Error = SpeechError>,
{
    if e.class() != ErrorClass::Cancelled {
        state.metrics().record_upstream_error(pool, e.class());
    }
    if keep_after_error(e.class()) {
        drop(guard);
    } else {
        guard.discard();
    }
    if !gone {
        let (code, reason) = close_for(e);
        tracing::info!(parent: span, error = %e, close = code, "turn failed; closing the SDK's socket");
        close(sink, code, reason).await;
    }
}

/// Gives the socket's session back: the connection taken at the upgrade if no turn used
/// it, then the session (its connection is reset and returned to the warm set).
pub(super) async fn finish<M>(mut down: Downstream<M>)
where
    M: Manager<Error = SpeechError>,
{
    drop(down.first.take());
    down.pool.release_for_session(&down.session).await;
    down.state.session_cap().forget(&down.session);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_that_can_be_echoed() {
        assert!(valid_request_id("9670D8904BB94E2A8C6E7C1F3A5B2D10"));
        assert!(valid_request_id("91067ed0-bd0d-4c2e-9a3b-1f2e3d4c5b6a"));
        for bad in ["", "a b", "a\r\nPath: x", &"a".repeat(65)] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn messages_are_framed_as_the_service_frames_them() {
        let Message::Text(t) = service_text("AB", "turn.end", "{}") else {
            panic!("text");
        };
        let m = wire::parse_text(t.as_str());
        assert_eq!(m.headers.path(), Some("turn.end"));
        assert_eq!(m.headers.request_id(), Some("AB"));
        assert_eq!(m.body, "{}");
        let Message::Binary(b) = audio_frame("AB", "S1", None, &[]) else {
            panic!("binary");
        };
        let m = wire::parse_binary(b).expect("parse");
        assert_eq!(m.headers.stream_id(), Some("S1"));
        assert_eq!(m.headers.get("Content-Type"), None);
        assert!(m.payload.is_empty());
    }
}
