//! Helpers for the crate's unit tests.

use speech_mock::backend::{MockConfig, mock_stt_manager, mock_tts_manager};

use crate::config::Config;
use crate::state::{AppState, Pools, ServiceOptions};

/// A state over zero-latency mock pools without background work (so it builds outside a
/// runtime).
pub fn state() -> AppState {
    let mut config = Config::defaults();
    config.warm_pool_background_refresh = false;
    let (tts, _) = mock_tts_manager(MockConfig::default());
    let (stt, _) = mock_stt_manager(MockConfig::default());
    let pools = Pools::build(&config, tts, stt).expect("pools");
    AppState::new(pools, ServiceOptions::from_config(&config, "mock"))
}
