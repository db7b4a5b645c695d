//! The `X-Session-Id` request header: the session id where a load balancer can see it.
//!
//! A load balancer in front of several replicas picks the replica by hashing a header
//! (HAProxy's `balance hdr(X-Session-Id)`, Envoy's consistent hash on a header); it
//! cannot read a JSON body or, portably, a query parameter. So every endpoint that takes
//! a session id (the TTS body's `session_id`, the STT websocket's `session_id` query
//! parameter, the path of `DELETE /api/v1/sessions/{id}`) also accepts it in this header.
//! The header alone is enough; when both are given they must agree, because a request
//! hashed on one id and served for another would land on a replica that does not hold the
//! call's dedicated connection: that is a client bug, answered 400 rather than served
//! silently without affinity. Responses echo the id in the same header.
//!
//! The rules live here, in one place, so the three endpoints cannot drift apart.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::validate_session_id;
use crate::error::ApiError;

/// The header's name (HTTP header names are case-insensitive; this is the canonical
/// lower-case form the service sends).
pub const SESSION_HEADER: &str = "x-session-id";

/// The `X-Session-Id` header of a request, validated like any session id. `None` when the
/// request has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionHeader(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for SessionHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        from_headers(&parts.headers).map(Self)
    }
}

/// Reads and validates the header. Repeated headers are refused: a proxy hashing on the
/// first and this service using another would break affinity without anyone noticing.
fn from_headers(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(SESSION_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(
            "X-Session-Id was sent more than once; send it once per request",
        ));
    }
    let id = value.to_str().map_err(|_| {
        ApiError::bad_request("X-Session-Id must be ASCII letters, digits, '-', '_', '.' or ':'")
    })?;
    validate_session_id(id)
        .map_err(|e| ApiError::bad_request(format!("X-Session-Id header: {}", e.message)))?;
    Ok(Some(id.to_owned()))
}

impl SessionHeader {
    /// The request's session id from the header and from the endpoint's own `field` (the
    /// body's or query's `session_id`): either alone, or both when they are equal. `field`
    /// must already be validated. A mismatch is a 400 naming both places.
    pub fn reconcile(
        self,
        field: Option<String>,
        field_name: &str,
    ) -> Result<Option<String>, ApiError> {
        match (self.0, field) {
            (Some(header), Some(field)) if header != field => Err(ApiError::bad_request(format!(
                "the X-Session-Id header ({header:?}) and {field_name} ({field:?}) name different \
                 sessions; send the same id in both, or only one of them"
            ))),
            (Some(id), _) | (None, Some(id)) => Ok(Some(id)),
            (None, None) => Ok(None),
        }
    }
}

/// Sets `X-Session-Id: <id>` on a response, so a client (or a proxy's log) sees which
/// session was served. Ids are validated ASCII, so the value is always valid.
pub fn echo(headers: &mut HeaderMap, session: Option<&str>) {
    if let Some(v) = session.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.insert(HeaderName::from_static(SESSION_HEADER), v);
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(SESSION_HEADER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_header_is_read_and_validated() {
        assert_eq!(from_headers(&headers(&[])).unwrap(), None);
        assert_eq!(
            from_headers(&headers(&["call-1"])).unwrap().as_deref(),
            Some("call-1")
        );
        for bad in [&["a b"][..], &[""], &["a", "a"]] {
            let e = from_headers(&headers(bad)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert!(e.message.contains("X-Session-Id"), "{bad:?}: {}", e.message);
        }
    }

    #[test]
    fn header_and_field_must_agree() {
        let h = |v: Option<&str>| SessionHeader(v.map(str::to_owned));
        let s = |v: &str| Some(v.to_owned());
        assert_eq!(h(Some("a")).reconcile(None, "f").unwrap(), s("a"));
        assert_eq!(h(None).reconcile(s("b"), "f").unwrap(), s("b"));
        assert_eq!(h(Some("a")).reconcile(s("a"), "f").unwrap(), s("a"));
        assert_eq!(h(None).reconcile(None, "f").unwrap(), None);
        let e = h(Some("a"))
            .reconcile(s("b"), "the body's session_id")
            .unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("the body's session_id"), "{}", e.message);
    }
}
