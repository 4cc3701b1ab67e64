//! The fencing ledger of the nemesis suite (`tests/nemesis.rs`): an in-test protected resource that accepts a
//! write only with a fencing token above every token it accepted for that lock, the journal of what every
//! client saw (acquires, holds, keepalives, releases, writes), the fault timeline the scenario declares, and the
//! checks over all of it.
//!
//! Locks are keyed by `(algorithm, name)`: the three algorithms are independent lock spaces, so `lamport/x`
//! and `probable-owner/x` are different resources.
//!
//! What the checks rely on (client-side instants only, no server clock):
//! - a hold runs from the arrival of the acquire's 200 to the *sending* of its release. The release answer's
//!   arrival is recorded too, but it cannot bound the hold: the node frees the lock when it handles the
//!   release, and the next holder's grant may arrive before this release's answer does. Only holds whose
//!   release answered 200 count for overlaps: a 200 proves the lease was still valid when the hold ended;
//! - a lease is *proven valid* at an instant when a keepalive or release of it sent at or after that instant
//!   answered 200 (a lease that expired or was dropped never comes back);
//! - a request to a node the scenario froze (SIGSTOP) at any time while it was in flight is exempt from the
//!   deadline check: nothing answers for a stopped process.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A lock of one algorithm: `(algorithm, name)`.
pub(crate) type Key = (String, String);

/// The key of `name` under `algorithm`.
pub(crate) fn key(algorithm: &str, name: &str) -> Key {
    (algorithm.to_string(), name.to_string())
}

/// One acquire as a client saw it.
#[derive(Clone, Debug)]
pub(crate) struct AcquireRecord {
    /// Client thread.
    pub client: usize,
    /// Node asked.
    pub node: usize,
    /// Lock.
    pub key: Key,
    /// When the request was sent.
    pub sent: Instant,
    /// When the answer arrived (or the connection failed).
    pub answered: Instant,
    /// The `timeout_ms` asked for.
    pub timeout: Duration,
    /// HTTP status (0: transport error).
    pub status: u16,
    /// Fencing token of a grant.
    pub token: Option<u64>,
    /// Lease of a grant.
    pub lease: Option<String>,
    /// The answer's body (short) when it was not a grant.
    pub detail: String,
}

/// A keepalive or release as a client saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Call {
    /// When it was sent.
    pub sent: Instant,
    /// When its answer arrived.
    pub answered: Instant,
    /// HTTP status (0: transport error).
    pub status: u16,
}

/// One granted lease from its grant to its release.
#[derive(Clone, Debug)]
pub(crate) struct Hold {
    /// Client thread.
    pub client: usize,
    /// Node that granted it.
    pub node: usize,
    /// Lock.
    pub key: Key,
    /// Fencing token.
    pub token: u64,
    /// Lease id.
    pub lease: String,
    /// The TTL asked for.
    pub ttl: Duration,
    /// When the acquire was sent.
    pub acquire_sent: Instant,
    /// When the acquire's 200 arrived.
    pub granted: Instant,
    /// Keepalives, in order.
    pub keepalives: Vec<Call>,
    /// The release (None: never sent, e.g. the test stopped).
    pub release: Option<Call>,
}

impl Hold {
    /// Whether the release answered 200.
    pub(crate) fn released_ok(&self) -> bool {
        self.release.is_some_and(|r| r.status == 200)
    }

    /// The end of the hold as the checks use it: when the release was sent.
    pub(crate) fn end(&self) -> Option<Instant> {
        self.release.map(|r| r.sent)
    }

    /// Whether a keepalive or release sent at or after `t` answered 200 (the lease was valid at `t`).
    pub(crate) fn proven_valid_at(&self, t: Instant) -> bool {
        self.keepalives.iter().chain(self.release.iter()).any(|c| c.status == 200 && c.sent >= t)
    }

    /// What the client could believe at `t`: the lease runs `ttl` from the last renewal it knows of (the send
    /// time of the acquire or of the last keepalive answered 200 before `t`).
    pub(crate) fn believed_valid_at(&self, t: Instant) -> bool {
        let renewed = self
            .keepalives
            .iter()
            .filter(|c| c.status == 200 && c.answered <= t)
            .map(|c| c.sent)
            .max()
            .unwrap_or(self.acquire_sent);
        t < renewed + self.ttl
    }
}

/// One write to the protected resource.
#[derive(Clone, Debug)]
pub(crate) struct WriteRecord {
    /// Client thread.
    pub client: usize,
    /// Lock.
    pub key: Key,
    /// The token presented.
    pub token: u64,
    /// The lease the client holds (to find its hold).
    pub lease: String,
    /// When.
    pub at: Instant,
    /// Whether the ledger accepted it.
    pub accepted: bool,
    /// The highest token accepted for the lock before this write.
    pub highest_before: Option<u64>,
}

/// The node-set state a scenario declares from an instant on.
#[derive(Clone, Debug)]
pub(crate) struct Epoch {
    /// From when.
    pub at: Instant,
    /// Nodes not in the majority (down, stopped, cut off, restarting, not yet ready again).
    pub minority: BTreeSet<usize>,
    /// Nodes stopped (SIGSTOP): no deadline applies to requests they hold.
    pub frozen: BTreeSet<usize>,
    /// What happened.
    pub note: String,
}

/// The scenario's fault timeline and its named phases (before, during, after).
#[derive(Debug)]
pub(crate) struct Timeline {
    /// When the scenario started.
    pub start: Instant,
    /// States in time order (the first: everything healthy).
    pub epochs: Vec<Epoch>,
    /// Phase boundaries in time order.
    pub phases: Vec<(Instant, String)>,
    /// Times the test process itself was not scheduled for a while (`(from, to)`): the machine was starved,
    /// so the nodes' heartbeats may have been too (see [`Rules::stall_grace`]).
    pub stalls: Vec<(Instant, Instant)>,
}

impl Timeline {
    /// A healthy timeline starting now.
    pub(crate) fn new() -> Timeline {
        let start = Instant::now();
        let epochs = vec![Epoch {
            at: start,
            minority: BTreeSet::new(),
            frozen: BTreeSet::new(),
            note: "start".into(),
        }];
        Timeline { start, epochs, phases: vec![(start, "before".into())], stalls: Vec::new() }
    }

    /// From now on `minority` are the nodes outside the majority and `frozen` the stopped ones.
    pub(crate) fn set(&mut self, minority: &[usize], frozen: &[usize], note: impl Into<String>) {
        self.set_at(Instant::now(), minority, frozen, note);
    }

    /// Like [`Timeline::set`] at a given instant (not before the last one).
    pub(crate) fn set_at(
        &mut self,
        at: Instant,
        minority: &[usize],
        frozen: &[usize],
        note: impl Into<String>,
    ) {
        let note = note.into();
        self.epochs.push(Epoch {
            at,
            minority: minority.iter().copied().collect(),
            frozen: frozen.iter().copied().collect(),
            note,
        });
    }

    /// A new phase starts now.
    pub(crate) fn phase(&mut self, name: &str) {
        self.phases.push((Instant::now(), name.to_string()));
    }

    /// The epochs in force at some time within `[from, to]`.
    fn epochs_over(&self, from: Instant, to: Instant) -> impl Iterator<Item = &Epoch> {
        self.epochs.iter().enumerate().filter_map(move |(k, e)| {
            let next = self.epochs.get(k + 1).map(|n| n.at);
            let overlaps = e.at <= to && next.is_none_or(|n| n > from);
            overlaps.then_some(e)
        })
    }

    /// Whether node `i` was in the majority during the whole of `[from, to]`.
    pub(crate) fn majority_throughout(&self, i: usize, from: Instant, to: Instant) -> bool {
        self.epochs_over(from, to).all(|e| !e.minority.contains(&i))
    }

    /// Whether node `i` was frozen at some time within `[from, to]`.
    pub(crate) fn frozen_during(&self, i: usize, from: Instant, to: Instant) -> bool {
        self.epochs_over(from, to).any(|e| e.frozen.contains(&i))
    }

    /// Whether `[from, to]` meets a stall or the `grace` after one.
    pub(crate) fn near_stall(&self, from: Instant, to: Instant, grace: Duration) -> bool {
        self.stalls.iter().any(|&(s, e)| s <= to && e + grace >= from)
    }

    /// Seconds since the start (for messages).
    pub(crate) fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64()
    }

    /// The declared states, one per line.
    pub(crate) fn describe(&self) -> String {
        let mut s = String::new();
        for e in &self.epochs {
            let _ = writeln!(
                s,
                "{:7.3} s  minority {:?} frozen {:?}: {}",
                self.secs(e.at),
                e.minority,
                e.frozen,
                e.note
            );
        }
        s
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// The resource: the highest token accepted per lock, and the lease that wrote it.
    highest: BTreeMap<Key, (u64, String)>,
    writes: Vec<WriteRecord>,
    acquires: Vec<AcquireRecord>,
    holds: Vec<Hold>,
}

/// The fenced resource and the journal (thread-safe; one per scenario).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    inner: Mutex<Inner>,
}

/// Everything a ledger recorded, for the checks.
#[derive(Clone, Debug, Default)]
pub(crate) struct Journal {
    /// Writes in the order the ledger handled them.
    pub writes: Vec<WriteRecord>,
    /// Every acquire answered.
    pub acquires: Vec<AcquireRecord>,
    /// Every grant, with its keepalives and release.
    pub holds: Vec<Hold>,
}

impl Ledger {
    /// An empty ledger.
    pub(crate) fn new() -> Ledger {
        Ledger::default()
    }

    /// A write to `key` by the holder of `lease` with `token`: accepted only when `token` is above every token
    /// accepted for `key` so far, or when it is the highest one and this lease wrote it (the current holder
    /// writing again). Returns whether it was accepted.
    pub(crate) fn write(&self, client: usize, key: &Key, token: u64, lease: &str) -> bool {
        let mut g = self.inner.lock().unwrap();
        let at = Instant::now();
        let top = g.highest.get(key);
        let highest_before = top.map(|h| h.0);
        let accepted = top.is_none_or(|(h, by)| token > *h || (token == *h && by == lease));
        if accepted {
            g.highest.insert(key.clone(), (token, lease.to_string()));
        }
        g.writes.push(WriteRecord {
            client,
            key: key.clone(),
            token,
            lease: lease.to_string(),
            at,
            accepted,
            highest_before,
        });
        accepted
    }

    /// Records an acquire's outcome.
    pub(crate) fn acquired(&self, a: AcquireRecord) {
        self.inner.lock().unwrap().acquires.push(a);
    }

    /// Records a finished hold (after its release, or when the client gave it up).
    pub(crate) fn held(&self, h: Hold) {
        self.inner.lock().unwrap().holds.push(h);
    }

    /// Grants answered so far (a progress counter for the scenario).
    pub(crate) fn grants(&self) -> usize {
        self.inner.lock().unwrap().acquires.iter().filter(|a| a.status == 200).count()
    }

    /// Grants answered so far by node `i` for `algorithm`.
    pub(crate) fn grants_by(&self, i: usize, algorithm: &str) -> usize {
        let g = self.inner.lock().unwrap();
        g.acquires.iter().filter(|a| a.status == 200 && a.node == i && a.key.0 == algorithm).count()
    }

    /// A copy of everything recorded.
    pub(crate) fn journal(&self) -> Journal {
        let g = self.inner.lock().unwrap();
        Journal { writes: g.writes.clone(), acquires: g.acquires.clone(), holds: g.holds.clone() }
    }
}

/// How the checks judge a run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rules {
    /// How late past its `timeout_ms` an acquire may be answered.
    pub deadline_slack: Duration,
    /// Whether a 503 (or a failed connection) from a node in the majority is a violation.
    pub majority_must_serve: bool,
    /// How long after a stall of the test process (the machine starved: the nodes' heartbeats may have been
    /// late past their member lease, and losing it is then right) a majority node's 503 is excused. Excused
    /// answers are counted in the figures, never hidden.
    pub stall_grace: Duration,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            deadline_slack: Duration::from_millis(1000),
            majority_must_serve: true,
            stall_grace: Duration::from_millis(4000),
        }
    }
}

/// Every violation of the ledger's rules found in `j` under timeline `t`; empty: the run is clean. Each entry
/// names its rule first (`overlap:`, `fencing:`, `token order:`, `token reuse:`, `deadline:`,
/// `majority 503:`).
pub(crate) fn check(j: &Journal, t: &Timeline, rules: Rules) -> Vec<String> {
    let mut v = Vec::new();
    v.extend(check_overlaps(&j.holds, t));
    v.extend(check_fencing(j, t));
    v.extend(check_token_order(&j.holds, t));
    v.extend(check_deadlines(&j.acquires, t, rules.deadline_slack));
    if rules.majority_must_serve {
        v.extend(check_majority_serves(&j.acquires, t, rules.stall_grace));
    }
    v
}

/// No two holds of a lock whose releases both answered 200 overlap.
pub(crate) fn check_overlaps(holds: &[Hold], t: &Timeline) -> Vec<String> {
    let mut by_key: BTreeMap<&Key, Vec<&Hold>> = BTreeMap::new();
    for h in holds.iter().filter(|h| h.released_ok()) {
        by_key.entry(&h.key).or_default().push(h);
    }
    let mut v = Vec::new();
    for (key, mut hs) in by_key {
        hs.sort_by_key(|h| h.granted);
        // The hold reaching furthest so far, so that a long hold overlapping several later ones is seen.
        let mut reach: Option<&Hold> = None;
        for h in hs {
            if let Some(r) = reach {
                let r_end = r.end().expect("released");
                if h.granted < r_end {
                    v.push(format!(
                        "overlap: {}/{}: token {} (client {}, node {}) held {:.3}–{:.3} s, token {} (client {}, \
                         node {}) granted at {:.3} s",
                        key.0,
                        key.1,
                        r.token,
                        r.client,
                        r.node,
                        t.secs(r.granted),
                        t.secs(r_end),
                        h.token,
                        h.client,
                        h.node,
                        t.secs(h.granted)
                    ));
                }
                if h.end() > r.end() {
                    reach = Some(h);
                }
            } else {
                reach = Some(h);
            }
        }
    }
    v
}

/// The ledger never rejected a write from a holder whose lease was valid at the time (proven by a later
/// keepalive or release answered 200).
pub(crate) fn check_fencing(j: &Journal, t: &Timeline) -> Vec<String> {
    let holds: BTreeMap<(&Key, &str), &Hold> =
        j.holds.iter().map(|h| ((&h.key, h.lease.as_str()), h)).collect();
    let mut v = Vec::new();
    for w in j.writes.iter().filter(|w| !w.accepted) {
        let Some(h) = holds.get(&(&w.key, w.lease.as_str())) else { continue };
        if h.proven_valid_at(w.at) {
            v.push(format!(
                "fencing: {}/{}: write with token {} by client {} at {:.3} s rejected (ledger had {:?}) while \
                 its lease {} was valid (a later keepalive or release answered 200)",
                w.key.0,
                w.key.1,
                w.token,
                w.client,
                t.secs(w.at),
                w.highest_before,
                w.lease
            ));
        }
    }
    v
}

/// Tokens strictly increase per lock in grant order over the holds whose release answered 200 (their grant
/// order is their order of arrival: each was released before the next was granted), and no two grants of a
/// lock share a token.
pub(crate) fn check_token_order(holds: &[Hold], t: &Timeline) -> Vec<String> {
    let mut v = Vec::new();
    let mut by_key: BTreeMap<&Key, Vec<&Hold>> = BTreeMap::new();
    for h in holds {
        by_key.entry(&h.key).or_default().push(h);
    }
    for (key, mut hs) in by_key {
        let mut seen: BTreeMap<u64, &Hold> = BTreeMap::new();
        for h in &hs {
            if let Some(o) = seen.insert(h.token, h) {
                v.push(format!(
                    "token reuse: {}/{}: token {} granted twice (client {} via node {} at {:.3} s, client {} via \
                     node {} at {:.3} s)",
                    key.0,
                    key.1,
                    h.token,
                    o.client,
                    o.node,
                    t.secs(o.granted),
                    h.client,
                    h.node,
                    t.secs(h.granted)
                ));
            }
        }
        hs.retain(|h| h.released_ok());
        hs.sort_by_key(|h| h.granted);
        for w in hs.windows(2) {
            if w[1].token <= w[0].token {
                v.push(format!(
                    "token order: {}/{}: token {} (granted {:.3} s) then token {} (granted {:.3} s)",
                    key.0,
                    key.1,
                    w[0].token,
                    t.secs(w[0].granted),
                    w[1].token,
                    t.secs(w[1].granted)
                ));
            }
        }
    }
    v
}

/// Every acquire was answered by its own deadline plus `slack` (plus the time the test process itself stalled
/// meanwhile, which delays seeing the answer), except while its node was frozen.
pub(crate) fn check_deadlines(acquires: &[AcquireRecord], t: &Timeline, slack: Duration) -> Vec<String> {
    let stalled = |from: Instant, to: Instant| -> Duration {
        t.stalls.iter().filter(|&&(s, e)| s <= to && e >= from).map(|&(s, e)| e.min(to) - s.max(from)).sum()
    };
    acquires
        .iter()
        .filter(|a| a.answered - a.sent > a.timeout + slack + stalled(a.sent, a.answered))
        .filter(|a| !t.frozen_during(a.node, a.sent, a.answered))
        .map(|a| {
            format!(
                "deadline: {}/{} via node {} (client {}): sent {:.3} s, timeout {:?}, answered {} after {:?}",
                a.key.0,
                a.key.1,
                a.node,
                a.client,
                t.secs(a.sent),
                a.timeout,
                a.status,
                a.answered - a.sent
            )
        })
        .collect()
}

/// The acquires at nodes that were in the majority the whole time they were in flight that answered neither
/// 200 nor 409 (409 `timeout` is a contention timeout, counted in the figures, not a violation).
pub(crate) fn refused_at_majority<'a>(
    acquires: &'a [AcquireRecord],
    t: &'a Timeline,
) -> impl Iterator<Item = &'a AcquireRecord> {
    acquires
        .iter()
        .filter(|a| a.status != 200 && a.status != 409 && t.majority_throughout(a.node, a.sent, a.answered))
}

/// No acquire at a node that was in the majority the whole time it was in flight answered 503 or failed to
/// connect, unless it met a stall of the machine or the `grace` after one.
pub(crate) fn check_majority_serves(
    acquires: &[AcquireRecord],
    t: &Timeline,
    grace: Duration,
) -> Vec<String> {
    refused_at_majority(acquires, t)
        .filter(|a| !t.near_stall(a.sent, a.answered, grace))
        .map(|a| {
            format!(
                "majority {}: {}/{} via node {} (client {}), sent {:.3} s, answered {:.3} s: {}",
                a.status,
                a.key.0,
                a.key.1,
                a.node,
                a.client,
                t.secs(a.sent),
                t.secs(a.answered),
                a.detail
            )
        })
        .collect()
}

/// The figures of one run, as one line: grants/s per phase, the longest gap between grants answered by
/// majority nodes, the p99 and max of granted acquires' latency, and answers by status.
pub(crate) fn figures(name: &str, j: &Journal, t: &Timeline, end: Instant) -> String {
    let grants: Vec<&AcquireRecord> = j.acquires.iter().filter(|a| a.status == 200).collect();
    let mut s = format!("nemesis {name}:");
    for (k, (from, phase)) in t.phases.iter().enumerate() {
        let to = t.phases.get(k + 1).map_or(end, |p| p.0);
        let n = grants.iter().filter(|a| a.answered >= *from && a.answered < to).count();
        let secs = to.saturating_duration_since(*from).as_secs_f64().max(1e-3);
        let _ = write!(s, " {phase} {:.0} grants/s ({secs:.1} s);", n as f64 / secs);
    }
    let (gap, from) = longest_gap(grants.iter().copied(), t, end);
    let _ = write!(
        s,
        " longest gap between grants on majority nodes {:.0} ms (from {:.1} s; per algorithm",
        gap.as_secs_f64() * 1000.0,
        t.secs(from)
    );
    for algorithm in ["lamport", "ricart-agrawala", "probable-owner"] {
        let (gap, _) = longest_gap(grants.iter().copied().filter(|a| a.key.0 == algorithm), t, end);
        let _ = write!(s, " {algorithm} {:.0}", gap.as_secs_f64() * 1000.0);
    }
    s.push_str(");");
    let mut lat: Vec<Duration> = grants.iter().map(|a| a.answered - a.sent).collect();
    lat.sort();
    let p99 = lat.get((lat.len() * 99).div_ceil(100).saturating_sub(1)).copied().unwrap_or_default();
    let max = lat.last().copied().unwrap_or_default();
    let _ = write!(
        s,
        " acquire latency p99 {:.1} ms, max {:.1} ms ({} grants);",
        p99.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0,
        grants.len()
    );
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for a in &j.acquires {
        *statuses.entry(a.status).or_default() += 1;
    }
    let _ = write!(s, " answers {statuses:?}");
    let longest = t.stalls.iter().map(|(a, b)| *b - *a).max().unwrap_or_default();
    let excused = refused_at_majority(&j.acquires, t)
        .filter(|a| t.near_stall(a.sent, a.answered, Rules::default().stall_grace))
        .count();
    let _ = write!(
        s,
        "; machine stalls {} (longest {:.0} ms), majority refusals excused by them {excused}",
        t.stalls.len(),
        longest.as_secs_f64() * 1000.0
    );
    s
}

/// The longest time without a grant answered by a node in the majority, from the first phase to `end`, and
/// when it began.
fn longest_gap<'a>(
    grants: impl Iterator<Item = &'a AcquireRecord>,
    t: &Timeline,
    end: Instant,
) -> (Duration, Instant) {
    let mut on_majority: Vec<Instant> = grants
        .filter(|a| t.majority_throughout(a.node, a.answered, a.answered))
        .map(|a| a.answered)
        .collect();
    on_majority.sort();
    let mut gap = (Duration::ZERO, t.start);
    let mut last = t.phases.first().map_or(t.start, |p| p.0);
    for g in on_majority.into_iter().chain(std::iter::once(end)) {
        if g.saturating_duration_since(last) > gap.0 {
            gap = (g.saturating_duration_since(last), last);
        }
        last = last.max(g);
    }
    gap
}

#[cfg(test)]
mod tests {
    //! Negative controls: runs that break a rule on purpose must fail the check that guards it.
    use super::*;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn hold(t0: Instant, client: usize, token: u64, from: u64, to: u64, release: u16) -> Hold {
        Hold {
            client,
            node: client % 5,
            key: key("lamport", "x"),
            token,
            lease: format!("l-{client}-{token}"),
            ttl: Duration::from_secs(5),
            acquire_sent: ms(t0, from.saturating_sub(1)),
            granted: ms(t0, from),
            keepalives: Vec::new(),
            release: Some(Call { sent: ms(t0, to), answered: ms(t0, to + 1), status: release }),
        }
    }

    fn acquire(t0: Instant, node: usize, sent: u64, answered: u64, status: u16) -> AcquireRecord {
        AcquireRecord {
            client: 0,
            node,
            key: key("ricart-agrawala", "y"),
            sent: ms(t0, sent),
            answered: ms(t0, answered),
            timeout: Duration::from_millis(1000),
            status,
            token: None,
            lease: None,
            detail: String::new(),
        }
    }

    fn timeline_at(t0: Instant) -> Timeline {
        let mut t = Timeline::new();
        t.start = t0;
        t.epochs[0].at = t0;
        t.phases[0].0 = t0;
        t
    }

    #[test]
    fn the_ledger_refuses_an_older_or_equal_token_per_lock_and_algorithm() {
        let l = Ledger::new();
        let (lx, rx) = (key("lamport", "x"), key("ricart-agrawala", "x"));
        assert!(l.write(0, &lx, 5, "a"));
        assert!(!l.write(1, &lx, 4, "b"), "an older token is refused");
        assert!(!l.write(1, &lx, 5, "b"), "an equal token of another lease is refused");
        assert!(l.write(0, &lx, 5, "a"), "the current holder may write again");
        assert!(l.write(1, &rx, 1, "c"), "another algorithm is another lock space");
        assert!(l.write(2, &lx, 6, "d"));
        let j = l.journal();
        assert_eq!(j.writes.iter().filter(|w| !w.accepted).count(), 2);
        assert!(!l.write(0, &lx, 5, "a"), "a holder superseded by a larger token may not write again");
        assert_eq!(j.writes[1].highest_before, Some(5));
    }

    #[test]
    fn control_a_write_with_an_older_token_by_a_valid_holder_fails_the_fencing_check() {
        let t0 = Instant::now();
        let t = timeline_at(t0);
        let l = Ledger::new();
        let k = key("lamport", "x");
        // The holder of token 7 writes first; the holder of token 5, whose release later answers 200 (so its
        // lease was valid), writes after it and is refused.
        assert!(l.write(1, &k, 7, "l-1-7"));
        assert!(!l.write(0, &k, 5, "l-0-5"));
        let mut j = l.journal();
        j.holds.push(hold(t0, 0, 5, 0, 10_000, 200));
        j.holds.push(hold(t0, 1, 7, 20_000, 30_000, 200));
        let v = check_fencing(&j, &t);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("fencing:"), "{v:?}");
        // The same refusal of a holder whose lease had lapsed (its release answered 409) is what fencing is
        // for: no violation.
        j.holds[0] = hold(t0, 0, 5, 0, 10_000, 409);
        assert_eq!(check_fencing(&j, &t), Vec::<String>::new());
    }

    #[test]
    fn control_two_overlapping_holds_fail_the_overlap_check() {
        let t0 = Instant::now();
        let t = timeline_at(t0);
        let holds = vec![hold(t0, 0, 1, 0, 100, 200), hold(t0, 1, 2, 50, 150, 200)];
        let v = check_overlaps(&holds, &t);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("overlap:"), "{v:?}");
        // A long hold overlapping a later one after a short one in between is found too.
        let holds =
            vec![hold(t0, 0, 1, 0, 1000, 200), hold(t0, 1, 2, 10, 20, 200), hold(t0, 2, 3, 500, 600, 200)];
        assert_eq!(check_overlaps(&holds, &t).len(), 2);
        // Back to back (the next granted after the previous release was sent) is fine; so is an overlap
        // with a hold whose release was refused (its lease had lapsed).
        let holds =
            vec![hold(t0, 0, 1, 0, 100, 200), hold(t0, 1, 2, 100, 150, 200), hold(t0, 2, 3, 120, 140, 409)];
        assert_eq!(check_overlaps(&holds, &t), Vec::<String>::new());
    }

    #[test]
    fn control_tokens_out_of_grant_order_or_reused_fail_the_token_check() {
        let t0 = Instant::now();
        let t = timeline_at(t0);
        let v = check_token_order(&[hold(t0, 0, 9, 0, 10, 200), hold(t0, 1, 8, 20, 30, 200)], &t);
        assert!(v.len() == 1 && v[0].starts_with("token order:"), "{v:?}");
        let v = check_token_order(&[hold(t0, 0, 9, 0, 10, 200), hold(t0, 1, 9, 20, 30, 409)], &t);
        assert!(v.len() == 1 && v[0].starts_with("token reuse:"), "{v:?}");
        let ok = check_token_order(&[hold(t0, 0, 9, 0, 10, 200), hold(t0, 1, 12, 20, 30, 200)], &t);
        assert_eq!(ok, Vec::<String>::new());
    }

    #[test]
    fn control_a_late_answer_fails_the_deadline_check_unless_its_node_was_frozen() {
        let t0 = Instant::now();
        let mut t = timeline_at(t0);
        let late = [acquire(t0, 2, 0, 3000, 409)];
        assert_eq!(check_deadlines(&late, &t, Duration::from_millis(500)).len(), 1);
        assert_eq!(check_deadlines(&[acquire(t0, 2, 0, 1400, 409)], &t, Duration::from_millis(500)).len(), 0);
        let mut stalled = timeline_at(t0);
        stalled.stalls.push((ms(t0, 100), ms(t0, 1200)));
        assert_eq!(
            check_deadlines(&[acquire(t0, 2, 0, 2400, 409)], &stalled, Duration::from_millis(500)).len(),
            0
        );
        assert_eq!(check_deadlines(&late, &stalled, Duration::from_millis(500)).len(), 1);
        t.set_at(ms(t0, 1000), &[2], &[2], "SIGSTOP 2");
        t.set_at(ms(t0, 2000), &[], &[], "SIGCONT 2");
        assert_eq!(check_deadlines(&late, &t, Duration::from_millis(500)), Vec::<String>::new());
    }

    #[test]
    fn control_a_503_from_a_majority_node_fails_but_not_from_the_minority() {
        let t0 = Instant::now();
        let mut t = timeline_at(t0);
        t.set_at(ms(t0, 1000), &[0, 1], &[], "cut {0,1}");
        t.set_at(ms(t0, 5000), &[], &[], "healed");
        let answers = [
            acquire(t0, 0, 1500, 1510, 503),
            acquire(t0, 3, 1500, 1510, 503),
            acquire(t0, 0, 500, 1200, 503),
        ];
        let grace = Duration::from_millis(1000);
        let v = check_majority_serves(&answers, &t, grace);
        assert_eq!(v.len(), 1, "only node 3's 503 is a violation: {v:?}");
        assert!(v[0].contains("via node 3"), "{v:?}");
        let later = [acquire(t0, 0, 6000, 6010, 503), acquire(t0, 3, 0, 10, 409)];
        let v = check_majority_serves(&later, &t, grace);
        assert_eq!(v.len(), 1, "node 0 after the heal must serve; a 409 timeout is not a violation: {v:?}");
        // A stall of the machine excuses a refusal that meets it or its grace, and nothing else.
        t.stalls.push((ms(t0, 5500), ms(t0, 5900)));
        assert_eq!(check_majority_serves(&later, &t, grace), Vec::<String>::new());
        assert_eq!(check_majority_serves(&answers, &t, grace).len(), 1);
    }

    #[test]
    fn figures_count_grants_per_phase_and_the_longest_gap() {
        let t0 = Instant::now();
        let mut t = timeline_at(t0);
        t.phases.push((ms(t0, 1000), "during".into()));
        let mut j = Journal::default();
        for (sent, answered) in [(0, 100), (200, 300), (900, 1000), (1900, 2000)] {
            j.acquires.push(acquire(t0, 1, sent, answered, 200));
        }
        let line = figures("control", &j, &t, ms(t0, 2000));
        assert!(line.contains("before 2 grants/s (1.0 s); during 1 grants/s (1.0 s)"), "{line}");
        assert!(line.contains("longest gap between grants on majority nodes 1000 ms (from 1.0 s; per algorithm lamport 2000 ricart-agrawala 1000"), "{line}");
        assert!(line.contains("p99 100.0 ms"), "{line}");
    }
}
