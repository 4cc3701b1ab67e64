//! The peers as the node loop sees them: link up or down (from the transport), incarnation (the last frame
//! received is the transport's: [`crate::net::transport::PeerStatus::last_seen`]);
//! and availability: a request that needs a peer which is down is answered 503 at once (and a waiting one is
//! withdrawn when a needed peer goes down) instead of sitting out its timeout.

use super::driver::Node;
use super::msg::PeerMsg;
use super::observe::Seen;
use crate::algo::{Algorithm, Event, Incarnation, NodeId, RequestId};
use crate::api::error::ApiError;
use crate::net::transport::Inbound;
use std::time::Instant;

/// One peer's link and identity.
#[derive(Default)]
pub(crate) struct PeerState {
    pub(super) connected: bool,
    down_since: Option<Instant>,
    pub(super) incarnation: Option<Incarnation>,
}

impl Node {
    pub(super) fn on_inbound(&mut self, input: Inbound<PeerMsg>) {
        match input {
            Inbound::Hello { peer, incarnation, clock } => {
                if let Some(p) = self.peers.get_mut(peer.index()) {
                    p.incarnation = Some(incarnation);
                }
                for algorithm in Algorithm::ALL {
                    let event = Event::PeerIncarnation { peer, incarnation, clock };
                    self.work.push_back((algorithm, event, Default::default()));
                }
            }
            Inbound::Message { from, incarnation, env } => {
                if env.to_incarnation.is_some_and(|to| to != self.settings.incarnation) {
                    // Meant for an earlier life of this node: the sender had not yet seen this incarnation.
                    self.observer.seen(Seen::Dropped { reason: "misaddressed" });
                    return;
                }
                let cause = self.observer.seen(Seen::Received { from, env: &env });
                self.links.received(from, &env, &cause);
                let algorithm = env.body.algorithm();
                let event = Event::Message { from, incarnation, epoch: env.epoch, msg: env.body };
                self.work.push_back((algorithm, event, cause));
            }
            Inbound::Connected { peer } => {
                if let Some(p) = self.peers.get_mut(peer.index()) {
                    p.connected = true;
                    p.down_since = None;
                }
            }
            Inbound::Disconnected { peer } => {
                if let Some(p) = self.peers.get_mut(peer.index()) {
                    if p.connected || p.down_since.is_none() {
                        p.down_since = Some(Instant::now());
                    }
                    p.connected = false;
                }
            }
            Inbound::Refused { remote, reason } => {
                tracing::warn!(%remote, reason = reason.as_str(), "refused peer connection");
            }
            Inbound::BadFrame { remote, peer, error } => {
                tracing::warn!(%remote, ?peer, %error, "bad frame from peer");
                self.observer.seen(Seen::Dropped { reason: "frame" });
            }
        }
    }

    /// Why a request for `lock` with `algorithm` cannot be served now, if it cannot.
    pub(super) fn unavailable(&self, algorithm: Algorithm, lock: &str) -> Option<String> {
        let core = self.cores.get(algorithm);
        let mut down = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            let node = NodeId::new(i as u16);
            if node != self.settings.me && self.peer_down(p) && core.needs_peer(lock, node) {
                down.push(format!("peer {} ({}) is down", i, self.settings.peers[i]));
            }
        }
        if !down.is_empty() {
            Some(down.join("; "))
        } else if !core.joined() {
            Some("not yet joined: waiting for every peer's handshake".into())
        } else {
            None
        }
    }

    /// A peer counts as down once its link has been down for `peer_down_after` (a reconnect is not an outage).
    fn peer_down(&self, p: &PeerState) -> bool {
        !p.connected && p.down_since.is_none_or(|t| t.elapsed() >= self.settings.peer_down_after)
    }

    /// Withdraws the waiting requests that need a peer which is down (they are answered 503).
    pub(super) fn withdraw_unavailable(&mut self) {
        let doomed: Vec<(RequestId, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.withdrawn.is_none())
            .filter_map(|(id, p)| self.unavailable(p.algorithm, &p.lock).map(|why| (*id, why)))
            .collect();
        for (id, why) in doomed {
            self.withdraw(id, ApiError::Unavailable(why));
        }
    }
}
