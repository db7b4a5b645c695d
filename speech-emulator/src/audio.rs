//! Deterministic synthetic audio for the TTS routes.
//!
//! The "speech" is a timeline of character slots: a short lead-in, [`MS_PER_CHAR`] per
//! character of the text, a short tail. Letters and digits sound a tone, everything else is
//! silence, so the audio is proportional to the text, word gaps are audible to a VAD, and word
//! boundary metadata can be computed from the same timeline. PCM, µ-law, A-law and MP3 are
//! encoded correctly (the MP3 is a run of valid silent frames); Opus, SILK, AMR and G.722 are
//! a fixed byte pattern at the format's nominal byte rate after a recognisable magic prefix,
//! which is all a client can check without a decoder.
//!
//! Audio is generated lazily, chunk by chunk, so a long synthesis never sits in memory.

use std::sync::Arc;

use crate::formats::{Codec, Container, OutputFormat};

/// Silence before the first character, in milliseconds.
pub const LEAD_MS: u64 = 50;
/// Audio per character of normalised text, in milliseconds (≈ 160 words per minute).
pub const MS_PER_CHAR: u64 = 60;
/// Silence after the last character, in milliseconds.
pub const TAIL_MS: u64 = 50;
/// The service cuts output at 10 minutes of audio (docs/protocol.md#tts-over-rest).
pub const MAX_AUDIO_MS: u64 = 10 * 60 * 1000;
/// 100-ns ticks per millisecond: Azure's offset unit.
pub const TICKS_PER_MS: u64 = 10_000;

/// The timeline of one synthesis: which character slots are voiced and how long it lasts.
#[derive(Debug, Clone)]
pub struct Timeline {
    voiced: Arc<[bool]>,
    duration_ms: u64,
}

impl Timeline {
    /// Builds the timeline of `text` (already whitespace-normalised).
    pub fn new(text: &str) -> Self {
        let voiced: Arc<[bool]> = text.chars().map(char::is_alphanumeric).collect();
        let chars = u64::try_from(voiced.len()).unwrap_or(u64::MAX);
        let duration_ms = LEAD_MS
            .saturating_add(chars.saturating_mul(MS_PER_CHAR))
            .saturating_add(TAIL_MS)
            .min(MAX_AUDIO_MS);
        Self {
            voiced,
            duration_ms,
        }
    }

    /// Total duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        self.duration_ms
    }

    /// Offset of character `index` from the start of the audio, in 100-ns ticks.
    pub fn char_offset_ticks(index: usize) -> u64 {
        let index = u64::try_from(index).unwrap_or(u64::MAX);
        LEAD_MS
            .saturating_add(index.saturating_mul(MS_PER_CHAR))
            .saturating_mul(TICKS_PER_MS)
    }

    fn is_voiced_at_ms(&self, ms: u64) -> bool {
        if ms < LEAD_MS {
            return false;
        }
        let slot = (ms - LEAD_MS) / MS_PER_CHAR;
        usize::try_from(slot)
            .ok()
            .and_then(|s| self.voiced.get(s).copied())
            .unwrap_or(false)
    }
}

/// Lazily generated audio of one synthesis in one output format.
#[derive(Debug, Clone)]
pub struct SynthAudio {
    format: &'static OutputFormat,
    timeline: Timeline,
    header: Vec<u8>,
    payload_len: u64,
    mp3: Option<Mp3Frame>,
}

#[derive(Debug, Clone, Copy)]
struct Mp3Frame {
    header: [u8; 4],
    size: u64,
}

impl SynthAudio {
    /// Prepares the audio of `timeline` in `format`.
    pub fn new(format: &'static OutputFormat, timeline: Timeline) -> Self {
        let ms = timeline.duration_ms;
        let samples = u64::from(format.sample_rate) * ms / 1000;
        let mut mp3 = None;
        let payload_len = match format.codec {
            Codec::Pcm16 | Codec::Mulaw | Codec::Alaw => {
                samples * u64::from(format.bytes_per_sample().unwrap_or(1))
            }
            Codec::Mp3 => {
                let frame = Mp3Frame::for_format(format);
                let per_frame = if format.sample_rate >= 32000 {
                    1152
                } else {
                    576
                };
                let frames = samples.div_ceil(per_frame).max(1);
                mp3 = Some(frame);
                frames * frame.size
            }
            _ => u64::from(format.bytes_per_sec) * ms / 1000,
        };
        let header = match (format.container, format.codec) {
            (Container::Riff, _) => riff_header(format, payload_len),
            (Container::Ogg, _) => b"OggS".to_vec(),
            (Container::Webm, _) => vec![0x1a, 0x45, 0xdf, 0xa3],
            (_, Codec::AmrWb) => b"#!AMR-WB\n".to_vec(),
            _ => Vec::new(),
        };
        Self {
            format,
            timeline,
            header,
            payload_len,
            mp3,
        }
    }

    /// Total bytes, container header included.
    pub fn total_len(&self) -> u64 {
        self.header.len() as u64 + self.payload_len
    }

    /// Bytes `[offset, offset + len)` of the stream (shorter at the end).
    pub fn chunk(&self, offset: u64, len: usize) -> Vec<u8> {
        if offset >= self.total_len() {
            return Vec::new();
        }
        let end = offset.saturating_add(len as u64).min(self.total_len());
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(offset)).unwrap_or(0));
        let hlen = self.header.len() as u64;
        let mut pos = offset;
        if pos < hlen {
            let stop = end.min(hlen);
            out.extend_from_slice(&self.header[pos as usize..stop as usize]);
            pos = stop;
        }
        if pos < end {
            self.payload(pos - hlen, end - hlen, &mut out);
        }
        out
    }

    /// The audio time covered by the stream up to byte `offset`, in milliseconds: used to
    /// place word-boundary metadata just before the audio it describes.
    pub fn ms_at_byte(&self, offset: u64) -> u64 {
        let payload = offset.saturating_sub(self.header.len() as u64);
        if self.payload_len == 0 {
            return 0;
        }
        let ms = u128::from(payload) * u128::from(self.timeline.duration_ms)
            / u128::from(self.payload_len);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    fn sample(&self, n: u64) -> i16 {
        let rate = u64::from(self.format.sample_rate.max(1));
        let ms = n * 1000 / rate;
        if !self.timeline.is_voiced_at_ms(ms) {
            return 0;
        }
        // A 220 Hz tone at about -12 dBFS: clearly "speech" to a level detector, quiet to ears.
        let t = n as f64 / rate as f64;
        let v = (2.0 * std::f64::consts::PI * 220.0 * t).sin() * 8000.0;
        v as i16
    }

    fn payload(&self, p0: u64, p1: u64, out: &mut Vec<u8>) {
        match self.format.codec {
            Codec::Pcm16 => {
                let first = p0 / 2;
                let last = p1.div_ceil(2);
                let mut bytes = Vec::with_capacity(((last - first) * 2) as usize);
                for n in first..last {
                    bytes.extend_from_slice(&self.sample(n).to_le_bytes());
                }
                let skip = (p0 - first * 2) as usize;
                let take = (p1 - p0) as usize;
                out.extend_from_slice(&bytes[skip..skip + take]);
            }
            Codec::Mulaw => out.extend((p0..p1).map(|n| linear_to_ulaw(self.sample(n)))),
            Codec::Alaw => out.extend((p0..p1).map(|n| linear_to_alaw(self.sample(n)))),
            Codec::Mp3 => {
                if let Some(frame) = self.mp3 {
                    out.extend((p0..p1).map(|p| {
                        let i = (p % frame.size) as usize;
                        frame.header.get(i).copied().unwrap_or(0)
                    }));
                }
            }
            _ => out.extend((p0..p1).map(|p| (p.wrapping_mul(2_654_435_761) >> 13) as u8)),
        }
    }
}

impl Mp3Frame {
    /// A silent mono Layer III frame: a valid header, then all-zero side information and main
    /// data, which decoders play as silence.
    fn for_format(format: &OutputFormat) -> Self {
        let kbps = format.bytes_per_sec * 8 / 1000;
        let mpeg1 = format.sample_rate >= 32000;
        let (table, version_byte, sr_index, coeff): (&[u32], u8, u8, u64) = if mpeg1 {
            (
                &[
                    0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
                ],
                0xfb,
                match format.sample_rate {
                    44100 => 0,
                    32000 => 2,
                    _ => 1,
                },
                144,
            )
        } else {
            (
                &[0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
                0xf3,
                match format.sample_rate {
                    22050 => 0,
                    16000 => 2,
                    _ => 1,
                },
                72,
            )
        };
        let bitrate_index = table.iter().position(|&b| b == kbps).unwrap_or(1) as u8;
        let size = coeff * u64::from(kbps) * 1000 / u64::from(format.sample_rate.max(1));
        Self {
            header: [
                0xff,
                version_byte,
                (bitrate_index << 4) | (sr_index << 2),
                0xc4,
            ],
            size: size.max(4),
        }
    }
}

/// A canonical 44-byte RIFF/WAVE header for the sample-based codecs.
pub fn riff_header(format: &OutputFormat, data_len: u64) -> Vec<u8> {
    let (tag, bits): (u16, u16) = match format.codec {
        Codec::Mulaw => (7, 8),
        Codec::Alaw => (6, 8),
        _ => (1, 16),
    };
    let block_align = bits / 8;
    let data_len = u32::try_from(data_len).unwrap_or(u32::MAX - 36);
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&data_len.saturating_add(36).to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&tag.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&format.sample_rate.to_le_bytes());
    h.extend_from_slice(&(format.sample_rate * u32::from(block_align)).to_le_bytes());
    h.extend_from_slice(&block_align.to_le_bytes());
    h.extend_from_slice(&bits.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&data_len.to_le_bytes());
    h
}

/// G.711 µ-law encoding of one 16-bit sample.
fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && (s & mask) == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !((sign | (exponent << 4) | mantissa) as u8)
}

/// G.711 A-law encoding of one 16-bit sample.
fn linear_to_alaw(sample: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];
    let mut pcm = i32::from(sample) >> 3;
    let mask = if pcm >= 0 {
        0xd5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let seg = SEG_END.iter().position(|&e| pcm <= e).unwrap_or(8) as i32;
    let aval = if seg >= 8 {
        0x7f
    } else if seg < 2 {
        (seg << 4) | ((pcm >> 1) & 0x0f)
    } else {
        (seg << 4) | ((pcm >> seg) & 0x0f)
    };
    (aval ^ mask) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(name: &str) -> &'static OutputFormat {
        OutputFormat::by_name(name).expect("known format")
    }

    #[test]
    fn pcm_length_is_proportional_and_chunks_agree() {
        let t = Timeline::new("hello world");
        assert_eq!(t.duration_ms(), LEAD_MS + 11 * MS_PER_CHAR + TAIL_MS);
        let a = SynthAudio::new(fmt("raw-24khz-16bit-mono-pcm"), t.clone());
        assert_eq!(a.total_len(), 24 * 2 * t.duration_ms());
        let whole = a.chunk(0, a.total_len() as usize);
        let mut pieces = Vec::new();
        let mut off = 0;
        while off < a.total_len() {
            let c = a.chunk(off, 333);
            off += c.len() as u64;
            pieces.extend(c);
        }
        assert_eq!(whole, pieces);
        assert!(whole.iter().any(|&b| b != 0), "voiced slots make sound");
    }

    #[test]
    fn riff_header_matches_payload() {
        let a = SynthAudio::new(fmt("riff-16khz-16bit-mono-pcm"), Timeline::new("hi"));
        let h = a.chunk(0, 44);
        assert_eq!(&h[..4], b"RIFF");
        let data = u32::from_le_bytes([h[40], h[41], h[42], h[43]]);
        assert_eq!(u64::from(data) + 44, a.total_len());
    }

    #[test]
    fn mp3_is_a_run_of_frames() {
        let a = SynthAudio::new(fmt("audio-24khz-48kbitrate-mono-mp3"), Timeline::new("hi"));
        let all = a.chunk(0, a.total_len() as usize);
        assert_eq!(&all[..2], &[0xff, 0xf3]);
        assert_eq!(all.len() % 144, 0);
        assert_eq!(&all[144..146], &[0xff, 0xf3]);
        let b = SynthAudio::new(fmt("audio-48khz-96kbitrate-mono-mp3"), Timeline::new("hi"));
        assert_eq!(&b.chunk(0, 2)[..], &[0xff, 0xfb]);
    }

    #[test]
    fn g711_silence_values() {
        assert_eq!(linear_to_ulaw(0), 0xff);
        assert_eq!(linear_to_alaw(0), 0xd5);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
    }
}
