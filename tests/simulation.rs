//! Seeded deterministic simulation of every algorithm (see `src/sim/mod.rs` for the model and the invariants:
//! the cores run over the transport's own link state machine, with cuts, crashes and restarts in the crash
//! mode, and every run with faults ends with a fresh request per lock that must be granted).
//!
//! Lamport and Ricart–Agrawala run 18,000 seeds each: N = 2..=7 × {fault-free, cancels + deadlines,
//! crashes + restarts, try-locks, try-locks + crashes}, 600 seeds per cell. Probable owner runs 16,200 seeds
//! without crashes (900 per cell, try-locks included) plus 7,200 with crashes and restarts (with and without
//! try-locks; one seed of its documented fencing limitation is pinned apart). Seeds that once broke an invariant are kept as `regression_*` tests. Fault-free runs
//! must also cost exactly the textbook messages per entry: Lamport 3(N−1), Ricart–Agrawala 2(N−1).
//!
//! A failure prints the seed and the command that replays it, e.g.
//! `DMUTEX_SIM_SEED=42 DMUTEX_SIM_ALGO=lamport DMUTEX_SIM_NODES=3 DMUTEX_SIM_MODE=crashes \
//!  cargo test --test simulation replay -- --nocapture`.
//!
//! View changes (`src/sim/views.rs`): 5,000 seeds per algorithm of "a holder crashes, a lease oracle
//! excludes it once its leases ran out, node 9 joins", plus a negative control (an oracle that excludes the
//! holder early must be caught in every run). Replay: `DMUTEX_VIEW_SEED=42 DMUTEX_SIM_ALGO=lamport \
//! DMUTEX_VIEW_ORACLE=after-leases cargo test --test simulation view_replay -- --nocapture`.
//!
//! Soak (a million seeds per algorithm, or `DMUTEX_SIM_RUNS`):
//! `cargo test --release --test simulation -- --ignored soak`.

use dmutex::algo::lamport::Lamport;
use dmutex::algo::probable_owner::ProbableOwner;
use dmutex::algo::ricart_agrawala::RicartAgrawala;
use dmutex::algo::{Algorithm, Protocol};
use dmutex::sim::{self, SimConfig, SimMode, SimReport, Violation};

/// Seeds per (N, mode) cell in the regular suite.
const SEEDS_PER_CELL: u64 = 600;

/// The message cost a fault-free run must show exactly, if the algorithm has a fixed one.
fn exact_messages_per_entry(algorithm: Algorithm, nodes: usize) -> Option<u64> {
    let others = nodes as u64 - 1;
    match algorithm {
        Algorithm::Lamport => Some(3 * others),
        Algorithm::RicartAgrawala => Some(2 * others),
        Algorithm::ProbableOwner => None,
    }
}

/// Runs one preset and applies the per-mode checks on top of the simulator's invariants.
fn run_one<P: Protocol>(mode: SimMode, nodes: usize, seed: u64) -> Result<SimReport, String> {
    let cfg = SimConfig::preset(mode, nodes, seed);
    let report = sim::run::<P>(&cfg).map_err(|v: Violation| v.to_string())?;
    if mode == SimMode::FaultFree {
        let replay = cfg.replay_command(P::ALGORITHM);
        if report.grants != report.issued {
            return Err(format!(
                "fault-free run granted {} of {} requests\n  replay: {replay}",
                report.grants, report.issued
            ));
        }
        if report.refused != 0 {
            return Err(format!(
                "fault-free run had {} refused messages\n  replay: {replay}",
                report.refused
            ));
        }
        if let Some(per_entry) = exact_messages_per_entry(P::ALGORITHM, nodes)
            && report.messages != per_entry * report.grants
        {
            return Err(format!(
                "fault-free run sent {} messages for {} entries ({:?}), expected exactly {per_entry} per entry\n  \
                 replay: {replay}",
                report.messages, report.grants, report.messages_by_kind
            ));
        }
    }
    Ok(report)
}

/// Runs that hit probable owner's documented fencing limitation (every node that *knew* an epoch crashed, one
/// after the other, while a node that was up at the grant but never learnt the epoch survived, so the
/// simulator's witness rule does not count it as forgotten). Skipped by the sweeps, pinned by
/// `po_two_crashes_forget_an_epoch_only_two_nodes_knew_seed_336`.
const KNOWN_PO_FENCING_LIMITATION: &[(SimMode, usize, u64)] = &[(SimMode::TryCrashes, 3, 336)];

/// Runs `seeds_per_cell` seeds for every N in 2..=7 and every mode in `modes`, from `first_seed` on; fails
/// listing every broken seed.
fn sweep<P: Protocol>(first_seed: u64, seeds_per_cell: u64, modes: &[SimMode]) {
    let (runs, failures) = sweep_failures::<P>(first_seed, seeds_per_cell, modes);
    if let Some(first) = failures.first() {
        panic!("{} of {runs} {} runs failed; the first:\n{first}", failures.len(), P::ALGORITHM);
    }
}

/// The runs and the failures (with their replay commands) of a sweep.
fn sweep_failures<P: Protocol>(
    first_seed: u64,
    seeds_per_cell: u64,
    modes: &[SimMode],
) -> (u64, Vec<String>) {
    let mut failures = Vec::new();
    let mut runs = 0u64;
    for &mode in modes {
        // Totals per mode, printed so that a sweep that stops exercising something shows it.
        let (mut grants, mut rejected, mut crashes, mut refused, mut messages, mut forgotten) =
            (0, 0, 0, 0, 0, 0);
        let (mut tries, mut locked) = (0, 0);
        for nodes in 2..=7 {
            for i in 0..seeds_per_cell {
                let seed = first_seed + i;
                if P::ALGORITHM == Algorithm::ProbableOwner
                    && KNOWN_PO_FENCING_LIMITATION.contains(&(mode, nodes, seed))
                {
                    continue;
                }
                runs += 1;
                match run_one::<P>(mode, nodes, seed) {
                    Ok(r) => {
                        grants += r.grants;
                        rejected += r.rejected;
                        crashes += r.crashes;
                        refused += r.refused;
                        messages += r.messages;
                        forgotten += r.fencing_forgotten;
                        tries += r.tries;
                        locked += r.locked;
                    }
                    Err(e) => failures.push(e),
                }
            }
        }
        eprintln!(
            "{} {mode}: {grants} grants, {rejected} rejected, {crashes} crashes, {messages} messages, \
             {refused} refused, {forgotten} tokens forgotten (every node that knew one crashed), \
             {tries} tries ({locked} locked)",
            P::ALGORITHM
        );
    }
    eprintln!("{}: {runs} runs, {} failing", P::ALGORITHM, failures.len());
    for failure in &failures {
        // The description and the replay command of each, without the traces.
        let short: Vec<&str> = failure.lines().filter(|l| !l.starts_with("    ")).take(4).collect();
        eprintln!("  {}", short.join("\n  "));
    }
    (runs, failures)
}

#[test]
fn lamport_sweep() {
    sweep::<Lamport>(0, SEEDS_PER_CELL, &SimMode::ALL);
}

#[test]
fn ricart_agrawala_sweep() {
    sweep::<RicartAgrawala>(0, SEEDS_PER_CELL, &SimMode::ALL);
}

/// Lamport with the paper's footnote (no REPLY when a later message was already sent): every invariant, in
/// every mode (message counts are not fixed, so only the simulator's checks apply), 600 seeds per mode × N.
#[test]
fn lamport_ack_elision_sweep() {
    let mut grants = 0;
    for mode in SimMode::ALL {
        for nodes in 2..=7 {
            for seed in 0..SEEDS_PER_CELL / 3 {
                let cfg = SimConfig::preset(mode, nodes, seed);
                match sim::run_with(&cfg, Lamport::with_ack_elision) {
                    Ok(r) => grants += r.grants,
                    Err(v) => panic!(
                        "with ack elision (replay with sim::run_with(.., Lamport::with_ack_elision)):\n{v}"
                    ),
                }
            }
        }
    }
    eprintln!("lamport with ack elision: {grants} grants");
}

/// Probable owner without crashes: 900 seeds per cell, so still 10,800 runs.
#[test]
fn probable_owner_sweep() {
    sweep::<ProbableOwner>(
        0,
        SEEDS_PER_CELL * 3 / 2,
        &[SimMode::FaultFree, SimMode::Cancels, SimMode::Tries],
    );
}

/// Probable owner with crashes and restarts (3,600 seeds; once 8 failed, see the `regression_po_*` cases).
#[test]
fn probable_owner_crash_sweep() {
    sweep::<ProbableOwner>(0, SEEDS_PER_CELL, &[SimMode::Crashes, SimMode::TryCrashes]);
}

/// Regression (was: mutual exclusion broken after a restart). Node 1 restarts while its old `REQUEST(lock1, ts 11)` is still in
/// flight to node 0; node 0 answers it with `REPLY(ts 13)` before it has seen node 1's new handshake, and
/// only then re-sends its own outstanding requests (entered, `REQUEST(lock0, ts 0)`) to the new incarnation,
/// behind that REPLY on the same link. Node 1 (incarnation 1) requests lock0 with ts 9, receives the stale
/// REPLY(ts 13) first, counts it for rule 5 (a later message from every peer) with its own request at the
/// head of its queue, and entered lock0 while node 0 held it. Fixed by addressing: every message carries the
/// receiver incarnation its sender's core knew (`Envelope::to_incarnation`), and a message addressed to an
/// earlier life of the receiver is dropped on arrival, so the stale REPLY never reaches incarnation 1.
#[test]
fn regression_lamport_stale_reply_after_restart_seed_1267() {
    run_one::<Lamport>(SimMode::Crashes, 2, 1267).unwrap_or_else(|e| panic!("{e}"));
    run_one::<Lamport>(SimMode::Crashes, 2, 9432).unwrap_or_else(|e| panic!("{e}"));
}

/// Regression: the same stale-message class on three nodes (found by the soak); passes since addressing.
#[test]
fn regression_lamport_after_restart_seed_2098() {
    run_one::<Lamport>(SimMode::Crashes, 3, 2098).unwrap_or_else(|e| panic!("{e}"));
}

/// Deadlock (seeds 244 and 350, the first cases found, pass since probable_owner 3ee2cf4; this one does not):
/// node 1 releases and hands the token (`Rep Granted{epoch 3, queue [node 2]}`) to node 0, which has just
/// crashed, so the token is lost. After node 0's restart handshake, node 2 (the home, waiting) re-sends its
/// `Acq` to node 1, which answers `Redirect{owner: node 2, epoch 3}` (node 2 itself) instead of starting a
/// recovery round; node 2 waits forever.
/// Fixed: a node whose last transfer went to a restarted node asks the home for a round (`suspect`).
#[test]
fn regression_po_deadlock_token_to_crashed_node_seed_42() {
    for seed in [42, 196, 320, 335, 426, 510, 552] {
        run_one::<ProbableOwner>(SimMode::Crashes, 3, seed).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Fencing regression: node 1 is the only node that knew lock1's epoch 1 / sequence 3; it crashes, restarts,
/// recovers the lock and grants token (epoch 1, seq 1) again: 0x100000001 after 0x100000003.
/// Fixed: every node sends a restarted peer `EPOCH_SYNC` (the highest epoch it knows), so the knowledge that
/// an epoch was used survives the next crash of the node that used it.
#[test]
fn regression_po_fencing_seed_572() {
    for seed in [572, 164] {
        run_one::<ProbableOwner>(SimMode::Crashes, 2, seed).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Liveness after a restart (was: a probable-owner lock stuck forever once the restarted node was back).
/// Node 1 crashes and restarts as incarnation 1 while node 0, home of lock1, runs a recovery round for it
/// (its OWNER_QUERY to node 1 waits in node 0's link, addressed to incarnation 0). Node 1's handshake reaches
/// node 2 first; node 2, home of lock0, restarts its own round and its OWNER_QUERY tells node 0 that node 1
/// is now incarnation 1. Node 0's core applies that at once (`peer_restarted`) and re-sends to incarnation 1:
/// EPOCH_SYNC and lock1's new OWNER_QUERY, queued in its link to node 1 before that link has seen node 1's
/// handshake. When node 1's Hello reaches node 0 (t=12), the link discarded everything queued as "addressed
/// to the old incarnation", those two frames included, and the Hello said nothing new to the core (it knew
/// incarnation 1 already), so nothing was re-sent: lock1's round waited forever for node 1's report and
/// node 2's request for lock1 was never granted. Fixed in the link: on a peer restart it discards the frames
/// *addressed* to an earlier incarnation (`Addressed::to_incarnation`) and keeps, renumbered, those addressed
/// to the new one. The second seed is the same interleaving on four nodes.
#[test]
fn regression_po_restart_learnt_from_a_query_before_the_link_seed_143() {
    run_one::<ProbableOwner>(SimMode::Crashes, 3, 143).unwrap_or_else(|e| panic!("{e}"));
    run_one::<ProbableOwner>(SimMode::Crashes, 4, 74).unwrap_or_else(|e| panic!("{e}"));
}

/// The documented limitation, pinned: both nodes crash one right after the other before the newer epoch
/// reaches a live node, so the regenerated epoch repeats a token. Without stable storage nothing can prevent
/// it; the checker counts it as forgotten instead of failing, but only when every node that was up at the
/// earlier grant has crashed since. Mutual exclusion holds. (Seed 5124 showed it while the simulator
/// delivered on ideal queues; since it runs the real links, restarts take their handshakes' time and that
/// seed's second crash finds the first node still joining.)
#[test]
fn po_two_crashes_in_a_row_can_forget_a_token_seed_945() {
    let r = run_one::<ProbableOwner>(SimMode::Crashes, 2, 945).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.crashes, r.fencing_forgotten), (2, 1), "{r:?}");
}

/// The documented limitation again (probable_owner's module doc, "Limitation"), on three nodes: node 0 hands
/// epoch 3 to node 2, the lock's home (so no OWNER_UPDATE tells anyone else); node 2 crashes, then node 0
/// crashes before its EPOCH_SYNC reaches node 2's new incarnation. Node 1 was up at the grant but never
/// learnt epoch 3, so the simulator's witness rule does not excuse the repeated token. No try is involved
/// (the run is from the try-crashes mode, where it first showed). Mutual exclusion holds.
#[test]
fn po_two_crashes_forget_an_epoch_only_two_nodes_knew_seed_336() {
    let e = run_one::<ProbableOwner>(SimMode::TryCrashes, 3, 336).expect_err("the known limitation");
    assert!(
        e.contains("fencing: node 2 granted lock0 with token 0x20001, not above the earlier token 0x30001"),
        "{e}"
    );
}

/// Leases (in the cancels mode some holders never release): every run passes the simulator's checks, which
/// include that a lease expires only for its holder, not before its end, and that the next holder's token is
/// larger; and leases do expire, so the check is not vacuous.
#[test]
fn expired_leases_release_and_the_next_holder_gets_a_larger_token() {
    fn check<P: Protocol>() {
        let (mut expiries, mut grants) = (0, 0);
        for nodes in 2..=4 {
            for seed in 0..200 {
                let r = run_one::<P>(SimMode::Cancels, nodes, seed).unwrap_or_else(|e| panic!("{e}"));
                expiries += r.lease_expiries;
                grants += r.grants;
            }
        }
        eprintln!("{}: {expiries} lease expiries in {grants} grants", P::ALGORITHM);
        assert!(expiries > 0, "{}: no lease expired", P::ALGORITHM);
    }
    check::<Lamport>();
    check::<RicartAgrawala>();
    check::<ProbableOwner>();
}

/// A single node needs nobody: no messages at all, every request granted.
#[test]
fn one_node_sends_nothing() {
    fn check<P: Protocol>() {
        for seed in 0..200 {
            let report = run_one::<P>(SimMode::FaultFree, 1, seed).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(report.messages, 0, "{} seed {seed}", P::ALGORITHM);
            assert_eq!(report.grants, report.issued);
        }
    }
    check::<Lamport>();
    check::<RicartAgrawala>();
    check::<ProbableOwner>();
}

/// Replays one run from the environment (what a failure's message tells you to run).
#[test]
fn replay() {
    let Ok(seed) = std::env::var("DMUTEX_SIM_SEED") else {
        eprintln!(
            "replay: set DMUTEX_SIM_SEED (and DMUTEX_SIM_ALGO, DMUTEX_SIM_NODES, DMUTEX_SIM_MODE) to replay a run"
        );
        return;
    };
    let seed: u64 = seed.parse().expect("DMUTEX_SIM_SEED must be a number");
    let algorithm: Algorithm = std::env::var("DMUTEX_SIM_ALGO")
        .unwrap_or_else(|_| "lamport".into())
        .parse()
        .expect("DMUTEX_SIM_ALGO");
    let nodes: usize = std::env::var("DMUTEX_SIM_NODES")
        .unwrap_or_else(|_| "3".into())
        .parse()
        .expect("DMUTEX_SIM_NODES must be a number");
    let mode: SimMode = std::env::var("DMUTEX_SIM_MODE")
        .unwrap_or_else(|_| "fault-free".into())
        .parse()
        .expect("DMUTEX_SIM_MODE");
    // Always with a trace, so a passing replay still shows what happened.
    let cfg = SimConfig { trace_lines: 200, ..SimConfig::preset(mode, nodes, seed) };
    eprintln!("replaying {algorithm} {cfg:?}");
    let result = match algorithm {
        Algorithm::Lamport => sim::run::<Lamport>(&cfg),
        Algorithm::RicartAgrawala => sim::run::<RicartAgrawala>(&cfg),
        Algorithm::ProbableOwner => sim::run::<ProbableOwner>(&cfg),
    };
    match result {
        Ok(report) => eprintln!("passed: {report:?}"),
        Err(v) => panic!("{v}"),
    }
    let checked = match algorithm {
        Algorithm::Lamport => run_one::<Lamport>(mode, nodes, seed),
        Algorithm::RicartAgrawala => run_one::<RicartAgrawala>(mode, nodes, seed),
        Algorithm::ProbableOwner => run_one::<ProbableOwner>(mode, nodes, seed),
    };
    if let Err(e) = checked {
        panic!("{e}");
    }
}

/// `cargo test --release --test simulation -- --ignored soak` (seeds per algorithm from `DMUTEX_SIM_RUNS`,
/// default 1,000,000; they start after the regular suite's seeds).
#[test]
#[ignore = "long: run with --release -- --ignored soak"]
fn soak() {
    let runs: u64 = std::env::var("DMUTEX_SIM_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let per_cell = runs.div_ceil(18).max(1);
    // Every algorithm runs even if an earlier one failed; each failure was printed with its replay command.
    let failing = [
        sweep_failures::<Lamport>(SEEDS_PER_CELL, per_cell, &SimMode::ALL).1.len(),
        sweep_failures::<RicartAgrawala>(SEEDS_PER_CELL, per_cell, &SimMode::ALL).1.len(),
        sweep_failures::<ProbableOwner>(SEEDS_PER_CELL, per_cell, &SimMode::ALL).1.len(),
    ];
    assert_eq!(failing, [0, 0, 0], "failing runs (lamport, ricart-agrawala, probable-owner)");
}

/// Seeds per algorithm of the view-change scenario (`src/sim/views.rs`) in the regular suite.
const VIEW_SEEDS: u64 = 5_000;

/// Runs the view-change scenario for `seeds` seeds; returns the failures' messages (seed and replay command).
fn view_failures<P: Protocol>(first_seed: u64, seeds: u64, oracle: sim::ViewOracle) -> Vec<String> {
    (first_seed..first_seed + seeds)
        .filter_map(|seed| {
            let cfg = sim::ViewSimConfig { oracle, ..sim::ViewSimConfig::preset(seed) };
            sim::run_views::<P>(&cfg).err().map(|v| v.to_string())
        })
        .collect()
}

/// A holder crashes; once its leases have run out the survivors get the view without it and keep granting;
/// later node 9 joins. Mutual exclusion, rising tokens and every request granted, for every algorithm.
#[test]
fn view_changes_keep_every_algorithm_granting() {
    fn check<P: Protocol>() {
        let failures = view_failures::<P>(0, VIEW_SEEDS, sim::ViewOracle::AfterLeases);
        assert!(
            failures.is_empty(),
            "{} of {VIEW_SEEDS} runs failed; first:\n{}",
            failures.len(),
            failures[0]
        );
    }
    check::<Lamport>();
    check::<RicartAgrawala>();
    check::<ProbableOwner>();
}

/// Negative control: an oracle that excludes the crashed holder before its lease ran out lets a survivor in
/// while the crashed node's client still holds the lock; the checker must report it in every run.
#[test]
fn excluding_a_holder_before_its_lease_ran_out_is_caught() {
    fn check<P: Protocol>() {
        let failures = view_failures::<P>(0, 50, sim::ViewOracle::Early);
        assert_eq!(failures.len(), 50, "{}: the early exclusion went unnoticed in some runs", P::ALGORITHM);
        assert!(
            failures[0].contains("mutual exclusion") && failures[0].contains("view_replay"),
            "{}",
            failures[0]
        );
    }
    check::<Lamport>();
    check::<RicartAgrawala>();
    check::<ProbableOwner>();
}

/// Replays one view-change run: `DMUTEX_VIEW_SEED`, `DMUTEX_SIM_ALGO`, `DMUTEX_VIEW_ORACLE` (`early` or
/// `after-leases`).
#[test]
fn view_replay() {
    let Ok(seed) = std::env::var("DMUTEX_VIEW_SEED") else {
        eprintln!(
            "view_replay: set DMUTEX_VIEW_SEED (and DMUTEX_SIM_ALGO, DMUTEX_VIEW_ORACLE) to replay a run"
        );
        return;
    };
    let seed: u64 = seed.parse().expect("DMUTEX_VIEW_SEED must be a number");
    let algorithm: Algorithm = std::env::var("DMUTEX_SIM_ALGO")
        .unwrap_or_else(|_| "lamport".into())
        .parse()
        .expect("DMUTEX_SIM_ALGO");
    let oracle = match std::env::var("DMUTEX_VIEW_ORACLE").as_deref() {
        Ok("early") => sim::ViewOracle::Early,
        _ => sim::ViewOracle::AfterLeases,
    };
    let cfg = sim::ViewSimConfig { oracle, ..sim::ViewSimConfig::preset(seed) };
    let result = match algorithm {
        Algorithm::Lamport => sim::run_views::<Lamport>(&cfg),
        Algorithm::RicartAgrawala => sim::run_views::<RicartAgrawala>(&cfg),
        Algorithm::ProbableOwner => sim::run_views::<ProbableOwner>(&cfg),
    };
    match result {
        Ok(report) => eprintln!("passed: {report:?}"),
        Err(v) => panic!("{v}"),
    }
}
