//! Helpers for black-box tests that run real `dmutex node` processes, each on its own 127.x.y.z address
//! (host-addressed, same ports on every node).
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Peer port used by every test node.
pub const PEER_PORT: u16 = 17070;
/// HTTP port used by every test node.
pub const HTTP_PORT: u16 = 18080;

/// A cluster of node processes. Killed on drop.
pub struct Cluster {
    /// `127.a.b` prefix; node i listens on `127.a.b.(i+1)`.
    pub subnet: String,
    /// Node processes (None while stopped).
    pub procs: Vec<Option<Child>>,
    /// Extra environment for every node.
    pub env: Vec<(String, String)>,
    /// Log directory.
    pub dir: PathBuf,
    /// Per-node peer address override (used to route a link through a proxy).
    pub peers_override: Option<Vec<String>>,
    client: reqwest::blocking::Client,
}

/// A unique 127.a.b subnet for a test (distinct per test name and process).
pub fn subnet_for(test: &str) -> String {
    let mut h: u32 = 2166136261;
    for b in test.bytes().chain(std::process::id().to_le_bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(16777619);
    }
    format!("127.{}.{}", 1 + (h % 250), 1 + ((h >> 8) % 250))
}

impl Cluster {
    /// Starts `n` nodes and waits until all are ready.
    pub fn start(test: &str, n: usize, env: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::new(test, n, env);
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_ready(Duration::from_secs(20));
        c
    }

    /// A cluster description without processes.
    pub fn new(test: &str, n: usize, env: &[(&str, &str)]) -> Cluster {
        let subnet = subnet_for(test);
        let dir = std::env::temp_dir().join(format!("dmutex-test-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Cluster {
            subnet,
            procs: (0..n).map(|_| None).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            dir,
            peers_override: None,
            client: reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("client"),
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Address of node i.
    pub fn host(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Base URL of node i.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}:{}", self.host(i), HTTP_PORT)
    }

    /// The peer list as configured.
    pub fn peers(&self) -> String {
        (0..self.len()).map(|i| format!("{}:{}", self.host(i), PEER_PORT)).collect::<Vec<_>>().join(",")
    }

    /// Starts node i.
    pub fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{i}.log")))
            .expect("log file");
        let peers = match &self.peers_override {
            Some(p) => p[i].clone(),
            None => self.peers(),
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dmutex"));
        cmd.arg("node")
            .env("DMUTEX_NODE_ID", i.to_string())
            .env("DMUTEX_PEERS", peers)
            .env("DMUTEX_PEER_ADDR", format!("{}:{}", self.host(i), PEER_PORT))
            .env("DMUTEX_HTTP_ADDR", format!("{}:{}", self.host(i), HTTP_PORT))
            .env("DMUTEX_CLUSTER_NAME", format!("test-{}", self.subnet))
            .env("DMUTEX_LOG", "info")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.procs[i] = Some(cmd.spawn().expect("spawn dmutex node"));
    }

    /// Kills node i with SIGKILL.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// Sends SIGTERM to node i and returns (exit status, time to exit).
    pub fn sigterm(&mut self, i: usize) -> (Option<i32>, Duration) {
        let Some(mut p) = self.procs[i].take() else { return (None, Duration::ZERO) };
        let start = Instant::now();
        unsafe_free_kill(p.id(), "TERM");
        loop {
            if let Ok(Some(status)) = p.try_wait() {
                return (status.code(), start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = p.kill();
                return (None, start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every running node answers /readyz with 200.
    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        for i in 0..self.len() {
            if self.procs[i].is_none() {
                continue;
            }
            loop {
                if let Ok(r) = self.client.get(format!("{}/readyz", self.url(i))).timeout(Duration::from_secs(2)).send()
                {
                    if r.status().is_success() {
                        break;
                    }
                }
                if start.elapsed() > limit {
                    panic!("node {i} not ready after {limit:?}; log:\n{}", self.log(i));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A node's log so far.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node-{i}.log"))).unwrap_or_default()
    }

    /// POST JSON, returns (status, body).
    pub fn post(&self, i: usize, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(format!("{}{}", self.url(i), path)).json(&body).send();
        match r {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().unwrap_or(Value::Null))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// GET JSON.
    pub fn get(&self, i: usize, path: &str) -> (u16, Value) {
        match self.client.get(format!("{}{}", self.url(i), path)).send() {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().unwrap_or(Value::Null))
            }
            Err(e) => (0, Value::String(e.to_string())),
        }
    }

    /// GET text.
    pub fn get_text(&self, i: usize, path: &str) -> (u16, String) {
        match self.client.get(format!("{}{}", self.url(i), path)).send() {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().unwrap_or_default())
            }
            Err(e) => (0, e.to_string()),
        }
    }

    /// Acquire through node i; returns (status, body).
    pub fn acquire(&self, i: usize, lock: &str, body: Value) -> (u16, Value) {
        self.post(i, &format!("/v1/locks/{lock}/acquire"), body)
    }

    /// Release through node i.
    pub fn release(&self, i: usize, lock: &str, lease: &str) -> (u16, Value) {
        self.post(i, &format!("/v1/locks/{lock}/release"), serde_json::json!({ "lease": lease }))
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
    }
}

/// Sends a signal with the `kill` command (tests avoid `unsafe`).
pub fn unsafe_free_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// A holding interval observed by a client.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Lock.
    pub lock: String,
    /// Token.
    pub token: u64,
    /// Start (after the grant arrived).
    pub start: Instant,
    /// End (before the release was sent).
    pub end: Instant,
}

/// Checks that intervals of the same lock never overlap and tokens increase in time order.
pub fn check_intervals(mut iv: Vec<Interval>) -> Result<(), String> {
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
