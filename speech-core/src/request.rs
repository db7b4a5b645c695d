//! Request types, request ids, SSML building and the shared validation.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::error::SpeechError;
use crate::format::AudioFormat;

/// Largest SSML document accepted per synthesis turn, in bytes. Azure's websocket endpoint
/// enforces 64 KB per turn; checking it here turns a mid-stream close into a clear 400.
pub const MAX_SSML_BYTES: usize = 65_536;

/// Longest accepted voice name, in bytes.
pub const MAX_VOICE_NAME_LEN: usize = 128;

/// Longest accepted recognition language tag (BCP 47 allows up to 35 characters).
pub const MAX_LANGUAGE_TAG_LEN: usize = 35;

/// A request id as Azure wants it in `X-RequestId` / `X-ConnectionId`: 32 hex digits, no
/// dashes.
///
/// Azure closes the socket with 1002 for an id in dashed form, so the type makes the wrong
/// form unrepresentable. [`RequestId::new`] produces uppercase hex from a random v4 UUID, as
/// the JavaScript Speech SDK does; [`FromStr`] accepts either case (ids from clients and
/// logs) and keeps the text as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(Box<str>);

impl RequestId {
    /// A fresh random id (uppercase, from a v4 UUID).
    pub fn new() -> Self {
        let mut buf = uuid::Uuid::encode_buffer();
        let s = uuid::Uuid::new_v4().simple().encode_upper(&mut buf);
        Self(Box::from(&*s))
    }

    /// The 32 hex characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `Default` is a fresh random id, so that `..Default::default()` never produces a
/// duplicate (Azure rejects a reused id on one connection).
impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RequestId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Returned when a string is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request id: expected 32 hexadecimal characters without dashes")]
pub struct InvalidRequestId;

impl FromStr for RequestId {
    type Err = InvalidRequestId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(Box::from(s)))
        } else {
            Err(InvalidRequestId)
        }
    }
}

impl serde::Serialize for RequestId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RequestId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What to speak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SynthesisInput {
    /// Plain text; the backend wraps it in SSML with [`build_ssml`] and the request's voice.
    Text(String),
    /// A complete SSML document, sent as is. It names its own voice(s).
    Ssml(String),
}

/// One synthesis turn.
///
/// Plain data with public fields so that the service can build it from an HTTP body; call
/// [`validate`](Self::validate) before handing it to a backend (backends call it too, so a
/// bad request never costs a round trip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthesisRequest {
    /// Text or SSML.
    pub input: SynthesisInput,
    /// Voice short name, e.g. `en-US-AvaMultilingualNeural`. Required for
    /// [`SynthesisInput::Text`]. For [`SynthesisInput::Ssml`] the document names the voice,
    /// so this may be empty (it is then only informational, e.g. for logs).
    pub voice: String,
    /// Output format the caller wants to receive.
    pub format: AudioFormat,
    /// Emit [`SynthesisEvent::WordBoundary`](crate::SynthesisEvent::WordBoundary) events.
    pub word_boundaries: bool,
    /// Id of this turn (`X-RequestId`).
    pub request_id: RequestId,
}

impl SynthesisRequest {
    /// A plain-text request with a fresh request id and no word boundaries.
    pub fn text(text: impl Into<String>, voice: impl Into<String>, format: AudioFormat) -> Self {
        Self {
            input: SynthesisInput::Text(text.into()),
            voice: voice.into(),
            format,
            word_boundaries: false,
            request_id: RequestId::new(),
        }
    }

    /// An SSML request with a fresh request id, an empty `voice` and no word boundaries.
    pub fn ssml(ssml: impl Into<String>, format: AudioFormat) -> Self {
        Self {
            input: SynthesisInput::Ssml(ssml.into()),
            voice: String::new(),
            format,
            word_boundaries: false,
            request_id: RequestId::new(),
        }
    }

    /// Builder-style switch for word-boundary events.
    pub fn with_word_boundaries(mut self, enabled: bool) -> Self {
        self.word_boundaries = enabled;
        self
    }

    /// The SSML document to send: the input itself for SSML, or [`build_ssml`] of the text
    /// and voice. Borrowed when no building is needed.
    pub fn to_ssml(&self) -> Cow<'_, str> {
        match &self.input {
            SynthesisInput::Ssml(ssml) => Cow::Borrowed(ssml),
            SynthesisInput::Text(text) => Cow::Owned(build_ssml(text, &self.voice)),
        }
    }

    /// The one validation shared by the service and every backend, so that a request is
    /// accepted or rejected identically everywhere. Checks, returning
    /// [`SpeechError::BadRequest`]:
    /// - the text / SSML is not empty or whitespace only;
    /// - it contains no character XML 1.0 forbids (control characters other than tab,
    ///   CR, LF; U+FFFE, U+FFFF), which escaping cannot fix;
    /// - the final SSML is at most [`MAX_SSML_BYTES`];
    /// - SSML is well-formed XML with one `<speak>` root element (Azure closes a websocket
    ///   with 1007 on SSML it cannot parse, which would cost the pooled connection);
    /// - the voice is well-formed ([`validate_voice_name`]); required for text input.
    ///
    /// Allocates only to check SSML attributes for repeats and to describe an error.
    pub fn validate(&self) -> Result<(), SpeechError> {
        let (body, what) = match &self.input {
            SynthesisInput::Text(t) => (t.as_str(), "text"),
            SynthesisInput::Ssml(s) => (s.as_str(), "SSML"),
        };
        if body.trim().is_empty() {
            return Err(SpeechError::bad_request(format!("{what} is empty")));
        }
        if let Some(c) = body.chars().find(|&c| !is_xml_char(c)) {
            return Err(SpeechError::bad_request(format!(
                "{what} contains U+{:04X}, a character XML does not allow",
                u32::from(c)
            )));
        }
        match &self.input {
            SynthesisInput::Text(_) => validate_voice_name(&self.voice)?,
            SynthesisInput::Ssml(_) => {
                if !self.voice.is_empty() {
                    validate_voice_name(&self.voice)?;
                }
            }
        }
        let len = match &self.input {
            SynthesisInput::Ssml(s) => s.len(),
            SynthesisInput::Text(t) => ssml_len(t, &self.voice),
        };
        if len > MAX_SSML_BYTES {
            return Err(SpeechError::bad_request(format!(
                "SSML is {len} bytes; the limit is {MAX_SSML_BYTES} bytes per request"
            )));
        }
        // After the size check, so an oversized document is refused without being read.
        if let SynthesisInput::Ssml(s) = &self.input {
            crate::ssml::check_well_formed(s)?;
        }
        Ok(())
    }
}

const SSML_PREFIX: &str = "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xmlns:mstts='http://www.w3.org/2001/mstts' xmlns:emo='http://www.w3.org/2009/10/emotionml' xml:lang='en-US'><voice name='";
const SSML_MIDDLE: &str = "'>";
const SSML_SUFFIX: &str = "</voice></speak>";

/// Wraps plain text in the minimal SSML document the Speech SDK builds:
/// `<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xmlns:mstts='http://www.w3.org/2001/mstts' xmlns:emo='http://www.w3.org/2009/10/emotionml' xml:lang='en-US'><voice name='VOICE'>TEXT</voice></speak>`,
/// with both text and voice XML-escaped (so `<`, `&` and quotes in user text can never
/// inject markup). `xml:lang` is fixed to `en-US` like the SDK's default: the voice decides
/// the spoken language.
pub fn build_ssml(text: &str, voice: &str) -> String {
    let mut out = String::with_capacity(ssml_len(text, voice));
    out.push_str(SSML_PREFIX);
    out.push_str(&escape_xml(voice));
    out.push_str(SSML_MIDDLE);
    out.push_str(&escape_xml(text));
    out.push_str(SSML_SUFFIX);
    out
}

/// The byte length of `build_ssml(text, voice)`, computed without building it.
fn ssml_len(text: &str, voice: &str) -> usize {
    SSML_PREFIX.len()
        + escaped_len(voice)
        + SSML_MIDDLE.len()
        + escaped_len(text)
        + SSML_SUFFIX.len()
}

fn escape_of(c: char) -> Option<&'static str> {
    match c {
        '&' => Some("&amp;"),
        '<' => Some("&lt;"),
        '>' => Some("&gt;"),
        '"' => Some("&quot;"),
        '\'' => Some("&apos;"),
        _ => None,
    }
}

fn escaped_len(s: &str) -> usize {
    s.chars()
        .map(|c| escape_of(c).map_or(c.len_utf8(), str::len))
        .sum()
}

/// Escapes the five XML special characters (`& < > " '`), valid both in text and in
/// single- or double-quoted attributes. Borrows when there is nothing to escape.
pub fn escape_xml(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| escape_of(c).is_some()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(escaped_len(s));
    for c in s.chars() {
        match escape_of(c) {
            Some(e) => out.push_str(e),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Characters XML 1.0 allows in a document.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Checks a voice short name: 1 to [`MAX_VOICE_NAME_LEN`] ASCII letters, digits, `-`, `:`,
/// `_` or `.` (e.g. `en-US-AvaMultilingualNeural`, `en-US-Ava:DragonHDLatestNeural`).
/// Restrictive on purpose: the name is interpolated into SSML and logs, and the long form
/// `Microsoft Server Speech Text to Speech Voice (...)` is not needed since every voice has
/// a short name.
pub fn validate_voice_name(voice: &str) -> Result<(), SpeechError> {
    if voice.is_empty() {
        return Err(SpeechError::bad_request("voice is empty"));
    }
    if voice.len() > MAX_VOICE_NAME_LEN {
        return Err(SpeechError::bad_request(format!(
            "voice name is {} bytes; at most {MAX_VOICE_NAME_LEN} allowed",
            voice.len()
        )));
    }
    if !voice
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'_' | b'.'))
    {
        return Err(SpeechError::bad_request(
            "voice name may only contain ASCII letters, digits, '-', ':', '_' and '.'",
        ));
    }
    Ok(())
}

/// The `format` query parameter of the STT websocket: how much detail final phrases carry.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RecognitionFormat {
    /// `format=simple`: `DisplayText` only.
    #[default]
    Simple,
    /// `format=detailed`: adds the `NBest` list.
    Detailed,
}

impl RecognitionFormat {
    /// The query-parameter value: `simple` or `detailed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Detailed => "detailed",
        }
    }
}

/// The recognition mode, i.e. the STT websocket path
/// `/speech/recognition/{mode}/cognitiveservices/v1`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RecognitionMode {
    /// Single utterance: the service ends the turn after the first phrase.
    Interactive,
    /// Continuous recognition; the default for a voice agent's turns.
    #[default]
    Conversation,
    /// Continuous recognition with dictation post-processing (punctuation words).
    Dictation,
}

impl RecognitionMode {
    /// The path segment: `interactive`, `conversation` or `dictation`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Conversation => "conversation",
            Self::Dictation => "dictation",
        }
    }
}

/// One recognition turn.
///
/// Azure fixes language, format and mode at the websocket handshake, so a pool of STT
/// connections serves one (language, format, mode) combination; a backend may reject a
/// request that does not match its connection with [`SpeechError::BadRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecognitionRequest {
    /// BCP 47 language tag, e.g. `en-US`.
    pub language: String,
    /// Simple or detailed phrases.
    pub format: RecognitionFormat,
    /// Interactive, conversation or dictation.
    pub mode: RecognitionMode,
    /// Id of this turn (`X-RequestId`).
    pub request_id: RequestId,
}

impl RecognitionRequest {
    /// A request for `language` with the default format (simple) and mode (conversation)
    /// and a fresh request id.
    pub fn new(language: impl Into<String>) -> Self {
        Self {
            language: language.into(),
            format: RecognitionFormat::default(),
            mode: RecognitionMode::default(),
            request_id: RequestId::new(),
        }
    }

    /// Checks the language tag: 2 to [`MAX_LANGUAGE_TAG_LEN`] ASCII letters, digits and
    /// `-`, not starting or ending with `-`. Returns [`SpeechError::BadRequest`] otherwise,
    /// because the tag ends up in a URL query.
    pub fn validate(&self) -> Result<(), SpeechError> {
        let l = self.language.as_str();
        let ok = (2..=MAX_LANGUAGE_TAG_LEN).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-');
        if ok {
            Ok(())
        } else {
            Err(SpeechError::bad_request(
                "language must be a BCP 47 tag such as en-US (letters, digits and '-')",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorClass;

    fn bad(r: &SynthesisRequest) -> String {
        match r.validate() {
            Err(SpeechError::BadRequest { message }) => message,
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    #[test]
    fn request_id_shape() {
        let a = RequestId::new();
        let b = RequestId::new();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(
            a.as_str()
                .bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        );
        assert_eq!(a.to_string(), a.as_str());
        assert_eq!(a.as_str().parse::<RequestId>().as_ref(), Ok(&a));
        let lower = "5d0c5e7c4f6a4c51a7a2f3e9b1c0d2e4";
        assert_eq!(
            lower.parse::<RequestId>().map(|r| r.to_string()),
            Ok(lower.to_owned())
        );
        assert!(
            "5d0c5e7c-4f6a-4c51-a7a2-f3e9b1c0d2e4"
                .parse::<RequestId>()
                .is_err()
        );
        assert!("xyz".parse::<RequestId>().is_err());
        assert!("g".repeat(32).parse::<RequestId>().is_err());
        let json = serde_json::to_string(&a).expect("serialize");
        assert_eq!(json, format!("\"{a}\""));
        assert_eq!(serde_json::from_str::<RequestId>(&json).ok(), Some(a));
        assert!(serde_json::from_str::<RequestId>("\"abc\"").is_err());
    }

    #[test]
    fn builds_sdk_shaped_ssml() {
        let r = SynthesisRequest::text(
            "Hello",
            "en-US-JennyNeural",
            AudioFormat::Riff24Khz16BitMonoPcm,
        );
        assert_eq!(
            r.to_ssml(),
            "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' \
             xmlns:mstts='http://www.w3.org/2001/mstts' \
             xmlns:emo='http://www.w3.org/2009/10/emotionml' xml:lang='en-US'>\
             <voice name='en-US-JennyNeural'>Hello</voice></speak>"
        );
        let ssml = "<speak version='1.0'>x</speak>";
        let r = SynthesisRequest::ssml(ssml, AudioFormat::Raw16Khz16BitMonoPcm);
        assert!(matches!(r.to_ssml(), Cow::Borrowed(s) if s == ssml));
    }

    #[test]
    fn escapes_text_and_voice() {
        let ssml = build_ssml("Tom & Jerry <b>'hi'\" </voice>", "v'x");
        assert!(
            ssml.contains(">Tom &amp; Jerry &lt;b&gt;&apos;hi&apos;&quot; &lt;/voice&gt;</voice>")
        );
        assert!(ssml.contains("name='v&apos;x'"));
        assert_eq!(ssml.matches("<voice").count(), 1);
        assert!(matches!(escape_xml("plain"), Cow::Borrowed("plain")));
        assert_eq!(escape_xml("a<b"), "a&lt;b");
        // Non-ASCII passes through untouched.
        assert_eq!(escape_xml("héllo 日本"), "héllo 日本");
    }

    #[test]
    fn precomputed_length_matches() {
        for (text, voice) in [
            ("Hello", "en-US-JennyNeural"),
            ("a&b<c>'\"", "x"),
            ("日本語のテキスト", "ja-JP-NanamiNeural"),
        ] {
            assert_eq!(ssml_len(text, voice), build_ssml(text, voice).len());
        }
    }

    #[test]
    fn validation_accepts_good_requests() {
        let r = SynthesisRequest::text(
            "Hi there.",
            "en-US-Ava:DragonHDLatestNeural",
            AudioFormat::Riff24Khz16BitMonoPcm,
        );
        assert_eq!(r.validate(), Ok(()));
        let r = SynthesisRequest::ssml(
            "<speak version='1.0'>x</speak>",
            AudioFormat::Riff24Khz16BitMonoPcm,
        );
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn validation_errors() {
        let f = AudioFormat::Riff24Khz16BitMonoPcm;
        assert!(bad(&SynthesisRequest::text("", "en-US-AvaNeural", f)).contains("empty"));
        assert!(bad(&SynthesisRequest::text("  \n\t", "en-US-AvaNeural", f)).contains("empty"));
        assert!(bad(&SynthesisRequest::ssml("", f)).contains("SSML is empty"));
        assert!(bad(&SynthesisRequest::ssml("hello", f)).contains("<speak>"));
        assert!(bad(&SynthesisRequest::text("a\u{0}b", "v", f)).contains("U+0000"));
        assert!(bad(&SynthesisRequest::text("hi", "", f)).contains("voice is empty"));
        assert!(bad(&SynthesisRequest::text("hi", "en US", f)).contains("voice name"));
        assert!(bad(&SynthesisRequest::text("hi", "a'b", f)).contains("voice name"));
        assert!(bad(&SynthesisRequest::text("hi", "x".repeat(129), f)).contains("129"));
        assert_eq!(
            SynthesisRequest::text("hi", "x".repeat(128), f).validate(),
            Ok(())
        );
        let mut ssml = SynthesisRequest::ssml("<speak>x</speak>", f);
        ssml.voice = "bad voice".into();
        assert!(bad(&ssml).contains("voice name"));
    }

    #[test]
    fn size_limit_counts_the_final_ssml() {
        let f = AudioFormat::Raw24Khz16BitMonoPcm;
        let voice = "en-US-AvaNeural";
        let overhead = build_ssml("", voice).len();
        let fits = SynthesisRequest::text("a".repeat(MAX_SSML_BYTES - overhead), voice, f);
        assert_eq!(fits.validate(), Ok(()));
        let over = SynthesisRequest::text("a".repeat(MAX_SSML_BYTES - overhead + 1), voice, f);
        assert!(bad(&over).contains("65536"));
        // Escaping grows the text: 13108 '&' become 65540 bytes of "&amp;".
        let escaped = SynthesisRequest::text("&".repeat(13_108), voice, f);
        assert!(bad(&escaped).contains("limit"));
        let mut big = String::from("<speak>");
        big.push_str(&"a".repeat(MAX_SSML_BYTES));
        big.push_str("</speak>");
        let r = SynthesisRequest::ssml(big, f);
        assert_eq!(
            r.validate().map_err(|e| e.class()),
            Err(ErrorClass::BadRequest)
        );
    }

    #[test]
    fn recognition_request() {
        let r = RecognitionRequest::new("en-US");
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.format.as_str(), "simple");
        assert_eq!(r.mode.as_str(), "conversation");
        assert_eq!(RecognitionMode::Interactive.as_str(), "interactive");
        assert_eq!(RecognitionMode::Dictation.as_str(), "dictation");
        assert_eq!(RecognitionFormat::Detailed.as_str(), "detailed");
        for badlang in ["", "e", "en US", "-en", "en-", "en&x=1", &"a".repeat(36)] {
            let r = RecognitionRequest::new(badlang);
            assert_eq!(
                r.validate().map_err(|e| e.class()),
                Err(ErrorClass::BadRequest),
                "{badlang}"
            );
        }
        assert_eq!(
            serde_json::to_string(&RecognitionMode::Conversation)
                .ok()
                .as_deref(),
            Some("\"conversation\"")
        );
    }
}
