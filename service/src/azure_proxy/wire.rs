//! Just enough of the protocol's framing to route a client's messages: the `Path` and
//! `X-RequestId` headers of text and binary messages, read with speech-core's codec
//! ([`speech_core::wire`]). For a relayed turn bodies and payloads are never parsed or
//! changed; they go upstream byte for byte.

use bytes::Bytes;
use speech_core::wire::{self, Headers};

/// The routing facts of one client message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// `Path`, lower-cased (the SDKs vary the case of nothing here, but Azure matches
    /// header values case-insensitively).
    pub path: String,
    /// `X-RequestId`, upper-cased so `abc` and `ABC` are one turn.
    pub request_id: Option<String>,
}

impl Route {
    fn of(headers: &Headers) -> Self {
        Self {
            path: headers.path().unwrap_or_default().to_ascii_lowercase(),
            request_id: headers
                .request_id()
                .filter(|r| !r.is_empty())
                .map(str::to_ascii_uppercase),
        }
    }
}

/// Routing facts of a text message: headers up to the first blank line.
pub fn text_route(text: &str) -> Route {
    Route::of(&wire::parse_text(text).headers)
}

/// Routing facts of a binary message (`[u16 BE header length][headers][payload]`), or
/// `None` when the frame is too short for its declared header block.
pub fn binary_route(data: &Bytes) -> Option<Route> {
    wire::parse_binary(data.clone())
        .ok()
        .map(|m| Route::of(&m.headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_both_header_styles() {
        let js =
            "Path: synthesis.context\r\nX-RequestId: 9670d890\r\nX-Timestamp: t\r\n\r\n{\"a\":1}";
        assert_eq!(
            text_route(js),
            Route {
                path: "synthesis.context".into(),
                request_id: Some("9670D890".into())
            }
        );
        let native = "X-Timestamp:t\r\nPath:speech.config\r\n\r\n{}";
        assert_eq!(text_route(native).path, "speech.config");
        assert_eq!(text_route(native).request_id, None);
        let headers = b"Path:audio\r\nX-RequestId:AB\r\n";
        let mut frame = vec![0, u8::try_from(headers.len()).expect("short")];
        frame.extend_from_slice(headers);
        frame.extend_from_slice(&[1, 2, 3]);
        let r = binary_route(&Bytes::from(frame)).expect("route");
        assert_eq!(
            (r.path.as_str(), r.request_id.as_deref()),
            ("audio", Some("AB"))
        );
        assert_eq!(binary_route(&Bytes::from_static(&[0, 9, 1])), None);
    }
}
