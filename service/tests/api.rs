//! The HTTP API through `app(state).oneshot(...)`: health, pools, metrics, TTS, sessions,
//! auth, error mapping, dashboard.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Reply, build, build_with, config, get, send, tts, warm_app};
use http_body_util::BodyExt;
use serde_json::json;
use service::secret::Secret;
use service::{AppState, Pools, ServiceOptions, app};
use speech_core::{
    RecognizerManager, SpeechError, Synthesizer, SynthesizerFactory, SynthesizerManager,
};
use speech_mock::backend::{MockConfig, mock_stt_manager};
use tower::ServiceExt;

#[tokio::test]
async fn livez_always_and_readyz_only_when_warm_and_not_draining() {
    let mut c = config();
    // No maintainer: nothing fills the pools until warm_up, so "not yet warm" is stable.
    c.warm_pool_background_refresh = false;
    let t = build(&c, MockConfig::default());
    assert_eq!(get(&t.state, "/livez").await.status, StatusCode::OK);
    let r = get(&t.state, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["status"], "warming");
    t.state.warm_up().await;
    let r = get(&t.state, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["pools"]["speech-tts"], true);
    t.state.begin_drain();
    let r = get(&t.state, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["status"], "draining");
    assert_eq!(get(&t.state, "/livez").await.status, StatusCode::OK);
    // New speech requests are refused while draining.
    let r = tts(&t.state, json!({"text": "hi"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.header("retry-after").is_some());
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn pools_endpoint_has_the_seeds_schema_and_counts_tiers() {
    let t = warm_app().await;
    let r = get(&t.state, "/api/v1/pools").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["status"], "healthy");
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["summary"]["hit_rate_percent"], 0.0);
    assert_eq!(v["summary"]["allocations_total"], 0);
    for pool in ["speech-tts", "speech-stt"] {
        let p = &v["pools"][pool];
        for field in [
            "name",
            "ready",
            "warm_pool_size",
            "warm_pool_target",
            "session_awareness",
            "active_sessions",
            "background_warmup",
            "allocations_total",
            "allocations_dedicated",
            "allocations_warm",
            "allocations_cold",
            "warmup_cycles",
            "warmup_failures",
            "max_size",
            "in_use",
            "waiting",
            "create_failures",
            "acquire_latency",
        ] {
            assert!(p.get(field).is_some(), "{pool} lacks {field}: {p}");
        }
        assert_eq!(p["name"], pool);
    }
    assert_eq!(v["pools"]["speech-tts"]["warm_pool_target"], 2);
    assert_eq!(v["pools"]["speech-stt"]["warm_pool_target"], 1);

    // Two turns of one call (WARM then DEDICATED) and one plain request (WARM).
    for body in [
        json!({"text": "one", "session_id": "call-1"}),
        json!({"text": "two", "session_id": "call-1"}),
        json!({"text": "three"}),
    ] {
        assert_eq!(tts(&t.state, body).await.status, StatusCode::OK);
    }
    let v = get(&t.state, "/api/v1/pools").await.json();
    let s = &v["summary"];
    assert_eq!(s["allocations_total"], 3);
    assert_eq!(
        s["tier_breakdown"],
        json!({"dedicated": 1, "warm": 2, "cold": 0})
    );
    assert_eq!(s["hit_rate_percent"], 100.0);
    assert_eq!(s["total_active_sessions"], 1);
    assert_eq!(v["pools"]["speech-tts"]["active_sessions"], 1);
    assert_eq!(v["backend"], "mock");
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn disabled_warm_pool_serves_cold_and_hit_rate_is_rounded() {
    let mut c = config();
    c.warm_pool_enabled = false;
    let t = build(&c, MockConfig::default());
    t.state.warm_up().await;
    let r = tts(&t.state, json!({"text": "a", "session_id": "s"})).await;
    assert_eq!(r.tier(), Some("cold"));
    let r = tts(&t.state, json!({"text": "b", "session_id": "s"})).await;
    assert_eq!(r.tier(), Some("dedicated"));
    let r = tts(&t.state, json!({"text": "c"})).await;
    assert_eq!(r.tier(), Some("cold"));
    let v = get(&t.state, "/api/v1/pools").await.json();
    // 1 of 3 = 33.33… → 33.3
    assert_eq!(v["summary"]["hit_rate_percent"], 33.3);
    assert_eq!(v["pools"]["speech-tts"]["warm_pool_target"], 0);
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn tts_streams_audio_with_content_type_and_tier() {
    let t = warm_app().await;
    let r = tts(
        &t.state,
        json!({"text": "hello world", "session_id": "c-7"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("audio/wav"));
    assert_eq!(r.tier(), Some("warm"));
    assert_eq!(r.header("x-session-id"), Some("c-7"));
    assert_eq!(r.header("x-request-id").map(str::len), Some(32));
    // The pool wait, in the standard Server-Timing form a browser's devtools understand.
    let timing = r.header("server-timing").expect("server-timing header");
    let waited: f64 = timing
        .strip_prefix("acquire;dur=")
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("unexpected server-timing {timing:?}"));
    assert!(waited >= 0.0);
    assert_eq!(&r.body[..4], b"RIFF");
    assert!(r.body.len() > 44);
    let r = tts(
        &t.state,
        json!({"text": "hello again", "session_id": "c-7"}),
    )
    .await;
    assert_eq!(r.tier(), Some("dedicated"));

    let r = tts(
        &t.state,
        json!({"ssml": "<speak version='1.0' xml:lang='en-US'><voice name='en-US-AvaNeural'>hi</voice></speak>",
               "format": "audio-24khz-48kbitrate-mono-mp3"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("audio/mpeg"));
    let r = tts(
        &t.state,
        json!({"text": "pcm", "format": "raw-16khz-16bit-mono-pcm"}),
    )
    .await;
    assert!(r.header("content-type").unwrap().starts_with("audio/pcm"));
    t.state.shutdown(Duration::from_secs(1)).await;
    assert_eq!(t.tts.snapshot().open_now, 0, "{:?}", t.tts.snapshot());
}

/// The first audio leaves before the synthesis ends: with 10 s between chunks (paused
/// time, so nothing actually waits), the first chunk is readable while the mock has
/// served no complete turn.
#[tokio::test(start_paused = true)]
async fn tts_first_bytes_leave_before_synthesis_ends() {
    let mock = MockConfig {
        chunk_interval: Duration::from_secs(10),
        chunk_bytes: 1000,
        ..MockConfig::default()
    };
    let t = build(&config(), mock);
    t.state.warm_up().await;
    let request = Request::post("/api/v1/tts")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"text": "a long sentence to speak"}).to_string(),
        ))
        .unwrap();
    let response = app(t.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(!first.is_empty());
    assert_eq!(t.tts.snapshot().turns_served, 0);
    // Reading the rest lets the turn complete.
    let rest = body.collect().await.unwrap().to_bytes();
    assert!(!rest.is_empty());
    assert_eq!(t.tts.snapshot().turns_served, 1);
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn bad_tts_input_is_400_with_a_reason() {
    let t = warm_app().await;
    let long_ssml = format!("<speak version='1.0'>{}</speak>", "a".repeat(70_000));
    let cases: Vec<(String, &str)> = vec![
        (json!({"text": ""}).to_string(), "empty"),
        (json!({"text": "   "}).to_string(), "empty"),
        (json!({"text": "hi", "format": "wav"}).to_string(), "format"),
        (
            json!({"text": "hi", "voice": "en US<x>"}).to_string(),
            "voice",
        ),
        (json!({"ssml": long_ssml}).to_string(), "65536"),
        // SSML Azure could not parse: refused here, as Azure would, before a connection.
        (json!({"ssml": "<speak"}).to_string(), "not well-formed"),
        (
            json!({"ssml": "<speak><voice name='x'>hi</speak>"}).to_string(),
            "not well-formed",
        ),
        (
            json!({"ssml": "<voice name='x'>hi</voice>"}).to_string(),
            "<speak>",
        ),
        (
            json!({"text": "hi", "ssml": "<speak/>"}).to_string(),
            "not both",
        ),
        (json!({"voice": "en-US-AvaNeural"}).to_string(), "\"text\""),
        (
            json!({"text": "hi", "session_id": "has space"}).to_string(),
            "session_id",
        ),
        ("{\"text\": ".to_owned(), "malformed JSON"),
        ("not json".to_owned(), "malformed JSON"),
    ];
    for (body, reason) in cases {
        let r = common::post_json(&t.state, "/api/v1/tts", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{body:.80}: {}",
            r.text()
        );
        let v = r.json();
        assert_eq!(v["error"]["code"], "bad_request");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(reason), "{body:.80}: {msg}");
    }
    // A bad request never costs a connection.
    assert_eq!(t.tts.snapshot().turns_started, 0);
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let t = warm_app().await;
    let huge = json!({"text": "a".repeat(300 * 1024)}).to_string();
    let r = common::post_json(&t.state, "/api/v1/tts", huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn exhausted_pool_is_429_with_retry_after() {
    let mut c = config();
    c.warm_pool_tts_size = 1;
    c.pool_tts_max_size = 1;
    c.pool_acquire_timeout = Duration::from_millis(100);
    // One turn streaming slowly holds the only connection. (A session's parked connection
    // would not: the pool reclaims it for a waiting caller.)
    let mock = MockConfig {
        chunk_interval: Duration::from_secs(30),
        ..MockConfig::default()
    };
    let t = build(&c, mock);
    t.state.warm_up().await;
    let busy = app(t.state.clone())
        .oneshot(
            Request::post("/api/v1/tts")
                .header("content-type", "application/json")
                .body(Body::from(json!({"text": "mine, and long"}).to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(busy.status(), StatusCode::OK);
    let r = tts(&t.state, json!({"text": "yours"})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    let v = r.json();
    assert_eq!(v["error"]["code"], "pool_exhausted");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("speech-tts")
    );
    drop(busy);
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[derive(Debug)]
struct Failing(SpeechError);

#[speech_core::async_trait]
impl SynthesizerFactory for Failing {
    async fn create(&self) -> Result<Box<dyn Synthesizer>, SpeechError> {
        Err(self.0.clone())
    }
}

fn failing_app(error: SpeechError) -> AppState {
    let mut c = config();
    c.warm_pool_enabled = false;
    let (stt, _) = mock_stt_manager(MockConfig::default());
    let pools = Pools::build(
        &c,
        SynthesizerManager::new(Failing(error)),
        RecognizerManager::clone(&stt),
    )
    .unwrap();
    AppState::new(pools, ServiceOptions::from_config(&c, "mock"))
}

#[tokio::test]
async fn upstream_errors_map_by_class() {
    let cases = [
        (
            SpeechError::auth("HTTP 401: access denied"),
            502,
            None,
            "credentials",
        ),
        (
            SpeechError::throttled(Some(Duration::from_secs(3)), "HTTP 429"),
            429,
            Some("3"),
            "throttled",
        ),
        (
            SpeechError::transient("HTTP 503"),
            503,
            Some("1"),
            "transient",
        ),
        (SpeechError::timeout("connect"), 504, None, "timed out"),
    ];
    for (error, status, retry, reason) in cases {
        let state = failing_app(error.clone());
        let r = tts(&state, json!({"text": "hi"})).await;
        assert_eq!(r.status.as_u16(), status, "{error}: {}", r.text());
        assert_eq!(r.header("retry-after"), retry, "{error}");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(reason), "{error}: {msg}");
        let metrics = get(&state, "/metrics").await.text();
        let class = error.class().as_str();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("speech_upstream_errors_total")
                    && l.contains(&format!("class=\"{class}\""))
                    && l.ends_with(" 1")),
            "{metrics}"
        );
        state.shutdown(Duration::from_secs(1)).await;
    }
}

/// A connection that dies before the first audio byte costs the caller nothing but time:
/// the turn is retried once on a fresh connection. After audio has started, or when the
/// retry fails too, the caller gets the error.
#[tokio::test]
async fn a_connection_lost_before_any_audio_is_retried_once_on_a_fresh_one() {
    // Every third turn of the factory drops before its first chunk.
    let mock = MockConfig {
        drop_after_chunks: Some(0),
        drop_every_nth_turn: Some(3),
        ..MockConfig::default()
    };
    let t = build(&config(), mock);
    t.state.warm_up().await;
    for (text, tier) in [("first", "warm"), ("second", "dedicated")] {
        let r = tts(&t.state, json!({"text": text, "session_id": "c-r"})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.tier(), Some(tier));
    }
    // Turn 3 drops on the session's connection; the retry is turn 4, on a warm one.
    let r = tts(&t.state, json!({"text": "third", "session_id": "c-r"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(&r.body[..4], b"RIFF");
    assert_eq!(r.tier(), Some("warm"), "a new connection, not the dead one");
    let counters = t.tts.snapshot();
    assert_eq!(counters.dropped_mid_stream, 1, "{counters:?}");
    assert_eq!(counters.turns_served, 3, "{counters:?}");
    let metrics = get(&t.state, "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("speech_upstream_errors_total")
                && l.contains("class=\"connection_closed\"")
                && l.ends_with(" 1")),
        "the failed attempt is still counted: {metrics}"
    );
    // The session kept the connection that worked.
    let r = tts(&t.state, json!({"text": "fourth", "session_id": "c-r"})).await;
    assert_eq!(r.tier(), Some("dedicated"));
    t.state.shutdown(Duration::from_secs(1)).await;

    // When every turn drops, the one retry fails too and the caller gets a clear 503.
    let mock = MockConfig {
        drop_after_chunks: Some(0),
        ..MockConfig::default()
    };
    let t = build(&config(), mock);
    t.state.warm_up().await;
    let r = tts(&t.state, json!({"text": "doomed"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(
        t.tts.snapshot().dropped_mid_stream,
        2,
        "one attempt and one retry"
    );
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn mock_create_failures_are_503_and_counted() {
    let mut c = config();
    c.warm_pool_enabled = false;
    let mock = MockConfig {
        fail_create_every: Some(1),
        ..MockConfig::default()
    };
    let t = build(&c, mock);
    let r = tts(&t.state, json!({"text": "hi"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let v = get(&t.state, "/api/v1/pools").await.json();
    assert_eq!(v["pools"]["speech-tts"]["create_failures"], 1);
    assert!(v["pools"]["speech-tts"]["last_error"].is_string());
    let m = get(&t.state, "/metrics").await.text();
    assert!(
        m.contains("speech_pool_create_failures_total{pool=\"speech-tts\"} 1"),
        "{m}"
    );
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_failure_mid_stream_aborts_the_body() {
    let mock = MockConfig {
        chunk_bytes: 200,
        drop_after_chunks: Some(2),
        ..MockConfig::default()
    };
    let t = build(&config(), mock);
    t.state.warm_up().await;
    let request = Request::post("/api/v1/tts")
        .header("content-type", "application/json")
        .body(Body::from(json!({"text": "this will be cut"}).to_string()))
        .unwrap();
    let response = app(t.state.clone()).oneshot(request).await.unwrap();
    // Audio had started, so the status is already 200; the client learns of the failure
    // from the body ending in an error instead of a clean end.
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());
    // The broken connection was discarded, not returned to the warm set.
    t.state.shutdown(Duration::from_secs(1)).await;
    let s = t.tts.snapshot();
    assert_eq!(s.open_now, 0, "{s:?}");
}

#[tokio::test]
async fn metrics_show_pool_levels_tiers_latency_and_http() {
    let t = warm_app().await;
    assert_eq!(
        tts(&t.state, json!({"text": "x"})).await.status,
        StatusCode::OK
    );
    let r = get(&t.state, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = r.text();
    for needle in [
        "speech_pool_warm{pool=\"speech-tts\"}",
        "speech_pool_warm_target{pool=\"speech-stt\"} 1",
        "speech_pool_ready{pool=\"speech-tts\"} 1",
        "speech_pool_allocations_total{pool=\"speech-tts\",tier=\"warm\"} 1",
        "speech_pool_allocations_total{pool=\"speech-tts\",tier=\"cold\"} 0",
        "speech_pool_create_failures_total{pool=\"speech-tts\"} 0",
        "speech_pool_acquire_duration_seconds_bucket{pool=\"speech-tts\",tier=\"warm\"",
        "speech_tts_first_audio_seconds_bucket{tier=\"warm\"",
        "http_requests_total{method=\"POST\",route=\"/api/v1/tts\",status=\"200\"} 1",
        "http_request_duration_seconds_bucket{method=\"POST\",route=\"/api/v1/tts\",status=\"200\"",
        "# TYPE speech_pool_acquire_duration_seconds histogram",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    // Unknown paths share one label value instead of creating one per path.
    get(&t.state, "/no/such/path/123").await;
    let m = get(&t.state, "/metrics").await.text();
    assert!(m.contains("route=\"unmatched\""), "{m}");
    assert!(!m.contains("/no/such/path/123"));
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn sessions_release_and_404_for_unknown() {
    let t = warm_app().await;
    let del = |id: &str| {
        Request::delete(format!("/api/v1/sessions/{id}"))
            .body(Body::empty())
            .unwrap()
    };
    let r = send(&t.state, del("nobody")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "unknown_session");
    let r = send(&t.state, del("bad%20id")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    tts(&t.state, json!({"text": "hi", "session_id": "call-9"})).await;
    let before = get(&t.state, "/api/v1/pools").await.json();
    assert_eq!(before["pools"]["speech-tts"]["active_sessions"], 1);
    let r = send(&t.state, del("call-9")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["released"]["speech-tts"], true);
    assert_eq!(r.json()["released"]["speech-stt"], false);
    let after = get(&t.state, "/api/v1/pools").await.json();
    assert_eq!(after["pools"]["speech-tts"]["active_sessions"], 0);
    assert_eq!(
        send(&t.state, del("call-9")).await.status,
        StatusCode::NOT_FOUND
    );
    // The next turn of that id starts over from the warm set.
    let r = tts(&t.state, json!({"text": "hi", "session_id": "call-9"})).await;
    assert_eq!(r.tier(), Some("warm"));
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn api_key_guards_everything_but_health_and_never_leaks() {
    const KEY: &str = "sk-test-4f1d2c9a";
    let t = build_with(&config(), MockConfig::default(), |mut o| {
        o.api_key = Some(Secret::new(KEY));
        o
    });
    t.state.warm_up().await;
    let with = |uri: &str, auth: Option<&str>| {
        let mut b = Request::get(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Body::empty()).unwrap()
    };
    assert_eq!(get(&t.state, "/livez").await.status, StatusCode::OK);
    assert_eq!(get(&t.state, "/readyz").await.status, StatusCode::OK);
    let mut seen = Vec::<Reply>::new();
    // The dashboard page holds no data and is served to anyone; its data needs the key.
    assert_eq!(send(&t.state, with("/", None)).await.status, StatusCode::OK);
    for uri in ["/api/v1/pools", "/metrics"] {
        let r = send(&t.state, with(uri, None)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        seen.push(r);
        let r = send(&t.state, with(uri, Some("Bearer wrong-key"))).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        seen.push(r);
        let r = send(&t.state, with(uri, Some(&format!("Bearer {KEY}")))).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        seen.push(r);
    }
    let r = tts(&t.state, json!({"text": "hi"})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(
        &t.state,
        Request::post("/api/v1/tts")
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .body(Body::from(json!({"text": "hi"}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    for r in &seen {
        assert!(!r.text().contains(KEY));
        for v in r.headers.values() {
            assert!(!v.to_str().unwrap_or("").contains(KEY));
        }
    }
    assert!(!format!("{:?}", t.state).contains(KEY));
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn dashboard_is_self_contained_html() {
    let t = warm_app().await;
    let r = get(&t.state, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = r.text();
    assert!(html.contains("<canvas"));
    assert!(html.contains("/api/v1/pools"));
    // No build step, no CDN: nothing is loaded from anywhere else.
    assert!(!html.contains("<script src"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external URL"
    );
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("default-src 'none'")
    );
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn stt_without_upgrade_and_unknown_routes_are_client_errors() {
    let t = warm_app().await;
    let r = get(&t.state, "/api/v1/stt").await;
    assert!(r.status.is_client_error(), "{}", r.status);
    assert_eq!(r.json()["error"]["code"], "websocket_required");
    let r = get(&t.state, "/api/v1/stt?colour=red").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = get(&t.state, "/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"]["code"], "not_found");
    t.state.shutdown(Duration::from_secs(1)).await;
}
