//! The Azure Speech emulator (being written).
