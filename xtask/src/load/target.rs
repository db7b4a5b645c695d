//! The service a run talks to: started in this process (mock backend, or the Azure backend
//! against the local emulator over TLS), or one already running on this machine; and the
//! connection accounting after the run (`leaked` must be 0).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use service::backend::{BackendKind, Managers};
use service::config::{AzureAuth, BackendChoice};
use service::secret::Secret;
use service::test_support::LoopbackServer;
use service::{AppState, Config, build_state, state_from_managers};
use speech_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use speech_mock::backend::{MockConfig, MockCounters, mock_stt_manager, mock_tts_manager};

use crate::client::Client;

/// Bound on the in-process service's shutdown.
pub(crate) const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);
/// How long the emulator may take to see the service's last sockets close.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);
/// The key the in-process emulator accepts (it never leaves this process).
const EMULATOR_KEY: &str = "xtask-load-emulator-key";

/// Which backend the in-process service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    /// The deterministic mock with the realistic latency profile (400 ms cold connect).
    Mock,
    /// The real Azure client against the local emulator over TLS, with a simulated round
    /// trip (`--rtt-ms`).
    Emulator,
}

/// How the in-process service is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    pub backend: Backend,
    /// The mock's latency profile: realistic for load, instant for the soak.
    pub realistic: bool,
    /// Simulated network round trip of the emulator.
    pub rtt: Duration,
    pub warm_tts: usize,
    pub warm_stt: usize,
    pub max_tts: usize,
    pub max_stt: usize,
    /// The service's adaptive warm target (`WARM_POOL_ADAPTIVE`), with `warm_*` as its
    /// floor; off, `warm_*` is a fixed target.
    pub adaptive: bool,
}

/// The emulator's CA written to a temporary file for `AZURE_SPEECH_CA_CERT` (the real
/// configuration path); removed on drop.
pub(crate) struct CaFile(pub PathBuf);

impl CaFile {
    pub(crate) fn write(emulator: &EmulatorHandle) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "speech-pool-xtask-ca-{}-{}.pem",
            std::process::id(),
            emulator.addr().port()
        ));
        let pem = emulator.ca_cert_pem().context("the emulator serves TLS")?;
        std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What to compare after the run to find leaked connections.
enum Accounting {
    Mock {
        tts: Arc<MockCounters>,
        stt: Arc<MockCounters>,
    },
    Emulator {
        emulator: EmulatorHandle,
        /// Kept until the emulator is shut down.
        ca_file: CaFile,
    },
}

/// The service running in this process.
pub(crate) struct InProcess {
    served: LoopbackServer,
    state: AppState,
    accounting: Accounting,
}

impl InProcess {
    pub(crate) async fn start(setup: Setup) -> anyhow::Result<Self> {
        let mut config = Config::defaults();
        config.warm_pool_tts_size = setup.warm_tts;
        config.warm_pool_stt_size = setup.warm_stt;
        config.pool_tts_max_size = setup.max_tts;
        config.warm_pool_adaptive = setup.adaptive;
        config.pool_stt_max_size = setup.max_stt;
        config.pool_acquire_timeout = Duration::from_secs(10);
        let (state, accounting) = match setup.backend {
            Backend::Mock => {
                let profile = if setup.realistic {
                    MockConfig::realistic()
                } else {
                    MockConfig::default()
                };
                let (tts, tts_counters) = mock_tts_manager(profile.clone());
                let (stt, stt_counters) = mock_stt_manager(profile);
                let managers = Managers {
                    kind: BackendKind::Mock,
                    tts,
                    stt,
                };
                let state = state_from_managers(&config, managers)
                    .map_err(|e| anyhow::anyhow!("building the service state: {e}"))?;
                let accounting = Accounting::Mock {
                    tts: tts_counters,
                    stt: stt_counters,
                };
                (state, accounting)
            }
            Backend::Emulator => {
                let emulator = Emulator::start(
                    EmulatorConfig::default()
                        .with_key(EMULATOR_KEY)
                        .with_rtt(setup.rtt),
                )
                .await
                .context("starting the emulator")?;
                let ca_file = CaFile::write(&emulator)?;
                config.backend = BackendChoice::Azure;
                config.azure_speech_key = Some(Secret::new(EMULATOR_KEY));
                config.azure_speech_endpoint = Some(emulator.base_url_http());
                config.azure_speech_ca_cert = Some(ca_file.0.clone());
                config.azure_speech_auth = AzureAuth::Key;
                let state = build_state(&config)
                    .map_err(|e| anyhow::anyhow!("building the service state: {e}"))?;
                (state, Accounting::Emulator { emulator, ca_file })
            }
        };
        state.warm_up().await;
        let served = LoopbackServer::start(&state, Duration::from_secs(10))
            .await
            .context("serving on 127.0.0.1")?;
        Ok(Self {
            served,
            state,
            accounting,
        })
    }

    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.served.addr())
    }

    pub(crate) fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops the service and compares what the backend opened with what it closed: the
    /// mock's own counters, or at the emulator its open websockets and open TCP
    /// connections; and in both cases each pool's `created_total - closed_total`.
    pub(crate) async fn stop(self) -> anyhow::Result<Connections> {
        let Self {
            served,
            state,
            accounting,
        } = self;
        served
            .stop(SHUTDOWN_LIMIT)
            .await
            .context("stopping the service")?;
        let pools = state.snapshots();
        // The service's HTTP clients (token and REST requests) keep idle TCP connections
        // to the backend for as long as the state lives; it is done now.
        drop(state);
        let pool_leak: u64 = pools
            .iter()
            .map(|p| p.created_total.saturating_sub(p.closed_total))
            .sum();
        let pool_line = |name: &str| {
            pools.iter().find(|p| p.name == name).map_or_else(
                || format!("pool {name}: missing"),
                |p| format!("pool created {} closed {}", p.created_total, p.closed_total),
            )
        };
        let mut lines = Vec::new();
        let mut leaked = 0;
        let created = pools
            .iter()
            .map(|p| (p.name.clone(), p.created_total))
            .collect();
        match accounting {
            Accounting::Mock { tts, stt } => {
                for (name, counters) in [("speech-tts", &tts), ("speech-stt", &stt)] {
                    let s = counters.snapshot();
                    let leak = s.created.saturating_sub(s.closed);
                    leaked += leak;
                    lines.push(format!(
                        "{name}: mock created {} closed {} (dropped without close {}); {}; leaked {leak}",
                        s.created,
                        s.closed,
                        s.dropped_without_close,
                        pool_line(name)
                    ));
                }
                leaked += pool_leak;
            }
            Accounting::Emulator { emulator, ca_file } => {
                let counters = match emulator
                    .wait_for_counters(|c| c.connections_open == 0 && c.tcp_open == 0, CLOSE_LIMIT)
                    .await
                {
                    Ok(c) | Err(c) => c,
                };
                // A websocket rides on a TCP connection, so one leaked socket can show in
                // both counts: each is a leak on its own, and the sum only has to be 0.
                leaked = counters.connections_open + counters.tcp_open + pool_leak;
                lines.push(format!(
                    "emulator: websockets opened {}, open after shutdown {}; TCP connections accepted {}, open after shutdown {}; handshakes rejected {}",
                    counters.connections_opened,
                    counters.connections_open,
                    counters.tcp_accepted,
                    counters.tcp_open,
                    counters.handshakes_rejected
                ));
                for name in ["speech-tts", "speech-stt"] {
                    lines.push(format!("{name}: {}", pool_line(name)));
                }
                lines.push(format!(
                    "leaked: {} websockets + {} TCP connections + {pool_leak} pool created - closed",
                    counters.connections_open, counters.tcp_open
                ));
                emulator.shutdown().await;
                drop(ca_file);
            }
        }
        Ok(Connections {
            lines,
            leaked,
            created,
        })
    }
}

/// Connection accounting after a run.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    /// Human-readable lines for the report.
    pub lines: Vec<String>,
    /// Connections the backend opened and nobody closed.
    pub leaked: u64,
    /// Connections each pool created during the run (warm-up included): what the run
    /// cost the speech service in connects.
    pub created: Vec<(String, u64)>,
}

/// Reads the pools endpoint of a service we did not start: a live connection is
/// `created - closed`, and every one of them must be in a pool (`size`).
pub(crate) async fn remote_connections(client: &Client) -> anyhow::Result<Connections> {
    let request = client.authorize(client.http().get(format!("{}/api/v1/pools", client.base())));
    let response = request.send().await.context("GET /api/v1/pools")?;
    let status = response.status();
    let body = response.bytes().await.context("reading /api/v1/pools")?;
    if !status.is_success() {
        bail!("GET /api/v1/pools answered {status}");
    }
    let json: serde_json::Value = serde_json::from_slice(&body).context("parsing /api/v1/pools")?;
    let mut lines = Vec::new();
    let mut leaked = 0;
    let mut created_by_pool = Vec::new();
    if let Some(pools) = json["pools"].as_object() {
        for (name, pool) in pools {
            let created = pool["created_total"].as_u64().unwrap_or(0);
            let closed = pool["closed_total"].as_u64().unwrap_or(0);
            let size = pool["size"].as_u64().unwrap_or(0);
            let leak = created.saturating_sub(closed).saturating_sub(size);
            leaked += leak;
            created_by_pool.push((name.clone(), created));
            lines.push(format!(
                "{name}: pool created {created} closed {closed} live {size}; unaccounted {leak}"
            ));
        }
    }
    Ok(Connections {
        lines,
        leaked,
        created: created_by_pool,
    })
}

/// Checks that `url` points at this machine and returns it without a trailing slash.
pub(crate) fn loopback_base(url: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--url must start with http:// (got {url})"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host,
        _ => authority,
    };
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        bail!("--url must point at this machine (127.0.0.1, localhost or [::1]), got {url}");
    }
    Ok(format!("http://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert_eq!(
            loopback_base("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(loopback_base("http://localhost").is_ok());
        assert!(loopback_base("http://example.com:8080").is_err());
        assert!(loopback_base("https://127.0.0.1").is_err());
    }
}
