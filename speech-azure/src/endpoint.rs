//! Where the service lives: URLs for tokens, TTS REST, TTS and STT websockets.

use speech_core::{RecognitionFormat, RecognitionMode};
use url::Url;

use crate::error::ConfigError;

/// An Azure Speech endpoint.
///
/// Three forms, because deployments differ (docs/protocol.md#endpoints):
/// - [`Region`](Self::Region): the public regional hosts (`{region}.tts.speech.microsoft.com`
///   …), with the sovereign-cloud suffixes (`china*` → `.azure.cn`, `usgov*` → `.azure.us`).
/// - [`CustomDomain`](Self::CustomDomain): a resource with a custom subdomain
///   (`https://{name}.cognitiveservices.azure.com`), required for private endpoints and
///   Entra ID; paths gain the `/tts` or `/stt` offering prefix.
/// - [`Host`](Self::Host): an explicit host serving every route at its regional path, such
///   as an on-premises container or the offline emulator; usually paired with an extra
///   root CA ([`TlsOptions`](crate::TlsOptions)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A public-cloud region, e.g. `westeurope`, `chinaeast2`, `usgovarizona`.
    Region(String),
    /// `https://{name}.cognitiveservices.azure.com` (no path).
    CustomDomain(Url),
    /// `https://host:port` or `http://host:port`, optionally with a path prefix.
    Host(Url),
}

/// The websocket path of TTS on regional hosts and explicit hosts. The legacy path: the
/// native SDK 1.53 still uses it and every third-party client does (docs/protocol.md#endpoints).
const TTS_WS_PATH: &str = "/cognitiveservices/websocket/v1";

/// The websocket path of TTS with text streaming (docs/protocol.md#endpoints).
const TTS_STREAM_WS_PATH: &str = "/cognitiveservices/websocket/v2";

impl Endpoint {
    /// A public-cloud region. Lowercased; must be ASCII letters and digits only, because it
    /// becomes part of a host name.
    pub fn region(region: &str) -> Result<Self, ConfigError> {
        let r = region.trim().to_ascii_lowercase();
        if r.is_empty() || r.len() > 64 || !r.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConfigError::Region(region.chars().take(64).collect()));
        }
        Ok(Self::Region(r))
    }

    /// A custom-domain resource endpoint, e.g. `https://my-speech.cognitiveservices.azure.com/`.
    pub fn custom_domain(url: &str) -> Result<Self, ConfigError> {
        let u = parse_base(url, false)?;
        Ok(Self::CustomDomain(u))
    }

    /// An explicit host (emulator, container, proxy): `https://127.0.0.1:8443`. Plain
    /// `http://` is allowed here (it then uses `ws://`) for local containers.
    pub fn host(url: &str) -> Result<Self, ConfigError> {
        let u = parse_base(url, true)?;
        Ok(Self::Host(u))
    }

    /// Reads `AZURE_SPEECH_ENDPOINT`-style input: a `*.cognitiveservices.azure.com` (or
    /// sovereign equivalent) URL is a custom domain, a regional
    /// `https://{region}.api.cognitive.microsoft.com` URL becomes that region, and anything
    /// else is an explicit host.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let u = parse_base(url, true)?;
        let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
        if u.scheme() == "https"
            && [
                ".cognitiveservices.azure.com",
                ".cognitiveservices.azure.cn",
                ".cognitiveservices.azure.us",
            ]
            .iter()
            .any(|s| host.ends_with(s))
        {
            return Ok(Self::CustomDomain(u));
        }
        if let Some(region) = host
            .strip_suffix(".api.cognitive.microsoft.com")
            .or_else(|| host.strip_suffix(".api.cognitive.azure.cn"))
            .or_else(|| host.strip_suffix(".api.cognitive.microsoft.us"))
        {
            return Self::region(region);
        }
        Ok(Self::Host(u))
    }

    /// The STS token URL (`POST`).
    pub fn token_url(&self) -> Url {
        match self {
            Self::Region(r) => {
                let suffix = match cloud(r) {
                    Cloud::China => "api.cognitive.azure.cn",
                    Cloud::UsGov => "api.cognitive.microsoft.us",
                    Cloud::Public => "api.cognitive.microsoft.com",
                };
                regional(r, suffix, "https", "/sts/v1.0/issueToken")
            }
            Self::CustomDomain(b) | Self::Host(b) => join(b, "/sts/v1.0/issueToken", false),
        }
    }

    /// The TTS REST URL (`POST` SSML).
    pub fn tts_rest_url(&self) -> Url {
        self.service_url("tts", "/cognitiveservices/v1", false)
    }

    /// The voices list URL (`GET`), also the cheap request that warms a REST connection.
    pub fn voices_url(&self) -> Url {
        self.service_url("tts", "/cognitiveservices/voices/list", false)
    }

    /// The TTS websocket URL.
    pub fn tts_ws_url(&self) -> Url {
        self.service_url("tts", TTS_WS_PATH, true)
    }

    /// The v2 TTS websocket URL, the one that takes text as it is written
    /// (`text.piece` / `text.end`).
    pub fn tts_stream_ws_url(&self) -> Url {
        self.service_url("tts", TTS_STREAM_WS_PATH, true)
    }

    /// The STT websocket URL for a recognition mode, language and output format, which
    /// Azure fixes at the handshake. Detailed output also asks for word timings and word
    /// confidences, as the native Speech SDK does (its `speech.context` asks for them too).
    pub fn stt_ws_url(
        &self,
        mode: RecognitionMode,
        language: &str,
        format: RecognitionFormat,
    ) -> Url {
        let path = format!("/speech/recognition/{}/cognitiveservices/v1", mode.as_str());
        let mut u = self.service_url("stt", &path, true);
        u.query_pairs_mut()
            .append_pair("language", language)
            .append_pair("format", format.as_str());
        if format == RecognitionFormat::Detailed {
            u.query_pairs_mut()
                .append_pair("wordLevelTimestamps", "true")
                .append_pair("wordLevelConfidence", "true");
        }
        u
    }

    fn service_url(&self, offering: &str, path: &str, ws: bool) -> Url {
        match self {
            Self::Region(r) => {
                let suffix = match cloud(r) {
                    Cloud::China => "speech.azure.cn",
                    Cloud::UsGov => "speech.azure.us",
                    Cloud::Public => "speech.microsoft.com",
                };
                let scheme = if ws { "wss" } else { "https" };
                regional(r, &format!("{offering}.{suffix}"), scheme, path)
            }
            // Custom domains put the offering in front of the regional path
            // (docs/protocol.md#endpoints).
            // The regional TTS websocket path under the tts offering is the current SDK's.
            Self::CustomDomain(b) => join(b, &format!("/{offering}{path}"), ws),
            Self::Host(b) => join(b, path, ws),
        }
    }

    /// Whether this endpoint is on plain http/ws (local containers only).
    pub fn is_plaintext(&self) -> bool {
        matches!(self, Self::Host(u) if u.scheme() == "http")
    }
}

enum Cloud {
    Public,
    China,
    UsGov,
}

/// The SDK's `getHostSuffix` rule.
fn cloud(region: &str) -> Cloud {
    if region.starts_with("china") {
        Cloud::China
    } else if region.starts_with("usgov") {
        Cloud::UsGov
    } else {
        Cloud::Public
    }
}

fn regional(region: &str, suffix: &str, scheme: &str, path: &str) -> Url {
    let s = format!("{scheme}://{region}.{suffix}{path}");
    // The region was validated as [a-z0-9]+, so this always parses; the fallback keeps
    // the function total without a panic path.
    Url::parse(&s).unwrap_or_else(|_| fallback_url())
}

fn fallback_url() -> Url {
    // Parsing a literal, valid URL cannot fail.
    #[allow(clippy::expect_used)]
    Url::parse("https://invalid.invalid/").expect("literal URL")
}

fn join(base: &Url, path: &str, ws: bool) -> Url {
    let mut u = base.clone();
    let prefix = base.path().trim_end_matches('/');
    u.set_path(&format!("{prefix}{path}"));
    u.set_query(None);
    if ws {
        let scheme = if base.scheme() == "http" { "ws" } else { "wss" };
        // Switching between special schemes of the same kind always succeeds.
        let _ = u.set_scheme(scheme);
    }
    u
}

fn parse_base(url: &str, allow_plain: bool) -> Result<Url, ConfigError> {
    let bad = |reason: &str| ConfigError::Endpoint {
        url: url
            .split('?')
            .next()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect(),
        reason: reason.to_owned(),
    };
    let mut u = Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
    match u.scheme() {
        "https" => {}
        "http" if allow_plain => {}
        "wss" => {
            let _ = u.set_scheme("https");
        }
        "ws" if allow_plain => {
            let _ = u.set_scheme("http");
        }
        _ => return Err(bad("expected an https:// URL")),
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            "credentials in the URL are not supported; use a key or token",
        ));
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(bad("a query or fragment is not allowed here"));
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regional_hosts_and_suffixes() {
        let e = Endpoint::region("WestEurope").expect("region");
        assert_eq!(
            e.token_url().as_str(),
            "https://westeurope.api.cognitive.microsoft.com/sts/v1.0/issueToken"
        );
        assert_eq!(
            e.tts_rest_url().as_str(),
            "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1"
        );
        assert_eq!(
            e.tts_ws_url().as_str(),
            "wss://westeurope.tts.speech.microsoft.com/cognitiveservices/websocket/v1"
        );
        assert_eq!(
            e.tts_stream_ws_url().as_str(),
            "wss://westeurope.tts.speech.microsoft.com/cognitiveservices/websocket/v2"
        );
        assert_eq!(
            e.stt_ws_url(
                RecognitionMode::Conversation,
                "en-US",
                RecognitionFormat::Detailed
            )
            .as_str(),
            "wss://westeurope.stt.speech.microsoft.com/speech/recognition/conversation/cognitiveservices/v1?language=en-US&format=detailed&wordLevelTimestamps=true&wordLevelConfidence=true"
        );
        let c = Endpoint::region("chinaeast2").expect("region");
        assert_eq!(
            c.tts_ws_url().host_str(),
            Some("chinaeast2.tts.speech.azure.cn")
        );
        assert_eq!(
            c.token_url().host_str(),
            Some("chinaeast2.api.cognitive.azure.cn")
        );
        let g = Endpoint::region("usgovarizona").expect("region");
        assert_eq!(
            g.stt_ws_url(
                RecognitionMode::Interactive,
                "en-US",
                RecognitionFormat::Simple
            )
            .host_str(),
            Some("usgovarizona.stt.speech.azure.us")
        );
        assert_eq!(
            g.token_url().host_str(),
            Some("usgovarizona.api.cognitive.microsoft.us")
        );
        for bad in ["", "west europe", "a.b", "x/y", "é"] {
            assert!(Endpoint::region(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn custom_domain_rewrites_paths() {
        let e = Endpoint::parse("https://my-res.cognitiveservices.azure.com/").expect("parse");
        assert!(matches!(e, Endpoint::CustomDomain(_)));
        assert_eq!(
            e.tts_rest_url().as_str(),
            "https://my-res.cognitiveservices.azure.com/tts/cognitiveservices/v1"
        );
        assert_eq!(
            e.voices_url().as_str(),
            "https://my-res.cognitiveservices.azure.com/tts/cognitiveservices/voices/list"
        );
        assert_eq!(
            e.tts_ws_url().as_str(),
            "wss://my-res.cognitiveservices.azure.com/tts/cognitiveservices/websocket/v1"
        );
        assert_eq!(
            e.tts_stream_ws_url().as_str(),
            "wss://my-res.cognitiveservices.azure.com/tts/cognitiveservices/websocket/v2"
        );
        assert_eq!(
            e.stt_ws_url(
                RecognitionMode::Conversation,
                "en-US",
                RecognitionFormat::Simple
            )
            .as_str(),
            "wss://my-res.cognitiveservices.azure.com/stt/speech/recognition/conversation/cognitiveservices/v1?language=en-US&format=simple"
        );
        assert_eq!(
            e.token_url().as_str(),
            "https://my-res.cognitiveservices.azure.com/sts/v1.0/issueToken"
        );
    }

    #[test]
    fn explicit_host_keeps_port_and_prefix() {
        let e = Endpoint::parse("https://127.0.0.1:8443").expect("parse");
        assert_eq!(
            e.tts_ws_url().as_str(),
            "wss://127.0.0.1:8443/cognitiveservices/websocket/v1"
        );
        let p = Endpoint::host("http://localhost:5000/speech/").expect("host");
        assert!(p.is_plaintext());
        assert_eq!(
            p.tts_ws_url().as_str(),
            "ws://localhost:5000/speech/cognitiveservices/websocket/v1"
        );
        assert_eq!(
            Endpoint::parse("https://eastus.api.cognitive.microsoft.com/sts/v1.0/issuetoken")
                .expect("parse"),
            Endpoint::Region("eastus".into())
        );
    }

    #[test]
    fn bad_endpoints_are_explained() {
        for (url, why) in [
            ("not a url", "relative URL"),
            ("ftp://x", "https"),
            ("http://x.cognitiveservices.azure.com", "https"),
            ("https://u:p@host", "credentials"),
            ("https://host/?key=abc", "query"),
        ] {
            let err = if url.starts_with("http://x.cog") {
                Endpoint::custom_domain(url).unwrap_err()
            } else {
                Endpoint::parse(url).unwrap_err()
            };
            assert!(err.to_string().contains(why), "{url}: {err}");
            assert!(!err.to_string().contains("key=abc"));
        }
    }
}
