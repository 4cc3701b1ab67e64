//! Black-box tests of `dmutex lock` and `dmutex health`: the built binary against a fake node (axum on
//! 127.0.0.1, port 0) that implements the lock API and records every call.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[derive(Clone, Copy, Default)]
enum AcquireMode {
    #[default]
    Grant,
    Timeout,
    Unavailable,
    Locked,
}

#[derive(Clone, Copy, Default)]
enum KeepaliveMode {
    #[default]
    Ok,
    /// 409 `lease_not_found`: the lease expired.
    Expired,
    /// 500: the node is in trouble, the lease may still be fine.
    Failing,
}

#[derive(Default)]
struct Fake {
    acquire_mode: AcquireMode,
    keepalive_mode: KeepaliveMode,
    acquires: Vec<(String, Value)>,
    keepalives: Vec<String>,
    releases: Vec<(String, Value)>,
}

type Shared = Arc<Mutex<Fake>>;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn acquire(State(s): State<Shared>, Path(name): Path<String>, Json(body): Json<Value>) -> Response {
    let mode = {
        let mut f = s.lock().unwrap();
        f.acquires.push((name.clone(), body));
        f.acquire_mode
    };
    match mode {
        AcquireMode::Grant => Json(json!({
            "name": name, "lease": 42, "fencing_token": 1234, "algorithm": "lamport", "node_id": 0, "waited_ms": 1
        }))
        .into_response(),
        AcquireMode::Timeout => error(StatusCode::CONFLICT, "timeout", "lock not granted within 10ms"),
        AcquireMode::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "peer 2 is unreachable"),
        AcquireMode::Locked => (
            StatusCode::CONFLICT,
            Json(json!({"error": {"code": "locked", "message": "job is held by node 1", "holder": 1}})),
        )
            .into_response(),
    }
}

async fn keepalive(State(s): State<Shared>, Path(lease): Path<String>) -> Response {
    let mode = {
        let mut f = s.lock().unwrap();
        f.keepalives.push(lease);
        f.keepalive_mode
    };
    match mode {
        KeepaliveMode::Ok => Json(json!({"ttl_ms": 300})).into_response(),
        KeepaliveMode::Expired => error(StatusCode::CONFLICT, "lease_not_found", "lease 42 has expired"),
        KeepaliveMode::Failing => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "node is busy"),
    }
}

async fn release(State(s): State<Shared>, Path(name): Path<String>, Json(body): Json<Value>) -> Response {
    s.lock().unwrap().releases.push((name, body));
    Json(json!({"released": true})).into_response()
}

/// Starts the fake node; returns its endpoint and state.
async fn fake_node(acquire_mode: AcquireMode, keepalive_mode: KeepaliveMode) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Fake { acquire_mode, keepalive_mode, ..Default::default() }));
    let app = Router::new()
        .route("/v1/locks/{name}/acquire", post(acquire))
        .route("/v1/locks/{name}/release", post(release))
        .route("/v1/leases/{lease}/keepalive", post(keepalive))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "joining") }))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

fn dmutex(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dmutex"));
    cmd.args(args).env_remove("DMUTEX_ENDPOINT").kill_on_drop(true);
    cmd
}

async fn run(args: &[&str]) -> Run {
    let start = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(15), dmutex(args).output())
        .await
        .expect("dmutex did not finish within 15 s")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_passes_through_and_the_lock_is_released() {
    let (ep, s) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    let r = run(&[
        "lock",
        "--endpoint",
        &ep,
        "--timeout",
        "2s",
        "--ttl",
        "3s",
        "job",
        "--",
        "sh",
        "-c",
        "exit 7",
    ])
    .await;
    assert_eq!(r.code, Some(7), "{}", r.stderr);
    let f = s.lock().unwrap();
    assert_eq!(f.acquires, [("job".to_string(), json!({"timeout_ms": 2000, "ttl_ms": 3000}))]);
    assert_eq!(f.releases, [("job".to_string(), json!({"lease": 42}))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_sees_lock_name_token_and_lease() {
    let (ep, s) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    let script = "echo \"$DMUTEX_LOCK|$DMUTEX_FENCING_TOKEN|$DMUTEX_LEASE\"";
    let r = run(&["lock", "--endpoint", &ep, "--algorithm", "ra", "a/b c", "--", "sh", "-c", script]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(r.stdout.trim(), "a/b c|1234|42");
    let f = s.lock().unwrap();
    // The name survives the URL path (percent-encoded) and the algorithm is sent by its API name.
    assert_eq!(f.acquires, [("a/b c".to_string(), json!({"algorithm": "ricart-agrawala"}))]);
    assert_eq!(f.releases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_are_sent_every_third_of_the_ttl() {
    let (ep, s) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    let r = run(&["lock", "--endpoint", &ep, "--ttl", "300ms", "job", "--", "sleep", "1"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let f = s.lock().unwrap();
    // One per 100 ms over ~1 s; generous bounds for a loaded machine.
    assert!((4..=15).contains(&f.keepalives.len()), "{} keepalives", f.keepalives.len());
    assert!(f.keepalives.iter().all(|l| l == "42"));
    assert_eq!(f.releases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_ttl_the_first_keepalive_is_sent_at_once() {
    let (ep, s) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    // The node's keepalive answer says 300 ms, so ~0.6 s of command gives several keepalives, not zero (as the
    // assumed 15 s TTL would).
    let r = run(&["lock", "--endpoint", &ep, "job", "--", "sleep", "0.6"]).await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let n = s.lock().unwrap().keepalives.len();
    assert!(n >= 3, "{n} keepalives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_terminates_the_command_quickly() {
    let (ep, s) = fake_node(AcquireMode::Grant, KeepaliveMode::Expired).await;
    let r = run(&["lock", "--endpoint", &ep, "--ttl", "300ms", "job", "--", "sleep", "30"]).await;
    assert_eq!(r.code, Some(75), "{}", r.stderr);
    assert!(r.elapsed < Duration::from_secs(5), "took {:?}", r.elapsed);
    assert!(r.stderr.contains("LOST the lease"), "{}", r.stderr);
    let f = s.lock().unwrap();
    assert_eq!(f.keepalives.len(), 1, "no keepalive after the node said the lease expired");
    assert_eq!(f.releases.len(), 1, "best-effort release after the loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_keepalives_lose_the_lease_after_one_ttl_and_sigkill_follows_the_grace() {
    let (ep, s) = fake_node(AcquireMode::Grant, KeepaliveMode::Failing).await;
    // The command ignores SIGTERM, so only the SIGKILL after --grace ends it.
    let script = "trap '' TERM; while true; do sleep 0.1; done";
    let args =
        ["lock", "--endpoint", &ep, "--ttl", "400ms", "--grace", "300ms", "job", "--", "sh", "-c", script];
    let r = run(&args).await;
    assert_eq!(r.code, Some(75), "{}", r.stderr);
    assert!(r.elapsed >= Duration::from_millis(700), "lost before TTL + grace: {:?}", r.elapsed);
    assert!(r.elapsed < Duration::from_secs(5), "took {:?}", r.elapsed);
    assert!(r.stderr.contains("no keepalive succeeded"), "{}", r.stderr);
    assert!(r.stderr.contains("SIGKILL"), "{}", r.stderr);
    assert!(s.lock().unwrap().keepalives.len() >= 2, "keepalives were retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_forwarded_and_the_lock_released() {
    let (ep, s) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    let script = "trap 'exit 42' TERM; echo ready; while true; do sleep 0.1; done";
    let mut child = dmutex(&["lock", "--endpoint", &ep, "job", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap();
    assert_eq!(first.as_deref(), Some("ready"));
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(42));
    assert_eq!(s.lock().unwrap().releases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_failures_have_their_own_exit_codes() {
    let (ep, s) = fake_node(AcquireMode::Timeout, KeepaliveMode::Ok).await;
    let r = run(&["lock", "--endpoint", &ep, "--timeout", "10ms", "job", "--", "true"]).await;
    assert_eq!(r.code, Some(3), "{}", r.stderr);
    assert!(r.stderr.contains("lock not granted within 10ms"), "{}", r.stderr);
    assert!(s.lock().unwrap().releases.is_empty());

    let (ep, _) = fake_node(AcquireMode::Unavailable, KeepaliveMode::Ok).await;
    let r = run(&["lock", "--endpoint", &ep, "job", "--", "true"]).await;
    assert_eq!(r.code, Some(69), "{}", r.stderr);
    assert!(r.stderr.contains("peer 2 is unreachable"), "{}", r.stderr);

    // Nothing listens on port 1.
    let r = run(&["lock", "--endpoint", "http://127.0.0.1:1", "job", "--", "true"]).await;
    assert_eq!(r.code, Some(69), "{}", r.stderr);

    let (ep, s) = fake_node(AcquireMode::Locked, KeepaliveMode::Ok).await;
    let r = run(&["lock", "--endpoints", &ep, "--try", "job", "--", "true"]).await;
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(r.stderr.contains("held by node 1"), "{}", r.stderr);
    assert_eq!(s.lock().unwrap().acquires, [("job".to_string(), json!({"wait": false}))]);

    // An invalid endpoint is a refused request, not an unavailable cluster.
    let r = run(&["lock", "--endpoints", "ftp://x", "job", "--", "true"]).await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_fail_over_to_one_that_serves_and_forever_is_sent_as_such() {
    let (busy, b) = fake_node(AcquireMode::Unavailable, KeepaliveMode::Ok).await;
    let (ep, s) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    let endpoints = format!("http://127.0.0.1:1,{busy}");
    let r = run(&[
        "lock",
        "--endpoints",
        &endpoints,
        "--endpoints",
        &ep,
        "--timeout",
        "forever",
        "--ttl",
        "300ms",
        "job",
        "--",
        "sleep",
        "0.5",
    ])
    .await;
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(b.lock().unwrap().acquires.len(), 1, "the 503 endpoint was asked once");
    let f = s.lock().unwrap();
    assert_eq!(f.acquires, [("job".to_string(), json!({"timeout_ms": "forever", "ttl_ms": 300}))]);
    assert!(f.keepalives.len() >= 2, "{} keepalives", f.keepalives.len());
    assert_eq!(f.releases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_exits_127_and_releases() {
    let (ep, s) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    let r = run(&["lock", "--endpoint", &ep, "job", "--", "/nonexistent/dmutex-test-cmd"]).await;
    assert_eq!(r.code, Some(127), "{}", r.stderr);
    assert_eq!(s.lock().unwrap().releases.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_killed_by_a_signal_exits_128_plus_n() {
    let (ep, _) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    let r = run(&["lock", "--endpoint", &ep, "job", "--", "sh", "-c", "kill -KILL $$"]).await;
    assert_eq!(r.code, Some(128 + 9), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_healthz_or_readyz() {
    let (ep, _) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    assert_eq!(run(&["health", "--endpoint", &ep]).await.code, Some(0));
    let r = run(&["health", "--endpoint", &ep, "--ready"]).await;
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("503"), "{}", r.stderr);
    assert_eq!(run(&["health", "--endpoint", "http://127.0.0.1:1"]).await.code, Some(1));
}

/// A container's HEALTHCHECK runs `dmutex health` in the node's own environment: with neither `--endpoint`
/// nor `DMUTEX_ENDPOINT`, it probes the port of `DMUTEX_HTTP_ADDR` (0.0.0.0 reached as 127.0.0.1), so moving
/// the node's port moves the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_defaults_to_the_nodes_listen_address() {
    let (ep, _) = fake_node(AcquireMode::Grant, KeepaliveMode::Ok).await;
    let port = ep.rsplit(':').next().unwrap().to_string();
    let health = |vars: &[(&str, String)]| {
        let mut cmd = dmutex(&["health", "--timeout", "2s"]);
        cmd.env_remove("DMUTEX_HTTP_ADDR");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        async move { cmd.output().await.unwrap() }
    };
    let out = health(&[("DMUTEX_HTTP_ADDR", format!("0.0.0.0:{port}"))]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = health(&[("DMUTEX_HTTP_ADDR", format!("127.0.0.1:{port}"))]).await;
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // DMUTEX_ENDPOINT wins over the listen address.
    let out = health(&[
        ("DMUTEX_HTTP_ADDR", format!("0.0.0.0:{port}")),
        ("DMUTEX_ENDPOINT", "http://127.0.0.1:1".into()),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    // A listen address that is not ip:port is named.
    let out = health(&[("DMUTEX_HTTP_ADDR", "node:8080".into())]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DMUTEX_HTTP_ADDR"));
}
