//! `dmutex cluster`: the seeds' experiment on N real node processes of this binary, one experiment per algorithm.
//!
//! For each algorithm (sequentially): start N `dmutex node` children on distinct loopback addresses
//! (`<subnet>.1 … <subnet>.N`, one shared peer port and one shared HTTP port), each running the workload of
//! [`crate::experiment::workload`] against one shared counter file; wait for every `/readyz`; poll `/v1/workload` (showing
//! progress) until every node is done; read `/v1/stats`; stop every child (SIGTERM, SIGKILL after 5 s); print the
//! seed-style results and a verdict.
//!
//! With `--out DIR` it also writes `DIR/results.json` (every printed figure, every entry with its request/enter/exit
//! times on the host clock and relative to the experiment's first request, its Lamport request timestamp, every
//! node's `/v1/stats`) and per algorithm three SVG charts ([`crate::experiment::charts`]): `<algorithm>-gantt.svg`,
//! `<algorithm>-latency.svg` and `<algorithm>-messages.svg`.
//!
//! With a sweep (`--sweep 3,5,10`) it runs the experiment for every size and algorithm, one after another on the
//! same addresses and ports, and writes, besides `results.json` with every experiment, `sweep.csv`,
//! `sweep-time.svg` (execution time against N) and `sweep-messages.svg` (messages per entry against N with the
//! textbook lines); each size's charts go to `DIR/n<N>/`. A failed experiment does not stop the sweep: it is
//! reported, left out of the sweep's points, and makes the command fail at the end.
//!
//! The verdict ([`analyze`]) holds when: the counter file ends at N·K (no lost update); no two entries'
//! `[enter, exit]` intervals overlap (all children share the host clock, so their timestamps compare); fencing
//! tokens strictly increase in entry order; and every node made its K entries without error.
//!
//! Must never: leave a child running (every child is `kill_on_drop`, and stopped explicitly on every path), or
//! delete the logs of a run that failed (their location is printed instead).

use crate::algo::Algorithm;
use crate::experiment::charts::{self, LatencyStats, SweepMetric, SweepPoint};
use crate::experiment::workload::{
    CsEntry, WorkloadReport, WorkloadState, WorkloadStatus, read_counter, unix_ms,
};
use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long every node gets to answer `/readyz` with 200, plus [`READY_PER_NODE`] per node: a large cluster on a
/// small machine starts its processes and meshes its N² connections slower.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Extra readiness time per node.
const READY_PER_NODE: Duration = Duration::from_millis(500);
/// How long children get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Timeout of one HTTP request to a node.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// The lock every node contends for.
const WORKLOAD_LOCK: &str = "counter";
/// Message types in the order the papers introduce them; others follow alphabetically.
const KIND_ORDER: [&str; 3] = ["REQUEST", "REPLY", "RELEASE"];
/// `cs_history` longer than this is shortened on screen (results.json has it all).
const HISTORY_SHOWN: usize = 200;

/// What `dmutex cluster` runs. (Mirrors the CLI's arguments.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterArgs {
    /// Node processes to start.
    pub nodes: usize,
    /// Critical-section entries per node.
    pub iterations: u32,
    /// Time inside each critical section (ms).
    pub cs_ms: u64,
    /// The algorithm to run; `None` runs every algorithm, one experiment each.
    pub algorithm: Option<Algorithm>,
    /// The first three octets of the nodes' addresses: node `i` listens on `<subnet>.<i+1>`.
    pub subnet: String,
    /// The peer (TCP) port, the same on every address.
    pub peer_port: u16,
    /// The HTTP port, the same on every address.
    pub http_port: u16,
    /// Also write `results.json` and the SVG charts (and in a sweep `sweep.csv`) into this directory.
    pub out: Option<PathBuf>,
    /// Keep the run's temporary directory (logs, counter file) even when everything passed.
    pub keep: bool,
    /// The `dmutex` binary to start as `<binary> node` (default: this executable).
    pub binary: Option<PathBuf>,
    /// Cluster sizes to run one after another instead of `nodes` (empty: just `nodes`).
    pub sweep: Vec<usize>,
    /// Turn on Lamport's footnote option in every node (`DMUTEX_LAMPORT_ACK_ELISION`).
    pub lamport_ack_elision: bool,
}

/// The body of `GET /v1/workload`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadResponse {
    /// Progress.
    pub status: WorkloadStatus,
    /// The report, once the workload stopped.
    pub report: Option<WorkloadReport>,
}

/// The body of `GET /v1/stats`, as the node serves it (one definition for both sides).
pub use crate::node::Stats as NodeStats;

/// Names one critical-section entry in a verdict.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRef {
    /// The node.
    pub node: u16,
    /// Its iteration.
    pub iteration: u32,
    /// The entry's fencing token.
    pub fencing_token: u64,
}

impl From<&CsEntry> for EntryRef {
    fn from(e: &CsEntry) -> Self {
        EntryRef { node: e.node, iteration: e.iteration, fencing_token: e.fencing_token }
    }
}

/// Two critical sections that were open at the same time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overlap {
    /// The one that entered first.
    pub first: EntryRef,
    /// The one that entered while `first` was still inside.
    pub second: EntryRef,
    /// How long both were inside (ms).
    pub overlap_ms: f64,
}

/// Whether a run kept mutual exclusion, and what it saw if not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// Every check passed.
    pub ok: bool,
    /// The counter file's final value.
    pub shared_counter: u64,
    /// N·K.
    pub expected_counter: u64,
    /// Entries that began inside an earlier entry, each with the earlier one still open.
    pub overlaps: Vec<Overlap>,
    /// Consecutive entries (in entry order) whose fencing token did not increase: `(earlier, later)`.
    pub token_inversions: Vec<(EntryRef, EntryRef)>,
    /// Nodes that did not make all their entries, or reported errors.
    pub incomplete: Vec<String>,
}

impl Verdict {
    /// One line: `OK — …` or `FAILED — …` with what failed.
    pub fn summary(&self) -> String {
        if self.ok {
            return "OK — no overlapping critical sections, no lost update, fencing tokens strictly increasing".into();
        }
        let mut problems = Vec::new();
        if let Some(o) = self.overlaps.first() {
            problems.push(format!(
                "{} overlapping critical section(s) (first: node {} #{} and node {} #{}, {:.3} ms)",
                self.overlaps.len(),
                o.first.node,
                o.first.iteration,
                o.second.node,
                o.second.iteration,
                o.overlap_ms
            ));
        }
        if self.shared_counter < self.expected_counter {
            problems.push(format!(
                "{} lost update(s) (counter {}, expected {})",
                self.expected_counter - self.shared_counter,
                self.shared_counter,
                self.expected_counter
            ));
        } else if self.shared_counter > self.expected_counter {
            problems.push(format!(
                "counter {} exceeds the expected {}",
                self.shared_counter, self.expected_counter
            ));
        }
        if let Some((a, b)) = self.token_inversions.first() {
            problems.push(format!(
                "fencing token did not increase {} time(s) (first: {} then {})",
                self.token_inversions.len(),
                a.fencing_token,
                b.fencing_token
            ));
        }
        problems.extend(self.incomplete.iter().cloned());
        format!("FAILED — {}", problems.join("; "))
    }
}

/// Every entry of every report, in entry order (by enter time; node and iteration break ties).
pub fn entry_order(reports: &[WorkloadReport]) -> Vec<CsEntry> {
    let mut entries: Vec<CsEntry> = reports.iter().flat_map(|r| r.entries.iter().cloned()).collect();
    entries.sort_by(|a, b| {
        a.enter_ms.total_cmp(&b.enter_ms).then(a.node.cmp(&b.node)).then(a.iteration.cmp(&b.iteration))
    });
    entries
}

/// Checks a run of `nodes` nodes × `iterations` entries whose counter file ended at `shared_counter`.
pub fn analyze(reports: &[WorkloadReport], nodes: usize, iterations: u32, shared_counter: u64) -> Verdict {
    let entries = entry_order(reports);

    // Sweep in enter order, remembering the entry that exits last so far: an entry that enters before that
    // exit overlaps it (touching intervals, enter == exit, do not overlap).
    let mut overlaps = Vec::new();
    let mut open: Option<&CsEntry> = None;
    for e in &entries {
        if let Some(prev) = open.filter(|p| e.enter_ms < p.exit_ms) {
            let overlap_ms = prev.exit_ms.min(e.exit_ms) - e.enter_ms;
            overlaps.push(Overlap { first: prev.into(), second: e.into(), overlap_ms });
        }
        if open.is_none_or(|p| e.exit_ms > p.exit_ms) {
            open = Some(e);
        }
    }

    let token_inversions = entries
        .windows(2)
        .filter(|w| w[1].fencing_token <= w[0].fencing_token)
        .map(|w| (EntryRef::from(&w[0]), EntryRef::from(&w[1])))
        .collect();

    let mut incomplete = Vec::new();
    for node in 0..nodes {
        match reports.iter().find(|r| usize::from(r.node) == node) {
            None => incomplete.push(format!("node {node}: no report")),
            Some(r) => {
                if r.entries.len() < iterations as usize {
                    incomplete.push(format!("node {node}: {}/{iterations} entries", r.entries.len()));
                }
                for e in &r.errors {
                    incomplete.push(format!("node {node}: {e}"));
                }
            }
        }
    }

    let expected_counter = nodes as u64 * u64::from(iterations);
    let mut verdict =
        Verdict { ok: false, shared_counter, expected_counter, overlaps, token_inversions, incomplete };
    verdict.ok = verdict.overlaps.is_empty()
        && verdict.token_inversions.is_empty()
        && verdict.incomplete.is_empty()
        && shared_counter == expected_counter;
    verdict
}

/// The textbook message cost of one entry (Singhal & Shivaratri 1994, Table 6.1), as printed.
pub fn textbook_cost(algorithm: Algorithm, nodes: usize) -> String {
    let n1 = nodes.saturating_sub(1);
    match algorithm {
        Algorithm::Lamport => format!("3(N−1) = {}", 3 * n1),
        Algorithm::RicartAgrawala => format!("2(N−1) = {}", 2 * n1),
        Algorithm::ProbableOwner => format!("hops along owner hints + 1 transfer, ≤ N = {nodes}"),
    }
}

/// One critical-section entry as `results.json` records it: the node's [`CsEntry`] (node, lock, iteration,
/// fencing token, Lamport clock at enter, request/enter/exit in UNIX ms of the host clock every node shares) plus
/// what follows from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryRecord {
    /// The entry as the node reported it.
    #[serde(flatten)]
    pub entry: CsEntry,
    /// The Lamport timestamp of the request (Lamport and Ricart–Agrawala: the high 48 bits of the fencing token,
    /// see [`crate::algo::FencingToken::from_ts`]); `None` for probable-owner, whose tokens are epochs.
    pub request_timestamp: Option<u64>,
    /// `request_ms` − the experiment's [`ExperimentResult::time_origin_ms`].
    pub request_at_ms: f64,
    /// `enter_ms` − the experiment's origin.
    pub enter_at_ms: f64,
    /// `exit_ms` − the experiment's origin.
    pub exit_at_ms: f64,
    /// Waiting time, enter − request (ms).
    pub wait_ms: f64,
    /// Time inside the critical section, exit − enter (ms).
    pub hold_ms: f64,
}

impl EntryRecord {
    /// Records `entry` of an `algorithm` experiment whose first request was at `origin_ms`.
    pub fn new(entry: CsEntry, algorithm: Algorithm, origin_ms: f64) -> Self {
        let request_timestamp = match algorithm {
            Algorithm::Lamport | Algorithm::RicartAgrawala => Some(entry.fencing_token >> 16),
            Algorithm::ProbableOwner => None,
        };
        EntryRecord {
            request_timestamp,
            request_at_ms: entry.request_ms - origin_ms,
            enter_at_ms: entry.enter_ms - origin_ms,
            exit_at_ms: entry.exit_ms - origin_ms,
            wait_ms: entry.enter_ms - entry.request_ms,
            hold_ms: entry.exit_ms - entry.enter_ms,
            entry,
        }
    }
}

/// One experiment's results: every printed field, every entry, every node's counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentResult {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Nodes.
    pub nodes: usize,
    /// Entries per node.
    pub iterations: u32,
    /// Time inside each critical section (ms).
    pub cs_ms: u64,
    /// `(node, fencing token)` in entry order.
    pub cs_history: Vec<(u16, u64)>,
    /// The counter file's final value.
    pub shared_counter: u64,
    /// N·K.
    pub expected_counter: u64,
    /// Messages sent by each node for this algorithm.
    pub message_count: BTreeMap<u16, u64>,
    /// Messages sent by all nodes for this algorithm, per type.
    pub messages_by_type: BTreeMap<String, u64>,
    /// Messages sent for this algorithm, per node and type.
    pub messages_by_node: BTreeMap<u16, BTreeMap<String, u64>>,
    /// Messages received for this algorithm, per node and type.
    pub messages_received_by_node: BTreeMap<u16, BTreeMap<String, u64>>,
    /// Every message sent for this algorithm.
    pub total_messages: u64,
    /// `total_messages` / entries made.
    pub messages_per_entry: f64,
    /// The textbook cost per entry.
    pub textbook_per_entry: String,
    /// From the first node's first iteration to the last node's end (s).
    pub execution_time_s: f64,
    /// Entries made / `execution_time_s`.
    pub entries_per_s: f64,
    /// The checks.
    pub verdict: Verdict,
    /// The earliest request of the experiment (UNIX ms): the origin of the entries' `*_at_ms` times.
    pub time_origin_ms: f64,
    /// Waiting time (enter − request) per node: count, mean, p99, max (ms).
    pub latency: BTreeMap<u16, LatencyStats>,
    /// Every entry, in entry order.
    pub entries: Vec<EntryRecord>,
    /// Every node's `/v1/stats`.
    pub node_stats: Vec<NodeStats>,
    /// Where the nodes' logs were written (deleted after a passing run unless kept).
    pub log_dir: Option<PathBuf>,
}

/// Builds an experiment's results from the nodes' reports and stats and the counter's final value.
pub fn summarize(
    algorithm: Algorithm,
    nodes: usize,
    iterations: u32,
    cs_ms: u64,
    reports: &[WorkloadReport],
    stats: &[NodeStats],
    shared_counter: u64,
) -> ExperimentResult {
    let verdict = analyze(reports, nodes, iterations, shared_counter);
    let entries = entry_order(reports);
    let cs_history = entries.iter().map(|e| (e.node, e.fencing_token)).collect();

    let mut message_count = BTreeMap::new();
    let mut messages_by_type = BTreeMap::new();
    let mut messages_by_node = BTreeMap::new();
    let mut messages_received_by_node = BTreeMap::new();
    for s in stats {
        let sent = s.messages_sent.get(algorithm.as_str());
        let mut node_total = 0u64;
        for (kind, n) in sent.into_iter().flatten() {
            node_total += n;
            *messages_by_type.entry(kind.clone()).or_insert(0u64) += n;
        }
        message_count.insert(s.node_id, node_total);
        messages_by_node.insert(s.node_id, sent.cloned().unwrap_or_default());
        let received = s.messages_received.get(algorithm.as_str()).cloned().unwrap_or_default();
        messages_received_by_node.insert(s.node_id, received);
    }
    let total_messages: u64 = message_count.values().sum();

    let started = reports.iter().map(|r| r.started_ms).min_by(f64::total_cmp);
    let finished = reports.iter().map(|r| r.finished_ms).max_by(f64::total_cmp);
    let execution_time_s = match (started, finished) {
        (Some(s), Some(f)) if f > s => (f - s) / 1000.0,
        _ => 0.0,
    };
    let made = entries.len() as f64;
    let latency = charts::latency_stats(&entries);
    let time_origin_ms =
        entries.iter().map(|e| e.request_ms.min(e.enter_ms)).min_by(f64::total_cmp).unwrap_or(0.0);
    let entries = entries.into_iter().map(|e| EntryRecord::new(e, algorithm, time_origin_ms)).collect();
    ExperimentResult {
        algorithm,
        nodes,
        iterations,
        cs_ms,
        cs_history,
        shared_counter,
        expected_counter: verdict.expected_counter,
        message_count,
        messages_by_type,
        messages_by_node,
        messages_received_by_node,
        total_messages,
        messages_per_entry: if made > 0.0 { total_messages as f64 / made } else { 0.0 },
        textbook_per_entry: textbook_cost(algorithm, nodes),
        execution_time_s,
        entries_per_s: if execution_time_s > 0.0 { made / execution_time_s } else { 0.0 },
        verdict,
        time_origin_ms,
        latency,
        entries,
        node_stats: stats.to_vec(),
        log_dir: None,
    }
}

/// The seed-style report of one experiment.
pub fn format_results(r: &ExperimentResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "--- Final Results ({}, {} nodes × {} iterations, {} ms in the critical section) ---",
        r.algorithm, r.nodes, r.iterations, r.cs_ms
    );
    let shown: Vec<String> =
        r.cs_history.iter().take(HISTORY_SHOWN).map(|(n, t)| format!("({n}, {t})")).collect();
    let more = r.cs_history.len().saturating_sub(HISTORY_SHOWN);
    let tail = if more > 0 { format!(", … {more} more in results.json") } else { String::new() };
    let _ = writeln!(s, "cs_history: [{}{tail}]", shown.join(", "));
    let _ = writeln!(s, "shared_counter: {} (expected {})", r.shared_counter, r.expected_counter);
    let counts: Vec<String> = r.message_count.iter().map(|(n, c)| format!("{n}: {c}")).collect();
    let _ = writeln!(s, "message_count: {{{}}}", counts.join(", "));
    let mut kinds: Vec<(&String, &u64)> = r.messages_by_type.iter().collect();
    let rank = |k: &str| KIND_ORDER.iter().position(|o| *o == k).unwrap_or(KIND_ORDER.len());
    kinds.sort_by(|a, b| rank(a.0).cmp(&rank(b.0)).then(a.0.cmp(b.0)));
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let kinds = if kinds.is_empty() { "none".to_string() } else { kinds.join(", ") };
    let _ = writeln!(s, "messages by type: {kinds}");
    let _ = writeln!(
        s,
        "Total messages sent: {} ({:.1} per entry; textbook {})",
        r.total_messages, r.messages_per_entry, r.textbook_per_entry
    );
    let _ = writeln!(s, "Execution time: {:.3}s ({:.0} entries/s)", r.execution_time_s, r.entries_per_s);
    let _ = writeln!(s, "Verdict: {}", r.verdict.summary());
    s
}

/// The textbook messages per entry as a number: 3(N−1) for Lamport, 2(N−1) for Ricart–Agrawala; `None` for
/// probable-owner, whose cost depends on the owner hints.
pub fn textbook_per_entry(algorithm: Algorithm, nodes: usize) -> Option<u64> {
    let n1 = nodes.saturating_sub(1) as u64;
    match algorithm {
        Algorithm::Lamport => Some(3 * n1),
        Algorithm::RicartAgrawala => Some(2 * n1),
        Algorithm::ProbableOwner => None,
    }
}

/// The header of [`format_summary`]'s table.
const SUMMARY_HEADER: &str =
    "algorithm           N  entries   time (s)  entries/s  msgs/entry  textbook  verdict";

/// One row of [`format_summary`]'s table.
pub fn summary_row(r: &ExperimentResult) -> String {
    let textbook = textbook_per_entry(r.algorithm, r.nodes).map_or("—".to_string(), |t| t.to_string());
    format!(
        "{:<16} {:>4} {:>8} {:>10.3} {:>10.0} {:>11.1} {:>9}  {}",
        r.algorithm.as_str(),
        r.nodes,
        r.entries.len(),
        r.execution_time_s,
        r.entries_per_s,
        r.messages_per_entry,
        textbook,
        if r.verdict.ok { "OK" } else { "FAILED" }
    )
}

/// One row per experiment, for runs of several algorithms or sizes.
pub fn format_summary(results: &[ExperimentResult]) -> String {
    let mut s = format!("--- Summary ---\n{SUMMARY_HEADER}\n");
    for r in results {
        let _ = writeln!(s, "{}", summary_row(r));
    }
    s
}

/// The point an experiment contributes to a sweep's charts and CSV.
pub fn sweep_point(r: &ExperimentResult) -> SweepPoint {
    SweepPoint {
        algorithm: r.algorithm.as_str().to_string(),
        nodes: u32::try_from(r.nodes).unwrap_or(u32::MAX),
        entries: r.entries.len() as u64,
        messages: r.total_messages,
        execution_ms: r.execution_time_s * 1000.0,
    }
}

/// Writes an experiment's three charts into `dir`: `<algorithm>-gantt.svg`, `<algorithm>-latency.svg` and
/// `<algorithm>-messages.svg`. Returns the files written.
pub fn write_experiment_charts(dir: &Path, r: &ExperimentResult) -> anyhow::Result<Vec<PathBuf>> {
    let entries: Vec<CsEntry> = r.entries.iter().map(|e| e.entry.clone()).collect();
    let what = format!("{}, {} nodes × {} entries", r.algorithm, r.nodes, r.iterations);
    let charts = [
        ("gantt", charts::gantt(&entries, &format!("Critical sections over time ({what})"))?),
        ("latency", charts::latency(&entries, &format!("Waiting time per node ({what})"))?),
        ("messages", charts::messages(&r.messages_by_node, &format!("Messages sent per node ({what})"))?),
    ];
    let mut written = Vec::new();
    for (name, svg) in charts {
        let path = dir.join(format!("{}-{name}.svg", r.algorithm.as_str()));
        charts::write_svg(&path, &svg)?;
        written.push(path);
    }
    Ok(written)
}

/// Writes a sweep's `sweep.csv`, `sweep-time.svg` and `sweep-messages.svg` into `dir`.
pub fn write_sweep_outputs(
    dir: &Path,
    points: &[SweepPoint],
    iterations: u32,
    cs_ms: u64,
) -> anyhow::Result<()> {
    let csv = dir.join("sweep.csv");
    std::fs::write(&csv, charts::sweep_csv(points)).with_context(|| format!("writing {}", csv.display()))?;
    let per = format!("{iterations} entries per node, {cs_ms} ms in the critical section");
    let time = charts::sweep(points, SweepMetric::ExecutionTime, &format!("Execution time vs N ({per})"))?;
    charts::write_svg(dir.join("sweep-time.svg"), &time)?;
    let msgs =
        charts::sweep(points, SweepMetric::MessagesPerEntry, "Messages per critical-section entry vs N")?;
    charts::write_svg(dir.join("sweep-messages.svg"), &msgs)?;
    Ok(())
}

/// The loopback addresses of `nodes` nodes on `subnet` (`"127.0.0"` → 127.0.0.1 …).
pub fn node_addresses(subnet: &str, nodes: usize) -> anyhow::Result<Vec<Ipv4Addr>> {
    if nodes == 0 {
        bail!("a cluster needs at least one node");
    }
    if nodes > 254 {
        bail!("{nodes} nodes do not fit on {subnet}.1 … {subnet}.254 (at most 254)");
    }
    let probe: Ipv4Addr = format!("{subnet}.1")
        .parse()
        .map_err(|_| anyhow!("subnet {subnet:?} is not three octets such as \"127.0.0\""))?;
    let [a, b, c, _] = probe.octets();
    Ok((1..=nodes).map(|i| Ipv4Addr::new(a, b, c, i as u8)).collect())
}

/// The environment of node `id`'s process.
pub fn node_env(
    args: &ClusterArgs,
    algorithm: Algorithm,
    id: usize,
    addrs: &[Ipv4Addr],
    cluster_name: &str,
    counter_file: &Path,
) -> Vec<(&'static str, String)> {
    let peers: Vec<String> = addrs.iter().map(|a| format!("{a}:{}", args.peer_port)).collect();
    let me = addrs.get(id).copied().unwrap_or(Ipv4Addr::LOCALHOST);
    vec![
        ("DMUTEX_NODE_ID", id.to_string()),
        ("DMUTEX_PEERS", peers.join(",")),
        ("DMUTEX_PEER_ADDR", format!("{me}:{}", args.peer_port)),
        ("DMUTEX_HTTP_ADDR", format!("{me}:{}", args.http_port)),
        ("DMUTEX_ALGORITHM", algorithm.to_string()),
        ("DMUTEX_CLUSTER_NAME", cluster_name.to_string()),
        ("DMUTEX_LOG", "warn".into()),
        ("DMUTEX_WORKLOAD_ITERATIONS", args.iterations.to_string()),
        ("DMUTEX_WORKLOAD_CS_MS", args.cs_ms.to_string()),
        ("DMUTEX_WORKLOAD_LOCK", WORKLOAD_LOCK.into()),
        ("DMUTEX_WORKLOAD_COUNTER_FILE", counter_file.display().to_string()),
        ("DMUTEX_WORKLOAD_ALGORITHM", algorithm.to_string()),
        ("DMUTEX_LAMPORT_ACK_ELISION", args.lamport_ack_elision.to_string()),
    ]
}

/// The error of an experiment stopped by Ctrl-C (ends a sweep, unlike other failures).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
struct Interrupted;

/// Runs the experiment for the requested algorithm(s) and size(s), prints the results, writes the output
/// directory's files, and says whether all passed.
pub async fn run_cluster(args: &ClusterArgs) -> anyhow::Result<bool> {
    let sweeping = !args.sweep.is_empty();
    let sizes: Vec<usize> = if sweeping { args.sweep.clone() } else { vec![args.nodes] };
    // Every size is checked before the first experiment, so a bad list fails at once, not after minutes.
    for &n in &sizes {
        node_addresses(&args.subnet, n)?;
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this executable")?,
    };
    let algorithms: Vec<Algorithm> = args.algorithm.map_or(Algorithm::ALL.to_vec(), |a| vec![a]);
    // Unique even for two runs started in the same millisecond by one process (as the tests do).
    let run_id = format!("{}-{}-{:08x}", std::process::id(), unix_ms() as u64, rand::random::<u32>());
    // The shared counter lives in memory-backed /dev/shm when there is one, so the critical section measures
    // the lock, not the disk.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() && std::fs::metadata(shm).is_ok_and(|m| !m.permissions().readonly()) {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let root = base.join(format!("dmutex-cluster-{run_id}"));
    let client = reqwest::Client::builder().no_proxy().timeout(HTTP_TIMEOUT).build()?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    }

    let total = sizes.len() * algorithms.len();
    let started = Instant::now();
    let mut results: Vec<ExperimentResult> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    if sweeping {
        println!("{SUMMARY_HEADER}");
    }
    for &nodes in &sizes {
        for &algorithm in &algorithms {
            let dir =
                if sweeping { root.join(format!("n{nodes}")) } else { root.clone() }.join(algorithm.as_str());
            if sweeping {
                eprintln!(
                    "[{}/{total}] {algorithm}, N = {nodes} ({:.0} s elapsed)",
                    results.len() + failures.len() + 1,
                    started.elapsed().as_secs_f64()
                );
            }
            let outcome = run_experiment(&binary, args, nodes, algorithm, &client, &run_id, &dir).await;
            let result = match outcome {
                Ok(r) => r,
                Err(e) if sweeping && e.downcast_ref::<Interrupted>().is_none() => {
                    let msg = format!("{algorithm}, N = {nodes}: {e:#}");
                    eprintln!("FAILED {msg}");
                    failures.push(msg);
                    if let Some(out) = &args.out {
                        write_results(out, &results, sweeping, &failures)?;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if sweeping {
                println!("{}", summary_row(&result));
                if let (false, Some(log_dir)) = (result.verdict.ok, &result.log_dir) {
                    println!("  logs: {}", log_dir.display());
                }
            } else {
                print!("{}", format_results(&result));
                if let Some(log_dir) = &result.log_dir {
                    println!("Logs: {}", log_dir.display());
                }
                println!();
            }
            if let Some(out) = &args.out {
                let chart_dir = if sweeping { out.join(format!("n{nodes}")) } else { out.clone() };
                std::fs::create_dir_all(&chart_dir)
                    .with_context(|| format!("creating {}", chart_dir.display()))?;
                write_experiment_charts(&chart_dir, &result)?;
            }
            results.push(result);
            if let Some(out) = &args.out {
                write_results(out, &results, sweeping, &failures)?;
            }
        }
    }
    if !args.keep {
        // Removes the run's directories only when every experiment's directory went (remove_dir fails otherwise).
        if sweeping {
            for &nodes in &sizes {
                let _ = std::fs::remove_dir(root.join(format!("n{nodes}")));
            }
        }
        let _ = std::fs::remove_dir(&root);
    }
    if sweeping {
        println!();
    }
    if results.len() > 1 || sweeping {
        print!("{}", format_summary(&results));
    }
    for f in &failures {
        println!("FAILED {f}");
    }
    if sweeping {
        println!("Sweep of {total} experiments took {:.1} s", started.elapsed().as_secs_f64());
    }
    if let Some(out) = &args.out {
        if sweeping {
            let points: Vec<SweepPoint> = results.iter().map(sweep_point).collect();
            write_sweep_outputs(out, &points, args.iterations, args.cs_ms)?;
        }
        println!("Results written to {}", out.display());
    }
    Ok(failures.is_empty() && results.iter().all(|r| r.verdict.ok))
}

/// Runs one experiment: `nodes` nodes, one algorithm, logs and counter file in `dir`.
async fn run_experiment(
    binary: &Path,
    args: &ClusterArgs,
    nodes: usize,
    algorithm: Algorithm,
    client: &reqwest::Client,
    run_id: &str,
    dir: &Path,
) -> anyhow::Result<ExperimentResult> {
    let addrs = node_addresses(&args.subnet, nodes)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let counter_file = dir.join("counter");
    std::fs::write(&counter_file, "0").with_context(|| format!("creating {}", counter_file.display()))?;
    let cluster_name = format!("dmutex-cluster-{run_id}-{nodes}-{algorithm}");

    let mut cluster = Cluster::start(binary, args, algorithm, &addrs, &cluster_name, &counter_file, dir)?;
    let outcome = tokio::select! {
        r = cluster.drive(client, args, algorithm) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::Error::new(Interrupted)),
    };
    cluster.stop().await;
    let (reports, stats) =
        outcome.with_context(|| format!("{algorithm} experiment failed; logs in {}", dir.display()))?;

    let shared_counter = read_counter(&counter_file).await.map_err(|e| anyhow!(e))?;
    let mut result =
        summarize(algorithm, nodes, args.iterations, args.cs_ms, &reports, &stats, shared_counter);
    if args.lamport_ack_elision && algorithm == Algorithm::Lamport {
        result
            .textbook_per_entry
            .push_str(" (footnote option on: a REPLY made redundant by a later message is skipped)");
    }
    if result.verdict.ok && !args.keep {
        // Best effort: a leftover temporary directory is harmless.
        let _ = std::fs::remove_dir_all(dir);
    } else {
        result.log_dir = Some(dir.to_path_buf());
    }
    Ok(result)
}

/// Writes `out/results.json`: every experiment so far (and, in a sweep, its points and failures).
fn write_results(
    out: &Path,
    results: &[ExperimentResult],
    sweeping: bool,
    failures: &[String],
) -> anyhow::Result<()> {
    let mut doc = serde_json::json!({
        "ok": failures.is_empty() && results.iter().all(|r| r.verdict.ok),
        "experiments": results,
    });
    if sweeping {
        let points: Vec<SweepPoint> = results.iter().map(sweep_point).collect();
        doc["sweep"] = serde_json::to_value(points)?;
        doc["failures"] = serde_json::to_value(failures)?;
    }
    let path = out.join("results.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// One node process.
struct NodeProc {
    id: usize,
    http: SocketAddr,
    log: PathBuf,
    child: Child,
}

impl NodeProc {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// An error if the process has exited, naming it and showing the end of its log.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "node {} exited early ({status}); its log: {}{}",
                self.id,
                self.log.display(),
                log_tail(&self.log)
            ),
            Err(e) => bail!("node {}: cannot query its process: {e}", self.id),
        }
    }
}

/// The last lines of a log, indented, for an error message.
fn log_tail(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else { return String::new() };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(12)..];
    if tail.is_empty() {
        return String::new();
    }
    format!("\n  | {}", tail.join("\n  | "))
}

/// The N node processes of one experiment.
struct Cluster {
    nodes: Vec<NodeProc>,
}

impl Cluster {
    fn start(
        binary: &Path,
        args: &ClusterArgs,
        algorithm: Algorithm,
        addrs: &[Ipv4Addr],
        cluster_name: &str,
        counter_file: &Path,
        dir: &Path,
    ) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster { nodes: Vec::with_capacity(addrs.len()) };
        for (id, addr) in addrs.iter().enumerate() {
            let log = dir.join(format!("node-{id}.log"));
            let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let child = Command::new(binary)
                .arg("node")
                .envs(node_env(args, algorithm, id, addrs, cluster_name, counter_file))
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {} node", binary.display()))?;
            let http = SocketAddr::from((*addr, args.http_port));
            cluster.nodes.push(NodeProc { id, http, log, child });
        }
        Ok(cluster)
    }

    /// Waits for readiness, runs the workload to its end showing progress, and collects reports and stats.
    async fn drive(
        &mut self,
        client: &reqwest::Client,
        args: &ClusterArgs,
        algorithm: Algorithm,
    ) -> anyhow::Result<(Vec<WorkloadReport>, Vec<NodeStats>)> {
        let mut progress = Progress::new(algorithm);
        self.wait_ready(client, args).await?;
        let reports = self.poll_workload(client, args, &mut progress).await?;
        let mut stats = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let s: NodeStats = get_json(client, &node.url("/v1/stats"))
                .await
                .with_context(|| format!("node {}: GET /v1/stats", node.id))?;
            stats.push(s);
        }
        Ok((reports, stats))
    }

    async fn wait_ready(&mut self, client: &reqwest::Client, args: &ClusterArgs) -> anyhow::Result<()> {
        let timeout = READY_TIMEOUT + READY_PER_NODE * u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        let deadline = Instant::now() + timeout;
        let mut pending: BTreeSet<usize> = (0..self.nodes.len()).collect();
        loop {
            for node in &mut self.nodes {
                if !pending.contains(&node.id) {
                    continue;
                }
                node.check_alive()?;
                let ready =
                    client.get(node.url("/readyz")).send().await.is_ok_and(|r| r.status().is_success());
                if ready {
                    pending.remove(&node.id);
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut msg = format!("not every node became ready within {} s:", timeout.as_secs());
                for node in self.nodes.iter().filter(|n| pending.contains(&n.id)) {
                    let _ = write!(
                        msg,
                        "\n  node {} (http://{}/readyz), log: {}",
                        node.id,
                        node.http,
                        node.log.display()
                    );
                }
                if let Some(first) = self.nodes.iter().find(|n| pending.contains(&n.id)) {
                    msg.push_str(&log_tail(&first.log));
                }
                let _ = write!(
                    msg,
                    "\nEach node listens on its own loopback address ({sub}.1 … {sub}.{n}), ports {pp} (peers) and \
                     {hp} (HTTP). On Linux all of 127.0.0.0/8 is usable; elsewhere add aliases (macOS: `sudo \
                     ifconfig lo0 alias 127.0.0.2 up` …). If a port is taken, choose others with --peer-port / \
                     --http-port.",
                    sub = args.subnet,
                    n = self.nodes.len(),
                    pp = args.peer_port,
                    hp = args.http_port
                );
                bail!(msg);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `/v1/workload` until every node finished; returns the reports in node order.
    async fn poll_workload(
        &mut self,
        client: &reqwest::Client,
        args: &ClusterArgs,
        progress: &mut Progress,
    ) -> anyhow::Result<Vec<WorkloadReport>> {
        let n = self.nodes.len();
        // Polling competes with the nodes for the CPU: poll large clusters less often.
        let interval = Duration::from_millis((n as u64 * 10).max(250));
        // The whole cluster makes at least one entry per N critical sections' time unless it is stuck.
        let stall_limit =
            Duration::from_secs(60).max(Duration::from_millis(args.cs_ms.saturating_mul(n as u64 * 3)));
        let mut statuses: Vec<WorkloadStatus> = vec![WorkloadStatus::waiting(args.iterations); n];
        let mut reports: Vec<Option<WorkloadReport>> = vec![None; n];
        let mut last_done = 0u32;
        let mut last_change = Instant::now();
        loop {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                node.check_alive()?;
                let response = client.get(node.url("/v1/workload")).send().await;
                let response = match response {
                    Ok(r) => r,
                    Err(_) => continue, // a busy node; the stall limit catches one that never answers
                };
                if response.status() == reqwest::StatusCode::NOT_FOUND {
                    bail!(
                        "node {} has no workload configured (GET /v1/workload: 404); log: {}",
                        i,
                        node.log.display()
                    );
                }
                let body: WorkloadResponse = match response.error_for_status() {
                    Ok(r) => r.json().await.with_context(|| format!("node {i}: GET /v1/workload body"))?,
                    Err(_) => continue,
                };
                statuses[i] = body.status;
                if body.report.is_some() {
                    reports[i] = body.report;
                }
            }
            progress.show(&statuses);
            let finished = statuses.iter().zip(&reports).all(|(s, r)| s.finished() && r.is_some());
            if finished {
                progress.finish(&statuses);
                return Ok(reports.into_iter().flatten().collect());
            }
            let done: u32 = statuses.iter().map(|s| s.done).sum();
            if done != last_done {
                last_done = done;
                last_change = Instant::now();
            } else if last_change.elapsed() > stall_limit {
                progress.finish(&statuses);
                let stuck: Vec<String> = self
                    .nodes
                    .iter()
                    .zip(&statuses)
                    .filter(|(_, s)| !s.finished())
                    .map(|(node, s)| {
                        format!("node {} ({}/{}, log {})", node.id, s.done, s.total, node.log.display())
                    })
                    .collect();
                bail!("no progress for {} s; unfinished: {}", stall_limit.as_secs(), stuck.join(", "));
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// SIGTERM to every child, then SIGKILL to those still running after [`STOP_GRACE`].
    async fn stop(&mut self) {
        let pids: Vec<String> =
            self.nodes.iter().filter_map(|n| n.child.id()).map(|p| p.to_string()).collect();
        if !pids.is_empty() {
            // `kill(1)` rather than libc: this crate forbids unsafe code.
            let _ = Command::new("kill")
                .arg("-TERM")
                .args(&pids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await;
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for node in &mut self.nodes {
            if tokio::time::timeout_at(deadline, node.child.wait()).await.is_err() {
                let _ = node.child.kill().await;
            }
        }
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(client: &reqwest::Client, url: &str) -> anyhow::Result<T> {
    let response = client.get(url).send().await?.error_for_status()?;
    Ok(response.json().await?)
}

/// Progress output on stderr: one updating line on a terminal, a plain line every few seconds otherwise.
struct Progress {
    algorithm: Algorithm,
    tty: bool,
    /// When the nodes were started.
    started: Instant,
    /// The first poll that saw a node running its workload: the rate shown counts from there, so start-up
    /// is left out (the summary's exact figure runs from the first node ready to the last entry).
    running_since: Option<Instant>,
    /// When the last plain line was printed, and what it said (the final line is not printed twice).
    last_line: Option<(Instant, String)>,
}

impl Progress {
    const PLAIN_EVERY: Duration = Duration::from_secs(2);

    fn new(algorithm: Algorithm) -> Self {
        Progress {
            algorithm,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            running_since: None,
            last_line: None,
        }
    }

    /// The progress line; `finished`: the last one, which leaves the rate to the summary (polling only
    /// sees the end up to one poll interval late).
    fn line(&mut self, statuses: &[WorkloadStatus], finished: bool) -> String {
        let done: u32 = statuses.iter().map(|s| s.done).sum();
        let total: u32 = statuses.iter().map(|s| s.total).sum();
        let secs = self.started.elapsed().as_secs_f64();
        if self.running_since.is_none() && statuses.iter().any(|s| s.state != WorkloadState::Waiting) {
            self.running_since = Some(Instant::now());
        }
        let rate = match self.running_since {
            _ if finished => String::new(),
            Some(t) if t.elapsed().as_secs_f64() > 0.05 => {
                format!(", {:.0} entries/s", f64::from(done) / t.elapsed().as_secs_f64())
            }
            _ => String::new(),
        };
        let per_node = if statuses.len() <= 12 {
            statuses
                .iter()
                .enumerate()
                .map(|(i, s)| format!("[{i}] {}/{}", s.done, s.total))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            let min = statuses.iter().map(|s| s.done).min().unwrap_or(0);
            let max = statuses.iter().map(|s| s.done).max().unwrap_or(0);
            let finished = statuses.iter().filter(|s| s.finished()).count();
            format!("{finished}/{} nodes finished, per node {min}…{max}", statuses.len())
        };
        format!(
            "{} (N = {}): {per_node} | {done}/{total} entries{rate}, {secs:.1} s",
            self.algorithm,
            statuses.len()
        )
    }

    fn show(&mut self, statuses: &[WorkloadStatus]) {
        if statuses.iter().all(WorkloadStatus::finished) {
            return; // `finish` prints the last line
        }
        let line = self.line(statuses, false);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if self.last_line.as_ref().is_none_or(|(t, _)| t.elapsed() >= Self::PLAIN_EVERY) {
            let _ = writeln!(err, "{line}");
            self.last_line = Some((Instant::now(), line));
        }
    }

    fn finish(&mut self, statuses: &[WorkloadStatus]) {
        let line = self.line(statuses, true);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(err, "\r\x1b[2K{line}");
        } else if self.last_line.as_ref().is_none_or(|(_, last)| *last != line) {
            let _ = writeln!(err, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::workload::WorkloadState;

    fn entry(node: u16, iteration: u32, token: u64, enter: f64, exit: f64, read: u64) -> CsEntry {
        CsEntry {
            node,
            lock: "counter".into(),
            iteration,
            fencing_token: token,
            lamport_clock_at_enter: token,
            request_ms: enter - 1.0,
            enter_ms: enter,
            exit_ms: exit,
            counter_read: read,
            counter_written: read + 1,
        }
    }

    fn report(node: u16, iterations: u32, entries: Vec<CsEntry>) -> WorkloadReport {
        let started_ms = entries.first().map_or(0.0, |e| e.request_ms);
        let finished_ms = entries.last().map_or(0.0, |e| e.exit_ms);
        WorkloadReport {
            node,
            algorithm: Algorithm::Lamport,
            iterations,
            entries,
            errors: vec![],
            started_ms,
            finished_ms,
        }
    }

    /// Two nodes × two entries, taking turns: 0, 1, 0, 1.
    fn clean_run() -> Vec<WorkloadReport> {
        vec![
            report(0, 2, vec![entry(0, 0, 10, 1000.0, 1010.0, 0), entry(0, 1, 30, 1020.0, 1030.0, 2)]),
            report(1, 2, vec![entry(1, 0, 20, 1010.0, 1020.0, 1), entry(1, 1, 40, 1030.0, 1040.0, 3)]),
        ]
    }

    fn stats(node: u16, request: u64, reply: u64, release: u64) -> NodeStats {
        let kinds = BTreeMap::from([
            ("REQUEST".to_string(), request),
            ("REPLY".to_string(), reply),
            ("RELEASE".to_string(), release),
        ]);
        NodeStats {
            node_id: node,
            messages_sent: BTreeMap::from([("lamport".to_string(), kinds)]),
            messages_sent_total: request + reply + release,
            ..NodeStats::default()
        }
    }

    #[test]
    fn a_clean_run_passes() {
        let v = analyze(&clean_run(), 2, 2, 4);
        assert!(v.ok, "{v:?}");
        assert!(v.summary().starts_with("OK"));
    }

    #[test]
    fn overlapping_sections_are_found() {
        let mut reports = clean_run();
        // Node 1's second entry starts 2 ms before node 0's second one exits.
        reports[1].entries[1].enter_ms = 1028.0;
        let v = analyze(&reports, 2, 2, 4);
        assert!(!v.ok);
        assert_eq!(v.overlaps.len(), 1);
        let o = &v.overlaps[0];
        assert_eq!((o.first.node, o.first.iteration, o.second.node, o.second.iteration), (0, 1, 1, 1));
        assert!((o.overlap_ms - 2.0).abs() < 1e-9);
        assert!(v.summary().contains("1 overlapping"), "{}", v.summary());
    }

    #[test]
    fn an_entry_inside_a_long_one_overlaps_it_even_past_a_short_one() {
        // A: 0..100, B: 10..20, C: 50..60 — C overlaps A although B (its predecessor) exited.
        let reports = vec![
            report(0, 1, vec![entry(0, 0, 1, 0.0, 100.0, 0)]),
            report(1, 1, vec![entry(1, 0, 2, 10.0, 20.0, 0)]),
            report(2, 1, vec![entry(2, 0, 3, 50.0, 60.0, 0)]),
        ];
        let v = analyze(&reports, 3, 1, 3);
        assert_eq!(v.overlaps.len(), 2);
        assert!(v.overlaps.iter().all(|o| o.first.node == 0));
    }

    #[test]
    fn touching_sections_do_not_overlap() {
        let reports = vec![
            report(0, 1, vec![entry(0, 0, 1, 0.0, 10.0, 0)]),
            report(1, 1, vec![entry(1, 0, 2, 10.0, 20.0, 1)]),
        ];
        assert!(analyze(&reports, 2, 1, 2).ok);
    }

    #[test]
    fn tokens_must_strictly_increase_in_entry_order() {
        let mut reports = clean_run();
        reports[1].entries[0].fencing_token = 10; // equal to the previous entry's
        let v = analyze(&reports, 2, 2, 4);
        assert!(!v.ok);
        assert_eq!(v.token_inversions.len(), 1);
        let (a, b) = v.token_inversions[0];
        assert_eq!((a.node, b.node, a.fencing_token, b.fencing_token), (0, 1, 10, 10));
        assert!(v.summary().contains("fencing token"), "{}", v.summary());
    }

    #[test]
    fn a_lost_update_fails() {
        let v = analyze(&clean_run(), 2, 2, 3);
        assert!(!v.ok);
        assert!(v.summary().contains("1 lost update(s) (counter 3, expected 4)"), "{}", v.summary());
    }

    #[test]
    fn missing_entries_errors_and_reports_fail() {
        let mut reports = clean_run();
        reports[0].entries.pop();
        reports[0].errors.push("iteration 1: acquire \"counter\": timed out".into());
        let v = analyze(&reports, 3, 2, 3);
        assert!(!v.ok);
        assert_eq!(
            v.incomplete,
            vec![
                "node 0: 1/2 entries".to_string(),
                "node 0: iteration 1: acquire \"counter\": timed out".to_string(),
                "node 2: no report".to_string(),
            ]
        );
    }

    #[test]
    fn results_are_formatted_like_the_seed() {
        let stats = vec![stats(0, 2, 2, 2), stats(1, 2, 2, 2)];
        let r = summarize(Algorithm::Lamport, 2, 2, 0, &clean_run(), &stats, 4);
        let text = format_results(&r);
        let expected = "\
--- Final Results (lamport, 2 nodes × 2 iterations, 0 ms in the critical section) ---
cs_history: [(0, 10), (1, 20), (0, 30), (1, 40)]
shared_counter: 4 (expected 4)
message_count: {0: 6, 1: 6}
messages by type: REQUEST 4, REPLY 4, RELEASE 4
Total messages sent: 12 (3.0 per entry; textbook 3(N−1) = 3)
Execution time: 0.041s (98 entries/s)
Verdict: OK — no overlapping critical sections, no lost update, fencing tokens strictly increasing
";
        assert_eq!(text, expected);
        assert_eq!(r.entries.len(), 4);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["shared_counter"], 4);
        assert_eq!(json["cs_history"][1], serde_json::json!([1, 20]));
        assert_eq!(json["message_count"]["0"], 6);
        assert_eq!(json["verdict"]["ok"], true);
        assert!(format_summary(&[r]).contains("lamport"));
    }

    #[test]
    fn addresses_and_environment() {
        let addrs = node_addresses("127.0.0", 3).unwrap();
        assert_eq!(
            addrs,
            vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]
        );
        assert_eq!(node_addresses("127.0.0", 254).unwrap().last(), Some(&Ipv4Addr::new(127, 0, 0, 254)));
        assert!(node_addresses("127.0.0", 255).is_err());
        assert!(node_addresses("127.0.0", 0).is_err());
        assert!(node_addresses("127.0.0.0", 2).is_err());
        assert!(node_addresses("localhost", 2).is_err());

        let args = ClusterArgs {
            nodes: 3,
            iterations: 10,
            cs_ms: 5,
            algorithm: None,
            subnet: "127.0.0".into(),
            peer_port: 7070,
            http_port: 8080,
            out: None,
            keep: false,
            binary: None,
            sweep: vec![],
            lamport_ack_elision: true,
        };
        let env: BTreeMap<_, _> =
            node_env(&args, Algorithm::RicartAgrawala, 1, &addrs, "c1", Path::new("/tmp/x/counter"))
                .into_iter()
                .collect();
        assert_eq!(env["DMUTEX_NODE_ID"], "1");
        assert_eq!(env["DMUTEX_PEERS"], "127.0.0.1:7070,127.0.0.2:7070,127.0.0.3:7070");
        assert_eq!(env["DMUTEX_PEER_ADDR"], "127.0.0.2:7070");
        assert_eq!(env["DMUTEX_HTTP_ADDR"], "127.0.0.2:8080");
        assert_eq!(env["DMUTEX_ALGORITHM"], "ricart-agrawala");
        assert_eq!(env["DMUTEX_WORKLOAD_ALGORITHM"], "ricart-agrawala");
        assert_eq!(env["DMUTEX_WORKLOAD_ITERATIONS"], "10");
        assert_eq!(env["DMUTEX_WORKLOAD_CS_MS"], "5");
        assert_eq!(env["DMUTEX_WORKLOAD_COUNTER_FILE"], "/tmp/x/counter");
        assert_eq!(env["DMUTEX_CLUSTER_NAME"], "c1");
        assert_eq!(env["DMUTEX_LAMPORT_ACK_ELISION"], "true");
    }

    #[test]
    fn workload_response_shape() {
        let body =
            serde_json::json!({"status": {"state": "running", "done": 3, "total": 10}, "report": null});
        let r: WorkloadResponse = serde_json::from_value(body).unwrap();
        assert_eq!(r.status.state, WorkloadState::Running);
        assert!(r.report.is_none());
        let stats: NodeStats = serde_json::from_value(serde_json::json!({
            "node_id": 2, "incarnation": 123,
            "messages_sent": {"lamport": {"REQUEST": 4, "REPLY": 4, "RELEASE": 4}, "probable-owner": {}},
            "messages_received": {}, "messages_sent_total": 12, "grants": {"lamport": 10}, "lamport_clock": 57
        }))
        .unwrap();
        assert_eq!(stats.messages_sent["lamport"]["REPLY"], 4);
        assert_eq!(stats.lamport_clock, 57);
    }
}
