//! `dmutex cluster --out DIR` end to end with real node processes: the built binary runs a small
//! experiment (or sweep) as a subprocess, then the test reads what it wrote — `results.json`, the SVG charts,
//! `sweep.csv` — and checks it against the printed output, against the nodes' `/v1/stats` (recorded in
//! `results.json` as each node answered it), and against mutual exclusion itself.
//!
//! Each test uses its own loopback subnet and ports, so the tests run in parallel with each other and with the
//! other process tests. Sizes are small (N ≤ 3, K ≤ 6) to keep them to a few seconds.

use dmutex::algo::Algorithm;
use dmutex::experiment::charts::{DATA_OPACITY, PALETTE, WARNING_COLOUR};
use dmutex::experiment::report::{ExperimentResult, format_results, format_summary, summary_row};
use plotters::style::RGBColor;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Runs `dmutex cluster <args> --out <dir>` and returns its stdout (the command must succeed).
fn run_cluster(args: &[&str], out: &Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_dmutex"))
        .arg("cluster")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .expect("running dmutex cluster");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "dmutex cluster failed ({})\n{stdout}\n{stderr}", output.status);
    stdout
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn experiments(doc: &Value) -> Vec<ExperimentResult> {
    serde_json::from_value(doc["experiments"].clone()).expect("experiments parse as ExperimentResult")
}

/// The SVG file parsed (panics unless it is well-formed XML).
fn svg(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if let Err(e) = roxmltree::Document::parse(&text) {
        panic!("{} is not well-formed XML: {e}", path.display());
    }
    text
}

fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

/// Data marks (`tag` elements with the data opacity) per fill colour.
fn data_marks(text: &str, tag: &str) -> BTreeMap<String, usize> {
    let doc = roxmltree::Document::parse(text).unwrap();
    let opacity = DATA_OPACITY.to_string();
    let mut by_fill = BTreeMap::new();
    for n in doc.descendants().filter(|n| n.has_tag_name(tag)) {
        if n.attribute("opacity") == Some(opacity.as_str())
            && let Some(fill) = n.attribute("fill")
        {
            *by_fill.entry(fill.to_ascii_uppercase()).or_insert(0) += 1;
        }
    }
    by_fill
}

/// Polylines stroked in `c`.
fn polylines(text: &str, c: RGBColor) -> usize {
    let doc = roxmltree::Document::parse(text).unwrap();
    doc.descendants()
        .filter(|n| {
            n.has_tag_name("polyline")
                && n.attribute("stroke").is_some_and(|s| s.eq_ignore_ascii_case(&hex(c)))
        })
        .count()
}

fn texts(text: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(text).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect()
}

/// The number after `prefix` on the first stdout line starting with it, for `algorithm`'s block.
fn printed_number(stdout: &str, algorithm: Algorithm, prefix: &str) -> u64 {
    let block = stdout
        .split("--- Final Results (")
        .find(|b| b.starts_with(&format!("{algorithm},")))
        .unwrap_or_else(|| panic!("no results block for {algorithm}"));
    let line = block.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line"));
    let digits: String = line[prefix.len()..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// Mutual exclusion and fencing as recorded: per lock, in entry order, no interval starts before the previous
/// one ended and tokens strictly increase.
fn check_entries(r: &ExperimentResult) {
    let mut by_lock: BTreeMap<&str, Vec<_>> = BTreeMap::new();
    for e in &r.entries {
        by_lock.entry(e.entry.lock.as_str()).or_default().push(e);
    }
    for (lock, mut es) in by_lock {
        es.sort_by(|a, b| a.entry.enter_ms.total_cmp(&b.entry.enter_ms));
        for w in es.windows(2) {
            let (a, b) = (&w[0].entry, &w[1].entry);
            assert!(
                b.enter_ms >= a.exit_ms,
                "{}: {lock}: node {} entered at {} before node {} left at {}",
                r.algorithm,
                b.node,
                b.enter_ms,
                a.node,
                a.exit_ms
            );
            assert!(
                b.fencing_token > a.fencing_token,
                "{}: tokens {} then {}",
                r.algorithm,
                a.fencing_token,
                b.fencing_token
            );
        }
    }
    for e in &r.entries {
        let c = &e.entry;
        assert!(c.request_ms <= c.enter_ms && c.enter_ms <= c.exit_ms, "{c:?}");
        assert!((e.enter_at_ms - (c.enter_ms - r.time_origin_ms)).abs() < 1e-6);
        assert!(e.request_at_ms >= 0.0 && e.wait_ms >= 0.0 && e.hold_ms >= 0.0);
        match r.algorithm {
            Algorithm::Lamport | Algorithm::RicartAgrawala => {
                let ts = e.request_timestamp.expect("a Lamport timestamp");
                assert_eq!(ts, c.fencing_token >> 16);
                assert_eq!(c.fencing_token & 0xffff, u64::from(c.node), "the token's low bits are the node");
                assert!(ts <= c.lamport_clock_at_enter, "the request precedes the enter: {e:?}");
            }
            Algorithm::ProbableOwner => assert_eq!(e.request_timestamp, None),
        }
    }
}

/// `results.json` against the nodes' `/v1/stats` (as recorded) and the textbook costs.
fn check_stats(r: &ExperimentResult) {
    let alg = r.algorithm.as_str();
    assert_eq!(r.node_stats.len(), r.nodes);
    let mut sent_by_type: BTreeMap<String, u64> = BTreeMap::new();
    let mut received_by_type: BTreeMap<String, u64> = BTreeMap::new();
    for s in &r.node_stats {
        let sent = s.messages_sent.get(alg).cloned().unwrap_or_default();
        assert_eq!(r.messages_by_node[&s.node_id], sent, "node {}", s.node_id);
        assert_eq!(r.message_count[&s.node_id], sent.values().sum::<u64>(), "node {}", s.node_id);
        assert_eq!(s.grants.get(alg).copied(), Some(u64::from(r.iterations)), "node {} grants", s.node_id);
        for (k, v) in sent {
            *sent_by_type.entry(k).or_default() += v;
        }
        for (k, v) in s.messages_received.get(alg).cloned().unwrap_or_default() {
            *received_by_type.entry(k).or_default() += v;
        }
        let per_node = r.entries.iter().filter(|e| e.entry.node == s.node_id).count();
        assert_eq!(per_node, r.iterations as usize);
    }
    assert_eq!(sent_by_type, r.messages_by_type);
    assert_eq!(r.total_messages, sent_by_type.values().sum::<u64>());
    // A message can still be in flight when its receiver is asked, never received without being sent.
    for (k, v) in &received_by_type {
        assert!(*v <= sent_by_type.get(k).copied().unwrap_or(0), "{alg} {k}: received {v} > sent");
    }
    let entries = r.entries.len() as u64;
    let n1 = r.nodes as u64 - 1;
    match r.algorithm {
        Algorithm::Lamport => assert_eq!(r.total_messages, 3 * n1 * entries),
        Algorithm::RicartAgrawala => assert_eq!(r.total_messages, 2 * n1 * entries),
        Algorithm::ProbableOwner => assert!(r.total_messages <= (r.nodes as u64 + 1) * entries),
    }
}

#[test]
fn results_json_and_charts_of_a_real_3_node_experiment() {
    const N: usize = 3;
    const K: u32 = 6;
    let out = tempfile::tempdir().unwrap();
    let stdout = run_cluster(
        &[
            "--nodes",
            "3",
            "--iterations",
            "6",
            "--cs-ms",
            "2",
            "--algorithm",
            "all",
            "--subnet",
            "127.66.1",
            "--peer-port",
            "27170",
            "--http-port",
            "28180",
        ],
        out.path(),
    );
    let doc = read_json(&out.path().join("results.json"));
    assert_eq!(doc["ok"], true);
    let results = experiments(&doc);
    assert_eq!(results.iter().map(|r| r.algorithm).collect::<Vec<_>>(), Algorithm::ALL.to_vec());

    // The printed summary is results.json's, number for number.
    for r in &results {
        assert!(stdout.contains(&format_results(r)), "printed results differ from results.json:\n{stdout}");
        assert_eq!(printed_number(&stdout, r.algorithm, "shared_counter:"), r.shared_counter);
        assert_eq!(printed_number(&stdout, r.algorithm, "Total messages sent:"), r.total_messages);
        assert_eq!(r.shared_counter, (N as u64) * u64::from(K));
        assert!(r.verdict.ok, "{:?}", r.verdict);
        assert_eq!(r.entries.len(), N * K as usize);
        assert_eq!(
            r.cs_history,
            r.entries.iter().map(|e| (e.entry.node, e.entry.fencing_token)).collect::<Vec<_>>()
        );
        check_entries(r);
        check_stats(r);
        assert_eq!(r.latency.len(), N);
        assert!(r.latency.values().all(|l| l.count == K as usize && l.p99_ms >= l.mean_ms));
    }
    assert!(stdout.contains(&format_summary(&results)), "{stdout}");

    // Three well-formed charts per algorithm with one mark per entry / per node / per node and type.
    let colours: Vec<String> = PALETTE.iter().map(|c| hex(*c)).collect();
    for r in &results {
        let alg = r.algorithm.as_str();
        let gantt = svg(&out.path().join(format!("{alg}-gantt.svg")));
        let bars = data_marks(&gantt, "rect");
        assert_eq!(bars.get(&hex(WARNING_COLOUR)), None, "{alg}: no overlap, no warning colour");
        let node_bars: usize = bars.iter().filter(|(f, _)| colours.contains(f)).map(|(_, n)| n).sum();
        assert_eq!(node_bars, r.entries.len(), "{alg}: one gantt bar per entry");
        assert_eq!(bars.len(), N, "{alg}: one colour per node");

        let latency = svg(&out.path().join(format!("{alg}-latency.svg")));
        assert_eq!(
            data_marks(&latency, "rect").values().sum::<usize>(),
            2 * N,
            "{alg}: mean and p99 per node"
        );

        let messages = svg(&out.path().join(format!("{alg}-messages.svg")));
        let segments: usize =
            r.messages_by_node.values().map(|m| m.values().filter(|n| **n > 0).count()).sum();
        assert_eq!(data_marks(&messages, "rect").values().sum::<usize>(), segments, "{alg}: node × type");
        let labels = texts(&messages);
        for kind in r.messages_by_type.keys() {
            assert!(labels.contains(kind), "{alg}: {kind} missing in the legend {labels:?}");
        }
    }
}

/// The common start (`--start together`, the default): every node's workload begins at one instant once all
/// are ready, so all three contend from the first entry and the first entries come from more than one node.
/// (With the staggered start of the original programs, the nodes begin about 50 ms apart and node 0 alone makes
/// its first five 10 ms entries.) A 10 ms critical section keeps this robust on a loaded machine: the first three
/// entries are one node's only if both others lag the start by more than two sections.
#[test]
fn the_first_entries_interleave_with_a_common_start() {
    let out = tempfile::tempdir().unwrap();
    let stdout = run_cluster(
        &[
            "--nodes",
            "3",
            "--iterations",
            "10",
            "--cs-ms",
            "10",
            "--subnet",
            "127.66.4",
            "--peer-port",
            "27470",
            "--http-port",
            "28480",
        ],
        out.path(),
    );
    assert!(stdout.contains("cs_history (node, fencing token): [("), "the tuples are labelled:\n{stdout}");
    let results = experiments(&read_json(&out.path().join("results.json")));
    assert_eq!(results.len(), Algorithm::ALL.len());
    for r in &results {
        assert!(r.verdict.ok, "{:?}", r.verdict);
        let first: BTreeSet<u16> = r.cs_history.iter().take(3).map(|(node, _)| *node).collect();
        assert!(
            first.len() >= 2,
            "{}: the first three entries all came from node {first:?}: {:?}",
            r.algorithm,
            &r.cs_history[..10]
        );
    }
}

/// `--lamport-ack-elision` reaches every node's core (each reports it in `/v1/stats`), the run stays correct,
/// and REPLYs can only be fewer than REQUESTs.
#[test]
fn lamport_footnote_option_reaches_every_node() {
    let out = tempfile::tempdir().unwrap();
    let stdout = run_cluster(
        &[
            "--nodes",
            "3",
            "--iterations",
            "30",
            "--cs-ms",
            "0",
            "--algorithm",
            "lamport",
            "--lamport-ack-elision",
            "--subnet",
            "127.66.3",
            "--peer-port",
            "27370",
            "--http-port",
            "28380",
        ],
        out.path(),
    );
    assert!(stdout.contains("footnote option on"), "{stdout}");
    let results = experiments(&read_json(&out.path().join("results.json")));
    let r = &results[0];
    assert!(r.verdict.ok, "{:?}", r.verdict);
    assert_eq!(r.shared_counter, 90);
    assert_eq!(r.node_stats.len(), 3);
    assert!(r.node_stats.iter().all(|s| s.lamport_ack_elision), "{:?}", r.node_stats);
    let count = |kind: &str| r.messages_by_type.get(kind).copied().unwrap_or(0);
    assert_eq!(count("REQUEST"), 90 * 2);
    assert_eq!(count("RELEASE"), 90 * 2);
    assert!(count("REPLY") <= count("REQUEST"));
}

#[test]
fn a_real_sweep_writes_the_csv_and_one_series_per_algorithm() {
    let out = tempfile::tempdir().unwrap();
    let stdout = run_cluster(
        &[
            "--sweep",
            "2,3",
            "--iterations",
            "3",
            "--algorithm",
            "all",
            "--subnet",
            "127.66.2",
            "--peer-port",
            "27270",
            "--http-port",
            "28280",
        ],
        out.path(),
    );
    let doc = read_json(&out.path().join("results.json"));
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["failures"], serde_json::json!([]));
    let results = experiments(&doc);
    assert_eq!(results.len(), 6);
    let sizes: Vec<usize> = results.iter().map(|r| r.nodes).collect();
    assert_eq!(sizes, vec![2, 2, 2, 3, 3, 3]);
    for r in &results {
        assert!(stdout.contains(&summary_row(r)), "{stdout}");
        check_entries(r);
        check_stats(r);
        for chart in ["gantt", "latency", "messages"] {
            svg(&out.path().join(format!("n{}/{}-{chart}.svg", r.nodes, r.algorithm.as_str())));
        }
    }
    assert!(stdout.contains(&format_summary(&results)), "{stdout}");

    let csv = std::fs::read_to_string(out.path().join("sweep.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "algorithm,nodes,entries,messages,messages_per_entry,execution_ms,entries_per_s");
    assert_eq!(lines.len(), 7);
    for (line, r) in lines[1..].iter().zip(&results) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields[0], r.algorithm.as_str());
        assert_eq!(fields[1], r.nodes.to_string());
        assert_eq!(fields[2], r.entries.len().to_string());
        assert_eq!(fields[3], r.total_messages.to_string());
        assert_eq!(fields[4], format!("{:.3}", r.messages_per_entry));
    }

    // One line (and one marker per N) per algorithm, colours in algorithm-name order.
    for file in ["sweep-time.svg", "sweep-messages.svg"] {
        let text = svg(&out.path().join(file));
        for colour in &PALETTE[..3] {
            assert_eq!(polylines(&text, *colour), 1, "{file}: one series per algorithm");
            assert_eq!(data_marks(&text, "circle").get(&hex(*colour)), Some(&2), "{file}: a point per N");
        }
        assert_eq!(polylines(&text, PALETTE[3]), 0, "{file}: no fourth series");
        let labels = texts(&text);
        for name in ["lamport", "probable-owner", "ricart-agrawala"] {
            assert!(labels.iter().any(|t| t == name), "{file}: {name} missing in {labels:?}");
        }
    }
    let labels = texts(&std::fs::read_to_string(out.path().join("sweep-messages.svg")).unwrap());
    assert!(
        labels.iter().any(|t| t == "Lamport 3(N−1)") && labels.iter().any(|t| t == "Ricart–Agrawala 2(N−1)")
    );
}
