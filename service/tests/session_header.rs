//! The `X-Session-Id` header on every endpoint that takes a session id: TTS, the STT
//! websocket, `DELETE /api/v1/sessions/{id}`. The header alone is enough, it may repeat
//! the body/query/path id, a different id is a 400 with a reason, responses echo it.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Reply, pcm, send, start, stop, warm_app};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use service::{AppState, SESSION_HEADER};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Guards against a hang only; no test asserts on elapsed time.
const HANG: Duration = Duration::from_secs(20);

async fn tts_with(state: &AppState, header: Option<&str>, body: Value) -> Reply {
    let mut request = Request::post("/api/v1/tts").header("content-type", "application/json");
    if let Some(h) = header {
        request = request.header(SESSION_HEADER, h);
    }
    send(state, request.body(Body::from(body.to_string())).unwrap()).await
}

async fn delete_with(state: &AppState, path_id: &str, header: Option<&str>) -> Reply {
    let mut request = Request::delete(format!("/api/v1/sessions/{path_id}"));
    if let Some(h) = header {
        request = request.header(SESSION_HEADER, h);
    }
    send(state, request.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn tts_takes_the_session_from_the_header_alone() {
    let t = warm_app().await;
    let first = tts_with(&t.state, Some("call-h"), json!({"text": "hello"})).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(first.header(SESSION_HEADER), Some("call-h"));
    assert_eq!(first.tier(), Some("warm"));
    // The header bound the connection to the session: the next turn, named only in the
    // body this time, gets the same connection.
    let second = tts_with(
        &t.state,
        None,
        json!({"text": "again", "session_id": "call-h"}),
    )
    .await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(second.tier(), Some("dedicated"));
    assert_eq!(second.header(SESSION_HEADER), Some("call-h"));
    // Both, equal: served, echoed, still the session's connection.
    let both = tts_with(
        &t.state,
        Some("call-h"),
        json!({"text": "third", "session_id": "call-h"}),
    )
    .await;
    assert_eq!(both.status, StatusCode::OK, "{}", both.text());
    assert_eq!(both.tier(), Some("dedicated"));
    assert_eq!(both.header(SESSION_HEADER), Some("call-h"));
    // No session anywhere: nothing echoed.
    let anonymous = tts_with(&t.state, None, json!({"text": "hi"})).await;
    assert_eq!(anonymous.status, StatusCode::OK);
    assert_eq!(anonymous.header(SESSION_HEADER), None);
}

#[tokio::test]
async fn tts_refuses_a_mismatch_and_a_malformed_header_with_a_reason() {
    let t = warm_app().await;
    let r = tts_with(
        &t.state,
        Some("call-a"),
        json!({"text": "hi", "session_id": "call-b"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("call-a") && message.contains("call-b"),
        "{message}"
    );
    let r = tts_with(&t.state, Some("a b"), json!({"text": "hi"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("X-Session-Id"), "{}", r.text());
    // Refused before any connection was taken: no session exists.
    let gone = delete_with(&t.state, "call-a", None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn delete_checks_the_header_against_the_path_and_echoes_it() {
    let t = warm_app().await;
    let r = tts_with(&t.state, Some("call-d"), json!({"text": "hi"})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = delete_with(&t.state, "call-d", Some("call-x")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("call-x"), "{}", r.text());
    let r = delete_with(&t.state, "call-d", Some("call-d")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.header(SESSION_HEADER), Some("call-d"));
    assert_eq!(r.json()["released"]["speech-tts"], true);
}

/// Over a real socket: the websocket upgrade reads the header, echoes it on the 101, and
/// the stream's turns belong to that session.
#[tokio::test]
async fn the_stt_stream_takes_the_session_from_the_header() {
    let t = warm_app().await;
    let server = start(&t.state).await;

    let mut request = server
        .ws_url("/api/v1/stt")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert(SESSION_HEADER, "call-s".parse().unwrap());
    let (mut ws, response) = tokio::time::timeout(HANG, connect_async(request))
        .await
        .expect("in time")
        .expect("connect");
    assert_eq!(
        response
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok()),
        Some("call-s")
    );
    let hello = next_text(&mut ws).await;
    assert_eq!(hello["type"], "connected");
    assert_eq!(hello["session_id"], "call-s");
    for chunk in pcm(0.5).chunks(8000) {
        ws.send(Message::binary(chunk.to_vec())).await.unwrap();
    }
    ws.send(Message::text(r#"{"type":"end"}"#)).await.unwrap();
    loop {
        let v = next_text(&mut ws).await;
        if v["type"] == "turn_end" {
            break;
        }
        assert_ne!(v["type"], "error", "{v}");
    }
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(HANG, ws.next()).await {}

    // The stream's connection is parked in the session named by the header.
    let r = delete_with(&t.state, "call-s", Some("call-s")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["released"]["speech-stt"], true);

    // A query parameter naming another session is refused before the upgrade.
    let mut request = server
        .ws_url("/api/v1/stt?session_id=call-q")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert(SESSION_HEADER, "call-other".parse().unwrap());
    match tokio::time::timeout(HANG, connect_async(request))
        .await
        .expect("in time")
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("call-other"), "{body}");
        }
        other => panic!("expected a 400, got {other:?}"),
    }
    stop(server).await;
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        match tokio::time::timeout(HANG, ws.next())
            .await
            .expect("a message in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
            Some(Ok(_)) => continue,
            other => panic!("stream ended: {other:?}"),
        }
    }
}

/// The served OpenAPI document declares the header on the four endpoints, so generated
/// clients send it.
#[tokio::test]
async fn the_openapi_document_declares_the_header() {
    let t = warm_app().await;
    let doc = common::get(&t.state, "/api/v1/openapi.json").await.json();
    for (path, method) in [
        ("/api/v1/tts", "post"),
        ("/api/v1/stt", "get"),
        ("/api/v1/tts/stream", "get"),
        ("/api/v1/sessions/{id}", "delete"),
    ] {
        let params = doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("{method} {path} has no parameters"));
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "X-Session-Id" && p["in"] == "header"),
            "{method} {path}: {params:?}"
        );
    }
}
