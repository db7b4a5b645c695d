//! Configuration of the in-process mock backend: latencies, audio shape and faults.

use std::time::Duration;

/// Everything the mock backend can be told to do.
///
/// Plain public fields with a zero-latency, fault-free [`Default`], so a test states only
/// what it cares about:
///
/// ```
/// use std::time::Duration;
/// use speech_mock::backend::MockConfig;
///
/// let config = MockConfig {
///     create_latency: Duration::from_millis(300),
///     fail_create_every: Some(3),
///     ..MockConfig::default()
/// };
/// # let _ = config;
/// ```
///
/// All delays are `tokio::time::sleep`s, so tests with paused time run instantly and
/// deterministically. Fault counters ("every Nth") are per factory, counted from 1, so the
/// same sequence of calls always fails at the same places.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Seed for every pseudo-random choice (tone per character, noise, compressed bytes).
    /// Same seed + same request ⇒ byte-identical audio.
    pub seed: u64,
    /// Delay of each `create` (the cold connect: DNS + TCP + TLS + upgrade).
    pub create_latency: Duration,
    /// Delay of each `warm` (e.g. sending `speech.config` and a first round trip).
    pub warm_latency: Duration,
    /// Per-turn service latency. Synthesis: delay before the first event of a turn (the
    /// time to first audio). Recognition: delay between the end of the audio and the final
    /// phrase (the time to final result).
    pub turn_latency: Duration,
    /// Delay between consecutive audio chunks of a synthesis turn.
    pub chunk_interval: Duration,
    /// Size of each synthesis audio chunk in bytes (rounded down to whole 16-bit samples
    /// for PCM; at least one sample). For RIFF formats the 44-byte header is prepended to
    /// the first chunk.
    pub chunk_bytes: usize,
    /// Audio produced per character of input text: synthesized audio length is
    /// proportional to text length.
    pub audio_per_char: Duration,
    /// Cap on the audio of one synthesis turn; Azure truncates at 10 minutes too. Keeps a
    /// 64 KB request from producing gigabytes.
    pub max_audio: Duration,
    /// Recognition: one hypothesis per this much audio received (Azure: about 300 ms).
    /// Zero disables hypotheses.
    pub hypothesis_every: Duration,
    /// Recognition: the phrases recognised, one per turn, cycling in order across all
    /// turns of a factory. An empty list (or an empty phrase) yields `NoMatch`.
    pub transcript: Vec<String>,
    /// Fail every Nth `create` (1-based) with `SpeechError::Transient`. `Some(1)` fails
    /// all; `None` or `Some(0)` never fails.
    pub fail_create_every: Option<u32>,
    /// Fail every Nth `warm` with `SpeechError::Transient` (the connection is then broken).
    /// `Some(1)` fails all; `None` or `Some(0)` never fails.
    pub fail_warm_every: Option<u32>,
    /// A connection reports `is_ready() == false` once it has started this many turns,
    /// modelling a server that closes connections after some use.
    pub not_ready_after_uses: Option<u32>,
    /// A connection reports `is_ready() == false` once it is this old, modelling Azure's
    /// idle / maximum-age closes.
    pub not_ready_after_age: Option<Duration>,
    /// Drop the connection mid-stream: after this many audio chunks have been sent
    /// (synthesis) or received (recognition) in a turn, the turn fails with
    /// `SpeechError::ConnectionClosed { code: Some(1006), .. }` and the connection is broken
    /// (not ready, further turns fail). `Some(0)` drops before any audio.
    pub drop_after_chunks: Option<u32>,
    /// Which turns `drop_after_chunks` applies to: every Nth turn of the factory (1-based).
    /// `None`, `Some(0)` and `Some(1)` mean every turn.
    pub drop_every_nth_turn: Option<u32>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            seed: 0x5EED_5EED,
            create_latency: Duration::ZERO,
            warm_latency: Duration::ZERO,
            turn_latency: Duration::ZERO,
            chunk_interval: Duration::ZERO,
            chunk_bytes: 4800,
            audio_per_char: Duration::from_millis(60),
            max_audio: Duration::from_secs(600),
            hypothesis_every: Duration::from_millis(300),
            transcript: vec!["hello world".to_owned()],
            fail_create_every: None,
            fail_warm_every: None,
            not_ready_after_uses: None,
            not_ready_after_age: None,
            drop_after_chunks: None,
            drop_every_nth_turn: None,
        }
    }
}

impl MockConfig {
    /// Latencies shaped like a real Azure connection over the public internet (400 ms
    /// cold connect, 50 ms warm-up, 120 ms to first audio, 20 ms between chunks), for demos
    /// and for the service's offline mode where warm-versus-cold should be visible.
    pub fn realistic() -> Self {
        Self {
            create_latency: Duration::from_millis(400),
            warm_latency: Duration::from_millis(50),
            turn_latency: Duration::from_millis(120),
            chunk_interval: Duration::from_millis(20),
            ..Self::default()
        }
    }
}

/// Does the 1-based `n`th event hit an "every Nth" fault?
pub(crate) fn hits(every: Option<u32>, n: u64) -> bool {
    match every {
        Some(every) if every > 0 => n.is_multiple_of(u64::from(every)),
        _ => false,
    }
}
