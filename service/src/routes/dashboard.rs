//! `GET /`: the live dashboard, a static page embedded in the binary.

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse};

/// The page: plain HTML and JavaScript, no build step, no external resource. It holds no
/// data, so it is served without authentication; with `SERVICE_API_KEY` set it asks for
/// the key and sends it as a bearer header on its own requests. It polls
/// `/api/v1/pools` and draws the warm level against its target per pool and the tier
/// breakdown over time on canvases.
pub const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// `GET /`.
#[utoipa::path(
    get,
    path = "/",
    tag = "pools",
    responses(
        (status = 200, description = "The live dashboard: a static page, served without the \
         API key because it holds no data; it sends the key with its own data requests",
         content_type = "text/html"),
    ),
)]
pub async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            // Everything is inline and same-origin; the policy forbids loading anything
            // else, which also proves the page needs no CDN.
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                ),
            ),
        ],
        Html(DASHBOARD_HTML),
    )
}
