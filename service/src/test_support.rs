//! Running the service for tests, benchmarks and load runs (feature `test-support`).
//!
//! One implementation of "serve the service on a loopback socket, exactly as `main`
//! serves it, and shut it down on demand", used by the service's integration tests, the
//! workspace's end-to-end tests and the `xtask` load and soak runs. Every function returns
//! errors rather than panicking, so callers that must not panic (the load generator) can
//! report them; tests call `expect`.
//!
//! ```no_run
//! # async fn demo(state: service::AppState) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use service::test_support::LoopbackServer;
//!
//! let server = LoopbackServer::start(&state, Duration::from_secs(5)).await?;
//! let pools = service::test_support::client()
//!     .get(server.url("/api/v1/pools"))
//!     .send()
//!     .await?;
//! assert!(pools.status().is_success());
//! server.stop(Duration::from_secs(30)).await?;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// Why [`LoopbackServer::stop`] did not end cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    /// `serve` returned an I/O error (the listener failed).
    #[error("the service failed: {0}")]
    Serve(#[source] std::io::Error),
    /// The task running `serve` panicked or was cancelled.
    #[error("the service task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// `serve` had not returned when the caller's limit ran out.
    #[error("the service did not shut down within {0:?}")]
    TimedOut(Duration),
}

/// The service serving a state on `127.0.0.1` (a free port), through
/// [`serve`](crate::serve) as `main` runs it, graceful shutdown included.
///
/// Dropping it without [`stop`](Self::stop) also starts the graceful shutdown (the
/// shutdown signal fires when its sender is dropped) but nobody waits for it.
#[derive(Debug)]
pub struct LoopbackServer {
    addr: SocketAddr,
    /// Sending (or dropping) it starts the graceful shutdown.
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl LoopbackServer {
    /// Binds a free port on `127.0.0.1` and serves `state` there, allowing `grace` for
    /// in-flight work at shutdown. Must run inside a tokio runtime.
    pub async fn start(state: &AppState, grace: Duration) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::serve(
            listener,
            state.clone(),
            async move {
                let _ = stopped.await;
            },
            grace,
        ));
        Ok(Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Where the service listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://ADDR{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Sends the shutdown signal without waiting for `serve` to return, so a test can
    /// watch the drain (readiness turning 503, streams ending) while it happens.
    pub fn signal(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Sends the shutdown signal (if [`signal`](Self::signal) has not) and waits, at most
    /// `limit`, for `serve` to drain and close the pools.
    pub async fn stop(mut self, limit: Duration) -> Result<(), StopError> {
        self.signal();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(StopError::Serve(e)),
            Ok(Err(e)) => Err(StopError::Task(e)),
            Err(_) => Err(StopError::TimedOut(limit)),
        }
    }
}

/// Installs the process-wide rustls crypto provider (ring). reqwest needs one even for
/// plain `http://` URLs, and the Azure backend needs it for every connection. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An HTTP client for the service (installs the crypto provider first).
pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::new()
}

/// `seconds` of 16 kHz 16-bit mono PCM: a quiet sawtooth, so the audio is not all zeros.
pub fn pcm(seconds: f32) -> Vec<u8> {
    let samples = (16_000.0 * seconds) as usize;
    (0..samples)
        .flat_map(|i| (((i % 64) as i16 - 32) * 100).to_le_bytes())
        .collect()
}
