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
//! Try-lock ([`Protocol::try_request`]): rule 1 with `TRY_REQUEST(T)` instead of `REQUEST(T)`. A receiver
//! treats it as a `REQUEST` (rule 2), except that where rule 2 would defer it, it answers `BUSY(req_ts = T)`
//! at once instead (saying whether it holds the lock) and keeps nothing deferred: the requester withdraws on
//! the first `BUSY` (rule 4's withdraw: it sends the `REPLY`s it deferred meanwhile) and answers busy; with
//! every `REPLY` in, it enters. `REPLY`s and `BUSY`s still on their way for a withdrawn try name its timestamp
//! and are ignored. `BUSY` exists only for tries: an ordinary acquire costs the textbook 2(N−1) messages, and
//! so does a try, won or lost. Concurrent tries on a free lock grant exactly one, the earliest `(ts, node)`:
//! every other try reaches that node while it is pending (its timestamp is the lowest, so it sent its
//! request before it could see any other) and gets `BUSY`, while every node answers the earliest with `REPLY`.
//!
//! Restarts: [`Protocol::peer_restarted`] drops the peer's deferred request (it died with the old
//! incarnation) and re-sends the pending request to it if its `REPLY` is still awaited. A `REPLY` the old
//! incarnation already gave stays valid: it was given for a request timestamped before the restart, and the
//! new incarnation's requests are timestamped after its handshake, so they sort later and are deferred.
//!
//! Views ([`Protocol::members_changed`]): replies are awaited only from the installed view's members. An
//! excluded member's awaited reply and deferred request are dropped; a pending request is sent to every
//! joiner and its reply awaited (an entered one is not: the joiner's requests are stamped after its
//! handshakes, sort later and are deferred). Safe under the membership layer's promise that it excludes a
//! node only after every lease it could have granted ran out (member leases).
//!
//! Invariants: per-lock state exists exactly while this node requests or holds the lock; deferred requests
//! exist only then. Fault-free cost: 2(N−1) messages per entry. Never panics on network input.

use super::{
    Algorithm, CoreError, FencingToken, Incarnation, LamportTs, LockName, LockView, NodeId, Output, Peers,
    Protocol, ProtocolMessage, QueueEntry,
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
    /// A try request ([`Protocol::try_request`]): a `REQUEST` that is answered `BUSY` instead of deferred.
    TryRequest {
        /// The lock.
        lock: LockName,
        /// The request's timestamp.
        ts: LamportTs,
    },
    /// The answer to a `TRY_REQUEST` the sender would have deferred: the try `req_ts` must not wait.
    Busy {
        /// The lock.
        lock: LockName,
        /// The sender's clock when it answered.
        ts: LamportTs,
        /// The timestamp of the try answered.
        req_ts: LamportTs,
        /// Whether the sender is in the critical section (else its own request comes first).
        held: bool,
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
            RaMsg::TryRequest { .. } => "TRY_REQUEST",
            RaMsg::Busy { .. } => "BUSY",
            RaMsg::Reply { .. } => "REPLY",
        }
    }

    fn lock(&self) -> &str {
        match self {
            RaMsg::Request { lock, .. }
            | RaMsg::TryRequest { lock, .. }
            | RaMsg::Busy { lock, .. }
            | RaMsg::Reply { lock, .. } => lock,
        }
    }

    fn timestamp(&self) -> Option<LamportTs> {
        match self {
            RaMsg::Request { ts, .. }
            | RaMsg::TryRequest { ts, .. }
            | RaMsg::Busy { ts, .. }
            | RaMsg::Reply { ts, .. } => Some(*ts),
        }
    }

    fn is_request(&self) -> bool {
        matches!(self, RaMsg::Request { .. } | RaMsg::TryRequest { .. })
    }

    fn is_answer(&self) -> bool {
        matches!(self, RaMsg::Reply { .. } | RaMsg::Busy { .. })
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
    /// Whether `own` is a try request (sent as `TRY_REQUEST`, withdrawn on the first `BUSY`).
    trying: bool,
}

impl RaLock {
    /// The message that asks for `own`.
    fn request_msg(&self, lock: &str) -> RaMsg {
        let (lock, ts) = (lock.to_owned(), self.own);
        if self.trying { RaMsg::TryRequest { lock, ts } } else { RaMsg::Request { lock, ts } }
    }
}

/// One node's state of the Ricart–Agrawala algorithm, for every lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RicartAgrawala {
    me: NodeId,
    /// Every other member: the nodes whose `REPLY` an entry needs.
    others: BTreeSet<NodeId>,
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
        LamportTs::new(self.clock)
    }

    fn receive(&mut self, from: NodeId, ts: LamportTs) -> Result<(), CoreError> {
        if !self.others.contains(&from) {
            return Err(CoreError::UnknownPeer(from));
        }
        self.clock = self.clock.max(ts.get()).saturating_add(1);
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

    /// Rule 1, for an ordinary or a try request.
    fn start_request(&mut self, lock: &str, trying: bool, peers: &Peers, out: &mut Vec<Output<RaMsg>>) {
        if self.locks.contains_key(lock) {
            tracing::warn!(%lock, "request while already requesting; ignored");
            return;
        }
        let own = self.tick();
        let awaiting: BTreeSet<NodeId> = peers.others().collect();
        let st = RaLock { own, in_cs: false, awaiting, deferred: BTreeMap::new(), trying };
        for &to in &st.awaiting {
            out.push(Output::Send { to, msg: st.request_msg(lock) });
        }
        self.locks.insert(lock.to_owned(), st);
        // A one-node cluster enters at once.
        self.maybe_enter(lock, out);
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
        // Oldest request first, the likely next holder: the order of the answers is free.
        let mut answers: Vec<(LamportTs, NodeId)> = st.deferred.into_iter().map(|(n, t)| (t, n)).collect();
        answers.sort_unstable();
        for (req_ts, to) in answers {
            out.push(Output::Send { to, msg: RaMsg::Reply { lock: lock.to_owned(), ts, req_ts } });
        }
    }
}

impl Protocol for RicartAgrawala {
    type Msg = RaMsg;

    const ALGORITHM: Algorithm = Algorithm::RicartAgrawala;

    fn fresh(me: NodeId, n: usize) -> Self {
        let others = (0..n).map(|i| NodeId::new(i as u16)).filter(|&p| p != me).collect();
        RicartAgrawala { me, others, clock: 0, locks: BTreeMap::new(), last_token: BTreeMap::new() }
    }

    fn request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<RaMsg>>) {
        self.start_request(lock, false, peers, out);
    }

    fn try_request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<RaMsg>>) {
        self.start_request(lock, true, peers, out);
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
            RaMsg::TryRequest { lock, ts } => {
                self.receive(from, ts)?;
                let busy =
                    self.locks.get_mut(&lock).filter(|st| st.in_cs || (st.own, me) < (ts, from)).map(|st| {
                        // A re-sent try replaces nothing: it is answered, not deferred.
                        st.deferred.remove(&from);
                        st.in_cs
                    });
                let answer_ts = self.tick();
                let msg = match busy {
                    Some(held) => RaMsg::Busy { lock, ts: answer_ts, req_ts: ts, held },
                    None => RaMsg::Reply { lock, ts: answer_ts, req_ts: ts },
                };
                out.push(Output::Send { to: from, msg });
                Ok(())
            }
            RaMsg::Busy { lock, ts, req_ts, held } => {
                self.receive(from, ts)?;
                match self.locks.get(&lock) {
                    Some(st) if st.own == req_ts && st.trying && !st.in_cs => {
                        // The first BUSY decides: withdraw (answering what was deferred) and say so.
                        self.leave(&lock, out);
                        out.push(Output::Busy { lock, holder: held.then_some(from) });
                    }
                    // For a try already decided or withdrawn: stale, nothing to do.
                    _ => {}
                }
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
        self.clock = self.clock.max(clock.get()).saturating_add(1);
    }

    fn peer_restarted(&mut self, peer: NodeId, _peers: &Peers, out: &mut Vec<Output<RaMsg>>) {
        if peer == self.me {
            return;
        }
        for (lock, st) in self.locks.iter_mut() {
            st.deferred.remove(&peer);
            if !st.in_cs && st.awaiting.contains(&peer) {
                out.push(Output::Send { to: peer, msg: st.request_msg(lock) });
            }
        }
    }

    fn members_changed(
        &mut self,
        removed: &[NodeId],
        added: &[(NodeId, Incarnation)],
        _peers: &Peers,
        out: &mut Vec<Output<RaMsg>>,
    ) {
        for &gone in removed {
            self.others.remove(&gone);
            for st in self.locks.values_mut() {
                // Its REPLY is no longer needed and its deferred request died with its membership.
                st.awaiting.remove(&gone);
                st.deferred.remove(&gone);
            }
        }
        for &(joiner, _) in added {
            if joiner == self.me {
                continue;
            }
            self.others.insert(joiner);
            for (lock, st) in self.locks.iter_mut() {
                // A pending request needs the joiner's agreement too; an entered one does not (the joiner's
                // own requests are stamped after its handshakes, so they sort later and wait for our release).
                if !st.in_cs {
                    st.awaiting.insert(joiner);
                    out.push(Output::Send { to: joiner, msg: st.request_msg(lock) });
                }
            }
        }
        let ready: Vec<LockName> = self
            .locks
            .iter()
            .filter(|(_, st)| !st.in_cs && st.awaiting.is_empty())
            .map(|(l, _)| l.clone())
            .collect();
        for lock in ready {
            self.maybe_enter(&lock, out);
        }
    }

    fn clock(&self) -> LamportTs {
        LamportTs::new(self.clock)
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
        self.others.contains(&peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::lamport::testnet::{Net, simulate};
    use crate::algo::{Action, Engine, Event, Millis, RejectReason, RequestId};

    fn req(lock: &str, ts: u64) -> RaMsg {
        RaMsg::Request { lock: lock.into(), ts: LamportTs::new(ts) }
    }
    fn rep(lock: &str, ts: u64, req_ts: u64) -> RaMsg {
        RaMsg::Reply { lock: lock.into(), ts: LamportTs::new(ts), req_ts: LamportTs::new(req_ts) }
    }
    fn send(to: u16, msg: RaMsg) -> Output<RaMsg> {
        Output::Send { to: NodeId::new(to), msg }
    }
    fn entered(lock: &str, ts: u64, node: u16) -> Output<RaMsg> {
        Output::Entered {
            lock: lock.into(),
            token: FencingToken::from_ts(LamportTs::new(ts), NodeId::new(node)),
        }
    }
    fn ra(me: NodeId, n: usize) -> RicartAgrawala {
        RicartAgrawala::fresh(me, n)
    }
    fn recv(p: &mut RicartAgrawala, from: u16, msg: RaMsg) -> Vec<Output<RaMsg>> {
        let mut peers = Peers::formed(p.me, p.others.len() + 1);
        let mut out = Vec::new();
        p.on_message(NodeId::new(from), msg, &mut peers, &mut out).expect("accepted");
        out
    }
    fn call(
        p: &mut RicartAgrawala,
        f: fn(&mut RicartAgrawala, &str, &Peers, &mut Vec<Output<RaMsg>>),
        lock: &str,
    ) -> Vec<Output<RaMsg>> {
        let peers = Peers::formed(p.me, p.others.len() + 1);
        let mut out = Vec::new();
        f(p, lock, &peers, &mut out);
        out
    }

    #[test]
    fn ra_request_goes_to_every_other_node() {
        let mut e = Engine::new(ra(NodeId::new(0), 3), Peers::formed(NodeId::new(0), 3));
        let mut out = Vec::new();
        e.handle(
            Millis::new(0),
            Event::Acquire { req: RequestId::new(1), lock: "a".into(), deadline: None, ttl: None },
            &mut out,
        )
        .unwrap();
        let sends = |to: u16| Action::Send { to: NodeId::new(to), epoch: 0, msg: req("a", 1) };
        assert_eq!(out, vec![sends(1), sends(2)]);
        assert_eq!(e.view("a").own_request, Some(LamportTs::new(1)));
    }

    /// A node answers at once when it neither holds nor requests the lock; IR2 applies to every receipt.
    #[test]
    fn ra_idle_node_replies_at_once_naming_the_request() {
        let mut p = ra(NodeId::new(0), 3);
        assert_eq!(recv(&mut p, 1, req("a", 5)), vec![send(1, rep("a", 7, 5))]);
        assert_eq!(recv(&mut p, 2, rep("zzz", 3, 9)), vec![], "a reply for nothing is stale");
        assert_eq!(p.clock(), LamportTs::new(8));
        p.observe_clock(LamportTs::new(20));
        assert_eq!(p.clock(), LamportTs::new(21));
        assert!(p.locks.is_empty());
    }

    /// Priority is the total order (ts, id): the lower request is answered, the higher one deferred; equal
    /// timestamps are ordered by node id.
    #[test]
    fn ra_priority_by_timestamp_then_node_id() {
        let mut p = ra(NodeId::new(1), 3);
        assert_eq!(
            call(&mut p, RicartAgrawala::request, "a"),
            vec![send(0, req("a", 1)), send(2, req("a", 1))]
        );
        // (1, 0) < (1, 1): node 0 goes first, answered at once.
        assert_eq!(recv(&mut p, 0, req("a", 1)), vec![send(0, rep("a", 3, 1))]);
        // (1, 1) < (1, 2): deferred.
        assert_eq!(recv(&mut p, 2, req("a", 1)), vec![]);
        // (1, 1) < (9, 0): deferred too.
        let mut q = ra(NodeId::new(1), 3);
        call(&mut q, RicartAgrawala::request, "a");
        assert_eq!(recv(&mut q, 0, req("a", 9)), vec![]);
        assert_eq!(recv(&mut q, 2, req("a", 0)), vec![send(2, rep("a", 12, 0))]);
        let view = q.view("a");
        assert_eq!(view.queue.iter().map(|e| e.node.get()).collect::<Vec<_>>(), vec![1, 0]);
    }

    /// Deferred requests are answered on release, each REPLY naming the request it answers; requests that
    /// arrive in the critical section are deferred whatever their timestamp.
    #[test]
    fn ra_deferred_requests_are_answered_on_release() {
        let mut p = ra(NodeId::new(0), 3);
        call(&mut p, RicartAgrawala::request, "a"); // (1, 0)
        assert_eq!(recv(&mut p, 2, req("a", 4)), vec![]);
        assert_eq!(recv(&mut p, 1, rep("a", 2, 1)), vec![]);
        assert_eq!(recv(&mut p, 2, rep("a", 5, 1)), vec![entered("a", 1, 0)]);
        assert_eq!(recv(&mut p, 1, req("a", 1)), vec![], "in the critical section everything waits");
        assert!(p.view("a").held_here);
        assert_eq!(p.view("a").holder, Some(NodeId::new(0)));
        assert_eq!(
            call(&mut p, RicartAgrawala::release, "a"),
            vec![send(1, rep("a", 9, 1)), send(2, rep("a", 9, 4))]
        );
        assert!(p.locks.is_empty());
        assert_eq!(p.view("a").last_token, Some(FencingToken::from_ts(LamportTs::new(1), NodeId::new(0))));
    }

    /// The deferred answers leave oldest request first: the likely next holder hears first.
    #[test]
    fn ra_release_answers_the_oldest_deferred_request_first() {
        let mut p = ra(NodeId::new(0), 4);
        call(&mut p, RicartAgrawala::request, "a"); // (1, 0)
        for peer in 1..4 {
            recv(&mut p, peer, rep("a", 2, 1));
        }
        assert!(p.view("a").held_here);
        recv(&mut p, 2, req("a", 8));
        recv(&mut p, 1, req("a", 9));
        recv(&mut p, 3, req("a", 7));
        let order: Vec<u16> = call(&mut p, RicartAgrawala::release, "a")
            .into_iter()
            .filter_map(|o| match o {
                Output::Send { to, .. } => Some(to.get()),
                _ => None,
            })
            .collect();
        assert_eq!(order, vec![3, 2, 1]);
    }

    /// A REPLY names the request it answers: replies to a withdrawn request do not count for the next one.
    #[test]
    fn ra_stale_reply_to_a_withdrawn_request_is_ignored() {
        let mut p = ra(NodeId::new(0), 2);
        call(&mut p, RicartAgrawala::request, "a"); // (1, 0)
        assert_eq!(recv(&mut p, 1, req("a", 1)), vec![], "(1, 0) < (1, 1): deferred");
        // Withdrawing answers the deferred request.
        assert_eq!(call(&mut p, RicartAgrawala::withdraw, "a"), vec![send(1, rep("a", 3, 1))]);
        assert_eq!(call(&mut p, RicartAgrawala::request, "a"), vec![send(1, req("a", 4))]);
        assert_eq!(recv(&mut p, 1, rep("a", 3, 1)), vec![], "answers (1, 0), not (4, 0)");
        assert_eq!(recv(&mut p, 1, rep("a", 7, 4)), vec![entered("a", 4, 0)]);
    }

    #[test]
    fn ra_peer_restart_drops_its_deferred_request_and_resends_ours_if_unanswered() {
        let mut p = ra(NodeId::new(0), 3);
        call(&mut p, RicartAgrawala::request, "a"); // (1, 0)
        call(&mut p, RicartAgrawala::request, "b"); // (2, 0)
        recv(&mut p, 1, req("a", 7)); // deferred
        recv(&mut p, 1, rep("b", 8, 2)); // node 1 agreed to b; a still awaits it
        recv(&mut p, 2, rep("b", 8, 2)); // b entered
        recv(&mut p, 1, req("b", 9)); // deferred in the critical section
        let peers = Peers::formed(NodeId::new(0), 3);
        let mut out = Vec::new();
        p.peer_restarted(NodeId::new(1), &peers, &mut out);
        assert_eq!(out, vec![send(1, req("a", 1))]);
        assert!(p.locks.values().all(|st| st.deferred.is_empty()));
        // The old incarnation's requests died with it: releasing answers nobody.
        assert_eq!(call(&mut p, RicartAgrawala::release, "b"), vec![]);
    }

    #[test]
    fn ra_engine_waiters_fifo_and_cancel() {
        let mut net = Net::new(2, ra);
        net.acquire(0, 1, "a");
        net.acquire(0, 2, "a");
        let acquire = Event::Acquire {
            req: RequestId::new(3),
            lock: "a".into(),
            deadline: Some(Millis::new(10)),
            ttl: None,
        };
        net.handle(0, acquire);
        net.acquire(1, 4, "a");
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(
            net.handle(0, Event::Cancel { req: RequestId::new(3) }),
            vec![
                Action::CancelTimer { timer: crate::algo::TimerId::Deadline(RequestId::new(3)) },
                Action::Rejected { req: RequestId::new(3), reason: RejectReason::Cancelled },
            ]
        );
        for (node, r) in [(0, 1), (1, 4), (0, 2)] {
            net.release(node, r);
            net.deliver_all();
        }
        let order: Vec<u64> = net.grants.iter().map(|g| g.1.get()).collect();
        assert_eq!(order, vec![1, 4, 2], "node 1 is served between node 0's two local waiters");
    }

    #[test]
    fn ra_withdraw_leaves_no_state_anywhere() {
        let mut net = Net::new(3, ra);
        net.acquire(1, 1, "a");
        net.deliver_all();
        net.acquire(0, 2, "a");
        net.acquire(2, 3, "a");
        net.deliver_all();
        net.handle(0, Event::Cancel { req: RequestId::new(2) });
        net.handle(2, Event::Cancel { req: RequestId::new(3) });
        net.release(1, 1);
        net.deliver_all();
        for e in &net.engines {
            assert!(e.protocol().locks.is_empty(), "{:?}", e.protocol());
        }
        assert_eq!(net.grants.len(), 1);
    }

    #[test]
    fn ra_costs_2_n_minus_1_messages_per_entry() {
        for n in [1usize, 2, 3, 5] {
            let mut net = Net::new(n, ra);
            net.sequential_entries(2, "a");
            assert_eq!(net.sent, 2 * n * 2 * (n - 1), "n = {n}");
        }
    }

    #[test]
    fn ra_unknown_sender_is_refused() {
        let mut p = ra(NodeId::new(0), 2);
        let mut peers = Peers::formed(NodeId::new(0), 2);
        let mut out = Vec::new();
        assert_eq!(
            p.on_message(NodeId::new(5), req("a", 1), &mut peers, &mut out),
            Err(CoreError::UnknownPeer(NodeId::new(5)))
        );
        assert_eq!(p.on_message(NodeId::new(1), rep("a", u64::MAX, 0), &mut peers, &mut out), Ok(()));
        assert_eq!(p.clock(), LamportTs::new(u64::MAX));
        assert!(out.is_empty());
        assert!(
            p.needs_peer("a", NodeId::new(1))
                && !p.needs_peer("a", NodeId::new(0))
                && !p.needs_peer("a", NodeId::new(2))
        );
    }

    #[test]
    fn ra_random_interleavings_keep_mutual_exclusion_and_serve_everyone() {
        for seed in 0..300 {
            let net = simulate(ra, 3, seed, 400, false, false);
            assert_eq!(net.refused, 0, "seed {seed}");
            simulate(ra, 4, seed, 400, false, false);
        }
    }

    /// A view change: the excluded node's awaited reply and deferred request go; a joiner gets the pending
    /// request and its reply is awaited; an entered request is not re-sent (the joiner's come later anyway).
    #[test]
    fn ra_view_change_drops_the_excluded_and_asks_the_joiner() {
        let mut p = ra(NodeId::new(0), 3);
        let mut out = call(&mut p, RicartAgrawala::request, "a");
        call(&mut p, RicartAgrawala::request, "b");
        recv(&mut p, 2, req("a", 9));
        recv(&mut p, 1, rep("b", 10, 2));
        let view = Peers::formed(NodeId::new(0), 1);
        out.clear();
        p.members_changed(&[NodeId::new(2)], &[(NodeId::new(7), Incarnation::new(0))], &view, &mut out);
        assert_eq!(out, vec![send(7, req("a", 1)), send(7, req("b", 2))]);
        assert_eq!(p.view("a").queue.len(), 1, "node 2's deferred request is dropped");
        assert!(!p.needs_peer("a", NodeId::new(2)) && p.needs_peer("a", NodeId::new(7)));
        // "b" had node 1's reply; it still waits for the joiner's.
        assert_eq!(recv(&mut p, 7, rep("b", 12, 2)), vec![entered("b", 2, 0)]);
    }

    fn locked(node: usize, req: u64, holder: Option<u16>) -> (usize, RequestId, Option<NodeId>) {
        (node, RequestId::new(req), holder.map(NodeId::new))
    }

    /// Try-lock on a free lock: `TRY_REQUEST` is answered `REPLY` by everyone, the try enters; 2(N−1).
    #[test]
    fn ra_try_on_a_free_lock_enters_with_every_reply() {
        let mut net = Net::new(3, ra);
        let out = net.try_acquire(0, 1, "a");
        assert!(
            out.iter().all(|a| matches!(a, Action::Send { msg: RaMsg::TryRequest { .. }, .. })),
            "{out:?}"
        );
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(net.sent, 4);
        assert!(net.locked.is_empty());
    }

    /// Try-lock on a held lock: the holder answers `BUSY` (held) at once instead of deferring, and keeps
    /// nothing deferred: its release later sends no reply to the withdrawn try.
    #[test]
    fn ra_try_on_a_held_lock_is_locked_naming_the_holder() {
        let mut net = Net::new(3, ra);
        net.acquire(1, 1, "a");
        net.deliver_all();
        let before = net.sent;
        net.try_acquire(0, 2, "a");
        net.deliver_all();
        assert_eq!(net.locked, vec![locked(0, 2, Some(1))]);
        assert_eq!(net.sent - before, 4, "TRY_REQUEST to each, one BUSY and one REPLY");
        assert_eq!(net.engines[1].view("a").queue.len(), 1, "the holder deferred nothing");
        let before = net.sent;
        net.release(1, 1);
        net.deliver_all();
        assert_eq!(net.sent, before, "no REPLY owed to the withdrawn try");
        assert_eq!(net.refused, 0);
    }

    /// Try-lock behind an earlier request that has not entered yet: `BUSY` from that requester (not held).
    #[test]
    fn ra_try_behind_an_earlier_request_is_locked() {
        let mut net = Net::new(3, ra);
        net.acquire(1, 1, "a"); // (1, N1)
        net.deliver(1, 0); // N0 replies; its clock passes 1
        net.try_acquire(0, 2, "a"); // stamped later than (1, N1)
        net.deliver(0, 1); // N0's REPLY: N1 still waits for N2's
        net.deliver(0, 1); // the TRY_REQUEST meets N1's earlier, not yet entered, request
        net.deliver(1, 0);
        assert_eq!(net.locked, vec![locked(0, 2, None)], "BUSY from a requester that does not hold");
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![1]);
    }

    /// Try-lock, concurrent tries on a free lock: exactly one wins, the earliest `(ts, node)`.
    #[test]
    fn ra_concurrent_tries_grant_exactly_the_earliest() {
        let mut net = Net::new(3, ra);
        for i in 0..3 {
            net.try_acquire(i, 10 + i as u64, "a");
        }
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(net.locked.iter().map(|l| l.0).collect::<Vec<_>>(), vec![1, 2]);
        net.release(0, 10);
        net.deliver_all();
        net.acquire(2, 20, "a");
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![2], "the lost tries left no deferred state behind");
        assert_eq!(net.refused, 0);
    }

    /// Try-lock: a `REPLY` that arrives after the try was withdrawn on a `BUSY` names the withdrawn
    /// timestamp and changes nothing; the node's next (ordinary) request still waits for the holder.
    #[test]
    fn ra_late_reply_after_a_lost_try_is_harmless() {
        let mut net = Net::new(3, ra);
        net.acquire(1, 1, "a");
        net.deliver_all();
        net.try_acquire(0, 2, "a");
        net.deliver(0, 1); // the holder answers BUSY
        net.deliver(0, 2); // node 2 answers REPLY
        net.deliver(1, 0); // BUSY first: withdrawn
        assert_eq!(net.locked, vec![locked(0, 2, Some(1))]);
        net.acquire(0, 3, "a");
        net.deliver(2, 0); // the late REPLY to the try
        assert_eq!(net.holders("a"), vec![1], "a stale REPLY does not count for the new request");
        net.release(1, 1);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(net.refused, 0);
    }

    /// Ordinary acquires never cause a `BUSY`: a `REQUEST` that meets a holder is deferred as in the paper.
    #[test]
    fn ra_ordinary_requests_are_deferred_never_busy() {
        let mut p = ra(NodeId::new(0), 2);
        call(&mut p, RicartAgrawala::request, "a");
        assert_eq!(recv(&mut p, 1, req("a", 5)), vec![]);
        let out = recv(&mut p, 1, RaMsg::TryRequest { lock: "a".into(), ts: LamportTs::new(6) });
        assert!(matches!(&out[..], [Output::Send { msg: RaMsg::Busy { held: false, .. }, .. }]), "{out:?}");
    }

    #[test]
    fn ra_random_interleavings_with_restarts() {
        for seed in 0..300 {
            simulate(ra, 3, seed, 500, true, false);
            simulate(ra, 3, seed, 500, true, true);
        }
    }
}
