//! Errors of the lock API, shared by the node loop (which decides them) and the HTTP layer (which renders
//! them as `{"error":{"code","message"}}` with the matching status).

use crate::api::types::{ErrorBody, ErrorDetail};

/// Why an API call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed (bad lock name, bad JSON, impossible values).
    #[error("{0}")]
    BadRequest(String),
    /// The acquire waited its whole timeout.
    #[error("timed out after {0} ms waiting for the lock")]
    Timeout(u64),
    /// A peer the algorithm needs is down, or the node has not joined the cluster yet.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The lease is unknown, expired or already released, or does not hold this lock.
    #[error("{0}")]
    LeaseNotFound(String),
    /// The lease was ended by the node because it lost its member lease (it could no longer reach a majority
    /// of its view): the lock may already be someone else's.
    #[error("{0}")]
    LeaseLost(String),
    /// A try-lock (`"wait": false`, or `timeout_ms: 0`) found the lock held, or another request before it.
    #[error("{}", locked_message(*holder))]
    Locked {
        /// The node that holds the lock, when known.
        holder: Option<u16>,
    },
    /// The request was cancelled.
    #[error("request cancelled")]
    Cancelled,
    /// The body is larger than allowed.
    #[error("request body too large")]
    TooLarge,
    /// Something unexpected inside the node.
    #[error("internal error: {0}")]
    Internal(String),
}

fn locked_message(holder: Option<u16>) -> String {
    match holder {
        Some(node) => format!("lock is held by node {node}"),
        None => "lock is held or requested before this try".to_owned(),
    }
}

impl ApiError {
    /// The HTTP status for this error.
    pub(crate) fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Timeout(_) => 408,
            ApiError::LeaseNotFound(_) | ApiError::LeaseLost(_) | ApiError::Locked { .. } => 409,
            ApiError::TooLarge => 413,
            ApiError::Cancelled => 499,
            ApiError::Unavailable(_) | ApiError::ShuttingDown => 503,
            ApiError::Internal(_) => 500,
        }
    }

    /// A stable machine-readable code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Timeout(_) => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::LeaseNotFound(_) => "lease_not_found",
            ApiError::LeaseLost(_) => "lease_lost",
            ApiError::Locked { .. } => "locked",
            ApiError::Cancelled => "cancelled",
            ApiError::TooLarge => "payload_too_large",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody { error: ErrorDetail { code: self.code().to_string(), message: self.to_string() } }
    }
}
