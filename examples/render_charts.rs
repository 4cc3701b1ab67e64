//! Renders every chart of `dmutex::experiment::charts` from a synthetic run into the directory given as the first argument,
//! so the pictures can be looked at without a cluster: `cargo run --example render_charts -- /tmp/charts`.
//!
//! The run is made up but shaped like the real one: three nodes take turns on one lock in request order (FIFO,
//! as Lamport's and Ricart–Agrawala's algorithms serve requests), with a deterministic pseudo-random think time
//! and critical-section length. A second history moves one section so it overlaps another, to show the warning.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use dmutex::experiment::charts::{self, SweepMetric, SweepPoint};
use dmutex::experiment::workload::CsEntry;

/// A tiny deterministic generator (no seed plumbing needed for a picture).
struct Lcg(u64);

impl Lcg {
    /// A value in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `nodes` nodes × `iterations` entries on one lock, served in request order, times in UNIX ms.
fn synthetic_run(nodes: u16, iterations: u32) -> Vec<CsEntry> {
    let mut rng = Lcg(42);
    let start = 1_700_000_000_000.0;
    let mut next_request: BTreeMap<u16, f64> = (1..=nodes).map(|n| (n, start + rng.next() * 10.0)).collect();
    let mut done: BTreeMap<u16, u32> = BTreeMap::new();
    let mut free_at = start;
    let mut counter = 0;
    let mut clock = 0;
    let mut entries = Vec::new();
    while let Some((&node, &request_ms)) = next_request.iter().min_by(|a, b| a.1.total_cmp(b.1)) {
        let enter_ms = request_ms.max(free_at) + 1.0 + rng.next() * 2.0;
        let exit_ms = enter_ms + 15.0 + rng.next() * 25.0;
        free_at = exit_ms;
        clock += 3 * u64::from(nodes);
        let iteration = done.entry(node).or_default();
        entries.push(CsEntry {
            node,
            lock: "counter".into(),
            iteration: *iteration,
            fencing_token: counter + 1,
            lamport_clock_at_enter: clock,
            request_ms,
            enter_ms,
            exit_ms,
            counter_read: counter,
            counter_written: counter + 1,
        });
        counter += 1;
        *iteration += 1;
        if *iteration == iterations {
            next_request.remove(&node);
        } else {
            next_request.insert(node, exit_ms + 5.0 + rng.next() * 30.0);
        }
    }
    entries
}

/// Messages per node for Lamport's algorithm: each entry costs N−1 requests, replies and releases.
fn lamport_messages(entries: &[CsEntry], nodes: u16) -> BTreeMap<u16, BTreeMap<String, u64>> {
    let mut per_node: BTreeMap<u16, BTreeMap<String, u64>> = BTreeMap::new();
    for e in entries {
        for kind in ["request", "reply", "release"] {
            *per_node.entry(e.node).or_default().entry(kind.to_string()).or_default() += u64::from(nodes - 1);
        }
    }
    per_node
}

/// A sweep over N = 3, 5, 7, 9 for the three algorithms, with made-up but plausible costs.
fn synthetic_sweep() -> Vec<SweepPoint> {
    let mut rng = Lcg(7);
    let mut points = Vec::new();
    for (algorithm, per_entry) in [
        ("lamport", (|n: f64| 3.0 * (n - 1.0)) as fn(f64) -> f64),
        ("ricart-agrawala", |n: f64| 2.0 * (n - 1.0)),
        ("probable-owner", |n: f64| 1.0 + n.log2()),
    ] {
        for nodes in [3u32, 5, 7, 9] {
            let entries = u64::from(nodes) * 20;
            let messages = (entries as f64 * per_entry(f64::from(nodes)) * (1.0 + rng.next() * 0.05)) as u64;
            let execution_ms = entries as f64 * (25.0 + 2.0 * f64::from(nodes) + rng.next() * 5.0);
            points.push(SweepPoint { algorithm: algorithm.into(), nodes, entries, messages, execution_ms });
        }
    }
    points
}

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).context("usage: render_charts <output directory>")?);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let run = synthetic_run(3, 8);
    let mut broken = run.clone();
    // Move the 6th section back into the 5th: a mutual-exclusion violation.
    if let [.., a, b] = &mut broken[..6] {
        let shift = b.enter_ms - (a.enter_ms + a.exit_ms) / 2.0;
        b.request_ms -= shift;
        b.enter_ms -= shift;
        b.exit_ms -= shift;
    }
    let sweep = synthetic_sweep();

    let charts = [
        ("gantt.svg", charts::gantt(&run, "Lamport, 3 nodes: critical sections")?),
        ("gantt_overlap.svg", charts::gantt(&broken, "Broken history: critical sections")?),
        ("latency.svg", charts::latency(&run, "Lamport, 3 nodes: waiting time per node")?),
        ("messages.svg", charts::messages(&lamport_messages(&run, 3), "Lamport, 3 nodes: messages sent")?),
        (
            "sweep_time.svg",
            charts::sweep(&sweep, SweepMetric::ExecutionTime, "Execution time vs cluster size")?,
        ),
        (
            "sweep_messages.svg",
            charts::sweep(
                &sweep,
                SweepMetric::MessagesPerEntry,
                "Messages per critical section vs cluster size",
            )?,
        ),
    ];
    for (name, svg) in &charts {
        charts::write_svg(dir.join(name), svg)?;
    }
    std::fs::write(dir.join("sweep.csv"), charts::sweep_csv(&sweep))?;
    println!("wrote {} charts and sweep.csv to {}", charts.len(), dir.display());
    Ok(())
}
