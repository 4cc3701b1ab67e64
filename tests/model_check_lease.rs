//! Exhaustive check of the member-lease arithmetic of `src/algo/membership/lease.rs`: a member's lease, as
//! [`lease_end`] computes it, always ends in real time no later than the moment an acceptor that acked it
//! may agree to exclude it, as [`exclusion_allowed_at`] computes it, whatever the clock rates within `1 ± ρ`.
//!
//! One case is a heartbeat and its ack, in real time (milliseconds, exact rationals; the send is real time 0):
//! - member X sends a heartbeat when its clock reads `t` (a whole millisecond, what the core is given as
//!   `now`; events happen exactly on whole local milliseconds, as on the simulator's virtual clocks); its
//!   clock runs at rate `r_X`, so X stays active until its clock reads `lease_end(t, L, ρ)`, real time
//!   `(lease_end − t) / r_X`;
//! - acceptor A acks it `delay` later in real time (any delay ≥ 0, in quarter milliseconds), when its clock
//!   reads `a`; A's clock runs at rate `r_A`, and A installed its view at local time `installed_at` (before
//!   or after the ack); A may accept a view excluding X once its clock reads
//!   `exclusion_allowed_at(Some(a), installed_at, L)`, real time `delay + (allowed − a) / r_A`;
//! - X's and A's readings `t` and `a` range independently, so every offset between the two clocks is
//!   covered; rates are integers in parts per million.
//!
//! Property: X's active period ends at or before A's exclusion moment, in every case. This is checked by
//! a plain exhaustive loop rather than stateright: a case has no interleaving and no state that evolves, only
//! a few integers, so a model checker would enumerate the same product of small domains with more machinery
//! and less clarity. The real functions from the core are called; only the comparison is done here, in
//! exact integer arithmetic (no floating point).
//!
//! The domain: `L` in 1..=24 and 100, 999, 1000, 1500; ρ in {0, 1 ppm, 0.01 %, 1 %, 5 %, 10 %, 20 %,
//! ⅓, 50 %}; each rate at `1 − ρ`, `1 − ρ/2`, `1`, `1 + ρ/2` and `1 + ρ`; `t` in {0, 1, 7, 1000};
//! `a` in {0, 3, 1000}; `installed_at` in {0, a, a + 1, a + L}; `delay` in {0, ¼, ½, 1, 2, 5} ms.
//!
//! Negative controls, run over the same domain and asserted to be found:
//! - clock rates up to `1 ± 2ρ` while the lease is computed for ρ;
//! - a member that ignores the shortened lease and stays active until `t + L`;
//! - a lease rounded up instead of down (`⌈L·(1−ρ)/(1+ρ)⌉`), which the module doc forbids (with truncated
//!   readings, below).
//!
//! Truncated readings: the core is given whole-millisecond times, and a driver that reads its clock by
//! truncation (`elapsed().as_millis()`, as `node/driver.rs` does) records an ack up to one tick before it
//! really happened. With sub-millisecond phases between the reading and the true local time, X's lease could
//! end after A's exclusion moment, by less than one millisecond of A's clock — a gap this check found, closed
//! by one extra tick in the acceptor's wait; see
//! [`truncated_readings_are_absorbed_by_the_extra_tick`].
//!
//! Run: `cargo test --test model_check_lease -- --nocapture`.

use dmutex::algo::Millis;
use dmutex::algo::membership::{PPM, exclusion_allowed_at, lease_end};
use std::collections::BTreeMap;
use std::time::Instant;

/// Sub-millisecond steps per millisecond, for delays and (in the truncation check) clock phases.
const TICKS: i128 = 4;

/// Lease lengths, in ms.
fn leases() -> impl Iterator<Item = u64> {
    (1..=24).chain([100, 999, 1000, 1500])
}

/// Drift bounds ρ, in ppm.
const RHOS: [u64; 9] = [0, 1, 100, 10_000, 50_000, 100_000, 200_000, 333_333, 500_000];

/// Real-time delays between the heartbeat's send and its ack, in ticks.
const DELAYS: [i128; 6] = [0, 1, 2, 4, 8, 20];

/// How the member computes the end of its lease.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Holder {
    /// The core's rule: [`lease_end`].
    Core,
    /// Negative control: active until `t + L`, ignoring ρ.
    IgnoresShortening,
    /// Negative control: `⌈L·(1−ρ)/(1+ρ)⌉`, rounded up.
    RoundsUp,
}

impl Holder {
    /// The local time at which the lease of a heartbeat sent at `t` ends.
    fn lease_end(self, t: u64, lease: u64, rho: u64) -> u64 {
        match self {
            Holder::Core => {
                lease_end(Millis::new(t), Millis::new(lease), u32::try_from(rho).expect("ρ fits in u32"))
                    .get()
            }
            Holder::IgnoresShortening => t + lease,
            Holder::RoundsUp => t + (lease * (PPM - rho)).div_ceil(PPM + rho),
        }
    }
}

/// The model's knobs: the member's rule, how far clock rates may really drift, and whether clock readings
/// are truncated from a finer true local time.
#[derive(Copy, Clone, Debug)]
struct Model {
    holder: Holder,
    /// Real rates lie within `1 ± drift_factor·ρ` (1: the timing assumption holds; 2: it does not).
    drift_factor: u64,
    /// Whether the true local time at the send and at the ack may be up to one tick (less one phase
    /// step) past the whole-millisecond reading the core is given.
    truncated_readings: bool,
}

/// One heartbeat-and-ack scenario (times in ms, rates in ppm, delay and phases in ticks).
#[derive(Copy, Clone, Debug)]
struct Case {
    lease: u64,
    rho: u64,
    rate_x: u64,
    rate_a: u64,
    t: u64,
    a: u64,
    installed_at: u64,
    delay: i128,
    /// How far X's true local time is past the reading `t` at the send, in ticks.
    phase_x: i128,
    /// How far A's true local time is past the reading `a` at the ack, in ticks.
    phase_a: i128,
}

/// A case's outcome as exact rationals over the common denominator `TICKS · r_X · r_A` (real ms).
struct Outcome {
    lease_ends: i128,
    exclusion_allowed: i128,
    denominator: i128,
}

impl Outcome {
    /// By how much X's lease outlives A's wait, in real ms (positive: a violation). For printing only.
    fn overlap_ms(&self) -> f64 {
        (self.lease_ends - self.exclusion_allowed) as f64 / self.denominator as f64
    }
}

fn evaluate(model: Model, c: &Case) -> Outcome {
    let ppm = i128::from(PPM);
    let (rx, ra) = (i128::from(c.rate_x), i128::from(c.rate_a));
    let span = i128::from(model.holder.lease_end(c.t, c.lease, c.rho) - c.t);
    let allowed =
        exclusion_allowed_at(Some(Millis::new(c.a)), Millis::new(c.installed_at), Millis::new(c.lease));
    let wait = i128::from(allowed.get() - c.a);
    // X: its clock reads t + phase_x/TICKS at real 0 and t + span at real (span·TICKS − phase_x)/(TICKS·r_X).
    let lease_ends = (span * TICKS - c.phase_x) * ppm * ra;
    // A: acks at real delay/TICKS, when its clock reads a + phase_a/TICKS; it reaches `allowed` a further
    // (wait·TICKS − phase_a)/(TICKS·r_A) later.
    let exclusion_allowed = c.delay * rx * ra + (wait * TICKS - c.phase_a) * ppm * rx;
    Outcome { lease_ends, exclusion_allowed, denominator: TICKS * rx * ra }
}

/// Rates at the edges, the middle and half-way between: `1 − b`, `1 − b/2`, `1`, `1 + b/2`, `1 + b` (ppm).
fn rates(bound: u64) -> Vec<u64> {
    let mut r = vec![PPM - bound, PPM - bound / 2, PPM, PPM + bound / 2, PPM + bound];
    r.dedup();
    r
}

/// The standard ρ (`Config::standard`: 1 %), at which every negative control must find a violation.
const STANDARD_RHO: u64 = 10_000;

/// The violations found at one ρ.
#[derive(Default)]
struct PerRho {
    violations: u64,
    /// The case with the largest overlap, and the overlap in real ms.
    worst: Option<(Case, f64)>,
    /// The largest overlap in ms of A's clock (`overlap · r_A`).
    worst_in_a_ms: f64,
}

/// What one exhaustive run found.
struct Report {
    cases: u64,
    violations: u64,
    per_rho: BTreeMap<u64, PerRho>,
    /// Whether some overlap reached one full millisecond of A's clock (compared exactly).
    reached_an_a_tick: bool,
}

impl Report {
    fn violations_at(&self, rho: u64) -> u64 {
        self.per_rho.get(&rho).map_or(0, |r| r.violations)
    }
}

/// Calls `check` on every case of the domain under `model`.
fn for_each_case(model: Model, mut check: impl FnMut(Case)) {
    let phases: Vec<i128> = if model.truncated_readings { (0..TICKS).collect() } else { vec![0] };
    for lease in leases() {
        for rho in RHOS {
            let bound = (rho * model.drift_factor).min(PPM - 1);
            for rate_x in rates(bound) {
                for rate_a in rates(bound) {
                    for t in [0, 1, 7, 1000] {
                        for a in [0, 3, 1000] {
                            for installed_at in [0, a, a + 1, a + lease] {
                                for delay in DELAYS {
                                    for &phase_x in &phases {
                                        for &phase_a in &phases {
                                            check(Case {
                                                lease,
                                                rho,
                                                rate_x,
                                                rate_a,
                                                t,
                                                a,
                                                installed_at,
                                                delay,
                                                phase_x,
                                                phase_a,
                                            });
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn run(model: Model) -> Report {
    let mut report = Report { cases: 0, violations: 0, per_rho: BTreeMap::new(), reached_an_a_tick: false };
    for_each_case(model, |c| {
        report.cases += 1;
        let o = evaluate(model, &c);
        if o.lease_ends <= o.exclusion_allowed {
            return;
        }
        report.violations += 1;
        // One millisecond of A's clock lasts 1/r_A real ms: TICKS·r_X·PPM over the common denominator.
        report.reached_an_a_tick |=
            o.lease_ends - o.exclusion_allowed >= TICKS * i128::from(c.rate_x) * i128::from(PPM);
        let overlap = o.overlap_ms();
        let at = report.per_rho.entry(c.rho).or_default();
        at.violations += 1;
        if at.worst.is_none_or(|(_, w)| overlap > w) {
            at.worst = Some((c, overlap));
        }
        at.worst_in_a_ms = at.worst_in_a_ms.max(overlap * c.rate_a as f64 / PPM as f64);
    });
    report
}

fn run_and_print(name: &str, model: Model) -> Report {
    let started = Instant::now();
    let report = run(model);
    eprintln!(
        "{name} {model:?}: {} cases, {} violations, {:.1?}",
        report.cases,
        report.violations,
        started.elapsed()
    );
    for (rho, at) in &report.per_rho {
        if let Some((case, overlap)) = &at.worst {
            eprintln!(
                "  ρ = {rho} ppm: {} violations; worst {case:?}: the lease outlives the wait by {overlap:.3} ms \
                 ({:.3} ms of A's clock)",
                at.violations, at.worst_in_a_ms
            );
        }
    }
    report
}

/// The rule holds: with clocks within `1 ± ρ` and the core's [`lease_end`], no case lets X's lease end
/// after A may exclude it.
#[test]
fn lease_ends_before_the_acceptor_may_exclude() {
    let model = Model { holder: Holder::Core, drift_factor: 1, truncated_readings: false };
    let report = run_and_print("core rule", model);
    assert!(report.cases > 0);
    assert_eq!(report.violations, 0, "the rule is broken");
}

/// Negative control: clocks drifting up to `2ρ` break the rule. Caught at ρ = 1 % (and every larger ρ);
/// at ρ ≤ 100 ppm the domain's leases are too short for the extra drift to beat the rounding down.
#[test]
fn drift_beyond_rho_is_caught() {
    let model = Model { holder: Holder::Core, drift_factor: 2, truncated_readings: false };
    let report = run_and_print("drift 2ρ", model);
    assert!(report.violations_at(STANDARD_RHO) > 0, "no violation at ρ = 1 % with clocks drifting 2ρ");
}

/// Negative control: a member that stays active until `t + L` outlives the acceptor's wait.
#[test]
fn member_ignoring_the_shortened_lease_is_caught() {
    let model = Model { holder: Holder::IgnoresShortening, drift_factor: 1, truncated_readings: false };
    let report = run_and_print("lease t + L", model);
    assert!(
        report.violations_at(STANDARD_RHO) > 0,
        "no violation at ρ = 1 % for a member active until t + L"
    );
}

/// Negative control: rounding the lease up (what `lease.rs` must never do) is caught too, with the truncated
/// readings a real driver has: rounding up spends the tick the exclusion wait keeps for them.
#[test]
fn lease_rounded_up_is_caught() {
    let model = Model { holder: Holder::RoundsUp, drift_factor: 1, truncated_readings: true };
    let report = run_and_print("lease rounded up", model);
    assert!(report.violations_at(STANDARD_RHO) > 0, "no violation at ρ = 1 % for a lease rounded up");
}

/// Truncated clock readings (see the module doc): with the true local times at the send and at the ack up to
/// one tick past the readings the core is given, the acceptor loses up to one tick of its wait (its ack is
/// recorded as up to 1 ms earlier than it happened). Before the core's exclusion wait had its extra tick, this
/// model found X's lease ending after A may exclude it, by under one millisecond of A's clock; the tick
/// absorbs it, and this check asserts there is no overlap left.
#[test]
fn truncated_readings_are_absorbed_by_the_extra_tick() {
    let model = Model { holder: Holder::Core, drift_factor: 1, truncated_readings: true };
    let report = run_and_print("core rule, truncated readings", model);
    assert_eq!(report.violations_at(STANDARD_RHO), 0, "an overlap at ρ = 1 % with truncated readings");
    assert!(!report.reached_an_a_tick, "an overlap of a full millisecond of A's clock or more");
}
