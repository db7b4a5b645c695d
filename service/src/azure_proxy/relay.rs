//! One downstream SDK websocket served by one pooled upstream connection, turn by turn.
//!
//! The downstream socket is a session of its pool (`azure-sdk:<id>`): its first turn takes
//! the connection acquired at the upgrade (WARM, or COLD when none was ready), later turns
//! get it back DEDICATED, and when the SDK disconnects the session is released, so the
//! connection is reset and returned to the warm set. Between turns nothing is relayed:
//! an upstream that closes meanwhile (idle or age limit) is replaced at the next turn's
//! acquire without the SDK noticing.
//!
//! Per message from the SDK:
//! - `speech.config` is absorbed: the pool's warm-up already configured the upstream, and
//!   Azure accepts it once per connection;
//! - `telemetry` is absorbed: it feeds Microsoft's client telemetry, not the answers;
//! - a message of the turn that just ended (the JavaScript SDK keeps sending audio, and
//!   its empty end frame twice, after an interactive turn's `turn.end`) is absorbed, because
//!   replaying a finished `X-RequestId` makes Azure close the socket with 1002;
//! - anything else with a new `X-RequestId` starts a turn; the turn's messages go upstream
//!   unchanged, and the upstream's come back unchanged until its `turn.end`.
//!
//! An upstream lost before the SDK was sent anything is replaced and the turn replayed on
//! the fresh connection, so the SDK does not notice: up to three times after a normal
//! close (1000 or 1001: an idle or age close that crossed the turn's first message on the
//! wire), once after a drop or a dead socket (`routes::moves_to_a_fresh_connection`).
//! Otherwise, when the upstream fails mid-turn the SDK sees the close it would see from
//! Azure itself: the upstream's own code when there was one (4429 throttled, 1007 bad
//! request, 1011 ...), and 1011 for a connection that died without one or closed normally
//! mid-turn, which the SDKs treat as retryable.

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use pool_core::{Manager, Pool, Pooled};
use speech_core::{ErrorClass, SpeechError, WireMessage};
use tokio::sync::mpsc;

use super::wire::{Route, binary_route, text_route};
use crate::routes::{acquire, moves_to_a_fresh_connection};
use crate::state::AppState;

/// Messages buffered per direction during a turn; small so back-pressure reaches the
/// sender (the SDK's audio, the service's audio) instead of memory.
const TURN_BUFFER: usize = 32;

/// Connections the relay can drive: the pools' boxed synthesizers and recognizers.
pub trait WireConnection: Send {
    /// See `speech_core::Connection::speaks_wire`.
    fn speaks_wire(&self) -> bool;
    /// See `speech_core::Connection::relay_turn`.
    fn relay(
        &mut self,
        to_service: mpsc::Receiver<WireMessage>,
        to_client: mpsc::Sender<WireMessage>,
    ) -> futures_util::future::BoxFuture<'_, Result<(), SpeechError>>;
}

macro_rules! wire_connection {
    ($t:ty) => {
        impl WireConnection for Box<$t> {
            fn speaks_wire(&self) -> bool {
                (**self).speaks_wire()
            }
            fn relay(
                &mut self,
                to_service: mpsc::Receiver<WireMessage>,
                to_client: mpsc::Sender<WireMessage>,
            ) -> futures_util::future::BoxFuture<'_, Result<(), SpeechError>> {
                (**self).relay_turn(to_service, to_client)
            }
        }
    };
}
wire_connection!(dyn speech_core::Synthesizer);
wire_connection!(dyn speech_core::Recognizer);

/// Which protocol a socket speaks, for logs and the first-audio metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text to speech.
    Tts,
    /// Speech to text.
    Stt,
}

/// A downstream socket with its session and the connection acquired at the upgrade.
pub struct Downstream<M: Manager> {
    /// The app.
    pub state: AppState,
    /// The pool serving this socket.
    pub pool: Pool<M>,
    /// This socket's session in `pool`.
    pub session: String,
    /// The connection taken at the upgrade (serves the first turn), and how long that took.
    pub first: Option<(Pooled<M>, Duration)>,
    /// TTS or STT.
    pub kind: Kind,
}

impl<M: Manager> std::fmt::Debug for Downstream<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downstream")
            .field("pool", &self.pool.name())
            .field("session", &self.session)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A client message with its routing facts.
struct ClientMessage {
    route: Route,
    wire: WireMessage,
}

fn classify(msg: Message) -> Option<Result<ClientMessage, (u16, &'static str)>> {
    match msg {
        Message::Text(t) => {
            let text = t.as_str().to_owned();
            Some(Ok(ClientMessage {
                route: text_route(&text),
                wire: WireMessage::Text(text),
            }))
        }
        Message::Binary(b) => Some(match binary_route(&b) {
            Some(route) => Ok(ClientMessage {
                route,
                wire: WireMessage::Binary(b),
            }),
            // Azure's answer to a malformed frame (docs: "a bad frame gives close 1007").
            None => Err((1007, "malformed binary message")),
        }),
        _ => None,
    }
}

/// What the SDK sent that no turn needs.
fn absorbed(route: &Route, finished: Option<&str>) -> bool {
    matches!(route.path.as_str(), "speech.config" | "telemetry")
        || route.request_id.is_none()
        || route.request_id.as_deref() == finished
}

/// The close an SDK expects for an upstream failure (see the module comment).
pub fn close_for(err: &SpeechError) -> (u16, String) {
    let code = match err {
        // A normal close (1000, 1001) ends a turn the SDK is waiting on without an error,
        // and the JavaScript SDK then waits for the turn's end for ever: the SDK gets
        // 1011, the failure it retries, instead.
        SpeechError::ConnectionClosed {
            code: Some(c @ (1002 | 1003 | 1007..=1014 | 3000..=4999)),
            ..
        } => *c,
        _ => match err.class() {
            ErrorClass::Throttled => 4429,
            ErrorClass::BadRequest => 1007,
            ErrorClass::Protocol => 1002,
            _ => 1011,
        },
    };
    // A close reason is at most 123 bytes; cut at a character boundary.
    let mut reason = err.to_string();
    if reason.len() > 120 {
        let mut end = 120;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    (code, reason)
}

async fn close(
    socket: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    code: u16,
    reason: String,
) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

fn to_axum(m: WireMessage) -> Message {
    match m {
        WireMessage::Text(t) => Message::Text(t.into()),
        WireMessage::Binary(b) => Message::Binary(b),
    }
}

/// Serves `socket` until the SDK hangs up, a turn fails or the service drains, then
/// releases the session (the connection goes back to the warm set if it is still good).
pub async fn serve<M>(socket: WebSocket, mut down: Downstream<M>)
where
    M: Manager<Error = SpeechError>,
    M::Resource: WireConnection,
{
    let (mut sink, mut stream) = socket.split();
    let drain = down.state.drain_token().clone();
    let mut pending: Option<ClientMessage> = None;
    let mut finished: Option<String> = None;
    'socket: loop {
        // Between turns: wait for the message that starts the next one.
        let first = match pending.take() {
            Some(m) => m,
            None => {
                let msg = tokio::select! {
                    m = stream.next() => m,
                    () = drain.cancelled() => {
                        // 1000 is what Azure sends at its idle and age limits: the SDK
                        // reconnects on its next request (to another replica, when draining).
                        close(&mut sink, 1000, "service draining".into()).await;
                        break 'socket;
                    }
                };
                let Some(Ok(msg)) = msg else { break 'socket };
                if matches!(msg, Message::Close(_)) {
                    break 'socket;
                }
                match classify(msg) {
                    None => continue,
                    Some(Err((code, why))) => {
                        close(&mut sink, code, why.into()).await;
                        break 'socket;
                    }
                    Some(Ok(m)) if absorbed(&m.route, finished.as_deref()) => continue,
                    Some(Ok(m)) => m,
                }
            }
        };
        let request_id = first.route.request_id.clone().unwrap_or_default();

        let (mut guard, waited) = match down.first.take() {
            Some(g) => g,
            None => match acquire(&down.state, &down.pool, Some(&down.session)).await {
                Ok(g) => g,
                Err(e) => {
                    // The SDK reads 4429 as throttling and anything else as a failure it
                    // may retry on a new connection.
                    let code = if e.status.as_u16() == 429 { 4429 } else { 1011 };
                    close(&mut sink, code, e.message.chars().take(120).collect()).await;
                    break 'socket;
                }
            },
        };
        let tier = guard.tier();
        let span = tracing::info_span!(
            "sdk_turn",
            request_id = %request_id,
            session = %down.session,
            pool = down.pool.name(),
            tier = tier.as_str(),
            kind = ?down.kind,
        );
        let started = Instant::now();
        // Copies of the turn's messages to the upstream, kept while the SDK has been sent
        // nothing: an upstream lost before answering (an idle or age close that crossed
        // the turn's first message on the wire, a drop) is replaced and the turn replayed
        // on the new connection, as often as `moves_to_a_fresh_connection` allows, so the
        // SDK never notices. A turn of more than `TURN_BUFFER` messages is not
        // replayable.
        let mut replay: Option<Vec<WireMessage>> = Some(vec![first.wire]);
        let mut replays: u32 = 0;
        let mut sent_to_sdk = false;
        let mut first_audio = false;
        let mut reading = true;
        let (outcome, to_client) = loop {
            let (to_service, service_rx) = mpsc::channel(TURN_BUFFER);
            let (client_tx, mut to_client) = mpsc::channel(TURN_BUFFER);
            // Cannot fail: the receiver is alive and the replay fits the buffer.
            for m in replay.iter().flatten() {
                let _ = to_service.try_send(m.clone());
            }
            let outcome = {
                let relay = guard.relay(service_rx, client_tx);
                tokio::pin!(relay);
                loop {
                    tokio::select! {
                        result = &mut relay => break Some(result),
                        Some(m) = to_client.recv() => {
                            if !first_audio && matches!(m, WireMessage::Binary(_)) {
                                first_audio = true;
                                if down.kind == Kind::Tts {
                                    down.state.metrics().record_first_audio(tier, started.elapsed());
                                }
                            }
                            sent_to_sdk = true;
                            replay = None;
                            if sink.send(to_axum(m)).await.is_err() {
                                break None;
                            }
                        }
                        m = stream.next(), if reading => {
                            let Some(Ok(m)) = m else { break None };
                            if matches!(m, Message::Close(_)) {
                                break None;
                            }
                            match classify(m) {
                                None => {}
                                Some(Err((code, why))) => {
                                    close(&mut sink, code, why.into()).await;
                                    break None;
                                }
                                Some(Ok(m)) => {
                                    let same = m.route.request_id.as_deref() == Some(request_id.as_str());
                                    if same && m.route.path != "telemetry" {
                                        if let Some(kept) = replay.as_mut() {
                                            if kept.len() < TURN_BUFFER {
                                                kept.push(m.wire.clone());
                                            } else {
                                                replay = None;
                                            }
                                        }
                                        if to_service.send(m.wire).await.is_err() {
                                            reading = false;
                                        }
                                    } else if !absorbed(&m.route, finished.as_deref()) && !same {
                                        // The next turn's first message (the SDK only sends one
                                        // after this turn's end, but a client may pipeline):
                                        // keep it and stop reading until this turn is over.
                                        pending = Some(m);
                                        reading = false;
                                    }
                                }
                            }
                        }
                    }
                }
            };
            let movable =
                matches!(&outcome, Some(Err(e)) if moves_to_a_fresh_connection(e, replays));
            if !(movable && !sent_to_sdk && replay.is_some() && to_client.is_empty()) {
                break (outcome, to_client);
            }
            if let Some(Err(e)) = &outcome {
                let metrics = down.state.metrics();
                metrics.record_upstream_error(down.pool.name(), e.class());
                metrics.record_turn_move(down.pool.name());
            }
            // The failed connection is not ready: dropping the guard discards it, and the
            // session binds a fresh one.
            drop(guard);
            replays += 1;
            tracing::info!(parent: &span, replays, "upstream lost before answering; replaying the turn on a fresh connection");
            guard = match acquire(&down.state, &down.pool, Some(&down.session)).await {
                Ok((g, _)) => g,
                Err(e) => {
                    let code = if e.status.as_u16() == 429 { 4429 } else { 1011 };
                    close(&mut sink, code, e.message.chars().take(120).collect()).await;
                    break 'socket;
                }
            };
        };
        let mut to_client = to_client;
        match outcome {
            None => {
                // The SDK went away mid-turn. The relay future is dropped, so the
                // connection reports itself not ready and the pool discards it.
                tracing::debug!(parent: &span, "SDK disconnected mid-turn");
                break 'socket;
            }
            Some(Ok(())) => {
                while let Ok(m) = to_client.try_recv() {
                    if sink.send(to_axum(m)).await.is_err() {
                        break 'socket;
                    }
                }
                tracing::debug!(parent: &span, elapsed_ms = started.elapsed().as_millis() as u64, acquire_ms = waited.as_millis() as u64, "turn relayed");
                finished = Some(request_id);
                // Back to the session (DEDICATED next turn).
                drop(guard);
            }
            Some(Err(e)) => {
                while let Ok(m) = to_client.try_recv() {
                    let _ = sink.send(to_axum(m)).await;
                }
                if e.class() != ErrorClass::Cancelled {
                    down.state
                        .metrics()
                        .record_upstream_error(down.pool.name(), e.class());
                }
                let (code, reason) = close_for(&e);
                tracing::info!(parent: &span, error = %e, close = code, "upstream turn failed; closing the SDK's socket");
                close(&mut sink, code, reason).await;
                // The failed connection is not ready: dropping the guard discards it.
                drop(guard);
                break 'socket;
            }
        }
    }
    // A connection acquired at the upgrade but never used goes back first.
    drop(down.first.take());
    down.pool.release_for_session(&down.session).await;
    down.state.session_cap().forget(&down.session);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_map_to_the_sdks_close_codes() {
        let code = |e: SpeechError| close_for(&e).0;
        assert_eq!(code(SpeechError::from_close_code(4429, "throttled")), 4429);
        assert_eq!(code(SpeechError::from_close_code(1007, "bad ssml")), 1007);
        assert_eq!(code(SpeechError::from_close_code(1000, "idle")), 1011);
        assert_eq!(code(SpeechError::from_close_code(1001, "going away")), 1011);
        assert_eq!(code(SpeechError::from_close_code(1013, "later")), 1011);
        // A drop without a close frame (1006 cannot be sent) is a retryable 1011.
        assert_eq!(code(SpeechError::connection_closed(None, "reset")), 1011);
        assert_eq!(code(SpeechError::connection_closed(Some(1006), "x")), 1011);
        assert_eq!(code(SpeechError::timeout("slow")), 1011);
        let (_, reason) = close_for(&SpeechError::transient("é".repeat(200)));
        assert!(reason.len() <= 123);
    }

    #[test]
    fn late_and_configuration_messages_are_absorbed() {
        let r = |path: &str, id: Option<&str>| Route {
            path: path.into(),
            request_id: id.map(str::to_owned),
        };
        assert!(absorbed(&r("speech.config", Some("A")), None));
        assert!(absorbed(&r("telemetry", Some("A")), None));
        assert!(absorbed(&r("audio", Some("A")), Some("A")));
        assert!(absorbed(&r("audio", None), None));
        assert!(!absorbed(&r("audio", Some("B")), Some("A")));
        assert!(!absorbed(&r("synthesis.context", Some("B")), None));
    }
}
