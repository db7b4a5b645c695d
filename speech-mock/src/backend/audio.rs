//! Deterministic audio derived from the request text.
//!
//! - 16-bit PCM formats (raw and RIFF): a triangle-wave tone per character (pitch chosen
//!   by the configured seed and the character, silence for whitespace) plus a little
//!   seeded noise.
//!   Real, playable PCM, generated with integer arithmetic only so the bytes are the same
//!   on every platform.
//! - G.711 µ-law / A-law: seeded noise bytes (every byte is a valid sample), with a correct
//!   RIFF header for the `riff-*` variants.
//! - Compressed formats (mp3, Opus in ogg/webm/raw, SILK, AMR-WB, G.722): the container's
//!   magic bytes followed by seeded bytes at the format's nominal bit rate. **Not decodable
//!   audio**: right length, right MIME type, first bytes that sniffers recognise, enough
//!   for latency and plumbing tests; use a PCM format to test audio content.

use std::time::Duration;

use bytes::Bytes;
use speech_core::{AudioFormat, SynthesisInput, SynthesisRequest, wav_header_with_tag};

/// SplitMix64: tiny, fast, and fully specified, so the mock's output never changes with a
/// dependency upgrade.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// FNV-1a over several byte strings, used to derive a per-request seed.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01B3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xFF;
        h = h.wrapping_mul(0x0100_0000_01B3);
    }
    h
}

/// A word of the input with its position in characters (for audio timing) and bytes (for
/// `text_offset`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WordSpan {
    pub(crate) text: String,
    pub(crate) first_char: u64,
    pub(crate) chars: u64,
    pub(crate) byte_offset: usize,
    pub(crate) byte_len: usize,
}

/// What the mock "speaks": one tone per spoken character, and the words.
#[derive(Debug, Clone, Default)]
pub(crate) struct Script {
    /// Tone of each spoken character in Hz; 0 is silence.
    pub(crate) tones: Vec<u16>,
    pub(crate) words: Vec<WordSpan>,
}

fn tone_of(seed: u64, c: char) -> u16 {
    if c.is_whitespace() {
        return 0;
    }
    let r = SplitMix64::new(seed ^ u64::from(u32::from(c))).next_u64();
    // 150..600 Hz: speech-like pitch range.
    150 + u16::try_from(r % 450).unwrap_or(0)
}

/// Extracts the spoken characters and words. For SSML, markup (`<...>`) is skipped and
/// an entity (`&amp;`) counts as one character; offsets point into the SSML document. This
/// is a deliberately crude reader: the mock needs timing, not linguistics.
pub(crate) fn script(input: &SynthesisInput, seed: u64) -> Script {
    let (source, markup) = match input {
        SynthesisInput::Text(t) => (t.as_str(), false),
        SynthesisInput::Ssml(s) => (s.as_str(), true),
    };
    let mut out = Script::default();
    let mut in_tag = false;
    let mut entity_start: Option<usize> = None;
    let mut word: Option<(usize, u64, u64)> = None; // (byte start, first char, chars)
    let finish = |word: &mut Option<(usize, u64, u64)>, end: usize, out: &mut Script| {
        if let Some((start, first_char, chars)) = word.take() {
            out.words.push(WordSpan {
                text: source.get(start..end).unwrap_or_default().to_owned(),
                first_char,
                chars,
                byte_offset: start,
                byte_len: end - start,
            });
        }
    };
    for (i, c) in source.char_indices() {
        if markup && in_tag {
            if c == '>' {
                in_tag = false;
            }
            continue;
        }
        if markup && c == '<' {
            entity_start = None;
            finish(&mut word, i, &mut out);
            in_tag = true;
            continue;
        }
        if let Some(start) = entity_start {
            if c == ';' || c.is_whitespace() || i - start > 10 {
                entity_start = None;
            }
            if c == ';' {
                continue;
            }
            if !c.is_whitespace() && entity_start.is_some() {
                continue;
            }
        }
        if markup && c == '&' {
            entity_start = Some(i);
        }
        let index = out.tones.len() as u64;
        out.tones.push(tone_of(seed, c));
        if c.is_whitespace() {
            finish(&mut word, i, &mut out);
        } else {
            match &mut word {
                Some((_, _, chars)) => *chars += 1,
                None => word = Some((i, index, 1)),
            }
        }
    }
    finish(&mut word, source.len(), &mut out);
    out
}

/// Nominal bytes per second of a compressed format: its bit rate when the name states one
/// (`...-48kbitrate-...`, `...-24kbps-...`), otherwise 32 kbit/s.
fn nominal_bytes_per_second(format: AudioFormat) -> u64 {
    let kbps = format
        .as_header_str()
        .split('-')
        .find_map(|part| {
            part.strip_suffix("kbitrate")
                .or_else(|| part.strip_suffix("kbps"))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(32);
    kbps * 1000 / 8
}

/// The first bytes of a compressed stream, so that content sniffers recognise it.
fn magic(format: AudioFormat) -> &'static [u8] {
    match format.mime_type() {
        // An empty ID3v2.4 tag.
        "audio/mpeg" => b"ID3\x04\x00\x00\x00\x00\x00\x00",
        "audio/ogg" => b"OggS",
        "audio/webm" => &[0x1A, 0x45, 0xDF, 0xA3],
        "audio/AMR-WB" => b"#!AMR-WB\n",
        _ => b"",
    }
}

#[derive(Debug)]
enum Kind {
    /// Tone per character at `rate` Hz, `nanos_per_char` per character.
    Pcm16 {
        rate: u64,
        nanos_per_char: u128,
        tones: Vec<u16>,
        phase: u32,
    },
    /// Seeded bytes after a fixed prefix.
    Opaque { prefix: &'static [u8] },
}

/// A lazily generated, chunked audio stream for one synthesis turn. Memory is bounded by
/// the chunk size whatever the text length.
#[derive(Debug)]
pub(crate) struct AudioStream {
    header: Option<[u8; 44]>,
    kind: Kind,
    rng: SplitMix64,
    payload_len: u64,
    produced: u64,
    bytes_per_second: u64,
    block: usize,
}

impl AudioStream {
    /// Plans the audio for `request`: `min(spoken chars × per_char, max_audio)` long.
    pub(crate) fn new(
        request: &SynthesisRequest,
        tones: Vec<u16>,
        seed: u64,
        per_char: Duration,
        max_audio: Duration,
    ) -> Self {
        let format = request.format;
        let input = match &request.input {
            SynthesisInput::Text(t) | SynthesisInput::Ssml(t) => t.as_bytes(),
        };
        let rng = SplitMix64::new(fnv1a(&[
            &seed.to_le_bytes(),
            format.as_header_str().as_bytes(),
            request.voice.as_bytes(),
            input,
        ]));
        let chars = tones.len() as u128;
        let duration_ns = (per_char.as_nanos().saturating_mul(chars)).min(max_audio.as_nanos());
        let (bytes_per_second, block) = match (format.bytes_per_second(), format.bits_per_sample())
        {
            (Some(bps), Some(bits)) => (u64::from(bps), usize::from(bits / 8).max(1)),
            _ => (nominal_bytes_per_second(format), 1),
        };
        // Whole samples only.
        let units = duration_ns * u128::from(bytes_per_second) / 1_000_000_000 / block as u128;
        let payload_len = u64::try_from(units * block as u128).unwrap_or(u64::MAX);
        let kind = if format.is_pcm16() {
            Kind::Pcm16 {
                rate: u64::from(format.sample_rate_hz()),
                nanos_per_char: per_char.as_nanos().max(1),
                tones,
                phase: 0,
            }
        } else {
            Kind::Opaque {
                prefix: magic(format),
            }
        };
        let header = match (
            format.is_riff(),
            format.wav_format_tag(),
            format.bits_per_sample(),
        ) {
            (true, Some(tag), Some(bits)) => Some(wav_header_with_tag(
                tag,
                format.sample_rate_hz(),
                1,
                bits,
                Some(u32::try_from(payload_len).unwrap_or(u32::MAX)),
            )),
            _ => None,
        };
        Self {
            header,
            kind,
            rng,
            payload_len,
            produced: 0,
            bytes_per_second,
            block,
        }
    }

    /// Audio bytes the stream will produce in total, header included.
    #[cfg(test)]
    pub(crate) fn total_len(&self) -> u64 {
        self.payload_len + self.header.map_or(0, |h| h.len() as u64)
    }

    /// The audio time covered once `payload_bytes` of payload have been produced.
    pub(crate) fn time_at(&self, payload_bytes: u64) -> Duration {
        let nanos =
            u128::from(payload_bytes) * 1_000_000_000 / u128::from(self.bytes_per_second.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Payload bytes produced so far.
    pub(crate) fn produced(&self) -> u64 {
        self.produced
    }

    /// Total audio duration.
    pub(crate) fn duration(&self) -> Duration {
        self.time_at(self.payload_len)
    }

    /// Payload bytes the next chunk will carry (0 when the stream is exhausted).
    pub(crate) fn next_len(&self, chunk_bytes: usize) -> u64 {
        let max = (chunk_bytes / self.block).max(1) * self.block;
        (self.payload_len - self.produced).min(max as u64)
    }

    /// The next chunk, at most `chunk_bytes` of payload (whole samples), with the RIFF
    /// header in front of the first one. `None` when done.
    pub(crate) fn next_chunk(&mut self, chunk_bytes: usize) -> Option<Bytes> {
        let header = self.header.take();
        let n = self.next_len(chunk_bytes);
        if n == 0 && header.is_none() {
            return None;
        }
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let mut buf = Vec::with_capacity(n + header.map_or(0, |h| h.len()));
        if let Some(h) = header {
            buf.extend_from_slice(&h);
        }
        match &mut self.kind {
            Kind::Pcm16 {
                rate,
                nanos_per_char,
                tones,
                phase,
            } => {
                let first_sample = self.produced / 2;
                for s in first_sample..first_sample + (n / 2) as u64 {
                    let char_index =
                        u128::from(s) * 1_000_000_000 / (u128::from(*rate) * *nanos_per_char);
                    let tone = usize::try_from(char_index)
                        .ok()
                        .and_then(|i| tones.get(i))
                        .copied()
                        .unwrap_or(0);
                    let noise = (self.rng.next_u64() % 513) as i32 - 256;
                    let sample = if tone == 0 {
                        noise / 4
                    } else {
                        let step = (u64::from(tone) << 32) / (*rate).max(1);
                        *phase = phase.wrapping_add(u32::try_from(step).unwrap_or(u32::MAX));
                        let p = (*phase >> 16) as i32; // 0..=65535
                        let tri = if p < 32768 { p } else { 65535 - p }; // 0..=32767
                        (tri * 2 - 32767) / 4 + noise
                    };
                    let sample = i16::try_from(sample.clamp(-32768, 32767)).unwrap_or(0);
                    buf.extend_from_slice(&sample.to_le_bytes());
                }
            }
            Kind::Opaque { prefix } => {
                let mut pos = self.produced;
                let end = pos + n as u64;
                while pos < end {
                    let byte = match usize::try_from(pos).ok().and_then(|i| prefix.get(i)) {
                        Some(&b) => b,
                        None => self.rng.next_u64() as u8,
                    };
                    buf.push(byte);
                    pos += 1;
                }
            }
        }
        self.produced += n as u64;
        Some(Bytes::from(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(input: SynthesisInput) -> Vec<(String, u64, u64, usize, usize)> {
        script(&input, 1)
            .words
            .into_iter()
            .map(|w| (w.text, w.first_char, w.chars, w.byte_offset, w.byte_len))
            .collect()
    }

    #[test]
    fn text_words_and_offsets() {
        let w = words(SynthesisInput::Text("Hello  wörld!".into()));
        assert_eq!(
            w,
            vec![("Hello".into(), 0, 5, 0, 5), ("wörld!".into(), 7, 6, 7, 7),]
        );
        assert_eq!(
            script(&SynthesisInput::Text("ab c".into()), 1).tones.len(),
            4
        );
    }

    #[test]
    fn ssml_markup_is_skipped() {
        let ssml = "<speak><voice name='x'>Tom &amp; Jerry</voice></speak>";
        let s = script(&SynthesisInput::Ssml(ssml.into()), 1);
        // "Tom & Jerry" = 11 spoken characters.
        assert_eq!(s.tones.len(), 11);
        let w: Vec<_> = s.words.iter().map(|w| w.text.as_str()).collect();
        assert_eq!(w, vec!["Tom", "&amp;", "Jerry"]);
        let jerry = &s.words[2];
        assert_eq!(
            &ssml[jerry.byte_offset..jerry.byte_offset + jerry.byte_len],
            "Jerry"
        );
        assert_eq!(jerry.first_char, 6);
    }

    #[test]
    fn nominal_rates() {
        assert_eq!(
            nominal_bytes_per_second(AudioFormat::Audio24Khz48KBitRateMonoMp3),
            6000
        );
        assert_eq!(
            nominal_bytes_per_second(AudioFormat::Webm24Khz16Bit24KbpsMonoOpus),
            3000
        );
        assert_eq!(
            nominal_bytes_per_second(AudioFormat::Ogg24Khz16BitMonoOpus),
            4000
        );
    }

    #[test]
    fn chunking_covers_everything_once() {
        let req = SynthesisRequest::text("hello there", "v", AudioFormat::Riff16Khz16BitMonoPcm);
        let s = script(&req.input, 7);
        let mut stream = AudioStream::new(
            &req,
            s.tones,
            7,
            Duration::from_millis(60),
            Duration::from_secs(600),
        );
        let total = stream.total_len();
        let mut got = 0u64;
        let mut first = true;
        while let Some(chunk) = stream.next_chunk(1001) {
            if first {
                assert_eq!(chunk.len(), 44 + 1000);
                first = false;
            }
            got += chunk.len() as u64;
        }
        assert_eq!(got, total);
        // 11 chars × 60 ms × 32000 B/s.
        assert_eq!(total, 44 + 21_120);
    }
}
