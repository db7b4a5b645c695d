//! Authentication as the service does it (docs/protocol.md#authentication): a subscription
//! key or a bearer token, from a header or (for browsers) the query string, and STS tokens
//! that are JWT-shaped with an `exp` ten minutes out.
//!
//! Tokens are signed with a fixed keyed hash rather than a per-instance secret on purpose:
//! a restarted emulator (same port, new process) keeps accepting the tokens it issued before,
//! as a real service keeps accepting unexpired tokens across its own restarts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The header (and query parameter) carrying a subscription key.
pub const KEY_HEADER: &str = "Ocp-Apim-Subscription-Key";
/// The header (and query parameter) carrying a bearer token.
pub const AUTH_HEADER: &str = "Authorization";

/// A credential as presented by a client, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// A subscription key.
    Key(String),
    /// A bearer token (the `Bearer ` prefix removed if it was there).
    Bearer(String),
}

/// Why a request was refused (always a `401`, as Azure answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// No key and no token.
    Missing,
    /// A key that is empty or not the configured one.
    BadKey,
    /// A token that is not one of ours.
    BadToken,
    /// One of our tokens, expired.
    Expired,
}

impl AuthError {
    /// A short reason for logs and response bodies.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing subscription key or authorization token",
            Self::BadKey => "invalid subscription key",
            Self::BadToken => "invalid authorization token",
            Self::Expired => "authorization token expired",
        }
    }
}

/// Finds the credential in the headers, then the query (the JS SDK sends both; aspeak only
/// the query). Names are matched case-insensitively; query values arrive percent-decoded.
pub fn presented<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    query: &[(String, String)],
) -> Option<Presented> {
    let q = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if let Some(k) = header(KEY_HEADER) {
        return Some(Presented::Key(k.trim().to_owned()));
    }
    if let Some(a) = header(AUTH_HEADER) {
        return Some(Presented::Bearer(strip_bearer(a)));
    }
    if let Some(k) = q(KEY_HEADER) {
        return Some(Presented::Key(k.trim().to_owned()));
    }
    q(AUTH_HEADER).map(|a| Presented::Bearer(strip_bearer(a)))
}

fn strip_bearer(v: &str) -> String {
    let v = v.trim();
    match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim().to_owned(),
        _ => v.to_owned(),
    }
}

/// Checks a presented credential. Returns the identity used for per-key limits: the key
/// itself, or the subscription id baked into a token.
pub fn check(presented: Option<&Presented>, key: Option<&str>) -> Result<String, AuthError> {
    match presented {
        None => Err(AuthError::Missing),
        Some(Presented::Key(k)) => {
            let ok = match key {
                Some(expected) => k == expected,
                None => !k.is_empty(),
            };
            if ok {
                Ok(k.clone())
            } else {
                Err(AuthError::BadKey)
            }
        }
        Some(Presented::Bearer(t)) => {
            // Entra tokens (`aad#<resourceId>#<token>`) cannot be verified offline; they are
            // accepted only when the emulator is not pinned to one key.
            if key.is_none() && t.starts_with("aad#") && t.matches('#').count() >= 2 {
                return Ok(t.split('#').nth(1).unwrap_or_default().to_owned());
            }
            verify_token(t, SystemTime::now())
        }
    }
}

/// Issues a token for `key` valid for `lifetime` from `now`.
pub fn issue_token(key: &str, now: SystemTime, lifetime: Duration) -> String {
    let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let exp = iat.saturating_add(lifetime.as_secs());
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let payload = serde_json::json!({
        "region": "emulator",
        "subscription-id": subscription_id(key),
        "product-id": "SpeechServices.S0",
        "cognitive-services-endpoint": "https://api.cognitive.microsoft.com/internal/v1.0/",
        "azure-resource-id": "",
        "scope": "speechservices",
        "aud": "urn:ms.speechservices.emulator",
        "iss": "urn:ms.cognitiveservices",
        "iat": iat,
        "exp": exp,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload.to_string())
    );
    let sig = URL_SAFE_NO_PAD.encode(signature(signing_input.as_bytes()));
    format!("{signing_input}.{sig}")
}

/// Reads the `exp` claim (Unix seconds) of a token, without checking it.
pub fn token_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")?.as_u64()
}

fn verify_token(token: &str, now: SystemTime) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::BadToken);
    };
    let expected = URL_SAFE_NO_PAD.encode(signature(format!("{h}.{p}").as_bytes()));
    if s != expected {
        return Err(AuthError::BadToken);
    }
    let bytes = URL_SAFE_NO_PAD.decode(p).map_err(|_| AuthError::BadToken)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::BadToken)?;
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .ok_or(AuthError::BadToken)?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if now >= exp {
        return Err(AuthError::Expired);
    }
    Ok(claims
        .get("subscription-id")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned())
}

/// A stable, non-reversible id for a key (so tokens do not carry the key itself).
fn subscription_id(key: &str) -> String {
    let a = fnv1a(0xcbf2_9ce4_8422_2325, key.as_bytes());
    let b = fnv1a(a ^ 0x9e37_79b9_7f4a_7c15, key.as_bytes());
    format!("{a:016x}{b:016x}")
}

/// A keyed 128-bit FNV-1a tag: not cryptographic, only enough that a token not issued by an
/// emulator is recognised as foreign (the emulator guards nothing of value).
fn signature(input: &[u8]) -> [u8; 16] {
    const SALT: &[u8] = b"speech-mock emulator token v1";
    let a = fnv1a(fnv1a(0xcbf2_9ce4_8422_2325, SALT), input);
    let b = fnv1a(fnv1a(0x84222325_cbf29ce4, SALT), input);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    data.iter().fold(seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_roundtrip_and_expiry() {
        let now = SystemTime::now();
        let t = issue_token("k", now, Duration::from_secs(600));
        assert_eq!(t.split('.').count(), 3);
        let exp = token_exp(&t).expect("exp");
        let iat = now
            .duration_since(UNIX_EPOCH)
            .expect("after epoch")
            .as_secs();
        assert_eq!(exp, iat + 600);
        assert!(verify_token(&t, now).is_ok());
        assert_eq!(
            verify_token(&t, now + Duration::from_secs(601)),
            Err(AuthError::Expired)
        );
        let mut forged = t.clone();
        forged.push('x');
        assert_eq!(verify_token(&forged, now), Err(AuthError::BadToken));
        assert_eq!(verify_token("a.b", now), Err(AuthError::BadToken));
    }

    #[test]
    fn presented_prefers_headers_then_query() {
        let q = vec![("Authorization".to_owned(), "Bearer abc".to_owned())];
        assert_eq!(
            presented(|_| None, &q),
            Some(Presented::Bearer("abc".to_owned()))
        );
        let q = vec![("authorization".to_owned(), "abc".to_owned())];
        assert_eq!(
            presented(|_| None, &q),
            Some(Presented::Bearer("abc".to_owned()))
        );
        assert_eq!(
            presented(|n| (n == KEY_HEADER).then_some("k1"), &q),
            Some(Presented::Key("k1".to_owned()))
        );
        assert_eq!(check(None, None), Err(AuthError::Missing));
        assert_eq!(
            check(Some(&Presented::Key(String::new())), None),
            Err(AuthError::BadKey)
        );
        assert_eq!(
            check(Some(&Presented::Key("x".into())), Some("y")),
            Err(AuthError::BadKey)
        );
        assert!(check(Some(&Presented::Key("y".into())), Some("y")).is_ok());
    }
}
