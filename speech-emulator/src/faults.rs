//! Fault injection: the failures a pooled client must survive, injected on demand
//! (docs/protocol.md#emulator-extensions).
//!
//! A [`FaultRule`] pairs a [`Fault`] with where it applies ([`Target`]), how often
//! (`times`: the next N matching events, or every one) and from when (`skip`: let the first
//! N matching events through, to hit "the Nth connection"). Rules live in a shared
//! [`FaultPlan`] that tests change at run time through the library handle or the control API,
//! so a test can inject a fault, watch the client fail, and watch it recover.
//!
//! Each fault is consumed at one moment:
//! - `tls_delay`: when a TCP connection is accepted;
//! - `handshake`, `handshake_delay`: at a websocket upgrade;
//! - `rest`, `rest_delay`: at a REST request (token, TTS, voices, STT short audio);
//! - every other fault: when a websocket turn begins (TTS: the `ssml` message; STT: the
//!   first `audio` frame of a new request id). It then acts on that turn, e.g. a
//!   `disconnect` at `after_turn_end` drops the socket right after that turn's `turn.end`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One injectable misbehaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Refuse the websocket upgrade with this HTTP status (401, 403, 400, 404, 429, 500, 503,
    /// or 307 — a redirect back to the same URL). `retry_after` adds a `Retry-After` header.
    Handshake {
        /// The HTTP status to answer instead of 101.
        status: u16,
        /// Seconds for a `Retry-After` header, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u32>,
    },
    /// Wait this long before answering the upgrade (a slow handshake).
    HandshakeDelay {
        /// Milliseconds.
        ms: u64,
    },
    /// Wait this long before the TLS handshake of a new connection (slow TLS). Applies to
    /// plain connections too, as a delay before the first byte is read.
    TlsDelay {
        /// Milliseconds.
        ms: u64,
    },
    /// Answer a REST request with this status (429, 502, 503, 415, …) instead of serving it.
    Rest {
        /// The HTTP status.
        status: u16,
        /// Seconds for a `Retry-After` header, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u32>,
    },
    /// Wait this long before answering a REST request (e.g. a slow token endpoint).
    RestDelay {
        /// Milliseconds.
        ms: u64,
    },
    /// Close the websocket with this code (4429, 1007, 1011, 1013, 1000, …) at a point of
    /// the turn.
    Close {
        /// The close code.
        code: u16,
        /// The close reason; a typical Azure text is used when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// When in the turn.
        #[serde(default)]
        at: TurnPoint,
    },
    /// Drop the TCP connection without a close frame (the client sees 1006) at a point of the
    /// turn. `rst` resets the connection instead of closing it with FIN.
    Disconnect {
        /// When in the turn.
        #[serde(default = "TurnPoint::default_disconnect")]
        at: TurnPoint,
        /// Send a TCP RST rather than a FIN.
        #[serde(default)]
        rst: bool,
    },
    /// Blackhole the websocket at a point of the turn: from then on the emulator neither
    /// reads nor writes it (no data, no pong, no close frame, no FIN, no RST) and keeps the
    /// socket open until it shuts down. Models a network path that died silently (a NAT or
    /// load balancer that forgot the flow); only the client's own liveness checks can
    /// notice. `at: after_turn_end` leaves a dead connection idle in the client's pool;
    /// `after_frames` kills it mid-turn. To blackhole connections that are idle now, use
    /// `EmulatorHandle::blackhole_all` or `POST /_emulator/blackhole`.
    Blackhole {
        /// When in the turn.
        #[serde(default = "TurnPoint::default_disconnect")]
        at: TurnPoint,
    },
    /// Stop the turn after this many frames (TTS: audio frames sent; STT: audio frames
    /// received) and never send `turn.end`; the socket stays open.
    Stall {
        /// Frames before the stall (0 = right after `turn.start`).
        #[serde(default)]
        after_frames: u32,
    },
    /// Extra delay before `turn.start`.
    TurnStartDelay {
        /// Milliseconds.
        ms: u64,
    },
    /// Extra delay before the first TTS audio frame (or the first STT result).
    FirstAudioDelay {
        /// Milliseconds.
        ms: u64,
    },
    /// STT: answer the turn with an in-band error phrase (`TooManyRequests`, `Error`,
    /// `BadRequest`, `Forbidden`, …) and end it.
    PhraseError {
        /// The `RecognitionStatus` to send.
        status: String,
    },
    /// Protocol oddities a client must tolerate: lowercase header names with a space after
    /// the colon, an unknown-path message mid-turn, and an extra empty `audio` frame (TTS).
    Quirks,
}

/// A moment in a websocket turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnPoint {
    /// When the turn's request arrives, before `turn.start` (the idle/age close race).
    BeforeTurnStart,
    /// Right after `turn.start`.
    #[default]
    AfterTurnStart,
    /// After this many frames (TTS: audio frames sent; STT: audio frames received).
    AfterFrames(u32),
    /// Right after `turn.end`: the socket dies between turns.
    AfterTurnEnd,
}

impl TurnPoint {
    fn default_disconnect() -> Self {
        Self::AfterFrames(1)
    }
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Everything.
    #[default]
    Any,
    /// Both websocket endpoints.
    Ws,
    /// Every REST endpoint.
    Rest,
    /// TTS websocket and TTS REST.
    Tts,
    /// STT websocket and STT REST.
    Stt,
    /// The TTS websocket only.
    TtsWs,
    /// The STT websocket only.
    SttWs,
    /// TTS REST only.
    TtsRest,
    /// STT REST (short audio) only.
    SttRest,
    /// The voices list only.
    Voices,
    /// The token endpoint only.
    Token,
}

/// The endpoint a request reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// TTS websocket.
    TtsWs,
    /// STT websocket.
    SttWs,
    /// TTS REST.
    TtsRest,
    /// STT REST (short audio).
    SttRest,
    /// Voices list.
    Voices,
    /// Token endpoint.
    Token,
}

impl Target {
    /// Whether a request to `endpoint` (unknown at TCP accept) is covered.
    pub fn matches(self, endpoint: Option<Endpoint>) -> bool {
        use Endpoint as E;
        let Some(e) = endpoint else {
            return self == Self::Any;
        };
        match self {
            Self::Any => true,
            Self::Ws => matches!(e, E::TtsWs | E::SttWs),
            Self::Rest => matches!(e, E::TtsRest | E::SttRest | E::Voices | E::Token),
            Self::Tts => matches!(e, E::TtsWs | E::TtsRest),
            Self::Stt => matches!(e, E::SttWs | E::SttRest),
            Self::TtsWs => e == E::TtsWs,
            Self::SttWs => e == E::SttWs,
            Self::TtsRest => e == E::TtsRest,
            Self::SttRest => e == E::SttRest,
            Self::Voices => e == E::Voices,
            Self::Token => e == E::Token,
        }
    }
}

/// When a fault is consumed (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A TCP connection was accepted.
    Accept,
    /// A websocket upgrade arrived.
    Handshake,
    /// A REST request arrived.
    Rest,
    /// A websocket turn began.
    Turn,
}

impl Fault {
    /// The moment this fault is consumed.
    pub fn phase(&self) -> Phase {
        match self {
            Self::TlsDelay { .. } => Phase::Accept,
            Self::Handshake { .. } | Self::HandshakeDelay { .. } => Phase::Handshake,
            Self::Rest { .. } | Self::RestDelay { .. } => Phase::Rest,
            _ => Phase::Turn,
        }
    }
}

/// A fault with its scope and budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    /// What to do.
    #[serde(flatten)]
    pub fault: Fault,
    /// Where it applies.
    #[serde(default)]
    pub target: Target,
    /// How many matching events it fires for; `None` = every one (persistent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
    /// How many matching events to let through before it starts firing.
    #[serde(default)]
    pub skip: u32,
    /// Only for requests authenticated with this key (or a token issued for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl FaultRule {
    /// A persistent rule for `fault` on every endpoint.
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            target: Target::Any,
            times: None,
            skip: 0,
            key: None,
        }
    }

    /// Fires for the next `n` matching events only.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Fires once.
    pub fn once(self) -> Self {
        self.times(1)
    }

    /// Lets `n` matching events through first.
    pub fn skip(mut self, n: u32) -> Self {
        self.skip = n;
        self
    }

    /// Restricts the rule to `target`.
    pub fn target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// Restricts the rule to one key.
    pub fn for_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(self) {
            Ok(s) => f.write_str(&s),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

/// The live set of fault rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultPlan {
    /// Rules in the order they were added.
    pub rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// Adds a rule.
    pub fn add(&mut self, rule: FaultRule) {
        self.rules.push(rule);
    }

    /// Removes every rule.
    pub fn clear(&mut self) {
        self.rules.clear();
    }

    /// Consumes the faults that fire for one event: every rule of `phase` whose target and
    /// key match, after its `skip` budget, decrementing `times` and dropping spent rules.
    pub fn take(
        &mut self,
        phase: Phase,
        endpoint: Option<Endpoint>,
        identity: Option<&str>,
    ) -> Vec<Fault> {
        let mut fired = Vec::new();
        self.rules.retain_mut(|rule| {
            if rule.fault.phase() != phase || !rule.target.matches(endpoint) {
                return true;
            }
            if let Some(k) = &rule.key
                && identity != Some(k.as_str())
            {
                return true;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                return true;
            }
            fired.push(rule.fault.clone());
            match &mut rule.times {
                None => true,
                Some(n) => {
                    *n = n.saturating_sub(1);
                    *n > 0
                }
            }
        });
        fired
    }
}

/// Why a `--fault` string could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultParseError(pub String);

impl fmt::Display for FaultParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FaultParseError {}

/// The compact `--fault` syntax, documented on the binary's `--help`:
/// `NAME[=VALUE][,OPTION=VALUE]…`, or the control API's JSON object.
impl FromStr for FaultRule {
    type Err = FaultParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with('{') {
            return serde_json::from_str(s)
                .map_err(|e| FaultParseError(format!("bad fault JSON: {e}")));
        }
        let err = |m: String| FaultParseError(m);
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let (name, value) = match head.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (head.trim(), None),
        };
        let name = name.replace('_', "-").to_ascii_lowercase();
        let mut opts: Vec<(String, String)> = Vec::new();
        for p in parts {
            let (k, v) = p.split_once('=').unwrap_or((p, "true"));
            opts.push((
                k.trim().replace('_', "-").to_ascii_lowercase(),
                v.trim().to_owned(),
            ));
        }
        let opt = |k: &str| opts.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let num = |v: Option<&str>, what: &str| -> Result<u64, FaultParseError> {
            v.ok_or_else(|| err(format!("{name}: missing {what}")))?
                .parse::<u64>()
                .map_err(|_| err(format!("{name}: {what} must be a whole number")))
        };
        let opt_num = |k: &str| -> Result<Option<u64>, FaultParseError> {
            opt(k).map(|v| num(Some(v), k)).transpose()
        };
        let to_u16 =
            |n: u64| u16::try_from(n).map_err(|_| err(format!("{name}: {n} is too large")));
        let to_u32 =
            |n: u64| u32::try_from(n).map_err(|_| err(format!("{name}: {n} is too large")));
        let retry_after = opt_num("retry-after")?.map(to_u32).transpose()?;
        let at = match (opt("at"), opt_num("frames")?) {
            (_, Some(k)) => Some(TurnPoint::AfterFrames(to_u32(k)?)),
            (Some(a), None) => Some(parse_point(a).ok_or_else(|| {
                err(format!(
                    "{name}: at must be before-turn-start, after-turn-start, after-turn-end or frames:K"
                ))
            })?),
            (None, None) => None,
        };
        let fault = match name.as_str() {
            "handshake" => Fault::Handshake {
                status: to_u16(num(value, "status")?)?,
                retry_after,
            },
            "handshake-delay" => Fault::HandshakeDelay {
                ms: num(value, "milliseconds")?,
            },
            "tls-delay" => Fault::TlsDelay {
                ms: num(value, "milliseconds")?,
            },
            "rest" => Fault::Rest {
                status: to_u16(num(value, "status")?)?,
                retry_after,
            },
            "rest-delay" => Fault::RestDelay {
                ms: num(value, "milliseconds")?,
            },
            "close" => Fault::Close {
                code: to_u16(num(value, "close code")?)?,
                reason: opt("reason").map(str::to_owned),
                at: at.unwrap_or_default(),
            },
            "drop" | "disconnect" => Fault::Disconnect {
                at: match (at, value) {
                    (Some(a), _) => a,
                    (None, Some(v)) => TurnPoint::AfterFrames(to_u32(num(Some(v), "frames")?)?),
                    (None, None) => TurnPoint::default_disconnect(),
                },
                rst: opt("rst").is_some_and(|v| v != "false"),
            },
            "blackhole" => Fault::Blackhole {
                at: match (at, value) {
                    (Some(a), _) => a,
                    (None, Some(v)) => TurnPoint::AfterFrames(to_u32(num(Some(v), "frames")?)?),
                    (None, None) => TurnPoint::default_disconnect(),
                },
            },
            "blackhole-between-turns" => Fault::Blackhole {
                at: TurnPoint::AfterTurnEnd,
            },
            "drop-between-turns" => Fault::Disconnect {
                at: TurnPoint::AfterTurnEnd,
                rst: opt("rst").is_some_and(|v| v != "false"),
            },
            "stall" => Fault::Stall {
                after_frames: value
                    .map(|v| num(Some(v), "frames"))
                    .transpose()?
                    .map(to_u32)
                    .transpose()?
                    .unwrap_or(0),
            },
            "turn-start-delay" => Fault::TurnStartDelay {
                ms: num(value, "milliseconds")?,
            },
            "first-audio-delay" => Fault::FirstAudioDelay {
                ms: num(value, "milliseconds")?,
            },
            "phrase-error" => Fault::PhraseError {
                status: value.unwrap_or("Error").to_owned(),
            },
            "quirks" => Fault::Quirks,
            other => return Err(err(format!("unknown fault {other:?}"))),
        };
        let target = match opt("target") {
            None => Target::Any,
            Some(t) => serde_json::from_value(serde_json::Value::String(t.replace('-', "_")))
                .map_err(|_| err(format!("unknown target {t:?}")))?,
        };
        Ok(Self {
            fault,
            target,
            times: opt_num("times")?.map(to_u32).transpose()?,
            skip: opt_num("skip")?.map(to_u32).transpose()?.unwrap_or(0),
            key: opt("key").map(str::to_owned),
        })
    }
}

fn parse_point(s: &str) -> Option<TurnPoint> {
    let s = s.replace('_', "-").to_ascii_lowercase();
    match s.as_str() {
        "before-turn-start" => Some(TurnPoint::BeforeTurnStart),
        "after-turn-start" => Some(TurnPoint::AfterTurnStart),
        "after-turn-end" | "between-turns" => Some(TurnPoint::AfterTurnEnd),
        _ => s
            .strip_prefix("frames:")
            .and_then(|k| k.parse().ok())
            .map(TurnPoint::AfterFrames),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_syntax() {
        let r: FaultRule = "handshake=429,retry-after=2,times=3,target=tts-ws"
            .parse()
            .expect("valid");
        assert_eq!(
            r.fault,
            Fault::Handshake {
                status: 429,
                retry_after: Some(2)
            }
        );
        assert_eq!((r.times, r.target), (Some(3), Target::TtsWs));
        let r: FaultRule = "close=4429".parse().expect("valid");
        assert!(matches!(
            r.fault,
            Fault::Close {
                code: 4429,
                at: TurnPoint::AfterTurnStart,
                ..
            }
        ));
        let r: FaultRule = "drop,frames=3,rst".parse().expect("valid");
        assert_eq!(
            r.fault,
            Fault::Disconnect {
                at: TurnPoint::AfterFrames(3),
                rst: true
            }
        );
        let r: FaultRule = "drop-between-turns".parse().expect("valid");
        assert!(matches!(
            r.fault,
            Fault::Disconnect {
                at: TurnPoint::AfterTurnEnd,
                ..
            }
        ));
        let r: FaultRule = "blackhole,frames=2".parse().expect("valid");
        assert_eq!(
            r.fault,
            Fault::Blackhole {
                at: TurnPoint::AfterFrames(2)
            }
        );
        let r: FaultRule = "blackhole-between-turns,target=tts-ws"
            .parse()
            .expect("valid");
        assert_eq!(
            (r.fault, r.target),
            (
                Fault::Blackhole {
                    at: TurnPoint::AfterTurnEnd
                },
                Target::TtsWs
            )
        );
        assert!("nonsense".parse::<FaultRule>().is_err());
        assert!("handshake".parse::<FaultRule>().is_err());
        assert!("close=99999".parse::<FaultRule>().is_err());
        let j: FaultRule = r#"{"kind":"stall","after_frames":2,"times":1}"#
            .parse()
            .expect("json");
        assert_eq!(j.fault, Fault::Stall { after_frames: 2 });
        let back: FaultRule = j.to_string().parse().expect("roundtrip");
        assert_eq!(back, j);
        let d: FaultRule =
            r#"{"kind":"disconnect","at":{"after_frames":2},"rst":true,"target":"stt_ws"}"#
                .parse()
                .expect("json");
        assert_eq!(
            (d.fault, d.target),
            (
                Fault::Disconnect {
                    at: TurnPoint::AfterFrames(2),
                    rst: true
                },
                Target::SttWs
            )
        );
    }

    #[test]
    fn take_honours_skip_times_target() {
        let mut plan = FaultPlan::default();
        plan.add(
            FaultRule::new(Fault::Handshake {
                status: 401,
                retry_after: None,
            })
            .skip(1)
            .times(1)
            .target(Target::SttWs),
        );
        let hs = Phase::Handshake;
        assert!(plan.take(hs, Some(Endpoint::TtsWs), None).is_empty());
        assert!(plan.take(hs, Some(Endpoint::SttWs), None).is_empty());
        assert_eq!(plan.take(hs, Some(Endpoint::SttWs), None).len(), 1);
        assert!(plan.rules.is_empty());
        plan.add(FaultRule::new(Fault::Quirks).for_key("a"));
        assert!(
            plan.take(Phase::Turn, Some(Endpoint::TtsWs), Some("b"))
                .is_empty()
        );
        assert_eq!(
            plan.take(Phase::Turn, Some(Endpoint::TtsWs), Some("a"))
                .len(),
            1
        );
        assert_eq!(plan.rules.len(), 1, "persistent rules stay");
    }
}
