//! Ending a turn in flight from outside it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

/// A one-way "stop this turn" flag shared between whoever decides (the service, when its
/// client hangs up or cancels) and the backend running the turn
/// ([`Synthesizer::synthesize_stoppable`](crate::Synthesizer::synthesize_stoppable)).
///
/// Cloning shares the flag. Once stopped it stays stopped: a signal belongs to one turn.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    stopped: AtomicBool,
    notify: Notify,
}

impl StopSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal. Returns `true` for the call that fired it, `false` when it had
    /// already fired (so a caller can tell whether it was the one to stop the turn).
    pub fn stop(&self) -> bool {
        let first = !self.0.stopped.swap(true, Ordering::SeqCst);
        if first {
            self.0.notify.notify_waiters();
        }
        first
    }

    /// Whether the signal has fired.
    pub fn is_stopped(&self) -> bool {
        self.0.stopped.load(Ordering::SeqCst)
    }

    /// Completes once the signal has fired (at once if it already has). Cancel-safe, so it
    /// can sit in a `select!` next to the turn's reads.
    pub async fn stopped(&self) {
        loop {
            let notified = self.0.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the flag is read, so a `stop` between the read and the
            // await still wakes us (`notify_waiters` stores no permit).
            notified.as_mut().enable();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fires_once_and_wakes_every_waiter() {
        let signal = StopSignal::new();
        assert!(!signal.is_stopped());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = signal.clone();
                tokio::spawn(async move { s.stopped().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(signal.stop());
        assert!(!signal.stop(), "a second stop is not the first");
        for w in waiters {
            w.await.expect("waiter finished");
        }
        assert!(signal.is_stopped());
        // Already fired: completes at once.
        signal.stopped().await;
    }
}
