//! The client side of dmutex's HTTP API: the wire-contract types, shared with the server (one definition each).

mod query;
mod types;

pub use query::{AlgoLockState, Holder, LockList, LockState, LockSummary, Waiting};
pub use types::{
    AcquireBody, Algorithm, ErrorBody, ErrorDetail, Grant, KeepaliveBody, KeepaliveResponse, LeaseId,
    ReleaseBody, ReleaseResponse, Timeout,
};
