//! Every fault the emulator can inject yields the right error class, and pools of the
//! affected connections stay healthy (the broken connection is discarded, the next turn
//! succeeds, nothing leaks).

mod common;

use std::time::Duration;

use common::*;
use pool_core::Pool;
use speech_azure::{
    AzureSpeech, ConnectionPolicy, Credentials, SttWsOptions, TokenPolicy, TtsWsOptions,
};
use speech_core::{
    AudioFormat, Connection, ErrorClass, RecognitionEvent, RecognitionRequest, SpeechError,
    SynthesisRequest, SynthesizerManager,
};
use speech_emulator::{EmulatorConfig, EmulatorHandle, Fault, FaultRule, Target, TurnPoint};

fn fast_policy() -> ConnectionPolicy {
    ConnectionPolicy {
        connect_timeout: Duration::from_secs(2),
        first_response_timeout: Duration::from_secs(2),
        frame_gap_timeout: Duration::from_secs(1),
        ..ConnectionPolicy::default()
    }
}

fn fast_client(emu: &EmulatorHandle, creds: Credentials) -> AzureSpeech {
    client_with(
        emu,
        creds,
        fast_policy(),
        TokenPolicy {
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(2),
            ..TokenPolicy::default()
        },
    )
}

fn class(r: &Result<impl std::fmt::Debug, SpeechError>) -> Option<ErrorClass> {
    r.as_ref().err().map(SpeechError::class)
}

#[tokio::test]
async fn handshake_statuses_map_to_error_classes() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = fast_client(&emu, Credentials::key(KEY));
    let cases: Vec<(Fault, Option<ErrorClass>, Option<Duration>)> = vec![
        (
            Fault::Handshake {
                status: 401,
                retry_after: None,
            },
            Some(ErrorClass::Auth),
            None,
        ),
        (
            Fault::Handshake {
                status: 403,
                retry_after: None,
            },
            Some(ErrorClass::Auth),
            None,
        ),
        (
            Fault::Handshake {
                status: 400,
                retry_after: None,
            },
            Some(ErrorClass::BadRequest),
            None,
        ),
        (
            Fault::Handshake {
                status: 404,
                retry_after: None,
            },
            Some(ErrorClass::BadRequest),
            None,
        ),
        (
            Fault::Handshake {
                status: 429,
                retry_after: Some(2),
            },
            Some(ErrorClass::Throttled),
            Some(Duration::from_secs(2)),
        ),
        (
            Fault::Handshake {
                status: 429,
                retry_after: None,
            },
            Some(ErrorClass::Throttled),
            None,
        ),
        (
            Fault::Handshake {
                status: 500,
                retry_after: None,
            },
            Some(ErrorClass::Transient),
            None,
        ),
        (
            Fault::Handshake {
                status: 503,
                retry_after: None,
            },
            Some(ErrorClass::Transient),
            None,
        ),
        // A redirect to the same origin is followed.
        (
            Fault::Handshake {
                status: 307,
                retry_after: None,
            },
            None,
            None,
        ),
        (
            Fault::HandshakeDelay { ms: 3_000 },
            Some(ErrorClass::Timeout),
            None,
        ),
        (
            Fault::TlsDelay { ms: 3_000 },
            Some(ErrorClass::Timeout),
            None,
        ),
    ];
    for (fault, want, retry_after) in cases {
        for target in [Target::TtsWs, Target::SttWs] {
            let rule = FaultRule::new(fault.clone()).once();
            // TLS delays happen before the endpoint is known.
            let rule = if matches!(fault, Fault::TlsDelay { .. }) {
                rule
            } else {
                rule.target(target)
            };
            emu.add_fault(rule);
            let result = if target == Target::TtsWs {
                azure
                    .connect_tts_ws(TtsWsOptions::default())
                    .await
                    .map(|c| Box::new(c) as Box<dyn Connection>)
            } else {
                azure
                    .connect_stt_ws(SttWsOptions::new("en-US"))
                    .await
                    .map(|c| Box::new(c) as Box<dyn Connection>)
            };
            let got = result.as_ref().err().map(SpeechError::class);
            let shown = result.as_ref().err().map(ToString::to_string);
            assert_eq!(got, want, "{fault:?} on {target:?}: {shown:?}");
            if let Err(e) = &result {
                assert_eq!(e.retry_after(), retry_after, "{fault:?}");
            }
            if let Ok(c) = result {
                c.close().await;
            }
            emu.clear_faults();
            // The next connection works.
            let c = azure
                .connect_tts_ws(TtsWsOptions::default())
                .await
                .expect("recovers");
            Box::new(c).close().await;
        }
    }
    wait_all_closed(&emu).await;
    emu.shutdown().await;
}

async fn pooled_turn(
    pool: &Pool<SynthesizerManager>,
    req: SynthesisRequest,
) -> Result<(), SpeechError> {
    let mut g = pool.acquire().await.expect("acquire");
    let (r, _) = synth(&mut **g, req).await;
    r.map(|_| ())
}

#[tokio::test]
async fn tts_turn_faults_map_to_error_classes_and_the_pool_recovers() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = fast_client(&emu, Credentials::key(KEY));
    let pool = Pool::builder(azure.tts_ws_manager(TtsWsOptions::default()))
        .name("tts-faults")
        .warm_target(2)
        .max_size(4)
        .build()
        .expect("pool");
    pool.prepare().await.expect("prepare");

    let close = |code: u16, at: TurnPoint| Fault::Close {
        code,
        reason: None,
        at,
    };
    let cases: Vec<(Fault, Option<ErrorClass>)> = vec![
        (
            close(4429, TurnPoint::AfterTurnStart),
            Some(ErrorClass::Throttled),
        ),
        (
            close(1007, TurnPoint::AfterTurnStart),
            Some(ErrorClass::BadRequest),
        ),
        (
            close(1011, TurnPoint::AfterFrames(1)),
            Some(ErrorClass::Transient),
        ),
        (
            close(1013, TurnPoint::AfterTurnStart),
            Some(ErrorClass::Transient),
        ),
        (
            close(1002, TurnPoint::AfterTurnStart),
            Some(ErrorClass::Protocol),
        ),
        // The idle/age close racing the start of a turn.
        (
            close(1000, TurnPoint::BeforeTurnStart),
            Some(ErrorClass::ConnectionClosed),
        ),
        (
            Fault::Disconnect {
                at: TurnPoint::AfterFrames(1),
                rst: false,
            },
            Some(ErrorClass::ConnectionClosed),
        ),
        (
            Fault::Disconnect {
                at: TurnPoint::AfterFrames(2),
                rst: true,
            },
            Some(ErrorClass::ConnectionClosed),
        ),
        (Fault::Stall { after_frames: 1 }, Some(ErrorClass::Timeout)),
        (Fault::Stall { after_frames: 0 }, Some(ErrorClass::Timeout)),
        (
            Fault::TurnStartDelay { ms: 3_000 },
            Some(ErrorClass::Timeout),
        ),
        (Fault::TurnStartDelay { ms: 100 }, None),
        (Fault::FirstAudioDelay { ms: 200 }, None),
        (Fault::Quirks, None),
    ];
    for (fault, want) in cases {
        emu.add_fault(FaultRule::new(fault.clone()).target(Target::TtsWs).once());
        let r = pooled_turn(
            &pool,
            text("A sentence long enough for several audio frames."),
        )
        .await;
        assert_eq!(class(&r), want, "{fault:?}: {r:?}");
        emu.clear_faults();
        pooled_turn(&pool, text("Recovered."))
            .await
            .unwrap_or_else(|e| panic!("after {fault:?}: {e}"));
    }

    // Quirks: lowercase spaced headers, an unknown path and an extra empty frame still give
    // the same audio as a normal turn.
    emu.add_fault(FaultRule::new(Fault::Quirks).target(Target::TtsWs).once());
    let mut g = pool.acquire().await.expect("acquire");
    let (r, quirky) = synth(&mut **g, text("Same audio.")).await;
    r.expect("quirks turn");
    let (r, normal) = synth(&mut **g, text("Same audio.")).await;
    r.expect("normal turn");
    assert_eq!(audio(&quirky), audio(&normal));

    // SSML over 64 KB is refused before anything is sent.
    let started = emu.counters().turns_started;
    let big = format!(
        "<speak version='1.0' xml:lang='en-US'><voice name='{VOICE}'>{}</voice></speak>",
        "a".repeat(70_000)
    );
    let (r, _) = synth(
        &mut **g,
        SynthesisRequest::ssml(big, AudioFormat::Raw16Khz16BitMonoPcm),
    )
    .await;
    assert_eq!(class(&r), Some(ErrorClass::BadRequest));
    assert_eq!(
        emu.counters().turns_started,
        started,
        "nothing reached the service"
    );
    assert!(
        g.is_ready(),
        "a rejected request leaves the connection usable"
    );

    // A drop between turns on a warm socket makes it not ready; nothing else.
    emu.add_fault(
        FaultRule::new(Fault::Disconnect {
            at: TurnPoint::AfterTurnEnd,
            rst: false,
        })
        .target(Target::TtsWs)
        .once(),
    );
    let (r, _) = synth(&mut **g, text("Last words.")).await;
    r.expect("the turn itself completes");
    wait_not_ready(&**g).await;
    drop(g);
    pooled_turn(&pool, text("Served by another connection."))
        .await
        .expect("turn");

    // A server close 1000 on idle sockets (idle timeout) only makes them not ready.
    assert!(emu.close_all(Target::TtsWs, 1000, "Idle timeout") > 0);
    wait_all_closed(&emu).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    pooled_turn(&pool, text("Fresh connection."))
        .await
        .expect("turn after idle close");

    let snap = pool.snapshot();
    assert_eq!(
        snap.created_total,
        snap.closed_total + snap.size as u64,
        "{snap:?}"
    );
    pool.shutdown().await;
    wait_all_closed(&emu).await;
    emu.shutdown().await;
}

async fn wait_not_ready(c: &(dyn Connection + '_)) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while c.is_ready() {
        assert!(tokio::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn idle_close_1000_marks_not_ready() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = fast_client(&emu, Credentials::key(KEY));
    let mut tts = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("connect");
    tts.warm().await.expect("warm");
    assert!(tts.is_ready());
    emu.close_all(Target::TtsWs, 1000, "Idle timeout");
    wait_not_ready(&tts).await;
    let (r, _) = synth(&mut tts, text("too late")).await;
    match r {
        Err(SpeechError::ConnectionClosed { code, .. }) => assert_eq!(code, Some(1000)),
        other => panic!("expected ConnectionClosed(1000), got {other:?}"),
    }
    Box::new(tts).close().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn rest_statuses_map_to_error_classes() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = fast_client(&emu, Credentials::key(KEY));
    let pool = Pool::builder(azure.tts_rest_manager())
        .name("tts-rest-faults")
        .warm_target(1)
        .max_size(2)
        .build()
        .expect("pool");
    pool.prepare().await.expect("prepare");
    let cases: Vec<(Fault, Option<ErrorClass>, Option<Duration>)> = vec![
        (
            Fault::Rest {
                status: 429,
                retry_after: Some(1),
            },
            Some(ErrorClass::Throttled),
            Some(Duration::from_secs(1)),
        ),
        (
            Fault::Rest {
                status: 429,
                retry_after: None,
            },
            Some(ErrorClass::Throttled),
            None,
        ),
        (
            Fault::Rest {
                status: 401,
                retry_after: None,
            },
            Some(ErrorClass::Auth),
            None,
        ),
        (
            Fault::Rest {
                status: 400,
                retry_after: None,
            },
            Some(ErrorClass::BadRequest),
            None,
        ),
        (
            Fault::Rest {
                status: 415,
                retry_after: None,
            },
            Some(ErrorClass::BadRequest),
            None,
        ),
        (
            Fault::Rest {
                status: 502,
                retry_after: None,
            },
            Some(ErrorClass::Transient),
            None,
        ),
        (
            Fault::Rest {
                status: 503,
                retry_after: None,
            },
            Some(ErrorClass::Transient),
            None,
        ),
        (
            Fault::RestDelay { ms: 3_000 },
            Some(ErrorClass::Timeout),
            None,
        ),
        (Fault::RestDelay { ms: 100 }, None, None),
    ];
    for (fault, want, retry_after) in cases {
        emu.add_fault(FaultRule::new(fault.clone()).target(Target::TtsRest).once());
        let mut g = pool.acquire().await.expect("acquire");
        let (r, _) = synth(&mut **g, text("Hello.")).await;
        assert_eq!(class(&r), want, "{fault:?}: {r:?}");
        assert_eq!(
            r.as_ref().err().and_then(SpeechError::retry_after),
            retry_after
        );
        drop(g);
        emu.clear_faults();
        let mut g = pool.acquire().await.expect("acquire");
        synth(&mut **g, text("Recovered."))
            .await
            .0
            .unwrap_or_else(|e| panic!("after {fault:?}: {e}"));
    }
    let snap = pool.snapshot();
    assert_eq!(snap.created_total, snap.closed_total + snap.size as u64);
    pool.shutdown().await;
    emu.shutdown().await;
}

#[tokio::test]
async fn token_endpoint_failures_back_off_and_recover() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = fast_client(&emu, Credentials::sts_token(KEY));
    emu.add_fault(
        FaultRule::new(Fault::Rest {
            status: 503,
            retry_after: None,
        })
        .target(Target::Token)
        .once(),
    );
    let r = azure.connect_tts_ws(TtsWsOptions::default()).await;
    assert_eq!(class(&r), Some(ErrorClass::Transient));
    // Within the back-off window the last error is reported without a new request.
    let requests = emu.counters().rest_requests;
    let r = azure.connect_stt_ws(SttWsOptions::new("en-US")).await;
    assert_eq!(class(&r), Some(ErrorClass::Transient));
    assert_eq!(
        emu.counters().rest_requests,
        requests,
        "no request during back-off"
    );
    // After it, a fetch is tried again and succeeds.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let c = azure
        .connect_tts_ws(TtsWsOptions::default())
        .await
        .expect("recovered");
    assert_eq!(azure.authenticator().failure_count(), 1);
    Box::new(c).close().await;

    // A bad key at the token endpoint is an authentication error.
    let bad = fast_client(&emu, Credentials::sts_token("not-the-right-key"));
    let r = bad.connect_tts_ws(TtsWsOptions::default()).await;
    assert_eq!(class(&r), Some(ErrorClass::Auth));
    wait_all_closed(&emu).await;
    emu.shutdown().await;
}

#[tokio::test]
async fn stt_faults_map_to_error_classes() {
    let emu = emulator(EmulatorConfig::default()).await;
    let azure = fast_client(&emu, Credentials::key(KEY));
    let pool = Pool::builder(
        azure
            .stt_ws_manager(SttWsOptions::new("en-US"))
            .expect("manager"),
    )
    .name("stt-faults")
    .warm_target(1)
    .max_size(3)
    .build()
    .expect("pool");
    pool.prepare().await.expect("prepare");
    let cases: Vec<(Fault, Option<ErrorClass>, bool)> = vec![
        // In-band errors end the turn cleanly: the connection stays ready.
        (
            Fault::PhraseError {
                status: "TooManyRequests".into(),
            },
            Some(ErrorClass::Throttled),
            true,
        ),
        (
            Fault::PhraseError {
                status: "BadRequest".into(),
            },
            Some(ErrorClass::BadRequest),
            true,
        ),
        (
            Fault::PhraseError {
                status: "Forbidden".into(),
            },
            Some(ErrorClass::Auth),
            true,
        ),
        (
            Fault::PhraseError {
                status: "Error".into(),
            },
            Some(ErrorClass::Transient),
            true,
        ),
        (
            Fault::Close {
                code: 4429,
                reason: None,
                at: TurnPoint::AfterTurnStart,
            },
            Some(ErrorClass::Throttled),
            false,
        ),
        (
            Fault::Close {
                code: 1007,
                reason: None,
                at: TurnPoint::AfterFrames(2),
            },
            Some(ErrorClass::BadRequest),
            false,
        ),
        (
            Fault::Close {
                code: 1011,
                reason: None,
                at: TurnPoint::AfterTurnStart,
            },
            Some(ErrorClass::Transient),
            false,
        ),
        (
            Fault::Disconnect {
                at: TurnPoint::AfterFrames(2),
                rst: false,
            },
            Some(ErrorClass::ConnectionClosed),
            false,
        ),
        (
            Fault::Stall { after_frames: 1 },
            Some(ErrorClass::Timeout),
            false,
        ),
        (Fault::Quirks, None, true),
        (Fault::FirstAudioDelay { ms: 200 }, None, true),
    ];
    for (fault, want, ready_after) in cases {
        emu.add_fault(FaultRule::new(fault.clone()).target(Target::SttWs).once());
        let mut g = pool.acquire().await.expect("acquire");
        let (r, events) = recognize(&mut **g, RecognitionRequest::new("en-US"), pcm(700)).await;
        assert_eq!(class(&r), want, "{fault:?}: {r:?}");
        if ready_after {
            assert_eq!(events.last(), Some(&RecognitionEvent::TurnEnd), "{fault:?}");
            assert!(g.is_ready(), "{fault:?}: the connection stays usable");
        } else {
            assert!(
                !g.is_ready(),
                "{fault:?}: a broken connection is not reused"
            );
        }
        drop(g);
        emu.clear_faults();
        let mut g = pool.acquire().await.expect("acquire");
        let (r, _) = recognize(&mut **g, RecognitionRequest::new("en-US"), pcm(700)).await;
        r.unwrap_or_else(|e| panic!("after {fault:?}: {e}"));
    }
    let snap = pool.snapshot();
    assert_eq!(snap.created_total, snap.closed_total + snap.size as u64);
    pool.shutdown().await;
    wait_all_closed(&emu).await;
    emu.shutdown().await;
}
