//! The API's request and response types: one definition each, used by the HTTP handlers, the node loop,
//! the client, the workload and the tests.
//!
//! The JSON shapes here are the wire contract: renaming a field or changing how it is encoded breaks every
//! client. Decoding is lenient only where the client must accept other servers of the same API (a numeric
//! lease, a fencing token sent as a string, informational grant fields left out).

use crate::algo::{Algorithm, LockView};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Names a lease in release and keepalive calls. This node's leases are strings; a server of the same API that
/// numbers its leases gets its numbers back as numbers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LeaseId {
    /// A numeric lease, echoed as a JSON number.
    Num(u64),
    /// A string lease (every lease this node hands out).
    Str(String),
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseId::Num(n) => write!(f, "{n}"),
            LeaseId::Str(s) => f.write_str(s),
        }
    }
}

impl From<String> for LeaseId {
    fn from(s: String) -> Self {
        LeaseId::Str(s)
    }
}

impl From<&str> for LeaseId {
    fn from(s: &str) -> Self {
        LeaseId::Str(s.to_string())
    }
}

/// `POST /v1/locks/{name}/acquire` → 200: the lock is held under `lease` until released or expired.
///
/// `name`, `lease` and `fencing_token` are the contract; the other fields are informational (this node always
/// sends them; a client accepts a grant without them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The lock's name.
    pub name: String,
    /// The lease to keep alive and release.
    pub lease: LeaseId,
    /// Strictly increasing per lock in grant order: the token a protected resource compares.
    #[serde(deserialize_with = "number_or_numeric_string")]
    pub fencing_token: u64,
    /// The algorithm that granted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// The node that granted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u16>,
    /// How long the request waited for the grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// The lease's time to live: it expires this long after the grant or the last keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// A `u64` sent as a JSON number or as a string of digits.
fn number_or_numeric_string<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrString {
        Num(u64),
        Str(String),
    }
    match NumberOrString::deserialize(d)? {
        NumberOrString::Num(n) => Ok(n),
        NumberOrString::Str(s) => s.parse().map_err(|_| {
            serde::de::Error::custom(format_args!("expected a non-negative integer, got {s:?}"))
        }),
    }
}

/// An algorithm by any name [`Algorithm`]'s `FromStr` accepts (`ra`, `po`, any case); `null` is none.
fn algorithm_by_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Algorithm>, D::Error> {
    Option::<String>::deserialize(d)?.map(|s| s.parse().map_err(serde::de::Error::custom)).transpose()
}

/// The body of `POST /v1/locks/{name}/acquire`; every field falls back to the node's default when absent, and
/// an empty body means all defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// How long to wait for the lock, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The lease's time to live, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    /// The algorithm that serves the request.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "algorithm_by_name")]
    pub algorithm: Option<Algorithm>,
    /// `false`: a try-lock, granted only if it need not wait, else answered 409 `locked` at once
    /// (`timeout_ms: 0` means the same). Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
}

/// The body of `POST /v1/locks/{name}/release`. The lease is optional in the type only so that a body without
/// one is answered with a 400 that says what is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseBody {
    /// The lease the grant returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseId>,
}

/// `POST /v1/locks/{name}/release` → 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReleaseResponse {
    /// The lease that held the lock.
    pub lease: LeaseId,
    /// The lock released (as in the URL).
    pub name: String,
    /// Always `true` (a failed release is an error response).
    pub released: bool,
}

/// The body of `POST /v1/leases/{lease}/keepalive`: `{}`. The node reads nothing from it (the lease is in the
/// path), so any body is accepted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeepaliveBody {}

/// `POST /v1/leases/{lease}/keepalive` → 200: the lease runs for `ttl_ms` from now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeepaliveResponse {
    /// The lease kept alive (a client accepts an answer without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseId>,
    /// The lease's renewed time to live (a client keeps the TTL it knew when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
}

/// Every error response: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ErrorDetail {
    /// Stable machine-readable code, e.g. `timeout` (see [`crate::api::error::ApiError::code`]).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// An acquire as the node loop takes it: the lock from the URL and the body's values as durations.
#[derive(Clone, Debug)]
pub struct AcquireRequest {
    /// The lock's name from the URL (already validated).
    pub lock: String,
    /// Algorithm (default: the node's).
    pub algorithm: Option<Algorithm>,
    /// How long to wait (default: the node's).
    pub timeout: Option<Duration>,
    /// Lease TTL (default: the node's).
    pub ttl: Option<Duration>,
    /// `false`: a try-lock ([`crate::algo::Event::TryAcquire`]); `timeout` is then not used.
    pub wait: bool,
}

/// One peer as this node sees it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    /// Node id.
    pub node: u16,
    /// Configured address.
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
#[derive(Clone, Debug, Serialize)]
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
#[derive(Clone, Debug, Serialize)]
pub struct ViewInfo {
    /// The view's epoch (rises by one per view change).
    pub epoch: u64,
    /// Its members, in id order.
    pub members: Vec<ViewMember>,
}

/// One member of a view.
#[derive(Clone, Debug, Serialize)]
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

/// One lease as seen in `GET /v1/locks/{name}`.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseInfo {
    /// Lease id.
    pub lease: String,
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Fencing token.
    pub fencing_token: u64,
    /// Milliseconds until it expires unless kept alive.
    pub expires_in_ms: u64,
}

/// `GET /v1/locks/{name}`: what this node knows.
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
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    /// Whether the node can grant.
    pub ready: bool,
    /// Why not.
    pub reasons: Vec<String>,
}

/// `GET /v1/stats`: the results in the original programs' form. Fields absent in a stored report read as their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    fn a_grant_is_sent_in_the_documented_shape() {
        let g = Grant {
            name: "db".into(),
            lease: "l-1".into(),
            fencing_token: 196_608,
            algorithm: Some(Algorithm::RicartAgrawala),
            node_id: Some(2),
            waited_ms: Some(5),
            ttl_ms: Some(1000),
        };
        let text = serde_json::to_string(&g).unwrap();
        assert_eq!(
            text,
            r#"{"name":"db","lease":"l-1","fencing_token":196608,"algorithm":"ricart-agrawala","node_id":2,"waited_ms":5,"ttl_ms":1000}"#
        );
        assert_eq!(serde_json::from_str::<Grant>(&text).unwrap(), g);
        let bad =
            serde_json::from_value::<Grant>(json!({"name": "db", "lease": "l", "fencing_token": "soon"}));
        assert!(bad.is_err(), "a fencing token must be an integer");
    }

    #[test]
    fn acquire_bodies_accept_every_algorithm_name_and_nothing_unknown() {
        let b: AcquireBody = serde_json::from_value(json!({"algorithm": "RA", "ttl_ms": 10})).unwrap();
        assert_eq!(
            b,
            AcquireBody {
                timeout_ms: None,
                ttl_ms: Some(10),
                algorithm: Some(Algorithm::RicartAgrawala),
                wait: None
            }
        );
        let b: AcquireBody = serde_json::from_value(json!({"algorithm": null})).unwrap();
        assert_eq!(b, AcquireBody::default());
        let e = serde_json::from_value::<AcquireBody>(json!({"algorithm": "paxos"})).unwrap_err();
        assert!(e.to_string().contains("unknown algorithm \"paxos\""), "{e}");
        assert!(serde_json::from_value::<AcquireBody>(json!({"timeout_ms": 1, "colour": "red"})).is_err());
        assert!(serde_json::from_value::<AcquireBody>(json!({"timeout_ms": "soon"})).is_err());
    }

    #[test]
    fn release_and_keepalive_shapes() {
        let b: ReleaseBody = serde_json::from_value(json!({"lease": 42})).unwrap();
        assert_eq!(b.lease, Some(LeaseId::Num(42)));
        assert_eq!(serde_json::to_value(&b).unwrap(), json!({"lease": 42}));
        assert_eq!(serde_json::from_value::<ReleaseBody>(json!({})).unwrap().lease, None);
        assert!(serde_json::from_value::<ReleaseBody>(json!({"lease": "l", "extra": 1})).is_err());
        let r = ReleaseResponse { lease: "l".into(), name: "x".into(), released: true };
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"lease":"l","name":"x","released":true}"#);

        assert_eq!(serde_json::to_string(&KeepaliveBody {}).unwrap(), "{}");
        let k = KeepaliveResponse { lease: Some("l".into()), ttl_ms: Some(300) };
        assert_eq!(serde_json::to_string(&k).unwrap(), r#"{"lease":"l","ttl_ms":300}"#);
        let k: KeepaliveResponse = serde_json::from_value(json!({"ttl_ms": 300})).unwrap();
        assert_eq!((k.lease, k.ttl_ms), (None, Some(300)));
    }

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
