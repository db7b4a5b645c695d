//! Allocation tiers.

#[cfg(feature = "serde")]
use serde::Serialize;

/// Where an acquired resource came from. Recorded exactly at the moment of hand-out,
/// never inferred afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(Serialize), serde(rename_all = "lowercase"))]
pub enum Tier {
    /// The session already held this resource and got it back.
    Dedicated,
    /// Taken from the pre-warmed idle set, or handed over by another caller who returned
    /// it while this one waited: no connect was paid on this acquire.
    Warm,
    /// Created (and warmed) inline for this acquire: a full connect was paid.
    Cold,
}

impl Tier {
    /// All tiers, in the order reports list them.
    pub const ALL: [Tier; 3] = [Tier::Dedicated, Tier::Warm, Tier::Cold];

    /// The lowercase name used in snapshots, metrics labels and HTTP headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Dedicated => "dedicated",
            Tier::Warm => "warm",
            Tier::Cold => "cold",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
