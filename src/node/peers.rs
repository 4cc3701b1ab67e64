//! The peers as the node loop sees them: link up or down and incarnation (from the transport; the last frame
//! received is the transport's: [`crate::net::transport::PeerStatus::last_seen`]); and what arrives from
//! them: handshakes go to the membership layer (never to the cores: inside a view the cores' handshake is
//! the membership layer's clocks message), algorithm messages to the cores (held until the cores are in
//! their view), membership messages to the membership layer.
//!
//! Availability: a request is answered 503 at once when the node cannot grant (no view yet, or no member
//! lease: it does not reach a majority). A peer that is down does not make requests fail on a node that
//! holds its lease: they wait until the view excludes that peer.

use super::driver::Node;
use super::msg::{NodeMsg, PeerMsg};
use super::observe::Seen;
use crate::algo::{Event, Incarnation, NodeId, RequestId};
use crate::api::error::ApiError;
use crate::net::transport::Inbound;
use crate::net::wire::Envelope;

/// One peer's link and identity.
#[derive(Default)]
pub(crate) struct PeerState {
    pub(super) connected: bool,
    pub(super) incarnation: Option<Incarnation>,
}

impl Node {
    pub(super) fn on_inbound(&mut self, input: Inbound<NodeMsg>) {
        match input {
            Inbound::Hello { peer, incarnation, clock: _ } => {
                self.peers.entry(peer).or_default().incarnation = Some(incarnation);
                self.heard(peer);
                self.member_hello(peer, incarnation);
            }
            Inbound::Message { from, incarnation, env } => {
                self.heard(from);
                if env.to_incarnation.is_some_and(|to| to != self.settings.incarnation) {
                    // Meant for an earlier life of this node: the sender had not yet seen this incarnation.
                    self.observer.seen(Seen::Dropped { reason: "misaddressed" });
                    return;
                }
                match env.body {
                    NodeMsg::Algo(_) => self.deliver_to_cores(from, incarnation, env),
                    NodeMsg::Member(_) => self.on_member_msg(from, incarnation, env),
                    NodeMsg::Client(msg) => self.on_client_msg(from, incarnation, msg),
                }
            }
            Inbound::Connected { peer } => {
                self.peers.entry(peer).or_default().connected = true;
            }
            Inbound::Disconnected { peer } => {
                if let Some(p) = self.peers.get_mut(&peer) {
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

    /// An algorithm message for cores that are in a view: observed, then queued for its core.
    pub(super) fn algo_message(&mut self, from: NodeId, incarnation: Incarnation, env: Envelope<PeerMsg>) {
        let cause = self.observer.seen(Seen::Received { from, env: &env });
        self.links.received(from, &env, &cause);
        let algorithm = env.body.algorithm();
        let event = Event::Message { from, incarnation, epoch: env.epoch, msg: env.body };
        self.work.push_back((algorithm, event, cause));
    }

    /// Withdraws the waiting requests that can no longer be served (they are answered 503).
    pub(super) fn withdraw_unavailable(&mut self) {
        let doomed: Vec<(RequestId, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.withdrawn.is_none())
            .filter_map(|(id, _)| self.unavailable().map(|why| (*id, why)))
            .collect();
        for (id, why) in doomed {
            self.withdraw(id, ApiError::Unavailable(why));
        }
        let why = self.unavailable().map(ApiError::Unavailable);
        self.check_parked(why.as_ref());
    }
}
