//! The node: the tokio driver of the algorithm cores, and [`run`], the library function that runs one.
//!
//! ```text
//!  run(peer_listener, http_listener, config, shutdown)                               run.rs
//!   ├─ HTTP: api::router ──► NodeHandle ──Command──┐                                 handle.rs
//!   ├─ transport ───────────────────Inbound────────┤
//!   └─ node loop: select! { command, inbound, earliest timer, tick }                 driver.rs
//!        │ events (with their Cause)                ▲ actions
//!        ▼                                          │
//!      Cores: Engine<Lamport> | Engine<RA> | Engine<ProbableOwner>                   cores.rs
//!        Send → transport     Granted / Rejected / LeaseExpired → the client         requests.rs, leases.rs
//!        SetTimer / CancelTimer → TimerTable                                         timers.rs
//!   Membership (views by majority, member lease) + Formation (view 1 once):          membership.rs
//!     InstallView → cores created in / moved to the view; Active(false) → clients 503 / leases lost;
//!     excluded while alive → the loop ends and run() starts a new incarnation that joins
//!   every happening → Observer::seen (metrics, flow log, spans)                      observe.rs, links.rs
//!   peers up/down, what arrives from them, availability (503 only without a lease)   peers.rs
//!   lock info, cluster info, /v1/stats, readiness and gauges                         status.rs
//!   leases through any node (forwarded to the granting node), cluster-wide lock queries   forward.rs
//! ```
//!
//! Leases live in the cores (a grant's lease timer, moved by keepalives, expires there and the next holder
//! gets a larger fencing token); the node only maps lease ids to the cores' requests.
//!
//! Must never: decide anything an algorithm decides, name an algorithm's message variants (what the node
//! needs to know about a message comes from [`crate::algo::ProtocolMessage`]), await inside a loop turn, or
//! panic on peer input.

mod cores;
mod driver;
mod forward;
mod handle;
mod leases;
mod links;
mod membership;
mod msg;
mod observe;
mod peers;
mod requests;
mod run;
mod status;
mod timers;

pub use forward::{Answer, Ask, ClientMsg, LocalLock};
pub use handle::{NodeHandle, Shared};
pub use msg::{MemberMsg, NodeMsg, PeerMsg};
pub use run::{Routes, RunConfig, new_incarnation, run};

use crate::algo::{Algorithm, Incarnation, NodeId};
use crate::config::NodeConfig;
use std::time::Duration;

/// A node's static settings, taken from its [`NodeConfig`].
#[derive(Clone, Debug)]
pub(crate) struct NodeSettings {
    /// This node.
    pub me: NodeId,
    /// This process's incarnation.
    pub incarnation: Incarnation,
    /// Peer addresses as configured (`host:port`), index = node id.
    pub peers: Vec<String>,
    /// Cluster name (reported in `/v1/cluster`).
    pub cluster: String,
    /// Timeout of an acquire that names none.
    pub default_timeout: Duration,
    /// Lease TTL of an acquire that names none.
    pub default_ttl: Duration,
    /// Largest TTL a client may ask for.
    pub max_ttl: Duration,
    /// The membership layer's timing (heartbeat, S, L, ρ, retry).
    pub membership: crate::algo::membership::Config,
    /// Where the other nodes reach this node (its entry in `peers`, or `DMUTEX_ADVERTISE_ADDR`).
    pub advertise: String,
    /// How many of `peers` (the first ones) form view 1; the others join a running cluster.
    pub formation_size: usize,
    /// Longest a graceful leave waits for the view without this node.
    pub leave_wait: Duration,
    /// The rate of the node's clock in parts per million of real time (fault tests only).
    pub clock_rate_ppm: u32,
    /// Default algorithm for requests that name none.
    pub default_algorithm: Algorithm,
    /// Lamport's footnote option (no REPLY made redundant by a later message already sent).
    pub lamport_ack_elision: bool,
}

impl NodeSettings {
    /// The settings of `cfg`'s node running as `incarnation`.
    pub(crate) fn from_config(cfg: &NodeConfig, incarnation: Incarnation) -> Self {
        NodeSettings {
            me: cfg.node_id,
            incarnation,
            peers: cfg.peers.iter().map(ToString::to_string).collect(),
            cluster: cfg.cluster_name.clone(),
            default_timeout: cfg.default_timeout,
            default_ttl: cfg.default_ttl,
            max_ttl: cfg.max_ttl.unwrap_or(Duration::from_secs(24 * 3600)),
            membership: cfg.membership,
            advertise: cfg
                .advertise_addr
                .as_ref()
                .or(cfg.peers.get(cfg.node_id.index()))
                .map(ToString::to_string)
                .unwrap_or_default(),
            formation_size: cfg.bootstrap_expect.unwrap_or(cfg.peers.len()).min(cfg.peers.len()),
            leave_wait: cfg.view_change_bound(),
            clock_rate_ppm: cfg.test_clock_rate_ppm,
            default_algorithm: cfg.algorithm,
            lamport_ack_elision: cfg.lamport_ack_elision,
        }
    }
}
