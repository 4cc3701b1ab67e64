//! The membership state machine: one node's view, its acceptor and proposer, heartbeats and member lease.
//!
//! See the parent module for the protocol and `lease.rs` for the lease rule. Timers are idempotent: each
//! handler re-checks the state, so a timer that fires late or after the state moved on does no harm.
//!
//! Must never: panic on any event, read a clock, or let a message from a non-member move Paxos state.

use super::lease::{at, exclusion_allowed_at, later, lease_end};
use super::paxos::{Acceptor, Ballot, Proposer};
use super::view::{Epoch, Member, View};
use super::{Action, Config, ConfigError, Event, MembershipError, Msg, Timer};
use crate::algo::{Incarnation, Millis, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Counters kept by the membership core.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct MembershipStats {
    /// Views installed (bootstrap included).
    pub views_installed: u64,
    /// Ballots started by this node.
    pub proposals: u64,
    /// Views this node decided as proposer.
    pub decided: u64,
    /// ACCEPTs held back until a lease wait was over.
    pub deferred_accepts: u64,
    /// Values this node's acceptor accepted (phase 2b), its own proposals' included. A checker that reads
    /// [`Membership::last_accepted`] after each event learns from this how many it may have missed: one
    /// event can accept a view, decide it, and accept the next one.
    pub accepts: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Events refused with a [`MembershipError`].
    pub refused: u64,
}

/// Which epoch a message must be about to pass [`Membership::gate`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum About {
    /// The installed view's epoch (heartbeats, acks).
    Installed,
    /// The epoch being decided: installed + 1 (Paxos messages).
    Deciding,
}

/// What [`Membership::gate`] checks a message against: its epoch, which epoch it must be about, and whether
/// an older epoch is answered with the current view (heartbeats, PREPARE and ACCEPT: a stale member or
/// proposer learns where things stand). `None` for the messages that are not about one epoch.
fn gated(msg: &Msg) -> Option<(Epoch, About, bool)> {
    match *msg {
        Msg::Heartbeat { epoch, .. } => Some((epoch, About::Installed, true)),
        Msg::Ack { epoch, .. } | Msg::Resign { epoch } => Some((epoch, About::Installed, false)),
        Msg::Prepare { epoch, .. } | Msg::Accept { epoch, .. } => Some((epoch, About::Deciding, true)),
        Msg::Promise { epoch, .. } | Msg::Nack { epoch, .. } | Msg::Accepted { epoch, .. } => {
            Some((epoch, About::Deciding, false))
        }
        Msg::Install { .. } | Msg::ViewQuery | Msg::Join { .. } => None,
    }
}

/// An ACCEPT held back until the lease waits of the members it excludes are over.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Deferred {
    from: NodeId,
    ballot: Ballot,
    view: View,
}

/// One node's membership core.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Membership {
    cfg: Config,
    me: Member,
    view: Option<View>,
    /// Local time of the last install.
    installed_at: Millis,
    acceptor: Acceptor,
    /// The last value this node's acceptor accepted, kept across installs (for checkers and debugging).
    last_accepted: Option<(Ballot, View)>,
    proposer: Option<Proposer>,
    /// The highest round seen in the instance being decided.
    max_round: u64,
    /// When each member (at its incarnation) was last heard from.
    last_heard: BTreeMap<NodeId, (Incarnation, Millis)>,
    /// When this node last acked each member's heartbeat (its own included: counting itself is an ack).
    last_ack: BTreeMap<NodeId, Millis>,
    /// Own heartbeats awaiting a majority of acks, by send time: who acked.
    heartbeats: BTreeMap<Millis, BTreeSet<NodeId>>,
    lease_until: Option<Millis>,
    active: bool,
    /// Nodes asking to be admitted, with when their latest JOIN came. A JOIN not renewed for S is ignored
    /// (a live joiner re-sends it every retry while it is outside the view): the joiner may have died, or
    /// have been admitted and removed in views this node missed.
    joins: BTreeMap<NodeId, (Member, Millis)>,
    /// Members that resigned (stopped acting) and wait for their removal, at the incarnation that resigned:
    /// a later incarnation of the same id has promised nothing of the kind.
    resigned: BTreeSet<(NodeId, Incarnation)>,
    /// Per id, the newest incarnation known to have resigned and been removed: it never becomes a member
    /// again (a restart is a new incarnation), so a JOIN of it, or of an older one, is stale.
    retired: BTreeMap<NodeId, Incarnation>,
    leaving: bool,
    /// [`Event::Renew`] asked for a view after this epoch with the same members.
    renew_after: Option<Epoch>,
    deferred: Option<Deferred>,
    /// While joining: the nodes to ask.
    seeds: Option<Vec<NodeId>>,
    /// When the Propose timer is due, if set.
    propose_at: Option<Millis>,
    stats: MembershipStats,
}

impl Membership {
    /// A node `me` that has installed no view yet: it waits for [`Event::Bootstrap`],
    /// [`Event::JoinRequested`] or an INSTALL.
    pub fn new(cfg: Config, me: Member) -> Result<Self, ConfigError> {
        cfg.validate()?;
        Ok(Membership {
            cfg,
            me,
            view: None,
            installed_at: Millis::default(),
            acceptor: Acceptor::new(Epoch::FIRST),
            last_accepted: None,
            proposer: None,
            max_round: 0,
            last_heard: BTreeMap::new(),
            last_ack: BTreeMap::new(),
            heartbeats: BTreeMap::new(),
            lease_until: None,
            active: false,
            joins: BTreeMap::new(),
            resigned: BTreeSet::new(),
            retired: BTreeMap::new(),
            leaving: false,
            renew_after: None,
            deferred: None,
            seeds: None,
            propose_at: None,
            stats: MembershipStats::default(),
        })
    }

    /// The single entry point: feed one event, collect the actions in `out` (appended, in order).
    pub fn handle(
        &mut self,
        now: Millis,
        event: Event,
        out: &mut Vec<Action>,
    ) -> Result<(), MembershipError> {
        let result = match event {
            Event::Bootstrap { members } => self.bootstrap(now, members, out),
            Event::JoinRequested { seeds } => self.join_requested(now, seeds, out),
            Event::Leave => self.leave(now, out),
            Event::Renew => self.renew(now, out),
            Event::Message { from, incarnation, msg } => self.message(now, from, incarnation, msg, out),
            Event::Timer(timer) => {
                self.timer(now, timer, out);
                Ok(())
            }
        };
        if result.is_err() {
            self.stats.refused += 1;
        }
        result
    }

    /// This node.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// The installed view, if any.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// Whether this node is a member of its installed view.
    pub fn is_member(&self) -> bool {
        self.view.as_ref().is_some_and(|v| v.contains(self.me.id, self.me.incarnation))
    }

    /// Whether this node may act (grant) at local time `now`: its member lease is valid and it is not leaving.
    pub fn is_active(&self, now: Millis) -> bool {
        self.active && !self.leaving && self.lease_until.is_some_and(|u| now < u)
    }

    /// Whether this node heard from a majority of its view (itself counted) in the last `max(L/2, 2·heartbeat)`
    /// before `now`. For a driver whose member lease lapsed: hearing a majority means a view change among
    /// reachable members is under way and the lease is likely back soon; not hearing one means this node is
    /// the one cut off. A hint about liveness only: nothing safe depends on it.
    pub fn hears_majority(&self, now: Millis) -> bool {
        let Some(view) = self.view.as_ref().filter(|_| self.is_member()) else { return false };
        let window = Millis::new((self.cfg.lease.get() / 2).max(self.cfg.heartbeat.get().saturating_mul(2)));
        let heard = (view.members.values())
            .filter(|m| {
                m.id == self.me.id
                    || self
                        .last_heard
                        .get(&m.id)
                        .is_some_and(|&(inc, t)| inc == m.incarnation && later(t, window) > now)
            })
            .count();
        heard >= view.majority()
    }

    /// The end of the member lease on the local clock, if one was gained.
    pub fn lease_until(&self) -> Option<Millis> {
        self.lease_until
    }

    /// The value this node's acceptor accepted for the next epoch, with its ballot.
    pub fn accepted(&self) -> Option<(Ballot, &View)> {
        self.acceptor.accepted.as_ref().map(|(b, v)| (*b, v))
    }

    /// The last value this node's acceptor accepted (for any epoch), with its ballot: unlike
    /// [`Membership::accepted`] it survives the install of the view it helped decide.
    pub fn last_accepted(&self) -> Option<(Ballot, &View)> {
        self.last_accepted.as_ref().map(|(b, v)| (*b, v))
    }

    /// The highest ballot this node's acceptor promised for the next epoch.
    pub fn promised(&self) -> Option<Ballot> {
        self.acceptor.promised
    }

    /// Whether this node would propose a new view at local time `now`: it suspects a member, knows of a
    /// resignation, or has a join request. For checkers: in a quiet cluster no member wants a change.
    pub fn wants_change(&self, now: Millis) -> bool {
        self.is_member() && self.desired(now).is_some()
    }

    /// Counters.
    pub fn stats(&self) -> &MembershipStats {
        &self.stats
    }

    fn me_id(&self) -> (NodeId, Incarnation) {
        (self.me.id, self.me.incarnation)
    }

    fn send(out: &mut Vec<Action>, to: NodeId, msg: Msg) {
        out.push(Action::Send { to, msg });
    }

    /// Every member of the installed view but this node.
    fn others(&self) -> Vec<NodeId> {
        self.view.iter().flat_map(|v| v.ids()).filter(|&id| id != self.me.id).collect()
    }

    fn bootstrap(
        &mut self,
        now: Millis,
        members: Vec<Member>,
        out: &mut Vec<Action>,
    ) -> Result<(), MembershipError> {
        if self.view.is_some() {
            return Err(MembershipError::WrongState {
                event: "bootstrap",
                reason: "a view is already installed",
            });
        }
        let view = View::new(Epoch::FIRST, members);
        if !view.contains(self.me.id, self.me.incarnation) {
            return Err(MembershipError::WrongState {
                event: "bootstrap",
                reason: "this node is not in the list",
            });
        }
        self.install(now, view, out);
        Ok(())
    }

    fn join_requested(
        &mut self,
        now: Millis,
        seeds: Vec<NodeId>,
        out: &mut Vec<Action>,
    ) -> Result<(), MembershipError> {
        if self.is_member() {
            return Err(MembershipError::WrongState { event: "join", reason: "already a member" });
        }
        self.seeds = Some(seeds);
        self.send_joins(now, out);
        Ok(())
    }

    fn send_joins(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(seeds) = &self.seeds else { return };
        let mut targets: BTreeSet<NodeId> = seeds.iter().copied().collect();
        targets.extend(self.view.iter().flat_map(|v| v.ids()));
        targets.remove(&self.me.id);
        for to in targets {
            Self::send(out, to, Msg::Join { member: self.me.clone() });
        }
        out.push(Action::SetTimer { timer: Timer::JoinRetry, at: later(now, self.cfg.retry) });
    }

    fn leave(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<(), MembershipError> {
        let Some(view) = &self.view else {
            return Err(MembershipError::WrongState { event: "leave", reason: "not a member" });
        };
        if !self.is_member() {
            return Err(MembershipError::WrongState { event: "leave", reason: "not a member" });
        }
        if view.members.len() == 1 {
            return Err(MembershipError::WrongState {
                event: "leave",
                reason: "the last member cannot leave",
            });
        }
        if self.leaving {
            return Ok(());
        }
        let epoch = view.epoch;
        self.leaving = true;
        self.set_active(false, out);
        self.resigned.insert(self.me_id());
        for to in self.others() {
            Self::send(out, to, Msg::Resign { epoch });
        }
        self.schedule(now, out);
        Ok(())
    }

    fn renew(&mut self, now: Millis, out: &mut Vec<Action>) -> Result<(), MembershipError> {
        let Some(view) = self.view.as_ref().filter(|_| self.is_member()) else {
            return Err(MembershipError::WrongState { event: "renew", reason: "not a member" });
        };
        self.renew_after = Some(view.epoch);
        self.schedule(now, out);
        Ok(())
    }

    fn set_active(&mut self, active: bool, out: &mut Vec<Action>) {
        if self.active != active {
            self.active = active;
            out.push(Action::Active(active));
        }
    }

    fn timer(&mut self, now: Millis, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::Heartbeat => self.heartbeat(now, out),
            Timer::SuspectCheck => {
                if self.is_member() {
                    self.schedule(now, out);
                    out.push(Action::SetTimer {
                        timer: Timer::SuspectCheck,
                        at: later(now, self.cfg.heartbeat),
                    });
                }
            }
            Timer::LeaseEnd => {
                if self.active && !self.is_active(now) {
                    self.set_active(false, out);
                }
            }
            Timer::Propose => {
                if self.propose_at.is_some_and(|t| t <= now) {
                    self.propose_at = None;
                    self.start_proposal(now, out);
                }
            }
            Timer::AcceptWait => self.deferred_accept(now, out),
            Timer::JoinRetry => {
                if !self.is_member() {
                    self.send_joins(now, out);
                }
            }
        }
    }

    fn heartbeat(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(view) = &self.view else { return };
        // A leaving member keeps heartbeating (it gains no lease: `check_lease`): if it missed the view that
        // removed it, a member of that view answers with it, and the leaver learns that it left.
        if !self.is_member() {
            return;
        }
        let epoch = view.epoch;
        let oldest = at(now.get().saturating_sub(self.cfg.lease.get()));
        self.heartbeats.retain(|&t, _| t >= oldest);
        let mut acks = BTreeSet::new();
        // Counting itself is an ack like any other: frozen once this node promised the next epoch.
        if self.acceptor.promised.is_none() {
            acks.insert(self.me.id);
            self.last_ack.insert(self.me.id, now);
        }
        self.heartbeats.insert(now, acks);
        for to in self.others() {
            Self::send(out, to, Msg::Heartbeat { epoch, sent: now });
        }
        self.stats.heartbeats += 1;
        self.check_lease(now, now, out);
        out.push(Action::SetTimer { timer: Timer::Heartbeat, at: later(now, self.cfg.heartbeat) });
    }

    /// Extends the lease if the heartbeat of `sent` has a majority of acks.
    fn check_lease(&mut self, now: Millis, sent: Millis, out: &mut Vec<Action>) {
        let Some(view) = &self.view else { return };
        let Some(acks) = self.heartbeats.get(&sent) else { return };
        if acks.len() < view.majority() || self.leaving {
            return;
        }
        let until = lease_end(sent, self.cfg.lease, self.cfg.drift_ppm);
        // Older heartbeats can only give shorter leases.
        self.heartbeats.retain(|&t, _| t > sent);
        if self.lease_until.is_none_or(|u| u < until) {
            self.lease_until = Some(until);
            out.push(Action::SetTimer { timer: Timer::LeaseEnd, at: until });
        }
        if now < until {
            self.set_active(true, out);
        }
    }

    fn install(&mut self, now: Millis, view: View, out: &mut Vec<Action>) {
        let was_member = self.is_member();
        self.installed_at = now;
        self.acceptor = Acceptor::new(view.epoch.next());
        self.proposer = None;
        self.max_round = 0;
        self.deferred = None;
        self.heartbeats.clear();
        self.joins.retain(|id, (m, _)| view.members.get(id).is_none_or(|v| v.incarnation < m.incarnation));
        for &(id, inc) in self.resigned.iter().filter(|&&(id, inc)| !view.contains(id, inc)) {
            let newest = self.retired.entry(id).or_insert(inc);
            *newest = (*newest).max(inc);
        }
        self.resigned.retain(|&(id, inc)| view.contains(id, inc));
        self.renew_after = self.renew_after.filter(|&e| e >= view.epoch);
        self.last_heard.retain(|id, (inc, _)| view.contains(*id, *inc));
        for m in view.members.values() {
            self.last_heard.entry(m.id).or_insert((m.incarnation, now));
        }
        self.last_ack.retain(|id, _| view.members.contains_key(id));
        self.view = Some(view.clone());
        self.stats.views_installed += 1;
        out.push(Action::InstallView(view));
        if self.is_member() {
            self.seeds = None;
            if !was_member {
                out.push(Action::SetTimer { timer: Timer::SuspectCheck, at: later(now, self.cfg.heartbeat) });
            }
            self.heartbeat(now, out);
            self.schedule(now, out);
        } else {
            self.lease_until = None;
            self.set_active(false, out);
            if self.leaving {
                out.push(Action::Left);
            } else {
                // Excluded (or a joiner that learnt a view without it): ask to be admitted.
                if self.seeds.is_none() {
                    self.seeds = Some(Vec::new());
                }
                self.send_joins(now, out);
            }
        }
    }

    fn suspected(&self, now: Millis) -> BTreeSet<NodeId> {
        self.last_heard
            .iter()
            .filter(|&(&id, &(_, t))| id != self.me.id && later(t, self.cfg.suspect_after) <= now)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The next view this node would propose: the current one without suspected or resigned members, with
    /// the nodes asking to join. `None` if nothing changes (or nothing would be left), or if this node does
    /// not hear a majority of its view.
    fn desired(&self, now: Millis) -> Option<View> {
        let view = self.view.as_ref()?;
        let suspected = self.suspected(now);
        // A member that hears no majority of its view (itself included) could not get a view decided, and
        // what it would propose (everyone it cannot hear removed) is likely wrong: it is the one cut off.
        if view.members.len().saturating_sub(suspected.len()) < view.majority() {
            return None;
        }
        let mut members = view.members.clone();
        for id in suspected {
            members.remove(&id);
        }
        members.retain(|&id, m| !self.resigned.contains(&(id, m.incarnation)));
        for (m, heard) in self.joins.values() {
            if later(*heard, self.cfg.suspect_after) <= now {
                continue;
            }
            if members.get(&m.id).is_none_or(|cur| cur.incarnation < m.incarnation) {
                members.insert(m.id, m.clone());
            }
        }
        let renew = self.renew_after == Some(view.epoch);
        (!members.is_empty() && (members != view.members || renew))
            .then(|| View { epoch: view.epoch.next(), members })
    }

    /// This node's place in the proposer order: 0 for the lowest-id member it neither suspects nor knows
    /// resigned (and for a leaving node, which proposes its own removal at once).
    fn rank(&self, now: Millis) -> u64 {
        if self.leaving || self.renew_after.is_some() {
            return 0;
        }
        let suspected = self.suspected(now);
        let live = self.others().into_iter().filter(|&id| !suspected.contains(&id) && !self.has_resigned(id));
        live.filter(|&id| id < self.me.id).count() as u64
    }

    /// Whether the member `id` of the installed view resigned (at the incarnation the view lists).
    fn has_resigned(&self, id: NodeId) -> bool {
        self.view
            .as_ref()
            .and_then(|v| v.members.get(&id))
            .is_some_and(|m| self.resigned.contains(&(id, m.incarnation)))
    }

    /// Starts a proposal now if this node ranks first, or sets the Propose timer for its turn.
    fn schedule(&mut self, now: Millis, out: &mut Vec<Action>) {
        if !self.is_member() || self.proposer.is_some() || self.desired(now).is_none() {
            return;
        }
        let rank = self.rank(now);
        self.schedule_at(now, at(now.get().saturating_add(rank.saturating_mul(self.cfg.retry.get()))), out);
    }

    fn schedule_at(&mut self, now: Millis, when: Millis, out: &mut Vec<Action>) {
        if self.propose_at.is_some_and(|t| t <= when) {
            return;
        }
        if when <= now {
            self.start_proposal(now, out);
        } else {
            self.propose_at = Some(when);
            out.push(Action::SetTimer { timer: Timer::Propose, at: when });
        }
    }

    fn start_proposal(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(view) = self.view.clone() else { return };
        if !self.is_member() {
            return;
        }
        // Once this instance has a promise anywhere here, drive it to a decision even without a change of
        // our own (a no-change view): acceptors that promised stop acking until the next view.
        let value = match self.desired(now) {
            Some(v) => v,
            None if self.acceptor.promised.is_some() || self.proposer.is_some() => {
                View { epoch: view.epoch.next(), members: view.members.clone() }
            }
            None => return,
        };
        let promised = self.acceptor.promised.map_or(0, |b| b.round);
        let round = self.max_round.max(promised).saturating_add(1);
        self.max_round = round;
        let ballot = Ballot { round, node: self.me.id };
        let epoch = view.epoch.next();
        self.proposer = Some(Proposer::new(epoch, ballot, value));
        self.stats.proposals += 1;
        for to in self.others() {
            Self::send(out, to, Msg::Prepare { epoch, ballot });
        }
        let retry = later(now, self.cfg.retry);
        self.propose_at = Some(retry);
        out.push(Action::SetTimer { timer: Timer::Propose, at: retry });
        if let Ok(accepted) = self.acceptor.prepare(ballot) {
            self.promised_to(now, ballot, out);
            self.on_promise(now, self.me_id(), epoch, ballot, accepted, out);
        }
    }

    /// After promising `ballot`: a deferred accept of a lower ballot is void, a lower proposal of our own
    /// yields, and a wake-up makes sure the instance is driven to a decision if its proposer goes quiet.
    fn promised_to(&mut self, now: Millis, ballot: Ballot, out: &mut Vec<Action>) {
        if self.deferred.as_ref().is_some_and(|d| d.ballot < ballot) {
            self.deferred = None;
        }
        if self.proposer.as_ref().is_some_and(|p| p.ballot < ballot) {
            self.proposer = None;
            self.propose_at = None;
        }
        if ballot.node != self.me.id {
            let steps = self.rank(now).saturating_add(2);
            let when = at(now.get().saturating_add(steps.saturating_mul(self.cfg.retry.get())));
            self.schedule_at(now, when, out);
        }
    }

    fn message(
        &mut self,
        now: Millis,
        from: NodeId,
        inc: Incarnation,
        msg: Msg,
        out: &mut Vec<Action>,
    ) -> Result<(), MembershipError> {
        let kind = msg.kind();
        if let Some(view) = &self.view
            && view.contains(from, inc)
            && from != self.me.id
        {
            self.last_heard.insert(from, (inc, now));
        }
        if let Some((epoch, about, answer_old)) = gated(&msg)
            && !self.gate(from, inc, epoch, about, kind, answer_old, out)?
        {
            return Ok(());
        }
        match msg {
            Msg::Install { view } => self.on_install(now, from, view, out),
            Msg::ViewQuery => {
                if let Some(view) = &self.view {
                    Self::send(out, from, Msg::Install { view: view.clone() });
                }
                Ok(())
            }
            Msg::Join { member } => self.on_join(now, from, inc, member, out),
            Msg::Heartbeat { epoch, sent } => {
                if self.acceptor.promised.is_none() && self.is_member() {
                    self.last_ack.insert(from, now);
                    Self::send(out, from, Msg::Ack { epoch, sent });
                }
                Ok(())
            }
            Msg::Ack { sent, .. } => {
                if let Some(acks) = self.heartbeats.get_mut(&sent) {
                    acks.insert(from);
                    self.check_lease(now, sent, out);
                }
                Ok(())
            }
            Msg::Resign { .. } => {
                self.resigned.insert((from, inc));
                self.schedule(now, out);
                Ok(())
            }
            Msg::Prepare { epoch, ballot } => {
                self.max_round = self.max_round.max(ballot.round);
                match self.acceptor.prepare(ballot) {
                    Ok(accepted) => {
                        self.promised_to(now, ballot, out);
                        Self::send(out, from, Msg::Promise { epoch, ballot, accepted });
                    }
                    Err(promised) => Self::send(out, from, Msg::Nack { epoch, ballot, promised }),
                }
                Ok(())
            }
            Msg::Promise { epoch, ballot, accepted } => {
                if accepted.as_ref().is_some_and(|(_, v)| v.epoch != epoch) {
                    return Err(MembershipError::Malformed {
                        kind,
                        from,
                        reason: "accepted view of another epoch",
                    });
                }
                self.on_promise(now, (from, inc), epoch, ballot, accepted, out);
                Ok(())
            }
            Msg::Nack { ballot, promised, .. } => {
                self.max_round = self.max_round.max(promised.round);
                if self.proposer.as_ref().is_some_and(|p| p.ballot == ballot && promised > ballot) {
                    self.proposer = None;
                    self.propose_at = None;
                    let steps = self.rank(now).saturating_add(1);
                    let when = at(now.get().saturating_add(steps.saturating_mul(self.cfg.retry.get())));
                    self.schedule_at(now, when, out);
                }
                Ok(())
            }
            Msg::Accept { epoch, ballot, view, resigned } => {
                if view.epoch != epoch || view.members.is_empty() {
                    return Err(MembershipError::Malformed {
                        kind,
                        from,
                        reason: "view of another epoch, or empty",
                    });
                }
                self.max_round = self.max_round.max(ballot.round);
                self.try_accept(now, from, ballot, view, &resigned, out);
                Ok(())
            }
            Msg::Accepted { epoch, ballot } => {
                self.on_accepted(now, (from, inc), epoch, ballot, out);
                Ok(())
            }
        }
    }

    /// Epoch gate: `Ok(true)` to go on with a message about `epoch`, which must be the installed epoch
    /// (heartbeats and their acks) or the one being decided, installed + 1 (Paxos messages), as `about` says,
    /// and both ends members of the installed view. An older epoch is dropped (answered with the current view
    /// when `answer_old`: a stale member or proposer learns where things stand); a newer one asks for the view.
    #[allow(clippy::too_many_arguments)]
    fn gate(
        &mut self,
        from: NodeId,
        inc: Incarnation,
        epoch: Epoch,
        about: About,
        kind: &'static str,
        answer_old: bool,
        out: &mut Vec<Action>,
    ) -> Result<bool, MembershipError> {
        let Some(view) = &self.view else {
            Self::send(out, from, Msg::ViewQuery);
            return Ok(false);
        };
        let expected = match about {
            About::Installed => view.epoch,
            About::Deciding => view.epoch.next(),
        };
        if epoch < expected {
            if answer_old {
                Self::send(out, from, Msg::Install { view: view.clone() });
            }
            return Ok(false);
        }
        if epoch > expected {
            Self::send(out, from, Msg::ViewQuery);
            return Ok(false);
        }
        if !view.contains(from, inc) || from == self.me.id {
            return Err(MembershipError::NotMember { kind, from, incarnation: inc, epoch: view.epoch });
        }
        Ok(self.is_member())
    }

    fn on_promise(
        &mut self,
        now: Millis,
        voter: (NodeId, Incarnation),
        epoch: Epoch,
        ballot: Ballot,
        accepted: Option<(Ballot, View)>,
        out: &mut Vec<Action>,
    ) {
        let Some(view) = self.view.clone() else { return };
        let Some(p) = self.proposer.as_mut().filter(|p| p.epoch == epoch && p.ballot == ballot) else {
            return;
        };
        let Some(value) = p.promise(&view, voter, accepted) else { return };
        let resigned: Vec<NodeId> = self.resigned.iter().map(|&(id, _)| id).collect();
        for to in self.others() {
            Self::send(
                out,
                to,
                Msg::Accept { epoch, ballot, view: value.clone(), resigned: resigned.clone() },
            );
        }
        let me = self.me.id;
        self.try_accept(now, me, ballot, value, &resigned, out);
    }

    /// The local time from which this acceptor may accept `next`: the lease waits of the members it excludes.
    fn accept_wait(&self, next: &View) -> Millis {
        let Some(view) = &self.view else { return Millis::default() };
        view.excluded_by(next)
            .filter(|m| !self.resigned.contains(&(m.id, m.incarnation)))
            .map(|m| {
                exclusion_allowed_at(self.last_ack.get(&m.id).copied(), self.installed_at, self.cfg.lease)
            })
            .max()
            .unwrap_or_default()
    }

    /// Phase 2b, or a deferral until the lease waits are over.
    fn try_accept(
        &mut self,
        now: Millis,
        from: NodeId,
        ballot: Ballot,
        view: View,
        resigned: &[NodeId],
        out: &mut Vec<Action>,
    ) {
        if let Err(promised) = self.acceptor.may_accept(ballot) {
            if from != self.me.id {
                Self::send(out, from, Msg::Nack { epoch: view.epoch, ballot, promised });
            }
            return;
        }
        if self.acceptor.promised != Some(ballot) {
            self.acceptor.promised = Some(ballot);
            self.promised_to(now, ballot, out);
        }
        if let Some(base) = &self.view {
            // The ids name members of the base view both ends share (the epoch gate saw to that).
            let at_base =
                resigned.iter().filter_map(|id| base.members.get(id)).map(|m| (m.id, m.incarnation));
            self.resigned.extend(at_base);
        }
        let wait = self.accept_wait(&view);
        if now < wait {
            self.stats.deferred_accepts += 1;
            self.deferred = Some(Deferred { from, ballot, view });
            out.push(Action::SetTimer { timer: Timer::AcceptWait, at: wait });
            return;
        }
        self.deferred = None;
        let epoch = view.epoch;
        self.last_accepted = Some((ballot, view.clone()));
        self.stats.accepts += 1;
        self.acceptor.accept(ballot, view);
        if from == self.me.id {
            self.on_accepted(now, self.me_id(), epoch, ballot, out);
        } else {
            Self::send(out, from, Msg::Accepted { epoch, ballot });
        }
    }

    fn deferred_accept(&mut self, now: Millis, out: &mut Vec<Action>) {
        let Some(d) = self.deferred.take() else { return };
        // Superseded by a higher promise meanwhile: the proposer of that ballot gets our answer instead.
        if self.acceptor.promised != Some(d.ballot) {
            return;
        }
        self.try_accept(now, d.from, d.ballot, d.view, &[], out);
    }

    fn on_accepted(
        &mut self,
        now: Millis,
        voter: (NodeId, Incarnation),
        epoch: Epoch,
        ballot: Ballot,
        out: &mut Vec<Action>,
    ) {
        let Some(view) = self.view.clone() else { return };
        let Some(p) = self.proposer.as_mut().filter(|p| p.epoch == epoch && p.ballot == ballot) else {
            return;
        };
        let Some(decided) = p.accepted(&view, voter) else { return };
        self.stats.decided += 1;
        let mut to: BTreeSet<NodeId> = view.ids().chain(decided.ids()).collect();
        to.remove(&self.me.id);
        for id in to {
            Self::send(out, id, Msg::Install { view: decided.clone() });
        }
        self.install(now, decided, out);
    }

    fn on_install(
        &mut self,
        now: Millis,
        from: NodeId,
        view: View,
        out: &mut Vec<Action>,
    ) -> Result<(), MembershipError> {
        if view.epoch == Epoch::NONE || view.members.is_empty() {
            return Err(MembershipError::Malformed {
                kind: "INSTALL",
                from,
                reason: "no epoch or no members",
            });
        }
        match &self.view {
            Some(cur) if view.epoch < cur.epoch => Ok(()),
            Some(cur) if view.epoch == cur.epoch => {
                if *cur == view {
                    Ok(())
                } else {
                    Err(MembershipError::ConflictingView(view.epoch))
                }
            }
            _ => {
                self.install(now, view, out);
                Ok(())
            }
        }
    }

    fn on_join(
        &mut self,
        now: Millis,
        from: NodeId,
        inc: Incarnation,
        member: Member,
        out: &mut Vec<Action>,
    ) -> Result<(), MembershipError> {
        if member.id != from || member.incarnation != inc {
            return Err(MembershipError::Malformed {
                kind: "JOIN",
                from,
                reason: "member is not the sender",
            });
        }
        let Some(view) = &self.view else { return Ok(()) };
        if let Some(cur) = view.members.get(&member.id)
            && cur.incarnation > member.incarnation
        {
            return Ok(());
        }
        if self.retired.get(&member.id).is_some_and(|&gone| member.incarnation <= gone) {
            // A JOIN sent before its sender was admitted, arriving after it left: stale.
            return Ok(());
        }
        if view.contains(member.id, member.incarnation) || !self.is_member() || self.leaving {
            // Admitted already, or we cannot admit: the view tells the joiner whom to ask.
            Self::send(out, from, Msg::Install { view: view.clone() });
            return Ok(());
        }
        let newer = self.joins.get(&member.id).is_none_or(|(m, _)| m.incarnation <= member.incarnation);
        if newer {
            self.joins.insert(member.id, (member, now));
        }
        self.schedule(now, out);
        Ok(())
    }
}
