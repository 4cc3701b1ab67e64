//! What membership costs, measured in the seeded simulation (`src/sim/membership/`) with the real
//! membership core at the standard timing (heartbeat 200 ms, S = 1.5 s, L = 1 s, ρ = 1 %, retry 300 ms),
//! 1–2 ms message delays, drifting clocks:
//! - heartbeats and acks per second per node in a stable view;
//! - for one crash, one join and one leave in a quiet cluster: membership messages by type, ballots,
//!   epochs and the time from the fault until every live process is an active member of the new view.
//!
//! `cargo run --release --example view_change_cost [seeds]` (default 20 seeds per cell; the figures per
//! seed differ only by clock rates, delays and which node is hit).

use dmutex::algo::membership::Config;
use dmutex::sim::{self, MemberSimConfig, MemberSimReport, Mutant, Scenario};
use std::collections::BTreeMap;

fn run(scenario: Scenario, nodes: usize, seed: u64) -> MemberSimReport {
    let cfg = MemberSimConfig {
        scenario,
        nodes,
        membership: Config::standard(),
        max_delay: 2,
        slow_per_mille: 0,
        engines: false,
        ..MemberSimConfig::preset_with(seed, Some(scenario), Mutant::None)
    };
    sim::run_membership(&cfg).unwrap_or_else(|v| panic!("{v}"))
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let seeds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    println!("standard timing {:?}, {seeds} seeds per cell\n", Config::standard());
    for nodes in [3, 5] {
        let quiet = run(Scenario::Quiet, nodes, 1);
        let s = &quiet.stable;
        println!(
            "N={nodes} stable view: {:.1} HEARTBEAT + {:.1} ACK per second per node \
             ({} other messages in {} ms)",
            s.heartbeats_per_node_per_s(),
            s.acks_per_node_per_s(),
            s.other,
            s.window_ms
        );
        for scenario in [Scenario::OneCrash, Scenario::OneJoin, Scenario::OneLeave] {
            let costs: Vec<_> = (0..seeds).filter_map(|seed| run(scenario, nodes, seed).change).collect();
            let durations: Vec<u64> = costs.iter().map(|c| c.duration_ms).collect();
            let protocol: Vec<u64> = costs.iter().map(|c| c.protocol_messages()).collect();
            let ballots: Vec<u64> = costs.iter().map(|c| c.ballots).collect();
            let mut by_kind: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
            for c in &costs {
                for (k, n) in &c.messages {
                    by_kind.entry(k).or_default().push(*n);
                }
            }
            let kinds: Vec<String> = by_kind
                .into_iter()
                .filter(|(k, _)| !matches!(*k, "HEARTBEAT" | "ACK"))
                .map(|(k, v)| format!("{k} {}", median(v)))
                .collect();
            println!(
                "N={nodes} {scenario:<9} time median {} ms (min {}, max {}), ballots median {} (max {}), \
                 protocol messages median {} (max {}): {}",
                median(durations.clone()),
                durations.iter().min().unwrap_or(&0),
                durations.iter().max().unwrap_or(&0),
                median(ballots.clone()),
                ballots.iter().max().unwrap_or(&0),
                median(protocol.clone()),
                protocol.iter().max().unwrap_or(&0),
                kinds.join(", ")
            );
        }
        println!();
    }
}
