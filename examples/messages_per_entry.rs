//! Messages per critical-section entry, measured with the deterministic simulator, beside the textbook figures.
//!
//! `cargo run --release --example messages_per_entry`
//!
//! Two loads, one lock, no faults, seed 1, message delays 1–10 ms, holds 0–5 ms:
//! - light: one request at a time (the next is issued once the previous entry has ended and the network is
//!   quiet), from a random node;
//! - heavy: every node always wants the lock (it asks again as soon as its previous request ends).
//!
//! "mean" is messages sent / entries. "max" is the most messages sent between two consecutive grants: under
//! light load that is exactly one entry's cost (its request traffic plus the previous entry's release);
//! under heavy load it shows how bursty the traffic is (the first N windows, the start-up burst where every
//! node asks at once, are left out).

use dmutex::algo::NodeId;
use dmutex::algo::Protocol;
use dmutex::algo::lamport::Lamport;
use dmutex::algo::probable_owner::ProbableOwner;
use dmutex::algo::ricart_agrawala::RicartAgrawala;
use dmutex::sim::{self, Load, SimConfig, SimMode};

const SIZES: [usize; 8] = [2, 3, 4, 5, 8, 16, 32, 64];

fn config(nodes: usize, load: Load) -> SimConfig {
    SimConfig {
        nodes,
        locks: 1,
        // Enough entries for a stable mean; heavy load gives every node several turns.
        requests: match load {
            Load::Saturated => (8 * nodes).max(400),
            _ => 400,
        },
        cancel_prob: 0.0,
        deadline_prob: 0.0,
        lease_prob: 0.0,
        try_prob: 0.0,
        crash: false,
        max_delay: 10,
        max_hold: 5,
        load,
        seed: 1,
        mode: SimMode::FaultFree,
        max_steps: u64::MAX,
        trace_lines: 0,
    }
}

/// "mean (max)" for one algorithm, or the violation if the run broke an invariant.
fn measure<P: Protocol>(nodes: usize, load: Load, make: impl Fn(NodeId, usize) -> P) -> String {
    match sim::run_with(&config(nodes, load), make) {
        Ok(r) => {
            // Under heavy load the first grants come after every node's first request at once: skip that
            // start-up burst (the first N windows) for the maximum.
            let skip = if load == Load::Saturated { nodes } else { 0 };
            let max = r.entry_messages.iter().skip(skip).max().copied().unwrap_or(0);
            format!("{:6.2} ({max:>3})", r.per_entry())
        }
        Err(v) => {
            eprintln!("{v}");
            "   violation".into()
        }
    }
}

fn harmonic(n: usize) -> f64 {
    (1..=n).map(|k| 1.0 / k as f64).sum()
}

fn main() {
    for (load, title) in [
        (Load::Serial, "light load: one request at a time"),
        (Load::Saturated, "heavy load: every node always wants the lock"),
    ] {
        println!("{title}; mean (max) messages per entry");
        println!(
            "{:>3} | {:>9} | {:>12} | {:>16} | {:>9} | {:>12} | {:>13} | {:>14}",
            "N",
            "3(N−1)",
            "Lamport",
            "Lamport+elision",
            "2(N−1)",
            "Ricart–Agr.",
            "H(N−1)+1 (NT)",
            "probable owner"
        );
        println!("{}", "-".repeat(3 + 9 + 12 + 16 + 9 + 12 + 13 + 14 + 7 * 3));
        for n in SIZES {
            println!(
                "{n:>3} | {:>9} | {:>12} | {:>16} | {:>9} | {:>12} | {:>13.2} | {:>14}",
                3 * (n - 1),
                measure(n, load, Lamport::fresh),
                measure(n, load, Lamport::with_ack_elision),
                2 * (n - 1),
                measure(n, load, RicartAgrawala::fresh),
                harmonic(n - 1) + 1.0,
                measure(n, load, ProbableOwner::fresh),
            );
        }
        println!();
    }
}
