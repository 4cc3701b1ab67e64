//! Probable-owner locking: a migrating ownership token, Li–Hudak probable-owner hints, a FIFO queue at the
//! owner, and a recovery round at each lock's home node.
//!
//! The design fixes the original C++ DSM lock (`LOCK_ACQ` / `LOCK_REP` grant|redirect, home = `lock % N`, 100 ms
//! polling). Its handoff race, no queue, orphaned locks after a crash and ever-growing redirect chains are gone.
//!
//! # Rules
//!
//! * **Token.** Ownership of a lock is a token; only the current owner may grant. A transfer (`LOCK_REP`
//!   `Granted`) moves the token *and* the owner's FIFO queue of remote waiters to the queue head. The sender
//!   forgets ownership when it sends, so the token is in exactly one place: an owner or one message in flight.
//!   `epoch` increases on every transfer and regeneration; `seq` counts the owner's grants within its epoch;
//!   the fencing token is [`FencingToken::from_epoch`]`(epoch, seq)`. With views, an epoch carries the view
//!   epoch it was opened in in its high bits ([`OwnershipEpoch`]), so a regeneration after a crash is above
//!   every earlier token even if every node that knew the last one crashed.
//! * **Hints** (Li & Hudak 1989, dynamic distributed manager): every node keeps `(probable owner, epoch)`,
//!   initially `(home, 0)`, where `home = `[`home_node`]. A sender of a transfer points its hint at the
//!   recipient; a redirect updates the hint if it is not older. A non-owner answers `LOCK_ACQ` with
//!   `Redirect{hint}` (with the home instead when the hint names the requester or the node itself). The new
//!   owner tells the home (`OWNER_UPDATE`) so that the home's *record* stays fresh and chains stay short.
//! * **In transit.** `LOCK_ACQ` carries the epoch at which the requester believes the addressee owns. A node
//!   with its own request outstanding whose hint is older than that epoch *buffers* the request and serves it
//!   once ownership arrives ("a request that arrives while ownership is in transit must wait"); it never
//!   grants from stale state, which is what kills the C++ lock's double grant. A pending node whose hint is at
//!   least that new owned that epoch and moved on: it redirects (buffering there could close a cycle of
//!   pending nodes waiting for each other). The home buffers only when its record names itself; otherwise it
//!   routes (redirect or round), so a request re-sent to the home never waits behind the home's own.
//! * **Fairness.** The owner queues requests (one entry per node, FIFO); release hands the token to the head.
//!   A local request at an owner whose queue is non-empty first hands the token on, then queues like anyone.
//!   Without contention the token stays with its last owner: a repeated acquire costs no message.
//! * **Withdraw.** A withdrawn request stays pending without wanting; if a grant still arrives the node keeps
//!   the token idle and passes it to its queue head. It never enters for a withdrawn request.
//! * **Recovery round** (home only; on a request while the record is unknown, a `suspect` request after
//!   more than 8·n redirects, or a peer restart while the record names that peer or a round runs): the home
//!   sends `OWNER_QUERY{floor = max_epoch + 1, incarnations}` to every node and collects `OWNER_REPORT`s
//!   (itself included). A node applies the newer incarnations first (so a transfer sent by a dead incarnation
//!   is fenced off from now on), reports `(owned epoch, last transfer sent, max epoch seen before the query)`,
//!   then records `floor`. With every report in: (1) a node owns: record it; (2) else the newest reported
//!   transfer names a recipient still at that incarnation: the token is in flight, record the recipient;
//!   (3) else the token is lost (or never existed): if every reported max epoch is below `floor`, the home
//!   regenerates ownership at epoch `floor` with the round's waiters as its queue; otherwise it runs a new
//!   round above the highest epoch reported. A restart of any peer during a round restarts the round.
//!   A freshly started home has *no* record: the first use of every lock runs a round, so a restarted home
//!   never assumes it owns anything. Reported `max_epoch` is the value *before* the query's floor is recorded.
//! * **Lost queues.** A transfer addressed to a dead incarnation loses the token and the queue riding with
//!   it. So: a node with a wanted request re-sends it to the home when it receives a query (ahead of its
//!   report, same FIFO link, so it is among the round's waiters); a node whose last transfer went to an
//!   incarnation that has since restarted asks the home for a round (`suspect` request, number 0); a node
//!   that re-wants a withdrawn request re-sends it; and the home re-runs the round if the sender that a
//!   case (2) decision relied on restarts (the recipient may have fenced that transfer off).
//! * **Restarts.** `peer_restarted(p)` does *not* drop `p`'s queue entries: entries carry no incarnation, and
//!   one that arrived inside a transferred queue may be the new incarnation's request. A grant to a node that
//!   no longer wants the lock is passed straight on (one extra hop). Request numbers restart with the
//!   incarnation, so a pending node follows any redirect for the lock, not only one echoing its number;
//!   a redirect naming the node itself is waited on only if its own hint is older than the epoch named.
//!
//! # Try-lock
//!
//! A try request ([`Protocol::try_request`]) is a pending request whose `LOCK_ACQ`s carry `attempt`. It is
//! redirected, buffered and held in rounds like any request, but it never waits in an owner's queue: when it
//! reaches an owner (directly, by a redispatch, or merged into the queue a transfer or a regeneration brings),
//! the owner grants it only if the lock is free and the try is the head of the queue, and otherwise answers
//! `LOCK_REP` `Busy` (naming itself if it holds the lock, or the queue head that is served first). A pending
//! node that wants the lock itself answers a try it would buffer `Busy` at once (the try would wait behind
//! it). The requester forgets its request on the first `Busy` and redirects the requests it buffered to its
//! hint. So the owner, which is in one place, decides: of concurrent tries on a free lock exactly one, the
//! first the owner sees, is granted (a copy of a try re-sent after a restart that is granted after another
//! copy was answered busy only leaves the token idle at the requester). One limitation: a try that re-wants
//! a withdrawn request may be served through that request's place in a queue (it then waits like it).
//!
//! # Views
//!
//! Once a view is installed ([`Protocol::members_changed`]) the home of a lock is [`rendezvous_home`] of its
//! name over the view's member ids (before any view: [`home_node`] over the fixed list `0..n`), so a join
//! moves only the names the joiner now wins and an exclusion only the excluded member's names. A home that
//! moves loses its record (the new home runs a round on first use); a pending request is re-sent to the new
//! home. Rounds wait for the members' reports only, so a lock name can be created and a lost owner's token
//! regenerated while a minority is excluded. An excluded member is handled like a restarted one (hints and
//! records naming it are found again, a token handed to it counts as lost) and leaves every queue, buffer
//! and round; a round running when members join starts again so the joiners are asked too. Safe under the
//! membership layer's promise that it excludes a node only after every lease it could have granted ran out,
//! and that a message of an older view never reaches a member of a newer one (two nodes that disagree on
//! the view could both act as a lock's home).
//!
//! # Assumptions
//!
//! Reliable FIFO links per pair while both ends live; messages of a dead incarnation are dropped by the
//! engine once the receiver knows the newer one; a grant addressed to a previous incarnation is recognised by
//! its `to_incarnation`. Round ids mix in the home's incarnation so a report addressed to a previous life of
//! the home cannot be counted in a round of the new one.
//!
//! # Invariants
//!
//! At most one live token per lock (owner or in-flight grant that will be accepted); epochs of a lineage
//! strictly increase and a regenerated epoch exceeds every epoch any live node has seen, so fencing tokens
//! strictly increase in grant order. An owner's queue never contains itself and holds one entry per node.
//!
//! # Limitation
//!
//! Fencing tokens can repeat across crashes when *every* node that knew an epoch dies before a round sees it
//! (for example the sender of a transfer, then its recipient, one after the other; the home skips
//! `OWNER_UPDATE` when it is the recipient): a regeneration may then reuse that epoch. Mutual exclusion is not
//! affected (the old holder is dead); closing this needs the epoch on a second live node before first use.
//!
//! Must never: grant without owning, grant from a pending node, enter after a withdraw, panic on a message.

use super::{
    Algorithm, CoreError, FencingToken, Incarnation, LamportTs, LockName, LockView, NodeId, Output,
    PeerChange, Peers, Protocol, ProtocolMessage, QueueEntry, home_node,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// A pending request that has followed more than this many redirects per node asks the home for a recovery
/// round (`suspect`). The rounds only back up the other loss triggers, and under heavy contention a healthy
/// chase after a moving token is long: with 2 per node, rounds were most of the traffic (8.6 messages per
/// entry at N = 5, 78 at N = 16 in the saturated simulation); with 8, 4.9 and 35, and the same outcomes in
/// every simulated crash run.
const SUSPECT_AFTER_HOPS_PER_NODE: usize = 8;

/// An ownership epoch of one lock. Every transfer of the token opens the next epoch and a regeneration
/// opens one above every epoch a live node has seen, so of two claims about who owns a lock the one with the
/// higher epoch is newer, and the fencing tokens ([`FencingToken::from_epoch`]) of successive grants rise.
/// Epoch 0 is the initial hint's: nobody has owned the lock yet.
///
/// Layout: the view epoch the ownership epoch was opened in, above a 28-bit counter ([`VIEW_SHIFT`]). An
/// epoch opened in view `v` is at least `v << 28 | 1` (`OwnershipEpoch::next_in`), so a token regenerated
/// after a crash, which always happens in a newer view than any grant the crashed node could have made (a
/// crash is a view change), is above every token granted before, even when every node that knew the old
/// epoch crashed (the amnesia case a fixed cluster cannot close). A view that opened 2²⁷ epochs of one lock
/// asks for a new view ([`crate::algo::Protocol::wants_view_bump`]) long before its counter could reach the
/// next view's range. In a cluster without views (view 0) the counter simply counts.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OwnershipEpoch(u64);

/// The bits of an [`OwnershipEpoch`] below its view epoch.
pub const VIEW_SHIFT: u32 = 28;

/// An ownership epoch counter at or above this within its view makes the core ask for a new view.
const BUMP_AT: u64 = 1 << (VIEW_SHIFT - 1);

impl OwnershipEpoch {
    /// The epoch before any ownership: what a fresh node's hint and a request sent to the home claim.
    pub(crate) const ZERO: OwnershipEpoch = OwnershipEpoch(0);

    /// The epoch numbered `epoch`.
    pub const fn new(epoch: u64) -> Self {
        OwnershipEpoch(epoch)
    }

    /// The raw number (the high 48 bits of the epoch's fencing tokens).
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The view epoch this ownership epoch was opened in (0 in a cluster without views).
    pub const fn view(self) -> u64 {
        self.0 >> VIEW_SHIFT
    }

    /// The epoch a transfer, a regeneration (or an owner whose grant counter would wrap) opens in view
    /// `view`: the next number, and at least the first of `view`'s range.
    fn next_in(self, view: u64) -> Self {
        OwnershipEpoch((self.0 + 1).max((view << VIEW_SHIFT) | 1))
    }
}

impl std::fmt::Display for OwnershipEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A remote node waiting for the lock in an owner's queue (or a pending node's buffer, or a round): the node
/// and the number of its request, which the grant echoes. One entry per node.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Waiter {
    /// The waiting node.
    pub node: NodeId,
    /// Its request number for the lock (the newest one, if it asked again).
    pub seq: u64,
    /// A try request: granted only at the head of a free owner's queue, else answered `Busy`; never
    /// travels in a transferred queue.
    #[serde(default)]
    pub attempt: bool,
}

/// A transfer of the token a node sent: to whom, addressed to which of its incarnations, opening which epoch.
/// Kept for recovery rounds: a token in flight to a live incarnation is not lost.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Transfer {
    /// The recipient.
    pub to: NodeId,
    /// The recipient's incarnation the transfer was addressed to; another incarnation drops it.
    pub incarnation: Incarnation,
    /// The epoch the transfer opened.
    pub epoch: OwnershipEpoch,
}

/// "`owner` owned the lock at `epoch`": a node's probable-owner hint, or the home's record.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct OwnerClaim {
    owner: NodeId,
    epoch: OwnershipEpoch,
}

/// The answer to a `LOCK_ACQ`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RepOutcome {
    /// Ownership moves to the addressee, which takes over the queue.
    Granted {
        /// The epoch the transfer opens.
        epoch: OwnershipEpoch,
        /// The remaining waiters, oldest first.
        queue: Vec<Waiter>,
        /// The incarnation the grant is for; another incarnation drops it.
        to_incarnation: Incarnation,
    },
    /// A try request cannot be granted without waiting: the lock is held (or another request comes first).
    /// The requester forgets the request.
    Busy {
        /// The holder, or the node served before the try; `None` when not known (a pending node that wants
        /// the lock itself).
        holder: Option<NodeId>,
    },
    /// The sender does not own the lock; try `owner`.
    Redirect {
        /// The node the sender believes owns the lock (the home when it knows no better).
        owner: NodeId,
        /// The epoch at which `owner` was known to own (freshness of the hint).
        epoch: OwnershipEpoch,
    },
}

/// Probable-owner messages (the C++ DSM lock's names, plus the recovery pair).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PoMsg {
    /// `LOCK_ACQ`: `requester` wants `lock`.
    Acq {
        /// The lock; every message is about one lock, whose home is [`home_node`] of its name.
        lock: LockName,
        /// The requesting node (always the sender).
        requester: NodeId,
        /// The requester's request number, echoed in the reply.
        seq: u64,
        /// The epoch at which the requester believes the addressee owns the lock. A pending addressee whose
        /// own hint is at least this new has owned that epoch and moved on, so it redirects instead of
        /// buffering (buffering is only for ownership that may still be travelling to it).
        epoch: OwnershipEpoch,
        /// The requester has been redirected too often: the home should run a recovery round.
        suspect: bool,
        /// A try request: never queued behind another request ([`RepOutcome::Busy`] instead).
        #[serde(default)]
        attempt: bool,
    },
    /// `LOCK_REP`: grant (ownership transfer) or redirect.
    Rep {
        /// The lock (see [`PoMsg::Acq::lock`]).
        lock: LockName,
        /// The [`PoMsg::Acq::seq`] of the request answered.
        seq: u64,
        /// Grant or redirect.
        outcome: RepOutcome,
    },
    /// `OWNER_UPDATE`: the sender became the owner at `epoch` (new owner → home).
    OwnerUpdate {
        /// The lock (see [`PoMsg::Acq::lock`]).
        lock: LockName,
        /// The node that became the owner (always the sender).
        owner: NodeId,
        /// The epoch at which it became the owner.
        epoch: OwnershipEpoch,
    },
    /// `OWNER_QUERY`: the home asks where the token is (recovery round).
    Query {
        /// The lock (see [`PoMsg::Acq::lock`]).
        lock: LockName,
        /// The round, echoed in the report.
        round: u64,
        /// The epoch a regeneration would use; every receiver records it as seen.
        floor: OwnershipEpoch,
        /// The incarnations the home knows; newer ones fence off dead senders at the receiver.
        incarnations: Vec<(NodeId, Incarnation)>,
    },
    /// `OWNER_REPORT`: a node's answer to a query.
    Report {
        /// The lock (see [`PoMsg::Acq::lock`]).
        lock: LockName,
        /// The [`PoMsg::Query::round`] answered; a report for another round is ignored.
        round: u64,
        /// The epoch of the token this node owns, if it owns it.
        owned: Option<OwnershipEpoch>,
        /// The last transfer this node sent.
        last_out: Option<Transfer>,
        /// The highest epoch this node had seen before the query.
        max_epoch: OwnershipEpoch,
    },
    /// `EPOCH_SYNC`: sent to a peer that restarted: the highest epoch the sender has seen for any lock. Keeps
    /// the knowledge that an epoch was used alive when the node that used it crashes next, so a regeneration
    /// never reuses an epoch (and a fencing token never repeats) across one crash at a time.
    EpochSync {
        /// The sender's epoch clock.
        epoch: OwnershipEpoch,
    },
}

impl ProtocolMessage for PoMsg {
    fn kind(&self) -> &'static str {
        match self {
            PoMsg::Acq { .. } => "LOCK_ACQ",
            PoMsg::Rep { .. } => "LOCK_REP",
            PoMsg::OwnerUpdate { .. } => "OWNER_UPDATE",
            PoMsg::Query { .. } => "OWNER_QUERY",
            PoMsg::Report { .. } => "OWNER_REPORT",
            PoMsg::EpochSync { .. } => "EPOCH_SYNC",
        }
    }

    fn lock(&self) -> &str {
        match self {
            PoMsg::Acq { lock, .. }
            | PoMsg::Rep { lock, .. }
            | PoMsg::OwnerUpdate { lock, .. }
            | PoMsg::Query { lock, .. }
            | PoMsg::Report { lock, .. } => lock,
            PoMsg::EpochSync { .. } => "",
        }
    }

    fn timestamp(&self) -> Option<LamportTs> {
        None
    }

    fn is_request(&self) -> bool {
        matches!(self, PoMsg::Acq { .. })
    }

    fn is_answer(&self) -> bool {
        matches!(self, PoMsg::Rep { .. })
    }

    fn is_redirect(&self) -> bool {
        matches!(self, PoMsg::Rep { outcome: RepOutcome::Redirect { .. }, .. })
    }

    /// A grant moves ownership and with it the owner's queue: its waiters now wait at the receiver.
    fn handed_over(&self) -> Vec<NodeId> {
        match self {
            PoMsg::Rep { outcome: RepOutcome::Granted { queue, .. }, .. } => {
                queue.iter().map(|w| w.node).collect()
            }
            _ => Vec::new(),
        }
    }

    fn flow_detail(&self) -> Option<String> {
        match self {
            PoMsg::Rep { outcome: RepOutcome::Redirect { owner, .. }, .. } => {
                Some(format!("redirect to N{}", owner.get()))
            }
            PoMsg::Rep { outcome: RepOutcome::Busy { holder }, .. } => Some(match holder {
                Some(h) => format!("busy, held by N{}", h.get()),
                None => "busy".to_owned(),
            }),
            PoMsg::Acq { attempt: true, .. } => Some("try".to_owned()),
            PoMsg::Rep { outcome: RepOutcome::Granted { epoch, queue, .. }, .. } => {
                Some(if queue.is_empty() {
                    format!("grant epoch={epoch}")
                } else {
                    format!("grant epoch={epoch} queue={}", queue.len())
                })
            }
            PoMsg::OwnerUpdate { owner, epoch, .. } => Some(format!("owner=N{} epoch={epoch}", owner.get())),
            _ => None,
        }
    }
}

/// The token, while this node owns it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Owned {
    /// The epoch this node owns the token in.
    epoch: OwnershipEpoch,
    /// Grants made in this epoch (0 = none yet).
    seq: u16,
    /// Remote waiters, oldest first; one entry per node, never this node.
    queue: VecDeque<Waiter>,
    /// Whether this node is in the critical section.
    held: bool,
}

/// This node's outstanding request (it does not own the lock).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Pending {
    seq: u64,
    /// False once withdrawn: a grant that still comes is passed on, never entered.
    wants: bool,
    /// Requests that reached this node while it waits for ownership; served when it arrives.
    buffered: VecDeque<Waiter>,
    /// Redirects followed since the last send to the home.
    hops: u32,
    /// A try request ([`Protocol::try_request`]): its `LOCK_ACQ`s carry `attempt`.
    attempt: bool,
}

/// A recovery round at the home.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Round {
    id: u64,
    /// The epoch a regeneration by this round would open (above every epoch the home had seen).
    floor: OwnershipEpoch,
    reports: BTreeMap<NodeId, Report>,
    /// Requests held until the round decides (this node's own request included).
    waiters: VecDeque<Waiter>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
/// One node's `OWNER_REPORT`, as the round keeps it (the fields are the message's).
struct Report {
    owned: Option<OwnershipEpoch>,
    last_out: Option<Transfer>,
    max_epoch: OwnershipEpoch,
}

/// Everything one node knows about one lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LockState {
    /// The probable owner and the epoch at which it was known to own.
    hint: OwnerClaim,
    owned: Option<Owned>,
    pending: Option<Pending>,
    /// The last transfer this node sent (kept for recovery rounds).
    last_out: Option<Transfer>,
    /// The highest epoch seen, sent, owned or announced as a floor.
    max_epoch: OwnershipEpoch,
    /// Home only: the freshest known owner; `None` until a round or an update says.
    record: Option<OwnerClaim>,
    /// Home only: the sender of the in-flight transfer a round's case (2) relied on. If it restarts before the
    /// record is confirmed, the recipient may have fenced that transfer off: the round must run again.
    record_via: Option<NodeId>,
    /// Home only: the recovery round in progress.
    round: Option<Round>,
    /// Rounds started by this node for this lock (part of the round id).
    rounds: u32,
    /// Request numbers used by this node for this lock.
    req_seq: u64,
    /// The newest token this node entered with.
    last_token: Option<FencingToken>,
}

/// What a handler needs besides the lock's state.
struct Ctx<'a> {
    /// Epoch knowledge received in `EPOCH_SYNC` (from before a crash); reports and round floors include it.
    synced: OwnershipEpoch,
    me: NodeId,
    n: usize,
    home: NodeId,
    lock: &'a str,
    peers: &'a Peers,
}

impl Ctx<'_> {
    /// The view epoch this node is in (0 without views).
    fn view(&self) -> u64 {
        self.peers.epoch()
    }

    fn send(&self, out: &mut Vec<Output<PoMsg>>, to: NodeId, msg: PoMsg) {
        out.push(Output::Send { to, msg });
    }

    fn is_home(&self) -> bool {
        self.me == self.home
    }

    /// What a node that knows no owner claims when it asks: the home, at no epoch.
    fn home_claim(&self) -> OwnerClaim {
        OwnerClaim { owner: self.home, epoch: OwnershipEpoch::ZERO }
    }
}

/// Adds a waiter, one entry per node: a newer request of a queued node keeps the old position (and says
/// whether it is a try).
fn add_waiter(queue: &mut VecDeque<Waiter>, waiter: Waiter) {
    match queue.iter_mut().find(|w| w.node == waiter.node) {
        Some(entry) if waiter.seq >= entry.seq => *entry = waiter,
        Some(_) => {}
        None => queue.push_back(waiter),
    }
}

/// Probable-owner locking, seen from one node, for every lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbableOwner {
    me: NodeId,
    n: usize,
    /// The members of the last view installed, in id order; `None` while the cluster is the fixed list
    /// `0..n`. Homes are [`home_node`] over the fixed list and [`rendezvous_home`] over a view.
    view: Option<Vec<NodeId>>,
    locks: BTreeMap<LockName, LockState>,
    /// The highest epoch learnt from peers' `EPOCH_SYNC` after this node (re)started: epochs used before its
    /// crash. Reports and round floors include it, so a regeneration never reuses an epoch (fencing tokens
    /// never repeat across one crash at a time). Kept apart from the per-lock epochs so that rounds for
    /// different locks do not push each other's floors.
    epoch_clock: OwnershipEpoch,
    /// The highest epoch of any lock's state (kept so [`Protocol::clock`] is O(1)).
    max_seen: OwnershipEpoch,
}

impl ProbableOwner {
    /// The home of `lock` in the current member set.
    fn home(&self, lock: &str) -> NodeId {
        match &self.view {
            None => home_node(lock, self.n),
            Some(members) => rendezvous_home(lock, members).unwrap_or(self.me),
        }
    }

    /// The number of members.
    fn members(&self) -> usize {
        self.view.as_ref().map_or(self.n, Vec::len)
    }

    /// Runs `f` on `lock`'s state (created on first use).
    fn with_lock<R>(
        &mut self,
        lock: &str,
        peers: &Peers,
        f: impl FnOnce(&mut LockState, &Ctx<'_>) -> R,
    ) -> R {
        let cx = Ctx {
            synced: self.epoch_clock,
            me: self.me,
            n: self.members(),
            home: self.home(lock),
            lock,
            peers,
        };
        let st = self.locks.entry(lock.to_owned()).or_insert_with(|| LockState::new(cx.home));
        let r = f(st, &cx);
        self.max_seen = self.max_seen.max(st.max_epoch);
        r
    }

    fn unexpected(from: NodeId, kind: &'static str, reason: &'static str) -> CoreError {
        CoreError::Unexpected { from, kind, reason }
    }
}

impl Protocol for ProbableOwner {
    type Msg = PoMsg;

    const ALGORITHM: Algorithm = Algorithm::ProbableOwner;

    fn fresh(me: NodeId, n: usize) -> Self {
        ProbableOwner {
            me,
            n: n.max(1),
            view: None,
            locks: BTreeMap::new(),
            epoch_clock: OwnershipEpoch::ZERO,
            max_seen: OwnershipEpoch::ZERO,
        }
    }

    fn request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<PoMsg>>) {
        self.with_lock(lock, peers, |st, cx| st.request(cx, out, false));
    }

    fn try_request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<PoMsg>>) {
        self.with_lock(lock, peers, |st, cx| st.request(cx, out, true));
    }

    fn release(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<PoMsg>>) {
        self.with_lock(lock, peers, |st, cx| st.release(cx, out));
    }

    fn withdraw(&mut self, lock: &str, peers: &Peers, _out: &mut Vec<Output<PoMsg>>) {
        // The request stays where it is; a grant that still comes is passed on (see `on_granted`).
        self.with_lock(lock, peers, |st, _| {
            if let Some(p) = &mut st.pending {
                p.wants = false;
            }
        });
    }

    fn on_message(
        &mut self,
        from: NodeId,
        msg: PoMsg,
        peers: &mut Peers,
        out: &mut Vec<Output<PoMsg>>,
    ) -> Result<(), CoreError> {
        let kind = msg.kind();
        if from == self.me || !peers.contains(from) {
            return Err(CoreError::UnknownPeer(from));
        }
        if let PoMsg::EpochSync { epoch } = msg {
            self.epoch_clock = self.epoch_clock.max(epoch);
            return Ok(());
        }
        let home = self.home(msg.lock());
        match msg {
            PoMsg::EpochSync { .. } => Ok(()),
            PoMsg::Acq { lock, requester, seq, epoch, suspect, attempt } => {
                if requester != from {
                    return Err(Self::unexpected(from, kind, "requester is not the sender"));
                }
                let waiter = Waiter { node: requester, seq, attempt };
                self.with_lock(&lock, peers, |st, cx| st.on_acq(cx, out, waiter, epoch, suspect));
                Ok(())
            }
            PoMsg::Rep { lock, seq, outcome } => match outcome {
                RepOutcome::Busy { holder } => {
                    if holder.is_some_and(|h| !peers.contains(h)) {
                        return Err(Self::unexpected(from, kind, "busy names a node outside the cluster"));
                    }
                    self.with_lock(&lock, peers, |st, cx| st.on_busy(cx, out, seq, holder));
                    Ok(())
                }
                RepOutcome::Granted { epoch, queue, to_incarnation } => {
                    self.with_lock(&lock, peers, |st, cx| {
                        st.on_granted(cx, out, from, epoch, queue, to_incarnation)
                    })
                }
                RepOutcome::Redirect { owner, epoch } => {
                    if !peers.contains(owner) && self.view.is_some() {
                        // Sent in an older view to a node this view excluded (a newer view's messages are
                        // held back until it is installed, so nothing else names a non-member). The
                        // exclusion already re-sent our request to the home (`peer_restarted`): ignore it.
                        return Ok(());
                    }
                    if !peers.contains(owner) {
                        return Err(Self::unexpected(from, kind, "redirect to a node outside the cluster"));
                    }
                    self.with_lock(&lock, peers, |st, cx| st.on_redirect(cx, out, owner, epoch));
                    Ok(())
                }
            },
            PoMsg::OwnerUpdate { lock, owner, epoch } => {
                if home != self.me || owner != from {
                    return Err(Self::unexpected(from, kind, "update not from the owner to the home"));
                }
                self.with_lock(&lock, peers, |st, cx| {
                    st.learn(cx, owner, epoch);
                    if st.record.is_none() && st.round.is_none() {
                        st.record = Some(OwnerClaim { owner, epoch });
                    }
                });
                Ok(())
            }
            PoMsg::Query { lock, round, floor, incarnations } => {
                if home != from {
                    return Err(Self::unexpected(from, kind, "query not from the lock's home"));
                }
                // Fence first: once we report, a transfer sent by a dead incarnation must not be accepted.
                let mut restarted = Vec::new();
                for (p, inc) in incarnations {
                    if p != self.me && peers.observe(p, inc) == PeerChange::Restarted {
                        restarted.push(p);
                    }
                }
                for p in restarted {
                    self.peer_restarted(p, peers, out);
                }
                self.with_lock(&lock, peers, |st, cx| st.on_query(cx, out, round, floor));
                Ok(())
            }
            PoMsg::Report { lock, round, owned, last_out, max_epoch } => {
                if home != self.me {
                    return Err(Self::unexpected(from, kind, "report to a node that is not the home"));
                }
                let report = Report { owned, last_out, max_epoch };
                self.with_lock(&lock, peers, |st, cx| st.on_report(cx, out, from, round, report));
                Ok(())
            }
        }
    }

    /// Handshake clocks are the node's Lamport clocks, unrelated to epochs: epoch knowledge travels in
    /// `EPOCH_SYNC` instead (so epochs stay small and tokens never overflow).
    fn observe_clock(&mut self, _clock: LamportTs) {}

    fn peer_restarted(&mut self, peer: NodeId, peers: &Peers, out: &mut Vec<Output<PoMsg>>) {
        let (me, n, synced) = (self.me, self.members(), self.epoch_clock);
        // First, before anything it may act on: the restarted peer forgot which epochs were used.
        let known = self.locks.values().map(|st| st.max_epoch).fold(synced.max(self.max_seen), Ord::max);
        if known > OwnershipEpoch::ZERO && peer != me {
            out.push(Output::Send { to: peer, msg: PoMsg::EpochSync { epoch: known } });
        }
        let homes: Vec<NodeId> = self.locks.keys().map(|lock| self.home(lock)).collect();
        for ((lock, st), home) in self.locks.iter_mut().zip(homes) {
            let cx = Ctx { synced, me, n, home, lock, peers };
            st.peer_restarted(&cx, out, peer);
        }
    }

    fn members_changed(
        &mut self,
        removed: &[NodeId],
        added: &[(NodeId, Incarnation)],
        peers: &Peers,
        out: &mut Vec<Output<PoMsg>>,
    ) {
        let old_homes: Vec<NodeId> = self.locks.keys().map(|lock| self.home(lock)).collect();
        self.view = Some(peers.all().collect());
        let (me, n, synced) = (self.me, self.members(), self.epoch_clock);
        let known = self.locks.values().map(|st| st.max_epoch).fold(synced.max(self.max_seen), Ord::max);
        for &(joiner, _) in added {
            // Like a restarted peer, a joiner must never regenerate an epoch already used.
            if known > OwnershipEpoch::ZERO && joiner != me {
                out.push(Output::Send { to: joiner, msg: PoMsg::EpochSync { epoch: known } });
            }
        }
        let homes: Vec<NodeId> = self.locks.keys().map(|lock| self.home(lock)).collect();
        for (((lock, st), home), old_home) in self.locks.iter_mut().zip(homes).zip(old_homes) {
            let cx = Ctx { synced, me, n, home, lock, peers };
            st.members_changed(&cx, out, removed, !added.is_empty(), old_home);
        }
    }

    /// Probable-owner messages carry no Lamport timestamp; the highest epoch known stands in for a clock.
    fn clock(&self) -> LamportTs {
        LamportTs::new(self.max_seen.max(self.epoch_clock).get())
    }

    fn view(&self, lock: &str) -> LockView {
        let Some(st) = self.locks.get(lock) else {
            return LockView::default();
        };
        let mut queue: Vec<QueueEntry> = Vec::new();
        if let Some(o) = &st.owned {
            queue.extend(o.queue.iter().map(|w| QueueEntry { node: w.node, ts: None }));
        }
        if st.pending.as_ref().is_some_and(|p| p.wants) {
            queue.push(QueueEntry { node: self.me, ts: None });
        }
        LockView {
            held_here: st.owned.as_ref().is_some_and(|o| o.held),
            // The initial hint `(home, 0)` is where a request goes first, not knowledge of an owner.
            holder: match st.hint {
                _ if st.owned.is_some() => Some(self.me),
                OwnerClaim { owner, epoch } if epoch > OwnershipEpoch::ZERO && owner != self.me => {
                    Some(owner)
                }
                _ => None,
            },
            last_token: st.last_token,
            queue,
            own_request: None,
        }
    }

    fn wants_view_bump(&self, peers: &Peers) -> bool {
        let view = peers.epoch();
        if view == 0 {
            return false;
        }
        let near_end = |e: OwnershipEpoch| e.view() == view && (e.get() & ((1 << VIEW_SHIFT) - 1)) >= BUMP_AT;
        near_end(self.max_seen) || self.locks.values().any(|st| near_end(st.max_epoch))
    }

    fn needs_peer(&self, lock: &str, peer: NodeId) -> bool {
        let home = self.home(lock);
        match self.locks.get(lock) {
            None => peer == home,
            Some(st) if st.owned.as_ref().is_some_and(|o| o.queue.is_empty()) => false,
            Some(st) => peer == home || peer == st.hint.owner,
        }
    }
}

/// The home of `lock` among `members`: rendezvous (highest-random-weight) hashing, Thaler & Ravishankar
/// 1996. Each member scores [`hrw_score`]`(lock, id)`; the highest score wins (ties, which need a 64-bit
/// collision, go to the higher id). A member joining takes only the names it now scores highest on; a member
/// leaving gives away only its own names, each to its runner-up. `None` for an empty member list.
pub fn rendezvous_home(lock: &str, members: &[NodeId]) -> Option<NodeId> {
    members.iter().copied().max_by_key(|&id| (hrw_score(lock, id), id))
}

/// The rendezvous score of member `id` for `lock`: FNV-1a 64 (offset basis 0xcbf29ce484222325, prime
/// 0x100000001b3) over the lock name's UTF-8 bytes followed by the id's two bytes, big-endian, then
/// MurmurHash3's 64-bit finaliser (`fmix64`). Stable on every node, build and platform.
///
/// The finaliser is needed: plain FNV-1a differs between ids only through the last two byte steps, which
/// barely mix, and the member with the largest id won half of 2,000 names against five members.
pub fn hrw_score(lock: &str, id: NodeId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in lock.as_bytes().iter().chain(id.get().to_be_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

mod owner;
mod recovery;
#[cfg(test)]
mod tests;
