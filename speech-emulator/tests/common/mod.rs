//! Shared helpers for the emulator tests: a raw websocket client that speaks the Azure
//! framing (written independently of the emulator's codec, so the tests check the wire
//! format itself), an HTTP client trusting the emulator's CA, and audio helpers.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use speech_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// Generous bound for anything the emulator should answer at once (never asserted as a
/// timing, only used to fail instead of hanging).
pub const PATIENCE: Duration = Duration::from_secs(10);

pub const KEY: &str = "test-key";
pub const TTS_PATH: &str = "/tts/cognitiveservices/websocket/v1";
pub const TTS_LEGACY_PATH: &str = "/cognitiveservices/websocket/v1";

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A plain emulator pinned to [`KEY`].
pub async fn start_plain() -> EmulatorHandle {
    start(EmulatorConfig::plain().with_key(KEY)).await
}

pub async fn start(config: EmulatorConfig) -> EmulatorHandle {
    init();
    Emulator::start(config).await.expect("emulator starts")
}

/// A message as the client sees it.
#[derive(Debug, Clone)]
pub enum Got {
    Text {
        headers: Vec<(String, String)>,
        body: String,
        raw: String,
    },
    Binary {
        headers: Vec<(String, String)>,
        payload: Vec<u8>,
    },
    /// A close frame (code, reason).
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame.
    Dropped(String),
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        let hs = match self {
            Got::Text { headers, .. } | Got::Binary { headers, .. } => headers,
            _ => return None,
        };
        hs.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> Option<&str> {
        self.header("Path")
    }

    pub fn json(&self) -> serde_json::Value {
        match self {
            Got::Text { body, .. } => serde_json::from_str(body).expect("JSON body"),
            other => panic!("not a text message: {other:?}"),
        }
    }

    pub fn payload(&self) -> &[u8] {
        match self {
            Got::Binary { payload, .. } => payload,
            other => panic!("not a binary message: {other:?}"),
        }
    }

    pub fn close_code(&self) -> Option<u16> {
        match self {
            Got::Close(Some((c, _))) => Some(*c),
            _ => None,
        }
    }
}

fn parse_headers(block: &str) -> Vec<(String, String)> {
    block
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header has a colon");
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

pub type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw Azure-protocol websocket client.
pub struct Client {
    pub ws: Stream,
}

/// Builds a rustls client config trusting `ca` (ring provider).
pub fn client_tls(ca: rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    init();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("CA accepted");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// Opens a websocket to `path_and_query` with `headers`; a refused handshake comes back as
/// `Err(Http(response))`.
pub async fn connect_with(
    emu: &EmulatorHandle,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Result<Client, tungstenite::Error> {
    let url = format!("{}{}", emu.base_url_ws(), path_and_query);
    let mut req = url.into_client_request()?;
    for (n, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(n.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    let connector = emu
        .ca_cert_der()
        .map(|ca| Connector::Rustls(client_tls(ca)));
    let fut = tokio_tungstenite::connect_async_tls_with_config(req, None, false, connector);
    let (ws, _resp) = tokio::time::timeout(PATIENCE, fut)
        .await
        .expect("handshake answered")?;
    Ok(Client { ws })
}

/// Opens a websocket authenticated with [`KEY`] in the header.
pub async fn connect(emu: &EmulatorHandle, path_and_query: &str) -> Client {
    connect_with(
        emu,
        path_and_query,
        &[
            ("Ocp-Apim-Subscription-Key", KEY),
            ("X-ConnectionId", &new_id()),
        ],
    )
    .await
    .expect("handshake succeeds")
}

/// The status (and headers) of a refused handshake.
pub async fn refused(
    emu: &EmulatorHandle,
    path: &str,
    headers: &[(&str, &str)],
) -> tungstenite::http::Response<Option<Vec<u8>>> {
    match connect_with(emu, path, headers).await {
        Err(tungstenite::Error::Http(resp)) => *resp,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("handshake to {path} unexpectedly succeeded"),
    }
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_ascii_uppercase()
}

impl Client {
    /// Sends a text message the way the JS SDK writes it (`Name: value`).
    pub async fn text(&mut self, path: &str, request_id: &str, content_type: &str, body: &str) {
        let msg = format!(
            "Path: {path}\r\nX-RequestId: {request_id}\r\nX-Timestamp: 2026-01-01T00:00:00.000Z\r\nContent-Type: {content_type}\r\n\r\n{body}"
        );
        self.raw_text(msg).await;
    }

    pub async fn raw_text(&mut self, msg: String) {
        self.ws.send(Message::text(msg)).await.expect("send text");
    }

    pub async fn raw_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(Message::binary(data))
            .await
            .expect("send binary");
    }

    /// Sends a binary `audio` message.
    pub async fn audio(&mut self, request_id: &str, content_type: Option<&str>, payload: &[u8]) {
        let mut head = format!(
            "Path: audio\r\nX-RequestId: {request_id}\r\nX-Timestamp: 2026-01-01T00:00:00.000Z\r\n"
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        let mut data = (head.len() as u16).to_be_bytes().to_vec();
        data.extend_from_slice(head.as_bytes());
        data.extend_from_slice(payload);
        self.raw_binary(data).await;
    }

    pub async fn speech_config(&mut self, request_id: &str) {
        self.text(
            "speech.config",
            request_id,
            "application/json",
            r#"{"context":{"system":{"name":"SpeechSDK","version":"1.52.0","build":"JavaScript","lang":"JavaScript"},"os":{"platform":"Node","name":"unknown","version":"unknown"}}}"#,
        )
        .await;
    }

    /// `synthesis.context` + `ssml` for one TTS request.
    pub async fn synthesize(
        &mut self,
        request_id: &str,
        format: &str,
        word_boundary: bool,
        text: &str,
    ) {
        let ctx = serde_json::json!({"synthesis": {"audio": {
            "metadataOptions": {"bookmarkEnabled": false, "punctuationBoundaryEnabled": "false",
                "sentenceBoundaryEnabled": "false", "sessionEndEnabled": true, "visemeEnabled": false,
                "wordBoundaryEnabled": if word_boundary { "true" } else { "false" }},
            "outputFormat": format}, "language": {"autoDetection": false}}});
        self.text(
            "synthesis.context",
            request_id,
            "application/json",
            &ctx.to_string(),
        )
        .await;
        self.text("ssml", request_id, "application/ssml+xml", &ssml(text))
            .await;
    }

    /// The next message, or a panic after [`PATIENCE`].
    pub async fn recv(&mut self) -> Got {
        self.recv_within(PATIENCE).await.expect("a message arrives")
    }

    /// The next message, or `None` if nothing arrives within `d`.
    pub async fn recv_within(&mut self, d: Duration) -> Option<Got> {
        loop {
            let next = match tokio::time::timeout(d, self.ws.next()).await {
                Err(_) => return None,
                Ok(n) => n,
            };
            return Some(match next {
                None => Got::Dropped("stream ended".into()),
                Some(Err(e)) => Got::Dropped(e.to_string()),
                Some(Ok(Message::Text(t))) => {
                    let raw = t.as_str().to_owned();
                    let (head, body) = raw
                        .split_once("\r\n\r\n")
                        .expect("service text messages always carry the blank line");
                    Got::Text {
                        headers: parse_headers(head),
                        body: body.to_owned(),
                        raw: raw.clone(),
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    let len = u16::from_be_bytes([b[0], b[1]]) as usize;
                    let head = std::str::from_utf8(&b[2..2 + len]).expect("ASCII headers");
                    assert!(
                        head.ends_with("\r\n") && !head.ends_with("\r\n\r\n"),
                        "binary header block ends with one CRLF"
                    );
                    Got::Binary {
                        headers: parse_headers(head),
                        payload: b[2 + len..].to_vec(),
                    }
                }
                Some(Ok(Message::Close(f))) => Got::Close(
                    f.map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string())),
                ),
                Some(Ok(_)) => continue,
            });
        }
    }

    /// Messages up to and including `turn.end` (panics on a close or drop).
    pub async fn until_turn_end(&mut self) -> Vec<Got> {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await;
            let end = m.path() == Some("turn.end");
            if matches!(m, Got::Close(_) | Got::Dropped(_)) {
                panic!("connection ended before turn.end: {m:?}; got {out:?}");
            }
            out.push(m);
            if end {
                return out;
            }
        }
    }

    /// Messages until the connection ends; returns them and how it ended.
    pub async fn until_end(&mut self) -> (Vec<Got>, Got) {
        let mut out = Vec::new();
        loop {
            let m = self.recv().await;
            if matches!(m, Got::Close(_) | Got::Dropped(_)) {
                return (out, m);
            }
            out.push(m);
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, self.ws.next()).await {}
    }
}

pub fn ssml(text: &str) -> String {
    format!(
        "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xmlns:mstts='http://www.w3.org/2001/mstts' xml:lang='en-US'><voice name='en-US-JennyNeural'>{text}</voice></speak>"
    )
}

/// The 44-byte RIFF header the SDKs send (size fields 0).
pub fn riff_header(rate: u32, channels: u16, bits: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"RIFF");
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(b"WAVEfmt ");
    h.extend_from_slice(&16u32.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&channels.to_le_bytes());
    h.extend_from_slice(&rate.to_le_bytes());
    h.extend_from_slice(&(rate * u32::from(channels) * u32::from(bits) / 8).to_le_bytes());
    h.extend_from_slice(&(channels * bits / 8).to_le_bytes());
    h.extend_from_slice(&bits.to_le_bytes());
    h.extend_from_slice(b"data");
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

/// `ms` of 16 kHz 16-bit mono PCM (silence: the emulator's recognition is scripted).
pub fn pcm16k(ms: u32) -> Vec<u8> {
    vec![0u8; (ms * 32) as usize]
}

/// Streams a whole STT turn: header frame, `ms` of audio in 100 ms chunks, then the empty
/// frame.
pub async fn stt_turn(c: &mut Client, rid: &str, ms: u32) {
    c.text(
        "speech.context",
        rid,
        "application/json",
        r#"{"phraseDetection":{"language":"en-US"}}"#,
    )
    .await;
    c.audio(rid, Some("audio/x-wav"), &riff_header(16000, 1, 16))
        .await;
    for chunk in pcm16k(ms).chunks(3200) {
        c.audio(rid, None, chunk).await;
    }
    c.audio(rid, None, &[]).await;
}

/// An HTTP client trusting the emulator's CA (when it has one).
pub fn http(emu: &EmulatorHandle) -> reqwest::Client {
    init();
    let mut b = reqwest::Client::builder();
    if let Some(ca) = emu.ca_cert_der() {
        b = b.tls_certs_only([reqwest::Certificate::from_der(&ca).expect("CA")]);
    }
    b.build().expect("client")
}

/// Waits until no websocket (and no TCP connection) is open.
pub async fn settle(emu: &EmulatorHandle) {
    emu.wait_for_counters(|c| c.connections_open == 0 && c.tcp_open == 0, PATIENCE)
        .await
        .expect("all connections closed");
}

/// JSON helpers (reqwest's `json` feature is not enabled in the workspace).
pub trait JsonRequest {
    fn json_body(self, v: &serde_json::Value) -> Self;
}

impl JsonRequest for reqwest::RequestBuilder {
    fn json_body(self, v: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(v.to_string())
    }
}

pub trait JsonResponse {
    fn into_json(self) -> impl std::future::Future<Output = serde_json::Value>;
}

impl JsonResponse for reqwest::Response {
    async fn into_json(self) -> serde_json::Value {
        let bytes = self.bytes().await.expect("body");
        serde_json::from_slice(&bytes).expect("JSON body")
    }
}
