//! Deterministic simulation of whole nodes: the real membership core ([`Membership`]) on every process,
//! drifting local clocks, a lossy partitionable network, pauses, amnesia crashes, joins, leaves, scaling
//! and rolling restarts, all from one seed.
//!
//! Unlike [`super::run_views`], no oracle decides the views: every view a node installs comes out of the
//! membership cores' own Paxos rounds, heartbeats and member leases, exactly as a node would run them.
//!
//! **Model.**
//! - Global time `T` (ms). Each process has a local clock `base + ⌊(T − t0)·rate/10⁶⌋` with `rate` within
//!   `10⁶ ± ρ` ppm ([`Config::drift_ppm`]), drawn per process from the seed; timers are set in local time and
//!   fire at the first global millisecond whose reading reaches them. A restart is a new process with a
//!   fresh clock, a new [`Incarnation`] and a fresh core that asks the seeds to admit it (amnesia).
//! - Network: each message takes a seeded random delay; per directed connection (sender process, receiver
//!   process) delivery is FIFO, as the real links are. A message to a process that has died since it was
//!   sent is lost; one its sender sent before dying still arrives. While a partition is active, membership
//!   messages across it (one direction or both) are dropped, at sending and at arrival, and engine messages
//!   wait for the heal (the real links resend); partitions heal later.
//!   Kinds: a minority (or half) cut off, one node's outgoing or incoming traffic cut, and a bridge node
//!   that sees both sides of an otherwise split cluster. Before the faults end some messages are slow
//!   (up to `2·S`), which makes FIFO hold back the messages behind them.
//! - A paused process handles nothing while its clock runs on; its messages and timers queue up and are
//!   handled in order when it resumes.
//! - Scenarios ([`Scenario`]): random chaos (crashes, two crashes of one node in a row, pauses shorter and
//!   longer than `S + L`, partitions, joins of new ids, graceful leaves: [`membership::Event::Leave`], then
//!   the process exits on [`membership::Action::Left`]); scaling 3 → 5 → 3; a rolling restart of every node
//!   (leave, exit, restart as a new incarnation, rejoin, one node at a time); single faults in a quiet
//!   cluster, for the cost of one view change.
//! - A crash or a leave is injected only if a majority of the newest view, and of every value accepted for
//!   the next epoch, stays up (otherwise the cluster is lost for good, by design: a restarted process is
//!   never its predecessor's acceptor).
//! - Driver rules: a process excluded while alive (not leaving) restarts in place as a new incarnation that
//!   keeps its clock and starts from the view that excluded it (the engines' contract, see `engines.rs`); a
//!   leaving process exits on [`membership::Action::Left`].
//!
//! **Checked after every step**, in global time (a breach ends the run with a [`MemberViolation`] naming the
//! seed and the replay command; never a panic):
//! - at most one view per epoch, over every view any process ever installed;
//! - every installed view `e+1` was accepted, at one ballot, by a majority of view `e`'s `(id, incarnation)`
//!   members (the ACCEPTs are recorded as ghost state that survives crashes);
//! - lease safety: no process acts ([`Membership::is_active`] at its local time) while a view of its epoch or
//!   later that does not list it (its id at its incarnation) is installed anywhere. This is both "when a view
//!   excluding X is installed, X is not active at that global moment" and "X never becomes active again in
//!   an epoch up to that one".
//!
//! **Liveness**: once the faults are over (partitions healed, pauses ended, crashed nodes restarted, and
//! every message of the fault period delivered), every live process must, within
//! [`MemberSimConfig::liveness_bound`], be a member of one and the same newest view, which lists exactly the
//! live processes, be active, want no change and have no instance under way; and it must then stay so for a
//! stable tail of five heartbeats, in which heartbeat and ack rates are measured ([`StableRates`]). A view
//! change in the tail (a suspicion that started before the network settled) starts settling over, still
//! within the bound ([`MemberSimReport::late_view_changes`]). Runs in which the newest view has lost its
//! majority for good are reported ([`Liveness::MajorityLost`]), not failed.
//!
//! **Mutex engines** (phase 2, `engines.rs`): Lamport, Ricart–Agrawala and probable owner on every process,
//! over the views it installs and gated by its member lease; mutual exclusion over grants valid on the
//! holder's clock, fencing tokens, and after convergence a probe at every member for every algorithm. An
//! excluded process rejoins as a new incarnation (the engines' contract).
//!
//! **Mutants** ([`Mutant`], in this driver only, never in the core): a node whose clock runs at `1 − 3ρ`, a
//! driver that keeps acting for `L` after its member lease ended, and drivers that let clients keep their
//! grants past the member lease. The checker must catch all three.
//!
//! Must never: read the OS clock, use unseeded randomness, let `HashMap` order reach the output, or panic on
//! anything a core does.

mod checks;
mod clock;
mod driver;
mod engines;
mod faults;
mod settle;

use crate::algo::Algorithm;
#[cfg(doc)]
use crate::algo::Incarnation;
#[cfg(doc)]
use crate::algo::membership::Membership;
use crate::algo::membership::{self, Config};
use std::collections::BTreeMap;
use std::fmt;

/// What happens to the cluster in a run.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// Random faults: amnesia crashes (sometimes twice in a row), pauses, partitions, joins, leaves.
    Chaos,
    /// Three nodes; two new ids join one at a time, then two members leave one at a time.
    Scale,
    /// Every member in turn leaves, exits, restarts as a new incarnation and rejoins.
    Rolling,
    /// One member crashes (and stays down) in a quiet cluster: the cost of an exclusion.
    OneCrash,
    /// One new id joins a quiet cluster: the cost of an admission.
    OneJoin,
    /// One member leaves a quiet cluster: the cost of a graceful leave.
    OneLeave,
    /// Nothing happens: the steady-state heartbeat cost.
    Quiet,
}

impl Scenario {
    /// Every scenario, in a stable order.
    pub const ALL: [Scenario; 7] = [
        Scenario::Chaos,
        Scenario::Scale,
        Scenario::Rolling,
        Scenario::OneCrash,
        Scenario::OneJoin,
        Scenario::OneLeave,
        Scenario::Quiet,
    ];

    /// The name used in `DMUTEX_MEMSIM_SCENARIO`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Chaos => "chaos",
            Scenario::Scale => "scale",
            Scenario::Rolling => "rolling",
            Scenario::OneCrash => "one-crash",
            Scenario::OneJoin => "one-join",
            Scenario::OneLeave => "one-leave",
            Scenario::Quiet => "quiet",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL.into_iter().find(|sc| sc.as_str() == s.to_ascii_lowercase()).ok_or_else(|| {
            format!("unknown scenario {s:?} (expected one of {:?})", Scenario::ALL.map(Scenario::as_str))
        })
    }
}

/// A deliberately broken driver, for negative controls. The membership core itself is never changed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mutant {
    /// The correct driver.
    None,
    /// One node's clock (every incarnation of it) runs at `1 − 3ρ`, outside the assumed bound.
    SlowClock,
    /// One node's driver ignores the end of its member lease: it keeps acting until the lease's end plus `L`
    /// (also after [`membership::Action::Active`]`(false)`).
    IgnoreLease,
    /// Every driver lets its clients keep their grants until their TTL even after the member lease ended
    /// (no release on [`membership::Action::Active`]`(false)`, validity by TTL alone). The membership core
    /// stays correct, so lease safety holds; mutual exclusion must be seen to break.
    KeepGrants,
}

impl Mutant {
    /// The name used in `DMUTEX_MEMSIM_MUTANT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mutant::None => "none",
            Mutant::SlowClock => "slow-clock",
            Mutant::IgnoreLease => "ignore-lease",
            Mutant::KeepGrants => "keep-grants",
        }
    }
}

impl fmt::Display for Mutant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mutant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Mutant::None),
            "slow-clock" | "slow_clock" | "drift" => Ok(Mutant::SlowClock),
            "ignore-lease" | "ignore_lease" => Ok(Mutant::IgnoreLease),
            "keep-grants" | "keep_grants" => Ok(Mutant::KeepGrants),
            other => Err(format!(
                "unknown mutant {other:?} (expected none, slow-clock, ignore-lease or keep-grants)"
            )),
        }
    }
}

/// One run's parameters. [`MemberSimConfig::preset`] derives them from a seed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberSimConfig {
    /// The seed of everything random.
    pub seed: u64,
    /// What happens.
    pub scenario: Scenario,
    /// Nodes bootstrapped at time 0 (ids `0..nodes`).
    pub nodes: usize,
    /// The membership cores' timing.
    pub membership: Config,
    /// Largest ordinary message delay, in ms (each message takes `1..=max_delay`).
    pub max_delay: u64,
    /// Per mille of messages that are slow (up to `2·S`) while the faults last.
    pub slow_per_mille: u64,
    /// Random faults injected in [`Scenario::Chaos`].
    pub faults: usize,
    /// A broken driver, or [`Mutant::None`].
    pub mutant: Mutant,
    /// Whether every process runs the three mutex engines over its views (phase 2).
    pub engines: bool,
    /// Acquires the workload issues at random processes, engines and times while the faults last.
    pub acquires: usize,
    /// Keep this many trace lines of the last steps (0: none; a failing run is replayed with a trace).
    pub trace_lines: usize,
    /// Give up (and report it) after this many steps.
    pub max_steps: u64,
}

impl MemberSimConfig {
    /// The membership timing the seeded runs use: heartbeat 100 ms, S = 250 ms, L = 300 ms, ρ = 5 %, retry
    /// 60 ms. S < L on purpose: the lease wait, not the suspicion, then decides when a member is excluded.
    pub fn sim_timing() -> Config {
        Config {
            heartbeat: crate::algo::Millis::new(100),
            suspect_after: crate::algo::Millis::new(250),
            lease: crate::algo::Millis::new(300),
            drift_ppm: 50_000,
            retry: crate::algo::Millis::new(60),
        }
    }

    /// The run that `seed` names (scenario, size and fault count drawn from it).
    pub fn preset(seed: u64) -> Self {
        let mut rng = super::SplitMix64::new(seed ^ 0x6d65_6d73_696d_0001);
        let scenario = match rng.below(10) {
            0..=5 => Scenario::Chaos,
            6 | 7 => Scenario::Scale,
            _ => Scenario::Rolling,
        };
        // Mostly 3 and 4 nodes (each member heartbeats every other one, so a 5-node run costs twice a
        // 3-node one); the scale scenario reaches 5 anyway.
        let nodes = match (scenario, rng.below(10)) {
            (Scenario::Chaos, 0..=4) => 3,
            (Scenario::Chaos, 5..=7) => 4,
            (Scenario::Chaos, _) => 5,
            _ => 3,
        };
        // Slow messages only in chaos: the scripted scenarios wait for convergence between their steps, and
        // with round trips longer than the retry interval proposers duel (Paxos needs a stable network for
        // progress), so there the network stays fast.
        let slow = rng.below(30);
        MemberSimConfig {
            seed,
            scenario,
            nodes,
            membership: Self::sim_timing(),
            max_delay: 2 + rng.below(19),
            slow_per_mille: if scenario == Scenario::Chaos { slow } else { 0 },
            faults: 2 + rng.below(4) as usize,
            mutant: Mutant::None,
            engines: true,
            acquires: 6 + rng.below(10) as usize,
            trace_lines: 0,
            max_steps: 400_000,
        }
    }

    /// [`MemberSimConfig::preset`] with another scenario and mutant.
    pub fn preset_with(seed: u64, scenario: Option<Scenario>, mutant: Mutant) -> Self {
        let mut cfg = Self::preset(seed);
        if let Some(scenario) = scenario
            && scenario != cfg.scenario
        {
            cfg.scenario = scenario;
            if scenario != Scenario::Chaos {
                cfg.nodes = 3;
            }
        }
        if cfg.scenario != Scenario::Chaos {
            cfg.slow_per_mille = 0;
        }
        cfg.mutant = mutant;
        cfg
    }

    /// How long after the faults end every live process must be an active member of one view:
    /// `S + L` for detecting and excluding a dead member, then two more lease waits (an admission that
    /// replaces an incarnation waits out its lease; a view installed meanwhile restarts the wait), all
    /// stretched by the slowest clock, plus twenty retry steps for ballots, joins and message delays.
    pub fn liveness_bound(&self) -> u64 {
        let m = &self.membership;
        let local = m.suspect_after.get() + 3 * m.lease.get() + 20 * m.retry.get() + 20 * self.max_delay;
        // A local span at the slowest rate 1 − ρ lasts span/(1 − ρ) real ms.
        let slowest = membership::PPM - u64::from(m.drift_ppm);
        local * membership::PPM / slowest.max(1) + 1
    }

    /// The shell command that replays this run, if it is a preset (else the config to pass).
    pub fn replay_command(&self) -> String {
        let preset = Self::preset_with(self.seed, Some(self.scenario), self.mutant);
        let plain = MemberSimConfig { trace_lines: self.trace_lines, engines: self.engines, ..preset };
        if *self != plain {
            return format!("dmutex::sim::run_membership(&{self:?})");
        }
        let mut cmd = format!("DMUTEX_MEMSIM_SEED={}", self.seed);
        if !self.engines {
            cmd += " DMUTEX_MEMSIM_ENGINES=0";
        }
        if self.scenario != Self::preset(self.seed).scenario {
            cmd += &format!(" DMUTEX_MEMSIM_SCENARIO={}", self.scenario);
        }
        if self.mutant != Mutant::None {
            cmd += &format!(" DMUTEX_MEMSIM_MUTANT={}", self.mutant);
        }
        cmd + " cargo test --test simulation_membership replay -- --nocapture"
    }
}

/// Faults a run injected (and those it skipped because they would have cost the cluster its majority).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultCounts {
    /// Amnesia crashes.
    pub crashes: u64,
    /// Second crashes of a node shortly after its restart.
    pub double_crashes: u64,
    /// Restarts as a new incarnation (after a crash or a leave).
    pub restarts: u64,
    /// Pauses.
    pub pauses: u64,
    /// Pauses longer than `S + L`.
    pub long_pauses: u64,
    /// Partitions, by kind.
    pub partitions: BTreeMap<&'static str, u64>,
    /// New ids that joined.
    pub joins: u64,
    /// Graceful leaves started.
    pub leaves: u64,
    /// Processes that exited after [`membership::Action::Left`].
    pub exits: u64,
    /// Crashes and leaves not injected (a majority of the newest view would not have stayed up).
    pub skipped: u64,
    /// Processes excluded while alive that the driver restarted in place as a new incarnation.
    pub reincarnations: u64,
}

/// Whether the liveness condition was checked.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// The run ended before the faults did (should not happen in a finished run).
    #[default]
    NotReached,
    /// Every live process was an active member of one view this long after the faults ended.
    Converged {
        /// ms from the end of the faults to convergence.
        after_ms: u64,
    },
    /// The newest view has fewer live members than its majority: no view can ever be decided again.
    MajorityLost,
}

/// Membership messages per second per node in a stable view, measured over the run's stable tail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StableRates {
    /// Members of the stable view.
    pub nodes: u64,
    /// Length of the window, in global ms.
    pub window_ms: u64,
    /// HEARTBEAT messages sent in the window, all nodes.
    pub heartbeats: u64,
    /// ACK messages sent in the window, all nodes.
    pub acks: u64,
    /// Every other membership message sent in the window (none in a stable view).
    pub other: u64,
}

impl StableRates {
    /// HEARTBEATs per second per node.
    pub fn heartbeats_per_node_per_s(&self) -> f64 {
        per_node_per_s(self.heartbeats, self.nodes, self.window_ms)
    }

    /// ACKs per second per node.
    pub fn acks_per_node_per_s(&self) -> f64 {
        per_node_per_s(self.acks, self.nodes, self.window_ms)
    }
}

fn per_node_per_s(count: u64, nodes: u64, window_ms: u64) -> f64 {
    if nodes == 0 || window_ms == 0 {
        return 0.0;
    }
    count as f64 * 1000.0 / (nodes as f64 * window_ms as f64)
}

/// The cost of the single view change of [`Scenario::OneCrash`], [`Scenario::OneJoin`] or
/// [`Scenario::OneLeave`]: from the fault until every live process is an active member of the new view.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ViewChangeCost {
    /// Members before the change.
    pub nodes_before: u64,
    /// Members after it.
    pub nodes_after: u64,
    /// Membership messages sent, by type, from the fault to convergence (heartbeats and acks included).
    pub messages: BTreeMap<&'static str, u64>,
    /// Ballots started (PREPARE rounds), over all nodes.
    pub ballots: u64,
    /// Views installed beyond the one before (1 for a single change).
    pub epochs: u64,
    /// ACCEPTs deferred for a lease wait.
    pub deferred_accepts: u64,
    /// ms from the fault to convergence.
    pub duration_ms: u64,
}

impl ViewChangeCost {
    /// Messages sent other than heartbeats and acks: the view change's own traffic.
    pub fn protocol_messages(&self) -> u64 {
        self.messages.iter().filter(|(k, _)| !matches!(**k, "HEARTBEAT" | "ACK")).map(|(_, n)| n).sum()
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MemberSimReport {
    /// Processes started (bootstrap, restarts, joiners).
    pub processes: u64,
    /// Distinct views installed (epochs), the bootstrap view included.
    pub views: u64,
    /// The newest epoch.
    pub final_epoch: u64,
    /// Faults injected.
    pub faults: FaultCounts,
    /// Whether and when the cluster converged after the faults.
    pub liveness: Liveness,
    /// Membership messages sent, by type (dropped ones included).
    pub messages: BTreeMap<&'static str, u64>,
    /// Messages lost: to a dead process, or across a partition.
    pub dropped: u64,
    /// Events a core refused (a [`membership::MembershipError`]).
    pub refused: u64,
    /// Ballots started, all processes.
    pub ballots: u64,
    /// ACCEPTs deferred for a lease wait, all processes.
    pub deferred_accepts: u64,
    /// Times the view changed after the cluster had converged (a suspicion or a join request from before
    /// the network settled), so that settling started over.
    pub late_view_changes: u64,
    /// Heartbeat cost in the stable view at the end.
    pub stable: StableRates,
    /// The single view change's cost (single-fault scenarios only).
    pub change: Option<ViewChangeCost>,
    /// The slowest and fastest clock rate used, ppm.
    pub clock_rates: (u64, u64),
    /// Steps (events handled).
    pub steps: u64,
    /// Global time at the end.
    pub end_ms: u64,
    /// What the mutex engines did.
    pub mutex: MutexReport,
    /// The last steps, if [`MemberSimConfig::trace_lines`] asked for them.
    pub trace: Vec<String>,
}

/// What the mutex engines on top of the membership did in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MutexReport {
    /// Acquires issued to active members (probes included).
    pub issued: u64,
    /// Grants handed to clients, per algorithm.
    pub grants: BTreeMap<Algorithm, u64>,
    /// Probes issued after convergence (one per member and algorithm).
    pub probes: u64,
    /// Acquires refused: the process was not an active member.
    pub unavailable: u64,
    /// Grants an engine made while its process was not active: released at once, never handed out.
    pub inactive_grants: u64,
    /// Engine events refused (a [`crate::algo::CoreError`]), counted by the driver.
    pub refused: u64,
    /// Refusals the engines still alive at the end counted themselves (held-back messages included).
    pub refused_by_live_engines: u64,
    /// Lease expiries the engines still alive at the end counted.
    pub lease_expiries_live: u64,
    /// View bumps ([`membership::Event::Renew`]) the engines asked for.
    pub renewals: u64,
    /// Engine messages lost because their connection was torn down (a view excluded one end).
    pub lost_on_disconnect: u64,
    /// Engine messages and handshakes sent, by algorithm (`HELLO` for handshakes).
    pub messages: BTreeMap<&'static str, u64>,
    /// ms from the probes to every probe granted and every earlier request answered.
    pub settled_after_ms: Option<u64>,
}

/// An invariant a run broke. `Display` names the seed and the replay command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "membership simulation broke an invariant: {description}\n  seed {seed}, scenario {scenario}, mutant \
     {mutant}, step {step}, t={time_ms} ms\n  replay: {replay}\n{trace}"
)]
pub struct MemberViolation {
    /// The run's seed.
    pub seed: u64,
    /// Its scenario.
    pub scenario: Scenario,
    /// Its mutant.
    pub mutant: Mutant,
    /// The step at which the breach was seen.
    pub step: u64,
    /// Global time of that step.
    pub time_ms: u64,
    /// What went wrong.
    pub description: String,
    /// The command that replays the run.
    pub replay: String,
    /// The last steps before the breach, one per line.
    pub trace: String,
}

/// Runs one simulation. A failing run is replayed once more with a trace attached to the violation.
pub fn run_membership(cfg: &MemberSimConfig) -> Result<MemberSimReport, MemberViolation> {
    match driver::MemberSim::new(cfg.clone()).run() {
        Ok(report) => Ok(report),
        Err(v) if cfg.trace_lines == 0 => {
            let traced = MemberSimConfig { trace_lines: 150, ..cfg.clone() };
            match driver::MemberSim::new(traced).run() {
                Err(mut again) => {
                    again.replay = v.replay;
                    Err(again)
                }
                Ok(_) => Err(v),
            }
        }
        Err(v) => Err(v),
    }
}
