//! Serving with timeouts and graceful shutdown.
//!
//! Each accepted connection is served by hyper directly (rather than through
//! `axum::serve`) so the service can bound what a client may hold without sending or
//! reading anything:
//! - an idle connection (opened, or between keep-alive requests) is closed after
//!   `HTTP_KEEP_ALIVE_TIMEOUT`;
//! - a request head must be complete `HTTP_HEADER_READ_TIMEOUT` after its first byte;
//! - a client that accepts no response bytes for `HTTP_WRITE_TIMEOUT` is cut off (this
//!   also covers upgraded websockets);
//! - on shutdown, connections without a request in flight are closed after
//!   `HTTP_SHUTDOWN_IDLE_WAIT`, so a few silent sockets cannot hold SIGTERM for the whole
//!   grace period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::limits::{Limits, LogLimiter};
use crate::state::AppState;

/// Serves [`app`](crate::app) over `state` on `listener` until `shutdown` completes, then:
/// 1. starts draining: `/readyz` answers 503, new speech requests 503, open STT streams
///    end after their current turn;
/// 2. stops accepting connections, closes connections without a request in flight
///    (after `HTTP_SHUTDOWN_IDLE_WAIT`) and waits for in-flight requests and streams, at
///    most `grace` in total;
/// 3. shuts both pools down, closing every connection (bounded by the pools' own
///    shutdown timeout).
///
/// Failing accepts (for example out of file descriptors) are logged and retried, so this
/// returns `Ok` once shut down; the `Result` is kept for callers that treat serving as
/// fallible.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let router = crate::app(state.clone());
    let limits = Arc::new(state.options().limits.clone());
    let closing = CancellationToken::new();
    let mut connections = JoinSet::new();
    static ACCEPT_ERRORS: LogLimiter = LogLimiter::new(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        peer,
                        router.clone(),
                        Arc::clone(&limits),
                        closing.clone(),
                    ));
                }
                Err(e) => {
                    if let Some(held_back) = ACCEPT_ERRORS.admit() {
                        tracing::warn!(error = %e, held_back, "accepting a connection failed");
                    }
                    // Usually out of file descriptors: give open connections a moment to end.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connections so the set does not grow with every one served.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(grace = ?grace, "shutting down: draining in-flight requests");
    let deadline = Instant::now() + grace;
    state.begin_drain();
    closing.cancel();
    let drained = tokio::time::timeout_at(deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "in-flight requests did not finish within the grace period; closing them"
        );
        connections.shutdown().await;
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    state.shutdown(remaining).await;
    tracing::info!("shutdown complete: pools closed");
    Ok(())
}

/// Serves one connection, closing it when a limit of [`Limits`] is crossed.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Arc<Limits>,
    closing: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(WatchedIo {
        inner: stream,
        activity: Arc::clone(&activity),
        write_timeout: limits.http_write_timeout,
        stalled: None,
    });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = activity.request_started();
            let router = router.clone();
            let activity = Arc::clone(&activity);
            async move {
                let response = match router.oneshot(request).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    activity.upgraded();
                }
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(TrackedBody {
                        inner: body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let mut shutdown_started = None;
    loop {
        let deadline = activity.deadline(&limits, shutdown_started);
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.changed.notified() => {}
            () = closing.cancelled(), if shutdown_started.is_none() => {
                shutdown_started = Some(Instant::now());
                connection.as_mut().graceful_shutdown();
            }
            () = sleep_until(deadline) => {
                if activity.deadline(&limits, shutdown_started).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, "closing a connection that sent no complete request in time");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, for its timeouts.
#[derive(Debug)]
struct Activity {
    state: Mutex<ActivityState>,
    /// Set while no request is in flight and no byte of the next one has arrived, so a
    /// read can tell cheaply whether it starts a request head.
    awaiting_first_byte: AtomicBool,
    /// Wakes the connection's watchdog when a deadline moves.
    changed: Notify,
}

#[derive(Debug)]
struct ActivityState {
    in_flight: usize,
    upgraded: bool,
    idle_since: Instant,
    head_started: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(ActivityState {
                in_flight: 0,
                upgraded: false,
                idle_since: Instant::now(),
                head_started: None,
            }),
            awaiting_first_byte: AtomicBool::new(true),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        // Plain fields only; a poisoned state is still valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        {
            let mut s = self.lock();
            s.in_flight += 1;
            s.head_started = None;
        }
        self.awaiting_first_byte.store(false, Ordering::Relaxed);
        self.changed.notify_one();
        InFlight(Arc::clone(self))
    }

    fn request_finished(&self) {
        {
            let mut s = self.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            if s.in_flight == 0 {
                s.idle_since = Instant::now();
                s.head_started = None;
                self.awaiting_first_byte.store(true, Ordering::Relaxed);
            }
        }
        self.changed.notify_one();
    }

    fn upgraded(&self) {
        self.lock().upgraded = true;
        self.changed.notify_one();
    }

    fn bytes_read(&self) {
        if self.awaiting_first_byte.swap(false, Ordering::Relaxed) {
            {
                let mut s = self.lock();
                if s.in_flight == 0 {
                    s.head_started = Some(Instant::now());
                }
            }
            self.changed.notify_one();
        }
    }

    /// When the connection should be closed if nothing changes; `None` while a request is
    /// in flight or the connection was upgraded (websockets have their own limits).
    fn deadline(&self, limits: &Limits, shutdown_started: Option<Instant>) -> Option<Instant> {
        let s = self.lock();
        if s.in_flight > 0 || s.upgraded {
            return None;
        }
        let normal = match s.head_started {
            Some(started) => started + limits.http_header_read_timeout,
            None => s.idle_since + limits.http_keep_alive_timeout,
        };
        Some(match shutdown_started {
            Some(t) => normal.min(t + limits.http_shutdown_idle_wait),
            None => normal,
        })
    }
}

/// Marks a request in flight until its response body is dropped (sent or abandoned).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request counted as in flight until it is dropped.
#[derive(Debug)]
struct TrackedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, with a write-progress timeout: a write that cannot make progress for
/// `write_timeout` fails, which ends the connection (and drops whatever response body was
/// being sent, so the work behind it can stop).
#[derive(Debug)]
struct WatchedIo {
    inner: TcpStream,
    activity: Arc<Activity>,
    write_timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl WatchedIo {
    /// Called when the socket cannot take bytes: pending until the stall has lasted
    /// `write_timeout`, then an error.
    fn poll_stall<T>(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<T>> {
        let timeout = self.write_timeout;
        let stall = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client accepted no data for {timeout:?} (HTTP_WRITE_TIMEOUT); cut off"
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(
        &mut self,
        result: Poll<std::io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<T>> {
        match result {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_stall(cx),
        }
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(result, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(result, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progressed(result, cx)
    }
}

/// Completes on ctrl-c (SIGINT) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // Without a handler we can only wait for SIGTERM.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received ctrl-c"),
        () = term => tracing::info!("received SIGTERM"),
    }
}
