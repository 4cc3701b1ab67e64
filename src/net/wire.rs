//! The peer wire protocol: frames, framing and the authenticated handshake.
//!
//! A frame on a TCP stream is a 4-byte big-endian body length followed by the body, a [`Frame`] encoded with
//! postcard 1 (serde; enum variants and integers as LEB128 varints, strings and sequences with a varint length
//! prefix, fixed-size arrays as their bytes). The length is checked against a maximum (default
//! [`DEFAULT_MAX_FRAME`], 1 MiB) *before* anything is allocated, and the body must decode to exactly its length.
//! Nothing here panics on any input bytes: every malformed input is a [`WireError`].
//!
//! Handshake (the dialer connects; the acceptor speaks first):
//!
//! ```text
//!  dialer                                   acceptor
//!    │ ◄──────────── Challenge{nonce_a} ────── │
//!    │ ── Hello{version, cluster, algorithm, algorithms, node, incarnation, clock, nonce_d, mac_d} ──► │
//!    │                                           checks, or Refuse{reason}      │
//!    │ ◄── Welcome{node, incarnation, clock, received, mac_a} ──────────────── │
//!    │ ── Data{seq, env} … ──►   ◄── Ack{seq} (cumulative) …                    │
//!    │ ── Keepalive ──►  ◄── Keepalive   (after 1 s without a frame written)     │
//!    │ ── Bye ──►  (graceful shutdown; either side may send it)                  │
//! ```
//!
//! With a cluster secret, `mac_d = HMAC-SHA256(secret, hello transcript)` and `mac_a = HMAC-SHA256(secret,
//! welcome transcript)`. Each transcript is domain-separated (a different label per direction), encodes every
//! field with a fixed width or a length prefix (no ambiguity), and includes the *other* side's fresh nonce, so a
//! recorded handshake cannot be replayed and a Hello MAC can never pass as a Welcome MAC. Both sides verify in
//! constant time ([`verify_mac`]). Without a secret the MACs are empty and not checked.
//!
//! Invariants: a frame never exceeds the configured maximum on the way out either (the encoder refuses);
//! a length field *inside* a body cannot make the decoder allocate more than the body: postcard takes a
//! string's bytes from what is left of the body (a longer claim is an error), and a sequence's pre-allocation
//! hint is dropped when it claims more elements than bytes remain, so a 1 MiB frame cannot claim a 4 GiB string.

use crate::algo::{Algorithm, Incarnation, LamportTs, NodeId};
use bytes::{Buf, BytesMut};
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::fmt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};

/// The protocol version spoken by this build. A Hello with another version is refused. Version 2: the postcard
/// codec (version 1 was bincode 2) and the algorithms in the Hello. Version 3: the sender's view epoch in
/// every [`Envelope`]. Version 4: try-locks (Ricart–Agrawala's `TRY_REQUEST` / `BUSY`, probable-owner's
/// `attempt` flag and `Busy` answer), and the node's body carries membership messages and client calls served
/// with another node's help beside the algorithms' messages (a node of version 3 could not decode them).
///
/// Nodes of different versions never connect, so a rolling update across a version change is not possible:
/// such an update is a restart of the whole cluster (the README says so).
pub const PROTOCOL_VERSION: u16 = 4;

/// Default maximum body length of one frame (1 MiB).
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// The largest maximum frame size a transport accepts; larger configured values are clamped to it.
pub const MAX_FRAME_CEILING: usize = 16 << 20;

/// Length of a handshake nonce.
pub const NONCE_LEN: usize = 32;

/// A fresh random handshake nonce.
pub type Nonce = [u8; NONCE_LEN];

const LEN_PREFIX: usize = 4;

/// A message from one node to another, as the transport carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// The sender's Lamport clock when it sent the message.
    pub ts: LamportTs,
    /// Trace context (W3C `traceparent`, `tracestate`, …); empty when tracing is off.
    pub trace: BTreeMap<String, String>,
    /// The receiver incarnation the sender's core addressed, if it knew one. The receiver drops a message
    /// addressed to an earlier life of itself: a core's message must never reach the incarnation that came
    /// after the one it was meant for (a stale REPLY would satisfy Lamport's rule 5 there).
    pub to_incarnation: Option<Incarnation>,
    /// The epoch of the view the sending core was in (0 in a cluster without views); a receiver in an older
    /// view holds the message back until it installs that one.
    pub epoch: u64,
    /// The payload (the node's enum of algorithm messages).
    pub body: T,
}

impl<T> Envelope<T> {
    /// An envelope without trace context.
    pub fn new(ts: LamportTs, body: T) -> Self {
        Envelope { ts, trace: BTreeMap::new(), to_incarnation: None, epoch: 0, body }
    }
}

/// Why a connection was refused during the handshake.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RefuseReason {
    /// The Hello's protocol version is not [`PROTOCOL_VERSION`].
    BadVersion,
    /// The Hello names another cluster.
    WrongCluster,
    /// The Hello names another default algorithm (`DMUTEX_ALGORITHM`).
    AlgorithmMismatch,
    /// The node id is not in the peer list (or the peer at this address is another node).
    UnknownNode,
    /// The dialer claims to be the acceptor itself.
    SelfId,
    /// A cluster secret is configured and the MAC is missing or wrong.
    BadSecret,
    /// Not a frame, not the expected frame, or a connection closed mid-frame.
    Malformed,
    /// A length prefix above the maximum frame size.
    Oversized,
    /// The Hello comes from an older incarnation than one already seen for that node.
    StaleIncarnation,
    /// The handshake did not complete within the handshake timeout.
    Timeout,
    /// The node is shutting down, or the dialer's incarnation already said Bye.
    ShuttingDown,
}

impl RefuseReason {
    /// Every reason, in a stable order.
    pub const ALL: [RefuseReason; 11] = [
        RefuseReason::BadVersion,
        RefuseReason::WrongCluster,
        RefuseReason::AlgorithmMismatch,
        RefuseReason::UnknownNode,
        RefuseReason::SelfId,
        RefuseReason::BadSecret,
        RefuseReason::Malformed,
        RefuseReason::Oversized,
        RefuseReason::StaleIncarnation,
        RefuseReason::Timeout,
        RefuseReason::ShuttingDown,
    ];

    /// A short snake_case name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::BadVersion => "bad_version",
            RefuseReason::WrongCluster => "wrong_cluster",
            RefuseReason::AlgorithmMismatch => "algorithm_mismatch",
            RefuseReason::UnknownNode => "unknown_node",
            RefuseReason::SelfId => "self_id",
            RefuseReason::BadSecret => "bad_secret",
            RefuseReason::Malformed => "malformed",
            RefuseReason::Oversized => "oversized",
            RefuseReason::StaleIncarnation => "stale_incarnation",
            RefuseReason::Timeout => "timeout",
            RefuseReason::ShuttingDown => "shutting_down",
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One frame on a peer connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame<T> {
    /// Acceptor → dialer, first: the nonce the dialer's Hello MAC must cover.
    Challenge {
        /// Fresh random bytes.
        nonce: Nonce,
    },
    /// Dialer → acceptor: who is calling.
    Hello {
        /// [`PROTOCOL_VERSION`] of the dialer.
        version: u16,
        /// The cluster name; must match.
        cluster: String,
        /// The dialer's default algorithm (`DMUTEX_ALGORITHM`); must match, or requests that name no
        /// algorithm would run different protocols on different nodes.
        algorithm: Algorithm,
        /// The algorithms the dialer accepts in requests (`DMUTEX_ALGORITHMS`); a difference is logged.
        algorithms: Vec<Algorithm>,
        /// The dialer's node id.
        node: NodeId,
        /// The dialer's incarnation.
        incarnation: Incarnation,
        /// The dialer's Lamport clock.
        clock: LamportTs,
        /// The dialer's fresh nonce, covered by the Welcome MAC.
        nonce: Nonce,
        /// HMAC over [`hello_transcript`]; empty without a secret.
        mac: Vec<u8>,
    },
    /// Acceptor → dialer: handshake accepted.
    Welcome {
        /// The acceptor's node id.
        node: NodeId,
        /// The acceptor's incarnation.
        incarnation: Incarnation,
        /// The acceptor's Lamport clock.
        clock: LamportTs,
        /// The highest data sequence number delivered from this dialer incarnation (0: none); the dialer
        /// resends everything after it.
        received: u64,
        /// HMAC over [`welcome_transcript`]; empty without a secret.
        mac: Vec<u8>,
    },
    /// The handshake failed; the connection closes.
    Refuse {
        /// Which check the Hello failed (version, cluster, algorithm, identity, MAC); logged on both ends.
        reason: RefuseReason,
    },
    /// Dialer → acceptor: one message.
    Data {
        /// 1, 2, 3, … per (dialer incarnation, acceptor incarnation).
        seq: u64,
        /// The core's message with the trace context and the incarnation it is addressed to.
        env: Envelope<T>,
    },
    /// Acceptor → dialer: every data frame up to `seq` was delivered (cumulative).
    Ack {
        /// Highest delivered sequence number.
        seq: u64,
    },
    /// Graceful shutdown: no more data will come from this incarnation.
    Bye,
    /// Link liveness, never delivered to a core: the dialer sends it when it wrote nothing for the keepalive
    /// interval, the acceptor answers with one, so each end hears from an idle peer and notices a dead one.
    Keepalive,
}

impl<T> Frame<T> {
    /// The frame type's name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Challenge { .. } => "challenge",
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Refuse { .. } => "refuse",
            Frame::Data { .. } => "data",
            Frame::Ack { .. } => "ack",
            Frame::Bye => "bye",
            Frame::Keepalive => "keepalive",
        }
    }
}

/// A framing or encoding failure.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A length prefix (or an outgoing frame) exceeds the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversized {
        /// The announced or encoded length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The body is not a valid frame.
    #[error("malformed frame: {0}")]
    Decode(String),
    /// The body decoded but did not use all its bytes.
    #[error("malformed frame: {0} trailing bytes")]
    Trailing(usize),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed mid-frame ({0} bytes buffered)")]
    Truncated(usize),
    /// A value could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

impl WireError {
    /// The refusal reason a handshake failing with this error gets, if the peer should be told.
    pub fn refuse_reason(&self) -> Option<RefuseReason> {
        match self {
            WireError::Io(_) | WireError::Encode(_) => None,
            WireError::Oversized { .. } => Some(RefuseReason::Oversized),
            WireError::Decode(_) | WireError::Trailing(_) | WireError::Truncated(_) => {
                Some(RefuseReason::Malformed)
            }
        }
    }
}

/// Encodes `frame` with its length prefix. Fails if the body is longer than `max_frame`.
pub fn encode_frame<T: Serialize>(frame: &Frame<T>, max_frame: usize) -> Result<Vec<u8>, WireError> {
    let out =
        postcard::to_extend(frame, vec![0u8; LEN_PREFIX]).map_err(|e| WireError::Encode(e.to_string()))?;
    let mut out = out;
    let body = out.len() - LEN_PREFIX;
    if body > max_frame.min(u32::MAX as usize) {
        return Err(WireError::Oversized { len: body, max: max_frame });
    }
    out[..LEN_PREFIX].copy_from_slice(&(body as u32).to_be_bytes());
    Ok(out)
}

/// postcard's index of the `Data` variant in [`Frame`] (variants are numbered in declaration order).
const DATA_VARIANT: u32 = 4;

/// Room for the length prefix and the longest `Data` header: the variant index and the sequence number,
/// both LEB128 varints (1 byte for index 4, at most 10 bytes for a `u64`).
const DATA_HEAD_ROOM: usize = LEN_PREFIX + 1 + 10;

/// Encodes an envelope on its own, to be framed as `Data` later with any sequence number: the link numbers
/// (and after a peer restart renumbers) a message without encoding it again.
pub fn encode_envelope<T: Serialize>(env: &Envelope<T>) -> Result<Vec<u8>, WireError> {
    postcard::to_stdvec(env).map_err(|e| WireError::Encode(e.to_string()))
}

/// The length prefix and header of the `Data` frame numbered `seq` around an envelope of `env_len` encoded
/// bytes, exactly as [`encode_frame`] would write them; fails if the frame would exceed `max_frame`.
fn data_head(seq: u64, env_len: usize, max_frame: usize) -> Result<([u8; DATA_HEAD_ROOM], usize), WireError> {
    let mut head = [0u8; DATA_HEAD_ROOM];
    // A struct variant is its index followed by its fields, so the header is the pair (index, seq).
    let used = postcard::to_slice(&(DATA_VARIANT, seq), &mut head[LEN_PREFIX..])
        .map_err(|e| WireError::Encode(e.to_string()))?
        .len();
    let body = used + env_len;
    if body > max_frame.min(u32::MAX as usize) {
        return Err(WireError::Oversized { len: body, max: max_frame });
    }
    head[..LEN_PREFIX].copy_from_slice(&(body as u32).to_be_bytes());
    Ok((head, LEN_PREFIX + used))
}

/// Whether the `Data` frame numbered `seq` around an envelope of `env_len` encoded bytes fits in `max_frame`.
/// A smaller `seq` never makes it longer, so a frame that fits still fits after renumbering.
pub fn data_frame_fits(seq: u64, env_len: usize, max_frame: usize) -> bool {
    data_head(seq, env_len, max_frame).is_ok()
}

/// Parses one frame from the start of `buf`: `Ok(None)` if more bytes are needed, otherwise the frame and the
/// number of bytes it used. The length is checked against `max_frame` as soon as the prefix is complete.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<(Frame<T>, usize)>, WireError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let mut len_bytes = [0u8; LEN_PREFIX];
    len_bytes.copy_from_slice(prefix);
    let len = u32::from_be_bytes(len_bytes) as usize;
    if len > max_frame {
        return Err(WireError::Oversized { len, max: max_frame });
    }
    let Some(body) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    let (frame, rest): (Frame<T>, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| WireError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(Some((frame, LEN_PREFIX + len)))
}

/// The read half of a framed connection (after mini-redis's `Connection`): buffers bytes until a whole frame
/// is there. `read_frame` is cancel-safe: a frame is either returned or still buffered.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max_frame: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a byte stream.
    pub fn new(inner: R, max_frame: usize) -> Self {
        FrameReader { inner, buf: BytesMut::with_capacity(8 * 1024), max_frame }
    }

    /// The next frame; `Ok(None)` on a clean end of stream (between frames), an error on a partial frame.
    pub async fn read_frame<T: DeserializeOwned>(&mut self) -> Result<Option<Frame<T>>, WireError> {
        loop {
            if let Some(frame) = self.parse()? {
                return Ok(Some(frame));
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(WireError::Truncated(self.buf.len()))
                };
            }
        }
    }

    /// The underlying stream (bytes already buffered here are not seen through it).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The bytes received and not yet taken as a frame.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Whether a complete frame (valid or not) is already buffered, so reading it will not wait.
    pub fn has_buffered_frame(&self) -> bool {
        match self.buf.get(..LEN_PREFIX) {
            None => false,
            Some(p) => {
                let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                len > self.max_frame || self.buf.len() >= LEN_PREFIX + len
            }
        }
    }

    fn parse<T: DeserializeOwned>(&mut self) -> Result<Option<Frame<T>>, WireError> {
        match decode_frame(&self.buf, self.max_frame)? {
            Some((frame, used)) => {
                self.buf.advance(used);
                Ok(Some(frame))
            }
            None => {
                // Reserve for the announced body (already checked against the maximum), so a large frame is
                // read without repeated small reallocations.
                if let Some(p) = self.buf.get(..LEN_PREFIX) {
                    let len = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
                    self.buf.reserve((LEN_PREFIX + len).saturating_sub(self.buf.len()));
                }
                Ok(None)
            }
        }
    }
}

/// The write half of a framed connection, buffered: call [`FrameWriter::flush`] to push frames out.
#[derive(Debug)]
pub struct FrameWriter<W: AsyncWrite> {
    inner: BufWriter<W>,
    max_frame: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Wraps a byte sink.
    pub fn new(inner: W, max_frame: usize) -> Self {
        FrameWriter { inner: BufWriter::with_capacity(64 * 1024, inner), max_frame }
    }

    /// Encodes and buffers one frame.
    pub async fn write_frame<T: Serialize>(&mut self, frame: &Frame<T>) -> Result<(), WireError> {
        let bytes = encode_frame(frame, self.max_frame)?;
        self.write_encoded(&bytes).await
    }

    /// Buffers one frame already encoded by [`encode_frame`].
    pub async fn write_encoded(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.inner.write_all(bytes).await?;
        Ok(())
    }

    /// Buffers the `Data` frame numbered `seq` around an envelope encoded by [`encode_envelope`].
    pub async fn write_data(&mut self, seq: u64, env: &[u8]) -> Result<(), WireError> {
        let (head, len) = data_head(seq, env.len(), self.max_frame)?;
        self.inner.write_all(&head[..len]).await?;
        self.inner.write_all(env).await?;
        Ok(())
    }

    /// Sends everything buffered.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.inner.flush().await?;
        Ok(())
    }

    /// Flushes and closes the write direction (FIN).
    pub async fn close(&mut self) -> Result<(), WireError> {
        self.inner.flush().await?;
        self.inner.shutdown().await?;
        Ok(())
    }
}

/// A fresh random nonce.
pub fn fresh_nonce() -> Nonce {
    rand::random()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The bytes the dialer's Hello MAC covers: label, version, cluster, default and allowed algorithms, node,
/// incarnation, clock, the acceptor's challenge nonce and the dialer's own nonce.
#[allow(clippy::too_many_arguments)]
pub fn hello_transcript(
    version: u16,
    cluster: &str,
    algorithm: Algorithm,
    algorithms: &[Algorithm],
    node: NodeId,
    incarnation: Incarnation,
    clock: LamportTs,
    challenge: &Nonce,
    nonce: &Nonce,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + cluster.len());
    put_str(&mut out, "dmutex/v1 hello (dialer -> acceptor)");
    out.extend_from_slice(&version.to_be_bytes());
    put_str(&mut out, cluster);
    put_str(&mut out, algorithm.as_str());
    out.extend_from_slice(&(algorithms.len() as u64).to_be_bytes());
    for a in algorithms {
        put_str(&mut out, a.as_str());
    }
    out.extend_from_slice(&node.get().to_be_bytes());
    out.extend_from_slice(&incarnation.get().to_be_bytes());
    out.extend_from_slice(&clock.get().to_be_bytes());
    out.extend_from_slice(challenge);
    out.extend_from_slice(nonce);
    out
}

/// The bytes the acceptor's Welcome MAC covers: label, version, cluster, the acceptor's node, incarnation,
/// clock and `received`, the dialer's Hello nonce, the acceptor's own challenge nonce, and the dialer's id.
#[allow(clippy::too_many_arguments)]
pub fn welcome_transcript(
    version: u16,
    cluster: &str,
    node: NodeId,
    incarnation: Incarnation,
    clock: LamportTs,
    received: u64,
    dialer: NodeId,
    hello_nonce: &Nonce,
    challenge: &Nonce,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + cluster.len());
    put_str(&mut out, "dmutex/v1 welcome (acceptor -> dialer)");
    out.extend_from_slice(&version.to_be_bytes());
    put_str(&mut out, cluster);
    out.extend_from_slice(&node.get().to_be_bytes());
    out.extend_from_slice(&incarnation.get().to_be_bytes());
    out.extend_from_slice(&clock.get().to_be_bytes());
    out.extend_from_slice(&received.to_be_bytes());
    out.extend_from_slice(&dialer.get().to_be_bytes());
    out.extend_from_slice(hello_nonce);
    out.extend_from_slice(challenge);
    out
}

/// `HMAC-SHA256(secret, transcript)`, or an empty MAC without a secret.
pub fn mac(secret: Option<&[u8]>, transcript: &[u8]) -> Vec<u8> {
    let Some(secret) = secret else {
        return Vec::new();
    };
    // HMAC accepts keys of any length, so this cannot fail.
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(transcript);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// Whether `tag` is the MAC of `transcript` (constant time). Without a secret every tag passes.
pub fn verify_mac(secret: Option<&[u8]>, transcript: &[u8], tag: &[u8]) -> bool {
    let Some(secret) = secret else {
        return true;
    };
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(transcript);
            m.verify_slice(tag).is_ok()
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<Frame<String>> {
        let mut trace = BTreeMap::new();
        trace.insert("traceparent".to_string(), "00-abc-def-01".to_string());
        vec![
            Frame::Challenge { nonce: [7; 32] },
            Frame::Hello {
                version: PROTOCOL_VERSION,
                cluster: "c".into(),
                algorithm: Algorithm::ProbableOwner,
                algorithms: Algorithm::ALL.to_vec(),
                node: NodeId::new(2),
                incarnation: Incarnation::new(9),
                clock: LamportTs::new(11),
                nonce: [1; 32],
                mac: vec![1, 2, 3],
            },
            Frame::Welcome {
                node: NodeId::new(1),
                incarnation: Incarnation::new(3),
                clock: LamportTs::new(4),
                received: 77,
                mac: vec![],
            },
            Frame::Refuse { reason: RefuseReason::BadSecret },
            Frame::Data {
                seq: 5,
                env: Envelope {
                    ts: LamportTs::new(3),
                    trace,
                    to_incarnation: Some(Incarnation::new(4)),
                    epoch: 9,
                    body: "hi".into(),
                },
            },
            Frame::Ack { seq: u64::MAX },
            Frame::Bye,
            Frame::Keepalive,
        ]
    }

    #[test]
    fn frames_round_trip_and_split_anywhere() {
        let mut stream = Vec::new();
        for f in sample() {
            stream.extend(encode_frame(&f, DEFAULT_MAX_FRAME).unwrap());
        }
        // Every prefix shorter than the first frame needs more bytes; the whole stream decodes in order.
        let first = encode_frame(&sample()[0], DEFAULT_MAX_FRAME).unwrap().len();
        for cut in 0..first {
            assert!(decode_frame::<String>(&stream[..cut], DEFAULT_MAX_FRAME).unwrap().is_none());
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((f, used)) = decode_frame::<String>(&stream[at..], DEFAULT_MAX_FRAME).unwrap() {
            got.push(f);
            at += used;
        }
        assert_eq!(got, sample());
        assert_eq!(at, stream.len());
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let err = decode_frame::<String>(&[0, 0x10, 0, 1], DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, WireError::Oversized { len, .. } if len == (1 << 20) + 1));
        assert_eq!(err.refuse_reason(), Some(RefuseReason::Oversized));
        let big = Frame::<String>::Data { seq: 1, env: Envelope::new(LamportTs::new(0), "x".repeat(200)) };
        assert!(matches!(encode_frame(&big, 100), Err(WireError::Oversized { .. })));
    }

    #[test]
    fn a_body_claiming_a_huge_string_is_an_error_not_an_allocation() {
        // Hello variant (index 1), version 2, then a cluster-name length of 2^62 (a 9-byte LEB128 varint).
        let mut body = vec![1u8, 2];
        body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40]);
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend(body);
        let err = decode_frame::<String>(&buf, DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(err.refuse_reason(), Some(RefuseReason::Malformed));
    }

    /// The bytes `FrameWriter::write_data` puts on the wire for one data frame.
    async fn written_data_frame(seq: u64, envelope: &[u8]) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new(), DEFAULT_MAX_FRAME);
        w.write_data(seq, envelope).await.unwrap();
        w.flush().await.unwrap();
        w.inner.into_inner()
    }

    #[tokio::test]
    async fn a_data_frame_built_from_an_encoded_envelope_is_the_derived_encoding() {
        let Frame::Data { env, .. } = sample().swap_remove(4) else { panic!("sample 4 is a data frame") };
        let bytes = encode_envelope(&env).unwrap();
        // Every varint width of the sequence number.
        for seq in [0, 1, 250, 251, 65_535, 65_536, u64::from(u32::MAX) + 1, u64::MAX] {
            let framed = written_data_frame(seq, &bytes).await;
            let derived = encode_frame(&Frame::Data { seq, env: env.clone() }, DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(framed, derived, "seq {seq}");
            assert!(data_frame_fits(seq, bytes.len(), derived.len() - LEN_PREFIX));
            assert!(!data_frame_fits(seq, bytes.len(), derived.len() - LEN_PREFIX - 1));
        }
    }

    #[test]
    fn a_body_claiming_a_huge_sequence_is_an_error_not_an_allocation() {
        // A Data frame (index 4), seq 1, ts 0, an empty trace map, no incarnation, then a Vec<u64> body that
        // claims 2^40 elements in a few bytes.
        let mut body = vec![4u8, 1, 0, 0, 0];
        body.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
        body.extend_from_slice(&[1, 2, 3]);
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend(body);
        let err = decode_frame::<Vec<u64>>(&buf, DEFAULT_MAX_FRAME).unwrap_err();
        assert_eq!(err.refuse_reason(), Some(RefuseReason::Malformed), "{err}");
        assert!(err.to_string().starts_with("malformed frame: "), "{err}");
    }

    #[tokio::test]
    async fn a_data_header_matches_the_derived_encoding_at_every_leb128_width() {
        let env = Envelope::new(LamportTs::new(1), "x".to_string());
        let bytes = encode_envelope(&env).unwrap();
        let mut widths = Vec::new();
        for seq in [0, 127, 128, 16_383, 16_384, (1 << 56) - 1, 1 << 56, (1 << 63) - 1, 1 << 63, u64::MAX] {
            let framed = written_data_frame(seq, &bytes).await;
            let derived = encode_frame(&Frame::Data { seq, env: env.clone() }, DEFAULT_MAX_FRAME).unwrap();
            assert_eq!(framed, derived, "seq {seq}");
            widths.push(derived.len() - LEN_PREFIX - 1 - bytes.len());
        }
        assert_eq!(widths, vec![1, 1, 2, 2, 3, 8, 9, 9, 10, 10]);
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut f = encode_frame(&Frame::<String>::Bye, DEFAULT_MAX_FRAME).unwrap();
        f[3] += 1;
        f.push(0);
        assert!(matches!(decode_frame::<String>(&f, DEFAULT_MAX_FRAME), Err(WireError::Trailing(1))));
    }

    #[test]
    fn macs_bind_the_transcript_and_the_direction() {
        let s = Some(&b"secret"[..]);
        let all = &Algorithm::ALL[..];
        // The Hello transcript of node 1, incarnation 2, clock 3, with the given default and challenge nonce.
        let hello = |default: Algorithm, challenge: [u8; 32]| {
            hello_transcript(
                1,
                "c",
                default,
                all,
                NodeId::new(1),
                Incarnation::new(2),
                LamportTs::new(3),
                &challenge,
                &[2; 32],
            )
        };
        let t = hello(Algorithm::Lamport, [1; 32]);
        let tag = mac(s, &t);
        assert_eq!(tag.len(), 32);
        assert!(verify_mac(s, &t, &tag));
        assert!(!verify_mac(Some(&b"other"[..]), &t, &tag));
        assert!(!verify_mac(s, &t, &[]));
        let t2 = hello(Algorithm::Lamport, [9; 32]);
        assert!(!verify_mac(s, &t2, &tag), "another challenge nonce must not verify (replay)");
        let t3 = hello(Algorithm::ProbableOwner, [1; 32]);
        assert!(!verify_mac(s, &t3, &tag), "the MAC covers the default algorithm");
        let w = welcome_transcript(
            1,
            "c",
            NodeId::new(1),
            Incarnation::new(2),
            LamportTs::new(3),
            0,
            NodeId::new(0),
            &[2; 32],
            &[1; 32],
        );
        assert_ne!(mac(s, &w), tag);
        assert!(mac(None, &t).is_empty());
        assert!(verify_mac(None, &t, &[]));
    }

    #[test]
    fn refuse_reasons_have_distinct_labels() {
        let labels: std::collections::BTreeSet<_> = RefuseReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), RefuseReason::ALL.len());
    }

    #[tokio::test]
    async fn reader_returns_none_on_clean_eof_and_an_error_on_a_half_frame() {
        let mut bytes = encode_frame(&Frame::<String>::Ack { seq: 3 }, DEFAULT_MAX_FRAME).unwrap();
        let mut r = FrameReader::new(&bytes[..], DEFAULT_MAX_FRAME);
        assert_eq!(r.read_frame::<String>().await.unwrap(), Some(Frame::Ack { seq: 3 }));
        assert_eq!(r.read_frame::<String>().await.unwrap(), None);
        bytes.pop();
        let mut r = FrameReader::new(&bytes[..], DEFAULT_MAX_FRAME);
        assert!(matches!(r.read_frame::<String>().await, Err(WireError::Truncated(_))));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame::<String>(&bytes, 256);
            let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
            framed.extend(&bytes);
            let _ = decode_frame::<Vec<u64>>(&framed, 1024);
        }
    }
}
