//! The v2 (text-streaming) TTS websocket against the emulator, with a raw client: audio for
//! text that has arrived, before `text.end`; word boundaries in text order; stop; strict
//! violations.

mod common;

use common::*;
use speech_emulator::EmulatorConfig;
use speech_emulator::timing::synthesized_ms;

const V2_PATH: &str = "/tts/cognitiveservices/websocket/v2";
const FORMAT: &str = "raw-24khz-16bit-mono-pcm";

/// `synthesis.context` for a text-streaming request.
async fn stream_context(c: &mut Client, rid: &str, words: bool) {
    let ctx = serde_json::json!({"synthesis": {
        "audio": {"metadataOptions": {"wordBoundaryEnabled": words, "sessionEndEnabled": true},
                  "outputFormat": FORMAT},
        "language": {"autoDetection": false},
        "input": {"bidirectionalStreamingMode": true}}});
    c.text(
        "synthesis.context",
        rid,
        "application/json",
        &ctx.to_string(),
    )
    .await;
}

async fn piece(c: &mut Client, rid: &str, text: &str) {
    c.text("text.piece", rid, "text/plain", text).await;
}

async fn text_end(c: &mut Client, rid: &str) {
    c.text("text.end", rid, "text/plain", "").await;
}

fn words_of(msgs: &[Got]) -> Vec<(String, u64)> {
    msgs.iter()
        .filter(|m| m.path() == Some("audio.metadata"))
        .flat_map(|m| m.json()["Metadata"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["Type"] == "WordBoundary")
        .map(|m| {
            (
                m["Data"]["text"]["Text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                m["Data"]["Offset"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn audio_bytes(msgs: &[Got]) -> usize {
    msgs.iter()
        .filter(|m| m.path() == Some("audio"))
        .map(|m| m.payload().len())
        .sum()
}

#[tokio::test]
async fn speaks_each_clause_before_text_end_with_words_in_order() {
    let emu = start_plain().await;
    let mut c = connect(&emu, V2_PATH).await;
    c.speech_config(&new_id()).await;
    let rid = new_id();
    stream_context(&mut c, &rid, true).await;
    for p in ["The", " weather", " is", " mild,", " with"] {
        piece(&mut c, &rid, p).await;
    }
    // The first clause ("The weather is mild,") is complete: its audio comes although
    // text.end has not been sent.
    let mut early = Vec::new();
    loop {
        let m = c.recv().await;
        assert!(
            !matches!(m, Got::Close(_) | Got::Dropped(_)),
            "connection ended: {m:?}"
        );
        assert_ne!(
            m.path(),
            Some("turn.end"),
            "the turn cannot end before text.end"
        );
        let audio = m.path() == Some("audio") && !m.payload().is_empty();
        early.push(m);
        if audio {
            break;
        }
    }
    assert_eq!(early[0].path(), Some("turn.start"));
    assert_eq!(early[1].path(), Some("response"));
    for p in [" light", " clouds", " today."] {
        piece(&mut c, &rid, p).await;
    }
    text_end(&mut c, &rid).await;
    let rest = c.until_turn_end().await;
    let msgs: Vec<Got> = early.into_iter().chain(rest).collect();
    for m in &msgs {
        assert_eq!(m.header("X-RequestId"), Some(rid.as_str()), "{m:?}");
    }

    let words = words_of(&msgs);
    let texts: Vec<&str> = words.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        texts,
        [
            "The", "weather", "is", "mild", "with", "light", "clouds", "today"
        ]
    );
    assert!(
        words.windows(2).all(|w| w[0].1 < w[1].1),
        "offsets increase across segments: {words:?}"
    );
    // Two segments, each synthesized on the emulator's timeline: 48 bytes per ms at 24 kHz.
    let expected =
        48 * (synthesized_ms("The weather is mild,") + synthesized_ms("with light clouds today."));
    assert_eq!(audio_bytes(&msgs) as u64, expected);
    let last_audio = msgs
        .iter()
        .rfind(|m| m.path() == Some("audio"))
        .expect("audio");
    assert!(
        last_audio.payload().is_empty(),
        "terminal empty audio frame"
    );
    assert_eq!(emu.counters().turns_served, 1);

    // The socket serves an ordinary SSML request next, as v2 does.
    let rid2 = new_id();
    c.synthesize(&rid2, FORMAT, false, "Plain turn").await;
    let plain = c.until_turn_end().await;
    assert_eq!(
        audio_bytes(&plain) as u64,
        48 * synthesized_ms("Plain turn")
    );
    c.close().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn stop_ends_a_streaming_turn_and_the_socket_serves_the_next() {
    let emu = start_plain().await;
    let mut c = connect(&emu, V2_PATH).await;
    c.speech_config(&new_id()).await;
    let rid = new_id();
    stream_context(&mut c, &rid, false).await;
    piece(&mut c, &rid, "First clause, and").await;
    loop {
        let m = c.recv().await;
        if m.path() == Some("audio") && !m.payload().is_empty() {
            break;
        }
        assert_ne!(m.path(), Some("turn.end"));
    }
    c.text(
        "synthesis.control",
        &rid,
        "application/json",
        r#"{"action":"stop"}"#,
    )
    .await;
    let tail = c.until_turn_end().await;
    assert!(
        tail.iter()
            .all(|m| m.header("X-RequestId") == Some(rid.as_str()))
    );
    // Text sent after the stop, for the stopped request, is ignored (it crossed the stop).
    piece(&mut c, &rid, " more").await;
    text_end(&mut c, &rid).await;

    let rid2 = new_id();
    stream_context(&mut c, &rid2, false).await;
    piece(&mut c, &rid2, "Again.").await;
    text_end(&mut c, &rid2).await;
    let msgs = c.until_turn_end().await;
    assert!(
        msgs.iter()
            .all(|m| m.header("X-RequestId") == Some(rid2.as_str()))
    );
    assert_eq!(audio_bytes(&msgs) as u64, 48 * synthesized_ms("Again."));
    c.close().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn strict_mode_closes_on_text_without_a_streaming_request() {
    let emu = start(EmulatorConfig::plain().with_key(KEY).with_strict(true)).await;
    let mut c = connect(&emu, V2_PATH).await;
    c.speech_config(&new_id()).await;
    piece(&mut c, &new_id(), "orphan").await;
    let (_, end) = c.until_end().await;
    assert_eq!(end.close_code(), Some(1002), "{end:?}");
    emu.shutdown().await;
}
