//! `POST /sts/v1.0/issueToken`: the token endpoint the Speech SDKs call, answered by the
//! service itself.
//!
//! An SDK configured with an authorization token (`SpeechConfig.fromAuthorizationToken`,
//! or an app that exchanges its key once and hands the token to a browser) first posts its
//! key here and then sends `Authorization: Bearer <token>` on every handshake. The key it
//! posts is this service's `SERVICE_API_KEY` (as everywhere on the Azure-protocol paths),
//! and the token it gets is this service's own: never Azure's key or Azure's token, which
//! stay in the service.
//!
//! The token is an HS256 JWT (`{"iss":"speech-pool","iat":…,"exp":…,"jti":…}`) that lives
//! 10 minutes, as Azure's do, so clients that read `exp` to refresh ahead of expiry keep
//! working. Nothing is stored per token: [`auth`] accepts a bearer whose
//! signature checks out and whose `exp` is still ahead. The signing key is derived from
//! `SERVICE_API_KEY` (HMAC-SHA256 of a fixed label under the key), so every replica with
//! the same key accepts every replica's tokens and a token never reveals the key; changing
//! the key invalidates every token. Without `SERVICE_API_KEY` every credential is accepted
//! anyway; tokens are still issued (signed with a random per-process key) so SDKs that ask
//! for one work unchanged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

use super::auth;
use crate::secret::Secret;
use crate::state::AppState;

/// How long an issued token is accepted: 10 minutes, as Azure's.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(600);

/// The label the signing key is derived under, so the key is used for nothing else.
const KEY_LABEL: &[u8] = b"speech-pool/sts/v1.0/issueToken HS256 signing key";

/// The JWT header of every token: `{"alg":"HS256","typ":"JWT"}`.
const JWT_HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Longest token [`TokenIssuer::verify`] reads; ours are about 200 bytes.
const MAX_TOKEN_LEN: usize = 1024;

/// Issues and checks the service's bearer tokens. Holds only the signing key; its `Debug`
/// prints nothing of it.
pub struct TokenIssuer {
    key: hmac::Key,
    /// Whether the key comes from `SERVICE_API_KEY` (else it is random, per process).
    derived: bool,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("key", &"<redacted>")
            .field("derived_from_service_key", &self.derived)
            .finish()
    }
}

impl TokenIssuer {
    /// An issuer whose key is derived from `service_key`, or random without one.
    pub fn new(service_key: Option<&Secret>) -> Self {
        match service_key {
            Some(k) => {
                let master = hmac::Key::new(hmac::HMAC_SHA256, k.expose().as_bytes());
                let derived = hmac::sign(&master, KEY_LABEL);
                Self {
                    key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
                    derived: true,
                }
            }
            None => {
                let rng = ring::rand::SystemRandom::new();
                // The system RNG only fails on platforms without one; a key derived from
                // the time would still be unguessable enough for a service that accepts
                // every credential anyway (no SERVICE_API_KEY).
                let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
                    let t = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos();
                    hmac::Key::new(hmac::HMAC_SHA256, &t.to_le_bytes())
                });
                Self {
                    key,
                    derived: false,
                }
            }
        }
    }

    /// A token valid from `now` for [`TOKEN_LIFETIME`].
    pub fn issue_at(&self, now: SystemTime) -> String {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let exp = iat + TOKEN_LIFETIME.as_secs();
        let jti = speech_core::RequestId::new();
        let claims = format!(
            r#"{{"iss":"speech-pool","aud":"speech-pool","iat":{iat},"exp":{exp},"jti":"{jti}"}}"#
        );
        let signed = format!("{JWT_HEADER}.{}", URL_SAFE_NO_PAD.encode(claims));
        let tag = hmac::sign(&self.key, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// A token valid from now.
    pub fn issue(&self) -> String {
        self.issue_at(SystemTime::now())
    }

    /// Whether `token` is one this issuer (or one with the same key) signed and it has
    /// not expired at `now`. The signature is checked first, in constant time.
    pub fn verify_at(&self, token: &str, now: SystemTime) -> bool {
        if token.len() > MAX_TOKEN_LEN {
            return false;
        }
        let Some((signed, tag)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag) else {
            return false;
        };
        if hmac::verify(&self.key, signed.as_bytes(), &tag).is_err() {
            return false;
        }
        let Some((header, claims)) = signed.split_once('.') else {
            return false;
        };
        if header != JWT_HEADER {
            return false;
        }
        let Some(exp) = URL_SAFE_NO_PAD
            .decode(claims)
            .ok()
            .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
            .and_then(|c| c.get("exp").and_then(serde_json::Value::as_u64))
        else {
            return false;
        };
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        now < exp
    }

    /// [`verify_at`](Self::verify_at) now.
    pub fn verify(&self, token: &str) -> bool {
        self.verify_at(token, SystemTime::now())
    }
}

/// `POST /sts/v1.0/issueToken`: the service key (in any form [`auth`] reads, but not a
/// token: a token cannot renew itself) in, a 10-minute bearer token out, as plain text
/// (the raw JWT, no `Bearer ` prefix, as Azure answers). A wrong key gets Azure's 401.
pub async fn issue_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Err(r) = auth::check_key(&state, &headers, &query) {
        return r;
    }
    let token = state.token_issuer().issue();
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        token,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_signed_jwts_that_expire_after_ten_minutes() {
        let key = Secret::new("service-key");
        let issuer = TokenIssuer::new(Some(&key));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = issuer.issue_at(t0);
        assert_eq!(token.split('.').count(), 3, "{token}");
        assert!(!token.contains("service-key"));
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["exp"], 1_800_000_600_u64);
        assert_eq!(claims["iss"], "speech-pool");
        assert!(issuer.verify_at(&token, t0));
        assert!(issuer.verify_at(&token, t0 + Duration::from_secs(599)));
        assert!(!issuer.verify_at(&token, t0 + TOKEN_LIFETIME));
        // Another replica with the same key accepts it; another key does not.
        assert!(TokenIssuer::new(Some(&key)).verify_at(&token, t0));
        assert!(!TokenIssuer::new(Some(&Secret::new("other"))).verify_at(&token, t0));
        assert!(!TokenIssuer::new(None).verify_at(&token, t0));
        // Two tokens of the same second differ (jti).
        assert_ne!(issuer.issue_at(t0), token);
    }

    #[test]
    fn tampered_or_malformed_tokens_are_refused() {
        let issuer = TokenIssuer::new(Some(&Secret::new("k")));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let token = issuer.issue_at(t0);
        let (signed, tag) = token.rsplit_once('.').unwrap();
        let (header, _) = signed.split_once('.').unwrap();
        // A later expiry with the old signature.
        let forged = URL_SAFE_NO_PAD.encode(r#"{"exp":99999999999}"#);
        for bad in [
            format!("{header}.{forged}.{tag}"),
            format!("{signed}.{}", &tag[1..]),
            format!("{signed}."),
            signed.to_owned(),
            String::new(),
            "k".to_owned(),
            "a.b.c".to_owned(),
            "x".repeat(5000),
        ] {
            assert!(!issuer.verify_at(&bad, t0), "{bad}");
        }
        let printed = format!("{issuer:?}");
        assert!(printed.contains("redacted"), "{printed}");
    }
}
