//! The part every algorithm shares: local waiters, deadlines, peer incarnations, joining.
//!
//! A node has at most one request *in the protocol* per lock. Several local clients that want the same lock
//! wait here, in FIFO order, behind that one request; when the holder releases, the engine releases in the
//! protocol and, if another local client waits, requests again (so remote nodes get their turn in between:
//! local waiters never starve the cluster).
//!
//! Leases: a grant may come with a lease ([`Event::Acquire`]'s `ttl`). The engine sets a
//! [`TimerId::Lease`] timer at the grant, moves it on [`Event::KeepAlive`], and when it fires releases the lock
//! exactly as [`Event::Release`] would (the protocol's next holder gets a larger fencing token), telling the
//! driver with [`Action::LeaseExpired`]. So a holder that dies or hangs without releasing cannot block a lock
//! for longer than its lease, in the node, the simulator and the model checker alike.
//!
//! Joining: a node that (re)starts does not know the cluster's clocks, so a request it timestamped at once
//! could sort before grants already made. The engine therefore holds local requests back until it has heard
//! every peer's handshake ([`Event::PeerIncarnation`], which carries the peer's clock and applies IR2).
//!
//! Views: [`Event::MembersChanged`] replaces the member set ([`Peers::apply_view`]), lets the protocol drop
//! the excluded members' state and tell the joiners its live requests ([`Protocol::members_changed`]), and
//! re-evaluates the local waiters. From then on messages from non-members are refused. The engine assumes the
//! membership layer excluded a node only after every lease it could have granted ran out.
//!
//! Epochs on messages: every [`Action::Send`] carries the epoch of the view the engine is in, and a message
//! of a *newer* epoch than the receiver's is held back (in arrival order, at most [`MAX_HELD`]) until the
//! receiver installs that view, then delivered before anything else happens in it. The sender acted on
//! the newer view (e.g. it became a lock's probable-owner home and queried the others); a receiver still in the
//! old view would judge the message by the old member set and home and refuse it, and the round would wait
//! for an answer that never comes. Messages of an *older* epoch are delivered as usual: their sender is
//! still judged by the current member set (an excluded sender is refused), and views never reorder a
//! link's messages, so FIFO per pair holds.
//!
//! Try-locks ([`Event::TryAcquire`]): a try for a lock this node holds, or already waits for, is answered
//! [`RejectReason::Locked`] at once, without a message (it would wait behind the local holder or waiter).
//! Otherwise it becomes the lock's one protocol request, issued with [`Protocol::try_request`]; the protocol
//! answers with an entry or [`Output::Busy`], which the engine turns into the rejection (and then serves the
//! next local waiter, if one queued behind the try meanwhile, with an ordinary request). A try waits for
//! nothing else, except that a node that has not joined yet holds it back like any request.
//!
//! Must never: panic on any event, let `HashMap` order reach its output, or read a clock.

use super::{
    Action, CoreError, Event, LockName, LockView, Millis, NodeId, Output, PeerChange, Peers, Protocol,
    RejectReason, RequestId, TimerId,
};
use std::collections::{BTreeMap, VecDeque};

/// The most messages of newer views an engine holds back; beyond it a message is refused
/// ([`CoreError::HeldBackFull`]). A correct peer is at most one view change ahead, and what it sends in that
/// window is a few messages per lock.
pub(crate) const MAX_HELD: usize = 4096;

/// A message of a newer view, waiting until this node installs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Held<M> {
    from: NodeId,
    incarnation: super::Incarnation,
    epoch: u64,
    msg: M,
}

/// Counters kept by the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EngineStats {
    /// Grants to local requests.
    pub granted: u64,
    /// Requests withdrawn by [`Event::Cancel`].
    pub cancelled: u64,
    /// Requests whose deadline passed.
    pub timed_out: u64,
    /// Try requests answered [`RejectReason::Locked`].
    pub locked: u64,
    /// Events refused with a [`CoreError`].
    pub refused: u64,
    /// Grants whose lease ended without a release.
    pub lease_expiries: u64,
}

/// A local request waiting for its lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Waiter {
    req: RequestId,
    deadline: Option<Millis>,
    /// The length of the lease its grant comes with.
    ttl: Option<Millis>,
    /// A try request ([`Event::TryAcquire`]): never waits behind another request.
    attempt: bool,
}

/// The local request in the critical section.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct Holder {
    req: RequestId,
    /// When its lease ends (`None`: held until released).
    lease_until: Option<Millis>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct LocalLock {
    /// Local requests waiting, oldest first.
    waiters: VecDeque<Waiter>,
    /// The local request in the critical section.
    holder: Option<Holder>,
    /// Whether this node has a request outstanding in the protocol (not yet entered).
    requested: bool,
}

impl LocalLock {
    fn holder_req(&self) -> Option<RequestId> {
        self.holder.map(|h| h.req)
    }
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
    /// Messages of newer views than `peers.epoch()`, in arrival order.
    held: VecDeque<Held<P::Msg>>,
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
            held: VecDeque::new(),
            scratch: Vec::new(),
        }
    }

    /// An engine for a node that starts inside view `epoch` (a joiner, or a new incarnation rejoining):
    /// `protocol` must be fresh and built for no members (`P::fresh(me, 0)`); the engine tells it the view's
    /// members and holds local requests back until it has heard every member's handshake (their clocks).
    pub fn in_view(
        protocol: P,
        me: NodeId,
        incarnation: super::Incarnation,
        epoch: u64,
        members: &[(NodeId, super::Incarnation)],
    ) -> Self {
        let mut engine = Engine::new(protocol, Peers::with_members(me, incarnation, [me]));
        engine.joined = false;
        if let Some(change) = engine.peers.apply_view(epoch, members) {
            // A fresh protocol has nothing to tell anyone: its outputs (none) are dropped.
            engine.protocol.members_changed(
                &change.removed,
                &change.added,
                &engine.peers,
                &mut engine.scratch,
            );
            engine.scratch.clear();
        }
        engine.joined = engine.peers.all_known();
        engine
    }

    /// The single entry point: feed one event, collect the actions in `out` (appended, in order).
    pub fn handle(
        &mut self,
        now: Millis,
        event: Event<P::Msg>,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        let result = match event {
            Event::Acquire { req, lock, deadline, ttl } => self.acquire(now, req, lock, deadline, ttl, out),
            Event::TryAcquire { req, lock, ttl } => self.try_acquire(now, req, lock, ttl, out),
            Event::Release { req } => self.release(now, req, out),
            Event::KeepAlive { req, until } => self.keepalive(now, req, until, out),
            Event::Cancel { req } => self.abandon(now, req, RejectReason::Cancelled, out),
            Event::Timer { timer: TimerId::Deadline(req) } => {
                // A timer for a request that was granted or cancelled meanwhile is simply stale.
                match self.requests.get(&req) {
                    Some(lock) if self.locks.get(lock).is_some_and(|l| l.holder_req() != Some(req)) => {
                        self.abandon(now, req, RejectReason::TimedOut, out)
                    }
                    _ => Ok(()),
                }
            }
            Event::Timer { timer: TimerId::Lease(req) } => {
                // Stale if the request was released (or already expired) meanwhile; a keepalive re-sets the
                // timer under the same id, so the driver never delivers the one it replaced.
                match self.held_with_lease(req) {
                    Some(lock) => {
                        self.expire(now, req, lock, out);
                        Ok(())
                    }
                    None => Ok(()),
                }
            }
            Event::Message { from, incarnation, epoch, msg } if epoch > self.peers.epoch() => {
                if self.held.len() >= MAX_HELD {
                    Err(CoreError::HeldBackFull { epoch })
                } else {
                    self.held.push_back(Held { from, incarnation, epoch, msg });
                    Ok(())
                }
            }
            Event::Message { from, incarnation, msg, .. } => self.message(now, from, incarnation, msg, out),
            Event::PeerIncarnation { peer, incarnation, clock } => {
                self.protocol.observe_clock(clock);
                self.peer_incarnation(now, peer, incarnation, out)
            }
            Event::MembersChanged { epoch, members } => self.members_changed(now, epoch, &members, out),
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
        ttl: Option<Millis>,
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
        local.waiters.push_back(Waiter { req, deadline, ttl, attempt: false });
        if let Some(at) = deadline {
            out.push(Action::SetTimer { timer: TimerId::Deadline(req), at });
        }
        self.pump(now, &lock, out);
        Ok(())
    }

    fn try_acquire(
        &mut self,
        now: Millis,
        req: RequestId,
        lock: LockName,
        ttl: Option<Millis>,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        if self.requests.contains_key(&req) {
            return Err(CoreError::DuplicateRequest(req));
        }
        if let Some(local) = self.locks.get(&lock)
            && (local.holder.is_some() || !local.waiters.is_empty())
        {
            // It would wait behind the local holder or the local waiters: locked, without a message.
            let me = self.peers.me();
            let holder = if local.holder.is_some() {
                Some(me)
            } else {
                // A local waiter does not hold: name the holder only if the protocol knows another one.
                self.protocol.view(&lock).holder.filter(|&h| h != me)
            };
            self.stats.locked += 1;
            out.push(Action::Rejected { req, reason: RejectReason::Locked { holder } });
            return Ok(());
        }
        self.requests.insert(req, lock.clone());
        let local = self.locks.entry(lock.clone()).or_default();
        local.waiters.push_back(Waiter { req, deadline: None, ttl, attempt: true });
        self.pump(now, &lock, out);
        Ok(())
    }

    fn release(
        &mut self,
        now: Millis,
        req: RequestId,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        let lock = self.requests.get(&req).cloned().ok_or(CoreError::UnknownRequest(req))?;
        let local = self.locks.get_mut(&lock).ok_or(CoreError::UnknownRequest(req))?;
        let Some(holder) = local.holder.filter(|h| h.req == req) else {
            return Err(CoreError::WrongState(req));
        };
        if holder.lease_until.is_some() {
            out.push(Action::CancelTimer { timer: TimerId::Lease(req) });
        }
        self.leave(now, req, lock, out);
        Ok(())
    }

    /// Ends the grant of the local holder `req`: releases in the protocol and serves the next local waiter.
    fn leave(&mut self, now: Millis, req: RequestId, lock: LockName, out: &mut Vec<Action<P::Msg>>) {
        if let Some(local) = self.locks.get_mut(&lock) {
            local.holder = None;
        }
        self.requests.remove(&req);
        self.protocol.release(&lock, &self.peers, &mut self.scratch);
        self.drain(now, out);
        self.pump(now, &lock, out);
    }

    /// The lease of the holder `req` ended: the lock is released as if the holder had released it.
    fn expire(&mut self, now: Millis, req: RequestId, lock: LockName, out: &mut Vec<Action<P::Msg>>) {
        self.stats.lease_expiries += 1;
        out.push(Action::LeaseExpired { req, lock: lock.clone() });
        self.leave(now, req, lock, out);
    }

    fn keepalive(
        &mut self,
        now: Millis,
        req: RequestId,
        until: Millis,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        let lock = self.requests.get(&req).cloned().ok_or(CoreError::UnknownRequest(req))?;
        let local = self.locks.get_mut(&lock).ok_or(CoreError::UnknownRequest(req))?;
        let Some(holder) = local.holder.as_mut().filter(|h| h.req == req) else {
            return Err(CoreError::WrongState(req));
        };
        match holder.lease_until {
            // Held until released: there is no lease to extend.
            None => Ok(()),
            Some(end) if end <= now => {
                // The lease ran out before the keepalive came (its timer just had not fired yet).
                out.push(Action::CancelTimer { timer: TimerId::Lease(req) });
                self.expire(now, req, lock, out);
                Err(CoreError::LeaseExpired(req))
            }
            Some(end) => {
                if until > end {
                    holder.lease_until = Some(until);
                    out.push(Action::SetTimer { timer: TimerId::Lease(req), at: until });
                }
                Ok(())
            }
        }
    }

    /// The lock of `req` if `req` holds it with a lease.
    fn held_with_lease(&self, req: RequestId) -> Option<LockName> {
        let lock = self.requests.get(&req)?;
        let holder = self.locks.get(lock)?.holder?;
        (holder.req == req && holder.lease_until.is_some()).then(|| lock.clone())
    }

    /// Removes a waiting request (cancel or deadline). Withdraws from the protocol if it was the last one.
    fn abandon(
        &mut self,
        now: Millis,
        req: RequestId,
        reason: RejectReason,
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        let lock = self.requests.get(&req).cloned().ok_or(CoreError::UnknownRequest(req))?;
        let local = self.locks.get_mut(&lock).ok_or(CoreError::UnknownRequest(req))?;
        let Some(pos) = local.waiters.iter().position(|w| w.req == req) else {
            return Err(CoreError::WrongState(req));
        };
        let deadline = local.waiters.remove(pos).and_then(|w| w.deadline);
        self.requests.remove(&req);
        if reason == RejectReason::Cancelled && deadline.is_some() {
            out.push(Action::CancelTimer { timer: TimerId::Deadline(req) });
        }
        match reason {
            RejectReason::Cancelled => self.stats.cancelled += 1,
            RejectReason::TimedOut => self.stats.timed_out += 1,
            RejectReason::Locked { .. } => self.stats.locked += 1,
        }
        out.push(Action::Rejected { req, reason });
        if local.waiters.is_empty() && local.requested {
            local.requested = false;
            self.protocol.withdraw(&lock, &self.peers, &mut self.scratch);
            self.drain(now, out);
        }
        self.forget_if_idle(&lock);
        Ok(())
    }

    fn message(
        &mut self,
        now: Millis,
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
            _ => {
                self.peer_incarnation(now, from, incarnation, out)?;
                if self.peers.incarnation(from) != Some(incarnation) {
                    // A newer incarnation no view has admitted yet (its messages of the admitting view are
                    // held back until this node installs it, so only a confused peer gets here).
                    return Err(CoreError::UnknownPeer(from));
                }
            }
        }
        let result = self.protocol.on_message(from, msg, &mut self.peers, &mut self.scratch);
        self.drain(now, out);
        // A protocol may learn of restarts from a message (probable-owner's recovery query); joining may follow.
        self.maybe_join(now, out);
        result
    }

    fn peer_incarnation(
        &mut self,
        now: Millis,
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
                self.drain(now, out);
            }
            PeerChange::Joined | PeerChange::Same | PeerChange::Stale | PeerChange::NotAdmitted => {}
        }
        self.maybe_join(now, out);
        Ok(())
    }

    /// Installs a view: the peer table first, then the protocol drops the excluded and tells the joiners,
    /// then every lock with local waiters is pumped again (a waiter may now be served).
    fn members_changed(
        &mut self,
        now: Millis,
        epoch: u64,
        members: &[(NodeId, super::Incarnation)],
        out: &mut Vec<Action<P::Msg>>,
    ) -> Result<(), CoreError> {
        if !members.iter().any(|&(id, _)| id == self.peers.me()) {
            return Err(CoreError::ExcludedFromView { epoch });
        }
        let change = self.peers.apply_view(epoch, members).ok_or(CoreError::StaleView { epoch })?;
        if !change.removed.is_empty() || !change.added.is_empty() {
            self.protocol.members_changed(&change.removed, &change.added, &self.peers, &mut self.scratch);
            self.drain(now, out);
        }
        // Messages sent in this view (or an older one) that came early: delivered now, in arrival order. A
        // refusal among them (a sender this view excludes) is counted like any refused message.
        let (ready, later): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|h| h.epoch <= epoch);
        self.held = later;
        for Held { from, incarnation, msg, .. } in ready {
            if self.message(now, from, incarnation, msg, out).is_err() {
                self.stats.refused += 1;
            }
        }
        if self.joined {
            let waiting: Vec<LockName> = self.locks.keys().cloned().collect();
            for lock in waiting {
                self.pump(now, &lock, out);
            }
        } else {
            self.maybe_join(now, out);
        }
        Ok(())
    }

    fn maybe_join(&mut self, now: Millis, out: &mut Vec<Action<P::Msg>>) {
        if self.joined || !self.peers.all_known() {
            return;
        }
        self.joined = true;
        let waiting: Vec<LockName> = self.locks.keys().cloned().collect();
        for lock in waiting {
            self.pump(now, &lock, out);
        }
    }

    /// Issues the protocol request for `lock` if a local waiter needs one.
    fn pump(&mut self, now: Millis, lock: &str, out: &mut Vec<Action<P::Msg>>) {
        let Some(local) = self.locks.get_mut(lock) else { return };
        if self.joined
            && local.holder.is_none()
            && !local.requested
            && let Some(head) = local.waiters.front()
        {
            local.requested = true;
            if head.attempt {
                self.protocol.try_request(lock, &self.peers, &mut self.scratch);
            } else {
                self.protocol.request(lock, &self.peers, &mut self.scratch);
            }
            self.drain(now, out);
        }
        self.forget_if_idle(lock);
    }

    fn forget_if_idle(&mut self, lock: &str) {
        if self.locks.get(lock).is_some_and(|l| l.holder.is_none() && l.waiters.is_empty() && !l.requested) {
            self.locks.remove(lock);
        }
    }

    /// Turns protocol outputs into actions; an entry goes to the oldest local waiter (and starts its lease).
    fn drain(&mut self, now: Millis, out: &mut Vec<Action<P::Msg>>) {
        let mut outputs = std::mem::take(&mut self.scratch);
        let mut repump: Vec<LockName> = Vec::new();
        for output in outputs.drain(..) {
            match output {
                Output::Send { to, msg } => out.push(Action::Send { to, epoch: self.peers.epoch(), msg }),
                Output::Busy { lock, holder } => {
                    let Some(local) = self.locks.get_mut(&lock).filter(|l| l.requested && l.holder.is_none())
                    else {
                        // Contract breach by the protocol (busy with no request outstanding): nothing to end.
                        tracing::error!(%lock, "protocol answered busy for no pending request; ignored");
                        continue;
                    };
                    // The protocol has withdrawn its request.
                    local.requested = false;
                    if let Some(w) = local.waiters.front().filter(|w| w.attempt) {
                        let req = w.req;
                        local.waiters.pop_front();
                        self.requests.remove(&req);
                        self.stats.locked += 1;
                        out.push(Action::Rejected { req, reason: RejectReason::Locked { holder } });
                    }
                    // Ordinary waiters that queued behind the try ask for themselves now, ordinarily (also when
                    // the try was cancelled meanwhile and one of them had taken over its protocol request).
                    repump.push(lock);
                }
                Output::Entered { lock, token } => {
                    let local = self.locks.entry(lock.clone()).or_default();
                    local.requested = false;
                    match local.waiters.pop_front() {
                        Some(Waiter { req, deadline, ttl, .. }) => {
                            let lease_until = ttl.map(|ttl| Millis::new(now.get().saturating_add(ttl.get())));
                            local.holder = Some(Holder { req, lease_until });
                            if deadline.is_some() {
                                out.push(Action::CancelTimer { timer: TimerId::Deadline(req) });
                            }
                            self.stats.granted += 1;
                            out.push(Action::Granted { req, lock, token });
                            if let Some(at) = lease_until {
                                out.push(Action::SetTimer { timer: TimerId::Lease(req), at });
                            }
                        }
                        None => {
                            // Contract breach by the protocol (entered after a withdraw): leave at once
                            // rather than hold a lock nobody asked for.
                            tracing::error!(%lock, "protocol entered with no local waiter; releasing");
                            let mut again = Vec::new();
                            self.protocol.release(&lock, &self.peers, &mut again);
                            for o in again {
                                if let Output::Send { to, msg } = o {
                                    out.push(Action::Send { to, epoch: self.peers.epoch(), msg });
                                }
                            }
                            self.locks.remove(&lock);
                        }
                    }
                }
            }
        }
        self.scratch = outputs;
        for lock in repump {
            self.pump(now, &lock, out);
        }
    }

    /// The protocol (read-only), e.g. for its clock or counters.
    pub fn protocol(&self) -> &P {
        &self.protocol
    }

    /// How many messages of newer views are held back.
    pub fn held_back(&self) -> usize {
        self.held.len()
    }

    /// The peer table.
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Whether this node has heard every peer since it started.
    pub fn joined(&self) -> bool {
        self.joined
    }

    /// What this engine has done so far (grants, cancellations, timeouts, refusals, lease expiries).
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The Lamport clock.
    pub fn clock(&self) -> super::LamportTs {
        self.protocol.clock()
    }

    /// The local request holding `lock`, if any.
    pub fn holder(&self, lock: &str) -> Option<RequestId> {
        self.locks.get(lock).and_then(LocalLock::holder_req)
    }

    /// When the lease of the granted request `req` ends (`None` if it is not held, or held without a lease).
    pub fn lease_until(&self, req: RequestId) -> Option<Millis> {
        let holder = self.locks.get(self.requests.get(&req)?)?.holder?;
        if holder.req == req { holder.lease_until } else { None }
    }

    /// Local requests waiting for `lock`, oldest first.
    pub fn local_waiters(&self, lock: &str) -> Vec<RequestId> {
        self.locks.get(lock).map(|l| l.waiters.iter().map(|w| w.req).collect()).unwrap_or_default()
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

    /// Whether the protocol asks for a view bump ([`Protocol::wants_view_bump`]).
    pub fn wants_view_bump(&self) -> bool {
        self.protocol.wants_view_bump(&self.peers)
    }

    /// Whether a request for `lock` needs `peer` to be reachable to make progress.
    pub fn needs_peer(&self, lock: &str, peer: NodeId) -> bool {
        peer != self.peers.me() && self.peers.contains(peer) && self.protocol.needs_peer(lock, peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::lamport::{Lamport, LamportMsg};
    use crate::algo::{FencingToken, Incarnation};

    fn engine(me: u16, n: usize) -> Engine<Lamport> {
        Engine::new(Lamport::fresh(NodeId::new(me), n), Peers::formed(NodeId::new(me), n))
    }

    fn step(e: &mut Engine<Lamport>, now: u64, event: Event<LamportMsg>) -> Vec<Action<LamportMsg>> {
        let mut out = Vec::new();
        e.handle(Millis::new(now), event, &mut out).expect("a well-formed event");
        out
    }

    fn acquire(req: u64, ttl: Option<u64>) -> Event<LamportMsg> {
        Event::Acquire {
            req: RequestId::new(req),
            lock: "a".into(),
            deadline: None,
            ttl: ttl.map(Millis::new),
        }
    }

    fn token_of(actions: &[Action<LamportMsg>], req: u64) -> FencingToken {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Granted { req: r, token, .. } if *r == RequestId::new(req) => Some(*token),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no grant for request {req} in {actions:?}"))
    }

    fn lease_timer(req: u64, at: u64) -> Action<LamportMsg> {
        Action::SetTimer { timer: TimerId::Lease(RequestId::new(req)), at: Millis::new(at) }
    }

    /// Delivers every message in `out` from `from` to the other engine of a two-node cluster, and what that
    /// engine answers back, until both are quiet; returns every action of `to`.
    fn exchange(
        engines: &mut [Engine<Lamport>; 2],
        now: u64,
        from: usize,
        out: Vec<Action<LamportMsg>>,
    ) -> Vec<Vec<Action<LamportMsg>>> {
        let mut seen = vec![Vec::new(), Vec::new()];
        let mut queue: VecDeque<(usize, Action<LamportMsg>)> = out.into_iter().map(|a| (from, a)).collect();
        while let Some((node, action)) = queue.pop_front() {
            if let Action::Send { to, epoch, msg } = action {
                let to = to.index();
                let from = NodeId::new(node as u16);
                let event = Event::Message { from, incarnation: Incarnation::new(0), epoch, msg };
                for a in step(&mut engines[to], now, event) {
                    seen[to].push(a.clone());
                    queue.push_back((to, a));
                }
            }
        }
        seen
    }

    #[test]
    fn a_grant_with_a_ttl_sets_its_lease_timer_and_release_cancels_it() {
        let mut e = engine(0, 1);
        let out = step(&mut e, 10, acquire(1, Some(100)));
        assert_eq!(
            out,
            vec![
                Action::Granted { req: RequestId::new(1), lock: "a".into(), token: token_of(&out, 1) },
                lease_timer(1, 110),
            ]
        );
        assert_eq!(e.lease_until(RequestId::new(1)), Some(Millis::new(110)));
        assert_eq!(
            step(&mut e, 20, Event::Release { req: RequestId::new(1) }),
            vec![Action::CancelTimer { timer: TimerId::Lease(RequestId::new(1)) }]
        );
        // The timer the driver failed to forget is stale: nothing happens.
        assert_eq!(step(&mut e, 110, Event::Timer { timer: TimerId::Lease(RequestId::new(1)) }), vec![]);
        assert_eq!(e.stats().lease_expiries, 0);
    }

    #[test]
    fn lease_expiry_releases_and_the_next_local_waiter_gets_a_larger_token() {
        let mut e = engine(0, 1);
        let first = token_of(&step(&mut e, 0, acquire(1, Some(100))), 1);
        assert_eq!(step(&mut e, 5, acquire(2, Some(100))), vec![]);
        let out = step(&mut e, 100, Event::Timer { timer: TimerId::Lease(RequestId::new(1)) });
        let second = token_of(&out, 2);
        assert_eq!(
            out,
            vec![
                Action::LeaseExpired { req: RequestId::new(1), lock: "a".into() },
                Action::Granted { req: RequestId::new(2), lock: "a".into(), token: second },
                lease_timer(2, 200),
            ]
        );
        assert!(second > first, "{second:?} after {first:?}");
        assert_eq!(e.holder("a"), Some(RequestId::new(2)));
        assert_eq!(e.stats().lease_expiries, 1);
        // The expired holder no longer holds anything: its late release is refused.
        let mut out = Vec::new();
        assert_eq!(
            e.handle(Millis::new(150), Event::Release { req: RequestId::new(1) }, &mut out),
            Err(CoreError::UnknownRequest(RequestId::new(1)))
        );
        assert_eq!(out, vec![]);
    }

    #[test]
    fn keepalive_moves_the_lease_end_and_never_shortens_it() {
        let mut e = engine(0, 1);
        step(&mut e, 0, acquire(1, Some(100)));
        let keep = |until: u64| Event::KeepAlive { req: RequestId::new(1), until: Millis::new(until) };
        assert_eq!(step(&mut e, 50, keep(150)), vec![lease_timer(1, 150)]);
        assert_eq!(e.lease_until(RequestId::new(1)), Some(Millis::new(150)));
        assert_eq!(step(&mut e, 60, keep(120)), vec![], "an earlier end does not shorten the lease");
        assert_eq!(e.lease_until(RequestId::new(1)), Some(Millis::new(150)));
        // The driver replaced the timer at 100 by the one at 150: only that one fires, and expires the lease.
        let out = step(&mut e, 150, Event::Timer { timer: TimerId::Lease(RequestId::new(1)) });
        assert_eq!(out, vec![Action::LeaseExpired { req: RequestId::new(1), lock: "a".into() }]);
        assert_eq!(e.holder("a"), None);
    }

    #[test]
    fn a_keepalive_at_or_after_the_lease_end_expires_it_and_is_refused() {
        let mut e = engine(0, 1);
        step(&mut e, 0, acquire(1, Some(100)));
        let mut out = Vec::new();
        let late = Event::KeepAlive { req: RequestId::new(1), until: Millis::new(200) };
        assert_eq!(
            e.handle(Millis::new(100), late, &mut out),
            Err(CoreError::LeaseExpired(RequestId::new(1)))
        );
        assert_eq!(
            out,
            vec![
                Action::CancelTimer { timer: TimerId::Lease(RequestId::new(1)) },
                Action::LeaseExpired { req: RequestId::new(1), lock: "a".into() },
            ]
        );
        assert_eq!(e.holder("a"), None);
        assert_eq!(e.stats().lease_expiries, 1);
    }

    #[test]
    fn keepalive_of_a_waiting_unknown_or_lease_free_request() {
        let mut e = engine(0, 1);
        step(&mut e, 0, acquire(1, None));
        step(&mut e, 0, acquire(2, Some(100)));
        let mut out = Vec::new();
        let keep = |req: u64| Event::KeepAlive { req: RequestId::new(req), until: Millis::new(500) };
        assert_eq!(
            e.handle(Millis::new(1), keep(2), &mut out),
            Err(CoreError::WrongState(RequestId::new(2)))
        );
        assert_eq!(
            e.handle(Millis::new(1), keep(9), &mut out),
            Err(CoreError::UnknownRequest(RequestId::new(9)))
        );
        // Held until released: there is no lease, so nothing to extend and nothing to expire.
        assert_eq!(e.handle(Millis::new(1), keep(1), &mut out), Ok(()));
        assert_eq!(out, vec![]);
        assert_eq!(e.lease_until(RequestId::new(1)), None);
    }

    /// Lamport rule 3 on expiry: the expired holder's RELEASE reaches the peer, whose waiting request enters
    /// with a larger fencing token.
    #[test]
    fn lease_expiry_releases_in_the_protocol_so_a_peer_enters_with_a_larger_token() {
        let mut engines = [engine(0, 2), engine(1, 2)];
        let out = step(&mut engines[0], 0, acquire(1, Some(50)));
        let seen = exchange(&mut engines, 0, 0, out);
        let first = token_of(&seen[0], 1);
        assert_eq!(engines[0].holder("a"), Some(RequestId::new(1)));
        let out = step(&mut engines[1], 1, acquire(7, None));
        exchange(&mut engines, 1, 1, out);
        assert_eq!(engines[1].holder("a"), None, "node 1 waits behind node 0's lease");

        let out = step(&mut engines[0], 50, Event::Timer { timer: TimerId::Lease(RequestId::new(1)) });
        assert!(matches!(out[0], Action::LeaseExpired { req, .. } if req == RequestId::new(1)), "{out:?}");
        assert!(
            out.iter().any(|a| matches!(a, Action::Send { msg: LamportMsg::Release { .. }, .. })),
            "{out:?}"
        );
        let seen = exchange(&mut engines, 50, 0, out);
        let second = token_of(&seen[1], 7);
        assert!(second > first, "{second:?} after {first:?}");
        assert_eq!(engines[1].holder("a"), Some(RequestId::new(7)));
        assert_eq!(engines[0].holder("a"), None);
    }
}
