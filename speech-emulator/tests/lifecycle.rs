//! Timers, counters, shutdown, restart, robustness against garbage, and the binary.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use speech_emulator::{EmulatorConfig, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn idle_connections_are_closed_with_1000() {
    let emu = start(
        EmulatorConfig::plain()
            .with_key(KEY)
            .with_idle_timeout(Duration::from_millis(400)),
    )
    .await;
    let mut tts = connect(&emu, TTS_PATH).await;
    tts.speech_config(&new_id()).await;
    let mut stt = connect(
        &emu,
        "/speech/recognition/interactive/cognitiveservices/v1?language=en-US",
    )
    .await;
    for c in [&mut tts, &mut stt] {
        match c.recv().await {
            Got::Close(Some((1000, reason))) => assert!(reason.contains("Idle"), "{reason}"),
            other => panic!("expected an idle close, got {other:?}"),
        }
    }
    settle(&emu).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn max_connection_age_from_config_and_query() {
    let emu = start(
        EmulatorConfig::plain()
            .with_key(KEY)
            .with_max_connection_age(Duration::from_millis(500)),
    )
    .await;
    let mut c = connect(&emu, TTS_PATH).await;
    // Activity does not postpone the age limit.
    c.speech_config(&new_id()).await;
    match c.recv().await {
        Got::Close(Some((1000, reason))) => {
            assert!(reason.contains("Maximum connection duration"), "{reason}")
        }
        other => panic!("expected an age close, got {other:?}"),
    }
    assert_eq!(emu.shutdown().await, 0, "no task left behind");

    // The query parameter lowers the configured 600 s.
    let emu = start_plain().await;
    let mut c = connect(&emu, &format!("{TTS_PATH}?maxConnectionDurationSecs=1")).await;
    assert_eq!(c.recv().await.close_code(), Some(1000));
    settle(&emu).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn counters_track_open_connections_back_to_zero() {
    let emu = start_plain().await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let path = if i % 2 == 0 {
            TTS_PATH
        } else {
            "/stt/speech/recognition/dictation/cognitiveservices/v1?language=de-DE"
        };
        clients.push(connect(&emu, path).await);
    }
    let c = emu
        .wait_for_counters(|c| c.connections_open == 4, PATIENCE)
        .await
        .expect("four open");
    assert_eq!(
        (
            c.tts_connections_open,
            c.stt_connections_open,
            c.connections_opened
        ),
        (2, 2, 4)
    );
    assert_eq!(c.tcp_open, 4);
    for c in clients {
        c.close().await;
    }
    let c = emu
        .wait_for_counters(|c| c.connections_open == 0 && c.tcp_open == 0, PATIENCE)
        .await
        .expect("all closed");
    assert_eq!(
        (
            c.tts_connections_open,
            c.stt_connections_open,
            c.connections_opened,
            c.tcp_accepted
        ),
        (0, 0, 4, 4)
    );
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn shutdown_closes_everything_and_restart_reuses_port_and_certificate() {
    let emu = start(EmulatorConfig::default().with_key(KEY)).await;
    let addr = emu.addr();
    let ca = emu.ca_cert_der().expect("TLS");
    let token = emu.issue_token(KEY);
    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    emu.wait_for_counters(|c| c.connections_open == 1, PATIENCE)
        .await
        .expect("open");

    // Restart: the client is told the service is going away, then the same port serves again
    // with the same certificate, and earlier tokens still work.
    let emu = emu.restart().await.expect("restart");
    assert_eq!(c.recv().await.close_code(), Some(1001));
    assert_eq!(emu.addr(), addr);
    assert_eq!(emu.ca_cert_der(), Some(ca));
    let bearer = format!("Bearer {token}");
    connect_with(&emu, TTS_PATH, &[("Authorization", &bearer)])
        .await
        .expect("token survives restart")
        .close()
        .await;
    assert_eq!(emu.counters().connections_opened, 2, "totals carry over");

    // Shutdown: nothing listens afterwards.
    let mut c = connect(&emu, TTS_PATH).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
    assert!(matches!(
        c.recv().await,
        Got::Close(Some((1001, _))) | Got::Dropped(_)
    ));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "port released"
    );
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let emu = start_plain().await;
    let addr = emu.addr();
    drop(emu);
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused);
}

static PANICS: AtomicUsize = AtomicUsize::new(0);

#[tokio::test]
async fn garbage_from_clients_never_panics_the_emulator() {
    let default_hook = std::panic::take_hook();
    // The emulator's tasks run on this test's (current-thread) runtime, so their panics
    // happen on this test's thread; panics of other tests are not counted.
    let me = std::thread::current().name().map(str::to_owned);
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name().map(str::to_owned) == me {
            PANICS.fetch_add(1, Ordering::SeqCst);
        }
        default_hook(info);
    }));
    let emu = start_plain().await;
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let paths = [
        "speech.config",
        "synthesis.context",
        "ssml",
        "synthesis.control",
        "speech.context",
        "telemetry",
        "audio",
        "",
        "turn.start",
    ];
    let bodies = [
        "",
        "{",
        "null",
        "[]",
        "{\"synthesis\":{\"audio\":{\"outputFormat\":42}}}",
        "{\"synthesis\":{\"audio\":{\"outputFormat\":\"riff-16khz-16bit-mono-pcm\",\"metadataOptions\":{\"wordBoundaryEnabled\":\"maybe\"}}}}",
        "{\"action\":\"stop\"}",
        "<speak>&#xFFFFFFFF;</speak>",
        "<speak><voice name='\u{1F600}'>\u{1F600} é</voice></speak>",
        "<speak>a<bookmark mark='x'/>b</speak>",
        "<speak>",
        "\u{0}\u{1}",
    ];
    for round in 0..60 {
        let path = if round % 2 == 0 {
            TTS_PATH
        } else {
            "/speech/recognition/conversation/cognitiveservices/v1?language=en-US"
        };
        let mut c = connect(&emu, path).await;
        for _ in 0..12 {
            let rid = if rng.bool() {
                new_id()
            } else {
                "fixed".to_owned()
            };
            match rng.u8(0..5) {
                0 => {
                    let p = paths[rng.usize(..paths.len())];
                    let b = bodies[rng.usize(..bodies.len())];
                    let sep = if rng.bool() { "\r\n\r\n" } else { "\r\n" };
                    c.raw_text(format!("Path:{p}\r\nX-RequestId:{rid}{sep}{b}"))
                        .await;
                }
                1 => {
                    let n = rng.usize(0..64);
                    c.raw_binary((0..n).map(|_| rng.u8(..)).collect()).await;
                }
                2 => {
                    let mut head = riff_header(16000, 1, 16);
                    let i = rng.usize(..head.len());
                    head[i] = rng.u8(..);
                    head.truncate(rng.usize(1..=head.len()));
                    c.audio(&rid, Some("audio/x-wav"), &head).await;
                }
                3 => {
                    let n = rng.usize(0..5000);
                    c.audio(&rid, None, &vec![rng.u8(..); n]).await;
                }
                _ => {
                    // A header length pointing past the end, or non-UTF-8 headers.
                    let mut data = vec![0xff, 0xff, b'P'];
                    if rng.bool() {
                        data = vec![0, 3, 0xc3, 0x28, 0xff, 1, 2];
                    }
                    c.raw_binary(data).await;
                }
            }
        }
        // Whatever happened, the connection ends cleanly or stays usable.
        drop(c);
    }
    // Raw HTTP garbage.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n",
        b"GET /tts/cognitiveservices/websocket/v1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"POST /cognitiveservices/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\nshort",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00",
    ] {
        let mut s = tokio::net::TcpStream::connect(emu.addr()).await.expect("connect");
        let _ = s.write_all(junk).await;
        let _ = s.shutdown().await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf)).await;
    }
    // Still serving normally.
    let mut c = connect(&emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    c.synthesize(&new_id(), "raw-16khz-16bit-mono-pcm", false, "still alive")
        .await;
    c.until_turn_end().await;
    c.close().await;
    assert_eq!(emu.disconnect_all(Target::Any, false), 0);
    settle(&emu).await;
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "no task panicked");
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[test]
fn binary_help_and_run_until_sigterm() {
    let exe = env!("CARGO_BIN_EXE_speech-emulator");
    let help = Command::new(exe)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--port",
        "--plain",
        "--key",
        "--transcript",
        "--rtt-ms",
        "--idle-timeout-secs",
        "--max-connection-age-secs",
        "--cert-out",
        "--fault",
        "handshake=STATUS",
    ] {
        assert!(text.contains(flag), "--help documents {flag}");
    }
    let bad = Command::new(exe)
        .args(["--fault", "nonsense"])
        .output()
        .expect("run");
    assert!(!bad.status.success());

    let dir = std::env::temp_dir().join(format!("speech-emulator-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cert = dir.join("ca.pem");
    let mut child = Command::new(exe)
        .args([
            "--port",
            "0",
            "--key",
            "k",
            "--fault",
            "rest=503,target=voices,times=1",
            "--cert-out",
        ])
        .arg(&cert)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut first = String::new();
    // Keep the pipe open for the child's lifetime (the emulator ignores a closed stdout, but
    // this test is about the signal, not that).
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    stdout.read_line(&mut first).expect("first line");
    assert!(
        first.starts_with("speech-emulator listening on https://127.0.0.1:"),
        "{first}"
    );
    let pem = std::fs::read_to_string(&cert).expect("CA written");
    assert!(pem.contains("BEGIN CERTIFICATE"));

    let url = first.trim().rsplit(' ').next().expect("url").to_owned();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        init();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem")])
            .build()
            .expect("client");
        let get = || {
            client
                .get(format!("{url}/cognitiveservices/voices/list"))
                .header("Ocp-Apim-Subscription-Key", "k")
                .send()
        };
        assert_eq!(get().await.expect("r").status(), 503, "--fault applied");
        assert_eq!(get().await.expect("r").status(), 200);
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("exit");
    assert!(exit.success(), "graceful exit on SIGTERM: {exit:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
