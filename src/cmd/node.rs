//! `dmutex node`: loads the configuration, starts logging and the trace pipeline, runs the node until a
//! termination signal, then flushes the traces.

use clap::Args;
use dmutex::config::{ConfigError, ConfigSources, LogFormat, NodeConfig};
use dmutex::obs::telemetry::{OtlpSettings, TelemetryConfig};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// `dmutex node`: every flag overrides the DMUTEX_* variable of the same name and the configuration file.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct NodeArgs {
    /// TOML configuration file (default: $DMUTEX_CONFIG, if set).
    #[arg(long, value_name = "PATH")]
    pub(crate) config: Option<PathBuf>,
    /// This node's id, its index in the peer list (DMUTEX_NODE_ID; default: derived from the host name).
    #[arg(long, value_name = "N")]
    pub(crate) node_id: Option<u16>,
    /// Comma-separated host:port of every node in node-id order, this one included (DMUTEX_PEERS).
    #[arg(long, value_name = "LIST")]
    pub(crate) peers: Option<String>,
    /// Peer listen address (DMUTEX_PEER_ADDR, default 0.0.0.0:7070).
    #[arg(long, value_name = "ADDR")]
    pub(crate) peer_addr: Option<String>,
    /// HTTP listen address (DMUTEX_HTTP_ADDR, default 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR")]
    pub(crate) http_addr: Option<String>,
    /// Default algorithm: lamport, ricart-agrawala or probable-owner (DMUTEX_ALGORITHM, default lamport).
    #[arg(long, value_name = "A")]
    pub(crate) algorithm: Option<String>,
    /// Log filter, e.g. "info" or "dmutex=debug" (DMUTEX_LOG, default info).
    #[arg(long, value_name = "FILTER")]
    pub(crate) log: Option<String>,
}

impl NodeArgs {
    /// The flags given, as configuration overrides keyed like [`dmutex::config::KEYS`].
    pub(crate) fn overrides(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let mut put = |key: &str, value: Option<String>| {
            if let Some(v) = value {
                map.insert(key.to_string(), v);
            }
        };
        put("node_id", self.node_id.map(|n| n.to_string()));
        put("peers", self.peers.clone());
        put("peer_addr", self.peer_addr.clone());
        put("http_addr", self.http_addr.clone());
        put("algorithm", self.algorithm.clone());
        put("log", self.log.clone());
        map
    }
}

/// Runs `dmutex node`; returns the process exit code (a configuration error's own code, see
/// [`dmutex::config`]).
pub(crate) async fn run(args: &NodeArgs) -> i32 {
    let loaded = ConfigSources::from_process(args.config.as_deref(), &args.overrides()).and_then(|sources| {
        let unknown = sources.unknown_env_vars();
        NodeConfig::load(&sources).map(|cfg| (cfg, unknown))
    });
    let (cfg, unknown) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("dmutex node: invalid configuration: {e}");
            return e.exit_code();
        }
    };
    // The API's certificate files are parsed here, not by the configuration: a bad one is a configuration
    // error all the same (exit 2, naming the DMUTEX_TLS_* key).
    let https = match cfg.security.api_tls.as_ref().map(dmutex::api::https::HttpsConfig::load).transpose() {
        Ok(https) => https,
        Err(e) => {
            eprintln!("dmutex node: invalid configuration: {e}");
            return 2;
        }
    };
    // Logs and (when OTEL_EXPORTER_OTLP_ENDPOINT is set) the OTLP trace pipeline; inside the runtime, which
    // the gRPC exporter needs.
    let tcfg = TelemetryConfig {
        log: cfg.log.clone(),
        json: cfg.log_format == LogFormat::Json,
        node_id: cfg.node_id.get(),
    };
    // With DNS discovery the node id is only known after discovery, which logs through this subscriber: the
    // resource names the host (the container) from the start, and the node id (`dmutex.node_id`) from the
    // moment discovery gives it (`run_node` sets it on the guard's handle).
    let otlp = OtlpSettings::from_env(tcfg.node_id).map(|o| {
        o.map(|mut o| {
            if cfg.discovery.is_some() {
                o.node_id = None;
                if let Some(host) = hostname::get().ok().and_then(|h| h.into_string().ok()) {
                    o.resource_attributes.push(("host.name".into(), host));
                }
            }
            o
        })
    });
    let guard = match otlp.and_then(|o| dmutex::obs::telemetry::init_with(&tcfg, o)) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("dmutex node: invalid telemetry configuration: {e}");
            return 2;
        }
    };
    for var in unknown {
        tracing::warn!(variable = %var, "ignoring unknown DMUTEX_* variable");
    }
    // Credential files are read at start (the configuration only checked they are readable): a file that
    // does not load is a configuration error, named by its key.
    if let Err(e) = dmutex::net::peer_tls::PeerTls::from_config(&cfg.security) {
        eprintln!("dmutex node: invalid configuration: {e}");
        return 2;
    }
    let code = match crate::serve::run_node(cfg, https, guard.late_node_id()).await {
        Ok(()) => 0,
        // A credential file that does not load: a configuration error, named by its key.
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            tracing::error!("invalid configuration: {e:#}");
            eprintln!("dmutex node: invalid configuration: {e:#}");
            e.downcast_ref::<ConfigError>().map_or(2, ConfigError::exit_code)
        }
        Err(e) => {
            tracing::error!("node failed: {e:#}");
            eprintln!("dmutex node: {e:#}");
            1
        }
    };
    // After the node stopped (its last spans ended): flush, bounded by SHUTDOWN_TIMEOUT.
    let exporting = guard.exporting();
    match guard.shutdown().await {
        Ok(stats) if exporting => tracing::info!(
            spans_ended = stats.ended,
            spans_exported = stats.exported,
            spans_failed = stats.export_failed,
            spans_lost = stats.queued_or_dropped(),
            "trace export flushed"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("trace export: {e}"),
    }
    code
}
