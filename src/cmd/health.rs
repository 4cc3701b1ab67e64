//! `dmutex health`: a container HEALTHCHECK that needs no curl in the image.

use crate::cmd::DEFAULT_ENDPOINT;
use clap::Args;
use dmutex::api::client::Client;
use reqwest::StatusCode;
use std::time::Duration;

/// `dmutex health`.
#[derive(Debug, Clone, Args)]
pub(crate) struct HealthArgs {
    /// Node HTTP endpoint.
    #[arg(long, env = "DMUTEX_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    pub(crate) endpoint: String,
    /// Probe readiness (/readyz: the node has joined its cluster) instead of liveness (/healthz).
    #[arg(long)]
    pub(crate) ready: bool,
    /// Give up after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s", value_name = "DURATION")]
    pub(crate) timeout: Duration,
}

/// Runs `dmutex health`: 0 if `/healthz` (or `/readyz` with `--ready`) answers 200, else 1.
pub(crate) async fn run(args: &HealthArgs) -> i32 {
    let path = if args.ready { "readyz" } else { "healthz" };
    let client = match Client::new(&args.endpoint) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dmutex health: {e}");
            return 1;
        }
    };
    match client.probe(path, args.timeout).await {
        Ok(status) if status == StatusCode::OK => 0,
        Ok(status) => {
            eprintln!("dmutex health: /{path} answered {status}");
            1
        }
        Err(e) => {
            eprintln!("dmutex health: {e}");
            1
        }
    }
}
