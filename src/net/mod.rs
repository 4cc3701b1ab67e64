//! Peer networking: the wire format, the per-peer links over TCP, and DNS discovery of the peer list.
//!
//! Nothing here knows an algorithm's rules: messages are opaque payloads addressed to a peer incarnation.

pub mod discovery;
mod handshake;
pub(crate) mod link;
pub mod transport;
pub mod wire;
