//! The speech backend SDK: what a speech backend implements so that the service can use it
//! without knowing which backend it is.
//!
//! - [`Synthesizer`] (text → streamed audio) and [`Recognizer`] (streamed audio → events),
//!   both extending [`Connection`] (ready / warm / reset / close), one turn at a time.
//! - Request and event types: [`SynthesisRequest`], [`SynthesisEvent`],
//!   [`RecognitionRequest`], [`RecognitionEvent`], [`RequestId`], and Azure's output
//!   formats, [`AudioFormat`].
//! - One classified error, [`SpeechError`], whose [`ErrorClass`] drives HTTP statuses,
//!   retries and metrics labels.
//! - [`wire`]: Azure's websocket message codec (header blocks, binary framing), for the
//!   backends that speak the protocol and the service that serves it.
//! - [`SynthesizerManager`] / [`RecognizerManager`]: `pool_core::Manager`s over boxed
//!   connections built by a [`SynthesizerFactory`] / [`RecognizerFactory`], so a pool's type
//!   does not depend on the backend.
//!
//! This crate does no I/O and knows nothing of a particular backend; it changes rarely so
//! that backends and the service can evolve independently.

#![warn(missing_docs)]

mod connection;
mod error;
mod event;
mod format;
mod manager;
mod request;
mod ssml;
mod stop;
mod text_stream;
mod time;
pub mod wire;

pub use connection::{Connection, Recognizer, Synthesizer, WireMessage};
pub use error::{ErrorClass, SpeechError};
pub use event::{
    RECOGNITION_BYTES_PER_SECOND, RECOGNITION_SAMPLE_RATE_HZ, RecognitionEvent, SynthesisEvent,
    SynthesisSummary, TICKS_PER_SECOND, duration_to_ticks, pcm16k_bytes_to_ticks, phrase_status,
    ticks_to_duration,
};
pub use format::{
    AudioFormat, UnknownAudioFormat, WAV_FORMAT_ALAW, WAV_FORMAT_MULAW, WAV_FORMAT_PCM,
    WAV_HEADER_LEN, wav_header, wav_header_with_tag,
};
pub use manager::{RecognizerFactory, RecognizerManager, SynthesizerFactory, SynthesizerManager};
pub use request::{
    InvalidRequestId, MAX_LANGUAGE_TAG_LEN, MAX_SSML_BYTES, MAX_VOICE_NAME_LEN, RecognitionFormat,
    RecognitionMode, RecognitionRequest, RequestId, SynthesisInput, SynthesisRequest, build_ssml,
    escape_xml, validate_voice_name,
};
pub use stop::StopSignal;
pub use text_stream::{MAX_STREAMED_TEXT_BYTES, validate_text_stream_request};
pub use time::rfc3339_millis;

/// Re-exported so that backends name the same `async_trait` attribute the traits were
/// declared with.
pub use async_trait::async_trait;
