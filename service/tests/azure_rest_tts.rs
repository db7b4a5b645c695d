//! Azure's TTS REST synthesis, `POST /cognitiveservices/v1`, served from the TTS pool:
//! the audio as Azure sends it, `X-Session-Id` affinity as on `/api/v1/tts`, the tier and
//! metrics of any turn, and every refusal with Azure's status.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::Reply;
use common::azure::idle_close_before_turn;
use service::config::TtsTransport;
use service::secret::Secret;
use service::test_support::client;
use speech_emulator::{Fault, FaultRule, Target};
use speech_mock::backend::MockConfig;

const SSML: &str = "<speak version='1.0' xml:lang='en-US'><voice name='en-US-AvaMultilingualNeural'>Hello REST</voice></speak>";

/// A REST synthesis request as Azure's clients send it, through the app.
async fn post(
    state: &service::AppState,
    path: &str,
    format: Option<&str>,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut b = Request::post(path).header("content-type", "application/ssml+xml");
    if let Some(f) = format {
        b = b.header("X-Microsoft-OutputFormat", f);
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    common::send(state, b.body(Body::from(body.to_owned())).unwrap()).await
}

#[tokio::test]
async fn audio_in_the_requested_format_from_a_warm_then_dedicated_connection() {
    let t = common::warm_app().await;
    let r = post(
        &t.state,
        "/cognitiveservices/v1",
        Some("riff-24khz-16bit-mono-pcm"),
        &[],
        SSML,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("audio/wav"));
    assert_eq!(r.tier(), Some("warm"));
    assert_eq!(r.header("x-request-id").map(str::len), Some(32));
    // The mock: 60 ms per character of the spoken text, 48 bytes a ms, a RIFF header.
    assert_eq!(&r.body[..4], b"RIFF");
    assert_eq!(r.body.len(), 44 + 48 * 60 * "Hello REST".len());

    // The custom-domain form of the path, mp3, and a session: WARM, then DEDICATED.
    for tier in ["warm", "dedicated"] {
        let r = post(
            &t.state,
            "/tts/cognitiveservices/v1",
            Some("audio-24khz-48kbitrate-mono-mp3"),
            &[("X-Session-Id", "call-7")],
            SSML,
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("audio/mpeg"));
        assert_eq!(r.tier(), Some(tier));
        assert_eq!(r.header("x-session-id"), Some("call-7"));
    }
    // The turns count as any other: tiers in the pool, first audio in the metrics.
    let pools = common::get(&t.state, "/api/v1/pools").await.json();
    let tts = &pools["pools"]["speech-tts"];
    assert_eq!(tts["allocations_dedicated"], 1, "{tts}");
    assert_eq!(tts["active_sessions"], 1, "{tts}");
    let metrics = common::get(&t.state, "/metrics").await.text();
    assert!(
        metrics.contains("speech_tts_first_audio_seconds_count{tier=\"dedicated\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("route=\"/cognitiveservices/v1\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn requests_azure_refuses_are_refused_with_azures_status() {
    let mut config = common::config();
    config.max_body_bytes = 70_000;
    let t = common::build(&config, MockConfig::default());
    t.state.warm_up().await;
    let s = &t.state;
    let path = "/cognitiveservices/v1";
    let fmt = Some("riff-16khz-16bit-mono-pcm");
    // Another content type: 415.
    let r = common::send(
        s,
        Request::post(path)
            .header("content-type", "application/json")
            .header("X-Microsoft-OutputFormat", "riff-16khz-16bit-mono-pcm")
            .body(Body::from(SSML))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.text());
    let r = common::send(s, Request::post(path).body(Body::from(SSML)).unwrap()).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // No output format, or one Azure does not have: 400.
    let r = post(s, path, None, &[], SSML).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("X-Microsoft-OutputFormat"),
        "{}",
        r.text()
    );
    let r = post(s, path, Some("wav"), &[], SSML).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // SSML that cannot be spoken: 400.
    for bad in ["", "   ", "just text", "<speak>\u{1}</speak>"] {
        let r = post(s, path, fmt, &[], bad).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad:?}: {}", r.text());
    }
    // Over 64 KB of SSML: 400 (Azure's per-request limit); over MAX_BODY_BYTES: 413.
    let big = format!("<speak>{}</speak>", "a".repeat(66_000));
    assert_eq!(
        post(s, path, fmt, &[], &big).await.status,
        StatusCode::BAD_REQUEST
    );
    let huge = format!("<speak>{}</speak>", "a".repeat(80_000));
    assert_eq!(
        post(s, path, fmt, &[], &huge).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    // A malformed X-Session-Id: 400, as on /api/v1/tts.
    let r = post(s, path, fmt, &[("X-Session-Id", "a b")], SSML).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    // None of them used a connection.
    let pools = common::get(s, "/api/v1/pools").await.json();
    assert_eq!(pools["pools"]["speech-tts"]["allocations_total"], 0);
    // GET is not synthesis.
    let r = common::get(s, path).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn the_service_key_or_one_of_its_tokens_is_the_credential() {
    let t = common::build_with(&common::config(), MockConfig::default(), |mut o| {
        o.api_key = Some(Secret::new("svc-key"));
        o
    });
    t.state.warm_up().await;
    let s = &t.state;
    let path = "/cognitiveservices/v1";
    let fmt = Some("raw-16khz-16bit-mono-pcm");
    for refused in [
        vec![],
        vec![("Ocp-Apim-Subscription-Key", "wrong")],
        vec![("Authorization", "Bearer wrong")],
    ] {
        let r = post(s, path, fmt, &refused, SSML).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{refused:?}");
        assert!(!r.text().contains("svc-key"));
    }
    let bearer = format!("Bearer {}", s.token_issuer().issue());
    for accepted in [
        vec![("Ocp-Apim-Subscription-Key", "svc-key")],
        vec![("Authorization", "Bearer svc-key")],
        vec![("Authorization", bearer.as_str())],
    ] {
        let r = post(s, path, fmt, &accepted, SSML).await;
        assert_eq!(r.status, StatusCode::OK, "{accepted:?}: {}", r.text());
    }
    // The key in the query (as the JavaScript SDK sends it).
    let r = post(
        s,
        &format!("{path}?Ocp-Apim-Subscription-Key=svc-key"),
        fmt,
        &[],
        SSML,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn an_exhausted_pool_is_429_with_retry_after() {
    let mut config = common::config();
    config.warm_pool_tts_size = 1;
    config.pool_tts_max_size = 1;
    // Slow chunks: the first response holds the only connection while it streams.
    let t = common::build(
        &config,
        MockConfig {
            chunk_interval: Duration::from_millis(500),
            chunk_bytes: 960,
            ..MockConfig::default()
        },
    );
    t.state.warm_up().await;
    let server = common::start(&t.state).await;
    let http = client();
    let request = || {
        http.post(server.url("/cognitiveservices/v1"))
            .header("content-type", "application/ssml+xml")
            .header("X-Microsoft-OutputFormat", "raw-24khz-16bit-mono-pcm")
            .body(SSML)
    };
    let streaming = request().send().await.expect("first");
    assert_eq!(streaming.status(), 200);
    let refused = request().send().await.expect("second");
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    drop(streaming);
    common::stop(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_throttling_reaches_the_client_as_azures_429() {
    let up = common::azure::Upstream::start(|c| c.azure_tts_transport = TtsTransport::Rest).await;
    up.emulator.add_fault(
        FaultRule::new(Fault::Rest {
            status: 429,
            retry_after: Some(7),
        })
        .target(Target::TtsRest)
        .times(2),
    );
    let r = client()
        .post(up.server.url("/cognitiveservices/v1"))
        .header("content-type", "application/ssml+xml")
        .header("X-Microsoft-OutputFormat", "riff-24khz-16bit-mono-pcm")
        .body(SSML)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("7")
    );
    let body = r.text().await.expect("body");
    assert!(!body.contains(common::azure::UPSTREAM_KEY), "{body}");
    // Once the upstream serves again, so does the service (over the REST transport).
    up.emulator.clear_faults();
    let r = client()
        .post(up.server.url("/cognitiveservices/v1"))
        .header("content-type", "application/ssml+xml")
        .header("X-Microsoft-OutputFormat", "riff-24khz-16bit-mono-pcm")
        .body(SSML)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.expect("audio")[..4], b"RIFF");
    up.finish().await;
}

/// Azure's idle and age closes (1000) can cross a turn's first message, and the
/// connections warmed together idle out together: a turn with no audio yet moves to a
/// fresh connection up to three times, so the caller sees nothing. A server that keeps
/// closing costs the caller one clear error, not a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_closes_before_any_audio_move_the_turn_to_a_fresh_connection_a_bounded_number_of_times()
 {
    let up = common::azure::Upstream::start(|c| {
        c.azure_tts_transport = TtsTransport::Websocket;
        c.warm_pool_tts_size = 2;
    })
    .await;
    let synthesize = || {
        client()
            .post(up.server.url("/cognitiveservices/v1"))
            .header("content-type", "application/ssml+xml")
            .header("X-Microsoft-OutputFormat", "riff-24khz-16bit-mono-pcm")
            .body(SSML)
            .send()
    };
    up.emulator
        .add_fault(idle_close_before_turn(Target::TtsWs, 3));
    let r = synthesize().await.expect("send");
    assert_eq!(r.status(), 200, "three closes in a row are invisible");
    assert_eq!(&r.bytes().await.expect("audio")[..4], b"RIFF");

    up.emulator
        .add_fault(idle_close_before_turn(Target::TtsWs, 4));
    let r = synthesize().await.expect("send");
    assert_eq!(r.status(), 503, "the fourth close reaches the caller");
    let body = r.text().await.expect("body");
    assert!(body.contains("Idle timeout"), "{body}");
    // And the service serves again once the upstream does.
    let r = synthesize().await.expect("send");
    assert_eq!(r.status(), 200);
    // Operators see the moves the callers did not: three, then three more before the
    // fourth close reached the caller.
    let metrics = up.state.metrics().render(&up.state.snapshots());
    assert!(
        metrics
            .lines()
            .any(|l| l == "speech_turn_moves_total{pool=\"speech-tts\"} 6"),
        "{metrics}"
    );
    up.finish().await;
}
