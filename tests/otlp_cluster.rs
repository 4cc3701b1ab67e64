//! Traces of a real 3-node cluster (`dmutex node` processes) collected by the in-test OTLP receiver: one
//! Lamport acquire is one trace with spans from all three nodes whose parent links follow REQUEST → REPLY and
//! the RELEASE fan-out (over gRPC when asked for, flushed by SIGTERM, and over OTLP/HTTP, the default); a
//! redirected probable-owner acquire's trace shows the redirect hop; without an endpoint nothing is sent; a
//! dead collector does not slow acquires; a client application's own span (OpenTelemetry SDK, the
//! `dmutex-client` library injecting `traceparent`) is the parent of the nodes' server spans; every view change
//! (bootstrap, leave, join) is a `membership.view_change` span. The standard `OTEL_*` variables the OpenTelemetry crates read
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

/// A client's own trace, end to end: the test is the client application, with the OpenTelemetry SDK (a tracer
/// provider exporting over OTLP/HTTP to the same receiver as the nodes). Inside its span, the `dmutex-client`
/// library acquires and releases (injecting `traceparent` itself); the receiver then holds the client's span
/// and, in the same trace, each call's server span as its child, with `lock.acquire` and the peer messages
/// under the acquire's.
#[test]
fn a_clients_own_span_is_the_parent_of_the_nodes_spans() {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
    use opentelemetry_otlp::WithExportConfig as _;
    let rt = runtime();
    let rx = receiver(&rt);
    let endpoint = rx.http_endpoint();
    let c = Cluster::start(
        "otlp-client",
        3,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    // The application's own pipeline (built outside the runtime: the blocking HTTP client makes its own).
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(rx.http_traces_url())
        .build()
        .unwrap_or_else(|e| panic!("exporter: {e}"));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(opentelemetry_sdk::Resource::builder_empty().with_service_name("backup-job").build())
        .build();
    let tracer = provider.tracer("otlp_cluster");
    let span = tracer.span_builder("nightly-backup").with_kind(SpanKind::Client).start(&tracer);
    let cx = opentelemetry::Context::new().with_span(span);
    let client = dmutex_client::Client::new([c.url(1), c.url(0), c.url(2)]).unwrap_or_else(|e| panic!("{e}"));
    let work = async {
        let guard = client
            .lock("client-traced")
            .algorithm(dmutex_client::Algorithm::Lamport)
            .ttl(Duration::from_secs(30))
            .timeout(Duration::from_secs(10))
            .await?;
        guard.release().await
    };
    if let Err(e) = rt.block_on(work.with_context(cx.clone())) {
        panic!("acquire and release: {e}\n{}", c.logs());
    }
    cx.span().end();
    if let Err(e) = provider.force_flush() {
        panic!("the client's flush: {e}");
    }
    let (client_trace, client_span) = {
        let sc = cx.span().span_context().clone();
        (sc.trace_id().to_string(), sc.span_id().to_string())
    };
    let done = |s: &[CollectedSpan]| {
        let t = Trace::of(s, &client_trace);
        t.0.iter().any(|s| s.span_id == client_span)
            && t.named("POST /v1/locks/{name}/release", None).count() == 1
            && t.named("peer.recv", Some("RELEASE")).count() >= 2
    };
    let spans = match rt.block_on(rx.wait_for(done, Duration::from_secs(15))) {
        Ok(s) => s,
        Err(s) => panic!("spans missing: {s:#?}\n{}", c.logs()),
    };
    if let Err(e) = provider.shutdown() {
        panic!("the client's shutdown: {e}");
    }
    let t = Trace::of(&spans, &client_trace);
    let dump = t.dump();
    let mine = t.0.iter().find(|s| s.span_id == client_span).unwrap_or_else(|| panic!("{dump}"));
    assert_eq!(mine.name, "nightly-backup", "{dump}");
    assert_eq!(mine.parent_span_id, None, "the client's span is the root\n{dump}");
    assert_eq!(mine.resource.get("service.name").map(String::as_str), Some("backup-job"), "{dump}");
    for (name, route, lock_path) in [
        ("POST /v1/locks/{name}/acquire", "/v1/locks/{name}/acquire", "/v1/locks/client-traced/acquire"),
        ("POST /v1/locks/{name}/release", "/v1/locks/{name}/release", "/v1/locks/client-traced/release"),
    ] {
        let calls: Vec<_> = t.named(name, None).collect();
        assert_eq!(calls.len(), 1, "one {name} server span\n{dump}");
        let http = calls[0];
        assert_eq!(
            http.parent_span_id.as_deref(),
            Some(client_span.as_str()),
            "{name}: the server span is the client span's child\n{dump}"
        );
        assert_eq!(http.attr("http.request.method"), Some("POST"), "{dump}");
        assert_eq!(http.attr("http.route"), Some(route), "{dump}");
        assert_eq!(http.attr("http.response.status_code"), Some("200"), "{dump}");
        assert_eq!(http.attr("url.path"), Some(lock_path), "{dump}");
        assert_eq!(http.instance(), Some("1"), "the client's first endpoint served it\n{dump}");
    }
    let http = t.named("POST /v1/locks/{name}/acquire", None).next().unwrap_or_else(|| panic!("{dump}"));
    let root = t.named("lock.acquire", None).next().unwrap_or_else(|| panic!("no lock.acquire\n{dump}"));
    assert_eq!(
        root.parent_span_id.as_ref(),
        Some(&http.span_id),
        "lock.acquire under the server span\n{dump}"
    );
    assert_eq!(root.attr("lock"), Some("client-traced"), "{dump}");
    assert_eq!(root.attr("outcome"), Some("granted"), "{dump}");
    // The peer messages the acquire caused are in the client's trace too, from every node.
    assert_eq!(t.named("peer.recv", Some("REQUEST")).count(), 2, "{dump}");
    let nodes: std::collections::BTreeSet<&str> = t.0.iter().filter_map(CollectedSpan::instance).collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), vec!["0", "1", "2"], "{dump}");
    // Every span but the client's is dmutex's, with its version on the resource.
    for s in t.0.iter().filter(|s| s.span_id != client_span) {
        assert_eq!(s.resource.get("service.name").map(String::as_str), Some("dmutex"), "{dump}");
        assert_eq!(
            s.resource.get("service.version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION")),
            "service.version\n{dump}"
        );
    }
}

/// The `membership.view_change` span of every view a node installs: at bootstrap one per
/// node (epoch 1, every member, cause `bootstrap`), and when a node leaves (SIGTERM) and comes back as a new
/// process, the survivors' `leave of 2` and `join of 2` views and the newcomer's own `join`, each with its
/// epoch, members (`id#incarnation`), proposer and whether this node accepted it.
#[test]
fn view_changes_are_spans_with_epoch_members_cause_and_proposer() {
    let rt = runtime();
    let rx = receiver(&rt);
    let endpoint = rx.http_endpoint();
    let mut c = Cluster::start(
        "otlp-views",
        3,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let views = |s: &[CollectedSpan]| -> Vec<CollectedSpan> {
        s.iter().filter(|s| s.name == "membership.view_change").cloned().collect()
    };
    let dump = |v: &[CollectedSpan]| -> String {
        v.iter().map(|s| format!("node={:?} {:?}\n", s.instance(), s.attributes)).collect()
    };
    let bootstrapped =
        |s: &[CollectedSpan]| views(s).iter().filter(|v| v.attr("cause") == Some("bootstrap")).count() >= 3;
    let spans = match rt.block_on(rx.wait_for(bootstrapped, Duration::from_secs(15))) {
        Ok(s) => s,
        Err(s) => panic!("no bootstrap views: {}\n{}", dump(&views(&s)), c.logs()),
    };
    let boot: Vec<CollectedSpan> = views(&spans);
    let text = dump(&boot);
    assert_eq!(boot.len(), 3, "one bootstrap view per node\n{text}");
    let members = boot[0].attr("members").unwrap_or_default().to_string();
    let ids: Vec<&str> = members.split(' ').map(|m| m.split('#').next().unwrap_or("")).collect();
    assert_eq!(ids, ["0", "1", "2"], "members as id#incarnation: {members}");
    assert!(
        members.split(' ').all(|m| m.split_once('#').is_some_and(|(_, i)| i.parse::<u64>().is_ok())),
        "{members}"
    );
    for v in &boot {
        assert_eq!(v.attr("epoch"), Some("1"), "{text}");
        assert_eq!(v.attr("cause"), Some("bootstrap"), "{text}");
        assert_eq!(v.attr("members"), Some(members.as_str()), "every node installs the same view\n{text}");
        assert_eq!(v.attr("node"), v.instance(), "{text}");
        // Installed from the configured list, not decided by a ballot: nobody proposed it.
        assert_eq!((v.attr("accepted_here"), v.attr("proposer")), (Some("false"), Some("unknown")), "{text}");
    }
    let nodes: std::collections::BTreeSet<&str> = boot.iter().filter_map(CollectedSpan::instance).collect();
    assert_eq!(nodes.len(), 3, "{text}");

    // Node 2 leaves and comes back as a new process (a new incarnation): a join.
    let (code, _) = c.sigterm(2);
    assert_eq!(code, Some(0), "{}", c.logs());
    c.spawn(2);
    c.wait_ready(Duration::from_secs(30));
    let joined = |s: &[CollectedSpan]| {
        let v = views(s);
        v.iter().any(|v| v.instance() == Some("2") && v.attr("cause") == Some("join"))
            && v.iter().any(|v| {
                v.instance() == Some("0") && v.attr("cause").is_some_and(|c| c.contains("join of 2"))
            })
    };
    let spans = match rt.block_on(rx.wait_for(joined, Duration::from_secs(20))) {
        Ok(s) => s,
        Err(s) => panic!("no join views: {}\n{}", dump(&views(&s)), c.logs()),
    };
    let all = views(&spans);
    let text = dump(&all);
    let epoch = |v: &CollectedSpan| v.attr("epoch").and_then(|e| e.parse::<u64>().ok()).unwrap_or(0);
    let newcomer = all
        .iter()
        .find(|v| v.instance() == Some("2") && v.attr("cause") == Some("join"))
        .unwrap_or_else(|| panic!("{text}"));
    let welcomed = all
        .iter()
        .find(|v| v.instance() == Some("0") && v.attr("cause").is_some_and(|c| c.contains("join of 2")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(epoch(newcomer) > 1, "{text}");
    assert_eq!(epoch(newcomer), epoch(welcomed), "the same view on both sides\n{text}");
    assert_eq!(newcomer.attr("members"), welcomed.attr("members"), "{text}");
    let new_members = welcomed.attr("members").unwrap_or_default();
    assert!(new_members.split(' ').any(|m| m.starts_with("2#")), "{text}");
    assert!(
        !new_members.split(' ').any(|m| members.split(' ').any(|old| old == m && old.starts_with("2#"))),
        "node 2 is in the new view as a new incarnation\n{text}"
    );
    assert!(
        all.iter()
            .any(|v| v.instance() == Some("0") && v.attr("cause").is_some_and(|c| c.contains("leave of 2")))
            || welcomed.attr("cause").is_some_and(|c| c.contains("leave of 2")),
        "the survivors saw node 2 leave\n{text}"
    );
    // The survivors (the acceptors: both are needed for a majority of two) accepted the join's ballot; the
    // newcomer, not yet a member, only learnt the decision.
    assert_eq!(welcomed.attr("accepted_here"), Some("true"), "{text}");
    assert_eq!(
        (newcomer.attr("accepted_here"), newcomer.attr("proposer")),
        (Some("false"), Some("unknown")),
        "{text}"
    );
    for v in &all {
        check_proposer(v, &text);
    }
}

/// A view's proposer: a node id when this node accepted the view's ballot, `unknown` otherwise.
fn check_proposer(v: &CollectedSpan, text: &str) {
    match v.attr("accepted_here") {
        Some("true") => assert!(v.attr("proposer").is_some_and(|p| p.parse::<u16>().is_ok()), "{text}"),
        Some("false") => assert_eq!(v.attr("proposer"), Some("unknown"), "{text}"),
        other => panic!("accepted_here {other:?}\n{text}"),
    }
}
