//! Scripted tests of the membership core, one per rule, named after the Paxos / view-change step they check.

use super::paxos::{Acceptor, Proposer};
use super::*;
use crate::algo::probable_owner::hrw_score;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The one place these tests build ids, incarnations and times from raw numbers.
fn id(i: u16) -> NodeId {
    NodeId::new(i)
}
fn inc(i: u64) -> Incarnation {
    Incarnation::new(i)
}
fn ms(t: u64) -> Millis {
    Millis::new(t)
}

fn member(i: u16, incarnation: u64) -> Member {
    Member { id: id(i), incarnation: inc(incarnation), addr: format!("n{i}:7000") }
}

/// Heartbeat 100, S = 300, L = 1000, ρ = 1 % (lease ⌊1000·0.99/1.01⌋ = 980), retry 50.
fn cfg() -> Config {
    Config { heartbeat: ms(100), suspect_after: ms(300), lease: ms(1000), drift_ppm: 10_000, retry: ms(50) }
}

fn view(epoch: u64, members: &[(u16, u64)]) -> View {
    View::new(Epoch::new(epoch), members.iter().map(|&(i, n)| member(i, n)))
}

fn ballot(round: u64, node: u16) -> Ballot {
    Ballot { round, node: id(node) }
}

fn sends(out: &[Action]) -> Vec<(NodeId, Msg)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send { to, msg } => Some((*to, msg.clone())),
            _ => None,
        })
        .collect()
}

fn installs(out: &[Action]) -> Vec<View> {
    out.iter()
        .filter_map(|a| match a {
            Action::InstallView(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// A scripted cluster on one global clock (every local clock equal to it): FIFO delivery of everything
/// sent, timers fired in time order, nodes that can be cut off (their messages, both ways, are lost).
struct Cluster {
    nodes: BTreeMap<NodeId, Membership>,
    queue: VecDeque<(NodeId, Incarnation, NodeId, Msg)>,
    timers: BTreeMap<(NodeId, Timer), Millis>,
    cut: BTreeSet<NodeId>,
    /// Every action any node emitted, with its node and time.
    log: Vec<(Millis, NodeId, Action)>,
    now: Millis,
}

impl Cluster {
    fn bootstrap(n: u16) -> Self {
        let list: Vec<Member> = (0..n).map(|i| member(i, 0)).collect();
        let mut c = Cluster::empty();
        for i in 0..n {
            c.add(member(i, 0));
            c.feed(id(i), Event::Bootstrap { members: list.clone() });
        }
        c.settle();
        c
    }

    fn empty() -> Self {
        Cluster {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            timers: BTreeMap::new(),
            cut: BTreeSet::new(),
            log: Vec::new(),
            now: ms(0),
        }
    }

    fn add(&mut self, m: Member) {
        self.timers.retain(|(n, _), _| *n != m.id);
        self.nodes.insert(m.id, Membership::new(cfg(), m).unwrap());
    }

    fn feed(&mut self, node: NodeId, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(core) = self.nodes.get_mut(&node) else { return out };
        let now = self.now;
        let me = core.me().incarnation;
        let _ = core.handle(now, event, &mut out);
        for a in &out {
            self.log.push((now, node, a.clone()));
            match a {
                Action::Send { to, msg } => self.queue.push_back((node, me, *to, msg.clone())),
                Action::SetTimer { timer, at } => {
                    self.timers.insert((node, *timer), *at);
                }
                _ => {}
            }
        }
        out
    }

    /// Delivers every queued message (and what they cause) at the current time.
    fn settle(&mut self) {
        while let Some((from, finc, to, msg)) = self.queue.pop_front() {
            if self.cut.contains(&from) || self.cut.contains(&to) {
                continue;
            }
            self.feed(to, Event::Message { from, incarnation: finc, msg });
        }
    }

    /// Runs time forward to `until`, firing timers in order and settling after each.
    fn run_until(&mut self, until: u64) {
        loop {
            let next =
                self.timers.iter().filter(|(_, at)| at.get() <= until).min_by_key(|(k, at)| (**at, **k));
            let Some((&key, &at)) = next else { break };
            self.timers.remove(&key);
            self.now = self.now.max(at);
            self.feed(key.0, Event::Timer(key.1));
            self.settle();
        }
        self.now = self.now.max(ms(until));
    }

    fn epoch(&self, node: u16) -> u64 {
        self.nodes[&id(node)].view().map_or(0, |v| v.epoch.get())
    }

    fn ids(&self, node: u16) -> Vec<u16> {
        self.nodes[&id(node)].view().map_or(Vec::new(), |v| v.ids().map(|i| i.get()).collect())
    }

    /// When `node` first installed a view of `epoch`.
    fn installed_at(&self, node: u16, epoch: u64) -> Option<Millis> {
        self.log.iter().find_map(|(t, n, a)| match a {
            Action::InstallView(v) if *n == id(node) && v.epoch.get() == epoch => Some(*t),
            _ => None,
        })
    }
}

// ---- views and rendezvous homes -------------------------------------------------------------------------

#[test]
fn view_majority_counts_distinct_members_at_their_incarnation() {
    let v = view(3, &[(0, 0), (1, 0), (2, 5)]);
    assert_eq!(v.majority(), 2);
    assert_eq!(view(1, &[(0, 0), (1, 0), (2, 0), (3, 0)]).majority(), 3);
    assert!(v.contains(id(2), inc(5)) && !v.contains(id(2), inc(4)) && !v.contains(id(9), inc(0)));
    assert!(v.is_majority([(id(0), inc(0)), (id(2), inc(5))]));
    // The same voter twice, or another incarnation of a member, is not a majority.
    assert!(!v.is_majority([(id(0), inc(0)), (id(0), inc(0))]));
    assert!(!v.is_majority([(id(0), inc(0)), (id(2), inc(4))]));
    let next = view(4, &[(0, 0), (2, 6), (3, 0)]);
    let gone: Vec<u16> = v.excluded_by(&next).map(|m| m.id.get()).collect();
    assert_eq!(gone, vec![1, 2], "dropped member 1 and replaced incarnation of 2");
}

fn names() -> Vec<String> {
    (0..2000).map(|i| format!("lock-{i}")).collect()
}

#[test]
fn rendezvous_join_moves_only_the_names_the_joiner_wins() {
    let before = view(1, &[(0, 0), (1, 0), (2, 0), (3, 0)]);
    let after = view(2, &[(0, 0), (1, 0), (2, 0), (3, 0), (7, 0)]);
    let mut moved = 0;
    for name in names() {
        let (a, b) = (before.home_of(&name).unwrap(), after.home_of(&name).unwrap());
        if a != b {
            assert_eq!(b, id(7), "{name} moved to {b}, not to the joiner");
            moved += 1;
        }
    }
    // About 1/5 of the names go to the fifth member.
    assert!((250..=550).contains(&moved), "{moved} of 2000 names moved");
}

#[test]
fn rendezvous_removal_moves_only_the_removed_members_names() {
    let before = view(1, &[(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]);
    let after = view(2, &[(0, 0), (1, 0), (3, 0), (4, 0)]);
    let mut counts = BTreeMap::new();
    for name in names() {
        let (a, b) = (before.home_of(&name).unwrap(), after.home_of(&name).unwrap());
        *counts.entry(a).or_insert(0) += 1;
        if a != id(2) {
            assert_eq!(a, b, "{name} moved although its home stayed");
        } else {
            assert_ne!(b, id(2));
        }
    }
    // Balanced: each of 5 members holds 20 % ± 5 % of the names.
    assert!(counts.values().all(|&c| (300..=500).contains(&c)), "{counts:?}");
    assert_eq!(view(1, &[]).home_of("x"), None);
    assert_eq!(hrw_score("orders", id(3)), hrw_score("orders", id(3)));
    assert_ne!(hrw_score("orders", id(3)), hrw_score("orders", id(4)));
}

// ---- Paxos steps -----------------------------------------------------------------------------------------

#[test]
fn paxos_1b_promise_rejects_a_lower_ballot() {
    let mut a = Acceptor::new(Epoch::new(2));
    assert_eq!(a.prepare(ballot(2, 1)), Ok(None));
    assert_eq!(a.prepare(ballot(1, 2)), Err(ballot(2, 1)), "lower round");
    assert_eq!(a.prepare(ballot(2, 0)), Err(ballot(2, 1)), "same round, lower id");
    assert_eq!(a.prepare(ballot(2, 1)), Ok(None), "a duplicate PREPARE is promised again");
    assert_eq!(a.may_accept(ballot(1, 9)), Err(ballot(2, 1)));
    a.accept(ballot(2, 1), view(2, &[(0, 0)]));
    assert_eq!(a.prepare(ballot(3, 0)), Ok(Some((ballot(2, 1), view(2, &[(0, 0)])))));

    // The same through the core: a NACK naming the promise.
    let mut c = Cluster::bootstrap(3);
    c.feed(
        id(0),
        Event::Message {
            from: id(1),
            incarnation: inc(0),
            msg: Msg::Prepare { epoch: Epoch::new(2), ballot: ballot(5, 1) },
        },
    );
    let out = c.feed(
        id(0),
        Event::Message {
            from: id(2),
            incarnation: inc(0),
            msg: Msg::Prepare { epoch: Epoch::new(2), ballot: ballot(4, 2) },
        },
    );
    assert_eq!(
        sends(&out),
        vec![(id(2), Msg::Nack { epoch: Epoch::new(2), ballot: ballot(4, 2), promised: ballot(5, 1) })]
    );
}

#[test]
fn paxos_2a_proposer_adopts_the_highest_ballot_accepted_value() {
    let base = view(1, &[(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]);
    let own = view(2, &[(0, 0), (1, 0), (2, 0)]);
    let low = view(2, &[(0, 0), (1, 0), (2, 0), (3, 0)]);
    let high = view(2, &[(1, 0), (2, 0), (3, 0), (4, 0)]);
    let mut p = Proposer::new(Epoch::new(2), ballot(9, 0), own.clone());
    assert_eq!(p.promise(&base, (id(0), inc(0)), Some((ballot(3, 1), low))), None);
    // Another incarnation of a member is no voter.
    assert_eq!(p.promise(&base, (id(1), inc(1)), None), None);
    assert_eq!(p.promise(&base, (id(1), inc(0)), Some((ballot(7, 4), high.clone()))), None);
    assert_eq!(p.promise(&base, (id(2), inc(0)), None), Some(high.clone()));
    // Accepts: a majority of the base at this ballot decides.
    assert_eq!(p.accepted(&base, (id(0), inc(0))), None);
    assert_eq!(p.accepted(&base, (id(0), inc(0))), None, "a duplicate ACCEPTED counts once");
    assert_eq!(p.accepted(&base, (id(3), inc(0))), None);
    assert_eq!(p.accepted(&base, (id(4), inc(0))), Some(high));

    // With no accepted report, the proposer's own value.
    let mut p = Proposer::new(Epoch::new(2), ballot(1, 0), own.clone());
    p.promise(&base, (id(0), inc(0)), None);
    p.promise(&base, (id(1), inc(0)), None);
    assert_eq!(p.promise(&base, (id(2), inc(0)), None), Some(own));
}

#[test]
fn restarted_incarnation_is_not_an_acceptor() {
    let mut c = Cluster::bootstrap(3);
    // Node 2 restarts as incarnation 1: its PREPARE, PROMISE and ACCEPTED do not count for view 1's instance.
    let mut out = Vec::new();
    let core = c.nodes.get_mut(&id(0)).unwrap();
    let prepare = Msg::Prepare { epoch: Epoch::new(2), ballot: ballot(1, 2) };
    let err = core.handle(ms(1), Event::Message { from: id(2), incarnation: inc(1), msg: prepare }, &mut out);
    assert!(matches!(err, Err(MembershipError::NotMember { from, .. }) if from == id(2)));
    assert_eq!(core.promised(), None);
    // Node 0 proposes; promises from the restarted node 2 are ignored, so node 1's is needed.
    c.cut.insert(id(1));
    c.nodes.insert(id(2), Membership::new(cfg(), member(2, 1)).unwrap());
    c.run_until(5000);
    assert_eq!(c.epoch(0), 1, "no majority without node 1: the new incarnation of 2 does not count");
    assert!(c.nodes[&id(0)].stats().proposals > 0, "node 0 tried");
    // Node 1 back: 0 and 1 exclude the old incarnation of 2 and then admit the new one.
    c.cut.clear();
    c.feed(id(2), Event::JoinRequested { seeds: vec![id(0), id(1)] });
    c.settle();
    c.run_until(12_000);
    assert!(c.epoch(0) >= 2);
    assert_eq!(c.nodes[&id(0)].view().unwrap().members[&id(2)].incarnation, inc(1));
    assert_eq!(c.nodes[&id(2)].view(), c.nodes[&id(0)].view());
}

#[test]
fn stop_acking_after_promise() {
    let mut c = Cluster::bootstrap(3);
    let hb = Msg::Heartbeat { epoch: Epoch::FIRST, sent: ms(7) };
    let out = c.feed(id(0), Event::Message { from: id(2), incarnation: inc(0), msg: hb.clone() });
    assert_eq!(sends(&out), vec![(id(2), Msg::Ack { epoch: Epoch::FIRST, sent: ms(7) })]);
    c.feed(
        id(0),
        Event::Message {
            from: id(1),
            incarnation: inc(0),
            msg: Msg::Prepare { epoch: Epoch::new(2), ballot: ballot(1, 1) },
        },
    );
    let out = c.feed(id(0), Event::Message { from: id(2), incarnation: inc(0), msg: hb });
    assert!(sends(&out).is_empty(), "no ACK once a ballot for the next epoch is promised: {out:?}");
    // Its own heartbeats no longer count itself either.
    let before = c.nodes[&id(0)].lease_until();
    c.now = ms(2000);
    c.feed(id(0), Event::Timer(Timer::Heartbeat));
    assert_eq!(c.nodes[&id(0)].lease_until(), before);
}

#[test]
fn acceptor_defers_exclusion_until_the_lease_of_x_ran_out() {
    let mut c = Cluster::bootstrap(3);
    c.run_until(1000);
    assert!(c.nodes.values().all(|n| n.is_active(ms(1000))));
    // Node 2 goes silent at 1000; its last heartbeat acked by 0 and 1 at 1000 (all heartbeats on a 100 grid).
    c.cut.insert(id(2));
    let last_ack = 1000;
    c.run_until(5000);
    assert_eq!(c.ids(0), vec![0, 1]);
    let decided = c.installed_at(0, 2).unwrap();
    let deferred: u64 = c.nodes.values().map(|n| n.stats().deferred_accepts).sum();
    assert!(deferred > 0, "the suspicion (S = 300) came before the lease wait ended");
    assert!(decided.get() >= last_ack + 1000, "decided at {decided:?}, before last_ack + L");
    assert!(
        decided.get() <= last_ack + 1000 + 50,
        "decided at {decided:?}: the deferred accepts should end the wait"
    );
    // Node 2's own lease (last heartbeat acked at 1000: ends at 1000 + 980) was over before the decision.
    assert_eq!(c.nodes[&id(2)].lease_until(), Some(ms(1980)));
    assert!(!c.nodes[&id(2)].is_active(decided));
    assert!(c.log.iter().any(|(t, n, a)| *n == id(2) && *a == Action::Active(false) && t.get() == 1980));
}

#[test]
fn joiner_waits_l_before_agreeing_to_an_exclusion() {
    let mut c = Cluster::bootstrap(2);
    c.run_until(3000);
    c.add(member(2, 0));
    c.feed(id(2), Event::JoinRequested { seeds: vec![id(0)] });
    c.settle();
    assert_eq!(c.ids(2), vec![0, 1, 2], "joined at once");
    let joined = c.installed_at(2, 2).unwrap();
    // Node 0 dies right after; 1 and 2 (a majority of view 2) exclude it, but 2 joined just now: it waits
    // L from its install even though it never acked node 0's heartbeats in epoch 1.
    c.cut.insert(id(0));
    c.run_until(10_000);
    let excluded = c.installed_at(1, 3).unwrap();
    assert_eq!(c.ids(1), vec![1, 2]);
    assert!(
        excluded.get() >= joined.get() + 1000,
        "exclusion at {excluded:?}, joiner installed at {joined:?}"
    );
}

#[test]
fn minority_cannot_install_a_view() {
    let mut c = Cluster::bootstrap(5);
    c.run_until(500);
    for i in [0, 1] {
        c.cut.insert(id(i));
    }
    // The two cut-off nodes cannot talk to anyone; the other three form a majority.
    c.run_until(20_000);
    assert_eq!(c.epoch(0), 1);
    assert_eq!(c.epoch(1), 1);
    // Each of them hears only itself, no majority of the view: it does not even try.
    assert_eq!(c.nodes[&id(0)].stats().proposals, 0, "a member that hears no majority proposed");
    assert!(!c.nodes[&id(0)].is_active(ms(20_000)) && !c.nodes[&id(1)].is_active(ms(20_000)));
    assert_eq!(c.ids(2), vec![2, 3, 4]);
    assert!(c.nodes[&id(4)].is_active(ms(20_000)));
}

#[test]
fn hears_majority_tells_the_cut_off_node_from_the_majority_within_half_a_lease() {
    let mut c = Cluster::bootstrap(5);
    c.run_until(500);
    assert!((0..5).all(|i| c.nodes[&id(i)].hears_majority(ms(500))));
    for i in [0, 1] {
        c.cut.insert(id(i));
    }
    // Window max(L/2, 2·heartbeat) = 500 ms: at 850 the cut-off pair last heard the others (heartbeats every
    // 100 ms, so after 400) and still counts them; at 1001 it does not, while the three others go on hearing
    // each other.
    c.run_until(850);
    assert!(c.nodes[&id(0)].hears_majority(ms(850)));
    c.run_until(1001);
    assert!(!c.nodes[&id(0)].hears_majority(ms(1001)) && !c.nodes[&id(1)].hears_majority(ms(1001)));
    assert!((2..5).all(|i| c.nodes[&id(i)].hears_majority(ms(1001))));
    // A node outside any view hears nobody.
    let loner = Membership::new(cfg(), member(9, 0)).unwrap();
    assert!(!loner.hears_majority(ms(0)));
}

#[test]
fn bootstrap_installs_view_1_without_a_round() {
    let list: Vec<Member> = (0..3).map(|i| member(i, 0)).collect();
    let mut n = Membership::new(cfg(), member(1, 0)).unwrap();
    let mut out = Vec::new();
    n.handle(ms(0), Event::Bootstrap { members: list.clone() }, &mut out).unwrap();
    assert_eq!(installs(&out), vec![View::new(Epoch::FIRST, list.clone())]);
    let hb: Vec<_> = sends(&out).into_iter().map(|(to, m)| (to.get(), m)).collect();
    assert_eq!(
        hb,
        vec![
            (0, Msg::Heartbeat { epoch: Epoch::FIRST, sent: ms(0) }),
            (2, Msg::Heartbeat { epoch: Epoch::FIRST, sent: ms(0) })
        ]
    );
    assert!(matches!(
        n.handle(ms(1), Event::Bootstrap { members: list.clone() }, &mut out),
        Err(MembershipError::WrongState { .. })
    ));
    let mut other = Membership::new(cfg(), member(1, 3)).unwrap();
    assert!(matches!(
        other.handle(ms(0), Event::Bootstrap { members: list }, &mut out),
        Err(MembershipError::WrongState { .. })
    ));
    assert_eq!(other.view(), None);
    // A whole cluster: every node bootstraps the same view 1 and gains its lease with the first acks.
    let c = Cluster::bootstrap(3);
    assert!((0..3).all(|i| c.epoch(i) == 1 && c.nodes[&id(i)].is_active(ms(0))));
}

#[test]
fn join_admits_the_node_replacing_an_older_incarnation() {
    let mut c = Cluster::bootstrap(3);
    c.run_until(2000);
    c.add(member(3, 0));
    c.feed(id(3), Event::JoinRequested { seeds: vec![id(2)] });
    c.settle();
    // Node 2 (rank 2) proposes after 2 × retry.
    c.run_until(2200);
    assert_eq!(c.ids(3), vec![0, 1, 2, 3]);
    assert!((0..4).all(|i| c.epoch(i) == 2));
    c.run_until(2400);
    assert!(c.nodes[&id(3)].is_active(ms(2400)), "the joiner gains its lease in the new view");
    // Node 1 restarts (incarnation 1) and joins again: the view replaces the old incarnation, after the
    // acceptors waited out its lease (it was acked until the restart).
    c.add(member(1, 1));
    c.feed(id(1), Event::JoinRequested { seeds: vec![id(0)] });
    c.settle();
    c.run_until(6000);
    assert_eq!(c.nodes[&id(0)].view().unwrap().members[&id(1)].incarnation, inc(1));
    let replaced = c.installed_at(0, 3).unwrap();
    assert!(replaced.get() >= 2400 + 1000 - 100, "replacement at {replaced:?}");
    assert!((0..4).all(|i| c.epoch(i) == 3 && c.nodes[&id(i)].is_active(ms(6000))));
}

/// Found by the membership simulation (`tests/simulation_membership.rs`, seed 84 at commit 8a7caeb): a member
/// that missed the views in which a joiner was admitted and removed again (it was partitioned) still held the
/// joiner's JOIN, and once back in the view proposed to admit a process that had long gone, leaving a dead
/// member in the view for `S + L`. Rule: a JOIN not renewed for S is forgotten (a live joiner re-sends every
/// retry while it is outside the view).
#[test]
fn join_not_renewed_for_s_is_forgotten() {
    let mut c = Cluster::bootstrap(3);
    c.run_until(1000);
    c.cut.insert(id(2));
    // One JOIN of node 3 reaches node 2 only; then node 3 dies (it is never added to the cluster).
    let join = Msg::Join { member: member(3, 0) };
    c.feed(id(2), Event::Message { from: id(3), incarnation: inc(0), msg: join });
    c.run_until(3000);
    assert_eq!(c.ids(0), vec![0, 1], "node 2 is excluded while cut off");
    c.cut.clear();
    c.run_until(8000);
    assert_eq!(c.ids(0), vec![0, 1, 2], "node 2 is readmitted after the partition");
    let ghost =
        c.log.iter().any(|(_, _, a)| matches!(a, Action::InstallView(v) if v.members.contains_key(&id(3))));
    assert!(!ghost, "a view admitted node 3 from a JOIN not renewed for S");
    assert!((0..3).all(|i| c.epoch(i) == c.epoch(0) && c.nodes[&id(i)].is_active(ms(8000))));
}

/// Found by the membership simulation (`tests/simulation_membership.rs`, seed 2068 at commit e85ad3a), a
/// lease-safety breach: node 3 heard node 0 resign, then missed the view that removed it (cut off) and, back
/// in the view, still counted id 0 as resigned when node 0's next incarnation had been admitted. It proposed
/// to exclude the new incarnation, and as "resigned" needs no lease wait, the acceptors agreed while that
/// incarnation was active. Rule: a resignation belongs to the incarnation that resigned.
#[test]
fn resignation_belongs_to_the_incarnation_that_resigned() {
    let mut c = Cluster::bootstrap(4);
    c.run_until(1000);
    // Node 3 hears node 0 resign, then is cut off before the view without node 0 is decided.
    c.cut.insert(id(3));
    c.feed(
        id(3),
        Event::Message { from: id(0), incarnation: inc(0), msg: Msg::Resign { epoch: Epoch::FIRST } },
    );
    let out = c.feed(id(0), Event::Leave);
    assert_eq!(out.first(), Some(&Action::Active(false)));
    c.settle();
    c.run_until(1500);
    assert!(c.log.iter().any(|(_, n, a)| *n == id(0) && *a == Action::Left), "node 0 left");
    c.nodes.remove(&id(0));
    c.run_until(4000);
    assert_eq!(c.ids(1), vec![1, 2], "node 3 is excluded while cut off");
    // Node 0 comes back as incarnation 1 and is admitted; then node 3 is reachable again and rejoins.
    c.add(member(0, 1));
    c.feed(id(0), Event::JoinRequested { seeds: vec![id(1)] });
    c.settle();
    c.run_until(7000);
    assert_eq!(c.ids(1), vec![0, 1, 2]);
    assert!(c.nodes[&id(0)].is_active(ms(7000)));
    let admitted = c.epoch(1);
    c.cut.clear();
    c.run_until(15_000);
    assert_eq!(c.ids(1), vec![0, 1, 2, 3], "node 3 is readmitted");
    let excluded = c.log.iter().find_map(|(t, _, a)| match a {
        Action::InstallView(v) if v.epoch.get() > admitted && !v.contains(id(0), inc(1)) => {
            Some((*t, v.clone()))
        }
        _ => None,
    });
    assert_eq!(excluded, None, "node 0's new incarnation was excluded as if it had resigned");
}

/// Found by the membership simulation (`tests/simulation_membership.rs`, seed 2384 at commit a8e57c3), a
/// permanent loss of the cluster with every node alive: a node whose incoming traffic had been cut (one way)
/// for longer than L suspected every other member just before it heard them again and proposed a view of
/// itself alone. It accepted that value at once (its own lease waits were over), so every later ballot whose
/// promises included its own had to propose it again (P2c), and with one other member paused every majority
/// did: the others accepted after their lease waits. Rule: a member proposes a change only while it hears
/// from a majority of its view (itself included); one that cannot could not get a view decided anyway, and
/// the members that hear a majority propose what is needed.
#[test]
fn a_member_that_hears_no_majority_proposes_no_change() {
    /// Feeds `event`, then every timer due by `until`; returns the PREPAREs sent, with their times.
    fn drive(
        node: &mut Membership,
        timers: &mut BTreeMap<Timer, Millis>,
        at: Millis,
        event: Event,
        until: u64,
    ) -> Vec<Millis> {
        let mut prepares = Vec::new();
        let mut next = Some((at, event));
        while let Some((now, event)) = next.take() {
            let mut out = Vec::new();
            let _ = node.handle(now, event, &mut out);
            for a in out {
                match a {
                    Action::SetTimer { timer, at } => {
                        timers.insert(timer, at);
                    }
                    Action::Send { msg: Msg::Prepare { .. }, .. } => prepares.push(now),
                    _ => {}
                }
            }
            let due = timers.iter().map(|(&t, &at)| (at, t)).min().filter(|&(at, _)| at.get() <= until);
            if let Some((at, timer)) = due {
                timers.remove(&timer);
                next = Some((at, Event::Timer(timer)));
            }
        }
        prepares
    }
    let mut node = Membership::new(cfg(), member(1, 0)).unwrap();
    let mut timers = BTreeMap::new();
    let members: Vec<Member> = (0..3).map(|i| member(i, 0)).collect();
    // Nobody is heard from: node 1 soon suspects both others, and ranks first among the members it hears.
    let prepares = drive(&mut node, &mut timers, ms(0), Event::Bootstrap { members }, 2000);
    assert!(prepares.is_empty(), "proposed while hearing no majority, at {prepares:?}");
    // Hearing node 0 again (with itself a majority), it proposes to exclude node 2 at its next suspect check
    // (2100), one retry later for its rank (node 0 ranks first); one PREPARE to each other member.
    let heartbeat = Msg::Heartbeat { epoch: Epoch::FIRST, sent: ms(1) };
    let event = Event::Message { from: id(0), incarnation: inc(0), msg: heartbeat };
    let prepares = drive(&mut node, &mut timers, ms(2001), event, 2150);
    assert_eq!(prepares, vec![ms(2150); 2], "hearing a majority again, node 1 proposes excluding node 2");
}

/// Found by the membership simulation (`tests/simulation_membership.rs`, scale scenario, seed 2885 at commit
/// a8e57c3): a JOIN node 4 had sent before its admission arrived late, after node 4 had left and exited, and
/// readmitted the departed process (a dead member in the view until its exclusion, `S + L` later). Rule: an
/// incarnation that resigned never becomes a member again (a restart is a new incarnation), so its JOINs are
/// stale.
#[test]
fn a_join_from_an_incarnation_that_resigned_is_ignored() {
    let mut c = Cluster::bootstrap(3);
    c.run_until(1000);
    c.add(member(3, 0));
    c.feed(id(3), Event::JoinRequested { seeds: vec![id(0)] });
    c.settle();
    c.run_until(2000);
    assert_eq!(c.ids(0), vec![0, 1, 2, 3]);
    c.feed(id(3), Event::Leave);
    c.settle();
    c.run_until(2500);
    assert!(c.log.iter().any(|(_, n, a)| *n == id(3) && *a == Action::Left), "node 3 left");
    c.nodes.remove(&id(3));
    assert_eq!(c.ids(0), vec![0, 1, 2]);
    let removed = c.epoch(0);
    // Node 3's JOIN from before its admission arrives now.
    let late = Msg::Join { member: member(3, 0) };
    c.feed(id(1), Event::Message { from: id(3), incarnation: inc(0), msg: late });
    c.settle();
    c.run_until(5000);
    assert_eq!(c.epoch(0), removed, "a view changed after the late JOIN");
    assert!((0..3).all(|i| c.ids(i) == [0, 1, 2] && c.nodes[&id(i)].is_active(ms(5000))));
}

/// Found by the membership simulation (`tests/simulation_membership.rs`, seed 4259 at commit 85b9d35): a node
/// told to leave while it heard nobody (its incoming traffic cut) resigned, the others removed it, and then
/// nothing ever reached it again (it was no longer a member, and a leaving node sent nothing), so it waited
/// for [`Action::Left`] forever. Rule: a leaving member keeps sending heartbeats (it gains no lease from
/// them) until a view without it is installed; a member of a newer epoch answers one with that view.
#[test]
fn a_leaver_that_missed_its_removal_learns_it_from_the_answers_to_its_heartbeats() {
    let mut c = Cluster::bootstrap(3);
    c.run_until(1000);
    c.cut.insert(id(2));
    c.run_until(1400);
    // Node 2 hears nobody now; it is told to leave, and only its RESIGN gets out.
    let resign = Msg::Resign { epoch: Epoch::FIRST };
    c.feed(id(2), Event::Leave);
    for to in [0, 1] {
        c.feed(id(to), Event::Message { from: id(2), incarnation: inc(0), msg: resign.clone() });
    }
    c.settle();
    c.run_until(2000);
    assert_eq!(c.ids(0), vec![0, 1], "the others removed the leaver");
    c.cut.clear();
    c.run_until(3000);
    assert!(
        c.log.iter().any(|(_, n, a)| *n == id(2) && *a == Action::Left),
        "the leaver never learnt it left"
    );
    assert!(!c.nodes[&id(2)].is_active(ms(3000)));
}

#[test]
fn leave_resigns_then_removal_needs_no_lease_wait() {
    let mut c = Cluster::bootstrap(3);
    c.run_until(1000);
    let out = c.feed(id(2), Event::Leave);
    assert_eq!(out.first(), Some(&Action::Active(false)), "stops acting before saying so");
    assert!(sends(&out).contains(&(id(0), Msg::Resign { epoch: Epoch::FIRST })));
    assert!(!c.nodes[&id(2)].is_active(ms(1000)));
    c.settle();
    assert_eq!(c.ids(0), vec![0, 1], "decided at once: node 2 resigned, so nobody waits for its lease");
    assert!(c.log.iter().any(|(_, n, a)| *n == id(2) && *a == Action::Left));
    let mut out = Vec::new();
    let last = c.nodes.get_mut(&id(0)).unwrap();
    assert!(last.handle(ms(1000), Event::Leave, &mut out).is_ok());
    let mut solo = Cluster::bootstrap(1);
    assert!(solo.nodes.get_mut(&id(0)).unwrap().handle(ms(0), Event::Leave, &mut out).is_err());
}

#[test]
fn lease_gained_and_lost_with_drift_arithmetic_at_the_boundaries() {
    // ⌊L·(1−ρ)/(1+ρ)⌋ with integer millis, rounding down.
    assert_eq!(lease_end(ms(0), ms(1000), 10_000), ms(980)); // 980.198…
    assert_eq!(lease_end(ms(5), ms(1000), 0), ms(1005));
    assert_eq!(lease_end(ms(0), ms(1010), 10_000), ms(990)); // exactly 990: 1010·0.99/1.01
    assert_eq!(lease_end(ms(0), ms(3), 200_000), ms(2)); // 3·0.8/1.2 = 2 exactly
    assert_eq!(lease_end(ms(0), ms(3), 200_001), ms(1)); // just above: rounds down to 1
    assert_eq!(lease_end(ms(u64::MAX - 1), ms(1000), 0), ms(u64::MAX));
    // L after the later of the last ack and the install, plus the tick for truncated clock readings.
    assert_eq!(exclusion_allowed_at(Some(ms(40)), ms(10), ms(1000)), ms(1041));
    assert_eq!(exclusion_allowed_at(Some(ms(5)), ms(10), ms(1000)), ms(1011));
    assert_eq!(exclusion_allowed_at(None, ms(10), ms(1000)), ms(1011));

    // Holder side in a 3-node view: one ack (plus itself) is a majority and starts the lease at `sent`.
    let mut n = Membership::new(cfg(), member(0, 0)).unwrap();
    let mut out = Vec::new();
    n.handle(ms(100), Event::Bootstrap { members: (0..3).map(|i| member(i, 0)).collect() }, &mut out)
        .unwrap();
    assert!(!n.is_active(ms(100)), "itself alone is no majority");
    out.clear();
    let ack = Msg::Ack { epoch: Epoch::FIRST, sent: ms(100) };
    n.handle(ms(150), Event::Message { from: id(2), incarnation: inc(0), msg: ack.clone() }, &mut out)
        .unwrap();
    assert_eq!(out, vec![Action::SetTimer { timer: Timer::LeaseEnd, at: ms(1080) }, Action::Active(true)]);
    assert!(n.is_active(ms(1079)) && !n.is_active(ms(1080)));
    out.clear();
    n.handle(ms(1080), Event::Timer(Timer::LeaseEnd), &mut out).unwrap();
    assert_eq!(out, vec![Action::Active(false)]);
    // An ack that arrives after the lease it would give has ended gives nothing.
    out.clear();
    n.handle(ms(1200), Event::Timer(Timer::Heartbeat), &mut out).unwrap();
    out.clear();
    n.handle(
        ms(2180),
        Event::Message {
            from: id(1),
            incarnation: inc(0),
            msg: Msg::Ack { epoch: Epoch::FIRST, sent: ms(1200) },
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(out, vec![Action::SetTimer { timer: Timer::LeaseEnd, at: ms(2180) }]);
    assert!(!n.is_active(ms(2180)));
    // An ack from a stale incarnation is refused and does not count.
    n.handle(ms(2200), Event::Timer(Timer::Heartbeat), &mut out).unwrap();
    let stale = Msg::Ack { epoch: Epoch::FIRST, sent: ms(2200) };
    assert!(
        n.handle(ms(2201), Event::Message { from: id(1), incarnation: inc(9), msg: stale }, &mut out)
            .is_err()
    );
    assert!(!n.is_active(ms(2201)));
}

#[test]
fn config_rejects_impossible_combinations_naming_the_field() {
    assert_eq!(Config::standard().validate(), Ok(()));
    let field = |c: Config| c.validate().unwrap_err().field;
    assert_eq!(field(Config { heartbeat: ms(0), ..cfg() }), "heartbeat");
    assert_eq!(field(Config { suspect_after: ms(100), ..cfg() }), "suspect_after");
    assert_eq!(field(Config { drift_ppm: 1_000_000, ..cfg() }), "drift_ppm");
    assert_eq!(field(Config { lease: ms(101), ..cfg() }), "lease", "⌊101·0.99/1.01⌋ = 99 ≤ heartbeat");
    assert_eq!(field(Config { retry: ms(0), ..cfg() }), "retry");
    assert!(Membership::new(Config { drift_ppm: 2_000_000, ..cfg() }, member(0, 0)).is_err());
    assert!(Config { lease: ms(104), ..cfg() }.validate().is_ok(), "⌊104·0.99/1.01⌋ = 101");
}

#[test]
fn older_epoch_is_dropped_and_newer_epoch_asks_for_the_view() {
    let mut c = Cluster::bootstrap(3);
    c.cut.insert(id(2));
    c.run_until(3000);
    assert_eq!(c.epoch(0), 2);
    // The excluded node's old heartbeat is answered with the current view; it learns it is out and asks to
    // join again.
    let out = c.feed(
        id(0),
        Event::Message {
            from: id(2),
            incarnation: inc(0),
            msg: Msg::Heartbeat { epoch: Epoch::FIRST, sent: ms(1) },
        },
    );
    assert!(
        matches!(&sends(&out)[..], [(to, Msg::Install { view })] if *to == id(2) && view.epoch.get() == 2)
    );
    let out = c.feed(
        id(0),
        Event::Message {
            from: id(2),
            incarnation: inc(0),
            msg: Msg::Ack { epoch: Epoch::FIRST, sent: ms(1) },
        },
    );
    assert!(out.is_empty());
    // A heartbeat of a newer epoch: ask for the view.
    let out = c.feed(
        id(2),
        Event::Message {
            from: id(0),
            incarnation: inc(0),
            msg: Msg::Heartbeat { epoch: Epoch::new(2), sent: ms(1) },
        },
    );
    assert_eq!(sends(&out), vec![(id(0), Msg::ViewQuery)]);
    c.cut.clear();
    c.queue.clear();
    c.feed(
        id(2),
        Event::Message {
            from: id(0),
            incarnation: inc(0),
            msg: Msg::Install { view: c.nodes[&id(0)].view().unwrap().clone() },
        },
    );
    c.settle();
    c.run_until(6000);
    assert_eq!(c.ids(0), vec![0, 1, 2], "readmitted");
    assert!((0..3).all(|i| c.nodes[&id(i)].is_active(ms(6000))));
}

#[test]
fn malformed_and_conflicting_messages_are_refused_not_panicked_on() {
    let mut c = Cluster::bootstrap(3);
    let mut out = Vec::new();
    let n = c.nodes.get_mut(&id(0)).unwrap();
    let bad = [
        (
            id(1),
            Msg::Accept {
                epoch: Epoch::new(2),
                ballot: ballot(1, 1),
                view: view(5, &[(0, 0)]),
                resigned: vec![],
            },
        ),
        (
            id(1),
            Msg::Accept { epoch: Epoch::new(2), ballot: ballot(1, 1), view: view(2, &[]), resigned: vec![] },
        ),
        (id(1), Msg::Install { view: view(1, &[(0, 0), (1, 0)]) }),
        (id(1), Msg::Install { view: view(0, &[(0, 0)]) }),
        (id(1), Msg::Join { member: member(4, 0) }),
        (id(9), Msg::Ack { epoch: Epoch::FIRST, sent: ms(0) }),
        (id(0), Msg::Heartbeat { epoch: Epoch::FIRST, sent: ms(0) }),
    ];
    for (from, msg) in bad {
        assert!(
            n.handle(ms(1), Event::Message { from, incarnation: inc(0), msg: msg.clone() }, &mut out)
                .is_err(),
            "{msg:?}"
        );
    }
    assert_eq!(n.stats().refused, 7);
    assert_eq!(n.view().unwrap().epoch, Epoch::FIRST);
    assert_eq!(n.promised(), None, "the malformed ACCEPT promised nothing");
}

/// A view bump: the same members under the next epoch, decided like any view; asked for once per epoch
/// (a second Renew in the same epoch does not bump twice), refused on a non-member.
#[test]
fn renew_decides_the_same_members_under_the_next_epoch() {
    let mut c = Cluster::bootstrap(3);
    c.run_until(500);
    assert_eq!(c.epoch(2), 1);
    c.feed(id(2), Event::Renew);
    c.feed(id(2), Event::Renew);
    c.settle();
    c.run_until(2000);
    for i in 0..3 {
        assert_eq!((c.epoch(i), c.ids(i)), (2, vec![0, 1, 2]), "node {i}");
        assert!(c.nodes[&id(i)].is_active(c.now), "node {i} keeps its lease over a bump");
    }
    let mut outsider = Membership::new(cfg(), member(5, 0)).unwrap();
    let mut out = Vec::new();
    assert!(matches!(
        outsider.handle(ms(0), Event::Renew, &mut out),
        Err(MembershipError::WrongState { event: "renew", .. })
    ));
}
