//! `POST /sts/v1.0/issueToken`: the service's own 10-minute bearer tokens for the Speech
//! SDKs, issued for the service key and accepted on every Azure-protocol endpoint, never
//! Azure's key or token, and never printed.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use common::sdk::connect;
use service::secret::Secret;
use speech_mock::backend::MockConfig;

const KEY: &str = "svc-key-for-tokens";

fn keyed_app() -> common::TestApp {
    common::build_with(&common::config(), MockConfig::default(), |mut o| {
        o.api_key = Some(Secret::new(KEY));
        o
    })
}

async fn issue(state: &service::AppState, headers: &[(&str, &str)]) -> common::Reply {
    let mut b = Request::post("/sts/v1.0/issueToken")
        .header("content-type", "application/x-www-form-urlencoded");
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    common::send(state, b.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn the_service_key_buys_a_ten_minute_jwt() {
    let t = keyed_app();
    let r = issue(&t.state, &[("Ocp-Apim-Subscription-Key", KEY)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    let token = r.text();
    // The raw JWT, as Azure answers: no "Bearer " prefix, three base64url parts.
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .expect("base64url"),
    )
    .expect("json claims");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 600);
    assert!(!token.contains(KEY));
    // Two calls, two tokens.
    let again = issue(&t.state, &[("Ocp-Apim-Subscription-Key", KEY)]).await;
    assert_ne!(again.text(), token);
    // The key in the query or as a bearer works too, as everywhere on these paths.
    let r = common::send(
        &t.state,
        Request::post(format!(
            "/sts/v1.0/issueToken?Ocp-Apim-Subscription-Key={KEY}"
        ))
        .body(Body::empty())
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let bearer = format!("Bearer {KEY}");
    let r = issue(&t.state, &[("Authorization", bearer.as_str())]).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn no_token_without_the_key_and_a_token_cannot_renew_itself() {
    let t = keyed_app();
    let token = t.state.token_issuer().issue();
    let bearer = format!("Bearer {token}");
    for refused in [
        vec![],
        vec![("Ocp-Apim-Subscription-Key", "wrong")],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", bearer.as_str())],
        vec![("Ocp-Apim-Subscription-Key", token.as_str())],
    ] {
        let r = issue(&t.state, &refused).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{refused:?}");
        assert!(r.json()["error"]["message"].is_string());
        assert!(!r.text().contains(KEY));
    }
    let r = common::get(&t.state, "/sts/v1.0/issueToken").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn without_a_service_key_tokens_are_still_issued() {
    let t = common::warm_app().await;
    let r = issue(&t.state, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text().split('.').count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_token_opens_every_azure_protocol_endpoint_until_it_expires() {
    let t = keyed_app();
    t.state.warm_up().await;
    let server = common::start(&t.state).await;
    let http = service::test_support::client();
    let token = http
        .post(server.url("/sts/v1.0/issueToken"))
        .header("Ocp-Apim-Subscription-Key", KEY)
        .send()
        .await
        .expect("issue")
        .text()
        .await
        .expect("token");
    let bearer = format!("Bearer {token}");
    let tts = "/tts/cognitiveservices/websocket/v1";
    let stt = "/speech/recognition/interactive/cognitiveservices/v1?language=en-US";
    // Websockets: the header form and the query form (with and without "Bearer ").
    for (path, headers) in [
        (tts.to_owned(), vec![("Authorization", bearer.as_str())]),
        (stt.to_owned(), vec![("Authorization", bearer.as_str())]),
        (format!("{tts}?Authorization={token}"), vec![]),
        (format!("{tts}?Authorization=Bearer%20{token}"), vec![]),
    ] {
        let ws = connect(&server, &path, &headers).await;
        assert!(ws.is_ok(), "{path}: {:?}", ws.err());
    }
    // REST synthesis and the voices list.
    let r = http
        .post(server.url("/cognitiveservices/v1"))
        .header("Authorization", &bearer)
        .header("content-type", "application/ssml+xml")
        .header("X-Microsoft-OutputFormat", "raw-16khz-16bit-mono-pcm")
        .body("<speak>token</speak>")
        .send()
        .await
        .expect("rest");
    assert_eq!(r.status(), 200);
    let r = http
        .get(server.url("/cognitiveservices/voices/list"))
        .header("Authorization", &bearer)
        .send()
        .await
        .expect("voices");
    assert_eq!(r.status(), 200);
    // The token is not a key: it does not open the service's own API.
    let r = http
        .get(server.url("/api/v1/pools"))
        .header("Authorization", &bearer)
        .send()
        .await
        .expect("pools");
    assert_eq!(r.status(), 401);

    // Expired (issued 10 minutes and 1 second ago), tampered, or from another key: 401.
    let expired = t
        .state
        .token_issuer()
        .issue_at(SystemTime::now() - Duration::from_secs(601));
    let (signed, _) = token.rsplit_once('.').unwrap();
    let tampered = format!("{signed}.AAAA");
    let foreign =
        service::azure_proxy::token::TokenIssuer::new(Some(&Secret::new("other"))).issue();
    for bad in [expired, tampered, foreign] {
        let b = format!("Bearer {bad}");
        assert_eq!(
            connect(&server, tts, &[("Authorization", b.as_str())])
                .await
                .err(),
            Some(401)
        );
    }
    // Tokens and keys are secrets: not in the metrics, not in the state's Debug.
    let metrics = http
        .get(server.url("/metrics"))
        .header("Authorization", format!("Bearer {KEY}"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(!metrics.contains(&token) && !metrics.contains(KEY));
    let debug = format!("{:?}", t.state);
    assert!(!debug.contains(KEY), "the state's Debug prints the key");
    common::stop(server).await;
}

/// A writer the log subscriber of one test writes to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn credentials_never_reach_the_logs_even_at_debug_level() {
    let t = keyed_app();
    t.state.warm_up().await;
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let token = issue(&t.state, &[("Ocp-Apim-Subscription-Key", KEY)])
        .await
        .text();
    // Credentials in the query, as the JavaScript SDK sends them, on every kind of path.
    for uri in [
        format!("/sts/v1.0/issueToken?Ocp-Apim-Subscription-Key={KEY}"),
        format!("/cognitiveservices/v1?Authorization=Bearer%20{token}"),
        format!("/cognitiveservices/voices/list?authorization={token}"),
        "/cognitiveservices/v1?Ocp-Apim-Subscription-Key=wrong-guess".to_owned(),
    ] {
        let r = common::send(
            &t.state,
            Request::post(uri)
                .header("content-type", "application/ssml+xml")
                .header("X-Microsoft-OutputFormat", "raw-16khz-16bit-mono-pcm")
                .body(Body::from("<speak>logged?</speak>"))
                .unwrap(),
        )
        .await;
        assert_ne!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    drop(_guard);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("/cognitiveservices/v1"),
        "the requests were logged: {text}"
    );
    for secret in [KEY, token.as_str(), "wrong-guess"] {
        assert!(!text.contains(secret), "{secret} in the logs:\n{text}");
    }
}
