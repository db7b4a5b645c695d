//! Slot accounting: the counts that `max_size` bounds, changed only through permits.
//!
//! Every resource the pool has made and not finished closing is in exactly one place: the
//! idle set (counted by its length), being created, checked out by a plain acquire, bound to
//! a session, or being closed. The counts of the last four live in [`Counts`], whose fields
//! no other module can touch. The only way to raise a count is to take a permit from it, and
//! the only way to lower it is to hand that permit back ([`CreatePermit`], [`CheckedOut`],
//! [`Dedicated`], [`ClosePermit`]). A permit travels with the resource it counts (in the
//! guard, the session slot, the hand-off to a waiter), so a path that forgets to count a
//! resource, or uncounts one twice, does not compile. A permit dropped instead of handed
//! back is a leaked slot: debug builds (every test) panic on it.

/// Panics in debug builds when a permit is dropped rather than handed back, unless the
/// thread is already unwinding (a second panic would abort the test run).
fn dropped_unreturned(what: &str) {
    if cfg!(debug_assertions) && !std::thread::panicking() {
        panic!("a {what} permit was dropped without being handed back: the pool miscounts");
    }
}

macro_rules! permit {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug)]
        #[must_use = "a permit must be handed back to `Counts`, or its slot leaks"]
        pub(crate) struct $name(());

        impl Drop for $name {
            fn drop(&mut self) {
                dropped_unreturned($what);
            }
        }

        impl $name {
            /// Consumes the permit once its count has been lowered.
            fn spend(self) {
                std::mem::forget(self);
            }
        }
    };
}

permit!(
    /// One resource being checked out by a plain acquire (or handed to a waiter).
    CheckedOut,
    "checked-out"
);
permit!(
    /// One resource bound to a session, in a turn or parked.
    Dedicated,
    "dedicated"
);
permit!(
    /// One resource passed to `Manager::close` whose close has not finished.
    ClosePermit,
    "closing"
);

/// One create in progress: for a caller, or (`refill`) for the idle set.
#[derive(Debug)]
#[must_use = "a permit must be handed back to `Counts`, or its slot leaks"]
pub(crate) struct CreatePermit {
    refill: bool,
}

impl Drop for CreatePermit {
    fn drop(&mut self) {
        dropped_unreturned("create");
    }
}

impl CreatePermit {
    fn spend(self) -> bool {
        let refill = self.refill;
        std::mem::forget(self);
        refill
    }
}

/// A session resource taken back for waiting callers, its reset under way: still counted as
/// dedicated until the reset ends.
#[derive(Debug)]
#[must_use = "a permit must be handed back to `Counts`, or its slot leaks"]
pub(crate) struct ReclaimPermit(Dedicated);

/// The counts behind the permits. Read through the accessors; changed only by exchanging
/// permits.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    /// Resources being created, for a caller or for the idle set.
    creating: usize,
    /// The part of `creating` that will go to the idle set (refill and refresh).
    refilling: usize,
    /// Resources handed out by plain acquires.
    checked_out: usize,
    /// Resources bound to sessions, in use or parked.
    dedicated: usize,
    /// The part of `dedicated` being reset for waiting callers.
    reclaiming: usize,
    /// Resources passed to `Manager::close` whose close has not finished: the backend still
    /// sees them, so they still count against `max_size`.
    closing: usize,
}

impl Counts {
    /// Resources being created.
    pub(crate) fn creating(&self) -> usize {
        self.creating
    }

    /// Creates in progress for the idle set.
    pub(crate) fn refilling(&self) -> usize {
        self.refilling
    }

    /// Resources checked out by plain acquires.
    pub(crate) fn checked_out(&self) -> usize {
        self.checked_out
    }

    /// Resources bound to sessions.
    pub(crate) fn dedicated(&self) -> usize {
        self.dedicated
    }

    /// Session resources being reset for waiting callers.
    pub(crate) fn reclaiming(&self) -> usize {
        self.reclaiming
    }

    /// Resources whose close has not finished.
    pub(crate) fn closing(&self) -> usize {
        self.closing
    }

    /// Every resource counted here (the idle set is counted by its length).
    pub(crate) fn total(&self) -> usize {
        self.creating + self.checked_out + self.dedicated + self.closing
    }

    /// A create starts: for the idle set when `refill`, else for a caller.
    pub(crate) fn start_create(&mut self, refill: bool) -> CreatePermit {
        self.creating += 1;
        if refill {
            self.refilling += 1;
        }
        CreatePermit { refill }
    }

    /// A create ended without a resource to count (failed, or its slot was not taken), or
    /// with one that goes on to [`place`](crate::pool::Inner::place), which counts it anew.
    pub(crate) fn end_create(&mut self, permit: CreatePermit) {
        self.creating -= 1;
        if permit.spend() {
            self.refilling -= 1;
        }
    }

    /// A caller's create finished: its resource is the caller's.
    pub(crate) fn created_for_caller(&mut self, permit: CreatePermit) -> CheckedOut {
        self.end_create(permit);
        self.check_out()
    }

    /// A resource leaves the idle set (or a hand-over) for a caller.
    pub(crate) fn check_out(&mut self) -> CheckedOut {
        self.checked_out += 1;
        CheckedOut(())
    }

    /// A checked-out resource comes back (to be placed or closed).
    pub(crate) fn check_in(&mut self, permit: CheckedOut) {
        self.checked_out -= 1;
        permit.spend();
    }

    /// A checked-out resource becomes a session's.
    pub(crate) fn dedicate(&mut self, permit: CheckedOut) -> Dedicated {
        self.check_in(permit);
        self.dedicated += 1;
        Dedicated(())
    }

    /// A session's resource leaves the session (released, evicted, dead).
    pub(crate) fn undedicate(&mut self, permit: Dedicated) {
        self.dedicated -= 1;
        permit.spend();
    }

    /// A parked session resource is taken back for waiting callers; it stays counted as
    /// dedicated until its reset ends.
    pub(crate) fn start_reclaim(&mut self, permit: Dedicated) -> ReclaimPermit {
        self.reclaiming += 1;
        ReclaimPermit(permit)
    }

    /// A reclaimed resource's reset ended: it is no longer the session's.
    pub(crate) fn end_reclaim(&mut self, permit: ReclaimPermit) {
        self.reclaiming -= 1;
        self.undedicate(permit.0);
    }

    /// A resource is passed to `Manager::close`.
    pub(crate) fn start_close(&mut self) -> ClosePermit {
        self.closing += 1;
        ClosePermit(())
    }

    /// A close finished: the backend no longer sees the resource.
    pub(crate) fn end_close(&mut self, permit: ClosePermit) {
        self.closing -= 1;
        permit.spend();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_move_a_resource_between_counts_and_back_to_zero() {
        let mut counts = Counts::default();
        let create = counts.start_create(false);
        assert_eq!((counts.creating(), counts.refilling()), (1, 0));
        let out = counts.created_for_caller(create);
        assert_eq!((counts.creating(), counts.checked_out()), (0, 1));
        let bound = counts.dedicate(out);
        assert_eq!((counts.checked_out(), counts.dedicated()), (0, 1));
        let reclaim = counts.start_reclaim(bound);
        assert_eq!((counts.dedicated(), counts.reclaiming()), (1, 1));
        counts.end_reclaim(reclaim);
        let refill = counts.start_create(true);
        assert_eq!(counts.refilling(), 1);
        counts.end_create(refill);
        let close = counts.start_close();
        assert_eq!(counts.total(), 1);
        counts.end_close(close);
        assert_eq!(counts.total(), 0);
        assert_eq!((counts.refilling(), counts.reclaiming()), (0, 0));
    }

    #[test]
    #[should_panic(expected = "dropped without being handed back")]
    fn a_permit_dropped_instead_of_handed_back_is_caught() {
        let mut counts = Counts::default();
        let _leaked = counts.check_out();
    }
}
