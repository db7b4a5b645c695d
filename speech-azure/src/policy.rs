//! Lifetimes and timeouts of connections.

use std::time::Duration;

use crate::error::ConfigError;

/// When a pooled connection may still be handed out, and how long to wait for the service.
///
/// The lifetime defaults follow docs/protocol.md#warm-connections: Azure closes a websocket after
/// about 180 s without client messages and 10 minutes after it opened, so a connection is
/// considered ready only while younger than 9 minutes and idle for less than 150 s; a
/// socket must not be opened with a token that has less than 60 s left. A pool should
/// replace connections before these limits (its `max_age` / `max_idle` set a little below
/// them), so that `is_ready` never has to say no at hand-out time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionPolicy {
    /// Not ready once this old. Default 9 min.
    pub max_age: Duration,
    /// Not ready after this long without a message from us. Default 150 s. For TTS REST
    /// the idle limit is [`rest_max_idle`](Self::rest_max_idle) instead.
    pub max_idle: Duration,
    /// With bearer tokens: not ready once the token used at the handshake has less than
    /// this left. `None` disables the check. Default 60 s.
    pub token_min_validity: Option<Duration>,
    /// TTS REST: not ready after this long unused, so the HTTP connection is replaced
    /// before reqwest (90 s) or the front end drops it. Default 60 s.
    pub rest_max_idle: Duration,
    /// Bound on DNS + TCP + TLS + upgrade (and the token fetch). Default 10 s.
    pub connect_timeout: Duration,
    /// Bound on the wait for the first response of a turn (`turn.start`, the first REST
    /// byte, or STT's final results after the end of audio). Default 10 s.
    pub first_response_timeout: Duration,
    /// TTS: longest silence between two messages once a turn has started; the native SDK
    /// gives up after 3 s. Default 3 s.
    pub frame_gap_timeout: Duration,
    /// Bound on sending one message. Default 10 s.
    pub send_timeout: Duration,
    /// Bound on how long a dead websocket peer (blackholed: no FIN, no RST, no data) goes
    /// unnoticed, idle in a pool or mid-turn. A connection that has received nothing for
    /// half of it is sent a websocket ping; if nothing at all (pong or data) arrives within
    /// a quarter more, it is declared dead: no longer ready (the pool replaces it in the
    /// background and never hands it out) and a turn in flight fails with a `Transient`
    /// error. Three quarters rather than the whole gap so the bound still holds when the
    /// timer or the scheduler is late. A healthy peer must answer a ping within a quarter
    /// of it (300 ms by default; raise it for a far region). Default 1.2 s.
    pub liveness_gap: Duration,
    /// Bound on the close handshake. Default 1 s.
    pub close_timeout: Duration,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(9 * 60),
            max_idle: Duration::from_secs(150),
            token_min_validity: Some(Duration::from_secs(60)),
            rest_max_idle: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            first_response_timeout: Duration::from_secs(10),
            frame_gap_timeout: Duration::from_secs(3),
            send_timeout: Duration::from_secs(10),
            liveness_gap: Duration::from_millis(1200),
            close_timeout: Duration::from_secs(1),
        }
    }
}

impl ConnectionPolicy {
    /// Rejects zero durations, which would make every connection unready or every turn
    /// time out at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, d) in [
            ("max_age", self.max_age),
            ("max_idle", self.max_idle),
            ("rest_max_idle", self.rest_max_idle),
            ("connect_timeout", self.connect_timeout),
            ("first_response_timeout", self.first_response_timeout),
            ("frame_gap_timeout", self.frame_gap_timeout),
            ("send_timeout", self.send_timeout),
            ("close_timeout", self.close_timeout),
            ("liveness_gap", self.liveness_gap),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Setting {
                    name,
                    reason: "must be greater than zero".into(),
                });
            }
        }
        Ok(())
    }
}
