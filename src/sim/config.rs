//! What a run is (modes, loads, the preset a seed names, the replay command) and what it reports.

use super::SplitMix64;
use crate::algo::{Algorithm, Millis};
use std::collections::BTreeMap;
use std::fmt;

/// The fault mix of a preset run; also part of the replay command.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimMode {
    /// No cancels, no deadlines, no crashes: message counts must match the textbook exactly.
    FaultFree,
    /// Random cancels of waiting requests and deadlines that sometimes expire.
    Cancels,
    /// Crashes and restarts and connection cuts, plus some cancels and deadlines.
    Crashes,
    /// Try-locks among the acquires, with some cancels, deadlines and leases; no crashes. A try may be
    /// answered locked only while another request for its lock is live (or just ended).
    Tries,
    /// Try-locks among the acquires, with crashes, restarts and cuts: every try must still be answered.
    TryCrashes,
}

impl SimMode {
    /// Every mode, in a stable order.
    pub const ALL: [SimMode; 5] =
        [SimMode::FaultFree, SimMode::Cancels, SimMode::Crashes, SimMode::Tries, SimMode::TryCrashes];

    /// The name used in `DMUTEX_SIM_MODE`.
    pub fn as_str(self) -> &'static str {
        match self {
            SimMode::FaultFree => "fault-free",
            SimMode::Cancels => "cancels",
            SimMode::Crashes => "crashes",
            SimMode::Tries => "tries",
            SimMode::TryCrashes => "try-crashes",
        }
    }
}

impl fmt::Display for SimMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SimMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "fault-free" | "fault_free" | "faultfree" => Ok(SimMode::FaultFree),
            "cancels" | "cancel" => Ok(SimMode::Cancels),
            "crashes" | "crash" => Ok(SimMode::Crashes),
            "tries" | "try" => Ok(SimMode::Tries),
            "try-crashes" | "try_crashes" => Ok(SimMode::TryCrashes),
            other => Err(format!(
                "unknown simulation mode {other:?} (expected fault-free, cancels, crashes, tries or try-crashes)"
            )),
        }
    }
}

/// How the workload issues requests.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Load {
    /// `requests` acquires at uniformly random times from random nodes (contention varies with the seed).
    Random,
    /// One request at a time: the next acquire is issued once the previous one ended and the network is quiet.
    Serial,
    /// Every node always wants a lock: it issues its next acquire as soon as its previous request ends.
    Saturated,
}

/// One simulation run's parameters. [`SimConfig::preset`] derives everything but the mode from a seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Cluster size (≥ 1).
    pub nodes: usize,
    /// How many distinct locks the workload uses (`lock0`, `lock1`, …).
    pub locks: usize,
    /// How many acquires the workload issues in total.
    pub requests: usize,
    /// Probability that a request is cancelled a little later (if it still waits then).
    pub cancel_prob: f64,
    /// Probability that a request carries a deadline (which may expire while it waits).
    pub deadline_prob: f64,
    /// Probability that a request's holder never releases: its grant carries a lease, which expires.
    pub lease_prob: f64,
    /// Probability that a request is a try-lock ([`crate::algo::Event::TryAcquire`]; never a deadline).
    pub try_prob: f64,
    /// Whether nodes crash and restart, and connections are cut.
    pub crash: bool,
    /// Largest message delay in ms (each message takes `1..=max_delay`).
    pub max_delay: u64,
    /// Largest time a holder stays in the critical section, in ms.
    pub max_hold: u64,
    /// How requests are issued.
    pub load: Load,
    /// The seed of everything random.
    pub seed: u64,
    /// The mode label printed in the replay command.
    pub mode: SimMode,
    /// Give up (and report a livelock) after this many steps.
    pub max_steps: u64,
    /// Keep this many trace lines of the last steps (0: none; a failing run is replayed with a trace anyway).
    pub trace_lines: usize,
}

impl SimConfig {
    /// The run that `(mode, nodes, seed)` names: what the test suite runs and the replay command rebuilds.
    pub fn preset(mode: SimMode, nodes: usize, seed: u64) -> Self {
        // A separate stream for the shape so that the run's own stream starts at the seed itself.
        let mut rng = SplitMix64::new(seed ^ 0x5eed_5eed_5eed_5eed);
        let locks = 1 + rng.below(3) as usize;
        let requests = 3 + rng.below(8) as usize;
        let max_delay = 1 + rng.below(10);
        let max_hold = rng.below(2 * max_delay + 1);
        // Leases only with cancels: a lease draw in the other modes would change their pinned regression runs.
        // Tries likewise only in their own modes.
        let (cancel_prob, deadline_prob, lease_prob, crash, try_prob) = match mode {
            SimMode::FaultFree => (0.0, 0.0, 0.0, false, 0.0),
            SimMode::Cancels => (0.25, 0.25, 0.2, false, 0.0),
            SimMode::Crashes => (0.1, 0.1, 0.0, true, 0.0),
            SimMode::Tries => (0.1, 0.1, 0.1, false, 0.4),
            SimMode::TryCrashes => (0.1, 0.1, 0.0, true, 0.3),
        };
        SimConfig {
            nodes,
            locks,
            requests,
            cancel_prob,
            deadline_prob,
            lease_prob,
            try_prob,
            crash,
            max_delay,
            max_hold,
            load: Load::Random,
            seed,
            mode,
            max_steps: 200_000,
            trace_lines: 0,
        }
    }

    /// The shell command that replays this run, if it is a preset.
    pub fn replay_command(&self, algorithm: Algorithm) -> String {
        let mut preset = SimConfig::preset(self.mode, self.nodes, self.seed);
        preset.trace_lines = self.trace_lines;
        if *self == preset {
            format!(
                "DMUTEX_SIM_SEED={} DMUTEX_SIM_ALGO={} DMUTEX_SIM_NODES={} DMUTEX_SIM_MODE={} \
                 cargo test --test simulation replay -- --nocapture",
                self.seed, algorithm, self.nodes, self.mode
            )
        } else {
            format!("dmutex::sim::run::<{algorithm}>(&{self:?})")
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// Acquires issued to live nodes.
    pub issued: u64,
    /// Grants (critical-section entries).
    pub grants: u64,
    /// Requests cancelled, timed out or (tries) answered locked.
    pub rejected: u64,
    /// Try requests issued.
    pub tries: u64,
    /// Try requests answered locked.
    pub locked: u64,
    /// Protocol messages sent (lost ones included).
    pub messages: u64,
    /// Messages by [`crate::algo::ProtocolMessage::kind`].
    pub messages_by_kind: BTreeMap<&'static str, u64>,
    /// Messages sent between consecutive grants, one figure per grant; the messages sent after the last grant
    /// are added to the first figure. Under [`Load::Serial`] each figure is one entry's cost (its request
    /// traffic plus the previous entry's release messages).
    pub entry_messages: Vec<u64>,
    /// Messages the engines refused ([`crate::algo::CoreError`]), e.g. from a stale incarnation.
    pub refused: u64,
    /// Crashes that happened.
    pub crashes: u64,
    /// Grants that ended by lease expiry (holders that never released).
    pub lease_expiries: u64,
    /// Grants whose token was not above an earlier one after *every* node that was up at the earlier grant
    /// had crashed since: nothing that knew the earlier token survived (no stable storage), the documented
    /// limitation. Counted, not a violation.
    pub fencing_forgotten: u64,
    /// Steps (events delivered).
    pub steps: u64,
    /// Virtual time when the run went quiet.
    pub end_time: Millis,
    /// Fresh requests issued after the run went quiet, one per lock used (all must be granted; none after a
    /// fault-free run).
    pub probes: u64,
}

impl SimReport {
    /// Mean messages per critical-section entry (0 without grants).
    pub fn per_entry(&self) -> f64 {
        if self.grants == 0 { 0.0 } else { self.messages as f64 / self.grants as f64 }
    }

    /// The largest entry of [`SimReport::entry_messages`].
    pub fn max_per_entry(&self) -> u64 {
        self.entry_messages.iter().copied().max().unwrap_or(0)
    }
}

/// An invariant the run broke. Its `Display` names the seed, the algorithm and the replay command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{algorithm} simulation broke an invariant: {description}\n  seed {seed}, {nodes} nodes, mode {mode}, \
     step {step}, t={time_ms} ms\n  replay: {replay}\n{trace}"
)]
pub struct Violation {
    /// The algorithm under test.
    pub algorithm: Algorithm,
    /// The run's seed.
    pub seed: u64,
    /// Cluster size.
    pub nodes: usize,
    /// The run's mode.
    pub mode: SimMode,
    /// The step at which the breach was seen.
    pub step: u64,
    /// Virtual time of that step.
    pub time_ms: u64,
    /// What went wrong.
    pub description: String,
    /// The command that replays the run.
    pub replay: String,
    /// The last steps before the breach, one per line.
    pub trace: String,
}
