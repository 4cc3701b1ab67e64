//! The mutex engines on top of the membership core: every process runs `Engine<Lamport>`,
//! `Engine<RicartAgrawala>` and `Engine<ProbableOwner>` over the views its membership core installs, and
//! grants only while its member lease says it may act.
//!
//! The driver rules (what a node must do, and what this driver does):
//! - An installed view that lists the process: the engines move to it ([`Event::MembersChanged`], members as
//!   `(id, incarnation)`), or are created in it ([`Engine::in_view`]) if the process had none. Before that,
//!   the process sends a handshake (its three clocks) to every member the view adds, over the same FIFO
//!   connection as the engine messages, tagged with the view's epoch.
//! - A view that does not list it: the engines are dropped (a new stint starts with fresh engines).
//! - A view without a peer the engines had: the connection to it is torn down; engine messages still in
//!   flight either way are lost (the real transport disconnects on install), so nothing of an earlier stint
//!   of that peer reaches a later one.
//! - Engine messages and handshakes of a newer epoch than the receiver's engines (or for a process without
//!   engines yet) wait in the driver until the receiver's engines are in that epoch; engine messages to a
//!   process whose engines exist go straight to the engine, which holds newer ones itself.
//! - Partitions delay engine messages (the real links resend after a reconnect) instead of dropping them;
//!   messages to a dead process are lost.
//! - [`membership::Action::Active`]`(false)`: local holders are released. Waiting local requests are
//!   cancelled ([`Event::Cancel`]) unless the process still hears a majority of its view
//!   ([`membership::Membership::hears_majority`]): then they wait, and are cancelled only if the process is
//!   still not active `S + L + 2·retry` later (the node's view-change bound). An acquire at a process that is
//!   not active is refused. A grant that arrives while the process is not active is released at once and
//!   never reaches the client; if the process hears a majority, the request is parked and asks again (a new
//!   request id, at the back of the queue) when the process acts again.
//! - A probable-owner engine that asks for a view bump gets [`membership::Event::Renew`].
//!
//! Checked after every step: per algorithm and lock at most one holder whose grant is valid on its own
//! clock (its engine still holds it, its TTL has not run out, and its process acts; a crashed holder's
//! grant stays valid for its client until the TTL or the member lease it had would have ended); fencing
//! tokens strictly increase per algorithm and lock. At the end: every request issued before the cluster
//! converged has been answered, and a probe at every member for every algorithm is granted.
//!
//! Must never: treat a grant as valid while its process does not act, or deliver an engine message of one
//! stint of a peer to a later one.

use super::checks::show;
use super::driver::{Envelope, Item, MemberSim, Payload, Step, note};
use crate::algo::lamport::{Lamport, LamportMsg};
use crate::algo::membership::{self, View};
use crate::algo::probable_owner::{PoMsg, ProbableOwner};
use crate::algo::ricart_agrawala::{RaMsg, RicartAgrawala};
use crate::algo::{
    Action, Algorithm, Engine, Event, FencingToken, Incarnation, LamportTs, Millis, NodeId, Protocol,
    RejectReason, RequestId, TimerId,
};
use std::collections::{BTreeMap, BTreeSet};

/// A message of one of the three engines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum AlgoMsg {
    Lamport(LamportMsg),
    Ra(RaMsg),
    Po(PoMsg),
}

impl AlgoMsg {
    fn algorithm(&self) -> Algorithm {
        match self {
            AlgoMsg::Lamport(_) => Algorithm::Lamport,
            AlgoMsg::Ra(_) => Algorithm::RicartAgrawala,
            AlgoMsg::Po(_) => Algorithm::ProbableOwner,
        }
    }
}

/// What the engine connection between two processes carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum EngineBody {
    /// The handshake: the sender's clock in each engine.
    Hello { clocks: [LamportTs; 3] },
    /// An engine message.
    Msg(AlgoMsg),
}

/// One process's three engines and their timers.
pub(super) struct Engines {
    /// The epoch of the view the engines are in.
    epoch: u64,
    /// Its members.
    members: BTreeSet<(NodeId, Incarnation)>,
    lamport: Engine<Lamport>,
    ra: Engine<RicartAgrawala>,
    po: Engine<ProbableOwner>,
    /// Engine timers (local times).
    timers: BTreeMap<(Algorithm, TimerId), Millis>,
    /// The epoch in which the engines last asked for a view bump (asked once per view).
    renew_asked: Option<u64>,
}

impl Engines {
    fn new(me: NodeId, inc: Incarnation, view: &View) -> Self {
        let members = members_of(view);
        let list: Vec<(NodeId, Incarnation)> = members.iter().copied().collect();
        let epoch = view.epoch.get();
        Engines {
            epoch,
            members,
            lamport: Engine::in_view(Lamport::fresh(me, 0), me, inc, epoch, &list),
            ra: Engine::in_view(RicartAgrawala::fresh(me, 0), me, inc, epoch, &list),
            po: Engine::in_view(ProbableOwner::fresh(me, 0), me, inc, epoch, &list),
            timers: BTreeMap::new(),
            renew_asked: None,
        }
    }

    fn clocks(&self) -> [LamportTs; 3] {
        [self.lamport.clock(), self.ra.clock(), self.po.clock()]
    }

    fn wants_view_bump(&self) -> bool {
        self.lamport.wants_view_bump() || self.ra.wants_view_bump() || self.po.wants_view_bump()
    }

    /// What engine `algo` knows of `lock` and its peers (for liveness failures).
    fn describe(&self, algo: Algorithm, lock: &str) -> String {
        let (joined, held, peers, view) = match algo {
            Algorithm::Lamport => (
                self.lamport.joined(),
                self.lamport.held_back(),
                format!("{:?}", self.lamport.peers()),
                self.lamport.view(lock),
            ),
            Algorithm::RicartAgrawala => {
                (self.ra.joined(), self.ra.held_back(), format!("{:?}", self.ra.peers()), self.ra.view(lock))
            }
            Algorithm::ProbableOwner => {
                (self.po.joined(), self.po.held_back(), format!("{:?}", self.po.peers()), self.po.view(lock))
            }
        };
        format!(
            "engine epoch {}, joined {joined}, {held} held back, peers {peers}, lock {view:?}",
            self.epoch
        )
    }

    /// Every engine's refusals and lease expiries so far.
    fn stats(&self) -> (u64, u64) {
        let s = [self.lamport.stats(), self.ra.stats(), self.po.stats()];
        (s.iter().map(|s| s.refused).sum(), s.iter().map(|s| s.lease_expiries).sum())
    }
}

fn members_of(view: &View) -> BTreeSet<(NodeId, Incarnation)> {
    view.members.values().map(|m| (m.id, m.incarnation)).collect()
}

/// Feeds `event` to one engine; its actions with the messages wrapped.
fn run<P: Protocol>(
    engine: &mut Engine<P>,
    now: Millis,
    event: Event<P::Msg>,
    wrap: fn(P::Msg) -> AlgoMsg,
) -> (Vec<Action<AlgoMsg>>, bool) {
    let mut out = Vec::new();
    let refused = engine.handle(now, event, &mut out).is_err();
    (out.into_iter().map(|a| a.map(wrap)).collect(), refused)
}

/// Where a request stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum ReqState {
    Waiting,
    /// Granted at local time `at` with a TTL.
    Held {
        token: FencingToken,
        at: Millis,
    },
}

/// A client request the workload issued.
#[derive(Clone, Debug)]
pub(super) struct Req {
    id: NodeId,
    serial: u64,
    lock: String,
    ttl: Millis,
    state: ReqState,
    /// Global time issued.
    issued: u64,
    probe: bool,
}

/// A grant of a crashed process: its client does not know, and uses it until `until` (global).
#[derive(Clone, Debug)]
pub(super) struct Orphan {
    algo: Algorithm,
    lock: String,
    id: NodeId,
    inc: Incarnation,
    token: FencingToken,
    until: u64,
}

/// The engine layer's state in a run.
#[derive(Default)]
pub(super) struct Mutex {
    next_req: u64,
    pub(super) reqs: BTreeMap<(Algorithm, RequestId), Req>,
    /// Requests whose grant came while their process did not act: no engine request, they ask again when
    /// the process acts again (or are dropped at the grace check).
    parked: Vec<(Algorithm, Req)>,
    orphans: Vec<Orphan>,
    last_token: BTreeMap<(Algorithm, String), FencingToken>,
    /// Per unordered pair of processes (id and incarnation): when their engine connection was torn down.
    disconnected: BTreeMap<(Proc, Proc), u64>,
    /// Per (sender process, receiver process): the connection (its last teardown time) on which the sender
    /// has sent its handshake. A connection handshakes both ways, so a handshake on a newer one is answered.
    hello_sent: BTreeMap<(u64, u64), u64>,
    /// When the probes were issued (after convergence).
    pub(super) probes_at: Option<u64>,
}

/// A process, as its peers know it.
type Proc = (NodeId, Incarnation);

/// The connection between two processes, either way round.
fn pair(a: Proc, b: Proc) -> (Proc, Proc) {
    (a.min(b), a.max(b))
}

impl MemberSim {
    /// Feeds `event` to engine `algo` of process `id` and executes its actions.
    fn engine_event(&mut self, id: NodeId, algo: Algorithm, event: Event<AlgoMsg>) -> Step {
        let Some(p) = self.procs.get_mut(&id) else { return Ok(()) };
        let local = p.clock.local(self.now);
        let Some(e) = p.engines.as_mut() else { return Ok(()) };
        let unwrap_l = |m| match m {
            AlgoMsg::Lamport(m) => Ok(m),
            other => Err(other),
        };
        let unwrap_r = |m| match m {
            AlgoMsg::Ra(m) => Ok(m),
            other => Err(other),
        };
        let unwrap_p = |m| match m {
            AlgoMsg::Po(m) => Ok(m),
            other => Err(other),
        };
        let (actions, refused) = match algo {
            Algorithm::Lamport => match event.try_map(unwrap_l) {
                Ok(ev) => run(&mut e.lamport, local, ev, AlgoMsg::Lamport),
                Err(_) => return Err("a message routed to the wrong engine".into()),
            },
            Algorithm::RicartAgrawala => match event.try_map(unwrap_r) {
                Ok(ev) => run(&mut e.ra, local, ev, AlgoMsg::Ra),
                Err(_) => return Err("a message routed to the wrong engine".into()),
            },
            Algorithm::ProbableOwner => match event.try_map(unwrap_p) {
                Ok(ev) => run(&mut e.po, local, ev, AlgoMsg::Po),
                Err(_) => return Err("a message routed to the wrong engine".into()),
            },
        };
        if refused {
            self.report.mutex.refused += 1;
        }
        let bump = e.renew_asked != Some(e.epoch) && e.wants_view_bump();
        if bump {
            e.renew_asked = Some(e.epoch);
        }
        for action in actions {
            self.engine_action(id, algo, action)?;
        }
        if bump {
            self.report.mutex.renewals += 1;
            self.feed(id, membership::Event::Renew)?;
        }
        Ok(())
    }

    fn engine_action(&mut self, id: NodeId, algo: Algorithm, action: Action<AlgoMsg>) -> Step {
        match action {
            Action::Send { to, epoch, msg } => self.send_engine(id, to, epoch, EngineBody::Msg(msg))?,
            Action::Granted { req, lock, token } => self.granted(id, algo, req, lock, token)?,
            Action::Rejected { req, reason } => {
                let Some(r) = self.mutex.reqs.get(&(algo, req)) else {
                    return Err(format!("{algo}: node {id} rejected {req:?}, which is not a live request"));
                };
                if r.state != ReqState::Waiting || r.id != id {
                    return Err(format!(
                        "{algo}: node {id} rejected {req:?} ({reason:?}), which is {:?}",
                        r.state
                    ));
                }
                if reason != RejectReason::Cancelled {
                    return Err(format!("{algo}: node {id} timed out {req:?}, which had no deadline"));
                }
                self.mutex.reqs.remove(&(algo, req));
            }
            Action::LeaseExpired { req, lock } => {
                note!(self, "{id} {algo} lease of {req:?} on {lock} expired");
                let held = self
                    .mutex
                    .reqs
                    .get(&(algo, req))
                    .is_some_and(|r| matches!(r.state, ReqState::Held { .. }));
                if !held {
                    return Err(format!(
                        "{algo}: node {id} expired {req:?} on {lock}, which it does not hold"
                    ));
                }
                self.mutex.reqs.remove(&(algo, req));
            }
            Action::SetTimer { timer, at } => {
                let Some(p) = self.procs.get_mut(&id) else { return Ok(()) };
                let Some(e) = p.engines.as_mut() else { return Ok(()) };
                e.timers.insert((algo, timer), at);
                let (serial, fires) = (p.serial, p.clock.fires_at(at, self.now));
                self.schedule(fires, Item::EngineTimer { id, serial, algo, timer, at });
            }
            Action::CancelTimer { timer } => {
                if let Some(e) = self.procs.get_mut(&id).and_then(|p| p.engines.as_mut()) {
                    e.timers.remove(&(algo, timer));
                }
            }
        }
        Ok(())
    }

    /// An engine timer fired (if it is still the one set).
    pub(super) fn engine_timer(
        &mut self,
        id: NodeId,
        serial: u64,
        algo: Algorithm,
        timer: TimerId,
        at: Millis,
    ) -> Step {
        let Some(p) = self.procs.get_mut(&id).filter(|p| p.serial == serial) else { return Ok(()) };
        let Some(e) = p.engines.as_mut() else { return Ok(()) };
        if e.timers.get(&(algo, timer)) != Some(&at) {
            return Ok(());
        }
        if p.paused {
            p.backlog.push_back(Item::EngineTimer { id, serial, algo, timer, at });
            return Ok(());
        }
        e.timers.remove(&(algo, timer));
        self.engine_event(id, algo, Event::Timer { timer })
    }

    fn granted(
        &mut self,
        id: NodeId,
        algo: Algorithm,
        req: RequestId,
        lock: String,
        token: FencingToken,
    ) -> Step {
        let Some(r) = self.mutex.reqs.get(&(algo, req)) else {
            return Err(format!("{algo}: node {id} granted {req:?} ({lock}), which is not a live request"));
        };
        if r.id != id || r.state != ReqState::Waiting || r.lock != lock {
            return Err(format!(
                "{algo}: node {id} granted {req:?} for {lock}, but it is {:?} for {} at {}",
                r.state, r.lock, r.id
            ));
        }
        let Some(p) = self.procs.get(&id) else { return Ok(()) };
        let local = p.clock.local(self.now);
        if !self.acting(id, p, local) {
            // The driver rule: a node that may not act never hands out a grant.
            let again = p.core.hears_majority(local);
            note!(self, "{id} {algo} grant of {lock} while not active: released at once");
            self.report.mutex.inactive_grants += 1;
            let Some(old) = self.mutex.reqs.remove(&(algo, req)) else { return Ok(()) };
            self.engine_event(id, algo, Event::Release { req })?;
            if again {
                note!(self, "{id} {algo} {req:?} parked until the member lease is back");
                self.mutex.parked.push((algo, old));
            }
            return Ok(());
        }
        if let Some(&last) = self.mutex.last_token.get(&(algo, lock.clone()))
            && token <= last
        {
            return Err(format!(
                "fencing ({algo}): node {id} granted {lock} with token {:#x}, not above the last one {:#x}",
                token.get(),
                last.get()
            ));
        }
        note!(self, "{id} {algo} GRANTED {lock} {req:?} token {:#x}", token.get());
        self.mutex.last_token.insert((algo, lock), token);
        *self.report.mutex.grants.entry(algo).or_default() += 1;
        let r = self.mutex.reqs.get_mut(&(algo, req)).expect("checked above");
        r.state = ReqState::Held { token, at: local };
        let (ttl, serial, probe) = (r.ttl.get(), r.serial, r.probe);
        // Most holders release within their TTL; some never do (their lease expires).
        if probe || self.rng.chance(0.8) {
            let hold = 1 + self.rng.below(if probe { 10 } else { ttl });
            self.schedule(self.now + hold, Item::Release { id, serial, algo, req });
        }
        Ok(())
    }

    /// The workload (or a probe) asks process `id` for `lock` with engine `algo`.
    pub(super) fn acquire(
        &mut self,
        id: NodeId,
        algo: Algorithm,
        lock: String,
        ttl: u64,
        probe: bool,
    ) -> Step {
        let Some(p) = self.procs.get(&id) else { return Ok(()) };
        let local = p.clock.local(self.now);
        if p.engines.is_none() || p.paused || !self.acting(id, p, local) {
            self.report.mutex.unavailable += 1;
            return Ok(());
        }
        self.mutex.next_req += 1;
        let req = RequestId::new(self.mutex.next_req);
        let serial = p.serial;
        let ttl = Millis::new(ttl);
        let rec =
            Req { id, serial, lock: lock.clone(), ttl, state: ReqState::Waiting, issued: self.now, probe };
        self.mutex.reqs.insert((algo, req), rec);
        self.report.mutex.issued += 1;
        note!(self, "{id} {algo} acquire {lock} {req:?}");
        self.engine_event(id, algo, Event::Acquire { req, lock, deadline: None, ttl: Some(ttl) })
    }

    /// A random acquire of the workload.
    pub(super) fn random_acquire(&mut self) -> Step {
        let ids: Vec<NodeId> = self.procs.keys().copied().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let id = ids[self.rng.below(ids.len() as u64) as usize];
        let algo = Algorithm::ALL[self.rng.below(3) as usize];
        let lock = format!("lock{}", self.rng.below(2));
        let ttl = 50 + self.rng.below(350);
        self.acquire(id, algo, lock, ttl, false)
    }

    /// A holder leaves the critical section (if it still holds).
    pub(super) fn release(&mut self, id: NodeId, serial: u64, algo: Algorithm, req: RequestId) -> Step {
        let held = self
            .mutex
            .reqs
            .get(&(algo, req))
            .is_some_and(|r| r.serial == serial && matches!(r.state, ReqState::Held { .. }));
        let Some(p) = self.procs.get_mut(&id).filter(|p| p.serial == serial) else { return Ok(()) };
        if !held {
            return Ok(());
        }
        if p.paused {
            p.backlog.push_back(Item::Release { id, serial, algo, req });
            return Ok(());
        }
        self.mutex.reqs.remove(&(algo, req));
        self.engine_event(id, algo, Event::Release { req })
    }

    /// [`membership::Action::Active`]`(false)`: release the holders; cancel the waiting local requests unless
    /// the process hears a majority (then they wait, until the grace check).
    pub(super) fn lost_lease(&mut self, id: NodeId) -> Step {
        let Some(p) = self.procs.get(&id) else { return Ok(()) };
        let serial = p.serial;
        let waits = p.core.hears_majority(p.clock.local(self.now));
        let mine: Vec<((Algorithm, RequestId), ReqState)> =
            self.mutex.reqs.iter().filter(|(_, r)| r.serial == serial).map(|(&k, r)| (k, r.state)).collect();
        for ((algo, req), state) in mine {
            match state {
                ReqState::Waiting if waits => {}
                ReqState::Waiting => self.engine_event(id, algo, Event::Cancel { req })?,
                ReqState::Held { .. } if self.cfg.mutant == super::Mutant::KeepGrants => {}
                ReqState::Held { .. } => {
                    self.mutex.reqs.remove(&(algo, req));
                    self.engine_event(id, algo, Event::Release { req })?;
                }
            }
        }
        if waits {
            let m = &self.cfg.membership;
            let grace = m.suspect_after.get() + m.lease.get() + 2 * m.retry.get();
            self.schedule(self.now + grace, Item::LeaseGrace { id, serial });
        }
        Ok(())
    }

    /// The grace after a lost lease is over: if process `serial` of `id` still does not act, its waiting
    /// requests are cancelled.
    pub(super) fn lease_grace(&mut self, id: NodeId, serial: u64) -> Step {
        let Some(p) = self.procs.get_mut(&id).filter(|p| p.serial == serial) else { return Ok(()) };
        if p.paused {
            p.backlog.push_back(Item::LeaseGrace { id, serial });
            return Ok(());
        }
        let p = &self.procs[&id];
        if p.engines.is_none() || self.acting(id, p, p.clock.local(self.now)) {
            return Ok(());
        }
        let waiting: Vec<(Algorithm, RequestId)> = (self.mutex.reqs.iter())
            .filter(|(_, r)| r.serial == serial && r.state == ReqState::Waiting)
            .map(|(&k, _)| k)
            .collect();
        for (algo, req) in waiting {
            note!(self, "{id} {algo} {req:?} cancelled: the member lease did not come back");
            self.engine_event(id, algo, Event::Cancel { req })?;
        }
        self.mutex.parked.retain(|(_, r)| r.serial != serial);
        Ok(())
    }

    /// Process `id` acts again: its parked requests ask again, each as a new request.
    pub(super) fn unpark(&mut self, id: NodeId) -> Step {
        let Some(serial) = self.procs.get(&id).filter(|p| p.engines.is_some()).map(|p| p.serial) else {
            return Ok(());
        };
        let live: Vec<u64> = self.procs.values().map(|p| p.serial).collect();
        self.mutex.parked.retain(|(_, r)| live.contains(&r.serial));
        let (mine, others): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.mutex.parked).into_iter().partition(|(_, r)| r.serial == serial);
        self.mutex.parked = others;
        for (algo, old) in mine {
            self.mutex.next_req += 1;
            let req = RequestId::new(self.mutex.next_req);
            let (lock, ttl) = (old.lock.clone(), old.ttl);
            note!(self, "{id} {algo} asks again for {lock} as {req:?}");
            self.mutex.reqs.insert((algo, req), Req { state: ReqState::Waiting, ..old });
            self.engine_event(id, algo, Event::Acquire { req, lock, deadline: None, ttl: Some(ttl) })?;
        }
        Ok(())
    }

    /// Process `id` installed `view` (called before the core's later actions are executed).
    pub(super) fn engines_install(&mut self, id: NodeId, view: &View) -> Step {
        let Some(p) = self.procs.get(&id) else { return Ok(()) };
        let inc = p.inc;
        if !view.contains(id, inc) {
            if p.engines.is_some() {
                note!(self, "{id} drops its engines: {} excludes it", show(view));
                self.forget_requests(id, false);
                let others: Vec<Proc> = self
                    .procs
                    .get(&id)
                    .into_iter()
                    .flat_map(|p| p.engines.iter())
                    .flat_map(|e| e.members.iter().copied())
                    .collect();
                for other in others {
                    self.mutex.disconnected.insert(pair((id, inc), other), self.now);
                }
                if let Some(p) = self.procs.get_mut(&id) {
                    p.engines = None;
                }
            }
            return Ok(());
        }
        let epoch = view.epoch.get();
        let members = members_of(view);
        let (hello_to, fresh) = match &p.engines {
            None => (members.iter().map(|&(m, _)| m).filter(|&m| m != id).collect::<Vec<_>>(), true),
            Some(e) if epoch <= e.epoch => return Ok(()),
            Some(e) => {
                for &gone in e.members.difference(&members) {
                    self.mutex.disconnected.insert(pair((id, inc), gone), self.now);
                }
                (members.difference(&e.members).map(|&(m, _)| m).filter(|&m| m != id).collect(), false)
            }
        };
        if fresh {
            let engines = Engines::new(id, inc, view);
            if let Some(p) = self.procs.get_mut(&id) {
                p.engines = Some(engines);
            }
        }
        let clocks = self.procs.get(&id).and_then(|p| p.engines.as_ref()).map(Engines::clocks);
        for to in hello_to {
            if let Some(clocks) = clocks {
                self.send_engine(id, to, epoch, EngineBody::Hello { clocks })?;
            }
        }
        if !fresh {
            let list: Vec<(NodeId, Incarnation)> = members.iter().copied().collect();
            if let Some(e) = self.procs.get_mut(&id).and_then(|p| p.engines.as_mut()) {
                e.epoch = epoch;
                e.members = members;
            }
            for algo in Algorithm::ALL {
                self.engine_event(id, algo, Event::MembersChanged { epoch, members: list.clone() })?;
            }
        }
        self.release_held(id)
    }

    /// Delivers what waited in the driver for `id`'s engines to reach its epoch, in arrival order.
    fn release_held(&mut self, id: NodeId) -> Step {
        let Some(p) = self.procs.get_mut(&id) else { return Ok(()) };
        let Some(epoch) = p.engines.as_ref().map(|e| e.epoch) else { return Ok(()) };
        let (ready, later): (Vec<Envelope>, Vec<Envelope>) =
            std::mem::take(&mut p.held).into_iter().partition(|env| env_epoch(env) <= epoch);
        p.held = later.into();
        for env in ready {
            self.deliver_engine(env)?;
        }
        Ok(())
    }

    /// Ends every request of `id`'s process: it crashed (`crashed`: its clients keep their grants until they
    /// would have ended) or its engines are gone.
    pub(super) fn forget_requests(&mut self, id: NodeId, crashed: bool) {
        let Some(p) = self.procs.get(&id) else { return };
        let serial = p.serial;
        let local = p.clock.local(self.now);
        let acting_until = self.acting_until(id, p);
        let mine: Vec<(Algorithm, RequestId)> =
            self.mutex.reqs.iter().filter(|(_, r)| r.serial == serial).map(|(&k, _)| k).collect();
        for key in mine {
            let Some(r) = self.mutex.reqs.remove(&key) else { continue };
            if let (true, ReqState::Held { token, at }) = (crashed, r.state)
                && self.grant_valid(id, p, local)
            {
                let end = Millis::new((at.get() + r.ttl.get()).min(acting_until.get()));
                let until = p.clock.fires_at(end, self.now);
                self.mutex.orphans.push(Orphan { algo: key.0, lock: r.lock, id, inc: p.inc, token, until });
            }
        }
    }

    /// Sends an engine message or handshake: partitions delay it, a dead receiver loses it.
    fn send_engine(&mut self, from: NodeId, to: NodeId, epoch: u64, body: EngineBody) -> Step {
        let kind = match &body {
            EngineBody::Hello { .. } => "HELLO",
            EngineBody::Msg(m) => m.algorithm().as_str(),
        };
        *self.report.mutex.messages.entry(kind).or_default() += 1;
        if matches!(body, EngineBody::Hello { .. })
            && let (Some(p), Some(q)) = (self.procs.get(&from), self.procs.get(&to))
        {
            let link = pair((from, p.inc), (to, q.inc));
            let generation = self.mutex.disconnected.get(&link).copied().unwrap_or(0);
            self.mutex.hello_sent.insert((p.serial, q.serial), generation);
        }
        let payload = Payload::Engine { epoch, sent: self.now, body };
        self.send_reliable(from, to, payload);
        Ok(())
    }

    /// An engine envelope arrived at its process (or is released from the driver's hold).
    pub(super) fn deliver_engine(&mut self, env: Envelope) -> Step {
        let Payload::Engine { sent, epoch, body } = &env.msg else { return Ok(()) };
        let Some(to_inc) = self.procs.get(&env.to).map(|p| p.inc) else { return Ok(()) };
        let link = pair((env.from, env.from_inc), (env.to, to_inc));
        if self.mutex.disconnected.get(&link).is_some_and(|&cut| *sent < cut) {
            self.report.mutex.lost_on_disconnect += 1;
            return Ok(());
        }
        let Some(p) = self.procs.get_mut(&env.to) else { return Ok(()) };
        // Without engines, or a handshake of a view the engines are not in yet: wait in the driver.
        let wait = match &p.engines {
            None => true,
            Some(e) => matches!(body, EngineBody::Hello { .. }) && *epoch > e.epoch,
        };
        if wait {
            p.held.push_back(env);
            return Ok(());
        }
        let (epoch, body) = (*epoch, body.clone());
        match body {
            EngineBody::Hello { clocks } => {
                for (algo, clock) in Algorithm::ALL.into_iter().zip(clocks) {
                    let ev = Event::PeerIncarnation { peer: env.from, incarnation: env.from_inc, clock };
                    self.engine_event(env.to, algo, ev)?;
                }
                // The connection handshakes both ways: answer on a connection this side has not greeted.
                let Some(p) = self.procs.get(&env.to) else { return Ok(()) };
                let Some(e) = p.engines.as_ref() else { return Ok(()) };
                let from_serial = self.procs.get(&env.from).map(|q| q.serial);
                let generation = self.mutex.disconnected.get(&link).copied().unwrap_or(0);
                let greeted = from_serial
                    .is_some_and(|q| self.mutex.hello_sent.get(&(p.serial, q)) == Some(&generation));
                if from_serial.is_some() && !greeted {
                    let (epoch, clocks) = (e.epoch, e.clocks());
                    self.send_engine(env.to, env.from, epoch, EngineBody::Hello { clocks })?;
                }
                Ok(())
            }
            EngineBody::Msg(msg) => {
                let algo = msg.algorithm();
                let ev = Event::Message { from: env.from, incarnation: env.from_inc, epoch, msg };
                self.engine_event(env.to, algo, ev)
            }
        }
    }

    /// Mutual exclusion over valid grants, per algorithm and lock.
    pub(super) fn check_mutex(&mut self) -> Step {
        let now = self.now;
        self.mutex.orphans.retain(|o| o.until > now);
        // Cheap first (this runs after every step): the valid holders, by key, without any formatting.
        let mut valid: Vec<((Algorithm, &str), Option<RequestId>)> = Vec::new();
        for (&(algo, req), r) in &self.mutex.reqs {
            if let ReqState::Held { at, .. } = r.state
                && let Some(p) = self.procs.get(&r.id).filter(|p| p.serial == r.serial)
            {
                let local = p.clock.local(now);
                if local.get() < at.get() + r.ttl.get() && self.grant_valid(r.id, p, local) {
                    valid.push(((algo, r.lock.as_str()), Some(req)));
                }
            }
        }
        valid.extend(self.mutex.orphans.iter().map(|o| ((o.algo, o.lock.as_str()), None)));
        if valid.len() < 2 {
            return Ok(());
        }
        valid.sort_unstable();
        let Some(pos) = valid.windows(2).position(|w| w[0].0 == w[1].0) else { return Ok(()) };
        let key = valid[pos].0;
        let mut who: Vec<String> = Vec::new();
        for (k, req) in &valid {
            if *k != key {
                continue;
            }
            if let Some((req, r)) = req.and_then(|req| self.mutex.reqs.get(&(key.0, req)).map(|r| (req, r))) {
                let (inc, token) = match (self.procs.get(&r.id), r.state) {
                    (Some(p), ReqState::Held { token, .. }) => (p.inc.get(), token.get()),
                    _ => (0, 0),
                };
                who.push(format!("node {}#{inc} ({req:?}, token {token:#x})", r.id));
            }
        }
        for o in self.mutex.orphans.iter().filter(|o| (o.algo, o.lock.as_str()) == key) {
            who.push(format!(
                "crashed node {}#{} (token {:#x}, valid for its client until t={})",
                o.id,
                o.inc.get(),
                o.token.get(),
                o.until
            ));
        }
        Err(format!("mutual exclusion ({}): {} held by {}", key.0, key.1, who.join(" and ")))
    }

    /// After convergence: a probe at every member for every algorithm.
    pub(super) fn issue_probes(&mut self) -> Step {
        self.mutex.probes_at = Some(self.now);
        let ids: Vec<NodeId> = self.procs.keys().copied().collect();
        for id in ids {
            for algo in Algorithm::ALL {
                self.report.mutex.probes += 1;
                self.acquire(id, algo, "probe".into(), 30, true)?;
            }
        }
        Ok(())
    }

    /// Whether every probe was granted and every request issued before the probes has been answered; `Err`
    /// describes what is still waiting once `deadline` has passed.
    pub(super) fn mutex_settled(&self, deadline: u64) -> Result<bool, String> {
        let Some(at) = self.mutex.probes_at else { return Ok(true) };
        let waits = |r: &Req| r.state == ReqState::Waiting && (r.probe || r.issued < at);
        if !self.mutex.reqs.values().any(waits) {
            return Ok(true);
        }
        if self.now < deadline {
            return Ok(false);
        }
        let waiting: Vec<String> = self
            .mutex
            .reqs
            .iter()
            .filter(|(_, r)| waits(r))
            .map(|((algo, req), r)| {
                let state = self
                    .procs
                    .get(&r.id)
                    .and_then(|p| p.engines.as_ref())
                    .map(|e| e.describe(*algo, &r.lock));
                format!(
                    "{algo} {req:?} for {} at node {} (issued t={}; {})",
                    r.lock,
                    r.id,
                    r.issued,
                    state.unwrap_or_default()
                )
            })
            .collect();
        Err(format!(
            "liveness ({} ms after convergence): requests never granted: {}",
            self.now - at,
            waiting.join("; ")
        ))
    }

    /// Totals of the engines still alive (added to what the dead ones had).
    pub(super) fn engine_totals(&self) -> (u64, u64) {
        self.procs
            .values()
            .filter_map(|p| p.engines.as_ref())
            .map(Engines::stats)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Whether the client of a grant at process `p` of `id` may still use it at local time `local` (its
    /// TTL aside): while the process acts; always, for the [`super::Mutant::KeepGrants`] drivers.
    fn grant_valid(&self, id: NodeId, p: &super::driver::Proc, local: Millis) -> bool {
        self.cfg.mutant == super::Mutant::KeepGrants || self.acting(id, p, local)
    }

    /// The global time until which process `p` of `id` acts at most (its member lease, or what the mutant
    /// goes by), on its own clock.
    fn acting_until(&self, id: NodeId, p: &super::driver::Proc) -> Millis {
        if self.cfg.mutant == super::Mutant::KeepGrants {
            return Millis::new(u64::MAX);
        }
        if self.cfg.mutant == super::Mutant::IgnoreLease && id == self.victim {
            let grace = self.cfg.membership.lease.get();
            return Millis::new(p.seen_lease().map_or(0, |u| u.get() + grace));
        }
        if p.core.is_active(p.clock.local(self.now)) {
            p.core.lease_until().unwrap_or_default()
        } else {
            Millis::default()
        }
    }
}

fn env_epoch(env: &Envelope) -> u64 {
    match &env.msg {
        Payload::Engine { epoch, .. } => *epoch,
        Payload::Member(_) => 0,
    }
}
