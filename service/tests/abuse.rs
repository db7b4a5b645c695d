//! Limits that keep one client from starving the others: each test plays a hostile but
//! legal client with short settings and checks the service stays usable. Durations here
//! are settings or hang guards; no test asserts on how long anything took beyond a
//! generous bound that separates "bounded" from "waits for the whole grace period".

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use common::{build_with, config, pcm, send, start, start_with_grace, stop, tts};
use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use service::ServiceOptions;
use service::limits::Limits;
use speech_mock::backend::MockConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};
use tower::ServiceExt;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Guards against a hang only.
const HANG: Duration = Duration::from_secs(20);

/// A warmed app over mocks with `mock`, whose limits `limits` adjusts.
async fn app_with(mock: MockConfig, limits: impl FnOnce(&mut Limits)) -> common::TestApp {
    let t = build_with(&config(), mock, |mut o: ServiceOptions| {
        limits(&mut o.limits);
        o
    });
    t.state.warm_up().await;
    t
}

/// A synthesis that takes a while: chunks 5 ms apart.
fn slow_tts() -> MockConfig {
    MockConfig {
        chunk_interval: Duration::from_millis(5),
        ..MockConfig::default()
    }
}

/// Text for about 150 chunks of `slow_tts` (14 s of audio, 0.7 s to produce).
fn long_text() -> String {
    "hello there ".repeat(20)
}

fn tts_request(body: Value) -> Request<Body> {
    Request::post("/api/v1/tts")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

/// Waits (bounded) until `check` holds; panics with `what` otherwise.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + HANG;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_tts_client_that_stops_reading_is_cut_off_and_the_connection_kept() {
    let t = app_with(slow_tts(), |l| {
        l.http_write_timeout = Duration::from_secs(1);
        l.tts_drain_timeout = Duration::from_secs(600);
    })
    .await;
    let response = service::app(t.state.clone())
        .oneshot(tts_request(json!({ "text": long_text() })))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The client reads the head and nothing else. The write timeout cuts it off and the
    // rest of the turn is drained upstream, so the connection goes back to the pool.
    let pool = t.state.pools().tts.clone();
    eventually("the stalled turn returns its connection", || {
        pool.snapshot().in_use == 0 && t.tts.snapshot().turns_served == 1
    })
    .await;
    let counters = t.tts.snapshot();
    assert_eq!(counters.turns_cancelled, 0, "{counters:?}");
    // What the client does read afterwards is cut short with an error, never a clean end.
    let body = response.into_body().collect().await;
    assert!(body.is_err(), "a cut-off stream must not look complete");
    // The kept connection serves the next request warm.
    let next = tts(&t.state, json!({ "text": "hi" })).await;
    assert_eq!(next.status, 200);
    assert_eq!(next.header(service::TIER_HEADER), Some("warm"));
}

#[tokio::test(start_paused = true)]
async fn a_tts_client_hanging_up_mid_stream_leaves_the_connection_reusable() {
    let t = app_with(slow_tts(), |_| {}).await;
    let response = service::app(t.state.clone())
        .oneshot(tts_request(
            json!({ "text": long_text(), "session_id": "barge" }),
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("audio");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    // The caller barges in: the stream is dropped mid-turn.
    drop(body);
    eventually("the abandoned turn finishes upstream", || {
        t.tts.snapshot().turns_served == 1
    })
    .await;
    assert_eq!(t.tts.snapshot().turns_cancelled, 0);
    // The session's next turn gets its own connection back.
    let next = tts(&t.state, json!({ "text": "hi", "session_id": "barge" })).await;
    assert_eq!(next.header(service::TIER_HEADER), Some("dedicated"));
}

#[tokio::test(start_paused = true)]
async fn draining_an_abandoned_turn_is_bounded() {
    let t = app_with(slow_tts(), |l| {
        l.tts_drain_max_bytes = 1;
    })
    .await;
    let response = service::app(t.state.clone())
        .oneshot(tts_request(json!({ "text": long_text() })))
        .await
        .unwrap();
    let mut body = response.into_body();
    body.frame().await.expect("a frame").expect("audio");
    drop(body);
    // Past the byte bound the turn is stopped instead of drained.
    eventually("the turn is abandoned", || {
        t.tts.snapshot().turns_cancelled == 1
    })
    .await;
    assert_eq!(t.tts.snapshot().turns_served, 0);
    let pool = t.state.pools().tts.clone();
    eventually("its connection is given back", || {
        pool.snapshot().in_use == 0
    })
    .await;
}

#[tokio::test]
async fn post_bodies_must_be_declared_json() {
    let t = app_with(MockConfig::default(), |_| {}).await;
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = Request::post("/api/v1/tts");
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let r = send(
            &t.state,
            request.body(Body::from(r#"{"text":"hi"}"#)).unwrap(),
        )
        .await;
        assert_eq!(r.status, 415, "{content_type:?}");
        assert_eq!(r.json()["error"]["code"], "unsupported_media_type");
    }
    let r = send(
        &t.state,
        Request::post("/api/v1/tts")
            .header("content-type", "Application/JSON; charset=utf-8")
            .body(Body::from(r#"{"text":"hi"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    // Nothing refused reached the backend.
    assert_eq!(t.tts.snapshot().turns_started, 1);
}

#[tokio::test]
async fn wrong_methods_get_the_json_error_shape() {
    let t = app_with(MockConfig::default(), |_| {}).await;
    for (method, uri) in [
        ("GET", "/api/v1/tts"),
        ("PUT", "/api/v1/pools"),
        ("POST", "/api/v1/sessions/s1"),
    ] {
        let r = send(
            &t.state,
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 405, "{method} {uri}");
        assert_eq!(
            r.json()["error"]["code"],
            "method_not_allowed",
            "{method} {uri}"
        );
    }
}

fn with_origin(method: &str, uri: &str, origin: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "speech.internal:8080")
        .header("origin", origin)
        .header("content-type", "application/json")
        .body(Body::from(r#"{"text":"hi"}"#))
        .unwrap()
}

#[tokio::test]
async fn browser_requests_from_other_origins_are_refused() {
    let t = app_with(MockConfig::default(), |_| {}).await;
    let r = send(
        &t.state,
        with_origin("POST", "/api/v1/tts", "https://evil.example"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"]["code"], "origin_not_allowed");
    assert!(r.header("access-control-allow-origin").is_none());
    assert_eq!(t.tts.snapshot().turns_started, 0);
    // The service's own page, and clients that send no Origin, pass; no CORS headers.
    let r = send(
        &t.state,
        with_origin("POST", "/api/v1/tts", "http://speech.internal:8080"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = tts(&t.state, json!({"text": "hi"})).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn listed_origins_get_cors() {
    let t = app_with(MockConfig::default(), |l| {
        l.allowed_origins = "https://app.example".parse().expect("origins")
    })
    .await;
    let preflight = send(
        &t.state,
        Request::builder()
            .method("OPTIONS")
            .uri("/api/v1/tts")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(
        preflight
            .header("access-control-allow-headers")
            .is_some_and(|h| h.contains("content-type"))
    );
    let r = send(
        &t.state,
        with_origin("POST", "/api/v1/tts", "https://app.example"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let r = send(
        &t.state,
        with_origin("POST", "/api/v1/tts", "https://other.example"),
    )
    .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn websocket_upgrades_from_other_origins_are_refused() {
    let t = app_with(MockConfig::default(), |_| {}).await;
    let server = start(&t.state).await;
    let mut request = server.ws_url("/api/v1/stt").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    match connect_async(request).await.expect_err("refused") {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("{other}"),
    }
    stop(server).await;
}

#[tokio::test]
async fn a_client_cannot_open_more_sessions_than_its_cap() {
    let t = app_with(MockConfig::default(), |l| l.max_sessions_per_client = 2).await;
    for id in ["s1", "s2"] {
        let r = tts(&t.state, json!({"text": "hi", "session_id": id})).await;
        assert_eq!(r.status, 200, "{id}");
    }
    let r = tts(&t.state, json!({"text": "hi", "session_id": "s3"})).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "session_limit");
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("MAX_SESSIONS_PER_CLIENT=2"), "{message}");
    // The refused session left no trace in the pool.
    assert_eq!(t.state.pools().tts.snapshot().active_sessions, 2);
    // Existing sessions and session-less requests still work; ending one frees a place.
    assert_eq!(
        tts(&t.state, json!({"text": "hi", "session_id": "s1"}))
            .await
            .status,
        200
    );
    assert_eq!(tts(&t.state, json!({"text": "hi"})).await.status, 200);
    let r = send(
        &t.state,
        Request::delete("/api/v1/sessions/s1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = tts(&t.state, json!({"text": "hi", "session_id": "s3"})).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn the_dashboard_page_opens_without_the_key_but_its_data_needs_it() {
    let t = build_with(&config(), MockConfig::default(), |mut o| {
        o.api_key = Some("k3y".parse().expect("secret"));
        o
    });
    let page = common::get(&t.state, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("sessionStorage"));
    assert!(!page.text().contains("k3y"));
    assert_eq!(common::get(&t.state, "/api/v1/pools").await.status, 401);
    let r = send(
        &t.state,
        Request::get("/api/v1/pools")
            .header("authorization", "Bearer k3y")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(HANG, ws.next())
            .await
            .expect("no message in time");
        match msg {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
            Some(Ok(Message::Close(frame))) => {
                return json!({
                    "type": "close",
                    "code": frame.as_ref().map(|f| u16::from(f.code)),
                    "reason": frame.as_ref().map(|f| f.reason.to_string()),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return json!({"type": "close", "code": null}),
        }
    }
}

/// Reads messages until one of type `kind`; returns it.
async fn until(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let v = next(ws).await;
        if v["type"] == kind || v["type"] == "close" {
            return v;
        }
    }
}

#[tokio::test]
async fn silent_stt_sockets_hold_no_connection() {
    let t = app_with(MockConfig::default(), |_| {}).await;
    let server = start(&t.state).await;
    let mut sockets = Vec::new();
    // More silent sockets than the STT pool has connections.
    for i in 0..6 {
        let url = server.ws_url(&format!("/api/v1/stt?session_id=quiet-{i}"));
        let (mut ws, _) = connect_async(url.as_str()).await.expect("connect");
        assert_eq!(next(&mut ws).await["type"], "connected");
        sockets.push(ws);
    }
    let snapshot = t.state.pools().stt.snapshot();
    assert_eq!(snapshot.in_use, 0, "{snapshot:?}");
    assert_eq!(snapshot.active_sessions, 0, "{snapshot:?}");
    // Another client's turn is served.
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    ws.send(Message::binary(pcm(0.2))).await.unwrap();
    ws.send(Message::text(r#"{"type":"end"}"#)).await.unwrap();
    assert_eq!(until(&mut ws, "turn_end").await["type"], "turn_end");
    drop(sockets);
    drop(ws);
    stop(server).await;
}

#[tokio::test]
async fn an_stt_turn_without_audio_gives_its_connection_back_and_the_socket_stays() {
    let t = app_with(MockConfig::default(), |l| {
        l.stt_audio_idle_timeout = Duration::from_millis(200);
    })
    .await;
    let server = start(&t.state).await;
    // Without a session the connection goes back to the warm set at once.
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    ws.send(Message::binary(pcm(0.2))).await.unwrap();
    assert_eq!(until(&mut ws, "turn_end").await["type"], "turn_end");
    let stt = t.state.pools().stt.clone();
    eventually("the connection is back", || stt.snapshot().in_use == 0).await;
    drop(ws);
    let url = server.ws_url("/api/v1/stt?session_id=pause");
    let (mut ws, _) = connect_async(url.as_str()).await.expect("connect");
    next(&mut ws).await;
    // Audio, then silence without an `end`: the turn ends by itself.
    ws.send(Message::binary(pcm(0.2))).await.unwrap();
    assert_eq!(next(&mut ws).await["type"], "turn_start");
    assert_eq!(until(&mut ws, "turn_end").await["type"], "turn_end");
    // The socket is still open: the next audio takes the session's connection again.
    ws.send(Message::binary(pcm(0.2))).await.unwrap();
    ws.send(Message::text(r#"{"type":"end"}"#)).await.unwrap();
    let start = next(&mut ws).await;
    assert_eq!(start["type"], "turn_start", "{start}");
    assert_eq!(start["tier"], "dedicated", "{start}");
    assert_eq!(until(&mut ws, "turn_end").await["type"], "turn_end");
    drop(ws);
    stop(server).await;
}

#[tokio::test]
async fn an_idle_stt_socket_is_closed_with_a_reason() {
    let t = app_with(MockConfig::default(), |l| {
        l.stt_idle_close_timeout = Duration::from_millis(300);
    })
    .await;
    let server = start(&t.state).await;
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    let closed = next(&mut ws).await;
    assert_eq!(closed["code"], 1001, "{closed}");
    assert!(
        closed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("STT_IDLE_CLOSE_TIMEOUT")),
        "{closed}"
    );
    stop(server).await;
}

#[tokio::test]
async fn stt_protocol_violations_close_with_their_codes() {
    let t = app_with(MockConfig::default(), |_| {}).await;
    let server = start(&t.state).await;
    // A text message that is not UTF-8.
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(until(&mut ws, "close").await["code"], 1007);
    // A message over the 1 MiB limit.
    let (mut ws, _) = connect_async(server.ws_url("/api/v1/stt").as_str())
        .await
        .expect("connect");
    next(&mut ws).await;
    let _ = ws.send(Message::binary(vec![0u8; (1 << 20) + 1])).await;
    assert_eq!(until(&mut ws, "close").await["code"], 1009);
    stop(server).await;
}

/// Reads until the server closes the connection; `true` if it did within the hang guard.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(HANG, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn silent_and_slow_connections_are_timed_out() {
    let t = app_with(MockConfig::default(), |l| {
        l.http_keep_alive_timeout = Duration::from_millis(300);
        l.http_header_read_timeout = Duration::from_millis(300);
    })
    .await;
    let server = start(&t.state).await;
    // Opens and sends nothing.
    let mut silent = TcpStream::connect(server.addr()).await.unwrap();
    // Starts a request head and never finishes it.
    let mut slow = TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Finishes one request and then idles on keep-alive.
    let mut kept = TcpStream::connect(server.addr()).await.unwrap();
    kept.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    for (name, stream) in [
        ("silent", &mut silent),
        ("slow", &mut slow),
        ("kept", &mut kept),
    ] {
        assert!(
            closed_by_server(stream).await,
            "{name} connection left open"
        );
    }
    stop(server).await;
}

#[tokio::test]
async fn silent_connections_do_not_hold_shutdown_for_the_grace_period() {
    let t = app_with(MockConfig::default(), |_| {}).await;
    let mut server = start_with_grace(&t.state, Duration::from_secs(60)).await;
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(server.addr()).await.unwrap());
    }
    let mut slow = TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
    // Let the server accept them before the signal.
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.signal();
    // Bounded by HTTP_SHUTDOWN_IDLE_WAIT (1 s by default), far below the 60 s grace.
    tokio::time::timeout(Duration::from_secs(15), stop(server))
        .await
        .expect("shutdown waited for silent connections");
}

#[tokio::test]
async fn refused_requests_leave_no_session_behind() {
    let mut c = config();
    c.warm_pool_tts_size = 1;
    c.pool_tts_max_size = 1;
    // One turn that holds the only connection for as long as the test needs.
    let mock = MockConfig {
        chunk_interval: Duration::from_secs(30),
        ..MockConfig::default()
    };
    let t = build_with(&c, mock, |o| o);
    t.state.warm_up().await;
    let busy = service::app(t.state.clone())
        .oneshot(tts_request(json!({ "text": "hold the line please" })))
        .await
        .unwrap();
    assert_eq!(busy.status(), 200);
    for i in 0..5 {
        let r = tts(
            &t.state,
            json!({"text": "hi", "session_id": format!("refused-{i}")}),
        )
        .await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "pool_exhausted");
    }
    assert_eq!(t.state.pools().tts.snapshot().active_sessions, 0);
    // A session that only ever got 429 does not exist.
    let r = send(
        &t.state,
        Request::delete("/api/v1/sessions/refused-0")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unknown_session");
    drop(busy);
}
