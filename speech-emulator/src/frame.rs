//! The Azure Speech websocket message framing (docs/protocol.md#message-framing),
//! self-contained so the emulator does not depend on the client crates it is meant to test.
//!
//! - Text message: `Name:value\r\n` headers, a blank line, then the body.
//! - Binary message: a 2-byte big-endian header length, that many bytes of
//!   `Name:value\r\n` headers, then the payload.
//!
//! Parsing is lenient in the ways real clients differ (header-name case, a space after the
//! colon or not, bare `\n` line ends); writing follows the service's own style (`Name:value`,
//! no space) and always emits the blank line, because some clients fail without it.

use std::fmt;

/// Why a client frame could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A binary frame shorter than its 2-byte header-length prefix.
    MissingHeaderLength,
    /// A binary frame whose header length points past the end of the frame.
    HeaderPastEnd {
        /// The declared header length.
        declared: usize,
        /// The bytes actually available after the prefix.
        available: usize,
    },
    /// The header block is not valid UTF-8.
    HeadersNotUtf8,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeaderLength => f.write_str("binary frame shorter than its header length"),
            Self::HeaderPastEnd {
                declared,
                available,
            } => write!(
                f,
                "binary frame declares {declared} header bytes but has {available}"
            ),
            Self::HeadersNotUtf8 => f.write_str("frame headers are not UTF-8"),
        }
    }
}

impl std::error::Error for FrameError {}

/// An ordered list of message headers with case-insensitive lookup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// An empty header list.
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a header (kept in insertion order, as it will be written).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The first value of `name`, compared case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The `Path` header, if present.
    pub fn path(&self) -> Option<&str> {
        self.get("Path")
    }

    /// The `X-RequestId` header, if present.
    pub fn request_id(&self) -> Option<&str> {
        self.get("X-RequestId")
    }

    /// Parses a header block: one `Name:value` per line, value trimmed. Lines without a
    /// colon are skipped rather than rejected, because a lenient service ignores them.
    fn parse_block(block: &str) -> Self {
        let mut headers = Self::new();
        for line in block.split('\n') {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim();
                if !name.is_empty() {
                    headers.push(name, value.trim());
                }
            }
        }
        headers
    }

    /// Writes the block in `Name:value\r\n` form (or `Name: value` when `spaced`).
    fn write_block(&self, out: &mut String, spaced: bool) {
        for (name, value) in self.iter() {
            out.push_str(name);
            out.push(':');
            if spaced {
                out.push(' ');
            }
            out.push_str(value);
            out.push_str("\r\n");
        }
    }
}

/// A parsed text message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMessage {
    /// The headers before the blank line.
    pub headers: Headers,
    /// Everything after the blank line (may be empty).
    pub body: String,
}

/// A parsed binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMessage {
    /// The headers inside the length-prefixed block.
    pub headers: Headers,
    /// The payload after the header block (empty = end of audio).
    pub payload: Vec<u8>,
}

/// Parses a text message. Never fails: a message without a blank line is read as headers
/// only, which is what a tolerant server does with `Path:…\r\n` alone.
pub fn parse_text(text: &str) -> TextMessage {
    let (head, body) = if let Some(i) = text.find("\r\n\r\n") {
        (&text[..i], &text[i + 4..])
    } else if let Some(i) = text.find("\n\n") {
        (&text[..i], &text[i + 2..])
    } else {
        (text, "")
    };
    TextMessage {
        headers: Headers::parse_block(head),
        body: body.to_owned(),
    }
}

/// Parses a binary message (`u16` big-endian header length, headers, payload).
pub fn parse_binary(data: &[u8]) -> Result<BinaryMessage, FrameError> {
    if data.len() < 2 {
        return Err(FrameError::MissingHeaderLength);
    }
    let declared = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let rest = &data[2..];
    if declared > rest.len() {
        return Err(FrameError::HeaderPastEnd {
            declared,
            available: rest.len(),
        });
    }
    let (head, payload) = rest.split_at(declared);
    let head = std::str::from_utf8(head).map_err(|_| FrameError::HeadersNotUtf8)?;
    Ok(BinaryMessage {
        headers: Headers::parse_block(head),
        payload: payload.to_vec(),
    })
}

/// How the emulator writes headers. The service writes `Name:value`; the `quirks` fault
/// switches to `name: value` to exercise a client's lenient parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// `Name:value`, as the service writes.
    #[default]
    Service,
    /// `name: value`: lowercase names and a space, as some proxies and the JS SDK write.
    LowercaseSpaced,
}

impl HeaderStyle {
    fn apply(self, headers: &Headers) -> (Headers, bool) {
        match self {
            Self::Service => (headers.clone(), false),
            Self::LowercaseSpaced => {
                let mut out = Headers::new();
                for (n, v) in headers.iter() {
                    out.push(n.to_ascii_lowercase(), v);
                }
                (out, true)
            }
        }
    }
}

/// Builds a text message: headers, the mandatory blank line, then the body.
pub fn build_text(headers: &Headers, body: &str, style: HeaderStyle) -> String {
    let (headers, spaced) = style.apply(headers);
    let mut out = String::with_capacity(128 + body.len());
    headers.write_block(&mut out, spaced);
    out.push_str("\r\n");
    out.push_str(body);
    out
}

/// Builds a binary message. The header block ends with the last header's CRLF (no blank
/// line) and its length must fit the JS SDK's signed 16-bit read, so it is capped below 32 KiB
/// by construction: the emulator only writes a handful of short headers.
pub fn build_binary(headers: &Headers, payload: &[u8], style: HeaderStyle) -> Vec<u8> {
    let (headers, spaced) = style.apply(headers);
    let mut head = String::with_capacity(160);
    headers.write_block(&mut head, spaced);
    let len = u16::try_from(head.len()).unwrap_or(u16::MAX).min(0x7fff);
    let mut out = Vec::with_capacity(2 + head.len() + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&head.as_bytes()[..usize::from(len)]);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_roundtrip_and_lenient_parse() {
        let mut h = Headers::new();
        h.push("X-RequestId", "ABC");
        h.push("Path", "turn.start");
        let msg = build_text(&h, "{}", HeaderStyle::Service);
        assert_eq!(msg, "X-RequestId:ABC\r\nPath:turn.start\r\n\r\n{}");
        let parsed = parse_text("path: ssml\r\nx-requestid:  id1 \r\n\r\n<speak/>");
        assert_eq!(parsed.headers.path(), Some("ssml"));
        assert_eq!(parsed.headers.request_id(), Some("id1"));
        assert_eq!(parsed.body, "<speak/>");
        let bare = parse_text("Path:turn.end\r\n");
        assert_eq!(bare.headers.path(), Some("turn.end"));
        assert_eq!(bare.body, "");
    }

    #[test]
    fn binary_roundtrip_and_errors() {
        let mut h = Headers::new();
        h.push("Path", "audio");
        let b = build_binary(&h, &[1, 2, 3], HeaderStyle::Service);
        assert_eq!(&b[..2], &[0, 12], "\"Path:audio\\r\\n\" is 12 bytes");
        let p = parse_binary(&b).expect("valid");
        assert_eq!(p.headers.path(), Some("audio"));
        assert_eq!(p.payload, vec![1, 2, 3]);
        assert_eq!(parse_binary(&[0]), Err(FrameError::MissingHeaderLength));
        assert!(matches!(
            parse_binary(&[0, 9, b'a']),
            Err(FrameError::HeaderPastEnd { .. })
        ));
        assert_eq!(parse_binary(&[0, 1, 0xff]), Err(FrameError::HeadersNotUtf8));
    }
}
