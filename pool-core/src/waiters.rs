//! Waiting callers: the FIFO queue's hand-offs, the guard that makes waiting
//! cancellation-safe, and the one reaper task that enforces every waiter's timeout.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::accounting::{CheckedOut, CreatePermit};
use crate::error::{PoolError, TimeoutDetails};
use crate::in_flight::TaskRunning;
use crate::manager::Manager;
use crate::pool::{Entry, Inner, Lent, State};
use crate::tier::Tier;

/// What a returning resource, a finished create or a freed slot gives a waiting caller.
#[derive(Debug)]
pub(crate) enum Handoff<R> {
    /// A ready resource, with the permit that counts it as checked out for the receiver.
    Resource(Entry<R>, CheckedOut),
    /// Room to create one, with the permit that counts the receiver's create.
    Slot(CreatePermit),
    /// The pool shut down.
    Closed,
    /// The caller's acquire timeout passed (sent by the reaper).
    TimedOut,
}

/// What a queued caller can be handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wants {
    /// A returned resource, or room to create one.
    ResourceOrSlot,
    /// Only a returned resource: the caller is already creating its own, which it races
    /// against returns, and must not be handed a second slot.
    ReturnedOnly,
}

#[derive(Debug)]
pub(crate) struct Waiter<R> {
    pub(crate) id: u64,
    pub(crate) tx: oneshot::Sender<Handoff<R>>,
    /// What this caller can be given.
    pub(crate) wants: Wants,
    /// When the reaper answers this waiter with `TimedOut`; `None` waits forever.
    pub(crate) deadline: Option<Instant>,
}

/// A caller's place in the waiter queue. Dropping it (the acquire future was cancelled or
/// timed out) leaves the queue, and anything handed over in the meantime goes back to the
/// pool: this is what makes waiting cancellation-safe.
pub(crate) struct WaiterGuard<M: Manager> {
    pub(crate) inner: Arc<Inner<M>>,
    pub(crate) id: u64,
    pub(crate) rx: Option<oneshot::Receiver<Handoff<M::Resource>>>,
}

impl<M: Manager> WaiterGuard<M> {
    pub(crate) async fn recv(&mut self) -> Handoff<M::Resource> {
        let Some(rx) = self.rx.as_mut() else {
            return std::future::pending().await;
        };
        let received = rx.await.unwrap_or(Handoff::Closed);
        self.rx = None;
        received
    }
}

impl<M: Manager> Drop for WaiterGuard<M> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        {
            let mut st = self.inner.lock();
            if let Some(position) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(position);
            }
        }
        // Senders act under the state lock, which we just held: after it, nothing new
        // arrives, and whatever arrived before is still in the channel.
        rx.close();
        match rx.try_recv() {
            Ok(Handoff::Resource(entry, permit)) => self.inner.return_entry(entry, permit),
            Ok(Handoff::Slot(permit)) => {
                let mut st = self.inner.lock();
                st.counts.end_create(permit);
                self.inner.slot_freed(&mut st);
            }
            Ok(Handoff::Closed | Handoff::TimedOut) | Err(_) => {}
        }
    }
}

impl<M: Manager> Inner<M> {
    pub(crate) fn register_waiter(
        self: &Arc<Self>,
        st: &mut State<M::Resource>,
        wants: Wants,
        deadline: Option<Instant>,
    ) -> WaiterGuard<M> {
        let (tx, rx) = oneshot::channel();
        let id = st.next_waiter_id;
        st.next_waiter_id += 1;
        st.waiters.push_back(Waiter {
            id,
            tx,
            wants,
            deadline,
        });
        if let Some(deadline) = deadline
            && st.reaper_next.is_none_or(|planned| deadline < planned)
        {
            // One reaper per pool enforces every waiter's timeout: FIFO waiters share one
            // timeout length, so their deadlines arrive in order and a single timer serves
            // them all, instead of a timer registration per wait.
            st.reaper_next = Some(deadline);
            self.start_reaper();
            self.reaper_wake.notify_one();
        }
        WaiterGuard {
            inner: self.clone(),
            id,
            rx: Some(rx),
        }
    }

    pub(crate) fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Relaxed) {
            return;
        }
        // The task holds a strong reference only while it expires waiters, never while it
        // sleeps, so it never keeps a dropped pool alive.
        let weak = Arc::downgrade(self);
        let stop = self.stop.clone();
        let wake = self.reaper_wake.clone();
        let running = TaskRunning::new(weak.clone(), |inner: &Inner<M>| {
            // A deadline planned for a reaper that is gone would keep the next waiter from
            // starting a new one.
            inner.lock().reaper_next = None;
            inner.reaper_started.store(false, Relaxed);
        });
        self.tasks.spawn(async move {
            let _running = running;
            loop {
                let next = {
                    let Some(inner) = weak.upgrade() else {
                        return;
                    };
                    inner.expire_waiters(Instant::now())
                };
                let sleep = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = wake.notified() => {}
                    () = sleep => {}
                }
            }
        });
    }

    /// Answers every waiter whose deadline has passed with `TimedOut` and returns the
    /// earliest remaining deadline (recorded as the reaper's next wake-up).
    pub(crate) fn expire_waiters(&self, now: Instant) -> Option<Instant> {
        let mut st = self.lock();
        let mut next = None::<Instant>;
        let mut index = 0;
        while index < st.waiters.len() {
            match st.waiters[index].deadline {
                Some(deadline) if deadline <= now => {
                    if let Some(waiter) = st.waiters.remove(index) {
                        let _ = waiter.tx.send(Handoff::TimedOut);
                    }
                }
                Some(deadline) => {
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    index += 1;
                }
                None => index += 1,
            }
        }
        st.reaper_next = next;
        next
    }

    /// Waits for a returned resource or a freed slot, in FIFO order.
    pub(crate) async fn wait(
        self: &Arc<Self>,
        mut waiter: WaiterGuard<M>,
        deadline: Option<Instant>,
        waited: Duration,
    ) -> Result<(Lent<M::Resource>, Tier), PoolError<M::Error>> {
        let received = waiter.recv().await;
        match received {
            Handoff::Resource(entry, permit) => Ok(((entry, permit), Tier::Warm)),
            Handoff::Slot(permit) => {
                // We now own a slot, counted by the permit: create, still racing resources
                // that come back meanwhile.
                let racer = {
                    let mut st = self.lock();
                    self.register_waiter(&mut st, Wants::ReturnedOnly, deadline)
                };
                Box::pin(self.create_racing(racer, permit, waited)).await
            }
            Handoff::Closed => Err(PoolError::Closed),
            Handoff::TimedOut => Err(self.timeout_error(waited)),
        }
    }

    pub(crate) fn timeout_error(&self, waited: Duration) -> PoolError<M::Error> {
        let st = self.lock();
        PoolError::Timeout(Box::new(TimeoutDetails {
            pool: self.config.name.clone(),
            waited,
            closing: st.counts.closing(),
            size: st.live(),
            max_size: self.config.max_size,
            idle: st.idle.len(),
            in_use: st.counts.checked_out() + st.counts.dedicated(),
            creating: st.counts.creating(),
            // The reaper already took the timed-out caller off the queue; count it.
            waiting: st.waiters.len() + 1,
            last_error: st.last_error.clone(),
        }))
    }
}
