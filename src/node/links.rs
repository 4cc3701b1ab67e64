//! Which trace an answer joins: the trace contexts of requests received and not yet answered.
//!
//! An answer (an immediate REPLY, a deferred one, a probable-owner grant long after) is sent by whatever work
//! happens to release it, but belongs to the requester's trace. So a request's context is remembered when it
//! arrives ([`ProtocolMessage::is_request`]) and taken when the answer leaves
//! ([`ProtocolMessage::is_answer`]). A message that hands waiting requests to its receiver
//! ([`ProtocolMessage::handed_over`]: a probable-owner grant carries the owner's queue) carries their
//! contexts along, under `dmutex-waiter.<node>.*` keys, and the receiver takes them over.
//!
//! Kept here, not in the cores, which know nothing of tracing. Bounded: beyond [`MAX_WAITERS`] everything is
//! forgotten (only trace links are lost, never lock state).

use super::msg::PeerMsg;
use super::observe::{Cause, MAX_ACQUIRE_ID};
use crate::algo::{Algorithm, NodeId, ProtocolMessage};
use crate::net::wire::Envelope;
use crate::obs::telemetry;
use std::collections::BTreeMap;

/// Prefix of the keys that hand the trace context of queued requests to the next owner
/// (`dmutex-waiter.<node>.acquire`, `dmutex-waiter.<node>.traceparent`).
const WAITER_PREFIX: &str = "dmutex-waiter.";

/// Most remembered request contexts; a flood of requests that are never answered cannot grow memory.
const MAX_WAITERS: usize = 4096;

/// Remembered request contexts, by (algorithm, requester) and lock.
#[derive(Default)]
pub(crate) struct TraceLinks {
    waiting: BTreeMap<(Algorithm, NodeId), BTreeMap<String, Cause>>,
    len: usize,
}

fn waiter_key(node: NodeId, what: &str) -> String {
    format!("{WAITER_PREFIX}{}.{what}", node.get())
}

impl TraceLinks {
    /// A message arrived from `from`, handled as `cause`: a request's context is kept for its answer, and the
    /// contexts of requests the message hands over are taken over.
    pub(crate) fn received(&mut self, from: NodeId, env: &Envelope<PeerMsg>, cause: &Cause) {
        let msg = &env.body;
        let algorithm = msg.algorithm();
        if msg.is_request() {
            self.remember(algorithm, msg.lock(), from, cause.kept());
        }
        for node in msg.handed_over() {
            let acquire =
                env.trace.get(&waiter_key(node, "acquire")).filter(|a| a.len() <= MAX_ACQUIRE_ID).cloned();
            let mut carrier = BTreeMap::new();
            if let Some(tp) = env.trace.get(&waiter_key(node, "traceparent")) {
                carrier.insert("traceparent".to_string(), tp.clone());
            }
            let cx = telemetry::extract(&carrier);
            let otel = telemetry::is_valid(&cx).then_some(cx);
            if acquire.is_some() || otel.is_some() {
                self.remember(algorithm, msg.lock(), node, Cause { acquire, otel, span: None });
            }
        }
    }

    /// `msg` is about to leave for `to`: if it answers a remembered request, the request's context (which the
    /// answer must carry instead of the sending work's).
    pub(crate) fn answering(&mut self, to: NodeId, msg: &PeerMsg) -> Option<Cause> {
        if msg.is_answer() { self.take(msg.algorithm(), msg.lock(), to) } else { None }
    }

    /// Writes the contexts of the requests `msg` hands over into its trace map (and forgets them here: the
    /// receiver answers them now).
    pub(crate) fn hand_over(&mut self, msg: &PeerMsg, trace: &mut BTreeMap<String, String>) {
        for node in msg.handed_over() {
            let Some(w) = self.take(msg.algorithm(), msg.lock(), node) else { continue };
            if let Some(a) = w.acquire {
                trace.insert(waiter_key(node, "acquire"), a);
            }
            if let Some(tp) =
                w.otel.map(|cx| telemetry::inject_context(&cx)).and_then(|mut m| m.remove("traceparent"))
            {
                trace.insert(waiter_key(node, "traceparent"), tp);
            }
        }
    }

    fn remember(&mut self, algorithm: Algorithm, lock: &str, from: NodeId, cause: Cause) {
        if self.len >= MAX_WAITERS {
            self.waiting.clear();
            self.len = 0;
        }
        if self.waiting.entry((algorithm, from)).or_default().insert(lock.to_string(), cause).is_none() {
            self.len += 1;
        }
    }

    fn take(&mut self, algorithm: Algorithm, lock: &str, node: NodeId) -> Option<Cause> {
        let locks = self.waiting.get_mut(&(algorithm, node))?;
        let cause = locks.remove(lock)?;
        self.len -= 1;
        if locks.is_empty() {
            self.waiting.remove(&(algorithm, node));
        }
        Some(cause)
    }
}

#[cfg(test)]
mod tests {
    use super::super::observe::ACQUIRE_KEY;
    use super::*;
    use crate::algo::LamportTs;
    use crate::algo::lamport::LamportMsg;

    fn env(body: PeerMsg, acquire: &str) -> Envelope<PeerMsg> {
        let mut e = Envelope::new(LamportTs::new(1), body);
        e.trace.insert(ACQUIRE_KEY.into(), acquire.into());
        e
    }

    fn lamport(request: bool) -> PeerMsg {
        let (lock, ts) = ("x".to_string(), LamportTs::new(1));
        PeerMsg::Lamport(if request {
            LamportMsg::Request { lock, ts }
        } else {
            LamportMsg::Reply { lock, ts }
        })
    }

    #[test]
    fn an_answer_carries_the_context_of_the_request_it_answers_once() {
        let mut links = TraceLinks::default();
        let request = env(lamport(true), "a1");
        let cause = Cause { acquire: Some("a1".into()), ..Cause::default() };
        links.received(NodeId::new(2), &request, &cause);
        assert!(links.answering(NodeId::new(1), &lamport(false)).is_none(), "another requester");
        assert!(links.answering(NodeId::new(2), &lamport(true)).is_none(), "not an answer");
        let answered = links.answering(NodeId::new(2), &lamport(false)).and_then(|c| c.acquire);
        assert_eq!(answered.as_deref(), Some("a1"));
        assert!(links.answering(NodeId::new(2), &lamport(false)).is_none(), "taken");
        assert_eq!(links.len, 0);
    }

    /// A probable-owner grant moves the owner's queue to the new owner, and with it the queued requests'
    /// contexts: the new owner's later grant to a queued node joins that node's trace.
    #[test]
    fn a_transfer_hands_the_queued_requests_contexts_to_the_new_owner() {
        use crate::algo::Incarnation;
        use crate::algo::probable_owner::{OwnershipEpoch, PoMsg, RepOutcome, Waiter};
        let lock = || "x".to_string();
        let acq = PeerMsg::ProbableOwner(PoMsg::Acq {
            lock: lock(),
            requester: NodeId::new(3),
            seq: 1,
            epoch: OwnershipEpoch::ZERO,
            suspect: false,
            attempt: false,
        });
        let grant = |queue: Vec<Waiter>| {
            PeerMsg::ProbableOwner(PoMsg::Rep {
                lock: lock(),
                seq: 1,
                outcome: RepOutcome::Granted {
                    epoch: OwnershipEpoch::new(1),
                    queue,
                    to_incarnation: Incarnation::new(0),
                },
            })
        };
        // The old owner queued node 3's request, then hands ownership (and the queue) to node 1.
        let mut old_owner = TraceLinks::default();
        let cause = Cause { acquire: Some("a3".into()), ..Cause::default() };
        old_owner.received(NodeId::new(3), &env(acq, "a3"), &cause);
        let transfer = grant(vec![Waiter { node: NodeId::new(3), seq: 1, attempt: false }]);
        let mut trace = BTreeMap::new();
        old_owner.hand_over(&transfer, &mut trace);
        assert_eq!(trace.get("dmutex-waiter.3.acquire").map(String::as_str), Some("a3"));
        assert_eq!(old_owner.len, 0, "the old owner no longer answers node 3");
        // The new owner takes the contexts over and answers node 3 in its trace.
        let mut new_owner = TraceLinks::default();
        let mut arrived = Envelope::new(LamportTs::new(0), transfer);
        arrived.trace = trace;
        new_owner.received(NodeId::new(0), &arrived, &Cause::default());
        let answered = new_owner.answering(NodeId::new(3), &grant(vec![])).and_then(|c| c.acquire);
        assert_eq!(answered.as_deref(), Some("a3"));
    }
}
