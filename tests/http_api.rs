//! The HTTP API as a user meets it by hand, against a real `dmutex node`: a wrong method or an unknown route
//! answers in the API's JSON error shape (405 with `Allow`, 404), and `DMUTEX_ALGORITHMS` restricts the
//! algorithms (each its own namespace of locks) a request may name: another one is a 400 naming the allowed
//! ones, and a default algorithm outside the list is a configuration error (exit 2, naming the key). The node
//! serves its OpenAPI document at `/openapi.json`, byte for byte the committed docs/openapi.json.

mod common;

use common::Cluster;
use serde_json::{Value, json};

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
