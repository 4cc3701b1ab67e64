//! The membership layer in the node: the driver of [`Membership`] (views agreed by a majority, member
//! leases) and of [`Formation`] (view 1 decided once), and the rules that put the algorithm cores inside
//! the installed view. The same rules as the membership simulation's driver (`sim/membership/engines.rs`),
//! where they are checked over seeded faults:
//!
//! - An installed view that lists this process: the cores move to it ([`Event::MembersChanged`]), or are
//!   created in it ([`Cores::in_view`]) if they were not in a view. Before that, the node sends its clocks
//!   ([`MemberMsg::Clocks`], tagged with the view's epoch, on the FIFO link the cores' messages use) to every
//!   member the view adds (to every other member when the cores are new); a core requests nothing before it
//!   has every member's clocks, so a joiner's timestamps and tokens start above everything granted before.
//! - Engine messages and clocks of a newer view than the cores' (or arriving before the cores exist) wait
//!   here until the cores are in that view, then go in in arrival order; an engine message for cores that
//!   exist goes straight in (the engine holds newer-view messages itself).
//! - A view that does not list this process: the cores are dropped; waiting clients get 503, leases end
//!   (keepalive and release answer 409 `lease_lost`). If the node was not leaving, it was excluded while
//!   alive and starts again as a new incarnation ([`Exit::Reincarnate`]), which joins.
//! - [`membership::Action::Active`]`(false)`: the same for the clients; the cores stay. An acquire is
//!   refused (503) while the node does not hold its member lease, and a grant is handed out only if
//!   [`Membership::is_active`] holds at that moment (otherwise it is released at once).
//! - A core asking for a view bump gets [`membership::Event::Renew`] (once per view).
//! - The transport's handshakes tell the formation and the membership layer who is there; they are not
//!   engine handshakes (in a view only [`MemberMsg::Clocks`] is).

use super::driver::Node;
use super::msg::{MemberMsg, NodeMsg};
use super::observe::Cause;
use crate::algo::membership::{
    self, Epoch, FormAction, FormEvent, Formation, Member, Membership, Msg, Timer, View,
};
use crate::algo::{Algorithm, Event, Incarnation, LamportTs, Millis, NodeId};
use crate::api::error::ApiError;
use crate::net::wire::Envelope;
use crate::obs::flow::{Direction, FlowRecord};
use crate::obs::metrics::{CauseLabel, LinkFrameLabels};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

/// Most engine messages kept for a view the cores are not in yet (as the engines' own bound).
const MAX_HELD: usize = 4096;

/// Most lease ids remembered as lost (answered 409 `lease_lost` rather than `lease_not_found`).
const MAX_LOST: usize = 10_000;

/// Why the node loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Shut down (graceful stop, or every handle gone).
    Shutdown,
    /// Excluded from the view while alive: start again as a new incarnation that joins; `view` is the view
    /// that excluded it (the new incarnation starts from it, so it knows whom to ask).
    Reincarnate {
        /// The view that excluded this process.
        view: Option<View>,
        /// The leases its clients lost (the next incarnation still answers 409 `lease_lost` for them).
        lost: Vec<String>,
    },
}

/// What waiting clients hear when their node lost its member lease for good.
const NO_MAJORITY: &str = "this node lost its member lease: it does not reach a majority of its view";

/// The membership layer's state in the node.
pub(crate) struct MemberLayer {
    pub(super) core: Membership,
    pub(super) formation: Formation,
    /// The membership core's timers (one of each kind).
    pub(super) timers: BTreeMap<Timer, Millis>,
    /// What [`membership::Action::Active`] last said.
    pub(super) active: bool,
    /// The epoch and members the cores are in (`None`: no cores in a view yet).
    pub(super) engines: Option<(u64, BTreeSet<(NodeId, Incarnation)>)>,
    /// Engine messages and clocks waiting for the cores' view.
    held: VecDeque<(NodeId, Incarnation, Envelope<NodeMsg>)>,
    /// The view in which a core last asked for a bump.
    renew_asked: Option<u64>,
    /// The newest incarnation of each peer the transport announced.
    pub(super) known: BTreeMap<NodeId, Incarnation>,
    /// Members that resigned (their removal is a leave, not a crash).
    resigned: BTreeSet<(NodeId, Incarnation)>,
    /// Set when a view excluded this process while it was not leaving.
    pub(super) exit: Option<Exit>,
    /// Set once a view without this node is installed after a graceful leave.
    pub(super) left: bool,
    /// Lease ids ended because the member lease was lost, oldest first.
    lost: VecDeque<String>,
    lost_set: BTreeSet<String>,
    /// Since when this member has been without its member lease (for the time-without-majority counter).
    no_majority_since: Option<Instant>,
    /// When the member lease was last lost (`None` while held, and before it was first gained).
    lease_lost_at: Option<Instant>,
    /// Nodes outside the peer list, and when they were last heard from.
    pub(super) strangers: BTreeMap<NodeId, Instant>,
}

impl MemberLayer {
    /// The layer of a node `me` (its id, incarnation and advertised address) among the configured `peers`
    /// (index = id), of which the first `forming` form view 1 (a node beyond them joins a running cluster).
    pub(crate) fn new(
        cfg: membership::Config,
        me: Member,
        peers: &[String],
        forming: usize,
    ) -> Result<Self, membership::ConfigError> {
        let member = me;
        let configured =
            peers.iter().take(forming).enumerate().map(|(i, a)| (NodeId::new(i as u16), a.clone()));
        Ok(MemberLayer {
            formation: Formation::new(member.clone(), configured, cfg.retry),
            core: Membership::new(cfg, member)?,
            timers: BTreeMap::new(),
            active: false,
            engines: None,
            held: VecDeque::new(),
            renew_asked: None,
            known: BTreeMap::new(),
            resigned: BTreeSet::new(),
            exit: None,
            left: false,
            lost: VecDeque::new(),
            lost_set: BTreeSet::new(),
            no_majority_since: None,
            lease_lost_at: None,
            strangers: BTreeMap::new(),
        })
    }

    /// The installed epoch, if any.
    pub(crate) fn epoch(&self) -> Option<Epoch> {
        self.core.view().map(|v| v.epoch)
    }

    /// The earliest membership timer.
    pub(crate) fn next_timer(&self) -> Option<Millis> {
        self.timers.values().min().copied()
    }

    /// Whether `lease` was ended because the member lease was lost.
    pub(crate) fn was_lost(&self, lease: &str) -> bool {
        self.lost_set.contains(lease)
    }

    fn remember_lost(&mut self, lease: String) {
        if self.lost.len() >= MAX_LOST
            && let Some(old) = self.lost.pop_front()
        {
            self.lost_set.remove(&old);
        }
        self.lost_set.insert(lease.clone());
        self.lost.push_back(lease);
    }
}

impl Node {
    /// Feeds one event to the membership core and executes its actions.
    pub(super) fn member_event(&mut self, event: membership::Event) {
        let now = self.now();
        let mut out = Vec::new();
        if let Err(e) = self.member.core.handle(now, event, &mut out) {
            tracing::debug!(error = %e, "membership core refused an event");
            self.shared.metrics.bad_frames.inc(crate::obs::metrics::ReasonLabel("membership_refused"));
        }
        for action in out {
            match action {
                membership::Action::Send { to, msg } => self.send_member(to, MemberMsg::Core(msg)),
                membership::Action::SetTimer { timer, at } => {
                    self.member.timers.insert(timer, at);
                }
                membership::Action::InstallView(view) => self.install_view(view),
                membership::Action::Active(active) => self.set_active(active),
                membership::Action::Left => self.member.left = true,
            }
            if self.member.exit.is_some() {
                // Excluded while alive: what the old incarnation's core still asked for is dropped.
                return;
            }
        }
    }

    /// Feeds one event to the formation of view 1 and executes its actions.
    pub(super) fn form_event(&mut self, event: FormEvent) {
        let now = self.now();
        let mut out = Vec::new();
        let installed = self.member.epoch();
        self.member.formation.handle(now, installed, event, &mut out);
        for action in out {
            match action {
                FormAction::Send { to, msg } => self.send_member(to, MemberMsg::Form(msg)),
                FormAction::Bootstrap { members } => {
                    tracing::info!(members = members.len(), "forming the cluster: view 1");
                    self.member_event(membership::Event::Bootstrap { members });
                }
                FormAction::Join { seeds } => {
                    tracing::info!(?seeds, "a view exists: joining it");
                    self.member_event(membership::Event::JoinRequested { seeds });
                }
            }
        }
    }

    /// Queues the membership timers that are due.
    pub(super) fn fire_member_timers(&mut self) {
        let now = self.now();
        let due: Vec<Timer> =
            self.member.timers.iter().filter(|(_, at)| **at <= now).map(|(t, _)| *t).collect();
        for timer in due {
            self.member.timers.remove(&timer);
            self.member_event(membership::Event::Timer(timer));
        }
    }

    /// Sends a membership message, addressed to the newest incarnation of `to` the transport announced.
    pub(super) fn send_member(&mut self, to: NodeId, body: MemberMsg) {
        if to == self.settings.me {
            return;
        }
        let epoch = match &body {
            MemberMsg::Clocks(_) => self.member.engines.as_ref().map_or(0, |(e, _)| *e),
            _ => self.member.epoch().map_or(0, Epoch::get),
        };
        self.shared.metrics.membership_messages.inc(LinkFrameLabels { kind: body.kind(), direction: "sent" });
        // A member is addressed at the incarnation its view admitted (the one its clocks and heartbeats are
        // for, even before this node's transport saw that incarnation's handshake); anyone else at the newest
        // incarnation the transport announced.
        let admitted = match &body {
            MemberMsg::Clocks(_) => self
                .member
                .engines
                .as_ref()
                .and_then(|(_, m)| m.iter().find(|(id, _)| *id == to).map(|(_, inc)| *inc)),
            _ => self.member.core.view().and_then(|v| v.members.get(&to)).map(|m| m.incarnation),
        };
        let known = self.member.known.get(&to).copied();
        let env = Envelope {
            ts: LamportTs::default(),
            trace: BTreeMap::new(),
            to_incarnation: admitted.or(known),
            epoch,
            body: NodeMsg::Member(body),
        };
        if let Err(e) = self.transport.send(to, env) {
            tracing::debug!(peer = %to, error = %e, "cannot queue a membership message");
        }
    }

    /// A membership message arrived from `from`'s `incarnation`.
    pub(super) fn on_member_msg(&mut self, from: NodeId, incarnation: Incarnation, env: Envelope<NodeMsg>) {
        let NodeMsg::Member(body) = &env.body else { return };
        let kind = body.kind();
        self.shared.metrics.membership_messages.inc(LinkFrameLabels { kind, direction: "received" });
        if let NodeMsg::Member(MemberMsg::Clocks(_)) = env.body {
            return self.deliver_to_cores(from, incarnation, env);
        }
        match env.body {
            NodeMsg::Member(MemberMsg::Core(msg)) => {
                match &msg {
                    Msg::Resign { .. } => {
                        self.member.resigned.insert((from, incarnation));
                    }
                    Msg::Join { member } if member.id == from => {
                        if !self.vouched(from, &member.addr) {
                            return;
                        }
                        // A node outside the peer list asks to be admitted: answer it at the address it gives.
                        self.dial(from, &member.addr);
                    }
                    _ => {}
                }
                self.member_event(membership::Event::Message { from, incarnation, msg });
            }
            NodeMsg::Member(MemberMsg::Form(msg)) => {
                if let membership::FormMsg::Query { addr } = &msg {
                    if !self.vouched(from, addr) {
                        return;
                    }
                    self.dial(from, addr);
                }
                self.form_event(FormEvent::Message { from, incarnation, msg })
            }
            NodeMsg::Member(MemberMsg::Clocks(_)) | NodeMsg::Algo(_) | NodeMsg::Client(_) => {}
        }
    }

    /// An engine message or clocks: into the cores if they are in its view (engine messages: if they exist),
    /// else held.
    pub(super) fn deliver_to_cores(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        env: Envelope<NodeMsg>,
    ) {
        let ready = match (&self.member.engines, &env.body) {
            (None, _) => false,
            (Some((epoch, _)), NodeMsg::Member(MemberMsg::Clocks(_))) => env.epoch <= *epoch,
            (Some(_), _) => true,
        };
        if !ready {
            if self.member.held.len() >= MAX_HELD {
                tracing::warn!(peer = %from, "too many messages waiting for a view: dropped");
                self.observer.seen(super::observe::Seen::Dropped { reason: "held_back_full" });
            } else {
                self.member.held.push_back((from, incarnation, env));
            }
            return;
        }
        match env.body {
            NodeMsg::Member(MemberMsg::Clocks(clocks)) => {
                for (algorithm, clock) in Algorithm::ALL.into_iter().zip(clocks) {
                    let event = Event::PeerIncarnation { peer: from, incarnation, clock };
                    self.work.push_back((algorithm, event, Cause::default()));
                }
            }
            NodeMsg::Algo(msg) => {
                let env = Envelope {
                    ts: env.ts,
                    trace: env.trace,
                    to_incarnation: env.to_incarnation,
                    epoch: env.epoch,
                    body: msg,
                };
                self.algo_message(from, incarnation, env);
            }
            NodeMsg::Member(_) | NodeMsg::Client(_) => {}
        }
    }

    /// Releases what waited for the cores' view, in arrival order.
    fn release_held(&mut self) {
        let Some(epoch) = self.member.engines.as_ref().map(|(e, _)| *e) else { return };
        let (ready, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.member.held).into_iter().partition(|(_, _, env)| {
                !matches!(env.body, NodeMsg::Member(MemberMsg::Clocks(_))) || env.epoch <= epoch
            });
        self.member.held = later.into();
        for (from, incarnation, env) in ready {
            self.deliver_to_cores(from, incarnation, env);
        }
    }

    /// A view was installed.
    fn install_view(&mut self, view: View) {
        let (me, inc) = (self.settings.me, self.settings.incarnation);
        let epoch = view.epoch.get();
        let members: BTreeSet<(NodeId, Incarnation)> =
            view.members.values().map(|m| (m.id, m.incarnation)).collect();
        let cause = self.count_view_change(&view, &members);
        self.record_view(&view, &cause);
        self.shared.metrics.view_epoch.set((), epoch as f64);
        self.shared.metrics.view_members.set((), members.len() as f64);
        for m in view.members.values() {
            // A member this node was not configured with (a live join): dial it at the view's address.
            self.dial(m.id, &m.addr);
        }
        if let Some((_, old)) = &self.member.engines {
            let gone: Vec<NodeId> = old
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !view.members.contains_key(id) && !self.configured(*id))
                .collect();
            for id in gone {
                tracing::info!(peer = %id, "removed from the view: its link is closed");
                self.transport.remove_peer(id);
            }
        }
        if !view.contains(me, inc) {
            // A joiner that learns a view without it just goes on asking; a member that is excluded while
            // alive must not come back as the member it was: it starts again as a new incarnation.
            if self.member.engines.take().is_some() {
                self.drop_clients(&format!("view {epoch} excludes this node"));
                if !self.shared.shutting_down() {
                    tracing::warn!(
                        epoch,
                        "excluded from the view while alive: restarting as a new incarnation"
                    );
                    let lost = self.member.lost.iter().cloned().collect();
                    self.member.exit = Some(Exit::Reincarnate { view: Some(view), lost });
                }
            }
            return;
        }
        let (hello_to, fresh): (Vec<NodeId>, bool) = match &self.member.engines {
            None => (members.iter().map(|&(m, _)| m).filter(|&m| m != me).collect(), true),
            Some((cur, _)) if epoch <= *cur => return,
            Some((_, old)) => {
                (members.difference(old).map(|&(m, _)| m).filter(|&m| m != me).collect(), false)
            }
        };
        let list: Vec<(NodeId, Incarnation)> = members.iter().copied().collect();
        if fresh {
            self.cores = super::cores::Cores::in_view(&self.settings, epoch, &list);
        }
        self.member.engines = Some((epoch, members));
        if !self.member.active {
            // Cores in a view but no lease yet: it counts as lost from now (bounds the wait for it).
            self.member.lease_lost_at.get_or_insert_with(Instant::now);
        }
        let clocks = self.cores.clocks();
        for to in hello_to {
            self.send_member(to, MemberMsg::Clocks(clocks));
        }
        if !fresh {
            for algorithm in Algorithm::ALL {
                let event = Event::MembersChanged { epoch, members: list.clone() };
                self.work.push_back((algorithm, event, Cause::default()));
            }
        }
        self.release_held();
    }

    /// Counts a view change under its causes; returns them as text (`crash of 2, join of 3`).
    fn count_view_change(&mut self, view: &View, members: &BTreeSet<(NodeId, Incarnation)>) -> String {
        let m = &self.shared.metrics;
        let Some((_, old)) = self.member.engines.as_ref() else {
            let cause = if view.epoch == Epoch::FIRST { "bootstrap" } else { "join" };
            m.view_changes.inc(CauseLabel(cause));
            return cause.to_string();
        };
        let mut causes = Vec::new();
        for gone in old.difference(members) {
            let left = self.member.resigned.contains(gone)
                || (gone.0 == self.settings.me && self.shared.shutting_down());
            let cause = if left { "leave" } else { "crash" };
            m.view_changes.inc(CauseLabel(cause));
            causes.push(format!("{cause} of {}", gone.0));
        }
        for new in members.difference(old) {
            m.view_changes.inc(CauseLabel("join"));
            causes.push(format!("join of {}", new.0));
        }
        if causes.is_empty() {
            m.view_changes.inc(CauseLabel("renew"));
            causes.push("renew".into());
        }
        causes.join(", ")
    }

    /// A view change as a span (Jaeger: who proposed, whether this node accepted it) and a flow record.
    fn record_view(&self, view: &View, cause: &str) {
        let members: Vec<String> =
            view.members.values().map(|m| format!("{}#{}", m.id, m.incarnation.get())).collect();
        let accepted = self.member.core.last_accepted().filter(|(_, v)| *v == view).map(|(b, _)| b);
        let proposer = accepted.map_or_else(|| "unknown".to_string(), |b| b.node.to_string());
        let span = tracing::info_span!(
            "membership.view_change",
            epoch = view.epoch.get(),
            members = %members.join(" "),
            cause,
            proposer = %proposer,
            accepted_here = accepted.is_some(),
            node = self.settings.me.get(),
        );
        span.in_scope(|| tracing::info!(epoch = view.epoch.get(), cause, "view installed"));
        self.shared.push_flow(FlowRecord {
            at_unix_ms: super::observe::unix_ms(),
            node: self.settings.me.get(),
            direction: Direction::Local,
            peer: None,
            kind: "VIEW".into(),
            lock: String::new(),
            algorithm: "membership".into(),
            lamport_ts: None,
            trace_id: None,
            detail: Some(format!(
                "epoch {}: {} ({cause}; proposed by {proposer})",
                view.epoch.get(),
                members.join(" ")
            )),
        });
    }

    /// The member lease was gained or lost.
    ///
    /// Losing it ends every local lease at once (once a view excludes this node, their locks may be granted
    /// elsewhere). Waiting requests hold nothing, so they are only answered 503 when the lease is not
    /// expected back ([`Node::may_recover`]): a node that still hears a majority is most likely inside a view
    /// change (acceptors stop acking while they decide one), and its clients wait for the lease to return,
    /// bounded by the view-change bound ([`Node::member_housekeeping`] answers them after it).
    fn set_active(&mut self, active: bool) {
        self.member.active = active;
        self.shared.metrics.member_lease.set((), if active { 1.0 } else { 0.0 });
        if active {
            self.member.lease_lost_at = None;
            tracing::info!("member lease held: granting");
            self.unpark();
            return;
        }
        self.member.lease_lost_at = Some(Instant::now());
        for lease in self.end_leases() {
            self.member.remember_lost(lease);
        }
        if self.may_recover() {
            tracing::warn!(
                "member lease lost while a majority of the view is heard (a view change?): not granting; \
                 waiting requests wait for it to return"
            );
        } else {
            tracing::warn!("member lease lost: no majority of the view reached; not granting");
            self.withdraw_waiting(&ApiError::Unavailable(NO_MAJORITY.into()));
        }
    }

    /// Ends what local clients have: waiting requests answered 503, leases ended (remembered as lost).
    fn drop_clients(&mut self, why: &str) {
        for lease in self.end_clients(&ApiError::Unavailable(why.to_string())) {
            self.member.remember_lost(lease);
        }
    }

    /// Whether a member without its member lease should expect it back soon, so that acquires wait instead
    /// of being answered 503: it runs cores in a view, hears a majority of that view
    /// ([`Membership::hears_majority`]), is not shutting down, and lost the lease less than the view-change
    /// bound ago.
    pub(super) fn may_recover(&self) -> bool {
        self.member.engines.is_some()
            && !self.shared.shutting_down()
            && self.member.lease_lost_at.is_none_or(|t| t.elapsed() < self.settings.leave_wait)
            && self.member.core.hears_majority(self.now())
    }

    /// Whether the node may hand out a grant now.
    pub(super) fn may_grant(&self) -> bool {
        self.member.engines.is_some() && self.member.active && self.member.core.is_active(self.now())
    }

    /// Why an acquire cannot be served now, if it cannot: no view yet, or no member lease (a peer that is
    /// down does not count: requests wait for the view that excludes it).
    pub(super) fn unavailable(&self) -> Option<String> {
        if let Some(why) = self.member.formation.waiting_for() {
            if self.member.core.view().is_none() {
                return Some(why);
            }
        }
        match (self.member.core.view(), &self.member.engines) {
            (None, _) => Some("not a member yet: asking the cluster to admit this node".into()),
            (Some(v), None) => Some(format!("not a member of view {}: asking to be admitted", v.epoch.get())),
            (Some(v), Some(_)) if !self.may_grant() && !self.may_recover() => Some(format!(
                "no member lease: this node does not reach a majority ({} of {}) of view {}",
                v.majority(),
                v.members.len(),
                v.epoch.get()
            )),
            _ => None,
        }
    }

    /// Housekeeping for the membership layer: formation queries, a view bump if a core wants one, the
    /// time-without-majority counter.
    pub(super) fn member_housekeeping(&mut self) {
        self.forget_strangers();
        if self.member.core.view().is_none() {
            self.form_event(FormEvent::Tick);
        }
        if let Some((epoch, _)) = self.member.engines
            && self.member.renew_asked != Some(epoch)
            && self.cores.wants_view_bump()
        {
            self.member.renew_asked = Some(epoch);
            self.member_event(membership::Event::Renew);
        }
        let without = self.member.core.is_member() && !self.member.active;
        match (without, self.member.no_majority_since) {
            (true, None) => self.member.no_majority_since = Some(Instant::now()),
            (true, Some(since)) => {
                let ms = since.elapsed().as_millis() as u64;
                if ms > 0 {
                    self.shared.metrics.no_majority_ms.inc_by((), ms);
                    self.member.no_majority_since = Some(Instant::now());
                }
            }
            (false, _) => self.member.no_majority_since = None,
        }
    }

    /// A new incarnation of an excluded process: it starts from the view that excluded it (so it knows the
    /// members) and asks to be admitted.
    pub(super) fn rejoin(&mut self, view: Option<View>, lost: Vec<String>) {
        for lease in lost {
            self.member.remember_lost(lease);
        }
        let me = self.settings.me;
        if let Some(view) = view {
            let incarnation = self.settings.incarnation;
            self.member_event(membership::Event::Message {
                from: me,
                incarnation,
                msg: Msg::Install { view },
            });
        }
        let seeds =
            (0..self.settings.peers.len()).map(|i| NodeId::new(i as u16)).filter(|&id| id != me).collect();
        self.member_event(membership::Event::JoinRequested { seeds });
    }

    /// With peer TLS, whether a node outside the peer list that gives `addr` as its address presented a
    /// certificate for that host; if not, its message is dropped (logged, and counted as dropped peer input
    /// with reason `tls_wrong_identity`). Configured peers were checked at their handshake.
    fn vouched(&mut self, from: NodeId, addr: &str) -> bool {
        if self.configured(from) {
            return true;
        }
        match self.transport.check_identity(from, addr) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(peer = %from, %addr, %why, "ignoring a node that claims an address its TLS certificate does not name");
                self.observer.seen(super::observe::Seen::Dropped { reason: "tls_wrong_identity" });
                false
            }
        }
    }

    /// Whether `id` is in the configured peer list (a seed: its link stays for the node's life).
    fn configured(&self, id: NodeId) -> bool {
        id.index() < self.settings.peers.len()
    }

    /// Makes sure the transport dials `id` at `addr`, the address `id` gives for itself (in its join, its
    /// formation query, or the view that admitted it): a node outside the peer list gets a link. A configured
    /// one keeps its configured address (which may route through a proxy on purpose), unless the peer list is
    /// a snapshot of DNS discovery: then a replica that came back at another address (recreated by a later
    /// `--scale`) is dialled where it says from the next connect on. The same address again changes nothing.
    fn dial(&mut self, id: NodeId, addr: &str) {
        let follow = !self.configured(id) || self.settings.peers_from_dns;
        if id != self.settings.me && follow && !addr.is_empty() {
            self.transport.add_peer(id, addr.to_string());
        }
    }

    /// Notes that a node outside the peer list was heard from (a joiner keeps talking: formation queries,
    /// then JOINs every retry).
    pub(super) fn heard(&mut self, from: NodeId) {
        if !self.configured(from) {
            self.member.strangers.insert(from, Instant::now());
        }
    }

    /// Closes the links of nodes outside the peer list that are not in the view and were not heard from for
    /// 2·S (a bound on what a flood of unknown ids can hold; the transport refuses a removed incarnation
    /// for good, so a live joiner, which talks every retry, is never removed).
    pub(super) fn forget_strangers(&mut self) {
        let quiet = std::time::Duration::from_millis(self.settings.membership.suspect_after.get()) * 2;
        let in_view = |id: NodeId| self.member.core.view().is_some_and(|v| v.members.contains_key(&id));
        let gone: Vec<NodeId> = self
            .member
            .strangers
            .iter()
            .filter(|(id, at)| at.elapsed() >= quiet && !in_view(**id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            tracing::debug!(peer = %id, "closing the link of a node that is neither a member nor joining");
            self.member.strangers.remove(&id);
            self.transport.remove_peer(id);
            self.peers.remove(&id);
        }
    }

    /// The transport announced an incarnation of `peer`.
    pub(super) fn member_hello(&mut self, peer: NodeId, incarnation: Incarnation) {
        let known = self.member.known.entry(peer).or_insert(incarnation);
        *known = (*known).max(incarnation);
        self.form_event(FormEvent::Hello { peer, incarnation });
    }
}
