//! HTTP lock benchmark: starts a real 3-node cluster (release binary) on 127.0.99.x and prints
//! acquire+release latency (uncontended, one client) and contended throughput (5 clients over 3 nodes, one
//! lock) for every algorithm, plus the idle RSS of a node.
//!
//! ```sh
//! cargo build --release && cargo run --release --example http_bench -- [--nodes 3] [--requests 2000] [--secs 5]
//! ```

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SUBNET: &str = "127.0.99";
const PEER_PORT: u16 = 27070;
const HTTP_PORT: u16 = 28080;

struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn url(i: usize) -> String {
    format!("http://{SUBNET}.{}:{HTTP_PORT}", i + 1)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let n = arg("--nodes", 3) as usize;
    let requests = arg("--requests", 2000) as usize;
    let secs = arg("--secs", 5);
    let exe = std::env::current_exe()?;
    let binary = exe.parent().and_then(|p| p.parent()).map(|p| p.join("dmutex")).expect("target dir");
    anyhow::ensure!(
        binary.exists(),
        "build the binary first: cargo build --release ({} missing)",
        binary.display()
    );
    let peers: Vec<String> = (0..n).map(|i| format!("{SUBNET}.{}:{PEER_PORT}", i + 1)).collect();
    let mut nodes = Nodes(Vec::new());
    for i in 0..n {
        nodes.0.push(
            Command::new(&binary)
                .arg("node")
                .env("DMUTEX_NODE_ID", i.to_string())
                .env("DMUTEX_PEERS", peers.join(","))
                .env("DMUTEX_PEER_ADDR", &peers[i])
                .env("DMUTEX_HTTP_ADDR", format!("{SUBNET}.{}:{HTTP_PORT}", i + 1))
                .env("DMUTEX_CLUSTER_NAME", "bench")
                .env("DMUTEX_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let start = Instant::now();
    for i in 0..n {
        loop {
            if client.get(format!("{}/readyz", url(i))).send().is_ok_and(|r| r.status().is_success()) {
                break;
            }
            anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "node {i} not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle: Vec<u64> = nodes.0.iter().filter_map(|c| rss_kib(c.id())).collect();
    println!("cluster: {n} nodes on {SUBNET}.1..{n}, release build");
    println!(
        "idle RSS per node: {:?} KiB (max {:.1} MiB)",
        idle,
        idle.iter().max().copied().unwrap_or(0) as f64 / 1024.0
    );
    println!();
    println!("uncontended acquire+release through node 0, one client, {requests} rounds:");
    println!("{:<16} {:>10} {:>10} {:>10} {:>12}", "algorithm", "p50 ms", "p99 ms", "max ms", "rounds/s");
    for algo in ["lamport", "ricart-agrawala", "probable-owner"] {
        let lock = format!("bench-uncontended-{algo}");
        let mut lat = Vec::with_capacity(requests);
        let t0 = Instant::now();
        for _ in 0..requests {
            let t = Instant::now();
            let g: serde_json::Value = client
                .post(format!("{}/v1/locks/{lock}/acquire", url(0)))
                .json(&serde_json::json!({"algorithm": algo, "timeout_ms": 10000}))
                .send()?
                .error_for_status()?
                .json()?;
            let lease = g["lease"].as_str().unwrap_or_default().to_string();
            client
                .post(format!("{}/v1/locks/{lock}/release", url(0)))
                .json(&serde_json::json!({"lease": lease}))
                .send()?
                .error_for_status()?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let total = t0.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{:<16} {:>10.3} {:>10.3} {:>10.3} {:>12.0}",
            algo,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            requests as f64 / total
        );
    }
    println!();
    println!("contended: 5 clients over {n} nodes, one lock, {secs} s each:");
    println!(
        "{:<16} {:>14} {:>14} {:>10} {:>10}",
        "algorithm", "grants/s", "owner chg/s", "p50 ms", "p99 ms"
    );
    for algo in ["lamport", "ricart-agrawala", "probable-owner"] {
        let lock = format!("bench-contended-{algo}");
        let stop = Arc::new(AtomicBool::new(false));
        let grants = Arc::new(AtomicU64::new(0));
        let changes = Arc::new(AtomicU64::new(0));
        let last_holder = Arc::new(AtomicU64::new(u64::MAX));
        let mut threads = Vec::new();
        for c in 0..5usize {
            let (stop, grants, changes, last_holder) =
                (stop.clone(), grants.clone(), changes.clone(), last_holder.clone());
            let lock = lock.clone();
            let algo = algo.to_string();
            threads.push(std::thread::spawn(move || -> Vec<f64> {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                let node = c % n;
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let Ok(r) = client
                        .post(format!("{}/v1/locks/{lock}/acquire", url(node)))
                        .json(&serde_json::json!({"algorithm": algo, "timeout_ms": 20000}))
                        .send()
                    else {
                        continue;
                    };
                    let Ok(g) = r.json::<serde_json::Value>() else { continue };
                    let Some(lease) = g["lease"].as_str().map(str::to_string) else { continue };
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    grants.fetch_add(1, Ordering::Relaxed);
                    if last_holder.swap(c as u64, Ordering::Relaxed) != c as u64 {
                        changes.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = client
                        .post(format!("{}/v1/locks/{lock}/release", url(node)))
                        .json(&serde_json::json!({"lease": lease}))
                        .send();
                }
                lat
            }));
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        let mut lat: Vec<f64> = threads.into_iter().flat_map(|t| t.join().unwrap_or_default()).collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{:<16} {:>14.0} {:>14.0} {:>10.2} {:>10.2}",
            algo,
            grants.load(Ordering::Relaxed) as f64 / secs as f64,
            changes.load(Ordering::Relaxed) as f64 / secs as f64,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    Ok(())
}
