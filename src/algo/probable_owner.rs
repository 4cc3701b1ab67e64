//! Probable-owner locking: a migrating ownership token, Li–Hudak probable-owner hints, a FIFO queue at the
//! owner, and a recovery round at each lock's home node.
//!
//! The design fixes seed 003 (a C++ DSM: `LOCK_ACQ` / `LOCK_REP` grant|redirect, home = `lock % N`, 100 ms
//! polling). Its handoff race, no queue, orphaned locks after a crash and ever-growing redirect chains are gone.
//!
//! # Rules
//!
//! * **Token.** Ownership of a lock is a token; only the current owner may grant. A transfer (`LOCK_REP`
//!   `Granted`) moves the token *and* the owner's FIFO queue of remote waiters to the queue head. The sender
//!   forgets ownership when it sends, so the token is in exactly one place: an owner or one message in flight.
//!   `epoch` increases on every transfer and regeneration; `seq` counts the owner's grants within its epoch;
//!   the fencing token is [`FencingToken::from_epoch`]`(epoch, seq)`.
//! * **Hints** (Li & Hudak 1989, dynamic distributed manager): every node keeps `(probable owner, epoch)`,
//!   initially `(home, 0)`, where `home = `[`home_node`]. A sender of a transfer points its hint at the
//!   recipient; a redirect updates the hint if it is not older. A non-owner answers `LOCK_ACQ` with
//!   `Redirect{hint}` (with the home instead when the hint names the requester or the node itself). The new
//!   owner tells the home (`OWNER_UPDATE`) so that the home's *record* stays fresh and chains stay short.
//! * **In transit.** `LOCK_ACQ` carries the epoch at which the requester believes the addressee owns. A node
//!   with its own request outstanding whose hint is older than that epoch *buffers* the request and serves it
//!   once ownership arrives ("a request that arrives while ownership is in transit must wait"); it never
//!   grants from stale state, which is what kills the seed's double grant. A pending node whose hint is at
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

/// A remote waiter: the requesting node and its request's sequence number.
type Waiter = (NodeId, u64);

/// The answer to a `LOCK_ACQ`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RepOutcome {
    /// Ownership moves to the addressee, which takes over the queue.
    Granted {
        /// The new ownership epoch.
        epoch: u64,
        /// The remaining waiters, oldest first.
        queue: Vec<(NodeId, u64)>,
        /// The incarnation the grant is for; another incarnation drops it.
        to_incarnation: Incarnation,
    },
    /// The sender does not own the lock; try `owner`.
    Redirect {
        /// The probable owner.
        owner: NodeId,
        /// The epoch at which `owner` was known to own (freshness of the hint).
        epoch: u64,
    },
}

/// Probable-owner messages (the seed's names, plus the recovery pair).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PoMsg {
    /// `LOCK_ACQ`: `requester` wants `lock`.
    Acq {
        /// The lock.
        lock: LockName,
        /// The requesting node (always the sender).
        requester: NodeId,
        /// The requester's request number, echoed in the reply.
        seq: u64,
        /// The epoch at which the requester believes the addressee owns the lock. A pending addressee whose
        /// own hint is at least this new has owned that epoch and moved on, so it redirects instead of
        /// buffering (buffering is only for ownership that may still be travelling to it).
        epoch: u64,
        /// The requester has been redirected too often: the home should run a recovery round.
        suspect: bool,
    },
    /// `LOCK_REP`: grant (ownership transfer) or redirect.
    Rep {
        /// The lock.
        lock: LockName,
        /// The request answered.
        seq: u64,
        /// Grant or redirect.
        outcome: RepOutcome,
    },
    /// `OWNER_UPDATE`: the sender became the owner at `epoch` (new owner → home).
    OwnerUpdate {
        /// The lock.
        lock: LockName,
        /// The new owner.
        owner: NodeId,
        /// Its epoch.
        epoch: u64,
    },
    /// `OWNER_QUERY`: the home asks where the token is (recovery round).
    Query {
        /// The lock.
        lock: LockName,
        /// The round, echoed in the report.
        round: u64,
        /// The epoch a regeneration would use; every receiver records it as seen.
        floor: u64,
        /// The incarnations the home knows; newer ones fence off dead senders at the receiver.
        incarnations: Vec<(NodeId, Incarnation)>,
    },
    /// `OWNER_REPORT`: a node's answer to a query.
    Report {
        /// The lock.
        lock: LockName,
        /// The round answered.
        round: u64,
        /// The epoch of the token this node owns, if it owns it.
        owned: Option<u64>,
        /// The last transfer this node sent: recipient, its incarnation, epoch.
        last_out: Option<(NodeId, Incarnation, u64)>,
        /// The highest epoch this node had seen before the query.
        max_epoch: u64,
    },
    /// `EPOCH_SYNC`: sent to a peer that restarted: the highest epoch the sender has seen for any lock. Keeps
    /// the knowledge that an epoch was used alive when the node that used it crashes next, so a regeneration
    /// never reuses an epoch (and a fencing token never repeats) across one crash at a time.
    EpochSync {
        /// The sender's epoch clock.
        epoch: u64,
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
}

/// The token, while this node owns it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Owned {
    epoch: u64,
    /// Grants made in this epoch (0 = none yet).
    seq: u32,
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
}

/// A recovery round at the home.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Round {
    id: u64,
    floor: u64,
    reports: BTreeMap<NodeId, Report>,
    /// Requests held until the round decides (this node's own request included).
    waiters: VecDeque<Waiter>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
struct Report {
    owned: Option<u64>,
    last_out: Option<(NodeId, Incarnation, u64)>,
    max_epoch: u64,
}

/// Everything one node knows about one lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LockState {
    /// Probable owner and the epoch at which it was known to own.
    hint: (NodeId, u64),
    owned: Option<Owned>,
    pending: Option<Pending>,
    /// The last transfer this node sent (kept for recovery rounds).
    last_out: Option<(NodeId, Incarnation, u64)>,
    /// The highest epoch seen, sent, owned or announced as a floor.
    max_epoch: u64,
    /// Home only: the freshest known owner; `None` until a round or an update says.
    record: Option<(NodeId, u64)>,
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
    synced: u64,
    me: NodeId,
    n: usize,
    home: NodeId,
    lock: &'a str,
    peers: &'a Peers,
}

impl Ctx<'_> {
    fn send(&self, out: &mut Vec<Output<PoMsg>>, to: NodeId, msg: PoMsg) {
        out.push(Output::Send { to, msg });
    }

    fn is_home(&self) -> bool {
        self.me == self.home
    }
}

/// Adds a waiter, one entry per node: a newer request of a queued node keeps the old position.
fn add_waiter(queue: &mut VecDeque<Waiter>, node: NodeId, seq: u64) {
    match queue.iter_mut().find(|(n, _)| *n == node) {
        Some(entry) => entry.1 = entry.1.max(seq),
        None => queue.push_back((node, seq)),
    }
}

impl LockState {
    fn new(home: NodeId) -> Self {
        LockState {
            hint: (home, 0),
            owned: None,
            pending: None,
            last_out: None,
            max_epoch: 0,
            record: None,
            record_via: None,
            round: None,
            rounds: 0,
            req_seq: 0,
            last_token: None,
        }
    }

    /// Takes in a claim "`owner` owned at `epoch`" if it is not older than what is known.
    fn learn(&mut self, cx: &Ctx<'_>, owner: NodeId, epoch: u64) {
        self.max_epoch = self.max_epoch.max(epoch);
        // Only ownership itself may make a node point at itself.
        if owner == cx.me && self.owned.is_none() {
            return;
        }
        if epoch >= self.hint.1 {
            self.hint = (owner, epoch);
        }
        if let Some(rec) = &mut self.record
            && epoch >= rec.1
        {
            if *rec != (owner, epoch) {
                self.record_via = None;
            }
            *rec = (owner, epoch);
        }
    }

    fn request(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>) {
        if let Some(o) = &self.owned {
            if o.held {
                return; // The engine never requests while entered.
            }
            if o.queue.is_empty() {
                self.enter(cx, out);
                return;
            }
            // FIFO fairness: remote waiters came first.
            self.transfer(cx, out);
        }
        if let Some(p) = &mut self.pending {
            // A withdrawn request may still be out there, or may have been lost with a dead node's queue while
            // nobody wanted it: want it again and ask again (a duplicate is harmless).
            p.wants = true;
            p.hops = 0;
            let (target, claim) = self.hint;
            self.send_own_acq(cx, out, target, claim, false);
            return;
        }
        self.req_seq += 1;
        self.pending = Some(Pending { seq: self.req_seq, wants: true, buffered: VecDeque::new(), hops: 0 });
        let (target, claim) = self.hint;
        self.send_own_acq(cx, out, target, claim, false);
    }

    /// Grants to this node itself (it owns the token and it is free).
    fn enter(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>) {
        let Some(o) = &mut self.owned else { return };
        if o.seq == u32::MAX {
            // The grant counter would wrap: the owner opens a new epoch of its own (only it can).
            o.epoch += 1;
            o.seq = 0;
        }
        o.seq += 1;
        o.held = true;
        let token = FencingToken::from_epoch(o.epoch, o.seq);
        self.max_epoch = self.max_epoch.max(o.epoch);
        self.hint = (cx.me, o.epoch);
        self.last_token = Some(token);
        out.push(Output::Entered { lock: cx.lock.to_owned(), token });
    }

    /// Sends this node's pending request towards `target`, believed to own at epoch `claim` (the home when
    /// `target` is this node).
    fn send_own_acq(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        target: NodeId,
        claim: u64,
        suspect: bool,
    ) {
        let Some(p) = &self.pending else { return };
        let seq = p.seq;
        let (target, epoch) = if target == cx.me || suspect { (cx.home, 0) } else { (target, claim) };
        if target == cx.me {
            self.at_home(cx, out, cx.me, seq, suspect);
        } else {
            let msg = PoMsg::Acq { lock: cx.lock.to_owned(), requester: cx.me, seq, epoch, suspect };
            cx.send(out, target, msg);
        }
    }

    /// The home's answer to a request it cannot serve as owner (`requester` may be the home itself).
    fn at_home(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        requester: NodeId,
        seq: u64,
        suspect: bool,
    ) {
        if let Some(r) = &mut self.round {
            add_waiter(&mut r.waiters, requester, seq);
            return;
        }
        match self.record {
            Some((owner, epoch)) if !suspect && owner != requester && owner != cx.me => {
                if requester == cx.me {
                    self.learn(cx, owner, epoch);
                    let msg = PoMsg::Acq { lock: cx.lock.to_owned(), requester, seq, epoch, suspect: false };
                    cx.send(out, owner, msg);
                } else {
                    let outcome = RepOutcome::Redirect { owner, epoch };
                    cx.send(out, requester, PoMsg::Rep { lock: cx.lock.to_owned(), seq, outcome });
                }
            }
            // Unknown, suspected or pointing back at the requester or at this (non-owning) home: find out.
            _ => self.start_round(cx, out, VecDeque::from([(requester, seq)])),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_acq(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        requester: NodeId,
        seq: u64,
        claim: u64,
        suspect: bool,
    ) {
        if let Some(o) = &mut self.owned {
            add_waiter(&mut o.queue, requester, seq);
            if !o.held {
                self.transfer(cx, out);
            }
            return;
        }
        if cx.is_home() {
            // The home buffers only when its record says the token is on its way to it. Otherwise it routes:
            // a request re-sent to the home after a restart must not wait behind the home's own request,
            // which may itself be buffered at that requester (a wait-for cycle nobody would break).
            match &mut self.pending {
                Some(p) if !suspect && self.record.is_some_and(|(r, _)| r == cx.me) => {
                    add_waiter(&mut p.buffered, requester, seq);
                }
                _ => self.at_home(cx, out, requester, seq, suspect),
            }
            return;
        }
        if let Some(p) = &mut self.pending
            && self.hint.1 < claim
        {
            // The requester knows of an epoch at which we own that we have not seen: ownership may be on its
            // way here. Wait for it rather than answer from stale state. (With a hint at least that new we
            // owned that epoch and moved on: waiting here could close a cycle of pending nodes.)
            add_waiter(&mut p.buffered, requester, seq);
            return;
        }
        let (hint, epoch) = self.hint;
        let owner = if hint == requester || hint == cx.me { cx.home } else { hint };
        let outcome = RepOutcome::Redirect { owner, epoch };
        cx.send(out, requester, PoMsg::Rep { lock: cx.lock.to_owned(), seq, outcome });
    }

    /// Hands the token to the queue head (the caller ensures the lock is not held).
    fn transfer(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>) {
        let Some(mut o) = self.owned.take() else { return };
        let Some((to, seq)) = o.queue.pop_front() else {
            self.owned = Some(o);
            return;
        };
        let epoch = o.epoch + 1;
        let to_incarnation = cx.peers.incarnation(to).unwrap_or_default();
        let outcome = RepOutcome::Granted { epoch, queue: o.queue.into_iter().collect(), to_incarnation };
        cx.send(out, to, PoMsg::Rep { lock: cx.lock.to_owned(), seq, outcome });
        self.hint = (to, epoch);
        self.last_out = Some((to, to_incarnation, epoch));
        self.max_epoch = self.max_epoch.max(epoch);
        if cx.is_home() {
            self.record = Some((to, epoch));
            self.record_via = None;
        }
    }

    fn on_granted(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        from: NodeId,
        epoch: u64,
        queue: Vec<(NodeId, u64)>,
        to_incarnation: Incarnation,
    ) -> Result<(), CoreError> {
        if cx.peers.incarnation(cx.me) != Some(to_incarnation) {
            // Addressed to a previous life of this node: that token died with it.
            tracing::debug!(lock = cx.lock, %from, "grant for another incarnation dropped");
            return Ok(());
        }
        self.max_epoch = self.max_epoch.max(epoch);
        let pending = self.pending.take();
        let mut result = Ok(());
        let owned = match self.owned.take() {
            Some(mut o) => {
                // Two tokens: the recovery round should make this impossible. Keep one token, lose nobody.
                tracing::error!(lock = cx.lock, %from, epoch, "grant received while owning");
                result = Err(CoreError::Unexpected { from, kind: "LOCK_REP", reason: "grant while owning" });
                o.epoch = o.epoch.max(epoch);
                o
            }
            None => Owned { epoch, seq: 0, queue: VecDeque::new(), held: false },
        };
        self.owned = Some(owned);
        let buffered = pending.as_ref().map(|p| p.buffered.iter().copied().collect()).unwrap_or_default();
        if let Some(o) = &mut self.owned {
            for (node, seq) in queue.into_iter().chain::<Vec<_>>(buffered) {
                if node != cx.me && cx.peers.contains(node) {
                    add_waiter(&mut o.queue, node, seq);
                }
            }
        }
        let epoch = self.owned.as_ref().map_or(epoch, |o| o.epoch);
        self.hint = (cx.me, epoch);
        if cx.is_home() {
            self.record = Some((cx.me, epoch));
            self.record_via = None;
        } else if cx.home != from {
            let msg = PoMsg::OwnerUpdate { lock: cx.lock.to_owned(), owner: cx.me, epoch };
            cx.send(out, cx.home, msg);
        }
        let held = self.owned.as_ref().is_some_and(|o| o.held);
        if pending.is_some_and(|p| p.wants) && !held {
            self.enter(cx, out);
        } else if !held {
            // Withdrawn or a stale duplicate: keep the token idle, or pass it straight on.
            self.transfer(cx, out);
        }
        result
    }

    fn on_redirect(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, owner: NodeId, epoch: u64) {
        self.learn(cx, owner, epoch);
        // Any redirect moves our pending request along, even one answering an older request number: entries
        // carry no incarnation and numbers restart after a restart, so a queue or round may hold our request
        // under a stale number. Following a stale redirect only makes a duplicate, which is harmless.
        let Some(p) = &mut self.pending else { return };
        if !p.wants && p.buffered.is_empty() {
            // Withdrawn and nobody waits behind it: forget it. A grant it still earns is passed on.
            self.pending = None;
            return;
        }
        let seq = p.seq;
        if owner == cx.me {
            if cx.is_home() {
                // A node whose hint names the home sent the home's own request back: nobody knows. Find out.
                self.at_home(cx, out, cx.me, seq, true);
            } else if self.hint.1 >= epoch {
                // The home's round saw us own at `epoch`, but we have moved on since: our own hint is fresher.
                let (target, claim) = self.hint;
                self.send_own_acq(cx, out, target, claim, false);
            }
            // Otherwise the home's round found the token in flight to us: the grant is coming. Asking again
            // would only start round after round.
            return;
        }
        p.hops += 1;
        if p.hops as usize > SUSPECT_AFTER_HOPS_PER_NODE * cx.n {
            p.hops = 0;
            self.send_own_acq(cx, out, cx.home, 0, true);
        } else {
            self.send_own_acq(cx, out, owner, epoch, false);
        }
    }

    fn release(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>) {
        if let Some(o) = &mut self.owned {
            o.held = false;
            if !o.queue.is_empty() {
                self.transfer(cx, out);
            }
        }
    }

    fn own_report(&self, synced: u64) -> Report {
        Report {
            owned: self.owned.as_ref().map(|o| o.epoch),
            last_out: self.last_out,
            max_epoch: self.max_epoch.max(synced),
        }
    }

    /// Starts (or restarts) a recovery round holding `waiters`.
    fn start_round(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, mut waiters: VecDeque<Waiter>) {
        if let Some(old) = self.round.take() {
            for (node, seq) in old.waiters.into_iter().rev() {
                if !waiters.iter().any(|(n, _)| *n == node) {
                    waiters.push_front((node, seq));
                }
            }
        }
        self.rounds = self.rounds.wrapping_add(1);
        // Mixing in the incarnation keeps a report meant for a previous life of this home out of this round.
        let my_inc = cx.peers.incarnation(cx.me).unwrap_or_default().0;
        let id = (my_inc << 32) | u64::from(self.rounds);
        let floor = self.max_epoch.max(cx.synced) + 1;
        let mut reports = BTreeMap::new();
        reports.insert(cx.me, self.own_report(cx.synced));
        self.max_epoch = floor;
        self.round = Some(Round { id, floor, reports, waiters });
        let incarnations: Vec<(NodeId, Incarnation)> =
            cx.peers.all().filter_map(|p| cx.peers.incarnation(p).map(|i| (p, i))).collect();
        for p in cx.peers.others() {
            let msg = PoMsg::Query {
                lock: cx.lock.to_owned(),
                round: id,
                floor,
                incarnations: incarnations.clone(),
            };
            cx.send(out, p, msg);
        }
        self.maybe_decide(cx, out);
    }

    fn on_report(
        &mut self,
        cx: &Ctx<'_>,
        out: &mut Vec<Output<PoMsg>>,
        from: NodeId,
        round: u64,
        report: Report,
    ) {
        let Some(r) = &mut self.round else { return };
        if r.id != round {
            return; // A report for a round that was restarted or decided.
        }
        r.reports.insert(from, report);
        self.maybe_decide(cx, out);
    }

    fn maybe_decide(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>) {
        if self.round.as_ref().is_none_or(|r| r.reports.len() < cx.n) {
            return;
        }
        let Some(round) = self.round.take() else { return };
        let owner = round.reports.iter().filter_map(|(node, rep)| rep.owned.map(|e| (e, *node))).max();
        let mut via = None;
        let found = match (&self.owned, owner) {
            // The token reached the home during the round.
            (Some(o), _) => Some((cx.me, o.epoch)),
            // (1) Somebody owns it.
            (None, Some((epoch, node))) => Some((node, epoch)),
            // (2) The newest transfer is in flight to a live incarnation.
            (None, None) => round
                .reports
                .iter()
                .filter_map(|(sender, rep)| rep.last_out.map(|l| (*sender, l)))
                .max_by_key(|&(_, (_, _, epoch))| epoch)
                .filter(|&(_, (to, inc, _))| cx.peers.incarnation(to) == Some(inc))
                .map(|(sender, (to, _, epoch))| {
                    via = Some(sender);
                    (to, epoch)
                }),
        };
        if let Some((owner, epoch)) = found {
            // Reports are older than the home's own knowledge: a transfer it saw during the round is fresher.
            let (owner, epoch, via) = if self.hint.0 != cx.me && self.hint.1 > epoch {
                (self.hint.0, self.hint.1, None)
            } else {
                (owner, epoch, via)
            };
            self.record = Some((owner, epoch));
            self.record_via = via;
            self.learn(cx, owner, epoch);
            self.redispatch(cx, out, round.waiters);
            return;
        }
        let seen = round.reports.values().map(|rep| rep.max_epoch).max().unwrap_or(0);
        if seen >= round.floor {
            // Some node has seen an epoch at or above the floor: regenerating there could repeat a token.
            self.max_epoch = self.max_epoch.max(seen);
            self.start_round(cx, out, round.waiters);
            return;
        }
        // (3) Lost or never created: regenerate above everything any live node has seen.
        let pending = self.pending.take();
        let mut queue = VecDeque::new();
        let buffered = pending.as_ref().map(|p| p.buffered.clone()).unwrap_or_default();
        for (node, seq) in round.waiters.into_iter().chain(buffered) {
            if node != cx.me {
                add_waiter(&mut queue, node, seq);
            }
        }
        tracing::info!(lock = cx.lock, epoch = round.floor, "ownership regenerated at the home");
        self.owned = Some(Owned { epoch: round.floor, seq: 0, queue, held: false });
        self.hint = (cx.me, round.floor);
        self.record = Some((cx.me, round.floor));
        self.record_via = None;
        self.max_epoch = self.max_epoch.max(round.floor);
        if pending.is_some_and(|p| p.wants) {
            self.enter(cx, out);
        } else {
            self.transfer(cx, out);
        }
    }

    /// Serves the requests a decided round held, now that the record is known.
    fn redispatch(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, waiters: VecDeque<Waiter>) {
        for (node, seq) in waiters {
            if node == cx.me {
                match &self.pending {
                    Some(p) if p.wants || !p.buffered.is_empty() => {
                        let (target, claim) = self.hint;
                        self.send_own_acq(cx, out, target, claim, false);
                    }
                    Some(_) => self.pending = None,
                    None => {}
                }
            } else if self.owned.is_none() && self.record.is_some_and(|(r, _)| r == node) {
                // The record names the requester itself (a transfer to it is in flight, or its request is
                // stale): tell it; a new round right away would find the same answer.
                let epoch = self.record.map_or(0, |(_, e)| e);
                let outcome = RepOutcome::Redirect { owner: node, epoch };
                cx.send(out, node, PoMsg::Rep { lock: cx.lock.to_owned(), seq, outcome });
            } else {
                self.on_acq(cx, out, node, seq, 0, false);
            }
        }
    }

    /// Forgets what `peer`'s previous incarnation asked for or held; re-sends what it may have lost.
    fn peer_restarted(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, peer: NodeId) {
        // Queue, buffer and round entries of `peer` are kept: an entry carries no incarnation, and one that
        // reached us inside a transferred queue may be the *new* incarnation's request. A grant to a node that
        // no longer wants the lock costs one hop (it passes the token on); a dropped request would wait forever.
        if self.hint.0 == peer {
            self.hint = (cx.home, self.hint.1);
        }
        // A round in progress restarts (its reports may predate the restart); a record that names the dead
        // incarnation, or relies on a transfer it sent, must be found again.
        let record_stale = self.owned.is_none()
            && (self.record.is_some_and(|(r, _)| r == peer) || self.record_via == Some(peer));
        if cx.is_home() && (self.round.is_some() || record_stale) {
            self.start_round(cx, out, VecDeque::new());
        }
        // The token we handed to the dead incarnation (and the queue riding with it) may have died with it.
        let lost = self.owned.is_none()
            && self
                .last_out
                .is_some_and(|(to, inc, _)| to == peer && cx.peers.incarnation(peer) != Some(inc));
        match &mut self.pending {
            // Our request may have been in the dead incarnation's queue: ask again (duplicates are harmless).
            Some(p) if p.wants || !p.buffered.is_empty() => {
                p.hops = 0;
                self.send_own_acq(cx, out, cx.home, 0, lost);
                return;
            }
            Some(_) => self.pending = None,
            None => {}
        }
        if lost {
            if cx.is_home() {
                if self.round.is_none() {
                    self.start_round(cx, out, VecDeque::new());
                }
            } else {
                // Request number 0 matches no request of ours: a grant it earns is simply passed on.
                let msg = PoMsg::Acq {
                    lock: cx.lock.to_owned(),
                    requester: cx.me,
                    seq: 0,
                    epoch: 0,
                    suspect: true,
                };
                cx.send(out, cx.home, msg);
            }
        }
    }

    fn on_query(&mut self, cx: &Ctx<'_>, out: &mut Vec<Output<PoMsg>>, round: u64, floor: u64) {
        if let Some(p) = &mut self.pending
            && (p.wants || !p.buffered.is_empty())
        {
            // Our request may have ridden in a queue that was lost with a dead incarnation. Re-sending it ahead
            // of the report (same FIFO link) puts it among the round's waiters; duplicates are harmless.
            p.hops = 0;
            self.send_own_acq(cx, out, cx.home, 0, false);
        }
        let rep = self.own_report(cx.synced);
        self.max_epoch = self.max_epoch.max(floor);
        let msg = PoMsg::Report {
            lock: cx.lock.to_owned(),
            round,
            owned: rep.owned,
            last_out: rep.last_out,
            max_epoch: rep.max_epoch,
        };
        cx.send(out, cx.home, msg);
    }
}

/// Probable-owner locking, seen from one node, for every lock.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ProbableOwner {
    me: NodeId,
    n: usize,
    locks: BTreeMap<LockName, LockState>,
    /// The highest epoch learnt from peers' `EPOCH_SYNC` after this node (re)started: epochs used before its
    /// crash. Reports and round floors include it, so a regeneration never reuses an epoch (fencing tokens
    /// never repeat across one crash at a time). Kept apart from the per-lock epochs so that rounds for
    /// different locks do not push each other's floors.
    epoch_clock: u64,
    /// The highest epoch of any lock's state (kept so [`Protocol::clock`] is O(1)).
    max_seen: u64,
}

impl ProbableOwner {
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
            n: self.n,
            home: home_node(lock, self.n),
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
        ProbableOwner { me, n: n.max(1), locks: BTreeMap::new(), epoch_clock: 0, max_seen: 0 }
    }

    fn request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<PoMsg>>) {
        self.with_lock(lock, peers, |st, cx| st.request(cx, out));
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
        let home = home_node(msg.lock(), self.n);
        match msg {
            PoMsg::EpochSync { .. } => Ok(()),
            PoMsg::Acq { lock, requester, seq, epoch, suspect } => {
                if requester != from {
                    return Err(Self::unexpected(from, kind, "requester is not the sender"));
                }
                self.with_lock(&lock, peers, |st, cx| st.on_acq(cx, out, requester, seq, epoch, suspect));
                Ok(())
            }
            PoMsg::Rep { lock, seq: _, outcome } => match outcome {
                RepOutcome::Granted { epoch, queue, to_incarnation } => {
                    self.with_lock(&lock, peers, |st, cx| {
                        st.on_granted(cx, out, from, epoch, queue, to_incarnation)
                    })
                }
                RepOutcome::Redirect { owner, epoch } => {
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
                        st.record = Some((owner, epoch));
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
        let (me, n, synced) = (self.me, self.n, self.epoch_clock);
        // First, before anything it may act on: the restarted peer forgot which epochs were used.
        let known = self.locks.values().map(|st| st.max_epoch).fold(synced.max(self.max_seen), u64::max);
        if known > 0 && peer != me {
            out.push(Output::Send { to: peer, msg: PoMsg::EpochSync { epoch: known } });
        }
        for (lock, st) in &mut self.locks {
            let cx = Ctx { synced, me, n, home: home_node(lock, n), lock, peers };
            st.peer_restarted(&cx, out, peer);
        }
    }

    /// Probable-owner messages carry no Lamport timestamp; the highest epoch known stands in for a clock.
    fn clock(&self) -> LamportTs {
        LamportTs(self.max_seen.max(self.epoch_clock))
    }

    fn view(&self, lock: &str) -> LockView {
        let Some(st) = self.locks.get(lock) else {
            return LockView::default();
        };
        let mut queue: Vec<QueueEntry> = Vec::new();
        if let Some(o) = &st.owned {
            queue.extend(o.queue.iter().map(|&(node, _)| QueueEntry { node, ts: None }));
        }
        if st.pending.as_ref().is_some_and(|p| p.wants) {
            queue.push(QueueEntry { node: self.me, ts: None });
        }
        LockView {
            held_here: st.owned.as_ref().is_some_and(|o| o.held),
            holder: if st.owned.is_some() { Some(self.me) } else { Some(st.hint.0) },
            last_token: st.last_token,
            queue,
            own_request: None,
        }
    }

    fn needs_peer(&self, lock: &str, peer: NodeId) -> bool {
        let home = home_node(lock, self.n);
        match self.locks.get(lock) {
            None => peer == home,
            Some(st) if st.owned.as_ref().is_some_and(|o| o.queue.is_empty()) => false,
            Some(st) => peer == home || peer == st.hint.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_homed_at(home: u16, n: usize) -> String {
        (0..).map(|i| format!("lock{i}")).find(|l| home_node(l, n) == NodeId(home)).unwrap_or_default()
    }

    fn send(to: u16, msg: PoMsg) -> Output<PoMsg> {
        Output::Send { to: NodeId(to), msg }
    }

    fn acq(lock: &str, requester: u16, seq: u64, epoch: u64) -> PoMsg {
        PoMsg::Acq { lock: lock.into(), requester: NodeId(requester), seq, epoch, suspect: false }
    }

    fn granted(lock: &str, seq: u64, epoch: u64, queue: &[(u16, u64)]) -> PoMsg {
        let queue = queue.iter().map(|&(n, s)| (NodeId(n), s)).collect();
        PoMsg::Rep {
            lock: lock.into(),
            seq,
            outcome: RepOutcome::Granted { epoch, queue, to_incarnation: Incarnation(0) },
        }
    }

    fn redirect(lock: &str, seq: u64, owner: u16, epoch: u64) -> PoMsg {
        PoMsg::Rep { lock: lock.into(), seq, outcome: RepOutcome::Redirect { owner: NodeId(owner), epoch } }
    }

    fn entered(lock: &str, epoch: u64, seq: u32) -> Output<PoMsg> {
        Output::Entered { lock: lock.into(), token: FencingToken::from_epoch(epoch, seq) }
    }

    /// A tiny cluster: one FIFO queue per ordered pair, messages stamped with the sender's incarnation, and
    /// the engine's rule that a message from an older incarnation than the receiver knows is dropped.
    struct Net {
        nodes: Vec<ProbableOwner>,
        peers: Vec<Peers>,
        incs: Vec<Incarnation>,
        links: BTreeMap<(u16, u16), VecDeque<(Incarnation, PoMsg)>>,
        /// Every entry, in order: node and token.
        entries: Vec<(NodeId, FencingToken)>,
        messages: usize,
    }

    impl Net {
        fn new(n: usize) -> Self {
            Net {
                nodes: (0..n).map(|i| ProbableOwner::fresh(NodeId(i as u16), n)).collect(),
                peers: (0..n).map(|i| Peers::formed(NodeId(i as u16), n)).collect(),
                incs: vec![Incarnation(0); n],
                links: BTreeMap::new(),
                entries: Vec::new(),
                messages: 0,
            }
        }

        fn absorb(&mut self, at: u16, outs: Vec<Output<PoMsg>>) -> Vec<Output<PoMsg>> {
            for o in &outs {
                match o {
                    Output::Send { to, msg } => {
                        self.messages += 1;
                        let inc = self.incs[usize::from(at)];
                        self.links.entry((at, to.0)).or_default().push_back((inc, msg.clone()));
                    }
                    Output::Entered { token, .. } => self.entries.push((NodeId(at), *token)),
                }
            }
            outs
        }

        fn request(&mut self, i: u16, lock: &str) -> Vec<Output<PoMsg>> {
            let mut out = Vec::new();
            self.nodes[usize::from(i)].request(lock, &self.peers[usize::from(i)], &mut out);
            self.absorb(i, out)
        }

        fn release(&mut self, i: u16, lock: &str) -> Vec<Output<PoMsg>> {
            let mut out = Vec::new();
            self.nodes[usize::from(i)].release(lock, &self.peers[usize::from(i)], &mut out);
            self.absorb(i, out)
        }

        fn withdraw(&mut self, i: u16, lock: &str) -> Vec<Output<PoMsg>> {
            let mut out = Vec::new();
            self.nodes[usize::from(i)].withdraw(lock, &self.peers[usize::from(i)], &mut out);
            self.absorb(i, out)
        }

        fn peek(&self, from: u16, to: u16) -> Option<&PoMsg> {
            self.links.get(&(from, to)).and_then(|q| q.front()).map(|(_, m)| m)
        }

        /// Delivers the oldest message on `from → to`, as the engine would.
        fn deliver(&mut self, from: u16, to: u16) -> Vec<Output<PoMsg>> {
            let (inc, msg) =
                self.links.get_mut(&(from, to)).and_then(VecDeque::pop_front).expect("a message");
            let (t, f) = (usize::from(to), NodeId(from));
            let mut out = Vec::new();
            match self.peers[t].incarnation(f) {
                Some(known) if inc < known => return out, // stale incarnation: dropped by the engine
                Some(known) if inc == known => {}
                _ => {
                    if self.peers[t].observe(f, inc) == PeerChange::Restarted {
                        self.nodes[t].peer_restarted(f, &self.peers[t], &mut out);
                    }
                }
            }
            let r = self.nodes[t].on_message(f, msg, &mut self.peers[t], &mut out);
            assert_eq!(r, Ok(()));
            self.absorb(to, out)
        }

        /// Delivers everything, lowest link first, until the network is quiet.
        fn run(&mut self) {
            while let Some(&(f, t)) = self.links.iter().find(|(_, q)| !q.is_empty()).map(|(k, _)| k) {
                self.deliver(f, t);
            }
        }

        /// Delivers everything except what travels on `held` links.
        fn run_except(&mut self, held: &[(u16, u16)]) {
            while let Some(&(f, t)) =
                self.links.iter().find(|(k, q)| !q.is_empty() && !held.contains(k)).map(|(k, _)| k)
            {
                self.deliver(f, t);
            }
        }

        /// Node `i` crashes and starts again with a new incarnation; nobody has noticed yet. Messages to the
        /// dead incarnation are lost; messages it sent are still in flight.
        fn restart(&mut self, i: u16) {
            let n = self.nodes.len();
            let ix = usize::from(i);
            self.incs[ix] = Incarnation(self.incs[ix].0 + 1);
            self.nodes[ix] = ProbableOwner::fresh(NodeId(i), n);
            let mut peers = Peers::new(NodeId(i), n, self.incs[ix]);
            for p in 0..n {
                if p != ix {
                    peers.observe(NodeId(p as u16), self.incs[p]);
                }
            }
            self.peers[ix] = peers;
            for ((_, to), q) in self.links.iter_mut() {
                if *to == i {
                    q.clear();
                }
            }
        }

        /// `at` hears `peer`'s handshake.
        fn handshake(&mut self, at: u16, peer: u16) -> Vec<Output<PoMsg>> {
            let (a, p) = (usize::from(at), NodeId(peer));
            let mut out = Vec::new();
            if self.peers[a].observe(p, self.incs[usize::from(peer)]) == PeerChange::Restarted {
                self.nodes[a].peer_restarted(p, &self.peers[a], &mut out);
            }
            self.absorb(at, out)
        }

        fn owner_epoch(&self, i: u16, lock: &str) -> Option<u64> {
            self.nodes[usize::from(i)].locks.get(lock).and_then(|st| st.owned.as_ref()).map(|o| o.epoch)
        }
    }

    /// Node 1 takes the lock (first use: a round at home 0, regeneration, transfer at epoch 2) and holds it.
    fn net_with_owner(n: usize) -> (Net, String) {
        let lock = lock_homed_at(0, n);
        let mut net = Net::new(n);
        net.request(1, &lock);
        net.run();
        assert_eq!(net.entries, vec![(NodeId(1), FencingToken::from_epoch(2, 1))]);
        (net, lock)
    }

    #[test]
    fn first_use_runs_a_round_and_regenerates_at_the_home() {
        let lock = lock_homed_at(0, 3);
        let mut net = Net::new(3);
        // Initial hint: the home.
        assert_eq!(net.request(1, &lock), vec![send(0, acq(&lock, 1, 1, 0))]);
        // A fresh home knows no owner: it asks everyone instead of granting from nothing.
        let incarnations: Vec<_> = (0..3).map(|i| (NodeId(i), Incarnation(0))).collect();
        let query =
            |_| PoMsg::Query { lock: lock.clone(), round: 1, floor: 1, incarnations: incarnations.clone() };
        assert_eq!(net.deliver(1, 0), vec![send(1, query(1)), send(2, query(2))]);
        let report =
            PoMsg::Report { lock: lock.clone(), round: 1, owned: None, last_out: None, max_epoch: 0 };
        // A pending node re-sends its request ahead of its report (it may have been in a lost queue).
        assert_eq!(net.deliver(0, 1), vec![send(0, acq(&lock, 1, 1, 0)), send(0, report.clone())]);
        assert_eq!(net.deliver(0, 2), vec![send(0, report)]);
        assert_eq!(net.deliver(1, 0), vec![]); // the duplicate request joins the round's waiters once
        assert_eq!(net.deliver(1, 0), vec![]);
        // Every report in, nobody owns, nothing in flight, nobody saw epoch 1: regenerate at 1, hand over at 2.
        assert_eq!(net.deliver(2, 0), vec![send(1, granted(&lock, 1, 2, &[]))]);
        // The sender is the home: no OWNER_UPDATE needed.
        assert_eq!(net.deliver(0, 1), vec![entered(&lock, 2, 1)]);
        assert_eq!(net.nodes[0].locks[&lock].record, Some((NodeId(1), 2)));
        assert_eq!(net.messages, 7);
    }

    #[test]
    fn home_uses_its_own_lock_after_a_round() {
        let lock = lock_homed_at(0, 3);
        let mut net = Net::new(3);
        assert_eq!(net.request(0, &lock).len(), 2); // two queries
        net.run();
        assert_eq!(net.entries, vec![(NodeId(0), FencingToken::from_epoch(1, 1))]);
    }

    #[test]
    fn uncontended_migration_keeps_the_lock_with_its_last_owner() {
        let (mut net, lock) = net_with_owner(3);
        assert_eq!(net.release(1, &lock), vec![]);
        let before = net.messages;
        // Second acquire by the same node: no message at all.
        assert_eq!(net.request(1, &lock), vec![entered(&lock, 2, 2)]);
        assert_eq!(net.messages, before);
        assert_eq!(net.nodes[1].view(&lock).holder, Some(NodeId(1)));
        assert!(net.nodes[1].view(&lock).held_here);
    }

    #[test]
    fn fifo_queue_at_the_owner_and_handoff_on_release() {
        let (mut net, lock) = net_with_owner(4);
        assert_eq!(net.request(2, &lock), vec![send(0, acq(&lock, 2, 1, 0))]);
        assert_eq!(net.deliver(2, 0), vec![send(2, redirect(&lock, 1, 1, 2))]);
        assert_eq!(net.deliver(0, 2), vec![send(1, acq(&lock, 2, 1, 2))]);
        net.request(3, &lock);
        net.run();
        // The owner holds: both wait in its queue, in arrival order.
        let queue: Vec<NodeId> = net.nodes[1].view(&lock).queue.iter().map(|e| e.node).collect();
        assert_eq!(queue, vec![NodeId(2), NodeId(3)]);
        // Release hands the token and the rest of the queue to the head.
        assert_eq!(net.release(1, &lock), vec![send(2, granted(&lock, 1, 3, &[(3, 1)]))]);
        let update = PoMsg::OwnerUpdate { lock: lock.clone(), owner: NodeId(2), epoch: 3 };
        assert_eq!(net.deliver(1, 2), vec![send(0, update), entered(&lock, 3, 1)]);
        assert_eq!(net.release(2, &lock), vec![send(3, granted(&lock, 1, 4, &[]))]);
        net.run();
        let tokens: Vec<_> = net.entries.iter().map(|e| e.1).collect();
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens grow: {tokens:?}");
        assert_eq!(net.entries.last(), Some(&(NodeId(3), FencingToken::from_epoch(4, 1))));
        // The home's record followed the token.
        assert_eq!(net.nodes[0].locks[&lock].record, Some((NodeId(3), 4)));
    }

    #[test]
    fn a_non_owner_redirects_along_its_hint_and_the_requester_updates_its_hint() {
        let (mut net, lock) = net_with_owner(4);
        net.request(2, &lock);
        net.run();
        net.release(1, &lock);
        net.run();
        net.release(2, &lock);
        // Node 1's hint points at node 2 (it handed the token there). Node 1 asks there; 2 still owns: grant.
        assert_eq!(net.nodes[1].view(&lock).holder, Some(NodeId(2)));
        net.request(3, &lock);
        net.run();
        net.release(3, &lock);
        // Now the token is at 3; node 1 still believes 2. Node 2 redirects with its own, newer hint.
        assert_eq!(net.request(1, &lock), vec![send(2, acq(&lock, 1, 2, 3))]);
        assert_eq!(net.deliver(1, 2), vec![send(1, redirect(&lock, 2, 3, 4))]);
        assert_eq!(net.deliver(2, 1), vec![send(3, acq(&lock, 1, 2, 4))]);
        assert_eq!(net.nodes[1].view(&lock).holder, Some(NodeId(3)));
        net.run();
        assert_eq!(net.entries.last(), Some(&(NodeId(1), FencingToken::from_epoch(5, 1))));
    }

    /// Seed 003's daemon handler, as its README gives it: a per-node table `lock → (owner, locked)`; on
    /// `LOCK_ACQ`, no record → grant; locked by another → redirect; locked by us → "wait"; unlocked → grant
    /// and write the requester as owner. A requester writes its own record only when the grant arrives.
    #[derive(Default)]
    struct SeedNode {
        table: BTreeMap<u32, (u16, bool)>,
    }

    #[derive(Debug, PartialEq)]
    enum SeedRep {
        Granted,
        Redirect(u16),
    }

    impl SeedNode {
        fn on_lock_acq(&mut self, me: u16, lock: u32, requester: u16) -> SeedRep {
            match self.table.get_mut(&lock) {
                None => {
                    self.table.insert(lock, (requester, true));
                    SeedRep::Granted
                }
                Some(&mut (owner, true)) if owner != me => SeedRep::Redirect(owner),
                Some(&mut (_, true)) => SeedRep::Redirect(me),
                Some(rec) => {
                    *rec = (requester, true);
                    SeedRep::Granted
                }
            }
        }
    }

    /// Regression for the seed's handoff race (REFERENCES.md, seed 003). Owner O = 1 hands the lock to
    /// X = 2; a third requester R = 3 is redirected to X and its `LOCK_ACQ` reaches X *before* the grant.
    /// The seed answers it from X's table, which has no record yet ("grant if never seen / unlocked"), while
    /// O already wrote X as owner: X and R both hold the lock (shown by the model below on the same schedule).
    /// Here X has its own request outstanding, so it buffers R's request and serves it only once the token
    /// has arrived and X has released (Li–Hudak: a request arriving while ownership is in transit waits).
    #[test]
    fn seed_race_a_request_reaching_the_new_owner_before_its_grant_is_buffered() {
        // The seed's logic on this schedule: a double grant.
        let mut seed: Vec<SeedNode> = (0..4).map(|_| SeedNode::default()).collect();
        let mut holders = std::collections::BTreeSet::new();
        seed[1].table.insert(7, (1, false)); // O owned lock 7 and unlocked it locally
        assert_eq!(seed[1].on_lock_acq(1, 7, 2), SeedRep::Granted); // X's grant, reply in flight
        assert_eq!(seed[1].on_lock_acq(1, 7, 3), SeedRep::Redirect(2)); // R redirected to X
        assert_eq!(seed[2].on_lock_acq(2, 7, 3), SeedRep::Granted); // X has no record yet: grants R
        holders.insert(3u16);
        seed[2].table.insert(7, (2, true)); // X's grant arrives: X writes itself as owner
        holders.insert(2u16);
        assert_eq!(holders.len(), 2, "the seed grants the lock to two nodes at once");

        // This protocol on the same schedule.
        let (mut net, lock) = net_with_owner(4);
        net.request(2, &lock);
        net.run(); // X queued at O
        assert_eq!(net.release(1, &lock), vec![send(2, granted(&lock, 1, 3, &[]))]);
        // R asks the home (record: O), then O (hint: X), then X — all before the grant 1 → 2 is delivered.
        assert_eq!(net.request(3, &lock), vec![send(0, acq(&lock, 3, 1, 0))]);
        assert_eq!(net.deliver(3, 0), vec![send(3, redirect(&lock, 1, 1, 2))]);
        assert_eq!(net.deliver(0, 3), vec![send(1, acq(&lock, 3, 1, 2))]);
        assert_eq!(net.deliver(3, 1), vec![send(3, redirect(&lock, 1, 2, 3))]);
        assert_eq!(net.deliver(1, 3), vec![send(2, acq(&lock, 3, 1, 3))]);
        assert!(matches!(net.peek(1, 2), Some(PoMsg::Rep { .. }))); // the grant is still in flight
        // X does not own yet: R's request waits at X. No grant, no redirect.
        assert_eq!(net.deliver(3, 2), vec![]);
        // The token arrives: X enters; R is now in X's queue.
        let update = PoMsg::OwnerUpdate { lock: lock.clone(), owner: NodeId(2), epoch: 3 };
        assert_eq!(net.deliver(1, 2), vec![send(0, update), entered(&lock, 3, 1)]);
        assert_eq!(net.nodes[2].view(&lock).queue, vec![QueueEntry { node: NodeId(3), ts: None }]);
        net.run();
        assert_eq!(net.entries.len(), 2, "R must not be granted while X holds");
        assert_eq!(net.release(2, &lock), vec![send(3, granted(&lock, 1, 4, &[]))]);
        net.run();
        assert_eq!(net.entries.last(), Some(&(NodeId(3), FencingToken::from_epoch(4, 1))));
    }

    #[test]
    fn withdraw_while_queued_passes_the_grant_on() {
        let (mut net, lock) = net_with_owner(4);
        net.request(2, &lock);
        net.run();
        net.request(3, &lock);
        net.run();
        assert_eq!(net.withdraw(2, &lock), vec![]);
        // The grant still reaches node 2, which passes it straight to the next waiter and never enters.
        assert_eq!(net.release(1, &lock), vec![send(2, granted(&lock, 1, 3, &[(3, 1)]))]);
        let update = PoMsg::OwnerUpdate { lock: lock.clone(), owner: NodeId(2), epoch: 3 };
        assert_eq!(net.deliver(1, 2), vec![send(0, update), send(3, granted(&lock, 1, 4, &[]))]);
        net.run();
        assert_eq!(net.entries.iter().map(|e| e.0).collect::<Vec<_>>(), vec![NodeId(1), NodeId(3)]);
    }

    #[test]
    fn withdraw_then_redirect_drops_the_request() {
        let (mut net, lock) = net_with_owner(4);
        net.request(2, &lock); // to the home, which will redirect
        net.withdraw(2, &lock);
        net.deliver(2, 0);
        // The redirect finds a withdrawn request that is queued nowhere: it stops here.
        assert_eq!(net.deliver(0, 2), vec![]);
        assert!(net.nodes[2].locks[&lock].pending.is_none());
        // Asking again later works normally.
        net.release(1, &lock);
        net.request(2, &lock);
        net.run();
        assert_eq!(net.entries.last(), Some(&(NodeId(2), FencingToken::from_epoch(3, 1))));
    }

    #[test]
    fn restart_of_the_owner_runs_a_round_and_regenerates_above_every_epoch_seen() {
        let (mut net, lock) = net_with_owner(3);
        net.restart(1); // the holder of epoch 2 dies
        let out = net.handshake(0, 1);
        // First the restarted node learns which epochs were used (EPOCH_SYNC), then the home's record names the
        // dead node: round with floor = max epoch seen (2) + 1.
        assert_eq!(out[0], Output::Send { to: NodeId(1), msg: PoMsg::EpochSync { epoch: 2 } });
        assert!(
            out[1..].iter().all(|o| matches!(o, Output::Send { msg: PoMsg::Query { floor: 3, .. }, .. }))
        );
        assert_eq!(out.len(), 3);
        net.run();
        assert_eq!(net.owner_epoch(0, &lock), Some(3));
        assert_eq!(net.nodes[0].locks[&lock].record, Some((NodeId(0), 3)));
        // Node 2 learnt node 1's restart from the query and uses the regenerated token.
        net.request(2, &lock);
        net.run();
        assert_eq!(net.entries.last(), Some(&(NodeId(2), FencingToken::from_epoch(4, 1))));
        assert!(FencingToken::from_epoch(4, 1) > FencingToken::from_epoch(2, 1));
    }

    #[test]
    fn a_restarted_home_does_not_assume_it_owns_and_regenerates_above_the_old_epochs() {
        let (mut net, lock) = net_with_owner(3);
        net.release(1, &lock);
        net.restart(0);
        for i in [1, 2] {
            net.handshake(i, 0);
        }
        // The fresh home receives a request: it must ask, and node 1 still owns epoch 2.
        net.request(2, &lock);
        net.run();
        assert_eq!(net.owner_epoch(0, &lock), None);
        assert_eq!(net.entries.last(), Some(&(NodeId(2), FencingToken::from_epoch(3, 1))));
    }

    /// Recovery case (2): a peer restart starts a round while the token is in flight between two live
    /// nodes. The sender's report names a live recipient: the home records it and regenerates nothing.
    #[test]
    fn restart_while_a_transfer_is_in_flight_to_a_live_node_does_not_regenerate() {
        let (mut net, lock) = net_with_owner(4); // node 1 owns epoch 2; the home's record: (1, 2)
        net.request(3, &lock);
        net.run();
        net.release(1, &lock); // 1 → 3, epoch 3
        net.run_except(&[(3, 0)]); // 3 owns; its OWNER_UPDATE to the home waits
        net.release(3, &lock);
        net.request(2, &lock); // home → 1 → 3 → grant 3 → 2, epoch 4, held in flight
        net.run_except(&[(3, 0), (3, 2)]);
        assert!(matches!(
            net.peek(3, 2),
            Some(PoMsg::Rep { outcome: RepOutcome::Granted { epoch: 4, .. }, .. })
        ));
        // Node 1 (the owner the home's record names) restarts: the home runs a round.
        net.restart(1);
        // EPOCH_SYNC to the restarted node, then a query to each of the three others.
        assert_eq!(net.handshake(0, 1).len(), 4);
        net.run_except(&[(3, 2)]);
        // Node 3 reported its transfer to node 2 (alive, same incarnation): record = (2, 4), nothing regenerated.
        assert_eq!(net.nodes[0].locks[&lock].record, Some((NodeId(2), 4)));
        assert!((0..4).all(|i| net.owner_epoch(i, &lock).is_none()));
        net.run();
        assert_eq!(net.owner_epoch(2, &lock), Some(4));
        assert_eq!(net.entries.last(), Some(&(NodeId(2), FencingToken::from_epoch(4, 1))));
        assert_eq!(net.entries.len(), 3);
    }

    /// Fencing: once a node has answered a query that carries a sender's new incarnation, a transfer the dead
    /// incarnation sent can no longer be accepted, so regenerating is safe.
    #[test]
    fn a_transfer_from_a_dead_incarnation_is_fenced_by_the_query() {
        let (mut net, lock) = net_with_owner(3);
        net.request(2, &lock);
        net.run_except(&[(1, 2)]);
        net.release(1, &lock); // grant 1 → 2 in flight
        net.restart(1);
        net.handshake(0, 1);
        net.run_except(&[(1, 2)]);
        // Nobody owns, the only transfer reported is the home's to the dead node 1: regenerated at the home,
        // and node 2 (whose re-sent request waited in the round) gets the new token.
        assert_eq!(net.entries.last(), Some(&(NodeId(2), FencingToken::from_epoch(4, 1))));
        // The old grant arrives late and is dropped (stale incarnation): no second owner.
        assert_eq!(net.deliver(1, 2), vec![]);
        assert_eq!(net.owner_epoch(2, &lock), Some(4));
        assert_eq!(net.entries.len(), 2);
    }

    #[test]
    fn messages_have_the_papers_names() {
        let lock = "l".to_string();
        let kinds: Vec<&str> = [
            acq(&lock, 1, 1, 0),
            redirect(&lock, 1, 0, 0),
            PoMsg::OwnerUpdate { lock: lock.clone(), owner: NodeId(1), epoch: 1 },
            PoMsg::Query { lock: lock.clone(), round: 1, floor: 1, incarnations: vec![] },
            PoMsg::Report { lock: lock.clone(), round: 1, owned: None, last_out: None, max_epoch: 0 },
        ]
        .iter()
        .map(ProtocolMessage::kind)
        .collect();
        assert_eq!(kinds, ["LOCK_ACQ", "LOCK_REP", "OWNER_UPDATE", "OWNER_QUERY", "OWNER_REPORT"]);
    }

    #[test]
    fn malformed_messages_are_refused_not_panicked_on() {
        let mut p = ProbableOwner::fresh(NodeId(1), 3);
        let mut peers = Peers::formed(NodeId(1), 3);
        let mut out = Vec::new();
        let lock = lock_homed_at(0, 3);
        let forged = acq(&lock, 2, 1, 0); // requester is not the sender
        assert!(p.on_message(NodeId(0), forged, &mut peers, &mut out).is_err());
        let q = PoMsg::Query { lock: lock.clone(), round: 1, floor: 1, incarnations: vec![] };
        assert!(p.on_message(NodeId(2), q, &mut peers, &mut out).is_err()); // not the home
        let r = redirect(&lock, 1, 99, 1);
        assert!(p.on_message(NodeId(0), r, &mut peers, &mut out).is_err());
        assert!(p.on_message(NodeId(9), acq(&lock, 9, 1, 0), &mut peers, &mut out).is_err());
        assert_eq!(out, vec![]);
    }

    /// A small deterministic stress run (the full simulation lives in `tests/simulation.rs`): random delivery
    /// order across links, requests, releases, withdraws and restarts. After every step at most one node is in
    /// the critical section and tokens grow (across restarts only while the epoch is remembered by a live
    /// node: see "Limitation" in the module doc); once faults stop, every node that still wants the lock gets it.
    #[test]
    fn seeded_random_schedules_keep_mutual_exclusion_and_finish() {
        struct Check {
            holding: Vec<bool>,
            wanting: Vec<bool>,
            last_token: Option<FencingToken>,
            seen: usize,
        }
        impl Check {
            fn entries(&mut self, seed: u64, net: &Net) {
                for &(node, token) in &net.entries[self.seen..] {
                    let i = usize::from(node.0);
                    assert!(self.wanting[i], "seed {seed}: node {i} entered without wanting");
                    assert!(
                        self.holding.iter().all(|h| !h),
                        "seed {seed}: node {i} entered while another holds"
                    );
                    assert!(self.last_token.is_none_or(|t| t < token), "seed {seed}: token did not grow");
                    self.last_token = Some(token);
                    self.holding[i] = true;
                    self.wanting[i] = false;
                }
                self.seen = net.entries.len();
            }
        }
        // PO_SEEDS=100000 for a deeper local run; the default keeps `cargo test` fast.
        let seeds: u64 = std::env::var("PO_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
        for seed in 1..=seeds {
            let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move |m: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % m
            };
            let n = 2 + (seed % 4) as usize;
            let lock = lock_homed_at((seed % n as u64) as u16, n);
            let mut net = Net::new(n);
            // Handshakes of restarted nodes not yet heard by a peer: (peer, restarted node).
            let mut late: Vec<(u16, u16)> = Vec::new();
            let mut c = Check { holding: vec![false; n], wanting: vec![false; n], last_token: None, seen: 0 };
            for step in 0..800 {
                let faults = step < 650;
                let i = next(n as u64) as u16;
                let ix = usize::from(i);
                match next(10) {
                    0 | 1 if !c.holding[ix] && !c.wanting[ix] => {
                        c.wanting[ix] = true;
                        net.request(i, &lock);
                    }
                    2 if c.holding[ix] => {
                        c.holding[ix] = false;
                        net.release(i, &lock);
                    }
                    3 if c.wanting[ix] && faults && next(3) == 0 => {
                        c.wanting[ix] = false;
                        net.withdraw(i, &lock);
                    }
                    4 if faults && next(4) == 0 => {
                        net.restart(i);
                        c.holding[ix] = false;
                        c.wanting[ix] = false;
                        // Known limitation: an epoch only dead nodes knew can be issued again.
                        c.last_token = None;
                        // Peers hear of the restart later, in any order (or first from a message or a query).
                        late.extend((0..n as u16).filter(|&j| j != i).map(|j| (j, i)));
                    }
                    5 | 6 if !late.is_empty() => {
                        let (j, p) = late.remove(next(late.len() as u64) as usize);
                        net.handshake(j, p);
                    }
                    _ => {
                        let busy: Vec<(u16, u16)> =
                            net.links.iter().filter(|(_, q)| !q.is_empty()).map(|(k, _)| *k).collect();
                        if !busy.is_empty() {
                            let (f, t) = busy[next(busy.len() as u64) as usize];
                            net.deliver(f, t);
                        }
                    }
                }
                c.entries(seed, &net);
            }
            for (j, p) in std::mem::take(&mut late) {
                net.handshake(j, p);
            }
            // Quiet period: deliver everything, release holders, until nobody wants the lock any more.
            for _ in 0..4 * n {
                net.run();
                c.entries(seed, &net);
                for i in 0..n {
                    if c.holding[i] {
                        c.holding[i] = false;
                        net.release(i as u16, &lock);
                    }
                }
            }
            net.run();
            c.entries(seed, &net);
            assert!(c.wanting.iter().all(|w| !w), "seed {seed}: stuck waiters {:?}", c.wanting);
        }
    }
}
