//! The mock synthesizer and its factory.

use std::sync::Arc;

use async_trait::async_trait;
use speech_core::{
    Connection, SpeechError, SynthesisEvent, SynthesisRequest, SynthesisSummary, Synthesizer,
    SynthesizerFactory, SynthesizerManager,
};
use tokio::sync::mpsc;

use super::audio::{AudioStream, Script, WordSpan, script};
use super::config::MockConfig;
use super::conn::{ConnState, Shared, pause};
use super::counters::MockCounters;

/// Creates [`MockSynthesizer`]s. Cheap to clone; clones share configuration, counters and
/// fault sequence numbers.
#[derive(Debug, Clone)]
pub struct MockSynthesizerFactory {
    shared: Arc<Shared>,
}

impl MockSynthesizerFactory {
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

    /// Opens a connection as its concrete type (the [`SynthesizerFactory`] impl boxes it).
    pub async fn connect(&self) -> Result<MockSynthesizer, SpeechError> {
        Ok(MockSynthesizer {
            conn: self.shared.connect().await?,
        })
    }

    /// A type-erased pool manager over this factory.
    pub fn into_manager(self) -> SynthesizerManager {
        SynthesizerManager::new(self)
    }
}

#[async_trait]
impl SynthesizerFactory for MockSynthesizerFactory {
    async fn create(&self) -> Result<Box<dyn Synthesizer>, SpeechError> {
        Ok(Box::new(self.connect().await?))
    }

    /// [`MOCK_VOICES`], after the create latency (the list is a request to the service).
    async fn voices(&self) -> Result<bytes::Bytes, SpeechError> {
        tokio::time::sleep(self.shared.config.create_latency).await;
        Ok(bytes::Bytes::from_static(MOCK_VOICES.as_bytes()))
    }
}

/// The mock's voices list, in Azure's `voices/list` schema. The mock speaks any
/// well-formed voice name; these are the ones it lists (the service's default voice
/// first).
pub const MOCK_VOICES: &str = r#"[{"Name":"Microsoft Server Speech Text to Speech Voice (en-US, AvaMultilingualNeural)","DisplayName":"Ava Multilingual","LocalName":"Ava Multilingual","ShortName":"en-US-AvaMultilingualNeural","Gender":"Female","Locale":"en-US","LocaleName":"English (United States)","SampleRateHertz":"24000","VoiceType":"Neural","Status":"GA","WordsPerMinute":"150"},{"Name":"Microsoft Server Speech Text to Speech Voice (en-US, AndrewMultilingualNeural)","DisplayName":"Andrew Multilingual","LocalName":"Andrew Multilingual","ShortName":"en-US-AndrewMultilingualNeural","Gender":"Male","Locale":"en-US","LocaleName":"English (United States)","SampleRateHertz":"24000","VoiceType":"Neural","Status":"GA","WordsPerMinute":"150"},{"Name":"Microsoft Server Speech Text to Speech Voice (en-US, JennyNeural)","DisplayName":"Jenny","LocalName":"Jenny","ShortName":"en-US-JennyNeural","Gender":"Female","Locale":"en-US","LocaleName":"English (United States)","StyleList":["assistant","chat","cheerful"],"SampleRateHertz":"24000","VoiceType":"Neural","Status":"GA","WordsPerMinute":"152"},{"Name":"Microsoft Server Speech Text to Speech Voice (de-DE, KatjaNeural)","DisplayName":"Katja","LocalName":"Katja","ShortName":"de-DE-KatjaNeural","Gender":"Female","Locale":"de-DE","LocaleName":"German (Germany)","SampleRateHertz":"24000","VoiceType":"Neural","Status":"GA","WordsPerMinute":"125"},{"Name":"Microsoft Server Speech Text to Speech Voice (fr-FR, DeniseNeural)","DisplayName":"Denise","LocalName":"Denise","ShortName":"fr-FR-DeniseNeural","Gender":"Female","Locale":"fr-FR","LocaleName":"French (France)","SampleRateHertz":"24000","VoiceType":"Neural","Status":"GA","WordsPerMinute":"130"}]"#;

/// A deterministic in-process synthesizer connection.
///
/// Audio is derived from the request (see the [module docs](super)): its length is
/// proportional to the spoken text, PCM formats carry real PCM (behind a correct WAV header
/// for `riff-*`), compressed formats carry seeded, non-decodable bytes. Events are pushed
/// chunk by chunk with `turn_latency` before the first and `chunk_interval` between chunks;
/// word boundaries, when requested, are sent just before the chunk in which the word
/// starts.
///
/// If the events receiver is dropped the turn stops and returns
/// `Err(SpeechError::Cancelled)`; the connection stays ready (an in-process turn leaves
/// nothing in flight). If the turn future itself is dropped, the connection reports not
/// ready from then on.
#[derive(Debug)]
pub struct MockSynthesizer {
    conn: ConnState,
}

impl MockSynthesizer {
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
        request: &SynthesisRequest,
        events: &mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError> {
        // Shared handle, so the config is borrowed without cloning it per turn.
        let shared = std::sync::Arc::clone(&conn.shared);
        let config = &shared.config;
        let drop_at = conn.drop_point(turn);
        let Script { tones, words } = script(&request.input, config.seed);
        let mut audio = AudioStream::new(
            request,
            tones,
            config.seed,
            config.audio_per_char,
            config.max_audio,
        );
        let mut words = if request.word_boundaries {
            words.into_iter().peekable()
        } else {
            Vec::new().into_iter().peekable()
        };
        let per_char = config.audio_per_char;
        let total = audio.duration();
        pause(config.turn_latency, events).await?;

        let mut chunks: u32 = 0;
        let mut audio_bytes: u64 = 0;
        loop {
            if drop_at == Some(chunks) {
                return Err(conn.dropped_mid_stream(chunks));
            }
            let chunk_end = audio.time_at(audio.produced() + audio.next_len(config.chunk_bytes));
            let Some(chunk) = audio.next_chunk(config.chunk_bytes) else {
                break;
            };
            if chunks > 0 {
                pause(config.chunk_interval, events).await?;
            }
            while let Some(w) = words.next_if(|w| start_of(w, per_char) < chunk_end) {
                events.send(boundary(w, per_char)).await?;
            }
            audio_bytes += chunk.len() as u64;
            chunks = chunks.saturating_add(1);
            events.send(SynthesisEvent::Audio(chunk)).await?;
        }
        // Words that fall inside the last partial sample (only with absurdly short
        // per-character audio) still get their boundary, unless beyond the audio cap.
        for w in words {
            if start_of(&w, per_char) < total {
                events.send(boundary(w, per_char)).await?;
            }
        }
        Ok(SynthesisSummary {
            audio_bytes,
            chunks,
            request_id: request.request_id.clone(),
        })
    }
}

fn start_of(w: &WordSpan, per_char: std::time::Duration) -> std::time::Duration {
    per_char.saturating_mul(u32::try_from(w.first_char).unwrap_or(u32::MAX))
}

fn boundary(w: WordSpan, per_char: std::time::Duration) -> SynthesisEvent {
    SynthesisEvent::WordBoundary {
        audio_offset: start_of(&w, per_char),
        duration: per_char.saturating_mul(u32::try_from(w.chars).unwrap_or(u32::MAX)),
        text_offset: u32::try_from(w.byte_offset).unwrap_or(u32::MAX),
        word_length: u32::try_from(w.byte_len).unwrap_or(u32::MAX),
        text: w.text,
    }
}

#[async_trait]
impl Connection for MockSynthesizer {
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
impl Synthesizer for MockSynthesizer {
    async fn synthesize(
        &mut self,
        request: SynthesisRequest,
        events: mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError> {
        request.validate()?;
        let turn = self.conn.begin_turn()?;
        let result = Self::run_turn(&mut self.conn, turn, &request, &events).await;
        self.conn.end_turn(&result);
        result
    }
}
