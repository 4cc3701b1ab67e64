//! The nemesis suite's clients and network (`tests/nemesis.rs`): client threads that acquire, write to the
//! fencing ledger, hold, sometimes keep alive, and release, recording every answer; a full mesh of TCP proxies
//! between the nodes that a scenario partitions and heals; and the convergence check over `GET /v1/cluster`.
#![allow(dead_code)]

use crate::common::{ALGORITHMS, Api, Cluster, PEER_PORT, Proxy};
use crate::ledger::{AcquireRecord, Call, Hold, Ledger, key};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// SplitMix64: a tiny seeded generator (a schedule must replay from its seed alone).
#[derive(Clone, Debug)]
pub(crate) struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in `lo..=hi` milliseconds.
    pub(crate) fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// How the clients behave.
#[derive(Clone, Debug)]
pub(crate) struct ClientConfig {
    /// Client threads; client `j` asks node `j % n` for algorithm `(j / n) % 3` (see [`Workload::start_on`]).
    pub clients: usize,
    /// Lock names each client picks from at random.
    pub locks: Vec<String>,
    /// The acquire's `timeout_ms` (above the longest view change, S + L + 2 × retry = 3.1 s by default).
    pub timeout: Duration,
    /// The lease's `ttl_ms`.
    pub ttl: Duration,
    /// Seed of the clients' choices.
    pub seed: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            clients: 30,
            locks: ["a", "b", "c"].map(String::from).to_vec(),
            timeout: Duration::from_millis(5000),
            ttl: Duration::from_millis(3000),
            seed: 1,
        }
    }
}

/// Running client threads; [`Workload::stop`] ends them.
pub(crate) struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `cfg.clients` client threads against `n` nodes, recording into `ledger`.
    pub(crate) fn start(api: &Api, n: usize, cfg: &ClientConfig, ledger: &Arc<Ledger>) -> Workload {
        Workload::start_on(api, &(0..n).collect::<Vec<_>>(), 0, cfg, ledger)
    }

    /// Starts `cfg.clients` client threads against `nodes` (the k-th client asks `nodes[k % len]` for
    /// algorithm `(k / len) % 3`), with client ids from `first` on, recording into `ledger`.
    pub(crate) fn start_on(
        api: &Api,
        nodes: &[usize],
        first: usize,
        cfg: &ClientConfig,
        ledger: &Arc<Ledger>,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let n = nodes.len();
        let threads = (0..cfg.clients)
            .map(|k| {
                let (api, cfg, ledger, stop) = (api.clone(), cfg.clone(), ledger.clone(), stop.clone());
                let j = first + k;
                let node = nodes[k % n];
                let algorithm = ALGORITHMS[(k / n) % ALGORITHMS.len()];
                let rng = Rng(cfg.seed ^ (0x6e65_6d65_0000 + j as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
                std::thread::spawn(move || client(j, &api, node, algorithm, &cfg, rng, &ledger, &stop))
            })
            .collect();
        Workload { stop, threads }
    }

    /// Stops every client after its current round and waits for it.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("client thread");
        }
    }
}

/// A short description of a non-grant answer.
fn detail(status: u16, body: &Value) -> String {
    let text = match body["error"]["code"].as_str() {
        Some(code) => format!("{code}: {}", body["error"]["message"].as_str().unwrap_or_default()),
        None => body.to_string(),
    };
    let mut text = format!("{status} {text}");
    text.truncate(200);
    text
}

/// One acquire, recorded; on a grant, the hold (not yet released) as well.
#[allow(clippy::too_many_arguments)]
pub(crate) fn acquire(
    ledger: &Ledger,
    api: &Api,
    client: usize,
    node: usize,
    algorithm: &str,
    lock: &str,
    timeout: Duration,
    ttl: Duration,
) -> Option<Hold> {
    let sent = Instant::now();
    let body = json!({"algorithm": algorithm, "timeout_ms": timeout.as_millis() as u64, "ttl_ms": ttl.as_millis() as u64});
    let (status, g) = api.acquire(node, lock, body);
    let answered = Instant::now();
    let token = g["fencing_token"].as_u64().filter(|_| status == 200);
    let lease = g["lease"].as_str().filter(|_| status == 200).map(String::from);
    ledger.acquired(AcquireRecord {
        client,
        node,
        key: key(algorithm, lock),
        sent,
        answered,
        timeout,
        status,
        token,
        lease: lease.clone(),
        detail: if status == 200 { String::new() } else { detail(status, &g) },
    });
    match (token, lease) {
        (Some(token), Some(lease)) => Some(Hold {
            client,
            node,
            key: key(algorithm, lock),
            token,
            lease,
            ttl,
            acquire_sent: sent,
            granted: answered,
            keepalives: Vec::new(),
            release: None,
        }),
        _ => None,
    }
}

/// A keepalive of the hold's lease through its node, recorded in the hold.
pub(crate) fn keepalive(api: &Api, h: &mut Hold) -> u16 {
    let sent = Instant::now();
    let (status, _) = api.keepalive(h.node, &h.lease);
    h.keepalives.push(Call { sent, answered: Instant::now(), status });
    status
}

/// The hold's release through its node, recorded in the hold.
pub(crate) fn release(api: &Api, h: &mut Hold) -> u16 {
    let sent = Instant::now();
    let (status, _) = api.release(h.node, &h.key.1, &h.lease);
    h.release = Some(Call { sent, answered: Instant::now(), status });
    status
}

/// One client's loop: acquire, write the token to the ledger, hold 1–5 ms, keep alive one time in four (and
/// write again), release; after a refusal, back off 20–50 ms.
#[allow(clippy::too_many_arguments)]
fn client(
    j: usize,
    api: &Api,
    node: usize,
    algorithm: &str,
    cfg: &ClientConfig,
    mut rng: Rng,
    ledger: &Ledger,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let lock = &cfg.locks[rng.below(cfg.locks.len())];
        let Some(mut h) = acquire(ledger, api, j, node, algorithm, lock, cfg.timeout, cfg.ttl) else {
            std::thread::sleep(rng.millis(20, 50));
            continue;
        };
        ledger.write(j, &h.key, h.token, &h.lease);
        std::thread::sleep(rng.millis(1, 5));
        if rng.below(4) == 0 && keepalive(api, &mut h) == 200 {
            ledger.write(j, &h.key, h.token, &h.lease);
            std::thread::sleep(rng.millis(1, 3));
        }
        release(api, &mut h);
        ledger.held(h);
    }
}

/// A full mesh of proxies: node `i` reaches node `j` through its own proxy `i → j`, so any set of directed
/// links can be partitioned and healed while every process runs.
pub(crate) struct Mesh {
    n: usize,
    /// `proxies[i][j]`: the route from node i to node j (None on the diagonal).
    proxies: Vec<Vec<Option<Proxy>>>,
}

impl Mesh {
    /// Starts the proxies (on `127.a.b.(10 + n·i + j)`) and routes the cluster's peer lists through them.
    pub(crate) fn install(c: &mut Cluster) -> Mesh {
        Mesh::install_first(c, c.len())
    }

    /// Like [`Mesh::install`] for the first `n` nodes only (the peer lists of those `n`; nodes beyond them,
    /// live joiners, reach the others directly).
    pub(crate) fn install_first(c: &mut Cluster, n: usize) -> Mesh {
        let proxies: Vec<Vec<Option<Proxy>>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        (i != j).then(|| {
                            let listen = format!("{}.{}:{PEER_PORT}", c.subnet, 10 + n * i + j);
                            Proxy::start(&listen, &c.peer_addr(j))
                        })
                    })
                    .collect()
            })
            .collect();
        let lists = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| match &proxies[i][j] {
                        Some(p) => p.addr.to_string(),
                        None => c.peer_addr(j),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        c.peers_override = Some(lists);
        Mesh { n, proxies }
    }

    /// Cuts every link between `side` and the other nodes, both directions.
    pub(crate) fn partition(&self, side: &[usize]) {
        let side: BTreeSet<usize> = side.iter().copied().collect();
        for i in 0..self.n {
            for j in 0..self.n {
                if side.contains(&i) != side.contains(&j) {
                    if let Some(p) = &self.proxies[i][j] {
                        p.block();
                    }
                }
            }
        }
    }

    /// Heals every link.
    pub(crate) fn heal(&self) {
        for p in self.proxies.iter().flatten().flatten() {
            p.heal();
        }
    }
}

/// Whether every node in `nodes` answers `GET /v1/cluster` and they agree: each is ready, each sees every
/// other node connected with the incarnation that node reports for itself, and — where the node reports its
/// membership (`view`, `member`, `majority`) — each is a member holding its member lease, and all have
/// installed the same view (epoch, and members with their incarnations) made of exactly `nodes`, each at its
/// current incarnation. `Err` says what differs.
pub(crate) fn converged(api: &Api, nodes: &[usize]) -> Result<(), String> {
    let mut infos = Vec::new();
    for &i in nodes {
        let (s, v) = api.get(i, "/v1/cluster");
        if s != 200 {
            return Err(format!("node {i}: /v1/cluster answered {s} {v}"));
        }
        infos.push((i, v));
    }
    let view_of = |v: &Value| {
        let members: Option<Vec<(u64, u64)>> = v["view"]["members"].as_array().map(|ms| {
            ms.iter()
                .map(|m| (m["node_id"].as_u64().unwrap_or(u64::MAX), m["incarnation"].as_u64().unwrap_or(0)))
                .collect()
        });
        (v["view"]["epoch"].as_u64(), members)
    };
    let (first, first_info) = &infos[0];
    let first_view = view_of(first_info);
    for (i, v) in &infos {
        if v["ready"] != json!(true) {
            let (status, why) = api.get(*i, "/readyz");
            return Err(format!("node {i} is not ready (/readyz {status} {why}): {v}"));
        }
        for flag in ["member", "majority"] {
            if !v[flag].is_null() && v[flag] != json!(true) {
                return Err(format!("node {i} reports {flag} = {}", v[flag]));
            }
        }
        for (j, w) in &infos {
            if i == j {
                continue;
            }
            let Some(p) = v["peers"].as_array().and_then(|ps| ps.iter().find(|p| p["node"] == json!(j)))
            else {
                return Err(format!("node {i} does not list node {j}: {v}"));
            };
            if p["connected"] != json!(true) {
                return Err(format!("node {i} sees node {j} disconnected: {p}"));
            }
            if p["incarnation"] != w["incarnation"] {
                return Err(format!(
                    "node {i} knows node {j} as incarnation {}, node {j} is {}",
                    p["incarnation"], w["incarnation"]
                ));
            }
        }
        if v.get("view").is_some() {
            let view = view_of(v);
            if view != first_view {
                return Err(format!("node {i} has view {view:?}, node {first} has {first_view:?}"));
            }
            let want: Vec<(u64, u64)> =
                infos.iter().map(|(j, w)| (*j as u64, w["incarnation"].as_u64().unwrap_or(0))).collect();
            if view.1.as_ref() != Some(&want) {
                return Err(format!(
                    "node {i}'s view {view:?} is not every node at its incarnation {want:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Waits until [`converged`] holds for `nodes`, at most `limit`; returns the last disagreement otherwise.
pub(crate) fn wait_converged(api: &Api, nodes: &[usize], limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        match converged(api, nodes) {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) if start.elapsed() > limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Watches the test process's own scheduling: a thread that sleeps 10 ms at a time and records every wake-up
/// later than `threshold` (the machine was starved; see [`crate::ledger::Timeline::stalls`]).
pub(crate) struct StallMonitor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Instant, Instant)>>,
}

impl StallMonitor {
    /// Starts watching.
    pub(crate) fn start(threshold: Duration) -> StallMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut stalls = Vec::new();
            let mut last = Instant::now();
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                let now = Instant::now();
                if now - last > threshold {
                    stalls.push((last, now));
                }
                last = now;
            }
            stalls
        });
        StallMonitor { stop, thread }
    }

    /// Stops watching; returns the stalls seen.
    pub(crate) fn stop(self) -> Vec<(Instant, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("stall monitor")
    }
}
