//! STT over websocket (docs/protocol.md#stt-over-websocket): one connection per (mode,
//! language, format), several sequential recognition turns.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use speech_core::{
    Connection, RecognitionEvent, RecognitionFormat, RecognitionMode, RecognitionRequest,
    Recognizer, RecognizerFactory, SpeechError, WireMessage, phrase_status, wav_header,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{AzureSpeech, ClientInner};
use crate::frame::Headers;
use crate::ws::{Connect, Incoming, WsConn, now_timestamp, speech_config_body};

/// Largest audio payload per message: the legacy protocol's 8 KiB cap.
const MAX_AUDIO_CHUNK: usize = 8192;

/// The one audio stream of a turn, as the native SDK declares and labels it.
const AUDIO_STREAM_ID: &str = "1";

/// A turn's `speech.context` body, as the native Speech SDK writes it: the language, the
/// declaration of audio stream 1, and in detailed mode the word timings and confidences
/// that the handshake's query asks for too (see `Endpoint::stt_ws_url`).
fn speech_context_body(options: &SttWsOptions) -> String {
    let mut v = serde_json::json!({
        "phraseDetection": {"language": options.language},
        "audio": {"streams": {AUDIO_STREAM_ID: null}},
    });
    if options.format == RecognitionFormat::Detailed {
        v["phraseOutput"] = serde_json::json!({
            "format": "Detailed",
            "detailed": {"options": ["WordTimings", "WordConfidence"]},
        });
    }
    v.to_string()
}

/// Options of STT websocket connections: Azure fixes these at the handshake, so each pool
/// serves one combination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SttWsOptions {
    /// Interactive, conversation or dictation.
    pub mode: RecognitionMode,
    /// BCP 47 language, e.g. `en-US`.
    pub language: String,
    /// Simple or detailed phrases.
    pub format: RecognitionFormat,
}

impl SttWsOptions {
    /// Conversation mode, simple format.
    pub fn new(language: impl Into<String>) -> Self {
        Self {
            mode: RecognitionMode::Conversation,
            language: language.into(),
            format: RecognitionFormat::Simple,
        }
    }

    /// Checks the language tag (it goes into the URL).
    pub fn validate(&self) -> Result<(), SpeechError> {
        let mut r = speech_core::RecognitionRequest::new(self.language.clone());
        r.mode = self.mode;
        r.format = self.format;
        r.validate()
    }
}

/// Opens STT websockets for a pool.
#[derive(Debug)]
pub struct SttWsFactory {
    pub(crate) client: AzureSpeech,
    pub(crate) options: SttWsOptions,
    /// Fired when a connection of this factory is found dead, so its pool replaces it.
    pub(crate) dead_signal: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl RecognizerFactory for SttWsFactory {
    async fn create(&self) -> Result<Box<dyn Recognizer>, SpeechError> {
        Ok(Box::new(
            SttWebSocket::connect(
                Arc::clone(&self.client.inner),
                self.options.clone(),
                Some(Arc::clone(&self.dead_signal)),
            )
            .await?,
        ))
    }

    fn readiness_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.dead_signal))
    }

    fn for_combination(
        &self,
        mode: RecognitionMode,
        language: &str,
        format: RecognitionFormat,
    ) -> Result<Arc<dyn RecognizerFactory>, SpeechError> {
        let options = SttWsOptions {
            mode,
            language: language.to_owned(),
            format,
        };
        options.validate()?;
        Ok(Arc::new(Self {
            client: self.client.clone(),
            options,
            dead_signal: Arc::default(),
        }))
    }
}

/// An STT websocket connection.
///
/// Each turn sends `speech.context`, the 44-byte RIFF header frame, the caller's PCM in
/// chunks of at most 8 KiB, and the empty end-of-audio frame, while streaming the service's
/// events back; the turn ends at `turn.end`.
pub struct SttWebSocket {
    conn: WsConn,
    client: Arc<ClientInner>,
    options: SttWsOptions,
    config_sent: bool,
    in_turn: bool,
    turns: u64,
}

impl std::fmt::Debug for SttWebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SttWebSocket")
            .field("conn", &self.conn)
            .field("options", &self.options)
            .field("in_turn", &self.in_turn)
            .field("turns", &self.turns)
            .finish_non_exhaustive()
    }
}

impl SttWebSocket {
    pub(crate) async fn connect(
        client: Arc<ClientInner>,
        options: SttWsOptions,
        dead_signal: Option<Arc<tokio::sync::Notify>>,
    ) -> Result<Self, SpeechError> {
        options.validate()?;
        let url = client
            .endpoint
            .stt_ws_url(options.mode, &options.language, options.format);
        let conn = WsConn::connect(Connect {
            url,
            auth: &client.auth,
            tls: &client.tls.ws,
            policy: &client.policy,
            user_agent: &client.user_agent,
            dead_signal,
        })
        .await?;
        tracing::debug!(connection_id = %conn.connection_id, "STT websocket connected");
        Ok(Self {
            conn,
            client,
            options,
            config_sent: false,
            in_turn: false,
            turns: 0,
        })
    }

    /// Turns completed on this connection.
    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// The options fixed at the handshake.
    pub fn options(&self) -> &SttWsOptions {
        &self.options
    }

    async fn send_config(&mut self) -> Result<(), SpeechError> {
        let h = Headers::new()
            .with("Path", "speech.config")
            .with("X-RequestId", speech_core::RequestId::new().as_str())
            .with("X-Timestamp", now_timestamp())
            .with("Content-Type", "application/json");
        self.conn
            .send_text(&h, &speech_config_body(Some(self.options.mode)))
            .await?;
        self.config_sent = true;
        Ok(())
    }

    async fn send_audio(
        &mut self,
        rid: &str,
        payload: &[u8],
        first: bool,
    ) -> Result<(), SpeechError> {
        let mut h = Headers::new()
            .with("Path", "audio")
            .with("X-RequestId", rid)
            .with("X-Timestamp", now_timestamp());
        if first {
            h.push("Content-Type", "audio/x-wav");
        }
        // The turn's `speech.context` declares audio stream 1; every frame names it.
        h.push("X-StreamId", AUDIO_STREAM_ID);
        self.conn.send_binary(&h, payload).await
    }

    async fn run_turn(
        &mut self,
        request: &RecognitionRequest,
        mut audio: mpsc::Receiver<Bytes>,
        events: &mpsc::Sender<RecognitionEvent>,
    ) -> Result<(), SpeechError> {
        if self.in_turn {
            return Err(SpeechError::connection_closed(
                None,
                "the connection was left mid-turn by an abandoned request",
            ));
        }
        self.conn.drain_stale();
        if !self.conn.is_open() {
            return Err(self.conn.closed_error());
        }
        self.in_turn = true;
        if !self.config_sent {
            self.send_config().await?;
        }
        let rid = request.request_id.as_str().to_owned();
        let h = Headers::new()
            .with("Path", "speech.context")
            .with("X-RequestId", rid.as_str())
            .with("X-Timestamp", now_timestamp());
        self.conn
            .send_text(&h, &speech_context_body(&self.options))
            .await?;
        let header = wav_header(16_000, 1, 16, None);
        self.send_audio(&rid, &header, true).await?;

        let policy = self.client.policy;
        let mut audio_open = true;
        let mut deadline: Option<Instant> = None;
        let mut inband: Option<SpeechError> = None;
        loop {
            tokio::select! {
                chunk = audio.recv(), if audio_open => match chunk {
                    Some(data) => {
                        for piece in data.chunks(MAX_AUDIO_CHUNK) {
                            self.send_audio(&rid, piece, false).await?;
                        }
                    }
                    None => {
                        audio_open = false;
                        self.send_audio(&rid, &[], false).await?;
                        deadline = Some(Instant::now() + policy.first_response_timeout);
                    }
                },
                msg = self.conn.recv() => {
                    match msg {
                        Incoming::Text(t) => {
                            if t.headers.request_id().is_some_and(|r| !r.is_empty() && !r.eq_ignore_ascii_case(&rid)) {
                                continue;
                            }
                            let path = t.headers.path().unwrap_or_default().to_ascii_lowercase();
                            if path == "turn.end" {
                                events.send(RecognitionEvent::TurnEnd).await?;
                                break;
                            }
                            if let Some(ev) = to_event(&path, &t.body) {
                                if let RecognitionEvent::Phrase { status, .. } = &ev
                                    && let Some(e) = inband_error(status)
                                {
                                    inband.get_or_insert(e);
                                }
                                events.send(ev).await?;
                            }
                        }
                        Incoming::Binary(_) => {}
                        fault @ (Incoming::Malformed(_) | Incoming::Unresponsive(_) | Incoming::Closed { .. }) => {
                            return Err(fault.into_turn_error());
                        }
                    }
                    if deadline.is_some() {
                        deadline = Some(Instant::now() + policy.first_response_timeout);
                    }
                }
                () = sleep_until_opt(deadline) => {
                    return Err(SpeechError::timeout(format!(
                        "no turn.end within {} ms after the end of audio",
                        policy.first_response_timeout.as_millis()
                    )));
                }
            }
        }
        self.in_turn = false;
        self.turns += 1;
        match inband {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The error a failed `speech.phrase` status stands for, as the SDK reads it
/// (docs/protocol.md#stt-over-websocket, `RecognitionStatus`).
fn inband_error(status: &str) -> Option<SpeechError> {
    let msg = || format!("recognition failed with status {status}");
    match status {
        "TooManyRequests" => Some(SpeechError::throttled(None, msg())),
        "BadRequest" => Some(SpeechError::bad_request(msg())),
        "Forbidden" => Some(SpeechError::auth(msg())),
        phrase_status::ERROR => Some(SpeechError::transient(msg())),
        _ => None,
    }
}

/// Maps one service message to an event; unknown paths are ignored.
fn to_event(path: &str, body: &str) -> Option<RecognitionEvent> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let u = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    match path {
        "speech.startdetected" => Some(RecognitionEvent::SpeechStartDetected {
            offset: u("Offset"),
        }),
        "speech.enddetected" => Some(RecognitionEvent::SpeechEndDetected {
            offset: u("Offset"),
        }),
        "speech.hypothesis" | "speech.fragment" => Some(RecognitionEvent::Hypothesis {
            text: v
                .get("Text")
                .and_then(|t| t.as_str())
                .unwrap_or_default()
                .to_owned(),
            offset: u("Offset"),
            duration: u("Duration"),
        }),
        "speech.phrase" => {
            let status = v
                .get("RecognitionStatus")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_owned();
            let text = v
                .get("DisplayText")
                .and_then(|t| t.as_str())
                .or_else(|| v.pointer("/NBest/0/Display").and_then(|t| t.as_str()))
                .unwrap_or_default()
                .to_owned();
            Some(RecognitionEvent::Phrase {
                text,
                offset: u("Offset"),
                duration: u("Duration"),
                status,
            })
        }
        _ => None,
    }
}

#[async_trait]
impl Connection for SttWebSocket {
    fn is_ready(&self) -> bool {
        !self.in_turn && self.conn.lifecycle_ok(&self.client.policy)
    }

    fn age(&self) -> Option<std::time::Duration> {
        Some(self.conn.opened_at.elapsed())
    }

    async fn warm(&mut self) -> Result<(), SpeechError> {
        if !self.config_sent {
            self.send_config().await?;
        }
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), SpeechError> {
        self.conn.drain_stale();
        Ok(())
    }

    async fn close(self: Box<Self>) {
        let timeout = self.client.policy.close_timeout;
        let me = *self;
        me.conn.close(timeout).await;
    }
    fn speaks_wire(&self) -> bool {
        true
    }

    async fn relay_turn(
        &mut self,
        to_service: mpsc::Receiver<WireMessage>,
        to_client: mpsc::Sender<WireMessage>,
    ) -> Result<(), SpeechError> {
        if self.in_turn {
            return Err(SpeechError::connection_closed(
                None,
                "the connection was left mid-turn by an abandoned request",
            ));
        }
        if !self.config_sent {
            // The pool warms every connection before hand-out; this only guards a caller
            // that relays on a connection it created itself.
            self.send_config().await?;
        }
        self.in_turn = true;
        // The client drives an STT turn with its audio; silence from the service while
        // audio flows is normal, so only the client's side bounds the turn.
        let silence = None;
        self.conn.relay_turn(to_service, to_client, silence).await?;
        self.in_turn = false;
        self.turns += 1;
        Ok(())
    }
}

#[async_trait]
impl Recognizer for SttWebSocket {
    /// The request must match the connection's handshake (language, format, mode);
    /// otherwise it is a `BadRequest`, since Azure cannot change them mid-connection.
    async fn recognize(
        &mut self,
        request: RecognitionRequest,
        audio: mpsc::Receiver<Bytes>,
        events: mpsc::Sender<RecognitionEvent>,
    ) -> Result<(), SpeechError> {
        request.validate()?;
        let o = &self.options;
        if !request.language.eq_ignore_ascii_case(&o.language)
            || request.format != o.format
            || request.mode != o.mode
        {
            return Err(SpeechError::bad_request(format!(
                "this connection serves {} / {} / {}; the request asks for {} / {} / {}",
                o.mode.as_str(),
                o.language,
                o.format.as_str(),
                request.mode.as_str(),
                request.language,
                request.format.as_str()
            )));
        }
        let result = self.run_turn(&request, audio, &events).await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, request_id = %request.request_id, "STT turn failed");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_service_messages() {
        assert_eq!(
            to_event(
                "speech.hypothesis",
                r#"{"Text":"to","Offset":8100000,"Duration":2000000}"#
            ),
            Some(RecognitionEvent::Hypothesis {
                text: "to".into(),
                offset: 8_100_000,
                duration: 2_000_000
            })
        );
        assert_eq!(
            to_event(
                "speech.phrase",
                r#"{"RecognitionStatus":"Success","Offset":1,"Duration":2,"NBest":[{"Display":"2345."}]}"#
            ),
            Some(RecognitionEvent::Phrase {
                text: "2345.".into(),
                offset: 1,
                duration: 2,
                status: "Success".into()
            })
        );
        assert_eq!(
            to_event("speech.startdetected", r#"{"Offset":7600000}"#),
            Some(RecognitionEvent::SpeechStartDetected { offset: 7_600_000 })
        );
        assert_eq!(to_event("emulator.unknown", "{}"), None);
        assert_eq!(to_event("speech.phrase", "not json"), None);
        assert!(
            inband_error("TooManyRequests")
                .is_some_and(|e| e.class() == speech_core::ErrorClass::Throttled)
        );
        assert!(inband_error("Success").is_none());
        assert!(inband_error("NoMatch").is_none());
    }
}
