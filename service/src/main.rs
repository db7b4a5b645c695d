//! `speech-pool`: the HTTP service. Configuration is documented by `speech-pool --help`.

use std::process::ExitCode;

use service::{Config, build_state, serve, shutdown_signal, telemetry};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    // Malformed values exit here with clap's message (variable, value, expectation).
    let config = Config::load();
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    telemetry::init(config.log_format, &config.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config))
}

async fn run(config: Config) -> ExitCode {
    install_crypto_provider();
    tracing::info!(?config, "starting speech-pool");
    let state = match build_state(&config) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            let msg = format!(
                "cannot listen on {} (LISTEN_ADDR / --listen): {e}",
                config.listen
            );
            tracing::error!("{msg}");
            eprintln!("error: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(%addr, backend = %state.options().backend, "listening");
    // Warm the pools in the background: /livez answers at once, /readyz once they are warm.
    let warming = state.clone();
    tokio::spawn(async move { warming.warm_up().await });
    match serve(listener, state, shutdown_signal(), config.shutdown_grace).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// One rustls crypto provider (ring) for the whole process, installed before any TLS
/// connection is made.
fn install_crypto_provider() {
    #[cfg(feature = "azure")]
    service::install_crypto_provider();
}
