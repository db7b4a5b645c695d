//! The Azure TTS output formats (docs/protocol.md#output-formats), with what the emulator needs to synthesise
//! plausible audio for each: codec, container, sample rate and byte rate.

/// The codec of an output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// 16-bit little-endian signed PCM.
    Pcm16,
    /// G.711 µ-law, 8 bits per sample.
    Mulaw,
    /// G.711 A-law, 8 bits per sample.
    Alaw,
    /// MPEG audio layer III.
    Mp3,
    /// Opus (raw, Ogg or WebM framed).
    Opus,
    /// SILK.
    Silk,
    /// AMR wideband.
    AmrWb,
    /// G.722.
    G722,
}

/// How the codec's bytes are wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// No container: the codec's bytes only.
    Raw,
    /// A 44-byte RIFF/WAVE header, then the samples.
    Riff,
    /// A stream of MP3 frames.
    Mp3,
    /// An Ogg stream.
    Ogg,
    /// A WebM stream.
    Webm,
}

/// One output format, as named by `X-Microsoft-OutputFormat` or `outputFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputFormat {
    /// The Azure name, e.g. `riff-24khz-16bit-mono-pcm`.
    pub name: &'static str,
    /// The codec.
    pub codec: Codec,
    /// The container.
    pub container: Container,
    /// Samples per second.
    pub sample_rate: u32,
    /// Encoded bytes per second of audio (payload only, not counting headers).
    pub bytes_per_sec: u32,
}

impl OutputFormat {
    /// The MIME type the emulator puts on REST responses and `audio` frames. Clients must not
    /// depend on it (docs/protocol.md#tts-over-rest); it is only informative.
    pub fn mime(&self) -> &'static str {
        match (self.container, self.codec) {
            (Container::Riff, _) | (Container::Raw, Codec::Pcm16 | Codec::Mulaw | Codec::Alaw) => {
                "audio/x-wav"
            }
            (Container::Mp3, _) => "audio/mpeg",
            (Container::Ogg, _) => "audio/ogg; codecs=opus",
            (Container::Webm, _) => "audio/webm; codecs=opus",
            (Container::Raw, Codec::Opus) => "audio/opus",
            (Container::Raw, Codec::Silk) => "audio/SILK",
            (Container::Raw, Codec::AmrWb) => "audio/amr-wb",
            (Container::Raw, Codec::G722) => "audio/G722",
            (Container::Raw, Codec::Mp3) => "audio/mpeg",
        }
    }

    /// Bytes per sample for the sample-based codecs (PCM, µ-law, A-law), else `None`.
    pub fn bytes_per_sample(&self) -> Option<u32> {
        match self.codec {
            Codec::Pcm16 => Some(2),
            Codec::Mulaw | Codec::Alaw => Some(1),
            _ => None,
        }
    }

    /// Looks a format up by its Azure name (case-insensitive, as the service is).
    pub fn by_name(name: &str) -> Option<&'static OutputFormat> {
        let name = name.trim();
        FORMATS.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// Every supported format.
    pub fn all() -> &'static [OutputFormat] {
        FORMATS
    }
}

macro_rules! fmt {
    ($name:literal, $codec:ident, $container:ident, $sr:expr, $bps:expr) => {
        OutputFormat {
            name: $name,
            codec: Codec::$codec,
            container: Container::$container,
            sample_rate: $sr,
            bytes_per_sec: $bps,
        }
    };
}

/// Every documented output format (docs/protocol.md#output-formats). Compressed byte rates come from the bit rate in the
/// name; where the name has none (Ogg/WebM Opus, SILK) a typical rate is assumed.
static FORMATS: &[OutputFormat] = &[
    fmt!("raw-8khz-8bit-mono-mulaw", Mulaw, Raw, 8000, 8000),
    fmt!("raw-8khz-8bit-mono-alaw", Alaw, Raw, 8000, 8000),
    fmt!("raw-8khz-16bit-mono-pcm", Pcm16, Raw, 8000, 16000),
    fmt!("raw-16khz-16bit-mono-pcm", Pcm16, Raw, 16000, 32000),
    fmt!("raw-22050hz-16bit-mono-pcm", Pcm16, Raw, 22050, 44100),
    fmt!("raw-24khz-16bit-mono-pcm", Pcm16, Raw, 24000, 48000),
    fmt!("raw-44100hz-16bit-mono-pcm", Pcm16, Raw, 44100, 88200),
    fmt!("raw-48khz-16bit-mono-pcm", Pcm16, Raw, 48000, 96000),
    fmt!("raw-16khz-16bit-mono-truesilk", Silk, Raw, 16000, 3000),
    fmt!("raw-24khz-16bit-mono-truesilk", Silk, Raw, 24000, 4000),
    fmt!("audio-16khz-32kbitrate-mono-mp3", Mp3, Mp3, 16000, 4000),
    fmt!("audio-16khz-64kbitrate-mono-mp3", Mp3, Mp3, 16000, 8000),
    fmt!("audio-16khz-128kbitrate-mono-mp3", Mp3, Mp3, 16000, 16000),
    fmt!("audio-24khz-48kbitrate-mono-mp3", Mp3, Mp3, 24000, 6000),
    fmt!("audio-24khz-96kbitrate-mono-mp3", Mp3, Mp3, 24000, 12000),
    fmt!("audio-24khz-160kbitrate-mono-mp3", Mp3, Mp3, 24000, 20000),
    fmt!("audio-48khz-96kbitrate-mono-mp3", Mp3, Mp3, 48000, 12000),
    fmt!("audio-48khz-192kbitrate-mono-mp3", Mp3, Mp3, 48000, 24000),
    fmt!("audio-16khz-16bit-32kbps-mono-opus", Opus, Raw, 16000, 4000),
    fmt!("audio-24khz-16bit-24kbps-mono-opus", Opus, Raw, 24000, 3000),
    fmt!("audio-24khz-16bit-48kbps-mono-opus", Opus, Raw, 24000, 6000),
    fmt!("ogg-16khz-16bit-mono-opus", Opus, Ogg, 16000, 2000),
    fmt!("ogg-24khz-16bit-mono-opus", Opus, Ogg, 24000, 3000),
    fmt!("ogg-48khz-16bit-mono-opus", Opus, Ogg, 48000, 4000),
    fmt!("webm-16khz-16bit-mono-opus", Opus, Webm, 16000, 2000),
    fmt!("webm-24khz-16bit-mono-opus", Opus, Webm, 24000, 3000),
    fmt!("webm-24khz-16bit-24kbps-mono-opus", Opus, Webm, 24000, 3000),
    fmt!("amr-wb-16000hz", AmrWb, Raw, 16000, 2985),
    fmt!("g722-16khz-64kbps", G722, Raw, 16000, 8000),
    fmt!("riff-8khz-16bit-mono-pcm", Pcm16, Riff, 8000, 16000),
    fmt!("riff-16khz-16bit-mono-pcm", Pcm16, Riff, 16000, 32000),
    fmt!("riff-22050hz-16bit-mono-pcm", Pcm16, Riff, 22050, 44100),
    fmt!("riff-24khz-16bit-mono-pcm", Pcm16, Riff, 24000, 48000),
    fmt!("riff-44100hz-16bit-mono-pcm", Pcm16, Riff, 44100, 88200),
    fmt!("riff-48khz-16bit-mono-pcm", Pcm16, Riff, 48000, 96000),
    fmt!("riff-8khz-8bit-mono-mulaw", Mulaw, Riff, 8000, 8000),
    fmt!("riff-8khz-8bit-mono-alaw", Alaw, Riff, 8000, 8000),
];

/// The format used when a websocket turn names none. The service's own default is not
/// documented; MP3 at 24 kHz is what the SDKs fall back to.
pub const DEFAULT_FORMAT: &str = "audio-24khz-48kbitrate-mono-mp3";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_is_case_insensitive_and_complete() {
        assert_eq!(
            OutputFormat::by_name("RIFF-24KHZ-16BIT-MONO-PCM").map(|f| f.sample_rate),
            Some(24000)
        );
        assert!(OutputFormat::by_name("riff-24khz-16bit-stereo-pcm").is_none());
        assert!(OutputFormat::by_name(DEFAULT_FORMAT).is_some());
        for f in OutputFormat::all() {
            assert!(f.bytes_per_sec > 0, "{}", f.name);
            if let Some(b) = f.bytes_per_sample() {
                assert_eq!(f.bytes_per_sec, f.sample_rate * b, "{}", f.name);
            }
        }
    }
}
