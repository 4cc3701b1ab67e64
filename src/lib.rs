//! dmutex: distributed mutual exclusion on a real cluster.
//!
//! ```text
//!  peers (TCP) ─► transport ─► node loop ─► Engine<Lamport | RicartAgrawala | ProbableOwner> (algo/, sans-I/O)
//!  HTTP (axum) ─► http ──────►    │   ◄──── Actions: Send / Granted / Rejected / SetTimer
//!                                  └──────► transport (Send), HTTP waiters (Granted), timers
//! ```
//!
//! Who may import whom: `algo` imports nothing from this crate but itself, and nothing of tokio, axum or
//! `std::net`; `wire` knows `algo`'s message types; `transport` knows `wire`; `node` owns the cores and is the
//! only place that executes their actions; `http` talks to `node` through a command channel.

pub mod algo;
pub mod charts;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod discovery;
pub mod error;
pub mod flow;
pub mod http;
pub mod metrics;
pub mod node;
pub mod sim;
pub mod telemetry;
pub mod transport;
pub mod wire;
pub mod workload;
