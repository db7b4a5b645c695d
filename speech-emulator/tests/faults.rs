//! Every injectable fault, one-shot and persistent, and recovery after it.
//!
//! Delay faults are checked as lower bounds only (a sleep never ends early), never as upper
//! bounds, so these tests do not depend on machine speed.

mod common;

use std::time::{Duration, Instant};

use common::*;
use speech_emulator::{EmulatorConfig, Fault, FaultRule, Target, TurnPoint};

const STT: &str = "/speech/recognition/conversation/cognitiveservices/v1?language=en-US";
const PCM: &str = "raw-16khz-16bit-mono-pcm";

fn key_headers() -> [(&'static str, &'static str); 1] {
    [("Ocp-Apim-Subscription-Key", KEY)]
}

async fn tts_turn(c: &mut Client, text: &str) -> (Vec<Got>, Got) {
    c.synthesize(&new_id(), PCM, false, text).await;
    let mut out = Vec::new();
    loop {
        let m = c.recv().await;
        if matches!(m, Got::Close(_) | Got::Dropped(_)) {
            return (out, m);
        }
        let end = m.path() == Some("turn.end");
        out.push(m);
        if end {
            return (
                out,
                Got::Text {
                    headers: vec![],
                    body: String::new(),
                    raw: String::new(),
                },
            );
        }
    }
}

async fn ready_tts(emu: &speech_emulator::EmulatorHandle) -> Client {
    let mut c = connect(emu, TTS_PATH).await;
    c.speech_config(&new_id()).await;
    c
}

#[tokio::test]
async fn handshake_status_faults_then_recovery() {
    let emu = start_plain().await;
    for (status, retry_after) in [
        (401, None),
        (403, None),
        (400, None),
        (404, None),
        (429, Some(3)),
        (429, None),
        (503, Some(1)),
    ] {
        emu.add_fault(
            FaultRule::new(Fault::Handshake {
                status,
                retry_after,
            })
            .once(),
        );
        let r = refused(&emu, TTS_PATH, &key_headers()).await;
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            retry_after.map(|s| s.to_string()).as_deref()
        );
        // One-shot: the next handshake succeeds.
        connect(&emu, TTS_PATH).await.close().await;
    }
    // A redirect back to the same URL, marked.
    emu.add_fault(
        FaultRule::new(Fault::Handshake {
            status: 307,
            retry_after: None,
        })
        .once(),
    );
    let r = refused(&emu, TTS_PATH, &key_headers()).await;
    assert_eq!(r.status(), 307);
    let location = r.headers()["location"].to_str().expect("ascii");
    assert!(
        location.starts_with(TTS_PATH) && location.contains("emulatorRedirected=1"),
        "{location}"
    );
    settle(&emu).await;
    let c = emu.counters();
    assert_eq!(
        (
            c.handshakes_rejected,
            c.connections_opened,
            c.faults_injected
        ),
        (8, 7, 8)
    );
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn fault_scoping_skip_times_target_and_key() {
    let emu = start(EmulatorConfig::plain()).await;
    // Persistent on STT only: TTS is unaffected.
    emu.add_fault(
        FaultRule::new(Fault::Handshake {
            status: 429,
            retry_after: None,
        })
        .target(Target::SttWs),
    );
    connect(&emu, TTS_PATH).await.close().await;
    assert_eq!(refused(&emu, STT, &key_headers()).await.status(), 429);
    assert_eq!(refused(&emu, STT, &key_headers()).await.status(), 429);
    emu.clear_faults();
    connect(&emu, STT).await.close().await;

    // "The 2nd and 3rd connection": skip 1, times 2.
    emu.add_fault(
        FaultRule::new(Fault::Handshake {
            status: 503,
            retry_after: None,
        })
        .skip(1)
        .times(2),
    );
    connect(&emu, TTS_PATH).await.close().await;
    assert_eq!(refused(&emu, TTS_PATH, &key_headers()).await.status(), 503);
    assert_eq!(refused(&emu, TTS_PATH, &key_headers()).await.status(), 503);
    connect(&emu, TTS_PATH).await.close().await;
    assert!(emu.faults().is_empty(), "spent rules are removed");

    // Per key.
    emu.add_fault(
        FaultRule::new(Fault::Handshake {
            status: 403,
            retry_after: None,
        })
        .for_key("other"),
    );
    connect(&emu, TTS_PATH).await.close().await;
    assert_eq!(
        refused(&emu, TTS_PATH, &[("Ocp-Apim-Subscription-Key", "other")])
            .await
            .status(),
        403
    );
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn rest_status_faults() {
    let emu = start_plain().await;
    let http = http(&emu);
    let tts = format!("{}/cognitiveservices/v1", emu.base_url_http());
    let send = || {
        http.post(&tts)
            .header("Ocp-Apim-Subscription-Key", KEY)
            .header("Content-Type", "application/ssml+xml")
            .header("X-Microsoft-OutputFormat", PCM)
            .body(ssml("rest"))
            .send()
    };
    for (status, retry_after) in [(429, Some(2)), (502, None), (503, None), (415, None)] {
        emu.add_fault(
            FaultRule::new(Fault::Rest {
                status,
                retry_after,
            })
            .target(Target::TtsRest)
            .once(),
        );
        let r = send().await.expect("response");
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(
            r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
            retry_after.map(|s| s.to_string()).as_deref()
        );
        assert_eq!(send().await.expect("response").status(), 200, "recovers");
    }
    // Token endpoint only.
    emu.add_fault(
        FaultRule::new(Fault::Rest {
            status: 503,
            retry_after: None,
        })
        .target(Target::Token),
    );
    assert_eq!(send().await.expect("r").status(), 200);
    let token = http
        .post(format!("{}/sts/v1.0/issueToken", emu.base_url_http()))
        .header("Content-Length", "0")
        .header("Ocp-Apim-Subscription-Key", KEY)
        .send()
        .await
        .expect("r");
    assert_eq!(token.status(), 503);
    drop(http);
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn close_faults_at_each_point_of_a_turn() {
    let emu = start_plain().await;
    // 4429 right after turn.start.
    emu.add_fault(
        FaultRule::new(Fault::Close {
            code: 4429,
            reason: None,
            at: TurnPoint::AfterTurnStart,
        })
        .once(),
    );
    let mut c = ready_tts(&emu).await;
    let (msgs, end) = tts_turn(&mut c, "throttled").await;
    assert_eq!(
        msgs.iter().filter_map(Got::path).collect::<Vec<_>>(),
        ["turn.start"]
    );
    assert_eq!(end.close_code(), Some(4429));
    let Got::Close(Some((_, reason))) = &end else {
        panic!("the turn did not end with a close frame carrying a reason: {end:?}");
    };
    assert!(reason.contains("throttled"), "{reason}");
    // 1007 / 1011 / 1013 after k audio frames.
    for (code, k) in [(1007u16, 1u32), (1011, 2), (1013, 3)] {
        emu.add_fault(
            FaultRule::new(Fault::Close {
                code,
                reason: None,
                at: TurnPoint::AfterFrames(k),
            })
            .once(),
        );
        let mut c = ready_tts(&emu).await;
        let (msgs, end) = tts_turn(&mut c, "a fairly long sentence to get several frames").await;
        assert_eq!(
            msgs.iter().filter(|m| m.path() == Some("audio")).count() as u32,
            k
        );
        assert_eq!(end.close_code(), Some(code));
    }
    // 1000 at the moment the turn begins (the idle/age race): no turn.start at all.
    emu.add_fault(
        FaultRule::new(Fault::Close {
            code: 1000,
            reason: Some("Idle timeout".into()),
            at: TurnPoint::BeforeTurnStart,
        })
        .once(),
    );
    let mut c = ready_tts(&emu).await;
    let (msgs, end) = tts_turn(&mut c, "race").await;
    assert!(msgs.is_empty());
    assert_eq!(end.close_code(), Some(1000));
    // And recovery: a fresh socket serves normally.
    let mut c = ready_tts(&emu).await;
    let (msgs, _) = tts_turn(&mut c, "fine").await;
    assert_eq!(msgs.last().and_then(Got::path), Some("turn.end"));
    c.close().await;
    settle(&emu).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn drops_mid_stream_and_between_turns() {
    let emu = start_plain().await;
    // FIN after 2 audio frames, no close frame.
    emu.add_fault(
        FaultRule::new(Fault::Disconnect {
            at: TurnPoint::AfterFrames(2),
            rst: false,
        })
        .once(),
    );
    let mut c = ready_tts(&emu).await;
    let (msgs, end) = tts_turn(&mut c, "a fairly long sentence to get several frames").await;
    assert_eq!(msgs.iter().filter(|m| m.path() == Some("audio")).count(), 2);
    assert!(matches!(end, Got::Dropped(_)), "{end:?}");
    // RST variant.
    emu.add_fault(
        FaultRule::new(Fault::Disconnect {
            at: TurnPoint::AfterFrames(1),
            rst: true,
        })
        .once(),
    );
    let mut c = ready_tts(&emu).await;
    let (_, end) = tts_turn(&mut c, "a fairly long sentence to get several frames").await;
    assert!(matches!(end, Got::Dropped(_)), "{end:?}");
    // Between turns: the turn completes, then the warm socket dies.
    emu.add_fault(
        FaultRule::new(Fault::Disconnect {
            at: TurnPoint::AfterTurnEnd,
            rst: false,
        })
        .once(),
    );
    let mut c = ready_tts(&emu).await;
    let (msgs, _) = tts_turn(&mut c, "complete").await;
    assert_eq!(msgs.last().and_then(Got::path), Some("turn.end"));
    let next = c.recv().await;
    assert!(matches!(next, Got::Dropped(_)), "{next:?}");

    // STT: drop after 3 received audio frames.
    emu.add_fault(
        FaultRule::new(Fault::Disconnect {
            at: TurnPoint::AfterFrames(3),
            rst: false,
        })
        .target(Target::SttWs)
        .once(),
    );
    let mut c = connect(&emu, STT).await;
    let rid = new_id();
    c.speech_config(&rid).await;
    c.audio(&rid, Some("audio/x-wav"), &riff_header(16000, 1, 16))
        .await;
    for _ in 0..3 {
        c.audio(&rid, None, &pcm16k(100)).await;
    }
    let (_, end) = c.until_end().await;
    assert!(matches!(end, Got::Dropped(_)), "{end:?}");
    settle(&emu).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn stalls_never_send_turn_end() {
    let emu = start_plain().await;
    emu.add_fault(FaultRule::new(Fault::Stall { after_frames: 2 }).once());
    let mut c = ready_tts(&emu).await;
    c.synthesize(
        &new_id(),
        PCM,
        false,
        "a fairly long sentence to get several frames",
    )
    .await;
    let mut audio = 0;
    loop {
        match c.recv_within(Duration::from_millis(400)).await {
            Some(m) if m.path() == Some("audio") => audio += 1,
            Some(m) => assert_ne!(m.path(), Some("turn.end"), "stalled turns never end"),
            None => break,
        }
    }
    assert_eq!(audio, 2);
    assert_eq!(emu.counters().turns_served, 0);
    c.close().await;

    // STT: stall right after turn.start.
    emu.add_fault(
        FaultRule::new(Fault::Stall { after_frames: 0 })
            .target(Target::Stt)
            .once(),
    );
    let mut c = connect(&emu, STT).await;
    let rid = new_id();
    c.speech_config(&rid).await;
    stt_turn(&mut c, &rid, 500).await;
    assert_eq!(c.recv().await.path(), Some("turn.start"));
    assert!(c.recv_within(Duration::from_millis(300)).await.is_none());
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn slowness_faults_are_at_least_as_slow_as_asked() {
    let emu = start_plain().await;
    let d = Duration::from_millis(150);
    let ms = 150;

    emu.add_fault(FaultRule::new(Fault::HandshakeDelay { ms }).once());
    let t = Instant::now();
    let c = connect(&emu, TTS_PATH).await;
    assert!(t.elapsed() >= d);
    c.close().await;

    emu.add_fault(FaultRule::new(Fault::TlsDelay { ms }).once());
    let t = Instant::now();
    connect(&emu, TTS_PATH).await.close().await;
    assert!(t.elapsed() >= d);

    emu.add_fault(FaultRule::new(Fault::TurnStartDelay { ms }).once());
    let mut c = ready_tts(&emu).await;
    let t = Instant::now();
    c.synthesize(&new_id(), PCM, false, "slow start").await;
    assert_eq!(c.recv().await.path(), Some("turn.start"));
    assert!(t.elapsed() >= d);
    c.until_turn_end().await;

    emu.add_fault(FaultRule::new(Fault::FirstAudioDelay { ms }).once());
    let t = Instant::now();
    c.synthesize(&new_id(), PCM, false, "slow audio").await;
    loop {
        if c.recv().await.path() == Some("audio") {
            break;
        }
    }
    assert!(t.elapsed() >= d);
    c.until_turn_end().await;
    c.close().await;

    emu.add_fault(
        FaultRule::new(Fault::RestDelay { ms })
            .target(Target::Token)
            .once(),
    );
    let http = http(&emu);
    let t = Instant::now();
    let r = http
        .post(format!("{}/sts/v1.0/issueToken", emu.base_url_http()))
        .header("Content-Length", "0")
        .header("Ocp-Apim-Subscription-Key", KEY)
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() >= d);
    drop(http);
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn simulated_rtt_costs_round_trips_on_cold_paths() {
    let rtt = Duration::from_millis(60);
    let emu = start(EmulatorConfig::plain().with_key(KEY).with_rtt(rtt)).await;
    let t = Instant::now();
    let mut c = ready_tts(&emu).await;
    assert!(t.elapsed() >= rtt * 2, "TCP + upgrade");
    let t = Instant::now();
    c.synthesize(&new_id(), PCM, false, "warm").await;
    assert_eq!(c.recv().await.path(), Some("turn.start"));
    assert!(
        t.elapsed() >= rtt,
        "one round trip before the first response of a turn"
    );
    c.until_turn_end().await;
    c.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn stt_in_band_phrase_errors_and_quirks() {
    let emu = start_plain().await;
    emu.add_fault(
        FaultRule::new(Fault::PhraseError {
            status: "TooManyRequests".into(),
        })
        .once(),
    );
    let mut c = connect(&emu, STT).await;
    let rid = new_id();
    c.speech_config(&rid).await;
    stt_turn(&mut c, &rid, 300).await;
    let msgs = c.until_turn_end().await;
    let phrase = msgs
        .iter()
        .find(|m| m.path() == Some("speech.phrase"))
        .expect("phrase")
        .json();
    assert_eq!(phrase["RecognitionStatus"], "TooManyRequests");

    // Quirks on TTS: lowercase spaced headers, an unknown path, an extra empty audio frame.
    emu.add_fault(FaultRule::new(Fault::Quirks).target(Target::TtsWs).once());
    let mut t = ready_tts(&emu).await;
    let (msgs, _) = tts_turn(&mut t, "quirky").await;
    let Got::Text { raw, .. } = &msgs[0] else {
        panic!("the first message is not a text frame: {:?}", msgs[0]);
    };
    assert!(raw.starts_with("x-requestid: "), "{raw}");
    assert!(msgs.iter().any(|m| m.path() == Some("emulator.unknown")));
    let empties = msgs
        .iter()
        .filter(|m| m.path() == Some("audio") && m.payload().is_empty())
        .count();
    assert_eq!(empties, 2);
    c.close().await;
    t.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn control_api_and_handle_commands() {
    let emu = start_plain().await;
    let http = http(&emu);
    let base = emu.base_url_http();
    // Arm a fault over HTTP.
    let rule = serde_json::json!({"kind": "handshake", "status": 429, "retry_after": 5, "target": "tts_ws", "times": 1});
    let r = http
        .post(format!("{base}/_emulator/faults"))
        .json_body(&rule)
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    let armed: serde_json::Value = r.into_json().await;
    assert_eq!(armed[0]["status"], 429);
    let r = refused(&emu, TTS_PATH, &key_headers()).await;
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["retry-after"].to_str().ok()
        ),
        (429, Some("5"))
    );
    // Arrays, replace and clear.
    let many = serde_json::json!([{"kind": "stall"}, {"kind": "quirks"}]);
    let r: serde_json::Value = http
        .put(format!("{base}/_emulator/faults"))
        .json_body(&many)
        .send()
        .await
        .expect("r")
        .into_json()
        .await;
    assert_eq!(r.as_array().map(Vec::len), Some(2));
    let bad = http
        .post(format!("{base}/_emulator/faults"))
        .body("{\"kind\":\"nope\"}")
        .send()
        .await
        .expect("r");
    assert_eq!(bad.status(), 400);
    let r: serde_json::Value = http
        .delete(format!("{base}/_emulator/faults"))
        .send()
        .await
        .expect("r")
        .into_json()
        .await;
    assert_eq!(r, serde_json::json!([]));

    // Drop and close open sockets from outside.
    let mut a = ready_tts(&emu).await;
    let mut b = connect(&emu, STT).await;
    emu.wait_for_counters(|c| c.connections_open == 2, PATIENCE)
        .await
        .expect("two open");
    let r: serde_json::Value = http
        .post(format!("{base}/_emulator/disconnect"))
        .json_body(&serde_json::json!({"target": "tts_ws"}))
        .send()
        .await
        .expect("r")
        .into_json()
        .await;
    assert_eq!(r["affected"], 1);
    assert!(matches!(a.recv().await, Got::Dropped(_)));
    assert_eq!(emu.close_all(Target::Any, 1011, "going down"), 1);
    assert_eq!(b.recv().await.close_code(), Some(1011));
    // Transcript over the control API.
    http.put(format!("{base}/_emulator/transcript"))
        .body("changed words")
        .send()
        .await
        .expect("r");
    let mut c = connect(&emu, STT).await;
    let rid = new_id();
    c.speech_config(&rid).await;
    stt_turn(&mut c, &rid, 300).await;
    let msgs = c.until_turn_end().await;
    let phrase = msgs
        .iter()
        .find(|m| m.path() == Some("speech.phrase"))
        .expect("phrase")
        .json();
    assert_eq!(phrase["DisplayText"], "changed words");
    c.close().await;
    drop(http);
    settle(&emu).await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn per_key_connection_limit() {
    let mut config = EmulatorConfig::plain().with_key(KEY);
    config.max_connections_per_key = Some(2);
    let emu = start(config).await;
    let a = connect(&emu, TTS_PATH).await;
    let b = connect(&emu, STT).await;
    assert_eq!(refused(&emu, TTS_PATH, &key_headers()).await.status(), 429);
    a.close().await;
    emu.wait_for_counters(|c| c.connections_open == 1, PATIENCE)
        .await
        .expect("one closed");
    connect(&emu, TTS_PATH).await.close().await;
    b.close().await;
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

/// Sends a ping and reports whether a pong comes back within `d` (data messages are
/// skipped: only the pong matters).
async fn answers_ping(c: &mut Client, d: Duration) -> bool {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    c.ws.send(Message::Ping(b"probe".to_vec().into()))
        .await
        .expect("ping sent");
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) => return false,
            Ok(Some(Ok(Message::Pong(p)))) => return p.as_ref() == b"probe",
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("a blackholed socket neither closes nor drops: {other:?}"),
        }
    }
}

#[tokio::test]
async fn blackhole_mid_turn_goes_silent_with_the_socket_open() {
    let emu = start_plain().await;
    emu.add_fault(
        FaultRule::new(Fault::Blackhole {
            at: TurnPoint::AfterFrames(1),
        })
        .target(Target::TtsWs)
        .once(),
    );
    let mut c = ready_tts(&emu).await;
    assert!(
        answers_ping(&mut c, PATIENCE).await,
        "a live session answers pings"
    );
    c.synthesize(
        &new_id(),
        PCM,
        false,
        "a fairly long sentence to get several frames",
    )
    .await;
    let mut audio = 0;
    while let Some(m) = c.recv_within(Duration::from_millis(300)).await {
        assert!(
            !matches!(m, Got::Close(_) | Got::Dropped(_)),
            "no close, no FIN, no RST: {m:?}"
        );
        assert_ne!(m.path(), Some("turn.end"));
        if m.path() == Some("audio") {
            audio += 1;
        }
    }
    assert_eq!(audio, 1, "silent right after the first audio frame");
    assert!(
        !answers_ping(&mut c, Duration::from_millis(300)).await,
        "a blackholed session answers nothing, not even pings"
    );
    let counters = emu.counters();
    assert_eq!(
        (
            counters.blackholed,
            counters.blackholed_open,
            counters.connections_open,
            counters.turns_served
        ),
        (1, 1, 1, 0),
        "the socket stays open on the emulator's side"
    );
    // The client gives up on its side; the emulator still holds its end until shutdown,
    // and shutdown still ends that task.
    drop(c);
    assert_eq!(emu.counters().blackholed_open, 1);
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}

#[tokio::test]
async fn blackhole_idle_connections_by_handle_and_control_api() {
    let emu = start_plain().await;
    let mut idle = ready_tts(&emu).await;
    let mut stt = connect(&emu, STT).await;
    stt.speech_config(&new_id()).await;
    assert!(answers_ping(&mut idle, PATIENCE).await);
    // Only the TTS socket is hit.
    assert_eq!(emu.blackhole_all(Target::TtsWs), 1);
    emu.wait_for_counters(|c| c.blackholed_open == 1, PATIENCE)
        .await
        .expect("the TTS session went dark");
    assert!(!answers_ping(&mut idle, Duration::from_millis(300)).await);
    assert!(
        answers_ping(&mut stt, PATIENCE).await,
        "other targets are untouched"
    );
    // A blackholed session takes no more commands, so it is not counted again.
    assert_eq!(emu.blackhole_all(Target::TtsWs), 0);

    // The control API does the same.
    let r = http(&emu)
        .post(format!("{}/_emulator/blackhole", emu.base_url_http()))
        .json_body(&serde_json::json!({"target": "stt_ws"}))
        .send()
        .await
        .expect("control API answers");
    assert_eq!(r.status(), 200);
    assert_eq!(r.into_json().await["affected"], 1);
    emu.wait_for_counters(|c| c.blackholed_open == 2, PATIENCE)
        .await
        .expect("the STT session went dark");
    assert!(!answers_ping(&mut stt, Duration::from_millis(300)).await);
    // A turn on a blackholed socket gets nothing at all.
    stt_turn(&mut stt, &new_id(), 200).await;
    assert!(stt.recv_within(Duration::from_millis(300)).await.is_none());
    assert_eq!(emu.counters().turns_started, 0);
    assert_eq!(emu.counters().connections_open, 2);
    assert_eq!(emu.shutdown().await, 0, "no task left behind");
}
