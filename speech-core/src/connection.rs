//! The traits a speech backend implements.

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::SpeechError;
use crate::event::{RecognitionEvent, SynthesisEvent, SynthesisSummary};
use crate::request::{RecognitionRequest, SynthesisRequest};
use crate::stop::StopSignal;

/// Lifecycle shared by every pooled speech connection (one websocket, or one REST client
/// with its auth state).
///
/// These methods are what the type-erased pool managers
/// ([`SynthesizerManager`](crate::SynthesizerManager),
/// [`RecognizerManager`](crate::RecognizerManager)) forward `pool_core::Manager` calls to,
/// which is why they live on the connection rather than on a factory: only the connection
/// knows its socket and token state.
///
/// All methods have defaults suitable for a stateless connection (always ready, nothing to
/// warm, reset or close), so a minimal backend only implements the turn method.
#[async_trait]
pub trait Connection: Send {
    /// Cheap, synchronous, non-blocking: may this connection serve a turn now? (Socket open,
    /// token valid, younger than the server's age limit, not broken by a cancelled turn.)
    ///
    /// Called by the pool on every hand-out and every return, so it must not lock anything
    /// contended, do I/O or allocate. Return `false` as soon as the state is unknown, e.g.
    /// when a turn future was dropped mid-flight.
    fn is_ready(&self) -> bool {
        true
    }

    /// How long ago the connection to the service was opened, when the backend knows it.
    ///
    /// A caller that keeps one connection for minutes (a call-long recognition stream)
    /// reads it to move to a fresh connection before the service's age limit (Azure: 10
    /// minutes) cuts it. `None` (the default) means unknown: the caller then counts from
    /// when it took the connection.
    fn age(&self) -> Option<std::time::Duration> {
        None
    }

    /// Prepares a freshly created connection for its first turn (e.g. sends
    /// `speech.config`), so that the first turn of a call pays no extra round trip.
    /// Called once per connection, before it is first handed out. An error makes the
    /// pool close the connection.
    async fn warm(&mut self) -> Result<(), SpeechError> {
        Ok(())
    }

    /// Prepares a connection created inline for a caller who is waiting for it (the COLD
    /// path). Defaults to [`warm`](Self::warm). A connection whose caller's own first
    /// request proves it (TTS over REST: the request opens the connection and fails
    /// loudly if it cannot) overrides this to skip a warm-up round trip the caller would
    /// otherwise wait for.
    async fn warm_for_caller(&mut self) -> Result<(), SpeechError> {
        self.warm().await
    }

    /// Clears per-session state before the connection serves another session. An error
    /// makes the pool close the connection instead of reusing it.
    async fn reset(&mut self) -> Result<(), SpeechError> {
        Ok(())
    }

    /// Closes gracefully (for a websocket: a close frame, then wait briefly for the
    /// server's). Takes the box by value so a connection cannot be used, or closed twice,
    /// afterwards. Must not fail: there is nobody left to report to, so problems are
    /// logged by the implementation.
    async fn close(self: Box<Self>) {}

    /// Whether [`relay_turn`](Self::relay_turn) works on this connection: it is a websocket
    /// speaking Azure's own protocol. `false` by default (the mock, TTS over REST).
    fn speaks_wire(&self) -> bool {
        false
    }

    /// Relays one turn of Azure's websocket protocol verbatim, for a client that speaks the
    /// protocol itself (an official Speech SDK pointed at the service).
    ///
    /// Every message from `to_service` is sent to the service as is, in order; every
    /// message from the service is pushed into `to_client` (framing re-written, headers,
    /// ids and bodies unchanged), until and including the service's `turn.end`, after which
    /// this returns `Ok(())` and the connection can serve the next turn. The connection's own
    /// `speech.config` was sent by [`warm`](Self::warm); callers absorb the client's.
    ///
    /// The cancellation contract of [`Synthesizer::synthesize`] applies: a dropped
    /// `to_client` gives `Err(SpeechError::Cancelled)`, a dropped future or any error leaves
    /// [`is_ready`](Self::is_ready) `false`. A close from the service is returned classified
    /// ([`SpeechError::from_close_code`], or `ConnectionClosed` with no code for a drop), so
    /// the caller can close its client with the same code.
    async fn relay_turn(
        &mut self,
        to_service: mpsc::Receiver<WireMessage>,
        to_client: mpsc::Sender<WireMessage>,
    ) -> Result<(), SpeechError> {
        drop((to_service, to_client));
        Err(SpeechError::protocol(
            "this connection does not speak Azure's websocket protocol",
        ))
    }
}

/// One message of Azure's websocket protocol as framed on the wire: text is a header block,
/// a blank line and the body; binary is a big-endian `u16` header length, the header block
/// and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireMessage {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

/// A text-to-speech connection: one synthesis turn at a time.
///
/// Object-safe so the service can hold `Box<dyn Synthesizer>` from any backend; one turn at
/// a time is guaranteed by `&mut self`, matching Azure's rule that a websocket serves
/// requests sequentially.
#[async_trait]
pub trait Synthesizer: Connection {
    /// Synthesizes one request, pushing [`SynthesisEvent`]s into `events` as they arrive
    /// from the service, so that the caller can play the first chunk before the last one
    /// exists. Returns once the turn is complete (Azure's `turn.end`).
    ///
    /// Contract for implementations:
    /// - Validate with [`SynthesisRequest::validate`] before any I/O.
    /// - **Receiver dropped** (the caller is gone): stop as soon as a `send` fails and
    ///   return `Err(SpeechError::Cancelled)` (the `From<SendError>` conversion makes this
    ///   `events.send(e).await?`). Before returning, either leave the connection reusable
    ///   (e.g. drain the rest of the turn up to `turn.end`) or make
    ///   [`is_ready`](Connection::is_ready) return `false` so the pool discards it.
    /// - **Future dropped** mid-turn: the connection state is unknown, so `is_ready` must
    ///   return `false` afterwards (set an "in turn" flag on entry, clear it on exit).
    /// - Any other error: return it classified; if the connection is no longer usable,
    ///   `is_ready` must say so.
    async fn synthesize(
        &mut self,
        request: SynthesisRequest,
        events: mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError>;

    /// [`synthesize`](Self::synthesize) with a way to end the turn early (a caller that
    /// barged in): once `stop` fires, a backend whose protocol can stop a synthesis asks
    /// the service to stop, drops whatever audio is still on its way, and returns `Ok` at
    /// the service's end of turn, leaving the connection ready for the next turn.
    ///
    /// The default cannot stop anything and ignores `stop`: the turn runs to its end and
    /// the caller decides whether to read the rest (keeping the connection) or abandon it.
    /// That is the right default for a backend whose protocol has no stop, such as TTS over
    /// REST, where an HTTP response can only be read to its end or dropped.
    async fn synthesize_stoppable(
        &mut self,
        request: SynthesisRequest,
        events: mpsc::Sender<SynthesisEvent>,
        stop: StopSignal,
    ) -> Result<SynthesisSummary, SpeechError> {
        // No protocol stop: nothing to listen for.
        drop(stop);
        self.synthesize(request, events).await
    }

    /// Synthesizes text that is still being written (an LLM's tokens): `text` delivers the
    /// pieces in order and **closing it (dropping its sender) ends the text**. Audio and
    /// word boundaries go to `events` as in [`synthesize`](Self::synthesize); word
    /// boundaries' `text_offset` counts bytes into the concatenation of all pieces.
    ///
    /// `request` carries the voice, format, word-boundary choice and request id; its input
    /// must be empty text (the pieces are the input).
    ///
    /// A backend that can speak before the text is complete (Azure's v2 text-streaming
    /// websocket) overrides this. The default gathers every piece and then runs one
    /// ordinary [`synthesize`](Self::synthesize) turn, so every backend serves the
    /// streaming endpoint, only without the latency benefit.
    ///
    /// Cancellation: dropping the `events` receiver cancels the turn, even while no text
    /// arrives; the contract of [`synthesize`](Self::synthesize) then applies (return
    /// `Err(SpeechError::Cancelled)`, leave the connection reusable or not ready).
    async fn synthesize_text_stream(
        &mut self,
        request: SynthesisRequest,
        text: mpsc::Receiver<String>,
        events: mpsc::Sender<SynthesisEvent>,
    ) -> Result<SynthesisSummary, SpeechError> {
        let request = crate::text_stream::gather(request, text, &events).await?;
        self.synthesize(request, events).await
    }
}

/// A speech-to-text connection: several recognition turns, one at a time.
#[async_trait]
pub trait Recognizer: Connection {
    /// Runs one recognition turn.
    ///
    /// `audio` carries 16 kHz, 16-bit, mono little-endian PCM without a WAV header, in
    /// chunks of any size; **closing the channel (dropping its sender) ends the audio**.
    /// [`RecognitionEvent`]s are pushed into `events` as the service produces them, ending
    /// with [`RecognitionEvent::TurnEnd`], after which this returns `Ok(())` and the
    /// connection can serve the next turn.
    ///
    /// The cancellation contract of [`Synthesizer::synthesize`] applies: a dropped events
    /// receiver gives `Err(SpeechError::Cancelled)`, and a connection left in an unknown
    /// state must report `is_ready() == false`.
    async fn recognize(
        &mut self,
        request: RecognitionRequest,
        audio: mpsc::Receiver<Bytes>,
        events: mpsc::Sender<RecognitionEvent>,
    ) -> Result<(), SpeechError>;
}
