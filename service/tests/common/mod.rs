//! Shared helpers for the service's integration tests.
#![allow(dead_code)] // Each test binary uses a different subset.

pub mod azure;
pub mod sdk;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use service::config::Config;
use service::{AppState, Pools, ServiceOptions, app};
use speech_mock::backend::{MockConfig, MockCounters, mock_stt_manager, mock_tts_manager};
use tower::ServiceExt;

/// An app over mock pools, with the mock's counters.
pub struct TestApp {
    pub state: AppState,
    pub tts: Arc<MockCounters>,
    pub stt: Arc<MockCounters>,
}

/// The defaults, with small pools and short timeouts so tests are quick.
pub fn config() -> Config {
    let mut c = Config::defaults();
    c.warm_pool_tts_size = 2;
    c.warm_pool_stt_size = 1;
    c.pool_tts_max_size = 4;
    c.pool_stt_max_size = 4;
    c.pool_acquire_timeout = std::time::Duration::from_millis(200);
    c
}

pub fn build(config: &Config, mock: MockConfig) -> TestApp {
    build_with(config, mock, |o| o)
}

pub fn build_with(
    config: &Config,
    mock: MockConfig,
    options: impl FnOnce(ServiceOptions) -> ServiceOptions,
) -> TestApp {
    let (tts_m, tts) = mock_tts_manager(mock.clone());
    let (stt_m, stt) = mock_stt_manager(mock);
    let pools = Pools::build(config, tts_m, stt_m).expect("pools");
    let state = AppState::new(pools, options(ServiceOptions::from_config(config, "mock")));
    TestApp { state, tts, stt }
}

/// A warmed-up app with zero-latency mocks.
pub async fn warm_app() -> TestApp {
    let t = build(&config(), MockConfig::default());
    t.state.warm_up().await;
    t
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The tier the request's connection came from (`dedicated`, `warm`, `cold`).
    pub fn tier(&self) -> Option<&str> {
        self.header(service::TIER_HEADER)
    }
}

pub async fn send(state: &AppState, request: Request<Body>) -> Reply {
    let response = app(state.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(state: &AppState, uri: &str) -> Reply {
    send(state, Request::get(uri).body(Body::empty()).unwrap()).await
}

pub async fn post_json(state: &AppState, uri: &str, body: impl Into<Body>) -> Reply {
    send(
        state,
        Request::post(uri)
            .header("content-type", "application/json")
            .body(body.into())
            .unwrap(),
    )
    .await
}

pub async fn tts(state: &AppState, body: serde_json::Value) -> Reply {
    post_json(state, "/api/v1/tts", body.to_string()).await
}

// Each test binary uses a different subset.
#[allow(unused_imports)]
pub use service::test_support::{LoopbackServer as Running, client, pcm};

/// Bound on a test service's shutdown: guards against a hang only.
const STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves `state` on 127.0.0.1 with a 5 s grace period.
pub async fn start(state: &AppState) -> Running {
    start_with_grace(state, std::time::Duration::from_secs(5)).await
}

/// Serves `state` on 127.0.0.1 with the given grace period.
pub async fn start_with_grace(state: &AppState, grace: std::time::Duration) -> Running {
    Running::start(state, grace).await.expect("bind 127.0.0.1")
}

/// Triggers shutdown and waits for `serve` to return cleanly.
pub async fn stop(server: Running) {
    server.stop(STOP_LIMIT).await.expect("clean shutdown");
}
