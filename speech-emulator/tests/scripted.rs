//! Scripted audio over the STT websocket: phrases read from the samples, so the same audio
//! sent again (on another connection) is heard as the same phrases; and the counters of
//! connections closed at the age limit, in a turn or not.

mod common;

use std::time::Duration;

use common::*;
use speech_emulator::{EmulatorConfig, scripted};

const CONVERSATION: &str = "/speech/recognition/conversation/cognitiveservices/v1?language=en-US";

fn phrases(msgs: &[Got]) -> Vec<(String, u64, u64)> {
    msgs.iter()
        .filter(|m| m.path() == Some("speech.phrase"))
        .map(|m| {
            let v = m.json();
            (
                v["DisplayText"].as_str().unwrap_or_default().to_owned(),
                v["Offset"].as_u64().unwrap_or(u64::MAX),
                v["Duration"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn scripted_config() -> EmulatorConfig {
    let mut config = EmulatorConfig::plain()
        .with_key(KEY)
        .with_transcript("First line.\nSecond line.\nThird line.")
        .with_scripted_audio(true);
    config.phrase_silence = Duration::from_millis(100);
    config
}

#[tokio::test]
async fn scripted_audio_is_heard_phrase_by_phrase_and_again_on_replay() {
    let emu = start(scripted_config()).await;
    let mut audio = scripted::silence_pcm(200);
    audio.extend(scripted::phrase_pcm(2, 500));
    audio.extend(scripted::silence_pcm(300));
    audio.extend(scripted::phrase_pcm(3, 300));
    // Two connections hear the same audio; the second gets it in other frame sizes.
    for frame in [640usize, 3000] {
        let mut c = connect(&emu, CONVERSATION).await;
        let rid = new_id();
        c.speech_config(&rid).await;
        c.audio(&rid, Some("audio/x-wav"), &riff_header(16000, 1, 16))
            .await;
        for piece in audio.chunks(frame) {
            c.audio(&rid, None, piece).await;
        }
        c.audio(&rid, None, &[]).await;
        let msgs = c.until_turn_end().await;
        // Phrase 2 ends after 100 ms of silence; phrase 3 when the audio ends.
        assert_eq!(
            phrases(&msgs),
            vec![
                ("Second line.".to_owned(), 2_000_000, 5_000_000),
                ("Third line.".to_owned(), 10_000_000, 3_000_000),
            ],
            "frames of {frame} bytes"
        );
        let hyps: Vec<String> = msgs
            .iter()
            .filter(|m| m.path() == Some("speech.hypothesis"))
            .map(|m| m.json()["Text"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(hyps.first().map(String::as_str), Some("second"), "{hyps:?}");
        c.close().await;
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn the_age_limit_counts_closes_and_turns_it_cut() {
    let emu = start(scripted_config().with_max_connection_age(Duration::from_millis(300))).await;
    // One connection idles into the limit, one is mid-turn when it comes.
    let idle = connect(&emu, CONVERSATION).await;
    let mut busy = connect(&emu, CONVERSATION).await;
    let rid = new_id();
    busy.speech_config(&rid).await;
    busy.audio(&rid, Some("audio/x-wav"), &riff_header(16000, 1, 16))
        .await;
    busy.audio(&rid, None, &scripted::phrase_pcm(1, 100)).await;
    let counters = emu
        .wait_for_counters(|c| c.closed_max_age == 2, Duration::from_secs(10))
        .await
        .expect("both connections closed at the age limit");
    assert_eq!(counters.turns_cut_by_max_age, 1, "{counters:?}");
    drop((idle, busy));
    emu.shutdown().await;
}
