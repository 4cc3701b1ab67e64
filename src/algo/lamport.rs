//! Lamport's mutual-exclusion algorithm (L. Lamport, "Time, Clocks, and the Ordering of Events in a
//! Distributed System", CACM 21(7), 1978, p. 561), one instance per lock, all sharing one logical clock.
//!
//! Assumptions (the paper's): reliable FIFO links between every pair of nodes; requests are totally ordered by
//! `(timestamp, node id)`: the id breaks ties and is part of the algorithm.
//!
//! Clock rules: IR1, the clock ticks before every send event (one tick per broadcast: every copy carries the
//! same timestamp); IR2, on every receipt (and every handshake, [`Protocol::observe_clock`])
//! `clock = max(clock, msg_ts) + 1`.
//!
//! Rules, per lock:
//! 1. `request`: tick, `T = clock`, put `(T, me)` in the lock's queue, send `REQUEST(T)` to every other node.
//! 2. On `REQUEST(ts)` from `j`: put `(ts, j)` in the queue (replacing `j`'s older entry for the lock, which
//!    can only be a re-send) and answer with a timestamped `REPLY`. With [`Lamport::with_ack_elision`] the
//!    `REPLY` is skipped when a message timestamped later than `ts` was already sent to `j` (the paper's
//!    footnote): that message, already on its way, proves to `j` everything the `REPLY` would.
//! 3. `release` (and `withdraw`): remove `(T, me)`, tick, send `RELEASE` to every other node.
//! 4. On `RELEASE` from `j`: remove `j`'s entry *wherever it is in the queue* (not the head: the releaser may
//!    be behind another request, e.g. when it withdrew before entering, or when another node's `RELEASE` is
//!    still in flight).
//! 5. Enter when `(T, me)` heads the queue and a message timestamped later than `T` has arrived from every
//!    other node. "Later" is tracked as `latest[k]`, the highest timestamp received from `k` over messages of
//!    *any* lock: on a FIFO link every message `k` sends after such a message is timestamped later still, so
//!    every request of `k` that precedes `(T, me)` has already arrived. Replies are never counted. The rule is
//!    re-checked after every event, for every lock with a pending request, in lock-name order.
//!
//! Restarts: a restarted peer knows nothing, so [`Protocol::peer_restarted`] drops its entries, forgets its
//! `latest`, and re-sends this node's live requests to it: a pending request with its original timestamp,
//! and a request already *entered* with timestamp 0, so that the new incarnation queues it first whatever
//! its own (possibly lower) timestamps are (an entered request precedes every live request anyway). This
//! relies on the transport delivering a message only to the peer incarnation its sender's core knew when it
//! sent it (messages produced before the core processed a restart must not reach the new incarnation).
//!
//! Invariants: at most one queue entry per node per lock; `(T, me)` is in the queue exactly while this node
//! requests or holds the lock; per-lock state that becomes empty is removed. Fault-free cost: 3(N−1)
//! messages per entry (fewer with ack elision). Never panics on network input: unexpected messages are
//! refused with [`CoreError::Unexpected`] after their timestamp has been taken into account.

use super::{
    Algorithm, CoreError, FencingToken, LamportTs, LockName, LockView, NodeId, Output, Peers, Protocol,
    ProtocolMessage, QueueEntry,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A message of Lamport's algorithm (the paper's names).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LamportMsg {
    /// Rule 1: the sender wants `lock`; its request is `(ts, sender)`.
    Request {
        /// The lock.
        lock: LockName,
        /// The request's timestamp.
        ts: LamportTs,
    },
    /// Rule 2: the timestamped acknowledgement of a `REQUEST`.
    Reply {
        /// The lock of the acknowledged request.
        lock: LockName,
        /// The sender's clock when it replied.
        ts: LamportTs,
    },
    /// Rule 3: the sender left (or no longer wants) `lock`.
    Release {
        /// The lock.
        lock: LockName,
        /// The sender's clock when it released.
        ts: LamportTs,
    },
}

impl ProtocolMessage for LamportMsg {
    fn kind(&self) -> &'static str {
        match self {
            LamportMsg::Request { .. } => "REQUEST",
            LamportMsg::Reply { .. } => "REPLY",
            LamportMsg::Release { .. } => "RELEASE",
        }
    }

    fn lock(&self) -> &str {
        match self {
            LamportMsg::Request { lock, .. }
            | LamportMsg::Reply { lock, .. }
            | LamportMsg::Release { lock, .. } => lock,
        }
    }

    fn timestamp(&self) -> Option<LamportTs> {
        match self {
            LamportMsg::Request { ts, .. }
            | LamportMsg::Reply { ts, .. }
            | LamportMsg::Release { ts, .. } => Some(*ts),
        }
    }
}

/// One lock as this node sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct LockState {
    /// The request queue: at most one entry per node, in the total order `(ts, node)`.
    queue: BTreeSet<(LamportTs, NodeId)>,
    /// This node's request, while it requests or holds the lock.
    own: Option<LamportTs>,
    /// Whether this node is in the critical section.
    in_cs: bool,
}

impl LockState {
    /// Removes `node`'s entry wherever it is (rule 4). Returns its timestamp.
    fn remove_node(&mut self, node: NodeId) -> Option<LamportTs> {
        let entry = self.queue.iter().find(|(_, n)| *n == node).copied()?;
        self.queue.remove(&entry);
        Some(entry.0)
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.own.is_none() && !self.in_cs
    }
}

/// One node's state of Lamport's algorithm, for every lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lamport {
    me: NodeId,
    /// The one logical clock, shared by every lock.
    clock: u64,
    /// Highest timestamp received from each node (any lock, any message type); own slot unused.
    latest: Vec<u64>,
    /// Highest timestamp sent to each node (only consulted with ack elision).
    last_sent: Vec<u64>,
    /// The footnote option: skip a `REPLY` that a message already sent makes redundant.
    ack_elision: bool,
    /// Locks with any state; removed when empty.
    locks: BTreeMap<LockName, LockState>,
    /// The token of this node's current or last entry, per lock (for [`Protocol::view`]).
    last_token: BTreeMap<LockName, FencingToken>,
}

impl Lamport {
    /// A fresh node that uses the paper's footnote: no `REPLY` when a later-timestamped message was already
    /// sent to the requester.
    pub fn with_ack_elision(me: NodeId, n: usize) -> Self {
        Lamport { ack_elision: true, ..Self::fresh(me, n) }
    }

    /// Whether the footnote option is on.
    pub fn ack_elision(&self) -> bool {
        self.ack_elision
    }

    /// The highest timestamp received from `peer` so far (0 if none, or since it restarted).
    pub fn latest_from(&self, peer: NodeId) -> LamportTs {
        LamportTs(self.latest.get(usize::from(peer.0)).copied().unwrap_or(0))
    }

    /// IR1: tick before a send event; returns the send's timestamp.
    fn tick(&mut self) -> LamportTs {
        self.clock = self.clock.saturating_add(1);
        LamportTs(self.clock)
    }

    /// IR2 and the bookkeeping for rule 5, for a message from `from` stamped `ts`.
    fn receive(&mut self, from: NodeId, ts: LamportTs) -> Result<(), CoreError> {
        if from == self.me {
            return Err(CoreError::UnknownPeer(from));
        }
        let slot = self.latest.get_mut(usize::from(from.0)).ok_or(CoreError::UnknownPeer(from))?;
        *slot = (*slot).max(ts.0);
        self.clock = self.clock.max(ts.0).saturating_add(1);
        Ok(())
    }

    fn send(&mut self, to: NodeId, msg: LamportMsg, out: &mut Vec<Output<LamportMsg>>) {
        if let (Some(slot), Some(ts)) = (self.last_sent.get_mut(usize::from(to.0)), msg.timestamp()) {
            *slot = (*slot).max(ts.0);
        }
        out.push(Output::Send { to, msg });
    }

    fn n(&self) -> usize {
        self.latest.len()
    }

    /// Rule 5, checked for every lock with a pending request, in lock-name order.
    fn check_entry(&mut self, out: &mut Vec<Output<LamportMsg>>) {
        let me = self.me;
        let latest = &self.latest;
        for (lock, st) in self.locks.iter_mut() {
            let Some(t) = st.own else { continue };
            if st.in_cs || st.queue.first() != Some(&(t, me)) {
                continue;
            }
            let all_later = latest.iter().enumerate().all(|(k, &seen)| k == usize::from(me.0) || seen > t.0);
            if all_later {
                st.in_cs = true;
                let token = FencingToken::from_ts(t, me);
                self.last_token.insert(lock.clone(), token);
                out.push(Output::Entered { lock: lock.clone(), token });
            }
        }
    }

    /// Rule 3 (release) and withdrawal: remove the own request and tell everyone.
    fn leave(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<LamportMsg>>) {
        let me = self.me;
        let Some(st) = self.locks.get_mut(lock) else {
            tracing::warn!(%lock, "release/withdraw without a request; ignored");
            return;
        };
        let Some(own) = st.own.take() else {
            tracing::warn!(%lock, "release/withdraw without a request; ignored");
            return;
        };
        st.in_cs = false;
        st.queue.remove(&(own, me));
        if st.is_empty() {
            self.locks.remove(lock);
        }
        let ts = self.tick();
        for p in peers.others() {
            self.send(p, LamportMsg::Release { lock: lock.to_owned(), ts }, out);
        }
        // Nothing else this node waits for can become enterable by its own release, but re-checking is
        // cheap and keeps "after every event" literally true.
        self.check_entry(out);
    }
}

impl Protocol for Lamport {
    type Msg = LamportMsg;

    const ALGORITHM: Algorithm = Algorithm::Lamport;

    fn fresh(me: NodeId, n: usize) -> Self {
        Lamport {
            me,
            clock: 0,
            latest: vec![0; n],
            last_sent: vec![0; n],
            ack_elision: false,
            locks: BTreeMap::new(),
            last_token: BTreeMap::new(),
        }
    }

    fn request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<LamportMsg>>) {
        let me = self.me;
        if self.locks.get(lock).is_some_and(|st| st.own.is_some()) {
            tracing::warn!(%lock, "request while already requesting; ignored");
            return;
        }
        let t = self.tick();
        let st = self.locks.entry(lock.to_owned()).or_default();
        st.own = Some(t);
        st.queue.insert((t, me));
        for p in peers.others() {
            self.send(p, LamportMsg::Request { lock: lock.to_owned(), ts: t }, out);
        }
        // A one-node cluster enters at once; otherwise rule 5 cannot hold yet (T exceeds all received).
        self.check_entry(out);
    }

    fn release(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<LamportMsg>>) {
        self.leave(lock, peers, out);
    }

    fn withdraw(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<LamportMsg>>) {
        // A RELEASE removes the request wherever it sits in every queue, so withdrawing is releasing.
        self.leave(lock, peers, out);
    }

    fn on_message(
        &mut self,
        from: NodeId,
        msg: LamportMsg,
        _peers: &mut Peers,
        out: &mut Vec<Output<LamportMsg>>,
    ) -> Result<(), CoreError> {
        let result = match msg {
            LamportMsg::Request { lock, ts } => {
                self.receive(from, ts)?;
                let st = self.locks.entry(lock.clone()).or_default();
                // One entry per node per lock: an entry still present can only be the same request re-sent.
                st.remove_node(from);
                st.queue.insert((ts, from));
                let elide =
                    self.ack_elision && self.last_sent.get(usize::from(from.0)).is_some_and(|&s| s > ts.0);
                if !elide {
                    let reply_ts = self.tick();
                    self.send(from, LamportMsg::Reply { lock, ts: reply_ts }, out);
                }
                Ok(())
            }
            // A REPLY only matters through its timestamp (rule 5); one for a request withdrawn meanwhile is
            // a normal late reply.
            LamportMsg::Reply { ts, .. } => self.receive(from, ts),
            LamportMsg::Release { lock, ts } => {
                self.receive(from, ts)?;
                let removed = match self.locks.get_mut(&lock) {
                    Some(st) => {
                        let removed = st.remove_node(from);
                        if st.is_empty() {
                            self.locks.remove(&lock);
                        }
                        removed
                    }
                    None => None,
                };
                match removed {
                    Some(_) => Ok(()),
                    None => Err(CoreError::Unexpected {
                        from,
                        kind: "RELEASE",
                        reason: "no request from the sender for this lock",
                    }),
                }
            }
        };
        self.check_entry(out);
        result
    }

    fn observe_clock(&mut self, clock: LamportTs) {
        self.clock = self.clock.max(clock.0).saturating_add(1);
    }

    fn peer_restarted(&mut self, peer: NodeId, _peers: &Peers, out: &mut Vec<Output<LamportMsg>>) {
        if peer == self.me {
            return;
        }
        let mut resend = Vec::new();
        self.locks.retain(|lock, st| {
            st.remove_node(peer);
            if let Some(t) = st.own {
                // An entered request goes first in the newcomer's queue (timestamp 0): it precedes every live
                // request, and the newcomer's own requests may carry lower timestamps than `t`.
                let ts = if st.in_cs { LamportTs(0) } else { t };
                resend.push(LamportMsg::Request { lock: lock.clone(), ts });
            }
            !st.is_empty()
        });
        if let Some(slot) = self.latest.get_mut(usize::from(peer.0)) {
            *slot = 0;
        }
        if let Some(slot) = self.last_sent.get_mut(usize::from(peer.0)) {
            // Whatever was sent to the old incarnation is lost with it.
            *slot = 0;
        }
        for msg in resend {
            self.send(peer, msg, out);
        }
        self.check_entry(out);
    }

    fn clock(&self) -> LamportTs {
        LamportTs(self.clock)
    }

    fn view(&self, lock: &str) -> LockView {
        let Some(st) = self.locks.get(lock) else {
            return LockView { last_token: self.last_token.get(lock).copied(), ..LockView::default() };
        };
        LockView {
            held_here: st.in_cs,
            // The head is the holder, or the next one once the holder's RELEASE has arrived.
            holder: if st.in_cs { Some(self.me) } else { st.queue.first().map(|&(_, n)| n) },
            last_token: self.last_token.get(lock).copied(),
            queue: st.queue.iter().map(|&(ts, node)| QueueEntry { node, ts: Some(ts) }).collect(),
            own_request: st.own,
        }
    }

    fn needs_peer(&self, _lock: &str, peer: NodeId) -> bool {
        // Rule 5 needs a message from every other node.
        peer != self.me && usize::from(peer.0) < self.n()
    }
}
