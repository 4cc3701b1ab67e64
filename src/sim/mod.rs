//! Deterministic cluster simulation: N [`Engine`]s on a virtual clock, linked by the real `Link`s, driven
//! by a seeded workload.
//!
//! The same cores that run in the tokio node run here, unchanged: the simulator only feeds events into
//! [`Engine::handle`] and executes the returned [`Action`]s. Between the cores runs the transport's own link
//! state machine (`net::link`) over simulated connections (`sim/network.rs`): sequence numbers,
//! cumulative acks, resend after a reconnect, duplicate drop, and the discard-on-restart rule, with
//! handshakes reaching the links and the cores in the order the real transport produces. Everything is
//! deterministic: time is virtual ([`Millis`]), randomness comes from [`SplitMix64`] streams seeded by
//! [`SimConfig::seed`] (our own generator, so a seed replays identically across crate versions), and all
//! state lives in `BTreeMap`/`VecDeque`.
//!
//! Network model: per directed pair one connection, each direction FIFO with a random delay in
//! `1..=max_delay` ms per frame; without faults a message arrives exactly when an ideal FIFO queue would
//! deliver it. Every message carries the receiver incarnation its sender's core addressed; one addressed to
//! an earlier life of the receiver is dropped on arrival, as the node driver does.
//!
//! Faults (optional): a node may crash and later restart, and connections may be cut. A crash drops the
//! node's engine, timers, local requests (the harness forgets them: they need no grant and cannot violate
//! anything), links and connections: frames in flight *to* it are lost, frames it had sent still arrive.
//! A restart creates a fresh engine with the next [`Incarnation`] and fresh links that dial every peer; the
//! peers redial it too (capped backoff), and each handshake tells the link, which tells its core
//! ([`Event::PeerIncarnation`]) before any message of that incarnation. A cut loses what is in flight on one
//! connection; both ends redial and the links resend what was not delivered. One crash at a time: a node
//! crashes only while every other node is up and has joined (heard every peer's handshake since its start).
//!
//! Invariants checked after every step (a breach ends the run with a [`Violation`], never a panic):
//! - mutual exclusion: at most one live node holds each lock;
//! - fencing: every grant's token is larger than every token granted before for that lock (across restarts),
//!   unless every node that was up at the earlier grant has crashed since (nothing that knew it survived; the
//!   documented limitation without stable storage: counted in [`SimReport::fencing_forgotten`]);
//!   for Lamport and Ricart–Agrawala the token packs `(ts, node)`, so this is also "grants happen in
//!   `(timestamp, node)` order", and the token's node bits must name the granted node;
//! - the engine's view of its local holder matches the grants the harness saw;
//! - grants and rejections only for requests that are waiting; time-outs only at or after the deadline;
//!   a cancel is answered at once;
//! - try-locks ([`SimConfig::try_prob`]): only a try is answered locked, and (without crashes) only while
//!   another request for its lock is live or ended within a few message delays before the try was issued
//!   (its end may still be on its way to the deciding node); every try is answered (the end check);
//! - leases (some holders never release, [`SimConfig::lease_prob`]): a lease expires only for its holder and
//!   never before its TTL has passed since the grant; the next holder's token is larger (the fencing check);
//! - the links keep their promise (no gap, no ack beyond what was sent).
//!
//! At the end (the workload has stopped, every crashed node has restarted, the event queue is empty) every
//! link must be connected to its peer's current incarnation, and every request issued to a live node must
//! have been granted or rejected (deadlock or starvation otherwise). Then liveness after the faults: a fresh
//! request for every lock used in the run, at a random node, must be granted ([`SimReport::probes`]; not
//! after fault-free runs). A run that does not go quiet within [`SimConfig::max_steps`] is reported too
//! (livelock).
//!
//! View changes (a crashed holder excluded by a lease oracle, a node joining under a new id) run in their own
//! smaller scenario, [`run_views`], over plain FIFO links keyed by node id. Whole nodes driven by the real
//! membership core (no oracle), with drifting clocks, partitions, pauses, amnesia crashes, joins, leaves and
//! rolling restarts, run in [`run_membership`].
//!
//! Must never: read the OS clock, use unseeded randomness, let `HashMap` order reach the output, or panic on
//! anything a core does.

mod checks;
mod config;
mod membership;
mod network;
mod rng;
#[cfg(test)]
mod tests;
mod views;

pub use config::{Load, SimConfig, SimMode, SimReport, Violation};
pub use membership::{
    FaultCounts, Liveness, MemberSimConfig, MemberSimReport, MemberViolation, Mutant, MutexReport, Scenario,
    StableRates, ViewChangeCost, run_membership,
};
pub use rng::SplitMix64;
pub use views::{ViewOracle, ViewSimConfig, ViewSimReport, ViewViolation, run_views};

use crate::algo::{
    Action, Engine, Event, FencingToken, Incarnation, LamportTs, Millis, NodeId, Peers, Protocol,
    ProtocolMessage, RejectReason, RequestId, TimerId,
};
#[cfg(doc)]
use crate::net::link::Link;
use network::{NetItem, NetOut, Network, SimMsg};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

/// Runs the simulation for `P`, every node starting as `P::fresh`.
pub fn run<P: Protocol>(cfg: &SimConfig) -> Result<SimReport, Violation> {
    run_with(cfg, P::fresh)
}

/// Runs the simulation with `make(node, n)` building each node's protocol (at start and at every restart).
///
/// A failing run is replayed once more with a trace of its last steps attached to the [`Violation`].
pub fn run_with<P: Protocol>(
    cfg: &SimConfig,
    make: impl Fn(NodeId, usize) -> P,
) -> Result<SimReport, Violation> {
    match Sim::new(cfg.clone(), &make).run() {
        Ok(report) => Ok(report),
        Err(v) if cfg.trace_lines == 0 => {
            let traced = SimConfig { trace_lines: 80, ..cfg.clone() };
            match Sim::new(traced, &make).run() {
                Err(mut again) => {
                    // The replay is deterministic, so it fails the same way; keep the untraced command.
                    again.replay = v.replay;
                    Err(again)
                }
                Ok(_) => Err(v),
            }
        }
        Err(v) => Err(v),
    }
}

/// Something scheduled at a virtual time.
#[derive(Clone, Debug)]
enum Item<M> {
    /// Network work: a frame arriving, a redial, a delayed ack, a cut.
    Net(NetItem<M>),
    /// A timer of `node`'s incarnation `inc`, valid if the node still has it set for `at`.
    Timer { node: NodeId, inc: Incarnation, timer: TimerId, at: Millis },
    /// The workload issues an acquire (from a random live node if `None`).
    Acquire { node: Option<NodeId> },
    /// After the run: a fresh request for `lock` at `node`, without deadline, that must be granted.
    Probe { node: NodeId, lock: String },
    /// A holder leaves.
    Release { node: NodeId, req: RequestId },
    /// A waiting request is withdrawn (if it still waits).
    Cancel { node: NodeId, req: RequestId },
    /// The node crashes (unless another node is down).
    Crash { node: NodeId },
    /// The node comes back.
    Restart { node: NodeId },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ReqState {
    Waiting,
    Held(FencingToken),
}

#[derive(Clone, Debug)]
struct Req {
    node: NodeId,
    lock: String,
    deadline: Option<Millis>,
    /// The lease of a holder that never releases.
    ttl: Option<Millis>,
    /// When its lease may end at the earliest (set at the grant).
    lease_end: Option<Millis>,
    state: ReqState,
    cancelling: bool,
    /// A try request ([`Event::TryAcquire`]).
    attempt: bool,
    /// When it was issued.
    issued: Millis,
}

struct Node<P: Protocol> {
    engine: Option<Engine<P>>,
    incarnation: Incarnation,
    timers: BTreeMap<TimerId, Millis>,
}

struct Sim<'a, P: Protocol, F: Fn(NodeId, usize) -> P> {
    cfg: SimConfig,
    make: &'a F,
    rng: SplitMix64,
    now: Millis,
    seq: u64,
    queue: BTreeMap<(Millis, u64), Item<P::Msg>>,
    net: Network<P::Msg>,
    /// What the network asked for, drained after every call (kept to reuse its buffers).
    net_out: NetOut<P::Msg>,
    nodes: Vec<Node<P>>,
    requests: BTreeMap<RequestId, Req>,
    holders: BTreeMap<String, (NodeId, RequestId)>,
    max_token: BTreeMap<String, FencingToken>,
    /// Per lock: the nodes up when its `max_token` was granted that have not crashed since.
    token_witnesses: BTreeMap<String, BTreeSet<NodeId>>,
    /// The workload's lock names, `lock0`, `lock1`, …
    lock_names: Vec<String>,
    /// Every lock the workload asked for.
    used: BTreeSet<String>,
    /// Per lock: when a request for it last ended (released, expired, rejected or lost in a crash).
    last_end: BTreeMap<String, Millis>,
    next_req: u64,
    acquire_pending: bool,
    msgs_since_grant: u64,
    report: SimReport,
    trace: VecDeque<String>,
}

type Step = Result<(), String>;

/// Records a trace line (formatted only when tracing is on).
macro_rules! note {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.tracing() {
            let line = format!($($arg)*);
            $sim.push_trace(line);
        }
    };
}
use note;

impl<'a, P: Protocol, F: Fn(NodeId, usize) -> P> Sim<'a, P, F> {
    fn new(cfg: SimConfig, make: &'a F) -> Self {
        let n = cfg.nodes.max(1);
        let lock_names = (0..cfg.locks.max(1)).map(|i| format!("lock{i}")).collect();
        let nodes = (0..n)
            .map(|i| {
                let id = NodeId::new(i as u16);
                Node {
                    engine: Some(Engine::new(make(id, n), Peers::formed(id, n))),
                    incarnation: Incarnation::new(0),
                    timers: BTreeMap::new(),
                }
            })
            .collect();
        Sim {
            rng: SplitMix64::new(cfg.seed),
            net: Network::formed(n, cfg.max_delay, cfg.seed, cfg.trace_lines > 0),
            net_out: NetOut::default(),
            cfg,
            make,
            now: Millis::new(0),
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            requests: BTreeMap::new(),
            holders: BTreeMap::new(),
            max_token: BTreeMap::new(),
            token_witnesses: BTreeMap::new(),
            lock_names,
            used: BTreeSet::new(),
            last_end: BTreeMap::new(),
            next_req: 1,
            acquire_pending: false,
            msgs_since_grant: 0,
            report: SimReport::default(),
            trace: VecDeque::new(),
        }
    }

    fn n(&self) -> usize {
        self.nodes.len()
    }

    fn tracing(&self) -> bool {
        self.cfg.trace_lines > 0
    }

    fn push_trace(&mut self, line: String) {
        if self.trace.len() == self.cfg.trace_lines {
            self.trace.pop_front();
        }
        self.trace.push_back(line);
    }

    fn schedule(&mut self, at: Millis, item: Item<P::Msg>) {
        self.seq += 1;
        self.queue.insert((at, self.seq), item);
    }

    fn delay(&mut self) -> u64 {
        1 + self.rng.below(self.cfg.max_delay.max(1))
    }

    fn live(&self, node: NodeId) -> bool {
        self.nodes.get(node.index()).is_some_and(|s| s.engine.is_some())
    }

    fn run(mut self) -> Result<SimReport, Violation> {
        self.start();
        self.run_until_quiet()?;
        if let Err(msg) = self.net.settled().and_then(|()| self.check_end()) {
            return Err(self.violation(msg));
        }
        self.report.end_time = self.now;
        // The messages after the last grant (its release) go to the first window, which had no release
        // before it: so every window is "one entry's request traffic + the previous entry's release".
        if let Some(first) = self.report.entry_messages.first_mut() {
            *first += self.msgs_since_grant;
        }
        // Liveness after the faults (a fault-free run has none to recover from; its every request was granted
        // in order), on the report of the run itself.
        let mut report = self.report.clone();
        if self.cfg.mode != SimMode::FaultFree {
            report.probes = self.probe()?;
        }
        Ok(report)
    }

    fn run_until_quiet(&mut self) -> Result<(), Violation> {
        while let Some(((at, _), item)) = self.queue.pop_first() {
            self.report.steps += 1;
            if self.report.steps > self.cfg.max_steps {
                let msg = format!(
                    "no quiescence after {} steps (livelock?); {} data frames in flight",
                    self.cfg.max_steps,
                    self.net.data_in_flight()
                );
                return Err(self.violation(msg));
            }
            self.now = at;
            if let Err(msg) = self.step(item) {
                return Err(self.violation(msg));
            }
            self.maybe_issue_serial();
        }
        Ok(())
    }

    /// With every node up and connected: a fresh request for every lock used, at a random node each, must be
    /// granted.
    fn probe(&mut self) -> Result<u64, Violation> {
        let mut probes = 0;
        for lock in self.used.clone() {
            probes += 1;
            let node = NodeId::new(self.rng.below(self.n() as u64) as u16);
            self.schedule(self.now, Item::Probe { node, lock });
        }
        self.run_until_quiet()?;
        match self.check_probes() {
            Ok(()) => Ok(probes),
            Err(msg) => Err(self.violation(msg)),
        }
    }

    fn violation(&self, description: String) -> Violation {
        let algorithm = P::ALGORITHM;
        let mut trace = String::new();
        if !self.trace.is_empty() {
            trace.push_str("  last steps:\n");
            for line in &self.trace {
                let _ = writeln!(trace, "    {line}");
            }
        }
        Violation {
            algorithm,
            seed: self.cfg.seed,
            nodes: self.n(),
            mode: self.cfg.mode,
            step: self.report.steps,
            time_ms: self.now.get(),
            description,
            replay: self.cfg.replay_command(algorithm),
            trace,
        }
    }

    fn start(&mut self) {
        let n = self.n();
        let requests = self.cfg.requests;
        let window = (requests as u64 * (self.cfg.max_delay + self.cfg.max_hold) / 2).max(1);
        match self.cfg.load {
            Load::Random => {
                for _ in 0..requests {
                    let at = Millis::new(self.rng.below(window + 1));
                    self.schedule(at, Item::Acquire { node: None });
                }
            }
            Load::Serial => self.maybe_issue_serial(),
            Load::Saturated => {
                for i in 0..n.min(requests) {
                    let at = Millis::new(self.rng.below(self.cfg.max_delay + 1));
                    self.schedule(at, Item::Acquire { node: Some(NodeId::new(i as u16)) });
                }
            }
        }
        if self.cfg.crash {
            let crashes = 1 + self.rng.below(2);
            for _ in 0..crashes {
                let at = Millis::new(self.rng.below(window + 1));
                let node = NodeId::new(self.rng.below(n as u64) as u16);
                self.schedule(at, Item::Crash { node });
            }
            self.net.schedule_cuts(window, &mut self.net_out);
            self.drain_schedule();
        }
    }

    /// Serial load: issue the next acquire once nothing is waiting, held or in flight.
    fn maybe_issue_serial(&mut self) {
        if self.cfg.load == Load::Serial
            && !self.acquire_pending
            && (self.report.issued as usize) < self.cfg.requests
            && self.requests.is_empty()
            && self.net.data_in_flight() == 0
        {
            self.acquire_pending = true;
            let at = Millis::new(self.now.get() + self.delay());
            self.schedule(at, Item::Acquire { node: None });
        }
    }

    fn step(&mut self, item: Item<P::Msg>) -> Step {
        match item {
            Item::Net(item) => {
                let nodes = &self.nodes;
                let clock = |node: NodeId| {
                    nodes
                        .get(node.index())
                        .and_then(|s| s.engine.as_ref())
                        .map_or(LamportTs::new(0), |e| e.clock())
                };
                self.net.step(self.now, &mut self.rng, item, clock, &mut self.net_out)?;
                self.absorb()
            }
            Item::Timer { node, inc, timer, at } => {
                let Some(state) = self.nodes.get_mut(node.index()) else { return Ok(()) };
                if state.engine.is_none() || state.incarnation != inc || state.timers.get(&timer) != Some(&at)
                {
                    return Ok(());
                }
                state.timers.remove(&timer);
                note!(self, "t={} node {node} timer {timer:?}", self.now.get());
                self.feed(node, Event::Timer { timer }, false)
            }
            Item::Acquire { node } => self.acquire(node),
            Item::Probe { node, lock } => {
                let req = RequestId::new(self.next_req);
                self.next_req += 1;
                let r = Req {
                    node,
                    lock: lock.clone(),
                    deadline: None,
                    ttl: None,
                    lease_end: None,
                    state: ReqState::Waiting,
                    cancelling: false,
                    attempt: false,
                    issued: self.now,
                };
                self.requests.insert(req, r);
                note!(self, "t={} node {node} PROBE {req:?} {lock}", self.now.get());
                self.feed(node, Event::Acquire { req, lock, deadline: None, ttl: None }, true)
            }
            Item::Release { node, req } => {
                let held = self
                    .requests
                    .get(&req)
                    .is_some_and(|r| r.node == node && matches!(r.state, ReqState::Held(_)));
                if !held {
                    // The holder crashed meanwhile.
                    return Ok(());
                }
                if let Some(r) = self.requests.remove(&req) {
                    self.holders.remove(&r.lock);
                    self.last_end.insert(r.lock, self.now);
                }
                note!(self, "t={} node {node} RELEASE {req:?}", self.now.get());
                self.feed(node, Event::Release { req }, true)?;
                self.request_ended(node);
                Ok(())
            }
            Item::Cancel { node, req } => {
                let waiting =
                    self.requests.get(&req).is_some_and(|r| r.node == node && r.state == ReqState::Waiting);
                if !waiting {
                    return Ok(());
                }
                if let Some(r) = self.requests.get_mut(&req) {
                    r.cancelling = true;
                }
                note!(self, "t={} node {node} CANCEL {req:?}", self.now.get());
                self.feed(node, Event::Cancel { req }, true)?;
                if self.requests.contains_key(&req) {
                    return Err(format!(
                        "node {node}: Cancel of waiting {req:?} was not answered with Rejected"
                    ));
                }
                Ok(())
            }
            Item::Crash { node } => self.crash(node),
            Item::Restart { node } => self.restart(node),
        }
    }

    /// Schedules what the network asks for.
    fn drain_schedule(&mut self) {
        if !self.net_out.schedule.is_empty() {
            let mut schedule = std::mem::take(&mut self.net_out.schedule);
            for (at, item) in schedule.drain(..) {
                self.schedule(at, Item::Net(item));
            }
            self.net_out.schedule = schedule;
        }
        if !self.net_out.notes.is_empty() {
            let mut notes = std::mem::take(&mut self.net_out.notes);
            for line in notes.drain(..) {
                self.push_trace(line);
            }
            self.net_out.notes = notes;
        }
    }

    /// Schedules what the network asks for and feeds the cores what their links delivered, in order (what a
    /// core sends meanwhile is only scheduled, so the deliveries keep their order).
    fn absorb(&mut self) -> Step {
        self.drain_schedule();
        while let Some((node, event)) = self.net_out.deliver.pop_front() {
            if !self.live(node) {
                continue;
            }
            note!(self, "t={} at node {node}: {event:?}", self.now.get());
            self.feed(node, event, false)?;
        }
        Ok(())
    }

    fn acquire(&mut self, node: Option<NodeId>) -> Step {
        self.acquire_pending = false;
        let n = self.n() as u64;
        let node = node.unwrap_or_else(|| NodeId::new(self.rng.below(n) as u16));
        let i = self.rng.below(self.lock_names.len() as u64) as usize;
        let lock = self.lock_names[i].clone();
        let deadline_prob = self.cfg.deadline_prob;
        let deadline = if self.rng.chance(deadline_prob) {
            Some(Millis::new(self.now.get() + 1 + self.rng.below(4 * self.cfg.max_delay + 4)))
        } else {
            None
        };
        let cancel_prob = self.cfg.cancel_prob;
        let cancel_after = if self.rng.chance(cancel_prob) {
            Some(1 + self.rng.below(3 * self.cfg.max_delay + 3))
        } else {
            None
        };
        // Drawn only when leases are on, so that the other modes' runs stay as they were.
        let ttl = if self.cfg.lease_prob > 0.0 && self.rng.chance(self.cfg.lease_prob) {
            Some(Millis::new(1 + self.rng.below(2 * self.cfg.max_delay + 1)))
        } else {
            None
        };
        // Likewise only when tries are on. A try has no deadline.
        let attempt = self.cfg.try_prob > 0.0 && self.rng.chance(self.cfg.try_prob);
        let deadline = if attempt { None } else { deadline };
        if !self.live(node) {
            // Nobody to ask: the request is never issued (a client would get a connection error).
            return Ok(());
        }
        let req = RequestId::new(self.next_req);
        self.next_req += 1;
        self.report.issued += 1;
        self.used.insert(lock.clone());
        self.requests.insert(
            req,
            Req {
                node,
                lock: lock.clone(),
                deadline,
                ttl,
                lease_end: None,
                state: ReqState::Waiting,
                cancelling: false,
                attempt,
                issued: self.now,
            },
        );
        if attempt {
            self.report.tries += 1;
        }
        if let Some(after) = cancel_after {
            self.schedule(Millis::new(self.now.get() + after), Item::Cancel { node, req });
        }
        note!(
            self,
            "t={} node {node} {} {req:?} {lock} deadline {deadline:?} lease {ttl:?}",
            self.now.get(),
            if attempt { "TRY" } else { "ACQUIRE" }
        );
        if attempt {
            self.feed(node, Event::TryAcquire { req, lock, ttl }, true)
        } else {
            self.feed(node, Event::Acquire { req, lock, deadline, ttl }, true)
        }
    }

    /// Saturated load: the node wants the lock again as soon as its request ended.
    fn request_ended(&mut self, node: NodeId) {
        if self.cfg.load == Load::Saturated
            && (self.report.issued as usize) < self.cfg.requests
            && self.live(node)
        {
            let pending =
                self.queue.values().any(|i| matches!(i, Item::Acquire { node: Some(m) } if *m == node));
            if !pending {
                self.schedule(self.now, Item::Acquire { node: Some(node) });
            }
        }
    }

    fn crash(&mut self, node: NodeId) -> Step {
        if self.nodes.iter().any(|s| s.engine.as_ref().is_none_or(|e| !e.joined())) {
            // One failure at a time: no crash while a node is down or still joining after its restart (until
            // it has heard every peer, what the cluster knows may live only in messages in flight to it).
            return Ok(());
        }
        note!(self, "t={} node {node} CRASHES", self.now.get());
        self.report.crashes += 1;
        for witnesses in self.token_witnesses.values_mut() {
            witnesses.remove(&node);
        }
        let Some(state) = self.nodes.get_mut(node.index()) else { return Ok(()) };
        state.engine = None;
        state.timers.clear();
        let gone: Vec<RequestId> =
            self.requests.iter().filter(|(_, r)| r.node == node).map(|(id, _)| *id).collect();
        for req in gone {
            if let Some(r) = self.requests.remove(&req) {
                if self.holders.get(&r.lock) == Some(&(node, req)) {
                    self.holders.remove(&r.lock);
                }
                self.last_end.insert(r.lock, self.now);
            }
        }
        self.net.crash(self.now, node, &mut self.net_out);
        self.absorb()?;
        let downtime = 1 + self.rng.below(5 * self.cfg.max_delay + 5);
        self.schedule(Millis::new(self.now.get() + downtime), Item::Restart { node });
        Ok(())
    }

    fn restart(&mut self, node: NodeId) -> Step {
        let n = self.n();
        let Some(state) = self.nodes.get_mut(node.index()) else { return Ok(()) };
        let inc = Incarnation::new(state.incarnation.get() + 1);
        state.incarnation = inc;
        state.engine = Some(Engine::new((self.make)(node, n), Peers::new(node, n, inc)));
        note!(self, "t={} node {node} RESTARTS as incarnation {}", self.now.get(), inc.get());
        self.net.restart(self.now, node, inc, &mut self.net_out);
        self.absorb()?;
        self.request_ended(node);
        Ok(())
    }

    /// Feeds one event to a live node and executes its actions. `local` events must never be refused.
    fn feed(&mut self, node: NodeId, event: Event<P::Msg>, local: bool) -> Step {
        let now = self.now;
        let mut out = Vec::new();
        let Some(engine) = self.nodes.get_mut(node.index()).and_then(|s| s.engine.as_mut()) else {
            return Ok(());
        };
        let what = if local { Some(format!("{event:?}")) } else { None };
        if let Err(e) = engine.handle(now, event, &mut out) {
            if let Some(what) = what {
                return Err(format!("node {node} refused a well-formed local event {what}: {e}"));
            }
            self.report.refused += 1;
            note!(self, "    node {node} refused: {e}");
        }
        for action in out {
            self.apply(node, action)?;
        }
        self.check_holder(node)
    }

    fn apply(&mut self, node: NodeId, action: Action<P::Msg>) -> Step {
        match action {
            Action::Send { to, epoch, msg } => {
                note!(self, "    {node}→{to} send {msg:?}");
                if to == node || to.index() >= self.n() {
                    return Err(format!("node {node} sent {msg:?} to invalid destination {to}"));
                }
                self.report.messages += 1;
                self.msgs_since_grant += 1;
                *self.report.messages_by_kind.entry(msg.kind()).or_insert(0) += 1;
                let state = &self.nodes[node.index()];
                let to_inc = state.engine.as_ref().and_then(|e| e.peers().incarnation(to));
                let msg = SimMsg { msg, to: to_inc, epoch };
                self.net.send(self.now, &mut self.rng, node, to, msg, &mut self.net_out);
                self.drain_schedule();
                Ok(())
            }
            Action::Granted { req, lock, token } => self.granted(node, req, lock, token),
            Action::LeaseExpired { req, lock } => self.lease_expired(node, req, lock),
            Action::Rejected { req, reason } => self.rejected(node, req, reason),
            Action::SetTimer { timer, at } => {
                let Some(state) = self.nodes.get_mut(node.index()) else { return Ok(()) };
                state.timers.insert(timer, at);
                let inc = state.incarnation;
                self.schedule(at.max(self.now), Item::Timer { node, inc, timer, at });
                Ok(())
            }
            Action::CancelTimer { timer } => {
                if let Some(state) = self.nodes.get_mut(node.index()) {
                    state.timers.remove(&timer);
                }
                Ok(())
            }
        }
    }

    /// Whether a try could have had to wait: another request for its lock is live, or one ended so shortly
    /// before the try was issued that its end may not have reached every node the decision reads (a few
    /// message delays per node: probable-owner's answers travel along redirect chains).
    fn contended(&self, req: RequestId) -> bool {
        let Some(r) = self.requests.get(&req) else { return false };
        let live = self.requests.iter().any(|(id, o)| *id != req && o.lock == r.lock);
        let window = 4 * self.n() as u64 * self.cfg.max_delay.max(1);
        let recent = self.last_end.get(&r.lock).is_some_and(|t| t.get() + window >= r.issued.get());
        live || recent
    }

    fn rejected(&mut self, node: NodeId, req: RequestId, reason: RejectReason) -> Step {
        note!(self, "    node {node} REJECTED {req:?} {reason:?}");
        let Some(r) = self.requests.get(&req) else {
            return Err(format!("node {node} rejected {req:?}, which is not a live request"));
        };
        if r.node != node || r.state != ReqState::Waiting {
            return Err(format!("node {node} rejected {req:?} in state {:?} at node {}", r.state, r.node));
        }
        match reason {
            RejectReason::Cancelled if !r.cancelling => {
                return Err(format!("node {node} cancelled {req:?} that nobody cancelled"));
            }
            RejectReason::TimedOut if r.deadline.is_none_or(|d| self.now < d) => {
                return Err(format!(
                    "node {node} timed out {req:?} at t={} before its deadline {:?}",
                    self.now.get(),
                    r.deadline
                ));
            }
            RejectReason::Locked { .. } if !r.attempt => {
                return Err(format!("node {node} answered {req:?} locked, but it is no try"));
            }
            RejectReason::Locked { holder } if !self.cfg.crash && !self.contended(req) => {
                return Err(format!(
                    "node {node} answered try {req:?} ({}) locked (holder {holder:?}) though no other request \
                     for it was live since shortly before the try (issued t={})",
                    r.lock,
                    r.issued.get()
                ));
            }
            RejectReason::Locked { .. } => self.report.locked += 1,
            _ => {}
        }
        if let Some(r) = self.requests.remove(&req) {
            self.last_end.insert(r.lock, self.now);
        }
        self.report.rejected += 1;
        self.request_ended(node);
        Ok(())
    }
}
