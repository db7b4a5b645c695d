//! The STT websocket protocol (spec §5): `speech.config` once, per turn `speech.context`
//! and a RIFF header frame, then PCM `audio` frames and an empty one; answered by
//! `turn.start`, `speech.startDetected`, a `speech.hypothesis` per ~300 ms of audio,
//! `speech.endDetected`, `speech.phrase` (simple or detailed) and `turn.end`.
//!
//! Recognition is scripted: the configured transcript is "heard" in whatever audio arrives.
//! Offsets and durations are computed from the bytes received, so a client's timestamp
//! arithmetic is checked for real.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::faults::{Endpoint, Phase, TurnPoint};
use super::frame::{BinaryMessage, HeaderStyle, TextMessage};
use super::http as h;
use super::server::Run;
use super::turn::TurnFaults;
use super::ws::{Out, Outbox, Protocol, SessionParams, Stop, SttMode, later, new_id, service_text};

const REMEMBERED_IDS: usize = 256;

/// The audio format of a turn, from its RIFF header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AudioFmt {
    /// Samples per second.
    pub(crate) sample_rate: u32,
    /// Bytes per second.
    pub(crate) bytes_per_sec: u32,
}

impl AudioFmt {
    /// 100-ns ticks spanned by `bytes` of audio.
    pub(crate) fn ticks(&self, bytes: u64) -> u64 {
        let t = u128::from(bytes) * 10_000_000 / u128::from(self.bytes_per_sec.max(1));
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    fn bytes_for_ms(&self, ms: u128) -> u64 {
        let b = u128::from(self.bytes_per_sec) * ms / 1000;
        u64::try_from(b).unwrap_or(u64::MAX).max(1)
    }
}

/// Validates a RIFF/WAVE header (PCM, mono, 16-bit, 8 or 16 kHz; size fields may be 0, as
/// the SDKs write them) and returns the format and where the sample data starts.
pub(crate) fn parse_riff(data: &[u8]) -> Result<(AudioFmt, usize), &'static str> {
    if data.len() < 12 || &data[..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return Err("Invalid audio header: expected RIFF/WAVE");
    }
    let mut pos = 12;
    let mut fmt = None;
    loop {
        let Some(head) = data.get(pos..pos + 8) else {
            return Err("Invalid audio header: no data chunk");
        };
        let id = &head[..4];
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        pos += 8;
        if id == b"data" {
            let fmt = fmt.ok_or("Invalid audio header: data before fmt")?;
            return Ok((fmt, pos));
        }
        let body = data
            .get(pos..pos.saturating_add(len))
            .ok_or("Invalid audio header: truncated chunk")?;
        if id == b"fmt " {
            if body.len() < 16 {
                return Err("Invalid audio header: short fmt chunk");
            }
            let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
            let u32_at =
                |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
            let (tag, channels, rate, bits) = (u16_at(0), u16_at(2), u32_at(4), u16_at(14));
            if tag != 1 {
                return Err("Unsupported audio format: only PCM is accepted");
            }
            if channels != 1 {
                return Err("Unsupported audio format: only mono is accepted");
            }
            if bits != 16 {
                return Err("Unsupported audio format: only 16-bit samples are accepted");
            }
            if rate != 8000 && rate != 16000 {
                return Err("Unsupported audio format: only 8 kHz and 16 kHz are accepted");
            }
            fmt = Some(AudioFmt {
                sample_rate: rate,
                bytes_per_sec: rate * 2,
            });
        }
        // Chunks are padded to an even length.
        pos = pos.saturating_add(len + (len & 1));
    }
}

/// The lexical form of a transcript: lowercase words without punctuation.
fn lexical_words(transcript: &str) -> Vec<String> {
    transcript
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// A successful `speech.phrase` body (also the STT REST result).
pub(crate) fn phrase_json(
    transcript: &str,
    offset: u64,
    duration: u64,
    detailed: bool,
    word_timings: bool,
) -> Value {
    let mut v = json!({
        "RecognitionStatus": "Success",
        "DisplayText": transcript,
        "Offset": offset,
        "Duration": duration,
    });
    if detailed {
        let words = lexical_words(transcript);
        let lexical = words.join(" ");
        let mut best = json!({
            "Confidence": 0.95,
            "Lexical": lexical,
            "ITN": lexical,
            "MaskedITN": lexical,
            "Display": transcript,
        });
        if word_timings && !words.is_empty() {
            let each = duration / words.len() as u64;
            best["Words"] = words
                .iter()
                .enumerate()
                .map(|(i, w)| json!({"Word": w, "Offset": offset + each * i as u64, "Duration": each}))
                .collect();
        }
        v["NBest"] = json!([best]);
    }
    v
}

/// One recognition turn.
#[derive(Debug)]
struct SttTurn {
    rid: String,
    fmt: AudioFmt,
    bytes: u64,
    frames: u32,
    phrase_start: u64,
    hyps: u64,
    speech_started: bool,
    first_result_sent: bool,
    done: bool,
    stalled: bool,
    detailed: bool,
    word_timings: bool,
    faults: TurnFaults,
    style: HeaderStyle,
    transcript: String,
    hyp_bytes: u64,
    max_phrase_bytes: u64,
    continuous: bool,
}

impl SttTurn {
    fn msg(&self, path: &str, body: &Value) -> Out {
        Out::Text(service_text(&self.rid, path, &body.to_string(), self.style))
    }

    /// Queues a result; the first one waits out any injected first-result delay.
    fn result(&mut self, out: &mut Outbox, path: &str, body: &Value) {
        let m = self.msg(path, body);
        if self.first_result_sent {
            out.push(m);
        } else {
            self.first_result_sent = true;
            out.push_at(later(Instant::now(), self.faults.first_audio_delay), m);
        }
    }

    fn hypothesis_text(&self) -> String {
        let words = lexical_words(&self.transcript);
        let n = usize::try_from(self.hyps)
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
        out.push(Out::TurnEnd(service_text(
            &self.rid, "turn.end", "{}", self.style,
        )));
        if let Some(action) = self.faults.action_at(TurnPoint::AfterTurnEnd) {
            out.push(action);
        }
        self.done = true;
    }

    /// Audio bytes arrived (not the header frame).
    fn audio(&mut self, out: &mut Outbox, len: u64) {
        self.frames += 1;
        self.bytes += len;
        if !(self.done || self.stalled) {
            self.results(out);
        }
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
            while (self.hyps + 1).saturating_mul(self.hyp_bytes) <= heard {
                self.hyps += 1;
                let body = json!({
                    "Text": self.hypothesis_text(),
                    "Offset": self.fmt.ticks(self.phrase_start),
                    "Duration": self.fmt.ticks(self.hyps * self.hyp_bytes),
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
                self.hyps = 0;
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
        if self.bytes == 0 {
            // Spec §5.3, "empty or invalid audio".
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
    run: Arc<Run>,
    params: SessionParams,
    mode: SttMode,
    config_seen: bool,
    context: Option<(Option<String>, Value)>,
    turn: Option<SttTurn>,
    finished: VecDeque<String>,
}

impl SttSession {
    pub(crate) fn new(run: Arc<Run>, params: SessionParams) -> Self {
        Self {
            mode: params.mode.unwrap_or(SttMode::Conversation),
            run,
            params,
            config_seen: false,
            context: None,
            turn: None,
            finished: VecDeque::new(),
        }
    }

    fn violation(&self, what: &str) -> Result<(), Stop> {
        if self.run.shared.config.strict {
            Err(Stop::Close(1002, what.to_owned()))
        } else {
            tracing::debug!(what, "tolerated protocol violation");
            Ok(())
        }
    }

    fn remember(&mut self, rid: String) {
        if self.finished.len() >= REMEMBERED_IDS {
            self.finished.pop_front();
        }
        self.finished.push_back(rid);
    }

    /// Output options for a new turn: the query, overridden by a matching `speech.context`.
    fn output_options(&self, rid: &str) -> (bool, bool) {
        let q = &self.params.query;
        let mut detailed =
            h::query_get(q, "format").is_some_and(|f| f.eq_ignore_ascii_case("detailed"));
        let mut words =
            h::query_get(q, "wordLevelTimestamps").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let ctx = match &self.context {
            Some((Some(c), v)) if c.eq_ignore_ascii_case(rid) => Some(v),
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
        rid: String,
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
                AudioFmt {
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
        let shared = Arc::clone(&self.run.shared);
        let faults = TurnFaults::new(shared.take_faults(
            Phase::Turn,
            Some(Endpoint::SttWs),
            Some(&self.params.identity),
        ));
        shared.counters.inc(&shared.counters.turns_started);
        if let Some(stop) = faults.stop_before_start() {
            return Err(stop);
        }
        let (detailed, word_timings) = self.output_options(&rid);
        let cfg = &shared.config;
        let style = faults.style();
        let mut turn = SttTurn {
            rid,
            fmt,
            bytes: 0,
            frames: 0,
            phrase_start: 0,
            hyps: 0,
            speech_started: false,
            first_result_sent: false,
            done: false,
            stalled: false,
            detailed,
            word_timings,
            style,
            transcript: shared.transcript(),
            hyp_bytes: fmt.bytes_for_ms(cfg.hypothesis_interval.as_millis().max(1)),
            max_phrase_bytes: fmt.bytes_for_ms(cfg.max_phrase.as_millis().max(1)),
            continuous: self.mode.continuous(),
            faults,
        };
        let at = later(
            Instant::now(),
            cfg.rtt.saturating_add(turn.faults.turn_start_delay),
        );
        let tag = new_id().to_ascii_lowercase();
        out.push_at(
            at,
            turn.msg("turn.start", &json!({"context": {"serviceTag": tag}})),
        );
        if turn.faults.quirks {
            out.push(turn.msg(
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
        let rest = payload.len().saturating_sub(data_at) as u64;
        if rest > 0 && !turn.done {
            // Header and samples in one message: count the samples, not as a new frame.
            turn.bytes += rest;
            if !turn.stalled {
                turn.results(out);
            }
        }
        self.turn = Some(turn);
        Ok(())
    }
}

impl Protocol for SttSession {
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
        let rid = match msg.headers.request_id().filter(|r| !r.is_empty()) {
            Some(r) => r.to_owned(),
            None => {
                self.violation("missing X-RequestId")?;
                // Lenient: audio without an id continues the current turn.
                match &self.turn {
                    Some(t) => t.rid.clone(),
                    None => new_id(),
                }
            }
        };
        if let Some(t) = &mut self.turn
            && t.rid.eq_ignore_ascii_case(&rid)
        {
            if msg.payload.is_empty() {
                t.end_of_audio(out);
            } else {
                t.audio(out, msg.payload.len() as u64);
            }
            if t.done {
                let rid = t.rid.clone();
                self.turn = None;
                self.remember(rid);
            }
            return Ok(());
        }
        if self.finished.iter().any(|f| f.eq_ignore_ascii_case(&rid)) {
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
        self.start_turn(out, &msg, rid)?;
        if let Some(t) = &self.turn
            && t.done
        {
            let rid = t.rid.clone();
            self.turn = None;
            self.remember(rid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tag: u16, ch: u16, rate: u32, bits: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF\0\0\0\0WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&tag.to_le_bytes());
        h.extend_from_slice(&ch.to_le_bytes());
        h.extend_from_slice(&rate.to_le_bytes());
        h.extend_from_slice(&(rate * u32::from(ch) * u32::from(bits) / 8).to_le_bytes());
        h.extend_from_slice(&(ch * bits / 8).to_le_bytes());
        h.extend_from_slice(&bits.to_le_bytes());
        h.extend_from_slice(b"data\0\0\0\0");
        h
    }

    #[test]
    fn riff_validation() {
        let (fmt, at) = parse_riff(&header(1, 1, 16000, 16)).expect("valid");
        assert_eq!((fmt.bytes_per_sec, at), (32000, 44));
        assert!(parse_riff(&header(1, 1, 8000, 16)).is_ok());
        assert!(parse_riff(&header(1, 2, 16000, 16)).is_err());
        assert!(parse_riff(&header(1, 1, 44100, 16)).is_err());
        assert!(parse_riff(&header(1, 1, 16000, 8)).is_err());
        assert!(parse_riff(&header(3, 1, 16000, 16)).is_err());
        assert!(parse_riff(b"RIFF").is_err());
        assert!(parse_riff(&header(1, 1, 16000, 16)[..40]).is_err());
        let mut huge = header(1, 1, 16000, 16);
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_riff(&huge).is_err());
    }

    #[test]
    fn detailed_phrase_has_nbest_and_words() {
        let v = phrase_json("Hello, world.", 0, 10_000_000, true, true);
        assert_eq!(v["NBest"][0]["Lexical"], "hello world");
        assert_eq!(v["NBest"][0]["Display"], "Hello, world.");
        assert_eq!(v["NBest"][0]["Words"][1]["Offset"], 5_000_000);
    }
}
