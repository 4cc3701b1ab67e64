//! The command line: `dmutex node | lock | cluster | health`.
//!
//! Only definitions live here (clap derive); the commands themselves are in [`crate::api::client`] (`lock`,
//! `health`), `crate::experiment::runner` (`cluster`) and `main.rs` (`node`). The `node` flags are not read from the
//! environment by clap: [`NodeArgs::overrides`] hands them to [`crate::config`] as its highest layer, so that
//! the environment is read in one place and every error names its `DMUTEX_*` key.

use crate::algo::Algorithm;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The default node HTTP endpoint for the client commands.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";

/// dmutex: distributed mutual exclusion (Lamport, Ricart–Agrawala, probable-owner) on a real cluster.
#[derive(Debug, Parser)]
#[command(name = "dmutex", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a cluster node (peer transport + HTTP API). Configured by a TOML file, DMUTEX_* variables and flags.
    Node(NodeArgs),
    /// Run a command while holding a cluster-wide lock.
    Lock(LockArgs),
    /// Start a local cluster of N node processes, run the built-in workload, check and report.
    Cluster(ClusterArgs),
    /// Draw the messages of one acquire (Mermaid sequence diagram or SVG) from the nodes' own flow records.
    Flow(FlowArgs),
    /// Probe a node's health endpoint (for a container HEALTHCHECK): exit 0 if it answers 200, else 1.
    Health(HealthArgs),
}

/// `dmutex node`: every flag overrides the DMUTEX_* variable of the same name and the configuration file.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeArgs {
    /// TOML configuration file (default: $DMUTEX_CONFIG, if set).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// This node's id, its index in the peer list (DMUTEX_NODE_ID; default: derived from the host name).
    #[arg(long, value_name = "N")]
    pub node_id: Option<u16>,
    /// Comma-separated host:port of every node in node-id order, this one included (DMUTEX_PEERS).
    #[arg(long, value_name = "LIST")]
    pub peers: Option<String>,
    /// Peer listen address (DMUTEX_PEER_ADDR, default 0.0.0.0:7070).
    #[arg(long, value_name = "ADDR")]
    pub peer_addr: Option<String>,
    /// HTTP listen address (DMUTEX_HTTP_ADDR, default 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Default algorithm: lamport, ricart-agrawala or probable-owner (DMUTEX_ALGORITHM, default lamport).
    #[arg(long, value_name = "A")]
    pub algorithm: Option<String>,
    /// Log filter, e.g. "info" or "dmutex=debug" (DMUTEX_LOG, default info).
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

impl NodeArgs {
    /// The flags given, as configuration overrides keyed like [`crate::config::KEYS`].
    pub fn overrides(&self) -> BTreeMap<String, String> {
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

/// `dmutex flow`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Every node keeps its recent peer messages and local events (GET /v1/flow?lock=NAME). This command fetches
them from every endpoint, picks the latest acquire of the lock that entered the critical section (or the
one named by --acquire: a trace id, or node-incarnation-request when no tracing backend is configured),
merges them by time and prints a sequence diagram.

Example:
  dmutex flow --endpoints http://127.0.0.1:8080,http://127.0.0.2:8080,http://127.0.0.3:8080 --lock db")]
pub struct FlowArgs {
    /// Comma-separated node HTTP endpoints (every node, so that every message appears).
    #[arg(
        long,
        env = "DMUTEX_ENDPOINTS",
        value_delimiter = ',',
        required = true,
        value_name = "URL,URL,..."
    )]
    pub endpoints: Vec<String>,
    /// The lock.
    #[arg(long, value_name = "NAME")]
    pub lock: String,
    /// The acquire to draw (default: the latest that entered the critical section).
    #[arg(long, value_name = "ID")]
    pub acquire: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FlowFormat::Mermaid)]
    pub format: FlowFormat,
}

/// Output of `dmutex flow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowFormat {
    /// A Mermaid `sequenceDiagram` (renders in GitHub Markdown).
    Mermaid,
    /// A standalone SVG.
    Svg,
}

/// `dmutex lock`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
The command runs with DMUTEX_LOCK=<name>, DMUTEX_FENCING_TOKEN=<token> and DMUTEX_LEASE=<lease> in its
environment. Pass the fencing token to whatever the lock protects: it is the only defence against a holder that
was paused past its lease.

While the command runs, the lease is kept alive every TTL/3. If the lease is lost (the node answers that it
expired, or keepalives fail until a whole TTL has passed since the last success), the command gets SIGTERM,
then SIGKILL after --grace. SIGINT and SIGTERM sent to `dmutex lock` are forwarded to the command; the lock is
released when the command ends.

Exit status:
  the command's own status, or 128+N if it was killed by signal N
  1    the lock could not be acquired (node unreachable, unavailable, or the request was refused)
  2    usage error
  3    the acquire timed out (--timeout)
  75   the lease was lost while the command ran; the command was terminated
  126  the command could not be started
  127  the command was not found

Example:
  dmutex lock --ttl 10s --timeout 1m backup -- ./backup.sh --full")]
pub struct LockArgs {
    /// Node HTTP endpoint.
    #[arg(long, env = "DMUTEX_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    pub endpoint: String,
    /// How long to wait for the lock (e.g. 10s, 500ms; default: the node's DMUTEX_DEFAULT_TIMEOUT_MS).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// The lease's time to live, renewed every TTL/3 while the command runs (default: the node's).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub ttl: Option<Duration>,
    /// Algorithm to use: lamport, ricart-agrawala or probable-owner (default: the node's).
    #[arg(long, value_name = "A")]
    pub algorithm: Option<Algorithm>,
    /// After the lease is lost, how long the command has between SIGTERM and SIGKILL.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", value_name = "DURATION")]
    pub grace: Duration,
    /// Print acquire and release details on stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// The lock's name.
    pub name: String,
    /// The command and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Which algorithms `dmutex cluster` runs: one, or each in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlgorithmChoice {
    /// Every algorithm, one run each, in [`Algorithm::ALL`] order.
    All,
    /// A single algorithm.
    One(Algorithm),
}

impl AlgorithmChoice {
    /// The algorithms to run, in order.
    pub fn algorithms(self) -> Vec<Algorithm> {
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

/// `dmutex cluster`: local multi-process cluster on loopback addresses.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub nodes: usize,
    /// Critical sections each node enters.
    #[arg(long, default_value_t = 10, value_name = "K")]
    pub iterations: u64,
    /// Time spent inside each critical section, in milliseconds (default: the node default).
    #[arg(long, value_name = "MS")]
    pub cs_ms: Option<u64>,
    /// Algorithm to run, or "all" to run each in turn.
    #[arg(long, default_value = "all", value_name = "A|all")]
    pub algorithm: AlgorithmChoice,
    /// First three octets of the loopback addresses: node i listens on SUBNET.(i+1).
    #[arg(long, default_value = "127.0.0", value_name = "A.B.C")]
    pub subnet: String,
    /// Peer port of every node.
    #[arg(long, default_value_t = 7070, value_name = "PORT")]
    pub peer_port: u16,
    /// HTTP port of every node.
    #[arg(long, default_value_t = 8080, value_name = "PORT")]
    pub http_port: u16,
    /// Write results.json and SVG charts (Gantt, latency, messages; with --sweep also sweep.csv and the sweep
    /// charts) into this directory. Node logs stay in a temporary directory, printed when a run fails.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Comma-separated cluster sizes to run one after another (e.g. 3,5,10,20,40), instead of --nodes; every
    /// size runs every requested algorithm.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub sweep: Vec<usize>,
    /// Keep the output directory (and the node processes' logs) after a successful run.
    #[arg(long)]
    pub keep: bool,
    /// Lamport's footnote option in every node: no REPLY to a REQUEST when a message stamped later was already
    /// sent to its sender (fewer than 3(N−1) messages per entry under contention).
    #[arg(long)]
    pub lamport_ack_elision: bool,
}

/// `dmutex health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Node HTTP endpoint.
    #[arg(long, env = "DMUTEX_ENDPOINT", default_value = DEFAULT_ENDPOINT, value_name = "URL")]
    pub endpoint: String,
    /// Probe readiness (/readyz: the node has joined its cluster) instead of liveness (/healthz).
    #[arg(long)]
    pub ready: bool,
    /// Give up after this long.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3s", value_name = "DURATION")]
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("dmutex").chain(args.iter().copied())).unwrap().command
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn node_flags_become_overrides() {
        let Command::Node(n) = parse(&["node", "--node-id", "2", "--peers", "a:1,b:1,c:1", "--log", "debug"])
        else {
            panic!("not node")
        };
        let o = n.overrides();
        assert_eq!(o.get("node_id").map(String::as_str), Some("2"));
        assert_eq!(o.get("peers").map(String::as_str), Some("a:1,b:1,c:1"));
        assert_eq!(o.get("log").map(String::as_str), Some("debug"));
        assert_eq!(o.len(), 3);
        assert!(o.keys().all(|k| crate::config::KEYS.contains(&k.as_str())));
    }

    #[test]
    fn lock_parses_durations_and_command() {
        let Command::Lock(l) = parse(&[
            "lock",
            "--endpoint",
            "http://n:1",
            "--timeout",
            "10s",
            "--ttl",
            "500ms",
            "--algorithm",
            "ra",
            "job",
            "--",
            "sh",
            "-c",
            "exit 3",
        ]) else {
            panic!("not lock")
        };
        assert_eq!(l.endpoint, "http://n:1");
        assert_eq!(l.timeout, Some(Duration::from_secs(10)));
        assert_eq!(l.ttl, Some(Duration::from_millis(500)));
        assert_eq!(l.algorithm, Some(Algorithm::RicartAgrawala));
        assert_eq!(l.grace, Duration::from_secs(5));
        assert_eq!(l.name, "job");
        assert_eq!(l.command, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn lock_command_without_double_dash_keeps_its_flags() {
        let Command::Lock(l) = parse(&["lock", "job", "ls", "-l", "--all"]) else { panic!("not lock") };
        assert_eq!(l.command, ["ls", "-l", "--all"]);
    }

    #[test]
    fn lock_needs_a_command() {
        assert!(Cli::try_parse_from(["dmutex", "lock", "job"]).is_err());
        assert!(Cli::try_parse_from(["dmutex", "lock", "--timeout", "soon", "job", "--", "true"]).is_err());
    }

    #[test]
    fn cluster_defaults_and_sweep() {
        let Command::Cluster(c) = parse(&["cluster"]) else { panic!("not cluster") };
        assert_eq!((c.nodes, c.iterations, c.peer_port, c.http_port), (5, 10, 7070, 8080));
        assert_eq!(c.algorithm, AlgorithmChoice::All);
        assert_eq!(c.algorithm.algorithms(), Algorithm::ALL.to_vec());
        assert_eq!(c.subnet, "127.0.0");
        assert!(c.sweep.is_empty() && !c.keep && c.out.is_none() && c.cs_ms.is_none());
        let Command::Cluster(c) = parse(&["cluster", "--algorithm", "po", "--sweep", "3,5,7", "--keep"])
        else {
            panic!("not cluster")
        };
        assert_eq!(c.algorithm, AlgorithmChoice::One(Algorithm::ProbableOwner));
        assert_eq!(c.sweep, [3, 5, 7]);
        assert!(c.keep);
    }

    #[test]
    fn health_flags() {
        let Command::Health(h) = parse(&["health", "--ready", "--endpoint", "http://x:9"]) else {
            panic!("not health")
        };
        assert!(h.ready);
        assert_eq!(h.endpoint, "http://x:9");
    }
}
