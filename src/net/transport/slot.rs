//! One peer's slot in the transport's table (its link, dial address and removal signal), the stop signals
//! its tasks watch, and the encoded message its link queues.

use super::{Inner, lock, stopped};
use crate::algo::{Incarnation, NodeId};
use crate::net::link::{Addressed, Link, LinkConfig};
use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::{Notify, oneshot, watch};

/// One peer: its link, its dial address, and the signal that stops its tasks when it is removed. Tasks hold
/// their slot, so a removed slot's tasks never touch a newer slot of the same id.
pub(super) struct PeerSlot {
    pub(super) id: NodeId,
    pub(super) state: Mutex<PeerState>,
    /// Wakes the peer's link task: data was queued, the link gave its connection up, or the slot was removed.
    pub(super) wake: Notify,
    /// Cuts the link task's reconnect backoff short: the peer just completed a handshake on our listener, so
    /// it is up (a restarted peer must not wait out a backoff grown during its outage before our data, its
    /// heartbeats and acks among them, reaches it).
    pub(super) redial: Notify,
    /// Where the link task dials (read at every connect); `None`: accepted from an unknown id, not added yet.
    pub(super) addr: Mutex<Option<String>>,
    /// Set once, when the slot is removed: its link task and its accepted connection say Bye and end.
    pub(super) removed: watch::Sender<bool>,
    /// Handshakes at or below this incarnation are refused: the id was removed after seeing it.
    pub(super) floor: Option<Incarnation>,
}

impl PeerSlot {
    pub(super) fn new(id: NodeId, link_cfg: LinkConfig, floor: Option<Incarnation>) -> Self {
        PeerSlot {
            id,
            state: Mutex::new(PeerState {
                link: Link::new(id, link_cfg),
                last_seen: None,
                replace: None,
                accepted_cert: None,
                removed: false,
            }),
            wake: Notify::new(),
            redial: Notify::new(),
            addr: Mutex::new(None),
            removed: watch::channel(false).0,
            floor,
        }
    }

    /// Whether a handshake at `incarnation` is below this slot's floor (see [`PeerSlot::floor`]).
    pub(super) fn below_floor(&self, incarnation: Incarnation) -> bool {
        self.floor.is_some_and(|f| incarnation <= f)
    }

    pub(super) fn touch(&self) {
        lock(&self.state).last_seen = Some(SystemTime::now());
    }
}

pub(super) struct PeerState {
    pub(super) link: Link<Queued>,
    /// When a frame from the peer last arrived, on either connection.
    pub(super) last_seen: Option<SystemTime>,
    /// Dropping it tells the reader of the peer's current connection that a newer one replaced it.
    pub(super) replace: Option<oneshot::Sender<()>>,
    /// With peer TLS: the certificate of the peer's current inbound connection (checked against the slot's
    /// address when it gets one or changes it).
    pub(super) accepted_cert: Option<CertificateDer<'static>>,
    /// The slot was removed: nothing more is queued or emitted.
    pub(super) removed: bool,
}

/// Why a task was told to stop.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(super) enum StopKind {
    /// The transport shuts down: flush what is queued, then say Bye.
    Shutdown,
    /// The peer was removed: what was queued is dropped; say Bye.
    Removed,
}

/// A peer task's two stop signals: the transport's shutdown and its slot's removal.
pub(super) struct Stop {
    shutdown: watch::Receiver<bool>,
    removed: watch::Receiver<bool>,
}

impl Stop {
    pub(super) fn new<T>(inner: &Inner<T>, slot: &PeerSlot) -> Self {
        Stop { shutdown: inner.shutdown.subscribe(), removed: slot.removed.subscribe() }
    }

    /// The stop already requested, if any.
    pub(super) fn requested(&self) -> Option<StopKind> {
        if *self.shutdown.borrow() {
            Some(StopKind::Shutdown)
        } else if *self.removed.borrow() {
            Some(StopKind::Removed)
        } else {
            None
        }
    }

    /// Resolves once a stop is requested.
    pub(super) async fn wait(&mut self) -> StopKind {
        tokio::select! {
            biased;
            _ = stopped(&mut self.shutdown) => StopKind::Shutdown,
            _ = stopped(&mut self.removed) => StopKind::Removed,
        }
    }
}

/// A message waiting in a link: encoded once, with the peer incarnation its sender addressed.
pub(super) struct Queued {
    pub(super) to: Option<Incarnation>,
    pub(super) bytes: Bytes,
}

impl Addressed for Queued {
    fn to_incarnation(&self) -> Option<Incarnation> {
        self.to
    }
}
