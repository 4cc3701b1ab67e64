//! Errors of the lock API, shared by the node loop (which decides them) and the HTTP layer (which renders
//! them as `{"error":{"code","message"}}` with the matching status).

use crate::api::types::{ErrorBody, ErrorDetail};

/// Why an API call failed. Serializable: a node that serves a call for another (a lease granted there) sends
/// the other node's answer back as it is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error, serde::Serialize, serde::Deserialize)]
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
    /// The lease given to acquire holds another lock (a lease covers one lock in this version).
    #[error("{0}")]
    LeaseInUse(String),
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
    /// The request carries no bearer token, or one the node does not know (`DMUTEX_API_TOKENS_FILE`).
    #[error("{0}")]
    Unauthorized(String),
    /// The request's token does not have the scope its endpoint needs (the message names it).
    #[error("{0}")]
    Forbidden(String),
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
            // Not 408: HTTP clients retry 408 on their own, a silent re-enqueue of the lock request.
            ApiError::Timeout(_) => 409,
            ApiError::LeaseNotFound(_) | ApiError::LeaseLost(_) | ApiError::LeaseInUse(_) => 409,
            ApiError::Locked { .. } => 409,
            ApiError::TooLarge => 413,
            ApiError::Cancelled => 499,
            ApiError::Unavailable(_) | ApiError::ShuttingDown => 503,
            ApiError::Internal(_) => 500,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
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
            ApiError::LeaseInUse(_) => "lease_in_use",
            ApiError::Locked { .. } => "locked",
            ApiError::Cancelled => "cancelled",
            ApiError::TooLarge => "payload_too_large",
            ApiError::Internal(_) => "internal",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
        }
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                holder: match self {
                    ApiError::Locked { holder } => *holder,
                    _ => None,
                },
            },
        }
    }
}
