//! The websocket transport shared by TTS and STT: handshake (auth, `X-ConnectionId`,
//! same-origin redirects, one retry with a fresh token after a 401), a reader task that
//! notices server closes while the connection sits idle in a pool, and graceful close.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rustls::ClientConfig;
use speech_core::{RecognitionMode, SpeechError, WireMessage};
use tokio::net::TcpStream;
use tokio::sync::{Mutex as AsyncMutex, Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use url::Url;

use crate::auth::Authenticator;
use crate::frame::{self, BinaryMessage, Headers, TextMessage};
use crate::policy::ConnectionPolicy;
use crate::util::{connection_id, excerpt, retry_after, with_sources};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// The write half, shared by the connection's turns and its liveness prober (whose pings
/// go out between messages; the async mutex is uncontended on the hot path).
type Sink = Arc<AsyncMutex<SplitSink<Stream, Message>>>;

/// Messages buffered between the reader task and a turn. Bounded so a peer cannot grow
/// memory without limit while nobody reads (the reader then applies TCP back-pressure).
const INBOX: usize = 256;

/// Largest message accepted from the service (audio frames are a few KiB).
const MAX_MESSAGE: usize = 4 << 20;

/// What the reader task hands to a turn.
#[derive(Debug)]
pub(crate) enum Incoming {
    Text(TextMessage),
    Binary(BinaryMessage),
    /// A binary message that does not parse (the turn decides what that means).
    Malformed(String),
    /// The connection ended: a close frame (`code`) or a drop (`None`, i.e. 1006).
    Closed {
        code: Option<u16>,
        reason: String,
    },
    /// The liveness prober found the peer dead (silent, ping unanswered): a `Transient`
    /// failure, the connection is gone.
    Unresponsive(String),
}

/// State the reader task shares with the connection, readable without awaiting (for the
/// synchronous `is_ready`).
#[derive(Debug)]
struct Shared {
    open: AtomicBool,
    closed: Mutex<Option<(Option<u16>, String)>>,
    /// Set with `closed` when the prober declared the peer dead.
    dead: AtomicBool,
    /// The reader's clock origin, for `last_rx`.
    base: Instant,
    /// Nanoseconds after `base` of the last frame received (any frame, pongs included) or
    /// of the last hand-over to a turn that had been waiting for room.
    last_rx: AtomicU64,
    /// The reader is parked on a full inbox: the turn is slow, not the peer, so silence
    /// on the wire proves nothing.
    handing_over: AtomicBool,
}

impl Shared {
    fn new() -> Self {
        Self {
            open: AtomicBool::new(true),
            closed: Mutex::new(None),
            dead: AtomicBool::new(false),
            base: Instant::now(),
            last_rx: AtomicU64::new(0),
            handing_over: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let n = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_rx.store(n, Ordering::SeqCst);
    }

    fn last_rx(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_rx.load(Ordering::SeqCst))
    }

    fn mark_closed(&self, code: Option<u16>, reason: String) -> bool {
        self.open.store(false, Ordering::SeqCst);
        let mut c = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.is_none() {
            *c = Some((code, reason));
            true
        } else {
            false
        }
    }
}

/// One open websocket.
pub(crate) struct WsConn {
    sink: Sink,
    rx: mpsc::Receiver<Incoming>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    prober: JoinHandle<()>,
    pub(crate) opened_at: Instant,
    /// Last message we sent: the service's idle timer counts client messages.
    pub(crate) last_sent: Instant,
    pub(crate) token_expires: Option<Instant>,
    pub(crate) connection_id: String,
    send_timeout: Duration,
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConn")
            .field("connection_id", &self.connection_id)
            .field("open", &self.is_open())
            .field("age", &self.opened_at.elapsed())
            .finish_non_exhaustive()
    }
}

impl Drop for WsConn {
    fn drop(&mut self) {
        // Without this the reader would keep the socket half alive until the peer closes.
        self.reader.abort();
        self.prober.abort();
    }
}

/// Everything a handshake needs.
pub(crate) struct Connect<'a> {
    pub(crate) url: Url,
    pub(crate) auth: &'a Authenticator,
    pub(crate) tls: &'a Arc<ClientConfig>,
    pub(crate) policy: &'a ConnectionPolicy,
    pub(crate) user_agent: &'a str,
    /// Fired when the prober finds this connection's peer dead (the pool's maintainer
    /// listens, to replace it at once).
    pub(crate) dead_signal: Option<Arc<Notify>>,
}

impl WsConn {
    /// Opens a websocket: token (if needed), TCP, TLS, upgrade. Follows up to two
    /// same-origin redirects and retries once with a fresh token when a bearer token is
    /// refused, as the JavaScript SDK's `fetchOnExpiry` does (docs/protocol.md#token-endpoint).
    pub(crate) async fn connect(c: Connect<'_>) -> Result<Self, SpeechError> {
        let deadline = Instant::now() + c.policy.connect_timeout;
        let mut url = c.url.clone();
        let mut redirects = 0;
        let mut auth_retried = false;
        loop {
            let header = c.auth.header().await?;
            let conn_id = connection_id();
            let mut req = url
                .as_str()
                .into_client_request()
                .map_err(|e| SpeechError::protocol(format!("invalid websocket URL: {e}")))?;
            let h = req.headers_mut();
            let value = http::HeaderValue::from_str(header.value.expose())
                .map_err(|_| SpeechError::auth("the credential is not a valid header value"))?;
            h.insert(header.name, value);
            if let Ok(v) = http::HeaderValue::from_str(&conn_id) {
                h.insert("X-ConnectionId", v);
            }
            if let Ok(v) = http::HeaderValue::from_str(c.user_agent) {
                h.insert(http::header::USER_AGENT, v);
            }
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_MESSAGE))
                .max_frame_size(Some(MAX_MESSAGE));
            let attempt = tokio_tungstenite::connect_async_tls_with_config(
                req,
                Some(config),
                true,
                Some(Connector::Rustls(Arc::clone(c.tls))),
            );
            let result = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(SpeechError::timeout(format!(
                        "websocket connect took longer than {} ms",
                        c.policy.connect_timeout.as_millis()
                    )));
                }
            };
            match result {
                Ok((stream, _resp)) => {
                    return Ok(Self::start(
                        stream,
                        header.expires_at,
                        conn_id,
                        c.policy,
                        c.dead_signal.clone(),
                    ));
                }
                Err(WsError::Http(resp)) => {
                    let status = resp.status().as_u16();
                    if (300..400).contains(&status) && redirects < 2 {
                        if let Some(next) = same_origin_redirect(&url, resp.headers()) {
                            redirects += 1;
                            tracing::debug!(status, "following websocket redirect");
                            url = next;
                            continue;
                        }
                        return Err(SpeechError::protocol(format!(
                            "websocket upgrade answered HTTP {status} with a redirect to another origin (not followed)"
                        )));
                    }
                    if status == 401 && c.auth.is_token_based() && !auth_retried {
                        auth_retried = true;
                        c.auth.invalidate(&header.value);
                        tracing::debug!("token refused at handshake; retrying with a fresh token");
                        continue;
                    }
                    let body = resp
                        .body()
                        .as_deref()
                        .map(|b| excerpt(&String::from_utf8_lossy(b)))
                        .unwrap_or_default();
                    let body = match c.auth.key_secret() {
                        Some(k) => k.redact_in(&body),
                        None => body,
                    };
                    let body = header.value.redact_in(&body);
                    let msg = if body.is_empty() {
                        "websocket upgrade refused".to_owned()
                    } else {
                        format!("websocket upgrade refused: {body}")
                    };
                    return Err(SpeechError::from_http_status(
                        status,
                        retry_after(resp.headers()),
                        msg,
                    ));
                }
                Err(e) => return Err(connect_error(e)),
            }
        }
    }

    fn start(
        stream: Stream,
        token_expires: Option<Instant>,
        connection_id: String,
        policy: &ConnectionPolicy,
        dead_signal: Option<Arc<Notify>>,
    ) -> Self {
        let (sink, read) = stream.split();
        let sink: Sink = Arc::new(AsyncMutex::new(sink));
        let (tx, rx) = mpsc::channel(INBOX);
        let shared = Arc::new(Shared::new());
        let prober = tokio::spawn(probe_loop(
            Arc::clone(&sink),
            Arc::clone(&shared),
            tx.clone(),
            policy.liveness_gap,
            dead_signal,
        ));
        let reader = tokio::spawn(read_loop(read, tx, Arc::clone(&shared)));
        let now = Instant::now();
        Self {
            sink,
            rx,
            shared,
            reader,
            prober,
            opened_at: now,
            last_sent: now,
            token_expires,
            connection_id,
            send_timeout: policy.send_timeout,
        }
    }

    /// Whether the socket is still open as far as we know (no close frame, no error).
    pub(crate) fn is_open(&self) -> bool {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// The lifecycle part of `is_ready`: open, young enough, used recently enough, and
    /// (with tokens) opened with a token that is still valid long enough.
    pub(crate) fn lifecycle_ok(&self, p: &ConnectionPolicy) -> bool {
        let now = Instant::now();
        self.is_open()
            && now.saturating_duration_since(self.opened_at) < p.max_age
            && now.saturating_duration_since(self.last_sent) < p.max_idle
            && match (self.token_expires, p.token_min_validity) {
                (Some(exp), Some(min)) => exp.saturating_duration_since(now) >= min,
                _ => true,
            }
    }

    /// The error for a turn that finds the socket already gone.
    pub(crate) fn closed_error(&self) -> SpeechError {
        let c = self
            .shared
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match c {
            Some((_, reason)) if self.shared.dead.load(Ordering::SeqCst) => {
                SpeechError::transient(reason)
            }
            Some((Some(code), reason)) => SpeechError::from_close_code(code, reason),
            Some((None, reason)) => SpeechError::connection_closed(None, reason),
            None => SpeechError::connection_closed(None, "the websocket is closed"),
        }
    }

    /// Sends a text message.
    pub(crate) async fn send_text(
        &mut self,
        headers: &Headers,
        body: &str,
    ) -> Result<(), SpeechError> {
        let text = frame::write_text(headers, body)
            .map_err(|e| SpeechError::protocol(format!("cannot frame message: {e}")))?;
        self.send(Message::text(text)).await
    }

    /// Sends a binary message.
    pub(crate) async fn send_binary(
        &mut self,
        headers: &Headers,
        payload: &[u8],
    ) -> Result<(), SpeechError> {
        let data = frame::write_binary(headers, payload)
            .map_err(|e| SpeechError::protocol(format!("cannot frame message: {e}")))?;
        self.send(Message::binary(data)).await
    }

    async fn send(&mut self, msg: Message) -> Result<(), SpeechError> {
        if !self.is_open() {
            return Err(self.closed_error());
        }
        let sink = &self.sink;
        let sending = async move { sink.lock().await.send(msg).await };
        match tokio::time::timeout(self.send_timeout, sending).await {
            Ok(Ok(())) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Ok(Err(e)) => {
                let reason = with_sources(format!("send failed: {e}"), &e);
                self.shared.mark_closed(None, reason);
                Err(self.closed_error())
            }
            Err(_) => {
                self.shared.mark_closed(None, "send timed out".into());
                Err(SpeechError::timeout(format!(
                    "sending a message took longer than {} ms",
                    self.send_timeout.as_millis()
                )))
            }
        }
    }

    /// The next message from the service, or `None` if nothing arrives by `deadline`.
    pub(crate) async fn recv_until(&mut self, deadline: Instant) -> Option<Incoming> {
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Ok(Some(m)) => Some(m),
            // The reader is gone without a Closed message (aborted): report it as closed.
            Ok(None) => Some(Incoming::Closed {
                code: None,
                reason: "connection lost".into(),
            }),
            Err(_) => None,
        }
    }

    /// The next message, waiting as long as it takes (callers bound it with `select!`).
    pub(crate) async fn recv(&mut self) -> Incoming {
        match self.rx.recv().await {
            Some(m) => m,
            None => Incoming::Closed {
                code: None,
                reason: "connection lost".into(),
            },
        }
    }

    /// Discards messages that arrived between turns (there should be none). Notices a
    /// close that the reader already reported.
    pub(crate) fn drain_stale(&mut self) {
        while let Ok(m) = self.rx.try_recv() {
            match m {
                Incoming::Closed { .. } | Incoming::Unresponsive(_) => break,
                other => {
                    tracing::debug!(message = ?kind(&other), "discarding a message received between turns")
                }
            }
        }
    }

    /// Relays one turn of the protocol between a client speaking it and this socket (see
    /// `speech_core::Connection::relay_turn`). Returns after forwarding the service's
    /// `turn.end`. `service_silence` bounds how long the service may stay silent while the
    /// client has nothing more to send for the turn (TTS: after the `ssml`, the service
    /// speaks; STT: the client drives the turn with audio, so `None`).
    pub(crate) async fn relay_turn(
        &mut self,
        mut to_service: mpsc::Receiver<WireMessage>,
        to_client: mpsc::Sender<WireMessage>,
        service_silence: Option<Duration>,
    ) -> Result<(), SpeechError> {
        self.drain_stale();
        if !self.is_open() {
            return Err(self.closed_error());
        }
        let mut client_open = true;
        loop {
            let silence = async {
                match service_silence {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Client messages first: a turn's messages must reach the service before
                // anything of the next turn could, and an `ssml` waiting here is the turn.
                biased;
                m = to_service.recv(), if client_open => match m {
                    Some(WireMessage::Text(t)) => self.send(Message::text(t)).await?,
                    Some(WireMessage::Binary(b)) => self.send(Message::binary(b)).await?,
                    None => client_open = false,
                },
                incoming = self.recv() => {
                    let (msg, end) = match incoming {
                        Incoming::Text(t) => {
                            let end = t
                                .headers
                                .path()
                                .is_some_and(|p| p.eq_ignore_ascii_case("turn.end"));
                            let text = frame::write_text(&t.headers, &t.body).map_err(|e| {
                                SpeechError::protocol(format!("cannot re-frame a service message: {e}"))
                            })?;
                            (WireMessage::Text(text), end)
                        }
                        Incoming::Binary(b) => {
                            let data = frame::write_binary(&b.headers, &b.payload).map_err(|e| {
                                SpeechError::protocol(format!("cannot re-frame a service message: {e}"))
                            })?;
                            (WireMessage::Binary(data.into()), false)
                        }
                        fault @ (Incoming::Malformed(_) | Incoming::Unresponsive(_) | Incoming::Closed { .. }) => {
                            return Err(fault.into_turn_error());
                        }
                    };
                    to_client.send(msg).await.map_err(|_| SpeechError::Cancelled)?;
                    if end {
                        return Ok(());
                    }
                },
                () = silence => {
                    return Err(SpeechError::timeout(format!(
                        "the service sent nothing for {} ms mid-turn",
                        service_silence.unwrap_or_default().as_millis()
                    )));
                }
            }
        }
    }

    /// Sends close 1000 and waits (bounded) for the service's close, then stops the reader.
    pub(crate) async fn close(mut self, timeout: Duration) {
        if self.is_open() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            };
            let sink = &self.sink;
            let closing = async move { sink.lock().await.send(Message::Close(Some(frame))).await };
            let sent = tokio::time::timeout(timeout, closing)
                .await
                .is_ok_and(|r| r.is_ok());
            if sent {
                let deadline = Instant::now() + timeout;
                while let Ok(Some(m)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    if matches!(m, Incoming::Closed { .. }) {
                        break;
                    }
                }
            }
        }
        let sink = &self.sink;
        let _ = tokio::time::timeout(timeout, async move { sink.lock().await.close().await }).await;
        self.shared
            .mark_closed(Some(1000), "closed by the client".into());
        self.reader.abort();
        self.prober.abort();
    }
}

fn kind(m: &Incoming) -> String {
    match m {
        Incoming::Text(t) => format!("text {:?}", t.headers.path()),
        Incoming::Binary(b) => format!("binary {:?}", b.headers.path()),
        Incoming::Malformed(e) => format!("malformed: {e}"),
        Incoming::Closed { code, .. } => format!("closed {code:?}"),
        Incoming::Unresponsive(_) => "unresponsive".to_owned(),
    }
}

impl Incoming {
    /// The error a turn ends with when the socket delivers a fault instead of a frame: a
    /// frame that does not parse is a protocol error, a silent peer is transient, and a
    /// close is classified by its code. The TTS, STT, text-streaming and relay loops all
    /// end their turns this way, so a fault reads the same whichever loop saw it.
    pub(crate) fn into_turn_error(self) -> SpeechError {
        match self {
            Incoming::Malformed(e) => SpeechError::protocol(format!("bad binary message: {e}")),
            Incoming::Unresponsive(reason) => SpeechError::transient(reason),
            Incoming::Closed { code, reason } => match code {
                Some(c) => SpeechError::from_close_code(c, reason),
                None => SpeechError::connection_closed(None, reason),
            },
            // Frames are not faults; a loop that handed one here mis-matched its arms.
            Incoming::Text(_) | Incoming::Binary(_) => {
                SpeechError::protocol("a service frame was taken for a fault")
            }
        }
    }
}

async fn read_loop(mut read: SplitStream<Stream>, tx: mpsc::Sender<Incoming>, shared: Arc<Shared>) {
    loop {
        let next = read.next().await;
        // Any frame, a pong or a ping included, proves the peer alive.
        shared.touch();
        let item = match next {
            Some(Ok(Message::Text(t))) => Incoming::Text(frame::parse_text(t.as_str())),
            Some(Ok(Message::Binary(b))) => match frame::parse_binary(b) {
                Ok(m) => Incoming::Binary(m),
                Err(e) => Incoming::Malformed(e.to_string()),
            },
            Some(Ok(Message::Close(f))) => {
                let (code, reason) = match f {
                    Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    // A close frame without a status is "no status received" (1005).
                    None => (1005, String::new()),
                };
                tracing::debug!(code, %reason, "service closed the websocket");
                if shared.mark_closed(Some(code), reason.clone()) {
                    let _ = tx
                        .send(Incoming::Closed {
                            code: Some(code),
                            reason,
                        })
                        .await;
                }
                // Keep reading: tungstenite answers the close and then ends the stream.
                continue;
            }
            Some(Ok(_)) => continue, // ping, pong, raw frames
            Some(Err(e)) => {
                let reason = with_sources(format!("connection lost: {e}"), &e);
                if shared.mark_closed(None, reason.clone()) {
                    let _ = tx.send(Incoming::Closed { code: None, reason }).await;
                }
                return;
            }
            None => {
                let reason = "connection closed without a close frame".to_owned();
                if shared.mark_closed(None, reason.clone()) {
                    let _ = tx.send(Incoming::Closed { code: None, reason }).await;
                }
                return;
            }
        };
        let sent = match tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
            Err(mpsc::error::TrySendError::Full(item)) => {
                // The turn is behind: while we wait for room nothing is read, so the
                // prober must not take the silence for a dead peer.
                shared.handing_over.store(true, Ordering::SeqCst);
                let r = tx.send(item).await.map_err(|_| ());
                shared.touch();
                shared.handing_over.store(false, Ordering::SeqCst);
                r
            }
        };
        if sent.is_err() {
            return;
        }
    }
}

/// Finds a dead peer (see `ConnectionPolicy::liveness_gap`): after `gap / 2` without a
/// frame it sends a ping; if still nothing has arrived `gap / 4` later, the connection is
/// marked closed as unresponsive, a turn waiting on it is told (a `Transient` error), and
/// `dead_signal` wakes the pool's maintainer to replace it. Costs one 6-byte ping per
/// `gap / 2` of silence and nothing on the hand-out path: `is_ready` reads the `open` flag
/// this task clears. Ends when the connection closes (or is aborted with it).
async fn probe_loop(
    sink: Sink,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Incoming>,
    gap: Duration,
    dead_signal: Option<Arc<Notify>>,
) {
    let ping_after = gap / 2;
    let pong_window = gap * 3 / 4 - ping_after;
    loop {
        if !shared.open.load(Ordering::SeqCst) {
            return;
        }
        let last = shared.last_rx();
        let now = Instant::now();
        if shared.handing_over.load(Ordering::SeqCst) {
            tokio::time::sleep(ping_after).await;
            continue;
        }
        if now < last + ping_after {
            tokio::time::sleep_until(last + ping_after).await;
            continue;
        }
        // Woken late (a busy machine), the pong still gets its whole window.
        let deadline = (last + ping_after + pong_window).max(now + pong_window);
        let ping = async {
            sink.lock()
                .await
                .send(Message::Ping(b"liveness".to_vec().into()))
                .await
        };
        // A ping that cannot even be written in the window (the peer stopped reading and
        // the buffers are full) counts as unanswered.
        let _ = tokio::time::timeout_at(deadline, ping).await;
        tokio::time::sleep_until(deadline).await;
        if shared.last_rx() > last || shared.handing_over.load(Ordering::SeqCst) {
            continue;
        }
        let silent = Instant::now().saturating_duration_since(last);
        let reason = format!(
            "no data and no pong from the service for {} ms: the connection is dead (no FIN, no RST)",
            silent.as_millis()
        );
        shared.dead.store(true, Ordering::SeqCst);
        if shared.mark_closed(None, reason.clone()) {
            tracing::debug!(
                silent_ms = silent.as_millis() as u64,
                "websocket peer unresponsive; connection declared dead"
            );
            // A full inbox means the turn has plenty to read before it would wait; it
            // then finds the connection closed at its next send or turn.
            let _ = tx.try_send(Incoming::Unresponsive(reason));
            if let Some(s) = &dead_signal {
                s.notify_one();
            }
        }
        return;
    }
}

/// Follows a redirect only to the same scheme, host and port, so a credential is never
/// sent to a host the caller did not configure.
fn same_origin_redirect(from: &Url, headers: &http::HeaderMap) -> Option<Url> {
    let loc = headers.get(http::header::LOCATION)?.to_str().ok()?;
    let next = from.join(loc).ok()?;
    let next = match next.scheme() {
        "https" => {
            let mut n = next;
            let _ = n.set_scheme("wss");
            n
        }
        "http" => {
            let mut n = next;
            let _ = n.set_scheme("ws");
            n
        }
        _ => next,
    };
    (next.scheme() == from.scheme()
        && next.host_str() == from.host_str()
        && next.port_or_known_default() == from.port_or_known_default())
    .then_some(next)
}

fn connect_error(e: WsError) -> SpeechError {
    let msg = with_sources(format!("websocket connect failed: {e}"), &e);
    match e {
        WsError::Url(_) | WsError::HttpFormat(_) => SpeechError::protocol(msg),
        WsError::Protocol(_) | WsError::Capacity(_) | WsError::Utf8(_) => {
            SpeechError::protocol(msg)
        }
        _ => SpeechError::transient(msg),
    }
}

/// `X-Timestamp` for now.
pub(crate) fn now_timestamp() -> String {
    frame::timestamp(SystemTime::now())
}

/// The `speech.config` body, once per connection, in the shape the Speech SDKs send: the
/// client's identity (`context.system`, `context.os`) and, for STT, the audio source and the
/// recognition mode. The identity is ours, not the SDK's: the service has no reason to
/// treat this client as a version of the SDK it is not, and telling the truth lets Microsoft
/// support see which client produced a session. The OS name and version are `unknown`, as
/// the JavaScript SDK reports them under Node: reading them would need platform-specific
/// calls for information the service does not use.
pub(crate) fn speech_config_body(stt: Option<RecognitionMode>) -> String {
    let mut v = serde_json::json!({
        "context": {
            "system": {
                "name": "speech-azure",
                "version": env!("CARGO_PKG_VERSION"),
                "build": "Rust",
                "lang": "Rust",
            },
            "os": {
                "platform": std::env::consts::OS,
                "name": "unknown",
                "version": "unknown",
            },
        }
    });
    if let Some(mode) = stt {
        v["context"]["audio"] = serde_json::json!({
            "source": {
                "bitspersample": 16,
                "channelcount": 1,
                "connectivity": "Unknown",
                "manufacturer": "speech-azure",
                "model": "PushStream",
                "samplerate": 16000,
                "type": "Stream",
            }
        });
        v["recognition"] = serde_json::Value::from(mode.as_str());
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_origin() {
        let from = Url::parse("wss://a.example:443/x?language=en").expect("url");
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::LOCATION,
            http::HeaderValue::from_static("https://a.example/y?z=1"),
        );
        assert_eq!(
            same_origin_redirect(&from, &h).map(|u| u.to_string()),
            Some("wss://a.example/y?z=1".to_owned())
        );
        h.insert(
            http::header::LOCATION,
            http::HeaderValue::from_static("/rel"),
        );
        assert_eq!(
            same_origin_redirect(&from, &h).map(|u| u.to_string()),
            Some("wss://a.example/rel".to_owned())
        );
        h.insert(
            http::header::LOCATION,
            http::HeaderValue::from_static("wss://evil.example/"),
        );
        assert_eq!(same_origin_redirect(&from, &h), None);
        h.insert(
            http::header::LOCATION,
            http::HeaderValue::from_static("ws://a.example/"),
        );
        assert_eq!(same_origin_redirect(&from, &h), None);
    }
}
