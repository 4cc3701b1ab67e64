//! The handshake on one peer connection: who is calling, checked.
//!
//! The acceptor speaks first (`Challenge`), the dialer answers `Hello`, the acceptor checks it (version,
//! cluster, not our own node id, MAC, default algorithm) and answers `Welcome` or `Refuse` (see
//! [`crate::net::wire`] for the frames and the transcripts the MACs cover). Whether the id is in the peer
//! table (or may join it) is the transport's check, made after these. What a handshake *means* for the link — a new incarnation, how far the
//! acceptor delivered — is decided by [`crate::net::link::Link`], between [`Handshake::accept`] and
//! [`Handshake::welcome`]. This module does the exchange and the checks; it never decides about incarnations
//! and never panics on what a peer sends.

use super::transport::{Counters, TransportError};
use crate::algo::{Algorithm, Incarnation, LamportTs, NodeId};
use crate::net::stream::{PeerRead, PeerWrite};
use crate::net::wire::{
    self, Frame, FrameReader, FrameWriter, Nonce, PROTOCOL_VERSION, RefuseReason, WireError,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// This node's side of every handshake.
pub(super) struct Handshake<'a> {
    /// The cluster name both sides must share.
    pub cluster: &'a str,
    /// The default algorithm both sides must share.
    pub algorithm: Algorithm,
    /// The algorithms this node accepts in requests (a difference is only logged).
    pub algorithms: &'a [Algorithm],
    /// This node.
    pub me: NodeId,
    /// This process's incarnation.
    pub incarnation: Incarnation,
    /// The cluster secret for the MACs.
    pub secret: Option<&'a [u8]>,
    /// Frame counters to bump.
    pub counters: &'a Counters,
}

/// A dialer's Hello that passed every check.
pub(super) struct Hello {
    /// The dialer.
    pub node: NodeId,
    /// Its incarnation.
    pub incarnation: Incarnation,
    /// Its Lamport clock.
    pub clock: LamportTs,
    /// Its nonce (the Welcome MAC covers it).
    nonce: Nonce,
    /// Our challenge (the Welcome MAC covers it too).
    challenge: Nonce,
}

/// The acceptor's answer to our Hello, verified.
pub(super) struct Welcome {
    /// The acceptor's incarnation.
    pub incarnation: Incarnation,
    /// Its Lamport clock.
    pub clock: LamportTs,
    /// How far it delivered our stream.
    pub received: u64,
}

/// A handshake on our listener that did not succeed.
pub(super) enum AcceptFail {
    /// Tell the dialer and count it.
    Refuse(RefuseReason, String),
    /// An unknown id over the bound on unknown slots: tell the dialer `unknown_node`, count it as
    /// `unknown_node_limit`.
    UnknownLimit(String),
    /// Tell the dialer this reason, count it under this key (e.g. `tls_wrong_identity`).
    Counted(RefuseReason, &'static str, String),
    /// Nothing to tell (closed before saying anything, socket error).
    Silent(String),
}

/// `lamport,probable-owner`, as `DMUTEX_ALGORITHMS` spells it.
fn names(algorithms: &[Algorithm]) -> String {
    algorithms.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
}

type Reader = FrameReader<PeerRead>;
type Writer = FrameWriter<PeerWrite>;

impl Handshake<'_> {
    /// Acceptor: sends the challenge, reads and checks the Hello.
    pub(super) async fn accept<T>(
        &self,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Hello, AcceptFail>
    where
        T: Serialize + DeserializeOwned,
    {
        let challenge = wire::fresh_nonce();
        let silent = |e: WireError| AcceptFail::Silent(e.to_string());
        writer.write_frame(&Frame::<T>::Challenge { nonce: challenge }).await.map_err(silent)?;
        writer.flush().await.map_err(silent)?;
        Counters::bump(&self.counters.frames_sent);
        let frame = match reader.read_frame::<T>().await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(AcceptFail::Silent("closed before hello".into())),
            Err(e) => {
                return Err(match e.refuse_reason() {
                    // The dialer started a TLS handshake on a connection this node speaks plainly.
                    Some(reason) if reader.buffered().starts_with(&[0x16, 0x03]) => AcceptFail::Counted(
                        reason,
                        "tls_unexpected",
                        "the dialer speaks TLS, this node has no peer TLS (DMUTEX_PEER_TLS_*)".into(),
                    ),
                    Some(reason) => AcceptFail::Refuse(reason, e.to_string()),
                    None => AcceptFail::Silent(e.to_string()),
                });
            }
        };
        Counters::bump(&self.counters.frames_received);
        self.check_hello(frame, challenge)
    }

    fn check_hello<T>(&self, frame: Frame<T>, challenge: Nonce) -> Result<Hello, AcceptFail> {
        let Frame::Hello { version, cluster, algorithm, algorithms, node, incarnation, clock, nonce, mac } =
            frame
        else {
            return Err(AcceptFail::Refuse(
                RefuseReason::Malformed,
                format!("expected hello, got {}", frame.kind()),
            ));
        };
        let refuse = |r: RefuseReason, d: String| Err(AcceptFail::Refuse(r, d));
        if version != PROTOCOL_VERSION {
            return refuse(
                RefuseReason::BadVersion,
                format!("version {version}, expected {PROTOCOL_VERSION}"),
            );
        }
        if cluster != self.cluster {
            return refuse(RefuseReason::WrongCluster, format!("cluster {cluster:?}"));
        }
        if node == self.me {
            return refuse(RefuseReason::SelfId, format!("node {node} is this node"));
        }
        let transcript = wire::hello_transcript(
            version,
            &cluster,
            algorithm,
            &algorithms,
            node,
            incarnation,
            clock,
            &challenge,
            &nonce,
        );
        if !wire::verify_mac(self.secret, &transcript, &mac) {
            return refuse(RefuseReason::BadSecret, format!("node {node}: bad or missing MAC"));
        }
        if algorithm != self.algorithm {
            return refuse(
                RefuseReason::AlgorithmMismatch,
                format!(
                    "node {node} has default algorithm {algorithm} (DMUTEX_ALGORITHM), this node {}: requests \
                     that name no algorithm would run different protocols",
                    self.algorithm
                ),
            );
        }
        if algorithms != self.algorithms {
            tracing::warn!(
                %node,
                theirs = %names(&algorithms),
                ours = %names(self.algorithms),
                "peer allows other algorithms (DMUTEX_ALGORITHMS); requests may be refused on some nodes only"
            );
        }
        Ok(Hello { node, incarnation, clock, nonce, challenge })
    }

    /// Acceptor: answers an accepted Hello, telling the dialer how far we delivered its stream.
    pub(super) async fn welcome<T: Serialize>(
        &self,
        writer: &mut Writer,
        hello: &Hello,
        clock: LamportTs,
        received: u64,
    ) -> Result<(), WireError> {
        let transcript = wire::welcome_transcript(
            PROTOCOL_VERSION,
            self.cluster,
            self.me,
            self.incarnation,
            clock,
            received,
            hello.node,
            &hello.nonce,
            &hello.challenge,
        );
        let welcome: Frame<T> = Frame::Welcome {
            node: self.me,
            incarnation: self.incarnation,
            clock,
            received,
            mac: wire::mac(self.secret, &transcript),
        };
        writer.write_frame(&welcome).await?;
        writer.flush().await?;
        Counters::bump(&self.counters.frames_sent);
        Ok(())
    }

    /// Dialer: answers the challenge with our Hello and checks the Welcome of `peer`.
    pub(super) async fn dial<T>(
        &self,
        peer: NodeId,
        clock: LamportTs,
        reader: &mut Reader,
        writer: &mut Writer,
    ) -> Result<Welcome, TransportError>
    where
        T: Serialize + DeserializeOwned,
    {
        let challenge: Nonce = match reader.read_frame::<T>().await?.ok_or(TransportError::Closed)? {
            Frame::Challenge { nonce } => nonce,
            Frame::Refuse { reason } => return Err(TransportError::Refused(reason)),
            other => return Err(TransportError::UnexpectedFrame(other.kind())),
        };
        Counters::bump(&self.counters.frames_received);
        let nonce = wire::fresh_nonce();
        let transcript = wire::hello_transcript(
            PROTOCOL_VERSION,
            self.cluster,
            self.algorithm,
            self.algorithms,
            self.me,
            self.incarnation,
            clock,
            &challenge,
            &nonce,
        );
        let hello: Frame<T> = Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster: self.cluster.to_owned(),
            algorithm: self.algorithm,
            algorithms: self.algorithms.to_vec(),
            node: self.me,
            incarnation: self.incarnation,
            clock,
            nonce,
            mac: wire::mac(self.secret, &transcript),
        };
        writer.write_frame(&hello).await?;
        writer.flush().await?;
        Counters::bump(&self.counters.frames_sent);
        let (node, incarnation, their_clock, received, mac) =
            match reader.read_frame::<T>().await?.ok_or(TransportError::Closed)? {
                Frame::Welcome { node, incarnation, clock, received, mac } => {
                    (node, incarnation, clock, received, mac)
                }
                Frame::Refuse { reason } => return Err(TransportError::Refused(reason)),
                other => return Err(TransportError::UnexpectedFrame(other.kind())),
            };
        Counters::bump(&self.counters.frames_received);
        let refuse_back = |reason: RefuseReason| Frame::<T>::Refuse { reason };
        if node != peer {
            let _ = writer.write_frame(&refuse_back(RefuseReason::UnknownNode)).await;
            let _ = writer.close().await;
            return Err(TransportError::WrongPeer { expected: peer, found: node });
        }
        let transcript = wire::welcome_transcript(
            PROTOCOL_VERSION,
            self.cluster,
            node,
            incarnation,
            their_clock,
            received,
            self.me,
            &nonce,
            &challenge,
        );
        if !wire::verify_mac(self.secret, &transcript, &mac) {
            let _ = writer.write_frame(&refuse_back(RefuseReason::BadSecret)).await;
            let _ = writer.close().await;
            Counters::by_reason(&self.counters.refused_by_peer, RefuseReason::BadSecret);
            return Err(TransportError::BadWelcomeMac);
        }
        Ok(Welcome { incarnation, clock: their_clock, received })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(algorithm: Algorithm, algorithms: &[Algorithm], challenge: &Nonce) -> Frame<u64> {
        let (node, incarnation, clock, nonce) =
            (NodeId::new(1), Incarnation::new(1), LamportTs::new(0), [3; 32]);
        let t = wire::hello_transcript(
            PROTOCOL_VERSION,
            "c",
            algorithm,
            algorithms,
            node,
            incarnation,
            clock,
            challenge,
            &nonce,
        );
        Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster: "c".into(),
            algorithm,
            algorithms: algorithms.to_vec(),
            node,
            incarnation,
            clock,
            nonce,
            mac: wire::mac(Some(b"s"), &t),
        }
    }

    #[test]
    fn a_hello_with_another_default_algorithm_is_refused_naming_both() {
        let counters = Counters::default();
        let all = Algorithm::ALL;
        let hs = Handshake {
            cluster: "c",
            algorithm: Algorithm::Lamport,
            algorithms: &all,
            me: NodeId::new(0),
            incarnation: Incarnation::new(1),
            secret: Some(b"s"),
            counters: &counters,
        };
        let challenge = [7; 32];
        let refused = hs.check_hello(hello(Algorithm::ProbableOwner, &all, &challenge), challenge);
        let Err(AcceptFail::Refuse(reason, detail)) = refused else { panic!("accepted") };
        assert_eq!(reason, RefuseReason::AlgorithmMismatch);
        assert_eq!(reason.as_str(), "algorithm_mismatch");
        assert!(detail.contains("probable-owner") && detail.contains("lamport"), "{detail}");
        // Same default, another allowed set: accepted (only logged).
        let fewer = [Algorithm::Lamport];
        assert!(hs.check_hello(hello(Algorithm::Lamport, &fewer, &challenge), challenge).is_ok());
        // The algorithm is covered by the MAC: a Hello whose algorithm was changed in flight is a bad MAC.
        let Frame::Hello { mac, nonce, .. } = hello(Algorithm::ProbableOwner, &all, &challenge) else {
            unreachable!()
        };
        let Frame::Hello { algorithm: a, algorithms, node, incarnation, clock, .. } =
            hello(Algorithm::Lamport, &all, &challenge)
        else {
            unreachable!()
        };
        let forged: Frame<u64> = Frame::Hello {
            version: PROTOCOL_VERSION,
            cluster: "c".into(),
            algorithm: a,
            algorithms,
            node,
            incarnation,
            clock,
            nonce,
            mac,
        };
        let Err(AcceptFail::Refuse(reason, _)) = hs.check_hello(forged, challenge) else {
            panic!("accepted")
        };
        assert_eq!(reason, RefuseReason::BadSecret);
    }
}
