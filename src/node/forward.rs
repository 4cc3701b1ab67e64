//! Client calls that one node serves with another's help, so a client never needs to know which node it
//! talks to: keepalive, release and re-acquire of a lease granted by another node go to the granting node
//! over the peer links ([`Ask`]), and the lock queries ask every member of the view what its own clients hold
//! and wait for, then merge the answers (each node is the truth about its own clients).
//!
//! A lease id names its granting node and incarnation ([`LeaseOwner`]), so the asked node knows where to
//! forward without any shared table. A forwarded call ends in one of three ways: the granting node's answer;
//! `lease_lost` as soon as this node's view shows that node gone or restarted (crash, exclusion, leave); or,
//! if neither comes within [`super::NodeSettings::leave_wait`] (long enough for a crashed node to be excluded
//! by the view change), `unavailable`, which holds nothing and is safe to retry.

use super::driver::Node;
use super::msg::NodeMsg;
use crate::algo::{Algorithm, Incarnation, NodeId};
use crate::api::error::ApiError;
use crate::api::types::{AlgoLockState, Grant, Holder, LockList, LockState, LockSummary, Waiting};
use crate::net::wire::Envelope;
use crate::obs::metrics::LinkFrameLabels;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;

/// How long a lock query waits for the members' answers before answering with what it has.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// The granting node and incarnation a lease id names: ids are `<node>.<incarnation>.<32 hex digits>`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseOwner {
    pub(crate) node: NodeId,
    pub(crate) incarnation: Incarnation,
}

impl LeaseOwner {
    /// The prefix of the lease ids this owner hands out.
    pub(crate) fn prefix(self) -> String {
        format!("{}.{}", self.node.get(), self.incarnation.get())
    }

    /// The owner a lease id names; `None` for an id of another shape (unknown everywhere).
    pub(crate) fn of(lease: &str) -> Option<LeaseOwner> {
        let mut parts = lease.split('.');
        let node = parts.next()?.parse::<u16>().ok()?;
        let incarnation = parts.next()?.parse::<u64>().ok()?;
        let secret = parts.next()?;
        let well_formed =
            parts.next().is_none() && secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit());
        well_formed
            .then_some(LeaseOwner { node: NodeId::new(node), incarnation: Incarnation::new(incarnation) })
    }
}

/// What the node layers of two nodes say to each other on behalf of clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientMsg {
    /// A call, numbered by the asking node.
    Ask {
        /// The asking node's number for the call (echoed in the answer).
        call: u64,
        /// What is asked.
        ask: Ask,
    },
    /// The answer to the call numbered `call`.
    Answer {
        /// The asking node's number for the call.
        call: u64,
        /// The answer.
        answer: Answer,
    },
}

impl ClientMsg {
    /// The message type, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Ask { ask: Ask::KeepAlive { .. }, .. } => "ASK_KEEPALIVE",
            ClientMsg::Ask { ask: Ask::Release { .. }, .. } => "ASK_RELEASE",
            ClientMsg::Ask { ask: Ask::Regrant { .. }, .. } => "ASK_REGRANT",
            ClientMsg::Ask { ask: Ask::Locks { .. }, .. } => "ASK_LOCKS",
            ClientMsg::Answer { .. } => "ANSWER",
        }
    }
}

/// A call to another node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ask {
    /// Keep the lease (granted by the asked node) alive.
    KeepAlive {
        /// The lease.
        lease: String,
    },
    /// Release `lock` held under the lease.
    Release {
        /// The lock.
        lock: String,
        /// The lease.
        lease: String,
    },
    /// A client acquires `lock` again with the lease: the existing grant, if the lease holds it.
    Regrant {
        /// The lock.
        lock: String,
        /// The lease.
        lease: String,
    },
    /// What the asked node's clients hold and wait for: on `lock` only, or on every lock.
    Locks {
        /// One lock, or all.
        lock: Option<String>,
    },
}

/// The answer to an [`Ask`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Answer {
    /// The lease runs `ttl_ms` from now.
    KeptAlive {
        /// The lease's TTL.
        ttl_ms: u64,
    },
    /// The lock was released.
    Released,
    /// The lease holds the lock: its grant.
    Regranted {
        /// The grant's fencing token.
        fencing_token: u64,
        /// Its algorithm.
        algorithm: Algorithm,
        /// Its lease's TTL.
        ttl_ms: u64,
    },
    /// The asked node's clients' holds and waits.
    Locks(Vec<LocalLock>),
    /// The call failed as it would have on the granting node.
    Refused(ApiError),
}

/// What one node's clients hold and wait for on one lock in one algorithm.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LocalLock {
    /// The lock.
    pub lock: String,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// A client of this node holds it: the fencing token and since when (Unix ms).
    pub held: Option<(u64, u64)>,
    /// How many clients of this node wait for it.
    pub waiters: usize,
    /// When the longest-waiting of them asked (Unix ms).
    pub waiting_since: Option<u64>,
    /// This node's request timestamp in the core, if it has one out.
    pub timestamp: Option<u64>,
    /// Probable owner: the FIFO queue, if this node is the owner and has one.
    pub owner_queue: Vec<u16>,
    /// The largest fencing token this node has seen for the lock.
    pub last_token: Option<u64>,
}

/// Where the answer of a call goes.
enum Reply {
    KeepAlive(oneshot::Sender<Result<Duration, ApiError>>),
    Release(oneshot::Sender<Result<(), ApiError>>),
    Regrant { lock: String, lease: String, reply: oneshot::Sender<Result<Grant, ApiError>> },
    Query { lock: Option<String>, reports: BTreeMap<NodeId, Vec<LocalLock>>, reply: QueryReply },
}

impl Reply {
    /// Answers a lease call's client with `err` (a query is answered by `finish_query` only).
    fn fail(self, err: ApiError) {
        match self {
            Reply::KeepAlive(tx) => drop(tx.send(Err(err))),
            Reply::Release(tx) => drop(tx.send(Err(err))),
            Reply::Regrant { reply, .. } => drop(reply.send(Err(err))),
            Reply::Query { .. } => {}
        }
    }
}

/// The two shapes of a lock query's answer.
pub(crate) enum QueryReply {
    One(oneshot::Sender<LockState>),
    All(oneshot::Sender<LockList>),
}

/// A call waiting for answers.
struct Call {
    /// The nodes whose answers are awaited, with the incarnation asked.
    waiting: BTreeMap<NodeId, Incarnation>,
    deadline: Instant,
    epoch: Option<u64>,
    reply: Reply,
}

/// The calls this node has out.
#[derive(Default)]
pub(crate) struct Calls {
    next: u64,
    open: BTreeMap<u64, Call>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The wall-clock time of an instant in the past.
fn unix_ms_of(instant: Instant) -> u64 {
    unix_ms(SystemTime::now() - instant.elapsed())
}

/// Which lease call a client made (for [`Node::lease_call`]).
pub(crate) enum LeaseCall {
    KeepAlive { lease: String, reply: oneshot::Sender<Result<Duration, ApiError>> },
    Release { lock: String, lease: String, reply: oneshot::Sender<Result<(), ApiError>> },
    Regrant { lock: String, lease: String, reply: oneshot::Sender<Result<Grant, ApiError>> },
}

impl Node {
    /// A keepalive, release or re-acquire with a lease: served here if this node granted the lease, else
    /// forwarded to the node that did.
    pub(super) fn lease_call(&mut self, call: LeaseCall) {
        let (lease, ask, reply) = match call {
            LeaseCall::KeepAlive { lease, reply } => {
                (lease.clone(), Ask::KeepAlive { lease }, Reply::KeepAlive(reply))
            }
            LeaseCall::Release { lock, lease, reply } => {
                (lease.clone(), Ask::Release { lock, lease }, Reply::Release(reply))
            }
            LeaseCall::Regrant { lock, lease, reply } => (
                lease.clone(),
                Ask::Regrant { lock: lock.clone(), lease: lease.clone() },
                Reply::Regrant { lock, lease, reply },
            ),
        };
        // A lease of this node, or of no node (an id of another shape: unknown here as everywhere).
        let Some(owner) = LeaseOwner::of(&lease).filter(|o| o.node != self.settings.me) else {
            let answer = self.answer(ask);
            self.finish_lease_call(reply, Ok(answer), self.settings.me);
            return;
        };
        if let Some(why) = self.owner_gone(owner) {
            reply.fail(ApiError::LeaseLost(format!("lease {lease} was lost: {why}")));
            return;
        }
        let deadline = Instant::now() + self.settings.leave_wait;
        let waiting = BTreeMap::from([(owner.node, owner.incarnation)]);
        self.open_call(waiting, deadline, reply, ask);
    }

    /// Why the node that granted a lease cannot hold it any more, if this node can tell: it is not in the
    /// view, or the view (or its handshake) shows a later incarnation.
    fn owner_gone(&self, owner: LeaseOwner) -> Option<String> {
        let (node, inc) = (owner.node.get(), owner.incarnation.get());
        if owner.node == self.settings.me {
            return None;
        }
        let known = self.peers.get(&owner.node).and_then(|p| p.incarnation);
        if known.is_some_and(|k| k > owner.incarnation) {
            return Some(format!("node {node} that granted it restarted (incarnation {inc} is gone)"));
        }
        let view = self.member.core.view()?;
        match view.members.get(&owner.node) {
            Some(m) if m.incarnation > owner.incarnation => {
                Some(format!("node {node} that granted it restarted (incarnation {inc} is gone)"))
            }
            Some(_) => None,
            // A node this node is connected to may be a joiner whose view has not reached this node yet.
            None if known == Some(owner.incarnation)
                && self.peers.get(&owner.node).is_some_and(|p| p.connected) =>
            {
                None
            }
            None => Some(format!(
                "node {node} that granted it is not a member of the cluster (view {}): it crashed, left or \
                 was excluded",
                view.epoch.get()
            )),
        }
    }

    /// A client acquires a lock again with a lease this node granted: the existing grant if the lease holds
    /// that lock.
    pub(super) fn regrant(&mut self, lock: &str, lease: &str) -> Result<Grant, ApiError> {
        let Some(l) = self.leases.get(lease) else { return Err(self.lease_gone(lease)) };
        if l.lock != lock {
            return Err(ApiError::LeaseInUse(format!(
                "lease {lease} holds lock {:?}; a lease covers one lock",
                l.lock
            )));
        }
        Ok(Grant {
            name: lock.to_string(),
            lease: lease.to_string().into(),
            fencing_token: l.token.get(),
            algorithm: Some(l.algorithm),
            node_id: Some(self.settings.me.get()),
            waited_ms: Some(0),
            ttl_ms: Some(l.ttl.as_millis() as u64),
        })
    }

    /// `GET /v1/locks/{name}` (`lock`) or `GET /v1/locks` (`None`): asks every other member of the view
    /// and answers when all did or [`QUERY_TIMEOUT`] passed.
    pub(super) fn query_locks(&mut self, lock: Option<String>, reply: QueryReply) {
        let mut reports = BTreeMap::new();
        reports.insert(self.settings.me, self.local_locks(lock.as_deref()));
        let waiting: BTreeMap<NodeId, Incarnation> = match self.member.core.view() {
            Some(v) => v
                .members
                .values()
                .filter(|m| m.id != self.settings.me)
                .map(|m| (m.id, m.incarnation))
                .collect(),
            None => BTreeMap::new(),
        };
        let reply = Reply::Query { lock: lock.clone(), reports, reply };
        self.open_call(waiting, Instant::now() + QUERY_TIMEOUT, reply, Ask::Locks { lock });
    }

    /// Numbers a call, sends its ask to every node in `waiting` and records it (or answers it at once when
    /// nobody is to be asked).
    fn open_call(
        &mut self,
        waiting: BTreeMap<NodeId, Incarnation>,
        deadline: Instant,
        reply: Reply,
        ask: Ask,
    ) {
        self.calls.next += 1;
        let id = self.calls.next;
        let epoch = self.member.epoch().map(|e| e.get());
        let call = Call { waiting, deadline, epoch, reply };
        let targets: Vec<NodeId> = call.waiting.keys().copied().collect();
        self.calls.open.insert(id, call);
        for to in targets {
            let sent = self.send_client(to, None, ClientMsg::Ask { call: id, ask: ask.clone() });
            if !sent {
                self.call_failed(id, to, "it is not reachable from this node".into());
            }
        }
        self.finish_if_done(id);
    }

    /// Sends a client message to `to`; false if the transport does not know the peer.
    fn send_client(&mut self, to: NodeId, to_incarnation: Option<Incarnation>, msg: ClientMsg) -> bool {
        self.shared.metrics.client_forwards.inc(LinkFrameLabels { kind: msg.kind(), direction: "sent" });
        let env = Envelope {
            ts: self.cores.max_clock(),
            trace: BTreeMap::new(),
            to_incarnation,
            epoch: self.member.epoch().map_or(0, |e| e.get()),
            body: NodeMsg::Client(msg),
        };
        match self.transport.send(to, env) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(peer = %to, error = %e, "cannot send a client call");
                false
            }
        }
    }

    /// A client message from a peer.
    pub(super) fn on_client_msg(&mut self, from: NodeId, incarnation: Incarnation, msg: ClientMsg) {
        self.shared.metrics.client_forwards.inc(LinkFrameLabels { kind: msg.kind(), direction: "received" });
        match msg {
            ClientMsg::Ask { call, ask } => {
                let answer = self.answer(ask);
                self.send_client(from, Some(incarnation), ClientMsg::Answer { call, answer });
            }
            ClientMsg::Answer { call, answer } => self.answered(call, from, incarnation, answer),
        }
    }

    /// Serves a call as if a client had made it here: a peer's forwarded call, or this node's own client's for
    /// a lease of this node. The lease table decides (an id of another incarnation is never in it).
    fn answer(&mut self, ask: Ask) -> Answer {
        let answer = match ask {
            Ask::KeepAlive { lease } => {
                self.keepalive(&lease).map(|ttl| Answer::KeptAlive { ttl_ms: ttl.as_millis() as u64 })
            }
            Ask::Release { lock, lease } => self.release(&lock, &lease).map(|()| Answer::Released),
            Ask::Regrant { lock, lease } => self.regrant(&lock, &lease).map(|g| Answer::Regranted {
                fencing_token: g.fencing_token,
                algorithm: g.algorithm.unwrap_or(self.settings.default_algorithm),
                ttl_ms: g.ttl_ms.unwrap_or(0),
            }),
            Ask::Locks { lock } => Ok(Answer::Locks(self.local_locks(lock.as_deref()))),
        };
        answer.unwrap_or_else(Answer::Refused)
    }

    /// A peer answered call `id`.
    fn answered(&mut self, id: u64, from: NodeId, incarnation: Incarnation, answer: Answer) {
        let Some(call) = self.calls.open.get_mut(&id) else { return };
        if call.waiting.get(&from).is_none_or(|&asked| asked > incarnation) {
            return;
        }
        call.waiting.remove(&from);
        match (&mut call.reply, answer) {
            (Reply::Query { reports, .. }, Answer::Locks(locks)) => {
                reports.insert(from, locks);
            }
            (Reply::Query { .. }, _) => {}
            (_, answer) => {
                let Some(call) = self.calls.open.remove(&id) else { return };
                self.finish_lease_call(call.reply, Ok(answer), from);
                return;
            }
        }
        self.finish_if_done(id);
    }

    /// Node `to` cannot answer call `id` (it left the view, or it is not reachable at all).
    fn call_failed(&mut self, id: u64, to: NodeId, why: String) {
        let Some(call) = self.calls.open.get_mut(&id) else { return };
        if call.waiting.remove(&to).is_none() {
            return;
        }
        if matches!(call.reply, Reply::Query { .. }) {
            return;
        }
        let Some(call) = self.calls.open.remove(&id) else { return };
        self.finish_lease_call(call.reply, Err(why), to);
    }

    /// Answers a lease call's client: the granting node's answer, or why it cannot have one.
    fn finish_lease_call(&mut self, reply: Reply, answer: Result<Answer, String>, owner: NodeId) {
        let lost = |why: &str| ApiError::LeaseLost(format!("the lease was lost: node {} {why}", owner.get()));
        let unexpected = || ApiError::Internal(format!("node {} answered another call", owner.get()));
        match (reply, answer) {
            (Reply::KeepAlive(tx), Ok(Answer::KeptAlive { ttl_ms })) => {
                let _ = tx.send(Ok(Duration::from_millis(ttl_ms)));
            }
            (Reply::Release(tx), Ok(Answer::Released)) => {
                let _ = tx.send(Ok(()));
            }
            (
                Reply::Regrant { lock, lease, reply },
                Ok(Answer::Regranted { fencing_token, algorithm, ttl_ms }),
            ) => {
                let _ = reply.send(Ok(Grant {
                    name: lock,
                    lease: lease.into(),
                    fencing_token,
                    algorithm: Some(algorithm),
                    node_id: Some(owner.get()),
                    waited_ms: Some(0),
                    ttl_ms: Some(ttl_ms),
                }));
            }
            (reply, Ok(Answer::Refused(e))) => reply.fail(e),
            (reply, Ok(_)) => reply.fail(unexpected()),
            (reply, Err(why)) => reply.fail(lost(&why)),
        }
    }

    /// Answers query `id` once no answer is awaited any more.
    fn finish_if_done(&mut self, id: u64) {
        if self.calls.open.get(&id).is_some_and(|c| c.waiting.is_empty()) {
            let call = self.calls.open.remove(&id).expect("present");
            self.finish_query(call);
        }
    }

    fn finish_query(&mut self, call: Call) {
        let Reply::Query { lock, reports, reply } = call.reply else { return };
        let missing: Vec<u16> = call.waiting.keys().map(|n| n.get()).collect();
        let answered: Vec<u16> = reports.keys().map(|n| n.get()).collect();
        match reply {
            QueryReply::One(tx) => {
                let name = lock.unwrap_or_default();
                let algorithms = merge(&reports);
                let _ = tx.send(LockState { name, algorithms, epoch: call.epoch, answered, missing });
            }
            QueryReply::All(tx) => {
                let mut by_lock: BTreeMap<(String, Algorithm), BTreeMap<NodeId, Vec<LocalLock>>> =
                    BTreeMap::new();
                for (node, locks) in &reports {
                    for l in locks {
                        let entry = by_lock.entry((l.lock.clone(), l.algorithm)).or_default();
                        entry.entry(*node).or_default().push(l.clone());
                    }
                }
                let locks = by_lock
                    .into_iter()
                    .filter_map(|((name, algorithm), reports)| {
                        let state = merge(&reports).remove(&algorithm)?;
                        let active = state.holder.is_some() || !state.queue.is_empty();
                        active.then(|| LockSummary {
                            name,
                            algorithm,
                            holder_node: state.holder.as_ref().map(|h| h.node_id),
                            fencing_token: state.holder.as_ref().map(|h| h.fencing_token),
                            waiters: state.queue.iter().map(|w| w.waiters).sum(),
                        })
                    })
                    .collect();
                let _ = tx.send(LockList { locks, epoch: call.epoch, answered, missing });
            }
        }
    }

    /// Housekeeping: calls past their deadline are answered with what they have; calls to nodes the view
    /// no longer has (or has in a later incarnation) end now.
    pub(super) fn expire_calls(&mut self) {
        let now = Instant::now();
        let ids: Vec<u64> = self.calls.open.keys().copied().collect();
        for id in ids {
            let Some(call) = self.calls.open.get(&id) else { continue };
            let gone: Vec<(NodeId, String)> = call
                .waiting
                .iter()
                .filter_map(|(&node, &inc)| {
                    self.owner_gone(LeaseOwner { node, incarnation: inc }).map(|why| (node, why))
                })
                .collect();
            for (node, why) in gone {
                self.call_failed(id, node, why);
            }
            let Some(call) = self.calls.open.get(&id) else { continue };
            if now < call.deadline {
                self.finish_if_done(id);
                continue;
            }
            let call = self.calls.open.remove(&id).expect("present");
            match call.reply {
                Reply::Query { .. } => self.finish_query(call),
                reply => {
                    let owner = call.waiting.keys().next().copied().unwrap_or(self.settings.me);
                    let wait = self.settings.leave_wait.as_millis();
                    let err = ApiError::Unavailable(format!(
                        "node {} that granted the lease did not answer within {wait} ms; nothing changed, retry",
                        owner.get()
                    ));
                    reply.fail(err);
                }
            }
        }
    }

    /// What this node's clients hold and wait for: on `lock`, or on every lock.
    pub(super) fn local_locks(&self, lock: Option<&str>) -> Vec<LocalLock> {
        let mut names: BTreeSet<(String, Algorithm)> = BTreeSet::new();
        for l in self.leases.all() {
            names.insert((l.lock.clone(), l.algorithm));
        }
        for p in self.pending.values() {
            names.insert((p.lock.clone(), p.algorithm));
        }
        if let Some(lock) = lock {
            names.retain(|(n, _)| n == lock);
            for a in Algorithm::ALL {
                if self.cores.get(a).view(lock).last_token.is_some() {
                    names.insert((lock.to_string(), a));
                }
            }
        }
        names
            .into_iter()
            .map(|(name, algorithm)| {
                let view = self.cores.get(algorithm).view(&name);
                let held = self
                    .leases
                    .all()
                    .find(|l| l.lock == name && l.algorithm == algorithm)
                    .map(|l| (l.token.get(), unix_ms_of(l.granted)));
                let waiting: Vec<&super::requests::Pending> = self
                    .pending
                    .values()
                    .filter(|p| p.lock == name && p.algorithm == algorithm && p.withdrawn.is_none())
                    .collect();
                let waiting_since = waiting.iter().map(|p| p.started).min().map(unix_ms_of);
                let owner_queue =
                    if algorithm == Algorithm::ProbableOwner && view.holder == Some(self.settings.me) {
                        view.queue.iter().map(|q| q.node.get()).collect()
                    } else {
                        Vec::new()
                    };
                LocalLock {
                    lock: name,
                    algorithm,
                    held,
                    waiters: waiting.len(),
                    waiting_since,
                    timestamp: view.own_request.map(|t| t.get()),
                    owner_queue,
                    last_token: view.last_token.map(|t| t.get()),
                }
            })
            .collect()
    }
}

/// Merges the nodes' reports on one lock into the cluster-wide state, per algorithm. Deterministic in the
/// reports, so every node that got the same answers gives the same result.
fn merge(reports: &BTreeMap<NodeId, Vec<LocalLock>>) -> BTreeMap<Algorithm, AlgoLockState> {
    let mut out: BTreeMap<Algorithm, AlgoLockState> = BTreeMap::new();
    let mut owner_queue: BTreeMap<Algorithm, Vec<u16>> = BTreeMap::new();
    for (node, locks) in reports {
        for l in locks {
            let state = out.entry(l.algorithm).or_default();
            if let Some((token, since)) = l.held {
                let newer = state.holder.as_ref().is_none_or(|h| h.fencing_token < token);
                if newer {
                    state.holder =
                        Some(Holder { node_id: node.get(), fencing_token: token, since_unix_ms: since });
                }
            }
            if l.waiters > 0 {
                state.queue.push(Waiting {
                    node_id: node.get(),
                    waiters: l.waiters,
                    since_unix_ms: l.waiting_since.unwrap_or(0),
                    timestamp: l.timestamp.filter(|_| l.held.is_none()),
                });
            }
            let seen = l.last_token.into_iter().chain(l.held.map(|(t, _)| t)).max();
            state.last_fencing_token = state.last_fencing_token.max(seen);
            if !l.owner_queue.is_empty() {
                owner_queue.insert(l.algorithm, l.owner_queue.clone());
            }
        }
    }
    for (algorithm, state) in &mut out {
        match owner_queue.get(algorithm) {
            Some(order) => state.queue.sort_by_key(|w| {
                let at = order.iter().position(|&n| n == w.node_id).unwrap_or(usize::MAX);
                (at, w.since_unix_ms, w.node_id)
            }),
            None => {
                state.queue.sort_by_key(|w| (w.timestamp.is_none(), w.timestamp, w.since_unix_ms, w.node_id))
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(lock: &str, held: Option<(u64, u64)>, waiters: usize, ts: Option<u64>) -> LocalLock {
        LocalLock {
            lock: lock.into(),
            algorithm: Algorithm::Lamport,
            held,
            waiters,
            waiting_since: (waiters > 0).then_some(100),
            timestamp: ts,
            owner_queue: Vec::new(),
            last_token: held.map(|(t, _)| t),
        }
    }

    #[test]
    fn a_lease_id_names_its_node_and_incarnation_and_nothing_else_parses() {
        let o = LeaseOwner { node: NodeId::new(3), incarnation: Incarnation::new(1_700_000) };
        let id = format!("{}.{:032x}", o.prefix(), 7u128);
        assert_eq!(LeaseOwner::of(&id), Some(o));
        for bad in
            ["", "3", "3.5", "3.5.abc", "x.5.00000000000000000000000000000007", &format!("{id}.1"), "3.5.zz"]
        {
            assert_eq!(LeaseOwner::of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_merge_orders_waiters_by_timestamp_and_takes_the_holder_from_its_node() {
        let reports = BTreeMap::from([
            (NodeId::new(0), vec![local("x", None, 1, Some(9))]),
            (NodeId::new(1), vec![local("x", Some((5, 42)), 0, None)]),
            (NodeId::new(2), vec![local("x", None, 2, Some(7))]),
        ]);
        let state = &merge(&reports)[&Algorithm::Lamport];
        assert_eq!(state.holder, Some(Holder { node_id: 1, fencing_token: 5, since_unix_ms: 42 }));
        assert_eq!(state.queue.iter().map(|w| w.node_id).collect::<Vec<_>>(), vec![2, 0]);
        assert_eq!(state.queue[0].waiters, 2);
        assert_eq!(state.last_fencing_token, Some(5));
    }

    #[test]
    fn the_probable_owner_queue_follows_the_owner() {
        let po = |node_queue: Vec<u16>, waiters, held| LocalLock {
            algorithm: Algorithm::ProbableOwner,
            owner_queue: node_queue,
            ..local("x", held, waiters, None)
        };
        let reports = BTreeMap::from([
            (NodeId::new(0), vec![po(vec![2, 1], 0, Some((3, 1)))]),
            (NodeId::new(1), vec![po(vec![], 1, None)]),
            (NodeId::new(2), vec![po(vec![], 1, None)]),
        ]);
        let state = &merge(&reports)[&Algorithm::ProbableOwner];
        assert_eq!(state.queue.iter().map(|w| w.node_id).collect::<Vec<_>>(), vec![2, 1]);
    }
}
