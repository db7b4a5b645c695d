//! Configuration: every setting is an environment variable (the seed's names stay valid)
//! and a command-line flag; `speech-pool --help` documents them all.
//!
//! Values are parsed by the functions in this module rather than by clap's defaults so that
//! a malformed value stops start-up with a message naming the variable, the value and what
//! was expected, e.g.
//! `invalid value 'three' for '--warm-pool-tts-size <N>': WARM_POOL_TTS_SIZE expects a whole
//! number such as 3, got "three"`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use speech_core::{AudioFormat, RecognitionFormat, RecognitionMode, RecognitionRequest};

use crate::secret::Secret;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable, coloured when the output is a terminal.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Which speech backend serves the pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Azure when `AZURE_SPEECH_KEY` and a region or endpoint are set, else the mock.
    Auto,
    /// Real Azure Speech (needs the `azure` feature and credentials).
    Azure,
    /// The in-process mock (needs the `mock` feature).
    Mock,
}

/// How the Azure backend authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureAuth {
    /// The key on every request (`Ocp-Apim-Subscription-Key`).
    Key,
    /// The key exchanged for 10-minute STS tokens; only the token endpoint sees the key.
    Token,
}

/// How the Azure backend synthesizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsTransport {
    /// One websocket per pooled connection, many turns each (lowest latency).
    Websocket,
    /// HTTPS REST requests over a kept-alive connection.
    Rest,
}

/// Latency profile of the mock backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockProfile {
    /// Latencies shaped like a real Azure connection (400 ms connect), so the difference
    /// between WARM and COLD is visible on the dashboard.
    Realistic,
    /// No latency at all.
    Instant,
}

/// Every setting of the service.
///
/// `Debug` is safe to log: the two secrets are [`Secret`]s, printed as `<redacted>`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "speech-pool",
    version,
    // So that `--pool-max-age -1` reaches our parser and gets its explanation.
    allow_negative_numbers = true,
    about = "HTTP service that keeps Azure Speech connections pre-warmed in pools",
    long_about = "HTTP service that keeps Azure Speech TTS and STT connections pre-connected \
        and pre-warmed in pools, serves /api/v1/tts and /api/v1/stt from them, and reports \
        pool health on /api/v1/pools, /metrics and a dashboard at /.\n\n\
        Every option can also be set through the environment variable shown with it. \
        Durations are in seconds and may have a fraction (30.0, 0.5)."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long = "listen",
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR",
        value_parser = socket_addr("LISTEN_ADDR")
    )]
    pub listen: SocketAddr,

    /// Log line format: pretty or json.
    #[arg(
        long,
        env = "LOG_FORMAT",
        default_value = "pretty",
        value_name = "FORMAT",
        value_parser = log_format("LOG_FORMAT")
    )]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. info or service=debug,info.
    #[arg(
        long,
        env = "LOG_LEVEL",
        default_value = "info",
        value_name = "FILTER",
        value_parser = log_filter("LOG_LEVEL")
    )]
    pub log_level: String,

    /// Speech backend: auto (Azure when credentials are set, else mock), azure or mock.
    #[arg(
        long = "backend",
        env = "SPEECH_BACKEND",
        default_value = "auto",
        value_name = "BACKEND",
        value_parser = backend_choice("SPEECH_BACKEND")
    )]
    pub backend: BackendChoice,

    /// Keep pre-warmed connections (false: every plain request connects cold, like the
    /// seed's OnDemandResourcePool).
    #[arg(
        long,
        env = "WARM_POOL_ENABLED",
        default_value = "true",
        value_name = "BOOL",
        value_parser = boolean("WARM_POOL_ENABLED"),
        action = clap::ArgAction::Set
    )]
    pub warm_pool_enabled: bool,

    /// Pre-warmed TTS connections to keep idle.
    #[arg(
        long,
        env = "WARM_POOL_TTS_SIZE",
        default_value = "3",
        value_name = "N",
        value_parser = count("WARM_POOL_TTS_SIZE")
    )]
    pub warm_pool_tts_size: usize,

    /// Pre-warmed STT connections to keep idle.
    #[arg(
        long,
        env = "WARM_POOL_STT_SIZE",
        default_value = "2",
        value_name = "N",
        value_parser = count("WARM_POOL_STT_SIZE")
    )]
    pub warm_pool_stt_size: usize,

    /// Run the background maintainer: refill the warm set, replace connections before the
    /// server closes them, evict idle sessions.
    #[arg(
        long,
        env = "WARM_POOL_BACKGROUND_REFRESH",
        default_value = "true",
        value_name = "BOOL",
        value_parser = boolean("WARM_POOL_BACKGROUND_REFRESH"),
        action = clap::ArgAction::Set
    )]
    pub warm_pool_background_refresh: bool,

    /// Seconds between the maintainer's housekeeping passes.
    #[arg(
        long,
        env = "WARM_POOL_REFRESH_INTERVAL",
        default_value = "30.0",
        value_name = "SECONDS",
        value_parser = positive_seconds("WARM_POOL_REFRESH_INTERVAL")
    )]
    pub warm_pool_refresh_interval: Duration,

    /// Seconds a session may stay unused before its dedicated connections are released.
    #[arg(
        long,
        env = "WARM_POOL_SESSION_MAX_AGE",
        default_value = "1800.0",
        value_name = "SECONDS",
        value_parser = positive_seconds("WARM_POOL_SESSION_MAX_AGE")
    )]
    pub warm_pool_session_max_age: Duration,

    /// Most TTS connections open at once (idle + in use + dedicated + connecting).
    #[arg(
        long,
        env = "POOL_TTS_MAX_SIZE",
        default_value = "32",
        value_name = "N",
        value_parser = count("POOL_TTS_MAX_SIZE")
    )]
    pub pool_tts_max_size: usize,

    /// Most STT connections open at once.
    #[arg(
        long,
        env = "POOL_STT_MAX_SIZE",
        default_value = "32",
        value_name = "N",
        value_parser = count("POOL_STT_MAX_SIZE")
    )]
    pub pool_stt_max_size: usize,

    /// Seconds a request waits for a connection when a pool is at its maximum size
    /// before it is answered 429 with Retry-After.
    #[arg(
        long,
        env = "POOL_ACQUIRE_TIMEOUT",
        default_value = "5.0",
        value_name = "SECONDS",
        value_parser = positive_seconds("POOL_ACQUIRE_TIMEOUT")
    )]
    pub pool_acquire_timeout: Duration,

    /// Seconds allowed for one connect + warm-up before it counts as failed.
    #[arg(
        long,
        env = "POOL_CREATE_TIMEOUT",
        default_value = "10.0",
        value_name = "SECONDS",
        value_parser = positive_seconds("POOL_CREATE_TIMEOUT")
    )]
    pub pool_create_timeout: Duration,

    /// Replace a connection once it is this old (Azure closes at 600 s); 0 disables.
    #[arg(
        long,
        env = "POOL_MAX_AGE",
        default_value = "540.0",
        value_name = "SECONDS",
        value_parser = seconds("POOL_MAX_AGE")
    )]
    pub pool_max_age: Duration,

    /// Replace a connection idle for this long (Azure closes at 180 s); 0 disables.
    #[arg(
        long,
        env = "POOL_MAX_IDLE",
        default_value = "150.0",
        value_name = "SECONDS",
        value_parser = seconds("POOL_MAX_IDLE")
    )]
    pub pool_max_idle: Duration,

    /// Voice for text requests that name none.
    #[arg(
        long,
        env = "TTS_DEFAULT_VOICE",
        default_value = "en-US-AvaMultilingualNeural",
        value_name = "VOICE",
        value_parser = voice("TTS_DEFAULT_VOICE")
    )]
    pub tts_default_voice: String,

    /// Audio format for requests that name none (an Azure output format name).
    #[arg(
        long,
        env = "TTS_DEFAULT_FORMAT",
        default_value = "riff-24khz-16bit-mono-pcm",
        value_name = "FORMAT",
        value_parser = audio_format("TTS_DEFAULT_FORMAT")
    )]
    pub tts_default_format: AudioFormat,

    /// Language of the STT pool's connections (Azure fixes it per connection).
    #[arg(
        long,
        env = "STT_LANGUAGE",
        default_value = "en-US",
        value_name = "LANG",
        value_parser = language("STT_LANGUAGE")
    )]
    pub stt_language: String,

    /// Recognition mode of the STT pool's connections: conversation, interactive or
    /// dictation (Azure fixes it per connection).
    #[arg(
        long,
        env = "STT_MODE",
        default_value = "conversation",
        value_name = "MODE",
        value_parser = stt_mode("STT_MODE")
    )]
    pub stt_mode: RecognitionMode,

    /// Phrase detail of the STT pool's connections: simple or detailed.
    #[arg(
        long,
        env = "STT_FORMAT",
        default_value = "simple",
        value_name = "FORMAT",
        value_parser = stt_format("STT_FORMAT")
    )]
    pub stt_format: RecognitionFormat,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(
        long,
        env = "MAX_BODY_BYTES",
        default_value = "262144",
        value_name = "BYTES",
        value_parser = count("MAX_BODY_BYTES")
    )]
    pub max_body_bytes: usize,

    /// Seconds to let in-flight requests finish after SIGTERM / ctrl-c.
    #[arg(
        long,
        env = "SHUTDOWN_GRACE",
        default_value = "10.0",
        value_name = "SECONDS",
        value_parser = seconds("SHUTDOWN_GRACE")
    )]
    pub shutdown_grace: Duration,

    /// When set, every endpoint except /livez and /readyz requires
    /// `Authorization: Bearer <key>`.
    #[arg(
        long,
        env = "SERVICE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub service_api_key: Option<Secret>,

    /// Azure Speech resource key. With a region or an endpoint, selects the Azure backend.
    #[arg(
        long,
        env = "AZURE_SPEECH_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub azure_speech_key: Option<Secret>,

    /// Azure region of the Speech resource, e.g. eastus.
    #[arg(
        long,
        env = "AZURE_SPEECH_REGION",
        value_name = "REGION",
        value_parser = region("AZURE_SPEECH_REGION")
    )]
    pub azure_speech_region: Option<String>,

    /// Base URL of the Speech endpoint (overrides the region's), e.g. a custom domain or
    /// the local emulator's https://127.0.0.1:PORT.
    #[arg(long, env = "AZURE_SPEECH_ENDPOINT", value_name = "URL")]
    pub azure_speech_endpoint: Option<String>,

    /// How the Azure backend authenticates: key (the key on every request) or token (the
    /// key exchanged for short-lived STS tokens).
    #[arg(
        long,
        env = "AZURE_SPEECH_AUTH",
        default_value = "key",
        value_name = "MODE",
        value_parser = azure_auth("AZURE_SPEECH_AUTH")
    )]
    pub azure_speech_auth: AzureAuth,

    /// How the Azure backend synthesizes: websocket or rest.
    #[arg(
        long,
        env = "AZURE_TTS_TRANSPORT",
        default_value = "websocket",
        value_name = "TRANSPORT",
        value_parser = tts_transport("AZURE_TTS_TRANSPORT")
    )]
    pub azure_tts_transport: TtsTransport,

    /// Extra CA certificate (PEM file) to trust for the Speech endpoint, e.g. the local
    /// emulator's generated CA.
    #[arg(long, env = "AZURE_SPEECH_CA_CERT", value_name = "PATH")]
    pub azure_speech_ca_cert: Option<std::path::PathBuf>,

    /// Latency profile of the mock backend: realistic (400 ms connects, so WARM versus
    /// COLD shows) or instant.
    #[arg(
        long,
        env = "MOCK_PROFILE",
        default_value = "realistic",
        value_name = "PROFILE",
        value_parser = mock_profile("MOCK_PROFILE")
    )]
    pub mock_profile: MockProfile,

    /// Limits that keep one client from starving the others (timeouts, caps, origins).
    #[command(flatten)]
    pub limits: crate::limits::Limits,
}

/// A configuration that parsed but is inconsistent (for example a warm target above the
/// pool's maximum size). The message names the variables involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Parses the command line and the environment. On a malformed value, prints clap's
    /// message (variable, value, expectation) and exits with status 2.
    pub fn load() -> Self {
        Self::parse()
    }

    /// The defaults, as if no flag and no variable were set. For tests and embedding;
    /// the environment is not read.
    pub fn defaults() -> Self {
        // Parsing an empty command line cannot fail: every field has a default or is
        // optional. `try_parse_from` would still read the environment, so the default
        // values are spelled through the same parsers by building the command without env.
        let cmd = <Self as clap::CommandFactory>::command();
        let cmd = cmd.mut_args(|a| a.env(None::<&str>));
        let matches = cmd
            .try_get_matches_from(["speech-pool"])
            .unwrap_or_else(|e| panic!("defaults must parse: {e}"));
        <Self as clap::FromArgMatches>::from_arg_matches(&matches)
            .unwrap_or_else(|e| panic!("defaults must convert: {e}"))
    }

    /// Checks relations between settings that each parsed on their own.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (max, max_var) in [
            (self.pool_tts_max_size, "POOL_TTS_MAX_SIZE"),
            (self.pool_stt_max_size, "POOL_STT_MAX_SIZE"),
        ] {
            if max == 0 {
                return Err(ConfigError(format!(
                    "{max_var} is 0; expected at least 1 connection"
                )));
            }
        }
        for (size, var, max, max_var) in [
            (
                self.warm_pool_tts_size,
                "WARM_POOL_TTS_SIZE",
                self.pool_tts_max_size,
                "POOL_TTS_MAX_SIZE",
            ),
            (
                self.warm_pool_stt_size,
                "WARM_POOL_STT_SIZE",
                self.pool_stt_max_size,
                "POOL_STT_MAX_SIZE",
            ),
        ] {
            if self.warm_pool_enabled && size > max {
                return Err(ConfigError(format!(
                    "{var} is {size} but {max_var} is {max}; expected {var} <= {max_var}"
                )));
            }
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError(
                "MAX_BODY_BYTES is 0; expected a positive number of bytes".into(),
            ));
        }
        Ok(())
    }
}

// Value parsers. Each returns a closure so the variable's name is in the message; clap
// adds the value and the flag.

fn expected(var: &str, what: &str, got: &str) -> String {
    format!("{var} expects {what}, got {got:?}")
}

fn count(var: &'static str) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync {
    move |s| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| expected(var, "a whole number such as 3", s))
    }
}

fn boolean(var: &'static str) -> impl Fn(&str) -> Result<bool, String> + Clone + Send + Sync {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(expected(var, "true or false", s)),
    }
}

fn parse_seconds(var: &str, s: &str, allow_zero: bool) -> Result<Duration, String> {
    let what = if allow_zero {
        "a number of seconds >= 0 such as 30.0"
    } else {
        "a number of seconds > 0 such as 30.0"
    };
    let v: f64 = s.trim().parse().map_err(|_| expected(var, what, s))?;
    // Also bounded above: Duration::from_secs_f64 panics on huge values, and a timeout of
    // more than 100 years is a typo.
    if !v.is_finite() || v < 0.0 || (v == 0.0 && !allow_zero) || v > 3.2e9 {
        return Err(expected(var, what, s));
    }
    Ok(Duration::from_secs_f64(v))
}

fn seconds(var: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |s| parse_seconds(var, s, true)
}

fn positive_seconds(
    var: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |s| parse_seconds(var, s, false)
}

fn socket_addr(
    var: &'static str,
) -> impl Fn(&str) -> Result<SocketAddr, String> + Clone + Send + Sync {
    move |s| {
        s.trim()
            .parse()
            .map_err(|_| expected(var, "IP:PORT such as 127.0.0.1:8080 or 0.0.0.0:8080", s))
    }
}

fn log_format(
    var: &'static str,
) -> impl Fn(&str) -> Result<LogFormat, String> + Clone + Send + Sync {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "pretty" | "text" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        _ => Err(expected(var, "pretty or json", s)),
    }
}

fn log_filter(var: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync {
    move |s| {
        tracing_subscriber::EnvFilter::try_new(s)
            .map(|_| s.to_owned())
            .map_err(|e| expected(var, &format!("a log filter such as info ({e})"), s))
    }
}

fn backend_choice(
    var: &'static str,
) -> impl Fn(&str) -> Result<BackendChoice, String> + Clone + Send + Sync {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "auto" | "" => Ok(BackendChoice::Auto),
        "azure" => Ok(BackendChoice::Azure),
        "mock" => Ok(BackendChoice::Mock),
        _ => Err(expected(var, "auto, azure or mock", s)),
    }
}

fn mock_profile(
    var: &'static str,
) -> impl Fn(&str) -> Result<MockProfile, String> + Clone + Send + Sync {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "realistic" => Ok(MockProfile::Realistic),
        "instant" => Ok(MockProfile::Instant),
        _ => Err(expected(var, "realistic or instant", s)),
    }
}

fn azure_auth(
    var: &'static str,
) -> impl Fn(&str) -> Result<AzureAuth, String> + Clone + Send + Sync {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "key" => Ok(AzureAuth::Key),
        "token" | "sts" => Ok(AzureAuth::Token),
        _ => Err(expected(var, "key or token", s)),
    }
}

fn tts_transport(
    var: &'static str,
) -> impl Fn(&str) -> Result<TtsTransport, String> + Clone + Send + Sync {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "websocket" | "ws" => Ok(TtsTransport::Websocket),
        "rest" | "http" => Ok(TtsTransport::Rest),
        _ => Err(expected(var, "websocket or rest", s)),
    }
}

fn stt_mode(
    var: &'static str,
) -> impl Fn(&str) -> Result<RecognitionMode, String> + Clone + Send + Sync {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "conversation" => Ok(RecognitionMode::Conversation),
        "interactive" => Ok(RecognitionMode::Interactive),
        "dictation" => Ok(RecognitionMode::Dictation),
        _ => Err(expected(var, "conversation, interactive or dictation", s)),
    }
}

fn stt_format(
    var: &'static str,
) -> impl Fn(&str) -> Result<RecognitionFormat, String> + Clone + Send + Sync {
    move |s| match s.trim().to_ascii_lowercase().as_str() {
        "simple" => Ok(RecognitionFormat::Simple),
        "detailed" => Ok(RecognitionFormat::Detailed),
        _ => Err(expected(var, "simple or detailed", s)),
    }
}

fn audio_format(
    var: &'static str,
) -> impl Fn(&str) -> Result<AudioFormat, String> + Clone + Send + Sync {
    move |s| {
        s.parse().map_err(|_| {
            expected(
                var,
                "an Azure output format such as riff-24khz-16bit-mono-pcm or \
                 audio-24khz-48kbitrate-mono-mp3",
                s,
            )
        })
    }
}

fn voice(var: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync {
    move |s| {
        speech_core::validate_voice_name(s)
            .map(|()| s.to_owned())
            .map_err(|_| {
                expected(
                    var,
                    "a voice short name such as en-US-AvaMultilingualNeural",
                    s,
                )
            })
    }
}

fn language(var: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync {
    move |s| {
        RecognitionRequest::new(s)
            .validate()
            .map(|()| s.to_owned())
            .map_err(|_| expected(var, "a BCP 47 language tag such as en-US", s))
    }
}

fn region(var: &'static str) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync {
    move |s| {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(s.to_owned())
        } else {
            Err(expected(var, "an Azure region name such as eastus", s))
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let cmd = Config::command().mut_args(|a| a.env(None::<&str>));
        let mut argv = vec!["speech-pool"];
        argv.extend_from_slice(args);
        let m = cmd.try_get_matches_from(argv)?;
        <Config as clap::FromArgMatches>::from_arg_matches(&m)
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = Config::defaults();
        assert!(c.warm_pool_enabled);
        assert_eq!(c.warm_pool_tts_size, 3);
        assert_eq!(c.warm_pool_stt_size, 2);
        assert!(c.warm_pool_background_refresh);
        assert_eq!(c.warm_pool_refresh_interval, Duration::from_secs(30));
        assert_eq!(c.warm_pool_session_max_age, Duration::from_secs(1800));
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.log_format, LogFormat::Pretty);
        assert_eq!(c.backend, BackendChoice::Auto);
        assert!(c.service_api_key.is_none());
        assert!(c.validate().is_ok());
    }

    #[test]
    fn flags_override() {
        let c = parse(&[
            "--warm-pool-tts-size",
            "5",
            "--warm-pool-enabled",
            "off",
            "--listen",
            "0.0.0.0:9000",
            "--log-format",
            "json",
            "--warm-pool-refresh-interval",
            "0.5",
            "--backend",
            "mock",
        ])
        .unwrap();
        assert_eq!(c.warm_pool_tts_size, 5);
        assert!(!c.warm_pool_enabled);
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.warm_pool_refresh_interval, Duration::from_millis(500));
        assert_eq!(c.backend, BackendChoice::Mock);
    }

    #[test]
    fn malformed_values_name_variable_value_and_expectation() {
        let cases = [
            (
                vec!["--warm-pool-tts-size", "three"],
                "WARM_POOL_TTS_SIZE",
                "three",
                "whole number",
            ),
            (
                vec!["--warm-pool-enabled", "maybe"],
                "WARM_POOL_ENABLED",
                "maybe",
                "true or false",
            ),
            (
                vec!["--warm-pool-refresh-interval", "-1"],
                "WARM_POOL_REFRESH_INTERVAL",
                "-1",
                "seconds",
            ),
            (
                vec!["--warm-pool-session-max-age", "soon"],
                "WARM_POOL_SESSION_MAX_AGE",
                "soon",
                "seconds",
            ),
            (
                vec!["--listen", "nowhere"],
                "LISTEN_ADDR",
                "nowhere",
                "IP:PORT",
            ),
            (
                vec!["--log-format", "xml"],
                "LOG_FORMAT",
                "xml",
                "pretty or json",
            ),
            (
                vec!["--backend", "gcp"],
                "SPEECH_BACKEND",
                "gcp",
                "auto, azure or mock",
            ),
            (
                vec!["--tts-default-format", "wav"],
                "TTS_DEFAULT_FORMAT",
                "wav",
                "output format",
            ),
            (
                vec!["--warm-pool-refresh-interval", "NaN"],
                "WARM_POOL_REFRESH_INTERVAL",
                "NaN",
                "seconds",
            ),
            (
                vec!["--warm-pool-refresh-interval", "0"],
                "WARM_POOL_REFRESH_INTERVAL",
                "0",
                "> 0",
            ),
        ];
        for (args, var, value, what) in cases {
            let err = parse(&args).expect_err(var).to_string();
            assert!(err.contains(var), "{err}");
            assert!(err.contains(value), "{err}");
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn cross_field_validation_names_both_variables() {
        let c = parse(&["--warm-pool-tts-size", "40", "--pool-tts-max-size", "8"]).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("WARM_POOL_TTS_SIZE") && e.contains("POOL_TTS_MAX_SIZE"),
            "{e}"
        );
        // Disabled warm pools do not care about the warm size.
        let c = parse(&[
            "--warm-pool-tts-size",
            "40",
            "--pool-tts-max-size",
            "8",
            "--warm-pool-enabled",
            "false",
        ])
        .unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let c = parse(&[
            "--service-api-key",
            "s3cret-key",
            "--azure-speech-key",
            "az-key-1",
        ])
        .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("s3cret-key") && !printed.contains("az-key-1"));
    }

    #[test]
    fn help_documents_every_variable() {
        let help = Config::command().render_long_help().to_string();
        for var in [
            "LISTEN_ADDR",
            "LOG_FORMAT",
            "SPEECH_BACKEND",
            "WARM_POOL_ENABLED",
            "WARM_POOL_TTS_SIZE",
            "WARM_POOL_STT_SIZE",
            "WARM_POOL_BACKGROUND_REFRESH",
            "WARM_POOL_REFRESH_INTERVAL",
            "WARM_POOL_SESSION_MAX_AGE",
            "POOL_TTS_MAX_SIZE",
            "POOL_STT_MAX_SIZE",
            "POOL_ACQUIRE_TIMEOUT",
            "SERVICE_API_KEY",
            "AZURE_SPEECH_KEY",
            "AZURE_SPEECH_REGION",
            "AZURE_SPEECH_ENDPOINT",
        ] {
            assert!(help.contains(var), "--help lacks {var}");
        }
    }
}
