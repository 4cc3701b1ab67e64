//! `dmutex flow`: one acquire's messages as a sequence diagram, from the flow records every node keeps.

use anyhow::Context as _;
use clap::Args;
use dmutex::api::client::{Client, ClientError};
use dmutex::obs::flow::{DEFAULT_CAPACITY, FlowRecord, mermaid, pick_acquire, svg};
use std::time::Duration;

/// How long each node may take to answer.
const FLOW_TIMEOUT: Duration = Duration::from_secs(10);

/// `dmutex flow`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Every node keeps its recent peer messages and local events (GET /v1/flow?lock=NAME). This command fetches
them from every endpoint, picks the latest acquire of the lock that entered the critical section (or the
one named by --acquire: a trace id, or node-incarnation-request when no tracing backend is configured),
merges them by time and prints a sequence diagram.

With API tokens on the nodes, set DMUTEX_TOKEN (or --token-file) to a token with the read scope; for https://
endpoints signed by a private CA, give the CA bundle with --cacert (DMUTEX_CACERT).

Example:
  dmutex flow --endpoints http://127.0.0.1:8080,http://127.0.0.2:8080,http://127.0.0.3:8080 --lock db")]
pub(crate) struct FlowArgs {
    /// Comma-separated node HTTP endpoints (every node, so that every message appears).
    #[arg(
        long,
        env = "DMUTEX_ENDPOINTS",
        value_delimiter = ',',
        required = true,
        value_name = "URL,URL,..."
    )]
    pub(crate) endpoints: Vec<String>,
    /// The lock whose message flow to draw.
    #[arg(long, value_name = "NAME")]
    pub(crate) lock: String,
    /// The acquire to draw (default: the latest that entered the critical section).
    #[arg(long, value_name = "ID")]
    pub(crate) acquire: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FlowFormat::Mermaid)]
    pub(crate) format: FlowFormat,
    /// The CA bundle and the token (a token needs the read scope).
    #[command(flatten)]
    pub(crate) security: crate::cmd::ClientSecurityArgs,
}

/// Output of `dmutex flow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum FlowFormat {
    /// A Mermaid `sequenceDiagram` (renders in GitHub Markdown).
    Mermaid,
    /// A standalone SVG.
    Svg,
}

/// Runs `dmutex flow`: prints the diagram; returns the process exit code.
pub(crate) async fn run(args: &FlowArgs) -> i32 {
    match diagram(args).await {
        Ok(text) => {
            print!("{text}");
            0
        }
        Err(e) => {
            eprintln!("dmutex flow: {e:#}");
            1
        }
    }
}

/// Fetches every endpoint's records of the lock, picks one acquire, renders it.
async fn diagram(args: &FlowArgs) -> anyhow::Result<String> {
    let mut all = Vec::new();
    let mut first: Option<Client> = None;
    let security = args.security.security().map_err(anyhow::Error::msg)?;
    for endpoint in &args.endpoints {
        let base = endpoint.trim().trim_end_matches('/');
        let client = match &first {
            None => Client::with_security(base, &security).map(|c| c.with_timeout(FLOW_TIMEOUT)),
            Some(c) => c.at(base),
        }
        .with_context(|| format!("endpoint {base:?}"))?;
        let body = match client.flow(&args.lock).await {
            Ok(body) => body,
            Err(ClientError::Api { status: status @ (401 | 403), message, .. }) => {
                let hint = if status == 401 {
                    "set DMUTEX_TOKEN or --token-file"
                } else {
                    "the token needs the read scope"
                };
                anyhow::bail!("GET {base}/v1/flow: HTTP {status}: {message} ({hint})");
            }
            Err(ClientError::Api { status, .. }) => {
                let status =
                    reqwest::StatusCode::from_u16(status).map_or(status.to_string(), |s| s.to_string());
                anyhow::bail!("GET {base}/v1/flow: HTTP {status}");
            }
            // The transport error's own chain says why (refused, timed out); the URL is in the context already.
            Err(ClientError::Transport { source, .. }) => {
                return Err(anyhow::Error::new(source).context(format!("GET {base}/v1/flow")));
            }
            Err(e) => return Err(e).with_context(|| format!("GET {base}/v1/flow")),
        };
        all.extend(body.records);
        first.get_or_insert(client);
    }
    let id = pick_acquire(&all, args.acquire.as_deref())
        .with_context(|| format!("no recorded acquire of lock {:?} on these nodes", args.lock))?;
    let records: Vec<FlowRecord> =
        all.into_iter().filter(|r| r.trace_id.as_deref() == Some(id.as_str())).collect();
    if records.is_empty() {
        anyhow::bail!("no records of acquire {id} (the nodes keep only the last {DEFAULT_CAPACITY} each)");
    }
    Ok(match args.format {
        FlowFormat::Mermaid => mermaid(&records),
        FlowFormat::Svg => svg(&records),
    })
}
