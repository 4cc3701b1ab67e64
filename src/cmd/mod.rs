//! The command line: `dmutex node | lock | cluster | flow | health`, one file per command.
//!
//! Each file holds its command's clap arguments and its `run`, which prints its own errors and returns the
//! process exit code. `anyhow` and clap live here only, never in the library. The `node` flags are not read
//! from the environment by clap: [`node::NodeArgs::overrides`] hands them to [`dmutex::config`] as its highest
//! layer, so that the environment is read in one place and every error names its `DMUTEX_*` key.

pub(crate) mod cluster;
pub(crate) mod flow;
pub(crate) mod health;
pub(crate) mod lock;
pub(crate) mod node;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The default node HTTP endpoint for the client commands.
pub(crate) const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";

/// A bearer token read from the environment: its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(pub(crate) String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How the client commands reach a node: the CA bundle `https://` endpoints must chain to, and the bearer
/// token (from the environment or a file, never from the command line, where `ps` shows it to everyone).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ClientSecurityArgs {
    /// CA bundle (PEM) that https:// endpoints must chain to; replaces the built-in web roots, like curl
    /// --cacert.
    #[arg(long, env = "DMUTEX_CACERT", value_name = "PATH")]
    pub(crate) cacert: Option<PathBuf>,
    /// Read the API bearer token from this file (e.g. a mounted Kubernetes Secret) [default: the DMUTEX_TOKEN
    /// variable].
    #[arg(long, env = "DMUTEX_TOKEN_FILE", value_name = "PATH")]
    pub(crate) token_file: Option<PathBuf>,
    /// `DMUTEX_TOKEN` (read from the environment only).
    #[arg(skip = std::env::var("DMUTEX_TOKEN").ok().filter(|t| !t.trim().is_empty()).map(Secret))]
    pub(crate) token_env: Option<Secret>,
}

impl ClientSecurityArgs {
    /// The token to send: the `--token-file`'s content (trimmed), else `DMUTEX_TOKEN`, else none.
    pub(crate) fn token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(self.token_env.as_ref().map(|t| t.0.trim().to_string()));
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--token-file {}: cannot read: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("--token-file {}: the file is empty", path.display()));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(format!(
                "--token-file {}: holds more than one word (expected the token alone)",
                path.display()
            ));
        }
        Ok(Some(token.to_string()))
    }

    /// The settings of the binary's own HTTP client ([`dmutex::api::client`]).
    pub(crate) fn security(&self) -> Result<dmutex::api::client::Security, String> {
        use dmutex::api::client::{Security, Trust};
        let trust = match &self.cacert {
            Some(path) => Trust::Ca(path.clone()),
            None => Trust::WebRoots,
        };
        Ok(Security { token: self.token()?, trust })
    }
}

/// dmutex: distributed mutual exclusion (Lamport, Ricart–Agrawala, probable-owner) on a real cluster.
#[derive(Debug, Parser)]
#[command(name = "dmutex", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// What `dmutex` can do: run a node, run an experiment cluster, hold a lock around a command, check health, draw flows.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a cluster node (peer transport + HTTP API). Configured by a TOML file, DMUTEX_* variables and flags.
    Node(node::NodeArgs),
    /// Run a command while holding a cluster-wide lock.
    Lock(lock::LockArgs),
    /// Start a local cluster of N node processes, run the built-in workload, check and report.
    Cluster(cluster::ClusterArgs),
    /// Draw the messages of one acquire (Mermaid sequence diagram or SVG) from the nodes' own flow records.
    Flow(flow::FlowArgs),
    /// Probe a node's health endpoint (for a container HEALTHCHECK): exit 0 if it answers 200, else 1.
    Health(health::HealthArgs),
}

/// Runs `command` to its end; returns the process exit code.
pub(crate) async fn run(command: Command) -> i32 {
    match command {
        Command::Node(args) => node::run(&args).await,
        Command::Lock(args) => lock::run(&args).await,
        Command::Cluster(args) => cluster::run(&args).await,
        Command::Flow(args) => flow::run(&args).await,
        Command::Health(args) => health::run(&args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::cluster::AlgorithmChoice;
    use super::*;
    use clap::CommandFactory;
    use dmutex::algo::Algorithm;
    use std::time::Duration;

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
        assert!(o.keys().all(|k| dmutex::config::KEYS.contains(&k.as_str())));
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
        assert_eq!(l.endpoints, ["http://n:1"]);
        assert_eq!(l.timeout, Some(dmutex_client::Timeout::Ms(10_000)));
        assert_eq!(l.ttl, Some(Duration::from_millis(500)));
        assert_eq!(l.algorithm, Some(Algorithm::RicartAgrawala));
        assert_eq!(l.grace, Duration::from_secs(5));
        assert_eq!(l.name, "job");
        assert_eq!(l.command, ["sh", "-c", "exit 3"]);
    }

    #[test]
    fn lock_takes_several_endpoints_forever_and_try() {
        let Command::Lock(l) = parse(&[
            "lock",
            "--endpoints",
            "http://a:1,http://b:1",
            "--endpoints",
            "c:1",
            "--timeout",
            "forever",
            "job",
            "true",
        ]) else {
            panic!("not lock")
        };
        assert_eq!(l.endpoints(), ["http://a:1", "http://b:1", "c:1"]);
        assert_eq!(l.timeout, Some(dmutex_client::Timeout::Forever));
        assert!(!l.try_lock);
        let Command::Lock(l) = parse(&["lock", "--try", "--endpoint", "http://a:1", "job", "true"]) else {
            panic!("not lock")
        };
        assert!(l.try_lock && l.timeout.is_none());
        assert_eq!(l.endpoints(), ["http://a:1"]);
        let e =
            Cli::try_parse_from(["dmutex", "lock", "--try", "--timeout", "1s", "job", "true"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "--try and --timeout contradict each other: {e}");
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
        assert_eq!(c.start, dmutex::experiment::runner::StartMode::Together);
        let Command::Cluster(c) = parse(&["cluster", "--cs", "1s"]) else { panic!("not cluster") };
        assert_eq!((c.cs, c.cs_ms), (Some(1000), None));
        let Command::Cluster(c) = parse(&["cluster", "--cs-ms", "5"]) else { panic!("not cluster") };
        assert_eq!((c.cs, c.cs_ms), (None, Some(5)));
        assert!(Cli::try_parse_from(["dmutex", "cluster", "--cs", "5ms", "--cs-ms", "5"]).is_err());
        assert!(Cli::try_parse_from(["dmutex", "cluster", "--cs", "1500us"]).is_err());
        assert!(Cli::try_parse_from(["dmutex", "cluster", "--cs", "soon"]).is_err());
        let Command::Cluster(c) = parse(&["cluster", "--start", "staggered"]) else { panic!("not cluster") };
        assert_eq!(c.start, dmutex::experiment::runner::StartMode::Staggered);
    }

    #[test]
    fn cluster_refuses_zero_iterations_and_nodes_as_usage_errors() {
        for args in
            [["cluster", "--iterations", "0"], ["cluster", "--nodes", "0"], ["cluster", "--nodes", "255"]]
        {
            let e = Cli::try_parse_from(std::iter::once("dmutex").chain(args)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
    }

    #[test]
    fn health_flags() {
        let Command::Health(h) = parse(&["health", "--ready", "--endpoint", "http://x:9"]) else {
            panic!("not health")
        };
        assert!(h.ready);
        assert_eq!(h.endpoint.as_deref(), Some("http://x:9"));
        assert_eq!(h.endpoint().as_deref(), Ok("http://x:9"), "--endpoint wins over DMUTEX_HTTP_ADDR");
    }

    #[test]
    fn client_commands_take_a_ca_and_a_token_file_but_no_token_flag() {
        let Command::Lock(l) = parse(&["lock", "--cacert", "/ca.pem", "--token-file", "/tok", "job", "true"])
        else {
            panic!("not lock")
        };
        assert_eq!(l.security.cacert.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(l.security.token_file.as_deref(), Some(std::path::Path::new("/tok")));
        let Command::Flow(f) = parse(&["flow", "--endpoints", "http://a:1", "--lock", "x", "--cacert", "/c"])
        else {
            panic!("not flow")
        };
        assert_eq!(f.security.cacert.as_deref(), Some(std::path::Path::new("/c")));
        let Command::Health(h) = parse(&["health", "--cacert", "/c", "--token-file", "/t"]) else {
            panic!("not health")
        };
        assert!(h.security.cacert.is_some() && h.security.token_file.is_some());
        for cmd in [["lock", "--token"], ["flow", "--token"], ["health", "--token"]] {
            assert!(Cli::try_parse_from(std::iter::once("dmutex").chain(cmd)).is_err(), "{cmd:?}");
        }
    }

    #[test]
    fn the_token_comes_from_the_file_trimmed_or_the_environment_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-the-file-0123456789\n").unwrap();
        let mut args = ClientSecurityArgs {
            token_env: Some(Secret("from-the-env-0123456789".into())),
            ..Default::default()
        };
        assert_eq!(args.token().unwrap().as_deref(), Some("from-the-env-0123456789"));
        assert!(!format!("{args:?}").contains("from-the-env"), "{args:?}");
        args.token_file = Some(file.clone());
        assert_eq!(args.token().unwrap().as_deref(), Some("from-the-file-0123456789"), "the file wins");
        std::fs::write(&file, "\n").unwrap();
        assert!(args.token().unwrap_err().contains("empty"));
        std::fs::write(&file, "abc lock\n").unwrap();
        assert!(args.token().unwrap_err().contains("more than one word"));
        args.token_file = Some(dir.path().join("missing"));
        assert!(args.token().unwrap_err().contains("cannot read"));
        assert_eq!(ClientSecurityArgs::default().token().unwrap(), None);
    }
}
