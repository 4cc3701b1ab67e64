//! Membership figures on real nodes: N whole `dmutex::node::run`s on 127.0.0.1 (each on its own tokio runtime,
//! so dropping one is a crash), measured over HTTP like a client would.
//!
//! Prints, per run: heartbeat messages per node per second when idle; how long a crash takes to be excluded
//! (kill → every survivor's view without it), and how long the first acquire on a survivor waited; how long
//! a join of a node outside the peer list takes (start → every member's view lists it, and its first grant);
//! how long a graceful leave takes (SIGTERM-equivalent → every view without it).
//!
//! ```text
//! cargo run --release --example membership_live -- [nodes=5] [runs=3]
//! ```

use dmutex::config::{ConfigSources, NodeConfig};
use dmutex::node::RunConfig;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

struct Node {
    runtime: Option<Runtime>,
    http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

struct Cluster {
    name: String,
    peers: Vec<SocketAddr>,
    nodes: Vec<Node>,
    client: reqwest::blocking::Client,
}

fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

impl Cluster {
    fn start(name: &str, n: usize) -> Cluster {
        let listeners: Vec<TcpListener> = (0..n).map(|_| bind()).collect();
        let peers = listeners.iter().map(|l| l.local_addr().expect("addr")).collect();
        let client =
            reqwest::blocking::Client::builder().timeout(Duration::from_secs(20)).build().expect("client");
        let mut c = Cluster { name: name.into(), peers, nodes: Vec::new(), client };
        for (i, l) in listeners.into_iter().enumerate() {
            let node = c.launch(i, l);
            c.nodes.push(node);
        }
        for i in 0..n {
            c.wait(|| c.ready(i), "ready");
        }
        c
    }

    fn launch(&self, i: usize, peer_listener: TcpListener) -> Node {
        let peers: Vec<String> = self.peers.iter().map(ToString::to_string).collect();
        let overrides: BTreeMap<String, String> = [
            ("node_id", i.to_string()),
            ("peers", peers.join(",")),
            ("cluster_name", self.name.clone()),
            ("log", "warn".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let cfg = NodeConfig::load(&ConfigSources { overrides, ..ConfigSources::default() }).expect("config");
        let http_listener = bind();
        let http = http_listener.local_addr().expect("addr");
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
        let (stop, stopped) = oneshot::channel::<()>();
        let done = runtime.spawn(async move {
            for l in [&peer_listener, &http_listener] {
                l.set_nonblocking(true)?;
            }
            let peer = tokio::net::TcpListener::from_std(peer_listener)?;
            let http = tokio::net::TcpListener::from_std(http_listener)?;
            dmutex::node::run(peer, http, RunConfig::new(cfg), async {
                let _ = stopped.await;
            })
            .await
        });
        Node { runtime: Some(runtime), http, stop: Some(stop), done: Some(done) }
    }

    fn get(&self, i: usize, path: &str) -> Option<Value> {
        let r = self.client.get(format!("http://{}{path}", self.nodes[i].http)).send().ok()?;
        r.json().ok()
    }

    fn ready(&self, i: usize) -> bool {
        self.client
            .get(format!("http://{}/readyz", self.nodes[i].http))
            .send()
            .is_ok_and(|r| r.status() == 200)
    }

    fn view(&self, i: usize) -> Vec<u64> {
        self.get(i, "/v1/cluster")
            .and_then(|c| c["view"]["members"].as_array().cloned())
            .map(|m| m.iter().filter_map(|m| m["node_id"].as_u64()).collect())
            .unwrap_or_default()
    }

    fn heartbeats_sent(&self, i: usize) -> f64 {
        let text = self
            .client
            .get(format!("http://{}/metrics", self.nodes[i].http))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .filter(|l| {
                l.starts_with("dmutex_membership_messages_total{type=\"HEARTBEAT\",direction=\"sent\"}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Acquire and release on node `i`; how long the acquire took.
    fn lock_once(&self, i: usize, lock: &str) -> Duration {
        let t0 = Instant::now();
        let r = self
            .client
            .post(format!("http://{}/v1/locks/{lock}/acquire", self.nodes[i].http))
            .json(&json!({"algorithm": "lamport", "timeout_ms": 15000}))
            .send()
            .expect("acquire");
        assert_eq!(r.status().as_u16(), 200, "acquire on node {i}");
        let took = t0.elapsed();
        let g: Value = r.json().expect("grant");
        let lease = g["lease"].as_str().expect("lease").to_string();
        self.client
            .post(format!("http://{}/v1/locks/{lock}/release", self.nodes[i].http))
            .json(&json!({"lease": lease}))
            .send()
            .expect("release");
        took
    }

    fn wait(&self, mut f: impl FnMut() -> bool, what: &str) -> Duration {
        let t0 = Instant::now();
        while !f() {
            assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
        t0.elapsed()
    }

    fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        // Dropping the stop sender would end `run`'s shutdown future, which is a graceful stop (a leave):
        // a crash keeps it pending for ever.
        std::mem::forget(n.stop.take());
        n.done.take();
        if let Some(rt) = n.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    fn stop(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if let Some(stop) = n.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(rt), Some(done)) = (n.runtime.take(), n.done.take()) {
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(15), done).await });
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].runtime.is_some()).collect()
    }
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let n = args.first().copied().unwrap_or(5).max(3);
    let runs = args.get(1).copied().unwrap_or(3).max(1);
    println!(
        "membership on {n} in-process nodes (127.0.0.1), default timing (heartbeat 200 ms, S 1.5 s, L 1 s)"
    );
    for run in 1..=runs {
        let mut c = Cluster::start(&format!("mlive-{run}"), n);
        c.lock_once(0, "warm");
        // Idle heartbeat rate.
        let before: Vec<f64> = (0..n).map(|i| c.heartbeats_sent(i)).collect();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(2));
        let secs = t0.elapsed().as_secs_f64();
        let rate: f64 = (0..n).map(|i| c.heartbeats_sent(i) - before[i]).sum::<f64>() / n as f64 / secs;
        // Crash of the last node.
        let victim = n - 1;
        let crashed_at = Instant::now();
        c.crash(victim);
        let first_wait = c.lock_once(0, "after-crash");
        let survivors: Vec<usize> = c.alive();
        let want: Vec<u64> = survivors.iter().map(|&i| i as u64).collect();
        c.wait(|| survivors.iter().all(|&i| c.view(i) == want), "the view without the crashed node");
        let crash = crashed_at.elapsed();
        // Join of a node outside the peer list (a new id).
        let listener = bind();
        c.peers.push(listener.local_addr().expect("addr"));
        let joined_at = Instant::now();
        let j = c.nodes.len();
        let node = c.launch(j, listener);
        c.nodes.push(node);
        let members: Vec<usize> = c.alive();
        let want: Vec<u64> = members.iter().map(|&i| i as u64).collect();
        c.wait(|| members.iter().all(|&i| c.view(i) == want), "the view with the joiner");
        let join_view = joined_at.elapsed();
        c.wait(|| c.ready(j), "the joiner ready");
        let join_grant = joined_at.elapsed() + c.lock_once(j, "joined");
        // Graceful leave of the joiner.
        let left_at = Instant::now();
        c.stop(j);
        let rest: Vec<usize> = c.alive();
        let want: Vec<u64> = rest.iter().map(|&i| i as u64).collect();
        c.wait(|| rest.iter().all(|&i| c.view(i) == want), "the view without the leaver");
        let leave = left_at.elapsed();
        println!(
            "run {run}: heartbeats {rate:.1}/node/s idle; crash excluded after {:.0} ms (first acquire on a \
             survivor waited {:.0} ms); join: in every view after {:.0} ms, first grant at {:.0} ms; graceful \
             leave: out of every view after {:.0} ms",
            crash.as_secs_f64() * 1000.0,
            first_wait.as_secs_f64() * 1000.0,
            join_view.as_secs_f64() * 1000.0,
            join_grant.as_secs_f64() * 1000.0,
            leave.as_secs_f64() * 1000.0
        );
        for i in c.alive() {
            c.stop(i);
        }
    }
}
