//! Limits that keep one client from starving everyone else: server timeouts, how long a
//! slow client may stall a stream, per-client session caps, allowed origins, and the
//! rate limit on the log line written for each refused request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The abuse-limit settings, flattened into [`Config`](crate::Config). Every one has a
/// flag and an environment variable; durations are seconds with an optional fraction.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Client limits")]
pub struct Limits {
    /// Seconds a connection may take to deliver a complete request head once its first
    /// byte arrived; slower connections are closed.
    #[arg(
        long,
        env = "HTTP_HEADER_READ_TIMEOUT",
        default_value = "10.0",
        value_name = "SECONDS",
        value_parser = positive_seconds("HTTP_HEADER_READ_TIMEOUT")
    )]
    pub http_header_read_timeout: Duration,

    /// Seconds an idle connection (opened, or between keep-alive requests) may stay open
    /// without starting a request.
    #[arg(
        long,
        env = "HTTP_KEEP_ALIVE_TIMEOUT",
        default_value = "60.0",
        value_name = "SECONDS",
        value_parser = positive_seconds("HTTP_KEEP_ALIVE_TIMEOUT")
    )]
    pub http_keep_alive_timeout: Duration,

    /// Seconds a client may accept no response bytes (TTS audio, STT events, any answer)
    /// before the service cuts it off. A cut-off TTS turn is finished upstream in the
    /// background so its connection goes back to the pool.
    #[arg(
        long,
        env = "HTTP_WRITE_TIMEOUT",
        default_value = "10.0",
        value_name = "SECONDS",
        value_parser = positive_seconds("HTTP_WRITE_TIMEOUT")
    )]
    pub http_write_timeout: Duration,

    /// On shutdown, seconds to wait for a connection that has no request in flight (idle,
    /// or still sending its request head) before closing it. Requests in flight get the
    /// whole SHUTDOWN_GRACE.
    #[arg(
        long,
        env = "HTTP_SHUTDOWN_IDLE_WAIT",
        default_value = "1.0",
        value_name = "SECONDS",
        value_parser = seconds("HTTP_SHUTDOWN_IDLE_WAIT")
    )]
    pub http_shutdown_idle_wait: Duration,

    /// When a TTS client hangs up or is cut off mid-stream, the rest of the turn is read
    /// from the speech service and thrown away so the connection can be reused: at most
    /// this many seconds...
    #[arg(
        long,
        env = "TTS_DRAIN_TIMEOUT",
        default_value = "5.0",
        value_name = "SECONDS",
        value_parser = seconds("TTS_DRAIN_TIMEOUT")
    )]
    pub tts_drain_timeout: Duration,

    /// ...and at most this many bytes of audio; past either bound the connection is
    /// closed instead.
    #[arg(
        long,
        env = "TTS_DRAIN_MAX_BYTES",
        default_value = "4194304",
        value_name = "BYTES",
        value_parser = count("TTS_DRAIN_MAX_BYTES")
    )]
    pub tts_drain_max_bytes: usize,

    /// Seconds without audio after which an STT turn is ended with what was said so far,
    /// giving its connection back while the websocket stays open (the next audio takes a
    /// connection again, the session's own when it kept one).
    #[arg(
        long,
        env = "STT_AUDIO_IDLE_TIMEOUT",
        default_value = "10.0",
        value_name = "SECONDS",
        value_parser = positive_seconds("STT_AUDIO_IDLE_TIMEOUT")
    )]
    pub stt_audio_idle_timeout: Duration,

    /// Seconds an STT websocket may stay open without sending anything before it is
    /// closed (close code 1001 with a reason naming this setting).
    #[arg(
        long,
        env = "STT_IDLE_CLOSE_TIMEOUT",
        default_value = "120.0",
        value_name = "SECONDS",
        value_parser = positive_seconds("STT_IDLE_CLOSE_TIMEOUT")
    )]
    pub stt_idle_close_timeout: Duration,

    /// Most live sessions (distinct session ids not yet deleted or expired) one client may
    /// hold; a request opening one more gets 429 session_limit. A client is its API key
    /// when SERVICE_API_KEY is set, else its peer address. 0 turns the cap off.
    #[arg(
        long,
        env = "MAX_SESSIONS_PER_CLIENT",
        default_value = "0",
        value_name = "COUNT",
        value_parser = count("MAX_SESSIONS_PER_CLIENT")
    )]
    pub max_sessions_per_client: usize,

    /// Origins (`scheme://host` or `scheme://host:port`, comma-separated) allowed to call the API from a
    /// browser; CORS headers are sent for these only. Requests without an Origin header
    /// (non-browser clients) and same-origin requests are always allowed; `*` allows any
    /// origin. Empty by default: no cross-origin access.
    #[arg(
        long,
        env = "ALLOWED_ORIGINS",
        default_value = "",
        value_name = "ORIGINS",
        value_parser = origins("ALLOWED_ORIGINS")
    )]
    pub allowed_origins: AllowedOrigins,
}

impl Default for Limits {
    fn default() -> Self {
        crate::Config::defaults().limits
    }
}

/// The parsed `ALLOWED_ORIGINS` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins {
    /// `*`: any origin.
    pub any: bool,
    /// Lower-cased `scheme://host[:port]` entries.
    pub origins: Vec<String>,
}

impl AllowedOrigins {
    /// Whether `origin` (an `Origin` header value) is listed.
    pub fn allows(&self, origin: &str) -> bool {
        self.any
            || self
                .origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    }

    /// Whether any cross-origin access is configured (and so CORS headers are sent).
    pub fn is_configured(&self) -> bool {
        self.any || !self.origins.is_empty()
    }
}

impl std::str::FromStr for AllowedOrigins {
    type Err = String;

    /// Parses an `ALLOWED_ORIGINS` value: comma-separated origins, or `*`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        origins("ALLOWED_ORIGINS")(s)
    }
}

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

fn parse_seconds(var: &str, s: &str, allow_zero: bool) -> Result<Duration, String> {
    let what = if allow_zero {
        "a number of seconds >= 0 such as 5.0"
    } else {
        "a number of seconds >= 0.001 such as 5.0"
    };
    let v: f64 = s.trim().parse().map_err(|_| expected(var, what, s))?;
    // Bounded below for positive settings (a timeout of a nanosecond is a typo that would
    // cut off every client) and above (Duration::from_secs_f64 panics on huge values).
    if !v.is_finite() || v < 0.0 || (!allow_zero && v < 0.001) || v > 3.2e9 {
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

fn origins(
    var: &'static str,
) -> impl Fn(&str) -> Result<AllowedOrigins, String> + Clone + Send + Sync {
    move |s| {
        let mut allowed = AllowedOrigins::default();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                allowed.any = true;
                continue;
            }
            let valid = entry.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https")
                    && !rest.is_empty()
                    && !rest.contains('/')
                    && rest.bytes().all(|b| b.is_ascii_graphic())
            });
            if !valid {
                return Err(expected(
                    var,
                    "comma-separated origins such as https://app.example.com or *",
                    entry,
                ));
            }
            allowed.origins.push(entry.to_ascii_lowercase());
        }
        Ok(allowed)
    }
}

/// Writes a log line at most once per interval per call site, counting the ones it held
/// back and reporting that count with the next line written. A flood of refused requests
/// then costs a few log lines a second instead of one each.
#[derive(Debug)]
pub struct LogLimiter {
    interval_ms: u64,
    /// Milliseconds since `epoch` when a line was last written, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
}

impl LogLimiter {
    /// A limiter writing at most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            epoch: std::sync::OnceLock::new(),
        }
    }

    /// `Some(n)` when a line should be written now, `n` being how many were held back
    /// since the last one; `None` when this one is held back.
    pub fn admit(&self) -> Option<u64> {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let now = u64::try_from(epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.interval_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // One caller wins the window; the others count as held back.
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Who a request comes from, for per-client limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// Every holder of the service API key is one client.
    ApiKey,
    /// The peer's IP address (not the port: one host opening many connections is one
    /// client).
    Peer(std::net::IpAddr),
    /// No peer address known (an in-process request).
    Unknown,
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ApiKey => f.write_str("the API key"),
            Self::Peer(ip) => write!(f, "{ip}"),
            Self::Unknown => f.write_str("an unknown peer"),
        }
    }
}

/// The live sessions of each client, for `MAX_SESSIONS_PER_CLIENT`. A session is live
/// from its first served request until it is deleted or has been unused for the pools'
/// session age limit (when the pools forget it too).
#[derive(Debug)]
pub struct SessionCap {
    max: usize,
    max_age: Duration,
    by_client: Mutex<HashMap<ClientId, HashMap<String, Instant>>>,
}

/// Why [`SessionCap::check`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{client} already holds {live} live sessions, the limit (MAX_SESSIONS_PER_CLIENT={max}); \
     end one with DELETE /api/v1/sessions/{{id}} first"
)]
pub struct SessionLimitReached {
    /// The client.
    pub client: ClientId,
    /// Its live sessions.
    pub live: usize,
    /// The limit.
    pub max: usize,
}

impl SessionCap {
    /// A cap of `max` live sessions per client (0: no cap); sessions unused for `max_age`
    /// stop counting.
    pub fn new(max: usize, max_age: Duration) -> Self {
        Self {
            max,
            max_age,
            by_client: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ClientId, HashMap<String, Instant>>> {
        // Only plain map operations run under this lock; a poisoned map is still valid.
        self.by_client.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `client` may use `session`: always for a session it already has, else only
    /// below the cap. Records nothing; call [`record`](Self::record) once served.
    pub fn check(&self, client: &ClientId, session: &str) -> Result<(), SessionLimitReached> {
        if self.max == 0 {
            return Ok(());
        }
        let mut map = self.lock();
        let Some(sessions) = map.get_mut(client) else {
            return Ok(());
        };
        if sessions.contains_key(session) {
            return Ok(());
        }
        let max_age = self.max_age;
        sessions.retain(|_, used| used.elapsed() < max_age);
        if sessions.len() >= self.max {
            return Err(SessionLimitReached {
                client: client.clone(),
                live: sessions.len(),
                max: self.max,
            });
        }
        Ok(())
    }

    /// Records that `client` was served on `session` (now).
    pub fn record(&self, client: &ClientId, session: &str) {
        if self.max == 0 {
            return;
        }
        let mut map = self.lock();
        let sessions = map.entry(client.clone()).or_default();
        match sessions.get_mut(session) {
            Some(used) => *used = Instant::now(),
            None => {
                sessions.insert(session.to_owned(), Instant::now());
            }
        }
    }

    /// Forgets `session` for every client (it was deleted).
    pub fn forget(&self, session: &str) {
        if self.max == 0 {
            return;
        }
        let mut map = self.lock();
        map.retain(|_, sessions| {
            sessions.remove(session);
            !sessions.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_match() {
        let parse = origins("ALLOWED_ORIGINS");
        let o = parse("https://App.example.com, http://localhost:3000").unwrap();
        assert!(o.allows("https://app.example.com"));
        assert!(o.allows("http://localhost:3000"));
        assert!(!o.allows("https://evil.example"));
        assert!(o.is_configured());
        assert!(parse("*").unwrap().allows("https://evil.example"));
        assert!(!parse("").unwrap().is_configured());
        let err = parse("app.example.com").unwrap_err();
        assert!(err.contains("ALLOWED_ORIGINS"), "{err}");
        assert!(parse("https://a.example/path").is_err());
    }

    #[test]
    fn tiny_timeouts_are_refused_with_the_variable_named() {
        let parse = positive_seconds("HTTP_WRITE_TIMEOUT");
        let err = parse("0.0000000001").unwrap_err();
        assert!(err.contains("HTTP_WRITE_TIMEOUT"), "{err}");
        assert!(parse("0").is_err());
        assert_eq!(parse("0.5").unwrap(), Duration::from_millis(500));
    }

    #[test]
    fn log_limiter_counts_what_it_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(limiter.admit(), None);
        }
        assert_eq!(limiter.suppressed.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn session_cap_counts_distinct_sessions_per_client() {
        let cap = SessionCap::new(2, Duration::from_secs(60));
        let a = ClientId::Peer("10.0.0.1".parse().unwrap());
        let b = ClientId::Peer("10.0.0.2".parse().unwrap());
        for s in ["s1", "s2"] {
            cap.check(&a, s).unwrap();
            cap.record(&a, s);
        }
        let refused = cap.check(&a, "s3").unwrap_err();
        assert_eq!(refused.live, 2);
        assert!(refused.to_string().contains("MAX_SESSIONS_PER_CLIENT=2"));
        // A session the client already has is not a new one; another client is not capped.
        cap.check(&a, "s1").unwrap();
        cap.check(&b, "s3").unwrap();
        cap.forget("s1");
        cap.check(&a, "s3").unwrap();
        let off = SessionCap::new(0, Duration::from_secs(60));
        off.record(&a, "x");
        assert!(off.lock().is_empty());
    }
}
