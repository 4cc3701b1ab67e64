//! Peer networking: the wire format, the per-peer links over TCP, and DNS discovery of the peer list (with the
//! reverse lookups that give compose replicas their ids).
//!
//! Nothing here knows an algorithm's rules: messages are opaque payloads addressed to a peer incarnation.

pub mod discovery;
mod handshake;
pub(crate) mod link;
pub mod peer_tls;
pub mod reverse_dns;
pub(crate) mod stream;
pub mod transport;
pub mod wire;
