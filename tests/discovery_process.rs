//! `dmutex node` with DNS discovery, as a real process: the HTTP port answers while discovery still waits for
//! its replicas (`/healthz` 200; `/readyz`, `/v1/cluster` and the lock calls 503 saying what it waits for), and
//! the node starts once discovery settles. `localhost` stands in for the compose service name: it resolves to
//! one IPv4 address, which is this host's own.

use serde_json::Value;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port()
}

/// A node process that is killed when dropped.
struct Node {
    child: Child,
    http: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(cluster_size: usize) -> Node {
    let (peer, http) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_dmutex"))
        .arg("node")
        .env("DMUTEX_DISCOVERY", format!("dns:localhost:{peer}"))
        .env("DMUTEX_CLUSTER_SIZE", cluster_size.to_string())
        .env("DMUTEX_PEER_ADDR", format!("127.0.0.1:{peer}"))
        .env("DMUTEX_HTTP_ADDR", format!("127.0.0.1:{http}"))
        .env("DMUTEX_CLUSTER_NAME", format!("discovery-{cluster_size}"))
        .env("DMUTEX_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dmutex node");
    Node { child, http: format!("http://127.0.0.1:{http}") }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client")
}

/// Polls `GET path` until `done(status, body)` holds; returns the last answer.
fn poll(node: &Node, path: &str, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = client().get(format!("{}{path}", node.http)).send() {
            let status = r.status().as_u16();
            let body: Value = r.json().unwrap_or(Value::Null);
            if done(status, &body) {
                return (status, body);
            }
        }
        assert!(Instant::now() < deadline, "GET {path}: not as expected within {PATIENCE:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn http_answers_while_discovery_waits_for_replicas() {
    let node = start(3);
    let expected = "waiting for 3 replicas, 1 resolved: 127.0.0.1";
    let says = |body: &Value| body["reasons"][0].as_str().is_some_and(|r| r.contains(expected));
    let (status, body) = poll(&node, "/readyz", |s, b| s == 503 && says(b));
    assert_eq!(body["ready"], false, "{status} {body}");
    let health = client().get(format!("{}/healthz", node.http)).send().expect("healthz");
    assert_eq!(health.status(), 200);
    let cluster = client().get(format!("{}/v1/cluster", node.http)).send().expect("cluster");
    assert_eq!(cluster.status(), 503);
    let cluster: Value = cluster.json().expect("cluster json");
    assert!(says(&cluster), "{cluster}");
    let acquire = client()
        .post(format!("{}/v1/locks/x/acquire", node.http))
        .json(&serde_json::json!({"timeout_ms": 1000}))
        .send()
        .expect("acquire");
    assert_eq!(acquire.status(), 503);
    let error: Value = acquire.json().expect("error json");
    assert_eq!(error["error"]["code"], "unavailable", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(expected), "{error}");
}

#[test]
fn the_node_starts_when_discovery_settles() {
    let node = start(1);
    let (_, ready) = poll(&node, "/readyz", |s, _| s == 200);
    assert_eq!(ready["ready"], true, "{ready}");
    let (_, cluster) = poll(&node, "/v1/cluster", |s, _| s == 200);
    assert_eq!(cluster["node_id"], 0, "{cluster}");
    let grant = client()
        .post(format!("{}/v1/locks/x/acquire", node.http))
        .json(&serde_json::json!({"timeout_ms": 5000}))
        .send()
        .expect("acquire");
    assert_eq!(grant.status(), 200);
}
