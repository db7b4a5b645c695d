//! Scripted audio: recognition that depends on what the audio contains, so a client that
//! replays audio on a new connection is "heard" saying the same thing again.
//!
//! With [`EmulatorConfig::scripted_audio`](crate::EmulatorConfig::scripted_audio) on, the
//! STT websocket reads 16-bit samples as a script: a run of samples that all equal `k`
//! (1 ..= 32767) is phrase `k`, whose text is line `k` of the transcript (cycling when the
//! transcript has fewer lines); zero samples are silence. A phrase ends after
//! [`phrase_silence`](crate::EmulatorConfig::phrase_silence) of silence, when another phrase
//! starts right away, or when the audio ends. Offsets count the bytes this connection
//! received, as Azure's do, so a client that changes connections must rebase them.
//!
//! The default transcript recognition (the same text for any audio, segmented every
//! `max_phrase`) cannot tell a replayed phrase from a new one; this can, which is what a
//! test of lossless reconnection needs.

/// Bytes per second of the scripted audio: 16 kHz, 16-bit, mono.
pub const BYTES_PER_SECOND: u32 = 32_000;

/// `ms` milliseconds of phrase `key` (1-based): 16 kHz 16-bit mono little-endian PCM whose
/// samples all equal `key`.
///
/// # Panics
/// If `key` is 0 (that is silence) or above 32767 (not a positive sample).
pub fn phrase_pcm(key: u16, ms: u32) -> Vec<u8> {
    assert!(
        (1..=32767).contains(&key),
        "phrase keys are 1 ..= 32767, got {key}"
    );
    let samples = (BYTES_PER_SECOND / 2) as usize * ms as usize / 1000;
    key.to_le_bytes().repeat(samples)
}

/// `ms` milliseconds of silence (zero samples).
pub fn silence_pcm(ms: u32) -> Vec<u8> {
    vec![0; BYTES_PER_SECOND as usize * ms as usize / 1000]
}

/// The text the emulator recognises for phrase `key` with `transcript`: its `key`-th
/// non-empty line, cycling.
pub fn phrase_text(transcript: &str, key: u16) -> String {
    let lines: Vec<&str> = transcript
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() || key == 0 {
        return String::new();
    }
    lines[(usize::from(key) - 1) % lines.len()].to_owned()
}

/// What the segmenter found in the audio, in bytes of this connection's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Speech of phrase `key` began at byte `at`.
    Start { key: u16, at: u64 },
    /// Phrase `key`, begun at `start`, has `heard` bytes so far (for hypotheses).
    Progress { key: u16, start: u64, heard: u64 },
    /// Phrase `key` spans bytes `start..end`.
    End { key: u16, start: u64, end: u64 },
}

/// Splits scripted audio into phrases as it arrives.
#[derive(Debug)]
pub(crate) struct Segmenter {
    /// Silence that ends a phrase, in bytes.
    silence_bytes: u64,
    /// Bytes seen so far.
    pos: u64,
    /// A sample's first byte, when a message ended between a sample's two bytes.
    half: Option<u8>,
    /// The phrase being spoken: key, first byte, end of its last speech sample.
    speech: Option<(u16, u64, u64)>,
}

impl Segmenter {
    pub(crate) fn new(silence_bytes: u64) -> Self {
        Self {
            silence_bytes: silence_bytes.max(2),
            pos: 0,
            half: None,
            speech: None,
        }
    }

    /// Reads `data` (the continuation of the audio) and returns what it completed.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Vec<Segment> {
        let mut out = Vec::new();
        let mut bytes = data.iter().copied();
        let mut first = self.half.take();
        loop {
            let lo = match first.take() {
                Some(b) => b,
                None => match bytes.next() {
                    Some(b) => b,
                    None => break,
                },
            };
            let Some(hi) = bytes.next() else {
                self.half = Some(lo);
                break;
            };
            let at = self.pos;
            self.pos += 2;
            let key = i16::from_le_bytes([lo, hi]).unsigned_abs();
            self.sample(key, at, &mut out);
        }
        if let Some((key, start, end)) = self.speech {
            out.push(Segment::Progress {
                key,
                start,
                heard: end - start,
            });
        }
        out
    }

    fn sample(&mut self, key: u16, at: u64, out: &mut Vec<Segment>) {
        match (self.speech, key) {
            (None, 0) => {}
            (None, k) => {
                self.speech = Some((k, at, at + 2));
                out.push(Segment::Start { key: k, at });
            }
            (Some((k, start, end)), 0) => {
                if at + 2 - end >= self.silence_bytes {
                    self.speech = None;
                    out.push(Segment::End { key: k, start, end });
                }
            }
            (Some((k, start, _)), s) if s == k => self.speech = Some((k, start, at + 2)),
            (Some((k, start, end)), s) => {
                // Another phrase right away: the first one ends where its samples did.
                out.push(Segment::End { key: k, start, end });
                self.speech = Some((s, at, at + 2));
                out.push(Segment::Start { key: s, at });
            }
        }
    }

    /// The audio ended: the phrase being spoken, if any, ends where its speech did.
    pub(crate) fn finish(&mut self) -> Option<Segment> {
        self.speech
            .take()
            .map(|(key, start, end)| Segment::End { key, start, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_end_after_enough_silence() {
        let mut s = Segmenter::new(3200); // 100 ms
        let mut audio = silence_pcm(50);
        audio.extend(phrase_pcm(7, 200));
        audio.extend(silence_pcm(50)); // too short to end the phrase
        audio.extend(phrase_pcm(7, 100));
        audio.extend(silence_pcm(150));
        audio.extend(phrase_pcm(8, 100));
        // Fed in odd-sized pieces, so samples straddle messages.
        let mut segs = Vec::new();
        for piece in audio.chunks(999) {
            segs.extend(
                s.feed(piece)
                    .into_iter()
                    .filter(|x| !matches!(x, Segment::Progress { .. })),
            );
        }
        segs.extend(s.finish());
        assert_eq!(
            segs,
            vec![
                Segment::Start { key: 7, at: 1600 },
                Segment::End {
                    key: 7,
                    start: 1600,
                    end: 1600 + 6400 + 1600 + 3200
                },
                Segment::Start {
                    key: 8,
                    at: 1600 + 6400 + 1600 + 3200 + 4800
                },
                Segment::End {
                    key: 8,
                    start: 17600,
                    end: 17600 + 3200
                },
            ]
        );
    }

    #[test]
    fn a_new_key_ends_the_phrase_at_once() {
        let mut s = Segmenter::new(3200);
        let mut audio = phrase_pcm(1, 10);
        audio.extend(phrase_pcm(2, 10));
        let segs = s.feed(&audio);
        assert_eq!(segs[0], Segment::Start { key: 1, at: 0 });
        assert_eq!(
            segs[1],
            Segment::End {
                key: 1,
                start: 0,
                end: 320
            }
        );
        assert_eq!(segs[2], Segment::Start { key: 2, at: 320 });
    }

    #[test]
    fn phrase_texts_cycle_through_lines() {
        let t = "One.\n\n Two. \nThree.";
        assert_eq!(phrase_text(t, 1), "One.");
        assert_eq!(phrase_text(t, 2), "Two.");
        assert_eq!(phrase_text(t, 4), "One.");
        assert_eq!(phrase_text("", 1), "");
    }
}
