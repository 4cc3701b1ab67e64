//! The results of a `dmutex cluster` experiment: the figures printed in the original programs' format, the
//! summary table, `results.json`, and the charts and CSV files of an output directory.

use crate::algo::Algorithm;
use crate::api::types::Stats;
use crate::experiment::charts::{self, ChartError, LatencyStats, SweepMetric, SweepPoint};
use crate::experiment::error::ExperimentError;
use crate::experiment::verdict::{Verdict, analyze, entry_order};
use crate::experiment::workload::{CsEntry, WorkloadReport};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Message types in the order the papers introduce them; others follow alphabetically.
const KIND_ORDER: [&str; 3] = ["REQUEST", "REPLY", "RELEASE"];
/// `cs_history` longer than this is shortened on screen (results.json has it all).
const HISTORY_SHOWN: usize = 200;

/// The textbook message cost of one entry (Singhal & Shivaratri 1994, Table 6.1), as printed.
pub(crate) fn textbook_cost(algorithm: Algorithm, nodes: usize) -> String {
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
    pub(crate) fn new(entry: CsEntry, algorithm: Algorithm, origin_ms: f64) -> Self {
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
    pub node_stats: Vec<Stats>,
    /// Where the nodes' logs were written (deleted after a passing run unless kept).
    pub log_dir: Option<PathBuf>,
}

/// Builds an experiment's results from the nodes' reports and stats and the counter's final value.
pub(crate) fn summarize(
    algorithm: Algorithm,
    nodes: usize,
    iterations: u32,
    cs_ms: u64,
    reports: &[WorkloadReport],
    stats: &[Stats],
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

/// `1 node`, `3 nodes`: a count and its noun, singular or plural.
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 { format!("1 {one}") } else { format!("{n} {many}") }
}

/// The report of one experiment, in the original programs' form.
pub fn format_results(r: &ExperimentResult) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "--- Final Results ({}, {} × {}, {} ms in the critical section) ---",
        r.algorithm,
        count(r.nodes as u64, "node", "nodes"),
        count(u64::from(r.iterations), "iteration", "iterations"),
        r.cs_ms
    );
    let shown: Vec<String> =
        r.cs_history.iter().take(HISTORY_SHOWN).map(|(n, t)| format!("({n}, {t})")).collect();
    let more = r.cs_history.len().saturating_sub(HISTORY_SHOWN);
    let tail = if more > 0 { format!(", … {more} more in results.json") } else { String::new() };
    let _ = writeln!(s, "cs_history (node, fencing token): [{}{tail}]", shown.join(", "));
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
pub(crate) fn textbook_per_entry(algorithm: Algorithm, nodes: usize) -> Option<u64> {
    let n1 = nodes.saturating_sub(1) as u64;
    match algorithm {
        Algorithm::Lamport => Some(3 * n1),
        Algorithm::RicartAgrawala => Some(2 * n1),
        Algorithm::ProbableOwner => None,
    }
}

/// The header of [`format_summary`]'s table.
pub(crate) const SUMMARY_HEADER: &str =
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
pub(crate) fn sweep_point(r: &ExperimentResult) -> SweepPoint {
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
pub(crate) fn write_experiment_charts(dir: &Path, r: &ExperimentResult) -> Result<Vec<PathBuf>, ChartError> {
    let entries: Vec<CsEntry> = r.entries.iter().map(|e| e.entry.clone()).collect();
    let what = format!(
        "{}, {} × {}",
        r.algorithm,
        count(r.nodes as u64, "node", "nodes"),
        count(u64::from(r.iterations), "entry", "entries")
    );
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
pub(crate) fn write_sweep_outputs(
    dir: &Path,
    points: &[SweepPoint],
    iterations: u32,
    cs_ms: u64,
) -> Result<(), ExperimentError> {
    let csv = dir.join("sweep.csv");
    std::fs::write(&csv, charts::sweep_csv(points))
        .map_err(ExperimentError::io(format!("writing {}", csv.display())))?;
    let per = format!("{iterations} entries per node, {cs_ms} ms in the critical section");
    let time = charts::sweep(points, SweepMetric::ExecutionTime, &format!("Execution time vs N ({per})"))?;
    charts::write_svg(dir.join("sweep-time.svg"), &time)?;
    let msgs =
        charts::sweep(points, SweepMetric::MessagesPerEntry, "Messages per critical-section entry vs N")?;
    charts::write_svg(dir.join("sweep-messages.svg"), &msgs)?;
    Ok(())
}

/// Writes `out/results.json`: every experiment so far (and, in a sweep, its points and failures).
pub(crate) fn write_results(
    out: &Path,
    results: &[ExperimentResult],
    sweeping: bool,
    failures: &[String],
) -> Result<(), ExperimentError> {
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
        .map_err(ExperimentError::io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::verdict::tests::clean_run;

    fn stats(node: u16, request: u64, reply: u64, release: u64) -> Stats {
        let kinds = BTreeMap::from([
            ("REQUEST".to_string(), request),
            ("REPLY".to_string(), reply),
            ("RELEASE".to_string(), release),
        ]);
        Stats {
            node_id: node,
            messages_sent: BTreeMap::from([("lamport".to_string(), kinds)]),
            messages_sent_total: request + reply + release,
            ..Stats::default()
        }
    }

    #[test]
    fn results_are_formatted_like_the_seed() {
        let stats = vec![stats(0, 2, 2, 2), stats(1, 2, 2, 2)];
        let r = summarize(Algorithm::Lamport, 2, 2, 0, &clean_run(), &stats, 4);
        let text = format_results(&r);
        let expected = "\
--- Final Results (lamport, 2 nodes × 2 iterations, 0 ms in the critical section) ---
cs_history (node, fencing token): [(0, 10), (1, 20), (0, 30), (1, 40)]
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
    fn one_node_is_singular() {
        assert_eq!(count(1, "node", "nodes"), "1 node");
        assert_eq!(count(0, "node", "nodes"), "0 nodes");
        assert_eq!(count(5, "entry", "entries"), "5 entries");
        let run = clean_run();
        let r = summarize(Algorithm::Lamport, 1, 1, 0, &run[..1], &[stats(0, 0, 0, 0)], 2);
        assert!(format_results(&r).starts_with("--- Final Results (lamport, 1 node × 1 iteration, 0 ms"));
    }
}
