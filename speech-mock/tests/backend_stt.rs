//! The mock recognizer: event sequence, offsets in ticks, transcripts, turns, cancellation.

use std::time::Duration;

use bytes::Bytes;
use speech_core::{
    Connection, RecognitionEvent, RecognitionMode, RecognitionRequest, Recognizer, SpeechError,
    phrase_status,
};
use speech_mock::backend::{MockConfig, MockRecognizer, MockRecognizerFactory};
use tokio::sync::mpsc;
use tokio::time::Instant;

async fn connect(config: MockConfig) -> (MockRecognizerFactory, MockRecognizer) {
    let factory = MockRecognizerFactory::new(config);
    let conn = factory.connect().await.expect("connect");
    (factory, conn)
}

/// Streams `chunks` of PCM (each `chunk_len` bytes) and collects every event.
async fn recognize(
    conn: &mut MockRecognizer,
    chunks: usize,
    chunk_len: usize,
) -> (Result<(), SpeechError>, Vec<RecognitionEvent>) {
    let (audio_tx, audio_rx) = mpsc::channel(4);
    let (events_tx, mut events_rx) = mpsc::channel(4);
    let feed = async move {
        for i in 0..chunks {
            let pcm = Bytes::from(vec![(i % 251) as u8; chunk_len]);
            if audio_tx.send(pcm).await.is_err() {
                break;
            }
        }
        // Dropping the sender ends the audio.
    };
    let collect = async {
        let mut events = Vec::new();
        while let Some(e) = events_rx.recv().await {
            events.push(e);
        }
        events
    };
    let request = RecognitionRequest::new("en-US");
    let (result, (), events) =
        tokio::join!(conn.recognize(request, audio_rx, events_tx), feed, collect);
    (result, events)
}

fn hyp(text: &str, duration: u64) -> RecognitionEvent {
    RecognitionEvent::Hypothesis {
        text: text.into(),
        offset: 0,
        duration,
    }
}

#[tokio::test(start_paused = true)]
async fn one_second_of_audio_gives_the_azure_sequence() {
    let (_f, mut conn) = connect(MockConfig::default()).await;
    // 1 s of 16 kHz 16-bit mono = 32 000 bytes, in 100 ms chunks.
    let (result, events) = recognize(&mut conn, 10, 3200).await;
    assert_eq!(result, Ok(()));
    assert_eq!(
        events,
        vec![
            RecognitionEvent::SpeechStartDetected { offset: 0 },
            hyp("hello", 3_000_000),
            hyp("hello world", 6_000_000),
            hyp("hello world", 9_000_000),
            RecognitionEvent::SpeechEndDetected { offset: 10_000_000 },
            RecognitionEvent::Phrase {
                text: "hello world".into(),
                offset: 0,
                duration: 10_000_000,
                status: phrase_status::SUCCESS.into(),
            },
            RecognitionEvent::TurnEnd,
        ]
    );
    assert!(conn.is_ready());
    Box::new(conn).close().await;
}

#[tokio::test(start_paused = true)]
async fn offsets_follow_the_bytes_received() {
    let config = MockConfig {
        hypothesis_every: Duration::ZERO,
        ..MockConfig::default()
    };
    let (_f, mut conn) = connect(config).await;
    // 2.5 s in odd-sized chunks: 80 000 bytes = 25 000 000 ticks.
    let (result, events) = recognize(&mut conn, 16, 5000).await;
    assert_eq!(result, Ok(()));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RecognitionEvent::Hypothesis { .. }))
    );
    assert!(events.contains(&RecognitionEvent::SpeechEndDetected { offset: 25_000_000 }));
    assert!(events.iter().any(
        |e| matches!(e, RecognitionEvent::Phrase { duration, .. } if *duration == 25_000_000)
    ));
}

#[tokio::test(start_paused = true)]
async fn several_turns_on_one_connection_cycle_the_transcript() {
    let config = MockConfig {
        transcript: vec![
            "first phrase".into(),
            "second".into(),
            "third one here".into(),
        ],
        ..MockConfig::default()
    };
    let (factory, mut conn) = connect(config).await;
    let mut phrases = Vec::new();
    for _ in 0..4 {
        let (result, events) = recognize(&mut conn, 5, 3200).await;
        assert_eq!(result, Ok(()));
        assert_eq!(events.last(), Some(&RecognitionEvent::TurnEnd));
        for e in events {
            if let RecognitionEvent::Phrase { text, status, .. } = e {
                assert_eq!(status, phrase_status::SUCCESS);
                phrases.push(text);
            }
        }
    }
    assert_eq!(
        phrases,
        ["first phrase", "second", "third one here", "first phrase"]
    );
    assert_eq!(conn.uses(), 4);
    assert!(conn.is_ready());
    assert_eq!(factory.counters().turns_served(), 4);
    Box::new(conn).close().await;
}

#[tokio::test(start_paused = true)]
async fn hypotheses_grow_word_by_word() {
    let config = MockConfig {
        transcript: vec!["one two three".into()],
        ..MockConfig::default()
    };
    let (_f, mut conn) = connect(config).await;
    let (_, events) = recognize(&mut conn, 12, 3200).await;
    let texts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            RecognitionEvent::Hypothesis { text, .. } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["one", "one two", "one two three", "one two three"]);
}

#[tokio::test(start_paused = true)]
async fn empty_audio_and_empty_transcript() {
    let (_f, mut conn) = connect(MockConfig::default()).await;
    let (result, events) = recognize(&mut conn, 0, 0).await;
    assert_eq!(result, Ok(()));
    assert_eq!(
        events,
        vec![
            RecognitionEvent::SpeechEndDetected { offset: 0 },
            RecognitionEvent::Phrase {
                text: String::new(),
                offset: 0,
                duration: 0,
                status: phrase_status::ERROR.into(),
            },
            RecognitionEvent::TurnEnd,
        ]
    );
    // Empty chunks are not audio.
    let (_, events) = recognize(&mut conn, 3, 0).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RecognitionEvent::SpeechStartDetected { .. }))
    );

    let config = MockConfig {
        transcript: Vec::new(),
        ..MockConfig::default()
    };
    let (_f, mut conn) = connect(config).await;
    let (_, events) = recognize(&mut conn, 10, 3200).await;
    assert!(events.iter().any(
        |e| matches!(e, RecognitionEvent::Phrase { status, text, .. } if status == phrase_status::NO_MATCH && text.is_empty())
    ));
}

#[tokio::test(start_paused = true)]
async fn final_phrase_waits_for_turn_latency() {
    let config = MockConfig {
        turn_latency: Duration::from_millis(250),
        ..MockConfig::default()
    };
    let (_f, mut conn) = connect(config).await;
    let (audio_tx, audio_rx) = mpsc::channel(1);
    let (events_tx, mut events_rx) = mpsc::channel(8);
    drop(audio_tx);
    let start = Instant::now();
    let turn = tokio::spawn(async move {
        conn.recognize(RecognitionRequest::new("en-US"), audio_rx, events_tx)
            .await
    });
    let first = events_rx.recv().await;
    assert!(matches!(
        first,
        Some(RecognitionEvent::SpeechEndDetected { .. })
    ));
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    while events_rx.recv().await.is_some() {}
    assert_eq!(turn.await.expect("join"), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn dropped_events_receiver_cancels_while_waiting_for_audio() {
    let (factory, mut conn) = connect(MockConfig::default()).await;
    let (audio_tx, audio_rx) = mpsc::channel::<Bytes>(1);
    let (events_tx, events_rx) = mpsc::channel(8);
    let turn = tokio::spawn(async move {
        let result = conn
            .recognize(RecognitionRequest::new("en-US"), audio_rx, events_tx)
            .await;
        (conn, result)
    });
    tokio::task::yield_now().await;
    drop(events_rx);
    // The audio sender is still open: the turn must notice the caller left anyway.
    let (conn, result) = turn.await.expect("join");
    assert_eq!(result, Err(SpeechError::Cancelled));
    assert!(conn.is_ready());
    assert_eq!(factory.counters().snapshot().turns_cancelled, 1);
    drop(audio_tx);
    Box::new(conn).close().await;
}

#[tokio::test(start_paused = true)]
async fn bad_language_is_rejected() {
    let (factory, mut conn) = connect(MockConfig::default()).await;
    let (_audio_tx, audio_rx) = mpsc::channel(1);
    let (events_tx, _events_rx) = mpsc::channel(1);
    let mut request = RecognitionRequest::new("en US&x=1");
    request.mode = RecognitionMode::Interactive;
    let result = conn.recognize(request, audio_rx, events_tx).await;
    assert!(matches!(result, Err(SpeechError::BadRequest { .. })));
    assert_eq!(factory.counters().snapshot().turns_started, 0);
    Box::new(conn).close().await;
}

#[tokio::test(start_paused = true)]
async fn drop_mid_stream_breaks_the_connection() {
    let config = MockConfig {
        drop_after_chunks: Some(3),
        ..MockConfig::default()
    };
    let (factory, mut conn) = connect(config).await;
    let (result, events) = recognize(&mut conn, 10, 3200).await;
    assert!(
        matches!(
            result,
            Err(SpeechError::ConnectionClosed {
                code: Some(1006),
                ..
            })
        ),
        "{result:?}"
    );
    assert!(!events.contains(&RecognitionEvent::TurnEnd));
    assert!(!conn.is_ready());
    let (result, _) = recognize(&mut conn, 1, 3200).await;
    assert!(matches!(result, Err(SpeechError::ConnectionClosed { .. })));
    Box::new(conn).close().await;
    let snap = factory.counters().snapshot();
    assert_eq!(snap.dropped_mid_stream, 1);
    assert_eq!(snap.turns_failed, 1);
    assert_eq!(snap.created, snap.closed);
}
