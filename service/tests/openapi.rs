//! The served OpenAPI document describes the real API: every documented operation is
//! routed, and real responses (success and error) validate against the schemas the
//! document gives for their status, with undocumented fields counted as failures.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Reply, build, build_with, config, get, send, tts, warm_app};
use serde_json::{Value, json};
use service::secret::Secret;
use speech_mock::backend::MockConfig;
use tower::ServiceExt;

/// The document as served.
async fn document() -> Value {
    let t = build(&config(), MockConfig::default());
    let r = get(&t.state, "/api/v1/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// Escapes one JSON-pointer segment.
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Forbids properties a schema does not list, everywhere in `schema`, so a response field
/// missing from the document fails validation instead of passing unnoticed.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for value in map.values_mut() {
                close_objects(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Validates `reply` against the JSON schema the document gives for `method path` and the
/// reply's status. Panics with every violation.
fn assert_matches(doc: &Value, method: &str, path: &str, reply: &Reply) {
    let errors = violations(doc, method, path, reply);
    assert!(
        errors.is_empty(),
        "{method} {path} {} does not match the document:\n{}\nbody: {}",
        reply.status,
        errors.join("\n"),
        reply.text()
    );
}

/// How `reply` breaks the schema the document gives for `method path` and its status.
fn violations(doc: &Value, method: &str, path: &str, reply: &Reply) -> Vec<String> {
    let status = reply.status.as_u16().to_string();
    let pointer = format!(
        "/paths/{}/{method}/responses/{status}/content/application~1json/schema",
        escape(path)
    );
    assert!(
        doc.pointer(&pointer).is_some(),
        "{method} {path} answered {status}, which the document does not describe: {}",
        reply.text()
    );
    // The whole document is the root resource, so the schemas' `#/components/...`
    // references resolve; the root's own `$ref` selects the response schema.
    let mut root = doc.clone();
    close_objects(&mut root);
    // A `$ref` is a URI: the braces of a path template must be percent-encoded.
    let fragment = pointer.replace('{', "%7B").replace('}', "%7D");
    root["$ref"] = Value::String(format!("#{fragment}"));
    let validator = jsonschema::draft202012::new(&root).expect("the document is a valid schema");
    let body = reply.json();
    validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[tokio::test]
async fn the_document_lists_every_endpoint_and_each_is_routed() {
    let doc = document().await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "delete", "put", "patch"] {
            if item.get(method).is_some() {
                operations.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /api/v1/sessions/{id}",
            "DELETE /api/v1/tts/{request_id}",
            "GET /",
            "GET /api/v1/openapi.json",
            "GET /api/v1/pools",
            "GET /api/v1/stt",
            "GET /api/v1/tts/stream",
            "GET /livez",
            "GET /metrics",
            "GET /readyz",
            "POST /api/v1/tts",
        ]
    );
    // Each documented operation reaches a handler: the router's fallback answers
    // `not_found` for anything else (a 404 from a handler has another code).
    let t = build(&config(), MockConfig::default());
    for operation in &operations {
        let (method, path) = operation.split_once(' ').unwrap();
        let uri = path
            .replace("{id}", "some-session")
            .replace("{request_id}", "0123456789abcdef0123456789abcdef");
        let request = Request::builder()
            .method(method)
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let r = send(&t.state, request).await;
        let not_routed =
            r.status == StatusCode::NOT_FOUND && r.json()["error"]["code"] == "not_found";
        assert!(!not_routed, "{operation} is documented but not routed");
    }
}

#[tokio::test]
async fn pools_responses_match_the_document() {
    let doc = document().await;
    let t = warm_app().await;
    // Before any traffic: every latency percentile is null.
    assert_matches(
        &doc,
        "get",
        "/api/v1/pools",
        &get(&t.state, "/api/v1/pools").await,
    );
    // After traffic on every tier: percentiles are numbers, a session is open.
    for body in [
        json!({"text": "one", "session_id": "call-1"}),
        json!({"text": "two", "session_id": "call-1"}),
        json!({"text": "three"}),
    ] {
        assert_eq!(tts(&t.state, body).await.status, StatusCode::OK);
    }
    let r = get(&t.state, "/api/v1/pools").await;
    assert_eq!(r.json()["summary"]["allocations_total"], 3);
    assert_matches(&doc, "get", "/api/v1/pools", &r);
    // Draining: degraded figures still have the same shape.
    t.state.begin_drain();
    assert_matches(
        &doc,
        "get",
        "/api/v1/pools",
        &get(&t.state, "/api/v1/pools").await,
    );
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_field_missing_from_the_document_is_caught() {
    let mut doc = document().await;
    let pool_status = doc
        .pointer_mut("/components/schemas/PoolStatus")
        .expect("PoolStatus is a component");
    pool_status["properties"]
        .as_object_mut()
        .unwrap()
        .remove("last_error")
        .expect("last_error is documented");
    let t = warm_app().await;
    let r = get(&t.state, "/api/v1/pools").await;
    let errors = violations(&doc, "get", "/api/v1/pools", &r);
    assert!(
        errors.iter().any(|e| e.contains("last_error")),
        "{errors:?}"
    );
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn health_and_session_responses_match_the_document() {
    let doc = document().await;
    let t = build(&config(), MockConfig::default());
    // Not warmed yet: 503 warming.
    let r = get(&t.state, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_matches(&doc, "get", "/readyz", &r);
    t.state.warm_up().await;
    let r = get(&t.state, "/readyz").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_matches(&doc, "get", "/readyz", &r);
    assert_matches(&doc, "get", "/livez", &get(&t.state, "/livez").await);

    assert_eq!(
        tts(&t.state, json!({"text": "hi", "session_id": "call-9"}))
            .await
            .status,
        StatusCode::OK
    );
    let delete = |id: &str| {
        Request::delete(format!("/api/v1/sessions/{id}"))
            .body(Body::empty())
            .unwrap()
    };
    let r = send(&t.state, delete("call-9")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_matches(&doc, "delete", "/api/v1/sessions/{id}", &r);
    let r = send(&t.state, delete("call-9")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_matches(&doc, "delete", "/api/v1/sessions/{id}", &r);
    let r = send(&t.state, delete("bad%20id")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_matches(&doc, "delete", "/api/v1/sessions/{id}", &r);
    t.state.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn tts_cancel_responses_match_the_document() {
    let doc = document().await;
    // Slow chunks (7 s of audio in 67 chunks, 10 ms apart): the turn is still streaming
    // when the cancel comes.
    let mock = MockConfig {
        chunk_interval: Duration::from_millis(10),
        ..MockConfig::default()
    };
    let t = build(&config(), mock);
    t.state.warm_up().await;
    let post = Request::post("/api/v1/tts")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"text": "a long answer ".repeat(8)}).to_string(),
        ))
        .unwrap();
    // Headers come with the first chunk; the body is left unread, so the turn is in flight.
    let response = service::app(t.state.clone())
        .oneshot(post)
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let id = response.headers()[service::REQUEST_ID_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    let delete = |id: &str| {
        Request::delete(format!("/api/v1/tts/{id}"))
            .body(Body::empty())
            .unwrap()
    };
    let path = "/api/v1/tts/{request_id}";
    let r = send(&t.state, delete(&id)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_matches(&doc, "delete", path, &r);
    drop(response);
    let r = send(&t.state, delete(&"0".repeat(32))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_matches(&doc, "delete", path, &r);
    let r = send(&t.state, delete("nope")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_matches(&doc, "delete", path, &r);
    t.state.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn error_responses_match_the_document() {
    let doc = document().await;
    let t = warm_app().await;
    let r = tts(&t.state, json!({"text": "a", "ssml": "<speak/>"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_matches(&doc, "post", "/api/v1/tts", &r);
    let r = tts(&t.state, json!({"text": "x".repeat(300_000)})).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_matches(&doc, "post", "/api/v1/tts", &r);
    let r = get(&t.state, "/api/v1/stt").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_matches(&doc, "get", "/api/v1/stt", &r);
    t.state.begin_drain();
    let r = tts(&t.state, json!({"text": "late"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_matches(&doc, "post", "/api/v1/tts", &r);
    t.state.shutdown(Duration::from_secs(1)).await;

    // With an API key, a request without it is refused as documented. The dashboard page
    // holds no data and is served to everyone; its own data requests carry the key.
    let keyed = build_with(&config(), MockConfig::default(), |mut o| {
        o.api_key = Some(Secret::new("k3y".to_owned()));
        o
    });
    for (method, path) in [("get", "/api/v1/pools"), ("get", "/metrics")] {
        let r = get(&keyed.state, path).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_matches(&doc, method, path, &r);
    }
    let r = get(&keyed.state, "/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        doc.pointer("/paths/~1/get/responses/200/content/text~1html")
            .is_some(),
        "the document describes the page the service serves"
    );
}
