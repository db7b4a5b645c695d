//! The emulator's strictness about request framing, and its capture of what clients send.

mod common;

use common::*;
use speech_emulator::EmulatorConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` on a fresh connection and returns the status line of the answer.
async fn status_line(emu: &speech_emulator::EmulatorHandle, request: &str) -> String {
    let mut s = TcpStream::connect(emu.addr()).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        let n = s.read(&mut chunk).await.expect("read");
        assert!(n > 0, "connection closed before a status line");
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

/// Azure refuses a bodiless POST that announces no length; the emulator must too, or a
/// client that forgets `Content-Length: 0` passes every test and fails in production.
#[tokio::test]
async fn a_post_without_a_length_is_refused_with_411() {
    let emu = start_plain().await;
    let host = emu.addr();
    let without = format!(
        "POST /sts/v1.0/issueToken HTTP/1.1\r\nHost: {host}\r\nOcp-Apim-Subscription-Key: {KEY}\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        status_line(&emu, &without).await,
        "HTTP/1.1 411 Length Required"
    );
    let with = format!(
        "POST /sts/v1.0/issueToken HTTP/1.1\r\nHost: {host}\r\nOcp-Apim-Subscription-Key: {KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status_line(&emu, &with).await, "HTTP/1.1 200 OK");
    let chunked = format!(
        "POST /sts/v1.0/issueToken HTTP/1.1\r\nHost: {host}\r\nOcp-Apim-Subscription-Key: {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    );
    assert_eq!(status_line(&emu, &chunked).await, "HTTP/1.1 200 OK");
    assert_eq!(emu.counters().tokens_issued, 2);
    emu.shutdown().await;
}

/// The capture keeps the structure of what was sent and hides credentials and per-run ids.
#[tokio::test]
async fn the_capture_records_requests_without_secrets() {
    let emu = start(EmulatorConfig::plain().with_key(KEY).with_capture(true)).await;
    let host = emu.addr();
    let request = format!(
        "POST /sts/v1.0/issueToken?probe=1 HTTP/1.1\r\nHost: {host}\r\nOcp-Apim-Subscription-Key: {KEY}\r\nX-ConnectionId: 0397FBC3D73E44ACB5B808CFFA5ED83E\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(status_line(&emu, &request).await, "HTTP/1.1 200 OK");
    let records = emu.capture().records();
    assert_eq!(records.len(), 1, "{records:?}");
    let r = &records[0];
    assert_eq!(r["type"], "http");
    assert_eq!(r["method"], "POST");
    assert_eq!(r["path"], "/sts/v1.0/issueToken");
    assert_eq!(r["query"]["probe"], "1");
    assert_eq!(r["headers"]["ocp-apim-subscription-key"], "<secret>");
    assert_eq!(r["headers"]["x-connectionid"], "<id:hex32-upper>");
    assert_eq!(r["headers"]["content-length"], "0");
    assert!(!emu.capture().json_lines().contains(KEY));
    emu.capture().clear();
    assert!(emu.capture().records().is_empty());
    emu.shutdown().await;

    // Off by default: nothing is kept.
    let quiet = start_plain().await;
    assert_eq!(status_line(&quiet, &request).await, "HTTP/1.1 200 OK");
    assert!(quiet.capture().records().is_empty());
    quiet.shutdown().await;
}
