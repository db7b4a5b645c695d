//! Websocket upgrade and the session driver shared by the TTS and STT protocols.
//!
//! The driver owns the socket and runs one `select!` loop over: shutdown, commands from the
//! handle, the age and idle timers, the next scheduled outgoing message, and the next client
//! message. The protocol ([`Protocol`]) only fills the [`Outbox`], so a client's
//! `synthesis.control` or close is read even while audio is streaming.

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

use crate::auth;
use crate::capture::ConnNo;
use crate::counters::GaugeGuard;
use crate::faults::{Endpoint, Fault, Phase};
use crate::frame;
use crate::http::{self as h, Body};
use crate::session::{Outbox, Outgoing, Protocol, SessionParams, Stop, SttMode};
use crate::state::{ConnectionInfo, ServerState, SessionCommand, lock};
use crate::time::deadline_after;
use crate::{stt, tts, tts_v2};

/// The upgraded socket a session driver owns.
type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// The largest client message accepted. SSML is capped at 64 KiB by the protocol (checked
/// separately, to answer with the right close code); audio chunks are a few KiB.
const MAX_MESSAGE: usize = 1 << 20;

/// Answers a websocket upgrade: checks, faults, auth, then `101` and a session task.
pub(crate) async fn upgrade(
    server: Arc<ServerState>,
    info: ConnectionInfo,
    mut req: Request<Incoming>,
    endpoint: Endpoint,
    mode: Option<SttMode>,
) -> Response<Body> {
    let emulator = Arc::clone(&server.emulator);
    tracing::trace!(uri = %req.uri(), headers = ?req.headers(), "websocket upgrade request");
    let reject = |resp: Response<Body>| {
        emulator
            .counters
            .inc(&emulator.counters.handshakes_rejected);
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
    // The v2 path is the text-streaming one (docs/protocol.md#tts-over-websocket).
    let tts_v2 = req
        .uri()
        .path()
        .trim_end_matches('/')
        .to_ascii_lowercase()
        .ends_with("/websocket/v2");
    let presented = auth::presented(|n| h::header(&req, n), &query);
    let checked = auth::check(presented.as_ref(), emulator.config.key.as_deref());
    let identity = checked.as_ref().ok().cloned();

    // One simulated round trip for the upgrade itself, plus injected slowness.
    let mut delay = emulator.config.rtt;
    let mut injected = None;
    for f in emulator.take_faults(Phase::Handshake, Some(endpoint), identity.as_deref()) {
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
    if emulator.config.strict && connection_id.is_empty() {
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
    let slot = match KeySlot::acquire(&server, &identity) {
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
        .map_or(emulator.config.max_connection_age, |s| {
            emulator
                .config
                .max_connection_age
                .min(Duration::from_secs(s))
        });
    let conn_no = emulator.capture.request("upgrade", &req);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let id = server
        .next_session_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, cmds) = mpsc::channel(4);
    lock(&server.sessions).insert(id, (endpoint, tx));
    let registration = SessionRegistration {
        server: Arc::clone(&server),
        id,
    };
    emulator.counters.inc(&emulator.counters.connections_opened);
    let gauges = (
        GaugeGuard::new(Arc::clone(&emulator.counters), |c| &c.connections_open),
        GaugeGuard::new(
            Arc::clone(&emulator.counters),
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
    let server2 = Arc::clone(&server);
    let rst = Arc::clone(&info.rst_on_drop);
    server.tracker.spawn(async move {
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
        let driver = SessionDriver {
            opened: Instant::now(),
            max_age,
            server: Arc::clone(&server2),
            ws,
            cmds,
            rst,
            outbox: Outbox::default(),
            conn_no,
        };
        match endpoint {
            Endpoint::SttWs => driver.run(stt::SttSession::new(server2, params)).await,
            _ if tts_v2 => driver.run(tts_v2::TtsV2Session::new(server2, params)).await,
            _ => driver.run(tts::TtsSession::new(server2, params)).await,
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

/// Removes a session from the server's registry when it ends.
struct SessionRegistration {
    server: Arc<ServerState>,
    id: u64,
}

impl Drop for SessionRegistration {
    fn drop(&mut self) {
        lock(&self.server.sessions).remove(&self.id);
    }
}

/// One of a key's concurrent-connection slots, released on drop.
struct KeySlot {
    server: Arc<ServerState>,
    identity: String,
}

impl KeySlot {
    /// `None` when the key is at its limit; `Some(None)` when there is no limit.
    fn acquire(server: &Arc<ServerState>, identity: &str) -> Option<Option<Self>> {
        let Some(max) = server.emulator.config.max_connections_per_key else {
            return Some(None);
        };
        let mut per_key = lock(&server.per_key);
        let n = per_key.entry(identity.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Some(Self {
            server: Arc::clone(server),
            identity: identity.to_owned(),
        }))
    }
}

impl Drop for KeySlot {
    fn drop(&mut self) {
        let mut per_key = lock(&self.server.per_key);
        if let Some(n) = per_key.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_key.remove(&self.identity);
            }
        }
    }
}

/// Owns one websocket and runs its session to the end.
struct SessionDriver {
    opened: Instant,
    max_age: Duration,
    server: Arc<ServerState>,
    ws: Ws,
    cmds: mpsc::Receiver<SessionCommand>,
    rst: Arc<AtomicBool>,
    outbox: Outbox,
    /// This connection's number in the capture.
    conn_no: ConnNo,
}

impl SessionDriver {
    async fn run<P: Protocol>(mut self, mut proto: P) {
        let cancel = self.server.cancel.clone();
        let idle = self.server.emulator.config.idle_timeout;
        let age_at = deadline_after(self.opened, self.max_age);
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
            let idle_at =
                (!proto.busy() && next_at.is_none()).then(|| deadline_after(last_message, idle));
            let step = tokio::select! {
                () = cancel.cancelled() => Err(Stop::Close(1001, "service shutting down".into())),
                cmd = self.cmds.recv(), if cmds_open => match cmd {
                    Some(SessionCommand::Disconnect { rst }) => Err(Stop::Disconnect { rst }),
                    Some(SessionCommand::Close { code, reason }) => Err(Stop::Close(code, reason)),
                    Some(SessionCommand::Blackhole) => Err(Stop::Blackhole),
                    None => {
                        cmds_open = false;
                        Ok(())
                    }
                },
                () = tokio::time::sleep_until(age_at) => {
                    let c = &self.server.emulator.counters;
                    c.inc(&c.closed_max_age);
                    if proto.in_turn() {
                        c.inc(&c.turns_cut_by_max_age);
                    }
                    Err(Stop::Close(1000, "Maximum connection duration reached".into()))
                }
                () = tokio::time::sleep_until(idle_at.unwrap_or(age_at)), if idle_at.is_some() => {
                    let c = &self.server.emulator.counters;
                    c.inc(&c.closed_idle);
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
                        self.server.emulator.capture.text(self.conn_no, &msg);
                        tracing::trace!(headers = ?msg.headers, body = %msg.body, "text message");
                        proto.on_text(&mut self.outbox, msg)
                    }
                    Some(Ok(Message::Binary(b))) => {
                        last_message = Instant::now();
                        match frame::parse_binary(&b) {
                            Ok(m) => {
                                self.server.emulator.capture.binary(self.conn_no, &m);
                                tracing::trace!(headers = ?m.headers, len = m.payload.len(), "binary message");
                                proto.on_binary(&mut self.outbox, m)
                            }
                            Err(e) => Err(Stop::Close(1007, format!("Invalid binary message: {e}"))),
                        }
                    }
                    // A client close: tungstenite queues the reply and ends the stream on the
                    // next read. Pings are answered by tungstenite; they are not activity.
                    Some(Ok(Message::Close(f))) => {
                        self.server.emulator.capture.close(self.conn_no, f.map(|f| u16::from(f.code)));
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
                Some(Outgoing::Binary(b)) => tracing::trace!(len = b.len(), "sending binary"),
                other => tracing::trace!(item = ?other, "sending"),
            }
        }
        let msg = match item {
            None => return Ok(()),
            Some(Outgoing::Close(code, reason)) => return Err(Stop::Close(code, reason)),
            Some(Outgoing::Disconnect { rst }) => return Err(Stop::Disconnect { rst }),
            Some(Outgoing::Blackhole) => return Err(Stop::Blackhole),
            Some(Outgoing::Text(t)) => Message::text(t),
            Some(Outgoing::TurnEnd(t)) => {
                let c = &self.server.emulator.counters;
                c.inc(&c.turns_served);
                Message::text(t)
            }
            Some(Outgoing::Binary(b)) => Message::binary(b),
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
            Stop::Blackhole => {
                // Neither read nor write, and keep the socket: the client's pings go
                // unanswered, its data piles up in the kernel's buffers, and no FIN or RST
                // tells it anything. Only shutdown ends the hold, so the task stays on the
                // tracker and shutdown still accounts for it.
                // No more commands either: `blackhole_all` counts only live sessions.
                self.cmds.close();
                let c = &self.server.emulator.counters;
                c.inc(&c.blackholed);
                let _held = GaugeGuard::new(Arc::clone(c), |c| &c.blackholed_open);
                tracing::debug!(conn = ?self.conn_no, "websocket blackholed");
                self.server.cancel.cancelled().await;
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
