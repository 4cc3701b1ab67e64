//! Per-peer links over TCP: the I/O around `Link`, the sans-I/O reliable FIFO link.
//!
//! Topology: every node *dials* every other peer it has an address for, for its own outbound data (one
//! outbound TCP connection per peer, owned by that peer's link task) and *accepts* the peers' connections
//! for their data; cumulative acks flow back on the same connection. So each direction of each pair is its
//! own stream, and the node core sees one ordered stream of [`Inbound`] events.
//!
//! Everything about reliability — numbering, acks, resend after a reconnect, duplicate drop, replacement of a
//! connection, restarts and what they void, Bye, the ack-progress deadline — is `Link`'s (see `net::link`
//! for the rules). This module only does I/O and drives it: it accepts, dials with backoff, runs the
//! handshake (`net/handshake.rs`), frames, writes what the link transmits, feeds it what arrives, and emits
//! its events. Each peer's link sits behind its own mutex (in the peer's slot of the table below), held
//! briefly and never across an await; every event of a peer is emitted under it, so [`Inbound::Hello`]
//! always precedes the messages of that incarnation, and a message the node sends after handling it is
//! numbered for it.
//!
//! Reconnects use capped exponential backoff (`backoff_min` doubling to `backoff_max`, with jitter in
//! `[d/2, d]`), reset after a successful handshake; connects and handshakes are bounded by
//! `handshake_timeout`; nothing busy-loops. Peer addresses are resolved with `lookup_host` at every connect.
//! While data is unacked, acks must make progress within `2 × handshake_timeout`, or the link redials. An
//! outbound link that wrote nothing for `keepalive` (1 s) sends a `Keepalive` frame and the acceptor answers
//! with one, so an idle link still carries a frame each way every second ([`PeerStatus::last_seen`] is true)
//! and a connection silent for [`TransportConfig::dead_after`] is closed by either end (the dialer redials).
//! Keepalives are counted apart and never reach the node.
//!
//! The peer table is dynamic. It holds one slot per peer, keyed by [`NodeId`] (ids need not be dense; this
//! node has none): the initial ones come from [`TransportConfig::peers`] (index = id), and the membership layer
//! changes it at run time.
//! - [`TransportHandle::add_peer`] makes a slot and starts its link task, or changes the address a slot dials
//!   from its next connect on. Idempotent; adding this node does nothing.
//! - [`TransportHandle::remove_peer`] forgets the slot at once: what was queued for the peer is dropped
//!   (counted in `dropped_on_remove`), no event about it is emitted any more, `send` to it is
//!   [`TransportError::UnknownPeer`]; in the background its link task and its accepted connection say `Bye`
//!   and end, so the peer sees a clean end ([`Inbound::Disconnected`]) and not a timeout.
//! - With [`TransportConfig::accept_unknown`] the acceptor takes a handshake from an id it has no slot for,
//!   after every check a known peer passes (version, cluster, MAC, default algorithm), and makes a slot with
//!   no dial address: its messages are delivered (`Hello` first, as for anyone), ours to it queue until
//!   `add_peer` gives the address. At most [`TransportConfig::max_unknown`] such slots exist at a time (an
//!   unknown id over that is refused as `unknown_node` and counted as `unknown_node_limit`); one leaves the
//!   count when it is added or removed, never by itself, since forgetting a live peer's link state would
//!   break its numbering. So a flood of made-up ids costs a bounded table, and the node removes what its
//!   membership does not know. Without the flag such handshakes are refused as `unknown_node`, as before.
//! - The Hello does not carry the dialer's own address, and the wire is unchanged (protocol version 3): the
//!   membership view, not the handshake, is where addresses come from and when dialling starts (a node
//!   learns a joiner's address with its admission), and an address taken from a Hello — unauthenticated
//!   without a secret — would let anyone point our dialer at any `host:port`.
//!
//! A removed member comes back only as a new incarnation. A removed slot's link leaves the newest incarnation
//! it saw behind as the id's *floor*; a later slot of that id (re-added, or accepted as unknown) refuses
//! handshakes at or below it, either way round (`stale_incarnation`). This keeps `Link`'s rules sound
//! across a removal: both ends number the stream between one pair of incarnations, and our new slot starts
//! at zero, so resuming the old pair would disagree with the peer's link (and our `Bye` on removal already
//! told that incarnation we are done with it). Against a newer incarnation the new slot is *first contact*:
//! [`Inbound::Hello`] is emitted and what was queued since `add_peer` is kept, as it was meant for whoever
//! answers — a restart would discard every message not addressed to that incarnation, and the node may have
//! sent them before learning it.
//!
//! [`Transport::start_shared`] runs on a listener the caller keeps, so after
//! [`TransportHandle::shutdown`] the next incarnation of this process can start on the same bound socket.
//!
//! Refusals: a handshake that fails (garbage, oversized length, wrong version, cluster or default algorithm,
//! own node id, missing or bad MAC when a secret is configured, unknown node id, stale incarnation, timeout)
//! gets a `Refuse` frame when possible, is closed, logged with `tracing::warn!` and counted by reason in
//! [`TransportCounters::refused`]; the node stays healthy. Bad frames on established connections are counted
//! in `bad_frames`.
//!
//! Peer TLS ([`TransportConfig::tls`], see [`crate::net::peer_tls`]): the TLS handshake runs right after the
//! TCP connect or accept, and the handshake above runs inside it (the MACs keep working with or without TLS);
//! both are bounded by one `handshake_timeout`. What TLS refuses is counted by reason next to the others:
//! `tls_required` (the dialer sent nothing within half the timeout — a TLS dialer speaks at once, a plaintext
//! dmutex dialer waits for our challenge —, or no TLS record: a plaintext peer, garbage),
//! `tls_bad_certificate` (a chain that does not verify against the cluster CA — another CA, expired, none —
//! or the dialer refused ours), `tls_handshake` (any other TLS failure), `tls_wrong_identity` (a valid
//! certificate that is not valid for the host of the address of the node the Hello names; a node accepted
//! from an unknown id is checked when its address is given, and its connection closed then) and, on a node
//! without peer TLS, `tls_unexpected` (the dialer started TLS). Failures before the Hello can tell the dialer
//! nothing and emit no [`Inbound::Refused`]; their warnings are rate-limited (one per second and reason). The
//! dialer counts what it sees in [`TransportCounters::refused_by_peer`] under the same `tls_…` names.
//!
//! This module never panics on network input and never blocks the caller: [`TransportHandle::send`] only
//! encodes and enqueues.

mod accept;
mod dial;
mod slot;
mod table;

use crate::algo::{Algorithm, Incarnation, LamportTs, Millis, NodeId};
use crate::net::handshake::Handshake;
use crate::net::link::{LinkConfig, LinkEvent, LinkStats};
use crate::net::peer_tls::{self, PeerTls};
use crate::net::wire::{self, Envelope, RefuseReason, WireError};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use slot::{PeerSlot, PeerState, Queued, Stop, StopKind};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};
use table::{Added, PeerTable};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// How long [`TransportHandle::shutdown`] spends flushing before it stops the tasks.
pub(crate) const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Default of [`TransportConfig::max_unknown`].
pub const DEFAULT_MAX_UNKNOWN: usize = 64;

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
    /// The default algorithm (`DMUTEX_ALGORITHM`); peers with another one are refused.
    pub algorithm: Algorithm,
    /// The algorithms requests may name (`DMUTEX_ALGORITHMS`); a peer with another set is logged, not refused.
    pub algorithms: Vec<Algorithm>,
    /// The initial peers: every node's `host:port`, index = node id, this node's own entry included. Resolved
    /// at every connect. Peers added later ([`TransportHandle::add_peer`]) need not have dense ids.
    pub peers: Vec<String>,
    /// Accept handshakes from node ids that are not in the peer table (with every other check as for a known
    /// peer): the acceptor makes a slot without a dial address for them, so their messages are delivered;
    /// ours to them queue until [`TransportHandle::add_peer`] gives the address. Default `false`: refused as
    /// `unknown_node`.
    pub accept_unknown: bool,
    /// With `accept_unknown`: the most slots accepted from unknown ids and not added since; a handshake from
    /// one more unknown id is refused (`unknown_node` on the wire, counted as `unknown_node_limit`).
    pub max_unknown: usize,
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
    /// An outbound link that wrote nothing for this long sends a keepalive (answered by the acceptor); a
    /// connection that carried no frame for [`TransportConfig::dead_after`] is closed (and redialled).
    pub keepalive: Duration,
    /// Mutual TLS on every peer connection (see [`crate::net::peer_tls`]); `None`: plain TCP.
    pub tls: Option<Arc<PeerTls>>,
}

impl TransportConfig {
    /// A configuration with defaults: Lamport by default with every algorithm allowed, no secret, 1 MiB frames,
    /// backoff 50 ms … 5 s, 5 s handshake timeout, unknown node ids refused (at most
    /// [`DEFAULT_MAX_UNKNOWN`] of them once `accept_unknown` is set).
    pub fn new(me: NodeId, incarnation: Incarnation, cluster: impl Into<String>, peers: Vec<String>) -> Self {
        TransportConfig {
            me,
            incarnation,
            cluster: cluster.into(),
            algorithm: Algorithm::Lamport,
            algorithms: Algorithm::ALL.to_vec(),
            peers,
            accept_unknown: false,
            max_unknown: DEFAULT_MAX_UNKNOWN,
            secret: None,
            max_frame: wire::DEFAULT_MAX_FRAME,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(1),
            tls: None,
        }
    }

    /// How long a connection may carry no frame at all before it counts as dead: twice the handshake timeout,
    /// and at least three keepalive intervals.
    pub fn dead_after(&self) -> Duration {
        (self.handshake_timeout * 2).max(self.keepalive * 3)
    }
}

/// What the transport tells the node, in one ordered stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound<T> {
    /// A peer's handshake revealed a new incarnation (first contact or restart). Before any of its messages.
    Hello {
        /// The peer that (re)connected.
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
        /// The core's message and the trace context it carries.
        env: Envelope<T>,
    },
    /// Our outbound link to `peer` is up.
    Connected {
        /// Whose link came up.
        peer: NodeId,
    },
    /// Our outbound link to `peer` went down, or the peer said Bye.
    Disconnected {
        /// Whose link went down.
        peer: NodeId,
    },
    /// A handshake on our listener was refused.
    Refused {
        /// Where the connection came from.
        remote: SocketAddr,
        /// Which handshake check failed.
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
    /// The peer's id.
    pub node: NodeId,
    /// The address we dial; empty for a peer accepted from an unknown id and not added yet.
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
    /// Handshakes we refused, by [`RefuseReason::as_str`]; an unknown id over
    /// [`TransportConfig::max_unknown`] counts as `unknown_node_limit` (it is told `unknown_node`).
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
    /// Queued or unacked frames dropped because their peer was removed ([`TransportHandle::remove_peer`]).
    pub dropped_on_remove: u64,
    /// Failed outbound connects and handshakes.
    pub connect_failures: u64,
    /// Keepalive frames written (link-level: not algorithm messages).
    pub keepalives_sent: u64,
    /// Keepalive frames read.
    pub keepalives_received: u64,
}

/// A transport failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The node id is not in the peer table (never added, or removed).
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
        /// The resolver's error text.
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
    /// The TLS handshake failed, or the acceptor refused our certificate.
    #[error("{detail}")]
    Tls {
        /// The refusal reason (`tls_…`, as counted).
        reason: &'static str,
        /// What happened.
        detail: String,
    },
}

/// Starts transports (see [`Transport::start`]).
#[derive(Debug)]
pub struct Transport;

impl Transport {
    /// Starts accepting on `listener` (bound by the caller) and one link task per other peer. Returns the
    /// handle and the ordered stream of [`Inbound`] events. Must be called inside a tokio runtime.
    pub fn start<T>(
        cfg: TransportConfig,
        listener: TcpListener,
        clock: ClockFn,
    ) -> (TransportHandle<T>, mpsc::UnboundedReceiver<Inbound<T>>)
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        Self::start_shared(cfg, Arc::new(listener), clock)
    }

    /// [`Transport::start`] on a listener the caller keeps: after [`TransportHandle::shutdown`] the transport
    /// no longer accepts on it, and a new transport (a new incarnation of this process) can start on the same
    /// bound socket, so peers redial the same address and meet the new incarnation.
    pub fn start_shared<T>(
        mut cfg: TransportConfig,
        listener: Arc<TcpListener>,
        clock: ClockFn,
    ) -> (TransportHandle<T>, mpsc::UnboundedReceiver<Inbound<T>>)
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        cfg.max_frame = cfg.max_frame.clamp(64, wire::MAX_FRAME_CEILING);
        cfg.backoff_min = cfg.backoff_min.max(Duration::from_millis(1));
        cfg.backoff_max = cfg.backoff_max.max(cfg.backoff_min);
        cfg.keepalive = cfg.keepalive.max(Duration::from_millis(10));
        let link_cfg = LinkConfig {
            ack_timeout_ms: (cfg.handshake_timeout * 2).as_millis().min(u128::from(u64::MAX)) as u64,
            ack_delay_ms: ACK_DELAY_MS,
            ack_every: ACK_EVERY,
        };
        let mut table = PeerTable::new(cfg.me, cfg.max_unknown);
        let mut initial = Vec::new();
        for (i, addr) in cfg.peers.iter().enumerate().take(usize::from(u16::MAX) + 1) {
            let id = NodeId::new(i as u16);
            if let Added::New(slot) = table.add(id, |floor| PeerSlot::new(id, link_cfg, floor)) {
                *lock(&slot.addr) = Some(addr.clone());
                initial.push(slot);
            }
        }
        let (inbound, inbound_rx) = mpsc::unbounded_channel();
        let (shutdown_tx, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            secret: cfg.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            peers: RwLock::new(table),
            link_cfg,
            cfg,
            clock,
            inbound,
            counters: Counters::default(),
            retired: Mutex::new(LinkStats::default()),
            shutdown: shutdown_tx,
            tasks: Mutex::new(Vec::new()),
            origin: Instant::now(),
            tls_log: Mutex::new(BTreeMap::new()),
        });
        for slot in initial {
            dial::spawn_link(&inner, slot);
        }
        lock(&inner.tasks).push(tokio::spawn(accept::run_acceptor(inner.clone(), listener)));
        let n = inner.table().iter().count();
        info!(node = %inner.cfg.me, incarnation = inner.cfg.incarnation.get(), peers = n, "transport started");
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
    /// Enqueues `env` for `to` without blocking. Messages to one peer leave in the order they were enqueued;
    /// to a peer without a dial address yet they wait for [`TransportHandle::add_peer`].
    pub fn send(&self, to: NodeId, env: Envelope<T>) -> Result<(), TransportError> {
        let inner = &self.inner;
        if to == inner.cfg.me {
            return Err(TransportError::SelfSend);
        }
        let Some(slot) = inner.table().get(to).cloned() else {
            return Err(TransportError::UnknownPeer(to));
        };
        if *inner.shutdown.borrow() {
            return Err(TransportError::ShutDown);
        }
        let encoded = match wire::encode_envelope(&env) {
            Ok(bytes) => bytes,
            Err(e) => {
                inner.unencodable(to, &e);
                return Ok(());
            }
        };
        {
            let mut st = lock(&slot.state);
            if st.removed {
                return Err(TransportError::UnknownPeer(to));
            }
            if !wire::data_frame_fits(st.link.next_seq(), encoded.len(), inner.cfg.max_frame) {
                drop(st);
                let e = WireError::Oversized { len: encoded.len(), max: inner.cfg.max_frame };
                inner.unencodable(to, &e);
                return Ok(());
            }
            let now = inner.now();
            st.link.send(now, Queued { to: env.to_incarnation, bytes: Bytes::from(encoded) });
        }
        slot.wake.notify_one();
        Ok(())
    }

    /// Adds peer `id` at `addr` and starts its link task; for a peer in the table, sets the address its link
    /// dials from the next connect on (a peer accepted from an unknown id gets its first address and link
    /// task). Idempotent; adding this node, or adding after shutdown, does nothing. A removed id comes back
    /// as a fresh slot that only takes an incarnation newer than the newest one seen before the removal
    /// (see the module doc).
    pub fn add_peer(&self, id: NodeId, addr: String) {
        let inner = &self.inner;
        if *inner.shutdown.borrow() {
            debug!(peer = %id, "add_peer after shutdown ignored");
            return;
        }
        let link_cfg = inner.link_cfg;
        let added = inner.table_mut().add(id, |floor| PeerSlot::new(id, link_cfg, floor));
        match added {
            Added::Me => {}
            Added::New(slot) | Added::Addressed(slot) => {
                info!(peer = %id, %addr, "peer added");
                let _ = inner.vet_accepted(&slot, &addr);
                *lock(&slot.addr) = Some(addr);
                dial::spawn_link(inner, slot);
            }
            Added::Known(slot) => {
                let mut current = lock(&slot.addr);
                if current.as_deref() != Some(addr.as_str()) {
                    info!(peer = %id, %addr, "peer address changed");
                    let _ = inner.vet_accepted(&slot, &addr);
                    *current = Some(addr);
                }
            }
        }
    }

    /// With peer TLS: whether the certificate of `id`'s current inbound connection is valid for the host of
    /// `addr` (a joiner's messages name the address it is to be dialled at: a node with a cluster certificate
    /// for one host must not join as another). If not, that connection is closed and counted as
    /// `tls_wrong_identity`. Without peer TLS there is nothing to check: `Ok`.
    pub fn check_identity(&self, id: NodeId, addr: &str) -> Result<(), String> {
        let inner = &self.inner;
        if inner.cfg.tls.is_none() {
            return Ok(());
        }
        let Some(slot) = inner.table().get(id).cloned() else {
            return Err(format!("node {id} has no connection to this node"));
        };
        if lock(&slot.state).accepted_cert.is_none() {
            return Err(format!("node {id} has no inbound connection with a certificate"));
        }
        inner.vet_accepted(&slot, addr)
    }

    /// Removes peer `id`: drops what is queued for it, stops its link task and closes its connections with
    /// `Bye`, and forgets its slot; no event of it is emitted once this returns, and [`TransportHandle::send`]
    /// to it answers [`TransportError::UnknownPeer`]. The close runs in the background (never blocks). An id
    /// not in the table is ignored.
    pub fn remove_peer(&self, id: NodeId) {
        let inner = &self.inner;
        let removed = inner.table_mut().remove(id, |slot| lock(&slot.state).link.known().max(slot.floor));
        let Some(slot) = removed else { return };
        let dropped = {
            let mut st = lock(&slot.state);
            st.removed = true;
            while st.link.poll_event().is_some() {}
            let s = st.link.stats();
            let mut retired = lock(&inner.retired);
            retired.resends += s.resends;
            retired.duplicates_dropped += s.duplicates_dropped;
            retired.discarded_on_restart += s.discarded_on_restart;
            st.link.unacked_len()
        };
        inner.counters.dropped_on_remove.fetch_add(dropped as u64, Relaxed);
        slot.removed.send_replace(true);
        slot.wake.notify_one();
        info!(peer = %id, dropped, "peer removed");
    }

    /// The state of every other peer in the table (configured, added, or accepted from an unknown id), in id
    /// order.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.inner
            .table()
            .iter()
            .map(|(node, slot)| {
                let addr = lock(&slot.addr).clone().unwrap_or_default();
                let st = lock(&slot.state);
                PeerStatus {
                    node,
                    addr,
                    connected: st.link.connected(),
                    last_seen: st.last_seen,
                    incarnation: st.link.known(),
                    reconnects: st.link.reconnects(),
                }
            })
            .collect()
    }

    /// Link tasks still running: one per peer with a dial address, plus those of removed peers that are still
    /// closing their connection.
    pub fn link_tasks(&self) -> usize {
        self.inner.counters.link_tasks.load(Relaxed)
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> TransportCounters {
        let c = &self.inner.counters;
        let retired = *lock(&self.inner.retired);
        let mut out = TransportCounters {
            frames_sent: c.frames_sent.load(Relaxed),
            frames_received: c.frames_received.load(Relaxed),
            refused: lock(&c.refused).clone(),
            refused_by_peer: lock(&c.refused_by_peer).clone(),
            bad_frames: c.bad_frames.load(Relaxed),
            resends: retired.resends,
            duplicates_dropped: retired.duplicates_dropped,
            discarded_on_restart: retired.discarded_on_restart,
            dropped_unencodable: c.dropped_unencodable.load(Relaxed),
            dropped_on_remove: c.dropped_on_remove.load(Relaxed),
            connect_failures: c.connect_failures.load(Relaxed),
            keepalives_sent: c.keepalives_sent.load(Relaxed),
            keepalives_received: c.keepalives_received.load(Relaxed),
        };
        for (_, slot) in self.inner.table().iter() {
            let s = lock(&slot.state).link.stats();
            out.resends += s.resends;
            out.duplicates_dropped += s.duplicates_dropped;
            out.discarded_on_restart += s.discarded_on_restart;
        }
        out
    }

    /// Graceful stop: stops accepting, sends what is queued and `Bye` on every link and accepted connection,
    /// waits up to `SHUTDOWN_FLUSH` for acks, then stops every task. Idempotent. The listener stays bound
    /// if the caller holds it (see [`Transport::start_shared`]).
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

/// Longest an inbound stream waits before acknowledging what it delivered: acks only trim the sender's
/// resend queue, so one ack per 5 ms (or per [`ACK_EVERY`] frames) halves the frames under load.
const ACK_DELAY_MS: u64 = 5;
/// Acknowledge at once when this many frames are unacknowledged.
const ACK_EVERY: u64 = 256;
/// When a warning was last logged, and how many were left out since.
type LogGate = (Option<Instant>, u64);

/// At most one warning per this interval about TLS failures of one reason (see `Inner::log_gate`).
const TLS_LOG_EVERY: Duration = Duration::from_secs(1);
/// Most frames written between two looks at acks and commands.
const WRITE_BATCH: usize = 512;

fn read<X>(m: &RwLock<X>) -> RwLockReadGuard<'_, X> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<X>(m: &RwLock<X>) -> RwLockWriteGuard<'_, X> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

struct Inner<T> {
    cfg: TransportConfig,
    secret: Option<Vec<u8>>,
    clock: ClockFn,
    inbound: mpsc::UnboundedSender<Inbound<T>>,
    /// The peers by node id (never this node). Locked briefly, never across an await, and never while a
    /// slot's state is locked (the order is table, then slot).
    peers: RwLock<PeerTable<PeerSlot>>,
    /// The configuration of every new slot's link.
    link_cfg: LinkConfig,
    counters: Counters,
    /// The link counters of removed slots, so the totals stay cumulative.
    retired: Mutex<LinkStats>,
    shutdown: watch::Sender<bool>,
    /// The acceptor and every link task (finished ones are pruned when a new one starts).
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The origin of the links' clock.
    origin: Instant,
    /// When a warning about TLS failures was last logged, per side (accepting?) and reason, and how many were
    /// not logged since (see [`Inner::log_gate`]).
    tls_log: Mutex<BTreeMap<(bool, &'static str), LogGate>>,
}

/// Counters shared by the tasks (the links count resends, duplicates and discards themselves).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) frames_sent: AtomicU64,
    pub(super) frames_received: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    pub(super) refused_by_peer: Mutex<BTreeMap<&'static str, u64>>,
    bad_frames: AtomicU64,
    dropped_unencodable: AtomicU64,
    dropped_on_remove: AtomicU64,
    connect_failures: AtomicU64,
    /// Link tasks running (see [`TransportHandle::link_tasks`]).
    pub(super) link_tasks: AtomicUsize,
    pub(super) keepalives_sent: AtomicU64,
    pub(super) keepalives_received: AtomicU64,
}

impl Counters {
    pub(super) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
    pub(super) fn by_reason(m: &Mutex<BTreeMap<&'static str, u64>>, reason: RefuseReason) {
        Self::by_key(m, reason.as_str());
    }
    pub(super) fn by_key(m: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
        *lock(m).entry(key).or_default() += 1;
    }
}

impl<T> Inner<T> {
    /// The links' clock: milliseconds since the transport started.
    fn now(&self) -> Millis {
        Millis::new(self.origin.elapsed().as_millis().min(u128::from(u64::MAX)) as u64)
    }

    fn instant(&self, at: Millis) -> Instant {
        self.origin + Duration::from_millis(at.get())
    }

    fn emit(&self, ev: Inbound<T>) {
        // The receiver is gone only when the node is stopping; nothing to do then.
        let _ = self.inbound.send(ev);
    }

    /// Emits what the link has to say; called with the peer's lock held, so events stay in link order. A
    /// removed slot's events are dropped.
    fn emit_link_events(&self, peer: NodeId, st: &mut PeerState) {
        while let Some(ev) = st.link.poll_event() {
            if st.removed {
                continue;
            }
            self.emit(match ev {
                LinkEvent::Hello { incarnation, clock } => Inbound::Hello { peer, incarnation, clock },
                LinkEvent::Connected => Inbound::Connected { peer },
                LinkEvent::Disconnected => Inbound::Disconnected { peer },
            });
        }
    }

    fn table(&self) -> RwLockReadGuard<'_, PeerTable<PeerSlot>> {
        read(&self.peers)
    }

    fn table_mut(&self) -> RwLockWriteGuard<'_, PeerTable<PeerSlot>> {
        write(&self.peers)
    }

    fn bad_frame(&self, remote: SocketAddr, peer: Option<NodeId>, error: String) {
        Counters::bump(&self.counters.bad_frames);
        warn!(%remote, peer = ?peer, %error, "bad frame; closing connection");
        self.emit(Inbound::BadFrame { remote, peer, error });
    }

    fn unencodable(&self, peer: NodeId, e: &WireError) {
        Counters::bump(&self.counters.dropped_unencodable);
        error!(%peer, error = %e, "dropping a message that cannot be sent");
    }

    /// Whether to log a TLS failure now: at most one line per second per side and reason, so a peer or a
    /// scanner that keeps failing cannot flood the log. `Some(n)`: log, saying `n` were left out since.
    fn log_gate(&self, accepting: bool, reason: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut log = lock(&self.tls_log);
        let entry = log.entry((accepting, reason)).or_insert((None, 0));
        if entry.0.is_none_or(|t| now.duration_since(t) >= TLS_LOG_EVERY) {
            let suppressed = entry.1;
            *entry = (Some(now), 0);
            Some(suppressed)
        } else {
            entry.1 += 1;
            None
        }
    }

    /// An inbound connection refused before or during TLS (nothing can be told on the wire): counted by
    /// reason, logged (rate-limited), closed.
    fn refused_tls(&self, remote: SocketAddr, reason: &'static str, detail: &str) {
        Counters::by_key(&self.counters.refused, reason);
        if let Some(suppressed) = self.log_gate(true, reason) {
            warn!(%remote, reason, %detail, suppressed, "refused peer connection");
        }
    }

    /// With peer TLS, when `slot` gets address `addr`: the certificate its inbound connection presented must
    /// be valid for that host (a slot accepted from an unknown id had no address to check it against); if
    /// not, that connection is closed, counted and logged as `tls_wrong_identity`.
    fn vet_accepted(&self, slot: &PeerSlot, addr: &str) -> Result<(), String> {
        if self.cfg.tls.is_none() {
            return Ok(());
        }
        let mut st = lock(&slot.state);
        let Some(cert) = &st.accepted_cert else { return Ok(()) };
        let Err(why) = peer_tls::names_host(cert, addr) else { return Ok(()) };
        st.accepted_cert = None;
        // Dropping the sender stops the reader of that connection.
        st.replace = None;
        drop(st);
        Counters::by_key(&self.counters.refused, "tls_wrong_identity");
        warn!(peer = %slot.id, %addr, %why, "closing the peer's inbound connection: its certificate does not name its address");
        Err(why)
    }

    fn handshake(&self) -> Handshake<'_> {
        Handshake {
            cluster: &self.cfg.cluster,
            algorithm: self.cfg.algorithm,
            algorithms: &self.cfg.algorithms,
            me: self.cfg.me,
            incarnation: self.cfg.incarnation,
            secret: self.secret.as_deref(),
            counters: &self.counters,
        }
    }
}

/// Resolves once shutdown was requested (or the transport is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
