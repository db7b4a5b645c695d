//! The `bench speech` case for LLM text streamed into TTS: an answer written by an LLM at
//! 30 tokens/s (40 tokens), spoken through the service, time from the **first token** to
//! the **first audio byte at the client**:
//! - **stream**: at the first token the client opens `GET /api/v1/tts/stream` and sends
//!   each token as it is written (`{"type":"text"}`), then `{"type":"end"}`; the service
//!   speaks each clause on Azure's v2 websocket as soon as its text is there;
//! - **full text**: the client waits for the last token, then sends the whole answer to
//!   `POST /api/v1/tts`.
//!
//! Both run through the service (Azure backend, warm pools) against the emulator over TLS
//! with the simulated round trip between the service and the speech service (20 ms); the
//! client talks to the service over loopback. Samples alternate between the two paths and
//! each checks that its connection was WARM. The emulator models no synthesis compute
//! time: each segment's first audio leaves one round trip after its text arrived, the same
//! rule as a whole-text turn, so the ratio measures what waiting for the text costs.

use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use service::config::{BackendChoice, Config};
use service::secret::Secret;
use service::test_support::LoopbackServer;
use speech_emulator::EmulatorHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The LLM's pace.
pub(crate) const TOKENS_PER_SECOND: f64 = 30.0;
/// The answer: 40 whitespace-separated tokens (about one token per word, as for English
/// with common tokenizers). Its first clause ends at the 7th token, so a clause-by-clause
/// speaker has to wait for 8 tokens, not 1.
const ANSWER: &str = "The weather in Paris today is mild, with light clouds in the morning \
    and sunshine after noon. Expect a high of nineteen degrees and a gentle breeze from the \
    west, so a light jacket should be enough for this evening.";
const TOKENS: usize = 40;

/// The answer as the LLM streams it: words with their leading space.
fn tokens() -> Vec<String> {
    ANSWER
        .split_whitespace()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// First-audio times (ms) of the stream path and of the full-text path.
pub(crate) struct StreamFigures {
    pub(crate) stream: Vec<f64>,
    pub(crate) full_text: Vec<f64>,
}

/// Runs the case against `emu` (whose CA is `pem`) with `samples` samples per path.
pub(crate) async fn run(
    emu: &EmulatorHandle,
    pem: &str,
    key: &str,
    samples: usize,
) -> anyhow::Result<StreamFigures> {
    let tokens = tokens();
    if tokens.len() != TOKENS {
        bail!("the answer has {} tokens, not {TOKENS}", tokens.len());
    }
    let ca = std::env::temp_dir().join(format!(
        "speech-pool-bench-stream-ca-{}.pem",
        std::process::id()
    ));
    std::fs::write(&ca, pem).context("writing the emulator's CA")?;
    let mut config = Config::defaults();
    config.backend = BackendChoice::Azure;
    config.azure_speech_key = Some(Secret::new(key));
    config.azure_speech_endpoint = Some(emu.base_url_http());
    config.azure_speech_ca_cert = Some(ca.clone());
    config.warm_pool_tts_size = 2;
    config.warm_pool_stt_size = 1;
    config.warm_pool_tts_stream_size = 2;
    let state = service::build_state(&config).context("the service's state")?;
    state.warm_up().await;
    let server = LoopbackServer::start(&state, Duration::from_secs(5)).await?;
    let client = service::test_support::client();
    let interval = Duration::from_secs_f64(1.0 / TOKENS_PER_SECOND);

    let mut figures = StreamFigures {
        stream: Vec::new(),
        full_text: Vec::new(),
    };
    // One unrecorded round first, so lazy set-up is not measured.
    for i in 0..=samples {
        let s = tokio::time::timeout(
            Duration::from_secs(30),
            stream_sample(&server, &tokens, interval),
        )
        .await
        .context("a streaming sample hung")??;
        let f = tokio::time::timeout(
            Duration::from_secs(30),
            full_text_sample(&server, &client, interval),
        )
        .await
        .context("a full-text sample hung")??;
        if i > 0 {
            figures.stream.push(s);
            figures.full_text.push(f);
        }
    }
    server.stop(Duration::from_secs(30)).await?;
    let _ = std::fs::remove_file(ca);
    Ok(figures)
}

/// Tokens go out at the LLM's pace from the first one; returns first token → first audio.
async fn stream_sample(
    server: &LoopbackServer,
    tokens: &[String],
    interval: Duration,
) -> anyhow::Result<f64> {
    let first_token = Instant::now();
    let url = server.ws_url("/api/v1/tts/stream?format=raw-24khz-16bit-mono-pcm");
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut tx, mut rx) = ws.split();
    let hello: Value = match rx.next().await {
        Some(Ok(Message::Text(t))) => serde_json::from_str(&t)?,
        other => bail!("no connected message: {other:?}"),
    };
    if hello["tier"] != "warm" {
        bail!("a stream sample was served {}", hello["tier"]);
    }
    let owned: Vec<String> = tokens.to_vec();
    let writer = async move {
        for (i, t) in owned.into_iter().enumerate() {
            // Tokens written while the socket opened go at once, then at the LLM's pace.
            tokio::time::sleep_until(first_token + interval.mul_f64(i as f64)).await;
            tx.send(Message::text(
                json!({"type": "text", "text": t}).to_string(),
            ))
            .await?;
        }
        tx.send(Message::text(r#"{"type":"end"}"#)).await?;
        anyhow::Ok(tx)
    };
    let reader = async {
        let mut first = None;
        let mut end = Value::Null;
        while let Some(msg) = rx.next().await {
            match msg? {
                Message::Binary(_) => {
                    first.get_or_insert_with(|| first_token.elapsed());
                }
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if v["type"] != "word" {
                        end = v;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        anyhow::Ok((first, end))
    };
    let (written, read) = tokio::join!(writer, reader);
    drop(written?);
    let (first, end) = read?;
    if end["type"] != "turn_end" {
        bail!("the stream did not end with turn_end: {end}");
    }
    Ok(first.context("no audio")?.as_secs_f64() * 1000.0)
}

/// Waits for the last token, then `POST /api/v1/tts`; returns first token → first audio.
async fn full_text_sample(
    server: &LoopbackServer,
    client: &reqwest::Client,
    interval: Duration,
) -> anyhow::Result<f64> {
    let first_token = Instant::now();
    tokio::time::sleep_until(first_token + interval.mul_f64((TOKENS - 1) as f64)).await;
    let mut resp = client
        .post(server.url("/api/v1/tts"))
        .header("content-type", "application/json")
        .body(json!({"text": ANSWER, "format": "raw-24khz-16bit-mono-pcm"}).to_string())
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("POST /api/v1/tts answered {}", resp.status());
    }
    let tier = resp
        .headers()
        .get(service::TIER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if tier != "warm" {
        bail!("a full-text sample was served {tier}");
    }
    let mut first = None;
    while let Some(chunk) = resp.chunk().await? {
        if !chunk.is_empty() {
            first.get_or_insert_with(|| first_token.elapsed());
        }
    }
    Ok(first.context("no audio")?.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_forty_tokens_that_rebuild_it() {
        let t = tokens();
        assert_eq!(t.len(), TOKENS);
        assert_eq!(
            t.concat().split_whitespace().collect::<Vec<_>>().join(" "),
            ANSWER.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }
}
