//! The trace pipeline against the in-test OTLP receiver: W3C context survives a peer hop (inject → message
//! map → extract) so two nodes' spans form one trace with the right parent link, over gRPC and over
//! OTLP/HTTP; a dead collector neither slows span emission nor stalls shutdown; no endpoint, no exporter.

#[path = "support/otlp.rs"]
mod otlp;

use dmutex::net::peer_tls::ThrowawayCa;
use dmutex::obs::telemetry::{
    self, OtlpProtocol, OtlpSettings, SHUTDOWN_TIMEOUT, TelemetryConfig, build_tracer_provider, otel_layer,
    shutdown_provider,
};
use otlp::{OtlpReceiver, Transport};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt as _;

/// Node 0 starts `lock.acquire` and sends REQUEST (its trace map) to node 1, whose handling span is the
/// child; returns (root trace id as seen locally, the message's trace map).
fn emit_two_node_acquire(
    p0: &opentelemetry_sdk::trace::SdkTracerProvider,
    p1: &opentelemetry_sdk::trace::SdkTracerProvider,
) -> (Option<String>, BTreeMap<String, String>) {
    let (trace_id, map) = tracing::subscriber::with_default(Registry::default().with(otel_layer(p0)), || {
        let root = tracing::info_span!("lock.acquire", lock = "db", algorithm = "lamport", node = 0u16);
        let _entered = root.enter();
        let send = tracing::info_span!("send", msg.kind = "REQUEST", peer = 1u16, lamport.ts = 1u64);
        let map = telemetry::inject(&send);
        (telemetry::trace_id_of(&root), map)
    });
    tracing::subscriber::with_default(Registry::default().with(otel_layer(p1)), || {
        let handle = tracing::info_span!("handle", msg.kind = "REQUEST", peer = 0u16, lamport.ts = 1u64);
        telemetry::set_parent(&handle, &map);
        let _entered = handle.enter();
        tracing::info!("replying");
    });
    (trace_id, map)
}

async fn one_trace_across_two_nodes(protocol: OtlpProtocol) {
    let rx = match OtlpReceiver::start().await {
        Ok(rx) => rx,
        Err(e) => panic!("receiver: {e}"),
    };
    let endpoint = match protocol {
        OtlpProtocol::Grpc => rx.grpc_endpoint(),
        OtlpProtocol::HttpProtobuf => rx.http_traces_url(),
    };
    let build = |node| match build_tracer_provider(&OtlpSettings::new(endpoint.clone(), protocol, node)) {
        Ok(p) => p,
        Err(e) => panic!("provider: {e}"),
    };
    let ((p0, c0), (p1, c1)) = (build(0), build(1));
    let (trace_id, map) = emit_two_node_acquire(&p0, &p1);
    let Some(trace_id) = trace_id else { panic!("the root span has no trace id") };
    assert!(map.get("traceparent").is_some_and(|tp| tp.contains(&trace_id)), "{map:?}");

    for p in [p0, p1] {
        if let Err(e) = shutdown_provider(p, SHUTDOWN_TIMEOUT).await {
            panic!("shutdown: {e}");
        }
    }
    let spans = match rx.wait_for(|s| s.len() >= 3, Duration::from_secs(5)).await {
        Ok(s) => s,
        Err(s) => panic!("expected 3 spans, got {s:#?}"),
    };
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let transport = if protocol == OtlpProtocol::Grpc { Transport::Grpc } else { Transport::Http };
    assert!(spans.iter().all(|s| s.trace_id == trace_id && s.transport == transport), "{spans:#?}");
    let find = |name: &str| match spans.iter().find(|s| s.name == name) {
        Some(s) => s.clone(),
        None => panic!("no span {name}: {spans:#?}"),
    };
    let (root, send, handle) = (find("lock.acquire"), find("send"), find("handle"));
    assert_eq!(root.parent_span_id, None);
    assert_eq!(send.parent_span_id.as_ref(), Some(&root.span_id));
    assert_eq!(handle.parent_span_id.as_ref(), Some(&send.span_id), "the peer's span is the sender's child");
    assert_eq!((root.instance(), handle.instance()), (Some("0"), Some("1")));
    assert_eq!(root.resource.get("service.name").map(String::as_str), Some("dmutex"));
    assert_eq!(root.attr("lock"), Some("db"));
    assert_eq!(handle.attr("msg.kind"), Some("REQUEST"));
    assert_eq!(handle.attr("lamport.ts"), Some("1"));
    let (s0, s1) = (c0.snapshot(), c1.snapshot());
    assert_eq!((s0.ended, s0.exported, s0.queued_or_dropped()), (2, 2, 0));
    assert_eq!((s1.ended, s1.exported, s1.queued_or_dropped()), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_one_trace_with_parent_link_across_a_peer_message() {
    one_trace_across_two_nodes(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_one_trace_with_parent_link_across_a_peer_message() {
    one_trace_across_two_nodes(OtlpProtocol::HttpProtobuf).await;
}

/// OTLP/gRPC to an `https://` collector whose certificate comes from a test CA: with the CA named as
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` the span arrives; with the built-in (Mozilla) roots the handshake fails and
/// the export is counted as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_an_https_collector_trusts_the_configured_ca() {
    let ca = ThrowawayCa::new("dmutex test CA").unwrap();
    let (cert, key) = ca.issue(&["127.0.0.1"]).unwrap();
    let rx = OtlpReceiver::start_tls(&cert, &key).await.expect("TLS receiver");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("collector-ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let endpoint = rx.grpc_endpoint().replacen("http://", "https://", 1);

    let export_one = |settings: OtlpSettings| async move {
        let (provider, counters) = build_tracer_provider(&settings).expect("provider");
        tracing::subscriber::with_default(Registry::default().with(otel_layer(&provider)), || {
            let span = tracing::info_span!("lock.acquire", lock = "tls");
            let _entered = span.enter();
        });
        let _ = shutdown_provider(provider, SHUTDOWN_TIMEOUT).await;
        counters.snapshot()
    };
    let mut trusting = OtlpSettings::new(endpoint.clone(), OtlpProtocol::Grpc, 0);
    trusting.tls.certificate = Some(("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.clone()));
    let stats = export_one(trusting).await;
    assert_eq!((stats.ended, stats.exported), (1, 1), "{stats:?}");
    let spans = rx.wait_for(|s| !s.is_empty(), Duration::from_secs(5)).await.expect("the span arrives");
    assert_eq!(spans[0].transport, Transport::Grpc);

    let stats = export_one(OtlpSettings::new(endpoint, OtlpProtocol::Grpc, 0)).await;
    assert_eq!(
        (stats.ended, stats.exported),
        (1, 0),
        "the test CA is not among the built-in roots: {stats:?}"
    );
    assert_eq!(rx.spans().len(), 1);
}

async fn dead_collector_costs_nothing(protocol: OtlpProtocol) {
    // A port that was just bound and released: connections are refused.
    let port = match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(a) => a.port(),
        Err(e) => panic!("bind: {e}"),
    };
    let endpoint = match protocol {
        OtlpProtocol::Grpc => format!("http://127.0.0.1:{port}"),
        OtlpProtocol::HttpProtobuf => format!("http://127.0.0.1:{port}/v1/traces"),
    };
    let (provider, counters) = match build_tracer_provider(&OtlpSettings::new(endpoint, protocol, 0)) {
        Ok(p) => p,
        Err(e) => panic!("provider: {e}"),
    };
    let started = Instant::now();
    tracing::subscriber::with_default(Registry::default().with(otel_layer(&provider)), || {
        for i in 0..1_000u64 {
            let span = tracing::info_span!("lock.acquire", i);
            let _entered = span.enter();
        }
    });
    let emitting = started.elapsed();
    assert!(emitting < Duration::from_millis(200), "emitting 1,000 spans took {emitting:?}");
    let started = Instant::now();
    let _ = shutdown_provider(provider, SHUTDOWN_TIMEOUT).await;
    let stopping = started.elapsed();
    assert!(stopping < SHUTDOWN_TIMEOUT + Duration::from_millis(600), "shutdown took {stopping:?}");
    let stats = counters.snapshot();
    assert_eq!((stats.ended, stats.exported), (1_000, 0), "{stats:?}");
    eprintln!("{protocol:?}: emitting {emitting:?}, shutdown {stopping:?}, {stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_dead_collector_neither_slows_spans_nor_stalls_shutdown() {
    dead_collector_costs_nothing(OtlpProtocol::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_dead_collector_neither_slows_spans_nor_stalls_shutdown() {
    dead_collector_costs_nothing(OtlpProtocol::HttpProtobuf).await;
}

/// The only test here that installs the global subscriber: without an endpoint there is no exporter, no
/// trace context to propagate, and shutdown is immediate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_endpoint_logs_only() {
    let cfg = TelemetryConfig { log: "warn".into(), json: true, node_id: 4 };
    let guard = match telemetry::init_with(&cfg, None) {
        Ok(g) => g,
        Err(e) => panic!("init: {e}"),
    };
    assert!(!guard.exporting());
    let span = tracing::warn_span!("lock.acquire");
    assert!(telemetry::inject(&span).is_empty());
    assert_eq!(telemetry::trace_id_of(&span), None);
    let started = Instant::now();
    assert!(guard.shutdown().await.is_ok());
    assert!(started.elapsed() < Duration::from_millis(50));
    assert!(telemetry::init_with(&cfg, None).is_err(), "a second global subscriber is refused");
}

/// A node whose log goes to a pipe (as to a file or `docker logs`) writes no ANSI escapes, even on error
/// lines, which a terminal would show in colour. The node fails at once: its peer port is taken.
#[test]
fn a_log_that_is_not_a_terminal_has_no_colour() {
    let taken = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let addr = match taken.local_addr() {
        Ok(a) => a.to_string(),
        Err(e) => panic!("local_addr: {e}"),
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dmutex"))
        .arg("node")
        .env_clear()
        .env("DMUTEX_NODE_ID", "0")
        .env("DMUTEX_PEERS", &addr)
        .env("DMUTEX_PEER_ADDR", &addr)
        .env("DMUTEX_HTTP_ADDR", "127.0.0.1:0")
        .env("DMUTEX_LOG", "info")
        .env("DMUTEX_TYPO", "warned about")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("dmutex node: {e}"),
    };
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("WARN") && log.contains("DMUTEX_TYPO"), "the warning is logged: {log}");
    assert!(log.contains("ERROR") && log.contains("node failed"), "the error is logged: {log}");
    assert!(!log.contains('\u{1b}'), "no ANSI escape in a non-terminal log: {log:?}");
    drop(taken);
}
