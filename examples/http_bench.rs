//! HTTP lock benchmark: starts a real 3-node cluster (release binary) on 127.0.99.x and prints
//! acquire+release latency (uncontended, one client) and contended throughput (5 clients over 3 nodes, one
//! lock) for every algorithm, plus the idle RSS of a node. Requests go through `dmutex::api::client::Client`,
//! the client `dmutex lock` uses.
//!
//! With `--https` the nodes serve their API over HTTPS (`DMUTEX_TLS_CERT`/`DMUTEX_TLS_KEY`: a certificate for
//! each node's address from a throwaway CA written to a temporary directory) and the clients trust that CA;
//! everything else is the same, so the two runs' figures compare (the first line says which it was).
//!
//! ```sh
//! cargo build --release && cargo run --release --example http_bench -- [--nodes 3] [--requests 2000] [--secs 5] [--https]
//! ```

use dmutex::algo::Algorithm;
use dmutex::api::client::{Client, Security, Trust};
use dmutex::api::types::{AcquireBody, Timeout};
use dmutex::net::peer_tls::ThrowawayCa;
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

/// Node `i`'s address (its own loopback IP, which its certificate names with `--https`).
fn host(i: usize) -> String {
    format!("{SUBNET}.{}", i + 1)
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

/// Every request's limit (none of them should come near it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a release may take.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    // One thread per contended client, as with blocking clients: the figures measure the node, not a runtime
    // shared by the clients.
    tokio::runtime::Builder::new_multi_thread().worker_threads(5).enable_all().build()?.block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    let n = arg("--nodes", 3) as usize;
    let requests = arg("--requests", 2000) as usize;
    let secs = arg("--secs", 5);
    let https = std::env::args().any(|a| a == "--https");
    let (build, cargo_flag) = if cfg!(debug_assertions) { ("debug", "") } else { ("release", " --release") };
    let exe = std::env::current_exe()?;
    let binary = exe.parent().and_then(|p| p.parent()).map(|p| p.join("dmutex")).expect("target dir");
    anyhow::ensure!(
        binary.exists(),
        "build the binary first: cargo build{cargo_flag} ({} missing)",
        binary.display()
    );
    // With --https: the certificates (the directory lives until the nodes are stopped) and the clients' trust.
    let certs = tempfile::tempdir()?;
    let ca = https.then(|| ThrowawayCa::new("dmutex http_bench CA")).transpose()?;
    let scheme = if https { "https" } else { "http" };
    let url = |i: usize| format!("{scheme}://{}:{HTTP_PORT}", host(i));
    let peers: Vec<String> = (0..n).map(|i| format!("{}:{PEER_PORT}", host(i))).collect();
    let mut security = Security::default();
    let mut nodes = Nodes(Vec::new());
    for i in 0..n {
        let mut node = Command::new(&binary);
        node.arg("node")
            .env("DMUTEX_NODE_ID", i.to_string())
            .env("DMUTEX_PEERS", peers.join(","))
            .env("DMUTEX_PEER_ADDR", &peers[i])
            .env("DMUTEX_HTTP_ADDR", format!("{}:{HTTP_PORT}", host(i)))
            .env("DMUTEX_CLUSTER_NAME", "bench")
            .env("DMUTEX_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(ca) = &ca {
            let (cert, key, ca_file) = ca.write(certs.path(), &format!("node-{i}"), &[&host(i)])?;
            node.env("DMUTEX_TLS_CERT", cert).env("DMUTEX_TLS_KEY", key);
            security.trust = Trust::Ca(ca_file);
        }
        nodes.0.push(node.spawn()?);
    }
    // Every client: the same settings, its own connection pool.
    let client_of =
        |i: usize| Client::with_security(&url(i), &security).map(|c| c.with_timeout(REQUEST_TIMEOUT));
    let client = client_of(0)?;
    let start = Instant::now();
    for i in 0..n {
        let node = client.at(&url(i))?;
        loop {
            if node.probe("readyz", REQUEST_TIMEOUT).await.is_ok_and(|s| s.is_success()) {
                break;
            }
            anyhow::ensure!(start.elapsed() < Duration::from_secs(20), "node {i} not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle: Vec<u64> = nodes.0.iter().filter_map(|c| rss_kib(c.id())).collect();
    let api = if https { "API over HTTPS (throwaway CA, rustls)" } else { "API over plain HTTP" };
    println!("cluster: {n} nodes on {SUBNET}.1..{n}, {build} build, {api}");
    println!(
        "idle RSS per node: {:?} KiB (max {:.1} MiB)",
        idle,
        idle.iter().max().copied().unwrap_or(0) as f64 / 1024.0
    );
    println!();
    println!("uncontended acquire+release through node 0, one client, {requests} rounds:");
    println!("{:<16} {:>10} {:>10} {:>10} {:>12}", "algorithm", "p50 ms", "p99 ms", "max ms", "rounds/s");
    for algo in Algorithm::ALL {
        let lock = format!("bench-uncontended-{algo}");
        let body = AcquireBody {
            algorithm: Some(algo),
            timeout_ms: Some(Timeout::Ms(10_000)),
            ..AcquireBody::default()
        };
        let mut lat = Vec::with_capacity(requests);
        let t0 = Instant::now();
        for _ in 0..requests {
            let t = Instant::now();
            let g = client.acquire(&lock, &body, None).await?;
            client.release(&lock, &g.lease, RELEASE_TIMEOUT).await?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let total = t0.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{:<16} {:>10.3} {:>10.3} {:>10.3} {:>12.0}",
            algo.as_str(),
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
    for algo in Algorithm::ALL {
        let lock = format!("bench-contended-{algo}");
        let stop = Arc::new(AtomicBool::new(false));
        let grants = Arc::new(AtomicU64::new(0));
        let changes = Arc::new(AtomicU64::new(0));
        let last_holder = Arc::new(AtomicU64::new(u64::MAX));
        let body = AcquireBody {
            algorithm: Some(algo),
            timeout_ms: Some(Timeout::Ms(20_000)),
            ..AcquireBody::default()
        };
        let mut tasks = Vec::new();
        for c in 0..5usize {
            let (stop, grants, changes, last_holder) =
                (stop.clone(), grants.clone(), changes.clone(), last_holder.clone());
            let (lock, body) = (lock.clone(), body.clone());
            // Its own client, so its own connection, as a separate process would have.
            let client = client_of(c % n)?;
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let Ok(g) = client.acquire(&lock, &body, None).await else { continue };
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    grants.fetch_add(1, Ordering::Relaxed);
                    if last_holder.swap(c as u64, Ordering::Relaxed) != c as u64 {
                        changes.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = client.release(&lock, &g.lease, RELEASE_TIMEOUT).await;
                }
                lat
            }));
        }
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut lat = Vec::new();
        for task in tasks {
            lat.extend(task.await.unwrap_or_default());
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{:<16} {:>14.0} {:>14.0} {:>10.2} {:>10.2}",
            algo.as_str(),
            grants.load(Ordering::Relaxed) as f64 / secs as f64,
            changes.load(Ordering::Relaxed) as f64 / secs as f64,
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
    Ok(())
}
