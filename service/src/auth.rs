//! Optional bearer-token authentication (`SERVICE_API_KEY`).

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Whether the `Authorization` header carries `Bearer <key>`. The comparison takes the
/// same time wherever the first differing byte is, so the key cannot be guessed byte by
/// byte from response times.
pub fn bearer_matches(header: Option<&HeaderValue>, key: &str) -> bool {
    let Some(value) = header.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && bool::from(token.trim().as_bytes().ct_eq(key.as_bytes()))
}

/// Middleware: when an API key is configured, answers 401 unless the request carries it.
/// Applied to every route except `/livez` and `/readyz`, which orchestrators call without
/// credentials.
pub async fn require_api_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(key) = &state.options().api_key else {
        return next.run(request).await;
    };
    if bearer_matches(request.headers().get(header::AUTHORIZATION), key.expose()) {
        return next.run(request).await;
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "this endpoint requires Authorization: Bearer <SERVICE_API_KEY>",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(bearer_matches(Some(&h("Bearer k3y")), "k3y"));
        assert!(bearer_matches(Some(&h("bearer k3y")), "k3y"));
        assert!(!bearer_matches(Some(&h("Bearer k3")), "k3y"));
        assert!(!bearer_matches(Some(&h("Bearer k3yy")), "k3y"));
        assert!(!bearer_matches(Some(&h("Basic k3y")), "k3y"));
        assert!(!bearer_matches(Some(&h("k3y")), "k3y"));
        assert!(!bearer_matches(None, "k3y"));
    }
}
