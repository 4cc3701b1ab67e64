//! `dmutex cluster`: the experiment of the original programs on a local cluster of node processes (see
//! [`dmutex::experiment::runner`]).

use clap::Args;
use dmutex::algo::Algorithm;
use dmutex::experiment::runner::{self, StartMode, run_cluster};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Which algorithms `dmutex cluster` runs: one, or each in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AlgorithmChoice {
    /// Every algorithm, one run each, in [`Algorithm::ALL`] order.
    All,
    /// A single algorithm.
    One(Algorithm),
}

impl AlgorithmChoice {
    /// The algorithms to run, in order.
    pub(crate) fn algorithms(self) -> Vec<Algorithm> {
        match self {
            AlgorithmChoice::All => Algorithm::ALL.to_vec(),
            AlgorithmChoice::One(a) => vec![a],
        }
    }
}

impl FromStr for AlgorithmChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("all") {
            Ok(AlgorithmChoice::All)
        } else {
            s.parse().map(AlgorithmChoice::One)
        }
    }
}

impl fmt::Display for AlgorithmChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AlgorithmChoice::All => f.write_str("all"),
            AlgorithmChoice::One(a) => a.fmt(f),
        }
    }
}

/// A count that must be at least 1 (clap's range parser would print the upper bound, 2⁶⁴ − 1).
fn at_least_one(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1: every node makes at least one entry".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// `dmutex cluster`: local multi-process cluster on loopback addresses.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClusterArgs {
    /// Number of nodes (1 to 254).
    #[arg(long, default_value_t = 5, value_name = "N",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=254))]
    pub(crate) nodes: usize,
    /// Critical sections each node enters (at least 1).
    #[arg(long, default_value_t = 10, value_name = "K", value_parser = at_least_one)]
    pub(crate) iterations: u64,
    /// Time spent inside each critical section, written like every duration of the CLI (`0s`, `5ms`, `1s`)
    /// [default: 0].
    #[arg(long, value_parser = whole_milliseconds, value_name = "DURATION", conflicts_with = "cs_ms")]
    pub(crate) cs: Option<u64>,
    /// The same in milliseconds, the original programs' spelling (`--cs-ms 5` is `--cs 5ms`).
    #[arg(long, value_name = "MS")]
    pub(crate) cs_ms: Option<u64>,
    /// When the nodes' workloads start: "together" at one instant once every node is ready, so all contend
    /// from the first entry; "staggered": each as soon as it is ready (tens of ms apart, as in the original
    /// programs), so with short critical sections the first node makes many entries alone.
    #[arg(long, default_value_t = StartMode::Together, value_name = "together|staggered")]
    pub(crate) start: StartMode,
    /// Algorithm to run, or "all" to run each in turn.
    #[arg(long, default_value = "all", value_name = "A|all")]
    pub(crate) algorithm: AlgorithmChoice,
    /// First three octets of the loopback addresses: node i listens on SUBNET.(i+1).
    #[arg(long, default_value = "127.0.0", value_name = "A.B.C")]
    pub(crate) subnet: String,
    /// Peer port of every node.
    #[arg(long, default_value_t = 7070, value_name = "PORT")]
    pub(crate) peer_port: u16,
    /// HTTP port of every node.
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub(crate) http_port: u16,
    /// Write the results into DIR and keep them: results.json and SVG charts (Gantt, latency, messages; with
    /// --sweep also sweep.csv and the sweep charts). The node logs are not written there (see --keep).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Comma-separated cluster sizes to run one after another (e.g. 3,5,10,20,40), instead of --nodes; every
    /// size runs every requested algorithm.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub(crate) sweep: Vec<usize>,
    /// Keep the run's working directory after a successful run: the node logs and the counter file, in
    /// $TMPDIR/dmutex-cluster-<run> (printed). A failed run always keeps it and prints where.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Lamport's footnote option in every node: no REPLY to a REQUEST when a message stamped later was already
    /// sent to its sender (fewer than 3(N−1) messages per entry under contention).
    #[arg(long)]
    pub(crate) lamport_ack_elision: bool,
    /// `DMUTEX_TOKEN` (read from the environment only): sent with the runner's calls to its nodes, for nodes
    /// that inherit a `DMUTEX_API_TOKENS_FILE` (the token needs the read and admin scopes).
    #[arg(skip = std::env::var("DMUTEX_TOKEN").ok().filter(|t| !t.trim().is_empty()).map(crate::cmd::Secret))]
    pub(crate) token: Option<crate::cmd::Secret>,
    /// Mutual TLS on the peer links: generates a throwaway CA and a certificate per node (for its loopback
    /// address) in the run's directory and starts every node with DMUTEX_PEER_TLS_CERT/KEY/CA.
    #[arg(long)]
    pub(crate) peer_tls: bool,
}

/// A duration in whole milliseconds (the workload sleeps in milliseconds): `1500us` is refused, not rounded.
fn whole_milliseconds(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!("{s}: the critical section is timed in whole milliseconds"));
    }
    u64::try_from(d.as_millis()).map_err(|_| format!("{s}: too long"))
}

/// Runs `dmutex cluster`: 0 if every experiment passed its verdict, else 1.
pub(crate) async fn run(args: &ClusterArgs) -> i32 {
    let cargs = runner::ClusterArgs {
        nodes: args.nodes,
        iterations: u32::try_from(args.iterations).unwrap_or(u32::MAX),
        cs_ms: args.cs.or(args.cs_ms).unwrap_or(0),
        algorithms: args.algorithm.algorithms(),
        subnet: args.subnet.clone(),
        peer_port: args.peer_port,
        http_port: args.http_port,
        out: args.out.clone(),
        keep: args.keep,
        binary: None,
        sweep: args.sweep.clone(),
        lamport_ack_elision: args.lamport_ack_elision,
        start: args.start,
        token: args.token.as_ref().map(|t| t.0.trim().to_string()),
        peer_tls: args.peer_tls,
    };
    match run_cluster(&cargs).await {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("dmutex cluster: {e}");
            1
        }
    }
}
