//! The TTS websocket protocol (docs/protocol.md#tts-over-websocket): `speech.config` once,
//! then per request
//! `synthesis.context` + `ssml`, answered by `turn.start`, `response` (with the stream id),
//! binary `audio` frames, `audio.metadata`, an empty `audio` frame and `turn.end`.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::audio::{MS_PER_CHAR, SynthAudio, TICKS_PER_MS, Timeline};
use crate::faults::{Endpoint, Phase, TurnPoint};
use crate::formats::{DEFAULT_FORMAT, OutputFormat};
use crate::frame::{self, BinaryMessage, HeaderStyle, TextMessage};
use crate::session::{Outbox, Outgoing, Protocol, SessionParams, Stop, new_hex_id, service_text};
use crate::ssml::{self, Ssml};
use crate::state::ServerState;
use crate::time::deadline_after;
use crate::turn::TurnFaults;

/// SSML over websocket is limited to 64 KiB per turn (docs/protocol.md#limits-and-timers).
pub(crate) const MAX_SSML_WS: usize = 64 * 1024;

/// At most this many requests wait behind the current one (lenient mode queues overlapping
/// requests; an unbounded queue would let one client exhaust memory).
const MAX_QUEUED: usize = 32;

/// Recently finished request ids remembered for strict-mode reuse checks.
const REMEMBERED_IDS: usize = 256;

/// Output options of one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TtsOptions {
    pub(crate) format: &'static OutputFormat,
    pub(crate) word: bool,
    punctuation: bool,
    sentence: bool,
    pub(crate) session_end: bool,
    viseme: bool,
    bookmark: bool,
}

impl Default for TtsOptions {
    fn default() -> Self {
        Self {
            // `DEFAULT_FORMAT` is in the table (a unit test checks it).
            format: OutputFormat::by_name(DEFAULT_FORMAT).unwrap_or(&OutputFormat::all()[0]),
            word: false,
            punctuation: false,
            sentence: false,
            session_end: false,
            viseme: false,
            bookmark: false,
        }
    }
}

/// A JSON flag that may arrive as a boolean or as the string `"true"`: the JavaScript SDK
/// sends some metadata options as strings (docs/protocol.md#tts-over-websocket).
fn truthy(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => Some(s.eq_ignore_ascii_case("true")),
        _ => None,
    }
}

impl TtsOptions {
    /// Applies a `synthesis.audio` object (`outputFormat`, `metadataOptions`) over `self`.
    pub(crate) fn apply(mut self, audio: &Value) -> Result<Self, String> {
        if let Some(f) = audio.get("outputFormat").and_then(Value::as_str) {
            self.format =
                OutputFormat::by_name(f).ok_or_else(|| format!("Unsupported output format {f}"))?;
        }
        // Edge-style clients write the option names in lowercase.
        let md = audio
            .get("metadataOptions")
            .or_else(|| audio.get("metadataoptions"));
        if let Some(md) = md {
            let get = |k: &str| {
                truthy(md.get(k)).or_else(|| truthy(md.get(k.to_ascii_lowercase().as_str())))
            };
            self.word = get("wordBoundaryEnabled").unwrap_or(self.word);
            self.punctuation = get("punctuationBoundaryEnabled").unwrap_or(self.punctuation);
            self.sentence = get("sentenceBoundaryEnabled").unwrap_or(self.sentence);
            self.session_end = get("sessionEndEnabled").unwrap_or(self.session_end);
            self.viseme = get("visemeEnabled").unwrap_or(self.viseme);
            self.bookmark = get("bookmarkEnabled").unwrap_or(self.bookmark);
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Response,
    Audio,
    Tail,
    Stalled,
    Done,
}

/// One synthesis request, from queueing to `turn.end`.
#[derive(Debug)]
struct TtsTurn {
    request_id: String,
    stream_id: String,
    service_tag: String,
    audio: SynthAudio,
    opts: TtsOptions,
    metadata: VecDeque<(u64, String)>,
    sent: u64,
    chunk: usize,
    frames: u32,
    stage: Stage,
    stopped: bool,
    faults: TurnFaults,
    style: HeaderStyle,
}

impl TtsTurn {
    fn new(request_id: String, doc: &Ssml, opts: TtsOptions, faults: TurnFaults) -> Self {
        let audio = SynthAudio::new(opts.format, Timeline::new(&doc.text));
        // About 100 ms of audio per frame, as the service chunks it, within the legacy 8 KiB.
        let mut chunk = (opts.format.bytes_per_sec / 10).clamp(256, 8192) as usize;
        chunk -= chunk % 2;
        let style = faults.style();
        Self {
            metadata: metadata(doc, &opts).into(),
            request_id,
            stream_id: new_hex_id(),
            service_tag: new_hex_id().to_ascii_lowercase(),
            audio,
            opts,
            sent: 0,
            chunk,
            frames: 0,
            stage: Stage::Start,
            stopped: false,
            faults,
            style,
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

    /// Schedules the next step of the turn.
    fn step(&mut self, out: &mut Outbox, rtt: std::time::Duration) {
        match self.stage {
            Stage::Start => {
                // The first response of a turn costs one round trip (plus injected delay).
                let at = deadline_after(
                    Instant::now(),
                    rtt.saturating_add(self.faults.turn_start_delay),
                );
                let body = json!({"context": {"serviceTag": self.service_tag}}).to_string();
                out.push_at(at, self.text("turn.start", &body));
                if self.faults.quirks {
                    out.push(self.text(
                        "emulator.unknown",
                        r#"{"note":"clients must ignore unknown paths"}"#,
                    ));
                }
                if let Some(action) = self.faults.action_at(TurnPoint::AfterTurnStart) {
                    out.push(action);
                    self.stage = Stage::Done;
                } else if self.faults.stall == Some(0) {
                    self.stage = Stage::Stalled;
                } else {
                    self.stage = Stage::Response;
                }
            }
            Stage::Response => {
                let body = json!({
                    "context": {"serviceTag": self.service_tag},
                    "audio": {"type": "inline", "streamId": self.stream_id},
                })
                .to_string();
                out.push(self.text("response", &body));
                self.stage = Stage::Audio;
            }
            Stage::Audio => {
                if self.stopped || self.sent >= self.audio.total_len() {
                    self.stage = Stage::Tail;
                    return;
                }
                let at = if self.frames == 0 {
                    deadline_after(Instant::now(), self.faults.first_audio_delay)
                } else {
                    Instant::now()
                };
                let data = self.audio.chunk(self.sent, self.chunk);
                self.sent += data.len() as u64;
                // Word boundaries go just ahead of the audio they describe.
                let covered = self.audio.ms_at_byte(self.sent) * TICKS_PER_MS;
                while self.metadata.front().is_some_and(|(o, _)| *o <= covered) {
                    if let Some((_, body)) = self.metadata.pop_front() {
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
            }
            Stage::Tail => {
                if !self.stopped {
                    while let Some((_, body)) = self.metadata.pop_front() {
                        out.push(self.text("audio.metadata", &body));
                    }
                }
                if self.opts.session_end {
                    let ticks = self.audio.ms_at_byte(self.sent) * TICKS_PER_MS;
                    let body =
                        json!({"Metadata": [{"Type": "SessionEnd", "Data": {"Offset": ticks}}]});
                    out.push(self.text("audio.metadata", &body.to_string()));
                }
                out.push(self.audio_frame(&[], false));
                if self.faults.quirks {
                    out.push(self.audio_frame(&[], false));
                }
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
            Stage::Stalled | Stage::Done => {}
        }
    }
}

/// The `audio.metadata` messages of a request, by offset (100-ns ticks).
fn metadata(doc: &Ssml, opts: &TtsOptions) -> Vec<(u64, String)> {
    let chars: Vec<char> = doc.text.chars().collect();
    let ticks_per_char = MS_PER_CHAR * TICKS_PER_MS;
    let item =
        |kind: &str, data: Value| json!({"Metadata": [{"Type": kind, "Data": data}]}).to_string();
    let boundary = |start: usize, len: usize, kind: &str, boundary: &str| {
        let text: String = chars[start..start + len].iter().collect();
        item(
            kind,
            json!({
                "Offset": Timeline::char_offset_ticks(start),
                "Duration": len as u64 * ticks_per_char,
                "text": {"Text": text, "Length": len, "BoundaryType": boundary},
            }),
        )
    };
    let mut items: Vec<(u64, String)> = Vec::new();
    if opts.sentence {
        let mut start = None;
        for (i, c) in chars.iter().enumerate() {
            if start.is_none() && !c.is_whitespace() {
                start = Some(i);
            }
            let last = i + 1 == chars.len();
            if let Some(s) = start
                && (matches!(c, '.' | '!' | '?') || last)
            {
                items.push((
                    Timeline::char_offset_ticks(s),
                    boundary(s, i + 1 - s, "SentenceBoundary", "SentenceBoundary"),
                ));
                start = None;
            }
        }
    }
    let mut i = 0;
    let mut word_index = 0u32;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric()
                    || (chars[i] == '\'' && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric())))
            {
                i += 1;
            }
            let offset = Timeline::char_offset_ticks(start);
            if opts.word {
                items.push((
                    offset,
                    boundary(start, i - start, "WordBoundary", "WordBoundary"),
                ));
            }
            if opts.viseme {
                let id = (u32::from(c.to_ascii_lowercase()) + word_index) % 22;
                items.push((
                    offset,
                    item(
                        "Viseme",
                        json!({"Offset": offset, "VisemeId": id, "IsLastAnimation": false}),
                    ),
                ));
            }
            word_index += 1;
        } else {
            if !c.is_whitespace() && opts.punctuation {
                items.push((
                    Timeline::char_offset_ticks(i),
                    boundary(i, 1, "WordBoundary", "PunctuationBoundary"),
                ));
            }
            i += 1;
        }
    }
    if opts.bookmark {
        for (mark, at) in &doc.bookmarks {
            let offset = Timeline::char_offset_ticks(*at);
            items.push((
                offset,
                item("Bookmark", json!({"Offset": offset, "Bookmark": mark})),
            ));
        }
    }
    // Stable: at equal offsets sentences come before words, as the service orders them.
    items.sort_by_key(|(o, _)| *o);
    items
}

/// One TTS websocket connection.
pub(crate) struct TtsSession {
    server: Arc<ServerState>,
    params: SessionParams,
    config_seen: bool,
    defaults: TtsOptions,
    context: Option<(Option<String>, TtsOptions)>,
    queue: VecDeque<TtsTurn>,
    current: Option<TtsTurn>,
    finished: VecDeque<String>,
}

impl TtsSession {
    pub(crate) fn new(server: Arc<ServerState>, params: SessionParams) -> Self {
        Self {
            server,
            params,
            config_seen: false,
            defaults: TtsOptions::default(),
            context: None,
            queue: VecDeque::new(),
            current: None,
            finished: VecDeque::new(),
        }
    }

    fn strict(&self) -> bool {
        self.server.emulator.config.strict
    }

    fn violation(&self, what: &str) -> Result<(), Stop> {
        if self.strict() {
            Err(Stop::Close(1002, what.to_owned()))
        } else {
            tracing::debug!(what, "tolerated protocol violation");
            Ok(())
        }
    }

    fn on_ssml(&mut self, msg: TextMessage) -> Result<(), Stop> {
        if msg.body.len() > MAX_SSML_WS {
            return Err(Stop::Close(1007, "SSML exceeds the 64 KB limit".into()));
        }
        if !self.config_seen {
            self.violation("speech.config must precede the first ssml")?;
        }
        let request_id = match msg.headers.request_id().filter(|r| !r.is_empty()) {
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
            || self
                .queue
                .iter()
                .any(|t| t.request_id.eq_ignore_ascii_case(&request_id))
        {
            self.violation("X-RequestId reused")?;
        }
        if self.current.is_some() || !self.queue.is_empty() {
            self.violation("a turn is already in progress")?;
        }
        if self.queue.len() >= MAX_QUEUED {
            return Err(Stop::Close(1013, "Too many queued requests".into()));
        }
        let doc =
            ssml::parse(&msg.body).map_err(|e| Stop::Close(1007, format!("Invalid SSML: {e}")))?;
        let opts = match &self.context {
            Some((Some(crid), o)) if crid.eq_ignore_ascii_case(&request_id) => *o,
            Some((None, o)) => *o,
            _ => self.defaults,
        };
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
        self.queue
            .push_back(TtsTurn::new(request_id, &doc, opts, faults));
        Ok(())
    }
}

impl TtsSession {
    /// `synthesis.control` stop, as the service answers it: no more audio for the turn
    /// (frames already scheduled but not yet written are dropped too), then the normal end
    /// of turn (empty audio frame, `turn.end`), and the connection serves the next turn.
    /// A stop naming another request (one that already ended: the stop crossed its
    /// `turn.end` on the wire) is ignored, so it cannot cut the next turn short.
    fn on_stop(&mut self, out: &mut Outbox, request_id: Option<&str>) {
        let names = |t: &TtsTurn| {
            request_id
                .filter(|r| !r.is_empty())
                .is_none_or(|r| r.eq_ignore_ascii_case(&t.request_id))
        };
        // Only the current turn has messages in the outbox; a queued one has none yet.
        let (turn, current) = match &mut self.current {
            Some(t) if names(t) => (Some(t), true),
            _ => (self.queue.iter_mut().find(|t| names(t)), false),
        };
        let Some(turn) = turn else {
            tracing::debug!(request_id, "stop for no running turn; ignored");
            return;
        };
        if turn.stopped || matches!(turn.stage, Stage::Tail | Stage::Done) {
            return;
        }
        turn.stopped = true;
        if current && turn.stage == Stage::Audio {
            out.drop_binary();
        }
        let c = &self.server.emulator.counters;
        c.inc(&c.turns_stopped);
    }
}

impl Protocol for TtsSession {
    fn on_text(&mut self, out: &mut Outbox, msg: TextMessage) -> Result<(), Stop> {
        let Some(path) = msg.headers.path().map(str::to_ascii_lowercase) else {
            return self.violation("missing Path header");
        };
        match path.as_str() {
            "speech.config" => {
                if self.config_seen {
                    self.violation("speech.config sent twice")?;
                }
                self.config_seen = true;
                // Edge-style clients put the output options here instead of sending
                // synthesis.context; honour them as the connection's defaults.
                if let Ok(v) = serde_json::from_str::<Value>(&msg.body)
                    && let Some(audio) = v.pointer("/context/synthesis/audio")
                {
                    self.defaults = self
                        .defaults
                        .apply(audio)
                        .map_err(|e| Stop::Close(1007, e))?;
                }
                Ok(())
            }
            "synthesis.context" => {
                let v: Value = serde_json::from_str(&msg.body)
                    .map_err(|_| Stop::Close(1007, "synthesis.context is not JSON".into()))?;
                let opts = match v.pointer("/synthesis/audio") {
                    Some(audio) => self
                        .defaults
                        .apply(audio)
                        .map_err(|e| Stop::Close(1007, e))?,
                    None => self.defaults,
                };
                let request_id = msg.headers.request_id().map(str::to_owned);
                self.context = Some((request_id, opts));
                Ok(())
            }
            "ssml" => self.on_ssml(msg),
            "synthesis.control" => {
                let stop = serde_json::from_str::<Value>(&msg.body)
                    .ok()
                    .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_owned))
                    .is_some_and(|a| a.eq_ignore_ascii_case("stop"));
                if stop {
                    self.on_stop(out, msg.headers.request_id());
                }
                Ok(())
            }
            // telemetry, text streaming (v2) and anything new: accepted and ignored.
            _ => Ok(()),
        }
    }

    fn on_binary(&mut self, _out: &mut Outbox, _msg: BinaryMessage) -> Result<(), Stop> {
        self.violation("unexpected binary message on the TTS socket")
    }

    fn wants_refill(&self) -> bool {
        match &self.current {
            Some(t) => !matches!(t.stage, Stage::Stalled),
            None => !self.queue.is_empty(),
        }
    }

    fn refill(&mut self, out: &mut Outbox) {
        if self.current.is_none() {
            self.current = self.queue.pop_front();
        }
        let rtt = self.server.emulator.config.rtt;
        if let Some(t) = &mut self.current {
            t.step(out, rtt);
            if t.stage == Stage::Done {
                if self.finished.len() >= REMEMBERED_IDS {
                    self.finished.pop_front();
                }
                self.finished.push_back(t.request_id.clone());
                self.current = None;
            }
        }
    }

    fn busy(&self) -> bool {
        self.wants_refill()
    }
}
