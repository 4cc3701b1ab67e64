//! The cores table: one [`Engine`] per algorithm, behind one type, so the driver never matches on the
//! algorithm to reach a core.
//!
//! [`Cores::handle`] is the only way in (it routes an event to the algorithm's engine, unwrapping and
//! re-wrapping [`PeerMsg`]); [`Cores::get`] answers read-only questions through [`CoreView`].

use super::NodeSettings;
use super::msg::{Carried, PeerMsg};
use crate::algo::lamport::Lamport;
use crate::algo::probable_owner::ProbableOwner;
use crate::algo::ricart_agrawala::RicartAgrawala;
use crate::algo::{
    Action, Algorithm, CoreError, Engine, Event, Incarnation, LamportTs, LockView, Millis, NodeId, Peers,
    Protocol, ProtocolMessage, RequestId,
};

/// What the driver may ask a core without changing it.
pub(crate) trait CoreView {
    /// Whether the core has heard every peer's handshake since this node started.
    fn joined(&self) -> bool;
    /// The core's Lamport clock.
    fn clock(&self) -> LamportTs;
    /// The newest incarnation of `peer` the core knows (what its messages are addressed to).
    fn peer_incarnation(&self, peer: NodeId) -> Option<Incarnation>;
    /// What the core knows about `lock`.
    fn view(&self, lock: &str) -> LockView;
    /// How many local requests wait for `lock`.
    fn local_waiters(&self, lock: &str) -> usize;
    /// When the lease of the granted request `req` ends.
    fn lease_until(&self, req: RequestId) -> Option<Millis>;
}

impl<P: Protocol> CoreView for Engine<P> {
    fn joined(&self) -> bool {
        Engine::joined(self)
    }
    fn clock(&self) -> LamportTs {
        Engine::clock(self)
    }
    fn peer_incarnation(&self, peer: NodeId) -> Option<Incarnation> {
        self.peers().incarnation(peer)
    }
    fn view(&self, lock: &str) -> LockView {
        Engine::view(self, lock)
    }
    fn local_waiters(&self, lock: &str) -> usize {
        Engine::local_waiters(self, lock).len()
    }
    fn lease_until(&self, req: RequestId) -> Option<Millis> {
        Engine::lease_until(self, req)
    }
}

/// One engine and its action buffer, reused so that a turn allocates nothing for the core's actions.
struct Slot<P: Protocol> {
    engine: Engine<P>,
    actions: Vec<Action<P::Msg>>,
}

impl<P: Carried> Slot<P> {
    fn new(protocol: P, peers: Peers) -> Self {
        Slot { engine: Engine::new(protocol, peers), actions: Vec::new() }
    }

    fn in_view(protocol: P, settings: &NodeSettings, epoch: u64, members: &[(NodeId, Incarnation)]) -> Self {
        let engine = Engine::in_view(protocol, settings.me, settings.incarnation, epoch, members);
        Slot { engine, actions: Vec::new() }
    }

    fn handle(
        &mut self,
        now: Millis,
        event: Event<PeerMsg>,
        out: &mut Vec<Action<PeerMsg>>,
    ) -> Result<(), CoreError> {
        let from = match &event {
            Event::Message { from, .. } => *from,
            _ => self.engine.peers().me(),
        };
        let event = event.try_map(P::unwrap).map_err(|msg| CoreError::Unexpected {
            from,
            kind: msg.kind(),
            reason: "routed to the wrong algorithm",
        })?;
        let result = self.engine.handle(now, event, &mut self.actions);
        out.extend(self.actions.drain(..).map(|a| a.map(P::wrap)));
        result
    }
}

/// The three cores of a node.
pub(crate) struct Cores {
    lamport: Slot<Lamport>,
    ra: Slot<RicartAgrawala>,
    po: Slot<ProbableOwner>,
}

impl Cores {
    /// Fresh cores for a node that has just started (no peer heard yet).
    pub(crate) fn new(settings: &NodeSettings) -> Self {
        let (me, n, inc) = (settings.me, settings.peers.len(), settings.incarnation);
        let lamport = if settings.lamport_ack_elision {
            Lamport::with_ack_elision(me, n)
        } else {
            Lamport::fresh(me, n)
        };
        Cores {
            lamport: Slot::new(lamport, Peers::new(me, n, inc)),
            ra: Slot::new(RicartAgrawala::fresh(me, n), Peers::new(me, n, inc)),
            po: Slot::new(ProbableOwner::fresh(me, n), Peers::new(me, n, inc)),
        }
    }

    /// Fresh cores for a node whose first view is `epoch` with `members` (this node among them): they hold
    /// local requests until every member's handshake ([`Event::PeerIncarnation`]) has been heard.
    pub(crate) fn in_view(settings: &NodeSettings, epoch: u64, members: &[(NodeId, Incarnation)]) -> Self {
        let me = settings.me;
        let lamport = if settings.lamport_ack_elision {
            Lamport::with_ack_elision(me, 0)
        } else {
            Lamport::fresh(me, 0)
        };
        Cores {
            lamport: Slot::in_view(lamport, settings, epoch, members),
            ra: Slot::in_view(RicartAgrawala::fresh(me, 0), settings, epoch, members),
            po: Slot::in_view(ProbableOwner::fresh(me, 0), settings, epoch, members),
        }
    }

    /// Whether any core asks for a view bump (its epoch-tagged counters near their range).
    pub(crate) fn wants_view_bump(&self) -> bool {
        self.lamport.engine.wants_view_bump()
            || self.ra.engine.wants_view_bump()
            || self.po.engine.wants_view_bump()
    }

    /// The three cores' clocks, in [`Algorithm::ALL`] order (what the in-view handshake carries).
    pub(crate) fn clocks(&self) -> [LamportTs; 3] {
        [self.lamport.engine.clock(), self.ra.engine.clock(), self.po.engine.clock()]
    }

    /// Feeds `event` to `algorithm`'s core; its actions are appended to `out`.
    pub(crate) fn handle(
        &mut self,
        algorithm: Algorithm,
        now: Millis,
        event: Event<PeerMsg>,
        out: &mut Vec<Action<PeerMsg>>,
    ) -> Result<(), CoreError> {
        match algorithm {
            Algorithm::Lamport => self.lamport.handle(now, event, out),
            Algorithm::RicartAgrawala => self.ra.handle(now, event, out),
            Algorithm::ProbableOwner => self.po.handle(now, event, out),
        }
    }

    /// Read-only access to `algorithm`'s core.
    pub(crate) fn get(&self, algorithm: Algorithm) -> &dyn CoreView {
        match algorithm {
            Algorithm::Lamport => &self.lamport.engine,
            Algorithm::RicartAgrawala => &self.ra.engine,
            Algorithm::ProbableOwner => &self.po.engine,
        }
    }

    /// Whether every core has joined.
    pub(crate) fn all_joined(&self) -> bool {
        Algorithm::ALL.iter().all(|a| self.get(*a).joined())
    }

    /// The highest Lamport clock of the cores (what handshakes carry).
    pub(crate) fn max_clock(&self) -> LamportTs {
        Algorithm::ALL.iter().map(|a| self.get(*a).clock()).max().unwrap_or_default()
    }

    /// Whether Lamport's core runs with the footnote option (no REPLY made redundant by a later message).
    pub(crate) fn lamport_ack_elision(&self) -> bool {
        self.lamport.engine.protocol().ack_elision()
    }
}
