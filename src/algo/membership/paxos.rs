//! Single-decree Paxos (Lamport, "Paxos Made Simple", 2001) for one epoch: which view follows view `e`.
//!
//! One instance per epoch, no log. The acceptors of the instance that decides view `e+1` are exactly the
//! members of the installed view `e`, each at the incarnation that view lists: a message counts only if its
//! sender's `(id, incarnation)` is a member. A restarted process has a new incarnation and lost every promise
//! its predecessor made, so it must never count as that predecessor's acceptor (the diskless crash-recovery
//! hazard of Michael et al., DISC 2017); it joins as a new member of a later view instead.
//!
//! - Phase 1a/1b: a proposer picks a ballot `(round, id)` above every ballot it has seen and sends PREPARE;
//!   an acceptor promises if the ballot is at least its highest promise (equal: a duplicate) and reports the
//!   highest-ballot value it accepted, if any.
//! - Phase 2a/2b: with promises from a majority the proposer must propose the value of the highest-ballot
//!   accepted report (P2c), or its own value if none; an acceptor accepts unless it promised a higher ballot.
//! - Decided: accepted by a majority at one ballot. The proposer then installs it and tells everyone.
//!
//! The lease wait an acceptor applies before accepting a view that excludes a member lives in
//! [`super::lease`]; this module only keeps the Paxos state.
//!
//! Must never: count a promise or an accept from a non-member or another incarnation, or forget a promise
//! while its process lives.

use super::view::{Epoch, View};
use crate::algo::{Incarnation, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A Paxos ballot: ordered by round, then by the proposer's id (so two proposers never share one).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ballot {
    /// The proposer's attempt number.
    pub round: u64,
    /// The proposer.
    pub node: NodeId,
}

/// An acceptor's state for the instance deciding `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Acceptor {
    /// The epoch being decided (the installed view's plus one).
    pub(super) epoch: Epoch,
    /// The highest ballot promised.
    pub(super) promised: Option<Ballot>,
    /// The highest-ballot value accepted.
    pub(super) accepted: Option<(Ballot, View)>,
}

impl Acceptor {
    pub(super) fn new(epoch: Epoch) -> Self {
        Acceptor { epoch, promised: None, accepted: None }
    }

    /// Phase 1b: `Ok(accepted)` promises `ballot`; `Err(promised)` refuses a ballot below the promise.
    pub(super) fn prepare(&mut self, ballot: Ballot) -> Result<Option<(Ballot, View)>, Ballot> {
        match self.promised {
            Some(p) if ballot < p => Err(p),
            _ => {
                self.promised = Some(ballot);
                Ok(self.accepted.clone())
            }
        }
    }

    /// Whether phase 2b may accept at `ballot` (no higher promise).
    pub(super) fn may_accept(&self, ballot: Ballot) -> Result<(), Ballot> {
        match self.promised {
            Some(p) if ballot < p => Err(p),
            _ => Ok(()),
        }
    }

    /// Phase 2b: accept `view` at `ballot` (the caller checked [`Acceptor::may_accept`]).
    pub(super) fn accept(&mut self, ballot: Ballot, view: View) {
        self.promised = Some(ballot);
        self.accepted = Some((ballot, view));
    }
}

/// Where a proposer's ballot stands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Phase {
    /// Collecting promises: each voter and the value it reported.
    Preparing(BTreeMap<(NodeId, Incarnation), Option<(Ballot, View)>>),
    /// Collecting accepts of `value`.
    Accepting { value: View, voters: Vec<(NodeId, Incarnation)> },
}

/// A proposer's state for one ballot of the instance deciding `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Proposer {
    pub(super) epoch: Epoch,
    pub(super) ballot: Ballot,
    /// The value this proposer wants if no acceptor reports an accepted one.
    pub(super) own: View,
    pub(super) phase: Phase,
}

impl Proposer {
    pub(super) fn new(epoch: Epoch, ballot: Ballot, own: View) -> Self {
        Proposer { epoch, ballot, own, phase: Phase::Preparing(BTreeMap::new()) }
    }

    /// Records a promise (phase 1b) from a member of `base` (the installed view). Returns the value to send
    /// in phase 2a once a majority has promised: the highest-ballot accepted value reported, or `own`.
    pub(super) fn promise(
        &mut self,
        base: &View,
        voter: (NodeId, Incarnation),
        accepted: Option<(Ballot, View)>,
    ) -> Option<View> {
        let Phase::Preparing(promises) = &mut self.phase else { return None };
        if !base.contains(voter.0, voter.1) {
            return None;
        }
        promises.insert(voter, accepted);
        if !base.is_majority(promises.keys().copied()) {
            return None;
        }
        let adopted = promises.values().flatten().max_by_key(|(b, _)| *b).map(|(_, v)| v.clone());
        let value = adopted.unwrap_or_else(|| self.own.clone());
        self.phase = Phase::Accepting { value: value.clone(), voters: Vec::new() };
        Some(value)
    }

    /// Records an accept (phase 2b). Returns the decided value once a majority of `base` accepted.
    pub(super) fn accepted(&mut self, base: &View, voter: (NodeId, Incarnation)) -> Option<View> {
        let Phase::Accepting { value, voters } = &mut self.phase else { return None };
        if !base.contains(voter.0, voter.1) {
            return None;
        }
        if !voters.contains(&voter) {
            voters.push(voter);
        }
        base.is_majority(voters.iter().copied()).then(|| value.clone())
    }
}
