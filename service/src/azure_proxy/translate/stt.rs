//! The STT websocket protocol, served by translation (see the [module docs](super)).
//!
//! Per turn, as the SDKs send it: `speech.context` (read and ignored: language, mode and
//! format are the socket's, from its path and query), then `audio` frames with the turn's
//! `X-RequestId`, the first carrying the RIFF header, the last one empty. The first frame
//! of a new request id starts the turn: `turn.start`, then the pooled recognizer's events
//! as Azure's messages, `turn.end` last. The audio must be what the pooled recognizer
//! takes (16 kHz, 16-bit, mono PCM); any other header closes the socket with 1007, as
//! Azure closes it for audio it cannot read. In interactive mode the turn's audio ends at
//! the first final phrase, as Azure ends an interactive turn; what the SDK still sends for
//! that turn is ignored.

use std::time::Instant;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use speech_core::wire::{self, BinaryMessage};
use speech_core::{
    RecognitionEvent, RecognitionFormat, RecognitionMode, RecognitionRequest, RecognizerManager,
    phrase_status,
};
use tokio::sync::mpsc;

use super::{
    Sink, close, finish, new_id, same_id, service_text, turn_connection, turn_failed,
    valid_request_id,
};
use crate::azure_proxy::relay::Downstream;
use crate::azure_proxy::stt_pools::Combination;

/// Audio chunks and events buffered per turn; small so back-pressure reaches the SDK.
const TURN_BUFFER: usize = 16;

/// Where the samples start in the first audio frame, after a RIFF header describing 16 kHz
/// 16-bit mono PCM; otherwise why the audio cannot be recognised.
fn pcm_start(payload: &[u8]) -> Result<usize, &'static str> {
    const UNSUPPORTED: &str =
        "Unsupported audio format: this service recognises 16 kHz, 16-bit, mono PCM (RIFF)";
    if payload.len() < 12 || &payload[..4] != b"RIFF" || &payload[8..12] != b"WAVE" {
        return Err("Invalid audio header: the first audio message must carry a RIFF/WAVE header");
    }
    let u16_at = |i: usize| {
        payload
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |i: usize| {
        payload
            .get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut at = 12;
    let mut fmt_ok = false;
    while let (Some(id), Some(size)) = (payload.get(at..at + 4), u32_at(at + 4)) {
        let body = at + 8;
        match id {
            b"fmt " => {
                let tag = u16_at(body);
                let channels = u16_at(body + 2);
                let rate = u32_at(body + 4);
                let bits = u16_at(body + 14);
                if (tag, channels, rate, bits) != (Some(1), Some(1), Some(16_000), Some(16)) {
                    return Err(UNSUPPORTED);
                }
                fmt_ok = true;
            }
            b"data" if fmt_ok => return Ok(body.min(payload.len())),
            b"data" => return Err(UNSUPPORTED),
            _ => {}
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        at = body.saturating_add(size).saturating_add(size % 2);
    }
    Err("Invalid audio header: no data chunk in the RIFF header")
}

/// The lexical form of a display text, as the detailed format carries it: lower case,
/// without punctuation.
fn lexical(text: &str) -> String {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '\'')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Azure's message for a recognition event: path and body.
fn message(event: &RecognitionEvent, format: RecognitionFormat) -> (&'static str, String) {
    match event {
        RecognitionEvent::SpeechStartDetected { offset } => (
            "speech.startDetected",
            json!({"Offset": offset}).to_string(),
        ),
        RecognitionEvent::Hypothesis {
            text,
            offset,
            duration,
        } => (
            "speech.hypothesis",
            json!({"Text": text, "Offset": offset, "Duration": duration}).to_string(),
        ),
        RecognitionEvent::Phrase {
            text,
            offset,
            duration,
            status,
        } => {
            let mut body = json!({
                "RecognitionStatus": status,
                "Offset": offset,
                "Duration": duration,
            });
            if status == phrase_status::SUCCESS {
                body["DisplayText"] = Value::from(text.as_str());
                if format == RecognitionFormat::Detailed {
                    // The recognizer reports no confidence, so none is given.
                    let lexical = lexical(text);
                    body["NBest"] = json!([{
                        "Lexical": lexical,
                        "ITN": lexical,
                        "MaskedITN": lexical,
                        "Display": text,
                    }]);
                }
            }
            ("speech.phrase", body.to_string())
        }
        RecognitionEvent::SpeechEndDetected { offset } => {
            ("speech.endDetected", json!({"Offset": offset}).to_string())
        }
        RecognitionEvent::TurnEnd => ("turn.end", "{}".to_owned()),
    }
}

/// Serves an STT socket of `combination` by translation until the SDK hangs up, a turn
/// fails or the service drains, then releases the socket's session.
pub async fn serve(
    socket: WebSocket,
    mut down: Downstream<RecognizerManager>,
    combination: Combination,
) {
    let (mut sink, mut stream) = socket.split();
    let drain = down.state.drain_token().clone();
    let mut pending: Option<BinaryMessage> = None;
    let mut finished: Option<String> = None;
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => {
                let next = tokio::select! {
                    m = stream.next() => m,
                    () = drain.cancelled() => {
                        close(&mut sink, 1000, "service draining").await;
                        break;
                    }
                };
                let data = match next {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    // speech.config, speech.context, telemetry: nothing a turn needs.
                    Some(Ok(_)) => continue,
                };
                match wire::parse_binary(data) {
                    Ok(m) => m,
                    Err(_) => {
                        close(&mut sink, 1007, "malformed binary message").await;
                        break;
                    }
                }
            }
        };
        if !first
            .headers
            .path()
            .is_some_and(|p| p.eq_ignore_ascii_case("audio"))
        {
            continue;
        }
        let request_id = match first.headers.request_id() {
            Some(id) if valid_request_id(id) => id.to_owned(),
            _ => {
                close(&mut sink, 1002, "audio without a valid X-RequestId").await;
                break;
            }
        };
        // Late audio of the turn that ended (the JavaScript SDK sends its end frame twice,
        // and keeps sending after an interactive turn's end), or an end without a turn.
        if finished.as_deref().is_some_and(|f| same_id(f, &request_id)) || first.payload.is_empty()
        {
            continue;
        }
        let next = turn(
            &mut down,
            &mut sink,
            &mut stream,
            &combination,
            request_id.clone(),
            first.payload,
        )
        .await;
        match next {
            TurnEnd::Next(m) => {
                finished = Some(request_id);
                pending = m;
            }
            TurnEnd::Closed => break,
        }
    }
    finish(down).await;
}

/// How a turn ended.
enum TurnEnd {
    /// Served; the socket goes on (with the next turn's first frame, if it came early).
    Next(Option<BinaryMessage>),
    /// The socket is closed or gone.
    Closed,
}

async fn turn(
    down: &mut Downstream<RecognizerManager>,
    sink: &mut Sink,
    stream: &mut SplitStream<WebSocket>,
    combination: &Combination,
    request_id: String,
    first: Bytes,
) -> TurnEnd {
    let started = Instant::now();
    let data_at = match pcm_start(&first) {
        Ok(at) => at,
        Err(why) => {
            close(sink, 1007, why).await;
            return TurnEnd::Closed;
        }
    };
    let Some((mut guard, waited)) = turn_connection(down, sink).await else {
        return TurnEnd::Closed;
    };
    let tier = guard.tier();
    let span = tracing::info_span!(
        "sdk_turn",
        request_id = %request_id,
        session = %down.session,
        pool = down.pool.name(),
        tier = tier.as_str(),
        kind = "stt",
        translated = true,
    );
    let tag = new_id().to_ascii_lowercase();
    let start = json!({"context": {"serviceTag": tag}}).to_string();
    if sink
        .send(service_text(&request_id, "turn.start", &start))
        .await
        .is_err()
    {
        return TurnEnd::Closed;
    }
    let mut request = RecognitionRequest::new(combination.language.clone());
    request.mode = combination.mode;
    request.format = combination.format;
    request.request_id = request_id.parse().unwrap_or_default();

    let (audio_tx, audio_rx) = mpsc::channel::<Bytes>(TURN_BUFFER);
    let (events_tx, mut events) = mpsc::channel(TURN_BUFFER);
    let samples = first.slice(data_at..);
    // Audio read from the SDK that the recognizer has no room for yet: reading stops
    // until it is taken, so back-pressure reaches the SDK.
    let mut held = (!samples.is_empty()).then_some(samples);
    let mut audio_tx = Some(audio_tx);
    let mut reading = true;
    let mut gone = false;
    let mut turn_end_sent = false;
    let mut events_done = false;
    let mut next: Option<BinaryMessage> = None;
    let state = down.state.clone();
    let result = {
        let work = guard.recognize(request, audio_rx, events_tx);
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                event = events.recv(), if !events_done => {
                    let Some(event) = event else {
                        // The recognizer is done sending; its result follows.
                        events_done = true;
                        continue;
                    };
                    if combination.mode == RecognitionMode::Interactive
                        && matches!(event, RecognitionEvent::Phrase { .. })
                    {
                        // Azure ends an interactive turn at its first phrase.
                        audio_tx = None;
                        held = None;
                    }
                    turn_end_sent |= event == RecognitionEvent::TurnEnd;
                    let (path, body) = message(&event, combination.format);
                    if !gone && sink.send(service_text(&request_id, path, &body)).await.is_err() {
                        gone = true;
                        reading = false;
                        audio_tx = None;
                        held = None;
                    }
                }
                out = &mut work => break out,
                permit = reserve(audio_tx.as_ref()), if held.is_some() => {
                    match permit {
                        Some(p) => {
                            if let Some(chunk) = held.take() {
                                p.send(chunk);
                            }
                        }
                        None => {
                            held = None;
                            audio_tx = None;
                        }
                    }
                }
                m = stream.next(), if reading && held.is_none() => {
                    let data = match m {
                        Some(Ok(Message::Binary(b))) => b,
                        Some(Ok(Message::Close(_)) | Err(_)) | None => {
                            // The SDK went away mid-turn: dropping the audio and the
                            // events ends the recognizer's turn (cancelled).
                            gone = true;
                            reading = false;
                            audio_tx = None;
                            continue;
                        }
                        Some(Ok(_)) => continue,
                    };
                    let Ok(msg) = wire::parse_binary(data) else {
                        close(sink, 1007, "malformed binary message").await;
                        gone = true;
                        reading = false;
                        audio_tx = None;
                        continue;
                    };
                    if !msg.headers.path().is_some_and(|p| p.eq_ignore_ascii_case("audio")) {
                        continue;
                    }
                    let ours = msg.headers.request_id().is_none_or(|id| same_id(id, &request_id));
                    if !ours {
                        // A new turn: Azure discards what the previous one still had
                        // pending; here the previous turn's audio ends and its results
                        // finish first.
                        next = Some(msg);
                        reading = false;
                        audio_tx = None;
                    } else if msg.payload.is_empty() {
                        audio_tx = None;
                    } else if audio_tx.is_some() {
                        held = Some(msg.payload);
                    }
                }
            }
        }
    };
    // Events the recognizer sent just before it returned.
    while let Ok(event) = events.try_recv() {
        turn_end_sent |= event == RecognitionEvent::TurnEnd;
        let (path, body) = message(&event, combination.format);
        if !gone
            && sink
                .send(service_text(&request_id, path, &body))
                .await
                .is_err()
        {
            gone = true;
        }
    }
    match result {
        Ok(()) => {
            drop(guard);
            tracing::debug!(
                parent: &span,
                elapsed_ms = started.elapsed().as_millis() as u64,
                acquire_ms = waited.as_millis() as u64,
                "turn translated"
            );
            if gone {
                return TurnEnd::Closed;
            }
            if !turn_end_sent
                && sink
                    .send(service_text(&request_id, "turn.end", "{}"))
                    .await
                    .is_err()
            {
                return TurnEnd::Closed;
            }
            TurnEnd::Next(next)
        }
        Err(e) => {
            turn_failed(&state, down.pool.name(), guard, &e, gone, sink, &span).await;
            TurnEnd::Closed
        }
    }
}

/// A permit to send one chunk, or `None` when the audio has ended (the recognizer stopped
/// taking it, or the turn ended it).
async fn reserve(tx: Option<&mpsc::Sender<Bytes>>) -> Option<mpsc::OwnedPermit<Bytes>> {
    tx?.clone().reserve_owned().await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn riff(rate: u32, channels: u16, bits: u16) -> Vec<u8> {
        [
            &b"RIFF"[..],
            &0u32.to_le_bytes(),
            b"WAVEfmt ",
            &16u32.to_le_bytes(),
            &1u16.to_le_bytes(),
            &channels.to_le_bytes(),
            &rate.to_le_bytes(),
            &(rate * 2).to_le_bytes(),
            &2u16.to_le_bytes(),
            &bits.to_le_bytes(),
            b"data",
            &0u32.to_le_bytes(),
        ]
        .concat()
    }

    #[test]
    fn only_16khz_mono_pcm_is_taken() {
        assert_eq!(pcm_start(&riff(16_000, 1, 16)), Ok(44));
        let mut with_samples = riff(16_000, 1, 16);
        with_samples.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(pcm_start(&with_samples), Ok(44));
        for bad in [riff(8_000, 1, 16), riff(16_000, 2, 16), riff(16_000, 1, 8)] {
            assert!(pcm_start(&bad).unwrap_err().contains("16 kHz"));
        }
        assert!(pcm_start(b"OggS....").unwrap_err().contains("RIFF"));
        assert!(pcm_start(&riff(16_000, 1, 16)[..30]).is_err());
    }

    #[test]
    fn events_become_azure_messages() {
        let phrase = RecognitionEvent::Phrase {
            text: "Hello, world.".into(),
            offset: 0,
            duration: 10_000_000,
            status: phrase_status::SUCCESS.into(),
        };
        let (path, body) = message(&phrase, RecognitionFormat::Detailed);
        assert_eq!(path, "speech.phrase");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["DisplayText"], "Hello, world.");
        assert_eq!(v["NBest"][0]["Display"], "Hello, world.");
        assert_eq!(v["NBest"][0]["Lexical"], "hello world");
        let (_, body) = message(&phrase, RecognitionFormat::Simple);
        assert!(!body.contains("NBest"), "{body}");
        let none = RecognitionEvent::Phrase {
            text: String::new(),
            offset: 0,
            duration: 0,
            status: phrase_status::ERROR.into(),
        };
        let (_, body) = message(&none, RecognitionFormat::Simple);
        assert!(!body.contains("DisplayText"), "{body}");
        assert_eq!(
            message(&RecognitionEvent::TurnEnd, RecognitionFormat::Simple),
            ("turn.end", "{}".to_owned())
        );
        let (path, body) = message(
            &RecognitionEvent::Hypothesis {
                text: "hel".into(),
                offset: 1,
                duration: 2,
            },
            RecognitionFormat::Simple,
        );
        assert_eq!(path, "speech.hypothesis");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, json!({"Text": "hel", "Offset": 1, "Duration": 2}));
    }
}
