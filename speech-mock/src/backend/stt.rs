//! The mock recognizer and its factory.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use speech_core::{
    Connection, RECOGNITION_BYTES_PER_SECOND, RecognitionEvent, RecognitionFormat, RecognitionMode,
    RecognitionRequest, Recognizer, RecognizerFactory, RecognizerManager, SpeechError,
    pcm16k_bytes_to_ticks, phrase_status,
};
use tokio::sync::mpsc;

use super::config::MockConfig;
use super::conn::{ConnState, Shared, pause};
use super::counters::MockCounters;

/// Creates [`MockRecognizer`]s. Cheap to clone; clones share configuration, counters, fault
/// sequence numbers and the position in the transcript script.
#[derive(Debug, Clone)]
pub struct MockRecognizerFactory {
    shared: Arc<Shared>,
}

impl MockRecognizerFactory {
    /// A factory with its own fresh counters.
    pub fn new(config: MockConfig) -> Self {
        Self::with_counters(config, Arc::new(MockCounters::new()))
    }

    /// A factory reporting into existing counters.
    pub fn with_counters(config: MockConfig, counters: Arc<MockCounters>) -> Self {
        Self {
            shared: Shared::new(config, counters),
        }
    }

    /// The counters of this factory and all its connections.
    pub fn counters(&self) -> Arc<MockCounters> {
        Arc::clone(&self.shared.counters)
    }

    /// The configuration in use.
    pub fn config(&self) -> &MockConfig {
        &self.shared.config
    }

    /// Opens a connection as its concrete type (the [`RecognizerFactory`] impl boxes it).
    pub async fn connect(&self) -> Result<MockRecognizer, SpeechError> {
        Ok(MockRecognizer {
            conn: self.shared.connect().await?,
        })
    }

    /// A type-erased pool manager over this factory.
    pub fn into_manager(self) -> RecognizerManager {
        RecognizerManager::new(self)
    }
}

#[async_trait]
impl RecognizerFactory for MockRecognizerFactory {
    async fn create(&self) -> Result<Box<dyn Recognizer>, SpeechError> {
        Ok(Box::new(self.connect().await?))
    }

    /// The mock's output does not depend on mode, language or format, so every
    /// combination is served by a clone of this factory (same configuration, counters,
    /// fault sequence and transcript position). A malformed language tag is refused as
    /// Azure refuses it (a bad request).
    fn for_combination(
        &self,
        mode: RecognitionMode,
        language: &str,
        format: RecognitionFormat,
    ) -> Result<Arc<dyn RecognizerFactory>, SpeechError> {
        let mut probe = RecognitionRequest::new(language);
        probe.mode = mode;
        probe.format = format;
        probe.validate()?;
        Ok(Arc::new(self.clone()))
    }
}

/// A deterministic in-process recognizer connection.
///
/// Each turn consumes the audio channel until it closes and emits, like Azure:
/// `SpeechStartDetected { offset: 0 }` on the first non-empty chunk; a `Hypothesis` each
/// time another `hypothesis_every` of audio has arrived (growing prefixes of the phrase,
/// one more word each time, `duration` = audio so far); then, after `turn_latency`,
/// `SpeechEndDetected { offset: end }`, the final `Phrase { offset: 0, duration: end,
/// status: "Success" }` and `TurnEnd`, where `end` is the duration of the audio received
/// (16 kHz 16-bit mono, 625 ticks per sample). The phrase is the next entry of the
/// configured transcript, cycling across all turns of the factory.
///
/// With no audio at all the turn is `SpeechEndDetected { 0 }`, `Phrase { "", 0, 0,
/// "Error" }`, `TurnEnd`, which is what Azure sends for empty audio. Mode and format do
/// not change the mock's output. Cancellation behaves as for
/// [`MockSynthesizer`](super::MockSynthesizer); a dropped events receiver is noticed even
/// while waiting for audio.
#[derive(Debug)]
pub struct MockRecognizer {
    conn: ConnState,
}

impl MockRecognizer {
    /// This connection's number within its factory (1-based, in creation order).
    pub fn id(&self) -> u64 {
        self.conn.id
    }

    /// Turns started on this connection.
    pub fn uses(&self) -> u32 {
        self.conn.uses()
    }

    async fn run_turn(
        conn: &mut ConnState,
        turn: u64,
        audio: &mut mpsc::Receiver<Bytes>,
        events: &mpsc::Sender<RecognitionEvent>,
    ) -> Result<(), SpeechError> {
        // Shared handle, so the config is borrowed without cloning it per turn.
        let shared = std::sync::Arc::clone(&conn.shared);
        let config = &shared.config;
        let drop_at = conn.drop_point(turn);
        let phrase = if config.transcript.is_empty() {
            String::new()
        } else {
            let index = (turn - 1) % config.transcript.len() as u64;
            config
                .transcript
                .get(usize::try_from(index).unwrap_or(0))
                .cloned()
                .unwrap_or_default()
        };
        let words: Vec<&str> = phrase.split_whitespace().collect();
        let hyp_bytes = u64::try_from(
            config.hypothesis_every.as_nanos() * u128::from(RECOGNITION_BYTES_PER_SECOND)
                / 1_000_000_000,
        )
        .unwrap_or(u64::MAX);
        let mut next_hyp = hyp_bytes;
        let mut hypotheses: usize = 0;
        let mut received: u64 = 0;
        let mut chunks: u32 = 0;

        loop {
            if drop_at == Some(chunks) {
                return Err(conn.dropped_mid_stream(chunks));
            }
            let chunk = tokio::select! {
                biased;
                () = events.closed() => return Err(SpeechError::Cancelled),
                chunk = audio.recv() => chunk,
            };
            let Some(chunk) = chunk else { break };
            chunks = chunks.saturating_add(1);
            if chunk.is_empty() {
                continue;
            }
            if received == 0 {
                events
                    .send(RecognitionEvent::SpeechStartDetected { offset: 0 })
                    .await?;
            }
            received += chunk.len() as u64;
            while hyp_bytes > 0 && received >= next_hyp {
                hypotheses += 1;
                let text = words
                    .iter()
                    .take(hypotheses.min(words.len()))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ");
                if !text.is_empty() {
                    events
                        .send(RecognitionEvent::Hypothesis {
                            text,
                            offset: 0,
                            duration: pcm16k_bytes_to_ticks(next_hyp),
                        })
                        .await?;
                }
                next_hyp = next_hyp.saturating_add(hyp_bytes);
            }
        }

        pause(config.turn_latency, events).await?;
        let end = pcm16k_bytes_to_ticks(received);
        let (text, status) = if received == 0 {
            (String::new(), phrase_status::ERROR)
        } else if words.is_empty() {
            (String::new(), phrase_status::NO_MATCH)
        } else {
            (phrase, phrase_status::SUCCESS)
        };
        events
            .send(RecognitionEvent::SpeechEndDetected { offset: end })
            .await?;
        events
            .send(RecognitionEvent::Phrase {
                text,
                offset: 0,
                duration: end,
                status: status.to_owned(),
            })
            .await?;
        events.send(RecognitionEvent::TurnEnd).await?;
        Ok(())
    }
}

#[async_trait]
impl Connection for MockRecognizer {
    fn is_ready(&self) -> bool {
        self.conn.is_ready()
    }

    async fn warm(&mut self) -> Result<(), SpeechError> {
        self.conn.warm().await
    }

    async fn reset(&mut self) -> Result<(), SpeechError> {
        self.conn.reset()
    }

    async fn close(mut self: Box<Self>) {
        self.conn.mark_closed();
    }
}

#[async_trait]
impl Recognizer for MockRecognizer {
    async fn recognize(
        &mut self,
        request: RecognitionRequest,
        mut audio: mpsc::Receiver<Bytes>,
        events: mpsc::Sender<RecognitionEvent>,
    ) -> Result<(), SpeechError> {
        request.validate()?;
        let turn = self.conn.begin_turn()?;
        let result = Self::run_turn(&mut self.conn, turn, &mut audio, &events).await;
        self.conn.end_turn(&result);
        result
    }
}
