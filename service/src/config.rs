//! Configuration: every setting is an environment variable (the names the Python service
//! used stay valid)
//! and a command-line flag; `speech-pool --help` documents them all.
//!
//! Each setting is declared once, as a field with its flag, its variable (`env = ...`), its
//! default and its parser. The parsers (`Expect`) read the variable's name back from the
//! argument, so a malformed value stops start-up with a message naming the variable, the
//! value and what was expected, e.g.
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

/// One of the service's two pools. Chooses the settings that differ per pool, so a pool
/// cannot silently get the other one's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Text-to-speech connections.
    Tts,
    /// Speech-to-text connections.
    Stt,
    /// Text-to-speech connections that take text as it is written (Azure's v2 websocket),
    /// serving `GET /api/v1/tts/stream`.
    TtsStream,
}

impl PoolKind {
    /// Every pool, TTS first (the order of `/api/v1/pools` and the snapshots).
    pub const ALL: [Self; 3] = [Self::Tts, Self::Stt, Self::TtsStream];

    /// The pool's name: its key in `/api/v1/pools` and its metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tts => "speech-tts",
            Self::Stt => "speech-stt",
            Self::TtsStream => "speech-tts-stream",
        }
    }
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
        value_parser = socket_addr()
    )]
    pub listen: SocketAddr,

    /// Log line format: pretty or json.
    #[arg(
        long,
        env = "LOG_FORMAT",
        default_value = "pretty",
        value_name = "FORMAT",
        value_parser = log_format()
    )]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. info or service=debug,info.
    #[arg(
        long,
        env = "LOG_LEVEL",
        default_value = "info",
        value_name = "FILTER",
        value_parser = log_filter()
    )]
    pub log_level: String,

    /// Speech backend: auto (Azure when credentials are set, else mock), azure or mock.
    #[arg(
        long = "backend",
        env = "SPEECH_BACKEND",
        default_value = "auto",
        value_name = "BACKEND",
        value_parser = backend_choice()
    )]
    pub backend: BackendChoice,

    /// Keep pre-warmed connections (false: every request outside a session connects
    /// cold; a session's turns still reuse its connection).
    #[arg(
        long,
        env = "WARM_POOL_ENABLED",
        default_value = "true",
        value_name = "BOOL",
        value_parser = boolean(),
        action = clap::ArgAction::Set
    )]
    pub warm_pool_enabled: bool,

    /// Pre-warmed TTS connections to keep idle.
    #[arg(
        long,
        env = "WARM_POOL_TTS_SIZE",
        default_value = "3",
        value_name = "N",
        value_parser = count()
    )]
    pub warm_pool_tts_size: usize,

    /// Pre-warmed text-streaming TTS connections (Azure's v2 websocket, serving
    /// `GET /api/v1/tts/stream`) to keep idle.
    #[arg(
        long,
        env = "WARM_POOL_TTS_STREAM_SIZE",
        default_value = "1",
        value_name = "N",
        value_parser = count()
    )]
    pub warm_pool_tts_stream_size: usize,

    /// Pre-warmed STT connections to keep idle.
    #[arg(
        long,
        env = "WARM_POOL_STT_SIZE",
        default_value = "2",
        value_name = "N",
        value_parser = count()
    )]
    pub warm_pool_stt_size: usize,

    /// Run the background maintainer: refill the warm set, replace connections before the
    /// server closes them, evict idle sessions.
    #[arg(
        long,
        env = "WARM_POOL_BACKGROUND_REFRESH",
        default_value = "true",
        value_name = "BOOL",
        value_parser = boolean(),
        action = clap::ArgAction::Set
    )]
    pub warm_pool_background_refresh: bool,

    /// Seconds between the maintainer's housekeeping passes.
    #[arg(
        long,
        env = "WARM_POOL_REFRESH_INTERVAL",
        default_value = "30.0",
        value_name = "SECONDS",
        value_parser = positive_seconds()
    )]
    pub warm_pool_refresh_interval: Duration,

    /// Seconds a session may stay unused before its dedicated connections are released.
    #[arg(
        long,
        env = "WARM_POOL_SESSION_MAX_AGE",
        default_value = "1800.0",
        value_name = "SECONDS",
        value_parser = positive_seconds()
    )]
    pub warm_pool_session_max_age: Duration,

    /// Let each pool's idle target follow demand: the configured sizes are the floor,
    /// and the pool keeps enough idle connections for the requests expected during one
    /// connect (fast up, slow down, never above the pool's maximum).
    #[arg(
        long,
        env = "WARM_POOL_ADAPTIVE",
        default_value = "true",
        value_name = "BOOL",
        value_parser = boolean(),
        action = clap::ArgAction::Set
    )]
    pub warm_pool_adaptive: bool,

    /// Most background connects per second per pool (0: no limit). Azure throttles bursts
    /// of new connections, so a ramp of the adaptive target is spread out.
    #[arg(
        long,
        env = "POOL_CREATE_RATE_LIMIT",
        default_value = "20",
        value_name = "N",
        value_parser = count()
    )]
    pub pool_create_rate_limit: usize,

    /// Most background connects in flight at once per pool. Refills can sustain at most
    /// this many divided by the connect time per second: at 16 and a 0.4 s connect that is
    /// 40 a second, so `POOL_CREATE_RATE_LIMIT` (20) is what bounds a surge, not this. At 4
    /// (pool-core's default) a surge of 20 new calls a second outran the refills and its
    /// first seconds were served COLD whatever the warm target said.
    #[arg(
        long,
        env = "POOL_CREATE_CONCURRENCY",
        default_value = "16",
        value_name = "N",
        value_parser = count()
    )]
    pub pool_create_concurrency: usize,

    /// Most TTS connections open at once (idle + in use + dedicated + connecting +
    /// closing). Azure's default real-time TTS quota for a Standard (S0) resource is 200
    /// requests per second and it sets no connection limit; 200 connections each starting
    /// at most one synthesis a second stay within it.
    #[arg(
        long,
        env = "POOL_TTS_MAX_SIZE",
        default_value = "200",
        value_name = "N",
        value_parser = count()
    )]
    pub pool_tts_max_size: usize,

    /// Most text-streaming TTS connections open at once (same accounting and quota
    /// reasoning as `POOL_TTS_MAX_SIZE`).
    #[arg(
        long,
        env = "POOL_TTS_STREAM_MAX_SIZE",
        default_value = "200",
        value_name = "N",
        value_parser = count()
    )]
    pub pool_tts_stream_max_size: usize,

    /// Most STT connections open at once. Azure's default for a Standard (S0) resource
    /// is 100 concurrent real-time recognitions; one more connection is refused with 429.
    #[arg(
        long,
        env = "POOL_STT_MAX_SIZE",
        default_value = "100",
        value_name = "N",
        value_parser = count()
    )]
    pub pool_stt_max_size: usize,

    /// Seconds a request waits for a connection when a pool is at its maximum size
    /// before it is answered 429 with Retry-After.
    #[arg(
        long,
        env = "POOL_ACQUIRE_TIMEOUT",
        default_value = "5.0",
        value_name = "SECONDS",
        value_parser = positive_seconds()
    )]
    pub pool_acquire_timeout: Duration,

    /// Seconds allowed for one connect + warm-up before it counts as failed.
    #[arg(
        long,
        env = "POOL_CREATE_TIMEOUT",
        default_value = "10.0",
        value_name = "SECONDS",
        value_parser = positive_seconds()
    )]
    pub pool_create_timeout: Duration,

    /// Replace a connection once it is this old (Azure closes at 600 s); 0 disables.
    #[arg(
        long,
        env = "POOL_MAX_AGE",
        default_value = "540.0",
        value_name = "SECONDS",
        value_parser = seconds()
    )]
    pub pool_max_age: Duration,

    /// Replace a connection idle for this long (Azure closes at 180 s); 0 disables.
    #[arg(
        long,
        env = "POOL_MAX_IDLE",
        default_value = "150.0",
        value_name = "SECONDS",
        value_parser = seconds()
    )]
    pub pool_max_idle: Duration,

    /// Voice for text requests that name none.
    #[arg(
        long,
        env = "TTS_DEFAULT_VOICE",
        default_value = "en-US-AvaMultilingualNeural",
        value_name = "VOICE",
        value_parser = voice()
    )]
    pub tts_default_voice: String,

    /// Audio format for requests that name none (an Azure output format name).
    #[arg(
        long,
        env = "TTS_DEFAULT_FORMAT",
        default_value = "riff-24khz-16bit-mono-pcm",
        value_name = "FORMAT",
        value_parser = audio_format()
    )]
    pub tts_default_format: AudioFormat,

    /// Language of the STT pool's connections (Azure fixes it per connection).
    #[arg(
        long,
        env = "STT_LANGUAGE",
        default_value = "en-US",
        value_name = "LANG",
        value_parser = language()
    )]
    pub stt_language: String,

    /// Recognition mode of the STT pool's connections: conversation, interactive or
    /// dictation (Azure fixes it per connection).
    #[arg(
        long,
        env = "STT_MODE",
        default_value = "conversation",
        value_name = "MODE",
        value_parser = stt_mode()
    )]
    pub stt_mode: RecognitionMode,

    /// Phrase detail of the STT pool's connections: simple or detailed.
    #[arg(
        long,
        env = "STT_FORMAT",
        default_value = "simple",
        value_name = "FORMAT",
        value_parser = stt_format()
    )]
    pub stt_format: RecognitionFormat,

    /// Extra recognition languages, comma-separated BCP 47 tags (e.g. en-US,de-DE,fr-FR),
    /// for the official Speech SDKs: each gets an STT pool of its own with STT_MODE and
    /// STT_FORMAT, created and pre-warmed (WARM_POOL_STT_SIZE connections) at start-up, so an
    /// SDK recognizer in that language is served warm from its first call. Other languages
    /// still get a pool on first use. STT_LANGUAGE is always served by the main STT pool.
    #[arg(
        long,
        env = "STT_LANGUAGES",
        default_value = "",
        value_name = "LANGS",
        value_parser = languages()
    )]
    pub stt_languages: LanguageList,

    /// Most STT pools made on demand, for SDK recognizers whose language, mode or format is
    /// neither the STT pool's nor in STT_LANGUAGES (each keeps one connection warm). When a
    /// new combination needs room, the least recently used pool that has had no caller for a
    /// minute is closed to make it; past that, the new combination is refused. 0 serves
    /// only the configured combinations.
    #[arg(
        long,
        env = "STT_ON_DEMAND_POOLS",
        default_value = "8",
        value_name = "N",
        value_parser = count()
    )]
    pub stt_on_demand_pools: usize,

    /// Largest request body accepted, in bytes; larger ones get 413.
    #[arg(
        long,
        env = "MAX_BODY_BYTES",
        default_value = "262144",
        value_name = "BYTES",
        value_parser = count()
    )]
    pub max_body_bytes: usize,

    /// Seconds to let in-flight requests finish after SIGTERM / ctrl-c.
    #[arg(
        long,
        env = "SHUTDOWN_GRACE",
        default_value = "10.0",
        value_name = "SECONDS",
        value_parser = seconds()
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
        value_parser = region()
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
        value_parser = azure_auth()
    )]
    pub azure_speech_auth: AzureAuth,

    /// How the Azure backend synthesizes: websocket or rest.
    #[arg(
        long,
        env = "AZURE_TTS_TRANSPORT",
        default_value = "websocket",
        value_name = "TRANSPORT",
        value_parser = tts_transport()
    )]
    pub azure_tts_transport: TtsTransport,

    /// Extra CA certificate (PEM file) to trust for the Speech endpoint, e.g. the local
    /// emulator's generated CA.
    #[arg(long, env = "AZURE_SPEECH_CA_CERT", value_name = "PATH")]
    pub azure_speech_ca_cert: Option<std::path::PathBuf>,

    /// Seconds a dead Azure websocket (its peer vanished without FIN or RST) may go
    /// unnoticed, idle in a pool or mid-turn: after half of it without data the connection
    /// is pinged, and declared dead if nothing answers by three quarters of it. An idle dead
    /// connection is replaced in the background and never handed out; a turn on one fails
    /// as a transient error (a TTS turn without audio yet is retried on a fresh connection).
    /// Raise it if the Speech region is far (a healthy pong must come back within a
    /// quarter of it).
    #[arg(
        long,
        env = "AZURE_SPEECH_LIVENESS_GAP",
        default_value = "1.2",
        value_name = "SECONDS",
        value_parser = positive_seconds()
    )]
    pub azure_speech_liveness_gap: Duration,

    /// Latency profile of the mock backend: realistic (400 ms connects, so WARM versus
    /// COLD shows) or instant.
    #[arg(
        long,
        env = "MOCK_PROFILE",
        default_value = "realistic",
        value_name = "PROFILE",
        value_parser = mock_profile()
    )]
    pub mock_profile: MockProfile,

    /// Limits that keep one client from starving the others (timeouts, caps, origins).
    #[command(flatten)]
    pub limits: crate::limits::Limits,

    /// Continuous (call-long) STT streams: when they change connections, what they replay.
    #[command(flatten)]
    pub stt_continuous: crate::continuous::ContinuousSettings,
}

/// A list of BCP 47 language tags (`STT_LANGUAGES`), as written, without duplicates (tags
/// compare case-insensitively, as Azure compares them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LanguageList(pub Vec<String>);

impl LanguageList {
    /// The tags.
    pub fn tags(&self) -> &[String] {
        &self.0
    }
}

/// A BCP 47-shaped tag: a primary subtag of 2 or 3 letters, then subtags of 1 to 8 letters
/// or digits, joined by `-`, at most 35 characters (`en-US`, `zh-Hans-CN`, `es-419`).
/// Stricter than the shape Azure's query accepts, so a typo (`en_US`, `english`) stops
/// start-up instead of failing every connect of its pool.
pub fn is_language_tag(tag: &str) -> bool {
    let mut subtags = tag.split('-');
    let primary_ok = subtags
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphabetic()));
    primary_ok
        && tag.len() <= speech_core::MAX_LANGUAGE_TAG_LEN
        && subtags
            .all(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
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

    /// The warm target of a pool as configured (before `WARM_POOL_ENABLED` applies).
    pub fn warm_size(&self, pool: PoolKind) -> usize {
        match pool {
            PoolKind::Tts => self.warm_pool_tts_size,
            PoolKind::Stt => self.warm_pool_stt_size,
            PoolKind::TtsStream => self.warm_pool_tts_stream_size,
        }
    }

    /// The most connections a pool may hold open.
    pub fn max_size(&self, pool: PoolKind) -> usize {
        match pool {
            PoolKind::Tts => self.pool_tts_max_size,
            PoolKind::Stt => self.pool_stt_max_size,
            PoolKind::TtsStream => self.pool_tts_stream_max_size,
        }
    }

    /// Checks relations between settings that each parsed on their own. Messages name the
    /// variables as declared on the fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for pool in PoolKind::ALL {
            let (warm_field, max_field) = match pool {
                PoolKind::Tts => ("warm_pool_tts_size", "pool_tts_max_size"),
                PoolKind::Stt => ("warm_pool_stt_size", "pool_stt_max_size"),
                PoolKind::TtsStream => ("warm_pool_tts_stream_size", "pool_tts_stream_max_size"),
            };
            let (size, max) = (self.warm_size(pool), self.max_size(pool));
            if max == 0 {
                let max_var = variable(max_field);
                return Err(ConfigError(format!(
                    "{max_var} is 0; expected at least 1 connection"
                )));
            }
            if self.warm_pool_enabled && size > max {
                let (var, max_var) = (variable(warm_field), variable(max_field));
                return Err(ConfigError(format!(
                    "{var} is {size} but {max_var} is {max}; expected {var} <= {max_var}"
                )));
            }
        }
        if self.pool_create_concurrency == 0 {
            let var = variable("pool_create_concurrency");
            return Err(ConfigError(format!(
                "{var} is 0; expected at least 1 connect at a time"
            )));
        }
        if self.max_body_bytes == 0 {
            let var = variable("max_body_bytes");
            return Err(ConfigError(format!(
                "{var} is 0; expected a positive number of bytes"
            )));
        }
        Ok(())
    }
}

/// The environment variable declared on the [`Config`] field `field`, for messages about
/// relations between settings. Falls back to the field's name in capitals.
fn variable(field: &str) -> String {
    <Config as clap::CommandFactory>::command()
        .get_arguments()
        .find(|a| a.get_id() == field)
        .and_then(clap::Arg::get_env)
        .map_or_else(
            || field.to_ascii_uppercase(),
            |var| var.to_string_lossy().into_owned(),
        )
}

// Value parsers. Each setting names its environment variable once, in its `env`
// attribute; [`Expect`] reads it back from the argument when a value is malformed, so the
// message names the variable, the value and what was expected without a second copy of
// the name. Settings in flattened `#[derive(clap::Args)]` structs use the same parsers.

/// A value parser: how to read a setting, and what it expects when the value is wrong.
#[derive(Clone, Copy)]
pub(crate) struct Expect<T> {
    /// Converts the text, or says what was expected (e.g. "a whole number such as 3").
    parse: fn(&str) -> Result<T, String>,
}

impl<T> Expect<T> {
    /// A parser from a conversion that returns the expectation on failure.
    pub(crate) const fn new(parse: fn(&str) -> Result<T, String>) -> Self {
        Self { parse }
    }
}

impl<T: Clone + Send + Sync + 'static> clap::builder::TypedValueParser for Expect<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let text = value.to_string_lossy();
        (self.parse)(&text).map_err(|what| {
            // The variable when the argument has one; a command built without the
            // environment (tests, `Config::defaults`) falls back to the flag.
            let setting = arg.map_or_else(
                || "the value".to_owned(),
                |a| match a.get_env() {
                    Some(var) => var.to_string_lossy().into_owned(),
                    None => a
                        .get_long()
                        .map_or_else(|| a.get_id().to_string(), |long| format!("--{long}")),
                },
            );
            let flag = arg.map_or_else(|| "...".to_owned(), ToString::to_string);
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "invalid value '{text}' for '{flag}': {setting} expects {what}, got {text:?}\n"
                ),
            )
            .with_cmd(cmd)
        })
    }
}

impl<T> std::fmt::Debug for Expect<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Expect")
    }
}

/// Matches `s` (trimmed, any case) against `choices`; on no match expects `what`.
fn choose<T: Copy>(s: &str, choices: &[(&str, T)], what: &str) -> Result<T, String> {
    let key = s.trim().to_ascii_lowercase();
    choices
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, v)| *v)
        .ok_or_else(|| what.to_owned())
}

pub(crate) fn count() -> Expect<usize> {
    Expect::new(|s| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| "a whole number such as 3".into())
    })
}

pub(crate) fn boolean() -> Expect<bool> {
    Expect::new(|s| {
        choose(
            s,
            &[
                ("true", true),
                ("1", true),
                ("yes", true),
                ("on", true),
                ("false", false),
                ("0", false),
                ("no", false),
                ("off", false),
            ],
            "true or false",
        )
    })
}

/// Seconds with a fraction. Zero only when `allow_zero` (it means "disabled" there); a
/// positive value too small to be a whole nanosecond is refused rather than silently
/// becoming zero.
fn parse_seconds(s: &str, allow_zero: bool) -> Result<Duration, String> {
    let what = if allow_zero {
        "a number of seconds >= 0 such as 30.0 (at least 0.000000001 unless 0)"
    } else {
        "a number of seconds > 0 such as 30.0 (at least 0.000000001)"
    };
    let v: f64 = s.trim().parse().map_err(|_| what.to_owned())?;
    // Also bounded above: Duration::from_secs_f64 panics on huge values, and a timeout of
    // more than 100 years is a typo.
    if !v.is_finite() || v < 0.0 || (v == 0.0 && !allow_zero) || v > 3.2e9 {
        return Err(what.to_owned());
    }
    let d = Duration::from_secs_f64(v);
    if v > 0.0 && d.is_zero() {
        return Err(what.to_owned());
    }
    Ok(d)
}

pub(crate) fn seconds() -> Expect<Duration> {
    Expect::new(|s| parse_seconds(s, true))
}

pub(crate) fn positive_seconds() -> Expect<Duration> {
    Expect::new(|s| parse_seconds(s, false))
}

fn socket_addr() -> Expect<SocketAddr> {
    Expect::new(|s| {
        s.trim()
            .parse()
            .map_err(|_| "IP:PORT such as 127.0.0.1:8080 or 0.0.0.0:8080".into())
    })
}

fn log_format() -> Expect<LogFormat> {
    Expect::new(|s| {
        choose(
            s,
            &[
                ("pretty", LogFormat::Pretty),
                ("text", LogFormat::Pretty),
                ("json", LogFormat::Json),
            ],
            "pretty or json",
        )
    })
}

fn log_filter() -> Expect<String> {
    Expect::new(|s| {
        tracing_subscriber::EnvFilter::try_new(s)
            .map(|_| s.to_owned())
            .map_err(|e| format!("a log filter such as info ({e})"))
    })
}

fn backend_choice() -> Expect<BackendChoice> {
    Expect::new(|s| {
        choose(
            s,
            &[
                ("auto", BackendChoice::Auto),
                ("", BackendChoice::Auto),
                ("azure", BackendChoice::Azure),
                ("mock", BackendChoice::Mock),
            ],
            "auto, azure or mock",
        )
    })
}

fn mock_profile() -> Expect<MockProfile> {
    Expect::new(|s| {
        choose(
            s,
            &[
                ("realistic", MockProfile::Realistic),
                ("instant", MockProfile::Instant),
            ],
            "realistic or instant",
        )
    })
}

fn azure_auth() -> Expect<AzureAuth> {
    Expect::new(|s| {
        choose(
            s,
            &[
                ("key", AzureAuth::Key),
                ("token", AzureAuth::Token),
                ("sts", AzureAuth::Token),
            ],
            "key or token",
        )
    })
}

fn tts_transport() -> Expect<TtsTransport> {
    Expect::new(|s| {
        choose(
            s,
            &[
                ("websocket", TtsTransport::Websocket),
                ("ws", TtsTransport::Websocket),
                ("rest", TtsTransport::Rest),
                ("http", TtsTransport::Rest),
            ],
            "websocket or rest",
        )
    })
}

fn stt_mode() -> Expect<RecognitionMode> {
    Expect::new(|s| {
        choose(
            s,
            &[
                ("conversation", RecognitionMode::Conversation),
                ("interactive", RecognitionMode::Interactive),
                ("dictation", RecognitionMode::Dictation),
            ],
            "conversation, interactive or dictation",
        )
    })
}

fn stt_format() -> Expect<RecognitionFormat> {
    Expect::new(|s| {
        choose(
            s,
            &[
                ("simple", RecognitionFormat::Simple),
                ("detailed", RecognitionFormat::Detailed),
            ],
            "simple or detailed",
        )
    })
}

fn audio_format() -> Expect<AudioFormat> {
    Expect::new(|s| {
        s.parse().map_err(|_| {
            "an Azure output format such as riff-24khz-16bit-mono-pcm or \
             audio-24khz-48kbitrate-mono-mp3"
                .into()
        })
    })
}

fn voice() -> Expect<String> {
    Expect::new(|s| {
        speech_core::validate_voice_name(s)
            .map(|()| s.to_owned())
            .map_err(|_| "a voice short name such as en-US-AvaMultilingualNeural".into())
    })
}

fn language() -> Expect<String> {
    Expect::new(|s| {
        RecognitionRequest::new(s)
            .validate()
            .map(|()| s.to_owned())
            .map_err(|_| "a BCP 47 language tag such as en-US".into())
    })
}

fn languages() -> Expect<LanguageList> {
    Expect::new(|s| {
        let mut tags: Vec<String> = Vec::new();
        for tag in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if !is_language_tag(tag) {
                return Err(format!(
                    "a comma-separated list of BCP 47 language tags such as en-US,de-DE,fr-FR \
                     ({:?} is not one)",
                    tag.chars().take(40).collect::<String>()
                ));
            }
            if !tags.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
                tags.push(tag.to_owned());
            }
        }
        Ok(LanguageList(tags))
    })
}

fn region() -> Expect<String> {
    Expect::new(|s| {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if ok {
            Ok(s.to_owned())
        } else {
            Err("an Azure region name such as eastus".into())
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Parses flags with the environment ignored.
    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let cmd = Config::command().mut_args(|a| a.env(None::<&str>));
        let mut argv = vec!["speech-pool"];
        argv.extend_from_slice(args);
        let m = cmd.try_get_matches_from(argv)?;
        <Config as clap::FromArgMatches>::from_arg_matches(&m)
    }

    /// Runs `parser` on `value` for the argument behind `flag` as declared on [`Config`]
    /// (with its variable), as clap does for a value from the environment, without
    /// touching the process's environment.
    fn parse_as_declared<T: Clone + Send + Sync + 'static>(
        parser: Expect<T>,
        flag: &str,
        value: &str,
    ) -> Result<T, clap::Error> {
        use clap::builder::TypedValueParser;
        let mut cmd = Config::command();
        // As before any parse: rendering an argument in a message needs the built form.
        cmd.build();
        let long = flag.trim_start_matches("--");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .expect("a known flag");
        parser.parse_ref(&cmd, Some(arg), std::ffi::OsStr::new(value))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
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
            (
                vec!["--stt-languages", "en-US,de_DE"],
                "STT_LANGUAGES",
                "de_DE",
                "BCP 47",
            ),
        ];
        for (args, var, value, what) in cases {
            let err = parse(&args).expect_err(var).to_string();
            assert!(err.contains(args[0]), "{err}");
            assert!(err.contains(value), "{err}");
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn stt_languages_are_bcp47_tags_without_duplicates() {
        assert!(Config::defaults().stt_languages.tags().is_empty());
        assert_eq!(Config::defaults().stt_on_demand_pools, 8);
        assert_eq!(
            parse(&["--stt-on-demand-pools", "0"])
                .unwrap()
                .stt_on_demand_pools,
            0
        );
        let c = parse(&[
            "--stt-languages",
            " en-US, de-DE,,fr-FR ,EN-us,zh-Hans-CN,es-419",
        ])
        .unwrap();
        assert_eq!(
            c.stt_languages.tags(),
            ["en-US", "de-DE", "fr-FR", "zh-Hans-CN", "es-419"]
        );
        for bad in [
            "english",
            "en_US",
            "e",
            "en-",
            "-US",
            "en-US-toolongsubtag",
            "en US",
            "1a-US",
        ] {
            let err = parse_as_declared(languages(), "--stt-languages", bad)
                .expect_err(bad)
                .to_string();
            assert!(err.contains("STT_LANGUAGES expects"), "{err}");
        }
    }

    #[test]
    fn a_malformed_value_names_the_declared_variable() {
        let err = parse_as_declared(count(), "--warm-pool-tts-size", "three")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WARM_POOL_TTS_SIZE expects a whole number"),
            "{err}"
        );
        assert!(err.contains("\"three\""), "{err}");
        let err = parse_as_declared(
            positive_seconds(),
            "--warm-pool-refresh-interval",
            "0.0000000001",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("WARM_POOL_REFRESH_INTERVAL expects a number of seconds > 0"),
            "{err}"
        );
    }

    #[test]
    fn a_positive_duration_below_one_nanosecond_is_refused_not_zero() {
        for flag in [
            "--warm-pool-refresh-interval",
            "--pool-acquire-timeout",
            "--pool-max-age",
        ] {
            let err = parse(&[flag, "0.0000000001"]).expect_err(flag).to_string();
            assert!(err.contains("0.000000001"), "{err}");
        }
        let c = parse(&["--pool-max-age", "0.000000001"]).unwrap();
        assert_eq!(c.pool_max_age, Duration::from_nanos(1));
    }

    #[test]
    fn validation_messages_use_the_declared_variables() {
        assert_eq!(variable("warm_pool_tts_size"), "WARM_POOL_TTS_SIZE");
        assert_eq!(variable("pool_stt_max_size"), "POOL_STT_MAX_SIZE");
        let c = parse(&["--pool-stt-max-size", "0"]).unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "POOL_STT_MAX_SIZE is 0; expected at least 1 connection"
        );
        let c = parse(&["--pool-create-concurrency", "0"]).unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "POOL_CREATE_CONCURRENCY is 0; expected at least 1 connect at a time"
        );
        let c = parse(&["--max-body-bytes", "0"]).unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("MAX_BODY_BYTES is 0"),
        );
        let c = parse(&["--warm-pool-stt-size", "9", "--pool-stt-max-size", "4"]).unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "WARM_POOL_STT_SIZE is 9 but POOL_STT_MAX_SIZE is 4; \
             expected WARM_POOL_STT_SIZE <= POOL_STT_MAX_SIZE"
        );
    }

    #[test]
    fn pool_kinds_choose_their_own_sizes() {
        let c = parse(&[
            "--warm-pool-tts-size",
            "4",
            "--warm-pool-stt-size",
            "1",
            "--pool-tts-max-size",
            "9",
            "--pool-stt-max-size",
            "5",
        ])
        .unwrap();
        assert_eq!(
            (c.warm_size(PoolKind::Tts), c.max_size(PoolKind::Tts)),
            (4, 9)
        );
        assert_eq!(
            (c.warm_size(PoolKind::Stt), c.max_size(PoolKind::Stt)),
            (1, 5)
        );
        assert_eq!(PoolKind::Tts.name(), "speech-tts");
        assert_eq!(PoolKind::Stt.name(), "speech-stt");
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
            "POOL_CREATE_CONCURRENCY",
            "POOL_ACQUIRE_TIMEOUT",
            "SERVICE_API_KEY",
            "AZURE_SPEECH_KEY",
            "AZURE_SPEECH_REGION",
            "AZURE_SPEECH_ENDPOINT",
            "STT_LANGUAGES",
            "STT_ON_DEMAND_POOLS",
        ] {
            assert!(help.contains(var), "--help lacks {var}");
        }
    }
}
