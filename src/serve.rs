//! `dmutex node`: binds the listeners, starts transport, node loop, HTTP API and (optionally) the built-in
//! workload, and shuts all of it down on SIGTERM/SIGINT (also as PID 1 in a container).

use anyhow::Context as _;
use dmutex::api::router::{AppState, router};
use dmutex::config::NodeConfig;
use dmutex::experiment::runner::WorkloadResponse;
use dmutex::experiment::workload::{WorkloadConfig, WorkloadReport, WorkloadStatus, run_workload};
use dmutex::net::transport::{Transport, TransportConfig};
use dmutex::node::{Node, NodeSettings, PeerMsg, new_incarnation};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Runs a node until a termination signal, then shuts it down gracefully.
pub async fn run_node(mut cfg: NodeConfig) -> anyhow::Result<()> {
    if let Some(dmutex::config::Discovery::Dns { name, port }) = cfg.discovery.clone() {
        // Scaled replicas (docker compose --scale): membership from DNS, ids from the sorted addresses.
        let spec = dmutex::net::discovery::DnsSpec { name, port };
        tracing::info!(%spec, expected = ?cfg.cluster_size, "discovering peers");
        let found = dmutex::net::discovery::discover(&spec, cfg.cluster_size, Duration::from_secs(120))
            .await
            .context("DMUTEX_DISCOVERY")?;
        cfg.node_id = dmutex::algo::NodeId(found.me);
        cfg.peers = found
            .peers
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("DMUTEX_DISCOVERY: discovered an unusable address: {e}"))?;
        tracing::info!(node = found.me, peers = ?found.peers, "discovered the cluster");
    }
    let incarnation = new_incarnation();
    let me = cfg.node_id;
    let peers: Vec<String> = cfg.peers.iter().map(ToString::to_string).collect();
    let peer_listener = TcpListener::bind(cfg.peer_addr)
        .await
        .with_context(|| format!("DMUTEX_PEER_ADDR: cannot listen on {}", cfg.peer_addr))?;
    let http_listener = TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("DMUTEX_HTTP_ADDR: cannot listen on {}", cfg.http_addr))?;
    tracing::info!(
        node = me.0,
        incarnation = incarnation.0,
        peers = ?peers,
        peer_addr = %cfg.peer_addr,
        http_addr = %cfg.http_addr,
        algorithm = %cfg.algorithm,
        "dmutex node starting"
    );

    let shared = Node::shared(me, incarnation);
    let clock = shared.clone();
    let mut tcfg = TransportConfig::new(me, incarnation, cfg.cluster_name.clone(), peers.clone());
    tcfg.secret = cfg.cluster_secret.as_ref().map(|s| s.expose().to_string());
    tcfg.max_frame = cfg.max_frame_bytes;
    let (transport, inbound) =
        Transport::start::<PeerMsg>(tcfg, peer_listener, Arc::new(move || clock.clock()));
    let settings = NodeSettings {
        me,
        incarnation,
        peers,
        cluster: cfg.cluster_name.clone(),
        default_timeout: cfg.default_timeout,
        default_ttl: cfg.default_ttl,
        max_ttl: cfg.max_ttl.unwrap_or(Duration::from_secs(24 * 3600)),
        peer_down_after: Duration::from_millis(1000),
        default_algorithm: cfg.algorithm,
        lamport_ack_elision: cfg.lamport_ack_elision,
    };
    let (handle, node_task) = Node::spawn(settings, transport, inbound, shared);

    let workload = start_workload(&cfg, &handle);
    let app = router(AppState { node: handle.clone(), workload, algorithms: cfg.algorithms.clone() });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(http_listener, app).with_graceful_shutdown(async {
        let _ = stop_rx.await;
    });
    let server_task = tokio::spawn(async move { server.await });

    let signal = termination_signal().await;
    tracing::info!(signal, "shutting down: refusing new acquires, answering waiters, releasing leases");
    let grace = cfg.shutdown_grace;
    if tokio::time::timeout(grace, handle.shutdown()).await.is_err() {
        tracing::warn!("node shutdown took longer than {grace:?}");
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(2), server_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("http server: {e}"),
        Ok(Err(e)) => tracing::warn!("http server task: {e}"),
        Err(_) => tracing::warn!("http server did not stop within 2 s"),
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), node_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// Starts the built-in workload if configured; returns the `/v1/workload` renderer.
fn start_workload(
    cfg: &NodeConfig,
    handle: &dmutex::node::NodeHandle,
) -> Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>> {
    let w = &cfg.workload;
    if w.iterations == 0 {
        return None;
    }
    let iterations = u32::try_from(w.iterations).unwrap_or(u32::MAX);
    let wcfg = WorkloadConfig {
        iterations,
        cs_ms: w.cs.as_millis() as u64,
        lock: w.lock.clone(),
        counter_file: w.counter_file.clone().unwrap_or_else(|| std::env::temp_dir().join("dmutex-counter")),
        algorithm: w.algorithm,
        acquire_timeout: Duration::from_secs(120),
        start_file: w.start_file.clone(),
    };
    let (tx, rx) = tokio::sync::watch::channel(WorkloadStatus::waiting(iterations));
    let report: Arc<Mutex<Option<WorkloadReport>>> = Arc::new(Mutex::new(None));
    let slot = report.clone();
    let out = w.out.clone();
    let svc = handle.clone();
    let node = cfg.node_id.0;
    tokio::spawn(async move {
        let r = run_workload(svc, node, wcfg, tx).await;
        if let Some(path) = out {
            match serde_json::to_vec_pretty(&r) {
                Ok(bytes) => {
                    if let Err(e) = std::fs::write(&path, bytes) {
                        tracing::warn!(path = %path.display(), "cannot write workload report: {e}");
                    }
                }
                Err(e) => tracing::warn!("cannot encode workload report: {e}"),
            }
        }
        if let Ok(mut s) = slot.lock() {
            *s = Some(r);
        }
    });
    Some(Arc::new(move || {
        let status = *rx.borrow();
        let report = report.lock().ok().and_then(|r| r.clone());
        serde_json::to_value(WorkloadResponse { status, report }).unwrap_or(serde_json::Value::Null)
    }))
}

/// Waits for SIGTERM or SIGINT; returns its name.
async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install the SIGTERM handler: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}
