//! Views: the agreed membership of one epoch, and where a lock name lives in it.
//!
//! A [`View`] is what one consensus decision per epoch produces: an [`Epoch`] and its members, each a stable
//! [`NodeId`] with the [`Incarnation`] of the process admitted and the address it serves on. The same id at a
//! different incarnation is a different member: a restarted (diskless) process is never the member its
//! predecessor was.
//!
//! [`View::home_of`] is rendezvous (highest-random-weight) hashing over the members' ids (Thaler and
//! Ravishankar 1996): each name goes to the member with the highest score `h(name, id)`, so adding a member
//! moves only the names it now wins, and removing one moves only the names it held. The score is the
//! probable-owner core's `hrw_score` (FNV-1a 64 followed by a 64-bit finaliser), the same on every node, build
//! and platform (never `std`'s randomly seeded hasher).
//!
//! Must never: depend on iteration order of anything but a `BTreeMap`, or on a process-local hash seed.

use crate::algo::{Incarnation, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The number of a view: 1 for the bootstrap view, one more for each decided change.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Epoch(u64);

impl Epoch {
    /// Before any view: a node that has installed nothing.
    pub const NONE: Epoch = Epoch(0);
    /// The bootstrap view's epoch.
    pub const FIRST: Epoch = Epoch(1);

    /// An epoch from its number.
    pub fn new(epoch: u64) -> Self {
        Epoch(epoch)
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One member of a view: a process, named by its stable id and the incarnation admitted.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The stable node id (a StatefulSet ordinal, `DMUTEX_NODE_ID`, …).
    pub id: NodeId,
    /// The process admitted under that id; a restart is a new incarnation and a new member.
    pub incarnation: Incarnation,
    /// Where its peers reach it (`host:port`), for the driver.
    pub addr: String,
}

/// The membership of one epoch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct View {
    /// Which view this is.
    pub epoch: Epoch,
    /// The members by id (one incarnation per id).
    pub members: BTreeMap<NodeId, Member>,
}

impl View {
    /// A view of `members` (a later member with the same id replaces an earlier one).
    pub fn new(epoch: Epoch, members: impl IntoIterator<Item = Member>) -> Self {
        View { epoch, members: members.into_iter().map(|m| (m.id, m)).collect() }
    }

    /// How many members make a majority: more than half.
    pub fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// Whether `id` at exactly `incarnation` is a member.
    pub fn contains(&self, id: NodeId, incarnation: Incarnation) -> bool {
        self.members.get(&id).is_some_and(|m| m.incarnation == incarnation)
    }

    /// Whether the distinct members among `voters` (id and incarnation must both match) are a majority.
    pub fn is_majority(&self, voters: impl IntoIterator<Item = (NodeId, Incarnation)>) -> bool {
        let mut seen: Vec<NodeId> =
            voters.into_iter().filter(|&(id, inc)| self.contains(id, inc)).map(|(id, _)| id).collect();
        seen.sort_unstable();
        seen.dedup();
        seen.len() >= self.majority()
    }

    /// The members of this view that `next` does not keep (gone, or replaced by another incarnation).
    pub fn excluded_by<'a>(&'a self, next: &'a View) -> impl Iterator<Item = &'a Member> + 'a {
        self.members.values().filter(move |m| !next.contains(m.id, m.incarnation))
    }

    /// The member ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.keys().copied()
    }

    /// The rendezvous home of `lock` over this view's member ids: the same function the probable-owner core
    /// uses once it runs inside a view ([`crate::algo::probable_owner::rendezvous_home`]), so the membership
    /// layer and the core always agree on a lock's home. `None` for an empty view.
    pub fn home_of(&self, lock: &str) -> Option<NodeId> {
        let ids: Vec<NodeId> = self.ids().collect();
        crate::algo::probable_owner::rendezvous_home(lock, &ids)
    }
}
