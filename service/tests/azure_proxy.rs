//! The service speaking Azure's own protocol (`service::azure_proxy`) to a raw websocket
//! client that sends what the JavaScript Speech SDK sends, with the service's upstream
//! being the emulator over TLS: ids, stream ids and message order as the SDK expects them,
//! the tiers of each turn, the service key, and upstream failures as the SDK sees them.

use std::time::Duration;

mod common;

use common::azure::{UPSTREAM_KEY, Upstream, idle_close_before_turn};
use common::sdk::{
    Got, HANG, Ws, binary, check_tts_turn, connect, recognize, speak, until_turn_end,
};
use futures_util::SinkExt;
use service::secret::Secret;
use service::test_support::client;
use speech_emulator::{EmulatorConfig, Fault, FaultRule, Target, TurnPoint};

const TRANSCRIPT: &str = "hello from the proxy";

async fn setup(service_key: Option<&str>) -> Upstream {
    let emulator = EmulatorConfig::default()
        .with_key(UPSTREAM_KEY)
        .with_transcript(TRANSCRIPT);
    Upstream::start_with(emulator, |config| {
        config.warm_pool_tts_size = 2;
        config.service_api_key = service_key.map(Secret::new);
    })
    .await
}

impl Upstream {
    async fn connect(&self, path_and_query: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
        connect(&self.server, path_and_query, headers).await
    }

    async fn pool(&self, name: &str) -> serde_json::Value {
        let mut req = client().get(self.server.url("/api/v1/pools"));
        if let Some(k) = &self.state.options().api_key {
            req = req.bearer_auth(k.expose());
        }
        let v: serde_json::Value = req.send().await.expect("pools").json().await.expect("json");
        v["pools"][name].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_turns_are_relayed_verbatim_on_one_warm_then_dedicated_connection() {
    let s = setup(None).await;
    let mut ws = s
        .connect(
            "/tts/cognitiveservices/websocket/v1?Ocp-Apim-Subscription-Key=anything&X-ConnectionId=F0EFE1EA82F640209985055ED9F47D65",
            &[("Ocp-Apim-Subscription-Key", "anything")],
        )
        .await
        .expect("upgrade");
    let rid1 = "9670D8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid1, "Hello proxy world", true).await;
    let got = until_turn_end(&mut ws).await.expect("turn 1");
    let bytes1 = check_tts_turn(&got, rid1);
    // 16 kHz 16-bit: the emulator's 50 ms + 60 ms per character + 50 ms.
    assert_eq!(bytes1, 32 * (50 + 60 * "Hello proxy world".len() + 50));
    // The pool refills its warm set behind the socket; from now on nothing opens.
    let refilled = s
        .emulator
        // The text-streaming pool keeps one v2 socket warm too.
        .wait_for_counters(|c| c.connections_opened == 5, HANG)
        .await
        .expect("2 TTS + 1 STT + 1 TTS-stream warm, then 1 TTS refill");
    let rid2 = "1111D8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid2, "Second turn", false).await;
    let got = until_turn_end(&mut ws).await.expect("turn 2");
    check_tts_turn(&got, rid2);

    // The second turn used the socket's own connection: no new upstream connection.
    assert_eq!(
        s.emulator.counters().connections_opened,
        refilled.connections_opened
    );
    let tts = s.pool("speech-tts").await;
    assert_eq!(tts["allocations_warm"], 1, "{tts}");
    assert_eq!(tts["allocations_dedicated"], 1, "{tts}");
    assert_eq!(tts["allocations_cold"], 0, "{tts}");
    assert_eq!(tts["active_sessions"], 1, "{tts}");

    // The SDK disconnects: the connection goes back to the warm set.
    ws.close(None).await.expect("close");
    drop(ws);
    let mut back = false;
    for _ in 0..100 {
        let tts = s.pool("speech-tts").await;
        // Returned, not closed: three idle (two warm + the socket's, which the maintainer
        // trims back to the target later), none closed.
        if tts["active_sessions"] == 0 && tts["warm_pool_size"] == 3 && tts["closed_total"] == 0 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "{}", s.pool("speech-tts").await);
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_key_is_the_sdks_subscription_key() {
    let s = setup(Some("service-key")).await;
    let path = "/cognitiveservices/websocket/v1";
    assert_eq!(s.connect(path, &[]).await.err(), Some(401));
    assert_eq!(
        s.connect(path, &[("Ocp-Apim-Subscription-Key", "wrong")])
            .await
            .err(),
        Some(401)
    );
    // The upstream's key is not the service's: it must not open the door either.
    assert_eq!(
        s.connect(path, &[("Ocp-Apim-Subscription-Key", UPSTREAM_KEY)])
            .await
            .err(),
        Some(401)
    );
    for (p, h) in [
        (
            path.to_owned(),
            vec![("Ocp-Apim-Subscription-Key", "service-key")],
        ),
        (
            format!("{path}?Ocp-Apim-Subscription-Key=service-key"),
            vec![],
        ),
        (
            path.to_owned(),
            vec![("Authorization", "Bearer service-key")],
        ),
        (format!("{path}?Authorization=Bearer%20service-key"), vec![]),
    ] {
        let mut ws = s
            .connect(&p, &h)
            .await
            .unwrap_or_else(|c| panic!("{p} {h:?}: {c}"));
        ws.close(None).await.expect("close");
    }
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_reach_the_sdk_as_azure_closes_and_the_next_socket_is_served() {
    let s = setup(None).await;
    let path = "/tts/cognitiveservices/websocket/v1";
    for (fault, want) in [
        (
            Fault::Close {
                code: 4429,
                reason: None,
                at: TurnPoint::AfterTurnStart,
            },
            4429,
        ),
        (
            Fault::Close {
                code: 1007,
                reason: None,
                at: TurnPoint::AfterTurnStart,
            },
            1007,
        ),
        // The upstream dies without a close frame: the SDK gets a retryable 1011.
        (
            Fault::Disconnect {
                at: TurnPoint::AfterFrames(1),
                rst: false,
            },
            1011,
        ),
    ] {
        s.emulator
            .add_fault(FaultRule::new(fault).target(Target::TtsWs).once());
        let mut ws = s.connect(path, &[]).await.expect("upgrade");
        speak(&mut ws, "AAAAD8904BB94E2A8C6E7C1F3A5B2D10", "doomed", true).await;
        let (code, _) = until_turn_end(&mut ws).await.expect_err("closed");
        assert_eq!(code, want);
        // The SDK reconnects: a new socket, served from the pool again.
        let mut ws = s.connect(path, &[]).await.expect("upgrade");
        speak(
            &mut ws,
            "BBBBD8904BB94E2A8C6E7C1F3A5B2D10",
            "recovered",
            true,
        )
        .await;
        let got = until_turn_end(&mut ws)
            .await
            .expect("served after the fault");
        check_tts_turn(&got, "BBBBD8904BB94E2A8C6E7C1F3A5B2D10");
        ws.close(None).await.expect("close");
    }
    let tts = s.pool("speech-tts").await;
    let served =
        tts["allocations_warm"].as_u64().unwrap() + tts["allocations_cold"].as_u64().unwrap();
    assert_eq!(served, 6, "{tts}");
    s.finish().await;
}

/// Azure's idle and age closes are normal closes (1000) that can cross a turn's first
/// message on the wire. Before the SDK was sent anything, the turn is replayed on a fresh
/// connection (again if that one closes too, up to three times) and the SDK never notices; after it, the SDK gets 1011 (a normal close in the
/// middle of a turn leaves the JavaScript SDK waiting for the turn's end for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_close_racing_a_turn_is_invisible_before_output_and_1011_after() {
    let s = setup(None).await;
    let path = "/tts/cognitiveservices/websocket/v1";
    let mut ws = s.connect(path, &[]).await.expect("upgrade");
    let rid1 = "1111D8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid1, "first turn", true).await;
    check_tts_turn(&until_turn_end(&mut ws).await.expect("turn 1"), rid1);

    s.emulator
        .add_fault(idle_close_before_turn(Target::TtsWs, 1));
    let rid2 = "2222D8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid2, "crossed an idle close", true).await;
    let got = until_turn_end(&mut ws)
        .await
        .expect("served on a fresh connection without the SDK noticing");
    check_tts_turn(&got, rid2);
    let rid3 = "3333D8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid3, "and the socket goes on", true).await;
    check_tts_turn(&until_turn_end(&mut ws).await.expect("turn 3"), rid3);

    // Connections warmed together idle out together: the replacements close as well, one
    // after the other (two warm ones and then the next), and the turn is still served.
    s.emulator
        .add_fault(idle_close_before_turn(Target::TtsWs, 3));
    let rid3b = "3BBBD8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid3b, "its replacements closed too", true).await;
    let got = until_turn_end(&mut ws)
        .await
        .expect("served after three replacements closed in turn");
    check_tts_turn(&got, rid3b);

    // A drop (no close frame) before anything was sent to the SDK is replayed once too.
    s.emulator.add_fault(
        FaultRule::new(Fault::Disconnect {
            at: TurnPoint::BeforeTurnStart,
            rst: false,
        })
        .target(Target::TtsWs)
        .once(),
    );
    let rid3c = "3CCCD8904BB94E2A8C6E7C1F3A5B2D10";
    speak(&mut ws, rid3c, "dropped before the turn started", true).await;
    let got = until_turn_end(&mut ws)
        .await
        .expect("served after a drop before the turn started");
    check_tts_turn(&got, rid3c);

    s.emulator.add_fault(
        FaultRule::new(Fault::Close {
            code: 1000,
            reason: None,
            at: TurnPoint::AfterFrames(1),
        })
        .target(Target::TtsWs)
        .once(),
    );
    speak(
        &mut ws,
        "4444D8904BB94E2A8C6E7C1F3A5B2D10",
        "cut after audio",
        true,
    )
    .await;
    let (code, _) = until_turn_end(&mut ws).await.expect_err("closed");
    assert_eq!(
        code, 1011,
        "a normal close after output reaches the SDK as 1011"
    );
    s.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stt_combinations_get_pools_of_their_own_and_turns_keep_their_connection() {
    let s = setup(None).await;
    let mut ws = s
        .connect(
            "/speech/recognition/interactive/cognitiveservices/v1?language=en-US&format=simple",
            &[],
        )
        .await
        .expect("upgrade");
    let rid1 = "CCCCD8904BB94E2A8C6E7C1F3A5B2D10";
    recognize(&mut ws, rid1, 1.0, true).await;
    let got = until_turn_end(&mut ws).await.expect("turn 1");
    assert_eq!(got.first().map(Got::path), Some("turn.start"), "{got:?}");
    for g in &got {
        assert_eq!(g.header("x-requestid"), Some(rid1), "{g:?}");
    }
    let phrase = got
        .iter()
        .find(|g| g.path() == "speech.phrase")
        .expect("phrase");
    let v: serde_json::Value = serde_json::from_str(&phrase.body).expect("json");
    assert_eq!(v["DisplayText"], TRANSCRIPT);
    assert_eq!(v["Duration"], 10_000_000);
    // Late audio of the finished turn (the JS SDK sends its end frame twice) is absorbed,
    // not replayed upstream, where a finished request id would be a protocol violation.
    ws.send(binary(&[("Path", "audio"), ("X-RequestId", rid1)], &[]))
        .await
        .expect("send");
    let rid2 = "DDDDD8904BB94E2A8C6E7C1F3A5B2D10";
    recognize(&mut ws, rid2, 0.5, false).await;
    let got = until_turn_end(&mut ws).await.expect("turn 2");
    assert!(got.iter().any(|g| g.path() == "speech.phrase"), "{got:?}");

    // The interactive combination is not the service's own (conversation): it got its
    // own pool, the first turn created its connection (COLD), the second kept it.
    let name = "speech-stt:interactive:en-us:simple";
    let p = s.pool(name).await;
    assert_eq!(p["allocations_cold"], 1, "{p}");
    assert_eq!(p["allocations_dedicated"], 1, "{p}");
    ws.close(None).await.expect("close");
    // The default combination is served from the configured STT pool, warm.
    let mut ws = s
        .connect(
            "/stt/speech/recognition/conversation/cognitiveservices/v1?language=en-us",
            &[],
        )
        .await
        .expect("upgrade");
    recognize(&mut ws, "EEEED8904BB94E2A8C6E7C1F3A5B2D10", 1.0, true).await;
    let got = until_turn_end(&mut ws).await.expect("turn");
    assert!(got.iter().any(|g| g.path() == "speech.phrase"), "{got:?}");
    ws.close(None).await.expect("close");
    let stt = s.pool("speech-stt").await;
    assert_eq!(stt["allocations_warm"], 1, "{stt}");
    assert_eq!(stt["allocations_cold"], 0, "{stt}");
    // Azure requires a language: 400 at the upgrade, as Azure answers.
    assert_eq!(
        s.connect("/speech/recognition/interactive/cognitiveservices/v1", &[])
            .await
            .err(),
        Some(400)
    );
    s.finish().await;
}

/// A recognizer in a language outside `STT_LANGUAGES` gets a pool made on demand. While
/// that pool cannot fill (here the speech service throttles every new STT connection), the
/// replica must stay ready: its configured pools serve every other caller warm, and a
/// 503 from `/readyz` would take it out of the load balancer for one client's language.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_pool_that_cannot_fill_leaves_the_replica_ready() {
    let s = setup(None).await;
    let readyz = || async {
        let r = client()
            .get(s.server.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        let status = r.status().as_u16();
        (status, r.json::<serde_json::Value>().await.expect("json"))
    };
    assert_eq!(readyz().await.0, 200);
    s.emulator.add_fault(
        FaultRule::new(Fault::Handshake {
            status: 429,
            retry_after: Some(1),
        })
        .target(Target::SttWs),
    );
    let name = "speech-stt:interactive:de-de:simple";
    if let Ok(mut ws) = s
        .connect(
            "/speech/recognition/interactive/cognitiveservices/v1?language=de-DE",
            &[],
        )
        .await
    {
        recognize(&mut ws, "DE0ED8904BB94E2A8C6E7C1F3A5B2D10", 0.5, true).await;
        let _ = until_turn_end(&mut ws).await;
    }
    let pool = s.pool(name).await;
    assert_eq!(
        pool["ready"], false,
        "the scenario needs an unfilled pool: {pool}"
    );
    let (status, body) = readyz().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready", "{body}");
    assert!(body["pools"].get(name).is_none(), "{body}");
    s.emulator.clear_faults();
    s.finish().await;
}
