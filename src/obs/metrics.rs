//! Node metrics: one set of counters, rendered both as Prometheus text (`GET /metrics`) and as the JSON of
//! `GET /v1/stats`, so the two always agree.
//!
//! Every metric is a typed field of [`Metrics`] with a typed label set, declared once in the table at the
//! bottom of this file (name, help text, field): a misspelt metric or label is a compile error, not a
//! silently missing series. The renderer is our own rather than `prometheus-client`'s because that crate
//! writes OpenMetrics (`# TYPE dmutex_grants counter` without the `_total`, a `.` appended to every help text,
//! `# EOF`), which would change the exposition the dashboard and the scrapers read, and it cannot list a
//! family's series, which `/v1/stats` needs.
//!
//! Must never: take label values from clients (lock names, lease ids) — every label value is bounded by
//! construction (algorithm, message type, peer id, outcome, refusal reason).

use crate::algo::{Algorithm, NodeId};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};

/// Upper bounds (seconds) of the latency histograms: 100 µs … 24 h. Fine below a second for the lock calls
/// themselves; up to the longest wait an acquire may ask for (1 h) and the default largest lease TTL (24 h)
/// for waits and holds of `dmutex lock` jobs (backups, cron).
pub(crate) const LATENCY_BUCKETS: [f64; 21] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0, 60.0,
    300.0, 900.0, 3600.0, 21600.0, 86400.0,
];

/// The label pairs of one series. Implementations write their pairs in a fixed order.
pub trait LabelSet: Clone + Ord {
    /// Calls `f` with every `(name, value)` pair, in exposition order.
    fn each(&self, f: &mut dyn FnMut(&'static str, &str));
}

/// No labels: the family has a single series.
impl LabelSet for () {
    fn each(&self, _f: &mut dyn FnMut(&'static str, &str)) {}
}

/// `algorithm`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlgorithmLabel(pub Algorithm);

impl LabelSet for AlgorithmLabel {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("algorithm", self.0.as_str());
    }
}

/// `algorithm`, `type`, `peer`: one peer message type on one link.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageLabels {
    /// The message's algorithm.
    pub algorithm: Algorithm,
    /// Its type in the papers' words ([`crate::algo::ProtocolMessage::kind`]).
    pub kind: &'static str,
    /// The node at the other end.
    pub peer: NodeId,
}

impl LabelSet for MessageLabels {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("algorithm", self.algorithm.as_str());
        f("type", self.kind);
        f("peer", &self.peer.get().to_string());
    }
}

/// `route`: one of the API's route patterns ([`crate::api::ROUTES`]) or `other` (an unknown path).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteLabel(pub &'static str);

impl LabelSet for RouteLabel {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("route", self.0);
    }
}

/// `route`, `method`, `status`: one kind of HTTP answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HttpLabels {
    /// The route pattern ([`RouteLabel`]).
    pub route: &'static str,
    /// `GET`, `POST` or `other`.
    pub method: &'static str,
    /// The status code.
    pub status: u16,
}

impl LabelSet for HttpLabels {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("route", self.route);
        f("method", self.method);
        f("status", &self.status.to_string());
    }
}

/// How an acquire ended (the `outcome` label).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The lock was granted and the client got its lease.
    Granted,
    /// The acquire's timeout passed while it waited.
    Timeout,
    /// A peer the request needs was down, or the node had not joined yet.
    Unavailable,
    /// The request was withdrawn.
    Cancelled,
    /// The node was shutting down.
    Shutdown,
    /// Granted after the client had gone away: released at once.
    Abandoned,
    /// A try-lock found the lock held (or another request first) and did not wait.
    Locked,
}

impl Outcome {
    /// The label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Timeout => "timeout",
            Outcome::Unavailable => "unavailable",
            Outcome::Cancelled => "cancelled",
            Outcome::Shutdown => "shutdown",
            Outcome::Abandoned => "abandoned",
            Outcome::Locked => "locked",
        }
    }
}

/// `algorithm`, `outcome`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutcomeLabels {
    /// The acquire's algorithm.
    pub algorithm: Algorithm,
    /// How it ended.
    pub outcome: Outcome,
}

impl LabelSet for OutcomeLabels {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("algorithm", self.algorithm.as_str());
        f("outcome", self.outcome.as_str());
    }
}

/// `peer`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerLabel(pub NodeId);

impl LabelSet for PeerLabel {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("peer", &self.0.get().to_string());
    }
}

/// `reason`: why a connection, frame or message was refused (a fixed word chosen by the code).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReasonLabel(pub &'static str);

impl LabelSet for ReasonLabel {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("reason", self.0);
    }
}

/// `type`, `direction`: link-level frames that carry no algorithm message (keepalives).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkFrameLabels {
    /// The frame type (`keepalive`).
    pub kind: &'static str,
    /// `sent` or `received`.
    pub direction: &'static str,
}

impl LabelSet for LinkFrameLabels {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("type", self.kind);
        f("direction", self.direction);
    }
}

/// `what`, `result`: a reload of credential files (certificates, tokens).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReloadLabels {
    /// Which credentials (`api_certificate`, `peer_certificate`, `api_tokens`).
    pub what: &'static str,
    /// `ok`, or `failed` (the old credentials stay in use).
    pub result: &'static str,
}

impl LabelSet for ReloadLabels {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("what", self.what);
        f("result", self.result);
    }
}

/// `cause`: why a view changed.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CauseLabel(pub &'static str);

impl LabelSet for CauseLabel {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("cause", self.0);
    }
}

/// `version`, `node`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildLabels {
    /// The crate version.
    pub version: &'static str,
    /// This node.
    pub node: NodeId,
}

impl LabelSet for BuildLabels {
    fn each(&self, f: &mut dyn FnMut(&'static str, &str)) {
        f("version", self.version);
        f("node", &self.node.get().to_string());
    }
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    // A panic elsewhere must not take the metrics down with it: every value is still consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A metric family: its Prometheus type and how its series render.
pub(crate) trait Family: Default {
    /// `counter`, `gauge` or `histogram`.
    const KIND: &'static str;
    /// Appends the family's sample lines (not the `# HELP`/`# TYPE` header).
    fn render(&self, name: &str, out: &mut String);
}

/// The series of a family as `(label pairs, value)`, in the order of their label values (what the exposition
/// has always shown, whatever the label types' own order).
fn sorted<L: LabelSet, V: Clone>(series: &BTreeMap<L, V>) -> Vec<(Vec<(&'static str, String)>, V)> {
    let mut rows: Vec<_> = series
        .iter()
        .map(|(labels, v)| {
            let mut pairs = Vec::new();
            labels.each(&mut |k, v| pairs.push((k, v.to_string())));
            (pairs, v.clone())
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// A monotonic counter per label set.
#[derive(Debug)]
pub struct Counter<L> {
    series: Mutex<BTreeMap<L, u64>>,
}

impl<L> Default for Counter<L> {
    fn default() -> Self {
        Counter { series: Mutex::new(BTreeMap::new()) }
    }
}

impl<L: LabelSet> Counter<L> {
    /// Adds one.
    pub fn inc(&self, labels: L) {
        self.inc_by(labels, 1);
    }

    /// Adds `by`. Allocates only for a series seen the first time (label sets are plain values).
    pub(crate) fn inc_by(&self, labels: L, by: u64) {
        *lock(&self.series).entry(labels).or_insert(0) += by;
    }

    /// Sets the counter to an absolute value (for counters kept elsewhere, e.g. by the transport).
    pub(crate) fn set(&self, labels: L, value: u64) {
        lock(&self.series).insert(labels, value);
    }

    /// One series' value (0 if it was never counted).
    pub(crate) fn get(&self, labels: &L) -> u64 {
        lock(&self.series).get(labels).copied().unwrap_or(0)
    }

    /// The sum over the series whose labels pass `filter`.
    pub(crate) fn sum_where(&self, filter: impl Fn(&L) -> bool) -> u64 {
        lock(&self.series).iter().filter(|(l, _)| filter(l)).map(|(_, v)| *v).sum()
    }

    /// The sum over every series.
    pub(crate) fn sum(&self) -> u64 {
        self.sum_where(|_| true)
    }

    /// Every series, in label order.
    pub(crate) fn series(&self) -> Vec<(L, u64)> {
        lock(&self.series).iter().map(|(l, v)| (l.clone(), *v)).collect()
    }
}

impl<L: LabelSet> Family for Counter<L> {
    const KIND: &'static str = "counter";
    fn render(&self, name: &str, out: &mut String) {
        for (labels, v) in sorted(&lock(&self.series)) {
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(&labels, None));
        }
    }
}

/// A gauge per label set.
#[derive(Debug)]
pub struct Gauge<L> {
    series: Mutex<BTreeMap<L, f64>>,
}

impl<L> Default for Gauge<L> {
    fn default() -> Self {
        Gauge { series: Mutex::new(BTreeMap::new()) }
    }
}

impl<L: LabelSet> Gauge<L> {
    /// Sets the gauge.
    pub fn set(&self, labels: L, value: f64) {
        lock(&self.series).insert(labels, value);
    }
}

impl<L: LabelSet> Family for Gauge<L> {
    const KIND: &'static str = "gauge";
    fn render(&self, name: &str, out: &mut String) {
        for (labels, v) in sorted(&lock(&self.series)) {
            let _ = writeln!(out, "{name}{} {}", fmt_labels(&labels, None), fmt_f64(v));
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Buckets {
    counts: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// A latency histogram (seconds, `LATENCY_BUCKETS`) per label set.
#[derive(Debug)]
pub struct Histogram<L> {
    series: Mutex<BTreeMap<L, Buckets>>,
}

impl<L> Default for Histogram<L> {
    fn default() -> Self {
        Histogram { series: Mutex::new(BTreeMap::new()) }
    }
}

impl<L: LabelSet> Histogram<L> {
    /// Records one observation, in seconds.
    pub fn observe(&self, labels: L, seconds: f64) {
        let mut series = lock(&self.series);
        let h = series.entry(labels).or_default();
        for (count, bound) in h.counts.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }
}

impl<L: LabelSet> Family for Histogram<L> {
    const KIND: &'static str = "histogram";
    fn render(&self, name: &str, out: &mut String) {
        for (labels, h) in sorted(&lock(&self.series)) {
            for (c, bound) in h.counts.iter().zip(LATENCY_BUCKETS) {
                let le = fmt_f64(bound);
                let _ = writeln!(out, "{name}_bucket{} {c}", fmt_labels(&labels, Some(&le)));
            }
            let _ = writeln!(out, "{name}_bucket{} {}", fmt_labels(&labels, Some("+Inf")), h.count);
            let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(&labels, None), fmt_f64(h.sum));
            let _ = writeln!(out, "{name}_count{} {}", fmt_labels(&labels, None), h.count);
        }
    }
}

/// Declares [`Metrics`] (one typed field per metric), [`METRICS`] and the renderer from one table, so the
/// three cannot disagree.
macro_rules! metrics {
    ($($field:ident: $ty:ty = $name:literal, $help:literal;)*) => {
        /// Every metric the node exports, as typed handles (`metrics.grants.inc(AlgorithmLabel(a))`).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(
                #[doc = concat!("`", $name, "`: ", $help)]
                pub $field: $ty,
            )*
        }

        /// Name, type and help text of every metric the node exports, in exposition order (also read by the
        /// tests that check the dashboards).
        pub const METRICS: &[(&str, &str, &str)] = &[$(($name, <$ty as Family>::KIND, $help),)*];

        impl Metrics {
            /// Prometheus text exposition format 0.0.4.
            pub(crate) fn render(&self) -> String {
                let mut out = String::with_capacity(8192);
                crate::obs::process::render(&mut out);
                $(
                    let _ = writeln!(out, "# HELP {} {}", $name, $help);
                    let _ = writeln!(out, "# TYPE {} {}", $name, <$ty as Family>::KIND);
                    self.$field.render($name, &mut out);
                )*
                out
            }
        }
    };
}

metrics! {
    build_info: Gauge<BuildLabels> = "dmutex_build_info", "Build information (always 1).";
    messages_sent: Counter<MessageLabels> =
        "dmutex_messages_sent_total", "Peer messages sent, by algorithm, type and peer.";
    messages_received: Counter<MessageLabels> =
        "dmutex_messages_received_total", "Peer messages received, by algorithm, type and peer.";
    acquire_duration: Histogram<OutcomeLabels> =
        "dmutex_acquire_duration_seconds", "Time from acquire request to outcome, by algorithm and outcome.";
    hold_duration: Histogram<AlgorithmLabel> =
        "dmutex_hold_duration_seconds", "Time a lease held its lock, by algorithm.";
    grants: Counter<AlgorithmLabel> = "dmutex_grants_total", "Locks granted to local clients, by algorithm.";
    acquire_outcomes: Counter<OutcomeLabels> = "dmutex_acquire_outcomes_total",
        "Acquire outcomes (granted, timeout, unavailable, cancelled, shutdown, abandoned, locked) by algorithm.";
    lease_expiries: Counter<AlgorithmLabel> =
        "dmutex_lease_expiries_total", "Leases released because their TTL passed without keepalive.";
    redirects: Counter<()> = "dmutex_redirects_total", "Probable-owner LOCK_REP redirects received.";
    waiting_requests: Gauge<AlgorithmLabel> =
        "dmutex_waiting_requests", "Local acquire requests waiting, by algorithm.";
    held_leases: Gauge<()> = "dmutex_held_leases", "Leases currently held through this node.";
    lamport_clock: Gauge<AlgorithmLabel> = "dmutex_lamport_clock", "The node's Lamport clock, by algorithm.";
    peer_connected: Gauge<PeerLabel> = "dmutex_peer_connected", "1 when the link to the peer is up.";
    peer_reconnects: Counter<PeerLabel> =
        "dmutex_peer_reconnects_total", "Reconnections of the link to each peer.";
    refused_connections: Counter<ReasonLabel> =
        "dmutex_refused_connections_total", "Peer connections refused, by reason.";
    link_frames: Counter<LinkFrameLabels> = "dmutex_link_frames_total",
        "Link-level peer frames that are no algorithm message (keepalives), by type and direction.";
    bad_frames: Counter<ReasonLabel> =
        "dmutex_bad_frames_total", "Malformed or unexpected peer frames and messages, by reason.";
    ready: Gauge<()> = "dmutex_ready", "1 when the node can grant locks.";
    view_epoch: Gauge<()> = "dmutex_view_epoch", "Epoch of the installed membership view (0 before one).";
    view_members: Gauge<()> = "dmutex_view_members", "Members of the installed view.";
    view_changes: Counter<CauseLabel> = "dmutex_view_changes_total",
        "Views installed, by cause (bootstrap, join, crash, leave, renew; one view may count under several).";
    member_lease: Gauge<()> = "dmutex_member_lease",
        "1 while this node holds its member lease (a majority of its view acked it): it may grant.";
    no_majority_ms: Counter<()> = "dmutex_no_majority_milliseconds_total",
        "Time this node spent as a member without its member lease (no majority reached), in milliseconds.";
    membership_messages: Counter<LinkFrameLabels> = "dmutex_membership_messages_total",
        "Membership messages (heartbeats, acks, view changes, formation, engine handshakes), by type and direction.";
    http_requests: Counter<HttpLabels> = "dmutex_http_requests_total",
        "HTTP API requests answered, by route (the pattern, not the path), method and status.";
    http_duration: Histogram<RouteLabel> = "dmutex_http_request_duration_seconds",
        "Time from HTTP request to response, by route (an acquire's includes its wait for the lock).";
    client_forwards: Counter<LinkFrameLabels> = "dmutex_client_forwards_total",
        "Client calls served with another node's help (keepalive, release and re-acquire of a lease granted there; lock queries), by type and direction.";
    credential_reloads: Counter<ReloadLabels> = "dmutex_credential_reloads_total",
        "Credential files (certificates, API tokens) re-read after they changed, by what and result (failed: the old ones stay in use).";
}

impl Metrics {
    /// An empty registry.
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

fn fmt_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

fn fmt_labels(labels: &[(&'static str, String)], le: Option<&str>) -> String {
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
        let l = MessageLabels { algorithm: Algorithm::Lamport, kind: "REQUEST", peer: NodeId::new(1) };
        m.messages_sent.inc_by(l, 2);
        m.messages_sent.inc(l);
        m.ready.set((), 1.0);
        let granted = OutcomeLabels { algorithm: Algorithm::Lamport, outcome: Outcome::Granted };
        m.acquire_duration.observe(granted, 0.003);
        let text = m.render();
        assert!(
            text.contains("dmutex_messages_sent_total{algorithm=\"lamport\",type=\"REQUEST\",peer=\"1\"} 3")
        );
        assert!(text.contains("dmutex_ready 1"));
        let bucket = |le: &str, n: u64| {
            format!(
                "dmutex_acquire_duration_seconds_bucket{{algorithm=\"lamport\",outcome=\"granted\",le=\"{le}\"}} {n}"
            )
        };
        assert!(text.contains(&bucket("0.0025", 0)), "{text}");
        assert!(text.contains(&bucket("0.005", 1)), "{text}");
        assert!(text.contains(&bucket("+Inf", 1)), "{text}");
        let lamport = |l: &MessageLabels| l.algorithm == Algorithm::Lamport;
        assert_eq!(m.messages_sent.sum_where(lamport), 3);
        assert_eq!(m.messages_sent.sum_where(|l| l.algorithm == Algorithm::RicartAgrawala), 0);
    }

    /// The exposition keeps its old order: series sorted by their label values as text (peer "10" before
    /// "2", probable-owner before ricart-agrawala), every family with its header even when empty.
    #[test]
    fn series_render_in_label_text_order_and_every_family_has_a_header() {
        let m = Metrics::new();
        for peer in [2, 10, 1] {
            m.peer_connected.set(PeerLabel(NodeId::new(peer)), 1.0);
        }
        for a in Algorithm::ALL {
            m.grants.inc(AlgorithmLabel(a));
        }
        let text = m.render();
        let at = |s: &str| text.find(s).unwrap_or_else(|| panic!("{s} missing in\n{text}"));
        assert!(at("peer=\"1\"") < at("peer=\"10\"") && at("peer=\"10\"") < at("peer=\"2\""));
        assert!(at("{algorithm=\"lamport\"} 1") < at("{algorithm=\"probable-owner\"} 1"));
        assert!(at("{algorithm=\"probable-owner\"} 1") < at("{algorithm=\"ricart-agrawala\"} 1"));
        for (name, kind, help) in METRICS {
            assert!(text.contains(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n")), "{name}");
        }
        assert_eq!(METRICS.len(), 28);
    }
}
