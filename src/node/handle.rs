//! How the rest of the program talks to a running node: [`NodeHandle`] sends [`Command`]s into the loop and
//! awaits their answers; [`Shared`] is what the HTTP layer reads without going through the loop (metrics,
//! flow records, readiness).

use crate::algo::{Incarnation, LamportTs, NodeId};
use crate::api::error::ApiError;
use crate::api::types::{
    AcquireRequest, ClusterInfo, Grant, LockInfo, LockList, LockState, Readiness, Stats,
};
use crate::obs::flow::{FlowLog, FlowRecord};
use crate::obs::metrics::{BuildLabels, Metrics};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// A request to the node loop, with the channel its answer goes back on.
pub(crate) enum Command {
    Acquire { req: AcquireRequest, reply: oneshot::Sender<Result<Grant, ApiError>> },
    Release { lock: String, lease: String, reply: oneshot::Sender<Result<(), ApiError>> },
    KeepAlive { lease: String, reply: oneshot::Sender<Result<Duration, ApiError>> },
    LockInfo { lock: String, reply: oneshot::Sender<LockInfo> },
    LockState { lock: String, reply: oneshot::Sender<LockState> },
    Locks { reply: oneshot::Sender<LockList> },
    Cluster { reply: oneshot::Sender<ClusterInfo> },
    Stats { reply: oneshot::Sender<Stats> },
    Shutdown { reply: oneshot::Sender<()> },
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// State shared with the HTTP layer without going through the loop.
#[derive(Debug)]
pub struct Shared {
    /// Metrics registry.
    pub metrics: Metrics,
    /// Recent peer messages and local events, for `GET /v1/flow` (sequence diagrams without Jaeger).
    pub flow: Mutex<FlowLog>,
    ready: AtomicBool,
    shutting_down: AtomicBool,
    clock: AtomicU64,
    reasons: Mutex<Vec<String>>,
    /// This node.
    pub me: NodeId,
    /// This incarnation.
    pub incarnation: Incarnation,
}

impl Shared {
    /// The shared state of a node that is about to start: not ready, clock 0.
    pub fn new(me: NodeId, incarnation: Incarnation) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            metrics: Metrics::new(),
            flow: Mutex::new(FlowLog::default()),
            ready: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            clock: AtomicU64::new(0),
            reasons: Mutex::new(vec!["starting".into()]),
            me,
            incarnation,
        });
        shared.metrics.build_info.set(BuildLabels { version: env!("CARGO_PKG_VERSION"), node: me }, 1.0);
        shared
    }

    /// Readiness with reasons.
    pub fn readiness(&self) -> Readiness {
        Readiness { ready: self.ready.load(Ordering::Relaxed), reasons: lock(&self.reasons).clone() }
    }

    /// The highest Lamport clock of the cores (for handshakes).
    pub fn clock(&self) -> LamportTs {
        LamportTs::new(self.clock.load(Ordering::Relaxed))
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// The flow records of one acquire (by id), or else the last `limit` records about `lock`.
    pub fn flow_records(&self, lock: Option<&str>, acquire: Option<&str>, limit: usize) -> Vec<FlowRecord> {
        let log = self::lock(&self.flow);
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

    pub(crate) fn push_flow(&self, record: FlowRecord) {
        lock(&self.flow).push(record);
    }

    pub(crate) fn set_ready(&self, ready: bool, reasons: Vec<String>) {
        self.ready.store(ready, Ordering::Relaxed);
        *lock(&self.reasons) = reasons;
    }

    pub(crate) fn set_clock(&self, clock: LamportTs) {
        self.clock.store(clock.get(), Ordering::Relaxed);
    }

    /// From now on: not ready, and new acquires are refused.
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.ready.store(false, Ordering::Relaxed);
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
    pub(crate) fn new(tx: mpsc::Sender<Command>, shared: Arc<Shared>) -> Self {
        NodeHandle { tx, shared }
    }

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

    /// What this node alone knows about a lock (its cores' views).
    pub async fn lock_info(&self, lock: &str) -> Result<LockInfo, ApiError> {
        self.call(|reply| Command::LockInfo { lock: lock.to_string(), reply }).await
    }

    /// A lock as the cluster knows it: every member of the view asked.
    pub async fn lock_state(&self, lock: &str) -> Result<LockState, ApiError> {
        self.call(|reply| Command::LockState { lock: lock.to_string(), reply }).await
    }

    /// Every lock held or waited for, cluster-wide.
    pub async fn locks(&self) -> Result<LockList, ApiError> {
        self.call(|reply| Command::Locks { reply }).await
    }

    /// Cluster membership as seen here.
    pub async fn cluster(&self) -> Result<ClusterInfo, ApiError> {
        self.call(|reply| Command::Cluster { reply }).await
    }

    /// The node's counters per algorithm (grants, messages, timeouts), as `GET /v1/stats` shows them.
    pub async fn stats(&self) -> Result<Stats, ApiError> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// Graceful shutdown: refuse new acquires, answer waiters, release leases, tell peers. Resolves when done.
    pub async fn shutdown(&self) {
        self.shared.begin_shutdown();
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }
}
