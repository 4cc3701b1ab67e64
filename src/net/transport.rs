//! Per-peer links over TCP: reliable, FIFO, authenticated, and honest about restarts.
//!
//! Topology: every node *dials* every other peer for its own outbound data (one outbound TCP connection per
//! peer, owned by that peer's link task) and *accepts* the peers' connections for their data; cumulative acks
//! flow back on the same connection. So each direction of each pair is its own stream, and the node core sees
//! one ordered stream of [`Inbound`] events.
//!
//! Reliability within an incarnation pair (Lamport 1978 assumes reliable FIFO links; a dropped connection must
//! not lose a RELEASE):
//! - Outbound data frames are numbered 1, 2, 3, … per (my incarnation, peer incarnation) and stay in the
//!   link's unacked queue until a cumulative `Ack` covers them. The queue is unbounded: a message to a peer
//!   that is down waits until the peer comes back or turns out to have restarted.
//! - On every (re)connect the acceptor's `Welcome.received` says how far it delivered; the dialer drops what is
//!   covered and resends the rest, in order. The receiver drops duplicates (`seq ≤ delivered`); a gap can only
//!   be a protocol violation and closes the connection (the resend then fills it).
//! - A new connection from the same peer incarnation replaces the old one: the handshake bumps the peer's
//!   receive generation under the lock before computing `received`, and a reader only delivers while its
//!   generation is current, so the old reader can never deliver after the new one started (the stream stays
//!   FIFO); the old connection is then closed.
//! - When a handshake reveals that the *peer* restarted (a higher incarnation, seen either in its Hello on our
//!   listener or in its Welcome on our link), the link discards the unacked and queued frames addressed to the
//!   old incarnation and restarts numbering; the node core resends what matters when it sees [`Inbound::Hello`]
//!   with the new incarnation. The link is told before the `Hello` is emitted, so anything the core sends after
//!   handling that `Hello` goes to the new incarnation; a message sent in the short window before the core
//!   handles it may reach the new incarnation too, so cores must tolerate a stale or repeated message.
//! - When the *dialer* restarted, the acceptor resets its receive state for it and emits `Hello` before any of
//!   its data. A Hello from an incarnation older than the newest seen is refused (`StaleIncarnation`).
//!
//! [`Inbound::Hello`] is emitted once per new incarnation value of a peer, by whichever handshake reveals it
//! first, always before any message of that incarnation (both go through one channel, in lock order).
//!
//! "Connected" means: our outbound link to the peer completed its handshake, is up, and the peer has not said
//! `Bye` since. [`Inbound::Connected`] / [`Inbound::Disconnected`] are emitted on transitions only. A `Bye`
//! received on either connection marks the peer disconnected at once and stops expecting data from that
//! incarnation (a later Hello from it is refused with `ShuttingDown`).
//!
//! Liveness: while data is unacked, acks must make progress within `2 × handshake_timeout`, or the link
//! presumes the connection dead and redials (no extra frame type is needed; an idle link is not probed).
//!
//! Reconnects use capped exponential backoff (`backoff_min` doubling to `backoff_max`, with jitter in
//! `[d/2, d]`), reset after a successful handshake; connects and handshakes are bounded by
//! `handshake_timeout`; nothing busy-loops. Peer addresses are resolved with `lookup_host` at every connect.
//!
//! Refusals: a handshake that fails (garbage, oversized length, wrong version or cluster, unknown or own node
//! id, missing or bad MAC when a secret is configured, stale incarnation, timeout) gets a `Refuse` frame when
//! possible, is closed, logged with `tracing::warn!` and counted by reason in [`TransportCounters::refused`];
//! the node stays healthy. Bad frames on established connections are counted in `bad_frames`.
//!
//! This module never panics on network input and never blocks the caller: [`TransportHandle::send`] only
//! enqueues.

use crate::algo::{Incarnation, LamportTs, NodeId, PeerChange};
use crate::net::wire::{
    self, Envelope, Frame, FrameReader, FrameWriter, Nonce, PROTOCOL_VERSION, RefuseReason, WireError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, timeout};
use tracing::{debug, error, info, warn};

/// How long [`TransportHandle::shutdown`] spends flushing before it stops the tasks.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// The node's Lamport clock, read at handshakes.
pub type ClockFn = Arc<dyn Fn() -> LamportTs + Send + Sync>;

/// Transport settings.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node.
    pub me: NodeId,
    /// This process's incarnation.
    pub incarnation: Incarnation,
    /// Cluster name; peers of another cluster are refused.
    pub cluster: String,
    /// Every node's `host:port`, index = node id, this node's own entry included. Resolved at every connect.
    pub peers: Vec<String>,
    /// Cluster secret for the handshake MACs; `None`: no authentication.
    pub secret: Option<String>,
    /// Maximum frame body size (clamped to [`wire::MAX_FRAME_CEILING`]).
    pub max_frame: usize,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Bound on connecting and on the handshake, each way.
    pub handshake_timeout: Duration,
}

impl TransportConfig {
    /// A configuration with defaults: no secret, 1 MiB frames, backoff 50 ms … 5 s, 5 s handshake timeout.
    pub fn new(me: NodeId, incarnation: Incarnation, cluster: impl Into<String>, peers: Vec<String>) -> Self {
        TransportConfig {
            me,
            incarnation,
            cluster: cluster.into(),
            peers,
            secret: None,
            max_frame: wire::DEFAULT_MAX_FRAME,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// What the transport tells the node, in one ordered stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound<T> {
    /// A peer's handshake revealed a new incarnation (first contact or restart). Before any of its messages.
    Hello {
        /// The peer.
        peer: NodeId,
        /// Its new incarnation.
        incarnation: Incarnation,
        /// Its Lamport clock at the handshake.
        clock: LamportTs,
    },
    /// A message, delivered exactly once and in order per (sender incarnation, our incarnation).
    Message {
        /// Sender.
        from: NodeId,
        /// The sender's incarnation.
        incarnation: Incarnation,
        /// The message.
        env: Envelope<T>,
    },
    /// Our outbound link to `peer` is up.
    Connected {
        /// The peer.
        peer: NodeId,
    },
    /// Our outbound link to `peer` went down, or the peer said Bye.
    Disconnected {
        /// The peer.
        peer: NodeId,
    },
    /// A handshake on our listener was refused.
    Refused {
        /// Where the connection came from.
        remote: SocketAddr,
        /// Why.
        reason: RefuseReason,
    },
    /// An established connection carried a bad or unexpected frame and was closed.
    BadFrame {
        /// The other end.
        remote: SocketAddr,
        /// The peer, when known.
        peer: Option<NodeId>,
        /// What was wrong.
        error: String,
    },
}

/// One peer as the transport sees it (for `/v1/status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub node: NodeId,
    /// Its configured address.
    pub addr: String,
    /// Whether our outbound link is up (see the module doc).
    pub connected: bool,
    /// When a frame from it last arrived, on either connection.
    pub last_seen: Option<SystemTime>,
    /// Its newest incarnation seen.
    pub incarnation: Option<Incarnation>,
    /// Successful outbound handshakes after the first.
    pub reconnects: u64,
}

/// Transport counters (cumulative since start).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportCounters {
    /// Frames written, all types.
    pub frames_sent: u64,
    /// Frames read, all types.
    pub frames_received: u64,
    /// Handshakes we refused, by [`RefuseReason::as_str`].
    pub refused: BTreeMap<&'static str, u64>,
    /// Our handshakes that a peer refused (or that we abandoned on a bad Welcome), by reason.
    pub refused_by_peer: BTreeMap<&'static str, u64>,
    /// Bad or unexpected frames on established connections.
    pub bad_frames: u64,
    /// Data frames written again after a reconnect.
    pub resends: u64,
    /// Data frames received twice and dropped.
    pub duplicates_dropped: u64,
    /// Unacked or queued frames discarded because their peer restarted.
    pub discarded_on_restart: u64,
    /// Outgoing messages dropped because they could not be encoded within the maximum frame size.
    pub dropped_unencodable: u64,
    /// Failed outbound connects and handshakes.
    pub connect_failures: u64,
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The node id is not in the peer list.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// A node does not send to itself over the network.
    #[error("cannot send to self")]
    SelfSend,
    /// The transport was shut down.
    #[error("transport is shut down")]
    ShutDown,
    /// Framing or encoding failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A socket operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The peer's address did not resolve.
    #[error("cannot resolve {addr}: {detail}")]
    Resolve {
        /// The configured address.
        addr: String,
        /// Why.
        detail: String,
    },
    /// Connecting or the handshake took longer than `handshake_timeout`.
    #[error("timed out")]
    Timeout,
    /// The peer refused our handshake.
    #[error("refused by peer: {0}")]
    Refused(RefuseReason),
    /// The peer sent a frame the protocol does not allow here.
    #[error("unexpected {0} frame")]
    UnexpectedFrame(&'static str),
    /// The node at the peer's address is another node.
    #[error("expected node {expected} at this address, found node {found}")]
    WrongPeer {
        /// Configured.
        expected: NodeId,
        /// Found.
        found: NodeId,
    },
    /// The Welcome's MAC did not verify (different secret, or an impostor).
    #[error("welcome MAC did not verify")]
    BadWelcomeMac,
    /// The peer answered with an incarnation older than one already seen.
    #[error("stale incarnation {0:?}")]
    StaleIncarnation(Incarnation),
    /// The connection closed.
    #[error("connection closed")]
    Closed,
}

/// Starts transports (see [`Transport::start`]).
#[derive(Debug)]
pub struct Transport;

impl Transport {
    /// Starts accepting on `listener` (bound by the caller) and one link task per other peer. Returns the
    /// handle and the ordered stream of [`Inbound`] events. Must be called inside a tokio runtime.
    pub fn start<T>(
        mut cfg: TransportConfig,
        listener: TcpListener,
        clock: ClockFn,
    ) -> (TransportHandle<T>, mpsc::UnboundedReceiver<Inbound<T>>)
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        cfg.max_frame = cfg.max_frame.clamp(64, wire::MAX_FRAME_CEILING);
        cfg.backoff_min = cfg.backoff_min.max(Duration::from_millis(1));
        cfg.backoff_max = cfg.backoff_max.max(cfg.backoff_min);
        let n = cfg.peers.len();
        let (inbound, inbound_rx) = mpsc::unbounded_channel();
        let (shutdown_tx, _) = watch::channel(false);
        let mut links = Vec::with_capacity(n);
        let mut link_rxs = Vec::with_capacity(n);
        for i in 0..n {
            if i == usize::from(cfg.me.0) {
                links.push(None);
                link_rxs.push(None);
            } else {
                let (tx, rx) = mpsc::unbounded_channel();
                links.push(Some(tx));
                link_rxs.push(Some(rx));
            }
        }
        let inner = Arc::new(Inner {
            secret: cfg.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            cfg,
            clock,
            inbound,
            links,
            shared: Mutex::new(Shared { peers: (0..n).map(|_| PeerShared::default()).collect() }),
            counters: Counters::default(),
            shutdown: shutdown_tx,
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        for (i, rx) in link_rxs.into_iter().enumerate() {
            if let Some(rx) = rx {
                let peer = NodeId(i as u16);
                tasks.push(tokio::spawn(run_link(inner.clone(), peer, rx)));
            }
        }
        tasks.push(tokio::spawn(run_acceptor(inner.clone(), listener)));
        *lock(&inner.tasks) = tasks;
        info!(node = %inner.cfg.me, incarnation = inner.cfg.incarnation.0, peers = n, "transport started");
        (TransportHandle { inner }, inbound_rx)
    }
}

/// A cheap, cloneable handle on a running transport.
pub struct TransportHandle<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for TransportHandle<T> {
    fn clone(&self) -> Self {
        TransportHandle { inner: self.inner.clone() }
    }
}

impl<T> std::fmt::Debug for TransportHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportHandle").field("me", &self.inner.cfg.me).finish_non_exhaustive()
    }
}

impl<T> TransportHandle<T>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Enqueues `env` for `to` without blocking. Messages to one peer leave in the order they were enqueued.
    pub fn send(&self, to: NodeId, env: Envelope<T>) -> Result<(), TransportError> {
        if to == self.inner.cfg.me {
            return Err(TransportError::SelfSend);
        }
        let Some(Some(link)) = self.inner.links.get(usize::from(to.0)) else {
            return Err(TransportError::UnknownPeer(to));
        };
        link.send(LinkCmd::Send(env)).map_err(|_| TransportError::ShutDown)
    }

    /// The state of every other peer, in node order.
    pub fn status(&self) -> Vec<PeerStatus> {
        let sh = lock(&self.inner.shared);
        sh.peers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != usize::from(self.inner.cfg.me.0))
            .map(|(i, p)| PeerStatus {
                node: NodeId(i as u16),
                addr: self.inner.cfg.peers.get(i).cloned().unwrap_or_default(),
                connected: p.connected,
                last_seen: p.last_seen,
                incarnation: p.known,
                reconnects: p.reconnects,
            })
            .collect()
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> TransportCounters {
        let c = &self.inner.counters;
        TransportCounters {
            frames_sent: c.frames_sent.load(Relaxed),
            frames_received: c.frames_received.load(Relaxed),
            refused: lock(&c.refused).clone(),
            refused_by_peer: lock(&c.refused_by_peer).clone(),
            bad_frames: c.bad_frames.load(Relaxed),
            resends: c.resends.load(Relaxed),
            duplicates_dropped: c.duplicates_dropped.load(Relaxed),
            discarded_on_restart: c.discarded_on_restart.load(Relaxed),
            dropped_unencodable: c.dropped_unencodable.load(Relaxed),
            connect_failures: c.connect_failures.load(Relaxed),
        }
    }

    /// Graceful stop: stops accepting, sends what is queued and `Bye` on every link and accepted connection,
    /// waits up to [`SHUTDOWN_FLUSH`] for acks, then stops every task. Idempotent.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        let deadline = Instant::now() + SHUTDOWN_FLUSH + Duration::from_millis(500);
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
        info!(node = %self.inner.cfg.me, "transport stopped");
    }
}

// ---------------------------------------------------------------------------------------------------------
// Shared state

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    // A panic elsewhere must not take the transport down with it: the data is still consistent per field.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner<T> {
    cfg: TransportConfig,
    secret: Option<Vec<u8>>,
    clock: ClockFn,
    inbound: mpsc::UnboundedSender<Inbound<T>>,
    /// Command channel of each peer's link task (`None` for this node).
    links: Vec<Option<mpsc::UnboundedSender<LinkCmd<T>>>>,
    /// Everything that orders [`Inbound`] events; held only briefly and never across an await.
    shared: Mutex<Shared>,
    counters: Counters,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

struct Shared {
    peers: Vec<PeerShared>,
}

#[derive(Default)]
struct PeerShared {
    /// Newest incarnation seen in any handshake.
    known: Option<Incarnation>,
    connected: bool,
    last_seen: Option<SystemTime>,
    established_once: bool,
    reconnects: u64,
    recv: RecvSlot,
}

/// Receive state for the peer's data stream to us.
#[derive(Default)]
struct RecvSlot {
    /// The dialer incarnation the state belongs to.
    incarnation: Option<Incarnation>,
    /// Highest sequence number delivered.
    delivered: u64,
    /// Bumped by each accepted handshake; only the reader of the current generation delivers.
    generation: u64,
    /// Dropping it tells the current reader it was replaced.
    cancel: Option<oneshot::Sender<()>>,
    /// The incarnation said Bye.
    said_bye: bool,
}

#[derive(Default)]
struct Counters {
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    refused_by_peer: Mutex<BTreeMap<&'static str, u64>>,
    bad_frames: AtomicU64,
    resends: AtomicU64,
    duplicates_dropped: AtomicU64,
    discarded_on_restart: AtomicU64,
    dropped_unencodable: AtomicU64,
    connect_failures: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
    fn by_reason(m: &Mutex<BTreeMap<&'static str, u64>>, reason: RefuseReason) {
        *lock(m).entry(reason.as_str()).or_default() += 1;
    }
}

enum LinkCmd<T> {
    /// Enqueue a message.
    Send(Envelope<T>),
    /// The peer's newest incarnation changed to this one (first contact or restart), learnt by either
    /// handshake. Its place in the channel separates messages addressed to the old incarnation from the rest.
    PeerIncarnation(Incarnation),
    /// The peer (this incarnation) said Bye on its connection to us.
    PeerBye(Incarnation),
}

impl<T> Inner<T> {
    fn emit(&self, ev: Inbound<T>) {
        // The receiver is gone only when the node is stopping; nothing to do then.
        let _ = self.inbound.send(ev);
    }

    fn peer_mut<'a>(&self, sh: &'a mut Shared, peer: NodeId) -> Option<&'a mut PeerShared> {
        sh.peers.get_mut(usize::from(peer.0))
    }

    /// Records a handshake's incarnation; emits `Hello` for a new one (after telling the link of a restart).
    fn observe(
        &self,
        sh: &mut Shared,
        peer: NodeId,
        incarnation: Incarnation,
        clock: LamportTs,
    ) -> PeerChange {
        let Some(p) = self.peer_mut(sh, peer) else {
            return PeerChange::Unknown;
        };
        let change = match p.known {
            None => PeerChange::Joined,
            Some(k) if incarnation > k => PeerChange::Restarted,
            Some(k) if incarnation == k => PeerChange::Same,
            Some(_) => PeerChange::Stale,
        };
        if matches!(change, PeerChange::Joined | PeerChange::Restarted) {
            p.known = Some(incarnation);
            if change == PeerChange::Restarted {
                info!(%peer, incarnation = incarnation.0, "peer restarted");
            }
            // The link hears of it before the node does, so whatever the node sends after handling the Hello
            // is queued behind this marker.
            if let Some(Some(link)) = self.links.get(usize::from(peer.0)) {
                let _ = link.send(LinkCmd::PeerIncarnation(incarnation));
            }
            self.emit(Inbound::Hello { peer, incarnation, clock });
        }
        change
    }

    fn set_connected(&self, sh: &mut Shared, peer: NodeId, up: bool) {
        if let Some(p) = self.peer_mut(sh, peer) {
            if p.connected != up {
                p.connected = up;
                self.emit(if up { Inbound::Connected { peer } } else { Inbound::Disconnected { peer } });
            }
        }
    }

    fn touch(&self, peer: NodeId) {
        let mut sh = lock(&self.shared);
        if let Some(p) = self.peer_mut(&mut sh, peer) {
            p.last_seen = Some(SystemTime::now());
        }
    }

    fn bad_frame(&self, remote: SocketAddr, peer: Option<NodeId>, error: String) {
        Counters::bump(&self.counters.bad_frames);
        warn!(%remote, peer = ?peer, %error, "bad frame; closing connection");
        self.emit(Inbound::BadFrame { remote, peer, error });
    }

    fn secret(&self) -> Option<&[u8]> {
        self.secret.as_deref()
    }
}

/// Resolves once shutdown was requested (or the transport is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

// ---------------------------------------------------------------------------------------------------------
// Accepting side

async fn run_acceptor<T>(inner: Arc<Inner<T>>, listener: TcpListener)
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let mut stop = inner.shutdown.subscribe();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next() => {}
            r = listener.accept() => match r {
                Ok((stream, remote)) => {
                    conns.spawn(serve_incoming(inner.clone(), stream, remote));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    // Accepted connections see the same shutdown signal and say Bye; give them the flush budget.
    let deadline = Instant::now() + SHUTDOWN_FLUSH;
    while tokio::time::timeout_at(deadline, conns.join_next()).await.is_ok_and(|r| r.is_some()) {}
    conns.abort_all();
}

/// A handshake on our listener that did not succeed.
enum AcceptFail {
    /// Tell the dialer and count it.
    Refuse(RefuseReason, String),
    /// Nothing to tell (closed before saying anything, socket error).
    Silent(String),
}

struct Accepted {
    peer: NodeId,
    incarnation: Incarnation,
    generation: u64,
    replaced: oneshot::Receiver<()>,
}

async fn serve_incoming<T>(inner: Arc<Inner<T>>, stream: TcpStream, remote: SocketAddr)
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, inner.cfg.max_frame);
    let mut writer = FrameWriter::new(w, inner.cfg.max_frame);
    let hs = timeout(inner.cfg.handshake_timeout, accept_handshake(&inner, &mut reader, &mut writer)).await;
    let accepted = match hs {
        Ok(Ok(a)) => a,
        Ok(Err(AcceptFail::Refuse(reason, detail))) => {
            return refuse(&inner, &mut reader, &mut writer, remote, reason, &detail).await;
        }
        Err(_) => {
            return refuse(
                &inner,
                &mut reader,
                &mut writer,
                remote,
                RefuseReason::Timeout,
                "handshake timed out",
            )
            .await;
        }
        Ok(Err(AcceptFail::Silent(detail))) => {
            debug!(%remote, %detail, "incoming connection closed during handshake");
            return;
        }
    };
    debug!(%remote, peer = %accepted.peer, incarnation = accepted.incarnation.0, "inbound link up");
    serve_data(&inner, reader, writer, remote, accepted).await;
}

async fn refuse<T: Serialize>(
    inner: &Inner<T>,
    reader: &mut FrameReader<OwnedReadHalf>,
    writer: &mut FrameWriter<OwnedWriteHalf>,
    remote: SocketAddr,
    reason: RefuseReason,
    detail: &str,
) {
    Counters::by_reason(&inner.counters.refused, reason);
    warn!(%remote, reason = reason.as_str(), %detail, "refused peer connection");
    let frame: Frame<T> = Frame::Refuse { reason };
    let sent = timeout(Duration::from_secs(1), async {
        writer.write_frame(&frame).await?;
        writer.close().await
    })
    .await;
    if matches!(sent, Ok(Ok(()))) {
        Counters::bump(&inner.counters.frames_sent);
    }
    inner.emit(Inbound::Refused { remote, reason });
    // Closing a socket with unread input makes the kernel send RST, which can destroy the Refuse frame before
    // the dialer reads it. Linger briefly, discarding what it still sends, so it can read why.
    let _ = timeout(Duration::from_millis(250), async {
        let mut scratch = [0u8; 4096];
        let mut budget: usize = 64 * 1024;
        while budget > 0 {
            match reader.get_mut().read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => budget = budget.saturating_sub(n),
            }
        }
    })
    .await;
}

async fn accept_handshake<T>(
    inner: &Inner<T>,
    reader: &mut FrameReader<OwnedReadHalf>,
    writer: &mut FrameWriter<OwnedWriteHalf>,
) -> Result<Accepted, AcceptFail>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let challenge = wire::fresh_nonce();
    let silent = |e: WireError| AcceptFail::Silent(e.to_string());
    writer.write_frame(&Frame::<T>::Challenge { nonce: challenge }).await.map_err(silent)?;
    writer.flush().await.map_err(silent)?;
    Counters::bump(&inner.counters.frames_sent);

    let frame = match reader.read_frame::<T>().await {
        Ok(Some(f)) => f,
        Ok(None) => return Err(AcceptFail::Silent("closed before hello".into())),
        Err(e) => {
            return Err(match e.refuse_reason() {
                Some(reason) => AcceptFail::Refuse(reason, e.to_string()),
                None => AcceptFail::Silent(e.to_string()),
            });
        }
    };
    Counters::bump(&inner.counters.frames_received);
    let Frame::Hello { version, cluster, node, incarnation, clock, nonce, mac } = frame else {
        return Err(AcceptFail::Refuse(
            RefuseReason::Malformed,
            format!("expected hello, got {}", frame.kind()),
        ));
    };
    let refuse = |r: RefuseReason, d: String| Err(AcceptFail::Refuse(r, d));
    if version != PROTOCOL_VERSION {
        return refuse(RefuseReason::BadVersion, format!("version {version}, expected {PROTOCOL_VERSION}"));
    }
    if cluster != inner.cfg.cluster {
        return refuse(RefuseReason::WrongCluster, format!("cluster {cluster:?}"));
    }
    if usize::from(node.0) >= inner.cfg.peers.len() {
        return refuse(RefuseReason::UnknownNode, format!("node {node}"));
    }
    if node == inner.cfg.me {
        return refuse(RefuseReason::SelfId, format!("node {node} is this node"));
    }
    let transcript = wire::hello_transcript(version, &cluster, node, incarnation, clock, &challenge, &nonce);
    if !wire::verify_mac(inner.secret(), &transcript, &mac) {
        return refuse(RefuseReason::BadSecret, format!("node {node}: bad or missing MAC"));
    }
    if *inner.shutdown.borrow() {
        return refuse(RefuseReason::ShuttingDown, String::new());
    }

    let (cancel_tx, replaced) = oneshot::channel();
    let (generation, received) = {
        let mut sh = lock(&inner.shared);
        if let Some(p) = inner.peer_mut(&mut sh, node) {
            if p.recv.said_bye && p.recv.incarnation == Some(incarnation) {
                drop(sh);
                return refuse(RefuseReason::ShuttingDown, format!("node {node} said bye"));
            }
        }
        if inner.observe(&mut sh, node, incarnation, clock) == PeerChange::Stale {
            drop(sh);
            return refuse(
                RefuseReason::StaleIncarnation,
                format!("node {node} incarnation {}", incarnation.0),
            );
        }
        let Some(p) = inner.peer_mut(&mut sh, node) else {
            return Err(AcceptFail::Silent("peer vanished".into()));
        };
        p.last_seen = Some(SystemTime::now());
        let r = &mut p.recv;
        if r.incarnation != Some(incarnation) {
            // The dialer restarted (or first contact): its numbering starts again at 1.
            *r = RecvSlot { incarnation: Some(incarnation), generation: r.generation, ..RecvSlot::default() };
        }
        // Fence off the previous reader of this peer before reading `delivered` (FIFO across replacement).
        r.generation += 1;
        r.cancel = Some(cancel_tx);
        (r.generation, r.delivered)
    };

    let welcome_clock = (inner.clock)();
    let me = inner.cfg.me;
    let my_inc = inner.cfg.incarnation;
    let transcript = wire::welcome_transcript(
        PROTOCOL_VERSION,
        &inner.cfg.cluster,
        me,
        my_inc,
        welcome_clock,
        received,
        node,
        &nonce,
        &challenge,
    );
    let welcome: Frame<T> = Frame::Welcome {
        node: me,
        incarnation: my_inc,
        clock: welcome_clock,
        received,
        mac: wire::mac(inner.secret(), &transcript),
    };
    writer.write_frame(&welcome).await.map_err(silent)?;
    writer.flush().await.map_err(silent)?;
    Counters::bump(&inner.counters.frames_sent);
    Ok(Accepted { peer: node, incarnation, generation, replaced })
}

/// Reads a peer's data stream: delivers in order, drops duplicates, acks cumulatively.
async fn serve_data<T>(
    inner: &Inner<T>,
    mut reader: FrameReader<OwnedReadHalf>,
    mut writer: FrameWriter<OwnedWriteHalf>,
    remote: SocketAddr,
    acc: Accepted,
) where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let Accepted { peer, incarnation, generation, mut replaced } = acc;
    let mut stop = inner.shutdown.subscribe();
    // Acks are delayed a little and coalesced: they only trim the sender's resend queue, so one ack per
    // ACK_DELAY (or per ACK_EVERY frames) halves the frames on the wire under load at no cost to latency.
    let mut unacked_since: Option<(tokio::time::Instant, u64)> = None;
    let mut acked = 0u64;
    let mut delivered = 0u64;
    loop {
        let ack_due = unacked_since.map(|(t, _)| t + ACK_DELAY);
        let frame = tokio::select! {
            biased;
            _ = &mut replaced => {
                debug!(%remote, %peer, "inbound connection replaced by a newer one");
                return;
            }
            _ = stopped(&mut stop) => {
                let bye = timeout(SHUTDOWN_FLUSH, async {
                    writer.write_frame(&Frame::<T>::Bye).await?;
                    writer.close().await
                });
                if matches!(bye.await, Ok(Ok(()))) {
                    Counters::bump(&inner.counters.frames_sent);
                }
                return;
            }
            _ = tokio::time::sleep_until(ack_due.unwrap_or_else(tokio::time::Instant::now)), if ack_due.is_some() => {
                unacked_since = None;
                if delivered > acked {
                    if let Err(e) = send_ack::<T>(&mut writer, delivered).await {
                        debug!(%remote, %peer, error = %e, "cannot ack; closing");
                        return;
                    }
                    acked = delivered;
                    Counters::bump(&inner.counters.frames_sent);
                }
                continue;
            }
            r = reader.read_frame::<T>() => r,
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => {
                debug!(%remote, %peer, "inbound connection closed");
                return;
            }
            Err(e) => {
                if e.refuse_reason().is_some() {
                    inner.bad_frame(remote, Some(peer), e.to_string());
                } else {
                    debug!(%remote, %peer, error = %e, "inbound connection failed");
                }
                return;
            }
        };
        Counters::bump(&inner.counters.frames_received);
        let ack = match frame {
            Frame::Data { seq, env } => {
                let mut sh = lock(&inner.shared);
                let Some(p) = inner.peer_mut(&mut sh, peer) else { return };
                if p.recv.generation != generation {
                    return;
                }
                p.last_seen = Some(SystemTime::now());
                let r = &mut p.recv;
                if seq <= r.delivered {
                    Counters::bump(&inner.counters.duplicates_dropped);
                } else if seq == r.delivered + 1 {
                    r.delivered = seq;
                    inner.emit(Inbound::Message { from: peer, incarnation, env });
                } else {
                    let expected = r.delivered + 1;
                    drop(sh);
                    inner.bad_frame(
                        remote,
                        Some(peer),
                        format!("sequence gap: got {seq}, expected {expected}"),
                    );
                    return;
                }
                r.delivered
            }
            Frame::Bye => {
                let mut sh = lock(&inner.shared);
                let Some(p) = inner.peer_mut(&mut sh, peer) else { return };
                if p.recv.generation == generation {
                    info!(%peer, incarnation = incarnation.0, "peer said bye");
                    p.recv.said_bye = true;
                    p.last_seen = Some(SystemTime::now());
                    inner.set_connected(&mut sh, peer, false);
                    if let Some(Some(link)) = inner.links.get(usize::from(peer.0)) {
                        let _ = link.send(LinkCmd::PeerBye(incarnation));
                    }
                }
                return;
            }
            other => {
                inner.bad_frame(
                    remote,
                    Some(peer),
                    format!("unexpected {} frame from a dialer", other.kind()),
                );
                return;
            }
        };
        delivered = ack;
        if delivered.saturating_sub(acked) >= ACK_EVERY && !reader.has_buffered_frame() {
            if let Err(e) = send_ack::<T>(&mut writer, delivered).await {
                debug!(%remote, %peer, error = %e, "cannot ack; closing");
                return;
            }
            acked = delivered;
            unacked_since = None;
            Counters::bump(&inner.counters.frames_sent);
        } else if delivered > acked && unacked_since.is_none() {
            unacked_since = Some((tokio::time::Instant::now(), delivered));
        }
    }
}

/// Longest an inbound stream waits before acknowledging what it delivered.
const ACK_DELAY: Duration = Duration::from_millis(5);
/// Acknowledge at once when this many frames are unacknowledged.
const ACK_EVERY: u64 = 256;

async fn send_ack<T: Serialize>(writer: &mut FrameWriter<OwnedWriteHalf>, seq: u64) -> Result<(), WireError> {
    writer.write_frame(&Frame::<T>::Ack { seq }).await?;
    writer.flush().await
}

// ---------------------------------------------------------------------------------------------------------
// Dialing side: one link task per peer

/// The link's outbound stream state, kept across connections.
struct LinkState {
    /// Encoded `Data` frames not yet acked, in sequence order.
    unacked: VecDeque<(u64, Vec<u8>)>,
    next_seq: u64,
    /// Highest sequence number ever written (to count resends).
    written_upto: u64,
    /// The peer incarnation the numbering belongs to (`None`: not met yet).
    peer_inc: Option<Incarnation>,
}

impl LinkState {
    /// Assigns the next sequence number and encodes; returns the index of the new frame in `unacked`.
    fn enqueue<T: Serialize>(&mut self, env: Envelope<T>, inner: &Inner<T>, peer: NodeId) -> Option<usize> {
        let frame = Frame::Data { seq: self.next_seq, env };
        match wire::encode_frame(&frame, inner.cfg.max_frame) {
            Ok(bytes) => {
                self.unacked.push_back((self.next_seq, bytes));
                self.next_seq += 1;
                Some(self.unacked.len() - 1)
            }
            Err(e) => {
                Counters::bump(&inner.counters.dropped_unencodable);
                error!(%peer, error = %e, "dropping a message that cannot be sent");
                None
            }
        }
    }

    /// The peer restarted: what was addressed to its old incarnation is void; numbering starts again.
    fn reset_for<T>(&mut self, incarnation: Incarnation, inner: &Inner<T>, peer: NodeId) {
        let n = self.unacked.len() as u64;
        if n > 0 {
            inner.counters.discarded_on_restart.fetch_add(n, Relaxed);
            info!(%peer, discarded = n, "discarding frames addressed to the peer's old incarnation");
        }
        self.unacked.clear();
        self.next_seq = 1;
        self.written_upto = 0;
        self.peer_inc = Some(incarnation);
    }

    fn ack(&mut self, seq: u64) {
        while self.unacked.front().is_some_and(|(s, _)| *s <= seq) {
            self.unacked.pop_front();
        }
    }

    /// Applies a command while no connection is up.
    fn apply_offline<T: Serialize>(&mut self, cmd: LinkCmd<T>, inner: &Inner<T>, peer: NodeId) {
        match cmd {
            LinkCmd::Send(env) => {
                self.enqueue(env, inner, peer);
            }
            LinkCmd::PeerIncarnation(i) => match self.peer_inc {
                // First contact: what was queued before was meant for whoever answers.
                None => self.peer_inc = Some(i),
                Some(k) if i > k => self.reset_for(i, inner, peer),
                Some(_) => {}
            },
            LinkCmd::PeerBye(_) => {}
        }
    }
}

/// Capped exponential backoff with jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max, next: min }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    /// A delay in `[d/2, d]` for the current `d`, then doubles `d` up to the cap.
    fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(self.max);
        let half = d / 2;
        let jitter_ns = rand::random_range(0..=half.as_nanos().min(u128::from(u64::MAX)) as u64);
        half + Duration::from_nanos(jitter_ns)
    }
}

/// What the reader half of an outbound connection reports to its link.
enum LinkEvent {
    Ack(u64),
    Bye,
    Closed(String),
}

struct Established {
    writer: FrameWriter<OwnedWriteHalf>,
    reader: FrameReader<OwnedReadHalf>,
    incarnation: Incarnation,
    clock: LamportTs,
    received: u64,
    remote: SocketAddr,
}

async fn run_link<T>(inner: Arc<Inner<T>>, peer: NodeId, mut cmds: mpsc::UnboundedReceiver<LinkCmd<T>>)
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let mut st = LinkState { unacked: VecDeque::new(), next_seq: 1, written_upto: 0, peer_inc: None };
    let mut backoff = Backoff::new(inner.cfg.backoff_min, inner.cfg.backoff_max);
    let mut stop = inner.shutdown.subscribe();
    loop {
        let dialed = {
            let fut = dial::<T>(&inner, peer);
            match offline(fut, &mut st, &mut cmds, &mut stop, &inner, peer).await {
                Some(r) => r,
                None => return,
            }
        };
        let est = match dialed {
            Ok(est) => est,
            Err(e) => {
                Counters::bump(&inner.counters.connect_failures);
                if let TransportError::Refused(reason) = &e {
                    Counters::by_reason(&inner.counters.refused_by_peer, *reason);
                    warn!(%peer, reason = reason.as_str(), "peer refused our handshake");
                } else if matches!(e, TransportError::BadWelcomeMac | TransportError::WrongPeer { .. }) {
                    warn!(%peer, error = %e, "abandoned handshake");
                } else {
                    debug!(%peer, error = %e, "connect failed");
                }
                let delay = backoff.next_delay();
                if offline(tokio::time::sleep(delay), &mut st, &mut cmds, &mut stop, &inner, peer)
                    .await
                    .is_none()
                {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let graceful = connected(&inner, peer, &mut st, &mut cmds, &mut stop, est).await;
        {
            let mut sh = lock(&inner.shared);
            inner.set_connected(&mut sh, peer, false);
        }
        if graceful {
            return;
        }
        // Even after a healthy connection, wait a little: a peer that accepts and drops at once must not
        // make us spin.
        let delay = backoff.next_delay();
        if offline(tokio::time::sleep(delay), &mut st, &mut cmds, &mut stop, &inner, peer).await.is_none() {
            return;
        }
    }
}

/// Runs `fut` while queueing commands; `None` if shutdown came first.
async fn offline<T, F>(
    fut: F,
    st: &mut LinkState,
    cmds: &mut mpsc::UnboundedReceiver<LinkCmd<T>>,
    stop: &mut watch::Receiver<bool>,
    inner: &Inner<T>,
    peer: NodeId,
) -> Option<F::Output>
where
    T: Serialize,
    F: Future,
{
    tokio::pin!(fut);
    loop {
        tokio::select! {
            biased;
            _ = stopped(stop) => return None,
            out = &mut fut => return Some(out),
            cmd = cmds.recv() => match cmd {
                Some(c) => st.apply_offline(c, inner, peer),
                None => return None,
            },
        }
    }
}

/// Resolves, connects and performs the dialer's side of the handshake.
async fn dial<T>(inner: &Inner<T>, peer: NodeId) -> Result<Established, TransportError>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let limit = inner.cfg.handshake_timeout;
    let addr = inner.cfg.peers.get(usize::from(peer.0)).ok_or(TransportError::UnknownPeer(peer))?;
    let addrs: Vec<SocketAddr> = match timeout(limit, tokio::net::lookup_host(addr.as_str())).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => return Err(TransportError::Resolve { addr: addr.clone(), detail: e.to_string() }),
        Err(_) => return Err(TransportError::Resolve { addr: addr.clone(), detail: "timed out".into() }),
    };
    let mut last = TransportError::Resolve { addr: addr.clone(), detail: "no addresses".into() };
    let mut stream = None;
    for a in addrs {
        match timeout(limit, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                stream = Some((s, a));
                break;
            }
            Ok(Err(e)) => last = TransportError::Io(e),
            Err(_) => last = TransportError::Timeout,
        }
    }
    let Some((stream, remote)) = stream else {
        return Err(last);
    };
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r, inner.cfg.max_frame);
    let mut writer = FrameWriter::new(w, inner.cfg.max_frame);
    match timeout(limit, dial_handshake(inner, peer, &mut reader, &mut writer)).await {
        Ok(Ok((incarnation, clock, received))) => {
            Ok(Established { writer, reader, incarnation, clock, received, remote })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(TransportError::Timeout),
    }
}

async fn dial_handshake<T>(
    inner: &Inner<T>,
    peer: NodeId,
    reader: &mut FrameReader<OwnedReadHalf>,
    writer: &mut FrameWriter<OwnedWriteHalf>,
) -> Result<(Incarnation, LamportTs, u64), TransportError>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let challenge: Nonce = match reader.read_frame::<T>().await?.ok_or(TransportError::Closed)? {
        Frame::Challenge { nonce } => nonce,
        Frame::Refuse { reason } => return Err(TransportError::Refused(reason)),
        other => return Err(TransportError::UnexpectedFrame(other.kind())),
    };
    Counters::bump(&inner.counters.frames_received);
    let cfg = &inner.cfg;
    let nonce = wire::fresh_nonce();
    let clock = (inner.clock)();
    let transcript = wire::hello_transcript(
        PROTOCOL_VERSION,
        &cfg.cluster,
        cfg.me,
        cfg.incarnation,
        clock,
        &challenge,
        &nonce,
    );
    let hello: Frame<T> = Frame::Hello {
        version: PROTOCOL_VERSION,
        cluster: cfg.cluster.clone(),
        node: cfg.me,
        incarnation: cfg.incarnation,
        clock,
        nonce,
        mac: wire::mac(inner.secret(), &transcript),
    };
    writer.write_frame(&hello).await?;
    writer.flush().await?;
    Counters::bump(&inner.counters.frames_sent);
    let (node, incarnation, their_clock, received, mac) =
        match reader.read_frame::<T>().await?.ok_or(TransportError::Closed)? {
            Frame::Welcome { node, incarnation, clock, received, mac } => {
                (node, incarnation, clock, received, mac)
            }
            Frame::Refuse { reason } => return Err(TransportError::Refused(reason)),
            other => return Err(TransportError::UnexpectedFrame(other.kind())),
        };
    Counters::bump(&inner.counters.frames_received);
    let refuse_back = |reason: RefuseReason| Frame::<T>::Refuse { reason };
    if node != peer {
        let _ = writer.write_frame(&refuse_back(RefuseReason::UnknownNode)).await;
        let _ = writer.close().await;
        return Err(TransportError::WrongPeer { expected: peer, found: node });
    }
    let transcript = wire::welcome_transcript(
        PROTOCOL_VERSION,
        &cfg.cluster,
        node,
        incarnation,
        their_clock,
        received,
        cfg.me,
        &nonce,
        &challenge,
    );
    if !wire::verify_mac(inner.secret(), &transcript, &mac) {
        let _ = writer.write_frame(&refuse_back(RefuseReason::BadSecret)).await;
        let _ = writer.close().await;
        Counters::by_reason(&inner.counters.refused_by_peer, RefuseReason::BadSecret);
        return Err(TransportError::BadWelcomeMac);
    }
    Ok((incarnation, their_clock, received))
}

/// Reads acks and Bye from an outbound connection.
async fn read_acks<T>(mut reader: FrameReader<OwnedReadHalf>, events: mpsc::UnboundedSender<LinkEvent>)
where
    T: DeserializeOwned,
{
    loop {
        let ev = match reader.read_frame::<T>().await {
            Ok(Some(Frame::Ack { seq })) => LinkEvent::Ack(seq),
            Ok(Some(Frame::Bye)) => LinkEvent::Bye,
            Ok(Some(other)) => {
                LinkEvent::Closed(format!("unexpected {} frame from an acceptor", other.kind()))
            }
            Ok(None) => LinkEvent::Closed(String::new()),
            Err(e) => LinkEvent::Closed(e.to_string()),
        };
        let last = !matches!(ev, LinkEvent::Ack(_));
        if events.send(ev).is_err() || last {
            return;
        }
    }
}

/// Aborts the wrapped task when dropped (the connection's reader must not outlive it).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drives an established outbound connection. Returns `true` after a graceful shutdown.
async fn connected<T>(
    inner: &Inner<T>,
    peer: NodeId,
    st: &mut LinkState,
    cmds: &mut mpsc::UnboundedReceiver<LinkCmd<T>>,
    stop: &mut watch::Receiver<bool>,
    est: Established,
) -> bool
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let Established { mut writer, reader, incarnation, clock, received, remote } = est;
    {
        let mut sh = lock(&inner.shared);
        if inner.observe(&mut sh, peer, incarnation, clock) == PeerChange::Stale {
            drop(sh);
            warn!(%peer, incarnation = incarnation.0, "peer answered with a stale incarnation");
            return false;
        }
        if let Some(p) = inner.peer_mut(&mut sh, peer) {
            p.last_seen = Some(SystemTime::now());
            if p.established_once {
                p.reconnects += 1;
            }
            p.established_once = true;
        }
        inner.set_connected(&mut sh, peer, true);
    }
    // A new incarnation in the Welcome: `observe` (ours just now, or the listener's earlier) queued the
    // `PeerIncarnation` marker behind every message meant for the old one. Consume the queue up to it, so those
    // messages are discarded and the ones after it are numbered for the new incarnation.
    while st.peer_inc.is_none_or(|k| k < incarnation) {
        match cmds.try_recv() {
            Ok(cmd) => st.apply_offline(cmd, inner, peer),
            Err(_) => {
                // Not reachable while `observe` queues a marker for every change; stay safe anyway.
                st.reset_for(incarnation, inner, peer);
            }
        }
    }
    if st.peer_inc != Some(incarnation) {
        // The peer restarted again meanwhile: this connection leads to an old process.
        return false;
    }
    if received >= st.next_seq {
        // Only a protocol violation can get here: the peer claims frames we never numbered.
        error!(%peer, received, next_seq = st.next_seq, "peer acknowledged unsent frames; renumbering");
        st.unacked.clear();
        st.next_seq = received + 1;
    }
    st.ack(received);
    debug!(%peer, %remote, incarnation = incarnation.0, received, pending = st.unacked.len(), "outbound link up");

    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let _reader = AbortOnDrop(tokio::spawn(read_acks::<T>(reader, ev_tx)));

    // Resend everything the peer has not delivered, in order.
    for (seq, bytes) in &st.unacked {
        if writer.write_encoded(bytes).await.is_err() {
            return false;
        }
        Counters::bump(&inner.counters.frames_sent);
        if *seq <= st.written_upto {
            Counters::bump(&inner.counters.resends);
        }
        st.written_upto = st.written_upto.max(*seq);
    }
    if writer.flush().await.is_err() {
        return false;
    }

    // Liveness: TCP alone may take many minutes to notice a vanished peer. While frames are unacked, the
    // acks must make progress within `ack_timeout`, or the connection is presumed dead and redialed (the
    // resend and duplicate filter make a false alarm harmless).
    let ack_timeout = inner.cfg.handshake_timeout * 2;
    let mut progress = Instant::now();
    loop {
        let waiting = !st.unacked.is_empty();
        tokio::select! {
            biased;
            _ = stopped(stop) => {
                graceful_close(inner, peer, st, cmds, &mut writer, &mut events).await;
                return true;
            }
            _ = tokio::time::sleep_until(progress + ack_timeout), if waiting => {
                warn!(%peer, unacked = st.unacked.len(), timeout = ?ack_timeout, "no ack progress; reconnecting");
                return false;
            }
            ev = events.recv() => match ev {
                Some(LinkEvent::Ack(seq)) => {
                    if seq >= st.next_seq {
                        inner.bad_frame(remote, Some(peer), format!("ack {seq} beyond sent {}", st.next_seq - 1));
                        return false;
                    }
                    st.ack(seq);
                    progress = Instant::now();
                    Counters::bump(&inner.counters.frames_received);
                    inner.touch(peer);
                }
                Some(LinkEvent::Bye) => {
                    Counters::bump(&inner.counters.frames_received);
                    info!(%peer, "peer said bye on our link");
                    inner.touch(peer);
                    return false;
                }
                Some(LinkEvent::Closed(why)) => {
                    if why.is_empty() {
                        debug!(%peer, "outbound connection closed by peer");
                    } else {
                        debug!(%peer, error = %why, "outbound connection failed");
                    }
                    return false;
                }
                None => return false,
            },
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return false };
                if st.unacked.is_empty() {
                    progress = Instant::now();
                }
                // Batch: take whatever else is queued, then flush once.
                let mut next = Some(cmd);
                let mut budget = 512;
                while let Some(cmd) = next.take() {
                    match cmd {
                        LinkCmd::Send(env) => {
                            if let Some(i) = st.enqueue(env, inner, peer) {
                                let Some((seq, bytes)) = st.unacked.get(i) else { return false };
                                if writer.write_encoded(bytes).await.is_err() {
                                    return false;
                                }
                                st.written_upto = st.written_upto.max(*seq);
                                Counters::bump(&inner.counters.frames_sent);
                            }
                        }
                        LinkCmd::PeerIncarnation(i) => {
                            if i > incarnation {
                                // We are talking to a dead process's connection: start over with the new one.
                                st.reset_for(i, inner, peer);
                                return false;
                            }
                        }
                        LinkCmd::PeerBye(i) => {
                            if i == incarnation {
                                return false;
                            }
                        }
                    }
                    budget -= 1;
                    if budget > 0 {
                        next = cmds.try_recv().ok();
                    }
                }
                if writer.flush().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Shutdown on an established link: send what is queued, wait briefly for acks, say Bye.
async fn graceful_close<T>(
    inner: &Inner<T>,
    peer: NodeId,
    st: &mut LinkState,
    cmds: &mut mpsc::UnboundedReceiver<LinkCmd<T>>,
    writer: &mut FrameWriter<OwnedWriteHalf>,
    events: &mut mpsc::UnboundedReceiver<LinkEvent>,
) where
    T: Serialize,
{
    let deadline = Instant::now() + SHUTDOWN_FLUSH;
    let work = async {
        while let Ok(cmd) = cmds.try_recv() {
            if let LinkCmd::Send(env) = cmd {
                if let Some(i) = st.enqueue(env, inner, peer) {
                    if let Some((_, bytes)) = st.unacked.get(i) {
                        writer.write_encoded(bytes).await?;
                        Counters::bump(&inner.counters.frames_sent);
                    }
                }
            }
        }
        writer.flush().await?;
        while !st.unacked.is_empty() {
            match events.recv().await {
                Some(LinkEvent::Ack(seq)) => st.ack(seq),
                _ => break,
            }
        }
        writer.write_frame(&Frame::<T>::Bye).await?;
        Counters::bump(&inner.counters.frames_sent);
        writer.close().await
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(())) => debug!(%peer, "link closed gracefully"),
        Ok(Err(e)) => debug!(%peer, error = %e, "link failed while closing"),
        Err(_) => debug!(%peer, unacked = st.unacked.len(), "link close timed out"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let expect = [100, 200, 400, 700, 700];
        for ms in expect {
            let d = b.next_delay();
            let cap = Duration::from_millis(ms);
            assert!(d >= cap / 2 && d <= cap, "{d:?} not in [{:?}, {cap:?}]", cap / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn link_state_acks_cumulatively_and_resets_on_restart() {
        let (tx, _rx) = mpsc::unbounded_channel::<Inbound<u32>>();
        let (shutdown, _) = watch::channel(false);
        let inner = Inner::<u32> {
            cfg: TransportConfig::new(NodeId(0), Incarnation(1), "c", vec!["a:1".into(), "b:1".into()]),
            secret: None,
            clock: Arc::new(|| LamportTs(0)),
            inbound: tx,
            links: vec![None, None],
            shared: Mutex::new(Shared { peers: vec![PeerShared::default(), PeerShared::default()] }),
            counters: Counters::default(),
            shutdown,
            tasks: Mutex::new(Vec::new()),
        };
        let mut st = LinkState { unacked: VecDeque::new(), next_seq: 1, written_upto: 0, peer_inc: None };
        for i in 0..5 {
            st.apply_offline(LinkCmd::Send(Envelope::new(LamportTs(i), i as u32)), &inner, NodeId(1));
        }
        assert_eq!(st.unacked.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        st.ack(3);
        assert_eq!(st.unacked.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![4, 5]);
        st.apply_offline::<u32>(LinkCmd::PeerIncarnation(Incarnation(2)), &inner, NodeId(1));
        assert_eq!(st.peer_inc, Some(Incarnation(2)), "first incarnation learnt: nothing discarded");
        assert_eq!(st.unacked.len(), 2);
        st.apply_offline::<u32>(LinkCmd::PeerIncarnation(Incarnation(3)), &inner, NodeId(1));
        assert!(st.unacked.is_empty());
        assert_eq!(st.next_seq, 1);
        assert_eq!(inner.counters.discarded_on_restart.load(Relaxed), 2);
    }
}
