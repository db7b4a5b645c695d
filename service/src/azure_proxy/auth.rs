//! Who may use the Azure-protocol endpoints: the SDK's own credential, checked against
//! `SERVICE_API_KEY`.
//!
//! An official SDK cannot send this service's `Authorization: Bearer <key>` scheme on its
//! own terms: it sends its subscription key (`Ocp-Apim-Subscription-Key`, as a header and,
//! from the JavaScript SDK, also in the query, because browsers cannot set websocket
//! headers) or a bearer token (`Authorization: Bearer <token>`, or `Authorization=<token>`
//! in the query, with or without `Bearer `). So the SDK's credential *is* the service key:
//! an app configures `SERVICE_API_KEY` as its "subscription key". Without a service key
//! every credential, and none, is accepted (a sidecar on loopback). The real Azure key never
//! comes from the client and never goes back to it.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::state::AppState;

/// The header the SDKs send their subscription key in.
pub const KEY_HEADER: &str = "Ocp-Apim-Subscription-Key";

/// Every credential the request carries, in the forms the SDKs send. Values only; names
/// and positions do not matter for the check.
fn credentials<'a>(headers: &'a HeaderMap, query: &'a [(String, String)]) -> Vec<&'a str> {
    let mut found = Vec::new();
    for name in [KEY_HEADER, "authorization"] {
        for v in headers.get_all(name) {
            if let Ok(v) = v.to_str() {
                found.push(strip_bearer(v));
            }
        }
    }
    for (name, value) in query {
        if name.eq_ignore_ascii_case(KEY_HEADER) || name.eq_ignore_ascii_case("authorization") {
            found.push(strip_bearer(value));
        }
    }
    found
}

/// `Bearer <token>` → `<token>`; anything else unchanged (aspeak sends a bare token).
fn strip_bearer(value: &str) -> &str {
    let v = value.trim();
    match v.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => v,
    }
}

/// `Ok` when no service key is configured, or when any credential the request carries
/// equals it (compared in constant time, so response times do not leak it byte by byte).
/// Otherwise the 401 Azure gives a wrong key, which the SDKs report as an authentication
/// error.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
pub fn check(
    state: &AppState,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<(), Response> {
    let Some(key) = &state.options().api_key else {
        return Ok(());
    };
    let ok = credentials(headers, query)
        .iter()
        .any(|c| bool::from(c.as_bytes().ct_eq(key.expose().as_bytes())));
    if ok {
        Ok(())
    } else {
        Err((
            StatusCode::UNAUTHORIZED,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Use the service's SERVICE_API_KEY as the subscription key."}}"#,
        )
            .into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn every_sdk_form_is_found() {
        let mut h = HeaderMap::new();
        h.insert(KEY_HEADER, HeaderValue::from_static("k1"));
        h.insert("authorization", HeaderValue::from_static("Bearer t1"));
        let q = vec![
            ("Ocp-Apim-Subscription-Key".to_owned(), "k2".to_owned()),
            ("Authorization".to_owned(), "Bearer t2".to_owned()),
            ("authorization".to_owned(), "t3".to_owned()),
            ("X-ConnectionId".to_owned(), "ABC".to_owned()),
        ];
        assert_eq!(credentials(&h, &q), vec!["k1", "t1", "k2", "t2", "t3"]);
    }
}
