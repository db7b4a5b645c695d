//! Who may use the Azure-protocol endpoints: the SDK's own credential, checked against
//! `SERVICE_API_KEY`.
//!
//! An official SDK cannot send this service's `Authorization: Bearer <key>` scheme on its
//! own terms: it sends its subscription key (`Ocp-Apim-Subscription-Key`, as a header and,
//! from the JavaScript SDK, also in the query, because browsers cannot set websocket
//! headers) or a bearer token (`Authorization: Bearer <token>`, or `Authorization=<token>`
//! in the query, with or without `Bearer `). So the SDK's credential *is* the service key:
//! an app configures `SERVICE_API_KEY` as its "subscription key". Without a service key
//! every credential, and none, is accepted (a sidecar on loopback). A bearer token may also
//! be one this service issued at `/sts/v1.0/issueToken` ([`token`](super::token)) and that
//! has not expired. The real Azure key never comes from the client and never goes back to
//! it.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::secret::Secret;
use crate::state::AppState;

/// The header the SDKs send their subscription key in.
pub const KEY_HEADER: &str = "Ocp-Apim-Subscription-Key";

/// Where a credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `Ocp-Apim-Subscription-Key`, as a header or in the query.
    Key,
    /// `Authorization` (`Bearer <token>` or a bare token), as a header or in the query.
    Bearer,
}

/// Every credential the request carries, in the forms the SDKs send, with where it was.
fn credentials<'a>(headers: &'a HeaderMap, query: &'a [(String, String)]) -> Vec<(Kind, &'a str)> {
    let mut found = Vec::new();
    for (name, kind) in [(KEY_HEADER, Kind::Key), ("authorization", Kind::Bearer)] {
        for v in headers.get_all(name) {
            if let Ok(v) = v.to_str() {
                found.push((kind, strip_bearer(v)));
            }
        }
    }
    for (name, value) in query {
        if name.eq_ignore_ascii_case(KEY_HEADER) {
            found.push((Kind::Key, strip_bearer(value)));
        } else if name.eq_ignore_ascii_case("authorization") {
            found.push((Kind::Bearer, strip_bearer(value)));
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

/// Whether `credential` is the service key (compared in constant time, so response times
/// do not leak it byte by byte).
fn is_key(credential: &str, key: &Secret) -> bool {
    bool::from(credential.as_bytes().ct_eq(key.expose().as_bytes()))
}

/// The 401 Azure gives a wrong key, which the SDKs report as an authentication error.
/// Names no credential.
pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        r#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Use the service's SERVICE_API_KEY as the subscription key, or a token from its /sts/v1.0/issueToken."}}"#,
    )
        .into_response()
}

/// `Ok` when no service key is configured, or when the request carries the service key
/// (as a subscription key or as a bearer token) or, as a bearer token, a token this
/// service issued ([`token`](super::token)) that has not expired. Otherwise Azure's 401.
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
pub fn check(
    state: &AppState,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<(), Response> {
    let Some(key) = &state.options().api_key else {
        return Ok(());
    };
    let ok = credentials(headers, query).iter().any(|&(kind, c)| {
        is_key(c, key) || (kind == Kind::Bearer && state.token_issuer().verify(c))
    });
    if ok { Ok(()) } else { Err(unauthorized()) }
}

/// [`check`] for the token endpoint: only the service key itself opens it, so a token
/// cannot be renewed with a token (it would never expire).
#[allow(clippy::result_large_err)] // the error is the response itself, built once per refusal
pub fn check_key(
    state: &AppState,
    headers: &HeaderMap,
    query: &[(String, String)],
) -> Result<(), Response> {
    let Some(key) = &state.options().api_key else {
        return Ok(());
    };
    if credentials(headers, query)
        .iter()
        .any(|&(_, c)| is_key(c, key))
    {
        Ok(())
    } else {
        Err(unauthorized())
    }
}

/// `uri` as it may be logged: the values of credential query parameters (the JavaScript
/// SDK puts its key or token in the websocket URL) replaced by `<redacted>`.
pub fn redacted_uri(uri: &axum::http::Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.path().to_owned();
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _))
                if name.eq_ignore_ascii_case(KEY_HEADER)
                    || name.eq_ignore_ascii_case("authorization") =>
            {
                format!("{name}=<redacted>")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{}?{}", uri.path(), redacted.join("&"))
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
        assert_eq!(
            credentials(&h, &q),
            vec![
                (Kind::Key, "k1"),
                (Kind::Bearer, "t1"),
                (Kind::Key, "k2"),
                (Kind::Bearer, "t2"),
                (Kind::Bearer, "t3")
            ]
        );
    }

    #[test]
    fn credentials_in_the_url_are_redacted_for_logs() {
        let uri: axum::http::Uri =
            "/tts/cognitiveservices/websocket/v1?Ocp-Apim-Subscription-Key=s3cret&X-ConnectionId=AB&authorization=Bearer%20t0ken"
                .parse()
                .unwrap();
        let shown = redacted_uri(&uri);
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
        assert!(shown.contains("X-ConnectionId=AB"), "{shown}");
        assert_eq!(redacted_uri(&"/livez".parse().unwrap()), "/livez");
    }
}
