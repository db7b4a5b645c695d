//! TTS over websocket (docs/protocol.md#tts-over-websocket): one connection, many
//! sequential turns.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use speech_core::{
    AudioFormat, Connection, MAX_SSML_BYTES, SpeechError, StopSignal, SynthesisEvent,
    SynthesisInput, SynthesisRequest, SynthesisSummary, Synthesizer, SynthesizerFactory,
    WireMessage, ticks_to_duration, wav_header_with_tag,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::client::{AzureSpeech, ClientInner};
use crate::frame::Headers;
use crate::ws::{Connect, Incoming, WsConn, now_timestamp, speech_config_body};

/// Options of TTS websocket connections.
#[derive(Debug, Clone, Default)]
pub struct TtsWsOptions {
    /// During warm-up, also synthesize a short phrase with this voice (and discard the
    /// audio), so the service has the voice loaded before the first real turn. Costs one
    /// small billed synthesis per connection, hence off by default.
    pub prime_voice: Option<String>,
}

/// The audio format of the voice-priming turn (its audio is discarded, so the smallest).
pub(crate) const PRIME_FORMAT: AudioFormat = AudioFormat::Raw16Khz16BitMonoPcm;

/// Opens TTS websockets for a pool.
#[derive(Debug)]
pub struct TtsWsFactory {
    pub(crate) client: AzureSpeech,
    pub(crate) options: TtsWsOptions,
    /// Fired when a connection of this factory is found dead, so its pool replaces it.
    pub(crate) dead_signal: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl SynthesizerFactory for TtsWsFactory {
    async fn create(&self) -> Result<Box<dyn Synthesizer>, SpeechError> {
        Ok(Box::new(
            TtsWebSocket::connect(
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
    async fn voices(&self) -> Result<bytes::Bytes, SpeechError> {
        self.client.voices_list().await
    }
}

/// A TTS websocket connection.
///
/// Life: [`connect`](crate::AzureSpeech::connect_tts_ws) (TCP, TLS, upgrade), `warm`
/// (sends `speech.config`, optionally primes a voice), then any number of sequential
/// `synthesize` turns, then `close` (close frame 1000). `&mut self` makes "one turn at a
/// time" a compile-time fact.
pub struct TtsWebSocket {
    conn: WsConn,
    client: Arc<ClientInner>,
    options: TtsWsOptions,
    config_sent: bool,
    /// Set when a turn starts, cleared when it completes cleanly. Still set afterwards
    /// means the turn was abandoned (error, timeout, dropped future, gone receiver) and the
    /// socket's state is unknown, so the connection is no longer ready.
    in_turn: bool,
    turns: u64,
}

impl std::fmt::Debug for TtsWebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtsWebSocket")
            .field("conn", &self.conn)
            .field("config_sent", &self.config_sent)
            .field("in_turn", &self.in_turn)
            .field("turns", &self.turns)
            .finish_non_exhaustive()
    }
}

impl TtsWebSocket {
    pub(crate) async fn connect(
        client: Arc<ClientInner>,
        options: TtsWsOptions,
        dead_signal: Option<Arc<tokio::sync::Notify>>,
    ) -> Result<Self, SpeechError> {
        if let Some(v) = &options.prime_voice {
            speech_core::validate_voice_name(v)?;
        }
        let conn = WsConn::connect(Connect {
            url: client.endpoint.tts_ws_url(),
            auth: &client.auth,
            tls: &client.tls.ws,
            policy: &client.policy,
            user_agent: &client.user_agent,
            dead_signal,
        })
        .await?;
        tracing::debug!(connection_id = %conn.connection_id, "TTS websocket connected");
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

    /// The `X-ConnectionId` sent at the handshake (for correlating with service logs).
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

    /// Asks the service to stop the turn `request_id` (docs/protocol.md#tts-over-websocket):
    /// it stops producing audio and ends the turn with `turn.end`, so the connection
    /// serves the next turn without reading the rest of this one.
    async fn send_stop(&mut self, request_id: &str) -> Result<(), SpeechError> {
        let h = Headers::new()
            .with("Path", "synthesis.control")
            // Scopes the stop to this turn: a stop that crosses the turn's end on the wire
            // must not stop the next one.
            .with("X-RequestId", request_id)
            .with("X-Timestamp", now_timestamp())
            .with("Content-Type", "application/json");
        self.conn.send_text(&h, r#"{"action":"stop"}"#).await
    }

    async fn run_turn(
        &mut self,
        request: &SynthesisRequest,
        events: &mpsc::Sender<SynthesisEvent>,
        stop: &StopSignal,
    ) -> Result<SynthesisSummary, SpeechError> {
        let ssml = request.to_ssml();
        if ssml.len() > MAX_SSML_BYTES {
            return Err(SpeechError::bad_request(format!(
                "SSML is {} bytes; the websocket limit is {MAX_SSML_BYTES} bytes per turn",
                ssml.len()
            )));
        }
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
        let rid = request.request_id.as_str();
        let wire_format = request.format.raw_counterpart();
        let context = serde_json::json!({
            "synthesis": {
                "audio": {
                    "metadataOptions": {
                        "bookmarkEnabled": false,
                        "punctuationBoundaryEnabled": false,
                        "sentenceBoundaryEnabled": false,
                        // Both SDKs ask for the SessionEnd metadata (one small message per
                        // turn), so the service runs its most travelled path for us too.
                        "sessionEndEnabled": true,
                        "visemeEnabled": false,
                        "wordBoundaryEnabled": request.word_boundaries,
                    },
                    "outputFormat": wire_format.as_header_str(),
                },
                "language": {"autoDetection": false},
            }
        });
        let h = Headers::new()
            .with("Path", "synthesis.context")
            .with("X-RequestId", rid)
            .with("X-Timestamp", now_timestamp())
            .with("Content-Type", "application/json");
        self.conn.send_text(&h, &context.to_string()).await?;
        let h = Headers::new()
            .with("Path", "ssml")
            .with("X-RequestId", rid)
            .with("X-Timestamp", now_timestamp())
            .with("Content-Type", "application/ssml+xml");
        self.conn.send_text(&h, &ssml).await?;

        let policy = self.client.policy;
        let mut out = TurnOutput::new(request, &ssml);
        let mut stream_id: Option<String> = None;
        let mut started = false;
        // Once the stop is sent, audio still on its way is dropped: the caller wants no
        // more, and the turn only has to reach its `turn.end`.
        let mut stop_sent = false;
        let mut deadline = Instant::now() + policy.first_response_timeout;
        loop {
            let next = tokio::select! {
                m = self.conn.recv_until(deadline) => Next::Message(m),
                () = stop.stopped(), if !stop_sent => Next::Stop,
                // The caller dropped the receiver without a stop (or gave up waiting for
                // the stopped turn to end): the turn is abandoned, `in_turn` stays set and
                // the pool replaces the connection.
                () = events.closed() => return Err(SpeechError::Cancelled),
            };
            let msg = match next {
                Next::Stop => {
                    self.send_stop(rid).await?;
                    stop_sent = true;
                    // The service now owes only the end of the turn; give it the usual
                    // gap (or what is left of the first-response wait, if longer).
                    deadline = deadline.max(Instant::now() + policy.frame_gap_timeout);
                    continue;
                }
                Next::Message(m) => m,
            };
            let Some(msg) = msg else {
                return Err(SpeechError::timeout(if started {
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
            match msg {
                Incoming::Text(t) => {
                    if !same_request(t.headers.request_id(), rid) {
                        continue;
                    }
                    let path = t.headers.path().unwrap_or_default().to_ascii_lowercase();
                    match path.as_str() {
                        "turn.start" => started = true,
                        "response" => {
                            stream_id = serde_json::from_str::<serde_json::Value>(&t.body)
                                .ok()
                                .and_then(|v| {
                                    v.pointer("/audio/streamId")
                                        .and_then(|s| s.as_str())
                                        .map(str::to_owned)
                                });
                        }
                        "audio.metadata" if request.word_boundaries && !stop_sent => {
                            out.metadata(&t.body, events).await?;
                        }
                        "turn.end" => break,
                        _ => {}
                    }
                }
                Incoming::Binary(b) => {
                    let is_audio = b
                        .headers
                        .path()
                        .is_some_and(|p| p.eq_ignore_ascii_case("audio"));
                    if !is_audio || !same_request(b.headers.request_id(), rid) {
                        continue;
                    }
                    // The SDK drops frames of another stream, and so do we: `response`
                    // names the turn's stream (docs/protocol.md#tts-over-websocket).
                    if let (Some(want), Some(got)) = (&stream_id, b.headers.stream_id())
                        && !want.eq_ignore_ascii_case(got)
                    {
                        continue;
                    }
                    if !b.payload.is_empty() && !stop_sent {
                        out.audio(b.payload, events).await?;
                    }
                }
                fault @ (Incoming::Malformed(_)
                | Incoming::Unresponsive(_)
                | Incoming::Closed { .. }) => {
                    return Err(fault.into_turn_error());
                }
            }
            deadline = Instant::now() + policy.frame_gap_timeout;
        }
        if stop_sent {
            tracing::debug!(request_id = rid, "TTS turn stopped; the connection is kept");
        } else {
            out.finish(events).await?;
        }
        self.in_turn = false;
        self.turns += 1;
        Ok(SynthesisSummary {
            audio_bytes: out.bytes,
            chunks: out.chunks,
            request_id: request.request_id.clone(),
        })
    }
}

/// What woke a turn up.
enum Next {
    /// A message from the service, or `None` past the deadline.
    Message(Option<Incoming>),
    /// The caller fired the turn's stop signal.
    Stop,
}

/// Does a message belong to this turn? A message without an id is accepted (lenient);
/// one with another id is left over from an earlier turn.
fn same_request(got: Option<&str>, want: &str) -> bool {
    got.is_none_or(|g| g.is_empty() || g.eq_ignore_ascii_case(want))
}

/// Delivers one turn's audio and word boundaries to the caller.
pub(crate) struct TurnOutput {
    header: Option<[u8; 44]>,
    pub(crate) bytes: u64,
    pub(crate) chunks: u32,
    input: String,
    cursor: usize,
}

impl TurnOutput {
    pub(crate) fn new(request: &SynthesisRequest, ssml: &str) -> Self {
        let header = riff_header(request.format);
        let input = match &request.input {
            SynthesisInput::Text(t) => t.clone(),
            SynthesisInput::Ssml(_) => ssml.to_owned(),
        };
        Self {
            header,
            bytes: 0,
            chunks: 0,
            input,
            cursor: 0,
        }
    }

    /// Sends one audio chunk, the WAV header first for RIFF formats.
    pub(crate) async fn audio(
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

    /// Ends the turn: a RIFF turn without any audio still gets its header.
    pub(crate) async fn finish(
        &mut self,
        events: &mpsc::Sender<SynthesisEvent>,
    ) -> Result<(), SpeechError> {
        if self.header.is_some() {
            self.audio(Bytes::new(), events).await?;
        }
        Ok(())
    }

    /// Turns `audio.metadata` word boundaries into events.
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
            let kind = data.pointer("/text/BoundaryType").and_then(|b| b.as_str());
            if kind.is_some_and(|k| k != "WordBoundary") {
                continue;
            }
            let Some(word) = data.pointer("/text/Text").and_then(|t| t.as_str()) else {
                continue;
            };
            let offset = data.get("Offset").and_then(|o| o.as_u64()).unwrap_or(0);
            let duration = data.get("Duration").and_then(|o| o.as_u64()).unwrap_or(0);
            // Byte offset of the word in the input, searched forward like the SDK does.
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

/// The 44-byte header to prepend for RIFF formats (the service streams raw audio, so the
/// SDKs add it themselves). Sizes are 0: the length is unknown while streaming.
fn riff_header(format: AudioFormat) -> Option<[u8; 44]> {
    if !format.is_riff() {
        return None;
    }
    let tag = format.wav_format_tag()?;
    let bits = format.bits_per_sample()?;
    Some(wav_header_with_tag(
        tag,
        format.sample_rate_hz(),
        1,
        bits,
        None,
    ))
}

#[async_trait]
impl Connection for TtsWebSocket {
    fn is_ready(&self) -> bool {
        !self.in_turn && self.conn.lifecycle_ok(&self.client.policy)
    }

    async fn warm(&mut self) -> Result<(), SpeechError> {
        if !self.config_sent {
            self.send_config().await?;
        }
        if let Some(voice) = self.options.prime_voice.clone() {
            let (tx, mut rx) = mpsc::channel(64);
            let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
            let req = SynthesisRequest::text(".", voice, PRIME_FORMAT);
            let result = self.run_turn(&req, &tx, &StopSignal::new()).await;
            drop(tx);
            let _ = drain.await;
            result?;
            // Priming is not a caller's turn.
            self.turns = self.turns.saturating_sub(1);
        }
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), SpeechError> {
        // Nothing session-specific lives on the socket between turns; drop anything that
        // arrived unexpectedly so the next session starts clean.
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
        // After the client's `ssml` the service speaks: a silence longer than the
        // first-response bound means the turn is stuck.
        let silence = Some(self.client.policy.first_response_timeout);
        self.conn.relay_turn(to_service, to_client, silence).await?;
        self.in_turn = false;
        self.turns += 1;
        Ok(())
    }
}

#[async_trait]
impl Synthesizer for TtsWebSocket {
    async fn synthesize(
        &mut self,
        request: SynthesisRequest,
        events: mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError> {
        self.synthesize_stoppable(request, events, StopSignal::new())
            .await
    }

    /// Stops through the protocol: `synthesis.control` `{"action":"stop"}` for this turn's
    /// request id, then the rest of the turn up to `turn.end` is read and dropped (what was
    /// already in flight: the service stops producing), and the connection stays ready.
    async fn synthesize_stoppable(
        &mut self,
        request: SynthesisRequest,
        events: mpsc::Sender<SynthesisEvent>,
        stop: StopSignal,
    ) -> Result<SynthesisSummary, SpeechError> {
        request.validate()?;
        let result = self.run_turn(&request, &events, &stop).await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, request_id = %request.request_id, "TTS turn failed");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn riff_headers() {
        let h = riff_header(AudioFormat::Riff24Khz16BitMonoPcm).expect("riff");
        assert_eq!(&h[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([h[24], h[25], h[26], h[27]]), 24_000);
        assert_eq!(u16::from_le_bytes([h[20], h[21]]), 1);
        let mulaw = riff_header(AudioFormat::Riff8Khz8BitMonoMulaw).expect("riff");
        assert_eq!(u16::from_le_bytes([mulaw[20], mulaw[21]]), 7);
        assert_eq!(riff_header(AudioFormat::Raw24Khz16BitMonoPcm), None);
        assert_eq!(riff_header(AudioFormat::Audio24Khz48KBitRateMonoMp3), None);
    }

    #[test]
    fn request_matching() {
        assert!(same_request(None, "AB"));
        assert!(same_request(Some("ab"), "AB"));
        assert!(!same_request(Some("CD"), "AB"));
    }

    #[tokio::test]
    async fn word_offsets_search_forward() {
        let req = SynthesisRequest::text(
            "the cat the dog",
            "en-US-AvaNeural",
            AudioFormat::Raw16Khz16BitMonoPcm,
        )
        .with_word_boundaries(true);
        let ssml = req.to_ssml().into_owned();
        let mut out = TurnOutput::new(&req, &ssml);
        let (tx, mut rx) = mpsc::channel(16);
        for w in ["the", "cat", "the", "dog", "zzz"] {
            let body = format!(
                r#"{{"Metadata":[{{"Type":"WordBoundary","Data":{{"Offset":1000,"Duration":2000,"text":{{"Text":"{w}","Length":3,"BoundaryType":"WordBoundary"}}}}}}]}}"#
            );
            out.metadata(&body, &tx).await.expect("metadata");
        }
        out.metadata("not json", &tx).await.expect("ignored");
        drop(tx);
        let mut offsets = Vec::new();
        while let Some(SynthesisEvent::WordBoundary { text_offset, .. }) = rx.recv().await {
            offsets.push(text_offset);
        }
        assert_eq!(offsets, vec![0, 4, 8, 12, 15]);
    }
}
