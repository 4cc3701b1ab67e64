//! `dmutex node`: discovers the peers if asked to, binds the listeners and runs the node
//! ([`dmutex::node::run`]) until SIGTERM/SIGINT (also as PID 1 in a container), with the built-in workload's
//! endpoint if one is configured.

use anyhow::Context as _;
use axum::routing::get;
use dmutex::config::NodeConfig;
use dmutex::experiment::runner::WorkloadResponse;
use dmutex::experiment::workload::{WorkloadConfig, WorkloadReport, WorkloadStatus, run_workload};
use dmutex::node::{NodeHandle, Routes, RunConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Runs a node until a termination signal, then shuts it down gracefully.
pub(crate) async fn run_node(mut cfg: NodeConfig) -> anyhow::Result<()> {
    if let Some(dmutex::config::Discovery::Dns { name, port }) = cfg.discovery.clone() {
        // Scaled replicas (docker compose --scale): membership from DNS, ids from the sorted addresses.
        let spec = dmutex::net::discovery::DnsSpec { name, port };
        tracing::info!(%spec, expected = ?cfg.cluster_size, "discovering peers");
        let found = dmutex::net::discovery::discover(&spec, cfg.cluster_size, Duration::from_secs(120))
            .await
            .context("DMUTEX_DISCOVERY")?;
        cfg.node_id = dmutex::algo::NodeId::new(found.me);
        cfg.peers = found
            .peers
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("DMUTEX_DISCOVERY: discovered an unusable address: {e}"))?;
        tracing::info!(node = found.me, peers = ?found.peers, "discovered the cluster");
    }
    let peer_listener = TcpListener::bind(cfg.peer_addr)
        .await
        .with_context(|| format!("DMUTEX_PEER_ADDR: cannot listen on {}", cfg.peer_addr))?;
    let http_listener = TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("DMUTEX_HTTP_ADDR: cannot listen on {}", cfg.http_addr))?;
    let routes = workload_routes(&cfg);
    let config = RunConfig { routes, ..RunConfig::new(cfg) };
    let signal = async {
        let signal = termination_signal().await;
        tracing::info!(signal, "termination signal");
    };
    dmutex::node::run(peer_listener, http_listener, config, signal).await.context("http server")?;
    tracing::info!("stopped");
    Ok(())
}

/// The built-in workload, if configured: started once the node runs, its status served at `/v1/workload`.
fn workload_routes(cfg: &NodeConfig) -> Option<Routes> {
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
    let out = w.out.clone();
    let node = cfg.node_id.get();
    Some(Box::new(move |handle: &NodeHandle| {
        let (tx, rx) = tokio::sync::watch::channel(WorkloadStatus::waiting(iterations));
        let report: Arc<Mutex<Option<WorkloadReport>>> = Arc::new(Mutex::new(None));
        let slot = report.clone();
        let svc = handle.clone();
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
        axum::Router::new().route(
            "/v1/workload",
            get(move || {
                let status = *rx.borrow();
                let report = report.lock().ok().and_then(|r| r.clone());
                std::future::ready(axum::Json(WorkloadResponse { status, report }))
            }),
        )
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
