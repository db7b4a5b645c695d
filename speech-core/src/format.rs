//! Azure Speech output formats and the RIFF/WAV header helper.

use std::fmt;
use std::str::FromStr;

/// An Azure Speech synthesis output format, i.e. a value of the `X-Microsoft-OutputFormat`
/// header (REST) or of `synthesis.context.audio.outputFormat` (websocket).
///
/// The set is the one documented in "Audio outputs" and implemented by the official SDKs'
/// `SpeechSynthesisOutputFormat`. It is `#[non_exhaustive]` because Azure keeps adding
/// formats; adding one here must not break a downstream `match`.
///
/// The string form ([`as_header_str`](Self::as_header_str), [`Display`](fmt::Display),
/// [`FromStr`], serde) is the exact header value, so a format can be stored in
/// configuration files and JSON as Azure spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AudioFormat {
    /// `raw-8khz-16bit-mono-pcm`: headerless little-endian 16-bit PCM.
    Raw8Khz16BitMonoPcm,
    /// `raw-16khz-16bit-mono-pcm`
    Raw16Khz16BitMonoPcm,
    /// `raw-22050hz-16bit-mono-pcm`
    Raw22050Hz16BitMonoPcm,
    /// `raw-24khz-16bit-mono-pcm`
    Raw24Khz16BitMonoPcm,
    /// `raw-44100hz-16bit-mono-pcm`
    Raw44100Hz16BitMonoPcm,
    /// `raw-48khz-16bit-mono-pcm`
    Raw48Khz16BitMonoPcm,
    /// `riff-8khz-16bit-mono-pcm`: 16-bit PCM behind a 44-byte RIFF/WAV header.
    Riff8Khz16BitMonoPcm,
    /// `riff-16khz-16bit-mono-pcm`
    Riff16Khz16BitMonoPcm,
    /// `riff-22050hz-16bit-mono-pcm`
    Riff22050Hz16BitMonoPcm,
    /// `riff-24khz-16bit-mono-pcm`
    Riff24Khz16BitMonoPcm,
    /// `riff-44100hz-16bit-mono-pcm`
    Riff44100Hz16BitMonoPcm,
    /// `riff-48khz-16bit-mono-pcm`
    Riff48Khz16BitMonoPcm,
    /// `raw-8khz-8bit-mono-mulaw`: G.711 µ-law, one byte per sample.
    Raw8Khz8BitMonoMulaw,
    /// `raw-8khz-8bit-mono-alaw`: G.711 A-law, one byte per sample.
    Raw8Khz8BitMonoAlaw,
    /// `riff-8khz-8bit-mono-mulaw`: µ-law behind a RIFF header (format tag 7).
    Riff8Khz8BitMonoMulaw,
    /// `riff-8khz-8bit-mono-alaw`: A-law behind a RIFF header (format tag 6).
    Riff8Khz8BitMonoAlaw,
    /// `raw-16khz-16bit-mono-truesilk`
    Raw16Khz16BitMonoTrueSilk,
    /// `raw-24khz-16bit-mono-truesilk`
    Raw24Khz16BitMonoTrueSilk,
    /// `audio-16khz-32kbitrate-mono-mp3`
    Audio16Khz32KBitRateMonoMp3,
    /// `audio-16khz-64kbitrate-mono-mp3`
    Audio16Khz64KBitRateMonoMp3,
    /// `audio-16khz-128kbitrate-mono-mp3`
    Audio16Khz128KBitRateMonoMp3,
    /// `audio-24khz-48kbitrate-mono-mp3`
    Audio24Khz48KBitRateMonoMp3,
    /// `audio-24khz-96kbitrate-mono-mp3`
    Audio24Khz96KBitRateMonoMp3,
    /// `audio-24khz-160kbitrate-mono-mp3`
    Audio24Khz160KBitRateMonoMp3,
    /// `audio-48khz-96kbitrate-mono-mp3`
    Audio48Khz96KBitRateMonoMp3,
    /// `audio-48khz-192kbitrate-mono-mp3`
    Audio48Khz192KBitRateMonoMp3,
    /// `audio-16khz-16bit-32kbps-mono-opus`: bare Opus packets, no container.
    Audio16Khz16Bit32KbpsMonoOpus,
    /// `audio-24khz-16bit-24kbps-mono-opus`: bare Opus packets, no container.
    Audio24Khz16Bit24KbpsMonoOpus,
    /// `audio-24khz-16bit-48kbps-mono-opus`: bare Opus packets, no container.
    Audio24Khz16Bit48KbpsMonoOpus,
    /// `ogg-16khz-16bit-mono-opus`
    Ogg16Khz16BitMonoOpus,
    /// `ogg-24khz-16bit-mono-opus`
    Ogg24Khz16BitMonoOpus,
    /// `ogg-48khz-16bit-mono-opus`
    Ogg48Khz16BitMonoOpus,
    /// `webm-16khz-16bit-mono-opus`
    Webm16Khz16BitMonoOpus,
    /// `webm-24khz-16bit-mono-opus`
    Webm24Khz16BitMonoOpus,
    /// `webm-24khz-16bit-24kbps-mono-opus`
    Webm24Khz16Bit24KbpsMonoOpus,
    /// `amr-wb-16000hz`
    AmrWb16000Hz,
    /// `g722-16khz-64kbps`
    G722_16Khz64Kbps,
}

/// How the bytes of a format are encoded. Private: the public surface is the set of
/// questions callers actually ask (`is_riff`, `is_raw_pcm`, `mime_type`, ...), which lets
/// the table below change without breaking anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// Linear 16-bit little-endian PCM.
    Pcm16,
    MuLaw,
    ALaw,
    TrueSilk,
    Mp3,
    Opus,
    OggOpus,
    WebmOpus,
    AmrWb,
    G722,
}

/// One row of the format table.
struct Info {
    header: &'static str,
    rate: u32,
    encoding: Encoding,
    riff: bool,
    mime: &'static str,
}

const fn row(
    header: &'static str,
    rate: u32,
    encoding: Encoding,
    riff: bool,
    mime: &'static str,
) -> Info {
    Info {
        header,
        rate,
        encoding,
        riff,
        mime,
    }
}

impl AudioFormat {
    /// Every supported format, in declaration order. Useful for exhaustive tests and for
    /// listing accepted values in error messages and `--help` text.
    pub const ALL: [AudioFormat; 37] = [
        AudioFormat::Raw8Khz16BitMonoPcm,
        AudioFormat::Raw16Khz16BitMonoPcm,
        AudioFormat::Raw22050Hz16BitMonoPcm,
        AudioFormat::Raw24Khz16BitMonoPcm,
        AudioFormat::Raw44100Hz16BitMonoPcm,
        AudioFormat::Raw48Khz16BitMonoPcm,
        AudioFormat::Riff8Khz16BitMonoPcm,
        AudioFormat::Riff16Khz16BitMonoPcm,
        AudioFormat::Riff22050Hz16BitMonoPcm,
        AudioFormat::Riff24Khz16BitMonoPcm,
        AudioFormat::Riff44100Hz16BitMonoPcm,
        AudioFormat::Riff48Khz16BitMonoPcm,
        AudioFormat::Raw8Khz8BitMonoMulaw,
        AudioFormat::Raw8Khz8BitMonoAlaw,
        AudioFormat::Riff8Khz8BitMonoMulaw,
        AudioFormat::Riff8Khz8BitMonoAlaw,
        AudioFormat::Raw16Khz16BitMonoTrueSilk,
        AudioFormat::Raw24Khz16BitMonoTrueSilk,
        AudioFormat::Audio16Khz32KBitRateMonoMp3,
        AudioFormat::Audio16Khz64KBitRateMonoMp3,
        AudioFormat::Audio16Khz128KBitRateMonoMp3,
        AudioFormat::Audio24Khz48KBitRateMonoMp3,
        AudioFormat::Audio24Khz96KBitRateMonoMp3,
        AudioFormat::Audio24Khz160KBitRateMonoMp3,
        AudioFormat::Audio48Khz96KBitRateMonoMp3,
        AudioFormat::Audio48Khz192KBitRateMonoMp3,
        AudioFormat::Audio16Khz16Bit32KbpsMonoOpus,
        AudioFormat::Audio24Khz16Bit24KbpsMonoOpus,
        AudioFormat::Audio24Khz16Bit48KbpsMonoOpus,
        AudioFormat::Ogg16Khz16BitMonoOpus,
        AudioFormat::Ogg24Khz16BitMonoOpus,
        AudioFormat::Ogg48Khz16BitMonoOpus,
        AudioFormat::Webm16Khz16BitMonoOpus,
        AudioFormat::Webm24Khz16BitMonoOpus,
        AudioFormat::Webm24Khz16Bit24KbpsMonoOpus,
        AudioFormat::AmrWb16000Hz,
        AudioFormat::G722_16Khz64Kbps,
    ];

    /// The single source of truth for every per-format property.
    ///
    /// MIME types: RIFF formats are `audio/wav`. Headerless linear PCM is
    /// `audio/pcm;rate=N` rather than `audio/L16`, because RFC 2586 defines L16 as
    /// big-endian and Azure's raw PCM is little-endian: a client honouring `audio/L16`
    /// would play noise. µ-law and A-law use their RFC 4856 names `audio/PCMU` and
    /// `audio/PCMA`.
    const fn info(self) -> Info {
        use Encoding::*;
        match self {
            Self::Raw8Khz16BitMonoPcm => row(
                "raw-8khz-16bit-mono-pcm",
                8000,
                Pcm16,
                false,
                "audio/pcm;rate=8000",
            ),
            Self::Raw16Khz16BitMonoPcm => row(
                "raw-16khz-16bit-mono-pcm",
                16000,
                Pcm16,
                false,
                "audio/pcm;rate=16000",
            ),
            Self::Raw22050Hz16BitMonoPcm => row(
                "raw-22050hz-16bit-mono-pcm",
                22050,
                Pcm16,
                false,
                "audio/pcm;rate=22050",
            ),
            Self::Raw24Khz16BitMonoPcm => row(
                "raw-24khz-16bit-mono-pcm",
                24000,
                Pcm16,
                false,
                "audio/pcm;rate=24000",
            ),
            Self::Raw44100Hz16BitMonoPcm => row(
                "raw-44100hz-16bit-mono-pcm",
                44100,
                Pcm16,
                false,
                "audio/pcm;rate=44100",
            ),
            Self::Raw48Khz16BitMonoPcm => row(
                "raw-48khz-16bit-mono-pcm",
                48000,
                Pcm16,
                false,
                "audio/pcm;rate=48000",
            ),
            Self::Riff8Khz16BitMonoPcm => {
                row("riff-8khz-16bit-mono-pcm", 8000, Pcm16, true, "audio/wav")
            }
            Self::Riff16Khz16BitMonoPcm => {
                row("riff-16khz-16bit-mono-pcm", 16000, Pcm16, true, "audio/wav")
            }
            Self::Riff22050Hz16BitMonoPcm => row(
                "riff-22050hz-16bit-mono-pcm",
                22050,
                Pcm16,
                true,
                "audio/wav",
            ),
            Self::Riff24Khz16BitMonoPcm => {
                row("riff-24khz-16bit-mono-pcm", 24000, Pcm16, true, "audio/wav")
            }
            Self::Riff44100Hz16BitMonoPcm => row(
                "riff-44100hz-16bit-mono-pcm",
                44100,
                Pcm16,
                true,
                "audio/wav",
            ),
            Self::Riff48Khz16BitMonoPcm => {
                row("riff-48khz-16bit-mono-pcm", 48000, Pcm16, true, "audio/wav")
            }
            Self::Raw8Khz8BitMonoMulaw => {
                row("raw-8khz-8bit-mono-mulaw", 8000, MuLaw, false, "audio/PCMU")
            }
            Self::Raw8Khz8BitMonoAlaw => {
                row("raw-8khz-8bit-mono-alaw", 8000, ALaw, false, "audio/PCMA")
            }
            Self::Riff8Khz8BitMonoMulaw => {
                row("riff-8khz-8bit-mono-mulaw", 8000, MuLaw, true, "audio/wav")
            }
            Self::Riff8Khz8BitMonoAlaw => {
                row("riff-8khz-8bit-mono-alaw", 8000, ALaw, true, "audio/wav")
            }
            Self::Raw16Khz16BitMonoTrueSilk => row(
                "raw-16khz-16bit-mono-truesilk",
                16000,
                TrueSilk,
                false,
                "audio/SILK",
            ),
            Self::Raw24Khz16BitMonoTrueSilk => row(
                "raw-24khz-16bit-mono-truesilk",
                24000,
                TrueSilk,
                false,
                "audio/SILK",
            ),
            Self::Audio16Khz32KBitRateMonoMp3 => row(
                "audio-16khz-32kbitrate-mono-mp3",
                16000,
                Mp3,
                false,
                "audio/mpeg",
            ),
            Self::Audio16Khz64KBitRateMonoMp3 => row(
                "audio-16khz-64kbitrate-mono-mp3",
                16000,
                Mp3,
                false,
                "audio/mpeg",
            ),
            Self::Audio16Khz128KBitRateMonoMp3 => row(
                "audio-16khz-128kbitrate-mono-mp3",
                16000,
                Mp3,
                false,
                "audio/mpeg",
            ),
            Self::Audio24Khz48KBitRateMonoMp3 => row(
                "audio-24khz-48kbitrate-mono-mp3",
                24000,
                Mp3,
                false,
                "audio/mpeg",
            ),
            Self::Audio24Khz96KBitRateMonoMp3 => row(
                "audio-24khz-96kbitrate-mono-mp3",
                24000,
                Mp3,
                false,
                "audio/mpeg",
            ),
            Self::Audio24Khz160KBitRateMonoMp3 => row(
                "audio-24khz-160kbitrate-mono-mp3",
                24000,
                Mp3,
                false,
                "audio/mpeg",
            ),
            Self::Audio48Khz96KBitRateMonoMp3 => row(
                "audio-48khz-96kbitrate-mono-mp3",
                48000,
                Mp3,
                false,
                "audio/mpeg",
            ),
            Self::Audio48Khz192KBitRateMonoMp3 => row(
                "audio-48khz-192kbitrate-mono-mp3",
                48000,
                Mp3,
                false,
                "audio/mpeg",
            ),
            Self::Audio16Khz16Bit32KbpsMonoOpus => row(
                "audio-16khz-16bit-32kbps-mono-opus",
                16000,
                Opus,
                false,
                "audio/opus",
            ),
            Self::Audio24Khz16Bit24KbpsMonoOpus => row(
                "audio-24khz-16bit-24kbps-mono-opus",
                24000,
                Opus,
                false,
                "audio/opus",
            ),
            Self::Audio24Khz16Bit48KbpsMonoOpus => row(
                "audio-24khz-16bit-48kbps-mono-opus",
                24000,
                Opus,
                false,
                "audio/opus",
            ),
            Self::Ogg16Khz16BitMonoOpus => row(
                "ogg-16khz-16bit-mono-opus",
                16000,
                OggOpus,
                false,
                "audio/ogg",
            ),
            Self::Ogg24Khz16BitMonoOpus => row(
                "ogg-24khz-16bit-mono-opus",
                24000,
                OggOpus,
                false,
                "audio/ogg",
            ),
            Self::Ogg48Khz16BitMonoOpus => row(
                "ogg-48khz-16bit-mono-opus",
                48000,
                OggOpus,
                false,
                "audio/ogg",
            ),
            Self::Webm16Khz16BitMonoOpus => row(
                "webm-16khz-16bit-mono-opus",
                16000,
                WebmOpus,
                false,
                "audio/webm",
            ),
            Self::Webm24Khz16BitMonoOpus => row(
                "webm-24khz-16bit-mono-opus",
                24000,
                WebmOpus,
                false,
                "audio/webm",
            ),
            Self::Webm24Khz16Bit24KbpsMonoOpus => row(
                "webm-24khz-16bit-24kbps-mono-opus",
                24000,
                WebmOpus,
                false,
                "audio/webm",
            ),
            Self::AmrWb16000Hz => row("amr-wb-16000hz", 16000, AmrWb, false, "audio/AMR-WB"),
            Self::G722_16Khz64Kbps => row("g722-16khz-64kbps", 16000, G722, false, "audio/G722"),
        }
    }

    /// The exact `X-Microsoft-OutputFormat` header value, e.g. `riff-24khz-16bit-mono-pcm`.
    pub const fn as_header_str(self) -> &'static str {
        self.info().header
    }

    /// The sample rate of the decoded audio, in Hz.
    pub const fn sample_rate_hz(self) -> u32 {
        self.info().rate
    }

    /// The MIME type to put on an HTTP response carrying this format.
    ///
    /// `audio/wav` for RIFF; `audio/pcm;rate=N` for headerless 16-bit PCM (not
    /// `audio/L16`, which RFC 2586 defines as big-endian, while Azure's PCM is
    /// little-endian); `audio/PCMU` / `audio/PCMA` for headerless G.711; `audio/mpeg`,
    /// `audio/ogg`, `audio/webm`, `audio/opus` for the compressed families.
    pub const fn mime_type(self) -> &'static str {
        self.info().mime
    }

    /// Does the stream start with a 44-byte RIFF/WAV header?
    ///
    /// Azure's websocket endpoint never sends that header: clients request the
    /// [`raw_counterpart`](Self::raw_counterpart) and prepend [`wav_header`] themselves, as
    /// the official SDKs do.
    pub const fn is_riff(self) -> bool {
        self.info().riff
    }

    /// Is this headerless 16-bit linear PCM (`raw-*-16bit-mono-pcm`)?
    pub fn is_raw_pcm(self) -> bool {
        !self.is_riff() && self.info().encoding == Encoding::Pcm16
    }

    /// Is the payload (after any RIFF header) 16-bit linear PCM, raw or RIFF?
    pub fn is_pcm16(self) -> bool {
        self.info().encoding == Encoding::Pcm16
    }

    /// The format to request from the service when the RIFF header is added client-side:
    /// `riff-24khz-16bit-mono-pcm` → `raw-24khz-16bit-mono-pcm`, and likewise for µ-law and
    /// A-law. Formats without a RIFF header are returned unchanged, which is exactly what the
    /// JS SDK sends in `synthesis.context` for them.
    pub const fn raw_counterpart(self) -> AudioFormat {
        match self {
            Self::Riff8Khz16BitMonoPcm => Self::Raw8Khz16BitMonoPcm,
            Self::Riff16Khz16BitMonoPcm => Self::Raw16Khz16BitMonoPcm,
            Self::Riff22050Hz16BitMonoPcm => Self::Raw22050Hz16BitMonoPcm,
            Self::Riff24Khz16BitMonoPcm => Self::Raw24Khz16BitMonoPcm,
            Self::Riff44100Hz16BitMonoPcm => Self::Raw44100Hz16BitMonoPcm,
            Self::Riff48Khz16BitMonoPcm => Self::Raw48Khz16BitMonoPcm,
            Self::Riff8Khz8BitMonoMulaw => Self::Raw8Khz8BitMonoMulaw,
            Self::Riff8Khz8BitMonoAlaw => Self::Raw8Khz8BitMonoAlaw,
            other => other,
        }
    }

    /// Bits per sample of the uncompressed formats (16 for linear PCM, 8 for G.711);
    /// `None` for compressed formats, which have no fixed sample size.
    pub fn bits_per_sample(self) -> Option<u16> {
        match self.info().encoding {
            Encoding::Pcm16 => Some(16),
            Encoding::MuLaw | Encoding::ALaw => Some(8),
            _ => None,
        }
    }

    /// Bytes per second of audio payload (excluding any RIFF header) for the uncompressed
    /// formats: `rate × 2` for 16-bit PCM, 8000 for µ-law / A-law. `None` for compressed
    /// formats, whose byte rate is variable or only nominal; callers use this to turn a
    /// byte count into a duration, which is only exact for uncompressed audio.
    pub fn bytes_per_second(self) -> Option<u32> {
        let bits = self.bits_per_sample()?;
        Some(self.sample_rate_hz() * u32::from(bits / 8))
    }

    /// The WAV format tag for RIFF formats: 1 (PCM), 6 (A-law) or 7 (µ-law). `None` for
    /// formats that cannot be wrapped in a canonical 44-byte WAV header.
    pub fn wav_format_tag(self) -> Option<u16> {
        match self.info().encoding {
            Encoding::Pcm16 => Some(WAV_FORMAT_PCM),
            Encoding::ALaw => Some(WAV_FORMAT_ALAW),
            Encoding::MuLaw => Some(WAV_FORMAT_MULAW),
            _ => None,
        }
    }
}

impl fmt::Display for AudioFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_header_str())
    }
}

/// Returned when a string is not a known Azure output format.
///
/// Keeps (a bounded prefix of) the offending value so that a configuration error can
/// name it; values come from configuration or request bodies, never from secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown audio output format {value:?}; expected an Azure output format such as \
     riff-24khz-16bit-mono-pcm, raw-16khz-16bit-mono-pcm, audio-24khz-48kbitrate-mono-mp3 \
     or ogg-24khz-16bit-mono-opus"
)]
pub struct UnknownAudioFormat {
    /// The rejected value, truncated to 64 characters so a hostile input cannot inflate
    /// logs and error bodies.
    pub value: String,
}

impl FromStr for AudioFormat {
    type Err = UnknownAudioFormat;

    /// Parses a header value. Matching ignores ASCII case and surrounding whitespace
    /// (people type `RIFF-24KHZ-...` into environment variables); anything else must be
    /// exact.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        AudioFormat::ALL
            .into_iter()
            .find(|f| f.as_header_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownAudioFormat {
                value: wanted.chars().take(64).collect(),
            })
    }
}

impl serde::Serialize for AudioFormat {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_header_str())
    }
}

impl<'de> serde::Deserialize<'de> for AudioFormat {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// WAV format tag for linear PCM.
pub const WAV_FORMAT_PCM: u16 = 1;
/// WAV format tag for G.711 A-law.
pub const WAV_FORMAT_ALAW: u16 = 6;
/// WAV format tag for G.711 µ-law.
pub const WAV_FORMAT_MULAW: u16 = 7;
/// Length of the canonical RIFF/WAV header that [`wav_header`] writes.
pub const WAV_HEADER_LEN: usize = 44;

/// Builds the canonical 44-byte RIFF/WAV header for linear PCM (format tag 1).
///
/// Backends need this because Azure's websocket only streams raw audio: to honour a
/// `riff-*` format they request the raw counterpart and prepend this header, as the
/// official SDKs do. STT clients also send it as the first `audio` frame.
///
/// `data_len` is the number of audio bytes that follow. `None` means "unknown, still
/// streaming": both size fields are then written as 0, exactly as the Speech SDK does for
/// the STT header frame. `Some(n)` writes `36 + n` (saturating) as the RIFF size and `n`
/// as the data size. Out-of-range block alignments (absurd channel/bit combinations)
/// saturate instead of panicking.
pub fn wav_header(sample_rate: u32, channels: u16, bits: u16, data_len: Option<u32>) -> [u8; 44] {
    wav_header_with_tag(WAV_FORMAT_PCM, sample_rate, channels, bits, data_len)
}

/// Like [`wav_header`] but with an explicit format tag ([`WAV_FORMAT_ALAW`],
/// [`WAV_FORMAT_MULAW`], ...), for the `riff-8khz-8bit-mono-{alaw,mulaw}` formats.
pub fn wav_header_with_tag(
    format_tag: u16,
    sample_rate: u32,
    channels: u16,
    bits: u16,
    data_len: Option<u32>,
) -> [u8; 44] {
    let block_align_wide = u32::from(channels) * u32::from(bits).div_ceil(8);
    let block_align = u16::try_from(block_align_wide).unwrap_or(u16::MAX);
    let byte_rate = sample_rate.saturating_mul(u32::from(block_align));
    let (riff_len, data_len) = match data_len {
        Some(n) => (n.saturating_add(36), n),
        None => (0, 0),
    };
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&riff_len.to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&format_tag.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&bits.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_header_round_trips() {
        let mut seen = HashSet::new();
        for f in AudioFormat::ALL {
            assert!(seen.insert(f.as_header_str()), "duplicate header {f}");
            assert_eq!(f.as_header_str().parse::<AudioFormat>(), Ok(f));
            assert_eq!(f.to_string(), f.as_header_str());
            let json = serde_json::to_string(&f).expect("serialize");
            assert_eq!(json, format!("\"{}\"", f.as_header_str()));
            let back: AudioFormat = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, f);
        }
        assert_eq!(seen.len(), AudioFormat::ALL.len());
    }

    #[test]
    fn parse_is_case_insensitive_and_trims() {
        assert_eq!(
            " RIFF-24KHZ-16BIT-MONO-PCM ".parse::<AudioFormat>(),
            Ok(AudioFormat::Riff24Khz16BitMonoPcm)
        );
    }

    #[test]
    fn unknown_format_has_clear_bounded_error() {
        let err = "riff-96khz-16bit-mono-pcm"
            .parse::<AudioFormat>()
            .expect_err("unknown");
        let msg = err.to_string();
        assert!(msg.contains("riff-96khz-16bit-mono-pcm"), "{msg}");
        assert!(msg.contains("expected an Azure output format"), "{msg}");
        let long = "x".repeat(10_000);
        let err = long.parse::<AudioFormat>().expect_err("unknown");
        assert_eq!(err.value.len(), 64);
        assert!(serde_json::from_str::<AudioFormat>("\"mp3\"").is_err());
        assert!(serde_json::from_str::<AudioFormat>("42").is_err());
    }

    #[test]
    fn required_header_strings_exist() {
        for s in [
            "raw-8khz-16bit-mono-pcm",
            "raw-16khz-16bit-mono-pcm",
            "raw-22050hz-16bit-mono-pcm",
            "raw-24khz-16bit-mono-pcm",
            "raw-44100hz-16bit-mono-pcm",
            "raw-48khz-16bit-mono-pcm",
            "riff-8khz-16bit-mono-pcm",
            "riff-16khz-16bit-mono-pcm",
            "riff-22050hz-16bit-mono-pcm",
            "riff-24khz-16bit-mono-pcm",
            "riff-44100hz-16bit-mono-pcm",
            "riff-48khz-16bit-mono-pcm",
            "audio-16khz-32kbitrate-mono-mp3",
            "audio-16khz-64kbitrate-mono-mp3",
            "audio-16khz-128kbitrate-mono-mp3",
            "audio-24khz-48kbitrate-mono-mp3",
            "audio-24khz-96kbitrate-mono-mp3",
            "audio-24khz-160kbitrate-mono-mp3",
            "audio-48khz-96kbitrate-mono-mp3",
            "audio-48khz-192kbitrate-mono-mp3",
            "ogg-16khz-16bit-mono-opus",
            "ogg-24khz-16bit-mono-opus",
            "ogg-48khz-16bit-mono-opus",
            "webm-16khz-16bit-mono-opus",
            "webm-24khz-16bit-mono-opus",
        ] {
            let f: AudioFormat = s.parse().expect(s);
            assert_eq!(f.as_header_str(), s);
        }
    }

    #[test]
    fn sample_rates_follow_the_header() {
        for f in AudioFormat::ALL {
            let h = f.as_header_str();
            let rate = f.sample_rate_hz().to_string();
            let khz = format!("{}khz", f.sample_rate_hz() / 1000);
            assert!(
                h.contains(&format!("{rate}hz")) || h.contains(&khz),
                "{h} vs {rate}"
            );
        }
        assert_eq!(AudioFormat::Riff22050Hz16BitMonoPcm.sample_rate_hz(), 22050);
        assert_eq!(AudioFormat::Raw44100Hz16BitMonoPcm.sample_rate_hz(), 44100);
        assert_eq!(
            AudioFormat::Audio48Khz192KBitRateMonoMp3.sample_rate_hz(),
            48000
        );
    }

    #[test]
    fn mime_types() {
        use AudioFormat::*;
        assert_eq!(Riff24Khz16BitMonoPcm.mime_type(), "audio/wav");
        assert_eq!(Riff8Khz8BitMonoMulaw.mime_type(), "audio/wav");
        assert_eq!(Raw24Khz16BitMonoPcm.mime_type(), "audio/pcm;rate=24000");
        assert_eq!(Raw22050Hz16BitMonoPcm.mime_type(), "audio/pcm;rate=22050");
        assert_eq!(Audio24Khz48KBitRateMonoMp3.mime_type(), "audio/mpeg");
        assert_eq!(Ogg48Khz16BitMonoOpus.mime_type(), "audio/ogg");
        assert_eq!(Webm16Khz16BitMonoOpus.mime_type(), "audio/webm");
        assert_eq!(Raw8Khz8BitMonoMulaw.mime_type(), "audio/PCMU");
        for f in AudioFormat::ALL {
            assert!(f.mime_type().starts_with("audio/"), "{f}");
            if f.is_riff() {
                assert_eq!(f.mime_type(), "audio/wav");
            }
            if f.is_raw_pcm() {
                assert_eq!(
                    f.mime_type(),
                    format!("audio/pcm;rate={}", f.sample_rate_hz())
                );
            }
        }
    }

    #[test]
    fn riff_to_raw() {
        let mut riff_count = 0;
        for f in AudioFormat::ALL {
            let raw = f.raw_counterpart();
            assert!(!raw.is_riff(), "{f}");
            assert_eq!(raw.sample_rate_hz(), f.sample_rate_hz());
            assert_eq!(raw.bytes_per_second(), f.bytes_per_second());
            if f.is_riff() {
                riff_count += 1;
                assert_ne!(raw, f);
                assert_eq!(
                    raw.as_header_str(),
                    f.as_header_str().replacen("riff-", "raw-", 1)
                );
                assert!(f.wav_format_tag().is_some());
            } else {
                assert_eq!(raw, f);
            }
        }
        assert_eq!(riff_count, 8);
    }

    #[test]
    fn classification_and_byte_rates() {
        use AudioFormat::*;
        assert!(Raw16Khz16BitMonoPcm.is_raw_pcm());
        assert!(!Riff16Khz16BitMonoPcm.is_raw_pcm());
        assert!(Riff16Khz16BitMonoPcm.is_pcm16());
        assert!(!Raw8Khz8BitMonoMulaw.is_raw_pcm());
        assert!(!Audio16Khz32KBitRateMonoMp3.is_riff());
        assert_eq!(Raw16Khz16BitMonoPcm.bytes_per_second(), Some(32_000));
        assert_eq!(Riff24Khz16BitMonoPcm.bytes_per_second(), Some(48_000));
        assert_eq!(Raw44100Hz16BitMonoPcm.bytes_per_second(), Some(88_200));
        assert_eq!(Riff8Khz8BitMonoAlaw.bytes_per_second(), Some(8_000));
        assert_eq!(Audio24Khz48KBitRateMonoMp3.bytes_per_second(), None);
        assert_eq!(Ogg24Khz16BitMonoOpus.bytes_per_second(), None);
        assert_eq!(
            Riff8Khz8BitMonoMulaw.wav_format_tag(),
            Some(WAV_FORMAT_MULAW)
        );
        assert_eq!(Webm24Khz16BitMonoOpus.wav_format_tag(), None);
    }

    #[test]
    fn wav_header_layout() {
        let h = wav_header(24_000, 1, 16, Some(48_000));
        assert_eq!(&h[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([h[4], h[5], h[6], h[7]]), 48_036);
        assert_eq!(&h[8..16], b"WAVEfmt ");
        assert_eq!(u32::from_le_bytes([h[16], h[17], h[18], h[19]]), 16);
        assert_eq!(u16::from_le_bytes([h[20], h[21]]), 1);
        assert_eq!(u16::from_le_bytes([h[22], h[23]]), 1);
        assert_eq!(u32::from_le_bytes([h[24], h[25], h[26], h[27]]), 24_000);
        assert_eq!(u32::from_le_bytes([h[28], h[29], h[30], h[31]]), 48_000);
        assert_eq!(u16::from_le_bytes([h[32], h[33]]), 2);
        assert_eq!(u16::from_le_bytes([h[34], h[35]]), 16);
        assert_eq!(&h[36..40], b"data");
        assert_eq!(u32::from_le_bytes([h[40], h[41], h[42], h[43]]), 48_000);
    }

    #[test]
    fn wav_header_streaming_and_extremes() {
        // The STT header frame exactly as the JS SDK sends it.
        let h = wav_header(16_000, 1, 16, None);
        assert_eq!(&h[4..8], &[0, 0, 0, 0]);
        assert_eq!(&h[40..44], &[0, 0, 0, 0]);
        assert_eq!(u32::from_le_bytes([h[28], h[29], h[30], h[31]]), 32_000);
        // No panics on absurd values.
        let h = wav_header(u32::MAX, u16::MAX, u16::MAX, Some(u32::MAX));
        assert_eq!(u32::from_le_bytes([h[4], h[5], h[6], h[7]]), u32::MAX);
        let h = wav_header_with_tag(WAV_FORMAT_MULAW, 8000, 1, 8, Some(10));
        assert_eq!(u16::from_le_bytes([h[20], h[21]]), 7);
        assert_eq!(u16::from_le_bytes([h[32], h[33]]), 1);
        assert_eq!(u32::from_le_bytes([h[28], h[29], h[30], h[31]]), 8000);
    }
}
