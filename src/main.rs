//! `dmutex`: parses the command line and dispatches. (Provisional: `node` and `cluster` are wired by the lead.)

use clap::Parser;
use dmutex::cli::{Cli, Command};
use dmutex::config::{ConfigSources, NodeConfig};
use std::process::ExitCode;

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
                    for var in sources.unknown_env_vars() {
                        eprintln!("dmutex node: warning: ignoring unknown variable {var}");
                    }
                    NodeConfig::load(&sources)
                });
            match loaded {
                Ok(cfg) => {
                    eprintln!(
                        "dmutex node: configuration OK (the node itself is not wired in yet): {cfg:#?}"
                    );
                    1
                }
                Err(e) => {
                    eprintln!("dmutex node: {e}");
                    e.exit_code()
                }
            }
        }
        Command::Cluster(_) => {
            eprintln!("dmutex cluster: not wired in yet");
            1
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
