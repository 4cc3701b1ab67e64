//! Node configuration: layered sources, parsed into typed values and validated.
//!
//! Layers, lowest to highest priority (the `config` crate merges them):
//!
//! 1. built-in defaults (`DEFAULTS`);
//! 2. an optional TOML file (`--config PATH`, else `DMUTEX_CONFIG`), whose keys are the lower-case names below
//!    without the prefix (`node_id = 2`, `peers = ["a:7070", "b:7070"]` or `peers = "a:7070,b:7070"`);
//!    an unknown key in the file is an error (a typo must not silently fall back to a default);
//! 3. the environment, `DMUTEX_<KEY>` (empty values count as unset; unknown `DMUTEX_*` variables are ignored,
//!    because `dmutex lock` itself sets `DMUTEX_LOCK` and friends for its child);
//! 4. command-line overrides, passed as a map from the same lower-case key names to strings.
//!
//! Values are read as strings (or, for `peers`, a string or an array) and parsed here rather than by serde, so
//! that every [`ConfigError`] names the environment variable it is about (`DMUTEX_PEERS: entry 2 "foo" is not
//! host:port`), whichever layer the bad value came from.
//!
//! Rules this module keeps:
//! - peer entries keep their host names: nothing here resolves or rewrites an address (a StatefulSet's
//!   `dmutex-2.dmutex:7070` must reach the transport as written, to be resolved on every reconnect);
//! - the node id is `DMUTEX_NODE_ID`, else the index of the one peer entry whose host is this machine's host
//!   name (or whose first DNS label is), else a trailing `-<n>` on the host name's first label (`dmutex-2`);
//!   [`NodeConfig::node_id_source`] says which, so a configured id is never silently replaced (by discovery);
//! - `DMUTEX_BOOTSTRAP_EXPECT` is the bootstrap size; `DMUTEX_CLUSTER_SIZE`, its old name, still works, and the
//!   two set to different values is an error naming both;
//! - the membership timing knobs (`DMUTEX_HEARTBEAT_MS`, `DMUTEX_SUSPECT_TIMEOUT_MS`, `DMUTEX_MEMBER_LEASE_MS`,
//!   `DMUTEX_CLOCK_DRIFT_PPM`, `DMUTEX_MEMBERSHIP_RETRY_MS`) default to
//!   [`membership::Config::standard`] and are checked by [`membership::Config::validate`] and against the
//!   acquire timeout; the result is [`NodeConfig::membership`];
//! - the cluster secret is never printed: it is held in a [`Secret`] whose `Debug` is redacted;
//! - nothing reads the process environment or the host name except [`ConfigSources::from_process`], so tests
//!   inject both (mutating the process environment races between tests and is `unsafe` in edition 2024).

use crate::algo::membership;
use crate::algo::{Algorithm, Millis, NodeId};
use config::{Environment, File, FileFormat, Source};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The prefix of every environment variable read here.
pub(crate) const ENV_PREFIX: &str = "DMUTEX";

/// Every configuration key (lower case, without the prefix), in documentation order.
pub const KEYS: &[&str] = &[
    "node_id",
    "peers",
    "peer_addr",
    "advertise_addr",
    "http_addr",
    "algorithm",
    "algorithms",
    "lamport_ack_elision",
    "cluster_name",
    "cluster_secret",
    "cluster_secret_file",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "peer_tls_cert",
    "peer_tls_key",
    "peer_tls_ca",
    "api_tokens_file",
    "metrics_auth",
    "credentials_reload_ms",
    "log",
    "log_format",
    "max_frame_bytes",
    "default_timeout_ms",
    "default_ttl_ms",
    "max_ttl_ms",
    "shutdown_grace_ms",
    "discovery",
    "bootstrap_expect",
    "cluster_size",
    "heartbeat_ms",
    "suspect_timeout_ms",
    "member_lease_ms",
    "clock_drift_ppm",
    "membership_retry_ms",
    "test_clock_rate_ppm",
    "workload_iterations",
    "workload_cs_ms",
    "workload_lock",
    "workload_counter_file",
    "workload_algorithm",
    "workload_out",
    "workload_start_file",
];

/// Built-in defaults (the lowest layer). Keys absent here have no default (`workload_algorithm` defaults to
/// `algorithm`, the others are optional).
pub(crate) const DEFAULTS: &[(&str, &str)] = &[
    ("peer_addr", "0.0.0.0:7070"),
    ("http_addr", "0.0.0.0:8080"),
    ("algorithm", "lamport"),
    ("algorithms", "lamport,ricart-agrawala,probable-owner"),
    ("lamport_ack_elision", "false"),
    ("cluster_name", "dmutex"),
    ("metrics_auth", "open"),
    ("credentials_reload_ms", "10000"),
    ("log", "info"),
    ("log_format", "text"),
    ("max_frame_bytes", "1048576"),
    ("default_timeout_ms", "30000"),
    ("default_ttl_ms", "15000"),
    ("shutdown_grace_ms", "3000"),
    // membership::Config::standard() (the `defaults` test checks that they agree).
    ("heartbeat_ms", "200"),
    ("suspect_timeout_ms", "1500"),
    ("member_lease_ms", "1000"),
    ("clock_drift_ppm", "10000"),
    ("membership_retry_ms", "300"),
    ("workload_iterations", "0"),
    ("workload_cs_ms", "10"),
    ("workload_lock", "cs"),
];

/// The smallest accepted `DMUTEX_MAX_FRAME_BYTES`: a handshake must fit.
pub(crate) const MIN_FRAME_BYTES: usize = 1024;

/// What [`NodeConfig::graceful_stop_bound`] allows after the shutdown grace and the leave: the HTTP server's
/// drain, the end of the node loop and the trace flush (`node::run` and `obs::telemetry::SHUTDOWN_TIMEOUT`
/// stay inside it; a test in `node::run` checks).
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

/// The membership timing keys, each with the [`membership::Config`] field it sets.
const MEMBERSHIP_KEYS: &[(&str, &str)] = &[
    ("heartbeat", "heartbeat_ms"),
    ("suspect_after", "suspect_timeout_ms"),
    ("lease", "member_lease_ms"),
    ("drift_ppm", "clock_drift_ppm"),
    ("retry", "membership_retry_ms"),
];

/// The environment variable naming the TOML file, when `--config` is not given.
pub(crate) const CONFIG_FILE_ENV: &str = "DMUTEX_CONFIG";

/// The environment variable name of a configuration key: `node_id` → `DMUTEX_NODE_ID`.
pub(crate) fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}_{}", key.to_ascii_uppercase())
}

/// A configuration error. Its message starts with the environment variable it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A value that does not parse, or is out of its allowed range.
    #[error("{key}: {message}")]
    Invalid {
        /// The environment variable (`DMUTEX_…`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The node id is not a valid index into the peer list.
    #[error("DMUTEX_NODE_ID: {id} is out of range for {peers} peers")]
    NodeIdOutOfRange {
        /// The configured id.
        id: u16,
        /// How many peers (or `DMUTEX_BOOTSTRAP_EXPECT`) there are.
        peers: usize,
    },
    /// No node id was configured and none could be derived from the host name.
    #[error(
        "DMUTEX_NODE_ID: not set, and {} neither matches one peer entry nor ends in -<n>",
        host_words(host)
    )]
    NodeIdUnknown {
        /// The host name, if it could be read.
        host: Option<String>,
    },
    /// A peer entry is not `host:port`.
    #[error("DMUTEX_PEERS: entry {index} {entry:?} is not host:port ({reason})")]
    BadPeer {
        /// The entry's position, counted from 0 (the node id it would have).
        index: usize,
        /// The entry as written.
        entry: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The same address appears twice in the peer list.
    #[error("DMUTEX_PEERS: entries {first} and {second} are both {entry:?}")]
    DuplicatePeer {
        /// The earlier position.
        first: usize,
        /// The later position.
        second: usize,
        /// The repeated entry.
        entry: String,
    },
    /// There are no peers and no discovery mechanism to find them.
    #[error("DMUTEX_PEERS: the peer list is empty (set DMUTEX_PEERS, or DMUTEX_DISCOVERY)")]
    NoPeers,
    /// A listen address is not an `ip:port` socket address.
    #[error("{key}: {value:?} is not a socket address (ip:port): {reason}")]
    BadSocketAddr {
        /// The environment variable.
        key: String,
        /// The value as written.
        value: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The configuration file cannot be read or parsed.
    #[error("DMUTEX_CONFIG: {path}: {message}")]
    File {
        /// The configuration file named by `DMUTEX_CONFIG`.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The configuration file has a key this version does not know.
    #[error("DMUTEX_CONFIG: {path}: unknown key {key:?} (known keys: {known})")]
    UnknownKey {
        /// The configuration file named by `DMUTEX_CONFIG`.
        path: PathBuf,
        /// The key as written in the file.
        key: String,
        /// The known keys, comma-separated.
        known: String,
    },
}

impl ConfigError {
    /// The process exit code for a configuration error (2, as for a usage error).
    pub fn exit_code(&self) -> i32 {
        2
    }

    /// The environment variable the error is about.
    #[cfg(test)]
    fn key(&self) -> &str {
        match self {
            ConfigError::Invalid { key, .. } | ConfigError::BadSocketAddr { key, .. } => key,
            ConfigError::NodeIdOutOfRange { .. } | ConfigError::NodeIdUnknown { .. } => "DMUTEX_NODE_ID",
            ConfigError::BadPeer { .. } | ConfigError::DuplicatePeer { .. } | ConfigError::NoPeers => {
                "DMUTEX_PEERS"
            }
            ConfigError::File { .. } | ConfigError::UnknownKey { .. } => CONFIG_FILE_ENV,
        }
    }

    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid { key: env_name(key), message: message.into() }
    }
}

/// The host name as an error message names it: quoted, or said to be unreadable.
fn host_words(host: &Option<String>) -> String {
    match host {
        Some(h) => format!("the host name \"{h}\""),
        None => "the host name (which could not be read)".into(),
    }
}

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub(crate) fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it (the handshake's HMAC key).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A peer's address as configured: a host name or IP literal and a port. Never resolved here.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddr {
    /// Host name or IP address (an IPv6 literal without its brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for PeerAddr {
    /// `host:port`, with brackets around an IPv6 literal: a form `TcpStream::connect` accepts as is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for PeerAddr {
    type Err = String;

    /// Parses `host:port` or `[ipv6]:port`. The host must be a plausible DNS name or IP literal.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| "missing :port".to_string())?;
        let port: u16 = port.parse().map_err(|_| format!("port {port:?} is not a number in 1..=65535"))?;
        if port == 0 {
            return Err("port 0 is not allowed".into());
        }
        let host = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            inner.parse::<Ipv6Addr>().map_err(|_| format!("{inner:?} is not an IPv6 address"))?;
            inner
        } else {
            if host.is_empty() {
                return Err("empty host".into());
            }
            if host.contains(':') {
                return Err("an IPv6 address needs brackets: [addr]:port".into());
            }
            if let Some(c) =
                host.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
            {
                return Err(format!("character {c:?} is not allowed in a host name"));
            }
            host
        };
        Ok(PeerAddr { host: host.to_string(), port })
    }
}

/// How peers are found when `DMUTEX_PEERS` is not given. Validated syntactically only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// `dns:NAME:PORT`: resolve `NAME` (for example a headless service) and use its addresses with `PORT`.
    Dns {
        /// The DNS name to resolve.
        name: String,
        /// The peer port.
        port: u16,
    },
}

impl fmt::Display for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Discovery::Dns { name, port } => write!(f, "dns:{name}:{port}"),
        }
    }
}

impl FromStr for Discovery {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (scheme, rest) = s.split_once(':').ok_or_else(|| format!("{s:?} is not scheme:…"))?;
        match scheme {
            "dns" => {
                let addr: PeerAddr =
                    rest.parse().map_err(|e| format!("{s:?}: {e} (expected dns:NAME:PORT)"))?;
                Ok(Discovery::Dns { name: addr.host, port: addr.port })
            }
            other => Err(format!("unknown discovery scheme {other:?} (expected dns:NAME:PORT)")),
        }
    }
}

/// The log output format.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (expected text or json)")),
        }
    }
}

/// Where a node's id came from.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NodeIdSource {
    /// `DMUTEX_NODE_ID` (the file's `node_id`, `--node-id`): the id stays what was configured, whatever the host
    /// name or DNS says.
    Configured,
    /// The index of the one `DMUTEX_PEERS` entry naming this host.
    PeerEntry,
    /// The trailing `-<n>` of the host name's first label (a StatefulSet pod's ordinal).
    HostOrdinal,
    /// Not known until DNS discovery settles: from the replica's name through reverse DNS, or its place among
    /// the sorted discovered addresses (the id is 0 until then).
    Discovery,
}

/// Who may read `/metrics` when API tokens are configured.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum MetricsAuth {
    /// Anyone (a Prometheus scrape needs no token): the default.
    #[default]
    Open,
    /// Only a token with the `read` scope.
    Read,
}

impl FromStr for MetricsAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "open" => Ok(MetricsAuth::Open),
            "read" => Ok(MetricsAuth::Read),
            other => Err(format!("unknown value {other:?} (expected open or read)")),
        }
    }
}

/// TLS for the HTTP API (`DMUTEX_TLS_CERT`, `DMUTEX_TLS_KEY`, optional `DMUTEX_TLS_CLIENT_CA`): PEM files,
/// re-read when they change. Only the paths live here; the files are parsed where they are used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiTls {
    /// The server certificate chain (leaf first).
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// Mutual TLS between peers (`DMUTEX_PEER_TLS_CERT`, `DMUTEX_PEER_TLS_KEY`, `DMUTEX_PEER_TLS_CA`): this node's
/// certificate and key, and the cluster CA every peer's certificate must chain to. PEM files, re-read when
/// they change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTls {
    /// This node's certificate chain (leaf first); its SANs must name the host of its peer-list entry.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The cluster CA bundle.
    pub ca: PathBuf,
}

/// Transport security and API access control. Everything is off by default (the local demo).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SecurityConfig {
    /// HTTPS for the API, if configured.
    pub api_tls: Option<ApiTls>,
    /// Mutual TLS on peer links, if configured.
    pub peer_tls: Option<PeerTls>,
    /// Bearer tokens with scopes (`DMUTEX_API_TOKENS_FILE`: `<token> <scope>[,<scope>…]` per line, `#`
    /// comments); `None`: the API needs no token.
    pub api_tokens_file: Option<PathBuf>,
    /// Whether `/metrics` needs a `read` token (only meaningful with tokens).
    pub metrics_auth: MetricsAuth,
    /// How often certificate and token files are checked for changes (`DMUTEX_CREDENTIALS_RELOAD_MS`).
    pub credentials_reload: Duration,
}

/// The built-in workload a node can run against its own cluster (used by `dmutex cluster` and the demos).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// How many critical sections to enter; 0 turns the workload off.
    pub iterations: u64,
    /// How long to stay in each critical section.
    pub cs: Duration,
    /// The lock to take.
    pub lock: String,
    /// A shared file whose counter each critical section increments (a mutual-exclusion witness).
    pub counter_file: Option<PathBuf>,
    /// The algorithm the workload's requests ask for.
    pub algorithm: Algorithm,
    /// Where to write the node's JSON report.
    pub out: Option<PathBuf>,
    /// The common start: once ready, wait until this file holds a start time (UNIX ms), then until that time
    /// (`dmutex cluster` writes it when every node is ready). None: start when ready.
    pub start_file: Option<PathBuf>,
}

/// A node's whole configuration, parsed and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id: its index in `peers`.
    pub node_id: NodeId,
    /// Where `node_id` came from.
    pub node_id_source: NodeIdSource,
    /// Every node's peer address in node-id order, this node's own included. Empty only with `discovery`.
    pub peers: Vec<PeerAddr>,
    /// Where to listen for peers.
    pub peer_addr: SocketAddr,
    /// The `host:port` other nodes reach this node's peer port at, when this node is not in the peer list
    /// (`DMUTEX_ADVERTISE_ADDR`): a node whose id is beyond `DMUTEX_PEERS` joins a running cluster with the
    /// listed nodes as seeds (Kubernetes: pod `dmutex-5` with the three seeds in the ConfigMap).
    pub advertise_addr: Option<PeerAddr>,
    /// Where to serve the HTTP API.
    pub http_addr: SocketAddr,
    /// The algorithm used when a request names none.
    pub algorithm: Algorithm,
    /// The algorithms a request may name, in [`Algorithm::ALL`] order; each is its own namespace of locks.
    pub algorithms: Vec<Algorithm>,
    /// Lamport's footnote option: no REPLY to a REQUEST when a message stamped later was already sent to
    /// its sender (fewer messages under contention; off by default, so counts are the textbook 3(N−1)).
    pub lamport_ack_elision: bool,
    /// The cluster's name: peers of another cluster are refused at the handshake.
    pub cluster_name: String,
    /// The shared secret authenticating peer handshakes, if any.
    pub cluster_secret: Option<Secret>,
    /// TLS on the API and the peer links, API tokens.
    pub security: SecurityConfig,
    /// The log filter (`tracing_subscriber::EnvFilter` syntax).
    pub log: String,
    /// The log output format.
    pub log_format: LogFormat,
    /// The largest peer frame accepted.
    pub max_frame_bytes: usize,
    /// How long an acquire waits when the request names no timeout.
    pub default_timeout: Duration,
    /// A lease's time to live when the request names none.
    pub default_ttl: Duration,
    /// The largest TTL a request may ask for; `None` for no limit.
    pub max_ttl: Option<Duration>,
    /// How long a shutdown waits for holders to release before leaving.
    pub shutdown_grace: Duration,
    /// How to find peers when `peers` is empty.
    pub discovery: Option<Discovery>,
    /// The number of nodes the cluster bootstraps with (`DMUTEX_BOOTSTRAP_EXPECT`, old name
    /// `DMUTEX_CLUSTER_SIZE`): checked against `peers`; with `discovery`, how many replicas to wait for (and
    /// the bound on the node id).
    pub bootstrap_expect: Option<usize>,
    /// The key `bootstrap_expect` was read from (`bootstrap_expect`, or its old name `cluster_size`), so that an
    /// error about it names what was written.
    pub bootstrap_expect_key: &'static str,
    /// The membership core's timing (heartbeat, S, L, ρ, retry), validated.
    pub membership: membership::Config,
    /// For fault tests only (`DMUTEX_TEST_CLOCK_RATE_PPM`): the node's clock runs at this rate, in parts per
    /// million of real time (default 1 000 000). Within `1 ± ρ` the membership layer stays safe; beyond it
    /// the timing assumption is broken on purpose (the nemesis suite's negative control).
    pub test_clock_rate_ppm: u32,
    /// The built-in workload.
    pub workload: WorkloadConfig,
}

/// Everything a configuration is built from, gathered up front so tests can inject each part.
#[derive(Clone, Debug, Default)]
pub struct ConfigSources {
    /// Environment variables (only the `DMUTEX_*` ones matter).
    pub env: BTreeMap<String, String>,
    /// This machine's host name, if known.
    pub host_name: Option<String>,
    /// The TOML file from `--config`; when `None`, `DMUTEX_CONFIG` in `env` is used.
    pub config_file: Option<PathBuf>,
    /// Command-line values, by lower-case key (`node_id`, `peers`, …). The highest layer.
    pub overrides: BTreeMap<String, String>,
}

impl ConfigSources {
    /// Reads the process environment (`DMUTEX_*` only) and the host name.
    pub fn from_process(
        config_file: Option<&Path>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut env = BTreeMap::new();
        for (k, v) in std::env::vars_os() {
            let Some(k) = k.to_str() else { continue };
            if !k.starts_with("DMUTEX_") {
                continue;
            }
            let v = v.into_string().map_err(|_| ConfigError::Invalid {
                key: k.to_string(),
                message: "is not valid UTF-8".into(),
            })?;
            env.insert(k.to_string(), v);
        }
        let host_name = hostname::get().ok().and_then(|h| h.into_string().ok());
        Ok(ConfigSources {
            env,
            host_name,
            config_file: config_file.map(Path::to_path_buf),
            overrides: overrides.clone(),
        })
    }
}

impl ConfigSources {
    /// `DMUTEX_*` variables that are neither configuration keys nor known to other commands (typos, most
    /// likely), sorted. They are ignored; the node should log a warning for each.
    pub fn unknown_env_vars(&self) -> Vec<String> {
        /// Variables other parts of dmutex read or set: `--config`'s, the client commands', and those
        /// `dmutex lock` gives its child.
        const OTHERS: &[&str] = &[
            CONFIG_FILE_ENV,
            "DMUTEX_ENDPOINT",
            "DMUTEX_LOCK",
            "DMUTEX_FENCING_TOKEN",
            "DMUTEX_LEASE",
            "DMUTEX_WORKER_THREADS",
        ];
        self.env
            .keys()
            .filter(|k| k.starts_with("DMUTEX_") && !OTHERS.contains(&k.as_str()))
            .filter(|k| !KEYS.iter().any(|key| env_name(key) == **k))
            .cloned()
            .collect()
    }
}

/// The merged layers, before parsing.
struct Raw(config::Config);

impl Raw {
    fn value(&self, key: &str) -> Option<config::Value> {
        match self.0.get::<config::Value>(key) {
            Ok(v) if !matches!(v.kind, config::ValueKind::Nil) => Some(v),
            _ => None,
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => v
                .into_string()
                .map(Some)
                .map_err(|_| ConfigError::invalid(key, "expected a single value, not a list or table")),
        }
    }

    fn parsed<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s.trim().parse().map(Some).map_err(|e| ConfigError::invalid(key, format!("{e}"))),
        }
    }

    fn number<T: FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| ConfigError::invalid(key, format!("{s:?} is not a valid number"))),
        }
    }

    fn millis(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        Ok(self.number::<u64>(key)?.map(Duration::from_millis))
    }

    fn socket_addr(&self, key: &str) -> Result<Option<SocketAddr>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => s.trim().parse().map(Some).map_err(|e: std::net::AddrParseError| {
                ConfigError::BadSocketAddr { key: env_name(key), value: s, reason: e.to_string() }
            }),
        }
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case).
    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.string(key)? {
            None => Ok(None),
            Some(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(Some(true)),
                "false" | "0" | "no" | "off" => Ok(Some(false)),
                _ => Err(ConfigError::invalid(key, format!("{s:?} is not true or false"))),
            },
        }
    }

    fn algorithm(&self, key: &str) -> Result<Option<Algorithm>, ConfigError> {
        self.parsed::<Algorithm>(key)
    }

    /// A path that must name a readable file (its contents are parsed where it is used).
    fn file(&self, key: &str) -> Result<Option<PathBuf>, ConfigError> {
        let Some(path) = self.string(key)? else { return Ok(None) };
        let path = PathBuf::from(path);
        match std::fs::File::open(&path) {
            Ok(_) if path.is_file() => Ok(Some(path)),
            Ok(_) => Err(ConfigError::invalid(key, format!("{} is not a file", path.display()))),
            Err(e) => Err(ConfigError::invalid(key, format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// The TLS and token settings: each group is all set or not at all, and every file readable.
    fn security(&self) -> Result<SecurityConfig, ConfigError> {
        let (cert, key, client_ca) =
            (self.file("tls_cert")?, self.file("tls_key")?, self.file("tls_client_ca")?);
        let api_tls = match (cert, key) {
            (Some(cert), Some(key)) => Some(ApiTls { cert, key, client_ca }),
            (Some(_), None) => {
                return Err(ConfigError::invalid("tls_key", "missing: DMUTEX_TLS_CERT is set"));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid("tls_cert", "missing: DMUTEX_TLS_KEY is set"));
            }
            (None, None) if client_ca.is_some() => {
                return Err(ConfigError::invalid(
                    "tls_client_ca",
                    "client certificates need HTTPS: set DMUTEX_TLS_CERT and DMUTEX_TLS_KEY too",
                ));
            }
            (None, None) => None,
        };
        let peer = [
            ("peer_tls_cert", self.file("peer_tls_cert")?),
            ("peer_tls_key", self.file("peer_tls_key")?),
            ("peer_tls_ca", self.file("peer_tls_ca")?),
        ];
        let peer_tls = match peer {
            [(_, Some(cert)), (_, Some(key)), (_, Some(ca))] => Some(PeerTls { cert, key, ca }),
            [(_, None), (_, None), (_, None)] => None,
            _ => {
                let missing: Vec<&str> = peer.iter().filter(|(_, v)| v.is_none()).map(|(k, _)| *k).collect();
                let names: Vec<String> = missing.iter().map(|k| env_name(k)).collect();
                return Err(ConfigError::invalid(
                    missing[0],
                    format!("peer TLS needs its certificate, key and CA: missing {}", names.join(", ")),
                ));
            }
        };
        let credentials_reload = self.millis("credentials_reload_ms")?.unwrap_or(Duration::from_secs(10));
        if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&credentials_reload) {
            return Err(ConfigError::invalid("credentials_reload_ms", "must be between 100 and 3600000"));
        }
        Ok(SecurityConfig {
            api_tls,
            peer_tls,
            api_tokens_file: self.file("api_tokens_file")?,
            metrics_auth: self.parsed("metrics_auth")?.unwrap_or_default(),
            credentials_reload,
        })
    }

    /// A list of strings: an array, or one comma-separated string (empty entries skipped).
    fn list(&self, key: &str, what: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(v) = self.value(key) else { return Ok(None) };
        let entries: Vec<String> = match v.kind {
            config::ValueKind::Array(items) => items
                .into_iter()
                .map(|item| item.into_string())
                .collect::<Result<_, _>>()
                .map_err(|_| ConfigError::invalid(key, format!("every list item must be {what}")))?,
            _ => v
                .into_string()
                .map_err(|_| ConfigError::invalid(key, format!("expected {what},… or a list")))?
                .split(',')
                .map(str::to_string)
                .collect(),
        };
        Ok(Some(entries.into_iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect()))
    }

    /// `algorithms`: the allowed algorithms, in [`Algorithm::ALL`] order (repetitions count once).
    fn algorithms(&self) -> Result<Option<Vec<Algorithm>>, ConfigError> {
        let Some(names) = self.list("algorithms", "an algorithm name")? else { return Ok(None) };
        let mut chosen = Vec::new();
        for name in &names {
            chosen.push(name.parse::<Algorithm>().map_err(|e| ConfigError::invalid("algorithms", e))?);
        }
        if chosen.is_empty() {
            return Err(ConfigError::invalid("algorithms", "must name at least one algorithm"));
        }
        Ok(Some(Algorithm::ALL.into_iter().filter(|a| chosen.contains(a)).collect()))
    }

    /// `peers`: a comma-separated string or an array of strings.
    fn peers(&self) -> Result<Vec<PeerAddr>, ConfigError> {
        let entries: Vec<String> = match self.value("peers") {
            None => return Ok(Vec::new()),
            Some(v) => match v.kind {
                config::ValueKind::Array(items) => {
                    items.into_iter().map(|item| item.into_string()).collect::<Result<_, _>>().map_err(
                        |_| ConfigError::invalid("peers", "every list item must be a \"host:port\" string"),
                    )?
                }
                _ => {
                    let s = v
                        .into_string()
                        .map_err(|_| ConfigError::invalid("peers", "expected \"host:port,…\" or a list"))?;
                    if s.trim().is_empty() {
                        return Ok(Vec::new());
                    }
                    s.split(',').map(str::to_string).collect()
                }
            },
        };
        entries
            .iter()
            .enumerate()
            .map(|(index, entry)| {
                entry.trim().parse::<PeerAddr>().map_err(|reason| ConfigError::BadPeer {
                    index,
                    entry: entry.clone(),
                    reason,
                })
            })
            .collect()
    }
}

impl NodeConfig {
    /// Loads and validates the configuration from explicitly given sources.
    pub fn load(sources: &ConfigSources) -> Result<NodeConfig, ConfigError> {
        let raw = merge(sources)?;
        let cfg = Self::parse(&raw, sources.host_name.as_deref())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn parse(raw: &Raw, host_name: Option<&str>) -> Result<NodeConfig, ConfigError> {
        let peers = raw.peers()?;
        let discovery_set = raw.string("discovery")?.is_some_and(|d| !d.trim().is_empty());
        let (node_id, node_id_source) = match raw.number::<u16>("node_id")? {
            Some(id) => (id, NodeIdSource::Configured),
            None => match node_id_from_host(host_name, &peers) {
                Some(found) => found,
                // With discovery the id comes from discovery (the replica's name, or its sorted place).
                None if discovery_set && peers.is_empty() => (0, NodeIdSource::Discovery),
                None => return Err(ConfigError::NodeIdUnknown { host: host_name.map(str::to_string) }),
            },
        };
        let (bootstrap_expect, bootstrap_expect_key) =
            match (raw.number::<usize>("bootstrap_expect")?, raw.number::<usize>("cluster_size")?) {
                (Some(plain), Some(old)) if plain != old => {
                    return Err(ConfigError::invalid(
                        "bootstrap_expect",
                        format!(
                            "{plain} differs from DMUTEX_CLUSTER_SIZE ({old}), its old name: set only \
                             DMUTEX_BOOTSTRAP_EXPECT"
                        ),
                    ));
                }
                (Some(plain), _) => (Some(plain), "bootstrap_expect"),
                (None, Some(old)) => (Some(old), "cluster_size"),
                (None, None) => (None, "bootstrap_expect"),
            };
        let standard = membership::Config::standard();
        let membership = membership::Config {
            heartbeat: raw.number("heartbeat_ms")?.map_or(standard.heartbeat, Millis::new),
            suspect_after: raw.number("suspect_timeout_ms")?.map_or(standard.suspect_after, Millis::new),
            lease: raw.number("member_lease_ms")?.map_or(standard.lease, Millis::new),
            drift_ppm: raw.number("clock_drift_ppm")?.unwrap_or(standard.drift_ppm),
            retry: raw.number("membership_retry_ms")?.map_or(standard.retry, Millis::new),
        };
        let algorithm = raw.algorithm("algorithm")?.unwrap_or(Algorithm::Lamport);
        let secret = match (raw.string("cluster_secret")?, raw.string("cluster_secret_file")?) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "cluster_secret_file",
                    "set together with DMUTEX_CLUSTER_SECRET; set only one",
                ));
            }
            (Some(s), None) => Some(Secret::new(s)),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::invalid("cluster_secret_file", format!("cannot read {path:?}: {e}"))
                })?;
                // A file written by `echo` or a Kubernetes secret often ends in a newline that is not part of
                // the secret.
                Some(Secret::new(text.trim_end_matches(['\r', '\n'])))
            }
            (None, None) => None,
        };
        let security = raw.security()?;
        let workload = WorkloadConfig {
            iterations: raw.number("workload_iterations")?.unwrap_or(0),
            cs: raw.millis("workload_cs_ms")?.unwrap_or(Duration::from_millis(10)),
            lock: raw.string("workload_lock")?.unwrap_or_else(|| "cs".into()),
            counter_file: raw.string("workload_counter_file")?.map(PathBuf::from),
            algorithm: raw.algorithm("workload_algorithm")?.unwrap_or(algorithm),
            out: raw.string("workload_out")?.map(PathBuf::from),
            start_file: raw.string("workload_start_file")?.map(PathBuf::from),
        };
        Ok(NodeConfig {
            node_id: NodeId::new(node_id),
            node_id_source,
            peers,
            peer_addr: raw.socket_addr("peer_addr")?.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 7070))),
            advertise_addr: match raw.string("advertise_addr")? {
                None => None,
                Some(a) => {
                    Some(a.parse::<PeerAddr>().map_err(|e| ConfigError::invalid("advertise_addr", e))?)
                }
            },
            http_addr: raw.socket_addr("http_addr")?.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8080))),
            algorithm,
            algorithms: raw.algorithms()?.unwrap_or_else(|| Algorithm::ALL.to_vec()),
            lamport_ack_elision: raw.boolean("lamport_ack_elision")?.unwrap_or(false),
            cluster_name: raw.string("cluster_name")?.unwrap_or_else(|| "dmutex".into()),
            cluster_secret: secret,
            security,
            log: raw.string("log")?.unwrap_or_else(|| "info".into()),
            log_format: raw.parsed("log_format")?.unwrap_or_default(),
            max_frame_bytes: raw.number("max_frame_bytes")?.unwrap_or(1 << 20),
            default_timeout: raw.millis("default_timeout_ms")?.unwrap_or(Duration::from_secs(30)),
            default_ttl: raw.millis("default_ttl_ms")?.unwrap_or(Duration::from_secs(15)),
            max_ttl: raw.millis("max_ttl_ms")?,
            shutdown_grace: raw.millis("shutdown_grace_ms")?.unwrap_or(Duration::from_secs(3)),
            discovery: raw.parsed("discovery")?,
            bootstrap_expect,
            bootstrap_expect_key,
            membership,
            test_clock_rate_ppm: match raw.number::<u32>("test_clock_rate_ppm")? {
                None => 1_000_000,
                Some(rate) if (100_000..=10_000_000).contains(&rate) => rate,
                Some(_) => {
                    return Err(ConfigError::invalid(
                        "test_clock_rate_ppm",
                        "must be between 100000 and 10000000 (0.1× to 10× real time)",
                    ));
                }
            },
            workload,
        })
    }

    /// Checks the rules that tie fields together. [`NodeConfig::load`] calls it; call it again after editing
    /// a configuration by hand.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.peers.is_empty() && self.discovery.is_none() {
            return Err(ConfigError::NoPeers);
        }
        for (i, a) in self.peers.iter().enumerate() {
            if let Some(j) = self.peers[..i].iter().position(|b| same_peer(a, b)) {
                return Err(ConfigError::DuplicatePeer { first: j, second: i, entry: a.to_string() });
            }
        }
        if let Some(size) = self.bootstrap_expect {
            let key = self.bootstrap_expect_key;
            if size == 0 || size > usize::from(u16::MAX) {
                return Err(ConfigError::invalid(key, format!("{size} is not in 1..=65535")));
            }
            if !self.peers.is_empty() && size > self.peers.len() {
                return Err(ConfigError::invalid(
                    key,
                    format!(
                        "{size} exceeds the {} entries of DMUTEX_PEERS (the first {size} form the cluster, \
                         the others join it)",
                        self.peers.len()
                    ),
                ));
            }
        }
        let n = if self.peers.is_empty() { self.bootstrap_expect } else { Some(self.peers.len()) };
        if let Some(n) = n
            && self.node_id.index() >= n
            && (self.advertise_addr.is_none() || self.peers.is_empty())
        {
            // Beyond the list is fine for a joiner that says where it can be reached.
            return Err(ConfigError::NodeIdOutOfRange { id: self.node_id.get(), peers: n });
        }
        if self.cluster_name.trim().is_empty() {
            return Err(ConfigError::invalid("cluster_name", "must not be empty"));
        }
        if self.cluster_secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
            return Err(ConfigError::invalid("cluster_secret", "must not be empty when set"));
        }
        if self.max_frame_bytes < MIN_FRAME_BYTES {
            return Err(ConfigError::invalid(
                "max_frame_bytes",
                format!("{} is below the minimum of {MIN_FRAME_BYTES}", self.max_frame_bytes),
            ));
        }
        if self.default_ttl.is_zero() {
            return Err(ConfigError::invalid("default_ttl_ms", "must be positive"));
        }
        if let Some(max) = self.max_ttl
            && max < self.default_ttl
        {
            return Err(ConfigError::invalid(
                "max_ttl_ms",
                format!(
                    "{} is below DMUTEX_DEFAULT_TTL_MS ({})",
                    max.as_millis(),
                    self.default_ttl.as_millis()
                ),
            ));
        }
        if !self.algorithms.contains(&self.algorithm) {
            return Err(ConfigError::invalid(
                "algorithms",
                format!(
                    "{} does not include the default algorithm {} (DMUTEX_ALGORITHM): add it, or choose \
                     another default",
                    algorithm_list(&self.algorithms),
                    self.algorithm
                ),
            ));
        }
        if self.workload.iterations > 0 && !self.algorithms.contains(&self.workload.algorithm) {
            return Err(ConfigError::invalid(
                "workload_algorithm",
                format!(
                    "{} is not among the allowed algorithms (DMUTEX_ALGORITHMS: {})",
                    self.workload.algorithm,
                    algorithm_list(&self.algorithms)
                ),
            ));
        }
        if self.workload.lock.trim().is_empty() {
            return Err(ConfigError::invalid("workload_lock", "must not be empty"));
        }
        self.membership.validate().map_err(|e| self.membership_error(&e))?;
        let bound = self.view_change_bound();
        if self.default_timeout <= bound {
            return Err(ConfigError::invalid(
                "default_timeout_ms",
                format!(
                    "{} must exceed the longest view change, {} ms (DMUTEX_SUSPECT_TIMEOUT_MS + \
                     DMUTEX_MEMBER_LEASE_MS + 2 × DMUTEX_MEMBERSHIP_RETRY_MS), or an acquire that names no \
                     timeout fails while a crashed node is being excluded",
                    self.default_timeout.as_millis(),
                    bound.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// A [`membership::ConfigError`] as a [`ConfigError`] naming the key of the field at fault, with every
    /// timing value (a combination is wrong, not one number).
    fn membership_error(&self, e: &membership::ConfigError) -> ConfigError {
        let m = &self.membership;
        let key = MEMBERSHIP_KEYS
            .iter()
            .find(|(field, _)| *field == e.field)
            .map_or_else(|| format!("{ENV_PREFIX}_MEMBERSHIP ({})", e.field), |(_, key)| env_name(key));
        ConfigError::Invalid {
            key,
            message: format!(
                "{} (DMUTEX_HEARTBEAT_MS={}, DMUTEX_SUSPECT_TIMEOUT_MS={}, DMUTEX_MEMBER_LEASE_MS={}, \
                 DMUTEX_CLOCK_DRIFT_PPM={}, DMUTEX_MEMBERSHIP_RETRY_MS={})",
                e.reason,
                m.heartbeat.get(),
                m.suspect_after.get(),
                m.lease.get(),
                m.drift_ppm,
                m.retry.get()
            ),
        }
    }

    /// The longest a view change that excludes a crashed member should take, on the local clock: S to suspect
    /// it, L for the acceptors' lease wait, and two retry intervals as the margin for a proposer that starts
    /// late (its rank) or retries once. An acquire on a majority node waits at most this for a view change,
    /// so the default acquire timeout must exceed it; a graceful leave takes at most as long.
    pub fn view_change_bound(&self) -> Duration {
        let m = &self.membership;
        let ms = m
            .suspect_after
            .get()
            .saturating_add(m.lease.get())
            .saturating_add(m.retry.get().saturating_mul(2));
        Duration::from_millis(ms)
    }

    /// How long a node may take to exit after SIGTERM: the shutdown grace (answer waiters, release leases), a
    /// graceful leave (at most [`NodeConfig::view_change_bound`], once the node runs the membership core), and
    /// [`STOP_MARGIN`]. A deployment's grace period before SIGKILL (Kubernetes
    /// `terminationGracePeriodSeconds`, compose `stop_grace_period`) must be at least this.
    pub fn graceful_stop_bound(&self) -> Duration {
        self.shutdown_grace.saturating_add(self.view_change_bound()).saturating_add(STOP_MARGIN)
    }

    /// The number of nodes, when known (from the peer list, else `bootstrap_expect`).
    #[cfg(test)]
    pub(crate) fn cluster_len(&self) -> Option<usize> {
        if self.peers.is_empty() { self.bootstrap_expect } else { Some(self.peers.len()) }
    }
}

/// `lamport,probable-owner`: a list of algorithms as `DMUTEX_ALGORITHMS` spells it.
pub(crate) fn algorithm_list(algorithms: &[Algorithm]) -> String {
    algorithms.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
}

/// Host names compare case-insensitively (DNS does).
fn same_peer(a: &PeerAddr, b: &PeerAddr) -> bool {
    a.port == b.port && a.host.eq_ignore_ascii_case(&b.host)
}

/// The node id implied by the host name, and how: the index of the one peer whose host is the host name (or
/// whose first DNS label is the host name's first label), else a trailing `-<n>` on the host name's first label.
pub(crate) fn node_id_from_host(host_name: Option<&str>, peers: &[PeerAddr]) -> Option<(u16, NodeIdSource)> {
    let host = host_name?.trim();
    if host.is_empty() {
        return None;
    }
    let label = host.split('.').next().unwrap_or(host);
    let matches: Vec<usize> = peers
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.host.eq_ignore_ascii_case(host)
                || p.host.split('.').next().is_some_and(|l| l.eq_ignore_ascii_case(label))
        })
        .map(|(i, _)| i)
        .collect();
    if let [only] = matches[..] {
        return u16::try_from(only).ok().map(|id| (id, NodeIdSource::PeerEntry));
    }
    let (_, digits) = label.rsplit_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(|id| (id, NodeIdSource::HostOrdinal))
}

/// Merges defaults < file < environment < overrides.
fn merge(sources: &ConfigSources) -> Result<Raw, ConfigError> {
    let mut builder = config::Config::builder();
    for (key, value) in DEFAULTS {
        builder = builder.set_default(*key, *value).map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    }
    let file = sources
        .config_file
        .clone()
        .or_else(|| sources.env.get(CONFIG_FILE_ENV).filter(|s| !s.is_empty()).map(PathBuf::from));
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError::File { path: path.clone(), message: e.to_string() })?;
        let source = File::from_str(&text, FileFormat::Toml);
        let keys =
            source.collect().map_err(|e| ConfigError::File { path: path.clone(), message: e.to_string() })?;
        // Sorted so that the error names the same key every run.
        let mut keys: Vec<&String> = keys.keys().collect();
        keys.sort();
        if let Some(key) = keys.into_iter().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(ConfigError::UnknownKey { path, key: key.clone(), known: KEYS.join(", ") });
        }
        builder = builder.add_source(source);
    }
    let env: config::Map<String, String> = sources.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX).prefix_separator("_").ignore_empty(true).source(Some(env)),
    );
    for (key, value) in &sources.overrides {
        if !KEYS.contains(&key.as_str()) {
            return Err(ConfigError::invalid(key, "is not a configuration key"));
        }
        builder = builder
            .set_override(key.as_str(), value.as_str())
            .map_err(|e| ConfigError::invalid(key, e.to_string()))?;
    }
    let cfg = builder
        .build()
        .map_err(|e| ConfigError::Invalid { key: ENV_PREFIX.into(), message: e.to_string() })?;
    Ok(Raw(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sources(pairs: &[(&str, &str)]) -> ConfigSources {
        ConfigSources { env: env(pairs), ..Default::default() }
    }

    fn load(pairs: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
        NodeConfig::load(&sources(pairs))
    }

    fn three() -> Vec<(&'static str, &'static str)> {
        vec![("DMUTEX_PEERS", "a:7070,b:7070,c:7070"), ("DMUTEX_NODE_ID", "1")]
    }

    fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut v = three();
        v.extend_from_slice(extra);
        v
    }

    /// A temporary file removed on drop (no tempfile dependency).
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> Self {
            let path = std::env::temp_dir().join(format!("dmutex-config-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn defaults() {
        let c = load(&three()).unwrap();
        assert_eq!(c.node_id, NodeId::new(1));
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.peers[1], PeerAddr { host: "b".into(), port: 7070 });
        assert_eq!(c.peer_addr, "0.0.0.0:7070".parse().unwrap());
        assert_eq!(c.http_addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.algorithm, Algorithm::Lamport);
        assert_eq!(c.cluster_name, "dmutex");
        assert_eq!(c.cluster_secret, None);
        assert_eq!(c.log, "info");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.max_frame_bytes, 1 << 20);
        assert_eq!(c.default_timeout, Duration::from_millis(30_000));
        assert_eq!(c.default_ttl, Duration::from_millis(15_000));
        assert_eq!(c.max_ttl, None);
        assert_eq!(c.shutdown_grace, Duration::from_millis(3000));
        assert_eq!(c.discovery, None);
        assert_eq!(c.workload.iterations, 0);
        assert_eq!(c.workload.lock, "cs");
        assert_eq!(c.workload.algorithm, Algorithm::Lamport);
        assert_eq!(c.workload.out, None);
        assert_eq!(c.bootstrap_expect, None);
        // The DEFAULTS table spells out the core's standard timing.
        assert_eq!(c.membership, membership::Config::standard());
        assert_eq!(c.view_change_bound(), Duration::from_millis(1500 + 1000 + 2 * 300));
        assert_eq!(c.graceful_stop_bound(), Duration::from_millis(3000 + 3100) + STOP_MARGIN);
    }

    #[test]
    fn bootstrap_expect_and_its_old_name() {
        let discovery = [("DMUTEX_DISCOVERY", "dns:node:7070")];
        let size = |extra: &[(&str, &str)]| {
            let mut pairs = discovery.to_vec();
            pairs.extend_from_slice(extra);
            load(&pairs).map(|c| (c.bootstrap_expect, c.bootstrap_expect_key))
        };
        assert_eq!(size(&[("DMUTEX_BOOTSTRAP_EXPECT", "5")]), Ok((Some(5), "bootstrap_expect")));
        assert_eq!(size(&[("DMUTEX_CLUSTER_SIZE", "5")]), Ok((Some(5), "cluster_size")));
        // Both, agreeing: fine (a deployment moving to the new name may carry both for a while).
        let both = size(&[("DMUTEX_BOOTSTRAP_EXPECT", "5"), ("DMUTEX_CLUSTER_SIZE", "5")]);
        assert_eq!(both, Ok((Some(5), "bootstrap_expect")));
        // Both, disagreeing: an error naming both keys.
        let e = size(&[("DMUTEX_BOOTSTRAP_EXPECT", "5"), ("DMUTEX_CLUSTER_SIZE", "3")]).unwrap_err();
        assert_eq!(e.key(), "DMUTEX_BOOTSTRAP_EXPECT");
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "DMUTEX_BOOTSTRAP_EXPECT: 5 differs from DMUTEX_CLUSTER_SIZE (3), its old name: set only \
             DMUTEX_BOOTSTRAP_EXPECT"
        );
        // Across layers too: the old name in the file, the new one in the environment.
        let file = TempFile::new("old-size.toml", "cluster_size = 3\n");
        let s = ConfigSources {
            config_file: Some(file.0.clone()),
            ..sources(&[("DMUTEX_DISCOVERY", "dns:node:7070"), ("DMUTEX_BOOTSTRAP_EXPECT", "4")])
        };
        assert_eq!(NodeConfig::load(&s).unwrap_err().key(), "DMUTEX_BOOTSTRAP_EXPECT");
        // A mismatch with the peer list names the key that was written.
        let e = load(&with(&[("DMUTEX_BOOTSTRAP_EXPECT", "4")])).unwrap_err();
        let more =
            "4 exceeds the 3 entries of DMUTEX_PEERS (the first 4 form the cluster, the others join it)";
        assert_eq!(e.to_string(), format!("DMUTEX_BOOTSTRAP_EXPECT: {more}"));
        let e = load(&with(&[("DMUTEX_CLUSTER_SIZE", "4")])).unwrap_err();
        assert_eq!(e.to_string(), format!("DMUTEX_CLUSTER_SIZE: {more}"));
        // Fewer than the list: the first two form the cluster, node 2 joins it later.
        let c = load(&with(&[("DMUTEX_BOOTSTRAP_EXPECT", "2")])).unwrap();
        assert_eq!((c.bootstrap_expect, c.peers.len()), (Some(2), 3));
        // The bound on the node id under discovery comes from either name.
        let e = size(&[("DMUTEX_BOOTSTRAP_EXPECT", "3"), ("DMUTEX_NODE_ID", "3")]).unwrap_err();
        assert_eq!(e, ConfigError::NodeIdOutOfRange { id: 3, peers: 3 });
    }

    #[test]
    fn membership_timing_from_env_and_file() {
        let c = load(&with(&[
            ("DMUTEX_HEARTBEAT_MS", "100"),
            ("DMUTEX_SUSPECT_TIMEOUT_MS", "900"),
            ("DMUTEX_MEMBER_LEASE_MS", "600"),
            ("DMUTEX_CLOCK_DRIFT_PPM", "0"),
            ("DMUTEX_MEMBERSHIP_RETRY_MS", "50"),
        ]))
        .unwrap();
        let expected = membership::Config {
            heartbeat: Millis::new(100),
            suspect_after: Millis::new(900),
            lease: Millis::new(600),
            drift_ppm: 0,
            retry: Millis::new(50),
        };
        assert_eq!(c.membership, expected);
        assert_eq!(c.view_change_bound(), Duration::from_millis(900 + 600 + 100));
        let file = TempFile::new("timing.toml", "heartbeat_ms = 50\nsuspect_timeout_ms = 400\n");
        let s = ConfigSources { config_file: Some(file.0.clone()), ..sources(&three()) };
        let c = NodeConfig::load(&s).unwrap();
        assert_eq!((c.membership.heartbeat, c.membership.suspect_after), (Millis::new(50), Millis::new(400)));
        assert_eq!(c.membership.lease, membership::Config::standard().lease, "unset keys keep the default");
    }

    /// Every rule of `membership::Config::validate`, reached through the keys: the error names the key of the
    /// field at fault and shows all the timing values, and the exit code is 2.
    #[test]
    fn impossible_membership_timing_names_the_key() {
        /// The variables set, the key the error must name, and what it must say.
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (&[("DMUTEX_HEARTBEAT_MS", "0")], "DMUTEX_HEARTBEAT_MS", "must be above 0"),
            (
                &[("DMUTEX_SUSPECT_TIMEOUT_MS", "200")],
                "DMUTEX_SUSPECT_TIMEOUT_MS",
                "must exceed the heartbeat",
            ),
            (
                &[("DMUTEX_HEARTBEAT_MS", "1000"), ("DMUTEX_SUSPECT_TIMEOUT_MS", "3000")],
                "DMUTEX_MEMBER_LEASE_MS",
                "no lease outlives a heartbeat",
            ),
            // ρ = 30 %: L·0.7/1.3 = 538 ms, still above the 200 ms heartbeat; ρ = 80 %: 111 ms, not.
            (&[("DMUTEX_CLOCK_DRIFT_PPM", "800000")], "DMUTEX_MEMBER_LEASE_MS", "no lease outlives"),
            (&[("DMUTEX_CLOCK_DRIFT_PPM", "1000000")], "DMUTEX_CLOCK_DRIFT_PPM", "below 1 000 000"),
            (&[("DMUTEX_MEMBERSHIP_RETRY_MS", "0")], "DMUTEX_MEMBERSHIP_RETRY_MS", "must be above 0"),
        ];
        for (extra, key, says) in cases {
            let e = load(&with(extra)).unwrap_err();
            assert_eq!(e.key(), *key, "{extra:?}: {e}");
            assert_eq!(e.exit_code(), 2);
            let text = e.to_string();
            assert!(text.starts_with(&format!("{key}: ")) && text.contains(says), "{extra:?}: {text}");
            assert!(
                text.contains("DMUTEX_HEARTBEAT_MS=") && text.contains("DMUTEX_CLOCK_DRIFT_PPM="),
                "{text}"
            );
        }
        assert!(load(&with(&[("DMUTEX_CLOCK_DRIFT_PPM", "300000")])).is_ok(), "ρ = 30 % is still possible");
        // Every field the core can name has a key.
        for (field, key) in MEMBERSHIP_KEYS {
            assert!(KEYS.contains(key), "{field}: {key}");
        }
    }

    #[test]
    fn the_default_acquire_timeout_must_outlast_a_view_change() {
        // S + L + 2 × retry = 1500 + 1000 + 600 = 3100 ms.
        assert!(load(&with(&[("DMUTEX_DEFAULT_TIMEOUT_MS", "3101")])).is_ok());
        let e = load(&with(&[("DMUTEX_DEFAULT_TIMEOUT_MS", "3100")])).unwrap_err();
        assert_eq!(e.key(), "DMUTEX_DEFAULT_TIMEOUT_MS");
        assert!(e.to_string().contains("must exceed the longest view change, 3100 ms"), "{e}");
        // Raising S is what breaks it here; the error still names the timeout, and says what the bound is made of.
        let e = load(&with(&[("DMUTEX_SUSPECT_TIMEOUT_MS", "40000")])).unwrap_err();
        assert_eq!(e.key(), "DMUTEX_DEFAULT_TIMEOUT_MS");
        assert!(e.to_string().contains("DMUTEX_SUSPECT_TIMEOUT_MS + DMUTEX_MEMBER_LEASE_MS"), "{e}");
        assert!(
            load(&with(&[("DMUTEX_SUSPECT_TIMEOUT_MS", "40000"), ("DMUTEX_DEFAULT_TIMEOUT_MS", "60000")]))
                .is_ok()
        );
    }

    #[test]
    fn every_key_from_env() {
        let c = load(&[
            ("DMUTEX_NODE_ID", "2"),
            ("DMUTEX_PEERS", " dmutex-0.dmutex:7070 , dmutex-1.dmutex:7070,[::1]:7072"),
            ("DMUTEX_PEER_ADDR", "127.0.0.1:7000"),
            ("DMUTEX_HTTP_ADDR", "[::]:9000"),
            ("DMUTEX_ALGORITHM", "ricart-agrawala"),
            ("DMUTEX_CLUSTER_NAME", "prod"),
            ("DMUTEX_CLUSTER_SECRET", "s3cret"),
            ("DMUTEX_LOG", "dmutex=debug"),
            ("DMUTEX_LOG_FORMAT", "json"),
            ("DMUTEX_MAX_FRAME_BYTES", "4096"),
            ("DMUTEX_DEFAULT_TIMEOUT_MS", "5000"),
            ("DMUTEX_DEFAULT_TTL_MS", "200"),
            ("DMUTEX_MAX_TTL_MS", "300"),
            ("DMUTEX_SHUTDOWN_GRACE_MS", "400"),
            ("DMUTEX_CLUSTER_SIZE", "3"),
            ("DMUTEX_WORKLOAD_ITERATIONS", "5"),
            ("DMUTEX_WORKLOAD_CS_MS", "7"),
            ("DMUTEX_WORKLOAD_LOCK", "w"),
            ("DMUTEX_WORKLOAD_COUNTER_FILE", "/tmp/counter"),
            ("DMUTEX_WORKLOAD_ALGORITHM", "po"),
            ("DMUTEX_WORKLOAD_OUT", "/tmp/out.json"),
            ("DMUTEX_WORKLOAD_START_FILE", "/tmp/start"),
            ("DMUTEX_LOCK", "ignored: set by `dmutex lock` for its child"),
        ])
        .unwrap();
        assert_eq!(c.node_id, NodeId::new(2));
        // Host names are kept exactly as written, never resolved.
        assert_eq!(c.peers[0].to_string(), "dmutex-0.dmutex:7070");
        assert_eq!(c.peers[2], PeerAddr { host: "::1".into(), port: 7072 });
        assert_eq!(c.peers[2].to_string(), "[::1]:7072");
        assert_eq!(c.peer_addr, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(c.http_addr, "[::]:9000".parse().unwrap());
        assert_eq!(c.algorithm, Algorithm::RicartAgrawala);
        assert_eq!(c.cluster_name, "prod");
        assert_eq!(c.cluster_secret.as_ref().map(Secret::expose), Some("s3cret"));
        assert_eq!(c.log, "dmutex=debug");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.max_frame_bytes, 4096);
        assert_eq!(c.default_timeout, Duration::from_millis(5000));
        assert_eq!(c.default_ttl, Duration::from_millis(200));
        assert_eq!(c.max_ttl, Some(Duration::from_millis(300)));
        assert_eq!(c.shutdown_grace, Duration::from_millis(400));
        assert_eq!(c.bootstrap_expect, Some(3));
        assert_eq!(c.bootstrap_expect_key, "cluster_size", "the old name still works");
        assert_eq!(
            c.workload,
            WorkloadConfig {
                iterations: 5,
                cs: Duration::from_millis(7),
                lock: "w".into(),
                counter_file: Some("/tmp/counter".into()),
                algorithm: Algorithm::ProbableOwner,
                out: Some("/tmp/out.json".into()),
                start_file: Some("/tmp/start".into()),
            }
        );
    }

    #[test]
    fn workload_algorithm_defaults_to_algorithm() {
        let c = load(&with(&[("DMUTEX_ALGORITHM", "probable-owner")])).unwrap();
        assert_eq!(c.workload.algorithm, Algorithm::ProbableOwner);
    }

    #[test]
    fn layering_file_then_env_then_flags() {
        let file = TempFile::new(
            "layers.toml",
            "peers = [\"a:1\", \"b:1\", \"c:1\"]\nnode_id = 0\ncluster_name = \"from-file\"\nlog = \"warn\"\n\
             http_addr = \"127.0.0.1:1\"\ndefault_ttl_ms = 1000\n",
        );
        let mut s = ConfigSources {
            env: env(&[("DMUTEX_LOG", "debug"), ("DMUTEX_HTTP_ADDR", "127.0.0.1:2")]),
            config_file: Some(file.0.clone()),
            ..Default::default()
        };
        s.overrides.insert("http_addr".into(), "127.0.0.1:3".into());
        let c = NodeConfig::load(&s).unwrap();
        assert_eq!(c.cluster_name, "from-file", "file beats default");
        assert_eq!(c.default_ttl, Duration::from_millis(1000), "file beats default");
        assert_eq!(c.peers.len(), 3, "a TOML array of peers");
        assert_eq!(c.log, "debug", "env beats file");
        assert_eq!(c.http_addr, "127.0.0.1:3".parse().unwrap(), "flag beats env and file");
        assert_eq!(c.default_timeout, Duration::from_millis(30_000), "default where nothing else says");
    }

    #[test]
    fn config_file_from_env_and_string_peers() {
        let file = TempFile::new("env.toml", "peers = \"x:1,y:1\"\nnode_id = 1\n");
        let path = file.0.to_str().unwrap().to_string();
        let c = load(&[("DMUTEX_CONFIG", &path)]).unwrap();
        assert_eq!(c.node_id, NodeId::new(1));
        assert_eq!(c.peers[1].host, "y");
    }

    #[test]
    fn config_file_errors() {
        let file = TempFile::new("unknown.toml", "peers = \"x:1\"\nnode_id = 0\npeer_adr = \"1.2.3.4:1\"\n");
        let s = ConfigSources { config_file: Some(file.0.clone()), ..Default::default() };
        let e = NodeConfig::load(&s).unwrap_err();
        assert!(matches!(&e, ConfigError::UnknownKey { key, .. } if key == "peer_adr"), "{e}");
        assert!(e.to_string().starts_with("DMUTEX_CONFIG: "), "{e}");

        let bad = TempFile::new("bad.toml", "peers = [\n");
        let s = ConfigSources { config_file: Some(bad.0.clone()), ..Default::default() };
        assert!(matches!(NodeConfig::load(&s), Err(ConfigError::File { .. })));

        let s = ConfigSources { config_file: Some("/nonexistent/dmutex.toml".into()), ..Default::default() };
        let e = NodeConfig::load(&s).unwrap_err();
        assert!(matches!(e, ConfigError::File { .. }));
        assert_eq!(e.key(), "DMUTEX_CONFIG");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn node_id_from_host_name() {
        let mut s = sources(&[("DMUTEX_PEERS", "10.0.0.1:7070,10.0.0.2:7070,10.0.0.3:7070")]);
        s.host_name = Some("dmutex-2".into());
        let c = NodeConfig::load(&s).unwrap();
        assert_eq!((c.node_id, c.node_id_source), (NodeId::new(2), NodeIdSource::HostOrdinal));
        s.host_name = Some("dmutex-1.dmutex.default.svc.cluster.local".into());
        assert_eq!(NodeConfig::load(&s).unwrap().node_id, NodeId::new(1));
        // An explicit id wins over the host name, and says it was configured.
        s.env.insert("DMUTEX_NODE_ID".into(), "0".into());
        let c = NodeConfig::load(&s).unwrap();
        assert_eq!((c.node_id, c.node_id_source), (NodeId::new(0), NodeIdSource::Configured));
    }

    #[test]
    fn node_id_from_matching_peer_entry() {
        // Compose-style names: node-1 is entry 0, so the peer list beats the trailing number.
        let peers = ["node-1:7070", "node-2:7070", "node-3:7070"].map(|p| p.parse::<PeerAddr>().unwrap());
        assert_eq!(node_id_from_host(Some("node-2"), &peers), Some((1, NodeIdSource::PeerEntry)));
        let k8s = ["dmutex-0.dmutex:7070", "dmutex-1.dmutex:7070"].map(|p| p.parse::<PeerAddr>().unwrap());
        assert_eq!(node_id_from_host(Some("dmutex-1"), &k8s), Some((1, NodeIdSource::PeerEntry)));
        assert_eq!(node_id_from_host(Some("dmutex-4"), &k8s), Some((4, NodeIdSource::HostOrdinal)));
        // Several matches (all on localhost): fall back to the trailing number, here none.
        let local = ["localhost:1", "localhost:2"].map(|p| p.parse::<PeerAddr>().unwrap());
        assert_eq!(node_id_from_host(Some("localhost"), &local), None);
        assert_eq!(node_id_from_host(Some("web-"), &[]), None);
        assert_eq!(node_id_from_host(Some("web-x1"), &[]), None);
        assert_eq!(node_id_from_host(Some("web-99999999"), &[]), None);
        assert_eq!(node_id_from_host(None, &[]), None);
    }

    #[test]
    fn error_node_id_unknown() {
        let mut s = sources(&[("DMUTEX_PEERS", "a:1,b:1")]);
        s.host_name = Some("laptop".into());
        let e = NodeConfig::load(&s).unwrap_err();
        assert_eq!(e, ConfigError::NodeIdUnknown { host: Some("laptop".into()) });
        assert!(e.to_string().starts_with("DMUTEX_NODE_ID: "), "{e}");
        // Plain words, not Rust's debug output (`Some("laptop")`).
        assert!(e.to_string().contains("the host name \"laptop\" neither"), "{e}");
        s.host_name = None;
        let e = NodeConfig::load(&s).unwrap_err();
        assert!(e.to_string().contains("the host name (which could not be read) neither"), "{e}");
        assert!(!e.to_string().contains("None"), "{e}");
    }

    #[test]
    fn algorithms_restrict_the_namespaces_a_cluster_serves() {
        assert_eq!(load(&three()).unwrap().algorithms, Algorithm::ALL.to_vec());
        // Any order, aliases and repetitions: kept in Algorithm::ALL order, once each.
        let c = load(&with(&[
            ("DMUTEX_ALGORITHMS", " probable-owner, lamport ,po"),
            ("DMUTEX_ALGORITHM", "probable-owner"),
        ]))
        .unwrap();
        assert_eq!(c.algorithms, vec![Algorithm::Lamport, Algorithm::ProbableOwner]);
        assert_eq!(algorithm_list(&c.algorithms), "lamport,probable-owner");

        // The default algorithm (lamport) must be allowed: the error names the key, and the exit code is 2.
        let e = load(&with(&[("DMUTEX_ALGORITHMS", "probable-owner")])).unwrap_err();
        assert_eq!(e.key(), "DMUTEX_ALGORITHMS");
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "DMUTEX_ALGORITHMS: probable-owner does not include the default algorithm lamport \
             (DMUTEX_ALGORITHM): add it, or choose another default"
        );
        let e = load(&with(&[("DMUTEX_ALGORITHMS", "lamport,paxos")])).unwrap_err();
        assert_eq!(e.key(), "DMUTEX_ALGORITHMS");
        assert!(e.to_string().contains("paxos"), "{e}");
        let e = load(&with(&[("DMUTEX_ALGORITHMS", " , ")])).unwrap_err();
        assert_eq!(e.to_string(), "DMUTEX_ALGORITHMS: must name at least one algorithm");
        // The built-in workload is a client too: its algorithm must be allowed when it runs.
        let e = load(&with(&[
            ("DMUTEX_ALGORITHMS", "lamport"),
            ("DMUTEX_WORKLOAD_ALGORITHM", "ra"),
            ("DMUTEX_WORKLOAD_ITERATIONS", "3"),
        ]))
        .unwrap_err();
        assert_eq!(e.key(), "DMUTEX_WORKLOAD_ALGORITHM");
        assert!(e.to_string().contains("ricart-agrawala is not among the allowed algorithms"), "{e}");
        // A TOML array works as well as the comma list.
        let file =
            TempFile::new("algorithms.toml", "algorithms = [\"ricart-agrawala\"]\nalgorithm = \"ra\"\n");
        let s = ConfigSources { config_file: Some(file.0.clone()), ..sources(&three()) };
        assert_eq!(NodeConfig::load(&s).unwrap().algorithms, vec![Algorithm::RicartAgrawala]);
    }

    #[test]
    fn error_node_id_out_of_range() {
        let e = load(&[("DMUTEX_PEERS", "a:1,b:1,c:1"), ("DMUTEX_NODE_ID", "7")]).unwrap_err();
        assert_eq!(e.to_string(), "DMUTEX_NODE_ID: 7 is out of range for 3 peers");
        let e = load(&[
            ("DMUTEX_DISCOVERY", "dns:svc:7070"),
            ("DMUTEX_CLUSTER_SIZE", "3"),
            ("DMUTEX_NODE_ID", "3"),
        ])
        .unwrap_err();
        assert_eq!(e, ConfigError::NodeIdOutOfRange { id: 3, peers: 3 });
    }

    #[test]
    fn error_node_id_not_a_number() {
        for bad in ["-1", "x", "70000"] {
            let e = load(&[("DMUTEX_PEERS", "a:1"), ("DMUTEX_NODE_ID", bad)]).unwrap_err();
            assert_eq!(e.key(), "DMUTEX_NODE_ID", "{e}");
        }
    }

    #[test]
    fn error_bad_peer_entries() {
        let e = load(&[("DMUTEX_PEERS", "a:1,b:1,foo"), ("DMUTEX_NODE_ID", "0")]).unwrap_err();
        assert!(e.to_string().starts_with("DMUTEX_PEERS: entry 2 \"foo\" is not host:port"), "{e}");
        for bad in ["a:0", "a:x", ":1", "a b:1", "::1:7070", "[zz]:1", "a:1,,b:1", "a:70000", "a/b:1"] {
            let e = load(&[("DMUTEX_PEERS", bad), ("DMUTEX_NODE_ID", "0")]).unwrap_err();
            assert!(matches!(e, ConfigError::BadPeer { .. }), "{bad}: {e}");
        }
        let file = TempFile::new("nested.toml", "peers = [[\"a:1\"]]\nnode_id = 0\n");
        let s = ConfigSources { config_file: Some(file.0.clone()), ..Default::default() };
        assert_eq!(NodeConfig::load(&s).unwrap_err().key(), "DMUTEX_PEERS");
    }

    #[test]
    fn error_duplicate_peers() {
        let e = load(&[("DMUTEX_PEERS", "a:1,B:2,b:2"), ("DMUTEX_NODE_ID", "0")]).unwrap_err();
        assert_eq!(e, ConfigError::DuplicatePeer { first: 1, second: 2, entry: "b:2".into() });
        assert!(e.to_string().starts_with("DMUTEX_PEERS: "));
    }

    #[test]
    fn error_no_peers() {
        let e = load(&[("DMUTEX_NODE_ID", "0")]).unwrap_err();
        assert_eq!(e, ConfigError::NoPeers);
        let e = load(&[("DMUTEX_NODE_ID", "0"), ("DMUTEX_PEERS", " ")]).unwrap_err();
        assert_eq!(e, ConfigError::NoPeers);
        // Discovery makes an empty list acceptable.
        let c = load(&[("DMUTEX_DISCOVERY", "dns:dmutex-headless:7070"), ("DMUTEX_NODE_ID", "4")]).unwrap();
        assert_eq!(c.discovery, Some(Discovery::Dns { name: "dmutex-headless".into(), port: 7070 }));
        assert_eq!(c.cluster_len(), None);
        assert_eq!(c.node_id_source, NodeIdSource::Configured, "discovery must not replace it silently");
        let c = load(&[("DMUTEX_DISCOVERY", "dns:dmutex-headless:7070")]).unwrap();
        assert_eq!((c.node_id, c.node_id_source), (NodeId::new(0), NodeIdSource::Discovery));
    }

    #[test]
    fn error_bad_discovery() {
        for bad in ["dns:svc", "srv:svc:1", "dns::1", "nothing"] {
            let e = load(&[("DMUTEX_DISCOVERY", bad), ("DMUTEX_NODE_ID", "0")]).unwrap_err();
            assert_eq!(e.key(), "DMUTEX_DISCOVERY", "{bad}: {e}");
        }
    }

    #[test]
    fn error_bad_socket_addresses() {
        let e = load(&with(&[("DMUTEX_PEER_ADDR", "localhost:7070")])).unwrap_err();
        assert!(matches!(&e, ConfigError::BadSocketAddr { key, .. } if key == "DMUTEX_PEER_ADDR"), "{e}");
        let e = load(&with(&[("DMUTEX_HTTP_ADDR", "8080")])).unwrap_err();
        assert!(e.to_string().starts_with("DMUTEX_HTTP_ADDR: \"8080\" is not a socket address"), "{e}");
    }

    #[test]
    fn lamport_ack_elision_is_a_boolean_off_by_default() {
        assert!(!load(&with(&[])).unwrap().lamport_ack_elision);
        for on in ["true", "1", "YES", "on"] {
            assert!(load(&with(&[("DMUTEX_LAMPORT_ACK_ELISION", on)])).unwrap().lamport_ack_elision, "{on}");
        }
        for off in ["false", "0", "no", "Off"] {
            assert!(
                !load(&with(&[("DMUTEX_LAMPORT_ACK_ELISION", off)])).unwrap().lamport_ack_elision,
                "{off}"
            );
        }
        let e = load(&with(&[("DMUTEX_LAMPORT_ACK_ELISION", "maybe")])).unwrap_err();
        assert_eq!(e.to_string(), "DMUTEX_LAMPORT_ACK_ELISION: \"maybe\" is not true or false");
    }

    #[test]
    fn error_unknown_algorithm() {
        let e = load(&with(&[("DMUTEX_ALGORITHM", "x")])).unwrap_err();
        assert!(e.to_string().starts_with("DMUTEX_ALGORITHM: unknown algorithm \"x\""), "{e}");
        let e = load(&with(&[("DMUTEX_WORKLOAD_ALGORITHM", "paxos")])).unwrap_err();
        assert_eq!(e.key(), "DMUTEX_WORKLOAD_ALGORITHM");
    }

    #[test]
    fn error_bad_numbers_and_ranges() {
        let cases: &[(&str, &str)] = &[
            ("DMUTEX_MAX_FRAME_BYTES", "12"),
            ("DMUTEX_MAX_FRAME_BYTES", "lots"),
            ("DMUTEX_DEFAULT_TTL_MS", "0"),
            ("DMUTEX_DEFAULT_TIMEOUT_MS", "-5"),
            ("DMUTEX_MAX_TTL_MS", "10"),
            ("DMUTEX_SHUTDOWN_GRACE_MS", "1s"),
            ("DMUTEX_CLUSTER_SIZE", "4"),
            ("DMUTEX_CLUSTER_SIZE", "0"),
            ("DMUTEX_BOOTSTRAP_EXPECT", "4"),
            ("DMUTEX_BOOTSTRAP_EXPECT", "0"),
            ("DMUTEX_BOOTSTRAP_EXPECT", "three"),
            ("DMUTEX_HEARTBEAT_MS", "0"),
            ("DMUTEX_HEARTBEAT_MS", "-1"),
            ("DMUTEX_SUSPECT_TIMEOUT_MS", "1.5s"),
            ("DMUTEX_MEMBER_LEASE_MS", "x"),
            ("DMUTEX_CLOCK_DRIFT_PPM", "5000000000"),
            ("DMUTEX_MEMBERSHIP_RETRY_MS", "0"),
            ("DMUTEX_CLUSTER_NAME", " "),
            ("DMUTEX_LOG_FORMAT", "xml"),
            ("DMUTEX_WORKLOAD_ITERATIONS", "many"),
            ("DMUTEX_WORKLOAD_LOCK", " "),
        ];
        for (key, value) in cases {
            let e = load(&with(&[(key, value)])).unwrap_err();
            assert_eq!(e.key(), *key, "{key}={value}: {e}");
            assert!(e.to_string().starts_with(&format!("{key}: ")), "{e}");
        }
    }

    #[test]
    fn secret_from_file_and_never_printed() {
        let file = TempFile::new("secret", "hunter2\n");
        let path = file.0.to_str().unwrap().to_string();
        let c = load(&with(&[("DMUTEX_CLUSTER_SECRET_FILE", &path)])).unwrap();
        assert_eq!(c.cluster_secret.as_ref().map(Secret::expose), Some("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));

        let e = load(&with(&[("DMUTEX_CLUSTER_SECRET_FILE", "/nonexistent/secret")])).unwrap_err();
        assert_eq!(e.key(), "DMUTEX_CLUSTER_SECRET_FILE");
        let e = load(&with(&[("DMUTEX_CLUSTER_SECRET_FILE", &path), ("DMUTEX_CLUSTER_SECRET", "x")]))
            .unwrap_err();
        assert_eq!(e.key(), "DMUTEX_CLUSTER_SECRET_FILE");
        let empty = TempFile::new("empty-secret", "\n");
        let path = empty.0.to_str().unwrap().to_string();
        let e = load(&with(&[("DMUTEX_CLUSTER_SECRET_FILE", &path)])).unwrap_err();
        assert_eq!(e.key(), "DMUTEX_CLUSTER_SECRET");
    }

    #[test]
    fn security_groups_are_all_or_nothing_and_files_must_exist() {
        let c = load(&three()).unwrap();
        assert_eq!(
            c.security,
            SecurityConfig { credentials_reload: Duration::from_secs(10), ..Default::default() }
        );
        let (cert, key, ca) =
            (TempFile::new("cert.pem", "c"), TempFile::new("key.pem", "k"), TempFile::new("ca.pem", "a"));
        let p = |f: &TempFile| f.0.to_str().unwrap().to_string();
        let (cert_p, key_p, ca_p) = (p(&cert), p(&key), p(&ca));
        let c = load(&with(&[
            ("DMUTEX_TLS_CERT", &cert_p),
            ("DMUTEX_TLS_KEY", &key_p),
            ("DMUTEX_PEER_TLS_CERT", &cert_p),
            ("DMUTEX_PEER_TLS_KEY", &key_p),
            ("DMUTEX_PEER_TLS_CA", &ca_p),
            ("DMUTEX_API_TOKENS_FILE", &ca_p),
            ("DMUTEX_METRICS_AUTH", "read"),
            ("DMUTEX_CREDENTIALS_RELOAD_MS", "500"),
        ]))
        .unwrap();
        let s = &c.security;
        assert_eq!(s.api_tls, Some(ApiTls { cert: cert.0.clone(), key: key.0.clone(), client_ca: None }));
        assert_eq!(s.peer_tls, Some(PeerTls { cert: cert.0.clone(), key: key.0.clone(), ca: ca.0.clone() }));
        assert_eq!((s.metrics_auth, s.credentials_reload), (MetricsAuth::Read, Duration::from_millis(500)));
        let key_of = |pairs: &[(&str, &str)]| load(&with(pairs)).unwrap_err().key().to_string();
        assert_eq!(key_of(&[("DMUTEX_TLS_CERT", &cert_p)]), "DMUTEX_TLS_KEY");
        assert_eq!(key_of(&[("DMUTEX_TLS_KEY", &key_p)]), "DMUTEX_TLS_CERT");
        assert_eq!(key_of(&[("DMUTEX_TLS_CLIENT_CA", &ca_p)]), "DMUTEX_TLS_CLIENT_CA");
        assert_eq!(
            key_of(&[("DMUTEX_TLS_CERT", "/nonexistent/cert.pem"), ("DMUTEX_TLS_KEY", &key_p)]),
            "DMUTEX_TLS_CERT"
        );
        assert_eq!(
            key_of(&[("DMUTEX_PEER_TLS_CERT", &cert_p), ("DMUTEX_PEER_TLS_CA", &ca_p)]),
            "DMUTEX_PEER_TLS_KEY"
        );
        assert_eq!(key_of(&[("DMUTEX_API_TOKENS_FILE", "/tmp")]), "DMUTEX_API_TOKENS_FILE");
        assert_eq!(key_of(&[("DMUTEX_METRICS_AUTH", "none")]), "DMUTEX_METRICS_AUTH");
        assert_eq!(key_of(&[("DMUTEX_CREDENTIALS_RELOAD_MS", "5")]), "DMUTEX_CREDENTIALS_RELOAD_MS");
    }

    #[test]
    fn error_unknown_override_key() {
        let mut s = sources(&three());
        s.overrides.insert("nodeid".into(), "1".into());
        assert_eq!(NodeConfig::load(&s).unwrap_err().key(), "DMUTEX_NODEID");
    }

    #[test]
    fn unknown_env_vars_are_reported() {
        let s =
            sources(&[("DMUTEX_NODEID", "1"), ("DMUTEX_PEERS", "a:1"), ("DMUTEX_LEASE", "7"), ("HOME", "/")]);
        assert_eq!(s.unknown_env_vars(), ["DMUTEX_NODEID"]);
    }

    #[test]
    fn empty_env_values_are_unset() {
        let c = load(&with(&[("DMUTEX_LOG", ""), ("DMUTEX_CLUSTER_SECRET", "")])).unwrap();
        assert_eq!(c.log, "info");
        assert_eq!(c.cluster_secret, None);
    }

    /// docs/dmutex.example.toml, the documented sample: it loads, names every key, and the keys it sets
    /// are at their built-in defaults (so it documents them truthfully).
    #[test]
    fn the_sample_file_loads_names_every_key_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dmutex.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        // `key = …` at the start of a line, active or commented out (`# key = …`).
        let named = |key: &str, active: bool| {
            text.lines().any(|l| {
                let l = if active { l } else { l.trim_start_matches(['#', ' ']) };
                l.split_once('=').is_some_and(|(k, _)| k.trim() == key)
            })
        };
        for key in KEYS {
            assert!(named(key, false), "{key} is missing from {}", path.display());
        }
        for (key, _) in DEFAULTS {
            assert!(named(key, true), "{key} has a default, so the sample sets it");
        }
        let s = ConfigSources { config_file: Some(path.clone()), ..Default::default() };
        let sample = NodeConfig::load(&s).unwrap();
        let defaults = load(&[
            ("DMUTEX_NODE_ID", "0"),
            ("DMUTEX_PEERS", "127.0.0.1:7070,127.0.0.2:7070,127.0.0.3:7070"),
        ])
        .unwrap();
        assert_eq!(sample, defaults, "the sample's values are the built-in defaults");
    }
}
