//! Every timer the cores asked for, in one table (cf. quinn-proto's `TimerTable`).
//!
//! A core names its timers ([`TimerId`]: an acquire's deadline, a grant's lease); the table keys them by
//! `(algorithm, timer)` because each core names its own. Setting a timer again replaces it, so a timer that
//! was moved (a keepalive) or cancelled never fires. The loop sleeps until [`TimerTable::next`] and then takes
//! what is due with [`TimerTable::pop_due`], earliest first.

use crate::algo::{Algorithm, Millis, TimerId};
use std::collections::{BTreeMap, BTreeSet};

/// The timers of every core of one node.
#[derive(Debug, Default)]
pub(crate) struct TimerTable {
    /// Due time order (ties broken by algorithm and id, so firing order is deterministic).
    by_due: BTreeSet<(Millis, Algorithm, TimerId)>,
    /// When each set timer is due.
    due: BTreeMap<(Algorithm, TimerId), Millis>,
}

impl TimerTable {
    /// Sets `timer` of `algorithm`'s core to fire at `at`, replacing an earlier setting.
    pub(crate) fn set(&mut self, algorithm: Algorithm, timer: TimerId, at: Millis) {
        if let Some(old) = self.due.insert((algorithm, timer), at) {
            self.by_due.remove(&(old, algorithm, timer));
        }
        self.by_due.insert((at, algorithm, timer));
    }

    /// Forgets `timer` (nothing happens if it is not set).
    pub(crate) fn cancel(&mut self, algorithm: Algorithm, timer: TimerId) {
        if let Some(old) = self.due.remove(&(algorithm, timer)) {
            self.by_due.remove(&(old, algorithm, timer));
        }
    }

    /// When `timer` is due, if it is set.
    #[cfg(test)]
    fn get(&self, algorithm: Algorithm, timer: TimerId) -> Option<Millis> {
        self.due.get(&(algorithm, timer)).copied()
    }

    /// The earliest due time.
    pub(crate) fn next(&self) -> Option<Millis> {
        self.by_due.first().map(|(at, _, _)| *at)
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Millis) -> Option<(Algorithm, TimerId)> {
        let &(at, algorithm, timer) = self.by_due.first()?;
        if at > now {
            return None;
        }
        self.by_due.remove(&(at, algorithm, timer));
        self.due.remove(&(algorithm, timer));
        Some((algorithm, timer))
    }

    /// How many timers are set.
    #[cfg(test)]
    fn len(&self) -> usize {
        debug_assert_eq!(self.by_due.len(), self.due.len());
        self.due.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::RequestId;

    const L: Algorithm = Algorithm::Lamport;
    const R: Algorithm = Algorithm::RicartAgrawala;

    fn deadline(r: u64) -> TimerId {
        TimerId::Deadline(RequestId::new(r))
    }

    #[test]
    fn timers_fire_earliest_first_and_only_when_due() {
        let mut t = TimerTable::default();
        t.set(L, deadline(1), Millis::new(30));
        t.set(R, deadline(2), Millis::new(10));
        t.set(L, TimerId::Lease(RequestId::new(3)), Millis::new(20));
        assert_eq!(t.next(), Some(Millis::new(10)));
        assert_eq!(t.pop_due(Millis::new(9)), None);
        assert_eq!(t.pop_due(Millis::new(25)), Some((R, deadline(2))));
        assert_eq!(t.pop_due(Millis::new(25)), Some((L, TimerId::Lease(RequestId::new(3)))));
        assert_eq!(t.pop_due(Millis::new(25)), None);
        assert_eq!(t.next(), Some(Millis::new(30)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn setting_again_moves_a_timer_and_cancel_forgets_it() {
        let mut t = TimerTable::default();
        let lease = TimerId::Lease(RequestId::new(1));
        t.set(L, lease, Millis::new(10));
        t.set(L, lease, Millis::new(50));
        assert_eq!(t.get(L, lease), Some(Millis::new(50)));
        assert_eq!(t.pop_due(Millis::new(20)), None, "the replaced setting is gone");
        // The same id in another core is another timer.
        t.set(R, lease, Millis::new(5));
        t.cancel(R, lease);
        t.cancel(R, lease);
        assert_eq!(t.len(), 1);
        assert_eq!(t.pop_due(Millis::new(50)), Some((L, lease)));
        assert_eq!((t.next(), t.len()), (None, 0));
    }
}
