//! Deterministic simulation of the mutex cores over a changing member set: a holder crashes, an oracle
//! standing in for the membership layer excludes it ([`Event::MembersChanged`]), the survivors keep
//! granting, and later a node joins under a new id.
//!
//! The oracle is the member-lease rule the cores rely on: it installs the view without the crashed node only
//! once every lease that node was granted has run out (in global time: the simulated clocks do not drift).
//! [`ViewOracle::Early`] breaks that rule on purpose (it excludes at once) and the checker must catch it.
//!
//! Network: reliable FIFO links keyed by node id (ids are not `0..n`), a seeded random delay per message;
//! what a node sent before it crashed still arrives (and is refused once it is excluded). Handshakes between
//! a joiner and the members go out after the members installed the view that admits it.
//!
//! The victim is a lock holder in half the runs (always with [`ViewOracle::Early`]) and any node otherwise.
//!
//! Checked after every step: at most one holder per lock, counting a crashed node's grant as held until its
//! lease ends (its client cannot know it crashed); fencing tokens strictly increase per lock. At the end:
//! every request issued to a node that did not crash was granted (liveness over the view changes), and both
//! view changes happened.
//!
//! Must never: read the OS clock, use unseeded randomness, or let `HashMap` order reach the output.

use super::SplitMix64;
use crate::algo::{
    Action, Algorithm, Engine, Event, FencingToken, Incarnation, LockName, Millis, NodeId, Peers, Protocol,
    RequestId, TimerId,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// When the oracle excludes the crashed node.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ViewOracle {
    /// Once every lease the crashed node was granted has run out (what member leases guarantee).
    AfterLeases,
    /// Right after the crash, while its leases may still run: a negative control, must be caught.
    Early,
}

/// One run of the view-change scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewSimConfig {
    /// Nodes at the start (ids `0..nodes`).
    pub nodes: usize,
    /// Lock names used (`lock0`, `lock1`, …).
    pub locks: usize,
    /// Acquires issued by the workload.
    pub requests: usize,
    /// The lease every grant comes with, in ms.
    pub ttl: u64,
    /// Largest message delay, in ms.
    pub max_delay: u64,
    /// When the crashed node is excluded.
    pub oracle: ViewOracle,
    /// The id the joiner gets (not `nodes`: ids need not be list indexes).
    pub joiner: u16,
    /// The run's seed.
    pub seed: u64,
}

impl ViewSimConfig {
    /// The scenario as the tests run it: 4 nodes, 2 locks, 60 requests, node 9 joins.
    pub fn preset(seed: u64) -> Self {
        ViewSimConfig {
            nodes: 4,
            locks: 2,
            requests: 60,
            ttl: 40,
            max_delay: 5,
            oracle: ViewOracle::AfterLeases,
            joiner: 9,
            seed,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewSimReport {
    /// Grants.
    pub grants: u64,
    /// Messages the engines refused (an excluded node's late ones among them).
    pub refused: u64,
    /// When the crashed node was excluded and when the joiner was admitted (virtual ms).
    pub excluded_at: u64,
    /// When the joiner was admitted.
    pub joined_at: u64,
}

/// An invariant a run broke; `Display` names the seed and the replay command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewViolation {
    /// The algorithm under test.
    pub algorithm: Algorithm,
    /// The run's configuration.
    pub config: ViewSimConfig,
    /// Virtual time of the breach.
    pub time_ms: u64,
    /// What went wrong.
    pub description: String,
}

impl ViewViolation {
    /// The shell command that replays the run (a preset; the oracle as configured).
    pub fn replay_command(&self) -> String {
        format!(
            "DMUTEX_VIEW_SEED={} DMUTEX_SIM_ALGO={} DMUTEX_VIEW_ORACLE={} cargo test --test simulation \
             view_replay -- --nocapture",
            self.config.seed,
            self.algorithm,
            if self.config.oracle == ViewOracle::Early { "early" } else { "after-leases" }
        )
    }
}

impl fmt::Display for ViewViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} view-change simulation broke an invariant at t={} ms: {}\n  seed {}, replay: {}",
            self.algorithm,
            self.time_ms,
            self.description,
            self.config.seed,
            self.replay_command()
        )
    }
}

impl std::error::Error for ViewViolation {}

#[derive(Clone, Debug)]
enum Item {
    /// The head of the link `from -> to` arrives.
    Deliver { from: NodeId, to: NodeId },
    /// The workload issues an acquire at a random node.
    Acquire,
    /// An acquire at `node` for `lock`.
    AcquireAt { node: NodeId, lock: usize },
    /// The holder `req` at `node` leaves.
    Release { node: NodeId, req: RequestId },
    /// An engine timer.
    Timer { node: NodeId, timer: TimerId, at: Millis },
    /// The next node to hold a lock crashes (retried until some node holds one).
    Crash,
    /// The oracle checks whether it may exclude the crashed node.
    Exclude,
    /// The joiner is admitted.
    Join,
}

struct Grant {
    node: NodeId,
    req: RequestId,
    lock: LockName,
    lease_end: u64,
}

/// FIFO links per directed pair: each message with the view epoch its sender was in.
type Links<M> = BTreeMap<(NodeId, NodeId), VecDeque<(u64, M)>>;

struct ViewSim<P: Protocol> {
    cfg: ViewSimConfig,
    rng: SplitMix64,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Item>,
    engines: BTreeMap<NodeId, Engine<P>>,
    links: Links<P::Msg>,
    /// When each link's last message arrives (FIFO: a later message never overtakes).
    link_clock: BTreeMap<(NodeId, NodeId), u64>,
    timers: BTreeMap<(NodeId, TimerId), Millis>,
    members: BTreeSet<NodeId>,
    epoch: u64,
    next_req: u64,
    /// Requests waiting: (node, req) -> lock.
    waiting: BTreeMap<(NodeId, RequestId), LockName>,
    /// Grants still held (or, for a crashed node, whose lease may still run).
    held: Vec<Grant>,
    last_token: BTreeMap<LockName, FencingToken>,
    crashed: Option<(NodeId, u64)>,
    report: ViewSimReport,
}

/// Runs the view-change scenario for `P`.
pub fn run_views<P: Protocol>(cfg: &ViewSimConfig) -> Result<ViewSimReport, ViewViolation> {
    let n = cfg.nodes;
    let engines = (0..n as u16)
        .map(|i| {
            let me = NodeId::new(i);
            (me, Engine::new(P::fresh(me, n), Peers::formed(me, n)))
        })
        .collect();
    let sim = ViewSim::<P> {
        cfg: cfg.clone(),
        rng: SplitMix64::new(cfg.seed),
        now: 0,
        seq: 0,
        queue: BTreeMap::new(),
        engines,
        links: BTreeMap::new(),
        link_clock: BTreeMap::new(),
        timers: BTreeMap::new(),
        members: (0..n as u16).map(NodeId::new).collect(),
        epoch: 0,
        next_req: 0,
        waiting: BTreeMap::new(),
        held: Vec::new(),
        last_token: BTreeMap::new(),
        crashed: None,
        report: ViewSimReport::default(),
    };
    sim.run()
}

impl<P: Protocol> ViewSim<P> {
    fn schedule(&mut self, at: u64, item: Item) {
        self.seq += 1;
        self.queue.insert((at, self.seq), item);
    }

    fn below(&mut self, n: u64) -> u64 {
        self.rng.next_u64() % n.max(1)
    }

    fn violation(&self, description: String) -> ViewViolation {
        ViewViolation { algorithm: P::ALGORITHM, config: self.cfg.clone(), time_ms: self.now, description }
    }

    fn run(mut self) -> Result<ViewSimReport, ViewViolation> {
        let spread = self.cfg.requests as u64 * 4;
        for _ in 0..self.cfg.requests {
            let at = self.below(spread);
            self.schedule(at, Item::Acquire);
        }
        let crash_at = spread / 4 + self.below(spread / 4);
        self.schedule(crash_at, Item::Crash);
        let mut steps = 0u64;
        while let Some(((at, _), item)) = self.queue.pop_first() {
            self.now = at;
            steps += 1;
            if steps > 1_000_000 {
                return Err(self.violation("the run does not go quiet (livelock)".into()));
            }
            self.step(item)?;
        }
        if self.report.excluded_at == 0 || self.report.joined_at == 0 {
            return Err(self.violation("the scenario did not exclude and admit a node".into()));
        }
        if let Some(((node, req), lock)) = self.waiting.iter().next() {
            return Err(self.violation(format!(
                "request {req:?} of node {node} for {lock} never granted ({} waiting)",
                self.waiting.len()
            )));
        }
        Ok(self.report)
    }

    fn step(&mut self, item: Item) -> Result<(), ViewViolation> {
        match item {
            Item::Deliver { from, to } => {
                let Some((epoch, msg)) = self.links.get_mut(&(from, to)).and_then(VecDeque::pop_front) else {
                    return Ok(());
                };
                let incarnation = Incarnation::new(0);
                self.feed(to, Event::Message { from, incarnation, epoch, msg })
            }
            Item::Acquire => {
                let live: Vec<NodeId> = self.engines.keys().copied().collect();
                let node = live[self.below(live.len() as u64) as usize];
                let lock = self.below(self.cfg.locks as u64) as usize;
                self.acquire(node, lock)
            }
            Item::AcquireAt { node, lock } => self.acquire(node, lock),
            Item::Release { node, req } => {
                if !self.engines.contains_key(&node) {
                    return Ok(()); // Crashed: its grant stays held until its lease ends.
                }
                let Some(pos) = self.held.iter().position(|g| g.node == node && g.req == req) else {
                    return Ok(());
                };
                self.held.remove(pos);
                self.feed(node, Event::Release { req })
            }
            Item::Timer { node, timer, at } => {
                if self.timers.get(&(node, timer)) != Some(&at) {
                    return Ok(());
                }
                self.timers.remove(&(node, timer));
                self.feed(node, Event::Timer { timer })
            }
            Item::Crash => self.crash(),
            Item::Exclude => self.exclude(),
            Item::Join => self.join(),
        }
    }

    fn acquire(&mut self, node: NodeId, lock: usize) -> Result<(), ViewViolation> {
        let lock = format!("lock{lock}");
        let busy = self.waiting.iter().any(|(&(n, _), l)| n == node && *l == lock)
            || self.held.iter().any(|g| g.node == node && g.lock == lock);
        if busy || !self.engines.contains_key(&node) {
            return Ok(());
        }
        self.next_req += 1;
        let req = RequestId::new(self.next_req);
        self.waiting.insert((node, req), lock.clone());
        let ttl = Some(Millis::new(self.cfg.ttl));
        self.feed(node, Event::Acquire { req, lock, deadline: None, ttl })
    }

    /// A holder crashes (with the early oracle always, otherwise in half the runs; else any node, which may
    /// be waiting or idle); every other member then wants the victim's lock (or `lock0`) at once.
    fn crash(&mut self) -> Result<(), ViewViolation> {
        let holder =
            self.held.iter().map(|g| (g.node, g.lock.clone())).find(|(n, _)| self.engines.contains_key(n));
        let victim = if self.cfg.oracle == ViewOracle::Early || self.rng.chance(0.5) {
            holder
        } else {
            let live: Vec<NodeId> = self.engines.keys().copied().collect();
            let node = live[self.below(live.len() as u64) as usize];
            Some((node, "lock0".to_owned()))
        };
        let Some((node, lock)) = victim else {
            self.schedule(self.now + 1, Item::Crash);
            return Ok(());
        };
        self.engines.remove(&node);
        self.timers.retain(|&(n, _), _| n != node);
        self.links.retain(|&(_, to), _| to != node);
        self.waiting.retain(|&(n, _), _| n != node);
        self.crashed = Some((node, self.now));
        let index: usize = lock.trim_start_matches("lock").parse().unwrap_or(0);
        let others: Vec<NodeId> = self.engines.keys().copied().collect();
        for other in others {
            self.schedule(self.now + 1, Item::AcquireAt { node: other, lock: index });
        }
        self.schedule(self.now + 1, Item::Exclude);
        Ok(())
    }

    fn exclude(&mut self) -> Result<(), ViewViolation> {
        let Some((node, _)) = self.crashed else { return Ok(()) };
        let lease_end = self.held.iter().filter(|g| g.node == node).map(|g| g.lease_end).max();
        if self.cfg.oracle == ViewOracle::AfterLeases
            && let Some(end) = lease_end
            && end > self.now
        {
            self.schedule(end, Item::Exclude);
            return Ok(());
        }
        self.members.remove(&node);
        self.install()?;
        self.report.excluded_at = self.now;
        let at = self.now + 20 + self.below(40);
        self.schedule(at, Item::Join);
        Ok(())
    }

    fn view(&self) -> Vec<(NodeId, Incarnation)> {
        self.members.iter().map(|&m| (m, Incarnation::new(0))).collect()
    }

    fn install(&mut self) -> Result<(), ViewViolation> {
        self.epoch += 1;
        let (epoch, members) = (self.epoch, self.view());
        let running: Vec<NodeId> = self.engines.keys().copied().collect();
        for node in running {
            self.feed(node, Event::MembersChanged { epoch, members: members.clone() })?;
        }
        Ok(())
    }

    fn join(&mut self) -> Result<(), ViewViolation> {
        let joiner = NodeId::new(self.cfg.joiner);
        self.members.insert(joiner);
        self.install()?;
        let view = self.view();
        let engine = Engine::in_view(P::fresh(joiner, 0), joiner, Incarnation::new(0), self.epoch, &view);
        self.engines.insert(joiner, engine);
        let members: Vec<NodeId> = self.members.iter().copied().filter(|&m| m != joiner).collect();
        for m in members {
            let clock = self.engines[&m].clock();
            self.feed(joiner, Event::PeerIncarnation { peer: m, incarnation: Incarnation::new(0), clock })?;
            let clock = self.engines[&joiner].clock();
            self.feed(m, Event::PeerIncarnation { peer: joiner, incarnation: Incarnation::new(0), clock })?;
        }
        self.report.joined_at = self.now;
        // The joiner takes part in the rest of the workload and wants every lock once.
        for lock in 0..self.cfg.locks {
            let at = self.now + 1 + self.below(20);
            self.schedule(at, Item::AcquireAt { node: joiner, lock });
        }
        Ok(())
    }

    fn feed(&mut self, node: NodeId, event: Event<P::Msg>) -> Result<(), ViewViolation> {
        let Some(engine) = self.engines.get_mut(&node) else { return Ok(()) };
        let mut out = Vec::new();
        if engine.handle(Millis::new(self.now), event, &mut out).is_err() {
            self.report.refused += 1;
        }
        for action in out {
            self.apply(node, action)?;
        }
        Ok(())
    }

    fn apply(&mut self, node: NodeId, action: Action<P::Msg>) -> Result<(), ViewViolation> {
        match action {
            Action::Send { to, epoch, msg } => {
                let delay = 1 + self.below(self.cfg.max_delay);
                let clock = self.link_clock.entry((node, to)).or_default();
                let at = (*clock).max(self.now + delay);
                *clock = at;
                self.links.entry((node, to)).or_default().push_back((epoch, msg));
                self.schedule(at, Item::Deliver { from: node, to });
            }
            Action::Granted { req, lock, token } => {
                if self.waiting.remove(&(node, req)).is_none() {
                    return Err(
                        self.violation(format!("grant to node {node} for {req:?}, which does not wait"))
                    );
                }
                let now = self.now;
                if let Some(other) = self.held.iter().find(|g| g.lock == lock && g.lease_end > now) {
                    return Err(self.violation(format!(
                        "mutual exclusion: node {node} granted {lock} while node {} holds it{}",
                        other.node,
                        if self.engines.contains_key(&other.node) {
                            ""
                        } else {
                            " (crashed, lease still valid)"
                        }
                    )));
                }
                if let Some(&last) = self.last_token.get(&lock)
                    && token <= last
                {
                    return Err(self.violation(format!("fencing: {lock} token {token:?} after {last:?}")));
                }
                self.last_token.insert(lock.clone(), token);
                self.report.grants += 1;
                let lease_end = now + self.cfg.ttl;
                self.held.push(Grant { node, req, lock, lease_end });
                // Holders release well before their lease ends (a crashed one never does).
                let hold = 1 + self.below(self.cfg.ttl / 2);
                self.schedule(now + hold, Item::Release { node, req });
            }
            Action::Rejected { req, reason } => {
                return Err(self.violation(format!("request {req:?} of node {node} rejected ({reason:?})")));
            }
            Action::LeaseExpired { req, .. } => {
                self.held.retain(|g| !(g.node == node && g.req == req));
            }
            Action::SetTimer { timer, at } => {
                self.timers.insert((node, timer), at);
                self.schedule(at.get(), Item::Timer { node, timer, at });
            }
            Action::CancelTimer { timer } => {
                self.timers.remove(&(node, timer));
            }
        }
        Ok(())
    }
}
