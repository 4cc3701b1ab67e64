//! The HTTP API as a user meets it by hand, against a real `dmutex node`: a wrong method or an unknown route
//! answers in the API's JSON error shape (405 with `Allow`, 404), and `DMUTEX_ALGORITHMS` restricts the
//! algorithms (each its own namespace of locks) a request may name: another one is a 400 naming the allowed
//! ones, and a default algorithm outside the list is a configuration error (exit 2, naming the key). The node
//! serves its OpenAPI document at `/openapi.json`, byte for byte the committed docs/openapi.json. Its `/metrics`
//! times and counts every call by route pattern (never a lock name or a lease id) and carries the `process_*`
//! families with plausible values.

mod common;

use common::{Cluster, metric_sum};
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// The error body's code and message (panics unless the body is `{"error":{"code","message"}}`).
fn error_of(body: &Value) -> (String, String) {
    let code = body["error"]["code"].as_str();
    let message = body["error"]["message"].as_str();
    match (code, message) {
        (Some(c), Some(m)) => (c.to_string(), m.to_string()),
        _ => panic!("not the API's error shape: {body}"),
    }
}

#[test]
fn wrong_methods_and_unknown_routes_answer_json_errors() {
    let c = Cluster::start("httpshape", 1, &[]);
    let client = c.api().client().clone();
    for (method, path, allow) in [
        (reqwest::Method::GET, "/v1/locks/demo/acquire", "POST"),
        (reqwest::Method::GET, "/v1/locks/demo/release", "POST"),
        (reqwest::Method::GET, "/v1/leases/abc/keepalive", "POST"),
        (reqwest::Method::POST, "/v1/cluster", "GET"),
        (reqwest::Method::DELETE, "/v1/locks/demo", "GET"),
    ] {
        let r = client.request(method.clone(), format!("{}{path}", c.url(0))).send().expect("request");
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        let allowed = r.headers().get("allow").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert!(allowed.contains(allow), "{method} {path}: Allow: {allowed}");
        let body: Value = r.json().expect("a JSON body");
        let (code, message) = error_of(&body);
        assert_eq!(code, "method_not_allowed");
        assert!(message.contains(method.as_str()) && message.contains(path), "{message}");
    }
    let r = client.get(format!("{}/v1/nope", c.url(0))).send().expect("request");
    assert_eq!(r.status().as_u16(), 404);
    let (code, message) = error_of(&r.json().expect("a JSON body"));
    assert_eq!(code, "not_found");
    assert!(message.contains("/v1/nope"), "{message}");
}

#[test]
fn dmutex_algorithms_restricts_what_a_request_may_name() {
    let c = Cluster::start(
        "algorithms",
        2,
        &[("DMUTEX_ALGORITHMS", "probable-owner,lamport"), ("DMUTEX_ALGORITHM", "probable-owner")],
    );
    let api = c.api();
    let (s, b) = api.acquire(0, "job", json!({"algorithm": "ricart-agrawala", "timeout_ms": 1000}));
    assert_eq!(s, 400, "{b}");
    let (code, message) = error_of(&b);
    assert_eq!(code, "bad_request");
    assert!(message.contains("ricart-agrawala") && message.contains("lamport,probable-owner"), "{message}");
    // The allowed ones, and the default when the request names none.
    api.lock_once(1, "job", "lamport");
    api.lock_once(0, "job", "po");
    let (s, g) = api.acquire(1, "job", json!({"timeout_ms": 5000}));
    assert_eq!(s, 200, "{g}");
    assert_eq!(g["algorithm"], "probable-owner");
    assert_eq!(api.release(1, "job", g["lease"].as_str().unwrap()).0, 200);
}

#[test]
fn a_default_algorithm_outside_dmutex_algorithms_is_a_configuration_error() {
    let c = Cluster::new("algorithmsbad", 1, &[]);
    let out = c
        .command(0)
        .env("DMUTEX_ALGORITHMS", "probable-owner")
        .env("DMUTEX_ALGORITHM", "lamport")
        .output()
        .expect("run dmutex node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DMUTEX_ALGORITHMS"), "the message names the key: {stderr}");
    assert!(stderr.contains("default algorithm lamport"), "{stderr}");
}

/// `GET /openapi.json` is the committed docs/openapi.json (which the unit test in src/api/openapi.rs keeps equal
/// to the generated document), and it documents every route the node labels in its metrics.
#[test]
fn the_node_serves_the_committed_openapi_document_with_every_route() {
    let c = Cluster::start("httpopenapi", 1, &[]);
    let r = c.api().client().get(format!("{}/openapi.json", c.url(0))).send().expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(content_type.starts_with("application/json"), "{content_type}");
    let served = r.text().expect("body");
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
        .expect("docs/openapi.json");
    assert!(
        served == committed,
        "/openapi.json differs from docs/openapi.json; regenerate it with `DMUTEX_WRITE_OPENAPI=1 cargo test --lib \
         openapi`"
    );
    let doc: Value = serde_json::from_str(&served).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    for route in dmutex::api::ROUTES.iter().filter(|r| **r != "other") {
        assert!(doc["paths"].get(*route).is_some(), "{route} is not in the document");
    }
}

/// The API's own telemetry on a live node: after a few calls, `/metrics` has the request duration histogram
/// (`dmutex_http_request_duration_seconds`, label `route`) and the request counter
/// (`dmutex_http_requests_total`, labels `route`, `method`, `status`) by route pattern — never the concrete
/// lock name or lease id — and the `process_*` families with plausible values.
#[test]
fn metrics_count_and_time_calls_by_route_pattern_and_carry_the_process_families() {
    let before_start = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
    let c = Cluster::start("httpmetrics", 1, &[]);
    let api = c.api();
    let lock = "metrics-lock-name-4711";
    let mut leases = Vec::new();
    for _ in 0..3 {
        let (s, g) =
            api.acquire(0, lock, json!({"algorithm": "lamport", "timeout_ms": 5000, "ttl_ms": 30000}));
        assert_eq!(s, 200, "{g}");
        let lease = g["lease"].as_str().unwrap_or_default().to_string();
        assert_eq!(api.keepalive(0, &lease).0, 200);
        assert_eq!(api.get(0, &format!("/v1/locks/{lock}")).0, 200);
        assert_eq!(api.release(0, lock, &lease).0, 200);
        leases.push(lease);
    }
    // A release of a lease that no longer holds the lock (409), and an unknown path (404).
    assert_eq!(api.release(0, lock, &leases[0]).0, 409);
    assert_eq!(api.get(0, "/v1/nope").0, 404);
    let (status, text) = api.get_text(0, "/metrics");
    assert_eq!(status, 200);
    let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();

    // Never a concrete name, lease id or path in a label (nor anywhere in the exposition).
    assert!(!text.contains(lock), "the lock name is a label value:\n{text}");
    for lease in &leases {
        assert!(!text.contains(lease.as_str()), "a lease id is in /metrics:\n{text}");
    }
    assert!(!text.contains("/v1/nope"), "an unknown path is a label value:\n{text}");

    let duration = "dmutex_http_request_duration_seconds";
    let requests = "dmutex_http_requests_total";
    assert!(text.contains(&format!("# TYPE {duration} histogram")), "{text}");
    assert!(text.contains(&format!("# TYPE {requests} counter")), "{text}");
    for (route, n) in [
        ("/v1/locks/{name}/acquire", 3.0),
        ("/v1/leases/{lease}/keepalive", 3.0),
        ("/v1/locks/{name}", 3.0),
        ("/v1/locks/{name}/release", 4.0),
        ("other", 1.0),
    ] {
        let count = metric_sum(&text, &format!("{duration}_count"), &[("route", route)]);
        assert_eq!(count, n, "{duration}_count of {route}:\n{text}");
        let inf = metric_sum(&text, &format!("{duration}_bucket"), &[("route", route), ("le", "+Inf")]);
        assert_eq!(inf, n, "the +Inf bucket of {route} is its count:\n{text}");
        let sum = metric_sum(&text, &format!("{duration}_sum"), &[("route", route)]);
        assert!(sum > 0.0 && sum < 30.0, "{duration}_sum of {route}: {sum}");
        assert_eq!(metric_sum(&text, requests, &[("route", route)]), n, "{requests} of {route}:\n{text}");
    }
    for (route, method, status, n) in [
        ("/v1/locks/{name}/acquire", "POST", "200", 3.0),
        ("/v1/leases/{lease}/keepalive", "POST", "200", 3.0),
        ("/v1/locks/{name}", "GET", "200", 3.0),
        ("/v1/locks/{name}/release", "POST", "200", 3.0),
        ("/v1/locks/{name}/release", "POST", "409", 1.0),
        ("other", "GET", "404", 1.0),
    ] {
        let got = metric_sum(&text, requests, &[("route", route), ("method", method), ("status", status)]);
        assert_eq!(got, n, "{requests} {route} {method} {status}:\n{text}");
    }
    // Every route label value is one of the API's patterns.
    for line in text.lines().filter(|l| l.starts_with(duration) || l.starts_with(requests)) {
        let route = line.split("route=\"").nth(1).and_then(|r| r.split('"').next());
        assert!(route.is_some_and(|r| dmutex::api::ROUTES.contains(&r)), "not a route pattern: {line}");
    }

    // The process families, with plausible values.
    let rss = metric_sum(&text, "process_resident_memory_bytes", &[]);
    assert!((1e6..4e9).contains(&rss), "process_resident_memory_bytes {rss}");
    // CPU time advances in clock ticks (10 ms): a fresh node may not have used one yet, so work it until it
    // did (bounded); the counter never goes back and never exceeds what two cores could spend.
    let first_cpu = metric_sum(&text, "process_cpu_seconds_total", &[]);
    assert!(first_cpu >= 0.0, "process_cpu_seconds_total {first_cpu}");
    let mut cpu = first_cpu;
    let working = std::time::Instant::now();
    while cpu == 0.0 && working.elapsed() < std::time::Duration::from_secs(10) {
        for _ in 0..20 {
            assert_eq!(api.get_text(0, "/metrics").0, 200);
        }
        cpu = api.metric(0, "process_cpu_seconds_total", &[]);
    }
    let lived = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() - before_start;
    assert!(cpu > 0.0 && cpu >= first_cpu, "process_cpu_seconds_total {cpu} (first {first_cpu})");
    assert!(cpu <= lived * 4.0 + 1.0, "process_cpu_seconds_total {cpu} after {lived} s");
    let started = metric_sum(&text, "process_start_time_seconds", &[]);
    assert!(
        started >= before_start.floor() - 1.0 && started <= after + 1.0,
        "process_start_time_seconds {started} not between {before_start} and {after}"
    );
    for family in ["process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"]
    {
        assert!(text.contains(&format!("\n{family} ")), "{family} missing:\n{text}");
    }
}
