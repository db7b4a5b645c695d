//! The one seam between the pool and a backend.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::Notify;

/// What a backend implements so that [`Pool`](crate::Pool) can manage its resources.
///
/// The pool never looks inside a resource: it only asks the manager to create, warm,
/// check, reset and close one. Every method except [`is_ready`](Manager::is_ready) is
/// async because, for network resources, each of them is a round trip.
///
/// The pool guarantees that every resource it obtained from [`create`](Manager::create)
/// and then discards is passed to [`close`](Manager::close) exactly once, so that
/// server-side sessions (websockets) are ended cleanly instead of being dropped.
pub trait Manager: Send + Sync + 'static {
    /// The pooled resource, e.g. an open websocket connection.
    type Resource: Send + 'static;
    /// The backend's error type, surfaced through
    /// [`PoolError::Create`](crate::PoolError::Create) and
    /// [`PoolError::Warm`](crate::PoolError::Warm).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Opens a new resource: connect, handshake, authenticate. This is the cold path.
    fn create(&self) -> impl Future<Output = Result<Self::Resource, Self::Error>> + Send;

    /// Makes a freshly created resource ready for its first use (for example by sending
    /// `speech.config`). Called once per resource, on pre-warmed and cold resources alike.
    /// A resource whose warm-up fails is closed and never handed out.
    fn warm(
        &self,
        resource: &mut Self::Resource,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = resource;
        async { Ok(()) }
    }

    /// Makes a resource created inline for a waiting caller (the COLD path) ready for its
    /// first use. By default the same as [`warm`](Manager::warm); background prewarming
    /// always calls `warm`.
    ///
    /// A backend whose caller's real request proves the connection anyway (a REST call,
    /// whose first request fails as clearly as a warm-up would) may override this to skip
    /// the warm-up round trip and hand the caller its connection one round trip sooner.
    fn warm_for_caller(
        &self,
        resource: &mut Self::Resource,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.warm(resource)
    }

    /// Cheap and synchronous: may this resource be handed out now? (Socket still open,
    /// token still valid, not past its age.) Called on every hand-out and every return,
    /// so it must not block or allocate.
    fn is_ready(&self, resource: &Self::Resource) -> bool {
        let _ = resource;
        true
    }

    /// A signal the backend fires (`notify_one`) when an idle resource may have stopped
    /// being ready on its own, between the pool's looks at it: for example a background
    /// liveness probe found that a pooled connection's peer vanished. The maintainer then
    /// runs a pass at once, closing the resources [`is_ready`](Manager::is_ready) now
    /// refuses and creating their replacements, instead of waiting for its next scheduled
    /// pass (up to `refresh_interval` away) or for an acquire to stumble on them.
    ///
    /// Asked once, when the maintainer starts; `None` (the default) means the backend
    /// never signals. One signal per pool: `notify_one` wakes a single waiter.
    fn readiness_signal(&self) -> Option<Arc<Notify>> {
        None
    }

    /// Clears per-session state before a session's resource serves someone else.
    /// A resource whose reset fails is closed instead of being reused.
    fn reset(
        &self,
        resource: &mut Self::Resource,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = resource;
        async { Ok(()) }
    }

    /// Closes the resource gracefully (for a websocket: send a close frame). Runs in a
    /// background task the pool tracks, so it never blocks the caller that gave the
    /// resource back; [`Pool::shutdown`](crate::Pool::shutdown) waits for it, bounded.
    fn close(&self, resource: Self::Resource) -> impl Future<Output = ()> + Send {
        drop(resource);
        async {}
    }
}
