//! What the websocket driver (`ws.rs`) and the two protocols (`tts.rs`, `stt.rs`) share:
//! the facts of a session's handshake, the outgoing queue the protocols fill and the driver
//! empties, and how a session ends.
//!
//! Protocols only turn client messages into scheduled outgoing messages ([`Outbox`]), so
//! timing (simulated RTT, injected delays), turn interleaving and fault actions all go
//! through one ordered queue.

use std::collections::VecDeque;

use tokio::time::Instant;

use crate::frame::{self, BinaryMessage, TextMessage};

/// The STT recognition mode, fixed by the URL path (docs/protocol.md#stt-over-websocket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SttMode {
    /// Single utterance: the turn ends after one phrase.
    Interactive,
    /// Continuous.
    Conversation,
    /// Continuous, with dictation post-processing (same behaviour here).
    Dictation,
    /// `/stt/speech/universal/v2`: continuous; the language may travel in `speech.context`.
    Universal,
}

impl SttMode {
    /// The mode for a (lowercased) path, in both the regional and the `/stt/…` form; `None`
    /// when the path is not an STT route.
    pub(crate) fn from_path(path: &str) -> Option<Self> {
        let p = path.strip_prefix("/stt").unwrap_or(path);
        match p {
            "/speech/recognition/interactive/cognitiveservices/v1" => Some(Self::Interactive),
            "/speech/recognition/conversation/cognitiveservices/v1" => Some(Self::Conversation),
            "/speech/recognition/dictation/cognitiveservices/v1" => Some(Self::Dictation),
            "/speech/universal/v2" => Some(Self::Universal),
            _ => None,
        }
    }

    /// Whether phrases continue until the end of audio.
    pub(crate) fn continuous(self) -> bool {
        self != Self::Interactive
    }
}

/// What a session knows about its handshake.
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    /// The decoded query.
    pub(crate) query: Vec<(String, String)>,
    /// The STT mode (`None` for TTS).
    pub(crate) mode: Option<SttMode>,
    /// The authenticated identity (key or token subscription).
    pub(crate) identity: String,
    /// The client's `X-ConnectionId` (may be empty in lenient mode).
    pub(crate) connection_id: String,
}

/// Something the session will send (or do) at a scheduled time.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A text message.
    Text(String),
    /// A text message that completes a turn (`turn.end`): counted as a served turn.
    TurnEnd(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// Close the socket with a code and reason.
    Close(u16, String),
    /// Drop the connection without a close frame.
    Disconnect {
        /// Reset rather than FIN.
        rst: bool,
    },
    /// Stop reading and writing, and keep the socket open (see `Fault::Blackhole`).
    Blackhole,
}

/// Outgoing messages in send order, each with the earliest time it may go. Times never
/// decrease along the queue, so a delay on one message delays everything after it, as on a
/// real connection.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: VecDeque<(Instant, Outgoing)>,
    last_at: Option<Instant>,
}

impl Outbox {
    /// Queues `out` to go at `at` (or after the previous message, if later).
    pub(crate) fn push_at(&mut self, at: Instant, out: Outgoing) {
        let at = self.last_at.map_or(at, |t| t.max(at));
        self.last_at = Some(at);
        self.queue.push_back((at, out));
    }

    /// Queues `out` to go as soon as everything before it has gone.
    pub(crate) fn push(&mut self, out: Outgoing) {
        self.push_at(Instant::now(), out);
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops everything queued (a discarded turn).
    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Drops the binary messages queued (a stopped TTS turn's audio that has not gone
    /// yet), keeping text messages and scheduled actions.
    pub(crate) fn drop_binary(&mut self) {
        self.queue
            .retain(|(_, o)| !matches!(o, Outgoing::Binary(_)));
    }

    /// When the next message may go, if any is queued.
    pub(crate) fn next_at(&self) -> Option<Instant> {
        self.queue.front().map(|(t, _)| *t)
    }

    /// Takes the next message, whether or not its time has come.
    pub(crate) fn pop(&mut self) -> Option<Outgoing> {
        self.queue.pop_front().map(|(_, o)| o)
    }
}

/// How a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Close with a code and reason.
    Close(u16, String),
    /// Drop without a close frame.
    Disconnect {
        /// Reset rather than FIN.
        rst: bool,
    },
    /// Go silent with the socket open until the server shuts down (see
    /// `Fault::Blackhole`).
    Blackhole,
    /// The client went away.
    Gone,
}

/// One websocket protocol (TTS or STT), driven by the session driver in `ws.rs`.
pub(crate) trait Protocol {
    /// A text message arrived.
    fn on_text(&mut self, out: &mut Outbox, msg: TextMessage) -> Result<(), Stop>;
    /// A binary message arrived.
    fn on_binary(&mut self, out: &mut Outbox, msg: BinaryMessage) -> Result<(), Stop>;
    /// Whether [`refill`](Self::refill) has something to add when the outbox runs dry.
    fn wants_refill(&self) -> bool {
        false
    }
    /// Adds the next generated messages (TTS audio is produced lazily, a frame at a time).
    fn refill(&mut self, _out: &mut Outbox) {}
    /// Whether a turn is progressing (the idle timer does not run then).
    fn busy(&self) -> bool {
        false
    }
    /// Whether a turn has begun and not ended (STT: audio of a request id still open), for
    /// the counter of turns cut by the age limit.
    fn in_turn(&self) -> bool {
        false
    }
}

/// A fresh id of 32 uppercase hex digits, as the service writes stream ids.
pub(crate) fn new_hex_id() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_ascii_uppercase()
}

/// A service text message: `X-RequestId`, `Content-Type`, `Path` in the service's order,
/// then `body` (docs/protocol.md#message-framing).
pub(crate) fn service_text(
    request_id: &str,
    path: &str,
    body: &str,
    style: frame::HeaderStyle,
) -> String {
    let mut headers = frame::Headers::new();
    headers.push("X-RequestId", request_id);
    headers.push("Content-Type", "application/json; charset=utf-8");
    headers.push("Path", path);
    frame::build_text(&headers, body, style)
}
