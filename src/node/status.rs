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
        let members = self.member.core.view().map(|v| v.members.values().map(|m| (m.id, m.addr.clone())));
        let listed = listed_peers(&self.settings, members.into_iter().flatten());
        let peers = listed
            .into_iter()
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

/// The nodes `GET /v1/cluster` lists under `peers` (`(id, address)` in id order): every configured peer, then
/// the nodes beyond the configured list — this node itself, when it joined from beyond it (at its advertised
/// address), and every member of `view` beyond it (a live joiner, at the address the view holds for it).
fn listed_peers(
    settings: &super::NodeSettings,
    view: impl Iterator<Item = (NodeId, String)>,
) -> Vec<(usize, String)> {
    let mut listed: BTreeMap<usize, String> = settings.peers.iter().cloned().enumerate().collect();
    listed.entry(settings.me.index()).or_insert_with(|| settings.advertise.clone());
    for (id, addr) in view {
        listed.entry(id.index()).or_insert(addr);
    }
    listed.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algo::Incarnation;
    use crate::config::{ConfigSources, NodeConfig};

    fn settings(me: u16, peers: &str, advertise: Option<&str>) -> super::super::NodeSettings {
        let mut env = BTreeMap::from([
            ("DMUTEX_NODE_ID".to_string(), me.to_string()),
            ("DMUTEX_PEERS".to_string(), peers.to_string()),
        ]);
        if let Some(a) = advertise {
            env.insert("DMUTEX_ADVERTISE_ADDR".to_string(), a.to_string());
        }
        let sources = ConfigSources { env, host_name: None, config_file: None, overrides: BTreeMap::new() };
        let cfg = NodeConfig::load(&sources).expect("config");
        super::super::NodeSettings::from_config(&cfg, Incarnation::new(1))
    }

    /// `peers` is "every node, this one included": a live joiner beyond the configured list is listed by the
    /// nodes whose view holds it, and by itself, at its advertised address (it used to be missing from both).
    #[test]
    fn peers_lists_every_view_member_and_this_node_beyond_the_configured_list() {
        let seeds = "10.0.0.1:7070,10.0.0.2:7070,10.0.0.3:7070";
        let view = |ids: &[u16]| {
            ids.iter().map(|&i| (NodeId::new(i), format!("10.0.0.{}:7070", i + 1))).collect::<Vec<_>>()
        };
        let addrs =
            |l: Vec<(usize, String)>| l.into_iter().map(|(i, a)| format!("{i}={a}")).collect::<Vec<_>>();
        // A seed before any join: the configured list, unchanged.
        assert_eq!(
            addrs(listed_peers(&settings(0, seeds, None), view(&[0, 1, 2]).into_iter())),
            ["0=10.0.0.1:7070", "1=10.0.0.2:7070", "2=10.0.0.3:7070"]
        );
        // A seed whose view holds two joiners lists them after the configured peers.
        assert_eq!(
            addrs(listed_peers(&settings(0, seeds, None), view(&[0, 1, 2, 3, 4]).into_iter())),
            ["0=10.0.0.1:7070", "1=10.0.0.2:7070", "2=10.0.0.3:7070", "3=10.0.0.4:7070", "4=10.0.0.5:7070"]
        );
        // A joiner lists itself at its advertised address even before it is in a view.
        assert_eq!(
            addrs(listed_peers(&settings(3, seeds, Some("10.0.0.4:7070")), std::iter::empty())),
            ["0=10.0.0.1:7070", "1=10.0.0.2:7070", "2=10.0.0.3:7070", "3=10.0.0.4:7070"]
        );
        // A configured peer keeps its configured address, even where the view holds another.
        let moved = vec![(NodeId::new(1), "10.9.9.9:7070".to_string())];
        assert_eq!(addrs(listed_peers(&settings(0, seeds, None), moved.into_iter()))[1], "1=10.0.0.2:7070");
    }
}
