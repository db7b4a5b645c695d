//! Websocket upgrade and the session driver shared by the TTS and STT protocols.
//!
//! The driver owns the socket and runs one `select!` loop over: shutdown, commands from the
//! handle, the age and idle timers, the next scheduled outgoing message, and the next client
//! message. Protocols ([`Protocol`]) only turn client messages into scheduled outgoing
//! messages ([`Outbox`]), so timing (simulated RTT, injected delays), turn interleaving and
//! fault actions all go through one ordered queue, and a client's `synthesis.control` or
//! close is read even while audio is streaming.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::auth;
use super::capture::ConnNo;
use super::counters::GaugeGuard;
use super::faults::{Endpoint, Fault, Phase};
use super::frame::{self, BinaryMessage, TextMessage};
use super::http::{self as h, Body};
use super::server::{ConnInfo, Run, SessionCmd, lock};
use super::{stt, tts};

/// The websocket as the sessions see it.
pub(crate) type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// The STT recognition mode, fixed by the URL path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SttMode {
    /// Single utterance: the turn ends after one phrase.
    Interactive,
    /// Continuous.
    Conversation,
    /// Continuous, with dictation post-processing (same behaviour here).
    Dictation,
    /// `/stt/speech/universal/v2`: continuous; the language may travel in `speech.context`.
    Universal,
}

impl SttMode {
    /// Whether phrases continue until the end of audio.
    pub(crate) fn continuous(self) -> bool {
        self != Self::Interactive
    }
}

/// The STT mode for a (lowercased) path, in both the regional and the `/stt/…` form.
pub(crate) fn stt_path_mode(path: &str) -> Option<SttMode> {
    let p = path.strip_prefix("/stt").unwrap_or(path);
    match p {
        "/speech/recognition/interactive/cognitiveservices/v1" => Some(SttMode::Interactive),
        "/speech/recognition/conversation/cognitiveservices/v1" => Some(SttMode::Conversation),
        "/speech/recognition/dictation/cognitiveservices/v1" => Some(SttMode::Dictation),
        "/speech/universal/v2" => Some(SttMode::Universal),
        _ => None,
    }
}

/// The largest client message accepted. SSML is capped at 64 KiB by the protocol (checked
/// separately, to answer with the right close code); audio chunks are a few KiB.
const MAX_MESSAGE: usize = 1 << 20;

/// Answers a websocket upgrade: checks, faults, auth, then `101` and a session task.
pub(crate) async fn upgrade(
    run: Arc<Run>,
    info: ConnInfo,
    mut req: Request<Incoming>,
    endpoint: Endpoint,
    mode: Option<SttMode>,
) -> Response<Body> {
    let shared = Arc::clone(&run.shared);
    tracing::trace!(uri = %req.uri(), headers = ?req.headers(), "websocket upgrade request");
    let reject = |resp: Response<Body>| {
        shared.counters.inc(&shared.counters.handshakes_rejected);
        resp
    };
    let ws_key = h::header(&req, "sec-websocket-key").map(str::to_owned);
    let version_ok = h::header(&req, "sec-websocket-version").is_some_and(|v| v.trim() == "13");
    let connection_ok =
        h::header(&req, "connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    // RFC 6455 upgrades exist only in HTTP/1.1 (the SDKs never use RFC 8441 over h2).
    let http11 = req.version() == http::Version::HTTP_11;
    let Some(ws_key) =
        ws_key.filter(|_| http11 && h::is_upgrade(&req) && version_ok && connection_ok)
    else {
        return reject(h::text(
            StatusCode::BAD_REQUEST,
            "websocket upgrade required",
        ));
    };

    let query = h::query_pairs(req.uri().query());
    let presented = auth::presented(|n| h::header(&req, n), &query);
    let checked = auth::check(presented.as_ref(), shared.config.key.as_deref());
    let identity = checked.as_ref().ok().cloned();

    // One simulated round trip for the upgrade itself, plus injected slowness.
    let mut delay = shared.config.rtt;
    let mut injected = None;
    for f in shared.take_faults(Phase::Handshake, Some(endpoint), identity.as_deref()) {
        match f {
            Fault::HandshakeDelay { ms } => delay = delay.saturating_add(Duration::from_millis(ms)),
            Fault::Handshake {
                status,
                retry_after,
            } => {
                injected.get_or_insert((status, retry_after));
            }
            _ => {}
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some((status, retry_after)) = injected {
        let mut r = h::error(h::status(status), "injected fault", retry_after);
        if (300..400).contains(&status) {
            // A redirect back to the same resource, marked so a test can see it was followed.
            let uri = req.uri();
            let sep = if uri.query().is_some() { "&" } else { "?" };
            let location = format!("{uri}{sep}emulatorRedirected=1");
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(LOCATION, v);
            }
        }
        return reject(r);
    }
    let identity = match checked {
        Ok(id) => id,
        Err(e) => {
            tracing::debug!(?endpoint, reason = e.reason(), "handshake refused");
            return reject(h::error(StatusCode::UNAUTHORIZED, e.reason(), None));
        }
    };
    let connection_id = h::header(&req, "x-connectionid")
        .or_else(|| h::query_get(&query, "X-ConnectionId"))
        .unwrap_or_default()
        .to_owned();
    if shared.config.strict && connection_id.is_empty() {
        return reject(h::error(
            StatusCode::BAD_REQUEST,
            "missing X-ConnectionId",
            None,
        ));
    }
    if let Some(mode) = mode {
        let language = h::query_get(&query, "language").unwrap_or_default();
        if mode != SttMode::Universal
            && language.is_empty()
            && h::query_get(&query, "cid").is_none()
        {
            return reject(h::error(
                StatusCode::BAD_REQUEST,
                "WebSocket upgrade failed: Bad request (400). Please verify the provided \
                 subscription details and language information.",
                None,
            ));
        }
    }
    let slot = match KeySlot::acquire(&run, &identity) {
        Some(s) => s,
        None => {
            return reject(h::error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many concurrent connections for this key",
                None,
            ));
        }
    };

    // Accept. Echo the first offered subprotocol (the native SDK offers `USP`; Chrome-style
    // clients fail a handshake that ignores the one they asked for).
    let protocol = h::header(&req, "sec-websocket-protocol")
        .and_then(|p| p.split(',').next())
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty());
    let max_age = h::query_get(&query, "maxConnectionDurationSecs")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(shared.config.max_connection_age, |s| {
            shared.config.max_connection_age.min(Duration::from_secs(s))
        });
    let conn_no = shared.capture.request("upgrade", &req);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let id = run
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, cmds) = mpsc::channel(4);
    lock(&run.sessions).insert(id, (endpoint, tx));
    let registration = Registration {
        run: Arc::clone(&run),
        id,
    };
    shared.counters.inc(&shared.counters.connections_opened);
    let gauges = (
        GaugeGuard::new(Arc::clone(&shared), |c| &c.connections_open),
        GaugeGuard::new(
            Arc::clone(&shared),
            match endpoint {
                Endpoint::SttWs => |c| &c.stt_connections_open,
                _ => |c| &c.tts_connections_open,
            },
        ),
    );
    let params = SessionParams {
        query,
        mode,
        identity,
        connection_id,
    };
    let run2 = Arc::clone(&run);
    let rst = Arc::clone(&info.rst_on_drop);
    run.tracker.spawn(async move {
        // Released in this order: the key slot first, the gauges last, so a test that sees
        // `connections_open` drop can immediately use the freed slot.
        let _held = (slot, registration, gauges);
        tracing::debug!(id, ?endpoint, connection_id = %params.connection_id, "websocket accepted");
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let driver = Driver {
            opened: Instant::now(),
            max_age,
            run: Arc::clone(&run2),
            ws,
            cmds,
            rst,
            outbox: Outbox::default(),
            conn_no,
        };
        match endpoint {
            Endpoint::SttWs => driver.run(stt::SttSession::new(run2, params)).await,
            _ => driver.run(tts::TtsSession::new(run2, params)).await,
        }
    });

    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hd = r.headers_mut();
    hd.insert("upgrade", HeaderValue::from_static("websocket"));
    hd.insert("connection", HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(ws_key.as_bytes())) {
        hd.insert("sec-websocket-accept", v);
    }
    if let Some(v) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        hd.insert("sec-websocket-protocol", v);
    }
    r
}

/// What a session knows about its handshake.
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    /// The decoded query.
    pub(crate) query: Vec<(String, String)>,
    /// The STT mode (`None` for TTS).
    pub(crate) mode: Option<SttMode>,
    /// The authenticated identity (key or token subscription).
    pub(crate) identity: String,
    /// The client's `X-ConnectionId` (may be empty in lenient mode).
    pub(crate) connection_id: String,
}

/// Removes a session from the run's registry when it ends.
struct Registration {
    run: Arc<Run>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.run.sessions).remove(&self.id);
    }
}

/// One of a key's concurrent-connection slots, released on drop.
struct KeySlot {
    run: Arc<Run>,
    identity: String,
}

impl KeySlot {
    /// `None` when the key is at its limit; `Some(None)` when there is no limit.
    fn acquire(run: &Arc<Run>, identity: &str) -> Option<Option<Self>> {
        let Some(max) = run.shared.config.max_connections_per_key else {
            return Some(None);
        };
        let mut per_key = lock(&run.per_key);
        let n = per_key.entry(identity.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Some(Self {
            run: Arc::clone(run),
            identity: identity.to_owned(),
        }))
    }
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        let mut per_key = lock(&self.run.per_key);
        if let Some(n) = per_key.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_key.remove(&self.identity);
            }
        }
    }
}

/// Something the session will send (or do) at a scheduled time.
#[derive(Debug)]
pub(crate) enum Out {
    /// A text message.
    Text(String),
    /// A text message that completes a turn (`turn.end`): counted as a served turn.
    TurnEnd(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// Close the socket with a code and reason.
    Close(u16, String),
    /// Drop the connection without a close frame.
    Disconnect {
        /// Reset rather than FIN.
        rst: bool,
    },
}

/// Outgoing messages in send order, each with the earliest time it may go. Times never
/// decrease along the queue, so a delay on one message delays everything after it, as on a
/// real connection.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    q: VecDeque<(Instant, Out)>,
    tail: Option<Instant>,
}

impl Outbox {
    /// Queues `out` to go at `at` (or after the previous message, if later).
    pub(crate) fn push_at(&mut self, at: Instant, out: Out) {
        let at = self.tail.map_or(at, |t| t.max(at));
        self.tail = Some(at);
        self.q.push_back((at, out));
    }

    /// Queues `out` to go as soon as everything before it has gone.
    pub(crate) fn push(&mut self, out: Out) {
        self.push_at(Instant::now(), out);
    }

    /// Whether nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    /// Drops everything queued (a discarded turn).
    pub(crate) fn clear(&mut self) {
        self.q.clear();
    }

    fn next_at(&self) -> Option<Instant> {
        self.q.front().map(|(t, _)| *t)
    }

    fn pop(&mut self) -> Option<Out> {
        self.q.pop_front().map(|(_, o)| o)
    }
}

/// How a session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Close with a code and reason.
    Close(u16, String),
    /// Drop without a close frame.
    Disconnect {
        /// Reset rather than FIN.
        rst: bool,
    },
    /// The client went away.
    Gone,
}

/// One websocket protocol (TTS or STT) driven by [`Driver`].
pub(crate) trait Protocol {
    /// A text message arrived.
    fn on_text(&mut self, out: &mut Outbox, msg: TextMessage) -> Result<(), Stop>;
    /// A binary message arrived.
    fn on_binary(&mut self, out: &mut Outbox, msg: BinaryMessage) -> Result<(), Stop>;
    /// Whether [`refill`](Self::refill) has something to add when the outbox runs dry.
    fn wants_refill(&self) -> bool {
        false
    }
    /// Adds the next generated messages (TTS audio is produced lazily, a frame at a time).
    fn refill(&mut self, _out: &mut Outbox) {}
    /// Whether a turn is progressing (the idle timer does not run then).
    fn busy(&self) -> bool {
        false
    }
}

struct Driver {
    opened: Instant,
    max_age: Duration,
    run: Arc<Run>,
    ws: Ws,
    cmds: mpsc::Receiver<SessionCmd>,
    rst: Arc<AtomicBool>,
    outbox: Outbox,
    /// This connection's number in the capture.
    conn_no: ConnNo,
}

impl Driver {
    async fn run<P: Protocol>(mut self, mut proto: P) {
        let cancel = self.run.cancel.clone();
        let idle = self.run.shared.config.idle_timeout;
        let age_at = later(self.opened, self.max_age);
        let mut last_message = Instant::now();
        let mut cmds_open = true;
        let stop = loop {
            // A refill may only advance the protocol's state without queueing anything
            // (e.g. audio finished → tail); a few rounds always produce a message.
            for _ in 0..8 {
                if !self.outbox.is_empty() || !proto.wants_refill() {
                    break;
                }
                proto.refill(&mut self.outbox);
            }
            let next_at = self.outbox.next_at();
            let idle_at = (!proto.busy() && next_at.is_none()).then(|| later(last_message, idle));
            let step = tokio::select! {
                () = cancel.cancelled() => Err(Stop::Close(1001, "service shutting down".into())),
                cmd = self.cmds.recv(), if cmds_open => match cmd {
                    Some(SessionCmd::Disconnect { rst }) => Err(Stop::Disconnect { rst }),
                    Some(SessionCmd::Close { code, reason }) => Err(Stop::Close(code, reason)),
                    None => {
                        cmds_open = false;
                        Ok(())
                    }
                },
                () = tokio::time::sleep_until(age_at) => {
                    Err(Stop::Close(1000, "Maximum connection duration reached".into()))
                }
                () = tokio::time::sleep_until(idle_at.unwrap_or(age_at)), if idle_at.is_some() => {
                    Err(Stop::Close(1000, "Idle timeout".into()))
                }
                () = tokio::time::sleep_until(next_at.unwrap_or(age_at)), if next_at.is_some() => {
                    self.send_next().await
                }
                msg = self.ws.next() => match msg {
                    None => Err(Stop::Gone),
                    // Answer what can still be answered with the RFC 6455 code; anything
                    // else (I/O, reset) means the client is gone.
                    Some(Err(WsError::Capacity(e))) => Err(Stop::Close(1009, e.to_string())),
                    Some(Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                        Err(Stop::Gone)
                    }
                    Some(Err(WsError::Protocol(e))) => Err(Stop::Close(1002, e.to_string())),
                    Some(Err(WsError::Utf8(_))) => Err(Stop::Close(1007, "invalid UTF-8".into())),
                    Some(Err(_)) => Err(Stop::Gone),
                    Some(Ok(Message::Text(t))) => {
                        last_message = Instant::now();
                        let msg = frame::parse_text(t.as_str());
                        self.run.shared.capture.text(self.conn_no, &msg);
                        tracing::trace!(headers = ?msg.headers, body = %msg.body, "text message");
                        proto.on_text(&mut self.outbox, msg)
                    }
                    Some(Ok(Message::Binary(b))) => {
                        last_message = Instant::now();
                        match frame::parse_binary(&b) {
                            Ok(m) => {
                                self.run.shared.capture.binary(self.conn_no, &m);
                                tracing::trace!(headers = ?m.headers, len = m.payload.len(), "binary message");
                                proto.on_binary(&mut self.outbox, m)
                            }
                            Err(e) => Err(Stop::Close(1007, format!("Invalid binary message: {e}"))),
                        }
                    }
                    // A client close: tungstenite queues the reply and ends the stream on the
                    // next read. Pings are answered by tungstenite; they are not activity.
                    Some(Ok(Message::Close(f))) => {
                        self.run.shared.capture.close(self.conn_no, f.map(|f| u16::from(f.code)));
                        Ok(())
                    }
                    Some(Ok(_)) => Ok(()),
                },
            };
            if let Err(stop) = step {
                break stop;
            }
        };
        self.finish(stop).await;
    }

    async fn send_next(&mut self) -> Result<(), Stop> {
        let item = self.outbox.pop();
        if tracing::enabled!(tracing::Level::TRACE) {
            match &item {
                Some(Out::Binary(b)) => tracing::trace!(len = b.len(), "sending binary"),
                other => tracing::trace!(item = ?other, "sending"),
            }
        }
        let msg = match item {
            None => return Ok(()),
            Some(Out::Close(code, reason)) => return Err(Stop::Close(code, reason)),
            Some(Out::Disconnect { rst }) => return Err(Stop::Disconnect { rst }),
            Some(Out::Text(t)) => Message::text(t),
            Some(Out::TurnEnd(t)) => {
                let c = &self.run.shared.counters;
                c.inc(&c.turns_served);
                Message::text(t)
            }
            Some(Out::Binary(b)) => Message::binary(b),
        };
        self.ws.send(msg).await.map_err(|_| Stop::Gone)
    }

    async fn finish(mut self, stop: Stop) {
        match stop {
            Stop::Gone => {}
            Stop::Disconnect { rst } => {
                // Dropping the socket without a close frame: the client sees 1006.
                self.rst.store(rst, Ordering::SeqCst);
            }
            Stop::Close(code, reason) => {
                let reason = truncate(&reason, 120);
                let frame = CloseFrame {
                    code: code.into(),
                    reason: reason.into(),
                };
                // Bounded: a client that never reads must not keep the task (or shutdown)
                // waiting.
                let close = async {
                    if self.ws.close(Some(frame)).await.is_ok() {
                        while let Some(Ok(_)) = self.ws.next().await {}
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), close).await;
            }
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary (close reasons are limited to
/// 123 bytes by RFC 6455).
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// `at + d`, or a year from `at` when that overflows (configured timers and injected delays
/// come from users and may be absurdly large; `Instant` arithmetic would panic).
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 86_400))
}

/// A fresh 32-hex uppercase id, as the service writes stream ids.
pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .to_ascii_uppercase()
}

/// Standard headers of a service text message: `X-RequestId`, `Content-Type`, `Path`, in
/// the service's order.
pub(crate) fn service_text(
    request_id: &str,
    path: &str,
    body: &str,
    style: frame::HeaderStyle,
) -> String {
    let mut hd = frame::Headers::new();
    hd.push("X-RequestId", request_id);
    hd.push("Content-Type", "application/json; charset=utf-8");
    hd.push("Path", path);
    frame::build_text(&hd, body, style)
}
