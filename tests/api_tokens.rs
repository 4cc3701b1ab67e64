//! API bearer tokens against real `dmutex node` processes (`DMUTEX_API_TOKENS_FILE`): no token → 401 with
//! `WWW-Authenticate: Bearer`, a token without the route's scope → 403 naming it, the right scope → 200, for
//! each scope; the probes stay open; `/metrics` is open unless `DMUTEX_METRICS_AUTH=read`; a tokens file
//! rotated on disk is used without a restart; a malformed file is a configuration error (exit 2, naming the key
//! and the line, never the token). And the clients: `dmutex lock` and `dmutex flow` send `DMUTEX_TOKEN` (or
//! `--token-file`), and `dmutex health` probes an HTTPS node on 127.0.0.1 by pinning `DMUTEX_TLS_CERT`.

mod common;

use common::{Cluster, HTTP_PORT, metric_sum, poll};
use dmutex::api::https::{HttpsConfig, TlsListener};
use dmutex::config::ApiTls;
use dmutex::net::peer_tls::ThrowawayCa;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LOCKER: &str = "locker-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";
const EVERYTHING: &str = "all-scopes-token-0123456789abcdef";

/// Writes `text` to `path` the way Kubernetes updates a Secret: a new file renamed over the old one.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A cluster of `n` nodes with a tokens file (in its log directory) holding `tokens`, plus `env`.
fn cluster_with_tokens(test: &str, n: usize, tokens: &str, env: &[(&str, &str)]) -> (Cluster, PathBuf) {
    let mut c = Cluster::new(test, n, env);
    let file = c.dir.join("tokens");
    write_atomically(&file, tokens);
    c.env.push(("DMUTEX_API_TOKENS_FILE".into(), file.display().to_string()));
    c.env.push(("DMUTEX_WORKLOAD_COUNTER_FILE".into(), c.dir.join("counter").display().to_string()));
    c.spawn_all();
    (c, file)
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// One request: (status, `WWW-Authenticate`, JSON body or `Null`).
fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, String, Value) {
    let mut req = match method {
        "GET" => client().get(url),
        _ => client().post(url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let challenge =
        r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let text = r.text().unwrap_or_default();
    (status, challenge, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or("")
}

#[test]
fn each_scope_opens_its_routes_only_and_probes_and_metrics_stay_open() {
    let tokens = format!(
        "# test tokens\n{LOCKER} lock\n{READER} read\n\n{ADMIN} admin   # the workload\n{EVERYTHING} lock,read,admin\n"
    );
    let (c, _) = cluster_with_tokens(
        "tokscopes",
        2,
        &tokens,
        // A built-in workload, so that /v1/workload (the caller's extra route) answers 200 to admin.
        &[("DMUTEX_WORKLOAD_ITERATIONS", "1"), ("DMUTEX_WORKLOAD_LOCK", "workload")],
    );
    let (u0, u1) = (c.url(0), c.url(1));

    // Probes and (by default) metrics need nothing.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (s, _, _) = call("GET", &format!("{u0}{path}"), None, None);
        assert_eq!(s, 200, "{path}");
    }

    // No token, an unknown token: 401 with the bearer challenge and the usual error body.
    let acquire0 = format!("{u0}/v1/locks/db/acquire");
    let (s, challenge, b) = call("POST", &acquire0, None, Some(json!({"timeout_ms": 5000})));
    assert_eq!((s, code(&b)), (401, "unauthorized"), "{b}");
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(message(&b).contains("bearer token"), "{b}");
    let (s, challenge, b) = call("GET", &format!("{u0}/v1/cluster"), Some("nobody-0123456789abcdef"), None);
    assert_eq!((s, code(&b)), (401, "unauthorized"), "{b}");
    assert!(challenge.contains("invalid_token"), "{challenge}");
    for (method, path) in [("GET", "/v1/workload"), ("GET", "/openapi.json"), ("GET", "/v1/nope")] {
        let (s, _, b) = call(method, &format!("{u0}{path}"), None, None);
        assert_eq!(s, 401, "{path}: {b}");
    }

    // A valid token without the scope: 403 naming it.
    let (s, challenge, b) = call("POST", &acquire0, Some(READER), Some(json!({"timeout_ms": 5000})));
    assert_eq!((s, code(&b)), (403, "forbidden"), "{b}");
    assert!(
        message(&b).contains("lock scope") && challenge.contains("insufficient_scope"),
        "{b} {challenge}"
    );
    let (s, _, b) = call("GET", &format!("{u0}/v1/cluster"), Some(LOCKER), None);
    assert_eq!((s, code(&b)), (403, "forbidden"), "{b}");
    assert!(message(&b).contains("read scope"), "{b}");
    let (s, _, b) = call("GET", &format!("{u0}/v1/workload"), Some(READER), None);
    assert_eq!((s, code(&b)), (403, "forbidden"), "{b}");
    assert!(message(&b).contains("admin scope"), "{b}");
    let (s, _, b) = call("GET", &format!("{u0}/v1/stats"), Some(ADMIN), None);
    assert_eq!(s, 403, "admin does not imply read: {b}");

    // lock: acquire on node 0, keepalive and release through node 1 (forwarded on the peer links, no token
    // needed between the nodes).
    let (s, _, g) =
        call("POST", &acquire0, Some(LOCKER), Some(json!({"timeout_ms": 10000, "ttl_ms": 30000})));
    assert_eq!(s, 200, "{g}");
    let lease = g["lease"].as_str().unwrap().to_string();
    let (s, _, b) = call("POST", &format!("{u1}/v1/leases/{lease}/keepalive"), Some(LOCKER), None);
    assert_eq!(s, 200, "{b}");
    let (s, _, b) = call("POST", &format!("{u1}/v1/locks/db/keepalive"), None, None);
    assert_eq!(s, 401, "no route: still no answer without a token: {b}");

    // read: every read route, also the cluster-wide lock query that asks every member.
    for path in [
        "/v1/locks",
        "/v1/locks/db",
        "/v1/locks/db?scope=local",
        "/v1/cluster",
        "/v1/stats",
        "/v1/flow?lock=db",
        "/openapi.json",
    ] {
        let (s, _, b) = call("GET", &format!("{u1}{path}"), Some(READER), None);
        assert_eq!(s, 200, "{path}: {b}");
    }
    let (_, _, state) = call("GET", &format!("{u1}/v1/locks/db"), Some(READER), None);
    assert_eq!(state["algorithms"]["lamport"]["holder"]["node_id"], 0, "{state}");
    let (s, _, b) =
        call("POST", &format!("{u1}/v1/locks/db/release"), Some(LOCKER), Some(json!({"lease": lease})));
    assert_eq!(s, 200, "{b}");

    // admin: the workload's endpoint (mounted beside the API's router, checked all the same).
    let (s, _, b) = call("GET", &format!("{u0}/v1/workload"), Some(ADMIN), None);
    assert_eq!(s, 200, "{b}");
    assert!(b["status"].is_object(), "{b}");
    // Any valid token reaches the usual 404 of an unknown path.
    let (s, _, b) = call("GET", &format!("{u0}/v1/nope"), Some(LOCKER), None);
    assert_eq!((s, code(&b)), (404, "not_found"), "{b}");
    let (s, _, _) = call("GET", &format!("{u0}/v1/stats"), Some(EVERYTHING), None);
    assert_eq!(s, 200);

    // Refusals by the API's router are counted like any answer (acquire, cluster, openapi.json and the unknown
    // path: 401; acquire, cluster, stats: 403; the workload's route is not observed); no token appears in the
    // metrics or the logs.
    let text = client().get(format!("{u0}/metrics")).send().unwrap().text().unwrap();
    // (By hand: `metric_sum` cuts the labels at the `}` of a route such as `/v1/locks/{name}/acquire`.)
    let refused = |status: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("dmutex_http_requests_total{") && l.contains(&format!("status=\"{status}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(refused("401"), 4.0, "{text}");
    assert_eq!(refused("403"), 3.0, "{text}");
    for secret in [LOCKER, READER, ADMIN, EVERYTHING, "nobody-0123456789abcdef"] {
        assert!(!text.contains(secret));
        for i in 0..2 {
            assert!(!c.log(i).contains(secret), "node {i} logged a token:\n{}", c.log(i));
        }
    }
}

#[test]
fn metrics_need_the_read_scope_when_configured() {
    let (c, _) = cluster_with_tokens(
        "tokmetrics",
        1,
        &format!("{LOCKER} lock\n{READER} read\n"),
        &[("DMUTEX_METRICS_AUTH", "read")],
    );
    let metrics = format!("{}/metrics", c.url(0));
    let (s, challenge, b) = call("GET", &metrics, None, None);
    assert_eq!((s, code(&b)), (401, "unauthorized"), "{b}");
    assert!(challenge.starts_with("Bearer"));
    assert_eq!(call("GET", &metrics, Some(LOCKER), None).0, 403);
    let r = client().get(&metrics).bearer_auth(READER).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.text().unwrap().contains("dmutex_build_info"));
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(call("GET", &format!("{}{probe}", c.url(0)), None, None).0, 200, "{probe}");
    }
}

#[test]
fn a_tokens_file_rotated_on_disk_is_used_without_a_restart() {
    const OLD: &str = "old-token-0123456789abcdef";
    const NEW: &str = "new-token-0123456789abcdef";
    let (c, file) = cluster_with_tokens(
        "tokrotate",
        1,
        &format!("{OLD} read\n"),
        &[("DMUTEX_CREDENTIALS_RELOAD_MS", "200")],
    );
    let stats = format!("{}/v1/stats", c.url(0));
    assert_eq!(call("GET", &stats, Some(OLD), None).0, 200);
    assert_eq!(call("GET", &stats, Some(NEW), None).0, 401);
    let pid = c.pid(0);

    write_atomically(&file, &format!("# rotated\n{NEW} read\n"));
    let swapped = poll(Duration::from_secs(10), || {
        call("GET", &stats, Some(NEW), None).0 == 200 && call("GET", &stats, Some(OLD), None).0 == 401
    });
    assert!(swapped, "the new token was not taken within 10 s; log:\n{}", c.log(0));
    assert_eq!(c.pid(0), pid, "the same process");
    let reloads = |result: &str| {
        let text = client().get(format!("{}/metrics", c.url(0))).send().unwrap().text().unwrap();
        metric_sum(&text, "dmutex_credential_reloads_total", &[("what", "api_tokens"), ("result", result)])
    };
    assert_eq!(reloads("ok"), 1.0);

    // A changed file that does not parse keeps the tokens in use, and says so (without the token).
    write_atomically(&file, &format!("{NEW} read\nanother-token-0123456789 superuser\n"));
    assert!(poll(Duration::from_secs(10), || reloads("failed") == 1.0), "log:\n{}", c.log(0));
    assert_eq!(call("GET", &stats, Some(NEW), None).0, 200, "the last good tokens stay in use");
    let log = c.log(0);
    assert!(log.contains("line 2") && log.contains("keeping the old ones"), "{log}");
    assert!(!log.contains(NEW) && !log.contains("another-token"), "a token in the log:\n{log}");
}

#[test]
fn a_malformed_tokens_file_stops_the_node_naming_the_key_and_the_line() {
    let c = Cluster::new("tokbad", 1, &[]);
    let file = c.dir.join("tokens");
    for (text, line) in [
        (
            "# tokens\nsecret-token-0123456789abcdef lock\nsecret-token-abcdef0123456789 lock,write\n",
            "line 3",
        ),
        ("secret-token-0123456789abcdef\n", "line 1"),
        ("# nothing but comments\n", "holds no token"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = c.command(0).env("DMUTEX_API_TOKENS_FILE", &file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains("DMUTEX_API_TOKENS_FILE") && stderr.contains(line), "{text:?}: {stderr}");
        assert!(!stderr.contains("secret-token"), "the token is never shown: {stderr}");
    }
    let out = c.command(0).env("DMUTEX_API_TOKENS_FILE", c.dir.join("missing")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DMUTEX_API_TOKENS_FILE"));
}

/// `dmutex <args>` with `DMUTEX_TOKEN` set to `token` (or unset), nothing else inherited that could decide.
fn dmutex(args: &[&str], token: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dmutex"));
    cmd.args(args);
    for var in [
        "DMUTEX_TOKEN",
        "DMUTEX_TOKEN_FILE",
        "DMUTEX_CACERT",
        "DMUTEX_ENDPOINT",
        "DMUTEX_ENDPOINTS",
        "DMUTEX_TLS_CERT",
    ] {
        cmd.env_remove(var);
    }
    if let Some(t) = token {
        cmd.env("DMUTEX_TOKEN", t);
    }
    cmd.output().unwrap()
}

#[test]
fn dmutex_lock_and_flow_send_the_token_and_say_clearly_when_it_is_missing() {
    let (c, _) = cluster_with_tokens("tokcli", 1, &format!("{LOCKER} lock\n{READER} read\n"), &[]);
    let url = c.url(0);
    let out = dmutex(
        &["lock", "--endpoint", &url, "job", "--", "sh", "-c", "test -n \"$DMUTEX_LEASE\""],
        Some(LOCKER),
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let out = dmutex(&["lock", "--endpoint", &url, "job", "--", "true"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("unauthorized") && stderr.contains("DMUTEX_TOKEN"), "{stderr}");

    let out = dmutex(&["lock", "--endpoint", &url, "job", "--", "true"], Some(READER));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("forbidden") && stderr.contains("lock scope"), "{stderr}");
    assert!(!stderr.contains(READER), "{stderr}");

    // --token-file (a mounted Secret's file, with its final newline) instead of the variable.
    let token_file = c.dir.join("my-token");
    std::fs::write(&token_file, format!("{LOCKER}\n")).unwrap();
    let file = token_file.display().to_string();
    let out = dmutex(&["lock", "--endpoint", &url, "--token-file", &file, "job", "--", "true"], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    // dmutex flow reads /v1/flow: the read scope.
    let out = dmutex(&["flow", "--endpoints", &url, "--lock", "job"], Some(READER));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("sequenceDiagram"), "{stdout}");
    let out = dmutex(&["flow", "--endpoints", &url, "--lock", "job"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("401") && stderr.contains("DMUTEX_TOKEN"), "{stderr}");

    // dmutex health needs no token.
    let out = dmutex(&["health", "--ready", "--endpoint", &url], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

/// An HTTPS server on `addr` answering `/healthz` with the certificate and key in `cert`/`key`: the node's own
/// TLS listener without a node, on its own runtime thread.
fn https_healthz(addr: std::net::SocketAddr, cert: &Path, key: &Path) {
    let files = ApiTls { cert: cert.to_path_buf(), key: key.to_path_buf(), client_ca: None };
    let config = HttpsConfig::load(&files).unwrap();
    let listener = std::net::TcpListener::bind(addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let tcp = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new()
                .route("/healthz", axum::routing::get(|| async { axum::Json(json!({"status": "ok"})) }));
            axum::serve(TlsListener::new(tcp, config).unwrap(), app).await.unwrap();
        });
    });
}

#[test]
fn dmutex_health_pins_the_nodes_own_certificate_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    // A CA and a node certificate that names the node's DNS name only, not 127.0.0.1.
    let ca = ThrowawayCa::new("dmutex test CA").unwrap();
    let (cert, key) = ca.issue(&["dmutex-0.dmutex.svc"]).unwrap();
    let (cert_file, key_file, ca_file, other_file) = (
        dir.path().join("node.crt"),
        dir.path().join("node.key"),
        dir.path().join("ca.crt"),
        dir.path().join("other.crt"),
    );
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    // The same name, another key (and another CA).
    let (other, _) = ThrowawayCa::new("another CA").unwrap().issue(&["dmutex-0.dmutex.svc"]).unwrap();
    std::fs::write(&other_file, other).unwrap();

    let host = common::subnet_for("tokhealth") + ".1";
    let addr: std::net::SocketAddr = format!("{host}:{HTTP_PORT}").parse().unwrap();
    https_healthz(addr, &cert_file, &key_file);
    let health = |env: &[(&str, &Path)], args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dmutex"));
        cmd.arg("health").args(args).env("DMUTEX_HTTP_ADDR", format!("0.0.0.0:{HTTP_PORT}"));
        for var in
            ["DMUTEX_TOKEN", "DMUTEX_TOKEN_FILE", "DMUTEX_CACERT", "DMUTEX_ENDPOINT", "DMUTEX_TLS_CERT"]
        {
            cmd.env_remove(var);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let endpoint = format!("https://{addr}");
    let ok = poll(Duration::from_secs(5), || {
        health(&[("DMUTEX_TLS_CERT", &cert_file)], &["--endpoint", &endpoint]).status.code() == Some(0)
    });
    let out = health(&[("DMUTEX_TLS_CERT", &cert_file)], &["--endpoint", &endpoint]);
    assert!(ok, "the pinned certificate: {}", String::from_utf8_lossy(&out.stderr));
    // With DMUTEX_HTTP_ADDR on this host's own loopback form the default endpoint is https too.
    let out = Command::new(env!("CARGO_BIN_EXE_dmutex"))
        .args(["health"])
        .env("DMUTEX_HTTP_ADDR", addr.to_string())
        .env("DMUTEX_TLS_CERT", &cert_file)
        .env_remove("DMUTEX_ENDPOINT")
        .env_remove("DMUTEX_CACERT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    // Another certificate (same name, another key) is not the node's: refused.
    let out = health(&[("DMUTEX_TLS_CERT", &other_file)], &["--endpoint", &endpoint]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // The CA is right but the certificate does not name the address: this is why health pins.
    let out = health(
        &[("DMUTEX_TLS_CERT", &cert_file)],
        &["--endpoint", &endpoint, "--cacert", &ca_file.display().to_string()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    // Without the pin, plain https fails against the built-in roots.
    let out = health(&[], &["--endpoint", &endpoint]);
    assert_eq!(out.status.code(), Some(1));
}
