//! `dmutex cluster`: the original programs' experiment on N real node processes of this binary, one experiment
//! per algorithm.
//!
//! For each algorithm (sequentially): start N `dmutex node` children on distinct loopback addresses
//! (`<subnet>.1 … <subnet>.N`, one shared peer port and one shared HTTP port), each running the workload of
//! [`crate::experiment::workload`] against one shared counter file; wait for every `/readyz`; give the common
//! start signal (a start file naming one instant a little ahead, so every node enters the contest at once; see
//! [`StartMode`]); poll `/v1/workload` (showing progress) until every node is done; read `/v1/stats`; stop every child (SIGTERM, SIGKILL after 5 s); print the
//! results in the original programs' form and a verdict.
//!
//! With `--out DIR` it also writes `DIR/results.json` (every printed figure, every entry with its request/enter/exit
//! times on the host clock and relative to the experiment's first request, its Lamport request timestamp, every
//! node's `/v1/stats`) and per algorithm three SVG charts ([`crate::experiment::charts`]): `<algorithm>-gantt.svg`,
//! `<algorithm>-latency.svg` and `<algorithm>-messages.svg`.
//!
//! With a sweep (`--sweep 3,5,10`) it runs the experiment for every size and algorithm, one after another on the
//! same addresses and ports, and writes, besides `results.json` with every experiment, `sweep.csv`,
//! `sweep-time.svg` (execution time against N) and `sweep-messages.svg` (messages per entry against N with the
//! textbook lines); each size's charts go to `DIR/n<N>/`. A failed experiment does not stop the sweep: it is
//! reported, left out of the sweep's points, and makes the command fail at the end.
//!
//! The verdict is [`crate::experiment::verdict`]'s, the printed and written results are
//! [`crate::experiment::report`]'s; this file starts, drives and stops the processes.
//!
//! The run's working directory (node logs, counter file, start file) is `dmutex-cluster-<run>` in the
//! temporary directory (`TMPDIR`, else `/tmp`); it is removed after a passing run unless `--keep`, and kept and
//! named after a failing one. `--out` is a different directory: the results, always kept.
//!
//! Must never: leave a child running (every child is `kill_on_drop`, and stopped explicitly on every path), or
//! delete the logs of a run that failed (their location is printed instead).

use crate::algo::Algorithm;
use crate::api::client::{Client, ClientError, Security};
use crate::api::types::Stats;
use crate::experiment::charts::SweepPoint;
use crate::experiment::error::ExperimentError;
use crate::experiment::report::{
    ExperimentResult, SUMMARY_HEADER, format_results, format_summary, summarize, summary_row, sweep_point,
    write_experiment_charts, write_results, write_sweep_outputs,
};
use crate::experiment::workload::{
    WorkloadReport, WorkloadState, WorkloadStatus, read_counter, unix_ms, write_start_file,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long every node gets to answer `/readyz` with 200, plus [`READY_PER_NODE`] per node: a large cluster on a
/// small machine starts its processes and meshes its N² connections slower.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Extra readiness time per node.
const READY_PER_NODE: Duration = Duration::from_millis(500);
/// How long children get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Timeout of one HTTP request to a node.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// The lock every node contends for.
const WORKLOAD_LOCK: &str = "counter";
/// How far ahead of "every node is ready" the common start lies, plus [`START_LEAD_PER_NODE`] per node: every
/// node must have read the start file (it looks every 5 ms) before the instant it names.
const START_LEAD: Duration = Duration::from_millis(250);
/// Extra lead per node.
const START_LEAD_PER_NODE: Duration = Duration::from_millis(5);

/// When each node's workload starts.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum StartMode {
    /// At one instant once every node is ready: all nodes contend from the first entry.
    #[default]
    Together,
    /// Each node as soon as it is ready (tens of milliseconds apart, as in the original programs): with short
    /// critical sections the first node makes many entries before the others join.
    Staggered,
}

impl std::str::FromStr for StartMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "together" => Ok(StartMode::Together),
            "staggered" => Ok(StartMode::Staggered),
            other => Err(format!("unknown start mode \"{other}\" (expected together or staggered)")),
        }
    }
}

impl std::fmt::Display for StartMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StartMode::Together => "together",
            StartMode::Staggered => "staggered",
        })
    }
}

/// What `dmutex cluster` runs. (Mirrors the CLI's arguments.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterArgs {
    /// Node processes to start.
    pub nodes: usize,
    /// Critical-section entries per node.
    pub iterations: u32,
    /// Time inside each critical section (ms).
    pub cs_ms: u64,
    /// The algorithms to run, one experiment each, in this order.
    pub algorithms: Vec<Algorithm>,
    /// The first three octets of the nodes' addresses: node `i` listens on `<subnet>.<i+1>`.
    pub subnet: String,
    /// The peer (TCP) port, the same on every address.
    pub peer_port: u16,
    /// The HTTP port, the same on every address.
    pub http_port: u16,
    /// Also write `results.json` and the SVG charts (and in a sweep `sweep.csv`) into this directory.
    pub out: Option<PathBuf>,
    /// Keep the run's working directory in the temporary directory (node logs, counter file) even when
    /// everything passed; a failed experiment's is always kept.
    pub keep: bool,
    /// The `dmutex` binary to start as `<binary> node` (default: this executable).
    pub binary: Option<PathBuf>,
    /// Cluster sizes to run one after another instead of `nodes` (empty: just `nodes`).
    pub sweep: Vec<usize>,
    /// Turn on Lamport's footnote option in every node (`DMUTEX_LAMPORT_ACK_ELISION`).
    pub lamport_ack_elision: bool,
    /// When the nodes' workloads start.
    pub start: StartMode,
    /// The bearer token the runner's HTTP calls carry (`DMUTEX_TOKEN`): needed when the nodes require API
    /// tokens (a `DMUTEX_API_TOKENS_FILE` they inherit); it needs the `read` and `admin` scopes.
    pub token: Option<String>,
    /// Mutual TLS on the peer links: a throwaway CA and a certificate per node (for its address) are
    /// generated in the run's directory and given to every node (`DMUTEX_PEER_TLS_*`).
    pub peer_tls: bool,
}

/// The body of `GET /v1/workload`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadResponse {
    /// Progress.
    pub status: WorkloadStatus,
    /// The report, once the workload stopped.
    pub report: Option<WorkloadReport>,
}

/// The loopback addresses of `nodes` nodes on `subnet` (`"127.0.0"` → 127.0.0.1 …).
pub(crate) fn node_addresses(subnet: &str, nodes: usize) -> Result<Vec<Ipv4Addr>, ExperimentError> {
    let invalid = |msg: String| Err(ExperimentError::InvalidArgs(msg));
    if nodes == 0 {
        return invalid("a cluster needs at least one node".into());
    }
    if nodes > 254 {
        return invalid(format!("{nodes} nodes do not fit on {subnet}.1 … {subnet}.254 (at most 254)"));
    }
    let Ok(probe) = format!("{subnet}.1").parse::<Ipv4Addr>() else {
        return invalid(format!("subnet {subnet:?} is not three octets such as \"127.0.0\""));
    };
    let [a, b, c, _] = probe.octets();
    Ok((1..=nodes).map(|i| Ipv4Addr::new(a, b, c, i as u8)).collect())
}

/// The environment of node `id`'s process. `start_file`: the common start's file, if the start is common.
pub(crate) fn node_env(
    args: &ClusterArgs,
    algorithm: Algorithm,
    id: usize,
    addrs: &[Ipv4Addr],
    cluster_name: &str,
    counter_file: &Path,
    start_file: Option<&Path>,
) -> Vec<(&'static str, String)> {
    let peers: Vec<String> = addrs.iter().map(|a| format!("{a}:{}", args.peer_port)).collect();
    let me = addrs.get(id).copied().unwrap_or(Ipv4Addr::LOCALHOST);
    let mut env = vec![
        ("DMUTEX_NODE_ID", id.to_string()),
        ("DMUTEX_PEERS", peers.join(",")),
        ("DMUTEX_PEER_ADDR", format!("{me}:{}", args.peer_port)),
        ("DMUTEX_HTTP_ADDR", format!("{me}:{}", args.http_port)),
        ("DMUTEX_ALGORITHM", algorithm.to_string()),
        ("DMUTEX_CLUSTER_NAME", cluster_name.to_string()),
        ("DMUTEX_LOG", "warn".into()),
        ("DMUTEX_WORKLOAD_ITERATIONS", args.iterations.to_string()),
        ("DMUTEX_WORKLOAD_CS_MS", args.cs_ms.to_string()),
        ("DMUTEX_WORKLOAD_LOCK", WORKLOAD_LOCK.into()),
        ("DMUTEX_WORKLOAD_COUNTER_FILE", counter_file.display().to_string()),
        ("DMUTEX_WORKLOAD_ALGORITHM", algorithm.to_string()),
        ("DMUTEX_LAMPORT_ACK_ELISION", args.lamport_ack_elision.to_string()),
    ];
    if let Some(start) = start_file {
        env.push(("DMUTEX_WORKLOAD_START_FILE", start.display().to_string()));
    }
    env
}

/// Runs the experiment for the requested algorithm(s) and size(s), prints the results, writes the output
/// directory's files, and says whether all passed.
pub async fn run_cluster(args: &ClusterArgs) -> Result<bool, ExperimentError> {
    let sweeping = !args.sweep.is_empty();
    let sizes: Vec<usize> = if sweeping { args.sweep.clone() } else { vec![args.nodes] };
    // Every size is checked before the first experiment, so a bad list fails at once, not after minutes.
    for &n in &sizes {
        node_addresses(&args.subnet, n)?;
    }
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().map_err(ExperimentError::io("finding this executable"))?,
    };
    if args.algorithms.is_empty() {
        return Err(ExperimentError::InvalidArgs("no algorithm to run".into()));
    }
    if args.iterations == 0 {
        return Err(ExperimentError::InvalidArgs("every node needs at least one iteration".into()));
    }
    let algorithms = &args.algorithms;
    // Unique even for two runs started in the same millisecond by one process (as the tests do).
    let run_id = format!("{}-{}-{:08x}", std::process::id(), unix_ms() as u64, rand::random::<u32>());
    // The usual place (TMPDIR), where a failed run's logs are looked for. The counter's read and write are
    // not synced, so they stay in the page cache there too: the critical section measures the lock, not the disk.
    let root = std::env::temp_dir().join(format!("dmutex-cluster-{run_id}"));
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).map_err(ExperimentError::io(format!("creating {}", out.display())))?;
    }

    let total = sizes.len() * algorithms.len();
    let started = Instant::now();
    let mut results: Vec<ExperimentResult> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    if sweeping {
        println!("{SUMMARY_HEADER}");
    }
    for &nodes in &sizes {
        for &algorithm in algorithms {
            let dir =
                if sweeping { root.join(format!("n{nodes}")) } else { root.clone() }.join(algorithm.as_str());
            if sweeping {
                eprintln!(
                    "[{}/{total}] {algorithm}, N = {nodes} ({:.0} s elapsed)",
                    results.len() + failures.len() + 1,
                    started.elapsed().as_secs_f64()
                );
            }
            let outcome = run_experiment(&binary, args, nodes, algorithm, &run_id, &dir).await;
            let result = match outcome {
                Ok(r) => r,
                Err(e) if sweeping && !e.is_interrupted() => {
                    let msg = format!("{algorithm}, N = {nodes}: {e}");
                    eprintln!("FAILED {msg}");
                    failures.push(msg);
                    if let Some(out) = &args.out {
                        write_results(out, &results, sweeping, &failures)?;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            if sweeping {
                println!("{}", summary_row(&result));
                if let (false, Some(log_dir)) = (result.verdict.ok, &result.log_dir) {
                    println!("  node logs kept in {}", log_dir.display());
                }
            } else {
                print!("{}", format_results(&result));
                if let Some(log_dir) = &result.log_dir {
                    let why = if result.verdict.ok { "--keep" } else { "the verdict failed" };
                    println!("Node logs and counter file kept in {} ({why})", log_dir.display());
                }
                println!();
            }
            if let Some(out) = &args.out {
                let chart_dir = if sweeping { out.join(format!("n{nodes}")) } else { out.clone() };
                std::fs::create_dir_all(&chart_dir)
                    .map_err(ExperimentError::io(format!("creating {}", chart_dir.display())))?;
                write_experiment_charts(&chart_dir, &result)?;
            }
            results.push(result);
            if let Some(out) = &args.out {
                write_results(out, &results, sweeping, &failures)?;
            }
        }
    }
    if !args.keep {
        // Removes the run's directories only when every experiment's directory went (remove_dir fails otherwise).
        if sweeping {
            for &nodes in &sizes {
                let _ = std::fs::remove_dir(root.join(format!("n{nodes}")));
            }
        }
        let _ = std::fs::remove_dir(&root);
    }
    if sweeping {
        println!();
    }
    if results.len() > 1 || sweeping {
        print!("{}", format_summary(&results));
    }
    for f in &failures {
        println!("FAILED {f}");
    }
    if sweeping {
        println!("Sweep of {total} experiments took {:.1} s", started.elapsed().as_secs_f64());
    }
    if let Some(out) = &args.out {
        if sweeping {
            let points: Vec<SweepPoint> = results.iter().map(sweep_point).collect();
            write_sweep_outputs(out, &points, args.iterations, args.cs_ms)?;
        }
        println!("Results written to {}", out.display());
    }
    Ok(failures.is_empty() && results.iter().all(|r| r.verdict.ok))
}

/// Runs one experiment: `nodes` nodes, one algorithm, logs and counter file in `dir`.
async fn run_experiment(
    binary: &Path,
    args: &ClusterArgs,
    nodes: usize,
    algorithm: Algorithm,
    run_id: &str,
    dir: &Path,
) -> Result<ExperimentResult, ExperimentError> {
    let addrs = node_addresses(&args.subnet, nodes)?;
    std::fs::create_dir_all(dir).map_err(ExperimentError::io(format!("creating {}", dir.display())))?;
    let counter_file = dir.join("counter");
    std::fs::write(&counter_file, "0")
        .map_err(ExperimentError::io(format!("creating {}", counter_file.display())))?;
    let start_file = (args.start == StartMode::Together).then(|| dir.join("start"));
    let cluster_name = format!("dmutex-cluster-{run_id}-{nodes}-{algorithm}");

    let files = RunFiles { counter: &counter_file, start: start_file.as_deref(), dir };
    let mut cluster = Cluster::start(binary, args, algorithm, &addrs, &cluster_name, files)?;
    let outcome = tokio::select! {
        r = cluster.drive(args, algorithm) => r,
        _ = tokio::signal::ctrl_c() => Err(ExperimentError::Interrupted),
    };
    cluster.stop().await;
    let (reports, stats) = outcome.map_err(|error| ExperimentError::Experiment {
        algorithm,
        dir: dir.to_path_buf(),
        error: Box::new(error),
    })?;

    let shared_counter = read_counter(&counter_file).await.map_err(ExperimentError::Counter)?;
    let mut result =
        summarize(algorithm, nodes, args.iterations, args.cs_ms, &reports, &stats, shared_counter);
    if args.lamport_ack_elision && algorithm == Algorithm::Lamport {
        result
            .textbook_per_entry
            .push_str(" (footnote option on: a REPLY made redundant by a later message is skipped)");
    }
    if result.verdict.ok && !args.keep {
        // Best effort: a leftover temporary directory is harmless.
        let _ = std::fs::remove_dir_all(dir);
    } else {
        result.log_dir = Some(dir.to_path_buf());
    }
    Ok(result)
}

/// One node process.
struct NodeProc {
    id: usize,
    http: SocketAddr,
    /// Its HTTP API.
    api: Client,
    log: PathBuf,
    child: Child,
}

/// How long, once one node has exited early, the others get to show whether they exit too (a taken port or a
/// bad binary stops them all), so that the error names every one in node order, not whichever was seen first.
const EXIT_SETTLE: Duration = Duration::from_millis(300);

impl NodeProc {
    /// Why the process is no longer running (naming it and showing the end of its log), if it is not.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(None) => None,
            Ok(Some(status)) => Some(format!(
                "node {} exited early ({status}); its log: {}{}",
                self.id,
                self.log.display(),
                log_tail(&self.log)
            )),
            Err(e) => Some(format!("node {}: cannot query its process: {e}", self.id)),
        }
    }
}

/// The last lines of a log, indented, for an error message.
fn log_tail(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else { return String::new() };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(12)..];
    if tail.is_empty() {
        return String::new();
    }
    format!("\n  | {}", tail.join("\n  | "))
}

/// The files of one experiment: in `dir`, the shared counter, the start file (if the start is common) and
/// one log per node.
#[derive(Clone, Copy)]
struct RunFiles<'a> {
    counter: &'a Path,
    start: Option<&'a Path>,
    dir: &'a Path,
}

/// The N node processes of one experiment.
struct Cluster {
    nodes: Vec<NodeProc>,
    /// Where the common start is signalled, if it is.
    start_file: Option<PathBuf>,
}

impl Cluster {
    /// An error naming every node that has exited, if any has.
    async fn check_alive(&mut self) -> Result<(), ExperimentError> {
        if !self.nodes.iter_mut().any(|n| n.exited().is_some()) {
            return Ok(());
        }
        tokio::time::sleep(EXIT_SETTLE).await;
        let gone: Vec<String> = self.nodes.iter_mut().filter_map(NodeProc::exited).collect();
        Err(ExperimentError::Node(gone.join("\n")))
    }

    fn start(
        binary: &Path,
        args: &ClusterArgs,
        algorithm: Algorithm,
        addrs: &[Ipv4Addr],
        cluster_name: &str,
        files: RunFiles<'_>,
    ) -> Result<Cluster, ExperimentError> {
        let mut cluster = Cluster {
            nodes: Vec::with_capacity(addrs.len()),
            start_file: files.start.map(Path::to_path_buf),
        };
        let dir = files.dir;
        let tls_dir = dir.join("peer-tls");
        let ca = match args.peer_tls {
            false => None,
            true => {
                std::fs::create_dir_all(&tls_dir)
                    .map_err(ExperimentError::io(format!("creating {}", tls_dir.display())))?;
                let ca = crate::net::peer_tls::ThrowawayCa::new(cluster_name).map_err(|e| {
                    ExperimentError::InvalidArgs(format!("cannot generate the peer TLS CA: {e}"))
                })?;
                Some(ca)
            }
        };
        // One client for all nodes: every request bounded by HTTP_TIMEOUT, one connection pool.
        let mut api: Option<Client> = None;
        for (id, addr) in addrs.iter().enumerate() {
            let log = dir.join(format!("node-{id}.log"));
            let file = std::fs::File::create(&log)
                .map_err(ExperimentError::io(format!("creating {}", log.display())))?;
            let stdout =
                file.try_clone().map_err(ExperimentError::io(format!("opening {} twice", log.display())))?;
            let mut env = node_env(args, algorithm, id, addrs, cluster_name, files.counter, files.start);
            if let Some(ca) = &ca {
                let host = addr.to_string();
                let (cert, key, ca) = ca.write(&tls_dir, &format!("node-{id}"), &[host.as_str()]).map_err(
                    ExperimentError::io(format!("writing certificates into {}", tls_dir.display())),
                )?;
                env.push(("DMUTEX_PEER_TLS_CERT", cert.display().to_string()));
                env.push(("DMUTEX_PEER_TLS_KEY", key.display().to_string()));
                env.push(("DMUTEX_PEER_TLS_CA", ca.display().to_string()));
            }
            let child = Command::new(binary)
                .arg("node")
                .envs(env)
                // The experiment's nodes serve plain HTTP on loopback, which this client speaks: an API
                // certificate in the caller's environment (a TLS-enabled container) is not theirs.
                .env_remove("DMUTEX_TLS_CERT")
                .env_remove("DMUTEX_TLS_KEY")
                .env_remove("DMUTEX_TLS_CLIENT_CA")
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(file)
                .kill_on_drop(true)
                .spawn()
                .map_err(ExperimentError::io(format!("starting {} node", binary.display())))?;
            let http = SocketAddr::from((*addr, args.http_port));
            let endpoint = format!("http://{http}");
            let node_api = match &api {
                Some(first) => first.at(&endpoint)?,
                None => {
                    let security = Security { token: args.token.clone(), ..Security::default() };
                    api.insert(Client::with_security(&endpoint, &security)?.with_timeout(HTTP_TIMEOUT))
                        .clone()
                }
            };
            cluster.nodes.push(NodeProc { id, http, api: node_api, log, child });
        }
        Ok(cluster)
    }

    /// Waits for readiness, runs the workload to its end showing progress, and collects reports and stats.
    async fn drive(
        &mut self,
        args: &ClusterArgs,
        algorithm: Algorithm,
    ) -> Result<(Vec<WorkloadReport>, Vec<Stats>), ExperimentError> {
        let mut progress = Progress::new(algorithm);
        self.wait_ready(args).await?;
        if let Some(start) = &self.start_file {
            let lead = START_LEAD + START_LEAD_PER_NODE * u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
            write_start_file(start, unix_ms() + lead.as_secs_f64() * 1000.0)
                .map_err(ExperimentError::io(format!("writing the start signal {}", start.display())))?;
        }
        let reports = self.poll_workload(args, &mut progress).await?;
        let mut stats = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let s = node.api.stats().await.map_err(|error| ExperimentError::Api {
                node: node.id,
                request: "GET /v1/stats",
                error,
            })?;
            stats.push(s);
        }
        Ok((reports, stats))
    }

    async fn wait_ready(&mut self, args: &ClusterArgs) -> Result<(), ExperimentError> {
        let timeout = READY_TIMEOUT + READY_PER_NODE * u32::try_from(self.nodes.len()).unwrap_or(u32::MAX);
        let deadline = Instant::now() + timeout;
        let mut pending: BTreeSet<usize> = (0..self.nodes.len()).collect();
        loop {
            self.check_alive().await?;
            for node in &mut self.nodes {
                if !pending.contains(&node.id) {
                    continue;
                }
                let ready = node.api.probe("readyz", HTTP_TIMEOUT).await.is_ok_and(|s| s.is_success());
                if ready {
                    pending.remove(&node.id);
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut msg = format!("not every node became ready within {} s:", timeout.as_secs());
                for node in self.nodes.iter().filter(|n| pending.contains(&n.id)) {
                    let _ = write!(
                        msg,
                        "\n  node {} (http://{}/readyz), log: {}",
                        node.id,
                        node.http,
                        node.log.display()
                    );
                }
                if let Some(first) = self.nodes.iter().find(|n| pending.contains(&n.id)) {
                    msg.push_str(&log_tail(&first.log));
                }
                let _ = write!(
                    msg,
                    "\nEach node listens on its own loopback address ({sub}.1 … {sub}.{n}), ports {pp} (peers) and \
                     {hp} (HTTP). On Linux all of 127.0.0.0/8 is usable; elsewhere add aliases (macOS: `sudo \
                     ifconfig lo0 alias 127.0.0.2 up` …). If a port is taken, choose others with --peer-port / \
                     --http-port.",
                    sub = args.subnet,
                    n = self.nodes.len(),
                    pp = args.peer_port,
                    hp = args.http_port
                );
                return Err(ExperimentError::NotReady(msg));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `/v1/workload` until every node finished; returns the reports in node order.
    async fn poll_workload(
        &mut self,
        args: &ClusterArgs,
        progress: &mut Progress,
    ) -> Result<Vec<WorkloadReport>, ExperimentError> {
        let n = self.nodes.len();
        // Polling competes with the nodes for the CPU: poll large clusters less often.
        let interval = Duration::from_millis((n as u64 * 10).max(250));
        // The whole cluster makes at least one entry per N critical sections' time unless it is stuck.
        let stall_limit =
            Duration::from_secs(60).max(Duration::from_millis(args.cs_ms.saturating_mul(n as u64 * 3)));
        let mut statuses: Vec<WorkloadStatus> = vec![WorkloadStatus::waiting(args.iterations); n];
        let mut reports: Vec<Option<WorkloadReport>> = vec![None; n];
        let mut last_done = 0u32;
        let mut last_change = Instant::now();
        loop {
            self.check_alive().await?;
            for (i, node) in self.nodes.iter_mut().enumerate() {
                let body: WorkloadResponse = match node.api.get_json(&["v1", "workload"], &[]).await {
                    Ok(body) => body,
                    Err(e) if e.is_status(404) => {
                        return Err(ExperimentError::Node(format!(
                            "node {} has no workload configured (GET /v1/workload: 404); log: {}",
                            i,
                            node.log.display()
                        )));
                    }
                    Err(error @ ClientError::BadResponse { .. }) => {
                        return Err(ExperimentError::Api { node: i, request: "GET /v1/workload", error });
                    }
                    // A busy node, or one answering an error for now; the stall limit catches one that never
                    // answers.
                    Err(_) => continue,
                };
                statuses[i] = body.status;
                if body.report.is_some() {
                    reports[i] = body.report;
                }
            }
            progress.show(&statuses);
            let finished = statuses.iter().zip(&reports).all(|(s, r)| s.finished() && r.is_some());
            if finished {
                progress.finish(&statuses);
                return Ok(reports.into_iter().flatten().collect());
            }
            let done: u32 = statuses.iter().map(|s| s.done).sum();
            if done != last_done {
                last_done = done;
                last_change = Instant::now();
            } else if last_change.elapsed() > stall_limit {
                progress.finish(&statuses);
                let stuck: Vec<String> = self
                    .nodes
                    .iter()
                    .zip(&statuses)
                    .filter(|(_, s)| !s.finished())
                    .map(|(node, s)| {
                        format!("node {} ({}/{}, log {})", node.id, s.done, s.total, node.log.display())
                    })
                    .collect();
                return Err(ExperimentError::Stalled {
                    secs: stall_limit.as_secs(),
                    unfinished: stuck.join(", "),
                });
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// SIGTERM to every child, then SIGKILL to those still running after [`STOP_GRACE`].
    async fn stop(&mut self) {
        for pid in self.nodes.iter().filter_map(|n| n.child.id()) {
            if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
                // An error means the child has already exited: nothing to stop.
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for node in &mut self.nodes {
            if tokio::time::timeout_at(deadline, node.child.wait()).await.is_err() {
                let _ = node.child.kill().await;
            }
        }
    }
}

/// Progress output on stderr: one updating line on a terminal, a plain line every few seconds otherwise.
struct Progress {
    algorithm: Algorithm,
    tty: bool,
    /// When the nodes were started.
    started: Instant,
    /// The first poll that saw a node running its workload: the rate shown counts from there, so start-up
    /// is left out (the summary's exact figure runs from the first node ready to the last entry).
    running_since: Option<Instant>,
    /// When the last plain line was printed, and what it said (the final line is not printed twice).
    last_line: Option<(Instant, String)>,
}

impl Progress {
    const PLAIN_EVERY: Duration = Duration::from_secs(2);

    fn new(algorithm: Algorithm) -> Self {
        Progress {
            algorithm,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            running_since: None,
            last_line: None,
        }
    }

    /// The progress line; `finished`: the last one, which leaves the rate to the summary (polling only
    /// sees the end up to one poll interval late).
    fn line(&mut self, statuses: &[WorkloadStatus], finished: bool) -> String {
        let done: u32 = statuses.iter().map(|s| s.done).sum();
        let total: u32 = statuses.iter().map(|s| s.total).sum();
        let secs = self.started.elapsed().as_secs_f64();
        if self.running_since.is_none() && statuses.iter().any(|s| s.state != WorkloadState::Waiting) {
            self.running_since = Some(Instant::now());
        }
        let rate = match self.running_since {
            _ if finished => String::new(),
            Some(t) if t.elapsed().as_secs_f64() > 0.05 => {
                format!(", {:.0} entries/s", f64::from(done) / t.elapsed().as_secs_f64())
            }
            _ => String::new(),
        };
        let per_node = if statuses.len() <= 12 {
            statuses
                .iter()
                .enumerate()
                .map(|(i, s)| format!("[{i}] {}/{}", s.done, s.total))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            let min = statuses.iter().map(|s| s.done).min().unwrap_or(0);
            let max = statuses.iter().map(|s| s.done).max().unwrap_or(0);
            let finished = statuses.iter().filter(|s| s.finished()).count();
            format!("{finished}/{} nodes finished, per node {min}…{max}", statuses.len())
        };
        format!(
            "{} (N = {}): {per_node} | {done}/{total} entries{rate}, {secs:.1} s",
            self.algorithm,
            statuses.len()
        )
    }

    fn show(&mut self, statuses: &[WorkloadStatus]) {
        if statuses.iter().all(WorkloadStatus::finished) {
            return; // `finish` prints the last line
        }
        let line = self.line(statuses, false);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if self.last_line.as_ref().is_none_or(|(t, _)| t.elapsed() >= Self::PLAIN_EVERY) {
            let _ = writeln!(err, "{line}");
            self.last_line = Some((Instant::now(), line));
        }
    }

    fn finish(&mut self, statuses: &[WorkloadStatus]) {
        let line = self.line(statuses, true);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = writeln!(err, "\r\x1b[2K{line}");
        } else if self.last_line.as_ref().is_none_or(|(_, last)| *last != line) {
            let _ = writeln!(err, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn addresses_and_environment() {
        let addrs = node_addresses("127.0.0", 3).unwrap();
        assert_eq!(
            addrs,
            vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)]
        );
        assert_eq!(node_addresses("127.0.0", 254).unwrap().last(), Some(&Ipv4Addr::new(127, 0, 0, 254)));
        assert!(node_addresses("127.0.0", 255).is_err());
        assert!(node_addresses("127.0.0", 0).is_err());
        assert!(node_addresses("127.0.0.0", 2).is_err());
        assert!(node_addresses("localhost", 2).is_err());

        let args = ClusterArgs {
            nodes: 3,
            iterations: 10,
            cs_ms: 5,
            algorithms: Algorithm::ALL.to_vec(),
            subnet: "127.0.0".into(),
            peer_port: 7070,
            http_port: 8080,
            out: None,
            keep: false,
            binary: None,
            sweep: vec![],
            lamport_ack_elision: true,
            peer_tls: false,
            start: StartMode::Together,
            token: None,
        };
        let counter = Path::new("/tmp/x/counter");
        let env: BTreeMap<_, _> = node_env(
            &args,
            Algorithm::RicartAgrawala,
            1,
            &addrs,
            "c1",
            counter,
            Some(Path::new("/tmp/x/start")),
        )
        .into_iter()
        .collect();
        assert_eq!(env["DMUTEX_NODE_ID"], "1");
        assert_eq!(env["DMUTEX_PEERS"], "127.0.0.1:7070,127.0.0.2:7070,127.0.0.3:7070");
        assert_eq!(env["DMUTEX_PEER_ADDR"], "127.0.0.2:7070");
        assert_eq!(env["DMUTEX_HTTP_ADDR"], "127.0.0.2:8080");
        assert_eq!(env["DMUTEX_ALGORITHM"], "ricart-agrawala");
        assert_eq!(env["DMUTEX_WORKLOAD_ALGORITHM"], "ricart-agrawala");
        assert_eq!(env["DMUTEX_WORKLOAD_ITERATIONS"], "10");
        assert_eq!(env["DMUTEX_WORKLOAD_CS_MS"], "5");
        assert_eq!(env["DMUTEX_WORKLOAD_COUNTER_FILE"], "/tmp/x/counter");
        assert_eq!(env["DMUTEX_CLUSTER_NAME"], "c1");
        assert_eq!(env["DMUTEX_LAMPORT_ACK_ELISION"], "true");
        assert_eq!(env["DMUTEX_WORKLOAD_START_FILE"], "/tmp/x/start");
        // A staggered start has no start file: each node starts when ready.
        let env = node_env(&args, Algorithm::Lamport, 1, &addrs, "c1", counter, None);
        assert!(env.iter().all(|(k, _)| *k != "DMUTEX_WORKLOAD_START_FILE"));
        assert_eq!("staggered".parse::<StartMode>(), Ok(StartMode::Staggered));
        assert_eq!(StartMode::default().to_string(), "together");
        assert!("soon".parse::<StartMode>().is_err());
    }

    #[test]
    fn workload_response_shape() {
        let body =
            serde_json::json!({"status": {"state": "running", "done": 3, "total": 10}, "report": null});
        let r: WorkloadResponse = serde_json::from_value(body).unwrap();
        assert_eq!(r.status.state, WorkloadState::Running);
        assert!(r.report.is_none());
        let stats: Stats = serde_json::from_value(serde_json::json!({
            "node_id": 2, "incarnation": 123,
            "messages_sent": {"lamport": {"REQUEST": 4, "REPLY": 4, "RELEASE": 4}, "probable-owner": {}},
            "messages_received": {}, "messages_sent_total": 12, "grants": {"lamport": 10}, "lamport_clock": 57
        }))
        .unwrap();
        assert_eq!(stats.messages_sent["lamport"]["REPLY"], 4);
        assert_eq!(stats.lamport_clock, 57);
    }
}
