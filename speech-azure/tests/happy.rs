//! Happy paths against the emulator over real TLS: TTS websocket, TTS REST, STT
//! websocket, token auth and refresh, and secrets staying secret.

mod common;

use std::time::Duration;

use common::*;
use speech_azure::{ConnectionPolicy, Credentials, TokenPolicy, TtsWsOptions};
use speech_core::{
    AudioFormat, Connection, ErrorClass, RecognitionEvent, RecognitionFormat, RecognitionMode,
    RecognitionRequest, StopSignal, SynthesisEvent, SynthesisRequest, Synthesizer,
};
use speech_emulator::{EmulatorConfig, Fault, FaultRule, Target};
use tokio::sync::mpsc;

#[tokio::test]
async fn tts_websocket_streams_riff_audio_and_word_boundaries() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = client(&emu, Credentials::key(KEY));
    let mut tts = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("connect");
    tts.warm().await.expect("warm");
    assert!(tts.is_ready());

    let (res, events) = synth(&mut tts, text("Hello world").with_word_boundaries(true)).await;
    let summary = res.expect("turn");
    let audio = audio(&events);
    assert!(audio.len() > 44, "got {} bytes", audio.len());
    assert_eq!(&audio[..4], b"RIFF", "RIFF header added client-side");
    assert_eq!(&audio[8..16], b"WAVEfmt ");
    assert_eq!(
        u32::from_le_bytes([audio[24], audio[25], audio[26], audio[27]]),
        24_000
    );
    assert_eq!(summary.audio_bytes, audio.len() as u64);
    let chunks = events
        .iter()
        .filter(|e| matches!(e, SynthesisEvent::Audio(_)))
        .count();
    assert!(chunks > 1, "audio arrives as several chunks");
    assert_eq!(summary.chunks as usize, chunks);
    let words: Vec<(String, u32)> = events
        .iter()
        .filter_map(|e| match e {
            SynthesisEvent::WordBoundary {
                text, text_offset, ..
            } => Some((text.clone(), *text_offset)),
            _ => None,
        })
        .collect();
    assert_eq!(
        words,
        vec![("Hello".to_owned(), 0), ("world".to_owned(), 6)]
    );

    // A raw format gets no header; an SSML request works too.
    let ssml = format!(
        "<speak version='1.0' xml:lang='en-US'><voice name='{VOICE}'>Raw audio please.</voice></speak>"
    );
    let (res, events) = synth(
        &mut tts,
        SynthesisRequest::ssml(ssml, AudioFormat::Raw16Khz16BitMonoPcm),
    )
    .await;
    res.expect("ssml turn");
    assert_ne!(&audio_of(&events)[..4], b"RIFF");
    assert!(tts.is_ready());
    assert_eq!(tts.turns(), 2);
    assert_eq!(emu.counters().turns_served, 2);

    Box::new(tts).close().await;
    wait_all_closed(&emu).await;
    assert_eq!(emu.shutdown().await, 0);
}

fn audio_of(events: &[SynthesisEvent]) -> Vec<u8> {
    audio(events)
}

#[tokio::test]
async fn hundred_sequential_turns_on_one_websocket() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = client(&emu, Credentials::key(KEY));
    let mut tts = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("connect");
    tts.warm().await.expect("warm");
    for i in 0..100 {
        let req = SynthesisRequest::text(
            format!("Turn {i}."),
            VOICE,
            AudioFormat::Raw8Khz16BitMonoPcm,
        );
        let (res, events) = synth(&mut tts, req).await;
        let s = res.unwrap_or_else(|e| panic!("turn {i}: {e}"));
        assert!(s.audio_bytes > 0 && !events.is_empty(), "turn {i}");
        assert!(tts.is_ready(), "ready after turn {i}");
    }
    let c = emu.counters();
    assert_eq!(c.connections_opened, 1, "one websocket for all turns");
    assert_eq!(c.turns_served, 100);
    assert_eq!(tts.turns(), 100);
    Box::new(tts).close().await;
    wait_all_closed(&emu).await;
    emu.shutdown().await;
}

/// Barge-in: the caller stops a long turn after its first chunk. The stop goes out as
/// `synthesis.control`, the turn ends at the service's `turn.end` without the rest of the
/// audio, and the same websocket serves the next turn. A caller that just drops the
/// receiver instead abandons the turn, and the connection says it is no longer ready.
#[tokio::test]
async fn tts_websocket_stop_ends_the_turn_and_keeps_the_connection() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = client(&emu, Credentials::key(KEY));
    let mut tts = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("connect");
    tts.warm().await.expect("warm");
    // Minutes of audio: far more than can be in flight when the stop lands.
    let long = "word ".repeat(2000);
    // 8 kHz 16-bit: 16 bytes per millisecond of the emulator's speech.
    let full = 16 * speech_emulator::timing::synthesized_ms(long.trim());

    let stop = StopSignal::new();
    let (tx, mut rx) = mpsc::channel(16);
    let reader = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut after_stop = 0usize;
            while let Some(e) = rx.recv().await {
                if let SynthesisEvent::Audio(b) = e {
                    if stop.stop() {
                        continue;
                    }
                    after_stop += b.len();
                }
            }
            after_stop
        })
    };
    let req = SynthesisRequest::text(long.clone(), VOICE, AudioFormat::Raw8Khz16BitMonoPcm);
    let summary = tokio::time::timeout(PATIENCE, tts.synthesize_stoppable(req, tx, stop))
        .await
        .expect("the stopped turn ends")
        .expect("a stopped turn is a clean end");
    let after_stop = reader.await.expect("reader");
    assert!(
        summary.audio_bytes < full,
        "{} of {full} bytes",
        summary.audio_bytes
    );
    // Chunks already handed over before the stop was seen may still arrive; nothing is
    // forwarded once the stop went out, so this stays far below the turn.
    assert!((after_stop as u64) < full / 2, "{after_stop} of {full}");
    assert!(tts.is_ready(), "the connection survives the stop");
    assert_eq!(emu.counters().turns_stopped, 1);

    // The next turn on the same socket is whole.
    let (res, events) = synth(&mut tts, text("After the barge-in.")).await;
    res.expect("next turn");
    assert!(audio(&events).len() > 44);

    // Dropping the receiver without a stop abandons the turn: the state of the socket is
    // unknown, so the pool must not reuse it.
    let (tx, mut rx) = mpsc::channel(1);
    let dropper = tokio::spawn(async move {
        let _ = rx.recv().await;
    });
    let req = SynthesisRequest::text(long, VOICE, AudioFormat::Raw8Khz16BitMonoPcm);
    let res = tokio::time::timeout(PATIENCE, tts.synthesize(req, tx))
        .await
        .expect("the abandoned turn returns");
    dropper.await.expect("dropper");
    assert_eq!(
        res.map(|_| ()).map_err(|e| e.class()),
        Err(ErrorClass::Cancelled)
    );
    assert!(!tts.is_ready());
    assert_eq!(emu.counters().connections_opened, 1);

    Box::new(tts).close().await;
    wait_all_closed(&emu).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn tts_rest_streams_and_reuses_its_connection() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = client(&emu, Credentials::key(KEY));
    let mut rest = azure.connect_tts_rest().await.expect("create");
    rest.warm().await.expect("warm opens the connection");
    let after_warm = emu.counters();
    assert_eq!(after_warm.tcp_accepted, 1);
    assert!(rest.is_ready());

    for (i, format) in [
        AudioFormat::Riff24Khz16BitMonoPcm,
        AudioFormat::Audio24Khz48KBitRateMonoMp3,
        AudioFormat::Raw16Khz16BitMonoPcm,
    ]
    .into_iter()
    .enumerate()
    {
        let long = "This sentence is long enough to need several chunks of audio. ".repeat(4);
        let req = SynthesisRequest::text(long, VOICE, format);
        let (res, events) = synth(&mut rest, req).await;
        let s = res.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(s.chunks > 1, "streamed in chunks");
        if format.is_riff() {
            assert_eq!(
                &audio(&events)[..4],
                b"RIFF",
                "REST returns the header itself"
            );
        }
    }
    assert_eq!(rest.requests(), 3);
    assert_eq!(
        emu.counters().tcp_accepted,
        1,
        "every request reused the warmed connection"
    );
    assert!(rest.is_ready());
    Box::new(rest).close().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn stt_websocket_runs_several_turns() {
    let emu =
        emulator(EmulatorConfig::default().with_transcript("Remind me to buy pencils.")).await;
    let azure = client(&emu, Credentials::key(KEY));
    for (mode, format) in [
        (RecognitionMode::Conversation, RecognitionFormat::Simple),
        (RecognitionMode::Interactive, RecognitionFormat::Detailed),
    ] {
        let options = speech_azure::SttWsOptions {
            mode,
            language: "en-US".into(),
            format,
        };
        let mut stt = azure.connect_stt_ws(options).await.expect("connect");
        stt.warm().await.expect("warm");
        for turn in 0..3 {
            let mut req = RecognitionRequest::new("en-US");
            req.mode = mode;
            req.format = format;
            let (res, events) = recognize(&mut stt, req, pcm(1200)).await;
            res.unwrap_or_else(|e| panic!("{mode:?} turn {turn}: {e}"));
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, RecognitionEvent::Hypothesis { .. })),
                "hypotheses streamed: {events:?}"
            );
            let phrase = events.iter().find_map(|e| match e {
                RecognitionEvent::Phrase { text, status, .. } => {
                    Some((text.clone(), status.clone()))
                }
                _ => None,
            });
            assert_eq!(
                phrase,
                Some(("Remind me to buy pencils.".to_owned(), "Success".to_owned()))
            );
            assert_eq!(events.last(), Some(&RecognitionEvent::TurnEnd));
            assert!(stt.is_ready());
        }
        assert_eq!(stt.turns(), 3);
        // A request for another language is refused before any I/O.
        let (res, _) = recognize(&mut stt, RecognitionRequest::new("de-DE"), pcm(100)).await;
        assert_eq!(res.map_err(|e| e.class()), Err(ErrorClass::BadRequest));
        assert!(stt.is_ready());
        Box::new(stt).close().await;
    }
    assert_eq!(emu.counters().connections_opened, 2);
    wait_all_closed(&emu).await;
    emu.shutdown().await;
}

fn short_token_client(emu: &speech_emulator::EmulatorHandle) -> speech_azure::AzureSpeech {
    client_with(
        emu,
        Credentials::sts_token(KEY),
        ConnectionPolicy {
            token_min_validity: Some(Duration::from_millis(500)),
            ..policy()
        },
        TokenPolicy {
            min_validity: Duration::from_millis(500),
            refresh_ahead: Duration::from_millis(800),
            ..TokenPolicy::default()
        },
    )
}

#[tokio::test]
async fn expired_token_is_refreshed_without_a_failed_turn() {
    let emu = emulator(EmulatorConfig::default().with_token_lifetime(Duration::from_secs(3))).await;
    let azure = short_token_client(&emu);
    let auth = azure.authenticator().clone();
    assert!(auth.is_token_based());

    let mut first = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("connect with a token");
    first.warm().await.expect("warm");
    synth(&mut first, text("Before expiry."))
        .await
        .0
        .expect("turn");
    assert_eq!(emu.counters().tokens_issued, 1);

    // Let the token expire for real (the emulator then refuses it at a handshake).
    let exp = auth.cached_expiry().expect("cached token");
    tokio::time::sleep_until(exp + Duration::from_millis(200)).await;

    let mut second = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("a new connection fetches a fresh token");
    second.warm().await.expect("warm");
    synth(&mut second, text("After expiry."))
        .await
        .0
        .expect("turn");
    let mut rest = azure.connect_tts_rest().await.expect("rest");
    rest.warm().await.expect("warm");
    synth(&mut rest, text("REST after expiry."))
        .await
        .0
        .expect("rest turn");
    assert!(emu.counters().tokens_issued >= 2);
    assert_eq!(auth.failure_count(), 0);

    // A token the service refuses at the handshake (revoked, clock skew) is replaced and
    // the handshake retried once, so the caller never sees the 401.
    let before = emu.counters().tokens_issued;
    emu.add_fault(
        FaultRule::new(Fault::Handshake {
            status: 401,
            retry_after: None,
        })
        .target(Target::TtsWs)
        .once(),
    );
    let mut third = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("retried with a fresh token");
    synth(&mut third, text("After a refused token."))
        .await
        .0
        .expect("turn");
    assert_eq!(emu.counters().tokens_issued, before + 1);

    for c in [first, second, third] {
        Box::new(c).close().await;
    }
    wait_all_closed(&emu).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn concurrent_connects_share_one_token_fetch() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = client(&emu, Credentials::sts_token(KEY));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let a = azure.clone();
        set.spawn(async move { a.connect_tts_ws(TtsWsOptions::default()).await });
    }
    let mut conns = Vec::new();
    while let Some(r) = set.join_next().await {
        conns.push(r.expect("task").expect("connect"));
    }
    assert_eq!(emu.counters().tokens_issued, 1, "single flight");
    assert_eq!(azure.authenticator().fetch_count(), 1);
    for c in conns {
        Box::new(c).close().await;
    }
    wait_all_closed(&emu).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn secrets_never_reach_errors_or_debug_output() {
    let emu = emulator(EmulatorConfig::default()).await;
    let secret = "super-secret-key-do-not-print";
    for creds in [Credentials::key(secret), Credentials::sts_token(secret)] {
        let azure = client(&emu, creds.clone());
        let err = azure
            .connect_tts_ws(TtsWsOptions::default())
            .await
            .expect_err("wrong key");
        assert_eq!(err.class(), ErrorClass::Auth, "{err}");
        let mut rest = azure.connect_tts_rest().await;
        match rest.as_mut() {
            // A connection that needs no request to open refuses the key at its first
            // request instead; either way the caller sees an auth error without the key.
            Ok(r) => {
                let e = synth(r, text("x")).await.0.expect_err("wrong key");
                assert_eq!(e.class(), ErrorClass::Auth, "{e}");
                assert!(!format!("{e} {e:?} {r:?}").contains(secret));
            }
            Err(e) => {
                assert_eq!(e.class(), ErrorClass::Auth, "{e}");
                assert!(!format!("{e} {e:?}").contains(secret));
            }
        }
        for printed in [
            format!("{err}"),
            format!("{err:?}"),
            format!("{azure:?}"),
            format!("{creds:?}"),
            format!("{:?}", azure.authenticator()),
            format!("{rest:?}"),
        ] {
            assert!(!printed.contains(secret), "leaked in: {printed}");
        }
    }
    // A real token never shows either.
    let azure = client(&emu, Credentials::sts_token(KEY));
    let header = azure.authenticator().header().await.expect("token");
    let token = header
        .value
        .expose()
        .trim_start_matches("Bearer ")
        .to_owned();
    assert!(token.len() > 20);
    let tts = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("connect");
    for printed in [
        format!("{header:?}"),
        format!("{}", header.value),
        format!("{tts:?}"),
        format!("{azure:?}"),
    ] {
        assert!(!printed.contains(&token), "token leaked in: {printed}");
        assert!(!printed.contains(KEY), "key leaked in: {printed}");
    }
    Box::new(tts).close().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn untrusted_certificate_is_refused() {
    let emu = emulator(EmulatorConfig::default()).await;
    speech_azure::install_crypto_provider();
    // No extra root: the emulator's self-made CA is unknown.
    let azure = speech_azure::AzureSpeech::builder(
        speech_azure::Endpoint::host(&emu.base_url_http()).expect("endpoint"),
        Credentials::key(KEY),
    )
    .policy(policy())
    .build()
    .expect("client");
    let err = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect_err("untrusted");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(emu.counters().connections_opened, 0);
    emu.shutdown().await;
}
