//! The simulator proper: processes (a membership core, a clock, timers), the network, the step loop and the
//! per-step lease check (the end of a run, convergence and costs are in `settle.rs`; the engines in
//! `engines.rs`).
//!
//! Must never: read the OS clock, draw from anything but the run's [`SplitMix64`], or panic on anything a
//! core does.

use super::checks::{Ghost, show};
use super::clock::LocalClock;
use super::engines::{EngineBody, Engines, Mutex};
use super::faults::{Followup, Step as PlanStep};
use super::settle::{ChangeStart, Tail};
use super::{MemberSimConfig, MemberSimReport, MemberViolation, Mutant};
use crate::algo::membership::{Action, Ballot, Epoch, Event, Member, Membership, Msg, PPM, Timer, View};
use crate::algo::{Algorithm, Incarnation, Millis, NodeId, RequestId, TimerId};
use crate::sim::SplitMix64;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A step's outcome: `Err` describes a broken invariant.
pub(super) type Step = Result<(), String>;

/// A message in flight between two processes.
#[derive(Clone, Debug)]
pub(super) struct Envelope {
    pub(super) from: NodeId,
    pub(super) from_inc: Incarnation,
    pub(super) to: NodeId,
    /// The receiving process (a message to an earlier life of `to` is lost).
    pub(super) to_serial: u64,
    pub(super) msg: Payload,
}

/// What an envelope carries.
#[derive(Clone, Debug)]
pub(super) enum Payload {
    /// A membership message (lossy: partitions drop it).
    Member(Msg),
    /// An engine message or handshake (reliable: partitions delay it), tagged with the sender's epoch and
    /// the global time it was sent.
    Engine { epoch: u64, sent: u64, body: EngineBody },
}

/// Something scheduled at a global time.
#[derive(Clone, Debug)]
pub(super) enum Item {
    /// A message arrives (`arrived`: it already reached a paused receiver, partitions no longer matter).
    Deliver { env: Envelope, arrived: bool },
    /// A core timer of process `serial` of node `id`, valid while the core still has it set for `at`.
    Timer { id: NodeId, serial: u64, timer: Timer, at: Millis },
    /// The scenario's next step.
    Plan,
    /// The consequence of an earlier fault (a restart, a resume, a heal, a second crash).
    Followup(Followup),
    /// After the faults: is every live process an active member of one view yet?
    Settle,
    /// The end of the stable tail (polled until the engines have settled too).
    TailEnd,
    /// An engine timer of process `serial` of node `id`, valid while that engine still has it set for `at`.
    EngineTimer { id: NodeId, serial: u64, algo: Algorithm, timer: TimerId, at: Millis },
    /// The workload issues an acquire at a random process.
    Acquire,
    /// A holder leaves the critical section.
    Release { id: NodeId, serial: u64, algo: Algorithm, req: RequestId },
    /// The grace after process `serial` of `id` lost its member lease while hearing a majority.
    LeaseGrace { id: NodeId, serial: u64 },
}

/// One live process.
pub(super) struct Proc {
    /// Unique over the run: identifies the process (connections, timers) across restarts of its id.
    pub(super) serial: u64,
    pub(super) inc: Incarnation,
    pub(super) clock: LocalClock,
    pub(super) core: Membership,
    pub(super) timers: BTreeMap<Timer, Millis>,
    pub(super) paused: bool,
    /// What arrived or fell due while paused, in order.
    pub(super) backlog: VecDeque<Item>,
    /// Told to leave (and the core took it).
    pub(super) leaving: bool,
    /// Restart as a new incarnation this long after exiting.
    pub(super) rejoin_after: Option<u64>,
    /// The last value its acceptor accepted, as ballot and epoch (to spot a new accept cheaply).
    accepted: Option<(Ballot, Epoch)>,
    /// The latest member-lease end the driver saw (what the [`Mutant::IgnoreLease`] driver goes by).
    seen_lease: Option<Millis>,
    /// The mutex engines, while the process is a member of the view they run over.
    pub(super) engines: Option<Engines>,
    /// Engine envelopes waiting for the engines to reach their epoch (or to exist), in arrival order.
    pub(super) held: VecDeque<Envelope>,
}

impl Proc {
    /// The latest member-lease end the driver saw.
    pub(super) fn seen_lease(&self) -> Option<Millis> {
        self.seen_lease
    }
}

pub(super) struct MemberSim {
    pub(super) cfg: MemberSimConfig,
    pub(super) rng: SplitMix64,
    pub(super) now: u64,
    pub(super) seq: u64,
    pub(super) queue: BTreeMap<(u64, u64), Item>,
    pub(super) procs: BTreeMap<NodeId, Proc>,
    /// The last incarnation used per id.
    pub(super) incarnations: BTreeMap<NodeId, u64>,
    /// Every id that ever ran (the seeds a joiner asks).
    pub(super) known_ids: BTreeSet<NodeId>,
    pub(super) next_serial: u64,
    /// Per connection (sender serial, receiver serial): when its last message arrives (FIFO).
    pub(super) link_clock: BTreeMap<(u64, u64), u64>,
    /// When the last message sent so far arrives.
    pub(super) last_arrival: u64,
    /// Directed pairs cut by the active partition.
    pub(super) blocked: BTreeSet<(NodeId, NodeId)>,
    /// When the active partition heals.
    pub(super) heal_at: u64,
    /// The mutex engines' requests, grants and connections.
    pub(super) mutex: Mutex,
    pub(super) ghost: Ghost,
    pub(super) report: MemberSimReport,
    pub(super) trace: VecDeque<String>,
    pub(super) steps: u64,
    pub(super) plan: VecDeque<PlanStep>,
    /// Followups scheduled and not yet done (restarts, resumes, heals, second crashes, rejoins).
    pub(super) pending: u32,
    /// When the plan started waiting at its current step.
    pub(super) waiting_since: Option<u64>,
    /// When the faults ended (plan done, nothing pending).
    pub(super) faults_end: Option<u64>,
    pub(super) tail: Option<Tail>,
    pub(super) change: Option<ChangeStart>,
    /// The node the mutant affects.
    pub(super) victim: NodeId,
    pub(super) done: bool,
}

/// Records a trace line (formatted only when tracing is on).
macro_rules! note {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.cfg.trace_lines > 0 {
            let line = format!($($arg)*);
            $sim.push_trace(line);
        }
    };
}
pub(super) use note;

impl MemberSim {
    pub(super) fn new(cfg: MemberSimConfig) -> Self {
        let mut rng = SplitMix64::new(cfg.seed);
        let victim = NodeId::new(rng.below(cfg.nodes.max(1) as u64) as u16);
        MemberSim {
            cfg,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            procs: BTreeMap::new(),
            incarnations: BTreeMap::new(),
            known_ids: BTreeSet::new(),
            next_serial: 0,
            link_clock: BTreeMap::new(),
            last_arrival: 0,
            blocked: BTreeSet::new(),
            heal_at: 0,
            mutex: Mutex::default(),
            ghost: Ghost::default(),
            report: MemberSimReport { clock_rates: (u64::MAX, 0), ..MemberSimReport::default() },
            trace: VecDeque::new(),
            steps: 0,
            plan: VecDeque::new(),
            pending: 0,
            waiting_since: None,
            faults_end: None,
            tail: None,
            change: None,
            victim,
            done: false,
        }
    }

    pub(super) fn push_trace(&mut self, line: String) {
        if self.trace.len() == self.cfg.trace_lines {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {line}", self.now));
    }

    pub(super) fn schedule(&mut self, at: u64, item: Item) {
        self.seq += 1;
        self.queue.insert((at, self.seq), item);
    }

    fn violation(&self, description: String) -> MemberViolation {
        let trace: Vec<&str> = self.trace.iter().map(String::as_str).collect();
        MemberViolation {
            seed: self.cfg.seed,
            scenario: self.cfg.scenario,
            mutant: self.cfg.mutant,
            step: self.steps,
            time_ms: self.now,
            description,
            replay: self.cfg.replay_command(),
            trace: if trace.is_empty() {
                String::new()
            } else {
                format!("  last steps:\n    {}", trace.join("\n    "))
            },
        }
    }

    pub(super) fn run(mut self) -> Result<MemberSimReport, MemberViolation> {
        if let Err(e) = self.cfg.membership.validate() {
            return Err(self.violation(format!("invalid configuration: {e}")));
        }
        if let Err(e) = self.start() {
            return Err(self.violation(e));
        }
        while let Some(((at, _), item)) = self.queue.pop_first() {
            self.now = at;
            self.steps += 1;
            if self.steps > self.cfg.max_steps {
                return Err(self.violation(format!("no end after {} steps", self.cfg.max_steps)));
            }
            let checked =
                self.step(item).and_then(|()| self.check_leases()).and_then(|()| self.check_mutex());
            if let Err(e) = checked {
                return Err(self.violation(e));
            }
            if self.change.as_ref().is_some_and(|c| c.at < self.now) && self.converged() {
                self.change_done();
            }
            if self.done {
                break;
            }
        }
        if !self.done {
            return Err(self.violation("the event queue ran dry before the run ended".into()));
        }
        let (refused, expiries) = self.engine_totals();
        self.report.mutex.refused_by_live_engines = refused;
        self.report.mutex.lease_expiries_live = expiries;
        self.report.views = self.ghost.count();
        self.report.final_epoch = self.ghost.newest().map_or(0, |v| v.epoch.get());
        self.report.steps = self.steps;
        self.report.end_ms = self.now;
        self.report.trace = self.trace.into();
        Ok(self.report)
    }

    /// Bootstraps `0..nodes` into view 1 and builds the scenario's plan.
    fn start(&mut self) -> Step {
        let n = self.cfg.nodes.max(1) as u16;
        for i in 0..n {
            self.spawn(NodeId::new(i))?;
        }
        let members: Vec<Member> = self.procs.values().map(|p| p.core.me().clone()).collect();
        for i in 0..n {
            self.feed(NodeId::new(i), Event::Bootstrap { members: members.clone() })?;
        }
        self.plan = self.build_plan().into();
        self.schedule(0, Item::Plan);
        if self.cfg.engines {
            let beat = self.cfg.membership.heartbeat.get();
            for _ in 0..self.cfg.acquires {
                let at = 2 * beat + self.rng.below(30 * beat);
                self.schedule(at, Item::Acquire);
            }
        }
        Ok(())
    }

    /// Starts a new process for `id` (a new incarnation, a fresh clock, a fresh core); the caller tells it
    /// to bootstrap or to join.
    pub(super) fn spawn(&mut self, id: NodeId) -> Step {
        let rate = self.draw_rate(id);
        let base = self.rng.below(1 << 30);
        self.spawn_with(id, LocalClock::new(self.now, base, rate))
    }

    /// [`MemberSim::spawn`] with a given clock.
    fn spawn_with(&mut self, id: NodeId, clock: LocalClock) -> Step {
        let (rate, base) = (clock.rate_ppm(), clock.local(self.now).get());
        let inc = self.incarnations.get(&id).map_or(0, |i| i + 1);
        self.incarnations.insert(id, inc);
        let inc = Incarnation::new(inc);
        let me = Member { id, incarnation: inc, addr: format!("n{id}") };
        let core = Membership::new(self.cfg.membership, me).map_err(|e| e.to_string())?;
        self.next_serial += 1;
        let proc = Proc {
            serial: self.next_serial,
            inc,
            clock,
            core,
            timers: BTreeMap::new(),
            paused: false,
            backlog: VecDeque::new(),
            leaving: false,
            rejoin_after: None,
            accepted: None,
            seen_lease: None,
            engines: None,
            held: VecDeque::new(),
        };
        self.procs.insert(id, proc);
        self.known_ids.insert(id);
        self.report.processes += 1;
        let (lo, hi) = self.report.clock_rates;
        self.report.clock_rates = (lo.min(rate), hi.max(rate));
        note!(self, "start {id}#{} clock rate {rate} ppm, reads {}", inc.get(), base);
        Ok(())
    }

    /// An excluded process starts again under a new incarnation, keeping its clock and the view that
    /// excluded it (it is the same process: that view is no amnesia, and it may be the only live record that
    /// the view was decided), and asks to be admitted.
    fn reincarnate(&mut self, id: NodeId) -> Step {
        self.forget_requests(id, false);
        let Some(p) = self.procs.remove(&id) else { return Ok(()) };
        note!(self, "{id}#{} was excluded: it rejoins as a new incarnation", p.inc.get());
        self.report.faults.reincarnations += 1;
        let last = p.core.view().cloned();
        self.spawn_with(id, p.clock)?;
        let inc = self.procs.get(&id).map(|q| q.inc).unwrap_or_default();
        if let Some(view) = last {
            self.feed(id, Event::Message { from: id, incarnation: inc, msg: Msg::Install { view } })?;
        }
        let seeds: Vec<NodeId> = self.known_ids.iter().copied().filter(|&s| s != id).collect();
        self.feed(id, Event::JoinRequested { seeds })
    }

    /// A new process of `id` that asks every id that ever ran to admit it.
    pub(super) fn spawn_joiner(&mut self, id: NodeId) -> Step {
        self.spawn(id)?;
        let seeds: Vec<NodeId> = self.known_ids.iter().copied().filter(|&s| s != id).collect();
        self.feed(id, Event::JoinRequested { seeds })
    }

    /// A rate within `10⁶ ± ρ` ppm: the slowest, the fastest, or in between; `1 − 3ρ` for the
    /// [`Mutant::SlowClock`] victim.
    fn draw_rate(&mut self, id: NodeId) -> u64 {
        let rho = u64::from(self.cfg.membership.drift_ppm);
        if self.cfg.mutant == Mutant::SlowClock && id == self.victim {
            return PPM.saturating_sub(3 * rho).max(1);
        }
        match self.rng.below(3) {
            0 => PPM - rho,
            1 => PPM + rho,
            _ => PPM - rho + self.rng.below(2 * rho + 1),
        }
    }

    fn step(&mut self, item: Item) -> Step {
        match item {
            Item::Deliver { env, arrived } => self.deliver(env, arrived),
            Item::Timer { id, serial, timer, at } => {
                let Some(p) = self.procs.get_mut(&id).filter(|p| p.serial == serial) else { return Ok(()) };
                if p.timers.get(&timer) != Some(&at) {
                    return Ok(());
                }
                if p.paused {
                    p.backlog.push_back(Item::Timer { id, serial, timer, at });
                    return Ok(());
                }
                p.timers.remove(&timer);
                note!(self, "{id} timer {timer:?}");
                self.feed(id, Event::Timer(timer))
            }
            Item::Plan => self.plan_step(),
            Item::Followup(f) => self.followup(f),
            Item::Settle => self.settle(),
            Item::TailEnd => self.tail_end(),
            Item::EngineTimer { id, serial, algo, timer, at } => {
                self.engine_timer(id, serial, algo, timer, at)
            }
            Item::Acquire => self.random_acquire(),
            Item::Release { id, serial, algo, req } => self.release(id, serial, algo, req),
            Item::LeaseGrace { id, serial } => self.lease_grace(id, serial),
        }
    }

    fn deliver(&mut self, env: Envelope, arrived: bool) -> Step {
        let Some(p) = self.procs.get_mut(&env.to).filter(|p| p.serial == env.to_serial) else {
            self.report.dropped += 1;
            return Ok(());
        };
        let member = matches!(env.msg, Payload::Member(_));
        if member && !arrived && self.blocked.contains(&(env.from, env.to)) {
            self.report.dropped += 1;
            return Ok(());
        }
        if p.paused {
            p.backlog.push_back(Item::Deliver { env, arrived: true });
            return Ok(());
        }
        note!(self, "{} <- {}#{} {:?}", env.to, env.from, env.from_inc.get(), env.msg);
        match env.msg {
            Payload::Member(msg) => {
                self.feed(env.to, Event::Message { from: env.from, incarnation: env.from_inc, msg })
            }
            Payload::Engine { .. } => self.deliver_engine(env),
        }
    }

    /// Feeds one event to `id`'s core and executes what it asks for.
    pub(super) fn feed(&mut self, id: NodeId, event: Event) -> Step {
        let Some(p) = self.procs.get_mut(&id) else { return Ok(()) };
        let local = p.clock.local(self.now);
        let (ballots, deferred) = (p.core.stats().proposals, p.core.stats().deferred_accepts);
        let accepts = p.core.stats().accepts;
        let was_member = p.core.is_member();
        let mut out = Vec::new();
        let refused = p.core.handle(local, event, &mut out).err();
        self.report.ballots += p.core.stats().proposals - ballots;
        self.report.deferred_accepts += p.core.stats().deferred_accepts - deferred;
        if let Some(u) = p.core.lease_until() {
            p.seen_lease = Some(p.seen_lease.map_or(u, |s| s.max(u)));
        }
        let accepted = p.core.last_accepted().map(|(b, v)| (b, v.epoch));
        let new_accept = if accepted != p.accepted {
            p.accepted = accepted;
            p.core.last_accepted().map(|(b, v)| (b, v.clone()))
        } else {
            None
        };
        let missed = (p.core.stats().accepts - accepts).saturating_sub(u64::from(new_accept.is_some()));
        let inc = p.inc;
        if let Some((ballot, view)) = &new_accept {
            note!(self, "{id} accepted {} at {ballot:?}", show(view));
            self.ghost.accepted((id, inc), Some(*ballot), view);
        }
        if missed > 0 {
            // One event accepted a view, decided and installed it, and accepted the next one: the views it
            // installed below the last accept's epoch are the ones accepted in between (ballot unseen).
            let last = new_accept.as_ref().map_or(Epoch::NONE, |(_, v)| v.epoch);
            let below: Vec<&View> = out
                .iter()
                .filter_map(|a| match a {
                    Action::InstallView(v) if v.epoch < last => Some(v),
                    _ => None,
                })
                .collect();
            let missed = usize::try_from(missed).unwrap_or(usize::MAX).min(below.len());
            for view in &below[below.len() - missed..] {
                note!(self, "{id} accepted {} (within the same event)", show(view));
                self.ghost.accepted((id, inc), None, view);
            }
        }
        if let Some(e) = refused {
            self.report.refused += 1;
            note!(self, "{id} refused: {e}");
        }
        for action in out {
            if let Action::InstallView(view) = &action
                && !view.contains(id, inc)
                && was_member
                && self.procs.get(&id).is_some_and(|p| !p.leaving)
            {
                // Excluded while alive: it must not come back as the member it was (its engines start
                // afresh, and a peer must not take the new stint for the old one), so the driver restarts it
                // in place as a new incarnation (the engines' contract: `CoreError::ExcludedFromView`), and
                // what the old core still asked for is dropped.
                self.apply(id, action)?;
                return self.reincarnate(id);
            }
            self.apply(id, action)?;
        }
        Ok(())
    }

    fn apply(&mut self, id: NodeId, action: Action) -> Step {
        match action {
            Action::Send { to, msg } => self.send(id, to, msg),
            Action::SetTimer { timer, at } => {
                let Some(p) = self.procs.get_mut(&id) else { return Ok(()) };
                p.timers.insert(timer, at);
                let (serial, fires) = (p.serial, p.clock.fires_at(at, self.now));
                self.schedule(fires, Item::Timer { id, serial, timer, at });
            }
            Action::InstallView(view) => {
                note!(self, "{id} INSTALL {}", show(&view));
                self.ghost.installed(&view)?;
                if self.cfg.engines {
                    self.engines_install(id, &view)?;
                }
            }
            Action::Active(active) => {
                note!(self, "{id} active {active}");
                if !active && self.cfg.engines {
                    self.lost_lease(id)?;
                }
                if active && self.cfg.engines {
                    self.unpark(id)?;
                }
            }
            Action::Left => self.exit(id),
        }
        Ok(())
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Msg) {
        *self.report.messages.entry(msg.kind()).or_default() += 1;
        if self.blocked.contains(&(from, to)) {
            self.report.dropped += 1;
            return;
        }
        self.transmit(from, to, Payload::Member(msg), 0);
    }

    /// Sends over the reliable engine connection: a partition between the two delays the message until it
    /// heals (the link resends then) instead of losing it.
    pub(super) fn send_reliable(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        let not_before = if self.blocked.contains(&(from, to)) { self.heal_at } else { 0 };
        self.transmit(from, to, payload, not_before);
    }

    /// Puts a message on the FIFO connection between the current processes of `from` and `to`, arriving
    /// after a random delay (and not before `not_before`); lost if `to` has no process.
    fn transmit(&mut self, from: NodeId, to: NodeId, msg: Payload, not_before: u64) {
        let Some(sender) = self.procs.get(&from) else { return };
        let (from_inc, from_serial) = (sender.inc, sender.serial);
        let Some(to_serial) = self.procs.get(&to).map(|p| p.serial) else {
            self.report.dropped += 1;
            return;
        };
        let delay = self.delay();
        let last = self.link_clock.entry((from_serial, to_serial)).or_default();
        let at = (*last).max(self.now.max(not_before) + delay);
        *last = at;
        self.last_arrival = self.last_arrival.max(at);
        let env = Envelope { from, from_inc, to, to_serial, msg };
        self.schedule(at, Item::Deliver { env, arrived: false });
    }

    fn delay(&mut self) -> u64 {
        if self.faults_end.is_none()
            && self.cfg.slow_per_mille > 0
            && self.rng.below(1000) < self.cfg.slow_per_mille
        {
            return 1 + self.rng.below(2 * self.cfg.membership.suspect_after.get());
        }
        1 + self.rng.below(self.cfg.max_delay.max(1))
    }

    /// The process of `id` exits after [`Action::Left`]; it may come back later as a new incarnation.
    fn exit(&mut self, id: NodeId) {
        self.forget_requests(id, false);
        let Some(p) = self.procs.remove(&id) else { return };
        self.report.faults.exits += 1;
        note!(self, "{id}#{} exits", p.inc.get());
        if let Some(after) = p.rejoin_after {
            self.schedule(self.now + after, Item::Followup(Followup::Restart { id, again: false }));
        }
    }

    /// Whether the driver of process `p` (node `id`) acts at its local time `local`.
    pub(super) fn acting(&self, id: NodeId, p: &Proc, local: Millis) -> bool {
        if self.cfg.mutant == Mutant::IgnoreLease && id == self.victim {
            let grace = self.cfg.membership.lease.get();
            return p.seen_lease.is_some_and(|u| local.get() < u.get().saturating_add(grace));
        }
        p.core.is_active(local)
    }

    /// Lease safety: no process acts while a view of its epoch or later that does not list it is installed.
    fn check_leases(&self) -> Step {
        for (&id, p) in &self.procs {
            let local = p.clock.local(self.now);
            if !self.acting(id, p, local) {
                continue;
            }
            let epoch = p.core.view().map_or(Epoch::NONE, |v| v.epoch);
            if let Some(v) = self.ghost.excluding(epoch, id, p.inc) {
                return Err(format!(
                    "lease safety: node {id}#{} acts at its local time {} (member lease until {:?}, its \
                     epoch {epoch}, clock rate {} ppm{}) while view {} that excludes it is installed",
                    p.inc.get(),
                    local.get(),
                    p.core.lease_until().map(Millis::get),
                    p.clock.rate_ppm(),
                    if p.paused { ", paused" } else { "" },
                    show(v)
                ));
            }
        }
        Ok(())
    }
}
