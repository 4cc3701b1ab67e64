//! The dialing side: one task per peer with a dial address that dials with backoff, runs our handshake,
//! writes what the link transmits, feeds it the acks, and closes gracefully on shutdown or removal.

use super::{
    Counters, Inner, PeerSlot, PeerState, SHUTDOWN_FLUSH, Stop, StopKind, TransportError, WRITE_BATCH, lock,
};
use crate::algo::{Incarnation, LamportTs, NodeId};
use crate::net::link::ConnId;
use crate::net::peer_tls;
use crate::net::stream::{self, PeerRead, PeerWrite};
use crate::net::wire::{Frame, FrameReader, FrameWriter, RefuseReason, WireError};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tracing::{debug, info, warn};

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

/// What the reader half of an outbound connection reports to its link task.
enum AckEvent {
    Ack(u64),
    Keepalive,
    Bye,
    Closed(String),
}

/// When an outbound connection last wrote and last read a frame: for keepalives and the dead-link check.
struct Idle {
    wrote: Instant,
    heard: Instant,
}

struct Established {
    writer: FrameWriter<PeerWrite>,
    reader: FrameReader<PeerRead>,
    incarnation: Incarnation,
    clock: LamportTs,
    received: u64,
    remote: SocketAddr,
}

/// Starts `slot`'s link task (its address is set) and keeps its handle for the shutdown.
pub(super) fn spawn_link<T>(inner: &Arc<Inner<T>>, slot: Arc<PeerSlot>)
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    inner.counters.link_tasks.fetch_add(1, Relaxed);
    let task = tokio::spawn(run_link(inner.clone(), slot));
    let mut tasks = lock(&inner.tasks);
    tasks.retain(|t| !t.is_finished());
    tasks.push(task);
}

/// Counts a link task out when it ends, however it ends.
struct Running<'a>(&'a Counters);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.link_tasks.fetch_sub(1, Relaxed);
    }
}

async fn run_link<T>(inner: Arc<Inner<T>>, slot: Arc<PeerSlot>)
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let _running = Running(&inner.counters);
    let peer = slot.id;
    let mut backoff = Backoff::new(inner.cfg.backoff_min, inner.cfg.backoff_max);
    let mut stop = Stop::new(&inner, &slot);
    loop {
        let dialed = tokio::select! {
            biased;
            _ = stop.wait() => return,
            r = dial::<T>(&inner, &slot) => r,
        };
        match dialed {
            Ok(est) => {
                backoff.reset();
                if connected(&inner, &slot, &mut stop, est).await {
                    return;
                }
            }
            Err(e) => {
                Counters::bump(&inner.counters.connect_failures);
                if let TransportError::Refused(reason) = &e {
                    Counters::by_reason(&inner.counters.refused_by_peer, *reason);
                    if *reason == RefuseReason::AlgorithmMismatch {
                        let ours = inner.cfg.algorithm;
                        warn!(%peer, reason = reason.as_str(), algorithm = %ours,
                            "peer refused our handshake: its default algorithm (DMUTEX_ALGORITHM) is not {ours}");
                    } else {
                        warn!(%peer, reason = reason.as_str(), "peer refused our handshake");
                    }
                } else if let TransportError::Tls { reason, detail } = &e {
                    Counters::by_key(&inner.counters.refused_by_peer, reason);
                    let addr = lock(&slot.addr).clone().unwrap_or_default();
                    if let Some(suppressed) = inner.log_gate(false, reason) {
                        warn!(%peer, %addr, reason, %detail, suppressed, "peer TLS handshake failed");
                    }
                } else if matches!(e, TransportError::BadWelcomeMac | TransportError::WrongPeer { .. }) {
                    warn!(%peer, error = %e, "abandoned handshake");
                } else {
                    debug!(%peer, error = %e, "connect failed");
                }
            }
        }
        // Even after a healthy connection, wait a little: a peer that accepts and drops at once must not
        // make us spin.
        let delay = backoff.next_delay();
        tokio::select! {
            biased;
            _ = stop.wait() => return,
            // The peer dialed us (it is up, perhaps just restarted): try at once, from the smallest delay.
            _ = slot.redial.notified() => backoff.reset(),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Resolves the slot's current address, connects and performs the dialer's side of the handshake.
async fn dial<T>(inner: &Inner<T>, slot: &PeerSlot) -> Result<Established, TransportError>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let peer = slot.id;
    let limit = inner.cfg.handshake_timeout;
    let addr = lock(&slot.addr).clone().ok_or(TransportError::UnknownPeer(peer))?;
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
    // TLS, then our handshake, both within one handshake timeout.
    let deadline = Instant::now() + limit;
    let (r, w) = match &inner.cfg.tls {
        None => stream::plain(stream),
        Some(tls) => {
            let name = peer_tls::server_name(&addr)
                .map_err(|detail| TransportError::Tls { reason: "tls_bad_address", detail })?;
            match tokio::time::timeout_at(deadline, tls.connector().connect(name, stream)).await {
                Ok(Ok(s)) => stream::tls(tokio_rustls::TlsStream::Client(s)),
                Ok(Err(e)) => {
                    let (reason, detail) = peer_tls::classify(&e, "acceptor");
                    return Err(TransportError::Tls { reason, detail });
                }
                Err(_) => return Err(TransportError::Timeout),
            }
        }
    };
    let mut reader = FrameReader::new(r, inner.cfg.max_frame);
    let mut writer = FrameWriter::new(w, inner.cfg.max_frame);
    let hs = inner.handshake();
    let shook =
        tokio::time::timeout_at(deadline, hs.dial::<T>(peer, (inner.clock)(), &mut reader, &mut writer));
    match shook.await {
        Ok(Ok(w)) => Ok(Established {
            writer,
            reader,
            incarnation: w.incarnation,
            clock: w.clock,
            received: w.received,
            remote,
        }),
        // With TLS 1.3 the acceptor checks our certificate after our side of the TLS handshake is done: its
        // refusal (an alert) arrives on the first read.
        Ok(Err(TransportError::Wire(WireError::Io(e)))) if peer_tls::rustls_error(&e).is_some() => {
            let (reason, detail) = peer_tls::classify(&e, "acceptor");
            Err(TransportError::Tls { reason, detail })
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(TransportError::Timeout),
    }
}

/// Reads acks and Bye from an outbound connection.
async fn read_acks<T>(mut reader: FrameReader<PeerRead>, events: mpsc::UnboundedSender<AckEvent>)
where
    T: DeserializeOwned,
{
    loop {
        let ev = match reader.read_frame::<T>().await {
            Ok(Some(Frame::Ack { seq })) => AckEvent::Ack(seq),
            Ok(Some(Frame::Keepalive)) => AckEvent::Keepalive,
            Ok(Some(Frame::Bye)) => AckEvent::Bye,
            Ok(Some(other)) => {
                AckEvent::Closed(format!("unexpected {} frame from an acceptor", other.kind()))
            }
            Ok(None) => AckEvent::Closed(String::new()),
            Err(e) => AckEvent::Closed(e.to_string()),
        };
        let last = !matches!(ev, AckEvent::Ack(_) | AckEvent::Keepalive);
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

/// Drives an established outbound connection. Returns `true` when the task is to end (shutdown or removal).
async fn connected<T>(inner: &Inner<T>, slot: &PeerSlot, stop: &mut Stop, est: Established) -> bool
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let Established { mut writer, reader, incarnation, clock, received, remote } = est;
    let peer = slot.id;
    if slot.below_floor(incarnation) {
        // A removed member comes back only as a new incarnation (see the module doc).
        let inc = incarnation.get();
        warn!(%peer, incarnation = inc, "peer answered with an incarnation from before its removal");
        Counters::by_reason(&inner.counters.refused_by_peer, RefuseReason::StaleIncarnation);
        return false;
    }
    let conn = {
        let mut st = lock(&slot.state);
        let r = st.link.on_welcome(inner.now(), incarnation, clock, received);
        st.last_seen = Some(SystemTime::now());
        inner.emit_link_events(peer, &mut st);
        match r {
            Ok(conn) => conn,
            Err(_) => {
                warn!(%peer, incarnation = incarnation.get(), "peer answered with a stale incarnation");
                Counters::by_reason(&inner.counters.refused_by_peer, RefuseReason::StaleIncarnation);
                return false;
            }
        }
    };
    debug!(%peer, %remote, incarnation = incarnation.get(), received, "outbound link up");
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let _reader = AbortOnDrop(tokio::spawn(read_acks::<T>(reader, ev_tx)));
    let mut idle = Idle { wrote: Instant::now(), heard: Instant::now() };
    let graceful = loop {
        match drive(inner, slot, conn, &mut writer, &mut events, stop, remote, &mut idle).await {
            Drive::Continue => {}
            Drive::Closed => break false,
            Drive::Stop(kind) => {
                graceful_close(inner, slot, conn, &mut writer, &mut events, kind).await;
                break true;
            }
        }
    };
    let mut st = lock(&slot.state);
    st.link.on_outbound_closed(conn);
    inner.emit_link_events(peer, &mut st);
    graceful
}

enum Drive {
    Continue,
    Closed,
    Stop(StopKind),
}

/// One round on an outbound connection: take in the acks that arrived, write what the link transmits, and
/// wait for the next thing to do (a keepalive is due after `keepalive` without a write).
#[allow(clippy::too_many_arguments)]
async fn drive<T>(
    inner: &Inner<T>,
    slot: &PeerSlot,
    conn: ConnId,
    writer: &mut FrameWriter<PeerWrite>,
    events: &mut mpsc::UnboundedReceiver<AckEvent>,
    stop: &mut Stop,
    remote: SocketAddr,
    idle: &mut Idle,
) -> Drive
where
    T: Serialize,
{
    if let Some(kind) = stop.requested() {
        // Checked here too: under a steady stream of sends the wait below may not come round for a while.
        return Drive::Stop(kind);
    }
    let peer = slot.id;
    let mut pending = None;
    let (batch, deadline) = {
        let mut st = lock(&slot.state);
        // Acks first: the ack-progress deadline must see every ack that arrived.
        loop {
            match events.try_recv() {
                Ok(AckEvent::Ack(seq)) => {
                    idle.heard = Instant::now();
                    if let Err(e) = on_ack(inner, &mut st, peer, conn, seq, remote) {
                        return e;
                    }
                }
                Ok(AckEvent::Keepalive) => {
                    idle.heard = Instant::now();
                    on_keepalive(inner, &mut st);
                }
                Ok(other) => {
                    pending = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        if !st.link.is_current(conn) {
            // The peer restarted or said Bye meanwhile: this connection leads to a process that is gone.
            return Drive::Closed;
        }
        let mut batch = Vec::new();
        while batch.len() < WRITE_BATCH {
            match st.link.poll_transmit(conn) {
                Some((seq, q)) => batch.push((seq, q.bytes.clone())),
                None => break,
            }
        }
        (batch, st.link.poll_timeout())
    };
    if let Some(ev) = pending {
        return closed_by_acceptor(slot, ev, &inner.counters);
    }
    if !batch.is_empty() {
        for (seq, bytes) in &batch {
            if writer.write_data(*seq, bytes).await.is_err() {
                return Drive::Closed;
            }
            Counters::bump(&inner.counters.frames_sent);
        }
        idle.wrote = Instant::now();
        return if writer.flush().await.is_err() { Drive::Closed } else { Drive::Continue };
    }
    let due = deadline.map(|t| inner.instant(t));
    let dead_at = idle.heard + inner.cfg.dead_after();
    let keepalive_at = (idle.wrote + inner.cfg.keepalive).min(dead_at);
    tokio::select! {
        biased;
        kind = stop.wait() => Drive::Stop(kind),
        ev = events.recv() => match ev {
            Some(AckEvent::Ack(seq)) => {
                idle.heard = Instant::now();
                let mut st = lock(&slot.state);
                on_ack(inner, &mut st, peer, conn, seq, remote).err().unwrap_or(Drive::Continue)
            }
            Some(AckEvent::Keepalive) => {
                idle.heard = Instant::now();
                on_keepalive(inner, &mut lock(&slot.state));
                Drive::Continue
            }
            Some(other) => closed_by_acceptor(slot, other, &inner.counters),
            None => Drive::Closed,
        },
        _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
            let mut st = lock(&slot.state);
            if st.link.on_timeout(inner.now()) {
                let timeout = inner.cfg.handshake_timeout * 2;
                warn!(%peer, unacked = st.link.unacked_len(), ?timeout, "no ack progress; reconnecting");
                inner.emit_link_events(peer, &mut st);
                Drive::Closed
            } else {
                Drive::Continue
            }
        }
        _ = tokio::time::sleep_until(keepalive_at) => {
            if Instant::now() >= dead_at {
                let silent = inner.cfg.dead_after();
                warn!(%peer, ?silent, "no frame from the peer on our link; reconnecting");
                return Drive::Closed;
            }
            let sent = async {
                writer.write_frame(&Frame::<T>::Keepalive).await?;
                writer.flush().await
            };
            if sent.await.is_err() {
                return Drive::Closed;
            }
            Counters::bump(&inner.counters.frames_sent);
            Counters::bump(&inner.counters.keepalives_sent);
            idle.wrote = Instant::now();
            Drive::Continue
        }
        _ = slot.wake.notified() => Drive::Continue,
    }
}

/// A keepalive arrived on our link: the peer is alive (counted apart from data; the link is not involved).
fn on_keepalive<T>(inner: &Inner<T>, st: &mut PeerState) {
    Counters::bump(&inner.counters.frames_received);
    Counters::bump(&inner.counters.keepalives_received);
    st.last_seen = Some(SystemTime::now());
}

fn on_ack<T>(
    inner: &Inner<T>,
    st: &mut PeerState,
    peer: NodeId,
    conn: ConnId,
    seq: u64,
    remote: SocketAddr,
) -> Result<(), Drive> {
    Counters::bump(&inner.counters.frames_received);
    st.last_seen = Some(SystemTime::now());
    st.link.on_ack(inner.now(), conn, seq).map_err(|e| {
        inner.bad_frame(remote, Some(peer), e.to_string());
        Drive::Closed
    })
}

fn closed_by_acceptor(slot: &PeerSlot, ev: AckEvent, counters: &Counters) -> Drive {
    let peer = slot.id;
    match ev {
        AckEvent::Bye => {
            Counters::bump(&counters.frames_received);
            info!(%peer, "peer said bye on our link");
            slot.touch();
        }
        AckEvent::Closed(why) if why.is_empty() => debug!(%peer, "outbound connection closed by peer"),
        AckEvent::Closed(why) => debug!(%peer, error = %why, "outbound connection failed"),
        AckEvent::Ack(_) | AckEvent::Keepalive => {}
    }
    Drive::Closed
}

/// Shutdown on an established link: send what is queued, wait briefly for acks, say Bye. On removal, only
/// Bye: what was queued is dropped.
async fn graceful_close<T>(
    inner: &Inner<T>,
    slot: &PeerSlot,
    conn: ConnId,
    writer: &mut FrameWriter<PeerWrite>,
    events: &mut mpsc::UnboundedReceiver<AckEvent>,
    kind: StopKind,
) where
    T: Serialize,
{
    let peer = slot.id;
    let flush = kind == StopKind::Shutdown;
    let deadline = Instant::now() + SHUTDOWN_FLUSH;
    let work = async {
        if flush {
            loop {
                let batch: Vec<(u64, Bytes)> = {
                    let mut st = lock(&slot.state);
                    std::iter::from_fn(|| st.link.poll_transmit(conn).map(|(s, q)| (s, q.bytes.clone())))
                        .take(WRITE_BATCH)
                        .collect()
                };
                if batch.is_empty() {
                    break;
                }
                for (seq, bytes) in &batch {
                    writer.write_data(*seq, bytes).await?;
                    Counters::bump(&inner.counters.frames_sent);
                }
            }
            writer.flush().await?;
            while lock(&slot.state).link.unacked_len() > 0 {
                match events.recv().await {
                    Some(AckEvent::Ack(seq)) => {
                        if lock(&slot.state).link.on_ack(inner.now(), conn, seq).is_err() {
                            break;
                        }
                    }
                    Some(AckEvent::Keepalive) => on_keepalive(inner, &mut lock(&slot.state)),
                    _ => break,
                }
            }
        }
        writer.write_frame(&Frame::<T>::Bye).await?;
        Counters::bump(&inner.counters.frames_sent);
        writer.close().await
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(())) => debug!(%peer, "link closed gracefully"),
        Ok(Err(e)) => debug!(%peer, error = %e, "link failed while closing"),
        Err(_) => debug!(%peer, unacked = lock(&slot.state).link.unacked_len(), "link close timed out"),
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
}
