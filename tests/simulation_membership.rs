//! Seeded simulation of whole nodes driven by the real membership core (`src/sim/membership/`): drifting
//! clocks, partitions (split, one-way, bridge), pauses, amnesia crashes (also twice in a row), joins, leaves,
//! scaling 3 → 5 → 3 and rolling restarts, with Lamport, Ricart–Agrawala and probable owner running on every
//! node over the views and gated by the member lease. Checked after every step: one view per epoch, every
//! view accepted by a majority of its predecessor, lease safety (no process acts while a view excluding it is
//! installed), at most one holder per algorithm and lock whose grant is valid on its own clock, fencing
//! tokens rising per lock; at the end, liveness (every live process an active member of one view within the
//! bound, and a probe per member and algorithm granted).
//!
//! Runs: `DMUTEX_MEMSIM_RUNS` seeds (default [`RUNS`]) split over [`SHARDS`] tests, so that they use every
//! core; `DMUTEX_MEMSIM_ENGINES=0` runs the membership alone. Soak:
//! `DMUTEX_MEMSIM_RUNS=100000 cargo test --release --test simulation_membership sweep -- --nocapture`.
//! Replay a failure:
//! `DMUTEX_MEMSIM_SEED=<seed> cargo test --test simulation_membership replay -- --nocapture` (plus
//! `DMUTEX_MEMSIM_SCENARIO` / `DMUTEX_MEMSIM_MUTANT` / `DMUTEX_MEMSIM_ENGINES` when the failure's command
//! names them; `DMUTEX_MEMSIM_TRACE=<lines>` keeps more of the trace than the last 400 steps).

use dmutex::algo::Algorithm;
use dmutex::algo::membership::Config;
use dmutex::sim::{self, Liveness, MemberSimConfig, MemberSimReport, Mutant, Scenario};
use std::collections::BTreeMap;
use std::time::Instant;

/// Seeds of the regular suite (each run covers one scenario drawn from its seed).
const RUNS: u64 = 10_000;

fn runs() -> u64 {
    std::env::var("DMUTEX_MEMSIM_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(RUNS)
}

/// What a sweep saw, summed over its runs.
#[derive(Debug, Default)]
struct Totals {
    runs: u64,
    scenarios: BTreeMap<Scenario, u64>,
    crashes: u64,
    double_crashes: u64,
    restarts: u64,
    pauses: u64,
    long_pauses: u64,
    partitions: BTreeMap<&'static str, u64>,
    joins: u64,
    leaves: u64,
    exits: u64,
    skipped: u64,
    majority_lost: u64,
    /// The first few seeds whose newest view lost its majority for good (liveness unchecked).
    majority_lost_seeds: Vec<u64>,
    grants: BTreeMap<Algorithm, u64>,
    probes: u64,
    unavailable: u64,
    inactive_grants: u64,
    renewals: u64,
    lost_on_disconnect: u64,
    max_settle_ms: u64,
    max_converge_ms: u64,
    views: u64,
    deferred_accepts: u64,
    steps: u64,
}

impl Totals {
    fn add(&mut self, seed: u64, scenario: Scenario, r: &MemberSimReport) {
        self.runs += 1;
        *self.scenarios.entry(scenario).or_default() += 1;
        let f = &r.faults;
        self.crashes += f.crashes;
        self.double_crashes += f.double_crashes;
        self.restarts += f.restarts;
        self.pauses += f.pauses;
        self.long_pauses += f.long_pauses;
        for (k, n) in &f.partitions {
            *self.partitions.entry(k).or_default() += n;
        }
        self.joins += f.joins;
        self.leaves += f.leaves;
        self.exits += f.exits;
        self.skipped += f.skipped;
        match r.liveness {
            Liveness::Converged { after_ms } => self.max_converge_ms = self.max_converge_ms.max(after_ms),
            Liveness::MajorityLost => {
                self.majority_lost += 1;
                if self.majority_lost_seeds.len() < 10 {
                    self.majority_lost_seeds.push(seed);
                }
            }
            Liveness::NotReached => {}
        }
        for (algo, n) in &r.mutex.grants {
            *self.grants.entry(*algo).or_default() += n;
        }
        self.probes += r.mutex.probes;
        self.unavailable += r.mutex.unavailable;
        self.inactive_grants += r.mutex.inactive_grants;
        self.renewals += r.mutex.renewals;
        self.lost_on_disconnect += r.mutex.lost_on_disconnect;
        self.max_settle_ms = self.max_settle_ms.max(r.mutex.settled_after_ms.unwrap_or(0));
        self.views += r.views;
        self.deferred_accepts += r.deferred_accepts;
        self.steps += r.steps;
    }
}

/// Runs `seeds` preset runs from `first`; returns the totals and the failures' messages.
fn sweep(first: u64, seeds: u64, mutant: Mutant) -> (Totals, Vec<String>) {
    let mut totals = Totals::default();
    let mut failures = Vec::new();
    let engines = std::env::var("DMUTEX_MEMSIM_ENGINES").map_or(true, |v| v != "0");
    for seed in first..first + seeds {
        let cfg = MemberSimConfig { engines, ..MemberSimConfig::preset_with(seed, None, mutant) };
        match sim::run_membership(&cfg) {
            Ok(report) => totals.add(seed, cfg.scenario, &report),
            Err(v) => failures.push(v.to_string()),
        }
    }
    (totals, failures)
}

/// The regular sweep runs in this many tests (shards of consecutive seeds), so that they use every core.
const SHARDS: u64 = 4;

/// Shard `shard` of the regular sweep: every invariant holds in every run, every kind of fault happened,
/// liveness was checked in (nearly) every run, and every algorithm granted.
fn sweep_shard(shard: u64) {
    let per = runs().div_ceil(SHARDS);
    let started = Instant::now();
    let (t, failures) = sweep(shard * per, per, Mutant::None);
    eprintln!("shard {shard}: {per} runs in {:.1} s: {t:?}", started.elapsed().as_secs_f64());
    for f in &failures {
        eprintln!("FAILED {}", f.lines().take(2).collect::<Vec<_>>().join(" | "));
    }
    assert!(failures.is_empty(), "{} of {per} runs failed; first:\n{}", failures.len(), failures[0]);
    if per >= 1000 {
        for scenario in [Scenario::Chaos, Scenario::Scale, Scenario::Rolling] {
            assert!(t.scenarios.get(&scenario).is_some_and(|&n| n > 0), "no {scenario} run");
        }
        assert!(t.double_crashes > 0 && t.long_pauses > 0 && t.exits > 0 && t.joins > 0, "{t:?}");
        for kind in ["split", "one-way-out", "one-way-in", "bridge"] {
            assert!(t.partitions.contains_key(kind), "no {kind} partition: {t:?}");
        }
        assert!(t.deferred_accepts > 0, "no ACCEPT ever waited for a lease: the lease rule went unexercised");
        assert!(
            t.majority_lost * 100 <= t.runs,
            "liveness unchecked in {} of {} runs",
            t.majority_lost,
            t.runs
        );
        if std::env::var("DMUTEX_MEMSIM_ENGINES").map_or(true, |v| v != "0") {
            for algo in Algorithm::ALL {
                assert!(t.grants.get(&algo).is_some_and(|&n| n > 0), "{algo} never granted: {t:?}");
            }
            assert!(t.inactive_grants > 0, "no grant ever came while its node was not active: {t:?}");
        }
    }
}

#[test]
fn sweep_shard_0() {
    sweep_shard(0);
}

#[test]
fn sweep_shard_1() {
    sweep_shard(1);
}

#[test]
fn sweep_shard_2() {
    sweep_shard(2);
}

#[test]
fn sweep_shard_3() {
    sweep_shard(3);
}

/// Searches seeds `0..limit` with `mutant` for a lease-safety violation; returns it with its seed.
fn first_lease_violation(mutant: Mutant, limit: u64) -> Option<(u64, String)> {
    (0..limit).find_map(|seed| {
        let cfg = MemberSimConfig::preset_with(seed, Some(Scenario::Chaos), mutant);
        match sim::run_membership(&cfg) {
            Err(v) if v.description.starts_with("lease safety") => Some((seed, v.to_string())),
            _ => None,
        }
    })
}

/// Negative control (a): one node's clock runs at `1 − 3ρ`, outside the bound the lease rule assumes; its
/// member lease then outlasts the acceptors' wait and the checker must see it act while excluded.
#[test]
fn a_clock_drifting_beyond_rho_breaks_lease_safety_and_is_caught() {
    let found = first_lease_violation(Mutant::SlowClock, 3000);
    let (seed, message) = found.expect("no lease-safety violation in 3000 seeds with a clock at 1 − 3ρ");
    eprintln!("slow clock caught at seed {seed}:\n{message}");
    assert!(message.contains("DMUTEX_MEMSIM_MUTANT=slow-clock"), "{message}");
}

/// Negative control (b): a driver that keeps acting for `L` after its member lease ended (after
/// `Active(false)` too) is caught acting while excluded.
#[test]
fn a_driver_ignoring_its_member_lease_is_caught() {
    let found = first_lease_violation(Mutant::IgnoreLease, 500);
    let (seed, message) = found.expect("no lease-safety violation in 500 seeds with a lease-ignoring driver");
    eprintln!("lease-ignoring driver caught at seed {seed}:\n{message}");
    assert!(message.contains("DMUTEX_MEMSIM_MUTANT=ignore-lease"), "{message}");
}

/// Negative control (c), for the engines: drivers that let clients keep their grants past the member lease
/// (no release on `Active(false)`, validity by TTL alone). The membership core is unchanged, so views and
/// leases stay safe; the mutual-exclusion check over valid grants must catch a second holder.
#[test]
fn grants_kept_past_the_member_lease_break_mutual_exclusion_and_are_caught() {
    let found = (0..2000).find_map(|seed| {
        let cfg = MemberSimConfig::preset_with(seed, Some(Scenario::Chaos), Mutant::KeepGrants);
        match sim::run_membership(&cfg) {
            Err(v) if v.description.starts_with("mutual exclusion") => Some((seed, v.to_string())),
            Err(v) => panic!("seed {seed}: another violation than mutual exclusion:\n{v}"),
            Ok(_) => None,
        }
    });
    let (seed, message) =
        found.expect("no mutual-exclusion violation in 2000 seeds with grants kept past the lease");
    eprintln!("kept grants caught at seed {seed}:\n{message}");
    assert!(message.contains("DMUTEX_MEMSIM_MUTANT=keep-grants"), "{message}");
}

/// Replays one run from the environment (what a failure's message says to run), with a trace.
#[test]
fn replay() {
    let Ok(seed) = std::env::var("DMUTEX_MEMSIM_SEED") else {
        eprintln!(
            "replay: set DMUTEX_MEMSIM_SEED (and DMUTEX_MEMSIM_SCENARIO, DMUTEX_MEMSIM_MUTANT, \
             DMUTEX_MEMSIM_ENGINES) to replay a run"
        );
        return;
    };
    let seed: u64 = seed.parse().expect("DMUTEX_MEMSIM_SEED must be a number");
    let scenario: Option<Scenario> =
        std::env::var("DMUTEX_MEMSIM_SCENARIO").ok().map(|s| s.parse().expect("DMUTEX_MEMSIM_SCENARIO"));
    let mutant: Mutant = std::env::var("DMUTEX_MEMSIM_MUTANT")
        .unwrap_or_else(|_| "none".into())
        .parse()
        .expect("DMUTEX_MEMSIM_MUTANT");
    let lines: usize = std::env::var("DMUTEX_MEMSIM_TRACE").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    let engines = std::env::var("DMUTEX_MEMSIM_ENGINES").map_or(true, |v| v != "0");
    let cfg = MemberSimConfig {
        trace_lines: lines,
        engines,
        ..MemberSimConfig::preset_with(seed, scenario, mutant)
    };
    eprintln!("replaying {cfg:?}");
    match sim::run_membership(&cfg) {
        Ok(report) => {
            eprintln!("last steps:\n  {}", report.trace.join("\n  "));
            eprintln!("passed: {:#?}", MemberSimReport { trace: Vec::new(), ..report });
        }
        Err(v) => panic!("{v}"),
    }
}

/// The single-fault scenarios at `timing`, `nodes` nodes, 1–2 ms delays: their view-change costs.
fn cost(scenario: Scenario, nodes: usize, timing: Config, seed: u64) -> MemberSimReport {
    let cfg = MemberSimConfig {
        scenario,
        nodes,
        membership: timing,
        max_delay: 2,
        slow_per_mille: 0,
        ..MemberSimConfig::preset_with(seed, Some(scenario), Mutant::None)
    };
    sim::run_membership(&cfg).unwrap_or_else(|v| panic!("{v}"))
}

/// Message counts of a stable view and of one crash, one join and one leave, at the standard timing
/// (heartbeat 200 ms, S = 1.5 s, L = 1 s); printed with `--nocapture` for BENCHMARKS.md.
#[test]
fn view_change_costs_at_the_standard_timing() {
    let timing = Config::standard();
    for nodes in [3, 5] {
        let quiet = cost(Scenario::Quiet, nodes, timing, 1);
        let s = &quiet.stable;
        eprintln!(
            "N={nodes} stable view: {:.1} heartbeats and {:.1} acks per second per node ({} other messages)",
            s.heartbeats_per_node_per_s(),
            s.acks_per_node_per_s(),
            s.other
        );
        // Every member heartbeats every other member every 200 ms, and each heartbeat is acked.
        let expected = (nodes - 1) as f64 * 1000.0 / timing.heartbeat.get() as f64;
        assert!((s.heartbeats_per_node_per_s() - expected).abs() <= 0.1 * expected, "{s:?}");
        assert!((s.acks_per_node_per_s() - expected).abs() <= 0.1 * expected, "{s:?}");
        assert_eq!(s.other, 0, "a stable view sends only heartbeats and acks");
        for scenario in [Scenario::OneCrash, Scenario::OneJoin, Scenario::OneLeave] {
            let report = cost(scenario, nodes, timing, 1);
            let c = report.change.expect("a single-fault run measures its view change");
            eprintln!(
                "N={nodes} {scenario}: {} -> {} members, {} ms, {} ballot(s), {} epoch(s), \
                 {} deferred accept(s), {} protocol messages {:?}",
                c.nodes_before,
                c.nodes_after,
                c.duration_ms,
                c.ballots,
                c.epochs,
                c.deferred_accepts,
                c.protocol_messages(),
                c.messages
            );
            assert_eq!(c.epochs, 1, "{scenario}: one view change");
            assert!(c.ballots >= 1 && c.messages.contains_key("ACCEPTED"), "{scenario}: {c:?}");
        }
    }
}
