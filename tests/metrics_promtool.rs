//! `/metrics` of a live node passes `promtool check metrics` (Debian package `prometheus`, installed by
//! `.ci/run`; without promtool the check fails under `CI=true` and is skipped with a SKIPPED line on stderr
//! elsewhere), and the Prometheus counters agree with `/v1/stats` after a known workload.

mod common;
#[path = "support/tools.rs"]
mod tools;

use common::{Cluster, metric_sum};
use serde_json::Value;
use std::io::Write as _;
use std::process::{Command, Stdio};

#[test]
fn live_metrics_pass_promtool_and_agree_with_stats() {
    const N: u64 = 5;
    let c = Cluster::start("promtool", 3, &[]);
    let api = c.api();
    for _ in 0..N {
        api.lock_once(0, "m", "lamport");
        api.lock_once(1, "m", "ricart-agrawala");
    }
    // A timeout, so that outcome counters have more than one series.
    let (s, g) = api.acquire(2, "held", serde_json::json!({"algorithm": "lamport", "ttl_ms": 60000}));
    assert_eq!(s, 200, "{g}");
    let (s, _) = api.acquire(0, "held", serde_json::json!({"algorithm": "lamport", "timeout_ms": 50}));
    assert_eq!(s, 409);

    for i in 0..3 {
        let (status, text) = c.get_text(i, "/metrics");
        assert_eq!(status, 200);
        let stats = api.stats(i);
        for (field, metric) in [
            ("messages_sent", "dmutex_messages_sent_total"),
            ("messages_received", "dmutex_messages_received_total"),
        ] {
            let Some(by_algo) = stats[field].as_object() else { panic!("{stats}") };
            let mut total = 0.0;
            for (algorithm, types) in by_algo {
                for (kind, n) in types.as_object().into_iter().flatten() {
                    let m = metric_sum(&text, metric, &[("algorithm", algorithm), ("type", kind)]);
                    assert_eq!(m, n.as_u64().unwrap_or(0) as f64, "node {i} {metric} {algorithm} {kind}");
                    total += m;
                }
            }
            assert_eq!(total, metric_sum(&text, metric, &[]), "node {i}: every series is in /v1/stats");
        }
        for (algorithm, n) in stats["grants"].as_object().into_iter().flatten() {
            let m = metric_sum(&text, "dmutex_grants_total", &[("algorithm", algorithm)]);
            assert_eq!(m, n.as_u64().unwrap_or(0) as f64, "node {i} grants {algorithm}");
        }
    }
    // The known workload, counted: Lamport through node 0 is 2 REQUEST + 2 RELEASE per entry, answered by one
    // REPLY from each peer; Ricart–Agrawala through node 1 is 2 REQUEST and 2 REPLY per entry.
    let sent = |i: usize, algorithm: &str, kind: &str| {
        api.stats(i)["messages_sent"][algorithm][kind].as_u64().unwrap_or(0)
    };
    assert_eq!(api.stats(0)["grants"]["lamport"], Value::from(N));
    assert_eq!(api.stats(1)["grants"]["ricart-agrawala"], Value::from(N));
    assert_eq!(api.stats(0)["timeouts"]["lamport"], Value::from(1));
    assert_eq!(sent(0, "lamport", "REQUEST"), 2 * N + 2, "the timed-out request asked too");
    assert_eq!(sent(0, "lamport", "RELEASE"), 2 * N + 2, "and withdrew");
    assert_eq!(sent(1, "ricart-agrawala", "REQUEST"), 2 * N);
    assert_eq!(sent(0, "ricart-agrawala", "REPLY") + sent(2, "ricart-agrawala", "REPLY"), 2 * N);

    let Some(tool) = tools::require("promtool", "prometheus", "promtool check metrics") else { return };
    let (_, text) = c.get_text(0, "/metrics");
    let mut child = match Command::new(tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("promtool: {e}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => panic!("promtool: {e}"),
    };
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
