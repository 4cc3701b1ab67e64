//! The harness tested on two toy protocols: a central coordinator (correct on FIFO links without faults)
//! and a greedy one that enters at once (must be caught).

use super::*;
use crate::algo::{Algorithm, CoreError, LamportTs, LockView, Output};
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ToyMsg {
    Req(String),
    Grant(String, u64),
    Rel(String),
}

impl ProtocolMessage for ToyMsg {
    fn kind(&self) -> &'static str {
        match self {
            ToyMsg::Req(_) => "REQ",
            ToyMsg::Grant(..) => "GRANT",
            ToyMsg::Rel(_) => "REL",
        }
    }
    fn lock(&self) -> &str {
        match self {
            ToyMsg::Req(l) | ToyMsg::Grant(l, _) | ToyMsg::Rel(l) => l,
        }
    }
    fn timestamp(&self) -> Option<LamportTs> {
        None
    }
}

/// Node 0 keeps a FIFO queue per lock and grants in turn.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Central {
    me: NodeId,
    greedy: bool,
    /// Answers every try busy at once, lock free or not (must be caught).
    refuses_tries: bool,
    queues: BTreeMap<String, (Option<NodeId>, VecDeque<NodeId>, u64)>,
    held: BTreeSet<String>,
}

impl Central {
    fn coordinate(&mut self, from: NodeId, msg: ToyMsg, out: &mut Vec<Output<ToyMsg>>) {
        let me = self.me;
        let lock = msg.lock().to_string();
        let entry = self.queues.entry(lock.clone()).or_default();
        match msg {
            ToyMsg::Req(_) => entry.1.push_back(from),
            ToyMsg::Rel(_) => entry.0 = None,
            ToyMsg::Grant(..) => {}
        }
        if entry.0.is_none()
            && let Some(next) = entry.1.pop_front()
        {
            entry.0 = Some(next);
            entry.2 += 1;
            let token = FencingToken::new(entry.2);
            if next == me {
                self.held.insert(lock.clone());
                out.push(Output::Entered { lock, token });
            } else {
                out.push(Output::Send { to: next, msg: ToyMsg::Grant(lock, token.get()) });
            }
        }
    }
}

impl Protocol for Central {
    type Msg = ToyMsg;
    const ALGORITHM: Algorithm = Algorithm::ProbableOwner;
    fn fresh(me: NodeId, _n: usize) -> Self {
        Central { me, greedy: false, refuses_tries: false, queues: BTreeMap::new(), held: BTreeSet::new() }
    }
    fn request(&mut self, lock: &str, _peers: &Peers, out: &mut Vec<Output<ToyMsg>>) {
        if self.greedy {
            out.push(Output::Entered {
                lock: lock.into(),
                token: FencingToken::new(u64::from(self.me.get()) + 1),
            });
        } else if self.me == NodeId::new(0) {
            self.coordinate(self.me, ToyMsg::Req(lock.into()), out);
        } else {
            out.push(Output::Send { to: NodeId::new(0), msg: ToyMsg::Req(lock.into()) });
        }
    }
    fn try_request(&mut self, lock: &str, peers: &Peers, out: &mut Vec<Output<ToyMsg>>) {
        if self.refuses_tries {
            out.push(Output::Busy { lock: lock.into(), holder: None });
        } else {
            // The toy coordinator has no try: it waits like an ordinary request (never answered locked).
            self.request(lock, peers, out);
        }
    }
    fn release(&mut self, lock: &str, _peers: &Peers, out: &mut Vec<Output<ToyMsg>>) {
        self.held.remove(lock);
        if self.greedy {
        } else if self.me == NodeId::new(0) {
            self.coordinate(self.me, ToyMsg::Rel(lock.into()), out);
        } else {
            out.push(Output::Send { to: NodeId::new(0), msg: ToyMsg::Rel(lock.into()) });
        }
    }
    fn withdraw(&mut self, _lock: &str, _peers: &Peers, _out: &mut Vec<Output<ToyMsg>>) {}
    fn on_message(
        &mut self,
        from: NodeId,
        msg: ToyMsg,
        _peers: &mut Peers,
        out: &mut Vec<Output<ToyMsg>>,
    ) -> Result<(), CoreError> {
        match msg {
            ToyMsg::Grant(lock, token) => {
                self.held.insert(lock.clone());
                out.push(Output::Entered { lock, token: FencingToken::new(token) });
            }
            other => self.coordinate(from, other, out),
        }
        Ok(())
    }
    fn observe_clock(&mut self, _clock: LamportTs) {}
    fn peer_restarted(&mut self, _peer: NodeId, _peers: &Peers, _out: &mut Vec<Output<ToyMsg>>) {}
    fn members_changed(
        &mut self,
        _removed: &[NodeId],
        _added: &[(NodeId, Incarnation)],
        _peers: &Peers,
        _out: &mut Vec<Output<ToyMsg>>,
    ) {
    }
    fn clock(&self) -> LamportTs {
        LamportTs::new(0)
    }
    fn view(&self, lock: &str) -> LockView {
        LockView { held_here: self.held.contains(lock), ..LockView::default() }
    }
    fn needs_peer(&self, _lock: &str, peer: NodeId) -> bool {
        peer == NodeId::new(0)
    }
}

#[test]
fn central_coordinator_passes_and_counts_messages() {
    for seed in 0..300 {
        for nodes in 1..=5 {
            let cfg = SimConfig::preset(SimMode::FaultFree, nodes, seed);
            let report = run::<Central>(&cfg).unwrap_or_else(|v| panic!("{v}"));
            assert_eq!(report.grants, report.issued);
            // Node 0 talks to itself for free; every other entry costs REQ + GRANT + REL.
            assert!(report.messages <= 3 * report.grants);
        }
    }
}

#[test]
fn runs_replay_exactly() {
    let cfg = SimConfig::preset(SimMode::Cancels, 4, 99);
    assert_eq!(run::<Central>(&cfg), run::<Central>(&cfg));
}

#[test]
fn greedy_protocol_is_caught_with_seed_and_replay_command() {
    let found = (0..200).find_map(|seed| {
        let cfg = SimConfig::preset(SimMode::FaultFree, 3, seed);
        run_with(&cfg, |me, n| Central { greedy: true, ..Central::fresh(me, n) }).err()
    });
    let v = found.expect("a greedy protocol must break mutual exclusion");
    let text = v.to_string();
    assert!(text.contains("mutual exclusion"), "{text}");
    assert!(text.contains(&format!("DMUTEX_SIM_SEED={}", v.seed)), "{text}");
    assert!(text.contains("last steps:"), "{text}");
}

/// Try-locks: the coordinator (whose tries wait) passes the try mode; one that answers every try locked,
/// even on a free lock, is caught by "locked only while another request was live".
#[test]
fn a_protocol_that_refuses_tries_on_a_free_lock_is_caught() {
    for seed in 0..100 {
        let cfg = SimConfig::preset(SimMode::Tries, 3, seed);
        run::<Central>(&cfg).unwrap_or_else(|v| panic!("{v}"));
    }
    let found = (0..200).find_map(|seed| {
        let cfg = SimConfig::preset(SimMode::Tries, 3, seed);
        run_with(&cfg, |me, n| Central { refuses_tries: true, ..Central::fresh(me, n) }).err()
    });
    let v = found.expect("refusing a try on a free lock must be caught");
    assert!(v.to_string().contains("though no other request"), "{v}");
}

#[test]
fn serial_and_saturated_loads_finish() {
    for load in [Load::Serial, Load::Saturated] {
        let cfg = SimConfig { load, requests: 40, locks: 1, ..SimConfig::preset(SimMode::FaultFree, 4, 7) };
        let report = run::<Central>(&cfg).unwrap_or_else(|v| panic!("{v}"));
        assert_eq!(report.grants, 40);
        assert_eq!(report.entry_messages.iter().sum::<u64>(), report.messages);
    }
}
