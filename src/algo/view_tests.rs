//! Each algorithm over a changing member set ([`Event::MembersChanged`]): exclusion of a node while another
//! requests, exclusion of the holder, a join during contention, and an excluded node's late messages.
//!
//! The tests stand in for the membership layer: they exclude a node only after it crashed (so it holds and
//! requests nothing any more, which is what member leases guarantee), and they send a joiner's handshakes only
//! after the members installed the view that admits it. Node ids are not `0..n` here: the joiner is node 7.

use super::probable_owner::ProbableOwner;
use super::{
    Action, CoreError, Engine, Event, FencingToken, Incarnation, LockName, Millis, NodeId, Peers, Protocol,
    RequestId, home_node,
};
use crate::algo::lamport::Lamport;
use crate::algo::ricart_agrawala::RicartAgrawala;
use std::collections::{BTreeMap, VecDeque};

fn id(n: u16) -> NodeId {
    NodeId::new(n)
}

/// FIFO links per directed pair: each message with the view epoch its sender was in.
type Links<M> = BTreeMap<(NodeId, NodeId), VecDeque<(u64, M)>>;

/// Engines under arbitrary ids, reliable FIFO links between them, a record of every grant.
struct ViewNet<P: Protocol> {
    engines: BTreeMap<NodeId, Engine<P>>,
    links: Links<P::Msg>,
    grants: Vec<(NodeId, RequestId, LockName, FencingToken)>,
    /// Events the engines refused, with the refusal.
    refused: Vec<(NodeId, CoreError)>,
    epoch: u64,
}

impl<P: Protocol> ViewNet<P> {
    /// A formed cluster `0..n`.
    fn new(n: usize) -> Self {
        let engines = (0..n as u16)
            .map(|i| (id(i), Engine::new(P::fresh(id(i), n), Peers::formed(id(i), n))))
            .collect();
        ViewNet { engines, links: BTreeMap::new(), grants: Vec::new(), refused: Vec::new(), epoch: 0 }
    }

    fn handle(&mut self, node: NodeId, event: Event<P::Msg>) -> Vec<Action<P::Msg>> {
        let Some(engine) = self.engines.get_mut(&node) else { return Vec::new() };
        let mut out = Vec::new();
        if let Err(e) = engine.handle(Millis::new(0), event, &mut out) {
            self.refused.push((node, e));
        }
        for action in &out {
            match action {
                Action::Send { to, epoch, msg } => {
                    self.links.entry((node, *to)).or_default().push_back((*epoch, msg.clone()))
                }
                Action::Granted { req, lock, token } => {
                    if let Some(&(_, _, _, last)) = self.grants.iter().rev().find(|g| &g.2 == lock) {
                        assert!(*token > last, "token for {lock} went back: {last:?} then {token:?}");
                    }
                    self.grants.push((node, *req, lock.clone(), *token));
                }
                _ => {}
            }
        }
        for lock in self.grants.iter().map(|g| g.2.clone()).collect::<Vec<_>>() {
            let n = self.engines.values().filter(|e| e.holder(&lock).is_some()).count();
            assert!(n <= 1, "{n} holders of {lock}");
        }
        out
    }

    fn acquire(&mut self, node: u16, req: u64, lock: &str) {
        let event = Event::Acquire { req: RequestId::new(req), lock: lock.into(), deadline: None, ttl: None };
        self.handle(id(node), event);
    }

    fn release(&mut self, node: u16, req: u64) {
        self.handle(id(node), Event::Release { req: RequestId::new(req) });
    }

    /// Delivers every message in flight, in link order, until the network is quiet.
    fn deliver_all(&mut self) {
        while let Some((&(from, to), _)) = self.links.iter().find(|(_, q)| !q.is_empty()) {
            let (epoch, msg) =
                self.links.get_mut(&(from, to)).and_then(VecDeque::pop_front).expect("non-empty link");
            let incarnation =
                self.engines.get(&to).and_then(|e| e.peers().incarnation(from)).unwrap_or_default();
            self.handle(to, Event::Message { from, incarnation, epoch, msg });
        }
    }

    /// The node stops; what it sent stays in flight only if `keep_sent`.
    fn crash(&mut self, node: u16, keep_sent: bool) {
        self.engines.remove(&id(node));
        self.links.retain(|&(from, to), _| to != id(node) && (keep_sent || from != id(node)));
    }

    /// The membership layer installs the next view at every member already running, then admits `joiner`
    /// (if any): it starts inside the view, and every member and the joiner exchange handshakes.
    fn install(&mut self, members: &[u16], joiner: Option<u16>) {
        self.epoch += 1;
        let view: Vec<(NodeId, Incarnation)> =
            members.iter().map(|&m| (id(m), Incarnation::new(0))).collect();
        let running: Vec<NodeId> = self.engines.keys().copied().collect();
        for node in running {
            self.handle(node, Event::MembersChanged { epoch: self.epoch, members: view.clone() });
        }
        if let Some(j) = joiner {
            let engine = Engine::in_view(P::fresh(id(j), 0), id(j), Incarnation::new(0), self.epoch, &view);
            assert!(!engine.joined(), "a joiner waits for its members' handshakes");
            self.engines.insert(id(j), engine);
            for &m in members.iter().filter(|&&m| m != j) {
                let clock = self.engines[&id(m)].clock();
                let hello = Event::PeerIncarnation { peer: id(m), incarnation: Incarnation::new(0), clock };
                self.handle(id(j), hello);
                let clock = self.engines[&id(j)].clock();
                let hello = Event::PeerIncarnation { peer: id(j), incarnation: Incarnation::new(0), clock };
                self.handle(id(m), hello);
            }
            assert!(self.engines[&id(j)].joined());
        }
    }

    fn holder(&self, lock: &str) -> Option<u16> {
        self.engines.iter().find(|(_, e)| e.holder(lock).is_some()).map(|(n, _)| n.get())
    }

    fn granted(&self, node: u16, req: u64) -> Option<FencingToken> {
        self.grants.iter().find(|g| g.0 == id(node) && g.1 == RequestId::new(req)).map(|g| g.3)
    }
}

/// A lock whose home in the fixed list `0..n` is `home` (for probable owner; any lock works for the others).
fn lock_homed_at(home: u16, n: usize) -> String {
    (0..).map(|i| format!("lock{i}")).find(|l| home_node(l, n) == id(home)).unwrap_or_default()
}

/// Exclusion while requesting: node 2 crashed; node 0's request waits for it (Lamport rule 5, an RA reply,
/// the home of the lock) until the view without node 2 is installed, and is then granted without it.
fn exclusion_while_requesting<P: Protocol>() {
    let lock = lock_homed_at(2, 3);
    let mut net = ViewNet::<P>::new(3);
    net.crash(2, false);
    net.acquire(0, 1, &lock);
    net.deliver_all();
    assert_eq!(net.holder(&lock), None, "{}: the request needs node 2 before the view change", P::ALGORITHM);
    assert!(net.engines[&id(0)].needs_peer(&lock, id(2)));
    net.install(&[0, 1], None);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(0), "{}: granted without the excluded node", P::ALGORITHM);
    assert!(!net.engines[&id(0)].needs_peer(&lock, id(2)), "an excluded node is no longer needed");
    assert!(net.refused.is_empty(), "{:?}", net.refused);
}

/// Exclusion of the holder: node 2 holds and crashes without releasing; once its leases ran out the view
/// excludes it, and the waiting node 0 enters with a larger fencing token.
fn exclusion_of_the_holder<P: Protocol>() {
    let lock = lock_homed_at(2, 3);
    let mut net = ViewNet::<P>::new(3);
    net.acquire(2, 1, &lock);
    net.deliver_all();
    let first = net.granted(2, 1).expect("node 2 holds");
    net.acquire(0, 1, &lock);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(2));
    net.crash(2, false);
    net.install(&[0, 1], None);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(0), "{}: the next holder enters", P::ALGORITHM);
    let second = net.granted(0, 1).expect("granted");
    assert!(second > first, "{}: {second:?} after {first:?}", P::ALGORITHM);
}

/// Join during contention: node 0 holds, node 1 waits, node 7 joins and asks too. Everyone enters exactly
/// once, node 1 (the older request) before the joiner, and tokens rise.
fn join_during_contention<P: Protocol>() {
    let lock = lock_homed_at(1, 3);
    let mut net = ViewNet::<P>::new(3);
    net.acquire(0, 1, &lock);
    net.deliver_all();
    net.acquire(1, 1, &lock);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(0));
    net.install(&[0, 1, 2, 7], Some(7));
    net.deliver_all();
    net.acquire(7, 1, &lock);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(0), "{}: the holder keeps the lock across the join", P::ALGORITHM);
    net.release(0, 1);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(1), "{}: the older request goes first", P::ALGORITHM);
    net.release(1, 1);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(7), "{}: the joiner enters", P::ALGORITHM);
    net.release(7, 1);
    net.deliver_all();
    let order: Vec<u16> = net.grants.iter().map(|g| g.0.get()).collect();
    assert_eq!(order, vec![0, 1, 7], "{}", P::ALGORITHM);
    // The joiner is a full member: node 2 can still get the lock, after which nobody waits.
    net.acquire(2, 1, &lock);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(2), "{}", P::ALGORITHM);
    assert!(net.refused.is_empty(), "{:?}", net.refused);
}

/// An excluded node's late messages (sent before it crashed, arriving after the view without it) are
/// refused as from an unknown peer: they queue nothing and block nobody.
fn excluded_nodes_late_messages_are_ignored<P: Protocol>() {
    let lock = lock_homed_at(0, 3);
    let mut net = ViewNet::<P>::new(3);
    net.acquire(2, 1, &lock);
    net.crash(2, true);
    assert!(net.links.keys().any(|&(from, _)| from == id(2)), "node 2's request is still in flight");
    net.install(&[0, 1], None);
    net.deliver_all();
    assert!(
        net.refused.iter().any(|(_, e)| *e == CoreError::UnknownPeer(id(2))),
        "{}: {:?}",
        P::ALGORITHM,
        net.refused
    );
    net.acquire(0, 1, &lock);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(0), "{}: nothing of node 2 is left in the way", P::ALGORITHM);
    net.release(0, 1);
    net.acquire(1, 1, &lock);
    net.deliver_all();
    assert_eq!(net.holder(&lock), Some(1), "{}", P::ALGORITHM);
}

/// A view that is not newer, or that leaves this node out, changes nothing and is refused.
#[test]
fn stale_views_and_views_without_this_node_are_refused() {
    let mut e = Engine::new(Lamport::fresh(id(0), 3), Peers::formed(id(0), 3));
    let view = |members: &[u16]| members.iter().map(|&m| (id(m), Incarnation::new(0))).collect::<Vec<_>>();
    let mut out = Vec::new();
    assert_eq!(
        e.handle(Millis::new(0), Event::MembersChanged { epoch: 2, members: view(&[0, 1]) }, &mut out),
        Ok(())
    );
    assert_eq!(e.peers().all().collect::<Vec<_>>(), vec![id(0), id(1)]);
    assert_eq!(
        e.handle(Millis::new(0), Event::MembersChanged { epoch: 2, members: view(&[0, 1, 2]) }, &mut out),
        Err(CoreError::StaleView { epoch: 2 })
    );
    assert_eq!(
        e.handle(Millis::new(0), Event::MembersChanged { epoch: 3, members: view(&[1, 2]) }, &mut out),
        Err(CoreError::ExcludedFromView { epoch: 3 })
    );
    assert_eq!(e.peers().all().collect::<Vec<_>>(), vec![id(0), id(1)]);
    assert_eq!(out, vec![]);
}

/// A message of a newer view waits until this node installs that view, then is handled in it (in arrival
/// order); a message of the current or an older view is handled at once; every send carries the epoch.
#[test]
fn messages_of_a_newer_view_wait_for_it() {
    let mut e = Engine::new(Lamport::fresh(id(0), 3), Peers::formed(id(0), 3));
    let view = |members: &[u16]| members.iter().map(|&m| (id(m), Incarnation::new(0))).collect::<Vec<_>>();
    let request = |ts: u64| crate::algo::lamport::LamportMsg::Request {
        lock: "a".into(),
        ts: crate::algo::LamportTs::new(ts),
    };
    let mut out = Vec::new();
    let msg =
        |epoch, ts| Event::Message { from: id(1), incarnation: Incarnation::new(0), epoch, msg: request(ts) };
    e.handle(Millis::new(0), msg(2, 5), &mut out).expect("held, not refused");
    e.handle(Millis::new(0), msg(2, 6), &mut out).expect("held, not refused");
    assert_eq!((out.len(), e.held_back(), e.view("a").queue.len()), (0, 2, 0), "nothing handled yet");
    e.handle(Millis::new(0), Event::MembersChanged { epoch: 2, members: view(&[0, 1, 2]) }, &mut out)
        .expect("a newer view");
    assert_eq!(e.held_back(), 0);
    let acks: Vec<(NodeId, u64)> = out
        .iter()
        .filter_map(|a| match a {
            Action::Send { to, epoch, .. } => Some((*to, *epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![(id(1), 2), (id(1), 2)], "both requests acknowledged, in view 2");
    out.clear();
    // An older view's message is handled at once (its sender is still a member).
    e.handle(Millis::new(0), msg(1, 7), &mut out).expect("handled");
    assert_eq!(out.len(), 1);
    assert_eq!(e.held_back(), 0);
}

/// The hold-back buffer is bounded: a peer that floods messages of future views is refused, never buffered
/// without limit.
#[test]
fn the_hold_back_buffer_is_bounded() {
    let mut e = Engine::new(Lamport::fresh(id(0), 2), Peers::formed(id(0), 2));
    let mut out = Vec::new();
    let msg = |ts| Event::Message {
        from: id(1),
        incarnation: Incarnation::new(0),
        epoch: 9,
        msg: crate::algo::lamport::LamportMsg::Release {
            lock: "a".into(),
            ts: crate::algo::LamportTs::new(ts),
        },
    };
    for ts in 0..crate::algo::engine::MAX_HELD as u64 {
        e.handle(Millis::new(0), msg(ts), &mut out).expect("held");
    }
    assert_eq!(e.handle(Millis::new(0), msg(0), &mut out), Err(CoreError::HeldBackFull { epoch: 9 }));
    assert_eq!(e.held_back(), crate::algo::engine::MAX_HELD);
    assert_eq!(e.stats().refused, 1);
}

/// Probable owner's tokens carry the view epoch: the home that owns a lock grants itself and crashes
/// without anyone else having seen the epoch (the amnesia case a fixed cluster cannot close); the view that
/// excludes it has a higher epoch, so the token the new home regenerates is still above the lost one.
#[test]
fn a_token_regenerated_in_a_later_view_is_above_one_nobody_remembers() {
    let members: Vec<u16> = vec![0, 1, 2, 3];
    let ids: Vec<NodeId> = members.iter().map(|&m| id(m)).collect();
    let lock = (0..)
        .map(|i| format!("lock{i}"))
        .find(|l| super::probable_owner::rendezvous_home(l, &ids) == Some(id(0)))
        .expect("a name homed at node 0");
    let mut net = ViewNet::<ProbableOwner>::new(4);
    net.install(&members, None);
    net.acquire(0, 1, &lock);
    net.deliver_all();
    let lost = net.granted(0, 1).expect("the home grants itself");
    assert_eq!(lost.get() >> (16 + super::probable_owner::VIEW_SHIFT), 1, "opened in view 1");
    net.crash(0, false);
    net.install(&[1, 2, 3], None);
    net.acquire(1, 1, &lock);
    net.deliver_all();
    let regenerated = net.granted(1, 1).expect("granted after the exclusion");
    assert!(regenerated > lost, "token {regenerated:?} repeats or precedes the lost {lost:?}");
    assert_eq!(regenerated.get() >> (16 + super::probable_owner::VIEW_SHIFT), 2, "opened in view 2");
}

macro_rules! per_algorithm {
    ($($name:ident),*) => {
        mod lamport_in_view {
            $(#[test] fn $name() { super::$name::<super::Lamport>() })*
        }
        mod ricart_agrawala_in_view {
            $(#[test] fn $name() { super::$name::<super::RicartAgrawala>() })*
        }
        mod probable_owner_in_view {
            $(#[test] fn $name() { super::$name::<super::ProbableOwner>() })*
        }
    };
}

per_algorithm!(
    exclusion_while_requesting,
    exclusion_of_the_holder,
    join_during_contention,
    excluded_nodes_late_messages_are_ignored
);
