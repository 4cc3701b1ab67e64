//! The Grafana dashboard against a real Prometheus: a live 3-node cluster (real `dmutex node` processes on
//! 127.x addresses), the Prometheus server of the Debian package `prometheus` on 127.0.0.1 with the repository's
//! own scrape config (`observability/prometheus.yml`, its DNS discovery replaced by the three nodes), a short
//! workload that makes every kind of event the panels show (grants of every algorithm through every node, a
//! timeout, a lease expiry, probable-owner redirects, a refused peer connection), and then every PromQL
//! expression of `observability/grafana/dashboards/dmutex.json` and every `label_values` variable evaluated
//! through Prometheus's HTTP API: each must succeed and return data.
//!
//! Without `prometheus` on the PATH the test fails under `CI=true` (`.ci/run` installs it) and prints a SKIPPED
//! line elsewhere. Prometheus runs as a child of the test, in a temporary directory, on a free port; the system
//! service is never used.

mod common;
#[path = "support/tools.rs"]
mod tools;

use common::{Api, Cluster, poll};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};

const DASHBOARD: &str = include_str!("../observability/grafana/dashboards/dmutex.json");
const SCRAPE_CONFIG: &str = include_str!("../observability/prometheus.yml");
/// The test's scrape interval (the compose stack's is 5 s).
const SCRAPE_INTERVAL: &str = "1s";
/// What `$__rate_interval` stands for: Grafana uses at least four scrape intervals.
const RATE_INTERVAL: &str = "15s";

/// The repository's scrape config for `targets` (`host:port`): the same job, metrics path and relabelling,
/// with static targets instead of DNS discovery and a short scrape interval.
fn scrape_config(targets: &[String]) -> String {
    let mut docs = YamlLoader::load_from_str(SCRAPE_CONFIG).expect("prometheus.yml parses");
    let mut doc = docs.remove(0);
    let key = |k: &str| Yaml::String(k.to_string());
    let Yaml::Hash(root) = &mut doc else { panic!("prometheus.yml is not a mapping") };
    let Some(Yaml::Hash(global)) = root.get_mut(&key("global")) else { panic!("no global section") };
    for k in ["scrape_interval", "evaluation_interval"] {
        global.insert(key(k), key(SCRAPE_INTERVAL));
    }
    let Some(Yaml::Array(jobs)) = root.get_mut(&key("scrape_configs")) else { panic!("no scrape_configs") };
    assert_eq!(jobs.len(), 1, "one scrape job expected");
    let Yaml::Hash(job) = &mut jobs[0] else { panic!("the scrape job is not a mapping") };
    assert_eq!(job.get(&key("job_name")), Some(&key("dmutex")));
    assert!(job.remove(&key("dns_sd_configs")).is_some(), "the job discovers the replicas through DNS");
    assert!(job.contains_key(&key("relabel_configs")), "the relabelling is kept and tested");
    let mut static_config = yaml_rust2::yaml::Hash::new();
    static_config.insert(key("targets"), Yaml::Array(targets.iter().map(|t| key(t)).collect()));
    job.insert(key("static_configs"), Yaml::Array(vec![Yaml::Hash(static_config)]));
    let mut out = String::new();
    YamlEmitter::new(&mut out).dump(&doc).expect("emit yaml");
    out
}

/// A Prometheus server run by the test; killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::blocking::Client,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(binary: &str, config: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        // A free port: bound and released at once (Prometheus takes it a moment later).
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let http =
            reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let p = Prometheus { child, url: format!("http://127.0.0.1:{port}"), http, dir };
        let ready = poll(Duration::from_secs(30), || {
            p.http.get(format!("{}/-/ready", p.url)).send().is_ok_and(|r| r.status().is_success())
        });
        assert!(ready, "prometheus not ready within 30 s; its log:\n{}", p.log());
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// GET an API path; the JSON body (Prometheus answers errors as JSON too).
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let r = self.http.get(format!("{}{path}", self.url)).query(query).send().expect("prometheus answers");
        r.json().expect("prometheus answers JSON")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the dashboard asks Prometheus.
struct Queries {
    /// `(panel / refId, PromQL)` of every panel target.
    exprs: Vec<(String, String)>,
    /// `(metric, label)` of every `label_values(metric, label)` variable.
    labels: Vec<(String, String)>,
}

/// Every PromQL expression of the panels, and the `label_values(metric, label)` queries of the variables.
fn dashboard_queries() -> Queries {
    let d: Value = serde_json::from_str(DASHBOARD).expect("dashboard parses");
    let mut exprs = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                exprs.push((format!("{} / {}", p["title"], t["refId"]), e.to_string()));
            }
        }
    }
    let mut labels = Vec::new();
    for v in d["templating"]["list"].as_array().expect("variables") {
        let Some(q) = v["query"]["query"].as_str() else { continue };
        let inner = q.strip_prefix("label_values(").and_then(|r| r.strip_suffix(')')).expect("label_values");
        let (metric, label) = inner.split_once(',').expect("label_values(metric, label)");
        labels.push((metric.trim().to_string(), label.trim().to_string()));
    }
    Queries { exprs, labels }
}

/// The expression as Grafana sends it with "All" chosen for every variable.
fn as_grafana_sends_it(expr: &str) -> String {
    let e = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$algorithm", ".*")
        .replace("$instance", ".*");
    assert!(!e.contains('$'), "a variable this test does not know: {expr}");
    e
}

/// A short workload that makes every event the dashboard counts.
fn workload(c: &Cluster, api: &Api) {
    // Grants (and hold times, messages) of every algorithm through every node; probable-owner acquires through
    // a node that is not the owner are redirected.
    for round in 0..3 {
        for algorithm in common::ALGORITHMS {
            for i in 0..3 {
                api.lock_once((i + round) % 3, "dashboard", algorithm);
            }
        }
    }
    // A timeout: node 2 holds the lock, node 0 waits 50 ms for it.
    let (s, g) = api.acquire(2, "held", json!({"algorithm": "lamport", "ttl_ms": 60000}));
    assert_eq!(s, 200, "{g}");
    let (s, b) = api.acquire(0, "held", json!({"algorithm": "lamport", "timeout_ms": 50}));
    assert_eq!((s, &b["error"]["code"]), (409, &serde_json::json!("timeout")), "{b}");
    assert_eq!(api.release(2, "held", g["lease"].as_str().unwrap()).0, 200);
    // A lease expiry: a 200 ms lease never kept alive.
    let (s, g) = api.acquire(1, "expiring", json!({"algorithm": "ricart-agrawala", "ttl_ms": 200}));
    assert_eq!(s, 200, "{g}");
    let expired = poll(Duration::from_secs(10), || api.metric(1, "dmutex_lease_expiries_total", &[]) >= 1.0);
    assert!(expired, "the 200 ms lease did not expire");
    // A refused peer connection: HTTP on the peer port.
    let mut s = TcpStream::connect(c.peer_addr(0)).expect("peer port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let _ = s.read_to_end(&mut Vec::new());
    let refused =
        poll(Duration::from_secs(5), || api.metric(0, "dmutex_refused_connections_total", &[]) >= 1.0);
    assert!(refused, "the connection was not counted as refused");
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let Some(prometheus) = tools::require("prometheus", "prometheus", "dashboard against Prometheus") else {
        return;
    };
    let c = Cluster::start("dashprom", 3, &[]);
    let api = c.api();
    let targets: Vec<String> = (0..3).map(|i| c.url(i).trim_start_matches("http://").to_string()).collect();
    let prom = Prometheus::start(&prometheus, &scrape_config(&targets));

    // Every node is scraped through the repository's job.
    let up = poll(Duration::from_secs(30), || {
        let t = prom.api("/api/v1/targets", &[]);
        let active = t["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
        active.len() == 3 && active.iter().all(|t| t["health"] == "up" && t["labels"]["job"] == "dmutex")
    });
    assert!(up, "targets not up: {}\n{}", prom.api("/api/v1/targets", &[]), prom.log());

    workload(&c, &api);
    // Let every node be scraped at least twice after the workload, so the rates have two samples of it.
    let scraped = Instant::now();
    std::thread::sleep(Duration::from_secs(3));

    let Queries { exprs, labels } = dashboard_queries();
    assert!(exprs.len() >= 20, "the panels' expressions: {exprs:?}");
    let mut failures = Vec::new();
    for (panel, expr) in &exprs {
        let query = as_grafana_sends_it(expr);
        let r = prom.api("/api/v1/query", &[("query", &query)]);
        let results = r["data"]["result"].as_array().map_or(0, Vec::len);
        if r["status"] != "success" || results == 0 {
            failures.push(format!("{panel}: {query}\n    -> {r}"));
        }
    }
    for (metric, label) in &labels {
        let r = prom.api(&format!("/api/v1/label/{label}/values"), &[("match[]", metric)]);
        let values: Vec<String> = r["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if r["status"] != "success" || values.is_empty() {
            failures.push(format!("variable label_values({metric}, {label}) -> {r}"));
        }
        // The relabelling keeps each node's ip:port as its instance.
        if label == "instance" {
            let mut want = targets.clone();
            want.sort();
            assert_eq!(values, want, "instance labels");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries returned no data or an error ({:.1} s after the workload):\n{}",
        failures.len(),
        exprs.len() + labels.len(),
        scraped.elapsed().as_secs_f64(),
        failures.join("\n")
    );
}
