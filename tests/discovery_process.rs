//! `dmutex node` with DNS discovery, as a real process: the HTTP port answers while discovery still waits for
//! its replicas (`/healthz` 200; `/readyz`, `/v1/cluster` and the lock calls 503 saying what it waits for), and
//! the node starts once discovery settles. `localhost` stands in for the compose service name: it resolves to
//! one IPv4 address, which is this host's own. With traces exported, the spans' resource carries the node id
//! discovery gave (`dmutex.node_id`) as well as `host.name`.

#[path = "support/otlp.rs"]
mod otlp;

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
    start_with(cluster_size, &[])
}

/// [`start`] with extra environment.
fn start_with(cluster_size: usize, env: &[(&str, &str)]) -> Node {
    let (peer, http) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_dmutex"))
        .arg("node")
        .envs(env.iter().copied())
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

/// DNS discovery gives the node id only after start (the trace pipeline is already up): the spans still carry
/// it on their resource (`dmutex.node_id`), next to `host.name`.
#[test]
fn spans_carry_the_node_id_discovery_gave() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let rx = rt.block_on(otlp::OtlpReceiver::start()).expect("receiver");
    let endpoint = rx.http_endpoint();
    let node =
        start_with(1, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")]);
    poll(&node, "/readyz", |s, _| s == 200);
    let grant = client()
        .post(format!("{}/v1/locks/traced/acquire", node.http))
        .json(&serde_json::json!({"timeout_ms": 5000}))
        .send()
        .expect("acquire");
    assert_eq!(grant.status(), 200);
    let acquired = |s: &[otlp::CollectedSpan]| s.iter().any(|s| s.name == "lock.acquire");
    let spans = match rt.block_on(rx.wait_for(acquired, PATIENCE)) {
        Ok(s) => s,
        Err(s) => panic!("no lock.acquire span: {s:#?}"),
    };
    let after: Vec<&otlp::CollectedSpan> = spans
        .iter()
        .filter(|s| {
            s.name == "lock.acquire" || s.name == "membership.view_change" || s.name.starts_with("POST")
        })
        .collect();
    assert!(after.len() >= 3, "{after:#?}");
    for s in after {
        assert_eq!(s.instance(), Some("0"), "dmutex.node_id of {}: {:?}", s.name, s.resource);
        assert!(s.resource.get("host.name").is_some_and(|h| !h.is_empty()), "{:?}", s.resource);
        assert_eq!(s.resource.get("service.instance.id").map(String::len), Some(36), "{:?}", s.resource);
    }
}
