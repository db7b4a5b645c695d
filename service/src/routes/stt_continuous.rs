//! `GET /api/v1/stt?stream=continuous`: one recognition stream for a whole call, lossless
//! across connection changes.
//!
//! The client streams audio for as long as the call lasts and never ends a turn; phrases
//! arrive as the speech service segments them. Upstream, the stream is served by a chain
//! of pooled connections ("legs"), each running one long recognition turn:
//!
//! - **Planned switch** (make-before-break): Azure closes every websocket 10 minutes after
//!   it opened, without warning. When a leg's connection reaches
//!   `STT_CONTINUOUS_MAX_CONNECTION_AGE`, the stream takes a fresh pre-warmed connection
//!   and switches at the next pause between phrases (at the latest a twentieth of that
//!   age later).
//! - **Recovery**: a leg cut unexpectedly (close 1000/1011/4429, a drop without a close
//!   frame, a timeout) is replaced by a new one; consecutive failures are bounded by
//!   `STT_CONTINUOUS_RECOVERY_ATTEMPTS` and throttling backs off as the service asks.
//! - **Replay**: the stream keeps the audio that no final phrase has covered yet
//!   (bounded by `STT_CONTINUOUS_REPLAY_SECONDS`). A new leg starts with that audio, so
//!   nothing said is lost, and the old leg's results are ignored from the switch on: its
//!   later phrases all start after the last phrase the client got, in audio the new leg
//!   hears again. That is the de-duplication rule: every stretch of audio has exactly one
//!   leg whose phrases count.
//! - **Offsets**: each leg's offsets count from its own first byte; they are moved onto
//!   the client's time line (where that byte sits in the client's stream), so offsets are
//!   continuous from the start of the stream across every switch.
//!
//! Client protocol: `connected` as in turn mode, then `stream_start` (tier and acquire
//! time of the first connection) when the first audio arrives, then recognition events
//! (`speech_start_detected`, `hypothesis`, `phrase`, `speech_end_detected`); connection
//! changes are invisible. `{"type":"end"}` ends the audio: the last phrases follow, then
//! `turn_end` and a close (1000). A failure the stream cannot recover from arrives as
//! `error` and closes the socket with 1011.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use bytes::Bytes;
use pool_core::{Pooled, Tier};
use serde::Serialize;
use speech_core::{ErrorClass, RecognitionEvent, RecognizerManager, SpeechError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::stt::{StreamContext, is_end_message, send_error, send_json, violation};
use super::{acquire, no_connection_reason};
use crate::continuous::{ReplayBuffer, bytes_to_ticks, is_failure_status, rebase, ticks_to_bytes};
use crate::error::ApiError;
use crate::state::{AppState, STT_POOL};

/// Audio chunks queued for a leg's connection; small so backpressure reaches the client.
const LEG_AUDIO_BUFFER: usize = 16;
/// Events buffered from a leg.
const LEG_EVENTS_BUFFER: usize = 64;
/// Client chunks read ahead of the leg before the socket is no longer read.
const MAX_PENDING: usize = 64;
/// How long a retired leg may take to finish after its audio ended.
const RETIRE_LIMIT: Duration = Duration::from_secs(10);
/// First pause before retrying after a second consecutive failure (the first retry is
/// immediate: a cut connection says nothing about the next one); doubles each time.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Pause after throttling when the service names no `Retry-After` (Azure's guidance for
/// 429 without one is to back off for about a second and grow from there).
const THROTTLE_BASE: Duration = Duration::from_secs(1);
/// Longest pause between attempts.
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Pause before asking again for the next connection of a planned switch that could not
/// get one (the current connection still has time left).
const NEXT_RETRY: Duration = Duration::from_millis(500);
/// Old connections given up in a row while looking for a fresh one for a switch; after
/// that the next one is used whatever its age (the pool may only have old ones).
const MAX_STALE_NEXT: u32 = 3;

type Guard = Pooled<RecognizerManager>;
type Acquired = Result<(Guard, Duration), ApiError>;
type AcquireFuture = Pin<Box<dyn Future<Output = Acquired> + Send>>;

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage<'a> {
    StreamStart {
        tier: Tier,
        /// How long the first connection took to get, milliseconds.
        acquire_ms: f64,
        request_id: &'a str,
    },
}

/// One connection serving a stretch of the stream.
struct Leg {
    /// Where this leg's audio begins in the client's stream, bytes.
    base: u64,
    /// Where the audio sent to this leg ends in the client's stream, bytes.
    fed: u64,
    audio: Option<mpsc::Sender<Bytes>>,
    events: mpsc::Receiver<RecognitionEvent>,
    task: JoinHandle<(Guard, Result<(), SpeechError>)>,
    /// When to start moving to a fresh connection, and when to move at the latest.
    switch_at: Instant,
    force_at: Instant,
    /// The audio was ended on purpose (client end, audio idle, stop): a `turn_end` is the
    /// normal finish, not a cut.
    ending: bool,
    request_id: String,
}

/// Why a connection is being acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The stream has no leg and needs one (its first, or after a cut).
    Leg,
    /// The next leg of a planned switch, taken while the current one still runs.
    Next,
}

/// What woke the loop.
enum Step {
    Client(Option<Result<Message, axum::Error>>),
    Event(Option<RecognitionEvent>),
    Forwarded(u64),
    AudioClosed,
    Acquired(Acquired),
    SwitchDue,
    RetryDue,
    AudioIdle,
    IdleClose,
    Stop,
}

/// The stream's state between steps.
struct Stream<'a> {
    state: &'a AppState,
    context: &'a StreamContext,
    replay: ReplayBuffer,
    /// Stream offset (ticks) up to which final phrases were delivered.
    covered_ticks: u64,
    active: Option<Leg>,
    /// Audio for the active leg, not yet in its channel.
    pending: VecDeque<Bytes>,
    acquiring: Option<(Purpose, AcquireFuture)>,
    /// A connection taken for a planned switch, waiting for a pause between phrases.
    next: Option<Guard>,
    next_retry_at: Option<Instant>,
    retry_at: Option<Instant>,
    /// Inside a phrase (speech started, no final phrase yet): not a place to switch.
    in_speech: bool,
    failures: usize,
    /// Connections given up in a row for a switch because they were already old.
    stale_nexts: u32,
    last_error: Option<SpeechError>,
    client_done: bool,
    started: bool,
    legs: u64,
    switches: u64,
    recoveries: u64,
}

/// Runs a continuous stream until it ends; returns the close code and reason.
pub(super) async fn run(
    socket: &mut WebSocket,
    state: &AppState,
    context: &StreamContext,
    stop: &CancellationToken,
    client: &crate::limits::ClientId,
) -> (u16, String) {
    let limits = &state.options().limits;
    let (audio_idle, idle_close) = (limits.stt_audio_idle_timeout, limits.stt_idle_close_timeout);
    let settings = &state.options().stt_continuous;
    let mut s = Stream {
        state,
        context,
        replay: ReplayBuffer::new(settings.stt_continuous_replay),
        covered_ticks: 0,
        active: None,
        pending: VecDeque::new(),
        acquiring: None,
        next: None,
        next_retry_at: None,
        retry_at: None,
        in_speech: false,
        failures: 0,
        stale_nexts: 0,
        last_error: None,
        client_done: false,
        started: false,
        legs: 0,
        switches: 0,
        recoveries: 0,
    };
    let audio_idle_sleep = tokio::time::sleep(audio_idle);
    tokio::pin!(audio_idle_sleep);
    let idle_close_sleep = tokio::time::sleep(idle_close);
    tokio::pin!(idle_close_sleep);
    let mut stopped = false;
    let close = loop {
        if let Some(close) = s.finished() {
            break close;
        }
        s.maybe_switch();
        let has_leg = s.active.is_some();
        // A leg whose audio is ending neither switches nor idles: it only finishes. (Both
        // timers stay armed otherwise, so they must not be polled once past.)
        let live_leg = s.active.as_ref().is_some_and(|l| !l.ending) && !s.client_done;
        let switch_at = s.active.as_ref().filter(|_| live_leg).and_then(|l| {
            if s.next.is_some() {
                Some(l.force_at)
            } else if s.acquiring.is_none() {
                Some(s.next_retry_at.unwrap_or(l.switch_at).max(l.switch_at))
            } else {
                None
            }
        });
        let (events, audio) = match s.active.as_mut() {
            Some(l) => (Some(&mut l.events), l.audio.as_ref()),
            None => (None, None),
        };
        let step = tokio::select! {
            ev = recv_opt(events) => Step::Event(ev),
            permit = reserve_opt(audio), if !s.pending.is_empty() => match permit {
                Ok(permit) => {
                    let chunk = s.pending.pop_front().unwrap_or_default();
                    let len = chunk.len() as u64;
                    permit.send(chunk);
                    Step::Forwarded(len)
                }
                // The leg's turn is over; its events channel reports how.
                Err(_) => Step::AudioClosed,
            },
            acquired = acquire_opt(&mut s.acquiring) => Step::Acquired(acquired),
            msg = socket.recv(), if !s.client_done && s.pending.len() < MAX_PENDING => Step::Client(msg),
            () = sleep_opt(switch_at) => Step::SwitchDue,
            () = sleep_opt(s.retry_at), if s.acquiring.is_none() && !has_leg => Step::RetryDue,
            () = &mut audio_idle_sleep, if live_leg => Step::AudioIdle,
            () = &mut idle_close_sleep, if !has_leg && !s.client_done => Step::IdleClose,
            () = stop.cancelled(), if !stopped => Step::Stop,
        };
        match step {
            Step::Client(msg) => {
                idle_close_sleep.as_mut().reset(Instant::now() + idle_close);
                match msg {
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                        audio_idle_sleep.as_mut().reset(Instant::now() + audio_idle);
                        s.audio(b);
                    }
                    Some(Ok(Message::Text(t))) if is_end_message(&t) => s.end_audio(),
                    Some(Ok(Message::Text(_))) => {
                        let e = ApiError::bad_request(
                            "text messages other than {\"type\":\"end\"} are not understood; send audio as binary frames",
                        );
                        send_error(socket, &e).await;
                    }
                    Some(Err(e)) => {
                        s.shutdown();
                        return violation(&e).unwrap_or((1000, "done".to_owned()));
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        s.shutdown();
                        return (1000, "done".to_owned());
                    }
                    Some(Ok(_)) => {}
                }
            }
            Step::Event(Some(ev)) => {
                if let Some(ev) = s.event(ev)
                    && send_json(socket, &ev).await.is_err()
                {
                    s.shutdown();
                    return (1000, "done".to_owned());
                }
            }
            Step::Event(None) => {
                if let Some(e) = s.leg_finished().await {
                    send_error(socket, &e).await;
                    s.shutdown();
                    return (1011, "speech service failed".to_owned());
                }
            }
            Step::Forwarded(len) => {
                let drained = s.pending.is_empty();
                if let Some(leg) = &mut s.active {
                    leg.fed += len;
                    if leg.ending && drained {
                        leg.audio = None;
                    }
                }
            }
            Step::AudioClosed => {
                if let Some(leg) = &mut s.active {
                    leg.audio = None;
                }
                s.pending.clear();
            }
            Step::Acquired(acquired) => match s.acquired(acquired) {
                Ok(Some(start)) => {
                    let msg = ServerMessage::StreamStart {
                        tier: start.0,
                        acquire_ms: start.1.as_secs_f64() * 1000.0,
                        request_id: &start.2,
                    };
                    if send_json(socket, &msg).await.is_err() {
                        s.shutdown();
                        return (1000, "done".to_owned());
                    }
                    if let Some(id) = &context.session {
                        state.session_cap().record(client, id);
                    }
                }
                Ok(None) => {}
                Err((e, close)) => {
                    send_error(socket, &e).await;
                    s.shutdown();
                    return close;
                }
            },
            Step::SwitchDue => s.switch_due(),
            Step::RetryDue => {
                s.retry_at = None;
                s.start_acquire(Purpose::Leg);
            }
            Step::AudioIdle => {
                // The client stopped sending audio: finish what was said and give the
                // connection back (Azure would close it after 180 s without audio anyway).
                // The next audio takes a connection again.
                s.end_active_audio();
            }
            Step::IdleClose => {
                s.shutdown();
                return (
                    1001,
                    format!("closed after {idle_close:?} without audio (STT_IDLE_CLOSE_TIMEOUT)"),
                );
            }
            Step::Stop => {
                stopped = true;
                s.end_audio();
            }
        }
    };
    if close.0 == 1000 {
        let _ = send_json(socket, &RecognitionEvent::TurnEnd).await;
    }
    tracing::debug!(
        legs = s.legs,
        switches = s.switches,
        recoveries = s.recoveries,
        overflowed = s.replay.overflowed(),
        "continuous stream ended"
    );
    if stopped {
        return if state.is_draining() {
            (1001, "server shutting down".to_owned())
        } else {
            (1000, "session ended".to_owned())
        };
    }
    close
}

impl Stream<'_> {
    /// The close, once the client ended its audio and every word of it was delivered.
    fn finished(&self) -> Option<(u16, String)> {
        let done = self.client_done
            && self.active.is_none()
            && self.acquiring.is_none()
            && self.retry_at.is_none()
            && self.uncovered() == 0;
        done.then(|| (1000, "done".to_owned()))
    }

    /// Bytes received that no leg has finished hearing.
    fn uncovered(&self) -> u64 {
        self.replay.end() - self.replay.start()
    }

    fn audio(&mut self, chunk: Bytes) {
        self.replay.push(chunk.clone());
        match &self.active {
            Some(leg) if !leg.ending => self.pending.push_back(chunk),
            // A leg that is ending (audio idle) does not take more audio; the next leg
            // starts from the replay buffer, which holds this chunk.
            Some(_) => {}
            None => {
                if self.acquiring.is_none() && self.retry_at.is_none() {
                    self.start_acquire(Purpose::Leg);
                }
            }
        }
    }

    /// The client ended its audio (or the stream is stopped): finish with what was said.
    fn end_audio(&mut self) {
        self.client_done = true;
        self.next = None;
        if matches!(self.acquiring, Some((Purpose::Next, _))) {
            self.acquiring = None;
        }
        self.end_active_audio();
    }

    /// Ends the active leg's audio once what is pending has been sent.
    fn end_active_audio(&mut self) {
        if let Some(leg) = &mut self.active {
            leg.ending = true;
            if self.pending.is_empty() {
                leg.audio = None;
            }
        }
    }

    fn start_acquire(&mut self, purpose: Purpose) {
        let state = self.state.clone();
        // Only the first leg may use the session's own connection: during a switch two
        // legs run at once, and a session's connection serves one user at a time.
        let session = (!self.started)
            .then(|| self.context.session.clone())
            .flatten();
        let future: AcquireFuture =
            Box::pin(async move { acquire(&state, &state.pools().stt, session.as_deref()).await });
        self.acquiring = Some((purpose, future));
    }

    /// A connection arrived. `Ok(Some(..))` for the stream's first leg (announce it);
    /// `Err` when the stream cannot go on.
    #[allow(clippy::type_complexity)]
    fn acquired(
        &mut self,
        acquired: Acquired,
    ) -> Result<Option<(Tier, Duration, String)>, (ApiError, (u16, String))> {
        let Some((purpose, _)) = self.acquiring.take() else {
            return Ok(None);
        };
        match (purpose, acquired) {
            (Purpose::Next, Ok((guard, _))) => {
                let plan = self.plan();
                if guard.age().is_some_and(|a| a >= plan / 2) && self.stale_nexts < MAX_STALE_NEXT {
                    // Past half its life already: it would need replacing again soon.
                    // Give it up for a younger one (the pool creates one if it has none).
                    self.stale_nexts += 1;
                    guard.discard();
                    self.start_acquire(Purpose::Next);
                    return Ok(None);
                }
                self.stale_nexts = 0;
                self.next = Some(guard);
                self.maybe_switch();
                Ok(None)
            }
            (Purpose::Next, Err(e)) => {
                // The current leg still has time: ask again shortly; if no connection
                // comes before Azure cuts the current one, recovery takes over.
                tracing::warn!(pool = STT_POOL, error = %e.message, "no connection for a planned switch yet");
                self.next_retry_at = Some(Instant::now() + NEXT_RETRY);
                Ok(None)
            }
            (Purpose::Leg, Ok((guard, waited))) => {
                let first = !self.started;
                self.started = true;
                let tier = guard.tier();
                let request_id = self.start_leg(guard);
                Ok(first.then_some((tier, waited, request_id)))
            }
            (Purpose::Leg, Err(e)) => {
                if !self.started {
                    let reason = no_connection_reason(&e);
                    return Err((e, (1013, reason)));
                }
                tracing::warn!(pool = STT_POOL, error = %e.message, "no connection to resume the stream");
                self.failures += 1;
                if self.failures > self.attempts() {
                    return Err((e, (1011, "speech service failed".to_owned())));
                }
                self.retry_at = Some(Instant::now() + self.backoff(None));
                Ok(None)
            }
        }
    }

    /// The connection age at which a leg is replaced.
    fn plan(&self) -> Duration {
        self.state
            .options()
            .stt_continuous
            .stt_continuous_max_connection_age
    }

    fn attempts(&self) -> usize {
        self.state
            .options()
            .stt_continuous
            .stt_continuous_recovery_attempts
    }

    /// Starts a leg on `guard` with the audio no phrase has covered; returns its request id.
    fn start_leg(&mut self, guard: Guard) -> String {
        let settings = &self.state.options().stt_continuous;
        let plan = settings.stt_continuous_max_connection_age;
        let now = Instant::now();
        // The connection may have waited in the pool for a while: plan from its real age
        // when the backend knows it.
        let left = plan.saturating_sub(guard.age().unwrap_or_default());
        let switch_at = now + left;
        let force_at = switch_at + plan / 20;
        let (audio_tx, audio_rx) = mpsc::channel(LEG_AUDIO_BUFFER);
        let (events_tx, events_rx) = mpsc::channel(LEG_EVENTS_BUFFER);
        let request = self.context.request();
        let request_id = request.request_id.as_str().to_owned();
        self.legs += 1;
        let span = tracing::info_span!(
            "stt_leg",
            request_id = %request_id,
            session = self.context.session.as_deref(),
            pool = STT_POOL,
            tier = %guard.tier(),
            leg = self.legs,
        );
        let mut guard = guard;
        let task = self.state.tasks().spawn(
            async move {
                let result = guard.recognize(request, audio_rx, events_tx).await;
                (guard, result)
            }
            .instrument(span),
        );
        // Everything not covered by a final phrase is heard again by the new leg.
        self.pending = self.replay.chunks().collect();
        self.in_speech = false;
        let ending = self.client_done;
        let mut leg = Leg {
            base: self.replay.start(),
            fed: self.replay.start(),
            audio: Some(audio_tx),
            events: events_rx,
            task,
            switch_at,
            force_at,
            ending,
            request_id: request_id.clone(),
        };
        if ending && self.pending.is_empty() {
            leg.audio = None;
        }
        self.active = Some(leg);
        request_id
    }

    /// An event of the active leg: rebased, and `Some` when the client should see it.
    fn event(&mut self, ev: RecognitionEvent) -> Option<RecognitionEvent> {
        let base = bytes_to_ticks(self.active.as_ref()?.base);
        let ev = rebase(ev, base);
        match &ev {
            RecognitionEvent::Phrase {
                offset,
                duration,
                status,
                ..
            } => {
                if is_failure_status(status) {
                    // The leg ends with this error next; recovery decides what to do.
                    return None;
                }
                if *offset < self.covered_ticks {
                    // Audio already covered by a delivered phrase (cannot happen with one
                    // leg per stretch of audio; kept as the last line against duplicates).
                    return None;
                }
                self.in_speech = false;
                self.failures = 0;
                self.covered_ticks = offset + duration;
                self.replay.trim_to(ticks_to_bytes(self.covered_ticks));
                self.maybe_switch();
            }
            RecognitionEvent::SpeechStartDetected { .. } | RecognitionEvent::Hypothesis { .. } => {
                self.in_speech = true;
            }
            RecognitionEvent::SpeechEndDetected { .. } => {}
            // The stream's own `turn_end` is sent once, when the client's audio is done.
            RecognitionEvent::TurnEnd => return None,
        }
        Some(ev)
    }

    /// The active leg's events ended: its turn is over. Returns an error the stream cannot
    /// recover from.
    async fn leg_finished(&mut self) -> Option<ApiError> {
        let leg = self.active.take()?;
        let (guard, result) = match leg.task.await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "a recognition leg panicked");
                self.recover(SpeechError::transient("recognition task failed"));
                return self.fatal();
            }
        };
        let plan = self
            .state
            .options()
            .stt_continuous
            .stt_continuous_max_connection_age;
        match result {
            Ok(()) if leg.ending && leg.audio.is_none() => {
                // A clean finish: every byte the leg got was heard.
                self.replay.trim_to(leg.fed);
                self.covered_ticks = self.covered_ticks.max(bytes_to_ticks(leg.fed));
                self.failures = 0;
                if guard.age().is_some_and(|a| a >= plan) {
                    guard.discard();
                } else {
                    drop(guard);
                }
                self.pending.clear();
                self.in_speech = false;
                if self.uncovered() > 0 && self.acquiring.is_none() {
                    // Audio arrived while the leg was ending (after an audio-idle end):
                    // it needs a leg of its own.
                    self.start_acquire(Purpose::Leg);
                }
                None
            }
            Ok(()) => {
                // The service ended the turn though the audio goes on (e.g. a mode that
                // stops at the first phrase): carry on with a fresh leg.
                drop(guard);
                self.recover(SpeechError::connection_closed(
                    None,
                    "the speech service ended the recognition turn",
                ));
                self.fatal()
            }
            Err(e) => {
                guard.discard();
                self.state
                    .metrics()
                    .record_upstream_error(STT_POOL, e.class());
                tracing::warn!(
                    pool = STT_POOL,
                    request_id = %leg.request_id,
                    class = %e.class(),
                    error = %e,
                    "recognition leg cut; resuming on a fresh connection with the audio not yet covered"
                );
                self.recover(e);
                self.fatal()
            }
        }
    }

    /// Plans the next leg after a failure.
    fn recover(&mut self, e: SpeechError) {
        self.recoveries += 1;
        self.failures += 1;
        self.in_speech = false;
        self.pending.clear();
        let fatal = matches!(
            e.class(),
            ErrorClass::Auth | ErrorClass::BadRequest | ErrorClass::Protocol
        );
        let delay = self.backoff(Some(&e));
        self.last_error = Some(e);
        if fatal || self.failures > self.attempts() {
            return;
        }
        if let Some(next) = self.next.take() {
            // A connection was waiting for a planned switch: use it right away.
            self.start_leg(next);
        } else if delay.is_zero() {
            self.start_acquire(Purpose::Leg);
        } else {
            self.retry_at = Some(Instant::now() + delay);
        }
    }

    /// The error to report when recovery has given up.
    fn fatal(&self) -> Option<ApiError> {
        let e = self.last_error.as_ref()?;
        let fatal = matches!(
            e.class(),
            ErrorClass::Auth | ErrorClass::BadRequest | ErrorClass::Protocol
        );
        (fatal || self.failures > self.attempts()).then(|| ApiError::from_speech(e))
    }

    /// The pause before the next attempt.
    fn backoff(&self, e: Option<&SpeechError>) -> Duration {
        let n = u32::try_from(self.failures.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(8);
        match e {
            Some(e) if e.class() == ErrorClass::Throttled => e
                .retry_after()
                .unwrap_or(THROTTLE_BASE * 2u32.pow(n))
                .min(RETRY_MAX),
            _ if n == 0 => Duration::ZERO,
            _ => (RETRY_BASE * 2u32.pow(n - 1)).min(RETRY_MAX),
        }
    }

    /// The active leg reached the age at which it is to be replaced (or its latest
    /// switch time).
    fn switch_due(&mut self) {
        if self.client_done {
            return;
        }
        if self.next.is_none() {
            self.next_retry_at = None;
            if self.acquiring.is_none() {
                self.start_acquire(Purpose::Next);
            }
            return;
        }
        self.maybe_switch();
        if self.next.is_some() {
            // Past the latest switch time: switch even mid-phrase (the new leg hears the
            // phrase again from its start).
            self.switch();
        }
    }

    /// Switches when a fresh connection is waiting and the stream is between phrases.
    fn maybe_switch(&mut self) {
        if self.next.is_some() && !self.in_speech && self.active.is_some() && !self.client_done {
            self.switch();
        }
    }

    /// Make-before-break: the fresh connection takes over from the end of the last
    /// delivered phrase; the old one's audio ends and its results are no longer used.
    fn switch(&mut self) {
        let Some(next) = self.next.take() else {
            return;
        };
        if let Some(old) = self.active.take() {
            retire(self.state, old);
        }
        self.switches += 1;
        self.start_leg(next);
    }

    /// The client is gone: stop every leg without waiting for it.
    fn shutdown(&mut self) {
        self.acquiring = None;
        self.next = None;
        if let Some(leg) = self.active.take() {
            retire(self.state, leg);
        }
    }
}

/// Ends a leg whose results no longer count: its audio ends, its events are drained in
/// the background, and its connection is given back (or discarded when it failed or is
/// near its age limit). A failure is still counted as an upstream error.
fn retire(state: &AppState, leg: Leg) {
    let Leg {
        audio,
        mut events,
        task,
        ..
    } = leg;
    drop(audio);
    let plan = state
        .options()
        .stt_continuous
        .stt_continuous_max_connection_age;
    let owner = state.clone();
    state.tasks().spawn(async move {
        let finish = async {
            while events.recv().await.is_some() {}
            task.await
        };
        match tokio::time::timeout(RETIRE_LIMIT, finish).await {
            Ok(Ok((guard, Ok(())))) if guard.age().is_none_or(|a| a < plan) => drop(guard),
            Ok(Ok((guard, Ok(())))) => guard.discard(),
            Ok(Ok((guard, Err(e)))) => {
                // The fault reached a leg the stream had already left (a throttling close
                // that raced a planned switch): the client lost nothing, but the operator
                // must still see that the speech service refused or cut a connection.
                guard.discard();
                owner.metrics().record_upstream_error(STT_POOL, e.class());
                tracing::warn!(
                    pool = STT_POOL,
                    class = %e.class(),
                    error = %e,
                    "a retired recognition leg ended with an error"
                );
            }
            // Timed out or panicked: the turn is abandoned mid-way, which makes the
            // connection report not ready, so the pool discards it when it comes back.
            _ => {}
        }
    });
}

async fn recv_opt(rx: Option<&mut mpsc::Receiver<RecognitionEvent>>) -> Option<RecognitionEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn reserve_opt(
    tx: Option<&mpsc::Sender<Bytes>>,
) -> Result<mpsc::Permit<'_, Bytes>, mpsc::error::SendError<()>> {
    match tx {
        Some(tx) => tx.reserve().await,
        None => std::future::pending().await,
    }
}

async fn acquire_opt(acquiring: &mut Option<(Purpose, AcquireFuture)>) -> Acquired {
    match acquiring {
        Some((_, future)) => future.await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
