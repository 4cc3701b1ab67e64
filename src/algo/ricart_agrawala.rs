//! The Ricart–Agrawala algorithm (G. Ricart, A. K. Agrawala, "An Optimal Algorithm for Mutual Exclusion in
//! Computer Networks", CACM 24(1), 1981): Lamport's algorithm with the `RELEASE` folded into deferred
//! `REPLY`s, one instance per lock, all sharing one logical clock.
//!
//! Assumptions: reliable FIFO links (as for Lamport; every `REPLY` also names the request it answers, so a
//! late reply to a withdrawn request is recognisable); requests are totally ordered by `(timestamp, node id)`.
//!
//! Rules, per lock:
//! 1. `request`: tick, `T = clock`, send `REQUEST(T)` to every other node, await a `REPLY` from each.
//! 2. On `REQUEST(ts)` from `j` (IR2 first): if this node is in the critical section, or requests with
//!    `(T, me) < (ts, j)`, defer the answer; otherwise send `REPLY(req_ts = ts)` at once.
//! 3. On `REPLY(req_ts)` from `j` (IR2 first): if `req_ts` is the pending request's `T`, `j` has agreed; enter
//!    when every other node has. A reply to an older (withdrawn) request is ignored.
//! 4. `release`: send the deferred `REPLY`s. `withdraw` (cancelled before entry): the same, and forget `T`.
//!
//! Restarts: [`Protocol::peer_restarted`] drops the peer's deferred request (it died with the old
//! incarnation) and re-sends the pending request to it if its `REPLY` is still awaited. A `REPLY` the old
//! incarnation already gave stays valid: it was given for a request timestamped before the restart, and the
//! new incarnation's requests are timestamped after its handshake, so they sort later and are deferred.
//!
//! Invariants: per-lock state exists exactly while this node requests or holds the lock; deferred requests
//! exist only then. Fault-free cost: 2(N−1) messages per entry. Never panics on network input.

use super::{
    Algorithm, CoreError, FencingToken, LamportTs, LockName, LockView, NodeId, Output, Peers, Protocol,
    ProtocolMessage, QueueEntry,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A message of the Ricart–Agrawala algorithm (the paper's names).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RaMsg {
    /// The sender wants `lock`; its request is `(ts, sender)`.
    Request {
        /// The lock.
        lock: LockName,
        /// The request's timestamp.
        ts: LamportTs,
    },
    /// The sender agrees that the request `req_ts` of the receiver may enter.
    Reply {
        /// The lock.
        lock: LockName,
        /// The sender's clock when it replied.
        ts: LamportTs,
        /// The timestamp of the request answered, so that a reply to an older request is recognisable.
        req_ts: LamportTs,
    },
}

impl ProtocolMessage for RaMsg {
    fn kind(&self) -> &'static str {
        match self {
            RaMsg::Request { .. } => "REQUEST",
            RaMsg::Reply { .. } => "REPLY",
        }
    }

    fn lock(&self) -> &str {
        match self {
            RaMsg::Request { lock, .. } | RaMsg::Reply { lock, .. } => lock,
        }
    }

    fn timestamp(&self) -> Option<LamportTs> {
        match self {
            RaMsg::Request { ts, .. } | RaMsg::Reply { ts, .. } => Some(*ts),
        }
    }
}

/// One lock that this node requests or holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RaLock {
    /// This node's request.
    own: LamportTs,
    /// Whether this node is in the critical section.
    in_cs: bool,
    /// Peers whose `REPLY` to `own` is still awaited.
    awaiting: BTreeSet<NodeId>,
    /// Requests answered on release: requester and its request's timestamp.
    deferred: BTreeMap<NodeId, LamportTs>,
}

/// One node's state of the Ricart–Agrawala algorithm, for every lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RicartAgrawala {
    me: NodeId,
    n: usize,
    /// The one logical clock, shared by every lock.
    clock: u64,
    /// Locks this node requests or holds.
    locks: BTreeMap<LockName, RaLock>,
    /// The token of this node's current or last entry, per lock (for [`Protocol::view`]).
    last_token: BTreeMap<LockName, FencingToken>,
}

impl RicartAgrawala {
    fn tick(&mut self) -> LamportTs {
        self.clock = self.clock.saturating_add(1);
        LamportTs(self.clock)
    }

    fn receive(&mut self, from: NodeId, ts: LamportTs) -> Result<(), CoreError> {
        if from == self.me || usize::from(from.0) >= self.n {
            return Err(CoreError::UnknownPeer(from));
        }
        self.clock = self.clock.max(ts.0).saturating_add(1);
        Ok(())
    }

    /// Enters `lock` if no reply is awaited any more.
    fn maybe_enter(&mut self, lock: &str, out: &mut Vec<Output<RaMsg>>) {
        let Some(st) = self.locks.get_mut(lock) else { return };
        if !st.in_cs && st.awaiting.is_empty() {
            st.in_cs = true;
            let token = FencingToken::from_ts(st.own, self.me);
            self.last_token.insert(lock.to_owned(), token);
            out.push(Output::Entered { lock: lock.to_owned(), token });
        }
    }

    /// Release and withdrawal: forget the request, answer every deferred one.
    fn leave(&mut self, lock: &str, out: &mut Vec<Output<RaMsg>>) {
        let Some(st) = self.locks.remove(lock) else {
            tracing::warn!(%lock, "release/withdraw without a request; ignored");
            return;
        };
        if st.deferred.is_empty() {
            return;
        }
        let ts = self.tick();
        for (to, req_ts) in st.deferred {
            out.push(Output::Send { to, msg: RaMsg::Reply { lock: lock.to_owned(), ts, req_ts } });
        }
    }
}

impl Protocol for RicartAgrawala {
    type Msg = RaMsg;

    const ALGORITHM: Algorithm = Algorithm::RicartAgrawala;

    fn fresh(me: NodeId, n: usize) -> Self {
        RicartAgrawala { me, n, clock: 0, locks: BTreeMap::new(), last_token: BTreeMap::new() }
    }

    fn request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<RaMsg>>) {
        if self.locks.contains_key(lock) {
            tracing::warn!(%lock, "request while already requesting; ignored");
            return;
        }
        let t = self.tick();
        let awaiting: BTreeSet<NodeId> = peers.others().collect();
        for &to in &awaiting {
            out.push(Output::Send { to, msg: RaMsg::Request { lock: lock.to_owned(), ts: t } });
        }
        self.locks
            .insert(lock.to_owned(), RaLock { own: t, in_cs: false, awaiting, deferred: BTreeMap::new() });
        // A one-node cluster enters at once.
        self.maybe_enter(lock, out);
    }

    fn release(&mut self, lock: &str, _peers: &Peers, out: &mut Vec<Output<RaMsg>>) {
        self.leave(lock, out);
    }

    fn withdraw(&mut self, lock: &str, _peers: &Peers, out: &mut Vec<Output<RaMsg>>) {
        // Replies still on their way for the withdrawn request will name its timestamp and be ignored.
        self.leave(lock, out);
    }

    fn on_message(
        &mut self,
        from: NodeId,
        msg: RaMsg,
        _peers: &mut Peers,
        out: &mut Vec<Output<RaMsg>>,
    ) -> Result<(), CoreError> {
        let me = self.me;
        match msg {
            RaMsg::Request { lock, ts } => {
                self.receive(from, ts)?;
                if let Some(st) = self.locks.get_mut(&lock)
                    && (st.in_cs || (st.own, me) < (ts, from))
                {
                    // A re-sent request replaces the one it repeats.
                    st.deferred.insert(from, ts);
                    return Ok(());
                }
                let reply_ts = self.tick();
                out.push(Output::Send { to: from, msg: RaMsg::Reply { lock, ts: reply_ts, req_ts: ts } });
                Ok(())
            }
            RaMsg::Reply { lock, ts, req_ts } => {
                self.receive(from, ts)?;
                match self.locks.get_mut(&lock) {
                    Some(st) if st.own == req_ts && !st.in_cs => {
                        st.awaiting.remove(&from);
                        self.maybe_enter(&lock, out);
                    }
                    // A reply to a withdrawn or older request, or a duplicate: stale, nothing to do.
                    _ => {}
                }
                Ok(())
            }
        }
    }

    fn observe_clock(&mut self, clock: LamportTs) {
        self.clock = self.clock.max(clock.0).saturating_add(1);
    }

    fn peer_restarted(&mut self, peer: NodeId, _peers: &Peers, out: &mut Vec<Output<RaMsg>>) {
        if peer == self.me {
            return;
        }
        for (lock, st) in self.locks.iter_mut() {
            st.deferred.remove(&peer);
            if !st.in_cs && st.awaiting.contains(&peer) {
                out.push(Output::Send { to: peer, msg: RaMsg::Request { lock: lock.clone(), ts: st.own } });
            }
        }
    }

    fn clock(&self) -> LamportTs {
        LamportTs(self.clock)
    }

    fn view(&self, lock: &str) -> LockView {
        let last_token = self.last_token.get(lock).copied();
        let Some(st) = self.locks.get(lock) else {
            return LockView { last_token, ..LockView::default() };
        };
        // Every deferred request sorts after this node's own.
        let mut queue: Vec<(LamportTs, NodeId)> = st.deferred.iter().map(|(&n, &ts)| (ts, n)).collect();
        queue.push((st.own, self.me));
        queue.sort();
        LockView {
            held_here: st.in_cs,
            holder: st.in_cs.then_some(self.me),
            last_token,
            queue: queue.into_iter().map(|(ts, node)| QueueEntry { node, ts: Some(ts) }).collect(),
            own_request: Some(st.own),
        }
    }

    fn needs_peer(&self, _lock: &str, peer: NodeId) -> bool {
        // An entry needs a REPLY from every other node.
        peer != self.me && usize::from(peer.0) < self.n
    }
}
