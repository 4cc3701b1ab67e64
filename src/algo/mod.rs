//! Sans-I/O algorithm cores.
//!
//! Everything in `algo/` is plain, synchronous and deterministic: it never touches a socket, never reads the
//! OS clock (time is an argument), never uses unseeded randomness and never lets `HashMap` iteration order
//! reach its output. The same code is driven by the tokio node ([`crate::node`]), by the deterministic
//! simulation (`tests/simulation.rs`) and by the stateright model checker (`tests/model_check.rs`).
//!
//! ```text
//!   Event ──► Engine<P> ──► P: Protocol (lamport | ricart_agrawala | probable_owner)
//!              │  local FIFO of waiters, deadlines,      │
//!              │  leases, peer incarnations, joining     │  Send / Entered
//!              ◄────────────────────────────────────────┘
//!   Action ◄── Engine<P>
//! ```
//!
//! [`Engine`] holds what every algorithm needs (the local FIFO of waiters per lock, acquire deadlines, grant
//! leases, the table of peer incarnations, joining after a (re)start); a [`Protocol`] holds only the
//! distributed algorithm: when to send what, and when this node may enter the critical section.

pub mod engine;
pub mod lamport;
pub mod membership;
pub mod probable_owner;
pub mod ricart_agrawala;

use serde::{Deserialize, Serialize};
use std::fmt;

pub use engine::{Engine, EngineStats};

/// Identifies a node: its index in the peer list, `0..n`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u16);

impl NodeId {
    /// The id as the peer-list index it is (for indexing per-node vectors).
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The raw id, as it travels on the wire.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A Lamport logical timestamp (clock value).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LamportTs(pub u64);

impl LamportTs {
    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A fencing token: strictly increasing per lock, across the cluster, in grant order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The raw token, as clients compare it against the last token their resource accepted.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The token of a Lamport / Ricart–Agrawala grant: the request's `(timestamp, node)` pair packed so that
    /// numeric order is the algorithms' total order (`ts` in the high 48 bits, node id in the low 16).
    pub fn from_ts(ts: LamportTs, node: NodeId) -> Self {
        FencingToken((ts.0 << 16) | u64::from(node.0))
    }

    /// The token of a probable-owner grant: the ownership epoch in the high 32 bits and the grant's
    /// sequence number within that epoch in the low 32.
    pub fn from_epoch(epoch: u64, seq: u32) -> Self {
        FencingToken((epoch << 32) | u64::from(seq))
    }
}

/// A local acquire request, named by the runtime. Unique per node (and incarnation).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

impl RequestId {
    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A process incarnation: changes every time a node starts, so peers can tell a restart from a reconnect.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Virtual or real time in milliseconds since an arbitrary origin. Cores only compare and add.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A lock's name (UTF-8). Validated by the API layer; cores treat it as an opaque key.
pub type LockName = String;

/// Which algorithm serves a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Lamport 1978: REQUEST / REPLY / RELEASE, 3(N−1) messages per entry.
    Lamport,
    /// Ricart–Agrawala 1981: deferred replies, 2(N−1) messages per entry.
    RicartAgrawala,
    /// Probable-owner locking (Li–Hudak hints, FIFO queue at the owner).
    ProbableOwner,
}

impl Algorithm {
    /// Every algorithm, in a stable order.
    pub const ALL: [Algorithm; 3] = [Algorithm::Lamport, Algorithm::RicartAgrawala, Algorithm::ProbableOwner];

    /// The name used in configuration, the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Lamport => "lamport",
            Algorithm::RicartAgrawala => "ricart-agrawala",
            Algorithm::ProbableOwner => "probable-owner",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "lamport" => Ok(Algorithm::Lamport),
            "ricart-agrawala" | "ricart_agrawala" | "ra" => Ok(Algorithm::RicartAgrawala),
            "probable-owner" | "probable_owner" | "po" => Ok(Algorithm::ProbableOwner),
            other => Err(format!(
                "unknown algorithm {other:?} (expected lamport, ricart-agrawala or probable-owner)"
            )),
        }
    }
}

/// A timer a core asked for. Fires as [`Event::Timer`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TimerId {
    /// The deadline of a waiting acquire request.
    Deadline(RequestId),
    /// The end of a granted request's lease: unless kept alive, the engine releases the lock then.
    Lease(RequestId),
}

/// Input to a core.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Event<M> {
    /// A local client asks for `lock`. It waits (FIFO behind other local waiters) until granted, cancelled,
    /// or `deadline` passes.
    Acquire {
        /// Names the request in later events and actions.
        req: RequestId,
        /// The lock wanted.
        lock: LockName,
        /// Give up at this time (an [`Action::Rejected`] with [`RejectReason::TimedOut`]).
        deadline: Option<Millis>,
        /// The lease the grant comes with, as a length of time: unless kept alive ([`Event::KeepAlive`]) the
        /// lock is released this long after the grant ([`Action::LeaseExpired`]). `None`: held until released.
        ttl: Option<Millis>,
    },
    /// The local holder of a granted request leaves the critical section.
    Release {
        /// The granted request.
        req: RequestId,
    },
    /// The holder of a granted request with a lease extends it: the lease now ends at `until` (never earlier
    /// than it already did). A keepalive that comes at or after the lease's end is too late: the lease expires
    /// at once and the keepalive is refused ([`CoreError::LeaseExpired`]).
    KeepAlive {
        /// The granted request.
        req: RequestId,
        /// The lease's new end.
        until: Millis,
    },
    /// A waiting (not yet granted) request is withdrawn.
    Cancel {
        /// The waiting request.
        req: RequestId,
    },
    /// A message from a peer.
    Message {
        /// Sender.
        from: NodeId,
        /// The sender's incarnation when it sent the message; stale incarnations are dropped.
        incarnation: Incarnation,
        /// Payload.
        msg: M,
    },
    /// A timer set by [`Action::SetTimer`] fired.
    Timer {
        /// Which one.
        timer: TimerId,
    },
    /// A peer introduced itself (handshake): first contact, or a restart when the incarnation changed.
    /// Delivered before any message of that incarnation.
    PeerIncarnation {
        /// The peer.
        peer: NodeId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// Its Lamport clock at the handshake (IR2 applies to it).
        clock: LamportTs,
    },
}

impl<M> Event<M> {
    /// The same event with its message (if any) converted by `f`; `Err` gives back a message `f` refused
    /// (how a driver that carries several algorithms' messages in one type hands each core its own).
    pub fn try_map<N>(self, f: impl FnOnce(M) -> Result<N, M>) -> Result<Event<N>, M> {
        Ok(match self {
            Event::Acquire { req, lock, deadline, ttl } => Event::Acquire { req, lock, deadline, ttl },
            Event::Release { req } => Event::Release { req },
            Event::KeepAlive { req, until } => Event::KeepAlive { req, until },
            Event::Cancel { req } => Event::Cancel { req },
            Event::Message { from, incarnation, msg } => Event::Message { from, incarnation, msg: f(msg)? },
            Event::Timer { timer } => Event::Timer { timer },
            Event::PeerIncarnation { peer, incarnation, clock } => {
                Event::PeerIncarnation { peer, incarnation, clock }
            }
        })
    }
}

/// Why a request ended without a grant.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    /// [`Event::Cancel`] withdrew it.
    Cancelled,
    /// Its deadline passed while it waited.
    TimedOut,
}

/// Output of a core, executed by its driver in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action<M> {
    /// Send `msg` to peer `to` (reliable, FIFO per pair).
    Send {
        /// Destination.
        to: NodeId,
        /// Payload.
        msg: M,
    },
    /// The local request `req` now holds `lock`.
    Granted {
        /// The request.
        req: RequestId,
        /// The lock.
        lock: LockName,
        /// Its fencing token.
        token: FencingToken,
    },
    /// The local request `req` ended without a grant.
    Rejected {
        /// The request.
        req: RequestId,
        /// Why.
        reason: RejectReason,
    },
    /// The lease of the local holder `req` ended without a release or keepalive: the engine has released `lock`
    /// (in the protocol, so the next holder's token is larger); the driver forgets the lease and counts it.
    LeaseExpired {
        /// The request whose grant ended.
        req: RequestId,
        /// Its lock.
        lock: LockName,
    },
    /// Deliver [`Event::Timer`] at `at` (replaces an earlier timer with the same id).
    SetTimer {
        /// Which timer.
        timer: TimerId,
        /// When.
        at: Millis,
    },
    /// Forget a timer.
    CancelTimer {
        /// Which timer.
        timer: TimerId,
    },
}

impl<M> Action<M> {
    /// The same action with its message (if any) converted by `f`.
    pub fn map<N>(self, f: impl FnOnce(M) -> N) -> Action<N> {
        match self {
            Action::Send { to, msg } => Action::Send { to, msg: f(msg) },
            Action::Granted { req, lock, token } => Action::Granted { req, lock, token },
            Action::Rejected { req, reason } => Action::Rejected { req, reason },
            Action::LeaseExpired { req, lock } => Action::LeaseExpired { req, lock },
            Action::SetTimer { timer, at } => Action::SetTimer { timer, at },
            Action::CancelTimer { timer } => Action::CancelTimer { timer },
        }
    }
}

/// An input the core refused. Counted and logged by the driver; never a panic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// `Release` or `Cancel` named a request this node does not know.
    #[error("unknown request {0:?}")]
    UnknownRequest(RequestId),
    /// `Acquire` reused a request id that is still live.
    #[error("duplicate request id {0:?}")]
    DuplicateRequest(RequestId),
    /// `Release` named a request that is not granted, or `Cancel` one that is.
    #[error("request {0:?} is not in the state the event needs")]
    WrongState(RequestId),
    /// A keepalive came at or after its lease's end: the lease has expired instead.
    #[error("the lease of request {0:?} has expired")]
    LeaseExpired(RequestId),
    /// A message came from a node id outside the cluster.
    #[error("message from unknown node {0}")]
    UnknownPeer(NodeId),
    /// A message came from an incarnation older than the newest one known.
    #[error("message from stale incarnation {incarnation:?} of node {peer}")]
    StaleIncarnation {
        /// Sender.
        peer: NodeId,
        /// Its (old) incarnation.
        incarnation: Incarnation,
    },
    /// A message that makes no sense in the current state (e.g. a RELEASE for a lock never requested).
    #[error("unexpected {kind} from node {from}: {reason}")]
    Unexpected {
        /// Sender.
        from: NodeId,
        /// Message type.
        kind: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
}

/// What a protocol tells the engine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output<M> {
    /// Send a message.
    Send {
        /// Destination.
        to: NodeId,
        /// Payload.
        msg: M,
    },
    /// This node may now enter the critical section of `lock` with `token`.
    Entered {
        /// The lock.
        lock: LockName,
        /// The grant's fencing token.
        token: FencingToken,
    },
}

/// A protocol message: enough to count it by type, route it by lock, and let a driver follow one acquire's
/// messages across nodes without knowing any algorithm's message variants.
///
/// The provided methods describe a message that asks for nothing, answers nothing and hands nothing over;
/// an algorithm overrides the ones its messages need.
pub trait ProtocolMessage: Clone + fmt::Debug + Eq + std::hash::Hash {
    /// The message type in the papers' words (`REQUEST`, `LOCK_ACQ`, …); used for counters and traces.
    fn kind(&self) -> &'static str;
    /// The lock the message is about.
    fn lock(&self) -> &str;
    /// The Lamport timestamp the message carries, if the algorithm stamps its messages.
    fn timestamp(&self) -> Option<LamportTs>;

    /// Whether a later message from the receiver answers this one ([`ProtocolMessage::is_answer`]), however
    /// much later: the driver keeps the request's trace context so that the answer joins the requester's trace.
    fn is_request(&self) -> bool {
        false
    }

    /// Whether the message answers a request from its receiver for the same lock.
    fn is_answer(&self) -> bool {
        false
    }

    /// Whether the message tells its receiver to ask another node instead (counted as a redirect).
    fn is_redirect(&self) -> bool {
        false
    }

    /// The nodes whose waiting requests this message hands over to its receiver (a transfer that carries a
    /// queue): the driver moves their trace contexts along. Empty, and allocation-free, for other messages.
    fn handed_over(&self) -> Vec<NodeId> {
        Vec::new()
    }

    /// A short text for message-flow diagrams and traces (where a redirect points, a grant's epoch, …).
    fn flow_detail(&self) -> Option<String> {
        None
    }
}

/// A distributed mutual-exclusion algorithm, seen from one node, for every lock at once.
///
/// The engine guarantees: `request` is only called for a lock this node neither holds nor requests, and only
/// once the node has joined (heard every peer's handshake); `release` only while entered; `withdraw` only while
/// requested and not entered. After `withdraw` the protocol must not emit [`Output::Entered`] for that request.
pub trait Protocol: Clone + fmt::Debug + Eq + std::hash::Hash {
    /// The algorithm's messages.
    type Msg: ProtocolMessage;

    /// Which algorithm this is.
    const ALGORITHM: Algorithm;

    /// The state of a node that has just started: no requests, no locks, clock 0.
    fn fresh(me: NodeId, n: usize) -> Self;

    /// This node wants to enter `lock`'s critical section.
    fn request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<Self::Msg>>);
    /// This node leaves `lock`'s critical section.
    fn release(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<Self::Msg>>);
    /// This node no longer wants `lock` (its request was cancelled before it entered).
    fn withdraw(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<Self::Msg>>);
    /// A message from a peer of the current incarnation.
    fn on_message(
        &mut self,
        from: NodeId,
        msg: Self::Msg,
        peers: &mut Peers,
        out: &mut Vec<Output<Self::Msg>>,
    ) -> Result<(), CoreError>;
    /// IR2 for a clock learnt outside a message (a handshake).
    fn observe_clock(&mut self, clock: LamportTs);
    /// `peer` restarted: it lost every request and every lock it had. Drop its state, re-send what it needs.
    fn peer_restarted(&mut self, peer: NodeId, peers: &Peers, out: &mut Vec<Output<Self::Msg>>);
    /// The node's Lamport clock.
    fn clock(&self) -> LamportTs;
    /// What this node knows about `lock`.
    fn view(&self, lock: &str) -> LockView;
    /// Whether a request for `lock` from this node needs `peer` to be reachable to make progress
    /// (used to answer 503 promptly instead of waiting out a timeout).
    fn needs_peer(&self, lock: &str, peer: NodeId) -> bool;
}

/// The peers as the engine knows them: cluster size, own id, and the newest incarnation of each node.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peers {
    me: NodeId,
    incarnations: Vec<Option<Incarnation>>,
}

impl Peers {
    /// A cluster of `n` nodes seen from `me` where every node is already known at incarnation 0
    /// (a cluster formed at time zero: unit tests, simulation, model checking).
    pub fn formed(me: NodeId, n: usize) -> Self {
        Peers { me, incarnations: vec![Some(Incarnation(0)); n] }
    }

    /// A cluster of `n` nodes seen from `me`, no peer heard yet.
    pub fn new(me: NodeId, n: usize, my_incarnation: Incarnation) -> Self {
        let mut incarnations = vec![None; n];
        incarnations[usize::from(me.0)] = Some(my_incarnation);
        Peers { me, incarnations }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Cluster size.
    pub fn len(&self) -> usize {
        self.incarnations.len()
    }

    /// Whether the cluster is empty (never: it contains at least this node).
    pub fn is_empty(&self) -> bool {
        self.incarnations.is_empty()
    }

    /// Every node id, this one included, in order.
    pub fn all(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.incarnations.len()).map(|i| NodeId(i as u16))
    }

    /// Every other node, in order.
    pub fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.me;
        self.all().filter(move |&p| p != me)
    }

    /// Whether `node` is a member of the cluster.
    pub fn contains(&self, node: NodeId) -> bool {
        usize::from(node.0) < self.incarnations.len()
    }

    /// The newest incarnation of `node` heard so far.
    pub fn incarnation(&self, node: NodeId) -> Option<Incarnation> {
        self.incarnations.get(usize::from(node.0)).copied().flatten()
    }

    /// Whether every peer's handshake has been heard.
    pub fn all_known(&self) -> bool {
        self.incarnations.iter().all(Option::is_some)
    }

    /// Records `node`'s incarnation. Returns what changed.
    pub fn observe(&mut self, node: NodeId, incarnation: Incarnation) -> PeerChange {
        let Some(slot) = self.incarnations.get_mut(usize::from(node.0)) else {
            return PeerChange::Unknown;
        };
        match *slot {
            None => {
                *slot = Some(incarnation);
                PeerChange::Joined
            }
            Some(old) if incarnation > old => {
                *slot = Some(incarnation);
                PeerChange::Restarted
            }
            Some(old) if incarnation == old => PeerChange::Same,
            Some(_) => PeerChange::Stale,
        }
    }
}

/// Result of [`Peers::observe`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PeerChange {
    /// First handshake of this peer.
    Joined,
    /// A newer incarnation: the peer restarted.
    Restarted,
    /// Already known.
    Same,
    /// Older than the one known: ignore.
    Stale,
    /// Not a cluster member.
    Unknown,
}

/// One entry of a lock's queue as a node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The requesting node.
    pub node: NodeId,
    /// Its request's timestamp (Lamport / Ricart–Agrawala).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<LamportTs>,
}

/// What one node knows about one lock (for `GET /v1/locks/{name}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockView {
    /// Whether this node is in the critical section.
    pub held_here: bool,
    /// The node this one believes holds or owns the lock, if it knows.
    pub holder: Option<NodeId>,
    /// The newest fencing token this node has seen for the lock.
    pub last_token: Option<FencingToken>,
    /// The queue as this node sees it (its own request included).
    pub queue: Vec<QueueEntry>,
    /// This node's pending request timestamp, if any.
    pub own_request: Option<LamportTs>,
}

/// `home(lock) = fnv1a64(lock bytes) mod n`: the probable-owner home node.
///
/// FNV-1a (64-bit, offset basis 0xcbf29ce484222325, prime 0x100000001b3) over the UTF-8 bytes of the name:
/// identical on every node, every build and every platform (unlike `std`'s randomly seeded hasher).
pub fn home_node(lock: &str, n: usize) -> NodeId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in lock.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    NodeId((h % n.max(1) as u64) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_hash_is_stable_and_documented() {
        // FNV-1a 64 test vectors: "" -> cbf29ce484222325, "a" -> af63dc4c8601ec8c.
        assert_eq!(home_node("", 1 << 15), NodeId((0xcbf2_9ce4_8422_2325u64 % (1 << 15)) as u16));
        assert_eq!(home_node("a", 1000), NodeId((0xaf63_dc4c_8601_ec8cu64 % 1000) as u16));
        assert_eq!(home_node("orders", 1), NodeId(0));
    }

    #[test]
    fn tokens_order_like_the_total_order() {
        let a = FencingToken::from_ts(LamportTs(5), NodeId(3));
        let b = FencingToken::from_ts(LamportTs(5), NodeId(4));
        let c = FencingToken::from_ts(LamportTs(6), NodeId(0));
        assert!(a < b && b < c);
        assert!(FencingToken::from_epoch(1, u32::MAX) < FencingToken::from_epoch(2, 1));
    }

    #[test]
    fn peers_track_incarnations() {
        let mut p = Peers::new(NodeId(0), 3, Incarnation(7));
        assert!(!p.all_known());
        assert_eq!(p.observe(NodeId(1), Incarnation(1)), PeerChange::Joined);
        assert_eq!(p.observe(NodeId(1), Incarnation(1)), PeerChange::Same);
        assert_eq!(p.observe(NodeId(1), Incarnation(0)), PeerChange::Stale);
        assert_eq!(p.observe(NodeId(1), Incarnation(2)), PeerChange::Restarted);
        assert_eq!(p.observe(NodeId(9), Incarnation(2)), PeerChange::Unknown);
        assert_eq!(p.observe(NodeId(2), Incarnation(1)), PeerChange::Joined);
        assert!(p.all_known());
        assert_eq!(p.others().collect::<Vec<_>>(), vec![NodeId(1), NodeId(2)]);
    }
}
