//! A generic async pool of pre-warmed resources (being written).
mod manager;
mod tier;
pub use manager::Manager;
pub use tier::Tier;
