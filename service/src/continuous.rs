//! Call-long (continuous) recognition: its settings, and the bookkeeping that keeps it
//! lossless across connection changes (the replay buffer and the offset arithmetic).
//!
//! The stream itself is driven by `routes::stt_continuous`; what lives here has no I/O, so
//! it is tested on its own.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use speech_core::{RECOGNITION_BYTES_PER_SECOND, RecognitionEvent, TICKS_PER_SECOND};

use crate::config::{count, positive_seconds};

/// The settings of continuous STT streams (`GET /api/v1/stt?stream=continuous`), flattened
/// into [`Config`](crate::Config).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Continuous STT streams")]
pub struct ContinuousSettings {
    /// Connection age, in seconds, at which a continuous STT stream moves to a fresh
    /// connection. Azure closes every websocket after 10 minutes without warning; the
    /// default leaves a 60 s margin: the switch waits for a pause between phrases for at
    /// most a twentieth of this age (27 s by default), then happens anyway.
    #[arg(
        long,
        env = "STT_CONTINUOUS_MAX_CONNECTION_AGE",
        default_value = "540.0",
        value_name = "SECONDS",
        value_parser = positive_seconds()
    )]
    pub stt_continuous_max_connection_age: Duration,

    /// Seconds of a continuous stream's audio kept until a final phrase covers it, to be
    /// replayed on a fresh connection when one is cut. Bounds memory per stream (32 000
    /// bytes per second); audio older than this is lost if a cut comes before a phrase ends.
    #[arg(
        long,
        env = "STT_CONTINUOUS_REPLAY_SECONDS",
        default_value = "60.0",
        value_name = "SECONDS",
        value_parser = positive_seconds()
    )]
    pub stt_continuous_replay: Duration,

    /// Consecutive failed connections (cut before a final phrase, refused, throttled) a
    /// continuous stream survives before it reports the error and closes. The official
    /// SDKs retry a few times too.
    #[arg(
        long,
        env = "STT_CONTINUOUS_RECOVERY_ATTEMPTS",
        default_value = "3",
        value_name = "N",
        value_parser = count()
    )]
    pub stt_continuous_recovery_attempts: usize,
}

/// 100-ns ticks of `bytes` of 16 kHz 16-bit mono audio.
pub(crate) fn bytes_to_ticks(bytes: u64) -> u64 {
    speech_core::pcm16k_bytes_to_ticks(bytes)
}

/// Bytes of 16 kHz 16-bit mono audio in `ticks`, rounded down to a whole sample.
pub(crate) fn ticks_to_bytes(ticks: u64) -> u64 {
    let bytes =
        u128::from(ticks) * u128::from(RECOGNITION_BYTES_PER_SECOND) / u128::from(TICKS_PER_SECOND);
    u64::try_from(bytes).unwrap_or(u64::MAX) & !1
}

/// Moves an event of a connection whose audio began `base` ticks into the client's stream
/// onto the client's time line.
pub(crate) fn rebase(event: RecognitionEvent, base: u64) -> RecognitionEvent {
    use RecognitionEvent as E;
    match event {
        E::SpeechStartDetected { offset } => E::SpeechStartDetected {
            offset: offset.saturating_add(base),
        },
        E::SpeechEndDetected { offset } => E::SpeechEndDetected {
            offset: offset.saturating_add(base),
        },
        E::Hypothesis {
            text,
            offset,
            duration,
        } => E::Hypothesis {
            text,
            offset: offset.saturating_add(base),
            duration,
        },
        E::Phrase {
            text,
            offset,
            duration,
            status,
        } => E::Phrase {
            text,
            offset: offset.saturating_add(base),
            duration,
            status,
        },
        E::TurnEnd => E::TurnEnd,
    }
}

/// Whether a phrase status is a failure report rather than a result: those end the
/// connection's turn with an error, which the stream recovers from, so they are not shown
/// to the client (the recognition statuses of `speech_core::phrase_status` are).
pub(crate) fn is_failure_status(status: &str) -> bool {
    matches!(
        status,
        "Error" | "TooManyRequests" | "BadRequest" | "Forbidden"
    )
}

/// The audio of a stream that no final phrase has covered yet, kept to be replayed on a
/// new connection. Positions are byte offsets into the client's stream.
#[derive(Debug)]
pub(crate) struct ReplayBuffer {
    chunks: VecDeque<Bytes>,
    /// Stream offset of the first byte held.
    start: u64,
    /// Stream offset just past the last byte held (= bytes received).
    end: u64,
    max: u64,
    /// Bytes dropped because the buffer was full.
    overflowed: u64,
}

impl ReplayBuffer {
    /// A buffer holding at most `max` seconds of audio.
    pub(crate) fn new(max: Duration) -> Self {
        let max = (max.as_secs_f64() * f64::from(RECOGNITION_BYTES_PER_SECOND)) as u64;
        Self {
            chunks: VecDeque::new(),
            start: 0,
            end: 0,
            max: max.max(2) & !1,
            overflowed: 0,
        }
    }

    /// Where the audio held begins.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Bytes received in all.
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Bytes lost to the bound since the stream began.
    pub(crate) fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Appends received audio; drops the oldest audio past the bound.
    pub(crate) fn push(&mut self, chunk: Bytes) {
        self.end += chunk.len() as u64;
        self.chunks.push_back(chunk);
        let excess = (self.end - self.start).saturating_sub(self.max);
        if excess > 0 {
            // Whole 16-bit samples only: a client may send frames of odd length, and a
            // replay that began mid-sample would be heard as noise from its first byte.
            let excess = (excess + 1) & !1;
            self.overflowed += excess;
            self.trim_to(self.start + excess);
        }
    }

    /// Forgets the audio before stream offset `at` (a final phrase covered it).
    pub(crate) fn trim_to(&mut self, at: u64) {
        let at = at.min(self.end);
        while self.start < at {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let len = front.len() as u64;
            if self.start + len <= at {
                self.start += len;
                self.chunks.pop_front();
            } else {
                let cut = usize::try_from(at - self.start).unwrap_or(usize::MAX);
                let _ = front.split_to(cut);
                self.start = at;
            }
        }
    }

    /// The audio held, in order (cheap: the chunks are shared, not copied).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.chunks.iter().cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_and_bytes_round_trip_on_sample_boundaries() {
        assert_eq!(ticks_to_bytes(TICKS_PER_SECOND), 32_000);
        assert_eq!(bytes_to_ticks(32_000), TICKS_PER_SECOND);
        // 1 tick short of a sample rounds down to the previous whole sample.
        assert_eq!(ticks_to_bytes(624), 0);
        assert_eq!(ticks_to_bytes(625), 2);
        assert_eq!(ticks_to_bytes(bytes_to_ticks(12_346)), 12_346);
    }

    #[test]
    fn rebase_moves_offsets_not_durations() {
        let e = rebase(
            RecognitionEvent::Phrase {
                text: "a".into(),
                offset: 5,
                duration: 7,
                status: "Success".into(),
            },
            100,
        );
        assert_eq!(
            e,
            RecognitionEvent::Phrase {
                text: "a".into(),
                offset: 105,
                duration: 7,
                status: "Success".into()
            }
        );
        assert_eq!(
            rebase(RecognitionEvent::TurnEnd, 9),
            RecognitionEvent::TurnEnd
        );
    }

    #[test]
    fn replay_keeps_what_no_phrase_covered() {
        let mut r = ReplayBuffer::new(Duration::from_secs(1));
        r.push(Bytes::from(vec![1u8; 10]));
        r.push(Bytes::from(vec![2u8; 10]));
        r.trim_to(14);
        assert_eq!((r.start(), r.end()), (14, 20));
        let held: Vec<u8> = r.chunks().flat_map(|c| c.to_vec()).collect();
        assert_eq!(held, [vec![2u8; 6]].concat());
        // Trimming past what was received stops at the end.
        r.trim_to(100);
        assert_eq!((r.start(), r.chunks().count()), (20, 0));
    }

    #[test]
    fn overflow_drops_whole_samples_when_frames_have_odd_lengths() {
        let mut r = ReplayBuffer::new(Duration::from_millis(1)); // 32 bytes
        for i in 0..7u8 {
            r.push(Bytes::from(vec![i; 9]));
            assert_eq!(
                r.start() % 2,
                0,
                "replay would begin mid-sample at {}",
                r.start()
            );
            assert!(r.end() - r.start() <= 32);
        }
        assert_eq!((r.start(), r.end(), r.overflowed()), (32, 63, 32));
    }

    #[test]
    fn replay_is_bounded() {
        let mut r = ReplayBuffer::new(Duration::from_millis(1)); // 32 bytes
        for i in 0..5u8 {
            r.push(Bytes::from(vec![i; 10]));
        }
        assert_eq!((r.start(), r.end(), r.overflowed()), (18, 50, 18));
        let held: usize = r.chunks().map(|c| c.len()).sum();
        assert_eq!(held, 32);
    }
}
