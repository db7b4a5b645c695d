//! One simulated voice call against the service's HTTP API.
//!
//! A call is what a voice agent does for one phone call: it opens the STT websocket with
//! the call's session id, then for each turn streams the caller's utterance (STT), waits
//! for the recognition to end, and speaks a reply (TTS) on the same session; between
//! turns it "thinks". It ends the stream and sends `DELETE /api/v1/sessions/{id}`.
//!
//! The requests themselves are [`crate::client`]'s; this module is the shape of a call
//! and what it records.

use std::time::{Duration, Instant};

use super::stats::{Kind, Stats};
use crate::client::{Client, Pace, Request};

/// Per-step bound: a request, a websocket handshake or the wait for a message.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const REPLIES: [&str; 4] = [
    "Hello, how can I help you today?",
    "Let me check that for you.",
    "Your order has been shipped.",
    "Is there anything else?",
];

/// The shape of every call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallPlan {
    /// Turns per call.
    pub turns: u32,
    /// Pause between turns (the agent's "thinking" and the caller listening).
    pub think: Duration,
    /// Whether each turn starts with the caller speaking (an STT turn).
    pub stt: bool,
    /// Length of each caller utterance.
    pub utterance: Duration,
}

/// Runs one call with session `id`, recording every turn and error in `stats`.
pub(crate) async fn call(client: &Client, id: &str, plan: CallPlan, stats: &Stats) {
    let mut stt = None;
    // The caller starts speaking when the call connects; if opening the stream is slow
    // (a cold connect), the first result is late by that much, so the first turn is timed
    // from the moment the stream was requested.
    let mut first_turn_from = Some(Instant::now());
    if plan.stt {
        match client.open_stt(id).await {
            Ok(stream) => stt = Some(stream),
            Err(failure) => stats.error(Request::Stt, failure.class),
        }
    }
    for turn in 0..plan.turns {
        if turn > 0 {
            tokio::time::sleep(plan.think).await;
        }
        if let Some(stream) = &mut stt {
            let from = first_turn_from.take();
            match stream.turn(plan.utterance, Pace::RealTime, from).await {
                Ok(t) => stats.turn(Kind::Stt, &t.tier, t.first_result, t.acquire_ms),
                Err(failure) => {
                    stats.error(Request::Stt, failure.class);
                    // The stream is unusable after an error; later turns run TTS only.
                    stt = None;
                }
            }
        }
        let text = REPLIES[turn as usize % REPLIES.len()];
        match client.tts(Some(id), text).await {
            Ok(t) => stats.turn(Kind::Tts, &t.tier, t.first_audio, t.acquire_ms),
            Err(failure) => stats.error(Request::Tts, failure.class),
        }
    }
    if let Some(stream) = stt {
        stream.close().await;
    }
    if let Err(failure) = client.end_session(id).await {
        stats.error(Request::Delete, failure.class);
    }
}
