//! Emulator configuration.

use std::net::SocketAddr;
use std::time::Duration;

use crate::faults::FaultRule;
use crate::tls::TlsIdentity;

/// How to run an emulator. Start from [`EmulatorConfig::default`] (TLS on `127.0.0.1:0`
/// with Azure's real timers) or [`EmulatorConfig::plain`], then adjust fields or use the
/// `with_*` helpers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EmulatorConfig {
    /// Address to listen on; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Serve https/wss (`true`) or http/ws (`false`).
    pub tls: bool,
    /// The certificate to serve with TLS. `None` generates a fresh CA and server
    /// certificate; pass a handle's identity back in to restart with the same one.
    pub tls_identity: Option<TlsIdentity>,
    /// The accepted subscription key. `None` accepts any non-empty key, so tests and local
    /// runs need not agree on one.
    pub key: Option<String>,
    /// What the STT routes "recognise".
    pub transcript: String,
    /// Simulated network round trip: added once per round trip of connection set-up (TCP,
    /// TLS, websocket upgrade), before each REST response and before each turn's first
    /// response, so warm-versus-cold latency can be measured on loopback.
    pub rtt: Duration,
    /// Close a websocket with 1000 after this long without a client message (Azure: 180 s).
    pub idle_timeout: Duration,
    /// Close a websocket with 1000 this long after it opened (Azure: 600 s); the
    /// `maxConnectionDurationSecs` query parameter can lower it per connection.
    pub max_connection_age: Duration,
    /// Lifetime of issued tokens (Azure: 600 s). Zero issues already-expired tokens.
    pub token_lifetime: Duration,
    /// Strict protocol checks: require `X-ConnectionId` at the handshake (else 400), require
    /// `speech.config` once before the first turn, `Path` and `X-RequestId` on every message,
    /// and refuse overlapping TTS turns (close 1002). Lenient mode queues overlapping turns
    /// and tolerates the rest, as the service does in practice.
    pub strict: bool,
    /// At most this many open websockets per key (or token subscription); more get a
    /// handshake 429. `None` = unlimited.
    pub max_connections_per_key: Option<usize>,
    /// STT: a phrase ends after this much audio even if the client keeps streaming
    /// (interactive mode then ends the turn; continuous modes start the next phrase).
    pub max_phrase: Duration,
    /// STT: one `speech.hypothesis` per this much audio received (Azure: about 300 ms).
    pub hypothesis_interval: Duration,
    /// STT websocket: recognise scripted audio ([`scripted`](crate::scripted)): phrase
    /// `k` is a run of samples equal to `k`, heard as line `k` of the transcript, so a
    /// replay of the same audio on another connection is heard the same way.
    pub scripted_audio: bool,
    /// STT, scripted audio: the silence that ends a phrase (Azure's segmentation silence
    /// is about 500 ms).
    pub phrase_silence: Duration,
    /// Fault rules active from the start.
    pub faults: Vec<FaultRule>,
    /// Record what clients send ([`Capture`](super::Capture)), for wire tests.
    pub capture: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: true,
            tls_identity: None,
            key: None,
            transcript: "hello world".to_owned(),
            rtt: Duration::ZERO,
            idle_timeout: Duration::from_secs(180),
            max_connection_age: Duration::from_secs(600),
            token_lifetime: Duration::from_secs(600),
            strict: false,
            max_connections_per_key: None,
            max_phrase: Duration::from_secs(15),
            hypothesis_interval: Duration::from_millis(300),
            scripted_audio: false,
            phrase_silence: Duration::from_millis(500),
            faults: Vec::new(),
            capture: false,
        }
    }
}

impl EmulatorConfig {
    /// The defaults, but serving plain http/ws.
    pub fn plain() -> Self {
        Self {
            tls: false,
            ..Self::default()
        }
    }

    /// Sets the accepted key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the STT transcript.
    pub fn with_transcript(mut self, transcript: impl Into<String>) -> Self {
        self.transcript = transcript.into();
        self
    }

    /// Sets the simulated round trip.
    pub fn with_rtt(mut self, rtt: Duration) -> Self {
        self.rtt = rtt;
        self
    }

    /// Sets the idle timeout.
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets the maximum connection age.
    pub fn with_max_connection_age(mut self, d: Duration) -> Self {
        self.max_connection_age = d;
        self
    }

    /// Sets the token lifetime.
    pub fn with_token_lifetime(mut self, d: Duration) -> Self {
        self.token_lifetime = d;
        self
    }

    /// Turns strict protocol checks on or off.
    pub fn with_strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Listens on this port of 127.0.0.1.
    pub fn with_port(mut self, port: u16) -> Self {
        self.bind.set_port(port);
        self
    }

    /// Records what clients send (see [`Capture`](super::Capture)).
    pub fn with_capture(mut self, capture: bool) -> Self {
        self.capture = capture;
        self
    }

    /// Recognises scripted audio (see [`scripted`](crate::scripted)) on the STT websocket.
    pub fn with_scripted_audio(mut self, on: bool) -> Self {
        self.scripted_audio = on;
        self
    }

    /// Adds a fault rule active from the start.
    pub fn with_fault(mut self, rule: FaultRule) -> Self {
        self.faults.push(rule);
        self
    }
}
