//! The API's request and response types: one definition each, used by the HTTP handlers, the node loop,
//! the client, the workload and the tests.
//!
//! The JSON shapes here are the wire contract: renaming a field or changing how it is encoded breaks every
//! client. Decoding is lenient only where the client must accept other servers of the same API (a numeric
//! lease, a fencing token sent as a string, informational grant fields left out).

use crate::algo::{Algorithm, LockView};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The wire-contract types live in the client crate (one definition each), so that a client depends on them
/// without the server.
pub use dmutex_client::{
    AcquireBody, ErrorBody, ErrorDetail, Grant, KeepaliveBody, KeepaliveResponse, LeaseId, ReleaseBody,
    ReleaseResponse, Timeout,
};
pub use dmutex_client::{AlgoLockState, Holder, LockList, LockState, LockSummary, Waiting};

/// An acquire as the node loop takes it: the lock from the URL and the body's values as durations.
#[derive(Clone, Debug)]
pub struct AcquireRequest {
    /// The lock's name from the URL (already validated).
    pub lock: String,
    /// Algorithm (default: the node's).
    pub algorithm: Option<Algorithm>,
    /// How long to wait (default: the node's); [`Timeout::Forever`] waits without a limit.
    pub timeout: Option<Timeout>,
    /// Lease TTL (default: the node's).
    pub ttl: Option<Duration>,
    /// A lease the client already has: if it holds this lock, the existing grant is the answer.
    pub lease: Option<String>,
    /// The trace the request belongs to (the HTTP server span, itself a child of the caller's
    /// `traceparent`): `lock.acquire` becomes its child. `None` when traces are not exported.
    pub parent: Option<opentelemetry::Context>,
    /// `false`: a try-lock ([`crate::algo::Event::TryAcquire`]); `timeout` is then not used.
    pub wait: bool,
}

/// One peer as this node sees it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PeerInfo {
    /// Node id.
    pub node: u16,
    /// Configured address (a node beyond the configured list: the address its view entry holds).
    pub address: String,
    /// Whether the link is up.
    pub connected: bool,
    /// Milliseconds since the last frame from it.
    pub last_seen_ms_ago: Option<u64>,
    /// Its incarnation, once known.
    pub incarnation: Option<u64>,
    /// How often its link was re-established.
    pub reconnects: u64,
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ClusterInfo {
    /// This node.
    pub node_id: u16,
    /// This process's incarnation.
    pub incarnation: u64,
    /// Cluster name.
    pub cluster: String,
    /// Whether the node can grant.
    pub ready: bool,
    /// Every node, this one included.
    pub peers: Vec<PeerInfo>,
    /// Lamport clock of each algorithm core.
    pub lamport_clock: BTreeMap<String, u64>,
    /// Whether Lamport's footnote option (no redundant REPLY) is on.
    pub lamport_ack_elision: bool,
    /// The view this node has installed (`None` before the cluster formed or while joining).
    pub view: Option<ViewInfo>,
    /// Whether this node is a member of its installed view.
    pub member: bool,
    /// Whether this node holds its member lease: a majority of its view acked it recently, so it may grant.
    pub majority: bool,
}

/// A view as `GET /v1/cluster` shows it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ViewInfo {
    /// The view's epoch (rises by one per view change).
    pub epoch: u64,
    /// Its members, in id order.
    pub members: Vec<ViewMember>,
}

/// One member of a view.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ViewMember {
    /// Node id.
    pub node_id: u16,
    /// Its peer address.
    pub addr: String,
    /// The incarnation the view admitted.
    pub incarnation: u64,
    /// Whether this node's link to it is up (always true for this node itself).
    pub connected: bool,
}

/// One lease held through this node, as `GET /v1/locks/{name}?scope=local` shows it. The lease id is not
/// shown: it is the only credential needed to release the lock, so only the client it was granted to sees it.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseInfo {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Fencing token.
    pub fencing_token: u64,
    /// Milliseconds until it expires unless kept alive.
    pub expires_in_ms: u64,
}

/// `GET /v1/locks/{name}?scope=local`: what this node alone knows (its cores' views, for people watching the
/// algorithms).
#[derive(Clone, Debug, Serialize)]
pub struct LockInfo {
    /// The lock asked about.
    pub name: String,
    /// Leases held through this node.
    pub leases: Vec<LeaseInfo>,
    /// Per algorithm: the core's view and the local waiters.
    pub algorithms: BTreeMap<String, AlgoLockInfo>,
}

/// One algorithm's view of one lock.
#[derive(Clone, Debug, Serialize)]
pub struct AlgoLockInfo {
    /// The core's view.
    #[serde(flatten)]
    pub view: LockView,
    /// Local requests waiting (count).
    pub local_waiters: usize,
}

/// `GET /readyz`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Whether the node can grant.
    pub ready: bool,
    /// Why not.
    pub reasons: Vec<String>,
}

/// `GET /v1/stats`: the results in the original programs' form. Fields absent in a stored report read as their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Stats {
    /// This node.
    pub node_id: u16,
    /// This process's incarnation.
    pub incarnation: u64,
    /// Messages sent: algorithm → type → count.
    pub messages_sent: BTreeMap<String, BTreeMap<String, u64>>,
    /// Messages received: algorithm → type → count.
    pub messages_received: BTreeMap<String, BTreeMap<String, u64>>,
    /// All messages sent.
    pub messages_sent_total: u64,
    /// Grants to local clients by algorithm.
    pub grants: BTreeMap<String, u64>,
    /// Acquire timeouts by algorithm.
    pub timeouts: BTreeMap<String, u64>,
    /// Leases expired.
    pub lease_expiries: u64,
    /// The highest Lamport clock of the cores.
    pub lamport_clock: u64,
    /// Whether Lamport's footnote option (no redundant REPLY) is on (absent in older reports: off).
    pub lamport_ack_elision: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::error::ApiError;
    use serde_json::json;

    #[test]
    fn errors_are_sent_as_code_and_message() {
        let body = serde_json::to_value(ApiError::Timeout(5).body()).unwrap();
        assert_eq!(
            body,
            json!({"error": {"code": "timeout", "message": "timed out after 5 ms waiting for the lock"}})
        );
        let back: ErrorBody = serde_json::from_value(body).unwrap();
        assert_eq!(back.error.code, "timeout");
    }
}
