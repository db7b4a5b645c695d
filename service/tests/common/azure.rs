//! The service on the azure backend, whose upstream is the emulator over TLS: for tests of
//! what reaches Azure (or stays in the service) through the Azure-protocol endpoints.

use std::path::PathBuf;
use std::time::Duration;

use service::config::BackendChoice;
use service::secret::Secret;
use service::test_support::{LoopbackServer, install_crypto_provider};
use service::{AppState, Config, build_state};
use speech_emulator::{
    Emulator, EmulatorConfig, EmulatorHandle, Fault, FaultRule, Target, TurnPoint,
};

/// The upstream's (Azure's) key: only the service holds it.
pub const UPSTREAM_KEY: &str = "upstream-azure-key";

/// Azure's idle close (1000, "Idle timeout") crossing a turn's first message, on the next
/// `times` turns of `target`: the race that connections warmed together run into together.
pub fn idle_close_before_turn(target: Target, times: u32) -> FaultRule {
    FaultRule::new(Fault::Close {
        code: 1000,
        reason: Some("Idle timeout".into()),
        at: TurnPoint::BeforeTurnStart,
    })
    .target(target)
    .times(times)
}

/// The emulator, and the service in front of it.
pub struct Upstream {
    pub emulator: EmulatorHandle,
    pub state: AppState,
    pub server: LoopbackServer,
    ca: PathBuf,
}

impl Upstream {
    /// Starts both; `configure` adjusts the service's configuration (small warm pools,
    /// the emulator as its Azure endpoint) before the state is built and warmed.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(EmulatorConfig::default().with_key(UPSTREAM_KEY), configure).await
    }

    /// Like [`Upstream::start`], with the emulator configured as `emulator` says (its key
    /// must be [`UPSTREAM_KEY`]).
    pub async fn start_with(emulator: EmulatorConfig, configure: impl FnOnce(&mut Config)) -> Self {
        install_crypto_provider();
        let emulator = Emulator::start(emulator).await.expect("emulator");
        let ca = std::env::temp_dir().join(format!(
            "speech-pool-upstream-ca-{}-{}.pem",
            std::process::id(),
            emulator.addr().port()
        ));
        std::fs::write(&ca, emulator.ca_cert_pem().expect("TLS emulator")).expect("write CA");
        let mut config = Config::defaults();
        config.backend = BackendChoice::Azure;
        config.azure_speech_key = Some(Secret::new(UPSTREAM_KEY));
        config.azure_speech_endpoint = Some(emulator.base_url_http());
        config.azure_speech_ca_cert = Some(ca.clone());
        config.warm_pool_tts_size = 1;
        config.warm_pool_stt_size = 1;
        configure(&mut config);
        let state = build_state(&config).expect("azure state");
        state.warm_up().await;
        assert!(state.is_ready(), "{:?}", state.snapshots());
        let server = LoopbackServer::start(&state, Duration::from_secs(5))
            .await
            .expect("serve");
        Self {
            emulator,
            state,
            server,
            ca,
        }
    }

    /// Stops the service, checks it left no upstream connection open, stops the emulator.
    pub async fn finish(self) {
        let limit = Duration::from_secs(20);
        self.server.stop(limit).await.expect("stop");
        let left = self
            .emulator
            .wait_for_counters(|c| c.connections_open == 0, limit)
            .await;
        assert!(left.is_ok(), "connections left open: {left:?}");
        self.emulator.shutdown().await;
        let _ = std::fs::remove_file(self.ca);
    }
}
