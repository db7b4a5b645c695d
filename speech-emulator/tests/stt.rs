//! STT over websocket against the emulator, with a raw client.

mod common;

use std::time::Duration;

use common::*;
use speech_emulator::EmulatorConfig;

const INTERACTIVE: &str = "/speech/recognition/interactive/cognitiveservices/v1?language=en-US";
const CONVERSATION: &str = "/speech/recognition/conversation/cognitiveservices/v1?language=en-US";

fn paths(msgs: &[Got]) -> Vec<&str> {
    msgs.iter().filter_map(Got::path).collect()
}

#[tokio::test]
async fn interactive_recognition_with_offsets_from_received_audio() {
    let emu = start(
        EmulatorConfig::plain()
            .with_key(KEY)
            .with_transcript("Remind me to buy 5 pencils."),
    )
    .await;
    let mut c = connect(&emu, INTERACTIVE).await;
    let rid = new_id();
    c.speech_config(&rid).await;
    stt_turn(&mut c, &rid, 1000).await;
    let msgs = c.until_turn_end().await;
    let p = paths(&msgs);
    assert_eq!(p[0], "turn.start");
    assert_eq!(p[1], "speech.startDetected");
    let hyps: Vec<_> = msgs
        .iter()
        .filter(|m| m.path() == Some("speech.hypothesis"))
        .collect();
    // One hypothesis per 300 ms of audio: 1 s → 3.
    assert_eq!(hyps.len(), 3);
    assert_eq!(hyps[0].json()["Text"], "remind");
    assert_eq!(hyps[2].json()["Duration"], 9_000_000);
    assert_eq!(
        p[p.len() - 3..],
        ["speech.endDetected", "speech.phrase", "turn.end"]
    );
    let end = msgs
        .iter()
        .find(|m| m.path() == Some("speech.endDetected"))
        .expect("endDetected");
    assert_eq!(end.json()["Offset"], 10_000_000);
    let phrase = msgs
        .iter()
        .find(|m| m.path() == Some("speech.phrase"))
        .expect("phrase")
        .json();
    assert_eq!(phrase["RecognitionStatus"], "Success");
    assert_eq!(phrase["DisplayText"], "Remind me to buy 5 pencils.");
    assert_eq!(phrase["Offset"], 0);
    assert_eq!(phrase["Duration"], 10_000_000);
    assert!(phrase.get("NBest").is_none(), "simple format");
    for m in &msgs {
        assert_eq!(m.header("X-RequestId"), Some(rid.as_str()));
        assert_eq!(
            m.header("Content-Type"),
            Some("application/json; charset=utf-8")
        );
    }

    // Telemetry is accepted; a second turn on the same socket works, 8 kHz this time.
    c.text("telemetry", &rid, "application/json", r#"{"Metrics":[]}"#)
        .await;
    let rid2 = new_id();
    c.audio(&rid2, Some("audio/x-wav"), &riff_header(8000, 1, 16))
        .await;
    c.audio(&rid2, None, &vec![0u8; 16000]).await; // 1 s at 8 kHz
    c.audio(&rid2, None, &[]).await;
    let msgs = c.until_turn_end().await;
    let phrase = msgs
        .iter()
        .find(|m| m.path() == Some("speech.phrase"))
        .expect("phrase")
        .json();
    assert_eq!(phrase["Duration"], 10_000_000);
    c.close().await;
    settle(&emu).await;
    assert_eq!(emu.counters().turns_served, 2);
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn interactive_mode_ends_after_one_phrase_even_if_audio_continues() {
    let mut config = EmulatorConfig::plain().with_key(KEY);
    config.max_phrase = Duration::from_millis(500);
    let emu = start(config).await;
    let mut c = connect(&emu, INTERACTIVE).await;
    let rid = new_id();
    c.speech_config(&rid).await;
    stt_turn(&mut c, &rid, 1200).await;
    let msgs = c.until_turn_end().await;
    let phrases: Vec<_> = msgs
        .iter()
        .filter(|m| m.path() == Some("speech.phrase"))
        .collect();
    assert_eq!(phrases.len(), 1);
    assert_eq!(phrases[0].json()["Duration"], 5_000_000);
    // Audio after the turn ended is ignored: nothing more arrives.
    assert!(c.recv_within(Duration::from_millis(200)).await.is_none());
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn conversation_mode_detailed_with_word_timings_and_segmentation() {
    let mut config = EmulatorConfig::plain()
        .with_key(KEY)
        .with_transcript("Hello, world.");
    config.max_phrase = Duration::from_millis(1000);
    let emu = start(config).await;
    let path = "/stt/speech/recognition/conversation/cognitiveservices/v1?language=en-US&format=detailed&wordLevelTimestamps=true";
    let mut c = connect(&emu, path).await;
    let rid = new_id();
    c.speech_config(&rid).await;
    stt_turn(&mut c, &rid, 2500).await;
    let msgs = c.until_turn_end().await;
    let phrases: Vec<_> = msgs
        .iter()
        .filter(|m| m.path() == Some("speech.phrase"))
        .map(Got::json)
        .collect();
    assert_eq!(phrases.len(), 3, "1 s + 1 s + 0.5 s");
    assert_eq!(phrases[1]["Offset"], 10_000_000);
    assert_eq!(phrases[2]["Offset"], 20_000_000);
    assert_eq!(phrases[2]["Duration"], 5_000_000);
    let best = &phrases[0]["NBest"][0];
    assert_eq!(best["Display"], "Hello, world.");
    assert_eq!(best["Lexical"], "hello world");
    assert_eq!(best["Words"][1]["Word"], "world");
    assert_eq!(best["Words"][1]["Offset"], 5_000_000);
    let p = paths(&msgs);
    assert_eq!(
        p[p.len() - 3..],
        ["speech.endDetected", "speech.phrase", "turn.end"]
    );
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn speech_context_can_ask_for_detailed_output() {
    let emu = start_plain().await;
    let mut c = connect(
        &emu,
        "/speech/recognition/dictation/cognitiveservices/v1?language=en-US&format=simple",
    )
    .await;
    let rid = new_id();
    c.speech_config(&rid).await;
    c.text(
        "speech.context",
        &rid,
        "application/json",
        r#"{"phraseOutput":{"format":"Detailed","detailed":{"options":[]}}}"#,
    )
    .await;
    c.audio(&rid, Some("audio/x-wav"), &riff_header(16000, 1, 16))
        .await;
    c.audio(&rid, None, &pcm16k(400)).await;
    c.audio(&rid, None, &[]).await;
    let msgs = c.until_turn_end().await;
    let phrase = msgs
        .iter()
        .find(|m| m.path() == Some("speech.phrase"))
        .expect("phrase")
        .json();
    assert_eq!(phrase["NBest"][0]["Display"], "hello world");
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn header_and_audio_in_one_message_and_universal_path() {
    let emu = start_plain().await;
    // The universal v2 path takes the language from speech.context, so none in the query.
    let mut c = connect(&emu, "/stt/speech/universal/v2").await;
    let rid = new_id();
    c.speech_config(&rid).await;
    let mut first = riff_header(16000, 1, 16);
    first.extend(pcm16k(600));
    c.audio(&rid, Some("audio/x-wav"), &first).await;
    c.audio(&rid, None, &[]).await;
    let msgs = c.until_turn_end().await;
    let phrase = msgs
        .iter()
        .find(|m| m.path() == Some("speech.phrase"))
        .expect("phrase")
        .json();
    assert_eq!(phrase["Duration"], 6_000_000);
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn empty_audio_gives_the_error_phrase() {
    let emu = start_plain().await;
    let mut c = connect(&emu, CONVERSATION).await;
    let rid = new_id();
    c.speech_config(&rid).await;
    stt_turn(&mut c, &rid, 0).await;
    let msgs = c.until_turn_end().await;
    assert_eq!(
        paths(&msgs),
        [
            "turn.start",
            "speech.endDetected",
            "speech.phrase",
            "turn.end"
        ]
    );
    assert_eq!(msgs[2].json()["RecognitionStatus"], "Error");
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn missing_language_is_a_400_and_bad_riff_closes_1007() {
    let emu = start_plain().await;
    let r = refused(
        &emu,
        "/speech/recognition/conversation/cognitiveservices/v1",
        &[("Ocp-Apim-Subscription-Key", KEY)],
    )
    .await;
    assert_eq!(r.status(), 400);
    // `cid` (a custom model) stands in for the language.
    connect(
        &emu,
        "/speech/recognition/conversation/cognitiveservices/v1?cid=abc",
    )
    .await
    .close()
    .await;

    for (header, why) in [
        (riff_header(16000, 2, 16), "stereo"),
        (riff_header(44100, 1, 16), "44.1 kHz"),
        (riff_header(16000, 1, 8), "8-bit"),
        (b"NOTRIFFATALL".to_vec(), "no RIFF"),
        (riff_header(16000, 1, 16)[..30].to_vec(), "truncated"),
    ] {
        let mut c = connect(&emu, INTERACTIVE).await;
        let rid = new_id();
        c.speech_config(&rid).await;
        c.audio(&rid, Some("audio/x-wav"), &header).await;
        let (_, end) = c.until_end().await;
        assert_eq!(end.close_code(), Some(1007), "{why}: {end:?}");
    }
    settle(&emu).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}
