//! Scripted recognition, shared by the STT websocket and STT REST: reading the audio
//! format from a WAV header, timing audio in 100-ns ticks, and the `speech.phrase` body.
//!
//! Recognition is scripted: the configured transcript is "heard" in whatever audio arrives.
//! Offsets and durations are computed from the bytes received, so a client's timestamp
//! arithmetic is checked for real.

use serde_json::{Value, json};

/// The audio format of a turn, from its RIFF header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AudioFormat {
    /// Samples per second.
    pub(crate) sample_rate: u32,
    /// Bytes per second.
    pub(crate) bytes_per_sec: u32,
}

impl AudioFormat {
    /// 100-ns ticks spanned by `bytes` of audio.
    pub(crate) fn ticks(&self, bytes: u64) -> u64 {
        let t = u128::from(bytes) * 10_000_000 / u128::from(self.bytes_per_sec.max(1));
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// Bytes spanning `ms` milliseconds of audio (at least one).
    pub(crate) fn bytes_for_ms(&self, ms: u128) -> u64 {
        let b = u128::from(self.bytes_per_sec) * ms / 1000;
        u64::try_from(b).unwrap_or(u64::MAX).max(1)
    }
}

/// Validates a RIFF/WAVE header (PCM, mono, 16-bit, 8 or 16 kHz; size fields may be 0, as
/// the SDKs write them) and returns the format and where the sample data starts.
pub(crate) fn parse_riff(data: &[u8]) -> Result<(AudioFormat, usize), &'static str> {
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
            fmt = Some(AudioFormat {
                sample_rate: rate,
                bytes_per_sec: rate * 2,
            });
        }
        // Chunks are padded to an even length.
        pos = pos.saturating_add(len + (len & 1));
    }
}

/// The lexical form of a transcript: lowercase words without punctuation.
pub(crate) fn lexical_words(transcript: &str) -> Vec<String> {
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
