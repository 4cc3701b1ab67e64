//! The node loop: one task, one `select!` over API commands, transport input, the earliest core timer and a
//! housekeeping tick. Each input becomes events for the cores ([`Cores`]), queued with their [`Cause`]; at the
//! end of every turn [`Node::run_work`] feeds them in order and executes the actions: peer messages go to the
//! transport (one ordered outbound queue per peer keeps links FIFO), grants and rejections answer the
//! waiting client, timers go into the [`TimerTable`]. Actions may queue more events (a grant nobody waits for
//! is released), which the same turn runs too, so a release and the next local acquire it serves happen in
//! one turn.
//!
//! Nothing else touches the cores, so no locks are needed around them. Must never: await inside a turn
//! (except to flush the transport at shutdown), or decide anything an algorithm decides.

use super::NodeSettings;
use super::cores::Cores;
use super::forward::{LeaseCall, QueryReply};
use super::handle::{Command, Shared};
use super::leases::Leases;
use super::links::TraceLinks;
use super::membership::{Exit, MemberLayer};
use super::msg::{NodeMsg, PeerMsg};
use super::observe::{Cause, Observer, Seen};
use super::peers::PeerState;
use super::requests::Pending;
use crate::algo::{Action, Algorithm, CoreError, Event, Millis, ProtocolMessage, RequestId, TimerId};
use crate::net::transport::{Inbound, TransportHandle};
use crate::net::wire::Envelope;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often readiness, gauges and the availability of waiting requests are refreshed.
const HOUSEKEEPING: Duration = Duration::from_millis(50);

/// The node loop's state.
pub(crate) struct Node {
    pub(super) settings: NodeSettings,
    pub(super) cores: Cores,
    /// The membership layer: views, member lease, formation of view 1.
    pub(super) member: MemberLayer,
    pub(super) transport: TransportHandle<NodeMsg>,
    pub(super) shared: Arc<Shared>,
    pub(super) observer: Observer,
    /// The origin of the cores' time ([`Millis`]).
    started: Instant,
    pub(super) next_req: u64,
    /// Local acquires not yet answered.
    pub(super) pending: BTreeMap<RequestId, Pending>,
    /// Local acquires with no request in a core: admitted, or granted, while the node was without its member
    /// lease but expected it back; they ask their core when it is back ([`Node::unpark`]).
    pub(super) parked: Vec<Pending>,
    pub(super) leases: Leases,
    /// Client calls out to other nodes (forwarded lease calls, lock queries).
    pub(super) calls: super::forward::Calls,
    pub(super) timers: super::timers::TimerTable,
    /// Every peer heard of (configured, in a view, or a joiner), by id.
    pub(super) peers: BTreeMap<crate::algo::NodeId, PeerState>,
    pub(super) links: TraceLinks,
    /// Events for the cores, in order, with what caused them.
    pub(super) work: VecDeque<(Algorithm, Event<PeerMsg>, Cause)>,
    /// The actions of one event (reused).
    actions: Vec<Action<PeerMsg>>,
}

impl Node {
    pub(crate) fn new(
        settings: NodeSettings,
        transport: TransportHandle<NodeMsg>,
        shared: Arc<Shared>,
    ) -> Result<Self, crate::algo::membership::ConfigError> {
        let n = settings.peers.len();
        let me = crate::algo::membership::Member {
            id: settings.me,
            incarnation: settings.incarnation,
            addr: settings.advertise.clone(),
        };
        let member = MemberLayer::new(settings.membership, me, &settings.peers, settings.formation_size)?;
        Ok(Node {
            cores: Cores::new(&settings),
            member,
            transport,
            observer: Observer::new(shared.clone(), settings.incarnation),
            shared,
            started: Instant::now(),
            next_req: 1,
            pending: BTreeMap::new(),
            parked: Vec::new(),
            leases: Leases::default(),
            calls: Default::default(),
            timers: Default::default(),
            peers: (0..n).map(|i| (crate::algo::NodeId::new(i as u16), PeerState::default())).collect(),
            links: TraceLinks::default(),
            work: VecDeque::new(),
            actions: Vec::new(),
            settings,
        })
    }

    /// The cores' time: milliseconds since the loop started (at the test clock rate, if one is set).
    pub(super) fn now(&self) -> Millis {
        let real = self.started.elapsed().as_millis() as u64;
        match self.settings.clock_rate_ppm {
            1_000_000 => Millis::new(real),
            rate => Millis::new((u128::from(real) * u128::from(rate) / 1_000_000) as u64),
        }
    }

    /// The instant a core's time stands for.
    pub(super) fn instant_of(&self, at: Millis) -> Instant {
        let real = match self.settings.clock_rate_ppm {
            1_000_000 => at.get(),
            rate => (u128::from(at.get()) * 1_000_000).div_ceil(u128::from(rate)) as u64,
        };
        self.started + Duration::from_millis(real)
    }

    /// The earliest timer of the cores and the membership layer, as an instant.
    fn next_timer(&self) -> Option<Instant> {
        let at = match (self.timers.next(), self.member.next_timer()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        at.map(|at| self.instant_of(at))
    }

    /// Runs until a shutdown command (or every handle is gone), then shuts down gracefully; or until a view
    /// excludes this process while it is alive. Gives the command channel back for the next incarnation.
    pub(crate) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::UnboundedReceiver<Inbound<NodeMsg>>,
    ) -> (Exit, mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(HOUSEKEEPING);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.housekeeping();
        loop {
            let next_timer = self.next_timer();
            let sleep = tokio::time::sleep_until(
                next_timer.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into(),
            );
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        self.graceful_shutdown(&mut inbound).await;
                        let _ = reply.send(());
                        return (Exit::Shutdown, commands);
                    }
                    Some(cmd) => self.on_command(cmd),
                    None => {
                        self.graceful_shutdown(&mut inbound).await;
                        return (Exit::Shutdown, commands);
                    }
                },
                Some(input) = inbound.recv() => self.on_inbound(input),
                _ = sleep, if next_timer.is_some() => self.fire_timers(),
                _ = tick.tick() => self.housekeeping(),
            }
            self.run_work();
            if let Some(exit) = self.member.exit.take() {
                self.transport.shutdown().await;
                return (exit, commands);
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Acquire { req, reply } => match req.lease.clone() {
                // A client that already holds the lock with this lease gets its grant back.
                Some(lease) => self.lease_call(LeaseCall::Regrant { lock: req.lock, lease, reply }),
                None => self.acquire(req, reply),
            },
            Command::Release { lock, lease, reply } => {
                self.lease_call(LeaseCall::Release { lock, lease, reply })
            }
            Command::KeepAlive { lease, reply } => self.lease_call(LeaseCall::KeepAlive { lease, reply }),
            Command::LockInfo { lock, reply } => {
                let _ = reply.send(self.lock_info(&lock));
            }
            Command::LockState { lock, reply } => self.query_locks(Some(lock), QueryReply::One(reply)),
            Command::Locks { reply } => self.query_locks(None, QueryReply::All(reply)),
            Command::Cluster { reply } => {
                let _ = reply.send(self.cluster_info());
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            // Handled by the loop itself.
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Queues the due timers' events; a lease's expiry is caused by its `lock.release`.
    pub(super) fn fire_timers(&mut self) {
        self.fire_member_timers();
        let now = self.now();
        while let Some((algorithm, timer)) = self.timers.pop_due(now) {
            let cause = match timer {
                TimerId::Lease(req) => self.release_cause(req),
                TimerId::Deadline(_) => Cause::default(),
            };
            self.work.push_back((algorithm, Event::Timer { timer }, cause));
        }
    }

    /// Feeds queued events to the cores and executes their actions until nothing is left.
    pub(super) fn run_work(&mut self) {
        while let Some((algorithm, event, cause)) = self.work.pop_front() {
            if let Err(e) = self.feed(algorithm, event, &cause) {
                let reason = match &e {
                    CoreError::StaleIncarnation { .. } => "stale_incarnation",
                    CoreError::UnknownPeer(_) => "unknown_peer",
                    CoreError::Unexpected { .. } => "unexpected_message",
                    _ => "refused_event",
                };
                tracing::debug!(algorithm = algorithm.as_str(), error = %e, "core refused an event");
                self.observer.seen(Seen::Dropped { reason });
            }
        }
        self.shared.set_clock(self.cores.max_clock());
    }

    /// Feeds one event to `algorithm`'s core now and executes its actions.
    pub(super) fn feed(
        &mut self,
        algorithm: Algorithm,
        event: Event<PeerMsg>,
        cause: &Cause,
    ) -> Result<(), CoreError> {
        let now = self.now();
        let mut actions = std::mem::take(&mut self.actions);
        let result = self.cores.handle(algorithm, now, event, &mut actions);
        for action in actions.drain(..) {
            self.execute(algorithm, action, cause);
        }
        self.actions = actions;
        result
    }

    fn execute(&mut self, algorithm: Algorithm, action: Action<PeerMsg>, cause: &Cause) {
        match action {
            Action::Send { to, epoch, msg } => self.send(algorithm, to, epoch, msg, cause),
            Action::Granted { req, lock, token } => self.granted(algorithm, req, lock, token, cause),
            Action::Rejected { req, reason } => self.rejected(req, reason),
            Action::LeaseExpired { req, lock } => self.lease_expired(req, &lock),
            Action::SetTimer { timer, at } => self.timers.set(algorithm, timer, at),
            Action::CancelTimer { timer } => self.timers.cancel(algorithm, timer),
        }
    }

    fn send(
        &mut self,
        algorithm: Algorithm,
        to: crate::algo::NodeId,
        epoch: u64,
        msg: PeerMsg,
        cause: &Cause,
    ) {
        // An answer joins the trace of the request it answers (remembered when it arrived), which for a
        // deferred REPLY or a handoff is not the work that happens to send it.
        let answered = self.links.answering(to, &msg);
        let cause = answered.as_ref().unwrap_or(cause);
        let mut trace = BTreeMap::new();
        self.links.hand_over(&msg, &mut trace);
        self.observer.seen(Seen::Sent { to, msg: &msg, cause, trace: &mut trace });
        let core = self.cores.get(algorithm);
        let ts = msg.timestamp().unwrap_or_else(|| core.clock());
        let env = Envelope {
            ts,
            trace,
            to_incarnation: core.peer_incarnation(to),
            epoch,
            body: NodeMsg::Algo(msg),
        };
        if let Err(e) = self.transport.send(to, env) {
            tracing::warn!(peer = %to, error = %e, "cannot queue a peer message");
        }
    }

    /// Housekeeping tick: the membership layer's periodic work (formation queries, view bump, strangers),
    /// waiting requests the node can no longer serve (no member lease) answered 503 now rather than at their
    /// timeout; readiness and gauges refreshed.
    fn housekeeping(&mut self) {
        self.member_housekeeping();
        self.withdraw_unavailable();
        self.withdraw_abandoned();
        self.expire_calls();
        self.update_readiness();
        self.run_work();
    }
}
