//! A raw websocket client sending what the official Speech SDKs send (Azure's protocol,
//! docs/protocol.md), and the checks of what their receive loops need back. Shared by the
//! tests of the Azure-protocol endpoints, relayed (`azure_proxy`) or translated
//! (`azure_translate`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use service::test_support::{LoopbackServer, pcm};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on every wait, so a hang fails the test instead of stalling it.
pub const HANG: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `path_and_query` on `server` with `headers`; `Err(status)` when the upgrade is
/// refused.
pub async fn connect(
    server: &LoopbackServer,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, u16> {
    let mut req = server
        .ws_url(path_and_query)
        .into_client_request()
        .expect("request");
    for (n, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
            http::HeaderValue::from_str(v).expect("value"),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("connect: {e}"),
    }
}

pub fn text(headers: &[(&str, &str)], body: &str) -> Message {
    let mut s = String::new();
    for (n, v) in headers {
        s.push_str(&format!("{n}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(body);
    Message::text(s)
}

pub fn binary(headers: &[(&str, &str)], payload: &[u8]) -> Message {
    let mut block = String::new();
    for (n, v) in headers {
        block.push_str(&format!("{n}: {v}\r\n"));
    }
    let mut out = u16::try_from(block.len())
        .expect("short")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(block.as_bytes());
    out.extend_from_slice(payload);
    Message::binary(out)
}

/// One received message: its headers (lower-cased names) and body or payload length.
#[derive(Debug)]
pub struct Got {
    pub binary: bool,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub payload_len: usize,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn path(&self) -> &str {
        self.header("path").unwrap_or("")
    }
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// The `audio.metadata` items of a turn of `kind` (`WordBoundary`, `SessionEnd`, ...).
pub fn metadata(got: &[Got], kind: &str) -> Vec<serde_json::Value> {
    got.iter()
        .filter(|g| g.path() == "audio.metadata")
        .flat_map(|g| g.json()["Metadata"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["Type"] == kind)
        .collect()
}

/// The texts of a turn's word boundaries.
pub fn words(got: &[Got]) -> Vec<String> {
    metadata(got, "WordBoundary")
        .iter()
        .filter_map(|m| m["Data"]["text"]["Text"].as_str().map(str::to_owned))
        .collect()
}

fn parse_block(block: &str) -> Vec<(String, String)> {
    block
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// Reads messages until `turn.end`, or a close (returned as `Err(code)`).
pub async fn until_turn_end(ws: &mut Ws) -> Result<Vec<Got>, (u16, Vec<Got>)> {
    let mut got = Vec::new();
    loop {
        let msg = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("a message in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let (block, body) = t.as_str().split_once("\r\n\r\n").expect("blank line");
                let g = Got {
                    binary: false,
                    headers: parse_block(block),
                    body: body.to_owned(),
                    payload_len: 0,
                };
                let end = g.path() == "turn.end";
                got.push(g);
                if end {
                    return Ok(got);
                }
            }
            Some(Ok(Message::Binary(b))) => {
                let len = usize::from(u16::from_be_bytes([b[0], b[1]]));
                let block = std::str::from_utf8(&b[2..2 + len]).expect("ascii headers");
                got.push(Got {
                    binary: true,
                    headers: parse_block(block),
                    body: String::new(),
                    payload_len: b.len() - 2 - len,
                });
            }
            Some(Ok(Message::Close(f))) => {
                return Err((f.map_or(1005, |f| u16::from(f.code)), got));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("websocket error: {e}"),
            None => return Err((1006, got)),
        }
    }
}

pub const SPEECH_CONFIG: &str = r#"{"context":{"system":{"name":"SpeechSDK","version":"1.52.0","build":"JavaScript","lang":"JavaScript"},"os":{"platform":"Node","name":"unknown","version":"unknown"}}}"#;

/// Sends one synthesis turn as the JavaScript SDK does (speech.config only on the first).
pub async fn speak(ws: &mut Ws, rid: &str, words: &str, first: bool) {
    if first {
        ws.send(text(
            &[
                ("Path", "speech.config"),
                ("X-RequestId", rid),
                ("X-Timestamp", "2026-12-04T19:00:00.000Z"),
                ("Content-Type", "application/json"),
            ],
            SPEECH_CONFIG,
        ))
        .await
        .expect("send");
    }
    let context = r#"{"synthesis":{"audio":{"metadataOptions":{"bookmarkEnabled":false,"punctuationBoundaryEnabled":"false","sentenceBoundaryEnabled":"false","sessionEndEnabled":true,"visemeEnabled":false,"wordBoundaryEnabled":"true"},"outputFormat":"raw-16khz-16bit-mono-pcm"},"language":{"autoDetection":false}}}"#;
    ws.send(text(
        &[
            ("Path", "synthesis.context"),
            ("X-RequestId", rid),
            ("X-Timestamp", "2026-12-04T19:00:00.000Z"),
            ("Content-Type", "application/json"),
        ],
        context,
    ))
    .await
    .expect("send");
    let ssml = format!(
        "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xmlns:mstts='http://www.w3.org/2001/mstts' xmlns:emo='http://www.w3.org/2009/10/emotionml' xml:lang='en-US'><voice name='en-US-AvaMultilingualNeural'>{words}</voice></speak>"
    );
    ws.send(text(
        &[
            ("Path", "ssml"),
            ("X-RequestId", rid),
            ("X-Timestamp", "2026-12-04T19:00:00.000Z"),
            ("Content-Type", "application/ssml+xml"),
        ],
        &ssml,
    ))
    .await
    .expect("send");
}

/// What the SDK's receive loop needs of a synthesis turn: every message carries the turn's
/// id, `turn.start` first, audio only on the stream `response` named, the empty end frame,
/// `turn.end` last.
pub fn check_tts_turn(got: &[Got], rid: &str) -> usize {
    let bytes = check_tts_frames(got, rid);
    assert!(!words(got).is_empty(), "word boundaries relayed: {got:?}");
    bytes
}

/// [`check_tts_turn`] without word boundaries (a backend that has none: TTS over REST).
/// Returns the audio bytes.
pub fn check_tts_frames(got: &[Got], rid: &str) -> usize {
    assert_eq!(got.first().map(Got::path), Some("turn.start"), "{got:?}");
    assert_eq!(got.last().map(Got::path), Some("turn.end"), "{got:?}");
    for g in got {
        assert_eq!(g.header("x-requestid"), Some(rid), "{g:?}");
    }
    let response = got
        .iter()
        .find(|g| g.path() == "response")
        .expect("response");
    let v: serde_json::Value = serde_json::from_str(&response.body).expect("json");
    let stream = v["audio"]["streamId"]
        .as_str()
        .expect("streamId")
        .to_owned();
    let audio: Vec<_> = got.iter().filter(|g| g.binary).collect();
    assert!(audio.len() >= 2, "{got:?}");
    for a in &audio {
        assert_eq!(a.path(), "audio");
        assert_eq!(a.header("x-streamid"), Some(stream.as_str()), "{a:?}");
    }
    assert_eq!(
        audio.last().map(|a| a.payload_len),
        Some(0),
        "the empty end frame"
    );
    audio.iter().map(|a| a.payload_len).sum()
}

/// One recognition turn as the native SDK sends it: speech.context, the RIFF header frame,
/// PCM in 100 ms frames, the empty end frame.
pub async fn recognize(ws: &mut Ws, rid: &str, seconds: f32, first: bool) {
    if first {
        ws.send(text(
            &[("Path", "speech.config"), ("X-RequestId", rid), ("Content-Type", "application/json")],
            r#"{"context":{"system":{"name":"SpeechSDK","version":"1.52.0","build":"JavaScript","lang":"JavaScript"},"audio":{"source":{"samplerate":16000,"bitspersample":16,"channelcount":1}}},"recognition":"interactive"}"#,
        ))
        .await
        .expect("send");
    }
    ws.send(text(
        &[("Path", "speech.context"), ("X-RequestId", rid)],
        r#"{"phraseDetection":{"language":"en-US"},"audio":{"streams":{"1":null}}}"#,
    ))
    .await
    .expect("send");
    let header = riff_header();
    let audio = [("Path", "audio"), ("X-RequestId", rid), ("X-StreamId", "1")];
    let mut first_frame = audio.to_vec();
    first_frame.push(("Content-Type", "audio/x-wav"));
    ws.send(binary(&first_frame, &header)).await.expect("send");
    for chunk in pcm(seconds).chunks(3200) {
        ws.send(binary(&audio, chunk)).await.expect("send");
    }
    ws.send(binary(&audio, &[])).await.expect("send");
}

/// The 44-byte RIFF header the SDKs send as a turn's first audio: 16 kHz, 16-bit, mono
/// PCM, both sizes 0.
pub fn riff_header() -> Vec<u8> {
    [
        &b"RIFF"[..],
        &0u32.to_le_bytes(),
        b"WAVEfmt ",
        &16u32.to_le_bytes(),
        &1u16.to_le_bytes(),
        &1u16.to_le_bytes(),
        &16_000u32.to_le_bytes(),
        &32_000u32.to_le_bytes(),
        &2u16.to_le_bytes(),
        &16u16.to_le_bytes(),
        b"data",
        &0u32.to_le_bytes(),
    ]
    .concat()
}
