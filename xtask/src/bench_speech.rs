//! `cargo xtask bench speech`: time to first audio for a new session served COLD versus
//! WARM, for the TTS websocket, TTS REST and STT websocket (first hypothesis), against the
//! Azure Speech emulator over real TLS with a simulated round trip (20 ms by default).
//!
//! STT is measured two ways. **Pre-recorded** (`stt`): the whole utterance is queued
//! before recognition starts, as for a client that already has its audio; the emulator
//! answers once it has 300 ms worth of bytes, so the audio arrives at once and the figure
//! is dominated by the connection. **Real time** (`stt_realtime`): a live caller, whose
//! 100 ms frames become available at real-time pace from the moment the call asks for a
//! connection; a COLD call buffers the frames that arrive while it connects and sends
//! them once connected. The first result cannot come before 300 ms of speech exist, so
//! the pool saves only the part of the connect that does not overlap the caller's
//! speaking: `bench.stt_realtime_saved_ms` is cold p50 minus warm p50.
//!
//! For each kind two pools run side by side on one emulator and one client:
//! - COLD: `warm_target = 0`, no maintainer, so every `acquire()` creates and warms a
//!   connection inline (token-free key auth: TCP + TLS + upgrade + `speech.config`);
//! - WARM: `warm_target = 1` with the maintainer, prepared before timing, so `acquire()`
//!   hands out a connected, warmed socket.
//!
//! One sample = `acquire()` + one turn, timed from just before `acquire()` to the first
//! audio chunk (TTS) or first `speech.hypothesis` (STT) reaching the caller. COLD and WARM
//! samples alternate so both see the same machine load, and every sample checks the tier
//! the pool reports, so a WARM sample that was really COLD fails the run instead of
//! flattering the figures. Reported: the median per case, `bench.<name>_ms: <p50>`, and
//! `ratio.warm_vs_cold.<kind>: <warm p50 / cold p50>`.
//!
//! The emulator charges one round trip for TCP set-up, one for TLS, one for the websocket
//! upgrade and one before each turn's (or REST response's) first byte, so the expected
//! figures are about 4 RTT cold versus 1 RTT warm for websockets.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use pool_core::{Pool, Tier};
use speech_azure::{AzureSpeech, Credentials, Endpoint, SttWsOptions, TlsOptions, TtsWsOptions};
use speech_core::{
    AudioFormat, RecognitionEvent, RecognitionRequest, RecognizerManager, SynthesisRequest,
    SynthesizerManager,
};
use speech_emulator::{Emulator, EmulatorConfig};
use tokio::sync::mpsc;
use tokio::time::Instant;

const KEY: &str = "bench-key";
const VOICE: &str = "en-US-JennyNeural";
const RTT: Duration = Duration::from_millis(20);

/// Runs the benchmark: `quick` takes 8 samples per case instead of 30.
pub fn run(quick: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(run_async(if quick { 8 } else { 30 }))
}

/// Which pool a sample comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Cold,
    Warm,
}

async fn run_async(samples: usize) -> anyhow::Result<()> {
    speech_azure::install_crypto_provider();
    let emu = Emulator::start(EmulatorConfig::default().with_key(KEY).with_rtt(RTT))
        .await
        .context("starting the emulator")?;
    let pem = emu
        .ca_cert_pem()
        .context("the emulator serves TLS")?
        .to_owned();
    let azure = AzureSpeech::builder(Endpoint::host(&emu.base_url_http())?, Credentials::key(KEY))
        .tls(TlsOptions::new().with_root_pem(pem.as_bytes())?)
        .build()?;

    println!(
        "speech first-audio benchmark: emulator over TLS, simulated RTT {} ms, {samples} samples per case",
        RTT.as_millis()
    );
    let mut rows = Vec::new();
    for kind in ["tts_ws", "tts_rest", "stt", "stt_realtime"] {
        let (cold, warm) = match kind {
            "tts_ws" => {
                synth_case(
                    || Ok(azure.tts_ws_manager(TtsWsOptions::default())),
                    samples,
                )
                .await?
            }
            "tts_rest" => synth_case(|| Ok(azure.tts_rest_manager()), samples).await?,
            "stt" => stt_case(&azure, samples, Audio::PreRecorded).await?,
            _ => stt_case(&azure, samples, Audio::RealTime).await?,
        };
        rows.push((kind, cold, warm));
    }
    let streamed = crate::bench_stream::run(&emu, &pem, KEY, samples).await?;

    println!();
    println!(
        "{:<26} {:>12} {:>12} {:>12} {:>12}",
        "kind", "cold p50 ms", "cold p90 ms", "warm p50 ms", "warm p90 ms"
    );
    for (kind, cold, warm) in &rows {
        let label = match *kind {
            "stt" => "stt (pre-recorded audio)",
            "stt_realtime" => "stt (real-time audio)",
            other => other,
        };
        println!(
            "{label:<26} {:>12.1} {:>12.1} {:>12.1} {:>12.1}",
            pct(cold, 50),
            pct(cold, 90),
            pct(warm, 50),
            pct(warm, 90)
        );
    }
    println!();
    for (kind, cold, warm) in &rows {
        let what = match *kind {
            "stt" => "first_hypothesis",
            "stt_realtime" => "first_result",
            _ => "first_audio",
        };
        println!("bench.{kind}_cold_{what}_ms: {:.1}", pct(cold, 50));
        println!("bench.{kind}_warm_{what}_ms: {:.1}", pct(warm, 50));
        if *kind == "stt_realtime" {
            println!(
                "bench.{kind}_saved_ms: {:.1}",
                pct(cold, 50) - pct(warm, 50)
            );
        }
    }
    // The ratios compare connection paths; the real-time case is reported as the
    // milliseconds saved instead, since its floor is the caller's speech, not the network.
    for (kind, cold, warm) in rows.iter().filter(|(kind, ..)| *kind != "stt_realtime") {
        println!(
            "ratio.warm_vs_cold.{kind}: {:.2}",
            pct(warm, 50) / pct(cold, 50)
        );
    }
    // LLM text streamed into TTS, through the service (bench_stream.rs).
    let (stream, full) = (pct(&streamed.stream, 50), pct(&streamed.full_text, 50));
    println!();
    println!(
        "LLM-paced text ({} tokens/s, a 40-token answer), through the service, warm \
         connections, RTT {} ms service <-> speech service; first token -> first audio at the client:",
        crate::bench_stream::TOKENS_PER_SECOND,
        RTT.as_millis()
    );
    println!("{:<44} {:>12} {:>12}", "path", "p50 ms", "p90 ms");
    println!(
        "{:<44} {:>12.1} {:>12.1}",
        "stream (GET /api/v1/tts/stream, per token)",
        stream,
        pct(&streamed.stream, 90)
    );
    println!(
        "{:<44} {:>12.1} {:>12.1}",
        "full text (last token, then POST /api/v1/tts)",
        full,
        pct(&streamed.full_text, 90)
    );
    println!("bench.tts_stream_first_audio_ms: {stream:.1}");
    println!("bench.tts_full_text_first_audio_ms: {full:.1}");
    println!(
        "ratio.stream_vs_full_text.first_audio: {:.2}",
        stream / full
    );
    let left = emu.shutdown().await;
    if left != 0 {
        bail!("{left} emulator tasks still running after shutdown");
    }
    Ok(())
}

fn pct(v: &[f64], p: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() - 1) * p).div_ceil(100);
    s[i.min(s.len() - 1)]
}

/// The COLD pool (nothing pre-warmed, no maintainer) and the WARM pool (one pre-warmed
/// connection, kept by the maintainer) of one kind.
fn pools<M: pool_core::Manager>(
    make: impl Fn() -> anyhow::Result<M>,
) -> anyhow::Result<(Pool<M>, Pool<M>)> {
    let cold = Pool::builder(make()?)
        .name("cold")
        .warm_target(0)
        .max_size(4)
        .build()?;
    let warm = Pool::builder(make()?)
        .name("warm")
        .warm_target(1)
        .max_size(4)
        .background_warmup(true)
        .build()?;
    Ok((cold, warm))
}

fn check_tier(mode: Mode, tier: Tier) -> anyhow::Result<()> {
    let want = match mode {
        Mode::Cold => Tier::Cold,
        Mode::Warm => Tier::Warm,
    };
    if tier != want {
        bail!("a {mode:?} sample was served {tier:?}");
    }
    Ok(())
}

async fn synth_case(
    make: impl Fn() -> anyhow::Result<SynthesizerManager>,
    samples: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (cold, warm) = pools(make)?;
    warm.prepare().await?;
    let (mut c, mut w) = (Vec::new(), Vec::new());
    // One unrecorded round of each first, so lazy process-wide set-up is not measured.
    for i in 0..=samples {
        for mode in [Mode::Cold, Mode::Warm] {
            let pool = if mode == Mode::Cold { &cold } else { &warm };
            let ms = synth_sample(pool, mode, i).await?;
            if i > 0 {
                if mode == Mode::Cold {
                    c.push(ms)
                } else {
                    w.push(ms)
                }
            }
            // Let the maintainer put the warm connection back and the cold one close.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    cold.shutdown().await;
    warm.shutdown().await;
    Ok((c, w))
}

async fn synth_sample(
    pool: &Pool<SynthesizerManager>,
    mode: Mode,
    i: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut g = pool.acquire().await?;
    check_tier(mode, g.tier())?;
    let (tx, mut rx) = mpsc::channel(1024);
    let req = SynthesisRequest::text(
        format!("Hello, this is sample {i}."),
        VOICE,
        AudioFormat::Raw24Khz16BitMonoPcm,
    );
    let turn = g.synthesize(req, tx);
    let first = async {
        let t = rx.recv().await.map(|_| start.elapsed());
        while rx.recv().await.is_some() {}
        t
    };
    let (res, first) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(turn, first) })
            .await
            .context("a synthesis sample hung")?;
    res?;
    let first = first.context("no audio")?;
    Ok(first.as_secs_f64() * 1000.0)
}

/// How an STT sample's audio reaches the recognizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audio {
    /// The whole utterance queued before recognition starts.
    PreRecorded,
    /// 100 ms frames at real-time pace from the moment the connection is asked for.
    RealTime,
}

/// One frame of the real-time case: 100 ms of 16 kHz 16-bit mono audio.
const FRAME: Duration = Duration::from_millis(100);
/// Frames per real-time utterance: one second of speech.
const REALTIME_FRAMES: usize = 10;

async fn stt_case(
    azure: &AzureSpeech,
    samples: usize,
    audio: Audio,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (cold, warm) = pools(|| Ok(azure.stt_ws_manager(SttWsOptions::new("en-US"))?))?;
    warm.prepare().await?;
    let (mut c, mut w) = (Vec::new(), Vec::new());
    for i in 0..=samples {
        for mode in [Mode::Cold, Mode::Warm] {
            let pool = if mode == Mode::Cold { &cold } else { &warm };
            let ms = match audio {
                Audio::PreRecorded => stt_sample(pool, mode).await?,
                Audio::RealTime => stt_realtime_sample(pool, mode).await?,
            };
            if i > 0 {
                if mode == Mode::Cold {
                    c.push(ms)
                } else {
                    w.push(ms)
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    cold.shutdown().await;
    warm.shutdown().await;
    Ok((c, w))
}

async fn stt_sample(pool: &Pool<RecognizerManager>, mode: Mode) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut g = pool.acquire().await?;
    check_tier(mode, g.tier())?;
    let (atx, arx) = mpsc::channel(16);
    // 400 ms of 16 kHz 16-bit mono audio, enough for one hypothesis (one per ~300 ms).
    let pcm: Vec<u8> = (0..6400u32)
        .flat_map(|i| ((((i % 32) as i16) - 16) * 200).to_le_bytes())
        .collect();
    for chunk in pcm.chunks(3200) {
        atx.send(Bytes::copy_from_slice(chunk)).await?;
    }
    drop(atx);
    let (tx, mut rx) = mpsc::channel(1024);
    let turn = g.recognize(RecognitionRequest::new("en-US"), arx, tx);
    let first = async {
        let mut t = None;
        while let Some(ev) = rx.recv().await {
            if t.is_none() && matches!(ev, RecognitionEvent::Hypothesis { .. }) {
                t = Some(start.elapsed());
            }
        }
        t
    };
    let (res, first) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(turn, first) })
            .await
            .context("a recognition sample hung")?;
    res?;
    let first = first.context("no hypothesis")?;
    Ok(first.as_secs_f64() * 1000.0)
}

/// A live caller: frames become available every 100 ms from the moment the call asks for
/// its connection, and queue up (in the channel) while a COLD connection is being made.
/// Timed from that moment to the first recognition result (hypothesis or phrase).
async fn stt_realtime_sample(pool: &Pool<RecognizerManager>, mode: Mode) -> anyhow::Result<f64> {
    let start = Instant::now();
    let (atx, arx) = mpsc::channel(REALTIME_FRAMES + 1);
    let frame: Bytes = (0..1600u32)
        .flat_map(|i| ((((i % 32) as i16) - 16) * 200).to_le_bytes())
        .collect::<Vec<u8>>()
        .into();
    // The caller speaks whether or not the connection is ready: frame i is complete at
    // (i + 1) * 100 ms.
    let caller = tokio::spawn(async move {
        let mut clock = tokio::time::interval_at(start + FRAME, FRAME);
        for _ in 0..REALTIME_FRAMES {
            clock.tick().await;
            if atx.send(frame.clone()).await.is_err() {
                break;
            }
        }
    });
    let mut g = pool.acquire().await?;
    check_tier(mode, g.tier())?;
    let (tx, mut rx) = mpsc::channel(1024);
    let turn = g.recognize(RecognitionRequest::new("en-US"), arx, tx);
    let first = async {
        let mut t = None;
        while let Some(ev) = rx.recv().await {
            let result = matches!(
                ev,
                RecognitionEvent::Hypothesis { .. } | RecognitionEvent::Phrase { .. }
            );
            if t.is_none() && result {
                t = Some(start.elapsed());
            }
        }
        t
    };
    let (res, first) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(turn, first) })
            .await
            .context("a real-time recognition sample hung")?;
    res?;
    caller.await.context("the caller task")?;
    let first = first.context("no recognition result")?;
    Ok(first.as_secs_f64() * 1000.0)
}
