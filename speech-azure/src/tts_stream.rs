//! TTS with text streaming over the v2 websocket (`/cognitiveservices/websocket/v2`,
//! docs/protocol.md#tts-over-websocket): a request's `synthesis.context` sets
//! `synthesis.input.bidirectionalStreamingMode`, its text follows as `text.piece` messages
//! and ends with an empty `text.end`, and the service speaks the text while it is still
//! being written. Pooled and warmed like [`TtsWebSocket`](crate::TtsWebSocket): one
//! connection, many sequential turns.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use speech_core::{
    AudioFormat, Connection, MAX_SSML_BYTES, MAX_STREAMED_TEXT_BYTES, SpeechError, SynthesisEvent,
    SynthesisInput, SynthesisRequest, SynthesisSummary, Synthesizer, SynthesizerFactory,
    ticks_to_duration, validate_text_stream_request, wav_header_with_tag,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::ClientInner;
use crate::frame::Headers;
use crate::ws::{Connect, Incoming, WsConn, now_timestamp, speech_config_body};

/// Opens v2 (text-streaming) TTS websockets for a pool.
#[derive(Debug)]
pub struct TtsStreamFactory {
    pub(crate) client: crate::AzureSpeech,
    /// Fired when a connection of this factory is found dead, so its pool replaces it.
    pub(crate) dead_signal: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl SynthesizerFactory for TtsStreamFactory {
    async fn create(&self) -> Result<Box<dyn Synthesizer>, SpeechError> {
        Ok(Box::new(
            TtsStreamWebSocket::connect(
                Arc::clone(&self.client.inner),
                Some(Arc::clone(&self.dead_signal)),
            )
            .await?,
        ))
    }

    fn readiness_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(Arc::clone(&self.dead_signal))
    }

    async fn voices(&self) -> Result<Bytes, SpeechError> {
        self.client.voices_list().await
    }
}

/// What a turn speaks.
enum Input {
    /// A whole SSML document (an ordinary request on the v2 socket).
    Ssml(String),
    /// Text pieces, ended by closing the channel.
    Pieces(mpsc::Receiver<String>),
}

/// A v2 TTS websocket: serves text-streaming turns
/// ([`synthesize_text_stream`](Synthesizer::synthesize_text_stream)) and ordinary ones.
///
/// Readiness follows [`TtsWebSocket`](crate::TtsWebSocket): open, within the policy's age
/// and idle limits, and no turn abandoned midway.
pub struct TtsStreamWebSocket {
    conn: WsConn,
    client: Arc<ClientInner>,
    config_sent: bool,
    /// Set when a turn starts, cleared when it completes (or is cancelled and drained)
    /// cleanly; still set means the socket's state is unknown.
    in_turn: bool,
    turns: u64,
}

impl std::fmt::Debug for TtsStreamWebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtsStreamWebSocket")
            .field("conn", &self.conn)
            .field("config_sent", &self.config_sent)
            .field("in_turn", &self.in_turn)
            .field("turns", &self.turns)
            .finish_non_exhaustive()
    }
}

impl TtsStreamWebSocket {
    pub(crate) async fn connect(
        client: Arc<ClientInner>,
        dead_signal: Option<Arc<tokio::sync::Notify>>,
    ) -> Result<Self, SpeechError> {
        let conn = WsConn::connect(Connect {
            url: client.endpoint.tts_stream_ws_url(),
            auth: &client.auth,
            tls: &client.tls.ws,
            policy: &client.policy,
            user_agent: &client.user_agent,
            dead_signal,
        })
        .await?;
        tracing::debug!(connection_id = %conn.connection_id, "TTS v2 websocket connected");
        Ok(Self {
            conn,
            client,
            config_sent: false,
            in_turn: false,
            turns: 0,
        })
    }

    /// Turns completed on this connection.
    pub fn turns(&self) -> u64 {
        self.turns
    }

    /// The `X-ConnectionId` sent at the handshake.
    pub fn connection_id(&self) -> &str {
        &self.conn.connection_id
    }

    async fn send_config(&mut self) -> Result<(), SpeechError> {
        let h = Headers::new()
            .with("Path", "speech.config")
            .with("X-RequestId", speech_core::RequestId::new().as_str())
            .with("X-Timestamp", now_timestamp())
            .with("Content-Type", "application/json");
        self.conn.send_text(&h, &speech_config_body(None)).await?;
        self.config_sent = true;
        Ok(())
    }

    async fn send(
        &mut self,
        path: &str,
        rid: &str,
        content_type: &str,
        body: &str,
    ) -> Result<(), SpeechError> {
        let h = Headers::new()
            .with("Path", path)
            .with("X-RequestId", rid)
            .with("X-Timestamp", now_timestamp())
            .with("Content-Type", content_type);
        self.conn.send_text(&h, body).await
    }

    async fn run_turn(
        &mut self,
        request: &SynthesisRequest,
        input: Input,
        events: &mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError> {
        if self.in_turn {
            return Err(SpeechError::connection_closed(
                None,
                "the connection was left mid-turn by an abandoned request",
            ));
        }
        if !self.conn.is_open() {
            return Err(self.conn.closed_error());
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
        let streaming = matches!(input, Input::Pieces(_));
        let mut context = serde_json::json!({
            "synthesis": {
                "audio": {
                    "metadataOptions": {
                        "bookmarkEnabled": false,
                        "punctuationBoundaryEnabled": false,
                        "sentenceBoundaryEnabled": false,
                        "sessionEndEnabled": true,
                        "visemeEnabled": false,
                        "wordBoundaryEnabled": request.word_boundaries,
                    },
                    "outputFormat": request.format.raw_counterpart().as_header_str(),
                },
                "language": {"autoDetection": false},
            }
        });
        if streaming {
            context["synthesis"]["input"] = serde_json::json!({
                "bidirectionalStreamingMode": true,
                "voiceName": request.voice,
            });
        }
        self.send(
            "synthesis.context",
            &rid,
            "application/json",
            &context.to_string(),
        )
        .await?;
        let mut out = Output::new(request.format);
        let mut text = match input {
            Input::Ssml(ssml) => {
                out.input = ssml.clone();
                self.send("ssml", &rid, "application/ssml+xml", &ssml)
                    .await?;
                None
            }
            Input::Pieces(rx) => Some(rx),
        };

        let policy = self.client.policy;
        let mut stream_id: Option<String> = None;
        let mut heard = false;
        // The service's silence is only its fault once it has all the text: while the text
        // is still being written, waiting for it is the caller's business.
        let mut deadline = Instant::now() + policy.first_response_timeout;
        loop {
            let bound = text.is_none().then_some(deadline);
            let conn = &mut self.conn;
            let msg = tokio::select! {
                // Cancellation first: a caller who is gone must not wait for more audio.
                biased;
                () = events.closed() => {
                    return Err(self.cancel(&rid, text.is_some()).await);
                }
                piece = async {
                    match text.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match piece {
                        Some(p) => {
                            if out.input.len() + p.len() > MAX_STREAMED_TEXT_BYTES {
                                // The request cannot complete; the socket is mid-turn, so it is
                                // abandoned (not ready) rather than reused.
                                return Err(SpeechError::bad_request(format!(
                                    "the streamed text exceeds {MAX_STREAMED_TEXT_BYTES} bytes"
                                )));
                            }
                            if !p.is_empty() {
                                self.send("text.piece", &rid, "text/plain", &p).await?;
                                out.input.push_str(&p);
                            }
                        }
                        None => {
                            text = None;
                            self.send("text.end", &rid, "text/plain", "").await?;
                            deadline = Instant::now()
                                + if heard {
                                    policy.frame_gap_timeout
                                } else {
                                    policy.first_response_timeout
                                };
                        }
                    }
                    continue;
                }
                m = async {
                    match bound {
                        Some(d) => conn.recv_until(d).await,
                        None => Some(conn.recv().await),
                    }
                } => m,
            };
            let Some(msg) = msg else {
                return Err(SpeechError::timeout(if heard {
                    format!(
                        "no message from the service for {} ms mid-turn",
                        policy.frame_gap_timeout.as_millis()
                    )
                } else {
                    format!(
                        "no turn.start within {} ms",
                        policy.first_response_timeout.as_millis()
                    )
                }));
            };
            heard = true;
            match msg {
                Incoming::Text(t) => {
                    if !same_request(t.headers.request_id(), &rid) {
                        continue;
                    }
                    let path = t.headers.path().unwrap_or_default().to_ascii_lowercase();
                    match path.as_str() {
                        "response" => {
                            stream_id = serde_json::from_str::<serde_json::Value>(&t.body)
                                .ok()
                                .and_then(|v| {
                                    v.pointer("/audio/streamId")
                                        .and_then(|s| s.as_str())
                                        .map(str::to_owned)
                                });
                        }
                        "audio.metadata" if request.word_boundaries => {
                            out.metadata(&t.body, events).await?;
                        }
                        "turn.end" => {
                            if text.is_some() {
                                // The service ended the request before the text did: the
                                // rest of the text has nowhere to go.
                                return Err(SpeechError::protocol(
                                    "the service ended a text-streaming turn before text.end",
                                ));
                            }
                            break;
                        }
                        _ => {}
                    }
                }
                Incoming::Binary(b) => {
                    let is_audio = b
                        .headers
                        .path()
                        .is_some_and(|p| p.eq_ignore_ascii_case("audio"));
                    if !is_audio || !same_request(b.headers.request_id(), &rid) {
                        continue;
                    }
                    if let (Some(want), Some(got)) = (&stream_id, b.headers.stream_id())
                        && !want.eq_ignore_ascii_case(got)
                    {
                        continue;
                    }
                    if !b.payload.is_empty() {
                        out.audio(b.payload, events).await?;
                    }
                }
                fault @ (Incoming::Malformed(_)
                | Incoming::Unresponsive(_)
                | Incoming::Closed { .. }) => {
                    return Err(fault.into_turn_error());
                }
            }
            if text.is_none() {
                deadline = Instant::now() + policy.frame_gap_timeout;
            }
        }
        out.finish(events).await?;
        self.in_turn = false;
        self.turns += 1;
        Ok(SynthesisSummary {
            audio_bytes: out.bytes,
            chunks: out.chunks,
            request_id: request.request_id.clone(),
        })
    }

    /// The caller is gone mid-turn: asks the service to stop (`synthesis.control` stop,
    /// and `text.end` if the text was still open, so the request can complete either
    /// way), then drains to `turn.end` within the frame-gap bound so the connection stays
    /// reusable. Past the bound the turn stays marked as abandoned and the pool discards
    /// the connection.
    async fn cancel(&mut self, rid: &str, text_open: bool) -> SpeechError {
        let stopped = async {
            self.send(
                "synthesis.control",
                rid,
                "application/json",
                r#"{"action":"stop"}"#,
            )
            .await?;
            if text_open {
                self.send("text.end", rid, "text/plain", "").await?;
            }
            Ok::<(), SpeechError>(())
        }
        .await;
        if stopped.is_err() {
            return SpeechError::Cancelled;
        }
        let deadline = Instant::now() + self.client.policy.frame_gap_timeout;
        while let Some(m) = self.conn.recv_until(deadline).await {
            match m {
                Incoming::Text(t)
                    if same_request(t.headers.request_id(), rid)
                        && t.headers
                            .path()
                            .is_some_and(|p| p.eq_ignore_ascii_case("turn.end")) =>
                {
                    self.in_turn = false;
                    break;
                }
                Incoming::Closed { .. } | Incoming::Unresponsive(_) => break,
                _ => {}
            }
        }
        SpeechError::Cancelled
    }
}

/// Does a message belong to this turn? (Lenient: a message without an id does.)
fn same_request(got: Option<&str>, want: &str) -> bool {
    got.is_none_or(|g| g.is_empty() || g.eq_ignore_ascii_case(want))
}

/// Delivers a turn's audio (with the WAV header first for RIFF formats) and word
/// boundaries, whose text offsets are searched forward in the text sent so far.
struct Output {
    header: Option<[u8; 44]>,
    bytes: u64,
    chunks: u32,
    input: String,
    cursor: usize,
}

impl Output {
    fn new(format: AudioFormat) -> Self {
        let header = match (
            format.is_riff(),
            format.wav_format_tag(),
            format.bits_per_sample(),
        ) {
            (true, Some(tag), Some(bits)) => Some(wav_header_with_tag(
                tag,
                format.sample_rate_hz(),
                1,
                bits,
                None,
            )),
            _ => None,
        };
        Self {
            header,
            bytes: 0,
            chunks: 0,
            input: String::new(),
            cursor: 0,
        }
    }

    async fn audio(
        &mut self,
        payload: Bytes,
        events: &mpsc::Sender<SynthesisEvent>,
    ) -> Result<(), SpeechError> {
        let chunk = match self.header.take() {
            Some(h) => {
                let mut b = BytesMut::with_capacity(h.len() + payload.len());
                b.extend_from_slice(&h);
                b.extend_from_slice(&payload);
                b.freeze()
            }
            None => payload,
        };
        self.bytes += chunk.len() as u64;
        self.chunks += 1;
        events.send(SynthesisEvent::Audio(chunk)).await?;
        Ok(())
    }

    async fn finish(&mut self, events: &mpsc::Sender<SynthesisEvent>) -> Result<(), SpeechError> {
        if self.header.is_some() {
            self.audio(Bytes::new(), events).await?;
        }
        Ok(())
    }

    async fn metadata(
        &mut self,
        body: &str,
        events: &mpsc::Sender<SynthesisEvent>,
    ) -> Result<(), SpeechError> {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
            return Ok(()); // Unknown metadata shapes are not worth failing a turn over.
        };
        let Some(items) = v.get("Metadata").and_then(|m| m.as_array()) else {
            return Ok(());
        };
        for item in items {
            if item.get("Type").and_then(|t| t.as_str()) != Some("WordBoundary") {
                continue;
            }
            let data = &item["Data"];
            if data
                .pointer("/text/BoundaryType")
                .and_then(|b| b.as_str())
                .is_some_and(|k| k != "WordBoundary")
            {
                continue;
            }
            let Some(word) = data.pointer("/text/Text").and_then(|t| t.as_str()) else {
                continue;
            };
            let offset = data.get("Offset").and_then(|o| o.as_u64()).unwrap_or(0);
            let duration = data.get("Duration").and_then(|o| o.as_u64()).unwrap_or(0);
            let text_offset = match self.input.get(self.cursor..).and_then(|r| r.find(word)) {
                Some(i) => {
                    let at = self.cursor + i;
                    self.cursor = at + word.len();
                    at
                }
                None => self.cursor,
            };
            events
                .send(SynthesisEvent::WordBoundary {
                    text: word.to_owned(),
                    audio_offset: ticks_to_duration(offset),
                    duration: ticks_to_duration(duration),
                    text_offset: u32::try_from(text_offset).unwrap_or(u32::MAX),
                    word_length: u32::try_from(word.len()).unwrap_or(u32::MAX),
                })
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Connection for TtsStreamWebSocket {
    fn is_ready(&self) -> bool {
        !self.in_turn && self.conn.lifecycle_ok(&self.client.policy)
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
}

#[async_trait]
impl Synthesizer for TtsStreamWebSocket {
    async fn synthesize(
        &mut self,
        request: SynthesisRequest,
        events: mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError> {
        request.validate()?;
        let ssml = request.to_ssml().into_owned();
        if ssml.len() > MAX_SSML_BYTES {
            return Err(SpeechError::bad_request(format!(
                "SSML is {} bytes; the websocket limit is {MAX_SSML_BYTES} bytes per turn",
                ssml.len()
            )));
        }
        let input = match &request.input {
            SynthesisInput::Ssml(_) => Input::Ssml(ssml),
            // Plain text goes as the document the SDK builds, so word offsets count into
            // the text exactly as on the v1 socket.
            SynthesisInput::Text(_) => Input::Ssml(ssml),
        };
        let result = self.run_turn(&request, input, &events).await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, request_id = %request.request_id, "TTS v2 turn failed");
        }
        result
    }

    async fn synthesize_text_stream(
        &mut self,
        request: SynthesisRequest,
        text: mpsc::Receiver<String>,
        events: mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError> {
        validate_text_stream_request(&request)?;
        let result = self.run_turn(&request, Input::Pieces(text), &events).await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, request_id = %request.request_id, "TTS text-streaming turn failed");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn word_offsets_count_into_the_text_sent_so_far() {
        let mut out = Output::new(AudioFormat::Raw16Khz16BitMonoPcm);
        let (tx, mut rx) = mpsc::channel(8);
        out.input.push_str("Hi, hi");
        for w in ["Hi", "hi"] {
            let body = format!(
                r#"{{"Metadata":[{{"Type":"WordBoundary","Data":{{"Offset":10,"Duration":20,"text":{{"Text":"{w}","BoundaryType":"WordBoundary"}}}}}}]}}"#
            );
            out.metadata(&body, &tx).await.expect("metadata");
        }
        drop(tx);
        let mut offsets = Vec::new();
        while let Some(SynthesisEvent::WordBoundary { text_offset, .. }) = rx.recv().await {
            offsets.push(text_offset);
        }
        assert_eq!(offsets, vec![0, 4]);
    }

    #[tokio::test]
    async fn riff_formats_get_their_header_even_without_audio() {
        let mut out = Output::new(AudioFormat::Riff24Khz16BitMonoPcm);
        let (tx, mut rx) = mpsc::channel(2);
        out.finish(&tx).await.expect("finish");
        match rx.recv().await {
            Some(SynthesisEvent::Audio(a)) => assert_eq!(&a[..4], b"RIFF"),
            other => panic!("expected the header, got {other:?}"),
        }
    }
}
