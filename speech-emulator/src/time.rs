//! Deadline arithmetic that cannot panic.

use std::time::Duration;

use tokio::time::Instant;

/// `at + d`, or a year after `at` when that overflows. Configured timers and injected
/// delays come from users and may be absurdly large, and `Instant` addition panics on
/// overflow.
pub(crate) fn deadline_after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 86_400))
}
