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

mod engine;
pub mod lamport;
pub mod membership;
pub mod probable_owner;
pub mod ricart_agrawala;
#[cfg(test)]
mod view_tests;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

pub use engine::{Engine, EngineStats};

/// Identifies a node: its index in the peer list, `0..n`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(u16);

impl NodeId {
    /// The node with peer-list index `id`.
    pub const fn new(id: u16) -> Self {
        NodeId(id)
    }

    /// The id as the peer-list index it is (for indexing per-node vectors).
    pub const fn index(self) -> usize {
        self.0 as usize
    }

    /// The raw id, as it travels on the wire.
    pub const fn get(self) -> u16 {
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
pub struct LamportTs(u64);

impl LamportTs {
    /// The clock value `ts`.
    pub const fn new(ts: u64) -> Self {
        LamportTs(ts)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// A fencing token: strictly increasing per lock, across the cluster, in grant order.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(u64);

impl FencingToken {
    /// The token with raw value `token` (as a client received it).
    pub const fn new(token: u64) -> Self {
        FencingToken(token)
    }

    /// The raw token, as clients compare it against the last token their resource accepted.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The token of a Lamport / Ricart–Agrawala grant: the request's `(timestamp, node)` pair packed so that
    /// numeric order is the algorithms' total order (`ts` in the high 48 bits, node id in the low 16).
    pub fn from_ts(ts: LamportTs, node: NodeId) -> Self {
        FencingToken((ts.0 << 16) | u64::from(node.0))
    }

    /// The token of a probable-owner grant: the ownership epoch (48 bits, whose high bits are the view
    /// epoch it was opened in: [`probable_owner::OwnershipEpoch`]) above the grant's sequence number within
    /// that ownership epoch (16 bits).
    pub fn from_epoch(epoch: probable_owner::OwnershipEpoch, seq: u16) -> Self {
        FencingToken((epoch.get() << 16) | u64::from(seq))
    }
}

/// A local acquire request, named by the runtime. Unique per node (and incarnation).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(u64);

impl RequestId {
    /// The request named `id`.
    pub const fn new(id: u64) -> Self {
        RequestId(id)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// A process incarnation: changes every time a node starts, so peers can tell a restart from a reconnect.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(u64);

impl Incarnation {
    /// The incarnation numbered `n`.
    pub const fn new(n: u64) -> Self {
        Incarnation(n)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Virtual or real time in milliseconds since an arbitrary origin. Cores only compare and add.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(u64);

impl Millis {
    /// `ms` milliseconds after the origin.
    pub const fn new(ms: u64) -> Self {
        Millis(ms)
    }

    /// The raw value.
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// A lock's name (UTF-8). Validated by the API layer; cores treat it as an opaque key.
pub type LockName = String;

/// Which algorithm serves a request (a wire-contract type: defined in the client crate).
pub use dmutex_client::Algorithm;

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
    /// A local client asks for `lock` only if it can have it without waiting (etcd's try-lock): granted
    /// ([`Action::Granted`]) if no other request holds the lock or comes before this one, else rejected at
    /// once with [`RejectReason::Locked`]. "At once" means after one round of messages for Lamport and
    /// Ricart–Agrawala (the protocol cannot know sooner), without any message when this node already holds
    /// the lock or has a local waiter for it. Each protocol documents what it guarantees for concurrent tries
    /// ([`Protocol::try_request`]).
    TryAcquire {
        /// Names the request in later events and actions.
        req: RequestId,
        /// The lock wanted.
        lock: LockName,
        /// The lease the grant comes with, as for [`Event::Acquire`].
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
        /// The peer that sent it (a node outside the cluster is refused with [`CoreError::UnknownPeer`]).
        from: NodeId,
        /// The sender's incarnation when it sent the message; stale incarnations are dropped.
        incarnation: Incarnation,
        /// The view epoch the sender was in ([`Action::Send`]'s `epoch`). A message of a newer epoch than
        /// this node's is held back until this node installs that view; 0 in a cluster without views.
        epoch: u64,
        /// The algorithm's message, handed to [`Protocol::on_message`].
        msg: M,
    },
    /// A timer set by [`Action::SetTimer`] fired.
    Timer {
        /// The id it was set under; a timer cancelled or replaced since never fires.
        timer: TimerId,
    },
    /// A peer introduced itself (handshake): first contact, or a restart when the incarnation changed.
    /// Delivered before any message of that incarnation.
    PeerIncarnation {
        /// The peer that completed the handshake.
        peer: NodeId,
        /// The incarnation it announced: newer than the known one means it restarted and lost its state.
        incarnation: Incarnation,
        /// Its Lamport clock at the handshake (IR2 applies to it).
        clock: LamportTs,
    },
    /// The membership layer installed view `epoch`: from now on the algorithms run over `members` only.
    ///
    /// Safety rests on the membership layer: it must exclude a node only after every lease that node could
    /// have granted (its member lease, and with it every grant's lease) has run out. Under that assumption an
    /// excluded node holds nothing and requests nothing, so dropping its queue entries, deferred requests and
    /// awaited replies is safe. Messages from a node outside the view are refused from now on.
    MembersChanged {
        /// The view's epoch; a view not newer than the last one applied is refused ([`CoreError::StaleView`]).
        epoch: u64,
        /// Every member with the incarnation the view admitted (this node included).
        members: Vec<(NodeId, Incarnation)>,
    },
}

impl<M> Event<M> {
    /// The same event with its message (if any) converted by `f`; `Err` gives back a message `f` refused
    /// (how a driver that carries several algorithms' messages in one type hands each core its own).
    pub fn try_map<N>(self, f: impl FnOnce(M) -> Result<N, M>) -> Result<Event<N>, M> {
        Ok(match self {
            Event::Acquire { req, lock, deadline, ttl } => Event::Acquire { req, lock, deadline, ttl },
            Event::TryAcquire { req, lock, ttl } => Event::TryAcquire { req, lock, ttl },
            Event::Release { req } => Event::Release { req },
            Event::KeepAlive { req, until } => Event::KeepAlive { req, until },
            Event::Cancel { req } => Event::Cancel { req },
            Event::Message { from, incarnation, epoch, msg } => {
                Event::Message { from, incarnation, epoch, msg: f(msg)? }
            }
            Event::Timer { timer } => Event::Timer { timer },
            Event::PeerIncarnation { peer, incarnation, clock } => {
                Event::PeerIncarnation { peer, incarnation, clock }
            }
            Event::MembersChanged { epoch, members } => Event::MembersChanged { epoch, members },
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
    /// An [`Event::TryAcquire`] found the lock held, or another request before it: it would have had to wait.
    Locked {
        /// The node holding the lock, when the answer names one (this node for a local holder; the
        /// protocol's knowledge otherwise, `None` when the try lost to a request that does not hold yet).
        holder: Option<NodeId>,
    },
}

/// Output of a core, executed by its driver in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action<M> {
    /// Send `msg` to peer `to` (reliable, FIFO per pair).
    Send {
        /// The peer to send to (never this node).
        to: NodeId,
        /// The epoch of the view this node is in: the driver carries it to the receiver's
        /// [`Event::Message`] (a receiver still in an older view holds the message until it catches up).
        epoch: u64,
        /// The algorithm's message.
        msg: M,
    },
    /// The local request `req` now holds `lock`.
    Granted {
        /// The [`Event::Acquire`] that is granted.
        req: RequestId,
        /// The lock it asked for.
        lock: LockName,
        /// The grant's fencing token: larger than every earlier grant's for this lock, cluster-wide.
        token: FencingToken,
    },
    /// The local request `req` ended without a grant.
    Rejected {
        /// The [`Event::Acquire`] that ended; its id may be reused from now on.
        req: RequestId,
        /// Cancelled or timed out.
        reason: RejectReason,
    },
    /// The lease of the local holder `req` ended without a release or keepalive: the engine has released `lock`
    /// (in the protocol, so the next holder's token is larger); the driver forgets the lease and counts it.
    LeaseExpired {
        /// The request whose grant ended.
        req: RequestId,
        /// The lock it held, now released.
        lock: LockName,
    },
    /// Deliver [`Event::Timer`] at `at` (replaces an earlier timer with the same id).
    SetTimer {
        /// The id the timer fires under.
        timer: TimerId,
        /// The time (on the driver's clock) it fires at.
        at: Millis,
    },
    /// Forget a timer.
    CancelTimer {
        /// The id of the timer that must not fire.
        timer: TimerId,
    },
}

impl<M> Action<M> {
    /// The same action with its message (if any) converted by `f`.
    pub fn map<N>(self, f: impl FnOnce(M) -> N) -> Action<N> {
        match self {
            Action::Send { to, epoch, msg } => Action::Send { to, epoch, msg: f(msg) },
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
    /// A message came from a node id outside the cluster (or outside the current view).
    #[error("message from unknown node {0}")]
    UnknownPeer(NodeId),
    /// A message of a view newer than this node's could not be held back: the hold-back buffer is full
    /// ([`Engine`]'s bound). The message is dropped; the sender's links resend nothing, so the membership
    /// layer must install the view soon (it is the only way a correct peer gets that far ahead).
    #[error("message of view {epoch} dropped: the hold-back buffer for newer views is full")]
    HeldBackFull {
        /// The message's epoch.
        epoch: u64,
    },
    /// [`Event::MembersChanged`] named an epoch not newer than the view already applied.
    #[error("view {epoch} is not newer than the current one")]
    StaleView {
        /// The refused view's epoch.
        epoch: u64,
    },
    /// [`Event::MembersChanged`] installed a view without this node: it is excluded and must stop (a new
    /// incarnation joins afresh). Nothing changed.
    #[error("view {epoch} excludes this node")]
    ExcludedFromView {
        /// The view's epoch.
        epoch: u64,
    },
    /// A message came from an incarnation older than the newest one known.
    #[error("message from stale incarnation {incarnation:?} of node {peer}")]
    StaleIncarnation {
        /// The peer that sent the message.
        peer: NodeId,
        /// The incarnation the message came from, older than the newest known.
        incarnation: Incarnation,
    },
    /// A message that makes no sense in the current state (e.g. a RELEASE for a lock never requested).
    #[error("unexpected {kind} from node {from}: {reason}")]
    Unexpected {
        /// The peer that sent the message.
        from: NodeId,
        /// Its [`ProtocolMessage::kind`].
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
        /// The peer to send to (never this node).
        to: NodeId,
        /// The message.
        msg: M,
    },
    /// The try request for `lock` ([`Protocol::try_request`]) cannot be granted without waiting: the
    /// protocol has already withdrawn it (told its peers whatever withdrawing needs). Only ever emitted for a
    /// try request, at most once per try, and never after an [`Output::Entered`] for it.
    Busy {
        /// The lock.
        lock: LockName,
        /// The holder, when known.
        holder: Option<NodeId>,
    },
    /// This node may now enter the critical section of `lock` with `token`.
    Entered {
        /// The lock whose critical section this node enters; the engine grants it to its oldest local waiter.
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
    /// Like [`Protocol::request`] (same preconditions), for a try-lock: the protocol either enters
    /// ([`Output::Entered`]) or, as soon as it can tell that entering would mean waiting behind another
    /// holder or an earlier request, withdraws the request itself and emits [`Output::Busy`]. A withdraw of a
    /// try request before either is the usual [`Protocol::withdraw`].
    fn try_request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<Self::Msg>>);
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
    /// The member set changed ([`Event::MembersChanged`]): `removed` left it (their state must be dropped: the
    /// membership layer excluded them only after their leases ran out), `added` joined it (they know nothing
    /// of this node's requests yet). `peers` is already the new member set. A node listed in both is an old
    /// incarnation replaced by a new one. Called with both lists in id order, `removed` applied first.
    fn members_changed(
        &mut self,
        removed: &[NodeId],
        added: &[(NodeId, Incarnation)],
        peers: &Peers,
        out: &mut Vec<Output<Self::Msg>>,
    );
    /// Whether a request for `lock` from this node needs `peer` to be reachable to make progress
    /// (used to answer 503 promptly instead of waiting out a timeout). Only members can be needed: the
    /// engine answers `false` for any other node without asking.
    fn needs_peer(&self, lock: &str, peer: NodeId) -> bool;
    /// Whether a counter that carries the view epoch in its high bits (probable owner's ownership epochs)
    /// is near the end of the current view's range: the driver should then ask the membership layer for a
    /// new view with the same members ([`membership::Event::Renew`]). Never in a cluster without views.
    fn wants_view_bump(&self, _peers: &Peers) -> bool {
        false
    }
}

/// The member set as the engine knows it: own id, every member's id, the newest incarnation of each, and
/// whether its handshake (which carries its clock) has been heard.
///
/// Members are explicit: ids need not be `0..n`. A fixed cluster ([`Peers::new`], [`Peers::formed`]) has the
/// members `0..n` for ever; a cluster whose membership layer installs views changes them with
/// [`Peers::apply_view`] (driven by [`Event::MembersChanged`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peers {
    me: NodeId,
    /// The epoch of the last view applied (0: the initial member set).
    epoch: u64,
    members: BTreeMap<NodeId, Member>,
    /// Handshakes of incarnations newer than the view admitted (views only): heard already when a view
    /// admits them.
    early: BTreeMap<NodeId, Incarnation>,
}

/// What the engine knows of one member.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct Member {
    /// The newest incarnation known (from a handshake or a view); `None` until either told one.
    incarnation: Option<Incarnation>,
    /// Whether the handshake of that incarnation has been heard.
    heard: bool,
}

impl Member {
    const UNKNOWN: Member = Member { incarnation: None, heard: false };

    fn heard(incarnation: Incarnation) -> Self {
        Member { incarnation: Some(incarnation), heard: true }
    }
}

/// How [`Peers::apply_view`] changed the member set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewChange {
    /// Members (or incarnations of members) the view excludes, in id order.
    pub removed: Vec<NodeId>,
    /// Members (or new incarnations of members) the view adds, in id order.
    pub added: Vec<(NodeId, Incarnation)>,
}

impl Peers {
    /// A cluster of `n` nodes seen from `me` where every node is already known at incarnation 0
    /// (a cluster formed at time zero: unit tests, simulation, model checking).
    pub fn formed(me: NodeId, n: usize) -> Self {
        let members = (0..n).map(|i| (NodeId::new(i as u16), Member::heard(Incarnation::new(0)))).collect();
        Peers { me, epoch: 0, members, early: BTreeMap::new() }
    }

    /// A cluster of `n` nodes seen from `me`, no peer heard yet.
    pub fn new(me: NodeId, n: usize, my_incarnation: Incarnation) -> Self {
        Self::with_members(me, my_incarnation, (0..n).map(|i| NodeId::new(i as u16)))
    }

    /// A cluster of the given members (this node is added if missing) seen from `me`, no peer heard yet: a
    /// node that starts (or joins) in a view.
    pub fn with_members(
        me: NodeId,
        my_incarnation: Incarnation,
        members: impl IntoIterator<Item = NodeId>,
    ) -> Self {
        let mut members: BTreeMap<NodeId, Member> =
            members.into_iter().map(|m| (m, Member::UNKNOWN)).collect();
        members.insert(me, Member::heard(my_incarnation));
        Peers { me, epoch: 0, members, early: BTreeMap::new() }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The epoch of the last view applied (0 before any).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of members, this node included.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the member set is empty (never: it contains at least this node).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member id, this one included, in order.
    pub fn all(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.keys().copied()
    }

    /// Every other member, in order.
    pub fn others(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.me;
        self.all().filter(move |&p| p != me)
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
    }

    /// The newest incarnation of `node` known so far.
    pub fn incarnation(&self, node: NodeId) -> Option<Incarnation> {
        self.members.get(&node).and_then(|m| m.incarnation)
    }

    /// Whether every member's handshake has been heard.
    pub fn all_known(&self) -> bool {
        self.members.values().all(|m| m.heard)
    }

    /// Records a handshake (or a first message) of `node`'s `incarnation`. Returns what changed.
    ///
    /// Once views are applied (epoch above 0) the member set changes only through views: a newer
    /// incarnation of a member is [`PeerChange::NotAdmitted`] until a view lists it (its handshake is kept, so
    /// that view finds it heard).
    pub fn observe(&mut self, node: NodeId, incarnation: Incarnation) -> PeerChange {
        let Some(slot) = self.members.get_mut(&node) else {
            return PeerChange::Unknown;
        };
        match slot.incarnation {
            None => {
                *slot = Member::heard(incarnation);
                PeerChange::Joined
            }
            Some(old) if incarnation > old && self.epoch > 0 => {
                let early = self.early.entry(node).or_insert(incarnation);
                *early = (*early).max(incarnation);
                PeerChange::NotAdmitted
            }
            Some(old) if incarnation > old => {
                *slot = Member::heard(incarnation);
                PeerChange::Restarted
            }
            Some(old) if incarnation == old && !slot.heard => {
                // The view named this incarnation before its handshake came.
                slot.heard = true;
                PeerChange::Joined
            }
            Some(old) if incarnation == old => PeerChange::Same,
            Some(_) => PeerChange::Stale,
        }
    }

    /// Installs the member set of view `epoch` (this node must be in it) and returns the difference.
    ///
    /// A member whose listed incarnation is newer than the one known counts as removed *and* added (the old
    /// incarnation left, a new one joined); one listed with an older incarnation than a handshake already
    /// announced keeps the newer one. Added members are not yet heard: their handshake is still to come.
    /// `None` (and nothing changes) if `epoch` is not newer than the last view or the view omits this node.
    pub fn apply_view(&mut self, epoch: u64, members: &[(NodeId, Incarnation)]) -> Option<ViewChange> {
        if epoch <= self.epoch || !members.iter().any(|&(id, _)| id == self.me) {
            return None;
        }
        let listed: BTreeMap<NodeId, Incarnation> = members.iter().copied().collect();
        let mut change = ViewChange::default();
        for (&id, member) in &self.members {
            if id == self.me {
                continue;
            }
            match (listed.get(&id), member.incarnation) {
                (None, _) => change.removed.push(id),
                (Some(&new), Some(old)) if new > old => change.removed.push(id),
                _ => {}
            }
        }
        for (&id, &inc) in &listed {
            if id == self.me {
                continue;
            }
            match self.members.get_mut(&id) {
                None => change.added.push((id, inc)),
                Some(m) => match m.incarnation {
                    Some(old) if inc > old => change.added.push((id, inc)),
                    Some(_) => {}
                    // A member of the fixed list not heard yet: the view only tells its incarnation.
                    None => m.incarnation = Some(inc),
                },
            }
        }
        for id in &change.removed {
            self.members.remove(id);
        }
        for &(id, inc) in &change.added {
            let heard = self.early.get(&id) == Some(&inc);
            self.members.insert(id, Member { incarnation: Some(inc), heard });
        }
        self.early.retain(|id, inc| listed.get(id).is_some_and(|listed| listed < inc));
        self.epoch = epoch;
        Some(change)
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
    /// Newer than the incarnation the current view admitted: not a member until a view lists it.
    NotAdmitted,
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
    /// The node this one believes holds or owns the lock; `None` when this node does not know one (Lamport:
    /// the head of its queue; Ricart–Agrawala: only itself; probable-owner: the owner it was last told of).
    pub holder: Option<NodeId>,
    /// The newest fencing token this node has seen for the lock: one it was granted itself (or, for
    /// probable-owner, received with the token); `None` on a node that never held it, even if `holder` is known.
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
    NodeId::new((h % n.max(1) as u64) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_hash_is_stable_and_documented() {
        // FNV-1a 64 test vectors: "" -> cbf29ce484222325, "a" -> af63dc4c8601ec8c.
        assert_eq!(home_node("", 1 << 15), NodeId::new((0xcbf2_9ce4_8422_2325u64 % (1 << 15)) as u16));
        assert_eq!(home_node("a", 1000), NodeId::new((0xaf63_dc4c_8601_ec8cu64 % 1000) as u16));
        assert_eq!(home_node("orders", 1), NodeId::new(0));
    }

    #[test]
    fn tokens_order_like_the_total_order() {
        let a = FencingToken::from_ts(LamportTs::new(5), NodeId::new(3));
        let b = FencingToken::from_ts(LamportTs::new(5), NodeId::new(4));
        let c = FencingToken::from_ts(LamportTs::new(6), NodeId::new(0));
        assert!(a < b && b < c);
        assert!(
            FencingToken::from_epoch(probable_owner::OwnershipEpoch::new(1), u16::MAX)
                < FencingToken::from_epoch(probable_owner::OwnershipEpoch::new(2), 1)
        );
    }

    #[test]
    fn a_view_reports_who_left_and_who_joined_and_keeps_the_rest() {
        let mut p = Peers::formed(NodeId::new(0), 3);
        let view = |m: &[(u16, u64)]| {
            m.iter().map(|&(id, i)| (NodeId::new(id), Incarnation::new(i))).collect::<Vec<_>>()
        };
        let change = p.apply_view(1, &view(&[(0, 0), (1, 0), (7, 3)])).expect("a newer view");
        assert_eq!(
            change,
            ViewChange { removed: vec![NodeId::new(2)], added: vec![(NodeId::new(7), Incarnation::new(3))] }
        );
        assert_eq!(p.all().collect::<Vec<_>>(), vec![NodeId::new(0), NodeId::new(1), NodeId::new(7)]);
        assert_eq!(p.epoch(), 1);
        assert!(!p.all_known(), "the joiner's handshake is still to come");
        assert_eq!(p.observe(NodeId::new(7), Incarnation::new(3)), PeerChange::Joined);
        assert!(p.all_known());
        assert_eq!(p.observe(NodeId::new(2), Incarnation::new(0)), PeerChange::Unknown, "excluded");
        // A new incarnation of a member is the old one leaving and the new one joining.
        let change = p.apply_view(2, &view(&[(0, 0), (1, 1), (7, 3)])).expect("a newer view");
        assert_eq!(
            change,
            ViewChange { removed: vec![NodeId::new(1)], added: vec![(NodeId::new(1), Incarnation::new(1))] }
        );
        assert_eq!(p.apply_view(2, &view(&[(0, 0)])), None, "not newer");
        assert_eq!(p.apply_view(3, &view(&[(1, 1)])), None, "without this node");
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn with_views_a_new_incarnation_is_a_member_only_once_a_view_lists_it() {
        let mut p = Peers::formed(NodeId::new(0), 3);
        let view =
            |inc: u64| vec![(NodeId::new(0), Incarnation::new(0)), (NodeId::new(1), Incarnation::new(inc))];
        p.apply_view(1, &view(0)).expect("a newer view");
        assert_eq!(p.observe(NodeId::new(1), Incarnation::new(1)), PeerChange::NotAdmitted);
        assert_eq!(p.incarnation(NodeId::new(1)), Some(Incarnation::new(0)), "still the admitted one");
        let change = p.apply_view(2, &view(1)).expect("a newer view");
        assert_eq!(change.removed, vec![NodeId::new(1)]);
        assert!(p.all_known(), "its handshake came before the view and counts as heard");
        assert_eq!(p.observe(NodeId::new(1), Incarnation::new(1)), PeerChange::Same);
    }

    #[test]
    fn peers_track_incarnations() {
        let mut p = Peers::new(NodeId::new(0), 3, Incarnation::new(7));
        assert!(!p.all_known());
        assert_eq!(p.observe(NodeId::new(1), Incarnation::new(1)), PeerChange::Joined);
        assert_eq!(p.observe(NodeId::new(1), Incarnation::new(1)), PeerChange::Same);
        assert_eq!(p.observe(NodeId::new(1), Incarnation::new(0)), PeerChange::Stale);
        assert_eq!(p.observe(NodeId::new(1), Incarnation::new(2)), PeerChange::Restarted);
        assert_eq!(p.observe(NodeId::new(9), Incarnation::new(2)), PeerChange::Unknown);
        assert_eq!(p.observe(NodeId::new(2), Incarnation::new(1)), PeerChange::Joined);
        assert!(p.all_known());
        assert_eq!(p.others().collect::<Vec<_>>(), vec![NodeId::new(1), NodeId::new(2)]);
    }
}
