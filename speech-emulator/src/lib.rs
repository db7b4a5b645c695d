//! A protocol-faithful Azure Speech emulator: token endpoint, TTS REST, voices list, TTS
//! and STT websockets, over plain http/ws or https/wss with a generated certificate, with
//! simulated network delay and fault injection.
//!
//! It is self-contained on purpose (its own framing codec, format table, SSML reader): it
//! exists to test the client crates against the protocol, so it must not share their code.
//! Being its own crate, with no dependency on `speech-core` or `speech-azure`, makes that a
//! fact the compiler checks. The protocol it speaks is described in `docs/protocol.md`.
//!
//! Layout: `server` (listener, routing, [`EmulatorHandle`]) sits on `state` (what survives a
//! restart, and what one listening server owns); `rest` and `control` answer HTTP routes;
//! `ws` upgrades websockets and drives each session through the `session` types, with the
//! protocols in `tts`, `tts_v2` (text streaming) and `stt` (and `recognition`, shared with STT REST); `turn` folds
//! injected faults into one turn's plan.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use speech_emulator::{Emulator, EmulatorConfig, Fault, FaultRule};
//!
//! let emu = Emulator::start(EmulatorConfig::plain().with_key("test-key")).await?;
//! let tts_url = format!("{}/tts/cognitiveservices/websocket/v1", emu.base_url_ws());
//! // One handshake answered 429 with Retry-After, then recovery.
//! emu.add_fault(FaultRule::new(Fault::Handshake { status: 429, retry_after: Some(1) }).once());
//! # let _ = tts_url;
//! assert_eq!(emu.counters().connections_open, 0);
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Routes (paths are case-insensitive):
//! - `POST /sts/v1.0/issueToken`: a JWT-shaped token, `exp` = now + the token lifetime;
//! - `POST /cognitiveservices/v1`, `POST /tts/cognitiveservices/v1`: TTS REST;
//! - `GET /cognitiveservices/voices/list` (also under `/tts`): the voices list;
//! - `GET /cognitiveservices/websocket/v1`, `GET /tts/cognitiveservices/websocket/v1`: TTS;
//! - `GET /cognitiveservices/websocket/v2` (also under `/tts`): TTS with text streaming
//!   (`text.piece` / `text.end`), spoken as the text arrives, not at its end;
//! - `GET /speech/recognition/{interactive,conversation,dictation}/cognitiveservices/v1`,
//!   the same under `/stt`, and `/stt/speech/universal/v2`: STT websocket (a `POST` there is
//!   STT REST for short audio);
//! - `/_emulator/…`: the control API ([`control`] describes it), including the capture of
//!   what clients sent ([`Capture`]) when [`EmulatorConfig::capture`] is on;
//! - anything else: `404`.

#![warn(missing_docs)]

mod audio;
mod auth;
mod capture;
mod config;
pub mod control;
mod counters;
mod faults;
pub mod formats;
pub mod frame;
mod http;
mod recognition;
mod rest;
pub mod scripted;
mod server;
mod session;
mod ssml;
mod state;
mod stt;
mod time;
mod tls;
mod tts;
mod tts_v2;
mod turn;
mod ws;

pub use capture::Capture;
pub use config::EmulatorConfig;
pub use counters::Counters;
pub use faults::{
    Endpoint, Fault, FaultParseError, FaultPlan, FaultRule, Phase, Target, TurnPoint,
};
pub use server::{Emulator, EmulatorError, EmulatorHandle};
pub use tls::TlsIdentity;

/// Audio timing used by the emulator's synthetic speech, for tests that check lengths.
pub mod timing {
    pub use crate::audio::{LEAD_MS, MAX_AUDIO_MS, MS_PER_CHAR, TAIL_MS, TICKS_PER_MS};

    /// Milliseconds of audio the emulator synthesises for `text` (already plain text, with
    /// whitespace collapsed as SSML rendering does).
    pub fn synthesized_ms(text: &str) -> u64 {
        crate::audio::Timeline::new(text).duration_ms()
    }
}

/// The token helpers, for tests that need to mint or inspect tokens.
pub mod token {
    /// Reads the `exp` claim (Unix seconds) of a token without validating it.
    pub fn exp(token: &str) -> Option<u64> {
        crate::auth::token_exp(token)
    }
}
