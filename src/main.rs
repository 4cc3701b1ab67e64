//! `dmutex`: parses the command line, loads configuration, starts logging, and runs a subcommand.

use clap::Parser;
use dmutex::cli::{AlgorithmChoice, Cli, Command};
use dmutex::config::{ConfigSources, LogFormat, NodeConfig};
use std::process::ExitCode;

mod serve;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dmutex: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match cli.command {
        Command::Lock(args) => match runtime.block_on(dmutex::client::run_lock(&args)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("dmutex lock: {e:#}");
                1
            }
        },
        Command::Health(args) => runtime.block_on(dmutex::client::run_health(&args)),
        Command::Node(args) => {
            let loaded =
                ConfigSources::from_process(args.config.as_deref(), &args.overrides()).and_then(|sources| {
                    let unknown = sources.unknown_env_vars();
                    NodeConfig::load(&sources).map(|cfg| (cfg, unknown))
                });
            match loaded {
                Ok((cfg, unknown)) => {
                    init_logging(&cfg.log, cfg.log_format == LogFormat::Json);
                    for var in unknown {
                        tracing::warn!(variable = %var, "ignoring unknown DMUTEX_* variable");
                    }
                    match runtime.block_on(serve::run_node(cfg)) {
                        Ok(()) => 0,
                        Err(e) => {
                            tracing::error!("node failed: {e:#}");
                            eprintln!("dmutex node: {e:#}");
                            1
                        }
                    }
                }
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
            let cargs = dmutex::cluster::ClusterArgs {
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
            };
            match runtime.block_on(dmutex::cluster::run_cluster(&cargs)) {
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

fn init_logging(filter: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
