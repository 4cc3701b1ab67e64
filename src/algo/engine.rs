//! The part every algorithm shares: local waiters, deadlines, peer incarnations, joining.
//!
//! A node has at most one request *in the protocol* per lock. Several local clients that want the same lock
//! wait here, in FIFO order, behind that one request; when the holder releases, the engine releases in the
//! protocol and, if another local client waits, requests again (so remote nodes get their turn in between:
//! local waiters never starve the cluster).
//!
//! Joining: a node that (re)starts does not know the cluster's clocks, so a request it timestamped at once
//! could sort before grants already made. The engine therefore holds local requests back until it has heard
//! every peer's handshake ([`Event::PeerIncarnation`], which carries the peer's clock and applies IR2).
//!
//! Must never: panic on any event, let `HashMap` order reach its output, or read a clock.

use super::{
    Action, CoreError, Event, LockName, LockView, Millis, NodeId, Output, PeerChange, Peers, Protocol,
    RejectReason, RequestId, TimerId,
};
use std::collections::{BTreeMap, VecDeque};

/// Counters kept by the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EngineStats {
    /// Grants to local requests.
    pub granted: u64,
    /// Requests withdrawn by [`Event::Cancel`].
    pub cancelled: u64,
    /// Requests whose deadline passed.
    pub timed_out: u64,
    /// Events refused with a [`CoreError`].
    pub refused: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct LocalLock {
    /// Local requests waiting, oldest first, with their deadlines.
    waiters: VecDeque<(RequestId, Option<Millis>)>,
    /// The local request in the critical section.
    holder: Option<RequestId>,
    /// Whether this node has a request outstanding in the protocol (not yet entered).
    requested: bool,
}

/// One node's core for one algorithm: the [`Protocol`] plus local waiters and peer bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Engine<P: Protocol> {
    protocol: P,
    peers: Peers,
    joined: bool,
    locks: BTreeMap<LockName, LocalLock>,
    requests: BTreeMap<RequestId, LockName>,
    stats: EngineStats,
    scratch: Vec<Output<P::Msg>>,
}

impl<P: Protocol> Engine<P> {
    /// An engine over `protocol`. It joins once `peers` knows every peer's incarnation.
    pub fn new(protocol: P, peers: Peers) -> Self {
        let joined = peers.all_known();
        Engine {
            protocol,
            peers,
            joined,
            locks: BTreeMap::new(),
            requests: BTreeMap::new(),
            stats: EngineStats::default(),
            scratch: Vec::new(),
        }
    }

    /// The single entry point: feed one event, collect the actions in `out` (appended, in order).
    pub fn handle(
        &mut self,
        now: Millis,
        event: Event<P::Msg>,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        let result = match event {
            Event::Acquire { req, lock, deadline } => self.acquire(now, req, lock, deadline, out),
            Event::Release { req } => self.release(req, out),
            Event::Cancel { req } => self.abandon(req, RejectReason::Cancelled, out),
            Event::Timer { timer: TimerId::Deadline(req) } => {
                // A timer for a request that was granted or cancelled meanwhile is simply stale.
                match self.requests.get(&req) {
                    Some(lock) if self.locks.get(lock).is_some_and(|l| l.holder != Some(req)) => {
                        self.abandon(req, RejectReason::TimedOut, out)
                    }
                    _ => Ok(()),
                }
            }
            Event::Message { from, incarnation, msg } => self.message(from, incarnation, msg, out),
            Event::PeerIncarnation { peer, incarnation, clock } => {
                self.protocol.observe_clock(clock);
                self.peer_incarnation(peer, incarnation, out)
            }
        };
        if result.is_err() {
            self.stats.refused += 1;
        }
        result
    }

    fn acquire(
        &mut self,
        now: Millis,
        req: RequestId,
        lock: LockName,
        deadline: Option<Millis>,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        if self.requests.contains_key(&req) {
            return Err(CoreError::DuplicateRequest(req));
        }
        if deadline.is_some_and(|d| d <= now) {
            // Already expired: answer without touching the protocol (a try-lock that cannot wait).
            self.stats.timed_out += 1;
            out.push(Action::Rejected { req, reason: RejectReason::TimedOut });
            return Ok(());
        }
        self.requests.insert(req, lock.clone());
        let local = self.locks.entry(lock.clone()).or_default();
        local.waiters.push_back((req, deadline));
        if let Some(at) = deadline {
            out.push(Action::SetTimer { timer: TimerId::Deadline(req), at });
        }
        self.pump(&lock, out);
        Ok(())
    }

    fn release(&mut self, req: RequestId, out: &mut Vec<Action<P::Msg>>) -> Result<(), CoreError> {
        let lock = self.requests.get(&req).cloned().ok_or(CoreError::UnknownRequest(req))?;
        let local = self.locks.get_mut(&lock).ok_or(CoreError::UnknownRequest(req))?;
        if local.holder != Some(req) {
            return Err(CoreError::WrongState(req));
        }
        local.holder = None;
        self.requests.remove(&req);
        self.protocol.release(&lock, &self.peers, &mut self.scratch);
        self.drain(out);
        self.pump(&lock, out);
        Ok(())
    }

    /// Removes a waiting request (cancel or deadline). Withdraws from the protocol if it was the last one.
    fn abandon(
        &mut self,
        req: RequestId,
        reason: RejectReason,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        let lock = self.requests.get(&req).cloned().ok_or(CoreError::UnknownRequest(req))?;
        let local = self.locks.get_mut(&lock).ok_or(CoreError::UnknownRequest(req))?;
        let Some(pos) = local.waiters.iter().position(|(r, _)| *r == req) else {
            return Err(CoreError::WrongState(req));
        };
        let (_, deadline) = local.waiters.remove(pos).unwrap_or((req, None));
        self.requests.remove(&req);
        if reason == RejectReason::Cancelled && deadline.is_some() {
            out.push(Action::CancelTimer { timer: TimerId::Deadline(req) });
        }
        match reason {
            RejectReason::Cancelled => self.stats.cancelled += 1,
            RejectReason::TimedOut => self.stats.timed_out += 1,
        }
        out.push(Action::Rejected { req, reason });
        if local.waiters.is_empty() && local.requested {
            local.requested = false;
            self.protocol.withdraw(&lock, &self.peers, &mut self.scratch);
            self.drain(out);
        }
        self.forget_if_idle(&lock);
        Ok(())
    }

    fn message(
        &mut self,
        from: NodeId,
        incarnation: super::Incarnation,
        msg: P::Msg,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        if from == self.peers.me() || !self.peers.contains(from) {
            return Err(CoreError::UnknownPeer(from));
        }
        match self.peers.incarnation(from) {
            Some(known) if incarnation < known => {
                return Err(CoreError::StaleIncarnation { peer: from, incarnation });
            }
            Some(known) if incarnation == known => {}
            // A message from an incarnation whose handshake we have not seen: the transport delivers the
            // handshake first, so treat the message as the introduction.
            _ => self.peer_incarnation(from, incarnation, out)?,
        }
        let result = self.protocol.on_message(from, msg, &mut self.peers, &mut self.scratch);
        self.drain(out);
        // A protocol may learn of restarts from a message (probable-owner's recovery query); joining may follow.
        self.maybe_join(out);
        result
    }

    fn peer_incarnation(
        &mut self,
        peer: NodeId,
        incarnation: super::Incarnation,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        if peer == self.peers.me() {
            return Err(CoreError::UnknownPeer(peer));
        }
        match self.peers.observe(peer, incarnation) {
            PeerChange::Unknown => return Err(CoreError::UnknownPeer(peer)),
            PeerChange::Restarted => {
                self.protocol.peer_restarted(peer, &self.peers, &mut self.scratch);
                self.drain(out);
            }
            PeerChange::Joined | PeerChange::Same | PeerChange::Stale => {}
        }
        self.maybe_join(out);
        Ok(())
    }

    fn maybe_join(&mut self, out: &mut Vec<Action<P::Msg>>) {
        if self.joined || !self.peers.all_known() {
            return;
        }
        self.joined = true;
        let waiting: Vec<LockName> = self.locks.keys().cloned().collect();
        for lock in waiting {
            self.pump(&lock, out);
        }
    }

    /// Issues the protocol request for `lock` if a local waiter needs one.
    fn pump(&mut self, lock: &str, out: &mut Vec<Action<P::Msg>>) {
        let Some(local) = self.locks.get_mut(lock) else { return };
        if self.joined && local.holder.is_none() && !local.requested && !local.waiters.is_empty() {
            local.requested = true;
            self.protocol.request(lock, &self.peers, &mut self.scratch);
            self.drain(out);
        }
        self.forget_if_idle(lock);
    }

    fn forget_if_idle(&mut self, lock: &str) {
        if self.locks.get(lock).is_some_and(|l| l.holder.is_none() && l.waiters.is_empty() && !l.requested) {
            self.locks.remove(lock);
        }
    }

    /// Turns protocol outputs into actions; an entry goes to the oldest local waiter.
    fn drain(&mut self, out: &mut Vec<Action<P::Msg>>) {
        let mut outputs = std::mem::take(&mut self.scratch);
        for output in outputs.drain(..) {
            match output {
                Output::Send { to, msg } => out.push(Action::Send { to, msg }),
                Output::Entered { lock, token } => {
                    let local = self.locks.entry(lock.clone()).or_default();
                    local.requested = false;
                    match local.waiters.pop_front() {
                        Some((req, deadline)) => {
                            local.holder = Some(req);
                            if deadline.is_some() {
                                out.push(Action::CancelTimer { timer: TimerId::Deadline(req) });
                            }
                            self.stats.granted += 1;
                            out.push(Action::Granted { req, lock, token });
                        }
                        None => {
                            // Contract breach by the protocol (entered after a withdraw): leave at once
                            // rather than hold a lock nobody asked for.
                            tracing::error!(%lock, "protocol entered with no local waiter; releasing");
                            let mut again = Vec::new();
                            self.protocol.release(&lock, &self.peers, &mut again);
                            for o in again {
                                if let Output::Send { to, msg } = o {
                                    out.push(Action::Send { to, msg });
                                }
                            }
                            self.locks.remove(&lock);
                        }
                    }
                }
            }
        }
        self.scratch = outputs;
    }

    /// The protocol (read-only), e.g. for its clock or counters.
    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    /// The peer table.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Whether this node has heard every peer since it started.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The Lamport clock.
    pub fn clock(&self) -> super::LamportTs {
        self.protocol.clock()
    }

    /// The local request holding `lock`, if any.
    pub fn holder(&self, lock: &str) -> Option<RequestId> {
        self.locks.get(lock).and_then(|l| l.holder)
    }

    /// Local requests waiting for `lock`, oldest first.
    pub fn local_waiters(&self, lock: &str) -> Vec<RequestId> {
        self.locks.get(lock).map(|l| l.waiters.iter().map(|(r, _)| *r).collect()).unwrap_or_default()
    }

    /// Every lock with local state (held or waited for), in name order.
    pub fn active_locks(&self) -> impl Iterator<Item = &str> {
        self.locks.keys().map(String::as_str)
    }

    /// The lock a live request is for.
    pub fn lock_of(&self, req: RequestId) -> Option<&str> {
        self.requests.get(&req).map(String::as_str)
    }

    /// What this node knows about `lock`.
    pub fn view(&self, lock: &str) -> LockView {
        self.protocol.view(lock)
    }

    /// Whether a request for `lock` needs `peer` to be reachable to make progress.
    pub fn needs_peer(&self, lock: &str, peer: NodeId) -> bool {
        self.protocol.needs_peer(lock, peer)
    }
}
