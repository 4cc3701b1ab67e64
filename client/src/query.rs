//! What `GET /v1/locks/{name}` and `GET /v1/locks` answer: a lock as the whole cluster knows it, the same
//! from every node. Lease ids never appear here (a lease id is the credential that releases a lock).

use crate::Algorithm;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `GET /v1/locks/{name}`: the lock as the cluster knows it, the same from every node. The answering node
/// asks every member of its view what its clients hold and wait for (each node is the truth about its own
/// clients) and merges the answers; a member that does not answer in time is listed in `missing`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LockState {
    /// The lock asked about.
    pub name: String,
    /// Per algorithm (each is its own namespace of locks): who holds it, who waits. Only algorithms in which
    /// the lock is held, waited for or was ever granted appear.
    pub algorithms: BTreeMap<Algorithm, AlgoLockState>,
    /// The view epoch of the answering node when it asked.
    pub epoch: Option<u64>,
    /// The members that answered, in id order.
    pub answered: Vec<u16>,
    /// The members that did not answer in time (their clients' holds and waits are not in the answer).
    pub missing: Vec<u16>,
}

/// One algorithm's lock, cluster-wide.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AlgoLockState {
    /// The holder, if any client holds it.
    pub holder: Option<Holder>,
    /// The nodes whose clients wait, in the order the algorithm serves them: request timestamp (Lamport,
    /// Ricart–Agrawala) or the owner's FIFO queue (probable owner).
    pub queue: Vec<Waiting>,
    /// The largest fencing token any node has seen for the lock.
    pub last_fencing_token: Option<u64>,
}

/// The holder of a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Holder {
    /// The node that granted the lease.
    pub node_id: u16,
    /// The grant's fencing token.
    pub fencing_token: u64,
    /// When the lock was granted (the granting node's wall clock, Unix milliseconds).
    pub since_unix_ms: u64,
}

/// One node's clients waiting for a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Waiting {
    /// The node the clients wait at.
    pub node_id: u16,
    /// How many of its clients wait.
    pub waiters: usize,
    /// When the longest-waiting of them asked (that node's wall clock, Unix milliseconds).
    pub since_unix_ms: u64,
    /// The node's request timestamp in the algorithm (Lamport, Ricart–Agrawala), once sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
}

/// `GET /v1/locks`: every lock a client holds or waits for, cluster-wide.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LockList {
    /// The locks, by name and algorithm.
    pub locks: Vec<LockSummary>,
    /// The view epoch of the answering node when it asked.
    pub epoch: Option<u64>,
    /// The members that answered, in id order.
    pub answered: Vec<u16>,
    /// The members that did not answer in time.
    pub missing: Vec<u16>,
}

/// One lock in [`LockList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LockSummary {
    /// The lock's name.
    pub name: String,
    /// The algorithm (its namespace).
    pub algorithm: Algorithm,
    /// The holder's node, if held.
    pub holder_node: Option<u16>,
    /// The holder's fencing token, if held.
    pub fencing_token: Option<u64>,
    /// How many clients wait, cluster-wide.
    pub waiters: usize,
}
