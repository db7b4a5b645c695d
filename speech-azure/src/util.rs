//! Small helpers shared by the connection kinds.

use std::time::Duration;

use speech_core::SpeechError;

/// Classifies a reqwest error without its URL (URLs carry no secrets here, but the
/// message stays short and stable) and with its source chain, which is where the useful
/// part ("connection refused", "invalid peer certificate") lives.
pub(crate) fn reqwest_error(what: &str, e: reqwest::Error) -> SpeechError {
    let timeout = e.is_timeout();
    let e = e.without_url();
    let msg = with_sources(format!("{what} failed: {e}"), &e);
    if timeout {
        SpeechError::timeout(msg)
    } else {
        SpeechError::transient(msg)
    }
}

/// Appends an error's source chain to a message ("a: b: c"), skipping repeats.
pub(crate) fn with_sources(top: String, err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = top;
    let mut cur = err.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !t.is_empty() && !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        cur = s.source();
    }
    out
}

/// `Retry-After` in seconds (the form Azure and the emulator use). HTTP-date values are
/// ignored: the caller then falls back to its own back-off.
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: u64 = v.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(3600)))
}

/// A fresh 32-hex uppercase id for `X-ConnectionId` (the JS SDK's form).
pub(crate) fn connection_id() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v4()
        .simple()
        .encode_upper(&mut buf)
        .to_owned()
}

/// Printable, bounded excerpt of a server's error body for an error message.
pub(crate) fn excerpt(body: &str) -> String {
    let clean: String = body.chars().filter(|c| !c.is_control()).take(200).collect();
    clean.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static(" 3 "),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn ids_and_excerpts() {
        let id = connection_id();
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
        );
        assert_eq!(excerpt("  a\r\nb  "), "ab");
    }
}
