//! The node: the only owner of the algorithm cores.
//!
//! One task runs one `select!` loop over API commands, transport input, core timers and a housekeeping tick,
//! feeds each input to the right [`Engine`] and executes the resulting actions: peer messages go to the
//! transport (one ordered outbound queue per peer keeps links FIFO), grants become leases and answer the waiting
//! HTTP request, timers go into a timer set. Nothing else touches the cores, so no locks are needed around them.
//!
//! Leases: a grant is held by a lease with a TTL; a lease not kept alive is released automatically (the next
//! waiter is granted with a larger fencing token). Availability: a request that needs a peer which is down is
//! answered 503 at once (and a waiting one is withdrawn when a needed peer goes down), instead of sitting out its
//! timeout.

use crate::algo::{
    Action, Algorithm, CoreError, Engine, Event, FencingToken, Incarnation, LamportTs, Millis, NodeId, Peers,
    Protocol, ProtocolMessage, RejectReason, RequestId, TimerId,
    lamport::{Lamport, LamportMsg},
    probable_owner::{PoMsg, ProbableOwner, RepOutcome},
    ricart_agrawala::{RaMsg, RicartAgrawala},
};
use crate::api::error::ApiError;
pub use crate::api::types::{
    AcquireRequest, AlgoLockInfo, ClusterInfo, Grant, LeaseInfo, LockInfo, PeerInfo, Readiness, Stats,
};
use crate::net::transport::{Inbound, TransportHandle};
use crate::net::wire::Envelope;
use crate::obs::flow::{Direction, FlowLog, FlowRecord};
use crate::obs::metrics::{Labels, Metrics};
use crate::obs::telemetry;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// The body of every peer message: one algorithm's message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerMsg {
    /// Lamport 1978.
    Lamport(LamportMsg),
    /// Ricart–Agrawala 1981.
    RicartAgrawala(RaMsg),
    /// Probable-owner locking.
    ProbableOwner(PoMsg),
}

impl PeerMsg {
    /// Which algorithm the message belongs to.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PeerMsg::Lamport(_) => Algorithm::Lamport,
            PeerMsg::RicartAgrawala(_) => Algorithm::RicartAgrawala,
            PeerMsg::ProbableOwner(_) => Algorithm::ProbableOwner,
        }
    }

    /// The message type in the papers' words.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMsg::Lamport(m) => m.kind(),
            PeerMsg::RicartAgrawala(m) => m.kind(),
            PeerMsg::ProbableOwner(m) => m.kind(),
        }
    }

    /// The lock the message is about.
    pub fn lock(&self) -> &str {
        match self {
            PeerMsg::Lamport(m) => m.lock(),
            PeerMsg::RicartAgrawala(m) => m.lock(),
            PeerMsg::ProbableOwner(m) => m.lock(),
        }
    }

    /// Whether the message asks the receiver for something that a later message answers (Lamport and
    /// Ricart–Agrawala REQUEST, probable-owner LOCK_ACQ): the node remembers the request's trace context so
    /// that the answer, however much later, joins the requester's trace.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            PeerMsg::Lamport(LamportMsg::Request { .. })
                | PeerMsg::RicartAgrawala(RaMsg::Request { .. })
                | PeerMsg::ProbableOwner(PoMsg::Acq { .. })
        )
    }

    /// Whether the message answers a request (REPLY, LOCK_REP): see [`PeerMsg::is_request`].
    pub fn is_answer(&self) -> bool {
        matches!(
            self,
            PeerMsg::Lamport(LamportMsg::Reply { .. })
                | PeerMsg::RicartAgrawala(RaMsg::Reply { .. })
                | PeerMsg::ProbableOwner(PoMsg::Rep { .. })
        )
    }

    /// Extra text for the message-flow diagram (where a redirect points, the epoch of a grant, …).
    pub fn flow_detail(&self) -> Option<String> {
        match self {
            PeerMsg::ProbableOwner(PoMsg::Rep { outcome: RepOutcome::Redirect { owner, .. }, .. }) => {
                Some(format!("redirect to N{}", owner.0))
            }
            PeerMsg::ProbableOwner(PoMsg::Rep {
                outcome: RepOutcome::Granted { epoch, queue, .. }, ..
            }) => Some(if queue.is_empty() {
                format!("grant epoch={epoch}")
            } else {
                format!("grant epoch={epoch} queue={}", queue.len())
            }),
            PeerMsg::ProbableOwner(PoMsg::OwnerUpdate { owner, epoch, .. }) => {
                Some(format!("owner=N{} epoch={epoch}", owner.0))
            }
            _ => None,
        }
    }

    /// The Lamport timestamp carried by the message, if any.
    pub fn timestamp(&self) -> Option<LamportTs> {
        match self {
            PeerMsg::Lamport(m) => m.timestamp(),
            PeerMsg::RicartAgrawala(m) => m.timestamp(),
            PeerMsg::ProbableOwner(m) => m.timestamp(),
        }
    }
}

/// Static settings of a node.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    /// This node.
    pub me: NodeId,
    /// This process's incarnation.
    pub incarnation: Incarnation,
    /// Peer addresses as configured (`host:port`), index = node id.
    pub peers: Vec<String>,
    /// Cluster name (reported in `/v1/cluster`).
    pub cluster: String,
    /// Timeout of an acquire that names none.
    pub default_timeout: Duration,
    /// Lease TTL of an acquire that names none.
    pub default_ttl: Duration,
    /// Largest TTL a client may ask for.
    pub max_ttl: Duration,
    /// A peer whose link has been down this long counts as down (503 for requests that need it).
    pub peer_down_after: Duration,
    /// Default algorithm for requests that name none.
    pub default_algorithm: Algorithm,
    /// Lamport's footnote option (no REPLY made redundant by a later message already sent).
    pub lamport_ack_elision: bool,
}

enum Command {
    Acquire { req: AcquireRequest, reply: oneshot::Sender<Result<Grant, ApiError>> },
    Release { lock: String, lease: String, reply: oneshot::Sender<Result<(), ApiError>> },
    KeepAlive { lease: String, reply: oneshot::Sender<Result<Duration, ApiError>> },
    LockInfo { lock: String, reply: oneshot::Sender<LockInfo> },
    Cluster { reply: oneshot::Sender<ClusterInfo> },
    Stats { reply: oneshot::Sender<Stats> },
    Shutdown { reply: oneshot::Sender<()> },
}

/// State shared with the HTTP layer without going through the loop.
#[derive(Debug)]
pub struct Shared {
    /// Metrics registry.
    pub metrics: Metrics,
    /// Recent peer messages and local events, for `GET /v1/flow` (sequence diagrams without Jaeger).
    pub flow: std::sync::Mutex<FlowLog>,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    clock: AtomicU64,
    reasons: std::sync::Mutex<Vec<String>>,
    /// This node.
    pub me: NodeId,
    /// This incarnation.
    pub incarnation: Incarnation,
}

impl Shared {
    /// Readiness with reasons.
    pub fn readiness(&self) -> Readiness {
        let reasons = match self.reasons.lock() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        };
        Readiness { ready: self.ready.load(Ordering::Relaxed), reasons }
    }

    /// The highest Lamport clock of the cores (for handshakes).
    pub fn clock(&self) -> LamportTs {
        LamportTs(self.clock.load(Ordering::Relaxed))
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The flow records of one acquire (by id), or else the last `limit` records about `lock`.
    pub fn flow_records(&self, lock: Option<&str>, acquire: Option<&str>, limit: usize) -> Vec<FlowRecord> {
        let log = match self.flow.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        match (acquire, lock) {
            (Some(id), lock) => {
                log.by_trace(id).into_iter().filter(|r| lock.is_none_or(|l| r.lock == l)).collect()
            }
            (None, Some(lock)) => log.recent(lock, limit),
            (None, None) => {
                let all: Vec<FlowRecord> = log.iter().cloned().collect();
                all[all.len().saturating_sub(limit)..].to_vec()
            }
        }
    }
}

/// Key of the node-local acquire id in a peer message's trace map: the flow records of one acquire are
/// grouped by it (the trace id when tracing, else `node-incarnation-request`), so diagrams need no backend.
pub const ACQUIRE_KEY: &str = "dmutex-acquire";

/// Prefix of the keys that hand the trace context of queued probable-owner requests to the next owner
/// (`dmutex-waiter.<node>.acquire`, `dmutex-waiter.<node>.traceparent`).
const WAITER_PREFIX: &str = "dmutex-waiter.";

/// Longest acquire id accepted from a peer (ids are at most 32 hex digits; anything longer is garbage).
const MAX_ACQUIRE_ID: usize = 64;

/// Most remembered request contexts (`Node::waiters`); beyond it they are all forgotten, so a flood of
/// requests that are never answered cannot grow memory (only their trace links are lost).
const MAX_WAITERS: usize = 4096;

/// What caused a piece of work: the acquire it belongs to and the span its messages are children of.
#[derive(Clone, Default)]
struct Cause {
    /// Flow id of the acquire (see [`ACQUIRE_KEY`]).
    acquire: Option<String>,
    /// Parent of the spans of the messages this work sends (`None` when not exporting).
    otel: Option<opentelemetry::Context>,
    /// Keeps the causing span (`peer.recv`, `lock.release`) open while its work is processed.
    _span: Option<tracing::Span>,
}

impl Cause {
    fn kept(&self) -> Cause {
        Cause { acquire: self.acquire.clone(), otel: self.otel.clone(), _span: None }
    }
}

/// A cheap, cloneable handle to a running node.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    /// Shared state.
    pub shared: Arc<Shared>,
}

impl NodeHandle {
    async fn call<R>(&self, make: impl FnOnce(oneshot::Sender<R>) -> Command) -> Result<R, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| ApiError::ShuttingDown)?;
        rx.await.map_err(|_| ApiError::ShuttingDown)
    }

    /// Acquires a lock; resolves when granted, timed out or refused.
    pub async fn acquire(&self, req: AcquireRequest) -> Result<Grant, ApiError> {
        self.call(|reply| Command::Acquire { req, reply }).await?
    }

    /// Releases a lease.
    pub async fn release(&self, lock: &str, lease: &str) -> Result<(), ApiError> {
        self.call(|reply| Command::Release { lock: lock.to_string(), lease: lease.to_string(), reply })
            .await?
    }

    /// Extends a lease by its TTL; returns the TTL.
    pub async fn keepalive(&self, lease: &str) -> Result<Duration, ApiError> {
        self.call(|reply| Command::KeepAlive { lease: lease.to_string(), reply }).await?
    }

    /// What this node knows about a lock.
    pub async fn lock_info(&self, lock: &str) -> Result<LockInfo, ApiError> {
        self.call(|reply| Command::LockInfo { lock: lock.to_string(), reply }).await
    }

    /// Cluster membership as seen here.
    pub async fn cluster(&self) -> Result<ClusterInfo, ApiError> {
        self.call(|reply| Command::Cluster { reply }).await
    }

    /// Counters.
    pub async fn stats(&self) -> Result<Stats, ApiError> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// Graceful shutdown: refuse new acquires, answer waiters, release leases, tell peers. Resolves when done.
    pub async fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        self.shared.ready.store(false, Ordering::Relaxed);
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }
}

struct Pending {
    algorithm: Algorithm,
    lock: String,
    reply: Option<oneshot::Sender<Result<Grant, ApiError>>>,
    started: Instant,
    timeout: Duration,
    ttl: Duration,
    /// Set when the node itself withdrew the request (peer down, shutdown): the answer to give.
    withdrawn: Option<ApiError>,
    /// Flow id of this acquire.
    acquire_id: String,
    /// The `lock.acquire` root span (a disabled span when not exporting); ends at the outcome.
    span: tracing::Span,
}

struct Lease {
    req: RequestId,
    algorithm: Algorithm,
    lock: String,
    token: FencingToken,
    ttl: Duration,
    expires: Instant,
    granted: Instant,
    /// Flow id of the acquire that got the lease.
    acquire_id: String,
    /// The acquire's trace context: `lock.release` is its child.
    otel: Option<opentelemetry::Context>,
}

#[derive(Default)]
struct PeerState {
    connected: bool,
    down_since: Option<Instant>,
    incarnation: Option<Incarnation>,
    last_seen: Option<Instant>,
}

/// The node loop's state.
pub struct Node {
    settings: NodeSettings,
    lamport: Engine<Lamport>,
    ra: Engine<RicartAgrawala>,
    po: Engine<ProbableOwner>,
    transport: TransportHandle<PeerMsg>,
    shared: Arc<Shared>,
    started: Instant,
    next_req: u64,
    pending: BTreeMap<RequestId, Pending>,
    leases: BTreeMap<String, Lease>,
    timers: BTreeSet<(Millis, Algorithm, TimerId)>,
    timer_index: BTreeMap<(Algorithm, TimerId), Millis>,
    peers: Vec<PeerState>,
    work: VecDeque<(Algorithm, Event<PeerMsg>, Cause)>,
    /// Trace context of requests received and not yet answered, by (algorithm, lock, requester): the answer
    /// (an immediate REPLY, a deferred one, a probable-owner handoff long after) joins the requester's trace.
    /// Kept here, not in the cores, which know nothing of tracing.
    waiters: BTreeMap<(Algorithm, String, NodeId), Cause>,
    /// Label sets of the message counters, built once per (algorithm, type, peer): counting a message then
    /// allocates nothing.
    message_labels: HashMap<(Algorithm, &'static str, NodeId), Labels>,
}

/// Wall-clock milliseconds since the Unix epoch (flow records of different nodes are merged by it).
fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

fn new_lease_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A fresh incarnation: microseconds since the UNIX epoch (grows across restarts of the same node).
pub fn new_incarnation() -> Incarnation {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(1);
    Incarnation(micros)
}

impl Node {
    /// Starts the node loop on the current runtime. `inbound` is the transport's output.
    pub fn spawn(
        settings: NodeSettings,
        transport: TransportHandle<PeerMsg>,
        inbound: mpsc::UnboundedReceiver<Inbound<PeerMsg>>,
        shared: Arc<Shared>,
    ) -> (NodeHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(1024);
        let n = settings.peers.len();
        let me = settings.me;
        let inc = settings.incarnation;
        let node = Node {
            lamport: Engine::new(
                if settings.lamport_ack_elision {
                    Lamport::with_ack_elision(me, n)
                } else {
                    Lamport::fresh(me, n)
                },
                Peers::new(me, n, inc),
            ),
            ra: Engine::new(RicartAgrawala::fresh(me, n), Peers::new(me, n, inc)),
            po: Engine::new(ProbableOwner::fresh(me, n), Peers::new(me, n, inc)),
            transport,
            shared: shared.clone(),
            started: Instant::now(),
            next_req: 1,
            pending: BTreeMap::new(),
            leases: BTreeMap::new(),
            timers: BTreeSet::new(),
            timer_index: BTreeMap::new(),
            peers: (0..n).map(|_| PeerState::default()).collect(),
            message_labels: HashMap::new(),
            work: VecDeque::new(),
            waiters: BTreeMap::new(),
            settings,
        };
        let task = tokio::spawn(node.run(rx, inbound));
        (NodeHandle { tx, shared }, task)
    }

    /// Shared state for a node that is about to be spawned.
    pub fn shared(me: NodeId, incarnation: Incarnation) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            metrics: Metrics::new(),
            flow: std::sync::Mutex::new(FlowLog::default()),
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            clock: AtomicU64::new(0),
            reasons: std::sync::Mutex::new(vec!["starting".into()]),
            me,
            incarnation,
        });
        shared.metrics.set(
            "dmutex_build_info",
            vec![("version", env!("CARGO_PKG_VERSION").to_string()), ("node", me.0.to_string())],
            1.0,
        );
        shared
    }

    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    fn instant_of(&self, at: Millis) -> Instant {
        self.started + Duration::from_millis(at.0)
    }

    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::UnboundedReceiver<Inbound<PeerMsg>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.housekeeping();
        loop {
            let next_timer = self.timers.first().map(|(at, _, _)| self.instant_of(*at));
            let sleep = tokio::time::sleep_until(
                next_timer.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into(),
            );
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        self.graceful_shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.on_command(cmd),
                    None => {
                        self.graceful_shutdown().await;
                        return;
                    }
                },
                Some(input) = inbound.recv() => self.on_inbound(input),
                _ = sleep, if next_timer.is_some() => self.fire_timers(),
                _ = tick.tick() => self.housekeeping(),
            }
            self.run_work();
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Acquire { req, reply } => self.acquire(req, reply),
            Command::Release { lock, lease, reply } => {
                let _ = reply.send(self.release(&lock, &lease));
            }
            Command::KeepAlive { lease, reply } => {
                let result = match self.leases.get_mut(&lease) {
                    Some(l) if l.expires > Instant::now() => {
                        l.expires = Instant::now() + l.ttl;
                        Ok(l.ttl)
                    }
                    _ => Err(ApiError::LeaseNotFound(format!("lease {lease} is unknown or expired"))),
                };
                let _ = reply.send(result);
            }
            Command::LockInfo { lock, reply } => {
                let _ = reply.send(self.lock_info(&lock));
            }
            Command::Cluster { reply } => {
                let _ = reply.send(self.cluster_info());
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    fn acquire(&mut self, req: AcquireRequest, reply: oneshot::Sender<Result<Grant, ApiError>>) {
        let algorithm = req.algorithm.unwrap_or(self.settings.default_algorithm);
        if self.shared.shutting_down() {
            self.count_outcome(algorithm, "shutdown");
            let _ = reply.send(Err(ApiError::ShuttingDown));
            return;
        }
        let ttl = req.ttl.unwrap_or(self.settings.default_ttl);
        if ttl > self.settings.max_ttl || ttl.is_zero() {
            let _ = reply.send(Err(ApiError::BadRequest(format!(
                "ttl_ms must be between 1 and {}",
                self.settings.max_ttl.as_millis()
            ))));
            return;
        }
        if let Some(why) = self.unavailable(algorithm, &req.lock) {
            self.count_outcome(algorithm, "unavailable");
            let _ = reply.send(Err(ApiError::Unavailable(why)));
            return;
        }
        let timeout = req.timeout.unwrap_or(self.settings.default_timeout);
        let id = RequestId(self.next_req);
        self.next_req += 1;
        let deadline = Millis(self.now().0 + timeout.as_millis() as u64);
        // The root of this acquire's trace; without an exporter no span is built at all.
        let span = if telemetry::exporting() {
            tracing::info_span!(
                parent: None,
                "lock.acquire",
                lock = %req.lock,
                algorithm = algorithm.as_str(),
                node = self.settings.me.0,
                fencing_token = tracing::field::Empty,
                waited_ms = tracing::field::Empty,
                outcome = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let otel = telemetry::context_of(&span);
        let acquire_id = telemetry::trace_id_of(&span).unwrap_or_else(|| {
            format!("{}-{:x}-{}", self.settings.me.0, self.settings.incarnation.0 & 0xffff, id.0)
        });
        self.flow_local("ACQUIRE", &req.lock, algorithm, &acquire_id, None);
        let cause = Cause { acquire: Some(acquire_id.clone()), otel, _span: None };
        self.pending.insert(
            id,
            Pending {
                algorithm,
                lock: req.lock.clone(),
                reply: Some(reply),
                started: Instant::now(),
                timeout,
                ttl,
                withdrawn: None,
                acquire_id,
                span,
            },
        );
        self.work.push_back((
            algorithm,
            Event::Acquire { req: id, lock: req.lock, deadline: Some(deadline) },
            cause,
        ));
    }

    /// Records a local event (ACQUIRE, ENTER, EXIT, TIMEOUT, …) of an acquire in the flow log.
    fn flow_local(
        &self,
        kind: impl Into<Cow<'static, str>>,
        lock: &str,
        algorithm: Algorithm,
        acquire: &str,
        detail: Option<String>,
    ) {
        let record = FlowRecord {
            at_unix_ms: unix_ms(),
            node: self.settings.me.0,
            direction: Direction::Local,
            peer: None,
            kind: kind.into(),
            lock: lock.to_string(),
            algorithm: algorithm.as_str().into(),
            lamport_ts: Some(self.engine_clock(algorithm).0),
            trace_id: Some(acquire.to_string()),
            detail,
        };
        self.push_flow(record);
    }

    /// Records a peer message (sent or received) in the flow log.
    fn flow_message(&self, direction: Direction, peer: NodeId, msg: &PeerMsg, acquire: Option<&String>) {
        let record = FlowRecord {
            at_unix_ms: unix_ms(),
            node: self.settings.me.0,
            direction,
            peer: Some(peer.0),
            kind: msg.kind().into(),
            lock: msg.lock().to_string(),
            algorithm: msg.algorithm().as_str().into(),
            lamport_ts: msg.timestamp().map(|t| t.0),
            trace_id: acquire.cloned(),
            detail: msg.flow_detail(),
        };
        self.push_flow(record);
    }

    fn push_flow(&self, record: FlowRecord) {
        match self.shared.flow.lock() {
            Ok(mut log) => log.push(record),
            Err(p) => p.into_inner().push(record),
        }
    }

    /// The cause of a lease's RELEASE: a `lock.release` span, child of the acquire's trace (when exporting).
    fn release_cause(
        &self,
        algorithm: Algorithm,
        lock: &str,
        token: FencingToken,
        acquire_id: &str,
        otel: Option<&opentelemetry::Context>,
    ) -> Cause {
        let (otel, span) = match otel {
            Some(parent) if telemetry::exporting() => {
                let span = tracing::info_span!(
                    parent: None,
                    "lock.release",
                    lock = %lock,
                    algorithm = algorithm.as_str(),
                    node = self.settings.me.0,
                    fencing_token = token.0,
                );
                telemetry::set_parent_context(&span, parent);
                (telemetry::context_of(&span), Some(span))
            }
            _ => (None, None),
        };
        Cause { acquire: Some(acquire_id.to_string()), otel, _span: span }
    }

    fn release(&mut self, lock: &str, lease: &str) -> Result<(), ApiError> {
        match self.leases.get(lease) {
            Some(l) if l.lock == lock => {}
            Some(_) => {
                return Err(ApiError::LeaseNotFound(format!("lease {lease} does not hold lock {lock:?}")));
            }
            None => return Err(ApiError::LeaseNotFound(format!("lease {lease} is unknown or expired"))),
        }
        if let Some(l) = self.leases.remove(lease) {
            self.end_lease(l);
        }
        Ok(())
    }

    fn end_lease(&mut self, l: Lease) {
        self.shared.metrics.observe(
            "dmutex_hold_duration_seconds",
            vec![("algorithm", l.algorithm.as_str().into())],
            l.granted.elapsed().as_secs_f64(),
        );
        let held = format!("held={}ms", l.granted.elapsed().as_millis());
        self.flow_local("EXIT", &l.lock, l.algorithm, &l.acquire_id, Some(held));
        let cause = self.release_cause(l.algorithm, &l.lock, l.token, &l.acquire_id, l.otel.as_ref());
        self.work.push_back((l.algorithm, Event::Release { req: l.req }, cause));
    }

    /// Why a request for `lock` with `algorithm` cannot be served now, if it cannot.
    fn unavailable(&self, algorithm: Algorithm, lock: &str) -> Option<String> {
        let joined = match algorithm {
            Algorithm::Lamport => self.lamport.joined(),
            Algorithm::RicartAgrawala => self.ra.joined(),
            Algorithm::ProbableOwner => self.po.joined(),
        };
        let mut down = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
            let node = NodeId(i as u16);
            if node == self.settings.me || !self.peer_down(p) {
                continue;
            }
            let needed = match algorithm {
                Algorithm::Lamport => self.lamport.needs_peer(lock, node),
                Algorithm::RicartAgrawala => self.ra.needs_peer(lock, node),
                Algorithm::ProbableOwner => self.po.needs_peer(lock, node),
            };
            if needed {
                down.push(format!("peer {} ({}) is down", i, self.settings.peers[i]));
            }
        }
        if !down.is_empty() {
            Some(down.join("; "))
        } else if !joined {
            Some("not yet joined: waiting for every peer's handshake".into())
        } else {
            None
        }
    }

    fn peer_down(&self, p: &PeerState) -> bool {
        !p.connected && p.down_since.is_none_or(|t| t.elapsed() >= self.settings.peer_down_after)
    }

    fn on_inbound(&mut self, input: Inbound<PeerMsg>) {
        match input {
            Inbound::Hello { peer, incarnation, clock } => {
                if let Some(p) = self.peers.get_mut(usize::from(peer.0)) {
                    p.incarnation = Some(incarnation);
                    p.last_seen = Some(Instant::now());
                }
                for algorithm in Algorithm::ALL {
                    self.work.push_back((
                        algorithm,
                        Event::PeerIncarnation { peer, incarnation, clock },
                        Cause::default(),
                    ));
                }
            }
            Inbound::Message { from, incarnation, env } => {
                if env.to_incarnation.is_some_and(|to| to != self.settings.incarnation) {
                    // Meant for an earlier life of this node: the sender had not yet seen this incarnation.
                    self.shared.metrics.inc(
                        "dmutex_bad_frames_total",
                        vec![("reason", "misaddressed".into())],
                        1,
                    );
                    return;
                }
                let algorithm = env.body.algorithm();
                let kind = env.body.kind();
                self.count_message("dmutex_messages_received_total", algorithm, kind, from);
                if let Some(p) = self.peers.get_mut(usize::from(from.0)) {
                    p.last_seen = Some(Instant::now());
                }
                if let PeerMsg::ProbableOwner(PoMsg::Rep { outcome: RepOutcome::Redirect { .. }, .. }) =
                    &env.body
                {
                    self.shared.metrics.inc("dmutex_redirects_total", vec![], 1);
                }
                let cause = self.received(from, &env);
                self.work.push_back((algorithm, Event::Message { from, incarnation, msg: env.body }, cause));
            }
            Inbound::Connected { peer } => {
                if let Some(p) = self.peers.get_mut(usize::from(peer.0)) {
                    p.connected = true;
                    p.down_since = None;
                }
            }
            Inbound::Disconnected { peer } => {
                if let Some(p) = self.peers.get_mut(usize::from(peer.0)) {
                    if p.connected || p.down_since.is_none() {
                        p.down_since = Some(Instant::now());
                    }
                    p.connected = false;
                }
            }
            Inbound::Refused { remote, reason } => {
                tracing::warn!(%remote, reason = reason.as_str(), "refused peer connection");
            }
            Inbound::BadFrame { remote, peer, error } => {
                tracing::warn!(%remote, ?peer, %error, "bad frame from peer");
                self.shared.metrics.inc("dmutex_bad_frames_total", vec![("reason", "frame".into())], 1);
            }
        }
    }

    /// Records a received message and builds the cause of its handling: a `peer.recv` span whose parent is the
    /// sender's span (from the message's trace map), in the sender's acquire. Requests remember their context
    /// for the answer; a probable-owner grant hands over the contexts of the queue it carries.
    fn received(&mut self, from: NodeId, env: &Envelope<PeerMsg>) -> Cause {
        let acquire = env.trace.get(ACQUIRE_KEY).filter(|a| a.len() <= MAX_ACQUIRE_ID).cloned();
        self.flow_message(Direction::Received, from, &env.body, acquire.as_ref());
        let (otel, span) = if telemetry::exporting() {
            let span = tracing::debug_span!(
                parent: None,
                "peer.recv",
                "msg.type" = env.body.kind(),
                "lamport.ts" = env.body.timestamp().map_or(env.ts.0, |t| t.0),
                from = from.0,
                node = self.settings.me.0,
                lock = %env.body.lock(),
                algorithm = env.body.algorithm().as_str(),
                "msg.detail" = env.body.flow_detail(),
            );
            telemetry::set_parent(&span, &env.trace);
            (telemetry::context_of(&span), Some(span))
        } else {
            (None, None)
        };
        let cause = Cause { acquire, otel, _span: span };
        let algorithm = env.body.algorithm();
        if env.body.is_request() {
            self.remember_waiter(algorithm, env.body.lock(), from, cause.kept());
        }
        if let PeerMsg::ProbableOwner(PoMsg::Rep {
            outcome: RepOutcome::Granted { queue, .. }, lock, ..
        }) = &env.body
        {
            for (node, _) in queue {
                let key = |what: &str| format!("{WAITER_PREFIX}{}.{what}", node.0);
                let acquire = env.trace.get(&key("acquire")).filter(|a| a.len() <= MAX_ACQUIRE_ID).cloned();
                let mut carrier = BTreeMap::new();
                if let Some(tp) = env.trace.get(&key("traceparent")) {
                    carrier.insert("traceparent".to_string(), tp.clone());
                }
                let cx = telemetry::extract(&carrier);
                let otel = telemetry::is_valid(&cx).then_some(cx);
                if acquire.is_some() || otel.is_some() {
                    self.remember_waiter(algorithm, lock, *node, Cause { acquire, otel, _span: None });
                }
            }
        }
        cause
    }

    /// Counts one message sent or received (`name`) in the per-(algorithm, type, peer) counter.
    fn count_message(&mut self, name: &'static str, algorithm: Algorithm, kind: &'static str, peer: NodeId) {
        let labels = self.message_labels.entry((algorithm, kind, peer)).or_insert_with(|| {
            vec![
                ("algorithm", algorithm.as_str().into()),
                ("type", kind.into()),
                ("peer", peer.0.to_string()),
            ]
        });
        self.shared.metrics.inc_ref(name, labels, 1);
    }

    fn remember_waiter(&mut self, algorithm: Algorithm, lock: &str, from: NodeId, cause: Cause) {
        if self.waiters.len() >= MAX_WAITERS {
            // Only trace links are lost; the cores' state is unaffected.
            self.waiters.clear();
        }
        self.waiters.insert((algorithm, lock.to_string(), from), cause);
    }

    /// The cause of work on behalf of a local pending request (cancel, withdraw).
    fn pending_cause(&self, id: RequestId) -> Cause {
        match self.pending.get(&id) {
            Some(p) => Cause {
                acquire: Some(p.acquire_id.clone()),
                otel: telemetry::context_of(&p.span),
                _span: None,
            },
            None => Cause::default(),
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now();
        while let Some(&(at, algorithm, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, algorithm, timer));
            self.timer_index.remove(&(algorithm, timer));
            self.work.push_back((algorithm, Event::Timer { timer }, Cause::default()));
        }
    }

    /// Feeds queued events to the cores and executes their actions until nothing is left.
    fn run_work(&mut self) {
        while let Some((algorithm, event, cause)) = self.work.pop_front() {
            let now = self.now();
            let mut actions = Vec::new();
            let result = match algorithm {
                Algorithm::Lamport => step(
                    &mut self.lamport,
                    now,
                    event,
                    &mut actions,
                    |m| match m {
                        PeerMsg::Lamport(m) => Some(m),
                        _ => None,
                    },
                    PeerMsg::Lamport,
                ),
                Algorithm::RicartAgrawala => step(
                    &mut self.ra,
                    now,
                    event,
                    &mut actions,
                    |m| match m {
                        PeerMsg::RicartAgrawala(m) => Some(m),
                        _ => None,
                    },
                    PeerMsg::RicartAgrawala,
                ),
                Algorithm::ProbableOwner => step(
                    &mut self.po,
                    now,
                    event,
                    &mut actions,
                    |m| match m {
                        PeerMsg::ProbableOwner(m) => Some(m),
                        _ => None,
                    },
                    PeerMsg::ProbableOwner,
                ),
            };
            if let Err(e) = result {
                let reason = match &e {
                    CoreError::StaleIncarnation { .. } => "stale_incarnation",
                    CoreError::UnknownPeer(_) => "unknown_peer",
                    CoreError::Unexpected { .. } => "unexpected_message",
                    _ => "refused_event",
                };
                tracing::debug!(algorithm = algorithm.as_str(), error = %e, "core refused an event");
                self.shared.metrics.inc("dmutex_bad_frames_total", vec![("reason", reason.into())], 1);
            }
            for action in actions {
                self.execute(algorithm, action, &cause);
            }
        }
        let clock = self.lamport.clock().max(self.ra.clock()).max(self.po.clock());
        self.shared.clock.store(clock.0, Ordering::Relaxed);
    }

    fn execute(&mut self, algorithm: Algorithm, action: Action<PeerMsg>, cause: &Cause) {
        match action {
            Action::Send { to, msg } => {
                // An answer joins the trace of the request it answers (remembered when it arrived), which for a
                // deferred REPLY or a handoff is not the work that happens to send it.
                let answered = if msg.is_answer() {
                    self.waiters.remove(&(algorithm, msg.lock().to_string(), to))
                } else {
                    None
                };
                let cause = answered.as_ref().unwrap_or(cause);
                let mut trace = BTreeMap::new();
                if let Some(a) = &cause.acquire {
                    trace.insert(ACQUIRE_KEY.to_string(), a.clone());
                }
                if telemetry::exporting()
                    && let Some(parent) = &cause.otel
                {
                    let span = tracing::debug_span!(
                        parent: None,
                        "peer.send",
                        "msg.type" = msg.kind(),
                        "lamport.ts" = msg.timestamp().map(|t| t.0),
                        to = to.0,
                        node = self.settings.me.0,
                        lock = %msg.lock(),
                        algorithm = algorithm.as_str(),
                        "msg.detail" = msg.flow_detail(),
                    );
                    telemetry::set_parent_context(&span, parent);
                    trace.extend(telemetry::inject(&span));
                }
                if let PeerMsg::ProbableOwner(PoMsg::Rep {
                    lock,
                    outcome: RepOutcome::Granted { queue, .. },
                    ..
                }) = &msg
                {
                    // The new owner takes over the queue: hand it the queued requests' contexts too.
                    for (node, _) in queue {
                        if let Some(w) = self.waiters.remove(&(algorithm, lock.to_string(), *node)) {
                            if let Some(a) = w.acquire {
                                trace.insert(format!("{WAITER_PREFIX}{}.acquire", node.0), a);
                            }
                            if let Some(tp) = w
                                .otel
                                .map(|cx| telemetry::inject_context(&cx))
                                .and_then(|mut m| m.remove("traceparent"))
                            {
                                trace.insert(format!("{WAITER_PREFIX}{}.traceparent", node.0), tp);
                            }
                        }
                    }
                }
                self.flow_message(Direction::Sent, to, &msg, cause.acquire.as_ref());
                self.count_message("dmutex_messages_sent_total", algorithm, msg.kind(), to);
                let ts = msg.timestamp().unwrap_or_else(|| self.engine_clock(algorithm));
                let to_incarnation = self.engine_peer_incarnation(algorithm, to);
                let env = Envelope { ts, trace, to_incarnation, body: msg };
                if let Err(e) = self.transport.send(to, env) {
                    tracing::warn!(peer = %to, error = %e, "cannot queue a peer message");
                }
            }
            Action::Granted { req, lock, token } => {
                let Some(mut p) = self.pending.remove(&req) else {
                    // Nobody waits for it any more: give it back at once.
                    self.work.push_back((algorithm, Event::Release { req }, cause.kept()));
                    return;
                };
                let waited = p.started.elapsed();
                p.span.record("fencing_token", token.0);
                p.span.record("waited_ms", waited.as_millis() as u64);
                let otel = telemetry::context_of(&p.span);
                if otel.is_some() {
                    let _enter = tracing::debug_span!(parent: &p.span, "lock.enter", fencing_token = token.0)
                        .entered();
                }
                self.flow_local("ENTER", &lock, algorithm, &p.acquire_id, Some(format!("token={}", token.0)));
                match p.reply.take() {
                    Some(reply) if !reply.is_closed() => {
                        let lease = new_lease_id();
                        let grant = Grant {
                            name: lock.clone(),
                            lease: lease.clone().into(),
                            fencing_token: token.0,
                            algorithm: Some(algorithm),
                            node_id: Some(self.settings.me.0),
                            waited_ms: Some(waited.as_millis() as u64),
                            ttl_ms: Some(p.ttl.as_millis() as u64),
                        };
                        let now = Instant::now();
                        self.leases.insert(
                            lease,
                            Lease {
                                req,
                                algorithm,
                                lock,
                                token,
                                ttl: p.ttl,
                                expires: now + p.ttl,
                                granted: now,
                                acquire_id: p.acquire_id.clone(),
                                otel,
                            },
                        );
                        p.span.record("outcome", "granted");
                        self.observe_acquire(algorithm, "granted", waited);
                        if reply.send(Ok(grant)).is_err() {
                            // The client went away between the check and the send: the lease will expire; release now.
                            if let Some((id, _)) = self.leases.iter().find(|(_, l)| l.req == req) {
                                let id = id.clone();
                                if let Some(l) = self.leases.remove(&id) {
                                    self.end_lease(l);
                                }
                            }
                        }
                    }
                    _ => {
                        p.span.record("outcome", "abandoned");
                        self.observe_acquire(algorithm, "abandoned", waited);
                        let cause = self.release_cause(algorithm, &lock, token, &p.acquire_id, otel.as_ref());
                        self.work.push_back((algorithm, Event::Release { req }, cause));
                    }
                }
            }
            Action::Rejected { req, reason } => {
                let Some(mut p) = self.pending.remove(&req) else { return };
                let waited = p.started.elapsed();
                let err = match (p.withdrawn.take(), reason) {
                    (Some(e), _) => e,
                    (None, RejectReason::TimedOut) => ApiError::Timeout(p.timeout.as_millis() as u64),
                    (None, RejectReason::Cancelled) => ApiError::Cancelled,
                };
                let outcome = match &err {
                    ApiError::Timeout(_) => "timeout",
                    ApiError::Unavailable(_) => "unavailable",
                    ApiError::ShuttingDown => "shutdown",
                    _ => "cancelled",
                };
                self.observe_acquire(algorithm, outcome, waited);
                p.span.record("outcome", outcome);
                p.span.record("waited_ms", waited.as_millis() as u64);
                self.flow_local(outcome.to_ascii_uppercase(), &p.lock, algorithm, &p.acquire_id, None);
                if let Some(reply) = p.reply.take() {
                    let _ = reply.send(Err(err));
                }
            }
            Action::SetTimer { timer, at } => {
                if let Some(old) = self.timer_index.insert((algorithm, timer), at) {
                    self.timers.remove(&(old, algorithm, timer));
                }
                self.timers.insert((at, algorithm, timer));
            }
            Action::CancelTimer { timer } => {
                if let Some(old) = self.timer_index.remove(&(algorithm, timer)) {
                    self.timers.remove(&(old, algorithm, timer));
                }
            }
        }
    }

    fn engine_peer_incarnation(&self, algorithm: Algorithm, peer: NodeId) -> Option<Incarnation> {
        match algorithm {
            Algorithm::Lamport => self.lamport.peers().incarnation(peer),
            Algorithm::RicartAgrawala => self.ra.peers().incarnation(peer),
            Algorithm::ProbableOwner => self.po.peers().incarnation(peer),
        }
    }

    fn engine_clock(&self, algorithm: Algorithm) -> LamportTs {
        match algorithm {
            Algorithm::Lamport => self.lamport.clock(),
            Algorithm::RicartAgrawala => self.ra.clock(),
            Algorithm::ProbableOwner => self.po.clock(),
        }
    }

    fn observe_acquire(&self, algorithm: Algorithm, outcome: &'static str, waited: Duration) {
        self.shared.metrics.observe(
            "dmutex_acquire_duration_seconds",
            vec![("algorithm", algorithm.as_str().into()), ("outcome", outcome.into())],
            waited.as_secs_f64(),
        );
        self.count_outcome(algorithm, outcome);
        if outcome == "granted" {
            self.shared.metrics.inc("dmutex_grants_total", vec![("algorithm", algorithm.as_str().into())], 1);
        }
    }

    fn count_outcome(&self, algorithm: Algorithm, outcome: &'static str) {
        self.shared.metrics.inc(
            "dmutex_acquire_outcomes_total",
            vec![("algorithm", algorithm.as_str().into()), ("outcome", outcome.into())],
            1,
        );
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        // Leases past their TTL are released: the next waiter gets the lock with a larger token.
        let expired: Vec<String> =
            self.leases.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| id.clone()).collect();
        for id in expired {
            if let Some(l) = self.leases.remove(&id) {
                tracing::info!(lease = %id, lock = %l.lock, "lease expired");
                self.shared.metrics.inc(
                    "dmutex_lease_expiries_total",
                    vec![("algorithm", l.algorithm.as_str().into())],
                    1,
                );
                self.end_lease(l);
            }
        }
        // Waiting requests that need a peer which is down are answered 503 now rather than at their timeout.
        let doomed: Vec<(RequestId, Algorithm, String)> = self
            .pending
            .iter()
            .filter(|(_, p)| p.withdrawn.is_none())
            .filter_map(|(id, p)| self.unavailable(p.algorithm, &p.lock).map(|why| (*id, p.algorithm, why)))
            .collect();
        for (id, algorithm, why) in doomed {
            if let Some(p) = self.pending.get_mut(&id) {
                p.withdrawn = Some(ApiError::Unavailable(why));
            }
            let cause = self.pending_cause(id);
            self.work.push_back((algorithm, Event::Cancel { req: id }, cause));
        }
        self.update_readiness();
        self.run_work();
    }

    fn update_readiness(&mut self) {
        let mut reasons = Vec::new();
        if self.shared.shutting_down() {
            reasons.push("shutting down".to_string());
        }
        for (i, p) in self.peers.iter().enumerate() {
            if i != usize::from(self.settings.me.0) && !p.connected {
                reasons.push(format!("peer {} ({}) is not connected", i, self.settings.peers[i]));
            }
        }
        if !(self.lamport.joined() && self.ra.joined() && self.po.joined()) {
            reasons.push("waiting for every peer's handshake".into());
        }
        let ready = reasons.is_empty();
        self.shared.ready.store(ready, Ordering::Relaxed);
        if let Ok(mut r) = self.shared.reasons.lock() {
            *r = reasons;
        }
        let m = &self.shared.metrics;
        m.set("dmutex_ready", vec![], if ready { 1.0 } else { 0.0 });
        for (i, p) in self.peers.iter().enumerate() {
            if i != usize::from(self.settings.me.0) {
                m.set(
                    "dmutex_peer_connected",
                    vec![("peer", i.to_string())],
                    if p.connected { 1.0 } else { 0.0 },
                );
            }
        }
        for algorithm in Algorithm::ALL {
            let waiting = self.pending.values().filter(|p| p.algorithm == algorithm).count();
            m.set("dmutex_waiting_requests", vec![("algorithm", algorithm.as_str().into())], waiting as f64);
            m.set(
                "dmutex_lamport_clock",
                vec![("algorithm", algorithm.as_str().into())],
                self.engine_clock(algorithm).0 as f64,
            );
        }
        m.set("dmutex_held_leases", vec![], self.leases.len() as f64);
        for s in self.transport.status() {
            m.set_counter("dmutex_peer_reconnects_total", vec![("peer", s.node.0.to_string())], s.reconnects);
        }
        for (reason, n) in self.transport.counters().refused {
            m.set_counter("dmutex_refused_connections_total", vec![("reason", reason.to_string())], n);
        }
    }

    fn lock_info(&self, lock: &str) -> LockInfo {
        let now = Instant::now();
        let leases = self
            .leases
            .iter()
            .filter(|(_, l)| l.lock == lock)
            .map(|(id, l)| LeaseInfo {
                lease: id.clone(),
                algorithm: l.algorithm,
                fencing_token: l.token.0,
                expires_in_ms: l.expires.saturating_duration_since(now).as_millis() as u64,
            })
            .collect();
        let mut algorithms = BTreeMap::new();
        algorithms.insert(
            Algorithm::Lamport.as_str().to_string(),
            AlgoLockInfo {
                view: self.lamport.view(lock),
                local_waiters: self.lamport.local_waiters(lock).len(),
            },
        );
        algorithms.insert(
            Algorithm::RicartAgrawala.as_str().to_string(),
            AlgoLockInfo { view: self.ra.view(lock), local_waiters: self.ra.local_waiters(lock).len() },
        );
        algorithms.insert(
            Algorithm::ProbableOwner.as_str().to_string(),
            AlgoLockInfo { view: self.po.view(lock), local_waiters: self.po.local_waiters(lock).len() },
        );
        LockInfo { name: lock.to_string(), leases, algorithms }
    }

    fn cluster_info(&self) -> ClusterInfo {
        let status = self.transport.status();
        let now = Instant::now();
        let peers = self
            .settings
            .peers
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                let me = i == usize::from(self.settings.me.0);
                let st = self.peers.get(i);
                PeerInfo {
                    node: i as u16,
                    address: addr.clone(),
                    connected: me || st.is_some_and(|p| p.connected),
                    last_seen_ms_ago: if me {
                        Some(0)
                    } else {
                        st.and_then(|p| p.last_seen).map(|t| now.duration_since(t).as_millis() as u64)
                    },
                    incarnation: if me {
                        Some(self.settings.incarnation.0)
                    } else {
                        st.and_then(|p| p.incarnation).map(|i| i.0)
                    },
                    reconnects: status
                        .iter()
                        .find(|s| usize::from(s.node.0) == i)
                        .map_or(0, |s| s.reconnects),
                }
            })
            .collect();
        let lamport_clock =
            Algorithm::ALL.iter().map(|a| (a.as_str().to_string(), self.engine_clock(*a).0)).collect();
        ClusterInfo {
            node_id: self.settings.me.0,
            incarnation: self.settings.incarnation.0,
            cluster: self.settings.cluster.clone(),
            ready: self.shared.ready.load(Ordering::Relaxed),
            peers,
            lamport_clock,
            lamport_ack_elision: self.lamport.protocol().ack_elision(),
        }
    }

    fn stats(&self) -> Stats {
        let m = &self.shared.metrics;
        let by_type = |name: &'static str| {
            let mut out: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
            for (labels, v) in m.counter_series(name) {
                let get = |k: &str| {
                    labels.iter().find(|(lk, _)| *lk == k).map(|(_, v)| v.clone()).unwrap_or_default()
                };
                *out.entry(get("algorithm")).or_default().entry(get("type")).or_default() += v;
            }
            out
        };
        let per_algo = |name: &'static str, extra: &[(&'static str, &str)]| {
            Algorithm::ALL
                .iter()
                .map(|a| {
                    let mut filter = vec![("algorithm", a.as_str())];
                    filter.extend_from_slice(extra);
                    (a.as_str().to_string(), m.counter_sum(name, &filter))
                })
                .collect::<BTreeMap<_, _>>()
        };
        Stats {
            node_id: self.settings.me.0,
            incarnation: self.settings.incarnation.0,
            messages_sent: by_type("dmutex_messages_sent_total"),
            messages_received: by_type("dmutex_messages_received_total"),
            messages_sent_total: m.counter_sum("dmutex_messages_sent_total", &[]),
            grants: per_algo("dmutex_grants_total", &[]),
            timeouts: per_algo("dmutex_acquire_outcomes_total", &[("outcome", "timeout")]),
            lease_expiries: m.counter_sum("dmutex_lease_expiries_total", &[]),
            lamport_clock: self.shared.clock().0,
            lamport_ack_elision: self.lamport.protocol().ack_elision(),
        }
    }

    async fn graceful_shutdown(&mut self) {
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        self.shared.ready.store(false, Ordering::Relaxed);
        let waiting: Vec<(RequestId, Algorithm)> =
            self.pending.iter().map(|(id, p)| (*id, p.algorithm)).collect();
        for (id, algorithm) in waiting {
            if let Some(p) = self.pending.get_mut(&id) {
                p.withdrawn = Some(ApiError::ShuttingDown);
            }
            let cause = self.pending_cause(id);
            self.work.push_back((algorithm, Event::Cancel { req: id }, cause));
        }
        let leases: Vec<String> = self.leases.keys().cloned().collect();
        for id in leases {
            if let Some(l) = self.leases.remove(&id) {
                self.end_lease(l);
            }
        }
        self.run_work();
        // Anything still pending (should be nothing) is answered too.
        for (_, mut p) in std::mem::take(&mut self.pending) {
            if let Some(reply) = p.reply.take() {
                let _ = reply.send(Err(ApiError::ShuttingDown));
            }
        }
        self.transport.shutdown().await;
    }
}

/// Feeds one event to one engine, translating between its message type and [`PeerMsg`].
fn step<P: Protocol>(
    engine: &mut Engine<P>,
    now: Millis,
    event: Event<PeerMsg>,
    out: &mut Vec<Action<PeerMsg>>,
    unwrap: impl Fn(PeerMsg) -> Option<P::Msg>,
    wrap: impl Fn(P::Msg) -> PeerMsg,
) -> Result<(), CoreError> {
    let event = match event {
        Event::Acquire { req, lock, deadline } => Event::Acquire { req, lock, deadline },
        Event::Release { req } => Event::Release { req },
        Event::Cancel { req } => Event::Cancel { req },
        Event::Timer { timer } => Event::Timer { timer },
        Event::PeerIncarnation { peer, incarnation, clock } => {
            Event::PeerIncarnation { peer, incarnation, clock }
        }
        Event::Message { from, incarnation, msg } => {
            let kind = msg.kind();
            match unwrap(msg) {
                Some(msg) => Event::Message { from, incarnation, msg },
                None => {
                    return Err(CoreError::Unexpected {
                        from,
                        kind,
                        reason: "routed to the wrong algorithm",
                    });
                }
            }
        }
    };
    let mut actions = Vec::new();
    let result = engine.handle(now, event, &mut actions);
    out.extend(actions.into_iter().map(|a| match a {
        Action::Send { to, msg } => Action::Send { to, msg: wrap(msg) },
        Action::Granted { req, lock, token } => Action::Granted { req, lock, token },
        Action::Rejected { req, reason } => Action::Rejected { req, reason },
        Action::SetTimer { timer, at } => Action::SetTimer { timer, at },
        Action::CancelTimer { timer } => Action::CancelTimer { timer },
    }));
    result
}
