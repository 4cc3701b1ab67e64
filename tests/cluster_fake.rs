//! `dmutex cluster` end to end against fake node processes.
//!
//! The real node runtime is not needed to check the orchestration (spawning N processes on distinct loopback
//! addresses, readiness, progress polling, stats, stopping, the verdict): this test binary doubles as a fake
//! `dmutex node`. A wrapper script runs `<this test binary> --exact fake_node_main`, and `fake_node_main`,
//! seeing `DMUTEX_NODE_ID`, serves the node's HTTP shapes (`/readyz`, `/v1/workload`, `/v1/stats`) and runs the
//! real workload over a lock service that is a lock file created exclusively beside the counter (or, in
//! `unlocked` mode, no lock at all, which the verdict must catch). Without `DMUTEX_NODE_ID` it does nothing.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use dmutex::algo::Algorithm;
use dmutex::api::types::{Grant, LeaseId};
use dmutex::experiment::runner::{ClusterArgs, StartMode, run_cluster};
use dmutex::experiment::workload::{
    LockService, WorkloadConfig, WorkloadReport, WorkloadStatus, run_workload,
};
use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A cross-process lock: whoever creates `<dir>/lock` holds it; tokens counted in `<dir>/token` under the lock.
#[derive(Clone)]
struct FileLock {
    dir: PathBuf,
    node: u16,
    nodes: u64,
    unlocked: bool,
    held: Arc<Mutex<BTreeSet<LeaseId>>>,
    local_tokens: Arc<AtomicU64>,
}

fn next_token(path: &std::path::Path) -> std::io::Result<u64> {
    let mut f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    let mut s = String::new();
    f.read_to_string(&mut s)?;
    let next = s.trim().parse::<u64>().unwrap_or(0) + 1;
    f.set_len(0)?;
    f.rewind()?;
    f.write_all(next.to_string().as_bytes())?;
    Ok(next)
}

impl FileLock {
    fn grant(&self, lock: &str, lease: LeaseId, token: u64, algorithm: Algorithm) -> Grant {
        Grant {
            name: lock.to_string(),
            lease,
            fencing_token: token,
            algorithm: Some(algorithm),
            node_id: Some(self.node),
            waited_ms: Some(0),
            ttl_ms: None,
        }
    }
}

impl LockService for FileLock {
    async fn acquire(&self, lock: &str, algorithm: Algorithm, _timeout: Duration) -> Result<Grant, String> {
        if self.unlocked {
            let token = self.local_tokens.fetch_add(1, Ordering::SeqCst) + 1;
            return Ok(self.grant(lock, token.to_string().into(), token, algorithm));
        }
        // Whoever creates the lock file holds the lock; the others retry.
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(self.dir.join("lock")) {
                Ok(_) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    tokio::time::sleep(Duration::from_millis(1)).await
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let token = next_token(&self.dir.join("token")).map_err(|e| e.to_string())?;
        let lease = LeaseId::from(token.to_string());
        self.held.lock().map_err(|e| e.to_string())?.insert(lease.clone());
        Ok(self.grant(lock, lease, token, algorithm))
    }

    async fn release(&self, _lock: &str, lease: &LeaseId) -> Result<(), String> {
        if self.unlocked {
            return Ok(());
        }
        if !self.held.lock().map_err(|e| e.to_string())?.remove(lease) {
            return Err(format!("unknown lease {lease}"));
        }
        std::fs::remove_file(self.dir.join("lock")).map_err(|e| e.to_string())
    }

    /// Ready once every node has started (left its marker), like a real node that has heard every peer: the
    /// workloads then start together, so the unlocked mode overlaps for sure.
    async fn ready(&self) -> bool {
        (0..self.nodes).all(|i| self.dir.join(format!("started-{i}")).exists())
    }

    fn lamport_clock(&self) -> u64 {
        0
    }
}

#[derive(Clone)]
struct FakeNode {
    node: u16,
    peers: u64,
    status: watch::Receiver<WorkloadStatus>,
    report: Arc<Mutex<Option<WorkloadReport>>>,
}

async fn workload(State(s): State<FakeNode>) -> Json<serde_json::Value> {
    let status = *s.status.borrow();
    let report = s.report.lock().map(|r| r.clone()).unwrap_or(None);
    Json(serde_json::json!({"status": status, "report": report}))
}

async fn stats(State(s): State<FakeNode>) -> Json<serde_json::Value> {
    // Pretend to be Lamport: 3 messages to each other node per entry.
    let per_kind = u64::from(s.status.borrow().done) * (s.peers - 1);
    let kinds = serde_json::json!({"REQUEST": per_kind, "REPLY": per_kind, "RELEASE": per_kind});
    Json(serde_json::json!({
        "node_id": s.node, "incarnation": 1,
        "messages_sent": {"lamport": kinds}, "messages_received": {"lamport": kinds},
        "messages_sent_total": 3 * per_kind, "grants": {"lamport": s.status.borrow().done}, "lamport_clock": 0
    }))
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

/// The fake node's entry point (a no-op unless started by `dmutex cluster`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_node_main() {
    if std::env::var_os("DMUTEX_NODE_ID").is_none() {
        return;
    }
    let node: u16 = env("DMUTEX_NODE_ID").parse().unwrap();
    let peers = env("DMUTEX_PEERS").split(',').count() as u64;
    let counter_file = PathBuf::from(env("DMUTEX_WORKLOAD_COUNTER_FILE"));
    let cfg = WorkloadConfig {
        iterations: env("DMUTEX_WORKLOAD_ITERATIONS").parse().unwrap(),
        cs_ms: env("DMUTEX_WORKLOAD_CS_MS").parse().unwrap(),
        lock: env("DMUTEX_WORKLOAD_LOCK"),
        counter_file: counter_file.clone(),
        algorithm: env("DMUTEX_WORKLOAD_ALGORITHM").parse().unwrap(),
        acquire_timeout: Duration::from_secs(10),
        start_file: std::env::var_os("DMUTEX_WORKLOAD_START_FILE").map(PathBuf::from),
    };
    let svc = FileLock {
        dir: counter_file.parent().unwrap().to_path_buf(),
        node,
        nodes: peers,
        unlocked: std::env::var("FAKE_NODE_MODE").is_ok_and(|m| m == "unlocked"),
        held: Arc::default(),
        local_tokens: Arc::default(),
    };
    std::fs::write(svc.dir.join(format!("started-{node}")), "").unwrap();
    let (tx, rx) = watch::channel(WorkloadStatus::waiting(cfg.iterations));
    let state = FakeNode { node, peers, status: rx, report: Arc::default() };
    let report = state.report.clone();
    let app = Router::new()
        .route("/readyz", get(|| async { StatusCode::OK }))
        .route("/v1/workload", get(workload))
        .route("/v1/stats", get(stats))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(env("DMUTEX_HTTP_ADDR")).await.unwrap();
    tokio::spawn(async move {
        let r = run_workload(svc, node, cfg, tx).await;
        *report.lock().unwrap() = Some(r);
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        r = axum::serve(listener, app) => r.unwrap(),
        _ = term.recv() => {}
    }
}

/// A wrapper script that starts this test binary as a fake node (ignoring the `node` argument).
fn fake_binary(dir: &std::path::Path, mode: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().unwrap();
    let script = dir.join(format!("fake-dmutex-{mode}"));
    let text = format!(
        "#!/bin/sh\nFAKE_NODE_MODE={mode} exec '{}' --exact fake_node_main --nocapture --test-threads=1\n",
        exe.display()
    );
    std::fs::write(&script, text).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn args(bin: PathBuf, out: PathBuf, http_port: u16) -> ClusterArgs {
    ClusterArgs {
        nodes: 3,
        iterations: 5,
        cs_ms: 3,
        algorithms: vec![Algorithm::Lamport],
        subnet: "127.0.0".into(),
        peer_port: http_port + 1,
        http_port,
        out: Some(out),
        keep: false,
        binary: Some(bin),
        sweep: vec![],
        lamport_ack_elision: false,
        peer_tls: false,
        start: StartMode::Together,
        token: None,
    }
}

/// Ports unlikely to collide with other test runs on the machine.
fn base_port() -> u16 {
    20_000 + (std::process::id() % 20_000) as u16 / 8 * 8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_exclusive_fake_nodes_passes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ok = run_cluster(&args(fake_binary(dir.path(), "locked"), out.clone(), base_port())).await.unwrap();
    assert!(ok);
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["ok"], true);
    let e = &results["experiments"][0];
    assert_eq!(e["shared_counter"], 15);
    assert_eq!(e["entries"].as_array().unwrap().len(), 15);
    assert_eq!(e["message_count"]["0"], 30);
    assert_eq!(e["total_messages"], 90);
    assert_eq!(e["verdict"]["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_exclusion_fails_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut a = args(fake_binary(dir.path(), "unlocked"), out.clone(), base_port() + 2);
    a.cs_ms = 20;
    let ok = run_cluster(&a).await.unwrap();
    assert!(!ok);
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let v = &results["experiments"][0]["verdict"];
    assert_eq!(v["ok"], false);
    assert!(!v["overlaps"].as_array().unwrap().is_empty());
    assert!(v["shared_counter"].as_u64().unwrap() < 15);
    // The failed run's logs are kept and named.
    let logs = results["experiments"][0]["log_dir"].as_str().unwrap();
    assert!(std::path::Path::new(logs).join("node-0.log").exists());
    std::fs::remove_dir_all(std::path::Path::new(logs).parent().unwrap()).unwrap();
}

#[tokio::test]
async fn a_node_that_never_starts_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("not-dmutex");
    std::fs::write(&bin, "#!/bin/sh\necho 'cannot bind: address in use' >&2\nexit 3\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut a = args(bin, dir.path().join("out"), base_port() + 4);
    a.nodes = 2;
    let err = run_cluster(&a).await.unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("node 0 exited early"), "{text}");
    assert!(text.contains("cannot bind: address in use"), "{text}");
    assert!(text.contains("node-0.log"), "{text}");
    // The failed run's directory is kept and named: remove it.
    let dir = text.split("logs in ").nth(1).and_then(|t| t.split(": ").next()).unwrap();
    std::fs::remove_dir_all(std::path::Path::new(dir).parent().unwrap()).unwrap();
}
