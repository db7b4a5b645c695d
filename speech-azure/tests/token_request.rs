//! The token request as bytes on the wire, read by a bare TCP listener rather than by an
//! HTTP server (which would tolerate a request Azure refuses).

use std::time::Duration;

use speech_azure::{AzureSpeech, Credentials, Endpoint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Bound for the exchange; only used to fail instead of hanging.
const PATIENCE: Duration = Duration::from_secs(20);

/// Reads one HTTP request head (up to the blank line) from `stream`.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read request");
        assert!(n > 0, "the client closed before finishing the request head");
        buf.extend_from_slice(&byte[..n]);
    }
    String::from_utf8(buf).expect("an ASCII request head")
}

/// Azure answers a bodiless POST that announces no length with `411 Length Required`, so
/// the first token fetch must carry `Content-Length: 0`.
#[tokio::test]
async fn the_token_request_announces_an_empty_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let azure = AzureSpeech::builder(
        Endpoint::host(&format!("http://{addr}")).expect("endpoint"),
        Credentials::sts_token("raw-listener-key"),
    )
    .build()
    .expect("client");

    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let head = read_head(&mut stream).await;
        // A JWT-shaped token: header, payload without `exp` (the client then assumes the
        // documented lifetime), signature.
        let token = "eyJhbGciOiJub25lIn0.eyJyZWdpb24iOiJ0ZXN0In0.c2ln";
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{token}",
            token.len()
        );
        stream
            .write_all(reply.as_bytes())
            .await
            .expect("write reply");
        head
    });

    let header = tokio::time::timeout(PATIENCE, azure.authenticator().header())
        .await
        .expect("the token fetch finishes")
        .expect("the token is accepted");
    assert!(header.value.expose().starts_with("Bearer "));

    let head = tokio::time::timeout(PATIENCE, server)
        .await
        .expect("the listener finishes")
        .expect("listener task");
    let mut lines = head.split("\r\n");
    assert_eq!(
        lines.next(),
        Some("POST /sts/v1.0/issueToken HTTP/1.1"),
        "{head}"
    );
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("content-length"), vec!["0"], "{head}");
    assert!(values("transfer-encoding").is_empty(), "{head}");
    assert_eq!(
        values("ocp-apim-subscription-key"),
        vec!["raw-listener-key"]
    );
    assert_eq!(
        values("content-type"),
        vec!["application/x-www-form-urlencoded"]
    );
}

/// The emulator answers a POST without a length `411 Length Required`, as Azure does, so
/// token mode against it proves the request is one Azure accepts: the first token fetch
/// succeeds, the websocket opens with the token, and the recorded request announces its
/// empty body.
#[tokio::test]
async fn token_mode_works_against_a_server_that_demands_a_length() {
    use speech_core::{AudioFormat, SynthesisRequest, Synthesizer};
    use speech_emulator::{Emulator, EmulatorConfig};

    speech_azure::install_crypto_provider();
    let emu = Emulator::start(
        EmulatorConfig::plain()
            .with_key("length-test-key")
            .with_capture(true),
    )
    .await
    .expect("emulator");
    let azure = AzureSpeech::builder(
        Endpoint::host(&emu.base_url_http()).expect("endpoint"),
        Credentials::sts_token("length-test-key"),
    )
    .build()
    .expect("client");
    let mut tts = tokio::time::timeout(
        PATIENCE,
        azure.connect_tts_ws(speech_azure::TtsWsOptions::default()),
    )
    .await
    .expect("connect finishes")
    .expect("token fetched and websocket opened");
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let request =
        SynthesisRequest::text("Hi", "en-US-AvaNeural", AudioFormat::Raw16Khz16BitMonoPcm);
    tokio::time::timeout(PATIENCE, tts.synthesize(request, tx))
        .await
        .expect("turn finishes")
        .expect("synthesis with the token");
    drain.await.expect("drain");
    assert_eq!(emu.counters().tokens_issued, 1);

    let token_requests: Vec<_> = emu
        .capture()
        .records()
        .into_iter()
        .filter(|r| r["path"] == "/sts/v1.0/issueToken")
        .collect();
    assert_eq!(token_requests.len(), 1, "{token_requests:?}");
    assert_eq!(token_requests[0]["method"], "POST");
    assert_eq!(token_requests[0]["headers"]["content-length"], "0");
    emu.shutdown().await;
}
