//! `dmutex node`: binds the HTTP listener, discovers the peers if asked to (serving `/healthz`, and 503s that
//! say what discovery waits for, meanwhile), binds the peer listener and runs the node ([`dmutex::node::run`])
//! until SIGTERM/SIGINT (also as PID 1 in a container), with the built-in workload's endpoint if one is
//! configured.

use anyhow::Context as _;
use axum::routing::get;
use dmutex::algo::NodeId;
use dmutex::api::https::{HttpsConfig, TlsListener};
use dmutex::config::{NodeConfig, NodeIdSource};
use dmutex::experiment::runner::WorkloadResponse;
use dmutex::experiment::workload::{WorkloadConfig, WorkloadReport, WorkloadStatus, run_workload};
use dmutex::node::{NodeHandle, Routes, RunConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// Runs a node until a termination signal, then shuts it down gracefully. `https`: the API's TLS
/// configuration, loaded from `cfg.security.api_tls` by the caller (`None`: plain HTTP). `node_id`: told the
/// node id when DNS discovery gives it (the trace resource's `dmutex.node_id` from then on).
pub(crate) async fn run_node(
    mut cfg: NodeConfig,
    https: Option<HttpsConfig>,
    node_id: dmutex::obs::telemetry::LateNodeId,
) -> anyhow::Result<()> {
    if let Some(https) = &https {
        // Checked from the start, also while discovery runs.
        https.watch(cfg.security.credentials_reload);
    }
    // Loaded before anything runs, so that a bad tokens file is a configuration error (exit 2) at once.
    let auth = dmutex::api::auth::ApiAuth::from_config(&cfg.security)?;
    let http_listener = TcpListener::bind(cfg.http_addr)
        .await
        .with_context(|| format!("DMUTEX_HTTP_ADDR: cannot listen on {}", cfg.http_addr))?;
    let mut http_listener = Some(http_listener);
    if let Some(dmutex::config::Discovery::Dns { name, port }) = cfg.discovery.clone() {
        // Scaled replicas (docker compose --scale): peers from DNS, ids from the replicas' names (or, without
        // names, from the sorted addresses).
        let spec = dmutex::net::discovery::DnsSpec { name, port };
        tracing::info!(%spec, expected = ?cfg.bootstrap_expect, "discovering peers");
        let listener = http_listener.take().context("the HTTP listener")?;
        let (found, listener) = tokio::select! {
            r = discover_serving(&spec, cfg.bootstrap_expect, listener, https.clone()) => r?,
            signal = termination_signal() => {
                tracing::info!(signal, "termination signal during discovery");
                return Ok(());
            }
        };
        http_listener = Some(listener);
        cfg.node_id = discovered_id(&cfg, &found, &spec)?;
        node_id.set(cfg.node_id.get());
        cfg.node_id_source = NodeIdSource::Discovery;
        let unusable = |e| anyhow::anyhow!("DMUTEX_DISCOVERY: discovered an unusable address: {e}");
        cfg.peers = found.peers.iter().map(|p| p.parse()).collect::<Result<_, _>>().map_err(unusable)?;
        if found.joins && cfg.advertise_addr.is_none() {
            // Beyond the forming replicas: join the running view through the seeds, reachable at this address.
            cfg.advertise_addr = Some(found.advertise.parse().map_err(unusable)?);
        }
        tracing::info!(
            node = found.me, peers = ?found.peers, rule = ?found.rule, joins = found.joins,
            "discovered the cluster"
        );
    }
    let http_listener = http_listener.context("the HTTP listener")?;
    let peer_listener = TcpListener::bind(cfg.peer_addr)
        .await
        .with_context(|| format!("DMUTEX_PEER_ADDR: cannot listen on {}", cfg.peer_addr))?;
    let routes = workload_routes(&cfg);
    let config = RunConfig { routes, https, auth, ..RunConfig::new(cfg) };
    let signal = async {
        let signal = termination_signal().await;
        tracing::info!(signal, "termination signal");
    };
    dmutex::node::run(peer_listener, http_listener, config, signal).await.context("http server")?;
    tracing::info!("stopped");
    Ok(())
}

/// The node id DNS discovery gives this node (from its replica name, or its place among the sorted
/// addresses). A configured `DMUTEX_NODE_ID` is a promise that the id is stable: when discovery gives another
/// one, that is an error, not a silent renumbering.
fn discovered_id(
    cfg: &NodeConfig,
    found: &dmutex::net::discovery::Discovered,
    spec: &dmutex::net::discovery::DnsSpec,
) -> anyhow::Result<NodeId> {
    use dmutex::net::discovery::IdRule;
    if cfg.node_id_source == NodeIdSource::Configured && cfg.node_id.get() != found.me {
        let how = match found.rule {
            IdRule::ReplicaName => "its replica name gives it id",
            IdRule::SortedPlace => "places this node among the sorted addresses at",
        };
        anyhow::bail!(
            "DMUTEX_NODE_ID: {} is configured, but DNS discovery ({spec}) {how} {}; with DMUTEX_DISCOVERY the id \
             is that one (unset DMUTEX_NODE_ID)",
            cfg.node_id.get(),
            found.me
        );
    }
    Ok(NodeId::new(found.me))
}

/// Runs DNS discovery while the HTTP port already answers: `/healthz` 200, `/readyz`, `/v1/cluster` and the
/// lock calls 503 saying what discovery waits for. Gives the listener back for the node once it settles
/// (connections that arrive in between wait in the listen backlog).
async fn discover_serving(
    spec: &dmutex::net::discovery::DnsSpec,
    expected: Option<usize>,
    listener: TcpListener,
    https: Option<HttpsConfig>,
) -> anyhow::Result<(dmutex::net::discovery::Discovered, TcpListener)> {
    use dmutex::net::discovery::{DiscoveryOptions, SystemResolver, discover_reporting};
    let listener = listener.into_std().context("the HTTP listener")?;
    let serving = TcpListener::from_std(listener.try_clone().context("the HTTP listener")?)?;
    let (waiting, reason) = tokio::sync::watch::channel(format!("waiting for DNS discovery ({spec})"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let app = dmutex::api::waiting_router(reason);
        let stopped = async {
            let _ = stopped.await;
        };
        let _ = match https {
            Some(https) => match TlsListener::new(serving, https) {
                Ok(tls) => axum::serve(tls, app).with_graceful_shutdown(stopped).await,
                Err(e) => Err(e),
            },
            None => axum::serve(serving, app).with_graceful_shutdown(stopped).await,
        };
    });
    let found = discover_reporting(
        &SystemResolver,
        spec,
        expected,
        Duration::from_secs(120),
        DiscoveryOptions::default(),
        |what: &str| {
            waiting.send_replace(what.to_string());
        },
    )
    .await;
    // Stop the waiting server; connections still open on it (keep-alive) get a bounded grace.
    let _ = stop.send(());
    let abort = server.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), server).await.is_err() {
        abort.abort();
    }
    let found = found.context("DMUTEX_DISCOVERY")?;
    Ok((found, TcpListener::from_std(listener)?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use dmutex::config::ConfigSources;

    fn config(env: &[(&str, &str)]) -> NodeConfig {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        NodeConfig::load(&ConfigSources { env, ..ConfigSources::default() }).expect("configuration")
    }

    #[test]
    fn discovery_never_renumbers_a_configured_node_id() {
        use dmutex::net::discovery::{Discovered, DnsSpec, IdRule};
        let spec = DnsSpec { name: "node".into(), port: 7070 };
        let found = |me, rule| Discovered { me, peers: vec![], advertise: String::new(), rule, joins: false };
        let derived = config(&[("DMUTEX_DISCOVERY", "dns:node:7070")]);
        assert_eq!(discovered_id(&derived, &found(2, IdRule::SortedPlace), &spec).unwrap(), NodeId::new(2));
        let configured = config(&[("DMUTEX_DISCOVERY", "dns:node:7070"), ("DMUTEX_NODE_ID", "1")]);
        assert_eq!(
            discovered_id(&configured, &found(1, IdRule::ReplicaName), &spec).unwrap(),
            NodeId::new(1)
        );
        let e = discovered_id(&configured, &found(2, IdRule::SortedPlace), &spec).unwrap_err().to_string();
        assert!(
            e.starts_with("DMUTEX_NODE_ID: 1 is configured, but DNS discovery (dns:node:7070) places"),
            "{e}"
        );
        let e = discovered_id(&configured, &found(2, IdRule::ReplicaName), &spec).unwrap_err().to_string();
        assert!(e.contains("its replica name gives it id 2"), "{e}");
    }
}
