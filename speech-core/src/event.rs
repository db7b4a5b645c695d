//! Events streamed out of a turn, and Azure's 100-ns tick unit.

use std::time::Duration;

use bytes::Bytes;

use crate::request::RequestId;

/// Azure expresses offsets and durations in 100-nanosecond ticks.
pub const TICKS_PER_SECOND: u64 = 10_000_000;

/// Recognition input is 16 kHz, 16-bit, mono PCM: 32 000 bytes per second.
pub const RECOGNITION_SAMPLE_RATE_HZ: u32 = 16_000;

/// Bytes per second of recognition input (16 kHz × 2 bytes × 1 channel).
pub const RECOGNITION_BYTES_PER_SECOND: u32 = 32_000;

/// Converts a duration to 100-ns ticks, saturating at `u64::MAX` (58 000 years).
pub fn duration_to_ticks(d: Duration) -> u64 {
    u64::try_from(d.as_nanos() / 100).unwrap_or(u64::MAX)
}

/// Converts 100-ns ticks to a duration.
pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_secs(ticks / TICKS_PER_SECOND)
        + Duration::from_nanos((ticks % TICKS_PER_SECOND) * 100)
}

/// The duration, in ticks, of `bytes` of recognition input
/// (16 kHz 16-bit mono: one sample every 625 ticks). An odd trailing byte is ignored.
pub fn pcm16k_bytes_to_ticks(bytes: u64) -> u64 {
    (bytes / 2).saturating_mul(625)
}

/// Something a synthesis turn produced, in the order the service sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SynthesisEvent {
    /// The next piece of audio, in the request's format. For RIFF formats the first chunk
    /// begins with the 44-byte WAV header. Chunks are delivered as they arrive so the
    /// caller can start playback before the turn ends.
    Audio(Bytes),
    /// A word is about to be spoken (only when the request asked for word boundaries).
    WordBoundary {
        /// The word as spoken.
        text: String,
        /// Where the word starts in this turn's audio.
        audio_offset: Duration,
        /// How long the word lasts in the audio.
        duration: Duration,
        /// Byte offset of the word in the request's input (the text for text input, the
        /// SSML document for SSML input). Bytes, not UTF-16 units, so `&input[offset..]`
        /// works in Rust; backends receiving other units convert.
        text_offset: u32,
        /// Length of the word in the input, in bytes.
        word_length: u32,
    },
}

/// The outcome of a completed synthesis turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthesisSummary {
    /// Total bytes delivered in [`SynthesisEvent::Audio`] events, including any WAV header.
    pub audio_bytes: u64,
    /// Number of [`SynthesisEvent::Audio`] events delivered.
    pub chunks: u32,
    /// The request's id, echoed for correlation in logs.
    pub request_id: RequestId,
}

/// Values of [`RecognitionEvent::Phrase::status`], as Azure spells `RecognitionStatus`.
pub mod phrase_status {
    /// The phrase was recognised.
    pub const SUCCESS: &str = "Success";
    /// Speech was detected but not recognised.
    pub const NO_MATCH: &str = "NoMatch";
    /// Only silence arrived before the initial-silence timeout.
    pub const INITIAL_SILENCE_TIMEOUT: &str = "InitialSilenceTimeout";
    /// Only noise arrived.
    pub const BABBLE_TIMEOUT: &str = "BabbleTimeout";
    /// End of audio in continuous mode.
    pub const END_OF_DICTATION: &str = "EndOfDictation";
    /// The service failed to recognise (also sent for empty or invalid audio).
    pub const ERROR: &str = "Error";
}

/// Something a recognition turn produced.
///
/// Serialises as internally tagged JSON (`{"type":"hypothesis","text":...}`) because the
/// service streams these to its websocket clients as is. All `offset` and `duration`
/// values are in Azure's 100-ns ticks ([`TICKS_PER_SECOND`]), relative to the start of
/// the turn's audio, exactly as Azure reports them, so no precision is lost in transit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecognitionEvent {
    /// `speech.startDetected`: speech began at `offset`.
    SpeechStartDetected {
        /// Ticks from the start of the turn's audio.
        offset: u64,
    },
    /// `speech.hypothesis`: a partial, still-changing result.
    Hypothesis {
        /// Text recognised so far.
        text: String,
        /// Ticks from the start of the turn's audio.
        offset: u64,
        /// Ticks of audio covered.
        duration: u64,
    },
    /// `speech.phrase`: a final result for one utterance.
    Phrase {
        /// `DisplayText` (empty unless `status` is `Success`).
        text: String,
        /// Ticks from the start of the turn's audio.
        offset: u64,
        /// Ticks of audio covered.
        duration: u64,
        /// Azure's `RecognitionStatus`: see [`phrase_status`]. A string rather than an
        /// enum so a status Azure adds later passes through instead of failing the turn.
        status: String,
    },
    /// `speech.endDetected`: speech ended at `offset`.
    SpeechEndDetected {
        /// Ticks from the start of the turn's audio.
        offset: u64,
    },
    /// `turn.end`: the turn is over; nothing else follows for this request.
    TurnEnd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_conversions() {
        assert_eq!(duration_to_ticks(Duration::from_secs(1)), TICKS_PER_SECOND);
        assert_eq!(duration_to_ticks(Duration::from_millis(300)), 3_000_000);
        assert_eq!(duration_to_ticks(Duration::MAX), u64::MAX);
        assert_eq!(
            ticks_to_duration(12_345_678),
            Duration::from_nanos(1_234_567_800)
        );
        assert_eq!(
            ticks_to_duration(u64::MAX).as_secs(),
            u64::MAX / TICKS_PER_SECOND
        );
        assert_eq!(pcm16k_bytes_to_ticks(32_000), TICKS_PER_SECOND);
        assert_eq!(pcm16k_bytes_to_ticks(3_201), 1_000_000);
        assert_eq!(pcm16k_bytes_to_ticks(u64::MAX), u64::MAX);
    }

    #[test]
    fn recognition_events_are_tagged_json() {
        let cases = [
            (
                RecognitionEvent::SpeechStartDetected { offset: 0 },
                r#"{"type":"speech_start_detected","offset":0}"#,
            ),
            (
                RecognitionEvent::Hypothesis {
                    text: "hello".into(),
                    offset: 0,
                    duration: 3_000_000,
                },
                r#"{"type":"hypothesis","text":"hello","offset":0,"duration":3000000}"#,
            ),
            (
                RecognitionEvent::Phrase {
                    text: "hello world".into(),
                    offset: 0,
                    duration: 10_000_000,
                    status: phrase_status::SUCCESS.into(),
                },
                r#"{"type":"phrase","text":"hello world","offset":0,"duration":10000000,"status":"Success"}"#,
            ),
            (
                RecognitionEvent::SpeechEndDetected { offset: 10_000_000 },
                r#"{"type":"speech_end_detected","offset":10000000}"#,
            ),
            (RecognitionEvent::TurnEnd, r#"{"type":"turn_end"}"#),
        ];
        for (event, json) in cases {
            assert_eq!(serde_json::to_string(&event).ok().as_deref(), Some(json));
            let back: RecognitionEvent = serde_json::from_str(json).expect("deserialize");
            assert_eq!(back, event);
        }
    }
}
