//! Optional bearer-token authentication (`SERVICE_API_KEY`), and the origin check that
//! keeps web pages of other sites away from the API (`ALLOWED_ORIGINS`).

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
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

/// Whether `origin` (`scheme://host[:port]`) names the host the request was sent to.
/// The scheme is not compared: behind a TLS-terminating proxy the service sees plain
/// HTTP for an `https://` page of its own.
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(authority) = origin.split_once("://").map(|(_, a)| a) else {
        return false;
    };
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|host| host.trim().eq_ignore_ascii_case(authority))
}

/// Middleware on every route: a request carrying an `Origin` header (sent by browsers
/// for cross-origin requests, websocket upgrades and most non-GET requests) must come
/// from this service's own origin or one listed in `ALLOWED_ORIGINS`; otherwise 403.
/// Requests without `Origin` (curl, SDKs, servers) pass. For listed origins the CORS
/// headers are added and preflights answered; nothing is added when none is configured.
pub async fn check_origin(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("").to_owned())
    else {
        return next.run(request).await;
    };
    let allowed = &state.options().limits.allowed_origins;
    let listed = allowed.allows(&origin);
    if !listed && !same_origin(&origin, request.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!(
                "requests from origin {:?} are not allowed; list it in ALLOWED_ORIGINS",
                origin.chars().take(100).collect::<String>()
            ),
        )
        .into_response();
    }
    if !listed {
        return next.run(request).await;
    }
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "x-pool-tier, x-request-id, x-session-id, server-timing, retry-after",
        ),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
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
