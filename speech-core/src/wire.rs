//! The Azure Speech websocket message codec (docs/protocol.md#message-framing), shared by
//! every crate that speaks the protocol: speech-azure as a client, the service as the
//! server an official SDK talks to.
//!
//! Text messages are a header block, a blank line and a body; binary messages are a
//! big-endian `u16` header length, the header block and a payload. Parsing is lenient
//! (the service writes `Name:value`, the JS SDK `Name: value`, header names vary in case,
//! some peers omit the separator when the body is empty) and never panics on any input;
//! writing is exact and refuses header text that could smuggle a second header.

use std::time::SystemTime;

use bytes::Bytes;

/// Largest binary-message header block we write. The legacy protocol caps headers at
/// 8192 bytes and the JS SDK reads the length as a signed 16-bit number, so staying well
/// below both keeps every server implementation happy.
pub const MAX_HEADER_BLOCK: usize = 8192;

/// Why a message could not be parsed or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A binary message shorter than its 2-byte length prefix.
    #[error("binary message of {0} bytes is too short for its header length")]
    TooShort(usize),
    /// The declared header length runs past the end of the message.
    #[error("binary message declares {declared} header bytes but only {available} follow")]
    HeaderOverrun {
        /// Declared header length.
        declared: usize,
        /// Bytes after the prefix.
        available: usize,
    },
    /// A header name or value we were asked to write is not representable.
    #[error("invalid header {0:?}: names must be non-empty tokens, values single-line")]
    InvalidHeader(String),
    /// The header block we were asked to write is too long.
    #[error("header block of {0} bytes exceeds the {MAX_HEADER_BLOCK}-byte limit")]
    HeaderTooLong(usize),
}

/// An ordered list of message headers. Lookups ignore ASCII case, as the SDKs do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    items: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a header (order is kept when writing).
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.items.push((name.into(), value.into()));
        self
    }

    /// Builder form of [`push`](Self::push).
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.push(name, value);
        self
    }

    /// The first value of `name`, matched case-insensitively.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.items
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Path`.
    pub fn path(&self) -> Option<&str> {
        self.get("Path")
    }

    /// `X-RequestId`.
    pub fn request_id(&self) -> Option<&str> {
        self.get("X-RequestId")
    }

    /// `X-StreamId`.
    pub fn stream_id(&self) -> Option<&str> {
        self.get("X-StreamId")
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.items.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn parse_block(block: &str) -> Self {
        let mut h = Self::new();
        for line in block.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if let Some((name, value)) = line.split_once(':') {
                let name = name.trim();
                if !name.is_empty() {
                    h.items.push((name.to_owned(), value.trim().to_owned()));
                }
            }
        }
        h
    }

    /// Writes `Name: value\r\n` per header (the JS SDK's form), checking each one.
    fn write_block(&self, out: &mut String) -> Result<(), FrameError> {
        for (n, v) in &self.items {
            let name_ok = !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b':');
            let value_ok = !v.bytes().any(|b| b == b'\r' || b == b'\n');
            if !name_ok || !value_ok {
                return Err(FrameError::InvalidHeader(n.chars().take(64).collect()));
            }
            out.push_str(n);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        Ok(())
    }
}

/// A text (UTF-8) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMessage {
    /// Headers.
    pub headers: Headers,
    /// Body (often JSON; may be empty).
    pub body: String,
}

/// A binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMessage {
    /// Headers.
    pub headers: Headers,
    /// Payload (audio); empty marks the end of a stream.
    pub payload: Bytes,
}

/// Parses a text message. Never fails: the header block ends at the first blank line
/// (`\r\n\r\n`, or `\n\n` from sloppy peers, whichever comes first); with no blank line at all the whole text is
/// read as headers and the body is empty. Lines without a colon are skipped.
pub fn parse_text(text: &str) -> TextMessage {
    let crlf = text.find("\r\n\r\n").map(|i| (i, 4));
    let lf = text.find("\n\n").map(|i| (i, 2));
    let split = match (crlf, lf) {
        (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
        (a, b) => a.or(b),
    };
    let (block, body) = if let Some(body) = text.strip_prefix("\r\n") {
        // No headers at all, just the separator.
        ("", body)
    } else if let Some((i, n)) = split {
        (&text[..i], &text[i + n..])
    } else {
        (text, "")
    };
    TextMessage {
        headers: Headers::parse_block(block),
        body: body.to_owned(),
    }
}

/// Parses a binary message: `[u16 BE header length][headers][payload]`. Header bytes that
/// are not UTF-8 are decoded lossily (headers are meant to be ASCII; a bad byte should not
/// cost the audio).
pub fn parse_binary(data: Bytes) -> Result<BinaryMessage, FrameError> {
    if data.len() < 2 {
        return Err(FrameError::TooShort(data.len()));
    }
    let declared = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let available = data.len() - 2;
    if declared > available {
        return Err(FrameError::HeaderOverrun {
            declared,
            available,
        });
    }
    let block = String::from_utf8_lossy(&data[2..2 + declared]);
    Ok(BinaryMessage {
        headers: Headers::parse_block(&block),
        payload: data.slice(2 + declared..),
    })
}

/// Writes a text message: headers, a blank line, the body. The blank line is always
/// written, even for an empty body (some parsers need it).
pub fn write_text(headers: &Headers, body: &str) -> Result<String, FrameError> {
    let mut out = String::with_capacity(128 + body.len());
    headers.write_block(&mut out)?;
    out.push_str("\r\n");
    out.push_str(body);
    Ok(out)
}

/// Writes a binary message. The header block ends with the last header's CRLF (no blank
/// line) and counts toward the length prefix.
pub fn write_binary(headers: &Headers, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut block = String::with_capacity(128);
    headers.write_block(&mut block)?;
    if block.len() > MAX_HEADER_BLOCK {
        return Err(FrameError::HeaderTooLong(block.len()));
    }
    let len = u16::try_from(block.len()).map_err(|_| FrameError::HeaderTooLong(block.len()))?;
    let mut out = Vec::with_capacity(2 + block.len() + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(block.as_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// `X-Timestamp` value: ISO-8601 UTC with milliseconds, as the JS SDK writes
/// (`2026-07-13T15:52:35.123Z`).
pub fn timestamp(now: SystemTime) -> String {
    crate::time::rfc3339_millis(now)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_service_and_sdk_styles() {
        let svc = "X-RequestId:ABC\r\nContent-Type:application/json; charset=utf-8\r\nPath:turn.start\r\n\r\n{\"a\":1}";
        let m = parse_text(svc);
        assert_eq!(m.headers.path(), Some("turn.start"));
        assert_eq!(m.headers.request_id(), Some("ABC"));
        assert_eq!(
            m.headers.get("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(m.body, "{\"a\":1}");
        let sdk = "path: Turn.End\r\nx-requestid:  abc \r\n\r\n";
        let m = parse_text(sdk);
        assert_eq!(m.headers.path(), Some("Turn.End"));
        assert_eq!(m.headers.request_id(), Some("abc"));
        assert_eq!(m.body, "");
        // No separator at all: headers only.
        let m = parse_text("Path:turn.end\r\nX-RequestId:1");
        assert_eq!(m.headers.path(), Some("turn.end"));
        assert_eq!(m.body, "");
        // Bare LF separators.
        let m = parse_text("Path:x\n\nbody\r\n\r\nmore");
        assert_eq!(m.headers.path(), Some("x"));
        assert_eq!(m.body, "body\r\n\r\nmore");
    }

    #[test]
    fn real_binary_frame_from_the_service() {
        // The header block of a frame the real service sent, as published by a working
        // third-party client: 128 bytes.
        let hdr = "X-RequestId:025F36A205B5438982B944C077199122\r\nContent-Type:audio/mpeg\r\nX-StreamId:69B6AD0B57DB44289A2E44EB9D36FE88\r\nPath:audio\r\n";
        assert_eq!(hdr.len(), 128);
        let mut raw = vec![0u8, 128];
        raw.extend_from_slice(hdr.as_bytes());
        raw.extend_from_slice(&[0xFF, 0xF3, 0x01]);
        let m = parse_binary(Bytes::from(raw)).expect("parse");
        assert_eq!(m.headers.path(), Some("audio"));
        assert_eq!(
            m.headers.stream_id(),
            Some("69B6AD0B57DB44289A2E44EB9D36FE88")
        );
        assert_eq!(&m.payload[..], &[0xFF, 0xF3, 0x01]);
    }

    #[test]
    fn binary_errors() {
        assert_eq!(
            parse_binary(Bytes::from_static(&[1])),
            Err(FrameError::TooShort(1))
        );
        assert_eq!(
            parse_binary(Bytes::from_static(&[0, 5, b'a'])),
            Err(FrameError::HeaderOverrun {
                declared: 5,
                available: 1
            })
        );
        let m = parse_binary(Bytes::from_static(&[0, 0])).expect("empty ok");
        assert!(m.headers.is_empty() && m.payload.is_empty());
    }

    #[test]
    fn writes_exactly() {
        let h = Headers::new()
            .with("Path", "ssml")
            .with("X-RequestId", "ABC")
            .with("Content-Type", "application/ssml+xml");
        assert_eq!(
            write_text(&h, "<speak/>").expect("write"),
            "Path: ssml\r\nX-RequestId: ABC\r\nContent-Type: application/ssml+xml\r\n\r\n<speak/>"
        );
        assert_eq!(
            write_text(&Headers::new().with("Path", "x"), "").expect("write"),
            "Path: x\r\n\r\n"
        );
        let b = write_binary(&Headers::new().with("Path", "audio"), &[1, 2]).expect("write");
        assert_eq!(b, b"\x00\x0dPath: audio\r\n\x01\x02");
        for bad in [
            ("Pa th", "x"),
            ("", "x"),
            ("P:x", "y"),
            ("Path", "a\r\nX: y"),
        ] {
            let h = Headers::new().with(bad.0, bad.1);
            assert!(write_text(&h, "").is_err(), "{bad:?}");
            assert!(write_binary(&h, b"").is_err(), "{bad:?}");
        }
        let long = Headers::new().with("X", "v".repeat(MAX_HEADER_BLOCK));
        assert!(matches!(
            write_binary(&long, b""),
            Err(FrameError::HeaderTooLong(_))
        ));
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_784_001_155_123);
        assert_eq!(timestamp(t), "2026-07-14T03:52:35.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    fn header_strategy() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~&&[^:]]{0,30}"), 0..6)
    }

    proptest! {
        #[test]
        fn text_parse_never_panics(s in any::<String>()) {
            let _ = parse_text(&s);
        }

        #[test]
        fn binary_parse_never_panics(v in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_binary(Bytes::from(v));
        }

        #[test]
        fn binary_parse_with_valid_prefix_never_panics(
            len in 0u16..400, tail in prop::collection::vec(any::<u8>(), 0..300)
        ) {
            let mut v = len.to_be_bytes().to_vec();
            v.extend(tail);
            let _ = parse_binary(Bytes::from(v));
        }

        #[test]
        fn roundtrip(headers in header_strategy(), body in any::<String>(),
                     payload in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut h = Headers::new();
            for (n, v) in &headers {
                h.push(n.clone(), v.clone());
            }
            let trimmed: Vec<(String, String)> =
                headers.iter().map(|(n, v)| (n.clone(), v.trim().to_owned())).collect();
            let text = write_text(&h, &body).expect("valid headers");
            let back = parse_text(&text);
            let got: Vec<(String, String)> =
                back.headers.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
            prop_assert_eq!(&got, &trimmed);
            prop_assert_eq!(back.body, body);
            let bin = write_binary(&h, &payload).expect("valid headers");
            let back = parse_binary(Bytes::from(bin)).expect("parse");
            let got: Vec<(String, String)> =
                back.headers.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect();
            prop_assert_eq!(got, trimmed);
            prop_assert_eq!(&back.payload[..], &payload[..]);
        }
    }
}
