//! The OpenAPI description of the HTTP API, served at `GET /api/v1/openapi.json`.
//!
//! Generated from the handlers' own request and response types and their `#[utoipa::path]`
//! attributes, so the document changes when they do; `service/tests/openapi.rs` checks
//! real responses against it.

use std::sync::OnceLock;

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes;

/// The API description. `ApiDoc::openapi()` builds it; the route serves a cached copy.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "speech-pool",
        description = "Warm Azure Speech connection pools behind an HTTP API. When \
            SERVICE_API_KEY is set, every endpoint except /livez and /readyz requires \
            `Authorization: Bearer <key>`."
    ),
    paths(
        routes::health::livez,
        routes::health::readyz,
        routes::pools::pools,
        routes::tts::tts,
        routes::tts::cancel_tts,
        routes::stt::stt,
        routes::tts_stream::tts_stream,
        routes::sessions::delete_session,
        routes::dashboard::dashboard,
        crate::metrics_handler,
        openapi_json,
    ),
    components(schemas(crate::error::ErrorBody)),
    modifiers(&BearerKey),
    tags(
        (name = "health", description = "Liveness and readiness for orchestrators"),
        (name = "pools", description = "Pool state"),
        (name = "speech", description = "Text to speech and speech to text, served from the pools"),
        (name = "sessions", description = "Calls whose turns share one connection"),
    )
)]
pub struct ApiDoc;

/// Declares the `api_key` bearer scheme the paths refer to.
#[derive(Debug)]
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The document as JSON, built once: it depends only on the code.
fn document() -> &'static serde_json::Value {
    static DOCUMENT: OnceLock<serde_json::Value> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        // Serializing utoipa's plain data structures cannot fail; `Null` would only make
        // the endpoint useless, never crash the service.
        serde_json::to_value(ApiDoc::openapi()).unwrap_or(serde_json::Value::Null)
    })
}

/// `GET /api/v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "health",
    responses(
        (status = 200, description = "This document", content_type = "application/json"),
        (status = 401, description = "Missing or wrong API key", body = crate::error::ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn openapi_json() -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        Json(document()),
    )
        .into_response()
}
