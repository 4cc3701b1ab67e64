//! Node metrics: one set of counters, rendered both as Prometheus text (`GET /metrics`) and as the JSON of
//! `GET /v1/stats`, so the two always agree.
//!
//! Deliberately tiny and dependency-free: label values are bounded by construction (algorithm, message type,
//! peer id, outcome, refusal reason), never lock names or lease ids.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histograms: 100 µs … 60 s.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0];

/// Label pairs of one series, in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if v <= *b {
                self.buckets[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Inner {
    counters: BTreeMap<&'static str, BTreeMap<Labels, u64>>,
    gauges: BTreeMap<&'static str, BTreeMap<Labels, f64>>,
    histograms: BTreeMap<&'static str, BTreeMap<Labels, Histogram>>,
}

/// A registry of counters, gauges and histograms with fixed help texts.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Help text and type of every metric the node exports (also used by tests that check the dashboards).
pub const METRICS: &[(&str, &str, &str)] = &[
    ("dmutex_build_info", "gauge", "Build information (always 1)."),
    ("dmutex_messages_sent_total", "counter", "Peer messages sent, by algorithm, type and peer."),
    ("dmutex_messages_received_total", "counter", "Peer messages received, by algorithm, type and peer."),
    (
        "dmutex_acquire_duration_seconds",
        "histogram",
        "Time from acquire request to outcome, by algorithm and outcome.",
    ),
    ("dmutex_hold_duration_seconds", "histogram", "Time a lease held its lock, by algorithm."),
    ("dmutex_grants_total", "counter", "Locks granted to local clients, by algorithm."),
    (
        "dmutex_acquire_outcomes_total",
        "counter",
        "Acquire outcomes (granted, timeout, unavailable, cancelled, shutdown) by algorithm.",
    ),
    ("dmutex_lease_expiries_total", "counter", "Leases released because their TTL passed without keepalive."),
    ("dmutex_redirects_total", "counter", "Probable-owner LOCK_REP redirects received."),
    ("dmutex_waiting_requests", "gauge", "Local acquire requests waiting, by algorithm."),
    ("dmutex_held_leases", "gauge", "Leases currently held through this node."),
    ("dmutex_lamport_clock", "gauge", "The node's Lamport clock, by algorithm."),
    ("dmutex_peer_connected", "gauge", "1 when the link to the peer is up."),
    ("dmutex_peer_reconnects_total", "counter", "Reconnections of the link to each peer."),
    ("dmutex_refused_connections_total", "counter", "Peer connections refused, by reason."),
    ("dmutex_bad_frames_total", "counter", "Malformed or unexpected peer frames and messages, by reason."),
    ("dmutex_ready", "gauge", "1 when the node can grant locks."),
];

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut guard = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut guard)
    }

    /// Adds `by` to a counter.
    pub fn inc(&self, name: &'static str, labels: Labels, by: u64) {
        self.with(|m| *m.counters.entry(name).or_default().entry(labels).or_default() += by);
    }

    /// Adds `by` to a counter; allocates only for a series seen the first time (for hot paths).
    pub fn inc_ref(&self, name: &'static str, labels: &Labels, by: u64) {
        self.with(|m| {
            let series = m.counters.entry(name).or_default();
            match series.get_mut(labels) {
                Some(v) => *v += by,
                None => {
                    series.insert(labels.clone(), by);
                }
            }
        });
    }

    /// Sets a counter to an absolute value (for counters kept elsewhere, e.g. by the transport).
    pub fn set_counter(&self, name: &'static str, labels: Labels, value: u64) {
        self.with(|m| {
            m.counters.entry(name).or_default().insert(labels, value);
        });
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, labels: Labels, value: f64) {
        self.with(|m| {
            m.gauges.entry(name).or_default().insert(labels, value);
        });
    }

    /// Records one observation (seconds) in a histogram.
    pub fn observe(&self, name: &'static str, labels: Labels, seconds: f64) {
        self.with(|m| m.histograms.entry(name).or_default().entry(labels).or_default().observe(seconds));
    }

    /// A counter's value.
    pub fn counter(&self, name: &'static str, labels: &Labels) -> u64 {
        self.with(|m| m.counters.get(name).and_then(|s| s.get(labels)).copied().unwrap_or(0))
    }

    /// Sum of a counter over all series whose labels include every pair in `filter`.
    pub fn counter_sum(&self, name: &'static str, filter: &[(&'static str, &str)]) -> u64 {
        self.with(|m| {
            m.counters
                .get(name)
                .map(|series| {
                    series
                        .iter()
                        .filter(|(labels, _)| {
                            filter.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
                        })
                        .map(|(_, v)| *v)
                        .sum()
                })
                .unwrap_or(0)
        })
    }

    /// Every series of a counter.
    pub fn counter_series(&self, name: &'static str) -> Vec<(Labels, u64)> {
        self.with(|m| {
            m.counters.get(name).map(|s| s.iter().map(|(l, v)| (l.clone(), *v)).collect()).unwrap_or_default()
        })
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        self.with(|m| {
            let mut out = String::with_capacity(8192);
            for (name, kind, help) in METRICS {
                let _ = writeln!(out, "# HELP {name} {help}");
                let _ = writeln!(out, "# TYPE {name} {kind}");
                match *kind {
                    "counter" => {
                        for (labels, v) in m.counters.get(name).into_iter().flatten() {
                            let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels, None));
                        }
                    }
                    "gauge" => {
                        for (labels, v) in m.gauges.get(name).into_iter().flatten() {
                            let _ = writeln!(out, "{name}{} {}", fmt_labels(labels, None), fmt_f64(*v));
                        }
                    }
                    _ => {
                        for (labels, h) in m.histograms.get(name).into_iter().flatten() {
                            for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
                                let c = h.buckets.get(i).copied().unwrap_or(0);
                                let le = fmt_f64(*b);
                                let _ = writeln!(out, "{name}_bucket{} {c}", fmt_labels(labels, Some(&le)));
                            }
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {}",
                                fmt_labels(labels, Some("+Inf")),
                                h.count
                            );
                            let _ =
                                writeln!(out, "{name}_sum{} {}", fmt_labels(labels, None), fmt_f64(h.sum));
                            let _ = writeln!(out, "{name}_count{} {}", fmt_labels(labels, None), h.count);
                        }
                    }
                }
            }
            out
        })
    }
}

fn fmt_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

fn fmt_labels(labels: &Labels, le: Option<&str>) -> String {
    if labels.is_empty() && le.is_none() {
        return String::new();
    }
    let mut s = String::from("{");
    let mut first = true;
    for (k, v) in labels {
        if !first {
            s.push(',');
        }
        first = false;
        let _ = write!(s, "{k}=\"{}\"", escape(v));
    }
    if let Some(le) = le {
        if !first {
            s.push(',');
        }
        let _ = write!(s, "le=\"{le}\"");
    }
    s.push('}');
    s
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_cumulative_histograms() {
        let m = Metrics::new();
        let l = vec![("algorithm", "lamport".to_string()), ("type", "REQUEST".to_string())];
        m.inc("dmutex_messages_sent_total", l.clone(), 2);
        m.inc_ref("dmutex_messages_sent_total", &l, 1);
        m.set("dmutex_ready", vec![], 1.0);
        m.observe("dmutex_acquire_duration_seconds", vec![("algorithm", "lamport".into())], 0.003);
        let text = m.render();
        assert!(text.contains("dmutex_messages_sent_total{algorithm=\"lamport\",type=\"REQUEST\"} 3"));
        assert!(text.contains("dmutex_ready 1"));
        assert!(
            text.contains("dmutex_acquire_duration_seconds_bucket{algorithm=\"lamport\",le=\"0.0025\"} 0")
        );
        assert!(
            text.contains("dmutex_acquire_duration_seconds_bucket{algorithm=\"lamport\",le=\"0.005\"} 1")
        );
        assert!(text.contains("dmutex_acquire_duration_seconds_bucket{algorithm=\"lamport\",le=\"+Inf\"} 1"));
        assert_eq!(m.counter_sum("dmutex_messages_sent_total", &[("algorithm", "lamport")]), 3);
        assert_eq!(m.counter_sum("dmutex_messages_sent_total", &[("algorithm", "ricart-agrawala")]), 0);
    }
}
