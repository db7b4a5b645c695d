//! The `speech-pool` binary: configuration errors, start-up, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_speech-pool");

/// A command with a clean environment, so variables of the machine running the tests
/// (Azure credentials in particular) cannot change what is tested.
fn speech_pool() -> Command {
    let mut c = Command::new(BIN);
    c.env_clear();
    c
}

#[test]
fn help_documents_every_setting() {
    let out = speech_pool().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "LISTEN_ADDR",
        "LOG_FORMAT",
        "SPEECH_BACKEND",
        "WARM_POOL_ENABLED",
        "WARM_POOL_TTS_SIZE",
        "WARM_POOL_STT_SIZE",
        "WARM_POOL_BACKGROUND_REFRESH",
        "WARM_POOL_REFRESH_INTERVAL",
        "WARM_POOL_SESSION_MAX_AGE",
        "POOL_TTS_MAX_SIZE",
        "POOL_ACQUIRE_TIMEOUT",
        "SERVICE_API_KEY",
        "AZURE_SPEECH_KEY",
        "AZURE_SPEECH_REGION",
        "AZURE_SPEECH_ENDPOINT",
        "STT_LANGUAGES",
    ] {
        assert!(help.contains(var), "--help lacks {var}");
    }
}

#[test]
fn malformed_values_stop_start_up_naming_variable_value_and_expectation() {
    let cases = [
        ("WARM_POOL_TTS_SIZE", "three", "whole number"),
        ("WARM_POOL_ENABLED", "perhaps", "true or false"),
        ("WARM_POOL_REFRESH_INTERVAL", "soon", "seconds"),
        // Positive, but zero once rounded to nanoseconds: refused by the parser rather
        // than passed on as 0 to the pool, whose error would not name the variable.
        ("WARM_POOL_REFRESH_INTERVAL", "0.0000000001", "seconds > 0"),
        ("LISTEN_ADDR", "localhost", "IP:PORT"),
        ("LOG_FORMAT", "yaml", "pretty or json"),
        ("SPEECH_BACKEND", "google", "auto, azure or mock"),
        ("STT_LANGUAGES", "en-US,de_DE", "BCP 47 language tags"),
    ];
    for (var, value, expected) in cases {
        let out = speech_pool().env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}: {err}");
        assert!(err.contains(value), "{var}: {err}");
        assert!(err.contains(expected), "{var}: {err}");
    }
}

#[test]
fn inconsistent_or_incomplete_configuration_is_a_clear_error() {
    let out = speech_pool()
        .env("WARM_POOL_STT_SIZE", "9")
        .env("POOL_STT_MAX_SIZE", "4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("WARM_POOL_STT_SIZE") && err.contains("POOL_STT_MAX_SIZE"),
        "{err}"
    );

    let out = speech_pool()
        .env("SPEECH_BACKEND", "azure")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AZURE_SPEECH_KEY"), "{err}");

    // A key never shows up in the message about it.
    let out = speech_pool()
        .env("AZURE_SPEECH_KEY", "k-very-secret-123")
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AZURE_SPEECH_REGION"), "{err}");
    assert!(!err.contains("k-very-secret-123"), "{err}");
}

/// Starts the binary with the mock backend on a free port, waits for /readyz, sends
/// SIGTERM and expects exit status 0 after a clean shutdown.
#[test]
fn starts_with_the_mock_and_exits_zero_on_sigterm() {
    let mut child = speech_pool()
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("MOCK_PROFILE", "instant")
        .env("SERVICE_API_KEY", "api-key-never-logged")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut logs = Vec::new();
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the service logs its address");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        logs.push(line);
        if v["message"] == "listening" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    assert!(
        logs.iter().any(|l| l.contains("MOCK backend")),
        "the mock is announced: {logs:?}"
    );
    let mut ready = false;
    for _ in 0..300 {
        if http_status(&addr, "/readyz") == Some(200) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ready, "readyz never turned 200");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    reader.join().unwrap();
    logs.extend(rx.try_iter());
    assert!(
        logs.iter().any(|l| l.contains("shutdown complete")),
        "{logs:?}"
    );
    assert!(!logs.iter().any(|l| l.contains("api-key-never-logged")));
}

/// A minimal HTTP/1.0 GET, so this test needs no HTTP client crate.
fn http_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}
