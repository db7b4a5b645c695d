//! The v2 TTS websocket (`/cognitiveservices/websocket/v2`): text streaming
//! (docs/protocol.md#tts-over-websocket, the project's spec §4.2).
//!
//! A request whose `synthesis.context` sets `synthesis.input.bidirectionalStreamingMode`
//! takes its text as `text.piece` messages and ends with `text.end`. Like the service,
//! the emulator speaks text **as it arrives**: each time the pending text reaches a
//! sentence or clause boundary (`.`, `!`, `?`, `,`, `;`, `:` followed by a space) or holds
//! [`WORDS_PER_SEGMENT`] complete words, that part becomes a segment whose audio and word
//! boundaries go out one simulated round trip after the text that completed it arrived,
//! without waiting for `text.end`. `text.end` speaks whatever is left and ends the turn.
//!
//! Requests without the streaming mode (`ssml` turns) are served on the same socket by the
//! v1 protocol ([`TtsSession`]), as the service serves both on v2.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::audio::{MS_PER_CHAR, SynthAudio, TICKS_PER_MS, Timeline};
use crate::faults::{Endpoint, Phase, TurnPoint};
use crate::frame::{self, BinaryMessage, HeaderStyle, TextMessage};
use crate::session::{Outbox, Outgoing, Protocol, SessionParams, Stop, new_hex_id, service_text};
use crate::state::ServerState;
use crate::time::deadline_after;
use crate::tts::{TtsOptions, TtsSession};
use crate::turn::TurnFaults;

/// A segment is cut after this many complete words even without punctuation, so a long
/// clause does not hold back the audio.
pub const WORDS_PER_SEGMENT: usize = 8;

/// Most text one streamed request may carry (the same bound as the client's): past it the
/// socket closes 1007, as for an oversized SSML document.
const MAX_STREAMED_TEXT: usize = 256 * 1024;

/// Where the pending text may be cut: the byte index just after the last boundary, if any.
/// A boundary is clause punctuation followed by whitespace, or the whitespace after the
/// [`WORDS_PER_SEGMENT`]-th complete word.
pub(crate) fn cut_point(pending: &str) -> Option<usize> {
    let mut cut = None;
    let mut words = 0;
    let mut in_word = false;
    let mut prev: Option<char> = None;
    for (i, c) in pending.char_indices() {
        if c.is_whitespace() {
            if in_word {
                words += 1;
                in_word = false;
            }
            let clause = prev.is_some_and(|p| matches!(p, '.' | '!' | '?' | ',' | ';' | ':'));
            if clause || words >= WORDS_PER_SEGMENT {
                cut = Some(i);
                words = 0;
            }
        } else if c.is_alphanumeric() {
            in_word = true;
        }
        prev = Some(c);
    }
    cut
}

/// Whitespace collapsed and trimmed, as the SSML reader normalises text.
fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The word-boundary metadata of one segment, offsets shifted by `base_ticks` (the audio
/// of the turn's earlier segments).
fn word_metadata(text: &str, base_ticks: u64) -> VecDeque<(u64, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = VecDeque::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_alphanumeric()
                || (chars[i] == '\'' && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric())))
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let offset = base_ticks + Timeline::char_offset_ticks(start);
        let body = json!({"Metadata": [{"Type": "WordBoundary", "Data": {
            "Offset": offset,
            "Duration": (i - start) as u64 * MS_PER_CHAR * TICKS_PER_MS,
            "text": {"Text": word, "Length": i - start, "BoundaryType": "WordBoundary"},
        }}]});
        out.push_back((offset, body.to_string()));
    }
    out
}

/// A segment's audio being sent.
#[derive(Debug)]
struct Playback {
    audio: SynthAudio,
    sent: u64,
    /// When its first frame may go: one round trip after the text that completed it.
    ready_at: Instant,
    metadata: VecDeque<(u64, String)>,
    base_ticks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `turn.start` and `response` not yet queued.
    Start,
    /// Speaking segments as text arrives.
    Streaming,
    /// A fault stalled the turn: nothing more is sent.
    Stalled,
    Done,
}

/// One text-streaming request, from `synthesis.context` to `turn.end`.
#[derive(Debug)]
struct StreamTurn {
    request_id: String,
    stream_id: String,
    service_tag: String,
    opts: TtsOptions,
    faults: TurnFaults,
    style: HeaderStyle,
    stage: Stage,
    /// Text received and not yet part of a segment.
    pending: String,
    received: usize,
    /// Segments cut and waiting for their audio, with their ready time.
    segments: VecDeque<(String, Instant)>,
    playing: Option<Playback>,
    /// Audio time of the segments already sent, in milliseconds.
    spoken_ms: u64,
    frames: u32,
    chunk: usize,
    ended: bool,
    stopped: bool,
}

impl StreamTurn {
    fn new(request_id: String, opts: TtsOptions, faults: TurnFaults) -> Self {
        let mut chunk = (opts.format.bytes_per_sec / 10).clamp(256, 8192) as usize;
        chunk -= chunk % 2;
        let style = faults.style();
        Self {
            request_id,
            stream_id: new_hex_id(),
            service_tag: new_hex_id().to_ascii_lowercase(),
            opts,
            faults,
            style,
            stage: Stage::Start,
            pending: String::new(),
            received: 0,
            segments: VecDeque::new(),
            playing: None,
            spoken_ms: 0,
            frames: 0,
            chunk,
            ended: false,
            stopped: false,
        }
    }

    fn text(&self, path: &str, body: &str) -> Outgoing {
        Outgoing::Text(service_text(&self.request_id, path, body, self.style))
    }

    fn audio_frame(&self, payload: &[u8], content_type: bool) -> Outgoing {
        let mut hd = frame::Headers::new();
        hd.push("X-RequestId", self.request_id.as_str());
        if content_type {
            hd.push("Content-Type", self.opts.format.mime());
        }
        hd.push("X-StreamId", self.stream_id.as_str());
        hd.push("Path", "audio");
        Outgoing::Binary(frame::build_binary(&hd, payload, self.style))
    }

    /// Adds a piece of text and cuts every segment it completes.
    fn piece(&mut self, text: &str, rtt: Duration) -> Result<(), Stop> {
        if self.ended || self.stopped {
            return Ok(());
        }
        self.received += text.len();
        if self.received > MAX_STREAMED_TEXT {
            return Err(Stop::Close(
                1007,
                "The streamed text exceeds the size limit".into(),
            ));
        }
        self.pending.push_str(text);
        if let Some(at) = cut_point(&self.pending) {
            let rest = self.pending.split_off(at);
            let segment = std::mem::replace(&mut self.pending, rest);
            self.push_segment(&segment, rtt);
        }
        Ok(())
    }

    /// `text.end`: speaks what is left.
    fn end(&mut self, rtt: Duration) {
        if self.ended {
            return;
        }
        self.ended = true;
        let rest = std::mem::take(&mut self.pending);
        self.push_segment(&rest, rtt);
    }

    fn push_segment(&mut self, text: &str, rtt: Duration) {
        let text = normalise(text);
        if text.is_empty() || self.stopped {
            return;
        }
        self.segments
            .push_back((text, deadline_after(Instant::now(), rtt)));
    }

    fn wants_refill(&self) -> bool {
        match self.stage {
            Stage::Start => true,
            Stage::Streaming => {
                self.playing.is_some() || !self.segments.is_empty() || self.ended || self.stopped
            }
            Stage::Stalled | Stage::Done => false,
        }
    }

    fn step(&mut self, out: &mut Outbox, rtt: Duration) {
        match self.stage {
            Stage::Start => {
                let at = deadline_after(
                    Instant::now(),
                    rtt.saturating_add(self.faults.turn_start_delay),
                );
                let body = json!({"context": {"serviceTag": self.service_tag}}).to_string();
                out.push_at(at, self.text("turn.start", &body));
                if let Some(action) = self.faults.action_at(TurnPoint::AfterTurnStart) {
                    out.push(action);
                    self.stage = Stage::Done;
                    return;
                }
                if self.faults.stall == Some(0) {
                    self.stage = Stage::Stalled;
                    return;
                }
                let body = json!({
                    "context": {"serviceTag": self.service_tag},
                    "audio": {"type": "inline", "streamId": self.stream_id},
                })
                .to_string();
                out.push(self.text("response", &body));
                self.stage = Stage::Streaming;
            }
            Stage::Streaming => self.stream_step(out),
            Stage::Stalled | Stage::Done => {}
        }
    }

    fn stream_step(&mut self, out: &mut Outbox) {
        if self.stopped {
            self.playing = None;
            self.segments.clear();
            self.tail(out);
            return;
        }
        if let Some(p) = &mut self.playing {
            if p.sent >= p.audio.total_len() {
                self.spoken_ms += p.audio.ms_at_byte(p.audio.total_len());
                self.playing = None;
                return;
            }
            let at = if p.sent == 0 {
                p.ready_at
            } else {
                Instant::now()
            };
            let at = if self.frames == 0 {
                deadline_after(at, self.faults.first_audio_delay)
            } else {
                at
            };
            let data = p.audio.chunk(p.sent, self.chunk);
            p.sent += data.len() as u64;
            let covered = p.base_ticks + p.audio.ms_at_byte(p.sent) * TICKS_PER_MS;
            let mut meta = Vec::new();
            while p.metadata.front().is_some_and(|(o, _)| *o <= covered) {
                if let Some((_, body)) = p.metadata.pop_front() {
                    meta.push(body);
                }
            }
            if self.opts.word {
                for body in meta {
                    out.push_at(at, self.text("audio.metadata", &body));
                }
            }
            out.push_at(at, self.audio_frame(&data, true));
            self.frames += 1;
            if let Some(action) = self.faults.action_at(TurnPoint::AfterFrames(self.frames)) {
                out.push(action);
                self.stage = Stage::Done;
            } else if self.faults.stall == Some(self.frames) {
                self.stage = Stage::Stalled;
            }
            return;
        }
        if let Some((text, ready_at)) = self.segments.pop_front() {
            let base_ticks = self.spoken_ms * TICKS_PER_MS;
            self.playing = Some(Playback {
                audio: SynthAudio::new(self.opts.format, Timeline::new(&text)),
                sent: 0,
                ready_at,
                metadata: word_metadata(&text, base_ticks),
                base_ticks,
            });
            return;
        }
        if self.ended {
            self.tail(out);
        }
    }

    fn tail(&mut self, out: &mut Outbox) {
        if self.opts.session_end {
            let ticks = self.spoken_ms * TICKS_PER_MS;
            let body = json!({"Metadata": [{"Type": "SessionEnd", "Data": {"Offset": ticks}}]});
            out.push(self.text("audio.metadata", &body.to_string()));
        }
        out.push(self.audio_frame(&[], false));
        out.push(Outgoing::TurnEnd(service_text(
            &self.request_id,
            "turn.end",
            "{}",
            self.style,
        )));
        if let Some(action) = self.faults.action_at(TurnPoint::AfterTurnEnd) {
            out.push(action);
        }
        self.stage = Stage::Done;
    }
}

/// One v2 TTS websocket connection.
pub(crate) struct TtsV2Session {
    server: Arc<ServerState>,
    params: SessionParams,
    /// Serves the non-streaming (`ssml`) requests.
    classic: TtsSession,
    config_seen: bool,
    defaults: TtsOptions,
    current: Option<StreamTurn>,
    finished: VecDeque<String>,
}

impl TtsV2Session {
    pub(crate) fn new(server: Arc<ServerState>, params: SessionParams) -> Self {
        Self {
            classic: TtsSession::new(Arc::clone(&server), params.clone()),
            server,
            params,
            config_seen: false,
            defaults: TtsOptions::default(),
            current: None,
            finished: VecDeque::new(),
        }
    }

    fn violation(&self, what: &str) -> Result<(), Stop> {
        if self.server.emulator.config.strict {
            Err(Stop::Close(1002, what.to_owned()))
        } else {
            tracing::debug!(what, "tolerated protocol violation");
            Ok(())
        }
    }

    fn rtt(&self) -> Duration {
        self.server.emulator.config.rtt
    }

    /// A streaming `synthesis.context`: starts the request.
    fn start(&mut self, request_id: Option<&str>, opts: TtsOptions) -> Result<(), Stop> {
        if !self.config_seen {
            self.violation("speech.config must precede the first synthesis.context")?;
        }
        if self.current.is_some() || self.classic.busy() {
            // Azure serialises requests on a socket; overlapping ones are a client bug.
            return Err(Stop::Close(1002, "a turn is already in progress".into()));
        }
        let request_id = match request_id.filter(|r| !r.is_empty()) {
            Some(r) => r.to_owned(),
            None => {
                self.violation("missing X-RequestId")?;
                new_hex_id()
            }
        };
        if self
            .finished
            .iter()
            .any(|f| f.eq_ignore_ascii_case(&request_id))
        {
            self.violation("X-RequestId reused")?;
        }
        let emulator = &self.server.emulator;
        let faults = TurnFaults::new(emulator.take_faults(
            Phase::Turn,
            Some(Endpoint::TtsWs),
            Some(&self.params.identity),
        ));
        emulator.counters.inc(&emulator.counters.turns_started);
        if let Some(stop) = faults.stop_before_start() {
            return Err(stop);
        }
        self.current = Some(StreamTurn::new(request_id, opts, faults));
        Ok(())
    }

    /// The streaming request a `text.*` message belongs to; `None` (after a tolerated
    /// violation) when there is none or the id is another one.
    fn turn_for(&mut self, msg: &TextMessage) -> Result<Option<&mut StreamTurn>, Stop> {
        let matches = match (&self.current, msg.headers.request_id()) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(t), Some(id)) => id.is_empty() || id.eq_ignore_ascii_case(&t.request_id),
        };
        if !matches {
            let late = msg
                .headers
                .request_id()
                .is_some_and(|id| self.finished.iter().any(|f| f.eq_ignore_ascii_case(id)));
            // Text for a request that a stop already ended is expected, not a violation.
            if !late {
                self.violation("text for no streaming request")?;
            }
            return Ok(None);
        }
        Ok(self.current.as_mut())
    }
}

impl Protocol for TtsV2Session {
    fn on_text(&mut self, out: &mut Outbox, msg: TextMessage) -> Result<(), Stop> {
        let Some(path) = msg.headers.path().map(str::to_ascii_lowercase) else {
            return self.violation("missing Path header");
        };
        match path.as_str() {
            "speech.config" => {
                self.config_seen = true;
                if let Ok(v) = serde_json::from_str::<Value>(&msg.body)
                    && let Some(audio) = v.pointer("/context/synthesis/audio")
                {
                    self.defaults = self
                        .defaults
                        .apply(audio)
                        .map_err(|e| Stop::Close(1007, e))?;
                }
                self.classic.on_text(out, msg)
            }
            "synthesis.context" => {
                let v: Value = serde_json::from_str(&msg.body)
                    .map_err(|_| Stop::Close(1007, "synthesis.context is not JSON".into()))?;
                let streaming = v
                    .pointer("/synthesis/input/bidirectionalStreamingMode")
                    .is_some_and(|b| b.as_bool() == Some(true) || b.as_str() == Some("true"));
                if !streaming {
                    return self.classic.on_text(out, msg);
                }
                let opts = match v.pointer("/synthesis/audio") {
                    Some(audio) => self
                        .defaults
                        .apply(audio)
                        .map_err(|e| Stop::Close(1007, e))?,
                    None => self.defaults,
                };
                self.start(msg.headers.request_id(), opts)
            }
            "text.piece" => {
                let rtt = self.rtt();
                match self.turn_for(&msg)? {
                    Some(t) => t.piece(&msg.body, rtt),
                    None => Ok(()),
                }
            }
            "text.end" => {
                let rtt = self.rtt();
                if let Some(t) = self.turn_for(&msg)? {
                    t.end(rtt);
                }
                Ok(())
            }
            "synthesis.control" => {
                let stop = serde_json::from_str::<Value>(&msg.body)
                    .ok()
                    .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_owned))
                    .is_some_and(|a| a.eq_ignore_ascii_case("stop"));
                if stop && let Some(t) = &mut self.current {
                    t.stopped = true;
                    return Ok(());
                }
                self.classic.on_text(out, msg)
            }
            _ => self.classic.on_text(out, msg),
        }
    }

    fn on_binary(&mut self, out: &mut Outbox, msg: BinaryMessage) -> Result<(), Stop> {
        self.classic.on_binary(out, msg)
    }

    fn wants_refill(&self) -> bool {
        match &self.current {
            Some(t) => t.wants_refill(),
            None => self.classic.wants_refill(),
        }
    }

    fn refill(&mut self, out: &mut Outbox) {
        let rtt = self.rtt();
        let Some(t) = &mut self.current else {
            self.classic.refill(out);
            return;
        };
        t.step(out, rtt);
        if t.stage == Stage::Done {
            if self.finished.len() >= 256 {
                self.finished.pop_front();
            }
            self.finished.push_back(t.request_id.clone());
            self.current = None;
        }
    }

    fn busy(&self) -> bool {
        // A streaming request waiting for text is in a turn: the idle timer does not run.
        self.current
            .as_ref()
            .is_some_and(|t| t.stage != Stage::Stalled)
            || self.classic.busy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_clauses_and_after_enough_words() {
        assert_eq!(cut_point("Hello"), None);
        assert_eq!(
            cut_point("Hello,"),
            None,
            "the comma may be a thousands separator"
        );
        assert_eq!(cut_point("Hello, wor"), Some(6));
        assert_eq!(cut_point("3,000 apples"), None);
        assert_eq!(cut_point("One. Two! Three"), Some(9));
        let eight = "a b c d e f g h i";
        assert_eq!(cut_point(eight), Some(15));
        assert_eq!(cut_point("a b c d e f g h"), None);
    }

    #[test]
    fn word_offsets_continue_across_segments() {
        let first = word_metadata("Hi there", 0);
        let second = word_metadata("again", 5_000_000);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].0, Timeline::char_offset_ticks(0));
        assert_eq!(first[1].0, Timeline::char_offset_ticks(3));
        assert_eq!(second[0].0, 5_000_000 + Timeline::char_offset_ticks(0));
        assert!(second[0].1.contains("\"again\""));
    }
}
