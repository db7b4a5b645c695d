//! `STT_LANGUAGES`: extra recognition languages whose SDK pools exist from start-up,
//! warm, so an official SDK's recognizer in one of them is served WARM from its first call.

mod common;

use common::sdk::{connect, recognize, until_turn_end};
use service::backend::{BackendKind, Managers};
use service::config::LanguageList;
use service::state_from_managers;
use speech_mock::backend::{MockConfig, mock_stt_manager, mock_tts_manager};

fn pools(state: &service::AppState) -> serde_json::Value {
    let snapshots = state.snapshots();
    serde_json::to_value(
        snapshots
            .iter()
            .map(|s| (s.name.clone(), s.warm_pool_size))
            .collect::<std::collections::BTreeMap<_, _>>(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_languages_are_pooled_and_warm_before_the_first_call() {
    let mut config = common::config();
    config.stt_languages = LanguageList(vec!["de-DE".into(), "fr-FR".into(), "en-US".into()]);
    let (tts, _) = mock_tts_manager(MockConfig::default());
    let (stt, stt_counters) = mock_stt_manager(MockConfig::default());
    let state = state_from_managers(
        &config,
        Managers {
            kind: BackendKind::Mock,
            tts,
            stt,
        },
    )
    .expect("state");
    // The pools exist from the start; readiness waits for them too.
    let names = pools(&state);
    assert!(
        names.get("speech-stt:conversation:de-de:simple").is_some(),
        "{names}"
    );
    assert!(
        names.get("speech-stt:conversation:fr-fr:simple").is_some(),
        "{names}"
    );
    // en-US is STT_LANGUAGE: served by the main STT pool, no second pool.
    assert!(
        names.get("speech-stt:conversation:en-us:simple").is_none(),
        "{names}"
    );
    state.warm_up().await;
    assert!(state.is_ready());
    let names = pools(&state);
    for pool in [
        "speech-stt",
        "speech-stt:conversation:de-de:simple",
        "speech-stt:conversation:fr-fr:simple",
    ] {
        assert_eq!(names[pool], config.warm_pool_stt_size, "{pool}: {names}");
    }
    assert_eq!(stt_counters.created(), 3 * config.warm_pool_stt_size as u64);

    // /api/v1/pools shows them the way pools made on demand appear.
    let server = common::start(&state).await;
    let listed: serde_json::Value = common::client()
        .get(server.url("/api/v1/pools"))
        .send()
        .await
        .expect("pools")
        .json()
        .await
        .expect("json");
    let de = &listed["pools"]["speech-stt:conversation:de-de:simple"];
    assert_eq!(de["warm_pool_size"], 1, "{listed}");
    assert_eq!(de["ready"], true, "{listed}");

    // An SDK recognizer in German: WARM from its first call, nothing created inline.
    let mut ws = connect(
        &server,
        "/speech/recognition/conversation/cognitiveservices/v1?language=de-DE",
        &[],
    )
    .await
    .expect("upgrade");
    recognize(&mut ws, "DE00D8904BB94E2A8C6E7C1F3A5B2D10", 0.5, true).await;
    let got = until_turn_end(&mut ws).await.expect("turn");
    assert!(got.iter().any(|g| g.path() == "speech.phrase"), "{got:?}");
    ws.close(None).await.expect("close");
    let pool = state
        .snapshots()
        .into_iter()
        .find(|s| s.name == "speech-stt:conversation:de-de:simple")
        .expect("pool");
    assert_eq!(pool.allocations_warm, 1, "{pool:?}");
    assert_eq!(pool.allocations_cold, 0, "{pool:?}");
    // Another language still gets a pool on demand (COLD the first time).
    let mut ws = connect(
        &server,
        "/speech/recognition/conversation/cognitiveservices/v1?language=it-IT",
        &[],
    )
    .await
    .expect("upgrade");
    recognize(&mut ws, "17A0D8904BB94E2A8C6E7C1F3A5B2D10", 0.5, true).await;
    until_turn_end(&mut ws).await.expect("turn");
    ws.close(None).await.expect("close");
    let it = state
        .snapshots()
        .into_iter()
        .find(|s| s.name == "speech-stt:conversation:it-it:simple")
        .expect("on-demand pool");
    assert_eq!(it.allocations_cold, 1);
    common::stop(server).await;
}
