//! An offline speech backend for tests and for the service's default mode.
//!
//! [`backend`] is a deterministic, seeded in-process backend implementing the speech-core
//! traits and pool-core's `Manager`. It has no network stack: the Azure protocol emulator,
//! which tests `speech-azure` over real sockets, is the separate `speech-emulator` crate.

#![warn(missing_docs)]

pub mod backend;
