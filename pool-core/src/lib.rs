//! A generic async pool of pre-warmed resources with exact allocation tiers.
//!
//! A voice agent needs a connected, warmed-up speech connection the moment a call starts.
//! This pool keeps such resources ready and records, for every acquire, where the resource
//! came from:
//!
//! - [`Tier::Dedicated`]: the session already held it;
//! - [`Tier::Warm`]: taken from the pre-warmed idle set (or handed over by a caller who
//!   returned one while this caller waited): no connect paid;
//! - [`Tier::Cold`]: created and warmed inline: a full connect paid.
//!
//! Backends plug in through one seam, the [`Manager`] trait. The pool knows nothing of
//! speech, HTTP or TLS.
//!
//! ```
//! use pool_core::{Manager, Pool, Tier};
//!
//! struct Counter;
//! impl Manager for Counter {
//!     type Resource = u32;
//!     type Error = std::io::Error;
//!     async fn create(&self) -> Result<u32, std::io::Error> { Ok(7) }
//! }
//!
//! # tokio_test_block_on(async {
//! let pool = Pool::builder(Counter).warm_target(2).build().unwrap();
//! pool.prepare().await.unwrap();
//! let first = pool.acquire().await.unwrap();
//! assert_eq!(first.tier(), Tier::Warm);
//! assert_eq!(*first, 7);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! Guarantees, each covered by a test in `tests/`:
//! - every resource the pool discards is passed to [`Manager::close`] exactly once, so
//!   `created_total == closed_total + live` at all times;
//! - at most `max_size` resources are live; callers beyond it wait FIFO, bounded by the
//!   acquire timeout, whose error carries the pool's state;
//! - concurrent first acquires for one session create exactly one resource, and callers
//!   queued behind a session's user are served first-in, first-out;
//! - dropping an acquire future at any await point leaks nothing;
//! - the maintainer replaces idle resources before `max_age` / `max_idle`, so steady traffic
//!   never meets an expired resource;
//! - all time goes through `tokio::time`, so tests run with paused time.

#![warn(missing_docs)]

mod accounting;
mod adaptive;
mod config;
mod create;
mod error;
mod guard;
mod in_flight;
mod maintainer;
mod manager;
mod metrics;
mod pool;
mod session;
mod snapshot;
mod tier;
mod waiters;

pub use adaptive::TargetReason;
pub use config::{PoolBuilder, PoolConfig};
pub use error::{BuildError, PoolError, SessionBusyDetails, TimeoutDetails};
pub use guard::Pooled;
pub use manager::Manager;
pub use pool::{LATENCY_SAMPLE_EVERY, Pool};
pub use session::SessionHandle;
pub use snapshot::{LatencySummary, PoolCounts, PoolSnapshot, TierLatencies};
pub use tier::Tier;
