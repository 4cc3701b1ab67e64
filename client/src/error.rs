//! The client's error: one variant per outcome a caller handles differently.

use crate::types::ErrorBody;
use std::fmt;

/// Why a call failed. The variants follow the API's error codes (see the crate documentation), so a caller
/// matches on them instead of on HTTP statuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 409 `timeout`: the acquire waited its whole timeout and was not granted.
    #[error("timed out waiting for the lock: {message}")]
    Timeout {
        /// The node's explanation.
        message: String,
    },
    /// 409 `locked`: a try-lock found the lock held or waited for.
    #[error("the lock is held{}", Holder(*.holder))]
    Locked {
        /// The node that holds it, when the answering node knows.
        holder: Option<u16>,
    },
    /// 409 `lease_lost`: the lease ended without its client releasing it (the granting node lost its member
    /// lease, was excluded, restarted or is gone); the lock may already be someone else's.
    #[error("the lease was lost: {message}")]
    LeaseLost {
        /// The node's explanation: which of those happened.
        message: String,
    },
    /// 409 `lease_not_found`: the lease is unknown, expired or released, or does not hold this lock.
    #[error("lease not found: {message}")]
    LeaseNotFound {
        /// The node's explanation.
        message: String,
    },
    /// 409 `lease_in_use`: the lease given to an acquire already holds another lock.
    #[error("the lease holds another lock: {message}")]
    LeaseInUse {
        /// The node's explanation.
        message: String,
    },
    /// No endpoint could serve the call: each refused the connection, timed out connecting or answered 503.
    #[error("no endpoint is available: {message}")]
    Unavailable {
        /// What each endpoint answered, in the order tried.
        message: String,
    },
    /// 400 `bad_request`: the node refused the request (bad lock name, an algorithm the cluster does not
    /// serve, impossible values).
    #[error("bad request: {message}")]
    BadRequest {
        /// The node's explanation.
        message: String,
    },
    /// 401 `unauthorized`: the call carries no bearer token, or one the node does not know
    /// ([`crate::ClientBuilder::with_token`]). Not retried on another endpoint.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// The node's explanation.
        message: String,
    },
    /// 403 `forbidden`: the token is valid but lacks the scope the call needs (the message names it, e.g.
    /// `lock`). Not retried on another endpoint.
    #[error("forbidden: {message}")]
    Forbidden {
        /// The node's explanation, naming the missing scope.
        message: String,
    },
    /// Any other error answer (404, 405, 413, 500, or a code this client does not know).
    #[error("{message} (HTTP {status}, {code})")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The error code from the body (`http_<status>` when the body has none).
        code: String,
        /// The error message from the body (or the body itself).
        message: String,
    },
    /// The request was sent but no answer came (reset connection, the call's time limit). The node may have
    /// acted on it, so the call was not repeated on another endpoint.
    #[error("no answer from {url}: {source}")]
    Transport {
        /// The URL requested.
        url: String,
        /// The underlying error.
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer whose body does not decode.
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse {
        /// The URL requested.
        url: String,
        /// What did not decode.
        reason: String,
    },
    /// A token or CA bundle given to [`crate::ClientBuilder`] cannot be used: a token that cannot be a header
    /// value, a CA bundle that cannot be read or holds no usable certificate.
    #[error("invalid client settings: {what}: {reason}")]
    InvalidSettings {
        /// The setting (`the token`, `the CA bundle <path>`); never the token itself.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An endpoint given to [`crate::Client::new`] is not an http(s) base URL, or none was given.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// Formats a [`Error::Locked`] holder: ` by node N`, or nothing when unknown.
struct Holder(Option<u16>);

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(node) => write!(f, " by node {node}"),
            None => Ok(()),
        }
    }
}

/// An error answer of the API, decoded: the variant its code names.
pub(crate) fn from_answer(status: u16, body: &[u8]) -> Error {
    let (code, message, holder) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => (b.error.code, b.error.message, b.error.holder),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            let message = if text.is_empty() {
                reqwest::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error")
                    .to_string()
            } else {
                text
            };
            (format!("http_{status}"), message, None)
        }
    };
    // The code is the contract; the status only decides the codes this client does not know.
    match code.as_str() {
        "timeout" => Error::Timeout { message },
        "locked" => Error::Locked { holder },
        "lease_lost" => Error::LeaseLost { message },
        "lease_not_found" => Error::LeaseNotFound { message },
        "lease_in_use" => Error::LeaseInUse { message },
        "bad_request" => Error::BadRequest { message },
        "unauthorized" => Error::Unauthorized { message },
        "forbidden" => Error::Forbidden { message },
        _ if status == 401 => Error::Unauthorized { message },
        _ if status == 403 => Error::Forbidden { message },
        _ if status == 503 => Error::Unavailable { message },
        _ if status == 400 => Error::BadRequest { message },
        _ => Error::Server { status, code, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_decide_the_variant() {
        let e = from_answer(409, br#"{"error":{"code":"locked","message":"held","holder":2}}"#);
        assert!(matches!(e, Error::Locked { holder: Some(2) }), "{e:?}");
        assert_eq!(e.to_string(), "the lock is held by node 2");
        let e = from_answer(409, br#"{"error":{"code":"locked","message":"held","holder":null}}"#);
        assert_eq!(e.to_string(), "the lock is held");
        // An older node answered 408 for a timeout: the code still says what happened.
        let e = from_answer(408, br#"{"error":{"code":"timeout","message":"waited 1s"}}"#);
        assert!(matches!(&e, Error::Timeout { message } if message == "waited 1s"), "{e:?}");
        let e = from_answer(409, br#"{"error":{"code":"lease_lost","message":"node 1 is gone"}}"#);
        assert_eq!(e.to_string(), "the lease was lost: node 1 is gone");
        let e = from_answer(409, br#"{"error":{"code":"lease_not_found","message":"m"}}"#);
        assert!(matches!(e, Error::LeaseNotFound { .. }), "{e:?}");
        let e = from_answer(409, br#"{"error":{"code":"lease_in_use","message":"m"}}"#);
        assert!(matches!(e, Error::LeaseInUse { .. }), "{e:?}");
        let e = from_answer(503, br#"{"error":{"code":"shutting_down","message":"bye"}}"#);
        assert!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        let e = from_answer(400, br#"{"error":{"code":"bad_request","message":"no"}}"#);
        assert!(matches!(e, Error::BadRequest { .. }), "{e:?}");
        let e = from_answer(401, br#"{"error":{"code":"unauthorized","message":"needs a token"}}"#);
        assert!(matches!(&e, Error::Unauthorized { message } if message == "needs a token"), "{e:?}");
        assert_eq!(e.to_string(), "unauthorized: needs a token");
        let e = from_answer(403, br#"{"error":{"code":"forbidden","message":"needs the lock scope"}}"#);
        assert!(matches!(&e, Error::Forbidden { message } if message.contains("lock scope")), "{e:?}");
        // A proxy's own refusal, without the API's body: the status decides.
        assert!(matches!(from_answer(401, b"go away"), Error::Unauthorized { .. }));
        assert!(matches!(from_answer(403, b""), Error::Forbidden { .. }));
    }

    #[test]
    fn other_answers_keep_status_code_and_text() {
        let e = from_answer(502, b"upstream down");
        assert_eq!(e.to_string(), "upstream down (HTTP 502, http_502)");
        let e = from_answer(500, b"");
        assert_eq!(e.to_string(), "Internal Server Error (HTTP 500, http_500)");
        let e = from_answer(404, br#"{"error":{"code":"not_found","message":"no such endpoint"}}"#);
        assert!(matches!(&e, Error::Server { status: 404, code, .. } if code == "not_found"), "{e:?}");
        let e = from_answer(400, b"bad");
        assert!(matches!(e, Error::BadRequest { .. }), "{e:?}");
    }
}
