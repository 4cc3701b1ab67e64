//! [`NodeMsg`], the body of every peer frame: one algorithm's message ([`PeerMsg`], and how each core's
//! messages are put into it and taken out again) or one of the membership layer ([`MemberMsg`]).
//!
//! Everything the node needs to know about a message (its type, lock, whether it asks or answers, what it
//! hands over) comes from [`ProtocolMessage`], which [`PeerMsg`] implements by asking the message inside:
//! nothing here or elsewhere in the node names an algorithm's message variants.

use super::forward::ClientMsg;
use crate::algo::lamport::{Lamport, LamportMsg};
use crate::algo::membership::{FormMsg, Msg};
use crate::algo::probable_owner::{PoMsg, ProbableOwner};
use crate::algo::ricart_agrawala::{RaMsg, RicartAgrawala};
use crate::algo::{Algorithm, LamportTs, NodeId, Protocol, ProtocolMessage};
use serde::{Deserialize, Serialize};

/// The body of every peer frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeMsg {
    /// A message of one algorithm's core (its envelope's epoch is the sender's engine view).
    Algo(PeerMsg),
    /// A message of the membership layer (never counted as an algorithm message).
    Member(MemberMsg),
    /// A client call served with another node's help (lease calls forwarded to the granting node, lock
    /// queries; never an algorithm message).
    Client(ClientMsg),
}

/// What the membership layer of two nodes says to each other.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberMsg {
    /// The membership core's message (heartbeats, Paxos, joins, leaves).
    Core(Msg),
    /// Forming view 1 ([`crate::algo::membership::Formation`]).
    Form(FormMsg),
    /// The engines' handshake inside a view: the sender's Lamport clock in each core (Lamport,
    /// Ricart–Agrawala, probable owner), sent to every member a view adds (and by a node whose engines are new
    /// to every member), tagged with that view's epoch and carried on the same FIFO link as engine messages.
    Clocks([LamportTs; 3]),
}

impl MemberMsg {
    /// The message type, for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            MemberMsg::Core(m) => m.kind(),
            MemberMsg::Form(m) => m.kind(),
            MemberMsg::Clocks(_) => "CLOCKS",
        }
    }
}

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

/// Evaluates `$body` with `$m` bound to the algorithm message inside `$msg`.
macro_rules! inner {
    ($msg:expr, |$m:ident| $body:expr) => {
        match $msg {
            PeerMsg::Lamport($m) => $body,
            PeerMsg::RicartAgrawala($m) => $body,
            PeerMsg::ProbableOwner($m) => $body,
        }
    };
}

impl PeerMsg {
    /// Which algorithm (and so which core) the message belongs to.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            PeerMsg::Lamport(_) => Algorithm::Lamport,
            PeerMsg::RicartAgrawala(_) => Algorithm::RicartAgrawala,
            PeerMsg::ProbableOwner(_) => Algorithm::ProbableOwner,
        }
    }
}

impl ProtocolMessage for PeerMsg {
    fn kind(&self) -> &'static str {
        inner!(self, |m| m.kind())
    }

    fn lock(&self) -> &str {
        inner!(self, |m| m.lock())
    }

    fn timestamp(&self) -> Option<LamportTs> {
        inner!(self, |m| m.timestamp())
    }

    fn is_request(&self) -> bool {
        inner!(self, |m| m.is_request())
    }

    fn is_answer(&self) -> bool {
        inner!(self, |m| m.is_answer())
    }

    fn is_redirect(&self) -> bool {
        inner!(self, |m| m.is_redirect())
    }

    fn handed_over(&self) -> Vec<NodeId> {
        inner!(self, |m| m.handed_over())
    }

    fn flow_detail(&self) -> Option<String> {
        inner!(self, |m| m.flow_detail())
    }
}

/// A protocol whose messages travel as one variant of [`PeerMsg`].
pub(crate) trait Carried: Protocol {
    /// Puts a message of this protocol into a [`PeerMsg`].
    fn wrap(msg: Self::Msg) -> PeerMsg;
    /// Takes this protocol's message out, or gives back one of another protocol.
    fn unwrap(msg: PeerMsg) -> Result<Self::Msg, PeerMsg>;
}

impl Carried for Lamport {
    fn wrap(msg: LamportMsg) -> PeerMsg {
        PeerMsg::Lamport(msg)
    }
    fn unwrap(msg: PeerMsg) -> Result<LamportMsg, PeerMsg> {
        match msg {
            PeerMsg::Lamport(m) => Ok(m),
            other => Err(other),
        }
    }
}

impl Carried for RicartAgrawala {
    fn wrap(msg: RaMsg) -> PeerMsg {
        PeerMsg::RicartAgrawala(msg)
    }
    fn unwrap(msg: PeerMsg) -> Result<RaMsg, PeerMsg> {
        match msg {
            PeerMsg::RicartAgrawala(m) => Ok(m),
            other => Err(other),
        }
    }
}

impl Carried for ProbableOwner {
    fn wrap(msg: PoMsg) -> PeerMsg {
        PeerMsg::ProbableOwner(msg)
    }
    fn unwrap(msg: PeerMsg) -> Result<PoMsg, PeerMsg> {
        match msg {
            PeerMsg::ProbableOwner(m) => Ok(m),
            other => Err(other),
        }
    }
}
