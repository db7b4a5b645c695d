//! A string that must never be printed: subscription keys and bearer tokens.

use std::fmt;
use std::sync::Arc;

/// A secret value (subscription key, STS token, Entra token).
///
/// Why a type and not a `String`: keys and tokens travel through structs that derive
/// `Debug`, through error paths and through tracing fields. Wrapping them makes the safe
/// behaviour the default: `Debug` and `Display` print `[redacted]`, and the only way to
/// read the value is the explicit, greppable [`Secret::expose`], which this crate calls
/// only where a header value is built.
///
/// Cloning is cheap (an `Arc`), because a token is shared by every connection opened
/// with it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The value itself. Call only to put it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty (an unset environment variable, typically).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// Replaces every occurrence of this secret in `text` with `[redacted]`, for text that
    /// came from elsewhere (a server's error body) and could, in theory, echo it back.
    pub fn redact_in(&self, text: &str) -> String {
        if self.0.len() < 4 {
            // Too short to search for without mangling ordinary text; such a secret is
            // useless anyway and rejected by the credential constructors.
            return text.to_owned();
        }
        text.replace(&*self.0, "[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("super-secret-key-123");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(
            format!("{:#?}", Some(&s)),
            "Some(\n    Secret([redacted]),\n)"
        );
        assert_eq!(s.expose(), "super-secret-key-123");
        assert_eq!(
            s.redact_in("echo super-secret-key-123!"),
            "echo [redacted]!"
        );
        assert!(Secret::new("  ").is_empty());
    }
}
