//! The STT websocket protocol (docs/protocol.md#stt-over-websocket): `speech.config` once,
//! per turn `speech.context` and a RIFF header frame, then PCM `audio` frames and an empty
//! one; answered by `turn.start`, `speech.startDetected`, a `speech.hypothesis` per ~300 ms
//! of audio, `speech.endDetected`, `speech.phrase` (simple or detailed) and `turn.end`.
//! What is "heard" comes from the `recognition` module.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::faults::{Endpoint, Phase, TurnPoint};
use crate::frame::{BinaryMessage, HeaderStyle, TextMessage};
use crate::http as h;
use crate::recognition::{AudioFormat, lexical_words, parse_riff, phrase_json};
use crate::scripted::{Segment, Segmenter, phrase_text};
use crate::session::{
    Outbox, Outgoing, Protocol, SessionParams, Stop, SttMode, new_hex_id, service_text,
};
use crate::state::ServerState;
use crate::time::deadline_after;
use crate::turn::TurnFaults;

/// Recently finished request ids remembered, so late audio of an ended turn is ignored.
const REMEMBERED_IDS: usize = 256;

/// One recognition turn.
#[derive(Debug)]
struct SttTurn {
    request_id: String,
    fmt: AudioFormat,
    bytes: u64,
    frames: u32,
    phrase_start: u64,
    hypotheses_sent: u64,
    speech_started: bool,
    first_result_sent: bool,
    done: bool,
    stalled: bool,
    detailed: bool,
    word_timings: bool,
    faults: TurnFaults,
    style: HeaderStyle,
    transcript: String,
    bytes_per_hypothesis: u64,
    max_phrase_bytes: u64,
    continuous: bool,
    /// Scripted audio (`EmulatorConfig::scripted_audio`): phrases come from the samples.
    script: Option<Segmenter>,
}

impl SttTurn {
    fn message(&self, path: &str, body: &Value) -> Outgoing {
        Outgoing::Text(service_text(
            &self.request_id,
            path,
            &body.to_string(),
            self.style,
        ))
    }

    /// Queues a result; the first one waits out any injected first-result delay.
    fn result(&mut self, out: &mut Outbox, path: &str, body: &Value) {
        let m = self.message(path, body);
        if self.first_result_sent {
            out.push(m);
        } else {
            self.first_result_sent = true;
            out.push_at(
                deadline_after(Instant::now(), self.faults.first_audio_delay),
                m,
            );
        }
    }

    fn hypothesis_text(&self) -> String {
        let words = lexical_words(&self.transcript);
        let n = usize::try_from(self.hypotheses_sent)
            .unwrap_or(usize::MAX)
            .min(words.len())
            .max(1);
        words.iter().take(n).cloned().collect::<Vec<_>>().join(" ")
    }

    fn phrase(&mut self, out: &mut Outbox, start: u64, end: u64) {
        let body = phrase_json(
            &self.transcript,
            self.fmt.ticks(start),
            self.fmt.ticks(end - start),
            self.detailed,
            self.word_timings,
        );
        self.result(out, "speech.phrase", &body);
    }

    fn end_turn(&mut self, out: &mut Outbox) {
        out.push(Outgoing::TurnEnd(service_text(
            &self.request_id,
            "turn.end",
            "{}",
            self.style,
        )));
        if let Some(action) = self.faults.action_at(TurnPoint::AfterTurnEnd) {
            out.push(action);
        }
        self.done = true;
    }

    /// Audio bytes arrived (not the header frame).
    fn audio(&mut self, out: &mut Outbox, data: &[u8]) {
        self.frames += 1;
        self.samples(out, data);
        if self.done {
            return;
        }
        if let Some(action) = self.faults.action_at(TurnPoint::AfterFrames(self.frames)) {
            out.push(action);
            self.done = true;
        } else if self.faults.stall == Some(self.frames) {
            self.stalled = true;
        }
    }

    /// Counts `data` as received and emits the results it calls for.
    fn samples(&mut self, out: &mut Outbox, data: &[u8]) {
        self.bytes += data.len() as u64;
        if self.done || self.stalled {
            return;
        }
        match self.script.as_mut() {
            Some(script) => {
                let segments = script.feed(data);
                self.scripted(out, segments);
            }
            None => self.results(out),
        }
    }

    /// Emits the results of scripted audio (see the `scripted` module).
    fn scripted(&mut self, out: &mut Outbox, segments: Vec<Segment>) {
        for segment in segments {
            if self.done {
                return;
            }
            match segment {
                Segment::Start { at, .. } => {
                    self.hypotheses_sent = 0;
                    let body = json!({"Offset": self.fmt.ticks(at)});
                    self.result(out, "speech.startDetected", &body);
                }
                Segment::Progress { key, start, heard } => {
                    let words = lexical_words(&phrase_text(&self.transcript, key));
                    while (self.hypotheses_sent + 1).saturating_mul(self.bytes_per_hypothesis)
                        <= heard
                    {
                        self.hypotheses_sent += 1;
                        let n = usize::try_from(self.hypotheses_sent)
                            .unwrap_or(usize::MAX)
                            .min(words.len());
                        let body = json!({
                            "Text": words[..n].join(" "),
                            "Offset": self.fmt.ticks(start),
                            "Duration": self.fmt.ticks(self.hypotheses_sent * self.bytes_per_hypothesis),
                        });
                        self.result(out, "speech.hypothesis", &body);
                    }
                }
                Segment::End { key, start, end } => {
                    let body = json!({"Offset": self.fmt.ticks(end)});
                    self.result(out, "speech.endDetected", &body);
                    let body = phrase_json(
                        &phrase_text(&self.transcript, key),
                        self.fmt.ticks(start),
                        self.fmt.ticks(end - start),
                        self.detailed,
                        self.word_timings,
                    );
                    self.result(out, "speech.phrase", &body);
                    if !self.continuous {
                        self.end_turn(out);
                    }
                }
            }
        }
    }

    /// Emits the results the audio received so far calls for.
    fn results(&mut self, out: &mut Outbox) {
        loop {
            let in_phrase = self.bytes - self.phrase_start;
            if in_phrase == 0 {
                return;
            }
            if !self.speech_started {
                self.speech_started = true;
                let body = json!({"Offset": self.fmt.ticks(self.phrase_start)});
                self.result(out, "speech.startDetected", &body);
            }
            let heard = in_phrase.min(self.max_phrase_bytes);
            while (self.hypotheses_sent + 1).saturating_mul(self.bytes_per_hypothesis) <= heard {
                self.hypotheses_sent += 1;
                let body = json!({
                    "Text": self.hypothesis_text(),
                    "Offset": self.fmt.ticks(self.phrase_start),
                    "Duration": self.fmt.ticks(self.hypotheses_sent * self.bytes_per_hypothesis),
                });
                self.result(out, "speech.hypothesis", &body);
            }
            if in_phrase < self.max_phrase_bytes {
                return;
            }
            // The phrase is complete: the service segments long speech.
            let end = self.phrase_start + self.max_phrase_bytes;
            if self.continuous {
                self.phrase(out, self.phrase_start, end);
                self.phrase_start = end;
                self.hypotheses_sent = 0;
                self.speech_started = false;
            } else {
                let body = json!({"Offset": self.fmt.ticks(end)});
                self.result(out, "speech.endDetected", &body);
                self.phrase(out, self.phrase_start, end);
                self.end_turn(out);
                return;
            }
        }
    }

    /// The empty `audio` frame: end of this turn's audio.
    fn end_of_audio(&mut self, out: &mut Outbox) {
        if self.done || self.stalled {
            return;
        }
        if let Some(script) = self.script.as_mut() {
            // Scripted audio ends what is being said; silence alone is no phrase.
            let last = script.finish();
            self.scripted(out, last.into_iter().collect());
            if !self.done {
                self.end_turn(out);
            }
            return;
        }
        if self.bytes == 0 {
            // A turn without audio fails in-band, as the service answers it
            // (docs/protocol.md#stt-over-websocket, "a turn without audio").
            self.result(out, "speech.endDetected", &json!({"Offset": 0}));
            let body = json!({"RecognitionStatus": "Error", "Offset": 0, "Duration": 0});
            self.result(out, "speech.phrase", &body);
        } else {
            let body = json!({"Offset": self.fmt.ticks(self.bytes)});
            self.result(out, "speech.endDetected", &body);
            if self.bytes > self.phrase_start {
                self.phrase(out, self.phrase_start, self.bytes);
            }
        }
        self.end_turn(out);
    }
}

/// One STT websocket connection.
pub(crate) struct SttSession {
    server: Arc<ServerState>,
    params: SessionParams,
    mode: SttMode,
    config_seen: bool,
    context: Option<(Option<String>, Value)>,
    turn: Option<SttTurn>,
    finished: VecDeque<String>,
}

impl SttSession {
    pub(crate) fn new(server: Arc<ServerState>, params: SessionParams) -> Self {
        Self {
            mode: params.mode.unwrap_or(SttMode::Conversation),
            server,
            params,
            config_seen: false,
            context: None,
            turn: None,
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

    fn remember(&mut self, request_id: String) {
        if self.finished.len() >= REMEMBERED_IDS {
            self.finished.pop_front();
        }
        self.finished.push_back(request_id);
    }

    /// Output options for a new turn: the query, overridden by a matching `speech.context`.
    fn output_options(&self, request_id: &str) -> (bool, bool) {
        let q = &self.params.query;
        let mut detailed =
            h::query_get(q, "format").is_some_and(|f| f.eq_ignore_ascii_case("detailed"));
        let mut words =
            h::query_get(q, "wordLevelTimestamps").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let ctx = match &self.context {
            Some((Some(c), v)) if c.eq_ignore_ascii_case(request_id) => Some(v),
            Some((None, v)) => Some(v),
            _ => None,
        };
        if let Some(po) = ctx.and_then(|v| v.get("phraseOutput")) {
            if let Some(f) = po.get("format").and_then(Value::as_str) {
                detailed = f.eq_ignore_ascii_case("detailed");
            }
            let has_wt = po
                .pointer("/detailed/options")
                .and_then(Value::as_array)
                .is_some_and(|o| o.iter().any(|x| x.as_str() == Some("WordTimings")));
            if has_wt {
                detailed = true;
                words = true;
            }
        }
        (detailed, words)
    }

    fn start_turn(
        &mut self,
        out: &mut Outbox,
        msg: &BinaryMessage,
        request_id: String,
    ) -> Result<(), Stop> {
        if !self.config_seen {
            self.violation("speech.config must precede the first audio")?;
        }
        let payload = &msg.payload;
        let content_type = msg
            .headers
            .get("Content-Type")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (fmt, data_at) = if payload.starts_with(b"RIFF") {
            parse_riff(payload).map_err(|e| Stop::Close(1007, e.to_owned()))?
        } else if payload.starts_with(b"OggS") || content_type.contains("ogg") {
            // Opus: no header to read; time it at a typical 32 kbit/s.
            (
                AudioFormat {
                    sample_rate: 16000,
                    bytes_per_sec: 4000,
                },
                0,
            )
        } else {
            return Err(Stop::Close(
                1007,
                "Invalid audio header: the first audio message must carry a RIFF/WAVE header"
                    .into(),
            ));
        };
        let emulator = Arc::clone(&self.server.emulator);
        let faults = TurnFaults::new(emulator.take_faults(
            Phase::Turn,
            Some(Endpoint::SttWs),
            Some(&self.params.identity),
        ));
        emulator.counters.inc(&emulator.counters.turns_started);
        if let Some(stop) = faults.stop_before_start() {
            return Err(stop);
        }
        let (detailed, word_timings) = self.output_options(&request_id);
        let cfg = &emulator.config;
        let style = faults.style();
        let mut turn = SttTurn {
            request_id,
            fmt,
            bytes: 0,
            frames: 0,
            phrase_start: 0,
            hypotheses_sent: 0,
            speech_started: false,
            first_result_sent: false,
            done: false,
            stalled: false,
            detailed,
            word_timings,
            style,
            transcript: emulator.transcript(),
            bytes_per_hypothesis: fmt.bytes_for_ms(cfg.hypothesis_interval.as_millis().max(1)),
            max_phrase_bytes: fmt.bytes_for_ms(cfg.max_phrase.as_millis().max(1)),
            continuous: self.mode.continuous(),
            script: cfg
                .scripted_audio
                .then(|| Segmenter::new(fmt.bytes_for_ms(cfg.phrase_silence.as_millis().max(1)))),
            faults,
        };
        let at = deadline_after(
            Instant::now(),
            cfg.rtt.saturating_add(turn.faults.turn_start_delay),
        );
        let tag = new_hex_id().to_ascii_lowercase();
        out.push_at(
            at,
            turn.message("turn.start", &json!({"context": {"serviceTag": tag}})),
        );
        if turn.faults.quirks {
            out.push(turn.message(
                "emulator.unknown",
                &json!({"note": "clients must ignore unknown paths"}),
            ));
        }
        if let Some(status) = turn.faults.phrase_error.clone() {
            let body = json!({"RecognitionStatus": status, "Offset": 0, "Duration": 0});
            turn.result(out, "speech.phrase", &body);
            turn.end_turn(out);
        } else if let Some(action) = turn.faults.action_at(TurnPoint::AfterTurnStart) {
            out.push(action);
            turn.done = true;
        } else if turn.faults.stall == Some(0) {
            turn.stalled = true;
        }
        let rest = payload.get(data_at..).unwrap_or_default();
        if !rest.is_empty() && !turn.done {
            // Header and samples in one message: count the samples, not as a new frame.
            turn.samples(out, rest);
        }
        self.turn = Some(turn);
        Ok(())
    }
}

impl Protocol for SttSession {
    fn in_turn(&self) -> bool {
        self.turn.is_some()
    }

    fn on_text(&mut self, _out: &mut Outbox, msg: TextMessage) -> Result<(), Stop> {
        let Some(path) = msg.headers.path().map(str::to_ascii_lowercase) else {
            return self.violation("missing Path header");
        };
        match path.as_str() {
            "speech.config" => {
                if self.config_seen {
                    self.violation("speech.config sent twice")?;
                }
                self.config_seen = true;
                Ok(())
            }
            "speech.context" => {
                // Per turn; kept until the turn it names (or the next one) starts.
                let v = serde_json::from_str::<Value>(&msg.body).unwrap_or(Value::Null);
                self.context = Some((msg.headers.request_id().map(str::to_owned), v));
                Ok(())
            }
            // telemetry and anything else: accepted and ignored.
            _ => Ok(()),
        }
    }

    fn on_binary(&mut self, out: &mut Outbox, msg: BinaryMessage) -> Result<(), Stop> {
        match msg.headers.path() {
            Some(p) if p.eq_ignore_ascii_case("audio") => {}
            Some(_) => return Ok(()),
            None => self.violation("missing Path header")?,
        }
        let request_id = match msg.headers.request_id().filter(|r| !r.is_empty()) {
            Some(r) => r.to_owned(),
            None => {
                self.violation("missing X-RequestId")?;
                // Lenient: audio without an id continues the current turn.
                match &self.turn {
                    Some(t) => t.request_id.clone(),
                    None => new_hex_id(),
                }
            }
        };
        if let Some(t) = &mut self.turn
            && t.request_id.eq_ignore_ascii_case(&request_id)
        {
            if msg.payload.is_empty() {
                t.end_of_audio(out);
            } else {
                t.audio(out, &msg.payload);
            }
            if t.done {
                let request_id = t.request_id.clone();
                self.turn = None;
                self.remember(request_id);
            }
            return Ok(());
        }
        if self
            .finished
            .iter()
            .any(|f| f.eq_ignore_ascii_case(&request_id))
        {
            // Late audio for a turn the service already ended (interactive mode).
            return Ok(());
        }
        if self.turn.take().is_some() {
            // A new request id discards whatever the previous turn still had pending.
            out.clear();
        }
        if msg.payload.is_empty() {
            return self.violation("empty audio message without a turn");
        }
        self.start_turn(out, &msg, request_id)?;
        if let Some(t) = &self.turn
            && t.done
        {
            let request_id = t.request_id.clone();
            self.turn = None;
            self.remember(request_id);
        }
        Ok(())
    }
}
