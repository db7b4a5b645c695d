//! The faults that act on one websocket turn, gathered from the rules that fired when the
//! turn began.

use std::time::Duration;

use crate::faults::{Fault, TurnPoint};
use crate::frame::HeaderStyle;
use crate::session::{Outgoing, Stop};

/// Turn-level faults in effect for one turn.
#[derive(Debug, Default, Clone)]
pub(crate) struct TurnFaults {
    close: Option<(u16, String, TurnPoint)>,
    disconnect: Option<(TurnPoint, bool)>,
    blackhole: Option<TurnPoint>,
    /// Stall after this many frames.
    pub(crate) stall: Option<u32>,
    /// Extra delay before `turn.start`.
    pub(crate) turn_start_delay: Duration,
    /// Extra delay before the first audio frame / result.
    pub(crate) first_audio_delay: Duration,
    /// STT in-band error status.
    pub(crate) phrase_error: Option<String>,
    /// Protocol oddities.
    pub(crate) quirks: bool,
}

impl TurnFaults {
    /// Folds the fired faults into one turn plan (the first close/disconnect/blackhole of
    /// each kind wins; at one point, a close goes before a disconnect before a blackhole).
    pub(crate) fn new(faults: Vec<Fault>) -> Self {
        let mut t = Self::default();
        for f in faults {
            match f {
                Fault::Close { code, reason, at } => {
                    let reason = reason.unwrap_or_else(|| default_reason(code).to_owned());
                    t.close.get_or_insert((code, reason, at));
                }
                Fault::Disconnect { at, rst } => {
                    t.disconnect.get_or_insert((at, rst));
                }
                Fault::Blackhole { at } => {
                    t.blackhole.get_or_insert(at);
                }
                Fault::Stall { after_frames } => {
                    t.stall.get_or_insert(after_frames);
                }
                Fault::TurnStartDelay { ms } => {
                    t.turn_start_delay =
                        t.turn_start_delay.saturating_add(Duration::from_millis(ms));
                }
                Fault::FirstAudioDelay { ms } => {
                    t.first_audio_delay = t
                        .first_audio_delay
                        .saturating_add(Duration::from_millis(ms));
                }
                Fault::PhraseError { status } => {
                    t.phrase_error.get_or_insert(status);
                }
                Fault::Quirks => t.quirks = true,
                _ => {}
            }
        }
        t
    }

    /// The action due at `point`, if any.
    pub(crate) fn action_at(&self, point: TurnPoint) -> Option<Outgoing> {
        if let Some((code, reason, at)) = &self.close
            && *at == point
        {
            return Some(Outgoing::Close(*code, reason.clone()));
        }
        match (self.disconnect, self.blackhole) {
            (Some((at, rst)), _) if at == point => Some(Outgoing::Disconnect { rst }),
            (_, Some(at)) if at == point => Some(Outgoing::Blackhole),
            _ => None,
        }
    }

    /// The action due before the turn starts, as an immediate stop.
    pub(crate) fn stop_before_start(&self) -> Option<Stop> {
        self.action_at(TurnPoint::BeforeTurnStart).map(|o| match o {
            Outgoing::Close(code, reason) => Stop::Close(code, reason),
            Outgoing::Disconnect { rst } => Stop::Disconnect { rst },
            Outgoing::Blackhole => Stop::Blackhole,
            _ => Stop::Gone,
        })
    }

    /// How this turn writes headers.
    pub(crate) fn style(&self) -> HeaderStyle {
        if self.quirks {
            HeaderStyle::LowercaseSpaced
        } else {
            HeaderStyle::Service
        }
    }
}

/// Typical service texts for injected close codes, so a client's handling of the reason
/// is exercised (docs/protocol.md#closes-and-error-codes).
fn default_reason(code: u16) -> &'static str {
    match code {
        4429 => {
            "The request is throttled because you have exceeded the concurrent request limit \
             allowed for your subscription."
        }
        1007 => "Quota exceeded",
        1011 => "Internal server error",
        1013 => "Try again later",
        1000 => "Normal closure",
        1002 => "Protocol violation",
        _ => "Injected close",
    }
}
