//! The invariants a run must keep, checked as it goes and when it goes quiet.

use super::{Item, ReqState, Sim, Step, note};
use crate::algo::{Algorithm, FencingToken, Millis, NodeId, Protocol, RequestId};
use std::collections::BTreeSet;
use std::fmt::Write as _;

impl<P: Protocol, F: Fn(NodeId, usize) -> P> Sim<'_, P, F> {
    pub(super) fn granted(
        &mut self,
        node: NodeId,
        req: RequestId,
        lock: String,
        token: FencingToken,
    ) -> Step {
        note!(self, "    node {node} GRANTED {req:?} {lock} token {:#x}", token.get());
        let Some(r) = self.requests.get(&req) else {
            return Err(format!("node {node} granted {req:?} ({lock}), which is not a live request"));
        };
        if r.node != node || r.state != ReqState::Waiting || r.lock != lock {
            return Err(format!(
                "node {node} granted {req:?} for {lock}, but it is {:?} for {} at node {}",
                r.state, r.lock, r.node
            ));
        }
        if let Some((other, other_req)) = self.holders.get(&lock) {
            return Err(format!(
                "mutual exclusion: node {node} granted {lock} to {req:?} while node {other} holds it ({other_req:?})"
            ));
        }
        if let Some(last) = self.max_token.get(&lock)
            && token <= *last
        {
            if self.token_witnesses.get(&lock).is_some_and(BTreeSet::is_empty) {
                note!(
                    self,
                    "    (every node up at token {:#x} has crashed since: the token is forgotten)",
                    last.get()
                );
                self.report.fencing_forgotten += 1;
            } else {
                return Err(format!(
                    "fencing: node {node} granted {lock} with token {:#x}, not above the earlier token {:#x}",
                    token.get(),
                    last.get()
                ));
            }
        }
        if matches!(P::ALGORITHM, Algorithm::Lamport | Algorithm::RicartAgrawala)
            && token.get() & 0xffff != u64::from(node.get())
        {
            return Err(format!(
                "fencing: node {node} granted {lock} with token {:#x}, whose (ts, node) names node {}",
                token.get(),
                token.get() & 0xffff
            ));
        }
        self.max_token.insert(lock.clone(), token);
        let up: BTreeSet<NodeId> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].engine.is_some())
            .map(|i| NodeId::new(i as u16))
            .collect();
        self.token_witnesses.insert(lock.clone(), up);
        self.holders.insert(lock, (node, req));
        let mut forgetful = false;
        if let Some(r) = self.requests.get_mut(&req) {
            r.state = ReqState::Held(token);
            r.lease_end = r.ttl.map(|ttl| Millis::new(self.now.get() + ttl.get()));
            forgetful = r.ttl.is_some();
        }
        self.report.grants += 1;
        self.report.entry_messages.push(self.msgs_since_grant);
        self.msgs_since_grant = 0;
        if !forgetful {
            let hold = self.rng.below(self.cfg.max_hold + 1);
            self.schedule(Millis::new(self.now.get() + hold), Item::Release { node, req });
        }
        Ok(())
    }

    /// A holder that never released lost its lock: only a holder's lease expires, and not before its end.
    pub(super) fn lease_expired(&mut self, node: NodeId, req: RequestId, lock: String) -> Step {
        note!(self, "    node {node} LEASE EXPIRED {req:?} {lock}");
        let Some(r) = self.requests.get(&req) else {
            return Err(format!("node {node}: the lease of {req:?} expired, but it is not a live request"));
        };
        if r.node != node || !matches!(r.state, ReqState::Held(_)) || r.lock != lock {
            return Err(format!(
                "node {node}: the lease of {req:?} for {lock} expired, but it is {:?} for {} at node {}",
                r.state, r.lock, r.node
            ));
        }
        if r.lease_end.is_none_or(|end| self.now < end) {
            return Err(format!(
                "node {node}: the lease of {req:?} expired at t={}, before its end {:?}",
                self.now.get(),
                r.lease_end
            ));
        }
        self.requests.remove(&req);
        self.holders.remove(&lock);
        self.last_end.insert(lock, self.now);
        self.report.lease_expiries += 1;
        self.request_ended(node);
        Ok(())
    }

    /// The engine's own idea of its holders must match the grants it announced.
    pub(super) fn check_holder(&self, node: NodeId) -> Step {
        let Some(engine) = self.nodes.get(node.index()).and_then(|s| s.engine.as_ref()) else {
            return Ok(());
        };
        for lock in &self.lock_names {
            let harness = self.holders.get(lock).filter(|(n, _)| *n == node).map(|(_, r)| *r);
            if engine.holder(lock) != harness {
                return Err(format!(
                    "node {node}'s engine says {lock} is held by {:?}, but the grants say {harness:?}",
                    engine.holder(lock)
                ));
            }
        }
        Ok(())
    }

    pub(super) fn check_end(&self) -> Step {
        if self.requests.is_empty() {
            return Ok(());
        }
        Err(self.stuck("requests never granted nor rejected (deadlock or starvation):"))
    }

    /// After the probes: every one was granted (and released).
    pub(super) fn check_probes(&self) -> Step {
        if self.requests.is_empty() {
            return Ok(());
        }
        Err(self.stuck(
            "liveness after the last fault: with every node up and connected, fresh requests were never \
             granted:",
        ))
    }

    /// `headline`, the requests still open and every engine's view.
    fn stuck(&self, headline: &str) -> String {
        let mut msg = String::from(headline);
        for (req, r) in &self.requests {
            let _ = write!(msg, "\n    {req:?} at node {} for {} ({:?})", r.node, r.lock, r.state);
        }
        let _ = write!(msg, "\n  engines' views:");
        for (i, state) in self.nodes.iter().enumerate() {
            let Some(engine) = state.engine.as_ref() else {
                let _ = write!(msg, "\n    node {i}: down");
                continue;
            };
            let _ = write!(
                msg,
                "\n    node {i} (incarnation {}, joined {}, clock {}):",
                state.incarnation.get(),
                engine.joined(),
                engine.clock().get()
            );
            for lock in &self.lock_names {
                let _ = write!(
                    msg,
                    "\n      {lock}: holder {:?}, local waiters {:?}, view {:?}",
                    engine.holder(lock),
                    engine.local_waiters(lock),
                    engine.view(lock)
                );
            }
        }
        msg
    }
}
