//! Shared helpers: an emulator over real TLS and a client that trusts its CA.
#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use speech_azure::{AzureSpeech, ConnectionPolicy, Credentials, Endpoint, TlsOptions, TokenPolicy};
use speech_core::{
    AudioFormat, RecognitionEvent, RecognitionRequest, Recognizer, SpeechError, SynthesisEvent,
    SynthesisRequest, SynthesisSummary, Synthesizer,
};
use speech_emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use tokio::sync::mpsc;

pub const KEY: &str = "emulator-test-key-0123";
pub const VOICE: &str = "en-US-JennyNeural";

/// Bound for anything that should happen promptly: only used to fail instead of hanging,
/// never asserted as a timing.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// An emulator over TLS, pinned to [`KEY`].
pub async fn emulator(config: EmulatorConfig) -> EmulatorHandle {
    speech_azure::install_crypto_provider();
    let config = config.with_key(KEY);
    assert!(config.tls, "tests run over real TLS");
    Emulator::start(config).await.expect("emulator starts")
}

/// A policy with test-friendly timeouts (short enough that fault tests finish quickly).
pub fn policy() -> ConnectionPolicy {
    ConnectionPolicy {
        first_response_timeout: Duration::from_secs(5),
        frame_gap_timeout: Duration::from_millis(1500),
        ..ConnectionPolicy::default()
    }
}

/// A client for `emu` trusting its CA.
pub fn client(emu: &EmulatorHandle, credentials: Credentials) -> AzureSpeech {
    client_with(emu, credentials, policy(), TokenPolicy::default())
}

pub fn client_with(
    emu: &EmulatorHandle,
    credentials: Credentials,
    policy: ConnectionPolicy,
    token_policy: TokenPolicy,
) -> AzureSpeech {
    let pem = emu.ca_cert_pem().expect("TLS emulator");
    AzureSpeech::builder(
        Endpoint::host(&emu.base_url_http()).expect("endpoint"),
        credentials,
    )
    .tls(TlsOptions::new().with_root_pem(pem.as_bytes()).expect("CA"))
    .policy(policy)
    .token_policy(token_policy)
    .build()
    .expect("client builds")
}

/// Runs one synthesis turn, collecting its events.
pub async fn synth(
    s: &mut (dyn Synthesizer + '_),
    req: SynthesisRequest,
) -> (Result<SynthesisSummary, SpeechError>, Vec<SynthesisEvent>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    });
    let r = tokio::time::timeout(PATIENCE, s.synthesize(req, tx))
        .await
        .expect("turn finishes");
    let events = collect.await.expect("collector");
    (r, events)
}

/// Audio bytes of a list of events.
pub fn audio(events: &[SynthesisEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if let SynthesisEvent::Audio(b) = e {
            out.extend_from_slice(b);
        }
    }
    out
}

pub fn text(t: &str) -> SynthesisRequest {
    SynthesisRequest::text(t, VOICE, AudioFormat::Riff24Khz16BitMonoPcm)
}

/// 16 kHz 16-bit mono PCM: `ms` milliseconds of a quiet tone.
pub fn pcm(ms: usize) -> Vec<u8> {
    let samples = 16 * ms;
    let mut v = Vec::with_capacity(samples * 2);
    for i in 0..samples {
        let s = (((i % 32) as i16) - 16) * 200;
        v.extend_from_slice(&s.to_le_bytes());
    }
    v
}

/// Runs one recognition turn, feeding `audio` in 100 ms chunks.
pub async fn recognize(
    r: &mut (dyn Recognizer + '_),
    req: RecognitionRequest,
    audio: Vec<u8>,
) -> (Result<(), SpeechError>, Vec<RecognitionEvent>) {
    let (atx, arx) = mpsc::channel(16);
    let feeder = tokio::spawn(async move {
        for chunk in audio.chunks(3200) {
            if atx.send(Bytes::copy_from_slice(chunk)).await.is_err() {
                break;
            }
        }
    });
    let (tx, mut rx) = mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(e) = rx.recv().await {
            v.push(e);
        }
        v
    });
    let res = tokio::time::timeout(PATIENCE, r.recognize(req, arx, tx))
        .await
        .expect("turn finishes");
    feeder.abort();
    let events = collect.await.expect("collector");
    (res, events)
}

/// Waits until the emulator reports no open websocket.
pub async fn wait_all_closed(emu: &EmulatorHandle) {
    let r = emu
        .wait_for_counters(|c| c.connections_open == 0, PATIENCE)
        .await;
    assert!(r.is_ok(), "connections left open: {r:?}");
}
