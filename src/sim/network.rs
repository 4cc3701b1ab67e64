//! The simulator's one test network: every node pair linked by the real [`Link`] state machines over
//! simulated connections that can be cut, that die with a crashed process, and that are dialed again.
//!
//! Like the tokio transport, each node dials every peer for its own data (one outbound connection per
//! directed pair) and accepts the peers' connections for theirs. A connection carries frames in both
//! directions, each direction FIFO with a random delay per frame (`max(now + delay, last arrival)`), and runs
//! the handshake the transport runs (Hello with the dialer's incarnation and clock; Welcome with the
//! acceptor's incarnation, clock and `received`, or a refusal). So handshakes reach the links and the cores
//! in the order the real transport produces: a restarted node's Hello at one peer, a Welcome at another, a
//! third node's message about the restart in between. Faults: a *cut* loses the frames in flight on a
//! connection and closes both ends after a delay; a *crash* closes every connection of the node (frames it
//! had sent still arrive, frames to it are lost, its links and queues die with it). Closed ends redial with
//! capped exponential backoff; a restarted node dials everybody.
//!
//! Randomness: a data frame's delay comes from the run's main generator, everything else (handshakes, acks,
//! backoff, cuts) from the network's own stream, so a run without faults is the same run as on ideal FIFO
//! queues (acks do not move anything a core sees) and fault-free message counts stay exact. Acks are sent
//! when a data frame finds one due (no delayed-ack timer), so they cost few events.
//!
//! Must never: deliver to a core anything its own link did not deliver, let one direction of a connection
//! reorder, or panic on a frame for a connection that is gone.

use super::SplitMix64;
use crate::algo::{Event, Incarnation, LamportTs, Millis, NodeId};
use crate::net::link::{Addressed, ConnId, Delivery, Generation, Link, LinkConfig, LinkEvent};
use std::collections::VecDeque;
use std::fmt::Debug;

/// A core's message in a link queue, with the incarnation of the receiver its core addressed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SimMsg<M> {
    pub msg: M,
    pub to: Option<Incarnation>,
    /// The sender's view epoch.
    pub epoch: u64,
}

impl<M> Addressed for SimMsg<M> {
    fn to_incarnation(&self) -> Option<Incarnation> {
        self.to
    }
}

/// A frame on a simulated connection.
#[derive(Clone, Debug)]
pub(super) enum Wire<M> {
    /// Dialer → acceptor: who is calling.
    Hello { incarnation: Incarnation, clock: LamportTs },
    /// Acceptor → dialer: accepted, and how far the dialer's stream was delivered.
    Welcome { incarnation: Incarnation, clock: LamportTs, received: u64 },
    /// Acceptor → dialer: refused (stale incarnation).
    Refuse,
    /// Dialer → acceptor: one message.
    Data { seq: u64, msg: SimMsg<M> },
    /// Acceptor → dialer: cumulative ack.
    Ack { seq: u64 },
    /// The other end closed (or the connection was reset by a cut).
    Close,
}

/// Network work scheduled on the simulator's clock.
#[derive(Clone, Debug)]
pub(super) enum NetItem<M> {
    /// A frame arrives at one end of connection `conn`.
    Frame { conn: u64, to_acceptor: bool, wire: Wire<M> },
    /// `node` (still incarnation `inc`?) dials `peer` again.
    Dial { node: NodeId, peer: NodeId, inc: Incarnation },
    /// A fault: `node`'s outbound connection to `peer` is cut, if it is up.
    Cut { node: NodeId, peer: NodeId },
}

/// What a network step asks of the simulator, in order.
#[derive(Debug)]
pub(super) struct NetOut<M> {
    /// Work to schedule.
    pub schedule: Vec<(Millis, NetItem<M>)>,
    /// Events for the cores, in the order their links emitted them.
    pub deliver: VecDeque<(NodeId, Event<M>)>,
    /// Trace lines (only while tracing).
    pub notes: Vec<String>,
}

impl<M> Default for NetOut<M> {
    fn default() -> Self {
        NetOut { schedule: Vec::new(), deliver: VecDeque::new(), notes: Vec::new() }
    }
}

/// One simulated TCP connection, from its dialer to its acceptor.
#[derive(Debug)]
struct Conn {
    dialer: NodeId,
    acceptor: NodeId,
    /// The processes at the two ends; a frame for an end whose process is gone is lost.
    dialer_inc: Incarnation,
    acceptor_inc: Incarnation,
    /// The dialer link's name for it, once the Welcome arrived.
    link_conn: Option<ConnId>,
    /// The acceptor link's receive generation, once the Hello was accepted.
    generation: Option<Generation>,
    /// Last arrival time per direction (0: to the acceptor, 1: to the dialer), for FIFO.
    last: [Millis; 2],
    /// Which ends are still open (0: acceptor, 1: dialer).
    open: [bool; 2],
    /// Cut: every frame still in flight on it is lost.
    cut: bool,
}

/// The connections by id (ids count up from 1; a slot empties when both ends closed).
#[derive(Debug, Default)]
struct Conns(Vec<Option<Conn>>);

impl Conns {
    fn get(&self, id: &u64) -> Option<&Conn> {
        self.0.get(usize::try_from(*id).ok()?)?.as_ref()
    }

    fn get_mut(&mut self, id: &u64) -> Option<&mut Conn> {
        self.0.get_mut(usize::try_from(*id).ok()?)?.as_mut()
    }

    fn insert(&mut self, id: u64, conn: Conn) {
        let i = usize::try_from(id).unwrap_or(usize::MAX);
        if self.0.len() <= i {
            self.0.resize_with(i + 1, || None);
        }
        self.0[i] = Some(conn);
    }

    fn remove(&mut self, id: &u64) {
        if let Some(slot) = usize::try_from(*id).ok().and_then(|i| self.0.get_mut(i)) {
            *slot = None;
        }
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Conn)> {
        self.0.iter().enumerate().filter_map(|(i, c)| c.as_ref().map(|c| (i as u64, c)))
    }
}

/// One node's dialer for one peer.
#[derive(Clone, Debug, Default)]
struct Dialer {
    /// The connection being set up or up.
    conn: Option<u64>,
    /// The next backoff ceiling in ms (0: the first retry is immediate-ish).
    backoff: u64,
    /// A `Dial` item is scheduled.
    pending: bool,
}

/// The test network (see the module doc).
pub(super) struct Network<M> {
    n: usize,
    max_delay: u64,
    link_cfg: LinkConfig,
    rng: SplitMix64,
    tracing: bool,
    /// Each node's incarnation while it is up.
    up: Vec<Option<Incarnation>>,
    /// `links[i * n + j]`: node `i`'s link to peer `j`; new at every restart of `i`.
    links: Vec<Link<SimMsg<M>>>,
    dialers: Vec<Dialer>,
    conns: Conns,
    next_conn: u64,
    data_in_flight: usize,
}

/// Events a link emitted, as the core sees them (Connected/Disconnected concern only the node's readiness).
fn core_events<M>(peer: NodeId, link: &mut Link<SimMsg<M>>, node: NodeId, out: &mut NetOut<M>) {
    while let Some(ev) = link.poll_event() {
        if let LinkEvent::Hello { incarnation, clock } = ev {
            out.deliver.push_back((node, Event::PeerIncarnation { peer, incarnation, clock }));
        }
    }
}

impl<M: Clone + Debug> Network<M> {
    /// `n` nodes, all up at incarnation 0 and linked: the cluster formed at time zero, as the cores assume.
    pub(super) fn formed(n: usize, max_delay: u64, seed: u64, tracing: bool) -> Self {
        let max_delay = max_delay.max(1);
        let link_cfg = LinkConfig {
            // No pauses are simulated: a live connection always acks, and a dead one is closed.
            ack_timeout_ms: u64::MAX,
            ack_delay_ms: 10 * max_delay,
            ack_every: 16,
        };
        let mut net = Network {
            n,
            max_delay,
            link_cfg,
            rng: SplitMix64::new(seed ^ 0x6e65_7477_6f72_6b21),
            tracing,
            up: vec![Some(Incarnation::new(0)); n],
            links: (0..n * n).map(|k| Link::new(NodeId::new((k % n) as u16), link_cfg)).collect(),
            dialers: vec![Dialer::default(); n * n],
            conns: Conns::default(),
            next_conn: 0,
            data_in_flight: 0,
        };
        for (i, j) in net.pairs() {
            let (di, dj) = (NodeId::new(i as u16), NodeId::new(j as u16));
            let id = net.open_conn(di, dj, Incarnation::new(0), Incarnation::new(0));
            let accepted = net.links[j * n + i].on_hello(Incarnation::new(0), LamportTs::new(0));
            let welcome =
                net.links[i * n + j].on_welcome(Millis::new(0), Incarnation::new(0), LamportTs::new(0), 0);
            if let (Some(c), Ok(a), Ok(w)) = (net.conns.get_mut(&id), accepted, welcome) {
                c.generation = Some(a.generation);
                c.link_conn = Some(w);
            }
        }
        // The cores start knowing every peer: the formation handshakes say nothing new to them.
        for link in &mut net.links {
            while link.poll_event().is_some() {}
        }
        net
    }

    fn pairs(&self) -> impl Iterator<Item = (usize, usize)> + use<M> {
        let n = self.n;
        (0..n).flat_map(move |i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
    }

    fn at(&self, node: NodeId, peer: NodeId) -> usize {
        node.index() * self.n + peer.index()
    }

    /// Data frames on the wire.
    pub(super) fn data_in_flight(&self) -> usize {
        self.data_in_flight
    }

    /// Whether every link between live nodes is connected to its peer's current incarnation.
    pub(super) fn settled(&self) -> Result<(), String> {
        for (i, j) in self.pairs() {
            let (Some(_), Some(inc_j)) = (self.up[i], self.up[j]) else { continue };
            let link = &self.links[i * self.n + j];
            if !link.connected() || link.known() != Some(inc_j) {
                return Err(format!(
                    "the network never settled: node {i}'s link to node {j} is {} and knows {:?}, node {j} is \
                     incarnation {}",
                    if link.connected() { "connected" } else { "down" },
                    link.known(),
                    inc_j.get()
                ));
            }
        }
        Ok(())
    }

    /// Schedules up to two cuts of random connections within `window` ms.
    pub(super) fn schedule_cuts(&mut self, window: u64, out: &mut NetOut<M>) {
        if self.n < 2 {
            return;
        }
        for _ in 0..self.rng.below(3) {
            let at = Millis::new(self.rng.below(window + 1));
            let node = self.rng.below(self.n as u64) as usize;
            let peer = (node + 1 + self.rng.below(self.n as u64 - 1) as usize) % self.n;
            out.schedule
                .push((at, NetItem::Cut { node: NodeId::new(node as u16), peer: NodeId::new(peer as u16) }));
        }
    }

    fn note(&self, out: &mut NetOut<M>, line: impl FnOnce() -> String) {
        if self.tracing {
            out.notes.push(line());
        }
    }

    /// Traces what `node`'s link to `peer` discarded on a restart, if anything (`before`: its count before).
    fn note_discards(&self, out: &mut NetOut<M>, node: NodeId, peer: NodeId, before: u64) {
        let k = self.at(node, peer);
        let now = self.links[k].stats().discarded_on_restart;
        if now > before {
            self.note(out, || {
                format!(
                    "    link {node}→{peer} discards {} frames addressed to the old incarnation",
                    now - before
                )
            });
        }
    }

    fn open_conn(&mut self, dialer: NodeId, acceptor: NodeId, di: Incarnation, ai: Incarnation) -> u64 {
        self.next_conn += 1;
        let id = self.next_conn;
        self.conns.insert(
            id,
            Conn {
                dialer,
                acceptor,
                dialer_inc: di,
                acceptor_inc: ai,
                link_conn: None,
                generation: None,
                last: [Millis::new(0); 2],
                open: [true, true],
                cut: false,
            },
        );
        let k = self.at(dialer, acceptor);
        self.dialers[k].conn = Some(id);
        id
    }

    /// Puts `wire` on connection `id` toward one end, FIFO behind that direction's earlier frames.
    fn put(
        &mut self,
        now: Millis,
        delay: u64,
        id: u64,
        to_acceptor: bool,
        wire: Wire<M>,
        out: &mut NetOut<M>,
    ) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        let dir = usize::from(!to_acceptor);
        let at = Millis::new(now.get() + delay).max(c.last[dir]);
        c.last[dir] = at;
        if matches!(wire, Wire::Data { .. }) {
            self.data_in_flight += 1;
        }
        out.schedule.push((at, NetItem::Frame { conn: id, to_acceptor, wire }));
    }

    fn net_delay(&mut self) -> u64 {
        1 + self.rng.below(self.max_delay)
    }

    /// A core's message from `from` to `to`: queued in the link, written at once if the connection is up.
    pub(super) fn send(
        &mut self,
        now: Millis,
        rng: &mut SplitMix64,
        from: NodeId,
        to: NodeId,
        msg: SimMsg<M>,
        out: &mut NetOut<M>,
    ) {
        if self.up[from.index()].is_none() {
            return;
        }
        let k = self.at(from, to);
        self.links[k].send(now, msg);
        self.transmit(now, rng, from, to, out);
    }

    /// Writes whatever `node`'s link to `peer` has to transmit on its current connection.
    fn transmit(
        &mut self,
        now: Millis,
        rng: &mut SplitMix64,
        node: NodeId,
        peer: NodeId,
        out: &mut NetOut<M>,
    ) {
        let k = self.at(node, peer);
        let Some(id) = self.dialers[k].conn else { return };
        let Some(cid) = self.conns.get(&id).and_then(|c| c.link_conn) else { return };
        while let Some((seq, msg)) = self.links[k].poll_transmit(cid) {
            let wire = Wire::Data { seq, msg: msg.clone() };
            let delay = 1 + rng.below(self.max_delay);
            self.put(now, delay, id, true, wire, out);
        }
    }

    /// Closes `node`'s end of connection `id` (the other end hears Close, after what it already carries).
    fn close_end(&mut self, now: Millis, id: u64, dialer_end: bool, out: &mut NetOut<M>) {
        let Some(c) = self.conns.get_mut(&id) else { return };
        c.open[usize::from(dialer_end)] = false;
        if c.open == [false, false] {
            self.conns.remove(&id);
            return;
        }
        let delay = self.net_delay();
        self.put(now, delay, id, dialer_end, Wire::Close, out);
    }

    /// The dialer's side of connection `id` is over: tell its link, and dial again after backoff.
    fn dialer_closed(&mut self, now: Millis, id: u64, out: &mut NetOut<M>) {
        let Some(c) = self.conns.get(&id) else { return };
        let (node, peer, inc, cid) = (c.dialer, c.acceptor, c.dialer_inc, c.link_conn);
        self.close_end(now, id, true, out);
        let k = self.at(node, peer);
        if self.dialers[k].conn == Some(id) {
            self.dialers[k].conn = None;
        }
        if self.up[node.index()] != Some(inc) {
            return;
        }
        if let Some(cid) = cid {
            self.links[k].on_outbound_closed(cid);
            core_events(peer, &mut self.links[k], node, out);
        }
        self.redial(now, node, peer, inc, out);
    }

    fn redial(&mut self, now: Millis, node: NodeId, peer: NodeId, inc: Incarnation, out: &mut NetOut<M>) {
        let k = self.at(node, peer);
        if self.dialers[k].pending {
            return;
        }
        let ceiling = self.dialers[k].backoff.max(1);
        self.dialers[k].backoff = (ceiling * 2).min(4 * self.max_delay);
        let delay = ceiling.div_ceil(2) + self.rng.below(ceiling / 2 + 1);
        self.dialers[k].pending = true;
        out.schedule.push((Millis::new(now.get() + delay), NetItem::Dial { node, peer, inc }));
    }

    /// After a link call at `node` about `peer`: if the link gave its outbound connection up (the peer
    /// restarted), close it and dial the new process.
    fn drop_given_up(&mut self, now: Millis, node: NodeId, peer: NodeId, out: &mut NetOut<M>) {
        let k = self.at(node, peer);
        let Some(id) = self.dialers[k].conn else { return };
        let given_up = self.conns.get(&id).is_some_and(|c| {
            c.link_conn.is_some_and(|cid| !self.links[k].is_current(cid))
                || self.links[k].known().is_some_and(|known| known > c.acceptor_inc)
        });
        if given_up {
            self.note(out, || {
                format!("    link {node}→{peer} gives up its connection to the old incarnation")
            });
            self.dialer_closed(now, id, out);
        }
    }

    /// Handles one scheduled item. `clock(node)` is the node's Lamport clock (for handshakes). An `Err` is a
    /// breach of the link's promises, which only a bug can cause.
    pub(super) fn step(
        &mut self,
        now: Millis,
        rng: &mut SplitMix64,
        item: NetItem<M>,
        clock: impl Fn(NodeId) -> LamportTs,
        out: &mut NetOut<M>,
    ) -> Result<(), String> {
        match item {
            NetItem::Frame { conn, to_acceptor, wire } => {
                if matches!(wire, Wire::Data { .. }) {
                    self.data_in_flight -= 1;
                }
                self.arrive(now, rng, conn, to_acceptor, wire, &clock, out)?;
            }
            NetItem::Dial { node, peer, inc } => {
                let k = self.at(node, peer);
                self.dialers[k].pending = false;
                if self.up[node.index()] != Some(inc) || self.dialers[k].conn.is_some() {
                    return Ok(());
                }
                match self.up[peer.index()] {
                    None => self.redial(now, node, peer, inc, out),
                    Some(peer_inc) => {
                        let id = self.open_conn(node, peer, inc, peer_inc);
                        let hello = Wire::Hello { incarnation: inc, clock: clock(node) };
                        let delay = self.net_delay();
                        self.put(now, delay, id, true, hello, out);
                    }
                }
            }
            NetItem::Cut { node, peer } => {
                let k = self.at(node, peer);
                let Some(id) = self.dialers[k].conn else { return Ok(()) };
                let Some(c) = self.conns.get_mut(&id) else { return Ok(()) };
                c.cut = true;
                self.note(out, || format!("t={} connection {node}→{peer} CUT", now.get()));
                // A reset, not a FIN: it overtakes what was in flight, which is lost.
                for to_acceptor in [true, false] {
                    let at = Millis::new(now.get() + self.net_delay());
                    out.schedule.push((at, NetItem::Frame { conn: id, to_acceptor, wire: Wire::Close }));
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn arrive(
        &mut self,
        now: Millis,
        rng: &mut SplitMix64,
        id: u64,
        to_acceptor: bool,
        wire: Wire<M>,
        clock: &impl Fn(NodeId) -> LamportTs,
        out: &mut NetOut<M>,
    ) -> Result<(), String> {
        let Some(c) = self.conns.get(&id) else { return Ok(()) };
        let (end, end_inc, other) = if to_acceptor {
            (c.acceptor, c.acceptor_inc, c.dialer)
        } else {
            (c.dialer, c.dialer_inc, c.acceptor)
        };
        let open = c.open[usize::from(!to_acceptor)];
        if !open || self.up[end.index()] != Some(end_inc) || (c.cut && !matches!(wire, Wire::Close)) {
            // Lost: the process at that end is gone, the end was closed, or the connection was cut.
            return Ok(());
        }
        let generation = c.generation;
        let link_conn = c.link_conn;
        let k = self.at(end, other);
        match (to_acceptor, wire) {
            (true, Wire::Hello { incarnation, clock: their_clock }) => {
                let discarded = self.links[k].stats().discarded_on_restart;
                let accepted = self.links[k].on_hello(incarnation, their_clock);
                self.note_discards(out, end, other, discarded);
                match accepted {
                    Ok(accepted) => {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.generation = Some(accepted.generation);
                        }
                        self.note(out, || {
                            format!("t={} {other}→{end} hello (incarnation {})", now.get(), incarnation.get())
                        });
                        core_events(other, &mut self.links[k], end, out);
                        let welcome = Wire::Welcome {
                            incarnation: end_inc,
                            clock: clock(end),
                            received: accepted.received,
                        };
                        let delay = self.net_delay();
                        self.put(now, delay, id, false, welcome, out);
                        self.drop_given_up(now, end, other, out);
                    }
                    Err(refusal) => {
                        self.note(out, || {
                            format!("t={} {other}→{end} hello refused: {refusal:?}", now.get())
                        });
                        let delay = self.net_delay();
                        self.put(now, delay, id, false, Wire::Refuse, out);
                    }
                }
            }
            (true, Wire::Data { seq, msg }) => {
                let Some(generation) = generation else {
                    return Err(format!("connection {other}→{end} carried data before its handshake"));
                };
                match self.links[k].on_data(now, generation, seq) {
                    Ok(Delivery::Deliver { incarnation }) => {
                        if msg.to.is_some_and(|to| to != end_inc) {
                            // Meant for an earlier life of this node, as the node driver drops it.
                            self.note(out, || {
                                format!(
                                    "t={} {other}→{end} dropped: addressed to incarnation {:?}",
                                    now.get(),
                                    msg.to
                                )
                            });
                        } else {
                            out.deliver.push_back((
                                end,
                                Event::Message { from: other, incarnation, epoch: msg.epoch, msg: msg.msg },
                            ));
                        }
                    }
                    Ok(Delivery::Duplicate) => {}
                    Err(crate::net::link::DataError::Replaced) => {
                        self.close_end(now, id, false, out);
                        return Ok(());
                    }
                    Err(e) => return Err(format!("link {other}→{end} broke FIFO: {e}")),
                }
                self.ack(now, id, out);
            }
            (true, Wire::Close) => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.open[0] = false;
                    if c.open == [false, false] {
                        self.conns.remove(&id);
                    }
                }
            }
            (false, Wire::Welcome { incarnation, clock: their_clock, received }) => {
                let discarded = self.links[k].stats().discarded_on_restart;
                let welcomed = self.links[k].on_welcome(now, incarnation, their_clock, received);
                self.note_discards(out, end, other, discarded);
                match welcomed {
                    Ok(cid) => {
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.link_conn = Some(cid);
                        }
                        self.dialers[k].backoff = 0;
                        self.note(out, || {
                            format!(
                                "t={} {end}→{other} welcome (incarnation {}, received {received})",
                                now.get(),
                                incarnation.get()
                            )
                        });
                        core_events(other, &mut self.links[k], end, out);
                        self.transmit(now, rng, end, other, out);
                    }
                    Err(_) => {
                        core_events(other, &mut self.links[k], end, out);
                        self.dialer_closed(now, id, out);
                    }
                }
            }
            (false, Wire::Ack { seq }) => {
                if let Some(cid) = link_conn {
                    self.links[k].on_ack(now, cid, seq).map_err(|e| format!("link {end}→{other}: {e}"))?;
                }
            }
            (false, Wire::Refuse | Wire::Close) => self.dialer_closed(now, id, out),
            (to_acceptor, wire) => {
                return Err(format!("frame {wire:?} travelled the wrong way (to acceptor: {to_acceptor})"));
            }
        }
        Ok(())
    }

    /// The acceptor of `id` acknowledges what is due. It sets no delayed-ack timer (that would be two more
    /// events per message): acks only trim the sender's resend queue, and after a reconnect the Welcome's
    /// `received` covers what a missing ack would have said.
    fn ack(&mut self, now: Millis, id: u64, out: &mut NetOut<M>) {
        let Some(c) = self.conns.get(&id) else { return };
        let (Some(generation), true) = (c.generation, c.open[0]) else { return };
        let k = self.at(c.acceptor, c.dialer);
        if let Some(seq) = self.links[k].poll_ack(now, generation, false) {
            let delay = self.net_delay();
            self.put(now, delay, id, false, Wire::Ack { seq }, out);
        }
    }

    /// `node` crashed: its connections close (what it sent still arrives), its links die with it.
    pub(super) fn crash(&mut self, now: Millis, node: NodeId, out: &mut NetOut<M>) {
        self.up[node.index()] = None;
        let mine: Vec<(u64, bool)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.dialer == node || c.acceptor == node)
            .map(|(id, c)| (id, c.dialer == node))
            .collect();
        for (id, dialer_end) in mine {
            self.close_end(now, id, dialer_end, out);
        }
        for j in 0..self.n {
            let k = self.at(node, NodeId::new(j as u16));
            self.links[k] = Link::new(NodeId::new(j as u16), self.link_cfg);
            self.dialers[k] = Dialer::default();
        }
    }

    /// `node` is back as incarnation `inc`, with fresh links, and dials every peer.
    pub(super) fn restart(&mut self, now: Millis, node: NodeId, inc: Incarnation, out: &mut NetOut<M>) {
        self.up[node.index()] = Some(inc);
        for j in (0..self.n).filter(|&j| j != node.index()) {
            let peer = NodeId::new(j as u16);
            let k = self.at(node, peer);
            // Like the transport, a starting node dials every peer at once.
            self.dialers[k].pending = true;
            out.schedule.push((now, NetItem::Dial { node, peer, inc }));
        }
    }
}
