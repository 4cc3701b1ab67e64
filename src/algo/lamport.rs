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
//! Try-lock ([`Protocol::try_request`]): rule 1 as usual, and the request is decided at the moment rule 5's
//! second condition holds (a message timestamped later than `T` from every other member): if `(T, me)` heads
//! the queue, enter; otherwise withdraw at once (rule 3's `RELEASE`, so every queue drops it) and answer
//! busy, naming the node at the head of the queue. At that moment every request that precedes `(T, me)` in
//! the total order has arrived (the argument of rule 5), so the try loses exactly when an earlier request
//! is still live: concurrent tries on a free lock grant exactly one, the earliest `(ts, node)`. Cost: the
//! usual 3(N−1) messages, won or lost; the messages are the ordinary ones (a peer cannot tell a try).
//!
//! Restarts: a restarted peer knows nothing, so [`Protocol::peer_restarted`] drops its entries, forgets its
//! `latest`, and re-sends this node's live requests to it: a pending request with its original timestamp,
//! and a request already *entered* with timestamp 0, so that the new incarnation queues it first whatever
//! its own (possibly lower) timestamps are (an entered request precedes every live request anyway). The
//! re-sends go out in timestamp order, so that rule 5 at the peer may still read any message as proof for
//! everything stamped below it. This relies on the transport delivering a message only to the peer
//! incarnation its sender's core knew when it sent it (messages produced before the core processed a restart
//! must not reach the new incarnation). Fencing tokens keep growing across a restart only if the peers'
//! handshakes to the new incarnation carry clocks read after their cores processed the restart.
//!
//! Views ([`Protocol::members_changed`]): rule 5 and the queues run over the installed view's members only.
//! An excluded member's queue entries and its `latest` are dropped, so a request waiting for it, or behind
//! its entry, proceeds; a joiner gets this node's live requests exactly as a restarted peer does. Safe under
//! the membership layer's promise that it excludes a node only after every lease it could have granted ran
//! out (member leases): the excluded node then holds and requests nothing. A joiner's requests sort after
//! every live one only if its handshakes carry clocks read after the members installed the view.
//!
//! Invariants: at most one queue entry per node per lock; `(T, me)` is in the queue exactly while this node
//! requests or holds the lock; per-lock state that becomes empty is removed. Fault-free cost: 3(N−1)
//! messages per entry (fewer with ack elision). Never panics on network input: unexpected messages are
//! refused with [`CoreError::Unexpected`] after their timestamp has been taken into account.

use super::{
    Algorithm, CoreError, FencingToken, Incarnation, LamportTs, LockName, LockView, NodeId, Output, Peers,
    Protocol, ProtocolMessage, QueueEntry,
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

    fn is_request(&self) -> bool {
        matches!(self, LamportMsg::Request { .. })
    }

    fn is_answer(&self) -> bool {
        matches!(self, LamportMsg::Reply { .. })
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
    /// Whether `own` is a try request: decided (enter or busy) as soon as rule 5 can decide.
    trying: bool,
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

/// The timestamps exchanged with one other member.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
struct PeerClock {
    /// Highest timestamp received from it (any lock, any message type): `latest[k]` of rule 5.
    latest: u64,
    /// Highest timestamp sent to it (only consulted with ack elision).
    last_sent: u64,
}

/// One node's state of Lamport's algorithm, for every lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Lamport {
    me: NodeId,
    /// The one logical clock, shared by every lock.
    clock: u64,
    /// Every other member: what was last received from it and sent to it. Rule 5 runs over these only.
    peers: BTreeMap<NodeId, PeerClock>,
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
    pub(crate) fn ack_elision(&self) -> bool {
        self.ack_elision
    }

    /// The highest timestamp received from `peer` so far (0 if none, or since it restarted).
    #[cfg(test)]
    pub(crate) fn latest_from(&self, peer: NodeId) -> LamportTs {
        LamportTs::new(self.peers.get(&peer).map_or(0, |p| p.latest))
    }

    /// IR1: tick before a send event; returns the send's timestamp.
    fn tick(&mut self) -> LamportTs {
        self.clock = self.clock.saturating_add(1);
        LamportTs::new(self.clock)
    }

    /// IR2 and the bookkeeping for rule 5, for a message from `from` stamped `ts`.
    fn receive(&mut self, from: NodeId, ts: LamportTs) -> Result<(), CoreError> {
        if from == self.me {
            return Err(CoreError::UnknownPeer(from));
        }
        let slot = self.peers.get_mut(&from).ok_or(CoreError::UnknownPeer(from))?;
        slot.latest = slot.latest.max(ts.get());
        self.clock = self.clock.max(ts.get()).saturating_add(1);
        Ok(())
    }

    fn send(&mut self, to: NodeId, msg: LamportMsg, out: &mut Vec<Output<LamportMsg>>) {
        if let (Some(slot), Some(ts)) = (self.peers.get_mut(&to), msg.timestamp()) {
            slot.last_sent = slot.last_sent.max(ts.get());
        }
        out.push(Output::Send { to, msg });
    }

    /// Rule 5, checked for every lock with a pending request, in lock-name order. A try request that rule 5
    /// can decide but that is not at the head loses: it is withdrawn (rule 3) and answered busy.
    fn check_entry(&mut self, out: &mut Vec<Output<LamportMsg>>) {
        let me = self.me;
        let peers = &self.peers;
        let mut lost: Vec<(LockName, Option<NodeId>)> = Vec::new();
        for (lock, st) in self.locks.iter_mut() {
            let Some(t) = st.own else { continue };
            if st.in_cs {
                continue;
            }
            let at_head = st.queue.first() == Some(&(t, me));
            if !at_head && !st.trying {
                continue;
            }
            let all_later = peers.values().all(|p| p.latest > t.get());
            if !all_later {
                continue;
            }
            if at_head {
                st.in_cs = true;
                st.trying = false;
                let token = FencingToken::from_ts(t, me);
                self.last_token.insert(lock.clone(), token);
                out.push(Output::Entered { lock: lock.clone(), token });
            } else {
                lost.push((lock.clone(), st.queue.first().map(|&(_, n)| n)));
            }
        }
        for (lock, holder) in lost {
            self.withdraw_lost_try(&lock, out);
            out.push(Output::Busy { lock, holder });
        }
    }

    /// Withdraws a try that lost: rule 3 without the re-check (the caller is the check).
    fn withdraw_lost_try(&mut self, lock: &str, out: &mut Vec<Output<LamportMsg>>) {
        let me = self.me;
        let Some(st) = self.locks.get_mut(lock) else { return };
        let Some(own) = st.own.take() else { return };
        st.trying = false;
        st.queue.remove(&(own, me));
        let order: Vec<NodeId> = self.peers.keys().copied().collect();
        if st.is_empty() {
            self.locks.remove(lock);
        }
        let ts = self.tick();
        for p in order {
            self.send(p, LamportMsg::Release { lock: lock.to_owned(), ts }, out);
        }
    }

    /// Sends this node's live requests to a peer that knows none of them (restarted or joined): a pending
    /// request with its timestamp, an entered one with timestamp 0 so that it goes first in the newcomer's
    /// queue (it precedes every live request, and the newcomer's own requests may carry lower timestamps).
    fn resend_live_requests(&mut self, peer: NodeId, out: &mut Vec<Output<LamportMsg>>) {
        let mut resend: Vec<LamportMsg> = self
            .locks
            .iter()
            .filter_map(|(lock, st)| {
                let t = st.own?;
                let ts = if st.in_cs { LamportTs::new(0) } else { t };
                Some(LamportMsg::Request { lock: lock.clone(), ts })
            })
            .collect();
        // In timestamp order, not lock order: rule 5 at the peer reads a message stamped `t` as proof that
        // every request of ours stamped below `t` has arrived, whatever its lock.
        resend.sort_by_key(|msg| msg.timestamp());
        for msg in resend {
            self.send(peer, msg, out);
        }
    }

    /// Rule 1, for an ordinary or a try request.
    fn start_request(&mut self, lock: &str, trying: bool, peers: &Peers, out: &mut Vec<Output<LamportMsg>>) {
        let me = self.me;
        if self.locks.get(lock).is_some_and(|st| st.own.is_some()) {
            tracing::warn!(%lock, "request while already requesting; ignored");
            return;
        }
        let t = self.tick();
        let st = self.locks.entry(lock.to_owned()).or_default();
        st.own = Some(t);
        st.trying = trying;
        st.queue.insert((t, me));
        for p in peers.others() {
            self.send(p, LamportMsg::Request { lock: lock.to_owned(), ts: t }, out);
        }
        // A one-node cluster enters at once; otherwise rule 5 cannot hold yet (T exceeds all received).
        self.check_entry(out);
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
        st.trying = false;
        st.queue.remove(&(own, me));
        // A broadcast's order is free: the waiters hear it first, in queue order, so the RELEASE that lets the
        // next holder enter leaves before the ones that only update queues.
        let mut order: Vec<NodeId> = st.queue.iter().map(|&(_, n)| n).collect();
        let rest: Vec<NodeId> = peers.others().filter(|p| !order.contains(p)).collect();
        order.extend(rest);
        if st.is_empty() {
            self.locks.remove(lock);
        }
        let ts = self.tick();
        for p in order {
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
            peers: (0..n)
                .map(|i| NodeId::new(i as u16))
                .filter(|&p| p != me)
                .map(|p| (p, PeerClock::default()))
                .collect(),
            ack_elision: false,
            locks: BTreeMap::new(),
            last_token: BTreeMap::new(),
        }
    }

    fn request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<LamportMsg>>) {
        self.start_request(lock, false, peers, out);
    }

    fn try_request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<LamportMsg>>) {
        self.start_request(lock, true, peers, out);
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
                let elide = self.ack_elision && self.peers.get(&from).is_some_and(|p| p.last_sent > ts.get());
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
        self.clock = self.clock.max(clock.get()).saturating_add(1);
    }

    fn peer_restarted(&mut self, peer: NodeId, _peers: &Peers, out: &mut Vec<Output<LamportMsg>>) {
        if peer == self.me {
            return;
        }
        self.locks.retain(|_, st| {
            st.remove_node(peer);
            !st.is_empty()
        });
        if let Some(slot) = self.peers.get_mut(&peer) {
            // Whatever was sent to the old incarnation is lost with it.
            *slot = PeerClock::default();
        }
        self.resend_live_requests(peer, out);
        self.check_entry(out);
    }

    fn members_changed(
        &mut self,
        removed: &[NodeId],
        added: &[(NodeId, Incarnation)],
        _peers: &Peers,
        out: &mut Vec<Output<LamportMsg>>,
    ) {
        for &gone in removed {
            if gone == self.me {
                continue;
            }
            self.peers.remove(&gone);
            self.locks.retain(|_, st| {
                st.remove_node(gone);
                !st.is_empty()
            });
        }
        for &(joiner, _) in added {
            if joiner == self.me {
                continue;
            }
            // A joiner knows nothing: it gets this node's live requests exactly as a restarted peer does.
            self.peers.insert(joiner, PeerClock::default());
            self.resend_live_requests(joiner, out);
        }
        // Rule 5 over the new members: an excluded node no longer has to be heard from.
        self.check_entry(out);
    }

    fn clock(&self) -> LamportTs {
        LamportTs::new(self.clock)
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
        self.peers.contains_key(&peer)
    }
}

/// A test network of engines: per-link FIFO queues, handshakes, restarts, and a seeded random simulation.
/// Shared by the tests of every Lamport-style core.
#[cfg(test)]
pub(crate) mod testnet {
    use crate::algo::{
        Action, Engine, Event, FencingToken, Incarnation, LamportTs, LockName, Millis, NodeId, Peers,
        Protocol, RejectReason, RequestId, TimerId,
    };
    use std::collections::{BTreeMap, VecDeque};

    /// What travels on a link.
    #[derive(Clone, Debug)]
    enum Item<M> {
        /// A handshake. `to_inc: None` is a restart announcement (any incarnation of the receiver takes it);
        /// `Some` answers the announcement of that incarnation.
        Hello { incarnation: Incarnation, clock: LamportTs, to_inc: Option<Incarnation> },
        /// A protocol message with the sender's incarnation and the receiver's incarnation the sender's core
        /// knew when it sent it: the transport never hands a message to a later incarnation.
        Msg { from_inc: Incarnation, to_inc: Option<Incarnation>, epoch: u64, msg: M },
    }

    /// N engines connected by reliable FIFO links.
    pub(crate) struct Net<P: Protocol> {
        pub engines: Vec<Engine<P>>,
        make: fn(NodeId, usize) -> P,
        incarnations: Vec<Incarnation>,
        links: BTreeMap<(usize, usize), VecDeque<Item<P::Msg>>>,
        /// Virtual time.
        pub now: Millis,
        /// Protocol messages sent so far.
        pub sent: usize,
        /// Every grant, in order: node, request, lock, token.
        pub grants: Vec<(usize, RequestId, LockName, FencingToken)>,
        /// Events the engines refused.
        pub refused: usize,
        /// Every try answered locked, in order: node, request, the holder named.
        pub locked: Vec<(usize, RequestId, Option<NodeId>)>,
        /// Deadline timers set and not cancelled: (node, request) -> when.
        pub timers: BTreeMap<(usize, RequestId), Millis>,
        /// Panic when a lock's token does not grow from one grant to the next.
        pub check_tokens: bool,
        /// Peers send their handshake to a restarted node at once, with their clock at that moment, instead
        /// of after their core has processed the restart: the node may join with a clock lower than requests
        /// its peers make (and even enter) before they learn of the restart.
        pub early_hello: bool,
    }

    impl<P: Protocol> Net<P> {
        /// A formed cluster of `n` nodes built with `make`.
        pub(crate) fn new(n: usize, make: fn(NodeId, usize) -> P) -> Self {
            let engines = (0..n)
                .map(|i| {
                    let me = NodeId::new(i as u16);
                    Engine::new(make(me, n), Peers::formed(me, n))
                })
                .collect();
            Net {
                engines,
                make,
                incarnations: vec![Incarnation::new(0); n],
                links: BTreeMap::new(),
                now: Millis::new(0),
                sent: 0,
                grants: Vec::new(),
                refused: 0,
                locked: Vec::new(),
                timers: BTreeMap::new(),
                check_tokens: true,
                early_hello: false,
            }
        }

        pub(crate) fn n(&self) -> usize {
            self.engines.len()
        }

        /// Feeds `event` to `node`, routes its sends, returns its actions.
        pub(crate) fn handle(&mut self, node: usize, event: Event<P::Msg>) -> Vec<Action<P::Msg>> {
            let out = self.handle_unrouted(node, event);
            self.route(node, &out);
            out
        }

        fn handle_unrouted(&mut self, node: usize, event: Event<P::Msg>) -> Vec<Action<P::Msg>> {
            if std::env::var_os("NET_TRACE").is_some() {
                eprintln!("{node} <- {event:?}");
            }
            let mut out = Vec::new();
            if self.engines[node].handle(self.now, event, &mut out).is_err() {
                self.refused += 1;
            }
            out
        }

        fn route(&mut self, node: usize, out: &[Action<P::Msg>]) {
            if std::env::var_os("NET_TRACE").is_some() {
                for a in out {
                    eprintln!("  {node} -> {a:?}");
                }
            }
            for action in out {
                match action {
                    Action::Send { to, epoch, msg } => {
                        let to_inc = self.engines[node].peers().incarnation(*to);
                        let item = Item::Msg {
                            from_inc: self.incarnations[node],
                            to_inc,
                            epoch: *epoch,
                            msg: msg.clone(),
                        };
                        self.links.entry((node, to.index())).or_default().push_back(item);
                        self.sent += 1;
                    }
                    Action::Granted { req, lock, token } => {
                        if let Some(&(_, _, _, last)) = self.grants.iter().rev().find(|g| &g.2 == lock)
                            && self.check_tokens
                        {
                            assert!(*token > last, "token for {lock} went back: {last:?} then {token:?}");
                        }
                        self.grants.push((node, *req, lock.clone(), *token));
                    }
                    Action::SetTimer { timer: TimerId::Deadline(req), at } => {
                        self.timers.insert((node, *req), *at);
                    }
                    Action::CancelTimer { timer: TimerId::Deadline(req) } => {
                        self.timers.remove(&(node, *req));
                    }
                    Action::Rejected { req, reason } => {
                        if let RejectReason::Locked { holder } = reason {
                            self.locked.push((node, *req, *holder));
                        }
                        self.timers.remove(&(node, *req));
                    }
                    // No acquire here asks for a lease.
                    Action::SetTimer { .. } | Action::CancelTimer { .. } | Action::LeaseExpired { .. } => {}
                }
            }
        }

        /// Shorthand for an acquire without deadline.
        pub(crate) fn acquire(&mut self, node: usize, req: u64, lock: &str) -> Vec<Action<P::Msg>> {
            self.handle(
                node,
                Event::Acquire { req: RequestId::new(req), lock: lock.into(), deadline: None, ttl: None },
            )
        }

        /// Shorthand for a try-acquire without lease.
        pub(crate) fn try_acquire(&mut self, node: usize, req: u64, lock: &str) -> Vec<Action<P::Msg>> {
            self.handle(node, Event::TryAcquire { req: RequestId::new(req), lock: lock.into(), ttl: None })
        }

        /// Shorthand for a release.
        pub(crate) fn release(&mut self, node: usize, req: u64) -> Vec<Action<P::Msg>> {
            self.handle(node, Event::Release { req: RequestId::new(req) })
        }

        /// The protocol messages waiting on `from -> to`, oldest first.
        pub(crate) fn in_flight(&self, from: usize, to: usize) -> Vec<P::Msg> {
            self.links
                .get(&(from, to))
                .map(|q| {
                    q.iter()
                        .filter_map(|i| match i {
                            Item::Msg { msg, .. } => Some(msg.clone()),
                            Item::Hello { .. } => None,
                        })
                        .collect()
                })
                .unwrap_or_default()
        }

        /// Delivers the oldest item on `from -> to`; returns the receiver's actions.
        pub(crate) fn deliver(&mut self, from: usize, to: usize) -> Vec<Action<P::Msg>> {
            let Some(item) = self.links.get_mut(&(from, to)).and_then(VecDeque::pop_front) else {
                return Vec::new();
            };
            let from_id = NodeId::new(from as u16);
            match item {
                Item::Hello { incarnation, clock, to_inc } => {
                    if to_inc.is_some_and(|i| i != self.incarnations[to]) {
                        return Vec::new();
                    }
                    let before = self.engines[to].peers().incarnation(from_id);
                    let out = self
                        .handle_unrouted(to, Event::PeerIncarnation { peer: from_id, incarnation, clock });
                    let after = self.engines[to].peers().incarnation(from_id);
                    if to_inc.is_none() && before != after && !self.early_hello {
                        // Answer a restart announcement once the core has processed it, with the clock then.
                        let hello = Item::Hello {
                            incarnation: self.incarnations[to],
                            clock: self.engines[to].clock(),
                            to_inc: after,
                        };
                        self.links.entry((to, from)).or_default().push_back(hello);
                    }
                    // The handshake goes first on the link, then whatever the core sent (re-sent requests).
                    self.route(to, &out);
                    out
                }
                Item::Msg { from_inc, to_inc, epoch, msg } => {
                    if to_inc != Some(self.incarnations[to]) {
                        return Vec::new();
                    }
                    self.handle(to, Event::Message { from: from_id, incarnation: from_inc, epoch, msg })
                }
            }
        }

        /// Delivers everything, round-robin over links, until no message is in flight.
        pub(crate) fn deliver_all(&mut self) {
            while let Some(&(from, to)) = self.links.iter().find(|(_, q)| !q.is_empty()).map(|(k, _)| k) {
                self.deliver(from, to);
            }
        }

        /// Crashes `p` and starts a new incarnation: messages to the old one are lost, the new one announces
        /// itself to every peer behind whatever the old one still had in flight.
        pub(crate) fn restart(&mut self, p: usize) {
            let n = self.n();
            self.incarnations[p] = Incarnation::new(self.incarnations[p].get() + 1);
            if std::env::var_os("NET_TRACE").is_some() {
                eprintln!("RESTART {p} as {:?}", self.incarnations[p]);
            }
            let me = NodeId::new(p as u16);
            self.engines[p] = Engine::new((self.make)(me, n), Peers::new(me, n, self.incarnations[p]));
            self.timers.retain(|(node, _), _| *node != p);
            for j in (0..n).filter(|&j| j != p) {
                self.links.entry((j, p)).or_default().clear();
                let hello = Item::Hello {
                    incarnation: self.incarnations[p],
                    clock: self.engines[p].clock(),
                    to_inc: None,
                };
                self.links.entry((p, j)).or_default().push_back(hello);
                if self.early_hello {
                    let answer = Item::Hello {
                        incarnation: self.incarnations[j],
                        clock: self.engines[j].clock(),
                        to_inc: Some(self.incarnations[p]),
                    };
                    self.links.entry((j, p)).or_default().push_back(answer);
                }
            }
        }

        fn hello_in_flight(&self) -> bool {
            self.links.values().flatten().any(|i| matches!(i, Item::Hello { .. }))
        }

        /// Nodes holding `lock`.
        /// Every node in turn acquires and releases `lock`, `rounds` times, each entry alone in the system
        /// (fault-free, one at a time): the setting of the textbook message costs.
        pub(crate) fn sequential_entries(&mut self, rounds: usize, lock: &str) {
            let n = self.engines.len();
            for round in 0..rounds {
                for i in 0..n {
                    let r = (round * n + i) as u64;
                    self.acquire(i, r, lock);
                    self.deliver_all();
                    assert_eq!(self.holders(lock), vec![i]);
                    self.release(i, r);
                    self.deliver_all();
                }
            }
        }

        pub(crate) fn holders(&self, lock: &str) -> Vec<usize> {
            (0..self.n()).filter(|&i| self.engines[i].holder(lock).is_some()).collect()
        }

        fn links_busy(&self) -> Vec<(usize, usize)> {
            self.links.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect()
        }
    }

    /// xorshift64*: a tiny seeded generator, enough to pick interleavings.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n.max(1)
        }
    }

    /// Random acquires, releases, cancels, deadlines, deliveries over random links (and restarts if
    /// `restarts`), checking after every step that no lock has two holders and (in [`Net::handle`]) that
    /// tokens grow; then quiesces and checks that every waiter was served. Returns the net for more checks.
    pub(crate) fn simulate<P: Protocol>(
        make: fn(NodeId, usize) -> P,
        n: usize,
        seed: u64,
        steps: usize,
        restarts: bool,
        early_hello: bool,
    ) -> Net<P> {
        const LOCKS: [&str; 2] = ["a", "b"];
        let mut net = Net::new(n, make);
        net.early_hello = early_hello;
        net.check_tokens = !early_hello;
        let mut rng = Rng::new(seed);
        let mut next_req = 1u64;
        for step in 0..steps {
            net.now = Millis::new(step as u64);
            let roll = rng.below(100);
            if roll < 50 {
                let busy = net.links_busy();
                if !busy.is_empty() {
                    let (from, to) = busy[rng.below(busy.len())];
                    net.deliver(from, to);
                }
            } else if roll < 65 {
                let node = rng.below(n);
                let lock = LOCKS[rng.below(LOCKS.len())];
                let deadline =
                    (rng.below(3) == 0).then(|| Millis::new(step as u64 + 1 + rng.below(40) as u64));
                net.handle(
                    node,
                    Event::Acquire { req: RequestId::new(next_req), lock: lock.into(), deadline, ttl: None },
                );
                next_req += 1;
            } else if roll < 82 {
                let mut held: Vec<(usize, RequestId)> = Vec::new();
                for (i, e) in net.engines.iter().enumerate() {
                    held.extend(LOCKS.iter().filter_map(|l| e.holder(l)).map(|r| (i, r)));
                }
                if !held.is_empty() {
                    let (node, req) = held[rng.below(held.len())];
                    net.handle(node, Event::Release { req });
                }
            } else if roll < 87 {
                let mut waiting: Vec<(usize, RequestId)> = Vec::new();
                for (i, e) in net.engines.iter().enumerate() {
                    waiting.extend(LOCKS.iter().flat_map(|l| e.local_waiters(l)).map(|r| (i, r)));
                }
                if !waiting.is_empty() {
                    let (node, req) = waiting[rng.below(waiting.len())];
                    net.handle(node, Event::Cancel { req });
                }
            } else if roll < 95 {
                // The earliest deadline fires.
                if let Some((&(node, req), &at)) = net.timers.iter().min_by_key(|(_, at)| **at) {
                    net.now = net.now.max(at);
                    net.handle(node, Event::Timer { timer: TimerId::Deadline(req) });
                }
            } else if restarts && roll < 97 {
                // In the default mode a node restarts only while the rest of the cluster is joined, so the
                // clock survives in someone and tokens keep growing; early handshakes break that on purpose.
                let settled = net.engines.iter().all(|e| e.joined()) && !net.hello_in_flight();
                if early_hello || settled {
                    net.restart(rng.below(n));
                }
            }
            for lock in LOCKS {
                let holders = net.holders(lock);
                assert!(holders.len() <= 1, "seed {seed} step {step}: {lock} held by {holders:?}");
            }
        }
        // Quiesce: no new requests; deliver everything and release every holder until nothing is left.
        let mut rounds = 0;
        loop {
            net.deliver_all();
            let mut released = false;
            for i in 0..n {
                for lock in LOCKS {
                    if let Some(req) = net.engines[i].holder(lock) {
                        net.handle(i, Event::Release { req });
                        released = true;
                    }
                }
                for lock in LOCKS {
                    assert!(net.holders(lock).len() <= 1, "seed {seed}: {lock} held twice while draining");
                }
            }
            if !released && net.links_busy().is_empty() {
                break;
            }
            rounds += 1;
            assert!(rounds < 10_000, "seed {seed}: no quiescence");
        }
        for i in 0..n {
            assert!(net.engines[i].joined(), "seed {seed}: node {i} never joined");
            for lock in LOCKS {
                assert!(
                    net.engines[i].local_waiters(lock).is_empty(),
                    "seed {seed}: node {i} still waits for {lock}: starvation or deadlock"
                );
            }
            assert_eq!(net.engines[i].active_locks().count(), 0, "seed {seed}: node {i} kept state");
        }
        net
    }
}

#[cfg(test)]
mod tests {
    use super::testnet::{Net, simulate};
    use super::*;
    use crate::algo::{Action, Engine, Event, Millis, RejectReason, RequestId, TimerId};

    fn req(lock: &str, ts: u64) -> LamportMsg {
        LamportMsg::Request { lock: lock.into(), ts: LamportTs::new(ts) }
    }
    fn rep(lock: &str, ts: u64) -> LamportMsg {
        LamportMsg::Reply { lock: lock.into(), ts: LamportTs::new(ts) }
    }
    fn rel(lock: &str, ts: u64) -> LamportMsg {
        LamportMsg::Release { lock: lock.into(), ts: LamportTs::new(ts) }
    }
    fn send(to: u16, msg: LamportMsg) -> Action<LamportMsg> {
        Action::Send { to: NodeId::new(to), epoch: 0, msg }
    }
    fn out_send(to: u16, msg: LamportMsg) -> Output<LamportMsg> {
        Output::Send { to: NodeId::new(to), msg }
    }
    fn granted(req: u64, lock: &str, ts: u64, node: u16) -> Action<LamportMsg> {
        Action::Granted {
            req: RequestId::new(req),
            lock: lock.into(),
            token: FencingToken::from_ts(LamportTs::new(ts), NodeId::new(node)),
        }
    }
    fn entered(lock: &str, ts: u64, node: u16) -> Output<LamportMsg> {
        Output::Entered {
            lock: lock.into(),
            token: FencingToken::from_ts(LamportTs::new(ts), NodeId::new(node)),
        }
    }
    fn queue(p: &Lamport, lock: &str) -> Vec<(u64, u16)> {
        p.view(lock).queue.iter().map(|e| (e.ts.unwrap_or_default().get(), e.node.get())).collect()
    }
    fn lamport(me: NodeId, n: usize) -> Lamport {
        Lamport::fresh(me, n)
    }
    /// Feeds a message straight to the protocol (no engine), returning its outputs.
    fn recv(p: &mut Lamport, from: u16, msg: LamportMsg) -> (Vec<Output<LamportMsg>>, Result<(), CoreError>) {
        let mut peers = Peers::formed(p.me, p.peers.len() + 1);
        let mut out = Vec::new();
        let r = p.on_message(NodeId::new(from), msg, &mut peers, &mut out);
        (out, r)
    }
    fn call(
        p: &mut Lamport,
        f: fn(&mut Lamport, &str, &Peers, &mut Vec<Output<LamportMsg>>),
        lock: &str,
    ) -> Vec<Output<LamportMsg>> {
        let peers = Peers::formed(p.me, p.peers.len() + 1);
        let mut out = Vec::new();
        f(p, lock, &peers, &mut out);
        out
    }

    #[test]
    fn lamport_rule1_request_is_timestamped_queued_and_sent_to_all() {
        let mut e = Engine::new(Lamport::fresh(NodeId::new(0), 3), Peers::formed(NodeId::new(0), 3));
        let mut out = Vec::new();
        e.handle(
            Millis::new(0),
            Event::Acquire { req: RequestId::new(1), lock: "a".into(), deadline: None, ttl: None },
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![send(1, req("a", 1)), send(2, req("a", 1))]);
        assert_eq!(queue(e.protocol(), "a"), vec![(1, 0)]);
        assert_eq!(e.view("a").own_request, Some(LamportTs::new(1)));
    }

    #[test]
    fn lamport_rule2_request_is_queued_and_acknowledged_with_a_later_timestamp() {
        let mut p = lamport(NodeId::new(0), 3);
        // IR2: clock = max(0, 5) + 1 = 6; IR1: the REPLY is a send event, stamped 7.
        let (out, r) = recv(&mut p, 1, req("a", 5));
        assert_eq!(r, Ok(()));
        assert_eq!(out, vec![out_send(1, rep("a", 7))]);
        assert_eq!(queue(&p, "a"), vec![(5, 1)]);
        assert_eq!(p.view("a").holder, Some(NodeId::new(1)));
        // A re-sent REQUEST replaces the sender's entry: one entry per node per lock.
        let (out, _) = recv(&mut p, 1, req("a", 6));
        assert_eq!(out, vec![out_send(1, rep("a", 9))]);
        assert_eq!(queue(&p, "a"), vec![(6, 1)]);
    }

    #[test]
    fn lamport_ir2_clock_advances_on_every_receipt_and_handshake() {
        let mut p = lamport(NodeId::new(0), 3);
        let _ = recv(&mut p, 1, req("a", 5));
        assert_eq!(p.clock(), LamportTs::new(7));
        // REPLY (even a late one, for no request of ours) and RELEASE both apply IR2.
        assert_eq!(recv(&mut p, 2, rep("x", 10)), (vec![], Ok(())));
        assert_eq!(p.clock(), LamportTs::new(11));
        assert_eq!(p.latest_from(NodeId::new(2)), LamportTs::new(10));
        assert_eq!(recv(&mut p, 1, rel("a", 3)), (vec![], Ok(())));
        assert_eq!(p.clock(), LamportTs::new(12));
        assert!(p.locks.is_empty(), "the emptied lock state is removed");
        p.observe_clock(LamportTs::new(20));
        assert_eq!(p.clock(), LamportTs::new(21));
        // A smaller timestamp still advances the clock by one.
        let _ = recv(&mut p, 2, rep("x", 1));
        assert_eq!(p.clock(), LamportTs::new(22));
        assert_eq!(p.latest_from(NodeId::new(2)), LamportTs::new(10), "latest never goes back");
    }

    #[test]
    fn lamport_ir1_one_clock_is_shared_by_all_locks() {
        let mut p = lamport(NodeId::new(0), 2);
        assert_eq!(call(&mut p, Lamport::request, "a"), vec![out_send(1, req("a", 1))]);
        assert_eq!(call(&mut p, Lamport::request, "b"), vec![out_send(1, req("b", 2))]);
        let (out, _) = recv(&mut p, 1, req("c", 1));
        assert_eq!(out, vec![out_send(1, rep("c", 4))]);
        // A reply about lock c proves, for locks a and b too, that node 1 has no earlier request in flight.
        let (out, _) = recv(&mut p, 1, rep("c", 3));
        assert_eq!(out, vec![entered("a", 1, 0), entered("b", 2, 0)]);
        assert_eq!(queue(&p, "c"), vec![(1, 1)]);
    }

    /// Rule 5 asks for a *message timestamped later* than the request from every other node, not for a
    /// number of REPLYs: here node 1's later REQUEST (for another lock) stands in for its REPLY, and node 0
    /// enters with a single REPLY out of two.
    #[test]
    fn lamport_rule5_a_later_request_counts_as_much_as_a_reply() {
        let mut p = lamport(NodeId::new(0), 3);
        assert_eq!(
            call(&mut p, Lamport::request, "a"),
            vec![out_send(1, req("a", 1)), out_send(2, req("a", 1))]
        );
        let (out, _) = recv(&mut p, 1, req("b", 2));
        assert_eq!(out, vec![out_send(1, rep("b", 4))], "node 2 not heard yet: no entry");
        let (out, _) = recv(&mut p, 2, rep("a", 2));
        assert_eq!(out, vec![entered("a", 1, 0)]);
        assert_eq!(p.view("a").last_token, Some(FencingToken::from_ts(LamportTs::new(1), NodeId::new(0))));
        // Node 1's REPLY to "a" arrives later and changes nothing (Entered is emitted once).
        assert_eq!(recv(&mut p, 1, rep("a", 3)), (vec![], Ok(())));
    }

    /// Rule 5 with a reply count would let node 0 in too early: after withdrawing a request for "a" and
    /// asking again with T = 5, the first REPLY it receives answers the *withdrawn* request (timestamp 3).
    /// A per-request reply counter reaches N−1 = 1 with node 0's entry at the head of its queue, so it would
    /// enter; but node 1 has meanwhile requested "a" with timestamp 4 < 5 (its REQUEST is behind the late
    /// REPLY on the link) and will enter first. Rule 5 as written (latest[1] = 3 is not later than 5) waits.
    #[test]
    fn lamport_rule5_late_reply_to_a_withdrawn_request_does_not_admit() {
        let mut net = Net::new(2, lamport);
        net.acquire(0, 1, "a");
        net.deliver(0, 1); // node 1: clock 2, REPLY("a", 3) to node 0
        assert_eq!(net.acquire(1, 2, "a"), vec![send(0, req("a", 4))]);
        net.handle(0, Event::Cancel { req: RequestId::new(1) }); // RELEASE("a", 2)
        net.acquire(0, 3, "b"); // REQUEST("b", 3): only moves node 0's clock
        net.handle(0, Event::Cancel { req: RequestId::new(3) }); // RELEASE("b", 4)
        assert_eq!(net.acquire(0, 4, "a"), vec![send(1, req("a", 5))]);
        assert_eq!(net.in_flight(1, 0), vec![rep("a", 3), req("a", 4)]);

        assert_eq!(net.deliver(1, 0), vec![], "a late REPLY stamped 3 proves nothing about T = 5");
        // What a reply counter would have concluded at this point:
        let replies_since_request = 1;
        let head_is_own = queue(net.engines[0].protocol(), "a").first() == Some(&(5, 0));
        assert!(
            replies_since_request == 2 - 1 && head_is_own,
            "the counter's condition holds: it would enter"
        );

        net.deliver_all();
        assert_eq!(net.holders("a"), vec![1], "node 1's (4, 1) precedes node 0's (5, 0)");
        net.release(1, 2);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        let order: Vec<usize> = net.grants.iter().map(|g| g.0).collect();
        assert_eq!(order, vec![1, 0]);
    }

    /// The Python simulation's RELEASE handler: pop the queue's head, whoever sent the RELEASE.
    fn naive_release_pops_head(mut queue: BTreeSet<(LamportTs, NodeId)>) -> BTreeSet<(LamportTs, NodeId)> {
        queue.pop_first();
        queue
    }

    /// Rule 5 over an explicit queue and `latest`.
    fn rule5(queue: &BTreeSet<(LamportTs, NodeId)>, me: NodeId, t: LamportTs, latest: &[u64]) -> bool {
        queue.first() == Some(&(t, me))
            && latest.iter().enumerate().all(|(k, &l)| k == me.index() || l > t.get())
    }

    /// A RELEASE goes to the waiters first, in queue order, then to everyone else: the next holder is the
    /// first to hear it (the order of a broadcast is free; this one shortens the handoff).
    #[test]
    fn release_reaches_the_waiters_first_in_queue_order() {
        let mut net = Net::new(4, lamport);
        net.acquire(0, 1, "a");
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        net.acquire(3, 2, "a");
        net.deliver_all();
        net.acquire(1, 3, "a");
        net.deliver_all();
        let targets: Vec<u16> = net
            .release(0, 1)
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { to, msg: LamportMsg::Release { .. }, .. } => Some(to.get()),
                _ => None,
            })
            .collect();
        assert_eq!(targets, vec![3, 1, 2]);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![3]);
    }

    /// Regression for the Python simulation's RELEASE bug (rule 4). Node 1 holds "a" with request (1, 1). Node 0 asks
    /// with (4, 0); node 2 asks with (7, 2) and withdraws at once. At node 0 the queue is
    /// [(1, 1), (4, 0), (7, 2)] when node 2's RELEASE arrives, and node 0 has already heard later messages
    /// from both peers (node 1 answered its REQUEST with REPLY 7: Lamport's holders still acknowledge).
    /// Rule 4 removes (7, 2), the sender's entry, and node 0 keeps waiting behind node 1. The seed pops the
    /// head instead, removing node 1's (1, 1): node 0's own request becomes the head, rule 5 holds, and node 0
    /// enters while node 1 is still in the critical section.
    #[test]
    fn lamport_rule4_release_removes_senders_request_wherever_it_is() {
        let mut net = Net::new(3, lamport);
        net.acquire(1, 10, "a");
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![1]);
        assert_eq!(net.acquire(0, 20, "a"), vec![send(1, req("a", 4)), send(2, req("a", 4))]);
        assert_eq!(net.deliver(0, 1), vec![send(0, rep("a", 7))], "the holder acknowledges");
        assert_eq!(net.deliver(0, 2), vec![send(0, rep("a", 6))]);
        assert_eq!(net.acquire(2, 30, "a"), vec![send(0, req("a", 7)), send(1, req("a", 7))]);
        assert_eq!(
            net.handle(2, Event::Cancel { req: RequestId::new(30) }),
            vec![
                Action::Rejected { req: RequestId::new(30), reason: RejectReason::Cancelled },
                // In node 2's queue order: (1, 1) before (4, 0).
                send(1, rel("a", 8)),
                send(0, rel("a", 8)),
            ]
        );
        assert_eq!(net.deliver(1, 0), vec![]);
        assert_eq!(net.deliver(2, 0), vec![]); // REPLY 6
        assert_eq!(net.deliver(2, 0), vec![send(2, rep("a", 11))]); // REQUEST (7, 2)
        let before = net.engines[0].protocol().locks["a"].queue.clone();
        assert_eq!(queue(net.engines[0].protocol(), "a"), vec![(1, 1), (4, 0), (7, 2)]);

        assert_eq!(net.deliver(2, 0), vec![], "RELEASE from 2 must not let node 0 in");
        assert_eq!(queue(net.engines[0].protocol(), "a"), vec![(1, 1), (4, 0)]);
        assert_eq!(net.holders("a"), vec![1]);

        // The Python simulation's logic on the same state admits node 0 next to the holder.
        let latest: Vec<u64> =
            (0..3).map(|k| net.engines[0].protocol().latest_from(NodeId::new(k)).get()).collect();
        let latest = &latest;
        assert_eq!(latest, &vec![0, 7, 8]);
        let after_naive = naive_release_pops_head(before);
        assert!(
            rule5(&after_naive, NodeId::new(0), LamportTs::new(4), latest),
            "head-pop lets node 0 enter too early"
        );

        net.release(1, 10);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        net.release(0, 20);
        net.deliver_all();
        for e in &net.engines {
            assert!(e.protocol().locks.is_empty());
        }
    }

    #[test]
    fn lamport_total_order_ties_are_broken_by_node_id() {
        let mut net = Net::new(3, lamport);
        // Both requests carry timestamp 1.
        assert_eq!(net.acquire(1, 1, "a"), vec![send(0, req("a", 1)), send(2, req("a", 1))]);
        assert_eq!(net.acquire(0, 2, "a"), vec![send(1, req("a", 1)), send(2, req("a", 1))]);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(queue(net.engines[2].protocol(), "a"), vec![(1, 0), (1, 1)]);
        net.release(0, 2);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![1]);
        assert_eq!(
            net.grants.iter().map(|g| g.3).collect::<Vec<_>>(),
            vec![
                FencingToken::from_ts(LamportTs::new(1), NodeId::new(0)),
                FencingToken::from_ts(LamportTs::new(1), NodeId::new(1))
            ]
        );
    }

    /// A restarted peer lost every queue: drop its entries and `latest`, and re-send this node's live
    /// requests to it, an entered one with timestamp 0 so that it sorts first there.
    #[test]
    fn lamport_peer_restart_drops_its_state_and_resends_own_requests() {
        let mut p = lamport(NodeId::new(0), 3);
        call(&mut p, Lamport::request, "a"); // (1, 0)
        let _ = recv(&mut p, 1, rep("a", 5));
        let (out, _) = recv(&mut p, 2, rep("a", 5));
        assert_eq!(out, vec![entered("a", 1, 0)]);
        assert_eq!(
            call(&mut p, Lamport::request, "b"),
            vec![out_send(1, req("b", 8)), out_send(2, req("b", 8))]
        );
        let _ = recv(&mut p, 1, req("c", 3)); // (3, 1) queued for c; REPLY 10
        let peers = Peers::formed(NodeId::new(0), 3);
        let mut out = Vec::new();
        p.peer_restarted(NodeId::new(1), &peers, &mut out);
        assert_eq!(out, vec![out_send(1, req("a", 0)), out_send(1, req("b", 8))]);
        assert_eq!(p.latest_from(NodeId::new(1)), LamportTs::new(0));
        assert!(!p.locks.contains_key("c"), "the restarted node's request died with it");
        // Rule 5 for b now waits for the new incarnation: node 2's message alone is not enough.
        let (out, _) = recv(&mut p, 2, rep("b", 12));
        assert_eq!(out, vec![]);
        let (out, _) = recv(&mut p, 1, rep("b", 9));
        assert_eq!(out, vec![entered("b", 8, 0)]);
    }

    /// Through the network: node 1 restarts while node 0 holds "a"; its new incarnation must queue node 0's
    /// request before its own and wait for node 0's RELEASE.
    #[test]
    fn lamport_restarted_peer_waits_for_the_holder() {
        let mut net = Net::new(3, lamport);
        net.acquire(0, 1, "a");
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        net.restart(1);
        net.acquire(1, 2, "a"); // held back until node 1 has joined
        net.deliver_all();
        assert!(net.engines[1].joined());
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(queue(net.engines[1].protocol(), "a")[0], (0, 0), "the held request sorts first");
        net.release(0, 1);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![1]);
    }

    /// Why an *entered* request is re-sent to a restarted peer with timestamp 0 rather than its own `T`.
    /// If peers answer a restarted node's handshake before their cores have processed the restart (or the
    /// handshake otherwise carries a clock older than a request), the new incarnation can timestamp its
    /// requests *below* a request that is already in the critical section: here node 0 enters "a" with
    /// (3, 0), on the strength of messages the old node 1 sent before it crashed, while node 1's new
    /// incarnation joined with node 0's clock 0 and asks with (2, 1). Re-sent as (3, 0), node 0's request
    /// would sort after (2, 1), and its timestamp 3 > 2 would satisfy rule 5 at node 1: two holders.
    /// Re-sent as (0, 0), it heads node 1's queue until node 0's RELEASE.
    #[test]
    fn lamport_restart_entered_request_is_resent_first_even_after_an_early_handshake() {
        let mut net = Net::new(2, lamport);
        net.early_hello = true;
        net.check_tokens = false;
        // The old node 1 pushes its clock up with messages still in flight when it crashes.
        for r in 0..5 {
            net.acquire(1, r, "c");
            net.handle(1, Event::Cancel { req: RequestId::new(r) });
        }
        net.restart(1);
        net.deliver(0, 1); // node 0's handshake, clock 0
        assert!(net.engines[1].joined());
        assert_eq!(net.acquire(1, 10, "a"), vec![send(0, req("a", 2))]);
        net.acquire(0, 20, "x"); // sent to the old incarnation: lost
        net.handle(0, Event::Cancel { req: RequestId::new(20) });
        net.acquire(0, 21, "a");
        for _ in 0..10 {
            net.deliver(1, 0); // the old incarnation's messages, stamped up to 10
        }
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(net.engines[0].view("a").own_request, Some(LamportTs::new(3)));
        // Node 0 learns of the restart: the held request goes out with timestamp 0.
        assert_eq!(net.deliver(1, 0), vec![send(1, req("a", 0))]);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0], "node 1 waits behind (0, 0)");
        assert_eq!(queue(net.engines[1].protocol(), "a"), vec![(0, 0), (2, 1)]);
        net.release(0, 21);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![1]);
    }

    /// Withdrawing (rule 3 applied to a request that never entered) leaves no trace at any node.
    #[test]
    fn lamport_withdraw_leaves_no_state_anywhere() {
        let mut net = Net::new(3, lamport);
        net.acquire(1, 1, "a");
        net.deliver_all();
        net.acquire(0, 2, "a");
        net.acquire(2, 3, "a");
        net.deliver(0, 1);
        net.handle(0, Event::Cancel { req: RequestId::new(2) });
        net.deliver_all();
        net.handle(2, Event::Cancel { req: RequestId::new(3) });
        net.release(1, 1);
        net.deliver_all();
        for e in &net.engines {
            assert!(e.protocol().locks.is_empty(), "{:?}", e.protocol());
            assert_eq!(e.active_locks().count(), 0);
        }
        assert_eq!(net.grants.len(), 1);
    }

    /// The paper's footnote: no REPLY to a REQUEST when a later-timestamped message already went to its
    /// sender, which will prove the same thing.
    #[test]
    fn lamport_footnote_ack_elision_skips_redundant_replies() {
        let mut p = Lamport::with_ack_elision(NodeId::new(0), 2);
        call(&mut p, Lamport::request, "x"); // REQUEST 1 to node 1
        call(&mut p, Lamport::request, "y"); // REQUEST 2 to node 1
        let (out, _) = recv(&mut p, 1, req("a", 1));
        assert_eq!(out, vec![], "REQUEST 2 already sent to node 1 is later than (1, 1)");
        let (out, _) = recv(&mut p, 1, req("b", 3));
        assert_eq!(out, vec![out_send(1, rep("b", 5)), entered("x", 1, 0), entered("y", 2, 0)]);
        let mut plain = Lamport::fresh(NodeId::new(0), 2);
        call(&mut plain, Lamport::request, "x");
        call(&mut plain, Lamport::request, "y");
        assert_eq!(recv(&mut plain, 1, req("a", 1)).0, vec![out_send(1, rep("a", 4))]);

        // Under contention the option saves messages and still serves everyone.
        let contended = |make: fn(NodeId, usize) -> Lamport| {
            let mut net = Net::new(3, make);
            // Node 0 first asks for another lock: its REQUEST is later than the others' requests for "a".
            net.acquire(0, 100, "b");
            for i in 0..3 {
                net.acquire(i, i as u64 + 1, "a");
            }
            for _ in 0..3 {
                net.deliver_all();
                let holder = net.holders("a");
                assert_eq!(holder.len(), 1);
                let node = holder[0];
                net.release(node, node as u64 + 1);
            }
            net.release(0, 100);
            net.deliver_all();
            assert_eq!(net.grants.len(), 4);
            net.sent
        };
        let with = contended(Lamport::with_ack_elision);
        let without = contended(Lamport::fresh);
        assert_eq!(without, 4 * 3 * 2);
        assert!(with < without, "{with} < {without}");
    }

    #[test]
    fn lamport_costs_3_n_minus_1_messages_per_entry() {
        for n in [1usize, 2, 3, 5] {
            let mut net = Net::new(n, lamport);
            net.sequential_entries(2, "a");
            assert_eq!(net.sent, 2 * n * 3 * (n - 1), "n = {n}");
        }
    }

    fn locked(node: usize, req: u64, holder: Option<u16>) -> (usize, RequestId, Option<NodeId>) {
        (node, RequestId::new(req), holder.map(NodeId::new))
    }

    /// Try-lock: on a free lock the try enters after one round (rule 5 decides), at the textbook cost.
    #[test]
    fn lamport_try_on_a_free_lock_enters_after_one_round() {
        let mut net = Net::new(3, lamport);
        net.try_acquire(0, 1, "a");
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(net.sent, 4, "REQUEST and REPLY to and from each other node");
        net.release(0, 1);
        net.deliver_all();
        assert_eq!(net.sent, 6, "3(N−1) in all");
        assert!(net.locked.is_empty());
    }

    /// Try-lock: a held lock answers locked once rule 5 can decide, naming the queue's head; the withdrawal
    /// (rule 3) leaves no trace in any queue.
    #[test]
    fn lamport_try_on_a_held_lock_is_locked_naming_the_holder() {
        let mut net = Net::new(3, lamport);
        net.acquire(1, 1, "a");
        net.deliver_all();
        let before = net.sent;
        net.try_acquire(0, 2, "a");
        net.deliver_all();
        assert_eq!(net.locked, vec![locked(0, 2, Some(1))]);
        assert_eq!(net.holders("a"), vec![1]);
        assert_eq!(net.sent - before, 6, "REQUEST, REPLY and RELEASE: 3(N−1)");
        for e in &net.engines {
            assert_eq!(e.view("a").queue.len(), 1, "only the holder is queued anywhere");
        }
        assert_eq!(net.refused, 0);
    }

    /// Try-lock: a request with an earlier timestamp, not yet entered, beats the try (total order).
    #[test]
    fn lamport_try_behind_an_earlier_request_is_locked() {
        let mut net = Net::new(2, lamport);
        net.acquire(1, 1, "a"); // (1, N1)
        net.deliver(1, 0); // N0's clock passes 1: its try is stamped later
        net.try_acquire(0, 2, "a");
        net.deliver_all();
        assert_eq!(net.locked, vec![locked(0, 2, Some(1))]);
        assert_eq!(net.holders("a"), vec![1]);
    }

    /// Try-lock: concurrent tries on a free lock, exactly one wins: the earliest `(ts, node)`.
    #[test]
    fn lamport_concurrent_tries_grant_exactly_the_earliest() {
        let mut net = Net::new(3, lamport);
        for i in 0..3 {
            net.try_acquire(i, 10 + i as u64, "a");
        }
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0], "all stamped 1: node 0 breaks the tie");
        let mut losers: Vec<usize> = net.locked.iter().map(|l| l.0).collect();
        losers.sort_unstable();
        assert_eq!(losers, vec![1, 2]);
        // The winner releases; an ordinary request then enters (the lost tries left nothing behind).
        net.release(0, 10);
        net.deliver_all();
        net.acquire(2, 20, "a");
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![2]);
    }

    /// Engine: a try while this node holds the lock or already waits for it is locked at once, no message.
    #[test]
    fn lamport_engine_try_behind_a_local_holder_or_waiter_is_locked_without_a_message() {
        let mut net = Net::new(2, lamport);
        net.acquire(0, 1, "a");
        net.deliver_all();
        let before = net.sent;
        let out = net.try_acquire(0, 2, "a");
        assert_eq!(
            out,
            vec![Action::Rejected {
                req: RequestId::new(2),
                reason: RejectReason::Locked { holder: Some(NodeId::new(0)) }
            }]
        );
        // Node 1 waits behind node 0; a try there is locked at once too, naming node 0 (its queue's head).
        net.acquire(1, 3, "a");
        net.deliver_all();
        let out = net.try_acquire(1, 4, "a");
        assert_eq!(
            out,
            vec![Action::Rejected {
                req: RequestId::new(4),
                reason: RejectReason::Locked { holder: Some(NodeId::new(0)) }
            }]
        );
        assert_eq!(net.sent - before, 2, "only node 1's ordinary REQUEST and its REPLY");
        assert_eq!(net.engines[0].stats().locked, 1);
    }

    /// Engine: a try cancelled while an ordinary local waiter queued behind it hands the protocol request
    /// over; if the try then loses, the waiter asks again ordinarily and is served after the holder.
    #[test]
    fn lamport_engine_a_lost_try_hands_over_to_the_ordinary_waiter_behind_it() {
        let mut net = Net::new(2, lamport);
        net.acquire(1, 1, "a");
        net.deliver_all();
        net.try_acquire(0, 2, "a");
        net.acquire(0, 3, "a");
        net.handle(0, Event::Cancel { req: RequestId::new(2) });
        net.deliver_all();
        assert!(net.locked.is_empty(), "the cancelled try is answered Cancelled, not Locked");
        assert_eq!(net.engines[0].local_waiters("a"), vec![RequestId::new(3)]);
        assert!(net.engines[0].view("a").own_request.is_some(), "asked again, ordinarily");
        net.release(1, 1);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(net.refused, 0);
    }

    /// Try-lock over a view change: an excluded node's stale entry no longer blocks, so a try decided after
    /// the view that removed the only other requester wins.
    #[test]
    fn lamport_try_after_the_blocking_member_is_excluded_enters() {
        let mut net = Net::new(3, lamport);
        net.acquire(2, 1, "a");
        net.deliver_all();
        net.try_acquire(0, 2, "a");
        // Node 2 (the holder) is excluded before node 0 hears back from it.
        let members = vec![(NodeId::new(0), Incarnation::new(0)), (NodeId::new(1), Incarnation::new(0))];
        for i in 0..2 {
            net.handle(i, Event::MembersChanged { epoch: 1, members: members.clone() });
        }
        net.deliver(0, 1);
        net.deliver(1, 0);
        assert_eq!(net.holders("a"), vec![0, 2], "node 2 is outside the view; node 0 entered");
        assert!(net.locked.is_empty());
    }

    #[test]
    fn lamport_unexpected_messages_are_refused_without_panic() {
        let mut p = lamport(NodeId::new(0), 2);
        let (out, r) = recv(&mut p, 1, rel("nope", 4));
        assert_eq!(out, vec![]);
        assert!(matches!(r, Err(CoreError::Unexpected { kind: "RELEASE", .. })));
        assert_eq!(p.clock(), LamportTs::new(5), "its timestamp still counts");
        assert!(p.locks.is_empty());
        assert_eq!(recv(&mut p, 7, req("a", 1)).1, Err(CoreError::UnknownPeer(NodeId::new(7))));
        assert_eq!(recv(&mut p, 0, req("a", 1)).1, Err(CoreError::UnknownPeer(NodeId::new(0))));
        // A huge timestamp saturates instead of overflowing.
        let _ = recv(&mut p, 1, rep("a", u64::MAX));
        assert_eq!(p.clock(), LamportTs::new(u64::MAX));
    }

    #[test]
    fn lamport_view_and_needs_peer() {
        let mut p = lamport(NodeId::new(1), 3);
        let _ = recv(&mut p, 0, req("a", 1));
        call(&mut p, Lamport::request, "a");
        let v = p.view("a");
        assert_eq!(v.own_request, Some(LamportTs::new(4)));
        assert_eq!(v.holder, Some(NodeId::new(0)));
        assert!(!v.held_here);
        assert_eq!(queue(&p, "a"), vec![(1, 0), (4, 1)]);
        assert!(p.needs_peer("a", NodeId::new(0)) && p.needs_peer("a", NodeId::new(2)));
        assert!(!p.needs_peer("a", NodeId::new(1)) && !p.needs_peer("a", NodeId::new(3)));
        assert_eq!(p.view("zzz"), LockView::default());
    }

    /// Engine level: local waiters on one node are served in FIFO order, each behind one protocol request,
    /// with remote requests served in between; deadline timers are set, cancelled on grant and on cancel.
    #[test]
    fn lamport_engine_serves_local_waiters_fifo_and_handles_deadline_timers() {
        let mut net = Net::new(2, lamport);
        let dl = |req: u64, at: u64| Event::Acquire {
            req: RequestId::new(req),
            lock: "a".into(),
            deadline: Some(Millis::new(at)),
            ttl: None,
        };
        assert_eq!(net.acquire(0, 1, "a"), vec![send(1, req("a", 1))]);
        assert_eq!(
            net.handle(0, dl(2, 100)),
            vec![Action::SetTimer { timer: TimerId::Deadline(RequestId::new(2)), at: Millis::new(100) }]
        );
        assert_eq!(
            net.handle(0, dl(3, 100)),
            vec![Action::SetTimer { timer: TimerId::Deadline(RequestId::new(3)), at: Millis::new(100) }]
        );
        assert_eq!(net.acquire(0, 4, "a"), vec![]);
        assert_eq!(net.acquire(1, 5, "a"), vec![send(0, req("a", 1))]); // (1, 1) sorts after (1, 0)
        assert_eq!(net.deliver(1, 0), vec![send(1, rep("a", 3))]);
        assert_eq!(net.deliver(0, 1), vec![send(0, rep("a", 3))]);
        assert_eq!(net.deliver(0, 1), vec![]);
        assert_eq!(net.deliver(1, 0), vec![granted(1, "a", 1, 0)]);
        // Request 3 gives up while waiting: its timer goes, it is rejected; no protocol traffic (2 still waits).
        assert_eq!(
            net.handle(0, Event::Cancel { req: RequestId::new(3) }),
            vec![
                Action::CancelTimer { timer: TimerId::Deadline(RequestId::new(3)) },
                Action::Rejected { req: RequestId::new(3), reason: RejectReason::Cancelled },
            ]
        );
        // Release: RELEASE, then a new REQUEST for the next local waiter, stamped after node 1's (1, 1).
        assert_eq!(net.release(0, 1), vec![send(1, rel("a", 5)), send(1, req("a", 6))]);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![1], "the remote request goes between two local waiters");
        net.release(1, 5);
        net.deliver_all();
        assert_eq!(net.holders("a"), vec![0]);
        assert_eq!(net.engines[0].holder("a"), Some(RequestId::new(2)));
        assert!(net.timers.is_empty(), "request 2's timer was cancelled on grant");
        // Request 4 times out (its timer would not exist; fire one anyway: a stale timer is ignored too).
        assert_eq!(net.handle(0, Event::Timer { timer: TimerId::Deadline(RequestId::new(2)) }), vec![]);
        net.release(0, 2);
        net.deliver_all();
        assert_eq!(net.engines[0].holder("a"), Some(RequestId::new(4)));
        let order: Vec<u64> = net.grants.iter().map(|g| g.1.get()).collect();
        assert_eq!(order, vec![1, 5, 2, 4]);
    }

    /// A waiter whose deadline passes is rejected and, being the last one, withdraws from the protocol.
    #[test]
    fn lamport_engine_deadline_withdraws_the_request() {
        let mut net = Net::new(2, lamport);
        net.acquire(1, 1, "a");
        net.deliver_all();
        let acquire = Event::Acquire {
            req: RequestId::new(2),
            lock: "a".into(),
            deadline: Some(Millis::new(50)),
            ttl: None,
        };
        assert_eq!(
            net.handle(0, acquire),
            vec![
                Action::SetTimer { timer: TimerId::Deadline(RequestId::new(2)), at: Millis::new(50) },
                send(1, req("a", 4))
            ]
        );
        net.now = Millis::new(50);
        assert_eq!(
            net.handle(0, Event::Timer { timer: TimerId::Deadline(RequestId::new(2)) }),
            vec![
                Action::Rejected { req: RequestId::new(2), reason: RejectReason::TimedOut },
                send(1, rel("a", 5))
            ]
        );
        net.deliver_all();
        net.release(1, 1);
        net.deliver_all();
        assert!(net.engines.iter().all(|e| e.protocol().locks.is_empty()));
        assert_eq!(net.engines[0].stats().timed_out, 1);
    }

    #[test]
    fn lamport_random_interleavings_keep_mutual_exclusion_and_serve_everyone() {
        for seed in 0..300 {
            let net = simulate(Lamport::fresh, 3, seed, 400, false, false);
            assert_eq!(net.refused, 0, "seed {seed}: fault-free runs refuse nothing");
        }
        for seed in 0..100 {
            simulate(Lamport::with_ack_elision, 4, seed, 400, false, false);
        }
    }

    #[test]
    fn lamport_random_interleavings_with_restarts() {
        for seed in 0..300 {
            simulate(Lamport::fresh, 3, seed, 500, true, false);
            simulate(Lamport::with_ack_elision, 3, seed, 500, true, false);
        }
    }

    /// Peers answer a restarted node's handshake before their cores know of the restart (see
    /// [`testnet::Net::early_hello`]): the new incarnation can timestamp requests below one already
    /// entered elsewhere, and only the timestamp-0 re-send of entered requests keeps it out.
    #[test]
    fn lamport_random_interleavings_with_restarts_and_early_handshakes() {
        for seed in 0..300 {
            simulate(Lamport::fresh, 3, seed, 500, true, true);
            simulate(Lamport::with_ack_elision, 3, seed, 500, true, true);
        }
    }
}
