//! A deterministic, seeded, in-process speech backend implementing the speech-core
//! traits, for tests and for the service's offline mode.
//!
//! - [`MockSynthesizerFactory`] / [`MockRecognizerFactory`] create connections
//!   ([`MockSynthesizer`], [`MockRecognizer`]) and plug into pools through
//!   [`speech_core::SynthesizerManager`] / [`speech_core::RecognizerManager`];
//!   [`mock_tts_manager`] and [`mock_stt_manager`] do both in one call.
//! - [`MockConfig`] sets latencies (create, warm, per turn, per chunk) and faults (fail
//!   every Nth create or warm, not ready after N uses or an age, drop mid-stream).
//! - [`MOCK_VOICES`]: the voices list the synthesizer factory answers, in Azure's schema.
//! - [`MockCounters`] count created, closed and open connections, warm-ups and turns, so
//!   tests can prove nothing leaks: after a pool shuts down, `created == closed`.
//!
//! Audio: same seed + same request ⇒ the same bytes, with length proportional to the
//! spoken text (`audio_per_char`, 60 ms by default). The 16-bit PCM formats carry real
//! PCM (a tone per character) and, for `riff-*`, a correct 44-byte WAV header; G.711
//! formats carry valid noise samples; compressed formats (mp3, Opus, SILK, AMR-WB, G.722)
//! carry the container's magic bytes followed by seeded bytes at the nominal bit rate, which
//! are **not decodable** — use a PCM format to test audio content.
//!
//! Everything that waits uses `tokio::time`, so `#[tokio::test(start_paused = true)]`
//! tests are instant and deterministic.

#![warn(missing_docs)]

use std::sync::Arc;

use speech_core::{RecognizerManager, SynthesizerManager};

mod audio;
mod config;
mod conn;
mod counters;
mod stt;
mod tts;

pub use config::MockConfig;
pub use counters::{MockCounters, MockCountersSnapshot};
pub use stt::{MockRecognizer, MockRecognizerFactory};
pub use tts::{MOCK_VOICES, MockSynthesizer, MockSynthesizerFactory};

/// A TTS pool manager backed by the mock, and the counters of every connection it creates.
///
/// ```
/// use speech_mock::backend::{MockConfig, mock_tts_manager};
///
/// let (manager, counters) = mock_tts_manager(MockConfig::default());
/// // let pool = pool_core::Pool::builder(manager)...;
/// # let _ = manager;
/// assert_eq!(counters.created(), 0);
/// ```
pub fn mock_tts_manager(config: MockConfig) -> (SynthesizerManager, Arc<MockCounters>) {
    let factory = MockSynthesizerFactory::new(config);
    let counters = factory.counters();
    (factory.into_manager(), counters)
}

/// An STT pool manager backed by the mock, and the counters of every connection it creates.
pub fn mock_stt_manager(config: MockConfig) -> (RecognizerManager, Arc<MockCounters>) {
    let factory = MockRecognizerFactory::new(config);
    let counters = factory.counters();
    (factory.into_manager(), counters)
}
