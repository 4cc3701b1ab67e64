//! Traces of a real 3-node cluster (`dmutex node` processes) collected by the in-test OTLP receiver: one
//! Lamport acquire is one trace with spans from all three nodes whose parent links follow REQUEST → REPLY and
//! the RELEASE fan-out (over gRPC when asked for, flushed by SIGTERM, and over OTLP/HTTP, the default); a
//! redirected probable-owner acquire's trace shows the redirect hop; without an endpoint nothing is sent; a
//! dead collector does not slow acquires. The standard `OTEL_*` variables the OpenTelemetry crates read
//! themselves (headers, the sampler, the generic endpoint's `/v1/traces`) are checked here, end to end.

mod common;
#[path = "support/otlp.rs"]
mod otlp;

use common::{Api, Cluster};
use otlp::{CollectedSpan, OtlpReceiver};
use serde_json::json;
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

fn receiver(rt: &tokio::runtime::Runtime) -> OtlpReceiver {
    match rt.block_on(OtlpReceiver::start()) {
        Ok(rx) => rx,
        Err(e) => panic!("receiver: {e}"),
    }
}

fn hold(api: &Api, node: usize, lock: &str, algorithm: &str) {
    api.lock_once(node, lock, algorithm);
}

/// The spans of one trace, with lookups by id.
struct Trace(Vec<CollectedSpan>);

impl Trace {
    fn of(spans: &[CollectedSpan], trace_id: &str) -> Trace {
        Trace(spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect())
    }

    fn parent(&self, s: &CollectedSpan) -> Option<&CollectedSpan> {
        let id = s.parent_span_id.as_ref()?;
        self.0.iter().find(|p| &p.span_id == id)
    }

    fn named<'a>(
        &'a self,
        name: &'a str,
        kind: Option<&'a str>,
    ) -> impl Iterator<Item = &'a CollectedSpan> + 'a {
        self.0.iter().filter(move |s| s.name == name && kind.is_none_or(|k| s.attr("msg.type") == Some(k)))
    }

    fn dump(&self) -> String {
        self.0
            .iter()
            .map(|s| {
                format!(
                    "{} {} node={:?} type={:?} parent={:?} id={}\n",
                    s.name,
                    s.attr("lock").unwrap_or(""),
                    s.instance(),
                    s.attr("msg.type"),
                    s.parent_span_id,
                    s.span_id
                )
            })
            .collect()
    }
}

/// The trace of the (only) `lock.acquire` of `lock` through node `node`.
fn acquire_trace(spans: &[CollectedSpan], lock: &str, node: &str) -> Trace {
    let roots: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|s| s.name == "lock.acquire" && s.attr("lock") == Some(lock) && s.instance() == Some(node))
        .collect();
    assert_eq!(roots.len(), 1, "one lock.acquire root expected: {roots:#?}");
    Trace::of(spans, &roots[0].trace_id)
}

fn check_lamport_trace(t: &Trace) {
    let dump = t.dump();
    let root = t.named("lock.acquire", None).next().unwrap_or_else(|| panic!("no root\n{dump}"));
    // The HTTP server span of the acquire call is the trace's root (no traceparent came with the call), and
    // lock.acquire its child.
    let http = t.parent(root).unwrap_or_else(|| panic!("lock.acquire has no HTTP parent\n{dump}"));
    assert_eq!(http.name, "POST /v1/locks/{name}/acquire", "{dump}");
    assert_eq!(http.parent_span_id, None, "{dump}");
    assert_eq!(http.attr("http.route"), Some("/v1/locks/{name}/acquire"), "{dump}");
    assert_eq!(http.attr("http.response.status_code"), Some("200"), "{dump}");
    assert_eq!(root.attr("algorithm"), Some("lamport"));
    assert_eq!(root.attr("outcome"), Some("granted"), "{dump}");
    assert!(root.attr("fencing_token").is_some() && root.attr("waited_ms").is_some(), "{dump}");
    let nodes: std::collections::BTreeSet<&str> = t.0.iter().filter_map(CollectedSpan::instance).collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), vec!["0", "1", "2"], "{dump}");
    // REQUEST fan-out: two sends, children of the root, each received by one peer as its child.
    let requests: Vec<_> = t.named("peer.send", Some("REQUEST")).collect();
    assert_eq!(requests.len(), 2, "{dump}");
    for send in &requests {
        assert_eq!(send.parent_span_id.as_ref(), Some(&root.span_id), "{dump}");
        let recv = t
            .named("peer.recv", Some("REQUEST"))
            .find(|r| r.parent_span_id.as_ref() == Some(&send.span_id))
            .unwrap_or_else(|| panic!("REQUEST {} not received in the trace\n{dump}", send.span_id));
        assert_eq!(Some(recv.instance().unwrap_or("")), send.attr("to"), "{dump}");
        assert!(recv.attr("lamport.ts").is_some(), "{dump}");
        // The REPLY is the handling span's child, and its receipt on node 0 the REPLY's child.
        let reply = t
            .named("peer.send", Some("REPLY"))
            .find(|r| r.parent_span_id.as_ref() == Some(&recv.span_id))
            .unwrap_or_else(|| panic!("no REPLY caused by {}\n{dump}", recv.span_id));
        let back = t
            .named("peer.recv", Some("REPLY"))
            .find(|r| r.parent_span_id.as_ref() == Some(&reply.span_id))
            .unwrap_or_else(|| panic!("REPLY {} not received\n{dump}", reply.span_id));
        assert_eq!(back.instance(), Some("0"));
    }
    assert!(
        t.named("lock.enter", None).any(|e| t.parent(e).is_some_and(|p| p.span_id == root.span_id)),
        "{dump}"
    );
    // RELEASE fan-out: children of lock.release, itself the root's child; both peers receive it.
    let release = t.named("lock.release", None).next().unwrap_or_else(|| panic!("no lock.release\n{dump}"));
    assert_eq!(release.parent_span_id.as_ref(), Some(&root.span_id), "{dump}");
    let releases: Vec<_> = t.named("peer.send", Some("RELEASE")).collect();
    assert_eq!(releases.len(), 2, "{dump}");
    for send in releases {
        assert_eq!(send.parent_span_id.as_ref(), Some(&release.span_id), "{dump}");
        assert!(
            t.named("peer.recv", Some("RELEASE")).any(|r| r.parent_span_id.as_ref() == Some(&send.span_id)),
            "RELEASE {} not received\n{dump}",
            send.span_id
        );
    }
}

/// gRPC, default batch delay (5 s): the spans arrive because SIGTERM flushes them.
#[test]
fn lamport_acquire_is_one_trace_over_grpc_flushed_by_sigterm() {
    let rt = runtime();
    let rx = receiver(&rt);
    let endpoint = rx.grpc_endpoint();
    let mut c = Cluster::start(
        "otlp-grpc",
        3,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-dmutex-test=grpc%20metadata"),
        ],
    );
    hold(&c.api(), 0, "traced", "lamport");
    let t0 = Instant::now();
    for i in 0..3 {
        let (code, took) = c.sigterm(i);
        assert_eq!(code, Some(0), "node {i} exit\n{}", c.logs());
        assert!(took < Duration::from_secs(10), "node {i} took {took:?} to stop");
    }
    eprintln!("3 nodes stopped (and flushed) in {:?}", t0.elapsed());
    let spans = rx.spans();
    assert!(spans.iter().all(|s| s.transport == otlp::Transport::Grpc));
    assert!(
        spans.iter().all(|s| s.headers.get("x-dmutex-test").map(String::as_str) == Some("grpc metadata")),
        "OTEL_EXPORTER_OTLP_HEADERS becomes gRPC metadata: {:?}",
        spans.first().map(|s| &s.headers)
    );
    check_lamport_trace(&acquire_trace(&spans, "traced", "0"));
}

/// OTLP/HTTP, the default protocol (no protocol variable), with a short batch delay: the spans arrive while
/// the nodes run, at the base URL plus `/v1/traces`, with the configured headers and decoded attributes.
#[test]
fn lamport_acquire_is_one_trace_over_http() {
    let rt = runtime();
    let rx = receiver(&rt);
    let endpoint = rx.http_endpoint();
    let c = Cluster::start(
        "otlp-http",
        3,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-dmutex-test=http"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test%2Cci"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    // The caller's own trace: the acquire continues it (W3C traceparent), the release goes without.
    let (caller_trace, caller_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let api = c.api();
    let grant: serde_json::Value = api
        .client()
        .post(format!("{}/v1/locks/traced/acquire", api.url(1)))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .json(&json!({"algorithm": "lamport"}))
        .send()
        .and_then(|r| r.json())
        .expect("acquire");
    assert_eq!(api.release(1, "traced", grant["lease"].as_str().unwrap_or_default()).0, 200, "{grant}");
    let done = |s: &[CollectedSpan]| s.iter().filter(|s| s.attr("msg.type") == Some("RELEASE")).count() >= 4;
    let spans = match rt.block_on(rx.wait_for(done, Duration::from_secs(15))) {
        Ok(s) => s,
        Err(s) => panic!("spans missing: {s:#?}\n{}", c.logs()),
    };
    assert!(spans.iter().all(|s| s.transport == otlp::Transport::Http));
    // Node 1 acquired: relabel so the check (written for node 0) applies.
    let t = acquire_trace(&spans, "traced", "1");
    let dump = t.dump();
    assert_eq!(t.0[0].trace_id, caller_trace, "the acquire continues the caller's trace\n{dump}");
    let root = t.named("lock.acquire", None).next().unwrap_or_else(|| panic!("no root\n{dump}"));
    let http = t.parent(root).unwrap_or_else(|| panic!("lock.acquire has no HTTP parent\n{dump}"));
    assert_eq!(
        http.parent_span_id.as_deref(),
        Some(caller_span),
        "the HTTP span is the caller's child\n{dump}"
    );
    assert_eq!(http.attr("http.request.method"), Some("POST"), "{dump}");
    assert!(
        t.0.iter().all(|s| s.resource.get("service.version").map(String::as_str) == Some(env!("CARGO_PKG_VERSION"))),
        "service.version\n{dump}"
    );
    assert_eq!(t.named("peer.send", Some("REQUEST")).count(), 2, "{dump}");
    assert!(
        t.named("peer.recv", Some("REPLY")).all(|r| r.instance() == Some("1"))
            && t.named("peer.recv", Some("REPLY")).count() == 2,
        "{dump}"
    );
    let nodes: std::collections::BTreeSet<&str> = t.0.iter().filter_map(CollectedSpan::instance).collect();
    assert_eq!(nodes.len(), 3, "{dump}");
    assert!(t.0.iter().all(|s| s.resource.get("service.name").map(String::as_str) == Some("dmutex")));
    assert!(
        t.0.iter().all(|s| s.resource.get("deployment.environment").map(String::as_str) == Some("test,ci")),
        "percent-decoded resource attribute\n{dump}"
    );
    assert!(
        spans.iter().all(|s| s.headers.get("x-dmutex-test").map(String::as_str) == Some("http")),
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS: {:?}",
        spans.first().map(|s| &s.headers)
    );
}

/// Probable owner: acquires round-robin until one is redirected by a stale hint; its trace holds the hop.
#[test]
fn redirected_probable_owner_acquire_shows_the_redirect_hop() {
    let rt = runtime();
    let rx = receiver(&rt);
    let endpoint = rx.grpc_endpoint();
    let c = Cluster::start(
        "otlp-po",
        3,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let api = c.api();
    for round in 0..2 {
        for node in 0..3 {
            hold(&api, node, "po", "probable-owner");
            let _ = round;
        }
    }
    let redirected = |s: &[CollectedSpan]| {
        s.iter()
            .any(|s| s.name == "peer.recv" && s.attr("msg.detail").is_some_and(|d| d.starts_with("redirect")))
    };
    let spans = match rt.block_on(rx.wait_for(redirected, Duration::from_secs(15))) {
        Ok(s) => s,
        Err(s) => panic!("no redirect seen: {s:#?}\n{}", c.logs()),
    };
    // Let the rest of that trace arrive.
    std::thread::sleep(Duration::from_millis(500));
    let spans = {
        let later = rx.spans();
        if later.len() > spans.len() { later } else { spans }
    };
    let Some(redirect) = spans
        .iter()
        .find(|s| s.name == "peer.recv" && s.attr("msg.detail").is_some_and(|d| d.starts_with("redirect")))
    else {
        panic!("no redirect")
    };
    let t = Trace::of(&spans, &redirect.trace_id);
    let dump = t.dump();
    let root = t.named("lock.acquire", None).next().unwrap_or_else(|| panic!("no root\n{dump}"));
    assert_eq!(root.attr("algorithm"), Some("probable-owner"));
    assert_eq!(redirect.instance(), root.instance(), "the requester receives the redirect\n{dump}");
    // The chain: root → LOCK_ACQ → (stale owner) recv → LOCK_REP redirect → recv → LOCK_ACQ → … → grant.
    let first_acq = t.parent(t.parent(t.parent(redirect).unwrap_or(redirect)).unwrap_or(redirect));
    assert!(first_acq.is_some_and(|s| s.attr("msg.type") == Some("LOCK_ACQ")), "{dump}");
    let second_acq = t
        .named("peer.send", Some("LOCK_ACQ"))
        .find(|s| s.parent_span_id.as_ref() == Some(&redirect.span_id))
        .unwrap_or_else(|| panic!("no LOCK_ACQ after the redirect\n{dump}"));
    assert_ne!(second_acq.attr("to"), first_acq.and_then(|s| s.attr("to")), "{dump}");
    assert!(
        t.named("peer.recv", Some("LOCK_REP"))
            .any(|r| r.attr("msg.detail").is_some_and(|d| d.starts_with("grant"))
                && r.instance() == root.instance()),
        "the grant arrives in the same trace\n{dump}"
    );
    assert!(t.named("lock.enter", None).count() == 1, "{dump}");
}

/// No OTEL endpoint: the nodes export nothing (the receiver listens, but nobody told the nodes about it and
/// no default endpoint is assumed).
#[test]
fn without_an_endpoint_nothing_is_sent() {
    let rt = runtime();
    let rx = receiver(&rt);
    let c = Cluster::start("otlp-none", 3, &[("OTEL_SERVICE_NAME", "dmutex-untraced")]);
    for algorithm in common::ALGORITHMS {
        hold(&c.api(), 0, "quiet", algorithm);
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rx.spans().is_empty(), "{:#?}", rx.spans());
    // The flow records work without any backend: the acquire id travels in the messages.
    let (status, v) = c.get(1, "/v1/flow?lock=quiet");
    assert_eq!(status, 200, "{v}");
    let records = v["records"].as_array().cloned().unwrap_or_default();
    assert!(records.iter().any(|r| r["trace_id"].as_str().is_some_and(|id| id.starts_with("0-"))), "{v}");
}

/// `OTEL_TRACES_SAMPLER=always_off`, read by the SDK: the node exports nothing, not even on the flush at
/// SIGTERM, although the endpoint is set.
#[test]
fn the_sdk_reads_the_sampler() {
    let rt = runtime();
    let rx = receiver(&rt);
    let endpoint = rx.http_endpoint();
    let mut c = Cluster::start(
        "otlp-off",
        1,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_TRACES_SAMPLER", "always_off"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    hold(&c.api(), 0, "unsampled", "lamport");
    let (code, _) = c.sigterm(0);
    assert_eq!(code, Some(0), "{}", c.logs());
    assert!(c.logs().contains("exporting traces over OTLP"), "the exporter was on\n{}", c.logs());
    assert!(rx.spans().is_empty(), "{:#?}", rx.spans());
}

fn p50_of_acquires(api: &Api, n: usize) -> Duration {
    let mut took: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            let (s, g) = api.acquire(0, "fast", json!({"algorithm": "lamport", "timeout_ms": 10000}));
            let took = t.elapsed();
            assert_eq!(s, 200, "{g}");
            let lease = g["lease"].as_str().unwrap_or_default().to_string();
            assert_eq!(api.release(0, "fast", &lease).0, 200);
            took
        })
        .collect();
    took.sort();
    took[took.len() / 2]
}

/// A collector that is down (connection refused) costs lost spans, not latency.
#[test]
fn a_dead_collector_does_not_slow_acquires() {
    let dead = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l.local_addr().map(|a| a.port()).unwrap_or(9),
        Err(e) => panic!("bind: {e}"),
    }; // the listener is closed here: nothing accepts on that port any more
    let base = {
        let c = Cluster::start("otlp-base", 3, &[]);
        hold(&c.api(), 0, "warm", "lamport");
        p50_of_acquires(&c.api(), 50)
    };
    let endpoint = format!("http://127.0.0.1:{dead}");
    let mut c = Cluster::start(
        "otlp-dead",
        3,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "50")],
    );
    hold(&c.api(), 0, "warm", "lamport");
    let traced = p50_of_acquires(&c.api(), 50);
    eprintln!("p50 of 50 Lamport acquires: {base:?} without tracing, {traced:?} with a dead collector");
    assert!(traced <= base * 3 + Duration::from_millis(20), "{traced:?} vs {base:?}");
    // And shutdown is not held up by the unreachable collector for long.
    let (code, took) = c.sigterm(0);
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(8), "SIGTERM took {took:?}");
}
