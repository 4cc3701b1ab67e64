//! The accepting side: the listener, the handshake's admission and link decision, and the reader of each
//! peer's data stream (delivery, duplicates, coalesced acks, Bye).

use super::table::Unadmitted;
use super::{Counters, Inbound, Inner, PeerSlot, SHUTDOWN_FLUSH, Stop, lock, stopped};
use crate::algo::{Incarnation, Millis, NodeId};
use crate::net::handshake::{AcceptFail, Hello};
use crate::net::link::{DataError, Delivery, Generation, Refusal};
use crate::net::peer_tls::{self, PeerTls};
use crate::net::stream::{self, PeerRead, PeerWrite};
use crate::net::wire::{Frame, FrameReader, FrameWriter, RefuseReason, WireError};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout};
use tracing::{debug, info, warn};

pub(super) async fn run_acceptor<T>(inner: Arc<Inner<T>>, listener: Arc<TcpListener>)
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

/// An accepted connection's place in its peer's link.
struct Accepted {
    slot: Arc<PeerSlot>,
    incarnation: Incarnation,
    generation: Generation,
    replaced: oneshot::Receiver<()>,
}

async fn serve_incoming<T>(inner: Arc<Inner<T>>, stream: TcpStream, remote: SocketAddr)
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let _ = stream.set_nodelay(true);
    // TLS, then the handshake, both within one handshake timeout.
    let deadline = Instant::now() + inner.cfg.handshake_timeout;
    let (r, w, cert) = match &inner.cfg.tls {
        None => {
            let (r, w) = stream::plain(stream);
            (r, w, None)
        }
        Some(tls) => match accept_tls(tls, stream, deadline, inner.cfg.handshake_timeout).await {
            Ok((s, cert)) => {
                let (r, w) = stream::tls(s);
                (r, w, Some(cert))
            }
            Err(TlsFail::Refuse(reason, detail)) => return inner.refused_tls(remote, reason, &detail),
            Err(TlsFail::Silent(detail)) => {
                debug!(%remote, %detail, "incoming connection closed before TLS");
                return;
            }
        },
    };
    let mut reader = FrameReader::new(r, inner.cfg.max_frame);
    let mut writer = FrameWriter::new(w, inner.cfg.max_frame);
    let hs = tokio::time::timeout_at(deadline, accept(&inner, &mut reader, &mut writer, cert.as_ref())).await;
    let accepted = match hs {
        Ok(Ok(a)) => a,
        Ok(Err(AcceptFail::Refuse(reason, detail))) => {
            let key = reason.as_str();
            return refuse(&inner, &mut reader, &mut writer, remote, (reason, key), &detail).await;
        }
        Ok(Err(AcceptFail::Counted(reason, key, detail))) => {
            return refuse(&inner, &mut reader, &mut writer, remote, (reason, key), &detail).await;
        }
        Ok(Err(AcceptFail::UnknownLimit(detail))) => {
            let why = (RefuseReason::UnknownNode, "unknown_node_limit");
            return refuse(&inner, &mut reader, &mut writer, remote, why, &detail).await;
        }
        Err(_) => {
            let why = (RefuseReason::Timeout, RefuseReason::Timeout.as_str());
            return refuse(&inner, &mut reader, &mut writer, remote, why, "handshake timed out").await;
        }
        Ok(Err(AcceptFail::Silent(detail))) => {
            debug!(%remote, %detail, "incoming connection closed during handshake");
            return;
        }
    };
    debug!(%remote, peer = %accepted.slot.id, incarnation = accepted.incarnation.get(), "inbound link up");
    serve_data(&inner, reader, writer, remote, accepted).await;
}

/// Why an inbound TLS handshake failed.
enum TlsFail {
    /// Count and log it under this reason.
    Refuse(&'static str, String),
    /// Closed before saying anything: nothing to count.
    Silent(String),
}

/// The first byte of a TLS handshake record (a ClientHello starts with it).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The acceptor's TLS handshake, verifying the dialer's chain against the cluster CA (a client certificate is
/// required); answers the stream and the dialer's end-entity certificate, whose name [`accept`] checks.
async fn accept_tls(
    tls: &PeerTls,
    stream: TcpStream,
    deadline: Instant,
    limit: Duration,
) -> Result<(tokio_rustls::TlsStream<TcpStream>, CertificateDer<'static>), TlsFail> {
    // A dialer without TLS sends nothing (our handshake has the acceptor speak first) or, if it is not a
    // dmutex node, something that is no TLS record: tell that apart from a failed TLS handshake. A TLS dialer
    // sends its ClientHello at once, so silence for half the handshake timeout is enough to tell; waiting the
    // whole timeout would race the plaintext dialer's own timeout, and a dialer that hangs up first goes
    // uncounted (seen as a flaky `tls_required` count in tests/peer_mtls.rs).
    let silence = limit / 2;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline.min(Instant::now() + silence), stream.peek(&mut first)).await {
        Err(_) => {
            let detail = format!(
                "no TLS handshake within {silence:?}: the dialer does not speak TLS (DMUTEX_PEER_TLS_* not set there?)"
            );
            return Err(TlsFail::Refuse("tls_required", detail));
        }
        Ok(Ok(0)) => return Err(TlsFail::Silent("closed before TLS".into())),
        Ok(Err(e)) => return Err(TlsFail::Silent(e.to_string())),
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE_RECORD => {
            let detail = format!(
                "the dialer's first byte 0x{:02x} starts no TLS handshake: a plaintext peer, or garbage",
                first[0]
            );
            return Err(TlsFail::Refuse("tls_required", detail));
        }
        Ok(Ok(_)) => {}
    }
    let s = match tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let (reason, detail) = peer_tls::classify(&e, "dialer");
            return Err(TlsFail::Refuse(reason, detail));
        }
        Err(_) => return Err(TlsFail::Refuse("tls_handshake", format!("TLS handshake took over {limit:?}"))),
    };
    let cert = s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned());
    match cert {
        Some(cert) => Ok((tokio_rustls::TlsStream::Server(s), cert)),
        None => Err(TlsFail::Refuse("tls_bad_certificate", "the dialer presented no certificate".into())),
    }
}

/// The acceptor's handshake: checks, then the table admits the id (its slot, or a new one for an unknown id),
/// then, with TLS, the dialer's certificate must name the host of that id's address (a slot without an address
/// yet is checked when it gets one: [`super::TransportHandle::add_peer`]), then the link decides about the
/// incarnation, then the Welcome.
async fn accept<T>(
    inner: &Inner<T>,
    reader: &mut FrameReader<PeerRead>,
    writer: &mut FrameWriter<PeerWrite>,
    cert: Option<&CertificateDer<'static>>,
) -> Result<Accepted, AcceptFail>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let hs = inner.handshake();
    let hello: Hello = hs.accept::<T>(reader, writer).await?;
    let node = hello.node;
    if *inner.shutdown.borrow() {
        return Err(AcceptFail::Refuse(RefuseReason::ShuttingDown, String::new()));
    }
    let stale = |node: NodeId| {
        let detail = format!("node {node} incarnation {}", hello.incarnation.get());
        AcceptFail::Refuse(RefuseReason::StaleIncarnation, detail)
    };
    let unknown = |node: NodeId| AcceptFail::Refuse(RefuseReason::UnknownNode, format!("node {node}"));
    let link_cfg = inner.link_cfg;
    let admitted = inner.table_mut().admit(node, hello.incarnation, inner.cfg.accept_unknown, |floor| {
        PeerSlot::new(node, link_cfg, floor)
    });
    let slot = match admitted {
        Ok(slot) => slot,
        Err(Unadmitted::Unknown) => return Err(unknown(node)),
        Err(Unadmitted::Stale) => return Err(stale(node)),
        Err(Unadmitted::Limit) => {
            let max = inner.cfg.max_unknown;
            return Err(AcceptFail::UnknownLimit(format!("node {node}: already {max} unknown peers")));
        }
    };
    if let Some(cert) = cert
        && let Some(addr) = lock(&slot.addr).clone()
        && let Err(why) = peer_tls::names_host(cert, &addr)
    {
        let detail = format!("claims to be node {node} (at {addr}): {why}");
        return Err(AcceptFail::Counted(RefuseReason::UnknownNode, "tls_wrong_identity", detail));
    }
    if slot.below_floor(hello.incarnation) {
        // A removed member comes back only as a new incarnation (see the module doc).
        return Err(stale(node));
    }
    let (replace, replaced) = oneshot::channel();
    let accepted = {
        let mut st = lock(&slot.state);
        if st.removed {
            return Err(unknown(node));
        }
        let r = st.link.on_hello(hello.incarnation, hello.clock);
        if r.is_ok() {
            st.last_seen = Some(SystemTime::now());
            // Dropping the previous sender stops the previous reader of this peer.
            st.replace = Some(replace);
            st.accepted_cert = cert.cloned();
        }
        inner.emit_link_events(node, &mut st);
        r
    };
    // A restart may have made the link give its outbound connection up; and the peer is up: redial now.
    slot.wake.notify_one();
    if accepted.is_ok() {
        slot.redial.notify_one();
    }
    let accepted = match accepted {
        Ok(a) => a,
        Err(Refusal::SaidBye) => {
            return Err(AcceptFail::Refuse(RefuseReason::ShuttingDown, format!("node {node} said bye")));
        }
        Err(Refusal::Stale) => return Err(stale(node)),
    };
    let silent = |e: WireError| AcceptFail::Silent(e.to_string());
    hs.welcome::<T>(writer, &hello, (inner.clock)(), accepted.received).await.map_err(silent)?;
    Ok(Accepted { slot, incarnation: hello.incarnation, generation: accepted.generation, replaced })
}

async fn refuse<T: Serialize>(
    inner: &Inner<T>,
    reader: &mut FrameReader<PeerRead>,
    writer: &mut FrameWriter<PeerWrite>,
    remote: SocketAddr,
    (reason, counted_as): (RefuseReason, &'static str),
    detail: &str,
) {
    Counters::by_key(&inner.counters.refused, counted_as);
    // `reason`: as counted; `told`: what the dialer is told (the wire has no TLS reasons).
    warn!(%remote, reason = counted_as, told = reason.as_str(), %detail, "refused peer connection");
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

/// Reads a peer's data stream into its link: delivers in order, drops duplicates, acks cumulatively.
async fn serve_data<T>(
    inner: &Inner<T>,
    mut reader: FrameReader<PeerRead>,
    mut writer: FrameWriter<PeerWrite>,
    remote: SocketAddr,
    acc: Accepted,
) where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    let Accepted { slot, incarnation, generation, mut replaced } = acc;
    let peer = slot.id;
    let mut stop = Stop::new(inner, &slot);
    let mut ack_due: Option<Millis> = None;
    let mut heard = Instant::now();
    loop {
        let due = ack_due.map(|t| inner.instant(t));
        let dead_at = heard + inner.cfg.dead_after();
        let frame = tokio::select! {
            biased;
            _ = &mut replaced => {
                debug!(%remote, %peer, "inbound connection replaced by a newer one");
                return;
            }
            // Shutdown or removal: either way this end closes cleanly.
            _ = stop.wait() => {
                let bye = timeout(SHUTDOWN_FLUSH, async {
                    writer.write_frame(&Frame::<T>::Bye).await?;
                    writer.close().await
                });
                if matches!(bye.await, Ok(Ok(()))) {
                    Counters::bump(&inner.counters.frames_sent);
                }
                return;
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                let ack = {
                    let mut st = lock(&slot.state);
                    let ack = st.link.poll_ack(inner.now(), generation, false);
                    ack_due = st.link.ack_deadline(generation);
                    ack
                };
                if let Some(seq) = ack
                    && !send_ack(inner, &mut writer, remote, peer, seq).await
                {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep_until(dead_at) => {
                let silent = inner.cfg.dead_after();
                warn!(%remote, %peer, ?silent, "no frame from the peer on its link; closing it");
                return;
            }
            r = reader.read_frame::<T>() => r,
        };
        heard = Instant::now();
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
        match frame {
            Frame::Data { seq, env } => {
                let ack = {
                    let mut st = lock(&slot.state);
                    let now = inner.now();
                    match st.link.on_data(now, generation, seq) {
                        Ok(Delivery::Deliver { incarnation }) => {
                            st.last_seen = Some(SystemTime::now());
                            if !st.removed {
                                inner.emit(Inbound::Message { from: peer, incarnation, env });
                            }
                        }
                        Ok(Delivery::Duplicate) => st.last_seen = Some(SystemTime::now()),
                        Err(DataError::Replaced) => return,
                        Err(e) => {
                            drop(st);
                            inner.bad_frame(remote, Some(peer), e.to_string());
                            return;
                        }
                    }
                    let ack = st.link.poll_ack(now, generation, reader.has_buffered_frame());
                    ack_due = st.link.ack_deadline(generation);
                    ack
                };
                if let Some(seq) = ack
                    && !send_ack(inner, &mut writer, remote, peer, seq).await
                {
                    return;
                }
            }
            Frame::Keepalive => {
                Counters::bump(&inner.counters.keepalives_received);
                lock(&slot.state).last_seen = Some(SystemTime::now());
                let answered = async {
                    writer.write_frame(&Frame::<T>::Keepalive).await?;
                    writer.flush().await
                };
                if let Err(e) = answered.await {
                    debug!(%remote, %peer, error = %e, "cannot answer a keepalive; closing");
                    return;
                }
                Counters::bump(&inner.counters.frames_sent);
                Counters::bump(&inner.counters.keepalives_sent);
            }
            Frame::Bye => {
                {
                    let mut st = lock(&slot.state);
                    if st.link.on_inbound_bye(generation) {
                        info!(%peer, incarnation = incarnation.get(), "peer said bye");
                        st.last_seen = Some(SystemTime::now());
                    }
                    inner.emit_link_events(peer, &mut st);
                }
                slot.wake.notify_one();
                return;
            }
            other => {
                let error = format!("unexpected {} frame from a dialer", other.kind());
                inner.bad_frame(remote, Some(peer), error);
                return;
            }
        }
    }
}

/// Writes an ack; `false` if the connection failed.
async fn send_ack<T: Serialize>(
    inner: &Inner<T>,
    writer: &mut FrameWriter<PeerWrite>,
    remote: SocketAddr,
    peer: NodeId,
    seq: u64,
) -> bool {
    let sent = async {
        writer.write_frame(&Frame::<T>::Ack { seq }).await?;
        writer.flush().await
    };
    match sent.await {
        Ok(()) => {
            Counters::bump(&inner.counters.frames_sent);
            true
        }
        Err(e) => {
            debug!(%remote, %peer, error = %e, "cannot ack; closing");
            false
        }
    }
}
