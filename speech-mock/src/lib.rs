//! Offline speech backends for tests and for the service's default mode.
//!
//! - [`backend`]: a deterministic, seeded in-process backend implementing the
//!   speech-core traits and pool-core's `Manager`.
//! - [`emulator`]: a server that speaks the Azure Speech REST and websocket protocols,
//!   so that `speech-azure` is tested offline against the real protocol.

#![warn(missing_docs)]

pub mod backend;
pub mod emulator;
