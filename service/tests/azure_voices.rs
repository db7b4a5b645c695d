//! `GET /cognitiveservices/voices/list`: Azure's voices list, from the upstream with the
//! azure backend (cached briefly), the mock's own voices with the mock backend, in the
//! same schema either way.

mod common;

use axum::http::StatusCode;
use service::secret::Secret;
use service::test_support::client;
use speech_emulator::{Fault, FaultRule, Target};
use speech_mock::backend::MockConfig;

/// The fields Azure documents for every voice.
const FIELDS: [&str; 11] = [
    "Name",
    "DisplayName",
    "LocalName",
    "ShortName",
    "Gender",
    "Locale",
    "LocaleName",
    "SampleRateHertz",
    "VoiceType",
    "Status",
    "WordsPerMinute",
];

fn check_schema(list: &serde_json::Value) -> Vec<String> {
    let voices = list.as_array().expect("a JSON array");
    assert!(!voices.is_empty());
    for v in voices {
        for f in FIELDS {
            assert!(v[f].is_string(), "{f} missing in {v}");
        }
    }
    voices
        .iter()
        .map(|v| v["ShortName"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_mock_lists_its_voices_in_azures_schema() {
    let t = common::warm_app().await;
    for path in [
        "/cognitiveservices/voices/list",
        "/tts/cognitiveservices/voices/list",
    ] {
        let r = common::get(&t.state, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json"))
        );
        let names = check_schema(&r.json());
        // The service's default voice is among them.
        assert!(
            names.contains(&t.state.options().default_voice),
            "{names:?}"
        );
    }
}

#[tokio::test]
async fn the_list_needs_the_service_key() {
    let t = common::build_with(&common::config(), MockConfig::default(), |mut o| {
        o.api_key = Some(Secret::new("svc"));
        o
    });
    let r = common::get(&t.state, "/cognitiveservices/voices/list").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = common::get(
        &t.state,
        "/cognitiveservices/voices/list?Ocp-Apim-Subscription-Key=svc",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_azure_list_is_fetched_upstream_cached_and_its_failures_passed_on() {
    let up = common::azure::Upstream::start(|_| {}).await;
    let url = up.server.url("/cognitiveservices/voices/list");
    // Throttled upstream: Azure's 429 with its Retry-After, and nothing cached.
    up.emulator.add_fault(
        FaultRule::new(Fault::Rest {
            status: 429,
            retry_after: Some(3),
        })
        .target(Target::Voices)
        .once(),
    );
    let r = client().get(&url).send().await.expect("send");
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("3")
    );
    let before = up.emulator.counters().rest_requests;
    let r = client().get(&url).send().await.expect("send");
    assert_eq!(r.status(), 200);
    let list: serde_json::Value = r.json().await.expect("json");
    let names = check_schema(&list);
    assert!(names.iter().any(|n| n.starts_with("en-US-")), "{names:?}");
    assert_eq!(up.emulator.counters().rest_requests, before + 1);
    // Asked again within the minute: served from the cache, no upstream request.
    for _ in 0..3 {
        let again: serde_json::Value = client()
            .get(up.server.url("/tts/cognitiveservices/voices/list"))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(again, list);
    }
    assert_eq!(up.emulator.counters().rest_requests, before + 1);
    up.finish().await;
}
