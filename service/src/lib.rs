//! The speech-pool HTTP service: warm Azure Speech connection pools behind an HTTP API.
//!
//! [`app`] builds the router from an [`AppState`]; `main` and the tests use the same
//! function. [`serve`] runs it on a listener with graceful shutdown: on the shutdown
//! signal `/readyz` turns 503, in-flight requests and streams drain (bounded), and the
//! pools close every connection.
//!
//! Endpoints:
//! - `GET /livez`, `GET /readyz` (no authentication);
//! - `GET /api/v1/pools`: pool health ([`routes::pools::PoolsHealthResponse`]);
//! - `GET /api/v1/openapi.json`: the OpenAPI description of all of these ([`openapi`]);
//! - `GET /metrics`: Prometheus text;
//! - `POST /api/v1/tts`: JSON `{text | ssml, voice?, format?, session_id?}` → streamed audio;
//! - `GET /api/v1/stt`: websocket, PCM in, recognition events out;
//! - `DELETE /api/v1/sessions/{id}`: a call ended;
//! - `GET /`: the dashboard;
//! - Azure Speech's own paths (websockets, TTS REST, voices list, token endpoint) for the
//!   official Speech SDKs, with their own credential check ([`azure_proxy`]).

#![warn(missing_docs)]

pub mod auth;
#[cfg(feature = "azure")]
mod azure;
pub mod azure_proxy;
pub mod backend;
pub mod config;
pub mod continuous;
pub mod error;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod secret;
pub mod state;
pub mod telemetry;

#[cfg(feature = "test-support")]
pub mod test_support;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tower_http::trace::TraceLayer;

pub use backend::{BackendKind, StartupError};
pub use config::Config;
pub use error::ApiError;
pub use lifecycle::{serve, shutdown_signal};
pub use routes::session_header::SESSION_HEADER;
pub use routes::{REQUEST_ID_HEADER, SERVER_TIMING_HEADER, TIER_HEADER};
pub use state::{AppState, Pools, STT_POOL, ServiceOptions, TTS_POOL, TTS_STREAM_POOL};

/// The service's router over `state`. Used by `main` and by the tests
/// (`app(state).oneshot(request)`).
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/api/v1/pools", get(routes::pools::pools))
        .route("/api/v1/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/tts", post(routes::tts::tts))
        .route("/api/v1/tts/{request_id}", delete(routes::tts::cancel_tts))
        .route("/api/v1/stt", get(routes::stt::stt))
        .route("/api/v1/tts/stream", get(routes::tts_stream::tts_stream))
        .route(
            "/api/v1/sessions/{id}",
            delete(routes::sessions::delete_session),
        )
        .route_layer(from_fn_with_state(state.clone(), auth::require_api_key));
    // The dashboard page holds no data (it authenticates its own data requests).
    let public = Router::new()
        .route("/", get(routes::dashboard::dashboard))
        .route("/livez", get(routes::health::livez))
        .route("/readyz", get(routes::health::readyz));
    Router::new()
        .merge(public)
        .merge(protected)
        // Azure Speech's own paths, for the official SDKs (their own credential check).
        .merge(azure_proxy::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.options().max_body_bytes))
        .layer(from_fn_with_state(state.clone(), auth::check_origin))
        .layer(from_fn_with_state(state.clone(), track_http))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(state)
}

/// Builds the state the configuration describes: chooses the backend (logging which and
/// why), builds its managers and the pools. Must run inside a tokio runtime. The pools
/// start empty; call [`AppState::warm_up`] (or let `/readyz` wait for the maintainer).
pub fn build_state(config: &Config) -> Result<AppState, StartupError> {
    config
        .validate()
        .map_err(|e| StartupError::Config(e.to_string()))?;
    let kind = backend::choose(config)?;
    let managers = backend::build(config, kind)?;
    let tts_stream = backend::build_tts_stream(config, kind)?;
    backend::log_choice(config, kind);
    state_from_parts(config, managers, Some(tts_stream))
}

/// Builds the state over managers the caller made (e.g. mock managers whose counters a
/// test keeps), with every other setting from `config`. Must run inside a tokio runtime.
///
/// The text-streaming pool uses the TTS manager's factory (see [`Pools::build`]).
pub fn state_from_managers(
    config: &Config,
    managers: backend::Managers,
) -> Result<AppState, StartupError> {
    state_from_parts(config, managers, None)
}

/// [`state_from_managers`] with the text-streaming pool's own manager when given.
pub fn state_from_parts(
    config: &Config,
    managers: backend::Managers,
    tts_stream: Option<speech_core::SynthesizerManager>,
) -> Result<AppState, StartupError> {
    config
        .validate()
        .map_err(|e| StartupError::Config(e.to_string()))?;
    let stream = tts_stream.unwrap_or_else(|| managers.tts.clone());
    let pools = Pools::build_with_stream(config, managers.tts, managers.stt, stream)?;
    let state = AppState::new(
        pools,
        ServiceOptions::from_config(config, managers.kind.as_str()),
    );
    state
        .configure_stt_languages()
        .map_err(StartupError::Config)?;
    Ok(state)
}

/// Installs the process-wide rustls crypto provider (ring) that every TLS connection of
/// the Azure backend uses. Idempotent; call once at start-up before any connection.
#[cfg(feature = "azure")]
pub fn install_crypto_provider() {
    azure::install_crypto_provider();
}

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "pools",
    responses(
        (status = 200, description = "Prometheus text exposition", content_type = "text/plain"),
        (status = 401, description = "Missing or wrong API key", body = error::ErrorBody),
    ),
    security((), ("api_key" = []))
)]
async fn metrics_handler(State(state): State<AppState>) -> Response {
    let body = state.metrics().render(&state.snapshots());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// The span of one HTTP request, as tower-http's default (method, URI, version) but with
/// credentials in the query redacted: the Speech SDKs put their key or token there.
fn request_span(request: &Request) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        uri = %azure_proxy::auth::redacted_uri(request.uri()),
        version = ?request.version(),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on this endpoint"),
    )
}

/// Decrements the in-flight gauge even if the request future is dropped.
struct InFlight<'a>(&'a metrics::Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.http_in_flight(-1.0);
    }
}

/// Middleware: HTTP request count, latency (to response headers) and in-flight gauge,
/// labelled by the route pattern so clients cannot create label values.
async fn track_http(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let metrics = state.metrics();
    metrics.http_in_flight(1.0);
    let _in_flight = InFlight(metrics);
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.record_http(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
