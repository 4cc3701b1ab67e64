//! dmutex: distributed mutual exclusion on a real cluster.
//!
//! ```text
//!             cmd/ (the binary: one file per CLI command)     experiment/ (workload, `dmutex cluster`)
//!                   │                                                │
//!   HTTP ──► api/ (types, router, client) ──► node/ (the loop, cores table, timers, leases, observe)
//!                                               │  events ▲        │ actions
//!   peers ─► net/ (wire, link, transport) ──────┘         │        ▼
//!                                               algo/ (sans-I/O cores: Engine<Lamport | RA | ProbableOwner>,
//!                                                      and membership/: views, Paxos per epoch, leases)
//!                                                 ▲
//!                               sim/ (the deterministic simulator drives the same cores and links)
//!            obs/ (metrics, traces, flow records), config and tls (the crypto provider, PEM loading,
//!            credentials re-read on change) are used by node, net and api
//! ```
//!
//! Who may import whom (kept by the code; a new import that breaks it is a design change):
//! - `algo` imports nothing else of this crate, and nothing of tokio, axum or `std::net`; it never reads the
//!   OS clock.
//! - `sim` imports `algo` (and the sans-I/O link of `net`), nothing that does I/O.
//! - `net` imports `algo`'s id types; `node` imports `algo`, `net`, `obs`, `api`'s types and `config`;
//!   `api` talks to `node` through its command channel.
//! - `tls` imports nothing of this crate (its users count its reloads).
//! - `experiment` and the binary's `cmd` sit on top: nothing in the library imports them.

pub mod algo;
pub mod api;
pub mod config;
pub mod experiment;
pub mod net;
pub mod node;
pub mod obs;
pub mod sim;
pub mod tls;
