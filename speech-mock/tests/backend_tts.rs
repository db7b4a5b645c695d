//! The mock synthesizer: deterministic audio, formats, streaming, word boundaries,
//! cancellation.

use std::time::Duration;

use speech_core::{
    AudioFormat, Connection, SpeechError, SynthesisEvent, SynthesisRequest, SynthesisSummary,
    Synthesizer,
};
use speech_mock::backend::{MockConfig, MockSynthesizer, MockSynthesizerFactory};
use tokio::sync::mpsc;
use tokio::time::Instant;

const VOICE: &str = "en-US-AvaNeural";

async fn connect(config: MockConfig) -> (MockSynthesizerFactory, MockSynthesizer) {
    let factory = MockSynthesizerFactory::new(config);
    let conn = factory.connect().await.expect("connect");
    (factory, conn)
}

/// Runs a turn to completion, collecting every event.
async fn run(
    conn: &mut MockSynthesizer,
    request: SynthesisRequest,
) -> (Result<SynthesisSummary, SpeechError>, Vec<SynthesisEvent>) {
    let (tx, mut rx) = mpsc::channel(16);
    let collect = async {
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            events.push(e);
        }
        events
    };
    let (result, events) = tokio::join!(conn.synthesize(request, tx), collect);
    (result, events)
}

fn audio_of(events: &[SynthesisEvent]) -> Vec<u8> {
    events
        .iter()
        .filter_map(|e| match e {
            SynthesisEvent::Audio(b) => Some(b.as_ref()),
            SynthesisEvent::WordBoundary { .. } => None,
        })
        .flatten()
        .copied()
        .collect()
}

async fn synth_bytes(config: MockConfig, text: &str, format: AudioFormat) -> Vec<u8> {
    let (_f, mut conn) = connect(config).await;
    let (result, events) = run(&mut conn, SynthesisRequest::text(text, VOICE, format)).await;
    let summary = result.expect("synthesize");
    let audio = audio_of(&events);
    assert_eq!(summary.audio_bytes, audio.len() as u64);
    audio
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

#[tokio::test(start_paused = true)]
async fn same_seed_and_text_give_identical_bytes() {
    let f = AudioFormat::Riff24Khz16BitMonoPcm;
    let a = synth_bytes(MockConfig::default(), "Hello, world.", f).await;
    let b = synth_bytes(MockConfig::default(), "Hello, world.", f).await;
    assert!(!a.is_empty());
    assert_eq!(a, b);
    let other_seed = MockConfig {
        seed: 42,
        ..MockConfig::default()
    };
    let c = synth_bytes(other_seed, "Hello, world.", f).await;
    assert_eq!(a.len(), c.len());
    assert_ne!(a, c);
    let d = synth_bytes(MockConfig::default(), "Hello, World.", f).await;
    assert_ne!(a, d);
    // Chunking does not change the bytes.
    let small_chunks = MockConfig {
        chunk_bytes: 7,
        ..MockConfig::default()
    };
    assert_eq!(synth_bytes(small_chunks, "Hello, world.", f).await, a);
    // Compressed formats are deterministic too.
    let mp3 = AudioFormat::Audio24Khz48KBitRateMonoMp3;
    assert_eq!(
        synth_bytes(MockConfig::default(), "Hi", mp3).await,
        synth_bytes(MockConfig::default(), "Hi", mp3).await
    );
}

#[tokio::test(start_paused = true)]
async fn audio_length_is_proportional_to_text() {
    // 60 ms per character by default.
    for format in AudioFormat::ALL
        .into_iter()
        .filter(|f| f.bytes_per_second().is_some())
    {
        let bps = u64::from(format.bytes_per_second().unwrap_or_default());
        let header = if format.is_riff() { 44 } else { 0 };
        for chars in [1usize, 10, 25] {
            let text = "a".repeat(chars);
            let audio = synth_bytes(MockConfig::default(), &text, format).await;
            let expected = bps * 60 * chars as u64 / 1000;
            assert_eq!(audio.len() as u64, header + expected, "{format} x{chars}");
        }
    }
    // Compressed formats follow their nominal bit rate: 48 kbit/s = 6000 B/s.
    let mp3 = synth_bytes(
        MockConfig::default(),
        "abcdefghij",
        AudioFormat::Audio24Khz48KBitRateMonoMp3,
    )
    .await;
    assert_eq!(mp3.len(), 6000 * 600 / 1000);
    // A custom rate per character.
    let slow = MockConfig {
        audio_per_char: Duration::from_millis(100),
        ..MockConfig::default()
    };
    let audio = synth_bytes(slow, "abcd", AudioFormat::Raw16Khz16BitMonoPcm).await;
    assert_eq!(audio.len(), 32_000 * 4 / 10);
}

#[tokio::test(start_paused = true)]
async fn audio_is_capped() {
    let capped = MockConfig {
        max_audio: Duration::from_secs(1),
        ..MockConfig::default()
    };
    let audio = synth_bytes(
        capped,
        &"word ".repeat(200),
        AudioFormat::Raw16Khz16BitMonoPcm,
    )
    .await;
    assert_eq!(audio.len(), 32_000);
}

#[tokio::test(start_paused = true)]
async fn riff_headers_are_valid() {
    for format in AudioFormat::ALL.into_iter().filter(|f| f.is_riff()) {
        let audio = synth_bytes(MockConfig::default(), "Valid wave file.", format).await;
        assert!(audio.len() > 44, "{format}");
        assert_eq!(&audio[0..4], b"RIFF");
        assert_eq!(u32_at(&audio, 4) as usize, audio.len() - 8, "{format}");
        assert_eq!(&audio[8..16], b"WAVEfmt ");
        assert_eq!(u32_at(&audio, 16), 16);
        assert_eq!(Some(u16_at(&audio, 20)), format.wav_format_tag());
        assert_eq!(u16_at(&audio, 22), 1, "mono");
        assert_eq!(u32_at(&audio, 24), format.sample_rate_hz());
        assert_eq!(Some(u32_at(&audio, 28)), format.bytes_per_second());
        assert_eq!(Some(u16_at(&audio, 34)), format.bits_per_sample());
        let block_align = u16_at(&audio, 32);
        assert_eq!(block_align, format.bits_per_sample().unwrap_or(0) / 8);
        assert_eq!(&audio[36..40], b"data");
        assert_eq!(u32_at(&audio, 40) as usize, audio.len() - 44, "{format}");
        assert_eq!((audio.len() - 44) % usize::from(block_align), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn pcm_is_real_audio_and_raw_matches_riff_payload() {
    let riff = synth_bytes(
        MockConfig::default(),
        "tone",
        AudioFormat::Riff16Khz16BitMonoPcm,
    )
    .await;
    let raw = synth_bytes(
        MockConfig::default(),
        "tone",
        AudioFormat::Raw16Khz16BitMonoPcm,
    )
    .await;
    assert_eq!(riff.len(), raw.len() + 44);
    // Not silence: a loud signal with both polarities.
    let samples: Vec<i16> = raw
        .chunks_exact(2)
        .map(|s| i16::from_le_bytes([s[0], s[1]]))
        .collect();
    let max = samples.iter().copied().max().unwrap_or(0);
    let min = samples.iter().copied().min().unwrap_or(0);
    assert!(max > 4000 && min < -4000, "max {max} min {min}");
}

#[tokio::test(start_paused = true)]
async fn compressed_formats_carry_container_magic() {
    let cases: [(AudioFormat, &[u8]); 3] = [
        (AudioFormat::Audio16Khz32KBitRateMonoMp3, b"ID3"),
        (AudioFormat::Ogg24Khz16BitMonoOpus, b"OggS"),
        (
            AudioFormat::Webm24Khz16BitMonoOpus,
            &[0x1A, 0x45, 0xDF, 0xA3],
        ),
    ];
    for (format, magic) in cases {
        let audio = synth_bytes(MockConfig::default(), "Some text here", format).await;
        assert!(audio.starts_with(magic), "{format}");
    }
    // Every format is accepted.
    for format in AudioFormat::ALL {
        let audio = synth_bytes(MockConfig::default(), "x", format).await;
        assert!(!audio.is_empty(), "{format}");
    }
}

#[tokio::test(start_paused = true)]
async fn first_chunk_arrives_before_synthesis_finishes() {
    let config = MockConfig {
        chunk_bytes: 1000,
        ..MockConfig::default()
    };
    let (_f, mut conn) = connect(config).await;
    // 20 chars x 60 ms x 32 000 B/s = 38 400 bytes = 39 chunks; the channel holds one.
    let request = SynthesisRequest::text("a".repeat(20), VOICE, AudioFormat::Raw16Khz16BitMonoPcm);
    let (tx, mut rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        let result = conn.synthesize(request, tx).await;
        (conn, result)
    });
    let first = rx.recv().await;
    assert!(matches!(&first, Some(SynthesisEvent::Audio(b)) if b.len() == 1000));
    // With one slot and 38 more chunks to go, the turn cannot have completed: the caller
    // holds the first chunk while the rest does not exist yet.
    assert!(!task.is_finished());
    let mut chunks = 1u32;
    let mut bytes = 1000u64;
    while let Some(event) = rx.recv().await {
        if let SynthesisEvent::Audio(b) = event {
            chunks += 1;
            bytes += b.len() as u64;
        }
    }
    let (conn, result) = task.await.expect("join");
    let summary = result.expect("synthesize");
    assert_eq!(summary.chunks, chunks);
    assert_eq!(summary.audio_bytes, bytes);
    assert_eq!(chunks, 39);
    assert!(conn.is_ready());
}

#[tokio::test(start_paused = true)]
async fn latency_is_applied_in_virtual_time() {
    let config = MockConfig {
        turn_latency: Duration::from_millis(150),
        chunk_interval: Duration::from_millis(20),
        chunk_bytes: 3200,
        ..MockConfig::default()
    };
    let (_f, mut conn) = connect(config).await;
    // 5 chars x 60 ms = 300 ms = 9600 bytes = 3 chunks of 3200.
    let request = SynthesisRequest::text("abcde", VOICE, AudioFormat::Raw16Khz16BitMonoPcm);
    let (tx, mut rx) = mpsc::channel(16);
    let start = Instant::now();
    let turn = tokio::spawn(async move { conn.synthesize(request, tx).await });
    let mut arrivals = Vec::new();
    while rx.recv().await.is_some() {
        arrivals.push(start.elapsed());
    }
    assert!(turn.await.expect("join").is_ok());
    // Paused clock: the offsets are exactly the configured sleeps.
    assert_eq!(
        arrivals,
        vec![
            Duration::from_millis(150),
            Duration::from_millis(170),
            Duration::from_millis(190)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn word_boundaries_point_at_words_and_precede_their_audio() {
    let config = MockConfig {
        chunk_bytes: 960, // 30 ms at 16 kHz
        ..MockConfig::default()
    };
    let (_f, mut conn) = connect(config).await;
    let text = "Hello big wörld";
    let request = SynthesisRequest::text(text, VOICE, AudioFormat::Raw16Khz16BitMonoPcm)
        .with_word_boundaries(true);
    let (result, events) = run(&mut conn, request).await;
    result.expect("synthesize");
    let mut audio_so_far = Duration::ZERO;
    let mut words = Vec::new();
    for event in &events {
        match event {
            SynthesisEvent::Audio(b) => {
                audio_so_far += Duration::from_micros(b.len() as u64 * 1_000_000 / 32_000);
            }
            SynthesisEvent::WordBoundary {
                text: word,
                audio_offset,
                duration,
                text_offset,
                word_length,
            } => {
                // The boundary arrives before the audio in which the word starts.
                assert!(*audio_offset >= audio_so_far, "{word}");
                let start = *text_offset as usize;
                assert_eq!(&text[start..start + *word_length as usize], word);
                words.push((word.clone(), *audio_offset, *duration));
            }
        }
    }
    let ms = Duration::from_millis;
    assert_eq!(
        words,
        vec![
            ("Hello".to_owned(), ms(0), ms(300)),
            ("big".to_owned(), ms(360), ms(180)),
            ("wörld".to_owned(), ms(600), ms(300)),
        ]
    );
    // Without the flag: none.
    let request = SynthesisRequest::text(text, VOICE, AudioFormat::Raw16Khz16BitMonoPcm);
    let (_, events) = run(&mut conn, request).await;
    assert!(events.iter().all(|e| matches!(e, SynthesisEvent::Audio(_))));
}

#[tokio::test(start_paused = true)]
async fn ssml_input_is_spoken_without_markup() {
    let (_f, mut conn) = connect(MockConfig::default()).await;
    let ssml = "<speak version='1.0' xmlns='http://www.w3.org/2001/10/synthesis' xml:lang='en-US'>\
                <voice name='en-US-AvaNeural'>Hi there</voice></speak>";
    let request =
        SynthesisRequest::ssml(ssml, AudioFormat::Raw16Khz16BitMonoPcm).with_word_boundaries(true);
    let (result, events) = run(&mut conn, request).await;
    result.expect("synthesize");
    // "Hi there" = 8 characters.
    assert_eq!(audio_of(&events).len(), 8 * 60 * 32);
    let offsets: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            SynthesisEvent::WordBoundary {
                text_offset,
                word_length,
                ..
            } => Some(&ssml[*text_offset as usize..(*text_offset + *word_length) as usize]),
            SynthesisEvent::Audio(_) => None,
        })
        .collect();
    assert_eq!(offsets, vec!["Hi", "there"]);
}

#[tokio::test(start_paused = true)]
async fn bad_requests_are_rejected_before_any_turn() {
    let (factory, mut conn) = connect(MockConfig::default()).await;
    for request in [
        SynthesisRequest::text("", VOICE, AudioFormat::Raw16Khz16BitMonoPcm),
        SynthesisRequest::text("hi", "bad voice!", AudioFormat::Raw16Khz16BitMonoPcm),
        SynthesisRequest::text("x".repeat(70_000), VOICE, AudioFormat::Raw16Khz16BitMonoPcm),
        SynthesisRequest::ssml("no root", AudioFormat::Raw16Khz16BitMonoPcm),
    ] {
        let (result, events) = run(&mut conn, request).await;
        assert!(
            matches!(result, Err(SpeechError::BadRequest { .. })),
            "{result:?}"
        );
        assert!(events.is_empty());
    }
    assert!(conn.is_ready());
    assert_eq!(factory.counters().snapshot().turns_started, 0);
    Box::new(conn).close().await;
}

#[tokio::test(start_paused = true)]
async fn dropped_receiver_cancels_and_leaves_connection_ready() {
    let config = MockConfig {
        chunk_bytes: 100,
        chunk_interval: Duration::from_millis(10),
        ..MockConfig::default()
    };
    let (factory, mut conn) = connect(config).await;
    let request =
        SynthesisRequest::text("a long sentence", VOICE, AudioFormat::Raw16Khz16BitMonoPcm);
    let (tx, mut rx) = mpsc::channel(1);
    let turn = tokio::spawn(async move {
        let result = conn.synthesize(request, tx).await;
        (conn, result)
    });
    assert!(matches!(rx.recv().await, Some(SynthesisEvent::Audio(_))));
    drop(rx);
    let (mut conn, result) = turn.await.expect("join");
    assert_eq!(result, Err(SpeechError::Cancelled));
    assert!(conn.is_ready());
    let snap = factory.counters().snapshot();
    assert_eq!(snap.turns_cancelled, 1);
    assert_eq!(snap.turns_failed, 0);
    // The connection serves the next turn normally.
    let (result, _) = run(
        &mut conn,
        SynthesisRequest::text("next", VOICE, AudioFormat::Raw16Khz16BitMonoPcm),
    )
    .await;
    assert!(result.is_ok());
    assert_eq!(factory.counters().turns_served(), 1);
    Box::new(conn).close().await;
}

#[tokio::test(start_paused = true)]
async fn dropped_turn_future_leaves_connection_not_ready() {
    let config = MockConfig {
        turn_latency: Duration::from_secs(1),
        ..MockConfig::default()
    };
    let (factory, mut conn) = connect(config).await;
    let (tx, _rx) = mpsc::channel(4);
    let request = SynthesisRequest::text("hello", VOICE, AudioFormat::Raw16Khz16BitMonoPcm);
    let timed_out =
        tokio::time::timeout(Duration::from_millis(10), conn.synthesize(request, tx)).await;
    assert!(timed_out.is_err());
    assert!(!conn.is_ready(), "state unknown after an abandoned turn");
    Box::new(conn).close().await;
    let snap = factory.counters().snapshot();
    assert_eq!(snap.created, snap.closed);
}

#[tokio::test(start_paused = true)]
async fn one_connection_serves_many_turns() {
    let (factory, mut conn) = connect(MockConfig::default()).await;
    for i in 0..5 {
        let request = SynthesisRequest::text(
            format!("turn {i}"),
            VOICE,
            AudioFormat::Riff24Khz16BitMonoPcm,
        );
        let id = request.request_id.clone();
        let (result, events) = run(&mut conn, request).await;
        assert_eq!(result.map(|s| s.request_id), Ok(id));
        assert!(matches!(events.first(), Some(SynthesisEvent::Audio(b)) if b.starts_with(b"RIFF")));
    }
    assert_eq!(conn.uses(), 5);
    assert_eq!(factory.counters().turns_served(), 5);
    Box::new(conn).close().await;
}
