//! A recorder of what clients send, so wire tests can compare two clients doing the same
//! work (Microsoft's SDK and ours) message by message.
//!
//! With capture on ([`EmulatorConfig::capture`](super::EmulatorConfig::capture)), the
//! emulator keeps one record per HTTP request, websocket upgrade, client websocket message
//! and client close, in arrival order. A record keeps what the service could act on: the
//! method, path and query, the header names and values, the message headers, the JSON body
//! as a tree, the SSML, and what kind of audio payload a frame carries. Values that differ
//! on every run (request and connection ids, timestamps, websocket nonces, the host and
//! port) are replaced by a description of their shape, and credentials are never recorded,
//! so two runs of one client give identical records and a capture can be committed.
//!
//! Records are JSON objects; [`Capture::json_lines`] writes them one per line, ordered by
//! connection (`conn`, numbered in the order connections and requests arrived), then by
//! arrival. A run of audio frames that differ only in their PCM bytes is kept once, since
//! chunk sizes are a client's choice and not part of the protocol.

use std::collections::BTreeMap;
use std::sync::Mutex;

use http::Request;
use serde_json::{Map, Value};

use crate::frame::{BinaryMessage, Headers, TextMessage};
use crate::state::lock;

/// The recorder shared by every connection of an emulator (and kept across restarts).
#[derive(Debug, Default)]
pub struct Capture {
    enabled: bool,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_conn: u64,
    records: Vec<(u64, Value)>,
}

/// A connection's number in the capture (0 when capture is off).
pub(crate) type ConnNo = u64;

impl Capture {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            state: Mutex::default(),
        }
    }

    /// Whether this emulator records.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The records so far, ordered by connection, then by arrival.
    pub fn records(&self) -> Vec<Value> {
        let mut records = lock(&self.state).records.clone();
        records.sort_by_key(|(conn, _)| *conn);
        records.into_iter().map(|(_, r)| r).collect()
    }

    /// The records as JSON lines (one record per line, each line ending in `\n`).
    pub fn json_lines(&self) -> String {
        self.records()
            .iter()
            .map(|r| format!("{r}\n"))
            .collect::<String>()
    }

    /// Forgets every record and restarts connection numbering.
    pub fn clear(&self) {
        *lock(&self.state) = State::default();
    }

    /// Records an HTTP request (`kind` is `"http"` or `"upgrade"`) and returns the number of
    /// the connection it opens.
    pub(crate) fn request<B>(&self, kind: &str, req: &Request<B>) -> ConnNo {
        if !self.enabled {
            return 0;
        }
        let query: BTreeMap<String, Value> =
            url::form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
                .map(|(k, v)| {
                    let value = mask(&k, &v);
                    (k.into_owned(), Value::String(value))
                })
                .collect();
        let mut headers: BTreeMap<String, Value> = BTreeMap::new();
        for (name, value) in req.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            headers.insert(
                name.as_str().to_owned(),
                Value::String(mask(name.as_str(), &value)),
            );
        }
        let mut state = lock(&self.state);
        state.next_conn += 1;
        let conn = state.next_conn;
        let record = object([
            ("conn", Value::from(conn)),
            ("type", Value::from(kind)),
            ("method", Value::from(req.method().as_str())),
            ("path", Value::from(req.uri().path())),
            ("query", Value::Object(query.into_iter().collect())),
            ("headers", Value::Object(headers.into_iter().collect())),
        ]);
        state.records.push((conn, record));
        conn
    }

    /// Records a text message from the client.
    pub(crate) fn text(&self, conn: ConnNo, msg: &TextMessage) {
        if !self.enabled {
            return;
        }
        let record = object([
            ("conn", Value::from(conn)),
            ("type", Value::from("text")),
            ("headers", message_headers(&msg.headers)),
            ("body", text_body(&msg.headers, &msg.body)),
        ]);
        lock(&self.state).records.push((conn, record));
    }

    /// Records a binary message from the client; repeated audio frames are kept once.
    pub(crate) fn binary(&self, conn: ConnNo, msg: &BinaryMessage) {
        if !self.enabled {
            return;
        }
        let payload = payload_kind(&msg.payload);
        let record = object([
            ("conn", Value::from(conn)),
            ("type", Value::from("binary")),
            ("headers", message_headers(&msg.headers)),
            ("payload", Value::from(payload.clone())),
        ]);
        let mut state = lock(&self.state);
        let repeat = payload == "audio"
            && state
                .records
                .iter()
                .rev()
                .find(|(c, _)| *c == conn)
                .is_some_and(|(_, last)| *last == record);
        if !repeat {
            state.records.push((conn, record));
        }
    }

    /// Records the client's close frame (`None`: a close without a status code).
    pub(crate) fn close(&self, conn: ConnNo, code: Option<u16>) {
        if !self.enabled {
            return;
        }
        let record = object([
            ("conn", Value::from(conn)),
            ("type", Value::from("close")),
            ("code", code.map_or(Value::Null, Value::from)),
        ]);
        lock(&self.state).records.push((conn, record));
    }
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<Map<String, Value>>(),
    )
}

/// Message headers as a map from lowercased name to value: the service reads names
/// case-insensitively and in any order.
fn message_headers(headers: &Headers) -> Value {
    let map: BTreeMap<String, Value> = headers
        .iter()
        .map(|(n, v)| {
            let name = n.to_ascii_lowercase();
            let value = mask(&name, v);
            (name, Value::String(value))
        })
        .collect();
    Value::Object(map.into_iter().collect())
}

/// A text body: JSON as a normalised tree, anything else (SSML) as text. Telemetry
/// reports measured latencies and whichever client events happened to finish first, so only
/// its top-level keys are kept.
fn text_body(headers: &Headers, body: &str) -> Value {
    let json_type = headers
        .get("Content-Type")
        .is_some_and(|t| t.to_ascii_lowercase().contains("json"));
    let telemetry = headers
        .path()
        .is_some_and(|p| p.eq_ignore_ascii_case("telemetry"));
    if (json_type || body.trim_start().starts_with('{'))
        && let Ok(v) = serde_json::from_str::<Value>(body)
    {
        if telemetry {
            let keys: Vec<Value> = match &v {
                Value::Object(m) => {
                    let sorted: std::collections::BTreeSet<&String> = m.keys().collect();
                    sorted
                        .into_iter()
                        .map(|k| Value::from(k.as_str()))
                        .collect()
                }
                _ => Vec::new(),
            };
            return object([("telemetry_keys", Value::Array(keys))]);
        }
        return object([("json", normalize_json(v))]);
    }
    const MAX_TEXT: usize = 4096;
    let mut end = body.len().min(MAX_TEXT);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    object([("text", Value::from(&body[..end]))])
}

/// Masks volatile strings, sorts keys, and keeps one of each run of equal array elements
/// (a telemetry list of N timestamps becomes one).
fn normalize_json(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(mask("", &s)),
        Value::Array(items) => {
            let mut out: Vec<Value> = Vec::new();
            for item in items.into_iter().map(normalize_json) {
                if out.last() != Some(&item) {
                    out.push(item);
                }
            }
            Value::Array(out)
        }
        Value::Object(map) => {
            let sorted: BTreeMap<String, Value> = map
                .into_iter()
                .map(|(k, v)| (k, normalize_json(v)))
                .collect();
            Value::Object(sorted.into_iter().collect())
        }
        other => other,
    }
}

/// What a binary payload is: `empty` (end of audio), the RIFF header frame with its
/// format fields, or `audio`.
fn payload_kind(p: &[u8]) -> String {
    if p.is_empty() {
        return "empty".to_owned();
    }
    if p.len() == 44 && &p[..4] == b"RIFF" && &p[8..16] == b"WAVEfmt " && &p[36..40] == b"data" {
        let u16_at = |i: usize| u16::from_le_bytes([p[i], p[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        return format!(
            "riff-header tag={} channels={} rate={} byte_rate={} align={} bits={} riff_size={} data_size={}",
            u16_at(20),
            u16_at(22),
            u32_at(24),
            u32_at(28),
            u16_at(32),
            u16_at(34),
            u32_at(4),
            u32_at(40)
        );
    }
    "audio".to_owned()
}

/// A header, query or JSON value as recorded: credentials hidden, per-run values replaced by
/// their shape, everything else kept.
fn mask(name: &str, value: &str) -> String {
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        "ocp-apim-subscription-key" | "authorization" => return "<secret>".to_owned(),
        "host" => return "<host>".to_owned(),
        "sec-websocket-key" => return "<nonce>".to_owned(),
        _ => {}
    }
    let hex = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if hex(value) {
        return if value.bytes().any(|b| b.is_ascii_lowercase()) {
            "<id:hex32-lower>".to_owned()
        } else {
            "<id:hex32-upper>".to_owned()
        };
    }
    if value.len() == 36 && hex(&value.replace('-', "")) && value.matches('-').count() == 4 {
        return "<id:uuid>".to_owned();
    }
    if let Some(shape) = timestamp_shape(value) {
        return shape.to_owned();
    }
    value.to_owned()
}

/// `Some` for an ISO 8601 / RFC 3339 date-time, describing its precision.
fn timestamp_shape(v: &str) -> Option<&'static str> {
    let b = v.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let date_time = b.len() >= 19
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !date_time {
        return None;
    }
    let rest = &v[19..];
    Some(match rest {
        "Z" => "<time:iso8601-s-utc>",
        r if r.len() == 5 && r.starts_with('.') && r.ends_with('Z') && digits(20..23) => {
            "<time:iso8601-ms-utc>"
        }
        _ => "<time:iso8601-other>",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_values_are_replaced_by_their_shape() {
        assert_eq!(
            mask("X-RequestId", "0320102DF8DF49F9AA50E299C16B962E"),
            "<id:hex32-upper>"
        );
        assert_eq!(
            mask("x-connectionid", "0397fbc3d73e44acb5b808cffa5ed83e"),
            "<id:hex32-lower>"
        );
        assert_eq!(
            mask("x", "91067ed0-bd0d-4c1e-9a6b-0d3b1a2c3d4e"),
            "<id:uuid>"
        );
        assert_eq!(
            mask("X-Timestamp", "2026-11-26T21:15:31.988Z"),
            "<time:iso8601-ms-utc>"
        );
        assert_eq!(
            mask("X-Timestamp", "2026-11-26T21:15:31Z"),
            "<time:iso8601-s-utc>"
        );
        assert_eq!(mask("Ocp-Apim-Subscription-Key", "k"), "<secret>");
        assert_eq!(mask("Authorization", "Bearer x"), "<secret>");
        assert_eq!(mask("Path", "speech.config"), "speech.config");
        assert_eq!(mask("X-StreamId", "1"), "1");
    }

    #[test]
    fn json_is_sorted_and_runs_collapse() {
        let v = serde_json::json!({"b": ["2026-11-26T21:15:31.988Z", "2026-11-26T21:15:32.001Z"], "a": {"d": 1, "c": ["x", "y"]}});
        assert_eq!(
            normalize_json(v).to_string(),
            r#"{"a":{"c":["x","y"],"d":1},"b":["<time:iso8601-ms-utc>"]}"#
        );
    }

    #[test]
    fn payloads_are_classified() {
        assert_eq!(payload_kind(&[]), "empty");
        assert_eq!(payload_kind(&[1, 2, 3]), "audio");
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF\0\0\0\0WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&16_000u32.to_le_bytes());
        h.extend_from_slice(&32_000u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data\0\0\0\0");
        assert_eq!(
            payload_kind(&h),
            "riff-header tag=1 channels=1 rate=16000 byte_rate=32000 align=2 bits=16 riff_size=0 data_size=0"
        );
    }
}
