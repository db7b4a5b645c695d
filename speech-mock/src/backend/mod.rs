//! The deterministic in-process backend (being written).
