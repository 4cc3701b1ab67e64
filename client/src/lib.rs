//! A client library for dmutex, the distributed mutual-exclusion service: lock guards
//! that keep their lease alive, a lease-lost signal, try-lock, and failover across the cluster's endpoints —
//! without the server's dependencies. It also holds the API's wire types, which the server uses too (one
//! definition each).
//!
//! ```no_run
//! use dmutex_client::{Client, Error};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Error> {
//! let client = Client::new(["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"])?;
//! let guard = client.lock("nightly-backup").ttl(Duration::from_secs(10)).timeout(Duration::from_secs(30)).await?;
//! let token = guard.fencing_token(); // hand it to whatever the lock protects
//! tokio::select! {
//!     _ = backup(token) => guard.release().await?,
//!     loss = guard.lost() => eprintln!("lease lost, stopping: {loss}"),
//! }
//!
//! match client.try_lock("report").await {
//!     Ok(guard) => guard.release().await?,
//!     Err(Error::Locked { holder }) => eprintln!("report is busy (node {holder:?})"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! # async fn backup(_token: u64) {}
//! ```
//!
//! # Leases and failover
//!
//! A grant comes with a lease; [`LockGuard`] renews it every third of its TTL in a background task and
//! releases it on [`LockGuard::release`] or, best effort, on drop. Keepalive and release work through any node,
//! so the guard uses whichever endpoint answers. [`LockGuard::lost`] resolves when a keepalive hears that the
//! lease is gone, or when none has succeeded for a whole TTL ([`LeaseLoss`] says which).
//!
//! Every call starts at the endpoint that answered last and moves on to the next one on a connection error or
//! a 503: a node answers 503 only when the request holds nothing and waits nowhere, so trying elsewhere is
//! safe. A 409 or 400 is the cluster's answer and is never retried on another endpoint; neither is a 401 or
//! 403 (the nodes of a cluster share their tokens file, so another node would refuse the same token).
//!
//! # HTTPS and tokens
//!
//! [`Client::builder`] sets a bearer token (sent as `Authorization: Bearer …` with every call; lock calls
//! need a token with the `lock` scope) and the CA bundle `https://` endpoints must chain to (it replaces the
//! built-in web roots, like `curl --cacert`):
//!
//! ```no_run
//! # fn f() -> Result<(), dmutex_client::Error> {
//! let client = dmutex_client::Client::builder(["https://10.0.0.1:8443", "https://10.0.0.2:8443"])
//!     .with_token(std::env::var("DMUTEX_TOKEN").unwrap_or_default())
//!     .with_ca_file("/etc/dmutex/ca.crt")
//!     .build()?;
//! # Ok(()) }
//! ```
//!
//! # Statuses and codes
//!
//! Error answers are `{"error": {"code", "message", ...}}`; the code is the contract, and each one this client
//! knows is its own [`Error`] variant:
//!
//! | status | code | meaning | [`Error`] |
//! |---|---|---|---|
//! | 200 | — | granted: `{"name","lease","fencing_token","algorithm","node_id","waited_ms","ttl_ms"}` | — ([`Grant`]) |
//! | 409 | `timeout` | waited `timeout_ms` and was not granted | [`Error::Timeout`] |
//! | 409 | `locked` | try-lock failed; `"holder"`: the holding node, or null | [`Error::Locked`] |
//! | 409 | `lease_not_found` | unknown, expired or released lease, or it does not hold this lock | [`Error::LeaseNotFound`] |
//! | 409 | `lease_lost` | the lease ended without its client releasing it: the granting node lost its member lease, was excluded, restarted or is gone (the message says which) | [`Error::LeaseLost`] |
//! | 409 | `lease_in_use` | the lease given to acquire holds another lock | [`Error::LeaseInUse`] |
//! | 503 | `unavailable`, `shutting_down` | this node cannot serve now (minority, not joined, shutting down); the client tries the next endpoint | [`Error::Unavailable`] once every endpoint failed |
//! | 400 | `bad_request` | malformed request, unknown field, algorithm not served | [`Error::BadRequest`] |
//! | 401 | `unauthorized` | no bearer token, or one the node does not know (`WWW-Authenticate: Bearer`) | [`Error::Unauthorized`] |
//! | 403 | `forbidden` | the token lacks the scope the call needs (the message names it) | [`Error::Forbidden`] |
//! | 404, 405, 413, 500 | `not_found`, `method_not_allowed`, `payload_too_large`, `internal` | | [`Error::Server`] |
//!
//! No status used for a lock outcome is one that common HTTP clients retry by themselves (408, 429, other 5xx),
//! so a lock request is never silently sent twice.
//!
//! # Features
//!
//! - `opentelemetry`: calls made while an OpenTelemetry span is current carry its W3C `traceparent`, so the
//!   node's spans join the caller's trace (only the OpenTelemetry API crate is pulled in, not an SDK). That is
//!   the acquire and the release awaited inside the span; a guard's keepalives run in its own background task,
//!   outside the caller's span, and carry none.
//! - `openapi`: the wire types derive `utoipa::ToSchema` (the server generates its OpenAPI document, served at
//!   `GET /openapi.json`, from them).

mod client;
mod error;
mod lock;
mod query;
mod trace;
mod types;

pub use client::{Client, ClientBuilder};
pub use error::Error;
pub use lock::{LeaseLoss, LockBuilder, LockGuard};
pub use query::{AlgoLockState, Holder, LockList, LockState, LockSummary, Waiting};
pub use types::{
    AcquireBody, Algorithm, ErrorBody, ErrorDetail, Grant, KeepaliveBody, KeepaliveResponse, LeaseId,
    ReleaseBody, ReleaseResponse, Timeout,
};

#[cfg(test)]
mod tests;
