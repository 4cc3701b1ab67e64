//! Ghost state the checker keeps (never read by a core): every view installed anywhere and every value any
//! acceptor accepted, tagged with the `(id, incarnation)` that accepted it, kept across crashes.
//!
//! Must never: forget a record when a process dies, or accept a view a majority did not accept.

use crate::algo::membership::{Ballot, Epoch, View};
use crate::algo::{Incarnation, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Who accepted what: per epoch, per `(ballot, view)`, the accepting `(id, incarnation)`s. A ballot of
/// `None` is an accept whose ballot the driver could not see (it was overwritten within the same event, by
/// the accept of the next epoch after deciding this one); it counts for every ballot of its view.
type Accepts = BTreeMap<Epoch, BTreeMap<(Option<Ballot>, View), BTreeSet<(NodeId, Incarnation)>>>;

#[derive(Clone, Debug, Default)]
pub(super) struct Ghost {
    views: BTreeMap<Epoch, View>,
    accepted: Accepts,
}

impl Ghost {
    /// Records that `voter` accepted `view` at `ballot`.
    pub(super) fn accepted(&mut self, voter: (NodeId, Incarnation), ballot: Option<Ballot>, view: &View) {
        let by_value = self.accepted.entry(view.epoch).or_default();
        if let Some(voters) = by_value.get_mut(&(ballot, view.clone())) {
            voters.insert(voter);
        } else {
            by_value.insert((ballot, view.clone()), BTreeSet::from([voter]));
        }
    }

    /// Records an install. `Ok(true)` for the first install of its epoch, `Ok(false)` for a repeat; `Err`
    /// if it conflicts with another view of its epoch or was not accepted by a majority of its predecessor.
    pub(super) fn installed(&mut self, view: &View) -> Result<bool, String> {
        if let Some(known) = self.views.get(&view.epoch) {
            if known == view {
                return Ok(false);
            }
            return Err(format!("two views for epoch {}: {} and {}", view.epoch, show(known), show(view)));
        }
        if view.epoch > Epoch::FIRST {
            let prev = Epoch::new(view.epoch.get() - 1);
            let Some(base) = self.views.get(&prev) else {
                return Err(format!("view {} installed before any view of epoch {prev}", show(view)));
            };
            let decided = self.accepted.get(&view.epoch).is_some_and(|by_value| {
                let of_view = || by_value.iter().filter(|((_, v), _)| v == view);
                let unseen: Vec<(NodeId, Incarnation)> = of_view()
                    .filter(|((b, _), _)| b.is_none())
                    .flat_map(|(_, s)| s.iter().copied())
                    .collect();
                base.is_majority(unseen.iter().copied())
                    || of_view().any(|((b, _), voters)| {
                        b.is_some() && base.is_majority(voters.iter().chain(&unseen).copied())
                    })
            });
            if !decided {
                let voters: BTreeSet<_> = self
                    .accepted
                    .get(&view.epoch)
                    .into_iter()
                    .flatten()
                    .filter(|((_, v), _)| v == view)
                    .flat_map(|(_, voters)| voters.iter().copied())
                    .collect();
                return Err(format!(
                    "view {} installed, but no ballot of it was accepted by a majority of view {} \
                     (accepted by {voters:?})",
                    show(view),
                    show(base)
                ));
            }
        }
        self.views.insert(view.epoch, view.clone());
        Ok(true)
    }

    /// Every value some acceptor accepted for `epoch` (each may still be decided).
    pub(super) fn accepted_values(&self, epoch: Epoch) -> impl Iterator<Item = &View> {
        self.accepted.get(&epoch).into_iter().flat_map(|by_value| by_value.keys().map(|(_, v)| v))
    }

    /// The newest view installed anywhere.
    pub(super) fn newest(&self) -> Option<&View> {
        self.views.values().next_back()
    }

    /// The first installed view of epoch `≥ from` that does not list `id` at `inc`.
    pub(super) fn excluding(&self, from: Epoch, id: NodeId, inc: Incarnation) -> Option<&View> {
        self.views.range(from..).map(|(_, v)| v).find(|v| !v.contains(id, inc))
    }

    /// How many distinct views were installed.
    pub(super) fn count(&self) -> u64 {
        self.views.len() as u64
    }
}

/// A view as `e7{0#1,2#0,3#2}`.
pub(super) fn show(view: &View) -> String {
    let members: Vec<String> =
        view.members.values().map(|m| format!("{}#{}", m.id, m.incarnation.get())).collect();
    format!("e{}{{{}}}", view.epoch, members.join(","))
}
