//! `dmutex`: parses the command line, loads configuration, starts logging, and runs a subcommand.

use clap::Parser;
use dmutex::cli::{AlgorithmChoice, Cli, Command};
use dmutex::config::{ConfigSources, LogFormat, NodeConfig};
use std::process::ExitCode;

mod serve;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node is one event loop plus a few I/O tasks that hand messages to each other: on a single thread
    // those hand-offs are plain queue pushes, with no cross-thread wake-ups (measured: see BENCHMARKS.md).
    let single = matches!(cli.command, Command::Node(_)) && std::env::var("DMUTEX_WORKER_THREADS").is_err();
    let threads: usize =
        std::env::var("DMUTEX_WORKER_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let built = if single {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dmutex: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match cli.command {
        Command::Lock(args) => match runtime.block_on(dmutex::api::client::run_lock(&args)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("dmutex lock: {e:#}");
                1
            }
        },
        Command::Health(args) => runtime.block_on(dmutex::api::client::run_health(&args)),
        Command::Flow(args) => match runtime.block_on(dmutex::obs::flow::run_flow(&args)) {
            Ok(text) => {
                print!("{text}");
                0
            }
            Err(e) => {
                eprintln!("dmutex flow: {e:#}");
                1
            }
        },
        Command::Node(args) => {
            let loaded =
                ConfigSources::from_process(args.config.as_deref(), &args.overrides()).and_then(|sources| {
                    let unknown = sources.unknown_env_vars();
                    NodeConfig::load(&sources).map(|cfg| (cfg, unknown))
                });
            match loaded {
                Ok((cfg, unknown)) => runtime.block_on(async move {
                    // Logs and (when OTEL_EXPORTER_OTLP_ENDPOINT is set) the OTLP trace pipeline; inside the
                    // runtime, which the gRPC exporter needs.
                    let tcfg = dmutex::obs::telemetry::TelemetryConfig {
                        log: cfg.log.clone(),
                        json: cfg.log_format == LogFormat::Json,
                        node_id: cfg.node_id.0,
                    };
                    // With DNS discovery the node id is only known after discovery, which logs through this
                    // subscriber: name the instance by its host name (the container) instead.
                    let otlp = dmutex::obs::telemetry::OtlpSettings::from_env(tcfg.node_id).map(|o| {
                        o.map(|mut o| {
                            if cfg.discovery.is_some() {
                                if let Some(host) = hostname::get().ok().and_then(|h| h.into_string().ok()) {
                                    o.instance_id = host;
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
                    let code = match serve::run_node(cfg).await {
                        Ok(()) => 0,
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
                }),
                Err(e) => {
                    eprintln!("dmutex node: invalid configuration: {e}");
                    e.exit_code()
                }
            }
        }
        Command::Cluster(args) => {
            let algorithm = match args.algorithm {
                AlgorithmChoice::All => None,
                AlgorithmChoice::One(a) => Some(a),
            };
            let cargs = dmutex::experiment::runner::ClusterArgs {
                nodes: args.nodes,
                iterations: u32::try_from(args.iterations).unwrap_or(u32::MAX),
                cs_ms: args.cs_ms.unwrap_or(0),
                algorithm,
                subnet: args.subnet.clone(),
                peer_port: args.peer_port,
                http_port: args.http_port,
                out: args.out.clone(),
                keep: args.keep,
                binary: None,
                sweep: args.sweep.clone(),
                lamport_ack_elision: args.lamport_ack_elision,
            };
            match runtime.block_on(dmutex::experiment::runner::run_cluster(&cargs)) {
                Ok(true) => 0,
                Ok(false) => 1,
                Err(e) => {
                    eprintln!("dmutex cluster: {e:#}");
                    1
                }
            }
        }
    };
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
