//! What the node reports about itself: lock info, cluster info and counters for the API, and readiness with
//! the gauges at every housekeeping tick. Read-only: nothing here changes a core.

use super::driver::Node;
use super::observe::{Seen, Status};
use crate::algo::{Algorithm, NodeId};
use crate::api::types::{
    AlgoLockInfo, ClusterInfo, LeaseInfo, LockInfo, PeerInfo, Stats, ViewInfo, ViewMember,
};
use crate::obs::metrics::{AlgorithmLabel, MessageLabels, Outcome, OutcomeLabels};
use std::collections::BTreeMap;
use std::time::SystemTime;

impl Node {
    pub(super) fn update_readiness(&mut self) {
        let me = self.settings.me.index();
        let mut reasons = Vec::new();
        if self.shared.shutting_down() {
            reasons.push("shutting down".to_string());
        }
        if let Some(why) = self.unavailable() {
            reasons.push(why);
        } else if !self.cores.all_joined() {
            let members = self.member.engines.as_ref().map_or(0, |(_, m)| m.len());
            reasons.push(format!("catching up: waiting for the clocks of the view's {members} members"));
        }
        let ready = reasons.is_empty();
        self.shared.set_ready(ready, reasons);
        let counters = self.transport.counters();
        let status = Status {
            ready,
            connected: (self.peers.iter())
                .filter(|(id, _)| id.index() != me)
                .map(|(id, p)| (*id, p.connected))
                .collect(),
            cores: Algorithm::ALL
                .iter()
                .map(|&a| {
                    let waiting = self.pending.values().filter(|p| p.algorithm == a).count();
                    (a, waiting, self.cores.get(a).clock())
                })
                .collect(),
            held_leases: self.leases.len(),
            reconnects: self.transport.status().iter().map(|s| (s.node, s.reconnects)).collect(),
            refused: counters.refused.into_iter().collect(),
            keepalives: (counters.keepalives_sent, counters.keepalives_received),
        };
        self.observer.seen(Seen::Status(&status));
    }

    pub(super) fn lock_info(&self, lock: &str) -> LockInfo {
        let now = self.now();
        let leases = self
            .leases
            .on_lock(lock)
            .map(|(_, l)| LeaseInfo {
                algorithm: l.algorithm,
                fencing_token: l.token.get(),
                expires_in_ms: self
                    .cores
                    .get(l.algorithm)
                    .lease_until(l.req)
                    .map_or(0, |end| end.get().saturating_sub(now.get())),
            })
            .collect();
        let algorithms = Algorithm::ALL
            .iter()
            .map(|&a| {
                let core = self.cores.get(a);
                let info = AlgoLockInfo { view: core.view(lock), local_waiters: core.local_waiters(lock) };
                (a.as_str().to_string(), info)
            })
            .collect();
        LockInfo { name: lock.to_string(), leases, algorithms }
    }

    pub(super) fn cluster_info(&self) -> ClusterInfo {
        let status = self.transport.status();
        let now = SystemTime::now();
        let peers = self
            .settings
            .peers
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let me = i == self.settings.me.index();
                let st = self.peers.get(&NodeId::new(i as u16));
                let link = status.iter().find(|s| s.node.index() == i);
                PeerInfo {
                    node: i as u16,
                    address: addr.clone(),
                    connected: me || st.is_some_and(|p| p.connected),
                    last_seen_ms_ago: if me {
                        Some(0)
                    } else {
                        // The last frame received on either connection with the peer (idle links carry
                        // keepalives every second).
                        link.and_then(|s| s.last_seen)
                            .map(|t| now.duration_since(t).unwrap_or_default().as_millis() as u64)
                    },
                    incarnation: if me {
                        Some(self.settings.incarnation.get())
                    } else {
                        st.and_then(|p| p.incarnation).map(|i| i.get())
                    },
                    reconnects: link.map_or(0, |s| s.reconnects),
                }
            })
            .collect();
        let lamport_clock = Algorithm::ALL
            .iter()
            .map(|a| (a.as_str().to_string(), self.cores.get(*a).clock().get()))
            .collect();
        ClusterInfo {
            node_id: self.settings.me.get(),
            incarnation: self.settings.incarnation.get(),
            cluster: self.settings.cluster.clone(),
            ready: self.shared.readiness().ready,
            peers,
            lamport_clock,
            lamport_ack_elision: self.cores.lamport_ack_elision(),
            view: self.member.core.view().map(|v| ViewInfo {
                epoch: v.epoch.get(),
                members: v
                    .members
                    .values()
                    .map(|m| ViewMember {
                        node_id: m.id.get(),
                        addr: m.addr.clone(),
                        incarnation: m.incarnation.get(),
                        connected: m.id == self.settings.me
                            || self.peers.get(&m.id).is_some_and(|p| p.connected),
                    })
                    .collect(),
            }),
            member: self.member.core.is_member(),
            majority: self.may_grant(),
        }
    }

    /// `/v1/stats`, computed from the very counters `/metrics` renders.
    pub(super) fn stats(&self) -> Stats {
        let m = &self.shared.metrics;
        let by_type = |series: Vec<(MessageLabels, u64)>| {
            let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for (l, v) in series {
                *out.entry(l.algorithm.as_str().into()).or_default().entry(l.kind.into()).or_default() += v;
            }
            out
        };
        let per_algo = |count: &dyn Fn(Algorithm) -> u64| {
            Algorithm::ALL.iter().map(|&a| (a.as_str().to_string(), count(a))).collect::<BTreeMap<_, _>>()
        };
        Stats {
            node_id: self.settings.me.get(),
            incarnation: self.settings.incarnation.get(),
            messages_sent: by_type(m.messages_sent.series()),
            messages_received: by_type(m.messages_received.series()),
            messages_sent_total: m.messages_sent.sum(),
            grants: per_algo(&|a| m.grants.get(&AlgorithmLabel(a))),
            timeouts: per_algo(&|a| {
                m.acquire_outcomes.get(&OutcomeLabels { algorithm: a, outcome: Outcome::Timeout })
            }),
            lease_expiries: m.lease_expiries.sum(),
            lamport_clock: self.shared.clock().get(),
            lamport_ack_elision: self.cores.lamport_ack_elision(),
        }
    }
}
