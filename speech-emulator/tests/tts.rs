//! TTS over websocket against the emulator, with a raw client.

mod common;

use common::*;
use speech_emulator::EmulatorConfig;
use speech_emulator::timing::{MS_PER_CHAR, TICKS_PER_MS, synthesized_ms};

/// One full turn: returns (messages, audio bytes).
async fn turn(c: &mut Client, format: &str, words: bool, text: &str) -> (Vec<Got>, Vec<u8>) {
    let rid = new_id();
    c.synthesize(&rid, format, words, text).await;
    let msgs = c.until_turn_end().await;
    for m in &msgs {
        assert_eq!(
            m.header("X-RequestId"),
            Some(rid.as_str()),
            "every message echoes X-RequestId: {m:?}"
        );
    }
    let audio = msgs
        .iter()
        .filter(|m| m.path() == Some("audio"))
        .flat_map(|m| m.payload().to_vec())
        .collect();
    (msgs, audio)
}

#[tokio::test]
async fn happy_path_pcm_with_word_boundaries_and_sequential_turns() {
    let emu = start_plain().await;
    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    let text = "Hello brave new world";
    let (msgs, audio) = turn(&mut c, "raw-24khz-16bit-mono-pcm", true, text).await;

    // turn.start, response(streamId), audio…, metadata, empty audio, turn.end.
    assert_eq!(msgs[0].path(), Some("turn.start"));
    assert!(msgs[0].json()["context"]["serviceTag"].is_string());
    assert_eq!(msgs[1].path(), Some("response"));
    let stream_id = msgs[1].json()["audio"]["streamId"]
        .as_str()
        .expect("streamId")
        .to_owned();
    let audio_frames: Vec<_> = msgs.iter().filter(|m| m.path() == Some("audio")).collect();
    assert!(audio_frames.len() >= 3, "audio arrives in several frames");
    for f in &audio_frames {
        assert_eq!(f.header("X-StreamId"), Some(stream_id.as_str()));
    }
    let last_audio = audio_frames.last().expect("frames");
    assert!(
        last_audio.payload().is_empty(),
        "terminal empty audio frame"
    );
    assert_eq!(
        last_audio.header("Content-Type"),
        None,
        "terminal frame has no Content-Type"
    );
    assert!(audio_frames[0].header("Content-Type").is_some());
    assert_eq!(msgs.last().and_then(Got::path), Some("turn.end"));
    // Service style on the wire: `Name:value`, no space.
    let Got::Text { raw, .. } = &msgs[0] else {
        panic!("the first message is not a text frame: {:?}", msgs[0]);
    };
    assert!(raw.contains("Path:turn.start\r\n"), "{raw}");

    // Audio length: 24 kHz * 2 bytes * duration.
    let ms = synthesized_ms(text);
    assert_eq!(audio.len() as u64, 48 * ms);
    assert!(audio.iter().any(|&b| b != 0), "not all silence");

    // Word boundaries, in order, with offsets on the synthetic timeline.
    let words: Vec<_> = msgs
        .iter()
        .filter(|m| m.path() == Some("audio.metadata"))
        .flat_map(|m| m.json()["Metadata"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["Type"] == "WordBoundary")
        .collect();
    let texts: Vec<_> = words
        .iter()
        .map(|w| w["Data"]["text"]["Text"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(texts, ["Hello", "brave", "new", "world"]);
    assert_eq!(
        words[1]["Data"]["Offset"],
        (50 + 6 * MS_PER_CHAR) * TICKS_PER_MS
    );
    let session_end = msgs
        .iter()
        .filter(|m| m.path() == Some("audio.metadata"))
        .flat_map(|m| m.json()["Metadata"].as_array().cloned().unwrap_or_default())
        .find(|m| m["Type"] == "SessionEnd")
        .expect("SessionEnd when sessionEndEnabled");
    assert_eq!(session_end["Data"]["Offset"], ms * TICKS_PER_MS);

    // A second and third turn on the same socket, no new speech.config.
    let (_, audio2) = turn(&mut c, "raw-16khz-16bit-mono-pcm", false, "Second").await;
    assert_eq!(audio2.len() as u64, 32 * synthesized_ms("Second"));
    let (msgs3, _) = turn(&mut c, "raw-16khz-16bit-mono-pcm", false, "Third").await;
    assert!(
        msgs3.iter().all(|m| m.path() != Some("audio.metadata")
            || m.json()["Metadata"][0]["Type"] == "SessionEnd")
    );
    c.close().await;
    settle(&emu).await;
    let n = emu.counters();
    assert_eq!(
        (n.turns_served, n.connections_opened, n.connections_open),
        (3, 1, 0)
    );
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn formats_riff_mp3_and_mulaw_on_the_legacy_path() {
    let emu = start_plain().await;
    let mut c = connect(&emu, TTS_LEGACY_PATH).await;
    c.speech_config(&new_id()).await;
    let text = "Format check.";
    let ms = synthesized_ms(text);

    let (_, riff) = turn(&mut c, "riff-16khz-16bit-mono-pcm", false, text).await;
    assert_eq!(&riff[..4], b"RIFF");
    assert_eq!(&riff[8..16], b"WAVEfmt ");
    assert_eq!(
        u32::from_le_bytes([riff[24], riff[25], riff[26], riff[27]]),
        16000
    );
    let data_len = u32::from_le_bytes([riff[40], riff[41], riff[42], riff[43]]) as usize;
    assert_eq!(data_len + 44, riff.len());
    assert_eq!(data_len as u64, 32 * ms);

    let (msgs, mp3) = turn(&mut c, "audio-24khz-48kbitrate-mono-mp3", false, text).await;
    assert_eq!(&mp3[..2], &[0xff, 0xf3], "MPEG-2 layer III frame sync");
    assert_eq!(mp3.len() % 144, 0, "whole 144-byte frames");
    let frame_ms = mp3.len() as u64 / 144 * 24;
    assert!(frame_ms >= ms && frame_ms < ms + 24);
    let first = msgs
        .iter()
        .find(|m| m.path() == Some("audio"))
        .expect("audio");
    assert_eq!(first.header("Content-Type"), Some("audio/mpeg"));

    let (_, ulaw) = turn(&mut c, "raw-8khz-8bit-mono-mulaw", false, text).await;
    assert_eq!(ulaw.len() as u64, 8 * ms);
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn oversized_and_invalid_ssml_close_1007() {
    let emu = start_plain().await;
    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    let big = "a ".repeat(33 * 1024);
    let rid = new_id();
    c.text("ssml", &rid, "application/ssml+xml", &ssml(&big))
        .await;
    let (_, end) = c.until_end().await;
    assert_eq!(end.close_code(), Some(1007), "{end:?}");

    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    c.text(
        "ssml",
        &new_id(),
        "application/ssml+xml",
        "<speak><voice>unclosed</speak>",
    )
    .await;
    let (_, end) = c.until_end().await;
    assert_eq!(end.close_code(), Some(1007));

    let mut c = connect(&emu, TTS_PATH).await;
    c.text(
        "synthesis.context",
        &new_id(),
        "application/json",
        r#"{"synthesis":{"audio":{"outputFormat":"riff-96khz-64bit-stereo"}}}"#,
    )
    .await;
    let (_, end) = c.until_end().await;
    assert_eq!(end.close_code(), Some(1007), "unknown output format");

    // A message over the emulator's 1 MiB cap: 1009 (message too big).
    let mut c = connect(&emu, TTS_PATH).await;
    c.raw_binary(vec![0u8; 2 << 20]).await;
    let (_, end) = c.until_end().await;
    assert_eq!(end.close_code(), Some(1009));
    settle(&emu).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn synthesis_control_stop_ends_the_turn_early() {
    let emu = start_plain().await;
    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    let rid = new_id();
    // Ten minutes of text: far more audio than will be sent before the stop lands.
    let text = "word ".repeat(2000);
    c.synthesize(&rid, "raw-48khz-16bit-mono-pcm", false, &text)
        .await;
    assert_eq!(c.recv().await.path(), Some("turn.start"));
    c.text(
        "synthesis.control",
        &rid,
        "application/json",
        r#"{"action":"stop"}"#,
    )
    .await;
    let msgs = c.until_turn_end().await;
    let audio: usize = msgs
        .iter()
        .filter(|m| m.path() == Some("audio"))
        .map(|m| m.payload().len())
        .sum();
    assert!(
        (audio as u64) < 96 * synthesized_ms(text.trim()),
        "stopped before the end"
    );
    // The stopped turn still ends the normal way: the terminal empty frame, then turn.end.
    let n = msgs.len();
    assert_eq!(msgs[n - 1].path(), Some("turn.end"));
    assert_eq!(msgs[n - 2].path(), Some("audio"));
    assert!(
        msgs[n - 2].payload().is_empty(),
        "terminal empty audio frame"
    );
    assert_eq!(emu.counters().turns_stopped, 1);
    // The socket is still good for the next turn, and a late stop naming the finished
    // turn (it crossed turn.end on the wire) does not cut the next one short.
    let next = new_id();
    c.synthesize(&next, "raw-16khz-16bit-mono-pcm", false, "after stop")
        .await;
    c.text(
        "synthesis.control",
        &rid,
        "application/json",
        r#"{"action":"stop"}"#,
    )
    .await;
    let msgs = c.until_turn_end().await;
    let a: usize = msgs
        .iter()
        .filter(|m| m.path() == Some("audio"))
        .map(|m| m.payload().len())
        .sum();
    assert_eq!(a as u64, 32 * synthesized_ms("after stop"));
    assert_eq!(
        emu.counters().turns_stopped,
        1,
        "the stale stop was ignored"
    );
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn overlapping_turns_are_queued_in_lenient_mode() {
    let emu = start_plain().await;
    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    let (a, b) = (new_id(), new_id());
    c.synthesize(&a, "raw-16khz-16bit-mono-pcm", false, "first")
        .await;
    c.synthesize(&b, "raw-16khz-16bit-mono-pcm", false, "second")
        .await;
    let first = c.until_turn_end().await;
    let second = c.until_turn_end().await;
    assert!(
        first
            .iter()
            .all(|m| m.header("X-RequestId") == Some(a.as_str()))
    );
    assert!(
        second
            .iter()
            .all(|m| m.header("X-RequestId") == Some(b.as_str()))
    );
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn strict_mode_enforces_the_protocol() {
    let emu = start(EmulatorConfig::plain().with_key(KEY).with_strict(true)).await;
    // Missing X-ConnectionId → 400 at the handshake.
    let r = refused(&emu, TTS_PATH, &[("Ocp-Apim-Subscription-Key", KEY)]).await;
    assert_eq!(r.status(), 400);
    // ssml before speech.config → 1002.
    let mut c = connect(&emu, TTS_PATH).await;
    c.synthesize(&new_id(), "raw-16khz-16bit-mono-pcm", false, "x")
        .await;
    let (_, end) = c.until_end().await;
    assert_eq!(end.close_code(), Some(1002));
    // Overlapping turns → 1002.
    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    c.synthesize(&new_id(), "raw-16khz-16bit-mono-pcm", false, "one")
        .await;
    c.synthesize(&new_id(), "raw-16khz-16bit-mono-pcm", false, "two")
        .await;
    let (_, end) = c.until_end().await;
    assert_eq!(end.close_code(), Some(1002));
    // speech.config twice → 1002.
    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    c.speech_config(&new_id()).await;
    let (_, end) = c.until_end().await;
    assert_eq!(end.close_code(), Some(1002));
    settle(&emu).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn edge_style_options_in_speech_config_and_all_metadata_kinds() {
    let emu = start_plain().await;
    let mut c = connect(&emu, TTS_PATH).await;
    // Edge-style: output options in speech.config, no synthesis.context.
    c.text(
        "speech.config",
        &new_id(),
        "application/json",
        r#"{"context":{"synthesis":{"audio":{"metadataoptions":{"sentenceBoundaryEnabled":"true","wordBoundaryEnabled":"true","punctuationBoundaryEnabled":true,"visemeEnabled":true,"bookmarkEnabled":true},"outputFormat":"audio-24khz-48kbitrate-mono-mp3"}}}}"#,
    )
    .await;
    let rid = new_id();
    let doc = "<speak version='1.0' xml:lang='en-US'><voice name='x'>Hi there. <bookmark mark='m1'/>Bye!</voice></speak>";
    c.text("ssml", &rid, "application/ssml+xml", doc).await;
    let msgs = c.until_turn_end().await;
    let kinds: Vec<(String, String)> = msgs
        .iter()
        .filter(|m| m.path() == Some("audio.metadata"))
        .flat_map(|m| m.json()["Metadata"].as_array().cloned().unwrap_or_default())
        .map(|m| {
            let t = m["Type"].as_str().unwrap_or_default().to_owned();
            let b = m["Data"]["text"]["BoundaryType"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (t, b)
        })
        .collect();
    for want in [
        ("SentenceBoundary", "SentenceBoundary"),
        ("WordBoundary", "WordBoundary"),
        ("WordBoundary", "PunctuationBoundary"),
        ("Viseme", ""),
        ("Bookmark", ""),
    ] {
        assert!(
            kinds.iter().any(|(t, b)| t == want.0 && b == want.1),
            "missing {want:?} in {kinds:?}"
        );
    }
    let first = msgs
        .iter()
        .find(|m| m.path() == Some("audio"))
        .expect("audio");
    assert_eq!(&first.payload()[..2], &[0xff, 0xf3]);
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}
