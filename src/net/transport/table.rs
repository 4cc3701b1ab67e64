//! The peer table: which node ids the transport has a slot for, which of them have no dial address yet
//! (accepted from an unknown id), and the incarnation floor each removed id leaves behind. No I/O: the
//! transport keeps it behind one lock and starts or stops the tasks the answers call for.

use crate::algo::{Incarnation, NodeId};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Why the acceptor cannot take a handshake from an id that has no slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum Unadmitted {
    /// The id is not in the table and unknown ids are not accepted.
    Unknown,
    /// Unknown ids are accepted, but the table already holds the maximum of not-yet-added ones.
    Limit,
    /// The id was removed, and this incarnation is not newer than the newest one seen before: a removed
    /// member comes back only as a new incarnation.
    Stale,
}

/// What [`PeerTable::add`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Added<S> {
    /// Nothing: the id is this node.
    Me,
    /// A new slot, to be given its address and a link task.
    New(Arc<S>),
    /// A slot that was accepted from an unknown id and had no address: give it one and a link task.
    Addressed(Arc<S>),
    /// A slot with an address and a running link task: only the address changes.
    Known(Arc<S>),
}

/// The slots by node id (ordered, so status lists them in id order).
#[derive(Debug)]
pub(super) struct PeerTable<S> {
    me: NodeId,
    slots: BTreeMap<NodeId, Arc<S>>,
    /// Slots accepted from an unknown id and not added since (no dial address).
    unknown: BTreeSet<NodeId>,
    /// For each removed id, the newest incarnation seen before its removal.
    floors: BTreeMap<NodeId, Incarnation>,
    max_unknown: usize,
}

impl<S> PeerTable<S> {
    /// An empty table for node `me`, holding at most `max_unknown` slots without an address.
    pub(super) fn new(me: NodeId, max_unknown: usize) -> Self {
        PeerTable {
            me,
            slots: BTreeMap::new(),
            unknown: BTreeSet::new(),
            floors: BTreeMap::new(),
            max_unknown,
        }
    }

    /// The slot of `id`, if any.
    pub(super) fn get(&self, id: NodeId) -> Option<&Arc<S>> {
        self.slots.get(&id)
    }

    /// Every slot, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (NodeId, &Arc<S>)> {
        self.slots.iter().map(|(id, s)| (*id, s))
    }

    /// Whether `id` is in the table but has no dial address.
    #[cfg(test)]
    pub(super) fn is_unknown(&self, id: NodeId) -> bool {
        self.unknown.contains(&id)
    }

    /// Handshakes of `id` at or below this incarnation are refused (it was removed after seeing it).
    pub(super) fn floor(&self, id: NodeId) -> Option<Incarnation> {
        self.floors.get(&id).copied()
    }

    /// Adds `id` with an address (`make` builds a new slot from the id's floor), or finds its slot.
    pub(super) fn add(&mut self, id: NodeId, make: impl FnOnce(Option<Incarnation>) -> S) -> Added<S> {
        if id == self.me {
            return Added::Me;
        }
        if let Some(slot) = self.slots.get(&id) {
            return if self.unknown.remove(&id) {
                Added::Addressed(slot.clone())
            } else {
                Added::Known(slot.clone())
            };
        }
        let slot = Arc::new(make(self.floor(id)));
        self.slots.insert(id, slot.clone());
        Added::New(slot)
    }

    /// The slot for a handshake from `id` at `incarnation`: its own, or (with `accept_unknown`) a new one
    /// without an address, within the bound.
    pub(super) fn admit(
        &mut self,
        id: NodeId,
        incarnation: Incarnation,
        accept_unknown: bool,
        make: impl FnOnce(Option<Incarnation>) -> S,
    ) -> Result<Arc<S>, Unadmitted> {
        if let Some(slot) = self.slots.get(&id) {
            return Ok(slot.clone());
        }
        if !accept_unknown || id == self.me {
            return Err(Unadmitted::Unknown);
        }
        let floor = self.floor(id);
        if floor.is_some_and(|f| incarnation <= f) {
            return Err(Unadmitted::Stale);
        }
        if self.unknown.len() >= self.max_unknown {
            return Err(Unadmitted::Limit);
        }
        let slot = Arc::new(make(floor));
        self.slots.insert(id, slot.clone());
        self.unknown.insert(id);
        Ok(slot)
    }

    /// Forgets `id`'s slot; `newest` is the newest incarnation its link saw, which becomes the id's floor
    /// (the floor only rises).
    pub(super) fn remove(
        &mut self,
        id: NodeId,
        newest: impl FnOnce(&S) -> Option<Incarnation>,
    ) -> Option<Arc<S>> {
        let slot = self.slots.remove(&id)?;
        self.unknown.remove(&id);
        let floor = newest(&slot).max(self.floor(id));
        if let Some(f) = floor {
            self.floors.insert(id, f);
        }
        Some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test slot: the floor it was made with.
    #[derive(Debug, PartialEq, Eq)]
    struct Slot(Option<Incarnation>);

    const ME: NodeId = NodeId::new(0);
    const I1: Incarnation = Incarnation::new(1);
    const I2: Incarnation = Incarnation::new(2);

    fn table(max_unknown: usize) -> PeerTable<Slot> {
        PeerTable::new(ME, max_unknown)
    }

    #[test]
    fn add_is_idempotent_and_adding_self_is_a_no_op() {
        let mut t = table(4);
        let n = NodeId::new(7);
        assert!(matches!(t.add(n, Slot), Added::New(_)));
        assert!(matches!(t.add(n, Slot), Added::Known(_)));
        assert_eq!(t.add(ME, Slot), Added::Me);
        assert_eq!(t.iter().map(|(id, _)| id).collect::<Vec<_>>(), [n]);
    }

    #[test]
    fn unknown_ids_are_admitted_only_when_allowed_and_within_the_bound() {
        let mut t = table(2);
        assert_eq!(t.admit(NodeId::new(5), I1, false, Slot).unwrap_err(), Unadmitted::Unknown);
        assert!(t.admit(NodeId::new(5), I1, true, Slot).is_ok());
        assert!(t.admit(NodeId::new(6), I1, true, Slot).is_ok());
        assert_eq!(t.admit(NodeId::new(8), I1, true, Slot).unwrap_err(), Unadmitted::Limit);
        // An id already admitted reconnects within the bound.
        assert!(t.admit(NodeId::new(5), I2, true, Slot).is_ok());
        assert!(t.is_unknown(NodeId::new(5)));
        // Adding one gives it an address and frees its place in the bound.
        assert!(matches!(t.add(NodeId::new(5), Slot), Added::Addressed(_)));
        assert!(!t.is_unknown(NodeId::new(5)));
        assert!(t.admit(NodeId::new(8), I1, true, Slot).is_ok());
        // A known slot is found whatever the flag; self never is.
        assert!(t.admit(NodeId::new(5), I1, false, Slot).is_ok());
        assert_eq!(t.admit(ME, I1, true, Slot).unwrap_err(), Unadmitted::Unknown);
    }

    #[test]
    fn a_removed_id_comes_back_only_as_a_newer_incarnation() {
        let mut t = table(4);
        let n = NodeId::new(3);
        t.add(n, Slot);
        assert!(t.remove(n, |_| Some(I1)).is_some());
        assert!(t.get(n).is_none());
        assert_eq!(t.floor(n), Some(I1));
        assert_eq!(t.admit(n, I1, true, Slot).unwrap_err(), Unadmitted::Stale);
        let Ok(slot) = t.admit(n, I2, true, Slot) else { panic!("a newer incarnation is admitted") };
        assert_eq!(*slot, Slot(Some(I1)), "the new slot carries the floor");
        // A removal that saw nothing newer keeps the floor.
        t.remove(n, |_| None);
        assert_eq!(t.floor(n), Some(I1));
        let Added::New(slot) = t.add(n, Slot) else { panic!("a fresh slot") };
        assert_eq!(*slot, Slot(Some(I1)));
        assert!(t.remove(NodeId::new(9), |_| None).is_none());
    }
}
