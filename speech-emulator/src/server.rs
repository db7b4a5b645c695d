//! The listener, the connection tasks, request routing, and the handle.
//!
//! Every task the emulator starts (accept loop, one per TCP connection, h2 streams, one per
//! websocket) is spawned on the server's one [`TaskTracker`] and watches its one
//! [`CancellationToken`], so [`EmulatorHandle::shutdown`] can stop them all and wait until
//! none is left.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capture::Capture;
use crate::config::EmulatorConfig;
use crate::counters::{Counters, GaugeGuard, LiveCounters};
use crate::faults::{Endpoint, Fault, FaultPlan, FaultRule, Phase, Target};
use crate::http::{self as h, Body};
use crate::session::SttMode;
use crate::state::{ConnectionInfo, EmulatorState, ServerState, SessionCommand, lock};
use crate::tls::TlsIdentity;
use crate::{auth, control, rest, ws};

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The certificate could not be generated.
    #[error("cannot generate the TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration was refused.
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Entry point: `Emulator::start(config)`.
#[derive(Debug, Clone, Copy)]
pub struct Emulator;

impl Emulator {
    /// Binds and starts serving. Returns once the socket is listening, so the address in the
    /// handle is immediately connectable.
    pub async fn start(mut config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        // The workspace builds rustls with ring only; install it as the process default
        // for any client code in the same process (an error means one is already set).
        let _ = rustls::crypto::ring::default_provider().install_default();
        if config.tls && config.tls_identity.is_none() {
            config.tls_identity = Some(TlsIdentity::generate(&[])?);
        }
        let emulator = Arc::new(EmulatorState {
            faults: Mutex::new(FaultPlan {
                rules: config.faults.clone(),
            }),
            transcript: Mutex::new(config.transcript.clone()),
            counters: Arc::new(LiveCounters::default()),
            capture: Arc::new(Capture::new(config.capture)),
            config,
        });
        start_server(emulator).await
    }
}

async fn start_server(emulator: Arc<EmulatorState>) -> Result<EmulatorHandle, EmulatorError> {
    let bind = emulator.config.bind;
    let listener =
        bind_listener(bind).map_err(|source| EmulatorError::Bind { addr: bind, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EmulatorError::Bind { addr: bind, source })?;
    let acceptor = match &emulator.config.tls_identity {
        Some(id) if emulator.config.tls => Some(TlsAcceptor::from(Arc::new(id.server_config()?))),
        _ => None,
    };
    let server = Arc::new(ServerState {
        emulator,
        tracker: TaskTracker::new(),
        cancel: CancellationToken::new(),
        sessions: Mutex::new(HashMap::new()),
        per_key: Mutex::new(HashMap::new()),
        next_session_id: AtomicU64::new(1),
    });
    server
        .tracker
        .spawn(accept_loop(Arc::clone(&server), listener, acceptor));
    tracing::info!(%addr, tls = server.emulator.config.tls, "speech emulator listening");
    Ok(EmulatorHandle { server, addr })
}

/// Binds with `SO_REUSEADDR` so a restart can take the same port at once, even while the
/// previous server's connections sit in TIME_WAIT.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(
    server: Arc<ServerState>,
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
) {
    loop {
        tokio::select! {
            () = server.cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let server2 = Arc::clone(&server);
                    let acceptor = acceptor.clone();
                    server.tracker.spawn(async move {
                        let cancel = server2.cancel.clone();
                        tokio::select! {
                            () = cancel.cancelled() => {}
                            () = serve_tcp(server2, stream, peer, acceptor) => {}
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

async fn serve_tcp(
    server: Arc<ServerState>,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
) {
    let emulator = Arc::clone(&server.emulator);
    emulator.counters.inc(&emulator.counters.tcp_accepted);
    let _ = stream.set_nodelay(true);
    let info = ConnectionInfo {
        rst_on_drop: Arc::new(AtomicBool::new(false)),
    };
    let io = CountedIo {
        stream,
        _gauge: GaugeGuard::new(Arc::clone(&emulator.counters), |c| &c.tcp_open),
        rst_on_drop: Arc::clone(&info.rst_on_drop),
    };
    // One simulated round trip for TCP set-up, one more for TLS, plus injected slowness.
    let mut delay = emulator.config.rtt;
    if acceptor.is_some() {
        delay = delay.saturating_add(emulator.config.rtt);
    }
    for f in emulator.take_faults(Phase::Accept, None, None) {
        if let Fault::TlsDelay { ms } = f {
            delay = delay.saturating_add(Duration::from_millis(ms));
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match acceptor {
        Some(acceptor) => {
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(io)).await {
                Ok(Ok(tls)) => serve_http(server, tls, info).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
        None => serve_http(server, io, info).await,
    }
}

/// Runs hyper's tasks (h2 streams) on the server's tracker so shutdown waits for them too.
#[derive(Debug, Clone)]
struct TrackedExecutor(TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

async fn serve_http<IO>(server: Arc<ServerState>, io: IO, info: ConnectionInfo)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let server = Arc::clone(&server);
        service_fn(move |req| {
            let server = Arc::clone(&server);
            let info = info.clone();
            async move { Ok::<_, Infallible>(route(server, info, req).await) }
        })
    };
    let mut builder = auto::Builder::new(TrackedExecutor(server.tracker.clone()));
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Request routing (paths are matched case-insensitively, as the service does).
async fn route(
    server: Arc<ServerState>,
    info: ConnectionInfo,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_ascii_lowercase();
    let path = path.trim_end_matches('/');
    let method = req.method().clone();
    if let Some(rest) = path.strip_prefix("/_emulator") {
        return control::handle(&server, rest, req).await;
    }
    if !h::is_upgrade(&req) {
        server.emulator.capture.request("http", &req);
    }
    if method == Method::POST && h::lacks_body_length(&req) {
        return h::error(StatusCode::LENGTH_REQUIRED, "Length Required", None);
    }
    if let Some(kind) = SttMode::from_path(path) {
        return if method == Method::GET && h::is_upgrade(&req) {
            ws::upgrade(server, info, req, Endpoint::SttWs, Some(kind)).await
        } else if method == Method::POST && !path.contains("/universal/") {
            rest::stt_short(&server, req).await
        } else {
            h::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        };
    }
    match path {
        "/cognitiveservices/websocket/v1"
        | "/tts/cognitiveservices/websocket/v1"
        | "/cognitiveservices/websocket/v2"
        | "/tts/cognitiveservices/websocket/v2" => {
            if method == Method::GET {
                ws::upgrade(server, info, req, Endpoint::TtsWs, None).await
            } else {
                h::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
            }
        }
        "/sts/v1.0/issuetoken" if method == Method::POST => rest::issue_token(&server, req).await,
        "/cognitiveservices/v1" | "/tts/cognitiveservices/v1" if method == Method::POST => {
            rest::tts(&server, req).await
        }
        "/cognitiveservices/voices/list" | "/tts/cognitiveservices/voices/list"
            if method == Method::GET =>
        {
            rest::voices(&server, req).await
        }
        "/sts/v1.0/issuetoken"
        | "/cognitiveservices/v1"
        | "/tts/cognitiveservices/v1"
        | "/cognitiveservices/voices/list"
        | "/tts/cognitiveservices/voices/list" => {
            h::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => h::text(StatusCode::NOT_FOUND, "resource not found"),
    }
}

/// The TCP stream, counted in `tcp_open` for as long as it lives (through TLS and the
/// websocket upgrade), and able to end with a reset instead of a FIN.
struct CountedIo {
    stream: TcpStream,
    _gauge: GaugeGuard,
    rst_on_drop: Arc<AtomicBool>,
}

impl Drop for CountedIo {
    fn drop(&mut self) {
        if self.rst_on_drop.load(Ordering::SeqCst) {
            // SO_LINGER 0: closing sends RST, which a client sees as "connection reset".
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for CountedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A running emulator. Dropping it stops serving (without waiting); call
/// [`shutdown`](Self::shutdown) to stop and wait until every task has ended.
#[derive(Debug)]
pub struct EmulatorHandle {
    server: Arc<ServerState>,
    addr: SocketAddr,
}

impl EmulatorHandle {
    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it serves TLS.
    pub fn is_tls(&self) -> bool {
        self.server.emulator.config.tls
    }

    /// `https://127.0.0.1:PORT` (or `http://` in plain mode): the base of the REST routes.
    pub fn base_url_http(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `wss://127.0.0.1:PORT` (or `ws://` in plain mode): the base of the websocket routes,
    /// and what `SpeechConfig.fromHost` takes.
    pub fn base_url_ws(&self) -> String {
        let scheme = if self.is_tls() { "wss" } else { "ws" };
        format!("{scheme}://{}", self.addr)
    }

    /// The TLS identity in use (pass it back in a config to restart with the same one).
    pub fn tls_identity(&self) -> Option<&TlsIdentity> {
        self.server
            .emulator
            .config
            .tls_identity
            .as_ref()
            .filter(|_| self.is_tls())
    }

    /// The CA certificate clients must trust, in PEM (`None` in plain mode).
    pub fn ca_cert_pem(&self) -> Option<&str> {
        self.tls_identity().map(TlsIdentity::ca_cert_pem)
    }

    /// The CA certificate clients must trust, in DER (`None` in plain mode).
    pub fn ca_cert_der(&self) -> Option<CertificateDer<'static>> {
        self.tls_identity().map(TlsIdentity::ca_cert_der)
    }

    /// The effective configuration (the port and certificate filled in), e.g. to start an
    /// identical emulator later.
    pub fn config(&self) -> EmulatorConfig {
        let mut c = self.server.emulator.config.clone();
        c.bind = self.addr;
        c.faults = self.faults();
        c.transcript = self.server.emulator.transcript();
        c
    }

    /// What clients sent, if the emulator was started with
    /// [`capture`](EmulatorConfig::capture) on.
    pub fn capture(&self) -> &Capture {
        &self.server.emulator.capture
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.server.emulator.counters.snapshot()
    }

    /// Waits until `pred` holds for the counters or `timeout` passes. `Ok` carries the
    /// snapshot that satisfied it, `Err` the last one seen.
    pub async fn wait_for_counters(
        &self,
        pred: impl Fn(&Counters) -> bool,
        timeout: Duration,
    ) -> Result<Counters, Counters> {
        self.server.emulator.counters.wait_for(pred, timeout).await
    }

    /// Adds a fault rule.
    pub fn add_fault(&self, rule: FaultRule) {
        lock(&self.server.emulator.faults).add(rule);
    }

    /// Replaces every fault rule.
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        lock(&self.server.emulator.faults).rules = rules;
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.server.emulator.faults).clear();
    }

    /// The fault rules still armed (spent one-shot rules are gone).
    pub fn faults(&self) -> Vec<FaultRule> {
        lock(&self.server.emulator.faults).rules.clone()
    }

    /// Changes what the STT routes recognise from now on.
    pub fn set_transcript(&self, transcript: impl Into<String>) {
        *lock(&self.server.emulator.transcript) = transcript.into();
    }

    /// Mints a token as the token endpoint would for `key`, without a request.
    pub fn issue_token(&self, key: &str) -> String {
        auth::issue_token(
            key,
            std::time::SystemTime::now(),
            self.server.emulator.config.token_lifetime,
        )
    }

    /// Drops every open websocket matching `target` without a close frame (RST if `rst`);
    /// returns how many. Models a network failure hitting warm, idle sockets.
    pub fn disconnect_all(&self, target: Target, rst: bool) -> usize {
        self.server
            .broadcast(target, &SessionCommand::Disconnect { rst })
    }

    /// Blackholes every open websocket matching `target`: from now on the emulator neither
    /// reads nor writes them, sends no close frame, FIN or RST, and keeps the sockets open
    /// until it shuts down. Returns how many. Models a network path that died silently
    /// under warm, idle sockets (see `Fault::Blackhole` for mid-turn).
    pub fn blackhole_all(&self, target: Target) -> usize {
        self.server.broadcast(target, &SessionCommand::Blackhole)
    }

    /// Closes every open websocket matching `target` with `code` and `reason`; returns how
    /// many.
    pub fn close_all(&self, target: Target, code: u16, reason: &str) -> usize {
        self.server.broadcast(
            target,
            &SessionCommand::Close {
                code,
                reason: reason.to_owned(),
            },
        )
    }

    /// Stops accepting, closes every connection (websockets get close 1001) and waits until
    /// every task has ended (bounded: a client that never reads cannot hold it up). Returns
    /// how many tasks were still running when the wait gave up: 0 on a clean shutdown.
    pub async fn shutdown(self) -> usize {
        Self::stop(&self.server).await
    }

    /// Tasks currently running: the accept loop, one per TCP connection, one per websocket.
    pub fn tasks_running(&self) -> usize {
        self.server.tracker.len()
    }

    async fn stop(server: &ServerState) -> usize {
        server.cancel.cancel();
        server.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), server.tracker.wait()).await;
        let left = server.tracker.len();
        if left > 0 {
            tracing::warn!(left, "emulator tasks still running after shutdown");
        }
        left
    }

    /// Stops this server and starts another on the same address with the same certificate,
    /// faults, transcript and counters: what a client sees when the service restarts.
    pub async fn restart(self) -> Result<EmulatorHandle, EmulatorError> {
        Self::stop(&self.server).await;
        let mut config = self.server.emulator.config.clone();
        config.bind = self.addr;
        let emulator = Arc::new(EmulatorState {
            config,
            counters: Arc::new(LiveCounters::default()),
            faults: Mutex::new(lock(&self.server.emulator.faults).clone()),
            transcript: Mutex::new(self.server.emulator.transcript()),
            capture: Arc::clone(&self.server.emulator.capture),
        });
        // Counters carry over so totals span the restart; the gauges are zero by now.
        let old = self.server.emulator.counters.snapshot();
        let c = &emulator.counters;
        for (dst, v) in [
            (&c.tcp_accepted, old.tcp_accepted),
            (&c.connections_opened, old.connections_opened),
            (&c.handshakes_rejected, old.handshakes_rejected),
            (&c.turns_started, old.turns_started),
            (&c.turns_served, old.turns_served),
            (&c.turns_stopped, old.turns_stopped),
            (&c.tokens_issued, old.tokens_issued),
            (&c.rest_requests, old.rest_requests),
            (&c.faults_injected, old.faults_injected),
            (&c.closed_max_age, old.closed_max_age),
            (&c.closed_idle, old.closed_idle),
            (&c.turns_cut_by_max_age, old.turns_cut_by_max_age),
        ] {
            dst.store(v, Ordering::SeqCst);
        }
        start_server(emulator).await
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        // Stop serving even if the owner forgot `shutdown` (e.g. a failed test).
        self.server.cancel.cancel();
    }
}
