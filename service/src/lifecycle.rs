//! Serving with graceful shutdown.

use std::future::{Future, IntoFuture};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Serves [`app`](crate::app) over `state` on `listener` until `shutdown` completes, then:
/// 1. starts draining: `/readyz` answers 503, new speech requests 503, open STT streams
///    end after their current turn;
/// 2. stops accepting connections and waits for in-flight requests and streams, at most
///    `grace` in total;
/// 3. shuts both pools down, closing every connection (bounded by the pools' own
///    shutdown timeout).
///
/// Returns an error only if the server itself failed (not for a slow drain, which is
/// logged).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let router = crate::app(state.clone());
    let stop_accepting = CancellationToken::new();
    let server = axum::serve(listener, router)
        .with_graceful_shutdown(stop_accepting.clone().cancelled_owned())
        .into_future();
    let mut server = tokio::spawn(server);
    tokio::select! {
        result = &mut server => {
            // The server stopped on its own: an I/O error on the listener.
            state.shutdown(Duration::ZERO).await;
            return result.map_err(std::io::Error::other)?;
        }
        () = shutdown => {}
    }
    tracing::info!(grace = ?grace, "shutting down: draining in-flight requests");
    let deadline = tokio::time::Instant::now() + grace;
    state.begin_drain();
    stop_accepting.cancel();
    match tokio::time::timeout_at(deadline, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server error while draining"),
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed while draining"),
        Err(_) => {
            tracing::warn!(
                "in-flight requests did not finish within the grace period; closing them"
            );
            server.abort();
        }
    }
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    state.shutdown(remaining).await;
    tracing::info!("shutdown complete: pools closed");
    Ok(())
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
