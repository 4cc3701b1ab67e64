//! The nemesis suite: five real `dmutex node` processes, 30 client threads over every node and all three
//! algorithms writing to a fencing ledger (`tests/support/ledger.rs`), and faults — `kill -9`, SIGSTOP past a
//! lease, a partition through TCP proxies, a rolling restart, live scaling 3 → 5 → 3 (two joiners beyond the
//! peer list, then their graceful leaves), and a seeded soak mixing them. After each
//! scenario: the ledger's checks (no overlapping accepted holds, no valid holder fenced off, tokens rising in
//! grant order, every acquire answered by its deadline, no 503 from a node in the majority), and every node
//! agreeing in `GET /v1/cluster`. Each scenario prints one line of figures (grants/s before, during and after
//! the fault, the longest gap between grants on majority nodes, the p99 of acquire latency) for BENCHMARKS.md.
//!
//! Two scenarios bend one node's clock (`DMUTEX_TEST_CLOCK_RATE_PPM`) against the membership layer's timing
//! assumption, rates within `1 ± ρ` (ρ = `DMUTEX_CLOCK_DRIFT_PPM`, 1 % by default):
//! `clock_drift_within_rho_stays_safe` cuts off a node at 0.991 that owns a probable-owner lock while a node
//! at 1.009 is in the majority, and every check passes; `clock_drift_beyond_rho_is_caught` is the negative
//! control: the cut-off owner runs at 0.2, keeps granting for seconds after the majority has excluded it and
//! regenerated the lock, and the test passes only if the ledger reports the overlapping holds.
//!
//! The scenarios run one at a time (a lock in this file): five nodes and thirty clients are what two cores can
//! carry without the timing of the membership layer being the thing under test.
//!
//! The soak is ignored (it takes longer than 40 s); `.ci/run` runs it
//! (`cargo test --test nemesis soak_ -- --ignored`). (Three scenarios were ignored here with
//! `fails:` while a node bug stood — a restarted node's first seconds without a member's data, whose reconnect
//! backoff had grown during the outage, made it suspect a live member; fixed in the transport.)

mod common;
#[path = "support/ledger.rs"]
mod ledger;
#[path = "support/workload.rs"]
mod workload;

use common::{ALGORITHMS, Api, Cluster, send_signal};
use ledger::{Journal, Ledger, Rules, Timeline, check, figures};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use workload::{
    ClientConfig, Mesh, Rng, StallMonitor, Workload, acquire, keepalive, release, wait_converged,
};

/// Nodes per scenario.
const N: usize = 5;
/// How long after a fault a view change may take before majority nodes grant again (S + L + 2 × retry with the
/// default timing is 3.1 s), plus scheduling slack.
const SETTLE: Duration = Duration::from_millis(3600);
/// A wake-up of the test process this late means the machine was starved (see `Rules::stall_grace`).
const STALL: Duration = Duration::from_millis(400);
/// The clients' HTTP timeout: an acquire never answered (a deadline violation) costs this much, not 60 s.
const HTTP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the cluster must take to agree again after a fault ends.
const CONVERGE: Duration = Duration::from_secs(30);

/// One scenario at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Writes a line to the process's stderr directly (the test harness would capture `eprintln!`), so the figures
/// show in every run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A running scenario: the cluster, its clients, the ledger and the declared timeline.
struct Scenario {
    name: &'static str,
    c: Cluster,
    api: Api,
    ledger: Arc<Ledger>,
    t: Timeline,
    work: Option<Workload>,
    stalls: Option<StallMonitor>,
    mesh: Option<Mesh>,
    /// The nodes that must agree (in `GET /v1/cluster`) after a fault and at the end: every node, unless the
    /// scenario scales the cluster.
    nodes: Vec<usize>,
    /// Scenario-specific failures, reported with the ledger's.
    failures: Vec<String>,
    /// How to replay (for seeded scenarios).
    replay: String,
    _serial: MutexGuard<'static, ()>,
}

impl Scenario {
    /// Starts five nodes (behind a proxy mesh if `mesh`), waits until they agree, starts the clients and lets
    /// them run for `baseline`.
    fn start(name: &'static str, mesh: bool, cfg: ClientConfig, baseline: Duration) -> Scenario {
        Scenario::start_with(name, mesh, cfg, baseline, &[])
    }

    /// Like [`Scenario::start`], with extra environment for some nodes (`(node, key, value)`).
    fn start_with(
        name: &'static str,
        mesh: bool,
        cfg: ClientConfig,
        baseline: Duration,
        node_env: &[(usize, &str, &str)],
    ) -> Scenario {
        Scenario::launch(name, mesh, cfg, baseline, node_env, N, N)
    }

    /// Like [`Scenario::start_with`] with `slots` nodes described of which the first `base` form the cluster
    /// (peer list: those, behind the proxy mesh if `mesh`; `DMUTEX_BOOTSTRAP_EXPECT` = `base` when there are
    /// more slots) and run the clients. Nodes `base..slots` are not started: they are live joiners beyond the
    /// peer list, with the `base` nodes' own addresses as seeds and theirs in `DMUTEX_ADVERTISE_ADDR` (outside
    /// the mesh), declared outside the majority until the scenario says otherwise.
    fn launch(
        name: &'static str,
        mesh: bool,
        cfg: ClientConfig,
        baseline: Duration,
        node_env: &[(usize, &str, &str)],
        base: usize,
        slots: usize,
    ) -> Scenario {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let bootstrap = base.to_string();
        let env: &[(&str, &str)] =
            if slots > base { &[("DMUTEX_BOOTSTRAP_EXPECT", &bootstrap)] } else { &[] };
        let mut c = Cluster::new(&format!("nemesis-{name}"), slots, env);
        for &(i, k, v) in node_env {
            c.node_env.entry(i).or_default().push((k.to_string(), v.to_string()));
        }
        let mesh = mesh.then(|| Mesh::install_first(&mut c, base));
        if slots > base {
            let seeds = (0..base).map(|i| c.peer_addr(i)).collect::<Vec<_>>().join(",");
            let mut lists = c.peers_override.take().unwrap_or_else(|| vec![seeds.clone(); base]);
            lists.resize(slots, seeds);
            c.peers_override = Some(lists);
            for i in base..slots {
                let advertise = c.peer_addr(i);
                c.node_env.entry(i).or_default().push(("DMUTEX_ADVERTISE_ADDR".into(), advertise));
            }
        }
        for i in 0..base {
            c.spawn(i);
        }
        c.wait_ready(Duration::from_secs(30));
        let api = c.api().with_timeout(HTTP_TIMEOUT);
        let nodes: Vec<usize> = (0..base).collect();
        if let Err(e) = wait_converged(&api, &nodes, CONVERGE) {
            panic!("{name}: the fresh cluster does not agree: {e}\nlogs in {}", c.dir.display());
        }
        let ledger = Arc::new(Ledger::new());
        let mut t = Timeline::new();
        if slots > base {
            let outside: Vec<usize> = (base..slots).collect();
            t.set(&outside, &[], format!("cluster of {base}; nodes {outside:?} not started"));
        }
        let stalls = Some(StallMonitor::start(STALL));
        let work = Some(Workload::start(&api, base, &cfg, &ledger));
        std::thread::sleep(baseline);
        Scenario {
            name,
            c,
            api,
            ledger,
            t,
            work,
            stalls,
            mesh,
            nodes,
            failures: Vec::new(),
            replay: String::new(),
            _serial: serial,
        }
    }

    /// Declares `minority` (and the `frozen` among them) from now on.
    fn declare(&mut self, minority: &[usize], frozen: &[usize], note: &str) {
        self.t.set(minority, frozen, note);
    }

    /// Waits until every node agrees again, then declares every node in the majority.
    fn rejoin_all(&mut self, note: &str) {
        match wait_converged(&self.api, &self.nodes, CONVERGE) {
            Ok(took) => self.declare(&[], &[], &format!("{note}: all agree after {took:?}")),
            Err(e) => self.failures.push(format!("convergence: after {note}, not within {CONVERGE:?}: {e}")),
        }
    }

    /// Fails the scenario unless every algorithm had a grant answered by a node of `majority` within
    /// `[from, to]`.
    fn expect_grants(&mut self, majority: &[usize], from: Instant, to: Instant, what: &str) {
        let j = self.ledger.journal();
        for algorithm in ALGORITHMS {
            let n = j
                .acquires
                .iter()
                .filter(|a| a.status == 200 && a.key.0 == algorithm && majority.contains(&a.node))
                .filter(|a| a.answered >= from && a.answered <= to)
                .count();
            if n == 0 {
                self.failures.push(format!(
                    "progress: no {algorithm} grant on majority nodes {majority:?} {what} ({:.1}–{:.1} s)",
                    self.t.secs(from),
                    self.t.secs(to)
                ));
            }
        }
    }

    /// Stops the clients, checks convergence and the ledger, prints the figures; panics with every failure.
    fn finish(mut self) -> Journal {
        let (j, failures, line) = self.verdict(true);
        if !failures.is_empty() {
            self.fail(&failures, &line);
        }
        j
    }

    /// Panics with `failures` (the first 25; all of them in `failures.txt` next to the node logs).
    fn fail(&self, failures: &[String], line: &str) -> ! {
        let all = self.c.dir.join("failures.txt");
        let text = format!("{}\n{}timeline:\n{}", failures.join("\n"), self.replay, self.t.describe());
        let _ = std::fs::write(&all, text);
        let shown: Vec<&String> = failures.iter().take(25).collect();
        panic!(
            "{}: {} failures (first {}; all in failures.txt):\n{}\n{}timeline:\n{}figures: {line}\nnode logs \
             kept in {}",
            self.name,
            failures.len(),
            shown.len(),
            shown.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
            self.replay,
            self.t.describe(),
            self.c.dir.display()
        );
    }

    /// Stops the clients, checks convergence (if `converge`) and the ledger, prints the figures; returns the
    /// journal, every failure (the scenario's and the ledger's) and the figures line.
    fn verdict(&mut self, converge: bool) -> (Journal, Vec<String>, String) {
        if converge && let Err(e) = wait_converged(&self.api, &self.nodes, CONVERGE) {
            self.failures.push(format!("convergence: at the end, not within {CONVERGE:?}: {e}"));
        }
        // The figures end when the clients are told to stop, not when the last of them returns (one stuck in a
        // request that is never answered returns only at the HTTP timeout).
        let end = Instant::now();
        if let Some(w) = self.work.take() {
            w.stop();
        }
        if let Some(m) = self.stalls.take() {
            self.t.stalls = m.stop();
        }
        let j = self.ledger.journal();
        let mut failures = std::mem::take(&mut self.failures);
        failures.extend(check(&j, &self.t, Rules::default()));
        let line = figures(self.name, &j, &self.t, end);
        say(&line);
        (j, failures, line)
    }
}

fn all() -> Vec<usize> {
    (0..N).collect()
}

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key)
        .ok()
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{key}={v:?} is not a number")))
}

// ---------------------------------------------------------------------------------------------------------
// Without faults.

/// Thirty clients for 5 s without a fault: every check passes, every algorithm grants on every node.
#[test]
fn fault_free_run_passes_every_check() {
    let mut s = Scenario::start("fault-free", false, ClientConfig::default(), Duration::from_secs(5));
    let (from, to) = (s.t.start, Instant::now());
    for i in 0..N {
        s.expect_grants(&[i], from, to, &format!("at node {i} without faults"));
    }
    let j = s.finish();
    let fenced = j.writes.iter().filter(|w| !w.accepted).count();
    assert_eq!(fenced, 0, "without faults no write is fenced off");
    controls_on_a_real_journal(j);
}

/// Negative controls on the fault-free run's real journal: the checks have material to work on, and one
/// broken record among thousands of good ones fails them.
fn controls_on_a_real_journal(j: Journal) {
    let t = Timeline::new();
    let released: Vec<&ledger::Hold> = j.holds.iter().filter(|h| h.released_ok()).collect();
    assert!(released.len() > 1000, "too few accepted holds to check: {}", released.len());
    // A fake holder overlapping a real one: a copy of the first hold granted again half-way through it.
    let mut fake = j.clone();
    let first = released[0].clone();
    let mut twin = first.clone();
    twin.client = 999;
    twin.lease = format!("{}-fake", first.lease);
    twin.token = u64::MAX;
    twin.granted = first.granted + (first.end().expect("released") - first.granted) / 2;
    fake.holds.push(twin);
    let v = ledger::check_overlaps(&fake.holds, &t);
    assert!(v.len() == 1 && v[0].starts_with("overlap:"), "the overlapping fake holder is caught: {v:?}");
    // A valid holder (its release answered 200 later) whose write with an older token the ledger refused.
    let mut fake = j.clone();
    fake.writes.push(ledger::WriteRecord {
        client: first.client,
        key: first.key.clone(),
        token: first.token.saturating_sub(1),
        lease: first.lease.clone(),
        at: first.granted,
        accepted: false,
        highest_before: Some(first.token),
    });
    let v = ledger::check_fencing(&fake, &t);
    assert!(v.len() == 1 && v[0].starts_with("fencing:"), "the fenced-off valid holder is caught: {v:?}");
    assert_eq!(ledger::check_fencing(&j, &t), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------------------
// (a) kill -9.

/// `kill -9` node 4, 5.6 s later node 3 (three of five stay), then both restart with the same ids: the majority
/// grants every algorithm throughout (after each view change), and the restarted nodes rejoin.
#[test]
fn kill_two_nodes_one_after_the_other_then_restart_both() {
    let mut s = Scenario::start("kill9", false, ClientConfig::default(), Duration::from_secs(3));
    s.t.phase("during");
    let k4 = Instant::now();
    s.declare(&[4], &[], "kill -9 node 4");
    s.c.kill9(4);
    std::thread::sleep(Duration::from_secs(2) + SETTLE);
    let k3 = Instant::now();
    s.declare(&[3, 4], &[], "kill -9 node 3");
    s.c.kill9(3);
    std::thread::sleep(Duration::from_secs(2) + SETTLE);
    let back = Instant::now();
    s.declare(&[3, 4], &[], "restart nodes 3 and 4");
    s.c.spawn(3);
    s.c.spawn(4);
    s.rejoin_all("restart of 3 and 4");
    s.t.phase("after");
    let rejoined = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    s.expect_grants(&[0, 1, 2, 3], k4 + SETTLE, k3, "with node 4 down");
    s.expect_grants(&[0, 1, 2], k3 + SETTLE, back, "with nodes 3 and 4 down");
    s.expect_grants(&[3, 4], rejoined, Instant::now(), "after the restarted nodes rejoined");
    s.finish();
}

/// `kill -9` of node 1, restart with the same id, until all agree; then the same again: the majority grants
/// throughout (after each view change) and after the second rejoin as after the first. (The soak with seed 7
/// lost every member lease a few seconds after a node's rejoin; this is that step alone.)
#[test]
fn the_same_node_killed_and_restarted_twice() {
    let mut s = Scenario::start("twice", false, ClientConfig::default(), Duration::from_secs(2));
    s.t.phase("during");
    for round in 1..=2 {
        let killed = Instant::now();
        s.declare(&[1], &[], &format!("kill -9 node 1 (round {round})"));
        s.c.kill9(1);
        std::thread::sleep(SETTLE + Duration::from_secs(1));
        s.expect_grants(
            &[0, 2, 3, 4],
            killed + SETTLE,
            Instant::now(),
            &format!("with node 1 down (round {round})"),
        );
        s.c.spawn(1);
        s.rejoin_all(&format!("restart of node 1 (round {round})"));
        std::thread::sleep(Duration::from_secs(1));
    }
    s.t.phase("after");
    let rejoined = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    s.expect_grants(&all(), rejoined, Instant::now(), "after the second rejoin");
    s.finish();
}

// ---------------------------------------------------------------------------------------------------------
// (b) SIGSTOP past a lease.

/// Node 4's clients hold `fenced` (one lease per algorithm, TTL 1.5 s) when node 4 is stopped for 5 s: rivals
/// through the other nodes are granted `fenced` meanwhile with larger tokens; after SIGCONT the stopped
/// node's clients' keepalives and releases answer 409 and their writes are fenced off.
#[test]
fn a_stopped_nodes_client_loses_its_lease_to_a_rival_with_a_larger_token() {
    const V: usize = 4;
    let ttl = Duration::from_millis(1500);
    let mut s = Scenario::start("sigstop", false, ClientConfig::default(), Duration::from_secs(3));
    let mut victims = Vec::new();
    for (k, algorithm) in ALGORITHMS.into_iter().enumerate() {
        let h = acquire(&s.ledger, &s.api, 100 + k, V, algorithm, "fenced", Duration::from_secs(5), ttl);
        let h = h.unwrap_or_else(|| panic!("the victim's {algorithm} acquire at node {V} was refused"));
        assert!(s.ledger.write(h.client, &h.key, h.token, &h.lease), "the victim's first write");
        victims.push(h);
    }
    let pid = s.c.pid(V).expect("node 4 runs");
    s.t.phase("during");
    s.declare(&[V], &[V], "SIGSTOP node 4");
    let stopped = Instant::now();
    send_signal(pid, "STOP");
    // One rival per algorithm, each through another node, waiting long enough for the view change.
    let rivals: Vec<_> = ALGORITHMS
        .into_iter()
        .enumerate()
        .map(|(k, algorithm)| {
            let (ledger, api) = (s.ledger.clone(), s.api.clone());
            std::thread::spawn(move || {
                let mut h =
                    acquire(&ledger, &api, 200 + k, k, algorithm, "fenced", Duration::from_secs(10), ttl)?;
                let accepted = ledger.write(h.client, &h.key, h.token, &h.lease);
                std::thread::sleep(Duration::from_millis(5));
                release(&api, &mut h);
                ledger.held(h.clone());
                Some((h, accepted))
            })
        })
        .collect();
    let rivals: Vec<_> = rivals.into_iter().map(|r| r.join().expect("rival")).collect();
    std::thread::sleep(Duration::from_secs(5).saturating_sub(stopped.elapsed()));
    send_signal(pid, "CONT");
    let continued = Instant::now();
    s.declare(&[V], &[], "SIGCONT node 4");
    s.t.phase("after");
    for (victim, rival) in victims.iter_mut().zip(&rivals) {
        let algorithm = victim.key.0.clone();
        let ka = keepalive(&s.api, victim);
        let wrote = s.ledger.write(victim.client, &victim.key, victim.token, &victim.lease);
        let rel = release(&s.api, victim);
        s.ledger.held(victim.clone());
        say(&format!(
            "nemesis sigstop: {algorithm}: victim token {} via node {V}: after SIGCONT keepalive {ka}, write \
             accepted {wrote}, release {rel}; rival: {}",
            victim.token,
            rival.as_ref().map_or("not granted".to_string(), |(r, ok)| format!(
                "token {} via node {} granted {:.3} s after SIGSTOP, write accepted {ok}",
                r.token,
                r.node,
                (r.granted - stopped).as_secs_f64()
            ))
        ));
        if ka != 409 || rel != 409 {
            s.failures.push(format!(
                "sigstop: {algorithm}: the stopped node's lease answered keepalive {ka}, release {rel} after \
                 SIGCONT (expected 409 and 409)"
            ));
        }
        match rival {
            Some((r, accepted)) => {
                if !(r.token > victim.token && *accepted && r.granted < continued) {
                    s.failures.push(format!(
                        "sigstop: {algorithm}: rival token {} (ledger accepted: {accepted}, granted at {:.3} s) \
                         against the victim's {} (node continued at {:.3} s)",
                        r.token,
                        s.t.secs(r.granted),
                        victim.token,
                        s.t.secs(continued)
                    ));
                }
                if wrote {
                    s.failures
                        .push(format!("sigstop: {algorithm}: the victim's write after SIGCONT was accepted"));
                }
            }
            None => s
                .failures
                .push(format!("sigstop: {algorithm}: no rival was granted while node 4 was stopped")),
        }
    }
    s.rejoin_all("SIGCONT of node 4");
    std::thread::sleep(Duration::from_secs(3));
    s.expect_grants(&[0, 1, 2, 3], stopped + SETTLE, continued, "while node 4 was stopped");
    s.finish();
}

// ---------------------------------------------------------------------------------------------------------
// (c) A partition.

/// Nodes {0, 1} are cut off from {2, 3, 4} for 7 s through the proxy mesh, then healed: the majority side
/// grants every algorithm, the minority answers 503 at once (once its member lease has run out), and all
/// five agree again after the heal.
#[test]
fn a_minority_cut_off_answers_503_while_the_majority_grants() {
    let mut s = Scenario::start("partition", true, ClientConfig::default(), Duration::from_secs(3));
    s.t.phase("during");
    let cut = Instant::now();
    s.declare(&[0, 1], &[], "partition {0,1} | {2,3,4}");
    s.mesh.as_ref().expect("mesh").partition(&[0, 1]);
    std::thread::sleep(SETTLE);
    for i in 0..N {
        let (status, body) = s.api.get(i, "/readyz");
        let want = if i <= 1 { 503 } else { 200 };
        if status != want {
            s.failures
                .push(format!("partition: node {i}'s /readyz answered {status} {body} (expected {want})"));
        }
    }
    std::thread::sleep(Duration::from_secs(7).saturating_sub(cut.elapsed()));
    let healed = Instant::now();
    s.mesh.as_ref().expect("mesh").heal();
    s.declare(&[0, 1], &[], "heal");
    s.rejoin_all("heal");
    s.t.phase("after");
    std::thread::sleep(Duration::from_secs(3));
    s.expect_grants(&[2, 3, 4], cut + SETTLE, healed, "during the partition");
    let j = s.ledger.journal();
    let minority: Vec<_> =
        j.acquires.iter().filter(|a| a.node <= 1 && a.sent >= cut + SETTLE && a.answered < healed).collect();
    if minority.is_empty() {
        s.failures.push("partition: no acquire at the minority was answered during the partition".into());
    }
    let refused = minority.iter().filter(|a| a.status == 503).count();
    say(&format!(
        "nemesis partition: {refused} of {} acquires at the minority answered 503 (sent {:?} after the cut or later)",
        minority.len(),
        SETTLE
    ));
    for a in minority {
        let took = a.answered - a.sent;
        if a.status != 503 || took > Duration::from_secs(1) {
            s.failures.push(format!(
                "partition: minority node {} answered {} after {took:?} (sent {:.3} s; expected 503 at once): {}",
                a.node,
                a.status,
                s.t.secs(a.sent),
                a.detail
            ));
        }
    }
    s.finish();
}

// ---------------------------------------------------------------------------------------------------------
// (d) A rolling restart.

/// Each node in turn: SIGTERM (it must exit 0), restart with the same id, wait until all five agree, next. The
/// other four keep granting every algorithm.
#[test]
fn rolling_restart_one_node_at_a_time() {
    let mut s = Scenario::start("rolling", false, ClientConfig::default(), Duration::from_secs(3));
    s.t.phase("during");
    for i in 0..N {
        s.declare(&[i], &[], &format!("SIGTERM node {i}"));
        let (code, took) = s.c.sigterm(i);
        if code != Some(0) {
            s.failures.push(format!("rolling: node {i} exited {code:?} after SIGTERM ({took:?})"));
        }
        s.c.spawn(i);
        s.rejoin_all(&format!("restart of node {i}"));
        std::thread::sleep(Duration::from_secs(1));
    }
    s.t.phase("after");
    std::thread::sleep(Duration::from_secs(3));
    s.finish();
}

// ---------------------------------------------------------------------------------------------------------
// (e) Clock rates (`DMUTEX_TEST_CLOCK_RATE_PPM`).

/// The lock the clock-rate scenarios fight over (probable-owner: its owner grants without a message).
const DRIFT_LOCK: &str = "drift";

/// Clients of [`DRIFT_LOCK`] under probable-owner, one thread per node given: acquire, write, hold 80–120 ms,
/// write again (a holder that was superseded meanwhile is refused here), release; after a refusal, back off
/// 20–50 ms. Client ids are `500 + node`.
struct DriftClients {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl DriftClients {
    fn start(s: &Scenario, nodes: &[usize]) -> DriftClients {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = nodes
            .iter()
            .map(|&node| {
                let (ledger, api, stop) = (s.ledger.clone(), s.api.clone(), stop.clone());
                std::thread::spawn(move || {
                    let client = 500 + node;
                    let mut rng = Rng(0x0064_7269_6674 ^ node as u64);
                    let (timeout, ttl) = (Duration::from_millis(5000), Duration::from_millis(3000));
                    while !stop.load(Ordering::Relaxed) {
                        let lock = DRIFT_LOCK;
                        let algorithm = "probable-owner";
                        let Some(mut h) = acquire(&ledger, &api, client, node, algorithm, lock, timeout, ttl)
                        else {
                            std::thread::sleep(rng.millis(20, 50));
                            continue;
                        };
                        ledger.write(client, &h.key, h.token, &h.lease);
                        std::thread::sleep(rng.millis(80, 120));
                        ledger.write(client, &h.key, h.token, &h.lease);
                        release(&api, &mut h);
                        ledger.held(h);
                    }
                })
            })
            .collect();
        DriftClients { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("drift client");
        }
    }
}

/// What happened to [`DRIFT_LOCK`] while node `v` was cut off (`cut` to `until`): the last grant by `v` whose
/// release answered 200 and the first grant by another node (seconds after the cut), for the figures.
fn drift_line(j: &Journal, v: usize, cut: Instant, until: Instant) -> String {
    let drift =
        |h: &&ledger::Hold| h.key.1 == DRIFT_LOCK && h.released_ok() && h.granted >= cut && h.granted < until;
    let secs =
        |t: Option<Instant>| t.map_or("none".to_string(), |t| format!("{:.3} s", (t - cut).as_secs_f64()));
    let last_v = j.holds.iter().filter(drift).filter(|h| h.node == v).map(|h| h.granted).max();
    let first_other = j.holds.iter().filter(drift).filter(|h| h.node != v).map(|h| h.granted).min();
    let by_v = j.holds.iter().filter(drift).filter(|h| h.node == v).count();
    format!(
        "{DRIFT_LOCK} while cut off: node {v} granted {by_v} (released 200), the last {} after the cut; the \
         majority's first grant {} after the cut",
        secs(last_v),
        secs(first_other)
    )
}

/// Two clocks at the edge of ρ (1 %): node 4 runs at 991 000 ppm (slow: its member lease lasts longest in
/// real time) and owns the probable-owner lock `drift` (its client acquires it first, alone) when it is cut
/// off from the others through the proxies for 7 s; node 0, in the majority, runs at 1 009 000 ppm (fast: its
/// wait before it agrees to exclude node 4 is the shortest in real time). Clients of `drift` on every node
/// and the usual thirty clients keep going. Node 4 stops granting before the majority regenerates `drift`
/// (⌊L(1−ρ)/(1+ρ)⌋ = 980 ms on a clock at 0.991 is 989 ms of real time, L + 1 ms at 1.009 is 992 ms): every
/// ledger check passes, the majority grants every algorithm and `drift`, and node 4 reports itself unready.
/// (With the default S = 1.5 s > L, the majority's suspicion, not its lease wait, sets when it regenerates:
/// here node 4's last grant came 0.6–0.9 s after the cut and the majority's first 1.53 s after it, in 4 runs
/// of 4; the 3 ms margin of the lease arithmetic itself is the model checks' and the simulator's to probe.)
/// About 13 s.
#[test]
fn clock_drift_within_rho_stays_safe() {
    const V: usize = 4;
    let env = [(V, "DMUTEX_TEST_CLOCK_RATE_PPM", "991000"), (0, "DMUTEX_TEST_CLOCK_RATE_PPM", "1009000")];
    let mut s = Scenario::start_with("drift-in", true, ClientConfig::default(), Duration::from_secs(2), &env);
    let owner = DriftClients::start(&s, &[V]);
    std::thread::sleep(Duration::from_secs(1));
    if s.ledger.grants_by(V, "probable-owner") == 0 {
        s.failures.push(format!("drift: node {V} granted no probable-owner lock before the cut"));
    }
    s.t.phase("during");
    let cut = Instant::now();
    s.declare(&[V], &[], "partition {4} | {0,1,2,3}; node 4 at 0.991, node 0 at 1.009");
    s.mesh.as_ref().expect("mesh").partition(&[V]);
    let rivals = DriftClients::start(&s, &[0, 1, 2, 3]);
    std::thread::sleep(SETTLE);
    let (status, body) = s.api.get(V, "/readyz");
    if status != 503 {
        s.failures
            .push(format!("drift: node {V}'s /readyz answered {status} {body} while cut off (expected 503)"));
    }
    std::thread::sleep(Duration::from_secs(7).saturating_sub(cut.elapsed()));
    let healed = Instant::now();
    s.mesh.as_ref().expect("mesh").heal();
    s.declare(&[V], &[], "heal");
    s.rejoin_all("heal");
    s.t.phase("after");
    std::thread::sleep(Duration::from_secs(2));
    owner.stop();
    rivals.stop();
    s.expect_grants(&[0, 1, 2, 3], cut + SETTLE, healed, "during the partition");
    let j = s.ledger.journal();
    let regenerated = j.holds.iter().any(|h| {
        h.key.1 == DRIFT_LOCK && h.node != V && h.released_ok() && h.granted > cut && h.granted < healed
    });
    if !regenerated {
        s.failures.push(format!("drift: the majority never granted {DRIFT_LOCK} while node {V} was cut off"));
    }
    say(&format!("nemesis drift-in: {}", drift_line(&j, V, cut, healed)));
    s.finish();
}

/// Negative control, asserted: node 4's clock runs at 200 000 ppm, far outside ρ, so its member lease of
/// 980 ms on its clock lasts 4.9 s of real time after the heartbeat that gained it, while the others exclude it
/// L + 1 ms after their last ack plus S = 1.5 s of silence. Node 4 owns the probable-owner lock `drift` (its
/// client acquired it first, alone) when it is cut off through the proxies; its client keeps acquiring
/// `drift` there (a local grant, no message) and clients on nodes 0–3 start acquiring it at the cut. The
/// majority excludes node 4 and regenerates `drift` about 1.5–2.5 s after the cut; node 4 keeps granting until
/// 3.9–4.9 s after it (its heartbeats go out every 200 ms of its clock, 1 s of real time, so its last acked one
/// left up to 1 s before the cut). Every hold is 80–120 ms and node 4's client re-acquires within
/// milliseconds, so each majority grant in that window of 1.5 s or more overlaps a node-4 hold whose release
/// answers 200: the ledger must report `overlap:` (or `fencing:`, node 4's client refused while its lease
/// was valid) on `drift`, and this test passes only if it does. (A slower rate would lengthen the window but
/// its heartbeats, 2 s apart at 100 000 ppm, would exceed S and have node 4 excluded without any cut; a
/// faster one shrinks the window toward the majority's view change.) Reliability: 5 runs of 5 here caught it,
/// each with the majority's first grant 1.56–1.62 s and node 4's last 4.47–4.71 s after the cut, and about 120
/// overlap and fencing violations on `drift` (plus `token order:`, which is not asserted). About 10 s.
#[test]
fn clock_drift_beyond_rho_is_caught() {
    const V: usize = 4;
    let env = [(V, "DMUTEX_TEST_CLOCK_RATE_PPM", "200000")];
    let cfg = ClientConfig { clients: 0, ..ClientConfig::default() };
    let mut s = Scenario::start_with("drift-out", true, cfg, Duration::ZERO, &env);
    let owner = DriftClients::start(&s, &[V]);
    std::thread::sleep(Duration::from_secs(2));
    let owned = s.ledger.grants_by(V, "probable-owner");
    s.t.phase("during");
    let cut = Instant::now();
    s.declare(&[V], &[], "partition {4} | {0,1,2,3}; node 4 at 0.2");
    s.mesh.as_ref().expect("mesh").partition(&[V]);
    let rivals = DriftClients::start(&s, &[0, 1, 2, 3]);
    std::thread::sleep(Duration::from_secs(7));
    let end = Instant::now();
    owner.stop();
    rivals.stop();
    let (j, failures, line) = s.verdict(false);
    say(&format!("nemesis drift-out: {}", drift_line(&j, V, cut, end)));
    let mut rules: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for f in &failures {
        *rules.entry(f.split(':').next().unwrap_or_default()).or_default() += 1;
    }
    let caught: Vec<&String> = failures
        .iter()
        .filter(|f| {
            let on_drift = f.contains(&format!("probable-owner/{DRIFT_LOCK}:"));
            let overlap = f.starts_with("overlap:")
                && f.contains(&format!("node {V})"))
                && (0..V).any(|i| f.contains(&format!("node {i})")));
            let fenced = f.starts_with("fencing:") && f.contains(&format!("by client {}", 500 + V));
            on_drift && (overlap || fenced)
        })
        .collect();
    say(&format!(
        "nemesis drift-out: the checker reported {} violations ({rules:?}), {} of them node {V}'s holds of \
         {DRIFT_LOCK} overlapping the majority's or fenced off while valid; first: {:?}",
        failures.len(),
        caught.len(),
        caught.first()
    ));
    if owned == 0 || caught.is_empty() {
        let why = if owned == 0 {
            format!("node {V} granted {DRIFT_LOCK} no time before the cut: it was not the owner")
        } else {
            "NEGATIVE CONTROL FAILED: node 4 granted past its real lease, yet the checker reported no overlap \
             or fencing violation on it"
                .to_string()
        };
        let mut all = vec![why];
        all.extend(failures);
        s.fail(&all, &line);
    }
}

// ---------------------------------------------------------------------------------------------------------
// (f) Live scaling.

/// The nodes the scaling scenario forms its cluster with; nodes `BASE..N` join it live and leave it again.
const BASE: usize = 3;
/// Client ids of the clients on the joined nodes (above every other scenario's).
const JOINER_CLIENTS: usize = 1000;

impl Scenario {
    /// The node ids in node `i`'s installed view (empty if it does not answer).
    fn view_of(&self, i: usize) -> Vec<usize> {
        let (_, v) = self.api.get(i, "/v1/cluster");
        v["view"]["members"]
            .as_array()
            .map(|ms| ms.iter().filter_map(|m| m["node_id"].as_u64()).map(|n| n as usize).collect())
            .unwrap_or_default()
    }

    /// SIGTERMs node `i` (a graceful leave; it must exit 0), then waits until `rest` agree on a view of
    /// exactly them. Returns a description of the times it took, as the test saw them.
    fn leave(&mut self, i: usize, rest: &[usize]) -> String {
        let (code, exited) = self.c.sigterm(i);
        if code != Some(0) {
            self.failures.push(format!("scale: node {i} exited {code:?} after SIGTERM ({exited:?})"));
        }
        self.nodes = rest.to_vec();
        match wait_converged(&self.api, rest, CONVERGE) {
            Ok(then) => format!(
                "leave of {i}: exit 0 after {:.0} ms, view of {} agreed {:.0} ms later",
                exited.as_secs_f64() * 1000.0,
                rest.len(),
                then.as_secs_f64() * 1000.0
            ),
            Err(e) => {
                self.failures
                    .push(format!("convergence: after the leave of node {i}, not within {CONVERGE:?}: {e}"));
                format!("leave of {i}: exit after {exited:?}, no agreement")
            }
        }
    }
}

/// Live scaling 3 → 5 → 3 under the workload: three nodes form the cluster (bootstrap expect 3) with the thirty
/// clients on them; nodes 3 and 4 are started together as live joiners beyond the peer list (the three as
/// seeds, `DMUTEX_ADVERTISE_ADDR`) until all five agree on the view of five; twelve more clients on nodes 3
/// and 4 must be granted every algorithm (tokens rising, like every grant); then node 4 and, once the four
/// agree, node 3 are SIGTERMed: each leave is graceful (exit 0; the acquires its clients had sent before the
/// SIGTERM answered by the node itself — 503 `shutting_down`, or a grant just before — never dropped, all by
/// their deadline; the leaving node is declared outside the majority from its SIGTERM on, like the rolling
/// restart's, so its 503s and its refused connections after the exit are no violation), and the nodes that
/// stay never answer 503 and grant every algorithm throughout. Prints when each join and leave was seen (the
/// joins from the joiners' spawn, the leaves from the SIGTERM). About 15 s.
#[test]
fn live_scaling_from_three_to_five_and_back_to_three() {
    let cfg = ClientConfig::default();
    let mut s = Scenario::launch("scale-3-5-3", false, cfg.clone(), Duration::from_secs(3), &[], BASE, N);
    let base: Vec<usize> = (0..BASE).collect();
    s.t.phase("during");
    let joining = Instant::now();
    for i in BASE..N {
        s.c.spawn(i);
    }
    // When node 0's view first lists each joiner, then when all five agree.
    let mut seen: Vec<Option<Duration>> = vec![None; N - BASE];
    common::poll(CONVERGE, || {
        let view = s.view_of(0);
        for (k, at) in seen.iter_mut().enumerate() {
            if at.is_none() && view.contains(&(BASE + k)) {
                *at = Some(joining.elapsed());
            }
        }
        seen.iter().all(Option::is_some)
    });
    s.nodes = all();
    let agreed = match wait_converged(&s.api, &all(), CONVERGE) {
        Ok(_) => joining.elapsed(),
        Err(e) => {
            s.failures.push(format!("scale: the view of {N} was not agreed within {CONVERGE:?}: {e}"));
            s.finish();
            return;
        }
    };
    let five = Instant::now();
    s.declare(&[], &[], format!("view of {N}: nodes {BASE}..{N} joined").as_str());
    // Six clients on each joined node (two per algorithm), stopped once their node has left.
    let mut joiners: std::collections::BTreeMap<usize, Workload> = (BASE..N)
        .map(|i| {
            let more = ClientConfig { clients: 6, ..cfg.clone() };
            let first = JOINER_CLIENTS + 100 * (i - BASE);
            (i, Workload::start_on(&s.api, &[i], first, &more, &s.ledger))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let grants_at_five =
        s.ledger.journal().acquires.iter().filter(|a| a.status == 200 && a.answered >= five).count();
    let at_five = five.elapsed();
    for i in 0..N {
        s.expect_grants(&[i], five, Instant::now(), &format!("at node {i} in the view of {N}"));
    }
    // Node 4 leaves, then node 3.
    let mut leaves = Vec::new();
    let mut left = Vec::new();
    let mut rest: Vec<usize> = all();
    for i in (BASE..N).rev() {
        left.push(i);
        rest.retain(|&j| j != i);
        let sigterm = Instant::now();
        s.declare(&left, &[], &format!("SIGTERM node {i} (graceful leave)"));
        leaves.push(s.leave(i, &rest));
        if let Some(w) = joiners.remove(&i) {
            w.stop();
        }
        // What the leaving node's own clients were answered from the SIGTERM on: the acquires it had in hand
        // then were answered by the node (a 503 `shutting_down`, or a grant just before), never dropped.
        let j = s.ledger.journal();
        let mut answers: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for a in j.acquires.iter().filter(|a| a.node == i && a.answered >= sigterm) {
            let what = match a.status {
                0 => "no connection".to_string(),
                200 => "200".to_string(),
                _ => a.detail.split(':').next().unwrap_or_default().to_string(),
            };
            *answers.entry(what).or_default() += 1;
            if a.status == 0 && a.sent < sigterm {
                s.failures.push(format!(
                    "scale: node {i}'s leave dropped an acquire sent before its SIGTERM: {}/{} (client {}, sent \
                     {:.3} s): {}",
                    a.key.0,
                    a.key.1,
                    a.client,
                    s.t.secs(a.sent),
                    a.detail
                ));
            }
        }
        leaves.push(format!("node {i}'s clients answered {answers:?} from its SIGTERM on"));
        let settled = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        s.expect_grants(&rest, settled, Instant::now(), &format!("after the leave of node {i}"));
    }
    s.t.phase("after");
    let after = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    s.expect_grants(&base, after, Instant::now(), &format!("back at {BASE}"));
    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    say(&format!(
        "nemesis {}: joins of {BASE}..{N} started together: node 0's view listed {} after the start; all {N} \
         agreed after {}; {grants_at_five} grants in {:.1} s at {N} ({:.0} grants/s); {}",
        s.name,
        seen.iter()
            .enumerate()
            .map(|(k, d)| format!("node {} {}", BASE + k, d.map_or("never".to_string(), ms)))
            .collect::<Vec<_>>()
            .join(", "),
        ms(agreed),
        at_five.as_secs_f64(),
        grants_at_five as f64 / at_five.as_secs_f64(),
        leaves.join("; ")
    ));
    s.finish();
}

// ---------------------------------------------------------------------------------------------------------
// (g) The soak.

/// A seeded mix of the faults above, one at a time, each healed and the cluster agreed again before the next:
/// `kill -9` of one or two nodes, SIGSTOP of one for 0.3–6 s, a partition of one or two nodes, SIGTERM and
/// restart; and once, before one of the first three faults, a scale step (node 5 joins live beyond the peer
/// list, its clients are granted, it leaves with SIGTERM; drawn from its own generator, so a seed's faults are
/// the ones it drew before the step existed). `DMUTEX_NEMESIS_SEED` replays a schedule (default: from the
/// clock, printed) and
/// `DMUTEX_NEMESIS_SECS` (default 120) bounds it. Takes about `DMUTEX_NEMESIS_SECS` + 20 s; `.ci/run` runs it.
#[test]
#[ignore = "takes about 140 s; .ci/run runs it"]
fn soak_of_random_faults_from_a_seed() {
    let seed = env_u64("DMUTEX_NEMESIS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() % 100_000)
    });
    let secs = env_u64("DMUTEX_NEMESIS_SECS").unwrap_or(120);
    let replay = format!(
        "replay: DMUTEX_NEMESIS_SEED={seed} DMUTEX_NEMESIS_SECS={secs} cargo test --test nemesis soak -- \
         --ignored --nocapture\n"
    );
    say(&format!("nemesis soak: seed {seed}, {secs} s of faults; {replay}"));
    let cfg = ClientConfig { seed, ..ClientConfig::default() };
    let mut s = Scenario::launch("soak", true, cfg.clone(), Duration::from_secs(3), &[], N, N + 1);
    s.replay = replay;
    let mut rng = Rng(seed);
    // The scale step draws from its own generator, so a seed's schedule of faults is the same with it.
    let mut scale_rng = Rng(seed ^ 0x7363_616c_6500);
    let scale_round = scale_rng.below(3);
    let end = Instant::now() + Duration::from_secs(secs);
    s.t.phase("during");
    let mut round = 0;
    while Instant::now() < end {
        if round == scale_round {
            soak_scale_step(&mut s, scale_rng.millis(1000, 6000), &cfg);
            std::thread::sleep(scale_rng.millis(500, 2000));
        }
        round += 1;
        let out = rng.millis(300, 6000);
        let a = rng.below(N);
        let b = (a + 1 + rng.below(N - 1)) % N;
        match rng.below(4) {
            0 => {
                let two = rng.below(2) == 0;
                let victims = if two { vec![a, b] } else { vec![a] };
                s.declare(&victims, &[], &format!("kill -9 {victims:?} for {out:?}"));
                victims.iter().for_each(|&v| s.c.kill9(v));
                std::thread::sleep(out);
                victims.iter().for_each(|&v| s.c.spawn(v));
                s.rejoin_all(&format!("restart of {victims:?}"));
            }
            1 => {
                let pid = s.c.pid(a).expect("running node");
                s.declare(&[a], &[a], &format!("SIGSTOP node {a} for {out:?}"));
                send_signal(pid, "STOP");
                std::thread::sleep(out);
                send_signal(pid, "CONT");
                s.declare(&[a], &[], &format!("SIGCONT node {a}"));
                s.rejoin_all(&format!("SIGCONT of node {a}"));
            }
            2 => {
                let side = if rng.below(2) == 0 { vec![a, b] } else { vec![a] };
                s.declare(&side, &[], &format!("partition {side:?} for {out:?}"));
                s.mesh.as_ref().expect("mesh").partition(&side);
                std::thread::sleep(out);
                s.mesh.as_ref().expect("mesh").heal();
                s.rejoin_all(&format!("heal of {side:?}"));
            }
            _ => {
                s.declare(&[a], &[], &format!("SIGTERM node {a}, restart after {out:?}"));
                let (code, took) = s.c.sigterm(a);
                if code != Some(0) {
                    s.failures.push(format!("soak: node {a} exited {code:?} after SIGTERM ({took:?})"));
                }
                std::thread::sleep(out);
                s.c.spawn(a);
                s.rejoin_all(&format!("restart of node {a}"));
            }
        }
        std::thread::sleep(rng.millis(500, 2000));
    }
    s.t.phase("after");
    std::thread::sleep(Duration::from_secs(3));
    s.finish();
}

/// The soak's scale step, once per soak before one of its first three faults: node 5 (beyond the peer list)
/// joins live, three clients on it (one per algorithm) run for `out` and must be granted every algorithm, then
/// node 5 leaves with SIGTERM (exit 0) and the five agree again.
fn soak_scale_step(s: &mut Scenario, out: Duration, cfg: &ClientConfig) {
    const J: usize = N;
    s.declare(&[J], &[], &format!("node {J} joins live, leaves after {out:?}"));
    s.nodes = (0..=J).collect();
    let started = Instant::now();
    s.c.spawn(J);
    s.rejoin_all(&format!("join of node {J}"));
    let joined = Instant::now();
    let more = ClientConfig { clients: 3, ..cfg.clone() };
    let clients = Workload::start_on(&s.api, &[J], 2 * JOINER_CLIENTS, &more, &s.ledger);
    std::thread::sleep(out);
    s.expect_grants(&[J], joined, Instant::now(), &format!("at node {J} after its join"));
    s.declare(&[J], &[], &format!("SIGTERM node {J} (graceful leave)"));
    let (code, took) = s.c.sigterm(J);
    if code != Some(0) {
        s.failures.push(format!("soak: node {J} exited {code:?} after SIGTERM ({took:?})"));
    }
    clients.stop();
    s.nodes = all();
    let exited = Instant::now();
    s.rejoin_all(&format!("leave of node {J}"));
    s.declare(&[J], &[], &format!("node {J} left"));
    let grants = (0..ALGORITHMS.len()).map(|k| s.ledger.grants_by(J, ALGORITHMS[k])).collect::<Vec<_>>();
    say(&format!(
        "nemesis soak: scale step at {:.1} s: node {J} joined, all {} agreed {:.0} ms after its start; grants on \
         it {grants:?} ({ALGORITHMS:?}) in {out:?}; SIGTERM: exit {code:?} after {:.0} ms, the five agreed {:.0} \
         ms later",
        s.t.secs(started),
        N + 1,
        (joined - started).as_secs_f64() * 1000.0,
        took.as_secs_f64() * 1000.0,
        exited.elapsed().as_secs_f64() * 1000.0
    ));
}
