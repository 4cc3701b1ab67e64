//! Exhaustive model checking (stateright 0.31, breadth-first) of the three cores over view changes: one
//! crashed node is excluded and one node joins, decided by an abstract view oracle that stands in for the
//! membership layer.
//!
//! The model is a plain [`Model`] rather than an actor model because the oracle needs the global state (who
//! crashed, whose lease still runs). Its state: the very [`Engine`] each running node runs, a small script per
//! node (issue an acquire at start; the holder may leave at any step, and then issues its next acquire, up to
//! the configured count), reliable FIFO links per ordered pair, the views the oracle decided, and ghost state.
//!
//! Actions, each one step, in any interleaving:
//! - deliver the head of a link (a protocol message, or a handshake carrying the sender's clock);
//! - a holder leaves the critical section;
//! - a victim crashes (one of the configured `victims`, once, at any point): it stops, what it sent stays in flight,
//!   what was sent to it is lost; if it held the lock its client still holds it (ghost) until its lease ends;
//! - the crashed holder's lease ends (abstract time: a separate step, nondeterministically placed). With
//!   `lease_end_step` off it ends within the exclusion step instead: the latest it may end, so the ghost holds
//!   as long as it can and no violation is hidden; it only saves interleavings;
//! - the oracle excludes the crashed node: enabled only once it crashed and its lease ended, so it holds
//!   nothing (the member-lease rule). The early oracle ([`Oracle::Early`], a negative control) ignores the lease;
//! - the oracle admits the joiner (id 7: ids are not list indexes): the joiner starts with
//!   [`Engine::in_view`] in the new view and issues its acquires (held back until it has heard every member);
//! - a running node installs the next decided view ([`Event::MembersChanged`]) as its own step, so messages
//!   sent before and after each node's installation interleave. A member and the joiner exchange handshakes
//!   only once the member installed the view admitting it (the engines' contract): within that step, or, with
//!   `handshake_steps`, as packets delivered as steps of their own.
//!
//! The joiner's messages wait on their links until the receiver installed the view admitting it (a transport
//! accepts a connection only from a member). The excluded node's late messages are delivered and refused
//! ([`CoreError::UnknownPeer`]); that is the only refusal allowed.
//!
//! Properties:
//! - always "mutual exclusion": at most one holder, counting a crashed holder until its lease ended;
//! - always "fencing tokens increase": every grant's token is above the previous grant's, in grant order;
//! - always "no refused events" except an excluded node's late messages;
//! - eventually "every request answered": every running node (the joiner included, once admitted) had every
//!   request of its script granted or rejected. Requests are only issued by the script, so once this holds it
//!   holds for ever, and stateright's terminal-state check is exact: it is the "no deadlock" check;
//! - sometimes "a crashed holder was excluded" and (with a join) "the joiner was granted": the interesting
//!   cases are reached.
//!
//! Sizes in `cargo test` (debug, 2 threads; state counts printed): per algorithm, "exclusion" = 3 nodes × 1
//! request, any node crashes, separate lease step, no join; "exclusion then join" = nodes 0 and 2 request once,
//! node 1 idles, the crash and exclusion, then node 7 joins and requests once (Lamport: node 2 is the only
//! victim and the lease ends with the exclusion, to fit); the early-oracle negative control on "exclusion".
//! Larger runs (join and exclusion in either order with separate handshake steps, 3 × 2) are ignored tests
//! with their commands. Messages carry their sender's view epoch, and a node holds a message of a newer view
//! until it installs it (the engine's rule): this model found the probable-owner deadlock that rule fixes
//! (described at `probable_owner_exclusion_3x1`).

use dmutex::algo::lamport::Lamport;
use dmutex::algo::probable_owner::ProbableOwner;
use dmutex::algo::ricart_agrawala::RicartAgrawala;
use dmutex::algo::{
    Action, CoreError, Engine, Event, FencingToken, Incarnation, LamportTs, Millis, NodeId, Peers, Protocol,
    RequestId,
};
use stateright::{Checker, HasDiscoveries, Model, Property};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::marker::PhantomData;
use std::time::Instant;

/// The lock every node competes for.
const LOCK: &str = "model";

/// The lease every grant comes with (time does not pass in the model: a lease ends as a step).
const LEASE: Millis = Millis::new(10);

/// Nodes at the start: ids `0..INITIAL`.
const INITIAL: u16 = 3;

/// The joiner's id.
const JOINER: NodeId = NodeId::new(7);

/// When the oracle may exclude the crashed node.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Oracle {
    /// Only once the crashed node holds nothing (its lease ended): what member leases guarantee.
    AfterLease,
    /// Right after the crash, while its lease may still run: a negative control, must be caught.
    Early,
}

/// One model's size and oracle.
#[derive(Clone, Debug)]
struct Config {
    /// Acquires each initial node (by id) issues, one after the other.
    requests: [u8; INITIAL as usize],
    /// Acquires the joiner issues.
    joiner_requests: u8,
    /// The nodes that may crash (one of them does, at any point).
    victims: Vec<NodeId>,
    /// Whether a node joins.
    join: bool,
    oracle: Oracle,
    /// Whether the crashed holder's lease ends as a step of its own (else, with [`Oracle::AfterLease`], it
    /// ends with the exclusion step: the latest it may end, so the ghost holds as long as it can).
    lease_end_step: bool,
    /// Whether the oracle admits the joiner only after it decided the exclusion (else in either order).
    join_after_exclusion: bool,
    /// Whether handshakes between the joiner and a member travel as packets (each delivered as a step of its
    /// own); else both are exchanged within the member's step that installs the view admitting the joiner.
    handshake_steps: bool,
}

/// What travels on a link.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Packet<M> {
    /// The transport's handshake, with the sender's clock when it connected.
    Hello(LamportTs),
    /// A protocol message, with the view epoch its sender was in.
    Msg(u64, M),
}

/// One running node: its engine, where its script stands, and the view changes it installed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Node<P: Protocol> {
    engine: Engine<P>,
    issued: u8,
    answered: u8,
    holding: Option<RequestId>,
    /// How many of the decided views this node has installed (or started in).
    installed: usize,
    /// Events refused other than the excluded node's late messages.
    refused: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State<P: Protocol> {
    /// Running nodes (a crashed node is gone; the joiner appears when admitted).
    nodes: BTreeMap<NodeId, Node<P>>,
    links: BTreeMap<(NodeId, NodeId), VecDeque<Packet<P::Msg>>>,
    crashed: Option<NodeId>,
    /// Ghost: the crashed node held the lock and its lease has not ended yet.
    ghost_holds: bool,
    /// Ghost: the crashed node held the lock when it crashed (for the "sometimes" property).
    crashed_holder: bool,
    excluded: bool,
    admitted: bool,
    /// The oracle's current member set and every view it decided (epoch = index + 1).
    members: BTreeSet<NodeId>,
    views: Vec<Vec<(NodeId, Incarnation)>>,
    last_token: Option<FencingToken>,
    token_went_back: bool,
    joiner_granted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Step {
    Deliver { from: NodeId, to: NodeId },
    Leave(NodeId),
    Crash(NodeId),
    LeaseEnds,
    Exclude,
    Join,
    Install(NodeId),
}

struct ViewModel<P> {
    cfg: Config,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> ViewModel<P> {
    fn new(cfg: Config) -> Self {
        ViewModel { cfg, _protocol: PhantomData }
    }

    fn quota(&self, node: NodeId) -> u8 {
        if node == JOINER { self.cfg.joiner_requests } else { self.cfg.requests[node.index()] }
    }

    /// Feeds one event to a running node and applies what it does.
    fn feed(&self, s: &mut State<P>, node: NodeId, event: Event<P::Msg>) {
        let Some(n) = s.nodes.get_mut(&node) else { return };
        let mut actions = Vec::new();
        if let Err(e) = n.engine.handle(Millis::new(0), event, &mut actions) {
            let late = matches!(e, CoreError::UnknownPeer(p) if Some(p) == s.crashed);
            if !late {
                n.refused = n.refused.saturating_add(1);
            }
        }
        for action in actions {
            match action {
                Action::Send { to, epoch, msg } => {
                    if s.nodes.contains_key(&to) {
                        s.links.entry((node, to)).or_default().push_back(Packet::Msg(epoch, msg));
                    }
                }
                Action::Granted { req, token, .. } => {
                    let n = s.nodes.get_mut(&node).expect("running");
                    n.holding = Some(req);
                    n.answered += 1;
                    if s.last_token.is_some_and(|last| token <= last) {
                        s.token_went_back = true;
                    }
                    s.last_token = Some(token);
                    s.joiner_granted |= node == JOINER;
                }
                Action::Rejected { .. } => s.nodes.get_mut(&node).expect("running").answered += 1,
                Action::LeaseExpired { req, .. } => {
                    let n = s.nodes.get_mut(&node).expect("running");
                    if n.holding == Some(req) {
                        n.holding = None;
                    }
                }
                // Lease timers never fire for a running node here (its holder leaves first); no deadlines.
                Action::SetTimer { .. } | Action::CancelTimer { .. } => {}
            }
        }
    }

    fn issue(&self, s: &mut State<P>, node: NodeId) {
        let Some(n) = s.nodes.get_mut(&node) else { return };
        if n.issued >= self.quota(node) {
            return;
        }
        n.issued += 1;
        let req = RequestId::new(u64::from(n.issued));
        self.feed(s, node, Event::Acquire { req, lock: LOCK.into(), deadline: None, ttl: Some(LEASE) });
    }

    fn decide(&self, s: &mut State<P>) {
        s.views.push(s.members.iter().map(|&m| (m, Incarnation::new(0))).collect());
    }

    /// Whether the head of `from -> to` may arrive now: the receiver runs and knows the sender as a member
    /// (or the sender is the excluded node, whose late messages arrive and are refused).
    fn deliverable(&self, s: &State<P>, from: NodeId, to: NodeId) -> bool {
        s.nodes.get(&to).is_some_and(|n| n.engine.peers().contains(from) || Some(from) == s.crashed)
    }
}

impl<P: Protocol> Model for ViewModel<P> {
    type State = State<P>;
    type Action = Step;

    fn init_states(&self) -> Vec<State<P>> {
        let n = usize::from(INITIAL);
        let nodes = (0..INITIAL)
            .map(|i| {
                let me = NodeId::new(i);
                let engine = Engine::new(P::fresh(me, n), Peers::formed(me, n));
                (me, Node { engine, issued: 0, answered: 0, holding: None, installed: 0, refused: 0 })
            })
            .collect();
        let mut s = State {
            nodes,
            links: BTreeMap::new(),
            crashed: None,
            ghost_holds: false,
            crashed_holder: false,
            excluded: false,
            admitted: false,
            members: (0..INITIAL).map(NodeId::new).collect(),
            views: Vec::new(),
            last_token: None,
            token_went_back: false,
            joiner_granted: false,
        };
        for i in 0..INITIAL {
            self.issue(&mut s, NodeId::new(i));
        }
        vec![s]
    }

    fn actions(&self, s: &State<P>, out: &mut Vec<Step>) {
        for (&(from, to), q) in &s.links {
            if !q.is_empty() && self.deliverable(s, from, to) {
                out.push(Step::Deliver { from, to });
            }
        }
        for (&id, n) in &s.nodes {
            if n.holding.is_some() {
                out.push(Step::Leave(id));
            }
            if n.installed < s.views.len() {
                out.push(Step::Install(id));
            }
        }
        if s.crashed.is_none() {
            for &v in &self.cfg.victims {
                if s.nodes.contains_key(&v) {
                    out.push(Step::Crash(v));
                }
            }
        }
        if s.ghost_holds && (self.cfg.lease_end_step || s.excluded) {
            out.push(Step::LeaseEnds);
        }
        let may_exclude = match self.cfg.oracle {
            Oracle::AfterLease => !s.ghost_holds || !self.cfg.lease_end_step,
            Oracle::Early => true,
        };
        if s.crashed.is_some() && !s.excluded && may_exclude {
            out.push(Step::Exclude);
        }
        if self.cfg.join && !s.admitted && (!self.cfg.join_after_exclusion || s.excluded) {
            out.push(Step::Join);
        }
    }

    fn next_state(&self, last: &State<P>, step: Step) -> Option<State<P>> {
        let mut s = last.clone();
        match step {
            Step::Deliver { from, to } => {
                let packet = s.links.get_mut(&(from, to))?.pop_front()?;
                if s.links.get(&(from, to)).is_some_and(VecDeque::is_empty) {
                    s.links.remove(&(from, to));
                }
                let incarnation = Incarnation::new(0);
                let event = match packet {
                    Packet::Hello(clock) => Event::PeerIncarnation { peer: from, incarnation, clock },
                    Packet::Msg(epoch, msg) => Event::Message { from, incarnation, epoch, msg },
                };
                self.feed(&mut s, to, event);
            }
            Step::Leave(node) => {
                let req = s.nodes.get_mut(&node)?.holding.take()?;
                self.feed(&mut s, node, Event::Release { req });
                self.issue(&mut s, node);
            }
            Step::Crash(node) => {
                let n = s.nodes.remove(&node)?;
                s.crashed = Some(node);
                s.ghost_holds = n.holding.is_some();
                s.crashed_holder = s.ghost_holds;
                s.links.retain(|&(_, to), _| to != node);
            }
            Step::LeaseEnds => s.ghost_holds = false,
            Step::Exclude => {
                s.excluded = true;
                if self.cfg.oracle == Oracle::AfterLease {
                    // Without a separate step, the lease ends right before the exclusion (the latest it may).
                    s.ghost_holds = false;
                }
                let gone = s.crashed?;
                s.members.remove(&gone);
                self.decide(&mut s);
            }
            Step::Join => {
                s.admitted = true;
                s.members.insert(JOINER);
                self.decide(&mut s);
                let (epoch, view) = (s.views.len(), s.views.last().cloned().unwrap_or_default());
                let engine =
                    Engine::in_view(P::fresh(JOINER, 0), JOINER, Incarnation::new(0), epoch as u64, &view);
                let hello = Packet::Hello(engine.clock());
                s.nodes.insert(
                    JOINER,
                    Node { engine, issued: 0, answered: 0, holding: None, installed: epoch, refused: 0 },
                );
                for &(m, _) in &view {
                    if self.cfg.handshake_steps && m != JOINER && s.nodes.contains_key(&m) {
                        s.links.entry((JOINER, m)).or_default().push_back(hello.clone());
                    }
                }
                for _ in 0..self.cfg.joiner_requests {
                    self.issue(&mut s, JOINER);
                }
            }
            Step::Install(node) => {
                let n = s.nodes.get_mut(&node)?;
                let k = n.installed;
                n.installed += 1;
                let members = s.views.get(k)?.clone();
                let admits_joiner = node != JOINER
                    && members.iter().any(|&(m, _)| m == JOINER)
                    && !n.engine.peers().contains(JOINER);
                self.feed(&mut s, node, Event::MembersChanged { epoch: k as u64 + 1, members });
                if admits_joiner && let Some(n) = s.nodes.get(&node) {
                    let clock = n.engine.clock();
                    if self.cfg.handshake_steps {
                        s.links.entry((node, JOINER)).or_default().push_back(Packet::Hello(clock));
                    } else if let Some(j) = s.nodes.get(&JOINER) {
                        // Both handshakes at once, the member's first (it connects once it installed the view).
                        let joiner_clock = j.engine.clock();
                        let incarnation = Incarnation::new(0);
                        self.feed(&mut s, JOINER, Event::PeerIncarnation { peer: node, incarnation, clock });
                        let hello = Event::PeerIncarnation { peer: JOINER, incarnation, clock: joiner_clock };
                        self.feed(&mut s, node, hello);
                    }
                }
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("mutual exclusion", |_: &Self, s: &State<P>| {
                s.nodes.values().filter(|n| n.engine.holder(LOCK).is_some()).count()
                    + usize::from(s.ghost_holds)
                    <= 1
            }),
            Property::always("fencing tokens increase", |_: &Self, s: &State<P>| !s.token_went_back),
            Property::always("no refused events", |_: &Self, s: &State<P>| {
                s.nodes.values().all(|n| n.refused == 0)
            }),
            Property::eventually("every request answered", |m: &Self, s: &State<P>| {
                (s.admitted || !m.cfg.join) && s.nodes.iter().all(|(&id, n)| n.answered == m.quota(id))
            }),
            Property::sometimes("a crashed holder was excluded", |_: &Self, s: &State<P>| {
                s.crashed_holder && s.excluded
            }),
            Property::sometimes("the joiner was granted", |m: &Self, s: &State<P>| {
                !m.cfg.join || s.joiner_granted
            }),
        ]
    }
}

/// 3 nodes × `requests` each, any of them crashes at any point, its lease ends as a step of its own, the
/// oracle excludes it; no join.
fn exclusion(requests: u8, oracle: Oracle) -> Config {
    Config {
        requests: [requests; INITIAL as usize],
        joiner_requests: 0,
        victims: (0..INITIAL).map(NodeId::new).collect(),
        join: false,
        oracle,
        lease_end_step: true,
        join_after_exclusion: false,
        handshake_steps: false,
    }
}

/// Nodes 0 and 2 request once and node 1 not at all (so the joiner's request still meets contention at a
/// smaller size), one of `victims` crashes at any point and is excluded, then node 7 joins and requests once.
fn exclusion_then_join(victims: &[u16], lease_end_step: bool) -> Config {
    Config {
        requests: [1, 0, 1],
        joiner_requests: 1,
        victims: victims.iter().copied().map(NodeId::new).collect(),
        join: true,
        oracle: Oracle::AfterLease,
        lease_end_step,
        join_after_exclusion: true,
        handshake_steps: false,
    }
}

/// Every node requests once, the join and the exclusion are decided in either order, handshakes travel as
/// packets of their own.
fn join_in_either_order() -> Config {
    Config {
        requests: [1; INITIAL as usize],
        joiner_requests: 1,
        victims: vec![NodeId::new(2)],
        join: true,
        oracle: Oracle::AfterLease,
        lease_end_step: false,
        join_after_exclusion: false,
        handshake_steps: true,
    }
}

/// Checks every property exhaustively; prints the state count and time.
fn check<P>(cfg: Config)
where
    P: Protocol + Send + Sync + 'static,
    P::Msg: Send + Sync + 'static,
{
    let started = Instant::now();
    let label = format!("{cfg:?}");
    let checker = ViewModel::<P>::new(cfg).checker().threads(2).spawn_bfs().join();
    eprintln!(
        "{} over view changes {label}: {} unique states, depth {}, {:.1?}",
        P::ALGORITHM,
        checker.unique_state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    checker.assert_properties();
}

/// The early oracle must be caught: the test asserts a mutual-exclusion counterexample and prints it.
fn early_exclusion_is_caught<P>()
where
    P: Protocol + Send + Sync + 'static,
    P::Msg: Send + Sync + 'static,
{
    let started = Instant::now();
    let checker = ViewModel::<P>::new(exclusion(1, Oracle::Early))
        .checker()
        .threads(2)
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from(["mutual exclusion"])))
        .spawn_bfs()
        .join();
    let path = checker.discovery("mutual exclusion").expect("an early exclusion must break mutual exclusion");
    eprintln!(
        "{} early oracle: counterexample after {} states, {:.1?}: {:?}",
        P::ALGORITHM,
        checker.unique_state_count(),
        started.elapsed(),
        path.into_actions()
    );
}

#[test]
fn lamport_exclusion_3x1() {
    check::<Lamport>(exclusion(1, Oracle::AfterLease));
}

/// One victim (node 2) and the lease ending with the exclusion step keep this in `cargo test`; with every
/// victim and a separate lease step it passed 2.3 million states within a minute (not run to the end).
#[test]
fn lamport_exclusion_then_join() {
    check::<Lamport>(exclusion_then_join(&[2], false));
}

#[test]
fn lamport_early_exclusion_is_caught() {
    early_exclusion_is_caught::<Lamport>();
}

/// Long: `cargo test --release --test model_check_views lamport_join_in_either_order -- --ignored --nocapture`
/// (not run to the end here: the debug build passed 1.5 million states in a minute).
#[test]
#[ignore]
fn lamport_join_in_either_order() {
    check::<Lamport>(join_in_either_order());
}

#[test]
fn ricart_agrawala_exclusion_3x1() {
    check::<RicartAgrawala>(exclusion(1, Oracle::AfterLease));
}

#[test]
fn ricart_agrawala_exclusion_then_join() {
    check::<RicartAgrawala>(exclusion_then_join(&[0, 1, 2], true));
}

#[test]
fn ricart_agrawala_early_exclusion_is_caught() {
    early_exclusion_is_caught::<RicartAgrawala>();
}

/// Long: `cargo test --release --test model_check_views ricart_agrawala_exclusion_3x2 -- --ignored
/// --nocapture` (not run to the end here: the debug build passed 1.7 million states in a minute).
#[test]
#[ignore]
fn ricart_agrawala_exclusion_3x2() {
    check::<RicartAgrawala>(exclusion(2, Oracle::AfterLease));
}

/// Long: `cargo test --release --test model_check_views ricart_agrawala_join_in_either_order -- --ignored
/// --nocapture` (not run to the end here).
#[test]
#[ignore]
fn ricart_agrawala_join_in_either_order() {
    check::<RicartAgrawala>(join_in_either_order());
}

/// This model found a deadlock here before messages carried their sender's view epoch (kept as the
/// regression): node 0 (the lock's home in `0..3`) grants itself, releases and sends the token to node 2 with
/// node 1 queued behind; node 0 crashes and is excluded. Node 2 installs the view `{1, 2}`, becomes the lock's
/// home (rendezvous hash over the view) and starts a recovery round with an `OWNER_QUERY` to node 1; node 0's
/// in-flight transfer reaches node 2 and is refused (excluded sender: the token is lost, the round is what
/// regenerates it). Node 1 had not installed the view yet, so for it node 2 was not the home: it refused the
/// query and the round waited for node 1's report for ever. Path: Deliver 0→1, 0→2, 2→0, 1→0 ×3, 2→0 ×2,
/// Leave(0), Crash(0), Exclude, Install(2), Deliver 0→2, Deliver 2→1, Install(1), Deliver 1→2 ×2.
///
/// Answering the early query at once would be unsafe (node 1, still in the old view, could afterwards accept
/// node 0's in-flight transfer after reporting that it owns nothing, while the new home regenerates the
/// token). The fix is in the engine: a message of a newer view is held back until the receiver installs it,
/// so node 1 answers the query as a member of the view in which node 2 is the home. The model also found a
/// benign race (a redirect sent in the old view to the excluded node, reaching a node in the new view), which
/// probable owner now ignores: the exclusion already re-sent the request to the home.
#[test]
fn probable_owner_exclusion_3x1() {
    check::<ProbableOwner>(exclusion(1, Oracle::AfterLease));
}

/// The same deadlock was reachable here; passes since the epoch hold-back.
#[test]
fn probable_owner_exclusion_then_join() {
    check::<ProbableOwner>(exclusion_then_join(&[0, 1, 2], true));
}

/// Long: `cargo test --release --test model_check_views probable_owner_exclusion_3x2 -- --ignored --nocapture`.
#[test]
#[ignore]
fn probable_owner_exclusion_3x2() {
    check::<ProbableOwner>(exclusion(2, Oracle::AfterLease));
}

/// Long: `cargo test --release --test model_check_views probable_owner_join_in_either_order -- --ignored
/// --nocapture`.
#[test]
#[ignore]
fn probable_owner_join_in_either_order() {
    check::<ProbableOwner>(join_in_either_order());
}

#[test]
fn probable_owner_early_exclusion_is_caught() {
    early_exclusion_is_caught::<ProbableOwner>();
}
