//! The reliable FIFO link to one peer, as a sans-I/O state machine.
//!
//! Lamport 1978 assumes reliable FIFO links; TCP gives that only while one connection lives. A [`Link`] keeps
//! the promise across dropped connections and tells restarts apart, for both directions of one node pair:
//! our data to the peer (sent over the connection *we* dial, acks coming back on it) and the peer's data to
//! us (over the connection *it* dials). It does no I/O and reads no clock: the tokio transport
//! ([`crate::net::transport`]) and the simulator ([`crate::sim`]) feed it handshakes, frames and the time,
//! and carry out what it answers. The model is stateright's ordered reliable link (sequence numbers, acks,
//! resend, dedup), plus what processes without stable storage need: incarnations.
//!
//! Rules (each has a unit test below, named after it):
//! - **Numbering.** Outbound messages are numbered 1, 2, 3, … per (our incarnation, peer incarnation) and stay
//!   unacked until a cumulative ack covers them. The queue is unbounded: a message to a peer that is down
//!   waits until the peer comes back or turns out to have restarted.
//! - **Resend.** On every (re)connect the acceptor's `Welcome.received` says how far it delivered; the link
//!   drops what that covers and transmits the rest, in order, on the new connection.
//! - **Dedup and gaps.** The receiver delivers `delivered + 1`, drops `seq ≤ delivered` as a duplicate, and
//!   treats a gap as a protocol error (the caller closes the connection; the resend fills it).
//! - **Replacement.** Each accepted handshake starts a new receive *generation* (computed before `received`),
//!   and only the current generation delivers: an older reader can never deliver after a newer one started.
//! - **Restarts.** A handshake with a newer peer incarnation (seen on either connection) is announced as
//!   [`LinkEvent::Hello`] once, before any message of that incarnation. The frames queued for the peer are
//!   then sorted by the incarnation their sender addressed ([`Addressed::to_incarnation`]): those addressed
//!   to an earlier incarnation, or to none, are void and discarded; those addressed to the new incarnation
//!   (or a later one) are kept and renumbered from 1. The address decides, not the moment of queueing: a
//!   core may learn of a restart from a third node (probable owner's recovery query) before this link's own
//!   handshake, and what it sends the new incarnation then must arrive. An outbound connection to the old
//!   incarnation is given up. On first contact nothing is discarded: what was queued was meant for whoever
//!   answers. A handshake older than the newest incarnation seen is refused ([`Refusal::Stale`]).
//! - **Bye.** A `Bye` on the peer's connection marks the link disconnected at once, gives up our connection to
//!   that incarnation, and refuses that incarnation's later handshakes ([`Refusal::SaidBye`]).
//! - **Liveness.** While data is unacked, acks must make progress within [`LinkConfig::ack_timeout_ms`], or
//!   the outbound connection is presumed dead ([`Link::on_timeout`]); an idle link is not probed.
//! - **Ack coalescing.** The receiver acks once per [`LinkConfig::ack_delay_ms`] or per
//!   [`LinkConfig::ack_every`] frames: acks only trim the sender's resend queue.
//!
//! "Connected" means: our outbound connection completed its handshake, is up, and the peer has not said Bye
//! since; [`LinkEvent::Connected`] / [`LinkEvent::Disconnected`] are emitted on transitions only.
//!
//! Must never: panic on any input, deliver a message twice or out of order within an incarnation pair, or
//! deliver a message of an incarnation before its Hello.

use crate::algo::{Incarnation, LamportTs, Millis, NodeId, PeerChange};
use std::collections::VecDeque;

/// What the link needs to know about a message it carries: the peer incarnation its sender addressed.
pub(crate) trait Addressed {
    /// The receiver incarnation the sender's core addressed (`None`: it knew none yet).
    fn to_incarnation(&self) -> Option<Incarnation>;
}

/// The link's timing parameters (milliseconds on the caller's clock).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LinkConfig {
    /// While frames are unacked, acks must make progress within this, or the outbound connection is
    /// presumed dead and given up (the resend and the duplicate filter make a false alarm harmless).
    pub ack_timeout_ms: u64,
    /// Longest the receiver waits before acknowledging what it delivered.
    pub ack_delay_ms: u64,
    /// The receiver acknowledges at once when this many frames are unacknowledged (and no more are buffered).
    pub ack_every: u64,
}

/// Names one outbound connection of a link (from [`Link::on_welcome`]); events of a connection that the link
/// gave up are ignored.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ConnId(u64);

/// Names one accepted connection (from [`Link::on_hello`]); only the newest generation delivers.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Generation(u64);

/// What the link tells its driver, in order (drain with [`Link::poll_event`] after every call).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LinkEvent {
    /// A handshake revealed a new incarnation of the peer (first contact or restart). Emitted once per
    /// incarnation, before any of its messages.
    Hello {
        /// The peer's new incarnation.
        incarnation: Incarnation,
        /// Its Lamport clock at the handshake.
        clock: LamportTs,
    },
    /// Our outbound connection is up.
    Connected,
    /// Our outbound connection went down, or the peer said Bye.
    Disconnected,
}

/// Why the link refuses a handshake.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// The incarnation is older than the newest one seen for the peer.
    Stale,
    /// That incarnation said Bye; it sends nothing more.
    SaidBye,
}

/// An accepted inbound handshake: the generation its frames carry, and what to put in the Welcome.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Accepted {
    /// The reader's generation.
    pub generation: Generation,
    /// The highest sequence number delivered from this dialer incarnation (the Welcome's `received`).
    pub received: u64,
}

/// What to do with an inbound data frame.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Delivery {
    /// Deliver it: the next message of the peer's `incarnation`.
    Deliver {
        /// The sender's incarnation.
        incarnation: Incarnation,
    },
    /// Already delivered: drop it.
    Duplicate,
}

/// An inbound data frame the current stream cannot take; the caller closes that connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub(crate) enum DataError {
    /// A newer connection from the peer took over: this one stops without delivering.
    #[error("replaced by a newer connection")]
    Replaced,
    /// A sequence number beyond the next one: only a protocol violation gets here.
    #[error("sequence gap: got {got}, expected {expected}")]
    Gap {
        /// The frame's number.
        got: u64,
        /// The number the stream expected.
        expected: u64,
    },
}

/// An ack that cannot be right; the caller closes the connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("ack {seq} beyond sent {sent}")]
pub(crate) struct AckBeyondSent {
    /// The acknowledged number.
    pub seq: u64,
    /// The highest number ever assigned.
    pub sent: u64,
}

/// Cumulative counters of one link.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct LinkStats {
    /// Data frames transmitted again after a reconnect.
    pub resends: u64,
    /// Inbound data frames received twice and dropped.
    pub duplicates_dropped: u64,
    /// Queued frames discarded because the peer restarted and they were addressed to its old incarnation.
    pub discarded_on_restart: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct OutConn {
    id: ConnId,
    /// The peer incarnation that answered this connection's handshake.
    incarnation: Incarnation,
    /// Highest sequence number transmitted (or acknowledged) on this connection.
    sent: u64,
    /// When acks last made progress (or data started waiting for one).
    progress: Millis,
}

/// The peer's data stream to us.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct RecvSlot {
    /// The dialer incarnation the stream belongs to.
    incarnation: Option<Incarnation>,
    /// Highest sequence number delivered.
    delivered: u64,
    /// Bumped by each accepted handshake; only the current generation delivers.
    generation: u64,
    /// That incarnation said Bye.
    said_bye: bool,
    /// Highest number acknowledged (the Welcome's `received` counts as an ack).
    acked: u64,
    /// When `delivered` first passed `acked`.
    unacked_since: Option<Millis>,
}

/// Both directions of the link to one peer; `P` is the queued outbound message (the transport keeps it
/// encoded, the simulator keeps the core's message).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Link<P> {
    /// The peer (for logs).
    peer: NodeId,
    cfg: LinkConfig,
    /// Newest peer incarnation seen in any handshake; outbound numbering belongs to it.
    known: Option<Incarnation>,
    /// Numbered messages not yet acknowledged, oldest first; the numbers are consecutive.
    unacked: VecDeque<(u64, P)>,
    next_seq: u64,
    /// Highest number ever transmitted in this numbering (to count resends).
    written_upto: u64,
    out: Option<OutConn>,
    conns: u64,
    established_once: bool,
    reconnects: u64,
    connected: bool,
    recv: RecvSlot,
    events: VecDeque<LinkEvent>,
    stats: LinkStats,
}

impl<P: Addressed> Link<P> {
    /// A link to `peer`, not met yet.
    pub(crate) fn new(peer: NodeId, cfg: LinkConfig) -> Self {
        Link {
            peer,
            cfg,
            known: None,
            unacked: VecDeque::new(),
            next_seq: 1,
            written_upto: 0,
            out: None,
            conns: 0,
            established_once: false,
            reconnects: 0,
            connected: false,
            recv: RecvSlot::default(),
            events: VecDeque::new(),
            stats: LinkStats::default(),
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Sending

    /// Numbers `msg` and queues it until acknowledged; returns its number. Transmit with
    /// [`Link::poll_transmit`].
    pub(crate) fn send(&mut self, now: Millis, msg: P) -> u64 {
        if self.unacked.is_empty()
            && let Some(out) = &mut self.out
        {
            // The ack clock starts when something starts waiting for an ack.
            out.progress = now;
        }
        let seq = self.next_seq;
        self.unacked.push_back((seq, msg));
        self.next_seq += 1;
        seq
    }

    /// The next message to write on connection `conn`, in order; `None` when everything queued was written
    /// (or `conn` was given up).
    pub(crate) fn poll_transmit(&mut self, conn: ConnId) -> Option<(u64, &P)> {
        let out = self.out.as_mut().filter(|o| o.id == conn)?;
        let front = self.unacked.front()?.0;
        let next = out.sent.max(front - 1) + 1;
        let (seq, msg) = self.unacked.get(usize::try_from(next - front).ok()?)?;
        out.sent = *seq;
        if *seq <= self.written_upto {
            self.stats.resends += 1;
        } else {
            self.written_upto = *seq;
        }
        Some((*seq, msg))
    }

    /// The number the next [`Link::send`] gets.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Messages queued and not yet acknowledged.
    pub(crate) fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    // ----------------------------------------------------------------------------------------------------
    // Our outbound connection

    /// Our handshake on a new outbound connection completed: the peer answered with its `incarnation`, clock
    /// and `received`. Returns the connection's id, or a refusal (an older process answered).
    pub(crate) fn on_welcome(
        &mut self,
        now: Millis,
        incarnation: Incarnation,
        clock: LamportTs,
        received: u64,
    ) -> Result<ConnId, Refusal> {
        if self.observe(incarnation, clock) == PeerChange::Stale {
            return Err(Refusal::Stale);
        }
        if received >= self.next_seq {
            // Only a protocol violation can get here: the peer claims frames we never numbered.
            tracing::error!(
                peer = %self.peer,
                received,
                next_seq = self.next_seq,
                "peer acknowledged unsent frames; renumbering"
            );
            self.unacked.clear();
            self.next_seq = received + 1;
        }
        self.trim(received);
        self.conns += 1;
        let id = ConnId(self.conns);
        self.out = Some(OutConn { id, incarnation, sent: received, progress: now });
        if self.established_once {
            self.reconnects += 1;
        }
        self.established_once = true;
        self.set_connected(true);
        Ok(id)
    }

    /// A cumulative ack arrived on connection `conn`.
    pub(crate) fn on_ack(&mut self, now: Millis, conn: ConnId, seq: u64) -> Result<(), AckBeyondSent> {
        let Some(out) = self.out.as_mut().filter(|o| o.id == conn) else {
            return Ok(());
        };
        if seq >= self.next_seq {
            return Err(AckBeyondSent { seq, sent: self.next_seq - 1 });
        }
        out.progress = now;
        out.sent = out.sent.max(seq);
        self.trim(seq);
        Ok(())
    }

    /// Connection `conn` closed, failed, or carried a Bye from the acceptor.
    pub(crate) fn on_outbound_closed(&mut self, conn: ConnId) {
        if self.out.as_ref().is_some_and(|o| o.id == conn) {
            self.out = None;
            self.set_connected(false);
        }
    }

    /// Whether `conn` is still the link's outbound connection (the link gives one up when the peer restarted
    /// or said Bye; the driver then closes it).
    pub(crate) fn is_current(&self, conn: ConnId) -> bool {
        self.out.as_ref().is_some_and(|o| o.id == conn)
    }

    /// When acks must have made progress, while data waits for one.
    pub(crate) fn poll_timeout(&self) -> Option<Millis> {
        let out = self.out.as_ref().filter(|_| !self.unacked.is_empty())?;
        Some(Millis::new(out.progress.get().saturating_add(self.cfg.ack_timeout_ms)))
    }

    /// Time passed: gives the outbound connection up if acks made no progress in time. Returns whether it did.
    pub(crate) fn on_timeout(&mut self, now: Millis) -> bool {
        match (self.poll_timeout(), &self.out) {
            (Some(deadline), Some(out)) if now >= deadline => {
                let id = out.id;
                self.on_outbound_closed(id);
                true
            }
            _ => false,
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // The peer's connection to us

    /// The peer's handshake on our listener: its `incarnation` and clock. Starts a new receive generation.
    pub(crate) fn on_hello(
        &mut self,
        incarnation: Incarnation,
        clock: LamportTs,
    ) -> Result<Accepted, Refusal> {
        if self.recv.said_bye && self.recv.incarnation == Some(incarnation) {
            return Err(Refusal::SaidBye);
        }
        if self.observe(incarnation, clock) == PeerChange::Stale {
            return Err(Refusal::Stale);
        }
        let r = &mut self.recv;
        if r.incarnation != Some(incarnation) {
            // The dialer restarted (or first contact): its numbering starts again at 1.
            *r = RecvSlot { incarnation: Some(incarnation), generation: r.generation, ..RecvSlot::default() };
        }
        // A new generation before `received` is read: the previous reader can no longer deliver.
        r.generation += 1;
        r.acked = r.delivered;
        r.unacked_since = None;
        Ok(Accepted { generation: Generation(r.generation), received: r.delivered })
    }

    /// A data frame numbered `seq` arrived on the connection of generation `generation`.
    pub(crate) fn on_data(
        &mut self,
        now: Millis,
        generation: Generation,
        seq: u64,
    ) -> Result<Delivery, DataError> {
        let r = &mut self.recv;
        let Some(incarnation) = r.incarnation.filter(|_| generation.0 == r.generation) else {
            return Err(DataError::Replaced);
        };
        if seq <= r.delivered {
            self.stats.duplicates_dropped += 1;
            Ok(Delivery::Duplicate)
        } else if seq == r.delivered + 1 {
            r.delivered = seq;
            r.unacked_since.get_or_insert(now);
            Ok(Delivery::Deliver { incarnation })
        } else {
            Err(DataError::Gap { got: seq, expected: r.delivered + 1 })
        }
    }

    /// The ack to send now on the connection of `generation`, if one is due. `more_buffered`: another frame
    /// is already waiting to be read (an ack at the `ack_every` threshold waits for it).
    pub(crate) fn poll_ack(
        &mut self,
        now: Millis,
        generation: Generation,
        more_buffered: bool,
    ) -> Option<u64> {
        let r = &mut self.recv;
        if generation.0 != r.generation || r.delivered <= r.acked {
            return None;
        }
        let many = r.delivered - r.acked >= self.cfg.ack_every && !more_buffered;
        let late =
            r.unacked_since.is_some_and(|t| now.get() >= t.get().saturating_add(self.cfg.ack_delay_ms));
        if !(many || late) {
            return None;
        }
        r.acked = r.delivered;
        r.unacked_since = None;
        Some(r.delivered)
    }

    /// When the delayed ack on the connection of `generation` is due, if one is owed.
    pub(crate) fn ack_deadline(&self, generation: Generation) -> Option<Millis> {
        let r = &self.recv;
        if generation.0 != r.generation || r.delivered <= r.acked {
            return None;
        }
        r.unacked_since.map(|t| Millis::new(t.get().saturating_add(self.cfg.ack_delay_ms)))
    }

    /// The peer said Bye on the connection of `generation`. Returns whether that was the current one.
    pub(crate) fn on_inbound_bye(&mut self, generation: Generation) -> bool {
        if generation.0 != self.recv.generation || self.recv.incarnation.is_none() {
            return false;
        }
        self.recv.said_bye = true;
        self.set_connected(false);
        if self.out.as_ref().is_some_and(|o| Some(o.incarnation) == self.recv.incarnation) {
            self.out = None;
        }
        true
    }

    // ----------------------------------------------------------------------------------------------------
    // State

    /// The next event for the driver.
    pub(crate) fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// The newest peer incarnation seen.
    pub(crate) fn known(&self) -> Option<Incarnation> {
        self.known
    }

    /// Whether the outbound connection is up (see the module doc).
    pub(crate) fn connected(&self) -> bool {
        self.connected
    }

    /// Successful outbound handshakes after the first.
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// The counters.
    pub(crate) fn stats(&self) -> LinkStats {
        self.stats
    }

    fn set_connected(&mut self, up: bool) {
        if self.connected != up {
            self.connected = up;
            self.events.push_back(if up { LinkEvent::Connected } else { LinkEvent::Disconnected });
        }
    }

    fn trim(&mut self, acked: u64) {
        while self.unacked.front().is_some_and(|(s, _)| *s <= acked) {
            self.unacked.pop_front();
        }
    }

    /// Records a handshake's incarnation: announces a new one, and on a restart voids what was addressed to
    /// the old one.
    fn observe(&mut self, incarnation: Incarnation, clock: LamportTs) -> PeerChange {
        let change = match self.known {
            None => PeerChange::Joined,
            Some(k) if incarnation > k => PeerChange::Restarted,
            Some(k) if incarnation == k => PeerChange::Same,
            Some(_) => PeerChange::Stale,
        };
        if matches!(change, PeerChange::Joined | PeerChange::Restarted) {
            self.known = Some(incarnation);
            self.events.push_back(LinkEvent::Hello { incarnation, clock });
        }
        if change == PeerChange::Restarted {
            tracing::info!(peer = %self.peer, incarnation = incarnation.get(), "peer restarted");
            self.renumber_for(incarnation);
            if self.out.as_ref().is_some_and(|o| o.incarnation < incarnation) {
                // That connection leads to a dead process.
                self.out = None;
                self.set_connected(false);
            }
        }
        change
    }

    /// The peer restarted as `incarnation`: keeps what was addressed to it (or later), renumbered from 1.
    fn renumber_for(&mut self, incarnation: Incarnation) {
        let before = self.unacked.len();
        let kept: VecDeque<P> = self
            .unacked
            .drain(..)
            .map(|(_, msg)| msg)
            .filter(|msg| msg.to_incarnation() >= Some(incarnation))
            .collect();
        let discarded = (before - kept.len()) as u64;
        if discarded > 0 {
            self.stats.discarded_on_restart += discarded;
            tracing::info!(
                peer = %self.peer,
                discarded,
                kept = kept.len(),
                "discarding frames addressed to the peer's old incarnation"
            );
        }
        self.unacked = kept.into_iter().zip(1..).map(|(msg, seq)| (seq, msg)).collect();
        self.next_seq = self.unacked.len() as u64 + 1;
        self.written_upto = 0;
    }
}

#[cfg(test)]
mod tests {
    //! Scripted: events in, exact actions out, one rule per test.

    use super::*;

    /// A test message: a label and the incarnation its sender addressed.
    #[derive(Clone, Debug, PartialEq, Eq, Hash)]
    struct Msg(&'static str, Option<Incarnation>);

    impl Addressed for Msg {
        fn to_incarnation(&self) -> Option<Incarnation> {
            self.1
        }
    }

    const CFG: LinkConfig = LinkConfig { ack_timeout_ms: 100, ack_delay_ms: 5, ack_every: 3 };
    const T0: Millis = Millis::new(0);
    const I1: Incarnation = Incarnation::new(1);
    const I2: Incarnation = Incarnation::new(2);
    const CLOCK: LamportTs = LamportTs::new(7);

    fn link() -> Link<Msg> {
        Link::new(NodeId::new(1), CFG)
    }

    fn events(l: &mut Link<Msg>) -> Vec<LinkEvent> {
        std::iter::from_fn(|| l.poll_event()).collect()
    }

    fn transmit_all(l: &mut Link<Msg>, conn: ConnId) -> Vec<(u64, &'static str)> {
        std::iter::from_fn(|| l.poll_transmit(conn).map(|(s, m)| (s, m.0))).collect()
    }

    fn hello(incarnation: Incarnation) -> LinkEvent {
        LinkEvent::Hello { incarnation, clock: CLOCK }
    }

    fn send(l: &mut Link<Msg>, label: &'static str, to: Option<Incarnation>) -> u64 {
        l.send(T0, Msg(label, to))
    }

    #[test]
    fn numbering_starts_at_one_and_transmits_in_order_once_connected() {
        let mut l = link();
        assert_eq!([send(&mut l, "a", None), send(&mut l, "b", None)], [1, 2]);
        let c = l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        assert_eq!(events(&mut l), [hello(I1), LinkEvent::Connected]);
        assert_eq!(transmit_all(&mut l, c), [(1, "a"), (2, "b")]);
        send(&mut l, "c", Some(I1));
        assert_eq!(transmit_all(&mut l, c), [(3, "c")]);
        assert_eq!(l.stats().resends, 0);
    }

    #[test]
    fn cumulative_ack_trims_the_unacked_queue() {
        let mut l = link();
        let c = l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        for m in ["a", "b", "c", "d"] {
            send(&mut l, m, Some(I1));
        }
        transmit_all(&mut l, c);
        l.on_ack(T0, c, 3).unwrap();
        assert_eq!(l.unacked_len(), 1);
        // An older ack changes nothing.
        l.on_ack(T0, c, 1).unwrap();
        assert_eq!(l.unacked_len(), 1);
    }

    #[test]
    fn an_ack_beyond_what_was_numbered_is_an_error() {
        let mut l = link();
        let c = l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        send(&mut l, "a", Some(I1));
        assert_eq!(l.on_ack(T0, c, 2), Err(AckBeyondSent { seq: 2, sent: 1 }));
    }

    #[test]
    fn reconnect_resends_the_tail_after_the_acceptors_received() {
        let mut l = link();
        let c1 = l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        for m in ["a", "b", "c", "d"] {
            send(&mut l, m, Some(I1));
        }
        assert_eq!(transmit_all(&mut l, c1).len(), 4);
        l.on_outbound_closed(c1);
        assert_eq!(events(&mut l), [hello(I1), LinkEvent::Connected, LinkEvent::Disconnected]);
        assert_eq!(l.poll_transmit(c1), None, "a connection that was given up transmits nothing");
        // The acceptor delivered 1 and 2 before the cut.
        let c2 = l.on_welcome(T0, I1, CLOCK, 2).unwrap();
        assert_eq!(events(&mut l), [LinkEvent::Connected], "the same incarnation says no new Hello");
        assert_eq!(transmit_all(&mut l, c2), [(3, "c"), (4, "d")]);
        assert_eq!(l.stats().resends, 2);
        assert_eq!(l.reconnects(), 1);
        // Events of the old connection are ignored.
        assert_eq!(l.on_ack(T0, c1, 99), Ok(()));
        assert_eq!(l.unacked_len(), 2);
    }

    #[test]
    fn the_receiver_delivers_in_order_and_drops_duplicates_at_or_below_delivered() {
        let mut l = link();
        let g = l.on_hello(I1, CLOCK).unwrap();
        assert_eq!(g.received, 0);
        assert_eq!(events(&mut l), [hello(I1)]);
        let deliver = Ok(Delivery::Deliver { incarnation: I1 });
        assert_eq!(l.on_data(T0, g.generation, 1), deliver);
        assert_eq!(l.on_data(T0, g.generation, 2), deliver);
        assert_eq!(l.on_data(T0, g.generation, 2), Ok(Delivery::Duplicate));
        assert_eq!(l.on_data(T0, g.generation, 1), Ok(Delivery::Duplicate));
        assert_eq!(l.stats().duplicates_dropped, 2);
        // A reconnect of the same incarnation resumes after what was delivered.
        let g2 = l.on_hello(I1, CLOCK).unwrap();
        assert_eq!(g2.received, 2);
        assert_eq!(l.on_data(T0, g2.generation, 3), deliver);
        assert!(events(&mut l).is_empty(), "no second Hello for the same incarnation");
    }

    #[test]
    fn a_sequence_gap_is_a_protocol_error() {
        let mut l = link();
        let g = l.on_hello(I1, CLOCK).unwrap().generation;
        assert_eq!(l.on_data(T0, g, 2), Err(DataError::Gap { got: 2, expected: 1 }));
    }

    #[test]
    fn a_newer_connection_replaces_the_reader_of_the_older_one() {
        let mut l = link();
        let old = l.on_hello(I1, CLOCK).unwrap().generation;
        l.on_data(T0, old, 1).unwrap();
        let new = l.on_hello(I1, CLOCK).unwrap().generation;
        assert_eq!(l.on_data(T0, old, 2), Err(DataError::Replaced));
        assert_eq!(l.on_data(T0, new, 2), Ok(Delivery::Deliver { incarnation: I1 }));
    }

    #[test]
    fn a_restarted_dialer_starts_its_numbering_again() {
        let mut l = link();
        let g = l.on_hello(I1, CLOCK).unwrap().generation;
        l.on_data(T0, g, 1).unwrap();
        l.on_data(T0, g, 2).unwrap();
        let g2 = l.on_hello(I2, CLOCK).unwrap();
        assert_eq!(g2.received, 0);
        assert_eq!(events(&mut l), [hello(I1), hello(I2)]);
        assert_eq!(l.on_data(T0, g2.generation, 1), Ok(Delivery::Deliver { incarnation: I2 }));
    }

    #[test]
    fn restart_discards_frames_addressed_to_the_old_incarnation_and_renumbers() {
        let mut l = link();
        let c = l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        send(&mut l, "old-1", Some(I1));
        send(&mut l, "unaddressed", None);
        send(&mut l, "old-2", Some(I1));
        transmit_all(&mut l, c);
        events(&mut l);
        // The restarted peer dials us first.
        l.on_hello(I2, CLOCK).unwrap();
        assert_eq!(events(&mut l), [hello(I2), LinkEvent::Disconnected]);
        assert!(!l.is_current(c), "the connection to the dead incarnation is given up");
        assert_eq!(l.stats().discarded_on_restart, 3);
        assert_eq!(send(&mut l, "new", Some(I2)), 1, "numbering starts again for the new incarnation");
        let c2 = l.on_welcome(T0, I2, CLOCK, 0).unwrap();
        assert_eq!(transmit_all(&mut l, c2), [(1, "new")]);
        assert_eq!(l.stats().resends, 0);
    }

    #[test]
    fn restart_keeps_frames_addressed_to_the_new_incarnation() {
        // A core learnt of the restart from a third node and addressed the new incarnation before this
        // link's own handshake with it: those frames must reach it.
        let mut l = link();
        let c = l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        send(&mut l, "for-old", Some(I1));
        transmit_all(&mut l, c);
        l.on_outbound_closed(c);
        send(&mut l, "query-for-new", Some(I2));
        send(&mut l, "sync-for-new", Some(I2));
        events(&mut l);
        let c2 = l.on_welcome(T0, I2, CLOCK, 0).unwrap();
        assert_eq!(events(&mut l), [hello(I2), LinkEvent::Connected]);
        assert_eq!(l.stats().discarded_on_restart, 1);
        assert_eq!(transmit_all(&mut l, c2), [(1, "query-for-new"), (2, "sync-for-new")]);
    }

    #[test]
    fn first_contact_keeps_what_was_queued_for_whoever_answers() {
        let mut l = link();
        send(&mut l, "a", None);
        send(&mut l, "b", None);
        l.on_hello(I1, CLOCK).unwrap();
        let c = l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        assert_eq!(events(&mut l), [hello(I1), LinkEvent::Connected]);
        assert_eq!(transmit_all(&mut l, c), [(1, "a"), (2, "b")]);
        assert_eq!(l.stats().discarded_on_restart, 0);
    }

    #[test]
    fn a_handshake_older_than_the_newest_incarnation_is_refused_on_either_side() {
        let mut l = link();
        l.on_hello(I2, CLOCK).unwrap();
        assert_eq!(l.on_hello(I1, CLOCK), Err(Refusal::Stale));
        assert_eq!(l.on_welcome(T0, I1, CLOCK, 0), Err(Refusal::Stale));
        assert_eq!(events(&mut l), [hello(I2)]);
        assert!(!l.connected());
    }

    #[test]
    fn bye_disconnects_at_once_and_refuses_that_incarnation_later() {
        let mut l = link();
        let c = l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        let g = l.on_hello(I1, CLOCK).unwrap().generation;
        events(&mut l);
        assert!(l.on_inbound_bye(g));
        assert_eq!(events(&mut l), [LinkEvent::Disconnected]);
        assert!(!l.is_current(c), "our connection to that incarnation is given up too");
        assert_eq!(l.on_hello(I1, CLOCK), Err(Refusal::SaidBye));
        // Its successor is welcome.
        assert!(l.on_hello(I2, CLOCK).is_ok());
    }

    #[test]
    fn acks_are_coalesced_until_the_delay_or_every_n_frames() {
        let mut l = link();
        let g = l.on_hello(I1, CLOCK).unwrap().generation;
        l.on_data(Millis::new(10), g, 1).unwrap();
        assert_eq!(l.poll_ack(Millis::new(10), g, false), None);
        assert_eq!(l.ack_deadline(g), Some(Millis::new(15)));
        assert_eq!(l.poll_ack(Millis::new(15), g, false), Some(1));
        assert_eq!(l.ack_deadline(g), None);
        // Three frames at once: acked at once, unless another frame is already buffered.
        for seq in 2..=4 {
            l.on_data(Millis::new(20), g, seq).unwrap();
        }
        assert_eq!(l.poll_ack(Millis::new(20), g, true), None);
        assert_eq!(l.poll_ack(Millis::new(20), g, false), Some(4));
        assert_eq!(l.poll_ack(Millis::new(99), g, false), None, "nothing new to acknowledge");
    }

    #[test]
    fn no_ack_progress_within_the_timeout_gives_the_connection_up() {
        let mut l = link();
        let c = l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        assert_eq!(l.poll_timeout(), None, "an idle link is not probed");
        l.send(Millis::new(50), Msg("a", Some(I1)));
        transmit_all(&mut l, c);
        assert_eq!(l.poll_timeout(), Some(Millis::new(150)));
        assert!(!l.on_timeout(Millis::new(149)));
        l.send(Millis::new(140), Msg("b", Some(I1)));
        l.on_ack(Millis::new(140), c, 1).unwrap();
        assert_eq!(l.poll_timeout(), Some(Millis::new(240)), "progress restarts the clock");
        events(&mut l);
        assert!(l.on_timeout(Millis::new(240)));
        assert!(!l.is_current(c));
        assert_eq!(events(&mut l), [LinkEvent::Disconnected]);
    }

    #[test]
    fn hello_is_announced_once_per_incarnation_whichever_handshake_sees_it_first() {
        let mut l = link();
        l.on_welcome(T0, I1, CLOCK, 0).unwrap();
        l.on_hello(I1, CLOCK).unwrap();
        l.on_hello(I2, CLOCK).unwrap();
        l.on_welcome(T0, I2, CLOCK, 0).unwrap();
        assert_eq!(
            events(&mut l),
            [hello(I1), LinkEvent::Connected, hello(I2), LinkEvent::Disconnected, LinkEvent::Connected]
        );
        assert_eq!(l.known(), Some(I2));
    }
}
