//! Whole nodes in one test process: three [`dmutex::node::run`]s on 127.0.0.1, port 0, each on its own tokio
//! runtime (so that dropping a runtime is a crash: the run future and every task it started die at once,
//! sockets closed, no goodbye), driven over HTTP like real clients. They cover the node loop end to end:
//! grant and release, the next holder's larger fencing token, lease expiry and keepalive (leases live in the
//! cores), a peer that crashes and restarts with a new incarnation, and graceful shutdown.
//!
//! Runs in seconds; every wait is bounded, so a broken loop fails instead of hanging.

use dmutex::algo::{Algorithm, Incarnation};
use dmutex::config::{ConfigSources, NodeConfig, NodeIdSource};
use dmutex::node::RunConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// Bound on any single wait in these tests.
const PATIENCE: Duration = Duration::from_secs(10);

/// One running node: its runtime, its HTTP address, and how to stop it.
struct TestNode {
    runtime: Option<Runtime>,
    http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// Three nodes on loopback, their peer addresses fixed for the test's life (a restart rebinds its port).
struct Cluster {
    name: String,
    /// Per node, configuration keys on top of the common ones.
    extra: BTreeMap<usize, Vec<(&'static str, String)>>,
    peers: Vec<SocketAddr>,
    nodes: Vec<TestNode>,
    client: reqwest::blocking::Client,
    /// Whether the nodes run as if DNS discovery had given their peer lists (compose `--scale`).
    from_dns: bool,
}

fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

impl Cluster {
    /// Starts `n` nodes and waits until every one is ready.
    fn start(name: &str, n: usize) -> Cluster {
        let c = Cluster::launch_all(name, n, BTreeMap::new());
        c.wait_ready();
        c
    }

    /// Starts `n` nodes, node `i` with the extra keys `extra[i]`, without waiting for them to be ready.
    fn launch_all(name: &str, n: usize, extra: BTreeMap<usize, Vec<(&'static str, String)>>) -> Cluster {
        let listeners: Vec<TcpListener> = (0..n).map(|_| bind()).collect();
        let peers = listeners.iter().map(|l| l.local_addr().expect("local addr")).collect();
        let client = reqwest::blocking::Client::builder().timeout(PATIENCE).build().expect("http client");
        let mut c =
            Cluster { name: name.to_string(), extra, peers, nodes: Vec::new(), client, from_dns: false };
        for (i, peer_listener) in listeners.into_iter().enumerate() {
            let node = c.launch(i, peer_listener, Incarnation::new(1));
            c.nodes.push(node);
        }
        c
    }

    fn config(&self, i: usize) -> NodeConfig {
        let peers: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
        let overrides: BTreeMap<String, String> = [
            ("node_id", i.to_string()),
            ("peers", peers.join(",")),
            ("cluster_name", self.name.clone()),
            ("default_timeout_ms", "5000".to_string()),
            ("shutdown_grace_ms", "3000".to_string()),
        ]
        .into_iter()
        .chain(self.extra.get(&i).into_iter().flatten().cloned())
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut cfg =
            NodeConfig::load(&ConfigSources { overrides, ..ConfigSources::default() }).expect("node config");
        if self.from_dns {
            // What `dmutex node` sets once DNS discovery gave the peer list.
            cfg.node_id_source = NodeIdSource::Discovery;
        }
        cfg
    }

    /// Starts node `i` on its own runtime with the given peer listener and a fresh HTTP port.
    fn launch(&self, i: usize, peer_listener: TcpListener, incarnation: Incarnation) -> TestNode {
        let http_listener = bind();
        let http = http_listener.local_addr().expect("local addr");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("node-{i}"))
            .enable_all()
            .build()
            .expect("runtime");
        let (stop, stopped) = oneshot::channel::<()>();
        let config = RunConfig { incarnation, ..RunConfig::new(self.config(i)) };
        let done = runtime.spawn(async move {
            for l in [&peer_listener, &http_listener] {
                l.set_nonblocking(true)?;
            }
            let peer = tokio::net::TcpListener::from_std(peer_listener)?;
            let http = tokio::net::TcpListener::from_std(http_listener)?;
            dmutex::node::run(peer, http, config, async {
                let _ = stopped.await;
            })
            .await
        });
        TestNode { runtime: Some(runtime), http, stop: Some(stop), done: Some(done) }
    }

    /// Kills node `i`: its runtime is dropped with every task on it (no graceful shutdown, no goodbye).
    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        // Dropping the stop sender would end `run`'s shutdown future, which is a graceful stop (a leave):
        // a crash keeps it pending for ever.
        std::mem::forget(node.stop.take());
        node.done.take();
        if let Some(rt) = node.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Restarts crashed node `i` as `incarnation`, on its old peer port (what its peers dial) and a new HTTP
    /// port, and waits until the cluster is ready again.
    fn restart(&mut self, i: usize, incarnation: Incarnation) {
        let listener = TcpListener::bind(self.peers[i]).expect("rebind the peer port");
        self.nodes[i] = self.launch(i, listener, incarnation);
        self.wait_ready();
    }

    /// Asks node `i` to shut down gracefully and waits for its `run` to return; returns its result and how long
    /// that took.
    fn shutdown(&mut self, i: usize) -> (std::io::Result<()>, Duration) {
        let node = &mut self.nodes[i];
        let started = Instant::now();
        if let Some(stop) = node.stop.take() {
            let _ = stop.send(());
        }
        let (Some(rt), Some(done)) = (node.runtime.take(), node.done.take()) else {
            panic!("node {i} is not running");
        };
        let result = rt.block_on(async { tokio::time::timeout(PATIENCE, done).await });
        rt.shutdown_timeout(Duration::from_secs(2));
        match result {
            Ok(Ok(r)) => (r, started.elapsed()),
            Ok(Err(e)) => panic!("node {i}'s run panicked: {e}"),
            Err(_) => panic!("node {i}'s run did not return within {PATIENCE:?} of the shutdown signal"),
        }
    }

    /// Starts one more node, outside the running nodes' peer list: its own list names them and itself (its id
    /// is the next index), or with `seeds_only` just them, its own address given as `DMUTEX_ADVERTISE_ADDR`.
    /// Waits until it is ready (admitted and caught up). Returns its index.
    fn join_new(&mut self, seeds_only: bool) -> usize {
        let listener = bind();
        let addr = listener.local_addr().expect("local addr");
        let i = self.nodes.len();
        if seeds_only {
            let seeds: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
            let extra = vec![("peers", seeds.join(",")), ("advertise_addr", addr.to_string())];
            self.extra.insert(i, extra);
        }
        self.peers.push(addr);
        let node = self.launch(i, listener, Incarnation::new(1));
        self.nodes.push(node);
        self.wait_ready();
        i
    }

    /// The ids in node `i`'s installed view.
    fn view(&self, i: usize) -> Vec<u64> {
        let cluster = self.get(i, "/v1/cluster");
        cluster["view"]["members"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["node_id"].as_u64()).collect())
            .unwrap_or_default()
    }

    fn url(&self, i: usize, path: &str) -> String {
        format!("http://{}{path}", self.nodes[i].http)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        for i in 0..self.nodes.len() {
            if self.nodes[i].runtime.is_none() {
                continue;
            }
            loop {
                let ready = self.client.get(self.url(i, "/readyz")).send().is_ok_and(|r| r.status() == 200);
                if ready {
                    break;
                }
                if Instant::now() >= deadline {
                    let why = self.client.get(self.url(i, "/readyz")).send().and_then(|r| r.text());
                    let cluster = self.client.get(self.url(i, "/v1/cluster")).send().and_then(|r| r.text());
                    panic!("node {i} not ready within {PATIENCE:?}: {why:?}\n{cluster:?}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn post(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        post(&self.client, &self.url(i, path), body)
    }

    fn get(&self, i: usize, path: &str) -> Value {
        let r = self.client.get(self.url(i, path)).send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        r.json().unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET path` of node `i`: the status and the body as text (whatever its type).
    fn get_text(&self, i: usize, path: &str) -> (u16, String) {
        let r = self.client.get(self.url(i, path)).send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.text().unwrap_or_else(|e| panic!("GET {path}: {e}")))
    }

    /// Every GET the API serves, made concrete for `lock`: the operations of node `i`'s own OpenAPI document
    /// (generated from the router's handlers; it must list exactly the GET routes of [`dmutex::api::ROUTES`]),
    /// each path parameter filled in, each with no query and with each of its query parameters on its own.
    fn every_get(&self, i: usize, lock: &str) -> Vec<String> {
        let doc = self.get(i, "/openapi.json");
        let flow = self.get(i, &format!("/v1/flow?lock={lock}"));
        let acquire_id = flow["records"]
            .as_array()
            .and_then(|r| r.iter().find_map(|r| r["trace_id"].as_str()))
            .unwrap_or("0-1")
            .to_string();
        let paths = doc["paths"].as_object().expect("paths in /openapi.json");
        let gets: Vec<(&String, &Value)> =
            paths.iter().filter_map(|(p, ops)| ops.get("get").map(|op| (p, op))).collect();
        let patterns: std::collections::BTreeSet<&str> = gets.iter().map(|(p, _)| p.as_str()).collect();
        let posts = ["/v1/locks/{name}/acquire", "/v1/locks/{name}/release", "/v1/leases/{lease}/keepalive"];
        let routes: std::collections::BTreeSet<&str> =
            dmutex::api::ROUTES.iter().copied().filter(|r| *r != "other" && !posts.contains(r)).collect();
        assert_eq!(patterns, routes, "the document's GET operations are the router's GET routes");
        let mut out = Vec::new();
        for (pattern, op) in gets {
            let path = pattern.replace("{name}", lock);
            assert!(!path.contains('{'), "a path parameter this test does not fill in: {pattern}");
            out.push(path.clone());
            for param in op["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "query") {
                let name = param["name"].as_str().unwrap_or_default();
                let values: Vec<String> = match name {
                    "scope" => vec!["local".into(), "cluster".into()],
                    "lock" => vec![lock.to_string()],
                    "acquire" => vec![acquire_id.clone()],
                    "limit" => vec!["1000".into()],
                    other => panic!("a query parameter this test does not fill in: {pattern}?{other}"),
                };
                out.extend(values.into_iter().map(|v| format!("{path}?{name}={v}")));
            }
        }
        out
    }

    /// Acquires `lock` on node `i` and expects a grant.
    fn grant(&self, i: usize, lock: &str, body: Value) -> Value {
        let (status, g) = self.post(i, &format!("/v1/locks/{lock}/acquire"), body);
        assert_eq!(status, 200, "acquire {lock} on node {i}: {g}");
        g
    }

    /// Starts an acquire on node `i` in a thread (it blocks until answered).
    fn acquire_in_background(&self, i: usize, lock: &str, body: Value) -> JoinHandle<(u16, Value)> {
        let (client, url) = (self.client.clone(), self.url(i, &format!("/v1/locks/{lock}/acquire")));
        std::thread::spawn(move || post(&client, &url, body))
    }

    fn release(&self, i: usize, lock: &str, lease: &Value) -> u16 {
        self.post(i, &format!("/v1/locks/{lock}/release"), json!({ "lease": lease })).0
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.crash(i);
        }
    }
}

fn post(client: &reqwest::blocking::Client, url: &str, body: Value) -> (u16, Value) {
    let r = client.post(url).json(&body).send().unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

fn token(grant: &Value) -> u64 {
    grant["fencing_token"].as_u64().unwrap_or_else(|| panic!("no fencing token in {grant}"))
}

/// Waits for a background acquire, at most [`PATIENCE`].
fn join(handle: JoinHandle<(u16, Value)>) -> (u16, Value) {
    let deadline = Instant::now() + PATIENCE;
    while !handle.is_finished() {
        assert!(Instant::now() < deadline, "a waiting acquire was never answered");
        std::thread::sleep(Duration::from_millis(10));
    }
    handle.join().expect("acquire thread")
}

#[test]
fn grant_release_and_the_next_holder_gets_a_larger_token_every_algorithm() {
    let c = Cluster::start("inproc-grant", 3);
    for algorithm in Algorithm::ALL {
        let lock = format!("grant-{algorithm}");
        let first = c.grant(0, &lock, json!({ "algorithm": algorithm }));
        assert_eq!(first["node_id"], 0, "{first}");
        let waiter = c.acquire_in_background(1, &lock, json!({ "algorithm": algorithm }));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!waiter.is_finished(), "{algorithm}: node 1 was answered while node 0 holds {lock}");
        assert_eq!(c.release(0, &lock, &first["lease"]), 200);
        let (status, second) = join(waiter);
        assert_eq!(status, 200, "{algorithm}: {second}");
        assert!(token(&second) > token(&first), "{algorithm}: {second} after {first}");
        assert_eq!(c.release(1, &lock, &second["lease"]), 200);
        assert_eq!(c.release(1, &lock, &second["lease"]), 409, "{algorithm}: a lease is released once");
    }
    let stats = c.get(0, "/v1/stats");
    for algorithm in Algorithm::ALL {
        assert_eq!(stats["grants"][algorithm.as_str()], 1, "{stats}");
    }
}

/// etcd's try-lock (issue 15; the port of `v3_lock_test.go`'s TryLock cases): on a free lock 200, on a held one
/// 409 `locked` at once naming the holder (through another node, and through the holder's own node), and of
/// concurrent tries on a free lock exactly one wins. `timeout_ms: 0` is the same as `"wait": false`.
#[test]
fn try_lock_is_granted_when_free_and_locked_at_once_when_held_every_algorithm() {
    let c = Cluster::start("inproc-try", 3);
    for algorithm in Algorithm::ALL {
        let lock = format!("try-{algorithm}");
        let first = c.grant(1, &lock, json!({ "algorithm": algorithm, "wait": false }));
        assert_eq!(first["node_id"], 1, "{first}");
        for (node, body) in [
            (2, json!({ "algorithm": algorithm, "wait": false })),
            (0, json!({ "algorithm": algorithm, "timeout_ms": 0 })),
            (1, json!({ "algorithm": algorithm, "wait": false })),
        ] {
            let started = Instant::now();
            let (status, err) = c.post(node, &format!("/v1/locks/{lock}/acquire"), body);
            let took = started.elapsed();
            assert_eq!(status, 409, "{algorithm}: try through node {node} while node 1 holds: {err}");
            assert_eq!(err["error"]["code"], "locked", "{algorithm}: {err}");
            assert_eq!(err["error"]["holder"], 1, "{algorithm}: the holder's node id: {err}");
            let message = err["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains("node 1"), "{algorithm}: the holder is named: {err}");
            assert!(
                took < Duration::from_secs(2),
                "{algorithm}: answered at once, not after a wait: {took:?}"
            );
        }
        assert_eq!(c.release(1, &lock, &first["lease"]), 200);

        // Concurrent tries on the free lock: exactly one 200, the others 409 `locked`.
        let lock = format!("try-race-{algorithm}");
        let tries: Vec<_> = (0..3)
            .map(|i| c.acquire_in_background(i, &lock, json!({ "algorithm": algorithm, "wait": false })))
            .collect();
        let answers: Vec<(u16, Value)> = tries.into_iter().map(join).collect();
        let winners: Vec<&Value> = answers.iter().filter(|(s, _)| *s == 200).map(|(_, g)| g).collect();
        assert_eq!(winners.len(), 1, "{algorithm}: exactly one try wins: {answers:?}");
        for (status, body) in &answers {
            assert!(*status == 200 || body["error"]["code"] == "locked", "{algorithm}: {status} {body}");
        }
        let winner = winners[0];
        let node = winner["node_id"].as_u64().expect("node id") as usize;
        assert_eq!(c.release(node, &lock, &winner["lease"]), 200);
        // After the release the lock is free again for a try.
        let again = c.grant(2, &lock, json!({ "algorithm": algorithm, "wait": false }));
        assert_eq!(c.release(2, &lock, &again["lease"]), 200);
    }
}

#[test]
fn an_expired_lease_frees_the_lock_and_the_next_holder_gets_a_larger_token() {
    let c = Cluster::start("inproc-expiry", 3);
    for algorithm in Algorithm::ALL {
        let lock = format!("expiry-{algorithm}");
        // Node 0's client takes the lock with a short lease and never comes back.
        let forgotten = c.grant(0, &lock, json!({ "algorithm": algorithm, "ttl_ms": 300 }));
        let started = Instant::now();
        let next = c.grant(2, &lock, json!({ "algorithm": algorithm, "timeout_ms": 5000 }));
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "{algorithm}: granted before the lease ended"
        );
        assert!(token(&next) > token(&forgotten), "{algorithm}: {next} after {forgotten}");
        let lease = forgotten["lease"].as_str().unwrap_or_default();
        assert_eq!(c.release(0, &lock, &forgotten["lease"]), 409, "{algorithm}: the expired lease is gone");
        let (status, _) = c.post(0, &format!("/v1/leases/{lease}/keepalive"), json!({}));
        assert_eq!(status, 409, "{algorithm}: an expired lease cannot be kept alive");
        assert_eq!(c.release(2, &lock, &next["lease"]), 200);
    }
    assert_eq!(c.get(0, "/v1/stats")["lease_expiries"], 3);
    let metrics = c.client.get(c.url(0, "/metrics")).send().and_then(|r| r.text()).expect("GET /metrics");
    for algorithm in Algorithm::ALL {
        let line = format!("dmutex_lease_expiries_total{{algorithm=\"{algorithm}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing in\n{metrics}");
    }
}

#[test]
fn keepalive_keeps_a_lease_past_its_ttl() {
    let c = Cluster::start("inproc-keepalive", 3);
    let held = c.grant(0, "kept", json!({ "algorithm": "ricart-agrawala", "ttl_ms": 1000 }));
    let lease = held["lease"].as_str().unwrap_or_default().to_string();
    let waiter =
        c.acquire_in_background(1, "kept", json!({ "algorithm": "ricart-agrawala", "timeout_ms": 2000 }));
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2300) {
        let (status, body) = c.post(0, &format!("/v1/leases/{lease}/keepalive"), json!({}));
        assert_eq!((status, &body["ttl_ms"]), (200, &json!(1000)), "{body}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = join(waiter);
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("timeout")),
        "the waiter must time out while the lease is kept alive: {body}"
    );
    let info = c.get(0, "/v1/locks/kept?scope=local");
    let expires = info["leases"][0]["expires_in_ms"].as_u64().unwrap_or(0);
    assert!(expires > 0 && expires <= 1000, "{info}");
    assert_eq!(c.release(0, "kept", &held["lease"]), 200);
    assert_eq!(c.get(0, "/v1/stats")["lease_expiries"], 0);
}

#[test]
fn a_crashed_peer_restarts_with_a_new_incarnation_and_tokens_keep_growing() {
    let mut c = Cluster::start("inproc-restart", 3);
    let before = c.grant(2, "r", json!({ "algorithm": "lamport" }));
    assert_eq!(c.release(2, "r", &before["lease"]), 200);

    c.crash(2);
    // A majority is left: an acquire on node 0 waits for the view that excludes node 2 (S + L + a round),
    // then is granted; every algorithm grants on the survivors.
    let started = Instant::now();
    let g = c.grant(0, "r", json!({ "algorithm": "lamport", "timeout_ms": 8000 }));
    assert!(token(&g) > token(&before), "{g} after {before}");
    assert!(started.elapsed() < Duration::from_secs(6), "granted after {:?}", started.elapsed());
    assert_eq!(c.release(0, "r", &g["lease"]), 200);
    // The grant may come before the view change shows (a Lamport round can complete with messages node 2
    // sent before it died); the view excludes it within S + L and a round.
    let deadline = Instant::now() + PATIENCE;
    while c.view(0) != [0, 1] {
        assert!(Instant::now() < deadline, "node 2 not excluded: {}", c.get(0, "/v1/cluster"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let cluster = c.get(0, "/v1/cluster");
    assert_eq!(cluster["majority"], true, "{cluster}");
    let before = g;

    c.restart(2, Incarnation::new(2));
    let cluster = c.get(0, "/v1/cluster");
    assert_eq!(cluster["peers"][2]["incarnation"], 2, "{cluster}");
    let rejoined = cluster["view"]["members"]
        .as_array()
        .expect("view")
        .iter()
        .any(|m| m["node_id"] == 2 && m["incarnation"] == 2);
    assert!(rejoined, "node 2 is back in the view as incarnation 2: {cluster}");
    let mut last = token(&before);
    for (i, algorithm) in [(2, "lamport"), (0, "lamport"), (2, "probable-owner"), (1, "ricart-agrawala")] {
        let g = c.grant(i, "r", json!({ "algorithm": algorithm }));
        if algorithm == "lamport" {
            assert!(token(&g) > last, "node {i}: {g} after token {last}");
            last = token(&g);
        }
        assert_eq!(c.release(i, "r", &g["lease"]), 200);
    }
}

#[test]
fn graceful_shutdown_answers_waiters_releases_leases_and_returns() {
    let mut c = Cluster::start("inproc-shutdown", 3);
    let held = c.grant(0, "s", json!({ "algorithm": "lamport", "ttl_ms": 60000 }));
    let local = c.acquire_in_background(0, "s", json!({ "algorithm": "lamport" }));
    let remote = c.acquire_in_background(1, "s", json!({ "algorithm": "lamport" }));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!local.is_finished() && !remote.is_finished());

    let (result, took) = c.shutdown(0);
    assert!(result.is_ok(), "{result:?}");
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    let (status, body) = join(local);
    assert_eq!((status, &body["error"]["code"]), (503, &json!("shutting_down")), "{body}");
    // The lease was released at shutdown, and the peers were told before node 0 left.
    let (status, granted) = join(remote);
    assert_eq!(status, 200, "{granted}");
    assert!(token(&granted) > token(&held), "{granted} after {held}");
    assert!(c.client.get(c.url(0, "/healthz")).send().is_err(), "node 0's HTTP port is closed");
}

/// `GET /v1/locks/{name}?scope=local` on nodes that do not hold the lock: a holder is named only when the node knows one,
/// and never a node that is not the holder or owner (no `holder: 0` from the probable-owner default hint).
#[test]
fn a_lock_view_names_a_holder_only_when_the_node_knows_it() {
    let c = Cluster::start("inproc-view", 3);
    for algorithm in Algorithm::ALL {
        let lock = format!("view-{algorithm}");
        let grant = c.grant(1, &lock, json!({ "algorithm": algorithm }));
        for i in 0..3 {
            let info = c.get(i, &format!("/v1/locks/{lock}?scope=local"));
            let view = &info["algorithms"][algorithm.as_str()];
            let holder = &view["holder"];
            assert!(holder.is_null() || *holder == 1, "node {i}, {algorithm}: {view}");
            if i == 1 {
                assert_eq!(*holder, 1, "{view}");
                assert_eq!(view["last_token"], grant["fencing_token"], "{view}");
            } else {
                assert!(view["last_token"].is_null(), "node {i}, {algorithm}: {view}");
            }
        }
        assert_eq!(c.release(1, &lock, &grant["lease"]), 200);
    }
}

/// Nodes started with different `DMUTEX_ALGORITHM` defaults never connect: each refuses the other at the
/// handshake, `/metrics` counts it under `algorithm_mismatch`, `/readyz` stays 503 and `/v1/cluster` shows the
/// peer as not connected.
#[test]
fn nodes_with_different_default_algorithms_refuse_each_other_visibly() {
    let extra = BTreeMap::from([(1, vec![("algorithm", "probable-owner".to_string())])]);
    let c = Cluster::launch_all("inproc-mismatch", 2, extra);
    let deadline = Instant::now() + PATIENCE;
    let refusals = |i: usize| {
        let text = c.client.get(c.url(i, "/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("dmutex_refused_connections_total{reason=\"algorithm_mismatch\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    while refusals(0) < 1.0 || refusals(1) < 1.0 {
        assert!(Instant::now() < deadline, "no algorithm_mismatch refusal counted within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..2 {
        let ready = c.client.get(c.url(i, "/readyz")).send().expect("readyz");
        assert_eq!(ready.status(), 503, "node {i} must not be ready");
        let cluster = c.get(i, "/v1/cluster");
        let other = &cluster["peers"][1 - i];
        assert_eq!(other["connected"], false, "node {i}: {cluster}");
    }
}

/// On connected idle links `/v1/cluster` reports the last frame actually received (membership heartbeats
/// every 200 ms, keepalives when nothing else flows), and heartbeats are counted as membership messages in
/// `/metrics`, never as algorithm messages.
#[test]
fn idle_links_report_a_fresh_last_seen_and_heartbeats_are_not_algorithm_messages() {
    let c = Cluster::start("inproc-idle", 3);
    let before = c.get(0, "/v1/stats")["messages_sent_total"].clone();
    std::thread::sleep(Duration::from_millis(3000));
    let cluster = c.get(0, "/v1/cluster");
    for peer in cluster["peers"].as_array().expect("peers") {
        assert_eq!(peer["connected"], true, "{cluster}");
        let ago = peer["last_seen_ms_ago"].as_u64().unwrap_or_else(|| panic!("no last_seen: {cluster}"));
        assert!(ago < 1500, "last frame {ago} ms ago on a connected idle link: {cluster}");
    }
    assert_eq!(c.get(0, "/v1/stats")["messages_sent_total"], before, "heartbeats are not algorithm messages");
    let metrics = c.client.get(c.url(0, "/metrics")).send().and_then(|r| r.text()).expect("metrics");
    let sent = metrics
        .lines()
        .find(|l| l.starts_with(r#"dmutex_membership_messages_total{type="HEARTBEAT",direction="sent"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    // Two peers, one heartbeat each per 200 ms, for more than 3 s.
    assert!(sent.is_some_and(|n| n >= 20.0), "heartbeats sent: {sent:?}");
}

/// Live join and graceful leave: a node whose id is not in the running nodes' peer list (its own list names
/// them and itself) is admitted without anyone restarting, serves every algorithm with tokens above every
/// earlier one, and on a graceful stop leaves the view; the others go on granting.
#[test]
fn a_node_outside_the_peer_list_joins_live_and_leaves_gracefully() {
    join_and_leave("inproc-join", false);
}

/// The same for a node whose peer list names only the seeds (the Kubernetes way: pod `dmutex-3` with the
/// ConfigMap's three seeds and its own address in `DMUTEX_ADVERTISE_ADDR`).
#[test]
fn a_node_beyond_the_seed_list_joins_with_its_advertised_address() {
    join_and_leave("inproc-join-seeds", true);
}

fn join_and_leave(name: &str, seeds_only: bool) {
    let mut c = Cluster::start(name, 3);
    let mut last = BTreeMap::new();
    let mut round = |c: &Cluster, nodes: &[usize]| {
        for algorithm in Algorithm::ALL {
            for &i in nodes {
                let lock = format!("join-{algorithm}");
                let g = c.grant(i, &lock, json!({ "algorithm": algorithm }));
                let prev = last.insert(algorithm, token(&g)).unwrap_or(0);
                assert!(token(&g) > prev, "{algorithm} on node {i}: {g} after token {prev}");
                assert_eq!(c.release(i, &lock, &g["lease"]), 200);
            }
        }
    };
    round(&c, &[0, 1, 2]);
    let joined = c.join_new(seeds_only);
    assert_eq!(joined, 3);
    for i in 0..4 {
        assert_eq!(c.view(i), vec![0, 1, 2, 3], "node {i}'s view after the join");
    }
    round(&c, &[3, 0, 1, 2]);
    // The view change is a flow record and is counted by cause; the gauges show the view.
    let flow = c.get(0, "/v1/flow");
    let joined_view = flow["records"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["kind"] == "VIEW" && r["detail"].as_str().is_some_and(|d| d.contains("join of 3")));
    assert!(joined_view, "no VIEW flow record of the join: {flow}");
    let metrics = c.client.get(c.url(0, "/metrics")).send().and_then(|r| r.text()).expect("metrics");
    let value = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(value("dmutex_view_members "), Some(4.0), "{metrics}");
    assert!(value("dmutex_view_epoch ").is_some_and(|e| e >= 2.0), "{metrics}");
    assert!(value(r#"dmutex_view_changes_total{cause="join"}"#).is_some_and(|n| n >= 1.0), "{metrics}");
    let (result, took) = c.shutdown(3);
    assert!(result.is_ok(), "{result:?}");
    assert!(took < Duration::from_secs(5), "the leave took {took:?}");
    for i in 0..3 {
        assert_eq!(c.view(i), vec![0, 1, 2], "node {i}'s view after the leave");
    }
    let metrics = c.client.get(c.url(0, "/metrics")).send().and_then(|r| r.text()).expect("metrics");
    assert!(
        metrics.lines().any(|l| l.starts_with(r#"dmutex_view_changes_total{cause="leave"} "#)),
        "the leave is counted as a leave: {metrics}"
    );
    round(&c, &[0, 1, 2]);
}

/// Leases through any node (the client contract): a lease granted by node 0 is kept alive through nodes 1 and
/// 2 and released through node 2; afterwards it is unknown everywhere. A second acquire with the lease, through
/// any node, answers the existing grant (etcd's re-entrant lock) instead of waiting on itself.
#[test]
fn a_lease_is_kept_alive_released_and_reacquired_through_any_node() {
    let c = Cluster::start("inproc-anynode", 3);
    for algorithm in Algorithm::ALL {
        let lock = format!("any-{algorithm}");
        let held = c.grant(0, &lock, json!({ "algorithm": algorithm, "ttl_ms": 5000 }));
        let lease = held["lease"].as_str().unwrap_or_default().to_string();
        for i in [1, 2, 0] {
            let (status, body) = c.post(i, &format!("/v1/leases/{lease}/keepalive"), json!({}));
            assert_eq!((status, &body["ttl_ms"]), (200, &json!(5000)), "keepalive through node {i}: {body}");
        }
        let (status, again) = c.post(
            1,
            &format!("/v1/locks/{lock}/acquire"),
            json!({ "algorithm": algorithm, "lease": lease }),
        );
        assert_eq!(status, 200, "{again}");
        assert_eq!(
            (&again["fencing_token"], &again["node_id"]),
            (&held["fencing_token"], &json!(0)),
            "{again}"
        );
        let (status, body) =
            c.post(2, "/v1/locks/other/acquire", json!({ "algorithm": algorithm, "lease": lease }));
        assert_eq!((status, &body["error"]["code"]), (409, &json!("lease_in_use")), "{body}");
        assert_eq!(c.release(2, &lock, &held["lease"]), 200, "release through node 2");
        for i in 0..3 {
            let (status, body) = c.post(i, &format!("/v1/locks/{lock}/release"), json!({ "lease": lease }));
            assert_eq!(
                (status, &body["error"]["code"]),
                (409, &json!("lease_not_found")),
                "node {i}: {body}"
            );
        }
        // Released for real: the next holder, through another node, gets a larger token at once.
        let next = c.grant(2, &lock, json!({ "algorithm": algorithm, "timeout_ms": 2000 }));
        assert!(token(&next) > token(&held), "{next} after {held}");
        assert_eq!(c.release(1, &lock, &next["lease"]), 200);
    }
}

/// The granting node crashes: a keepalive through another node answers 409 `lease_lost` naming the reason,
/// within the view-change bound (it does not wait out a timeout or answer "unknown").
#[test]
fn a_lease_of_a_crashed_node_is_lost_through_the_others_promptly() {
    let mut c = Cluster::start("inproc-lostlease", 3);
    let held = c.grant(0, "lost", json!({ "algorithm": "lamport", "ttl_ms": 30000 }));
    let lease = held["lease"].as_str().unwrap_or_default().to_string();
    c.crash(0);
    let started = Instant::now();
    let (status, body) = c.post(1, &format!("/v1/leases/{lease}/keepalive"), json!({}));
    let took = started.elapsed();
    assert_eq!((status, &body["error"]["code"]), (409, &json!("lease_lost")), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("node 0"), "the reason names the granting node: {message}");
    assert!(took < Duration::from_secs(6), "answered after {took:?}");
    // Asked again once the view excludes node 0: answered at once.
    let started = Instant::now();
    let (status, body) = c.post(2, "/v1/locks/lost/release", json!({ "lease": lease }));
    assert_eq!((status, &body["error"]["code"]), (409, &json!("lease_lost")), "{body}");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

/// `GET /v1/locks/{name}` is the same from every node (holder, token, queue order) and `GET /v1/locks` lists
/// the lock; no GET ever shows a lease id: every GET the API serves (taken from the node's OpenAPI document,
/// checked against the router's routes, each query parameter tried) is scanned while the lease is held.
#[test]
fn a_lock_query_gives_the_same_answer_from_every_node_and_no_lease_id() {
    let c = Cluster::start("inproc-query", 3);
    for algorithm in Algorithm::ALL {
        let lock = format!("q-{algorithm}");
        let held = c.grant(1, &lock, json!({ "algorithm": algorithm, "ttl_ms": 20000 }));
        let lease = held["lease"].as_str().unwrap_or_default().to_string();
        let first = c.acquire_in_background(2, &lock, json!({ "algorithm": algorithm, "timeout_ms": 20000 }));
        let queued = |n: usize| {
            let deadline = Instant::now() + PATIENCE;
            loop {
                let state = c.get(0, &format!("/v1/locks/{lock}"));
                let queue = &state["algorithms"][algorithm.as_str()]["queue"];
                if queue.as_array().is_some_and(|q| q.len() == n) {
                    return state;
                }
                assert!(Instant::now() < deadline, "{algorithm}: queue never reached {n}: {state}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        queued(1);
        let second =
            c.acquire_in_background(0, &lock, json!({ "algorithm": algorithm, "timeout_ms": 20000 }));
        let state = queued(2);
        let a = &state["algorithms"][algorithm.as_str()];
        assert_eq!(a["holder"]["node_id"], 1, "{state}");
        assert_eq!(a["holder"]["fencing_token"], held["fencing_token"], "{state}");
        let order: Vec<u64> =
            a["queue"].as_array().unwrap().iter().filter_map(|w| w["node_id"].as_u64()).collect();
        assert_eq!(order, vec![2, 0], "{algorithm}: served in request order: {state}");
        assert_eq!(state["missing"], json!([]), "{state}");
        for i in 0..3 {
            assert_eq!(c.get(i, &format!("/v1/locks/{lock}")), state, "node {i} answers differently");
        }
        let list = c.get(2, "/v1/locks");
        let entry = list["locks"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == json!(lock) && e["algorithm"] == json!(algorithm)))
            .unwrap_or_else(|| panic!("{lock} not listed: {list}"))
            .clone();
        assert_eq!((&entry["holder_node"], &entry["waiters"]), (&json!(1), &json!(2)), "{entry}");
        for i in 0..3 {
            for path in
                [format!("/v1/locks/{lock}"), format!("/v1/locks/{lock}?scope=local"), "/v1/locks".into()]
            {
                let text = c.get(i, &path).to_string();
                assert!(!text.contains(&lease), "node {i} {path} shows the lease id: {text}");
            }
        }
        // Nor any other GET the API serves (cluster, stats, flow, metrics, the OpenAPI document, health, …):
        // the lease id, or its secret part alone, appears in none while the lease is held.
        let secret = lease.rsplit('.').next().unwrap_or_default().to_string();
        assert!(secret.len() >= 16, "a lease id ends with its secret: {lease}");
        for i in 0..3 {
            let paths = c.every_get(i, &lock);
            assert!(paths.len() >= 14, "{paths:?}");
            for path in paths {
                let (status, text) = c.get_text(i, &path);
                let expected = if path == "/v1/workload" { 404 } else { 200 };
                assert_eq!(status, expected, "node {i} GET {path}: {text}");
                assert!(!text.contains(&lease), "node {i} {path} shows the lease id: {text}");
                assert!(!text.contains(&secret), "node {i} {path} shows the lease's secret: {text}");
            }
        }
        assert_eq!(c.release(0, &lock, &held["lease"]), 200);
        let (s1, g1) = join(first);
        assert_eq!(s1, 200, "{g1}");
        assert_eq!(c.release(1, &lock, &g1["lease"]), 200);
        let (s2, g2) = join(second);
        assert_eq!(s2, 200, "{g2}");
        assert_eq!(c.release(2, &lock, &g2["lease"]), 200);
    }
}

/// `"timeout_ms": "forever"` waits without a limit and is granted when the holder releases; a waiting client
/// that goes away (its HTTP request dropped) is withdrawn from the queue instead of waiting there for ever.
#[test]
fn a_forever_waiter_is_granted_and_an_abandoned_one_leaves_the_queue() {
    let c = Cluster::start("inproc-forever", 3);
    let held = c.grant(0, "f", json!({ "algorithm": "lamport", "ttl_ms": 30000 }));
    let impatient = reqwest::blocking::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let gone =
        impatient.post(c.url(1, "/v1/locks/f/acquire")).json(&json!({ "timeout_ms": "forever" })).send();
    assert!(gone.is_err(), "the impatient client gives up first: {gone:?}");
    let deadline = Instant::now() + PATIENCE;
    while c.get(0, "/v1/locks/f")["algorithms"]["lamport"]["queue"] != json!([]) {
        assert!(Instant::now() < deadline, "the abandoned waiter stays queued: {}", c.get(0, "/v1/locks/f"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let waiter = c.acquire_in_background(2, "f", json!({ "timeout_ms": "forever" }));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(c.release(0, "f", &held["lease"]), 200);
    let (status, g) = join(waiter);
    assert_eq!(status, 200, "{g}");
    assert!(token(&g) > token(&held));
    let (status, body) = c.post(2, "/v1/locks/f/acquire", json!({ "timeout_ms": "soon" }));
    assert_eq!(status, 400, "{body}");
}

/// A compose replica recreated by a later `--scale` may come back at another address with the same id (its
/// name). When the peer lists came from DNS discovery, the members dial it where it says it is (its formation
/// query and join carry its address), so it is admitted and serves; with a configured list they would keep
/// dialling the old address, and it would never be admitted (the wait for it to be ready would fail).
#[test]
fn a_member_back_at_another_address_is_dialled_there_when_the_peers_came_from_dns() {
    let mut c = Cluster::launch_all("inproc-readdress", 3, BTreeMap::new());
    c.from_dns = true;
    // Relaunch all three as discovery-configured nodes (the first launch only reserved the addresses).
    for i in 0..3 {
        c.crash(i);
        let listener = TcpListener::bind(c.peers[i]).expect("rebind the peer port");
        c.nodes[i] = c.launch(i, listener, Incarnation::new(2));
    }
    c.wait_ready();
    let old = c.peers[2];
    c.crash(2);
    let deadline = Instant::now() + PATIENCE;
    while c.view(0) != [0, 1] {
        assert!(Instant::now() < deadline, "node 2 was not excluded: {:?}", c.view(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Back as a new incarnation at a new address; its own (DNS) list has that address.
    let listener = bind();
    c.peers[2] = listener.local_addr().expect("local addr");
    assert_ne!(c.peers[2], old);
    c.nodes[2] = c.launch(2, listener, Incarnation::new(3));
    c.wait_ready();
    let cluster = c.get(0, "/v1/cluster");
    let member = cluster["view"]["members"].as_array().and_then(|m| m.iter().find(|m| m["node_id"] == 2));
    assert_eq!(member.map(|m| m["addr"].clone()), Some(json!(c.peers[2].to_string())), "{cluster}");
    for algorithm in Algorithm::ALL {
        for i in [0, 2] {
            let lock = format!("readdress-{algorithm}");
            let g = c.grant(i, &lock, json!({ "algorithm": algorithm, "timeout_ms": 5000 }));
            assert_eq!(c.release(i, &lock, &g["lease"]), 200);
        }
    }
}
