//! `dmutex`: parses the command line, builds the runtime and hands over to the command (see [`cmd`]).

use clap::Parser;
use cmd::{Cli, Command};
use std::process::ExitCode;

mod cmd;
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
    let code = runtime.block_on(cmd::run(cli.command));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
