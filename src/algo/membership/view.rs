//! Views: the agreed membership of one epoch, and where a lock name lives in it.
//!
//! A [`View`] is what one consensus decision per epoch produces: an [`Epoch`] and its members, each a stable
//! [`NodeId`] with the [`Incarnation`] of the process admitted and the address it serves on. The same id at a
//! different incarnation is a different member: a restarted (diskless) process is never the member its
//! predecessor was.
//!
//! [`View::home_of`] is rendezvous (highest-random-weight) hashing over the members' ids (Thaler and
//! Ravishankar 1996): each name goes to the member with the highest score `h(name, id)`, so adding a member
//! moves only the names it now wins, and removing one moves only the names it held. The score is FNV-1a 64
//! over `name ‖ 0xff ‖ id (2 bytes, little endian)` followed by a 64-bit finaliser (SplitMix64's), so it is
//! the same on every node, build and platform (never `std`'s randomly seeded hasher). `0xff` never occurs in
//! UTF-8, so no two (name, id) pairs hash the same bytes.
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

    /// The rendezvous home of `lock`: the member with the highest [`rendezvous_score`] (ties, which need a
    /// 64-bit collision, go to the lower id). `None` for an empty view.
    pub fn home_of(&self, lock: &str) -> Option<NodeId> {
        let mut best: Option<(u64, NodeId)> = None;
        for id in self.ids() {
            let score = rendezvous_score(lock, id);
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, id));
            }
        }
        best.map(|(_, id)| id)
    }
}

/// The rendezvous weight of `(lock, id)`: FNV-1a 64 over `lock ‖ 0xff ‖ id.to_le_bytes()`, then
/// SplitMix64's finaliser (FNV alone barely mixes the last bytes, which would correlate the ranking of
/// neighbouring ids across names).
pub fn rendezvous_score(lock: &str, id: NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let id = id.get().to_le_bytes();
    for b in lock.as_bytes().iter().chain([0xffu8].iter()).chain(id.iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}
