//! Forming view 1 exactly once: the step before the membership core ([`super::Event::Bootstrap`] installs a
//! list without a round, so the driver must make sure that only one list ever becomes view 1).
//!
//! Sans-I/O like the rest of `algo`: [`Formation::handle`]`(now, event, &mut out)`.
//!
//! Rules (each has a unit test below, named after it):
//! - **One former.** Only the lowest configured id (the *former*) may decide the first list. It decides only
//!   after every other configured node has answered its QUERY with "no view" (STATE without an epoch), each
//!   answer coming from the incarnation of that node it knows newest; the list is those incarnations and
//!   itself. It sends the list (FORM) to everyone and installs it.
//! - **Answers are promises.** A node without a view answers QUERY with "no view"; from then on it takes a
//!   FORM only from the newest incarnation of the former it has heard of (a handshake announces a new
//!   incarnation before any of its messages). So once a former's incarnation `b` has collected every "no
//!   view", a FORM of an earlier incarnation `a` is refused everywhere; and any node that had installed `a`'s
//!   list before answers `b` with its epoch, so `b` does not decide.
//! - **A FORM must list the receiver as it is.** A node whose incarnation the list does not name (it restarted
//!   after answering) ignores it and will join instead.
//! - **A view anywhere means join.** A node without a view that hears STATE with an epoch stops forming and
//!   asks the membership core to join ([`FormAction::Join`]); a node that is a member answers QUERY with its
//!   epoch. After view 1 every start is a join.
//! - **A restart voids an answer.** An answer counts only while the answering incarnation is the newest known.
//!
//! Not covered (stated in the README): forming needs every configured node up once; if the nodes that hold
//! the last view all lose it (a majority crashed), the survivors cannot decide a view and the cluster must be
//! restarted whole, which forms view 1 again.
//!
//! Must never: let two lists become view 1 while a process holding the first is alive, or panic on a message.

use super::{Epoch, Member};
use crate::algo::{Incarnation, Millis, NodeId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A formation message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FormMsg {
    /// "Do you have a view?", with the sender's peer address (a node outside the receiver's peer list is
    /// answered there).
    Query {
        /// Where the sender listens for peers.
        addr: String,
    },
    /// The answer: the sender's installed epoch, `None` if it has none (a promise, see the module doc).
    State {
        /// The installed epoch.
        epoch: Option<Epoch>,
    },
    /// The former's decision: install these members as view 1.
    Form {
        /// Every configured node at the incarnation that answered.
        members: Vec<Member>,
    },
}

impl FormMsg {
    /// The message type, for counters.
    pub fn kind(&self) -> &'static str {
        match self {
            FormMsg::Query { .. } => "FORM_QUERY",
            FormMsg::State { .. } => "FORM_STATE",
            FormMsg::Form { .. } => "FORM",
        }
    }
}

/// Input to [`Formation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormEvent {
    /// A handshake announced `incarnation` of `peer` (before any of its messages).
    Hello {
        /// The peer.
        peer: NodeId,
        /// Its incarnation.
        incarnation: Incarnation,
    },
    /// A formation message.
    Message {
        /// Sender.
        from: NodeId,
        /// Its incarnation.
        incarnation: Incarnation,
        /// Payload.
        msg: FormMsg,
    },
    /// Periodic step: re-ask the nodes that have not answered (every `retry`).
    Tick,
}

/// What [`Formation`] asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormAction {
    /// Send `msg` to `to`.
    Send {
        /// Destination.
        to: NodeId,
        /// Payload.
        msg: FormMsg,
    },
    /// Feed [`super::Event::Bootstrap`] with these members to the membership core.
    Bootstrap {
        /// View 1's members.
        members: Vec<Member>,
    },
    /// Feed [`super::Event::JoinRequested`] with these seeds: a view exists.
    Join {
        /// Who to ask first (the node that answered with a view), then every configured node.
        seeds: Vec<NodeId>,
    },
}

/// Where formation stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    /// No view known anywhere yet.
    Waiting,
    /// This node bootstrapped or asked to join: nothing more to do but answer.
    Done,
}

/// One node's side of forming view 1.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Formation {
    me: Member,
    /// Every configured node but this one, with its address.
    others: BTreeMap<NodeId, String>,
    /// The newest incarnation heard of, per configured node.
    known: BTreeMap<NodeId, Incarnation>,
    /// Nodes that answered "no view", at the incarnation that answered.
    empty: BTreeMap<NodeId, Incarnation>,
    phase: Phase,
    retry: Millis,
    last_ask: Option<Millis>,
}

impl Formation {
    /// Formation for `me` among `configured` (id → address, `me` included); queries are re-sent every
    /// `retry`. A node that is not among `configured` takes no part: it is done at once (it joins).
    pub fn new(me: Member, configured: impl IntoIterator<Item = (NodeId, String)>, retry: Millis) -> Self {
        let configured: BTreeMap<NodeId, String> = configured.into_iter().collect();
        let phase = if configured.contains_key(&me.id) { Phase::Waiting } else { Phase::Done };
        let others = configured.into_iter().filter(|(id, _)| *id != me.id).collect();
        Formation { me, others, known: BTreeMap::new(), empty: BTreeMap::new(), phase, retry, last_ask: None }
    }

    /// The node that may decide the first list: the lowest configured id.
    pub fn former(&self) -> NodeId {
        self.others.keys().next().copied().map_or(self.me.id, |low| low.min(self.me.id))
    }

    /// Whether this node has bootstrapped or asked to join.
    pub fn done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// What formation waits for, for readiness reasons (`None` once done).
    pub fn waiting_for(&self) -> Option<String> {
        if self.done() {
            return None;
        }
        let missing: Vec<String> =
            self.others.keys().filter(|id| !self.counts(**id)).map(|id| id.get().to_string()).collect();
        let who = if self.former() == self.me.id {
            "this node forms view 1".to_string()
        } else {
            format!("node {} forms view 1", self.former())
        };
        Some(format!(
            "forming the cluster: {who} once every configured node answered; not yet answered: {}",
            if missing.is_empty() { "none".to_string() } else { missing.join(", ") }
        ))
    }

    /// Whether `id`'s "no view" answer counts (from its newest known incarnation).
    fn counts(&self, id: NodeId) -> bool {
        self.empty.get(&id).is_some_and(|inc| self.known.get(&id) == Some(inc))
    }

    /// The single entry point. `installed` is the membership core's installed epoch, if any.
    pub fn handle(
        &mut self,
        now: Millis,
        installed: Option<Epoch>,
        event: FormEvent,
        out: &mut Vec<FormAction>,
    ) {
        if installed.is_some() {
            self.phase = Phase::Done;
        }
        match event {
            FormEvent::Hello { peer, incarnation } => {
                if self.observe(peer, incarnation) && self.phase == Phase::Waiting {
                    out.push(FormAction::Send { to: peer, msg: self.query() });
                }
            }
            FormEvent::Message { from, incarnation, msg } => {
                if !self.others.contains_key(&from) {
                    // Not configured: formation is among the configured nodes only (a joiner joins).
                    if matches!(msg, FormMsg::Query { .. }) {
                        out.push(FormAction::Send { to: from, msg: FormMsg::State { epoch: installed } });
                    }
                    return;
                }
                self.observe(from, incarnation);
                if self.known.get(&from) != Some(&incarnation) {
                    return; // an older incarnation than one already heard of
                }
                self.message(from, incarnation, msg, installed, out);
            }
            FormEvent::Tick => {
                if self.phase == Phase::Waiting
                    && self.last_ask.is_none_or(|t| now.get() >= t.get() + self.retry.get())
                {
                    self.last_ask = Some(now);
                    for (&id, _) in self.known.iter().filter(|(id, _)| !self.empty.contains_key(id)) {
                        out.push(FormAction::Send { to: id, msg: self.query() });
                    }
                    self.try_form(out);
                }
            }
        }
    }

    fn query(&self) -> FormMsg {
        FormMsg::Query { addr: self.me.addr.clone() }
    }

    /// Records `incarnation` of `peer`; whether it is newer than what was known.
    fn observe(&mut self, peer: NodeId, incarnation: Incarnation) -> bool {
        if !self.others.contains_key(&peer) {
            return false;
        }
        match self.known.get(&peer) {
            Some(&known) if known >= incarnation => false,
            _ => {
                self.known.insert(peer, incarnation);
                true
            }
        }
    }

    fn message(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        msg: FormMsg,
        installed: Option<Epoch>,
        out: &mut Vec<FormAction>,
    ) {
        match msg {
            FormMsg::Query { .. } => {
                out.push(FormAction::Send { to: from, msg: FormMsg::State { epoch: installed } });
            }
            FormMsg::State { epoch: Some(_) } => {
                if self.phase == Phase::Waiting {
                    self.phase = Phase::Done;
                    let mut seeds = vec![from];
                    seeds.extend(self.others.keys().copied().filter(|&id| id != from));
                    out.push(FormAction::Join { seeds });
                }
            }
            FormMsg::State { epoch: None } => {
                self.empty.insert(from, incarnation);
                self.try_form(out);
            }
            FormMsg::Form { members } => {
                let lists_me =
                    members.iter().any(|m| m.id == self.me.id && m.incarnation == self.me.incarnation);
                if self.phase == Phase::Waiting && from == self.former() && lists_me {
                    self.phase = Phase::Done;
                    out.push(FormAction::Bootstrap { members });
                }
            }
        }
    }

    /// The former decides once every other configured node's newest incarnation answered "no view".
    fn try_form(&mut self, out: &mut Vec<FormAction>) {
        if self.phase != Phase::Waiting || self.former() != self.me.id {
            return;
        }
        if !self.others.keys().all(|&id| self.counts(id)) {
            return;
        }
        let mut members = vec![self.me.clone()];
        for (&id, addr) in &self.others {
            let incarnation = self.known[&id];
            members.push(Member { id, incarnation, addr: addr.clone() });
        }
        for &id in self.others.keys() {
            out.push(FormAction::Send { to: id, msg: FormMsg::Form { members: members.clone() } });
        }
        self.phase = Phase::Done;
        out.push(FormAction::Bootstrap { members });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u16, inc: u64) -> Member {
        Member { id: NodeId::new(id), incarnation: Incarnation::new(inc), addr: format!("n{id}:7070") }
    }

    fn formation(id: u16, inc: u64, n: u16) -> Formation {
        let configured = (0..n).map(|i| (NodeId::new(i), format!("n{i}:7070")));
        Formation::new(member(id, inc), configured, Millis::new(300))
    }

    fn step(f: &mut Formation, installed: Option<u64>, event: FormEvent) -> Vec<FormAction> {
        let mut out = Vec::new();
        f.handle(Millis::new(0), installed.map(Epoch::new), event, &mut out);
        out
    }

    fn msg(from: u16, inc: u64, msg: FormMsg) -> FormEvent {
        FormEvent::Message { from: NodeId::new(from), incarnation: Incarnation::new(inc), msg }
    }

    fn hello(peer: u16, inc: u64) -> FormEvent {
        FormEvent::Hello { peer: NodeId::new(peer), incarnation: Incarnation::new(inc) }
    }

    fn formed(out: &[FormAction]) -> Option<Vec<Member>> {
        out.iter().find_map(|a| match a {
            FormAction::Bootstrap { members } => Some(members.clone()),
            _ => None,
        })
    }

    #[test]
    fn one_former_decides_after_every_answer() {
        let mut f = formation(0, 7, 3);
        assert_eq!(f.former(), NodeId::new(0));
        step(&mut f, None, hello(1, 11));
        step(&mut f, None, hello(2, 21));
        assert!(formed(&step(&mut f, None, msg(1, 11, FormMsg::State { epoch: None }))).is_none());
        let out = step(&mut f, None, msg(2, 21, FormMsg::State { epoch: None }));
        assert_eq!(formed(&out), Some(vec![member(0, 7), member(1, 11), member(2, 21)]));
        let forms = out.iter().filter(|a| matches!(a, FormAction::Send { msg: FormMsg::Form { .. }, .. }));
        assert_eq!(forms.count(), 2);
        assert!(f.done());
    }

    #[test]
    fn a_single_configured_node_forms_alone() {
        let mut f = formation(0, 1, 1);
        assert_eq!(formed(&step(&mut f, None, FormEvent::Tick)), Some(vec![member(0, 1)]));
    }

    #[test]
    fn only_the_lowest_id_forms() {
        let mut f = formation(1, 5, 3);
        step(&mut f, None, hello(0, 1));
        step(&mut f, None, hello(2, 1));
        assert!(formed(&step(&mut f, None, msg(2, 1, FormMsg::State { epoch: None }))).is_none());
        assert!(formed(&step(&mut f, None, msg(0, 1, FormMsg::State { epoch: None }))).is_none());
        // A FORM from a non-former is ignored; the former's is taken.
        let list = vec![member(0, 1), member(1, 5), member(2, 1)];
        assert!(formed(&step(&mut f, None, msg(2, 1, FormMsg::Form { members: list.clone() }))).is_none());
        assert_eq!(
            formed(&step(&mut f, None, msg(0, 1, FormMsg::Form { members: list.clone() }))),
            Some(list)
        );
    }

    #[test]
    fn answers_are_promises() {
        // Node 1 answered the former's incarnation 2: a FORM of incarnation 1 arriving later is refused.
        let mut f = formation(1, 5, 2);
        step(&mut f, None, hello(0, 1));
        step(&mut f, None, hello(0, 2));
        let out = step(&mut f, None, msg(0, 2, FormMsg::Query { addr: "n0:7070".into() }));
        assert_eq!(out, vec![FormAction::Send { to: NodeId::new(0), msg: FormMsg::State { epoch: None } }]);
        let old = vec![member(0, 1), member(1, 5)];
        assert!(formed(&step(&mut f, None, msg(0, 1, FormMsg::Form { members: old }))).is_none());
        let new = vec![member(0, 2), member(1, 5)];
        assert!(formed(&step(&mut f, None, msg(0, 2, FormMsg::Form { members: new }))).is_some());
    }

    #[test]
    fn a_form_must_list_the_receiver_as_it_is() {
        let mut f = formation(1, 6, 2);
        step(&mut f, None, hello(0, 1));
        let stale = vec![member(0, 1), member(1, 5)];
        assert!(formed(&step(&mut f, None, msg(0, 1, FormMsg::Form { members: stale }))).is_none());
        assert!(!f.done());
    }

    #[test]
    fn a_view_anywhere_means_join() {
        let mut f = formation(0, 3, 3);
        step(&mut f, None, hello(1, 1));
        step(&mut f, None, hello(2, 1));
        step(&mut f, None, msg(1, 1, FormMsg::State { epoch: None }));
        let out = step(&mut f, None, msg(2, 1, FormMsg::State { epoch: Some(Epoch::new(4)) }));
        assert_eq!(out, vec![FormAction::Join { seeds: vec![NodeId::new(2), NodeId::new(1)] }]);
        assert!(f.done());
        // A member answers queries with its epoch.
        let out = step(&mut f, Some(5), msg(1, 1, FormMsg::Query { addr: "n1:7070".into() }));
        assert_eq!(
            out,
            vec![FormAction::Send { to: NodeId::new(1), msg: FormMsg::State { epoch: Some(Epoch::new(5)) } }]
        );
    }

    #[test]
    fn a_restart_voids_an_answer() {
        let mut f = formation(0, 1, 3);
        step(&mut f, None, hello(1, 1));
        step(&mut f, None, hello(2, 1));
        step(&mut f, None, msg(1, 1, FormMsg::State { epoch: None }));
        // Node 1 restarts before node 2 answers: its old answer no longer counts.
        let out = step(&mut f, None, hello(1, 2));
        assert_eq!(
            out,
            vec![FormAction::Send { to: NodeId::new(1), msg: FormMsg::Query { addr: "n0:7070".into() } }]
        );
        assert!(formed(&step(&mut f, None, msg(2, 1, FormMsg::State { epoch: None }))).is_none());
        // An answer of the old incarnation arriving late is ignored too.
        assert!(formed(&step(&mut f, None, msg(1, 1, FormMsg::State { epoch: None }))).is_none());
        let out = step(&mut f, None, msg(1, 2, FormMsg::State { epoch: None }));
        assert_eq!(formed(&out), Some(vec![member(0, 1), member(1, 2), member(2, 1)]));
    }

    #[test]
    fn a_node_outside_the_forming_set_takes_no_part() {
        let configured = (0..3).map(|i| (NodeId::new(i), format!("n{i}:7070")));
        let mut f = Formation::new(member(5, 1), configured, Millis::new(300));
        assert!(f.done() && f.waiting_for().is_none());
        step(&mut f, None, hello(0, 1));
        assert!(step(&mut f, None, FormEvent::Tick).is_empty());
    }

    #[test]
    fn unconfigured_nodes_are_answered_but_never_counted() {
        let mut f = formation(0, 1, 2);
        let out = step(&mut f, None, msg(9, 1, FormMsg::State { epoch: None }));
        assert!(out.is_empty());
        let out = step(&mut f, Some(3), msg(9, 1, FormMsg::Query { addr: "n9:7070".into() }));
        assert_eq!(
            out,
            vec![FormAction::Send { to: NodeId::new(9), msg: FormMsg::State { epoch: Some(Epoch::new(3)) } }]
        );
    }
}
