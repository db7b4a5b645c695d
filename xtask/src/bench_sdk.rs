//! `cargo xtask bench sdk`: Microsoft's JavaScript Speech SDK, a brand-new synthesizer or
//! recognizer per sample, straight to the emulator versus through the service with a warm
//! pool, side by side in one run at 50 ms simulated round trip.
//!
//! The emulator (TLS, `with_rtt(50 ms)`) adds the round trip per handshake step (TCP, TLS,
//! upgrade) and before each turn's first response, so a direct SDK pays the connect and
//! the turn; through the service (on loopback, as a sidecar would be) the SDK pays a local
//! connect and the service's warm upstream pays only the turn's round trip. Node runs
//! `conformance/bench_sdk.mjs`, which alternates direct and service sample by sample.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use service::config::BackendChoice;
use service::secret::Secret;
use service::test_support::LoopbackServer;
use speech_emulator::{Emulator, EmulatorConfig};

const KEY: &str = "bench-sdk-key";
const RTT: Duration = Duration::from_millis(50);

/// Runs the benchmark (8 samples per case with `quick`, else 30).
pub fn run(quick: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(run_async(if quick { 8 } else { 30 }))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

async fn run_async(samples: usize) -> anyhow::Result<()> {
    speech_azure::install_crypto_provider();
    let root = crate::workspace_root();
    let conformance = root.join("conformance");
    if !conformance
        .join("node_modules/microsoft-cognitiveservices-speech-sdk")
        .is_dir()
    {
        bail!(
            "the JS SDK is not installed: run `npm ci` in conformance/ (or bash conformance/run.sh)"
        );
    }
    let emu = Emulator::start(
        EmulatorConfig::default()
            .with_key(KEY)
            .with_transcript("hello world")
            .with_rtt(RTT),
    )
    .await
    .context("starting the emulator")?;
    let ca = std::env::temp_dir().join(format!("bench-sdk-ca-{}.pem", std::process::id()));
    std::fs::write(&ca, emu.ca_cert_pem().context("the emulator serves TLS")?)?;

    let mut config = service::Config::defaults();
    config.backend = BackendChoice::Azure;
    config.azure_speech_key = Some(Secret::new(KEY));
    config.azure_speech_endpoint = Some(emu.base_url_http());
    config.azure_speech_ca_cert = Some(ca.clone());
    config.warm_pool_tts_size = 2;
    config.warm_pool_stt_size = 2;
    // recognizeOnce uses the interactive path: make it the service's configured pool.
    config.stt_mode = speech_core::RecognitionMode::Interactive;
    let state = service::build_state(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    state.warm_up().await;
    let server = LoopbackServer::start(&state, Duration::from_secs(5)).await?;

    println!(
        "sdk benchmark: JS Speech SDK, new synthesizer/recognizer per sample, emulator over TLS at {} ms simulated RTT, {samples} samples per case",
        RTT.as_millis()
    );
    let direct = emu.base_url_ws();
    let via = server.ws_url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("bench_sdk.mjs")
            .current_dir(&conformance)
            .env("DIRECT_URL", direct)
            .env("SERVICE_URL", via)
            .env("KEY", KEY)
            .env("SAMPLES", samples.to_string())
            .env("NODE_EXTRA_CA_CERTS", &ca)
            .output()
    })
    .await??;
    let _ = server.stop(Duration::from_secs(10)).await;
    emu.shutdown().await;
    let _ = std::fs::remove_file(
        std::env::temp_dir().join(format!("bench-sdk-ca-{}.pem", std::process::id())),
    );
    if !out.status.success() {
        bail!(
            "node bench_sdk.mjs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut cells: std::collections::BTreeMap<(String, String), Vec<f64>> = Default::default();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("unexpected output from node: {line}"))?;
        let (Some(case), Some(target), Some(ms)) =
            (v["case"].as_str(), v["target"].as_str(), v["ms"].as_f64())
        else {
            bail!("unexpected sample from node: {line}");
        };
        cells
            .entry((case.to_owned(), target.to_owned()))
            .or_default()
            .push(ms);
    }
    let mut med = |case: &str, target: &str| {
        median(
            cells
                .get_mut(&(case.to_owned(), target.to_owned()))
                .map_or(&mut [][..], |v| &mut v[..]),
        )
    };
    let rows = [
        (
            "tts",
            "tts_first_audio",
            med("tts", "direct"),
            med("tts", "service"),
        ),
        (
            "stt",
            "stt_first_result",
            med("stt", "direct"),
            med("stt", "service"),
        ),
    ];
    println!();
    println!(
        "{:<18} {:>16} {:>18}",
        "case", "direct p50 ms", "via service p50 ms"
    );
    for (_, what, d, s) in &rows {
        println!("{what:<18} {d:>16.1} {s:>18.1}");
    }
    println!();
    for (_, what, d, s) in &rows {
        println!("bench.sdk_direct_{what}_ms: {d:.1}");
        println!("bench.sdk_via_service_{what}_ms: {s:.1}");
    }
    for (_, what, d, s) in &rows {
        println!("ratio.sdk_via_service_vs_direct.{what}: {:.2}", s / d);
    }
    Ok(())
}
