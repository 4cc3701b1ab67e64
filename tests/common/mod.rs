//! Helpers for black-box tests that run real `dmutex node` processes, each on its own 127.x.y.z address
//! (host-addressed, same ports on every node).
#![allow(dead_code)]

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Peer port used by every test node.
pub(crate) const PEER_PORT: u16 = 17070;
/// HTTP port used by every test node.
pub(crate) const HTTP_PORT: u16 = 18080;

/// Every algorithm's name as the API spells it.
pub(crate) const ALGORITHMS: [&str; 3] = ["lamport", "ricart-agrawala", "probable-owner"];

/// A cluster of node processes. Killed on drop.
pub(crate) struct Cluster {
    /// `127.a.b` prefix; node i listens on `127.a.b.(i+1)`.
    pub subnet: String,
    /// Node processes (None while stopped).
    pub procs: Vec<Option<Child>>,
    /// Extra environment for every node.
    pub env: Vec<(String, String)>,
    /// Extra environment for one node (after `env`, so it overrides it), e.g. a test clock rate.
    pub node_env: BTreeMap<usize, Vec<(String, String)>>,
    /// Log directory.
    pub dir: PathBuf,
    /// Per-node peer list override (`DMUTEX_PEERS` for node i), used to route a link through a proxy.
    pub peers_override: Option<Vec<String>>,
    api: Api,
}

/// A cloneable HTTP client for a cluster's nodes (usable from client threads while the cluster is changed).
#[derive(Clone)]
pub(crate) struct Api {
    urls: Vec<String>,
    client: reqwest::blocking::Client,
}

/// A unique 127.a.b subnet for a test (distinct per test name and process).
pub(crate) fn subnet_for(test: &str) -> String {
    let mut h: u32 = 2166136261;
    for b in test.bytes().chain(std::process::id().to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(16777619);
    }
    format!("127.{}.{}", 1 + (h % 250), 1 + ((h >> 8) % 250))
}

impl Cluster {
    /// Starts `n` nodes and waits until all are ready.
    pub(crate) fn start(test: &str, n: usize, env: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::new(test, n, env);
        c.spawn_all();
        c
    }

    /// A cluster description without processes.
    pub(crate) fn new(test: &str, n: usize, env: &[(&str, &str)]) -> Cluster {
        let subnet = subnet_for(test);
        let dir = std::env::temp_dir().join(format!("dmutex-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let urls = (0..n).map(|i| format!("http://{subnet}.{}:{HTTP_PORT}", i + 1)).collect();
        Cluster {
            subnet,
            procs: (0..n).map(|_| None).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            node_env: BTreeMap::new(),
            dir,
            peers_override: None,
            api: Api::new(urls),
        }
    }

    /// Starts every node and waits until all are ready.
    pub(crate) fn spawn_all(&mut self) {
        for i in 0..self.len() {
            self.spawn(i);
        }
        self.wait_ready(Duration::from_secs(30));
    }

    /// Number of nodes.
    pub(crate) fn len(&self) -> usize {
        self.procs.len()
    }

    /// Address of node i.
    pub(crate) fn host(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Peer address (`host:port`) of node i.
    pub(crate) fn peer_addr(&self, i: usize) -> String {
        format!("{}:{}", self.host(i), PEER_PORT)
    }

    /// Base URL of node i.
    pub(crate) fn url(&self, i: usize) -> String {
        self.api.url(i)
    }

    /// The peer list as configured.
    pub(crate) fn peers(&self) -> String {
        (0..self.len()).map(|i| self.peer_addr(i)).collect::<Vec<_>>().join(",")
    }

    /// A cloneable client for the nodes.
    pub(crate) fn api(&self) -> Api {
        self.api.clone()
    }

    /// Talks to the nodes through `api` from now on (e.g. HTTPS URLs and a client that trusts a test CA);
    /// readiness is then polled through it too.
    pub(crate) fn use_api(&mut self, api: Api) {
        self.api = api;
    }

    /// The `dmutex node` command for node i (environment set, not started).
    pub(crate) fn command(&self, i: usize) -> Command {
        let peers = match &self.peers_override {
            Some(p) => p[i].clone(),
            None => self.peers(),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dmutex"));
        cmd.arg("node")
            .env("DMUTEX_NODE_ID", i.to_string())
            .env("DMUTEX_PEERS", peers)
            .env("DMUTEX_PEER_ADDR", self.peer_addr(i))
            .env("DMUTEX_HTTP_ADDR", format!("{}:{}", self.host(i), HTTP_PORT))
            .env("DMUTEX_CLUSTER_NAME", self.cluster_name())
            .env("DMUTEX_LOG", "info");
        for (k, v) in self.env.iter().chain(self.node_env.get(&i).into_iter().flatten()) {
            cmd.env(k, v);
        }
        cmd
    }

    /// The cluster name the nodes are started with.
    pub(crate) fn cluster_name(&self) -> String {
        format!("test-{}", self.subnet)
    }

    /// Starts node i (does not wait for readiness).
    pub(crate) fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{i}.log")))
            .expect("log file");
        let mut cmd = self.command(i);
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log.try_clone().expect("log"))).stderr(Stdio::from(log));
        self.procs[i] = Some(cmd.spawn().expect("spawn dmutex node"));
    }

    /// Kills node i with SIGKILL and reaps it.
    pub(crate) fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// The process id of node i, while it runs.
    pub(crate) fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].as_ref().map(Child::id)
    }

    /// Sends SIGTERM to node i and returns (exit status, time to exit).
    pub(crate) fn sigterm(&mut self, i: usize) -> (Option<i32>, Duration) {
        let Some(mut p) = self.procs[i].take() else { return (None, Duration::ZERO) };
        let start = Instant::now();
        send_signal(p.id(), "TERM");
        loop {
            if let Ok(Some(status)) = p.try_wait() {
                return (status.code(), start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = p.kill();
                let _ = p.wait();
                return (None, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every running node answers /readyz with 200.
    pub(crate) fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        for i in 0..self.len() {
            if self.procs[i].is_none() {
                continue;
            }
            let ok = poll(limit.saturating_sub(start.elapsed()), || self.api.get(i, "/readyz").0 == 200);
            if !ok {
                panic!("node {i} not ready after {limit:?}; log:\n{}", self.log(i));
            }
        }
    }

    /// A node's log so far.
    pub(crate) fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node-{i}.log"))).unwrap_or_default()
    }

    /// Every node's log, for failure messages.
    pub(crate) fn logs(&self) -> String {
        (0..self.len()).map(|i| format!("==== node {i} ====\n{}", self.log(i))).collect()
    }

    /// POST JSON, returns (status, body).
    pub(crate) fn post(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        self.api.post(i, path, body)
    }

    /// GET JSON.
    pub(crate) fn get(&self, i: usize, path: &str) -> (u16, Value) {
        self.api.get(i, path)
    }

    /// GET text.
    pub(crate) fn get_text(&self, i: usize, path: &str) -> (u16, String) {
        self.api.get_text(i, path)
    }

    /// Acquire through node i; returns (status, body).
    pub(crate) fn acquire(&self, i: usize, lock: &str, body: Value) -> (u16, Value) {
        self.api.acquire(i, lock, body)
    }

    /// Release through node i.
    pub(crate) fn release(&self, i: usize, lock: &str, lease: &str) -> (u16, Value) {
        self.api.release(i, lock, lease)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut p) = p.take() {
                let _ = p.kill();
                let _ = p.wait();
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("node logs kept in {}", self.dir.display());
        }
    }
}

impl Api {
    /// A client for the given base URLs.
    pub(crate) fn new(urls: Vec<String>) -> Api {
        let client =
            reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
        Api { urls, client }
    }

    /// A client for the given base URLs through `client` (e.g. one that trusts a test CA).
    pub(crate) fn with_client(urls: Vec<String>, client: reqwest::blocking::Client) -> Api {
        Api { urls, client }
    }

    /// The same nodes through a client that gives up on a request after `timeout` (status 0), instead of 60 s.
    pub(crate) fn with_timeout(&self, timeout: Duration) -> Api {
        let client = reqwest::blocking::Client::builder().timeout(timeout).build().expect("client");
        Api { urls: self.urls.clone(), client }
    }

    /// Base URL of node i.
    pub(crate) fn url(&self, i: usize) -> String {
        self.urls[i].clone()
    }

    /// The underlying client (60 s timeout).
    pub(crate) fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    fn json(r: reqwest::Result<reqwest::blocking::Response>) -> (u16, Value) {
        match r {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().unwrap_or(Value::Null))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// POST JSON, returns (status, body); status 0 is a transport error (body: its text).
    pub(crate) fn post(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        Self::json(self.client.post(format!("{}{}", self.urls[i], path)).json(&body).send())
    }

    /// POST raw bytes as `application/json`.
    pub(crate) fn post_raw(&self, i: usize, path: &str, body: Vec<u8>) -> (u16, Value) {
        Self::json(
            self.client
                .post(format!("{}{}", self.urls[i], path))
                .header("content-type", "application/json")
                .body(body)
                .send(),
        )
    }

    /// GET JSON.
    pub(crate) fn get(&self, i: usize, path: &str) -> (u16, Value) {
        Self::json(
            self.client.get(format!("{}{}", self.urls[i], path)).timeout(Duration::from_secs(10)).send(),
        )
    }

    /// GET text.
    pub(crate) fn get_text(&self, i: usize, path: &str) -> (u16, String) {
        match self.client.get(format!("{}{}", self.urls[i], path)).timeout(Duration::from_secs(10)).send() {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    /// Acquire through node i; returns (status, body).
    pub(crate) fn acquire(&self, i: usize, lock: &str, body: Value) -> (u16, Value) {
        self.post(i, &format!("/v1/locks/{lock}/acquire"), body)
    }

    /// Release through node i.
    pub(crate) fn release(&self, i: usize, lock: &str, lease: &str) -> (u16, Value) {
        self.post(i, &format!("/v1/locks/{lock}/release"), json!({ "lease": lease }))
    }

    /// Keepalive through node i.
    pub(crate) fn keepalive(&self, i: usize, lease: &str) -> (u16, Value) {
        self.post(i, &format!("/v1/leases/{lease}/keepalive"), Value::Null)
    }

    /// `GET /v1/stats` of node i (panics unless 200).
    pub(crate) fn stats(&self, i: usize) -> Value {
        let (status, v) = self.get(i, "/v1/stats");
        assert_eq!(status, 200, "stats of node {i}: {v}");
        v
    }

    /// Messages of `algorithm` sent by node i, all types, from `/v1/stats`.
    pub(crate) fn sent(&self, i: usize, algorithm: &str) -> u64 {
        let v = self.stats(i);
        v["messages_sent"][algorithm].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum())
    }

    /// The sum of a Prometheus series of node i over every label set matching `filter`.
    pub(crate) fn metric(&self, i: usize, name: &str, filter: &[(&str, &str)]) -> f64 {
        let (status, text) = self.get_text(i, "/metrics");
        assert_eq!(status, 200, "metrics of node {i}");
        metric_sum(&text, name, filter)
    }

    /// Acquire and release once (panics unless both succeed); returns the fencing token.
    pub(crate) fn lock_once(&self, i: usize, lock: &str, algorithm: &str) -> u64 {
        let (s, g) =
            self.acquire(i, lock, json!({"algorithm": algorithm, "timeout_ms": 30000, "ttl_ms": 30000}));
        assert_eq!(s, 200, "acquire {lock} ({algorithm}) on node {i}: {g}");
        let lease = g["lease"].as_str().expect("lease").to_string();
        let (s, r) = self.release(i, lock, &lease);
        assert_eq!(s, 200, "release {lock} ({algorithm}) on node {i}: {r}");
        g["fencing_token"].as_u64().expect("token")
    }
}

/// Sums the samples of `name` (exact metric name, any labels) whose labels include every `filter` pair.
pub(crate) fn metric_sum(text: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
            let Some((l, v)) = split_labels(r) else { continue };
            (l, v)
        } else if rest.starts_with(' ') {
            (Vec::new(), rest)
        } else {
            continue; // another metric with this prefix
        };
        let matches = filter.iter().all(|(k, v)| labels.iter().any(|p| *p == format!("{k}=\"{v}\"")));
        if matches {
            sum += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// The `k="v"` pairs of a sample's label set (`r` starts after its `{`) and the rest of the line after the
/// closing `}`. Quote-aware: a value may hold `}` or `,` (a route label such as `/v1/locks/{name}`).
fn split_labels(r: &str) -> Option<(Vec<&str>, &str)> {
    let (mut pairs, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, ch) in r.char_indices() {
        match ch {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                pairs.push(&r[start..i]);
                start = i + 1;
            }
            '}' if !quoted => {
                if i > start {
                    pairs.push(&r[start..i]);
                }
                return Some((pairs, &r[i + 1..]));
            }
            _ => {}
        }
    }
    None
}

/// Polls `f` every 20 ms until it returns true or `limit` passes; returns whether it did.
pub(crate) fn poll(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a signal with the `kill` command (tests avoid `unsafe`).
pub(crate) fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// A holding interval observed by a client.
#[derive(Clone, Debug)]
pub(crate) struct Interval {
    /// Lock (tests key it by algorithm too: the algorithms' lock spaces are independent).
    pub lock: String,
    /// Token.
    pub token: u64,
    /// Start (after the grant arrived).
    pub start: Instant,
    /// End (before the release was sent).
    pub end: Instant,
}

/// Checks that intervals of the same lock never overlap and tokens increase in time order.
pub(crate) fn check_intervals(mut iv: Vec<Interval>) -> Result<(), String> {
    iv.sort_by_key(|i| (i.lock.clone(), i.start));
    for w in iv.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if a.lock != b.lock {
            continue;
        }
        if b.start < a.end {
            return Err(format!("overlap on {}: token {} and token {}", a.lock, a.token, b.token));
        }
        if b.token <= a.token {
            return Err(format!("token order on {}: {} then {}", a.lock, a.token, b.token));
        }
    }
    Ok(())
}

/// The outcome of one acquire attempt by a client thread.
#[derive(Clone, Debug)]
pub(crate) struct Attempt {
    /// Node asked.
    pub node: usize,
    /// Algorithm.
    pub algorithm: String,
    /// HTTP status (0: connection failed).
    pub status: u16,
    /// How long the acquire took.
    pub took: Duration,
}

/// Acquire, hold for `hold`, release, through node `i`; records the interval (keyed `algorithm/lock`) if
/// granted. Returns the attempt.
pub(crate) fn hold_once(
    api: &Api,
    i: usize,
    lock: &str,
    algorithm: &str,
    timeout_ms: u64,
    hold: Duration,
    out: &Mutex<Vec<Interval>>,
) -> Attempt {
    let t0 = Instant::now();
    let (status, g) =
        api.acquire(i, lock, json!({"algorithm": algorithm, "timeout_ms": timeout_ms, "ttl_ms": 60000}));
    let took = t0.elapsed();
    if status == 200 {
        let start = Instant::now();
        let token = g["fencing_token"].as_u64().expect("fencing_token");
        let lease = g["lease"].as_str().expect("lease").to_string();
        std::thread::sleep(hold);
        let end = Instant::now();
        let (rs, rb) = api.release(i, lock, &lease);
        // A release can fail only if the node died meanwhile (status 0); anything else is a bug.
        assert!(rs == 200 || rs == 0, "release {lock} via node {i}: {rs} {rb}");
        out.lock().unwrap().push(Interval { lock: format!("{algorithm}/{lock}"), token, start, end });
    }
    Attempt { node: i, algorithm: algorithm.to_string(), status, took }
}

/// A TCP proxy (one listening address → one upstream) that can drop every connection it carries.
pub(crate) struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    /// While set, every new connection is closed at once (a partition; see [`Proxy::block`]).
    blocked: Arc<AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on `listen` and forwards every connection to `upstream`.
    pub(crate) fn start(listen: &str, upstream: &str) -> Proxy {
        Proxy::start_delayed(listen, upstream, Duration::ZERO)
    }

    /// Like [`Proxy::start`], but each accepted connection waits `delay` before it is connected upstream (a
    /// slow route: the dialer's handshake reaches `upstream` `delay` late).
    pub(crate) fn start_delayed(listen: &str, upstream: &str, delay: Duration) -> Proxy {
        let listener = TcpListener::bind(listen).expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let blocked = Arc::new(AtomicBool::new(false));
        let (c, s, a, up) = (conns.clone(), stop.clone(), accepted.clone(), upstream.to_string());
        let b = blocked.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((down, _)) if b.load(Ordering::Relaxed) => {
                        let _ = down.shutdown(Shutdown::Both);
                    }
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let (c, a, up, b) = (c.clone(), a.clone(), up.clone(), b.clone());
                        let forward = move || {
                            let Ok(upc) = TcpStream::connect(&up) else { return };
                            let _ = down.set_nodelay(true);
                            let _ = upc.set_nodelay(true);
                            a.fetch_add(1, Ordering::Relaxed);
                            {
                                let mut g = c.lock().unwrap();
                                // Blocked while this connection was being set up: `block` did not see it.
                                if b.load(Ordering::Relaxed) {
                                    let _ = down.shutdown(Shutdown::Both);
                                    let _ = upc.shutdown(Shutdown::Both);
                                    return;
                                }
                                g.push(down.try_clone().expect("clone"));
                                g.push(upc.try_clone().expect("clone"));
                            }
                            pipe(down.try_clone().expect("clone"), upc.try_clone().expect("clone"));
                            pipe(upc, down);
                        };
                        if delay.is_zero() {
                            forward();
                        } else {
                            std::thread::spawn(move || {
                                std::thread::sleep(delay);
                                forward();
                            });
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy { addr, conns, stop, blocked, accepted }
    }

    /// Partitions the route: drops every connection carried and closes every new one at once, until
    /// [`Proxy::heal`].
    pub(crate) fn block(&self) {
        self.blocked.store(true, Ordering::Relaxed);
        self.cut();
    }

    /// Ends a [`Proxy::block`]: new connections are forwarded again.
    pub(crate) fn heal(&self) {
        self.blocked.store(false, Ordering::Relaxed);
    }

    /// Drops every connection currently carried (both directions, both sides).
    pub(crate) fn cut(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
