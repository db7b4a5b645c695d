//! Just enough of the protocol's framing to route a client's messages: the `Path` and
//! `X-RequestId` headers of text and binary messages. Bodies and payloads are never
//! parsed or changed; they go upstream byte for byte.

use bytes::Bytes;

/// The routing facts of one client message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// `Path`, lower-cased (the SDKs vary the case of nothing here, but Azure matches
    /// header values case-insensitively).
    pub path: String,
    /// `X-RequestId`, upper-cased so `abc` and `ABC` are one turn.
    pub request_id: Option<String>,
}

fn route_of(block: &str) -> Route {
    let mut route = Route::default();
    for line in block.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("path") {
            route.path = value.to_ascii_lowercase();
        } else if name.eq_ignore_ascii_case("x-requestid") && !value.is_empty() {
            route.request_id = Some(value.to_ascii_uppercase());
        }
    }
    route
}

/// Routing facts of a text message: headers up to the first blank line.
pub fn text_route(text: &str) -> Route {
    let block = match text.find("\r\n\r\n") {
        Some(i) => &text[..i],
        None => text.split("\n\n").next().unwrap_or(text),
    };
    route_of(block)
}

/// Routing facts of a binary message (`[u16 BE header length][headers][payload]`), or
/// `None` when the frame is too short for its declared header block.
pub fn binary_route(data: &Bytes) -> Option<Route> {
    if data.len() < 2 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let block = data.get(2..2 + len)?;
    Some(route_of(&String::from_utf8_lossy(block)))
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
